"""The buffer side of the LD and ST engines: segment bytes as bus-wide chunks, written to or
read from buffer rows at any byte address, and the 16x16-byte tile transpose of loads.

A *chunk* (:func:`chunk_layout`) is one AXI beat's worth of a segment, byte 0 first, with its
byte enables and buffer byte address. :class:`RowWriter` merges chunks into byte-enabled row
writes; :class:`RowReader` cuts a segment out of rows as chunks; :class:`TileTranspose`
transposes each 256-byte tile of a chunk stream. Each talks to the buffers through a row
client port (:mod:`flightllm.hw.bufport`).
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BufferSpec
from flightllm.hw.bufport import row_client_signature

__all__ = ["chunk_layout", "lsb_mask", "RowWriter", "RowReader", "TileTranspose"]


def chunk_layout(beat_bytes: int) -> data.StructLayout:
    """A bus-wide piece of a segment: its bytes, which are valid, where it goes, the last one."""
    return data.StructLayout({"data": 8 * beat_bytes, "be": beat_bytes, "addr": 25, "last": 1})


def lsb_mask(count: Value, width: int) -> Value:
    """``width`` bits with the low ``min(count, width)`` set."""
    return Mux(count >= width, C((1 << width) - 1, width),
               ((C(1, width + 1) << count[:(width).bit_length()]) - 1)[:width])



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
        W = self.spec.width
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
                     out.p.be.eq(lsb_mask(left, B)), out.p.last.eq(left <= B),
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


class TileTranspose(wiring.Component):
    """Transposes each 256-byte (16x16) tile of a chunk stream when ``enable``; else passes
    chunks through. Transposed segments are whole tiles, so tiles start at segment byte 0.

    Two tile registers, used in turn: the next tile comes in while the last one goes out, so
    a transposed stream runs at one chunk per cycle after the first tile's fill. (One
    register took a tile in, then sent it out: half the rate, whatever the segments' length;
    the V tile loads of decode attention are such streams.)"""

    def __init__(self, beat_bytes: int):
        self.B = beat_bytes
        layout = chunk_layout(beat_bytes)
        super().__init__({"enable": In(1), "i": In(stream.Signature(layout)),
                          "o": Out(stream.Signature(layout)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        B = self.B
        per_tile = 256 // B
        tiles = [Signal(2048, name=f"tile{k}") for k in range(2)]
        bases = [Signal(25, name=f"base{k}") for k in range(2)]
        full = Signal(2)   # tile k holds a whole tile not yet sent
        last = Signal(2)   # ... which ends its segment
        wsel, rsel = Signal(), Signal()
        widx, ridx = Signal(range(per_tile + 1)), Signal(range(per_tile + 1))

        def word(value, idx):
            if per_tile == 1:
                return value
            return value.word_select(idx[:(per_tile - 1).bit_length()], 8 * B)

        def transposed(tile):
            return Cat(*(tile[8 * ((q % 16) * 16 + q // 16):][:8] for q in range(256)))

        with m.If(~self.enable):
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.p.eq(self.i.p),
                         self.i.ready.eq(self.o.ready), self.idle.eq(1)]
        with m.Else():
            m.d.comb += [self.idle.eq((full == 0) & (widx == 0)),
                         self.i.ready.eq(~full.bit_select(wsel, 1))]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += widx.eq(widx + 1)
                for k in range(2):
                    with m.If(wsel == k):
                        m.d.sync += word(tiles[k], widx).eq(self.i.p.data)
                        with m.If(widx == 0):
                            m.d.sync += bases[k].eq(self.i.p.addr)
                        with m.If(widx == per_tile - 1):
                            m.d.sync += [full[k].eq(1), last[k].eq(self.i.p.last)]
                with m.If(widx == per_tile - 1):
                    m.d.sync += [widx.eq(0), wsel.eq(~wsel)]
            out = [word(transposed(t), ridx) for t in tiles]
            m.d.comb += [self.o.valid.eq(full.bit_select(rsel, 1)),
                         self.o.p.data.eq(Mux(rsel, out[1], out[0])),
                         self.o.p.be.eq((1 << B) - 1),
                         self.o.p.addr.eq(Mux(rsel, bases[1], bases[0]) + ridx * B),
                         self.o.p.last.eq(last.bit_select(rsel, 1) & (ridx == per_tile - 1))]
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += ridx.eq(ridx + 1)
                with m.If(ridx == per_tile - 1):
                    m.d.sync += [ridx.eq(0), rsel.eq(~rsel)]
                    for k in range(2):
                        with m.If(rsel == k):
                            m.d.sync += full[k].eq(0)
        return m
