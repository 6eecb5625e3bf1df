"""Board descriptions: what a card offers, as one validated, typed object.

A board file (``boards/<name>.yaml``, or a user's own file) says which FPGA part a card carries,
which DSP slice its fabric has, how a design reaches it (a Vitis platform with an XRT shell, or a
plain Vivado project), its HBM and DDR banks, its resources and the part its shell keeps, its
kernel clock limits and the accelerator configuration it builds by default. :func:`parse_board`
checks every key and names the bad one by its path::

    boards/u280.yaml: hbm.channels: expected a positive integer, got 'x'

Every string that later reaches a script (Tcl, Makefile, v++ configuration) is checked against a
narrow pattern here, so a board file cannot inject a command into the generated project.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flightllm.contract.config import AcceleratorConfig, ConfigError, preset

__all__ = [
    "BoardError", "Board", "MemoryBanks", "FAMILIES", "FLOWS", "RESOURCES", "parse_board",
    "SAFE_NAME", "SAFE_TOKEN",
]

#: DSP slice of the fabric: UltraScale+ (Alveo U-series) or Versal.
FAMILIES = ("DSP48E2", "DSP58")
#: How a project is built: a Vitis platform (XRT shell) or a bare Vivado block design.
FLOWS = ("vitis", "vivado")
#: Resources a board lists, in the order of the resource estimate (flightllm.hw.resources).
RESOURCES = ("dsp", "bram36", "uram", "ff", "lut")
#: Board and kernel names: they become file names, Tcl words and Makefile variables.
SAFE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: Part numbers, platform names, board parts: no space, quote, bracket, $, ; or path separator.
SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}")
_TOP_KEYS = ("name", "description", "part", "family", "slrs", "flow", "hbm", "ddr",
             "resources", "shell", "clocks", "default_config")
_OPTIONAL = ("hbm", "ddr", "shell")


class BoardError(ConfigError):
    """A board file is invalid, or a design does not suit a board; the message names the key."""


@dataclass(frozen=True)
class MemoryBanks:
    """``count`` banks (HBM pseudo-channels or DDR banks) of ``bytes`` each.

    ``bandwidth_gbps`` is the peak of all banks together (GB/s, 10^9 bytes); ``slr`` holds the
    SLR each bank is attached to, or is empty where the fabric reaches memory through a
    network on chip (Versal) and the SLR does not matter. ``ports`` is how many AXI masters
    one bank takes without a switch in between (Versal's NoC has two ports per HBM
    pseudo-channel; a Vitis shell gets one master per pseudo-channel for full bandwidth).
    """

    count: int
    bytes: int
    bandwidth_gbps: float
    slr: tuple[int, ...] = ()
    ports: int = 1

    @property
    def total_bytes(self) -> int:
        return self.count * self.bytes

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "bytes": self.bytes, "bandwidth_gbps": self.bandwidth_gbps,
                "slr": list(self.slr), "ports": self.ports}


@dataclass(frozen=True)
class Board:
    """One card (see the module docstring); built by :func:`parse_board`.

    Attributes:
        name: Short name, also the file's stem for the bundled boards.
        description: One line for people.
        part: The FPGA part number Vivado knows.
        family: ``DSP48E2`` or ``DSP58``.
        slrs: Super logic regions of the part.
        flow: ``vitis`` or ``vivado``.
        platform: The Vitis platform (``vitis`` flow only).
        board_part: Vivado's board part, for board presets (``vivado`` flow, optional).
        hbm: The HBM pseudo-channels, or None.
        ddr: The DDR banks, or None.
        resources: Capacity of the part by resource name (:data:`RESOURCES`).
        shell: What the platform shell or block design keeps for itself (missing: none known).
        kernel_max_mhz: Fastest kernel clock the flow offers.
        default_config: A preset name, or a configuration mapping.
        source: Where the board came from (a file path), for messages.
    """

    name: str
    description: str
    part: str
    family: str
    slrs: int
    flow: str
    platform: str | None
    board_part: str | None
    hbm: MemoryBanks | None
    ddr: MemoryBanks | None
    resources: dict[str, int]
    shell: dict[str, int]
    kernel_max_mhz: float
    default_config: str | dict = field(compare=False)
    source: str = field(default="<board>", compare=False)

    def available(self) -> dict[str, int]:
        """Resources left for the accelerator once the shell is placed."""
        return {r: self.resources[r] - self.shell.get(r, 0) for r in RESOURCES}

    def config(self) -> AcceleratorConfig:
        """The board's default accelerator configuration."""
        spec = self.default_config
        try:
            if isinstance(spec, dict):
                return AcceleratorConfig.from_dict(spec, source=f"{self.source}: default_config")
            return preset(spec)
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith(f"{self.source}: "):
                message = f"{self.source}: default_config: {message}"
            raise BoardError(message) from None

    @property
    def memory(self) -> tuple[str, MemoryBanks]:
        """The memory the kernel's AXI masters are bound to: ``("HBM", ...)`` where the card
        has HBM, else ``("DDR", ...)``."""
        if self.hbm is not None:
            return "HBM", self.hbm
        return "DDR", self.ddr

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``flightllm boards --json``)."""
        return {
            "name": self.name, "description": self.description, "part": self.part,
            "family": self.family, "slrs": self.slrs, "flow": self.flow,
            "platform": self.platform, "board_part": self.board_part,
            "hbm": self.hbm.to_dict() if self.hbm else None,
            "ddr": self.ddr.to_dict() if self.ddr else None,
            "resources": dict(self.resources), "shell": dict(self.shell),
            "kernel_max_mhz": self.kernel_max_mhz,
            "default_config": self.default_config if isinstance(self.default_config, str)
            else dict(self.default_config),
            "source": self.source,
        }


# ---------------------------------------------------------------------------------- checks
def _fail(source: str, path: str, expected: str, value: Any):
    raise BoardError(f"{source}: {path}: expected {expected}, got {value!r}")


def _mapping(source, path, value, keys, required):
    if not isinstance(value, dict):
        _fail(source, path or "(top level)", "a mapping", value)
    unknown = sorted(set(value) - set(keys), key=str)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise BoardError(f"{source}: {where}: unknown key; known keys: {', '.join(keys)}")
    missing = [k for k in required if k not in value]
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise BoardError(f"{source}: {where}: missing (required)")
    return value


def _int(source, path, value, lo=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        _fail(source, path, "a positive integer" if lo == 1 else f"an integer >= {lo}", value)
    return value


def _number(source, path, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        _fail(source, path, "a positive number", value)
    return float(value)


def _token(source, path, value, pattern=SAFE_TOKEN, what="a name of letters, digits, _ . : + -"):
    if not isinstance(value, str) or not pattern.fullmatch(value):
        _fail(source, path, what, value)
    return value


def _banks(source, path, value, slrs) -> MemoryBanks:
    _mapping(source, path, value, ("count", "bytes", "bandwidth_gbps", "slr", "ports"),
             ("count", "bytes", "bandwidth_gbps"))
    ports = _int(source, f"{path}.ports", value.get("ports", 1))
    count = _int(source, f"{path}.count", value["count"])
    size = _int(source, f"{path}.bytes", value["bytes"])
    bandwidth = _number(source, f"{path}.bandwidth_gbps", value["bandwidth_gbps"])
    slr = value.get("slr")
    if slr is None:
        slr = ()
    elif isinstance(slr, int) and not isinstance(slr, bool):
        slr = (slr,) * count
    elif isinstance(slr, list) and len(slr) == count:
        slr = tuple(slr)
    else:
        _fail(source, f"{path}.slr", f"an SLR index or a list of {count} of them", slr)
    for i, s in enumerate(slr):
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < slrs:
            _fail(source, f"{path}.slr", f"SLR indices in [0, {slrs - 1}] (slrs: {slrs})", s)
    return MemoryBanks(count, size, bandwidth, slr, ports)


def _resources(source, path, value, required) -> dict[str, int]:
    _mapping(source, path, value, RESOURCES, RESOURCES if required else ())
    return {r: _int(source, f"{path}.{r}", value[r], lo=0) for r in RESOURCES if r in value}


def parse_board(data: Any, *, source: str = "<board>") -> Board:
    """Validate a board mapping (as read from YAML) and build its :class:`Board`.

    Raises:
        BoardError: naming the file and the key path of the first problem.
    """
    required = [k for k in _TOP_KEYS if k not in _OPTIONAL]
    _mapping(source, "", data, _TOP_KEYS, required)
    name = _token(source, "name", data["name"], SAFE_NAME,
                  "a lower-case name of letters, digits and _ (at most 32, starting with a "
                  "letter)")
    description = data["description"]
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        _fail(source, "description", "one line of text", description)
    part = _token(source, "part", data["part"])
    family = data["family"]
    if family not in FAMILIES:
        _fail(source, "family", f"one of {', '.join(FAMILIES)}", family)
    slrs = _int(source, "slrs", data["slrs"])

    flow = _mapping(source, "flow", data["flow"], ("tool", "platform", "board_part"), ("tool",))
    tool = flow["tool"]
    if tool not in FLOWS:
        _fail(source, "flow.tool", f"one of {', '.join(FLOWS)}", tool)
    platform = board_part = None
    if tool == "vitis":
        if "platform" not in flow:
            raise BoardError(f"{source}: flow.platform: missing (required by the vitis flow)")
        platform = _token(source, "flow.platform", flow["platform"])
    elif "platform" in flow:
        _fail(source, "flow.platform", "no platform for the vivado flow", flow["platform"])
    if "board_part" in flow:
        board_part = _token(source, "flow.board_part", flow["board_part"])

    hbm = _banks(source, "hbm", data["hbm"], slrs) if data.get("hbm") is not None else None
    ddr = _banks(source, "ddr", data["ddr"], slrs) if data.get("ddr") is not None else None
    if hbm is None and ddr is None:
        raise BoardError(f"{source}: hbm: missing (a board needs hbm or ddr banks)")
    resources = _resources(source, "resources", data["resources"], required=True)
    shell = _resources(source, "shell", data.get("shell") or {}, required=False)
    for r, reserved in shell.items():
        if reserved > resources[r]:
            _fail(source, f"shell.{r}", f"at most resources.{r} = {resources[r]}", reserved)

    clocks = _mapping(source, "clocks", data["clocks"], ("kernel_max_mhz",), ("kernel_max_mhz",))
    kernel_max = _number(source, "clocks.kernel_max_mhz", clocks["kernel_max_mhz"])

    default = data["default_config"]
    if isinstance(default, str):
        _token(source, "default_config", default, SAFE_NAME, "a preset name or a mapping")
    elif not isinstance(default, dict):
        _fail(source, "default_config", "a preset name or a configuration mapping", default)
    board = Board(name=name, description=description.strip(), part=part, family=family,
                  slrs=slrs, flow=tool, platform=platform, board_part=board_part, hbm=hbm,
                  ddr=ddr, resources=resources, shell=shell, kernel_max_mhz=kernel_max,
                  default_config=default, source=source)
    board.config()          # the default configuration must itself be valid
    return board
