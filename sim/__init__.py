"""flightllm.sim"""
