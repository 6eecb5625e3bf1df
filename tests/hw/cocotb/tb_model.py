"""Pure-Python half of the RTL testbenches: stimulus, reference models, checker, bit packing.

Nothing here imports cocotb, so pytest can use it directly. The reference for every check is
``flightllm.contract.weights.unpack_matrix`` plus numpy; the beat-level decoding below
(:func:`decode_blocks`) is the testbench's own reading of the format, used only to *drive* the
chain, so a disagreement between it and the contract shows up as a failed check.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

from flightllm.contract.weights import (
    SPARSITY_CODES, block_bytes, code_table_bytes, pack_matrix, unpack_matrix,
)

SEED_ENV = "FLIGHTLLM_TB_SEED"
B = 16


def tb_seed(default: int = 1) -> int:
    """The testbench seed: ``$FLIGHTLLM_TB_SEED`` (an integer, or ``random``), else ``default``."""
    text = os.environ.get(SEED_ENV, "")
    if not text:
        return default
    if text == "random":
        return random.SystemRandom().randrange(1 << 32)
    return int(text, 0)


# --------------------------------------------------------------------------- bit packing
def pack_fields(layout, value) -> int:
    """Pack nested dicts/lists into an int following an Amaranth layout (or a plain shape)."""
    if isinstance(layout, data.StructLayout):
        out = 0
        for name, fld in layout:
            out |= pack_fields(fld.shape, value.get(name, 0)) << fld.offset
        return out
    if isinstance(layout, data.ArrayLayout):
        width = Shape.cast(layout.elem_shape).width
        out = 0
        for i, item in enumerate(value):
            out |= pack_fields(layout.elem_shape, item) << (i * width)
        return out
    width = Shape.cast(layout).width
    return int(value) & ((1 << width) - 1)


def unpack_fields(layout, bits: int):
    """The inverse of :func:`pack_fields`: signed shapes come back as negative ints."""
    if isinstance(layout, data.StructLayout):
        return {name: unpack_fields(fld.shape, bits >> fld.offset) for name, fld in layout}
    if isinstance(layout, data.ArrayLayout):
        width = Shape.cast(layout.elem_shape).width
        return [unpack_fields(layout.elem_shape, bits >> (i * width)) for i in range(layout.length)]
    shape = Shape.cast(layout)
    v = bits & ((1 << shape.width) - 1)
    if shape.signed and v >> (shape.width - 1):
        v -= 1 << shape.width
    return v


# --------------------------------------------------------------------------- matrices
@dataclass
class MatrixCase:
    """One packed weight matrix and how to read it."""

    data: bytes
    n_strips: int
    k_blocks: int
    bits: int
    sparse: bool
    gscale: bool
    codes: np.ndarray      # [S, K] sparsity code (0..3) of every block

    def dense(self) -> np.ndarray:
        """The contract's reading: [16*S, 16*K] dequantised INT8 weights."""
        w, used = unpack_matrix(self.data, 0, self.n_strips, self.k_blocks, self.bits,
                                sparse=self.sparse, gscale=self.gscale)
        assert used == len(self.data)
        return w


def random_matrix(rng: np.random.Generator, *, n_strips: int, k_blocks: int, bits: int,
                  gscale: bool, sparse: bool, codes=None, extreme: bool = False) -> MatrixCase:
    """A random matrix packed with the contract's packer.

    Args:
        codes: N per block ([S, K]) or a single N; None draws every block's N at random
            (sparse) or uses 16 (dense).
        extreme: every kept weight is the most negative value (times the largest multiplier),
            so dequantised weights are -128 where the format allows it.
    """
    rows, cols = B * n_strips, B * k_blocks
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not sparse:
        n_of = np.full((n_strips, k_blocks), 16)
    elif codes is None:
        n_of = rng.choice(SPARSITY_CODES, size=(n_strips, k_blocks))
    else:
        n_of = np.broadcast_to(np.asarray(codes), (n_strips, k_blocks)).copy()
    q = np.zeros((rows, cols), dtype=np.int64)
    for s in range(n_strips):
        for k in range(k_blocks):
            n = int(n_of[s, k])
            for r in range(B):
                keep = rng.choice(B, size=n, replace=False) if n < B else np.arange(B)
                if n < B:  # some rows keep fewer than N (the packer pads with zeros)
                    keep = keep[: rng.integers(0, n + 1)] if rng.random() < 0.2 else keep
                vals = np.full(len(keep), lo) if extreme else rng.integers(lo, hi + 1, len(keep))
                q[s * B + r, k * B + keep] = vals
    mult = None
    if gscale:
        mult = (np.full((rows, k_blocks), 16) if extreme
                else rng.integers(1, 17, size=(rows, k_blocks)))
    packed = pack_matrix(q, bits, codes=n_of if sparse else None, mult=mult)
    code_of = np.vectorize(SPARSITY_CODES.index)(n_of)
    return MatrixCase(packed, n_strips, k_blocks, bits, sparse, gscale, code_of)


