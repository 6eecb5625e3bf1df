"""One accelerator core: fetch, per-opcode queues, dependency tokens, the units and the buffers.

Decoded instructions go to one in-order FIFO per opcode (the artefact's decoupled
access/execute queues). A queue's head is *dispatched* to its unit when

* the unit has finished the queue's previous instruction (one in flight per queue), and
* every queue named in its ``wait`` mask has released a token to this queue;

dispatch consumes those tokens; the unit's done pulse releases one token to every queue in the
instruction's ``release`` mask. These are the golden simulator's rules (``sim/golden.py``), so
a program whose tokens cover its dependencies computes the same bytes here as there.

Units: :class:`~flightllm.hw.dma.LoadEngine` (LD), :class:`~flightllm.hw.dma.StoreEngine` (ST),
``MatrixUnit`` (MM, MV), ``MiscUnit`` (MISC) and :class:`~flightllm.hw.sync.SyncUnit` (SYS).
Each buffer is a :class:`~flightllm.hw.buffers.BufferMemory` shared by the units through a
:class:`~flightllm.hw.bufport.BufferArbiter`.

Errors stop dispatch at once and latch an :class:`~flightllm.contract.regmap.ErrorCode` with
the word index of the instruction that caused it: the fetch unit's decode errors, any unit's
error, a token counter that would pass ``token_depth``, tokens left over at the end, and the
watchdog (no instruction, word, buffer access or AXI beat moved for ``watchdog_cycles``).
"""

from __future__ import annotations

import importlib

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Opcode
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.axi import axi4_read_signature, axi4_signature
from flightllm.hw.bufport import (BUFFERS, BufferArbiter, buffer_clients, client_ports,
                                  connect_memory, read_ports, row_client_signature,
                                  write_ports)
from flightllm.hw.buffers import BufferMemory, suggested_ram_style
from flightllm.hw.dma import LoadEngine, StoreEngine
from flightllm.hw.fetch import InstructionFetch
from flightllm.hw.isa_layouts import instruction_bits, instruction_layout
from flightllm.hw.sync import SyncUnit, sync_port_signature

__all__ = ["Core", "QUEUE_DEPTH", "DEFAULT_WATCHDOG", "execution_units_available"]

#: Instructions each per-opcode queue holds.
QUEUE_DEPTH = 2
#: Cycles without progress after which a core reports TIMEOUT.
DEFAULT_WATCHDOG = 1 << 16
OPS = tuple(Opcode)


def _unit_class(module: str, name: str):
    try:
        return getattr(importlib.import_module(f"flightllm.hw.{module}"), name)
    except (ImportError, AttributeError):
        return None


def execution_units_available() -> dict[str, bool]:
    """Whether the MM/MV and MISC units exist in this tree (the core stands in otherwise)."""
    return {"matrix": _unit_class("matrix_unit", "MatrixUnit") is not None,
            "misc": _unit_class("misc_unit", "MiscUnit") is not None}


class _MissingUnit(wiring.Component):
    """Stands in for an execution unit this tree does not have: every instruction it receives
    ends at once with a DECODE error (the kernel cannot execute that opcode), never silently."""

    def __init__(self, cfg, ops):
        members = {"busy": Out(1), "error": Out(3)}
        for name, (op, done) in ops.items():
            members[name] = In(stream.Signature(instruction_layout(op)))
            members[done] = Out(1)
        members.update(buffer_clients(cfg))
        self._ops = ops
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for name, (_, done) in self._ops.items():
            port = getattr(self, name)
            m.d.comb += port.ready.eq(1)
            m.d.sync += getattr(self, done).eq(port.valid)
            with m.If(port.valid):
                m.d.sync += self.error.eq(ErrorCode.DECODE)
        return m


