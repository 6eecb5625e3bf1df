"""On-chip planning: where each intermediate lives in ABUF, RBUF, WBUF and PBUF.

:func:`onchip_plan` lays out every region one program needs for a number of token rows with
bump allocators (compiler/layout.py), and refuses what does not fit with the numbers;
:func:`default_chunk` picks the largest prefill chunk that fits; :func:`attention_sparsity`
checks a block-sparse attention mask against the tiles. docs/compiler.md has the table of
what each buffer holds.
"""

from __future__ import annotations

from flightllm.contract.config import AcceleratorConfig

from .layout import Arena, CompileError
from .qmodel import AttentionSparsity, QModel

__all__ = ["attention_sparsity", "default_chunk", "onchip_plan"]


def attention_sparsity(cfg: AcceleratorConfig, qm: QModel, blocks: tuple[int, int] | None,
                       chunk: int) -> AttentionSparsity | None:
    """The prefill attention mask of a build (``blocks``: sink and band in blocks), checked
    against what the tiles can hold; None for dense attention."""
    if blocks is None:
        return None
    sink, band = blocks
    try:
        sp = AttentionSparsity(sink, band, cfg.attn_block, chunk)
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    if sp.width > qm.max_len:
        raise CompileError(f"block-sparse attention: sink {sink} + band {band} blocks of "
                           f"{cfg.attn_block} tokens plus the {chunk}-token chunk span "
                           f"{sp.width} positions, more than max_len {qm.max_len}; use fewer "
                           "blocks or dense attention")
    return sp


def default_chunk(cfg: AcceleratorConfig, qm: QModel, blocks: tuple[int, int] | None = None,
                  ksplit: tuple[int, int] = (0, 1)) -> int:
    """The largest prefill chunk (64, 32, ..., 1 tokens) whose activations fit on chip."""
    for chunk in (64, 32, 16, 8, 4, 2, 1):
        width = None
        if blocks is not None:  # the sparse key window must fit max_len
            width = AttentionSparsity(*blocks, cfg.attn_block, chunk).width
            if width > qm.max_len:
                continue
        try:
            onchip_plan(cfg, qm, chunk, 0, 0, 0, 0, qm.lm_head.n_out, 0, attn_width=width,
                        ksplit=ksplit)
            return chunk
        except CompileError:
            continue
    raise CompileError("not even one token's activations fit the on-chip buffers"
                       + (" with block-sparse attention" if blocks is not None else ""))


def onchip_plan(cfg, qm, rows, slot, ktile, vtile, rope_row, vocab_pad, blob, *,
                attn_width: int | None = None, ksplit: tuple[int, int] = (0, 1),
                pv_pack: int = 1, decode: bool = False) -> dict:
    """Addresses of every on-chip region for ``rows`` token rows; ``attn_width``: the key
    positions one call's attention spans (``max_len`` unless block-sparse); ``ksplit``: the
    output columns of the largest K-split chunk and the passes that need partial sums;
    ``pv_pack``: the KV heads whose P.V one decode MM computes (compiler/attention.py): as
    many V tiles, and attention rows for each of their query heads. ``decode``: the plan of
    the decode program (one token row; attention rows are query heads), not of a prefill
    chunk (attention rows are tokens, even a chunk of one)."""
    c = qm.config
    L, hd, H, kvh, d, f = (qm.max_len, c.head_dim, c.num_heads, c.num_kv_heads, c.hidden_size,
                           c.intermediate_size)
    W = attn_width or L
    a = Arena("ABUF", cfg.abuf.bytes)
    r = Arena("RBUF", cfg.rbuf.bytes)
    w = Arena("WBUF", cfg.wbuf.bytes, 256)
    p = Arena("PBUF", cfg.pbuf.bytes, 8)
    plan = {"r_stride": 4 * d, "h_stride": d, "attn_width": W, "pv_pack": pv_pack}
    plan["h"] = a.take(rows * d, "normed rows")
    plan["q8"] = a.take(rows * H * hd, "queries")
    plan["k8"] = a.take(rows * kvh * hd, "new keys")
    plan["v8"] = a.take(rows * kvh * hd, "new values")
    # Decode's attention rows are query heads of one pack, prefill's are tokens.
    arows = pv_pack * c.group_size if decode else rows
    plan["probs"] = a.take(arows * W, "attention weights")
    plan["ctx"] = a.take(rows * H * hd, "attention context")
    plan["m"] = a.take(rows * f, "MLP hidden rows")
    plan["m_lo"] = a.take(rows * f, "MLP hidden rows, low digits") if c.gated_mlp else None
    plan["r"] = r.take(rows * 4 * d, "the residual stream")
    top = r.mark()  # attention and MLP temporaries share what follows
    plan["q32"] = r.take(rows * 4 * H * hd, "INT32 queries")
    plan["k32"] = r.take(rows * 4 * kvh * hd, "INT32 keys")
    plan["scores"] = r.take(arows * 4 * W, "attention scores")
    plan["pv"] = r.take(arows * 4 * hd * (pv_pack if decode else 1), "P.V accumulators")
    plan["recip"] = r.take(arows * 4, "softmax reciprocals")
    ends = [r.mark()]
    r.reset(top)
    # A core computes at most ceil(strips / cores) strips of the MLP and of the LM head.
    local = 16 * -(-(f // 16) // cfg.cores)
    plan["mlp_local"] = local
    plan["g32"] = r.take(rows * 4 * local, "INT32 gate / fc1 rows")
    plan["u32"] = r.take(rows * 4 * local, "INT32 up rows")
    plan["a32"] = r.take(rows * 4 * local, "activated gate rows")
    ends.append(r.mark())
    r.reset(top)
    head_cols = 16 * -(-(vocab_pad // 16) // cfg.cores)
    plan["logit_stride"] = 4 * head_cols
    plan["logits"] = r.take(rows * 4 * head_cols, "logits (this core's slice)")
    # K-split partial sums live past every alternative of the shared region: a split
    # matrix may write any of them.
    r.reset(max(ends + [r.mark()]))
    cols, passes = ksplit
    plan["ksplit_stride"] = 4 * cols
    plan["ksplit"] = [r.take(rows * 4 * cols, "K-split partial sums") if cols else None
                      for _ in range(passes)]
    plan["wslot"] = (w.take(slot, "weight slot 0"), w.take(slot, "weight slot 1"))
    plan["ktile"] = w.take(ktile, "key tile")
    plan["vtile"] = w.take(pv_pack * vtile, "value tiles")
    plan["pslot"] = (p.take(blob, "layer parameters (even)"),
                     p.take(blob, "layer parameters (odd)"))
    plan["rope"] = p.take(rows * rope_row, "RoPE rows")
    return plan
