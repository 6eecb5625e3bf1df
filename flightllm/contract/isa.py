"""The instruction set, defined once as data.

Six instruction types, one in-order queue each (the FlightLLM artefact's decoupled
access/execute machine): LD (HBM -> buffer), ST (buffer -> HBM), MM (matrix-matrix, prefill),
MV (matrix-vector, decode), MISC (special-function unit) and SYS (cross-core sync).

Every instruction starts with the same header (opcode, wait mask, release mask, binding count)
and continues with its opcode's fields, packed LSB-first into 32-bit little-endian words; a field
never straddles a word, and the bits a layout leaves unused must be zero. After the fields come
``nbind`` *binding words*, the dynamic length parameters: each rewrites one bindable field from a
run-time length register, so that one program serves a range of sequence and KV lengths.

Dependency tokens: queue X's instruction with bit q of ``wait`` set consumes one token that
queue q released to X before it starts; with bit q of ``release`` set it gives one token to
queue q when it completes. Token counts of a correct program balance to zero at its end.

The encoder (:func:`encode`), decoder (:func:`decode`), disassembler (``flightllm disasm``), the
RTL's Amaranth layouts (``flightllm.hw.isa_layouts``) and ``docs/isa.md`` all derive from
:data:`OPCODES` below.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

__all__ = [
    "Opcode", "Queue", "Buffer", "WeightBits", "OutMode", "MiscFunc", "SysOp", "LengthReg",
    "BindKind", "Field", "OpSpec", "Binding", "Instruction", "IsaError", "IsaDecodeError",
    "OPCODES", "HEADER", "BINDING_FIELDS", "BINDING_LAYOUT", "MAX_BINDINGS", "WORD_BITS",
    "ISA_VERSION", "isa_hash", "encode", "decode",
    "encode_program", "decode_program", "apply_bindings",
]

WORD_BITS = 32
ISA_VERSION = 1


class IsaError(ValueError):
    """An instruction cannot be encoded: the message names the field and the value."""


class IsaDecodeError(IsaError):
    """A word stream does not decode: names the word's index, the field and the value."""

    def __init__(self, word_index: int, field: str, value: int, reason: str):
        self.word_index, self.field, self.value = word_index, field, value
        super().__init__(f"word {word_index}: field '{field}' = {value}: {reason}")


# --------------------------------------------------------------------------- enumerations
class Opcode(enum.IntEnum):
    LD = 0
    ST = 1
    MM = 2
    MV = 3
    MISC = 4
    SYS = 5


#: Queues are one per opcode; the wait/release masks index them by the same numbers.
Queue = Opcode


class Buffer(enum.IntEnum):
    """On-chip buffers. Element type is a property of the buffer: ABUF holds INT8, RBUF INT32,
    WBUF and PBUF raw bytes (weights, KV tiles; requantisation records, gains, tables)."""
    ABUF = 0
    WBUF = 1
    RBUF = 2
    PBUF = 3


class WeightBits(enum.IntEnum):
    """Weight bit width code of a matrix instruction (value = code, bits = ``.bits``)."""
    INT2 = 0
    INT4 = 1
    INT8 = 2

    @property
    def bits(self) -> int:
        return 2 << self.value


class OutMode(enum.IntEnum):
    """Where and how a matrix instruction writes its results."""
    ACC32 = 0  # raw INT32 accumulators to RBUF (attention scores, K-split partial sums)
    Q8 = 1     # bias, requantise per output channel, saturate to INT8, to ABUF
    Q32 = 2    # bias, requantise per output channel, saturate to INT32, to RBUF


class MiscFunc(enum.IntEnum):
    """Special-function unit operations; numerics in flightllm.contract.numerics."""
    COPY = 0
    FILL = 1
    REQUANT = 2
    ADD = 3
    MUL = 4
    SILU = 5
    GELU_TANH = 6
    GELU_ERF = 7
    RELU = 8
    SOFTMAX = 9
    RMSNORM = 10
    LAYERNORM = 11
    ROPE = 12


