# amaranth: UnusedElaboratable=no
"""The matrix unit (hw/matrix_unit.py): MM/MV instructions read from and written to real buffer
memories behind their arbiters, compared with the golden simulator's exec_matrix on the same
buffer images (cocotb + Verilator benches in tests/hw/cocotb/tb_matrix_unit.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightllm.contract.config import BufferSpec, preset
from flightllm.contract.isa import Opcode, OutMode
from flightllm.hw.isa_layouts import instruction_layout
from flightllm.hw.matrix_unit import MatrixUnit
from flightllm.sim.execute import Counters, exec_matrix
from flightllm.sim.machine import CoreBuffers

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_matrix_unit import stage_matrix  # noqa: E402
from tb_unit_host import instruction_bits  # noqa: E402
from tb_units_common import (  # noqa: E402
    BUFFER_OF, BUFFERS, UnitHarness, dirty_rows, initial_contents, pysim_issue, pysim_read_rows,
)

MODULE = "tb_matrix_unit"
#: The benches' build: tiny's four chains, K up to 8 blocks.
MAX_K_BLOCKS = 8


def make_harness(init=None, *, chains=None, max_k_blocks=MAX_K_BLOCKS, cfg=None):
    return UnitHarness(
        cfg or preset("tiny"), lambda cfg: MatrixUnit(cfg, max_k_blocks=max_k_blocks, chains=chains),
        {"mm": instruction_layout(Opcode.MM), "mv": instruction_layout(Opcode.MV)},
        ("mm_done", "mv_done", "busy"), init=init)


def _check_program(cfg, specs, seed, chains=2, min_rows=10):
    """Stage the instructions of ``specs`` (stage_matrix arguments), run them through a
    unit of ``chains`` chains in the Amaranth simulator and compare every buffer row they
    change with exec_matrix's; return the instructions and their cycles."""
    rng = np.random.default_rng(seed)
    core = CoreBuffers(cfg)
    for name, image in initial_contents(cfg).items():
        core.mem[BUFFER_OF[name]][:] = image
    common = dict(gscale=False, psum=False, residual=False, relu=False, p_uniform=False,
                  k_blocks=2, m_rows=1, strided=False)
    program = [stage_matrix(rng, core, **dict(common, **spec)) for spec in specs]
    staged = {name: core.mem[BUFFER_OF[name]].copy() for name in BUFFERS}
    for ins in program:
        exec_matrix(ins, core, Counters(), "test")
    dut = make_harness(staged, chains=chains, cfg=cfg)
    changed = {name: dirty_rows(staged[name], core.mem[BUFFER_OF[name]],
                                cfg.buffer(name).width) for name in BUFFERS}
    assert sum(len(rows) for rows in changed.values()) > min_rows
    got, cycles = {}, []

    async def bench(ctx):
        for ins in program:
            mv = ins.op == Opcode.MV
            cycles.append(await pysim_issue(ctx, dut.mv if mv else dut.mm,
                                            instruction_bits(ins),
                                            dut.mv_done if mv else dut.mm_done,
                                            max_cycles=5000))
        for name in BUFFERS:
            got[name] = await pysim_read_rows(ctx, getattr(dut, f"host_{name}"),
                                              changed[name])
        assert ctx.get(dut.error) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for name in BUFFERS:
        width = cfg.buffer(name).width
        image = core.mem[BUFFER_OF[name]]
        want = [int.from_bytes(image[r * width:(r + 1) * width].tobytes(), "little")
                for r in changed[name]]
        assert got[name] == want, name
    return program, cycles


