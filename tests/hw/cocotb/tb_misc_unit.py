"""cocotb testbench of hw/misc_unit.MiscUnit inside tb_units_common.UnitHarness.

As for the matrix unit (tb_matrix_unit.py): each random MISC instruction (tb_misc_model.py) is
staged in a golden ``CoreBuffers`` that mirrors the RTL buffers, the changed rows are written
through the host ports, the instruction runs while the host ports contend for the buffers at
random, ``exec_misc`` runs on the golden buffers, every row it changed is read back and
compared, and all four buffers are compared whole at the end. Environment:
``FLIGHTLLM_TB_SEED``, ``FLIGHTLLM_TB_INSTRUCTIONS``, ``FLIGHTLLM_TB_SUMMARY``.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np

from flightllm.contract.config import preset
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, Opcode
from flightllm.contract.regmap import ErrorCode
from flightllm.sim.execute import Counters, exec_misc
from flightllm.sim.machine import CoreBuffers, ProgramError
from tb_common import seeded_rng, start, write_summary
from tb_misc_model import LABELS, stage_misc
from tb_unit_host import UnitHost, issue, reset
from tb_units_common import BUFFER_OF, dirty_rows

NAMES = {b: name for name, b in BUFFER_OF.items()}


class MiscBench:
    def __init__(self, dut, rng, *, contention: float):
        self.dut, self.cfg = dut, preset("tiny")
        self.host = UnitHost(dut, self.cfg, rng, contention=contention)
        self.core = CoreBuffers(self.cfg)
        self.host.load_golden(self.core)
        self.cycles = []

    async def run(self, ins: Instruction, *, corrupt: bool = False) -> str | None:
        """Stage (already in ``core``), run on both sides, compare; returns the golden error."""
        dut, core, host = self.dut, self.core, self.host
        await host.stage(core)
        before = {b: core.mem[b].copy() for b in NAMES}
        error = None
        try:
            exec_misc(ins, core, Counters(), "tb")
        except (ProgramError, ValueError) as exc:
            error = str(exc)
        host.contend = True
        accepted, done = await issue(dut, "cmd", ins, "done", max_cycles=200000)
        host.contend = False
        self.cycles.append(done - accepted + 1)
        rows = {name: dirty_rows(before[b], core.mem[b], self.cfg.buffer(name).width)
                for b, name in NAMES.items()}
        if corrupt and not any(rows.values()):
            corrupt = False
        await host.compare(core, rows, corrupt=corrupt, what=repr(ins))
        return error


async def _random_run(dut, *, corrupt: bool) -> None:
    seed, rng = seeded_rng(dut, "misc_unit")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = MiscBench(dut, rng, contention=0.3)
    lanes = bench.cfg.sfu_lanes
    count = int(os.environ.get("FLIGHTLLM_TB_INSTRUCTIONS", "10" if corrupt else "128"))
    seen = set()
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        ins = stage_misc(nrng, bench.core, label, lanes, in_place=bool(nrng.random() < 0.3))
        error = await bench.run(ins, corrupt=corrupt and i == 3)
        assert error is None, f"the generator made a bad instruction: {error}"
        assert int(dut.error.value) == 0, f"error {int(dut.error.value)} after {ins!r}"
        seen.add(label)
    final = await bench.host.compare_all(bench.core)
    write_summary(seed=seed, instructions=count, checked_rows=bench.host.checked_rows,
                  final_rows_checked=final, mismatches=bench.host.mismatches,
                  variants=sorted(seen), mean_cycles=float(np.mean(bench.cycles)))
    if not corrupt:
        assert seen == set(LABELS), seen
    assert bench.host.mismatches == 0, f"{bench.host.mismatches} rows differ (seed {seed})"


@cocotb.test()
async def random_instructions(dut):
    """Every MISC function and flag (the SFU's fourteen variants with their corners, COPY and
    FILL over every buffer pair), random addresses and strides, some in place, 30 % random
    contention on every buffer; changed rows and final images compared with exec_misc's."""
    await _random_run(dut, corrupt=False)


@cocotb.test()
async def corrupted_reference(dut):
    """The same flow with one expected byte flipped: this test must fail."""
    await _random_run(dut, corrupt=True)


