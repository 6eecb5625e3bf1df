"""What memory an instruction may read and write: the hazard side of the ISA's semantics.

Every access is a conservative byte interval in a *space*: an on-chip buffer of the core, or
one HBM channel (core-local numbering; cores own disjoint channels). Bound fields are taken at
their largest values: a COUNT binding at its static cap, an OFFSET binding at the offset the
largest register values in ``max_regs`` give. Strided transfers are covered by their bounding
interval. Over-approximation only adds ordering, never removes it, so the compiler's token
scheduler (compiler/schedule.py) stays correct; the functions mirror sim/execute.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from flightllm.contract.isa import (
    BindKind, Buffer, Instruction, LengthReg, MiscFunc, Opcode, OutMode, SysOp, WeightBits,
)
from flightllm.contract.params import REQUANT_RECORD_BYTES, norm_beta_offset
from flightllm.contract.weights import block_bytes, code_table_bytes
from flightllm.sim.machine import ELEMENT_BYTES

__all__ = ["Access", "footprint", "widest"]


@dataclass(frozen=True)
class Access:
    """A byte interval [start, end) of ``space`` ("ABUF", ..., or ("HBM", channel))."""

    space: object
    start: int
    end: int
    write: bool

    def overlaps(self, other: Access) -> bool:
        return self.space == other.space and self.start < other.end and other.start < self.end


def widest(ins: Instruction, max_regs: Mapping[LengthReg, int]) -> Instruction:
    """The instruction with every binding resolved to its widest extent."""
    if not ins.bindings:
        return ins
    values = dict(ins.values)
    for b in ins.bindings:
        if b.kind == BindKind.OFFSET:
            values[b.field] += max(int(max_regs[b.reg]) - b.base, 0) << b.shift
        # COUNT bindings only ever lower a field: the static value is the widest.
    fields = {k: v for k, v in values.items() if k not in ("opcode", "nbind")}
    return Instruction(ins.op, **fields)


def _rows(start: int, stride: int, rows: int, row_bytes: int) -> tuple[int, int]:
    if rows <= 0 or row_bytes <= 0:
        return start, start
    return start, start + (rows - 1) * stride + row_bytes


def _acc(space, span, write=False) -> list[Access]:
    start, end = span
    return [Access(space, start, end, write)] if end > start else []


def footprint(ins: Instruction, max_regs: Mapping[LengthReg, int]) -> list[Access]:
    """Conservative accesses of one instruction (bindings at their widest)."""
    ins = widest(ins, max_regs)
    op = ins.op
    if op in (Opcode.LD, Opcode.ST):
        return _transfer(ins)
    if op in (Opcode.MM, Opcode.MV):
        return _matrix(ins)
    if op == Opcode.MISC:
        return _misc(ins)
    if ins.sync_op == SysOp.GATHER:
        # Other cores' slices land anywhere in the buffer: order it against all its users.
        buf = Buffer(ins.buf).name
        return [Access(buf, 0, 1 << 24, False), Access(buf, 0, 1 << 24, True)]
    return []


def _transfer(ins: Instruction) -> list[Access]:
    load = ins.op == Opcode.LD
    nch = max(ins.nch, 1) if load else 1
    if not ins.n1 or not ins.n2 or not ins.len:
        return []
    hbm_end = ins.hbm_addr + (ins.n2 - 1) * ins.hbm_stride2 + (ins.n1 - 1) * ins.hbm_stride1 \
        + ins.len
    buf_end = ins.buf_addr + (ins.n2 - 1) * ins.buf_stride2 + (ins.n1 - 1) * ins.buf_stride1 \
        + ins.len + (nch - 1) * (ins.ch_stride if load else 0)
    buf = Buffer(ins.buf).name
    out = _acc(buf, (ins.buf_addr, buf_end), write=load)
    for c in range(nch):
        out += _acc(("HBM", ins.chan + c), (ins.hbm_addr, hbm_end), write=not load)
    return out


def _matrix(ins: Instruction) -> list[Access]:
    mv = ins.op == Opcode.MV
    rows = 1 if mv else ins.m_rows
    if rows == 0 or ins.n_strips == 0:
        return []
    bits = WeightBits(ins.wbits).bits
    strip = code_table_bytes(ins.k_blocks, bool(ins.sparse)) + ins.k_blocks * block_bytes(
        16, bits, bool(ins.gscale))  # the densest strip bounds every sparse one
    w_end = (ins.w_addr + (ins.n_strips - 1) * ins.w_stride + strip if ins.w_stride
             else ins.w_addr + ins.n_strips * strip)
    n_out, k = 16 * ins.n_strips, 16 * ins.k_blocks
    out = _acc("WBUF", (ins.w_addr, w_end))
    out += _acc("ABUF", _rows(ins.x_addr, 0 if mv else ins.x_stride, rows, k))
    if ins.psum:
        out += _acc("RBUF", _rows(ins.psum_addr, 0 if mv else ins.psum_stride, rows, 4 * n_out))
    mode = OutMode(ins.out_mode)
    sum_rows = not mv and ins.sum_rows
    if mode != OutMode.ACC32:
        nrec = 1 if ins.p_uniform else n_out
        for start in (ins.p_addr, ins.p_addr + ins.p_stride) if sum_rows else (ins.p_addr,):
            # sum_rows: a record set per row
            out += _acc("PBUF", (start, start + nrec * REQUANT_RECORD_BYTES))
    esize = 1 if mode == OutMode.Q8 else 4
    # sum_rows writes (and reads the residual of) the first row only.
    span = _rows(ins.out_addr, 0 if mv else ins.out_stride, 1 if sum_rows else rows,
                 esize * n_out)
    space = "ABUF" if mode == OutMode.Q8 else "RBUF"
    if ins.residual:
        out += _acc(space, span)
    return out + _acc(space, span, write=True)


def _misc(ins: Instruction) -> list[Access]:
    func, m, n = MiscFunc(ins.func), ins.m, ins.n
    if m == 0 or n == 0:
        return []
    a, b, d = Buffer(ins.a_buf), Buffer(ins.b_buf), Buffer(ins.d_buf)
    out = []
    if func != MiscFunc.FILL:
        out += _acc(a.name, _rows(ins.a_addr, ins.a_stride, m, n * ELEMENT_BYTES[a]))
    if func == MiscFunc.ADD or (func == MiscFunc.MUL and not ins.rowscalar):
        out += _acc(b.name, _rows(ins.b_addr, ins.b_stride, m, n * ELEMENT_BYTES[b]))
    if func == MiscFunc.MUL and ins.rowscalar:
        out += _acc(b.name, _rows(ins.b_addr, ins.b_stride, m, ELEMENT_BYTES[b]))
    if func in (MiscFunc.RMSNORM, MiscFunc.LAYERNORM):
        end = ins.p_addr + (norm_beta_offset(n) + 4 * n if ins.beta else 2 * n)
        out += _acc("PBUF", (ins.p_addr, end))
    if func == MiscFunc.ROPE:
        out += _acc("PBUF", _rows(ins.p_addr, ins.p_stride, m, 2 * ins.group))
    width = n
    if func == MiscFunc.SOFTMAX:
        width = -(-n // 16) * 16  # zero-filled to the next 16 columns
        if ins.defer:
            out += _acc("RBUF", _rows(ins.b_addr, ins.b_stride, m, 4), write=True)
    dsize = ELEMENT_BYTES[a] if func == MiscFunc.COPY else ELEMENT_BYTES[d]
    return out + _acc(d.name, _rows(ins.d_addr, ins.d_stride, m, width * dsize), write=True)
