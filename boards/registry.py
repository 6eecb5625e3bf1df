"""The bundled boards (``boards/*.yaml``) and user board files, by name or path."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from .schema import Board, BoardError, parse_board

__all__ = ["BOARD_DIR", "list_boards", "load_board"]

#: Where the bundled board files live (package data of flightllm.boards).
BOARD_DIR = Path(__file__).resolve().parent


def list_boards() -> list[str]:
    """Names of the bundled boards, sorted."""
    return sorted(p.stem for p in BOARD_DIR.glob("*.yaml"))


def _load_file(path: Path, label: str) -> Board:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BoardError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BoardError(f"{label}: not valid YAML: {exc}") from None
    return parse_board(data, source=label)


@lru_cache(maxsize=32)
def _bundled(name: str) -> Board:
    # Package files do not change while the process runs; a user's file may, so only these
    # are cached.
    board = _load_file(BOARD_DIR / f"{name}.yaml", f"boards/{name}.yaml")
    if board.name != name:
        raise BoardError(f"boards/{name}.yaml: name: expected {name!r} (the file's name), "
                         f"got {board.name!r}")
    return board


def load_board(spec: str | Path | Board) -> Board:
    """A bundled board by name (``u280``), or a board file by path.

    A bare name is looked up among the bundled boards first, so a stray file called ``u280``
    in the working directory does not shadow the real card.

    Raises:
        BoardError: unknown name, unreadable file, or an invalid description (naming the key).
    """
    if isinstance(spec, Board):
        return spec
    text = str(spec)
    if isinstance(spec, str) and text in list_boards():
        return _bundled(text)
    path = Path(spec)
    if not path.is_file():
        raise BoardError(f"{text}: neither a board ({', '.join(list_boards())}) nor a board "
                         "file")
    return _load_file(path.resolve(), text)
