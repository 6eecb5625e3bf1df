"""flightllm.compiler"""
