"""What each instruction does to the machine state: one function per opcode.

These functions are the executable definition of the ISA's semantics (docs/isa.md describes
the fields; contract/numerics.py the arithmetic). They take an instruction whose bindings are
already resolved, the core's state, and a :class:`Counters` to add to. Bad field values raise
:class:`~flightllm.sim.machine.ProgramError` naming the instruction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from flightllm.contract import numerics as nm
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, OutMode, WeightBits
from flightllm.contract.params import REQUANT_RECORD_BYTES, norm_beta_offset, unpack_requant_records
from flightllm.contract.weights import (
    WORD_BYTES, WeightFormatError, block_sparsity, unpack_matrix,
)
from flightllm.sim.hbm import HBM, HBMError
from flightllm.sim.machine import ELEMENT_BYTES, CoreBuffers, ProgramError, check_size
from flightllm.sim.speed import (
    WEIGHT_CACHE, DecodedWeights, WeightCache, blas_threads, exact_matmul,
)

__all__ = ["Counters", "exec_transfer", "exec_matrix", "exec_misc", "WeightCache", "WEIGHT_CACHE",
           "blas_threads"]


@dataclass
class Counters:
    """What the performance model needs from a functional run.

    Attributes:
        instructions: executed instructions by opcode name.
        hbm_read_bytes / hbm_write_bytes: bytes by physical HBM channel.
        macs_dense: multiply-accumulates of the dense-equivalent matrix work.
        macs_stored: multiply-accumulates on stored (non-pruned) weights: what the DSPs do.
        weight_stream_bytes: WBUF bytes the matrix engines consumed.
        sfu_elements: elements processed by the special-function unit, by function name.
    """

    instructions: Counter = field(default_factory=Counter)
    hbm_read_bytes: Counter = field(default_factory=Counter)
    hbm_write_bytes: Counter = field(default_factory=Counter)
    macs_dense: int = 0
    macs_stored: int = 0
    weight_stream_bytes: int = 0
    sfu_elements: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "instructions": dict(sorted(self.instructions.items())),
            "hbm_read_bytes": {int(k): v for k, v in sorted(self.hbm_read_bytes.items())},
            "hbm_write_bytes": {int(k): v for k, v in sorted(self.hbm_write_bytes.items())},
            "macs_dense": self.macs_dense, "macs_stored": self.macs_stored,
            "weight_stream_bytes": self.weight_stream_bytes,
            "sfu_elements": dict(sorted(self.sfu_elements.items())),
        }


# --------------------------------------------------------------------------- LD / ST
#: Python-level transfer loop iterations one LD/ST may ask of the golden model.
MAX_TRANSFERS = 1 << 18


def _tile_transpose(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, 16, 16).transpose(0, 2, 1).ravel()


def exec_transfer(ins: Instruction, core: CoreBuffers, hbm: HBM, channel_base: int,
                  channels: int, counters: Counters, where: str) -> None:
    """LD (HBM -> buffer) or ST (buffer -> HBM) with its two loops and channel fan-out."""
    load = ins.op.name == "LD"
    nch = max(ins.nch, 1) if load else 1
    buf = Buffer(ins.buf)
    if ins.chan + nch > channels:
        raise ProgramError(f"{where}: field 'chan' = {ins.chan} (+{nch} channels) exceeds the "
                           f"core's {channels} HBM channels")
    if load and ins.transpose and ins.len % 256:
        raise ProgramError(f"{where}: field 'len' = {ins.len}: transposing loads move whole "
                           "16x16-byte tiles (a multiple of 256 bytes)")
    if ins.n1 * ins.n2 * nch > MAX_TRANSFERS:
        raise ProgramError(f"{where}: {ins.n1 * ins.n2 * nch} transfers (n1 x n2 x channels) "
                           f"exceed the golden simulator's limit of {MAX_TRANSFERS}")
    check_size(ins.n1 * ins.n2 * nch * ins.len, f"{where} bytes")
    if load and nch > 1:
        _check_channels_disjoint(ins, nch, where)
    if _transfer_fast(ins, load, nch, buf, core, hbm, channel_base, counters):
        return
    # The definition: one transfer per (o, m, channel), in this order.
    for o in range(ins.n2):
        for m in range(ins.n1):
            hbm_addr = ins.hbm_addr + o * ins.hbm_stride2 + m * ins.hbm_stride1
            buf_addr = ins.buf_addr + o * ins.buf_stride2 + m * ins.buf_stride1
            for c in range(nch):
                phys = channel_base + ins.chan + c
                dst = buf_addr + c * ins.ch_stride if load else buf_addr
                try:
                    if load:
                        data = hbm.read(phys, hbm_addr, ins.len)
                        if ins.transpose:
                            data = _tile_transpose(data)
                        core.write_bytes(buf, dst, data, where)
                        counters.hbm_read_bytes[phys] += ins.len
                    else:
                        hbm.write(phys, hbm_addr, core.read_bytes(buf, dst, ins.len, where))
                        counters.hbm_write_bytes[phys] += ins.len
                except HBMError as exc:
                    raise ProgramError(f"{where}: {exc}") from None



def _check_channels_disjoint(ins: Instruction, nch: int, where: str) -> None:
    """Raise ProgramError if an LD writes a buffer byte from two channels: the hardware may
    move the channels in different lanes, so which one lands last is not defined."""
    if ins.len == 0 or ins.n1 == 0 or ins.n2 == 0:
        return
    if ins.n1 * ins.n2 == 1 and ins.ch_stride >= ins.len:
        return
    o, m, c = np.meshgrid(np.arange(ins.n2, dtype=np.int64), np.arange(ins.n1, dtype=np.int64),
                          np.arange(nch, dtype=np.int64), indexing="ij")
    starts = (o * ins.buf_stride2 + m * ins.buf_stride1 + c * ins.ch_stride).ravel()
    chans = c.ravel()
    order = np.argsort(starts, kind="stable")
    starts, chans = starts[order], chans[order]
    ends = starts + ins.len
    # Sweep in start order: an interval that starts before the furthest end so far, and is
    # on another channel than the interval that reaches it, overlaps another channel's (the
    # first such pair in sweep order is always caught this way).
    key = ends * len(ends) + np.arange(len(ends))
    reach = np.maximum.accumulate(key)
    far_end, owner = reach[:-1] // len(ends), reach[:-1] % len(ends)
    clash = (starts[1:] < far_end) & (chans[1:] != chans[owner])
    if clash.any():
        k = int(np.flatnonzero(clash)[0]) + 1
        pair = sorted((int(chans[owner[k - 1]]), int(chans[k])))
        raise ProgramError(
            f"{where}: channels {pair[0]} and {pair[1]} both write "
            f"buffer bytes from {ins.buf_addr + int(starts[k]):#x}: an LD's channels must "
            "write disjoint bytes (the engine may move them side by side)")


def _transfer_fast(ins: Instruction, load: bool, nch: int, buf: Buffer, core: CoreBuffers, hbm,
                   channel_base: int, counters: Counters) -> bool:
    """LD/ST as a few array operations, when that provably gives what the transfer loop of
    :func:`exec_transfer` gives; False (having changed nothing) otherwise.

    Conditions: every buffer range is valid; the written ranges (buffer for LD, HBM for ST)
    are pairwise disjoint, so their order does not matter; every HBM access is valid (LD: the
    reads are done before anything is written; ST: probed at the highest end first). An
    error case always falls back to the loop, which raises exactly as before.
    """
    v = ins.values
    n1, n2, size = v["n1"], v["n2"], v["len"]
    count = n1 * n2
    if count * nch <= 2 or size == 0:
        return False  # nothing to gain
    mem = core.mem[buf]
    o = np.arange(n2, dtype=np.int64)[:, None]
    m = np.arange(n1, dtype=np.int64)[None, :]
    hbm_at = (v["hbm_addr"] + o * v["hbm_stride2"] + m * v["hbm_stride1"]).ravel()
    buf_at = (v["buf_addr"] + o * v["buf_stride2"] + m * v["buf_stride1"]).ravel()
    if load:  # [o, m, c] in loop order
        buf_at = (buf_at[:, None] + np.arange(nch, dtype=np.int64) * v["ch_stride"]).ravel()
    if buf_at.min() < 0 or buf_at.max() + size > len(mem):
        return False
    if ELEMENT_BYTES[buf] == 4 and (buf_at % 4).any():
        return False
    if load:
        if not _disjoint(buf_at, size):
            return False
        parts = []
        for c in range(nch):
            phys = channel_base + v["chan"] + c
            try:
                parts.append(_hbm_rows(hbm, phys, hbm_at, n1, n2, v["hbm_stride1"], size))
            except HBMError:
                return False
        data = np.stack(parts, axis=1)  # [o*m, c, len]
        if v["transpose"]:
            data = data.reshape(-1, 16, 16).transpose(0, 2, 1)
        _scatter(mem, buf_at, data.reshape(-1, size))
        for c in range(nch):
            counters.hbm_read_bytes[channel_base + v["chan"] + c] += count * size
        return True
    if hbm_at.min() < 0 or not _disjoint(hbm_at, size):
        return False
    phys = channel_base + v["chan"]
    try:
        hbm.read(phys, int(hbm_at.max()) + size - 1, 1)  # the highest byte written: in range?
    except HBMError:
        return False
    data = _gather(mem, buf_at, size)
    order = np.argsort(hbm_at, kind="stable")
    starts, data = hbm_at[order], data[order]
    # Runs of back-to-back ranges become one write each.
    breaks = np.flatnonzero(np.diff(starts) != size) + 1
    for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(starts)]):
        hbm.write(phys, int(starts[lo]), data[lo:hi].ravel())
    counters.hbm_write_bytes[phys] += count * size
    return True


def _gather(mem: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    """``[len(starts), size]`` bytes of ``mem`` (few or long rows by slices, else one index)."""
    if len(starts) <= 16 or size >= 256:
        return np.stack([mem[a:a + size] for a in starts.tolist()])
    return mem[starts[:, None] + np.arange(size, dtype=np.int64)]


def _scatter(mem: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
    """Write ``rows[i]`` at ``starts[i]`` (the ranges are disjoint)."""
    if len(starts) <= 16 or rows.shape[1] >= 256:
        for a, row in zip(starts.tolist(), rows):
            mem[a:a + len(row)] = row
        return
    mem[starts[:, None] + np.arange(rows.shape[1], dtype=np.int64)] = rows


def _disjoint(starts: np.ndarray, size: int) -> bool:
    s = np.sort(starts)
    return bool((np.diff(s) >= size).all())


def _hbm_rows(hbm, phys: int, hbm_at: np.ndarray, n1: int, n2: int, stride1: int,
              size: int) -> np.ndarray:
    """The ``[n2 * n1, size]`` bytes at ``hbm_at`` of one channel: one read per ``o`` when
    the rows of an ``o`` are back to back, else one per row."""
    if stride1 == size or n1 == 1:
        return np.stack([hbm.read(phys, int(hbm_at[i * n1]), n1 * size).reshape(n1, size)
                         for i in range(n2)]).reshape(-1, size)
    return np.stack([hbm.read(phys, int(a), size) for a in hbm_at])


# --------------------------------------------------------------------------- MM / MV
def _decode(ins: Instruction, core: CoreBuffers, where: str) -> DecodedWeights:
    """The instruction's weights, decoded (through :data:`WEIGHT_CACHE`)."""
    for name in ("w_addr", "w_stride"):
        if getattr(ins, name) % WORD_BYTES:
            raise ProgramError(f"{where}: field '{name}' = {getattr(ins, name):#x} is not "
                               f"{WORD_BYTES}-byte aligned (the dequantisers read "
                               f"{WORD_BYTES}-byte words)")
    check_size(256 * ins.n_strips * ins.k_blocks, f"{where} weights")
    bits = WeightBits(ins.wbits).bits
    mem = core.mem[Buffer.WBUF]
    key = WEIGHT_CACHE.key(mem, ins.w_addr, ins.n_strips, ins.k_blocks, bits, bool(ins.sparse),
                           bool(ins.gscale), ins.w_stride)
    if key is not None and (hit := WEIGHT_CACHE.get(key)) is not None:
        return hit
    entry = DecodedWeights(*_weights(ins, core, where))
    if key is not None:
        WEIGHT_CACHE.put(key, entry)
    return entry


