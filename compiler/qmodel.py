"""The quantised model: every integer parameter the programs use, and its numpy reference.

:func:`build_qmodel` turns a float IR plus calibrated activation ranges into a :class:`QModel`:
packed low-bit weights, per-channel requantisation records, norm gains, and the multipliers of
every special function. :func:`qforward` executes that integer model directly with the contract's
numerics (no ISA, no buffers): the compiled programs run on the golden simulator must give
exactly its logits and KV cache. The dataflow, per block (docs/compiler.md):

    r (INT32 residual) -> norm -> h (INT8) -> q/k/v projections -> RoPE -> K/V cache (INT8)
      -> scores = q.K^T (INT32) -> deferred softmax -> P.V -> x R -> ctx (INT8)
      -> o projection added into r -> norm -> MLP -> down projection added into r
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flightllm.contract import numerics as nm

from .ir import ModelConfig, TransformerIR
from .quantize import QuantWeight, quantize_weight

__all__ = ["QLinear", "QNorm", "QLayer", "QModel", "QuantRecipe", "build_qmodel", "qforward",
           "KVState", "AttentionSparsity", "RESIDUAL_BITS", "WIDE_BITS"]

#: The residual stream uses this many bits of INT32 at its calibrated maximum (headroom to the
#: norm's 24-bit input saturation).
RESIDUAL_BITS = 22
#: INT32 intermediates (pre-RoPE q/k, SwiGLU gate/up, GELU input, logits) use this many bits.
WIDE_BITS = 20


@dataclass
class QuantRecipe:
    """How to quantise: bits and N:16 sparsity per matrix kind (``q k v o gate up down fc1
    fc2 lm_head``) or per matrix (``layers.3.up``, which wins), group multipliers on or off."""

    weight_bits: int = 8
    bits: dict[str, int] = field(default_factory=dict)
    sparsity: dict[str, int] = field(default_factory=dict)
    group_scales: bool = True
    bits_by_name: dict[str, int] = field(default_factory=dict)
    #: Carry the gated MLP's hidden as two INT8 digits (15 bits): its peak-to-RMS ratio is
    #: the largest in the block. Costs a second pass of ``down`` over weights already loaded.
    split_hidden: bool = True
    #: The keys' INT8 range is the calibrated maximum times this. A key clipped in the cache
    #: distorts every later query's attention to it, while the keys' resolution hardly
    #: matters: on the LLaMA test model's worst prompt (largest key 1.11 times the calibrated
    #: maximum), rounding only k gives the same worst-step cosine at 8 and 12 bits (0.976),
    #: 0.997 with a range 12% wider, 0.912 with one 10% narrower (docs/compiler.md).
    key_headroom: float = 1.15

    def bits_for(self, kind: str, name: str | None = None) -> int:
        if name is not None and name in self.bits_by_name:
            return self.bits_by_name[name]
        return self.bits.get(kind, self.weight_bits)

    def sparsity_for(self, kind: str) -> int:
        return self.sparsity.get(kind, 16)


@dataclass(frozen=True)
class AttentionSparsity:
    """Block-sparse prefill attention: an attention sink plus a local band, in token blocks.

    A prefill call at positions ``pos .. pos + seq`` is cut into groups of ``chunk`` rows (the
    prefill program's call size: the host feeds a prompt in such calls). A query at position
    ``p`` in the group that starts at ``g`` sees key ``k <= p`` if ``k`` is in one of the first
    ``sink`` blocks (``k < sink * block``) or ``k >= g - (band - 1) * block``: the band is the
    ``band - 1`` blocks before the group plus the group itself, so every query keeps at least
    its ``band`` most recent blocks including its own. With ``chunk == block`` and calls
    starting on block boundaries this is exactly FlightLLM's sink-plus-band block mask; a
    larger chunk lets later rows of a group see up to ``chunk / block - 1`` blocks more. The
    window is anchored at the group start because the ISA's bindings can add and clamp the
    POS register but not round it to a block: every group of one call shares one key set.
    Decode attention stays dense.
    """

    sink: int
    band: int
    block: int
    chunk: int

    def __post_init__(self):
        if self.sink < 0 or self.band < 1:
            raise ValueError(f"attention sparsity needs sink >= 0 and band >= 1 blocks, not "
                             f"sink={self.sink}, band={self.band}")
        if self.block < 1 or self.chunk < 1:
            raise ValueError(f"attention sparsity: block {self.block} and chunk {self.chunk} "
                             "must be positive")

    @property
    def sink_tokens(self) -> int:
        return self.sink * self.block

    @property
    def back_tokens(self) -> int:
        """How far before its group's first position the band reaches."""
        return (self.band - 1) * self.block

    @property
    def band_tokens(self) -> int:
        """Positions one call's band spans (reach back plus the call), in whole 16-position
        tiles; the programs load this many from the band's first position."""
        return -(-(self.back_tokens + self.chunk) // 16) * 16

    @property
    def width(self) -> int:
        """Key positions one call's prefill attention touches: the sink, then the band."""
        return self.sink_tokens + self.band_tokens

    def visible(self, pos: int, seq: int, n: int) -> np.ndarray:
        """``[seq, n]`` bool: which of keys ``0..n`` each query ``pos..pos + seq`` sees."""
        rows = np.arange(seq)
        p = pos + rows
        group = pos + rows // self.chunk * self.chunk
        lo = np.maximum(group - self.back_tokens, self.sink_tokens)
        k = np.arange(n)[None, :]
        return (k <= p[:, None]) & ((k < self.sink_tokens) | (k >= lo[:, None]))

    def to_dict(self) -> dict:
        return {"sink_blocks": self.sink, "band_blocks": self.band, "block": self.block,
                "chunk": self.chunk}


@dataclass
class QLinear:
    """A quantised projection and how its accumulators leave the engine.

    ``out`` is "q8" (INT8 at ``s_out``), "q32" (INT32 at ``s_out``, or added into the residual
    when ``residual``) or "acc32"; ``bias``/``mult``/``shift`` are the per-channel records.
    """

    weight: QuantWeight
    s_in: float
    s_out: float
    out: str
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    relu: bool = False
    residual: bool = False

    @property
    def n_out(self) -> int:
        return self.weight.padded[0]

    def apply(self, x: np.ndarray, resid: np.ndarray | None = None) -> np.ndarray:
        """Integer semantics of the matrix engine's output stage for INT8 rows ``x``."""
        k = self.weight.padded[1]
        xp = np.zeros((x.shape[0], k), dtype=np.int64)
        xp[:, :x.shape[1]] = x
        acc = xp @ self.weight.dequantized.T
        y = nm.requantize(acc + self.bias, self.mult, self.shift,
                          out_bits=8 if self.out == "q8" else 32, relu=self.relu)
        if self.residual:
            y = nm.sat32(y + resid)
        return y


@dataclass
class QNorm:
    kind: str  # "rms" or "layer"
    gamma: np.ndarray
    beta: np.ndarray | None
    shift: int
    eps: int
    s_out: float

    def apply(self, r: np.ndarray) -> np.ndarray:
        fn = nm.rmsnorm if self.kind == "rms" else nm.layernorm
        return nm.sat8(fn(r, self.gamma, self.shift, self.eps, self.beta))


@dataclass
class QLayer:
    norm1: QNorm
    q: QLinear
    k: QLinear
    v: QLinear
    o: QLinear
    norm2: QNorm
    mlp: dict[str, QLinear]
    s_q: float
    s_k: float
    s_v: float
    s_ctx: float
    rope_q: tuple[int, int] | None  # (m1, s1) INT32 q -> INT8 q after rotation
    rope_k: tuple[int, int] | None
    softmax: tuple[int, int]  # (m1, s1)
    ctx: tuple[int, int, int]  # MUL rowscalar (s1, m2, s2)
    act: tuple[int, int, int, int] | None  # (m1, s1, m2, s2) of SILU or GELU
    gate_mul: tuple[int, int, int] | None  # MUL (s1, m2, s2) of act(gate) * up
    #: The gated MLP's hidden in two INT8 digits (hi = round(m / 128), lo = m - 128 hi): the
    #: records that add ``down . lo`` into the residual (``down`` itself adds ``down . hi``).
    down_lo: QLinear | None = None


@dataclass
class QModel:
    config: ModelConfig
    recipe: QuantRecipe
    s_resid: float
    layers: list[QLayer]
    final_norm: QNorm
    lm_head: QLinear
    embed: np.ndarray  # float32 [vocab, hidden]; the host embeds tokens
    pos_embed: np.ndarray | None
    max_len: int

    def embed_tokens(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The host's part: INT32 residual rows for ``tokens`` at ``positions``."""
        x = self.embed[tokens].astype(np.float64)
        if self.pos_embed is not None:
            x = x + self.pos_embed[positions + self.config.position_offset]
        lim = (1 << (nm.NORM_INPUT_BITS - 1)) - 1
        return np.clip(np.round(x / self.s_resid), -lim, lim).astype(np.int64)

    def rope_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return nm.rope_table(positions, self.config.head_dim, self.config.rope_theta)


# --------------------------------------------------------------------------- building
def _records(w: QuantWeight, s_in: float, s_out: float, bias: np.ndarray | None):
    n = w.padded[0]
    mult = np.zeros(n, dtype=np.int64)
    shift = np.zeros(n, dtype=np.int64)
    for i in range(n):
        mult[i], shift[i] = nm.quantize_multiplier(s_in * w.scale[i] / s_out) \
            if w.scale[i] > 0 else (0, 0)
    b = np.zeros(n, dtype=np.int64)
    if bias is not None:
        step = s_in * w.scale[:len(bias)]
        b[:len(bias)] = np.where(step > 0, np.round(bias / np.where(step > 0, step, 1)), 0)
        b = np.clip(b, nm.INT32_MIN, nm.INT32_MAX)
    return b, mult, shift


def _linear(name: str, tensors, kind: str, recipe, s_in, s_out, out, **kw) -> QLinear:
    """Quantise projection ``kind`` of a block (``tensors`` by short key) or, with ``tensors``
    a (weight, bias) pair, any other projection."""
    if isinstance(tensors, tuple):
        weight, bias = tensors
    else:
        weight, bias = tensors[f"{kind}.weight"], tensors.get(f"{kind}.bias")
    bits = recipe.bits_for(kind, name)
    qw = quantize_weight(weight, bits, sparsity=recipe.sparsity_for(kind),
                         group_scales=recipe.group_scales)
    b, mult, shift = _records(qw, s_in, s_out, bias)
    return QLinear(qw, s_in, s_out, out, b, mult, shift, **kw)


def _norm(kind: str, weight, bias, eps: float, s_in: float, s_out: float) -> QNorm:
    g = np.asarray(weight, dtype=np.float64) / s_out
    top = float(np.max(np.abs(g))) or 1.0
    shift = int(min(max(math.floor(math.log2(32767 / top)), 0), 30))
    gamma = np.round(g * 2.0**shift).astype(np.int64)
    beta = None
    if bias is not None:
        beta = np.clip(np.round(np.asarray(bias, np.float64) / s_out * 2.0**shift),
                       nm.INT32_MIN, nm.INT32_MAX).astype(np.int64)
    return QNorm(kind, gamma, beta, shift, int(min(round(eps / s_in**2), nm.INT32_MAX)), s_out)


def _scale8(amax: float) -> float:
    return max(amax, 1e-8) / 127.0


def _scale_wide(amax: float, bits: int = WIDE_BITS) -> float:
    return max(amax, 1e-8) / float(1 << bits)


def build_qmodel(ir: TransformerIR, ranges: dict[str, float], recipe: QuantRecipe, *,
                 max_len: int, sink=None) -> QModel:
    """Quantise ``ir`` with activation ranges (max |value| per point, from calibration).

    Args:
        sink: called as ``sink(name, qlinear)`` as soon as each projection is quantised
            (``layers.<i>.<kind>``, ``lm_head``); it may place and release the weights, so a
            full-size model never holds more than one layer's weights.
    """
    cfg = ir.config

    def emit(name: str, lin: QLinear) -> QLinear:
        if sink is not None:
            sink(name, lin)
        return lin
    s_r = _scale_wide(ranges["resid"], RESIDUAL_BITS)
    layers = []
    for i, t in ir.layers():
        def rng(key):
            return ranges[f"layers.{i}.{key}"]
        s_h1, s_h2 = _scale8(rng("h1")), _scale8(rng("h2"))
        s_q, s_v, s_ctx = (_scale8(rng(k)) for k in ("q", "v", "ctx"))
        s_k = _scale8(rng("k") * recipe.key_headroom)
        rope = cfg.position == "rope"
        s_q32 = _scale_wide(rng("q_pre")) if rope else s_q
        s_k32 = _scale_wide(rng("k_pre")) if rope else s_k
        norm1 = _norm(cfg.norm, t["attn_norm.weight"], t.get("attn_norm.bias"), cfg.norm_eps,
                      s_r, s_h1)
        q = _linear(f"layers.{i}.q", t, "q", recipe, s_h1, s_q32,
                    "q32" if rope else "q8")
        k = _linear(f"layers.{i}.k", t, "k", recipe, s_h1, s_k32,
                    "q32" if rope else "q8")
        v = _linear(f"layers.{i}.v", t, "v", recipe, s_h1, s_v, "q8")
        o = _linear(f"layers.{i}.o", t, "o", recipe, s_ctx, s_r, "q32",
                    residual=True)
        for key, lin in (("q", q), ("k", k), ("v", v), ("o", o)):
            emit(f"layers.{i}.{key}", lin)
        norm2 = _norm(cfg.norm, t["mlp_norm.weight"], t.get("mlp_norm.bias"), cfg.norm_eps,
                      s_r, s_h2)
        s_m = _scale8(rng("mlp_hidden"))
        act = gate_mul = down_lo = None
        split = cfg.gated_mlp and recipe.split_hidden
        s_fine = s_m / 128 if split else s_m  # the low digit's unit
        if cfg.gated_mlp:
            s_g, s_u = _scale_wide(rng("gate")), _scale_wide(rng("up"))
            mlp = {"gate": _linear(f"layers.{i}.gate", t, "gate", recipe,
                                   s_h2, s_g, "q32"),
                   "up": _linear(f"layers.{i}.up", t, "up", recipe, s_h2, s_u,
                                 "q32")}
            # act(gate) stays at the gate's INT32 scale; the product comes down to INT8.
            act = (*nm.quantize_multiplier(s_g * (1 << nm.ACT_FRAC_BITS)), 1 << 14, 14)
            gate_mul = (WIDE_BITS, *nm.quantize_multiplier(s_g * s_u * 2.0**WIDE_BITS / s_fine))
            down_kind, up_key = "down", "down"
        elif cfg.activation == "relu":
            mlp = {"fc1": _linear(f"layers.{i}.fc1", t, "fc1", recipe, s_h2,
                                  s_m, "q8", relu=True)}
            down_kind, up_key = "fc2", "fc2"
        else:
            s_f = _scale_wide(rng("fc1"))
            mlp = {"fc1": _linear(f"layers.{i}.fc1", t, "fc1", recipe, s_h2,
                                  s_f, "q32")}
            act = (*nm.quantize_multiplier(s_f * (1 << nm.ACT_FRAC_BITS)),
                   *nm.quantize_multiplier(s_f / s_m))
            down_kind, up_key = "fc2", "fc2"
        mlp[up_key] = _linear(f"layers.{i}.{down_kind}", t, down_kind, recipe, s_m, s_r, "q32",
                              residual=True)
        if split:
            hi = mlp[up_key]
            _, mult, shift = _records(hi.weight, s_fine, s_r, None)
            down_lo = QLinear(hi.weight, s_fine, s_r, "q32", np.zeros_like(hi.bias), mult, shift,
                              residual=True)
        for key, lin in mlp.items():
            emit(f"layers.{i}.{key}", lin)
        soft = nm.quantize_multiplier(s_q * s_k / math.sqrt(cfg.head_dim) * math.log2(math.e)
                                      * (1 << nm.EXP2_FRAC_BITS))
        # ctx = (P.V) * R / 2**37 in units of s_v: keep 8 fraction bits, then rescale to s_ctx.
        ctx = (29, *nm.quantize_multiplier(s_v / 2.0**8 / s_ctx))
        layers.append(QLayer(
            norm1=norm1, q=q, k=k, v=v, o=o, norm2=norm2, mlp=mlp, s_q=s_q, s_k=s_k, s_v=s_v,
            s_ctx=s_ctx, rope_q=nm.quantize_multiplier(s_q32 / s_q) if rope else None,
            rope_k=nm.quantize_multiplier(s_k32 / s_k) if rope else None, softmax=soft,
            ctx=ctx, act=act, gate_mul=gate_mul, down_lo=down_lo))
    s_f = _scale8(ranges["final_h"])
    final_bias = ir.tensor("final_norm.bias") if cfg.norm == "layer" else None
    final = _norm(cfg.norm, ir.tensor("final_norm.weight"), final_bias, cfg.norm_eps, s_r, s_f)
    head = emit("lm_head", _linear("lm_head", (ir.lm_head_weight(), None), "lm_head", recipe, s_f,
                                   _scale_wide(ranges["logits"]), "q32"))
    pos = ir.tensor("pos_embed.weight") if cfg.position == "learned" else None
    return QModel(cfg, recipe, s_r, layers, final, head, ir.tensor("embed.weight"), pos,
                  max_len)


# --------------------------------------------------------------------------- reference
@dataclass
class KVState:
    """The INT8 key/value cache per layer: ``[max_len, kv_heads, head_dim]``."""

    keys: list[np.ndarray]
    values: list[np.ndarray]

    @classmethod
    def empty(cls, qm: QModel) -> KVState:
        shape = (qm.max_len, qm.config.num_kv_heads, qm.config.head_dim)
        return cls([np.zeros(shape, np.int64) for _ in qm.layers],
                   [np.zeros(shape, np.int64) for _ in qm.layers])


def _rope(x32: np.ndarray, qm: QModel, positions, heads: int, m1: int, s1: int):
    cos, sin = qm.rope_rows(positions)
    return nm.sat8(nm.rope(x32, cos, sin, m1, s1, group=qm.config.head_dim,
                           interleaved=qm.config.rope_interleaved)).reshape(len(positions), heads,
                                                                             -1)


def qforward(qm: QModel, tokens, pos: int, kv: KVState, *,
             attn_mask: AttentionSparsity | None = None) -> np.ndarray:
    """Run ``tokens`` at positions ``pos..`` through the integer model; ``kv`` grows in place.

    Args:
        attn_mask: the build's block-sparse prefill attention (``None``: dense causal, as
            decode always is); pass it for the prefill of a build compiled with one.

    Returns:
        INT32 logits ``[len(tokens), vocab]`` (real logits are these times ``lm_head.s_out``).
    """
    cfg = qm.config
    tokens = np.asarray(tokens, dtype=np.int64)
    seq = len(tokens)
    positions = np.arange(pos, pos + seq)
    if pos + seq > qm.max_len:
        raise ValueError(f"positions up to {pos + seq} exceed the build's max_len {qm.max_len}")
    H, G, hd, kvh = cfg.num_heads, cfg.group_size, cfg.head_dim, cfg.num_kv_heads
    r = qm.embed_tokens(tokens, positions)
    for li, layer in enumerate(qm.layers):
        h = layer.norm1.apply(r)
        if layer.rope_q is not None:
            q = _rope(layer.q.apply(h)[:, :H * hd], qm, positions, H, *layer.rope_q)
            k = _rope(layer.k.apply(h)[:, :kvh * hd], qm, positions, kvh, *layer.rope_k)
        else:
            q = layer.q.apply(h)[:, :H * hd].reshape(seq, H, hd)
            k = layer.k.apply(h)[:, :kvh * hd].reshape(seq, kvh, hd)
        v = layer.v.apply(h)[:, :kvh * hd].reshape(seq, kvh, hd)
        kv.keys[li][pos:pos + seq] = k
        kv.values[li][pos:pos + seq] = v
        n = pos + seq
        ctx = np.zeros((seq, H * hd), dtype=np.int64)
        causal = (np.arange(n)[None, :] <= positions[:, None] if attn_mask is None
                  else attn_mask.visible(pos, seq, n))
        for head in range(H):
            keys = kv.keys[li][:n, head // G]          # [n, hd]
            scores = q[:, head] @ keys.T               # [seq, n]
            p, recip = nm.softmax_deferred(scores, *layer.softmax, valid=causal)
            pv = p @ kv.values[li][:n, head // G]      # [seq, hd]
            ctx[:, head * hd:(head + 1) * hd] = nm.sat8(nm.mul(pv, recip, *layer.ctx))
        r = layer.o.apply(ctx, r)
        h2 = layer.norm2.apply(r)
        if cfg.gated_mlp:
            g = layer.mlp["gate"].apply(h2)
            u = layer.mlp["up"].apply(h2)
            a = nm.sat32(nm.activation(g, cfg.activation, *layer.act))
            if layer.down_lo is None:
                r = layer.mlp["down"].apply(nm.sat8(nm.mul(a, u, *layer.gate_mul)), r)
            else:
                m = nm.sat32(nm.mul(a, u, *layer.gate_mul))
                hi = nm.sat8(nm.rshift_round(m, 7))
                lo = nm.sat8(m - (hi << 7))
                r = layer.down_lo.apply(lo, layer.mlp["down"].apply(hi, r))
        elif layer.act is None:
            r = layer.mlp["fc2"].apply(layer.mlp["fc1"].apply(h2), r)
        else:
            f = layer.mlp["fc1"].apply(h2)
            m = nm.sat8(nm.activation(f, cfg.activation, *layer.act))
            r = layer.mlp["fc2"].apply(m, r)
    return qm.lm_head.apply(qm.final_norm.apply(r))[:, :cfg.vocab_size]
