"""Block-sparse prefill attention: the programs implement the mask that qforward applies."""

import json

import numpy as np
import pytest

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.calibrate import calibrate, default_calibration_tokens
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.layout import CompileError
from flightllm.compiler.qmodel import (
    AttentionSparsity, KVState, QuantRecipe, build_qmodel, qforward,
)
from flightllm.compiler.sources import parse_attn_sparsity
from flightllm.contract.config import preset
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session

from .conftest import MODEL_DIR

MAX_LEN, CHUNK = 64, 16
# (model, cores, (sink, band)): a 53-token prompt is four calls of 16; tiny's blocks are 16
# tokens, so with sink 1 and band 1 the calls at 32 and 48 skip positions 16..31 and 16..47.
CASES = [("llama_dynamo_op18.onnx", 1, (1, 1)), ("opt_torchscript_op17.onnx", 1, (1, 1)),
         ("llama_torchscript_op17.onnx", 2, (0, 2))]


def _build(tmp_path_factory, ir, cores, sparsity):
    opts = CompileOptions(max_len=MAX_LEN, chunk=CHUNK, calibration_sequences=2,
                          attn_sparsity=sparsity)
    out = tmp_path_factory.mktemp("build") / "b"
    compile_model(ir, preset("tiny").replace(cores=cores), out, opts)
    return load_build(out)


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{c}core-{s}" for m, c, s in CASES])
def builds(request, tmp_path_factory):
    model, cores, sparsity = request.param
    ir = load_onnx(MODEL_DIR / model)
    calib = [default_calibration_tokens(ir.config.vocab_size, 64, i) for i in range(2)]
    qm = build_qmodel(ir, calibrate(ir, calib), QuantRecipe(), max_len=MAX_LEN)
    return (_build(tmp_path_factory, ir, cores, sparsity),
            _build(tmp_path_factory, ir, cores, None), qm)


def _mask(build) -> AttentionSparsity:
    m = json.loads((build.path / "manifest.json").read_text())["model"]["attention_sparsity"]
    return AttentionSparsity(m["sink_blocks"], m["band_blocks"], m["block"], m["chunk"])


PROMPT = np.random.default_rng(5).integers(0, 256, 53)


def test_multi_chunk_prefill_and_decode_bit_exact(builds):
    sparse, _, qm = builds
    mask = _mask(sparse)
    assert (mask.block, mask.chunk) == (16, CHUNK)
    session = Session(sparse, GoldenDevice(sparse))
    kv = KVState.empty(qm)
    got = session.prefill(PROMPT).logits
    want = qforward(qm, PROMPT, 0, kv, attn_mask=mask) * qm.lm_head.s_out
    np.testing.assert_array_equal(got, want)
    # The mask matters on this prompt: programs that ignored it would fail the check above.
    dense = qforward(qm, PROMPT, 0, KVState.empty(qm)) * qm.lm_head.s_out
    assert not np.array_equal(dense[32:], want[32:])
    np.testing.assert_array_equal(dense[:32], want[:32])  # the band still reaches the sink
    token = int(np.argmax(want[-1]))
    for step in range(3):  # decode attention stays dense, over the sparse prefill's cache
        want = qforward(qm, [token], len(PROMPT) + step, kv) * qm.lm_head.s_out
        np.testing.assert_array_equal(session.decode(token).logits, want)
        token = int(np.argmax(want[-1]))


def test_sparse_prefill_moves_and_multiplies_less(builds):
    sparse, dense, _ = builds
    counters = []
    for build in (sparse, dense):
        session = Session(build, GoldenDevice(build))
        session.prefill(PROMPT)
        counters.append([step.functional for step in session.counters])
    macs = [sum(c.macs_dense for c in cs) for cs in counters]
    hbm = [sum(sum(c.hbm_read_bytes.values()) for c in cs) for cs in counters]
    assert macs[0] < macs[1] and hbm[0] < hbm[1]
    report = json.loads((sparse.path / "report.json").read_text())["prefill_attention"]
    assert report["macs"] < report["dense_macs"]
    assert report["kv_bytes"] < report["dense_kv_bytes"]
    # The saving the report counts is exactly the one the simulator saw (the weights are the
    # same, so the whole difference is attention); a dense build reports no comparison.
    want = json.loads((dense.path / "report.json").read_text())["prefill_attention"]
    assert "dense_macs" not in want and want["macs"] == report["dense_macs"]


