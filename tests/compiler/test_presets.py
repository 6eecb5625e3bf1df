"""Full-size presets, Hugging Face config loading and streamed synthetic weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from flightllm.compiler import reference
from flightllm.compiler.ir import IRError, check
from flightllm.compiler.presets import (
    PRESETS, SyntheticWeights, build_ir, config_from_hf, load_hf_config, preset,
)

# config.json of the released checkpoints (the keys that matter).
HF_CONFIGS = {
    "llama2-7b": {  # meta-llama/Llama-2-7b-hf: no rope_theta key, the default 10000 applies
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "max_position_embeddings": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "tie_word_embeddings": False, "vocab_size": 32000, "hidden_act": "silu"},
    "opt-6.7b": {  # facebook/opt-6.7b
        "model_type": "opt", "activation_function": "relu", "do_layer_norm_before": True,
        "ffn_dim": 16384, "hidden_size": 4096, "max_position_embeddings": 2048,
        "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 50272,
        "word_embed_proj_dim": 4096, "enable_bias": True, "_remove_final_layer_norm": False},
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M
        "model_type": "llama", "hidden_act": "silu", "hidden_size": 576,
        "intermediate_size": 1536, "max_position_embeddings": 8192,
        "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 100000,
        "tie_word_embeddings": True, "vocab_size": 49152},
    "gpt2": {  # openai-community/gpt2
        "model_type": "gpt2", "activation_function": "gelu_new", "n_embd": 768, "n_head": 12,
        "n_layer": 12, "n_positions": 1024, "layer_norm_epsilon": 1e-05, "vocab_size": 50257},
}


@pytest.mark.parametrize("name, count", [
    ("llama2-7b", 6_738_415_616), ("opt-6.7b", 6_658_473_984),
    ("smollm2-135m", 134_515_008), ("gpt2", 124_439_808),
])
def test_preset_parameter_counts(name, count):
    assert preset(name).num_parameters() == count


def test_smollm2_preset_facts():
    c = preset("smollm2-135m")
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.intermediate_size,
            c.vocab_size, c.tied_embeddings, c.rope_theta, c.norm, c.norm_eps) == (
        576, 30, 9, 3, 1536, 49152, True, 100000.0, "rms", 1e-5)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hugging_face_config_gives_the_preset(name):
    assert config_from_hf(HF_CONFIGS[name], name=name) == PRESETS[name]


def test_load_hf_config_file(tmp_path):
    path = tmp_path / "SmolLM2-135M" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(HF_CONFIGS["smollm2-135m"]))
    ir = load_hf_config(path)
    assert ir.config == dataclasses.replace(PRESETS["smollm2-135m"], name="SmolLM2-135M")
    assert not ir.has_weights


@pytest.mark.parametrize("change, key", [
    ({"model_type": "bert"}, "model_type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_hf_config_names_the_key(change, key):
    with pytest.raises(IRError, match=f"config key {key}="):
        config_from_hf({**HF_CONFIGS["llama2-7b"], **change})


def test_synthetic_weights_are_deterministic_and_order_independent():
    config = preset("smollm2-135m")
    first, second = build_ir(config, "synthetic", seed=7), build_ir(config, "synthetic", seed=7)
    later = second.layer(5)["up.weight"]  # asked for before anything else this time
    np.testing.assert_array_equal(first.layer(5)["up.weight"], later)
    other = build_ir(config, "synthetic", seed=8).tensor("layers.5.up.weight")
    assert not np.array_equal(other, later)
    assert later.dtype == np.float32 and later.shape == (1536, 576)
    assert abs(later.std() * 576 ** 0.5 - 1.0) < 0.01  # N(0, 1/in_features)


def test_synthetic_7b_streams_one_layer_at_a_time():
    made = []
    weights = SyntheticWeights(preset("llama2-7b"), seed=0)
    ir = build_ir(preset("llama2-7b"), "synthetic")
    ir = dataclasses.replace(ir, provider=lambda spec: made.append(spec.name) or np.zeros(
        1, np.float32))
    ir.layer(17)
    assert made == [s.name for s in preset("llama2-7b").layer_specs(17)]
    assert ir.tensors is None
    gain = weights(ir.specs["layers.31.attn_norm.weight"])
    assert gain.shape == (4096,) and abs(gain.mean() - 1.0) < 0.01


def test_synthetic_ir_checks_and_runs_the_reference():
    config = dataclasses.replace(preset("smollm2-135m"), num_layers=2, vocab_size=512,
                                 name="smollm2-2-layers")
    ir = build_ir(config, "synthetic", seed=1)
    check(ir, materialize=True)
    logits = reference.forward(ir, np.arange(6))
    assert logits.shape == (6, 512) and np.all(np.isfinite(logits))
    assert 0.3 < logits.std() < 3.0  # the init scales keep tied logits near unit size


def test_unknown_preset_and_weight_mode():
    with pytest.raises(IRError, match="unknown preset 'llama-70b'"):
        preset("llama-70b")
    with pytest.raises(IRError, match="weights='random'"):
        build_ir(preset("gpt2"), "random")
