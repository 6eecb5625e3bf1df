"""Generate the ISA reference (``docs/isa.md``) from the instruction table.

Every number, name and description in the reference comes from :mod:`flightllm.contract.isa`
(the :data:`~flightllm.contract.isa.OPCODES` table, the header, the binding word, the enums and
their docstrings and member comments); only the connecting prose lives here. Regenerate with::

    python -m flightllm.contract.isa_doc > docs/isa.md

``tests/contract/test_isa.py`` compares the file with :func:`isa_markdown`, so it cannot go stale.
"""

from __future__ import annotations

import enum
import inspect
import re
import sys

from flightllm.contract import isa, numerics
from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import (
    BINDING_FIELDS, HEADER, ISA_VERSION, MAX_BINDINGS, OPCODES, WORD_BITS, BindKind, Buffer,
    Field, LengthReg, MiscFunc, Opcode, OutMode, Queue, SysOp, WeightBits, encode_program,
    isa_hash,
)

__all__ = ["isa_markdown", "main"]

#: Enums documented in their own section, in this order.
_ENUMS = (Opcode, Buffer, WeightBits, OutMode, MiscFunc, SysOp, LengthReg, BindKind)


# --------------------------------------------------------------------------- text helpers
def _md(text: str) -> str:
    """reST docstring markup to Markdown, whitespace collapsed to one paragraph."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return " ".join(text.split())


def _text(text: str) -> str:
    """Plain table text (field and opcode docs) to Markdown: ``*`` is multiplication there."""
    return text.replace("*", "\\*")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def _docstring_section(obj, header: str) -> dict[str, str]:
    """Entries ``name: text`` of a Google-style docstring section (continuations joined)."""
    lines = _doc(obj).splitlines()
    if f"{header}:" not in lines:
        return {}
    entries: dict[str, str] = {}
    name = None
    for line in lines[lines.index(f"{header}:") + 1:]:
        if line and not line.startswith(" "):
            break  # the next section
        m = re.match(r" {4}(\w+): (.*)", line)
        if m:
            name = m[1]
            entries[name] = m[2]
        elif name and line.strip():
            entries[name] += " " + line.strip()
    return {k: _md(v) for k, v in entries.items()}


def _member_notes(cls: type[enum.Enum]) -> dict[str, str]:
    """The trailing ``# comment`` of each member line in the enum's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (frozen app): the tables just lose a column
        return {}
    notes = {}
    for line in source.splitlines():
        m = re.match(r"\s*([A-Z][A-Z0-9_]*)\s*=\s*[^#]+#\s*(.*)$", line)
        if m and m[1] in cls.__members__:
            notes[m[1]] = _text(m[2].strip())
    return notes


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


# --------------------------------------------------------------------------- field tables
def _values(f: Field) -> str:
    if f.enum is not None:
        return ", ".join(f"`{m.name}`={m.value}" for m in f.enum)
    return f"{f.lo}..{f.hi}"


def _field_rows(fields, layout: dict[str, int], bindable: tuple[str, ...] = ()) -> list[tuple]:
    rows = []
    for f in fields:
        word, lo = divmod(layout[f.name], WORD_BITS)
        bind = f"yes (target {bindable.index(f.name)})" if f.name in bindable else ""
        bits = f"{lo}..{lo + f.width - 1}" if f.width > 1 else str(lo)
        rows.append((f"`{f.name}`", word, bits, f.width, "yes" if f.signed else "",
                     _values(f), bind, _text(f.doc)))
    return rows


_FIELD_HEADER = ("Field", "Word", "Bits", "Width", "Signed", "Values", "Bindable", "Meaning")


