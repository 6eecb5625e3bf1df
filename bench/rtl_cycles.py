"""RTL cycles per prefill and decode step of compiled tiny models, and simulation speed.

Compiles the committed tiny LLaMA-style and OPT-style exports for the ``tiny`` configuration,
runs a prefill and several decode steps on the generated RTL kernel (cocotb + Verilator through
``flightllm.sim.rtl.run_kernel``, full-speed memories: no AXI stalls) and on the golden
simulator, checks the logits agree, and records per step the kernel's ``cycles`` counter, the
busy cycles per unit and the wall time of the simulated run (cycles per second of simulation).
These are the numbers the performance model is validated against.

Run ``python bench/rtl_cycles.py [--steps N] [--models llama,opt] [--build-dir DIR]``; writes
``bench/results/rtl_cycles.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.contract.config import preset
from flightllm.host.build import load_build
from flightllm.host.devices import GoldenDevice, RtlDevice
from flightllm.host.session import Session
from flightllm.sim import rtl

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "bench" / "results" / "rtl_cycles.json"
MODELS = {"llama": "llama_dynamo_op18.onnx", "opt": "opt_dynamo_op18.onnx"}
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


class _TimedRun:
    """run_kernel on one build, remembering each run's registers and wall time."""

    def __init__(self, build):
        self.runs, self.build = [], build

    def __call__(self, cfg, **kw):
        run = rtl.run_kernel(cfg, build=self.build, **kw)
        self.runs.append(run)
        return run


def measure(model: str, steps: int, workdir: Path, kernel) -> dict:
    cfg = preset("tiny")
    opts = CompileOptions(max_len=32, chunk=len(PROMPT), calibration_sequences=1)
    compile_model(load_onnx(ROOT / "tests" / "models" / "onnx" / MODELS[model]), cfg,
                  workdir / model, opts)
    build = load_build(workdir / model)
    timed = _TimedRun(kernel)
    hw = Session(build, RtlDevice(cfg, run_kernel=timed, timeout_cycles=20_000_000))
    gold = Session(build, GoldenDevice(build))
    records, token = [], None
    for step in range(steps + 1):
        phase = "prefill" if step == 0 else "decode"
        if step == 0:
            want, got = gold.prefill(PROMPT), hw.prefill(PROMPT)
        else:
            want, got = gold.decode(token), hw.decode(token)
        if not np.array_equal(want.logits, got.logits):
            raise SystemExit(f"{model} step {step}: RTL logits differ from golden")
        token = int(np.argmax(want.logits[-1]))
        run = timed.runs[-1]
        records.append({
            "phase": phase, "tokens": len(PROMPT) if step == 0 else 1,
            "cycles": run.cycles, "wall_s": round(run.wall_s, 3),
            "cycles_per_s": round(run.cycles / run.wall_s, 1) if run.wall_s else None,
            "busy": {k: v for k, v in run.registers.items() if k.startswith("busy_")},
            "bytes": {k: v for k, v in run.registers.items() if k.startswith("bytes_")},
        })
    return {"model": MODELS[model], "steps": records}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="decode steps after the prefill")
    ap.add_argument("--models", default="llama,opt")
    ap.add_argument("--build-dir", type=Path, default=None,
                    help="use this existing Verilator build of the kernel (default: the cached "
                         "build of the current sources, built if missing)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.build_dir:
        from flightllm.hw.sim_runner import CocotbBuild
        kernel = CocotbBuild(args.build_dir.resolve(), "flightllm",
                             args.build_dir.resolve() / "flightllm.v")
    else:
        kernel = rtl.build_kernel(preset("tiny"))
    build_s = time.perf_counter() - t0
    results = {"config": "tiny", "clock_mhz": preset("tiny").clock_mhz,
               "kernel_build_s": round(build_s, 1), "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results["models"].append(measure(name, args.steps, Path(tmp), kernel))
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(results, indent=2) + "\n")
    for m in results["models"]:
        for s in m["steps"]:
            print(f"{m['model']:28s} {s['phase']:8s} {s['cycles']:>10,d} cycles "
                  f"{s['cycles_per_s'] or 0:>10,.0f} cycles/s")
    print(f"wrote {OUT_JSON}")


if __name__ == "__main__":
    main()
