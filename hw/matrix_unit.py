"""The matrix unit: executes MM and MV instructions on a core's buffers through a
:class:`~flightllm.hw.matrix_engine.MatrixEngine`.

One instruction at a time, in arrival order (MM and MV arrive on separate queues; when both
offer one in the same cycle the unit alternates). Per instruction:

1. **Check** the fields as ``sim/execute.py``'s ``exec_matrix`` does: an empty instruction
   (``n_strips = 0``, or MM with ``m_rows = 0``) finishes at once; a bad weight width, out mode,
   flag combination (``sum_rows`` without ``m_rows = 2``, Q32 and per-channel records among
   them) or ``k_blocks`` outside 1..``max_k_blocks`` is ``DECODE``; an operand that runs past
   its buffer (activations, results, partial sums, records of both rows with ``sum_rows``,
   dense weights) or a misaligned RBUF/record address or weight address (``p_stride`` not a
   multiple of 8 with ``sum_rows``; ``w_addr``, ``w_stride`` not multiples of 8) is
   ``ADDRESS``. Either error finishes the instruction without touching the engine or the
   buffers.
2. **Stream** the operands, every stream with its own :class:`~flightllm.hw.row_stream.
   ByteReader`, so that any byte alignment runs at one row per cycle (the weight readers
   take 8-byte-aligned segments only, which makes them a word select):

   * WBUF, weights: the *strip scanner* walks (group, strip) (a group is
     ``mm_pair_group`` token pairs, which share one read of the weights) and hands each strip's byte range
     to the reader of chain ``strip % chains``; dense strips have a fixed length, sparse ones
     are measured by reading their code table (the scanner's own WBUF reader) and summing the
     block sizes. With ``w_stride = 0`` the next strip starts where this one ends.
   * ABUF, activations: even token rows on one reader, odd rows on another; the engine's beat
     joins both (lane 1 is left undefined when a pair has one row).
   * PBUF, records: 128 bytes per (group, strip), or one 8-byte record with ``p_uniform``;
     with ``sum_rows`` two per strip, row 0's at ``p_addr + 128 * strip`` and row 1's
     ``p_stride`` further on; a record with ``shift > 62`` is ``DECODE``.
   * RBUF, partial sums and the residual (Q32): 64 bytes per result row, in the engine's
     (group, strip, pair, token) order; with ``sum_rows`` the residual once per strip, row
     0's.

   Readers prefetch as far as their FIFOs allow, so the next strip's and row's bytes arrive
   while the engine works.
3. **Write** each result row (16 INT8 to ABUF for Q8, 16 INT32 to RBUF otherwise) at
   ``out_addr + row * out_stride + strip * 16 * element_bytes``. With ``sum_rows`` (MM only:
   the two rows are one vector's two INT8 digits, as decode's split MLP hidden) the engine
   adds the rows' requantised results into one, ``sat32(sat32(residual + y0) + y1)``, written
   at row 0's address only; row 1's result row is left as it was. A sparse strip found past
   WBUF's end (``ADDRESS``), a code byte above 3 or the engine's format error (``DECODE``)
   found while streaming suppresses the remaining writes; the instruction still completes.

``mm_done``/``mv_done`` pulse once the instruction's last write was accepted by the buffer's
arbiter, so the next instruction (this unit's, or another unit's after a token) reads the
results. The unit starts the next instruction only after that, so an MM may read what the
previous MM wrote. Within one instruction, results may be written over the partial sums or
residuals they were computed from (same addresses), not over its activations.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BLOCK, AcceleratorConfig
from flightllm.contract.isa import OPCODES, Opcode, OutMode
from flightllm.contract.params import REQUANT_RECORD_BYTES
from flightllm.contract.regmap import ErrorCode
from flightllm.contract.weights import WORD_BYTES

from .bufport import buffer_clients, port_names, row_client_signature, shared_spec
from .isa_layouts import instruction_layout
from .matrix_engine import COMMAND_LAYOUT, PARAMS_LAYOUT, MatrixEngine, check_engine_shape
from .row_stream import (ADDR_BITS, ByteReader, ChunkWriter, PortMux, route_writes,
                         segment_layout)

__all__ = ["MatrixUnit"]

_MM = OPCODES[Opcode.MM]
_WORD_BITS = WORD_BYTES.bit_length() - 1
#: The instruction as the unit keeps it: every MM field (MV's are a subset) and ``mv``.
_INS = data.StructLayout({"mv": 1, **{f.name: unsigned(f.width) for f in _MM.fields}})
#: MM's fields that MV lacks (rows, strides, ``sum_rows``): zero while an MV runs.
_MM_ONLY = tuple(f.name for f in _MM.fields
                 if f.name not in {g.name for g in OPCODES[Opcode.MV].fields})
_STRIP_RECORDS = BLOCK * REQUANT_RECORD_BYTES          # 128 PBUF bytes per strip


def _tree_sum(values: list) -> Value:
    """The sum of ``values`` as a balanced tree of two-input adders."""
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


class _Walk:
    """Byte addresses of result rows in the engine's (group, strip, pair, token) order, a group
    being ``mm_pair_group`` token pairs: ``base + row * stride + strip * step``, advanced one
    row at a time without multipliers."""

    def __init__(self, m, name: str, unit):
        self.m, self.u = m, unit
        G = unit.pair_group
        self.group = Signal(16, name=f"{name}_group")
        self.g = Signal(range(G), name=f"{name}_g")                # the pair in the group
        self.strip = Signal(16, name=f"{name}_strip")
        self.tok = Signal(name=f"{name}_tok")
        self.grp0 = Signal(ADDR_BITS, name=f"{name}_grp0")       # base + 2 * G * group * stride
        self.row0 = Signal(ADDR_BITS, name=f"{name}_row0")       # grp0 + 2 * g * stride
        self.offset = Signal(ADDR_BITS, name=f"{name}_offset")   # strip * step
        self.more = Signal(name=f"{name}_more")                 # rows remain
        self.addr = Signal(ADDR_BITS, name=f"{name}_addr")
        self.last = Signal(name=f"{name}_last")
        self._stride = None

    def setup(self, base, stride, step, one_row=Const(0, 1)):
        """``one_row``: the instruction's token pairs count as one row each (``sum_rows``'s
        result and residual: row 0 only)."""
        m, u = self.m, self.u
        self._stride, self._step = stride, step
        m.d.comb += self.addr.eq(self.row0 + Mux(self.tok, stride, 0) + self.offset)
        G = u.pair_group
        pair = Cat(self.g, self.group)
        two = ~u.ins.mv & ~one_row & ((Cat(Const(1, 1), pair)) < u.ins.m_rows)
        last_tok = ~two | self.tok
        last_g = ((self.g == G - 1) | (pair == u.pairs - 1)) if G > 1 else Const(1, 1)
        last_strip = self.strip == u.ins.n_strips - 1
        self._last_tok, self._last_g, self._last_strip = last_tok, last_g, last_strip
        m.d.comb += self.last.eq(last_tok & last_g & last_strip
                                 & (self.group == u.groups - 1))
        with m.If(u.start):
            m.d.sync += [self.group.eq(0), self.g.eq(0), self.strip.eq(0), self.tok.eq(0),
                         self.grp0.eq(base), self.row0.eq(base), self.offset.eq(0),
                         self.more.eq(1)]

    def advance(self):
        m, G = self.m, self.u.pair_group
        with m.If(self._last_tok):
            m.d.sync += self.tok.eq(0)
            with m.If(~self._last_g):
                m.d.sync += [self.g.eq(self.g + 1), self.row0.eq(self.row0 + 2 * self._stride)]
            with m.Elif(self._last_strip):
                nxt = self.grp0 + (self._stride << (G.bit_length()))      # 2 * G rows on
                m.d.sync += [self.strip.eq(0), self.offset.eq(0), self.g.eq(0),
                             self.group.eq(self.group + 1), self.grp0.eq(nxt),
                             self.row0.eq(nxt)]
                with m.If(self.last):
                    m.d.sync += self.more.eq(0)
            with m.Else():
                m.d.sync += [self.strip.eq(self.strip + 1), self.g.eq(0),
                             self.row0.eq(self.grp0), self.offset.eq(self.offset + self._step)]
        with m.Else():
            m.d.sync += self.tok.eq(1)


class MatrixUnit(wiring.Component):
    """Executes MM and MV instructions (module docstring).

    Args:
        config: the accelerator configuration (buffers, engine geometry).
        max_k_blocks: longest reduction, in 16-wide blocks, the engine is built for.
        chains: the engine's DSP chains (default ``config.mv_rows``).
        dsp_impl: see :class:`~flightllm.hw.matrix_engine.MatrixEngine`.
        library: a :class:`~flightllm.hw.hierarchy.ModuleLibrary` that emits the engine's DSP
            chain and dequantiser once and instantiates them (hierarchical Verilog); ``None``
            elaborates every one.

    Ports:
        mm, mv (In streams of the instruction layouts, bindings applied); mm_done, mv_done
        (Out 1, one-cycle pulses); busy (Out 1); error (Out 3, a sticky
        :class:`~flightllm.contract.regmap.ErrorCode`); abuf, wbuf, rbuf, pbuf (row clients).
    """

    def __init__(self, config: AcceleratorConfig, *, max_k_blocks: int = 256,
                 chains: int | None = None, dsp_impl: str = "twin", library=None):
        # The engine is built in elaborate(); its arguments are checked now.
        chains = check_engine_shape(config, chains, max_k_blocks)
        self.config, self.chains = config, chains
        self.max_k_blocks, self.dsp_impl = max_k_blocks, dsp_impl
        self.pair_group = config.mm_pair_group
        self.library = library
        super().__init__({
            "mm": In(stream.Signature(instruction_layout(Opcode.MM))),
            "mv": In(stream.Signature(instruction_layout(Opcode.MV))),
            "mm_done": Out(1), "mv_done": Out(1), "busy": Out(1), "error": Out(3),
            **buffer_clients(config),
            # Chain c's weight reads go through WBUF read port c mod wbuf_read_ports.
            **{port: Out(row_client_signature(config.wbuf))
               for port in port_names("wbuf")[1:config.wbuf_read_ports]},
        })

    def _make_engine(self):
        """The matrix engine this unit drives (the resource estimate measures the unit with a
        black box here, the engine being measured on its own)."""
        eng = MatrixEngine(self.config, chains=self.chains, max_k_blocks=self.max_k_blocks,
                           dsp_impl=self.dsp_impl)
        if self.library is not None:
            eng.replace_sub_units(self.library.instance)
        return eng

    # ------------------------------------------------------------------ elaborate
    def elaborate(self, platform):
        m = Module()
        cfg, C = self.config, self.chains
        # Built here, not in __init__, so that an unelaborated unit leaves no unused engine.
        m.submodules.engine = eng = self.engine = self._make_engine()
        self.ins = ins = Signal(_INS)
        self.start = start = Signal()
        self.pairs = pairs = Signal(16)
        # The weights and a strip's records are read once per group of mm_pair_group pairs.
        self.groups = groups = Signal(16)
        rows = Signal(16)
        G = self.pair_group
        m.d.comb += [rows.eq(Mux(ins.mv, 1, ins.m_rows)), pairs.eq((rows + 1) >> 1),
                     groups.eq((pairs + (G - 1)) >> (G.bit_length() - 1))]

        # ---- buffer ports: readers and writers behind one multiplexer per buffer
        # A chain's reader delivers what its dequantiser takes per cycle: one word, or two.
        chain_rd = [ByteReader(cfg.wbuf, WORD_BYTES * cfg.dequant_words, align=WORD_BYTES)
                    for _ in range(C)]
        scan_rd = ByteReader(cfg.wbuf, cfg.wbuf.width, align=WORD_BYTES)
        act_rd = [ByteReader(cfg.abuf, BLOCK) for _ in range(2)]
        p_chunk = min(cfg.pbuf.width, _STRIP_RECORDS)
        par_rd = ByteReader(cfg.pbuf, p_chunk)
        # Partial sums and Q32 residuals sit at checked 4-byte-aligned RBUF addresses.
        psum_rd = ByteReader(cfg.rbuf, 4 * BLOCK, align=4)
        res_rd = ByteReader(cfg.rbuf, 4 * BLOCK, align=4)
        if cfg.abuf.width == cfg.rbuf.width:
            # An instruction writes Q8 rows to ABUF or Q32 rows to RBUF, never both: one
            # writer (one row-wide shifter) serves both buffers, ABUF as dest 0, RBUF as 1.
            q8_wr = q32_wr = ChunkWriter(shared_spec((cfg.abuf, cfg.rbuf)), 4 * BLOCK, dests=2)
        else:
            q8_wr = ChunkWriter(cfg.abuf, BLOCK)
            q32_wr = ChunkWriter(cfg.rbuf, 4 * BLOCK)
        # With P WBUF read ports chain c reads through port c mod P (the scanner through the
        # first), so an instruction of P or more strips draws on all of them.
        P = cfg.wbuf_read_ports
        wbuf_readers = [chain_rd[p::P] + ([scan_rd] if p == 0 else []) for p in range(P)]
        muxes = {
            **{port: (PortMux(cfg.wbuf, len(rds), writers=0), rds, None)
               for port, rds in zip(port_names("wbuf"), wbuf_readers)},
            "abuf": (PortMux(cfg.abuf, 2), act_rd, q8_wr),
            "rbuf": (PortMux(cfg.rbuf, 2), [psum_rd, res_rd], q32_wr),
            "pbuf": (PortMux(cfg.pbuf, 1, writers=0), [par_rd], None),
        }
        for name, (mux, readers, writer) in muxes.items():
            m.submodules[f"{name}_mux"] = mux
            for i, rd in enumerate(readers):
                m.submodules[f"{name}_rd{i}"] = rd
                wiring.connect(m, rd.req, mux.readers[i].req)
                wiring.connect(m, rd.rsp, mux.readers[i].rsp)
            if writer is not None and q8_wr is not q32_wr:
                m.submodules[f"{name}_wr"] = writer
                wiring.connect(m, writer.req, mux.writers[0])
            wiring.connect(m, mux.port, wiring.flipped(getattr(self, name)))
        if q8_wr is q32_wr:
            m.submodules.out_wr = q8_wr
            route_writes(m, q8_wr, [muxes["abuf"][0].writers[0], muxes["rbuf"][0].writers[0]])

        # ---- instruction intake and checks
        error_now = Signal(3)           # an error found this cycle
        with m.If((self.error == 0) & (error_now != 0)):
            m.d.sync += self.error.eq(error_now)
        failed = Signal()               # this instruction hit an error: no more writes
        take_mv = Signal()
        prefer_mv = Signal()
        mode = ins.out_mode
        es = Mux(mode == OutMode.Q8, 1, 4)
        bits = Const(2, 4) << ins.wbits
        block_dense = Signal(16)
        m.d.comb += block_dense.eq(Mux(ins.gscale, 8, 0) + (bits << 5))
        strip_dense = Signal(24)
        ctab = Signal(24)               # code-table bytes of a sparse strip
        m.d.comb += ctab.eq(Mux(ins.sparse, ((ins.k_blocks + 7) >> 3) << 3, 0))

        # Operand extents, registered in PREP and judged in CHECK.
        x_end, out_end, psum_end, p_end, w_end = (Signal(ADDR_BITS + 18, name=n) for n in (
            "x_end", "out_end", "psum_end", "p_end", "w_end"))
        empty = (ins.n_strips == 0) | (rows == 0)
        decode_bad = ((ins.wbits == 3) | (ins.gscale & (ins.wbits == 2)) | (mode == 3)
                      | ((mode == OutMode.ACC32) & (ins.residual | ins.relu))
                      | ((mode == OutMode.Q8) & ins.residual)
                      | (ins.sum_rows & ((rows != 2) | (mode != OutMode.Q32) | ins.p_uniform))
                      | (ins.k_blocks == 0) | (ins.k_blocks > self.max_k_blocks))
        rbuf_out = mode != OutMode.Q8
        multi = rows > 1
        # sum_rows writes (and reads the residual of) row 0 only: out_stride goes unused.
        multi_out = multi & ~ins.sum_rows
        misaligned = ((rbuf_out & ((ins.out_addr[:2] != 0)
                                   | (multi_out & (ins.out_stride[:2] != 0))))
                      | (ins.psum & ((ins.psum_addr[:2] != 0)
                                     | (multi & (ins.psum_stride[:2] != 0))))
                      | ((mode != OutMode.ACC32) & (ins.p_addr[:3] != 0))
                      | (ins.sum_rows & (ins.p_stride[:3] != 0))
                      # The weight readers realign whole words (contract/weights.py).
                      | (ins.w_addr[:_WORD_BITS] != 0) | (ins.w_stride[:_WORD_BITS] != 0))
        out_bytes = Mux(rbuf_out, cfg.rbuf.bytes, cfg.abuf.bytes)
        addr_bad = ((x_end > cfg.abuf.bytes) | (out_end > out_bytes)
                    | (ins.psum & (psum_end > cfg.rbuf.bytes))
                    | ((mode != OutMode.ACC32) & (p_end > cfg.pbuf.bytes))
                    | (~ins.sparse & (w_end > cfg.wbuf.bytes)) | misaligned)

        self._finished = Signal()
        running = Signal()              # the engine holds this instruction
        with m.FSM(name="unit") as fsm:
            with m.State("IDLE"):
                both = self.mm.valid & self.mv.valid
                m.d.comb += take_mv.eq(self.mv.valid & (~self.mm.valid | (both & prefer_mv)))
                with m.If(take_mv):
                    m.d.comb += self.mv.ready.eq(1)
                    m.d.sync += ins.mv.eq(1)
                    for f in OPCODES[Opcode.MV].fields:
                        m.d.sync += getattr(ins, f.name).eq(getattr(self.mv.payload, f.name))
                    for name in _MM_ONLY:
                        m.d.sync += getattr(ins, name).eq(0)
                    m.d.sync += prefer_mv.eq(0)
                    m.next = "PREP"
                with m.Elif(self.mm.valid):
                    m.d.comb += self.mm.ready.eq(1)
                    m.d.sync += ins.mv.eq(0)
                    for f in _MM.fields:
                        m.d.sync += getattr(ins, f.name).eq(getattr(self.mm.payload, f.name))
                    m.d.sync += prefer_mv.eq(1)
                    m.next = "PREP"
            with m.State("PREP"):
                last_row = rows - 1
                n_out = ins.n_strips << 4
                m.d.sync += [
                    strip_dense.eq(ins.k_blocks * block_dense),
                    x_end.eq(ins.x_addr + last_row * ins.x_stride + (ins.k_blocks << 4)),
                    out_end.eq(ins.out_addr + Mux(ins.sum_rows, 0, last_row) * ins.out_stride
                               + n_out * es),
                    psum_end.eq(ins.psum_addr + last_row * ins.psum_stride + (n_out << 2)),
                    # sum_rows: row 1's records (p_stride on) end last.
                    p_end.eq(ins.p_addr + Mux(ins.sum_rows, ins.p_stride, 0)
                             + Mux(ins.p_uniform, 1, n_out) * REQUANT_RECORD_BYTES),
                    failed.eq(0),
                ]
                m.next = "PREP2"
            with m.State("PREP2"):
                m.d.sync += w_end.eq(Mux(ins.w_stride != 0,
                                         ins.w_addr + (ins.n_strips - 1) * ins.w_stride,
                                         ins.w_addr + (ins.n_strips - 1) * strip_dense)
                                     + strip_dense)
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(empty):
                    m.next = "DONE"
                with m.Elif(decode_bad):
                    m.d.comb += error_now.eq(ErrorCode.DECODE)
                    m.next = "DONE"
                with m.Elif(addr_bad):
                    m.d.comb += error_now.eq(ErrorCode.ADDRESS)
                    m.next = "DONE"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += eng.cmd.valid.eq(1)
                with m.If(eng.cmd.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(self._finished):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.mv_done.eq(ins.mv), self.mm_done.eq(~ins.mv)]
                m.next = "IDLE"
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")),
                     running.eq(fsm.ongoing("CMD") | fsm.ongoing("RUN"))]
        self.running = running

        cmd = eng.cmd.payload
        m.d.comb += cmd.mv.eq(ins.mv)
        for name, _ in COMMAND_LAYOUT:
            if name != "mv":
                m.d.comb += getattr(cmd, name).eq(getattr(ins, name))

        self._strip_scanner(m, ins, start, pairs, strip_dense, ctab, bits, chain_rd, scan_rd,
                            error_now, failed)
        self._activations(m, ins, start, pairs, rows, act_rd)
        self._params(m, ins, start, pairs, par_rd, p_chunk, error_now, failed)
        self._row_streams(m, ins, start, psum_rd, res_rd)
        self._results(m, ins, start, q8_wr, q32_wr, failed)
        with m.If(eng.format_error & fsm.ongoing("RUN")):
            m.d.comb += error_now.eq(ErrorCode.DECODE)
            m.d.sync += failed.eq(1)
        for c in range(C):
            m.d.comb += [eng.words[c].valid.eq(chain_rd[c].out.valid),
                         chain_rd[c].out.ready.eq(eng.words[c].ready)]
            if cfg.dequant_words == 1:
                m.d.comb += eng.words[c].payload.eq(chain_rd[c].out.payload.data)
            else:
                m.d.comb += [eng.words[c].payload.data.eq(chain_rd[c].out.payload.data),
                             eng.words[c].payload.single.eq(chain_rd[c].out.payload.single)]
        return m

    # ------------------------------------------------------------------ weights
    def _strip_scanner(self, m, ins, start, pairs, strip_dense, ctab, bits, chain_rd, scan_rd,
                       error_now, failed):
        cfg, C = self.config, self.chains
        W = cfg.wbuf.width
        chain_bits = C.bit_length() - 1
        fifos = [SyncFIFO(width=segment_layout().size, depth=4) for _ in range(C)]
        for c, fifo in enumerate(fifos):
            m.submodules[f"strips{c}"] = fifo
            m.d.comb += [chain_rd[c].cmd.valid.eq(fifo.r_rdy),
                         chain_rd[c].cmd.payload.eq(fifo.r_data),
                         fifo.r_en.eq(chain_rd[c].cmd.ready)]
        p, s = Signal(16), Signal(16)
        strip_start = Signal(ADDR_BITS)
        length = Signal(ADDR_BITS)
        have_len = Signal()
        active = Signal()
        sel = s[:chain_bits] if chain_bits else Const(0, 1)
        entry = Signal(segment_layout())
        m.d.comb += [entry.addr.eq(strip_start),
                     entry.nbytes.eq(Mux(ins.sparse, length, strip_dense))]
        room = Signal()
        with m.Switch(sel):
            for c, fifo in enumerate(fifos):
                with m.Case(c):
                    m.d.comb += room.eq(fifo.w_rdy)
        ready = active & (~ins.sparse | have_len)
        push = ready & room
        for c, fifo in enumerate(fifos):
            m.d.comb += [fifo.w_data.eq(entry), fifo.w_en.eq(push & (sel == c))]
        with m.If(start):
            m.d.sync += [p.eq(0), s.eq(0), strip_start.eq(ins.w_addr), active.eq(1),
                         have_len.eq(0)]
        with m.If(push):
            m.d.sync += [have_len.eq(0), s.eq(s + 1),
                         strip_start.eq(strip_start + Mux(ins.w_stride != 0, ins.w_stride,
                                                          entry.nbytes))]
            with m.If(s == ins.n_strips - 1):
                m.d.sync += [s.eq(0), p.eq(p + 1), strip_start.eq(ins.w_addr)]
                with m.If(p == self.groups - 1):
                    m.d.sync += active.eq(0)

        # Sparse strips: read the code table, sum the sizes of the blocks it names.
        block = [Signal(16, name=f"block_bytes{code}") for code in range(4)]
        for code, sig in enumerate(block):
            n = 2 << code
            m.d.comb += sig.eq(Mux(ins.gscale, 8, 0) + (8 * n if n < BLOCK else 0)
                               + ((2 * n) * bits))
        asked = Signal()
        code_idx = Signal(16)
        with m.If(start | push):
            m.d.sync += asked.eq(0)
        m.d.comb += [scan_rd.cmd.valid.eq(active & ins.sparse & ~asked & ~have_len),
                     scan_rd.cmd.payload.addr.eq(strip_start),
                     scan_rd.cmd.payload.nbytes.eq(ctab)]
        with m.If(scan_rd.cmd.valid & scan_rd.cmd.ready):
            m.d.sync += [asked.eq(1), code_idx.eq(0), length.eq(ctab)]
        m.d.comb += scan_rd.out.ready.eq(1)
        sizes, bad = [], []
        for i in range(W):
            code = scan_rd.out.payload.data[8 * i:8 * i + 8]
            live = code_idx + i < ins.k_blocks
            size = Signal(16, name=f"code_size{i}")
            with m.Switch(code[:2]):
                for c in range(4):
                    with m.Case(c):
                        m.d.comb += size.eq(block[c])
            sizes.append(Mux(live, size, 0))
            bad.append(live & (code[2:] != 0))
        # A balanced adder tree over the row's W codes: log2(W) adders deep, not W (a chain
        # of 64 at 64-byte rows, and one Amaranth cannot even elaborate at 1 KiB).
        chunk_sum = _tree_sum(sizes)
        bad_code = Cat(*bad).any()
        with m.If(scan_rd.out.valid):
            m.d.sync += [length.eq(length + chunk_sum), code_idx.eq(code_idx + W)]
            with m.If(scan_rd.out.payload.last):
                m.d.sync += have_len.eq(1)
            with m.If(bad_code):
                m.d.comb += error_now.eq(ErrorCode.DECODE)
                m.d.sync += failed.eq(1)
        with m.If(ready & ins.sparse & (strip_start + length > cfg.wbuf.bytes)):
            m.d.comb += error_now.eq(ErrorCode.ADDRESS)
            m.d.sync += failed.eq(1)

    # ------------------------------------------------------------------ activations
    def _activations(self, m, ins, start, pairs, rows, act_rd):
        eng = self.engine
        for lane, rd in enumerate(act_rd):
            row = Signal(16, name=f"act_row{lane}")
            addr = Signal(ADDR_BITS, name=f"act_addr{lane}")
            with m.If(start):
                m.d.sync += [row.eq(lane), addr.eq(ins.x_addr + Mux(lane, ins.x_stride, 0))]
            m.d.comb += [rd.cmd.valid.eq((row < rows) & self.running),
                         rd.cmd.payload.addr.eq(addr),
                         rd.cmd.payload.nbytes.eq(ins.k_blocks << 4)]
            with m.If(rd.cmd.valid & rd.cmd.ready):
                m.d.sync += [row.eq(row + 2), addr.eq(addr + 2 * ins.x_stride)]
        pair = Signal(16)
        with m.If(start):
            m.d.sync += pair.eq(0)
        two = ~ins.mv & (Cat(Const(1, 1), pair) < rows)
        r0, r1 = act_rd[0].out, act_rd[1].out
        go = r0.valid & (r1.valid | ~two)
        m.d.comb += [eng.acts.valid.eq(go), eng.acts.payload.as_value().eq(
            Cat(r0.payload.data, r1.payload.data)),
            r0.ready.eq(go & eng.acts.ready), r1.ready.eq(go & two & eng.acts.ready)]
        with m.If(go & eng.acts.ready & r0.payload.last):
            m.d.sync += pair.eq(pair + 1)

    # ------------------------------------------------------------------ records
    def _params(self, m, ins, start, pairs, rd, chunk, error_now, failed):
        eng = self.engine
        requant = ins.out_mode != OutMode.ACC32
        left = Signal(ADDR_BITS)         # segments to ask for
        addr = Signal(ADDR_BITS)
        strip = Signal(16)
        # sum_rows: each strip's records of row 0, then of row 1 (p_stride on), one segment
        # each, as the engine takes one beat per result token.
        row1 = Signal()
        with m.If(start):
            m.d.sync += [left.eq(Mux(requant, Mux(ins.p_uniform, 1,
                                                  (self.groups * ins.n_strips) << ins.sum_rows),
                                     0)),
                         addr.eq(ins.p_addr), strip.eq(0), row1.eq(0)]
        m.d.comb += [rd.cmd.valid.eq(left != 0),
                     rd.cmd.payload.addr.eq(addr + Mux(row1, ins.p_stride, 0)),
                     rd.cmd.payload.nbytes.eq(Mux(ins.p_uniform, REQUANT_RECORD_BYTES,
                                                  _STRIP_RECORDS))]
        with m.If(rd.cmd.valid & rd.cmd.ready):
            m.d.sync += left.eq(left - 1)
            with m.If(ins.sum_rows & ~row1):
                m.d.sync += row1.eq(1)
            with m.Else():
                m.d.sync += [row1.eq(0), addr.eq(addr + _STRIP_RECORDS), strip.eq(strip + 1)]
                with m.If(strip == ins.n_strips - 1):
                    m.d.sync += [addr.eq(ins.p_addr), strip.eq(0)]
        # Chunks collect into one 16-record beat.
        n_chunks = _STRIP_RECORDS // chunk
        beat = Signal(8 * _STRIP_RECORDS)
        idx = Signal(range(max(n_chunks, 2)))
        full = Signal()
        m.d.comb += rd.out.ready.eq(~full)
        with m.If(rd.out.valid & ~full):
            if n_chunks > 1:
                m.d.sync += beat.word_select(idx, 8 * chunk).eq(rd.out.payload.data)
            else:
                m.d.sync += beat.eq(rd.out.payload.data)
            m.d.sync += idx.eq(idx + 1)
            with m.If(rd.out.payload.last):
                m.d.sync += [full.eq(1), idx.eq(0)]
        view = data.View(PARAMS_LAYOUT, beat)
        m.d.comb += [eng.params.valid.eq(full), eng.params.payload.eq(beat)]
        with m.If(eng.params.valid & eng.params.ready):
            m.d.sync += full.eq(0)
            used = [view[0].shift > 62] + [(view[j].shift > 62) & ~ins.p_uniform
                                           for j in range(1, BLOCK)]
            with m.If(Cat(*used).any()):
                m.d.comb += error_now.eq(ErrorCode.DECODE)
                m.d.sync += failed.eq(1)

    # ------------------------------------------------------------------ psum, residual
    def _row_streams(self, m, ins, start, psum_rd, res_rd):
        eng = self.engine
        # Partial sums come per row; sum_rows's residual once per strip, row 0's.
        for name, rd, base, stride, on, port, one_row in (
                ("psum", psum_rd, ins.psum_addr, ins.psum_stride, ins.psum, eng.psum, Const(0, 1)),
                ("res", res_rd, ins.out_addr, ins.out_stride,
                 ins.residual & (ins.out_mode == OutMode.Q32), eng.residual, ins.sum_rows)):
            walk = _Walk(m, name, self)
            walk.setup(base, stride, 4 * BLOCK, one_row)
            m.d.comb += [rd.cmd.valid.eq(walk.more & on & self.running & ~start),
                         rd.cmd.payload.addr.eq(walk.addr),
                         rd.cmd.payload.nbytes.eq(4 * BLOCK)]
            with m.If(rd.cmd.valid & rd.cmd.ready):
                walk.advance()
            m.d.comb += [port.valid.eq(rd.out.valid), port.payload.as_value().eq(
                rd.out.payload.data), rd.out.ready.eq(port.ready)]

    # ------------------------------------------------------------------ results
    def _results(self, m, ins, start, q8_wr, q32_wr, failed):
        eng = self.engine
        walk = _Walk(m, "out", self)
        q8 = ins.out_mode == OutMode.Q8
        # sum_rows: one result beat per strip (the engine keeps row 0's), at row 0's address.
        walk.setup(ins.out_addr, ins.out_stride, Mux(q8, BLOCK, 4 * BLOCK), ins.sum_rows)
        y = eng.results.payload.y
        got_last = Signal()
        with m.If(start):
            m.d.sync += got_last.eq(0)
        q8_data = Cat(y[j][:8] for j in range(BLOCK))
        if q8_wr is q32_wr:
            wr = q8_wr
            m.d.comb += [wr.cmd.valid.eq(eng.results.valid), wr.cmd.payload.addr.eq(walk.addr),
                         wr.cmd.payload.nbytes.eq(Mux(failed, 0, Mux(q8, BLOCK, 4 * BLOCK))),
                         wr.cmd.payload.data.eq(Mux(q8, q8_data, y.as_value())),
                         wr.dest.eq(~q8)]
        for wr, is_q8 in ((q8_wr, True), (q32_wr, False)) if q8_wr is not q32_wr else ():
            mine = q8 if is_q8 else ~q8
            m.d.comb += [wr.cmd.valid.eq(eng.results.valid & mine),
                         wr.cmd.payload.addr.eq(walk.addr),
                         wr.cmd.payload.nbytes.eq(Mux(failed, 0, BLOCK if is_q8 else 4 * BLOCK)),
                         wr.cmd.payload.data.eq(q8_data if is_q8 else y.as_value())]
        m.d.comb += eng.results.ready.eq(Mux(q8, q8_wr.cmd.ready, q32_wr.cmd.ready))
        with m.If(eng.results.valid & eng.results.ready):
            walk.advance()
            with m.If(eng.results.payload.last):
                m.d.sync += got_last.eq(1)
        m.d.comb += self._finished.eq(got_last & q8_wr.idle & q32_wr.idle)
