# amaranth: UnusedElaboratable=no
"""ByteReader (hw/row_stream.py) against the bytes of a Python row memory: random segments
come out as chunks, byte-aligned readers at any address and word-aligned readers (``align``)
at multiples of their word (Amaranth's simulator)."""

import random

import pytest
from amaranth.sim import Simulator

from flightllm.contract.config import BufferSpec
from flightllm.hw.row_stream import ByteReader

SPEC = BufferSpec(16, 64)
WIDE = BufferSpec(64, 16)


def _read(segments, *, chunk, align, seed, spec=SPEC, stalls=True, singles=None):
    """Run ``segments`` through a reader whose rows come from a random memory; returns the
    chunks read and the chunks the memory holds (and, with ``singles``, appends each chunk's
    ``single`` flag and the cycle it came out to that list)."""
    rng = random.Random(seed)
    memory = bytes(rng.getrandbits(8) for _ in range(spec.bytes))
    dut = ByteReader(spec, chunk, align=align)
    got, want = [], []
    for addr, nbytes in segments:
        for i in range(0, nbytes, chunk):
            want.append(memory[addr + i:addr + min(i + chunk, nbytes)])

    async def bench(ctx):
        pending = None                 # the row requested last cycle: its data is due now
        queued = list(segments)
        for cycle in range(40 * len(segments) + 100):
            if pending is not None:
                row = memory[pending * spec.width:(pending + 1) * spec.width]
                ctx.set(dut.rsp.valid, 1)
                ctx.set(dut.rsp.payload, int.from_bytes(row, "little"))
            else:
                ctx.set(dut.rsp.valid, 0)
            ctx.set(dut.req.ready, not stalls or rng.random() < 0.7)
            ctx.set(dut.out.ready, not stalls or rng.random() < 0.7)
            ctx.set(dut.cmd.valid, bool(queued))
            if queued:
                ctx.set(dut.cmd.payload, {"addr": queued[0][0], "nbytes": queued[0][1]})
            if queued and ctx.get(dut.cmd.ready):
                queued.pop(0)
            pending = ctx.get(dut.req.payload) if ctx.get(dut.req.valid) and \
                ctx.get(dut.req.ready) else None
            if ctx.get(dut.out.valid) and ctx.get(dut.out.ready):
                data = ctx.get(dut.out.payload.data).to_bytes(chunk, "little")
                got.append(data[:len(want[len(got)])] if len(got) < len(want) else data)
                if singles is not None:
                    singles.append((ctx.get(dut.out.payload.single), cycle))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, want


def _segments(rng, align, count=12):
    out = []
    for _ in range(count):
        nbytes = rng.randrange(1, 48)
        addr = rng.randrange(0, SPEC.bytes - nbytes) // align * align
        out.append((addr, nbytes))
    return out


@pytest.mark.parametrize("chunk,align", [(8, 1), (8, 8), (16, 8), (4, 4), (16, 16), (2, 1)])
def test_segments_come_out_as_their_bytes(chunk, align):
    rng = random.Random(chunk * 10 + align)
    got, want = _read(_segments(rng, align), chunk=chunk, align=align, seed=align)
    assert len(want) > 12 and got == want


def test_a_word_reader_given_an_unaligned_segment_reads_the_wrong_bytes():
    # The promise is the caller's (the matrix unit refuses such weight addresses first).
    got, want = _read([(12, 16)], chunk=8, align=8, seed=3)
    assert got != want


@pytest.mark.parametrize("align", [3, 16, 0])
def test_align_must_divide_the_chunk(align):
    with pytest.raises(ValueError, match="align must be a power of two"):
        ByteReader(SPEC, 8, align=align)


def test_word_pairs_on_wide_rows_come_out_as_their_bytes():
    # Two-word chunks over 8-word rows: pairs that straddle rows go through the carry.
    rng = random.Random(11)
    segments = []
    for _ in range(14):
        nbytes = 8 * rng.randrange(1, 30)
        segments.append((rng.randrange(0, WIDE.bytes - nbytes) // 8 * 8, nbytes))
    segments += [(56, 8), (56, 16), (56, 24), (120, 8), (0, 8)]   # a row's last word first
    flags = []
    got, want = _read(segments, chunk=16, align=8, seed=4, spec=WIDE, singles=flags)
    assert got == want
    # ``single`` marks exactly the chunks holding one word of the segment.
    assert [f for f, _ in flags] == [int(len(w) == 8) for w in want]


def test_word_pairs_come_one_per_cycle_at_either_alignment():
    for addr in (0, 8, 56):
        flags = []
        got, want = _read([(addr, 512)], chunk=16, align=8, seed=5, spec=WIDE,
                          stalls=False, singles=flags)
        assert got == want
        cycles = [c for _, c in flags]
        # Back to back after the first; starting at a row's last word costs one cycle there.
        assert cycles[-1] - cycles[0] == len(want) - 1, (addr, cycles)
