"""The configurable sparse DSP chain (CSD-chain): the heart of the matrix engine.

One chain is ``mv_k`` packed DSP48E2 slices along K, cut into groups of ``dsp_group`` slices.
Inside a group the slices are a fixed PCIN/PCOUT cascade. Between groups a configurable link
either *joins* the cascade or *breaks* it: the last slice of the group feeds a reduction node
that emits its sum, and the next group restarts from zero through its Z multiplexer
(OPMODE ``P = M`` instead of ``P = PCIN + M``).

**Sparse mapping.** The chain works on one 16x16 weight block at a time. A block row keeps N
of 16 weights (N:16, N in 2, 4, 8, 16; 16 is dense), so it occupies N consecutive slices, and a
pass (one cycle) covers ``mv_k / N`` rows of the block: the weight beat carries ``mv_k``
(INT8 weight, 4-bit in-block column) pairs, rows back to back. A sparse multiplexer in front of
every slice picks the activation ``x[idx]`` of the block's 16 for its weight. A block takes
``16 * N / mv_k`` passes, so the useful (dense-equivalent) MACs per slice per cycle grow as
``16 / N``. The link after slice ``j - 1`` breaks when ``j`` is a multiple of
``min(N, CASCADE_LIMIT)``: at each row boundary and, for rows longer than
:data:`~flightllm.hw.dsp48e2.CASCADE_LIMIT` = 8 slices, in the middle of the row (the overflow
adjust: a packed low lane holds at most eight INT8 products, see
:func:`~flightllm.hw.dsp48e2.split_lanes`). Reduction nodes sit only at group ends, so
``dsp_group`` must divide 8 and every N.

**Two MACs per slice.** Every slice multiplies its weight (port B) by two activations packed
in the pre-adder (D = lane 0, A = lane 1 << 18). The activation beat carries two 16-element
vectors: in MM mode two token rows. In MV mode (decode, one token) lane 1 is zero and the
second MAC idles: two *rows* never share an activation under N:16 sparsity (their indices
differ), and batch-1 decode is bound by HBM bandwidth, not by the MACs, so the MV engine is
rated at one MAC per slice (``AcceleratorConfig.mv_macs_per_cycle``). A second decode sequence
can ride in lane 1 for free.

**Accumulation.** The reduction nodes split each packed sum into its lanes, the partial sums of
one row are added, and 16 rows x 2 lanes INT32 accumulators sum the row over the K blocks of a
strip (wrapping modulo 2**32). A weight beat flagged ``first`` restarts the accumulators of its
rows; after the last pass of a beat flagged ``last`` the strip's 16 x 2 results leave as one
result beat.

**Pipeline.** A pass is accepted in cycle ``f`` when a weight beat and an activation beat are
valid (the activation beat is consumed by the block's last pass) and, for a strip-ending pass,
the result FIFO has a free slot counting the strips still in flight; the chain itself never
stalls. Operands reach slice ``i`` ``i + 1`` cycles later (a triangular skew), its P is ready
at ``f + 5 + i``, reduction outputs are deskewed to ``f + mv_k + 5``, the accumulators update
at the end of that cycle, the strip result enters the FIFO from the accumulator registers in the
next, and the FIFO's output register presents it one cycle later: a strip's result can be taken
``mv_k + 8`` clock edges after its last pass was accepted (:attr:`DSPChain.latency`; the
throughput bench measures it).

**Resources.** Everything that only delays (operand skew, reduction deskew, the control line
except ``valid`` and the taps of the code) is written without reset and without enable, so that
synthesis maps it to SRL16E/SRLC32E shift registers (one LUT per bit per 32 stages) rather than
flip-flops: a 32-slice chain keeps about 3,300 flip-flops instead of 28,000.
"""

import operator
from functools import reduce

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BLOCK, AcceleratorConfig
from flightllm.contract.weights import SPARSITY_CODES

from .dsp48e2 import (
    ALUMODE_SUM, CASCADE_LIMIT, CTRL_LEAD, DSP48E2, IMPLEMENTATIONS, INMODE_A_PLUS_D, LATENCY,
    OPMODE_M, OPMODE_PCIN_M, pack_lanes, split_lanes,
)

__all__ = [
    "DSPChain", "LANES", "LANE_BITS", "ROW_BITS", "mux_tree", "act_beat_layout", "result_beat_layout", "weight_beat_layout",
    "passes_per_block", "rows_per_pass", "cascade_restarts", "reduction_taps",
    "check_chain_config",
]

#: Packed MACs per slice: activation vectors per beat (token rows in MM mode).
LANES = 2


