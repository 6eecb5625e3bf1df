"""MM and MV on the golden simulator against an independent reference.

The reference builds the dense dequantised matrix straight from the integer weights and group
multipliers (never from the packed bytes) and requantises with scalar Python ints.
"""

import numpy as np
import pytest

from flightllm.contract.config import preset
from flightllm.contract.isa import (
    Binding, BindKind, Buffer, Instruction, LengthReg, Opcode, OutMode, WeightBits,
)
from flightllm.contract.params import pack_requant_records
from flightllm.contract.weights import pack_matrix
from flightllm.sim.golden import GoldenSimulator

from .progs import i8, i32, read_i8, read_i32, stage
from .scalar_ref import requant

WB = {2: WeightBits.INT2, 4: WeightBits.INT4, 8: WeightBits.INT8}


def random_sparse(rng, strips, kblocks, bits, codes):
    """Integer weights with exactly codes[s, k] non-zeros per row of each block."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = np.zeros((16 * strips, 16 * kblocks), dtype=np.int64)
    for s in range(strips):
        for k in range(kblocks):
            for r in range(16):
                cols = rng.choice(16, size=codes[s, k], replace=False)
                vals = rng.integers(lo, hi + 1, size=codes[s, k])
                q[16 * s + r, 16 * k + cols] = vals
    return q


def run_matrix(q, bits, codes, mult, X, *, mode=OutMode.Q8, rows=1, psum=None, resid=None,
               relu=False, uniform=False, seed=0, op=Opcode.MV):
    cfg = preset("tiny")
    sim = GoldenSimulator(cfg)
    core = sim.cores[0]
    rng = np.random.default_rng(seed)
    n_out = q.shape[0]
    bias = rng.integers(-5000, 5000, size=1 if uniform else n_out)
    mul = rng.integers(1, 600, size=bias.shape)
    sh = rng.integers(8, 16, size=bias.shape)
    w = pack_matrix(q, bits, codes=codes, mult=mult)
    items = [(Buffer.WBUF, 64, w), (Buffer.ABUF, 0, i8(X)),
             (Buffer.PBUF, 0, pack_requant_records(bias, mul, sh))]
    out_stride = n_out * (1 if mode == OutMode.Q8 else 4)
    if psum is not None:
        items.append((Buffer.RBUF, 0x2000, i32(psum)))
    if resid is not None:
        items.append((Buffer.RBUF, 0x1000, i32(resid)))
    stage(sim, core, items)
    fields = dict(w_addr=64, wbits=WB[bits], sparse=int(codes is not None),
                  gscale=int(mult is not None), n_strips=q.shape[0] // 16,
                  k_blocks=q.shape[1] // 16, x_addr=0, out_mode=mode,
                  out_addr=0x800 if mode == OutMode.Q8 else 0x1000, p_addr=0,
                  p_uniform=int(uniform), psum=int(psum is not None), psum_addr=0x2000,
                  residual=int(resid is not None), relu=int(relu))
    if op == Opcode.MM:
        fields.update(m_rows=rows, x_stride=X.shape[1], out_stride=out_stride,
                      psum_stride=4 * n_out)
    counters = sim.run([[Instruction(op, **fields)]])
    shape = (rows, n_out)
    got = read_i8(core, 0x800, shape) if mode == OutMode.Q8 else read_i32(core, 0x1000, shape)
    # Reference.
    W = q * (np.repeat(mult, 16, axis=1) if mult is not None else 1)
    acc = X.reshape(rows, -1) @ W.T
    if psum is not None:
        acc = acc + psum.reshape(rows, -1)
    ref = np.zeros(shape, dtype=np.int64)
    for i in range(rows):
        for n in range(n_out):
            j = 0 if uniform else n
            if mode == OutMode.ACC32:
                ref[i, n] = acc[i, n]
            else:
                v = requant(int(acc[i, n]) + int(bias[j]), int(mul[j]), int(sh[j]),
                            8 if mode == OutMode.Q8 else 32, relu)
                if resid is not None:
                    v = max(min(v + int(resid.reshape(rows, -1)[i, n]), 2**31 - 1), -2**31)
                ref[i, n] = v
    return got, ref, counters


# INT8 weights carry no group multipliers (the format forbids it; see test_golden_errors).
WIDTHS = [(2, False), (2, True), (4, False), (4, True), (8, False)]


@pytest.mark.parametrize("bits,gscale", WIDTHS)
@pytest.mark.parametrize("n_keep", [2, 4, 8, 16, "mixed"])
def test_sparse_mv_every_code_and_width(bits, n_keep, gscale):
    rng = np.random.default_rng(bits * 100 + (0 if n_keep == "mixed" else n_keep) + gscale)
    strips, kb = 2, 3
    codes = (rng.choice([2, 4, 8, 16], size=(strips, kb)) if n_keep == "mixed"
             else np.full((strips, kb), n_keep))
    q = random_sparse(rng, strips, kb, bits, codes)
    mult = rng.integers(1, 17, size=(16 * strips, kb)) if gscale else None
    x = rng.integers(-128, 128, size=16 * kb)
    got, ref, counters = run_matrix(q, bits, codes, mult, x, seed=bits)
    np.testing.assert_array_equal(got, ref)
    assert counters.macs_stored == 16 * int(codes.sum())
    assert counters.macs_dense == q.size


@pytest.mark.parametrize("mode", [OutMode.ACC32, OutMode.Q8, OutMode.Q32])
def test_mm_rows_modes_psum_uniform(mode):
    rng = np.random.default_rng(7)
    q = random_sparse(rng, 2, 2, 4, np.full((2, 2), 16))
    X = rng.integers(-128, 128, size=(5, 32))
    psum = rng.integers(-10**6, 10**6, size=(5, 32))
    for uniform in (False, True):
        got, ref, _ = run_matrix(q, 4, None, None, X, mode=mode, rows=5, psum=psum,
                                 uniform=uniform, op=Opcode.MM)
        np.testing.assert_array_equal(got, ref)


def test_mv_residual_add_and_relu():
    rng = np.random.default_rng(3)
    q = random_sparse(rng, 1, 2, 8, np.full((1, 2), 16))
    x = rng.integers(-128, 128, size=32)
    resid = rng.integers(-2**31, 2**31 - 1, size=16)
    got, ref, _ = run_matrix(q, 8, None, None, x, mode=OutMode.Q32, resid=resid)
    np.testing.assert_array_equal(got, ref)
    got, ref, _ = run_matrix(q, 8, None, None, x, mode=OutMode.Q8, relu=True)
    np.testing.assert_array_equal(got, ref)
    assert (got >= 0).all()


def test_dynamic_rows_follow_the_kv_register():
    """Q.K^T over a KV cache: n_strips bound to ceil(KV/16), one program for every length."""
    cfg = preset("tiny")
    rng = np.random.default_rng(5)
    keys = rng.integers(-128, 128, size=(64, 32))  # max 64 positions, head_dim 32
    q = rng.integers(-128, 128, size=32)
    blocked = pack_matrix(keys, 8)
    mv = Instruction(Opcode.MV, w_addr=0, wbits=WeightBits.INT8, n_strips=4, k_blocks=2,
                     x_addr=0, out_mode=OutMode.ACC32, out_addr=0,
                     bindings=[Binding(BindKind.COUNT, LengthReg.KV, "n_strips", shift=4)])
    for kv in (1, 15, 16, 17, 40, 64):
        sim = GoldenSimulator(cfg)
        stage(sim, sim.cores[0], [(Buffer.WBUF, 0, blocked), (Buffer.ABUF, 0, i8(q))])
        sim.run([[mv]], seq=1, kv=kv)
        rows = -(-kv // 16) * 16
        got = read_i32(sim.cores[0], 0, (rows,))
        np.testing.assert_array_equal(got, keys[:rows] @ q)
        assert not read_i32(sim.cores[0], 4 * rows, (16,)).any(), "wrote past the bound rows"


def test_strided_strips_read_transposed_v_tiles():
    """w_stride lets strips sit at a fixed pitch while k_blocks varies with the KV length."""
    cfg = preset("tiny")
    rng = np.random.default_rng(9)
    vt = rng.integers(-128, 128, size=(32, 48))  # V^T: head_dim 32 rows, 48 positions
    pitch = 4 * 256  # room for 64 positions per strip
    sim = GoldenSimulator(cfg)
    for s in range(2):
        stage(sim, sim.cores[0], [(Buffer.WBUF, s * pitch, pack_matrix(vt[16 * s:16 * s + 16], 8))])
    p = rng.integers(0, 128, size=48)
    stage(sim, sim.cores[0], [(Buffer.ABUF, 0, i8(p))])
    sim.run([[Instruction(Opcode.MV, w_addr=0, w_stride=pitch, wbits=WeightBits.INT8,
                          n_strips=2, k_blocks=3, out_mode=OutMode.ACC32, out_addr=0)]])
    np.testing.assert_array_equal(read_i32(sim.cores[0], 0, (32,)), vt @ p)


@pytest.mark.parametrize("field,value", [("w_addr", 68), ("w_stride", 1028)])
def test_weights_off_the_word_grid_are_refused(field, value):
    """The dequantisers read 8-byte words (contract/weights.py WORD_BYTES): a weight address or
    strip stride that is not a multiple of 8 is a program error naming the field."""
    from flightllm.sim.machine import ProgramError
    sim = GoldenSimulator(preset("tiny"))
    fields = dict(w_addr=64, wbits=WeightBits.INT8, n_strips=1, k_blocks=1,
                  out_mode=OutMode.ACC32, out_addr=0)
    fields[field] = value
    with pytest.raises(ProgramError, match=f"field '{field}' = {value:#x} is not 8-byte aligned"):
        sim.run([[Instruction(Opcode.MV, **fields)]])
    fields[field] = value - 4      # the same instruction on the grid runs
    sim.run([[Instruction(Opcode.MV, **fields)]])


def _digit_pair(seed):
    """A 4-bit matrix, a vector as two INT8 digits (hi, lo) and two record sets, staged."""
    rng = np.random.default_rng(seed)
    q = random_sparse(rng, 2, 3, 4, np.full((2, 3), 16))
    hi, lo = rng.integers(-128, 128, size=(2, 48))
    recs = [pack_requant_records(rng.integers(-5000, 5000, 32), rng.integers(1, 600, 32),
                                 rng.integers(8, 16, 32) + 7 * d) for d in range(2)]
    # Residuals near INT32's ends, so that the two saturations matter.
    resid = rng.choice([-2**31 + 5, 2**31 - 9, 0], size=32) + rng.integers(-3, 3, size=32)
    sim = GoldenSimulator(preset("tiny"))
    stage(sim, sim.cores[0], [(Buffer.WBUF, 64, pack_matrix(q, 4)), (Buffer.ABUF, 0, i8(hi)),
                              (Buffer.ABUF, 0x100, i8(lo)), (Buffer.PBUF, 0, recs[0]),
                              (Buffer.PBUF, 0x400, recs[1]), (Buffer.RBUF, 0x1000, i32(resid))])
    common = dict(w_addr=64, wbits=WeightBits.INT4, n_strips=2, k_blocks=3,
                  out_mode=OutMode.Q32, out_addr=0x1000, residual=1)
    return sim, common, (q, hi, lo, recs, resid)


def test_sum_rows_adds_both_digits_as_two_passes_would():
    """One MM over the two digits with sum_rows writes what the two MVs of the same weights
    (high digit, then low digit, each into the residual) write, and what scalar arithmetic
    gives; row 1 (the low digit) leaves its own result row untouched."""
    sim, common, (q, hi, lo, recs, resid) = _digit_pair(11)
    sim.run([[Instruction(Opcode.MM, x_addr=0, p_addr=0, m_rows=2, x_stride=0x100,
                          out_stride=0x80, sum_rows=1, p_stride=0x400, **common)]])
    got = read_i32(sim.cores[0], 0x1000, (32,))
    assert not read_i32(sim.cores[0], 0x1080, (32,)).any(), "wrote row 1's result row"
    ref_sim, _, _ = _digit_pair(11)
    ref_sim.run([[Instruction(Opcode.MV, x_addr=0, p_addr=0, **common),
                  Instruction(Opcode.MV, x_addr=0x100, p_addr=0x400, **common)]])
    np.testing.assert_array_equal(got, read_i32(ref_sim.cores[0], 0x1000, (32,)))
    from flightllm.contract.params import unpack_requant_records
    r = [unpack_requant_records(np.frombuffer(b, np.uint8)) for b in recs]
    for n in range(32):
        y = int(resid[n])
        for d, x in enumerate((hi, lo)):
            v = requant(int(q[n] @ x) + int(r[d]["bias"][n]), int(r[d]["mult"][n]),
                        int(r[d]["shift"][n]), 32, False)
            y = max(min(y + v, 2**31 - 1), -2**31)
        assert got[n] == y, n
    assert (np.abs(got) > 2**30).any(), "no residual near saturation: the test lost its edge"


@pytest.mark.parametrize("change,message", [
    (dict(m_rows=3), "needs m_rows = 2, not 3"),
    (dict(out_mode=OutMode.Q8, residual=0), "needs out_mode Q32, not Q8"),
    (dict(p_uniform=1), "p_uniform is set"),
    (dict(p_stride=0x404), "records at PBUF 0x404 .* not 8-byte aligned"),
])
def test_sum_rows_refuses_what_it_cannot_sum(change, message):
    from flightllm.sim.machine import ProgramError
    sim, common, _ = _digit_pair(12)
    fields = dict(x_addr=0, p_addr=0, m_rows=2, x_stride=0x100, out_stride=0x80, sum_rows=1,
                  p_stride=0x400, **common)
    fields.update(change)
    with pytest.raises(ProgramError, match=message):
        sim.run([[Instruction(Opcode.MM, **fields)]])
