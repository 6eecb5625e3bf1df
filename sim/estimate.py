"""``flightllm estimate``: modelled latency, tokens/s and utilisation of a model on a board.

The source is a build directory (its own programs and placements), or a model (a preset, a
``config.json`` or an ``.onnx`` export) whose programs are lowered from shapes alone
(sim/shape_programs.py), so a 7B model needs no quantisation. Each figure is one run of the
performance model (sim/perf.py) per program call: prefill in chunks as the host feeds it
(host/session.py), decode one token at the given KV length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from flightllm.cliutil import parse_ids
from flightllm.contract.config import AcceleratorConfig, load_config
from flightllm.sim.hbm_model import HBMParams
from flightllm.sim.perf import PerfModel, PerfResult, SparsityMap

__all__ = ["estimate_command", "board_setup", "Target", "load_target", "estimate",
           "step_cycles", "PREFILL_LENGTHS", "DECODE_KV"]

PREFILL_LENGTHS = (128, 512)
DECODE_KV = (128, 512, 1024, 2048)


def board_setup(board: str, arch: str | None = None) -> tuple[AcceleratorConfig, HBMParams]:
    """The accelerator configuration and HBM facts of a board (a bundled name or a board YAML
    file; ``--arch`` overrides the board's default configuration)."""
    from flightllm.boards.registry import load_board
    target = load_board(board)
    config = load_config(arch) if arch else target.config()
    return config, hbm_params(target)


def hbm_params(board) -> HBMParams:
    """Measured HBM figures where we have them (sim/hbm_model.py), else the board file's peak
    with the U280's measured sustained fraction and latencies (an assumption, said so in
    docs/performance.md)."""
    try:
        return HBMParams.for_board(board.name)
    except ValueError:
        pass
    kind, banks = board.memory
    ref = HBMParams.for_board("u280")
    return HBMParams(board.name, pseudo_channels=banks.count,
                     pc_peak_gbps=banks.bandwidth_gbps / banks.count,
                     sustained_fraction=ref.sustained_fraction, latency_ns=ref.latency_ns,
                     row_gap_ns=ref.row_gap_ns)


@dataclass
class Target:
    """Programs to time and what they came from."""

    name: str
    config: AcceleratorConfig
    prefill: bytes
    decode: bytes
    chunk: int
    max_len: int
    sparsity: SparsityMap
    weight_bytes: int | None
    avg_weight_bits: float | None
    build: bool


def load_target(source: str, config: AcceleratorConfig, *, weight_bits: int = 4,
                avg_bits: float | None = None, sparsity: str | None = None,
                max_len: int = 2048, cache_dir: Path | None | str = "default",
                mlp_hidden_digits: int = 2) -> Target:
    """A build directory as it is, or a model lowered from its shapes for ``config`` (cached
    in ``cache_dir``: ``"default"`` is sim/shape_programs.py's DEFAULT_CACHE, None none)."""
    path = Path(source)
    if (path / "manifest.json").is_file():
        from flightllm.host.build import load_build
        b = load_build(path)
        recipe = b.manifest["model"]["recipe"]
        report = json.loads((path / "report.json").read_text()) \
            if (path / "report.json").is_file() else {}
        return Target(str(path), b.config, b.program("prefill"), b.program("decode"),
                      b.io["chunk"], b.max_len,
                      SparsityMap.from_placements(b.manifest["tensors"], recipe["sparsity"]),
                      report.get("weight_bytes"), report.get("avg_weight_bits"), build=True)
    from flightllm.compiler.qmodel import QuantRecipe
    from flightllm.compiler.sources import load_model, parse_sparsity
    from flightllm.sim.shape_programs import DEFAULT_CACHE, bits_for_average, shape_programs
    model = load_model(source, weights="none").config
    recipe = QuantRecipe(weight_bits=weight_bits, sparsity=parse_sparsity(sparsity),
                         split_hidden=mlp_hidden_digits == 2)
    if avg_bits is not None:
        try:
            recipe.bits_by_name = bits_for_average(model, avg_bits, recipe.sparsity)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--avg-bits") from None
    length = min(max_len, model.max_positions or max_len) // 16 * 16
    cache = DEFAULT_CACHE if cache_dir == "default" else cache_dir
    progs = shape_programs(model, config, recipe, length, cache_dir=cache)
    return Target(model.name, config, progs.prefill, progs.decode, progs.chunk, length,
                  SparsityMap.from_placements(progs.tensors, recipe.sparsity),
                  progs.weight_bytes, progs.avg_weight_bits, build=False)


def _prefill(model: PerfModel, target: Target, length: int) -> list[PerfResult]:
    """The prefill calls of a ``length``-token prompt, as the host makes them."""
    return [model.run(target.prefill, seq=min(target.chunk, length - pos),
                      kv=pos + min(target.chunk, length - pos), pos=pos)
            for pos in range(0, length, target.chunk)]


def _summary(results: list[PerfResult], hbm: HBMParams, cfg: AcceleratorConfig,
             chains: int) -> dict:
    cycles = sum(r.cycles for r in results)
    seconds = cycles / (cfg.clock_mhz * 1e6)
    nbytes = sum(r.hbm_bytes for r in results)
    ideal = sum(r.ideal_mpe_cycles for r in results)
    unit, frac = max((r.binding_unit() for r in results), key=lambda x: x[1])
    chains *= cfg.cores
    work = sum(r.chain_work for r in results)
    return {"cycles": cycles, "ms": 1e3 * seconds, "hbm_bytes": nbytes,
            "chain_occupancy": work / (chains * cycles) if cycles else 0.0,
            "mpe_balanced_ms": 1e3 * work / chains / (cfg.clock_mhz * 1e6),
            "hbm_gbps": nbytes / seconds / 1e9 if seconds else 0.0,
            "hbm_utilization": nbytes / (seconds * hbm.board_peak_gbps * 1e9) if seconds else 0,
            "mpe_utilization": ideal / (cycles * cfg.cores) if cycles else 0.0,
            "macs_dense": sum(r.macs_dense for r in results),
            "binding_unit": unit, "binding_busy_fraction": frac}


def estimate(target: Target, hbm: HBMParams, model: PerfModel | None = None) -> dict:
    """Prefill latency, decode tokens/s and utilisation (the ``--json`` document)."""
    cfg = target.config
    model = model or PerfModel(cfg, hbm, sparsity=target.sparsity)
    out = {"model": target.name, "config": cfg.name, "board": hbm.name,
           "clock_mhz": cfg.clock_mhz, "cores": cfg.cores, "max_len": target.max_len,
           "prefill_chunk": target.chunk, "hbm_peak_gbps": hbm.board_peak_gbps,
           "weight_bytes": target.weight_bytes, "avg_weight_bits": target.avg_weight_bits,
           "decode_tokens_per_s": {}, "decode_ms": {}, "prefill_ms": {},
           "prefill_dsp_bound_ms": {},
           "hbm_utilization": {"decode": {}, "prefill": {}},
           "mpe_utilization": {"decode": {}, "prefill": {}},
           "binding_unit": {"decode": {}, "prefill": {}}, "detail": {"decode": {}, "prefill": {}}}
    peak_macs = cfg.mm_macs_per_cycle * cfg.clock_mhz * 1e6
    chains = model.timing.chains or cfg.mv_rows
    for length in PREFILL_LENGTHS:
        if length > target.max_len:
            continue
        s = _summary(_prefill(model, target, length), hbm, cfg, chains)
        key = str(length)
        out["prefill_ms"][key] = s["ms"]
        out["prefill_dsp_bound_ms"][key] = 1e3 * s["macs_dense"] / peak_macs
        _record(out, "prefill", key, s)
    for kv in DECODE_KV:
        if kv > target.max_len:
            continue
        s = _summary([model.run(target.decode, seq=1, kv=kv, pos=kv - 1)], hbm, cfg, chains)
        key = str(kv)
        out["decode_tokens_per_s"][key] = 1e3 / s["ms"]
        out["decode_ms"][key] = s["ms"]
        _record(out, "decode", key, s)
    return out


def _record(out: dict, phase: str, key: str, s: dict) -> None:
    out["hbm_utilization"][phase][key] = s["hbm_utilization"]
    out["mpe_utilization"][phase][key] = s["mpe_utilization"]
    out["binding_unit"][phase][key] = s["binding_unit"]
    out["detail"][phase][key] = s


def step_cycles(target: Target, model: PerfModel, prompt_len: int,
                decode_steps: int) -> list[dict]:
    """Cycles of every call ``flightllm simulate`` makes: prefill chunks, then decode steps."""
    if prompt_len + decode_steps > target.max_len:
        raise click.BadParameter(f"{prompt_len} prompt tokens + {decode_steps} decode steps "
                                 f"exceed the build's max_len {target.max_len}")
    steps = []
    for pos in range(0, prompt_len, target.chunk):
        seq = min(target.chunk, prompt_len - pos)
        steps.append({"phase": "prefill", "seq": seq, "kv": pos + seq, "pos": pos})
    for i in range(decode_steps):
        pos = prompt_len + i
        steps.append({"phase": "decode", "seq": 1, "kv": pos + 1, "pos": pos})
    for step in steps:
        program = target.prefill if step["phase"] == "prefill" else target.decode
        step["cycles"] = model.run(program, seq=step["seq"], kv=step["kv"],
                                   pos=step["pos"]).cycles
    return steps


def _text(out: dict) -> str:
    lines = [f"{out['model']} on {out['board']} ({out['config']}, {out['cores']} cores, "
             f"{out['clock_mhz']:g} MHz, HBM {out['hbm_peak_gbps']:.0f} GB/s)"]
    if out["avg_weight_bits"]:
        lines.append(f"weights: {out['weight_bytes'] / 2**30:.2f} GiB at "
                     f"{out['avg_weight_bits']:.2f} bits")
    for key, ms in out["prefill_ms"].items():
        lines.append(f"prefill {key:>5} tokens: {ms:10.1f} ms (DSP-bound "
                     f"{out['prefill_dsp_bound_ms'][key]:.1f} ms), HBM "
                     f"{100 * out['hbm_utilization']['prefill'][key]:.0f}%, MPE "
                     f"{100 * out['mpe_utilization']['prefill'][key]:.0f}%, bound by "
                     f"{out['binding_unit']['prefill'][key]}")
    for key, tps in out["decode_tokens_per_s"].items():
        lines.append(f"decode at KV {key:>5}: {tps:8.1f} tokens/s, HBM "
                     f"{100 * out['hbm_utilization']['decode'][key]:.0f}%, MPE "
                     f"{100 * out['mpe_utilization']['decode'][key]:.0f}%, bound by "
                     f"{out['binding_unit']['decode'][key]}")
    skipped = [n for n in (*PREFILL_LENGTHS, *DECODE_KV) if n > out["max_len"]]
    if skipped:
        lines.append(f"(lengths {sorted(set(skipped))} are beyond the programs' max_len "
                     f"{out['max_len']}: no figures for them)")
    for step in out.get("steps", ()):
        lines.append(f"{step['phase']:8} seq {step['seq']:4} kv {step['kv']:5}: "
                     f"{step['cycles']} cycles")
    return "\n".join(lines)


@click.command("estimate")
@click.argument("source")
@click.option("--board", required=True, help="Target board: u280 or vhk158.")
@click.option("--arch", default=None,
              help="Accelerator configuration (preset or YAML/JSON) instead of the board's.")
@click.option("--weight-bits", type=click.Choice(["2", "4", "8"]), default="4",
              show_default=True, help="Weight width of every projection (models only).")
@click.option("--avg-bits", type=float, default=None,
              help="Mixed widths with at most this stored average (models only; bytes-based).")
@click.option("--sparsity", default=None, help="N:16 recipe as for compile (models only).")
@click.option("--mlp-hidden-digits", type=click.Choice(["1", "2"]), default="2",
              show_default=True,
              help="INT8 digits of a gated MLP's hidden, as for compile (models only): 2 runs "
                   "prefill's down projection once per digit, decode's once for both.")
@click.option("--max-len", type=int, default=2048, show_default=True,
              help="Longest sequence the programs serve (models only).")
@click.option("--input-ids", default=None,
              help="With a build: the prompt of a simulate run; adds per-step cycles.")
@click.option("--decode-steps", type=int, default=0, show_default=True,
              help="With --input-ids: decode steps after the prefill.")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), default=None,
              help="Write a Chrome/Perfetto trace of one decode step (KV 512 or the longest).")
