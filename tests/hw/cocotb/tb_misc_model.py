"""Pure-Python half of the misc-unit bench: random MISC instructions staged at random
addresses and strides in a golden ``CoreBuffers`` that mirrors the RTL's buffers.

SFU functions take their operands and flags from ``tb_sfu_model.random_case`` (which covers
every variant's corners) and are moved to random places: source rows anywhere (RBUF 4-byte
aligned), padded strides, results in place over the source for a third of the element-wise
cases. COPY and FILL are generated here, over every buffer pair. No cocotb here.
"""

from __future__ import annotations

import numpy as np

from flightllm.contract import numerics as nm
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, Opcode
from flightllm.contract.params import pack_norm_params, pack_rope_rows
from flightllm.sim.machine import ELEMENT_BYTES, CoreBuffers
from tb_sfu_model import VARIANT_NAMES, random_case

#: Variants of the random run: the SFU's fourteen, then COPY and FILL.
LABELS = VARIANT_NAMES + ("COPY", "FILL")
_ALL = (Buffer.ABUF, Buffer.WBUF, Buffer.RBUF, Buffer.PBUF)


def _region(core: CoreBuffers, buf: Buffer, part: int) -> tuple[int, int]:
    """Quarter ``part`` (0..3) of a buffer: a, b, d and p operands never overlap."""
    size = len(core.mem[buf]) // 4
    return part * size, size


def _place(rng, core, buf: Buffer, part: int, rows: int, nbytes: int) -> tuple[int, int]:
    """A random (addr, stride) for ``rows`` rows of ``nbytes`` inside quarter ``part``."""
    es = ELEMENT_BYTES[buf]
    lo, size = _region(core, buf, part)
    stride = nbytes + es * int(rng.integers(0, 9))
    span = (rows - 1) * stride + nbytes
    addr = lo + es * int(rng.integers(0, max(1, (size - span) // es)))
    return addr, stride


def _write(core, buf, addr, stride, values):
    for i, row in enumerate(np.asarray(values, np.int64)):
        core.write_rows(buf, addr + i * stride, 0, row[None, :], "tb")


def stage_misc(rng: np.random.Generator, core: CoreBuffers, label: str, lanes: int, *,
               in_place: bool = False, shape: tuple[int, int] | None = None,
               group: int | None = None) -> Instruction:
    """Stage one MISC instruction of variant ``label`` in ``core``; return it. ``shape``
    (m, n) and ``group`` fix the SFU variants' sizes (random otherwise)."""
    if label == "COPY":
        a_buf, d_buf = (Buffer(int(b)) for b in rng.choice(_ALL, 2))
        m, n = int(rng.integers(1, 6)), int(rng.integers(1, 200))
        nbytes = n * ELEMENT_BYTES[a_buf]
        a_addr, a_stride = _place(rng, core, a_buf, 0, m, nbytes)
        d_stride_unit = ELEMENT_BYTES[d_buf]          # RBUF rows stay 4-byte aligned
        lo, size = _region(core, d_buf, 2)
        d_stride = -(-nbytes // d_stride_unit) * d_stride_unit + d_stride_unit * int(
            rng.integers(0, 5))
        d_addr = lo + d_stride_unit * int(rng.integers(0, (size - m * d_stride) // d_stride_unit))
        core.mem[a_buf][a_addr:a_addr + (m - 1) * a_stride + nbytes] = rng.integers(
            0, 256, (m - 1) * a_stride + nbytes, dtype=np.uint8)
        return Instruction(Opcode.MISC, func=int(MiscFunc.COPY), a_buf=int(a_buf),
                           a_addr=a_addr, a_stride=a_stride, d_buf=int(d_buf), d_addr=d_addr,
                           d_stride=d_stride, n=n, m=m)
    if label == "FILL":
        d_buf = Buffer(int(rng.choice(_ALL)))
        m, n = int(rng.integers(1, 6)), int(rng.integers(1, 200))
        d_addr, d_stride = _place(rng, core, d_buf, 2, m, n * ELEMENT_BYTES[d_buf])
        aux = int(rng.choice([nm.INT32_MIN, -129, -128, -1, 0, 127, 128, 255, 256,
                              nm.INT32_MAX, int(rng.integers(nm.INT32_MIN, nm.INT32_MAX))]))
        return Instruction(Opcode.MISC, func=int(MiscFunc.FILL), d_buf=int(d_buf),
                           d_addr=d_addr, d_stride=d_stride, n=n, m=m, aux=aux)

    case = random_case(rng, label, lanes, shape=shape, group=group)
    ins = case.ins
    func, m, n = MiscFunc(ins.func), ins.m, ins.n
    a_buf, d_buf = Buffer(ins.a_buf), Buffer(ins.d_buf)
    fields = {k: v for k, v in ins.values.items() if k not in ("opcode", "nbind")}
    a_addr, a_stride = _place(rng, core, a_buf, 0, m, n * ELEMENT_BYTES[a_buf])
    _write(core, a_buf, a_addr, a_stride, case.a)
    count = -(-n // 16) * 16 if func == MiscFunc.SOFTMAX else n
    same_size = ELEMENT_BYTES[a_buf] == ELEMENT_BYTES[d_buf] and a_buf == d_buf
    if in_place and same_size and func != MiscFunc.SOFTMAX:
        d_addr, d_stride = a_addr, a_stride
    else:
        d_addr, d_stride = _place(rng, core, d_buf, 2, m, count * ELEMENT_BYTES[d_buf])
    fields.update(a_addr=a_addr, a_stride=a_stride, d_addr=d_addr, d_stride=d_stride)
    if case.b is not None:
        b_buf = Buffer(ins.b_buf)
        b_addr, b_stride = _place(rng, core, b_buf, 1, m, case.b.shape[1] * ELEMENT_BYTES[b_buf])
        _write(core, b_buf, b_addr, b_stride, case.b)
        fields.update(b_addr=b_addr, b_stride=b_stride)
    if ins.defer:
        b_addr, b_stride = _place(rng, core, Buffer.RBUF, 1, m, 4)
        fields.update(b_addr=b_addr, b_stride=b_stride)
    lo, size = _region(core, Buffer.PBUF, 3)
    if func in (MiscFunc.RMSNORM, MiscFunc.LAYERNORM):
        blob = pack_norm_params(case.params[0, :, 0], case.params[0, :, 1] if ins.beta
                                else None)
        p_addr = lo + 2 * int(rng.integers(0, (size - len(blob)) // 2))
        core.write_bytes(Buffer.PBUF, p_addr, np.frombuffer(blob, np.uint8), "tb")
        fields.update(p_addr=p_addr)
    if func == MiscFunc.ROPE:
        g, half = ins.group, ins.group // 2
        pos = np.arange(n) % g
        pair = pos // 2 if ins.interleaved else pos % half
        first = [int(np.flatnonzero(pair == k)[0]) for k in range(half)]
        cos = case.params[:, first, 0]
        sin = case.params[:, first, 1]
        blob = np.frombuffer(pack_rope_rows(cos, sin), np.uint8)
        p_stride = 2 * g + int(rng.integers(0, 5))
        p_addr = lo + int(rng.integers(0, size - m * p_stride))
        for r in range(m):
            core.write_bytes(Buffer.PBUF, p_addr + r * p_stride, blob[r * 2 * g:(r + 1) * 2 * g],
                             "tb")
        fields.update(p_addr=p_addr, p_stride=p_stride)
    return Instruction(Opcode.MISC, **fields)
