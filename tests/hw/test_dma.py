# amaranth: UnusedElaboratable=no
"""LD/ST engines through one core (Amaranth's simulator, Python AXI slaves with random
stalls): random strided, multi-channel, transposing and bound transfers give the golden
simulator's HBM bytes; out-of-range segments stop with ADDRESS; a 4 KiB-crossing burst is
split."""

import random

import numpy as np
import pytest

from flightllm.contract.config import BufferSpec, preset
from flightllm.contract.isa import Buffer, Instruction, Opcode
from flightllm.contract.regmap import ErrorCode, channel_port
from flightllm.hw.bufport import width_groups
from flightllm.hw.dma import LoadEngine

from .core_harness import run_core
from .kernel_programs import IMAGE_BYTES, golden_images, random_transfer_program, words_of

CFG = preset("tiny")
NAMES = [channel_port(0, ch, CFG) for ch in range(CFG.hbm_channels_per_core)]


def _images(rng, names=NAMES):
    return {n: bytes(rng.getrandbits(8) for _ in range(IMAGE_BYTES)) for n in names}


def _check(prog, lengths, seed, stall, cfg=CFG):
    rng = random.Random(seed + 100)
    names = [channel_port(0, ch, cfg) for ch in range(cfg.hbm_channels_per_core)]
    images = _images(rng, names)
    words = words_of(prog)
    want = golden_images(cfg, [words], images, lengths)
    assert want != images, "vacuous: the program changed nothing"
    got, state = run_core(cfg, words, [images[n] for n in names], lengths=lengths, seed=seed,
                          stall=stall)
    assert state["done"] and state["error"] == 0, state
    for name, image in zip(names, got):
        if image != want[name]:
            diff = np.flatnonzero(np.frombuffer(image, np.uint8)
                                  != np.frombuffer(want[name], np.uint8))
            pytest.fail(f"{name}: {len(diff)} bytes differ from golden, first at {diff[0]:#x}")
    return state


@pytest.mark.parametrize("seed,stall", [pytest.param(1, 0.0, marks=pytest.mark.slow), (2, 0.4),
                                        pytest.param(3, 0.2, marks=pytest.mark.slow)])
def test_random_transfers_match_golden(seed, stall):
    lengths = {"seq": 2, "kv": 6, "pos": 4}
    prog = random_transfer_program(CFG, random.Random(seed), pairs=4, lengths=lengths)
    _check(prog, lengths, seed, stall)


def test_beats_as_wide_as_the_rows_match_golden():
    # The full-size presets use 512-bit masters on 64-byte rows: every beat fills a row, and
    # any misaligned segment straddles two. tiny with 128-bit masters on its 16-byte rows
    # (RBUF is wider) is the same geometry.
    cfg = CFG.replace(axi_data_bits=128)
    lengths = {"seq": 2, "kv": 6, "pos": 4}
    prog = random_transfer_program(cfg, random.Random(7), pairs=4, lengths=lengths)
    _check(prog, lengths, 7, 0.3, cfg=cfg)


def test_one_writer_and_reader_serve_buffers_of_one_width():
    # An LD fills, and an ST drains, one buffer at a time, so each engine has one row writer
    # and reader per row width. With RBUF rows as narrow as the others' (and RBUF twice as
    # deep), one writer and one reader serve all four buffers of different depths.
    assert width_groups(CFG) == [(0, 1, 3), (2,)]
    cfg = CFG.replace(rbuf=BufferSpec(16, 4096))
    assert width_groups(cfg) == [(0, 1, 2, 3)]
    lengths = {"seq": 2, "kv": 6, "pos": 4}
    prog = random_transfer_program(cfg, random.Random(3), pairs=4, lengths=lengths)
    assert {ins.buf for ins in prog} == set(Buffer)
    _check(prog, lengths, 3, 0.3, cfg=cfg)


def test_burst_across_4k_boundary_and_long_rows():
    # 600 bytes from 0xF00 cross a 4 KiB boundary; the store goes back across one too.
    prog = [Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.RBUF, buf_addr=4,
                        hbm_addr=0xF03, len=600, n1=1, n2=1),
            Instruction(Opcode.ST, wait=1 << Opcode.LD, buf=Buffer.RBUF, buf_addr=4,
                        hbm_addr=0x1F81, len=600, n1=1, n2=1, chan=1)]
    _check(prog, {"seq": 1, "kv": 1, "pos": 0}, seed=5, stall=0.3)


