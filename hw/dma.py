"""LD and ST engines: strided multi-dimensional transfers between HBM and the on-chip buffers.

One AXI4 master per HBM channel of the core. The load engine owns their read channels, the
store engine their write channels, so an LD and an ST run side by side.

An instruction is a loop nest of *segments* (``len`` contiguous bytes; see the LD/ST docs in
:mod:`flightllm.contract.isa` and :func:`flightllm.sim.execute.exec_transfer`). Each engine has
two halves joined by a FIFO of segment descriptors:

* the *address generator* walks the loops, checks every segment against the channel and buffer
  sizes (an ADDRESS error stops it) and issues INCR bursts of up to :data:`MAX_BURST` beats that
  never cross a 4 KiB boundary, keeping up to :data:`MAX_OUTSTANDING` bursts in flight;
* the *data path* moves each segment's bytes. Loads shift the AXI beats by the segment's HBM
  misalignment into *chunks* (bus-wide pieces of the segment, byte 0 first), optionally
  transpose 16x16-byte tiles, and place the chunks at any byte address of the buffer through a
  :class:`RowWriter` (partial rows merged, byte enables). Stores read the rows through a
  :class:`RowReader`, cut chunks, and shift them into beats with the HBM misalignment as
  strobes.

The AXI beat (``axi_data_bits / 8`` bytes) must not be wider than a buffer row. Response errors
(SLVERR/DECERR) are an AXI error; the engine still takes every beat it asked for, so the bus is
left quiet.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig, BufferSpec
from flightllm.contract.isa import Buffer, Opcode
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.bufport import (
    BUFFERS, buffer_clients, port_names, route_requests, row_client_signature, shared_spec,
    width_groups,
)
from flightllm.hw.isa_layouts import instruction_layout

__all__ = [
    "axi4_signature", "axi4_read_signature", "burst_beats", "chunk_layout",
    "RowWriter", "RowReader", "width_groups", "LoadEngine", "StoreEngine", "MAX_BURST",
    "MAX_OUTSTANDING",
]

#: Beats per burst (AXI4 allows 256; 16 keeps the read-back FIFOs of the interconnect small).
MAX_BURST = 16
#: Bursts one engine keeps in flight, to cover HBM latency.
MAX_OUTSTANDING = 8
#: AXI ID width. Every master uses ID 0 (responses in order); the ports exist because the
#: AXI verification models (cocotbext-axi) require them; Vitis accepts them.
ID_BITS = 1


def _read_members(addr_bits, data_bits):
    return {
        "arvalid": Out(1), "arready": In(1), "araddr": Out(addr_bits), "arlen": Out(8),
        "arsize": Out(3), "arburst": Out(2), "arid": Out(ID_BITS),
        "rvalid": In(1), "rready": Out(1), "rdata": In(data_bits), "rresp": In(2),
        "rlast": In(1), "rid": In(ID_BITS),
    }


def _write_members(addr_bits, data_bits):
    return {
        "awvalid": Out(1), "awready": In(1), "awaddr": Out(addr_bits), "awlen": Out(8),
        "awsize": Out(3), "awburst": Out(2), "awid": Out(ID_BITS),
        "wvalid": Out(1), "wready": In(1), "wdata": Out(data_bits), "wstrb": Out(data_bits // 8),
        "wlast": Out(1),
        "bvalid": In(1), "bready": Out(1), "bresp": In(2), "bid": In(ID_BITS),
    }


def axi4_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """An AXI4 master (one ID, 0: in order), Vitis member names (``awvalid`` ...)."""
    return wiring.Signature({**_write_members(addr_bits, data_bits),
                             **_read_members(addr_bits, data_bits)})


def axi4_read_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """The read half of :func:`axi4_signature`."""
    return wiring.Signature(_read_members(addr_bits, data_bits))


def axi4_write_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """The write half of :func:`axi4_signature`."""
    return wiring.Signature(_write_members(addr_bits, data_bits))


def burst_beats(addr: Value, remaining: Value, beat_bytes: int, max_beats: int) -> Value:
    """Beats of the next burst at the beat-aligned ``addr``: at most ``max_beats``, at most
    ``remaining``, and not across a 4 KiB boundary (AXI4's rule)."""
    shift = beat_bytes.bit_length() - 1
    to_4k_value = (C(4096, 13) - addr[:12]) >> shift
    n = Mux(remaining < max_beats, remaining, max_beats)
    return Mux(to_4k_value < n, to_4k_value, n)


def chunk_layout(beat_bytes: int) -> data.StructLayout:
    """A bus-wide piece of a segment: its bytes, which are valid, where it goes, the last one."""
    return data.StructLayout({"data": 8 * beat_bytes, "be": beat_bytes, "addr": 25, "last": 1})


def _lsb_mask(count: Value, width: int) -> Value:
    """``width`` bits with the low ``min(count, width)`` set."""
    return Mux(count >= width, C((1 << width) - 1, width),
               ((C(1, width + 1) << count[:(width).bit_length()]) - 1)[:width])


def _group_spec(cfg: AcceleratorConfig, group) -> BufferSpec:
    return shared_spec(cfg.buffer(BUFFERS[i]) for i in group)


def _route(m: Module, shared, dest: Value, clients: list) -> None:
    """Connect a shared row client (``shared``, for the group's deepest buffer) to the
    ``dest``-th of the buffers' own ``clients`` (the engine's client ports): its requests, and
    the responses back."""
    route_requests(m, shared.req, dest, [client.req for client in clients])
    for k, client in enumerate(clients):
        sel = dest == k
        m.d.comb += client.rsp.ready.eq(shared.rsp.ready & sel)
        with m.If(sel):
            m.d.comb += [shared.rsp.valid.eq(client.rsp.valid),
                         shared.rsp.payload.eq(client.rsp.payload)]


# --------------------------------------------------------------------------- buffer side
class RowWriter(wiring.Component):
    """Writes chunks at arbitrary byte addresses of a buffer, merging bytes that fall in the
    same row into one row write; the row is written when a chunk for another row arrives or a
    chunk marked ``last`` was merged (so a finished segment is in the buffer).

    One writer serves ``dests`` buffers of one row width (``spec`` has the deepest one's
    depth): ``dest`` is sampled with each chunk and ``port_dest`` says which buffer the
    request on ``port`` is for. A segment's chunks all go to one buffer and its last row is
    flushed before another segment's bytes are merged, so rows never mix buffers."""

    def __init__(self, spec: BufferSpec, beat_bytes: int, *, dests: int = 1):
        if beat_bytes > spec.width:
            raise ValueError(f"AXI beat of {beat_bytes} bytes is wider than the {spec.width}-byte "
                             "buffer row; the DMA needs axi_data_bits <= 8 * buffer width")
        self.spec, self.beat_bytes = spec, beat_bytes
        super().__init__({"chunk": In(stream.Signature(chunk_layout(beat_bytes))),
                          "dest": In(range(max(dests, 2))),
                          "port": Out(row_client_signature(spec)),
                          "port_dest": Out(range(max(dests, 2))), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        W, B = self.spec.width, self.beat_bytes
        lane_bits = W.bit_length() - 1
        cur_valid, phase, cur_last = Signal(), Signal(), Signal()
        cur_row = Signal(range(self.spec.depth + 1))
        cur_dest = Signal.like(self.dest)
        win_data, win_be = Signal(16 * W), Signal(2 * W)
        has_hi = win_be[W:].any()

        part_row = Signal.like(cur_row)
        part_data, part_be, part_last = Signal(8 * W), Signal(W), Signal()
        m.d.comb += [part_row.eq(cur_row + phase),
                     part_data.eq(Mux(phase, win_data[8 * W:], win_data[:8 * W])),
                     part_be.eq(Mux(phase, win_be[W:], win_be[:W])),
                     part_last.eq(cur_last & (phase | ~has_hi))]

        pend_valid, pend_flush = Signal(), Signal()
        pend_row = Signal.like(cur_row)
        pend_data, pend_be = Signal(8 * W), Signal(W)
        req = self.port.req
        m.d.comb += [req.valid.eq(pend_valid & (pend_flush | (cur_valid & (part_row != pend_row)))),
                     req.p.addr.eq(pend_row), req.p.write.eq(1), req.p.data.eq(pend_data),
                     req.p.be.eq(pend_be), self.port.rsp.ready.eq(1)]
        wacc = req.valid & req.ready
        take = Signal()
        m.d.comb += take.eq(cur_valid & (~pend_valid | wacc
                                         | (~pend_flush & (part_row == pend_row))))
        with m.If(take):
            with m.If(pend_valid & ~wacc):
                mask = Cat(*(part_be[i].replicate(8) for i in range(W)))
                m.d.sync += [pend_data.eq((pend_data & ~mask) | (part_data & mask)),
                             pend_be.eq(pend_be | part_be), pend_flush.eq(part_last)]
            with m.Else():
                m.d.sync += [pend_valid.eq(1), pend_row.eq(part_row), pend_data.eq(part_data),
                             pend_be.eq(part_be), pend_flush.eq(part_last),
                             self.port_dest.eq(cur_dest)]
        with m.Elif(wacc):
            m.d.sync += pend_valid.eq(0)

        last_part = phase | ~has_hi
        chunk = self.chunk
        m.d.comb += chunk.ready.eq(~cur_valid | (take & last_part))
        with m.If(take):
            with m.If(last_part):
                m.d.sync += [cur_valid.eq(0), phase.eq(0)]
            with m.Else():
                m.d.sync += phase.eq(1)
        with m.If(chunk.valid & chunk.ready):
            lane = chunk.p.addr[:lane_bits]
            m.d.sync += [cur_valid.eq(1), phase.eq(0), cur_last.eq(chunk.p.last),
                         cur_row.eq(chunk.p.addr[lane_bits:]), cur_dest.eq(self.dest),
                         win_data.eq(chunk.p.data << Cat(C(0, 3), lane)),
                         win_be.eq(chunk.p.be << lane)]
        m.d.comb += self.idle.eq(~cur_valid & ~pend_valid)
        return m


class RowReader(wiring.Component):
    """Reads a segment (``addr``, ``len``) of a buffer as chunks (segment byte 0 first).

    One reader serves ``dests`` buffers of one row width (``spec`` has the deepest one's
    depth): ``dest`` is sampled with each segment and ``port_dest`` says which buffer
    ``port`` talks to. A segment ends only when the rows it asked for are all back, so no
    response of one buffer is in flight when the next segment turns to another."""

    def __init__(self, spec: BufferSpec, beat_bytes: int, *, dests: int = 1):
        if beat_bytes > spec.width:
            raise ValueError(f"AXI beat of {beat_bytes} bytes is wider than the {spec.width}-byte "
                             "buffer row; the DMA needs axi_data_bits <= 8 * buffer width")
        self.spec, self.beat_bytes = spec, beat_bytes
        super().__init__({
            "seg": In(stream.Signature(data.StructLayout({"addr": 25, "len": 25}))),
            "dest": In(range(max(dests, 2))),
            "chunk": Out(stream.Signature(chunk_layout(beat_bytes))),
            "port": Out(row_client_signature(spec)),
            "port_dest": Out(range(max(dests, 2))), "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W, B = self.spec.width, self.beat_bytes
        lane_bits = W.bit_length() - 1
        active = Signal()
        p = Signal(25)
        left = Signal(25)
        next_row, last_row = Signal(25 - lane_bits), Signal(25 - lane_bits)
        q0v, q1v = Signal(), Signal()
        q0, q1 = Signal(8 * W), Signal(8 * W)

        seg = self.seg
        m.d.comb += seg.ready.eq(~active)
        with m.If(seg.valid & seg.ready):
            end = seg.p.addr + seg.p.len - 1
            m.d.sync += [active.eq(1), p.eq(seg.p.addr), left.eq(seg.p.len),
                         next_row.eq(seg.p.addr[lane_bits:]), last_row.eq(end[lane_bits:]),
                         self.port_dest.eq(self.dest)]

        req, rsp = self.port.req, self.port.rsp
        m.d.comb += [req.valid.eq(active & (next_row <= last_row)), req.p.addr.eq(next_row),
                     req.p.write.eq(0)]
        with m.If(req.valid & req.ready):
            m.d.sync += next_row.eq(next_row + 1)

        o = p[:lane_bits]
        r0 = p[lane_bits:]
        needs_hi = (o + B > W) & (r0 != last_row)
        crosses = o + B >= W
        out = self.chunk
        m.d.comb += [out.valid.eq(active & q0v & (q1v | ~needs_hi)),
                     out.p.data.eq((Cat(q0, q1) >> Cat(C(0, 3), o))[:8 * B]),
                     out.p.be.eq(_lsb_mask(left, B)), out.p.last.eq(left <= B),
                     out.p.addr.eq(p)]
        emit = out.valid & out.ready
        pop = Signal()
        m.d.comb += pop.eq(emit & crosses & ~out.p.last)
        m.d.comb += rsp.ready.eq(~q1v)
        push = rsp.valid & rsp.ready
        with m.If(emit):
            m.d.sync += [p.eq(p + B), left.eq(left - B)]
        with m.If(emit & out.p.last):
            m.d.sync += [active.eq(0), q0v.eq(0), q1v.eq(0)]
        with m.Elif(pop):
            with m.If(push):
                m.d.sync += [q0.eq(rsp.payload), q0v.eq(1), q1v.eq(0)]
            with m.Else():
                m.d.sync += [q0.eq(q1), q0v.eq(q1v), q1v.eq(0)]
        with m.Elif(push):
            with m.If(~q0v):
                m.d.sync += [q0.eq(rsp.payload), q0v.eq(1)]
            with m.Else():
                m.d.sync += [q1.eq(rsp.payload), q1v.eq(1)]
        m.d.comb += self.idle.eq(~active)
        return m


# --------------------------------------------------------------------------- address generator
class _Loops:
    """The (o, m, c) loop nest of a transfer with running HBM and buffer addresses.

    An LD lane ``lane`` of ``lanes`` walks only the channels ``ins.chan + c`` that are
    ``lane`` mod ``lanes``: ``c`` starts at ``c0`` and steps by ``lanes``."""

    def __init__(self, m: Module, ins, channels: int, load: bool, lane: int = 0,
                 lanes: int = 1):
        self.m, self.ins = m, ins
        self.o, self.i, self.c = Signal(16), Signal(16), Signal(6)
        # Wide enough that no stride product wraps: range checks see the true address.
        self.h_outer, self.h = Signal(52), Signal(52)
        self.b_outer, self.b, self.b_ch = Signal(44), Signal(44), Signal(44)
        self.nch = Signal(7)
        m.d.comb += self.nch.eq(Mux(ins.nch == 0, 1, ins.nch) if load else 1)
        self.load, self.lanes = load, lanes
        self.c0 = Signal(range(lanes))
        if lanes > 1:
            m.d.comb += self.c0.eq((lane - ins.chan)[:lanes.bit_length() - 1])
        # The buffer offset of channel c0 from a row's first channel.
        self.b_c0 = Signal(44)
        m.d.comb += self.b_c0.eq(ins.ch_stride * self.c0 if load else 0)

    @property
    def empty(self) -> Value:
        """The lane has no channel of this transfer."""
        return self.c0 >= self.nch

    def init(self):
        ins = self.ins
        return [self.o.eq(0), self.i.eq(0), self.c.eq(self.c0),
                self.h_outer.eq(ins.hbm_addr), self.h.eq(ins.hbm_addr),
                self.b_outer.eq(ins.buf_addr), self.b.eq(ins.buf_addr),
                self.b_ch.eq(ins.buf_addr + self.b_c0)]

    def advance(self, done: Signal):
        """Statements that step to the next segment; ``done`` is set after the last."""
        m, ins, step = self.m, self.ins, self.lanes
        with m.If(self.c + step < self.nch):
            m.d.sync += [self.c.eq(self.c + step),
                         self.b_ch.eq(self.b_ch + (ins.ch_stride * step if self.load else 0))]
        with m.Elif(self.i + 1 < ins.n1):
            m.d.sync += [self.c.eq(self.c0), self.i.eq(self.i + 1),
                         self.h.eq(self.h + ins.hbm_stride1), self.b.eq(self.b + ins.buf_stride1),
                         self.b_ch.eq(self.b + ins.buf_stride1 + self.b_c0)]
        with m.Elif(self.o + 1 < ins.n2):
            h2, b2 = self.h_outer + ins.hbm_stride2, self.b_outer + ins.buf_stride2
            m.d.sync += [self.c.eq(self.c0), self.i.eq(0), self.o.eq(self.o + 1),
                         self.h_outer.eq(h2), self.h.eq(h2), self.b_outer.eq(b2),
                         self.b.eq(b2), self.b_ch.eq(b2 + self.b_c0)]
        with m.Else():
            m.d.sync += done.eq(1)


def _segment_layout(channels: int) -> data.StructLayout:
    return data.StructLayout({"chan": range(channels), "addr": 64, "len": 25, "baddr": 25,
                              "buf": 2})


def _check_beat_width(cfg: AcceleratorConfig) -> int:
    """The AXI beat in bytes, which must not be wider than any buffer's rows."""
    beat = cfg.axi_data_bits // 8
    for name in BUFFERS:
        if beat > cfg.buffer(name).width:
            raise ValueError(f"axi_data_bits = {cfg.axi_data_bits} is wider than {name}'s "
                             f"{cfg.buffer(name).width}-byte rows; the DMA cannot place beats")
    return beat


class _TransferEngine(wiring.Component):
    """What LD and ST share: command intake, checks, the loop walk and burst issue."""

    opcode: Opcode

    def __init__(self, cfg: AcceleratorConfig, members: dict, *, lane: int = 0,
                 lanes: int = 1):
        self.cfg, self.lane, self.lanes = cfg, lane, lanes
        self.channels = cfg.hbm_channels_per_core
        self.beat_bytes = _check_beat_width(cfg)
        super().__init__({
            "cmd": In(stream.Signature(instruction_layout(self.opcode))),
            "done": Out(1), "busy": Out(1), "error": Out(3), "progress": Out(1),
            "hbm_base": In(64).array(self.channels),
            **buffer_clients(cfg),
            **members,
        })

    def _generate(self, m):
        """The command FSM shared by LD and ST: checks, segment descriptors to the ``segs``
        FIFO, burst requests on ``issue_*`` for the channel ``addr_channel``. Returns the
        signals the subclass's data path drives or reads; it must drive ``issue_ready`` and
        ``data_idle`` and count ``outstanding`` bursts."""
        cfg, B = self.cfg, self.beat_bytes
        m.submodules.segs = segs = SyncFIFOBuffered(width=_segment_layout(self.channels).size,
                                                    depth=MAX_OUTSTANDING)
        outstanding = Signal(range(MAX_OUTSTANDING + 2))
        data_idle = Signal()
        addr_channel = Signal(range(self.channels))
        issue_valid, issue_ready = Signal(), Signal()
        issue_addr, issue_len = Signal(64), Signal(range(MAX_BURST + 1))
        load = self.opcode == Opcode.LD
        ins = Signal(instruction_layout(self.opcode))
        loops = _Loops(m, ins, self.channels, load, self.lane, self.lanes)
        walked = Signal()
        chan = Signal(range(self.channels))
        burst_addr = Signal(64)
        beats_left = Signal(26)
        error = self.error

        buf_bytes = Array(C(cfg.buffer(n).bytes, 26) for n in BUFFERS)
        seg_h = loops.h
        seg_b = loops.b_ch
        seg_chan = Signal(7)
        m.d.comb += seg_chan.eq(ins.chan + loops.c)
        full = Signal(64)
        m.d.comb += full.eq(Array(self.hbm_base)[seg_chan[:max(1, (self.channels - 1)
                                                               .bit_length())]] + seg_h)
        m.d.comb += [addr_channel.eq(chan), issue_addr.eq(burst_addr)]
        nbeats = burst_beats(burst_addr, beats_left, B, MAX_BURST)
        m.d.comb += issue_len.eq(nbeats)

        m.d.comb += self.busy.eq(1)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.cmd.ready.eq(1), self.busy.eq(0)]
                with m.If(self.cmd.valid):
                    m.d.sync += [ins.eq(self.cmd.p), walked.eq(0)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += loops.init()
                nch = loops.nch
                with m.If(ins.chan + nch > self.channels):
                    m.d.sync += error.eq(ErrorCode.ADDRESS)
                    m.next = "DRAIN"
                with m.Elif(ins.transpose & (ins.len[:8] != 0) if load else C(0)):
                    m.d.sync += error.eq(ErrorCode.DECODE)
                    m.next = "DRAIN"
                with m.Elif((ins.n1 == 0) | (ins.n2 == 0) | (ins.len == 0) | loops.empty):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "SEGMENT"
            with m.State("SEGMENT"):
                # RBUF holds INT32 words: the golden model refuses unaligned byte addresses.
                with m.If((seg_h + ins.len > cfg.hbm_channel_bytes)
                          | (seg_b + ins.len > buf_bytes[ins.buf])
                          | ((ins.buf == Buffer.RBUF) & (seg_b[:2] != 0))):
                    m.d.sync += error.eq(ErrorCode.ADDRESS)
                    m.next = "DRAIN"
                with m.Else():
                    m.d.comb += [segs.w_en.eq(1)]
                    with m.If(segs.w_rdy):
                        span = full[:B.bit_length() - 1] + ins.len
                        m.d.sync += [chan.eq(seg_chan), burst_addr.eq(full & ~(B - 1)),
                                     beats_left.eq((span + B - 1) // B)]
                        m.next = "BURST"
            with m.State("BURST"):
                with m.If(beats_left == 0):
                    loops.advance(walked)
                    m.next = "NEXT"
                with m.Else():
                    m.d.comb += issue_valid.eq(outstanding < MAX_OUTSTANDING)
                    with m.If(issue_valid & issue_ready):
                        m.d.sync += [burst_addr.eq(burst_addr + nbeats * B),
                                     beats_left.eq(beats_left - nbeats)]
            with m.State("NEXT"):
                with m.If(walked):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "SEGMENT"
            with m.State("DRAIN"):
                with m.If(~segs.r_rdy & data_idle & (outstanding == 0)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        desc = Signal(_segment_layout(self.channels))
        m.d.comb += [desc.chan.eq(seg_chan), desc.addr.eq(full), desc.len.eq(ins.len),
                     desc.baddr.eq(seg_b), desc.buf.eq(ins.buf), segs.w_data.eq(desc)]
        return SimpleNamespace(ins=ins, segs=segs, outstanding=outstanding, data_idle=data_idle,
                               addr_channel=addr_channel, issue_valid=issue_valid,
                               issue_ready=issue_ready, issue_addr=issue_addr,
                               issue_len=issue_len)


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
        _check_beat_width(cfg)
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
            owner = lanes[i % self.lanes].axi[i]
            for name, member in axi.signature.members.items():
                if member.flow == Out:
                    m.d.comb += getattr(axi, name).eq(getattr(owner, name))
                else:
                    m.d.comb += getattr(owner, name).eq(getattr(axi, name))

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


class _LoadLane(_TransferEngine):
    """One lane of :class:`LoadEngine`: the segments on channels ``lane`` mod ``lanes``.
    Ports as :class:`_TransferEngine` plus ``axi`` (a read port per channel of the core, of
    which it drives its own)."""

    opcode = Opcode.LD

    def __init__(self, cfg: AcceleratorConfig, lane: int = 0, lanes: int = 1):
        bits = cfg.axi_data_bits
        super().__init__(cfg, {"axi": Out(axi4_read_signature(64, bits)).array(
            cfg.hbm_channels_per_core)}, lane=lane, lanes=lanes)

    def elaborate(self, platform):
        m = Module()
        B, nch = self.beat_bytes, self.channels
        layout = _segment_layout(nch)
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
        with m.If(~active & segs.r_rdy):
            m.d.comb += segs.r_en.eq(1)
            s_new = desc.addr[:max(1, (B - 1).bit_length())] if B > 1 else 0
            m.d.sync += [active.eq(1), have_prev.eq(0), s.eq(s_new), rchan.eq(desc.chan),
                         nbeats.eq((s_new + desc.len + B - 1) // B),
                         nchunks.eq((desc.len + B - 1) // B), left.eq(desc.len),
                         caddr.eq(desc.baddr), buf.eq(desc.buf)]
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
        m.d.comb += [chunk.p.be.eq(_lsb_mask(left, B)), chunk.p.addr.eq(caddr),
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
        completed = take_beat & rlast
        m.d.sync += outstanding.eq(outstanding + issued - completed)
        m.d.comb += self.progress.eq(issued | take_beat)

        # ---- optional 16x16 tile transpose, then the buffer writers
        m.submodules.transpose = tr = _TileTranspose(B)
        m.d.comb += tr.enable.eq(ins.transpose)
        m.d.comb += [tr.i.valid.eq(chunk.valid), tr.i.p.eq(chunk.p), chunk.ready.eq(tr.i.ready)]
        idle = [~active, ~segs.r_rdy, tr.idle]
        # One writer per row width: a writer's shifters are as wide as two rows, and an LD
        # fills one buffer at a time.
        for group in width_groups(self.cfg):
            writer = RowWriter(_group_spec(self.cfg, group), B, dests=len(group))
            m.submodules["writer_" + "_".join(BUFFERS[i] for i in group)] = writer
            _route(m, writer.port, writer.port_dest,
                   [getattr(self, BUFFERS[i]) for i in group])
            m.d.comb += writer.chunk.p.eq(tr.o.p)
            for k, i in enumerate(group):
                with m.If(buf == i):
                    m.d.comb += [writer.dest.eq(k), writer.chunk.valid.eq(tr.o.valid),
                                 tr.o.ready.eq(writer.chunk.ready)]
            idle.append(writer.idle)
        m.d.comb += data_idle.eq(Cat(*idle).all())
        return m


class _TileTranspose(wiring.Component):
    """Transposes each 256-byte (16x16) tile of a chunk stream when ``enable``; else passes
    chunks through. Transposed segments are whole tiles, so tiles start at segment byte 0."""

    def __init__(self, beat_bytes: int):
        self.B = beat_bytes
        layout = chunk_layout(beat_bytes)
        super().__init__({"enable": In(1), "i": In(stream.Signature(layout)),
                          "o": Out(stream.Signature(layout)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        B = self.B
        per_tile = 256 // B
        tile = Signal(2048)
        idx = Signal(range(per_tile + 1))
        base = Signal(25)
        last = Signal()
        draining = Signal()
        transposed = Cat(*(tile[8 * ((q % 16) * 16 + q // 16):][:8] for q in range(256)))
        with m.If(~self.enable):
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.p.eq(self.i.p),
                         self.i.ready.eq(self.o.ready), self.idle.eq(1)]
        with m.Elif(~draining):
            m.d.comb += [self.i.ready.eq(1), self.idle.eq(idx == 0)]
            with m.If(self.i.valid):
                m.d.sync += [tile.word_select(idx[:max(1, (per_tile - 1).bit_length())]
                                              if per_tile > 1 else 0, 8 * B).eq(self.i.p.data),
                             idx.eq(idx + 1)]
                with m.If(idx == 0):
                    m.d.sync += base.eq(self.i.p.addr)
                with m.If(idx == per_tile - 1):
                    m.d.sync += [draining.eq(1), idx.eq(0), last.eq(self.i.p.last)]
        with m.Else():
            sel = idx[:max(1, (per_tile - 1).bit_length())] if per_tile > 1 else 0
            m.d.comb += [self.o.valid.eq(1), self.o.p.data.eq(transposed.word_select(sel, 8 * B)),
                         self.o.p.be.eq((1 << B) - 1), self.o.p.addr.eq(base + idx * B),
                         self.o.p.last.eq(last & (idx == per_tile - 1))]
            with m.If(self.o.ready):
                m.d.sync += idx.eq(idx + 1)
                with m.If(idx == per_tile - 1):
                    m.d.sync += [draining.eq(0), idx.eq(0)]
        return m


class StoreEngine(_TransferEngine):
    """ST: buffer -> HBM. Ports as :class:`_TransferEngine` plus ``axi`` (one write port per
    channel)."""

    opcode = Opcode.ST

    def __init__(self, cfg: AcceleratorConfig):
        bits = cfg.axi_data_bits
        super().__init__(cfg, {"axi": Out(axi4_write_signature(64, bits)).array(
            cfg.hbm_channels_per_core)})

    def elaborate(self, platform):
        m = Module()
        B, nch = self.beat_bytes, self.channels
        layout = _segment_layout(nch)
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
            reader = RowReader(_group_spec(self.cfg, group), B, dests=len(group))
            m.submodules["reader_" + "_".join(BUFFERS[i] for i in group)] = reader
            _route(m, reader.port, reader.port_dest,
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
        low = Mux(first, _lsb_mask(s, B), 0)
        m.d.comb += strb.eq(_lsb_mask(rem, B) & ~low)
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
