"""Arithmetic building blocks of the special-function unit: the contract's rounding shift and
saturation as Amaranth expressions, and a sequential divider for the once-per-row divisions.

``rshift_round`` is built as ``((x >> (s - 1)) + 1) >> 1`` for ``s >= 1`` (``x`` for ``s = 0``).
That equals the contract's ``floor(x / 2**s + 1/2)``: with ``y = floor(x / 2**(s-1))`` and
``x / 2**(s-1) = y + f``, ``0 <= f < 1``, ``floor((y + f + 1) / 2) = floor((y + 1) / 2)`` because
``y + 1`` is an integer. The hardware needs no ``2**(s-1)`` constant decoder and no adder wider
than the shifted value; :func:`rshift_round_model` is the same algorithm on Python integers,
tested against the contract.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["rshift_round", "rshift_round_model", "saturate", "SeqDivider"]


def rshift_round_model(x: int, shift: int) -> int:
    """The hardware's rounding shift on Python integers (see the module docstring)."""
    return x if shift == 0 else ((x >> (shift - 1)) + 1) >> 1


def rshift_round(m: Module, value, shift, *, name: str) -> Signal:
    """``floor(value / 2**shift + 1/2)``, the contract's ``rshift_round``, for a signed ``value``.

    Args:
        m: the module that receives the combinational statements.
        value: a signed value; the result has its width (the halving cannot overflow).
        shift: an unsigned shift amount (0 means no shift).
        name: prefix of the intermediate signals.
    """
    width = len(value)
    less = Signal(len(shift), name=f"{name}_sm1")
    pre = Signal(signed(width), name=f"{name}_pre")
    out = Signal(signed(width), name=name)
    m.d.comb += [
        less.eq(shift - 1),             # wraps for shift = 0, whose result is the bypass
        pre.eq(value.as_signed() >> less),
        out.eq(Mux(shift == 0, value, (pre + 1) >> 1)),
    ]
    return out


def saturate(value, bits: int):
    """``value`` clipped to the signed ``bits``-bit range."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


class SeqDivider(wiring.Component):
    """Unsigned ``floor(dividend / divisor)`` by restoring division, ``steps`` quotient bits per
    cycle, skipping the quotient bits known to be zero.

    The quotient has at most ``k = bit_length(dividend) - bit_length(divisor) + 1`` bits. One
    cycle after ``start`` the divider has found ``k`` (rounded up to a multiple of ``steps``),
    loaded the partial remainder with ``dividend >> k`` (smaller than the divisor) and the
    shift register with the dividend's low ``k`` bits; ``k / steps`` cycles later ``done``
    pulses. So ``done`` comes ``2 + ceil(k / steps)`` cycles after ``start``: at most
    ``2 + width / steps``, and 14 to 18 for a softmax reciprocal with 2 bits per cycle.

    Args:
        width: dividend and quotient bits (a multiple of ``steps``).
        divisor_width: divisor bits; the partial remainder is one bit wider.
        steps: quotient bits per cycle (the compare-subtracts chained in one cycle).

    Ports:
        start (In 1): latch ``dividend`` and ``divisor`` and begin; ignored while busy.
        dividend (In width), divisor (In divisor_width): operands, read at ``start``.
        busy (Out 1), done (Out 1, one cycle), quotient (Out width, held until the next start).
    """

    def __init__(self, *, width: int = 64, divisor_width: int = 48, steps: int = 2):
        for name, value in (("width", width), ("divisor_width", divisor_width), ("steps", steps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"divider {name} must be a positive integer, not {value!r}")
        if width % steps:
            raise ValueError(f"divider width {width} is not a multiple of steps = {steps}")
        self.width, self.divisor_width, self.steps = width, divisor_width, steps
        super().__init__({
            "start": In(1), "dividend": In(width), "divisor": In(divisor_width),
            "busy": Out(1), "done": Out(1), "quotient": Out(width),
        })

    @property
    def max_cycles(self) -> int:
        """Most cycles from ``start`` to ``done``."""
        return 2 + self.width // self.steps

    def elaborate(self, platform):
        m = Module()
        rem = Signal(self.divisor_width + 1)
        dividend = Signal(self.width)
        divisor = Signal(self.divisor_width)
        count = Signal(range(self.width // self.steps + 1))
        setup = Signal()

        # The quotient's possible bits, rounded up to whole cycles.
        n_len = Signal(range(self.width + 1))
        d_len = Signal(range(self.divisor_width + 1))
        for bit in range(self.width):
            with m.If(dividend[bit]):
                m.d.comb += n_len.eq(bit + 1)
        for bit in range(self.divisor_width):
            with m.If(divisor[bit]):
                m.d.comb += d_len.eq(bit + 1)
        k = Signal(signed(len(n_len) + 2))
        cycles = Signal.like(count)
        m.d.comb += [
            k.eq(n_len - d_len + 1 + self.steps - 1),
            cycles.eq(Mux(k < self.steps, 0,
                          Mux(k >= self.width + self.steps, self.width // self.steps,
                              k.as_unsigned() // self.steps))),
        ]
        bits, rest = Signal(range(self.width + 1)), Signal(range(self.width + 1))
        m.d.comb += [bits.eq(cycles * self.steps), rest.eq(self.width - bits)]

        # The dividend shifts out of the top of `quotient` while quotient bits enter below.
        r, q = rem, self.quotient
        for i in range(self.steps):
            trial = Signal(self.divisor_width + 2, name=f"trial{i}")
            m.d.comb += trial.eq(Cat(q[-1], r))
            fits = trial >= divisor
            r_next = Signal(self.divisor_width + 1, name=f"rem{i}")
            q_next = Signal(self.width, name=f"quo{i}")
            m.d.comb += [
                r_next.eq(Mux(fits, trial - divisor, trial)),
                q_next.eq(Cat(fits, q[:-1])),
            ]
            r, q = r_next, q_next
        m.d.sync += self.done.eq(0)
        with m.If(setup):
            m.d.sync += [rem.eq(dividend >> bits), self.quotient.eq(dividend << rest),
                         count.eq(cycles), setup.eq(0)]
            with m.If(cycles == 0):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += [rem.eq(r), self.quotient.eq(q), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.start):
            m.d.sync += [dividend.eq(self.dividend), divisor.eq(self.divisor), setup.eq(1),
                         self.busy.eq(1)]
        return m
