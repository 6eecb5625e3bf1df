"""Pictures of a modelled run: a Chrome-trace / Perfetto timeline and a roofline plot.

:func:`chrome_trace` turns a :class:`~flightllm.sim.perf.PerfResult` made with ``trace=True``
into the Trace Event Format (one process per core, one thread per unit; open it in
https://ui.perfetto.dev or chrome://tracing). :func:`write_roofline` draws the estimate's
prefill and decode points under the board's bandwidth and the configuration's MAC roofs: an
SVG with no dependency, a PNG through matplotlib when it is installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from flightllm.contract.config import AcceleratorConfig
from flightllm.sim.hbm_model import HBMParams
from flightllm.sim.perf import UNITS, PerfResult

__all__ = ["chrome_trace", "write_chrome_trace", "roofline_points", "roofline_svg",
           "write_roofline"]


def chrome_trace(result: PerfResult, title: str = "flightllm") -> dict:
    """The run as Trace Event Format JSON (timestamps in microseconds)."""
    if result.trace is None:
        raise ValueError("the run was not traced: PerfModel.run(..., trace=True)")
    us = 1.0 / result.clock_mhz
    events = []
    for core in range(result.cores):
        events.append({"ph": "M", "name": "process_name", "pid": core,
                       "args": {"name": f"{title}: core {core}"}})
        for tid, unit in enumerate(UNITS):
            events.append({"ph": "M", "name": "thread_name", "pid": core, "tid": tid,
                           "args": {"name": unit}})
    tids = {u: i for i, u in enumerate(UNITS)}
    for core, unit, start, end, label in result.trace:
        events.append({"ph": "X", "name": label, "cat": unit, "pid": core, "tid": tids[unit],
                       "ts": start * us, "dur": max(end - start, 0) * us,
                       "args": {"start_cycle": start, "end_cycle": end}})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"cycles": result.cycles, "clock_mhz": result.clock_mhz}}


def write_chrome_trace(result: PerfResult, path: Path, title: str = "flightllm") -> None:
    Path(path).write_text(json.dumps(chrome_trace(result, title)))


def roofline_points(estimate: dict) -> list[tuple[str, float, float]]:
    """(label, MACs per HBM byte, GMAC/s) for each prefill and decode figure of an estimate."""
    points = []
    for phase in ("prefill", "decode"):
        for key, s in estimate["detail"][phase].items():
            if s["hbm_bytes"] and s["ms"]:
                label = f"prefill {key}" if phase == "prefill" else f"decode KV {key}"
                points.append((label, s["macs_dense"] / s["hbm_bytes"],
                               s["macs_dense"] / (s["ms"] * 1e-3) / 1e9))
    return points


def _roofs(cfg: AcceleratorConfig, hbm: HBMParams) -> tuple[float, float, float]:
    """(MM peak GMAC/s, MV peak GMAC/s, board GB/s)."""
    clock = cfg.clock_mhz * 1e6
    return (cfg.mm_macs_per_cycle * clock / 1e9, cfg.mv_macs_per_cycle * clock / 1e9,
            hbm.board_peak_gbps)


def roofline_svg(estimate: dict, cfg: AcceleratorConfig, hbm: HBMParams) -> str:
    """A log-log roofline as an SVG document."""
    mm, mv, bw = _roofs(cfg, hbm)
    points = roofline_points(estimate)
    xs = [p[1] for p in points] + [mm / bw]
    ys = [p[2] for p in points] + [mm]
    x0, x1 = 10 ** math.floor(math.log10(min(xs) / 2)), 10 ** math.ceil(math.log10(max(xs) * 4))
    y0, y1 = 10 ** math.floor(math.log10(min(ys) / 2)), 10 ** math.ceil(math.log10(max(ys) * 2))
    w, h, pad = 640, 420, 60

    def px(x, y):
        fx = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        fy = (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
        return pad + fx * (w - 2 * pad), h - pad - fy * (h - 2 * pad)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
           'fill="none" stroke="#888"/>',
           f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">dense MACs per HBM byte</text>',
           f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" '
           'text-anchor="middle">GMAC/s</text>',
           f'<text x="{w / 2}" y="20" text-anchor="middle">{estimate["model"]} on '
           f'{estimate["board"]} ({estimate["config"]})</text>']
    for peak, name in ((mm, "MM peak"), (mv, "MV peak")):
        knee = peak / bw
        pts = [px(x0, max(bw * x0, y0)), px(max(knee, x0), peak), px(x1, peak)]
        if bw * x0 < y0:
            pts[0] = px(y0 / bw, y0)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="#c33"/>')
        tx, ty = px(x1, peak)
        out.append(f'<text x="{tx - 4:.1f}" y="{ty - 4:.1f}" text-anchor="end">{name} '
                   f'{peak:.0f} GMAC/s</text>')
    for label, x, y in points:
        cx, cy = px(x, y)
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="#36c"/>'
                   f'<text x="{cx + 6:.1f}" y="{cy + 4:.1f}">{label}</text>')
    for decade in range(int(math.log10(x0)), int(math.log10(x1)) + 1):
        gx, _ = px(10 ** decade, y0)
        out.append(f'<text x="{gx:.1f}" y="{h - pad + 14}" text-anchor="middle">'
                   f'1e{decade}</text>')
    for decade in range(int(math.log10(y0)), int(math.log10(y1)) + 1):
        _, gy = px(x0, 10 ** decade)
        out.append(f'<text x="{pad - 4}" y="{gy + 4:.1f}" text-anchor="end">1e{decade}</text>')
    out.append("</svg>")
    return "\n".join(out)


def write_roofline(estimate: dict, cfg: AcceleratorConfig, hbm: HBMParams,
                   path: Path) -> str | None:
    """Write the roofline to ``path`` (.svg, or .png with matplotlib). Returns a message when
    the PNG cannot be made (matplotlib missing: the SVG is written beside it instead)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        path.write_text(roofline_svg(estimate, cfg, hbm))
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        svg = path.with_suffix(".svg")
        svg.write_text(roofline_svg(estimate, cfg, hbm))
        return f"matplotlib is not installed: no PNG; wrote the roofline as {svg}"
    mm, mv, bw = _roofs(cfg, hbm)
    points = roofline_points(estimate)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lo = min([p[1] for p in points] + [mv / bw]) / 4
    hi = max([p[1] for p in points] + [mm / bw]) * 8
    xs = sorted({lo, hi, mm / bw, mv / bw})          # the roofs bend at their knees
    for peak, name in ((mm, "MM peak"), (mv, "MV peak")):
        ax.plot(xs, [min(peak, bw * x) for x in xs], label=f"{name} ({peak:,.0f} GMAC/s)")
    for label, x, y in points:                       # a legend entry each: labels overlap
        ax.scatter([x], [y], label=label, s=18)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dense MACs per HBM byte")
    ax.set_ylabel("GMAC/s")
    ax.set_title(f'{estimate["model"]} on {estimate["board"]} ({estimate["config"]})')
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return None
