"""Every special function on the golden simulator against the scalar reference."""

import numpy as np
import pytest

from flightllm.contract import numerics as nm
from flightllm.contract.config import preset
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, Opcode
from flightllm.contract.params import pack_norm_params, pack_rope_rows
from flightllm.sim.golden import GoldenSimulator

from . import scalar_ref as ref
from .progs import i8, i32, read_i8, read_i32, stage

A, R, P = Buffer.ABUF, Buffer.RBUF, Buffer.PBUF


def run_misc(items, **fields):
    sim = GoldenSimulator(preset("tiny"))
    stage(sim, sim.cores[0], items)
    counters = sim.run([[Instruction(Opcode.MISC, **fields)]])
    return sim.cores[0], counters


def out(core, buf, addr, shape):
    return read_i8(core, addr, shape) if buf == A else read_i32(core, addr, shape)


def sat(v, buf):
    return ref.sat(v, 8 if buf == A else 32)


@pytest.mark.parametrize("func", ["silu", "gelu_tanh", "gelu_erf", "relu"])
@pytest.mark.parametrize("dbuf", [A, R])
def test_activations(func, dbuf):
    rng = np.random.default_rng(len(func))
    m, n = 3, 40
    x = rng.integers(-40000, 40000, size=(m, n))
    m1, s1 = nm.quantize_multiplier(256 / 4000)  # x / 4000 is the real input
    m2, s2 = nm.quantize_multiplier(127 / 40000 if dbuf == A else 0.5)
    code = {"silu": MiscFunc.SILU, "gelu_tanh": MiscFunc.GELU_TANH,
            "gelu_erf": MiscFunc.GELU_ERF, "relu": MiscFunc.RELU}[func]
    dst = 0x100 if dbuf == A else 0x800
    core, counters = run_misc([(R, 0, i32(x))], func=code, a_buf=R, a_addr=0, a_stride=4 * n,
                              d_buf=dbuf, d_addr=dst, d_stride=n * (1 if dbuf == A else 4),
                              n=n, m=m, m1=m1, s1=s1, m2=m2, s2=s2)
    want = [[sat(ref.act(int(v), func, m1, s1, m2, s2), dbuf) for v in row] for row in x]
    np.testing.assert_array_equal(out(core, dbuf, dst, (m, n)), want)
    assert counters.sfu_elements[code.name] == m * n


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_masks_and_padding(causal):
    rng = np.random.default_rng(11)
    m, n = 4, 37
    x = rng.integers(-20000, 20000, size=(m, n))
    x[1, 5] = nm.MASKED  # a block-sparse hole
    x[2, :] = nm.MASKED  # a fully masked row gives zeros
    m1, s1 = nm.quantize_multiplier(1e-3 * np.log2(np.e) * 256)
    core, _ = run_misc([(R, 0, i32(x))], func=MiscFunc.SOFTMAX, a_buf=R, a_addr=0,
                       a_stride=4 * n, d_buf=A, d_addr=0x100, d_stride=48, n=n, m=m,
                       m1=m1, s1=s1, causal=int(causal), aux=30)
    got = out(core, A, 0x100, (m, 48))
    for i in range(m):
        valid = [(not causal) or j <= 30 + i for j in range(n)]
        np.testing.assert_array_equal(got[i, :n], ref.softmax_row(list(map(int, x[i])), m1, s1,
                                                                  valid))
    assert not got[:, n:].any(), "columns past n up to the 16-multiple are zero-filled"
    assert not got[2].any()
    assert abs(int(got[0].sum()) - 128) <= n


def test_deferred_softmax_then_rowscalar_mul_normalises_after_pv():
    """SOFTMAX(defer) writes max-relative weights and 2**60/(127*sum) per row; MUL(rowscalar)
    applies the reciprocal to the P.V accumulators."""
    rng = np.random.default_rng(12)
    m, n = 3, 50
    x = rng.integers(-30000, 30000, size=(m, n))
    m1, s1 = nm.quantize_multiplier(1e-4 * np.log2(np.e) * 256)
    core, _ = run_misc([(R, 0, i32(x))], func=MiscFunc.SOFTMAX, defer=1, a_buf=R, a_addr=0,
                       a_stride=4 * n, d_buf=A, d_addr=0x100, d_stride=64, b_buf=R,
                       b_addr=0x1000, b_stride=4, n=n, m=m, m1=m1, s1=s1, causal=1, aux=40)
    got_q, got_r = out(core, A, 0x100, (m, 64)), out(core, R, 0x1000, (m,))
    for i in range(m):
        q, r = ref.softmax_deferred_row(list(map(int, x[i])), m1, s1,
                                        [j <= 40 + i for j in range(n)])
        np.testing.assert_array_equal(got_q[i, :n], q)
        assert got_r[i] == r and max(q) == 127
    acc = rng.integers(-2**20, 2**20, size=(m, 16))
    core, _ = run_misc([(R, 0, i32(acc)), (R, 0x1000, i32(got_r))], func=MiscFunc.MUL,
                       rowscalar=1, a_buf=R, a_addr=0, a_stride=64, b_buf=R, b_addr=0x1000,
                       b_stride=4, d_buf=A, d_addr=0x200, d_stride=16, n=16, m=m, s1=30,
                       m2=1 << 14, s2=22)
    want = [[sat(ref.rnd(ref.sat(ref.rnd(int(v) * int(got_r[i]), 30), 32) * (1 << 14), 22), A)
             for v in acc[i]] for i in range(m)]
    np.testing.assert_array_equal(out(core, A, 0x200, (m, 16)), want)


