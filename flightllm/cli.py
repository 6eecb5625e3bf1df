"""The ``flightllm`` command line.

Each subcommand imports what it needs when it runs, so ``flightllm --help`` stays fast and a
subcommand's heavy dependencies never load for another. Errors that describe bad input (a bad
configuration, program, or file) print one line naming the problem and exit with status 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from flightllm import __version__


def _user_errors(fn):
    """Turn the project's input errors into a clean message and a non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from flightllm.contract.config import ConfigError
        from flightllm.contract.isa import IsaError, ProgramFileError
        from flightllm.sim.machine import ProgramError
        try:
            return fn(*args, **kwargs)
        except (ConfigError, IsaError, ProgramFileError, ProgramError, OSError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
