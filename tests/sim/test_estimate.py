"""``flightllm estimate`` (sim/estimate.py), the shape-only programs and the trace output."""

import json
import sys

import pytest
from click.testing import CliRunner

from flightllm.compiler.qmodel import QuantRecipe
from flightllm.contract.config import preset
from flightllm.sim.estimate import estimate_command, load_target
from flightllm.sim.perf import PerfModel, SparsityMap
from flightllm.sim.shape_programs import bits_for_average, shape_programs
from flightllm.sim.trace import chrome_trace, roofline_svg, write_roofline

ONNX = "tests/models/onnx/llama_dynamo_op18.onnx"
RECIPE = {"q": 8, "up": 2}


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    from flightllm.compiler.build import CompileOptions, compile_model
    from flightllm.compiler.sources import load_model
    out = tmp_path_factory.mktemp("estimate") / "build"
    compile_model(load_model(ONNX), preset("tiny"), out,
                  CompileOptions(weight_bits=4, max_len=64, sparsity=RECIPE,
                                 calibration_sequences=2))
    return out


def invoke(*args):
    # --no-cache: tests never write to the user's cache.
    return CliRunner().invoke(estimate_command, [str(a) for a in args] + ["--no-cache"])


def test_build_steps_are_the_simulate_calls(tiny_build):
    r = invoke(tiny_build, "--board", "u280", "--input-ids", ",".join(["5"] * 20),
               "--decode-steps", "3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("decode_tokens_per_s", "prefill_ms", "hbm_utilization", "mpe_utilization"):
        assert key in out
    chunk = out["prefill_chunk"]
    phases = [s["phase"] for s in out["steps"]]
    assert phases == ["prefill"] * -(-20 // chunk) + ["decode"] * 3
    assert [s["kv"] for s in out["steps"]][-3:] == [21, 22, 23]
    assert out["cycles"] == [s["cycles"] for s in out["steps"]]
    # The same figures straight from the model.
    target = load_target(str(tiny_build), preset("tiny"))
    model = PerfModel(target.config, sparsity=target.sparsity)
    assert out["cycles"][-1] == model.run(target.decode, seq=1, kv=23, pos=22).cycles
    # A 64-token build has no 128-token figures: they are left out, not invented.
    assert out["prefill_ms"] == {} and out["decode_tokens_per_s"] == {}


def test_shape_programs_time_like_the_compiled_build(tiny_build):
    """Lowering from shapes gives programs with the compiled build's timing and counts."""
    from flightllm.compiler.sources import load_model
    target = load_target(str(tiny_build), preset("tiny"))
    model_cfg = load_model(ONNX, weights="none").config
    progs = shape_programs(model_cfg, preset("tiny"),
                           QuantRecipe(weight_bits=4, sparsity=RECIPE), 64, cache_dir=None)
    shaped = {"prefill": progs.prefill, "decode": progs.decode}
    real = PerfModel(target.config, sparsity=target.sparsity)
    shape = PerfModel(target.config,
                      sparsity=SparsityMap.from_placements(progs.tensors, RECIPE))
    for phase, seq, kv in (("prefill", 9, 9), ("decode", 1, 33)):
        a = real.run(getattr(target, phase), seq=seq, kv=kv)
        b = shape.run(shaped[phase], seq=seq, kv=kv)
        assert (a.cycles, a.macs_stored, a.hbm_read_bytes) == \
            (b.cycles, b.macs_stored, b.hbm_read_bytes)


def test_preset_figures_units_trace_and_roofline(tmp_path):
    r = invoke("gpt2", "--board", "u280", "--max-len", "128", "--json",
               "--trace", tmp_path / "t.json", "--roofline", tmp_path / "roof.svg")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["prefill_ms"]) == {"128"} and set(out["decode_tokens_per_s"]) == {"128"}
    assert out["decode_tokens_per_s"]["128"] == pytest.approx(1e3 / out["decode_ms"]["128"])
    for phase in ("prefill", "decode"):
        for value in (*out["hbm_utilization"][phase].values(),
                      *out["mpe_utilization"][phase].values()):
            assert 0 < value < 1
    # Prefill cannot beat the DSP-bound minimum.
    assert out["prefill_ms"]["128"] > out["prefill_dsp_bound_ms"]["128"]
    assert out["avg_weight_bits"] == pytest.approx(4.25, abs=0.01)
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    svg = (tmp_path / "roof.svg").read_text()
    assert svg.startswith("<svg") and "decode KV 128" in svg and "MM peak" in svg
    assert "prefill 128" in roofline_svg(out, preset("u280"), PerfModel(preset("u280")).hbm)


def test_sparsity_and_width_change_the_estimate():
    dense = invoke(ONNX, "--board", "u280", "--max-len", "128", "--json")
    sparse = invoke(ONNX, "--board", "u280", "--max-len", "128", "--sparsity", "2",
                    "--weight-bits", "2", "--json")
    assert dense.exit_code == 0 and sparse.exit_code == 0, sparse.output
    a, b = json.loads(dense.stdout), json.loads(sparse.stdout)
    assert b["weight_bytes"] < a["weight_bytes"]
    assert b["decode_ms"]["128"] < a["decode_ms"]["128"]


def test_one_digit_mlp_hidden_decodes_faster():
    # The ONNX test model is a gated LLaMA: with two digits (the default) decode splits the
    # hidden into them (MISC ops and a second gather) and runs down once over both
    # (sum_rows); with one it splits nothing. Same weights either way.
    two = json.loads(invoke(ONNX, "--board", "u280", "--max-len", "128", "--json").stdout)
    one = invoke(ONNX, "--board", "u280", "--max-len", "128", "--mlp-hidden-digits", "1",
                 "--json")
    assert one.exit_code == 0, one.output
    one = json.loads(one.stdout)
    assert one["weight_bytes"] == two["weight_bytes"]
    assert one["decode_ms"]["128"] < two["decode_ms"]["128"]
    assert invoke(ONNX, "--board", "u280", "--mlp-hidden-digits", "3").exit_code != 0


def test_shape_programs_cache(tmp_path):
    from flightllm.compiler.sources import load_model
    model_cfg = load_model(ONNX, weights="none").config
    recipe = QuantRecipe(weight_bits=4)
    first = shape_programs(model_cfg, preset("tiny"), recipe, 64, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    again = shape_programs(model_cfg, preset("tiny"), recipe, 64, cache_dir=tmp_path)
    assert again == first
    other = shape_programs(model_cfg, preset("tiny"), QuantRecipe(weight_bits=8), 64,
                           cache_dir=tmp_path)
    assert other.decode != first.decode and len(list(tmp_path.iterdir())) == 6


def test_bits_for_average_respects_the_budget():
    from flightllm.compiler.presets import preset as model_preset
    cfg = model_preset("gpt2")
    chosen = bits_for_average(cfg, 6.0, {})
    assert set(chosen.values()) == {4, 8}
    with pytest.raises(ValueError, match="2-bit"):
        bits_for_average(cfg, 1.0, {})


@pytest.mark.parametrize("args, message", [
    (["gpt2", "--board", "zcu104"], "neither a board"),
    (["no-such-model", "--board", "u280"], "no-such-model"),
    (["gpt2", "--board", "u280", "--input-ids", "1,2"], "needs a build"),
    (["gpt2", "--board", "u280", "--decode-steps", "-1"], "--decode-steps"),
    (["gpt2", "--board", "u280", "--arch", "no-such.yaml"], "no-such.yaml"),
    (["gpt2", "--board", "u280", "--sparsity", "q=3"], "q=3"),
])
def test_bad_input_exits_non_zero(args, message):
    r = invoke(*args)
    assert r.exit_code != 0
    assert message in r.output


def test_bad_ids_and_lengths_with_a_build(tiny_build):
    r = invoke(tiny_build, "--board", "u280", "--input-ids", "1,x")
    assert r.exit_code != 0 and "comma-separated" in r.output
    r = invoke(tiny_build, "--board", "u280", "--input-ids", "1,2", "--decode-steps", "100")
    assert r.exit_code != 0 and "max_len 64" in r.output


def test_trace_has_one_span_per_instruction(tiny_build):
    target = load_target(str(tiny_build), preset("tiny"))
    result = PerfModel(target.config, sparsity=target.sparsity).run(target.decode, seq=1,
                                                                   kv=12, trace=True)
    doc = chrome_trace(result)
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == sum(result.instructions.values())
    assert {e["cat"] for e in spans} >= {"LD", "MPE", "SFU", "ST"}
    assert max(e["args"]["end_cycle"] for e in spans) == result.cycles
    with pytest.raises(ValueError, match="trace=True"):
        chrome_trace(PerfModel(target.config, sparsity=target.sparsity).run(target.decode))


def test_roofline_png_with_matplotlib_and_svg_without(tmp_path, monkeypatch):
    cfg = preset("tiny")
    hbm = PerfModel(cfg).hbm
    est = {"model": "m", "board": "b", "config": "tiny",
           "detail": {"decode": {"128": {"hbm_bytes": 4e6, "ms": 2.0, "macs_dense": 8e6}},
                      "prefill": {}}}
    pytest.importorskip("matplotlib")
    assert write_roofline(est, cfg, hbm, tmp_path / "roof.png") is None
    assert (tmp_path / "roof.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # as if not installed
    note = write_roofline(est, cfg, hbm, tmp_path / "bare.png")
    assert "matplotlib is not installed" in note and (tmp_path / "bare.svg").is_file()
    assert not (tmp_path / "bare.png").exists()