@pytest.mark.parametrize("func", [MiscFunc.RMSNORM, MiscFunc.LAYERNORM])
@pytest.mark.parametrize("with_beta", [False, True])
def test_norms(func, with_beta):
    rng = np.random.default_rng(int(func) * 2 + with_beta)
    m, n = 3, 64
    x = rng.integers(-3_000_000, 3_000_000, size=(m, n))
    x[0, 3] = 2**30  # saturates to the 24-bit norm input range
    gamma = rng.integers(-20000, 20000, size=n)
    beta = rng.integers(-100, 100, size=n) if with_beta else None
    shift, eps = 10, 17
    core, _ = run_misc([(R, 0, i32(x)), (P, 0x40, pack_norm_params(gamma, beta))],
                       func=func, a_buf=R, a_addr=0, a_stride=4 * n, d_buf=A, d_addr=0x200,
                       d_stride=n, p_addr=0x40, n=n, m=m, s1=shift, aux=eps,
                       beta=int(with_beta))
    for i in range(m):
        want = ref.norm_row(list(map(int, x[i])), list(map(int, gamma)), shift, eps,
                            None if beta is None else list(map(int, beta)),
                            center=func == MiscFunc.LAYERNORM)
        np.testing.assert_array_equal(out(core, A, 0x200 + i * n, (n,)), [sat(v, A) for v in want])


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_per_token_table_rows(interleaved):
    rng = np.random.default_rng(int(interleaved))
    tokens, heads, hd = 3, 2, 16
    x = rng.integers(-2**20, 2**20, size=(tokens, heads * hd))
    cos, sin = nm.rope_table([5, 6, 7], hd)
    m1, s1 = nm.quantize_multiplier(127 / 2**20)
    core, _ = run_misc([(R, 0, i32(x)), (P, 0x100, pack_rope_rows(cos, sin))],
                       func=MiscFunc.ROPE, a_buf=R, a_addr=0, a_stride=4 * heads * hd, d_buf=A,
                       d_addr=0x400, d_stride=heads * hd, p_addr=0x100, p_stride=2 * hd,
                       n=heads * hd, m=tokens, group=hd, m1=m1, s1=s1,
                       interleaved=int(interleaved))
    for i in range(tokens):
        want = ref.rope_row(list(map(int, x[i])), list(map(int, cos[i])), list(map(int, sin[i])),
                            m1, s1, hd, interleaved)
        np.testing.assert_array_equal(out(core, A, 0x400 + i * heads * hd, (heads * hd,)),
                                      [sat(v, A) for v in want])


def test_add_mul_requant_copy_fill():
    rng = np.random.default_rng(2)
    m, n = 2, 24
    a = rng.integers(-2**24, 2**24, size=(m, n))
    b = rng.integers(-100, 100, size=(m, n))
    items = [(R, 0, i32(a)), (A, 0x40, i8(b))]
    common = dict(a_buf=R, a_addr=0, a_stride=4 * n, b_buf=A, b_addr=0x40, b_stride=n, n=n, m=m)
    core, _ = run_misc(items, func=MiscFunc.ADD, d_buf=R, d_addr=0x400, d_stride=4 * n,
                       m1=3, s1=2, m2=-20000, s2=5, **common)
    want = [[sat(ref.rnd(int(x) * 3 + ((int(y) * -20000) << 5), 2), R) for x, y in zip(ra, rb)]
            for ra, rb in zip(a, b)]
    np.testing.assert_array_equal(out(core, R, 0x400, (m, n)), want)
    core, _ = run_misc(items, func=MiscFunc.MUL, d_buf=A, d_addr=0x400, d_stride=n,
                       s1=4, m2=77, s2=20, **common)
    want = [[sat(ref.rnd(ref.sat(ref.rnd(int(x) * int(y), 4), 32) * 77, 20), A)
             for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
    np.testing.assert_array_equal(out(core, A, 0x400, (m, n)), want)
    core, _ = run_misc(items, func=MiscFunc.REQUANT, d_buf=A, d_addr=0x400, d_stride=n,
                       m1=5, s1=18, **common)
    want = [[sat(ref.rnd(int(x) * 5, 18), A) for x in ra] for ra in a]
    np.testing.assert_array_equal(out(core, A, 0x400, (m, n)), want)
    # COPY moves bytes verbatim (RBUF -> WBUF here); FILL writes the type's saturated value.
    core, _ = run_misc(items, func=MiscFunc.COPY, a_buf=R, a_addr=0, a_stride=4 * n,
                       d_buf=Buffer.WBUF, d_addr=0x100, d_stride=4 * n, n=n, m=m)
    assert core.mem[Buffer.WBUF][0x100:0x100 + 4 * n * m].tobytes() == i32(a)
    core, _ = run_misc([], func=MiscFunc.FILL, d_buf=R, d_addr=0x40, d_stride=4 * n, n=n, m=m,
                       aux=nm.MASKED)
    assert (out(core, R, 0x40, (m, n)) == nm.MASKED).all()
