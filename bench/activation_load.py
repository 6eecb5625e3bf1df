"""What a matrix engine that waits for its whole activation vector would lose in decode.

Until stop 21 a chain started an MV/MM only once all K blocks of its activations were in the
engine's store (one block per cycle, one instruction at a time), so every matrix instruction
paid its K blocks in cycles before its first pass; the performance model never charged that.
This script lowers a model from its shapes for a board's preset (as bench/estimate_full_size.py
does), counts the decode program's matrix instructions and their K blocks per core, and sets
the sum beside the modelled decode step at KV 512. Writes
``bench/results/activation_load_<model>_<board>.json``.

    python bench/activation_load.py [--only llama2-7b:u280]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flightllm.contract.isa import Opcode
from flightllm.sim.estimate import board_setup, load_target
from flightllm.sim.golden import load_streams
from flightllm.sim.perf import PerfModel

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="llama2-7b:u280", help="model:board")
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=2048)
    args = ap.parse_args()
    model_name, board = args.only.split(":")
    config, hbm = board_setup(board)
    target = load_target(model_name, config, weight_bits=args.weight_bits,
                         max_len=args.max_len)
    cores = []
    for stream in load_streams(target.decode):
        matrix = [s.ins for s in stream if s.ins.op in (Opcode.MV, Opcode.MM)]
        cores.append({"matrix_instructions": len(matrix),
                      "k_blocks": sum(ins.k_blocks for ins in matrix)})
    step = PerfModel(config, hbm, sparsity=target.sparsity).run(
        target.decode, seq=1, kv=512, pos=511)
    worst = max(c["k_blocks"] for c in cores)
    out = {"model": model_name, "board": board, "per_core": cores,
           "decode_step_cycles_kv512": step.cycles,
           "load_fraction_of_step": worst / step.cycles,
           "modelled_tokens_per_s_kv512": 1 / step.seconds,
           "tokens_per_s_kv512_if_loads_were_paid": config.clock_mhz * 1e6
           / (step.cycles + worst)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"activation_load_{model_name}_{board}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{model_name} on {board}: {cores[0]['matrix_instructions']:,} matrix instructions, "
          f"{worst:,} K blocks a core = {100 * out['load_fraction_of_step']:.1f} % of the "
          f"{step.cycles:,}-cycle decode step at KV 512; {out['modelled_tokens_per_s_kv512']:.2f}"
          f" tokens/s modelled, {out['tokens_per_s_kv512_if_loads_were_paid']:.2f} if every "
          f"load were paid; wrote {path}")


if __name__ == "__main__":
    main()
