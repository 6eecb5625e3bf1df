"""The ``flightllm`` command line.

Each subcommand imports what it needs when it runs, so ``flightllm --help`` stays fast and a
subcommand's heavy dependencies never load for another. Errors that describe bad input (a bad
configuration, program, or file) print one line naming the problem and exit with status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from flightllm import __version__
from flightllm.cliutil import parse_ids, user_errors


_user_errors = user_errors


class _LazyGroup(click.Group):
    """A group some of whose commands live in modules imported only when one of them runs (the
    RTL tools import Amaranth; ``flightllm --help`` should not). Each area of the package owns
    its command's module; this file only names it."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module, attr = self.lazy[name].rsplit(":", 1)
        import importlib
        return getattr(importlib.import_module(module), attr)


#: Top-level commands defined in their own areas' modules.
LAZY_COMMANDS: dict[str, str] = {
    "boards": "flightllm.boards.cli:boards_command",
    "estimate": "flightllm.sim.estimate:estimate_command",
    "perplexity": "flightllm.compiler.perplexity:perplexity_command",
    "run": "flightllm.host.cli:run_command",
}


@click.group(cls=_LazyGroup, lazy=LAZY_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flightllm")
def main():
    """flightllm: compile transformer LLMs for FlightLLM-style FPGA accelerators, simulate
    them bit-exactly, and run them on Alveo and Versal boards."""


@main.command()
@click.argument("program", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--core", type=int, default=None, help="Only this core's stream.")
@click.option("--raw", is_flag=True,
              help="PROGRAM is bare little-endian 32-bit words (one stream), not a program file.")
@_user_errors
def disasm(program: Path, core: int | None, raw: bool):
    """Disassemble a binary PROGRAM file, one instruction per line with its word index."""
    from flightllm.contract.disasm import disassemble_program, disassemble_words
    from flightllm.contract.isa import decode_program_words
    data = program.read_bytes()
    if raw:
        if len(data) % 4:
            raise click.ClickException(f"{program}: {len(data)} bytes is not a whole number "
                                       "of 32-bit words")
        words = list(memoryview(data).cast("I"))
        lines = disassemble_words(words)
    elif core is not None:
        streams = decode_program_words(data)
        if not 0 <= core < len(streams):
            raise click.ClickException(f"--core {core}: the program has {len(streams)} cores")
        lines = disassemble_words(streams[core], core=core)
    else:
        lines = disassemble_program(data)
    click.echo("\n".join(lines))


@main.command("compile")
@click.argument("model", required=False)
@click.option("--board", default=None,
              help="Target card (flightllm boards lists them) or a board YAML file: also "
                   "generate the kernel's Verilog and the Vitis/Vivado project, after checking "
                   "that the configuration fits.")
@click.option("--arch", default=None,
              help="Accelerator configuration: a preset (tiny, u280, vhk158) or a YAML/JSON "
                   "file. Default: the board's, or tiny without --board.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Build directory to write (replaced atomically if it exists).")
@click.option("--weight-bits", type=click.Choice(["2", "4", "8"]), default="8",
              show_default=True, help="Weight bit width of every projection.")
@click.option("--avg-bits", type=float, default=None,
              help="Mixed precision: choose 2/4/8 bits per matrix so the stored average "
                   "(metadata included) is at most this, by calibrated sensitivity.")
@click.option("--sparsity", default=None,
              help="N:16 sparsity: N for every projection, 'q=8,k=8,...', or a YAML recipe.")
@click.option("--attn-sparsity", default=None, metavar="sink=S,band=B",
              help="Block-sparse prefill attention: the first S blocks plus a band of B blocks "
                   "(blocks of the configuration's attn_block tokens); 'dense' or omitted: dense.")
@click.option("--mlp-hidden-digits", type=click.Choice(["1", "2"]), default="2",
              show_default=True,
              help="INT8 digits of a gated MLP's hidden: 2 carries ~15 bits (prefill runs the "
                   "down projection once per digit, decode once for both, summing them); 1 "
                   "splits nothing: slightly faster, less accurate.")
@click.option("--max-len", type=int, default=128, show_default=True,
              help="Longest sequence (prompt plus generated tokens) the build serves.")
@click.option("--chunk", type=int, default=None,
              help="Tokens per prefill call (default: the most the buffers hold, up to 64).")
@click.option("--weights", type=click.Choice(["synthetic", "none"]), default="synthetic",
              show_default=True, help="For presets and config.json: seeded random weights.")
@click.option("--smooth", "smooth_alpha", type=float, default=None,
              help="SmoothQuant migration strength alpha (off by default).")
@click.option("--calibration-seqs", type=int, default=8, show_default=True,
              help="Random calibration sequences of 64 tokens.")
@click.option("--dump-dir", type=click.Path(path_type=Path), default=None,
              help="Write every pipeline step's result and time here.")
@_user_errors
def compile_cmd(model, board, arch, out, weight_bits, avg_bits, sparsity, attn_sparsity,
                mlp_hidden_digits, max_len, chunk, weights, smooth_alpha, calibration_seqs,
                dump_dir):
    """Compile MODEL (an .onnx file, a config.json, or a preset) into a build directory.

    Without MODEL, the small LLaMA export bundled with flightllm is compiled. With --board,
    the build also holds the kernel's Verilog and the vendor project that builds the
    bitstream (project/), and report.md.
    """
    from flightllm.compiler.build import CompileOptions, compile_model
    from flightllm.compiler.sources import load_model, parse_attn_sparsity, parse_sparsity
    from flightllm.contract.config import load_config
    if model is None:
        from flightllm.default_model import default_model_path
        model = str(default_model_path())
        click.echo(f"no model given: compiling the bundled tiny LLaMA export ({model})")
    opts = CompileOptions(weight_bits=int(weight_bits), avg_bits=avg_bits,
                          sparsity=parse_sparsity(sparsity),
                          attn_sparsity=parse_attn_sparsity(attn_sparsity),
                          max_len=max_len, chunk=chunk, smooth_alpha=smooth_alpha,
                          calibration_sequences=calibration_seqs,
                          mlp_hidden_digits=int(mlp_hidden_digits))
    if board is None:
        cfg = load_config(arch or "tiny")
        report = compile_model(load_model(model, weights=weights), cfg, out, opts,
                               dump_dir=dump_dir)
    else:
        from flightllm.boards.compile import compile_for_board
        from flightllm.boards.fit import require_fit
        from flightllm.boards.project import build_hint
        from flightllm.boards.registry import load_board
        target = load_board(board)
        cfg = load_config(arch) if arch else target.config()
        click.echo(f"checking that configuration {cfg.name!r} fits {target.name} ...")
        fit = require_fit(target, cfg)
        ir = load_model(model, weights=weights)
        from flightllm.boards.compile import dsp_implementation
        from flightllm.hw.kernel import cached_verilog_path
        cached = cached_verilog_path(cfg, dsp_impl=dsp_implementation(target))
        if cached.is_file():
            click.echo(f"kernel Verilog for {cfg.name!r}: reusing {cached}")
        else:
            click.echo(f"generating the kernel's Verilog ({cfg.cores} cores x {cfg.mv_rows} DSP "
                       f"chains; minutes for a full-size configuration, then kept in "
                       f"{cached.parent}) ...")
        click.echo("compiling the model ...")
        report = compile_for_board(ir, target, cfg, out, opts, dump_dir=dump_dir, fit=fit)
    click.echo(f"wrote {out}: {report['instruction_bytes_total']} instruction bytes for every "
               f"length up to {max_len} (a program per length: "
               f"{report['instruction_bytes_per_length_baseline']}), "
               f"{report['weight_bytes']} weight bytes at {report['avg_weight_bits']} bits, "
               f"{report['compile_seconds']} s")
    if board is not None:
        click.echo(f"project: {out / 'project'}; report: {out / 'report.md'}")
        click.echo(build_hint(target, str(out / "project")))


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--input-ids", required=True, help="Prompt token ids, comma-separated.")
@click.option("--decode-steps", type=int, default=0, show_default=True,
              help="Greedy decode steps after the prefill.")
@click.option("--engine", type=click.Choice(["golden", "rtl"]), default="golden",
              show_default=True,
              help="golden: the functional simulator; rtl: the generated kernel under "
                   "Verilator and cocotb (tiny configurations; the first run builds the "
                   "simulator, which takes minutes).")
@click.option("--json", "as_json", is_flag=True,
              help="Print {tokens, logits, counters} as JSON.")
@_user_errors
def simulate(build, input_ids, decode_steps, engine, as_json):
    """Run BUILD on the golden simulator or the RTL: prefill, then greedy decoding."""
    from flightllm.host.build import load_build
    from flightllm.host.devices import RtlDevice
    from flightllm.host.session import GoldenDevice, Session
    b = load_build(build)
    device = GoldenDevice(b) if engine == "golden" else RtlDevice(b.config)
    session = Session(b, device)
    tokens, logits = [], []
    for token, row in session.generate(parse_ids(input_ids, "--input-ids"), decode_steps):
        tokens.append(token)
        logits.append(row)
        if not as_json:
            click.echo(f"token {token}")
    if as_json:
        counters = [c.to_dict() for c in session.counters]
        out = {"tokens": tokens, "logits": [r.tolist() for r in logits], "engine": engine,
               "counters": counters}
        if engine == "rtl":  # kernel cycles of every call: prefill chunks, then decode steps
            out["cycles"] = [c.cycles for c in session.counters]
        click.echo(json.dumps(out))


@main.group(cls=_LazyGroup, lazy={"resources": "flightllm.hw.resources:resources_command"})
def hw():
    """RTL tools: resource estimates of the generated datapath."""


@main.group()
def config():
    """Accelerator configurations: presets and files."""


@config.command("show")
@click.argument("arch", default="tiny")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml")
@_user_errors
def config_show(arch: str, fmt: str):
    """Print configuration ARCH (a preset name or a YAML/JSON file), validated."""
    from flightllm.contract.config import load_config
    cfg = load_config(arch)
    click.echo(cfg.to_json() if fmt == "json" else cfg.to_yaml(), nl=False)


@config.command("summary")
@click.argument("arch", default="tiny")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def config_summary(arch: str, as_json: bool):
    """Derived figures of ARCH: DSPs, MACs per cycle, on-chip bytes, HBM channels, hash."""
    from flightllm.contract.config import load_config
    cfg = load_config(arch)
    info = {
        "name": cfg.name, "hash": cfg.config_hash(), "cores": cfg.cores,
        "dsps_total": cfg.dsps_total, "mm_macs_per_cycle": cfg.mm_macs_per_cycle,
        "mv_macs_per_cycle": cfg.mv_macs_per_cycle,
        "peak_int8_gops": round(2 * cfg.mm_macs_per_cycle * cfg.clock_mhz / 1e3, 1),
        "onchip_bytes_per_core": cfg.onchip_bytes_per_core,
        "hbm_channels_total": cfg.hbm_channels_total, "clock_mhz": cfg.clock_mhz,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            click.echo(f"{key:<{width}}  {value}")


@config.command("presets")
def config_presets():
    """List the preset names."""
    from flightllm.contract.config import PRESETS
    click.echo("\n".join(sorted(PRESETS)))


@main.command()
@click.option("--markdown", is_flag=True, help="Print the full reference (docs/isa.md).")
def isa(markdown: bool):
    """Summarise the instruction set: opcodes, their sizes, and the ISA hash."""
    from flightllm.contract.isa import ISA_VERSION, OPCODES, isa_hash
    if markdown:
        from flightllm.contract.isa_doc import isa_markdown
        click.echo(isa_markdown(), nl=False)
        return
    click.echo(f"ISA version {ISA_VERSION}, hash {isa_hash()}")
    for op, spec in OPCODES.items():
        click.echo(f"  {op.name:<5} {spec.words:2d} words  {len(spec.fields):2d} fields  "
                   f"bindable: {', '.join(spec.bindable) or '-'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
