"""Figures of a compiled build: instruction bytes, their per-length baseline, padding waste.

*Padding waste* is the fraction of matrix-engine work spent beyond the true lengths: a field
bound with COUNT to ``ceil((reg - base) / 2**shift)`` does ``ceil`` units of work where
``(reg - base) / 2**shift`` were needed. It is measured by resolving each program's bindings at
every length it serves and comparing the MACs with the unrounded counts.

The *baseline* is what length-specific static programs (FlightLLM's artefact compiles one per
length bucket; here one per exact length) would take: for every prompt length, the prefill
calls that length needs, and for every KV length a decode program, without binding words.
"""

from __future__ import annotations

import math
from collections import Counter

from flightllm.contract.isa import (
    BindKind, Buffer, LengthReg, Opcode, WeightBits, apply_bindings, encode,
)

from .lower import Lowered
from .qmodel import QModel

__all__ = ["program_report", "padding_waste", "attention_work"]


def _macs(ins, exact: dict[str, float] | None = None) -> float:
    if ins.op not in (Opcode.MM, Opcode.MV):
        return 0.0
    v = dict(ins.values)
    if exact:
        v.update(exact)
    rows = 1 if ins.op == Opcode.MV else v["m_rows"]
    return rows * 256.0 * v["n_strips"] * v["k_blocks"]


def padding_waste(stream, lengths) -> float:
    """Average over ``lengths`` ((seq, kv, pos) triples) of the wasted fraction of MACs."""
    fractions = []
    for seq, kv, pos in lengths:
        regs = {LengthReg.SEQ: seq, LengthReg.KV: kv, LengthReg.POS: pos}
        done = needed = 0.0
        for ins in stream:
            exact = {}
            for b in ins.bindings:
                if b.kind == BindKind.COUNT:
                    t = max(regs[b.reg] - b.base, 0) / (1 << b.shift)
                    exact[b.field] = min(ins.values[b.field], t)
            done += _macs(apply_bindings(ins, regs))
            needed += _macs(ins, exact) if exact else _macs(ins)
        fractions.append((done - needed) / done if done else 0.0)
    return sum(fractions) / len(fractions)


def attention_work(streams, kv_tiles: tuple[int, int], prompt: int, chunk: int) -> dict:
    """Prefill attention's work for a ``prompt``-token prompt fed in ``chunk``-token calls from
    position 0, summed over cores: matrix-engine MACs on the K/V tiles (scores, P.V) and the
    HBM bytes loaded into them (the KV cache traffic)."""
    lo, hi = kv_tiles
    sizes = {Opcode.MM: ("m_rows", "n_strips", "k_blocks"), Opcode.LD: ("len", "n1", "n2")}

    def on_tiles(ins) -> bool:
        if ins.op == Opcode.MM:
            return ins.wbits == WeightBits.INT8 and lo <= ins.w_addr < hi
        return ins.op == Opcode.LD and ins.buf == Buffer.WBUF and lo <= ins.buf_addr < hi
    # Heads and layers repeat the same few shapes: resolve each distinct one once per call.
    shapes: Counter = Counter()
    for stream in streams:
        for ins in stream:
            if on_tiles(ins):
                names = sizes[ins.op]
                static = tuple(ins.values[n] for n in names)
                binds = tuple(b for b in ins.bindings if b.field in names)
                scale = max(ins.nch, 1) if ins.op == Opcode.LD else 256
                shapes[(ins.op, names, static, binds, scale)] += 1
    macs = nbytes = 0
    for pos in range(0, prompt, chunk):
        seq = min(chunk, prompt - pos)
        regs = {LengthReg.SEQ: seq, LengthReg.KV: pos + seq, LengthReg.POS: pos}
        for (op, names, static, binds, scale), count in shapes.items():
            v = dict(zip(names, static))
            for b in binds:
                v[b.field] = b.resolve(v[b.field], regs)
            work = count * scale * math.prod(v.values())
            if op == Opcode.MM:
                macs += work
            else:
                nbytes += work
    return {"macs": macs, "kv_bytes": nbytes}


def _bytes(stream, *, bindings: bool = True) -> int:
    words = 0
    for ins in stream:
        n = len(encode(ins))
        words += n if bindings else n - len(ins.bindings)
    return 4 * words


def program_report(low: Lowered, qm: QModel) -> dict:
    """The build's figures (everything but timings)."""
    L, chunk = qm.max_len, low.chunk
    prefill, decode = low.prefill[0], low.decode[0]  # core 0 has the most (it stores logits)

    def every_core(phase, **kw):
        return sum(_bytes(stream, **kw) for stream in getattr(low, phase))
    total = every_core("prefill") + every_core("decode")
    static_prefill = every_core("prefill", bindings=False)
    static_decode = every_core("decode", bindings=False)
    baseline = sum(math.ceil(n / chunk) * static_prefill for n in range(1, L + 1)) \
        + L * static_decode
    decode_lengths = [(1, kv, kv - 1) for kv in range(1, L + 1)]
    prefill_lengths = [(s, s, 0) for s in range(1, chunk + 1)]
    weights = [lin for layer in qm.layers
               for lin in (layer.q, layer.k, layer.v, layer.o, *layer.mlp.values())]
    weights.append(qm.lm_head)
    weight_bytes = sum(lin.weight.nbytes for lin in weights)
    params = sum(lin.weight.shape[0] * lin.weight.shape[1] for lin in weights)
    waste_p, waste_d = padding_waste(prefill, prefill_lengths), padding_waste(decode,
                                                                              decode_lengths)
    return {
        "instruction_bytes_total": total,
        "instruction_bytes_per_length_baseline": baseline,
        "instruction_bytes_saving": round(baseline / total, 1),
        "padding_waste": round((waste_p * len(prefill_lengths) + waste_d * len(decode_lengths))
                               / (len(prefill_lengths) + len(decode_lengths)), 6),
        "padding_waste_by_phase": {"prefill": round(waste_p, 6), "decode": round(waste_d, 6)},
        "instructions_per_program": {
            "prefill": {f"seq 1-{chunk}, kv 1-{L}": sum(map(len, low.prefill))},
            "decode": {f"kv 1-{L}": sum(map(len, low.decode))},
        },
        "cores": len(low.decode),
        "weight_bytes": weight_bytes,
        "avg_weight_bits": round(8 * weight_bytes / params, 4),
        "max_len": L, "prefill_chunk": chunk,
        "prefill_attention": _attention_figures(low, L),
    }


def _attention_figures(low: Lowered, prompt: int) -> dict:
    """Prefill attention work for a ``prompt``-token prompt; with a sparse mask, also what the
    dense programs would do and the ratios."""
    got = attention_work(low.prefill, low.kv_tiles, prompt, low.chunk)
    out = {"prompt_tokens": prompt, **got,
           "mask": low.attention.to_dict() if low.attention else "dense"}
    if low.dense_prefill is not None:
        dense = attention_work(low.dense_prefill, low.kv_tiles, prompt, low.chunk)
        out.update(dense_macs=dense["macs"], dense_kv_bytes=dense["kv_bytes"],
                   macs_kept=round(got["macs"] / max(dense["macs"], 1), 4),
                   kv_bytes_kept=round(got["kv_bytes"] / max(dense["kv_bytes"], 1), 4))
    return out
