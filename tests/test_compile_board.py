"""`flightllm compile --board`: the main job, end to end (bundled model, kernel, project)."""

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flightllm.boards.registry import load_board
from flightllm.cli import main
from flightllm.contract.config import preset
from flightllm.host.build import load_build

BOARDS_DIR = Path(__file__).resolve().parents[1] / "boards"


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "build"
    result = invoke("compile", "--board", "u280", "--arch", "tiny", "-o", out, "--max-len", 32)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_bundled_model_compiles_into_a_complete_vitis_project(demo):
    out, output = demo
    assert "bundled tiny LLaMA" in output and "make TARGET=hw" in output
    project = out / "project"
    for name in ("Makefile", "kernel.xml", "link.cfg", "package_kernel.tcl", "README.md",
                 "project.json", "src/flightllm.v"):
        assert (project / name).is_file(), name
    verilog = (project / "src/flightllm.v").read_text()
    assert "module flightllm" in verilog
    report = json.loads((out / "report.json").read_text())
    assert report["board"]["name"] == "u280" and report["fit"]["fits"]
    # An UltraScale+ card gets the DSP48E2 primitive in every slice of the one chain module.
    assert report["board"]["dsp_impl"] == "xilinx"
    assert len(re.findall(r"^\s*DSP48E2\s", verilog, re.MULTILINE)) == preset("tiny").mv_k
    # Memories start at zero without initialisers (UltraRAM cannot take one); the SFU's
    # tables keep theirs.
    from flightllm.hw.kernel import drop_zero_memory_init
    assert drop_zero_memory_init(verilog) == verilog and "gate_rom0[0] = 16'h" in verilog
    assert "| dsp |" in (out / "report.md").read_text()
    build = load_build(out)  # the host files verify against the manifest
    assert build.config.name == "tiny"


def test_a_configuration_that_does_not_fit_is_refused_with_the_numbers(tmp_path):
    board = yaml.safe_load((BOARDS_DIR / "u50.yaml").read_text())
    board["name"] = "small"
    board["resources"]["dsp"] = 100  # tiny needs about 150 DSPs
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(board))
    load_board(path)  # a valid board, only too small
    out = tmp_path / "out"
    result = invoke("compile", "--board", path, "--arch", "tiny", "-o", out)
    assert result.exit_code == 1
    assert "does not fit" in result.output and "dsp" in result.output
    assert "OVER by" in result.output
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_unknown_board_is_named():
    result = invoke("compile", "--board", "u9999", "-o", "never")
    assert result.exit_code == 1 and "u9999" in result.output
    assert not Path("never").exists()
