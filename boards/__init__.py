"""flightllm.boards"""
