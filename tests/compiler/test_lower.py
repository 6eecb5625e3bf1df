"""Compiled programs on the golden simulator equal the integer reference, bit for bit."""

import json

import numpy as np
import pytest

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.qmodel import KVState, qforward
from flightllm.contract.config import preset
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session

from .conftest import MODELS, MODEL_DIR, assert_generation_matches, reference_qmodel

MAX_LEN = 64


# Every model on one core; one model per family also on three cores (uneven head and strip
# splits: 2 KV heads over 3 cores leaves one core without attention).
CASES = [(m, 1) for m in MODELS] + [(m, 3) for m in MODELS if "dynamo_op18." in m]


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{c}core" for m, c in CASES])
def compiled(request, tmp_path_factory):
    model, cores = request.param
    ir = load_onnx(MODEL_DIR / model)
    opts = CompileOptions(max_len=MAX_LEN, chunk=16, calibration_sequences=2)
    out = tmp_path_factory.mktemp("build") / "b"
    compile_model(ir, preset("tiny").replace(cores=cores), out, opts)
    qm = reference_qmodel(ir, opts)
    return load_build(out), qm


def test_prefill_then_eight_decode_steps_bit_exact(compiled):
    build, qm = compiled
    session = Session(build, GoldenDevice(build))
    prompt = np.random.default_rng(0).integers(0, qm.config.vocab_size, 21)  # two chunks
    kv = assert_generation_matches(session, qm, prompt, 8)
    # The KV cache in HBM is the reference's, byte for byte (each core holds its heads).
    n = len(prompt) + 8
    for core, caches in enumerate(build.io["k_cache"]):
        g_lo, g_hi = build.io["kv_heads"][core]
        for li, entry in enumerate(caches):
            heads, kb, L, _ = entry["shape"]
            raw = np.frombuffer(session.driver.read_channel(core, entry["channels"][0],
                                                            entry["offset"],
                                                            heads * kb * L * 16), np.int8)
            keys = raw.reshape(heads, kb, L, 16).transpose(2, 0, 1, 3).reshape(L, heads, kb * 16)
            np.testing.assert_array_equal(keys[:n], kv.keys[li][:n, g_lo:g_hi])


@pytest.mark.parametrize("length", [1, 7, 16, 17])
def test_prefill_lengths(compiled, length):
    build, qm = compiled
    session = Session(build, GoldenDevice(build))
    prompt = np.arange(length) * 7 % qm.config.vocab_size
    want = qforward(qm, prompt, 0, KVState.empty(qm)) * qm.lm_head.s_out
    np.testing.assert_array_equal(session.prefill(prompt).logits, want)


def test_any_interleaving_gives_the_same_logits(compiled):
    """The scheduler's tokens are enough: random queue orders change nothing."""
    build, qm = compiled
    prompt = [3, 1, 4, 1, 5]
    results = []
    for seed in range(3):
        session = Session(build, GoldenDevice(build, order="random", seed=seed))
        results.append(np.concatenate([session.prefill(prompt).logits,
                                       session.decode(9).logits]))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_report_fields(compiled):
    build, _ = compiled
    report = json.loads((build.path / "report.json").read_text())
    for key in ("instruction_bytes_total", "instruction_bytes_per_length_baseline",
                "padding_waste", "instructions_per_program", "compile_seconds", "weight_bytes",
                "avg_weight_bits"):
        assert key in report
    assert report["instruction_bytes_total"] * 10 < report["instruction_bytes_per_length_baseline"]
    assert 0 <= report["padding_waste"] < 0.05
    assert report["avg_weight_bits"] == 8.0
