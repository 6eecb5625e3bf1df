"""One core's on-chip state for the golden simulator: typed views of the four buffers.

The element type is a property of the buffer (contract/isa.py ``Buffer``): ABUF holds INT8,
RBUF INT32 (little-endian, 4-byte aligned), WBUF and PBUF raw bytes. Every access checks its
range and raises :class:`ProgramError`, so a bad address in a program never becomes a numpy
traceback or a silent wrap.
"""

from __future__ import annotations

import numpy as np

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Buffer

__all__ = ["ProgramError", "CoreBuffers", "ELEMENT_BYTES", "MAX_ELEMENTS", "check_size"]

#: The golden model materialises each instruction's operands; it refuses larger ones (a real
#: model's largest operand, a 32k x 4k LM head tile, is far below) rather than exhaust memory.
MAX_ELEMENTS = 1 << 25

#: Bytes per element when a buffer is read or written as numbers.
ELEMENT_BYTES = {Buffer.ABUF: 1, Buffer.WBUF: 1, Buffer.RBUF: 4, Buffer.PBUF: 1}
_DTYPE = {Buffer.ABUF: np.int8, Buffer.WBUF: np.uint8, Buffer.RBUF: np.dtype("<i4"),
          Buffer.PBUF: np.uint8}
_LIMITS = {Buffer.ABUF: (-128, 127), Buffer.WBUF: (0, 255),
           Buffer.RBUF: (-(1 << 31), (1 << 31) - 1),
           Buffer.PBUF: (0, 255)}


class ProgramError(ValueError):
    """A program asks for something the machine cannot do; the message names the instruction,
    the field and the value."""


def check_size(count: int, what: str) -> None:
    """Raise ProgramError if an operand of ``count`` elements is beyond the golden model."""
    if count > MAX_ELEMENTS:
        raise ProgramError(f"{what}: {count} elements exceed the golden simulator's "
                           f"per-instruction limit of {MAX_ELEMENTS}")


class CoreBuffers:
    """The ABUF, WBUF, RBUF and PBUF of one core as byte arrays."""

    def __init__(self, config: AcceleratorConfig):
        self.mem = {b: np.zeros(config.buffer(b.name.lower()).bytes, dtype=np.uint8)
                    for b in Buffer}

    def _span(self, buf: Buffer, addr: int, nbytes: int, what: str) -> slice:
        size = len(self.mem[buf])
        if addr < 0 or nbytes < 0 or addr + nbytes > size:
            raise ProgramError(f"{what}: bytes [{addr:#x}, {addr + nbytes:#x}) run past "
                               f"{buf.name} ({size:#x} bytes)")
        if ELEMENT_BYTES[buf] == 4 and addr % 4:
            raise ProgramError(f"{what}: address {addr:#x} in {buf.name} is not 4-byte aligned")
        return slice(addr, addr + nbytes)

    # ---- raw bytes
    def read_bytes(self, buf: Buffer, addr: int, nbytes: int, what: str) -> np.ndarray:
        return self.mem[buf][self._span(buf, addr, nbytes, what)].copy()

    def write_bytes(self, buf: Buffer, addr: int, data: np.ndarray, what: str) -> None:
        data = np.asarray(data, dtype=np.uint8).ravel()
        self.mem[buf][self._span(buf, addr, len(data), what)] = data

    # ---- typed rows
    def read_rows(self, buf: Buffer, addr: int, stride: int, rows: int, n: int,
                  what: str) -> np.ndarray:
        """[rows, n] elements of the buffer's type as int64; row i starts at addr + i*stride."""
        es = ELEMENT_BYTES[buf]
        if rows > 1 and es == 4 and stride % 4:
            raise ProgramError(f"{what}: row stride {stride} in {buf.name} is not 4-byte aligned")
        if rows:
            self._span(buf, addr + (rows - 1) * stride, n * es, what)  # the last row, first
        check_size(rows * n, what)
        if rows == 0 or n == 0:
            return np.zeros((rows, n), dtype=np.int64)
        # The first and the last row are in range (checked), hence every row between.
        self._span(buf, addr, n * es, what)
        idx = addr + np.arange(rows, dtype=np.int64)[:, None] * stride + np.arange(n * es)
        return self.mem[buf][idx].view(_DTYPE[buf]).astype(np.int64)

    def write_rows(self, buf: Buffer, addr: int, stride: int, values: np.ndarray,
                   what: str) -> None:
        """Write [rows, n] int values, which must already lie in the buffer type's range."""
        values = np.asarray(values, dtype=np.int64)
        lo, hi = _LIMITS[buf]
        if values.size and (values.min() < lo or values.max() > hi):
            raise AssertionError(f"{what}: value outside {buf.name}'s range reached the write; "
                                 "the executor must saturate first")
        es = ELEMENT_BYTES[buf]
        if values.shape[0] > 1 and es == 4 and stride % 4:
            raise ProgramError(f"{what}: row stride {stride} in {buf.name} is not 4-byte aligned")
        rows, n = values.shape if values.ndim == 2 else (len(values), 0)
        nbytes = n * es
        size = len(self.mem[buf])
        last = addr + (rows - 1) * stride
        if (rows > 1 and nbytes and stride >= nbytes and addr + nbytes <= size
                and last + nbytes <= size and not (es == 4 and addr % 4)):
            # Disjoint rows, all in range: one scatter writes what the loop below would.
            idx = addr + np.arange(rows, dtype=np.int64)[:, None] * stride + np.arange(nbytes)
            self.mem[buf][idx] = values.astype(_DTYPE[buf]).view(np.uint8)
            return
        for i, row in enumerate(values):
            span = self._span(buf, addr + i * stride, len(row) * es, what)
            self.mem[buf][span] = row.astype(_DTYPE[buf]).view(np.uint8)

    @staticmethod
    def saturate(buf: Buffer, values) -> np.ndarray:
        """Saturate to the buffer's element type (raw buffers keep the low byte)."""
        values = np.asarray(values, dtype=np.int64)
        if buf in (Buffer.WBUF, Buffer.PBUF):
            return values & 0xFF
        lo, hi = _LIMITS[buf]
        return np.clip(values, lo, hi)
