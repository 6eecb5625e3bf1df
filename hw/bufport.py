"""Shared access to an on-chip buffer: the row-client port and a round-robin arbiter.

Inside a core several units use one buffer (LD writes ABUF while MISC reads it, MM reads WBUF
while LD refills the other half). Each unit gets a *row client* port
(:func:`row_client_signature`): a request stream of ``{addr, write, data, be}`` and a response
stream that carries one row per read request, in request order. :class:`BufferArbiter` serves
``n`` clients through the read port and the write port of a
:class:`~flightllm.hw.buffers.BufferMemory`: every cycle it accepts one read and one write,
each chosen round-robin among the clients asking for it. Block RAM and UltraRAM have two
ports, so a refill (LD writes) and a consumer (MV reads) run at the full row rate side by side
instead of taking turns.

Ordering is what makes the units composable: a request is *committed* when the arbiter accepts
it (``req.valid & req.ready``). A write is in the memory at the end of the accepting cycle, so
any read accepted later, from any client, sees it; a read accepted in the same cycle sees the
row as it was before (the read port is not transparent). A unit has one client port per
buffer, so two of its own requests are never accepted together, and two units hand data over
only through dependency tokens: a unit that signals an instruction done only after its last
write was accepted hands finished data to the next instruction, which starts a cycle later at
the earliest.

Responses may be back-pressured: the arbiter grants a client's read only when that client's
previous response is gone or being taken, so a slow consumer stalls itself, not the other
clients. A client's ``rsp.ready`` must not depend combinationally on its ``req.ready``.
"""

from __future__ import annotations

import functools
import operator

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig, BufferSpec
from flightllm.contract.isa import Buffer
from flightllm.hw.dsp_chain import mux_tree

#: The on-chip buffers by their port names, in the ISA's Buffer order.
BUFFERS = tuple(b.name.lower() for b in Buffer)

__all__ = ["BUFFERS", "row_request_layout", "row_client_signature", "buffer_clients",
           "read_ports", "write_ports", "port_names", "client_ports", "width_groups",
           "shared_spec", "route_requests", "connect_memory", "BufferArbiter"]


def row_request_layout(spec: BufferSpec) -> data.StructLayout:
    """One request: a row read (``write = 0``) or a byte-enabled row write."""
    return data.StructLayout({
        "addr": range(spec.depth), "write": 1, "data": 8 * spec.width, "be": spec.width,
    })


def row_client_signature(spec: BufferSpec) -> wiring.Signature:
    """A unit's access to a buffer, seen from the unit: ``req`` out, ``rsp`` (read rows) in."""
    return wiring.Signature({
        "req": Out(stream.Signature(row_request_layout(spec))),
        "rsp": In(stream.Signature(8 * spec.width)),
    })


def buffer_clients(cfg: AcceleratorConfig) -> dict[str, wiring.Member]:
    """Signature members of a unit with one row-client port per buffer, named as BUFFERS."""
    return {name: Out(row_client_signature(cfg.buffer(name))) for name in BUFFERS}


def read_ports(cfg: AcceleratorConfig, name: str) -> int:
    """Read ports of buffer ``name``'s memory: ``wbuf_read_ports`` for WBUF, one otherwise."""
    return cfg.wbuf_read_ports if name == "wbuf" else 1


def write_ports(cfg: AcceleratorConfig, name: str) -> int:
    """Write ports (banks of rows) of buffer ``name``'s memory: ``ld_lanes`` for WBUF, one
    otherwise."""
    return cfg.ld_lanes if name == "wbuf" else 1


#: Most row-client ports one unit has on a buffer (the LD's lanes, the matrix unit's WBUF
#: weight readers: ``ld_lanes`` and ``wbuf_read_ports`` are at most 4).
MAX_CLIENT_PORTS = 4


def port_names(name: str) -> tuple[str, ...]:
    """A unit's row-client ports on buffer ``name``: ``name``, then ``name_b``, ``name_c``,
    ``name_d`` for further streams of requests that can take further ports of the buffer in
    the same cycle (chains ``c`` of the matrix unit reading WBUF through port ``c mod
    wbuf_read_ports``, LD lane ``k`` writing a bank of it)."""
    return (name,) + tuple(f"{name}_{chr(ord('a') + k)}" for k in range(1, MAX_CLIENT_PORTS))


def client_ports(units, name: str) -> list:
    """The row-client ports the ``units`` have on buffer ``name``, in arbiter order: every
    unit's first port, then the second ports."""
    return [getattr(u, port) for port in port_names(name) for u in units if hasattr(u, port)]


