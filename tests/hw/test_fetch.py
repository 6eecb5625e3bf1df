"""Instruction fetch and decode (Amaranth's simulator): random instructions of every opcode,
with random bindings, fetched over a stalling AXI read port from an unaligned start, come out
exactly as the contract's encoder writes ``apply_bindings(ins)``; malformed words stop the
unit with DECODE at the right word."""

import random

import pytest
from amaranth.sim import Simulator

from flightllm.contract.config import preset
from flightllm.contract.isa import (
    OPCODES, BindKind, Binding, Instruction, LengthReg, Opcode, apply_bindings, encode,
)
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.fetch import InstructionFetch

CFG = preset("tiny")
REGS = {LengthReg.SEQ: 37, LengthReg.KV: 300, LengthReg.POS: 263}


def _fits(ins: Instruction) -> bool:
    return all(f.lo <= ins.values[f.name] <= f.hi for f in ins.spec.all_fields)


def random_instruction(rng: random.Random) -> Instruction:
    op = rng.choice(list(Opcode))
    spec = OPCODES[op]
    values = {}
    for f in spec.fields:
        if f.enum is not None:
            values[f.name] = rng.choice(list(f.enum)).value
        else:
            small = rng.randint(max(f.lo, 0), min(f.hi, 99))
            values[f.name] = rng.randint(f.lo, f.hi) if rng.random() < 0.5 else small
    others = [q for q in Opcode if q != op]
    wait = sum(1 << q for q in others if rng.random() < 0.3)
    release = sum(1 << q for q in others if rng.random() < 0.3)
    bindings = []
    for _ in range(rng.randint(0, 3)):
        if not spec.bindable:
            break
        bindings.append(Binding(rng.choice(list(BindKind)), rng.choice(list(LengthReg)),
                                rng.choice(spec.bindable), rng.randint(0, 6),
                                rng.randint(0, 400)))
    ins = Instruction(op, wait=wait, release=release, bindings=bindings, **values)
    # Keep bindings whose result still fits the field (an overflow is an error, tested apart).
    if not _fits(apply_bindings(ins, REGS)):
        ins = ins.replace(bindings=())
    return ins


def _simulate(words, base_word: int, *, seed: int, max_cycles: int = 60000):
    """Run the fetch unit over ``words`` placed at word ``base_word``; return the decoded
    (op, word, bits) triples and the final error state."""
    rng = random.Random(seed)
    dut = InstructionFetch(CFG)
    beat_bytes = dut.beat_bits // 8
    memory = bytearray(4 * base_word) + b"".join(w.to_bytes(4, "little") for w in words)
    memory += bytes(4096)
    out, state = [], {}

    async def axi(ctx):
        while True:
            await ctx.tick()
            if not ctx.get(dut.axi.arvalid):
                continue
            ctx.set(dut.axi.arready, 1)
            addr, beats = ctx.get(dut.axi.araddr), ctx.get(dut.axi.arlen) + 1
            await ctx.tick()
            ctx.set(dut.axi.arready, 0)
            for i in range(beats):
                while rng.random() < 0.3:
                    await ctx.tick()
                chunk = memory[addr + i * beat_bytes:addr + (i + 1) * beat_bytes]
                ctx.set(dut.axi.rdata, int.from_bytes(chunk, "little"))
                ctx.set(dut.axi.rlast, i == beats - 1)
                ctx.set(dut.axi.rvalid, 1)
                while True:
                    taken = ctx.get(dut.axi.rready)
                    await ctx.tick()
                    if taken:
                        break
                ctx.set(dut.axi.rvalid, 0)

    async def bench(ctx):
        ctx.set(dut.seq, REGS[LengthReg.SEQ])
        ctx.set(dut.kv, REGS[LengthReg.KV])
        ctx.set(dut.pos, REGS[LengthReg.POS])
        ctx.set(dut.offset, base_word)
        ctx.set(dut.words, len(words))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(max_cycles):
            ready = rng.random() < 0.7
            ctx.set(dut.out.ready, ready)
            await ctx.tick()
            if ctx.get(dut.finished) or ctx.get(dut.error):
                break
        state["error"] = ctx.get(dut.error)
        state["error_word"] = ctx.get(dut.error_word)
        state["finished"] = ctx.get(dut.finished)

    async def monitor(ctx):
        async for _clk, _rst, valid, ready, op, word, bits in ctx.tick().sample(
                dut.out.valid, dut.out.ready, dut.out.p.op, dut.out.p.word, dut.out.p.bits):
            if valid and ready:
                out.append((op, word, bits))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(axi, background=True)
    sim.add_process(monitor)
    sim.add_testbench(bench)
    sim.run()
    return out, state


def test_random_instructions_decode_as_the_contract():
    rng = random.Random(11)
    prog = [random_instruction(rng) for _ in range(40)]
    words, starts = [], []
    for ins in prog:
        starts.append(len(words))
        words += encode(ins)
    out, state = _simulate(words, base_word=3, seed=4)
    assert state["error"] == 0 and state["finished"]
    assert len(out) == len(prog)
    for ins, start, (op, word, bits) in zip(prog, starts, out):
        want = encode(apply_bindings(ins, REGS))[:ins.spec.words]
        got = [(bits >> (32 * i)) & 0xFFFFFFFF for i in range(ins.spec.words)]
        assert (op, word) == (int(ins.op), start)
        assert got == want, f"{ins!r}"
    # Negative control: the bindings changed something, so the comparison sees them.
    assert any(apply_bindings(i, REGS) != i.replace(bindings=()) for i in prog if i.bindings)


@pytest.mark.parametrize("corrupt", ["opcode", "reserved", "self_wait", "truncated"])
def test_malformed_words_are_decode_errors(corrupt):
    good = encode(Instruction(Opcode.ST, len=4, n1=1, n2=1))
    bad = encode(Instruction(Opcode.MV, n_strips=1, k_blocks=1))
    if corrupt == "opcode":
        bad[0] = (bad[0] & ~0xF) | 0x9
    elif corrupt == "reserved":
        bad[-1] |= 1 << 31
    elif corrupt == "self_wait":
        bad[0] |= 1 << (4 + Opcode.MV)
    else:
        bad = bad[:-2]
    out, state = _simulate(good + bad, base_word=0, seed=1, max_cycles=3000)
    assert state["error"] == ErrorCode.DECODE
    assert state["error_word"] == len(good)
    assert len(out) == 1


def test_binding_overflow_is_an_address_error():
    ins = Instruction(Opcode.LD, hbm_addr=0xFFFFFF00, len=4, n1=1, n2=1,
                      bindings=[Binding(BindKind.OFFSET, LengthReg.KV, "hbm_addr", 4, 0)])
    out, state = _simulate(encode(ins), base_word=1, seed=2, max_cycles=3000)
    assert state["error"] == ErrorCode.ADDRESS and state["error_word"] == 0 and not out