def _weights(ins: Instruction, core: CoreBuffers, where: str) -> tuple[np.ndarray, int, int]:
    """Dequantised weights, WBUF bytes they span, and the MACs the chain spends per row."""
    bits = WeightBits(ins.wbits).bits
    args = (core.mem[Buffer.WBUF], ins.w_addr, ins.n_strips, ins.k_blocks, bits)
    kw = dict(sparse=bool(ins.sparse), gscale=bool(ins.gscale), strip_stride=ins.w_stride)
    try:
        W, span = unpack_matrix(*args, **kw)
        stored = int(block_sparsity(*args, **kw).sum()) * 16
    except WeightFormatError as exc:
        raise ProgramError(f"{where}: weights at w_addr={ins.w_addr:#x}: {exc}") from None
    return W, span, stored


def exec_matrix(ins: Instruction, core: CoreBuffers, counters: Counters, where: str) -> None:
    """MM or MV: Y = X . W^T, then partial sums, then the output stage of ``out_mode``."""
    mv = ins.op.name == "MV"
    rows = 1 if mv else ins.m_rows
    if rows == 0 or ins.n_strips == 0:
        return
    check_size(rows * 16 * ins.n_strips, f"{where} outputs")
    entry = _decode(ins, core, where)
    n_out, k = entry.w.shape
    x_stride = 0 if mv else ins.x_stride
    X = core.read_rows(Buffer.ABUF, ins.x_addr, x_stride, rows, k, f"{where} x_addr")
    acc = exact_matmul(X, entry)
    counters.macs_dense += rows * n_out * k
    counters.macs_stored += rows * entry.stored
    counters.weight_stream_bytes += entry.span
    out_stride = 0 if mv else ins.out_stride
    if ins.psum:
        acc = acc + core.read_rows(Buffer.RBUF, ins.psum_addr, 0 if mv else ins.psum_stride,
                                   rows, n_out, f"{where} psum_addr")
    mode = OutMode(ins.out_mode)
    sum_rows = not mv and ins.sum_rows
    if sum_rows:
        _check_sum_rows(ins, rows, mode, where)
    if mode == OutMode.ACC32:
        if ins.residual or ins.relu:
            raise ProgramError(f"{where}: 'residual' and 'relu' need a requantising out_mode")
        core.write_rows(Buffer.RBUF, ins.out_addr, out_stride, nm.sat32(acc), f"{where} out_addr")
        return
    nrec = 1 if ins.p_uniform else n_out
    if ins.p_addr % REQUANT_RECORD_BYTES:
        raise ProgramError(f"{where}: field 'p_addr' = {ins.p_addr:#x} is not 8-byte aligned")
    # sum_rows: row r's records at p_addr + r * p_stride; otherwise one set serves every row.
    rec_rows = [_records(core, ins.p_addr + r * (ins.p_stride if sum_rows else 0), nrec, where)
                for r in range(rows if sum_rows else 1)]
    fields = [np.stack([rec[name] for rec in rec_rows]).astype(np.int64)
              for name in ("bias", "mult", "shift")]
    y = nm.requantize(acc + fields[0], fields[1], fields[2],
                      out_bits=8 if mode == OutMode.Q8 else 32, relu=bool(ins.relu))
    if mode == OutMode.Q8:
        if ins.residual:
            raise ProgramError(f"{where}: 'residual' adds into RBUF; it needs out_mode Q32")
        core.write_rows(Buffer.ABUF, ins.out_addr, out_stride, y, f"{where} out_addr")
        return
    if sum_rows:  # the residual (or zero) plus row 0, then plus row 1, each saturated
        res = (core.read_rows(Buffer.RBUF, ins.out_addr, 0, 1, n_out, f"{where} out_addr")
               if ins.residual else 0)
        y = nm.sat32(nm.sat32(res + y[:1]) + y[1:])
    elif ins.residual:
        y = nm.sat32(y + core.read_rows(Buffer.RBUF, ins.out_addr, out_stride, rows, n_out,
                                        f"{where} out_addr"))
    core.write_rows(Buffer.RBUF, ins.out_addr, out_stride, y, f"{where} out_addr")


