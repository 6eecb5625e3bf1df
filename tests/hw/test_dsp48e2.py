# amaranth: UnusedElaboratable=no
"""The DSP48E2 wrapper: the behavioural twin against a Python model of UG579, the packed
two-MAC trick (exhaustive for one product, up to the cascade limit for sums), and the
primitive's instantiation."""

import random

import numpy as np
import pytest
from amaranth import Elaboratable, Module, Signal, signed
from amaranth.back import verilog
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from flightllm.hw.dsp48e2 import (
    ALUMODE_SUM, CASCADE_LIMIT, DSP48E2, INMODE_A_PLUS_D, LATENCY, OPMODE_M, OPMODE_PCIN_M,
    PACK_SHIFT, PIPELINE, opmode, pack_lanes, split_lanes,
)

MASK48 = (1 << 48) - 1


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class UG579Model:
    """DSP48E2 with AREG=1, BREG=2, DREG=ADREG=MREG=PREG=CREG=1 and registered INMODE, OPMODE
    and ALUMODE, written from UG579 (figure 2-1, tables 2-4 to 2-12); A1 is never loaded."""

    def __init__(self):
        self.a2 = self.b1 = self.b2 = self.d = self.inmode = 0
        self.ad = self.m = self.c = self.opmode = self.alumode = self.p = 0

    def clock(self, *, a, b, c, d, pcin, opmode, inmode, alumode, ce=1):
        if not ce:
            return
        # Pre-adder (table 2-5): INMODE[1] gates A, INMODE[0] picks A1 (never loaded: 0),
        # INMODE[2] enables D, INMODE[3] subtracts A; the result is 27 bits.
        a_sel = 0 if (self.inmode >> 1) & 1 or self.inmode & 1 else _signed(self.a2, 27)
        d_sel = self.d if (self.inmode >> 2) & 1 else 0
        ad = _signed(d_sel - a_sel if (self.inmode >> 3) & 1 else d_sel + a_sel, 27)
        b_sel = self.b1 if (self.inmode >> 4) & 1 else self.b2
        # Multiplexers (tables 2-7 to 2-10).
        xs, ys, zs, ws = self.opmode & 3, (self.opmode >> 2) & 3, (self.opmode >> 4) & 7, \
            self.opmode >> 7
        if (xs, ys) == (1, 1):
            xy = self.m
        else:
            x = {0: 0, 2: self.p, 3: _signed((self.a2 << 18) | (self.b2 & 0x3FFFF), 48)}[xs]
            y = {0: 0, 2: -1, 3: self.c}[ys]
            xy = x + y
        z = {0: 0, 1: pcin, 2: self.p, 3: self.c, 4: self.p, 5: pcin >> 17,
             6: self.p >> 17}[zs]
        w = {0: 0, 1: self.p, 2: 0, 3: self.c}[ws]      # RND = 0
        # ALU (table 2-12), CIN = 0.
        total = {0b0000: z + w + xy, 0b0001: -z + (w + xy) - 1, 0b0010: -z - w - xy - 1,
                 0b0011: z - (w + xy)}[self.alumode]
        self.p = _signed(total, 48)
        self.m = _signed(self.ad * b_sel, 45)       # ADREG = 1: the AD register
        self.ad = ad
        self.c, self.opmode, self.alumode = c, opmode, alumode
        self.b2, self.b1 = self.b1, b
        self.a2, self.d, self.inmode = a, d, inmode


#: OPMODE settings the twin supports (X/Y: M together, otherwise 0, P, A:B / 0, -1, C).
XY_SETTINGS = [(1, 1)] + [(x, y) for x in (0, 2, 3) for y in (0, 2, 3)]
SUPPORTED_OPMODES = [opmode(w=w, x=x, y=y, z=z)
                     for (x, y) in XY_SETTINGS for z in range(7) for w in range(4)]
ALUMODES = (0b0000, 0b0001, 0b0010, 0b0011)


def _run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


