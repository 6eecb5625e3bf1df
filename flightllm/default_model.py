"""The model `flightllm compile` uses when none is given: a small real ONNX export in the package.

It is a seeded, randomly initialised 2-layer LLaMA (GQA, RoPE, SwiGLU; hidden 64, vocabulary
256) exported by ``torch.onnx.export`` from Hugging Face ``transformers`` (provenance in
``models/tiny-llama.json``). It exercises every part of the flow in seconds and fits the RTL
simulation; its generated tokens are not meaningful text.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

__all__ = ["default_model_path", "default_model_info"]

_NAME = "tiny-llama"


def default_model_path() -> Path:
    """Filesystem path of the bundled ONNX model."""
    path = Path(str(resources.files("flightllm") / "models" / f"{_NAME}.onnx"))
    if not path.is_file():  # pragma: no cover - a broken installation
        raise FileNotFoundError(f"the bundled model is missing from the installation: {path}")
    return path


def default_model_info() -> dict:
    """The bundled model's provenance record (exporter, versions, configuration)."""
    ref = resources.files("flightllm") / "models" / f"{_NAME}.json"
    return json.loads(ref.read_text())
