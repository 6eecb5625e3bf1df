"""``flightllm run``: generate tokens from a build on the golden, RTL or XRT device.

Tokens print as they come; then the tokens, the performance model's tokens/s for the build's
decode steps on the target board, and this host's own time per token (a simulation's time on a
simulated device).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from flightllm.cliutil import parse_ids, user_errors

__all__ = ["run_command"]


def _errors(fn):
    """Input, build, device and kernel errors: one line naming the problem, exit status 1."""
    from .generate import TokenizerError
    return user_errors(fn, extra=(TokenizerError,))


def open_device(kind: str, build, *, device_config: str | None, xclbin: Path | None):
    """The device named ``kind`` for ``build``. Its configuration is ``device_config`` (a
    preset or file) if given, else the build's own for the simulated devices; a board's
    must be stated, since only then can the runtime check the build against it."""
    from flightllm.contract.config import load_config
    from .devices import GoldenDevice, RtlDevice, XrtDevice
    cfg = load_config(device_config) if device_config else None
    if kind == "golden":
        return GoldenDevice(cfg or build.config)
    if kind == "rtl":
        return RtlDevice(cfg or build.config)
    if xclbin is None:
        raise click.UsageError("--device xrt needs --xclbin PATH")
    if cfg is None:
        raise click.UsageError("--device xrt needs --device-config: the configuration (preset "
                               "or YAML/JSON file) its bitstream was built for")
    return XrtDevice(xclbin, cfg)


def board_hbm(build, board: str | None):
    """The HBM figures of ``board`` for the performance model (default: the configuration's
    name when the model knows it as a board, else u280); None when the model is not here."""
    try:
        from flightllm.sim.hbm_model import HBMParams
    except ImportError:
        return None
    if board is None:
        try:
            return HBMParams.for_board(build.config.name)
        except ValueError:
            board = "u280"
    try:
        return HBMParams.for_board(board)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--board") from None


def modelled_decode(build, steps, hbm) -> dict | None:
    """The performance model's decode tokens/s on the board of ``hbm`` for the decode steps
    that ran (``steps``: StepCounters, at least one); None when the model is not installed."""
    try:
        from flightllm.sim.perf import PerfModel, SparsityMap
    except ImportError:
        return None
    sparsity = build.manifest["model"]["recipe"]["sparsity"]
    model = PerfModel(build.config, hbm=hbm,
                      sparsity=SparsityMap.from_placements(build.manifest["tensors"], sparsity))
    program = build.program("decode")
    seconds = [model.run(program, seq=s.seq, kv=s.kv, pos=s.pos).seconds for s in steps]
    return {"board": hbm.name, "decode_tokens_per_s": len(seconds) / sum(seconds),
            "kv": [s.kv for s in steps]}


@click.command("run")
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--prompt", default=None, help="Prompt text (needs the model's tokenizer).")
@click.option("--prompt-ids", default=None, help="Prompt token ids, comma-separated.")
@click.option("--device", "device_kind", type=click.Choice(["golden", "rtl", "xrt"]),
              default="golden", show_default=True, help="Where the kernel runs.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Stop after this many new tokens (also stops at EOS and max_len).")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample among the K best.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Sample among the best tokens whose probability reaches P.")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="Divide the logits by T before sampling (0: greedy).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--eos-id", type=int, default=None,
              help="Stop at this token (default: the model directory's eos_token_id).")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="tokenizer.json (or its directory); default: the build's, else the model's.")
@click.option("--device-config", default=None,
              help="Configuration the device's kernel is built for (preset or YAML/JSON file); "
                   "default for golden and rtl: the build's.")
@click.option("--xclbin", type=click.Path(path_type=Path), default=None,
              help="Bitstream for --device xrt.")
@click.option("--board", default=None,
              help="Board for the modelled tokens/s (default: the configuration's name if it "
                   "is a board, else u280).")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Seconds one kernel run may take.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (tokens, text, timings, model figures) at the end.")
@_errors
def run_command(build, prompt, prompt_ids, device_kind, max_new_tokens, top_k, top_p,
                temperature, seed, eos_id, tokenizer, device_config, xclbin, board, timeout_s,
                as_json):
    """Generate tokens from BUILD on a device: prefill the prompt, then decode with the KV cache
    (greedy unless --top-k/--top-p/--temperature)."""
    from .build import load_build
    from .generate import Generation, Sampler, TokenizerError, find_eos_id, find_tokenizer
    from .session import Session
    if (prompt is None) == (prompt_ids is None):
        raise click.UsageError("give exactly one of --prompt and --prompt-ids")
    b = load_build(build)
    tok = find_tokenizer(b, tokenizer)
    if prompt is not None:
        if tok is None:
            raise TokenizerError(f"{build}: no tokenizer.json in the build or its model's "
                                 "directory, so a text prompt cannot be encoded: give "
                                 "--tokenizer PATH or --prompt-ids")
        ids = tok.encode(prompt)
    else:
        ids = parse_ids(prompt_ids, "--prompt-ids")
    if tok is None and not as_json:
        click.echo("(no tokenizer for this model: printing token ids)", err=True)
    eos = eos_id if eos_id is not None else find_eos_id(b, tok)
    hbm = board_hbm(b, board)  # checked before generating, not after
    device = open_device(device_kind, b, device_config=device_config, xclbin=xclbin)
    session = Session(b, device, timeout_s=timeout_s)
    gen = Generation(session, ids, max_new_tokens,
                     Sampler(top_k=top_k, top_p=top_p, temperature=temperature, seed=seed),
                     eos_id=eos, tokenizer=tok)
    decode_seconds = []
    for item in gen:
        if item.index:
            decode_seconds.append(item.seconds)
        if not as_json:
            click.echo(item.text if tok is not None else f"{item.token} ", nl=False)
            sys.stdout.flush()
    decode_steps = [c for c in session.counters if c.phase == "decode"]
    model = modelled_decode(b, decode_steps, hbm) if decode_steps and hbm else None
    per_token = sum(decode_seconds) / len(decode_seconds) if decode_seconds else None
    result = {
        "device": device.name, "prompt_ids": ids, "tokens": gen.tokens,
        "text": tok.decode(gen.tokens) if tok is not None else None,
        "stop_reason": gen.stop_reason, "eos_id": eos,
        "host_prefill_seconds": gen.prefill_seconds,
        "host_seconds_per_token": per_token,
        "modelled": model,
        "cycles": [c.cycles for c in session.counters],
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo()
    click.echo(f"tokens: {','.join(map(str, gen.tokens))} (stopped: {gen.stop_reason})")
    if not decode_steps:
        click.echo("modelled: no decode step ran")
    elif model is None:
        click.echo("modelled: performance model not available")
    else:
        click.echo(f"modelled: {model['decode_tokens_per_s']:.1f} tokens/s decoding on "
                   f"{model['board']} "
                   f"({b.config.name} configuration, {len(decode_steps)} decode steps)")
    host = f"{1e3 * per_token:.1f} ms per token" if per_token is not None else "no decode step"
    click.echo(f"host: {host} on the {device.name} device, prefill "
               f"{1e3 * gen.prefill_seconds:.1f} ms")
