# amaranth: UnusedElaboratable=no
"""The dequantiser: quick Amaranth-simulator checks (smoke, format errors) and the cocotb +
Verilator benches (random vectors against unpack_matrix, checker self-test, throughput)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from flightllm.contract.config import preset
from flightllm.hw.dequant import Dequantiser

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_model import (  # noqa: E402
    MatrixCase, beat_rows, dequant_expected, scenario_matrix, word_beats, words64,
)

MODULE = "tb_dequant"


def _simulate(bench_class, cases, *, max_cycles=20000, config="tiny", words=1, rng=None):
    """Run ``cases`` through the dequantiser (``words`` per cycle) in Amaranth's simulator:
    (beats, format_error per cycle)."""
    cfg = preset(config).replace(dequant_words=words)
    dut = Dequantiser(cfg, max_k_blocks=64)
    expected = sum(len(dequant_expected(c, cfg.mv_k)) for c in cases if c.codes.max() < 4)
    bench = bench_class(dut)
    bench.feed(dut.cmd, [{"bits": c.bits, "sparse": int(c.sparse), "gscale": int(c.gscale),
                          "k_blocks": c.k_blocks, "n_strips": c.n_strips} for c in cases])
    bench.feed(dut.words, word_beats([w for c in cases for w in words64(c.data)], words, rng))
    got = bench.drain(dut.weights, count=expected or None, max_cycles=max_cycles,
                      watch=[dut.format_error])
    bench.run()
    return got, [flag for flag, in bench.samples]


@pytest.mark.parametrize("config,words", [("tiny", 1), ("u280", 1), ("tiny", 2), ("u280", 2)])
def test_dequantiser_in_amaranth_simulator(config, words, stream_bench):
    rng = np.random.default_rng(5)
    cases = [scenario_matrix(rng, kind, bits, gscale, n_strips=2, k_blocks=10)
             for kind, bits, gscale in (("mixed", 4, True), ("dense", 8, False),
                                        ("bytes", 2, True), (8, 2, False), (2, 8, False))]
    # Two words per cycle: beats of one word at random, so blocks start at either half.
    got, flags = _simulate(stream_bench, cases, config=config, words=words,
                           rng=np.random.default_rng(7))
    want = [item for case in cases for item in dequant_expected(case, preset(config).mv_k)]
    assert [{"code": b["code"], "first": b["first"], "last": b["last"], "rows": beat_rows(b)}
            for b in got] == want
    assert not any(flags)


def test_bad_code_byte_raises_format_error(stream_bench):
    rng = np.random.default_rng(6)
    case = scenario_matrix(rng, 4, 4, False, n_strips=1, k_blocks=2)
    data = bytearray(case.data)
    data[1] = 7                                   # block 1's code: 7 is not 0..3
    bad = MatrixCase(bytes(data), 1, 2, 4, True, False, np.array([[1, 7]]))
    _, flags = _simulate(stream_bench, [bad], max_cycles=200)
    assert flags[-1] == 1


def test_constructor_checks_are_named():
    with pytest.raises(ValueError, match="max_k_blocks"):
        Dequantiser(preset("tiny"), max_k_blocks=12)


# --------------------------------------------------------------------------- cocotb
@pytest.fixture(scope="module")
def dequant_tiny(rtl_sim):
    return rtl_sim.build("dequant_tiny", lambda: Dequantiser(preset("tiny")))


@pytest.mark.rtl
def test_random_vectors(rtl_sim, dequant_tiny, tmp_path):
    rtl_sim.expect_pass(dequant_tiny, MODULE, "random_vectors", tmp_path, min_count=1000,
                        FLIGHTLLM_TB_PRESET="tiny")


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, dequant_tiny, tmp_path):
    rtl_sim.expect_caught(dequant_tiny, MODULE, "corrupted_reference", tmp_path, checked="beats",
                          FLIGHTLLM_TB_PRESET="tiny")


@pytest.mark.rtl
def test_throughput_tracks_the_words_per_block(rtl_sim, dequant_tiny, tmp_path):
    out = rtl_sim.run(dequant_tiny, MODULE, "throughput", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    dense4 = out["blocks"]["N=16 bits=4 gscale=0"]
    assert dense4["words_per_block"] < dense4["cycles_per_block"] <= dense4["words_per_block"] + 1
    # The first header word is taken in the block's select cycle: a 4-bit block with
    # multipliers costs its 17 words (the measured span misses the first block's header:
    # out[0] is its first beat), not 18.
    for name, m in out["blocks"].items():
        assert m["bound"] - 1 < m["cycles_per_block"] <= m["bound"], (name, m)
    scaled4 = out["blocks"]["N=16 bits=4 gscale=1"]
    assert scaled4["cycles_per_block"] <= scaled4["words_per_block"], scaled4


# ------------------------------------------------------------------ two words per cycle
@pytest.fixture(scope="module")
def dequant_u280_pairs(rtl_sim):
    return rtl_sim.build("dequant_u280_w2",
                         lambda: Dequantiser(preset("u280").replace(dequant_words=2)))


@pytest.mark.rtl
def test_two_words_per_cycle_random_vectors(rtl_sim, dequant_u280_pairs, tmp_path):
    rtl_sim.expect_pass(dequant_u280_pairs, MODULE, "random_vectors", tmp_path, min_count=600,
                        FLIGHTLLM_TB_PRESET="u280", FLIGHTLLM_TB_DEQUANT_WORDS="2",
                        FLIGHTLLM_TB_VECTORS="600")


@pytest.mark.rtl
def test_two_words_per_cycle_nearly_halve_a_block(rtl_sim, dequant_u280_pairs, tmp_path):
    out = rtl_sim.run(dequant_u280_pairs, MODULE, "throughput", tmp_path,
                      FLIGHTLLM_TB_PRESET="u280", FLIGHTLLM_TB_DEQUANT_WORDS="2")
    assert out["ok"], out
    for name, m in out["blocks"].items():
        assert m["bound"] - 1 < m["cycles_per_block"] <= m["bound"], (name, m)
    # A 32-slice chain's dense 4-bit block with multipliers: 17 words in 9 cycles (8 beats),
    # where one word per cycle takes 17.
    scaled4 = out["blocks"]["N=16 bits=4 gscale=1"]
    assert scaled4["cycles_per_block"] <= 9, scaled4
