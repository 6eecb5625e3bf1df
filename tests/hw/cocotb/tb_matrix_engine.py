"""cocotb testbench of hw/matrix_engine.MatrixEngine (drivers, monitor, reference, checker).

The reference is the golden simulator: every instruction is staged in a ``CoreBuffers``, run by
``flightllm.sim.execute.exec_matrix``, and the result rows it wrote are what the engine must
produce (tb_matrix_model.py). Environment: ``FLIGHTLLM_TB_PRESET``, ``FLIGHTLLM_TB_CHAINS``
and ``FLIGHTLLM_TB_MAX_K_BLOCKS`` (what the design was built from), ``FLIGHTLLM_TB_SEED``,
``FLIGHTLLM_TB_VALUES`` (result values to check), ``FLIGHTLLM_TB_SUMMARY`` (JSON file for the
pytest side).
"""

from __future__ import annotations

import os

import cocotb
import numpy as np

from flightllm.contract.config import preset
from flightllm.contract.isa import OutMode
from flightllm.hw.dsp_chain import passes_per_block
from flightllm.hw.matrix_engine import COMMAND_LAYOUT, RESULT_LAYOUT
from tb_common import StreamDriver, StreamMonitor, seeded_rng, start, wait_until, write_summary
from tb_matrix_model import RowChecker, coverage_key, random_case, scenario
from tb_model import pack_fields, unpack_fields

#: Cycles a result may take beyond the weight words and activation beats fed for it.
_SLACK = 3000


def _config():
    return preset(os.environ.get("FLIGHTLLM_TB_PRESET", "tiny"))


def _chains(cfg) -> int:
    return int(os.environ.get("FLIGHTLLM_TB_CHAINS", cfg.mv_rows))


def _max_k_blocks() -> int:
    return int(os.environ.get("FLIGHTLLM_TB_MAX_K_BLOCKS", "16"))


class EngineBench:
    """A driver per input stream, a monitor on the results, the row checker."""

    def __init__(self, dut, rng, *, idle: float, stall: float, corrupt: bool = False):
        self.cfg = _config()
        self.chains = _chains(self.cfg)
        self.checker = RowChecker("matrix engine results", dut._log)
        self.corrupt = corrupt
        self.cmd = StreamDriver(dut, "cmd", rng, idle=idle)
        self.words = [StreamDriver(dut, f"words__{c}", rng, idle=idle)
                      for c in range(self.chains)]
        self.acts = StreamDriver(dut, "acts", rng, idle=idle)
        self.params = StreamDriver(dut, "params", rng, idle=idle)
        self.psum = StreamDriver(dut, "psum", rng, idle=idle)
        self.residual = StreamDriver(dut, "residual", rng, idle=idle)
        self.monitor = StreamMonitor(dut, "results", rng, self._on_result, stall=stall)
        self.beats = 0
        self.rows = 0

    def add(self, case) -> None:
        self.cmd.send(pack_fields(COMMAND_LAYOUT, case.command))
        for c, words in enumerate(case.words):
            for word in words:
                self.words[c].send(word)
            self.beats += len(words)
        for driver, beats in ((self.acts, case.acts), (self.params, case.params),
                              (self.psum, case.psum), (self.residual, case.residual)):
            for beat in beats:
                driver.send(beat)
            self.beats += len(beats)
        for row in case.expected:
            if self.corrupt and self.rows == 5:
                row = dict(row, y=list(row["y"]))
                row["y"][3] += 1                         # the deliberate reference bug
            self.checker.expect(row)
            self.rows += 1

    def _on_result(self, bits: int) -> None:
        self.checker.check(unpack_fields(RESULT_LAYOUT, bits))


