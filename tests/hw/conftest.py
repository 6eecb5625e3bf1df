"""Fixtures for RTL simulation: Verilator builds of Amaranth designs run by cocotb testbenches.

Builds go to ``sim_build/<name>/`` at the repository root (git-ignored) and are reused while
the generated Verilog and the tool versions are unchanged; each run writes its results into a
pytest temporary folder. ``FLIGHTLLM_TB_SEED`` is passed through to the testbenches.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from flightllm.hw.sim_runner import build_amaranth, simulator_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
TB_DIR = Path(__file__).resolve().parent / "cocotb"
sys.path.insert(0, str(TB_DIR))
from tb_model import pack_fields, unpack_fields  # noqa: E402


class RTLSim:
    """Builds designs once per name and runs cocotb test cases against them."""

    def __init__(self):
        self._builds = {}

    def build(self, name: str, make_design):
        """The Verilator build of ``make_design()`` under ``sim_build/<name>``."""
        if name not in self._builds:
            self._builds[name] = build_amaranth(make_design(), name=name,
                                                build_dir=REPO / "sim_build" / name)
        return self._builds[name]

    def run(self, build, module: str, testcase: str, run_dir: Path, **env) -> dict:
        """Run one test case; return the testbench's summary with the run's outcome added."""
        summary = run_dir / f"{testcase}.summary.json"
        extra = {"FLIGHTLLM_TB_SUMMARY": str(summary)}
        if os.environ.get("FLIGHTLLM_TB_SEED"):
            extra["FLIGHTLLM_TB_SEED"] = os.environ["FLIGHTLLM_TB_SEED"]
        extra.update({k: str(v) for k, v in env.items()})
        result = build.run(module, testcase=testcase, test_dir=run_dir, module_paths=[TB_DIR],
                           extra_env=extra)
        out = json.loads(summary.read_text()) if summary.exists() else {}
        out.update(ok=result.ok, tests=result.tests, failed=result.failed,
                   sim_exit_code=result.sim_exit_code)
        print(f"{module}.{testcase}: {out}")
        return out

    def expect_pass(self, build, module: str, testcase: str, run_dir: Path, *,
                    min_count: int, **env) -> dict:
        """Run a checking test case and assert it passed with no error after at least
        ``min_count`` checked items; return its summary."""
        out = self.run(build, module, testcase, run_dir, **env)
        assert out["ok"], out
        assert out["errors"] == 0 and out["count"] >= min_count, out
        return out

    def expect_caught(self, build, module: str, testcase: str, run_dir: Path, *,
                      checked: str, per_item: int = 1, **env) -> dict:
        """Run a corrupted-reference test case and assert that it failed on exactly one error
        after checking every item (``per_item`` values per ``out[checked]``)."""
        out = self.run(build, module, testcase, run_dir, **env)
        assert out["tests"] == 1 and out["failed"] == 1, out
        assert out["errors"] == 1 and out["count"] == per_item * out[checked], out
        return out


@pytest.fixture(scope="session")
def rtl_sim():
    reason = simulator_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return RTLSim()


class StreamBench:
    """A design in Amaranth's simulator with valid/ready streams: feeders drive input streams
    beat by beat, one drainer takes an output stream (always ready).

    A payload is given as a dict of fields when the port has a layout (packed with
    :func:`tb_model.pack_fields`), as an int otherwise; drained beats come back the same way.
    """

    def __init__(self, dut):
        self.dut = dut
        self.sim = Simulator(dut)
        self.sim.add_clock(1e-8)
        #: Per drained cycle, the values of the drainer's ``watch`` signals.
        self.samples: list[tuple] = []

    def feed(self, port, beats) -> None:
        layout = _layout(port)

        async def feed(ctx):
            for beat in beats:
                if layout is None:
                    ctx.set(port.payload, beat)
                else:
                    ctx.set(port.payload.as_value(),
                            beat if isinstance(beat, int) else pack_fields(layout, beat))
                ctx.set(port.valid, 1)
                while not (await ctx.tick().sample(port.ready))[-1]:
                    pass
            ctx.set(port.valid, 0)

        # In the background: the run ends with the drainer, so a design that stops taking a
        # stream fails on the beats it did not produce instead of hanging the test.
        self.sim.add_testbench(feed, background=True)

    def drain(self, port, *, count: int | None = None, max_cycles: int = 20000,
              watch=()) -> list:
        """The list the beats of ``port`` go to: until ``count`` beats (``None``: for
        ``max_cycles``), at most ``max_cycles`` cycles."""
        layout = _layout(port)
        got = []

        async def drain(ctx):
            ctx.set(port.ready, 1)
            for _ in range(max_cycles):
                if count is not None and len(got) >= count:
                    return
                _, _, valid, payload, *watched = await ctx.tick().sample(
                    port.valid, port.payload.as_value() if layout else port.payload, *watch)
                self.samples.append(tuple(watched))
                if valid:
                    got.append(payload if layout is None else unpack_fields(layout, payload))

        self.sim.add_testbench(drain)
        return got

    def run(self) -> None:
        self.sim.run()


def _layout(port):
    payload = port.payload
    return payload.shape() if isinstance(payload, data.View) else None


@pytest.fixture
def stream_bench():
    """:class:`StreamBench`, to build an Amaranth-simulator bench around a design."""
    return StreamBench
