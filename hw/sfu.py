"""The special-function unit (SFU): every MISC function's arithmetic, bit-exact to
``flightllm.contract.numerics`` as the golden simulator (``sim/execute.py: exec_misc``) applies
it, on ``sfu_lanes`` elements per cycle.

Interface (all ``lib.stream``; a command, then its rows, one after the other):

* ``cmd``: one :data:`COMMAND_LAYOUT` beat per MISC instruction, the ISA's own fields (``func``,
  ``d_buf``, ``n``, ``m``, ``group``, ``m1``/``s1``/``m2``/``s2``, ``aux``, the flags).
* ``a``: the rows of the first operand, ``ceil(n / lanes)`` beats per row, element ``j`` of a
  row in lane ``j mod lanes``; lanes past ``n`` are ignored. INT8 sources arrive sign-extended.
* ``b``: ADD/MUL's second operand, the same beats; MUL with ``rowscalar``: one beat per row,
  the scalar in lane 0.
* ``p``: per-element parameters, :func:`param_beat_layout`: norms ``p0 = gamma[j]``,
  ``p1 = beta[j]`` (ignored without the ``beta`` flag); ROPE ``p0, p1 = cos, sin`` of the pair
  element ``j`` belongs to (the parameter reader repeats each table entry for both elements of
  its pair: ``pair(j) = (j mod group) mod group/2``, or ``(j mod group) // 2`` interleaved).
* ``out``: result beats (:func:`~flightllm.hw.sfu_datapath.result_beat_layout`), saturated to
  the destination buffer's type (INT8 for ABUF, else INT32), lanes past the row's end zero,
  ``last`` on the row's final beat. SOFTMAX rows are zero-filled to a multiple of 16 columns
  (the block the next MV reads), as in the golden simulator.
* ``recip``: deferred SOFTMAX's per-row ``R = 2**60 // (127 * S)``, one beat per row.
* ``error``: sticky until the next command: a command the unit does not run (COPY and FILL,
  which move data without arithmetic and belong to the buffer engine; a SOFTMAX/norm/ROPE row
  longer than ``max_row``; a norm over more than ``MAX_NORM_ELEMENTS``; an odd or zero ROPE
  group). The instruction decoder rejects these first; the SFU then consumes nothing.

Organisation: two sequencers (this module) issue at most one beat per cycle into the
never-stalling lane pipeline (:mod:`flightllm.hw.sfu_datapath`, latency
:data:`~flightllm.hw.sfu_datapath.LATENCY`) whose results enter an output FIFO; a beat with a
result issues only when the FIFO has room for it and every result still in flight (credit), so
backpressure never reaches the pipeline. Element-wise functions stream at one beat per cycle.
The row functions keep the row in a **row buffer** (:class:`~flightllm.hw.sfu_rowbuf.RowBuffer`,
``max_row`` INT32 elements) and make passes over it:

* SOFTMAX: *in* (store, scores outside the row or the causal window stored as ``MASKED``,
  running maximum), *exp* (exponentials written back, summed), the reciprocal division, *out*
  (probabilities, then the zero-fill beats). Deferred: *exp* emits the INT8 weights directly
  (they need only ``e``) and the division runs while the next row is processed; ``R`` goes to
  ``recip`` when it is done.
* RMSNORM/LAYERNORM: *in* (inputs saturated to 24 bits and stored, sums of ``x`` and
  ``x**2``), the statistics (:class:`~flightllm.hw.sfu_stats.RowStats`), *out*.
* ROPE: *in*, *out*: each lane reads its own element and its pair partner at ``+offset`` or
  ``-offset`` (``offset`` = ``group / 2``, or 1 interleaved) from the row buffer's window
  ports, so any group size runs at full rate.

The *front* sequencer runs a row's *in* pass (or streams an element-wise command); the *back*
sequencer runs the row's later passes. The front starts row ``r + 1`` once the back is in row
``r``'s final read pass (*out*; deferred *exp*) and writes beat ``k`` only after the back has
read every word beat ``k`` overwrites (ROPE reads ``ceil(offset / lanes)`` beats behind), so
one row buffer serves two rows and the input pass of the next row costs no time.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from flightllm.contract import numerics as nm
from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import OPCODES, MiscFunc, Opcode

from .isa_layouts import field_shape
from .sfu_arith import saturate
from .sfu_datapath import LATENCY, Kind, SFUDatapath, result_beat_layout
from .sfu_rowbuf import RowBuffer
from .sfu_stats import EXP_SUM_BITS, SQUARE_SUM_BITS, SUM_BITS, RowStats, StatsMode

__all__ = [
    "SFU", "COMMAND_FIELDS", "COMMAND_LAYOUT", "ELEMENTWISE", "operand_beat_layout",
    "param_beat_layout", "result_beat_layout",
]

#: The MISC fields the SFU takes, with the ISA's own shapes.
COMMAND_FIELDS = ("func", "d_buf", "n", "m", "group", "m1", "s1", "m2", "s2", "aux", "causal",
                  "interleaved", "beta", "defer", "rowscalar")
COMMAND_LAYOUT = data.StructLayout({
    name: field_shape(OPCODES[Opcode.MISC].field(name)) for name in COMMAND_FIELDS})

#: Functions that stream without a row buffer.
ELEMENTWISE = (MiscFunc.REQUANT, MiscFunc.ADD, MiscFunc.MUL, MiscFunc.SILU, MiscFunc.GELU_TANH,
               MiscFunc.GELU_ERF, MiscFunc.RELU)
_ROW_FUNCS = (MiscFunc.SOFTMAX, MiscFunc.RMSNORM, MiscFunc.LAYERNORM, MiscFunc.ROPE)
_POS_BITS = 16


def operand_beat_layout(lanes: int) -> data.ArrayLayout:
    """An ``a`` or ``b`` beat: ``lanes`` INT32 elements."""
    return data.ArrayLayout(signed(32), lanes)


def param_beat_layout(lanes: int) -> data.StructLayout:
    """A ``p`` beat: per element ``p0`` (gamma or cos, INT16) and ``p1`` (beta INT32, or sin)."""
    return data.StructLayout({"p0": data.ArrayLayout(signed(16), lanes),
                              "p1": data.ArrayLayout(signed(32), lanes)})


def _any(value, choices):
    return sum(value == c for c in choices) != 0


class SFU(wiring.Component):
    """The special-function unit (module docstring).

    Args:
        config: the accelerator configuration; ``sfu_lanes`` (a power of two) sets the width.
        max_row: longest SOFTMAX/norm/ROPE row, the row buffer's size in elements (a multiple
            of the lanes, at most 2**16).
        fifo_depth: output FIFO beats; at least ``LATENCY + 2`` keeps element-wise functions
            at one beat per cycle.
        divider_steps: quotient bits per cycle of the per-row divider.
    """

    def __init__(self, config: AcceleratorConfig, *, max_row: int = 4096, fifo_depth: int = 16,
                 divider_steps: int = 2):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"expected an AcceleratorConfig, not {config!r}")
        lanes = config.sfu_lanes
        if lanes & (lanes - 1):
            raise ValueError(f"sfu_lanes must be a power of two for the SFU, not {lanes}")
        if (not isinstance(max_row, int) or max_row < 2 * lanes or max_row % lanes
                or max_row > 1 << 16):
            raise ValueError(f"max_row must be a multiple of sfu_lanes = {lanes} in "
                             f"[{2 * lanes}, 65536], not {max_row!r}")
        if not isinstance(fifo_depth, int) or fifo_depth < LATENCY + 2:
            raise ValueError(f"fifo_depth must be an integer >= {LATENCY + 2}, not {fifo_depth!r}")
        if divider_steps not in (1, 2, 4, 8):
            raise ValueError(f"divider_steps must be 1, 2, 4 or 8, not {divider_steps!r}")
        self.lanes, self.max_row, self.fifo_depth = lanes, max_row, fifo_depth
        self.divider_steps = divider_steps
        super().__init__({
            "cmd": In(stream.Signature(COMMAND_LAYOUT)),
            "a": In(stream.Signature(operand_beat_layout(lanes))),
            "b": In(stream.Signature(operand_beat_layout(lanes))),
            "p": In(stream.Signature(param_beat_layout(lanes))),
            "out": Out(stream.Signature(result_beat_layout(lanes))),
            "recip": Out(stream.Signature(signed(32))),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        LB = L.bit_length() - 1

        m.submodules.rows = rows = RowBuffer(lanes=L, depth=self.max_row // L)
        m.submodules.dp = dp = SFUDatapath(lanes=L, addr_bits=rows.addr_bits,
                                           command_layout=COMMAND_LAYOUT)
        m.submodules.stats = stats = RowStats(divider_steps=self.divider_steps)
        rl = result_beat_layout(L)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=rl.size, depth=self.fifo_depth)

        cmd = Signal(COMMAND_LAYOUT)
        func = cmd.func
        is_elem, is_sm = _any(func, ELEMENTWISE), func == MiscFunc.SOFTMAX
        is_norm = _any(func, (MiscFunc.RMSNORM, MiscFunc.LAYERNORM))
        is_rope = func == MiscFunc.ROPE
        nb = Signal(17)                       # data beats per row
        nbo = Signal(17)                      # output beats of a softmax row (zero fill)
        m.d.comb += [nb.eq((cmd.n + L - 1) >> LB),
                     nbo.eq((((cmd.n + 15) >> 4 << 4) + L - 1) >> LB)]

        # Two sequencers share the row buffer and the pipeline: the *front* runs a row's input
        # pass (or streams an element-wise command), the *back* the row's later passes. The
        # front starts the next row when the back is in its row's final read pass, and writes
        # beat k only after the back has read every word beat k overwrites (the fence).
        f_row, f_beat = Signal(16), Signal(17)
        b_beat = Signal(17)
        f_keep, b_keep = Signal(L), Signal(L)
        f_cols = [Signal(17 + LB, name=f"f_col{i}") for i in range(L)]
        for i in range(L):
            b_col = (b_beat << LB) | i
            m.d.comb += [f_cols[i].eq((f_beat << LB) | i), f_keep[i].eq(f_cols[i] < cmd.n),
                         b_keep[i].eq(b_col < cmd.n)]

        # ------------------------------------------------------------ issue -> pipeline
        item, nxt = Signal.like(dp.item), Signal.like(dp.item)
        f_issue, b_issue = Signal(), Signal()
        m.d.sync += item.eq(nxt)
        m.d.comb += [dp.item.eq(item), dp.cmd.eq(cmd), nxt.valid.eq(f_issue | b_issue),
                     nxt.keep.eq(Mux(b_issue, b_keep, f_keep)), nxt.addr.eq(b_beat)]

        inflight = Signal(range(self.fifo_depth + 1))
        credit = Signal()
        m.d.comb += [
            credit.eq(fifo.level + inflight < self.fifo_depth),
            fifo.w_data.eq(dp.result.as_value()), fifo.w_en.eq(dp.result_valid),
            self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.out.ready),
        ]
        m.d.sync += inflight.eq(inflight + (nxt.valid & nxt.out) - dp.result_valid)

        # ------------------------------------------------------------ row buffer
        half = cmd.group >> 1
        offset = Mux(cmd.interleaved, 1, half)
        in_write = Signal()
        in_data = [Signal(signed(32), name=f"in_data{b}") for b in range(L)]
        m.d.comb += [
            rows.offset.eq(offset), rows.addr.eq(b_beat),
            rows.w_en.eq(in_write | dp.wb_en),
            rows.w_addr.eq(Mux(dp.wb_en, dp.wb_addr, f_beat)),
            dp.own.eq(rows.own), dp.plus.eq(rows.plus), dp.minus.eq(rows.minus),
        ]
        for b in range(L):
            m.d.comb += rows.w_data[b].eq(Mux(dp.wb_en, dp.wb_data[b], in_data[b]))

        # ------------------------------------------------------------ front accumulators
        smax = Signal(signed(32))
        sum_x = Signal(signed(SUM_BITS))
        sum_x2 = Signal(SQUARE_SUM_BITS)
        with m.If(dp.sq_valid):
            m.d.sync += sum_x2.eq(sum_x2 + dp.sq_sum)
        # Softmax: columns outside the row or the causal window are stored as MASKED, which is
        # also the identity of the running maximum. Norms: inputs saturated to 24 bits.
        limit = Signal(signed(34))
        m.d.comb += limit.eq(cmd.aux + f_row)
        stored = []
        for i in range(L):
            x = self.a.payload[i]
            live = f_keep[i] & (~cmd.causal | (f_cols[i] <= limit))
            sm_x = Mux(live, x, nm.MASKED)
            norm_x = Mux(f_keep[i], saturate(x, nm.NORM_INPUT_BITS), 0)
            stored.append((sm_x, norm_x))
            m.d.comb += in_data[i].eq(Mux(is_sm, sm_x, Mux(is_norm, norm_x, x)))
        level = [sm_x for sm_x, _ in stored]
        while len(level) > 1:                     # a balanced tree of signals
            pairs = []
            for j in range(0, len(level) - 1, 2):
                larger = Signal(signed(32), name=f"max_{len(level)}_{j}")
                m.d.comb += larger.eq(Mux(level[j] > level[j + 1], level[j], level[j + 1]))
                pairs.append(larger)
            level = pairs + level[len(level) - len(level) % 2:]
        beat_max = level[0]

        # ------------------------------------------------------------ back row constants
        row_max = Signal(signed(32))
        exp_sum = Signal(EXP_SUM_BITS)
        with m.If(dp.exp_valid):
            m.d.sync += exp_sum.eq(exp_sum + dp.exp_sum)
        m.d.comb += [
            dp.row.max.eq(row_max), dp.row.recip.eq(stats.recip), dp.row.mu.eq(stats.mu),
            dp.row.rsqrt.eq(stats.rsqrt), dp.row.shift.eq(stats.shift),
            stats.exp_sum.eq(exp_sum), stats.sum_x.eq(sum_x), stats.sum_x2.eq(sum_x2),
            stats.n.eq(cmd.n), stats.eps.eq(cmd.aux),
        ]
        with m.Switch(func):
            with m.Case(MiscFunc.SOFTMAX):
                m.d.comb += stats.mode.eq(Mux(cmd.defer, StatsMode.SOFTMAX_DEFERRED,
                                              StatsMode.SOFTMAX))
            with m.Case(MiscFunc.RMSNORM):
                m.d.comb += stats.mode.eq(StatsMode.RMSNORM)
            with m.Default():
                m.d.comb += stats.mode.eq(StatsMode.LAYERNORM)

        # ROPE: each lane's position in its group, and whether it is the first of its pair.
        pos = [Signal(_POS_BITS, name=f"pos{i}") for i in range(L)]
        pos_init = Signal(_POS_BITS * L)
        pos_step = Signal(_POS_BITS)              # L mod group
        count = Signal(_POS_BITS)
        setup_lane = Signal(range(L))
        count_next = Mux(count + 1 == cmd.group, 0, count + 1)
        first = Signal(L)
        for i in range(L):
            m.d.comb += first[i].eq(Mux(cmd.interleaved, ~pos[i][0], pos[i] < half))

        # ------------------------------------------------------------ deferred reciprocals
        # The division of a deferred row runs while the back moves on; its R leaves when done.
        recip_valid, recip_wait, stats_ready = Signal(), Signal(), Signal()
        recip_data = Signal(signed(32))
        m.d.comb += [self.recip.valid.eq(recip_valid), self.recip.payload.eq(recip_data)]
        with m.If(self.recip.ready):
            m.d.sync += recip_valid.eq(0)
        with m.If(stats.done):
            m.d.sync += stats_ready.eq(1)
        with m.If(recip_wait & stats_ready & (~recip_valid | self.recip.ready)):
            m.d.sync += [recip_valid.eq(1), recip_data.eq(stats.recip), recip_wait.eq(0)]

        # ------------------------------------------------------------ back sequencer
        take = Signal()           # the front hands a stored row to the idle back
        b_idle, b_final = Signal(), Signal()
        look = Mux(is_rope, (offset + L - 1) >> LB, 0)   # ROPE reads ceil(offset/L) beats back
        fence = Signal()
        m.d.comb += fence.eq(b_idle | (b_final & (f_beat + look < b_beat)))

        def back_pass(last_index, then):
            m.d.sync += b_beat.eq(b_beat + 1)
            with m.If(b_beat == last_index):
                m.d.sync += b_beat.eq(0)
                m.next = then

        def start_stats():
            m.d.comb += stats.start.eq(1)
            m.d.sync += stats_ready.eq(0)

        with m.FSM(name="back"):
            with m.State("IDLE"):
                m.d.comb += b_idle.eq(1)
                with m.If(take):
                    m.d.sync += [row_max.eq(smax), exp_sum.eq(0), b_beat.eq(0)]
                    for i in range(L):
                        m.d.sync += pos[i].eq(pos_init[_POS_BITS * i:_POS_BITS * (i + 1)])
                    with m.If(is_sm):
                        m.next = "EXP"
                    with m.Elif(is_norm):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "ROPE"
            with m.State("EXP"):
                last = Mux(cmd.defer, nbo - 1, nb - 1)
                go = ~cmd.defer | credit
                m.d.comb += b_final.eq(cmd.defer)
                with m.If(go):
                    m.d.comb += [b_issue.eq(1), nxt.kind.eq(Kind.EXP), nxt.out.eq(cmd.defer),
                                 nxt.last.eq(b_beat == last), nxt.pad.eq(b_beat >= nb)]
                    back_pass(last, "DRAIN")
            with m.State("DRAIN"):
                with m.If(~dp.busy & ~recip_wait):
                    start_stats()
                    with m.If(is_sm & cmd.defer):
                        m.d.sync += recip_wait.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "STATS"
            with m.State("STATS"):
                with m.If(stats.done):
                    with m.If(is_norm):
                        m.next = "NORM"
                    with m.Else():
                        m.next = "PROB"
            with m.State("PROB"):
                m.d.comb += b_final.eq(1)
                with m.If(credit):
                    m.d.comb += [b_issue.eq(1), nxt.kind.eq(Kind.PROB), nxt.out.eq(1),
                                 nxt.last.eq(b_beat == nbo - 1), nxt.pad.eq(b_beat >= nb)]
                    back_pass(nbo - 1, "IDLE")
            with m.State("NORM"):
                m.d.comb += b_final.eq(1)
                with m.If(credit & self.p.valid):
                    m.d.comb += [self.p.ready.eq(1), b_issue.eq(1), nxt.kind.eq(Kind.NORM),
                                 nxt.out.eq(1), nxt.last.eq(b_beat == nb - 1)]
                    self._params(m, nxt)
                    back_pass(nb - 1, "IDLE")
            with m.State("ROPE"):
                m.d.comb += b_final.eq(1)
                with m.If(credit & self.p.valid):
                    m.d.comb += [self.p.ready.eq(1), b_issue.eq(1), nxt.kind.eq(Kind.ROPE),
                                 nxt.out.eq(1), nxt.last.eq(b_beat == nb - 1),
                                 nxt.first.eq(first)]
                    self._params(m, nxt)
                    for i in range(L):
                        stepped = pos[i] + pos_step
                        m.d.sync += pos[i].eq(Mux(stepped >= cmd.group, stepped - cmd.group,
                                                  stepped))
                    back_pass(nb - 1, "IDLE")

        # ------------------------------------------------------------ front sequencer
        scalar = Signal(signed(32))
        unsupported = (
            ~(is_elem | _any(func, _ROW_FUNCS))
            | (~is_elem & (cmd.n > self.max_row))
            | (is_norm & (cmd.n > nm.MAX_NORM_ELEMENTS))
            | (is_rope & ((cmd.group == 0) | cmd.group[0]))
        )
        with m.FSM(name="front"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), self.error.eq(0)]
                    m.next = "START"
            with m.State("START"):
                m.d.sync += [f_row.eq(0), f_beat.eq(0), count.eq(0), setup_lane.eq(0)]
                with m.If((cmd.n == 0) | (cmd.m == 0)):
                    m.next = "DONE"
                with m.Elif(unsupported):
                    m.d.sync += self.error.eq(1)
                    m.next = "DONE"
                with m.Elif(is_elem):
                    m.next = "STREAM"
                with m.Elif(is_rope):
                    m.next = "SETUP"
                with m.Else():
                    m.next = "ROW"
            with m.State("SETUP"):
                # pos_init[i] = i mod group, and L mod group, by counting: L cycles per command.
                m.d.sync += [pos_init.eq(Cat(pos_init[_POS_BITS:], count)),
                             count.eq(count_next), setup_lane.eq(setup_lane + 1)]
                with m.If(setup_lane == L - 1):
                    m.d.sync += pos_step.eq(count_next)
                    m.next = "ROW"
            with m.State("STREAM"):
                rowscalar = (func == MiscFunc.MUL) & cmd.rowscalar
                need_b = (func == MiscFunc.ADD) | ((func == MiscFunc.MUL) &
                                                   (~cmd.rowscalar | (f_beat == 0)))
                go = self.a.valid & (~need_b | self.b.valid) & credit
                scalar_now = Mux(f_beat == 0, self.b.payload[0], scalar)
                m.d.comb += [self.a.ready.eq(go), self.b.ready.eq(go & need_b)]
                with m.If(go):
                    m.d.comb += [f_issue.eq(1), nxt.kind.eq(Kind.ELEM), nxt.out.eq(1),
                                 nxt.last.eq(f_beat == nb - 1)]
                    for i in range(L):
                        m.d.comb += [nxt.a[i].eq(self.a.payload[i]),
                                     nxt.b[i].eq(Mux(rowscalar, scalar_now, self.b.payload[i]))]
                    with m.If(f_beat == 0):
                        m.d.sync += scalar.eq(self.b.payload[0])
                    m.d.sync += f_beat.eq(f_beat + 1)
                    with m.If(f_beat == nb - 1):
                        m.d.sync += [f_beat.eq(0), f_row.eq(f_row + 1)]
                        with m.If(f_row == cmd.m - 1):
                            m.next = "DONE"
            with m.State("ROW"):
                # The back has consumed the previous row's sums (it is in its final pass).
                with m.If(b_idle | b_final):
                    m.d.sync += [smax.eq(nm.MASKED), sum_x.eq(0), sum_x2.eq(0), f_beat.eq(0)]
                    m.next = "IN"
            with m.State("IN"):
                go = self.a.valid & fence
                m.d.comb += [self.a.ready.eq(go), in_write.eq(go)]
                with m.If(go):
                    # Norm squares go down the pipeline as SQUARE items, or ride on the
                    # back's NORM item of this cycle (its first multiplier is free).
                    with m.If(is_norm):
                        m.d.comb += f_issue.eq(~b_issue)
                        with m.If(~b_issue):
                            m.d.comb += nxt.kind.eq(Kind.SQUARE)
                        for i in range(L):
                            m.d.comb += nxt.a[i].eq(stored[i][1])
                    m.d.sync += [
                        smax.eq(Mux(beat_max > smax, beat_max, smax)),
                        sum_x.eq(sum_x + sum(norm_x for _, norm_x in stored)),
                        f_beat.eq(f_beat + 1),
                    ]
                    with m.If(f_beat == nb - 1):
                        m.next = "HANDOVER"
            with m.State("HANDOVER"):
                with m.If(b_idle):
                    m.d.comb += take.eq(1)
                    m.d.sync += [f_row.eq(f_row + 1), f_beat.eq(0)]
                    with m.If(f_row == cmd.m - 1):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "ROW"
            with m.State("DONE"):
                with m.If(b_idle & ~take & ~dp.busy & ~recip_wait):
                    m.next = "IDLE"
        return m

    def _params(self, m, nxt):
        for i in range(self.lanes):
            m.d.comb += [nxt.p0[i].eq(self.p.payload.p0[i]), nxt.p1[i].eq(self.p.payload.p1[i])]
