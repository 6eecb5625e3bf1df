"""Where everything lives: HBM placement of weights, caches and I/O, and on-chip regions.

The HBM image is built per channel (core-local numbering). Weights are *striped*: each chunk
of a matrix (:mod:`~flightllm.compiler.chunking` cuts them) is split evenly across the core's
channels at the same address on each, so one LD with ``nch`` channels streams it from all of
them in parallel. Caches, parameters and I/O are placed round
robin. Every placed tensor is recorded (channel, offset, bytes, checksum) for the manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CompileError", "HBMImage", "Placement", "Arena", "align"]


class CompileError(ValueError):
    """The model cannot be compiled for this configuration; the message says why."""


def align(value: int, to: int) -> int:
    return -(-value // to) * to


@dataclass(frozen=True)
class Placement:
    """A tensor in HBM: same ``offset`` on each of ``channels`` holding ``part_bytes`` each."""

    name: str
    channels: tuple[int, ...]
    offset: int
    part_bytes: int
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def to_dict(self) -> dict:
        return {"name": self.name, "channels": list(self.channels), "offset": self.offset,
                "bytes_per_channel": self.part_bytes, "dtype": self.dtype,
                "shape": list(self.shape), "sha256": self.sha256}


class HBMImage:
    """Per-channel byte images under construction, in memory or spooled to files.

    Args:
        channels: the core's HBM channels.
        capacity: bytes per channel.
        spool: a directory to write the images into as they are placed (a full-size model's
            images are gigabytes); None keeps them in memory.
        name: file-name prefix of the spooled images (``<name>_chNN.bin``).
    """

    def __init__(self, channels: int, capacity: int, *, spool: Path | None = None,
                 name: str = "core0"):
        self.channels, self.capacity = channels, capacity
        self.placements: dict[str, Placement] = {}
        self.sizes = [0] * channels
        self._rr = 0
        self.paths = None
        if spool is not None:
            self.paths = [Path(spool) / f"{name}_ch{c:02d}.bin" for c in range(channels)]
            for path in self.paths:
                path.write_bytes(b"")
        else:
            self._data = [bytearray() for _ in range(channels)]

    def _reserve(self, chans: tuple[int, ...], nbytes: int) -> int:
        offset = align(max(self.sizes[c] for c in chans), 64)
        for c in chans:
            if offset + nbytes > self.capacity:
                raise CompileError(f"HBM channel {c} is full: {offset + nbytes} bytes needed, "
                                   f"{self.capacity} available")
            self.sizes[c] = offset + nbytes
        return offset

    def _write(self, channel: int, offset: int, data: bytes) -> None:
        if self.paths is None:
            buf = self._data[channel]
            if len(buf) < offset + len(data):
                buf.extend(bytes(offset + len(data) - len(buf)))
            buf[offset:offset + len(data)] = data
        else:
            with open(self.paths[channel], "r+b") as f:
                f.seek(offset)
                f.write(data)

    def finish(self) -> None:
        """Pad every image to its reserved size (trailing reservations are zeros)."""
        for c, size in enumerate(self.sizes):
            if self.paths is None:
                self._data[c].extend(bytes(size - len(self._data[c])))
            else:
                with open(self.paths[c], "r+b") as f:
                    f.truncate(size)

    def channel_bytes(self, channel: int) -> bytes | bytearray:
        """The finished image of one channel."""
        if self.paths is None:
            return self._data[channel]
        return self.paths[channel].read_bytes()

    def place(self, name: str, data: bytes, *, dtype: str, shape, channel: int | None = None,
              reserve_only: bool = False) -> Placement:
        """Put ``data`` on one channel (round robin unless given); ``reserve_only`` leaves the
        bytes zero (caches, outputs)."""
        if channel is None:
            channel, self._rr = self._rr, (self._rr + 1) % self.channels
        offset = self._reserve((channel,), len(data))
        if not reserve_only:
            self._write(channel, offset, data)
        return self._record(name, (channel,), offset, len(data), dtype, shape, data)

    def reserve_span(self, name: str, part_bytes: int, nch: int, *, dtype: str, shape,
                     first: int | None = None) -> Placement:
        """Zeroed room of ``part_bytes`` at one offset on ``nch`` consecutive channels (the
        first round robin among those with ``nch - 1`` after them, unless given): a region one
        LD of ``nch`` channels reads, part ``c`` from channel ``first + c``."""
        if not 1 <= nch <= self.channels:
            raise AssertionError(f"{name}: {nch} channels of {self.channels}")
        if first is None:
            first, self._rr = self._rr % (self.channels - nch + 1), (self._rr + nch) % self.channels
        chans = tuple(range(first, first + nch))
        offset = self._reserve(chans, part_bytes)
        return self._record(name, chans, offset, part_bytes, dtype, shape, bytes(part_bytes * nch))

    def place_striped(self, name: str, parts: list[bytes], *, dtype: str, shape) -> Placement:
        """Equal-length parts, part c on channel c, all at one offset."""
        chans = tuple(range(len(parts)))
        size = len(parts[0])
        if any(len(p) != size for p in parts):
            raise AssertionError("striped parts must have equal lengths")
        offset = self._reserve(chans, size)
        for c, part in zip(chans, parts):
            self._write(c, offset, part)
        return self._record(name, chans, offset, size, dtype, shape, b"".join(parts))

    def _record(self, name, chans, offset, size, dtype, shape, data) -> Placement:
        if name in self.placements:
            raise AssertionError(f"tensor {name} placed twice")
        p = Placement(name, chans, offset, size, dtype, tuple(shape),
                      hashlib.sha256(data).hexdigest())
        self.placements[name] = p
        return p


class Arena:
    """A bump allocator over one on-chip buffer; regions may be released in stack order."""

    def __init__(self, name: str, size: int, alignment: int = 16):
        self.name, self.size, self.alignment = name, size, alignment
        self.top = 0

    def take(self, nbytes: int, what: str) -> int:
        addr = align(self.top, self.alignment)
        if addr + nbytes > self.size:
            raise CompileError(f"{self.name} too small: {what} needs {nbytes} bytes at {addr}, "
                               f"the buffer holds {self.size}; use a smaller --max-len or a "
                               "configuration with a larger buffer")
        self.top = addr + nbytes
        return addr

    def mark(self) -> int:
        return self.top

    def reset(self, mark: int) -> None:
        self.top = mark
