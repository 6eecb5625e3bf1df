"""Numerics: the bit-exact arithmetic every side of flightllm agrees on.

Integer-only fixed point (rationale, formats and measured errors in docs/numerics.md):

* activations are INT8 (ABUF) with a per-tensor scale chosen by the compiler; wide values
  (accumulators, the residual stream, attention scores) are INT32 (RBUF);
* weights are INT2/INT4/INT8 with a per-output-channel real scale folded into requantisation
  multipliers, and optionally a 4-bit per-row multiplier per 16x16 block (contract/weights.py)
  that dequantises low-bit weights to INT8 on chip;
* products accumulate exactly in INT32; every rescaling is an integer multiply by a signed 16-bit
  multiplier and an arithmetic right shift that rounds half up (:func:`rshift_round`);
* special functions use small ROM tables (exp2, sigmoid, GELU, reciprocal square root) built here
  by :func:`tables` and shipped to the RTL from the same arrays.

All functions take and return numpy ``int64`` arrays (or ints); intermediate ranges are bounded
in the docstrings so that int64 never overflows. The golden simulator calls these functions; the
RTL is checked against them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = [
    "INT8_MIN", "INT8_MAX", "INT32_MIN", "INT32_MAX", "MASKED", "NORM_INPUT_BITS",
    "EXP2_FRAC_BITS", "ACT_FRAC_BITS", "ACT_RANGE", "RSQRT_INDEX_BITS", "ROPE_FRAC_BITS",
    "rshift_round", "sat8", "sat32", "requantize", "quantize_multiplier", "tables",
    "SOFTMAX_OUT_BITS", "softmax", "softmax_deferred", "rmsnorm", "layernorm", "activation",
    "add", "add_multipliers", "mul", "rope", "rope_table", "ACTIVATIONS",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
#: An INT32 score equal to this is masked (minus infinity) in SOFTMAX.
MASKED = INT32_MIN
#: Norm inputs are saturated to this many bits so squares and their sums fit in int64.
NORM_INPUT_BITS = 24
#: Longest norm row: n * (2**23)**2 (LayerNorm's centred values reach 2**24) stays below 2**63.
MAX_NORM_ELEMENTS = 1 << 14
#: exp2 table: 2**-(f / 2**EXP2_FRAC_BITS) for f in [0, 2**EXP2_FRAC_BITS), Q15.
EXP2_FRAC_BITS = 8
#: Gate tables (sigmoid, GELU) are indexed by x in Q(ACT_FRAC_BITS) over [-ACT_RANGE, ACT_RANGE).
ACT_FRAC_BITS = 8
ACT_RANGE = 8
#: Reciprocal square root table: mantissa bits after the leading one, per exponent parity.
RSQRT_INDEX_BITS = 9
#: RoPE cos/sin tables are Q14 signed 16-bit.
ROPE_FRAC_BITS = 14
#: Softmax output scale: probabilities in INT8 with scale 2**-SOFTMAX_OUT_BITS (1.0 saturates).
SOFTMAX_OUT_BITS = 7

ACTIVATIONS = ("silu", "gelu_tanh", "gelu_erf", "relu")


# --------------------------------------------------------------------------- rounding
def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def rshift_round(x, shift):
    """Arithmetic right shift by ``shift`` in [0, 62], rounding half up: floor(x / 2**s + 1/2).

    Ties go towards +infinity (-2.5 -> -2, 2.5 -> 3); this is what an adder in front of a
    shifter gives in hardware. ``shift`` may be an array broadcasting against ``x``.
    """
    x, s = _i64(x), _i64(shift)
    if np.any((s < 0) | (s > 62)):
        raise ValueError(f"shift {shift} outside [0, 62]")
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.right_shift(x + half, s)


def sat8(x):
    return np.clip(_i64(x), INT8_MIN, INT8_MAX)


def sat32(x):
    return np.clip(_i64(x), INT32_MIN, INT32_MAX)


def requantize(acc, mult, shift, *, out_bits: int = 8, relu: bool = False):
    """``sat(rshift_round(acc * mult, shift))`` to INT8 or INT32.

    ``acc`` fits INT34 (accumulator + partial sum + bias), ``mult`` is signed 16-bit, so the
    product stays below 2**49.
    """
    y = rshift_round(_i64(acc) * _i64(mult), shift)
    if relu:
        y = np.maximum(y, 0)
    return sat8(y) if out_bits == 8 else sat32(y)


def quantize_multiplier(real: float, *, mult_bits: int = 15,
                        max_shift: int = 62) -> tuple[int, int]:
    """The (mult, shift) pair with ``mult / 2**shift`` closest to ``real`` and ``|mult| < 2**15``.

    Used by the compiler for every rescaling; the golden simulator never calls it.
    """
    if real == 0.0 or not math.isfinite(real):
        if not math.isfinite(real):
            raise ValueError(f"cannot quantise non-finite multiplier {real}")
        return 0, 0
    mant, exp = math.frexp(abs(real))  # real = mant * 2**exp, mant in [0.5, 1)
    shift = mult_bits - exp
    if shift > max_shift:
        # Below the full-precision range: fewer mantissa bits at the largest shift.
        mult = round(abs(real) * (1 << max_shift))
        return (int(math.copysign(mult, real)), max_shift) if mult else (0, 0)
    if shift < 0:
        raise ValueError(f"multiplier {real} too large for a {mult_bits}-bit mantissa")
    mult = round(mant * (1 << mult_bits))
    if mult == 1 << mult_bits:  # rounding carried into the next power of two
        mult >>= 1
        shift -= 1
        if shift < 0:
            raise ValueError(f"multiplier {real} too large for a {mult_bits}-bit mantissa")
    return int(math.copysign(mult, real)), shift


# --------------------------------------------------------------------------- tables
@lru_cache(maxsize=None)
def tables() -> dict[str, np.ndarray]:
    """The ROM contents, read-only: ``exp2`` (Q15), ``silu``/``gelu_tanh``/``gelu_erf`` gates
    (Q15), ``rsqrt`` (2 x 2**RSQRT_INDEX_BITS, Q15). The RTL instantiates exactly these."""
    f = np.arange(1 << EXP2_FRAC_BITS)
    exp2 = np.round(32768.0 * np.exp2(-f / (1 << EXP2_FRAC_BITS)))
    t = np.arange(-ACT_RANGE << ACT_FRAC_BITS, ACT_RANGE << ACT_FRAC_BITS) / (1 << ACT_FRAC_BITS)
    sig = 1.0 / (1.0 + np.exp(-t))
    gtanh = 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t**3)))
    gerf = 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))
    mant = (np.arange(1 << RSQRT_INDEX_BITS) + (1 << RSQRT_INDEX_BITS)) / (1 << RSQRT_INDEX_BITS)
    rsqrt = np.stack([1.0 / np.sqrt(mant), 1.0 / np.sqrt(2.0 * mant)])
    out = {
        "exp2": exp2,
        "silu": np.round(32768.0 * sig),
        "gelu_tanh": np.round(32768.0 * gtanh),
        "gelu_erf": np.round(32768.0 * gerf),
        "rsqrt": np.round(32768.0 * rsqrt),
    }
    for name, arr in out.items():
        arr = arr.astype(np.int64)
        arr.setflags(write=False)
        out[name] = arr
    return out


# --------------------------------------------------------------------------- functions
def _exp2_rows(scores, m1: int, s1: int, valid):
    """Per row: Q23 base-2 exponentials relative to the row maximum, and the live mask."""
    x = _i64(scores)
    ok = x != MASKED
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    mx = np.max(np.where(ok, x, INT32_MIN), axis=-1, keepdims=True)
    d = np.where(ok, x - mx, 0)
    u = np.maximum(-rshift_round(d * np.int64(m1), s1), 0)  # keep table indices in range
    frac = u & ((1 << EXP2_FRAC_BITS) - 1)
    whole = np.minimum(u >> EXP2_FRAC_BITS, 62)
    # Eight guard bits below the Q15 table keep the row sum accurate on long rows.
    e = np.right_shift(tables()["exp2"][frac] << 8, whole)
    return np.where(ok, e, 0), ok


def softmax(scores, m1: int, s1: int, *, valid=None):
    """Row-wise softmax of INT32 scores to INT8 probabilities with scale 2**-7.

    Args:
        scores: [rows, n] INT32; :data:`MASKED` entries count as minus infinity.
        m1, s1: ``m1 / 2**s1`` = input scale x log2(e) x 2**EXP2_FRAC_BITS: converts score
            differences to base-2 exponents in Q(EXP2_FRAC_BITS).
        valid: optional [rows, n] bool mask of columns that take part (causal / length masks).

    Per row: ``d = x - max`` (<= 0); ``u = max(-rshift_round(d * m1, s1), 0)``;
    ``e = (exp2[u & 255] << 8) >> (u >> 8)`` in Q23; ``S = sum(e)``; ``R = 2**54 // S``;
    ``p = min(127, rshift_round(e * R, 47))``. Columns that do not take part give 0; a row
    with none gives all zeros. ``e <= S`` bounds ``e * R`` by 2**54.
    """
    e, _ = _exp2_rows(scores, m1, s1, valid)
    total = e.sum(axis=-1, keepdims=True)
    recip = np.where(total > 0, (np.int64(1) << 54) // np.maximum(total, 1), 0)
    return np.minimum(rshift_round(e * recip, 54 - SOFTMAX_OUT_BITS), INT8_MAX)


def softmax_deferred(scores, m1: int, s1: int, *, valid=None):
    """Softmax whose normalisation is deferred past the product with V.

    Returns ``(q, R)``: ``q = rshift_round(e * 127, 23)``, INT8 weights relative to the row
    maximum (which gets exactly 127), and per row ``R = 2**60 // (127 * S)`` with ``S = sum(e)``
    the exact Q23 sum (0 for a row with no live column). ``q_j * R / 2**37`` is ``e_j / S``, so
    ``sum_j q_j v_j * R / 2**37`` is the normalised attention output. Against the normalised
    :func:`softmax` the weights have the resolution of the row maximum instead of the row
    sum: on long, flat rows, where a normalised INT8 softmax rounds most of its mass to zero,
    they keep it. ``e`` is as in :func:`softmax`; ``R < 2**31`` since ``S >= 2**23``.
    """
    e, _ = _exp2_rows(scores, m1, s1, valid)
    q = rshift_round(e * 127, 23)
    total = e.sum(axis=-1, keepdims=True)
    recip = np.where(total > 0, (np.int64(1) << 60) // np.maximum(127 * total, 1), 0)
    return q, recip


def _rsqrt_q15(v):
    """Q15 mantissa and extra shift of 1/sqrt(v) for v >= 1: 1/sqrt(v) ~ r / 2**(15 + k)."""
    v = _i64(v)
    e = np.frompyfunc(lambda a: int(a).bit_length() - 1, 1, 1)(v).astype(np.int64)
    lo = np.maximum(e - RSQRT_INDEX_BITS, 0)
    hi = np.maximum(RSQRT_INDEX_BITS - e, 0)
    mant = np.left_shift(np.right_shift(v, lo), hi)  # in [2**9, 2**10): the leading one kept
    parity = e & 1
    r = tables()["rsqrt"][parity, mant - (1 << RSQRT_INDEX_BITS)]
    return r, (e - parity) >> 1


def _norm(x, gamma, beta, shift, eps, *, center: bool):
    x = np.clip(_i64(x), -(1 << (NORM_INPUT_BITS - 1)), (1 << (NORM_INPUT_BITS - 1)) - 1)
    n = x.shape[-1]
    if n > MAX_NORM_ELEMENTS:
        raise ValueError(f"norm over {n} elements; at most {MAX_NORM_ELEMENTS} keep sums in int64")
    if center:
        mean = np.floor_divide(x.sum(axis=-1, keepdims=True), n)
        x = x - mean
    var = np.floor_divide((x * x).sum(axis=-1, keepdims=True), n) + np.int64(eps)
    r, k = _rsqrt_q15(np.maximum(var, 1))
    y = rshift_round(x * r * _i64(gamma), 15 + k)  # output units x 2**shift
    if beta is not None:
        y = y + _i64(beta)
    return rshift_round(y, shift)


def rmsnorm(x, gamma, shift: int, eps: int, beta=None):
    """``x / sqrt(mean(x**2) + eps) * gamma``, rounded: INT32 in, unsaturated INT64 out.

    Args:
        x: [rows, n] INT32, saturated to :data:`NORM_INPUT_BITS` bits first.
        gamma: [n] signed 16-bit gains = real gain / output scale * 2**shift.
        shift: extra right shift that goes with ``gamma``.
        eps: epsilon in units of x**2 (non-negative INT32); the variance is at least 1.
        beta: optional [n] INT32 bias in output units x 2**shift.

    ``var = floor(sum(x**2) / n) + eps``; 1/sqrt(var) ~ r / 2**(15 + k) from the rsqrt table
    after normalising var to a 10-bit mantissa and an exponent;
    ``y = rshift_round(rshift_round(x * r * gamma, 15 + k) + beta, shift)``: the bias joins
    before the final rounding. The caller saturates to the destination type.
    """
    return _norm(x, gamma, beta, shift, eps, center=False)


def layernorm(x, gamma, shift: int, eps: int, beta=None):
    """As :func:`rmsnorm` after subtracting ``floor(sum(x) / n)`` from every element."""
    return _norm(x, gamma, beta, shift, eps, center=True)


def activation(x, func: str, m1: int, s1: int, m2: int, s2: int):
    """``y = rshift_round(g * m2, s2)`` with ``g = rshift_round(x * G(t), 15)``.

    ``t = rshift_round(x * m1, s1)`` is x in Q(ACT_FRAC_BITS) (``m1 / 2**s1`` = input scale x
    2**ACT_FRAC_BITS). ``G`` is the Q15 gate table (sigmoid for SiLU, the GELU gates) looked up
    at ``clip(t, -8, 8 - 2**-8)``; beyond that range G is 0 below and 1 above. RELU uses
    ``G = 1 if x > 0 else 0``. The caller saturates ``y`` to the destination type.
    """
    x = _i64(x)
    if func == "relu":
        gate = np.where(x > 0, 32768, 0)
    elif func in ("silu", "gelu_tanh", "gelu_erf"):
        t = rshift_round(x * np.int64(m1), s1)
        lim = ACT_RANGE << ACT_FRAC_BITS
        table = tables()[func]
        gate = table[np.clip(t, -lim, lim - 1) + lim]
        gate = np.where(t >= lim, 32768, np.where(t < -lim, 0, gate))
    else:
        raise ValueError(f"unknown activation {func!r}; known: {ACTIVATIONS}")
    g = rshift_round(x * gate, 15)
    return rshift_round(g * np.int64(m2), s2)


def add(a, b, m1: int, s1: int, m2: int, s2: int):
    """``rshift_round(a * m1 + ((b * m2) << s2), s1)``: a rescaling add of INT32 operands.

    Operand a's weight is ``m1 / 2**s1`` and b's is ``m2 * 2**s2 / 2**s1``: putting the
    operand with the smaller weight first gives both 15-bit multipliers their full precision.
    ``s2 <= 16`` keeps ``(b * m2) << s2`` below 2**62.
    """
    if not 0 <= s2 <= 16:
        raise ValueError(f"ADD's second shift {s2} outside [0, 16]")
    return rshift_round(_i64(a) * np.int64(m1) + ((_i64(b) * np.int64(m2)) << np.int64(s2)), s1)


def add_multipliers(ra: float, rb: float) -> tuple[bool, int, int, int, int]:
    """ADD's fields for ``y = a * ra + b * rb``: ``(swap, m1, s1, m2, s2)``.

    ``swap`` says the operands go in the other order (the smaller ratio first), so that both
    multipliers keep 15 bits: ``m1 / 2**s1`` is the smaller ratio and ``m2 * 2**s2 / 2**s1``
    the larger. With ``s2`` at most 16, ratios more than 2**16 apart cost the *smaller* one
    mantissa bits (its term is the smaller one), never the larger.
    """
    swap = abs(rb) < abs(ra)
    small, big = (rb, ra) if swap else (ra, rb)
    m2, sb = quantize_multiplier(big)
    if m2 == 0:
        return swap, 0, 0, 0, 0
    m1, s1 = quantize_multiplier(small)
    if m1 == 0 or s1 > sb + 16:
        s1 = sb + 16
        m1 = round(small * 2.0**s1)
    return swap, m1, s1, m2, s1 - sb


def mul(a, b, s1: int, m2: int, s2: int):
    """``rshift_round(sat32(rshift_round(a * b, s1)) * m2, s2)``; b may be [rows, 1] (one
    scalar per row, as the deferred softmax's reciprocals are)."""
    p = sat32(rshift_round(_i64(a) * _i64(b), s1))
    return rshift_round(p * np.int64(m2), s2)


def rope(x, cos, sin, m1: int, s1: int, *, group: int, interleaved: bool = False):
    """Rotary position embedding on INT32 rows of heads.

    Args:
        x: [rows, n] INT32; each row is n // group heads of ``group`` elements.
        cos, sin: [rows, group // 2] Q14 signed 16-bit tables (one row per token).
        m1, s1: output rescaling; ``y = rshift_round((a*c - b*s) * m1, 14 + s1)``.
        group: head dimension (even).
        interleaved: pair (2i, 2i+1) (GPT-J); otherwise (i, i + group/2) (GPT-NeoX, LLaMA).
    """
    x = _i64(x)
    rows, n = x.shape
    if group % 2 or n % group:
        raise ValueError(f"RoPE group {group} must be even and divide the row length {n}")
    h = x.reshape(rows, n // group, group)
    half = group // 2
    if interleaved:
        a, b = h[..., 0::2], h[..., 1::2]
    else:
        a, b = h[..., :half], h[..., half:]
    c = _i64(cos)[:, None, :]
    s = _i64(sin)[:, None, :]
    ya = rshift_round((a * c - b * s) * np.int64(m1), ROPE_FRAC_BITS + s1)
    yb = rshift_round((a * s + b * c) * np.int64(m1), ROPE_FRAC_BITS + s1)
    out = np.empty_like(h)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = ya, yb
    else:
        out[..., :half], out[..., half:] = ya, yb
    return out.reshape(rows, n)


def rope_table(positions, head_dim: int, theta: float = 10000.0):
    """Q14 cos and sin tables ([len(positions), head_dim // 2] each) for the compiler."""
    inv = theta ** (-np.arange(0, head_dim, 2) / head_dim)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]
    one = 1 << ROPE_FRAC_BITS
    return (np.round(np.cos(ang) * one).astype(np.int64),
            np.round(np.sin(ang) * one).astype(np.int64))
