"""Where flightllm keeps what it can rebuild: one cache root for every consumer."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``$FLIGHTLLM_CACHE`` (``~/.cache/flightllm`` when unset or empty), joined with
    ``parts``: ``cache_dir("verilog")`` is the generated-Verilog cache."""
    root = os.environ.get("FLIGHTLLM_CACHE") or Path.home() / ".cache" / "flightllm"
    return Path(root, *parts)