def weight_beat_layout(mv_k: int) -> data.StructLayout:
    """One pass of weights: ``mv_k`` slots of (INT8 weight, 4-bit column in the block).

    Slot ``j`` of pass ``p`` holds entry ``j % N`` of block row ``p * mv_k / N + j // N``.
    ``code`` is the block's sparsity code (contract/weights.py: 0..3 for N = 2, 4, 8, 16);
    ``first`` / ``last`` mark the first and last K block of a strip on every pass of the block.
    """
    return data.StructLayout({
        "w": data.ArrayLayout(signed(8), mv_k),
        "idx": data.ArrayLayout(unsigned(4), mv_k),
        "code": unsigned(2),
        "first": unsigned(1),
        "last": unsigned(1),
    })


def act_beat_layout(pairs: int = 1) -> data.StructLayout:
    """The activations of one K block: ``x[lane][k]``, INT8, 16 per lane.

    A chain that serves ``pairs`` > 1 token pairs per weight pass takes the block of every pair
    of a group at once: ``x[pair][lane][k]``, and ``pairs_m1``, the group's pairs minus one
    (the last group of an instruction may be short)."""
    lanes = data.ArrayLayout(data.ArrayLayout(signed(8), BLOCK), LANES)
    if pairs == 1:
        return data.StructLayout({"x": lanes})
    return data.StructLayout({"x": data.ArrayLayout(lanes, pairs),
                              "pairs_m1": range(pairs)})


def result_beat_layout() -> data.StructLayout:
    """One strip's results: ``y[lane][row]``, INT32."""
    return data.StructLayout({"y": data.ArrayLayout(data.ArrayLayout(signed(32), BLOCK), LANES)})


def passes_per_block(n: int, mv_k: int) -> int:
    """Cycles the chain spends on one 16x16 block that keeps ``n`` weights per row."""
    return BLOCK * n // mv_k


def rows_per_pass(n: int, mv_k: int) -> int:
    return mv_k // n


def cascade_restarts(n: int, mv_k: int) -> list[int]:
    """Slices whose Z multiplexer restarts from zero for sparsity ``n`` (slice 0 always does)."""
    return [j for j in range(mv_k) if j % min(n, CASCADE_LIMIT) == 0]


def reduction_taps(n: int, mv_k: int) -> list[list[int]]:
    """Per row of a pass, the slices whose P a reduction node reads (one per cascade)."""
    span = min(n, CASCADE_LIMIT)
    return [[e for e in range(r * n, (r + 1) * n) if (e + 1) % span == 0]
            for r in range(rows_per_pass(n, mv_k))]


def check_chain_config(config: AcceleratorConfig) -> None:
    """Raise ValueError naming the field when the chain cannot be built for ``config``."""
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"expected an AcceleratorConfig, not {config!r}")
    if CASCADE_LIMIT % config.dsp_group:
        raise ValueError(f"dsp_group = {config.dsp_group} must divide the packed cascade limit "
                         f"{CASCADE_LIMIT} (reduction nodes sit at group ends)")
    for n in config.sparsity_codes:
        rows = config.mv_k // n
        if config.mv_k % n or BLOCK % rows:
            raise ValueError(f"mv_k = {config.mv_k} must hold a whole number of N = {n} rows "
                             f"that divides the {BLOCK} rows of a block")


#: Bits of one lane's sum over a cascade of at most CASCADE_LIMIT INT8 products (the split
#: window of :func:`~flightllm.hw.dsp48e2.split_lanes`, ``[-(2**17 - 1), 2**17]``).
LANE_BITS = 19
#: Bits of one lane's sum over a block row (two cascades at most: 16 products).
ROW_BITS = LANE_BITS + 1

def _tail_layout(pairs: int) -> data.StructLayout:
    fields = {"pidx": unsigned(4), "first": unsigned(1), "last": unsigned(1)}
    if pairs > 1:
        fields["pair"] = range(pairs)
    return data.StructLayout(fields)


_OPERAND = data.StructLayout({"w": signed(8), "x0": signed(8), "x1": signed(8)})
_PART = data.StructLayout({"lo": signed(LANE_BITS), "hi": signed(LANE_BITS)})


