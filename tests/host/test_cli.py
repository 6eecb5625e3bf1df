"""``flightllm run`` through click's test runner on the command object."""

import json
import sys

import pytest
from click.testing import CliRunner

from flightllm.host.cli import run_command
from flightllm.host.devices import GoldenDevice
from flightllm.host.session import Session

from .test_generate import _word_tokenizer


def run(*args):
    return CliRunner().invoke(run_command, [str(a) for a in args])


@pytest.fixture(scope="module")
def greedy(tiny_build):
    return [t for t, _ in Session(tiny_build, GoldenDevice(tiny_build)).generate([1, 2, 3], 4)]


def test_prompt_ids_stream_then_summary(tiny_build, greedy):
    r = run(tiny_build.path, "--prompt-ids", "1,2,3", "--max-new-tokens", 5)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "no tokenizer" in lines[0]
    assert lines[1].split() == [str(t) for t in greedy]
    assert lines[2] == f"tokens: {','.join(map(str, greedy))} (stopped: max_new_tokens)"
    assert lines[3].startswith("modelled: ") and "tokens/s decoding on u280" in lines[3]
    assert lines[4].startswith("host: ") and "ms per token on the golden device" in lines[4]


def test_json(tiny_build, greedy):
    r = run(tiny_build.path, "--prompt-ids", "1,2,3", "--max-new-tokens", 5, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["tokens"] == greedy and data["prompt_ids"] == [1, 2, 3]
    assert data["device"] == "golden" and data["stop_reason"] == "max_new_tokens"
    assert data["host_seconds_per_token"] > 0
    assert data["modelled"]["decode_tokens_per_s"] > 0 and data["modelled"]["kv"] == [4, 5, 6, 7]
    assert data["cycles"] == [None] * 5  # the golden device is untimed


def test_sampling_options_and_seed(tiny_build):
    args = [tiny_build.path, "--prompt-ids", "1,2,3", "--max-new-tokens", 6, "--json",
            "--top-k", 40, "--top-p", 0.95, "--temperature", 2.5]
    a = json.loads(run(*args, "--seed", 3).output)["tokens"]
    assert a == json.loads(run(*args, "--seed", 3).output)["tokens"]
    assert any(json.loads(run(*args, "--seed", s).output)["tokens"] != a for s in (4, 5))


def test_text_prompt_with_a_tokenizer(tiny_build, tmp_path):
    tok = _word_tokenizer(tmp_path / "tok")
    r = run(tiny_build.path, "--prompt", "w1 w2 w3", "--tokenizer", tok, "--max-new-tokens", 3,
            "--eos-id", 255)
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert first.startswith("w") and len(first.split()) == 3


@pytest.mark.parametrize("args,needle,code", [
    (["--prompt", "hello"], "no tokenizer.json", 1),
    ([], "exactly one of --prompt and --prompt-ids", 2),
    (["--prompt-ids", "1", "--prompt", "x"], "exactly one of", 2),
    (["--prompt-ids", "1,x"], "comma-separated integers", 2),
    (["--prompt-ids", "1,999"], "token id 999 is outside the vocabulary", 1),
    (["--prompt-ids", "1", "--device-config", "u280"], "compiled for configuration tiny", 1),
    (["--prompt-ids", "1", "--device", "xrt"], "--device xrt needs --xclbin", 2),
    (["--prompt-ids", "1", "--board", "zcu104"], "no HBM figures for board 'zcu104'", 2),
    (["--prompt-ids", "1", "--device", "xrt", "--xclbin", "k.xclbin"], "--device-config", 2),
])
def test_errors(tiny_build, args, needle, code):
    r = run(tiny_build.path, *args)
    assert r.exit_code == code and needle in r.output, r.output


def test_xrt_without_xrt_installed(tiny_build, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    r = run(tiny_build.path, "--prompt-ids", "1", "--device", "xrt", "--xclbin", "k.xclbin",
            "--device-config", "tiny")
    assert r.exit_code == 1 and "pyxrt" in r.output


def test_rtl_without_its_simulation(tiny_build, monkeypatch):
    monkeypatch.setitem(sys.modules, "flightllm.sim.rtl", None)
    r = run(tiny_build.path, "--prompt-ids", "1", "--device", "rtl")
    assert r.exit_code == 1 and "flightllm.sim.rtl.run_kernel" in r.output


def test_without_the_performance_model(tiny_build, monkeypatch):
    monkeypatch.setitem(sys.modules, "flightllm.sim.perf", None)
    r = run(tiny_build.path, "--prompt-ids", "1,2", "--max-new-tokens", 2)
    assert r.exit_code == 0 and "modelled: performance model not available" in r.output
