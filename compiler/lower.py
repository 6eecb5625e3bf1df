"""Lowering: a :class:`~flightllm.compiler.qmodel.QModel` to instruction programs and HBM images.

Two programs serve every length (length-adaptive compilation through the ISA's binding words):

* **prefill** handles up to ``chunk`` tokens per call: token rows are bound to SEQ, so a call
  with fewer tokens does only their work; longer prompts are fed in chunks, POS advancing;
* **decode** handles one token at any KV length 1..max_len: the score rows, the softmax width
  and the P.V reduction are bound to KV, the cache writes and the causal mask to POS.

Each program mirrors :func:`~flightllm.compiler.qmodel.qforward` step for step, and nothing but
weights, parameters and the KV cache moves between HBM and the chip: activations stay in ABUF
and RBUF from the input rows to the logits. Instructions are emitted in program order without
tokens; :func:`~flightllm.compiler.schedule.assign_tokens` adds them.

With several cores, core c owns a contiguous range of KV heads (their query heads, their cache
on its own channels: q, k and v need no exchange) and an even share of the output strips of
every other projection; SYS GATHERs after the attention context, each residual update, the
MLP hidden give every core the whole vector again, on chip; each core stores its own slice of
the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import (
    Buffer, Instruction, LengthReg, MiscFunc, Opcode, OutMode, SysOp, WeightBits,
)
from flightllm.contract.params import pack_norm_params, pack_requant_records, pack_rope_rows
from flightllm.contract.weights import WORD_BYTES, strip_bytes

from .attention import AttentionEmitter, bind_count, bind_offset, decode_pack
from .chunking import plan_chunks, stripe
from .layout import CompileError, HBMImage, align
from .ir import ModelConfig
from .onchip import attention_sparsity, default_chunk, onchip_plan
from .qmodel import AttentionSparsity, QLinear, QModel, QNorm
from .schedule import assign_tokens

__all__ = ["Lowered", "Lowerer", "lower"]

_WB = {2: WeightBits.INT2, 4: WeightBits.INT4, 8: WeightBits.INT8}
_NORM = {"rms": MiscFunc.RMSNORM, "layer": MiscFunc.LAYERNORM}
_ACT = {"silu": MiscFunc.SILU, "gelu_tanh": MiscFunc.GELU_TANH, "gelu_erf": MiscFunc.GELU_ERF}


@dataclass
class Lowered:
    """Programs and HBM images (one per core) and the host's I/O layout (per core)."""

    prefill: list[list[Instruction]]
    decode: list[list[Instruction]]
    chunk: int
    images: list[HBMImage]
    io: list[dict]
    #: Block-sparse prefill attention, if compiled with it.
    attention: AttentionSparsity | None = None
    #: WBUF byte range of the K and V tiles (what the attention's loads and products use).
    kv_tiles: tuple[int, int] = (0, 0)
    #: With sparse attention: the dense prefill programs (no tokens, never run), kept only
    #: to count what the mask saves.
    dense_prefill: list[list[Instruction]] | None = None


class _Chunk(NamedTuple):
    """A strip group, or with K-splitting one K range of it (the ranges of a group follow
    each other), at ``hbm`` on channels ``0..use-1``, ``part`` bytes on each."""

    first: int
    count: int
    hbm: int
    k0: int
    n: int
    part: int
    use: int


@dataclass
class _Matrix:
    """A placed weight matrix: chunks of strips striped over the channels."""

    linear: QLinear
    chunks: list[_Chunk]
    lo: int  # the strips this core computes
    hi: int


def _split(total: int, parts: int, index: int) -> tuple[int, int]:
    """The index-th of ``parts`` balanced contiguous ranges of ``range(total)``."""
    return total * index // parts, total * (index + 1) // parts


