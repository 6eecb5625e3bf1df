"""What the LD and ST engines share: the command FSM that checks a transfer, walks its loop
nest segment by segment and issues the AXI bursts.

A transfer is ``for o in n2, for m in n1, for c in nch`` segments of ``len`` bytes (see
:mod:`flightllm.contract.isa`). :class:`TransferEngine` takes the instruction, checks it
(channel range, transposed lengths) and every segment (HBM channel and buffer bounds, RBUF
alignment: an ADDRESS error stops it), pushes one descriptor per segment into a FIFO for the
data path of the subclass (:mod:`flightllm.hw.dma`) and issues INCR bursts of up to
:data:`MAX_BURST` beats that never cross 4 KiB, with up to :data:`MAX_OUTSTANDING` in flight.
An LD lane walks only its own channels.
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
from flightllm.hw.axi import burst_beats
from flightllm.hw.bufport import BUFFERS, buffer_clients, route_requests, shared_spec
from flightllm.hw.isa_layouts import instruction_layout

__all__ = ["MAX_BURST", "MAX_OUTSTANDING", "TransferEngine", "check_beat_width",
           "group_spec", "route_group", "segment_layout"]

#: Beats per burst (AXI4 allows 256; 16 keeps the read-back FIFOs of the interconnect small).
MAX_BURST = 16
#: Bursts one engine keeps in flight, to cover HBM latency.
MAX_OUTSTANDING = 8


def group_spec(cfg: AcceleratorConfig, group) -> BufferSpec:
    return shared_spec(cfg.buffer(BUFFERS[i]) for i in group)


def route_group(m: Module, shared, dest: Value, clients: list) -> None:
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


def segment_layout(channels: int) -> data.StructLayout:
    return data.StructLayout({"chan": range(channels), "addr": 64, "len": 25, "baddr": 25,
                              "buf": 2})


def check_beat_width(cfg: AcceleratorConfig) -> int:
    """The AXI beat in bytes, which must not be wider than any buffer's rows."""
    beat = cfg.axi_data_bits // 8
    for name in BUFFERS:
        if beat > cfg.buffer(name).width:
            raise ValueError(f"axi_data_bits = {cfg.axi_data_bits} is wider than {name}'s "
                             f"{cfg.buffer(name).width}-byte rows; the DMA cannot place beats")
    return beat


class TransferEngine(wiring.Component):
    """What LD and ST share: command intake, checks, the loop walk and burst issue."""

    opcode: Opcode

    def __init__(self, cfg: AcceleratorConfig, members: dict, *, lane: int = 0,
                 lanes: int = 1):
        self.cfg, self.lane, self.lanes = cfg, lane, lanes
        self.channels = cfg.hbm_channels_per_core
        self.beat_bytes = check_beat_width(cfg)
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
        m.submodules.segs = segs = SyncFIFOBuffered(width=segment_layout(self.channels).size,
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
        desc = Signal(segment_layout(self.channels))
        m.d.comb += [desc.chan.eq(seg_chan), desc.addr.eq(full), desc.len.eq(ins.len),
                     desc.baddr.eq(seg_b), desc.buf.eq(ins.buf), segs.w_data.eq(desc)]
        return SimpleNamespace(ins=ins, segs=segs, outstanding=outstanding, data_idle=data_idle,
                               addr_channel=addr_channel, issue_valid=issue_valid,
                               issue_ready=issue_ready, issue_addr=issue_addr,
                               issue_len=issue_len)
