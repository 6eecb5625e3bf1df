"""Per-row constants of the special-function unit: the softmax reciprocal and the norm
statistics, computed once per row from the sums the lane pipeline accumulated.

One :class:`~flightllm.hw.sfu_arith.SeqDivider` serves every division (a command runs one
function, so nothing competes for it):

* softmax: ``R = 2**54 // S``; deferred ``R = 2**60 // (127 * S)``; 0 for a row with ``S = 0``;
* LayerNorm: ``mu = floor(sum(x) / n)`` as ``(sum(x) + n * 2**23) // n - 2**23`` (the inputs
  are saturated to 24 bits, so the biased sum is non-negative and an unsigned divider gives the
  floor); then the centred sum of squares by the exact identity
  ``sum((x - mu)**2) = sum(x**2) + mu * (n * mu - 2 * sum(x))``, which needs no second pass
  over the row;
* both norms: ``var = max(floor(V / n) + eps, 1)``, then the reciprocal square root from the
  contract's table: ``e = bit_length(var) - 1``, the 9 bits after the leading one
  (``((var << 9) >> e) mod 2**9``), ``parity = e & 1``; ``1 / sqrt(var) ~ r / 2**(15 + k)`` with
  ``k = e >> 1``.

Latency from ``start`` to ``done``: softmax ``divider + 2`` cycles; RMSNorm ``divider + 5``;
LayerNorm ``divider + 3 + divider + 5``, where a division takes ``2 + ceil(q / steps)``
cycles for a quotient of up to ``q`` bits (``q = bit_length(dividend) - bit_length(divisor) +
1``): 14 to 18 for a softmax reciprocal, about 14 for a mean, up to 27 for a variance.
"""

from amaranth import *
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from flightllm.contract import numerics as nm

from .sfu_arith import SeqDivider

__all__ = ["RowStats", "StatsMode", "NORM_BIAS", "SUM_BITS", "SQUARE_SUM_BITS", "EXP_SUM_BITS"]

#: Offset that makes a saturated norm input non-negative: x + 2**23 in [0, 2**24).
NORM_BIAS = 1 << (nm.NORM_INPUT_BITS - 1)
#: Row sums: of saturated norm inputs (signed), of their squares, of Q23 exponentials (rows up
#: to 2**16 elements).
SUM_BITS = nm.NORM_INPUT_BITS + 16 + 1
SQUARE_SUM_BITS = 2 * (nm.NORM_INPUT_BITS - 1) + 16
EXP_SUM_BITS = 23 + 1 + 16


class StatsMode(enum.Enum, shape=2):
    SOFTMAX = 0
    SOFTMAX_DEFERRED = 1
    RMSNORM = 2
    LAYERNORM = 3