class SysOp(enum.IntEnum):
    BARRIER = 0  # every core waits until all cores reach the barrier with the same id
    GATHER = 1   # all-gather: each core's own slice (its fields) is copied to every core


class LengthReg(enum.IntEnum):
    """Run-time length registers written by the host before each run."""
    SEQ = 0  # tokens in this call (prefill length, 1 in decode)
    KV = 1   # KV length after this call (past + SEQ)
    POS = 2  # position of this call's first token (KV - SEQ)


class BindKind(enum.IntEnum):
    COUNT = 0   # field = min(field, ceil(max(reg - base, 0) / 2**shift))
    OFFSET = 1  # field = field + (max(reg - base, 0) << shift)


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Field:
    """One instruction field.

    Attributes:
        name: Field name (also the keyword the encoder takes).
        width: Bits.
        doc: What it means, for docs/isa.md and the disassembler's readers.
        signed: Two's complement.
        enum: The IntEnum whose values are the only legal ones.
        bindable: May be rewritten at run time by a binding word (a dynamic length parameter).
    """

    name: str
    width: int
    doc: str
    signed: bool = False
    enum: type[enum.IntEnum] | None = None
    bindable: bool = False

    @property
    def lo(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


def F(name, width, doc, **kw) -> Field:
    return Field(name, width, doc, **kw)


HEADER = (
    F("opcode", 4, "instruction type; also its queue", enum=Opcode),
    F("wait", 6, "bit q: consume one token released by queue q before starting"),
    F("release", 6, "bit q: give one token to queue q on completion"),
    F("nbind", 2, "number of binding words after the fields (dynamic length parameters)"),
)

_ADDR, _HBM, _CNT = 24, 32, 16

_TRANSFER = (
    F("buf", 2, "on-chip buffer", enum=Buffer),
    F("buf_addr", _ADDR, "buffer byte address of the first byte", bindable=True),
    F("chan", 6, "HBM channel (core-local index)"),
    F("hbm_addr", _HBM, "HBM byte address within the channel", bindable=True),
    F("len", _ADDR, "contiguous bytes of the innermost transfer"),
    F("n1", _CNT, "middle loop count (0 moves nothing)", bindable=True),
    F("hbm_stride1", _HBM, "HBM byte stride of the middle loop"),
    F("buf_stride1", _ADDR, "buffer byte stride of the middle loop"),
    F("n2", _CNT, "outer loop count (0 moves nothing)", bindable=True),
    F("hbm_stride2", _HBM, "HBM byte stride of the outer loop"),
    F("buf_stride2", _ADDR, "buffer byte stride of the outer loop"),
)

_MATRIX_COMMON = (
    F("w_addr", _ADDR, "WBUF byte address of the weight matrix (block format), 8-byte aligned",
      bindable=True),
    F("w_stride", _ADDR, "WBUF bytes between 16-row strips, a multiple of 8; 0: strips "
      "packed back to back"),
    F("wbits", 2, "weight bit width", enum=WeightBits),
    F("sparse", 1, "strips start with a table of per-block N:16 codes"),
    F("gscale", 1, "blocks carry 4-bit per-row group multipliers"),
    F("n_strips", _CNT, "output rows / 16", bindable=True),
    F("k_blocks", _CNT, "reduction length / 16", bindable=True),
    F("x_addr", _ADDR, "ABUF byte address of the INT8 activations", bindable=True),
    F("out_mode", 2, "result format and buffer", enum=OutMode),
    F("out_addr", _ADDR, "result byte address (ABUF for Q8, RBUF otherwise)", bindable=True),
    F("p_addr", _ADDR, "PBUF byte address of the per-channel requantisation records"),
    F("p_uniform", 1, "one record serves every output channel"),
    F("psum", 1, "add INT32 partial sums from RBUF at psum_addr before bias"),
    F("psum_addr", _ADDR, "RBUF byte address of the partial sums"),
    F("residual", 1, "Q32 only: add the result to the INT32 already at out_addr"),
    F("relu", 1, "clamp requantised results at zero"),
)

_MM_ROWS = (
    F("m_rows", _CNT, "token rows", bindable=True),
    F("x_stride", _ADDR, "ABUF bytes between token rows"),
    F("out_stride", _ADDR, "bytes between result rows"),
    F("psum_stride", _ADDR, "RBUF bytes between partial-sum rows"),
    F("sum_rows", 1, "m_rows = 2, Q32: the rows are one vector's two digits (decode's split "
      "MLP hidden); row 1 is requantised with the records at p_addr + p_stride and both "
      "rows are added into the one result row at out_addr: sat32(sat32(res + y0) + y1)"),
    F("p_stride", _ADDR, "sum_rows: PBUF bytes from row 0's records to row 1's, a multiple "
      "of 8"),
)

_MISC = (
    F("func", 5, "special function", enum=MiscFunc),
    F("a_buf", 2, "first source buffer", enum=Buffer),
    F("a_addr", _ADDR, "first source byte address", bindable=True),
    F("a_stride", _ADDR, "first source bytes between rows"),
    F("b_buf", 2, "second source (ADD, MUL); deferred SOFTMAX: where the per-row "
      "reciprocals go (RBUF)", enum=Buffer),
    F("b_addr", _ADDR, "second operand byte address", bindable=True),
    F("b_stride", _ADDR, "second operand bytes between rows"),
    F("d_buf", 2, "destination buffer", enum=Buffer),
    F("d_addr", _ADDR, "destination byte address", bindable=True),
    F("d_stride", _ADDR, "destination bytes between rows"),
    F("p_addr", _ADDR, "PBUF byte address of parameters (gains, biases, RoPE table)",
      bindable=True),
    F("p_stride", _ADDR, "PBUF bytes between parameter rows (RoPE: per token)"),
    F("n", _CNT, "elements per row", bindable=True),
    F("m", _CNT, "rows", bindable=True),
    F("group", _CNT, "RoPE: head dimension (rotation group size)"),
    F("m1", 16, "first multiplier", signed=True),
    F("s1", 6, "first shift"),
    F("m2", 16, "second multiplier", signed=True),
    F("s2", 6, "second shift"),
    F("aux", 32, "function-specific: FILL value, norm epsilon, causal query position",
      signed=True, bindable=True),
    F("causal", 1, "SOFTMAX: mask columns after the row's query position aux + row"),
    F("interleaved", 1, "ROPE: rotate pairs (2i, 2i+1) rather than (i, i + group/2)"),
    F("beta", 1, "norms: add a per-channel INT32 bias after the gains"),
    F("defer", 1, "SOFTMAX: weights relative to the row max; per row 2**60/(127*sum) to b_addr"),
    F("rowscalar", 1, "MUL: the second operand is one element per row, broadcast"),
)

_SYS = (
    F("sync_op", 2, "synchronisation operation", enum=SysOp),
    F("sync_id", 8, "barrier id; every core must use the same sequence"),
    F("buf", 2, "GATHER: buffer", enum=Buffer),
    F("addr", _ADDR, "GATHER: byte address of this core's slice in its first row"),
    F("len", _ADDR, "GATHER: bytes of this core's slice per row (0: contributes nothing)"),
    F("rows", _CNT, "GATHER: rows (0 is read as 1)", bindable=True),
    F("stride", _ADDR, "GATHER: bytes between rows"),
)


@dataclass(frozen=True)
class OpSpec:
    """One opcode: its fields in encoding order and where each sits in the bit vector."""

    opcode: Opcode
    doc: str
    fields: tuple[Field, ...]

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return HEADER + self.fields

    @cached_property
    def layout(self) -> Mapping[str, int]:
        """Bit offset of every field (header included) within the instruction's words."""
        return MappingProxyType(_layout(self.all_fields))

    @cached_property
    def words(self) -> int:
        """32-bit words of the fixed part (binding words come after)."""
        last = max(self.layout[f.name] + f.width for f in self.all_fields)
        return -(-last // WORD_BITS)

    @cached_property
    def bindable(self) -> tuple[str, ...]:
        """Names of bindable fields; a binding word's ``target`` indexes this tuple."""
        return tuple(f.name for f in self.fields if f.bindable)

    def field(self, name: str) -> Field:
        for f in self.all_fields:
            if f.name == name:
                return f
        raise IsaError(f"{self.opcode.name} has no field {name!r}; fields: "
                       f"{[f.name for f in self.fields]}")


def _layout(fields: Iterable[Field]) -> dict[str, int]:
    # First-fit LSB-first packing in declaration order: each field goes to the first word with
    # room for it, so no field straddles a word and 24-bit addresses share words with flags.
    offsets, fill = {}, []
    for f in fields:
        if f.width > WORD_BITS:
            raise AssertionError(f"field {f.name} wider than a word")
        word = next((i for i, used in enumerate(fill) if used + f.width <= WORD_BITS), None)
        if word is None:
            word = len(fill)
            fill.append(0)
        offsets[f.name] = word * WORD_BITS + fill[word]
        fill[word] += f.width
    return offsets


OPCODES: Mapping[Opcode, OpSpec] = MappingProxyType({
    Opcode.LD: OpSpec(Opcode.LD, "Load from HBM into an on-chip buffer: for o in n2, for m in n1, "
                      "for c in nch channels: len bytes from channel chan+c at hbm_addr + "
                      "o*hbm_stride2 + m*hbm_stride1 to buf_addr + c*ch_stride + o*buf_stride2 "
                      "+ m*buf_stride1. Different channels' bytes must not land on the same "
                      "buffer bytes: the engine may move channels side by side "
                      "(ld_lanes).", _TRANSFER + (
        F("nch", 6, "number of consecutive channels read in parallel (0 is read as 1)"),
        F("ch_stride", _ADDR, "buffer byte offset between the channels' data"),
        F("transpose", 1, "transpose each 16x16-byte tile on the way in (len % 256 == 0)"),
    )),
    Opcode.ST: OpSpec(Opcode.ST, "Store from an on-chip buffer to HBM, with the loops of LD.",
                      _TRANSFER),
    Opcode.MM: OpSpec(Opcode.MM, "Matrix-matrix product Y[m_rows x 16*n_strips] = X[m_rows x "
                      "16*k_blocks] . W^T, W in the block format; prefill, and decode's "
                      "packed attention heads and digit pairs (sum_rows).",
                      _MATRIX_COMMON + _MM_ROWS),
    Opcode.MV: OpSpec(Opcode.MV, "Matrix-vector product y[16*n_strips] = W . x; decode.",
                      _MATRIX_COMMON),
    Opcode.MISC: OpSpec(Opcode.MISC, "Special-function unit operation over m rows of n elements.",
                        _MISC),
    Opcode.SYS: OpSpec(Opcode.SYS, "Cross-core synchronisation. Every core executes its SYS "
                       "instructions in the same sequence (op and id); GATHER copies each "
                       "core's slice (rows of len bytes at addr + row*stride in buf) to the "
                       "same addresses on every other core.", _SYS),
})

_BINDING = (
    F("kind", 1, "COUNT or OFFSET", enum=BindKind),
    F("reg", 2, "length register", enum=LengthReg),
    F("target", 5, "index into the opcode's bindable fields"),
    F("shift", 5, "power-of-two unit (COUNT) or stride (OFFSET)"),
    F("base", 16, "subtracted from the register before use (clamped at zero)"),
)
BINDING_FIELDS = _BINDING
BINDING_LAYOUT: Mapping[str, int] = MappingProxyType(_layout(_BINDING))
MAX_BINDINGS = 3


def isa_hash() -> str:
    """A hash of the whole encoding: every field of every opcode (offset, width, signedness,
    enum members), the binding word, and the limits; any change to either side changes it."""
    def describe(fields, layout):
        return [(f.name, layout[f.name], f.width, f.signed, f.bindable,
                 sorted((m.name, m.value) for m in f.enum) if f.enum else None) for f in fields]
    table = {op.name: [int(op), describe(spec.all_fields, spec.layout)]
             for op, spec in OPCODES.items()}
    table["binding"] = describe(_BINDING, BINDING_LAYOUT)
    table["limits"] = [ISA_VERSION, WORD_BITS, MAX_BINDINGS]
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- instructions
@dataclass(frozen=True)
class Binding:
    """A dynamic length parameter: rewrites ``field`` from register ``reg`` at run time.

    COUNT:  field = min(field, ceil(max(reg - base, 0) / 2**shift))
    OFFSET: field = field + (max(reg - base, 0) << shift)
    """

    kind: BindKind
    reg: LengthReg
    field: str
    shift: int = 0
    base: int = 0

    def resolve(self, static: int, regs: Mapping[LengthReg, int]) -> int:
        t = max(int(regs[self.reg]) - self.base, 0)
        if self.kind == BindKind.COUNT:
            return min(static, -(-t >> self.shift))
        return static + (t << self.shift)


class Instruction:
    """One decoded or to-be-encoded instruction: an opcode, its field values and bindings.

    Fields are read as attributes (``ins.hbm_addr``); every field of the opcode is present, zero
    when not given. Build with keywords: ``Instruction(Opcode.LD, chan=3, len=256, ...)``.
    """

    __slots__ = ("op", "values", "bindings")

    def __init__(self, op: Opcode, *, wait: int = 0, release: int = 0,
                 bindings: Iterable[Binding] = (), **values: int):
        op = Opcode(op)
        spec = OPCODES[op]
        names = {f.name for f in spec.fields}
        unknown = sorted(set(values) - names)
        if unknown:
            raise IsaError(f"{op.name} has no field(s) {unknown}; fields: {sorted(names)}")
        values = dict(values, wait=wait, release=release)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise IsaError(f"{op.name}: field '{name}' = {value!r} is not an integer")
        full = {f.name: int(values.get(f.name, 0)) for f in spec.all_fields
                if f.name not in ("opcode", "nbind")}
        self.op = op
        self.bindings = tuple(bindings)
        full["opcode"], full["nbind"] = int(op), len(self.bindings)
        self.values = MappingProxyType(full)

    def __getattr__(self, name: str) -> int:
        # Only field names belong here; a slot not yet set (copy, unpickling) must not recurse.
        if name.startswith("__") or name in Instruction.__slots__:
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"{self.op.name} instruction has no field {name!r}") from None

    @property
    def spec(self) -> OpSpec:
        return OPCODES[self.op]

    def __reduce__(self):
        fields = {k: v for k, v in self.values.items() if k not in ("opcode", "nbind")}
        return (_rebuild, (int(self.op), fields, self.bindings))

    def replace(self, **changes) -> Instruction:
        values = {k: v for k, v in self.values.items() if k not in ("opcode", "nbind")}
        values.update(changes)
        bindings = values.pop("bindings", self.bindings)
        return Instruction(self.op, bindings=bindings, **values)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Instruction) and self.op == other.op
                and dict(self.values) == dict(other.values) and self.bindings == other.bindings)

    def __hash__(self):
        return hash((self.op, tuple(sorted(self.values.items())), self.bindings))

    def __repr__(self) -> str:
        from flightllm.contract.disasm import format_instruction
        return f"<{format_instruction(self)}>"


