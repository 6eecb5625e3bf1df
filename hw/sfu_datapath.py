"""The special-function unit's lane pipeline: ``lanes`` identical lanes, three multiplier stages
shared by every function, never stalled.

Each pipeline item is one beat of ``lanes`` elements and carries its *kind* (what the
sequencer in :mod:`flightllm.hw.sfu` issued it for); the command's fields (``func``, ``m1``,
``s1``, ``m2``, ``s2``, ``d_buf``, ``defer``, ``beta``) and the row constants hold still while
items are in flight. Per lane, in contract notation (``rsr`` = ``rshift_round``):

========  =============================  =====================  ==========================
kind      stage 1 (``P1``, ``R1``)       stage 2 (``P2``, ``R2``) stage 3 (``P3``, ``R3``)
========  =============================  =====================  ==========================
REQUANT   ``rsr(a*m1, s1)``, sat32       --                     --
ADD       ``rsr(a*m1 + (b*m2 << s2), s1)``, sat32               --
MUL       ``sat32(rsr(a*b, s1))``        ``rsr(.*m2, s2)``      --
SILU...   ``t = rsr(x*m1, s1)``, table   ``g = rsr(x*G, 15)``   ``rsr(g*m2, s2)``
RELU      --                             ``g = x if x > 0``     ``rsr(g*m2, s2)``
SQUARE    ``x*x`` summed (norm stats)    --                     --
EXP       ``u = -rsr(d*m1, s1)``, exp2   deferred: ``rsr(e*127, 23)``  --
PROB      ``min(127, rsr(e*R, 47))``     --                     --
NORM      ``(x - mu) * r``; ``a*a``      ``rsr(.*gamma, 15+k) + beta``  ``rsr(., s1)``
ROPE      ``v*c -/+ w*s``                ``rsr(.*m1, 14+s1)``   --
========  =============================  =====================  ==========================

Stage 1 has two multipliers, ``X1*C1`` (34 x 33 bits) and ``Y1*D1`` (32 x 18, shifted left by
``s2`` for ADD); their sum is ``P1``, except for NORM, whose ``(x - mu) * r`` uses the second
and whose first squares the item's ``a`` lanes: the next row's norm inputs ride along, so the
next row's statistics pass shares the issue slot with this row's output pass. Stage 2 is
49 x 18 bits, stage 3 50 x 17. Then saturation to the destination's type (INT8 for ABUF, else
INT32) and zero in the lanes past the row's end. The table ROM (``gate``) is the three
activation gates and ``exp2`` of :func:`flightllm.contract.numerics.tables` in one array, one
copy per two lanes (a block RAM's two read ports).

Stages (one register each): issue -> s1 (item) -> operands s2 -> ``P1`` s3 -> ``R1``, table
address s4 -> table data, ``X2`` s5 -> ``P2`` s6 -> ``R2`` s7 -> ``P3`` s8 -> ``R3`` and
saturation s9, the result. Taps: squares (SQUARE and NORM items) summed at s4, exponentials
written back and summed at s5. Intermediates are 64-bit two's complement like the contract's
numpy ``int64``; the numerics doc's range table shows nothing reaches 2**63.
"""

import numpy as np
from amaranth import *
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from flightllm.contract import numerics as nm
from flightllm.contract.isa import Buffer, MiscFunc

from .sfu_arith import rshift_round, saturate
from .sfu_stats import EXP_SUM_BITS, SQUARE_SUM_BITS

__all__ = [
    "Kind", "SFUDatapath", "GATE_FUNCS", "gate_rom_contents", "item_layout",
    "row_constants_layout", "result_beat_layout", "LATENCY",
]

#: Activations with a gate table, in ROM order; each table is ``ACT_ENTRIES`` long.
GATE_FUNCS = (MiscFunc.SILU, MiscFunc.GELU_TANH, MiscFunc.GELU_ERF)
ACT_LIMIT = nm.ACT_RANGE << nm.ACT_FRAC_BITS
ACT_ENTRIES = 2 * ACT_LIMIT
EXP2_BASE = len(GATE_FUNCS) * ACT_ENTRIES
ONE_Q15 = 1 << 15
#: exp2 entries reach 2**15, so ``(exp2 << 8) >> whole`` is zero from whole = 24 on.
EXP_ZERO_FROM = 24 << nm.EXP2_FRAC_BITS
#: Cycles from an item's issue (the cycle its streams handshake) to its result register.
LATENCY = 9