def test_twin_matches_ug579_model():
    rng = random.Random(579)
    dut = DSP48E2(impl="twin")
    model = UG579Model()
    # The settings the chain uses come often; the rest of the supported space at random.
    chain_settings = [(OPMODE_M, INMODE_A_PLUS_D, ALUMODE_SUM),
                      (OPMODE_PCIN_M, INMODE_A_PLUS_D, ALUMODE_SUM)]
    seen = set()
    checked = 0

    def operand(bits):
        pick = rng.random()
        if pick < 0.15:
            return -(1 << (bits - 1))
        if pick < 0.3:
            return (1 << (bits - 1)) - 1
        return rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1))

    async def testbench(ctx):
        nonlocal checked
        for cycle in range(4000):
            if rng.random() < 0.4:
                op, inm, alu = rng.choice(chain_settings)
            else:
                op, inm, alu = (rng.choice(SUPPORTED_OPMODES), rng.randrange(32),
                                rng.choice(ALUMODES))
            seen.add((op, inm, alu))
            inputs = dict(a=operand(30), b=operand(18), c=operand(48), d=operand(27),
                          pcin=operand(48), opmode=op, inmode=inm, alumode=alu,
                          ce=int(rng.random() > 0.1))
            for name, value in inputs.items():
                ctx.set(getattr(dut, name), value)
            await ctx.tick()
            model.clock(**inputs)
            got = ctx.get(dut.p)
            assert got == model.p, f"cycle {cycle}: twin P {got} != UG579 model {model.p}"
            assert ctx.get(dut.pcout) == got
            checked += 1

    _run(dut, testbench)
    assert checked == 4000
    assert {s for s in seen if s in chain_settings} == set(chain_settings)
    assert len({op for op, _, _ in seen}) == len(SUPPORTED_OPMODES)


def test_twin_latency_matches_documentation():
    dut = DSP48E2(impl="twin")

    async def testbench(ctx):
        ctx.set(dut.inmode, INMODE_A_PLUS_D)
        ctx.set(dut.opmode, OPMODE_M)
        ctx.set(dut.a, 3 << PACK_SHIFT)
        ctx.set(dut.d, 5)
        ctx.set(dut.b, -7)
        await ctx.tick()
        ctx.set(dut.a, 0)
        ctx.set(dut.d, 0)
        ctx.set(dut.b, 0)
        for _ in range(LATENCY - 2):
            await ctx.tick()
            assert ctx.get(dut.p) == 0
        await ctx.tick()
        assert ctx.get(dut.p) == (-21 << PACK_SHIFT) - 35
        await ctx.tick()
        assert ctx.get(dut.p) == 0

    _run(dut, testbench)


# --------------------------------------------------------------------------- packing
def decode_packed(p: int) -> tuple[int, int]:
    """Reference decode of P = H * 2**18 + L with L in [-(2**17 - 1), 2**17]."""
    p = _signed(p, 48)
    low = p & ((1 << 18) - 1)
    lo = low - (1 << 18) if low > 1 << 17 else low
    return lo, (p - lo) >> 18


def test_packed_single_product_exhaustive():
    a = np.arange(-128, 128, dtype=np.int64)
    lo, hi = np.meshgrid(a, a, indexing="ij")
    ad = hi * (1 << PACK_SHIFT) + lo
    assert ad.min() >= -(1 << 26) and ad.max() < 1 << 26          # the 27-bit pre-adder
    for w in range(-128, 128):
        m = ad * w
        assert m.min() >= -(1 << 44) and m.max() < 1 << 44       # the 45-bit product
        p = m & MASK48
        low = p & ((1 << 18) - 1)
        dec_lo = np.where(low > 1 << 17, low - (1 << 18), low)
        sign = np.where(p >> 47, p - (1 << 48), p)
        dec_hi = (sign - dec_lo) >> 18
        assert np.array_equal(dec_lo, w * lo), f"low lane wrong for w={w}"
        assert np.array_equal(dec_hi, w * hi), f"high lane wrong for w={w}"


int8 = st.integers(-128, 127)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(int8, int8, int8), min_size=1, max_size=CASCADE_LIMIT))
def test_packed_cascade_up_to_limit(terms):
    p = sum(w * ((hi << PACK_SHIFT) + lo) for w, lo, hi in terms) & MASK48
    assert decode_packed(p) == (sum(w * lo for w, lo, _ in terms),
                                sum(w * hi for w, _, hi in terms))


@pytest.mark.parametrize("w, lo, hi", [(-128, -128, -128), (-128, 127, 127), (127, -128, -128),
                                       (-128, -128, 127), (127, 127, -128)])
def test_packed_cascade_extremes_at_limit(w, lo, hi):
    terms = [(w, lo, hi)] * CASCADE_LIMIT
    p = sum(t[0] * ((t[2] << PACK_SHIFT) + t[1]) for t in terms) & MASK48
    assert decode_packed(p) == (CASCADE_LIMIT * w * lo, CASCADE_LIMIT * w * hi)


def test_cascade_limit_is_tight():
    terms = [(-128, -128, 0)] * (CASCADE_LIMIT + 1)
    p = sum(w * ((hi << PACK_SHIFT) + lo) for w, lo, hi in terms) & MASK48
    assert decode_packed(p) != (sum(w * lo for w, lo, _ in terms), 0)


