"""LD/ST loops, channel fan-out, transposing loads, dynamic offsets, and SYS across cores."""

import numpy as np

from flightllm.contract.config import preset
from flightllm.contract.isa import Binding, BindKind, Buffer, Instruction, LengthReg, Opcode, SysOp
from flightllm.sim.golden import GoldenSimulator

from .progs import Q, bit, load, store


def test_ld_two_loops_and_channel_fanout():
    cfg = preset("tiny")
    sim = GoldenSimulator(cfg)
    rng = np.random.default_rng(0)
    img = [rng.integers(0, 256, size=4096).astype(np.uint8) for _ in range(2)]
    for c in range(2):
        sim.hbm.write(c, 0, img[c])
    # 3 outer x 4 middle x 2 channels x 8 bytes.
    ld = Instruction(Opcode.LD, buf=Buffer.WBUF, buf_addr=0x100, chan=0, hbm_addr=0x10, len=8,
                     n1=4, hbm_stride1=32, buf_stride1=8, n2=3, hbm_stride2=512,
                     buf_stride2=64, nch=2, ch_stride=32)
    counters = sim.run([[ld]])
    wbuf = sim.cores[0].mem[Buffer.WBUF]
    for o in range(3):
        for m in range(4):
            for c in range(2):
                src = 0x10 + o * 512 + m * 32
                dst = 0x100 + c * 32 + o * 64 + m * 8
                np.testing.assert_array_equal(wbuf[dst:dst + 8], img[c][src:src + 8])
    assert counters.hbm_read_bytes == {0: 96, 1: 96}


def test_transposing_load_turns_v_rows_into_vt_tiles():
    sim = GoldenSimulator(preset("tiny"))
    tile = np.arange(256, dtype=np.uint8).reshape(16, 16)
    sim.hbm.write(1, 0x40, tile.tobytes())
    sim.run([[load(Buffer.WBUF, 0, 256, chan=1, hbm_addr=0x40, transpose=1)]])
    got = sim.cores[0].mem[Buffer.WBUF][:256].reshape(16, 16)
    np.testing.assert_array_equal(got, tile.T)


def test_kv_append_at_the_position_register():
    """ST with an OFFSET binding writes the new token's key at POS * 16 (one program)."""
    sim = GoldenSimulator(preset("tiny"))
    key = np.arange(1, 17, dtype=np.uint8)
    sim.cores[0].mem[Buffer.ABUF][:16] = key
    st = store(Buffer.ABUF, 0, 16, chan=1, hbm_addr=0x1000,
               bindings=[Binding(BindKind.OFFSET, LengthReg.POS, "hbm_addr", shift=4)])
    for pos in (0, 1, 7):
        sim.run([[st]], seq=1, kv=pos + 1)
        np.testing.assert_array_equal(sim.hbm.read(1, 0x1000 + 16 * pos, 16), key)


def test_tokens_order_a_round_trip_through_hbm():
    sim = GoldenSimulator(preset("tiny"))
    data = np.arange(64, dtype=np.uint8)
    sim.hbm.write(0, 0, data)
    prog = [load(Buffer.ABUF, 0, 64, release=bit(Q.ST)),
            store(Buffer.ABUF, 0, 64, chan=1, hbm_addr=0x200, wait=bit(Q.LD), release=bit(Q.LD)),
            load(Buffer.WBUF, 0, 64, chan=1, hbm_addr=0x200, wait=bit(Q.ST))]
    counters = sim.run([prog])
    np.testing.assert_array_equal(sim.cores[0].mem[Buffer.WBUF][:64], data)
    assert counters.instructions == {"LD": 2, "ST": 1}


def test_two_cores_gather_and_barrier():
    cfg = preset("tiny").replace(cores=2)
    sim = GoldenSimulator(cfg)
    for c in range(2):
        sim.cores[c].mem[Buffer.ABUF][16 * c:16 * c + 16] = c + 1
    barrier = Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=2)
    prog = [[Instruction(Opcode.SYS, sync_op=SysOp.GATHER, sync_id=1, buf=Buffer.ABUF,
                         addr=16 * c, len=16, release=bit(Q.ST)),
             store(Buffer.ABUF, 0, 32, chan=0, hbm_addr=0, wait=bit(Q.SYS)), barrier]
            for c in range(2)]
    sim.run(prog)
    for c in range(2):
        np.testing.assert_array_equal(sim.cores[c].mem[Buffer.ABUF][:32], [1] * 16 + [2] * 16)
        # Core c's local channel 0 is physical channel c * hbm_channels_per_core.
        np.testing.assert_array_equal(sim.hbm.read(c * cfg.hbm_channels_per_core, 0, 32),
                                      [1] * 16 + [2] * 16)


def test_gather_of_uneven_row_slices():
    """Prefill rows: three cores broadcast column slices of different widths of each row."""
    cfg = preset("tiny").replace(cores=3)
    sim = GoldenSimulator(cfg)
    widths, rows, stride = (16, 32, 0), 4, 64
    starts = (0, 16, 48)
    for c in range(3):
        for r in range(rows):
            a = r * stride + starts[c]
            sim.cores[c].mem[Buffer.RBUF][a:a + widths[c]] = 10 * c + r + 1
    prog = [[Instruction(Opcode.SYS, sync_op=SysOp.GATHER, sync_id=7, buf=Buffer.RBUF,
                         addr=starts[c], len=widths[c], rows=8, stride=stride,
                         bindings=[Binding(BindKind.COUNT, LengthReg.SEQ, "rows")])]
            for c in range(3)]
    sim.run(prog, seq=rows, kv=rows)
    want = np.zeros((rows, stride), dtype=np.uint8)
    for c in range(3):
        for r in range(rows):
            want[r, starts[c]:starts[c] + widths[c]] = 10 * c + r + 1
    for c in range(3):
        got = sim.cores[c].mem[Buffer.RBUF][:rows * stride].reshape(rows, stride)
        np.testing.assert_array_equal(got, want)


def test_ld_channels_writing_the_same_bytes_is_an_error():
    # The hardware may move an LD's channels in different lanes (ld_lanes), so two channels
    # writing one byte have no defined order: the golden model refuses it, naming both.
    import pytest

    from flightllm.sim.golden import ProgramError
    sim = GoldenSimulator(preset("tiny"))
    # Interleaved 64-byte pieces: channel 0 at 0, 128, ..., channel 1 at 64, 192, ...
    woven = Instruction(Opcode.LD, buf=Buffer.WBUF, buf_addr=0, len=64, n1=4, hbm_stride1=64,
                        buf_stride1=128, n2=2, hbm_stride2=256, buf_stride2=512, nch=2,
                        ch_stride=64)
    sim.run([[woven]])
    for clash in (woven.replace(ch_stride=32),                 # neighbours overlap
                  woven.replace(ch_stride=128),                # channel 1 on channel 0's m+1
                  woven.replace(n1=1, n2=1, ch_stride=0)):     # both at one address
        with pytest.raises(ProgramError, match="channels 0 and 1 both write"):
            GoldenSimulator(preset("tiny")).run([[clash]])
    # One channel may overwrite its own bytes (it moves them in order).
    GoldenSimulator(preset("tiny")).run([[woven.replace(nch=1, buf_stride1=32)]])