class Kind(enum.Enum, shape=3):
    """What the sequencer issued an item for."""
    ELEM = 0     # REQUANT, ADD, MUL and the activations: one result beat
    SQUARE = 1   # norm statistics pass: squares summed, no result
    EXP = 2      # softmax exponentials: written back, or (deferred) INT8 weights out
    PROB = 3     # normalised softmax probabilities
    NORM = 4     # RMSNorm / LayerNorm outputs
    ROPE = 5     # rotary embedding outputs


def gate_rom_contents() -> list[int]:
    """The gate ROM: silu, gelu_tanh, gelu_erf gates (Q15, 4096 each), then exp2 (256)."""
    t = nm.tables()
    parts = [t[f.name.lower()] for f in GATE_FUNCS] + [t["exp2"]]
    return [int(v) for v in np.concatenate(parts)]


def item_layout(lanes: int, addr_bits: int) -> data.StructLayout:
    """One issued beat: tags, lane flags and the stream operands (row buffer data joins at s1).

    ``keep`` bit i: lane i is inside the row; ``first`` bit i (ROPE): the lane is the first
    element of its pair; ``pad``: a softmax zero-fill beat; ``out``: the item has a result.
    """
    lane = data.ArrayLayout(signed(32), lanes)
    return data.StructLayout({
        "valid": 1, "kind": Kind, "out": 1, "last": 1, "pad": 1, "addr": unsigned(addr_bits),
        "keep": unsigned(lanes), "first": unsigned(lanes),
        "a": lane, "b": lane,
        "p0": data.ArrayLayout(signed(16), lanes), "p1": data.ArrayLayout(signed(32), lanes),
    })


def row_constants_layout() -> data.StructLayout:
    """Per-row constants: softmax maximum and reciprocal, norm mean, rsqrt and its shift."""
    return data.StructLayout({
        "max": signed(32), "recip": unsigned(32), "mu": signed(nm.NORM_INPUT_BITS + 1),
        "rsqrt": unsigned(16), "shift": unsigned(6),
    })


def result_beat_layout(lanes: int) -> data.StructLayout:
    """One output beat: ``lanes`` results (saturated to the destination type) and the
    row's-last-beat flag."""
    return data.StructLayout({"y": data.ArrayLayout(signed(32), lanes), "last": 1})


_TAG = data.StructLayout({"valid": 1, "kind": Kind, "out": 1, "last": 1, "pad": 1})
_ACTIVATIONS = (*GATE_FUNCS, MiscFunc.RELU)


