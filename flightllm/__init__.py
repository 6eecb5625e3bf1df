"""flightllm: an open FlightLLM flow for Xilinx FPGAs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flightllm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