def width_groups(cfg: AcceleratorConfig) -> list[tuple[Buffer, ...]]:
    """The buffers grouped by row width, in Buffer order. A unit that moves one buffer's rows
    at a time (an LD, an ST, a result) needs one row-wide shifter per group, not per buffer."""
    groups: dict[int, list[Buffer]] = {}
    for b in Buffer:
        groups.setdefault(cfg.buffer(b.name.lower()).width, []).append(b)
    return [tuple(g) for g in groups.values()]


def shared_spec(specs) -> BufferSpec:
    """The row geometry one reader or writer needs to serve buffers of one width: that width
    and the deepest one's depth."""
    specs = list(specs)
    if len({s.width for s in specs}) != 1:
        raise ValueError(f"buffers of different row widths cannot share a port: {specs}")
    return BufferSpec(specs[0].width, max(s.depth for s in specs))


def route_requests(m: Module, req, dest: Value, slots: list) -> None:
    """Fan a shared request stream ``req`` (for the deepest buffer of a group) out to the
    request streams ``slots``, the ``dest``-th taking it; ``req.ready`` is that slot's."""
    for k, slot in enumerate(slots):
        sel = dest == k
        m.d.comb += [slot.valid.eq(req.valid & sel), slot.payload.addr.eq(req.payload.addr),
                     slot.payload.write.eq(req.payload.write),
                     slot.payload.data.eq(req.payload.data), slot.payload.be.eq(req.payload.be)]
        with m.If(sel):
            m.d.comb += req.ready.eq(slot.ready)


def _round_robin(m: Module, eligible: Value, n: int, name: str) -> tuple[Signal, Signal]:
    """The first eligible client at or after the one after the last grant: (index, any)."""
    last = Signal(range(n), init=n - 1, name=f"{name}_last")
    grant = Signal(range(n), name=f"{name}_grant")
    granted = Signal(name=f"{name}_granted")
    # Offsets from far to near, so the nearest eligible client is assigned last and wins.
    for offset in reversed(range(n)):
        for i in range(n):
            with m.If((last + 1 + offset) % n == i if n > 1 else i == 0):
                with m.If(eligible[i]):
                    m.d.comb += [grant.eq(i), granted.eq(1)]
    with m.If(granted):
        m.d.sync += last.eq(grant)
    return grant, granted


