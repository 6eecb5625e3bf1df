"""Matrix unit cycles of a summing MM (``sum_rows``) beside the MV and the plain 2-row MM of the
same weights, RTL against the performance model: the figures behind ``matrix_cost``'s record
term for ``sum_rows`` (docs/performance.md, "Open").

Runs the RTL matrix unit in Amaranth's simulator through the harness of
``tests/hw/test_matrix_unit.py`` (``_check_program``: every buffer row the instructions change
is compared with the golden simulator's), ``tiny`` with four chains: dense INT4 weights with
group multipliers, 8 K blocks, Q32, 1 to 4 strips. Writes ``bench/results/matrix_cycles.json``.

    python bench/matrix_cycles.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the unit harness lives with the RTL tests

from flightllm.contract.config import preset  # noqa: E402
from flightllm.contract.isa import Opcode, OutMode  # noqa: E402
from flightllm.sim.perf_units import UnitTiming, matrix_cost  # noqa: E402
from tests.hw.test_matrix_unit import _check_program  # noqa: E402

OUT_JSON = ROOT / "bench" / "results" / "matrix_cycles.json"
K_BLOCKS, CHAINS = 8, 4


def _kind(ins) -> str:
    if ins.op == Opcode.MV:
        return "MV"
    return "MM sum_rows" if ins.sum_rows else "MM 2 rows"


def main() -> None:
    cfg = preset("tiny")
    rows = []
    for strips in (1, 2, 3, 4):
        base = dict(bits=4, kind="dense", mode=OutMode.Q32, n_strips=strips,
                    k_blocks=K_BLOCKS, gscale=True)
        specs = [dict(base, mv=True), dict(base, mv=False, m_rows=2, sum_rows=True),
                 dict(base, mv=False, m_rows=2)]
        program, cycles = _check_program(cfg, specs, seed=3, chains=CHAINS, min_rows=0)
        for ins, rtl in zip(program, cycles):
            model = matrix_cost(ins, 16, cfg, UnitTiming()).cycles
            rows.append({"strips": strips, "instruction": _kind(ins), "rtl_cycles": rtl,
                         "model_cycles": model})
            print(f"{strips} strips  {_kind(ins):12}  RTL {rtl:4d}  model {model:4d}", flush=True)
    OUT_JSON.write_text(json.dumps({"config": "tiny", "chains": CHAINS, "k_blocks": K_BLOCKS,
                                    "weights": "dense INT4 with group multipliers, Q32",
                                    "runs": rows}, indent=1) + "\n")
    print(f"wrote {OUT_JSON}")


if __name__ == "__main__":
    main()
