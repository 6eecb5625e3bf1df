"""`flightllm simulate --engine rtl`: the generated kernel gives the golden simulator's tokens
and logits, and its JSON is clean (the simulator's log does not reach standard output)."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flightllm.cli import main
from flightllm.default_model import default_model_path
from flightllm.hw.sim_runner import simulator_unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.rtl]


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_rtl_engine_matches_golden(tmp_path):
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    out = tmp_path / "build"
    assert invoke("compile", default_model_path(), "--arch", "tiny", "-o", out,
                  "--max-len", 32).exit_code == 0
    runs = {}
    for engine in ("golden", "rtl"):
        # A process of its own with an empty RTL cache: the Verilator build runs and writes
        # at the file-descriptor level, which CliRunner would not see.
        env = {**os.environ, "FLIGHTLLM_RTL_CACHE": str(tmp_path / "rtl")}
        result = subprocess.run([sys.executable, "-m", "flightllm", "simulate", str(out),
                                 "--input-ids", "1,2,3", "--decode-steps", "2", "--engine",
                                 engine, "--json"], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[engine] = json.loads(result.stdout)  # one JSON document, nothing else
    assert (tmp_path / "rtl").is_dir() and list((tmp_path / "rtl").glob("*/build.log"))
    assert runs["rtl"]["tokens"] == runs["golden"]["tokens"]
    assert runs["rtl"]["logits"] == runs["golden"]["logits"]
    assert len(runs["rtl"]["cycles"]) == 3 and all(c > 0 for c in runs["rtl"]["cycles"])
