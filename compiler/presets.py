"""Model configurations for full-size work: named presets, Hugging Face ``config.json`` files,
and seeded synthetic weights made on demand.

Full-size models are compiled from their shapes (a shape-only IR) or with synthetic weights that
:class:`SyntheticWeights` makes one tensor at a time, so a 7B model never needs 28 GB: a pass
streams it with ``for index, tensors in ir.layers()`` and holds one block at a time.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .ir import IRError, ModelConfig, TensorSpec, TransformerIR

__all__ = ["PRESETS", "SyntheticWeights", "WIDE_HEADS", "build_ir", "config_from_hf",
           "load_hf_config", "preset"]

PRESETS: dict[str, ModelConfig] = {
    config.name: config for config in (
        ModelConfig(
            name="llama2-7b", arch="llama", vocab_size=32000, hidden_size=4096, num_layers=32,
            num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008, norm="rms",
            norm_eps=1e-5, activation="silu", gated_mlp=True, position="rope",
            rope_theta=10000.0, max_positions=4096),
        ModelConfig(
            name="opt-6.7b", arch="opt", vocab_size=50272, hidden_size=4096, num_layers=32,
            num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=16384, norm="layer",
            norm_eps=1e-5, activation="relu", gated_mlp=False, position="learned",
            position_offset=2, max_positions=2048, tied_embeddings=True, attention_bias=True,
            mlp_bias=True),
        ModelConfig(
            name="smollm2-135m", arch="llama", vocab_size=49152, hidden_size=576, num_layers=30,
            num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536, norm="rms",
            norm_eps=1e-5, activation="silu", gated_mlp=True, position="rope",
            rope_theta=100000.0, max_positions=8192, tied_embeddings=True),
        ModelConfig(
            name="gpt2", arch="gpt2", vocab_size=50257, hidden_size=768, num_layers=12,
            num_heads=12, num_kv_heads=12, head_dim=64, intermediate_size=3072, norm="layer",
            norm_eps=1e-5, activation="gelu_tanh", gated_mlp=False, position="learned",
            max_positions=1024, tied_embeddings=True, attention_bias=True, mlp_bias=True),
    )
}


#: A synthetic two-layer LLaMA with head_dim 32 (two 16-wide blocks; the bundled export's is
#: 16) and two KV heads without grouping: the shape on which the ``tiny`` configuration splits
#: each K/V cache over two channels and packs two heads' P.V into one decode MM. Tests and
#: ``bench/perf_validation.py --wide-heads`` build it with ``build_ir(WIDE_HEADS,
#: "synthetic", seed=3)``; not a preset (no user compiles it by name).
WIDE_HEADS = ModelConfig(
    name="wide-heads", arch="llama", vocab_size=256, hidden_size=64, num_layers=2,
    num_heads=2, num_kv_heads=2, head_dim=32, intermediate_size=96, norm="rms",
    norm_eps=1e-5, activation="silu", gated_mlp=True, position="rope", rope_theta=10000.0)


def preset(name: str) -> ModelConfig:
    """A named configuration from :data:`PRESETS`."""
    try:
        return PRESETS[name]
    except KeyError:
        raise IRError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class SyntheticWeights:
    """Seeded random float32 weights, made per tensor when asked (a :data:`WeightProvider`).

    Each tensor's generator is seeded by ``(seed, crc32(name))``, so a tensor is the same
    whatever order tensors are asked for, and nothing is cached. Scales keep a forward pass
    well-conditioned at any size: linear weights ~ N(0, 1/in_features), output projections
    (``o``, ``down``, ``fc2``) a further 1/sqrt(2 * layers) for the residual sum, embeddings
    and position tables ~ N(0, 1/hidden) (tied logits then have unit scale), norm gains around
    one and small biases, so later passes see non-trivial values everywhere.
    """

    config: ModelConfig
    seed: int = 0

    def __call__(self, spec: TensorSpec) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(spec.name.encode())])
        noise = rng.standard_normal(spec.shape, dtype=np.float32)
        if spec.role == "linear":
            scale = spec.shape[1] ** -0.5
            if spec.key.split(".")[0] in ("o", "down", "fc2"):
                scale /= (2 * self.config.num_layers) ** 0.5
        elif spec.role in ("embedding", "position_table"):
            scale = self.config.hidden_size ** -0.5
        elif spec.role == "norm_weight":
            return 1.0 + np.float32(0.05) * noise
        else:
            scale = 0.02
        return np.float32(scale) * noise


def build_ir(config: ModelConfig, weights: str = "none", seed: int = 0) -> TransformerIR:
    """An IR for ``config`` with no weights (``"none"``) or :class:`SyntheticWeights`."""
    if weights == "none":
        return TransformerIR(config, source=config.name)
    if weights == "synthetic":
        return TransformerIR(config, provider=SyntheticWeights(config, seed), source=config.name)
    raise IRError(f"weights={weights!r}: expected 'none' or 'synthetic'")


def load_hf_config(path: str | Path, weights: str = "none", seed: int = 0) -> TransformerIR:
    """Read a Hugging Face ``config.json`` into an IR (see :func:`config_from_hf`)."""
    path = Path(path)
    with path.open() as f:
        data = json.load(f)
    return build_ir(config_from_hf(data, name=data.get("_name_or_path") or path.parent.name),
                    weights, seed)


def config_from_hf(data: Mapping[str, Any], name: str = "") -> ModelConfig:
    """Map a ``LlamaConfig``, ``OPTConfig`` or ``GPT2Config`` dict to a :class:`ModelConfig`.

    Raises:
        IRError: The model type or an option is not supported; the message names the key.
    """
    kind = data.get("model_type")
    readers = {"llama": _llama, "opt": _opt, "gpt2": _gpt2}
    if kind not in readers:
        raise IRError(f"config key model_type={kind!r}: expected one of {sorted(readers)}")
    return ModelConfig(name=name, **readers[kind](data))


def _require(data: Mapping[str, Any], key: str, allowed: tuple, default: Any) -> Any:
    value = data.get(key, default)
    if value not in allowed:
        raise IRError(f"config key {key}={value!r} is not supported (expected one of {allowed})")
    return value


def _llama(data: Mapping[str, Any]) -> dict[str, Any]:
    rope = data.get("rope_parameters") or {}
    scaling = data.get("rope_scaling") or rope
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise IRError(f"config key rope_scaling={scaling!r}: scaled RoPE is not supported")
    _require(data, "hidden_act", ("silu",), "silu")
    heads = data["num_attention_heads"]
    return dict(
        arch="llama", vocab_size=data["vocab_size"], hidden_size=data["hidden_size"],
        num_layers=data["num_hidden_layers"], num_heads=heads,
        num_kv_heads=data.get("num_key_value_heads") or heads,
        head_dim=data.get("head_dim") or data["hidden_size"] // heads,
        intermediate_size=data["intermediate_size"], norm="rms",
        norm_eps=data.get("rms_norm_eps", 1e-6), activation="silu", gated_mlp=True,
        position="rope", rope_theta=float(data.get("rope_theta") or rope.get("rope_theta")
                                          or 10000.0),
        max_positions=data.get("max_position_embeddings", 2048),
        tied_embeddings=data.get("tie_word_embeddings", False),
        attention_bias=data.get("attention_bias", False), mlp_bias=data.get("mlp_bias", False))


def _opt(data: Mapping[str, Any]) -> dict[str, Any]:
    _require(data, "do_layer_norm_before", (True,), True)
    _require(data, "_remove_final_layer_norm", (False,), False)
    _require(data, "word_embed_proj_dim", (data["hidden_size"],), data["hidden_size"])
    activation = _require(data, "activation_function", ("relu",), "relu")
    heads = data["num_attention_heads"]
    bias = data.get("enable_bias", True)
    return dict(
        arch="opt", vocab_size=data["vocab_size"], hidden_size=data["hidden_size"],
        num_layers=data["num_hidden_layers"], num_heads=heads, num_kv_heads=heads,
        head_dim=data["hidden_size"] // heads, intermediate_size=data["ffn_dim"],
        norm="layer", norm_eps=1e-5, activation=activation, gated_mlp=False,
        position="learned", position_offset=2,
        max_positions=data.get("max_position_embeddings", 2048),
        tied_embeddings=data.get("tie_word_embeddings", True), attention_bias=bias,
        mlp_bias=bias)


_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                     "gelu": "gelu_erf", "relu": "relu"}


def _gpt2(data: Mapping[str, Any]) -> dict[str, Any]:
    activation = _require(data, "activation_function", tuple(_GPT2_ACTIVATIONS), "gelu_new")
    _require(data, "scale_attn_by_inverse_layer_idx", (False,), False)
    _require(data, "scale_attn_weights", (True,), True)
    hidden, heads = data["n_embd"], data["n_head"]
    return dict(
        arch="gpt2", vocab_size=data["vocab_size"], hidden_size=hidden,
        num_layers=data["n_layer"], num_heads=heads, num_kv_heads=heads,
        head_dim=hidden // heads, intermediate_size=data.get("n_inner") or 4 * hidden,
        norm="layer", norm_eps=data.get("layer_norm_epsilon", 1e-5),
        activation=_GPT2_ACTIVATIONS[activation], gated_mlp=False, position="learned",
        max_positions=data.get("n_positions", 1024),
        tied_embeddings=data.get("tie_word_embeddings", True), attention_bias=True,
        mlp_bias=True)
