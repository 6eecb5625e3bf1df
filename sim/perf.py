"""The cycle-level performance model: a program's instruction streams in time, without data.

It reads the same binary programs as the golden simulator and the RTL and follows the same
rules: per core, one in-order queue per instruction type; an instruction starts once its unit
is free, it has been decoded into its queue's FIFO (in program order, stopping at a full FIFO
as hw/core.py's fetch does) and every token it waits for has been released (queue A's k-th
release to B is B's k-th wait on A); SYS instructions start together on all cores. Units per
core: the LD and ST engines (each transfer occupies its HBM channels, sim/hbm_model.py), the
matrix engine (shared by MM and MV), the SFU (MISC) and SYS. Instruction costs come from
sim/perf_units.py.

Matrix cost depends on N of N:16, which lives in the weight bytes, not in the instruction. The
model tags WBUF regions with the N of the tensor their LD read (:class:`SparsityMap`, built
from a build's placements and recipe); a sparse matrix with no tag takes ``default_keep``, or
the run stops with an error naming the instruction.

    result = PerfModel(config).run(program, seq=1, kv=512)
    result.cycles, result.seconds, result.busy, result.hbm_bytes
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass, field

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Buffer, LengthReg, Opcode, SysOp, apply_bindings, encode
from flightllm.sim.golden import DeadlockError, load_streams
from flightllm.sim.hbm_model import ChannelTimeline, HBMParams, transfer_runs
from flightllm.sim.machine import ProgramError
from flightllm.sim.perf_units import (
    UnitTiming, buffer_port_cycles, datapath_cycles, matrix_cost, misc_cycles, sys_cycles,
)

__all__ = ["PerfModel", "PerfResult", "PerfError", "SparsityMap", "UNITS"]

#: Units of a core, in trace order; MM and MV share the matrix engine ("MPE").
UNITS = ("LD", "ST", "MPE", "SFU", "SYS")
_UNIT = {Opcode.LD: "LD", Opcode.ST: "ST", Opcode.MM: "MPE", Opcode.MV: "MPE",
         Opcode.MISC: "SFU", Opcode.SYS: "SYS"}


def _port_index(buf: Buffer, *, write: bool) -> int:
    """Index of a buffer's read or write port in the per-core port tables."""
    return 2 * int(buf) + int(write)


class PerfError(ProgramError):
    """The model cannot time a program; the message names the instruction."""


class SparsityMap:
    """N of N:16 for weight bytes by where they live in HBM: (core, local channel, offset).

    Args:
        regions: ``(core, channel, offset, nbytes, keep)`` tuples.
    """

    def __init__(self, regions=()):
        self._by_chan: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for core, chan, offset, nbytes, keep in regions:
            self._by_chan.setdefault((core, chan), []).append((offset, offset + nbytes, keep))
        for spans in self._by_chan.values():
            spans.sort()

    def keep_at(self, core: int, chan: int, addr: int) -> int | None:
        spans = self._by_chan.get((core, chan), ())
        i = bisect.bisect_right(spans, (addr, float("inf"), 0)) - 1
        if i >= 0 and spans[i][0] <= addr < spans[i][1]:
            return spans[i][2]
        return None

    @classmethod
    def from_placements(cls, tensors, sparsity: dict[str, int]) -> SparsityMap:
        """From placement records (``name``, ``channels``, ``offset``, ``bytes_per_channel``,
        ``core``, as in a manifest) and a recipe mapping projection kinds to N; the weight
        chunks are named ``layers.<i>.<kind>.chunk<j>`` or ``lm_head.chunk<j>``."""
        regions = []
        for t in tensors:
            parts = t["name"].split(".")
            if not parts[-1].startswith("chunk"):
                continue
            kind = parts[-2]
            keep = int(sparsity.get(kind, 16))
            for chan in t["channels"]:
                regions.append((t.get("core", 0), chan, t["offset"], t["bytes_per_channel"],
                                keep))
        return cls(regions)


