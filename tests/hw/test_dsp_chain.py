# amaranth: UnusedElaboratable=no
"""The configurable sparse DSP chain: schedule tables, a quick Amaranth-simulator smoke test,
and the cocotb + Verilator benches (random vectors, checker self-test, N:16 speedup)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth import Elaboratable, Module
from amaranth.lib import wiring

from flightllm.contract.config import preset
from flightllm.hw.dequant import Dequantiser
from flightllm.hw.dsp_chain import (
    DSPChain, cascade_restarts, check_chain_config, passes_per_block, reduction_taps,
)

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_model import (  # noqa: E402
    chain_group_stimulus, chain_stimulus, scenario_matrix, words64,
)

MODULE = "tb_dsp_chain"


def test_schedule_for_tiny():
    k = preset("tiny").mv_k
    assert {n: passes_per_block(n, k) for n in (2, 4, 8, 16)} == {2: 2, 4: 4, 8: 8, 16: 16}
    assert cascade_restarts(16, k) == [0, 8]               # dense: split at the 8-DSP limit
    assert cascade_restarts(2, k) == list(range(0, 16, 2))
    assert reduction_taps(16, k) == [[7, 15]]
    assert reduction_taps(4, k) == [[3], [7], [11], [15]]


def test_schedule_for_u280_two_rows_dense():
    k = preset("u280").mv_k
    assert passes_per_block(16, k) == 8 and passes_per_block(2, k) == 1
    assert reduction_taps(16, k) == [[7, 15], [23, 31]]


def test_configuration_limits_are_named():
    cfg = preset("tiny").replace(sparsity_codes=(16,), dsp_group=16)
    with pytest.raises(ValueError, match="dsp_group = 16"):
        check_chain_config(cfg)
    cfg = preset("tiny").replace(mv_k=48, sparsity_codes=(8, 16), dsp_group=8)
    with pytest.raises(ValueError, match="mv_k = 48"):
        DSPChain(cfg)


def test_chain_in_amaranth_simulator(stream_bench):
    """A few strips of every kind through the chain in Amaranth's own simulator."""
    cfg = preset("tiny")
    dut = DSPChain(cfg)
    rng = np.random.default_rng(3)
    stims = []
    for kind, bits, gscale in (("mixed", 4, True), ("dense", 8, False), ("extreme", 8, False),
                               ("extreme", 4, True), ("bytes", 2, True)):
        matrix = scenario_matrix(rng, kind, bits, gscale, n_strips=2, k_blocks=2)
        stims.append(chain_stimulus(matrix, rng, cfg.mv_k, extreme=kind == "extreme"))
    got, expected = _run_chain(stream_bench, dut, stims)
    assert got == expected


def _run_chain(stream_bench, dut, stims) -> tuple[list, list]:
    """Feed the stimuli's weight and activation beats to the chain ``dut``; its result beats
    and the expected ones."""
    bench = stream_bench(dut)
    bench.feed(dut.weights, [beat for stim in stims for beat in stim.weights])
    bench.feed(dut.acts, [beat for stim in stims for beat in stim.acts])
    expected = [row for stim in stims for row in stim.expected]
    got = bench.drain(dut.results, count=len(expected))
    bench.run()
    return got, expected


@pytest.mark.parametrize("pairs", [2, 4])
def test_chain_serves_a_group_of_pairs_per_weight_pass(pairs, stream_bench):
    """A chain built for ``pairs`` token pairs per weight pass holds each weight beat for one
    pass per pair of the group (full groups and short last groups), keeps a bank of
    accumulators per pair and ends each strip with one result per pair."""
    cfg = preset("tiny")
    # The engine's result depth: a group's strip ends push results in consecutive cycles.
    dut = DSPChain(cfg, pairs=pairs, result_depth=2)
    rng = np.random.default_rng(17 + pairs)
    stims = []
    for (kind, bits, gscale), group in zip(
            (("mixed", 4, True), ("dense", 8, False), ("extreme", 8, False), ("bytes", 2, True)),
            (pairs, 1, pairs - 1, pairs)):
        matrix = scenario_matrix(rng, kind, bits, gscale, n_strips=2, k_blocks=2)
        stims.append(chain_group_stimulus(matrix, rng, cfg.mv_k, pairs=pairs, group=group,
                                          extreme=kind == "extreme"))
    got, expected = _run_chain(stream_bench, dut, stims)
    assert got == expected


