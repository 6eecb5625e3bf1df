"""Does an accelerator configuration fit a board? Resources, memory banks and clock.

Resources come from :func:`flightllm.hw.resources.estimate` without running Yosys
(``synth="cached"``): every unit of a core is elaborated, and a unit whose exact design has a
synthesis result bundled with flightllm (the presets' units, from ``bench/resources.py``) or in
the user's cache takes the synthesised figures; any other unit is counted from its RTLIL, which
is approximate (the count is off by a factor of two either way on some byte-shifting units).
The totals are compared with the board's capacity minus what its shell keeps. Besides resources, a build needs
one memory bank (port) per AXI master, pseudo-channels at least as large as the configuration's
``hbm_channel_bytes``, and a kernel clock the flow offers.

On Versal (DSP58) boards the estimate's DSP48E2 count is taken one for one: AMD's DSP engine
manual (AM004) states that DSP58 is a superset of DSP48E2 and that Vivado translates a DSP48E2
instance to a DSP58.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flightllm.contract.config import AcceleratorConfig

from .connectivity import bind_masters
from .schema import RESOURCES, Board, BoardError

__all__ = ["FitReport", "FitError", "estimate_usage", "check_fit", "require_fit"]

#: How :func:`estimate_usage` measures, for messages and reports.
COUNTED = ("synthesised (Yosys) where a result for the exact unit design is bundled or cached, "
           "else counted from the RTL; LUTs approximate (before place and route)")


@dataclass(frozen=True)
class FitReport:
    """Resources a configuration uses on a board, what is left, and what does not fit."""

    board: str
    config: str
    method: str
    used: dict
    capacity: dict
    shell: dict
    available: dict
    problems: tuple[str, ...] = field(default=())

    @property
    def over(self) -> list[str]:
        """Resources the configuration uses more of than the board has free."""
        return [r for r in RESOURCES if self.used[r] > self.available[r]]

    @property
    def fits(self) -> bool:
        return not self.over and not self.problems

    def utilisation_pct(self) -> dict:
        return {r: round(100 * self.used[r] / self.available[r], 1) if self.available[r] > 0
                else None for r in RESOURCES}

    def table(self) -> str:
        """Resource by resource: used, capacity, shell, free, percent, and the overshoot."""
        pct = self.utilisation_pct()
        lines = [f"  {'resource':<9}{'used':>12}{'capacity':>12}{'shell':>10}{'free':>12}"
                 f"{'used %':>9}"]
        for r in RESOURCES:
            used = self.used[r]
            note = f"  OVER by {used - self.available[r]:,.0f}" if r in self.over else ""
            lines.append(f"  {r:<9}{used:>12,.0f}{self.capacity[r]:>12,}"
                         f"{self.shell.get(r, 0):>10,}{self.available[r]:>12,}"
                         f"{'-' if pct[r] is None else pct[r]:>9}{note}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One paragraph for people: verdict, method, table, other problems."""
        verdict = "fits" if self.fits else "does not fit"
        text = [f"configuration {self.config!r} {verdict} board {self.board!r} "
                f"(resources {self.method}; shell reserved):", self.table()]
        text += [f"  {p}" for p in self.problems]
        return "\n".join(text)

    def to_dict(self) -> dict:
        return {"board": self.board, "config": self.config, "method": self.method,
                "fits": self.fits, "over": self.over, "used": dict(self.used),
                "capacity": dict(self.capacity), "shell": dict(self.shell),
                "available": dict(self.available), "utilisation_pct": self.utilisation_pct(),
                "problems": list(self.problems)}


class FitError(BoardError):
    """A configuration does not fit a board; ``report`` holds the numbers."""

    def __init__(self, report: FitReport):
        self.report = report
        super().__init__(report.summary() + "\n  choose a smaller configuration with --arch "
                         "(a preset or a YAML file) or a larger board")


def estimate_usage(board: Board, cfg: AcceleratorConfig) -> dict:
    """The resource estimate of ``cfg``'s cores without running Yosys, by resource: each
    unit's synthesised figures where a result for its exact design is bundled with flightllm
    or cached, else its count from the RTL."""
    from flightllm.hw.resources import Board as EstimateBoard
    from flightllm.hw.resources import estimate
    # The estimate also reports a fit of its own; give it this board so the two agree.
    target = EstimateBoard(board.name, board.part, dsp=board.resources["dsp"],
                           lut=board.resources["lut"], ff=board.resources["ff"],
                           bram36=board.resources["bram36"], uram=board.resources["uram"],
                           shell=dict(board.shell))
    est = estimate(cfg, board=target, synth="cached")
    return {r: est[r] for r in RESOURCES}


def _memory_and_clock_problems(board: Board, cfg: AcceleratorConfig) -> list[str]:
    problems = []
    try:
        bind_masters(board, cfg)
    except BoardError as exc:
        problems.append(str(exc))
    memory, banks = board.memory
    if memory == "HBM" and cfg.hbm_channel_bytes > banks.bytes:
        problems.append(f"hbm_channel_bytes = {cfg.hbm_channel_bytes:,} but {board.name}'s HBM "
                        f"pseudo-channels hold {banks.bytes:,} bytes each")
    if cfg.clock_mhz > board.kernel_max_mhz:
        problems.append(f"clock_mhz = {cfg.clock_mhz:g} but {board.name}'s kernel clock is at "
                        f"most {board.kernel_max_mhz:g} MHz")
    return problems


def check_fit(board: Board, cfg: AcceleratorConfig, *, usage: dict | None = None,
              method: str = COUNTED) -> FitReport:
    """Compare ``cfg`` with ``board`` (never raises for a misfit; see :func:`require_fit`).

    Args:
        usage: resources by name (``dsp``, ``bram36``, ``uram``, ``ff``, ``lut``); measured
            with :func:`estimate_usage` when omitted.
        method: how ``usage`` was measured, for the report.
    """
    if usage is None:
        usage = estimate_usage(board, cfg)
    missing = [r for r in RESOURCES if r not in usage]
    if missing:
        raise ValueError(f"usage lacks {missing}; expected every one of {list(RESOURCES)}")
    return FitReport(board=board.name, config=cfg.name, method=method,
                     used={r: usage[r] for r in RESOURCES}, capacity=dict(board.resources),
                     shell={r: board.shell.get(r, 0) for r in RESOURCES},
                     available=board.available(),
                     problems=tuple(_memory_and_clock_problems(board, cfg)))


def require_fit(board: Board, cfg: AcceleratorConfig, *, usage: dict | None = None,
                method: str = COUNTED) -> FitReport:
    """:func:`check_fit`, raising :class:`FitError` (with the numbers) when it does not fit."""
    report = check_fit(board, cfg, usage=usage, method=method)
    if not report.fits:
        raise FitError(report)
    return report
