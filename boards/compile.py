"""`flightllm compile --board`: a model and a board in, a build with its vendor project out.

The order is chosen so that a refusal costs nothing: the configuration is checked against the
board first (seconds), then the kernel's Verilog and the project are rendered, then the model is
compiled (minutes for a full-size model). Everything lands in the build directory in one atomic
step, so a failure anywhere leaves no partial output:

* the compiler's files (``manifest.json``, ``programs/``, ``hbm/``, ``host/``),
* ``project/``: the vendor project (:func:`flightllm.boards.project.render_project`),
* ``report.json`` with ``board``, ``fit`` and ``performance`` sections added, and
  ``report.md``, the same for people.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from flightllm.contract.config import AcceleratorConfig

from .fit import FitReport, require_fit
from .project import render_project
from .schema import Board

__all__ = ["compile_for_board", "dsp_implementation", "report_markdown"]


def dsp_implementation(board: Board) -> str:
    """How the kernel's DSP slices are written for ``board``: the DSP48E2 primitive on
    UltraScale+ cards (the cascade is then exactly the chain's, and the primitive matches the
    simulated twin on AMD's UNISIM model: tests/hw/test_dsp48e2_unisim.py); on DSP58 cards the
    behavioural twin, left to Vivado to infer (the primitive has only been checked against the
    UltraScale+ model)."""
    return "xilinx" if board.family == "DSP48E2" else "twin"


def compile_for_board(ir, board: Board, cfg: AcceleratorConfig, out: Path, opts=None, *,
                      kernel_name: str = "flightllm", dump_dir: Path | None = None,
                      fit: FitReport | None = None) -> dict:
    """Compile ``ir`` for ``cfg`` on ``board`` into ``out`` with the board's project.

    Args:
        fit: an already computed fit report (the counted estimate takes tens of seconds for a
            large configuration); measured here when omitted.

    Returns:
        The report (also in ``report.json`` and ``report.md``).

    Raises:
        FitError: the configuration does not fit the board (nothing is written).
    """
    from flightllm.compiler.build import compile_model, write_atomically
    from flightllm.hw.kernel import cached_kernel_verilog

    fit = fit or require_fit(board, cfg)
    dsp_impl = dsp_implementation(board)
    project = render_project(board, cfg, kernel_name=kernel_name,
                             verilog=cached_kernel_verilog(cfg, name=kernel_name,
                                                           dsp_impl=dsp_impl))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.board.", dir=out.parent))
    try:
        build = staging / "build"
        report = compile_model(ir, cfg, build, opts, dump_dir=dump_dir)
        report["board"] = {"name": board.name, "part": board.part, "flow": board.flow,
                           "platform": board.platform, "family": board.family,
                           "kernel": kernel_name, "project": "project", "dsp_impl": dsp_impl}
        report["fit"] = fit.to_dict()
        report["performance"] = _performance(build, board)
        files: dict = {rel.as_posix(): path for path in sorted(build.rglob("*"))
                       if path.is_file() and (rel := path.relative_to(build)) != Path("report.json")}
        files.update({f"project/{rel}": data for rel, data in project.items()})
        files["report.json"] = (json.dumps(report, indent=1, sort_keys=True) + "\n").encode()
        files["report.md"] = report_markdown(report, cfg).encode()
        write_atomically(out, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _performance(build: Path, board: Board) -> dict:
    """Predicted figures of the build's own programs on the board (sim/perf.py)."""
    from flightllm.sim.estimate import estimate, hbm_params, load_target
    est = estimate(load_target(str(build), None), hbm_params(board))
    keep = ("decode_tokens_per_s", "prefill_ms", "prefill_dsp_bound_ms", "hbm_utilization",
            "mpe_utilization", "binding_unit")
    return {"model": "flightllm.sim.perf (cycle-level, not validated against the whole RTL "
                     "core; see docs/performance.md)", **{k: est[k] for k in keep}}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _flat(value) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flat(v)}" for k, v in value.items())
    return _fmt(value)


def report_markdown(report: dict, cfg: AcceleratorConfig) -> str:
    """The build report for people: board and fit, precision and sparsity, performance."""
    b, fit = report["board"], report["fit"]
    lines = [
        f"# flightllm build: {cfg.name} on {b['name']}", "",
        f"- part `{b['part']}` ({b['family']}), flow `{b['flow']}`"
        + (f", platform `{b['platform']}`" if b["platform"] else ""),
        f"- kernel `{b['kernel']}` at {cfg.clock_mhz:g} MHz, {cfg.cores} core(s), "
        f"{cfg.hbm_channels_total} HBM channels, configuration hash `{cfg.config_hash()}`",
        f"- project in `project/` (see its README.md for the vendor-tool commands)", "",
        "## Resources", "",
        f"{'fits' if fit['fits'] else 'does not fit'}; {fit['method']}.", "",
        "| resource | used | board | shell | free | used % |", "|---|---:|---:|---:|---:|---:|",
    ]
    for r, used in fit["used"].items():
        lines.append(f"| {r} | {_fmt(used)} | {_fmt(fit['capacity'][r])} | "
                     f"{_fmt(fit['shell'][r])} | {_fmt(fit['available'][r])} | "
                     f"{_fmt(fit['utilisation_pct'][r])} |")
    lines += ["", "## Precision and sparsity", ""]
    for key in ("avg_weight_bits", "weight_bytes", "sparsity", "instruction_bytes_total",
                "max_len", "chunk"):
        if key in report:
            value = report[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in sorted(value.items()))
            lines.append(f"- {key.replace('_', ' ')}: {_fmt(value)}")
    lines += ["", "## Predicted performance", ""]
    perf = report["performance"]
    for key, value in perf.items():
        lines.append(f"- {key.replace('_', ' ')}: {_flat(value)}")
    return "\n".join(lines) + "\n"
