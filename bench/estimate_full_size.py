"""Modelled performance of full-size models, beside FlightLLM's published figures.

For each (model, board) pair: programs lowered from shapes (no quantisation) at ``--max-len``
2048 and 4-bit weights with group multipliers (4.25 stored bits per weight), timed by the
performance model: prefill 128 / 512 tokens, decode at KV 128 / 512 / 1024 / 2048, HBM and
matrix-engine utilisation, the binding unit, and the goals of issue 7 checked. Also the bounds
that explain the figures: decode at the AXI ports' and at the DRAM's sustained bandwidth, and
the matrix engine's time if every DSP chain had work; and the road to the goals (ROADMAP): the
same figures after each of a series of changes to the datapath, config changes lowered again,
the rest what-ifs of the model. Writes
``bench/results/estimate_<model>_<board>.json`` and a roofline,
``bench/results/roofline_<model>_<board>.svg`` and ``.png`` (the PNG needs matplotlib, in the
``bench`` extra).

    python bench/estimate_full_size.py [--only llama2-7b:u280] [--max-len 2048]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from flightllm.sim.estimate import board_setup, estimate, load_target
from flightllm.sim.trace import write_roofline

RESULTS = Path(__file__).resolve().parent / "results"

PAIRS = (("llama2-7b", "u280"), ("llama2-7b", "vhk158"), ("opt-6.7b", "u280"))

#: FlightLLM (Zeng et al., FPGA 2024) and its artefact; ../shared/reference/FLIGHTLLM.md.
FLIGHTLLM = {
    ("llama2-7b", "u280"): {"decode_tokens_per_s": {"128": 57.1, "512": 52.7},
                            "kind": "independent on-board run of the artefact (paper: ~55)"},
    ("llama2-7b", "vhk158"): {"decode_tokens_per_s": {"512": 102, "1024": 94, "2048": 82},
                              "decode_average_tokens_per_s": 92.5,
                              "prefill_ms": {"128": 290, "512": 1181},
                              "kind": "simulated by the artefact's model"},
}

#: Issue 7's goals for LLaMA2-7B at about 4 bits per weight.
GOALS = {
    ("llama2-7b", "u280"): {"decode_tokens_per_s_kv512": 100, "hbm_utilization_kv512": 0.80,
                            "prefill_128_within_dsp_bound_factor": 1.5},
    ("llama2-7b", "vhk158"): {"decode_tokens_per_s_kv512": 180},
}


def bounds(out: dict, config, hbm) -> dict:
    """Decode tokens/s if only the AXI ports, or only the DRAM, limited each token."""
    per_token = out["detail"]["decode"]["512"]["hbm_bytes"]
    axi = config.hbm_channels_total * min(config.axi_data_bits / 8 * config.clock_mhz * 1e6,
                                         hbm.pc_peak_gbps * hbm.sustained_fraction * 1e9)
    dram = hbm.board_peak_gbps * hbm.sustained_fraction * 1e9
    return {"hbm_bytes_per_token_kv512": per_token,
            "axi_ports_gbps": axi / 1e9, "decode_axi_bound_tokens_per_s_kv512": axi / per_token,
            "dram_sustained_gbps": dram / 1e9,
            "decode_dram_bound_tokens_per_s_kv512": dram / per_token,
            "decode_mpe_all_chains_busy_tokens_per_s_kv512":
                1e3 / out["detail"]["decode"]["512"]["mpe_balanced_ms"]}


#: The road to the goals: each step adds one change to the ones before it, in the order the
#: binding unit asks for them. Config changes are lowered again (the compiler sizes its weight
#: chunks by the chains and the WBUF) and built by the RTL (four WBUF read ports and four LD
#: lanes since stop 21, two dequantiser words per cycle since stop 22); timing changes are
#: what-ifs of the model (``UnitTiming.ld_lanes`` beyond four, ``segment_overhead``/
#: ``segment_issue``), not hardware that exists. (MM's weights read once per four token pairs
#: was a what-if here until the presets got ``mm_pair_group = 4``.)
ROADMAP = (
    ("as built", {}, {}),
    ("dequantisers take two words per cycle", {"dequant_words": 2}, {}),
    ("WBUF: four read ports", {"wbuf_read_ports": 4}, {}),
    ("LD: four lanes", {"ld_lanes": 4}, {}),
    ("32 chains per core, WBUF rows of 128 B, 4 MiB",
     {"mv_rows": 32, "wbuf_row": 128, "wbuf_mib": 4}, {}),
    ("LD: a lane and a WBUF bank per channel", {}, {"ld_lanes": 16}),
    ("every pseudo-channel of the board", {"hbm_channels_per_core": "all"}, {}),
    ("no per-segment LD/ST overhead", {}, {"segment_overhead": 0, "segment_issue": 1}),
)


def _variant(cfg, change: dict, hbm):
    from flightllm.contract.config import BufferSpec
    change = dict(change)
    if change.get("hbm_channels_per_core") == "all":
        change["hbm_channels_per_core"] = hbm.pseudo_channels // cfg.cores
    width = change.pop("wbuf_row", cfg.wbuf.width)
    nbytes = change.pop("wbuf_mib", None)
    nbytes = nbytes * 2**20 if nbytes else cfg.wbuf.bytes
    return cfg.replace(wbuf=BufferSpec(width, nbytes // width), **change)


def _lut_percent(cfg, board: str) -> float:
    """Estimated LUTs of ``cfg`` as a percentage of those the board's shell leaves free (as
    ``flightllm compile --board`` checks the fit)."""
    from flightllm.boards.fit import estimate_usage
    from flightllm.boards.registry import load_board
    b = load_board(board)
    free = b.resources["lut"] - b.shell.get("lut", 0)
    return 100.0 * estimate_usage(b, cfg)["lut"] / free


def roadmap(model_name: str, config, hbm, *, weight_bits: int, max_len: int,
            board: str) -> list[dict]:
    """Decode at KV 512 and prefill of 128 tokens after each step of :data:`ROADMAP`, with
    the unit that binds, the chains' occupancy and, for the first step and each config step,
    the share of the board's free LUTs the configuration needs."""
    from flightllm.sim.estimate import _prefill, _summary
    from flightllm.sim.perf import PerfModel
    from flightllm.sim.perf_units import UnitTiming
    cfg, timing, target, rows = config, {}, None, []
    for name, change, what_if in ROADMAP:
        if change or target is None:
            cfg = _variant(cfg, change, hbm)
            target = load_target(model_name, cfg, weight_bits=weight_bits, max_len=max_len)
        timing.update(what_if)
        model = PerfModel(cfg, hbm, timing=UnitTiming(**timing), sparsity=target.sparsity)
        r = model.run(target.decode, seq=1, kv=512, pos=511)
        pre = _summary(_prefill(model, target, 128), hbm, cfg, cfg.mv_rows)
        dsp_bound_ms = 1e3 * pre["macs_dense"] / (cfg.mm_macs_per_cycle * cfg.clock_mhz * 1e6)
        unit, frac = r.binding_unit()
        # What a config step costs (the board's fit, cached or bundled synthesis results
        # where the unit's design has one, counted otherwise); what-ifs have no hardware.
        lut = _lut_percent(cfg, board) if change or not rows else None
        rows.append({"step": name, "lut_percent_of_free": lut, "config_change": change,
                     "timing_what_if": what_if,
                     "decode_tokens_per_s_kv512": 1 / r.seconds,
                     "hbm_utilization_kv512": r.hbm_utilization(hbm),
                     "decode_binding_unit": unit, "decode_binding_busy_fraction": frac,
                     "decode_busy_fraction_core0": {k: v / r.cycles
                                                    for k, v in r.busy[0].items()},
                     "chain_occupancy_kv512": r.chain_work / (cfg.mv_rows * cfg.cores
                                                              * r.cycles),
                     "prefill_128_ms": pre["ms"], "prefill_128_dsp_bound_ms": dsp_bound_ms,
                     "prefill_binding_unit": pre["binding_unit"]})
    return rows