async def _random_run(dut, *, values: int, corrupt: bool, full_coverage: bool) -> None:
    seed, rng = seeded_rng(dut, "matrix_engine")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = EngineBench(dut, rng, idle=0.25, stall=0.25, corrupt=corrupt)
    cfg, chains = bench.cfg, bench.chains
    planned, i, seen, features = 0, 0, set(), set()
    while planned < values or (full_coverage and i < 60):
        case = scenario(nrng, cfg, chains, i, max_k_blocks=_max_k_blocks())
        bench.add(case)
        planned += case.values
        i += 1
        ins = case.ins
        if not case.expected:
            features.add("empty")
            continue
        seen.add(coverage_key(case))
        features |= {name for name in ("psum", "residual", "relu", "p_uniform", "gscale")
                     if getattr(ins, name)}
        features |= {"strided"} if ins.w_stride else {"packed"}
        features |= {"max_k"} if ins.k_blocks == _max_k_blocks() else set()
    dut._log.info("matrix_engine: %d instructions, %d result values planned", i, planned)
    await wait_until(dut, lambda: bench.checker.count >= planned,
                     max_cycles=4 * bench.beats + _SLACK * i, what="all result rows")
    checker = bench.checker
    write_summary(seed=seed, count=checker.count, errors=checker.errors, instructions=i,
                  rows=bench.rows, combinations=len(seen), features=sorted(features),
                  format_error=int(dut.format_error.value))
    if full_coverage:
        assert features == {"psum", "residual", "relu", "p_uniform", "gscale", "strided",
                            "packed", "max_k", "empty"}, features
        assert len(seen) >= 20, f"only {len(seen)} (op, wbits, gscale, out_mode) combinations"
    assert int(dut.format_error.value) == 0
    assert checker.errors == 0 and checker.count >= values, \
        f"{checker.errors} errors in {checker.count} values (seed {seed})"


@cocotb.test()
async def random_instructions(dut):
    """Random MV and MM instructions over every weight width, sparsity (every N, mixed, dense
    format, random index bytes), multipliers, output mode, psum, residual, relu and uniform
    records; random stalls on every handshake; every result value checked."""
    await _random_run(dut, values=int(os.environ.get("FLIGHTLLM_TB_VALUES", "1000")),
                      corrupt=False, full_coverage=True)


@cocotb.test()
async def corrupted_reference(dut):
    """The same flow against a reference with one wrong value: this test must fail."""
    await _random_run(dut, values=int(os.environ.get("FLIGHTLLM_TB_VALUES", "200")),
                      corrupt=True, full_coverage=False)


@cocotb.test()
async def mv_cycles(dut):
    """Cycles per MV instruction at each N with no stalls (one matrix of ``2 * chains``
    strips x 8 K blocks, INT4, ACC32), from the command's acceptance to its last result row;
    also one dense MM instruction of four token rows."""
    seed, rng = seeded_rng(dut, "matrix_engine cycles")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = EngineBench(dut, rng, idle=0.0, stall=0.0)
    cfg, chains = bench.cfg, bench.chains
    k_blocks, n_strips = 8, 2 * chains
    runs = [(n, True, 1) for n in cfg.sparsity_codes] + [(16, False, 4)]
    measured = {}
    for n, mv, m_rows in runs:
        case = random_case(nrng, cfg, chains, mv=mv, bits=4, gscale=False, kind=n,
                           mode=OutMode.ACC32, psum=False, residual=False, relu=False,
                           p_uniform=False, n_strips=n_strips, k_blocks=k_blocks,
                           m_rows=m_rows, strided=False)
        first_row = bench.monitor.count
        bench.add(case)
        await wait_until(dut, lambda: bench.checker.count >= (first_row + len(case.expected))
                         * 16, max_cycles=20000, what=f"N={n} results")
        cycles = bench.monitor.accept_cycles[-1] - bench.cmd.accept_cycles[-1] + 1
        pairs = 1 if mv else -(-m_rows // 2)
        chain_bound = pairs * (n_strips // chains) * k_blocks * passes_per_block(n, cfg.mv_k)
        key = f"{'MV' if mv else f'MM{m_rows}'} N={n}"
        measured[key] = {"cycles": cycles, "chain_bound": chain_bound,
                         "words_per_chain": len(case.words[0])}
        dut._log.info("%s: %d cycles (%d blocks/chain; chain-bound %d, %d words/chain)", key,
                      cycles, pairs * (n_strips // chains) * k_blocks, chain_bound,
                      len(case.words[0]))
    write_summary(seed=seed, cycles=measured, count=bench.checker.count,
                  errors=bench.checker.errors, chains=chains, k_blocks=k_blocks,
                  n_strips=n_strips)
    assert bench.checker.errors == 0 and bench.checker.count >= 16 * n_strips * len(runs)
