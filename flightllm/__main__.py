"""``python -m flightllm`` is the ``flightllm`` command."""

from flightllm.cli import main

main()