class RowStats(wiring.Component):
    """The once-per-row divisions and the reciprocal square root (see the module docstring).

    Args:
        divider_steps: quotient bits per cycle of the divider.

    Ports:
        start (In 1), mode (In :class:`StatsMode`): begin; inputs are read at ``start``.
        exp_sum (In): ``S``, the row's sum of Q23 exponentials.
        sum_x (In signed), sum_x2 (In): sums of the saturated norm inputs and their squares.
        n (In 16): elements in the row; eps (In signed 32): the norm's epsilon (>= 0).
        done (Out 1): one cycle; the outputs below hold until the next ``done``.
        recip (Out 32): the softmax reciprocal ``R``.
        mu (Out signed 25): the LayerNorm mean (0 for RMSNorm).
        rsqrt (Out 16): ``r``, Q15; shift (Out 6): ``k``.
    """

    def __init__(self, *, divider_steps: int = 2):
        self.divider_steps = divider_steps
        super().__init__({
            "start": In(1), "mode": In(StatsMode),
            "exp_sum": In(EXP_SUM_BITS), "sum_x": In(signed(SUM_BITS)),
            "sum_x2": In(SQUARE_SUM_BITS), "n": In(16), "eps": In(signed(32)),
            "done": Out(1), "recip": Out(32), "mu": Out(signed(nm.NORM_INPUT_BITS + 1)),
            "rsqrt": Out(16), "shift": Out(6),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.div = div = SeqDivider(width=64, divisor_width=48, steps=self.divider_steps)
        rsqrt = nm.tables()["rsqrt"]
        m.submodules.rsqrt_rom = rom = Memory(shape=unsigned(16), depth=rsqrt.size,
                                              init=[int(v) for v in rsqrt.ravel()])
        rom_rd = rom.read_port()

        mode = Signal(StatsMode)
        n = Signal(16)
        eps = Signal(signed(32))
        sum_x = Signal(signed(SUM_BITS))
        sum_x2 = Signal(SQUARE_SUM_BITS)
        t = Signal(signed(SUM_BITS + 2))          # n * mu - 2 * sum(x)
        v = Signal(64)                             # centred sum of squares
        var = Signal(64)
        e = Signal(range(64))

        m.d.comb += div.start.eq(0)
        m.d.sync += self.done.eq(0)
        # Leading one of var and the 9 mantissa bits after it: the table's index.
        for bit in range(64):
            with m.If(var[bit]):
                m.d.comb += e.eq(bit)
        mant = Signal(nm.RSQRT_INDEX_BITS)
        m.d.comb += [
            mant.eq((Cat(C(0, nm.RSQRT_INDEX_BITS), var) >> e)[:nm.RSQRT_INDEX_BITS]),
            rom_rd.addr.eq(Cat(mant, e[0])),       # rsqrt[parity][index], row-major
        ]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [mode.eq(self.mode), n.eq(self.n), eps.eq(self.eps),
                                 sum_x.eq(self.sum_x), sum_x2.eq(self.sum_x2)]
                    with m.Switch(self.mode):
                        with m.Case(StatsMode.SOFTMAX, StatsMode.SOFTMAX_DEFERRED):
                            deferred = self.mode == StatsMode.SOFTMAX_DEFERRED
                            m.d.comb += [
                                div.dividend.eq(Mux(deferred, 1 << 60, 1 << 54)),
                                div.divisor.eq(Mux(deferred, self.exp_sum * 127, self.exp_sum)),
                                div.start.eq(self.exp_sum != 0),
                            ]
                            with m.If(self.exp_sum == 0):
                                m.d.sync += self.recip.eq(0)
                                m.next = "FINISH"
                            with m.Else():
                                m.next = "RECIP"
                        with m.Case(StatsMode.LAYERNORM):
                            m.d.comb += [
                                div.dividend.eq(self.sum_x + (self.n << (nm.NORM_INPUT_BITS - 1))),
                                div.divisor.eq(self.n),
                                div.start.eq(1),
                            ]
                            m.next = "MEAN"
                        with m.Default():
                            m.d.sync += [self.mu.eq(0), v.eq(self.sum_x2)]
                            m.next = "VARIANCE"
            with m.State("RECIP"):
                with m.If(div.done):
                    m.d.sync += self.recip.eq(div.quotient)
                    m.next = "FINISH"
            with m.State("MEAN"):
                with m.If(div.done):
                    m.d.sync += self.mu.eq(div.quotient - NORM_BIAS)
                    m.next = "CENTRE"
            with m.State("CENTRE"):
                m.d.sync += t.eq(n * self.mu - 2 * sum_x)
                m.next = "CENTRE2"
            with m.State("CENTRE2"):
                m.d.sync += v.eq(sum_x2 + self.mu * t)
                m.next = "VARIANCE"
            with m.State("VARIANCE"):
                m.d.comb += [div.dividend.eq(v), div.divisor.eq(n), div.start.eq(1)]
                m.next = "EPSILON"
            with m.State("EPSILON"):
                with m.If(div.done):
                    total = Signal(signed(66))
                    m.d.comb += total.eq(div.quotient + eps)
                    m.d.sync += var.eq(Mux(total < 1, 1, total))
                    m.next = "RSQRT"
            with m.State("RSQRT"):
                m.d.sync += self.shift.eq(e >> 1)     # (e - parity) / 2
                m.next = "RSQRT2"
            with m.State("RSQRT2"):
                m.d.sync += self.rsqrt.eq(rom_rd.data)
                m.next = "FINISH"
            with m.State("FINISH"):
                m.d.sync += self.done.eq(1)
                m.next = "IDLE"
        return m
