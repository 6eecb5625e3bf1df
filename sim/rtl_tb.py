"""cocotb half of :func:`flightllm.sim.rtl.run_kernel`: drives one kernel run.

The job file (a pickle named by ``FLIGHTLLM_KERNEL_JOB``) holds the configuration, the memory
image of every AXI master, the arguments, the timeout and the AXI timing options; the result
file (``<job>.out``) receives the memories after the run, the status and counter registers and
the cycle count. HBM and the program buffer are ``cocotbext.axi`` ``AxiRam`` models (sparse: an
address never written reads as zero); the host side is an ``AxiLiteMaster`` on
``s_axi_control``; the end of the run is the kernel's interrupt (GIE and IER are enabled).
"""

from __future__ import annotations

import os
import pickle
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.regmap import CTRL, GIE, IER, CtrlBit, axi_masters, register_map

CLOCK_NS = 4
#: Address space of each memory model (sparse: only what is touched is stored).
MEMORY_BYTES = 1 << 48


def _pauses(rng: random.Random, probability: float):
    while True:
        yield int(rng.random() < probability)


async def _write_register(axil, reg, value: int) -> None:
    for half in range(reg.bits // 32):
        await axil.write_dword(reg.offset + 4 * half, (value >> (32 * half)) & 0xFFFFFFFF)


async def _read_register(axil, reg) -> int:
    value = 0
    for half in range(reg.bits // 32):
        value |= await axil.read_dword(reg.offset + 4 * half) << (32 * half)
    return value


@cocotb.test()
async def run_kernel(dut):
    path = os.environ["FLIGHTLLM_KERNEL_JOB"]
    with open(path, "rb") as f:
        job = pickle.load(f)
    cfg = AcceleratorConfig.from_dict(job["config"])
    regmap = register_map(cfg)
    rng = random.Random(job["seed"])
    cocotb.start_soon(Clock(dut.ap_clk, CLOCK_NS, unit="ns").start())

    rams = {}
    for master in axi_masters(cfg):
        ram = AxiRam(AxiBus.from_prefix(dut, master.port), dut.ap_clk, dut.ap_rst_n,
                     reset_active_level=False, size=MEMORY_BYTES)
        image = job["buffers"].get(master.name, b"")
        if image:
            ram.write(0, bytes(image))
        stall = job["stall"]
        if stall:
            for channel in (ram.read_if.ar_channel, ram.read_if.r_channel,
                            ram.write_if.aw_channel, ram.write_if.w_channel,
                            ram.write_if.b_channel):
                channel.set_pause_generator(_pauses(random.Random(rng.random()), stall))
        rams[master.name] = ram
    axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk,
                         dut.ap_rst_n, reset_active_level=False)

    dut.ap_rst_n.value = 0
    await ClockCycles(dut.ap_clk, 5)
    dut.ap_rst_n.value = 1
    await ClockCycles(dut.ap_clk, 2)

    for name, value in job["args"].items():
        await _write_register(axil, regmap[name], int(value))
    await axil.write_dword(GIE, 1)
    await axil.write_dword(IER, 1)
    wall = time.perf_counter()
    await axil.write_dword(CTRL, 1 << CtrlBit.START)
    timeout = job["timeout_cycles"]
    done = RisingEdge(dut.interrupt)
    if not int(dut.interrupt.value):
        result = await First(done, ClockCycles(dut.ap_clk, timeout))
        timed_out = result is not done
    else:
        timed_out = False
    wall = time.perf_counter() - wall

    registers = {}
    ctrl = await axil.read_dword(CTRL)
    registers["ctrl"] = ctrl
    for reg in regmap:
        if reg.kind in ("status", "counter"):
            registers[reg.name] = await _read_register(axil, reg)
    buffers = {name: rams[name].read(0, len(job["buffers"].get(name, b"")))
               for name in rams if name in job["buffers"]}
    with open(path + ".out", "wb") as f:
        pickle.dump({"buffers": buffers, "registers": registers, "timed_out": timed_out,
                     "done": bool(ctrl >> CtrlBit.DONE & 1), "wall_s": wall}, f)
