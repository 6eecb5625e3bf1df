# amaranth: UnusedElaboratable=no
"""On-chip buffer memories in Amaranth's simulator: address mapping, byte-enabled writes and
row reads, the RBUF read-modify-write port (saturating adds, back-to-back to one row), and the
ram_style attribute in the Verilog."""

import numpy as np
import pytest
from amaranth import Signal
from amaranth.back import verilog
from amaranth.sim import Simulator

from flightllm.contract.config import BufferSpec, preset
from flightllm.contract.numerics import sat32
from flightllm.hw.buffers import (
    BufferMemory, address_lane, address_row, split_address, suggested_ram_style,
)


def test_byte_address_splits_into_row_and_lane():
    spec = preset("tiny").rbuf                       # 64-byte rows
    assert split_address(spec, 0) == (0, 0)
    assert split_address(spec, 64 * 5 + 12) == (5, 12)
    assert split_address(spec, spec.bytes - 1) == (spec.depth - 1, 63)
    with pytest.raises(ValueError, match="outside"):
        split_address(spec, spec.bytes)
    assert suggested_ram_style(preset("u280").wbuf) == "ultra"
    assert suggested_ram_style(preset("tiny").abuf) == "block"      # 2,048 rows


def test_hardware_address_split_matches():
    spec = BufferSpec(16, 64)
    addr = Signal(10)
    row, lane = address_row(spec, addr), address_lane(spec, addr)
    assert row.shape().width == 6 and lane.shape().width == 4


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ram_style"):
        BufferMemory(BufferSpec(16, 8), ram_style="huge")
    with pytest.raises(ValueError, match="multiple of 4"):
        BufferMemory(BufferSpec(2, 8), acc_port=True)
    with pytest.raises(TypeError, match="BufferSpec"):
        BufferMemory((16, 8))


def test_ram_style_reaches_the_verilog():
    text = verilog.convert(BufferMemory(BufferSpec(16, 32), ram_style="ultra"), name="buf")
    assert '(* ram_style = "ultra" *)' in text
    text = verilog.convert(BufferMemory(BufferSpec(16, 32)), name="buf")
    assert "ram_style" not in text


def _row_bytes(value: int, width: int) -> bytes:
    return value.to_bytes(width, "little")


def test_writes_with_byte_enables_and_reads():
    """Random byte-enabled writes, each row read back through two read ports, against a
    bytearray model."""
    spec = BufferSpec(16, 32)
    dut = BufferMemory(spec, read_ports=2)
    rng = np.random.default_rng(5)
    model = bytearray(spec.bytes)
    ops = [(int(rng.integers(spec.depth)), rng.integers(0, 256, spec.width, dtype=np.uint8),
            int(rng.integers(0, 1 << spec.width))) for _ in range(200)]
    mismatches = []

    async def bench(ctx):
        for row, payload, be in ops:
            ctx.set(dut.write.addr, row)
            ctx.set(dut.write.data, int.from_bytes(payload.tobytes(), "little"))
            ctx.set(dut.write.be, be)
            await ctx.tick()
            for b in range(spec.width):
                if be >> b & 1:
                    model[row * spec.width + b] = int(payload[b])
        ctx.set(dut.write.be, 0)
        for row in range(spec.depth):
            for port, other in ((dut.read[0], dut.read[1]), (dut.read[1], dut.read[0])):
                ctx.set(port.addr, row)
                ctx.set(port.en, 1)
                ctx.set(other.en, 0)
                await ctx.tick()
                ctx.set(port.en, 0)
                got = _row_bytes(ctx.get(port.data), spec.width)
                want = bytes(model[row * spec.width:(row + 1) * spec.width])
                if got != want:
                    mismatches.append((row, got, want))
                await ctx.tick()              # en low: the port holds its data
                if _row_bytes(ctx.get(port.data), spec.width) != got:
                    mismatches.append((row, "not held"))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:3]


def test_accumulate_port_saturates_and_forwards():
    """INT32 read-modify-write requests every cycle, many on the same row back to back, some
    overwriting, masked lanes left alone; a model with int64 and sat32 agrees on every row."""
    spec = BufferSpec(16, 8)                         # four INT32 lanes per row
    lanes = spec.width // 4
    dut = BufferMemory(spec, read_ports=1, acc_port=True)
    rng = np.random.default_rng(9)
    model = np.zeros((spec.depth, lanes), dtype=np.int64)
    reqs = []
    for i in range(400):
        row = int(rng.integers(0, 2)) if i % 3 else int(rng.integers(spec.depth))
        big = rng.random() < 0.3
        values = rng.integers(-(1 << 31), 1 << 31, lanes) if big else \
            rng.integers(-1000, 1000, lanes)
        reqs.append((row, values, int(rng.integers(0, 1 << lanes)), int(rng.random() < 0.8)))
    saturations = 0
    for row, values, mask, add in reqs:
        for j in range(lanes):
            if mask >> j & 1:
                total = model[row, j] + values[j] if add else values[j]
                saturations += int(sat32(total) != total)
                model[row, j] = sat32(total)
    assert saturations > 0, "no request reaches a saturation limit"
    got = np.zeros_like(model)

    async def bench(ctx):
        for row, values, mask, add in reqs:
            ctx.set(dut.acc.en, 1)
            ctx.set(dut.acc.addr, row)
            ctx.set(dut.acc.data, [int(v) for v in values])
            ctx.set(dut.acc.mask, mask)
            ctx.set(dut.acc.add, add)
            await ctx.tick()
        ctx.set(dut.acc.en, 0)
        await ctx.tick().repeat(2)
        for row in range(spec.depth):
            ctx.set(dut.read[0].addr, row)
            ctx.set(dut.read[0].en, 1)
            await ctx.tick()
            raw = _row_bytes(ctx.get(dut.read[0].data), spec.width)
            got[row] = np.frombuffer(raw, dtype="<i4")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, model), (got, model)
