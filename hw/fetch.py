"""Instruction fetch and decode: AXI bursts of program words, decoded with the contract's layouts.

:class:`InstructionFetch` reads one core's word stream (``prog_words`` words from word
``prog_offset`` of the program buffer) over an AXI4 read port in bursts that never cross a
4 KiB boundary, serialises the beats into words, and decodes one instruction at a time:

1. gather the fixed words (their count follows from the opcode in word 0) and ``nbind``
   binding words;
2. check what :func:`flightllm.contract.isa.decode` checks: a known opcode, enum fields within
   their enum, reserved bits clear, no queue waiting on or releasing to itself, binding targets
   that name a bindable field;
3. apply the binding words one per cycle against the SEQ/KV/POS length registers, exactly as
   :func:`flightllm.contract.isa.apply_bindings` does (COUNT: ``min(field, ceil(t / 2**shift))``,
   OFFSET: ``field + (t << shift)``, ``t = max(reg - base, 0)``); a result that no longer fits
   its field is an ADDRESS error rather than a silent wrap;
4. hand the instruction (opcode, word index, fixed part) on through ``out``.

Every field offset and width comes from :mod:`flightllm.hw.isa_layouts`, which derives them from
:data:`flightllm.contract.isa.OPCODES`.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import (
    BINDING_FIELDS, HEADER, MAX_BINDINGS, OPCODES, WORD_BITS, LengthReg, Opcode,
)
from flightllm.contract.isa import BINDING_LAYOUT as BINDING_OFFSETS
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.axi import axi4_read_signature, burst_beats
from flightllm.hw.isa_layouts import HEADER_LAYOUT, max_instruction_words

__all__ = ["decoded_layout", "InstructionFetch", "FETCH_BURST"]

#: Beats per instruction-fetch burst.
FETCH_BURST = 16
_MAX_FIXED_BITS = max_instruction_words() * WORD_BITS


def decoded_layout() -> data.StructLayout:
    """A decoded instruction: opcode, index of its first word, fixed part (bindings applied)."""
    return data.StructLayout({"op": 3, "word": 32, "bits": _MAX_FIXED_BITS})


def _field_mask(fields, offsets) -> int:
    mask = 0
    for f in fields:
        mask |= ((1 << f.width) - 1) << offsets[f.name]
    return mask


class InstructionFetch(wiring.Component):
    """Fetch, decode and binding resolution for one core.

    Args:
        cfg: the accelerator configuration (AXI data width).

    Ports:
        start: pulse: begin fetching with the current ``base``/``offset``/``words``.
        base: program buffer base address (the ``instr`` pointer argument).
        offset, words: the core's first word and word count.
        seq, kv, pos: the length registers.
        axi: AXI4 read port to the program buffer.
        out: decoded instructions (:func:`decoded_layout`).
        finished: every word was decoded and handed on.
        error, error_word: an :class:`~flightllm.contract.regmap.ErrorCode` (DECODE, ADDRESS for
            a binding that overflows its field, AXI for a bad read response) and the word index
            of the offending instruction; the unit stops at the first error.
        progress: a word was taken this cycle (for the watchdog).
        axi_idle: no instruction burst is in flight.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        self.beat_bits = 32 * ((cfg.axi_data_bits + 31) // 32)
        super().__init__({
            "start": In(1), "base": In(64), "offset": In(32), "words": In(32),
            "seq": In(32), "kv": In(32), "pos": In(32),
            "axi": Out(axi4_read_signature(64, self.beat_bits)),
            "out": Out(stream.Signature(decoded_layout())),
            "finished": Out(1), "error": Out(3), "error_word": Out(32), "progress": Out(1),
            "axi_idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        word_stream, words_done, axi_error = self._fetch(m)
        self._decode(m, word_stream, words_done, axi_error)
        return m

    # ------------------------------------------------------------------ AXI -> words
    def _fetch(self, m):
        beat_bytes = self.beat_bits // 8
        lanes = self.beat_bits // WORD_BITS
        lane_bits = (lanes - 1).bit_length()
        m.submodules.beats = beats = SyncFIFOBuffered(width=self.beat_bits, depth=2 * FETCH_BURST)
        axi = self.axi

        start_addr = Signal(64)
        m.d.comb += start_addr.eq(self.base + (self.offset << 2))
        beats_left = Signal(33)      # beats still to request
        next_addr = Signal(64)
        words_left = Signal(32)      # words still to hand to the decoder
        lane = Signal(max(lane_bits, 1))
        in_flight = Signal()
        axi_error = Signal()

        with m.If(self.start):
            span = (start_addr[:lane_bits + 2] if lane_bits else 0) + (self.words << 2)
            m.d.sync += [
                next_addr.eq(start_addr & ~(beat_bytes - 1)),
                beats_left.eq((span + beat_bytes - 1) >> (beat_bytes.bit_length() - 1)),
                words_left.eq(self.words),
                lane.eq(start_addr[2:2 + lane_bits] if lane_bits else 0),
                in_flight.eq(0), axi_error.eq(0),
            ]

        # One burst in flight; a new one only when the beat FIFO has room for all of it.
        nbeats = burst_beats(next_addr, beats_left, beat_bytes, FETCH_BURST)
        m.d.comb += [
            axi.araddr.eq(next_addr), axi.arlen.eq(nbeats - 1),
            axi.arsize.eq(beat_bytes.bit_length() - 1), axi.arburst.eq(1),
            axi.arvalid.eq(~self.start & ~in_flight & (beats_left != 0)
                           & (beats.level <= 2 * FETCH_BURST - FETCH_BURST)),
        ]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += [in_flight.eq(1), next_addr.eq(next_addr + nbeats * beat_bytes),
                         beats_left.eq(beats_left - nbeats)]
        m.d.comb += [beats.w_data.eq(axi.rdata), beats.w_en.eq(axi.rvalid),
                     axi.rready.eq(beats.w_rdy)]
        with m.If(axi.rvalid & axi.rready):
            with m.If(axi.rresp != 0):
                m.d.sync += axi_error.eq(1)
            with m.If(axi.rlast):
                m.d.sync += in_flight.eq(0)

        m.d.comb += self.axi_idle.eq(~in_flight)
        # Serialise beats into words, skipping the lanes before the first word.
        word_stream = stream.Signature(32).create()
        m.d.comb += [word_stream.valid.eq(beats.r_rdy & (words_left != 0)),
                     word_stream.payload.eq(beats.r_data.word_select(lane, 32)
                                            if lanes > 1 else beats.r_data)]
        with m.If(word_stream.valid & word_stream.ready):
            m.d.sync += words_left.eq(words_left - 1)
            if lanes > 1:
                m.d.sync += lane.eq(lane + 1)
            last_lane = (lane == lanes - 1) if lanes > 1 else C(1)
            m.d.comb += beats.r_en.eq(last_lane | (words_left == 1))
        # Beats past the last word (none are requested) cannot exist; drain nothing else.
        words_done = Signal()
        m.d.comb += words_done.eq(words_left == 0)
        return word_stream, words_done, axi_error

    # ------------------------------------------------------------------ decode
    def _decode(self, m, words, words_done, axi_error):
        ops = list(OPCODES)
        fixed = Signal(_MAX_FIXED_BITS)
        binds = Signal(MAX_BINDINGS * WORD_BITS)
        op = Signal(4)
        nbind = Signal(2)
        need = Signal(range(max_instruction_words(bindings=True) + 1))
        count = Signal.like(need)
        word_index = Signal(32)     # index of the next word in the core's stream
        ins_word = Signal(32)       # first word of the instruction being decoded
        bind_i = Signal(2)
        error = self.error

        head = data.View(HEADER_LAYOUT, words.payload)
        fixed_words = Array(C(OPCODES[o].words, 5) if o in OPCODES else C(0, 5)
                            for o in range(8))
        op_known = Signal()
        m.d.comb += op_known.eq(Value.cast(head.opcode) < len(ops))

        m.d.comb += self.progress.eq(words.valid & words.ready)
        with m.If(self.start):
            m.d.sync += [word_index.eq(0), error.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "GATHER0"
            with m.State("GATHER0"):
                m.d.comb += words.ready.eq(error == 0)
                with m.If(axi_error & (error == 0)):
                    m.d.sync += [error.eq(ErrorCode.AXI), self.error_word.eq(word_index)]
                with m.Elif(words.valid & (error == 0)):
                    m.d.sync += [word_index.eq(word_index + 1), ins_word.eq(word_index),
                                 fixed.eq(words.payload), binds.eq(0), op.eq(head.opcode),
                                 nbind.eq(head.nbind), count.eq(1),
                                 need.eq(fixed_words[Value.cast(head.opcode)[:3]] + head.nbind)]
                    with m.If(~op_known):
                        m.d.sync += [error.eq(ErrorCode.DECODE), self.error_word.eq(word_index)]
                    with m.Else():
                        m.next = "GATHER"
                m.d.comb += self.finished.eq(words_done & ~words.valid & (error == 0))
            with m.State("GATHER"):
                m.d.comb += words.ready.eq(count != need)
                nfixed = fixed_words[op[:3]]
                with m.If(count == need):
                    m.next = "CHECK"
                with m.Elif(words.valid):
                    m.d.sync += [word_index.eq(word_index + 1), count.eq(count + 1)]
                    with m.Switch(count):
                        for i in range(1, max_instruction_words(bindings=True)):
                            with m.Case(i):
                                self._store_word(m, i, nfixed, fixed, binds, words.payload)
                with m.Elif(words_done):
                    # The stream ends inside the instruction.
                    m.d.sync += [error.eq(ErrorCode.DECODE), self.error_word.eq(ins_word)]
                    m.next = "GATHER0"
            with m.State("CHECK"):
                bad = self._bad_fields(m, op, fixed, binds, nbind)
                with m.If(bad):
                    m.d.sync += [error.eq(ErrorCode.DECODE), self.error_word.eq(ins_word)]
                    m.next = "GATHER0"
                with m.Elif(nbind != 0):
                    m.d.sync += bind_i.eq(0)
                    m.next = "BIND"
                with m.Else():
                    m.next = "EMIT"
            with m.State("BIND"):
                overflow = self._bind(m, op, fixed, binds.word_select(bind_i, 32))
                with m.If(overflow):
                    m.d.sync += [error.eq(ErrorCode.ADDRESS), self.error_word.eq(ins_word)]
                    m.next = "GATHER0"
                with m.Elif(bind_i + 1 == nbind):
                    m.next = "EMIT"
                with m.Else():
                    m.d.sync += bind_i.eq(bind_i + 1)
            with m.State("EMIT"):
                # Bindings are resolved: the instruction leaves with nbind = 0, as
                # apply_bindings returns it.
                nbind_mask = _field_mask([f for f in HEADER if f.name == "nbind"],
                                         OPCODES[Opcode.LD].layout)
                m.d.comb += [self.out.valid.eq(1), self.out.p.op.eq(op),
                             self.out.p.word.eq(ins_word), self.out.p.bits.eq(fixed & ~nbind_mask)]
                with m.If(self.out.ready):
                    m.next = "GATHER0"

    @staticmethod
    def _store_word(m, i, nfixed, fixed, binds, word):
        """Word ``i`` of an instruction goes to the fixed part or to binding word i - nfixed."""
        def to_binding():
            for j in range(MAX_BINDINGS):
                with m.If(i - nfixed == j):
                    m.d.sync += binds.word_select(j, 32).eq(word)
        if i >= max_instruction_words():
            to_binding()
            return
        with m.If(i < nfixed):
            m.d.sync += fixed.word_select(i, 32).eq(word)
        with m.Else():
            to_binding()

    def _bad_fields(self, m, op, fixed, binds, nbind) -> Value:
        """Any check of the contract's decoder that fails for the gathered words."""
        bad = Signal()
        with m.Switch(op):
            for o, spec in OPCODES.items():
                with m.Case(int(o)):
                    conds = []
                    used = _field_mask(spec.all_fields, spec.layout)
                    width = spec.words * WORD_BITS
                    conds.append((fixed[:width] & ~used) != 0)
                    for f in spec.fields:
                        if f.enum is not None:
                            v = fixed[spec.layout[f.name]:spec.layout[f.name] + f.width]
                            conds.append(~Cat(*(v == int(e) for e in f.enum)).any())
                    for mask in ("wait", "release"):
                        conds.append(fixed[spec.layout[mask] + int(o)])
                    for j in range(MAX_BINDINGS):
                        w = binds.word_select(j, 32)
                        bmask = _field_mask(BINDING_FIELDS, BINDING_OFFSETS)
                        reg = w[BINDING_OFFSETS["reg"]:BINDING_OFFSETS["reg"] + 2]
                        tgt = w[BINDING_OFFSETS["target"]:BINDING_OFFSETS["target"] + 5]
                        conds.append((j < nbind) & (((w & ~bmask) != 0)
                                                    | (reg >= len(LengthReg))
                                                    | (tgt >= len(spec.bindable))))
                    m.d.comb += bad.eq(Cat(*conds).any())
        return bad

    def _bind(self, m, op, fixed, word) -> Value:
        """Apply one binding word to ``fixed`` (next cycle); returns the overflow condition."""
        def part(name):
            off = BINDING_OFFSETS[name]
            width = next(f.width for f in BINDING_FIELDS if f.name == name)
            return word[off:off + width]
        kind, reg, target, shift, base = (part(n) for n in ("kind", "reg", "target", "shift",
                                                            "base"))
        regs = Array([self.seq, self.kv, self.pos, C(0, 32)])
        t = Signal(32)
        diff = Signal(signed(34))
        m.d.comb += diff.eq(regs[reg] - base)
        m.d.comb += t.eq(Mux(diff < 0, 0, diff))
        count = Signal(33)
        m.d.comb += count.eq((t + (C(1, 33) << shift) - 1) >> shift)
        offset = Signal(64)
        m.d.comb += offset.eq(t << shift)
        overflow = Signal()
        with m.Switch(op):
            for o, spec in OPCODES.items():
                with m.Case(int(o)):
                    with m.Switch(target):
                        for i, name in enumerate(spec.bindable):
                            f = spec.field(name)
                            lo = spec.layout[name]
                            with m.Case(i):
                                raw = fixed[lo:lo + f.width]
                                value = raw.as_signed() if f.signed else raw
                                res = Signal(signed(67), name=f"bind_{o.name}_{name}")
                                with m.If(kind == 0):   # COUNT
                                    m.d.comb += res.eq(Mux(value < count, value, count))
                                with m.Else():          # OFFSET
                                    m.d.comb += res.eq(value + offset)
                                m.d.comb += overflow.eq((res < f.lo) | (res > f.hi))
                                m.d.sync += fixed[lo:lo + f.width].eq(res[:f.width])
        return overflow
