"""The ISA table, encoder, decoder, program files, disassembler and generated reference."""

from __future__ import annotations

import inspect
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightllm.contract import isa
from flightllm.contract.disasm import (
    disassemble_program, disassemble_words, format_binding, format_instruction,
)
from flightllm.contract.isa import (
    BINDING_FIELDS, HEADER, MAX_BINDINGS, OPCODES, WORD_BITS, Binding, BindKind, Instruction,
    IsaDecodeError, IsaError, LengthReg, Opcode, Queue, decode, decode_all, decode_program,
    encode, encode_program, isa_hash,
)
from flightllm.contract.isa_doc import isa_markdown, main

ROOT = Path(__file__).resolve().parents[2]
OPS = list(Opcode)
BIND = {f.name: f for f in BINDING_FIELDS}
# Decoding is not free (every field is checked), so keep example counts moderate and let slow
# CI machines take their time rather than flake on hypothesis' per-example deadline.
PROPERTY = settings(max_examples=60, deadline=None)
MULTI = settings(max_examples=25, deadline=None)  # whole streams and programs per example


# --------------------------------------------------------------------------- strategies
def values_of(f: isa.Field) -> st.SearchStrategy[int]:
    if f.enum is not None:
        return st.sampled_from([int(m) for m in f.enum])
    return st.integers(f.lo, f.hi)


def masks_for(op: Opcode) -> st.SearchStrategy[int]:
    """Wait/release masks naming any queue but the instruction's own."""
    return st.sets(st.sampled_from([q for q in Queue if q != op])).map(
        lambda qs: sum(1 << q for q in qs))


@st.composite
def instructions(draw, op: Opcode | None = None) -> Instruction:
    op = draw(st.sampled_from(OPS)) if op is None else op
    spec = OPCODES[op]
    values = {f.name: draw(values_of(f)) for f in spec.fields}
    bindings = []
    if spec.bindable:
        bindings = draw(st.lists(st.builds(
            Binding, kind=st.sampled_from(BindKind), reg=st.sampled_from(LengthReg),
            field=st.sampled_from(spec.bindable), shift=values_of(BIND["shift"]),
            base=values_of(BIND["base"])), max_size=MAX_BINDINGS))
    return Instruction(op, wait=draw(masks_for(op)), release=draw(masks_for(op)),
                       bindings=bindings, **values)


streams = st.lists(instructions(), max_size=6)


# --------------------------------------------------------------------------- the table
def _mask(f: isa.Field, offset: int) -> int:
    return ((1 << f.width) - 1) << offset


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_fields_fit_their_word_and_never_overlap(op):
    spec = OPCODES[op]
    used = 0
    for f in spec.all_fields:
        off = spec.layout[f.name]
        assert off // WORD_BITS == (off + f.width - 1) // WORD_BITS, f"{f.name} straddles"
        assert off + f.width <= spec.words * WORD_BITS
        assert not used & _mask(f, off), f"{f.name} overlaps another field"
        used |= _mask(f, off)
    names = [f.name for f in spec.all_fields]
    assert len(names) == len(set(names))
    # Every field must be settable as a keyword of Instruction (SYS once had a field 'op').
    params = set(inspect.signature(Instruction.__init__).parameters)
    assert not params & {f.name for f in spec.fields}
    assert len(spec.bindable) <= 1 << BIND["target"].width


def test_header_is_identical_for_all_opcodes():
    for spec in OPCODES.values():
        assert spec.all_fields[:len(HEADER)] == HEADER
        assert {f.name: spec.layout[f.name] for f in HEADER} == \
            {f.name: OPCODES[Opcode.LD].layout[f.name] for f in HEADER}
    assert OPCODES[Opcode.LD].layout["opcode"] == 0
    assert sum(f.width for f in HEADER) <= WORD_BITS


def test_opcodes_unique_and_fit():
    assert list(OPCODES) == OPS and all(spec.opcode is op for op, spec in OPCODES.items())
    assert len({int(op) for op in OPS}) == len(OPS)
    fields = {f.name: f for f in HEADER}
    assert max(OPS) <= fields["opcode"].hi
    assert len(Queue) <= fields["wait"].width == fields["release"].width
    assert MAX_BINDINGS <= fields["nbind"].hi


