"""Measured error of the integer special functions against float64 (``docs/numerics.md``).

Every case quantises realistic inputs once, runs the bit-exact integer function from
:mod:`flightllm.contract.numerics`, and compares it with a float64 evaluation of the same
real-valued function on the *same quantised inputs*, so the numbers isolate what the integer
algorithm (tables, multipliers, roundings) loses. Multipliers and gains come from real scales
through :func:`~flightllm.contract.numerics.quantize_multiplier`, the way the compiler picks them,
so their quantisation error is part of the measurement. Output scales are calibrated on the
reference output (max |y| / 127), as a calibration pass would.

Errors are in output LSBs against the unrounded reference (so 0.5 is the floor for any integer
output); ``exact`` is the share of outputs equal to the correctly rounded reference.

Run ``python bench/numerics_error.py``: writes ``bench/results/numerics_error.json`` and rewrites
the table between the ``numerics-error`` markers in ``docs/numerics.md``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from flightllm.contract import numerics as nx

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "bench" / "results" / "numerics_error.json"
DOC = ROOT / "docs" / "numerics.md"
BEGIN, END = "<!-- numerics-error:begin -->", "<!-- numerics-error:end -->"
SEED = 1234
INT8 = (nx.INT8_MIN, nx.INT8_MAX)
INT32 = (nx.INT32_MIN, nx.INT32_MAX)


# --------------------------------------------------------------------------- helpers
def qm(real: float) -> tuple[int, int]:
    return nx.quantize_multiplier(real)


def calibrate(ref: np.ndarray) -> float:
    """INT8 output scale a calibration pass would pick: the largest magnitude maps to 127."""
    return float(np.max(np.abs(ref))) / nx.INT8_MAX


def measure(y, ref, bounds) -> dict:
    """Error of integer outputs ``y`` against ``ref`` (float, output LSBs, saturated alike)."""
    ref = np.clip(np.asarray(ref, dtype=np.float64), *bounds)
    y = np.asarray(y, dtype=np.float64)
    err = np.abs(y - ref)
    rounded = np.floor(ref + 0.5)  # the correctly rounded output, half up like the hardware
    rms_ref = math.sqrt(float(np.mean(ref**2)))
    return {
        "max_lsb": float(err.max()),
        "mean_lsb": float(err.mean()),
        "max_off": int(np.abs(y - rounded).max()),
        "exact": float(np.mean(y == rounded)),
        "rel_rms": math.sqrt(float(np.mean(err**2))) / rms_ref if rms_ref else 0.0,
        "outputs": int(y.size),
    }


# --------------------------------------------------------------------------- cases
def case_softmax(rng, n, sigma, s_in, *, causal=False, spike=0.0):
    rows = max(64, (1 << 19) // n)
    logits = rng.normal(0.0, sigma, (rows, n))
    if spike:  # one dominant key per row, as with attention sinks
        logits[np.arange(rows), rng.integers(0, n, rows)] += spike
    x = np.clip(np.round(logits / s_in), nx.INT32_MIN + 1, nx.INT32_MAX).astype(np.int64)
    valid = np.ones((rows, n), bool)
    if causal:  # prefill rows see a growing prefix; the first row sees only one key
        valid = np.arange(n)[None, :] <= np.linspace(0, n - 1, rows).astype(int)[:, None]
    m1, s1 = qm(s_in * math.log2(math.e) * (1 << nx.EXP2_FRAC_BITS))
    y = nx.softmax(x, m1, s1, valid=valid if causal else None)
    z = np.where(valid, x * s_in, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    ref = e / e.sum(axis=-1, keepdims=True) * (1 << nx.SOFTMAX_OUT_BITS)
    # Probability mass a row keeps (1 = all): INT8 at 2**-7 cannot hold many small terms.
    one = 1 << nx.SOFTMAX_OUT_BITS
    mass = y.sum(axis=-1) / one
    mass_ideal = np.floor(np.clip(ref, *INT8) + 0.5).sum(axis=-1) / one
    return y, ref, INT8, {"m1": m1, "s1": s1, "mass_mean": float(mass.mean()),
                          "mass_min": float(mass.min()),
                          "mass_ideal_mean": float(mass_ideal.mean())}


def case_softmax_deferred(rng, n, sigma, s_in):
    """Deferred normalisation: the effective probabilities q * R / 2**31, in 2**-7 LSBs."""
    rows = max(64, (1 << 19) // n)
    x = np.round(rng.normal(0.0, sigma, (rows, n)) / s_in).astype(np.int64)
    m1, s1 = qm(s_in * math.log2(math.e) * (1 << nx.EXP2_FRAC_BITS))
    q, recip = nx.softmax_deferred(x, m1, s1)
    z = x * s_in
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    ref = e / e.sum(axis=-1, keepdims=True) * (1 << nx.SOFTMAX_OUT_BITS)
    eff = q * recip / 2.0**37 * (1 << nx.SOFTMAX_OUT_BITS)  # what multiplies V, normalised
    err = np.abs(eff - ref)
    mass = (q * recip).sum(axis=-1) / 2.0**37
    return None, None, None, {"m1": m1, "s1": s1, "max_lsb": float(err.max()),
                              "mean_lsb": float(err.mean()), "mass_mean": float(mass.mean()),
                              "mass_min": float(mass.min()), "outputs": int(q.size)}


def case_norm(rng, kind, n, outliers):
    rows, s_res, eps = 64, 2.0**-10, 1e-5
    real = rng.normal(0.0, 1.0, (rows, n)) * rng.lognormal(0.0, 0.7, (rows, 1))
    real += rng.normal(0.0, 0.5, n)  # per-channel offsets: what LayerNorm's centring removes
    if outliers:  # "massive activation" channels, a few hundred times the typical magnitude
        idx = rng.choice(n, max(2, n // 512), replace=False)
        real[:, idx] = rng.choice([-1.0, 1.0], idx.size) * rng.uniform(50.0, 400.0, idx.size)
    x = np.round(real / s_res).astype(np.int64)
    gain = rng.normal(1.0, 0.25, n)
    bias = rng.normal(0.0, 0.2, n) if kind == "layernorm" else np.zeros(n)
    xr = x * s_res
    if kind == "layernorm":
        xr = xr - xr.mean(axis=-1, keepdims=True)
    ref_real = xr / np.sqrt(np.mean(xr**2, axis=-1, keepdims=True) + eps) * gain + bias
    s_out = calibrate(ref_real)
    g = gain / s_out  # gamma: the largest shift that keeps every gain within signed 16 bits
    shift = int(math.floor(math.log2(((1 << 15) - 1) / np.max(np.abs(g)))))
    gamma = np.round(g * 2.0**shift).astype(np.int64)
    # beta joins before the final rounding, in output units x 2**shift like gamma.
    beta = np.round(bias / s_out * 2.0**shift).astype(np.int64) if kind == "layernorm" else None
    eps_int = round(eps / s_res**2)
    y = nx.sat8(getattr(nx, kind)(x, gamma, shift, eps_int, beta))
    return y, ref_real / s_out, INT8, {"shift": shift, "eps": eps_int}


_GATES = {
    "silu": lambda t: 1.0 / (1.0 + np.exp(-t)),
    "gelu_tanh": lambda t: 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t**3))),
    "gelu_erf": lambda t: 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0))),
    "relu": lambda t: (t > 0).astype(np.float64),
}


def case_activation(rng, func, s_in, span=12.0):
    del rng  # an exhaustive sweep of every input code in [-span, span]
    lim = round(span / s_in)
    x = np.arange(-lim, lim + 1, dtype=np.int64)
    xr = x * s_in
    ref_real = xr * _GATES[func](xr)
    s_out = calibrate(ref_real)
    m1, s1 = qm(s_in * (1 << nx.ACT_FRAC_BITS))
    m2, s2 = qm(s_in / s_out)
    y = nx.sat8(nx.activation(x, func, m1, s1, m2, s2))
    return y, ref_real / s_out, INT8, {"m1": m1, "s1": s1, "m2": m2, "s2": s2}


def case_add(rng, s_a, s_b, s_out, std_a, std_b, out):
    size, bounds = 1 << 18, (INT8 if out == 8 else INT32)
    a, b = (np.clip(np.round(rng.normal(0.0, std, size) / s), *(INT8 if out == 8 else INT32))
            .astype(np.int64) for std, s in ((std_a, s_a), (std_b, s_b)))
    swap, m1, s1, m2, s2 = nx.add_multipliers(s_a / s_out, s_b / s_out)
    y = np.clip(nx.add(b, a, m1, s1, m2, s2) if swap else nx.add(a, b, m1, s1, m2, s2), *bounds)
    return y, (a * s_a + b * s_b) / s_out, bounds, {"swap": swap, "m1": m1, "s1": s1,
                                                    "m2": m2, "s2": s2}


def case_mul(rng, s_a, s_b, a_bits, b_bits, s1):
    size = 1 << 18
    a = np.round(rng.normal(0.0, 0.3, size) * (1 << (a_bits - 1))).astype(np.int64)
    b = np.round(rng.normal(0.0, 0.3, size) * (1 << (b_bits - 1))).astype(np.int64)
    a, b = (np.clip(v, -(1 << (k - 1)), (1 << (k - 1)) - 1) for v, k in ((a, a_bits), (b, b_bits)))
    ref_real = (a * s_a) * (b * s_b)
    s_out = calibrate(ref_real)
    m2, s2 = qm(s_a * s_b * 2.0**s1 / s_out)
    y = nx.sat8(nx.mul(a, b, s1, m2, s2))
    return y, ref_real / s_out, INT8, {"s1": s1, "m2": m2, "s2": s2}


def case_rope(rng, head_dim, interleaved, out):
    tokens, heads, s_in = 256, 4, 2.0**-10
    pos = np.concatenate([[0, 4095], rng.integers(0, 4096, tokens - 2)])
    x = np.round(rng.normal(0.0, 2.0, (tokens, heads * head_dim)) / s_in).astype(np.int64)
    cos, sin = nx.rope_table(pos, head_dim)
    inv = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    ang = pos[:, None, None] * inv[None, None, :]
    h = (x * s_in).reshape(tokens, heads, head_dim)
    a, b = (h[..., 0::2], h[..., 1::2]) if interleaved else np.split(h, 2, axis=-1)
    ya, yb = a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)
    ref_real = np.empty_like(h)
    if interleaved:
        ref_real[..., 0::2], ref_real[..., 1::2] = ya, yb
    else:
        ref_real = np.concatenate([ya, yb], axis=-1)
    ref_real = ref_real.reshape(tokens, -1)
    s_out = calibrate(ref_real) if out == 8 else s_in
    m1, s1 = qm(s_in / s_out)
    bounds = INT8 if out == 8 else INT32
    y = np.clip(nx.rope(x, cos, sin, m1, s1, group=head_dim, interleaved=interleaved), *bounds)
    return y, ref_real / s_out, bounds, {"m1": m1, "s1": s1}


def case_requantize(rng, wbits, out):
    k, c = 1024, 256
    xq = rng.integers(-127, 128, (64, k))
    wq = rng.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), (k, c))
    acc = xq @ wq
    s_x, s_w = 0.02, rng.lognormal(math.log(0.01), 0.5, c)  # per-output-channel weight scales
    ref_real = acc * (s_x * s_w)
    s_out = calibrate(ref_real) if out == 8 else 2.0**-10
    pairs = [qm(s_x * w / s_out) for w in s_w]
    mult, shift = (np.array(v) for v in zip(*pairs))
    y = nx.requantize(acc, mult, shift, out_bits=out)
    return y, ref_real / s_out, INT8 if out == 8 else INT32, {"shift_range": [int(shift.min()),
                                                                             int(shift.max())]}


FINE, COARSE = 2.0**-12, 2.0**-4
CASES = [
    *[("softmax", f"n={n}, logits N(0,{sg}), scale {lbl}",
       lambda r, n=n, sg=sg, sc=sc: case_softmax(r, n, sg, sc))
      for n in (16, 128, 1024, 2048) for sg, sc, lbl in ((1, FINE, "2^-12"), (3, FINE, "2^-12"))],
    ("softmax", "n=4096, logits N(0,3), scale 2^-12", lambda r: case_softmax(r, 4096, 3, FINE)),
    *[("softmax", f"n={n}, logits N(0,3), scale 2^-4",
       lambda r, n=n: case_softmax(r, n, 3, COARSE)) for n in (128, 2048)],
    ("softmax", "n=2048, causal, N(0,3) + spike 8",
     lambda r: case_softmax(r, 2048, 3, FINE, causal=True, spike=8.0)),
    *[("softmax_deferred", f"n={n}, logits N(0,{sg}), scale 2^-12",
       lambda r, n=n, sg=sg: case_softmax_deferred(r, n, sg, FINE))
      for n in (128, 1024, 2048, 4096) for sg in (1, 3)],
    *[(kind, f"n={n}, {'outliers' if o else 'no outliers'}",
       lambda r, kind=kind, n=n, o=o: case_norm(r, kind, n, o))
      for kind in ("rmsnorm", "layernorm") for n in (64, 576, 4096) for o in (False, True)],
    *[(f, f"x in [-12,12], scale {lbl}", lambda r, f=f, s=s: case_activation(r, f, s))
      for f in ("silu", "gelu_tanh", "gelu_erf", "relu")
      for s, lbl in ((2.0**-10, "2^-10"), (12 / 127, "12/127 (INT8)"))],
    ("add", "INT8 + INT8 -> INT8 (0.05, 0.03 -> 0.08)",
     lambda r: case_add(r, 0.05, 0.03, 0.08, 2.0, 1.0, 8)),
    ("add", "residual (2^-10) + matmul out (1.2e-4) -> INT32",
     lambda r: case_add(r, 2.0**-10, 1.2e-4, 2.0**-10, 4.0, 1.0, 32)),
    ("add", "same, matmul out 100x larger (outlier)",
     lambda r: case_add(r, 2.0**-10, 1.2e-4, 2.0**-10, 4.0, 100.0, 32)),
    ("mul", "INT8 x INT8 -> INT8 (SwiGLU)", lambda r: case_mul(r, 12 / 127, 0.05, 8, 8, 0)),
    ("mul", "INT18 x INT18, s1=16 -> INT8", lambda r: case_mul(r, 2.0**-12, 2.0**-12, 18, 18, 16)),
    *[("rope", f"d={d}, {'interleaved' if il else 'half-split'}, pos<4096, -> INT{o}",
       lambda r, d=d, il=il, o=o: case_rope(r, d, il, o))
      for d, il in ((64, True), (128, False)) for o in (8, 32)],
    *[("requantize", f"INT8 x INT{wb} acc (k=1024), per-channel -> INT{o}",
       lambda r, wb=wb, o=o: case_requantize(r, wb, o)) for wb, o in ((4, 8), (8, 8), (4, 32))],
]


def multiplier_error(rng, count=100_000) -> dict:
    """Worst relative error of quantize_multiplier over log-uniform reals in [2**-40, 2**14)."""
    reals = 2.0 ** rng.uniform(-40, 14, count) * rng.choice([-1.0, 1.0], count)
    rel = [abs(m / 2.0**s - r) / abs(r) for r in reals for m, s in [qm(float(r))]]
    return {"max_rel": max(rel), "bound": 2.0**-15, "samples": count}


# --------------------------------------------------------------------------- report
def table(results: list[dict], qmult: dict) -> str:
    lines = ["| Function | Case | Max abs (LSB) | Mean abs (LSB) | Max off | Exact | Rel. RMS |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["max_off"] is None:
            continue
        lines.append(f"| {r['function']} | {r['case']} | {r['max_lsb']:.3f} | "
                     f"{r['mean_lsb']:.4f} | {r['max_off']} | {100 * r['exact']:.1f}% | "
                     f"{r['rel_rms']:.2e} |")
    lines += ["", "Softmax probability mass kept per row (sum of outputs x 2^-7; the last column",
              "is the correctly rounded float64 softmax):", "",
              "| Case | Mean mass | Min mass | Mean mass, rounded reference |",
              "|---|---:|---:|---:|"]
    for r in results:
        if r["function"] == "softmax":
            p = r["params"]
            lines.append(f"| {r['case']} | {p['mass_mean']:.3f} | {p['mass_min']:.3f} | "
                         f"{p['mass_ideal_mean']:.3f} |")
    lines += ["", "Deferred softmax (`defer`): the effective probabilities q * R / 2^37 that the",
              "row-scalar MUL applies after P.V, against float64, in 2^-7 LSBs, and the mass "
              "they keep:", "",
              "| Case | Max abs (LSB) | Mean abs (LSB) | Mean mass | Min mass |",
              "|---|---:|---:|---:|---:|"]
    for r in results:
        if r["function"] == "softmax_deferred":
            p = r["params"]
            lines.append(f"| {r['case']} | {r['max_lsb']:.3f} | {r['mean_lsb']:.4f} | "
                         f"{p['mass_mean']:.4f} | {p['mass_min']:.4f} |")
    lines += ["", f"quantize_multiplier: largest relative error {qmult['max_rel']:.3e} over "
              f"{qmult['samples']:,} log-uniform",
              f"reals in [2^-40, 2^14) (bound 2^-15 = {qmult['bound']:.3e})."]
    return "\n".join(lines)


def rewrite_doc(text_table: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: markers {BEGIN} / {END} not found")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    note = ("<!-- generated by bench/numerics_error.py; do not edit by hand -->\n")
    DOC.write_text(f"{head}{BEGIN}\n{note}\n{text_table}\n\n{END}{tail}")


def main() -> None:
    start = time.perf_counter()
    results = []
    for i, (func, label, run) in enumerate(CASES):
        rng = np.random.default_rng([SEED, i])  # each case independent of the others' draws
        y, ref, bounds, params = run(rng)
        if y is None:  # a case that measures itself (deferred softmax: no integer output)
            stats = {k: params.pop(k) for k in ("max_lsb", "mean_lsb", "outputs")}
            stats.update(max_off=None, exact=None, rel_rms=None)
        else:
            stats = measure(y, ref, bounds)
        results.append({"function": func, "case": label, **stats, "params": params})
        print(f"{func:10s} {label:45s} max {results[-1]['max_lsb']:7.3f} LSB  "
              f"mean {results[-1]['mean_lsb']:.4f}")
    qmult = multiplier_error(np.random.default_rng([SEED, len(CASES)]))
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    report = {"seed": SEED, "cases": results, "quantize_multiplier": qmult}
    OUT_JSON.write_text(json.dumps(report, indent=1) + "\n")
    rewrite_doc(table(results, qmult))
    print(f"quantize_multiplier max relative error {qmult['max_rel']:.3e} (bound 2^-15)")
    print(f"wrote {OUT_JSON.relative_to(ROOT)} and {DOC.relative_to(ROOT)} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
