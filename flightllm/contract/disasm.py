"""Text form of instructions and programs (what ``flightllm disasm`` prints)."""

from __future__ import annotations

from flightllm.contract.isa import (
    HEADER, OPCODES, Binding, Instruction, Opcode, decode, decode_program_words,
)

__all__ = ["format_instruction", "format_binding", "disassemble_words", "disassemble_program"]


def _mask(mask: int) -> str:
    return "|".join(q.name for q in Opcode if mask >> q & 1) or "-"


def format_binding(b: Binding) -> str:
    if b.kind.name == "COUNT":
        unit = f"/{1 << b.shift}" if b.shift else ""
        return f"{b.field}<=ceil(({b.reg.name}-{b.base}){unit})"
    scale = f"*{1 << b.shift}" if b.shift else ""
    return f"{b.field}+=({b.reg.name}-{b.base}){scale}"


def format_instruction(ins: Instruction) -> str:
    """One line: opcode, tokens, the non-zero fields (enums by name), then bindings."""
    parts = [f"{ins.op.name:<5}", f"wait={_mask(ins.wait)}", f"rel={_mask(ins.release)}"]
    for f in OPCODES[ins.op].fields:
        value = ins.values[f.name]
        if f.enum is not None:
            parts.append(f"{f.name}={f.enum(value).name}")
        elif value:
            parts.append(f"{f.name}={value:#x}" if "addr" in f.name else f"{f.name}={value}")
    parts += [f"[{format_binding(b)}]" for b in ins.bindings]
    return " ".join(parts)


def disassemble_words(words, *, core: int | None = None) -> list[str]:
    """Lines ``word-index: text`` for a stream; a bad word raises IsaDecodeError naming it."""
    lines, i = [], 0
    prefix = "" if core is None else f"core{core} "
    while i < len(words):
        ins, nxt = decode(words, i)
        lines.append(f"{prefix}{i:6d}: {format_instruction(ins)}")
        i = nxt
    return lines


def disassemble_program(data: bytes) -> list[str]:
    """Disassemble a program file (every core's stream, each headed by a comment line)."""
    lines = []
    for core, words in enumerate(decode_program_words(data)):
        lines.append(f"# core {core}: {len(words)} words")
        lines += disassemble_words(words, core=core)
    return lines


assert HEADER[0].name == "opcode"  # the disassembler relies on the header coming first
