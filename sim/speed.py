"""Speed-ups of the golden simulator that change no result: a cache of decoded weight
matrices keyed by their bytes, an exact BLAS matrix product, and BLAS thread control.

:mod:`flightllm.sim.execute` uses them; ``tests/sim/test_speed_cache.py`` checks that they
give exactly what the plain definitions give.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
from collections import OrderedDict

import numpy as np

from flightllm.contract.weights import SPARSITY_CODES, block_bytes, code_table_bytes

__all__ = ["WeightCache", "WEIGHT_CACHE", "DecodedWeights", "exact_matmul", "blas_threads"]


class DecodedWeights:
    """A decoded weight matrix as the matrix product wants it.

    ``w`` holds the dequantised INT8-range weights as float32 (exact: |w| < 2**24) and ``l1``
    the largest row sum of |w|, which bounds every partial sum of ``x . w`` by
    ``max|x| * l1``: below 2**24 a float32 product is exact in any summation order, below
    2**53 a float64 one (see :func:`_exact_matmul`).
    """

    __slots__ = ("w", "l1", "span", "stored", "nbytes")

    def __init__(self, W: np.ndarray, span: int, stored: int):
        self.w = W.astype(np.float32)
        self.l1 = int(np.abs(W).sum(axis=1).max()) if W.size else 0
        self.span, self.stored = span, stored
        self.nbytes = self.w.nbytes


class WeightCache:
    """Decoded weight matrices keyed by their *content*: the decoding parameters and the
    SHA-256 of the WBUF bytes the matrix spans.

    Decoding is a pure function of those bytes, so a hit returns exactly what decoding would;
    bytes overwritten in WBUF (the next weight chunk, a K/V tile, any store) change the digest,
    so nothing needs invalidating. The span is found from the strips' code tables before the
    digest; a matrix whose code tables or extent are invalid is not looked up, and decoding it
    raises the usual error. Least recently used entries go once ``max_bytes`` is exceeded.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def key(self, mem: np.ndarray, offset: int, n_strips: int, k_blocks: int, bits: int,
            sparse: bool, gscale: bool, stride: int):
        """The content key of a matrix, or None if its extent cannot be read (let the decoder
        report why)."""
        span = _packed_span(mem, offset, n_strips, k_blocks, bits, sparse, gscale, stride)
        if span is None:
            return None
        digest = hashlib.sha256(memoryview(mem[offset:offset + span])).digest()
        return (n_strips, k_blocks, bits, sparse, gscale, stride, span, digest)

    def get(self, key) -> DecodedWeights | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key, entry: DecodedWeights) -> None:
        if entry.nbytes > self.max_bytes or key in self._entries:
            return
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes


#: The process-wide cache of decoded weights (content-keyed, so shared by every simulator).
WEIGHT_CACHE = WeightCache(int(os.environ.get("FLIGHTLLM_SIM_WEIGHT_CACHE_MB", "2048")) << 20)

_BLOCK_BYTES = {(bits, gscale): np.array([block_bytes(n, bits, gscale) for n in SPARSITY_CODES])
                for bits in (2, 4, 8) for gscale in (False, True)}


def _packed_span(mem, offset, n_strips, k_blocks, bits, sparse, gscale, stride) -> int | None:
    """Bytes from ``offset`` to the end of the last strip (what unpack_matrix returns as its
    span), from the code tables alone; None when a table or strip lies outside the buffer or
    holds a code that is not 0..3."""
    if bits not in (2, 4, 8) or (gscale and bits == 8) or offset < 0 or n_strips <= 0:
        return None
    if not sparse:
        strip = k_blocks * block_bytes(16, bits, gscale)
        span = (n_strips - 1) * stride + strip if stride else n_strips * strip
        return span if offset + span <= len(mem) else None
    sizes = _BLOCK_BYTES[(bits, gscale)]
    table = code_table_bytes(k_blocks, True)
    pos = offset
    for s in range(n_strips):
        if stride:
            pos = offset + s * stride
        if pos + k_blocks > len(mem):
            return None
        codes = mem[pos:pos + k_blocks]
        if codes.size and codes.max() > 3:
            return None
        pos += table + int(sizes[codes].sum())
    return pos - offset if pos <= len(mem) else None


def exact_matmul(X: np.ndarray, entry: DecodedWeights) -> np.ndarray:
    """``X @ W.T`` in int64, computed with BLAS where floating point is provably exact.

    Every term and partial sum is an integer of magnitude at most ``max|x| * l1``; an IEEE
    float adds and multiplies such integers exactly while they stay below 2**24 (float32) or
    2**53 (float64), whatever order BLAS sums in. Beyond that, plain int64.
    """
    bound = int(np.abs(X).max(initial=0)) * entry.l1
    if bound < 1 << 24:
        return (X.astype(np.float32) @ entry.w.T).astype(np.int64)
    if bound < 1 << 53:
        return (X.astype(np.float64) @ entry.w.T.astype(np.float64)).astype(np.int64)
    return X @ entry.w.T.astype(np.int64)


def _openblas():
    """numpy's OpenBLAS ``(get, set)`` thread-count functions, or None (another BLAS, or not
    Linux): found by name among the libraries the process has mapped."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"),
                               ("scipy_openblas", ""), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return get, put
    return None


_BLAS = None


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """Run the block with numpy's OpenBLAS limited to ``n`` threads (default: the
    ``FLIGHTLLM_SIM_BLAS_THREADS`` environment variable, else 1), then restore it.

    The simulator's products are small (at most a prefill chunk of rows), so extra BLAS
    threads gain little, and on a loaded machine they lose a lot: on the shared 2-core
    development machine a [64 x 576] x [576 x 1536] float32 product took 96 ms with OpenBLAS's
    default threads and 4 ms with one. Without OpenBLAS this does nothing.
    """
    global _BLAS
    if _BLAS is None:
        _BLAS = _openblas() or False
    if n is None:
        n = int(os.environ.get("FLIGHTLLM_SIM_BLAS_THREADS", "1"))
    if not _BLAS or n <= 0:
        yield
        return
    get, put = _BLAS
    before = get()
    put(n)
    try:
        yield
    finally:
        put(before)