def random_bytes_matrix(rng: np.random.Generator, *, n_strips: int, k_blocks: int, bits: int,
                        gscale: bool) -> MatrixCase:
    """A sparse matrix of random bytes (any indices, duplicates included); only the code
    tables are kept valid. The contract sums duplicate indices; so must the hardware."""
    out = bytearray()
    tables = rng.integers(0, 4, (n_strips, k_blocks))
    for table in tables:
        out += bytes(table.astype(np.uint8)) + bytes(code_table_bytes(k_blocks, True) - k_blocks)
        for c in table:
            out += rng.integers(0, 256, block_bytes(SPARSITY_CODES[c], bits, gscale),
                                dtype=np.uint8).tobytes()
    return MatrixCase(bytes(out), n_strips, k_blocks, bits, True, gscale, tables)


def words64(blob: bytes) -> list[int]:
    """The byte stream as little-endian 64-bit words (blocks are multiples of 8 bytes)."""
    assert len(blob) % 8 == 0
    return [int.from_bytes(blob[i:i + 8], "little") for i in range(0, len(blob), 8)]


def word_beats(words: list[int], per_beat: int, rng=None) -> list:
    """Dequantiser input beats: the words themselves (``per_beat`` 1), or pairs as dicts of
    ``words_layout(2)``, the last one ``single`` when the count is odd; with ``rng`` a beat
    is ``single`` at random (a third of them) as well, so the words meet every alignment."""
    if per_beat == 1:
        return list(words)
    beats, i = [], 0
    while i < len(words):
        single = i + 1 == len(words) or (rng is not None and rng.random() < 1 / 3)
        pair = words[i] | (0 if single else words[i + 1] << 64)
        beats.append({"data": pair, "single": int(single)})
        i += 1 if single else 2
    return beats


# --------------------------------------------------------------------------- format decode
@dataclass
class Block:
    code: int
    w: np.ndarray      # [16, N] dequantised INT8 weights
    idx: np.ndarray    # [16, N] in-block columns


def _fields(buf: bytes, bits: int, count: int, signed: bool) -> np.ndarray:
    v = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")
    v = v[: count * bits].reshape(count, bits).astype(np.int64)
    v = (v << np.arange(bits)).sum(axis=1)
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v


