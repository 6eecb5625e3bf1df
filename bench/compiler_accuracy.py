"""End-to-end accuracy of compiled builds against onnxruntime's float model (docs/compiler.md).

For every decoder-only test model (``tests/models/onnx``, every exporter and opset) and every
recipe in :data:`RECIPES`, the model is compiled with :func:`compile_model` for the ``tiny``
configuration, the build runs on the golden simulator through :mod:`flightllm.host.session`,
and every step's logits are compared with onnxruntime running the ONNX file on the same prefix.

The inputs are the same for every recipe: a seeded random prompt, then the tokens that the
*float* model picks greedily (teacher forcing), so a recipe that mispredicts one token is not
also judged on a different continuation. Step 0 is the prefill's last row, steps 1.. the decode
steps; the minimum over steps is the figure that matters for generation.

To tell the weight quantisation apart from the integer datapath, each recipe is also measured
*weights only*: the float reference (compiler/reference.py) with the recipe's quantised (and,
if asked, smoothed) weights dequantised back to float, against the unquantised reference.

*Every prompt*: the W8A8 goal is a minimum over steps, and one prompt is one sample of it, so
for one export per architecture the integer reference ``qforward`` (which the builds equal bit
for bit, tests/compiler/test_lower.py) is also compared with the float reference on
:data:`SWEEP_PROMPTS` seeded prompts (teacher-forced the same way), with the compiler's key
headroom and without it.

Run ``python bench/compiler_accuracy.py``: writes ``bench/results/compiler_accuracy.json`` and
rewrites the table between the ``accuracy`` markers in ``docs/compiler.md``. Everything but the
wall times is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from flightllm.compiler import reference
from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.calibrate import calibrate, calibrate_channels, default_calibration_tokens
from flightllm.compiler.frontend import load_onnx
from flightllm.compiler.ir import TransformerIR
from flightllm.compiler.qmodel import KVState, QuantRecipe, build_qmodel, qforward
from flightllm.compiler.quantize import quantize_weight
from flightllm.compiler.smooth import smooth
from flightllm.contract.config import preset
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "tests" / "models" / "onnx"
OUT_JSON = ROOT / "bench" / "results" / "compiler_accuracy.json"
DOC = ROOT / "docs" / "compiler.md"
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"
SEED = 1234
PROMPT_LEN, DECODE_STEPS, MAX_LEN, ARCH = 16, 8, 64, "tiny"
_QKVO = {"q": 8, "k": 8, "v": 8, "o": 8}
#: name -> (weight bits, N:16 sparsity per projection kind, SmoothQuant alpha).
RECIPES = {
    "W8A8": (8, {}, None),
    "W8A8 smooth 0.5": (8, {}, 0.5),
    "W4A8": (4, {}, None),
    "W4A8 smooth 0.5": (4, {}, 0.5),
    "W4A8 8:16 qkvo": (4, _QKVO, None),
    "W2A8": (2, {}, None),
}
_LINEARS = ("q", "k", "v", "o", "gate", "up", "down", "fc1", "fc2")
#: Prompts of the W8A8 sweep (seeds SEED .. SEED + SWEEP_PROMPTS - 1; the first is the table's).
SWEEP_PROMPTS = 48


def decoder_models() -> list[dict]:
    """Manifest entries of the decoder-only test models, in manifest order."""
    entries = json.loads((MODEL_DIR / "MANIFEST.json").read_text())["models"]
    return [m for m in entries if m.get("decoder_only", True)]


class OnnxReference:
    """onnxruntime on the float ONNX file: logits of a whole prefix, as exported."""

    def __init__(self, path: Path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one thread: the same float sums on every run
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, tokens) -> np.ndarray:
        """``[len(tokens), vocab]`` float64 logits of the full causal forward."""
        ids = np.asarray(tokens, dtype=np.int64)[None, :]
        feed = {"input_ids": ids}
        if "attention_mask" in self.inputs:  # TorchScript exports take an all-ones mask
            feed["attention_mask"] = np.ones_like(ids)
        return self.session.run(None, feed)[0][0].astype(np.float64)


def teacher_tokens(ref: OnnxReference, vocab: int, seed: int = SEED) -> np.ndarray:
    """The seeded prompt followed by the float model's greedy continuation."""
    tokens = list(np.random.default_rng(seed).integers(0, vocab, PROMPT_LEN))
    for _ in range(DECODE_STEPS):
        tokens.append(int(np.argmax(ref.logits(tokens)[-1])))
    return np.array(tokens, dtype=np.int64)