@cocotb.test()
async def bad_operands(dut):
    """Instructions the golden simulator rejects set ``error`` to their code and still
    finish, writing nothing; a reset clears the error."""
    seed, rng = seeded_rng(dut, "misc_unit bad operands")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = MiscBench(dut, rng, contention=0.3)
    cfg = bench.cfg
    good = stage_misc(nrng, bench.core, "ADD", cfg.sfu_lanes)
    bad = [
        ("a past its buffer", good.replace(a_addr=len(bench.core.mem[Buffer(good.a_buf)]) - 2),
         ErrorCode.ADDRESS),
        ("FILL past PBUF", Instruction(Opcode.MISC, func=int(MiscFunc.FILL),
                                       d_buf=int(Buffer.PBUF), d_addr=cfg.pbuf.bytes - 10,
                                       n=20, m=1, aux=5), ErrorCode.ADDRESS),
        ("SOFTMAX into WBUF", good.replace(func=int(MiscFunc.SOFTMAX), d_buf=int(Buffer.WBUF)),
         ErrorCode.DECODE),
        ("ROPE n % group", good.replace(func=int(MiscFunc.ROPE), group=6, n=16,
                                        a_buf=int(Buffer.RBUF), d_buf=int(Buffer.RBUF),
                                        a_addr=0, d_addr=0, a_stride=64, d_stride=64),
         ErrorCode.DECODE),
        ("RBUF misaligned", good.replace(a_buf=int(Buffer.RBUF), a_addr=2), ErrorCode.ADDRESS),
        ("norm epsilon < 0", good.replace(func=int(MiscFunc.RMSNORM), aux=-1),
         ErrorCode.DECODE),
    ]
    seen = 0
    for what, ins, expected in bad:
        error = await bench.run(ins)
        assert error is not None, f"{what}: the golden simulator accepted it"
        code = int(dut.error.value)
        dut._log.info("%s: golden '%s'; RTL error %d", what, error, code)
        seen += code == expected
        await reset(dut, bench.host)
    assert await bench.run(good) is None and int(dut.error.value) == 0
    final = await bench.host.compare_all(bench.core)
    write_summary(seed=seed, bad_instructions=len(bad), errors_seen=seen,
                  mismatches=bench.host.mismatches, final_rows_checked=final)
    assert seen == len(bad) and bench.host.mismatches == 0


@cocotb.test()
async def cycles(dut):
    """Cycles per instruction, from acceptance to done, without contention."""
    seed, rng = seeded_rng(dut, "misc_unit cycles")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = MiscBench(dut, rng, contention=0.0)
    lanes = bench.cfg.sfu_lanes
    measured = {}
    for label, m, n, group in (("ADD", 4, 64, None), ("SILU", 4, 64, None),
                               ("SOFTMAX", 4, 64, None), ("SOFTMAX_DEFER", 4, 64, None),
                               ("RMSNORM", 4, 64, None), ("LAYERNORM", 4, 64, None),
                               ("ROPE", 4, 64, 16)):
        ins = stage_misc(nrng, bench.core, label, lanes, shape=(m, n), group=group)
        assert await bench.run(ins) is None
        key = f"{label} m={ins.m} n={ins.n}"
        measured[key] = {"cycles": bench.cycles[-1], "elements": ins.m * ins.n}
    for label, a_buf, d_buf in (("COPY", Buffer.ABUF, Buffer.ABUF),
                                ("COPY", Buffer.RBUF, Buffer.RBUF),
                                ("FILL", None, Buffer.RBUF)):
        if label == "COPY":
            ins = Instruction(Opcode.MISC, func=int(MiscFunc.COPY), a_buf=int(a_buf), a_addr=0,
                              a_stride=256, d_buf=int(d_buf), d_addr=1 << 13, d_stride=256,
                              n=256 if a_buf == Buffer.ABUF else 64, m=4)
        else:
            ins = Instruction(Opcode.MISC, func=int(MiscFunc.FILL), d_buf=int(d_buf),
                              d_addr=1 << 13, d_stride=256, n=64, m=4, aux=-7)
        assert await bench.run(ins) is None
        key = f"{label} {NAMES[d_buf].upper()} m={ins.m} n={ins.n}"
        measured[key] = {"cycles": bench.cycles[-1], "elements": ins.m * ins.n}
    for key, v in measured.items():
        dut._log.info("%s: %d cycles", key, v["cycles"])
    write_summary(seed=seed, cycles=measured, mismatches=bench.host.mismatches)
    assert bench.host.mismatches == 0