@pytest.mark.parametrize("field,value", [("hbm_addr", (1 << 28) - 8), ("buf_addr", 0x7FF8),
                                         ("chan", 2)])
def test_out_of_range_is_an_address_error(field, value):
    ins = Instruction(Opcode.LD, buf=Buffer.ABUF, len=16, n1=1, n2=1, **{field: value})
    images = _images(random.Random(0))
    _, state = run_core(CFG, words_of([ins]), [images[n] for n in NAMES],
                        lengths={"seq": 1, "kv": 1, "pos": 0})
    assert state["done"] and state["error"] == ErrorCode.ADDRESS and state["error_word"] == 0


def test_engine_refuses_beats_wider_than_rows():
    with pytest.raises(ValueError, match="wider than"):
        LoadEngine(CFG.replace(axi_data_bits=256))


@pytest.mark.parametrize("seed,axi_bits", [(11, 64), (12, 128)])
def test_two_lanes_match_golden(seed, axi_bits):
    # Each lane moves the segments of its own channels; where two channels' segments share a
    # buffer row, the lanes write their bytes of it separately (byte enables), in any order.
    cfg = CFG.replace(ld_lanes=2, axi_data_bits=axi_bits)
    lengths = {"seq": 2, "kv": 6, "pos": 4}
    prog = random_transfer_program(cfg, random.Random(seed), pairs=4, lengths=lengths)
    assert any(ins.op == Opcode.LD and ins.nch == 2 for ins in prog), "vacuous: no 2-channel LD"
    _check(prog, lengths, seed, 0.3, cfg=cfg)


def test_four_lanes_match_golden():
    # Four lanes on four channels (lane k: channel k), beats as wide as the rows: WBUF is
    # four banks, the other buffers take the lanes' writes one per cycle.
    cfg = CFG.replace(ld_lanes=4, hbm_channels_per_core=4, axi_data_bits=128)
    lengths = {"seq": 2, "kv": 6, "pos": 4}
    prog = random_transfer_program(cfg, random.Random(13), pairs=4, lengths=lengths)
    assert any(ins.op == Opcode.LD and ins.nch >= 3 for ins in prog), "vacuous: no 3+ channel LD"
    _check(prog, lengths, 13, 0.3, cfg=cfg)


def test_two_lanes_fill_wbuf_twice_as_fast():
    """A two-channel LD of 4 KiB into WBUF with beats as wide as its rows: one lane moves one
    beat per cycle, two lanes (and WBUF's two banks) two. Also: the lane without a channel
    (nch = 1) is done at once."""
    # Each channel's last 64 bytes go back to HBM, so the check sees both lanes' data.
    back = [Instruction(Opcode.ST, wait=1 << Opcode.LD, buf=Buffer.WBUF,
                        buf_addr=0x100 + 2048 * ch + 1984, hbm_addr=0x6000, len=64, n1=1, n2=1,
                        chan=ch) for ch in (0, 1)]
    prog = [Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.WBUF, buf_addr=0x100,
                        hbm_addr=0x40, len=2048, n1=1, n2=1, nch=2, ch_stride=2048), back[0]]
    prog.append(back[1].replace(wait=0))
    cycles = {}
    for lanes in (1, 2):
        state = _check(prog, {"seq": 1, "kv": 1, "pos": 0}, seed=4, stall=0.0,
                       cfg=CFG.replace(axi_data_bits=128, ld_lanes=lanes))
        cycles[lanes] = state["cycles"]
    beats = 2 * 2048 // 16
    # The lane saves about half the beats (in one run: 309 -> 180 cycles).
    assert cycles[1] >= beats, cycles
    assert cycles[1] - cycles[2] >= 0.4 * beats, cycles
    one = [Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.WBUF, buf_addr=0x100,
                       hbm_addr=0x40, len=2048, n1=1, n2=1, chan=1),
           back[0].replace(buf_addr=0x100 + 1984, chan=1)]
    state = _check(one, {"seq": 1, "kv": 1, "pos": 0}, seed=4, stall=0.0,
                   cfg=CFG.replace(axi_data_bits=128, ld_lanes=2))
    assert cycles[1] - state["cycles"] >= 0.4 * beats, (state["cycles"], cycles)


