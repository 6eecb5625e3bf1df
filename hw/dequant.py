"""The dequantiser: packed weight bytes in, the DSP chain's (INT8 weight, index) beats out.

It reads the block format of ``flightllm/contract/weights.py`` as 64-bit little-endian words
(every code table and block is a multiple of 8 bytes, so nothing straddles a word):

* per strip, when the matrix is sparse, the code table (one byte per block, padded to 8 bytes)
  into a small code memory;
* per block, the optional 8-byte multiplier word (16 nibbles ``m - 1``), the ``N`` index words
  when ``N < 16`` (16 x N nibbles, row-major), then ``N * bits / 4`` value words.

Values go through a bit buffer and leave as beats of :func:`~flightllm.hw.dsp_chain.
weight_beat_layout` (``mv_k`` slots = ``mv_k / N`` block rows of ``N`` pairs each), the chain's
input format: slot ``j`` of pass ``p`` is entry ``j % N`` of row ``p * mv_k / N + j // N`` with
weight ``v * m`` (``m = 1`` without multipliers) and its 4-bit column (``j % 16`` when dense).

Throughput: ``dequant_words`` (W, 1 or 2) words per cycle in, one beat per cycle out. A
block's first header word is taken in the cycle that selects the block, once the block before
has put out its last beat; its other header words and its value words follow W per cycle (the
code table one word per cycle). So with one word per cycle a block with a header costs one
cycle per word, and a block without one (dense, no multipliers) one extra cycle to select it
(plus one more for 2-bit weights, whose words carry two beats); with two, a block costs
``1 + ceil((header - 1) / 2) + ceil(values / 2)`` cycles (9 for a dense 4-bit block with
multipliers, 17 words) when the beats keep up. A matrix is described by one command beat; a
code byte above 3, a weight width other than 2/4/8 or multipliers on 8-bit weights set the
sticky ``format_error`` output (cleared by the next command) and the block is read as
``code & 3``.

With two words per cycle the input beat is :func:`words_layout`: two words, the first in the
low bits, and ``single`` when only the first is meant (a strip of an odd number of words ends
so). They go through a four-word queue, so a block boundary inside a beat costs nothing.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BLOCK, AcceleratorConfig
from flightllm.contract.weights import SPARSITY_CODES

from .dsp_chain import check_chain_config, mux_tree, weight_beat_layout

__all__ = ["Dequantiser", "COMMAND_LAYOUT", "WORD_BITS", "words_layout", "words_shape"]

#: Input word width; the block format is 8-byte aligned.
WORD_BITS = 64

#: One matrix: weight bits (2, 4 or 8), sparse (code tables present), gscale (multipliers),
#: K blocks per strip and strips.
COMMAND_LAYOUT = data.StructLayout({
    "bits": unsigned(4), "sparse": unsigned(1), "gscale": unsigned(1),
    "k_blocks": unsigned(16), "n_strips": unsigned(16),
})

_BITS = (2, 4, 8)


def words_layout(words: int) -> data.StructLayout:
    """An input beat of ``words`` (2) words: ``data`` (word 0 in the low bits) and ``single``,
    set when only word 0 is meant."""
    return data.StructLayout({"data": WORD_BITS * words, "single": 1})


def words_shape(config: AcceleratorConfig):
    """The dequantiser's input payload: one 64-bit word, or :func:`words_layout` when
    ``config.dequant_words`` is 2."""
    return unsigned(WORD_BITS) if config.dequant_words == 1 else words_layout(config.dequant_words)


class Dequantiser(wiring.Component):
    """Parses packed weight matrices into DSP-chain weight beats.

    Args:
        config: the accelerator configuration (``mv_k`` sets the beat width).
        max_k_blocks: largest K (in 16-wide blocks) a sparse strip may have: the size of the
            code-table memory.

    Ports:
        cmd (In stream of :data:`COMMAND_LAYOUT`): one beat per matrix.
        words (In stream of :func:`words_shape`): the packed bytes, little-endian.
        weights (Out stream of ``weight_beat_layout(config.mv_k)``).
        format_error (Out 1): sticky, see the module docstring.
    """

    def __init__(self, config: AcceleratorConfig, *, max_k_blocks: int = 1024):
        check_chain_config(config)
        if not isinstance(max_k_blocks, int) or max_k_blocks < 8 or max_k_blocks % 8:
            raise ValueError(f"max_k_blocks must be a positive multiple of 8, not "
                             f"{max_k_blocks!r}")
        self.mv_k = config.mv_k
        self.n_words = config.dequant_words
        self.max_k_blocks = max_k_blocks
        super().__init__({
            "cmd": In(stream.Signature(COMMAND_LAYOUT)),
            "words": In(stream.Signature(words_shape(config))),
            "weights": Out(stream.Signature(weight_beat_layout(config.mv_k))),
            "format_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        K, W = self.mv_k, self.n_words
        units_cap = (K * 8 + W * WORD_BITS) // 32   # value buffer size in 32-bit units
        # The parser sets ``want`` (words it would take this cycle); it takes ``take``, which
        # is that or what is available, and reads them as ``head[0]``, ``head[1]``.
        want = Signal(range(W + 1))
        take = Signal(range(W + 1))
        head = self._word_source(m, want, take)
        word = head[0]

        m.submodules.codes = codes = Memory(shape=unsigned(2 * 8), depth=self.max_k_blocks // 8,
                                            init=[])
        code_wr = codes.write_port()
        code_rd = codes.read_port(domain="comb")

        cfg = Signal(COMMAND_LAYOUT)
        strip = Signal(16)
        k = Signal(16)              # next block of the strip to start
        tword = Signal(range(self.max_k_blocks // 8 + 1))
        blk_code = Signal(2)
        blk_first = Signal()
        blk_last = Signal()
        mult = Signal(64)
        idx_store = Signal(8 * 64)  # up to N = 8: 16 x 8 nibbles
        idx_cnt = Signal(4)
        vwords = Signal(range(2 * BLOCK + 1))
        vcnt = Signal(range(units_cap + 1))
        ep = Signal(4)              # pass of the block being emitted
        out = Signal(weight_beat_layout(K))
        out_valid = Signal()

        # ------------------------------------------------------------ value buffer
        # A ring of 32-bit units: words are written at ``wunit`` (always even: a word is two
        # units), beats read a window of ``K * bits / 32`` units from ``runit``. Nothing moves,
        # so a unit register loads only when a word lands on it, and the only multiplexer is
        # the window's, over the positions ``runit`` can take (multiples of ``step``).
        step = min(K * bits // 32 for bits in _BITS)        # units every pass consumes
        ring = 1 << (units_cap - 1).bit_length()
        units = [Signal(32, name=f"vunit{u}", reset_less=True) for u in range(ring)]
        wword = Signal(range(ring // 2))                    # next word's position, in words
        rpos = Signal(range(ring // step))                  # window start, in steps
        window = Signal(K * 8)
        for w in range(K * 8 // 32):
            m.d.comb += window.word_select(w, 32).eq(
                mux_tree([units[(r * step + w) % ring] for r in range(ring // step)], rpos))

        # ------------------------------------------------------------ emitting beats
        pass_units = Signal(range(units_cap + 1))
        with m.Switch(cfg.bits):
            for bits in _BITS:
                with m.Case(bits):
                    m.d.comb += pass_units.eq(K * bits // 32)
            with m.Default():
                m.d.comb += pass_units.eq(K * 8 // 32)
        can_emit = vcnt >= pass_units
        emit = can_emit & (~out_valid | self.weights.ready)

        beat = Signal(weight_beat_layout(K))
        m.d.comb += [beat.code.eq(blk_code), beat.first.eq(blk_first), beat.last.eq(blk_last)]
        for j in range(K):
            # ``mult`` moves down by a pass's rows after every beat (below), so the row of
            # slot j is always nibble j // N.
            nibble = Signal(4, name=f"mnib{j}")
            with m.Switch(blk_code):
                for code, n in enumerate(SPARSITY_CODES):
                    with m.Case(code):
                        m.d.comb += nibble.eq(mult.word_select(j // n, 4))
            mul = Signal(5, name=f"mul{j}")
            m.d.comb += mul.eq(Mux(cfg.gscale, nibble + 1, 1))
            v = Signal(signed(8), name=f"val{j}")
            with m.Switch(cfg.bits):
                with m.Case(2):
                    m.d.comb += v.eq(window[2 * j:2 * j + 2].as_signed() * mul)
                with m.Case(4):
                    m.d.comb += v.eq(window[4 * j:4 * j + 4].as_signed() * mul)
                with m.Default():
                    m.d.comb += v.eq(window[8 * j:8 * j + 8].as_signed())
            chunk = idx_store.word_select(ep, K * 4)
            m.d.comb += [
                beat.w[j].eq(v),
                beat.idx[j].eq(Mux(blk_code == 3, j % BLOCK, chunk[4 * j:4 * j + 4])),
            ]
        with m.If(emit):
            m.d.sync += [out.eq(beat), out_valid.eq(1), ep.eq(ep + 1),
                         rpos.eq(rpos + pass_units // step)]
            with m.Switch(blk_code):
                for code, n in enumerate(SPARSITY_CODES):
                    with m.Case(code):
                        m.d.sync += mult.eq(mult >> (4 * (K // n)))
        with m.Elif(self.weights.ready):
            m.d.sync += out_valid.eq(0)
        m.d.comb += [self.weights.valid.eq(out_valid), self.weights.payload.eq(out)]

        cnt_after = Signal.like(vcnt)
        m.d.comb += cnt_after.eq(vcnt - Mux(emit, pass_units, 0))
        in_values = Signal()
        with m.If(in_values & (take != 0)):
            for j in range(W):
                with m.If(take > j):
                    for i in range(ring // 2):
                        with m.If((wword + j)[:len(wword)] == i):
                            m.d.sync += [units[2 * i].eq(head[j][:32]),
                                         units[2 * i + 1].eq(head[j][32:])]
            m.d.sync += [wword.eq(wword + take), vcnt.eq(cnt_after + take * (WORD_BITS // 32))]
        with m.Else():
            m.d.sync += vcnt.eq(cnt_after)

        # ------------------------------------------------------------ parser
        table_words = (cfg.k_blocks + 7) >> 3
        drained = (vcnt == 0) | ((vcnt == pass_units) & emit)
        start_code = Signal(2)
        start_n_words = Signal(range(2 * BLOCK + 1))      # value words of the starting block
        m.d.comb += code_rd.addr.eq(k >> 3)
        with m.If(cfg.sparse):
            m.d.comb += start_code.eq(code_rd.data.word_select(k[:3], 2))
        with m.Else():
            m.d.comb += start_code.eq(3)
        with m.Switch(start_code):
            for code, n in enumerate(SPARSITY_CODES):
                with m.Case(code):
                    with m.Switch(cfg.bits):
                        for bits in _BITS[:-1]:
                            with m.Case(bits):
                                m.d.comb += start_n_words.eq(n * bits // 4)
                        with m.Default():
                            m.d.comb += start_n_words.eq(n * 8 // 4)

        def take_multipliers(code):
            # The block's multiplier word; its index words follow unless it is dense.
            m.d.sync += mult.eq(word)
            with m.If(code != 3):
                m.next = "INDEX"
            with m.Else():
                m.next = "VALUES"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    bad = ((c.bits != 2) & (c.bits != 4) & (c.bits != 8)
                           | c.gscale & (c.bits == 8))
                    m.d.sync += [cfg.eq(c), strip.eq(0), k.eq(0), tword.eq(0),
                                 self.format_error.eq(bad)]
                    with m.If(c.sparse):
                        m.next = "TABLE"
                    with m.Else():
                        m.next = "BLOCK"
            with m.State("TABLE"):
                m.d.comb += want.eq(1)
                m.d.comb += [code_wr.addr.eq(tword), code_wr.en.eq(take != 0),
                             code_wr.data.eq(Cat(word.word_select(i, 8)[:2] for i in range(8)))]
                with m.If(take != 0):
                    with m.If(Cat(word.word_select(i, 8)[2:] for i in range(8)).any()):
                        m.d.sync += self.format_error.eq(1)
                    m.d.sync += tword.eq(tword + 1)
                    with m.If(tword == table_words - 1):
                        m.next = "BLOCK"
            with m.State("BLOCK"):
                # Wait until the previous block's beats are out, then start block k.
                with m.If(drained):
                    with m.If(k == cfg.k_blocks):
                        m.d.sync += [k.eq(0), tword.eq(0), strip.eq(strip + 1)]
                        with m.If(strip == cfg.n_strips - 1):
                            m.next = "IDLE"
                        with m.Elif(cfg.sparse):
                            m.next = "TABLE"
                    with m.Else():
                        m.d.sync += [
                            blk_code.eq(start_code), blk_first.eq(k == 0),
                            blk_last.eq(k == cfg.k_blocks - 1), k.eq(k + 1), ep.eq(0),
                            idx_cnt.eq(0), vwords.eq(start_n_words),
                        ]
                        # The block's first header word (its multipliers, else its first
                        # index word) is taken in this cycle too: the emitter is done with
                        # the last block's header once ``drained``, and the switch then
                        # costs no cycle of its own (17 for a 4-bit block with multipliers,
                        # one per word).
                        has_header = cfg.gscale | (start_code != 3)
                        m.d.comb += want.eq(has_header)
                        with m.If(has_header & (take != 0)):
                            with m.If(cfg.gscale):
                                take_multipliers(start_code)
                            with m.Else():
                                m.d.sync += [idx_store.word_select(0, 64).eq(word),
                                             idx_cnt.eq(1)]
                                m.next = "INDEX"
                        with m.Elif(cfg.gscale):
                            m.next = "MULT"
                        with m.Elif(start_code != 3):
                            m.next = "INDEX"
                        with m.Else():
                            m.next = "VALUES"
            with m.State("MULT"):
                m.d.comb += want.eq(1)
                with m.If(take != 0):
                    take_multipliers(blk_code)
            with m.State("INDEX"):
                idx_left = Signal(5)
                m.d.comb += [idx_left.eq((Const(2, 5) << blk_code) - idx_cnt),
                             want.eq(Mux(idx_left < W, idx_left, W))]
                with m.If(take != 0):
                    for j in range(W):
                        with m.If(take > j):
                            m.d.sync += idx_store.word_select(idx_cnt + j, 64).eq(head[j])
                    m.d.sync += idx_cnt.eq(idx_cnt + take)
                    with m.If(take == idx_left):
                        m.next = "VALUES"
            with m.State("VALUES"):
                room = vcnt + W * (WORD_BITS // 32) <= units_cap
                m.d.comb += [in_values.eq(1),
                             want.eq(Mux(room, Mux(vwords < W, vwords, W), 0))]
                with m.If(take != 0):
                    m.d.sync += vwords.eq(vwords - take)
                    with m.If(vwords == take):
                        m.next = "BLOCK"
        return m

    def _word_source(self, m, want, take):
        """Drive ``take`` from ``want`` and the input; return the words at the head.

        One word per cycle: the input stream itself (ready when the parser wants a word).
        Two: a queue of four words, filled a beat (one or two words) at a time while the
        words left after this cycle's take leave room for two more.
        """
        if self.n_words == 1:
            m.d.comb += [self.words.ready.eq(want != 0),
                         take.eq(Mux(self.words.valid, want, 0))]
            return [self.words.payload]
        beat = self.words.payload
        queue = [Signal(WORD_BITS, name=f"queue{i}", reset_less=True) for i in range(4)]
        first = Signal(2)                           # queue position of the head word
        level = Signal(range(5))
        m.d.comb += take.eq(Mux(want <= level, want, level))
        head = [mux_tree(queue, first), mux_tree(queue[1:] + queue[:1], first)]
        m.d.comb += self.words.ready.eq(level - take <= 2)
        push = self.words.valid & self.words.ready
        n_in = Mux(beat.single, 1, 2)
        tail = Signal(2)
        m.d.comb += tail.eq(first + level)
        with m.If(push):
            for i in range(4):
                with m.If(tail == i):
                    m.d.sync += queue[i].eq(beat.data[:WORD_BITS])
                with m.Elif(~beat.single & ((tail + 1)[:2] == i)):
                    m.d.sync += queue[i].eq(beat.data[WORD_BITS:])
        m.d.sync += [first.eq(first + take), level.eq(level - take + Mux(push, n_in, 0))]
        return head
