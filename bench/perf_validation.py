"""Predicted against RTL cycles for every step of a tiny build: the performance model's check.

Compiles the bundled model for ``tiny`` (or takes ``--build``), runs a prompt and some decode
steps through the host session on the RTL kernel simulation (``flightllm.sim.rtl.run_kernel``
behind ``flightllm.host.devices.RtlDevice``), and times the same steps with the performance
model (sim/perf.py). Prints the table and writes ``bench/results/perf_validation.json``; the
issue's bar is agreement within 5 % on every step.

If the RTL kernel cannot run here (not built yet, no simulator, a failing run), the script says
so plainly, writes what it could not do, and exits with status 2: no table is made up.

    python bench/perf_validation.py [--build DIR] [--prompt-ids 1,2,3] [--decode-steps 4]
    python bench/perf_validation.py --pair-group 2 --prompt-ids 5,1,4,1,5,9,2,6,5,3,5

``--pair-group N`` builds ``tiny`` with ``mm_pair_group = N`` (MM weights read once per N token
pairs, as the full-size presets do with 4) and writes ``perf_validation_g<N>.json``;
``--wbuf-read-ports 2`` builds it with a second WBUF read port (as the full-size presets) and
writes ``perf_validation_r2.json`` (both: ``perf_validation_g<N>_r2.json``); ``--ld-lanes 2``
builds it with two LD lanes and a banked WBUF (with two read ports as well, as the full-size
presets: ``perf_validation_r2_l2.json``; ``--ld-lanes 4 --wbuf-read-ports 4 --chains 8``: four
lanes on four channels, four read ports, eight chains, ``perf_validation_r4_l4_c8.json``;
with ``--dequant-words 2`` as well, dequantisers of two words per cycle, ``..._c8_d2.json``);
``--wide-heads`` builds a synthetic model of
head-dim 32 instead, whose K/V caches are split over two channels (``..._wide.json``).
    python bench/perf_validation.py --build DIR --rtl-from bench/results/perf_validation.json

``--rtl-from`` takes the RTL cycles of an earlier run and only predicts again: the way to check
a recalibrated model without another RTL simulation. Builds are byte-identical across rebuilds,
and the programs' checksums recorded with the cycles must match. It also reads
``bench/results/rtl_cycles.json`` (bench/rtl_cycles.py: per model, per step the cycles and the
busy counters): each model listed there is compiled as that script does and every step is
predicted, with the model's per-unit busy cycles beside the RTL's counters.

    python bench/perf_validation.py --rtl-from bench/results/rtl_cycles.json

The RTL runs against the testbench's memories (cocotbext-axi ``AxiRam``, no stalls), not HBM, so
the check uses ``flightllm.sim.hbm_model.RTL_TESTBENCH``; the U280 figures are listed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.05
#: bench/rtl_cycles.py's builds: the same options give byte-identical programs.
RTL_CYCLES_OPTIONS = dict(max_len=32, chunk=8, calibration_sequences=1)
#: The model's units against the RTL's busy counters (MM and MV share the matrix engine).
BUSY = {"LD": ("ld",), "ST": ("st",), "MPE": ("mm", "mv"), "SFU": ("misc",), "SYS": ("sys",)}


def _rtl_cycles_table(path: Path) -> int:
    """Predict every step recorded by bench/rtl_cycles.py; print and write the table."""
    from flightllm.compiler.build import CompileOptions, compile_model
    from flightllm.compiler.frontend import load_onnx
    from flightllm.contract.config import preset
    from flightllm.host.build import load_build
    from flightllm.sim.hbm_model import RTL_TESTBENCH, HBMParams
    from flightllm.sim.perf import PerfModel, SparsityMap
    record = json.loads(path.read_text())
    cfg = preset(record["config"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for entry in record["models"]:
            out = Path(tmp) / entry["model"]
            compile_model(load_onnx(ROOT / "tests" / "models" / "onnx" / entry["model"]), cfg,
                          out, CompileOptions(**RTL_CYCLES_OPTIONS))
            build = load_build(out)
            sparsity = SparsityMap.from_placements(build.manifest["tensors"],
                                                   build.manifest["model"]["recipe"]["sparsity"])
            models = {"testbench": PerfModel(build.config, RTL_TESTBENCH, sparsity=sparsity),
                      "u280": PerfModel(build.config, HBMParams.for_board("u280"),
                                        sparsity=sparsity)}
            pos = 0
            for step in entry["steps"]:
                seq = step["tokens"]
                row = {"model": entry["model"], "phase": step["phase"], "seq": seq,
                       "kv": pos + seq, "pos": pos, "rtl_cycles": step["cycles"]}
                for name, model in models.items():
                    r = model.run(build.program(step["phase"]), seq=seq, kv=pos + seq, pos=pos)
                    row[f"predicted_{name}"] = r.cycles
                    row[f"ratio_{name}"] = r.cycles / step["cycles"]
                    if name == "testbench":
                        row["busy"] = {u: {"model": r.busy[0][u], "rtl": sum(
                            step["busy"].get(f"busy_c0_{k}", 0) for k in keys)}
                            for u, keys in BUSY.items()}
                rows.append(row)
                pos += seq
    print(f"{'model':24} {'phase':8} {'RTL':>7} {'testbench':>9} {'ratio':>6} "
          f"{'u280':>7} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:24} {r['phase']:8} {r['rtl_cycles']:7} {r['predicted_testbench']:9} "
              f"{r['ratio_testbench']:6.3f} {r['predicted_u280']:7} {r['ratio_u280']:6.3f}")
        print("    busy model/RTL: " + "  ".join(
            f"{u} {b['model']}/{b['rtl']}" for u, b in r["busy"].items() if b["rtl"] or b["model"]))
    worst = max(abs(r["ratio_testbench"] - 1) for r in rows)
    ok = worst <= TOLERANCE
    print(f"worst error {100 * worst:.1f}% (bar: {100 * TOLERANCE:.0f}%): "
          f"{'holds' if ok else 'does not hold'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "perf_validation.json").write_text(json.dumps(
        {"status": "holds" if ok else "does not hold", "worst_error": worst,
         "tolerance": TOLERANCE, "rtl_from": str(path), "memory": "rtl_testbench",
         "compile_options": RTL_CYCLES_OPTIONS, "steps": rows}, indent=1) + "\n")
    return 0 if ok else 1


def _variant_suffix(pair_group: int, read_ports: int, lanes: int = 1, chains: int = 4,
                    words: int = 1) -> str:
    """The result file's and configuration's suffix for a non-default tiny variant."""
    return (f"_g{pair_group}" if pair_group != 1 else "") + \
        (f"_r{read_ports}" if read_ports != 1 else "") + (f"_l{lanes}" if lanes != 1 else "") \
        + (f"_c{chains}" if chains != 4 else "") + (f"_d{words}" if words != 1 else "")


def _wide_heads_ir():
    """The synthetic head-dim-32 LLaMA (``compiler.presets.WIDE_HEADS``): its K/V caches are
    split over two channels, one per LD lane, and decode packs its two heads' P.V into one
    MM (docs/compiler.md)."""
    from flightllm.compiler.presets import WIDE_HEADS, build_ir
    return build_ir(WIDE_HEADS, "synthetic", seed=3)


def _build(path: Path | None, tmp: Path, pair_group: int = 1, read_ports: int = 1,
           lanes: int = 1, wide_heads: bool = False, chains: int = 4, words: int = 1):
    from flightllm.host.build import load_build
    if path is not None:
        return load_build(path)
    from flightllm.compiler.build import CompileOptions, compile_model
    from flightllm.compiler.frontend import load_onnx
    from flightllm.contract.config import preset
    from flightllm.default_model import default_model_path
    out = tmp / "tiny"
    cfg = preset("tiny")
    suffix = _variant_suffix(pair_group, read_ports, lanes, chains, words)
    if suffix:
        # A lane per channel at most: four lanes take four of the core's channels.
        cfg = cfg.replace(name="tiny" + suffix.replace("_", "-"), mm_pair_group=pair_group,
                          wbuf_read_ports=read_ports, ld_lanes=lanes, mv_rows=chains,
                          dequant_words=words,
                          hbm_channels_per_core=max(cfg.hbm_channels_per_core, lanes))
    ir = _wide_heads_ir() if wide_heads else load_onnx(default_model_path())
    compile_model(ir, cfg, out,
                  CompileOptions(max_len=64, weight_bits=4, calibration_sequences=1))
    return load_build(out)


def _checksums(build) -> dict:
    return {p["phase"]: p["sha256"] for p in build.manifest["programs"]}


def _rtl_steps(build, prompt: list[int], decode_steps: int) -> list[dict]:
    """Run the steps on the RTL simulation; each step's length registers and cycles."""
    from flightllm.host.devices import RtlDevice
    from flightllm.host.session import Session
    session = Session(build, RtlDevice(build.config), timeout_s=3600)
    for _ in session.generate(prompt, decode_steps):
        pass
    return [{"phase": c.phase, "seq": c.seq, "kv": c.kv, "pos": c.pos, "rtl_cycles": c.cycles,
             "rtl_busy": {u: sum(c.busy.get(f"c0_{k}", 0) for k in keys)
                          for u, keys in BUSY.items()}}
            for c in session.counters]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", type=Path, default=None)
    ap.add_argument("--prompt-ids", default="1,2,3,4,5")
    ap.add_argument("--decode-steps", type=int, default=4)
    ap.add_argument("--pair-group", type=int, default=1,
                    help="Build tiny with this mm_pair_group (results in "
                         "perf_validation_g<N>.json).")
    ap.add_argument("--wbuf-read-ports", type=int, default=1, choices=(1, 2, 4),
                    help="Build tiny with this many WBUF read ports (results in "
                         "perf_validation_r<N>.json).")
    ap.add_argument("--ld-lanes", type=int, default=1, choices=(1, 2, 4),
                    help="Build tiny with this many LD lanes, and at least as many HBM "
                         "channels (results in perf_validation_l<N>.json, or _r2_l2 with "
                         "--wbuf-read-ports 2).")
    ap.add_argument("--chains", type=int, default=4, choices=(4, 8),
                    help="Build tiny with this many DSP chains (results in "
                         "perf_validation..._c8.json).")
    ap.add_argument("--dequant-words", type=int, default=1, choices=(1, 2),
                    help="Build tiny with dequantisers of this many words per cycle (results "
                         "in perf_validation..._d2.json).")
    ap.add_argument("--wide-heads", action="store_true",
                    help="Build a synthetic model of head-dim 32 instead of the bundled one "
                         "(its K/V caches split over two channels; results in "
                         "perf_validation<suffix>_wide.json).")
    ap.add_argument("--rtl-from", type=Path, default=None,
                    help="Reuse the RTL cycles recorded in this result file.")
    args = ap.parse_args()
    if args.rtl_from is not None and "models" in json.loads(args.rtl_from.read_text()):
        return _rtl_cycles_table(args.rtl_from)
    prompt = [int(t) for t in args.prompt_ids.split(",")]
    RESULTS.mkdir(exist_ok=True)
    suffix = _variant_suffix(args.pair_group, args.wbuf_read_ports, args.ld_lanes,
                             args.chains, args.dequant_words) + (
        "_wide" if args.wide_heads else "")
    out_path = RESULTS / f"perf_validation{suffix}.json"
    from flightllm.sim.hbm_model import RTL_TESTBENCH, HBMParams
    from flightllm.sim.perf import PerfModel, SparsityMap
    with tempfile.TemporaryDirectory() as tmp:
        build = _build(args.build, Path(tmp), args.pair_group, args.wbuf_read_ports,
                       args.ld_lanes, args.wide_heads, args.chains, args.dequant_words)
        recipe = build.manifest["model"]["recipe"]
        sparsity = SparsityMap.from_placements(build.manifest["tensors"], recipe["sparsity"])
        # The RTL runs against the testbench's memories: the check is against the model of
        # those; the U280's HBM (latency, row gaps) is listed beside it.
        model = PerfModel(build.config, RTL_TESTBENCH, sparsity=sparsity)
        u280 = PerfModel(build.config, HBMParams.for_board("u280"), sparsity=sparsity)
        t0 = time.perf_counter()
        try:
            if args.rtl_from is not None:
                earlier = json.loads(args.rtl_from.read_text())
                if "programs" not in earlier:
                    print(f"{args.rtl_from} records no program checksums; assuming the same "
                          "(deterministic) build of the bundled model")
                elif earlier["programs"] != _checksums(build):
                    print(f"{args.rtl_from}: recorded for other programs; run the RTL again")
                    return 2
                steps = [{k: s[k] for k in ("phase", "seq", "kv", "pos", "rtl_cycles",
                                            "rtl_busy") if k in s}
                         for s in earlier["steps"]]
                rtl_seconds = earlier.get("rtl_seconds")
            else:
                steps = _rtl_steps(build, prompt, args.decode_steps)
                rtl_seconds = round(time.perf_counter() - t0, 1)
        except Exception as exc:  # whatever stops the RTL run is the report
            reason = f"{type(exc).__name__}: {exc}"
            out_path.write_text(json.dumps({"status": "no RTL run", "reason": reason},
                                           indent=1) + "\n")
            print(f"no validation table: the RTL kernel could not run these steps ({reason})")
            return 2
        programs = _checksums(build)
        for step in steps:
            program = build.program(step["phase"])
            r = model.run(program, seq=step["seq"], kv=step["kv"], pos=step["pos"])
            step["predicted_cycles"] = r.cycles
            step["predicted_busy"] = dict(r.busy[0])
            step["predicted_u280"] = u280.run(program, seq=step["seq"], kv=step["kv"],
                                              pos=step["pos"]).cycles
            rtl = step["rtl_cycles"]
            step["error"] = (step["predicted_cycles"] - rtl) / rtl if rtl else None
    print(f"{'phase':8} {'seq':>4} {'kv':>4} {'RTL cycles':>11} {'predicted':>10} {'error':>7} "
          f"{'U280 HBM':>9}")
    for s in steps:
        err = f"{100 * s['error']:+6.1f}%" if s["error"] is not None else "   n/a"
        print(f"{s['phase']:8} {s['seq']:4} {s['kv']:4} {s['rtl_cycles']:11} "
              f"{s['predicted_cycles']:10} {err} {s['predicted_u280']:9}")
        if "rtl_busy" in s:
            print("    busy model/RTL: " + "  ".join(
                f"{u} {s['predicted_busy'][u]}/{s['rtl_busy'][u]}" for u in BUSY
                if s["rtl_busy"][u] or s["predicted_busy"][u]))
    worst = max(abs(s["error"]) for s in steps if s["error"] is not None)
    ok = worst <= TOLERANCE
    print(f"worst error {100 * worst:.1f}% (bar: {100 * TOLERANCE:.0f}%): "
          f"{'holds' if ok else 'does not hold'}")
    out_path.write_text(json.dumps({"status": "holds" if ok else "does not hold",
                                    "worst_error": worst, "tolerance": TOLERANCE,
                                    "memory": "rtl_testbench", "rtl_seconds": rtl_seconds,
                                    "rtl_from": args.rtl_from.name if args.rtl_from else None,
                                    "programs": programs, "steps": steps},
                                   indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
