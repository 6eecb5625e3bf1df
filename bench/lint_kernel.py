"""Verilator lint of a full kernel: the Verilog `flightllm compile --board` ships, checked with
``verilator --lint-only`` and the project's options (hw/sim_runner.py).

The tests lint the tiny kernel; this is the check for the board presets, whose Verilog takes
minutes to generate. Writes ``bench/results/lint_<arch>.json``: the verdict, every warning,
and the time to generate (zero when the Verilog cache had it) and to lint.

    python bench/lint_kernel.py [--arch u280]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from flightllm.contract.config import load_config
from flightllm.hw.kernel import cached_kernel_verilog, cached_verilog_path
from flightllm.hw.sim_runner import verilator_lint

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="u280", help="preset name or configuration file")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    cfg = load_config(args.arch)
    t0 = time.perf_counter()
    cached_kernel_verilog(cfg)
    path = cached_verilog_path(cfg)
    t1 = time.perf_counter()
    run = verilator_lint(path, top="flightllm", timeout=args.timeout)
    t2 = time.perf_counter()
    warnings = sorted(set(re.findall(r"%Warning-[A-Z0-9_]+: .*", run.stderr)))
    out = {"arch": cfg.name, "config_hash": cfg.config_hash(),
           "verilog_bytes": path.stat().st_size, "returncode": run.returncode,
           "clean": run.returncode == 0,
           "warnings": [w.replace(str(path), path.name) for w in warnings],
           "errors": run.stderr[-4000:] if run.returncode else "",
           "seconds": {"generate_or_cache": round(t1 - t0, 1), "lint": round(t2 - t1, 1)}}
    RESULTS.mkdir(exist_ok=True)
    dest = RESULTS / f"lint_{cfg.name}.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{dest.name}: return code {run.returncode}, {len(warnings)} warning kinds, "
          f"{out['seconds']}")


if __name__ == "__main__":
    main()
