"""Property tests of the weight block format (flightllm/contract/weights.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightllm.contract import weights as wf

B = 16
SETTINGS = settings(max_examples=120, deadline=None)


def random_matrix(rng, S, K, bits, codes):
    """[16S, 16K] codes in the INT``bits`` range with at most N non-zeros per block row."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = np.zeros((S * B, K * B), dtype=np.int64)
    for s in range(S):
        for k in range(K):
            n = B if codes is None else int(codes[s, k])
            for r in range(B):
                keep = rng.choice(B, rng.integers(0, n + 1), replace=False)
                q[s * B + r, k * B + keep] = rng.integers(lo, hi + 1, keep.size)
    return q


@st.composite
def matrices(draw):
    """A random packable matrix with its format options."""
    bits = draw(st.sampled_from([2, 4, 8]))
    S, K = draw(st.integers(1, 3)), draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sparse = draw(st.booleans())
    codes = rng.choice(wf.SPARSITY_CODES, (S, K)) if sparse else None
    gscale = bits != 8 and draw(st.booleans())
    mult = rng.integers(1, 17, (S * B, K)) if gscale else None
    return random_matrix(rng, S, K, bits, codes), bits, codes, mult


def expected_dense(q, mult):
    """What the dequantiser produces: v * m, m repeated over the 16 columns of its block."""
    return q if mult is None else q * np.repeat(mult, B, axis=1)


def strip_sizes(q, bits, codes, mult):
    S, K = q.shape[0] // B, q.shape[1] // B
    rows = codes if codes is not None else np.full((S, K), B)
    return [wf.strip_bytes(list(rows[s]), bits, mult is not None, codes is not None)
            for s in range(S)]


# --------------------------------------------------------------------------- round trips
@SETTINGS
@given(matrices())
def test_round_trip_back_to_back(m):
    q, bits, codes, mult = m
    data = wf.pack_matrix(q, bits, codes=codes, mult=mult)
    sizes = strip_sizes(q, bits, codes, mult)
    assert len(data) == sum(sizes) and len(data) % 8 == 0
    W, span = wf.unpack_matrix(data, 0, q.shape[0] // B, q.shape[1] // B, bits,
                               sparse=codes is not None, gscale=mult is not None)
    assert span == len(data)
    assert np.array_equal(W, expected_dense(q, mult))
    assert W.min(initial=0) >= -128 and W.max(initial=0) <= 127  # always INT8 after dequant


@SETTINGS
@given(matrices(), st.integers(0, 40), st.integers(0, 24), st.integers(0, 2**32 - 1))
def test_round_trip_with_offset_and_strip_stride(m, lead, gap, seed):
    q, bits, codes, mult = m
    sizes = strip_sizes(q, bits, codes, mult)
    data = wf.pack_matrix(q, bits, codes=codes, mult=mult)
    stride = max(sizes) + 8 * gap
    # Lay the strips out at the stride with random filler in between, as a buffer would be.
    rng = np.random.default_rng(seed)
    buf = rng.integers(0, 256, lead + stride * len(sizes) + 16).astype(np.uint8)
    pos = 0
    for s, size in enumerate(sizes):
        buf[lead + s * stride:lead + s * stride + size] = np.frombuffer(data[pos:pos + size],
                                                                        np.uint8)
        pos += size
    W, span = wf.unpack_matrix(buf, lead, len(sizes), q.shape[1] // B, bits,
                               sparse=codes is not None, gscale=mult is not None,
                               strip_stride=stride)
    assert np.array_equal(W, expected_dense(q, mult))
    assert span == (len(sizes) - 1) * stride + sizes[-1]
    W2, _ = wf.unpack_matrix(bytes(buf), lead, len(sizes), q.shape[1] // B, bits,
                             sparse=codes is not None, gscale=mult is not None,
                             strip_stride=stride)
    assert np.array_equal(W2, W)


