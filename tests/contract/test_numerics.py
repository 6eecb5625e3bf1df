"""Property tests of the integer arithmetic contract (flightllm/contract/numerics.py).

Exact primitives (rounding, saturation, requantisation, ADD) are checked against pure-Python
integers. Special functions are checked against float64 on the same integer inputs with loose
bounds derived from the error sources (table resolution, multiplier rounding, output rounding);
bench/numerics_error.py measures the actual errors, which sit well inside these bounds
(docs/numerics.md, "Measured error").
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flightllm.contract import numerics as nx

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
SETTINGS = settings(max_examples=150, deadline=None)


def py_round_shift(x: int, s: int) -> int:
    """floor(x / 2**s + 1/2) with exact rationals: the reference for rshift_round."""
    return math.floor(Fraction(x, 1 << s) + Fraction(1, 2))


@st.composite
def safe_shift_pairs(draw):
    """(x, s) over the whole int64 range for which x + 2**(s-1) does not overflow."""
    s = draw(st.integers(0, 62))
    hi = I64_MAX - ((1 << (s - 1)) if s else 0)
    return draw(st.integers(I64_MIN, hi)), s


# --------------------------------------------------------------------------- primitives
@SETTINGS
@given(safe_shift_pairs())
def test_rshift_round_matches_python_int(pair):
    x, s = pair
    assert int(nx.rshift_round(x, s)) == py_round_shift(x, s)


@SETTINGS
@given(st.lists(safe_shift_pairs(), min_size=1, max_size=20))
def test_rshift_round_elementwise_shift_array(pairs):
    xs, ss = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    assert nx.rshift_round(xs, ss).tolist() == [py_round_shift(x, s) for x, s in pairs]


def test_rshift_round_ties_go_up_and_bad_shift_raises():
    assert nx.rshift_round([-5, -3, 3, 5], 1).tolist() == [-2, -1, 2, 3]
    assert int(nx.rshift_round(7, 0)) == 7
    for bad in (-1, 63):
        with pytest.raises(ValueError):
            nx.rshift_round(1, bad)


@given(st.integers(I64_MIN, I64_MAX))
def test_saturation(x):
    assert int(nx.sat8(x)) == min(max(x, -128), 127)
    assert int(nx.sat32(x)) == min(max(x, -(1 << 31)), (1 << 31) - 1)


@SETTINGS
@given(st.integers(-(1 << 33), (1 << 33) - 1), st.integers(-(1 << 15) + 1, (1 << 15) - 1),
       st.integers(0, 62), st.sampled_from([8, 32]), st.booleans())
def test_requantize_matches_python_int(acc, mult, shift, out_bits, relu):
    want = py_round_shift(acc * mult, shift)
    if relu:
        want = max(want, 0)
    lim = 1 << (out_bits - 1)
    want = min(max(want, -lim), lim - 1)
    assert int(nx.requantize(acc, mult, shift, out_bits=out_bits, relu=relu)) == want


@SETTINGS
@given(st.floats(2.0**-48, 2.0**15, exclude_max=True), st.booleans())
def test_quantize_multiplier_precision(mag, negative):
    real = -mag if negative else mag
    try:
        mult, shift = nx.quantize_multiplier(real)
    except ValueError:  # only just below 2**15 can the rounding carry past 15 bits
        assert mag > (1 << 15) - 1
        return
    assert (1 << 14) <= abs(mult) < (1 << 15)
    assert 0 <= shift <= 62
    assert (mult < 0) == negative
    assert abs(mult / 2.0**shift - real) <= 2.0**-15 * abs(real)


def test_quantize_multiplier_edge_cases():
    assert nx.quantize_multiplier(0.0) == (0, 0)
    assert nx.quantize_multiplier(-0.0) == (0, 0)
    assert nx.quantize_multiplier(1.0) == (1 << 14, 14)
    assert nx.quantize_multiplier(-0.5) == (-(1 << 14), 15)
    assert nx.quantize_multiplier(2.0**-64) == (0, 0)  # under half the smallest step, 2**-62
    assert nx.quantize_multiplier(-1e-300) == (0, 0)
    for bad in (2.0**15, 1e9, math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            nx.quantize_multiplier(bad)


# --------------------------------------------------------------------------- tables
def test_table_shapes_ranges_monotonicity():
    t = nx.tables()
    one = 1 << 15
    assert t["exp2"].shape == (1 << nx.EXP2_FRAC_BITS,)
    assert t["exp2"][0] == one and np.all(np.diff(t["exp2"]) < 0) and t["exp2"][-1] > one // 2
    n_act = 2 * nx.ACT_RANGE << nx.ACT_FRAC_BITS
    for name in ("silu", "gelu_tanh", "gelu_erf"):
        g = t[name]
        assert g.shape == (n_act,) and g.min() >= 0 and g.max() <= one
        assert np.all(np.diff(g) >= 0), name  # every gate is a CDF-like rising function
        assert g[n_act // 2] == one // 2  # G(0) = 1/2
    r = t["rsqrt"]
    assert r.shape == (2, 1 << nx.RSQRT_INDEX_BITS)
    assert r.max() <= one and r.min() >= one // 2
    assert np.all(np.diff(r, axis=1) < 0) and np.all(r[1] < r[0])
    for arr in t.values():
        assert arr.dtype == np.int64 and arr.max() < (1 << 16) and not arr.flags.writeable


def test_tables_are_rounded_functions():
    t = nx.tables()
    f = np.arange(256) / 256
    assert np.max(np.abs(t["exp2"] - 32768 * 2.0**-f)) <= 0.5
    x = np.arange(-2048, 2048) / 256
    assert np.max(np.abs(t["silu"] - 32768 / (1 + np.exp(-x)))) <= 0.5
    erf = np.vectorize(math.erf)(x / math.sqrt(2))
    assert np.max(np.abs(t["gelu_erf"] - 16384 * (1 + erf))) <= 0.5


# --------------------------------------------------------------------------- softmax
SCALES = st.sampled_from([2.0**-12, 2.0**-8, 2.0**-4, 0.5])


def softmax_ref(x, s_in, valid):
    z = np.where(valid, x * s_in, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.clip(128 * e / e.sum(axis=-1, keepdims=True), 0, 127)


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 256)),
                  elements=st.floats(-20, 20)), SCALES)
def test_softmax_close_to_float(logits, s_in):
    x = np.round(logits / s_in).astype(np.int64)
    m1, s1 = nx.quantize_multiplier(s_in * math.log2(math.e) * 256)
    p = nx.softmax(x, m1, s1)
    ref = softmax_ref(x, s_in, np.ones(x.shape, bool))
    # Output rounding 0.5; exponent (Q8 rounding, table, m1) about 0.2% of p; the Q15
    # truncation of each exponential shrinks the sum by up to n / 2**15, inflating p.
    n = x.shape[1]
    assert np.max(np.abs(p - ref)) <= 0.5 + 0.006 * 128 + 128 * n / 2**15
    assert p.min() >= 0 and p.max() <= 127


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 16)),
                  elements=st.floats(-8, 8)), SCALES)
def test_softmax_rows_sum_to_128(logits, s_in):
    x = np.round(logits / s_in).astype(np.int64)
    m1, s1 = nx.quantize_multiplier(s_in * math.log2(math.e) * 256)
    sums = nx.softmax(x, m1, s1).sum(axis=-1)
    n = x.shape[1]
    # Each output rounds by at most 1/2; the exponent error moves the total by under 1; 1.0
    # saturates to 127.
    assert np.all(np.abs(sums - 128) <= 0.5 * n + 2)


@SETTINGS
@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 40)),
                  elements=st.integers(-(1 << 31) + 1, (1 << 31) - 1)),
       st.data())
def test_softmax_masked_and_invalid_columns_are_zero(x, data):
    rows, n = x.shape
    masked = data.draw(hnp.arrays(bool, (rows, n)))
    valid = data.draw(hnp.arrays(bool, (rows, n)))
    x = np.where(masked, nx.MASKED, x)
    m1, s1 = nx.quantize_multiplier(2.0**-12 * math.log2(math.e) * 256)
    p = nx.softmax(x, m1, s1, valid=valid)
    assert np.all(p[masked | ~valid] == 0)
    live = ~masked & valid
    empty = ~live.any(axis=-1)
    assert np.all(p[empty] == 0)
    assert np.all(p.max(axis=-1)[~empty] > 0)  # the row maximum always gets mass
    only = live.sum(axis=-1) == 1
    assert np.all(p[only].sum(axis=-1) == 127)  # a single column saturates to 127/128


# --------------------------------------------------------------------------- norms
@st.composite
def norm_inputs(draw):
    n = draw(st.integers(8, 600))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # Residual magnitudes of 2**6..2**20 LSBs, so the floored variance is exact to ~2**-10.
    std = 2.0 ** draw(st.floats(6, 20))
    x = np.round(rng.normal(draw(st.floats(-2, 2)) * std, std, (3, n)))
    x = np.clip(x, -(1 << 23), (1 << 23) - 1).astype(np.int64)
    gamma = rng.integers(-(1 << 15) + 1, 1 << 15, n)
    shift = draw(st.integers(4, 14))
    eps = draw(st.integers(0, 1000))
    return x, gamma, shift, eps


@SETTINGS
@given(norm_inputs(), st.booleans())
def test_norms_close_to_float(inp, center):
    x, gamma, shift, eps = inp
    func = nx.layernorm if center else nx.rmsnorm
    y = func(x, gamma, shift, eps)
    xc = x - x.mean(axis=-1, keepdims=True) if center else x.astype(np.float64)
    var = np.mean(xc**2, axis=-1, keepdims=True) + eps
    g = gamma / 2.0**shift
    ref = xc / np.sqrt(var) * g
    # rsqrt: 9-bit truncated mantissa index (2**-10 relative) and Q15 entries; floor of the
    # variance (2**-10 here); LayerNorm's floored mean moves every x by less than one LSB.
    # Plus the intermediate rounding at 2**-shift output LSBs that lets beta join unrounded.
    bound = (0.5 + 2.0**-(shift + 1) + 2.0**-8 * np.abs(ref)
             + (np.abs(g) / np.sqrt(var) if center else 0))
    assert np.all(np.abs(y - ref) <= bound)


@SETTINGS
@given(norm_inputs(), st.integers(-1000, 1000))
def test_layernorm_output_mean_is_zero(inp, beta0):
    x, _, shift, eps = inp
    n = x.shape[-1]
    gamma = np.full(n, 20000)
    # beta is in output units x 2**shift: beta0 << shift shifts the output mean by beta0.
    y = nx.layernorm(x, gamma, shift, eps, beta=np.full(n, beta0 << shift))
    xc = x - x.mean(axis=-1, keepdims=True)
    sd = np.sqrt(np.mean(xc**2, axis=-1) + eps)
    # Constant gain, so the exact mean is 0: what remains is the output rounding and the
    # floored mean, which leaves the centred row's mean in [0, 1) input LSBs.
    assert np.all(np.abs(y.mean(axis=-1) - beta0) <= 0.5 + 1.01 * 20000 / 2**shift / sd)


def test_rmsnorm_of_constant_row():
    x = np.full((1, 64), 1000)
    y = nx.rmsnorm(x, np.full(64, 1 << 14), 14, 0)  # gain 1: x / rms(x) = 1
    assert np.all(y == 1)


# --------------------------------------------------------------------------- activations
_GATE = {
    "silu": lambda t: 1 / (1 + np.exp(-t)),
    "gelu_tanh": lambda t: 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))),
    "gelu_erf": lambda t: 0.5 * (1 + np.vectorize(math.erf)(t / math.sqrt(2))),
    "relu": lambda t: (t > 0) * 1.0,
}


@SETTINGS
@given(st.sampled_from(nx.ACTIVATIONS), st.floats(2.0**-16, 0.5), st.floats(0.01, 1.0),
       hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-20, 20)))
def test_activation_close_to_float(func, s_in, s_out, real):
    x = np.round(real / s_in).astype(np.int64)
    m1, s1 = nx.quantize_multiplier(s_in * 256)
    m2, s2 = nx.quantize_multiplier(s_in / s_out)
    y = nx.activation(x, func, m1, s1, m2, s2)
    xr = x * s_in
    ref = xr * _GATE[func](xr) / s_out
    # Gate error: slope (<= 0.45) x Q8 rounding of t, plus the table's Q15 rounding and the
    # clamp outside [-8, 8) (<= 3.4e-4): under 1e-3 of |x|. Then two output roundings and
    # the multipliers' 2**-15.
    bound = 0.5 + 0.5 * s_in / s_out + 1e-3 * np.abs(xr) / s_out + 2.0**-14 * np.abs(ref)
    assert np.all(np.abs(y - ref) <= bound)


def test_activation_rejects_unknown_function():
    with pytest.raises(ValueError, match="unknown activation"):
        nx.activation(1, "tanh", 1, 0, 1, 0)


# --------------------------------------------------------------------------- add, mul, rope
INT32S = st.integers(-(1 << 31), (1 << 31) - 1)


@SETTINGS
@given(INT32S, INT32S, st.floats(1e-4, 100), st.floats(1e-4, 100))
def test_add_exact_and_close_to_real_ratios(a, b, r1, r2):
    swap, m1, s1, m2, s2 = nx.add_multipliers(r1, r2)
    x1, x2 = (b, a) if swap else (a, b)
    y = int(nx.add(x1, x2, m1, s1, m2, s2))
    assert y == py_round_shift(x1 * m1 + ((x2 * m2) << s2), s1)  # one exact rounding
    small, big = (Fraction(r2), Fraction(r1)) if swap else (Fraction(r1), Fraction(r2))
    w_small, w_big = Fraction(m1, 1 << s1), Fraction(m2 << s2, 1 << s1)
    # The larger ratio always keeps a 15-bit multiplier; the smaller one too, unless the
    # ratios are more than 2**16 apart, when it keeps the step of the larger one's shift.
    assert abs(w_big - big) <= big / (1 << 14)
    assert abs(w_small - small) <= max(small / (1 << 14), Fraction(1, 1 << (s1 + 1)))
    exact = x1 * small + x2 * big
    assert abs(y - exact) <= Fraction(1, 2) + abs(x1) * abs(w_small - small) \
        + abs(x2) * abs(w_big - big)


@SETTINGS
@given(st.integers(-(1 << 20), 1 << 20), st.integers(-(1 << 20), 1 << 20), st.integers(0, 20),
       st.floats(1e-6, 1e3))
def test_mul_close_to_float(a, b, s1, real):
    m2, s2 = nx.quantize_multiplier(real / 2.0**s1) if real / 2.0**s1 >= 2.0**-40 else (0, 0)
    y = int(nx.mul(a, b, s1, m2, s2))
    p = py_round_shift(a * b, s1)
    assert y == py_round_shift(max(min(p, (1 << 31) - 1), -(1 << 31)) * m2, s2)
    if abs(p) < (1 << 31) and m2:
        ref = a * b * m2 / 2.0 ** (s1 + s2)
        assert abs(y - ref) <= 0.5 + 0.5 * m2 / 2.0**s2 + 1e-9 * abs(ref)


@SETTINGS
@given(st.sampled_from([2, 8, 64, 128]), st.integers(1, 3), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_rope_identity_at_position_zero(d, heads, interleaved, seed):
    x = np.random.default_rng(seed).integers(-(1 << 31), 1 << 31, (2, heads * d))
    cos, sin = nx.rope_table(np.zeros(2, dtype=int), d)
    m1, s1 = nx.quantize_multiplier(1.0)
    y = nx.rope(x, cos, sin, m1, s1, group=d, interleaved=interleaved)
    assert np.array_equal(y, x)


@SETTINGS
@given(st.sampled_from([64, 128]), st.booleans(), st.integers(0, 2**32 - 1),
       st.floats(0.01, 4.0))
def test_rope_close_to_float(d, interleaved, seed, ratio):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 4096, 8)
    x = rng.integers(-(1 << 20), 1 << 20, (8, 2 * d))
    cos, sin = nx.rope_table(pos, d)
    m1, s1 = nx.quantize_multiplier(ratio)
    y = nx.rope(x, cos, sin, m1, s1, group=d, interleaved=interleaved)
    h = x.reshape(8, 2, d).astype(np.float64)
    a, b = (h[..., 0::2], h[..., 1::2]) if interleaved else (h[..., :d // 2], h[..., d // 2:])
    ang = pos[:, None, None] * 10000.0 ** (-np.arange(0, d, 2) / d)
    ya, yb = a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)
    ref = np.empty_like(h)
    if interleaved:
        ref[..., 0::2], ref[..., 1::2] = ya, yb
    else:
        ref[..., :d // 2], ref[..., d // 2:] = ya, yb
    ref = ref.reshape(8, -1) * ratio
    mag = np.abs(a) + np.abs(b)  # per pair, shared by both outputs of the pair
    mag = (np.stack([mag, mag], -1) if interleaved else np.concatenate([mag, mag], -1))
    mag = mag.reshape(8, -1) * ratio
    # Q14 cos/sin are within 2**-15 each; m1 within 2**-15 relative; one output rounding.
    assert np.all(np.abs(y - ref) <= 0.5 + mag * 2.0**-14)


def test_rope_rejects_bad_group():
    with pytest.raises(ValueError):
        nx.rope(np.zeros((1, 12), dtype=np.int64), np.zeros((1, 2)), np.zeros((1, 2)), 1, 0,
                group=5)
