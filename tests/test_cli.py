"""The flightllm command: version, help, config, isa and disasm, and its error exits."""

import json

from click.testing import CliRunner

from flightllm import __version__
from flightllm.cli import main
from flightllm.contract.isa import Instruction, Opcode, encode, encode_program, isa_hash


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_version_and_help():
    assert invoke("--version").output.strip().endswith(__version__)
    out = invoke("--help").output
    for command in ("config", "disasm", "isa"):
        assert command in out


def test_config_show_and_summary(tmp_path):
    result = invoke("config", "summary", "u280", "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["dsps_total"] == 2 * 16 * 32 and info["cores"] == 2
    shown = invoke("config", "show", "tiny")
    path = tmp_path / "mine.yaml"
    path.write_text(shown.output.replace("clock_mhz: 200.0", "clock_mhz: 150.0"))
    assert json.loads(invoke("config", "summary", path, "--json").output)["clock_mhz"] == 150.0


def test_config_error_exits_nonzero_naming_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(invoke("config", "show", "tiny").output.replace("cores: 1", "cores: 0"))
    result = invoke("config", "summary", path)
    assert result.exit_code == 1 and "field 'cores' = 0" in result.output


def test_isa_summary_and_markdown():
    assert isa_hash() in invoke("isa").output
    assert invoke("isa", "--markdown").output.startswith("#")


def test_disasm_program_core_and_raw(tmp_path):
    prog = tmp_path / "p.bin"
    ld = Instruction(Opcode.LD, chan=1, len=16, n1=1, n2=1)
    prog.write_bytes(encode_program([[ld], [ld, ld]]))
    out = invoke("disasm", prog).output
    assert out.count("LD") == 3 and "# core 1" in out
    assert invoke("disasm", prog, "--core", "1").output.count("LD") == 2
    assert invoke("disasm", prog, "--core", "5").exit_code == 1
    raw = tmp_path / "r.bin"
    raw.write_bytes(b"".join(w.to_bytes(4, "little") for w in encode(ld)))
    assert "chan=1" in invoke("disasm", "--raw", raw).output


def test_disasm_errors_name_word_and_field(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x0f\x00\x00\x00")
    result = invoke("disasm", "--raw", bad)
    assert result.exit_code == 1 and "word 0: field 'opcode' = 15" in result.output
    bad.write_bytes(b"FLLMPRG1garbage")
    result = invoke("disasm", bad)
    assert result.exit_code == 1 and "truncated" in result.output
    result = invoke("disasm", tmp_path / "absent.bin")
    assert result.exit_code != 0


def test_hw_resources_is_lazy_and_counts():
    result = invoke("hw", "resources", "--arch", "tiny", "--no-synth", "--json")
    assert result.exit_code == 0, result.output
    est = json.loads(result.output)
    assert est["macs_per_dsp"] == 2 and est["dsp"] > 0
