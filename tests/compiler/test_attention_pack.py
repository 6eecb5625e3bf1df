"""Decode attention runs several heads as the rows of one MM (compiler/attention.py): the
pack sizes, the instructions, and the logits bit-exact against the integer reference."""

import dataclasses

import numpy as np
import pytest

from flightllm.compiler.attention import decode_pack
from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.presets import PRESETS, WIDE_HEADS, build_ir
from flightllm.contract.config import preset
from flightllm.contract.isa import Opcode, OutMode
from flightllm.default_model import default_model_path
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session
from flightllm.sim.golden import load_streams

from .conftest import assert_generation_matches, reference_qmodel

# A grouped-query LLaMA (4 query heads on 2 KV heads, head_dim 16) like the bundled export.
GQA = dataclasses.replace(WIDE_HEADS, name="gqa", num_heads=4, head_dim=16)


@pytest.mark.parametrize("model, board, max_len, want", [
    ("llama2-7b", "u280", 2048, 2),    # 8 P.V strips a head on 16 chains: two heads fill them
    ("llama2-7b", "u280", 4096, 1),    # three 512 KiB tiles would take over half of WBUF
    ("gpt2", "u280", 1024, 4),         # head_dim 64: four heads' strips fill the chains
    ("smollm2-135m", "u280", 2048, 2),  # 3 query heads a KV head: six rows, one weight pass
    ("smollm2-135m", "vhk158", 2048, 1),  # one KV head a core
])
def test_pack_sizes(model, board, max_len, want):
    assert decode_pack(PRESETS[model], preset(board), max_len) == want


#: tiny with the LD of the full-size presets relative to its head_dim: two lanes of 16-byte
#: beats, so a pack's serialised K loads cost less than the P.V it saves.
FAST_LD = preset("tiny").replace(ld_lanes=2, axi_data_bits=128)


def test_grouped_heads_alone_when_rows_would_need_two_weight_passes():
    # tiny reads weights once per token pair: the 2 heads of a KV head fill it.
    assert decode_pack(GQA, FAST_LD, 64) == 1
    assert decode_pack(GQA, FAST_LD.replace(mm_pair_group=2), 64) == 2


def test_no_pack_where_the_key_loads_cost_more_than_the_p_v_they_save():
    # tiny's one lane of 8-byte beats: a 32-wide key row costs 4 cycles, a position of P.V 2.
    assert decode_pack(WIDE_HEADS, preset("tiny"), 64) == 1
    assert decode_pack(WIDE_HEADS, preset("tiny").replace(ld_lanes=2), 64) == 1  # 2 against 2
    assert decode_pack(WIDE_HEADS, FAST_LD, 64) == 2


def _compile(tmp_path, ir, cfg, max_len, chunk=16):
    opts = CompileOptions(max_len=max_len, chunk=chunk, calibration_sequences=2)
    compile_model(ir, cfg, tmp_path / "b", opts)
    return load_build(tmp_path / "b"), reference_qmodel(ir, opts)


# Decode steps at KV 101..132 (the bundled export stops at 128 positions).
@pytest.mark.parametrize("ir_name, cfg, rows, strips, max_len", [
    # GQA, two KV heads together: scores an MM of 2 rows each, P.V one MM of 4 rows over 2
    # strips (each row keeps its own KV head's strip).
    ("gqa", FAST_LD.replace(mm_pair_group=2), 4, 2, 256),
    # No grouping, head_dim 32: P.V of both heads in one MM of 2 rows over 4 strips.
    ("wide", FAST_LD, 2, 4, 256),
    # The bundled export (GQA) on tiny: each KV head's two query heads as the rows.
    ("bundled", preset("tiny"), 2, 1, 128),
])
def test_packed_decode_bit_exact(tmp_path, ir_name, cfg, rows, strips, max_len):
    ir = {"gqa": lambda: build_ir(GQA, "synthetic", seed=5),
          "wide": lambda: build_ir(WIDE_HEADS, "synthetic", seed=3),
          "bundled": lambda: load_onnx(default_model_path())}[ir_name]()
    build, qm = _compile(tmp_path, ir, cfg, max_len)
    decode = [s.ins for stream in load_streams(build.program("decode")) for s in stream]
    pv = [i for i in decode if i.op == Opcode.MM and i.w_stride]
    assert pv and all((i.m_rows, i.n_strips) == (rows, strips) for i in pv)
    assert not any(i.op == Opcode.MV and i.w_stride for i in decode)  # no P.V left alone
    session = Session(build, GoldenDevice(build))
    prompt = np.random.default_rng(2).integers(0, qm.config.vocab_size, min(120, max_len - 20))
    assert_generation_matches(session, qm, prompt, 12)


def test_packed_decode_under_any_queue_order(tmp_path):
    """The tokens order the shared score, weight and V-tile regions: random queue orders give
    the same logits."""
    build, _ = _compile(tmp_path, build_ir(WIDE_HEADS, "synthetic", seed=3), FAST_LD, 64)
    results = []
    for seed in range(3):
        session = Session(build, GoldenDevice(build, order="random", seed=seed))
        session.prefill([3, 1, 4, 1, 5])
        results.append(np.concatenate([session.decode(t).logits for t in (9, 2, 6)]))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_a_one_token_prefill_chunk_plans_token_rows_not_a_pack(tmp_path):
    """Only decode's plan holds a pack's attention rows (query heads of pv_pack KV heads); a
    prefill chunk of one token has one attention row, like any chunk its tokens, and its
    program stays bit-exact."""
    from flightllm.compiler.onchip import onchip_plan
    cfg = FAST_LD.replace(mm_pair_group=2)
    ir = build_ir(GQA, "synthetic", seed=5)
    build, qm = _compile(tmp_path, ir, cfg, 64, chunk=1)
    assert build.io["chunk"] == 1
    width = 64
    args = (cfg, qm, 1, 0, 0, 0, 0, 16, 0)
    prefill, decode = onchip_plan(*args, pv_pack=2), onchip_plan(*args, pv_pack=2, decode=True)
    assert prefill["ctx"] - prefill["probs"] == width                     # one token row
    assert decode["ctx"] - decode["probs"] == 2 * GQA.group_size * width  # 2 KV heads' queries
    session = Session(build, GoldenDevice(build))
    assert_generation_matches(session, qm, [7, 3, 9, 4], 3)
