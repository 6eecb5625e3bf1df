"""The Vitis RTL-kernel top: cores, control slave, instruction-port arbiter and counters.

Port names follow the Vitis RTL-kernel convention exactly: ``ap_clk``, ``ap_rst_n`` (active
low), ``interrupt``, ``s_axi_control_<awaddr|awvalid|...>`` and, for every
:class:`~flightllm.contract.regmap.AxiMaster` of :func:`~flightllm.contract.regmap.axi_masters`,
``m_axi_<name>_<awvalid|awready|...>``. The component's signature is flat with these names, so
Amaranth's ``__`` joining of nested members never shows up in the Verilog.

A run: the host writes the arguments and ap_start; the kernel takes the start when every core's
AXI ports are quiet, resets the cores for one cycle and starts them. The run ends (ap_done)
when every core finished its program or any core stopped with an error; ``status``,
``error_core`` and ``error_word`` report the first error (lowest core number). Counters:
``cycles`` (start to done), ``busy_c<core>_<unit>`` (cycles an instruction of that queue was
in flight), ``bytes_<channel>`` (bus bytes of every read and write beat on that master).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from amaranth import *
from amaranth.back import verilog
from amaranth.hdl import ResetInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Opcode
from flightllm.contract.regmap import axi_masters, register_map
from flightllm.hw.control import ControlSlave, axi_lite_signature
from flightllm.hw.core import DEFAULT_WATCHDOG, Core
from flightllm.hw.axi import axi4_signature
from flightllm.hw.hierarchy import ModuleLibrary
from flightllm.hw.sync import SyncHub
from flightllm.paths import cache_dir

__all__ = ["Kernel", "kernel_verilog", "cached_kernel_verilog", "cached_verilog_path",
           "drop_zero_memory_init", "kernel_source_key",
           "kernel_ports", "VERILOG_CACHE"]

#: Where generated kernel Verilog is kept (a U280 kernel takes minutes to generate); override
#: with FLIGHTLLM_CACHE.
VERILOG_CACHE = cache_dir("verilog")
_HW_DIR = Path(__file__).resolve().parent
_CONTRACT_DIR = _HW_DIR.parent / "flightllm" / "contract"
#: The RTL a kernel without execution units is made of (its builds then do not depend on the
#: matrix and special-function units' sources).
_TRANSFER_SOURCES = ("bufport.py", "buffers.py", "isa_layouts.py", "dma.py", "fetch.py",
                     "core.py", "kernel.py", "sync.py", "control.py", "hierarchy.py")
#: hw/ modules the kernel never imports (simulation and resource-estimate tooling): editing
#: them does not make the kernel's Verilog stale.
_NOT_KERNEL_SOURCES = ("sim_runner.py", "resources.py", "resource_count.py")


def _flat(prefix: str, signature: wiring.Signature, flip: bool) -> dict:
    members = {}
    for name, member in signature.members.items():
        out = (member.flow == Out) != flip
        members[f"{prefix}_{name}"] = (Out if out else In)(member.shape)
    return members


def kernel_ports(cfg: AcceleratorConfig) -> dict:
    """The top's members by Vitis port name (``In``/``Out`` with shapes)."""
    regmap = register_map(cfg)
    members = {"ap_clk": In(1), "ap_rst_n": In(1), "interrupt": Out(1)}
    members.update(_flat("s_axi_control", axi_lite_signature(regmap.address_bits), flip=True))
    for master in axi_masters(cfg):
        members.update(_flat(master.port, axi4_signature(64, master.data_bits), flip=False))
    return members


