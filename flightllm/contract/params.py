"""Byte layouts of the parameters instructions read from PBUF.

* Requantisation records (MM/MV in Q8/Q32 mode): one 8-byte record per output channel,
  ``bias`` INT32, ``mult`` INT16, ``shift`` UINT8 (0..62), one reserved zero byte.
* Norm parameters (RMSNORM/LAYERNORM): ``gamma`` INT16[n], then, with the ``beta`` flag,
  ``beta`` INT32[n] starting at ``p_addr + 2n`` rounded up to a multiple of 4.
* RoPE table rows (ROPE): per token, ``cos`` INT16[group/2] then ``sin`` INT16[group/2], Q14.

All little-endian. The compiler packs with these functions; the golden simulator and the RTL
read the same bytes.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "REQUANT_RECORD", "REQUANT_RECORD_BYTES", "pack_requant_records", "unpack_requant_records",
    "norm_beta_offset", "pack_norm_params", "pack_rope_rows",
]

REQUANT_RECORD = np.dtype([("bias", "<i4"), ("mult", "<i2"), ("shift", "u1"), ("reserved", "u1")])
REQUANT_RECORD_BYTES = REQUANT_RECORD.itemsize
assert REQUANT_RECORD_BYTES == 8


def pack_requant_records(bias, mult, shift) -> bytes:
    """Records for each output channel; arguments broadcast to a common length."""
    bias, mult, shift = np.broadcast_arrays(np.asarray(bias, np.int64), np.asarray(mult, np.int64),
                                            np.asarray(shift, np.int64))
    for name, arr, lo, hi in (("bias", bias, -(1 << 31), (1 << 31) - 1),
                              ("mult", mult, -(1 << 15), (1 << 15) - 1), ("shift", shift, 0, 62)):
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"requantisation {name} outside [{lo}, {hi}]")
    rec = np.zeros(bias.shape, dtype=REQUANT_RECORD)
    rec["bias"], rec["mult"], rec["shift"] = bias, mult, shift
    return rec.tobytes()


def unpack_requant_records(data: np.ndarray) -> np.ndarray:
    """Structured array of records from raw bytes (a multiple of 8)."""
    return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=REQUANT_RECORD)


def norm_beta_offset(n: int) -> int:
    """Byte offset of ``beta`` after ``gamma`` for an n-element norm."""
    return -(-2 * n // 4) * 4


def pack_norm_params(gamma, beta=None) -> bytes:
    """gamma INT16[n] and optional beta INT32[n] as RMSNORM/LAYERNORM read them."""
    gamma = np.asarray(gamma, dtype=np.int64)
    if gamma.min(initial=0) < -(1 << 15) or gamma.max(initial=0) >= 1 << 15:
        raise ValueError("norm gamma outside INT16")
    out = gamma.astype("<i2").tobytes()
    if beta is not None:
        beta = np.asarray(beta, dtype=np.int64)
        if beta.shape != gamma.shape:
            raise ValueError(f"beta shape {beta.shape} differs from gamma {gamma.shape}")
        out += bytes(norm_beta_offset(len(gamma)) - len(out))
        out += np.clip(beta, -(1 << 31), (1 << 31) - 1).astype("<i4").tobytes()
    return out


def pack_rope_rows(cos, sin) -> bytes:
    """Rows of Q14 cos then sin ([tokens, group/2] each) as ROPE reads them."""
    cos, sin = np.asarray(cos, np.int64), np.asarray(sin, np.int64)
    return np.concatenate([cos, sin], axis=1).astype("<i2").tobytes()
