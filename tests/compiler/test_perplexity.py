"""``flightllm perplexity``: the build's perplexity is the integer reference's, the float one is
onnxruntime's, and bad input is refused with a message."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.calibrate import calibrate, default_calibration_tokens
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.layout import CompileError
from flightllm.compiler.perplexity import (
    build_perplexity, float_perplexity, perplexity_command, qmodel_perplexity, sliding_windows,
    token_nll,
)
from flightllm.compiler.qmodel import QuantRecipe, build_qmodel
from flightllm.contract.config import preset
from flightllm.host.build import load_build

from .conftest import MODEL_DIR

MODEL = MODEL_DIR / "llama_dynamo_op18.onnx"
MAX_LEN, CHUNK = 48, 16


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    ir = load_onnx(MODEL)
    opts = CompileOptions(weight_bits=4, max_len=MAX_LEN, chunk=CHUNK, calibration_sequences=2)
    out = tmp_path_factory.mktemp("build") / "b"
    compile_model(ir, preset("tiny"), out, opts)
    calib = [default_calibration_tokens(ir.config.vocab_size, opts.calibration_length, i)
             for i in range(opts.calibration_sequences)]
    qm = build_qmodel(ir, calibrate(ir, calib), QuantRecipe(weight_bits=4), max_len=MAX_LEN)
    return out, load_build(out), qm


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(7).integers(0, 256, size=70)


def test_windows_score_every_token_once():
    for n, window, stride in [(70, 40, 20), (70, 40, 40), (41, 40, 13), (2, 2, 1), (5, 8, 3)]:
        windows = sliding_windows(n, window, stride)
        targets = np.concatenate([np.arange(w.score_from, w.end) for w in windows])
        assert np.array_equal(targets, np.arange(1, n))
        for w in windows:
            assert w.end - w.start <= window and w.start < w.score_from
            # Every scored target but a first window's has at least window - stride context.
            if w.start > 0:
                assert w.score_from - w.start >= window - stride
    for bad in [(1, 4, 2), (10, 1, 1), (10, 4, 0), (10, 4, 5)]:
        with pytest.raises(CompileError):
            sliding_windows(*bad)


def test_token_nll_is_log_softmax():
    logits = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    got = token_nll(logits, np.array([2, 0]))
    want = [math.log(1 + math.e + math.e ** 2) - 2.0, math.log(3)]
    assert np.allclose(got, want, rtol=0, atol=1e-12)


def test_build_perplexity_equals_the_integer_reference(compiled, tokens):
    _, build, qm = compiled
    got = build_perplexity(build, tokens, 32, 16)
    want = qmodel_perplexity(qm, tokens, 32, 16)
    assert got["tokens"] == want["tokens"] == len(tokens) - 1
    assert got["perplexity"] == want["perplexity"]  # bit-identical logits, identical sums
    # Control: the comparison is sensitive (other windows give another figure).
    assert qmodel_perplexity(qm, tokens, 32, 8)["perplexity"] != want["perplexity"]


def test_float_perplexity_matches_onnxruntime_directly(tokens):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    ids = tokens[:40]
    logits = sess.run(None, {"input_ids": ids[None, :].astype(np.int64)})[0][0]
    z = logits.astype(np.float64)
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1,
                                                                                     keepdims=True)
    want = math.exp(-np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
    got = float_perplexity(MODEL, ids, 40, 40)
    assert got["perplexity"] == pytest.approx(want, rel=1e-9)
    # A random-weight model on random tokens: near the vocabulary size, and finite.
    assert 10 < got["perplexity"] < 10_000


def test_cli_json(compiled, tokens, tmp_path):
    out, build, qm = compiled
    ids = ",".join(map(str, tokens))
    res = CliRunner().invoke(perplexity_command, [str(out), "--token-ids", ids, "--window", "32",
                                                  "--stride", "16", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"perplexity", "float_perplexity", "tokens"} <= set(data)
    assert data["perplexity"] == qmodel_perplexity(qm, tokens, 32, 16)["perplexity"]
    # The build names its source ONNX file, so the float figure comes without --float-model.
    assert data["float_perplexity"] == float_perplexity(MODEL, tokens, 32, 16)["perplexity"]
    assert data["tokens"] == len(tokens) - 1
    # W4 on a tiny random model costs something, but not everything.
    assert 0.5 < data["perplexity"] / data["float_perplexity"] < 2


def test_cli_text_with_a_tokenizer(compiled, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    # A byte-level tokenizer without merges: exactly 256 ids, the test model's vocabulary.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))},
                               merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(tmp_path / "tokenizer.json"))
    assert tokenizers  # imported for the skip
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\nSecond line here.\n")
    out = compiled[0]
    res = CliRunner().invoke(perplexity_command, [
        str(out), "--text", str(text), "--tokenizer", str(tmp_path / "tokenizer.json"),
        "--max-tokens", "40", "--window", "32", "--no-float", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["tokens"] == 39 and data["float_perplexity"] is None
    assert math.isfinite(data["perplexity"])


@pytest.mark.parametrize("args,message", [
    (["--text", "/nonexistent/text.txt", "--tokenizer", "/nonexistent/t.json"], "no such"),
    (["--token-ids", "1,2,3", "--text", "x.txt"], "exactly one"),
    (["--token-ids", "1,2,x"], "comma-separated"),
    (["--token-ids", "1,2,300"], "token id 300"),
    (["--token-ids", "1,2,3", "--window", "64"], "max_len 48"),
    (["--token-ids", "1,2,3", "--window", "8", "--stride", "9"], "stride 9"),
    (["--token-ids", "1"], "at least 2"),
    (["--token-ids", "1,2,3", "--float-model", "/nonexistent/m.onnx"], "no such ONNX"),
])
def test_cli_bad_input(compiled, args, message):
    res = CliRunner().invoke(perplexity_command, [str(compiled[0]), *args])
    assert res.exit_code == 1
    assert message in res.output, res.output


def test_cli_not_a_build(tmp_path):
    res = CliRunner().invoke(perplexity_command, [str(tmp_path), "--token-ids", "1,2,3"])
    assert res.exit_code == 1 and "not a build directory" in res.output