def test_four_lanes_fill_wbuf_twice_as_fast_as_two():
    """A four-channel LD of 4 KiB into WBUF with beats as wide as its rows: two lanes move
    two beats per cycle, four lanes (and WBUF's four banks) four (in one run: 333, 206 and 144
    cycles with one, two and four lanes, the stores of the check included)."""
    cfg = CFG.replace(axi_data_bits=128, hbm_channels_per_core=4)
    # Each channel's last 64 bytes go back to HBM, so the check sees every lane's data.
    back = [Instruction(Opcode.ST, wait=1 << Opcode.LD if ch == 0 else 0, buf=Buffer.WBUF,
                        buf_addr=0x100 + 1024 * ch + 960, hbm_addr=0x6000, len=64, n1=1,
                        n2=1, chan=ch) for ch in range(4)]
    ld = Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.WBUF, buf_addr=0x100,
                     hbm_addr=0x40, len=1024, n1=1, n2=1, nch=4, ch_stride=1024)
    cycles = {}
    for lanes in (2, 4):
        state = _check([ld, *back], {"seq": 1, "kv": 1, "pos": 0}, seed=4, stall=0.0,
                       cfg=cfg.replace(ld_lanes=lanes))
        cycles[lanes] = state["cycles"]
    beats = 4 * 1024 // 16
    # Two lanes need at least half the beats; four lanes save about a quarter of them.
    assert cycles[2] >= beats // 2, cycles
    assert cycles[2] - cycles[4] >= 0.2 * beats, cycles


def test_transposed_loads_stream_at_the_beat_rate():
    """Decode's V tile loads transpose every 16x16 tile: the transposer takes the next tile
    while it sends the last one out, so a transposed LD costs one tile's fill more than a
    plain one (with one tile register it cost twice the beats: 294 against 166 cycles)."""
    cfg = CFG.replace(axi_data_bits=128)  # 16-byte beats: 16 per tile
    back = Instruction(Opcode.ST, wait=1 << Opcode.LD, buf=Buffer.WBUF, buf_addr=0x100 + 1984,
                       hbm_addr=0x6000, len=64, n1=1, n2=1, chan=0)
    cycles = {}
    for transpose in (0, 1):
        ld = Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.WBUF, buf_addr=0x100,
                         hbm_addr=0x40, len=2048, n1=1, n2=1, transpose=transpose)
        state = _check([ld, back], {"seq": 1, "kv": 1, "pos": 0}, seed=4, stall=0.0, cfg=cfg)
        cycles[transpose] = state["cycles"]
    assert cycles[0] + 256 // 16 <= cycles[1] + 2 <= cycles[0] + 256 // 16 + 6, cycles


def test_segments_follow_each_other_without_a_gap():
    """An LD lane loads the next segment's descriptor in the cycle its segment ends: 2 KiB as
    32 segments of four 16-byte beats takes what one 2 KiB segment does (two idle cycles a
    segment before: 228 against 166), and one-beat segments go at the address generator's
    rate, one per 4 cycles (UnitTiming.segment_issue)."""
    cfg = CFG.replace(axi_data_bits=128)
    back = Instruction(Opcode.ST, wait=1 << Opcode.LD, buf=Buffer.WBUF, buf_addr=0x100 + 1984,
                       hbm_addr=0x6000, len=64, n1=1, n2=1, chan=0)
    cycles = {}
    for seg in (2048, 64, 16):
        ld = Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.WBUF, buf_addr=0x100,
                         hbm_addr=0x40, len=seg, n1=2048 // seg, hbm_stride1=seg,
                         buf_stride1=seg, n2=1)
        state = _check([ld, back], {"seq": 1, "kv": 1, "pos": 0}, seed=4, stall=0.0, cfg=cfg)
        cycles[seg] = state["cycles"]
    assert abs(cycles[64] - cycles[2048]) <= 2, cycles
    beats = 2048 // 16
    assert 4 * beats - 8 <= cycles[16] - (cycles[2048] - beats) <= 4 * beats + 8, cycles
