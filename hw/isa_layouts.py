"""Amaranth data layouts of the instruction encoding, derived from the contract's table.

Nothing here is written by hand: every offset, width and signedness comes from
:data:`flightllm.contract.isa.OPCODES`, :data:`~flightllm.contract.isa.HEADER` and
:data:`~flightllm.contract.isa.BINDING_FIELDS`, so the RTL decoder cannot drift from the Python
encoder. Typical use in a fetch/decode stage::

    raw = Signal(instruction_bits(Opcode.MM))
    mm = data.View(OPCODE_LAYOUTS[Opcode.MM], raw)
    m.d.comb += [n_strips.eq(mm.n_strips), q8.eq(mm.out_mode == OutMode.Q8)]

Enum fields get an :class:`amaranth.lib.enum.IntEnum` *mirror* of the contract's enum as their
shape, with the field's width as the enum's explicit shape. An Amaranth ``IntEnum`` views as a
plain :class:`~amaranth.hdl.Value` (no ``EnumView`` type checks), so RTL compares fields with the
contract's own members (``view.opcode == Opcode.LD``) and may do arithmetic on them, while the
mirror still carries member names into simulator waveforms and generated Verilog. The mirrors are
available through :func:`enum_shape` when a port needs the same shape.
"""

from __future__ import annotations

import enum
import functools
import types
from types import MappingProxyType
from typing import Iterable, Mapping

from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from amaranth.lib import enum as amaranth_enum

from flightllm.contract import isa
from flightllm.contract.isa import (
    BINDING_FIELDS, HEADER, MAX_BINDINGS, OPCODES, WORD_BITS, Field, Opcode,
)

__all__ = [
    "OPCODE_LAYOUTS", "HEADER_LAYOUT", "BINDING_LAYOUT", "BINDING_TARGETS", "enum_shape",
    "field_shape", "instruction_layout", "instruction_bits", "max_instruction_words",
]


@functools.cache
def enum_shape(cls: type[enum.IntEnum], width: int) -> amaranth_enum.EnumType:
    """The Amaranth mirror of a contract enum, ``width`` bits wide (cached: one class per pair).

    Args:
        cls: A contract enum such as :class:`~flightllm.contract.isa.Opcode`.
        width: The field's width; the mirror's shape is ``unsigned(width)``.

    Returns:
        An :class:`amaranth.lib.enum.IntEnum` subclass with the same member names and values.
    """
    def body(ns):
        ns["__module__"] = __name__
        ns["__doc__"] = f"Amaranth mirror of :class:`{cls.__module__}.{cls.__qualname__}`."
        for member in cls:
            ns[member.name] = member.value

    # types.new_class passes the shape keyword to Amaranth's EnumType metaclass.
    return types.new_class(cls.__name__, (amaranth_enum.IntEnum,), {"shape": unsigned(width)},
                           body)


def field_shape(f: Field):
    """The Amaranth shape of one contract field (an enum mirror, ``signed(w)`` or ``unsigned(w)``).

    Args:
        f: A field of :data:`~flightllm.contract.isa.OPCODES`, the header or the binding word.
    """
    if f.enum is not None:
        return enum_shape(f.enum, f.width)
    return signed(f.width) if f.signed else unsigned(f.width)


def _flexible(fields: Iterable[Field], offsets: Mapping[str, int], size: int):
    return data.FlexibleLayout(size, {f.name: data.Field(field_shape(f), offsets[f.name])
                                      for f in fields})


@functools.cache
def instruction_layout(op: Opcode) -> data.FlexibleLayout:
    """The layout of an opcode's fixed part: ``words * 32`` bits, every field at its offset.

    Bit ``32*i + b`` of the view is bit ``b`` of the instruction's word ``i`` (words are
    concatenated LSB-first, as the fetch unit receives them). Binding words are not included;
    view each with :data:`BINDING_LAYOUT`.

    Args:
        op: The opcode.
    """
    spec = OPCODES[Opcode(op)]
    return _flexible(spec.all_fields, spec.layout, spec.words * WORD_BITS)


def instruction_bits(op: Opcode) -> int:
    """Bits of an opcode's fixed part (``OPCODES[op].words * 32``)."""
    return OPCODES[Opcode(op)].words * WORD_BITS


def max_instruction_words(*, bindings: bool = False) -> int:
    """Words of the longest instruction: the fixed part, plus the binding words if asked.

    Args:
        bindings: Count :data:`~flightllm.contract.isa.MAX_BINDINGS` binding words too (the
            size of a buffer that holds any complete instruction).
    """
    fixed = max(spec.words for spec in OPCODES.values())
    return fixed + (MAX_BINDINGS if bindings else 0)


def _header_offsets() -> dict[str, int]:
    # The decoder reads word 0 before it knows the opcode, so the header must sit at the same
    # offsets in every opcode; refuse to build layouts from a table that breaks that.
    layouts = {op: {f.name: spec.layout[f.name] for f in HEADER} for op, spec in OPCODES.items()}
    first = next(iter(layouts.values()))
    top = max(first[f.name] + f.width for f in HEADER)
    for op, offsets in layouts.items():
        if offsets != first or top > WORD_BITS:
            raise AssertionError(f"{op.name}: header is not at the common word-0 offsets")
    return first


#: Layout of every opcode's fixed part, keyed by opcode.
OPCODE_LAYOUTS: Mapping[Opcode, data.FlexibleLayout] = MappingProxyType(
    {op: instruction_layout(op) for op in OPCODES})

#: Layout of word 0 alone: the common header, readable before the opcode is known.
HEADER_LAYOUT = _flexible(HEADER, _header_offsets(), WORD_BITS)

#: Layout of one binding word (the encoder's own offsets, so both sides agree by construction).
BINDING_LAYOUT = _flexible(BINDING_FIELDS, isa.BINDING_LAYOUT, WORD_BITS)

#: Per opcode, the bindable field names a binding word's ``target`` indexes.
BINDING_TARGETS: Mapping[Opcode, tuple[str, ...]] = MappingProxyType(
    {op: spec.bindable for op, spec in OPCODES.items()})
