"""cocotb testbench of hw/sfu.SFU: drivers for the command, operand and parameter streams, a
monitor on results and reciprocals, the golden simulator as reference, the checker.

Environment: ``FLIGHTLLM_TB_PRESET`` (the configuration the design was built from),
``FLIGHTLLM_TB_SEED``, ``FLIGHTLLM_TB_ELEMENTS`` (elements per variant),
``FLIGHTLLM_TB_SUMMARY`` (JSON file for the pytest side).
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from flightllm.contract.config import preset
from flightllm.hw.sfu import (
    COMMAND_FIELDS, COMMAND_LAYOUT, operand_beat_layout, param_beat_layout, result_beat_layout,
)
from tb_common import StreamDriver, StreamMonitor, seeded_rng, start, wait_until, write_summary
from tb_model import pack_fields, unpack_fields
from tb_sfu_model import (
    VARIANT_NAMES, SFUChecker, command, input_beats, random_case, random_cases,
)


def _lanes() -> int:
    return preset(os.environ.get("FLIGHTLLM_TB_PRESET", "tiny")).sfu_lanes


class SFUBench:
    """Drivers on cmd/a/b/p, monitors on out/recip, the checker, and an error-flag watch."""

    def __init__(self, dut, rng, *, idle: float, stall: float, corrupt_beat=None):
        self.dut = dut
        self.lanes = _lanes()
        self.rng = np.random.default_rng(rng.randrange(1 << 32))
        self.ol = operand_beat_layout(self.lanes)
        self.rl = result_beat_layout(self.lanes)
        self.pl = param_beat_layout(self.lanes)
        self.checker = SFUChecker(dut._log)
        self.corrupt_beat = corrupt_beat
        self.cmd = StreamDriver(dut, "cmd", rng, idle=idle)
        self.streams = {name: StreamDriver(dut, name, rng, idle=idle) for name in "abp"}
        self.out = StreamMonitor(dut, "out", rng, self._on_result, stall=stall)
        self.recip = StreamMonitor(dut, "recip", rng, self._on_recip, stall=stall)
        self.error_cycles = 0
        self.elements = 0
        self.row_ends: list[int] = []      # cycles of the accepted row-final result beats
        cocotb.start_soon(self._watch_error())

    def add(self, case) -> None:
        self.cmd.send(pack_fields(COMMAND_LAYOUT, command(case, COMMAND_FIELDS)))
        beats = input_beats(case, self.lanes, self.rng)
        for beat in beats["a"]:
            self.streams["a"].send(pack_fields(self.ol, beat))
        for beat in beats["b"]:
            self.streams["b"].send(pack_fields(self.ol, beat))
        for beat in beats["p"]:
            self.streams["p"].send(pack_fields(self.pl, beat))
        self.checker.expect(case, self.lanes, corrupt_beat=self.corrupt_beat)
        self.elements += case.elements

    @property
    def done(self) -> bool:
        return self.checker.pending == 0

    def _on_result(self, bits: int) -> None:
        beat = unpack_fields(self.rl, bits)
        if beat["last"]:
            self.row_ends.append(self.out.accept_cycles[-1])
        self.checker.check(beat)

    def _on_recip(self, bits: int) -> None:
        self.checker.check_recip(bits - (1 << 32) if bits >> 31 else bits)

    async def _watch_error(self) -> None:
        while True:
            await FallingEdge(self.dut.clk)
            await ReadOnly()
            self.error_cycles += int(self.dut.error.value)


async def _random_run(dut, *, min_elements: int, corrupt: bool) -> None:
    seed, rng = seeded_rng(dut, "sfu")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = SFUBench(dut, rng, idle=0.25, stall=0.25, corrupt_beat=7 if corrupt else None)
    cases, missing = random_cases(nrng, bench.lanes, min_elements=min_elements)
    for case in cases:
        bench.add(case)
    dut._log.info("sfu: %d cases, %d elements, %d result beats", len(cases), bench.elements,
                  bench.checker.pending)
    await wait_until(dut, lambda: bench.done, max_cycles=20 * bench.checker.pending + 20000,
                     what="all SFU results")
    checker = bench.checker
    per_variant = {v: checker.elements[v] for v in VARIANT_NAMES}
    write_summary(seed=seed, cases=len(cases), beats=checker.beats, errors=checker.errors,
                  recips=checker.recips, elements=per_variant, error_cycles=bench.error_cycles,
                  count=min(per_variant.values()), corners_missing=sorted(missing))
    assert not missing, f"corners not reached: {sorted(missing)}"
    assert bench.error_cycles == 0, "the SFU flagged a command as unsupported"
    assert checker.errors == 0 and min(per_variant.values()) >= min_elements, \
        f"{checker.errors} errors; elements checked {per_variant} (seed {seed})"


@cocotb.test()
async def random_functions(dut):
    """Every MISC function and flag combination on random rows (varied n and m, masked and
    causal softmax, saturating inputs, extreme multipliers, garbage in unused lanes), 25 %
    random stalls on every handshake; every result beat and reciprocal checked."""
    await _random_run(dut, min_elements=int(os.environ.get("FLIGHTLLM_TB_ELEMENTS", "1000")),
                      corrupt=False)


@cocotb.test()
async def corrupted_reference(dut):
    """The same flow against a reference with one wrong value: this test must fail."""
    await _random_run(dut, min_elements=int(os.environ.get("FLIGHTLLM_TB_ELEMENTS", "40")),
                      corrupt=True)


@cocotb.test()
async def throughput(dut):
    """No stalls. Per variant: steady-state cycles per row over 8 rows of 64 and of 256
    elements (between consecutive row-final result beats), and the latency of a lone 64-element
    row (its first input beat accepted to its last result beat accepted)."""
    seed, rng = seeded_rng(dut, "sfu throughput")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = SFUBench(dut, rng, idle=0.0, stall=0.0)
    cycles_per_row, latency = {}, {}
    for label in VARIANT_NAMES:
        cycles_per_row[label] = {}
        for rows, n in ((8, 64), (8, 256), (1, 64)):
            case = random_case(nrng, label, bench.lanes, shape=(rows, n), group=16)
            first_in = len(bench.streams["a"].accept_cycles)
            first_row = len(bench.row_ends)
            bench.add(case)
            await wait_until(dut, lambda: bench.done, max_cycles=100 * case.elements,
                             what=f"{label} results")
            ends = bench.row_ends[first_row:]
            assert len(ends) == rows, (label, rows, len(ends))
            if rows > 1:
                cycles_per_row[label][n] = (ends[-1] - ends[0]) / (rows - 1)
            else:
                latency[label] = ends[0] - bench.streams["a"].accept_cycles[first_in]
        dut._log.info("%s: cycles per row %s, lone 64-element row %d cycles", label,
                      cycles_per_row[label], latency[label])
    write_summary(seed=seed, cycles_per_row=cycles_per_row, row_latency_cycles=latency,
                  errors=bench.checker.errors, beats=bench.checker.beats, lanes=bench.lanes)
    assert bench.checker.errors == 0 and bench.checker.beats > 0
