"""Timing of the HBM pseudo-channels for the performance model (no data, only occupancy).

Each core's local channel ``i`` drives one AXI master of ``axi_data_bits`` at the kernel clock,
wired to physical pseudo-channel ``core * hbm_channels_per_core + i`` (the layout the golden
simulator and the host use). A transfer occupies its channel for its bytes at the channel's
effective rate plus a gap per non-contiguous run (a new DRAM row), and completes one access
latency after its last beat; transfers on one channel serialise, in start order.

The effective rate is the smaller of the AXI port (``axi_data_bits / 8`` bytes per kernel
cycle) and the pseudo-channel's measured sustained rate. At 225 MHz a 256-bit master gives
7.2 GB/s, half of a U280 pseudo-channel's 14.375 GB/s; the presets' 512-bit masters (14.4 GB/s)
leave the DRAM's sustained rate as the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HBMParams", "ChannelTimeline", "transfer_runs", "RTL_TESTBENCH"]


@dataclass(frozen=True)
class HBMParams:
    """Facts about a board's HBM, each from a public source (see docs/performance.md).

    Attributes:
        name: Board the figures are for.
        pseudo_channels: Pseudo-channels on the board (U280: 32, two HBM2 stacks x 16).
        pc_peak_gbps: Theoretical bandwidth of one pseudo-channel. U280: 460 GB/s / 32 =
            14.375 GB/s (AMD U280 data sheet DS963). VHK158: 819 GB/s / 32 = 25.6 GB/s
            (AMD VHK158 product brief, HBM2e).
        sustained_fraction: Sustained / theoretical for long sequential bursts. U280: Shuhai
            (Wang et al., FCCM 2020) measured ~425 GB/s over all 32 channels, 0.924 of 460.
            VHK158: no public measurement known to us; the U280 fraction is assumed.
        latency_ns: Idle read latency, request to first data. Shuhai on U280: 106.7 ns for a
            page hit (48 cycles of its 450 MHz AXI clock).
        row_gap_ns: Extra channel time when a transfer jumps to another DRAM row (a run that is
            not contiguous with the previous one). Shuhai: page miss 137.8 ns vs hit 106.7 ns;
            the difference, 31.1 ns, is charged once per run. Pipelined requests to other banks
            hide part of it, so this is an upper bound to calibrate.
        switch_group: Pseudo-channels behind one mini-switch (U280: 8 switches of 4 AXI ports;
            Xilinx PG276). A master reaching a channel outside its group crosses lateral links.
        cross_channel_fraction: Rate fraction of a transfer through lateral links. Shuhai and
            Choi et al. (HBM Connect, FPGA 2021) report large drops for cross-switch traffic;
            0.5 is our assumption for one lateral hop, not a measurement.
        cross_channel_latency_ns: Added latency per lateral crossing (assumption, Shuhai's
            remote-channel latencies are tens of ns above local ones).
    """

    name: str
    pseudo_channels: int
    pc_peak_gbps: float
    sustained_fraction: float
    latency_ns: float
    row_gap_ns: float
    switch_group: int = 4
    cross_channel_fraction: float = 0.5
    cross_channel_latency_ns: float = 20.0

    @property
    def board_peak_gbps(self) -> float:
        """The data-sheet bandwidth of all pseudo-channels (the utilisation denominator)."""
        return self.pseudo_channels * self.pc_peak_gbps

    def bytes_per_cycle(self, clock_mhz: float, axi_data_bits: int, *,
                        cross: bool = False) -> float:
        """Sustained bytes per kernel cycle one master moves on one channel."""
        dram = self.pc_peak_gbps * self.sustained_fraction * 1e3 / clock_mhz
        rate = min(axi_data_bits / 8, dram)
        return rate * (self.cross_channel_fraction if cross else 1.0)

    def cycles(self, ns: float, clock_mhz: float) -> int:
        return round(ns * clock_mhz / 1e3)

    @classmethod
    def for_board(cls, name: str) -> HBMParams:
        try:
            return _BOARDS[name]
        except KeyError:
            raise ValueError(f"no HBM figures for board {name!r}; known: "
                             f"{sorted(_BOARDS)}") from None


_BOARDS = {
    "u280": HBMParams("u280", pseudo_channels=32, pc_peak_gbps=460 / 32,
                      sustained_fraction=425 / 460, latency_ns=106.7, row_gap_ns=31.1),
    "vhk158": HBMParams("vhk158", pseudo_channels=32, pc_peak_gbps=819 / 32,
                        sustained_fraction=425 / 460, latency_ns=106.7, row_gap_ns=31.1),
}


#: The RTL testbench's memories (sim/rtl_tb.py: one cocotbext-axi ``AxiRam`` per channel, no
#: stalls), for checking the model against the RTL's cycle counts: the port's rate, a couple of
#: cycles from request to data, no DRAM rows. Not a board: the RTL runs say nothing of HBM.
RTL_TESTBENCH = HBMParams("rtl_testbench", pseudo_channels=32, pc_peak_gbps=1e3,
                          sustained_fraction=1.0, latency_ns=10.0, row_gap_ns=0.0)


def transfer_runs(length: int, n1: int, stride1: int, n2: int, stride2: int) -> int:
    """Contiguous HBM runs of one channel's part of an LD/ST (each opens a DRAM row)."""
    if length <= 0 or n1 <= 0 or n2 <= 0:
        return 0
    inner = 1 if (n1 == 1 or stride1 == length) else n1
    if inner == 1 and (n2 == 1 or stride2 == n1 * length):
        return 1
    return inner * n2


class ChannelTimeline:
    """Occupancy of the physical pseudo-channels: when each is next free, bytes moved."""

    def __init__(self, channels: int):
        self.free = [0] * channels
        self.busy = [0] * channels
        self.read_bytes = [0] * channels
        self.write_bytes = [0] * channels

    def occupy(self, channel: int, ready: int, cycles: int, nbytes: int,
               write: bool) -> tuple[int, int]:
        """Reserve ``cycles`` of ``channel`` from ``ready`` on; returns (begin, end)."""
        begin = max(ready, self.free[channel])
        end = begin + cycles
        self.free[channel] = end
        self.busy[channel] += cycles
        (self.write_bytes if write else self.read_bytes)[channel] += nbytes
        return begin, end
