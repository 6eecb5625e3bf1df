"""cocotb bench: the DSP48E2 primitive (AMD's UNISIM model) against the behavioural twin, in
lockstep (tests/hw/test_dsp48e2_unisim.py builds the designs).

Chain tests: the design holds two DSP chains on the same inputs; its ``weights``, ``acts`` and
``results`` ports are the primitive chain's, the ``twin_*`` outputs the twin's. After every
rising edge :class:`Lockstep` compares the P register of every slice and every chain output.
``slice_random``: the design holds one slice of each kind on shared inputs (``p_xil``,
``p_twin``).

Environment: ``FLIGHTLLM_TB_SEED``, ``FLIGHTLLM_TB_VECTORS`` (strips for ``reference_stream``,
cycles for ``raw_random`` and ``slice_random``), ``FLIGHTLLM_TB_FLIP_CYCLE`` (``flipped_bit`` only),
``FLIGHTLLM_TB_SUMMARY``.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from flightllm.contract.config import preset
from flightllm.hw.dsp48e2 import opmode
from tb_common import seeded_rng, start, wait_until, write_summary
from tb_dsp_chain import ChainBench, random_stimuli
from tb_model import chain_stimulus, scenario_matrix

MV_K = preset("tiny").mv_k
#: What the twin models (hw/dsp48e2.py): X/Y select M together or neither, Z 0..6, any W,
#: the four arithmetic ALUMODEs.
XY_SETTINGS = [(1, 1)] + [(x, y) for x in (0, 2, 3) for y in (0, 2, 3)]
OPMODES = [opmode(w=w, x=x, y=y, z=z) for x, y in XY_SETTINGS for z in range(7) for w in range(4)]
ALUMODES = (0b0000, 0b0001, 0b0010, 0b0011)


class Lockstep:
    """Counts the cycles and values on which the primitive build and the twin build differ.

    ``flip`` = (cycle, name) inverts bit 0 of the twin's value of ``name`` in that cycle: the
    comparator's own negative control.
    """

    def __init__(self, dut, pairs, *, flip: tuple[int, str] | None = None):
        self.dut = dut
        self.pairs = pairs
        self.flip = flip
        self.cycles = self.values = self.errors = self.nonzero = 0
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            self.cycles += 1
            for name, primitive, twin in self.pairs:
                got, want = int(primitive.value), int(twin.value)
                if self.flip == (self.cycles, name):
                    want ^= 1
                self.values += 1
                self.nonzero += got != 0 and name.startswith("P")
                if got != want:
                    self.errors += 1
                    if self.errors <= 5:
                        self.dut._log.error("cycle %d: %s primitive %#x twin %#x (rst=%d)",
                                            self.cycles, name, got, want,
                                            int(self.dut.rst.value))

    @staticmethod
    def chain_pairs(dut) -> list:
        """(name, primitive handle, twin handle): the chain outputs and each slice's P."""
        pairs = [(name, getattr(dut, primitive), getattr(dut, twin)) for name, primitive, twin in (
            ("weights.ready", "weights__ready", "twin_weights_ready"),
            ("acts.ready", "acts__ready", "twin_acts_ready"),
            ("results.valid", "results__valid", "twin_results_valid"),
            ("results.payload", "results__payload", "twin_results_payload"))]
        return pairs + [(f"P{i}", getattr(dut.xil, f"dsp{i}").dsp.P,
                         getattr(dut.twin, f"dsp{i}").p) for i in range(MV_K)]

    def summary(self) -> dict:
        return {"cycles": self.cycles, "values": self.values, "errors": self.errors,
                "signals": len(self.pairs), "nonzero_p": self.nonzero}


@cocotb.test()
async def reference_stream(dut):
    """The chain bench's random matrices (every sparsity code, weight width and lane use, random
    stalls) through both builds: lockstep compare, and every strip result checked against
    ``unpack_matrix @ x``."""
    seed, rng = seeded_rng(dut, "dsp unisim reference")
    nrng = np.random.default_rng(seed)
    await start(dut)
    lock = Lockstep(dut, Lockstep.chain_pairs(dut))
    bench = ChainBench(dut, rng, idle=0.25, stall=0.25)
    vectors = int(os.environ.get("FLIGHTLLM_TB_VECTORS", "1000"))
    strips = 0
    for _, stimulus, n_strips in random_stimuli(nrng, MV_K, vectors):
        bench.add(stimulus)
        strips += n_strips
    await wait_until(dut, lambda: bench.checker.count >= strips,
                     max_cycles=20 * bench.passes + 2000, what="all strip results")
    write_summary(seed=seed, strips=strips, passes=bench.passes, count=bench.checker.count,
                  checker_errors=bench.checker.errors, **lock.summary())
    assert bench.checker.errors == 0 and lock.errors == 0, \
        f"{lock.errors} lockstep differences, {bench.checker.errors} wrong strips (seed {seed})"


