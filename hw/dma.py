"""LD and ST engines: strided multi-dimensional transfers between HBM and the on-chip buffers.

One AXI4 master per HBM channel of the core. The load engine owns their read channels, the
store engine their write channels, so an LD and an ST run side by side.

An instruction is a loop nest of *segments* (``len`` contiguous bytes; see the LD/ST docs in
:mod:`flightllm.contract.isa` and :func:`flightllm.sim.execute.exec_transfer`). Each engine has
two halves joined by a FIFO of segment descriptors:

* the *address generator* (:class:`~flightllm.hw.transfer.TransferEngine`) walks the loops,
  checks every segment against the channel and buffer sizes (an ADDRESS error stops it) and
  issues INCR bursts of up to 16 beats that never cross a 4 KiB boundary, keeping up to 8
  bursts in flight;
* the *data path* (here, with the buffer side in :mod:`flightllm.hw.rowio`) moves each
  segment's bytes. Loads shift the AXI beats by the segment's HBM
  misalignment into *chunks* (bus-wide pieces of the segment, byte 0 first), optionally
  transpose 16x16-byte tiles, and place the chunks at any byte address of the buffer through a
  :class:`RowWriter` (partial rows merged, byte enables). Stores read the rows through a
  :class:`RowReader`, cut chunks, and shift them into beats with the HBM misalignment as
  strobes.

An LD engine of ``ld_lanes = 2`` is two of these, each for half the channels
(:class:`LoadEngine`). The AXI beat (``axi_data_bits / 8`` bytes) must not be wider than a
buffer row. Response errors
(SLVERR/DECERR) are an AXI error; the engine still takes every beat it asked for, so the bus is
left quiet.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Opcode
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.axi import axi4_read_signature, axi4_write_signature
from flightllm.hw.bufport import BUFFERS, port_names, row_client_signature, width_groups
from flightllm.hw.isa_layouts import instruction_layout
from flightllm.hw.rowio import RowReader, RowWriter, TileTranspose, chunk_layout, lsb_mask
from flightllm.hw.transfer import (MAX_BURST, TransferEngine, check_beat_width, group_spec,
                                   route_group, segment_layout)

__all__ = ["LoadEngine", "StoreEngine"]


class LoadEngine(wiring.Component):
    """LD: HBM -> buffer, in ``cfg.ld_lanes`` lanes.

    Each lane is a whole engine (address generator and data path) for the channels that are
    its number mod ``ld_lanes``; the lanes take every LD together, and it is done when the
    last lane is. Lane 0 uses the buffer client ports ``abuf`` ... ``pbuf``, lane 1 a second
    set ``abuf_b`` ... (see :func:`~flightllm.hw.bufport.port_names`), so the arbiters can
    grant both lanes' writes in one cycle where the buffer has a bank for each (WBUF).

    Ports: ``cmd``, ``done``, ``busy``, ``error`` (the first lane's that is set),
    ``progress``, ``hbm_base``, the buffer clients and ``axi`` (one read port per channel).
    """

    def __init__(self, cfg: AcceleratorConfig):
        check_beat_width(cfg)
        self.cfg, self.lanes = cfg, cfg.ld_lanes
        members = {
            "cmd": In(stream.Signature(instruction_layout(Opcode.LD))),
            "done": Out(1), "busy": Out(1), "error": Out(3), "progress": Out(1),
            "hbm_base": In(64).array(cfg.hbm_channels_per_core),
            "axi": Out(axi4_read_signature(64, cfg.axi_data_bits)).array(
                cfg.hbm_channels_per_core),
        }
        for k in range(self.lanes):
            for name in BUFFERS:
                members[port_names(name)[k]] = Out(row_client_signature(cfg.buffer(name)))
        super().__init__(members)
        # Built here so that a configuration the engine cannot serve fails at construction.
        self._lanes = [_LoadLane(cfg, k, self.lanes) for k in range(self.lanes)]

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes
        for k, lane in enumerate(lanes):
            m.submodules[f"lane{k}"] = lane
            for name in BUFFERS:
                wiring.connect(m, getattr(lane, name),
                               wiring.flipped(getattr(self, port_names(name)[k])))
            for i in range(self.cfg.hbm_channels_per_core):
                m.d.comb += lane.hbm_base[i].eq(self.hbm_base[i])
        for i, axi in enumerate(self.axi):
            # Channel i is lane (i mod lanes)'s; the other lanes never address it.
            wiring.connect(m, lanes[i % self.lanes].axi[i], wiring.flipped(axi))

        # Every lane takes the command at once (each is idle only between LDs).
        ready = Cat(*(lane.cmd.ready for lane in lanes)).all()
        m.d.comb += self.cmd.ready.eq(ready)
        for lane in lanes:
            m.d.comb += [lane.cmd.valid.eq(self.cmd.valid & ready), lane.cmd.p.eq(self.cmd.p)]
        # A lane that finishes first waits in `finished` for the others.
        finished = Signal(self.lanes)
        through = Cat(*(finished[k] | lane.done for k, lane in enumerate(lanes)))
        with m.If(through.all()):
            m.d.comb += self.done.eq(1)
            m.d.sync += finished.eq(0)
        with m.Else():
            m.d.sync += finished.eq(through)
        error = C(0, 3)
        for lane in reversed(lanes):
            error = Mux(lane.error != 0, lane.error, error)
        m.d.comb += [self.error.eq(error),
                     self.busy.eq(Cat(*(lane.busy for lane in lanes)).any()),
                     self.progress.eq(Cat(*(lane.progress for lane in lanes)).any())]
        return m


class _LoadLane(TransferEngine):
    """One lane of :class:`LoadEngine`: the segments on channels ``lane`` mod ``lanes``.
    Ports as :class:`TransferEngine` plus ``axi`` (a read port per channel of the core, of
    which it drives its own)."""

    opcode = Opcode.LD

    def __init__(self, cfg: AcceleratorConfig, lane: int = 0, lanes: int = 1):
        bits = cfg.axi_data_bits
        super().__init__(cfg, {"axi": Out(axi4_read_signature(64, bits)).array(
            cfg.hbm_channels_per_core)}, lane=lane, lanes=lanes)

    def elaborate(self, platform):
        m = Module()
        B, nch = self.beat_bytes, self.channels
        layout = segment_layout(nch)
        g = self._generate(m)
        segs, outstanding, data_idle = g.segs, g.outstanding, g.data_idle
        addr_channel, issue_valid, issue_ready = g.addr_channel, g.issue_valid, g.issue_ready
        issue_addr, issue_len, ins = g.issue_addr, g.issue_len, g.ins
        for i, axi in enumerate(self.axi):
            m.d.comb += [axi.arvalid.eq(issue_valid & (addr_channel == i)),
                         axi.araddr.eq(issue_addr), axi.arlen.eq(issue_len - 1),
                         axi.arsize.eq(B.bit_length() - 1), axi.arburst.eq(1)]
        m.d.comb += issue_ready.eq(Array(a.arready for a in self.axi)[addr_channel])
        issued = issue_valid & issue_ready

        # ---- beats -> chunks (undo the HBM misalignment)
        desc = data.View(layout, segs.r_data)
        active, have_prev = Signal(), Signal()
        s = Signal(range(B))
        rchan = Signal(range(nch))
        nbeats, nchunks = Signal(26), Signal(26)
        left = Signal(25)
        caddr = Signal(25)
        buf = Signal(2)
        prev = Signal(8 * B)
        # The segment ends in this cycle (its last chunk goes and no beat is left), so the next
        # descriptor can load now: segments follow each other without an idle cycle between.
        ending = Signal()
        beat_valid = Array(a.rvalid for a in self.axi)[rchan]
        beat = Array(a.rdata for a in self.axi)[rchan]
        chunk = stream.Signature(chunk_layout(B)).create()
        take_beat = Signal()
        shift = Cat(C(0, 3), s)
        with m.If(active & (nchunks != 0)):
            with m.If((s != 0) & ~have_prev):
                m.d.comb += take_beat.eq(beat_valid)
            with m.Elif(nbeats != 0):
                m.d.comb += [chunk.valid.eq(beat_valid),
                             chunk.p.data.eq((Cat(prev, beat) >> shift)[:8 * B]
                                             if B > 1 else beat),
                             take_beat.eq(beat_valid & chunk.ready)]
                with m.If(s == 0):
                    m.d.comb += chunk.p.data.eq(beat)
            with m.Else():
                m.d.comb += [chunk.valid.eq(1),
                             chunk.p.data.eq((Cat(prev, C(0, 8 * B)) >> shift)[:8 * B])]
        m.d.comb += [chunk.p.be.eq(lsb_mask(left, B)), chunk.p.addr.eq(caddr),
                     chunk.p.last.eq(nchunks == 1)]
        for i, axi in enumerate(self.axi):
            m.d.comb += axi.rready.eq(take_beat & (rchan == i))
        rlast = Array(a.rlast for a in self.axi)[rchan]
        rresp = Array(a.rresp for a in self.axi)[rchan]
        with m.If(take_beat):
            m.d.sync += [prev.eq(beat), have_prev.eq(1), nbeats.eq(nbeats - 1)]
            with m.If((rresp != 0) & (self.error == 0)):
                m.d.sync += self.error.eq(ErrorCode.AXI)
        with m.If(chunk.valid & chunk.ready):
            m.d.sync += [nchunks.eq(nchunks - 1), left.eq(left - B), caddr.eq(caddr + B)]
        with m.If(active & (nchunks == 0) & (nbeats == 0)):
            m.d.sync += active.eq(0)
        m.d.comb += ending.eq(active & chunk.valid & chunk.ready & (nchunks == 1)
                              & ((nbeats == 0) | ((nbeats == 1) & take_beat)))
        # Last, so that a new segment's state wins over the decrements above.
        with m.If((~active | ending) & segs.r_rdy):
            m.d.comb += segs.r_en.eq(1)
            s_new = desc.addr[:max(1, (B - 1).bit_length())] if B > 1 else 0
            m.d.sync += [active.eq(1), have_prev.eq(0), s.eq(s_new), rchan.eq(desc.chan),
                         nbeats.eq((s_new + desc.len + B - 1) // B),
                         nchunks.eq((desc.len + B - 1) // B), left.eq(desc.len),
                         caddr.eq(desc.baddr), buf.eq(desc.buf)]
        completed = take_beat & rlast
        m.d.sync += outstanding.eq(outstanding + issued - completed)
        m.d.comb += self.progress.eq(issued | take_beat)

        # ---- optional 16x16 tile transpose, then the buffer writers
        m.submodules.transpose = tr = TileTranspose(B)
        m.d.comb += tr.enable.eq(ins.transpose)
        m.d.comb += [tr.i.valid.eq(chunk.valid), tr.i.p.eq(chunk.p), chunk.ready.eq(tr.i.ready)]
        idle = [~active, ~segs.r_rdy, tr.idle]
        # One writer per row width: a writer's shifters are as wide as two rows, and an LD
        # fills one buffer at a time.
        for group in width_groups(self.cfg):
            writer = RowWriter(group_spec(self.cfg, group), B, dests=len(group))
            m.submodules["writer_" + "_".join(BUFFERS[i] for i in group)] = writer
            route_group(m, writer.port, writer.port_dest,
                   [getattr(self, BUFFERS[i]) for i in group])
            m.d.comb += writer.chunk.p.eq(tr.o.p)
            for k, i in enumerate(group):
                with m.If(buf == i):
                    m.d.comb += [writer.dest.eq(k), writer.chunk.valid.eq(tr.o.valid),
                                 tr.o.ready.eq(writer.chunk.ready)]
            idle.append(writer.idle)
        m.d.comb += data_idle.eq(Cat(*idle).all())
        return m


class StoreEngine(TransferEngine):
    """ST: buffer -> HBM. Ports as :class:`TransferEngine` plus ``axi`` (one write port per
    channel)."""

    opcode = Opcode.ST

    def __init__(self, cfg: AcceleratorConfig):
        bits = cfg.axi_data_bits
        super().__init__(cfg, {"axi": Out(axi4_write_signature(64, bits)).array(
            cfg.hbm_channels_per_core)})

    def elaborate(self, platform):
        m = Module()
        B, nch = self.beat_bytes, self.channels
        layout = segment_layout(nch)
        g = self._generate(m)
        segs, outstanding, data_idle = g.segs, g.outstanding, g.data_idle
        addr_channel, issue_valid, issue_ready = g.addr_channel, g.issue_valid, g.issue_ready
        issue_addr, issue_len = g.issue_addr, g.issue_len
        for i, axi in enumerate(self.axi):
            m.d.comb += [axi.awvalid.eq(issue_valid & (addr_channel == i)),
                         axi.awaddr.eq(issue_addr), axi.awlen.eq(issue_len - 1),
                         axi.awsize.eq(B.bit_length() - 1), axi.awburst.eq(1),
                         axi.bready.eq(1)]
        m.d.comb += issue_ready.eq(Array(a.awready for a in self.axi)[addr_channel])
        issued = issue_valid & issue_ready
        responses = Cat(*(a.bvalid for a in self.axi))
        completed = Signal(range(nch + 1))
        m.d.comb += completed.eq(sum(responses[i] for i in range(nch)))
        m.d.sync += outstanding.eq(outstanding + issued - completed)
        with m.If(Cat(*((a.bvalid & (a.bresp != 0)) for a in self.axi)).any()
                  & (self.error == 0)):
            m.d.sync += self.error.eq(ErrorCode.AXI)

        # ---- descriptor -> reader, chunks -> beats
        desc = data.View(layout, segs.r_data)
        active, tail = Signal(), Signal()
        s = Signal(range(B))
        wchan = Signal(range(nch))
        buf = Signal(2)
        nbeats = Signal(26)
        rem = Signal(27)            # segment bytes from the current beat's first lane on, + s
        first = Signal()
        prev = Signal(8 * B)
        waddr = Signal(64)
        in_burst = Signal(range(MAX_BURST))
        # One reader per row width (as LD's writers); ``readers[i]`` serves buffer i.
        readers, group_readers = [None] * len(BUFFERS), []
        for group in width_groups(self.cfg):
            reader = RowReader(group_spec(self.cfg, group), B, dests=len(group))
            m.submodules["reader_" + "_".join(BUFFERS[i] for i in group)] = reader
            route_group(m, reader.port, reader.port_dest,
                   [getattr(self, BUFFERS[i]) for i in group])
            group_readers.append(reader)
            for k, i in enumerate(group):
                readers[i] = reader
                with m.If(desc.buf == i):
                    m.d.comb += reader.dest.eq(k)
        seg_ready = Array(r.seg.ready for r in readers)[desc.buf]
        with m.If(~active & segs.r_rdy & seg_ready):
            m.d.comb += segs.r_en.eq(1)
            s_new = desc.addr[:max(1, (B - 1).bit_length())] if B > 1 else 0
            m.d.sync += [active.eq(1), tail.eq(0), first.eq(1), s.eq(s_new), wchan.eq(desc.chan),
                         buf.eq(desc.buf), nbeats.eq((s_new + desc.len + B - 1) // B),
                         rem.eq(s_new + desc.len), prev.eq(0),
                         waddr.eq(desc.addr & ~(B - 1)), in_burst.eq(0)]
            for i, r in enumerate(readers):
                with m.If(desc.buf == i):
                    m.d.comb += [r.seg.valid.eq(1), r.seg.p.addr.eq(desc.baddr),
                                 r.seg.p.len.eq(desc.len)]
        chunk_valid = Array(r.chunk.valid for r in readers)[buf]
        chunk_data = Array(r.chunk.p.data for r in readers)[buf]
        chunk_last = Array(r.chunk.p.last for r in readers)[buf]

        wvalid, wready = Signal(), Signal()
        wdata = Signal(8 * B)
        back = Cat(C(0, 3), (B - s)[:max(1, (B - 1).bit_length()) + 1])
        take_chunk = Signal()
        with m.If(active & ~tail):
            m.d.comb += [wvalid.eq(chunk_valid), take_chunk.eq(chunk_valid & wready)]
            with m.If(s == 0):
                m.d.comb += wdata.eq(chunk_data)
            with m.Else():
                m.d.comb += wdata.eq((Cat(prev, chunk_data) >> back)[:8 * B])
        with m.Elif(active & tail):
            m.d.comb += [wvalid.eq(1), wdata.eq((Cat(prev, C(0, 8 * B)) >> back)[:8 * B])]
        for i, r in enumerate(readers):
            with m.If(buf == i):
                m.d.comb += r.chunk.ready.eq(take_chunk)
        strb = Signal(B)
        low = Mux(first, lsb_mask(s, B), 0)
        m.d.comb += strb.eq(lsb_mask(rem, B) & ~low)
        wlast = (in_burst == MAX_BURST - 1) | ((waddr[:12] + B)[:12] == 0) | (nbeats == 1)
        for i, axi in enumerate(self.axi):
            m.d.comb += [axi.wvalid.eq(wvalid & (wchan == i)), axi.wdata.eq(wdata),
                         axi.wstrb.eq(strb), axi.wlast.eq(wlast)]
        m.d.comb += wready.eq(Array(a.wready for a in self.axi)[wchan])
        beat_done = wvalid & wready
        with m.If(beat_done):
            m.d.sync += [nbeats.eq(nbeats - 1), rem.eq(rem - B), first.eq(0),
                         waddr.eq(waddr + B), in_burst.eq(Mux(wlast, 0, in_burst + 1))]
            with m.If(take_chunk):
                m.d.sync += prev.eq(chunk_data)
                with m.If(chunk_last):
                    with m.If(nbeats == 1):
                        m.d.sync += active.eq(0)
                    with m.Else():
                        m.d.sync += tail.eq(1)
            with m.If(tail):
                m.d.sync += [active.eq(0), tail.eq(0)]
        idle = [~active, ~segs.r_rdy] + [r.idle for r in group_readers]
        m.d.comb += data_idle.eq(Cat(*idle).all())
        m.d.comb += self.progress.eq(issued | beat_done | responses.any())
        return m
