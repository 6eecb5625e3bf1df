"""The build directory: complete, deterministic, atomic, verified on load; CLI compile/simulate."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from flightllm.cli import main
from flightllm.compiler import build as build_mod
from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.layout import CompileError
from flightllm.compiler.sources import parse_sparsity
from flightllm.contract.config import preset
from flightllm.host.build import BuildError, load_build

from .conftest import MODEL_DIR

LLAMA = MODEL_DIR / "llama_dynamo_op18.onnx"
OPTS = CompileOptions(max_len=32, calibration_sequences=1)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_rebuild_is_byte_identical_but_for_timings(tmp_path):
    ir = load_onnx(LLAMA)
    compile_model(ir, preset("tiny"), tmp_path / "a", OPTS)
    compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b", OPTS)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        if name == "report.json":
            ra, rb = (json.loads(x) for x in (a[name], b[name]))
            for r in (ra, rb):
                r.pop("compile_seconds"), r.pop("timings")
            assert ra == rb
        else:
            assert a[name] == b[name], name


def test_manifest_describes_programs_tensors_and_io(tmp_path):
    compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b", OPTS)
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["config_hash"] == preset("tiny").config_hash()
    phases = {p["phase"]: p for p in m["programs"]}
    assert phases["decode"]["kv"] == [1, 32] and phases["prefill"]["seq"][0] == 1
    names = {t["name"] for t in m["tensors"]}
    assert "layers.0.k_cache" in names and "rope_table" in names
    assert any(n.startswith("layers.1.down.chunk") for n in names)
    # Every channel the core has holds weights: striping makes all of them stream.
    weight = [t for t in m["tensors"] if t["dtype"] == "blocks"]
    assert {c for t in weight for c in t["channels"]} == set(range(2))


def test_failed_compile_leaves_no_directory(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(build_mod, "encode_program", boom)
    with pytest.raises(RuntimeError):
        compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b", OPTS)
    assert list(tmp_path.iterdir()) == []


def test_failed_rebuild_keeps_the_old_build(tmp_path, monkeypatch):
    compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b", OPTS)
    before = files(tmp_path / "b")
    monkeypatch.setattr(build_mod.Path, "write_bytes", lambda *a: (_ for _ in ()).throw(
        OSError("disk full")))
    with pytest.raises(OSError):
        compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b", OPTS)
    monkeypatch.undo()
    assert files(tmp_path / "b") == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_corrupted_build_is_refused(tmp_path):
    compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b", OPTS)
    path = tmp_path / "b" / "hbm" / "core0_ch01.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="core0_ch01.bin does not match its checksum"):
        load_build(tmp_path / "b")
    with pytest.raises(BuildError, match="not a build directory"):
        load_build(tmp_path)


def test_model_that_does_not_fit_is_refused_with_numbers(tmp_path):
    with pytest.raises(CompileError, match="WBUF .* cannot hold"):
        compile_model(load_onnx(LLAMA), preset("tiny"), tmp_path / "b",
                      CompileOptions(max_len=4096, calibration_sequences=1))
    assert not (tmp_path / "b").exists()


def test_sparsity_recipes():
    assert parse_sparsity("8")["q"] == 8 and "lm_head" not in parse_sparsity("8")
    assert parse_sparsity("q=4,o=8") == {"q": 4, "o": 8}
    with pytest.raises(CompileError, match="unknown projection 'qq'"):
        parse_sparsity("qq=4")
    with pytest.raises(CompileError, match="keeps 2, 4, 8 or 16"):
        parse_sparsity("q=3")


def test_cli_compile_simulate_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "b"
    r = runner.invoke(main, ["compile", str(LLAMA), "--arch", "tiny", "-o", str(out),
                             "--max-len", "32", "--weight-bits", "4", "--sparsity", "q=8,k=8",
                             "--dump-dir", str(tmp_path / "dump")])
    assert r.exit_code == 0, r.output
    dump = tmp_path / "dump"
    assert (dump / "lower.json").is_file() and (dump / "decode.core0.asm").is_file()
    r = runner.invoke(main, ["simulate", str(out), "--input-ids", "1,2,3", "--decode-steps", "4",
                             "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(data["tokens"]) == 5 and len(data["logits"]) == 5
    assert all(int(np.argmax(row)) == t for t, row in zip(data["tokens"], data["logits"]))


@pytest.mark.parametrize("args,needle", [
    (["compile", "missing.onnx", "-o", "X"], "no such ONNX file"),
    (["compile", "llama9", "-o", "X"], "is not an .onnx file"),
    (["compile", str(LLAMA), "-o", "X", "--arch", "nope"], "neither a preset"),
    (["simulate", "nowhere", "--input-ids", "1"], "not a build directory"),
])
def test_cli_errors_exit_nonzero(tmp_path, args, needle):
    args = [a.replace("X", str(tmp_path / "x")) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and needle in r.output
    assert not (tmp_path / "x").exists()


def test_avg_bits_budget_is_met_and_still_bit_exact(tmp_path):
    from flightllm.compiler.qmodel import KVState, QuantRecipe, build_qmodel, qforward
    from flightllm.compiler.calibrate import calibrate_channels, default_calibration_tokens
    from flightllm.compiler.mixed import allocate_bits
    from flightllm.host.session import GoldenDevice, Session
    ir = load_onnx(LLAMA)
    opts = CompileOptions(max_len=32, calibration_sequences=1, avg_bits=3.5)
    report = compile_model(ir, preset("tiny"), tmp_path / "b", opts)
    assert 2.25 < report["avg_weight_bits"] <= 3.5
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    widths = set(manifest["model"]["recipe"]["bits_by_name"].values())
    assert widths > {4} or len(widths) > 1  # a real mix, not one width
    # The same allocation through the integer reference gives the build's logits.
    calib = [default_calibration_tokens(ir.config.vocab_size, 64, 0)]
    ch = calibrate_channels(ir, calib)
    bits = allocate_bits(ir, 3.5, activation_ranges=ch)
    qm = build_qmodel(ir, {k: float(v.max()) for k, v in ch.items()},
                      QuantRecipe(bits_by_name=bits), max_len=32)
    build = load_build(tmp_path / "b")
    got = Session(build, GoldenDevice(build)).prefill([5, 6, 7]).logits
    np.testing.assert_array_equal(got, qforward(qm, [5, 6, 7], 0, KVState.empty(qm))
                                  * qm.lm_head.s_out)


def test_infeasible_budget_is_a_clean_error(tmp_path):
    r = CliRunner().invoke(main, ["compile", str(LLAMA), "-o", str(tmp_path / "b"),
                                  "--avg-bits", "1.5", "--max-len", "32"])
    assert r.exit_code == 1 and "--avg-bits 1.5" in r.output and "infeasible" in r.output
    assert not (tmp_path / "b").exists()


def test_one_digit_mlp_hidden_is_bit_exact_and_runs_down_once(tmp_path):
    """--mlp-hidden-digits 1: the integer reference without the split hidden gives the
    build's logits bit for bit; the manifest says so. Decode runs down once either way: with
    two digits as one MM of two rows that sums them (sum_rows), with one as an MV."""
    from flightllm.contract.isa import Opcode
    from flightllm.host.session import GoldenDevice, Session
    from flightllm.sim.golden import load_streams

    from .conftest import assert_generation_matches, reference_qmodel
    ir = load_onnx(LLAMA)
    mvs = {}
    for digits in (1, 2):
        opts = CompileOptions(max_len=32, calibration_sequences=1, mlp_hidden_digits=digits)
        out = tmp_path / f"b{digits}"
        compile_model(ir, preset("tiny"), out, opts)
        build = load_build(out)
        ins = [s.ins for stream in load_streams(build.program("decode")) for s in stream]
        matrix = [i for i in ins if i.op in (Opcode.MM, Opcode.MV)]
        mvs[digits] = (len(matrix), sum(i.op == Opcode.MM and i.sum_rows for i in matrix))
        recipe = json.loads((out / "manifest.json").read_text())["model"]["recipe"]
        assert recipe["split_hidden"] is (digits == 2)
        if digits == 1:
            qm = reference_qmodel(ir, opts)
            assert all(layer.down_lo is None for layer in qm.layers)
            assert_generation_matches(Session(build, GoldenDevice(build)), qm, [5, 6, 7], 3)
    assert mvs[1] == (mvs[2][0], 0) and mvs[2][1] >= ir.config.num_layers


def test_mlp_hidden_digits_are_one_or_two(tmp_path):
    with pytest.raises(CompileError, match="mlp_hidden_digits"):
        CompileOptions(mlp_hidden_digits=3)
    r = CliRunner().invoke(main, ["compile", str(LLAMA), "-o", str(tmp_path / "b"),
                                  "--mlp-hidden-digits", "3"])
    assert r.exit_code != 0 and "--mlp-hidden-digits" in r.output
    assert not (tmp_path / "b").exists()