class Kernel(wiring.Component):
    """The whole kernel for ``cfg`` (see the module docstring for ports and behaviour).

    Args:
        cfg: the accelerator configuration.
        watchdog_cycles: a core that makes no progress for this many cycles stops with
            ErrorCode.TIMEOUT.
        execution_units: include the MM/MV and MISC units (see :class:`~flightllm.hw.core.Core`).
        library: a :class:`~flightllm.hw.hierarchy.ModuleLibrary`: the cores (and their DSP
            chains and dequantisers) become instances of modules emitted once; ``None``
            elaborates every core.
        dsp_impl: ``"twin"`` (behavioural DSP48E2, for simulation and DSP inference) or
            ``"xilinx"`` (the DSP48E2 primitive), see :class:`~flightllm.hw.dsp48e2.DSP48E2`.
    """

    def __init__(self, cfg: AcceleratorConfig, *, watchdog_cycles: int = DEFAULT_WATCHDOG,
                 execution_units: bool = True, library: ModuleLibrary | None = None,
                 dsp_impl: str = "twin"):
        self.cfg, self.watchdog_cycles = cfg, watchdog_cycles
        self.execution_units, self.library, self.dsp_impl = execution_units, library, dsp_impl
        self.regmap = register_map(cfg)
        super().__init__(kernel_ports(cfg))

    def _port(self, prefix, name):
        return getattr(self, f"{prefix}_{name}")

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]

        m.submodules.control = ctl = ControlSlave(cfg)
        for name, member in ctl.axil.signature.members.items():
            top = self._port("s_axi_control", name)
            if member.flow == Out:   # the slave's outputs (the member is flipped)
                m.d.comb += top.eq(getattr(ctl.axil, name))
            else:
                m.d.comb += getattr(ctl.axil, name).eq(top)
        m.d.comb += self.interrupt.eq(ctl.interrupt)

        # ---- cores: reset for one cycle when the run is taken, started the next.
        core_reset, core_start = Signal(), Signal()
        m.d.comb += core_reset.eq(ctl.start)
        m.d.sync += core_start.eq(ctl.start)
        masters = {mst.name: mst for mst in axi_masters(cfg)}
        cores = []
        m.submodules.hub = hub = SyncHub(cfg)
        for c in range(cfg.cores):
            core = Core(cfg, index=c, watchdog_cycles=self.watchdog_cycles,
                        execution_units=self.execution_units, library=self.library,
                        dsp_impl=self.dsp_impl)
            if self.library is None:
                m.submodules[f"core{c}"] = ResetInserter({"sync": core_reset})(core)
            else:
                # The same ports; the one-cycle reset goes into the instance's rst.
                core = self.library.instance("core", core, reset=core_reset)
                m.submodules[f"core{c}"] = core
            cores.append(core)
            m.d.comb += [core.start.eq(core_start), core.instr_base.eq(ctl.arg_instr),
                         core.prog_offset.eq(getattr(ctl, f"arg_prog_offset_c{c}")),
                         core.prog_words.eq(getattr(ctl, f"arg_prog_words_c{c}")),
                         core.seq.eq(ctl.arg_seq), core.kv.eq(ctl.arg_kv), core.pos.eq(ctl.arg_pos)]
            wiring.connect(m, core.sync, hub.ports[c])
            for ch in range(cfg.hbm_channels_per_core):
                name = next(mst.name for mst in masters.values()
                            if mst.core == c and mst.channel == ch)
                m.d.comb += core.hbm_base[ch].eq(getattr(ctl, f"arg_{name}"))
                self._bind_master(m, core.hbm[ch], masters[name].port)
        self._instr_arbiter(m, [core.fetch for core in cores])
        # GATHER: core a's k-th remote writer reaches the k-th other core; that core sees it as
        # the remote writer numbered by a's place among *its* others.
        for a in range(cfg.cores):
            others = [b for b in range(cfg.cores) if b != a]
            for k, b in enumerate(others):
                slot = [x for x in range(cfg.cores) if x != b].index(a)
                for name in ("abuf", "wbuf", "rbuf", "pbuf"):
                    wiring.connect(m, getattr(cores[a], f"remote_out_{name}")[k],
                                   getattr(cores[b], f"remote_in_{name}")[slot])

        # ---- run end, status, counters
        running = ctl.running
        all_done = Cat(*(core.done for core in cores)).all()
        any_error = Cat(*(core.error != 0 for core in cores)).any()
        m.d.comb += ctl.finish.eq(running & ~core_start & (all_done | any_error))
        m.d.comb += ctl.can_start.eq(Cat(*(core.quiet for core in cores)).all())
        status, error_core, error_word = Signal(32), Signal(32), Signal(32)
        for c in reversed(range(cfg.cores)):
            with m.If(cores[c].error != 0):
                m.d.comb += [status.eq(cores[c].error), error_core.eq(c),
                             error_word.eq(cores[c].error_word)]
        m.d.comb += [ctl.status_status.eq(status), ctl.status_error_core.eq(error_core),
                     ctl.status_error_word.eq(error_word)]

        counters = {}
        for reg in self.regmap:
            if reg.kind == "counter":
                counters[reg.name] = Signal(64, name=f"count_{reg.name}")
                m.d.comb += getattr(ctl, f"status_{reg.name}").eq(counters[reg.name])
        with m.If(ctl.start):
            m.d.sync += [c.eq(0) for c in counters.values()]
        with m.Elif(running):
            m.d.sync += counters["cycles"].eq(counters["cycles"] + 1)
            for c, core in enumerate(cores):
                for op in Opcode:
                    reg = counters[f"busy_c{c}_{op.name.lower()}"]
                    m.d.sync += reg.eq(reg + core.busy[op])
        for mst in list(masters.values())[1:]:
            reg = counters[f"bytes_{mst.name}"]
            beats = Cat(self._port(mst.port, "rvalid") & self._port(mst.port, "rready"),
                        self._port(mst.port, "wvalid") & self._port(mst.port, "wready"))
            with m.If(~ctl.start):
                m.d.sync += reg.eq(reg + (beats[0] + beats[1]) * (mst.data_bits // 8))
        return m

    def _bind_master(self, m, inner, port: str):
        for name, member in inner.signature.members.items():
            top = self._port(port, name)
            if member.flow == Out:
                m.d.comb += top.eq(getattr(inner, name))
            else:
                m.d.comb += getattr(inner, name).eq(top)

    def _instr_arbiter(self, m, fetches):
        """One instruction master for all cores: one burst at a time, round-robin."""
        port = axi_masters(self.cfg)[0].port
        p = lambda name: self._port(port, name)  # noqa: E731
        # The instruction master only reads.
        m.d.comb += [p("awvalid").eq(0), p("wvalid").eq(0), p("bready").eq(1),
                     p("awburst").eq(1)]
        n = len(fetches)
        owner = Signal(range(max(n, 2)))
        busy = Signal()
        grant = Signal(range(max(n, 2)))
        for i in reversed(range(n)):
            with m.If(fetches[i].arvalid):
                m.d.comb += grant.eq(i)
        sel = Mux(busy, owner, grant)
        ar_fields = ("araddr", "arlen", "arsize", "arburst")
        for f in ar_fields:
            m.d.comb += p(f).eq(Array(getattr(x, f) for x in fetches)[sel])
        m.d.comb += p("arvalid").eq(~busy & Array(x.arvalid for x in fetches)[grant])
        for i, x in enumerate(fetches):
            m.d.comb += [x.arready.eq(~busy & (grant == i) & p("arready")),
                         x.rvalid.eq(busy & (owner == i) & p("rvalid")),
                         x.rdata.eq(p("rdata")), x.rresp.eq(p("rresp")), x.rlast.eq(p("rlast"))]
        m.d.comb += p("rready").eq(busy & Array(x.rready for x in fetches)[owner])
        with m.If(p("arvalid") & p("arready")):
            m.d.sync += [busy.eq(1), owner.eq(grant)]
        with m.If(p("rvalid") & p("rready") & p("rlast")):
            m.d.sync += busy.eq(0)


def kernel_verilog(cfg: AcceleratorConfig, name: str = "flightllm", *,
                   watchdog_cycles: int = DEFAULT_WATCHDOG, execution_units: bool = True,
                   hierarchical: bool = True, dsp_impl: str = "twin") -> str:
    """The kernel's Verilog: the top module ``name`` with the Vitis port names, preceded by
    the modules it instantiates.

    ``hierarchical`` (the default) emits the core, the DSP chain and the dequantiser once each
    (modules ``<name>_core``, ``<name>_dsp_chain``, ``<name>_dequantiser``) and instantiates
    them; ``False`` writes a module body per instance (the same netlist, many times larger:
    impractical beyond the tiny configuration). ``dsp_impl="xilinx"`` instantiates the
    DSP48E2 primitive in every chain slice (for UltraScale+ builds; the Verilog then needs the
    vendor's UNISIM library to simulate or lint).
    """
    library = ModuleLibrary(name) if hierarchical else None
    top = verilog.convert(Kernel(cfg, watchdog_cycles=watchdog_cycles,
                                 execution_units=execution_units, library=library,
                                 dsp_impl=dsp_impl), name=name)
    return drop_zero_memory_init((library.verilog() if library else "") + top)


#: An ``initial`` block of Amaranth's Verilog that only sets memory rows to zero.
_ZERO_INIT = re.compile(r"^[ \t]*initial begin\n(?:[ \t]*(?:\\\S+ |\w+)\[\d+\] = \d+'(?:h0+|d0|b0+);\n)+"
                        r"[ \t]*end\n", re.MULTILINE)


def drop_zero_memory_init(text: str) -> str:
    """``text`` without the ``initial`` blocks that set memories to all zeros.

    Amaranth writes every memory's initial contents, zeros included: for a U280 core's
    buffers that is more than half of the Verilog, and UltraRAM cannot be initialised, so
    Vivado would not map an initialised buffer to it. FPGA RAMs and registers start at zero
    after configuration and Verilator's default is zero, so dropping an all-zero
    initialiser changes no behaviour; memories with other contents (the SFU's tables) keep
    theirs.
    """
    return _ZERO_INIT.sub("", text)


def kernel_source_key(cfg: AcceleratorConfig, options: dict) -> str:
    """A key that changes whenever the kernel's Verilog for ``cfg`` and ``options`` (the
    keyword arguments of :func:`kernel_verilog`) could: the configuration, the options, the
    Amaranth version and the source of every RTL and contract module the kernel uses."""
    import amaranth
    h = hashlib.sha256()
    h.update(cfg.to_json().encode())
    h.update(repr(sorted(options.items())).encode())
    h.update(amaranth.__version__.encode())
    hw = [p for p in sorted(_HW_DIR.glob("*.py")) if p.name not in _NOT_KERNEL_SOURCES]
    if not options.get("execution_units", True):
        hw = [p for p in hw if p.name in _TRANSFER_SOURCES]
    for path in hw + sorted(_CONTRACT_DIR.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cached_verilog_path(cfg: AcceleratorConfig, name: str = "flightllm", *,
                        cache_dir: Path = VERILOG_CACHE, **options) -> Path:
    """Where :func:`cached_kernel_verilog` keeps this kernel (the file may not exist yet)."""
    return Path(cache_dir) / f"{name}-{kernel_source_key(cfg, {'name': name, **options})}.v"


def cached_kernel_verilog(cfg: AcceleratorConfig, name: str = "flightllm", *,
                          cache_dir: Path | None = VERILOG_CACHE, **options) -> str:
    """:func:`kernel_verilog`, kept in ``cache_dir`` (``None``: no cache) under
    :func:`kernel_source_key`, so that compiling another model for the same configuration does
    not generate the RTL again."""
    if cache_dir is None:
        return kernel_verilog(cfg, name, **options)
    path = cached_verilog_path(cfg, name, cache_dir=cache_dir, **options)
    if path.is_file():
        return path.read_text()
    text = kernel_verilog(cfg, name, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)            # readers never see a half-written file
    return text
