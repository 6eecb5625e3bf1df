"""flightllm.host"""
