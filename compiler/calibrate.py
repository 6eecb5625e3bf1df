"""Activation ranges for quantisation: a float forward that records every quantisation point.

The points are the tensors the integer model stores (see compiler/qmodel.py): the residual
stream (one range for the whole model), and per block the normed inputs ``h1``/``h2``, the
projections before (``q_pre``, ``k_pre``) and after RoPE (``q``, ``k``), ``v``, the attention
context ``ctx``, the MLP's ``gate``/``up``/``fc1`` and its hidden ``mlp_hidden``; then
``final_h`` and ``logits``. A range is the largest magnitude seen over the calibration tokens.
"""

from __future__ import annotations

import math

import numpy as np

from .ir import TransformerIR
from .reference import activation, apply_rope, norm

__all__ = ["calibrate", "calibrate_channels", "default_calibration_tokens", "CHANNEL_POINTS"]

#: Points whose per-channel ranges smoothing needs (compiler/smooth.py).
CHANNEL_POINTS = ("h1", "h2", "ctx", "mlp_hidden")


def default_calibration_tokens(vocab: int, length: int, seed: int = 0) -> np.ndarray:
    """Seeded random token ids: what calibrates a model when no text is given."""
    return np.random.default_rng(seed).integers(0, vocab, size=length)


def calibrate(ir: TransformerIR, sequences: list[np.ndarray]) -> dict[str, float]:
    """Largest magnitude at every quantisation point over full causal forwards of
    ``sequences``."""
    return {k: float(v.max()) for k, v in calibrate_channels(ir, sequences).items()}


def calibrate_channels(ir: TransformerIR, sequences: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per point, the largest magnitude of each channel (last axis) over ``sequences``."""
    ranges: dict[str, np.ndarray] = {}

    def see(key: str, value: np.ndarray) -> None:
        m = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
        ranges[key] = np.maximum(ranges[key], m) if key in ranges else m

    for tokens in sequences:
        _forward(ir, np.asarray(tokens), see)
    return ranges


def _forward(ir: TransformerIR, tokens: np.ndarray, see) -> None:
    c = ir.config
    seq = len(tokens)
    pos = np.arange(seq)
    x = ir.tensor("embed.weight")[tokens].astype(np.float64)
    if c.position == "learned":
        x = x + ir.tensor("pos_embed.weight")[pos + c.position_offset]
    see("resid", x)

    def lin(t, key, h):
        y = h @ t[f"{key}.weight"].astype(np.float64).T
        return y + t[f"{key}.bias"] if f"{key}.bias" in t else y

    causal = np.tril(np.ones((seq, seq), dtype=bool))
    for i, t in ir.layers():
        p = f"layers.{i}."
        h = norm(x, t["attn_norm.weight"], t.get("attn_norm.bias"), c.norm, c.norm_eps)
        see(p + "h1", h)
        q = lin(t, "q", h).reshape(seq, c.num_heads, c.head_dim)
        k = lin(t, "k", h).reshape(seq, c.num_kv_heads, c.head_dim)
        v = lin(t, "v", h).reshape(seq, c.num_kv_heads, c.head_dim)
        if c.position == "rope":
            see(p + "q_pre", q)
            see(p + "k_pre", k)
            q = apply_rope(q, pos, c.rope_theta, c.rope_interleaved)
            k = apply_rope(k, pos, c.rope_theta, c.rope_interleaved)
        see(p + "q", q)
        see(p + "k", k)
        see(p + "v", v)
        kh = np.repeat(k, c.group_size, axis=1)
        vh = np.repeat(v, c.group_size, axis=1)
        s = np.einsum("qhd,khd->hqk", q, kh) / math.sqrt(c.head_dim)
        s = np.where(causal[None], s, -np.inf)
        pr = np.exp(s - s.max(axis=-1, keepdims=True))
        pr /= pr.sum(axis=-1, keepdims=True)
        ctx = np.einsum("hqk,khd->qhd", pr, vh).reshape(seq, -1)
        see(p + "ctx", ctx)
        x = x + lin(t, "o", ctx)
        see("resid", x)
        h = norm(x, t["mlp_norm.weight"], t.get("mlp_norm.bias"), c.norm, c.norm_eps)
        see(p + "h2", h)
        if c.gated_mlp:
            g, u = lin(t, "gate", h), lin(t, "up", h)
            see(p + "gate", g)
            see(p + "up", u)
            m = activation(g, c.activation) * u
            down = "down"
        else:
            f = lin(t, "fc1", h)
            see(p + "fc1", f)
            m = activation(f, c.activation)
            down = "fc2"
        see(p + "mlp_hidden", m)
        x = x + lin(t, down, m)
        see("resid", x)
    bias = ir.tensor("final_norm.bias") if c.norm == "layer" else None
    h = norm(x, ir.tensor("final_norm.weight"), bias, c.norm, c.norm_eps)
    see("final_h", h)
    see("logits", h @ ir.lm_head_weight().astype(np.float64).T)
