"""LD cycles of the RTL core's DMA for one 2 KiB load cut into segments of different lengths,
plain and transposing: the figures behind ``UnitTiming.segment_issue`` and the transposer's
two tiles (docs/hw_core.md, docs/performance.md).

Runs the core without its execution units in Amaranth's simulator (the harness of
``tests/hw/test_dma.py``: AXI slaves without stalls), ``tiny`` with 16-byte beats, so a beat
fills a WBUF row as on the full-size presets. Each program is the LD and a 64-byte ST that
reads its last row back; the count is the core's ``cycles`` from start to done. Checks every
run's HBM bytes against the golden simulator. Writes ``bench/results/dma_cycles.json``.

    python bench/dma_cycles.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the core harness lives with the RTL tests

from flightllm.contract.config import preset  # noqa: E402
from flightllm.contract.isa import Buffer, Instruction, Opcode  # noqa: E402
from flightllm.contract.regmap import channel_port  # noqa: E402
from tests.hw.core_harness import run_core  # noqa: E402
from tests.hw.kernel_programs import IMAGE_BYTES, golden_images, words_of  # noqa: E402

OUT_JSON = ROOT / "bench" / "results" / "dma_cycles.json"
TOTAL = 2048
SEGMENTS = (2048, 256, 64, 48, 32, 16)


def _cycles(cfg, seg: int, transpose: int) -> int:
    n1 = TOTAL // seg
    ld = Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.WBUF, buf_addr=0x100,
                     hbm_addr=0x40, len=seg, n1=n1, hbm_stride1=seg, buf_stride1=seg, n2=1,
                     transpose=transpose)
    back = Instruction(Opcode.ST, wait=1 << Opcode.LD, buf=Buffer.WBUF,
                       buf_addr=0x100 + seg * n1 - 64, hbm_addr=0x6000, len=64, n1=1, n2=1)
    names = [channel_port(0, ch, cfg) for ch in range(cfg.hbm_channels_per_core)]
    rng = random.Random(seg)
    images = {n: bytes(rng.getrandbits(8) for _ in range(IMAGE_BYTES)) for n in names}
    lengths = {"seq": 1, "kv": 1, "pos": 0}
    words = words_of([ld, back])
    want = golden_images(cfg, [words], images, lengths)
    got, state = run_core(cfg, words, [images[n] for n in names], lengths=lengths)
    if not state["done"] or state["error"] or any(g != want[n] for n, g in zip(names, got)):
        raise SystemExit(f"segment {seg}, transpose {transpose}: the RTL's bytes differ from "
                         f"the golden simulator's ({state})")
    return state["cycles"]


def main() -> None:
    cfg = preset("tiny").replace(axi_data_bits=128)
    beat = cfg.axi_data_bits // 8
    rows = []
    for seg in SEGMENTS:
        for transpose in (0, 1):
            if transpose and seg % 256:
                continue  # transposed segments are whole 16x16 tiles
            cycles = _cycles(cfg, seg, transpose)
            rows.append({"segment_bytes": seg, "segments": TOTAL // seg, "transpose": transpose,
                         "beats": TOTAL // beat, "cycles": cycles})
            print(f"{TOTAL // seg:4d} x {seg:5d} B  transpose {transpose}: {cycles:5d} cycles",
                  flush=True)
    OUT_JSON.write_text(json.dumps({"config": "tiny, 128-bit AXI", "beat_bytes": beat,
                                    "load_bytes": TOTAL, "runs": rows}, indent=1) + "\n")
    print(f"wrote {OUT_JSON}")


if __name__ == "__main__":
    main()
