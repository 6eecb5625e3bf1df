"""The misc unit: executes MISC instructions on a core's buffers, with the
:class:`~flightllm.hw.sfu.SFU` for the arithmetic.

One instruction at a time. Per instruction:

1. **Check** the fields as ``sim/execute.py``'s ``exec_misc`` does: ``m = 0`` or ``n = 0``
   finishes at once; a function or buffer the operation does not allow, a bad RoPE group, a
   negative norm epsilon, or a row longer than the SFU's row buffer (a hardware limit:
   ``max_row`` elements for SOFTMAX, the norms and ROPE; ``max_group`` for a RoPE group) is
   ``DECODE``; an operand past its buffer's end or a misaligned RBUF or gain address is
   ``ADDRESS``. An error finishes the instruction without touching the buffers.
2. **Move** the rows. Row ``i`` of an operand is ``nbytes`` bytes at ``addr + i * stride``; each
   stream has its own :class:`~flightllm.hw.row_stream.ByteReader`, so any byte alignment runs
   at one chunk per cycle:

   * COPY: the source rows (bytes of ``a_buf``'s element size) in ``min(buffer width)``-byte
     chunks, written unchanged to ``d_buf``; FILL: chunks of the value saturated to
     ``d_buf``'s element type (WBUF and PBUF keep its low byte). Neither uses the SFU.
   * SFU functions: ``a`` (and ``b`` for ADD/MUL; one element per row for MUL ``rowscalar``)
     in beats of ``sfu_lanes`` elements, INT8 sign-extended from ABUF or INT32 from RBUF;
     the norms' gains and biases re-read from PBUF for every row; ROPE's table row ``i``
     (``2 * group`` bytes at ``p_addr + i * p_stride``) loaded into a register table, from
     which each lane picks the cos and sin of its pair.
3. **Write** each result row at ``d_addr + i * d_stride`` (SOFTMAX rows zero-filled to a multiple
   of 16 elements), the deferred SOFTMAX's reciprocals as INT32 at ``b_addr + i * b_stride``.

``done`` pulses once the last write was accepted by the buffer's arbiter. The next instruction
starts after that. Within one instruction a result row may overwrite its own source row (in
place), not a later row's source.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract import numerics as nm
from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import OPCODES, Buffer, MiscFunc, Opcode
from flightllm.contract.regmap import ErrorCode

from .bufport import buffer_clients, shared_spec, width_groups
from .isa_layouts import field_shape, instruction_layout
from .row_stream import ADDR_BITS, ByteReader, ChunkWriter, PortMux, route_writes
from .sfu import COMMAND_FIELDS, SFU

__all__ = ["MiscUnit"]

_SPEC = OPCODES[Opcode.MISC]
_INS = data.StructLayout({f.name: field_shape(f) for f in _SPEC.fields})
_BUFS = (Buffer.ABUF, Buffer.WBUF, Buffer.RBUF, Buffer.PBUF)
_ROW_FUNCS = (MiscFunc.SOFTMAX, MiscFunc.RMSNORM, MiscFunc.LAYERNORM, MiscFunc.ROPE)


def _is(value, choices):
    return Cat(value == c for c in choices).any()


def _es(buf):
    """Element bytes of a buffer field (RBUF: 4, the others 1)."""
    return Mux(buf == Buffer.RBUF, 4, 1)


class _Rows:
    """Segments ``{base + i * stride, nbytes}`` for rows ``i = 0 .. rows - 1`` into a reader."""

    def __init__(self, m, name, cmd, *, start, enable, base, stride, nbytes, rows):
        i = Signal(16, name=f"{name}_row")
        addr = Signal(ADDR_BITS, name=f"{name}_addr")
        with m.If(start):
            m.d.sync += [i.eq(0), addr.eq(base)]
        m.d.comb += [cmd.valid.eq(enable & (i < rows)), cmd.payload.addr.eq(addr),
                     cmd.payload.nbytes.eq(nbytes)]
        with m.If(cmd.valid & cmd.ready):
            m.d.sync += [i.eq(i + 1), addr.eq(addr + stride)]


class MiscUnit(wiring.Component):
    """Executes MISC instructions (module docstring).

    Args:
        config: the accelerator configuration (buffers, ``sfu_lanes``).
        max_row: the SFU's row buffer, in elements.
        max_group: largest RoPE group (head dimension) the table holds; a multiple of the lanes.

    Ports:
        cmd (In stream of the MISC instruction layout, bindings applied); done (Out 1, one-cycle
        pulse); busy (Out 1); error (Out 3, a sticky :class:`~flightllm.contract.regmap.
        ErrorCode`); abuf, wbuf, rbuf, pbuf (row clients).
    """

    def __init__(self, config: AcceleratorConfig, *, max_row: int = 4096, max_group: int = 256):
        lanes = config.sfu_lanes
        widths = [config.buffer(b.name.lower()).width for b in _BUFS]
        if 4 * lanes > min(widths):
            raise ValueError(f"the misc unit needs 4 * sfu_lanes = {4 * lanes} bytes <= the "
                             f"narrowest buffer ({min(widths)} bytes)")
        if not isinstance(max_group, int) or max_group < lanes or max_group % lanes:
            raise ValueError(f"max_group must be a multiple of sfu_lanes = {lanes}, not "
                             f"{max_group!r}")
        self.config, self.lanes = config, lanes
        self.max_row, self.max_group = max_row, max_group
        if (not isinstance(max_row, int) or max_row < 2 * lanes or max_row % lanes
                or max_row > 1 << 16):
            raise ValueError(f"max_row must be a multiple of sfu_lanes = {lanes} in "
                             f"[{2 * lanes}, 65536], not {max_row!r}")
        self.copy_chunk = min(widths)
        super().__init__({
            "cmd": In(stream.Signature(instruction_layout(Opcode.MISC))),
            "done": Out(1), "busy": Out(1), "error": Out(3),
            **buffer_clients(config),
        })

    def _make_sfu(self):
        """The SFU this unit drives (the resource estimate measures the unit with a black box
        here, the SFU being measured on its own)."""
        return SFU(self.config, max_row=self.max_row)

    def elaborate(self, platform):
        m = Module()
        cfg, L, Cc = self.config, self.lanes, self.copy_chunk
        spec = {b: cfg.buffer(b.name.lower()) for b in _BUFS}
        # Built here, not in __init__, so that an unelaborated unit leaves no unused SFU.
        m.submodules.sfu = sfu = self.sfu = self._make_sfu()
        ins = Signal(_INS)
        func = ins.func

        # ---- readers and writers, one multiplexer per buffer
        # RBUF operands are 4-byte aligned (addresses and strides are checked above) and norm
        # parameters 2-byte aligned: their readers realign whole words, not bytes.
        copy_rd = {b: ByteReader(spec[b], Cc, align=4 if b == Buffer.RBUF else 1)
                   for b in _BUFS}
        a_rd = {Buffer.ABUF: ByteReader(spec[Buffer.ABUF], L),
                Buffer.RBUF: ByteReader(spec[Buffer.RBUF], 4 * L, align=4)}
        b_rd = {Buffer.ABUF: ByteReader(spec[Buffer.ABUF], L),
                Buffer.RBUF: ByteReader(spec[Buffer.RBUF], 4 * L, align=4)}
        gamma_rd = ByteReader(spec[Buffer.PBUF], 2 * L, align=2)
        beta_rd = ByteReader(spec[Buffer.PBUF], 4 * L, align=2)
        table_rd = ByteReader(spec[Buffer.PBUF], 2 * L)
        # Results go to one buffer at a time: one writer (a row-wide shifter) per row width,
        # buffer b its dest out_dest[b] and the writer slot slots[wr][out_dest[b]].
        out_wr, out_dest, slots = {}, {}, {}
        for group in width_groups(cfg):
            wr = ChunkWriter(shared_spec(spec[b] for b in group), Cc, dests=len(group))
            m.submodules["out_wr_" + "_".join(b.name.lower() for b in group)] = wr
            slots[wr] = [None] * len(group)
            for k, b in enumerate(group):
                out_wr[b], out_dest[b] = wr, k
        recip_wr = ChunkWriter(spec[Buffer.RBUF], 4)
        plan = {
            Buffer.ABUF: ([a_rd[Buffer.ABUF], b_rd[Buffer.ABUF], copy_rd[Buffer.ABUF]],
                          [out_wr[Buffer.ABUF]]),
            Buffer.WBUF: ([copy_rd[Buffer.WBUF]], [out_wr[Buffer.WBUF]]),
            Buffer.RBUF: ([a_rd[Buffer.RBUF], b_rd[Buffer.RBUF], copy_rd[Buffer.RBUF]],
                          [out_wr[Buffer.RBUF], recip_wr]),
            Buffer.PBUF: ([copy_rd[Buffer.PBUF], gamma_rd, beta_rd, table_rd],
                          [out_wr[Buffer.PBUF]]),
        }
        for b, (readers, writers) in plan.items():
            name = b.name.lower()
            mux = PortMux(spec[b], len(readers), writers=len(writers))
            m.submodules[f"{name}_mux"] = mux
            for i, rd in enumerate(readers):
                m.submodules[f"{name}_rd{i}"] = rd
                wiring.connect(m, rd.req, mux.readers[i].req)
                wiring.connect(m, rd.rsp, mux.readers[i].rsp)
            for i, wr in enumerate(writers):
                if wr is out_wr[b]:
                    slots[wr][out_dest[b]] = mux.writers[i]
                else:
                    m.submodules[f"{name}_wr{i}"] = wr
                    wiring.connect(m, wr.req, mux.writers[i])
            wiring.connect(m, mux.port, wiring.flipped(getattr(self, name)))
        for wr, wr_slots in slots.items():
            route_writes(m, wr, wr_slots)

        # ---- derived values
        n, rows = ins.n, ins.m
        es_a, es_b, es_d = _es(ins.a_buf), _es(ins.b_buf), _es(ins.d_buf)
        is_copy, is_fill = func == MiscFunc.COPY, func == MiscFunc.FILL
        is_sm = func == MiscFunc.SOFTMAX
        is_norm = _is(func, (MiscFunc.RMSNORM, MiscFunc.LAYERNORM))
        is_rope = func == MiscFunc.ROPE
        uses_b = _is(func, (MiscFunc.ADD, MiscFunc.MUL))
        deferred = is_sm & ins.defer
        scalar_b = (func == MiscFunc.MUL) & ins.rowscalar
        padded = Signal(17)
        m.d.comb += padded.eq(Mux(is_sm, (n + 15) >> 4 << 4, n))
        a_len = Signal(24)
        b_len = Signal(24)
        d_len = Signal(24)
        beta_off = Signal(24)
        half = ins.group >> 1

        error_now = Signal(3)
        with m.If((self.error == 0) & (error_now != 0)):
            m.d.sync += self.error.eq(error_now)
        start = Signal()
        running = Signal()
        ends = {k: Signal(ADDR_BITS + 18, name=f"{k}_end")
                for k in ("a", "b", "d", "gamma", "beta", "table", "recip")}

        def extent(base, stride, nbytes):
            return base + (rows - 1) * stride + nbytes

        sfu_func = ~is_copy & ~is_fill
        bad_buf = lambda b: ~_is(b, (Buffer.ABUF, Buffer.RBUF))    # noqa: E731
        decode_bad = (
            (func > MiscFunc.ROPE)
            | (sfu_func & (bad_buf(ins.a_buf) | bad_buf(ins.d_buf)))
            | (uses_b & bad_buf(ins.b_buf))
            | (deferred & (ins.b_buf != Buffer.RBUF))
            | (is_norm & ((ins.aux < 0) | (n > nm.MAX_NORM_ELEMENTS)))
            | (is_rope & ((ins.group == 0) | ins.group[0] | (ins.group > self.max_group)))
            | (_is(func, _ROW_FUNCS) & (n > self.max_row)))
        rope_mod = Signal(16)      # n mod group, found by the setup loop below

        def misaligned(buf, addr, stride):
            return (buf == Buffer.RBUF) & ((addr[:2] != 0) | ((rows > 1) & (stride[:2] != 0)))

        reads_a = ~is_fill
        addr_bad = (
            (reads_a & (ends["a"] > self._bytes(ins.a_buf)))
            | (ends["d"] > self._bytes(ins.d_buf))
            | (uses_b & (ends["b"] > self._bytes(ins.b_buf)))
            | (deferred & (ends["recip"] > cfg.rbuf.bytes))
            | (is_norm & ((ins.p_addr[0] != 0) | (ends["gamma"] > cfg.pbuf.bytes)
                          | (ins.beta & (ends["beta"] > cfg.pbuf.bytes))))
            | (is_rope & (ends["table"] > cfg.pbuf.bytes))
            | (reads_a & misaligned(ins.a_buf, ins.a_addr, ins.a_stride))
            | misaligned(ins.d_buf, ins.d_addr, ins.d_stride)
            | ((uses_b | deferred) & misaligned(ins.b_buf, ins.b_addr, ins.b_stride)))

        setup_count = Signal(range(L + 2))
        pos_init = [Signal(16, name=f"pos_init{i}") for i in range(L)]
        lanes_mod = Signal(16)           # L mod group
        finished = Signal()

        with m.FSM(name="misc") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    for f in _SPEC.fields:
                        m.d.sync += getattr(ins, f.name).eq(getattr(self.cmd.payload, f.name))
                    m.next = "PREP"
            with m.State("PREP"):
                m.d.sync += [
                    a_len.eq(n * es_a), b_len.eq(Mux(scalar_b, 1, n) * es_b),
                    d_len.eq(Mux(is_copy, n * es_a, padded * es_d)),
                    beta_off.eq(((2 * n + 3) >> 2) << 2),
                    rope_mod.eq(n), setup_count.eq(0), lanes_mod.eq(L),
                ]
                m.d.sync += [pos_init[i].eq(i) for i in range(L)]
                m.next = "EXTENT"
            with m.State("EXTENT"):
                m.d.sync += [
                    ends["a"].eq(extent(ins.a_addr, ins.a_stride, a_len)),
                    ends["b"].eq(extent(ins.b_addr, ins.b_stride, b_len)),
                    ends["d"].eq(extent(ins.d_addr, ins.d_stride, d_len)),
                    ends["gamma"].eq(ins.p_addr + 2 * n),
                    ends["beta"].eq(ins.p_addr + beta_off + 4 * n),
                    ends["table"].eq(extent(ins.p_addr, ins.p_stride, 2 * ins.group)),
                    ends["recip"].eq(extent(ins.b_addr, ins.b_stride, 4)),
                ]
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If((rows == 0) | (n == 0)):
                    m.next = "DONE"
                with m.Elif(decode_bad):
                    m.d.comb += error_now.eq(ErrorCode.DECODE)
                    m.next = "DONE"
                with m.Elif(addr_bad):
                    m.d.comb += error_now.eq(ErrorCode.ADDRESS)
                    m.next = "DONE"
                with m.Elif(is_rope):
                    m.next = "ROPE_SETUP"
                with m.Else():
                    m.next = "START"
            with m.State("ROPE_SETUP"):
                # Every lane's column mod group, L mod group and n mod group by subtraction
                # (lanes <= max_group, n <= max_row: the n loop may take longer; it is
                # one instruction's setup, bounded by n / group cycles).
                g = ins.group
                for i in range(L):
                    with m.If(pos_init[i] >= g):
                        m.d.sync += pos_init[i].eq(pos_init[i] - g)
                with m.If(lanes_mod >= g):
                    m.d.sync += lanes_mod.eq(lanes_mod - g)
                with m.If(rope_mod >= g):
                    m.d.sync += rope_mod.eq(rope_mod - g)
                with m.Elif(rope_mod != 0):
                    m.d.comb += error_now.eq(ErrorCode.DECODE)     # n % group != 0
                    m.next = "DONE"
                with m.Elif((lanes_mod < g) & Cat(p < g for p in pos_init).all()):
                    m.next = "START"
            with m.State("START"):
                m.d.comb += start.eq(1)
                m.next = "SFU_CMD"
            with m.State("SFU_CMD"):
                m.d.comb += sfu.cmd.valid.eq(sfu_func)
                with m.If(~sfu_func | sfu.cmd.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(finished):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")),
                     running.eq(fsm.ongoing("SFU_CMD") | fsm.ongoing("RUN"))]
        for name in COMMAND_FIELDS:
            m.d.comb += getattr(sfu.cmd.payload, name).eq(getattr(ins, name))

        # ---- sources
        for b in _BUFS:
            _Rows(m, f"copy{b.name}", copy_rd[b].cmd, start=start,
                  enable=running & is_copy & (ins.a_buf == b), base=ins.a_addr,
                  stride=ins.a_stride, nbytes=a_len, rows=rows)
        for b in (Buffer.ABUF, Buffer.RBUF):
            _Rows(m, f"a{b.name}", a_rd[b].cmd, start=start,
                  enable=running & sfu_func & (ins.a_buf == b), base=ins.a_addr,
                  stride=ins.a_stride, nbytes=a_len, rows=rows)
            _Rows(m, f"b{b.name}", b_rd[b].cmd, start=start,
                  enable=running & uses_b & (ins.b_buf == b), base=ins.b_addr,
                  stride=ins.b_stride, nbytes=b_len, rows=rows)
        _Rows(m, "gamma", gamma_rd.cmd, start=start, enable=running & is_norm,
              base=ins.p_addr, stride=0, nbytes=2 * n, rows=rows)
        _Rows(m, "beta", beta_rd.cmd, start=start, enable=running & is_norm & ins.beta,
              base=ins.p_addr + beta_off, stride=0, nbytes=4 * n, rows=rows)
        _Rows(m, "table", table_rd.cmd, start=start, enable=running & is_rope,
              base=ins.p_addr, stride=ins.p_stride, nbytes=2 * ins.group, rows=rows)

        for port, readers in ((sfu.a, a_rd), (sfu.b, b_rd)):
            buf = ins.a_buf if port is sfu.a else ins.b_buf
            ra, rr = readers[Buffer.ABUF].out, readers[Buffer.RBUF].out
            from_a = buf == Buffer.ABUF
            m.d.comb += [port.valid.eq(Mux(from_a, ra.valid, rr.valid)),
                         ra.ready.eq(from_a & port.ready), rr.ready.eq(~from_a & port.ready)]
            for i in range(L):
                byte = ra.payload.data[8 * i:8 * i + 8].as_signed()
                word = rr.payload.data[32 * i:32 * i + 32].as_signed()
                m.d.comb += port.payload[i].eq(Mux(from_a, byte, word))

        self._params(m, ins, start, is_norm, is_rope, half, gamma_rd, beta_rd, table_rd,
                     pos_init, lanes_mod)

        # ---- results: one chunk stream, one address walk, to d_buf's writer
        chunk_valid = Signal()
        chunk_data = Signal(8 * Cc)
        chunk_ready = Signal()
        step = Signal(range(Cc + 1))
        with m.If(is_copy):
            for b in _BUFS:
                with m.If(ins.a_buf == b):
                    m.d.comb += [chunk_valid.eq(copy_rd[b].out.valid),
                                 chunk_data.eq(copy_rd[b].out.payload.data),
                                 copy_rd[b].out.ready.eq(chunk_ready)]
            m.d.comb += step.eq(Cc)
        with m.Elif(is_fill):
            value = ins.aux
            byte = Mux(ins.d_buf == Buffer.ABUF,
                       Mux(value > 127, 127, Mux(value < -128, -128, value)), value)[:8]
            m.d.comb += [chunk_valid.eq(running),
                         chunk_data.eq(Mux(ins.d_buf == Buffer.RBUF,
                                           Cat(value[:32] for _ in range(Cc // 4)),
                                           Cat(byte for _ in range(Cc)))),
                         step.eq(Cc)]
        with m.Else():
            y = sfu.out.payload.y
            m.d.comb += [chunk_valid.eq(sfu.out.valid), sfu.out.ready.eq(chunk_ready),
                         chunk_data.eq(Mux(ins.d_buf == Buffer.RBUF,
                                           Cat(y[i] for i in range(L)),
                                           Cat(y[i][:8] for i in range(L)))),
                         step.eq(Mux(ins.d_buf == Buffer.RBUF, 4 * L, L))]

        row = Signal(16)
        row_base = Signal(ADDR_BITS)
        addr = Signal(ADDR_BITS)
        left = Signal(24)                 # bytes of the row still to write
        with m.If(start):
            m.d.sync += [row.eq(0), row_base.eq(ins.d_addr), addr.eq(ins.d_addr),
                         left.eq(d_len)]
        more = running & (row < rows)
        nbytes = Mux(left < step, left, step)
        for wr in slots:
            m.d.comb += [wr.cmd.payload.addr.eq(addr), wr.cmd.payload.data.eq(chunk_data),
                         wr.cmd.payload.nbytes.eq(nbytes)]
        for b in _BUFS:
            wr = out_wr[b]
            with m.If(ins.d_buf == b):
                m.d.comb += [wr.cmd.valid.eq(more & chunk_valid), wr.dest.eq(out_dest[b]),
                             chunk_ready.eq(more & wr.cmd.ready)]
        with m.If(chunk_valid & chunk_ready):
            m.d.sync += [addr.eq(addr + step), left.eq(left - step)]
            with m.If(left <= step):
                m.d.sync += [row.eq(row + 1), row_base.eq(row_base + ins.d_stride),
                             addr.eq(row_base + ins.d_stride), left.eq(d_len)]

        # Deferred SOFTMAX reciprocals.
        r_row = Signal(16)
        r_addr = Signal(ADDR_BITS)
        with m.If(start):
            m.d.sync += [r_row.eq(0), r_addr.eq(ins.b_addr)]
        m.d.comb += [recip_wr.cmd.valid.eq(sfu.recip.valid), recip_wr.cmd.payload.addr.eq(r_addr),
                     recip_wr.cmd.payload.data.eq(sfu.recip.payload),
                     recip_wr.cmd.payload.nbytes.eq(4), sfu.recip.ready.eq(recip_wr.cmd.ready)]
        with m.If(sfu.recip.valid & sfu.recip.ready):
            m.d.sync += [r_row.eq(r_row + 1), r_addr.eq(r_addr + ins.b_stride)]
        idle = Cat(w.idle for w in (*slots, recip_wr)).all()
        m.d.comb += finished.eq(fsm.ongoing("RUN") & (row == rows)
                                & (~deferred | (r_row == rows)) & idle)
        return m

    def _bytes(self, buf):
        sizes = [self.config.buffer(b.name.lower()).bytes for b in _BUFS]
        return Array(Const(s, ADDR_BITS + 1) for s in sizes)[buf]

    # ------------------------------------------------------------------ p stream
    def _params(self, m, ins, start, is_norm, is_rope, half, gamma_rd, beta_rd, table_rd,
                pos_init, lanes_mod):
        sfu, L, G = self.sfu, self.lanes, self.max_group
        p = sfu.p
        g_out, b_out = gamma_rd.out, beta_rd.out
        # Norms: gains (and biases) per element, re-read for every row.
        with m.If(is_norm):
            with_beta = ins.beta
            m.d.comb += [p.valid.eq(g_out.valid & (b_out.valid | ~with_beta)),
                         g_out.ready.eq(p.valid & p.ready),
                         b_out.ready.eq(p.valid & p.ready & with_beta)]
            for i in range(L):
                m.d.comb += [p.payload.p0[i].eq(g_out.payload.data[16 * i:16 * i + 16]
                                                .as_signed()),
                             p.payload.p1[i].eq(Mux(with_beta, b_out.payload.data[
                                 32 * i:32 * i + 32].as_signed(), 0))]

        # ROPE: load the row's table, then one parameter beat per data beat of the row.
        table = Signal(16 * G)
        t_idx = Signal(range(G // L + 1))
        loaded = Signal()
        beats_left = Signal(17)
        pos = [Signal(16, name=f"rope_pos{i}") for i in range(L)]
        nb = (ins.n + L - 1) >> (L.bit_length() - 1)
        m.d.comb += table_rd.out.ready.eq(~loaded)
        with m.If(table_rd.out.valid & ~loaded):
            m.d.sync += [table.word_select(t_idx, 16 * L).eq(table_rd.out.payload.data),
                         t_idx.eq(t_idx + 1)]
            with m.If(table_rd.out.payload.last):
                m.d.sync += [loaded.eq(1), t_idx.eq(0), beats_left.eq(nb)]
                m.d.sync += [pos[i].eq(pos_init[i]) for i in range(L)]
        with m.If(start):
            m.d.sync += [loaded.eq(0), t_idx.eq(0)]
        with m.If(is_rope):
            m.d.comb += p.valid.eq(loaded)
            for i in range(L):
                pair = Signal(16, name=f"rope_pair{i}")
                m.d.comb += pair.eq(Mux(ins.interleaved, pos[i] >> 1,
                                        Mux(pos[i] < half, pos[i], pos[i] - half)))
                m.d.comb += [p.payload.p0[i].eq(table.word_select(pair[:(G - 1).bit_length()],
                                                                  16).as_signed()),
                             p.payload.p1[i].eq(table.word_select(
                                 (pair + half)[:(G - 1).bit_length()], 16).as_signed())]
            with m.If(p.valid & p.ready):
                m.d.sync += beats_left.eq(beats_left - 1)
                for i in range(L):
                    stepped = pos[i] + lanes_mod
                    m.d.sync += pos[i].eq(Mux(stepped >= ins.group, stepped - ins.group,
                                              stepped))
                with m.If(beats_left == 1):
                    m.d.sync += loaded.eq(0)
