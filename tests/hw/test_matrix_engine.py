# amaranth: UnusedElaboratable=no
"""The matrix engine: contract-derived layouts, a quick Amaranth-simulator run, and the cocotb +
Verilator benches (random MM/MV instructions against the golden simulator's exec_matrix,
checker self-test, cycles per MV instruction)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from flightllm.contract.config import preset
from flightllm.contract.isa import OPCODES, Opcode, OutMode
from flightllm.contract.params import pack_requant_records
from flightllm.hw.matrix_engine import (
    COMMAND_LAYOUT, PARAMS_LAYOUT, RESULT_LAYOUT, MatrixEngine,
)

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_matrix_model import RowChecker, random_case  # noqa: E402
from tb_model import pack_fields, unpack_fields  # noqa: E402

MODULE = "tb_matrix_engine"
#: The RTL benches' build: tiny's four chains, K up to 16 blocks.
MAX_K_BLOCKS = 16


def test_layouts_follow_the_contract():
    spec = OPCODES[Opcode.MM]
    for name, fld in COMMAND_LAYOUT:
        if name != "mv":
            assert fld.shape.width == spec.field(name).width, name
    # 16 records packed by the contract read back field by field through the layout.
    rng = np.random.default_rng(0)
    bias = rng.integers(-(1 << 31), 1 << 31, 16)
    mult = rng.integers(-(1 << 15), 1 << 15, 16)
    shift = rng.integers(0, 63, 16)
    raw = int.from_bytes(pack_requant_records(bias, mult, shift), "little")
    view = data.Const(PARAMS_LAYOUT, raw)
    assert [view[j].bias for j in range(16)] == bias.tolist()
    assert [view[j].mult for j in range(16)] == mult.tolist()
    assert [view[j].shift for j in range(16)] == shift.tolist()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="chains must be a power of two"):
        MatrixEngine(preset("tiny"), chains=3)
    with pytest.raises(ValueError, match="max_k_blocks"):
        MatrixEngine(preset("tiny"), max_k_blocks=12)


def _simulate(cases, chains: int, *, max_cycles: int = 20000) -> RowChecker:
    dut = MatrixEngine(preset("tiny"), chains=chains, max_k_blocks=8)
    checker = RowChecker("matrix engine")
    for case in cases:
        for row in case.expected:
            checker.expect(row)
    rows = sum(len(case.expected) for case in cases)

    def feeder(port, beats):
        async def feed(ctx):
            for beat in beats:
                ctx.set(port.payload.as_value() if isinstance(port.payload, data.View)
                        else port.payload, beat)
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)
        return feed

    async def drain(ctx):
        ctx.set(dut.results.ready, 1)
        for _ in range(max_cycles):
            if checker.count == 16 * rows:
                break
            _, _, valid, payload = await ctx.tick().sample(dut.results.valid,
                                                           dut.results.payload.as_value())
            if valid:
                checker.check(unpack_fields(RESULT_LAYOUT, payload))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feeder(dut.cmd, [pack_fields(COMMAND_LAYOUT, c.command) for c in cases]))
    for c in range(chains):
        sim.add_testbench(feeder(dut.words[c], [w for case in cases for w in case.words[c]]))
    for name in ("acts", "params", "psum", "residual"):
        sim.add_testbench(feeder(getattr(dut, name),
                                 [b for case in cases for b in getattr(case, name)]))
    sim.add_testbench(drain)
    sim.run()
    return checker


def test_engine_in_amaranth_simulator():
    """Three instructions (MV ACC32 on mixed codes; MM Q8 with psum and relu, strided, odd
    rows; MM Q32 with psum, residual and a uniform record on random index bytes) through two
    chains, against exec_matrix."""
    cfg = preset("tiny")
    rng = np.random.default_rng(4)
    common = dict(mv=False, psum=True, residual=False, relu=False, p_uniform=False,
                  strided=False, m_rows=1)
    cases = [
        random_case(rng, cfg, 2, **dict(common, mv=True, psum=False), bits=4, gscale=False,
                    kind="mixed", mode=OutMode.ACC32, n_strips=3, k_blocks=2),
        random_case(rng, cfg, 2, **dict(common, relu=True, strided=True, m_rows=3), bits=8,
                    gscale=False, kind=2, mode=OutMode.Q8, n_strips=2, k_blocks=2),
        random_case(rng, cfg, 2, **dict(common, residual=True, p_uniform=True, m_rows=4),
                    bits=2, gscale=True, kind="bytes", mode=OutMode.Q32, n_strips=3,
                    k_blocks=1),
    ]
    checker = _simulate(cases, chains=2)
    assert checker.errors == 0 and checker.count == sum(c.values for c in cases) == 336


# --------------------------------------------------------------------------- cocotb
@pytest.fixture(scope="module")
def engine_tiny(rtl_sim):
    return rtl_sim.build("matrix_engine_tiny",
                         lambda: MatrixEngine(preset("tiny"), max_k_blocks=MAX_K_BLOCKS))


def _run(rtl_sim, build, testcase, tmp_path, **env):
    return rtl_sim.run(build, MODULE, testcase, tmp_path, FLIGHTLLM_TB_PRESET="tiny",
                       FLIGHTLLM_TB_MAX_K_BLOCKS=MAX_K_BLOCKS, **env)


@pytest.mark.rtl
def test_random_instructions(rtl_sim, engine_tiny, tmp_path):
    out = _run(rtl_sim, engine_tiny, "random_instructions", tmp_path)
    assert out["ok"], out
    assert out["errors"] == 0 and out["count"] >= 1000, out


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, engine_tiny, tmp_path):
    out = _run(rtl_sim, engine_tiny, "corrupted_reference", tmp_path)
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["errors"] == 1 and out["count"] == 16 * out["rows"], out


@pytest.mark.rtl
def test_mv_cycles_per_instruction(rtl_sim, engine_tiny, tmp_path):
    """Cycles per MV instruction at each N: sparser is never slower, and no instruction takes
    more than its chain-bound or dequantiser-bound time plus the pipeline's fill."""
    out = _run(rtl_sim, engine_tiny, "mv_cycles", tmp_path)
    assert out["ok"], out
    cycles = {key: v["cycles"] for key, v in out["cycles"].items()}
    mv = [cycles[f"MV N={n}"] for n in (16, 8, 4, 2)]
    assert mv == sorted(mv, reverse=True), cycles
    assert mv[-1] < mv[0] / 2, cycles
    for key, v in out["cycles"].items():
        # A block costs at most one cycle per word plus two (dequantiser); fill <= 80.
        blocks = out["k_blocks"] * out["n_strips"] // out["chains"] * (2 if "MM" in key else 1)
        bound = max(v["chain_bound"], v["words_per_chain"] + 2 * blocks) + 80
        assert v["cycles"] <= bound, (key, v, bound)


@pytest.mark.rtl
@pytest.mark.slow
def test_random_instructions_long(rtl_sim, engine_tiny, tmp_path):
    out = _run(rtl_sim, engine_tiny, "random_instructions", tmp_path,
               FLIGHTLLM_TB_VALUES="100000", FLIGHTLLM_TB_SEED="7")
    assert out["ok"] and out["errors"] == 0 and out["count"] >= 100000, out
