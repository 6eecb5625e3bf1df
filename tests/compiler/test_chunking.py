"""The chunk planner: whole rounds of the chains per slot, K-splitting to fill them, striping."""

import pytest

from flightllm.compiler import chunking
from flightllm.compiler.chunking import plan_chunks, stripe
from flightllm.compiler.layout import CompileError
from flightllm.contract.weights import strip_bytes


def _int4(n: int) -> int:
    """Bytes of one INT4 strip range of n blocks with group multipliers (LLaMA2-7B's)."""
    return strip_bytes([16] * n, 4, True, False)


SLOT = 786432  # the u280 preset's weight slot at max_len 2048


def test_projection_chunks_are_whole_rounds_of_the_chains():
    # K = 4096: a slot holds 22 strips; 16 chains take 16 (one round), not 13 or 22.
    plan = plan_chunks(_int4, 256, 128, SLOT, 16)
    assert SLOT // _int4(256) == 22
    assert plan.ranges == ((0, 256, _int4(256)),) and plan.per_chunk == 16
    # Two rounds fit a slot twice the size.
    assert plan_chunks(_int4, 256, 128, 2 * SLOT, 16).per_chunk == 32


def test_down_is_k_split_to_fill_the_chains():
    # K = 11,008: only 8 whole strips fit, so two ranges of 344 blocks make a round of 16.
    assert SLOT // _int4(688) == 8
    plan = plan_chunks(_int4, 688, 128, SLOT, 16)
    assert plan.k_split and plan.per_chunk == 16
    assert [(k0, n) for k0, n, _ in plan.ranges] == [(0, 344), (344, 344)]
    assert plan.per_chunk * max(r[2] for r in plan.ranges) <= SLOT


def test_ranges_cover_k_in_order_and_balanced():
    plan = plan_chunks(_int4, 1001, 64, 200_000, 16)
    ranges = [(k0, n) for k0, n, _ in plan.ranges]
    assert ranges[0][0] == 0 and sum(n for _, n in ranges) == 1001
    assert all(a + n == b for (a, n), (b, _) in zip(ranges, ranges[1:]))
    assert max(n for _, n in ranges) - min(n for _, n in ranges) <= 1
    assert plan.per_chunk == 16 and 16 * max(r[2] for r in plan.ranges) <= 200_000


def test_short_ranges_are_not_cut_just_to_fill_the_chains():
    # K = 8 blocks: halving it would give 4-block ranges, below MIN_SPLIT_BLOCKS, so the
    # chunk keeps whole strips and leaves chains idle.
    assert 8 // 2 < chunking.MIN_SPLIT_BLOCKS
    plan = plan_chunks(_int4, 8, 64, 3 * _int4(8), 16)
    assert not plan.k_split and plan.per_chunk == 3


def test_a_strip_wider_than_the_slot_is_always_split():
    plan = plan_chunks(_int4, 8, 64, _int4(8) - 1, 16)
    assert plan.k_split and plan.per_chunk >= 1
    assert all(r[2] <= _int4(8) - 1 for r in plan.ranges)


def test_fewer_strips_than_chains_need_only_fit():
    # Four strips on 16 chains: a round is the four of them; no split needed for more.
    plan = plan_chunks(_int4, 688, 4, SLOT, 16)
    assert not plan.k_split and plan.per_chunk == 8


def test_reserve_is_kept_free():
    exact = 16 * _int4(256)
    assert plan_chunks(_int4, 256, 16, exact, 16).per_chunk == 16
    # With padding room reserved the round no longer fits whole; K is split instead.
    assert plan_chunks(_int4, 256, 16, exact, 16, reserve=64).k_split


def test_one_block_too_large_names_the_matrix():
    with pytest.raises(CompileError, match=r"layers\.3\.down: one 16x16 block"):
        plan_chunks(_int4, 688, 128, _int4(1) - 1, 16, name="layers.3.down")


@pytest.mark.parametrize("nbytes,channels", [(557056, 13), (64, 13), (1000, 8), (4096, 2),
                                             (13 * 64 + 1, 13)])
def test_stripe_covers_the_chunk_in_whole_beats(nbytes, channels):
    part, use = stripe(nbytes, channels, 64)
    assert part % 64 == 0 and 1 <= use <= channels
    assert (use - 1) * part < nbytes <= use * part   # every channel used holds chunk bytes
    assert use * part - nbytes < channels * 64       # the padding is within the reserve


def test_stripe_spreads_a_round_over_every_channel():
    # 16 LLaMA2-7B strips (557,056 bytes) over 13 channels: all 13 carry a share.
    assert stripe(16 * _int4(256), 13, 64) == (42880, 13)
