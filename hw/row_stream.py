"""Byte-addressed streams over a row buffer: the readers, writers and the per-buffer port
multiplexer that the execution units (:mod:`~flightllm.hw.matrix_unit`,
:mod:`~flightllm.hw.misc_unit`) build their operand traffic from.

The ISA addresses buffers in bytes, a buffer is ``depth`` rows of ``width`` bytes, and an
operand may start at any byte. So:

* :class:`ByteReader` takes *segments* ``{addr, nbytes}`` and delivers each as
  ``ceil(nbytes / chunk)`` chunks of ``chunk`` bytes (``chunk <= width``), byte ``i`` of the
  segment at chunk ``i // chunk``, lane ``i % chunk``; bytes past the segment's end are
  undefined. It requests the rows the segment covers, in order, and realigns them through a
  two-row window, so a chunk that straddles two rows costs nothing extra: one row per cycle
  in, one chunk per cycle out. A reader built with ``align`` takes only segments that start
  at multiples of ``align`` bytes, so it realigns whole ``align``-byte words; when the chunk
  is one such word it never straddles two rows and needs no window at all. The matrix unit's
  weight readers (the dequantisers read 8-byte words and the ISA keeps weights 8-byte aligned)
  are such readers: a word select on the head row instead of a byte shifter over two. When
  the chunk is two words (dequantisers of two words per cycle) a one-word carry replaces the
  window, and the chunk says whether it is ``single`` (the segment's odd last word); a
  segment starting at a row's last word pays one cycle to fill the carry.
* :class:`ChunkWriter` writes one chunk of up to ``chunk`` bytes at any byte address: one
  row write, or two when the chunk straddles a row boundary.
* :class:`PortMux` puts several readers and one writer on one row client
  (:func:`~flightllm.hw.bufport.row_client_signature`). Each reader owns a small response
  FIFO and requests a row only when its FIFO has room for it, so responses, which come back
  in request order, are always taken at once: no reader can block another, and a unit whose
  streams are consumed at different rates (the matrix engine's chains) cannot deadlock on
  the shared port.

Addresses are not range-checked here: the units check operands before they start and wrap
row numbers modulo the buffer depth otherwise.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BufferSpec

from .bufport import route_requests, row_client_signature, row_request_layout

__all__ = ["ADDR_BITS", "LEN_BITS", "segment_layout", "chunk_layout", "write_layout",
           "ByteReader", "ChunkWriter", "PortMux", "route_writes"]

#: Byte addresses: the ISA's 24-bit fields plus headroom so sums of fields do not wrap.
ADDR_BITS = 26
#: Bytes of one segment.
LEN_BITS = 24


def segment_layout() -> data.StructLayout:
    """One read segment: ``nbytes`` (> 0) bytes starting at byte ``addr``."""
    return data.StructLayout({"addr": ADDR_BITS, "nbytes": LEN_BITS})


def chunk_layout(chunk: int, *, single: bool = False) -> data.StructLayout:
    """One chunk of a segment, ``last`` on the segment's final chunk; with ``single`` (the
    readers of word pairs) also ``single``, set when only the chunk's first word is in the
    segment."""
    fields = {"data": 8 * chunk, "last": 1}
    if single:
        fields["single"] = 1
    return data.StructLayout(fields)


def write_layout(chunk: int) -> data.StructLayout:
    """One chunk write: ``data`` byte ``i`` goes to ``addr + i`` for ``i < nbytes``."""
    return data.StructLayout({"addr": ADDR_BITS, "data": 8 * chunk,
                              "nbytes": range(chunk + 1)})


def _lane_bits(spec: BufferSpec) -> int:
    return spec.width.bit_length() - 1


class ByteReader(wiring.Component):
    """Reads byte segments of one buffer as chunks (see the module docstring).

    Args:
        spec: the buffer.
        chunk: bytes per output chunk, 1..``spec.width``.
        fifo_depth: rows the response FIFO holds (3 keeps one row per cycle flowing).
        align: every segment starts at a multiple of this many bytes (a power of two dividing
            ``chunk`` and the row width); the low address bits are then ignored, and a
            segment that does not keep the promise reads the wrong bytes.

    Ports:
        cmd (In, :func:`segment_layout`), out (Out, :func:`chunk_layout`);
        req (Out, row numbers) and rsp (In, rows): to a :class:`PortMux` reader slot. ``rsp``
        is always ready: a row is requested only when the FIFO has room for it.
        busy (Out 1): a segment is queued or in flight.
    """

    def __init__(self, spec: BufferSpec, chunk: int, *, fifo_depth: int = 3, align: int = 1):
        if not isinstance(chunk, int) or not 1 <= chunk <= spec.width:
            raise ValueError(f"chunk must be 1..{spec.width} bytes, not {chunk!r}")
        if (not isinstance(align, int) or align < 1 or align & (align - 1) or chunk % align
                or spec.width % align):
            raise ValueError(f"align must be a power of two dividing the chunk ({chunk}) and "
                             f"the row width ({spec.width}), not {align!r}")
        self.spec, self.chunk, self.fifo_depth, self.align = spec, chunk, fifo_depth, align
        #: Chunks of two aligned words: read with a one-word carry instead of a row window.
        self.pairs = chunk == 2 * align
        super().__init__({
            "cmd": In(stream.Signature(segment_layout())),
            "out": Out(stream.Signature(chunk_layout(chunk, single=self.pairs))),
            "req": Out(stream.Signature(range(spec.depth))),
            "rsp": In(stream.Signature(8 * spec.width)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W, C, lw = self.spec.width, self.chunk, _lane_bits(self.spec)
        row_bits = Shape.cast(range(self.spec.depth)).width
        m.submodules.rows = rows = SyncFIFO(width=8 * W, depth=self.fifo_depth)
        plan_layout = data.StructLayout({"off": lw or 1, "nbytes": LEN_BITS,
                                         "nrows": LEN_BITS})
        m.submodules.plans = plans = SyncFIFO(width=plan_layout.size, depth=2)

        # ---- request side: the rows of each segment, in order, as FIFO room allows.
        req_row = Signal(row_bits)
        req_left = Signal(LEN_BITS)
        inflight = Signal(range(self.fifo_depth + 1))
        room = rows.level + inflight < self.fifo_depth
        addr, nbytes = self.cmd.payload.addr, self.cmd.payload.nbytes
        off = addr[:lw] if lw else Const(0, 1)
        nrows = ((off + nbytes - 1) >> lw) + 1
        m.d.comb += [self.cmd.ready.eq((req_left == 0) & plans.w_rdy),
                     plans.w_en.eq(self.cmd.valid & self.cmd.ready)]
        plan_in = Signal(plan_layout)
        m.d.comb += [plan_in.off.eq(off), plan_in.nbytes.eq(nbytes), plan_in.nrows.eq(nrows),
                     plans.w_data.eq(plan_in)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [req_row.eq(addr[lw:]), req_left.eq(nrows)]
        m.d.comb += [self.req.valid.eq((req_left != 0) & room), self.req.payload.eq(req_row)]
        issued = self.req.valid & self.req.ready
        with m.If(issued):
            m.d.sync += [req_row.eq(req_row + 1), req_left.eq(req_left - 1)]
        m.d.comb += [self.rsp.ready.eq(1), rows.w_en.eq(self.rsp.valid),
                     rows.w_data.eq(self.rsp.payload)]
        m.d.sync += inflight.eq(inflight + issued - self.rsp.valid)

        if self.align == C:
            self._assemble_words(m, rows, plans, plan_layout)
        elif self.pairs:
            self._assemble_pairs(m, rows, plans, plan_layout)
        else:
            self._assemble_window(m, rows, plans, plan_layout)
        m.d.comb += self.busy.eq(self._active | plans.r_rdy | (req_left != 0))
        return m

    def _assemble_words(self, m, rows, plans, plan_layout):
        """Chunks that are whole, aligned words never straddle rows: each is a word of the
        FIFO's head row, which is popped after its last word or the segment's last chunk."""
        W, C, lw = self.spec.width, self.chunk, _lane_bits(self.spec)
        lc = C.bit_length() - 1
        self._active = active = Signal()
        q = Signal(max(lw, 1))            # byte offset of the chunk in the head row
        left = Signal(LEN_BITS)           # chunks still to emit
        plan = data.View(plan_layout, plans.r_data)
        with m.If(~active & plans.r_rdy):
            m.d.comb += plans.r_en.eq(1)
            m.d.sync += [active.eq(1), q.eq(plan.off),
                         left.eq((plan.nbytes + C - 1) >> lc)]
        word = q[lc:lw] if lw > lc else Const(0, 1)
        m.d.comb += [
            self.out.valid.eq(active & rows.r_rdy),
            self.out.payload.data.eq(rows.r_data.word_select(word, 8 * C)),
            self.out.payload.last.eq(left == 1),
        ]
        with m.If(self.out.valid & self.out.ready):
            m.d.comb += rows.r_en.eq((word == (W // C - 1)) | (left == 1))
            m.d.sync += [q.eq(q + C), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += active.eq(0)

    def _assemble_pairs(self, m, rows, plans, plan_layout):
        """Chunks of two aligned words (the dequantisers' word pairs). A pair starting at a
        row's last word straddles two rows: that word is kept in a one-word carry as the row
        is popped, so the pair comes out of the carry and the next row's first word, still
        one chunk per cycle, with one word of registers where a row window takes two rows."""
        W, A, lw = self.spec.width, self.align, _lane_bits(self.spec)
        R, la = W // A, A.bit_length() - 1
        self._active = active = Signal()
        p = Signal(range(R))              # the chunk's first word in the head row
        left = Signal(LEN_BITS)           # chunks still to emit
        odd = Signal()                    # the segment ends in a single word
        carried = Signal()                # the chunk's first word is in ``carry``
        carry = Signal(8 * A)
        plan = data.View(plan_layout, plans.r_data)
        with m.If(~active & plans.r_rdy):
            n_words = (plan.nbytes + A - 1) >> la
            m.d.comb += plans.r_en.eq(1)
            m.d.sync += [active.eq(1), p.eq(plan.off >> la if lw > la else 0),
                         left.eq((n_words + 1) >> 1), odd.eq(n_words[0]), carried.eq(0)]
        word = [rows.r_data.word_select(i, 8 * A) for i in range(R)]
        last = left == 1
        single = last & odd
        # A segment that starts at a row's last word (with more to come) first moves that
        # word to the carry: one cycle without a chunk.
        stash_first = active & ~carried & (p == R - 1) & ~single
        with m.If(stash_first & rows.r_rdy):
            m.d.comb += rows.r_en.eq(1)
            m.d.sync += [carry.eq(word[R - 1]), carried.eq(1)]
        m.d.comb += [
            # A single word held in the carry needs no row.
            self.out.valid.eq(active & ~stash_first & (rows.r_rdy | (carried & single))),
            self.out.payload.data.eq(Cat(Mux(carried, carry, rows.r_data.word_select(p, 8 * A)),
                                         Mux(carried, word[0],
                                             rows.r_data.word_select(p + 1, 8 * A)))),
            self.out.payload.last.eq(last),
            self.out.payload.single.eq(single),
        ]
        following = Signal(range(R + 2))   # the next chunk's first word in the head row
        m.d.comb += following.eq(Mux(carried, 1, p + 2))
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += left.eq(left - 1)
            with m.If(last):
                m.d.comb += rows.r_en.eq(~(carried & single))
                m.d.sync += [active.eq(0), carried.eq(0)]
            with m.Elif(following == R):
                m.d.comb += rows.r_en.eq(1)
                m.d.sync += [p.eq(0), carried.eq(0)]
            with m.Elif(following == R - 1):
                m.d.comb += rows.r_en.eq(1)
                m.d.sync += [carry.eq(word[R - 1]), carried.eq(1)]
            with m.Else():
                m.d.sync += [p.eq(following), carried.eq(0)]

    def _assemble_window(self, m, rows, plans, plan_layout):
        """Chunks at any byte (or ``align``) position, realigned through a two-row window."""
        W, C, lw = self.spec.width, self.chunk, _lane_bits(self.spec)
        # ---- assembly side: a two-row window (lo = row have-2, hi = row have-1).
        self._active = active = Signal()
        q = Signal(LEN_BITS + 2)          # byte position of the chunk from the first row
        end = Signal(LEN_BITS + 2)        # position of the segment's last byte
        left = Signal(LEN_BITS)           # chunks still to emit
        have = Signal(LEN_BITS + 1)       # rows taken into the window
        lo, hi = Signal(8 * W), Signal(8 * W)
        plan = data.View(plan_layout, plans.r_data)
        with m.If(~active & plans.r_rdy):
            m.d.comb += plans.r_en.eq(1)
            m.d.sync += [active.eq(1), q.eq(plan.off), end.eq(plan.off + plan.nbytes - 1),
                         left.eq((plan.nbytes + C - 1) // C if C & (C - 1)
                                 else (plan.nbytes + C - 1) >> (C.bit_length() - 1)),
                         have.eq(0)]

        last_byte = Mux(q + C - 1 < end, q + C - 1, end)
        rel_b = last_byte >> lw
        take = active & rows.r_rdy & (have <= rel_b)
        m.d.comb += rows.r_en.eq(take)
        win_lo = Mux(take, hi, lo)
        win_hi = Mux(take, rows.r_data, hi)
        have_eff = Mux(take, have + 1, have)
        with m.If(take):
            m.d.sync += [lo.eq(hi), hi.eq(rows.r_data), have.eq(have + 1)]
        shift = Signal(lw + 2)
        m.d.comb += shift.eq(q + 2 * W - (have_eff << lw))
        window = Cat(win_lo, win_hi)
        if self.align > 1:
            # The shift is a whole number of words: select the chunk's words.
            A = self.align
            word = shift[A.bit_length() - 1:]
            chunk_data = Cat(window.word_select(word + j, 8 * A) for j in range(C // A))
        else:
            chunk_data = (window >> (shift * 8))[:8 * C]
        m.d.comb += [
            self.out.valid.eq(active & (have_eff > rel_b)),
            self.out.payload.data.eq(chunk_data),
            self.out.payload.last.eq(left == 1),
        ]
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += [q.eq(q + C), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += active.eq(0)


class ChunkWriter(wiring.Component):
    """Writes chunks of up to ``chunk`` bytes at byte addresses (module docstring).

    One writer can serve ``dests`` buffers of one row width (``spec`` with the deepest one's
    depth; :func:`route_writes` fans its requests out): a unit whose result goes to one buffer
    at a time then needs one row-wide shifter, not one per buffer.

    Ports:
        cmd (In, :func:`write_layout`); dest (In): the buffer of the chunk on ``cmd``;
        req (Out, :func:`~flightllm.hw.bufport.row_request_layout`): to the :class:`PortMux`
        writer slot; req_dest (Out): the buffer ``req`` is for; ``idle`` (Out 1): no write is
        pending, so every chunk taken so far has been accepted by the buffer.
    """

    def __init__(self, spec: BufferSpec, chunk: int, *, dests: int = 1):
        if not isinstance(chunk, int) or not 1 <= chunk <= spec.width:
            raise ValueError(f"chunk must be 1..{spec.width} bytes, not {chunk!r}")
        self.spec, self.chunk = spec, chunk
        super().__init__({
            "cmd": In(stream.Signature(write_layout(chunk))),
            "dest": In(range(max(dests, 2))),
            "req": Out(stream.Signature(row_request_layout(spec))),
            "req_dest": Out(range(max(dests, 2))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W, C, lw = self.spec.width, self.chunk, _lane_bits(self.spec)
        # The chunk placed in a two-row window; the second row is written only if touched.
        second = Signal()
        second_row = Signal(range(self.spec.depth))
        second_data = Signal(8 * W)
        second_be = Signal(W)
        second_dest = Signal.like(self.dest)
        m.d.comb += self.req_dest.eq(Mux(second, second_dest, self.dest))
        p = self.cmd.payload
        off = p.addr[:lw] if lw else Const(0, 1)
        be_all = Signal(2 * W)
        data_all = Signal(16 * W)
        m.d.comb += [be_all.eq(((Const(1, C + 1) << p.nbytes) - 1) << off),
                     data_all.eq(p.data << (off * 8))]
        m.d.comb += self.cmd.ready.eq(~second & self.req.ready)
        with m.If(second):
            m.d.comb += [self.req.valid.eq(1), self.req.payload.addr.eq(second_row),
                         self.req.payload.write.eq(1), self.req.payload.data.eq(second_data),
                         self.req.payload.be.eq(second_be)]
            with m.If(self.req.ready):
                m.d.sync += second.eq(0)
        with m.Else():
            m.d.comb += [self.req.valid.eq(self.cmd.valid & (p.nbytes != 0)),
                         self.req.payload.addr.eq(p.addr[lw:]),
                         self.req.payload.write.eq(1),
                         self.req.payload.data.eq(data_all[:8 * W]),
                         self.req.payload.be.eq(be_all[:W])]
            with m.If(self.cmd.valid & (p.nbytes == 0)):
                m.d.comb += self.cmd.ready.eq(1)
            with m.If(self.cmd.valid & self.cmd.ready & (be_all[W:] != 0)):
                m.d.sync += [second.eq(1), second_row.eq(p.addr[lw:] + 1),
                             second_dest.eq(self.dest),
                             second_data.eq(data_all[8 * W:]), second_be.eq(be_all[W:])]
        m.d.comb += self.idle.eq(~second)
        return m


def route_writes(m: Module, writer: ChunkWriter, slots: list) -> None:
    """Connect a shared :class:`ChunkWriter` to the :class:`PortMux` writer slots of the
    buffers it serves (``slots[k]`` for ``dest == k``; their depths may be smaller)."""
    route_requests(m, writer.req, writer.req_dest, slots)


class PortMux(wiring.Component):
    """``readers`` :class:`ByteReader` slots and ``writers`` :class:`ChunkWriter` slots on one
    row client, round-robin, one request per cycle.

    Ports:
        readers (array): ``req`` (In row numbers), ``rsp`` (Out rows); writers (array of In
        request streams); port (Out, the row client).
    """

    def __init__(self, spec: BufferSpec, readers: int, *, writers: int = 1):
        if readers + writers < 1:
            raise ValueError("a port multiplexer needs at least one reader or writer")
        self.spec, self.n_readers, self.n_writers = spec, readers, writers
        slot = wiring.Signature({"req": In(stream.Signature(range(spec.depth))),
                                 "rsp": Out(stream.Signature(8 * spec.width))})
        super().__init__({
            "readers": Out(slot).array(readers),
            "writers": In(stream.Signature(row_request_layout(spec))).array(writers),
            "port": Out(row_client_signature(spec)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n_readers + self.n_writers
        reqs = []
        for r in self.readers:
            req = Signal(row_request_layout(self.spec))
            m.d.comb += req.addr.eq(r.req.payload)
            reqs.append((r.req, req))
        for w in self.writers:
            reqs.append((w, w.payload))
        tag_bits = max(n - 1, 1).bit_length()
        m.submodules.tags = tags = SyncFIFO(width=tag_bits, depth=4)

        last = Signal(range(max(n, 2)), init=n - 1)
        grant = Signal(range(max(n, 2)))
        granted = Signal()
        for offset in reversed(range(n)):
            for i in range(n):
                with m.If((last + 1 + offset) % n == i if n > 1 else i == 0):
                    with m.If(reqs[i][0].valid):
                        m.d.comb += [grant.eq(i), granted.eq(1)]
        port = self.port
        with m.Switch(grant):
            for i, (s, payload) in enumerate(reqs):
                with m.Case(i):
                    m.d.comb += [port.req.payload.eq(payload),
                                 s.ready.eq(port.req.ready & tags.w_rdy)]
        m.d.comb += port.req.valid.eq(granted & tags.w_rdy)
        accepted = port.req.valid & port.req.ready
        with m.If(accepted):
            m.d.sync += last.eq(grant)
        m.d.comb += [tags.w_en.eq(accepted & ~port.req.payload.write), tags.w_data.eq(grant)]
        m.d.comb += [port.rsp.ready.eq(1), tags.r_en.eq(port.rsp.valid)]
        for i, r in enumerate(self.readers):
            m.d.comb += [r.rsp.valid.eq(port.rsp.valid & (tags.r_data == i)),
                         r.rsp.payload.eq(port.rsp.payload)]
        return m
