"""Malformed programs get a clear error naming the problem: never a hang or a numpy traceback."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightllm.contract.config import preset
from flightllm.contract.isa import (
    OPCODES, Buffer, Instruction, IsaDecodeError, Opcode, OutMode, SysOp, WeightBits,
    encode, encode_program,
)
from flightllm.sim.golden import DeadlockError, GoldenSimulator, ProgramError, TokenBalanceError

from .progs import Q, bit, load, store


def run(prog, cores=1, **regs):
    cfg = preset("tiny").replace(cores=cores)
    return GoldenSimulator(cfg).run(prog, **regs)


def test_bad_opcode_names_the_word():
    words = encode(load(Buffer.ABUF, 0, 16)) + [0xF]
    with pytest.raises(IsaDecodeError, match=r"word 10: field 'opcode' = 15"):
        run([words])


def test_out_of_range_buffer_address_names_the_instruction():
    with pytest.raises(ProgramError, match=r"instruction #1 \(LD at word 10\).*ABUF"):
        run([[load(Buffer.ABUF, 0, 16), load(Buffer.ABUF, (1 << 24) - 8, 16)]])


def test_out_of_range_hbm_channel_and_address():
    with pytest.raises(ProgramError, match="field 'chan' = 5"):
        run([[load(Buffer.ABUF, 0, 16, chan=5)]])
    with pytest.raises(ProgramError, match="outside the channel"):
        run([[load(Buffer.ABUF, 0, 16, hbm_addr=(1 << 28) - 8)]])


def test_deadlock_names_the_stuck_instruction():
    prog = [store(Buffer.ABUF, 0, 16, wait=bit(Q.LD)), load(Buffer.ABUF, 0, 16, wait=bit(Q.ST))]
    with pytest.raises(DeadlockError, match=r"#0 \(ST at word 0\) waits for a token from LD"):
        run([prog])


def test_unbalanced_and_overflowing_tokens():
    with pytest.raises(TokenBalanceError, match="LD->ST: 1"):
        run([[load(Buffer.ABUF, 0, 16, release=bit(Q.ST))]])
    with pytest.raises(ProgramError, match="exceeds the hardware's 255"):
        run([[load(Buffer.ABUF, 0, 1, release=bit(Q.ST))] * 256])


def test_cores_disagreeing_on_sys_and_missing_barrier():
    a = Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=1)
    b = Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=2)
    with pytest.raises(ProgramError, match="disagree on the SYS sequence"):
        run([[a], [b]], cores=2)
    with pytest.raises(DeadlockError, match="other cores at a SYS barrier"):
        run([[a], []], cores=2)
    with pytest.raises(ProgramError, match="2 cores"):
        run([[a]], cores=2)


def test_weight_format_errors_are_program_errors():
    mv = Instruction(Opcode.MV, wbits=WeightBits.INT8, gscale=1, n_strips=1, k_blocks=1,
                     out_mode=OutMode.ACC32)
    with pytest.raises(ProgramError, match="INT8 weights carry no group multipliers"):
        run([[mv]])
    sim = GoldenSimulator(preset("tiny"))
    sim.cores[0].mem[Buffer.WBUF][:8] = 9  # sparsity code 9 is not 0..3
    with pytest.raises(ProgramError, match="sparsity code 9"):
        sim.run([[mv.replace(gscale=0, sparse=1)]])


def test_program_file_round_trip_runs_the_same():
    prog = [load(Buffer.ABUF, 0, 16)]
    counters = GoldenSimulator(preset("tiny")).run(encode_program([prog]))
    assert counters.instructions == {"LD": 1}


def _instruction(op, draw):
    values = {}
    for f in OPCODES[op].fields:
        if f.enum is not None:
            values[f.name] = int(draw(st.sampled_from(list(f.enum))))
        else:
            # Small values make most instructions legal; large ones probe the range checks.
            values[f.name] = draw(st.one_of(st.integers(max(f.lo, 0), min(f.hi, 64)),
                                            st.integers(f.lo, f.hi)))
    return Instruction(op, **values)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_instructions_run_or_raise_program_error(data):
    """Random field values never escape as anything but ProgramError (no numpy traceback)."""
    op = data.draw(st.sampled_from([Opcode.LD, Opcode.ST, Opcode.MM, Opcode.MV, Opcode.MISC]))
    ins = _instruction(op, data.draw)
    try:
        run([[ins]], seq=data.draw(st.integers(0, 64)), kv=data.draw(st.integers(64, 128)))
    except ProgramError:
        pass  # the documented error; anything else escapes and fails the test


def test_oversized_instructions_are_refused_not_attempted():
    """A legal encoding the golden model cannot hold gets a ProgramError, never an OOM/hang."""
    from flightllm.contract.isa import MiscFunc
    huge_misc = Instruction(Opcode.MISC, func=MiscFunc.COPY, a_buf=Buffer.ABUF,
                            d_buf=Buffer.ABUF, n=4096, m=65535)
    with pytest.raises(ProgramError, match="per-instruction limit"):
        run([[huge_misc]])
    huge_ld = Instruction(Opcode.LD, buf=Buffer.ABUF, len=1, n1=65535, n2=65535)
    with pytest.raises(ProgramError, match="transfers"):
        run([[huge_ld]])