class SFUDatapath(wiring.Component):
    """``lanes`` lanes of the SFU arithmetic (module docstring), fed one item per cycle.

    Args:
        lanes: elements per beat.
        addr_bits: row-buffer address bits carried for the exponential write-back.

    Ports:
        item (In :func:`item_layout`): the issued beat, registered by the sequencer (s1).
        own, plus, minus (In lanes x signed 32): row-buffer data at s1: the item's own beat
            and, for ROPE, the windows at +offset and -offset (already rotated to the lanes).
        cmd (In): the MISC command; row (In :func:`row_constants_layout`).
        sq_valid / sq_sum (Out): a SQUARE item's sum of squares.
        exp_valid / exp_sum (Out): an EXP item's sum of exponentials.
        wb_en / wb_addr / wb_data (Out): exponentials to write back (normalised softmax).
        result_valid / result (Out :func:`result_beat_layout`): a result beat (s9).
        busy (Out 1): an item is in flight.
    """

    def __init__(self, *, lanes: int, addr_bits: int, command_layout):
        self.lanes, self.addr_bits = lanes, addr_bits
        lane = data.ArrayLayout(signed(32), lanes)
        super().__init__({
            "item": In(item_layout(lanes, addr_bits)),
            "own": In(lane), "plus": In(lane), "minus": In(lane),
            "cmd": In(command_layout), "row": In(row_constants_layout()),
            "sq_valid": Out(1), "sq_sum": Out(SQUARE_SUM_BITS),
            "exp_valid": Out(1), "exp_sum": Out(EXP_SUM_BITS),
            "wb_en": Out(1), "wb_addr": Out(addr_bits), "wb_data": Out(lane),
            "result_valid": Out(1), "result": Out(result_beat_layout(lanes)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        cmd, rc, item = self.cmd, self.row, self.item
        func = cmd.func
        is_act = Signal()
        m.d.comb += is_act.eq(sum(func == f for f in _ACTIVATIONS) != 0)

        # One copy per two lanes: a block RAM has two read ports, and synthesis tools do not
        # all replicate a ROM with more.
        rom_rd = []
        for copy in range((L + 1) // 2):
            rom = Memory(shape=unsigned(16), depth=EXP2_BASE + (1 << nm.EXP2_FRAC_BITS),
                         init=gate_rom_contents())
            m.submodules[f"gate_rom{copy}"] = rom
            rom_rd += [rom.read_port() for _ in range(min(2, L - 2 * copy))]

        # ---------------------------------------------------------------- tags
        tag = {s: Signal(_TAG, name=f"tag{s}") for s in range(2, 10)}
        addr = {s: Signal(self.addr_bits, name=f"addr{s}") for s in (2, 3, 4)}
        m.d.comb += self.busy.eq(item.valid | sum(tag[s].valid for s in tag) != 0)
        m.d.sync += [tag[2].valid.eq(item.valid), tag[2].kind.eq(item.kind),
                     tag[2].out.eq(item.out), tag[2].last.eq(item.last), tag[2].pad.eq(item.pad),
                     addr[2].eq(item.addr), addr[3].eq(addr[2]), addr[4].eq(addr[3])]
        for s in range(3, 10):
            m.d.sync += tag[s].eq(tag[s - 1])

        def kind_is(s, *kinds):
            return sum(tag[s].kind == k for k in kinds) != 0

        # Shift amounts per stage, from the item's kind and the command.
        sh1, sh2, sh3 = Signal(6), Signal(7), Signal(6)
        with m.Switch(tag[3].kind):
            with m.Case(Kind.ELEM, Kind.EXP):
                m.d.comb += sh1.eq(cmd.s1)
            with m.Case(Kind.PROB):
                m.d.comb += sh1.eq(54 - nm.SOFTMAX_OUT_BITS)
        with m.Switch(tag[6].kind):
            with m.Case(Kind.ELEM):
                m.d.comb += sh2.eq(Mux(func == MiscFunc.MUL, cmd.s2, Mux(is_act, 15, 0)))
            with m.Case(Kind.EXP):
                m.d.comb += sh2.eq(23)
            with m.Case(Kind.NORM):
                m.d.comb += sh2.eq(15 + rc.shift)
            with m.Case(Kind.ROPE):
                m.d.comb += sh2.eq(nm.ROPE_FRAC_BITS + cmd.s1)
        with m.Switch(tag[8].kind):
            with m.Case(Kind.ELEM):
                m.d.comb += sh3.eq(Mux(is_act, cmd.s2, 0))
            with m.Case(Kind.NORM):
                m.d.comb += sh3.eq(cmd.s1)

        sq_terms, exp_terms = [], []
        for i in range(L):
            self._lane(m, i, tag, rom_rd[i], sh1, sh2, sh3, is_act, sq_terms, exp_terms)

        m.d.sync += [
            self.sq_valid.eq(tag[3].valid & kind_is(3, Kind.SQUARE, Kind.NORM)),
            self.sq_sum.eq(sum(sq_terms)),
            self.exp_valid.eq(tag[4].valid & kind_is(4, Kind.EXP)),
            self.exp_sum.eq(sum(exp_terms)),
        ]
        m.d.comb += [
            self.wb_en.eq(tag[4].valid & kind_is(4, Kind.EXP) & ~cmd.defer),
            self.wb_addr.eq(addr[4]),
            self.result_valid.eq(tag[9].valid & tag[9].out),
            self.result.last.eq(tag[9].last),
        ]
        return m

    def _lane(self, m, i, tag, rom_rd, sh1, sh2, sh3, is_act, sq_terms, exp_terms):
        cmd, rc, item = self.cmd, self.row, self.item
        func = cmd.func
        out8 = cmd.d_buf == Buffer.ABUF

        def sig(shape, stage, what):
            return Signal(shape, name=f"l{i}_{what}{stage}")

        # ------------------------------------------------ s1 -> s2: operands
        a, own = item.a[i], self.own[i]
        keep1 = item.keep[i]
        x1, c1 = Signal(signed(34)), Signal(signed(33))
        y1, d1 = Signal(signed(32)), Signal(signed(18))
        live1 = Signal()
        m.d.comb += [x1.eq(a), c1.eq(cmd.m1), y1.eq(0), d1.eq(0), live1.eq(keep1)]
        with m.Switch(item.kind):
            with m.Case(Kind.ELEM):
                with m.Switch(func):
                    with m.Case(MiscFunc.ADD):
                        m.d.comb += [y1.eq(item.b[i]), d1.eq(cmd.m2)]
                    with m.Case(MiscFunc.MUL):
                        m.d.comb += c1.eq(item.b[i])
            with m.Case(Kind.SQUARE):
                m.d.comb += c1.eq(a)
            with m.Case(Kind.EXP):
                m.d.comb += [x1.eq(own - self.row.max),
                             live1.eq(keep1 & ~item.pad & (own != nm.MASKED))]
            with m.Case(Kind.PROB):
                m.d.comb += [x1.eq(Mux(item.pad, 0, own)), c1.eq(rc.recip)]
            with m.Case(Kind.NORM):
                # x*r on the second multiplier; the first squares the front's rider (or 0).
                m.d.comb += [c1.eq(a), y1.eq(own - rc.mu), d1.eq(rc.rsqrt)]
            with m.Case(Kind.ROPE):
                first = item.first[i]
                m.d.comb += [x1.eq(own), c1.eq(item.p0[i]),
                             y1.eq(Mux(first, self.plus[i], self.minus[i])),
                             d1.eq(Mux(first, -item.p1[i], item.p1[i]))]
        X1, C1, Y1, D1 = (sig(v.shape(), 2, n) for v, n in ((x1, "x1"), (c1, "c1"), (y1, "y1"),
                                                             (d1, "d1")))
        x2, p0_2, p1_2 = sig(signed(32), 2, "x"), sig(signed(16), 2, "p0"), sig(signed(32), 2, "p1")
        live2, keep2 = sig(1, 2, "live"), sig(1, 2, "keep")
        m.d.sync += [X1.eq(x1), C1.eq(c1), Y1.eq(y1), D1.eq(d1), x2.eq(a),
                     p0_2.eq(item.p0[i]), p1_2.eq(item.p1[i]), live2.eq(live1), keep2.eq(keep1)]

        # ------------------------------------------------ s2 -> s3: the two products
        shy = Mux((tag[2].kind == Kind.ELEM) & (func == MiscFunc.ADD), cmd.s2[:5], 0)
        PA, PB = sig(signed(64), 3, "PA"), sig(signed(64), 3, "PB")
        x3, p0_3, p1_3 = sig(signed(32), 3, "x"), sig(signed(16), 3, "p0"), sig(signed(32), 3, "p1")
        live3, keep3 = sig(1, 3, "live"), sig(1, 3, "keep")
        m.d.sync += [PA.eq(X1 * C1), PB.eq((Y1 * D1) << shy), x3.eq(x2), p0_3.eq(p0_2),
                     p1_3.eq(p1_2), live3.eq(live2), keep3.eq(keep2)]

        # ------------------------------------------------ s3 -> s4: R1, table address
        P1 = Signal(signed(64), name=f"l{i}_P1")
        m.d.comb += P1.eq(PB + Mux(tag[3].kind == Kind.NORM, 0, PA))
        R1 = rshift_round(m, P1, sh1, name=f"l{i}_R1")
        sq_terms.append(Mux((tag[3].kind == Kind.SQUARE) | (tag[3].kind == Kind.NORM),
                            PA[:SQUARE_SUM_BITS], 0))
        v3 = Signal(signed(49), name=f"l{i}_v3")
        m.d.comb += v3.eq(R1)
        with m.Switch(tag[3].kind):
            with m.Case(Kind.ELEM):
                m.d.comb += v3.eq(saturate(R1, 32))
            with m.Case(Kind.PROB):
                m.d.comb += v3.eq(Mux(R1 > nm.INT8_MAX, nm.INT8_MAX, R1))
        # Activations: t = R1 indexes the gate table inside [-8, 8) in Q8.
        above, below = R1 >= ACT_LIMIT, R1 < -ACT_LIMIT
        t_index = (R1 + ACT_LIMIT)[:12]
        # Exponentials: u = max(-R1, 0); table at u mod 256, shift by u / 256.
        u = Signal(64, name=f"l{i}_u")
        m.d.comb += u.eq(Mux(R1 < 0, -R1, 0))
        big = u >= EXP_ZERO_FROM
        rom_addr = Signal(len(rom_rd.addr), name=f"l{i}_rom_addr")
        with m.If(tag[3].kind == Kind.EXP):
            m.d.comb += rom_addr.eq(EXP2_BASE + u[:nm.EXP2_FRAC_BITS])
        with m.Else():
            for k, f in enumerate(GATE_FUNCS):
                with m.If(func == f):
                    m.d.comb += rom_addr.eq(k * ACT_ENTRIES + t_index)
        m.d.comb += rom_rd.addr.eq(rom_addr)
        V1 = sig(signed(49), 4, "v")
        x4, p0_4, p1_4 = sig(signed(32), 4, "x"), sig(signed(16), 4, "p0"), sig(signed(32), 4, "p1")
        live4, keep4 = sig(1, 4, "live"), sig(1, 4, "keep")
        above4, below4, big4 = sig(1, 4, "above"), sig(1, 4, "below"), sig(1, 4, "big")
        whole4 = sig(5, 4, "whole")
        m.d.sync += [V1.eq(v3), x4.eq(x3), p0_4.eq(p0_3), p1_4.eq(p1_3), live4.eq(live3),
                     keep4.eq(keep3), above4.eq(above), below4.eq(below), big4.eq(big),
                     whole4.eq(u[nm.EXP2_FRAC_BITS:nm.EXP2_FRAC_BITS + 5])]

        # ------------------------------------------------ s4 -> s5: table data, X2
        table = rom_rd.data
        gate = Signal(17, name=f"l{i}_gate")
        with m.If(func == MiscFunc.RELU):
            m.d.comb += gate.eq(Mux(x4 > 0, ONE_Q15, 0))
        with m.Else():
            m.d.comb += gate.eq(Mux(above4, ONE_Q15, Mux(below4, 0, table)))
        e = Signal(24, name=f"l{i}_e")
        m.d.comb += e.eq(Mux(live4 & ~big4, (table << 8) >> whole4, 0))
        exp_terms.append(Mux(tag[4].kind == Kind.EXP, e, 0))
        m.d.comb += self.wb_data[i].eq(e)
        x2_ = Signal(signed(49), name=f"l{i}_op2x")
        c2_ = Signal(signed(18), name=f"l{i}_op2c")
        m.d.comb += [x2_.eq(V1), c2_.eq(1)]
        with m.Switch(tag[4].kind):
            with m.Case(Kind.ELEM):
                with m.If(func == MiscFunc.MUL):
                    m.d.comb += c2_.eq(cmd.m2)
                with m.Elif(is_act):
                    m.d.comb += [x2_.eq(x4), c2_.eq(gate)]
            with m.Case(Kind.EXP):
                m.d.comb += [x2_.eq(e), c2_.eq(nm.INT8_MAX)]
            with m.Case(Kind.NORM):
                m.d.comb += c2_.eq(p0_4)
            with m.Case(Kind.ROPE):
                m.d.comb += c2_.eq(cmd.m1)
        X2, C2 = sig(signed(49), 5, "X"), sig(signed(18), 5, "C")
        p1_5, keep5 = sig(signed(32), 5, "p1"), sig(1, 5, "keep")
        m.d.sync += [X2.eq(x2_), C2.eq(c2_), p1_5.eq(p1_4), keep5.eq(keep4)]

        # ------------------------------------------------ s5 -> s6: P2
        P2 = sig(signed(64), 6, "P")
        p1_6, keep6 = sig(signed(32), 6, "p1"), sig(1, 6, "keep")
        m.d.sync += [P2.eq(X2 * C2), p1_6.eq(p1_5), keep6.eq(keep5)]

        # ------------------------------------------------ s6 -> s7: R2 (+ beta), X3
        R2 = rshift_round(m, P2, sh2, name=f"l{i}_R2")
        beta = Mux((tag[6].kind == Kind.NORM) & cmd.beta, p1_6, 0)
        r2b = Signal(signed(64), name=f"l{i}_r2b")
        m.d.comb += r2b.eq(R2 + beta)
        wide = (tag[6].kind == Kind.NORM) | ((tag[6].kind == Kind.ELEM) & is_act)
        X3, C3 = sig(signed(50), 7, "X"), sig(signed(17), 7, "C")
        keep7 = sig(1, 7, "keep")
        m.d.sync += [X3.eq(Mux(wide, r2b, saturate(r2b, 32))),
                     C3.eq(Mux((tag[6].kind == Kind.ELEM) & is_act, cmd.m2, 1)),
                     keep7.eq(keep6)]

        # ------------------------------------------------ s7 -> s8: P3
        P3 = sig(signed(64), 8, "P")
        keep8 = sig(1, 8, "keep")
        m.d.sync += [P3.eq(X3 * C3), keep8.eq(keep7)]

        # ------------------------------------------------ s8 -> s9: R3, saturation
        R3 = rshift_round(m, P3, sh3, name=f"l{i}_R3")
        y = Mux(out8, saturate(R3, 8), saturate(R3, 32))
        m.d.sync += self.result.y[i].eq(Mux(keep8, y, 0))
