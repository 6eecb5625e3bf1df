"""Wall time and peak memory of ``flightllm compile --board B`` for every bundled board.

Each board's compile runs in its own process (``python -m flightllm compile --board B -o DIR``
on the bundled model), timed from outside, with the child's own CPU time and peak resident
memory (``wait4``). The first board whose configuration is generated pays for the Verilog; boards
that share a configuration reuse it from the cache, which the CLI reports and this script
records. ``--cold`` points the cache at an empty directory so every configuration is generated
once in this run. Writes ``bench/results/board_compile.json``.

    python bench/board_compile.py [--boards u280,u55c] [--cold] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flightllm.boards.registry import list_boards

RESULTS = Path(__file__).resolve().parent / "results"


def _compile(board: str, out: Path, env: dict, log: Path) -> dict:
    """One compile in a child process: its exit, wall time, peak memory and what it said."""
    t0 = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen([sys.executable, "-m", "flightllm", "compile", "--board", board,
                                  "-o", str(out)], stdout=sink, stderr=subprocess.STDOUT,
                                 env=env)
        # wait4 gives this child's own resource use (ru_maxrss in KiB on Linux).
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = log.read_text()
    # The CLI's own line says which (flightllm/cli.py).
    verilog = ("reused" if "kernel Verilog for" in text and "reusing" in text else
               "generated" if "generating the kernel's Verilog" in text else "unknown")
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    return {
        "board": board, "exit_code": child.returncode, "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2), "verilog": verilog,
        "files": len(files), "bytes": sum(p.stat().st_size for p in files),
        "error": None if child.returncode == 0 else text.strip().splitlines()[-1:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", default=None, help="comma-separated; default: every board")
    ap.add_argument("--cold", action="store_true", help="start from an empty Verilog cache")
    ap.add_argument("--keep", type=Path, default=None, help="keep the builds under this folder")
    args = ap.parse_args()
    boards = args.boards.split(",") if args.boards else list(list_boards())
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="flightllm-board-compile-") as tmp:
        if args.cold:
            env["FLIGHTLLM_CACHE"] = str(Path(tmp) / "cache")
        root = args.keep or Path(tmp)
        rows = []
        for board in boards:
            row = _compile(board, root / f"build_{board}", env, Path(tmp) / f"{board}.log")
            rows.append(row)
            print(f"{board:8s} exit {row['exit_code']}  {row['wall_s']:7.1f} s  "
                  f"peak {row['peak_rss_gb']} GB  verilog {row['verilog']}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%d"), "cold_cache": args.cold,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "boards": rows}
    path = RESULTS / "board_compile.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    if any(r["exit_code"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