def run_golden(build_dir: Path, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Prefill the prompt, then decode the given tokens; (prefill rows, step rows, times)."""
    build = load_build(build_dir)
    session = Session(build, GoldenDevice(build))
    t0 = time.perf_counter()
    rows = session.prefill(tokens[:PROMPT_LEN]).logits
    t1 = time.perf_counter()
    steps = [rows[-1]] + [session.decode(int(t)).logits[0] for t in tokens[PROMPT_LEN:]]
    t2 = time.perf_counter()
    times = {"prefill_seconds": t1 - t0, "decode_seconds_per_step": (t2 - t1) / DECODE_STEPS}
    return rows, np.array(steps), times


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    """Per-step figures of ``got`` against ``want`` (both ``[steps, vocab]``)."""
    cos = _cosines(got, want)
    std = want.std(axis=-1)
    err = np.abs(got - want).max(axis=-1) / std
    pick, best = got.argmax(-1), want.argmax(-1)
    # How far below the reference's best the chosen token was: near ties are common in
    # random-weight models, and a miss by a sliver of a std is not a broken build.
    steps = np.arange(len(want))
    gap = (want[steps, best] - want[steps, pick]) / std
    return {"cosine_by_step": [round(float(c), 6) for c in cos],
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "top1": float(np.mean(pick == best)),
            "top1_miss_gap_over_std": float(gap.max()),
            "max_abs_err_over_std": float(err.max())}


def weights_only_ir(ir: TransformerIR, opts: CompileOptions) -> TransformerIR:
    """``ir`` as the compiler sees it (smoothed if asked) with every projection's weights
    quantised and dequantised: the float model minus activation and datapath effects."""
    if opts.smooth_alpha is not None:
        calib = [default_calibration_tokens(ir.config.vocab_size, opts.calibration_length,
                                            opts.seed + i)
                 for i in range(opts.calibration_sequences)]
        ir = smooth(ir, calibrate_channels(ir, calib), alpha=opts.smooth_alpha)
    t = dict(ir.tensors)
    for name in list(t):
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] in _LINEARS and parts[3] == "weight":
            q = quantize_weight(t[name].astype(np.float64), opts.weight_bits,
                                sparsity=opts.sparsity.get(parts[2], 16))
            t[name] = q.float_weight().astype(np.float32)
    # The LM head is quantised too; a tied one keeps the float table for the embedding.
    head = quantize_weight(ir.lm_head_weight().astype(np.float64), opts.weight_bits,
                           sparsity=opts.sparsity.get("lm_head", 16))
    t["lm_head.weight"] = head.float_weight().astype(np.float32)
    config = dataclasses.replace(ir.config, tied_embeddings=False)
    return TransformerIR(config, tensors=t, source=ir.source)


def _build_digest(build_dir: Path) -> str:
    """One hash of everything the device runs (programs and HBM images, not the names)."""
    m = json.loads((build_dir / "manifest.json").read_text())
    return "".join(e["sha256"][:8] for e in m["programs"] + m["hbm"])


def measure_model(entry: dict, recipes: dict = RECIPES) -> list[dict]:
    """Every recipe on one test model; one result record per recipe."""
    path = MODEL_DIR / entry["file"]
    ir = load_onnx(path)
    ref = OnnxReference(path)
    tokens = teacher_tokens(ref, ir.config.vocab_size)
    # Every step's reference is the ONNX model run on that step's whole prefix, as the
    # exported graph (no KV cache inputs) computes it.
    prompt_rows = ref.logits(tokens[:PROMPT_LEN])
    want_steps = np.array([prompt_rows[-1]] + [ref.logits(tokens[:PROMPT_LEN + i])[-1]
                                               for i in range(1, DECODE_STEPS + 1)])
    float_rows = reference.forward(ir, tokens)[PROMPT_LEN - 1:]
    frontend_err = float(np.abs(float_rows - want_steps).max() / want_steps.std())
    results = []
    for name, (bits, sparsity, alpha) in recipes.items():
        opts = CompileOptions(weight_bits=bits, sparsity=dict(sparsity), max_len=MAX_LEN,
                              smooth_alpha=alpha, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "build"
            report = compile_model(ir, preset(ARCH), out, opts)
            rows, steps, times = run_golden(out, tokens)
            digest = _build_digest(out)
        wo = reference.forward(weights_only_ir(ir, opts), tokens)[PROMPT_LEN - 1:]
        wo_cos = _cosines(wo, float_rows)
        results.append({
            "model": entry["file"], "arch": entry["arch"], "exporter": entry["exporter"],
            "opset": entry["opset"], "recipe": name, "weight_bits": bits,
            "sparsity": dict(sparsity), "smooth_alpha": alpha, "build_digest": digest,
            **compare(steps, want_steps),
            "prefill_rows_min_cosine": float(_cosines(rows, prompt_rows).min()),
            "weights_only_min_cosine": float(wo_cos.min()),
            "weights_only_mean_cosine": float(wo_cos.mean()),
            "frontend_max_abs_err_over_std": frontend_err,
            "avg_weight_bits": report["avg_weight_bits"],
            "compile_seconds": report["compile_seconds"],
            **{k: round(v, 5) for k, v in times.items()},
        })
        r = results[-1]
        print(f"{entry['file']:34s} {name:16s} min {r['min_cosine']:.4f} "
              f"mean {r['mean_cosine']:.4f} top1 {r['top1']:.2f} "
              f"decode {1e3 * r['decode_seconds_per_step']:.1f} ms")
    return results


def prompt_sweep(entry: dict) -> dict:
    """W8A8 ``qforward`` against the float reference over :data:`SWEEP_PROMPTS` prompts: the
    minimum over steps per prompt, with the default key headroom and with none."""
    ir = load_onnx(MODEL_DIR / entry["file"])
    vocab = ir.config.vocab_size
    opts = CompileOptions(max_len=MAX_LEN)
    calib = [default_calibration_tokens(vocab, opts.calibration_length, opts.seed + i)
             for i in range(opts.calibration_sequences)]
    ranges = calibrate(ir, calib)
    prompts, floats = [], []
    for i in range(SWEEP_PROMPTS):
        tokens = list(np.random.default_rng(SEED + i).integers(0, vocab, PROMPT_LEN))
        for _ in range(DECODE_STEPS):
            tokens.append(int(np.argmax(reference.forward(ir, np.array(tokens))[-1])))
        prompts.append(np.array(tokens))
        floats.append(reference.forward(ir, prompts[-1])[PROMPT_LEN - 1:])
    out = {"model": entry["file"], "arch": entry["arch"], "prompts": SWEEP_PROMPTS}
    for label, headroom in (("default", QuantRecipe().key_headroom), ("no_key_headroom", 1.0)):
        qm = build_qmodel(ir, ranges, QuantRecipe(key_headroom=headroom), max_len=MAX_LEN)
        worst = []
        for tokens, want in zip(prompts, floats):
            kv = KVState.empty(qm)
            rows = [qforward(qm, tokens[:PROMPT_LEN], 0, kv)[-1]]
            rows += [qforward(qm, [t], PROMPT_LEN + s, kv)[0]
                     for s, t in enumerate(tokens[PROMPT_LEN:])]
            worst.append(float(_cosines(np.array(rows, dtype=np.float64), want).min()))
        out[label] = {"key_headroom": headroom, "worst": min(worst),
                      "median": float(np.median(worst)),
                      "prompts_below_0.99": int(sum(w < 0.99 for w in worst)),
                      "min_cosine_by_prompt": [round(w, 5) for w in worst]}
        print(f"{entry['file']:34s} sweep {label:16s} worst {min(worst):.4f} "
              f"below 0.99: {out[label]['prompts_below_0.99']}")
    return out


def sweep_table(sweeps: list[dict]) -> str:
    lines = [f"W8A8 over {SWEEP_PROMPTS} prompts (integer reference against the float model; "
             "minimum over the 9 steps of each prompt):", "",
             "| Arch | Key headroom | Worst prompt | Median prompt | Prompts below 0.99 |",
             "|---|---:|---:|---:|---:|"]
    for sw in sweeps:
        for label in ("no_key_headroom", "default"):
            r = sw[label]
            lines.append(f"| {sw['arch']} | {r['key_headroom']:.2f} | {r['worst']:.4f} "
                         f"| {r['median']:.4f} | {r['prompts_below_0.99']} |")
    return "\n".join(lines + [""])


def table(results: list[dict]) -> str:
    """The markdown section: one row per architecture and recipe, over every export."""
    lines = ["<!-- generated by bench/compiler_accuracy.py; do not edit by hand -->", "",
             "| Arch | Recipe | Bits | Exports (builds) | Min cos | Mean cos | Top-1 "
             "| Max err/std | Weights-only mean cos | Decode ms/step |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["arch"], r["recipe"]), []).append(r)
    for (arch, recipe), rs in groups.items():
        builds = len({r["build_digest"] for r in rs})
        lines.append(
            f"| {arch} | {recipe} | {rs[0]['avg_weight_bits']:.2f} | {len(rs)} ({builds}) "
            f"| {min(r['min_cosine'] for r in rs):.4f} "
            f"| {np.mean([r['mean_cosine'] for r in rs]):.4f} "
            f"| {np.mean([r['top1'] for r in rs]):.2f} "
            f"| {max(r['max_abs_err_over_std'] for r in rs):.2f} "
            f"| {np.mean([r['weights_only_mean_cosine'] for r in rs]):.4f} "
            f"| {1e3 * np.median([r['decode_seconds_per_step'] for r in rs]):.1f} |")
    spread = max(max(r["min_cosine"] for r in rs) - min(r["min_cosine"] for r in rs)
                 for rs in groups.values())
    frontend = max(r["frontend_max_abs_err_over_std"] for r in results)
    lines += ["", f"Largest spread of *Min cos* between exports of one architecture: {spread:.1e};",
              f"float reference (compiler/reference.py) against onnxruntime: at most "
              f"{frontend:.1e} logit std.", ""]
    return "\n".join(lines)


def rewrite_doc(section: str) -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")


def main() -> None:
    start = time.perf_counter()
    results = [r for entry in decoder_models() for r in measure_model(entry)]
    first = {}
    for entry in decoder_models():  # exports of one architecture give one build
        first.setdefault(entry["arch"], entry)
    sweeps = [prompt_sweep(entry) for entry in first.values()]
    report = {"seed": SEED, "arch": ARCH, "max_len": MAX_LEN, "prompt_len": PROMPT_LEN,
              "decode_steps": DECODE_STEPS, "onnxruntime": ort.__version__,
              "recipes": {k: {"weight_bits": b, "sparsity": s, "smooth_alpha": a}
                          for k, (b, s, a) in RECIPES.items()},
              "results": results, "prompt_sweep": sweeps}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(report, indent=1) + "\n")
    rewrite_doc(table(results) + "\n" + sweep_table(sweeps))
    print(f"wrote {OUT_JSON.relative_to(ROOT)} and {DOC.relative_to(ROOT)} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
