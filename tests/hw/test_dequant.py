# amaranth: UnusedElaboratable=no
"""The dequantiser: quick Amaranth-simulator checks (smoke, format errors) and the cocotb +
Verilator benches (random vectors against unpack_matrix, checker self-test, throughput)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightllm.contract.config import preset
from flightllm.hw.dequant import COMMAND_LAYOUT, Dequantiser
from flightllm.hw.dsp_chain import weight_beat_layout

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_model import (  # noqa: E402
    MatrixCase, beat_rows, dequant_expected, pack_fields, scenario_matrix, unpack_fields,
    words64,
)

MODULE = "tb_dequant"


def _simulate(cases, *, max_cycles=20000, config="tiny"):
    """Run ``cases`` through the dequantiser in Amaranth's simulator: (beats, format_error)."""
    cfg = preset(config)
    dut = Dequantiser(cfg, max_k_blocks=64)
    wl = weight_beat_layout(cfg.mv_k)
    expected = sum(len(dequant_expected(c, cfg.mv_k)) for c in cases if c.codes.max() < 4)
    got, flags = [], []

    async def feed(ctx):
        for case in cases:
            ctx.set(dut.cmd.payload.as_value(), pack_fields(COMMAND_LAYOUT, {
                "bits": case.bits, "sparse": int(case.sparse), "gscale": int(case.gscale),
                "k_blocks": case.k_blocks, "n_strips": case.n_strips}))
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            for word in words64(case.data):
                ctx.set(dut.words.payload, word)
                ctx.set(dut.words.valid, 1)
                await ctx.tick().until(dut.words.ready)
            ctx.set(dut.words.valid, 0)

    async def drain(ctx):
        ctx.set(dut.weights.ready, 1)
        for _ in range(max_cycles):
            _, _, valid, payload, error = await ctx.tick().sample(
                dut.weights.valid, dut.weights.payload.as_value(), dut.format_error)
            flags.append(error)
            if valid:
                got.append(unpack_fields(wl, payload))
            if expected and len(got) >= expected:
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feed)
    sim.add_testbench(drain)
    sim.run()
    return got, flags


@pytest.mark.parametrize("config", ["tiny", "u280"])
def test_dequantiser_in_amaranth_simulator(config):
    rng = np.random.default_rng(5)
    cases = [scenario_matrix(rng, kind, bits, gscale, n_strips=2, k_blocks=10)
             for kind, bits, gscale in (("mixed", 4, True), ("dense", 8, False),
                                        ("bytes", 2, True), (8, 2, False), (2, 8, False))]
    got, flags = _simulate(cases, config=config)
    want = [item for case in cases for item in dequant_expected(case, preset(config).mv_k)]
    assert [{"code": b["code"], "first": b["first"], "last": b["last"], "rows": beat_rows(b)}
            for b in got] == want
    assert not any(flags)


def test_bad_code_byte_raises_format_error():
    rng = np.random.default_rng(6)
    case = scenario_matrix(rng, 4, 4, False, n_strips=1, k_blocks=2)
    data = bytearray(case.data)
    data[1] = 7                                   # block 1's code: 7 is not 0..3
    bad = MatrixCase(bytes(data), 1, 2, 4, True, False, np.array([[1, 7]]))
    _, flags = _simulate([bad], max_cycles=200)
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
    out = rtl_sim.run(dequant_tiny, MODULE, "random_vectors", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    assert out["errors"] == 0 and out["count"] >= 1000


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, dequant_tiny, tmp_path):
    out = rtl_sim.run(dequant_tiny, MODULE, "corrupted_reference", tmp_path,
                      FLIGHTLLM_TB_PRESET="tiny")
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["errors"] == 1 and out["count"] == out["beats"], out


@pytest.mark.rtl
def test_throughput_tracks_the_words_per_block(rtl_sim, dequant_tiny, tmp_path):
    out = rtl_sim.run(dequant_tiny, MODULE, "throughput", tmp_path, FLIGHTLLM_TB_PRESET="tiny")
    assert out["ok"], out
    dense4 = out["blocks"]["N=16 bits=4 gscale=0"]
    assert dense4["words_per_block"] < dense4["cycles_per_block"] <= dense4["words_per_block"] + 1