@pytest.mark.parametrize("sink,band", [(0, 1), (1, 1), (1, 3), (2, 2)])
def test_mask_is_sink_plus_band_blocks_when_a_call_is_one_block(sink, band):
    block, n = 16, 160
    mask = AttentionSparsity(sink, band, block, chunk=block)
    got = np.concatenate([mask.visible(pos, block, n) for pos in range(0, n, block)])
    q, k = np.arange(n)[:, None] // block, np.arange(n)[None, :] // block
    want = (np.arange(n)[None, :] <= np.arange(n)[:, None]) & ((k < sink) | (k > q - band))
    np.testing.assert_array_equal(got, want)
    # A longer call keeps the block mask as its floor: later rows may see more, never less.
    wide = AttentionSparsity(sink, band, block, chunk=4 * block).visible(0, n, n)
    assert (wide >= want).all() and (wide > want).any()


def test_parse_attn_sparsity():
    assert parse_attn_sparsity("sink=1,band=4") == (1, 4)
    assert parse_attn_sparsity("band=2") == (0, 2)
    assert parse_attn_sparsity(None) is None and parse_attn_sparsity("dense") is None
    for bad, why in (("sink=1", "band=B is required"), ("band=0", "band >= 1"),
                     ("sink=x,band=2", "'x' is not an integer"), ("width=3", "'width=3'"),
                     ("band=2,band=3", "band given twice")):
        with pytest.raises(CompileError, match=why):
            parse_attn_sparsity(bad)


def test_window_wider_than_max_len_is_refused(tmp_path):
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    opts = CompileOptions(max_len=MAX_LEN, chunk=CHUNK, calibration_sequences=1,
                          attn_sparsity=(2, 3))
    with pytest.raises(CompileError, match="span 80 positions, more than max_len 64"):
        compile_model(ir, preset("tiny"), tmp_path / "b", opts)
    assert not (tmp_path / "b").exists()


def test_chunk_smaller_than_a_tile(tmp_path):
    """An 8-token chunk: the band load still moves whole 16-position tiles (the extra
    positions are masked)."""
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    compile_model(ir, preset("tiny"), tmp_path / "b",
                  CompileOptions(max_len=MAX_LEN, chunk=8, calibration_sequences=2,
                                 attn_sparsity=(1, 2)))
    build = load_build(tmp_path / "b")
    mask = _mask(build)
    assert mask.chunk == 8 and mask.width == 16 + 32
    calib = [default_calibration_tokens(ir.config.vocab_size, 64, i) for i in range(2)]
    qm = build_qmodel(ir, calibrate(ir, calib), QuantRecipe(), max_len=MAX_LEN)
    prompt = PROMPT[:45]
    want = qforward(qm, prompt, 0, KVState.empty(qm), attn_mask=mask) * qm.lm_head.s_out
    np.testing.assert_array_equal(Session(build, GoldenDevice(build)).prefill(prompt).logits,
                                  want)
    dense = qforward(qm, prompt, 0, KVState.empty(qm)) * qm.lm_head.s_out
    assert not np.array_equal(dense, want)


def test_random_queue_orders_agree(builds):
    """The compact tile's loads are ordered after the cache stores they read at every POS
    (their footprints only meet for small POS), so any interleaving gives the same logits."""
    sparse, _, _ = builds
    results = [Session(sparse, GoldenDevice(sparse, order=order, seed=seed)).prefill(PROMPT)
               .logits for order, seed in (("program", 0), ("random", 1), ("random", 2))]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_prefill_after_decode_up_to_max_len(builds):
    """Calls that start off the chunk grid (a second prompt after decode steps) keep their
    own band; the last one's band load runs past max_len into masked positions."""
    sparse, _, qm = builds
    mask = _mask(sparse)
    session = Session(sparse, GoldenDevice(sparse))
    kv = KVState.empty(qm)
    first, second = PROMPT[:40], PROMPT[40:] % 97
    want = qforward(qm, first, 0, kv, attn_mask=mask) * qm.lm_head.s_out
    np.testing.assert_array_equal(session.prefill(first).logits, want)
    for step, token in enumerate((3, 1, 4, 1)):
        want = qforward(qm, [token], 40 + step, kv) * qm.lm_head.s_out
        np.testing.assert_array_equal(session.decode(token).logits, want)
    rest = np.concatenate([second, second])[:MAX_LEN - 44]  # calls at 44 and 60: up to 64
    want = qforward(qm, rest, 44, kv, attn_mask=mask) * qm.lm_head.s_out
    np.testing.assert_array_equal(session.prefill(rest).logits, want)
