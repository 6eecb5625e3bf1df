"""Mixed-precision allocation: budgets hold by packed bytes, more budget never hurts,
sensitive matrices win bits, and infeasible budgets say so."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flightllm.compiler.calibrate import calibrate_channels, default_calibration_tokens
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.mixed import allocate_bits, measure_sensitivity, stored_bits_of
from flightllm.compiler.presets import build_ir, preset

from .conftest import MODEL_DIR

BUDGETS = (3.5, 4.25, 6.0)
# A GPT-2-shaped model whose vocabulary (1000) and MLP width (520) are not multiples of 16,
# so padding blocks count in the bytes but not in the weight count.
SMALL_GPT2 = dataclasses.replace(preset("gpt2"), name="small-gpt2", vocab_size=1000,
                                 hidden_size=192, num_layers=3, num_heads=3, num_kv_heads=3,
                                 intermediate_size=520, max_positions=64)


@pytest.fixture(scope="module")
def llama():
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    ranges = calibrate_channels(ir, [default_calibration_tokens(ir.config.vocab_size, 32)])
    return ir, ranges


@pytest.fixture(scope="module")
def models(llama):
    """(ir, activation ranges, sparsity) per model: calibrated dense llama, uniform sparse
    GPT-2."""
    return {"llama": (*llama, {}),
            "gpt2": (build_ir(SMALL_GPT2, "synthetic"), None, {"fc1": 8, "q": 4})}


@pytest.fixture(scope="module")
def tables(models):
    return {key: measure_sensitivity(ir, activation_ranges=ranges, sparsity=sparsity)
            for key, (ir, ranges, sparsity) in models.items()}


def uniform(table, bits: int) -> dict[str, int]:
    return dict.fromkeys(table.names, bits)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_byte_model_is_the_packed_length(models, tables, model):
    ir, _, sparsity = models[model]
    table = tables[model]
    mixed = {name: (2, 4, 8)[i % 3] for i, name in enumerate(table.names)}
    for alloc in (uniform(table, 2), uniform(table, 8), mixed):
        assert table.stored_bits(alloc) == stored_bits_of(ir, alloc, sparsity)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
@pytest.mark.parametrize("budget", BUDGETS)
def test_budget_holds_by_packed_bytes(models, tables, model, budget):
    ir, _, sparsity = models[model]
    table = tables[model]
    alloc = table.allocate(budget)
    measured = stored_bits_of(ir, alloc, sparsity)
    assert measured <= budget
    assert measured == table.stored_bits(alloc)
    # No width used uniformly beats it whenever that width fits the budget too.
    for bits in table.choices:
        if table.stored_bits(uniform(table, bits)) <= budget:
            assert table.total_error(alloc) <= table.total_error(uniform(table, bits))


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_more_budget_never_increases_the_error(tables, model):
    table = tables[model]
    lowest = table.stored_bits(uniform(table, 2))
    errors, spent = [], []
    for budget in np.linspace(lowest, 9.0, 60):
        alloc = table.allocate(budget)
        spent.append(table.stored_bits(alloc))
        errors.append(table.total_error(alloc))
        assert spent[-1] <= budget
    assert np.all(np.diff(errors) <= 1e-12 * errors[0])
    assert errors[-1] == table.total_error(uniform(table, 8))
    assert errors[0] == table.total_error(uniform(table, 2))


@pytest.mark.parametrize("point, matrix", [("layers.1.mlp_hidden", "layers.1.down"),
                                           ("layers.0.ctx", "layers.0.o")])
def test_a_matrix_with_larger_inputs_gets_more_bits(llama, point, matrix):
    ir, ranges = llama
    before = allocate_bits(ir, 3.5, activation_ranges=ranges)
    louder = {**ranges, point: 100 * ranges[point]}
    after = allocate_bits(ir, 3.5, activation_ranges=louder)
    assert after[matrix] > before[matrix]
    assert stored_bits_of(ir, after) <= 3.5


def test_a_uniform_activation_scale_changes_nothing(llama, tables):
    ir, ranges = llama
    scaled = measure_sensitivity(ir, activation_ranges={k: 7 * v for k, v in ranges.items()})
    np.testing.assert_allclose(scaled.error, tables["llama"].error, rtol=1e-9)


def test_allocation_is_deterministic(llama, tables):
    ir, ranges = llama
    first = allocate_bits(ir, 4.25, activation_ranges=ranges)
    assert first == allocate_bits(ir, 4.25, activation_ranges=ranges)
    assert first == tables["llama"].allocate(4.25)
    assert list(first) == [f"layers.{i}.{k}" for i in range(2)
                           for k in ("q", "k", "v", "o", "gate", "up", "down")] + ["lm_head"]


def test_infeasible_budget_names_the_budget(llama, tables):
    ir, ranges = llama
    table = tables["llama"]
    floor = table.stored_bits(uniform(table, 2))  # 2-bit values plus 4-bit multipliers
    assert floor == 2.25
    assert table.allocate(floor) == uniform(table, 2)
    with pytest.raises(ValueError, match=r"budget of 2\.2 bits per weight is infeasible"):
        table.allocate(2.2)
    with pytest.raises(ValueError, match=r"budget of 3\.5 bits .* 4 bits already stores 4\.25"):
        allocate_bits(ir, 3.5, choices=(4, 8), activation_ranges=ranges)
    with pytest.raises(ValueError, match="not a finite number"):
        table.allocate(float("nan"))


def test_bad_inputs_are_named(llama):
    ir, ranges = llama
    partial = {k: v for k, v in ranges.items() if k != "layers.1.ctx"}
    with pytest.raises(ValueError, match=r"'layers\.1\.ctx' \(input of layers\.1\.o\)"):
        measure_sensitivity(ir, activation_ranges=partial)
    with pytest.raises(ValueError, match="subset of"):
        measure_sensitivity(ir, choices=(3, 8))
    alloc = allocate_bits(ir, 4.25)
    with pytest.raises(ValueError, match="'lm_head'"):
        stored_bits_of(ir, {k: v for k, v in alloc.items() if k != "lm_head"})
    with pytest.raises(ValueError, match="'layers.9.q'"):
        stored_bits_of(ir, {**alloc, "layers.9.q": 4})