def _rebuild(op: int, fields: dict, bindings: tuple) -> Instruction:
    return Instruction(Opcode(op), bindings=bindings, **fields)


def apply_bindings(ins: Instruction, regs: Mapping[LengthReg, int]) -> Instruction:
    """The instruction with every binding resolved against the length registers."""
    if not ins.bindings:
        return ins
    changes = {}
    for b in ins.bindings:
        changes[b.field] = b.resolve(changes.get(b.field, ins.values[b.field]), regs)
    return ins.replace(bindings=(), **changes)


# --------------------------------------------------------------------------- encoding
def _check(f: Field, value: int, where: str) -> int:
    if not isinstance(value, int):
        raise IsaError(f"{where}: field '{f.name}' = {value!r} is not an integer")
    if f.enum is not None and value not in f.enum._value2member_map_:
        raise IsaError(f"{where}: field '{f.name}' = {value} is not one of "
                       f"{[f'{m.name}={m.value}' for m in f.enum]}")
    if not f.lo <= value <= f.hi:
        raise IsaError(f"{where}: field '{f.name}' = {value} does not fit {f.width} "
                       f"{'signed' if f.signed else 'unsigned'} bits [{f.lo}, {f.hi}]")
    return value & ((1 << f.width) - 1)


def _pack(fields: Iterable[Field], layout: Mapping[str, int], values: Mapping[str, int],
          nwords: int, where: str) -> list[int]:
    bits = 0
    for f in fields:
        bits |= _check(f, values[f.name], where) << layout[f.name]
    return [(bits >> (WORD_BITS * i)) & 0xFFFFFFFF for i in range(nwords)]




