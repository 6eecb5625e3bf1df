"""The vendor-tool project for a board: pure rendering, no I/O.

:func:`render_project` returns ``{relative path: bytes}``; the compiler writes the files inside
its atomic build step. Everything is derived from the board description, the accelerator
configuration and the kernel's host interface (:mod:`flightllm.contract.regmap`):

* Vitis boards: ``src/<kernel>.v``, ``kernel.xml`` (arguments with offsets, sizes, address
  qualifiers and ports, from the register map), ``package_kernel.tcl`` (``package_xo``),
  ``link.cfg`` (one HBM pseudo-channel per AXI master, the clock), a ``Makefile`` with
  ``TARGET=hw|hw_emu`` and ``PLATFORM``;
* Vivado (Versal, no XRT shell) boards: ``src/<kernel>.v``, ``create_project.tcl`` (a block
  design with CIPS, the NoC and its HBM controllers, the kernel as a module reference), a
  ``Makefile``;
* always ``README.md`` (how to build) and ``project.json`` (bindings and address map for the
  host).

Rendering twice gives the same bytes (no dates, sorted inputs). Names that reach a script are
checked against narrow patterns, and every rendered string value is checked again on its way
into a script template, so nothing from a board file or a configuration can add a command.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.regmap import AxiMaster, axi_masters, register_map

from .connectivity import bind_masters, core_slrs
from .schema import SAFE_NAME, SAFE_TOKEN, Board, BoardError

__all__ = ["render_project", "build_hint", "check_kernel_ports", "kernel_ports", "TEMPLATE_DIR",
           "VERSAL_HBM_BASE", "CONTROL_BASE"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
#: Where Versal HBM devices map pseudo-channel 0 in the NoC address map (AMD's Versal HBM NoC
#: tutorials: pseudo-channel n at 0x40_0000_0000 + n GiB).
VERSAL_HBM_BASE = 0x40_0000_0000
#: Where the Vivado flow maps the kernel's control registers in the CIPS M_AXI_FPD window.
CONTROL_BASE = 0xA400_0000
#: Address bits of every AXI master (Vitis RTL kernels use 64-bit addresses).
MASTER_ADDRESS_BITS = 64
#: Signals each AXI4 master needs (direction as seen from the kernel, and a width rule).
_MASTER_SIGNALS = (
    ("awvalid", "output", 1), ("awready", "input", 1), ("awaddr", "output", "addr"),
    ("awlen", "output", 8), ("wvalid", "output", 1), ("wready", "input", 1),
    ("wdata", "output", "data"), ("wstrb", "output", "strb"), ("wlast", "output", 1),
    ("bvalid", "input", 1), ("bready", "output", 1), ("arvalid", "output", 1),
    ("arready", "input", 1), ("araddr", "output", "addr"), ("arlen", "output", 8),
    ("rvalid", "input", 1), ("rready", "output", 1), ("rdata", "input", "data"),
    ("rlast", "input", 1),
)
#: Signals of the AXI4-Lite control slave.
_SLAVE_SIGNALS = (
    ("awvalid", "input", 1), ("awready", "output", 1), ("awaddr", "input", "caddr"),
    ("wvalid", "input", 1), ("wready", "output", 1), ("wdata", "input", 32),
    ("wstrb", "input", 4), ("bvalid", "output", 1), ("bready", "input", 1),
    ("bresp", "output", 2), ("arvalid", "input", 1), ("arready", "output", 1),
    ("araddr", "input", "caddr"), ("rvalid", "output", 1), ("rready", "input", 1),
    ("rdata", "output", 32), ("rresp", "output", 2),
)
_SCRIPT_VALUE = re.compile(r"[A-Za-z0-9_.,:+\-\[\]/]*")


def kernel_ports(cfg: AcceleratorConfig) -> dict[str, tuple[str, int | None]]:
    """Every port the kernel top must have: name -> (direction, width or None for "any").

    The control address width is at least what the register map decodes (None here: any
    width from that up is accepted, see :func:`check_kernel_ports`).
    """
    ports: dict[str, tuple[str, int | None]] = {"ap_clk": ("input", 1),
                                                "ap_rst_n": ("input", 1)}
    for sig, direction, width in _SLAVE_SIGNALS:
        ports[f"s_axi_control_{sig}"] = (direction, None if width == "caddr" else width)
    for m in axi_masters(cfg):
        rule = {"addr": MASTER_ADDRESS_BITS, "data": m.data_bits, "strb": m.data_bits // 8}
        for sig, direction, width in _MASTER_SIGNALS:
            ports[f"{m.port}_{sig}"] = (direction, rule.get(width, width))
    return ports


_DECL = re.compile(r"\b(input|output|inout)\b\s*(?:wire|reg|logic)?\s*(?:signed\s*)?"
                   r"(?:\[\s*(\d+)\s*:\s*(\d+)\s*\])?\s*([A-Za-z_][A-Za-z0-9_$]*)")


def _declared_ports(verilog: str, module: str) -> dict[str, tuple[str, int]]:
    match = re.search(rf"\bmodule\s+{re.escape(module)}\s*[(#;]", verilog)
    if not match:
        names = re.findall(r"\bmodule\s+([A-Za-z_][A-Za-z0-9_$]*)", verilog)
        raise BoardError(f"the Verilog has no module {module!r} (modules: "
                         f"{', '.join(names) or 'none'})")
    end = verilog.find("endmodule", match.end())
    body = verilog[match.end():end if end >= 0 else None]
    ports = {}
    for direction, hi, lo, name in _DECL.findall(body):
        width = abs(int(hi) - int(lo)) + 1 if hi else 1
        ports.setdefault(name, (direction, width))
    return ports


def check_kernel_ports(verilog: str, module: str, cfg: AcceleratorConfig) -> dict:
    """Check that ``module`` in ``verilog`` has the host interface the register map implies.

    Returns:
        ``{"interrupt": bool}``: whether the kernel has an ``interrupt`` output.

    Raises:
        BoardError: naming the first missing port, or the port with a wrong direction/width.
    """
    declared = _declared_ports(verilog, module)
    regmap = register_map(cfg)
    for name, (direction, width) in kernel_ports(cfg).items():
        if name not in declared:
            raise BoardError(f"kernel {module!r}: port {name} is missing (the register map "
                             f"and axi_masters() of configuration {cfg.name!r} need it)")
        got_dir, got_width = declared[name]
        if got_dir != direction:
            raise BoardError(f"kernel {module!r}: port {name} is an {got_dir}, expected an "
                             f"{direction}")
        if name.endswith(("_awaddr", "_araddr")) and name.startswith("s_axi_control"):
            if got_width < regmap.address_bits:
                raise BoardError(f"kernel {module!r}: port {name} has {got_width} bits, the "
                                 f"register map decodes {regmap.address_bits}")
        elif width is not None and got_width != width:
            raise BoardError(f"kernel {module!r}: port {name} has {got_width} bits, expected "
                             f"{width}")
    irq = declared.get("interrupt")
    return {"interrupt": bool(irq and irq[0] == "output")}


# ---------------------------------------------------------------------------------- templates
def _script_value(value):
    """Jinja2 finalize hook of the script templates: refuse text that could start a command."""
    if isinstance(value, str) and not _SCRIPT_VALUE.fullmatch(value):
        raise BoardError(f"refusing to write {value!r} into a generated script: only letters, "
                         "digits and _ . , : + - [ ] / are allowed there")
    return value


@lru_cache(maxsize=2)
def _environment(script: bool):
    import jinja2
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",),
                                            default_for_string=False, default=False),
        finalize=_script_value if script else None)


def _render(template: str, context: dict, *, script: bool = True) -> bytes:
    return _environment(script).get_template(template).render(**context).encode()


def _check_name(what: str, value: str, pattern=SAFE_NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BoardError(f"{what} {value!r} is not allowed: use lower-case letters, digits and "
                         "_ (starting with a letter, at most 32); it becomes a file name and a "
                         "word in Tcl, make and v++ scripts")
    return value


def _arguments(cfg: AcceleratorConfig) -> list[dict]:
    """kernel.xml's argument list: every register-map argument in offset order."""
    ports = {m.name: m.port for m in axi_masters(cfg)}
    out = []
    for index, reg in enumerate(register_map(cfg).arguments):
        pointer = reg.kind == "pointer"
        out.append({"name": reg.name, "id": index, "qualifier": 1 if pointer else 0,
                    "port": ports[reg.name] if pointer else "s_axi_control",
                    "size": f"0x{reg.bits // 8:x}", "offset": f"0x{reg.offset:x}"})
    return out


