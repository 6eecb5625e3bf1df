"""The attention of one layer as instructions: K/V tile loads, scores, softmax, P.V, context.

Prefill runs each KV head's query heads one after another, their token rows in the matrix
engine's lanes. Decode has one token, and the products of one head leave most of the engine
idle: P.V has ``head_dim / 16`` output strips (8 for LLaMA2-7B) for ``mv_rows`` chains (16 on
the u280 preset), and an MV uses one of a DSP's two packed MACs. So decode runs several heads
as the token rows of one MM (:func:`decode_pack`):

* the query heads of a KV head share its K and V tiles: their scores are one MM over the K
  tile (a row per head) and their P.V one MM over the V tile, both in the lanes an MV leaves
  idle (grouped-query attention: no waste at all);
* the P.V of ``n`` KV heads is one MM over their ``n`` V tiles side by side in WBUF: strips
  ``j * head_dim / 16`` on are KV head j's, and each head's probabilities are a row. Every row
  meets every tile, so a row's products with another head's strips are computed and
  discarded: they cost nothing while the rows fit one weight pass (``2 * mm_pair_group``) and
  the strips fit the chains, and they keep the chains busy that one head leaves idle.

The K tile stays single (a second one would shrink the weight slots further), so KV head
``j + 1``'s keys load after KV head j's scores; the loads of the pack's other V tiles and of
the next pack's first keys overlap the matrix engine.
"""

from __future__ import annotations

from flightllm.contract.config import BLOCK, AcceleratorConfig
from flightllm.contract.isa import (
    Binding, BindKind, Buffer, LengthReg, MiscFunc, Opcode, OutMode, WeightBits,
)
from flightllm.contract.weights import WORD_BYTES

from .ir import ModelConfig
from .qmodel import AttentionSparsity

__all__ = ["AttentionEmitter", "bind_count", "bind_offset", "decode_pack"]