@cocotb.test()
async def raw_random(dut):
    """Random bits on every input in every cycle (any code, index and operand, random valid and
    ready) with random resets of 1-3 cycles while passes are in flight: lockstep compare only."""
    seed, rng = seeded_rng(dut, "dsp unisim raw")
    await start(dut)
    lock = Lockstep(dut, Lockstep.chain_pairs(dut))
    ports = [(dut.weights__payload, len(dut.weights__payload)),
             (dut.acts__payload, len(dut.acts__payload))]
    cycles = int(os.environ.get("FLIGHTLLM_TB_VECTORS", "20000"))
    resets = hold = 0
    for _ in range(cycles):
        await FallingEdge(dut.clk)
        for port, width in ports:
            port.value = rng.getrandbits(width)
        dut.weights__valid.value = int(rng.random() < 0.8)
        dut.acts__valid.value = int(rng.random() < 0.8)
        dut.results__ready.value = int(rng.random() < 0.7)
        if hold == 0 and rng.random() < 0.01:
            hold = rng.randint(1, 3)
            resets += 1
        dut.rst.value = int(hold > 0)
        hold = max(hold - 1, 0)
    await RisingEdge(dut.clk)
    write_summary(seed=seed, resets=resets, **lock.summary())
    assert lock.errors == 0, f"{lock.errors} lockstep differences (seed {seed})"


@cocotb.test()
async def flipped_bit(dut):
    """The lockstep comparator against one flipped bit of one slice in one cycle: must fail with
    exactly one difference."""
    seed, rng = seeded_rng(dut, "dsp unisim flip")
    await start(dut)
    cycle = int(os.environ.get("FLIGHTLLM_TB_FLIP_CYCLE", "50"))
    lock = Lockstep(dut, Lockstep.chain_pairs(dut), flip=(cycle, f"P{MV_K - 1}"))
    bench = ChainBench(dut, rng, idle=0.0, stall=0.0)
    matrix = scenario_matrix(np.random.default_rng(seed), "dense", 8, False, n_strips=2,
                             k_blocks=2)
    bench.add(chain_stimulus(matrix, np.random.default_rng(seed), MV_K))
    await wait_until(dut, lambda: bench.checker.count >= 2 and lock.cycles > cycle,
                     max_cycles=2000, what="both strips")
    write_summary(seed=seed, count=bench.checker.count, checker_errors=bench.checker.errors,
                  **lock.summary())
    assert lock.errors == 0, f"{lock.errors} lockstep differences (seed {seed})"


@cocotb.test()
async def slice_random(dut):
    """One slice of each kind, random operands and a random supported OPMODE, INMODE and ALUMODE
    every cycle, clock enable low 20% of the time, random resets: P compared every cycle."""
    seed, rng = seeded_rng(dut, "dsp unisim slice")
    await start(dut)
    lock = Lockstep(dut, [("P", dut.p_xil, dut.p_twin)])
    cycles = int(os.environ.get("FLIGHTLLM_TB_VECTORS", "20000"))
    seen = {"opmode": set(), "inmode": set(), "alumode": set()}
    resets = hold = 0
    for _ in range(cycles):
        await FallingEdge(dut.clk)
        for port in (dut.a, dut.b, dut.c, dut.d, dut.pcin):
            port.value = rng.getrandbits(len(port))
        for name, value in (("opmode", rng.choice(OPMODES)), ("inmode", rng.randrange(32)),
                            ("alumode", rng.choice(ALUMODES))):
            getattr(dut, name).value = value
            seen[name].add(value)
        dut.ce.value = int(rng.random() < 0.8)
        if hold == 0 and rng.random() < 0.01:
            hold, resets = rng.randint(1, 3), resets + 1
        dut.rst.value = int(hold > 0)
        hold = max(hold - 1, 0)
    await RisingEdge(dut.clk)
    write_summary(seed=seed, resets=resets, **{f"{k}s": len(v) for k, v in seen.items()},
                  **lock.summary())
    assert lock.errors == 0, f"{lock.errors} lockstep differences (seed {seed})"
