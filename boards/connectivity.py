"""Which memory bank each AXI master of the kernel is bound to, on a given board.

The kernel's masters come from the register map (:func:`flightllm.contract.regmap.axi_masters`):
the instruction port, then one per core and HBM channel. Each data master gets a bank of its
own, in order (core 0's channels first), so the compiler's "channel k" is the board's bank k.
The instruction master takes the next free bank; where every bank is taken and a bank has a
second port (Versal's NoC), it shares the last bank through that port.

A board with DDR only spreads the masters over its banks in turn (several masters per bank go
through the shell's interconnect); no bundled board needs that yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.regmap import INSTR_PORT, AxiMaster, axi_masters

from .schema import Board, BoardError

__all__ = ["Binding", "bind_masters", "core_slrs"]


@dataclass(frozen=True)
class Binding:
    """One AXI master on one bank: ``memory`` is ``HBM`` or ``DDR``, ``port`` the bank's port
    (0 unless the master shares a bank with another through a second port)."""

    master: AxiMaster
    memory: str
    bank: int
    port: int
    slr: int | None

    @property
    def tag(self) -> str:
        """The v++ memory tag, e.g. ``HBM[3]``."""
        return f"{self.memory}[{self.bank}]"

    def to_dict(self) -> dict:
        return {"argument": self.master.name, "port": self.master.port,
                "data_bits": self.master.data_bits, "core": self.master.core,
                "channel": self.master.channel, "memory": self.memory, "bank": self.bank,
                "bank_port": self.port, "slr": self.slr}


def bind_masters(board: Board, cfg: AcceleratorConfig) -> list[Binding]:
    """Bind every AXI master of ``cfg``'s kernel to a bank of ``board``.

    Raises:
        BoardError: more masters than the board's banks (and their ports) can take, naming
            both counts.
    """
    memory, banks = board.memory
    masters = axi_masters(cfg)
    data = [m for m in masters if m.name != INSTR_PORT]
    instr = next(m for m in masters if m.name == INSTR_PORT)

    def slr(bank):
        return banks.slr[bank] if banks.slr else None

    if memory == "DDR":
        return [Binding(m, memory, i % banks.count, 0, slr(i % banks.count))
                for i, m in enumerate([*data, instr])]
    capacity = banks.count * banks.ports
    if len(masters) > capacity:
        raise BoardError(
            f"{board.name}: the kernel for configuration {cfg.name!r} has {len(masters)} AXI "
            f"masters ({cfg.cores} cores x {cfg.hbm_channels_per_core} HBM channels + 1 "
            f"instruction port) but the board has {banks.count} HBM pseudo-channels with "
            f"{banks.ports} port(s) each ({capacity} masters)")
    bindings = [Binding(m, memory, i, 0, slr(i)) for i, m in enumerate(data)]
    if len(data) < banks.count:
        bindings.append(Binding(instr, memory, len(data), 0, slr(len(data))))
    else:
        # Program fetches are a small share of the traffic: share the last pseudo-channel.
        bindings.append(Binding(instr, memory, banks.count - 1, 1, slr(banks.count - 1)))
    return bindings


def core_slrs(board: Board, cfg: AcceleratorConfig) -> list[int]:
    """The SLR each core is meant to sit in: one core per SLR, in turn."""
    return [core % board.slrs for core in range(cfg.cores)]
