# amaranth: UnusedElaboratable=no
"""The special-function unit: the rounding-shift identity, the command layout, the divider and
row statistics and a few rows of every function in Amaranth's simulator, then the cocotb +
Verilator benches (>= 1,000 random elements per function, checker self-test, throughput)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given
from hypothesis import strategies as st

from flightllm.contract import numerics as nm
from flightllm.contract.config import preset
from flightllm.contract.isa import OPCODES, MiscFunc, Opcode
from flightllm.hw.isa_layouts import field_shape
from flightllm.hw.sfu import (
    COMMAND_FIELDS, COMMAND_LAYOUT, ELEMENTWISE, SFU, operand_beat_layout, param_beat_layout,
    result_beat_layout,
)
from flightllm.hw.sfu_arith import SeqDivider, rshift_round_model
from flightllm.hw.sfu_datapath import LATENCY, gate_rom_contents
from flightllm.hw.sfu_stats import RowStats, StatsMode

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_model import pack_fields, unpack_fields  # noqa: E402
from tb_sfu_model import (  # noqa: E402
    VARIANT_NAMES, SFUChecker, command, input_beats, random_case, random_cases,
)

MODULE = "tb_sfu"


# --------------------------------------------------------------------------- pure checks
@given(st.integers(-(1 << 62), (1 << 62) - 1), st.integers(0, 62))
def test_rounding_shift_by_halves_is_the_contract(x, shift):
    assert rshift_round_model(x, shift) == int(nm.rshift_round(x, shift))


def test_command_layout_is_the_isa():
    spec = OPCODES[Opcode.MISC]
    for name in COMMAND_FIELDS:
        assert COMMAND_LAYOUT.members[name] == field_shape(spec.field(name))


def test_gate_rom_is_the_contract_tables():
    t = nm.tables()
    rom = np.array(gate_rom_contents())
    assert np.array_equal(rom, np.concatenate(
        [t["silu"], t["gelu_tanh"], t["gelu_erf"], t["exp2"]]))
    assert rom.max() == 1 << 15 and rom.min() >= 0


@pytest.mark.parametrize("lanes", [4, 16])
def test_random_cases_reach_every_corner(lanes):
    """The RTL bench's stimulus: every variant's quota and every named corner, at two seeds."""
    for seed in (1, 2):
        cases, missing = random_cases(np.random.default_rng(seed), lanes, min_elements=1000)
        assert not missing
        assert {c.label for c in cases} == set(VARIANT_NAMES)
        assert all(c.elements >= 1 for c in cases)


def test_bad_configurations_are_named():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="sfu_lanes must be a power of two"):
        SFU(cfg.replace(sfu_lanes=6))
    with pytest.raises(ValueError, match="max_row must be a multiple"):
        SFU(cfg, max_row=30)
    with pytest.raises(ValueError, match="fifo_depth"):
        SFU(cfg, fifo_depth=4)
    with pytest.raises(ValueError, match="divider_steps"):
        SFU(cfg, divider_steps=3)
    with pytest.raises(ValueError, match="not a multiple of steps"):
        SeqDivider(width=64, steps=3)


def test_divider_in_amaranth_simulator():
    dut = SeqDivider(width=64, divisor_width=48, steps=2)
    rng = np.random.default_rng(5)
    pairs = [(1 << 54, 1 << 23), (1 << 60, 127 * ((1 << 23) + 5)), ((1 << 64) - 1, 1),
             (12345, 1), (0, 7)]
    pairs += [(int(rng.integers(0, 1 << 62)), int(rng.integers(1, 1 << 47))) for _ in range(6)]
    got = []

    async def bench(ctx):
        for num, den in pairs:
            ctx.set(dut.dividend, num)
            ctx.set(dut.divisor, den)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 0
            while not ctx.get(dut.done):
                await ctx.tick()
                cycles += 1
            got.append((ctx.get(dut.quotient), cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert [q for q, _ in got] == [num // den for num, den in pairs]
    # Cycles follow the quotient's length: 2 + ceil((len(num) - len(den) + 1) / 2).
    want = [2 + max(0, num.bit_length() - den.bit_length() + 2) // 2 for num, den in pairs]
    assert [c + 1 for _, c in got] == want
    assert max(c for _, c in got) < dut.max_cycles


def _norm_constants(x, eps, center):
    """mu, r, k of the contract's norm, computed as the contract does."""
    x = np.clip(np.asarray(x, np.int64), -(1 << 23), (1 << 23) - 1)
    n = len(x)
    mu = int(np.floor_divide(x.sum(), n)) if center else 0
    var = max(int(((x - mu) ** 2).sum()) // n + eps, 1)
    r, k = nm._rsqrt_q15(np.array([var]))
    return mu, int(r[0]), int(k[0])


def test_row_statistics_in_amaranth_simulator():
    """Norm mean/rsqrt and softmax reciprocals against the contract's own formulas."""
    dut = RowStats()
    rng = np.random.default_rng(9)
    cases = []
    for center in (False, True):
        for x, eps in ((rng.integers(-100, 100, 37), 0), (np.full(5, 1 << 26), 3),
                       (rng.integers(-(1 << 24), 1 << 24, 300), int(rng.integers(0, 1 << 31))),
                       (np.zeros(8, np.int64), 0), (np.array([-7]), 0)):
            cases.append(("norm", center, x, eps))
    for s in (1 << 23, (1 << 23) + 1, 3 << 30, 0):
        cases += [("softmax", False, s, 0), ("softmax", True, s, 0)]
    got = []

    async def bench(ctx):
        for kind, flag, x, eps in cases:
            if kind == "norm":
                xs = np.clip(np.asarray(x, np.int64), -(1 << 23), (1 << 23) - 1)
                ctx.set(dut.mode, StatsMode.LAYERNORM if flag else StatsMode.RMSNORM)
                ctx.set(dut.sum_x, int(xs.sum()))
                ctx.set(dut.sum_x2, int((xs * xs).sum()))
                ctx.set(dut.n, len(xs))
                ctx.set(dut.eps, eps)
            else:
                ctx.set(dut.mode, StatsMode.SOFTMAX_DEFERRED if flag else StatsMode.SOFTMAX)
                ctx.set(dut.exp_sum, x)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while not ctx.get(dut.done):
                await ctx.tick()
            if kind == "norm":
                got.append((ctx.get(dut.mu), ctx.get(dut.rsqrt), ctx.get(dut.shift)))
            else:
                got.append(ctx.get(dut.recip))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = []
    for kind, flag, x, eps in cases:
        if kind == "norm":
            want.append(_norm_constants(x, eps, flag))
        else:
            want.append(0 if x == 0 else ((1 << 60) // (127 * x) if flag else (1 << 54) // x))
    assert got == want


def _simulate_sfu(cases, *, lanes=4, max_cycles=100_000, extra_commands=(), errors=None):
    """Run cases through the whole SFU in Amaranth's simulator; returns the checker.

    ``extra_commands`` (command dicts) go first; ``errors`` collects the error flag each time
    the unit becomes ready for the next command, i.e. at the end of each extra command."""
    cfg = preset("tiny").replace(sfu_lanes=lanes)
    dut = SFU(cfg, max_row=512)
    rng = np.random.default_rng(0)
    ol, pl, rl = operand_beat_layout(lanes), param_beat_layout(lanes), result_beat_layout(lanes)
    checker = SFUChecker()
    streams = {"cmd": [pack_fields(COMMAND_LAYOUT, c) for c in extra_commands],
               "a": [], "b": [], "p": []}
    for case in cases:
        streams["cmd"].append(pack_fields(COMMAND_LAYOUT, command(case, COMMAND_FIELDS)))
        beats = input_beats(case, lanes, rng)
        streams["a"] += [pack_fields(ol, x) for x in beats["a"]]
        streams["b"] += [pack_fields(ol, x) for x in beats["b"]]
        streams["p"] += [pack_fields(pl, x) for x in beats["p"]]
        checker.expect(case, lanes)

    def feeder(port, words):
        async def feed(ctx):
            for word in words:
                ctx.set(port.payload.as_value(), word)
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)
        return feed

    async def drain(ctx):
        ctx.set(dut.out.ready, 1)
        ctx.set(dut.recip.ready, 1)
        was_idle = True
        for _ in range(max_cycles):
            _, _, ov, op, rv, rp, err = await ctx.tick().sample(
                dut.out.valid, dut.out.payload.as_value(), dut.recip.valid,
                dut.recip.payload, dut.error)
            idle = ctx.get(dut.cmd.ready)       # the front is back in IDLE: a command ended
            if errors is None:
                assert not err, "the SFU flagged a command as unsupported"
            elif idle and not was_idle and len(errors) < len(extra_commands):
                errors.append(err)
            was_idle = idle
            if ov:
                checker.check(unpack_fields(rl, op))
            if rv:
                checker.check_recip(rp)
            if checker.pending == 0:
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name, words in streams.items():
        sim.add_testbench(feeder(getattr(dut, name), words))
    sim.add_testbench(drain)
    sim.run()
    return checker


@pytest.mark.parametrize("label", VARIANT_NAMES)
def test_sfu_in_amaranth_simulator(label):
    """Two small random instructions of each function through the whole unit."""
    rng = np.random.default_rng(sum(map(ord, label)))
    cases = [random_case(rng, label, 4, shape=(2, n), group=6 if "ROPE" in label else None)
             for n in (6, 12)]
    checker = _simulate_sfu(cases)
    assert checker.errors == 0 and checker.pending == 0
    assert checker.elements[label] == sum(c.elements for c in cases)


@pytest.mark.parametrize("lanes", [1, 8])
def test_other_lane_counts_in_amaranth_simulator(lanes):
    """One lane (no rotation at all) and eight (groups smaller than a beat)."""
    rng = np.random.default_rng(lanes)
    cases = [random_case(rng, label, lanes, shape=(2, 12), group=4 if "ROPE" in label else None)
             for label in ("MUL_ROWSCALAR", "SOFTMAX", "SOFTMAX_DEFER", "LAYERNORM", "ROPE",
                           "ROPE_INTERLEAVED")]
    checker = _simulate_sfu(cases, lanes=lanes)
    assert checker.errors == 0 and checker.pending == 0
    for case in cases:
        assert checker.elements[case.label] == case.elements
    assert checker.elements["SOFTMAX_DEFER/recip"] == 2


def test_unsupported_commands_raise_the_error_flag():
    """COPY/FILL, rows longer than the row buffer and odd RoPE groups are flagged and consume
    nothing; an empty command is not an error; the next good command clears the flag."""
    base = {name: 0 for name in COMMAND_FIELDS}
    bad = [dict(base, func=MiscFunc.COPY, n=4, m=1), dict(base, func=MiscFunc.FILL, n=4, m=1),
           dict(base, func=MiscFunc.SOFTMAX, n=513, m=1),
           dict(base, func=MiscFunc.ROPE, n=6, m=1, group=3),
           dict(base, func=MiscFunc.ADD, n=0, m=5)]
    rng = np.random.default_rng(2)
    errors = []
    checker = _simulate_sfu([random_case(rng, "RMSNORM", 4, shape=(1, 5))],
                            extra_commands=bad, errors=errors)
    assert errors == [1, 1, 1, 1, 0]
    assert checker.errors == 0 and checker.pending == 0


# --------------------------------------------------------------------------- cocotb
@pytest.fixture(scope="module")
def sfu_tiny(rtl_sim):
    return rtl_sim.build("sfu_tiny", lambda: SFU(preset("tiny")))


@pytest.mark.rtl
def test_random_functions(rtl_sim, sfu_tiny, tmp_path):
    out = rtl_sim.run(sfu_tiny, MODULE, "random_functions", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    assert out["errors"] == 0 and out["count"] >= 1000, out
    assert set(out["elements"]) == set(VARIANT_NAMES)


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, sfu_tiny, tmp_path):
    out = rtl_sim.run(sfu_tiny, MODULE, "corrupted_reference", tmp_path,
                      FLIGHTLLM_TB_PRESET="tiny")
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["errors"] == 1, out


def row_cycle_bound(label: str, n: int, lanes: int, group: int = 16) -> int:
    """Most steady-state cycles per row by the design's cycle model (docs/hw_datapath.md):
    the passes that do not overlap, the pipeline drain, and the divider's worst case for the
    quotient's length (softmax 32 bits, norm mean 24, variance 49; two bits per cycle)."""
    nb, nbo = -(-n // lanes), -(-(-(-n // 16) * 16) // lanes)
    drain, slack = LATENCY + 2, 8
    div = {bits: 2 + bits // 2 for bits in (24, 32, 50)}
    if label in ("SOFTMAX", "SOFTMAX_DEFER"):
        passes = nbo if label == "SOFTMAX_DEFER" else nb + nbo
        return passes + drain + div[32] + 2 + slack
    if label == "RMSNORM":
        return nb + drain + div[50] + 5 + slack
    if label == "LAYERNORM":
        return nb + drain + div[24] + 3 + div[50] + 5 + slack
    if label.startswith("ROPE"):
        return nb + -(-(group // 2) // lanes) + 6
    return nb


@pytest.mark.rtl
def test_throughput_and_latency(rtl_sim, sfu_tiny, tmp_path):
    out = rtl_sim.run(sfu_tiny, MODULE, "throughput", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    lanes = out["lanes"]
    for label, rows in out["cycles_per_row"].items():
        for n, cycles in rows.items():
            bound = row_cycle_bound(label, int(n), lanes)
            if label in dict.fromkeys(f.name for f in ELEMENTWISE) or label == "MUL_ROWSCALAR":
                assert cycles == bound, (label, n, cycles)      # one beat per cycle
            else:
                assert cycles <= bound, (label, n, cycles, bound)
        if label in ("REQUANT", "SILU"):
            assert out["row_latency_cycles"][label] == 64 // lanes + LATENCY + 1


@pytest.mark.rtl
@pytest.mark.slow
def test_random_functions_more_elements(rtl_sim, sfu_tiny, tmp_path):
    out = rtl_sim.run(sfu_tiny, MODULE, "random_functions", tmp_path, FLIGHTLLM_TB_PRESET="tiny",
                      FLIGHTLLM_TB_ELEMENTS=10000, FLIGHTLLM_TB_SEED=12345)
    assert out["ok"] and out["count"] >= 10000, out


@pytest.mark.rtl
@pytest.mark.slow
def test_u280_sixteen_lanes(rtl_sim, tmp_path):
    build = rtl_sim.build("sfu_u280", lambda: SFU(preset("u280")))
    out = rtl_sim.run(build, MODULE, "random_functions", tmp_path, FLIGHTLLM_TB_PRESET="u280")
    assert out["ok"] and out["count"] >= 1000, out
