"""Fixtures for RTL simulation: Verilator builds of Amaranth designs run by cocotb testbenches.

Builds go to ``sim_build/<name>/`` at the repository root (git-ignored) and are reused while
the generated Verilog and the tool versions are unchanged; each run writes its results into a
pytest temporary folder. ``FLIGHTLLM_TB_SEED`` is passed through to the testbenches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flightllm.hw.sim_runner import build_amaranth, simulator_unavailable_reason

REPO = Path(__file__).resolve().parents[2]
TB_DIR = Path(__file__).resolve().parent / "cocotb"


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


@pytest.fixture(scope="session")
def rtl_sim():
    reason = simulator_unavailable_reason()
    if reason:
        pytest.skip(reason)
    return RTLSim()
