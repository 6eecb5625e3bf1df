"""One DSP48E2 slice behind a small interface: the Xilinx primitive or a behavioural twin.

The matrix engine uses one fixed register configuration of the slice (UG579 attribute names):
``AREG=1, DREG=1, ADREG=1, BREG=2, MREG=1, PREG=1, CREG=1`` and registered ``INMODE``,
``OPMODE``, ``ALUMODE``; ``AMULTSEL="AD"`` puts the pre-adder in front of the multiplier.
Timing, counted from the cycle ``t`` in which ``a``/``b``/``d``/``inmode`` are applied:

====================  ==========================================================
``t``                 A, B, D, INMODE enter their input registers
``t + 1``             pre-adder ``AD = D +/- A`` (27 bits)
``t + 2``             ``M = AD * B`` (45 bits); apply C, OPMODE and ALUMODE now
``t + 3``             ALU ``P = W + X + Y + Z``; PCIN is sampled now (it is the
                      previous slice's P register, so a cascade adds one cycle
                      per slice)
``t + 4``             ``p`` / ``pcout`` hold the result (:data:`LATENCY`)
====================  ==========================================================

Two implementations share that interface, picked by name (``impl``):

* ``"xilinx"``: an ``Instance("DSP48E2")`` for synthesis with Vivado;
* ``"twin"``: the same registers and multiplexers in plain Amaranth arithmetic, for simulation
  and for tools that do not know the primitive. ``tests/hw/test_dsp48e2.py`` checks it against a
  Python model written from UG579's equations.

The twin covers the subset the engine can use: X in {0, M, P, A:B}, Y in {0, M, -1, C}
(``X = Y = 01`` selects the product M; the two halves are not modelled separately, so X and Y
must both select M or neither), every Z and W setting (RND = 0), the four arithmetic ALUMODEs
(``ALUMODE[3:2] = 00``), CARRYIN = 0. ``INMODE[0] = 1`` selects A1, which this configuration
never loads (``CEA1`` is tied low), so it reads as zero.

The packed two-MAC trick (:func:`pack_lanes`, :func:`split_lanes`): two INT8 operands ``lo``
and ``hi`` that multiply the same INT8 ``b`` travel as ``AD = hi * 2**18 + lo``; the product is
``b*hi * 2**18 + b*lo``. Summed over a cascade, ``P = H * 2**18 + L``; the low field decodes
exactly while ``L`` stays inside an 18-bit window, which holds for up to :data:`CASCADE_LIMIT`
products (see :func:`split_lanes`).
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "DSP48E2", "lint_stub", "IMPLEMENTATIONS", "PIPELINE", "LATENCY", "CTRL_LEAD", "INMODE_A_PLUS_D",
    "OPMODE_M", "OPMODE_PCIN_M", "ALUMODE_SUM", "PACK_SHIFT", "CASCADE_LIMIT",
    "opmode", "pack_lanes", "split_lanes",
]

IMPLEMENTATIONS = ("twin", "xilinx")

#: Pipeline register attributes of the primitive, as passed to ``Instance("DSP48E2")``.
PIPELINE = {
    "AREG": 1, "ACASCREG": 1, "BREG": 2, "BCASCREG": 2, "DREG": 1, "ADREG": 1, "MREG": 1,
    "PREG": 1, "CREG": 1, "INMODEREG": 1, "OPMODEREG": 1, "ALUMODEREG": 1, "CARRYINREG": 1,
    "CARRYINSELREG": 1,
}
#: Cycles from A/B/D to P.
LATENCY = 4
#: C, OPMODE and ALUMODE are applied this many cycles after the A/B/D they act on.
CTRL_LEAD = 2

#: INMODE: AD = D + A2 (A2 and D enabled, add, multiplier B from B2).
INMODE_A_PLUS_D = 0b00100
#: ALUMODE: P = Z + W + X + Y + CIN.
ALUMODE_SUM = 0b0000


def opmode(*, w: int = 0, x: int = 0, y: int = 0, z: int = 0) -> int:
    """The 9-bit OPMODE from its multiplexer selects: ``{W[1:0], Z[2:0], Y[1:0], X[1:0]}``."""
    for name, value, width in (("w", w, 2), ("x", x, 2), ("y", y, 2), ("z", z, 3)):
        if not 0 <= value < 1 << width:
            raise ValueError(f"OPMODE {name} select must fit {width} bits, not {value!r}")
    return w << 7 | z << 4 | y << 2 | x


#: P = M (a cascade starts from zero: the reduction node's restart).
OPMODE_M = opmode(x=0b01, y=0b01, z=0b000)
#: P = PCIN + M (a fixed or joined cascade link).
OPMODE_PCIN_M = opmode(x=0b01, y=0b01, z=0b001)

#: Bit position of the high lane in the packed pre-adder operand.
PACK_SHIFT = 18
#: Packed INT8 products one cascade may sum before the low lane leaves its 18-bit window.
CASCADE_LIMIT = 8


def pack_lanes(lo, hi):
    """The A and D port values that put ``hi * 2**18 + lo`` through the pre-adder.

    Args:
        lo, hi: signed 8-bit values (the two operands sharing one ``b``).

    Returns:
        ``(a, d)``: ``hi << 18`` for A and ``lo`` for D, both signed (they sign-extend to the
        30- and 27-bit ports). ``|hi * 2**18 + lo| < 2**26`` fits the 27-bit pre-adder.
    """
    return hi.as_signed() << PACK_SHIFT, lo.as_signed()


def split_lanes(p):
    """Decode a packed P into its two lane sums (the overflow adjust's split).

    With ``P = H * 2**18 + L`` and ``L`` in the window ``[-(2**17 - 1), 2**17]``, the low lane
    is ``P[17:0]`` read as a signed number in that window, and the high lane is ``P >> 18``
    plus one when the low lane is negative (its sign-extension borrowed from the high field).
    The window is shifted by one from plain two's complement so that the extreme sum of eight
    ``(-128) * (-128)`` products (exactly ``2**17``) still decodes; any other sum of at most
    eight INT8 x INT8 products lies inside it (``8 * -16256 > -(2**17 - 1)``).

    Returns:
        ``(lo, hi)``: signed 19-bit and signed 31-bit values.
    """
    low = p[:PACK_SHIFT]
    neg = low[PACK_SHIFT - 1] & low[:PACK_SHIFT - 1].any()
    lo = Cat(low, neg).as_signed()
    hi = p[PACK_SHIFT:].as_signed() + neg
    return lo, hi


class DSP48E2(wiring.Component):
    """One DSP48E2 slice (see the module docstring for timing and the supported modes).

    Args:
        impl: ``"twin"`` (behavioural, default) or ``"xilinx"`` (the primitive).

    Ports:
        a (In, signed 30), b (In, signed 18), c (In, signed 48), d (In, signed 27),
        pcin (In, signed 48): data inputs; pcin comes from the previous slice's ``pcout``.
        opmode (In, 9), inmode (In, 5), alumode (In, 4): dynamic controls.
        ce (In, 1): clock enable of every register (reset 1).
        p, pcout (Out, signed 48): the P register.
    """

    a: In(signed(30))
    b: In(signed(18))
    c: In(signed(48))
    d: In(signed(27))
    pcin: In(signed(48))
    opmode: In(9)
    inmode: In(5)
    alumode: In(4)
    ce: In(1, init=1)
    p: Out(signed(48))
    pcout: Out(signed(48))

    def __init__(self, *, impl: str = "twin"):
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"DSP48E2 implementation must be one of {IMPLEMENTATIONS}, "
                             f"not {impl!r}")
        self.impl = impl
        super().__init__()

    def elaborate(self, platform):
        if self.impl == "xilinx":
            return self._elaborate_primitive()
        return self._elaborate_twin()

    def primitive_connections(self) -> dict:
        """The ``DSP48E2`` instance's parameters (``p_``) and ports (``i_``/``o_``), as
        :class:`~amaranth.hdl.Instance` takes them."""
        ce = self.ce
        rst = ResetSignal()
        params = {f"p_{name}": value for name, value in PIPELINE.items()}
        return dict(
            p_AMULTSEL="AD", p_BMULTSEL="B", p_PREADDINSEL="A", p_A_INPUT="DIRECT",
            p_B_INPUT="DIRECT", p_USE_MULT="MULTIPLY", p_USE_SIMD="ONE48",
            p_USE_PATTERN_DETECT="NO_PATDET", p_AUTORESET_PATDET="NO_RESET",
            p_RND=Const(0, 48),
            **params,
            i_CLK=ClockSignal(),
            i_A=self.a, i_B=self.b, i_C=self.c, i_D=self.d, i_PCIN=self.pcin,
            i_ACIN=Const(0, 30), i_BCIN=Const(0, 18), i_CARRYCASCIN=0, i_MULTSIGNIN=0,
            i_OPMODE=self.opmode, i_INMODE=self.inmode, i_ALUMODE=self.alumode,
            i_CARRYIN=0, i_CARRYINSEL=Const(0, 3),
            # A1 is never loaded: INMODE[0] = 1 then reads zero, as in the twin.
            i_CEA1=0, i_CEA2=ce, i_CEB1=ce, i_CEB2=ce, i_CEC=ce, i_CED=ce, i_CEAD=ce,
            i_CEM=ce, i_CEP=ce, i_CECTRL=ce, i_CEINMODE=ce, i_CEALUMODE=ce, i_CECARRYIN=ce,
            i_RSTA=rst, i_RSTB=rst, i_RSTC=rst, i_RSTD=rst, i_RSTM=rst, i_RSTP=rst,
            i_RSTCTRL=rst, i_RSTINMODE=rst, i_RSTALUMODE=rst, i_RSTALLCARRYIN=rst,
            o_P=self.p, o_PCOUT=self.pcout,
        )

    def _elaborate_primitive(self):
        m = Module()
        m.submodules.dsp = Instance("DSP48E2", **self.primitive_connections())
        return m

    def _elaborate_twin(self):
        m = Module()
        a2 = Signal(signed(30))
        b1 = Signal(signed(18))
        b2 = Signal(signed(18))
        d_r = Signal(signed(27))
        inmode_r = Signal(5)
        ad = Signal(signed(27))
        mul = Signal(signed(45))
        c_r = Signal(signed(48))
        opmode_r = Signal(9)
        alumode_r = Signal(4)
        p = Signal(signed(48))

        # Pre-adder and multiplier inputs.
        a_pre = Mux(inmode_r[0] | inmode_r[1], 0, a2[:27].as_signed())
        d_pre = Mux(inmode_r[2], d_r, 0)
        ad_in = Mux(inmode_r[3], d_pre - a_pre, d_pre + a_pre)
        b_mul = Mux(inmode_r[4], b1, b2)

        # ALU multiplexers.
        x = Signal(48)
        y = Signal(48)
        z = Signal(48)
        w = Signal(48)
        with m.Switch(opmode_r[0:2]):
            with m.Case(0b01):
                m.d.comb += x.eq(mul)
            with m.Case(0b10):
                m.d.comb += x.eq(p)
            with m.Case(0b11):
                m.d.comb += x.eq(Cat(b2, a2))
        with m.Switch(opmode_r[2:4]):
            with m.Case(0b10):
                m.d.comb += y.eq(-1)
            with m.Case(0b11):
                m.d.comb += y.eq(c_r)
        with m.Switch(opmode_r[4:7]):
            with m.Case(0b001):
                m.d.comb += z.eq(self.pcin)
            with m.Case(0b010, 0b100):
                m.d.comb += z.eq(p)
            with m.Case(0b011):
                m.d.comb += z.eq(c_r)
            with m.Case(0b101):
                m.d.comb += z.eq(self.pcin >> 17)
            with m.Case(0b110, 0b111):
                m.d.comb += z.eq(p >> 17)
        with m.Switch(opmode_r[7:9]):
            with m.Case(0b01):
                m.d.comb += w.eq(p)
            with m.Case(0b11):
                m.d.comb += w.eq(c_r)
        # ALUMODE[0] inverts Z, ALUMODE[1] inverts the sum: the four arithmetic modes.
        z_opt = Mux(alumode_r[0], ~z, z)
        total = Signal(48)
        m.d.comb += total.eq(z_opt + w + x + y)
        alu = Mux(alumode_r[1], ~total, total)

        with m.If(self.ce):
            m.d.sync += [
                a2.eq(self.a), b1.eq(self.b), b2.eq(b1), d_r.eq(self.d),
                inmode_r.eq(self.inmode), ad.eq(ad_in), mul.eq(ad * b_mul),
                c_r.eq(self.c), opmode_r.eq(self.opmode), alumode_r.eq(self.alumode),
                p.eq(alu),
            ]
        m.d.comb += [self.p.eq(p), self.pcout.eq(p)]
        return m


def lint_stub() -> str:
    """An empty Verilog ``DSP48E2`` with the parameters and ports this project uses.

    For linting Verilog built with ``impl="xilinx"`` where AMD's UNISIM library is not
    installed; never part of a project (Vivado brings the real primitive). Simulating the
    primitive needs the UNISIM model itself: ``tests/hw/test_dsp48e2_unisim.py``.
    """
    slice_ = DSP48E2(impl="xilinx")
    slice_._MustUse__silence = True
    params, ports = [], []
    for key, value in slice_.primitive_connections().items():
        kind, name = key.split("_", 1)
        if kind == "p":
            params.append(f"parameter {name} = " + (f'"{value}"' if isinstance(value, str)
                                                    else "0"))
        else:
            width = len(Value.cast(value))
            ports.append(f"{'input' if kind == 'i' else 'output'} [{width - 1}:0] {name}")
    return ("/* verilator lint_off UNUSEDSIGNAL */\n/* verilator lint_off UNDRIVEN */\n"
            f"module DSP48E2 #({', '.join(params)}) ({', '.join(ports)});\nendmodule\n")