def _records(core: CoreBuffers, addr: int, nrec: int, where: str) -> np.ndarray:
    """``nrec`` requantisation records from PBUF at ``addr``, their shifts checked."""
    if addr % REQUANT_RECORD_BYTES:
        raise ProgramError(f"{where}: records at PBUF {addr:#x} (p_addr + row * p_stride) are "
                           "not 8-byte aligned")
    rec = unpack_requant_records(core.read_bytes(Buffer.PBUF, addr, nrec * REQUANT_RECORD_BYTES,
                                                 f"{where} p_addr"))
    if (rec["shift"] > 62).any():
        raise ProgramError(f"{where}: a requantisation record at {addr:#x} has "
                           f"shift {int(rec['shift'].max())} > 62")
    return rec


def _check_sum_rows(ins: Instruction, rows: int, mode: OutMode, where: str) -> None:
    """``sum_rows`` adds exactly two rows, requantised to INT32, with records per row."""
    if rows != 2:
        raise ProgramError(f"{where}: 'sum_rows' needs m_rows = 2, not {rows}")
    if mode != OutMode.Q32:
        raise ProgramError(f"{where}: 'sum_rows' needs out_mode Q32, not {mode.name}")
    if ins.p_uniform:
        raise ProgramError(f"{where}: 'sum_rows' takes a record set per row; p_uniform is set")


