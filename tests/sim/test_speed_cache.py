"""The simulator's speed-ups change nothing: the decoded-weight cache follows WBUF's content,
and the BLAS matrix product is exact."""

import numpy as np
import pytest

from flightllm.contract.config import preset
from flightllm.contract.isa import Buffer, Instruction, Opcode, OutMode, WeightBits
from flightllm.contract.weights import pack_matrix
from flightllm.sim import speed
from flightllm.sim.golden import GoldenSimulator

from .progs import Q, bit, i8, load, read_i32, stage

W_ADDR, OUT = 64, 0x1000


def mv(n_strips, k_blocks, *, bits=8, sparse=False, w_addr=W_ADDR, out_addr=OUT, **kw):
    """An MV that writes raw INT32 accumulators (no requantisation) to RBUF at OUT."""
    wb = {2: WeightBits.INT2, 4: WeightBits.INT4, 8: WeightBits.INT8}[bits]
    return Instruction(Opcode.MV, w_addr=w_addr, wbits=wb, sparse=int(sparse), gscale=0,
                       n_strips=n_strips, k_blocks=k_blocks, x_addr=0, out_mode=OutMode.ACC32,
                       out_addr=out_addr, **kw)


def weights(rng, n_out=32, k=32, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, size=(n_out, k))


@pytest.fixture(autouse=True)
def fresh_cache():
    speed.WEIGHT_CACHE.clear()
    yield
    speed.WEIGHT_CACHE.clear()


def run_mv(sim, q, x, **kw):
    sim.run([[mv(q.shape[0] // 16, q.shape[1] // 16, **kw)]])
    return read_i32(sim.cores[0], OUT, (1, q.shape[0]))[0]


def test_weights_overwritten_in_place_are_decoded_again():
    rng = np.random.default_rng(1)
    sim = GoldenSimulator(preset("tiny"))
    core = sim.cores[0]
    x = rng.integers(-128, 128, size=32)
    q1, q2 = weights(rng), weights(rng)
    stage(sim, core, [(Buffer.ABUF, 0, i8(x)), (Buffer.WBUF, W_ADDR, pack_matrix(q1, 8))])
    assert np.array_equal(run_mv(sim, q1, x), q1 @ x)
    # Same address, same shape, new bytes (what the next weight chunk's LD does).
    stage(sim, core, [(Buffer.WBUF, W_ADDR, pack_matrix(q2, 8))])
    assert np.array_equal(run_mv(sim, q2, x), q2 @ x)
    # One changed byte is enough.
    core.mem[Buffer.WBUF][W_ADDR + 5] ^= 1
    q3 = q2.copy()
    q3[0, 5] = np.int8(np.uint8(np.int8(q2[0, 5]).view(np.uint8) ^ 1).view(np.int8))
    assert np.array_equal(run_mv(sim, q3, x), q3 @ x)


def test_weights_loaded_from_hbm_over_cached_ones():
    """The real path: an LD overwrites the weight slot between two MVs of one program."""
    rng = np.random.default_rng(2)
    sim = GoldenSimulator(preset("tiny"))
    x = rng.integers(-128, 128, size=32)
    q1, q2 = weights(rng), weights(rng)
    p1, p2 = pack_matrix(q1, 8), pack_matrix(q2, 8)
    sim.hbm.write(0, 0, p1)
    sim.hbm.write(0, 4096, p2)
    stage(sim, sim.cores[0], [(Buffer.ABUF, 0, i8(x))])
    prog = [load(Buffer.WBUF, W_ADDR, len(p1), release=bit(Q.MV)),
            mv(2, 2, wait=bit(Q.LD), release=bit(Q.LD)),
            load(Buffer.WBUF, W_ADDR, len(p2), hbm_addr=4096, wait=bit(Q.MV),
                 release=bit(Q.MV)),
            mv(2, 2, out_addr=OUT + 256, wait=bit(Q.LD))]
    sim.run([prog])
    core = sim.cores[0]
    assert np.array_equal(read_i32(core, OUT, (32,)), q1 @ x)
    assert np.array_equal(read_i32(core, OUT + 256, (32,)), q2 @ x)


def test_a_cache_keyed_by_address_would_fail(monkeypatch):
    """Negative control: with the content left out of the key, the test above's situation
    returns the stale matrix, so those tests do detect a cache that is not invalidated."""
    real_key = speed.WeightCache.key

    def address_only(self, mem, offset, *args):
        key = real_key(self, mem, offset, *args)
        return None if key is None else (offset,) + key[:-1]

    monkeypatch.setattr(speed.WeightCache, "key", address_only)
    rng = np.random.default_rng(1)
    sim = GoldenSimulator(preset("tiny"))
    x = rng.integers(-128, 128, size=32)
    q1, q2 = weights(rng), weights(rng)
    stage(sim, sim.cores[0], [(Buffer.ABUF, 0, i8(x)), (Buffer.WBUF, W_ADDR, pack_matrix(q1, 8))])
    run_mv(sim, q1, x)
    stage(sim, sim.cores[0], [(Buffer.WBUF, W_ADDR, pack_matrix(q2, 8))])
    assert np.array_equal(run_mv(sim, q2, x), q1 @ x)  # stale


def test_sparse_code_table_change_moves_the_span():
    rng = np.random.default_rng(3)
    sim = GoldenSimulator(preset("tiny"))
    x = rng.integers(-128, 128, size=32)
    stage(sim, sim.cores[0], [(Buffer.ABUF, 0, i8(x))])
    for n_keep in (4, 8, 2):
        q = np.zeros((32, 32), dtype=np.int64)
        for r in range(32):
            for blk in range(2):
                cols = rng.choice(16, size=n_keep, replace=False) + 16 * blk
                q[r, cols] = rng.integers(-8, 8, size=n_keep)
        codes = np.full((2, 2), n_keep)
        stage(sim, sim.cores[0], [(Buffer.WBUF, W_ADDR, pack_matrix(q, 4, codes=codes))])
        assert np.array_equal(run_mv(sim, q, x, bits=4, sparse=True), q @ x)


def test_same_bytes_elsewhere_hit_the_cache():
    rng = np.random.default_rng(4)
    sim = GoldenSimulator(preset("tiny"))
    x = rng.integers(-128, 128, size=32)
    q = weights(rng)
    packed = pack_matrix(q, 8)
    stage(sim, sim.cores[0], [(Buffer.ABUF, 0, i8(x)), (Buffer.WBUF, W_ADDR, packed),
                              (Buffer.WBUF, 8192, packed)])
    run_mv(sim, q, x)
    hits = speed.WEIGHT_CACHE.hits
    assert np.array_equal(run_mv(sim, q, x, w_addr=8192), q @ x)
    assert speed.WEIGHT_CACHE.hits == hits + 1


def test_products_beyond_float32_stay_exact():
    """Sums past 2**24 take the float64 path; float32 would round them (the control)."""
    rng = np.random.default_rng(5)
    k = 2048
    q = weights(rng, 16, k, lo=100, hi=127)
    x = rng.integers(100, 128, size=k)
    sim = GoldenSimulator(preset("tiny"))
    stage(sim, sim.cores[0], [(Buffer.ABUF, 0, i8(x)), (Buffer.WBUF, W_ADDR, pack_matrix(q, 8))])
    want = q @ x
    assert want.max() > 1 << 24
    assert np.array_equal(run_mv(sim, q, x), want)
    as_f32 = (q.astype(np.float32) @ x.astype(np.float32)).astype(np.int64)
    assert not np.array_equal(as_f32, want)