class _Placer:
    """Builds the shared HBM image: weights, parameter blobs, caches, RoPE table, I/O."""

    def __init__(self, cfg: AcceleratorConfig, slot_bytes: int, core: int, spool=None):
        self.cfg, self.slot = cfg, slot_bytes
        self.image = HBMImage(cfg.hbm_channels_per_core, cfg.hbm_channel_bytes, spool=spool,
                              name=f"core{core}")

    def matrix(self, name: str, lin: QLinear, lo: int, hi: int) -> _Matrix:
        """Place strips ``[lo, hi)`` of ``lin`` on this core's channels, in the chunks
        :func:`~flightllm.compiler.chunking.plan_chunks` cuts: whole rounds of the chains
        where a slot holds them, K-split ranges (each packed as a matrix of its own, added
        through partial sums) where it does not."""
        w, cfg = lin.weight, self.cfg
        kb = w.padded[1] // 16
        # A chunk's parts go to channels 0.. and LD lane k moves those with c mod ld_lanes
        # == k: a multiple of the lanes gives each lane as many (u280: 12 of 13 channels,
        # 6 + 6 parts, not 7 + 6; the lane with more set the time of every chunk).
        nch = cfg.hbm_channels_per_core
        if nch > cfg.ld_lanes:
            nch -= nch % cfg.ld_lanes
        grain = max(cfg.axi_data_bits // 8, cfg.wbuf.width)
        plan = plan_chunks(lambda n: strip_bytes([w.keep] * n, w.bits, w.has_mult, w.sparse),
                           kb, hi - lo, self.slot, cfg.mv_rows, reserve=nch * grain, name=name)
        packed = ([w.packed()] if not plan.k_split
                  else [w.packed_columns(k0, n) for k0, n, _ in plan.ranges])
        chunks = []
        for first in range(lo, hi, plan.per_chunk):
            count = min(plan.per_chunk, hi - first)
            for (k0, n, rb), data in zip(plan.ranges, packed):
                blob = bytes(data[first * rb:(first + count) * rb])
                part, use = stripe(len(blob), nch, grain)
                # Only the channels the chunk reaches: padding the others would make the LD
                # move zeros past the end of the chunk.
                parts = [blob[c * part:(c + 1) * part].ljust(part, b"\0") for c in range(use)]
                p = self.image.place_striped(f"{name}.chunk{len(chunks)}", parts,
                                             dtype="blocks", shape=(count * 16, n * 16))
                chunks.append(_Chunk(first, count, p.offset, k0, n, part, use))
        return _Matrix(lin, chunks, lo, hi)


class _Program(AttentionEmitter):
    """Emits one program (prefill with ``rows`` token rows, or decode with one)."""

    def __init__(self, qm: QModel, cfg: AcceleratorConfig, rows: int, prefill: bool, plan,
                 core: int):
        self.qm, self.cfg, self.rows, self.prefill, self.plan = qm, cfg, rows, prefill, plan
        self.core, self.cores = core, cfg.cores
        self.out: list[Instruction] = []
        self.slot_flip = 0
        self.sync_id = 0
        c = qm.config
        self.kv_lo, self.kv_hi = _split(c.num_kv_heads, self.cores, core)
        self.io = plan["io"][core]

    def strips(self, mat: _Matrix) -> tuple[int, int]:
        return mat.lo, mat.hi

    def gather(self, buf: Buffer, addr: int, stride: int, lo: int, nbytes: int) -> None:
        """All-gather this core's column slice ``[lo, lo + nbytes)`` of every row."""
        if self.cores == 1:
            return
        self.emit(Opcode.SYS, sync_op=SysOp.GATHER, sync_id=self.sync_id % 256, buf=buf,
                  addr=addr + lo, len=nbytes, rows=self.rows, stride=stride,
                  bindings=self.row_bind("rows"))
        self.sync_id += 1

    # -- helpers
    def emit(self, op, **fields) -> None:
        if op in (Opcode.MM, Opcode.MV) and (fields.get("w_addr", 0) % WORD_BYTES
                                             or fields.get("w_stride", 0) % WORD_BYTES):
            # The layout keeps WBUF slots 16-byte aligned; the engine needs 8 (isa.md).
            raise AssertionError(f"lowering placed weights off the {WORD_BYTES}-byte grid: "
                                 f"w_addr={fields.get('w_addr')}, "
                                 f"w_stride={fields.get('w_stride')}")
        self.out.append(Instruction(op, **fields))

    def row_bind(self, field: str) -> list:
        return [bind_count(LengthReg.SEQ, field)] if self.prefill else []

    def matmul(self, mat: _Matrix, x_addr: int, x_stride: int, out_addr: int, out_stride: int,
               p_addr: int, extra: tuple[tuple[int, int], ...] = (), *,
               local: bool = False) -> None:
        """Stream ``mat`` chunk by chunk through the engine; each chunk, once in WBUF, also
        serves the ``extra`` (x_addr, p_addr) passes (the low digit of a split input; in
        decode the two digits are one MM's two rows instead, :meth:`_digit_pair`).
        ``local``: the output region holds only this core's strips, from its first.
        A K-split chunk leaves raw partial sums in RBUF (one region per pass) for the next
        K range to add to; the last range adds them and requantises as a whole chunk would."""
        lin, w = mat.linear, mat.linear.weight
        if not mat.chunks:
            return
        mode = {"q8": OutMode.Q8, "q32": OutMode.Q32}[lin.out]
        esize = 1 if mode == OutMode.Q8 else 4
        plan, kb = self.plan, w.padded[1] // 16
        for first, count, hbm, k0, n, part, use in mat.chunks:
            slot = plan["wslot"][self.slot_flip]
            self.slot_flip ^= 1
            self.emit(Opcode.LD, buf=Buffer.WBUF, buf_addr=slot, chan=0, nch=use,
                      ch_stride=part, hbm_addr=hbm, len=part, n1=1, n2=1)
            last = k0 + n == kb
            fields = dict(w_addr=slot, wbits=_WB[w.bits], sparse=int(w.sparse),
                          gscale=int(w.has_mult), n_strips=count, k_blocks=n)
            if last:
                fields.update(out_mode=mode, residual=int(lin.residual), relu=int(lin.relu),
                              out_addr=out_addr + 16 * (first - (mat.lo if local else 0)) * esize)
            if extra and not self.prefill:
                self._digit_pair(fields, (x_addr, p_addr), extra, k0, n, kb, first - mat.lo)
                continue
            for pass_, (x, p) in enumerate(((x_addr, p_addr), *extra)):
                fields.update(x_addr=x + 16 * k0, p_addr=p + 128 * (first - mat.lo))
                stride = out_stride
                if n < kb:  # K-split: partial sums in this pass's region
                    acc = plan["ksplit"][pass_]
                    fields.update(psum=int(k0 > 0), psum_addr=acc)
                    if self.prefill:
                        fields["psum_stride"] = plan["ksplit_stride"]
                    if not last:
                        fields.update(out_mode=OutMode.ACC32, out_addr=acc)
                        stride = plan["ksplit_stride"]
                if self.prefill:
                    self.emit(Opcode.MM, m_rows=self.rows, x_stride=x_stride,
                              out_stride=stride, bindings=self.row_bind("m_rows"), **fields)
                else:
                    self.emit(Opcode.MV, **fields)

    def _digit_pair(self, fields: dict, hi: tuple[int, int], extra, k0: int, n: int, kb: int,
                    strip: int) -> None:
        """Decode's two digits of one vector as the two rows of one MM: both lanes of the
        chains in one weight pass, and ``sum_rows`` adds each digit, requantised with its own
        records, into the residual (the two MVs it replaces left lane 1 idle, twice)."""
        ((x_lo, p_lo),) = extra
        (x_hi, p_hi), plan = hi, self.plan
        if x_lo <= x_hi or p_lo < p_hi:
            raise AssertionError("the low digit and its records must follow the high ones")
        fields.update(x_addr=x_hi + 16 * k0, x_stride=x_lo - x_hi, p_addr=p_hi + 128 * strip)
        if n < kb:  # K-split: the two rows' partial sums in the two passes' regions
            acc = plan["ksplit"]
            fields.update(psum=int(k0 > 0), psum_addr=acc[0], psum_stride=acc[1] - acc[0])
            if k0 + n < kb:
                fields.update(out_mode=OutMode.ACC32, out_addr=acc[0],
                              out_stride=acc[1] - acc[0])
        if k0 + n == kb:
            fields.update(sum_rows=1, p_stride=p_lo - p_hi)
        self.emit(Opcode.MM, m_rows=2, **fields)

    def misc(self, func: MiscFunc, **fields) -> None:
        binds = list(fields.pop("bindings", ())) + self.row_bind("m")
        self.emit(Opcode.MISC, func=func, m=self.rows, bindings=binds, **fields)

    def norm(self, qn: QNorm, p_addr: int, src: int, dst: int) -> None:
        P = self.plan
        self.misc(_NORM[qn.kind], a_buf=Buffer.RBUF, a_addr=src, a_stride=P["r_stride"],
                  d_buf=Buffer.ABUF, d_addr=dst, d_stride=P["h_stride"], p_addr=p_addr,
                  n=self.qm.config.hidden_size, s1=qn.shift, aux=qn.eps,
                  beta=int(qn.beta is not None))

    # -- the model
    def build(self) -> list[Instruction]:
        qm, P, c = self.qm, self.plan, self.qm.config
        io = self.io
        self.emit(Opcode.LD, buf=Buffer.RBUF, buf_addr=P["r"], chan=io["input"].channels[0],
                  hbm_addr=io["input"].offset, len=4 * c.hidden_size, n1=self.rows,
                  hbm_stride1=P["in_row"], buf_stride1=P["r_stride"], n2=1,
                  bindings=self.row_bind("n1"))
        if c.position == "rope":
            rope = io["rope"]
            self.emit(Opcode.LD, buf=Buffer.PBUF, buf_addr=P["rope"], chan=rope.channels[0],
                      hbm_addr=rope.offset, len=P["rope_row"], n1=self.rows,
                      hbm_stride1=P["rope_row"], buf_stride1=P["rope_row"], n2=1,
                      bindings=[bind_offset(LengthReg.POS, "hbm_addr", P["rope_shift"])]
                      + self.row_bind("n1"))
        for li, layer in enumerate(qm.layers):
            self.layer(li, layer)
        fin = io["final"]
        self.emit(Opcode.LD, buf=Buffer.PBUF, buf_addr=P["pslot"][0], chan=fin.channels[0],
                  hbm_addr=fin.offset, len=fin.part_bytes, n1=1, n2=1)
        self.norm(qm.final_norm, P["pslot"][0] + P["final_norm"], P["r"], P["h"])
        head = P["mats"]["lm_head"][self.core]
        # Each core stores its own slice of the logits; the host puts the slices together.
        self.matmul(head, P["h"], P["h_stride"], P["logits"], P["logit_stride"],
                    P["pslot"][0] + P["final_head"][self.core], local=True)
        if head.hi == head.lo:
            return self.out
        out = io["logits"]
        width = 64 * (head.hi - head.lo)
        self.emit(Opcode.ST, buf=Buffer.RBUF, buf_addr=P["logits"], chan=out.channels[0],
                  hbm_addr=out.offset, len=width, n1=self.rows,
                  hbm_stride1=width, buf_stride1=P["logit_stride"], n2=1,
                  bindings=self.row_bind("n1"))
        return self.out

    def layer(self, li: int, layer) -> None:
        P, c = self.plan, self.qm.config
        blob = self.io["layer_params"][li]
        pbase = P["pslot"][li % 2]
        offs = P["param_offsets"][self.core]
        self.emit(Opcode.LD, buf=Buffer.PBUF, buf_addr=pbase, chan=blob.channels[0],
                  hbm_addr=blob.offset, len=blob.part_bytes, n1=1, n2=1)
        mats = {k: v[self.core] for k, v in P["mats"].items()}
        self.norm(layer.norm1, pbase + offs["norm1"], P["r"], P["h"])
        rope = c.position == "rope"
        H, kvh, hd, G = c.num_heads, c.num_kv_heads, c.head_dim, c.group_size
        for name, wide, narrow, heads, mult, per in (
                ("q", "q32", "q8", H, layer.rope_q, G), ("k", "k32", "k8", kvh, layer.rope_k, 1)):
            width = heads * hd
            first = self.kv_lo * per * hd  # this core's heads start here in the row
            count = (self.kv_hi - self.kv_lo) * per * hd
            if rope:
                self.matmul(mats[f"{li}.{name}"], P["h"], P["h_stride"], P[wide], 4 * width,
                            pbase + offs[name])
                if count:
                    self.misc(MiscFunc.ROPE, a_buf=Buffer.RBUF, a_addr=P[wide] + 4 * first,
                              a_stride=4 * width, d_buf=Buffer.ABUF, d_addr=P[narrow] + first,
                              d_stride=width, p_addr=P["rope"], p_stride=P["rope_row"],
                              n=count, group=hd, m1=mult[0], s1=mult[1],
                              interleaved=int(c.rope_interleaved))
            else:
                self.matmul(mats[f"{li}.{name}"], P["h"], P["h_stride"], P[narrow], width,
                            pbase + offs[name])
        self.matmul(mats[f"{li}.v"], P["h"], P["h_stride"], P["v8"], kvh * hd, pbase + offs["v"])
        self.cache_store(li, "k8", self.io["k_cache"][li])
        self.cache_store(li, "v8", self.io["v_cache"][li])
        self.attention_layer(li, layer)
        self.gather(Buffer.ABUF, P["ctx"], H * hd, self.kv_lo * G * hd,
                    (self.kv_hi - self.kv_lo) * G * hd)
        self.residual_matmul(mats[f"{li}.o"], P["ctx"], H * hd, pbase + offs["o"])
        self.norm(layer.norm2, pbase + offs["norm2"], P["r"], P["h"])
        self.mlp(li, layer, pbase, mats)

    def residual_matmul(self, mat: _Matrix, x_addr: int, x_stride: int, p_addr: int,
                        extra: tuple[tuple[int, int], ...] = ()) -> None:
        """A projection added into this core's strips of the residual, then shared."""
        P = self.plan
        self.matmul(mat, x_addr, x_stride, P["r"], P["r_stride"], p_addr, extra)
        self.gather(Buffer.RBUF, P["r"], P["r_stride"], 64 * mat.lo, 64 * (mat.hi - mat.lo))

    def cache_store(self, li: int, src: str, cache) -> None:
        """New rows of K or V into the cache at POS: on each of the cache's channels ``c``,
        the layout [head][hd/16/nch][max_len][16] of head-dim blocks ``c * hd/16/nch`` on."""
        P, c = self.plan, self.qm.config
        hd, L = c.head_dim, self.qm.max_len
        part = hd // 16 // len(cache.channels)  # head-dim blocks on each channel
        for g in range(self.kv_lo, self.kv_hi):
            local = g - self.kv_lo  # heads are numbered from zero in this core's cache
            for i, chan in enumerate(cache.channels):
                self.emit(Opcode.ST, buf=Buffer.ABUF, buf_addr=P[src] + g * hd + 16 * part * i,
                          chan=chan, hbm_addr=cache.offset + local * part * 16 * L, len=16,
                          n1=part, hbm_stride1=16 * L, buf_stride1=16, n2=self.rows,
                          hbm_stride2=16, buf_stride2=c.num_kv_heads * hd,
                          bindings=[bind_offset(LengthReg.POS, "hbm_addr", 4)] + (
                              [bind_count(LengthReg.SEQ, "n2")] if self.prefill else []))

    def mlp(self, li: int, layer, pbase: int, mats) -> None:
        P, c = self.plan, self.qm.config
        offs = P["param_offsets"][self.core]
        f = c.intermediate_size
        first = mats[f"{li}.gate" if c.gated_mlp else f"{li}.fc1"]
        lo, n = 16 * first.lo, 16 * (first.hi - first.lo)  # this core's hidden columns
        w = P["mlp_local"]  # INT32 regions hold only this core's columns, from column lo
        if c.gated_mlp:
            self.matmul(mats[f"{li}.gate"], P["h"], P["h_stride"], P["g32"], 4 * w,
                        pbase + offs["gate"], local=True)
            self.matmul(mats[f"{li}.up"], P["h"], P["h_stride"], P["u32"], 4 * w,
                        pbase + offs["up"], local=True)
            m1, s1, m2, s2 = layer.act
            if n:
                self.misc(_ACT[c.activation], a_buf=Buffer.RBUF, a_addr=P["g32"],
                          a_stride=4 * w, d_buf=Buffer.RBUF, d_addr=P["a32"],
                          d_stride=4 * w, n=n, m1=m1, s1=s1, m2=m2, s2=s2)
                s1, m2, s2 = layer.gate_mul
                mul = dict(a_buf=Buffer.RBUF, a_addr=P["a32"], a_stride=4 * w,
                           b_buf=Buffer.RBUF, b_addr=P["u32"], b_stride=4 * w, n=n,
                           s1=s1, m2=m2, s2=s2)
                if layer.down_lo is None:
                    self.misc(MiscFunc.MUL, d_buf=Buffer.ABUF, d_addr=P["m"] + lo, d_stride=f,
                              **mul)
                else:  # m in RBUF, then its two INT8 digits hi = round(m/128), lo = m - 128 hi
                    self.misc(MiscFunc.MUL, d_buf=Buffer.RBUF, d_addr=P["a32"],
                              d_stride=4 * w, **mul)
                    wide = dict(a_buf=Buffer.RBUF, a_addr=P["a32"], a_stride=4 * w,
                                d_buf=Buffer.ABUF, d_stride=f, n=n)
                    self.misc(MiscFunc.REQUANT, d_addr=P["m"] + lo, m1=1, s1=7, **wide)
                    self.misc(MiscFunc.ADD, d_addr=P["m_lo"] + lo, b_buf=Buffer.ABUF,
                              b_addr=P["m"] + lo, b_stride=f, m1=1, s1=0, m2=-1, s2=7, **wide)
            down = "down"
        elif layer.act is None:
            self.matmul(mats[f"{li}.fc1"], P["h"], P["h_stride"], P["m"], f, pbase + offs["fc1"])
            down = "fc2"
        else:
            self.matmul(mats[f"{li}.fc1"], P["h"], P["h_stride"], P["g32"], 4 * w,
                        pbase + offs["fc1"], local=True)
            m1, s1, m2, s2 = layer.act
            if n:
                self.misc(_ACT[c.activation], a_buf=Buffer.RBUF, a_addr=P["g32"],
                          a_stride=4 * w, d_buf=Buffer.ABUF, d_addr=P["m"] + lo, d_stride=f,
                          n=n, m1=m1, s1=s1, m2=m2, s2=s2)
            down = "fc2"
        self.gather(Buffer.ABUF, P["m"], f, lo, n)
        extra = ()
        if layer.down_lo is not None:
            self.gather(Buffer.ABUF, P["m_lo"], f, lo, n)
            extra = ((P["m_lo"], pbase + offs["down_lo"]),)
        self.residual_matmul(mats[f"{li}.{down}"], P["m"], f, pbase + offs[down], extra)


def _records(lin: QLinear, lo: int, hi: int) -> bytes:
    rows = slice(16 * lo, 16 * hi)
    return pack_requant_records(lin.bias[rows], lin.mult[rows], lin.shift[rows])


def _layer_blob(layer, offsets: dict, mats: dict, li: int, core: int) -> bytes:
    """One core's parameters of one block: its strips' records, then both norms."""
    blob = bytearray()
    for key, lin in [("q", layer.q), ("k", layer.k), ("v", layer.v), ("o", layer.o),
                     *layer.mlp.items()]:
        offsets[key] = len(blob)
        mat = mats[f"{li}.{key}"][core]
        blob += _records(lin, mat.lo, mat.hi)
    if layer.down_lo is not None:
        offsets["down_lo"] = len(blob)
        mat = mats[f"{li}.down"][core]
        blob += _records(layer.down_lo, mat.lo, mat.hi)
    for key, qn in (("norm1", layer.norm1), ("norm2", layer.norm2)):
        offsets[key] = align(len(blob), 8)
        blob += bytes(offsets[key] - len(blob)) + pack_norm_params(qn.gamma, qn.beta)
    return bytes(blob)


class Lowerer:
    """Lowering in two phases, so a full-size model streams: :meth:`place` each projection
    as soon as it is quantised (its bytes go to the HBM images, then it is released), then
    :meth:`finish` emits the programs from what is left (scales, records, sizes)."""

    def __init__(self, model: ModelConfig, cfg: AcceleratorConfig, max_len: int, *,
                 spool=None, attn_sparsity: tuple[int, int] | None = None):
        """Args:
            attn_sparsity: ``(sink, band)`` in blocks of ``cfg.attn_block`` tokens for
                block-sparse prefill attention (:class:`AttentionSparsity`), or ``None``.
        """
        for name, value in (("head_dim", model.head_dim), ("hidden_size", model.hidden_size),
                            ("intermediate_size", model.intermediate_size)):
            if value % 16:
                raise CompileError(f"model {name} = {value} is not a multiple of 16")
        if max_len % 16:
            raise CompileError(f"max_len {max_len} is not a multiple of 16")
        self.model, self.cfg, self.max_len = model, cfg, max_len
        self.attn_sparsity = attn_sparsity
        self.ktile = self.vtile = max_len * model.head_dim
        # Decode's P.V runs pv_pack KV heads at once, from as many V tiles side by side.
        self.pv_pack = decode_pack(model, cfg, max_len)
        tiles = self.ktile + self.pv_pack * self.vtile
        self.slot = (cfg.wbuf.bytes - tiles) // 2 // 256 * 256
        if self.slot <= 0:
            raise CompileError(f"WBUF ({cfg.wbuf.bytes} bytes) cannot hold the K and V tiles "
                               f"of max_len {max_len} (2 x {self.ktile} bytes)")
        self.placers = [_Placer(cfg, self.slot, core, spool) for core in range(cfg.cores)]
        self.mats: dict[str, list[_Matrix]] = {}
        self.ksplit_cols = 0  # output columns of the largest K-split chunk (0: none)

    def place(self, name: str, lin: QLinear, *, release: bool = True) -> None:
        """Place projection ``name`` (``layers.<i>.<kind>`` or ``lm_head``) on every core."""
        c, cores = self.model, self.cfg.cores
        kind = name.rsplit(".", 1)[-1]
        key = name.removeprefix("layers.")
        strips = lin.weight.padded[0] // 16
        self.mats[key] = []
        for core, placer in enumerate(self.placers):
            if kind in ("q", "k", "v"):  # the rows of this core's heads
                g_lo, g_hi = _split(c.num_kv_heads, cores, core)
                per = c.group_size if kind == "q" else 1
                lo, hi = (g * per * c.head_dim // 16 for g in (g_lo, g_hi))
            else:
                lo, hi = _split(strips, cores, core)
            self.mats[key].append(placer.matrix(name, lin, lo, hi))
        kb = lin.weight.padded[1] // 16
        for mat in self.mats[key]:
            self.ksplit_cols = max([self.ksplit_cols] + [16 * ch.count for ch in mat.chunks
                                                         if ch.n < kb])
        if release:
            lin.weight.release()

    def finish(self, qm: QModel, chunk: int | None = None) -> Lowered:
        """The programs and the rest of the HBM image, once every projection is placed."""
        missing = [n for n in _matrix_names(qm) if n.removeprefix("layers.") not in self.mats]
        if missing:
            raise AssertionError(f"projections never placed: {missing[:3]}")
        c, cfg, L = qm.config, self.cfg, self.max_len
        hd, kvh = c.head_dim, c.num_kv_heads
        # Each core's parameter blobs hold the records of its own output strips only.
        offsets, blobs, finals, head_offs = [], [], [], []
        fin_norm = pack_norm_params(qm.final_norm.gamma, qm.final_norm.beta)
        for core in range(cfg.cores):
            offs: dict[str, int] = {}
            blobs.append([_layer_blob(layer, offs, self.mats, li, core)
                          for li, layer in enumerate(qm.layers)])
            offsets.append(offs)
            head = self.mats["lm_head"][core]
            head_offs.append(align(len(fin_norm), 8))
            finals.append(fin_norm + bytes(head_offs[-1] - len(fin_norm))
                          + _records(qm.lm_head, head.lo, head.hi))
        rope_row = 1 << max(2 * hd - 1, 1).bit_length()  # 2*hd bytes, padded to a power of 2
        table = None
        if c.position == "rope":
            cos, sin = qm.rope_rows(list(range(L)))
            rows = pack_rope_rows(cos, sin)
            table = b"".join(rows[i * 2 * hd:(i + 1) * 2 * hd].ljust(rope_row, b"\0")
                             for i in range(L))
        vocab_pad = qm.lm_head.n_out
        # Partial sums of K-split chunks: one region per pass (two for a split MLP hidden).
        ksplit = (self.ksplit_cols,
                  2 if any(layer.down_lo is not None for layer in qm.layers) else 1)
        chunk = chunk or default_chunk(cfg, qm, self.attn_sparsity, ksplit)
        sparse = attention_sparsity(cfg, qm, self.attn_sparsity, chunk)
        # A cache's head-dim blocks are split over two consecutive channels where the core
        # has them (one per LD lane: the attention's tile loads move both halves side by
        # side), part c holding blocks c * kb / 2 on: [head][kb/kv_nch][L][16].
        kb = hd // 16
        kv_nch = 2 if cfg.hbm_channels_per_core >= 2 and kb % 2 == 0 else 1
        ios = []
        for core, placer in enumerate(self.placers):
            image = placer.image
            g_lo, g_hi = _split(kvh, cfg.cores, core)
            io: dict = {"k_cache": [], "v_cache": [], "kv_heads": [g_lo, g_hi]}
            # Parameters, the RoPE table and the input rows are replicated: every core
            # normalises the whole residual and rotates its own heads.
            io["layer_params"] = [image.place(f"layers.{li}.params", blob, dtype="params",
                                              shape=(len(blob),))
                                  for li, blob in enumerate(blobs[core])]
            for li in range(len(qm.layers)):
                for kind in ("k_cache", "v_cache"):
                    io[kind].append(image.reserve_span(
                        f"layers.{li}.{kind}", (g_hi - g_lo) * hd * L // kv_nch, kv_nch,
                        dtype="int8", shape=(kv_nch, g_hi - g_lo, kb // kv_nch, L, 16)))
                    if sparse is not None:
                        # A partial last call's band load may read up to a chunk of
                        # (masked) positions past the cache's end: keep them in the image.
                        over = sparse.band_tokens - sparse.back_tokens
                        image.reserve_span(f"layers.{li}.{kind}.guard", 16 * over, kv_nch,
                                           dtype="int8", shape=(kv_nch, over, 16),
                                           first=io[kind][-1].channels[0])
            if table is not None:
                io["rope"] = image.place("rope_table", table, dtype="int16",
                                         shape=(L, rope_row // 2))
            io["final"] = image.place("final.params", finals[core], dtype="params",
                                      shape=(len(finals[core]),))
            io["input"] = image.place("input", bytes(4 * c.hidden_size * chunk), dtype="int32",
                                      shape=(chunk, c.hidden_size), reserve_only=True)
            head = self.mats["lm_head"][core]
            cols = 16 * (head.hi - head.lo)  # this core's slice of the logits
            io["logits"] = image.place("logits", bytes(4 * cols * chunk), dtype="int32",
                                       shape=(chunk, cols), reserve_only=True)
            io["logit_cols"] = [16 * head.lo, 16 * head.hi]
            ios.append(io)
        progs = {}
        for phase, rows in (("prefill", chunk), ("decode", 1)):
            blob = max(len(b) for b in [*finals, *(x for core in blobs for x in core)])
            sp = sparse if phase == "prefill" else None
            plan = onchip_plan(cfg, qm, rows, self.slot, self.ktile, self.vtile, rope_row,
                               vocab_pad, align(blob, 8), attn_width=sp and sp.width,
                               ksplit=ksplit, pv_pack=self.pv_pack, decode=phase == "decode")
            plan.update(mats=self.mats, io=ios, param_offsets=offsets, final_norm=0, sparse=sp,
                        final_head=head_offs, in_row=4 * c.hidden_size, rope_row=rope_row,
                        rope_shift=rope_row.bit_length() - 1)
            regs = {LengthReg.SEQ: rows, LengthReg.KV: L, LengthReg.POS: L - 1}
            progs[phase] = [assign_tokens(_Program(qm, cfg, rows, phase == "prefill", plan,
                                                   core).build(), regs)
                            for core in range(cfg.cores)]
            if sp is not None:  # addresses as the sparse plan's: counted, never run
                dense_plan = dict(plan, sparse=None, attn_width=L)
                progs["dense"] = [_Program(qm, cfg, rows, True, dense_plan, core).build()
                                  for core in range(cfg.cores)]
        for placer in self.placers:
            placer.image.finish()
        return Lowered(progs["prefill"], progs["decode"], chunk,
                       [p.image for p in self.placers], ios, sparse,
                       (plan["ktile"], plan["vtile"] + self.pv_pack * self.vtile),
                       progs.get("dense"))


def _matrix_names(qm: QModel) -> list[str]:
    names = [f"layers.{li}.{key}" for li, layer in enumerate(qm.layers)
             for key in ("q", "k", "v", "o", *layer.mlp)]
    return names + ["lm_head"]


def lower(qm: QModel, cfg: AcceleratorConfig, *, chunk: int | None = None) -> Lowered:
    """Lower a quantised model (weights in memory) for every core of ``cfg``; the model keeps
    its weights."""
    lw = Lowerer(qm.config, cfg, qm.max_len)
    for li, layer in enumerate(qm.layers):
        for key, lin in [("q", layer.q), ("k", layer.k), ("v", layer.v), ("o", layer.o),
                         *layer.mlp.items()]:
            lw.place(f"layers.{li}.{key}", lin, release=False)
    lw.place("lm_head", qm.lm_head, release=False)
    return lw.finish(qm, chunk)
