"""The weight block format the matrix engine streams: low-bit, N:16 sparse, 16x16 blocks.

A weight matrix W[16*S x 16*K] is stored strip by strip (16 output rows each); a strip is:

* if ``sparse``: a code table, one byte per block (``0, 1, 2, 3`` for N = 2, 4, 8, 16), padded
  with zero bytes to a multiple of 8 bytes;
* then its K blocks in order. A block (16 rows x 16 columns) is
  - if ``gscale``: 8 bytes, row r's group multiplier ``m_r - 1`` in nibble r (LSB first),
    ``m_r`` in 1..16;
  - if N < 16: 16 x N column indices, 4 bits each, row-major, LSB-first;
  - 16 x N values of ``bits`` two's complement, row-major, LSB-first.

Every block is a multiple of 8 bytes (:data:`WORD_BYTES`, the dequantiser's read word), and a
matrix starts at a multiple of 8 bytes of WBUF with its strips a multiple of 8 bytes apart, so
every strip and block is word-aligned. Row r of a block contributes
``sum_j (v[r, j] * m_r) * x[k0 + idx[r, j]]`` to output r: the sparse mux picks the activation,
the dequantiser forms the INT8 weight ``v * m`` (always within INT8 for 2- and 4-bit values;
8-bit values carry no multiplier), and the DSP multiplies.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SPARSITY_CODES", "WORD_BYTES", "WeightFormatError", "block_bytes", "code_table_bytes", "strip_bytes",
    "pack_matrix", "unpack_matrix", "block_sparsity",
]

B = 16
#: N of N:16 by code, and code by N.
SPARSITY_CODES = (2, 4, 8, 16)
_CODE = {n: i for i, n in enumerate(SPARSITY_CODES)}
#: The dequantiser reads weights in words of this many bytes; an MM/MV's ``w_addr`` and
#: ``w_stride`` are multiples of it.
WORD_BYTES = 8


class WeightFormatError(ValueError):
    """A matrix cannot be packed, or bytes do not hold a valid packed matrix."""


def block_bytes(n: int, bits: int, gscale: bool) -> int:
    """Bytes of one block keeping ``n`` of 16 weights per row."""
    return 8 * bool(gscale) + (8 * n if n < B else 0) + 2 * n * bits


def code_table_bytes(k_blocks: int, sparse: bool) -> int:
    return -(-k_blocks // 8) * 8 if sparse else 0


def strip_bytes(codes, bits: int, gscale: bool, sparse: bool) -> int:
    """Bytes of one strip whose blocks keep ``codes`` (N per block) weights per row."""
    return code_table_bytes(len(codes), sparse) + sum(block_bytes(n, bits, gscale) for n in codes)


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """LSB-first packing of unsigned ``bits``-wide fields (bits in 2, 4, 8)."""
    v = values.astype(np.uint64).ravel() & ((1 << bits) - 1)
    per = 8 // bits
    v = v.reshape(-1, per) << (np.arange(per, dtype=np.uint64) * bits)
    return v.sum(axis=1).astype(np.uint8).tobytes()


def _unpack_bits(data: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    per = 8 // bits
    v = (data[:, None].astype(np.int64) >> (np.arange(per) * bits)) & ((1 << bits) - 1)
    v = v.ravel()[:count]
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v


def pack_matrix(q: np.ndarray, bits: int, *, codes: np.ndarray | None = None,
                mult: np.ndarray | None = None) -> bytes:
    """Pack integer weights into the block format.

    Args:
        q: [16*S, 16*K] integers in the signed range of ``bits``; pruned weights are 0.
        bits: 2, 4 or 8.
        codes: [S, K] N per block (2, 4, 8, 16) for a sparse matrix; None for dense (no code
            tables). Each row of a block must have at most N non-zeros.
        mult: [16*S, K] group multipliers in 1..16, or None (no multipliers).

    Returns:
        The strips back to back.
    """
    q = np.asarray(q, dtype=np.int64)
    rows, cols = q.shape
    if rows % B or cols % B:
        raise WeightFormatError(f"matrix {rows}x{cols} is not a whole number of 16x16 blocks")
    if bits not in (2, 4, 8):
        raise WeightFormatError(f"weight bits {bits} not in (2, 4, 8)")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if q.min(initial=0) < lo or q.max(initial=0) > hi:
        raise WeightFormatError(f"weights outside the INT{bits} range [{lo}, {hi}]")
    S, K = rows // B, cols // B
    if mult is not None:
        mult = np.asarray(mult, dtype=np.int64)
        if bits == 8:
            raise WeightFormatError("INT8 weights carry no group multipliers")
        if mult.shape != (rows, K) or mult.min() < 1 or mult.max() > 16:
            raise WeightFormatError(f"group multipliers must be [{rows}, {K}] in 1..16")
    if codes is not None:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape != (S, K) or not np.isin(codes, SPARSITY_CODES).all():
            raise WeightFormatError(f"codes must be [{S}, {K}] with values in {SPARSITY_CODES}")
    if codes is None or (codes == codes.flat[0]).all():
        return _pack_uniform(q, bits, codes, mult, S, K)
    return _pack_general(q, bits, codes, mult, S, K)


def _pack_general(q, bits, codes, mult, S, K) -> bytes:
    """Block by block: any mix of N per block (and the definition the fast path must equal)."""
    out = bytearray()
    for s in range(S):
        if codes is not None:
            table = bytes(_CODE[int(n)] for n in codes[s])
            out += table + bytes(code_table_bytes(K, True) - K)
        for k in range(K):
            blk = q[s * B:(s + 1) * B, k * B:(k + 1) * B]
            n = B if codes is None else int(codes[s, k])
            if mult is not None:
                out += _pack_bits(mult[s * B:(s + 1) * B, k] - 1, 4)
            if n < B:
                idx = np.empty((B, n), dtype=np.int64)
                for r in range(B):
                    nz = np.flatnonzero(blk[r])
                    if len(nz) > n:
                        raise WeightFormatError(
                            f"block (strip {s}, k-block {k}) row {r} has {len(nz)} non-zeros; "
                            f"N:16 code allows {n}")
                    # Pad with the lowest unused columns so indices stay ascending and unique.
                    pad = np.setdiff1d(np.arange(B), nz)[: n - len(nz)]
                    idx[r] = np.sort(np.concatenate([nz, pad]))
                out += _pack_bits(idx, 4)
                vals = np.take_along_axis(blk, idx, axis=1)
            else:
                vals = blk
            out += _pack_bits(vals, bits)
    return bytes(out)


def _pack_uniform(q, bits, codes, mult, S, K) -> bytes:
    """Every block keeps the same N: pack all blocks at once (same bytes as the loop below)."""
    n = B if codes is None else int(np.asarray(codes).flat[0])
    blocks = q.reshape(S, B, K, B).transpose(0, 2, 1, 3)  # [S, K, 16 rows, 16 cols]
    parts = []
    if mult is not None:
        parts.append(_pack_rows(mult.reshape(S, B, K).transpose(0, 2, 1)[..., None] - 1, 4))
    if n < B:
        nz = blocks != 0
        counts = nz.sum(axis=-1)
        if counts.max(initial=0) > n:
            s, k, r = np.argwhere(counts > n)[0]
            raise WeightFormatError(f"block (strip {s}, k-block {k}) row {r} has "
                                    f"{counts[s, k, r]} non-zeros; N:16 code allows {n}")
        # Non-zeros first, then the lowest unused columns (stable), then ascending: the loop's
        # choice of padding columns and order, for every row at once.
        order = np.argsort(~nz, axis=-1, kind="stable")[..., :n]
        idx = np.sort(order, axis=-1)
        parts.append(_pack_rows(idx, 4))
        vals = np.take_along_axis(blocks, idx, axis=-1)
    else:
        vals = blocks
    parts.append(_pack_rows(vals, bits))
    body = np.concatenate(parts, axis=-1)  # [S, K, bytes per block]
    if codes is None:
        return body.tobytes()
    table = np.zeros((S, code_table_bytes(K, True)), dtype=np.uint8)
    table[:, :K] = _CODE[n]
    return np.concatenate([table, body.reshape(S, -1)], axis=1).tobytes()


def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last two axes [.., 16, m] of fields LSB-first into bytes [.., 16*m*bits/8]."""
    lead = values.shape[:-2]
    v = values.reshape(*lead, -1).astype(np.uint64) & ((1 << bits) - 1)
    per = 8 // bits
    v = v.reshape(*lead, -1, per) << (np.arange(per, dtype=np.uint64) * bits)
    return v.sum(axis=-1).astype(np.uint8)