def mux_tree(values, sel) -> Value:
    """``values[sel]`` as a binary tree of 2:1 multiplexers, one level per select bit.

    Synthesis packs such a tree into LUT6s and MUXF7/MUXF8 (four LUTs for 16 inputs); a case
    statement or a variable part-select over the same values becomes an AND-OR tree or a
    shifter of up to half as many LUTs again. ``len(values)`` must be ``2 ** len(sel)``.
    """
    level = [Value.cast(v) for v in values]
    if len(level) != 1 << len(Value.cast(sel)):
        raise ValueError(f"mux_tree needs 2 ** {len(Value.cast(sel))} values, not {len(level)}")
    for bit in range(len(Value.cast(sel))):
        level = [Mux(sel[bit], level[i + 1], level[i]) for i in range(0, len(level), 2)]
    return level[0]


class DSPChain(wiring.Component):
    """A configurable sparse DSP chain of ``config.mv_k`` packed slices.

    Args:
        config: the accelerator configuration (``mv_k``, ``dsp_group``, ``sparsity_codes``).
        dsp_impl: ``"twin"`` (simulation) or ``"xilinx"`` (the primitive), see
            :class:`~flightllm.hw.dsp48e2.DSP48E2`.
        result_depth: strips whose results the output FIFO holds; strips still in the pipeline
            count against it, so short strips need ``~(mv_k + 6) / passes_per_strip`` slots to
            run without bubbles. A chain with ``pairs`` > 1 holds at least ``pairs + 1``.
        pairs: token pairs one weight pass serves (a power of two; MM only, see
            :attr:`AcceleratorConfig.mm_pair_group`). The chain holds each weight beat for one
            pass per pair of the activation beat's group, ``x[pair]`` feeding the sparse
            multiplexers, and keeps a bank of accumulators per pair; a strip ends with one
            result beat per pair, in pair order. 1 streams the weights once per pair.

    Ports:
        weights (In stream of :func:`weight_beat_layout`): one pass per beat.
        acts (In stream of :func:`act_beat_layout`): one K block (of every pair of the group)
            per beat, held for all the passes of the block.
        results (Out stream of :func:`result_beat_layout`): one strip (of one pair) per beat.

    Sparsity codes the configuration does not list are not built; a beat carrying one
    contributes nothing.
    """

    def __init__(self, config: AcceleratorConfig, *, dsp_impl: str = "twin",
                 result_depth: int = 4, pairs: int = 1):
        check_chain_config(config)
        if not isinstance(pairs, int) or pairs < 1 or pairs & (pairs - 1) or pairs > 8:
            raise ValueError(f"pairs must be a power of two from 1 to 8, not {pairs!r}")
        if dsp_impl not in IMPLEMENTATIONS:
            raise ValueError(f"dsp_impl must be one of {IMPLEMENTATIONS}, not {dsp_impl!r}")
        if not isinstance(result_depth, int) or result_depth < 1:
            raise ValueError(f"result_depth must be a positive integer, not {result_depth!r}")
        self.config = config
        self.mv_k = config.mv_k
        self.dsp_impl = dsp_impl
        self.result_depth = result_depth
        self.pairs = pairs
        #: (code, N) pairs the chain is built for.
        self.codes = [(c, n) for c, n in enumerate(SPARSITY_CODES) if n in config.sparsity_codes]
        super().__init__({
            "weights": In(stream.Signature(weight_beat_layout(self.mv_k))),
            "acts": In(stream.Signature(act_beat_layout(pairs))),
            "results": Out(stream.Signature(result_beat_layout())),
        })

    @property
    def latency(self) -> int:
        """Clock edges from accepting a strip's last pass to the earliest edge that can take
        its result beat."""
        return self.mv_k + LATENCY + 4

    def elaborate(self, platform):
        m = Module()
        K = self.mv_k
        wp = self.weights.p
        xp = self.acts.p

        # ---------------------------------------------------------------- flow control
        G = self.pairs
        # A group's strip ends push results in consecutive cycles. A two-deep buffered FIFO
        # (one register behind the output register) cannot take a write in the cycle after
        # one into it when empty, whatever its level says, so groups get a deeper one.
        fifo_depth = self.result_depth if G == 1 else max(self.result_depth, G + 1)
        fifo = m.submodules.fifo = SyncFIFOBuffered(width=result_beat_layout().size,
                                                    depth=fifo_depth)
        # The pair of the group this pass is for; the weight beat stays until the last one.
        pair = Signal(range(G)) if G > 1 else None
        last_pair = (pair == xp.pairs_m1) if G > 1 else None
        x_pair = xp.x[pair] if G > 1 else xp.x
        pidx = Signal(4)
        last_pass = Signal()
        with m.Switch(wp.code):
            for code, n in self.codes:
                with m.Case(code):
                    m.d.comb += last_pass.eq(pidx == passes_per_block(n, K) - 1)
            with m.Default():
                m.d.comb += last_pass.eq(1)
        ends_strip = wp.last & last_pass
        pending = Signal(range(fifo_depth + 1))
        room = fifo.level + pending < fifo_depth
        go = room | ~ends_strip
        if G == 1:
            m.d.comb += [
                self.weights.ready.eq(self.acts.valid & go),
                self.acts.ready.eq(self.weights.valid & last_pass & go),
            ]
            fire = self.weights.valid & self.weights.ready
            with m.If(fire):
                m.d.sync += pidx.eq(Mux(last_pass, 0, pidx + 1))
        else:
            m.d.comb += [
                self.weights.ready.eq(self.acts.valid & go & last_pair),
                self.acts.ready.eq(self.weights.valid & last_pass & go & last_pair),
            ]
            fire = self.weights.valid & self.acts.valid & go
            with m.If(fire):
                m.d.sync += pair.eq(Mux(last_pair, 0, pair + 1))
                with m.If(last_pair):
                    m.d.sync += pidx.eq(Mux(last_pass, 0, pidx + 1))

        # ---------------------------------------------------------------- control line
        # Three lines of the pass accepted k + 1 cycles earlier: ``valid`` (with reset, so that
        # a reset drops passes in flight), the code (tapped at every configurable link) and the
        # rest, read only at the end. The last two have no reset and no enable, so a synthesis
        # tool maps them to shift registers (SRL16/SRLC32E) instead of flip-flops.
        depth = K + LATENCY + 1
        valid = [Signal(name=f"valid{k}") for k in range(depth)]
        code = [Signal(2, name=f"code{k}", reset_less=True) for k in range(depth)]
        tail = [Signal(_tail_layout(G), name=f"tail{k}", reset_less=True) for k in range(depth)]
        m.d.sync += [valid[0].eq(fire), code[0].eq(wp.code),
                     tail[0].eq(Cat(pidx, wp.first, wp.last, *([pair] if G > 1 else [])))]
        for k in range(1, depth):
            m.d.sync += [valid[k].eq(valid[k - 1]), code[k].eq(code[k - 1]),
                         tail[k].eq(tail[k - 1])]

        # ---------------------------------------------------------------- sparse mux + skew
        # The operand register takes whatever is on the ports every cycle: a pass that was not
        # accepted computes garbage that nothing reads (every accepted pass restarts the cascade
        # at slice 0, and ``valid`` gates the accumulators). No reset and no enable anywhere in
        # the skew lines, so they become shift registers.
        operands = []
        for i in range(K):
            stage = Signal(_OPERAND, name=f"op{i}_0", reset_less=True)
            # One assignment of the whole register (not field by field, which reads as a
            # register that may hold its value and keeps it out of the shift register).
            m.d.sync += stage.eq(Cat(
                wp.w[i], mux_tree([x_pair[0][k] for k in range(BLOCK)], wp.idx[i]),
                mux_tree([x_pair[1][k] for k in range(BLOCK)], wp.idx[i])))
            for s in range(1, i + 1):
                nxt = Signal(_OPERAND, name=f"op{i}_{s}", reset_less=True)
                m.d.sync += nxt.eq(stage)
                stage = nxt
            operands.append(stage)

        # ---------------------------------------------------------------- DSP cascade
        dsps = []
        for i in range(K):
            dsp = m.submodules[f"dsp{i}"] = DSP48E2(impl=self.dsp_impl)
            op = operands[i]
            a, d = pack_lanes(op.x0, op.x1)
            m.d.comb += [
                dsp.a.eq(a), dsp.d.eq(d), dsp.b.eq(op.w), dsp.c.eq(0),
                dsp.inmode.eq(INMODE_A_PLUS_D), dsp.alumode.eq(ALUMODE_SUM),
                dsp.pcin.eq(dsps[i - 1].pcout if i else 0),
            ]
            if i == 0:
                m.d.comb += dsp.opmode.eq(OPMODE_M)
            elif i % self.config.dsp_group:
                m.d.comb += dsp.opmode.eq(OPMODE_PCIN_M)     # fixed link inside a group
            else:
                # Configurable link. OPMODE acts CTRL_LEAD cycles after the operands it goes
                # with; slice i's operands arrive i + 1 cycles after acceptance, as code[i].
                with m.Switch(code[i + CTRL_LEAD]):
                    for c, n in self.codes:
                        with m.Case(c):
                            restart = i in cascade_restarts(n, K)
                            m.d.comb += dsp.opmode.eq(OPMODE_M if restart else OPMODE_PCIN_M)
                    with m.Default():
                        m.d.comb += dsp.opmode.eq(OPMODE_M)
            dsps.append(dsp)

        # ---------------------------------------------------------------- reduction nodes
        # A node at slice e splits P (ready LATENCY + 1 + e cycles after acceptance) into lanes
        # and is deskewed by K - e registers so that every node of a pass is seen together
        # with the control of K + LATENCY. A lane sum of at most CASCADE_LIMIT INT8 products
        # fits LANE_BITS, so only that much of each lane is kept.
        taps = sorted({e for _, n in self.codes for row in reduction_taps(n, K) for e in row})
        parts = {}
        for e in taps:
            lo, hi = split_lanes(dsps[e].p)
            stage = Signal(_PART, name=f"red{e}_0", reset_less=True)
            m.d.sync += stage.eq(Cat(lo[:LANE_BITS], hi[:LANE_BITS]))
            for s in range(1, K - e):
                nxt = Signal(_PART, name=f"red{e}_{s}", reset_less=True)
                m.d.sync += nxt.eq(stage)
                stage = nxt
            parts[e] = stage

        # ---------------------------------------------------------------- accumulators
        done_valid, done_code, done = valid[K + LATENCY], code[K + LATENCY], tail[K + LATENCY]
        row_sums = {}
        for c, n in self.codes:
            sums = []
            for r, row_taps in enumerate(reduction_taps(n, K)):
                pair = []
                for lane in ("lo", "hi"):
                    total = Signal(signed(ROW_BITS), name=f"sum_c{c}_r{r}_{lane}")
                    m.d.comb += total.eq(reduce(operator.add,
                                                (getattr(parts[e], lane) for e in row_taps)))
                    pair.append(total)
                sums.append(pair)
            row_sums[c] = sums

        # The accumulators are the strip's result: it enters the FIFO the cycle after the
        # strip's last update, straight from the registers (with pairs > 1, through the choice
        # of the pair's bank), while the next strip's first pass may already restart them.
        result = Signal(result_beat_layout())
        pushed_pair = Signal(range(G)) if G > 1 else None
        for r in range(BLOCK):
            update = Signal(name=f"upd{r}")
            add = [Signal(signed(ROW_BITS), name=f"add{r}_{lane}") for lane in range(LANES)]
            with m.Switch(done_code):
                for c, n in self.codes:
                    rows = rows_per_pass(n, K)
                    with m.Case(c):
                        m.d.comb += update.eq(done_valid & (done.pidx == r // rows))
                        m.d.comb += [add[lane].eq(row_sums[c][r % rows][lane])
                                     for lane in range(LANES)]
            for lane in range(LANES):
                if G == 1:
                    acc = Signal(signed(32), name=f"acc{r}_{lane}", reset_less=True)
                    with m.If(update):
                        m.d.sync += acc.eq(Mux(done.first, 0, acc) + add[lane])
                    m.d.comb += result.y[lane][r].eq(acc)
                    continue
                # One adder per accumulator: the pass's bank is read, added to and written.
                # The first pass of a strip clears with an AND, not a Mux: a 2:1 mux after the
                # bank's 4:1 is a 5-input mux that Yosys's -widemux turns into four LUT2s and
                # three MUXF7/8 per bit (+3k LUTs a chain), where the AND folds into the
                # adder's LUTs.
                banks = [Signal(signed(32), name=f"acc{r}_{lane}_p{g}", reset_less=True)
                         for g in range(G)]
                total = Signal(signed(32), name=f"acc{r}_{lane}_next")
                m.d.comb += total.eq((mux_tree(banks, done.pair) & ~done.first.replicate(32))
                                     + add[lane])
                for g, acc in enumerate(banks):
                    with m.If(update & (done.pair == g)):
                        m.d.sync += acc.eq(total)
                m.d.comb += result.y[lane][r].eq(mux_tree(banks, pushed_pair))

        push = Signal()
        with m.Switch(done_code):
            for c, n in self.codes:
                with m.Case(c):
                    m.d.comb += push.eq(done_valid & done.last
                                        & (done.pidx == passes_per_block(n, K) - 1))
            with m.Default():
                m.d.comb += push.eq(done_valid & done.last)
        pushed = Signal()
        m.d.sync += pushed.eq(push)
        if G > 1:
            m.d.sync += pushed_pair.eq(done.pair)
        m.d.comb += [fifo.w_en.eq(pushed), fifo.w_data.eq(result)]
        m.d.sync += pending.eq(pending + (fire & ends_strip) - pushed)

        m.d.comb += [
            self.results.valid.eq(fifo.r_rdy),
            self.results.payload.eq(fifo.r_data),
            fifo.r_en.eq(self.results.ready),
        ]
        return m