def _bit_map(fields, layout: dict[str, int], nwords: int) -> list[str]:
    """Per word, its fields from bit 31 down to bit 0, with the reserved (zero) gaps."""
    rows = []
    for word in range(nwords):
        spans = sorted((layout[f.name] - word * WORD_BITS, f) for f in fields
                       if layout[f.name] // WORD_BITS == word)
        parts, top = [], WORD_BITS
        for lo, f in reversed(spans):
            hi = lo + f.width
            if hi < top:
                parts.append(f"{top - 1}..{hi} *reserved*")
            parts.append(f"{hi - 1}..{lo} `{f.name}`" if f.width > 1 else f"{lo} `{f.name}`")
            top = lo
        if top:
            parts.append(f"{top - 1}..0 *reserved*")
        rows.append((word, " · ".join(parts)))
    return _table(("Word", "Bits (31 → 0)"), rows)


# --------------------------------------------------------------------------- sections
def _intro() -> list[str]:
    # isa.py's module docstring: [1] the six types, [2] the encoding, [3] dependency tokens.
    paragraphs = _doc(isa).split("\n\n")
    queues = ", ".join(f"{q.value} = `{q.name}`" for q in Queue)
    formulas = [ln.strip() for ln in _doc(isa.Binding).splitlines()
                if ln.strip().split(":")[0] in BindKind.__members__]
    notes = _member_notes(LengthReg)
    return [
        "# FlightLLM instruction set reference", "",
        "<!-- Generated by `python -m flightllm.contract.isa_doc > docs/isa.md` from "
        "flightllm/contract/isa.py; do not edit by hand. -->", "",
        f"ISA version {ISA_VERSION}, hash `{isa_hash()}`.", "",
        "## Overview", "",
        _md(paragraphs[1]), "",
        *_table(("Opcode", "Queue", "Fixed words", "Bindable fields", "Summary"),
                [(f"`{op.name}`", op.value, spec.words, len(spec.bindable), _text(spec.doc))
                 for op, spec in OPCODES.items()]),
        "## Encoding", "",
        _md(paragraphs[2]), "",
        "The header (word 0 of every instruction):", "",
        *_table(_FIELD_HEADER, _field_rows(HEADER, OPCODES[Opcode.LD].layout)),
        "## Dependency tokens", "",
        _capitalised(re.sub(r"^Dependency tokens: *", "", _md(paragraphs[3]))), "",
        f"Queue numbers (bit q of `wait` and `release`): {queues}. An instruction may not wait "
        "on or release to its own queue; the encoder and the decoder both reject it.", "",
        "## Dynamic length parameters", "",
        f"An instruction is followed by `nbind` (at most {MAX_BINDINGS}) binding words. Each "
        "rewrites one bindable field (its `target` indexes the opcode's bindable fields in "
        "declaration order, listed under each opcode) from a length register before the "
        "instruction runs:", "",
        *[f"- `{ln}`" for ln in formulas], "",
        "Bindings apply in order; a later binding of the same field sees the earlier result.", "",
        *_table(("Register", "Value", "Meaning"),
                [(f"`{r.name}`", r.value, notes.get(r.name, "")) for r in LengthReg]),
        "### Binding word", "",
        *_table(_FIELD_HEADER, _field_rows(BINDING_FIELDS, isa.BINDING_LAYOUT)),
        *_bit_map(BINDING_FIELDS, isa.BINDING_LAYOUT, 1),
    ]


def _opcode_section(op: Opcode) -> list[str]:
    spec = OPCODES[op]
    targets = ", ".join(f"{i} = `{name}`" for i, name in enumerate(spec.bindable)) or "none"
    return [
        f"## {op.name} (opcode {op.value})", "",
        _text(spec.doc), "",
        f"{spec.words} words, then `nbind` binding words. Binding targets: {targets}.", "",
        *_table(_FIELD_HEADER, _field_rows(spec.all_fields, spec.layout, spec.bindable)),
        *_bit_map(spec.all_fields, spec.layout, spec.words),
    ]


def _enum_section(cls: type[enum.IntEnum]) -> list[str]:
    notes = _member_notes(cls)
    if cls is Buffer:  # the configuration's docstring says what each buffer holds
        attributes = _docstring_section(AcceleratorConfig, "Attributes")
        notes = {b.name: attributes.get(b.name.lower(), "") for b in Buffer}
    if cls is WeightBits:
        notes = {m.name: f"{m.bits}-bit weights" for m in WeightBits}
    if cls is MiscFunc:
        notes = {m.name: _golden_model(m) for m in MiscFunc}
    if cls is Opcode:  # GitHub's anchor for "## LD (opcode 0)" is "#ld-opcode-0"
        notes = {m.name: f"[{m.name}](#{m.name.lower()}-opcode-{m.value}): "
                         f"{OPCODES[m].words} fixed words" for m in Opcode}
    head = [f"### {cls.__name__}", ""]
    if cls.__doc__ and cls.__doc__ is not enum.IntEnum.__doc__:
        head += [_md(_doc(cls)), ""]
    column = "Golden model" if cls is MiscFunc else "Meaning"
    return head + _table(("Name", "Value", column),
                         [(f"`{m.name}`", m.value, notes.get(m.name, "")) for m in cls])


def _golden_model(func: MiscFunc) -> str:
    """The numerics function that defines ``func`` bit-exactly (name match), if there is one."""
    name = func.name.lower()
    if name in numerics.ACTIVATIONS:
        return f"`numerics.activation(x, \"{name}\", m1, s1, m2, s2)`"
    candidates = sorted(n for n, obj in vars(numerics).items()
                        if n.startswith(name) and inspect.isfunction(obj))
    return f"`numerics.{candidates[0]}`" if candidates else ""


def _program_section() -> list[str]:
    magic = encode_program([[]])[:8]  # the encoder itself says what the magic is
    spans = [("magic", len(magic), f"ASCII `{magic.decode()}`"),
             ("version", 4, f"u32 ISA version ({ISA_VERSION})"),
             ("hash", len(isa_hash()), "ASCII hex digits of the ISA hash"),
             ("ncores", 4, "u32 number of cores"),
             ("counts", "4 × ncores", "u32 word count of each core's stream"),
             ("words", "4 × Σ counts", "each core's words in turn, u32 little-endian")]
    rows, offset = [], 0
    for name, size, what in spans:
        rows.append((offset, size, f"`{name}`", what))
        offset = offset + size if isinstance(size, int) else "…"
    return [
        "## Program files", "",
        _md(_doc(encode_program).split("\n\n", 1)[1]), "",
        *_table(("Offset", "Bytes", "Part", "Contents"), rows),
        "Decoding raises:", "",
        f"- `ProgramFileError`: {_md(_doc(isa.ProgramFileError))}",
        f"- `IsaDecodeError`, {_md(_doc(isa.decode).split('IsaDecodeError:', 1)[1])}", "",
    ]


def isa_markdown() -> str:
    """The complete ISA reference as Markdown (deterministic: same table, same text).

    Returns:
        The text of ``docs/isa.md``, ending in one newline.
    """
    lines = _intro()
    for op in Opcode:
        lines += _opcode_section(op)
    lines += ["## Enumerations", ""]
    for cls in _ENUMS:
        lines += _enum_section(cls)
    lines += _program_section()
    lines += ["## ISA hash", "",
              _md(_doc(isa_hash)) + f" Current value: `{isa_hash()}`. Program files carry it, and "
              "`decode_program` refuses a file whose hash differs from its own.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    """Print the reference to stdout (``python -m flightllm.contract.isa_doc > docs/isa.md``)."""
    # UTF-8 whatever the locale says: the tables use a few non-ASCII symbols (arrows, dots).
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(isa_markdown())
        return
    sys.stdout.flush()
    out.write(isa_markdown().encode("utf-8"))
    out.flush()


if __name__ == "__main__":
    main()
