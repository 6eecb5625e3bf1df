"""Properties of the numpy reference that the frontend and later passes lean on."""

from __future__ import annotations

import numpy as np
import pytest

from flightllm.compiler import reference
from flightllm.compiler.presets import build_ir

from .test_ir import TINY_LLAMA, TINY_OPT

RNG = np.random.default_rng(0)


def test_rope_is_a_rotation_that_depends_on_relative_position():
    q, k = RNG.standard_normal((2, 1, 3, 8))
    at = lambda x, p: reference.apply_rope(x, np.array([p]), 10000.0, False)  # noqa: E731
    np.testing.assert_allclose(at(q, 0), q)
    np.testing.assert_allclose(np.linalg.norm(at(q, 5)), np.linalg.norm(q))
    score = np.sum(at(q, 7) * at(k, 2))
    np.testing.assert_allclose(np.sum(at(q, 12) * at(k, 7)), score)
    assert not np.isclose(np.sum(at(q, 7) * at(k, 3)), score)


def test_interleaved_rope_is_half_rope_on_permuted_lanes():
    x = RNG.standard_normal((4, 2, 8))
    positions = np.arange(4)
    to_half = np.r_[0:8:2, 1:8:2]  # lanes (2i, 2i+1) become (i, i + 4)
    interleaved = reference.apply_rope(x, positions, 500.0, True)
    half = reference.apply_rope(x[..., to_half], positions, 500.0, False)
    np.testing.assert_allclose(interleaved[..., to_half], half)


@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_OPT], ids=["llama", "opt"])
def test_decode_with_cache_equals_full_forward(config):
    ir = build_ir(config, "synthetic", seed=2)
    ids = RNG.integers(0, config.vocab_size, 8)
    cache = reference.KVCache()
    steps = [reference.decode_step(ir, ids[:3], cache)]
    steps += [reference.decode_step(ir, ids[i:i + 1], cache) for i in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(steps), reference.forward(ir, ids), atol=1e-12)
    assert cache.keys[0].shape == (8, config.num_kv_heads, config.head_dim)


def test_forward_is_causal_and_float32_mode_stays_close():
    ir = build_ir(TINY_LLAMA, "synthetic", seed=3)
    ids = RNG.integers(0, TINY_LLAMA.vocab_size, 6)
    changed = ids.copy()
    changed[4] = (ids[4] + 1) % TINY_LLAMA.vocab_size
    full, other = reference.forward(ir, ids), reference.forward(ir, changed)
    np.testing.assert_array_equal(full[:4], other[:4])
    assert not np.allclose(full[4:], other[4:])
    single = reference.forward(ir, ids, dtype=np.float32)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, full, rtol=1e-4, atol=1e-5)


def test_norms_and_activations():
    x = RNG.standard_normal((3, 16)) * 4 + 1
    ones = np.ones(16)
    layer = reference.norm(x, ones, np.zeros(16), "layer", 1e-5)
    np.testing.assert_allclose(layer.mean(axis=-1), 0, atol=1e-12)
    rms = reference.norm(x, ones, None, "rms", 0.0)
    np.testing.assert_allclose(np.sqrt((rms ** 2).mean(axis=-1)), 1)
    grid = np.linspace(-4, 4, 41)
    np.testing.assert_allclose(reference.activation(grid, "gelu_tanh"),
                               reference.activation(grid, "gelu_erf"), atol=1e-3)
    np.testing.assert_allclose(reference.activation(grid, "silu"), grid / (1 + np.exp(-grid)))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        reference.activation(grid, "swish")
