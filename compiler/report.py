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

from flightllm.contract.isa import BindKind, LengthReg, Opcode, apply_bindings, encode

from .lower import Lowered
from .qmodel import QModel

__all__ = ["program_report", "padding_waste"]


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
    }