class Core(wiring.Component):
    """One core.

    Args:
        cfg: the accelerator configuration.
        index: the core's number. It must not change the netlist: the hierarchical kernel
            emits one core module for all cores.
        watchdog_cycles: cycles without progress before a TIMEOUT error.
        execution_units: include the MM/MV and MISC units; without them (a small build for
            testing the instruction path and the DMA) MM, MV and MISC end in a DECODE error.
        library, dsp_impl: see :class:`~flightllm.hw.matrix_unit.MatrixUnit`.

    Ports:
        start: pulse: run the program with the current arguments (reset the core just before).
        instr_base, prog_offset, prog_words, seq, kv, pos: run arguments.
        hbm_base: the HBM pointer of each of the core's channels.
        fetch: AXI4 read port for instructions. hbm: one AXI4 master per channel.
        sync: the core's side of the cross-core SYS hub.
        done: the core has finished (all instructions, or stopped by an error).
        error, error_word: the first error and the word index of its instruction.
        busy: per queue (opcode order), an instruction is in flight.
        quiet: no AXI transaction of this core is outstanding (safe to reset).
    """

    def __init__(self, cfg: AcceleratorConfig, *, index: int = 0,
                 watchdog_cycles: int = DEFAULT_WATCHDOG, execution_units: bool = True,
                 library=None, dsp_impl: str = "twin"):
        self.cfg, self.index, self.watchdog_cycles = cfg, index, watchdog_cycles
        self.execution_units, self.library, self.dsp_impl = execution_units, library, dsp_impl
        beat = 32 * ((cfg.axi_data_bits + 31) // 32)
        super().__init__({
            "start": In(1), "instr_base": In(64), "prog_offset": In(32), "prog_words": In(32),
            "seq": In(32), "kv": In(32), "pos": In(32),
            "hbm_base": In(64).array(cfg.hbm_channels_per_core),
            "fetch": Out(axi4_read_signature(64, beat)),
            "hbm": Out(axi4_signature(64, cfg.axi_data_bits)).array(cfg.hbm_channels_per_core),
            "sync": Out(sync_port_signature(cfg)),
            "done": Out(1), "error": Out(3), "error_word": Out(32), "busy": Out(len(OPS)),
            "quiet": Out(1),
            # GATHER between cores: writes from this core's SYS unit to the others' buffers,
            # and the others' writes into this core's buffers.
            **({f"remote_out_{b}": Out(row_client_signature(cfg.buffer(b))).array(cfg.cores - 1)
                for b in BUFFERS} if cfg.cores > 1 else {}),
            **({f"remote_in_{b}": In(row_client_signature(cfg.buffer(b))).array(cfg.cores - 1)
                for b in BUFFERS} if cfg.cores > 1 else {}),
        })

    # ------------------------------------------------------------------ units
    def _make_execution_units(self):
        """The MM/MV and MISC units, or stand-ins that flag their instructions as errors
        (the resource estimate measures the core with black boxes here)."""
        cfg, units = self.cfg, self.execution_units
        matrix_cls = _unit_class("matrix_unit", "MatrixUnit") if units else None
        misc_cls = _unit_class("misc_unit", "MiscUnit") if units else None
        if matrix_cls:
            mat = matrix_cls(cfg, library=self.library, dsp_impl=self.dsp_impl)
        else:
            mat = _MissingUnit(cfg, {"mm": (Opcode.MM, "mm_done"), "mv": (Opcode.MV, "mv_done")})
        misc = misc_cls(cfg) if misc_cls else _MissingUnit(cfg, {"cmd": (Opcode.MISC, "done")})
        return mat, misc

    def _units(self, m):
        cfg = self.cfg
        m.submodules.fetch = fetch = InstructionFetch(cfg)
        m.submodules.ld = ld = LoadEngine(cfg)
        m.submodules.st = st = StoreEngine(cfg)
        m.submodules.sys = sync = SyncUnit(cfg, index=self.index)
        m.submodules.matrix, m.submodules.misc = mat, misc = self._make_execution_units()
        # Per queue: the command stream, the done pulse, the unit's error.
        ports = {
            Opcode.LD: (ld.cmd, ld.done, ld.error), Opcode.ST: (st.cmd, st.done, st.error),
            Opcode.MM: (mat.mm, mat.mm_done, mat.error),
            Opcode.MV: (mat.mv, mat.mv_done, mat.error),
            Opcode.MISC: (misc.cmd, misc.done, misc.error),
            Opcode.SYS: (sync.cmd, sync.done, sync.error),
        }
        clients = [ld, st, mat, misc, sync]
        return fetch, ld, st, sync, ports, clients

    def _make_memory(self, spec, read_ports: int = 1, write_ports: int = 1):
        """One buffer's memory (the resource estimate counts buffers from their specs and
        measures the core with black boxes here)."""
        return BufferMemory(spec, read_ports=read_ports, write_ports=write_ports,
                            ram_style=suggested_ram_style(spec))

    def _buffers(self, m, clients):
        grants = []
        remotes = ({b: list(getattr(self, f"remote_in_{b}")) for b in BUFFERS}
                   if self.cfg.cores > 1 else {})
        for name in BUFFERS:
            spec = self.cfg.buffer(name)
            ports, banks = read_ports(self.cfg, name), write_ports(self.cfg, name)
            # A unit's second stream of reads (the matrix unit's odd chains) or second LD lane
            # is a client of its own, so the two can be granted two ports in one cycle.
            users = client_ports(clients, name)
            mem = self._make_memory(spec, ports, banks)
            arb = BufferArbiter(spec, len(users) + len(remotes.get(name, [])), read_ports=ports,
                                write_ports=banks)
            m.submodules[f"{name}_mem"], m.submodules[f"{name}_arb"] = mem, arb
            connect_memory(m, arb, mem)
            for i, port in enumerate(users):
                wiring.connect(m, port, arb.clients[i])
            for k, remote in enumerate(remotes.get(name, [])):
                wiring.connect(m, wiring.flipped(remote), arb.clients[len(users) + k])
            grants.append(arb.grant_valid)
        return grants

    # ------------------------------------------------------------------ elaborate
    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        fetch, ld, st, sync, ports, clients = self._units(m)
        grants = self._buffers(m, clients)

        m.d.comb += [fetch.start.eq(self.start), fetch.base.eq(self.instr_base),
                     fetch.offset.eq(self.prog_offset), fetch.words.eq(self.prog_words),
                     fetch.seq.eq(self.seq), fetch.kv.eq(self.kv), fetch.pos.eq(self.pos)]
        wiring.connect(m, fetch.axi, wiring.flipped(self.fetch))
        for i in range(cfg.hbm_channels_per_core):
            m.d.comb += [ld.hbm_base[i].eq(self.hbm_base[i]), st.hbm_base[i].eq(self.hbm_base[i])]
            for name in ld.axi[i].signature.members:
                self._link(m, ld.axi[i], self.hbm[i], name)
            for name in st.axi[i].signature.members:
                self._link(m, st.axi[i], self.hbm[i], name)
        wiring.connect(m, sync.hub, wiring.flipped(self.sync))
        if cfg.cores > 1:
            for b in BUFFERS:
                for k in range(cfg.cores - 1):
                    wiring.connect(m, getattr(sync, f"remote_{b}")[k],
                                   wiring.flipped(getattr(self, f"remote_out_{b}")[k]))

        running = Signal()
        stop = Signal()
        with m.If(self.start):
            m.d.sync += running.eq(1)

        # ---- decoded instructions -> per-opcode queues
        queues = {}
        for op in OPS:
            width = instruction_bits(op)
            fifo = SyncFIFOBuffered(width=width + 32, depth=QUEUE_DEPTH)
            m.submodules[f"q_{op.name.lower()}"] = fifo
            queues[op] = fifo
            m.d.comb += fifo.w_data.eq(Cat(fetch.out.p.bits[:width], fetch.out.p.word))
            m.d.comb += fifo.w_en.eq(fetch.out.valid & (fetch.out.p.op == op) & ~stop)
        m.d.comb += fetch.out.ready.eq(Array(q.w_rdy for q in queues.values())[fetch.out.p.op]
                                       & ~stop)

        # ---- dispatch and tokens
        depth = cfg.token_depth
        tokens = {(s, d): Signal(range(depth + 2), name=f"tok_{s.name}_{d.name}".lower())
                  for s in OPS for d in OPS if s != d}
        inflight = Signal(len(OPS))
        release = {op: Signal(len(OPS), name=f"release_{op.name.lower()}") for op in OPS}
        word_of = {op: Signal(32, name=f"word_{op.name.lower()}") for op in OPS}
        dispatch = Signal(len(OPS))
        done = Signal(len(OPS))
        overflow = Signal()
        overflow_word = Signal(32)
        for op in OPS:
            fifo, (cmd, unit_done, _) = queues[op], ports[op]
            width = instruction_bits(op)
            layout = instruction_layout(op)
            head = fifo.r_data[:width]
            head_word = fifo.r_data[width:]
            wait = head[layout["wait"].offset:][:len(OPS)]
            have = Cat(*((tokens[(s, op)] != 0) | ~wait[s] if s != op else C(1)
                         for s in OPS)).all()
            ready = fifo.r_rdy & ~inflight[op] & have & ~stop & running
            m.d.comb += [cmd.valid.eq(ready), cmd.payload.eq(head)]
            m.d.comb += [dispatch[op].eq(ready & cmd.ready), fifo.r_en.eq(dispatch[op]),
                         done[op].eq(unit_done)]
            with m.If(dispatch[op]):
                m.d.sync += [inflight[op].eq(1), word_of[op].eq(head_word),
                             release[op].eq(head[layout["release"].offset:][:len(OPS)])]
            with m.If(unit_done):
                m.d.sync += inflight[op].eq(0)
        for (s, d), count in tokens.items():
            head = queues[d].r_data
            layout = instruction_layout(d)
            waits = head[layout["wait"].offset + int(s)]
            inc = done[s] & release[s][d]
            dec = dispatch[d] & waits
            m.d.sync += count.eq(count + inc - dec)
            with m.If(inc & ~dec & (count == depth)):
                m.d.comb += overflow.eq(1)
                m.d.comb += overflow_word.eq(word_of[s])
        m.d.comb += self.busy.eq(inflight)

        # ---- errors, end of run, watchdog
        error, error_word = self.error, self.error_word
        sources = [(fetch.error, fetch.error_word)]
        for op in OPS:
            sources.append((ports[op][2], word_of[op]))
        sources.append((Mux(overflow, ErrorCode.TOKENS, 0), overflow_word))
        finished = Signal()
        all_empty = Cat(*(q.level == 0 for q in queues.values())).all()
        m.d.comb += finished.eq(running & fetch.finished & all_empty & (inflight == 0)
                                & ~fetch.out.valid)
        leftover = Cat(*(c != 0 for c in tokens.values())).any()
        sources.append((Mux(finished & leftover, ErrorCode.TOKENS, 0), self.prog_words))

        progress = Signal()
        m.d.comb += progress.eq(fetch.progress | dispatch.any() | done.any() | ld.progress
                                | st.progress | Cat(*grants).any())
        idle_count = Signal(range(self.watchdog_cycles + 1))
        with m.If(progress | ~running | self.done):
            m.d.sync += idle_count.eq(0)
        with m.Else():
            m.d.sync += idle_count.eq(idle_count + 1)
        stuck_word = Signal(32)
        for op in reversed(OPS):
            with m.If(queues[op].r_rdy):
                m.d.comb += stuck_word.eq(queues[op].r_data[instruction_bits(op):])
        sources.append((Mux(idle_count == self.watchdog_cycles, ErrorCode.TIMEOUT, 0),
                        stuck_word))

        with m.If(running & (error == 0)):
            for code, word in reversed(sources):
                with m.If(code != 0):
                    m.d.sync += [error.eq(code), error_word.eq(word)]
        m.d.comb += stop.eq(error != 0)
        with m.If(running & ((error != 0) | (finished & ~leftover))):
            m.d.sync += self.done.eq(1)

        # AXI quiet: the engines drain what they issued even after an error.
        m.d.comb += self.quiet.eq(((inflight & ((1 << Opcode.LD) | (1 << Opcode.ST))) == 0)
                                  & fetch.axi_idle)
        return m

    @staticmethod
    def _link(m, inner, outer, name):
        member = inner.signature.members[name]
        if member.flow == Out:
            m.d.comb += getattr(outer, name).eq(getattr(inner, name))
        else:
            m.d.comb += getattr(inner, name).eq(getattr(outer, name))
