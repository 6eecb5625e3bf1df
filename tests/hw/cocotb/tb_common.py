"""cocotb half of the RTL testbenches: clock/reset, stream driver and monitor with random
stalls, and the summary file the pytest side reads.

Signals follow Amaranth's port naming for ``lib.stream`` members: ``<name>__valid``,
``<name>__ready``, ``<name>__payload``. Inputs change on the falling clock edge; a handshake is
decided in the ReadOnly phase after that, so it is the one the next rising edge performs.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from tb_model import tb_seed

CLOCK_NS = 10
SUMMARY_ENV = "FLIGHTLLM_TB_SUMMARY"


async def start(dut, *, reset_cycles: int = 3) -> None:
    """Start the clock and apply a synchronous reset."""
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, reset_cycles)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


def cycle_now() -> int:
    return cocotb.utils.get_sim_time(unit="ns") // CLOCK_NS


def seeded_rng(dut, name: str) -> tuple[int, random.Random]:
    seed = tb_seed()
    dut._log.info("%s: seed %d (set FLIGHTLLM_TB_SEED to reproduce or change it)", name, seed)
    return seed, random.Random(seed)


class StreamDriver:
    """Sends payloads (ints) on a valid/ready input stream of the DUT.

    Between payloads the driver idles with probability ``idle``; a presented payload stays
    until it is accepted (valid never drops early). ``accept_cycles`` records when each
    payload was taken.
    """

    def __init__(self, dut, name: str, rng: random.Random, *, idle: float = 0.0):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng = rng
        self.idle = idle
        self.queue: deque[int] = deque()
        self.accept_cycles: list[int] = []
        self.valid.value = 0
        cocotb.start_soon(self._run())

    def send(self, value: int) -> None:
        self.queue.append(value)

    @property
    def done(self) -> bool:
        return not self.queue

    async def _run(self) -> None:
        presenting = False
        while True:
            await FallingEdge(self.clk)
            if not presenting and self.queue and self.rng.random() >= self.idle:
                self.payload.value = self.queue[0]
                self.valid.value = 1
                presenting = True
            elif not presenting:
                self.valid.value = 0
            await ReadOnly()
            if presenting and self.ready.value:
                self.queue.popleft()
                self.accept_cycles.append(cycle_now())
                presenting = False


class StreamMonitor:
    """Receives an output stream of the DUT, holding ``ready`` low with probability ``stall``,
    and hands every accepted payload (an int) to ``callback``."""

    def __init__(self, dut, name: str, rng: random.Random, callback, *, stall: float = 0.0):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng = rng
        self.stall = stall
        self.callback = callback
        self.count = 0
        self.accept_cycles: list[int] = []
        self.ready.value = 0
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await FallingEdge(self.clk)
            ready = self.rng.random() >= self.stall
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                self.count += 1
                self.accept_cycles.append(cycle_now())
                self.callback(self.payload.value.to_unsigned())


async def wait_until(dut, predicate, *, max_cycles: int, what: str) -> int:
    """Wait for ``predicate()`` (checked every cycle); fail after ``max_cycles``."""
    for cycle in range(max_cycles):
        if predicate():
            return cycle
        await RisingEdge(dut.clk)
    raise AssertionError(f"timed out after {max_cycles} cycles waiting for {what}")


def write_summary(**fields) -> None:
    """Leave the run's counters where the pytest side can read them (if it asked)."""
    path = os.environ.get(SUMMARY_ENV)
    if path:
        with open(path, "w") as f:
            json.dump(fields, f, indent=2, sort_keys=True)
