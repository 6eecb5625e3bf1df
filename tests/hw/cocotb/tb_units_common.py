"""Shared half of the execution-unit benches (matrix unit, misc unit): the Amaranth harness
around a unit, the buffers' initial contents, and the host-port mirror of the golden state.

The harness gives every buffer a :class:`~flightllm.hw.buffers.BufferMemory` and a
:class:`~flightllm.hw.bufport.BufferArbiter` with two clients: the unit, and a *host* port the
testbench drives (``host_abuf`` ...) to stage operands, read results back, and contend for the
buffer at random (back-pressure on the unit). The buffers start from :func:`initial_contents`,
a fixed-seed random fill that the golden side reproduces; staging then writes only the rows in
which the golden state differs from what the RTL already holds.

No cocotb here, so pytest imports it to build the design.
"""

from __future__ import annotations

import numpy as np
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Buffer
from flightllm.hw.bufport import (BufferArbiter, client_ports, connect_memory, read_ports,
                                  row_client_signature, write_ports)
from flightllm.hw.buffers import BufferMemory

BUFFERS = ("abuf", "wbuf", "rbuf", "pbuf")
INIT_SEED = 20261121


def initial_contents(cfg: AcceleratorConfig) -> dict[str, np.ndarray]:
    """Every buffer's bytes at reset (random, the same on both sides)."""
    rng = np.random.default_rng(INIT_SEED)
    return {name: rng.integers(0, 256, cfg.buffer(name).bytes, dtype=np.uint8)
            for name in BUFFERS}


def _rows_as_ints(raw: np.ndarray, width: int) -> list[int]:
    return [int.from_bytes(raw[i:i + width].tobytes(), "little")
            for i in range(0, len(raw), width)]


class UnitHarness(wiring.Component):
    """A unit (``make_unit(cfg)``) with the four buffers, arbiters and host ports.

    ``init`` (buffer name -> bytes) replaces :func:`initial_contents` (the quick
    Amaranth-simulator tests stage an instruction's operands this way).

    ``streams`` maps the unit's instruction stream names to their payload layouts; ``pulses``
    lists its one-bit outputs (done pulses, busy). Every one of those appears on the harness
    under the same name, and ``error``.
    """

    def __init__(self, cfg: AcceleratorConfig, make_unit, streams: dict, pulses: tuple, *,
                 init: dict[str, np.ndarray] | None = None):
        self.cfg, self._make_unit = cfg, make_unit
        self._init = init
        self._streams, self._pulses = streams, pulses
        members = {name: In(stream.Signature(layout)) for name, layout in streams.items()}
        members.update({name: Out(1) for name in pulses})
        members["error"] = Out(3)
        for name in BUFFERS:
            members[f"host_{name}"] = In(row_client_signature(cfg.buffer(name)))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self._make_unit(self.cfg)
        init = self._init if self._init is not None else initial_contents(self.cfg)
        for name in BUFFERS:
            spec = self.cfg.buffer(name)
            ports, banks = read_ports(self.cfg, name), write_ports(self.cfg, name)
            mem = BufferMemory(spec, read_ports=ports, write_ports=banks,
                               init=_rows_as_ints(init[name], spec.width))
            # The unit's ports (a second one, ``<name>_b``, where it has two read streams),
            # then the host's.
            users = client_ports([unit], name)
            arb = BufferArbiter(spec, len(users) + 1, read_ports=ports, write_ports=banks)
            m.submodules[f"{name}_mem"] = mem
            m.submodules[f"{name}_arb"] = arb
            connect_memory(m, arb, mem)
            for i, port in enumerate(users):
                wiring.connect(m, port, arb.clients[i])
            wiring.connect(m, wiring.flipped(getattr(self, f"host_{name}")),
                           arb.clients[len(users)])
        for name in self._streams:
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(unit, name))
        for name in (*self._pulses, "error"):
            m.d.comb += getattr(self, name).eq(getattr(unit, name))
        return m


def dirty_rows(before: np.ndarray, after: np.ndarray, width: int) -> list[int]:
    """Rows in which two byte images of a buffer differ."""
    diff = (before != after).reshape(-1, width).any(axis=1)
    return [int(i) for i in np.flatnonzero(diff)]


BUFFER_OF = {"abuf": Buffer.ABUF, "wbuf": Buffer.WBUF, "rbuf": Buffer.RBUF, "pbuf": Buffer.PBUF}


async def pysim_issue(ctx, port, bits: int, done, *, max_cycles: int) -> int:
    """Amaranth simulator: present one instruction on ``port``; return cycles to ``done``."""
    ctx.set(port.payload.as_value(), bits)
    ctx.set(port.valid, 1)
    await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)
    for cycle in range(max_cycles):
        if ctx.get(done):
            return cycle + 1
        await ctx.tick()
    raise AssertionError(f"no done within {max_cycles} cycles")


async def pysim_read_rows(ctx, host, rows: list[int]) -> list[int]:
    """Amaranth simulator: read rows through a host port, one request at a time."""
    out = []
    ctx.set(host.rsp.ready, 1)
    for r in rows:
        ctx.set(host.req.payload.addr, r)
        ctx.set(host.req.payload.write, 0)
        ctx.set(host.req.valid, 1)
        await ctx.tick().until(host.req.ready)
        ctx.set(host.req.valid, 0)
        while not ctx.get(host.rsp.valid):
            await ctx.tick()
        out.append(ctx.get(host.rsp.payload))
        await ctx.tick()
    return out
