"""Hierarchical Verilog (hw/hierarchy.py) and the kernel's Verilog cache.

Whether the hierarchical kernel behaves like the flat one is checked where it matters, by the
kernel runs that compare against the golden simulator (tests/hw/test_kernel.py: one core
instance with its one-cycle run reset; test_kernel_models.py, slow: whole models, and two
cores in the gather test); here, the mechanics: one module per kind, instance ports that match
the module's, and the cache.
"""

import re

import pytest
from amaranth import *
from amaranth.back import verilog
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import preset
from flightllm.hw import kernel
from flightllm.hw.hierarchy import BlackBox, ModuleLibrary, module_ports


class _Accumulator(wiring.Component):
    """A small unit with a stream, an array member and resettable state."""

    def __init__(self, width=8):
        super().__init__({"inp": In(stream.Signature(width)), "taps": Out(width).array(2),
                          "total": Out(16)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.inp.ready.eq(1)
        with m.If(self.inp.valid):
            m.d.sync += self.total.eq(self.total + self.inp.payload)
        m.d.comb += [self.taps[0].eq(self.inp.payload), self.taps[1].eq(~self.inp.payload)]
        return m


class _Inverter(wiring.Component):
    """No state at all: its module has neither clk nor rst."""

    a: In(4)
    y: Out(4)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(~self.a)
        return m


class _Parent(wiring.Component):
    """Four accumulators and two inverters, through a library or not."""

    x: In(8)
    y: Out(16)
    z: Out(4)

    def __init__(self, library=None):
        self.library = library
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        units = [_Accumulator() for _ in range(4)]
        invs = [_Inverter() for _ in range(2)]
        if self.library is not None:
            units = [self.library.instance("acc", u) for u in units]
            invs = [self.library.instance("inv", u) for u in invs]
        for i, u in enumerate(units):
            m.submodules[f"acc{i}"] = u
            m.d.comb += [u.inp.valid.eq(1), u.inp.payload.eq(self.x + i)]
        for i, u in enumerate(invs):
            m.submodules[f"inv{i}"] = u
        m.d.comb += [invs[0].a.eq(self.x[:4]), invs[1].a.eq(invs[0].y), self.z.eq(invs[1].y)]
        m.d.comb += self.y.eq(sum(u.total for u in units))
        return m


def _unused(*units):
    for unit in units:          # built for their ports only: no UnusedElaboratable warning
        unit._MustUse__silence = True
    return units[0]


def _modules(text):
    return re.findall(r"^module\s+(\S+)\s*\(", text, re.MULTILINE)


def test_each_kind_is_emitted_once_and_instantiated_with_its_ports():
    lib = ModuleLibrary("t")
    top = verilog.convert(_Parent(lib), name="t")
    text = lib.verilog() + top
    mods = _modules(text)
    assert mods.count("t_acc") == 1 and mods.count("t_inv") == 1
    assert lib.kinds == ["acc", "inv"]
    assert len(re.findall(r"^\s+t_acc\s+\w+\s*\(", text, re.MULTILINE)) == 4    # instances
    # The instance's port names are the module's: Amaranth's `member__member` flattening.
    ports = module_ports(text, "t_acc")
    assert set(ports) == {"clk", "rst", "inp__valid", "inp__ready", "inp__payload",
                          "taps__0", "taps__1", "total"}
    assert set(module_ports(text, "t_inv")) == {"a", "y"}      # no state: no clk, no rst
    flat = verilog.convert(_Parent(), name="t")
    assert "t_acc" not in _modules(flat)


def test_a_unit_whose_ports_differ_is_refused():
    lib = ModuleLibrary("t")
    _unused(lib.instance("acc", _Accumulator(8)))
    with pytest.raises(ValueError, match="acc: a unit whose ports differ"):
        lib.instance("acc", _unused(_Accumulator(6)))


def test_module_ports_names_a_missing_module():
    with pytest.raises(ValueError, match="no module 'absent'"):
        module_ports("module present(a, b);\nendmodule\n", "absent")


def test_blackbox_declaration_matches_the_ports():
    box = _unused(BlackBox("m", _unused(_Accumulator()).signature, has_reset=False))
    decl = box.declaration()
    assert decl.startswith("(* blackbox *)\nmodule m(input clk, input [7:0] inp__payload")
    assert "output [15:0] total" in decl and "rst" not in decl


@pytest.mark.rtl
def test_hierarchical_verilog_passes_lint(tmp_path):
    from flightllm.hw.sim_runner import simulator_unavailable_reason, verilator_lint
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    lib = ModuleLibrary("t")
    top = verilog.convert(_Parent(lib), name="t")
    good = tmp_path / "good.v"
    good.write_text(lib.verilog() + top)

    def lint(path):
        return verilator_lint(path, top="t", timeout=300)
    result = lint(good)
    assert result.returncode == 0, result.stderr
    # Negative control: without the library's modules the instances are undefined.
    bad = tmp_path / "bad.v"
    bad.write_text(top)
    assert lint(bad).returncode != 0


def test_kernel_verilog_is_cached_by_configuration_and_sources(tmp_path, monkeypatch):
    calls = []

    def fake(cfg, name="flightllm", **options):
        calls.append((cfg.name, name))
        return f"// {cfg.name} {name}\n"
    monkeypatch.setattr(kernel, "kernel_verilog", fake)
    tiny = preset("tiny")
    first = kernel.cached_kernel_verilog(tiny, cache_dir=tmp_path)
    again = kernel.cached_kernel_verilog(tiny, cache_dir=tmp_path)
    assert first == again and calls == [("tiny", "flightllm")]
    kernel.cached_kernel_verilog(tiny, "other", cache_dir=tmp_path)
    kernel.cached_kernel_verilog(tiny.replace(clock_mhz=201.0), cache_dir=tmp_path)
    assert len(calls) == 3
    assert kernel.cached_verilog_path(tiny, cache_dir=tmp_path).read_text() == first
    assert not list(tmp_path.glob("*.tmp"))
    kernel.cached_kernel_verilog(tiny, cache_dir=None)           # no cache: generated again
    assert len(calls) == 4


def test_all_zero_memory_initialisers_are_dropped_and_others_kept():
    text = ("  reg [7:0] mem [1:0];\n  initial begin\n    mem[0] = 8'h00;\n    mem[1] = 8'h00;\n"
            "  end\n"
            "  reg [31:0] bank [1:0];\n  initial begin\n    bank[0] = 32'd0;\n  end\n"
            "  reg [15:0] rom [1:0];\n  initial begin\n    rom[0] = 16'h0000;\n"
            "    rom[1] = 16'h000b;\n  end\n")
    kept = kernel.drop_zero_memory_init(text)
    assert "mem[0]" not in kept and "bank[0]" not in kept
    assert "rom[0] = 16'h0000;\n    rom[1] = 16'h000b;" in kept      # not all zeros: kept
    assert kept.count("initial begin") == 1 and "reg [7:0] mem [1:0];" in kept
