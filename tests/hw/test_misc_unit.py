# amaranth: UnusedElaboratable=no
"""The misc unit (hw/misc_unit.py): MISC instructions read from and written to real buffer
memories behind their arbiters, compared with the golden simulator's exec_misc on the same
buffer images (cocotb + Verilator benches in tests/hw/cocotb/tb_misc_unit.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightllm.contract.config import preset
from flightllm.contract.isa import Opcode
from flightllm.hw.isa_layouts import instruction_layout
from flightllm.hw.misc_unit import MiscUnit
from flightllm.sim.execute import Counters, exec_misc
from flightllm.sim.machine import CoreBuffers

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_misc_model import LABELS, stage_misc  # noqa: E402
from tb_unit_host import instruction_bits  # noqa: E402
from tb_units_common import (  # noqa: E402
    BUFFER_OF, BUFFERS, UnitHarness, dirty_rows, initial_contents, pysim_issue, pysim_read_rows,
)

MODULE = "tb_misc_unit"


def make_harness(init=None, *, max_row=4096, max_group=256):
    return UnitHarness(preset("tiny"),
                       lambda cfg: MiscUnit(cfg, max_row=max_row, max_group=max_group),
                       {"cmd": instruction_layout(Opcode.MISC)}, ("done", "busy"), init=init)


def test_interface_and_arguments():
    unit = MiscUnit(preset("tiny"))
    names = set(unit.signature.members.keys())
    assert names == {"cmd", "done", "busy", "error", "abuf", "wbuf", "rbuf", "pbuf"}
    with pytest.raises(ValueError, match="max_group"):
        MiscUnit(preset("tiny"), max_group=6)


@pytest.mark.parametrize("labels", [LABELS[:8], LABELS[8:]], ids=["elementwise", "rows"])
def test_unit_in_amaranth_simulator(labels):
    """Eight instructions per run in the Amaranth simulator (every variant over both runs),
    buffers compared with exec_misc's afterwards."""
    cfg = preset("tiny")
    rng = np.random.default_rng(11)
    core = CoreBuffers(cfg)
    for name, image in initial_contents(cfg).items():
        core.mem[BUFFER_OF[name]][:] = image
    program = [stage_misc(rng, core, label, cfg.sfu_lanes, in_place=bool(i % 2),
                          shape=None if label in ("COPY", "FILL") else (2, 24),
                          group=8 if label.startswith("ROPE") else None)
               for i, label in enumerate(labels)]
    staged = {name: core.mem[BUFFER_OF[name]].copy() for name in BUFFERS}
    for ins in program:
        exec_misc(ins, core, Counters(), "test")
    dut = make_harness(staged, max_row=256, max_group=64)
    changed = {name: dirty_rows(staged[name], core.mem[BUFFER_OF[name]],
                                cfg.buffer(name).width) for name in BUFFERS}
    assert sum(len(rows) for rows in changed.values()) > 10
    got = {}

    async def bench(ctx):
        for ins in program:
            await pysim_issue(ctx, dut.cmd, instruction_bits(ins), dut.done, max_cycles=5000)
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


@pytest.fixture(scope="module")
def unit_tiny(rtl_sim):
    return rtl_sim.build("misc_unit_tiny", make_harness)


def _run(rtl_sim, build, testcase, tmp_path, **env):
    return rtl_sim.run(build, MODULE, testcase, tmp_path, **env)


@pytest.mark.rtl
def test_random_instructions(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "random_instructions", tmp_path)
    assert out["ok"], out
    assert out["mismatches"] == 0 and out["instructions"] >= 128, out
    assert len(out["variants"]) == len(LABELS) and out["final_rows_checked"] > 9000, out


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "corrupted_reference", tmp_path)
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["mismatches"] == 1, out


@pytest.mark.rtl
def test_out_of_range_operand_sets_error_and_finishes(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "bad_operands", tmp_path)
    assert out["ok"], out
    assert out["errors_seen"] == out["bad_instructions"] == 6, out


@pytest.mark.rtl
def test_cycles_per_instruction(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "cycles", tmp_path)
    assert out["ok"], out
    lanes = preset("tiny").sfu_lanes
    for key, v in out["cycles"].items():
        # Element-wise and copy work streams at a beat per cycle; the row functions make up
        # to three passes; plus start-up and drain.
        assert v["cycles"] <= 4 * v["elements"] // lanes + 200, (key, v)


@pytest.mark.rtl
@pytest.mark.slow
def test_random_instructions_long(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "random_instructions", tmp_path,
               FLIGHTLLM_TB_INSTRUCTIONS="1500", FLIGHTLLM_TB_SEED="7")
    assert out["ok"] and out["mismatches"] == 0, out