def decode_pack(model: ModelConfig, cfg: AcceleratorConfig, max_len: int) -> int:
    """KV heads whose P.V one decode MM computes (``n`` V tiles in WBUF; 1: one at a time).

    A pack of several saves the P.V of all but one of them, and pays for it with the K
    tile: the next KV head's keys load only after this one's scores. Per key position that
    is a 16x16 INT8 block's dequantiser words / 16 cycles saved against ``head_dim`` bytes
    over the LD's lanes, so packs are built only where the first is larger (the u280 and
    VHK158 presets: 2 against 1 cycle at head_dim 128; not ``tiny``, whose 8-byte beats
    take 4). The pack then grows while its strips fit the chains, its rows (every query
    head of the pack) fit one weight pass, a core has that many KV heads, and the K tile
    with the ``n`` V tiles take at most half of WBUF (the weight slots keep the rest: at
    LLaMA2-7B's head_dim 128 and max_len 2048 on the u280 preset, 640 of 768 KiB a slot).
    """
    kb, group = model.head_dim // 16, model.group_size
    saved = BLOCK / WORD_BYTES  # a 16x16 INT8 block's words over its 16 positions
    stall = model.head_dim / (cfg.ld_lanes * cfg.axi_data_bits // 8)
    if saved <= stall:
        return 1
    tile = max_len * model.head_dim
    heads = -(-model.num_kv_heads // cfg.cores)  # KV heads of the busiest core
    n = 1
    while ((n + 1) * kb <= cfg.mv_rows and (n + 1) * group <= 2 * cfg.mm_pair_group
           and n + 1 <= heads and (n + 2) * tile <= cfg.wbuf.bytes // 2):
        n += 1
    return n


def bind_count(reg: LengthReg, field: str, shift: int = 0, *, base: int = 0) -> Binding:
    """``field`` capped at ``ceil((reg - base) / 2**shift)`` at run time."""
    return Binding(BindKind.COUNT, reg, field, shift=shift, base=base)


def bind_offset(reg: LengthReg, field: str, shift: int, *, base: int = 0) -> Binding:
    """``field`` moved by ``(reg - base) << shift`` at run time."""
    return Binding(BindKind.OFFSET, reg, field, shift=shift, base=base)


class AttentionEmitter:
    """The attention part of :class:`~flightllm.compiler.lower._Program` (it provides
    ``plan``, ``qm``, ``io``, ``prefill``, ``rows``, ``kv_lo``, ``kv_hi``, ``emit``, ``misc``
    and ``row_bind``)."""

    def attention_layer(self, li: int, layer) -> None:
        """Every KV head of this core: one at a time in prefill, in packs in decode."""
        groups = list(range(self.kv_lo, self.kv_hi))
        if self.prefill:
            for g in groups:
                self.prefill_attention(li, layer, g)
            return
        n = self.plan["pv_pack"]
        for i in range(0, len(groups), n):
            self.decode_attention(li, layer, groups[i:i + n])

    def product(self, rows: int, x_stride: int, out_stride: int, **fields) -> None:
        """A decode product over ``rows`` activation rows: an MV for one, else an MM."""
        if rows == 1:
            self.emit(Opcode.MV, **fields)
        else:
            self.emit(Opcode.MM, m_rows=rows, x_stride=x_stride, out_stride=out_stride,
                      **fields)

    def kv_spans(self, sparse: AttentionSparsity | None):
        """The K/V tile loads: (first tile block, first position, 16-position blocks, bindings
        of the count field) per load."""
        L = self.qm.max_len
        if sparse is None:
            return [(0, 0, L // 16, lambda f: [bind_count(LengthReg.KV, f, 4)])]
        sink, back = sparse.sink_tokens, sparse.back_tokens
        spans = []
        if sink:
            spans.append((0, 0, sink // 16, lambda f: [bind_count(LengthReg.KV, f, 4)]))
        # The band starts at max(POS - back, sink): an OFFSET clamped by its base. Its count
        # is capped by the positions that exist past the sink (KV - sink).
        spans.append((sink // 16, sink, sparse.band_tokens // 16,
                      lambda f: [bind_offset(LengthReg.POS, "hbm_addr", 4, base=sink + back),
                                 bind_count(LengthReg.KV, f, 4, base=sink)]))
        return spans

    def load_tiles(self, li: int, g: int, sparse, *, vtile: int | None = None) -> None:
        """KV head ``g``'s K tile (position strips x head-dim blocks) and V^T tile (head-dim
        strips x position blocks, at ``vtile``). Dense: positions 0..KV. Sparse: the sink's
        positions, then the band's from its first position on; both loads count 16-position
        blocks."""
        P, c = self.plan, self.qm.config
        hd, L, io = c.head_dim, self.qm.max_len, self.io
        kb = hd // 16
        kc, vc = io["k_cache"][li], io["v_cache"][li]
        nch = len(kc.channels)  # the cache's head-dim blocks are split over its channels
        part = kb // nch
        local = g - self.kv_lo
        kbase, vbase = kc.offset + local * part * 16 * L, vc.offset + local * part * 16 * L
        vtile = P["vtile"] if vtile is None else vtile
        # Both loads walk positions in their inner loop: the cache holds a head-dim block's
        # positions one after another, so each outer step is one contiguous HBM run (one
        # DRAM row opened) rather than one run per 16 positions. Channel c of the cache
        # holds head-dim blocks c * part on, which land c * part blocks (K: columns, V:
        # strips) into the tile; on two channels each LD lane moves half.
        for first, pos0, count, binds in self.kv_spans(sparse):
            self.emit(Opcode.LD, buf=Buffer.WBUF, buf_addr=P["ktile"] + 256 * kb * first,
                      chan=kc.channels[0], nch=nch, ch_stride=256 * part,
                      hbm_addr=kbase + 16 * pos0, len=256, n1=count, hbm_stride1=256,
                      buf_stride1=256 * kb, n2=part, hbm_stride2=16 * L, buf_stride2=256,
                      bindings=binds("n1"))
        for first, pos0, count, binds in self.kv_spans(sparse):
            self.emit(Opcode.LD, buf=Buffer.WBUF, buf_addr=vtile + 256 * first,
                      chan=vc.channels[0], nch=nch, ch_stride=16 * L * part,
                      hbm_addr=vbase + 16 * pos0, len=256, n1=count, hbm_stride1=256,
                      buf_stride1=256, n2=part, hbm_stride2=16 * L, buf_stride2=16 * L,
                      transpose=1, bindings=binds("n1"))

    def prefill_attention(self, li: int, layer, g: int) -> None:
        """KV head ``g``'s query heads one after another, the call's token rows in the
        lanes."""
        P, c = self.plan, self.qm.config
        hd, L = c.head_dim, self.qm.max_len
        kb = hd // 16
        sparse = P["sparse"]
        self.load_tiles(li, g, sparse)
        W = P["attn_width"]  # columns of the scores and weights rows
        if sparse is None:
            # The causal mask's query position is POS itself.
            aux, aux_bind = 0, bind_offset(LengthReg.POS, "aux", 0)
        else:
            # The tile's column of position POS: POS while the band still reaches back to
            # the sink (the tile is then positions 0..KV in order), then the band's fixed
            # lead: min(POS, sink + back).
            aux = sparse.sink_tokens + sparse.back_tokens
            aux_bind = bind_count(LengthReg.POS, "aux")
        for head in range(g * c.group_size, (g + 1) * c.group_size):
            self.emit(Opcode.MM, m_rows=self.rows, x_stride=c.num_heads * hd, out_stride=4 * W,
                      w_addr=P["ktile"], wbits=WeightBits.INT8, n_strips=W // 16, k_blocks=kb,
                      x_addr=P["q8"] + head * hd, out_mode=OutMode.ACC32, out_addr=P["scores"],
                      bindings=[bind_count(LengthReg.KV, "n_strips", 4)]
                      + self.row_bind("m_rows"))
            self.misc(MiscFunc.SOFTMAX, a_buf=Buffer.RBUF, a_addr=P["scores"], a_stride=4 * W,
                      d_buf=Buffer.ABUF, d_addr=P["probs"], d_stride=W, b_buf=Buffer.RBUF,
                      b_addr=P["recip"], b_stride=4, n=W, m1=layer.softmax[0],
                      s1=layer.softmax[1], causal=1, defer=1, aux=aux,
                      bindings=[bind_count(LengthReg.KV, "n"), aux_bind])
            self.emit(Opcode.MM, m_rows=self.rows, x_stride=W, out_stride=4 * hd,
                      w_addr=P["vtile"], w_stride=16 * L, wbits=WeightBits.INT8, n_strips=kb,
                      k_blocks=W // 16, x_addr=P["probs"], out_mode=OutMode.ACC32,
                      out_addr=P["pv"],
                      bindings=[bind_count(LengthReg.KV, "k_blocks", 4)]
                      + self.row_bind("m_rows"))
            s1, m2, s2 = layer.ctx
            self.misc(MiscFunc.MUL, rowscalar=1, a_buf=Buffer.RBUF, a_addr=P["pv"],
                      a_stride=4 * hd, b_buf=Buffer.RBUF, b_addr=P["recip"], b_stride=4,
                      d_buf=Buffer.ABUF, d_addr=P["ctx"] + head * hd,
                      d_stride=c.num_heads * hd, n=hd, s1=s1, m2=m2, s2=s2)

    def decode_attention(self, li: int, layer, pack: list[int]) -> None:
        """The KV heads ``pack`` together (module docstring). Row ``r`` of the scores,
        probabilities and P.V regions is the pack's query head ``r``; KV head j's heads are
        rows ``j * group_size`` on and read P.V columns ``j * head_dim`` on. One head alone
        is one row: its products are MVs."""
        P, c = self.plan, self.qm.config
        hd, L, G = c.head_dim, self.qm.max_len, c.group_size
        kb, W, n = hd // 16, P["attn_width"], len(pack)
        rows, pv_row = n * G, 4 * n * hd  # the pack's query heads; P.V bytes a row
        tile = L * hd
        causal = bind_offset(LengthReg.POS, "aux", 0)  # the query position is POS
        for j, g in enumerate(pack):
            self.load_tiles(li, g, None, vtile=P["vtile"] + j * tile)
            # The group's query heads are consecutive in the query row.
            self.product(G, hd, 4 * W, w_addr=P["ktile"], wbits=WeightBits.INT8,
                         n_strips=W // 16, k_blocks=kb, x_addr=P["q8"] + g * G * hd,
                         out_mode=OutMode.ACC32, out_addr=P["scores"] + j * G * 4 * W,
                         bindings=[bind_count(LengthReg.KV, "n_strips", 4)])
            self.emit(Opcode.MISC, func=MiscFunc.SOFTMAX, m=G, a_buf=Buffer.RBUF,
                      a_addr=P["scores"] + j * G * 4 * W, a_stride=4 * W, d_buf=Buffer.ABUF,
                      d_addr=P["probs"] + j * G * W, d_stride=W, b_buf=Buffer.RBUF,
                      b_addr=P["recip"] + 4 * j * G, b_stride=4, n=W, m1=layer.softmax[0],
                      s1=layer.softmax[1], causal=1, defer=1, aux=0,
                      bindings=[bind_count(LengthReg.KV, "n"), causal])
        # Strips j * kb on are V tile j (w_stride steps over a strip of positions).
        self.product(rows, W, pv_row, w_addr=P["vtile"], w_stride=16 * L,
                     wbits=WeightBits.INT8, n_strips=n * kb, k_blocks=W // 16,
                     x_addr=P["probs"], out_mode=OutMode.ACC32, out_addr=P["pv"],
                     bindings=[bind_count(LengthReg.KV, "k_blocks", 4)])
        s1, m2, s2 = layer.ctx
        for j, g in enumerate(pack):
            self.emit(Opcode.MISC, func=MiscFunc.MUL, m=G, rowscalar=1, a_buf=Buffer.RBUF,
                      a_addr=P["pv"] + j * G * pv_row + 4 * j * hd, a_stride=pv_row,
                      b_buf=Buffer.RBUF, b_addr=P["recip"] + 4 * j * G, b_stride=4,
                      d_buf=Buffer.ABUF, d_addr=P["ctx"] + g * G * hd, d_stride=hd, n=hd,
                      s1=s1, m2=m2, s2=s2)
