"""SYS: barriers and all-gathers across cores.

Every core executes the same sequence of SYS instructions. A core's :class:`SyncUnit` checks its
instruction, then *arrives* at the kernel's :class:`SyncHub` with the operation and id. When
every core has arrived the hub either lets them all go (they agree) or reports a mismatch to all
(ErrorCode.SYNC at each core, as the golden simulator raises ``cores disagree on the SYS
sequence``).

GATHER then copies each core's slice (``rows`` rows of ``len`` bytes at ``addr + row * stride``
of ``buf``) to the same addresses of every other core: the unit reads the buffer rows the slice
touches through its own buffer ports and writes them, byte-enabled to the slice, through one
*remote* port per other core (a client of that core's buffer arbiter). When a core has written
its whole slice it reports *gathered*; all cores leave the instruction together once every core
has, so each sees all the slices when its SYS completes. With one core there is nothing to copy
(the slice is still checked against the buffer, as the golden model reads it).
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Buffer, Opcode, SysOp
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.bufport import BUFFERS, row_client_signature
from flightllm.hw.isa_layouts import instruction_layout

__all__ = ["sync_port_signature", "SyncUnit", "SyncHub", "BUFFERS"]



def sync_port_signature(cfg: AcceleratorConfig) -> wiring.Signature:
    """A core's side of the hub: ``arrive`` (level) with ``op``/``id``, answered by ``go`` or
    ``mismatch`` (for one cycle); then, for GATHER, ``gathered`` (level) answered by
    ``release``."""
    return wiring.Signature({"arrive": Out(1), "op": Out(2), "id": Out(8),
                             "go": In(1), "mismatch": In(1),
                             "gathered": Out(1), "release": In(1)})


class SyncUnit(wiring.Component):
    """A core's SYS unit.

    Ports:
        cmd, done, busy, error: as every unit (``error`` is sticky).
        hub: to the kernel's :class:`SyncHub`.
        abuf, wbuf, rbuf, pbuf: this core's buffers (GATHER reads its slice).
        remote_<buf> (multi-core kernels): one writer per other core, to that core's buffer.
    """

    def __init__(self, cfg: AcceleratorConfig, *, index: int = 0):
        self.cfg, self.index = cfg, index
        members = {"cmd": In(stream.Signature(instruction_layout(Opcode.SYS))),
                   "done": Out(1), "busy": Out(1), "error": Out(3),
                   "hub": Out(sync_port_signature(cfg))}
        if cfg.cores > 1:
            for name in BUFFERS:
                members[name] = Out(row_client_signature(cfg.buffer(name)))
                members[f"remote_{name}"] = Out(
                    row_client_signature(cfg.buffer(name))).array(cfg.cores - 1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        ins = Signal(instruction_layout(Opcode.SYS))
        sizes = Array(C(cfg.buffer(b).bytes, 26) for b in BUFFERS)
        rows = Mux(ins.rows == 0, 1, ins.rows)
        end = Signal(48)
        m.d.comb += end.eq(ins.addr + (rows - 1) * ins.stride + ins.len)
        gather = (ins.sync_op == SysOp.GATHER) & (ins.len != 0)
        unaligned = (ins.buf == Buffer.RBUF) & ((ins.addr[:2] != 0)
                                                | ((rows > 1) & (ins.stride[:2] != 0)))
        multi = cfg.cores > 1
        # GATHER copy state: the slice row's byte range [start, stop), the buffer row q.
        row_i = Signal(16)
        start = Signal(48)
        stop = Signal(48)
        q = Signal(40)
        data_reg = Signal(8 * max(cfg.buffer(b).width for b in BUFFERS))
        accepted = Signal(max(cfg.cores - 1, 1))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += ins.eq(self.cmd.p)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(gather & ((end > sizes[ins.buf]) | unaligned)):
                    m.d.sync += self.error.eq(ErrorCode.ADDRESS)
                    m.next = "DONE"
                with m.Else():
                    m.next = "ARRIVE"
            with m.State("ARRIVE"):
                m.d.comb += [self.busy.eq(1), self.hub.arrive.eq(1), self.hub.op.eq(ins.sync_op),
                             self.hub.id.eq(ins.sync_id)]
                with m.If(self.hub.mismatch):
                    m.d.sync += self.error.eq(ErrorCode.SYNC)
                    m.next = "DONE"
                with m.Elif(self.hub.go):
                    m.d.sync += [row_i.eq(0), start.eq(ins.addr), stop.eq(ins.addr + ins.len)]
                    if multi:
                        # Every core of a GATHER meets again at FINISH, slice or not.
                        with m.If(ins.sync_op == SysOp.GATHER):
                            m.next = "ROW"
                        with m.Else():
                            m.next = "DONE"
                    else:
                        m.next = "DONE"
            if multi:
                self._copy(m, ins, rows, row_i, start, stop, q, data_reg, accepted)
            with m.State("FINISH"):
                m.d.comb += [self.busy.eq(1), self.hub.gathered.eq(1)]
                with m.If(self.hub.release):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m

    def _copy(self, m, ins, rows, row_i, start, stop, q, data_reg, accepted):
        """FSM states ROW, READ, WAIT, WRITE: copy the slice row by row, buffer row by row."""
        cfg = self.cfg
        others = cfg.cores - 1
        widths = {name: cfg.buffer(name).width for name in BUFFERS}
        with m.State("ROW"):
            m.d.comb += self.busy.eq(1)
            with m.If((row_i >= rows) | (ins.len == 0)):
                m.next = "FINISH"
            with m.Else():
                for i, name in enumerate(BUFFERS):
                    with m.If(ins.buf == i):
                        m.d.sync += q.eq(start >> (widths[name].bit_length() - 1))
                m.next = "READ"
        for name in BUFFERS:
            # Reads only: the request is the row address (driven whole, not per state).
            port = getattr(self, name)
            m.d.comb += [port.req.p.addr.eq(q), port.req.p.write.eq(0),
                         port.req.p.data.eq(0), port.req.p.be.eq(0)]
        with m.State("READ"):
            m.d.comb += self.busy.eq(1)
            for i, name in enumerate(BUFFERS):
                port = getattr(self, name)
                with m.If(ins.buf == i):
                    m.d.comb += port.req.valid.eq(1)
                    with m.If(port.req.ready):
                        m.next = "WAIT"
        with m.State("WAIT"):
            m.d.comb += self.busy.eq(1)
            for i, name in enumerate(BUFFERS):
                port = getattr(self, name)
                with m.If(ins.buf == i):
                    m.d.comb += port.rsp.ready.eq(1)
                    with m.If(port.rsp.valid):
                        m.d.sync += [data_reg.eq(port.rsp.payload), accepted.eq(0)]
                        m.next = "WRITE"
        with m.State("WRITE"):
            m.d.comb += self.busy.eq(1)
            for i, name in enumerate(BUFFERS):
                width = widths[name]
                lane_bits = width.bit_length() - 1
                base = q << lane_bits
                be = Cat(*(((base + j) >= start) & ((base + j) < stop) for j in range(width)))
                last_row = ((stop - 1) >> lane_bits) == q
                with m.If(ins.buf == i):
                    got = Signal(others, name=f"got_{name}")
                    for k, remote in enumerate(getattr(self, f"remote_{name}")):
                        m.d.comb += [remote.req.valid.eq(~accepted[k]),
                                     remote.req.p.addr.eq(q), remote.req.p.write.eq(1),
                                     remote.req.p.data.eq(data_reg[:8 * width]),
                                     remote.req.p.be.eq(be), remote.rsp.ready.eq(1),
                                     got[k].eq(accepted[k] | remote.req.ready)]
                    m.d.sync += accepted.eq(got)
                    with m.If(got.all()):
                        with m.If(last_row):
                            m.d.sync += [row_i.eq(row_i + 1), start.eq(start + ins.stride),
                                         stop.eq(stop + ins.stride)]
                            m.next = "ROW"
                        with m.Else():
                            m.d.sync += q.eq(q + 1)
                            m.next = "READ"


class SyncHub(wiring.Component):
    """The kernel-level meeting point of the cores' SYS units (``ports``, one per core)."""

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        super().__init__({"ports": In(sync_port_signature(cfg)).array(cfg.cores)})

    def elaborate(self, platform):
        m = Module()
        ports = self.ports
        arrived = Cat(*(p.arrive for p in ports)).all()
        agree = Cat(*((p.op == ports[0].op) & (p.id == ports[0].id) for p in ports)).all()
        gathered = Cat(*(p.gathered for p in ports)).all()
        for p in ports:
            m.d.comb += [p.go.eq(arrived & agree), p.mismatch.eq(arrived & ~agree),
                         p.release.eq(gathered)]
        return m
