"""The buffer arbiter: every client's reads return the row as committed at the moment the read
was accepted (a write accepted in the same cycle is not yet in it), across random interleavings
and back-pressure; and a read and a write go through in the same cycle (Amaranth's Python
simulator)."""

import random

import pytest
from amaranth import Elaboratable, Module
from amaranth.sim import Simulator

from flightllm.contract.config import BufferSpec
from flightllm.hw.bufport import BufferArbiter, connect_memory
from flightllm.hw.buffers import BufferMemory

SPEC = BufferSpec(4, 8)


class _Harness(Elaboratable):
    def __init__(self, clients, read_ports=1, write_ports=1):
        self.arb = BufferArbiter(SPEC, clients, read_ports=read_ports, write_ports=write_ports)
        self.mem = BufferMemory(SPEC, read_ports=read_ports, write_ports=write_ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.arb, m.submodules.mem = self.arb, self.mem
        connect_memory(m, self.arb, self.mem)
        return m


def _run(clients: int, seed: int, requests: int = 60, corrupt: bool = False,
         read_ports: int = 1, write_ports: int = 1):
    rng = random.Random(seed)
    dut = _Harness(clients, read_ports, write_ports)
    plans = [[(rng.randrange(SPEC.depth), rng.random() < 0.4, rng.getrandbits(32),
               rng.getrandbits(4)) for _ in range(requests)] for _ in range(clients)]
    model = {r: 0 for r in range(SPEC.depth)}
    expected = [[] for _ in range(clients)]
    got = [[] for _ in range(clients)]
    index = [0] * clients
    dual, two_reads, two_writes = [0], [0], [0]
    most_reads, most_writes = [0], [0]

    async def bench(ctx):
        cycles = 0
        while any(index[i] < requests or len(got[i]) < len(expected[i])
                  for i in range(clients)) and cycles < 20 * requests * clients:
            for i, c in enumerate(dut.arb.clients):
                if index[i] < requests and rng.random() < 0.8:
                    addr, write, value, be = plans[i][index[i]]
                    ctx.set(c.req.valid, 1)
                    ctx.set(c.req.payload, {"addr": addr, "write": write, "data": value, "be": be})
                else:
                    ctx.set(c.req.valid, 0)
                ctx.set(c.rsp.ready, rng.random() < 0.6)
            # Sample handshakes before the edge: at most one read and one write are granted,
            # and the read sees the row before this cycle's write.
            accepted, taken = [], []
            for i, c in enumerate(dut.arb.clients):
                if ctx.get(c.req.valid) and ctx.get(c.req.ready):
                    accepted.append(i)
                if ctx.get(c.rsp.valid) and ctx.get(c.rsp.ready):
                    taken.append((i, ctx.get(c.rsp.payload)))
            writes = [i for i in accepted if plans[i][index[i]][1]]
            banks = [plans[i][index[i]][0] % write_ports for i in writes]
            assert len(set(banks)) == len(banks), "two writes to one bank in a cycle"
            assert len(accepted) - len(writes) <= read_ports
            for i in sorted(accepted, key=lambda i: plans[i][index[i]][1]):
                addr, write, value, be = plans[i][index[i]]
                if write:
                    row = model[addr]
                    for b in range(4):
                        if be >> b & 1:
                            row = (row & ~(0xFF << 8 * b)) | (value & (0xFF << 8 * b))
                    model[addr] = row
                else:
                    expected[i].append(model[addr] ^ (1 if corrupt else 0))
                index[i] += 1
            dual[0] += len(writes) >= 1 and len(accepted) > len(writes)
            two_reads[0] += len(accepted) - len(writes) == 2
            two_writes[0] += len(writes) == 2
            most_reads[0] = max(most_reads[0], len(accepted) - len(writes))
            most_writes[0] = max(most_writes[0], len(writes))
            for i, value in taken:
                got[i].append(value)
            await ctx.tick()
            cycles += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return (expected, got, index, dual[0], two_reads[0], two_writes[0],
            (most_reads[0], most_writes[0]))


@pytest.mark.parametrize("clients,seed,ports,banks", [
    (1, 1, 1, 1), (2, 2, 1, 1), (3, 3, 1, 1), (4, 4, 1, 1), (2, 6, 2, 1), (3, 7, 2, 1),
    (5, 8, 2, 1), (3, 9, 1, 2), (4, 10, 2, 2), (6, 11, 4, 1), (6, 12, 4, 4), (5, 13, 1, 4)])
def test_reads_see_committed_writes(clients, seed, ports, banks):
    """With two read ports, two clients' reads in one cycle each see the committed row; with
    two banks, two writes to rows of different banks go through in one cycle."""
    expected, got, index, dual, two_reads, two_writes, most = _run(
        clients, seed, read_ports=ports, write_ports=banks)
    assert index == [60] * clients
    assert got == expected
    assert sum(map(len, got)) > 0
    if clients > 1:
        assert dual > 0  # the same-cycle read and write case was exercised
    assert (two_reads > 0) == (ports >= 2)
    assert (two_writes > 0) == (banks >= 2)
    # With four ports (banks), more than two were used in one cycle (all four at once: the
    # row-rate tests below).
    assert most[0] > 2 or ports < 4, most
    assert most[1] > 2 or banks < 4, most


def test_a_wrong_model_is_caught():
    expected, got, *_ = _run(2, 5, corrupt=True)
    assert got != expected
    expected, got, *_ = _run(3, 5, corrupt=True, read_ports=2)
    assert got != expected
    expected, got, *_ = _run(3, 5, corrupt=True, write_ports=2)
    assert got != expected
    expected, got, *_ = _run(5, 5, corrupt=True, read_ports=4, write_ports=4)
    assert got != expected


def test_a_reader_and_a_writer_both_run_at_the_row_rate():
    """One client reads a row every cycle while another writes one every cycle: both finish
    in about as many cycles as they have requests (a one-request-per-cycle arbiter needs
    twice as many)."""
    dut = _Harness(2)
    rows = 40
    done = {"read": None, "write": None}

    async def bench(ctx):
        reader, writer = dut.arb.clients
        reads = writes = 0
        for cycle in range(4 * rows):
            ctx.set(reader.req.valid, reads < rows)
            ctx.set(reader.req.payload, {"addr": reads % SPEC.depth, "write": 0, "data": 0, "be": 0})
            ctx.set(reader.rsp.ready, 1)
            ctx.set(writer.req.valid, writes < rows)
            ctx.set(writer.req.payload, {"addr": writes % SPEC.depth, "write": 1,
                                         "data": writes, "be": 0xF})
            reads += ctx.get(reader.req.valid) and ctx.get(reader.req.ready)
            writes += ctx.get(writer.req.valid) and ctx.get(writer.req.ready)
            if reads == rows and done["read"] is None:
                done["read"] = cycle + 1
            if writes == rows and done["write"] is None:
                done["write"] = cycle + 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert done["read"] is not None and done["write"] is not None
    assert max(done.values()) <= rows + 2, done


def _cycles_to_serve(dut, rows: int, request) -> int:
    """Cycles until every client of ``dut`` has had ``rows`` requests accepted, each asking
    every cycle; ``request(i, n)`` is client i's n-th request (a payload dict)."""
    clients = len(dut.arb.clients)
    done = [None] * clients

    async def bench(ctx):
        counts = [0] * clients
        for cycle in range(4 * rows):
            for i, c in enumerate(dut.arb.clients):
                ctx.set(c.req.valid, counts[i] < rows)
                ctx.set(c.req.payload, request(i, counts[i]))
                ctx.set(c.rsp.ready, 1)
            for i, c in enumerate(dut.arb.clients):
                counts[i] += ctx.get(c.req.valid) and ctx.get(c.req.ready)
                if counts[i] == rows and done[i] is None:
                    done[i] = cycle + 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert None not in done
    return max(done)


@pytest.mark.parametrize("ports", [2, 4])
def test_read_ports_serve_as_many_readers_at_the_row_rate(ports):
    """``ports`` clients each read a row every cycle while one more writes one every cycle:
    with that many read ports (a replicated WBUF, as wbuf_read_ports builds) all of them
    finish in about as many cycles as they have requests; with half as many, the readers
    take turns and need twice as many."""
    rows = 40

    def request(i, n):
        write = i == ports
        return {"addr": (n + 3 * i) % SPEC.depth, "write": write, "data": n,
                "be": 0xF if write else 0}

    assert _cycles_to_serve(_Harness(ports + 1, ports), rows, request) <= rows + 2
    assert _cycles_to_serve(_Harness(ports + 1, ports // 2), rows, request) >= 2 * rows - 2


@pytest.mark.parametrize("banks", [2, 4])
def test_banks_take_as_many_writers_at_the_row_rate(banks):
    """``banks`` clients each write a row every cycle, client i the rows of bank i (as the
    LD's lanes do): with that many banks they finish in about as many cycles as they have
    rows; with half as many write ports they take turns and need twice as many."""
    rows = 40

    def request(i, n):
        return {"addr": (banks * n + i) % SPEC.depth, "write": 1, "data": n, "be": 0xF}

    assert _cycles_to_serve(_Harness(banks, write_ports=banks), rows, request) <= rows + 2
    assert _cycles_to_serve(_Harness(banks, write_ports=banks // 2), rows,
                            request) >= 2 * rows - 2
