"""Block-sparse prefill attention on a long prompt: work saved, bit-exactness (docs/compiler.md).

Compiles the LLaMA test model (``tests/models/onnx/llama_dynamo_op18.onnx``) for ``tiny`` at
``--max-len 1024`` with dense attention and with sink + band masks (tiny's 16-token blocks and
FlightLLM's 64-token blocks), feeds a 1024-token prompt through the golden simulator, checks
that each sparse build's logits equal ``qforward`` with the build's mask bit for bit, and
records the simulator's counters (MACs, HBM bytes read) next to the report's attention-only
figures (``prefill_attention``: the mask's programs against dense programs at the same chunk).

Run ``python bench/attention_sparsity.py``: writes ``bench/results/attention_sparsity.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.calibrate import calibrate, default_calibration_tokens
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.qmodel import (
    AttentionSparsity, KVState, QuantRecipe, build_qmodel, qforward,
)
from flightllm.contract.config import preset
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "models" / "onnx" / "llama_dynamo_op18.onnx"
OUT = ROOT / "bench" / "results" / "attention_sparsity.json"
MAX_LEN = PROMPT = 1024
#: (label, attn_block, (sink, band) or None for dense)
CASES = [("dense", 16, None), ("sink=1,band=4 block=16", 16, (1, 4)),
         ("sink=1,band=4 block=64", 64, (1, 4))]


def run(label: str, block: int, sparsity, ir, prompt, tmp: Path) -> tuple[dict, np.ndarray]:
    cfg = preset("tiny").replace(attn_block=block)
    opts = CompileOptions(max_len=MAX_LEN, calibration_sequences=2, attn_sparsity=sparsity)
    out = tmp / label.replace(" ", "_").replace(",", "_").replace("=", "")
    report = compile_model(ir, cfg, out, opts)
    build = load_build(out)
    session = Session(build, GoldenDevice(build))
    t0 = time.perf_counter()
    logits = session.prefill(prompt).logits
    seconds = time.perf_counter() - t0
    steps = [s.functional for s in session.counters]
    row = {"label": label, "attn_block": block, "chunk": report["prefill_chunk"],
           "prefill_calls": len(steps),
           "macs_total": sum(c.macs_dense for c in steps),
           "hbm_read_bytes_total": sum(sum(c.hbm_read_bytes.values()) for c in steps),
           "report_prefill_attention": report["prefill_attention"],
           "golden_seconds": round(seconds, 1)}
    if sparsity is not None:
        m = report["prefill_attention"]["mask"]
        mask = AttentionSparsity(m["sink_blocks"], m["band_blocks"], m["block"], m["chunk"])
        calib = [default_calibration_tokens(ir.config.vocab_size, opts.calibration_length, i)
                 for i in range(opts.calibration_sequences)]
        qm = build_qmodel(ir, calibrate(ir, calib), QuantRecipe(), max_len=MAX_LEN)
        want = qforward(qm, prompt, 0, KVState.empty(qm), attn_mask=mask) * qm.lm_head.s_out
        row["bit_exact_vs_qforward"] = bool(np.array_equal(logits, want))
        n = MAX_LEN
        visible = sum(mask.visible(p, min(mask.chunk, n - p), n).sum()
                      for p in range(0, n, mask.chunk))
        row["kept_fraction_of_causal_pairs"] = round(float(visible) / (n * (n + 1) / 2), 4)
    return row, logits


def main() -> int:
    ir = load_onnx(MODEL)
    prompt = np.random.default_rng(7).integers(0, ir.config.vocab_size, PROMPT)
    rows, logits = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, block, sparsity in CASES:
            row, logits[label] = run(label, block, sparsity, ir, prompt, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    dense = rows[0]
    for row in rows[1:]:
        row["macs_total_vs_dense_build"] = round(row["macs_total"] / dense["macs_total"], 4)
        row["hbm_read_vs_dense_build"] = round(row["hbm_read_bytes_total"]
                                               / dense["hbm_read_bytes_total"], 4)
        got, want = logits[row["label"]], logits["dense"]
        cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
        row["logit_cosine_vs_dense_min"] = round(float(cos.min()), 4)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": MODEL.name, "arch": "tiny", "max_len": MAX_LEN,
                               "prompt_tokens": PROMPT, "runs": rows}, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0 if all(r.get("bit_exact_vs_qforward", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