@given(st.sampled_from([2, 4, 8]), st.sampled_from(wf.SPARSITY_CODES), st.booleans())
def test_block_bytes_formula(bits, n, gscale):
    size = wf.block_bytes(n, bits, gscale)
    assert size == 8 * gscale + (B * n * 4 // 8 if n < B else 0) + B * n * bits // 8
    assert size % 8 == 0


def test_code_table_is_padded_to_eight_bytes():
    assert [wf.code_table_bytes(k, True) for k in (1, 8, 9, 16)] == [8, 8, 16, 16]
    assert wf.code_table_bytes(5, False) == 0


def test_extreme_values_round_trip():
    for bits in (2, 4, 8):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        q = np.where(np.arange(B * B).reshape(B, B) % 2, hi, lo)
        mult = None if bits == 8 else np.full((B, 1), 16)
        data = wf.pack_matrix(q, bits, mult=mult)
        W, _ = wf.unpack_matrix(data, 0, 1, 1, bits, sparse=False, gscale=mult is not None)
        assert np.array_equal(W, expected_dense(q, mult))


def test_sparse_row_with_fewer_nonzeros_than_n():
    q = np.zeros((B, B), dtype=np.int64)
    q[3, 15] = -2  # one non-zero at the last column of a 4:16 row; padding must not clash
    data = wf.pack_matrix(q, 2, codes=np.array([[4]]))
    W, _ = wf.unpack_matrix(data, 0, 1, 1, 2, sparse=True, gscale=False)
    assert np.array_equal(W, q)


# --------------------------------------------------------------------------- pack errors
@given(st.sampled_from([2, 4, 8]), st.integers(0, 2), st.integers(0, 3), st.integers(0, 15),
       st.sampled_from([2, 4, 8]))
def test_too_many_nonzeros_names_the_block(bits, s, k, r, n):
    codes = np.full((3, 4), 16)
    codes[s, k] = n
    q = np.zeros((3 * B, 4 * B), dtype=np.int64)
    q[s * B + r, k * B:k * B + n + 1] = 1
    with pytest.raises(wf.WeightFormatError, match=rf"strip {s}, k-block {k}\) row {r} has "
                                                   rf"{n + 1} non-zeros"):
        wf.pack_matrix(q, bits, codes=codes)


@given(st.sampled_from([2, 4, 8]), st.booleans())
def test_out_of_range_values_rejected(bits, above):
    q = np.zeros((B, B), dtype=np.int64)
    q[5, 7] = (1 << (bits - 1)) if above else -(1 << (bits - 1)) - 1
    with pytest.raises(wf.WeightFormatError, match=f"INT{bits} range"):
        wf.pack_matrix(q, bits)


def test_int8_with_multipliers_rejected():
    q = np.zeros((B, B), dtype=np.int64)
    with pytest.raises(wf.WeightFormatError, match="INT8"):
        wf.pack_matrix(q, 8, mult=np.ones((B, 1), dtype=np.int64))
    with pytest.raises(wf.WeightFormatError, match="INT8"):
        wf.unpack_matrix(bytes(1024), 0, 1, 1, 8, sparse=False, gscale=True)


@pytest.mark.parametrize("mult", [np.zeros((B, 1)), np.full((B, 1), 17), np.ones((B, 2)),
                                  np.ones((2 * B, 1))])
def test_bad_multipliers_rejected(mult):
    with pytest.raises(wf.WeightFormatError, match="group multipliers"):
        wf.pack_matrix(np.zeros((B, B), dtype=np.int64), 4, mult=mult.astype(np.int64))


@pytest.mark.parametrize("shape, bits, codes", [
    ((B, B + 1), 4, None), ((8, B), 4, None), ((B, B), 3, None),
    ((B, B), 4, np.array([[3]])), ((B, B), 4, np.array([[4, 4]])),
])
def test_bad_shapes_bits_and_codes_rejected(shape, bits, codes):
    with pytest.raises(wf.WeightFormatError):
        wf.pack_matrix(np.zeros(shape, dtype=np.int64), bits, codes=codes)


# --------------------------------------------------------------------------- unpack errors
@given(st.integers(0, 2), st.integers(0, 4), st.integers(4, 255))
def test_bad_code_byte_on_unpack(s, k, byte):
    codes = np.full((3, 5), 4)
    q = np.zeros((3 * B, 5 * B), dtype=np.int64)
    data = bytearray(wf.pack_matrix(q, 4, codes=codes))
    strip = wf.strip_bytes([4] * 5, 4, False, True)
    data[s * strip + k] = byte
    with pytest.raises(wf.WeightFormatError, match=f"strip {s} k-block {k}: sparsity code "
                                                   f"{byte}"):
        wf.unpack_matrix(bytes(data), 0, 3, 5, 4, sparse=True, gscale=False)


@SETTINGS
@given(matrices(), st.data())
def test_truncated_buffer_rejected(m, data):
    q, bits, codes, mult = m
    packed = wf.pack_matrix(q, bits, codes=codes, mult=mult)
    cut = data.draw(st.integers(0, len(packed) - 1))
    with pytest.raises(wf.WeightFormatError, match="buffer"):
        wf.unpack_matrix(packed[:cut], 0, q.shape[0] // B, q.shape[1] // B, bits,
                         sparse=codes is not None, gscale=mult is not None)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(2, True), (2, False), (4, True), (4, False), (8, False)]),
       st.sampled_from([2, 4, 8, 16, None]), st.integers(1, 3), st.integers(1, 4),
       st.integers(0, 2**32 - 1))
def test_vectorised_packing_equals_the_block_loop(width, keep, strips, kblocks, seed):
    """The fast path for uniform N gives exactly the bytes of the per-block definition."""
    from flightllm.contract.weights import _pack_general, _pack_uniform
    bits, with_mult = width
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, size=(16 * strips, 16 * kblocks))
    codes = None
    if keep is not None:
        codes = np.full((strips, kblocks), keep)
        drop = np.argsort(rng.random(q.shape).reshape(strips * 16, kblocks, 16), axis=-1)
        mask = np.ones_like(q, dtype=bool).reshape(strips * 16, kblocks, 16)
        np.put_along_axis(mask, drop[..., keep:], False, axis=-1)
        q = q * mask.reshape(q.shape)
        q[0, :3] = 0  # rows with fewer non-zeros than N exercise the padding columns
    mult = rng.integers(1, 17, size=(16 * strips, kblocks)) if with_mult else None
    args = (q, bits, codes, mult, strips, kblocks)
    assert _pack_uniform(*args) == _pack_general(*args)
