"""SmoothQuant-style smoothing: move activation outliers into the weights, exactly.

For an activation ``x`` that only feeds linear layers, ``W x = (W diag(s)) (x / s)`` for any
positive per-channel ``s``. Choosing ``s_j = max|x_j|**alpha / max|W_:,j|**(1 - alpha)``
flattens ``x``'s channels so a per-tensor INT8 scale resolves all of them, at the cost of
wider weight columns (which per-channel weight scales absorb). Applied where the division by
``s`` can be folded into what produces ``x``:

* norm outputs (``h1``, ``h2``): into the norm's gain and bias;
* the gated MLP's hidden ``act(gate) * up``: into ``up``'s rows (the product is linear in up);
  the ReLU MLP's hidden: into ``fc1``'s rows (ReLU commutes with a positive scale);
* the attention context: into ``v``'s rows, one factor per KV-head channel shared by its
  query heads, and ``o``'s columns.

The result is the same float function (tests check it against the unsmoothed model); only the
quantisation gets easier.
"""

from __future__ import annotations

import numpy as np

from .ir import TransformerIR

__all__ = ["smooth"]


def _factors(act_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    w_max = np.max([np.abs(w).max(axis=0) for w in weights], axis=0)
    s = np.power(np.maximum(act_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
    return np.clip(s, 1e-3, 1e3)


def smooth(ir: TransformerIR, channel_ranges: dict[str, np.ndarray], *,
           alpha: float = 0.5) -> TransformerIR:
    """A smoothed copy of ``ir`` (which must hold its weights in memory)."""
    if ir.tensors is None:
        raise ValueError("smoothing needs the weights in memory (an ONNX model), not a provider")
    c = ir.config
    t = {k: v.astype(np.float64) for k, v in ir.tensors.items()}
    for i in range(c.num_layers):
        p = f"layers.{i}."
        norms = ((p + "attn_norm", "h1", ("q", "k", "v")),
                 (p + "mlp_norm", "h2", ("gate", "up") if c.gated_mlp else ("fc1",)))
        for stem, point, consumers in norms:
            s = _factors(channel_ranges[p + point],
                         [t[f"{p}{k}.weight"] for k in consumers], alpha)
            t[f"{stem}.weight"] = t[f"{stem}.weight"] / s
            if f"{stem}.bias" in t:
                t[f"{stem}.bias"] = t[f"{stem}.bias"] / s
            for k in consumers:
                t[f"{p}{k}.weight"] = t[f"{p}{k}.weight"] * s[None, :]
        producer = "up" if c.gated_mlp else ("fc1" if c.activation == "relu" else None)
        down = "down" if c.gated_mlp else "fc2"
        if producer is not None:
            s = _factors(channel_ranges[p + "mlp_hidden"], [t[f"{p}{down}.weight"]], alpha)
            _scale_rows(t, p + producer, 1 / s)
            t[f"{p}{down}.weight"] = t[f"{p}{down}.weight"] * s[None, :]
        # Attention context: one factor per (kv head, dim), shared by the group's heads.
        ctx = channel_ranges[p + "ctx"].reshape(c.num_kv_heads, c.group_size, c.head_dim)
        o_cols = np.abs(t[p + "o.weight"]).max(axis=0).reshape(c.num_kv_heads, c.group_size,
                                                                 c.head_dim)
        s_kv = (np.power(np.maximum(ctx.max(axis=1), 1e-5), alpha)
                / np.power(np.maximum(o_cols.max(axis=1), 1e-5), 1 - alpha))
        s_kv = np.clip(s_kv, 1e-3, 1e3)
        _scale_rows(t, p + "v", 1 / s_kv.reshape(-1))
        s_ctx = np.repeat(s_kv[:, None, :], c.group_size, axis=1).reshape(-1)
        t[p + "o.weight"] = t[p + "o.weight"] * s_ctx[None, :]
    tensors = {k: v.astype(np.float32) for k, v in t.items()}
    return TransformerIR(c, tensors=tensors, source=ir.source)


def _scale_rows(t: dict, stem: str, factor: np.ndarray) -> None:
    t[f"{stem}.weight"] = t[f"{stem}.weight"] * factor[:, None]
    if f"{stem}.bias" in t:
        t[f"{stem}.bias"] = t[f"{stem}.bias"] * factor
