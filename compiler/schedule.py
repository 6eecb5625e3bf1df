"""Dependency tokens from memory hazards: the pass that makes a program safe to run out of order.

The lowering emits each core's instructions in one sequential *program order*, without tokens;
the meaning of the program is executing them in that order. The hardware runs six queues
concurrently, so every read-after-write, write-after-read and write-after-write between
instructions of different queues must be ordered by a token. This pass finds those hazards
from the instructions' memory footprints (sim/footprint.py) and places the tokens.

Token pairing: queue A's k-th release to B is consumed by B's k-th wait on A. For each
instruction j of queue B, let i be the latest earlier instruction of queue A it conflicts with.
If an earlier instruction of B already waited on a release from A at or after i, j is covered
(B is in order); otherwise i releases to B and j waits on A. Releases therefore move strictly
forward and every release has exactly one wait: the program balances by construction.

An OFFSET-bound address moves with its register, so an instruction's footprint is taken as
the hull of its footprints at the smallest (all registers zero) and the largest register
values: a store at POS and a load of the first positions must be ordered even though their
footprints at the largest POS do not meet.
"""

from __future__ import annotations

from typing import Mapping

from flightllm.contract.isa import BindKind, Instruction, LengthReg, Opcode
from flightllm.sim.footprint import Access, footprint

__all__ = ["assign_tokens", "ScheduleError"]


class ScheduleError(ValueError):
    """The input already carries tokens, or a hazard cannot be expressed."""


def assign_tokens(stream: list[Instruction], max_regs: Mapping[LengthReg, int]
                  ) -> list[Instruction]:
    """One core's instructions in program order -> the same with wait/release masks set.

    Args:
        stream: instructions without tokens, in program order.
        max_regs: the largest length-register values the program will run with (bound
            offsets are widened to them).
    """
    nq = len(Opcode)
    qindex = [0] * nq                      # next index within each queue
    where: list[tuple[int, int]] = []      # (queue, index in queue) of each instruction
    last_release = [[-1] * nq for _ in range(nq)]  # [A][B]: newest A index released to B
    release = [0] * len(stream)
    wait = [0] * len(stream)
    by_queue: list[list[int]] = [[] for _ in range(nq)]  # queue index -> position in stream
    live: dict[object, list[tuple[Access, int]]] = {}     # space -> (access, position)
    for pos, ins in enumerate(stream):
        if ins.wait or ins.release:
            raise ScheduleError(f"instruction #{pos} ({ins.op.name}) already carries tokens")
        q = int(ins.op)
        where.append((q, qindex[q]))
        by_queue[q].append(pos)
        qindex[q] += 1
        accesses = _reach(ins, max_regs)
        newest = [-1] * nq  # per producer queue: latest conflicting queue index
        for acc in accesses:
            for other, opos in live.get(acc.space, ()):
                if (acc.write or other.write) and acc.overlaps(other):
                    oq, oi = where[opos]
                    if oq != q and oi > newest[oq]:
                        newest[oq] = oi
        for a in range(nq):
            if newest[a] > last_release[a][q]:
                producer = by_queue[a][newest[a]]
                release[producer] |= 1 << q
                wait[pos] |= 1 << a
                last_release[a][q] = newest[a]
        for acc in accesses:
            entries = live.setdefault(acc.space, [])
            if acc.write:
                # Later accesses that overlap this write are ordered after it, and it after
                # everything it overlaps: entries it covers need no further tracking.
                entries[:] = [(e, p) for e, p in entries
                              if not (acc.start <= e.start and e.end <= acc.end)]
            entries.append((acc, pos))
    return [ins.replace(wait=wait[i], release=release[i]) for i, ins in enumerate(stream)]


def _reach(ins: Instruction, max_regs: Mapping[LengthReg, int]) -> list[Access]:
    """Every byte ``ins`` may touch for register values from zero up to ``max_regs``."""
    high = footprint(ins, max_regs)
    if not any(b.kind == BindKind.OFFSET for b in ins.bindings):
        return high
    # COUNT bindings are taken at their static caps either way, so the two footprints list
    # the same accesses; only OFFSET-bound addresses differ between them.
    low = footprint(ins, {reg: 0 for reg in max_regs})
    if len(low) != len(high) or any(a.space != b.space for a, b in zip(low, high)):
        raise ScheduleError(f"{ins.op.name}: footprints at the smallest and largest lengths "
                            "do not correspond")
    return [Access(h.space, min(lo.start, h.start), max(lo.end, h.end), h.write)
            for lo, h in zip(low, high)]