def test_pairs_per_weight_pass_must_be_a_small_power_of_two():
    for bad in (0, 3, 16, 2.0):
        with pytest.raises(ValueError, match="pairs must be a power of two"):
            DSPChain(preset("tiny"), pairs=bad)


class _DequantIntoChain(Elaboratable):
    def __init__(self, cfg):
        self.dequant = Dequantiser(cfg, max_k_blocks=64)
        self.chain = DSPChain(cfg)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dequant = self.dequant
        m.submodules.chain = self.chain
        wiring.connect(m, self.dequant.weights, self.chain.weights)
        return m


@pytest.mark.parametrize("config", ["tiny", "u280"])
def test_dequantiser_feeds_the_chain(config, stream_bench):
    """Packed bytes in, strip results out: the two blocks joined, checked against
    unpack_matrix @ x."""
    cfg = preset(config)
    dut = _DequantIntoChain(cfg)
    rng = np.random.default_rng(11)
    cmds, words, acts, expected = [], [], [], []
    for kind, bits, gscale in (("mixed", 2, True), ("dense", 4, False), ("bytes", 8, False)):
        matrix = scenario_matrix(rng, kind, bits, gscale, n_strips=2, k_blocks=3)
        stim = chain_stimulus(matrix, rng, cfg.mv_k, mode="mv" if bits == 4 else "mm")
        cmds.append({"bits": bits, "sparse": int(matrix.sparse), "gscale": int(gscale),
                     "k_blocks": matrix.k_blocks, "n_strips": matrix.n_strips})
        words += words64(matrix.data)
        acts += stim.acts
        expected += stim.expected
    bench = stream_bench(dut)
    bench.feed(dut.dequant.cmd, cmds)
    bench.feed(dut.dequant.words, words)
    bench.feed(dut.chain.acts, acts)
    got = bench.drain(dut.chain.results, count=len(expected))
    bench.run()
    assert got == expected


# --------------------------------------------------------------------------- cocotb
@pytest.fixture(scope="module")
def chain_tiny(rtl_sim):
    return rtl_sim.build("dsp_chain_tiny", lambda: DSPChain(preset("tiny")))


@pytest.mark.rtl
def test_random_vectors(rtl_sim, chain_tiny, tmp_path):
    rtl_sim.expect_pass(chain_tiny, MODULE, "random_vectors", tmp_path, min_count=1000,
                        FLIGHTLLM_TB_PRESET="tiny")


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, chain_tiny, tmp_path):
    rtl_sim.expect_caught(chain_tiny, MODULE, "corrupted_reference", tmp_path, checked="strips",
                          FLIGHTLLM_TB_PRESET="tiny")


@pytest.mark.rtl
def test_sparse_speedup_in_cycles(rtl_sim, chain_tiny, tmp_path):
    out = rtl_sim.run(chain_tiny, MODULE, "throughput", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    cycles = {int(n): c for n, c in out["cycles_per_block"].items()}
    assert cycles == {2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0}
    for n in (2, 4, 8):
        assert cycles[16] / cycles[n] == 16 / n
    assert set(out["latency_cycles"].values()) == {DSPChain(preset("tiny")).latency}


@pytest.mark.rtl
@pytest.mark.slow
def test_u280_chain_random_vectors_and_speedup(rtl_sim, tmp_path):
    """The 32-slice chain of the U280 preset: two dense rows per pass, one pass per N=2 block."""
    build = rtl_sim.build("dsp_chain_u280", lambda: DSPChain(preset("u280")))
    rtl_sim.expect_pass(build, MODULE, "random_vectors", tmp_path, min_count=1000,
                        FLIGHTLLM_TB_PRESET="u280")
    out = rtl_sim.run(build, MODULE, "throughput", tmp_path, FLIGHTLLM_TB_PRESET="u280")
    assert out["ok"], out
    assert {int(n): c for n, c in out["cycles_per_block"].items()} == \
        {2: 1.0, 4: 2.0, 8: 4.0, 16: 8.0}


@pytest.mark.parametrize("name", ["tiny", "u280"])
def test_performance_model_uses_the_chains_latency(name):
    # The performance model (sim/perf_units.py) must not import the RTL, so it carries the
    # chain's pipeline depth as a number; this keeps the two in step.
    from flightllm.sim.perf_units import UnitTiming
    cfg = preset(name)
    chain = DSPChain(cfg)
    chain._MustUse__silence = True
    assert chain.latency == cfg.mv_k + UnitTiming().chain_latency_extra
