"""Token assignment: any interleaving the tokens allow gives the program-order result."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightllm.compiler.schedule import ScheduleError, assign_tokens
from flightllm.contract.config import preset
from flightllm.contract.isa import (
    Binding, BindKind, Buffer, Instruction, LengthReg, MiscFunc, Opcode, OutMode, WeightBits,
)
from flightllm.contract.params import pack_requant_records
from flightllm.sim.golden import GoldenSimulator

REGS = {LengthReg.SEQ: 1, LengthReg.KV: 8, LengthReg.POS: 7}
A, W, R = Buffer.ABUF, Buffer.WBUF, Buffer.RBUF


def addr(draw, align=16, top=768):
    return draw(st.integers(0, top // align)) * align


@st.composite
def instruction(draw):
    kind = draw(st.sampled_from(["ld", "st", "mv", "copy", "requant", "add", "fill"]))
    if kind in ("ld", "st"):
        buf = draw(st.sampled_from([A, W, R] if kind == "ld" else [A, R]))
        n1 = draw(st.integers(1, 3))
        binds = []
        if draw(st.booleans()):  # a dynamic offset, as KV-cache stores have
            binds = [Binding(BindKind.OFFSET, LengthReg.POS, "hbm_addr", shift=4)]
        return Instruction(Opcode.LD if kind == "ld" else Opcode.ST, buf=buf,
                           buf_addr=addr(draw), chan=draw(st.integers(0, 1)),
                           hbm_addr=addr(draw, top=512), len=16 * draw(st.integers(1, 4)),
                           n1=n1, hbm_stride1=64, buf_stride1=64, n2=1, bindings=binds)
    if kind == "mv":
        q8 = draw(st.booleans())
        return Instruction(Opcode.MV, w_addr=addr(draw), wbits=WeightBits.INT8, n_strips=1,
                           k_blocks=draw(st.integers(1, 2)), x_addr=addr(draw),
                           out_mode=OutMode.Q8 if q8 else OutMode.ACC32, out_addr=addr(draw),
                           p_addr=0, p_uniform=1)
    src, dst = draw(st.sampled_from([(A, R), (R, A), (R, R), (A, A)]))
    n = draw(st.integers(1, 8)) * 4
    common = dict(a_buf=src, a_addr=addr(draw), a_stride=64, d_buf=dst, d_addr=addr(draw),
                  d_stride=64, n=n, m=draw(st.integers(1, 2)))
    if kind == "copy":
        return Instruction(Opcode.MISC, func=MiscFunc.COPY, **common)
    if kind == "fill":
        return Instruction(Opcode.MISC, func=MiscFunc.FILL, aux=draw(st.integers(-99, 99)),
                           **common)
    if kind == "add":
        return Instruction(Opcode.MISC, func=MiscFunc.ADD, b_buf=src, b_addr=addr(draw),
                           b_stride=64, m1=3, s1=2, m2=5, **common)
    return Instruction(Opcode.MISC, func=MiscFunc.REQUANT, m1=7, s1=3, **common)


def fresh(seed):
    sim = GoldenSimulator(preset("tiny"))
    rng = np.random.default_rng(seed)
    for c in range(2):
        sim.hbm.write(c, 0, rng.integers(0, 256, 1024).astype(np.uint8))
    core = sim.cores[0]
    for buf in (A, W, R):
        core.mem[buf][:1024] = rng.integers(0, 256, 1024).astype(np.uint8)
    core.mem[Buffer.PBUF][:8] = np.frombuffer(pack_requant_records(7, 300, 12), np.uint8)
    return sim


def state(sim):
    return [m[:2048].copy() for m in sim.cores[0].mem.values()] + \
        [sim.hbm.read(c, 0, 1024) for c in range(2)]


def same(s1, s2):
    return all(np.array_equal(a, b) for a, b in zip(s1, s2))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(instruction(), min_size=2, max_size=24), st.integers(0, 2**16))
def test_every_interleaving_matches_program_order(prog, seed):
    ref = fresh(seed)
    ref.run([prog], order="program", seq=1, kv=8)
    scheduled = assign_tokens(prog, REGS)
    for order, s in [("greedy", 0)] + [("random", k) for k in range(4)]:
        sim = fresh(seed)
        sim.run([scheduled], order=order, seed=s, seq=1, kv=8)  # also checks token balance
        assert same(state(sim), state(ref)), f"{order} interleaving (seed {s}) differs"


def test_without_tokens_interleavings_diverge():
    """Negative control: the same kind of program with no tokens does race."""
    prog = [Instruction(Opcode.LD, buf=A, buf_addr=0, chan=0, hbm_addr=0, len=64, n1=1, n2=1),
            Instruction(Opcode.MISC, func=MiscFunc.REQUANT, a_buf=A, a_addr=0, d_buf=R,
                        d_addr=0, n=16, m=1, m1=7, s1=3),
            Instruction(Opcode.ST, buf=R, buf_addr=0, chan=1, hbm_addr=0, len=64, n1=1, n2=1)]
    ref = fresh(1)
    ref.run([prog], order="program")
    results = []
    for s in range(8):
        sim = fresh(1)
        sim.run([prog], order="random", seed=s)
        results.append(same(state(sim), state(ref)))
    assert not all(results), "no interleaving raced: the control cannot detect missing tokens"
    for s in range(8):
        sim = fresh(1)
        sim.run([assign_tokens(prog, REGS)], order="random", seed=s)
        assert same(state(sim), state(ref))


def test_tokens_are_minimal_on_a_chain():
    prog = [Instruction(Opcode.LD, buf=A, buf_addr=0, len=16, n1=1, n2=1),
            Instruction(Opcode.LD, buf=A, buf_addr=16, len=16, n1=1, n2=1),
            Instruction(Opcode.MISC, func=MiscFunc.COPY, a_buf=A, a_addr=0, d_buf=R, d_addr=0,
                        n=32, m=1),
            Instruction(Opcode.ST, buf=R, buf_addr=0, chan=1, len=32, n1=1, n2=1)]
    out = assign_tokens(prog, REGS)
    # (The store goes to another channel: on channel 0 it would overwrite what the loads
    # read, a real write-after-read hazard that needs an LD->ST token.)
    # One token LD->MISC (from the later load, which covers the earlier: LD is in order)
    # and one MISC->ST; nothing else.
    assert [(i.wait, i.release) for i in out] == [
        (0, 0), (0, 1 << Opcode.MISC), (1 << Opcode.LD, 1 << Opcode.ST), (1 << Opcode.MISC, 0)]


def test_prior_tokens_are_refused():
    with pytest.raises(ScheduleError, match="already carries tokens"):
        assign_tokens([Instruction(Opcode.LD, release=1 << Opcode.ST)], REGS)


def test_offset_bound_store_is_ordered_at_every_position():
    """A store at POS and a load of position 0 meet only when POS is small: the tokens must
    cover every POS up to the largest, not just the footprints at the largest."""
    pos_store = Instruction(Opcode.ST, buf=A, buf_addr=0, chan=0, hbm_addr=0, len=16, n1=1, n2=1,
                            bindings=[Binding(BindKind.OFFSET, LengthReg.POS, "hbm_addr",
                                              shift=4)])
    load_first = Instruction(Opcode.LD, buf=W, buf_addr=0, chan=0, hbm_addr=0, len=16, n1=1,
                             n2=1)
    out = assign_tokens([pos_store, load_first], REGS)  # POS up to 7: the store reaches 0..127
    assert out[0].release == 1 << Opcode.LD and out[1].wait == 1 << Opcode.ST
    # ... and not when the load is past every position the store can write.
    far = load_first.replace(hbm_addr=16 * 8)
    assert [(i.wait, i.release) for i in assign_tokens([pos_store, far], REGS)] == [(0, 0)] * 2
