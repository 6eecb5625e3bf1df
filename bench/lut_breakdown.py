"""Where a core's LUTs are: each unit of the resource estimate, broken down by submodule.

The figures are counted from the RTLIL (``flightllm.hw.resources.breakdown``), the method the
estimate uses for units without a synthesis result; they are approximate (within about a
third of Yosys on the tiny units, docs/hw_datapath.md) and meant for finding where the LUTs
go, not for the fit. Writes ``bench/results/lut_breakdown_<arch>.json`` and prints the tree.

    python bench/lut_breakdown.py [--arch u280] [--depth 3] [--min-lut 1000]
        [--set wbuf_read_ports=4 --set ld_lanes=4]

``--set FIELD=VALUE`` changes a field of the configuration (integers only) before counting,
for a what-if of the design's cost (the result file then gets a ``_what_if`` suffix).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flightllm.contract.config import load_config
from flightllm.hw.resources import UNITS, breakdown, format_breakdown

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="u280", help="preset name or configuration file")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--min-lut", type=int, default=1000,
                    help="leave out submodules with fewer LUTs (all instances together)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    cfg = load_config(args.arch)
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = int(value)
    if changes:
        cfg = cfg.replace(**changes)
    out = {"arch": args.arch, "config_hash": cfg.config_hash(), "changes": changes,
           "method": "counted from RTLIL (hw/resource_count.py), not synthesised",
           "units": {}}
    t0 = time.perf_counter()
    for unit in UNITS:
        tree = breakdown(cfg, unit.name, depth=args.depth, min_lut=args.min_lut)
        out["units"][unit.name] = {"per_core": unit.per_core(cfg), "tree": tree}
        print(f"== {unit.name} (x{unit.per_core(cfg)} per core)")
        print(format_breakdown(tree))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    name = Path(args.arch).stem + ("_what_if" if changes else "")
    path = RESULTS / f"lut_breakdown_{name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
