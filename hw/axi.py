"""AXI4 master signatures (Vitis member names) and the burst-length rule.

Every HBM master of a core (the LD and ST engines', one per channel) and the instruction fetch
use these. One ID (0), so responses come in order; INCR bursts that never cross 4 KiB.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ID_BITS", "axi4_signature", "axi4_read_signature", "axi4_write_signature",
           "burst_beats"]

#: AXI ID width. Every master uses ID 0 (responses in order); the ports exist because the
#: AXI verification models (cocotbext-axi) require them; Vitis accepts them.
ID_BITS = 1


def _read_members(addr_bits, data_bits):
    return {
        "arvalid": Out(1), "arready": In(1), "araddr": Out(addr_bits), "arlen": Out(8),
        "arsize": Out(3), "arburst": Out(2), "arid": Out(ID_BITS),
        "rvalid": In(1), "rready": Out(1), "rdata": In(data_bits), "rresp": In(2),
        "rlast": In(1), "rid": In(ID_BITS),
    }


def _write_members(addr_bits, data_bits):
    return {
        "awvalid": Out(1), "awready": In(1), "awaddr": Out(addr_bits), "awlen": Out(8),
        "awsize": Out(3), "awburst": Out(2), "awid": Out(ID_BITS),
        "wvalid": Out(1), "wready": In(1), "wdata": Out(data_bits), "wstrb": Out(data_bits // 8),
        "wlast": Out(1),
        "bvalid": In(1), "bready": Out(1), "bresp": In(2), "bid": In(ID_BITS),
    }


def axi4_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """An AXI4 master (one ID, 0: in order), Vitis member names (``awvalid`` ...)."""
    return wiring.Signature({**_write_members(addr_bits, data_bits),
                             **_read_members(addr_bits, data_bits)})


def axi4_read_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """The read half of :func:`axi4_signature`."""
    return wiring.Signature(_read_members(addr_bits, data_bits))


def axi4_write_signature(addr_bits: int, data_bits: int) -> wiring.Signature:
    """The write half of :func:`axi4_signature`."""
    return wiring.Signature(_write_members(addr_bits, data_bits))


def burst_beats(addr: Value, remaining: Value, beat_bytes: int, max_beats: int) -> Value:
    """Beats of the next burst at the beat-aligned ``addr``: at most ``max_beats``, at most
    ``remaining``, and not across a 4 KiB boundary (AXI4's rule)."""
    shift = beat_bytes.bit_length() - 1
    to_4k_value = (C(4096, 13) - addr[:12]) >> shift
    n = Mux(remaining < max_beats, remaining, max_beats)
    return Mux(to_4k_value < n, to_4k_value, n)
