"""A functional model of the HBM pseudo-channels: one growable byte array per channel.

Only what has been written is stored; reading bytes never written gives zeros (as the host's
zero-initialised buffers do), so a 256 MiB channel costs only what a build places in it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HBM", "HBMError"]


class HBMError(ValueError):
    """An access outside a channel or to a channel that does not exist."""


class HBM:
    """HBM pseudo-channels numbered physically 0..channels-1.

    Args:
        channels: number of pseudo-channels.
        channel_bytes: capacity of each.
    """

    def __init__(self, channels: int, channel_bytes: int):
        self.channels = channels
        self.channel_bytes = channel_bytes
        self._data = [np.zeros(0, dtype=np.uint8) for _ in range(channels)]

    def _check(self, channel: int, addr: int, length: int) -> None:
        if not 0 <= channel < self.channels:
            raise HBMError(f"HBM channel {channel} does not exist (0..{self.channels - 1})")
        if addr < 0 or length < 0 or addr + length > self.channel_bytes:
            raise HBMError(f"HBM channel {channel}: bytes [{addr:#x}, {addr + length:#x}) lie "
                           f"outside the channel's {self.channel_bytes:#x} bytes")

    def write(self, channel: int, addr: int, data) -> None:
        """Write bytes (or a uint8 array) at ``addr`` of ``channel``."""
        arr = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else data.astype(np.uint8, copy=False).ravel()
        self._check(channel, addr, len(arr))
        cur = self._data[channel]
        end = addr + len(arr)
        if end > len(cur):
            # Grow geometrically so many small appends (KV cache stores) stay cheap.
            grown = np.zeros(min(max(end, 2 * len(cur)), self.channel_bytes), dtype=np.uint8)
            grown[:len(cur)] = cur
            self._data[channel] = cur = grown
        cur[addr:end] = arr

    def read(self, channel: int, addr: int, length: int) -> np.ndarray:
        """``length`` bytes from ``addr`` of ``channel`` as a new uint8 array."""
        self._check(channel, addr, length)
        cur = self._data[channel]
        out = np.zeros(length, dtype=np.uint8)
        have = max(min(len(cur) - addr, length), 0)
        if have:
            out[:have] = cur[addr:addr + have]
        return out

    def used_bytes(self, channel: int) -> int:
        """Bytes of the channel backed by storage (up to the highest write, rounded up)."""
        return len(self._data[channel])