def decode_blocks(case: MatrixCase) -> list[list[Block]]:
    """The testbench's own reading of the format into per-row (weight, index) pairs."""
    pos, strips = 0, []
    buf = case.data
    for _ in range(case.n_strips):
        if case.sparse:
            codes = list(buf[pos:pos + case.k_blocks])
            pos += -(-case.k_blocks // 8) * 8
        else:
            codes = [3] * case.k_blocks
        blocks = []
        for code in codes:
            n = SPARSITY_CODES[code]
            m = np.ones((B, 1), dtype=np.int64)
            if case.gscale:
                m = _fields(buf[pos:pos + 8], 4, B, False)[:, None] + 1
                pos += 8
            if n < B:
                idx = _fields(buf[pos:pos + 8 * n], 4, B * n, False).reshape(B, n)
                pos += 8 * n
            else:
                idx = np.tile(np.arange(B), (B, 1))
            v = _fields(buf[pos:pos + 2 * n * case.bits], case.bits, B * n, True).reshape(B, n)
            pos += 2 * n * case.bits
            blocks.append(Block(code, v * m, idx))
        strips.append(blocks)
    assert pos == len(buf)
    return strips


def block_passes(block: Block, mv_k: int, *, first: bool, last: bool) -> list[dict]:
    """The chain's weight beats for one block (see hw/dsp_chain.weight_beat_layout)."""
    w = block.w.ravel()
    idx = block.idx.ravel()
    return [{"w": w[p:p + mv_k].tolist(), "idx": idx[p:p + mv_k].tolist(), "code": block.code,
             "first": int(first), "last": int(last)} for p in range(0, len(w), mv_k)]


# --------------------------------------------------------------------------- checker
@dataclass
class Checker:
    """Compares actual transactions with expected ones, in order."""

    name: str
    log: object = None
    count: int = 0
    errors: int = 0
    expected: list = field(default_factory=list)
    _shown: int = 0

    def expect(self, item) -> None:
        self.expected.append(item)

    def check(self, actual) -> None:
        if not self.expected:
            self._error(f"unexpected transaction {self.count}: {actual!r}")
            return
        want = self.expected.pop(0)
        if not _equal(want, actual):
            self._error(f"transaction {self.count} differs:\n  expected {want!r}\n  "
                        f"actual   {actual!r}")
        self.count += 1

    def _error(self, text: str) -> None:
        self.errors += 1
        if self.log is not None and self._shown < 5:
            self.log.error("%s: %s", self.name, text)
            self._shown += 1


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


# --------------------------------------------------------------------------- scenarios
VARIANTS = [(bits, gscale) for bits in (2, 4, 8) for gscale in ((False, True) if bits < 8
                                                               else (False,))]
#: Matrix kinds every variant is tried with: mixed codes, one code throughout, the dense
#: format (no code tables), extreme values (packed-lane overflow edge), random bytes.
KINDS = ("mixed", 2, 4, 8, 16, "dense", "extreme", "bytes")


def scenario_matrix(rng: np.random.Generator, kind, bits: int, gscale: bool, *,
                    n_strips: int, k_blocks: int) -> MatrixCase:
    if kind == "bytes":
        return random_bytes_matrix(rng, n_strips=n_strips, k_blocks=k_blocks, bits=bits,
                                   gscale=gscale)
    return random_matrix(rng, n_strips=n_strips, k_blocks=k_blocks, bits=bits, gscale=gscale,
                         sparse=kind != "dense", extreme=kind == "extreme",
                         codes=kind if isinstance(kind, int) else None)


@dataclass
class ChainStimulus:
    weights: list[dict]       # weight beats
    acts: list[dict]          # activation beats (one per block)
    expected: list[dict]      # one result beat per strip: {"y": [lane][row]}
    passes: int


def chain_stimulus(case: MatrixCase, rng: np.random.Generator, mv_k: int, *,
                   mode: str = "mm", extreme: bool = False) -> ChainStimulus:
    """Beats for the chain and the expected strip results (``unpack_matrix`` @ x).

    ``mode`` "mm" fills both lanes; "mv" leaves lane 1 at zero (one token, as in decode).
    ``extreme`` makes every activation -128.
    """
    W = case.dense()
    strips = decode_blocks(case)
    x = rng.integers(-128, 128, size=(case.n_strips, case.k_blocks, 2, B))
    if extreme:
        x[:] = -128
    if mode == "mv":
        x[:, :, 1] = 0
    weights, acts, expected = [], [], []
    for s, blocks in enumerate(strips):
        for k, block in enumerate(blocks):
            weights += block_passes(block, mv_k, first=k == 0, last=k == case.k_blocks - 1)
            acts.append({"x": x[s, k].tolist()})
        lanes = x[s].transpose(1, 0, 2).reshape(2, -1)            # [lane, K]
        y = W[s * B:(s + 1) * B] @ lanes.T                         # [row, lane]
        expected.append({"y": y.T.tolist()})
    return ChainStimulus(weights, acts, expected, len(weights))


def chain_group_stimulus(case: MatrixCase, rng: np.random.Generator, mv_k: int, *,
                         pairs: int, group: int, extreme: bool = False) -> ChainStimulus:
    """As :func:`chain_stimulus` ("mm") for a chain built with ``pairs`` token pairs per weight
    pass, fed a group of ``group`` (<= ``pairs``) pairs: one activation beat per block holds
    every pair's block (unused pairs zero), and a strip ends with one result per pair.
    ``extreme`` makes every activation of the group -128."""
    W = case.dense()
    strips = decode_blocks(case)
    x = np.zeros((case.n_strips, case.k_blocks, pairs, 2, B), dtype=np.int64)
    x[:, :, :group] = (-128 if extreme else
                       rng.integers(-128, 128, size=(case.n_strips, case.k_blocks, group, 2, B)))
    weights, acts, expected = [], [], []
    for s, blocks in enumerate(strips):
        for k, block in enumerate(blocks):
            weights += block_passes(block, mv_k, first=k == 0, last=k == case.k_blocks - 1)
            acts.append({"x": x[s, k].tolist(), "pairs_m1": group - 1})
        for g in range(group):
            lanes = x[s, :, g].transpose(1, 0, 2).reshape(2, -1)     # [lane, K]
            expected.append({"y": (W[s * B:(s + 1) * B] @ lanes.T).T.tolist()})
    return ChainStimulus(weights, acts, expected, len(weights) * group)


def dequant_expected(case: MatrixCase, mv_k: int) -> list[dict]:
    """Per weight beat: its sparsity code, flags and the dense block rows it covers, from the
    contract's ``unpack_matrix``."""
    W = case.dense()
    out = []
    for s in range(case.n_strips):
        for k in range(case.k_blocks):
            code = int(case.codes[s, k]) if case.sparse else 3
            rows = mv_k // SPARSITY_CODES[code]
            block = W[s * B:(s + 1) * B, k * B:(k + 1) * B]
            for p in range(B // rows):
                out.append({"code": code, "first": int(k == 0),
                            "last": int(k == case.k_blocks - 1),
                            "rows": block[p * rows:(p + 1) * rows].tolist()})
    return out


def beat_rows(beat: dict) -> list:
    """Dense block rows covered by one weight beat (duplicate columns sum)."""
    n = SPARSITY_CODES[beat["code"]]
    w = np.asarray(beat["w"]).reshape(-1, n)
    idx = np.asarray(beat["idx"]).reshape(-1, n)
    out = np.zeros((len(w), B), dtype=np.int64)
    np.add.at(out, (np.arange(len(w))[:, None], idx), w)
    return out.tolist()