@dataclass
class PerfResult:
    """Timing of one run.

    Attributes:
        cycles: Kernel cycles from start to the last instruction's completion.
        clock_mhz: The kernel clock the cycles are at.
        busy: Per core, busy cycles of each unit (UNITS).
        hbm_read_bytes / hbm_write_bytes: By physical channel.
        channel_busy: Busy cycles by physical channel.
        macs_dense / macs_stored: Dense-equivalent and performed multiply-accumulates.
        weight_stream_bytes: WBUF bytes the matrix engines consumed.
        chain_work: Busy cycles of all DSP chains together (see ``MatrixCost.chain_work``).
        ideal_mpe_cycles: Cycles the matrix work would take at the configuration's peak MACs
            per cycle (MM: ``mv_rows*mv_k*macs_per_dsp``, MV: ``mv_rows*mv_k`` per core),
            summed over cores.
        instructions: Executed instructions by opcode name.
        trace: (core, unit, start, end, label) per instruction when asked for.
    """

    cycles: int
    clock_mhz: float
    cores: int
    busy: list[dict[str, int]]
    hbm_read_bytes: dict[int, int]
    hbm_write_bytes: dict[int, int]
    channel_busy: dict[int, int]
    macs_dense: int = 0
    macs_stored: int = 0
    weight_stream_bytes: int = 0
    chain_work: int = 0
    ideal_mpe_cycles: float = 0.0
    instructions: Counter = field(default_factory=Counter)
    trace: list | None = None

    @property
    def seconds(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def hbm_bytes(self) -> int:
        return sum(self.hbm_read_bytes.values()) + sum(self.hbm_write_bytes.values())

    def hbm_utilization(self, hbm: HBMParams) -> float:
        """Bytes moved / (time x the board's data-sheet bandwidth)."""
        return self.hbm_bytes / (self.seconds * hbm.board_peak_gbps * 1e9) if self.cycles else 0.0

    @property
    def mpe_utilization(self) -> float:
        """Matrix work at peak rate / elapsed time, averaged over cores."""
        return self.ideal_mpe_cycles / (self.cycles * self.cores) if self.cycles else 0.0

    def binding_unit(self) -> tuple[str, float]:
        """The unit with the highest busy fraction on its busiest core, and that fraction."""
        best = max(((u, b[u]) for b in self.busy for u in UNITS if u != "SYS"),
                   key=lambda x: x[1])
        return best[0], best[1] / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict:
        unit, frac = self.binding_unit()
        return {"cycles": self.cycles, "seconds": self.seconds, "busy": self.busy,
                "hbm_read_bytes": self.hbm_read_bytes, "hbm_write_bytes": self.hbm_write_bytes,
                "macs_dense": self.macs_dense, "macs_stored": self.macs_stored,
                "mpe_utilization": self.mpe_utilization, "binding_unit": unit,
                "binding_busy_fraction": frac, "instructions": dict(self.instructions)}


class PerfModel:
    """Cycle-level timing of programs on one accelerator configuration.

    Args:
        config: The accelerator.
        hbm: HBM facts of the board (U280's if omitted).
        timing: Unit timing constants (the calibrated defaults if omitted).
        sparsity: Where sparse weights live and their N (see :class:`SparsityMap`).
        default_keep: N for sparse matrices whose WBUF bytes carry no tag.
        channel_map: ``(core, local channel) -> physical pseudo-channel`` when the masters
            are not wired one to one (``core * hbm_channels_per_core + local``); a channel in
            another mini-switch group than its master's pays the cross-channel penalty.
    """

    def __init__(self, config: AcceleratorConfig, hbm: HBMParams | None = None,
                 timing: UnitTiming | None = None, sparsity: SparsityMap | None = None,
                 default_keep: int | None = None, channel_map=None):
        self.config = config
        self.hbm = hbm or HBMParams.for_board("u280")
        self.timing = timing or UnitTiming()
        self.sparsity = sparsity or SparsityMap()
        self.default_keep = default_keep
        self.channel_map = channel_map
        # Decoded programs and their cached costs, by identity (a program is kept alive
        # by its entry, so an id is never reused while cached).
        self._programs: dict[int, tuple] = {}

    def run(self, program, *, seq: int = 1, kv: int = 1, pos: int | None = None,
            trace: bool = False) -> PerfResult:
        """Time one run of ``program`` (file bytes, word lists or instruction lists) at the
        given length registers."""
        cached = self._programs.get(id(program))
        if cached is None or cached[0] is not program:
            cached = self._programs[id(program)] = (program, _ops(load_streams(program)), {})
        _, streams, costs = cached
        if len(streams) != self.config.cores:
            raise PerfError(f"program has {len(streams)} instruction streams; the "
                            f"configuration has {self.config.cores} cores")
        pos = kv - seq if pos is None else pos
        regs = {LengthReg.SEQ: seq, LengthReg.KV: kv, LengthReg.POS: pos}
        return _Timeline(self, streams, regs, trace, costs).go()


@dataclass
class _Op:
    """A decoded instruction with its token masks unpacked (the loop's hot data)."""

    slot: object
    op: Opcode
    unit: str
    waits: tuple[int, ...]
    releases: tuple[int, ...]


def _ops(streams) -> list[tuple[list[list[_Op]], list[tuple[int, int, int]]]]:
    """Per core: the queues, and the program order as (queue, index in it, words)."""
    out = []
    for stream in streams:
        queues = [[] for _ in Opcode]
        order = []
        for i, s in enumerate(stream):
            ins = s.ins
            # Words of the instruction (its fixed words and binding words), from the next
            # one's first word; the last instruction's from the encoder.
            words = (stream[i + 1].word - s.word if i + 1 < len(stream)
                     else len(encode(ins)))
            order.append((int(ins.op), len(queues[int(ins.op)]), words))
            queues[int(ins.op)].append(_Op(
                s, ins.op, _UNIT[ins.op], tuple(q for q in range(len(Opcode)) if ins.wait >> q & 1),
                tuple(q for q in range(len(Opcode)) if ins.release >> q & 1)))
        out.append((queues, order))
    return out


class _Timeline:
    """One run: queue heads, token release times, unit and channel occupancy.

    Heads whose tokens have all been released wait in a heap keyed by their start time; the
    earliest starts next, so shared resources (HBM channels, the matrix engine) are taken in
    time order.
    """

    def __init__(self, model: PerfModel, queues, regs, trace: bool, cache: dict):
        self.m, self.cfg, self.t, self.regs = model, model.config, model.timing, regs
        n = len(queues)
        self.queues = [q for q, _ in queues]
        self.order = [o for _, o in queues]
        queues = self.queues
        self.cache = cache
        nq = len(Opcode)
        self.heads = [[0] * nq for _ in range(n)]
        self.tokens = [[[deque() for _ in range(nq)] for _ in range(nq)] for _ in range(n)]
        self.free = [dict.fromkeys(UNITS, 0) for _ in range(n)]
        self.busy = [dict.fromkeys(UNITS, 0) for _ in range(n)]
        # Per buffer port, by _port_index: a buffer's read and write ports are independent
        # (hw/bufport.py accepts one read and one write per cycle).
        self.port_free = [[0] * (2 * len(Buffer)) for _ in range(n)]
        # The matrix engine's share of its read port: (until, fraction of the rows).
        self.port_share = [[(0, 0.0)] * (2 * len(Buffer)) for _ in range(n)]
        self.queued = [[False] * nq for _ in range(n)]
        self.heap: list[tuple[int, int, int]] = []
        self.sys_ready = [False] * n
        self.wtags: list[list[tuple[int, int, int | None]]] = [[] for _ in range(n)]
        chans = max(self.cfg.hbm_channels_total, model.hbm.pseudo_channels)
        self.channels = ChannelTimeline(chans)
        self.result = PerfResult(0, self.cfg.clock_mhz, n, self.busy, {}, {}, {},
                                 trace=[] if trace else None)
        self.end = 0
        clock, bits = self.cfg.clock_mhz, self.cfg.axi_data_bits
        self.rate = model.hbm.bytes_per_cycle(clock, bits)
        self.cross_rate = model.hbm.bytes_per_cycle(clock, bits, cross=True)
        self.latency = model.hbm.cycles(model.hbm.latency_ns, clock)
        self.row_gap = model.hbm.cycles(model.hbm.row_gap_ns, clock)
        self.cross_latency = model.hbm.cycles(model.hbm.cross_channel_latency_ns, clock)
        self.cpc = self.cfg.hbm_channels_per_core
        # Fetch and decode, in program order: when each instruction reaches its queue's FIFO,
        # and when each was dispatched (a FIFO holds queue_depth instructions not yet
        # dispatched; a full one stops the decoder, whatever the other queues need).
        self.fetch_ptr = [0] * n
        self.decoder_free = [0] * n
        self.fetched = [[[] for _ in range(nq)] for _ in range(n)]
        self.dispatched = [[[] for _ in range(nq)] for _ in range(n)]

    # ------------------------------------------------------------------ scheduling
    def _head(self, c: int, q: int) -> _Op | None:
        queue = self.queues[c][q]
        i = self.heads[c][q]
        return queue[i] if i < len(queue) else None

    def _ready_time(self, c: int, op: _Op) -> int | None:
        """When the head could start (unit free, tokens released), None if a token is missing."""
        q = int(op.op)
        fetched = self.fetched[c][q]
        if self.heads[c][q] >= len(fetched):
            return None
        t = max(self.free[c][op.unit], fetched[self.heads[c][q]])
        for src in op.waits:
            pending = self.tokens[c][src][q]
            if not pending:
                return None
            if pending[0] > t:
                t = pending[0]
        return t

    def _offer(self, c: int, q: int) -> None:
        """Put queue q's head on the heap (or mark a SYS head ready) once its tokens are in."""
        if self.queued[c][q]:
            return
        op = self._head(c, q)
        if op is None:
            return
        t = self._ready_time(c, op)
        if t is None:
            return
        self.queued[c][q] = True
        if q == Opcode.SYS:
            self.sys_ready[c] = True
            if all(self.sys_ready):
                start = max(self._ready_time(k, self._head(k, Opcode.SYS))
                            for k in range(len(self.queues)))
                heapq.heappush(self.heap, (start, -1, int(Opcode.SYS)))
        else:
            heapq.heappush(self.heap, (t, c, q))

    def _fetch(self, c: int) -> None:
        """Decode instructions in program order until one finds its queue's FIFO full of
        instructions not yet dispatched; offer the heads that arrived."""
        order, depth = self.order[c], self.t.queue_depth
        arrived = set()
        while self.fetch_ptr[c] < len(order):
            q, k, words = order[self.fetch_ptr[c]]
            gate = 0
            if k >= depth:
                done = self.dispatched[c][q]
                if len(done) <= k - depth:
                    break  # the FIFO is full until that one is dispatched
                gate = done[k - depth] + 1
            push = max(self.decoder_free[c] + words * self.t.decode_word, gate)
            self.decoder_free[c] = push
            self.fetched[c][q].append(push + self.t.queue_latency)
            self.fetch_ptr[c] += 1
            arrived.add(q)
        for q in arrived:
            self._offer(c, q)

    def _dispatch(self, c: int, q: int, start: int) -> None:
        self.dispatched[c][q].append(start)
        self._fetch(c)

    def go(self) -> PerfResult:
        ncores = len(self.queues)
        for c in range(ncores):
            self._fetch(c)
        while self.heap:
            t, c, q = heapq.heappop(self.heap)
            if c < 0:
                self._sys(t)
                continue
            op = self._head(c, q)
            now = self._ready_time(c, op)
            if now > t:  # the unit was taken meanwhile (MM and MV share the engine)
                heapq.heappush(self.heap, (now, c, q))
                continue
            self.queued[c][q] = False
            self._execute(now, c, op)
        self._finish()
        r = self.result
        r.cycles = self.end
        r.hbm_read_bytes = {i: b for i, b in enumerate(self.channels.read_bytes) if b}
        r.hbm_write_bytes = {i: b for i, b in enumerate(self.channels.write_bytes) if b}
        r.channel_busy = {i: b for i, b in enumerate(self.channels.busy) if b}
        return r

    def _consume(self, c: int, op: _Op) -> None:
        q = int(op.op)
        for src in op.waits:
            self.tokens[c][src][q].popleft()

    def _complete(self, c: int, op: _Op, start: int, end: int, busy: int, label) -> None:
        q = int(op.op)
        for dst in op.releases:
            self.tokens[c][q][dst].append(end + self.t.token_latency)
        self.busy[c][op.unit] += busy
        self.heads[c][q] += 1
        if end > self.end:
            self.end = end
        self.result.instructions[op.op.name] += 1
        if self.result.trace is not None:
            self.result.trace.append((c, op.unit, start, end, label()))
        self._offer(c, q)
        for dst in op.releases:
            self._offer(c, dst)

    def _resolved(self, c: int, op: _Op) -> dict:
        """The instruction with its bindings resolved and its length-independent costs, cached
        per program by the register values its bindings read (most prefill chunks share
        them)."""
        ins = op.slot.ins
        key = (c, op.slot.index, *(self.regs[b.reg] for b in ins.bindings))
        entry = self.cache.get(key)
        if entry is None:
            ins = apply_bindings(ins, self.regs)
            entry = {"ins": ins}
            if op.op in (Opcode.LD, Opcode.ST):
                entry["runs"] = transfer_runs(ins.len, ins.n1, ins.hbm_stride1, ins.n2,
                                              ins.hbm_stride2)
                entry["bytes"] = ins.len * ins.n1 * ins.n2
                entry["port"] = buffer_port_cycles(ins, self.cfg, self.t)
                entry["datapath"] = datapath_cycles(ins, self.cfg, self.t)
            elif op.op == Opcode.MISC:
                entry["cycles"] = misc_cycles(ins, self.cfg, self.t)
            self.cache[key] = entry
        return entry

    def _execute(self, start: int, c: int, op: _Op) -> None:
        self._consume(c, op)
        entry = self._resolved(c, op)
        ins = entry["ins"]
        if op.op in (Opcode.LD, Opcode.ST):
            unit_free, end = self._transfer(c, ins, entry, start)
            busy = unit_free - start
        elif op.op in (Opcode.MM, Opcode.MV):
            keep = self._keep(c, op.slot, ins)
            cost = entry.get(keep)
            if cost is None:
                cost = entry[keep] = matrix_cost(ins, keep, self.cfg, self.t)
            r = self.result
            r.macs_dense += cost.macs_dense
            r.macs_stored += cost.macs_stored
            r.weight_stream_bytes += cost.weight_bytes
            r.chain_work += cost.chain_work
            peak = (self.cfg.mm_macs_per_cycle if op.op == Opcode.MM
                    else self.cfg.mv_macs_per_cycle) // self.cfg.cores
            r.ideal_mpe_cycles += cost.macs_dense / peak
            wbuf_read = _port_index(Buffer.WBUF, write=False)
            port_end = self._port(c, wbuf_read, start, cost.port_cycles)
            end = unit_free = max(start + cost.cycles, port_end + cost.fill)
            # The arbiter interleaves requests cycle by cycle: the weight reads take their
            # share of the port over the whole instruction, not a block at its start.
            span = end - start - cost.fill
            if span > 0 and cost.port_cycles:
                self.port_free[c][wbuf_read] = max(start, port_end - cost.port_cycles)
                self.port_share[c][wbuf_read] = (start + span, cost.port_cycles / span)
            busy = end - start
        else:
            busy = entry["cycles"]
            end = unit_free = start + busy
        self.free[c][op.unit] = unit_free
        self._complete(c, op, start, end, busy, lambda: _label(ins))
        self._dispatch(c, int(op.op), start)  # after the head moved on: it may refill

    # ------------------------------------------------------------------ units
    def _transfer(self, c: int, ins, entry: dict, start: int) -> tuple[int, int]:
        """Occupy the channels of an LD/ST; returns (unit free again, completion)."""
        load = ins.op == Opcode.LD
        nch = max(ins.nch, 1) if load else 1
        if ins.chan + nch > self.cpc:
            raise PerfError(f"{ins.op.name} at chan {ins.chan} (+{nch}) exceeds the core's "
                            f"{self.cpc} HBM channels")
        nbytes, runs = entry["bytes"], entry["runs"]
        if load and ins.buf == Buffer.WBUF:
            self._tag(c, ins, nch)
        ready = start + self.t.transfer_issue
        port = _port_index(Buffer(ins.buf), write=load)
        last = self._port(c, port, ready, entry["port"]) if nbytes else ready
        # One segment at a time through the engine's data path, whichever channel it is on.
        last = max(last, ready + entry["datapath"])
        for i in range(nch):
            phys, cross = self._physical(c, ins.chan + i)
            rate = self.cross_rate if cross else self.rate
            cycles = math.ceil(nbytes / rate) + runs * self.row_gap if nbytes else 0
            if not cross:
                cycles = entry.setdefault("cycles", cycles)
            _, end = self.channels.occupy(phys, ready, cycles, nbytes, write=not load)
            last = max(last, end + (self.cross_latency if cross else 0))
        # The engine leaves DRAIN only when every burst has returned and the last row is
        # written: the latency and the drain keep the unit (and so its queue) busy.
        done = (last + self.latency if nbytes else last) + self.t.transfer_drain
        return done, done

    def _port(self, c: int, buf: int, ready: int, cycles: int) -> int:
        """Reserve ``cycles`` of a buffer port (:func:`_port_index`) from ``ready`` on (after
        earlier users); returns when the reservation ends."""
        begin = max(ready, self.port_free[c][buf])
        until, share = self.port_share[c][buf]
        if begin < until:
            # The arbiter is round-robin (hw/bufport.py): against the matrix engine's share a
            # transfer gets what is left, and at least every other cycle; after it, the port.
            rate = max(1.0 - share, 0.5)
            spare = (until - begin) * rate
            end = begin + math.ceil(cycles / rate) if cycles <= spare \
                else until + math.ceil(cycles - spare)
            # Rows taken beyond the matrix engine's slack delay it by as many cycles (a
            # port-bound MM loses every row an LD writes meanwhile).
            taken = min(cycles, spare) - (until - begin) * (1.0 - share)
            if taken > 0:
                delay = math.ceil(taken)
                self.free[c]["MPE"] += delay
                self.busy[c]["MPE"] += delay
                self.end = max(self.end, self.free[c]["MPE"])
                self.port_share[c][buf] = (until + delay, share)
        else:
            end = begin + cycles
        self.port_free[c][buf] = end
        return end

    def _physical(self, core: int, local: int) -> tuple[int, bool]:
        """Physical pseudo-channel of a core's local channel and whether the master crosses a
        mini-switch to reach it (never, with the one-master-per-channel layout)."""
        master = core * self.cpc + local
        phys = self.m.channel_map(core, local) if self.m.channel_map else master
        group = self.m.hbm.switch_group
        return phys, phys // group != master // group

    def _tag(self, c: int, ins, nch: int) -> None:
        """Remember which N the WBUF bytes this LD writes hold."""
        keep = self.m.sparsity.keep_at(c, ins.chan, ins.hbm_addr)
        lo = ins.buf_addr
        hi = (lo + max(ins.n2 - 1, 0) * ins.buf_stride2 + max(ins.n1 - 1, 0) * ins.buf_stride1
              + (nch - 1) * ins.ch_stride + ins.len)
        tags = [t for t in self.wtags[c] if not (lo <= t[0] and t[1] <= hi)]
        tags.append((lo, hi, keep))
        self.wtags[c] = tags

    def _keep(self, c: int, slot, ins) -> int:
        if not ins.sparse:
            return 16
        for lo, hi, keep in reversed(self.wtags[c]):
            if lo <= ins.w_addr < hi and keep is not None:
                return keep
        if self.m.default_keep is not None:
            return self.m.default_keep
        raise PerfError(f"core {c} instruction #{slot.index} ({ins.op.name} at word "
                        f"{slot.word}): sparse weights at WBUF {ins.w_addr:#x} come from no "
                        "known placement; give the build's placements or a default N")

    # ------------------------------------------------------------------ SYS
    def _sys(self, start: int) -> None:
        ncores = len(self.queues)
        heads = [self._head(c, Opcode.SYS) for c in range(ncores)]
        first = heads[0].slot.ins
        for c, h in enumerate(heads):
            ins = h.slot.ins
            if (ins.sync_op, ins.sync_id) != (first.sync_op, first.sync_id):
                raise PerfError(f"core {c} instruction #{h.slot.index}: cores disagree on the "
                                f"SYS sequence (id {ins.sync_id} vs {first.sync_id})")
        sizes = []
        for h in heads:
            ins = apply_bindings(h.slot.ins, self.regs)
            gather = SysOp(ins.sync_op) == SysOp.GATHER
            sizes.append(ins.len * max(ins.rows, 1) if gather else 0)
        total = sum(sizes)
        self.sys_ready = [False] * ncores
        for c, h in enumerate(heads):
            self.queued[c][Opcode.SYS] = False
            self._consume(c, h)
            cycles = sys_cycles(total - sizes[c], self.t)
            self.free[c]["SYS"] = start + cycles
            self._complete(c, h, start, start + cycles, cycles,
                           lambda: f"SYS {first.sync_id}")
            self._dispatch(c, int(Opcode.SYS), start)

    def _finish(self) -> None:
        stuck = [f"core {c} {Opcode(q).name} #{self._head(c, q).slot.index}"
                 for c in range(len(self.queues)) for q in range(len(Opcode))
                 if self._head(c, q)]
        if stuck:
            raise DeadlockError("dependency tokens can never be satisfied; stuck queue heads: "
                                + ", ".join(stuck))


def _label(ins) -> str:
    if ins.op in (Opcode.LD, Opcode.ST):
        return f"{ins.op.name} {Buffer(ins.buf).name} ch{ins.chan} {ins.len * ins.n1 * ins.n2}B"
    if ins.op in (Opcode.MM, Opcode.MV):
        rows = f"{ins.m_rows}x" if ins.op == Opcode.MM else ""
        return f"{ins.op.name} {rows}{ins.n_strips}s x {ins.k_blocks}k"
    from flightllm.contract.isa import MiscFunc
    return f"MISC {MiscFunc(ins.func).name} {ins.m}x{ins.n}"