class BufferArbiter(wiring.Component):
    """Round-robin access of ``clients`` row clients to one buffer memory: up to
    ``read_ports`` reads (from different clients) and one write accepted per cycle.

    Args:
        spec: the buffer's geometry.
        clients: number of client ports.
        read_ports: the memory's read ports (1, or 2 or 4 for a replicated WBUF: a client
            whose read is refused on one port may take the next in the same cycle).
        write_ports: the memory's banks of rows, one write port each (a banked WBUF:
            :class:`~flightllm.hw.buffers.BufferMemory`'s ``write_ports``). Each bank grants
            one write per cycle, round-robin among the clients writing a row of that bank.

    Ports:
        clients (array, :func:`row_client_signature` flipped): one per unit (a unit with two
            read streams, the matrix unit's WBUF weight readers, has two).
        read (array of ``read_ports``, :func:`~flightllm.hw.buffers.read_port_signature`): to
            the memory's read ports.
        write (:func:`~flightllm.hw.buffers.write_port_signature`; an array of
            ``write_ports`` when more than one): to the memory's write port(s).
        grant_valid: a request is accepted this cycle (for the performance counters).
    """

    def __init__(self, spec: BufferSpec, clients: int, *, read_ports: int = 1,
                 write_ports: int = 1):
        from .buffers import check_write_ports, read_port_signature, write_port_signature
        if not isinstance(clients, int) or clients < 1:
            raise ValueError(f"clients must be a positive integer, not {clients!r}")
        if read_ports not in (1, 2, 4):
            raise ValueError(f"read_ports must be 1, 2 or 4, not {read_ports!r}")
        check_write_ports(spec, write_ports)
        self.spec, self.n, self.read_ports = spec, clients, read_ports
        self.write_ports = write_ports
        write = Out(write_port_signature(spec))
        super().__init__({
            "clients": In(row_client_signature(spec)).array(clients),
            "read": Out(read_port_signature(spec)).array(read_ports),
            "write": write.array(write_ports) if write_ports > 1 else write,
            "grant_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, width = self.n, 8 * self.spec.width
        # At most one read per client is in flight or waiting: either ``pending`` (issued last
        # cycle, its row on the data port of the memory read port ``via`` now) or held in the
        # client's slot register. A new read is granted when that one is absent or being
        # taken this cycle, so a client that always takes its responses reads a row every
        # cycle and the memory's latency never needs back-pressure.
        slot_full = Signal(n)
        slot_data = [Signal(width, name=f"slot{i}") for i in range(n)]
        pending = Signal(n)
        # The read port of each pending read (a port number per client).
        via = [Signal(range(self.read_ports), name=f"via{i}") for i in range(n)]

        wants_read, wants_write = Signal(n), Signal(n)
        for i, c in enumerate(self.clients):
            held = slot_full[i] | pending[i]
            free = ~held | c.rsp.ready
            m.d.comb += [wants_read[i].eq(c.req.valid & ~c.req.p.write & free),
                         wants_write[i].eq(c.req.valid & c.req.p.write)]
        # Each read port grants round-robin among the clients the ports before it left.
        grants, left = [], wants_read
        for k in range(self.read_ports):
            grant, granted = _round_robin(m, left, n, f"read{k}")
            took = Signal(n, name=f"read{k}_took")
            for i in range(n):
                m.d.comb += took[i].eq(granted & (grant == i) & left[i])
            grants.append(took)
            rest = Signal(n, name=f"read{k}_rest")
            m.d.comb += rest.eq(left & ~took)
            left = rest
            addr = Signal(range(self.spec.depth), name=f"read{k}_addr")
            with m.Switch(grant):
                for i, c in enumerate(self.clients):
                    with m.Case(i):
                        m.d.comb += addr.eq(c.req.p.addr)
            m.d.comb += [self.read[k].en.eq(took.any()), self.read[k].addr.eq(addr)]
        # Each bank grants one of the writes to its rows.
        banks = self.write_ports
        wports = list(self.write) if banks > 1 else [self.write]
        written = Signal(n)
        for b, port in enumerate(wports):
            mine = Signal(n, name=f"write{b}_wants")
            for i, c in enumerate(self.clients):
                in_bank = c.req.p.addr % banks == b if banks > 1 else C(1)
                m.d.comb += mine[i].eq(wants_write[i] & in_bank)
            wgrant, wgranted = _round_robin(m, mine, n, f"write{b}" if banks > 1 else "write")
            wreq = Signal(row_request_layout(self.spec), name=f"write{b}_req")
            with m.Switch(wgrant):
                for i, c in enumerate(self.clients):
                    with m.Case(i):
                        m.d.comb += wreq.eq(c.req.p)
            took = Signal(n, name=f"write{b}_took")
            for i in range(n):
                m.d.comb += took[i].eq(wgranted & (wgrant == i) & mine[i])
            m.d.comb += [port.addr.eq(wreq.addr), port.data.eq(wreq.data),
                         port.be.eq(Mux(wgranted, wreq.be, 0))]
            written = written | took
        issued = Signal(n)
        m.d.comb += issued.eq(functools.reduce(operator.or_, grants))
        for i, c in enumerate(self.clients):
            m.d.comb += c.req.ready.eq(issued[i] | written[i])
        m.d.comb += self.grant_valid.eq(issued.any() | written.any())
        m.d.sync += pending.eq(issued)
        if self.read_ports > 1:
            for i in range(n):
                for k, took in enumerate(grants):   # a client takes one port at most
                    with m.If(took[i]):
                        m.d.sync += via[i].eq(k)

        for i, c in enumerate(self.clients):
            taken = c.rsp.valid & c.rsp.ready
            # A tree of 2:1 multiplexers (an Array index counts, and may map, as a shifter).
            row = self.read[0].data if self.read_ports == 1 else \
                mux_tree([port.data for port in self.read], via[i])
            m.d.comb += [c.rsp.valid.eq(slot_full[i] | pending[i]),
                         c.rsp.payload.eq(Mux(slot_full[i], slot_data[i], row))]
            with m.If(pending[i] & ~taken):
                m.d.sync += [slot_data[i].eq(row), slot_full[i].eq(1)]
            with m.Elif(taken):
                m.d.sync += slot_full[i].eq(0)
        return m


def connect_memory(m: Module, arb: BufferArbiter, mem) -> None:
    """Connect an arbiter's read and write ports to a
    :class:`~flightllm.hw.buffers.BufferMemory` built with the same ``read_ports`` and
    ``write_ports``."""
    for k in range(arb.read_ports):
        wiring.connect(m, arb.read[k], mem.read[k])
    if arb.write_ports > 1:
        for b in range(arb.write_ports):
            wiring.connect(m, arb.write[b], mem.write[b])
    else:
        wiring.connect(m, arb.write, mem.write)
