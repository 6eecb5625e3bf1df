"""cocotb half of the execution-unit benches: the host ports that stage and read back buffer
rows, random contention on them while a unit works, and the instruction driver.

The golden state is a ``CoreBuffers`` holding the same bytes as the RTL buffers; ``rtl_view``
is what the RTL is known to hold. Staging writes the rows where the golden state differs from
``rtl_view``; after an instruction the rows it may have changed are read back and compared.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, ReadOnly

from flightllm.contract.isa import encode
from flightllm.hw.bufport import row_request_layout
from tb_common import cycle_now
from tb_model import pack_fields
from tb_units_common import BUFFER_OF, BUFFERS, dirty_rows, initial_contents


class HostPort:
    """The testbench's row client on one buffer's arbiter. Accesses are serialised by a lock
    so that staging, read-back and random contention can share the port."""

    def __init__(self, dut, name: str, spec):
        self.dut, self.spec = dut, spec
        p = f"host_{name}"
        self.req_valid = getattr(dut, f"{p}__req__valid")
        self.req_ready = getattr(dut, f"{p}__req__ready")
        self.req_payload = getattr(dut, f"{p}__req__payload")
        self.rsp_valid = getattr(dut, f"{p}__rsp__valid")
        self.rsp_ready = getattr(dut, f"{p}__rsp__ready")
        self.rsp_payload = getattr(dut, f"{p}__rsp__payload")
        self.layout = row_request_layout(spec)
        self.req_valid.value = 0
        self.rsp_ready.value = 1
        self.busy = False

    async def access(self, requests: list[dict]) -> list[int]:
        """Issue the requests one per accepted cycle; return the rows read, in order."""
        while self.busy:
            await FallingEdge(self.dut.clk)
        self.busy = True
        rows, outstanding, i = [], 0, 0
        while i < len(requests) or outstanding:
            await FallingEdge(self.dut.clk)
            if i < len(requests):
                self.req_payload.value = pack_fields(self.layout, requests[i])
                self.req_valid.value = 1
            else:
                self.req_valid.value = 0
            await ReadOnly()
            if self.rsp_valid.value:
                rows.append(self.rsp_payload.value.to_unsigned())
                outstanding -= 1
            if i < len(requests) and self.req_ready.value:
                outstanding += 0 if requests[i].get("write") else 1
                i += 1
        await FallingEdge(self.dut.clk)
        self.req_valid.value = 0
        self.busy = False
        return rows

    async def write_rows(self, image: np.ndarray, rows: list[int]) -> None:
        w = self.spec.width
        await self.access([{"addr": r, "write": 1, "be": (1 << w) - 1,
                            "data": int.from_bytes(image[r * w:(r + 1) * w].tobytes(), "little")}
                           for r in rows])

    async def read_rows(self, rows: list[int]) -> list[bytes]:
        raw = await self.access([{"addr": r, "write": 0} for r in rows])
        return [v.to_bytes(self.spec.width, "little") for v in raw]


class UnitHost:
    """Host ports on all four buffers, the golden image's mirror, and the contention task."""

    def __init__(self, dut, cfg, rng: random.Random, *, contention: float):
        self.dut, self.cfg, self.rng = dut, cfg, rng
        self.ports = {name: HostPort(dut, name, cfg.buffer(name)) for name in BUFFERS}
        self.rtl_view = {name: img.copy() for name, img in initial_contents(cfg).items()}
        self.contention = contention
        self.contend = False
        self.checked_rows = 0
        self.mismatches = 0
        self._shown = 0
        for name in BUFFERS:
            cocotb.start_soon(self._contend(name))

    def load_golden(self, core) -> None:
        for name in BUFFERS:
            core.mem[BUFFER_OF[name]][:] = self.rtl_view[name]

    async def stage(self, core) -> int:
        """Write the rows where the golden image differs from the RTL; return the count."""
        n = 0
        for name in BUFFERS:
            image = core.mem[BUFFER_OF[name]]
            rows = dirty_rows(self.rtl_view[name], image, self.cfg.buffer(name).width)
            if rows:
                await self.ports[name].write_rows(image, rows)
                self.rtl_view[name][:] = image
                n += len(rows)
        return n

    async def compare(self, core, rows_by_buffer: dict[str, list[int]], *,
                      corrupt: bool = False, what: str = "") -> None:
        """Read rows back and compare them with the golden image (``corrupt``: flip one
        expected byte first, the checker's self-test)."""
        for name, rows in rows_by_buffer.items():
            if not rows:
                continue
            width = self.cfg.buffer(name).width
            image = core.mem[BUFFER_OF[name]].copy()
            if corrupt:
                image[rows[0] * width] ^= 0x01
                corrupt = False
            got = await self.ports[name].read_rows(rows)
            for r, data in zip(rows, got):
                want = image[r * width:(r + 1) * width].tobytes()
                self.checked_rows += 1
                if data != want:
                    self.mismatches += 1
                    if self._shown < 5:
                        self._shown += 1
                        self.dut._log.error("%s: %s row %d differs\n  want %s\n  got  %s",
                                            what, name, r, want.hex(), data.hex())
            # The RTL holds what it holds; keep the mirror honest for later staging.
            for r, data in zip(rows, got):
                self.rtl_view[name][r * width:(r + 1) * width] = np.frombuffer(data, np.uint8)

    async def compare_all(self, core) -> int:
        rows = {name: list(range(self.cfg.buffer(name).depth)) for name in BUFFERS}
        before = self.checked_rows
        await self.compare(core, rows, what="final image")
        return self.checked_rows - before

    async def _contend(self, name: str) -> None:
        port = self.ports[name]
        depth = self.cfg.buffer(name).depth
        while True:
            await FallingEdge(self.dut.clk)
            if self.contend and not port.busy and self.rng.random() < self.contention:
                count = self.rng.randint(1, 4)
                await port.access([{"addr": self.rng.randrange(depth), "write": 0}
                                   for _ in range(count)])


async def reset(dut, host: UnitHost, cycles: int = 2) -> None:
    """Pulse the synchronous reset (clears a unit's sticky error; buffers keep their rows),
    once no host access is in flight (a reset would drop its response)."""
    host.contend = False
    while any(port.busy for port in host.ports.values()):
        await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 1
    for _ in range(cycles):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


def instruction_bits(ins) -> int:
    """The instruction's fixed words as one integer (the layouts' bit order)."""
    value = 0
    for i, word in enumerate(encode(ins.replace(bindings=()))):
        value |= word << (32 * i)
    return value


async def issue(dut, stream: str, ins, done: str, *, max_cycles: int) -> tuple[int, int]:
    """Present ``ins`` on ``stream``; wait for ``done``. Returns (accept cycle, done cycle)."""
    valid = getattr(dut, f"{stream}__valid")
    ready = getattr(dut, f"{stream}__ready")
    payload = getattr(dut, f"{stream}__payload")
    pulse = getattr(dut, done)
    await FallingEdge(dut.clk)
    payload.value = instruction_bits(ins)
    valid.value = 1
    accepted = None
    for _ in range(max_cycles):
        await ReadOnly()
        if accepted is not None and pulse.value:
            return accepted, cycle_now()
        if accepted is None and ready.value:
            accepted = cycle_now()
        await FallingEdge(dut.clk)
        if accepted is not None:
            valid.value = 0
    raise AssertionError(f"{ins!r}: no {done} within {max_cycles} cycles")