@click.option("--roofline", "roofline_path", type=click.Path(path_type=Path), default=None,
              help="Write a roofline plot (.svg always; .png needs matplotlib).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where programs lowered from shapes are kept (default: "
                   "~/.cache/flightllm/shape_programs or $FLIGHTLLM_CACHE).")
@click.option("--no-cache", is_flag=True, help="Lower again; keep nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def estimate_command(source, board, arch, weight_bits, avg_bits, sparsity, mlp_hidden_digits,
                     max_len, input_ids, decode_steps, trace_path, roofline_path, cache_dir,
                     no_cache, as_json):
    """Model SOURCE (a build directory, a preset, a config.json or an .onnx file) on BOARD:
    prefill latency, decode tokens/s, HBM and matrix-engine utilisation."""
    from flightllm.cliutil import user_errors as _user_errors
    cache = None if no_cache else (cache_dir or "default")
    _user_errors(_run)(source, board, arch, int(weight_bits), avg_bits, sparsity,
                       int(mlp_hidden_digits), max_len, input_ids, decode_steps, trace_path,
                       roofline_path, cache, as_json)


def _run(source, board, arch, weight_bits, avg_bits, sparsity, hidden_digits, max_len,
         input_ids, decode_steps, trace_path, roofline_path, cache, as_json):
    if decode_steps < 0:
        raise click.BadParameter("must be >= 0", param_hint="--decode-steps")
    if max_len < 16:
        raise click.BadParameter("must be >= 16", param_hint="--max-len")
    if input_ids is not None and not (Path(source) / "manifest.json").is_file():
        raise click.UsageError("--input-ids needs a build directory (flightllm compile)")
    if decode_steps and input_ids is None:
        raise click.UsageError("--decode-steps needs --input-ids")
    config, hbm = board_setup(board, arch)
    target = load_target(source, config, weight_bits=weight_bits, avg_bits=avg_bits,
                         sparsity=sparsity, max_len=max_len, cache_dir=cache,
                         mlp_hidden_digits=hidden_digits)
    model = PerfModel(target.config, hbm, sparsity=target.sparsity)
    out = estimate(target, hbm, model)
    if input_ids is not None:
        out["steps"] = step_cycles(target, model, len(parse_ids(input_ids, "--input-ids")), decode_steps)
        out["cycles"] = [s["cycles"] for s in out["steps"]]
    if trace_path is not None:
        from flightllm.sim.trace import write_chrome_trace
        kv = max((k for k in DECODE_KV if k <= target.max_len), default=target.max_len)
        kv = 512 if target.max_len >= 512 else kv
        result = model.run(target.decode, seq=1, kv=kv, trace=True)
        write_chrome_trace(result, trace_path, title=f"{target.name} decode KV {kv}")
    if roofline_path is not None:
        from flightllm.sim.trace import write_roofline
        message = write_roofline(out, target.config, hbm, roofline_path)
        if message:
            click.echo(message, err=True)
    click.echo(json.dumps(out, indent=1) if as_json else _text(out))
