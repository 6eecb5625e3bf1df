"""The ONNX frontend against onnxruntime on every committed model, and its refusals.

The models in tests/models/onnx/ come from tests/models/make_models.py (LLaMA with GQA, OPT,
GPT-2; dynamo exporter at opsets 18, 20, 23 and TorchScript at 17); these tests need neither torch
nor transformers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from flightllm.compiler import reference
from flightllm.compiler.frontend import FrontendError, load_onnx
from flightllm.compiler.ir import check
from flightllm.compiler.presets import config_from_hf

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"
MANIFEST = json.loads((MODELS / "MANIFEST.json").read_text())
DECODERS = [m for m in MANIFEST["models"] if m["decoder_only"]]
NAMES_A_NODE = re.compile(r"node '[^']*' \(\w+\)")
LLAMA = "llama_dynamo_op18.onnx"


def _entry(file: str) -> dict:
    return next(m for m in MANIFEST["models"] if m["file"] == file)


def onnxruntime_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # unoptimised graphs make it log CastLike folding notes
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids[None].astype(np.int64)}
    if len(session.get_inputs()) > 1:
        feeds["attention_mask"] = np.ones((1, ids.size), np.int64)
    return session.run(None, feeds)[0][0]


@pytest.mark.parametrize("entry", DECODERS, ids=[m["file"] for m in DECODERS])
def test_model_loads_and_matches_onnxruntime(entry):
    ir = load_onnx(MODELS / entry["file"])
    check(ir)
    ids = np.random.default_rng(11).integers(0, ir.config.vocab_size, 19)
    expected = onnxruntime_logits(MODELS / entry["file"], ids)
    logits = reference.forward(ir, ids)
    assert logits.shape == expected.shape == (19, ir.config.vocab_size)
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    assert error < 1e-4, f"{entry['file']}: relative error {error:.2e}"


@pytest.mark.parametrize("entry", DECODERS, ids=[m["file"] for m in DECODERS])
def test_recognised_config_equals_the_hugging_face_config(entry):
    from_hf = config_from_hf(entry["hf_config"], name=entry["file"])
    positions = from_hf.max_positions if from_hf.position == "rope" else None
    assert load_onnx(MODELS / entry["file"], max_positions=positions).config == from_hf


@pytest.mark.parametrize("file", ["llama_dynamo_op23.onnx", "opt_torchscript_op17.onnx",
                                  "gpt2_dynamo_op18.onnx"])
def test_incremental_decode_equals_full_forward(file):
    ir = load_onnx(MODELS / file)
    ids = np.random.default_rng(3).integers(0, ir.config.vocab_size, 9)
    full = reference.forward(ir, ids)
    cache = reference.KVCache()
    steps = [reference.decode_step(ir, ids[:4], cache)]  # a prefill, then one token at a time
    steps += [reference.decode_step(ir, ids[i:i + 1], cache) for i in range(4, ids.size)]
    assert cache.length == ids.size
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=1e-9, atol=1e-9)


def test_gpt2_fused_qkv_is_split_and_architecture_facts_are_read():
    gpt2 = load_onnx(MODELS / "gpt2_torchscript_op17.onnx")
    layer = gpt2.layer(1)
    assert {k: v.shape for k, v in layer.items() if k[0] in "qkv"} == {
        "q.weight": (64, 64), "q.bias": (64,), "k.weight": (64, 64), "k.bias": (64,),
        "v.weight": (64, 64), "v.bias": (64,)}
    opt = load_onnx(MODELS / "opt_dynamo_op23.onnx").config
    assert (opt.position, opt.position_offset, opt.max_positions, opt.activation) == (
        "learned", 2, 128, "relu")
    llama = load_onnx(MODELS / "llama_torchscript_op17.onnx").config
    assert (llama.num_heads, llama.num_kv_heads, llama.rope_theta, llama.norm_eps) == (
        4, 2, 10000.0, 1e-5)
    assert not llama.tied_embeddings and opt.tied_embeddings


def test_external_data_gives_the_same_weights():
    external = load_onnx(MODELS / "llama_dynamo_op18_external.onnx")
    inline = load_onnx(MODELS / LLAMA)
    assert _entry("llama_dynamo_op18_external.onnx")["files"][-1].endswith(".data")
    assert external.tensors.keys() == inline.tensors.keys()
    for name, value in inline.tensors.items():
        np.testing.assert_array_equal(external.tensors[name], value, err_msg=name)


def test_unoptimized_export_gives_the_same_ir():
    noisy = onnx.load(MODELS / "gpt2_dynamo_op18_unoptimized.onnx")
    assert {"SplitToSequence", "CastLike"} <= {n.op_type for n in noisy.graph.node}
    clean = load_onnx(MODELS / "gpt2_dynamo_op18.onnx")
    unoptimized = load_onnx(MODELS / "gpt2_dynamo_op18_unoptimized.onnx")
    assert unoptimized.config == dataclasses.replace(clean.config, name=unoptimized.config.name)
    for name, value in clean.tensors.items():
        np.testing.assert_array_equal(unoptimized.tensors[name], value, err_msg=name)


# -- refusals ------------------------------------------------------------------------------
def test_truncated_file_names_the_file(tmp_path):
    data = (MODELS / LLAMA).read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrontendError, match="cannot read ONNX model .*truncated.onnx"):
        load_onnx(path)


def test_missing_external_data_names_the_file(tmp_path):
    shutil.copy(MODELS / "llama_dynamo_op18_external.onnx", tmp_path)
    with pytest.raises(FrontendError, match="llama_dynamo_op18_external.onnx"):
        load_onnx(tmp_path / "llama_dynamo_op18_external.onnx")


def _first_residual_branch(model: onnx.ModelProto) -> str:
    """The output projection of layer 0: the non-embedding input of the first residual Add."""
    inits = {t.name for t in model.graph.initializer}
    embedding = next(n.output[0] for n in model.graph.node
                     if n.op_type == "Gather" and n.input[0] in inits and n.input[1] == "input_ids")
    add = next(n for n in model.graph.node if n.op_type == "Add" and embedding in n.input)
    return next(i for i in add.input if i != embedding)


def _insert_after(model: onnx.ModelProto, tensor: str, node: onnx.NodeProto) -> None:
    """Route every reader of ``tensor`` through ``node`` (whose first input is ``tensor``)."""
    for other in model.graph.node:
        for k, name in enumerate(other.input):
            if name == tensor:
                other.input[k] = node.output[0]
    position = next(k for k, n in enumerate(model.graph.node) if tensor in n.output)
    model.graph.node.insert(position + 1, node)


def _edited(tmp_path: Path, op: str, extra_inputs=(), domain: str = "") -> Path:
    model = onnx.load(MODELS / LLAMA)
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    branch = _first_residual_branch(model)
    _insert_after(model, branch, helper.make_node(op, [branch, *extra_inputs], ["injected_out"],
                                                  name="injected", domain=domain))
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("op, domain, why", [
    ("Softplus", "", "not a recognised transformer operation"),
    ("Mystery", "com.acme", "custom-domain op"),
    ("Sigmoid", "", "in the attention of layer 0 is not a recognised operation"),
])
def test_unknown_op_inside_a_block_is_named(tmp_path, op, domain, why):
    with pytest.raises(FrontendError) as info:
        load_onnx(_edited(tmp_path, op, domain=domain))
    assert f"node 'injected' ({op})" in str(info.value)
    assert why in str(info.value)


def test_a_misread_structure_is_caught_by_the_numeric_check(tmp_path):
    # An extra scale is made of allowed ops; only comparing with the reference exposes it.
    with pytest.raises(FrontendError, match=r"node 'injected' \(Mul\): the attention of layer 0 "
                                            r".*differs from the graph"):
        load_onnx(_edited(tmp_path, "Mul", extra_inputs=("two",)))


def test_inconsistent_initializer_shape_names_the_failing_node(tmp_path):
    model = onnx.load(MODELS / LLAMA)
    key = next(t for t in model.graph.initializer if list(t.dims) == [64, 32])  # k projection
    key.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(key)[:, :24].copy(), key.name))
    path = tmp_path / "bad_shape.onnx"
    onnx.save(model, path)
    with pytest.raises(FrontendError, match="fails on a probe") as info:
        load_onnx(path)
    assert NAMES_A_NODE.search(str(info.value))


def test_encoder_only_model_is_refused():
    entry = next(m for m in MANIFEST["models"] if not m["decoder_only"])
    with pytest.raises(FrontendError, match=r"\((Softmax|Attention)\): attention is not causal; "
                                            "encoder-only"):
        load_onnx(MODELS / entry["file"])


def test_kv_cache_input_is_refused(tmp_path):
    model = onnx.load(MODELS / LLAMA)
    model.graph.input.append(helper.make_tensor_value_info(
        "past_key_values.0.key", onnx.TensorProto.FLOAT, [1, 2, None, 16]))
    path = tmp_path / "kv.onnx"
    onnx.save(model, path)
    with pytest.raises(FrontendError, match="graph input 'past_key_values.0.key'"):
        load_onnx(path)


@pytest.mark.parametrize("case", ["truncated", "unknown_op", "encoder_only", "bad_shape"])
def test_cli_compile_refuses_bad_models_cleanly(tmp_path, case):
    """Each bad input: one line naming the problem, exit status 1, no build directory."""
    from click.testing import CliRunner

    from flightllm.cli import main
    if case == "truncated":
        path = tmp_path / "cut.onnx"
        path.write_bytes((MODELS / LLAMA).read_bytes()[:5000])
        needle = "cannot read ONNX model"
    elif case == "unknown_op":
        path, needle = _edited(tmp_path, "Softplus"), "node 'injected' (Softplus)"
    elif case == "encoder_only":
        path, needle = MODELS / "bert_dynamo_op18.onnx", "encoder-only"
    else:
        model = onnx.load(MODELS / LLAMA)
        big = next(t for t in model.graph.initializer if len(t.dims) == 2)
        arr = numpy_helper.to_array(big)
        big.CopyFrom(numpy_helper.from_array(arr[:, :-1].copy(), big.name))
        path = tmp_path / "shape.onnx"
        onnx.save(model, path)
        needle = "node"
    out = tmp_path / "build"
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not out.exists()
