"""``flightllm boards``: the bundled board descriptions, or one board file, listed and checked."""

from __future__ import annotations

import json

import click

from .registry import list_boards, load_board
from .schema import BoardError

__all__ = ["boards_command"]


def _memory(board) -> str:
    parts = []
    for label, banks in (("HBM", board.hbm), ("DDR", board.ddr)):
        if banks is not None:
            parts.append(f"{label} {banks.count} x {banks.bytes / 2**30:g} GiB "
                         f"{banks.bandwidth_gbps:g} GB/s")
    return ", ".join(parts)


@click.command("boards")
@click.argument("specs", nargs=-1, metavar="[BOARD|FILE]...")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of objects (name, part, flow, memory, resources, ...).")
def boards_command(specs: tuple[str, ...], as_json: bool):
    """List the boards (or the named boards / board files), validated against the schema."""
    try:
        boards = [load_board(s) for s in (specs or list_boards())]
    except BoardError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([b.to_dict() for b in boards], indent=1))
        return
    rows = [(b.name, b.part, b.family,
             f"vitis {b.platform}" if b.flow == "vitis" else "vivado (no XRT shell)",
             _memory(b),
             b.default_config if isinstance(b.default_config, str) else "(inline)")
            for b in boards]
    head = ("name", "part", "DSP", "flow", "memory", "default config")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