def unpack_matrix(data, offset: int, n_strips: int, k_blocks: int, bits: int, *, sparse: bool,
                  gscale: bool, strip_stride: int = 0) -> tuple[np.ndarray, int]:
    """Read a packed matrix as dequantised INT8 weights.

    Args:
        data: the buffer (bytes or uint8 array).
        offset: byte address of the first strip.
        strip_stride: bytes between strips; 0 means strips are back to back.

    Returns:
        ([16*n_strips, 16*k_blocks] int64 dense weights ``v * m`` with duplicates summed,
        bytes spanned from ``offset`` to the end of the last strip).

    Raises:
        WeightFormatError: a code byte is not 0..3, or the matrix runs past the buffer.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if bits not in (2, 4, 8):
        raise WeightFormatError(f"weight bits {bits} not in (2, 4, 8)")
    if gscale and bits == 8:
        raise WeightFormatError("INT8 weights carry no group multipliers (gscale with INT8)")
    # Bound the request by the buffer before allocating: even the sparsest strip has a floor.
    floor = code_table_bytes(k_blocks, sparse) + k_blocks * block_bytes(2 if sparse else B, bits,
                                                                       gscale)
    last = offset + (n_strips - 1) * strip_stride if strip_stride else offset
    need = floor if strip_stride else n_strips * floor
    if n_strips and (last + (floor if strip_stride else need) > len(buf) or offset < 0):
        raise WeightFormatError(f"a {n_strips}-strip x {k_blocks}-block matrix at byte {offset} "
                                f"needs at least {need} bytes; the buffer holds {len(buf)}")
    W = np.zeros((n_strips * B, k_blocks * B), dtype=np.int64)
    pos = offset
    for s in range(n_strips):
        if strip_stride:
            pos = offset + s * strip_stride
        if sparse:
            table = _take(buf, pos, k_blocks, s)
            if (table > 3).any():
                k = int(np.flatnonzero(table > 3)[0])
                raise WeightFormatError(f"strip {s} k-block {k}: sparsity code {table[k]} at byte "
                                        f"{pos + k} is not 0..3")
            ns = [SPARSITY_CODES[c] for c in table]
            pos += code_table_bytes(k_blocks, True)
        else:
            ns = [B] * k_blocks
        rows = slice(s * B, (s + 1) * B)
        for k, n in enumerate(ns):
            m = 1
            if gscale:
                m = _unpack_bits(_take(buf, pos, 8, s), 4, B, False)[:, None] + 1
                pos += 8
            if n < B:
                idx = _unpack_bits(_take(buf, pos, 8 * n, s), 4, B * n, False).reshape(B, n)
                pos += 8 * n
            vals = _unpack_bits(_take(buf, pos, 2 * n * bits, s), bits, B * n, True).reshape(B, n)
            pos += 2 * n * bits
            blk = W[rows, k * B:(k + 1) * B]
            if n < B:
                np.add.at(blk, (np.arange(B)[:, None], idx), vals * m)
            else:
                blk += vals * m
    return W, pos - offset


def _take(buf: np.ndarray, pos: int, count: int, strip: int) -> np.ndarray:
    if pos + count > len(buf):
        raise WeightFormatError(f"strip {strip} runs past the end of the buffer "
                                f"(byte {pos + count} of {len(buf)})")
    return buf[pos:pos + count]


def block_sparsity(data, offset: int, n_strips: int, k_blocks: int, bits: int, *, sparse: bool,
                   gscale: bool, strip_stride: int = 0) -> np.ndarray:
    """[n_strips, k_blocks] N kept per row of each block, read from the code tables.

    The matrix engine spends 16 * N multiply-accumulates on a block whatever the values, so
    this (not a count of non-zero weights) is what cycle and MAC accounting use.
    """
    if not sparse:
        return np.full((n_strips, k_blocks), B, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    out = np.empty((n_strips, k_blocks), dtype=np.int64)
    pos = offset
    for s in range(n_strips):
        if strip_stride:
            pos = offset + s * strip_stride
        table = _take(buf, pos, k_blocks, s)
        if (table > 3).any():
            k = int(np.flatnonzero(table > 3)[0])
            raise WeightFormatError(f"strip {s} k-block {k}: sparsity code {table[k]} at byte "
                                    f"{pos + k} is not 0..3")
        out[s] = [SPARSITY_CODES[c] for c in table]
        pos += code_table_bytes(k_blocks, True) + sum(block_bytes(int(n), bits, gscale)
                                                      for n in out[s])
    return out
