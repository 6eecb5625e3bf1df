"""The kernel's host interface: AXI4-Lite register map, AXI master ports and error codes.

Defined once, as data, for a given :class:`~flightllm.contract.config.AcceleratorConfig`. The
RTL kernel top builds its ``s_axi_control`` slave from :func:`register_map`, the board project
writes the Vitis ``kernel.xml`` and the ``v++`` connectivity from it and from :func:`axi_masters`,
and the host driver reads and writes the same offsets by name.

The control register follows the Vitis ``ap_ctrl_hs`` convention (offset 0x00: bit 0 ap_start,
bit 1 ap_done (clear on read), bit 2 ap_idle, bit 3 ap_ready; 0x04 GIE, 0x08 IER, 0x0C ISR).
Kernel arguments follow from 0x10, each on its own 8-byte slot so 64-bit pointers and 32-bit
scalars share one layout rule; status and performance counters follow the arguments. Every
64-bit register is two 32-bit words, low word first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Opcode

__all__ = [
    "CTRL", "CtrlBit", "ErrorCode", "Register", "RegisterMap", "AxiMaster",
    "register_map", "axi_masters", "channel_port", "INSTR_PORT",
]

#: Offset of the ap_ctrl_hs control register and its companions.
CTRL, GIE, IER, ISR = 0x00, 0x04, 0x08, 0x0C
#: First argument offset in the Vitis convention.
ARG_BASE = 0x10
#: The AXI master that fetches instructions (one per kernel, shared by the cores).
INSTR_PORT = "instr"


class CtrlBit(enum.IntEnum):
    """Bits of the control register (ap_ctrl_hs)."""

    START = 0
    DONE = 1
    IDLE = 2
    READY = 3


class ErrorCode(enum.IntEnum):
    """Value of the ``status`` register after a run; anything but NONE also raises done."""

    NONE = 0
    DECODE = 1    # an instruction word with a bad opcode or field value
    ADDRESS = 2   # a buffer or HBM address out of range
    AXI = 3       # an AXI read or write answered SLVERR/DECERR
    TOKENS = 4    # a dependency-token counter overflowed, or tokens left at the end
    SYNC = 5      # cores disagreed at a SYS instruction
    TIMEOUT = 6   # no instruction progressed for the watchdog's cycle count (deadlock)


@dataclass(frozen=True)
class Register:
    """One named register: ``bits`` is 32 or 64; ``kind`` is ctrl, pointer, scalar, status
    or counter. Pointers and scalars are kernel arguments (written by the host before start)."""

    name: str
    offset: int
    bits: int
    kind: str
    doc: str

    @property
    def is_argument(self) -> bool:
        return self.kind in ("pointer", "scalar")

    @property
    def writable(self) -> bool:
        return self.kind in ("ctrl", "pointer", "scalar")


@dataclass(frozen=True)
class AxiMaster:
    """An AXI4 master port of the kernel: ``m_axi_<name>``, bound to the pointer argument of
    the same name; ``core``/``channel`` locate a data port (None for the instruction port)."""

    name: str
    data_bits: int
    core: int | None
    channel: int | None

    @property
    def port(self) -> str:
        return f"m_axi_{self.name}"


class RegisterMap:
    """The registers in offset order, looked up by name."""

    def __init__(self, registers: list[Register]):
        self.registers = tuple(registers)
        self._by_name = {r.name: r for r in registers}

    def __getitem__(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no register {name!r}") from None

    def __iter__(self):
        return iter(self.registers)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def arguments(self) -> list[Register]:
        return [r for r in self.registers if r.is_argument]

    @property
    def size(self) -> int:
        """Bytes of address space the slave decodes (a power of two)."""
        end = max(r.offset + r.bits // 8 for r in self.registers)
        return 1 << (end - 1).bit_length()

    @property
    def address_bits(self) -> int:
        return (self.size - 1).bit_length()


def channel_port(core: int, channel: int, cfg: AcceleratorConfig) -> str:
    """Argument / port name of a core's HBM channel: ``hbm00`` .. in global channel order."""
    return f"hbm{core * cfg.hbm_channels_per_core + channel:02d}"


def axi_masters(cfg: AcceleratorConfig) -> list[AxiMaster]:
    """Every AXI master of the kernel: the instruction port, then one per HBM channel."""
    masters = [AxiMaster(INSTR_PORT, 32 * ((cfg.axi_data_bits + 31) // 32), None, None)]
    for core in range(cfg.cores):
        for ch in range(cfg.hbm_channels_per_core):
            masters.append(AxiMaster(channel_port(core, ch, cfg), cfg.axi_data_bits, core, ch))
    return masters


#: Units that have a busy-cycle counter: one per instruction queue.
UNITS = tuple(op.name.lower() for op in Opcode)


def register_map(cfg: AcceleratorConfig) -> RegisterMap:
    """The register map of the kernel built for ``cfg``."""
    regs = [
        Register("ctrl", CTRL, 32, "ctrl", "ap_ctrl_hs: start, done, idle, ready"),
        Register("gie", GIE, 32, "ctrl", "global interrupt enable"),
        Register("ier", IER, 32, "ctrl", "interrupt enable (bit 0 done, bit 1 ready)"),
        Register("isr", ISR, 32, "ctrl", "interrupt status (toggle on write)"),
    ]
    offset = ARG_BASE

    def add(name, bits, kind, doc):
        nonlocal offset
        regs.append(Register(name, offset, bits, kind, doc))
        offset += 8

    add(INSTR_PORT, 64, "pointer", "base address of the program buffer (instruction port)")
    for core in range(cfg.cores):
        add(f"prog_offset_c{core}", 32, "scalar", f"core {core}: first word of its stream")
        add(f"prog_words_c{core}", 32, "scalar", f"core {core}: words in its stream")
    for reg in ("seq", "kv", "pos"):
        add(reg, 32, "scalar", f"length register {reg.upper()} for the bindings")
    for m in axi_masters(cfg)[1:]:
        add(m.name, 64, "pointer", f"core {m.core} channel {m.channel}: HBM base address")
    add("status", 32, "status", "ErrorCode of the last run (0: none)")
    add("error_core", 32, "status", "core that raised the error")
    add("error_word", 32, "status", "word index of the offending instruction in its stream")
    add("cycles", 64, "counter", "cycles from start to done")
    for core in range(cfg.cores):
        for unit in UNITS:
            add(f"busy_c{core}_{unit}", 64, "counter",
                f"core {core}: cycles the {unit.upper()} unit was executing an instruction")
    for m in axi_masters(cfg)[1:]:
        add(f"bytes_{m.name}", 64, "counter", f"bytes moved on {m.port} (read + write)")
    return RegisterMap(regs)