def _context(board: Board, cfg: AcceleratorConfig, kernel: str, interrupt: bool) -> dict:
    bindings = bind_masters(board, cfg)
    memory, banks = board.memory
    slrs = core_slrs(board, cfg)
    regmap = register_map(cfg)
    masters: list[AxiMaster] = axi_masters(cfg)
    hbm_links = []
    for index, b in enumerate(bindings):
        base = VERSAL_HBM_BASE + b.bank * banks.bytes
        hbm_links.append({"index": f"{index:02d}", "port": b.master.port,
                          "controller": b.bank // 2, "pc": b.bank % 2,
                          "noc_port": (b.bank % 2) * 2 + b.port,
                          "offset": f"0x{base:x}", "range": f"0x{banks.bytes:x}",
                          # Request what the master can move, capped at the bank's share.
                          "bw_mbps": int(min(banks.bandwidth_gbps * 1000 / banks.count,
                                             b.master.data_bits / 8 * cfg.clock_mhz))})
    return {
        "kernel": kernel, "cu": f"{kernel}_1", "board": board.name, "part": board.part,
        "platform": board.platform, "board_part": board.board_part, "flow": board.flow,
        "family": board.family, "description": board.description, "config": cfg.name,
        "config_hash": cfg.config_hash(), "mhz": f"{cfg.clock_mhz:g}",
        "hz": str(round(cfg.clock_mhz * 1e6)), "memory": memory,
        "masters": masters, "bindings": bindings, "arguments": _arguments(cfg),
        "control_range": f"0x{regmap.size:x}", "interrupt": interrupt,
        "cu_slr": bindings[0].slr if cfg.cores == 1 and bindings[0].slr is not None else None,
        "core_slrs": slrs, "cores": cfg.cores, "slrs": board.slrs, "hbm_links": hbm_links,
        "control_base": f"0x{CONTROL_BASE:x}", "bd": f"{kernel}_bd",
        # The block design's address editor works in pages of at least 64 KiB.
        "control_window": f"0x{max(regmap.size, 0x10000):x}",
        "hbm_controllers": max(1, (banks.count + 1) // 2),
    }


def _project_json(ctx: dict, board: Board, cfg: AcceleratorConfig) -> bytes:
    memory, banks = board.memory
    info = {
        "board": board.name, "part": board.part, "flow": board.flow,
        "platform": board.platform, "kernel": ctx["kernel"], "compute_unit": ctx["cu"],
        "config": cfg.name, "config_hash": cfg.config_hash(), "clock_mhz": cfg.clock_mhz,
        "memory": memory, "bank_bytes": banks.bytes, "core_slrs": ctx["core_slrs"],
        "control_bytes": register_map(cfg).size,
        "bindings": [b.to_dict() for b in ctx["bindings"]],
    }
    if board.flow == "vivado":
        info["address_map"] = {
            "control": {"base": CONTROL_BASE, "bytes": register_map(cfg).size,
                        "via": "CIPS M_AXI_FPD"},
            "masters": {link["port"]: {"base": int(link["offset"], 16),
                                       "bytes": int(link["range"], 16)}
                        for link in ctx["hbm_links"]},
        }
    return (json.dumps(info, indent=1, sort_keys=True) + "\n").encode()


def render_project(board: Board, cfg: AcceleratorConfig, *, kernel_name: str = "flightllm",
                   verilog: str) -> dict[str, bytes]:
    """The vendor-tool project for ``cfg``'s kernel on ``board``, as ``{path: contents}``.

    Args:
        board: the target card (:func:`flightllm.boards.registry.load_board`).
        cfg: the accelerator configuration the kernel was generated for.
        kernel_name: the kernel's top module, file and compute-unit name
            (lower-case letters, digits, ``_``).
        verilog: the kernel top's Verilog (``flightllm.hw.kernel.kernel_verilog(cfg,
            name=kernel_name)``); its ports are checked against the register map.

    Returns:
        Relative POSIX paths (no ``..``, never absolute) to file contents.

    Raises:
        BoardError: an unsafe name, a kernel whose ports do not match the register map, or
            more AXI masters than the board's memory banks take.
    """
    _check_name("kernel name", kernel_name)
    _check_name("board name", board.name)
    if not SAFE_TOKEN.fullmatch(cfg.name):
        raise BoardError(f"configuration name {cfg.name!r} is not allowed in a generated "
                         "project: use letters, digits and _ . : + -")
    interrupt = check_kernel_ports(verilog, kernel_name, cfg)["interrupt"]
    ctx = _context(board, cfg, kernel_name, interrupt)
    files = {f"src/{kernel_name}.v": verilog.encode(),
             "README.md": _render("README.md.j2", ctx, script=False),
             "project.json": _project_json(ctx, board, cfg)}
    if board.flow == "vitis":
        files.update({
            "kernel.xml": _render("kernel.xml.j2", ctx),
            "package_kernel.tcl": _render("package_kernel.tcl.j2", ctx),
            "link.cfg": _render("link.cfg.j2", ctx),
            "Makefile": _render("Makefile.vitis.j2", ctx),
        })
    else:
        files.update({
            "create_project.tcl": _render("create_project.tcl.j2", ctx),
            "Makefile": _render("Makefile.vivado.j2", ctx),
        })
    for path in files:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or str(pure) != path:
            raise BoardError(f"internal error: generated path {path!r} escapes the project")
    return dict(sorted(files.items()))


def build_hint(board: Board, project_dir: str) -> str:
    """One line telling the user how to build the project written to ``project_dir``."""
    if board.flow == "vitis":
        return (f"build it with Vitis: cd {project_dir} && make TARGET=hw "
                f"(or TARGET=hw_emu; platform {board.platform})")
    return f"build it with Vivado: cd {project_dir} && make (or make project to only create it)"