def encode(ins: Instruction) -> list[int]:
    """The instruction's 32-bit words; raises :class:`IsaError` naming any bad field."""
    spec = ins.spec
    where = f"{ins.op.name}"
    for mask in ("wait", "release"):
        if ins.values[mask] >> int(ins.op) & 1:
            raise IsaError(f"{where}: field '{mask}' = {ins.values[mask]:#x} names the "
                           "instruction's own queue")
    if len(ins.bindings) > MAX_BINDINGS:
        raise IsaError(f"{where}: {len(ins.bindings)} bindings; at most {MAX_BINDINGS}")
    words = _pack(spec.all_fields, spec.layout, ins.values, spec.words, where)
    for b in ins.bindings:
        if b.field not in spec.bindable:
            raise IsaError(f"{where}: binding names field {b.field!r}, which is not bindable; "
                           f"bindable: {list(spec.bindable)}")
        values = {"kind": int(b.kind), "reg": int(b.reg), "target": spec.bindable.index(b.field),
                  "shift": b.shift, "base": b.base}
        words += _pack(_BINDING, BINDING_LAYOUT, values, 1, f"{where} binding")
    return words


def _unpack(fields, layout, words, start, word_offset_of=lambda off: off // WORD_BITS):
    bits = 0
    for i, w in enumerate(words):
        bits |= (int(w) & 0xFFFFFFFF) << (WORD_BITS * i)
    values, used = {}, 0
    for f in fields:
        off = layout[f.name]
        raw = (bits >> off) & ((1 << f.width) - 1)
        used |= ((1 << f.width) - 1) << off
        value = raw - (1 << f.width) if f.signed and raw >> (f.width - 1) else raw
        if f.enum is not None and value not in f.enum._value2member_map_:
            raise IsaDecodeError(start + word_offset_of(off), f.name, value,
                                 f"not one of {[m.name for m in f.enum]}")
        values[f.name] = value
    spare = bits & ~used
    if spare:
        bit = (spare & -spare).bit_length() - 1
        raise IsaDecodeError(start + bit // WORD_BITS, "reserved", (spare >> bit) & 1,
                             f"reserved bit {bit % WORD_BITS} is set")
    return values


def decode(words, start: int = 0) -> tuple[Instruction, int]:
    """Decode one instruction at ``words[start]``; returns it and the index after it.

    Raises:
        IsaDecodeError: naming the word index and field of the first problem (unknown opcode
            or enum value, a set reserved bit, a queue waiting on itself, a binding on a field
            that cannot be bound, or a stream that ends inside the instruction).
    """
    if start >= len(words):
        raise IsaDecodeError(start, "opcode", -1, "the stream ends here")
    head = int(words[start]) & 0xFFFFFFFF
    opcode = head & 0xF
    if opcode not in Opcode._value2member_map_:
        raise IsaDecodeError(start, "opcode", opcode,
                             f"not a valid opcode {[o.name for o in Opcode]}")
    spec = OPCODES[Opcode(opcode)]
    nbind = (head >> spec.layout["nbind"]) & 3
    end = start + spec.words + nbind
    if end > len(words):
        raise IsaDecodeError(len(words), "length", spec.words + nbind,
                             f"{spec.opcode.name} needs {spec.words + nbind} words; the stream "
                             f"ends after {len(words) - start}")
    values = _unpack(spec.all_fields, spec.layout, words[start:start + spec.words], start)
    for mask in ("wait", "release"):
        if values[mask] >> opcode & 1:
            raise IsaDecodeError(start, mask, values[mask],
                                 f"{spec.opcode.name} cannot wait on or release to its own queue")
    bindings = []
    for i in range(nbind):
        idx = start + spec.words + i
        b = _unpack(_BINDING, BINDING_LAYOUT, [words[idx]], idx, lambda off: 0)
        if b["target"] >= len(spec.bindable):
            raise IsaDecodeError(idx, "target", b["target"],
                                 f"{spec.opcode.name} has {len(spec.bindable)} bindable fields")
        bindings.append(Binding(BindKind(b["kind"]), LengthReg(b["reg"]),
                                spec.bindable[b["target"]], b["shift"], b["base"]))
    fields = {k: v for k, v in values.items() if k not in ("opcode", "nbind")}
    return Instruction(spec.opcode, bindings=bindings, **fields), end


def decode_all(words) -> list[Instruction]:
    """Decode a whole instruction stream (one core's program)."""
    out, i = [], 0
    while i < len(words):
        ins, i = decode(words, i)
        out.append(ins)
    return out


# --------------------------------------------------------------------------- program files
_MAGIC = b"FLLMPRG1"
MAX_CORES = 64


def encode_program(streams: list[list[Instruction]]) -> bytes:
    """A program file: one instruction stream per core.

    Layout (little-endian): magic ``FLLMPRG1``, u32 ISA version, 16 ASCII hex digits of
    :func:`isa_hash`, u32 core count, u32 word count per core, then each core's words.
    """
    if not 1 <= len(streams) <= MAX_CORES:
        raise IsaError(f"a program holds 1..{MAX_CORES} instruction streams, not {len(streams)}")
    words = [[w for ins in stream for w in encode(ins)] for stream in streams]
    head = _MAGIC + struct.pack("<I", ISA_VERSION) + isa_hash().encode()
    head += struct.pack(f"<I{len(words)}I", len(words), *(len(w) for w in words))
    return head + b"".join(struct.pack(f"<{len(w)}I", *w) for w in words)


class ProgramFileError(ValueError):
    """A program file is truncated, not a program, or for another ISA."""


def decode_program_words(data: bytes) -> list[list[int]]:
    """The per-core word streams of a program file, header checked."""
    if data[:8] != _MAGIC:
        raise ProgramFileError("not a flightllm program file (bad magic)")
    if len(data) < 32:
        raise ProgramFileError("program file truncated inside its header")
    (version,) = struct.unpack_from("<I", data, 8)
    digest = data[12:28].decode("ascii", "replace")
    if version != ISA_VERSION or digest != isa_hash():
        raise ProgramFileError(f"program is for ISA version {version} ({digest}); this flightllm "
                               f"speaks version {ISA_VERSION} ({isa_hash()})")
    (ncores,) = struct.unpack_from("<I", data, 28)
    if not 1 <= ncores <= MAX_CORES or len(data) < 32 + 4 * ncores:
        raise ProgramFileError(f"program file header names {ncores} cores or is truncated")
    counts = struct.unpack_from(f"<{ncores}I", data, 32)
    pos, streams = 32 + 4 * ncores, []
    if len(data) != pos + 4 * sum(counts):
        raise ProgramFileError(f"program file holds {len(data) - pos} bytes of words; its header "
                               f"promises {4 * sum(counts)}")
    for n in counts:
        streams.append(list(struct.unpack_from(f"<{n}I", data, pos)))
        pos += 4 * n
    return streams


def decode_program(data: bytes) -> list[list[Instruction]]:
    """Decode a program file into one instruction list per core."""
    return [decode_all(words) for words in decode_program_words(data)]
