"""The SFU's row buffer: one bank per lane, so that a window of ``lanes`` consecutive elements
starting anywhere can be read in one cycle.

Element ``j`` of the row lives in bank ``j mod lanes`` at address ``j // lanes``. Writes and
the ``own`` read port move whole aligned beats. The ``plus`` and ``minus`` ports read the windows
that start ``offset`` elements after and before the aligned beat ``addr``: for a window starting
at ``s``, bank ``b`` reads address ``s // lanes + (b < s mod lanes)`` and lane ``i`` takes bank
``(s + i) mod lanes``, a rotation by a per-command constant. ROPE uses them for each element's
pair partner; windows that start before the row read garbage only in lanes it ignores.
Reads are synchronous (data one cycle after the address) and return the old word when the
same address is written in the same cycle.
"""

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["RowBuffer"]


class RowBuffer(wiring.Component):
    """``lanes`` banks of ``depth`` INT32 words (module docstring).

    Ports:
        w_en, w_addr, w_data (In): write one aligned beat.
        addr (In): the aligned beat the read ports start from.
        offset (In 16): the window offset of ``plus`` / ``minus`` (held per command).
        own, plus, minus (Out lanes x signed 32): the read data, one cycle after ``addr``.
    """

    def __init__(self, *, lanes: int, depth: int):
        if lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"row buffer lanes must be a power of two, not {lanes!r}")
        self.lanes, self.depth = lanes, depth
        self.addr_bits = max(1, (depth - 1).bit_length())
        beat = data.ArrayLayout(signed(32), lanes)
        super().__init__({
            "w_en": In(1), "w_addr": In(self.addr_bits), "w_data": In(beat),
            "addr": In(17), "offset": In(16),
            "own": Out(beat), "plus": Out(beat), "minus": Out(beat),
        })

    def elaborate(self, platform):
        m = Module()
        L, LB = self.lanes, self.lanes.bit_length() - 1
        rot_plus = Signal(max(LB, 1))
        rot_minus = Signal(max(LB, 1))
        q_plus = Signal(18)
        q_minus = Signal(signed(19))
        m.d.comb += [
            q_plus.eq(self.addr + (self.offset >> LB)),
            q_minus.eq(self.addr - ((self.offset + L - 1) >> LB)),
        ]
        if LB:
            m.d.comb += [rot_plus.eq(self.offset[:LB]), rot_minus.eq((-self.offset)[:LB])]
        own, plus, minus = [], [], []
        for b in range(L):
            bank = Memory(shape=signed(32), depth=self.depth, init=[])
            m.submodules[f"bank{b}"] = bank
            wr = bank.write_port()
            ports = bank.read_port(), bank.read_port(), bank.read_port()
            m.d.comb += [
                wr.en.eq(self.w_en), wr.addr.eq(self.w_addr), wr.data.eq(self.w_data[b]),
                ports[0].addr.eq(self.addr),
                ports[1].addr.eq(q_plus + (b < rot_plus) if LB else q_plus),
                ports[2].addr.eq(q_minus + (b < rot_minus) if LB else q_minus),
            ]
            for got, port in zip((own, plus, minus), ports):
                got.append(port.data)
        rot_plus_q, rot_minus_q = Signal.like(rot_plus), Signal.like(rot_minus)
        m.d.sync += [rot_plus_q.eq(rot_plus), rot_minus_q.eq(rot_minus)]
        for i in range(L):
            m.d.comb += self.own[i].eq(own[i])
            if LB:
                m.d.comb += [self.plus[i].eq(Array(plus)[(rot_plus_q + i)[:LB]]),
                             self.minus[i].eq(Array(minus)[(rot_minus_q + i)[:LB]])]
            else:
                m.d.comb += [self.plus[i].eq(plus[0]), self.minus[i].eq(minus[0])]
        return m