def test_binding_word_fits_and_enums_fit_their_fields():
    used = 0
    for f in BINDING_FIELDS:
        off = isa.BINDING_LAYOUT[f.name]
        assert off + f.width <= WORD_BITS and not used & _mask(f, off)
        used |= _mask(f, off)
    for f in [*BINDING_FIELDS, *(f for s in OPCODES.values() for f in s.all_fields)]:
        if f.enum is not None:
            assert all(f.lo <= m.value <= f.hi for m in f.enum), f.name


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
@PROPERTY
@given(data=st.data())
def test_encode_decode_round_trip(op, data):
    ins = data.draw(instructions(op))
    words = encode(ins)
    assert len(words) == OPCODES[op].words + len(ins.bindings)
    assert all(0 <= w < 1 << WORD_BITS for w in words)
    prefix = data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))
    decoded, end = decode(prefix + words, len(prefix))
    assert (decoded, end) == (ins, len(prefix) + len(words))
    assert encode(decoded) == words


@PROPERTY
@given(stream=streams)
def test_stream_round_trip(stream):
    words = [w for ins in stream for w in encode(ins)]
    assert decode_all(words) == stream
    assert decode_all(np.array(words, dtype=np.uint32)) == stream


@MULTI
@given(program=st.lists(streams, min_size=1, max_size=4))
def test_program_file_round_trip(program):
    data = encode_program(program)
    assert decode_program(data) == program
    assert isa.decode_program_words(data) == [[w for i in s for w in encode(i)] for s in program]


# --------------------------------------------------------------------------- random words
def _check_stream(words: list[int]) -> str:
    """Decode one stream; return the error's field ('' if it decodes)."""
    try:
        decoded = decode_all(words)
    except IsaDecodeError as e:
        assert type(e) is IsaDecodeError
        # A stream that ends inside an instruction is reported at its end (len(words)).
        inside = 0 <= e.word_index < len(words)
        assert inside or (e.field == "length" and e.word_index == len(words)), e
        return e.field
    assert [w for ins in decoded for w in encode(ins)] == words
    return ""


