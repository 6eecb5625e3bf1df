"""End-to-end accuracy: compiled builds on the golden simulator against onnxruntime's float model.

The measurement is bench/compiler_accuracy.py's (the same prompt, teacher-forced decode steps
and figures), run here on one model per architecture; the bench covers every export and
recipe and writes the table in docs/compiler.md.
"""

import importlib.util

import pytest

from .conftest import MODEL_DIR

pytest.importorskip("onnxruntime")

_BENCH = MODEL_DIR.parents[2] / "bench" / "compiler_accuracy.py"
_spec = importlib.util.spec_from_file_location("compiler_accuracy", _BENCH)
accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(accuracy)

#: One export per architecture, across both exporters (TorchScript feeds an attention mask).
MODELS = ("llama_dynamo_op18.onnx", "opt_torchscript_op17.onnx", "gpt2_dynamo_op23.onnx")
RECIPES = {k: accuracy.RECIPES[k] for k in ("W8A8", "W4A8", "W2A8")}


@pytest.fixture(scope="module")
def results():
    entries = {e["file"]: e for e in accuracy.decoder_models()}
    return {(r["model"], r["recipe"]): r
            for name in MODELS for r in accuracy.measure_model(entries[name], RECIPES)}


@pytest.mark.parametrize("model", MODELS)
def test_w8a8_logits_follow_the_float_model_at_every_step(results, model):
    r = results[model, "W8A8"]
    assert len(r["cosine_by_step"]) == 1 + accuracy.DECODE_STEPS
    assert r["mean_cosine"] >= 0.99, r["cosine_by_step"]
    # The goal is min >= 0.99 at every step. Measured min (mean) on this prompt: LLaMA 0.992
    # (0.995), OPT 0.999 (0.999), GPT-2 0.998 (0.999); over 12 prompt seeds LLaMA's worst step
    # was 0.983 (OPT 0.997, GPT-2 0.997), hence the looser bound here.
    assert r["min_cosine"] >= 0.95, r["cosine_by_step"]
    # The integer datapath adds error on top of weight rounding, never removes it all.
    assert r["weights_only_mean_cosine"] >= r["mean_cosine"] - 1e-3


@pytest.mark.parametrize("model", MODELS)
def test_fewer_weight_bits_agree_less(results, model):
    w8, w4, w2 = (results[model, k] for k in ("W8A8", "W4A8", "W2A8"))
    assert w8["mean_cosine"] > w4["mean_cosine"] > w2["mean_cosine"]
    assert w8["top1"] >= w4["top1"] >= w2["top1"]
    assert w8["top1"] > w2["top1"]