class _PackedCascade(Elaboratable):
    """``CASCADE_LIMIT`` twins in a PCIN cascade with packed operands and the RTL decode."""

    def __init__(self, n):
        self.n = n
        self.w = [Signal(signed(8), name=f"w{i}") for i in range(n)]
        self.lo = [Signal(signed(8), name=f"lo{i}") for i in range(n)]
        self.hi = [Signal(signed(8), name=f"hi{i}") for i in range(n)]
        self.sum_lo = Signal(signed(19))
        self.sum_hi = Signal(signed(31))

    def elaborate(self, platform):
        m = Module()
        prev = None
        for i in range(self.n):
            dsp = m.submodules[f"dsp{i}"] = DSP48E2(impl="twin")
            a, d = pack_lanes(self.lo[i], self.hi[i])
            m.d.comb += [dsp.a.eq(a), dsp.d.eq(d), dsp.b.eq(self.w[i]),
                         dsp.inmode.eq(INMODE_A_PLUS_D), dsp.alumode.eq(ALUMODE_SUM),
                         dsp.opmode.eq(OPMODE_PCIN_M if i else OPMODE_M)]
            if prev is not None:
                m.d.comb += dsp.pcin.eq(prev.pcout)
            prev = dsp
        lo, hi = split_lanes(prev.p)
        m.d.comb += [self.sum_lo.eq(lo), self.sum_hi.eq(hi)]
        return m


def test_twin_cascade_with_rtl_packing_is_exact():
    rng = random.Random(8)
    dut = _PackedCascade(CASCADE_LIMIT)
    extremes = (-128, -127, -1, 0, 1, 127)
    vectors = [[(-128, -128, -128)] * CASCADE_LIMIT, [(-128, 127, -128)] * CASCADE_LIMIT,
               [(127, -128, 127)] * CASCADE_LIMIT]
    for _ in range(150):
        pool = extremes if rng.random() < 0.5 else range(-128, 128)
        vectors.append([(rng.choice(pool), rng.choice(pool), rng.choice(pool))
                        for _ in range(CASCADE_LIMIT)])

    async def testbench(ctx):
        for vec in vectors:
            for i, (w, lo, hi) in enumerate(vec):
                ctx.set(dut.w[i], w)
                ctx.set(dut.lo[i], lo)
                ctx.set(dut.hi[i], hi)
            # Static operands: after LATENCY + n cycles the whole cascade holds this vector.
            await ctx.tick().repeat(LATENCY + CASCADE_LIMIT)
            want = (sum(w * lo for w, lo, _ in vec), sum(w * hi for w, _, hi in vec))
            assert (ctx.get(dut.sum_lo), ctx.get(dut.sum_hi)) == want, vec

    _run(dut, testbench)


# --------------------------------------------------------------------------- primitive
def test_primitive_instance_carries_the_pipeline_configuration():
    text = verilog.convert(DSP48E2(impl="xilinx"), name="dsp_slice")
    assert "DSP48E2 #(" in text
    for name, value in PIPELINE.items():
        assert f".{name}(32'd{value})" in text, name
    for name, value in (("AMULTSEL", "AD"), ("BMULTSEL", "B"), ("PREADDINSEL", "A"),
                        ("USE_MULT", "MULTIPLY")):
        assert f'.{name}("{value}")' in text, name
    for port in ("A", "B", "C", "D", "PCIN", "OPMODE", "INMODE", "ALUMODE", "P", "PCOUT"):
        assert f".{port}(" in text, port


@pytest.mark.rtl
def test_chain_on_the_primitive_lints_against_the_stub(tmp_path):
    """The lint stub declares every parameter and port the slices use (a chain on the
    primitive then lints; without the stub it cannot). Simulating the primitive needs AMD's
    UNISIM model: tests/hw/test_dsp48e2_unisim.py."""
    from flightllm.contract.config import preset
    from flightllm.hw.dsp48e2 import lint_stub
    from flightllm.hw.dsp_chain import DSPChain
    from flightllm.hw.sim_runner import simulator_unavailable_reason, verilator_lint
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    chain = verilog.convert(DSPChain(preset("tiny"), dsp_impl="xilinx"), name="chain")

    def lint(text):
        path = tmp_path / "chain.v"
        path.write_text(text)
        return verilator_lint(path, top="chain", timeout=300)
    result = lint(lint_stub() + chain)
    assert result.returncode == 0, result.stderr[-2000:]
    assert lint(chain).returncode != 0                       # negative control: no DSP48E2
    assert lint(lint_stub().replace("input [47:0] PCIN, ", "") + chain).returncode != 0


def test_unknown_implementation_is_named():
    with pytest.raises(ValueError, match="'vivado'"):
        DSP48E2(impl="vivado")