# --------------------------------------------------------------------------- MISC
_ACT = {MiscFunc.SILU: "silu", MiscFunc.GELU_TANH: "gelu_tanh", MiscFunc.GELU_ERF: "gelu_erf",
        MiscFunc.RELU: "relu"}


def exec_misc(ins: Instruction, core: CoreBuffers, counters: Counters, where: str) -> None:
    """A special-function unit operation over ``m`` rows of ``n`` elements."""
    func = MiscFunc(ins.func)
    m, n = ins.m, ins.n
    if m == 0 or n == 0:
        return
    a_buf, b_buf, d_buf = Buffer(ins.a_buf), Buffer(ins.b_buf), Buffer(ins.d_buf)
    check_size(m * max(n, ins.group), f"{where} operands")
    counters.sfu_elements[func.name] += m * n

    def src(buf, addr, stride, what, count=n):
        return core.read_rows(buf, addr, stride, m, count, f"{where} {what}")

    def dst(values, count=None):
        core.write_rows(d_buf, ins.d_addr, ins.d_stride, core.saturate(d_buf, values),
                        f"{where} d_addr")

    if func == MiscFunc.COPY:
        nbytes = n * ELEMENT_BYTES[a_buf]
        for i in range(m):
            data = core.read_bytes(a_buf, ins.a_addr + i * ins.a_stride, nbytes, f"{where} a_addr")
            core.write_bytes(d_buf, ins.d_addr + i * ins.d_stride, data, f"{where} d_addr")
        return
    if func == MiscFunc.FILL:
        return dst(np.full((m, n), ins.aux, dtype=np.int64))
    for buf, what in ((a_buf, "a_buf"), (d_buf, "d_buf")):
        if buf not in (Buffer.ABUF, Buffer.RBUF):
            raise ProgramError(f"{where}: field '{what}' = {buf.name}: {func.name} works on "
                               "ABUF (INT8) or RBUF (INT32) elements")
    a = src(a_buf, ins.a_addr, ins.a_stride, "a_addr")
    if func == MiscFunc.REQUANT:
        return dst(nm.rshift_round(a * ins.m1, ins.s1))
    if func in (MiscFunc.ADD, MiscFunc.MUL):
        if b_buf not in (Buffer.ABUF, Buffer.RBUF):
            raise ProgramError(f"{where}: field 'b_buf' = {b_buf.name}: {func.name} works on "
                               "ABUF or RBUF elements")
        if func == MiscFunc.ADD:
            b = src(b_buf, ins.b_addr, ins.b_stride, "b_addr")
            return dst(nm.add(a, b, ins.m1, ins.s1, ins.m2, ins.s2))
        b = src(b_buf, ins.b_addr, ins.b_stride, "b_addr", count=1 if ins.rowscalar else n)
        return dst(nm.mul(a, b, ins.s1, ins.m2, ins.s2))
    if func in _ACT:
        return dst(nm.activation(a, _ACT[func], ins.m1, ins.s1, ins.m2, ins.s2))
    if func == MiscFunc.SOFTMAX:
        cols = np.arange(n)[None, :]
        valid = np.ones((m, n), dtype=bool)
        if ins.causal:
            valid = cols <= ins.aux + np.arange(m)[:, None]
        if ins.defer:
            if b_buf != Buffer.RBUF:
                raise ProgramError(f"{where}: field 'b_buf' = {b_buf.name}: a deferred "
                                   "SOFTMAX writes its per-row reciprocals to RBUF")
            p, recip = nm.softmax_deferred(a, ins.m1, ins.s1, valid=valid)
            core.write_rows(Buffer.RBUF, ins.b_addr, ins.b_stride, recip, f"{where} b_addr")
        else:
            p = nm.softmax(a, ins.m1, ins.s1, valid=valid)
        padded = -(-n // 16) * 16  # zero-fill to the 16-column block the next MV reads
        out = np.zeros((m, padded), dtype=np.int64)
        out[:, :n] = p
        return dst(out)
    if func in (MiscFunc.RMSNORM, MiscFunc.LAYERNORM):
        if ins.aux < 0:
            raise ProgramError(f"{where}: field 'aux' (epsilon) = {ins.aux} is negative")
        if ins.p_addr % 2:
            raise ProgramError(f"{where}: field 'p_addr' = {ins.p_addr:#x} is not 2-byte aligned")
        raw = core.read_bytes(Buffer.PBUF, ins.p_addr, 2 * n, f"{where} p_addr (gamma)")
        gamma = raw.view("<i2").astype(np.int64)
        beta = None
        if ins.beta:
            off = ins.p_addr + norm_beta_offset(n)
            beta = core.read_bytes(Buffer.PBUF, off, 4 * n, f"{where} p_addr (beta)")
            beta = beta.view("<i4").astype(np.int64)
        fn = nm.rmsnorm if func == MiscFunc.RMSNORM else nm.layernorm
        return dst(fn(a, gamma, ins.s1, ins.aux, beta))
    if func == MiscFunc.ROPE:
        g = ins.group
        if g == 0 or g % 2 or n % g:
            raise ProgramError(f"{where}: field 'group' = {g}: must be even and divide n = {n}")
        table = np.stack([core.read_bytes(Buffer.PBUF, ins.p_addr + i * ins.p_stride, 2 * g,
                                          f"{where} p_addr (RoPE row {i})").view("<i2")
                          for i in range(m)]).astype(np.int64)
        half = g // 2
        return dst(nm.rope(a, table[:, :half], table[:, half:], ins.m1, ins.s1, group=g,
                           interleaved=bool(ins.interleaved)))
    raise AssertionError(f"unhandled MISC function {func!r}")
