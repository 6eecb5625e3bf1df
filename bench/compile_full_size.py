"""Compile a full-size model preset and record what the compiler costs and produces.

Default: LLaMA2-7B with synthetic weights (made one tensor at a time), INT4 weights with group
multipliers, for the U280 configuration, max_len 2048. Writes
``bench/results/compile_<model>_<arch>.json``: per-step seconds, peak resident memory,
instruction bytes (and the program-per-length baseline), padding waste, instructions per
program and per step, weight bytes. The build directory goes to a temporary folder unless
``--out`` is given.

    python bench/compile_full_size.py [--model llama2-7b] [--arch u280] [--max-len 2048]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from pathlib import Path

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.presets import build_ir, preset
from flightllm.contract.config import load_config

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama2-7b")
    ap.add_argument("--arch", default="u280")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--calibration-length", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = load_config(args.arch)
    ir = build_ir(preset(args.model), "synthetic", seed=0)
    opts = CompileOptions(weight_bits=args.weight_bits, max_len=args.max_len,
                          calibration_sequences=1, calibration_length=args.calibration_length)
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out else None) as tmp:
        out = args.out or Path(tmp) / "build"
        start = time.perf_counter()
        report = compile_model(ir, cfg, out, opts)
        wall = time.perf_counter() - start
        sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*.bin")}
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    chunk = report["prefill_chunk"]
    prefill_insts = sum(report["instructions_per_program"]["prefill"].values())
    decode_insts = sum(report["instructions_per_program"]["decode"].values())
    result = {
        "model": args.model, "arch": args.arch, "max_len": args.max_len,
        "weight_bits": args.weight_bits, "cores": cfg.cores,
        "wall_seconds": round(wall, 1), "step_seconds": report["timings"],
        "program_seconds": report["timings"]["lower"],
        "quantize_and_pack_seconds": report["timings"]["quantize"],
        "peak_memory_gb": round(peak_gb, 2),
        "instruction_bytes_total": report["instruction_bytes_total"],
        "instruction_bytes_per_length_baseline": report["instruction_bytes_per_length_baseline"],
        "padding_waste": report["padding_waste"],
        "padding_waste_by_phase": report["padding_waste_by_phase"],
        "prefill_chunk": chunk,
        "instructions_per_program": report["instructions_per_program"],
        "instructions_per_step": {
            **{f"decode kv {kv}": decode_insts for kv in (128, 512, 2048)},
            **{f"prefill {n}": math.ceil(n / chunk) * prefill_insts for n in (128, 512)},
        },
        "weight_bytes": report["weight_bytes"], "avg_weight_bits": report["avg_weight_bits"],
        "hbm_image_bytes": sum(v for k, v in sizes.items() if k.startswith("hbm/")),
        "goals": {"program_seconds": 120, "quantize_and_pack_seconds": 900,
                  "peak_memory_gb": 8, "instruction_bytes_total": 64 << 20,
                  "padding_waste": 0.02},
        "flightllm_reference": {"instruction_bytes_total": 3.25e9,
                                "decode_instructions_per_step": "97k-131k"},
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"compile_{args.model}_{args.arch}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
