"""The IR's declared tensors, its config validation and the checker's messages."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from flightllm.compiler.ir import IRError, ModelConfig, TransformerIR, check
from flightllm.compiler.presets import SyntheticWeights

TINY_LLAMA = ModelConfig(
    arch="llama", vocab_size=32, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=4, intermediate_size=24, norm="rms", norm_eps=1e-5, activation="silu",
    gated_mlp=True, position="rope", rope_theta=10000.0, name="tiny-llama")
TINY_OPT = ModelConfig(
    arch="opt", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2,
    head_dim=8, intermediate_size=24, norm="layer", norm_eps=1e-5, activation="relu",
    gated_mlp=False, position="learned", position_offset=2, max_positions=10,
    tied_embeddings=True, attention_bias=True, mlp_bias=True, name="tiny-opt")


def with_arrays(config: ModelConfig) -> TransformerIR:
    provider = SyntheticWeights(config, seed=1)
    return TransformerIR(config, tensors={name: provider(spec)
                                          for name, spec in config.tensor_specs().items()})


def test_declared_tensors_of_a_gqa_llama():
    specs = TINY_LLAMA.tensor_specs()
    assert specs["layers.1.q.weight"].shape == (16, 16)
    assert specs["layers.1.k.weight"].shape == (8, 16)  # 2 kv heads of 4
    assert specs["layers.1.o.weight"].shape == (16, 16)
    assert specs["layers.0.down.weight"].shape == (16, 24)
    assert specs["lm_head.weight"].shape == (32, 16)
    assert not any(name.endswith(".bias") for name in specs)
    assert [s.key for s in TINY_LLAMA.layer_specs(0)] == [
        "attn_norm.weight", "q.weight", "k.weight", "v.weight", "o.weight", "mlp_norm.weight",
        "gate.weight", "up.weight", "down.weight"]


def test_declared_tensors_of_opt_with_biases_offset_table_and_tied_head():
    specs = TINY_OPT.tensor_specs()
    assert specs["pos_embed.weight"].shape == (12, 16)  # 10 positions + offset 2
    assert specs["layers.0.fc1.bias"].shape == (24,)
    assert specs["layers.0.attn_norm.bias"].role == "norm_bias"
    assert "lm_head.weight" not in specs
    ir = with_arrays(TINY_OPT)
    assert ir.lm_head_weight() is ir.tensors["embed.weight"]


def test_valid_ir_passes_and_layers_stream_by_short_key():
    ir = with_arrays(TINY_LLAMA)
    check(ir)
    (index, first), (_, second) = ir.layers()
    assert index == 0 and first.keys() == second.keys()
    assert first["q.weight"] is ir.tensors["layers.0.q.weight"]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.__setitem__("layers.1.k.weight", np.zeros((16, 16), np.float32)),
     r"'layers.1.k.weight' has shape \(16, 16\), the config declares \(8, 16\)"),
    (lambda t: t.pop("layers.0.mlp_norm.weight"), "'layers.0.mlp_norm.weight' is declared"),
    (lambda t: t.__setitem__("layers.0.q.bias", np.zeros(16, np.float32)),
     "'layers.0.q.bias' is not declared"),
    (lambda t: t.__setitem__("embed.weight", t["embed.weight"].astype(np.float64)),
     "'embed.weight' has dtype float64"),
    (lambda t: t["layers.0.up.weight"].__setitem__((0, 0), np.nan),
     "'layers.0.up.weight' has non-finite"),
    (lambda t: t.__setitem__("final_norm.weight", [1.0] * 16),
     "'final_norm.weight' is a list"),
])
def test_checker_names_the_bad_tensor(edit, message):
    ir = with_arrays(TINY_LLAMA)
    tensors = dict(ir.tensors)
    edit(tensors)
    with pytest.raises(IRError, match=message):
        check(TransformerIR(ir.config, tensors=tensors))


def test_checker_materialises_a_provider_and_names_its_bad_tensor():
    def provider(spec):
        return np.zeros(spec.shape[::-1] if spec.key == "v.weight" else spec.shape, np.float32)
    ir = TransformerIR(TINY_LLAMA, provider=provider)
    check(ir)  # shape-only check does not call the provider
    with pytest.raises(IRError, match="'layers.0.v.weight' has shape"):
        check(ir, materialize=True)


def test_shape_only_ir_has_no_weights():
    ir = TransformerIR(TINY_LLAMA)
    check(ir)
    assert not ir.has_weights
    with pytest.raises(IRError, match="'layers.0.q.weight': this IR is shape-only"):
        ir.tensor("layers.0.q.weight")
    with pytest.raises(IRError, match="'layers.9.q.weight' is not declared"):
        ir.tensor("layers.9.q.weight")


@pytest.mark.parametrize("change, field", [
    ({"num_kv_heads": 3}, "num_kv_heads"),
    ({"head_dim": 0}, "head_dim"),
    ({"rope_theta": None}, "rope_theta"),
    ({"norm": "batch"}, "norm"),
    ({"norm": "layer"}, "norm"),  # the llama family is RMSNorm
    ({"activation": "swish"}, "activation"),
    ({"position": "learned", "rope_theta": None}, "max_positions"),
    ({"arch": "bert"}, "arch"),
    ({"num_layers": True}, "num_layers"),
])
def test_config_validation_names_the_field(change, field):
    with pytest.raises(IRError, match=f"config field {field}="):
        dataclasses.replace(TINY_LLAMA, **change)


def test_config_round_trips_through_json():
    for config in (TINY_LLAMA, TINY_OPT):
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(IRError, match="unknown config field 'n_embd'"):
        ModelConfig.from_dict({**TINY_OPT.to_dict(), "n_embd": 16})


def test_parameter_count_counts_tied_embeddings_once():
    untied = dataclasses.replace(TINY_OPT, tied_embeddings=False)
    assert untied.num_parameters() - TINY_OPT.num_parameters() == 32 * 16