def test_100k_random_words_decode_or_raise_decode_error():
    rng = np.random.default_rng(20240611)
    words = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64)
    cuts = np.cumsum(rng.integers(1, 48, 100_000 // 8))
    fields = {}
    for stream in np.split(words, cuts[cuts < len(words)]):
        field = _check_stream(stream.tolist())
        fields[field] = fields.get(field, 0) + 1
    # The seed gives a known spread; losing a class of error would mean the decoder stopped
    # looking at it.
    assert {"opcode", "reserved"} <= set(fields)
    assert len(fields) >= 4, fields


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_random_words_shaped_like_instructions(op):
    # Raw random words almost never decode; these keep only bits some field uses, so that the
    # success path (decode then re-encode) and the enum, queue and binding checks all run.
    rng = np.random.default_rng(int(op))
    spec = OPCODES[op]
    masks = [0] * spec.words
    for f in spec.all_fields:
        off = spec.layout[f.name]
        masks[off // WORD_BITS] |= _mask(f, off % WORD_BITS)
    bind_mask = sum(_mask(f, isa.BINDING_LAYOUT[f.name]) for f in BINDING_FIELDS)
    own = (1 << (spec.layout["wait"] + op)) | (1 << (spec.layout["release"] + op))
    outcomes = {}
    for _ in range(300):
        words = [int(w) & m for w, m in zip(rng.integers(0, 1 << 32, spec.words), masks)]
        words[0] = words[0] & ~0xF | int(op)
        if rng.random() < 0.75:
            words[0] &= ~own
        nbind = words[0] >> spec.layout["nbind"] & 3
        words += [int(w) & bind_mask for w in rng.integers(0, 1 << 32, nbind)]
        field = _check_stream(words)
        outcomes[field] = outcomes.get(field, 0) + 1
    assert outcomes.get("", 0) >= 15, outcomes


# --------------------------------------------------------------------------- errors
def _bad_values(f: isa.Field) -> list[int]:
    bad = [f.lo - 1, f.hi + 1]
    if f.enum is not None:
        bad += [v for v in range(f.lo, f.hi + 1) if v not in f.enum._value2member_map_][:1]
    return bad


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_out_of_range_values_name_the_field(op):
    spec = OPCODES[op]
    for f in spec.fields:
        for value in _bad_values(f):
            with pytest.raises(IsaError, match=f"'{f.name}' = {value}"):
                encode(Instruction(op, **{f.name: value}))
    for mask in ("wait", "release"):
        for value in (1 << op, 1 << len(Queue), -1):
            with pytest.raises(IsaError, match=f"'{mask}'"):
                encode(Instruction(op, **{mask: value}))
    with pytest.raises(IsaError, match="no field"):
        Instruction(op, no_such_field=1)
    if not spec.bindable:
        with pytest.raises(IsaError, match="not bindable"):
            encode(Instruction(op, bindings=[Binding(BindKind.COUNT, LengthReg.SEQ, "len")]))
        return
    name = spec.bindable[0]
    for field in ("shift", "base"):
        for value in _bad_values(BIND[field]):
            b = Binding(BindKind.OFFSET, LengthReg.KV, name, **{field: value})
            with pytest.raises(IsaError, match=f"'{field}' = {value}"):
                encode(Instruction(op, bindings=[b]))
    unbindable = next(f.name for f in spec.fields if not f.bindable)
    with pytest.raises(IsaError, match=repr(unbindable)):
        encode(Instruction(op, bindings=[Binding(BindKind.COUNT, LengthReg.SEQ, unbindable)]))
    with pytest.raises(IsaError, match="at most"):
        encode(Instruction(op, bindings=[Binding(BindKind.COUNT, LengthReg.SEQ, name)] * 4))


def _program() -> bytes:
    return encode_program([[Instruction(Opcode.LD, len=64, n1=1, n2=1, release=1 << Opcode.ST)],
                           [Instruction(Opcode.ST, len=64, n1=1, n2=1, wait=1 << Opcode.LD)]])


def test_program_file_errors():
    data = _program()
    with pytest.raises(isa.ProgramFileError, match="magic"):
        decode_program(b"X" + data[1:])
    for n in range(len(data)):
        with pytest.raises(isa.ProgramFileError):
            decode_program(data[:n])
    with pytest.raises(isa.ProgramFileError):
        decode_program(data + b"\0\0\0\0")
    other = ("0" if isa_hash()[0] != "0" else "1") + isa_hash()[1:]
    with pytest.raises(isa.ProgramFileError, match="ISA version"):
        decode_program(data[:12] + other.encode() + data[28:])
    with pytest.raises(isa.ProgramFileError, match="ISA version"):
        decode_program(data[:8] + struct.pack("<I", isa.ISA_VERSION + 1) + data[12:])
    # A well-formed file whose words do not decode names the bad word.
    bad = bytearray(data)
    bad[-4:] = struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(IsaDecodeError):
        decode_program(bytes(bad))


# --------------------------------------------------------------------------- text forms
def test_docs_isa_md_is_generated_from_the_table(capsys):
    text = isa_markdown()
    assert text == isa_markdown()
    assert (ROOT / "docs" / "isa.md").read_text(encoding="utf-8") == text, (
        "docs/isa.md is stale: python -m flightllm.contract.isa_doc > docs/isa.md")
    assert isa_hash() in text
    for op, spec in OPCODES.items():
        assert f"## {op.name} (opcode {int(op)})" in text
        assert all(f"`{f.name}`" in text for f in spec.fields)
    main()
    assert capsys.readouterr().out == text


@MULTI
@given(program=st.lists(streams, min_size=1, max_size=3))
def test_disassembler_names_opcodes_and_bindings(program):
    for stream in program:
        lines = disassemble_words([w for ins in stream for w in encode(ins)])
        assert len(lines) == len(stream)
        for line, ins in zip(lines, stream):
            assert line.split(": ", 1)[1] == format_instruction(ins)
            assert line.split(": ", 1)[1].split()[0] == ins.op.name
            for b in ins.bindings:
                text = format_binding(b)
                assert f"[{text}]" in line and b.field in text and b.reg.name in text
    lines = disassemble_program(encode_program(program))
    headers = [ln for ln in lines if ln.startswith("#")]
    assert headers == [f"# core {c}: {sum(len(encode(i)) for i in s)} words"
                       for c, s in enumerate(program)]
    assert len(lines) == len(program) + sum(len(s) for s in program)


def test_disassembler_reports_bad_word():
    words = encode(Instruction(Opcode.SYS, sync_id=1)) + [0xF]
    with pytest.raises(IsaDecodeError) as err:
        disassemble_words(words)
    assert err.value.word_index == len(words) - 1 and err.value.field == "opcode"
