"""cocotb testbench of hw/dsp_chain.DSPChain (driver, monitor, reference model, checker).

Environment: ``FLIGHTLLM_TB_PRESET`` (the configuration the design was built from),
``FLIGHTLLM_TB_SEED``, ``FLIGHTLLM_TB_VECTORS`` (result beats to check),
``FLIGHTLLM_TB_SUMMARY`` (JSON file for the pytest side).
"""

from __future__ import annotations

import os

import cocotb
import numpy as np

from flightllm.contract.config import preset
from flightllm.hw.dsp_chain import (
    act_beat_layout, passes_per_block, result_beat_layout, weight_beat_layout,
)
from tb_common import (
    StreamDriver, StreamMonitor, seeded_rng, start, wait_until, write_summary,
)
from tb_model import KINDS, VARIANTS, Checker, chain_stimulus, pack_fields, scenario_matrix, \
    unpack_fields


def _config():
    return preset(os.environ.get("FLIGHTLLM_TB_PRESET", "tiny"))


class ChainBench:
    """Drivers for weights and activations, a monitor on results, and the checker."""

    def __init__(self, dut, rng, *, idle: float, stall: float, corrupt: bool = False):
        self.cfg = _config()
        self.mv_k = self.cfg.mv_k
        self.wl = weight_beat_layout(self.mv_k)
        self.al = act_beat_layout()
        self.rl = result_beat_layout()
        self.checker = Checker("dsp_chain results", dut._log)
        self.corrupt = corrupt
        self.weights = StreamDriver(dut, "weights", rng, idle=idle)
        self.acts = StreamDriver(dut, "acts", rng, idle=idle)
        self.monitor = StreamMonitor(dut, "results", rng, self._on_result, stall=stall)
        self.passes = 0

    def add(self, stim) -> None:
        for beat in stim.weights:
            self.weights.send(pack_fields(self.wl, beat))
        for beat in stim.acts:
            self.acts.send(pack_fields(self.al, beat))
        for item in stim.expected:
            if self.corrupt and len(self.checker.expected) == 7:
                item = {"y": [list(lane) for lane in item["y"]]}
                item["y"][0][3] += 1                    # the deliberate reference bug
            self.checker.expect(item)
        self.passes += stim.passes

    def _on_result(self, bits: int) -> None:
        self.checker.check(unpack_fields(self.rl, bits))


def random_stimuli(nrng, mv_k: int, vectors: int):
    """Random matrices cycling through every (kind, weight width, multiplier) combination,
    each with 2-6 strips and 1-3 K blocks, MM or MV at random, until ``vectors`` strips:
    yields ``((kind, bits, gscale), chain stimulus, strips)``."""
    strips = case = 0
    while strips < vectors:
        bits, gscale = VARIANTS[case % len(VARIANTS)]
        kind = KINDS[(case // len(VARIANTS)) % len(KINDS)]
        n_strips = int(nrng.integers(2, 7))
        matrix = scenario_matrix(nrng, kind, bits, gscale, n_strips=n_strips,
                                 k_blocks=int(nrng.integers(1, 4)))
        mode = "mv" if nrng.random() < 0.5 else "mm"
        yield ((kind, bits, gscale),
               chain_stimulus(matrix, nrng, mv_k, mode=mode, extreme=kind == "extreme"),
               n_strips)
        strips += n_strips
        case += 1


async def _random_run(dut, *, vectors: int, corrupt: bool, full_coverage: bool) -> None:
    seed, rng = seeded_rng(dut, "dsp_chain")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = ChainBench(dut, rng, idle=0.25, stall=0.25, corrupt=corrupt)
    kinds_seen = set()
    strips = case = 0
    for case, (combination, stimulus, n_strips) in enumerate(
            random_stimuli(nrng, bench.mv_k, vectors), start=1):
        bench.add(stimulus)
        kinds_seen.add(combination)
        strips += n_strips
    dut._log.info("dsp_chain: %d strips in %d matrices, %d passes", strips, case, bench.passes)
    await wait_until(dut, lambda: bench.checker.count >= strips,
                     max_cycles=20 * bench.passes + 2000, what="all strip results")
    checker = bench.checker
    write_summary(seed=seed, count=checker.count, errors=checker.errors, strips=strips,
                  passes=bench.passes, combinations=len(kinds_seen))
    if full_coverage:
        assert len(kinds_seen) == len(KINDS) * len(VARIANTS), "not every combination was driven"
    assert checker.errors == 0 and checker.count >= vectors, \
        f"{checker.errors} errors in {checker.count} results (seed {seed})"


@cocotb.test()
async def random_vectors(dut):
    """Random matrices of every sparsity code, weight width and multiplier setting, MM and
    MV lane use, random stalls on every handshake; every strip result checked."""
    await _random_run(dut, vectors=int(os.environ.get("FLIGHTLLM_TB_VECTORS", "1000")),
                      corrupt=False, full_coverage=True)


@cocotb.test()
async def corrupted_reference(dut):
    """The same flow against a reference with one wrong value: this test must fail."""
    await _random_run(dut, vectors=int(os.environ.get("FLIGHTLLM_TB_VECTORS", "60")),
                      corrupt=True, full_coverage=False)


@cocotb.test()
async def throughput(dut):
    """Cycles per 16x16 block at each N with no stalls: 16 * N / mv_k, i.e. 16 / N times the
    dense number of useful MACs per slice per cycle."""
    seed, rng = seeded_rng(dut, "dsp_chain throughput")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = ChainBench(dut, rng, idle=0.0, stall=0.0)
    cfg = bench.cfg
    measured, latency = {}, {}
    for n in cfg.sparsity_codes:
        first_beat = len(bench.weights.accept_cycles)
        matrix = scenario_matrix(nrng, "dense" if n == 16 else n, 4, False, n_strips=4,
                                 k_blocks=8)
        stim = chain_stimulus(matrix, nrng, cfg.mv_k)
        bench.add(stim)
        expected_results = len(bench.checker.expected) + bench.checker.count
        await wait_until(dut, lambda: bench.checker.count >= expected_results,
                         max_cycles=50 * stim.passes + 500,
                         what=f"N={n} results")
        accepted = bench.weights.accept_cycles[first_beat:]
        blocks = matrix.n_strips * matrix.k_blocks
        cycles = accepted[-1] - accepted[0] + 1
        measured[n] = cycles / blocks
        # Latency: the last pass of the case's final strip to that strip's result.
        latency[n] = bench.monitor.accept_cycles[-1] - accepted[-1]
        dut._log.info("N=%d: %d blocks in %d cycles = %.2f cycles/block (ideal %d)", n, blocks,
                      cycles, measured[n], passes_per_block(n, cfg.mv_k))
    useful = {n: 16 * 16 / (c * cfg.mv_k) for n, c in measured.items()}
    write_summary(seed=seed, cycles_per_block=measured, useful_macs_per_dsp_cycle=useful,
                  count=bench.checker.count, errors=bench.checker.errors,
                  latency_cycles=latency)
    assert bench.checker.errors == 0 and bench.checker.count >= 4 * len(cfg.sparsity_codes)
    for n, c in measured.items():
        assert c == passes_per_block(n, cfg.mv_k), f"N={n}: {c} cycles/block"
        assert useful[n] == 16 / n
