"""Amaranth-simulator harness for one :class:`~flightllm.hw.core.Core`: Python AXI slaves with
random stalls for the instruction port and every HBM channel (several outstanding bursts,
in-order responses, byte strobes), a start pulse, and the core's done/error at the end."""

from __future__ import annotations

import random
from collections import deque

from amaranth.sim import Simulator

from flightllm.hw.core import Core


class AxiMemory:
    """A byte array served to one AXI4 port (read and/or write half)."""

    def __init__(self, image: bytes, beat_bytes: int, rng: random.Random, stall: float):
        self.mem = bytearray(image) + bytearray(1 << 16)
        self.size = len(image)
        self.B, self.rng, self.stall = beat_bytes, rng, stall

    def _go(self) -> bool:
        return self.rng.random() >= self.stall

    async def serve_read(self, ctx, port):
        reads, beat = deque(), None
        while True:
            ar_ready = self._go()
            ctx.set(port.arready, ar_ready)
            if beat is None and reads and self._go():
                addr, left = reads[0]
                beat = (addr, left)
                ctx.set(port.rdata, int.from_bytes(self.mem[addr:addr + self.B], "little"))
                ctx.set(port.rlast, left == 1)
                ctx.set(port.rvalid, 1)
            # Sample at the clock edge itself: other testbenches may change the DUT's inputs
            # (and so its outputs) later in this same time step.
            _, _, arvalid, araddr, arlen, rready = await ctx.tick().sample(
                port.arvalid, port.araddr, port.arlen, port.rready)
            if ar_ready and arvalid:
                reads.append((araddr, arlen + 1))
            if beat is not None and rready:
                addr, left = reads.popleft()
                if left > 1:
                    reads.appendleft((addr + self.B, left - 1))
                beat = None
                ctx.set(port.rvalid, 0)

    async def serve_write(self, ctx, port):
        bursts, responses, b_on = deque(), 0, False
        while True:
            aw_ready, w_ready = self._go(), self._go() and bool(bursts)
            ctx.set(port.awready, aw_ready)
            ctx.set(port.wready, w_ready)
            if not b_on and responses and self._go():
                ctx.set(port.bvalid, 1)
                b_on = True
            _, _, awvalid, awaddr, wvalid, wdata, wstrb, wlast, bready = await ctx.tick().sample(
                port.awvalid, port.awaddr, port.wvalid, port.wdata, port.wstrb, port.wlast,
                port.bready)
            if w_ready and wvalid:
                addr = bursts[0]
                for i in range(self.B):
                    if wstrb >> i & 1:
                        self.mem[addr + i] = (wdata >> (8 * i)) & 0xFF
                bursts[0] = addr + self.B
                if wlast:
                    bursts.popleft()
                    responses += 1
            if aw_ready and awvalid:
                bursts.append(awaddr)
            if b_on and bready:
                responses -= 1
                b_on = False
                ctx.set(port.bvalid, 0)


def run_core(cfg, words: list[int], images: list[bytes], *, lengths: dict, seed: int = 0,
             stall: float = 0.0, max_cycles: int = 100000, watchdog_cycles: int = 2000,
             base_word: int = 1, vcd: str | None = None):
    """Run one program on a core (without MM/MV/MISC units); return (images, state)."""
    rng = random.Random(seed)
    dut = Core(cfg, watchdog_cycles=watchdog_cycles, execution_units=False)
    B = cfg.axi_data_bits // 8
    program = bytes(4 * base_word) + b"".join(w.to_bytes(4, "little") for w in words)
    fetch_mem = AxiMemory(program, dut.fetch.rdata.shape().width // 8, rng, stall)
    hbm = [AxiMemory(img, B, rng, stall) for img in images]
    state = {}

    async def bench(ctx):
        ctx.set(dut.seq, lengths["seq"])
        ctx.set(dut.kv, lengths["kv"])
        ctx.set(dut.pos, lengths["pos"])
        ctx.set(dut.prog_offset, base_word)
        ctx.set(dut.prog_words, len(words))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(max_cycles):
            await ctx.tick()
            if ctx.get(dut.done):
                break
        state.update(done=ctx.get(dut.done), error=ctx.get(dut.error),
                     error_word=ctx.get(dut.error_word), cycles=cycle)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    def serve(mem, method, port):
        async def run(ctx):
            await getattr(mem, method)(ctx, port)
        return run

    async def hub(ctx):
        # A one-core SYS hub: every arrival is let through at once.
        while True:
            ctx.set(dut.sync.go, ctx.get(dut.sync.arrive))
            await ctx.tick()

    sim.add_testbench(hub, background=True)
    sim.add_testbench(serve(fetch_mem, "serve_read", dut.fetch), background=True)
    for mem, port in zip(hbm, dut.hbm):
        sim.add_testbench(serve(mem, "serve_read", port), background=True)
        sim.add_testbench(serve(mem, "serve_write", port), background=True)
    sim.add_testbench(bench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return [bytes(m.mem[:m.size]) for m in hbm], state
