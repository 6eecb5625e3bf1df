"""The Amaranth instruction layouts read every field exactly as the Python decoder does."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from flightllm.contract.isa import (
    BINDING_FIELDS, HEADER, MAX_BINDINGS, OPCODES, WORD_BITS, Binding, BindKind, Instruction,
    LengthReg, MiscFunc, Opcode, Queue, decode, encode,
)
from flightllm.hw.isa_layouts import (
    BINDING_LAYOUT, BINDING_TARGETS, HEADER_LAYOUT, OPCODE_LAYOUTS, enum_shape,
    instruction_bits, max_instruction_words,
)

OPS = list(Opcode)


def random_instruction(rng: np.random.Generator, op: Opcode) -> Instruction:
    """Every field random within its range or enum; masks avoid the own queue."""
    spec = OPCODES[op]
    values = {}
    for f in spec.fields:
        if f.enum is not None:
            values[f.name] = int(rng.choice([int(m) for m in f.enum]))
        else:
            values[f.name] = int(rng.integers(f.lo, f.hi, endpoint=True))
    others = sum(1 << q for q in Queue if q != op)
    bind = {f.name: f for f in BINDING_FIELDS}
    bindings = [Binding(BindKind(int(rng.integers(len(BindKind)))),
                        LengthReg(int(rng.integers(len(LengthReg)))),
                        spec.bindable[int(rng.integers(len(spec.bindable)))],
                        int(rng.integers(bind["shift"].hi, endpoint=True)),
                        int(rng.integers(bind["base"].hi, endpoint=True)))
                for _ in range(int(rng.integers(MAX_BINDINGS, endpoint=True)))
                if spec.bindable]
    return Instruction(op, wait=int(rng.integers(64)) & others,
                       release=int(rng.integers(64)) & others, bindings=bindings, **values)


def _bits(words: list[int]) -> int:
    return sum(w << (WORD_BITS * i) for i, w in enumerate(words))


class FieldTap(Elaboratable):
    """Raw instruction bits in; every field (and the binding word's) out through the layouts."""

    def __init__(self, op: Opcode):
        self.op = op
        self.raw = Signal(instruction_bits(op))
        self.bind_raw = Signal(WORD_BITS)
        layout = OPCODE_LAYOUTS[op]
        self.fields = {name: Signal(field.shape, name=f"o_{name}") for name, field in layout}
        self.header = {name: Signal(field.shape, name=f"h_{name}")
                       for name, field in HEADER_LAYOUT}
        self.bind = {name: Signal(field.shape, name=f"b_{name}")
                     for name, field in BINDING_LAYOUT}

    def elaborate(self, platform):
        m = Module()
        view = data.View(OPCODE_LAYOUTS[self.op], self.raw)
        head = data.View(HEADER_LAYOUT, self.raw[:WORD_BITS])
        bind = data.View(BINDING_LAYOUT, self.bind_raw)
        m.d.comb += [sig.eq(view[name]) for name, sig in self.fields.items()]
        m.d.comb += [sig.eq(head[name]) for name, sig in self.header.items()]
        m.d.comb += [sig.eq(bind[name]) for name, sig in self.bind.items()]
        return m


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_layout_fields_match_python_decoder(op):
    rng = np.random.default_rng(1000 + int(op))
    cases = [random_instruction(rng, op) for _ in range(4)]
    cases.append(Instruction(op))  # all zeros
    dut = FieldTap(op)
    checked = []

    async def testbench(ctx):
        for ins in cases:
            words = encode(ins)
            fixed = OPCODES[op].words
            ref, _ = decode(words)
            ctx.set(dut.raw, _bits(words[:fixed]))
            for i, b in enumerate(ref.bindings):
                ctx.set(dut.bind_raw, words[fixed + i])
                got = {name: int(ctx.get(sig)) for name, sig in dut.bind.items()}
                assert got == {"kind": b.kind, "reg": b.reg, "shift": b.shift, "base": b.base,
                               "target": BINDING_TARGETS[op].index(b.field)}
            got = {name: int(ctx.get(sig)) for name, sig in dut.fields.items()}
            assert got == dict(ref.values)
            assert {name: int(ctx.get(sig)) for name, sig in dut.header.items()} == \
                {f.name: ref.values[f.name] for f in HEADER}
            # The view of the raw signal reads the same as the elaborated field outputs.
            const = ctx.get(data.View(OPCODE_LAYOUTS[op], dut.raw))
            assert {name: int(const[name]) for name in got} == got
            checked.append(ins)

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    assert checked == cases


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_layout_matches_contract_table(op):
    spec, layout = OPCODES[op], OPCODE_LAYOUTS[op]
    assert layout.size == spec.words * WORD_BITS == instruction_bits(op)
    assert [name for name, _ in layout] == [f.name for f in spec.all_fields]
    for f in spec.all_fields:
        field = layout[f.name]
        assert field.offset == spec.layout[f.name]
        shape = Shape.cast(field.shape)
        assert shape == (signed(f.width) if f.signed else unsigned(f.width)), f.name
        if f.enum is not None:
            assert {m.name: m.value for m in field.shape} == {m.name: m.value for m in f.enum}
    assert BINDING_TARGETS[op] == spec.bindable


def test_header_binding_and_sizes():
    assert HEADER_LAYOUT.size == BINDING_LAYOUT.size == WORD_BITS
    for name, field in HEADER_LAYOUT:
        assert all(OPCODE_LAYOUTS[op][name].offset == field.offset for op in OPS)
    assert [name for name, _ in BINDING_LAYOUT] == [f.name for f in BINDING_FIELDS]
    longest = max(spec.words for spec in OPCODES.values())
    assert max_instruction_words() == longest
    assert max_instruction_words(bindings=True) == longest + MAX_BINDINGS
    assert enum_shape(Opcode, 4) is HEADER_LAYOUT["opcode"].shape


class _MiscDecode(wiring.Component):
    """A small consumer of the layouts: a SOFTMAX detector and a binding-target demux."""

    def __init__(self):
        super().__init__({
            "instr": In(OPCODE_LAYOUTS[Opcode.MISC]),
            "binding": In(BINDING_LAYOUT),
            "is_softmax": Out(1),
            "aux": Out(signed(32)),
            "n_bound": Out(1),
            "opcode": Out(HEADER_LAYOUT["opcode"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.is_softmax.eq((self.instr.opcode == Opcode.MISC)
                               & (self.instr.func == MiscFunc.SOFTMAX)),
            self.aux.eq(self.instr.aux),
            self.n_bound.eq(self.binding.target == BINDING_TARGETS[Opcode.MISC].index("n")),
            self.opcode.eq(self.instr.opcode),
        ]
        return m


def test_verilog_conversion_of_layout_user():
    text = verilog.convert(_MiscDecode(), name="misc_decode")
    assert "module misc_decode" in text
    assert "is_softmax" in text
