"""flightllm.hw"""
