"""cocotb testbench of hw/dequant.Dequantiser (driver, monitor, reference model, checker).

The reference is the contract's ``unpack_matrix``: every output beat is turned back into the
dense block rows it covers and compared with the contract's rows, with its sparsity code and
first/last flags. Environment as in tb_dsp_chain.
"""

from __future__ import annotations

import math
import os

import cocotb
import numpy as np

from flightllm.contract.config import preset
from flightllm.contract.weights import SPARSITY_CODES
from flightllm.hw.dequant import COMMAND_LAYOUT, words_layout
from flightllm.hw.dsp_chain import weight_beat_layout
from tb_common import (
    StreamDriver, StreamMonitor, seeded_rng, start, wait_until, write_summary,
)
from tb_model import KINDS, VARIANTS, Checker, beat_rows, dequant_expected, pack_fields, \
    scenario_matrix, unpack_fields, word_beats, words64


class DequantBench:
    """Drives matrices in; with two words per cycle (FLIGHTLLM_TB_DEQUANT_WORDS=2) a third of
    the beats carry one word when ``singles``, so blocks start at either half of a beat."""

    def __init__(self, dut, rng, *, idle: float, stall: float, corrupt: bool = False,
                 singles: bool = True):
        self.dut = dut
        self.mv_k = preset(os.environ.get("FLIGHTLLM_TB_PRESET", "tiny")).mv_k
        self.per_beat = int(os.environ.get("FLIGHTLLM_TB_DEQUANT_WORDS", "1"))
        self.singles = rng if singles else None
        self.wl = weight_beat_layout(self.mv_k)
        self.checker = Checker("dequant beats", dut._log)
        self.corrupt = corrupt
        self.cmd = StreamDriver(dut, "cmd", rng, idle=idle)
        self.words = StreamDriver(dut, "words", rng, idle=idle)
        self.monitor = StreamMonitor(dut, "weights", rng, self._on_beat, stall=stall)
        self.n_words = 0

    def add(self, case) -> None:
        self.cmd.send(pack_fields(COMMAND_LAYOUT, {
            "bits": case.bits, "sparse": int(case.sparse), "gscale": int(case.gscale),
            "k_blocks": case.k_blocks, "n_strips": case.n_strips}))
        words = words64(case.data)
        for beat in word_beats(words, self.per_beat, self.singles):
            self.words.send(beat if self.per_beat == 1
                            else pack_fields(words_layout(self.per_beat), beat))
        self.n_words += len(words)
        for item in dequant_expected(case, self.mv_k):
            if self.corrupt and len(self.checker.expected) == 5:
                item["rows"][0][2] += 1                  # the deliberate reference bug
            self.checker.expect(item)

    def _on_beat(self, bits: int) -> None:
        beat = unpack_fields(self.wl, bits)
        self.checker.check({"code": beat["code"], "first": beat["first"],
                            "last": beat["last"], "rows": beat_rows(beat)})


async def _random_run(dut, *, vectors: int, corrupt: bool, full_coverage: bool) -> None:
    seed, rng = seeded_rng(dut, "dequant")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = DequantBench(dut, rng, idle=0.25, stall=0.25, corrupt=corrupt)
    beats, case, seen = 0, 0, set()
    combinations = len(KINDS) * len(VARIANTS)
    while beats < vectors or (full_coverage and len(seen) < combinations):
        bits, gscale = VARIANTS[case % len(VARIANTS)]
        kind = KINDS[(case // len(VARIANTS)) % len(KINDS)]
        # Up to 12 blocks: code tables of one or two words.
        matrix = scenario_matrix(nrng, kind, bits, gscale, n_strips=int(nrng.integers(1, 3)),
                                 k_blocks=int(nrng.integers(1, 13)))
        before = len(bench.checker.expected)
        bench.add(matrix)
        beats += len(bench.checker.expected) - before
        seen.add((kind, bits, gscale))
        case += 1
    dut._log.info("dequant: %d beats from %d matrices, %d words", beats, case, bench.n_words)
    await wait_until(dut, lambda: bench.checker.count >= beats,
                     max_cycles=10 * (bench.n_words + beats) + 2000, what="all beats")
    checker = bench.checker
    error_flag = int(dut.format_error.value)
    write_summary(seed=seed, count=checker.count, errors=checker.errors, beats=beats,
                  words=bench.n_words, combinations=len(seen), format_error=error_flag)
    assert error_flag == 0, "format_error raised on valid input"
    if full_coverage:
        assert len(seen) == combinations, "not every combination was driven"
    assert checker.errors == 0 and checker.count >= vectors, \
        f"{checker.errors} errors in {checker.count} beats (seed {seed})"


@cocotb.test()
async def random_vectors(dut):
    """Random matrices of every code, width and multiplier setting; random stalls."""
    await _random_run(dut, vectors=int(os.environ.get("FLIGHTLLM_TB_VECTORS", "1500")),
                      corrupt=False, full_coverage=True)


@cocotb.test()
async def corrupted_reference(dut):
    """The same flow against a reference with one wrong weight: this test must fail."""
    await _random_run(dut, vectors=int(os.environ.get("FLIGHTLLM_TB_VECTORS", "40")),
                      corrupt=True, full_coverage=False)


@cocotb.test()
async def throughput(dut):
    """Cycles per block with no stalls, against the words each block occupies."""
    seed, rng = seeded_rng(dut, "dequant throughput")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = DequantBench(dut, rng, idle=0.0, stall=0.0, singles=False)
    per = bench.per_beat
    measured = {}
    for bits, gscale in VARIANTS:
        for n in SPARSITY_CODES:
            first = len(bench.monitor.accept_cycles)
            matrix = scenario_matrix(nrng, n, bits, gscale, n_strips=1, k_blocks=16)
            bench.add(matrix)
            target = len(bench.checker.expected) + bench.checker.count
            await wait_until(dut, lambda: bench.checker.count >= target, max_cycles=5000,
                             what=f"N={n} bits={bits}")
            out = bench.monitor.accept_cycles[first:]
            cycles = (out[-1] - out[0] + 1) / matrix.k_blocks
            words = len(matrix.data) // 8 / matrix.k_blocks
            header = int(gscale) + (n if n < 16 else 0)
            values = n * bits / 4
            beats = 16 * n / bench.mv_k
            table = words - header - values
            measured[f"N={n} bits={bits} gscale={int(gscale)}"] = {
                "cycles_per_block": cycles, "words_per_block": words, "beats_per_block": beats,
                # The select cycle takes the first header word, the rest go ``per`` a cycle
                # (the code table one a cycle).
                "bound": (table + 1 + math.ceil(max(header - 1, 0) / per)
                          + max(math.ceil(values / per), beats))}
            dut._log.info("N=%d bits=%d gscale=%d: %.2f cycles/block for %.2f words", n, bits,
                          gscale, cycles, words)
    write_summary(seed=seed, count=bench.checker.count, errors=bench.checker.errors,
                  blocks=measured)
    assert bench.checker.errors == 0 and bench.checker.count > 0
    # ``per`` words per cycle; a block's value words and beats overlap, its header words do
    # not, and the cycle that selects a block takes its first header word (a block without a
    # header pays that cycle alone).
    for name, m in measured.items():
        assert m["cycles_per_block"] <= m["bound"], name
