"""Numpy reference forward pass of a :class:`~flightllm.compiler.ir.TransformerIR`.

The floating-point meaning of the IR, written to be read: a full-sequence causal forward
(:func:`forward`) and an incremental decode with a key/value cache (:func:`decode_step`), both
built from the same per-block functions (:func:`norm`, :func:`attention`, :func:`mlp`), which the
ONNX frontend also uses to check each block it recognises. Computation is in float64 by default
so that it is a reference for float32 graphs, not another float32 implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .ir import ModelConfig, TransformerIR

__all__ = [
    "KVCache", "activation", "apply_rope", "attention", "decode_step", "forward", "mlp", "norm",
]


def norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, kind: str,
         eps: float) -> np.ndarray:
    """RMSNorm (``kind="rms"``) or LayerNorm (``"layer"``) over the last axis."""
    if kind == "layer":
        x = x - x.mean(axis=-1, keepdims=True)
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight
    return y + bias if bias is not None else y


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    """The MLP non-linearity named by ``ModelConfig.activation``."""
    if kind == "silu":
        return x / (1.0 + np.exp(-x))
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if kind == "gelu_erf":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    raise ValueError(f"unknown activation {kind!r}")


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf; math.erf per element is exact and the reference is for small inputs.
    return np.vectorize(math.erf, otypes=[x.dtype])(x)


def apply_rope(x: np.ndarray, positions: np.ndarray, theta: float,
               interleaved: bool) -> np.ndarray:
    """Rotate ``x`` of shape ``[seq, heads, head_dim]`` by its ``positions``.

    Pairs are ``(i, i + head_dim/2)`` (LLaMA's rotate-half) or, if ``interleaved``,
    ``(2i, 2i + 1)`` (GPT-J); pair ``i`` turns by ``position * theta**(-2i/head_dim)``.
    """
    head_dim = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(angles)[:, None, :].astype(x.dtype)
    sin = np.sin(angles)[:, None, :].astype(x.dtype)
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]
    else:
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2:]
    out_first = first * cos - second * sin
    out_second = second * cos + first * sin
    if interleaved:
        return np.stack([out_first, out_second], axis=-1).reshape(x.shape)
    return np.concatenate([out_first, out_second], axis=-1)


def _linear(x: np.ndarray, t: dict[str, np.ndarray], key: str) -> np.ndarray:
    y = x @ t[f"{key}.weight"].T
    bias = t.get(f"{key}.bias")
    return y + bias if bias is not None else y


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, per layer ``[tokens, kv_heads, head_dim]``."""

    keys: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0


def attention(cfg: ModelConfig, t: dict[str, np.ndarray], h: np.ndarray,
              positions: np.ndarray, past: tuple[np.ndarray, np.ndarray] | None = None
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Causal self-attention of one block, from normed input to the output projection.

    Args:
        cfg: Model config (heads, head_dim, rotary settings).
        t: The block's tensors by short key (``q.weight`` ...), float64 or float32.
        h: Normed hidden states ``[seq, hidden]`` at ``positions``.
        positions: Absolute position of each row of ``h``.
        past: Keys and values of earlier positions ``[past, kv_heads, head_dim]``, or None.

    Returns:
        The output projection ``[seq, hidden]`` and the keys and values including ``h``'s.
    """
    seq = h.shape[0]
    q = _linear(h, t, "q").reshape(seq, cfg.num_heads, cfg.head_dim)
    k = _linear(h, t, "k").reshape(seq, cfg.num_kv_heads, cfg.head_dim)
    v = _linear(h, t, "v").reshape(seq, cfg.num_kv_heads, cfg.head_dim)
    if cfg.position == "rope":
        q = apply_rope(q, positions, cfg.rope_theta, cfg.rope_interleaved)
        k = apply_rope(k, positions, cfg.rope_theta, cfg.rope_interleaved)
    if past is not None:
        k = np.concatenate([past[0], k], axis=0)
        v = np.concatenate([past[1], v], axis=0)
    # Query head j reads key/value head j // group_size (grouped-query attention).
    k_heads = np.repeat(k, cfg.group_size, axis=1)
    v_heads = np.repeat(v, cfg.group_size, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k_heads) / math.sqrt(cfg.head_dim)
    key_positions = np.arange(k.shape[0]) + (positions[0] - (k.shape[0] - seq))
    causal = key_positions[None, :] <= positions[:, None]
    scores = np.where(causal[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    context = np.einsum("hqk,khd->qhd", probs, v_heads).reshape(seq, cfg.q_dim)
    return _linear(context, t, "o"), (k, v)


def mlp(cfg: ModelConfig, t: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
    """The block's MLP from normed input ``[seq, hidden]`` to its output projection."""
    if cfg.gated_mlp:
        hidden = activation(_linear(h, t, "gate"), cfg.activation) * _linear(h, t, "up")
        return _linear(hidden, t, "down")
    return _linear(activation(_linear(h, t, "fc1"), cfg.activation), t, "fc2")


def _embed(ir: TransformerIR, token_ids: np.ndarray, positions: np.ndarray,
           dtype: type) -> np.ndarray:
    cfg = ir.config
    x = ir.tensor("embed.weight")[token_ids].astype(dtype)
    if cfg.position == "learned":
        if cfg.max_positions is not None and positions.max() >= cfg.max_positions:
            raise ValueError(f"position {positions.max()} is past max_positions="
                             f"{cfg.max_positions}")
        x = x + ir.tensor("pos_embed.weight")[positions + cfg.position_offset].astype(dtype)
    return x


def _run(ir: TransformerIR, token_ids: np.ndarray, positions: np.ndarray,
         cache: KVCache | None, dtype: type) -> np.ndarray:
    cfg = ir.config
    x = _embed(ir, token_ids, positions, dtype)
    for index, tensors in ir.layers():
        t = {key: value.astype(dtype) for key, value in tensors.items()}
        past = None
        if cache is not None and index < len(cache.keys):
            past = (cache.keys[index], cache.values[index])
        h = norm(x, t["attn_norm.weight"], t.get("attn_norm.bias"), cfg.norm, cfg.norm_eps)
        out, (k, v) = attention(cfg, t, h, positions, past)
        if cache is not None:
            if index < len(cache.keys):
                cache.keys[index], cache.values[index] = k, v
            else:
                cache.keys.append(k)
                cache.values.append(v)
        x = x + out
        h = norm(x, t["mlp_norm.weight"], t.get("mlp_norm.bias"), cfg.norm, cfg.norm_eps)
        x = x + mlp(cfg, t, h)
    bias = ir.tensor("final_norm.bias").astype(dtype) if cfg.norm == "layer" else None
    h = norm(x, ir.tensor("final_norm.weight").astype(dtype), bias, cfg.norm, cfg.norm_eps)
    return h @ ir.lm_head_weight().astype(dtype).T


def forward(ir: TransformerIR, token_ids: np.ndarray, *,
            dtype: type = np.float64) -> np.ndarray:
    """Causal forward over a whole sequence.

    Args:
        ir: A model with weights.
        token_ids: 1-D token ids.
        dtype: Compute type (float64 for a reference, float32 to mimic a float32 graph).

    Returns:
        Logits ``[seq, vocab]``.
    """
    token_ids = np.asarray(token_ids).reshape(-1)
    return _run(ir, token_ids, np.arange(token_ids.size), None, dtype)


def decode_step(ir: TransformerIR, token_ids: np.ndarray, cache: KVCache, *,
                dtype: type = np.float64) -> np.ndarray:
    """Feed the next token(s) after those already in ``cache``; the cache grows in place.

    Calling this once per token from an empty :class:`KVCache` gives the rows of
    :func:`forward`; a first call with several tokens is a prefill.

    Returns:
        Logits ``[new_tokens, vocab]``.
    """
    token_ids = np.asarray(token_ids).reshape(-1)
    positions = np.arange(cache.length, cache.length + token_ids.size)
    return _run(ir, token_ids, positions, cache, dtype)
