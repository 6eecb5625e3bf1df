# amaranth: UnusedElaboratable=no
"""The configurable sparse DSP chain: schedule tables, a quick Amaranth-simulator smoke test,
and the cocotb + Verilator benches (random vectors, checker self-test, N:16 speedup)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from flightllm.contract.config import preset
from flightllm.hw.dequant import COMMAND_LAYOUT, Dequantiser
from flightllm.hw.dsp_chain import (
    DSPChain, act_beat_layout, cascade_restarts, check_chain_config, passes_per_block,
    reduction_taps, result_beat_layout, weight_beat_layout,
)

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_model import (  # noqa: E402
    chain_stimulus, pack_fields, scenario_matrix, unpack_fields, words64,
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


def test_chain_in_amaranth_simulator():
    """A few strips of every kind through the chain in Amaranth's own simulator."""
    cfg = preset("tiny")
    dut = DSPChain(cfg)
    rng = np.random.default_rng(3)
    wl, al, rl = weight_beat_layout(cfg.mv_k), act_beat_layout(), result_beat_layout()
    weights, acts, expected = [], [], []
    for kind, bits, gscale in (("mixed", 4, True), ("dense", 8, False), ("extreme", 8, False),
                               ("extreme", 4, True), ("bytes", 2, True)):
        matrix = scenario_matrix(rng, kind, bits, gscale, n_strips=2, k_blocks=2)
        stim = chain_stimulus(matrix, rng, cfg.mv_k, extreme=kind == "extreme")
        weights += stim.weights
        acts += stim.acts
        expected += stim.expected
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(_feeder(dut.weights, wl, weights))
    sim.add_testbench(_feeder(dut.acts, al, acts))
    sim.add_testbench(_drainer(dut.results, rl, got, len(expected)))
    sim.run()
    assert got == expected


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
def test_dequantiser_feeds_the_chain(config):
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
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(_feeder(dut.dequant.cmd, COMMAND_LAYOUT, cmds))
    sim.add_testbench(_feeder(dut.dequant.words, None, words))
    sim.add_testbench(_feeder(dut.chain.acts, act_beat_layout(), acts))
    sim.add_testbench(_drainer(dut.chain.results, result_beat_layout(), got, len(expected)))
    sim.run()
    assert got == expected


def _feeder(port, layout, beats):
    async def feed(ctx):
        for beat in beats:
            if layout is None:
                ctx.set(port.payload, beat)
            else:
                ctx.set(port.payload.as_value(), pack_fields(layout, beat))
            ctx.set(port.valid, 1)
            await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)
    return feed


def _drainer(port, layout, got, count):
    async def drain(ctx):
        ctx.set(port.ready, 1)
        while len(got) < count:
            _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload.as_value())
            if valid:
                got.append(unpack_fields(layout, payload))
    return drain


# --------------------------------------------------------------------------- cocotb
@pytest.fixture(scope="module")
def chain_tiny(rtl_sim):
    return rtl_sim.build("dsp_chain_tiny", lambda: DSPChain(preset("tiny")))


@pytest.mark.rtl
def test_random_vectors(rtl_sim, chain_tiny, tmp_path):
    out = rtl_sim.run(chain_tiny, MODULE, "random_vectors", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    assert out["errors"] == 0 and out["count"] >= 1000


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, chain_tiny, tmp_path):
    out = rtl_sim.run(chain_tiny, MODULE, "corrupted_reference", tmp_path,
                      FLIGHTLLM_TB_PRESET="tiny")
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["errors"] == 1 and out["count"] == out["strips"], out


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
    out = rtl_sim.run(build, MODULE, "random_vectors", tmp_path, FLIGHTLLM_TB_PRESET="u280")
    assert out["ok"] and out["count"] >= 1000, out
    out = rtl_sim.run(build, MODULE, "throughput", tmp_path, FLIGHTLLM_TB_PRESET="u280")
    assert out["ok"], out
    assert {int(n): c for n, c in out["cycles_per_block"].items()} == \
        {2: 1.0, 4: 2.0, 8: 4.0, 16: 8.0}
