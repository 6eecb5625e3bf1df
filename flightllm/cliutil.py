"""Helpers every command module shares: one error policy and one token-id parser.

The commands live in their areas' modules (``flightllm.host.cli``, ``flightllm.sim.estimate``,
...); they all turn the project's input errors into one line naming the problem and exit
status 1, and read token ids the same way.
"""

from __future__ import annotations

import functools

import click

__all__ = ["user_errors", "parse_ids"]


def _error_types() -> tuple[type[BaseException], ...]:
    # Imported when a command runs, so `flightllm --help` loads none of the areas.
    from flightllm.compiler.ir import IRError
    from flightllm.compiler.layout import CompileError
    from flightllm.compiler.onnx_patterns import FrontendError
    from flightllm.contract.config import ConfigError
    from flightllm.contract.isa import IsaError, ProgramFileError
    from flightllm.host.build import BuildError
    from flightllm.host.devices import DeviceError
    from flightllm.sim.machine import ProgramError
    return (ConfigError, IsaError, ProgramFileError, ProgramError, OSError, IRError,
            CompileError, FrontendError, BuildError, DeviceError)


def user_errors(fn=None, *, extra: tuple[type[BaseException], ...] = ()):
    """Decorator: the project's input errors (plus ``extra``) become a clean message and a
    non-zero exit; anything else is a bug and keeps its traceback."""
    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            try:
                return f(*args, **kwargs)
            except _error_types() + tuple(extra) as exc:
                raise click.ClickException(str(exc)) from None
        return wrapper
    return decorate(fn) if fn is not None else decorate


def parse_ids(text: str, param_hint: str | None = None) -> list[int]:
    """Comma-separated token ids (spaces allowed); at least one."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers",
                                 param_hint=param_hint) from None
    if not ids:
        raise click.BadParameter("at least one token id is needed", param_hint=param_hint)
    return ids
