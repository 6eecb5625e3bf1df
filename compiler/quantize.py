"""Post-training weight quantisation and N:16 pruning into the contract's block format.

A weight matrix ``W[N, K]`` (float) becomes integers ``q`` of ``bits`` bits, per output channel
a real scale ``s[n]``, and (for 2- and 4-bit weights) a multiplier ``m[n, g]`` in 1..16 per
16-column group, so that ``W ~ q * m * s`` (docs/numerics.md). The channel scale is set by the
channel's largest group, which gets multiplier 16; smaller groups get the smallest multiplier
that covers them, so each group uses most of the integer range. Pruning keeps the ``N`` largest
magnitudes of each row of each 16x16 block (the sparse mux can select any N of 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flightllm.contract.weights import pack_matrix

__all__ = ["QuantWeight", "quantize_weight", "prune_n16", "pad_to_blocks"]


@dataclass
class QuantWeight:
    """A quantised matrix.

    Attributes:
        q: [N, K] integers (0 where pruned), N and K padded to multiples of 16.
        mult: [N, K // 16] group multipliers (1..16), or None for 8-bit weights.
        codes: [N // 16, K // 16] N kept per block row, or None when dense.
        scale: [N] float64 real scale per output channel (0 for an all-zero channel).
        bits: 2, 4 or 8.
        shape: the unpadded [N, K].
    """

    q: np.ndarray | None
    mult: np.ndarray | None
    codes: np.ndarray | None
    scale: np.ndarray
    bits: int
    shape: tuple[int, int]
    padded: tuple[int, int] = (0, 0)
    keep: int = 16
    has_mult: bool = False
    nbytes: int = 0
    _data: bytes | None = None

    def __post_init__(self):
        self.padded = tuple(self.q.shape)
        self.keep = 16 if self.codes is None else int(self.codes.flat[0])
        self.has_mult = self.mult is not None
        if self.codes is not None and not (self.codes == self.keep).all():
            raise ValueError("a matrix keeps one N:16 code for all its blocks")

    @property
    def sparse(self) -> bool:
        return self.keep < 16

    def release(self) -> None:
        """Drop the arrays and bytes once placed; what describes the matrix stays."""
        self.packed()
        self.q = self.mult = self.codes = self._data = None

    @property
    def dequantized(self) -> np.ndarray:
        """The INT8 weights the datapath multiplies (``q * m``), padded."""
        if self.q is None:
            raise ValueError("the weights were released after placement")
        return self.q * (np.repeat(self.mult, 16, axis=1) if self.mult is not None else 1)

    def float_weight(self) -> np.ndarray:
        """What the quantised weights stand for, unpadded."""
        n, k = self.shape
        return (self.dequantized * self.scale[:, None])[:n, :k]

    def packed(self) -> bytes:
        """The block-format bytes (computed once)."""
        if self._data is None:
            if self.q is None:
                raise ValueError("the weights were released after placement")
            self._data = pack_matrix(self.q, self.bits, codes=self.codes, mult=self.mult)
            self.nbytes = len(self._data)
        return self._data

    def packed_columns(self, k0: int, n: int) -> bytes:
        """Block columns ``[k0, k0 + n)`` packed as a matrix of their own (a K range)."""
        if self.q is None:
            raise ValueError("the weights were released after placement")
        cols = slice(16 * k0, 16 * (k0 + n))
        return pack_matrix(self.q[:, cols], self.bits,
                           codes=None if self.codes is None else self.codes[:, k0:k0 + n],
                           mult=None if self.mult is None else self.mult[:, k0:k0 + n])

    @property
    def stored_bits(self) -> float:
        """Average bits per (unpadded) weight in the packed image, metadata included."""
        if self._data is None and self.q is not None:
            self.packed()
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])


def pad_to_blocks(w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    out = np.zeros((-(-n // 16) * 16, -(-k // 16) * 16), dtype=np.float64)
    out[:n, :k] = w
    return out


def prune_n16(w: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero all but the ``keep`` largest magnitudes of every row of every 16-wide block.

    Returns the pruned [N, K] matrix (padded) and the [N/16, K/16] codes (all ``keep``).
    """
    if keep not in (2, 4, 8, 16):
        raise ValueError(f"N:16 sparsity keeps 2, 4, 8 or 16 weights per row, not {keep}")
    w = pad_to_blocks(w)
    n, k = w.shape
    codes = np.full((n // 16, k // 16), keep, dtype=np.int64)
    if keep == 16:
        return w, codes
    blocks = w.reshape(n, k // 16, 16)
    # Stable order so ties break the same way on every machine.
    order = np.argsort(-np.abs(blocks), axis=-1, kind="stable")
    mask = np.zeros_like(blocks, dtype=bool)
    np.put_along_axis(mask, order[..., :keep], True, axis=-1)
    return (blocks * mask).reshape(n, k), codes


def quantize_weight(w: np.ndarray, bits: int, *, sparsity: int = 16,
                    group_scales: bool = True) -> QuantWeight:
    """Quantise (and optionally prune) one float matrix ``[N, K]``.

    Args:
        w: float weights, [out, in].
        bits: 2, 4 or 8.
        sparsity: N of N:16 (16 = dense).
        group_scales: use 4-bit per-group multipliers (ignored for 8 bits).
    """
    if bits not in (2, 4, 8):
        raise ValueError(f"weight bits must be 2, 4 or 8, not {bits}")
    shape = tuple(w.shape)
    wp, codes = prune_n16(np.asarray(w, dtype=np.float64), sparsity)
    n, k = wp.shape
    qmax = (1 << (bits - 1)) - 1
    groups = np.abs(wp).reshape(n, k // 16, 16).max(axis=-1)  # [N, G]
    use_mult = group_scales and bits < 8
    top = 16 if use_mult else 1
    scale = groups.max(axis=1) / (qmax * top)  # the largest group uses multiplier `top`
    safe = np.where(scale > 0, scale, 1.0)
    if use_mult:
        mult = np.clip(np.ceil(groups / (qmax * safe[:, None]) - 1e-9), 1, 16).astype(np.int64)
        step = safe[:, None] * np.repeat(mult, 16, axis=1)
    else:
        mult = None
        step = np.repeat(safe[:, None], k, axis=1)
    q = np.clip(np.round(wp / step), -qmax - 1, qmax).astype(np.int64)
    q[wp == 0] = 0  # pruned (and padded) weights stay exactly zero
    return QuantWeight(q=q, mult=mult, codes=codes if sparsity < 16 else None,
                       scale=np.where(scale > 0, scale, 0.0), bits=bits, shape=shape)
