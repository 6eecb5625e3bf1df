"""How a weight matrix is cut into the chunks that one WBUF slot holds, and how a chunk is
spread over a core's HBM channels.

A chunk is ``count`` output strips (16 rows each) of one range of K blocks. The matrix
engine gives each of its ``mv_rows`` chains one strip at a time, so a chunk takes
``ceil(count / chains)`` rounds of its K blocks: only a multiple of the chains keeps every
chain busy. A chunk of 13 strips on 16 chains leaves three idle (LLaMA2-7B's projections on
the u280 preset before this plan); 8 strips of ``down`` (K = 11,008) left half of them idle.

So the planner fills the chains first. It takes as many whole rounds of strips as a slot
holds; when not even one round fits, it cuts K into ranges (K-splitting: the engine adds the
ranges through partial sums, exactly) until one does, as long as the ranges stay at least
:data:`MIN_SPLIT_BLOCKS` long: each range is an instruction of its own, with a pipeline fill
and a partial-sum round trip, which a short range would not pay back. A strip wider than the
slot is split whatever the length, as it must be. Strips of a chunk are laid out one after
the other, and the bytes are cut evenly over the channels, not whole strips per channel, so a
chunk of 16 strips still streams from all 13 channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .layout import CompileError, align

__all__ = ["ChunkPlan", "MIN_SPLIT_BLOCKS", "plan_chunks", "stripe"]

#: The shortest K range (16-column blocks) cut only to fill the chains: LLaMA2-7B's ``down``
#: splits into two of 344; a 64-wide toy matrix (4 blocks) is never split for it.
MIN_SPLIT_BLOCKS = 16


@dataclass(frozen=True)
class ChunkPlan:
    """The K ranges of a matrix and the strips of one chunk.

    Attributes:
        ranges: ``(first K block, K blocks, bytes of one strip's range)``, in K order; one
            range means no K-split.
        per_chunk: strips per chunk (a core's last chunk may hold fewer).
    """

    ranges: tuple[tuple[int, int, int], ...]
    per_chunk: int

    @property
    def k_split(self) -> bool:
        return len(self.ranges) > 1


def _balanced(k_blocks: int, parts: int) -> list[tuple[int, int]]:
    cuts = [k_blocks * i // parts for i in range(parts + 1)]
    return [(a, b - a) for a, b in zip(cuts, cuts[1:])]


def plan_chunks(range_bytes: Callable[[int], int], k_blocks: int, strips: int, slot: int,
                chains: int, *, reserve: int = 0, name: str = "matrix") -> ChunkPlan:
    """Plan the chunks of ``strips`` strips of ``k_blocks`` K blocks each.

    Args:
        range_bytes: bytes of one strip's range of ``n`` K blocks (codes, values, multipliers).
        slot: bytes of a WBUF weight slot.
        chains: the matrix engine's chains (``mv_rows``).
        reserve: slot bytes kept free for the striping's padding (:func:`stripe`).
        name: the matrix, for the error message.
    """
    want = max(1, min(chains, strips))
    room = slot - reserve
    for parts in range(1, k_blocks + 1):
        ranges = [(k0, n, range_bytes(n)) for k0, n in _balanced(k_blocks, parts)]
        fit = room // max(r[2] for r in ranges)
        # Stop at a full round, or at the last split whose ranges are long enough.
        if fit >= want or (fit and k_blocks // (parts + 1) < MIN_SPLIT_BLOCKS):
            per = fit // chains * chains if fit >= chains else fit
            return ChunkPlan(tuple(ranges), per)
    raise CompileError(f"{name}: one 16x16 block of a strip takes {range_bytes(1)} bytes, more "
                       f"than the {room}-byte weight slot")


def stripe(nbytes: int, channels: int, grain: int) -> tuple[int, int]:
    """``(bytes per channel, channels used)`` for a chunk of ``nbytes``: parts of whole
    ``grain``-byte beats, as even as that allows; the last part is padded. The padding is
    under ``channels * grain`` bytes (the ``reserve`` to plan with)."""
    part = align(-(-nbytes // channels), grain)
    return part, -(-nbytes // part)
