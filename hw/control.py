"""The kernel's AXI4-Lite control slave, built from the contract's register map.

Every offset comes from :func:`flightllm.contract.regmap.register_map`; nothing here names an
address. The slave implements the Vitis ``ap_ctrl_hs`` protocol:

* the host writes the arguments (pointers and scalars), then 1 to ``ctrl`` bit 0 (ap_start);
* the kernel takes the start when it is idle and its AXI ports are quiet (``start`` pulses for
  one cycle, ap_start clears, ap_idle drops);
* when the run ends (``finish`` pulses) ap_done and ap_ready are set, ap_idle rises; reading
  ``ctrl`` clears ap_done and ap_ready;
* GIE / IER / ISR behave as in Vitis HLS kernels (ISR bits toggle on write), and ``interrupt``
  is ``GIE & |(ISR)``.

Status and counter registers are inputs (``status_<name>``), arguments are outputs
(``arg_<name>``); a 64-bit register occupies two consecutive words, low word first.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.regmap import CtrlBit, register_map

__all__ = ["axi_lite_signature", "ControlSlave"]

DATA_BITS = 32


def axi_lite_signature(addr_bits: int) -> wiring.Signature:
    """An AXI4-Lite port seen from the master (Vitis ``s_axi_control`` member names)."""
    return wiring.Signature({
        "awvalid": Out(1), "awready": In(1), "awaddr": Out(addr_bits),
        "wvalid": Out(1), "wready": In(1), "wdata": Out(DATA_BITS), "wstrb": Out(DATA_BITS // 8),
        "bvalid": In(1), "bready": Out(1), "bresp": In(2),
        "arvalid": Out(1), "arready": In(1), "araddr": Out(addr_bits),
        "rvalid": In(1), "rready": Out(1), "rdata": In(DATA_BITS), "rresp": In(2),
    })


class ControlSlave(wiring.Component):
    """The ``s_axi_control`` register file.

    Ports:
        axil: the AXI4-Lite slave (flipped :func:`axi_lite_signature`).
        arg_<name>: every argument register's value (pointers 64 bits, scalars 32).
        status_<name>: the value to read back for every status and counter register.
        can_start: the kernel may take a start now (idle and its AXI ports quiet).
        start: one-cycle pulse when a run begins.
        finish: one-cycle pulse from the kernel when a run ends (done or error).
        running: a run is in progress.
        interrupt: the Vitis interrupt output.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.regmap = register_map(cfg)
        members = {
            "axil": In(axi_lite_signature(self.regmap.address_bits)),
            "can_start": In(1), "start": Out(1), "finish": In(1), "running": Out(1),
            "interrupt": Out(1),
        }
        for reg in self.regmap:
            if reg.is_argument:
                members[f"arg_{reg.name}"] = Out(reg.bits)
            elif reg.kind != "ctrl":
                members[f"status_{reg.name}"] = In(reg.bits)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.axil
        ap_start, ap_done, ap_ready = Signal(), Signal(), Signal()
        gie, ier, isr = Signal(), Signal(2), Signal(2)
        running = self.running

        # ---- run control (ap_ctrl_hs)
        m.d.comb += self.start.eq(ap_start & ~running & self.can_start)
        with m.If(self.start):
            m.d.sync += [running.eq(1), ap_start.eq(0)]
        with m.If(self.finish):
            m.d.sync += [running.eq(0), ap_done.eq(1), ap_ready.eq(1)]
            m.d.sync += isr.eq(isr | (ier & 0b11))
        m.d.comb += self.interrupt.eq(gie & isr.any())

        # ---- write channel: address and data are taken independently, then applied.
        aw_full, w_full = Signal(), Signal()
        aw_addr = Signal(self.regmap.address_bits)
        w_data, w_strb = Signal(DATA_BITS), Signal(DATA_BITS // 8)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full), bus.bresp.eq(0)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        def merged(old):
            # The byte lanes the write enables replace; the others keep the old value.
            return Cat(*(Mux(w_strb[i], w_data[8 * i:8 * i + 8], old[8 * i:8 * i + 8])
                         for i in range(DATA_BITS // 8)))

        word = aw_addr[2:]
        with m.If(aw_full & w_full & ~bus.bvalid):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
            with m.Switch(word):
                with m.Case(self.regmap["ctrl"].offset >> 2):
                    with m.If(w_strb[0] & w_data[CtrlBit.START]):
                        m.d.sync += ap_start.eq(1)
                with m.Case(self.regmap["gie"].offset >> 2):
                    m.d.sync += gie.eq(merged(gie)[0])
                with m.Case(self.regmap["ier"].offset >> 2):
                    m.d.sync += ier.eq(merged(ier)[:2])
                with m.Case(self.regmap["isr"].offset >> 2):
                    with m.If(w_strb[0]):
                        m.d.sync += isr.eq(isr ^ w_data[:2])
                for reg in self.regmap.arguments:
                    value = getattr(self, f"arg_{reg.name}")
                    for half in range(reg.bits // DATA_BITS):
                        with m.Case((reg.offset >> 2) + half):
                            part = value[DATA_BITS * half:DATA_BITS * (half + 1)]
                            m.d.sync += part.eq(merged(part))

        # ---- read channel: one outstanding read; the data is registered.
        m.d.comb += [bus.arready.eq(~bus.rvalid), bus.rresp.eq(0)]
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        rword = bus.araddr[2:]
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(0)]
            with m.Switch(rword):
                with m.Case(self.regmap["ctrl"].offset >> 2):
                    bits = {CtrlBit.START: ap_start, CtrlBit.DONE: ap_done,
                            CtrlBit.IDLE: ~running, CtrlBit.READY: ap_ready}
                    ctrl = Cat(*(bits[b] for b in sorted(bits)))
                    m.d.sync += bus.rdata.eq(ctrl)
                    # ap_done and ap_ready clear on read, unless set again this very cycle.
                    with m.If(~self.finish):
                        m.d.sync += [ap_done.eq(0), ap_ready.eq(0)]
                with m.Case(self.regmap["gie"].offset >> 2):
                    m.d.sync += bus.rdata.eq(gie)
                with m.Case(self.regmap["ier"].offset >> 2):
                    m.d.sync += bus.rdata.eq(ier)
                with m.Case(self.regmap["isr"].offset >> 2):
                    m.d.sync += bus.rdata.eq(isr)
                for reg in self.regmap:
                    if reg.kind == "ctrl":
                        continue
                    prefix = "arg" if reg.is_argument else "status"
                    value = getattr(self, f"{prefix}_{reg.name}")
                    for half in range(reg.bits // DATA_BITS):
                        with m.Case((reg.offset >> 2) + half):
                            m.d.sync += bus.rdata.eq(
                                value[DATA_BITS * half:DATA_BITS * (half + 1)])
        return m
