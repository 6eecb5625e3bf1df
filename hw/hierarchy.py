"""Hierarchical Verilog: a replicated unit is emitted once and instantiated many times.

Amaranth writes one module body per *instance* of an elaboratable: a kernel of three cores
with 32 DSP chains and 32 dequantisers each becomes 96 copies of the chain's Verilog, and the
time to elaborate it and push it through Yosys grows with every copy (the board's default
U280 configuration was still elaborating after 14 CPU minutes and 9.6 GB). A
:class:`ModuleLibrary` breaks the repetition: the first unit of a kind is converted to Verilog
on its own, as module ``<prefix>_<kind>``, and every unit of that kind, the first included,
is replaced in its parent by a :class:`BlackBox` that instantiates the module. The netlist is
the same; only the module boundaries differ.

Every unit handed to the library must live in the ``sync`` domain only (its ``clk`` and
``rst`` ports are connected to the parent's) and must be identical to the other units of its
kind: the library checks that their signatures agree, and the caller is responsible for their
parameters (the cores of a kernel and the chains of an engine are built from the same
arguments).
"""

from __future__ import annotations

import re

from amaranth import ClockSignal, Instance, Module, ResetSignal, Value
from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["BlackBox", "ModuleLibrary", "module_ports"]

_HEADER = re.compile(r"^module\s+(\S+)\s*\(([^;]*)\);", re.MULTILINE)


def module_ports(text: str, name: str) -> list[str]:
    """The port names of module ``name`` in Amaranth's Verilog ``text`` (header order)."""
    for match in _HEADER.finditer(text):
        if match.group(1).lstrip("\\") == name:
            return [p.strip() for p in match.group(2).split(",") if p.strip()]
    raise ValueError(f"no module {name!r} in the Verilog")


class BlackBox(wiring.Component):
    """An instance of module ``module`` whose ports are ``signature``'s, named as Amaranth names
    a top-level component's ports (``<member>__<member>...``).

    Args:
        module: the Verilog module name.
        signature: the ports.
        reset: an extra synchronous reset OR-ed into the instance's ``rst`` (what
            :class:`~amaranth.hdl.ResetInserter` would do to the unit's logic; an instance is
            opaque to it).
        has_clock, has_reset: whether the module has ``clk`` / ``rst`` ports (a unit without
            resettable state has no ``rst``).
    """

    def __init__(self, module: str, signature: wiring.Signature, *, reset: Value | None = None,
                 has_clock: bool = True, has_reset: bool = True):
        self.module = module
        self._reset = reset
        self._has_clock, self._has_reset = has_clock, has_reset
        super().__init__(signature)

    def ports(self):
        """``(name, is_input, value)`` for every port of the signature."""
        for path, member, value in self.signature.flatten(self):
            yield "__".join(map(str, path)), member.flow == wiring.In, value

    def elaborate(self, platform):
        m = Module()
        conns = {}
        if self._has_clock:
            conns["i_clk"] = ClockSignal()
        if self._has_reset:
            conns["i_rst"] = ResetSignal() if self._reset is None else ResetSignal() | self._reset
        conns.update({("i_" if is_in else "o_") + name: value
                      for name, is_in, value in self.ports()})
        m.submodules.box = Instance(self.module, **conns)
        return m

    def declaration(self) -> str:
        """A Verilog ``(* blackbox *)`` declaration of the module (for Yosys alone)."""
        decl = ["input clk"] if self._has_clock else []
        decl += ["input rst"] if self._has_reset else []
        decl += [f"{'input' if is_in else 'output'} [{len(Value.cast(v)) - 1}:0] {n}"
                 for n, is_in, v in self.ports()]
        return f"(* blackbox *)\nmodule {self.module}({', '.join(decl)});\nendmodule\n"


class ModuleLibrary:
    """Modules emitted once each, in the order they were first needed.

    Args:
        prefix: prepended to every module name (the kernel's name, so that two kernels'
            Verilog can sit in one project).
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._modules: dict[str, tuple[wiring.Signature, str, list[str]]] = {}

    def instance(self, kind: str, unit: wiring.Component, *, reset: Value | None = None
                 ) -> BlackBox:
        """A :class:`BlackBox` standing for ``unit``; the first unit of ``kind`` is converted."""
        name = f"{self.prefix}_{kind}"
        if kind not in self._modules:
            text = verilog.convert(unit, name=name)
            self._modules[kind] = (unit.signature, text, module_ports(text, name))
        else:
            signature = self._modules[kind][0]
            if unit.signature != signature:
                raise ValueError(f"{kind}: a unit whose ports differ from the first one's")
            unit._MustUse__silence = True          # stood in for, never elaborated
        ports = self._modules[kind][2]
        return BlackBox(name, unit.signature, reset=reset,
                        has_clock="clk" in ports, has_reset="rst" in ports)

    @property
    def kinds(self) -> list[str]:
        return list(self._modules)

    def verilog(self) -> str:
        """Every module's Verilog, in the order the kinds were first needed."""
        return "".join(text for _, text, _ in self._modules.values())
