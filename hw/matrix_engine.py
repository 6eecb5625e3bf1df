"""The matrix engine: the arithmetic of one MM or MV instruction, stream in, result rows out.

``chains`` (default ``config.mv_rows``, a power of two) configurable sparse DSP chains
(:class:`~flightllm.hw.dsp_chain.DSPChain`) each get their own dequantiser
(:class:`~flightllm.hw.dequant.Dequantiser`) and work on different 16-row output strips: strip
``s`` goes to chain ``s % chains``. Around them:

* **Token pairs.** A chain multiplies every weight by two activations (its two packed lanes).
  MV (decode) has one token: lane 1 idles. MM (prefill) walks its ``m_rows`` token rows in
  pairs ``(2p, 2p + 1)``, and the pairs in groups of ``pair_group`` (``mm_pair_group``); every
  group streams the weights again (the instruction's loop is group, strip, K block), and each
  chain runs every weight pass once per pair of the group, with a bank of accumulators per
  pair. With groups of one the chains are weight-streaming, like the MV engine. An odd last
  row leaves lane 1 of the last pair unused; the last group may be short.
* **Activation store.** The ``acts`` stream delivers each pair's K blocks once (both token rows
  of a block per beat) into a two-slot memory, a group per slot (a word holds a block of every
  pair of the group); every chain reads its blocks from it through its own read port at its own
  pace (a chain's blocks take ``16 N / mv_k`` cycles per pair each, so chains drift apart on
  sparse matrices). The next group loads into the other slot while the chains work; a slot is
  refilled once every chain has read its last block from it.
* **Output stage.** Strip results are taken in output order (group, strip, pair, token) and go
  through a four-stage pipeline at one 16-channel row per cycle: ``+ psum`` (optional), then
  in Q8/Q32 mode ``+ bias``, ``* mult``, ``rshift_round(., shift)`` (round half up, computed as
  ``((x >> (shift - 1)) + 1) >> 1``), relu, saturation to INT8 or INT32 and, in Q32 mode with
  ``residual``, ``sat32(y + residual)``; in ACC32 mode ``sat32(acc + psum)``. This is
  :func:`flightllm.contract.numerics.requantize` and ``sim/execute.py``'s ``exec_matrix`` bit
  for bit. The accumulators wrap modulo 2**32 (the compiler keeps K sums within INT32).
* **Summed rows.** An MM with ``sum_rows`` (``m_rows = 2``, Q32, per-channel records: one
  vector's two INT8 digits in the chains' two lanes, one weight pass) requantises each
  token with its own records and adds the two into one result row,
  ``sat32(sat32(residual + y0) + y1)`` (``residual`` 0 without the flag): token 0's value
  waits in a register of the last stage until token 1's arrives (not necessarily on the next
  cycle), and only the sum leaves the engine, still one row per cycle.

Streams (``lib.stream``, all valid/ready; bytes are little-endian in every payload, so each
payload is the buffer bytes it came from):

* ``cmd`` (:data:`COMMAND_LAYOUT`): the instruction's arithmetic fields (addresses are the
  readers' and writers' business). ``mv`` selects MV; MM with ``m_rows = 0`` or any instruction
  with ``n_strips = 0`` produces nothing. ``k_blocks`` must be 1..``max_k_blocks``;
  ``sum_rows`` must come with ``m_rows = 2``, Q32 and no ``p_uniform`` (the unit checks).
* ``words[c]`` (:func:`~flightllm.hw.dequant.words_shape`): chain ``c``'s weight bytes: for
  every group of pairs, the strips ``c, c + chains, ...`` of the packed matrix (each from its
  first byte), 8 bytes per beat, or two words per beat with ``dequant_words = 2`` (a strip of
  an odd number of words ending in a ``single`` beat).
* ``acts`` (:func:`~flightllm.hw.dsp_chain.act_beat_layout` of one pair): per pair, per K block, 16 INT8
  of row ``2p`` (lane 0) and of row ``2p + 1`` (lane 1, ignored when the pair has one row).
* ``params`` (:data:`PARAMS_LAYOUT`, 16 requantisation records): Q8/Q32 only; one beat per
  (group, strip) with the strip's 16 records, or with ``p_uniform`` one beat per instruction
  whose record 0 serves every channel; with ``sum_rows`` two beats per strip, token 0's
  records then token 1's.
* ``psum`` and ``residual`` (:data:`ROW_LAYOUT`, 16 INT32): one beat per token row and strip
  when the instruction has ``psum`` (partial sums), or ``residual`` in Q32 mode (the INT32
  values at the result's address; with ``sum_rows`` one beat per strip, the result row's);
  ``residual`` and ``relu`` are ignored in modes where the ISA does not allow them.
* ``results`` (:data:`RESULT_LAYOUT`): one beat per (token row, strip), in order group, strip,
  pair, token: 16 INT32 (Q8 values lie in INT8), the row and strip indices for the writer, ``last``
  on the instruction's final beat; with ``sum_rows`` one beat per strip, row 0.

The engine takes the next command once the current one's last result has entered the output
pipeline. ``format_error`` is the dequantisers' sticky flag (a bad code byte or weight width).
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BLOCK, AcceleratorConfig
from flightllm.contract.isa import OPCODES, Opcode, OutMode
from flightllm.contract.numerics import INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN
from flightllm.contract.params import REQUANT_RECORD

from .dequant import Dequantiser, words_shape
from .dsp_chain import DSPChain, act_beat_layout, mux_tree, result_beat_layout

__all__ = [
    "MatrixEngine", "check_engine_shape", "COMMAND_LAYOUT", "RECORD_LAYOUT", "PARAMS_LAYOUT",
    "ROW_LAYOUT",
    "RESULT_LAYOUT", "OUTPUT_STAGES", "CHAIN_RESULTS",
]

#: Instruction fields the engine needs, with the contract's widths (MM's; MV has no m_rows).
_FIELDS = ("wbits", "sparse", "gscale", "n_strips", "k_blocks", "m_rows", "out_mode",
           "p_uniform", "psum", "residual", "relu", "sum_rows")


def _command_layout() -> data.StructLayout:
    spec = OPCODES[Opcode.MM]
    fields = {"mv": unsigned(1)}
    fields.update({name: unsigned(spec.field(name).width) for name in _FIELDS})
    return data.StructLayout(fields)


def _record_layout() -> data.StructLayout:
    # The contract's numpy record, field by field; the check keeps byte offsets and bit
    # offsets in step should the record ever change.
    fields = {}
    for name in REQUANT_RECORD.names:
        dtype, offset = REQUANT_RECORD.fields[name][:2]
        width = 8 * dtype.itemsize
        fields[name] = signed(width) if dtype.kind == "i" else unsigned(width)
    layout = data.StructLayout(fields)
    for name in REQUANT_RECORD.names:
        assert layout[name].offset == 8 * REQUANT_RECORD.fields[name][1], name
    assert layout.size == 8 * REQUANT_RECORD.itemsize
    return layout


#: One command: ``mv`` (1: MV, 0: MM) and the instruction fields of :data:`_FIELDS`.
COMMAND_LAYOUT = _command_layout()
#: One requantisation record, bit for bit the contract's 8 bytes (contract/params.py).
RECORD_LAYOUT = _record_layout()
#: The records of one strip's 16 output channels (128 PBUF bytes).
PARAMS_LAYOUT = data.ArrayLayout(RECORD_LAYOUT, BLOCK)
#: 16 INT32 values: a partial-sum or residual row segment (64 RBUF bytes).
ROW_LAYOUT = data.ArrayLayout(signed(32), BLOCK)
#: One result row segment: 16 values, its token row and strip, and the instruction's end.
RESULT_LAYOUT = data.StructLayout({
    "y": ROW_LAYOUT, "row": unsigned(16), "strip": unsigned(16), "last": unsigned(1),
})
#: Register stages between taking a strip result and presenting its result row.
OUTPUT_STAGES = 4
#: Strip results each chain's output FIFO holds. Two is the cheapest FIFO (two registers, no
#: RAM and no read multiplexer); strips still in the chain count against it, so strips
#: shorter than about ``(mv_k + 8) / 2`` passes leave bubbles.
CHAIN_RESULTS = 2

_CTL = data.StructLayout({
    "valid": unsigned(1), "mode": unsigned(2), "relu": unsigned(1), "residual": unsigned(1),
    "row": unsigned(16), "strip": unsigned(16), "last": unsigned(1),
    # sum_rows: row 0's value is kept (hold) for row 1's to be added to (chain).
    "hold": unsigned(1), "chain": unsigned(1),
})


def check_engine_shape(config: AcceleratorConfig, chains: int | None,
                       max_k_blocks: int) -> int:
    """The engine's chain count (``config.mv_rows`` when ``chains`` is None), after checking
    that it is a power of two and ``max_k_blocks`` a power of two >= 8 (ValueError names the
    argument)."""
    chains = config.mv_rows if chains is None else chains
    if not isinstance(chains, int) or chains < 1 or chains & (chains - 1):
        raise ValueError(f"chains must be a power of two, not {chains!r}")
    if not isinstance(max_k_blocks, int) or max_k_blocks < 8 or max_k_blocks & (max_k_blocks - 1):
        raise ValueError(f"max_k_blocks must be a power of two >= 8, not {max_k_blocks!r}")
    return chains


def _clamp(value, lo: int, hi: int):
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


class MatrixEngine(wiring.Component):
    """Executes the arithmetic of MM and MV instructions (see the module docstring).

    Args:
        config: the accelerator configuration (``mv_k``, ``mv_rows``, sparsity codes).
        chains: DSP chains working side by side on different strips; a power of two, default
            ``config.mv_rows``.
        max_k_blocks: the longest K (in 16-wide blocks) an instruction may have: the depth of
            each activation slot and of the dequantisers' code tables (a power of two >= 8).
        dsp_impl: ``"twin"`` or ``"xilinx"``, see :class:`~flightllm.hw.dsp48e2.DSP48E2`.
        pair_group: token pairs per read of the weights, default ``config.mm_pair_group``.

    Ports:
        cmd, words (array of ``chains``), acts, params, psum, residual (In streams) and results
        (Out stream), as in the module docstring; ``busy`` (Out 1): a command is held whose
        last result row has not yet entered the output stage; ``format_error`` (Out 1).
    """

    def __init__(self, config: AcceleratorConfig, *, chains: int | None = None,
                 max_k_blocks: int = 256, dsp_impl: str = "twin", pair_group: int | None = None):
        chains = check_engine_shape(config, chains, max_k_blocks)
        self.config = config
        self.chains = chains
        self.max_k_blocks = max_k_blocks
        self.dsp_impl = dsp_impl
        self.pair_group = config.mm_pair_group if pair_group is None else pair_group
        # Built here so that bad configurations fail at construction, naming the field.
        self._chain_units = [DSPChain(config, dsp_impl=dsp_impl, result_depth=CHAIN_RESULTS,
                                      pairs=self.pair_group)
                             for _ in range(chains)]
        self._dequantisers = [Dequantiser(config, max_k_blocks=max_k_blocks)
                              for _ in range(chains)]
        super().__init__({
            "cmd": In(stream.Signature(COMMAND_LAYOUT)),
            "words": In(stream.Signature(words_shape(config))).array(chains),
            "acts": In(stream.Signature(act_beat_layout())),
            "params": In(stream.Signature(PARAMS_LAYOUT)),
            "psum": In(stream.Signature(ROW_LAYOUT)),
            "residual": In(stream.Signature(ROW_LAYOUT)),
            "results": Out(stream.Signature(RESULT_LAYOUT)),
            "busy": Out(1),
            "format_error": Out(1),
        })

    @property
    def chain_units(self) -> list:
        """The DSP chains, chain ``c`` working on strips ``c, c + chains, ...``."""
        return list(self._chain_units)

    @property
    def dequantisers(self) -> list:
        """The dequantisers, one in front of each chain."""
        return list(self._dequantisers)

    def replace_sub_units(self, make: Callable[[str, wiring.Component], wiring.Component]
                          ) -> None:
        """Put ``make(kind, unit)`` in place of every chain (``kind = "dsp_chain"``) and
        dequantiser (``"dequantiser"``) before elaboration; the replacement must have the
        unit's signature.

        For hierarchical Verilog (an instance of a module emitted once, see
        :class:`~flightllm.hw.hierarchy.ModuleLibrary`) and for measuring the engine without
        its replicated units (:mod:`flightllm.hw.resources`). The replaced units are never
        elaborated here, so they are marked as used on purpose.
        """
        for unit in self._chain_units + self._dequantisers:
            unit._MustUse__silence = True
        self._chain_units = [make("dsp_chain", c) for c in self._chain_units]
        self._dequantisers = [make("dequantiser", d) for d in self._dequantisers]

    def elaborate(self, platform):
        m = Module()
        C = self.chains
        chain_bits = C.bit_length() - 1
        k_bits = self.max_k_blocks.bit_length() - 1

        cfg = Signal(COMMAND_LAYOUT)
        busy = self.busy
        G = self.pair_group
        g_bits = G.bit_length() - 1
        pairs = Signal(16)
        groups = Signal(16)                                  # groups of G pairs, the last short
        strips = [Signal(16, name=f"strips{c}") for c in range(C)]   # strips of chain c
        accept = self.cmd.valid & self.cmd.ready
        m.d.comb += self.cmd.ready.eq(~busy)

        # ------------------------------------------------------------ chains, dequantisers
        deq_left = [Signal(16, name=f"deq_left{c}") for c in range(C)]
        for c, (chain, deq) in enumerate(zip(self._chain_units, self._dequantisers)):
            m.submodules[f"chain{c}"] = chain
            m.submodules[f"dequant{c}"] = deq
            wiring.connect(m, wiring.flipped(self.words[c]), deq.words)
            wiring.connect(m, deq.weights, chain.weights)
            # One dequantiser command per group of pairs: its words repeat the chain's strips.
            m.d.comb += [
                deq.cmd.valid.eq(deq_left[c] != 0),
                deq.cmd.payload.bits.eq(Const(2, 4) << cfg.wbits),
                deq.cmd.payload.sparse.eq(cfg.sparse),
                deq.cmd.payload.gscale.eq(cfg.gscale),
                deq.cmd.payload.k_blocks.eq(cfg.k_blocks),
                deq.cmd.payload.n_strips.eq(strips[c]),
            ]
            with m.If(deq.cmd.valid & deq.cmd.ready):
                m.d.sync += deq_left[c].eq(deq_left[c] - 1)
        m.d.comb += self.format_error.eq(Cat(d.format_error for d in self._dequantisers).any())

        # ------------------------------------------------------------ activation store
        # A slot holds one group: the K blocks of G pairs side by side in one memory word, so
        # a chain reads a block of every pair of its group at once.
        beat_bits = act_beat_layout().size
        xmem = m.submodules.xmem = Memory(shape=G * beat_bits, depth=2 * self.max_k_blocks,
                                          init=[])
        xw = xmem.write_port(granularity=beat_bits) if G > 1 else xmem.write_port()
        ld_pair = Signal(16)
        ld_k = Signal(16)
        loaded = Signal(2)                                   # slot holds a group not yet freed
        done_with = [Signal(2, name=f"done_with{c}") for c in range(C)]   # chain c read it all
        active = Cat(s != 0 for s in strips)
        slot = ld_pair[g_bits]
        ld_g = ld_pair[:g_bits]
        group_loaded = ((ld_g == G - 1) if G > 1 else Const(1, 1)) | (ld_pair == pairs - 1)
        m.d.comb += self.acts.ready.eq(busy & (ld_pair < pairs) & ~loaded.bit_select(slot, 1))
        with m.If(self.acts.valid & self.acts.ready):
            m.d.comb += [xw.en.eq(1 << ld_g if G > 1 else 1),
                         xw.addr.eq(Cat(ld_k[:k_bits], slot)),
                         xw.data.eq(self.acts.payload.as_value().replicate(G))]
            with m.If(ld_k == cfg.k_blocks - 1):
                m.d.sync += [ld_k.eq(0), ld_pair.eq(ld_pair + 1)]
                with m.If(group_loaded):
                    m.d.sync += loaded.bit_select(slot, 1).eq(1)
            with m.Else():
                m.d.sync += ld_k.eq(ld_k + 1)
        for h in range(2):
            freed = Cat(done_with[c][h] | ~active[c] for c in range(C)).all()
            with m.If(loaded[h] & freed):
                m.d.sync += loaded[h].eq(0)
                m.d.sync += [done_with[c][h].eq(0) for c in range(C)]

        # Per chain: walk (group, own strip, K block), one activation beat per block.
        for c, chain in enumerate(self._chain_units):
            f_group = Signal(16, name=f"f_group{c}")
            f_strip = Signal(16, name=f"f_strip{c}")
            f_k = Signal(16, name=f"f_k{c}")
            f_valid = Signal(name=f"f_valid{c}")
            f_slot = f_group[0]
            rd = xmem.read_port()
            # Block f_k of a group may be read once it is written: the whole group loaded,
            # or its last pair being loaded and past f_k (the store takes a block per cycle,
            # a chain a block per 8-34 cycles, so decode's MVs no longer wait the K cycles
            # of the load before their first pass).
            arrived = (loaded.bit_select(f_slot, 1)
                       | (group_loaded & (ld_pair < pairs) & (ld_pair[g_bits:] == f_group)
                          & (ld_k > f_k)))
            ready = (busy & active[c] & (f_group < groups) & arrived
                     & ~done_with[c].bit_select(f_slot, 1))
            fetch = ready & (~f_valid | chain.acts.ready)
            m.d.comb += [rd.en.eq(fetch), rd.addr.eq(Cat(f_k[:k_bits], f_slot)),
                         chain.acts.valid.eq(f_valid)]
            if G > 1:
                f_pairs_m1 = Signal(g_bits, name=f"f_pairs_m1_{c}")
                with m.If(fetch):
                    left = pairs - Cat(Const(0, g_bits), f_group)  # pairs from this group on
                    m.d.sync += f_pairs_m1.eq(Mux(left >= G, G - 1, left - 1))
                m.d.comb += [chain.acts.payload.x.eq(rd.data),
                             chain.acts.payload.pairs_m1.eq(f_pairs_m1)]
            else:
                m.d.comb += chain.acts.payload.eq(rd.data)
            with m.If(fetch):
                m.d.sync += f_valid.eq(1)
                with m.If(f_k == cfg.k_blocks - 1):
                    m.d.sync += f_k.eq(0)
                    with m.If(f_strip == strips[c] - 1):
                        m.d.sync += [f_strip.eq(0), f_group.eq(f_group + 1),
                                     done_with[c].bit_select(f_slot, 1).eq(1)]
                    with m.Else():
                        m.d.sync += f_strip.eq(f_strip + 1)
                with m.Else():
                    m.d.sync += f_k.eq(f_k + 1)
            with m.Elif(chain.acts.ready):
                m.d.sync += f_valid.eq(0)
            with m.If(accept):
                m.d.sync += [f_group.eq(0), f_strip.eq(0), f_k.eq(0)]

        # ------------------------------------------------------------ collector (stage A)
        # Results come in (group, strip, pair of the group, token) order.
        col_group = Signal(16)
        col_g = Signal(range(G))                             # the pair in the group
        col_strip = Signal(16)
        col_tok = Signal()
        col_p = Cat(col_g, col_group)                        # the pair of the instruction
        sel = col_strip[:chain_bits]
        res_valid = Signal()
        res = Signal(result_beat_layout())
        m.d.comb += [
            res_valid.eq(mux_tree([c.results.valid for c in self._chain_units], sel)),
            res.eq(mux_tree([c.results.payload.as_value() for c in self._chain_units], sel)),
        ]

        acc32 = cfg.out_mode == OutMode.ACC32
        q32 = cfg.out_mode == OutMode.Q32
        two = ~cfg.mv & (Cat(Const(1, 1), col_p) < cfg.m_rows)         # the pair has row 2p + 1
        last_tok = ~two | col_tok
        last_g = ((col_g == G - 1) | (col_p == pairs - 1)) if G > 1 else Const(1, 1)
        last_strip = col_strip == cfg.n_strips - 1
        last_beat = last_tok & last_g & last_strip & (col_group == groups - 1)
        urec = Signal(RECORD_LAYOUT)
        urec_ok = Signal()
        need_params = ~acc32 & ~(cfg.p_uniform & urec_ok)
        # sum_rows: both tokens of the one pair, each with its own records; the residual is
        # the result row's, added to token 0.
        sum_rows = cfg.sum_rows & ~cfg.mv
        need_residual = cfg.residual & q32 & ~(sum_rows & col_tok)

        out_valid = Signal()
        advance = ~out_valid | self.results.ready
        fire = (busy & advance & res_valid & (self.params.valid | ~need_params)
                & (self.psum.valid | ~cfg.psum) & (self.residual.valid | ~need_residual))
        m.d.comb += [
            # A strip's records serve every pair of the group.
            self.params.ready.eq(fire & need_params
                                 & ((last_tok & last_g) | cfg.p_uniform | sum_rows)),
            self.psum.ready.eq(fire & cfg.psum),
            self.residual.ready.eq(fire & need_residual),
        ]
        for c, chain in enumerate(self._chain_units):
            m.d.comb += chain.results.ready.eq(fire & last_tok & (sel == c))
        with m.If(fire):
            with m.If(cfg.p_uniform & ~urec_ok & ~acc32):
                m.d.sync += [urec.eq(self.params.payload[0]), urec_ok.eq(1)]
            with m.If(last_tok):
                m.d.sync += col_tok.eq(0)
                with m.If(~last_g):
                    m.d.sync += col_g.eq(col_g + 1)
                with m.Elif(last_strip):
                    m.d.sync += [col_strip.eq(0), col_group.eq(col_group + 1), col_g.eq(0)]
                with m.Else():
                    m.d.sync += [col_strip.eq(col_strip + 1), col_g.eq(0)]
            with m.Else():
                m.d.sync += col_tok.eq(1)
            with m.If(last_beat):
                m.d.sync += busy.eq(0)

        # ------------------------------------------------------------ command
        with m.If(accept):
            c = self.cmd.payload
            m.d.sync += [cfg.eq(c), col_group.eq(0), col_g.eq(0), col_strip.eq(0),
                         col_tok.eq(0), urec_ok.eq(0), ld_pair.eq(0), ld_k.eq(0), loaded.eq(0)]
            m.d.sync += [d.eq(0) for d in done_with]
            empty = (c.n_strips == 0) | (~c.mv & (c.m_rows == 0))
            n_pairs = Mux(c.mv, 1, (c.m_rows + 1) >> 1)
            n_groups = (n_pairs + (G - 1)) >> g_bits
            m.d.sync += [busy.eq(~empty), pairs.eq(n_pairs), groups.eq(n_groups)]
            for i in range(C):
                count = (c.n_strips + (C - 1 - i)) >> chain_bits
                m.d.sync += [strips[i].eq(count),
                             deq_left[i].eq(Mux(empty | (count == 0), 0, n_groups))]

        self._output_stage(m, cfg, res, col_tok, col_p, col_strip, last_beat, urec, urec_ok,
                           need_residual, sum_rows, fire, advance, out_valid)
        return m

    def _output_stage(self, m, cfg, res, col_tok, col_pair, col_strip, last_beat, urec, urec_ok,
                      need_residual, sum_rows, fire, advance, out_valid):
        """Stages A (select, + psum) -> B (+ bias, * mult) -> C (shift) -> D (round, relu,
        saturate, residual or, for sum_rows's token 1, token 0's value). Every stage moves
        when the output register can."""
        ctl = [Signal(_CTL, name=f"ctl_{s}") for s in "abcd"]
        with m.If(advance):
            m.d.sync += ctl[0].valid.eq(fire)
            m.d.sync += [ctl[s].eq(ctl[s - 1]) for s in range(1, 4)]
        with m.If(advance & fire):
            m.d.sync += [
                ctl[0].mode.eq(cfg.out_mode), ctl[0].relu.eq(cfg.relu),
                ctl[0].residual.eq(need_residual),
                # sum_rows's one result row is row 0.
                ctl[0].row.eq(Cat(col_tok & ~sum_rows, col_pair)),
                ctl[0].strip.eq(col_strip), ctl[0].last.eq(last_beat),
                ctl[0].hold.eq(sum_rows & ~col_tok), ctl[0].chain.eq(sum_rows & col_tok),
            ]
        # A held row never leaves: the pipeline moves on over it.
        m.d.comb += out_valid.eq(ctl[3].valid & ~ctl[3].hold)
        # Token 0's value (residual added) until token 1 reaches stage D; there may be
        # bubbles between them, so y cannot serve.
        carry = Signal(ROW_LAYOUT)
        keep = advance & ctl[2].valid & ctl[2].hold

        y = Signal(ROW_LAYOUT)
        for j in range(BLOCK):
            # Stage A: the lane of the current token, the partial sum, the channel's record.
            rec = Signal(RECORD_LAYOUT, name=f"rec{j}")
            m.d.comb += rec.eq(Mux(cfg.p_uniform, Mux(urec_ok, urec, self.params.payload[0]),
                                   self.params.payload[j]))
            a_sum = Signal(signed(33), name=f"a_sum{j}")
            a_rec = Signal(RECORD_LAYOUT, name=f"a_rec{j}")
            a_res = Signal(signed(32), name=f"a_res{j}")
            with m.If(advance & fire):
                acc = Mux(col_tok, res.y[1][j], res.y[0][j])
                m.d.sync += [a_sum.eq(acc + Mux(cfg.psum, self.psum.payload[j], 0)),
                             a_rec.eq(rec), a_res.eq(self.residual.payload[j])]

            # Stage B: ACC32 saturates; Q8/Q32 add the bias and multiply (34 x 16 bits).
            b_wide = Signal(signed(50), name=f"b_wide{j}")
            b_shift = Signal(8, name=f"b_shift{j}")
            b_res = Signal(signed(32), name=f"b_res{j}")
            with m.If(advance):
                with m.If(ctl[0].mode == OutMode.ACC32):
                    m.d.sync += b_wide.eq(_clamp(a_sum, INT32_MIN, INT32_MAX))
                with m.Else():
                    m.d.sync += b_wide.eq((a_sum + a_rec.bias) * a_rec.mult)
                m.d.sync += [b_shift.eq(Mux(ctl[0].mode == OutMode.ACC32, 0, a_rec.shift)),
                             b_res.eq(a_res)]

            # Stage C: shift by shift - 1; the rounding bit stays in the LSB.
            c_val = Signal(signed(50), name=f"c_val{j}")
            c_round = Signal(name=f"c_round{j}")
            c_res = Signal(signed(32), name=f"c_res{j}")
            shift_less = Signal(8, name=f"shift_less{j}")
            m.d.comb += shift_less.eq(b_shift - 1)
            with m.If(advance):
                m.d.sync += [c_val.eq(Mux(b_shift == 0, b_wide, b_wide >> shift_less)),
                             c_round.eq(b_shift != 0), c_res.eq(b_res)]

            # Stage D: round half up, relu, saturate, residual add.
            rounded = Signal(signed(50), name=f"rounded{j}")
            m.d.comb += rounded.eq(Mux(c_round, (c_val + 1) >> 1, c_val))
            relu = ctl[2].relu & (ctl[2].mode != OutMode.ACC32)
            clipped = Signal(signed(50), name=f"clipped{j}")
            m.d.comb += clipped.eq(Mux(relu & (rounded < 0), 0, rounded))
            sat = Signal(signed(32), name=f"sat{j}")
            m.d.comb += sat.eq(Mux(ctl[2].mode == OutMode.Q8, _clamp(clipped, INT8_MIN, INT8_MAX),
                                   _clamp(clipped, INT32_MIN, INT32_MAX)))
            total = Signal(signed(33), name=f"total{j}")
            m.d.comb += total.eq(sat + Mux(ctl[2].chain, carry[j], c_res))
            d_y = Signal(signed(32), name=f"d_y{j}")
            m.d.comb += d_y.eq(Mux(ctl[2].residual | ctl[2].chain,
                                   _clamp(total, INT32_MIN, INT32_MAX), sat))
            with m.If(advance):
                m.d.sync += y[j].eq(d_y)
            with m.If(keep):
                m.d.sync += carry[j].eq(d_y)

        m.d.comb += [
            self.results.valid.eq(out_valid),
            self.results.payload.y.eq(y),
            self.results.payload.row.eq(ctl[3].row),
            self.results.payload.strip.eq(ctl[3].strip),
            self.results.payload.last.eq(ctl[3].last),
        ]
