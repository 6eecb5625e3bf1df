"""Compiled programs on the golden simulator equal the integer reference, bit for bit."""

import json

import numpy as np
import pytest

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.presets import WIDE_HEADS, build_ir
from flightllm.compiler.qmodel import AttentionSparsity, KVState, qforward
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
            np.testing.assert_array_equal(_read_cache(session, core, entry)[:n],
                                          kv.keys[li][:n, g_lo:g_hi])


def _read_cache(session, core: int, entry: dict) -> np.ndarray:
    """One layer's K or V cache of ``core`` from HBM as ``[max_len, heads, head_dim]``: part
    c on channel c holds head-dim blocks c * part on, as [head][part][max_len][16]."""
    nch, heads, part, L, _ = entry["shape"]
    assert len(entry["channels"]) == nch
    raw = np.stack([np.frombuffer(session.driver.read_channel(
        core, chan, entry["offset"], heads * part * L * 16), np.int8)
        .reshape(heads, part, L, 16) for chan in entry["channels"]], axis=1)
    return raw.reshape(heads, nch * part, L, 16).transpose(2, 0, 1, 3).reshape(
        L, heads, nch * part * 16)


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


# Head-dim 32 (two 16-wide blocks): each K/V cache is split over two channels, one per LD
# lane, and the tile loads read both halves in one instruction. The bundled exports have
# head-dim 16 (one block) and keep one channel, so a synthetic model covers the split:
# dense and block-sparse attention (whose band loads read into the guard past the cache),
# one core and two (each with its own heads' caches).
WIDE_CASES = [(1, None), (2, None), (1, (1, 1))]


@pytest.mark.parametrize("cores, sparsity", WIDE_CASES,
                         ids=[f"{c}core-{'dense' if s is None else 'sparse'}"
                              for c, s in WIDE_CASES])
def test_caches_split_over_two_channels_bit_exact(tmp_path, cores, sparsity):
    ir = build_ir(WIDE_HEADS, "synthetic", seed=3)
    opts = CompileOptions(max_len=MAX_LEN, chunk=16, calibration_sequences=2,
                          attn_sparsity=sparsity)
    compile_model(ir, preset("tiny").replace(cores=cores), tmp_path / "b", opts)
    build, qm = load_build(tmp_path / "b"), reference_qmodel(ir, opts)
    for core, caches in enumerate(build.io["k_cache"] + build.io["v_cache"]):
        assert all(len(entry["channels"]) == 2 and entry["shape"][0] == 2 for entry in caches)
    session = Session(build, GoldenDevice(build))
    prompt = np.random.default_rng(1).integers(0, 256, 37)  # three chunks, the last partial
    mask = None
    if sparsity is not None:  # the reference applies the prefill mask the build records
        m = json.loads((build.path / "manifest.json").read_text())["model"]["attention_sparsity"]
        mask = AttentionSparsity(m["sink_blocks"], m["band_blocks"], m["block"], m["chunk"])
    kv = assert_generation_matches(session, qm, prompt, 5, attn_mask=mask)
    n = len(prompt) + 5
    for core, (kcaches, vcaches) in enumerate(zip(build.io["k_cache"], build.io["v_cache"])):
        g_lo, g_hi = build.io["kv_heads"][core]
        for li, (kentry, ventry) in enumerate(zip(kcaches, vcaches)):
            for entry, want in ((kentry, kv.keys[li]), (ventry, kv.values[li])):
                np.testing.assert_array_equal(_read_cache(session, core, entry)[:n],
                                              want[:n, g_lo:g_hi])