def check_goals(key, out: dict) -> dict:
    goals = GOALS.get(key, {})
    met = {}
    if "decode_tokens_per_s_kv512" in goals:
        value = out["decode_tokens_per_s"]["512"]
        met["decode_tokens_per_s_kv512"] = {"goal": goals["decode_tokens_per_s_kv512"],
                                            "value": value,
                                            "met": value >= goals["decode_tokens_per_s_kv512"]}
    if "hbm_utilization_kv512" in goals:
        value = out["hbm_utilization"]["decode"]["512"]
        met["hbm_utilization_kv512"] = {"goal": goals["hbm_utilization_kv512"], "value": value,
                                        "met": value >= goals["hbm_utilization_kv512"]}
    if "prefill_128_within_dsp_bound_factor" in goals:
        value = out["prefill_ms"]["128"] / out["prefill_dsp_bound_ms"]["128"]
        goal = goals["prefill_128_within_dsp_bound_factor"]
        met["prefill_128_over_dsp_bound"] = {"goal": goal, "value": value, "met": value <= goal}
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="model:board, e.g. llama2-7b:u280")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--weight-bits", type=int, default=4)
    ap.add_argument("--no-roadmap", action="store_true",
                    help="skip the road-to-the-goals study (lowers the model once per step)")
    args = ap.parse_args()
    pairs = [tuple(args.only.split(":"))] if args.only else PAIRS
    RESULTS.mkdir(exist_ok=True)
    for model_name, board in pairs:
        config, hbm = board_setup(board)
        t0 = time.perf_counter()
        target = load_target(model_name, config, weight_bits=args.weight_bits,
                             max_len=args.max_len)
        t1 = time.perf_counter()
        out = estimate(target, hbm)
        t2 = time.perf_counter()
        out["weight_bits"] = args.weight_bits
        out["bounds"] = bounds(out, config, hbm)
        out["goals"] = check_goals((model_name, board), out)
        if not args.no_roadmap:
            out["roadmap"] = roadmap(model_name, config, hbm, weight_bits=args.weight_bits,
                                     max_len=args.max_len, board=board)
        out["flightllm_reference"] = FLIGHTLLM.get((model_name, board))
        out["timing_seconds"] = {"lower_from_shapes": round(t1 - t0, 1),
                                 "model": round(t2 - t1, 1)}
        out["hbm_params"] = asdict(hbm)
        path = RESULTS / f"estimate_{model_name}_{board}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        write_roofline(out, config, hbm, RESULTS / f"roofline_{model_name}_{board}.svg")
        note = write_roofline(out, config, hbm, RESULTS / f"roofline_{model_name}_{board}.png")
        if note:
            print(note)
        print(f"{path.name}: decode KV 512 {out['decode_tokens_per_s']['512']:.1f} tokens/s "
              f"(HBM {100 * out['hbm_utilization']['decode']['512']:.0f}%, bound by "
              f"{out['binding_unit']['decode']['512']}), prefill 128 "
              f"{out['prefill_ms']['128']:.0f} ms (DSP bound "
              f"{out['prefill_dsp_bound_ms']['128']:.0f} ms); goals {out['goals']}")
        for row in out.get("roadmap", ()):
            print(f"  + {row['step']:42s} decode {row['decode_tokens_per_s_kv512']:6.1f} "
                  f"tokens/s (HBM {100 * row['hbm_utilization_kv512']:3.0f}%, "
                  f"{row['decode_binding_unit']}), prefill 128 {row['prefill_128_ms']:6.0f} ms "
                  f"({row['prefill_128_ms'] / row['prefill_128_dsp_bound_ms']:.2f}x DSP bound)"
                  + (f", LUT {row['lut_percent_of_free']:.1f}%" if row["lut_percent_of_free"]
                     else ""))


if __name__ == "__main__":
    main()
