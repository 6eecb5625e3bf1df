"""Shared fixtures: the committed ONNX test models."""

import json
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "onnx"
_ENTRIES = json.loads((MODEL_DIR / "MANIFEST.json").read_text())["models"]
#: Decoder-only models (the manifest also holds an encoder-only one for the frontend's errors).
MODELS = sorted(m["file"] for m in _ENTRIES if m.get("decoder_only", True))
