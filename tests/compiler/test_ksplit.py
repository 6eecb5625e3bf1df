"""K-splitting: strips wider than a weight slot accumulate through partial sums, bit-exactly."""

import json

import numpy as np
import pytest

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.contract.config import BufferSpec, preset
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session

from .conftest import MODEL_DIR, assert_generation_matches, reference_qmodel

# A 5 KiB WBUF leaves 1.5 KiB weight slots at max_len 64: an INT8 strip of the 128-wide MLP
# down projection (2 KiB) no longer fits, the 64-wide ones (1 KiB) still do. LLaMA's down
# also runs the split hidden's second pass, so it needs two partial-sum regions.
SMALL_WBUF = BufferSpec(16, 320)
CASES = [("llama_dynamo_op18.onnx", 1, 8), ("llama_dynamo_op18.onnx", 3, 8),
         ("opt_torchscript_op17.onnx", 1, 8), ("gpt2_dynamo_op18.onnx", 2, 8)]


def _split_chunks(build_dir) -> list[dict]:
    """Placed weight chunks that hold fewer columns than their matrix."""
    tensors = json.loads((build_dir / "manifest.json").read_text())["tensors"]
    return [t for t in tensors if t["dtype"] == "blocks" and t["shape"][1] < 128
            and t["name"].split(".")[-2] in ("down", "fc2")]


@pytest.mark.parametrize("model,cores,bits", CASES, ids=[f"{m}-{c}core" for m, c, _ in CASES])
def test_k_split_matches_the_reference(tmp_path, model, cores, bits):
    ir = load_onnx(MODEL_DIR / model)
    opts = CompileOptions(max_len=64, chunk=16, calibration_sequences=2, weight_bits=bits)
    cfg = preset("tiny").replace(cores=cores, wbuf=SMALL_WBUF)
    compile_model(ir, cfg, tmp_path / "b", opts)
    assert _split_chunks(tmp_path / "b"), "the small WBUF did not force a K-split"
    build = load_build(tmp_path / "b")
    # A random queue order: the partial sums' hand-over between ranges is token-ordered.
    session = Session(build, GoldenDevice(build, order="random", seed=cores))
    prompt = np.random.default_rng(1).integers(0, ir.config.vocab_size, 21)
    assert_generation_matches(session, reference_qmodel(ir, opts), prompt, 3)


def test_default_wbuf_needs_no_k_split(tmp_path):
    """Control: the path above is only taken when a strip exceeds the slot."""
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    compile_model(ir, preset("tiny"), tmp_path / "b",
                  CompileOptions(max_len=64, chunk=16, calibration_sequences=1))
    assert not _split_chunks(tmp_path / "b")