@pytest.mark.parametrize("variant", ["tiny", "abuf as wide as rbuf", "two wbuf read ports"])
def test_unit_in_amaranth_simulator(variant):
    """Three instructions through two chains in the Amaranth simulator (MV on mixed sparse
    codes into ACC32; MM Q8 with psum and relu, strided strips, three rows; MM Q32 with a
    residual and a uniform record), buffers compared with exec_matrix's afterwards. With
    ABUF rows as wide as RBUF's (as on the full-size presets) one writer serves both; with
    two WBUF read ports the odd chain reads its weights through the second."""
    cfg = preset("tiny")
    if variant == "abuf as wide as rbuf":
        cfg = cfg.replace(abuf=BufferSpec(cfg.rbuf.width, cfg.abuf.bytes // cfg.rbuf.width))
    elif variant == "two wbuf read ports":
        cfg = cfg.replace(wbuf_read_ports=2)
    _check_program(cfg, [
        dict(mv=True, bits=4, kind="mixed", mode=OutMode.ACC32, n_strips=3),
        dict(mv=False, bits=8, kind=2, mode=OutMode.Q8, psum=True, relu=True, strided=True,
             m_rows=3, n_strips=2),
        dict(mv=False, bits=2, kind="dense", gscale=True, mode=OutMode.Q32, residual=True,
             p_uniform=True, m_rows=2, n_strips=3, k_blocks=1),
    ], seed=5)


@pytest.mark.parametrize("pair_group", [2, 4])
def test_unit_serves_groups_of_token_pairs(pair_group):
    """With mm_pair_group > 1 the unit reads each strip's weights and records once per group
    of token pairs and writes, reads partial sums and residuals in (group, strip, pair,
    token) order: MMs of several groups with a short last one, one pair, and an MV, against
    exec_matrix."""
    cfg = preset("tiny").replace(mm_pair_group=pair_group)
    _check_program(cfg, [
        dict(mv=False, bits=8, kind=2, mode=OutMode.Q8, psum=True, relu=True, strided=True,
             m_rows=4 * pair_group + 1, n_strips=3),
        dict(mv=True, bits=4, kind="mixed", mode=OutMode.ACC32, n_strips=3),
        dict(mv=False, bits=4, kind="dense", gscale=True, mode=OutMode.Q32, residual=True,
             m_rows=2 * pair_group - 1, n_strips=2, k_blocks=1),
        dict(mv=False, bits=2, kind="mixed", mode=OutMode.ACC32, psum=True, m_rows=2,
             n_strips=1),
    ], seed=9 + pair_group)


def test_two_wbuf_read_ports_double_a_port_bound_mv():
    """A dense INT8 MV (4 strips x 8 K blocks on tiny's four chains) is bound by the WBUF
    read port: 16-byte rows feed four chains that take an 8-byte word each per cycle. A
    second read port (odd chains) nearly halves it; both runs are bit-exact and within 5%
    of sim/perf_units.matrix_cost, which the full-size estimates use."""
    from flightllm.sim.perf_units import UnitTiming, matrix_cost
    spec = dict(mv=True, bits=8, kind="dense", mode=OutMode.ACC32, n_strips=4, k_blocks=8)
    cycles = {}
    for ports in (1, 2):
        cfg = preset("tiny").replace(wbuf_read_ports=ports)
        (ins,), (rtl,) = _check_program(cfg, [spec], seed=21, chains=4, min_rows=3)
        model = matrix_cost(ins, 16, cfg, UnitTiming()).cycles
        assert abs(model - rtl) <= 0.05 * rtl, (ports, model, rtl)
        cycles[ports] = rtl
    assert cycles[2] <= 0.6 * cycles[1], cycles


def test_interface_matches_the_brief():
    unit = MatrixUnit(preset("tiny"), max_k_blocks=8)
    names = {name for name, _ in unit.signature.members.items()}
    assert names == {"mm", "mv", "mm_done", "mv_done", "busy", "error",
                     "abuf", "wbuf", "rbuf", "pbuf"}
    assert unit.signature.members["error"].shape == 3
    two = MatrixUnit(preset("tiny").replace(wbuf_read_ports=2), max_k_blocks=8)
    assert set(two.signature.members) == names | {"wbuf_b"}
    with pytest.raises(ValueError, match="chains must be a power of two"):
        MatrixUnit(preset("tiny"), chains=3)
    with pytest.raises(ValueError, match="max_k_blocks"):
        MatrixUnit(preset("tiny"), max_k_blocks=12)


@pytest.fixture(scope="module")
def unit_tiny(rtl_sim):
    return rtl_sim.build("matrix_unit_tiny", make_harness)


def _run(rtl_sim, build, testcase, tmp_path, **env):
    return rtl_sim.run(build, MODULE, testcase, tmp_path, FLIGHTLLM_TB_PRESET="tiny",
                       FLIGHTLLM_TB_MAX_K_BLOCKS=MAX_K_BLOCKS, **env)


@pytest.mark.rtl
def test_random_instructions(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "random_instructions", tmp_path)
    assert out["ok"], out
    assert out["mismatches"] == 0 and out["instructions"] >= 120, out
    assert out["checked_rows"] > 1000 and out["final_rows_checked"] > 9000, out


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "corrupted_reference", tmp_path)
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["mismatches"] == 1, out


@pytest.mark.rtl
def test_out_of_range_operand_sets_error_and_finishes(rtl_sim, unit_tiny, tmp_path):
    """Out-of-range and misaligned operands (weights off the 8-byte grid among them) and bad
    flags each set their error code, as the golden simulator refuses them."""
    out = _run(rtl_sim, unit_tiny, "bad_operands", tmp_path)
    assert out["ok"], out
    assert out["errors_seen"] == out["bad_instructions"] == 8, out


@pytest.mark.rtl
def test_cycles_per_instruction(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "cycles", tmp_path)
    assert out["ok"], out
    for key, v in out["cycles"].items():
        # The engine alone needs the chain-bound time; the unit adds its start-up and drain.
        assert v["cycles"] <= 3 * v["wbuf_rows"] + v["chain_bound"] + 120, (key, v)


@pytest.mark.rtl
@pytest.mark.slow
def test_random_instructions_long(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "random_instructions", tmp_path,
               FLIGHTLLM_TB_INSTRUCTIONS="1500", FLIGHTLLM_TB_SEED="7")
    assert out["ok"] and out["mismatches"] == 0, out
