"""What ``flightllm compile`` accepts as a model: an ONNX file, a preset name, a config.json;
and the sparsity recipe syntax."""

from __future__ import annotations

from pathlib import Path

import yaml

from .ir import TransformerIR
from .layout import CompileError
from .presets import PRESETS, build_ir, load_hf_config, preset

__all__ = ["load_model", "parse_sparsity", "parse_attn_sparsity", "LINEAR_KINDS"]

LINEAR_KINDS = ("q", "k", "v", "o", "gate", "up", "down", "fc1", "fc2", "lm_head")


def load_model(spec: str, *, weights: str = "synthetic", seed: int = 0) -> TransformerIR:
    """An IR from an ``.onnx`` path, a ``config.json`` path, or a preset name."""
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CompileError(f"{spec}: no such ONNX file")
        from .frontend import load_onnx
        return load_onnx(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise CompileError(f"{spec}: no such config file")
        return load_hf_config(path, weights, seed)
    if spec in PRESETS:
        return build_ir(preset(spec), weights, seed)
    raise CompileError(f"{spec!r} is not an .onnx file, a config.json, or a preset "
                       f"({', '.join(sorted(PRESETS))})")


def parse_sparsity(text: str | None) -> dict[str, int]:
    """``"8"`` (N:16 with N=8 on every projection but the LM head), ``"q=8,k=8,o=4"``, or a
    YAML file mapping projection kinds to N."""
    if not text:
        return {}
    if Path(text).suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(Path(text).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CompileError(f"sparsity recipe {text}: {exc}") from None
        if not isinstance(data, dict):
            raise CompileError(f"sparsity recipe {text}: expected a mapping of kind: N")
        items = list(data.items())
    elif "=" in text:
        items = [part.split("=", 1) for part in text.split(",")]
    else:
        items = [(k, text) for k in LINEAR_KINDS if k != "lm_head"]
    recipe = {}
    for kind, value in items:
        kind = str(kind).strip()
        if kind not in LINEAR_KINDS:
            raise CompileError(f"sparsity recipe: unknown projection {kind!r}; known: "
                               f"{', '.join(LINEAR_KINDS)}")
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise CompileError(f"sparsity recipe: {kind}={value!r} is not an integer") from None
        if n not in (2, 4, 8, 16):
            raise CompileError(f"sparsity recipe: {kind}={n}: N:16 keeps 2, 4, 8 or 16")
        recipe[kind] = n
    return recipe


def parse_attn_sparsity(text: str | None) -> tuple[int, int] | None:
    """``"sink=1,band=4"``: block-sparse prefill attention keeping the first ``sink`` blocks
    and a band of ``band`` blocks (blocks of the configuration's ``attn_block`` tokens);
    ``None``, ``""`` or ``"dense"``: dense causal attention."""
    if not text or text.strip() == "dense":
        return None
    values: dict[str, int] = {}
    for part in text.split(","):
        key, eq, value = (x.strip() for x in part.partition("="))
        if key not in ("sink", "band") or not eq:
            raise CompileError(f"attention sparsity {text!r}: expected sink=S,band=B, got "
                               f"{part.strip()!r}")
        if key in values:
            raise CompileError(f"attention sparsity {text!r}: {key} given twice")
        try:
            values[key] = int(value)
        except ValueError:
            raise CompileError(f"attention sparsity: {key}={value!r} is not an integer") from None
    if "band" not in values:
        raise CompileError(f"attention sparsity {text!r}: band=B is required")
    sink, band = values.get("sink", 0), values["band"]
    if sink < 0 or band < 1:
        raise CompileError(f"attention sparsity {text!r}: needs sink >= 0 and band >= 1")
    return sink, band
