"""On-chip buffers (ABUF, WBUF, RBUF, PBUF) as row memories, and byte-address mapping.

Every buffer of :class:`~flightllm.contract.config.AcceleratorConfig` is a
:class:`~flightllm.contract.config.BufferSpec`: ``depth`` rows of ``width`` bytes, ``width`` a
power of two, so a byte address splits into a row (the high bits) and a byte lane (the low
``log2(width)`` bits); in RBUF, whose elements are INT32, lane ``l`` holds element ``l // 4``
of the row. :func:`split_address` does the split in Python, :func:`address_row` /
:func:`address_lane` in the hardware.

:class:`BufferMemory` is one buffer, an :class:`amaranth.lib.memory.Memory` that Amaranth (and
Yosys or Vivado after it) infers as block RAM, UltraRAM or LUT RAM, with the ports the engines
use, each one row wide:

* ``read`` (one or more): synchronous reads, data one cycle after ``en`` (the engines' wide
  operand reads; a read port holds its data while ``en`` is low);
* ``write``: byte-enabled writes (loads from HBM, result rows of Q8 instructions);
* ``acc`` (RBUF, optional): an INT32 read-modify-write port. A request writes the masked INT32
  elements of a row (``add = 0``) or adds to them with saturation, ``sat32(old + value)``
  (``add = 1``: a residual add, a partial sum merged in place). It is pipelined at one request
  per cycle; a request to the row the previous request is still writing sees that write
  (forwarded), so back-to-back accumulation into one row is exact.

Ports are physical: a block RAM or UltraRAM has two, so a buffer with more ports than that is
either replicated by the tool (extra read ports) or needs an arbiter in front (the top level's
job). Two writes to the same row in the same cycle through different ports are not ordered.

``ram_style`` is written on the memory as the ``ram_style`` attribute that Vivado and Yosys's
``synth_xilinx`` honour: ``"block"`` (BRAM36/18), ``"ultra"`` (URAM288: 4,096 x 72 bits, no
initial contents on hardware), ``"distributed"`` (LUT RAM), ``"registers"``, or ``"auto"`` (no
attribute: the tool decides). :func:`suggested_ram_style` picks UltraRAM for buffers at least
one URAM deep, block RAM otherwise.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import BufferSpec
from flightllm.contract.numerics import INT32_MAX, INT32_MIN

__all__ = [
    "RAM_STYLES", "BufferMemory", "split_address", "address_row", "address_lane",
    "suggested_ram_style", "read_port_signature", "write_port_signature",
    "acc_port_signature", "check_write_ports",
]

#: Accepted ``ram_style`` values; ``"auto"`` writes no attribute.
RAM_STYLES = ("auto", "block", "ultra", "distributed", "registers")

#: Rows of one URAM288 in its 72-bit configuration.
_URAM_DEPTH = 4096


def _check_spec(spec) -> BufferSpec:
    if not isinstance(spec, BufferSpec):
        raise TypeError(f"expected a BufferSpec, not {spec!r}")
    if spec.width < 1 or spec.width & (spec.width - 1) or spec.depth < 1:
        raise ValueError(f"buffer width must be a power of two and depth positive, not "
                         f"{spec.width} x {spec.depth}")
    return spec


def check_write_ports(spec: BufferSpec, write_ports) -> None:
    """Raise ValueError unless ``write_ports`` (banks of rows) is 1, 2 or 4 and divides the
    buffer's depth."""
    if write_ports not in (1, 2, 4) or spec.depth % write_ports:
        raise ValueError(f"write_ports must be 1, 2 or 4 and divide the depth "
                         f"({spec.depth} rows), not {write_ports!r}")


def _lane_bits(spec: BufferSpec) -> int:
    return spec.width.bit_length() - 1


def split_address(spec: BufferSpec, addr: int) -> tuple[int, int]:
    """The (row, byte lane) of byte address ``addr`` in a buffer of ``spec``.

    Raises:
        ValueError: the address is outside the buffer.
    """
    _check_spec(spec)
    if not 0 <= addr < spec.bytes:
        raise ValueError(f"byte address {addr:#x} is outside a {spec.bytes:#x}-byte buffer")
    return addr >> _lane_bits(spec), addr & (spec.width - 1)


def address_row(spec: BufferSpec, addr: Value) -> Value:
    """The row part of a byte-address value (hardware)."""
    return Value.cast(addr)[_lane_bits(_check_spec(spec)):]


def address_lane(spec: BufferSpec, addr: Value) -> Value:
    """The byte-lane part of a byte-address value (hardware)."""
    return Value.cast(addr)[:_lane_bits(_check_spec(spec))]


def suggested_ram_style(spec: BufferSpec) -> str:
    """``"ultra"`` for a buffer at least one URAM288 deep (4,096 rows), else ``"block"``."""
    return "ultra" if _check_spec(spec).depth >= _URAM_DEPTH else "block"


def read_port_signature(spec: BufferSpec) -> wiring.Signature:
    """A synchronous row read, seen from the reader: ``data`` is valid the cycle after ``en``."""
    return wiring.Signature({
        "en": Out(1), "addr": Out(range(spec.depth)), "data": In(8 * spec.width),
    })


def write_port_signature(spec: BufferSpec) -> wiring.Signature:
    """A row write with one enable per byte (``be``), seen from the writer."""
    return wiring.Signature({
        "addr": Out(range(spec.depth)), "data": Out(8 * spec.width), "be": Out(spec.width),
    })


def acc_port_signature(spec: BufferSpec) -> wiring.Signature:
    """An INT32 read-modify-write request, seen from the requester."""
    lanes = spec.width // 4
    return wiring.Signature({
        "en": Out(1), "addr": Out(range(spec.depth)),
        "data": Out(data.ArrayLayout(signed(32), lanes)), "mask": Out(lanes), "add": Out(1),
    })


class BufferMemory(wiring.Component):
    """One on-chip buffer of ``spec.depth`` rows of ``spec.width`` bytes.

    Args:
        spec: the buffer's geometry (``config.abuf`` and so on).
        read_ports: number of synchronous read ports.
        acc_port: add the INT32 read-modify-write port (RBUF); ``spec.width`` must be a
            multiple of 4.
        ram_style: one of :data:`RAM_STYLES`.
        init: initial rows (simulation, and block RAM bitstreams).
        write_ports: banks of rows, each with its own write port: row ``r`` lives in bank
            ``r mod write_ports`` and ``write[b]`` may only address rows of bank ``b`` (the
            arbiter routes them so). A read port reads every bank. ``write_ports`` must
            divide ``spec.depth``; no ``acc`` port with more than one.

    Ports:
        read (array of ``read_ports``, :func:`read_port_signature` flipped).
        write (:func:`write_port_signature` flipped; an array of ``write_ports`` when more
            than one): a byte is written when its ``be`` bit is set.
        acc (:func:`acc_port_signature` flipped), when ``acc_port``.
    """

    def __init__(self, spec: BufferSpec, *, read_ports: int = 1, acc_port: bool = False,
                 ram_style: str = "auto", init=(), write_ports: int = 1):
        _check_spec(spec)
        check_write_ports(spec, write_ports)
        if acc_port and write_ports > 1:
            raise ValueError("a banked buffer (write_ports > 1) has no accumulate port")
        self.banks = write_ports
        if not isinstance(read_ports, int) or read_ports < 0:
            raise ValueError(f"read_ports must be a non-negative integer, not {read_ports!r}")
        if ram_style not in RAM_STYLES:
            raise ValueError(f"ram_style must be one of {RAM_STYLES}, not {ram_style!r}")
        if acc_port and spec.width % 4:
            raise ValueError(f"an INT32 accumulate port needs a width that is a multiple of 4 "
                             f"bytes, not {spec.width}")
        self.spec = spec
        self.ram_style = ram_style
        self.acc_port = acc_port
        self._init = list(init)
        write = In(write_port_signature(spec))
        members = {
            "read": In(read_port_signature(spec)).array(read_ports),
            "write": write.array(write_ports) if write_ports > 1 else write,
        }
        if acc_port:
            members["acc"] = In(acc_port_signature(spec))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        spec = self.spec
        attrs = {} if self.ram_style == "auto" else {"ram_style": self.ram_style}
        if self.banks > 1:
            return self._elaborate_banks(m, attrs)
        m.submodules.mem = mem = Memory(shape=8 * spec.width, depth=spec.depth,
                                        init=self._init, attrs=attrs)

        wr = mem.write_port(granularity=8)
        m.d.comb += [wr.addr.eq(self.write.addr), wr.data.eq(self.write.data),
                     wr.en.eq(self.write.be)]

        for port in self.read:
            rd = mem.read_port()
            m.d.comb += [rd.en.eq(port.en), rd.addr.eq(port.addr), port.data.eq(rd.data)]

        if self.acc_port:
            self._elaborate_acc(m, mem)
        return m

    def _elaborate_banks(self, m, attrs):
        # Row r is row r // banks of bank r mod banks. Every read port addresses all banks and
        # keeps the bank of its last enabled read, so its data holds while en is low as a
        # single memory's does.
        spec, n = self.spec, self.banks
        bank_bits = n.bit_length() - 1
        init = self._init + [0] * (spec.depth - len(self._init)) if self._init else []
        mems = []
        for b in range(n):
            mem = Memory(shape=8 * spec.width, depth=spec.depth // n, init=init[b::n],
                         attrs=attrs)
            m.submodules[f"bank{b}"] = mem
            wr = mem.write_port(granularity=8)
            port = self.write[b]
            m.d.comb += [wr.addr.eq(port.addr[bank_bits:]), wr.data.eq(port.data),
                         wr.en.eq(port.be)]
            mems.append(mem)
        for k, port in enumerate(self.read):
            bank = Signal(bank_bits, name=f"read{k}_bank")
            with m.If(port.en):
                m.d.sync += bank.eq(port.addr[:bank_bits])
            rows = []
            for mem in mems:
                rd = mem.read_port()
                m.d.comb += [rd.en.eq(port.en), rd.addr.eq(port.addr[bank_bits:])]
                rows.append(rd.data)
            m.d.comb += port.data.eq(Array(rows)[bank])
        return m

    def _elaborate_acc(self, m, mem):
        lanes = self.spec.width // 4
        row = data.ArrayLayout(signed(32), lanes)
        req = self.acc
        rd = mem.read_port()
        wr = mem.write_port(granularity=32)
        # Stage 1 holds the request whose row is being read; its write happens in stage 1 and
        # lands at the end of that cycle, one edge after the next request's read was taken.
        s1_en, s1_add = Signal(), Signal()
        s1_addr = Signal.like(req.addr)
        s1_data = Signal(row)
        s1_mask = Signal(lanes)
        m.d.comb += [rd.en.eq(1), rd.addr.eq(req.addr)]
        m.d.sync += [s1_en.eq(req.en), s1_add.eq(req.add), s1_addr.eq(req.addr),
                     s1_data.eq(req.data), s1_mask.eq(req.mask)]

        # The previous cycle's write, forwarded to a request for the same row.
        last_en = Signal()
        last_addr = Signal.like(req.addr)
        last_data = Signal(row)
        last_mask = Signal(lanes)
        old = data.View(row, rd.data)
        new = Signal(row)
        for j in range(lanes):
            fwd = last_en & (last_addr == s1_addr) & last_mask[j]
            base = Mux(fwd, last_data[j], old[j])
            total = Signal(signed(33), name=f"sum{j}")
            m.d.comb += total.eq(base + s1_data[j])
            saturated = Mux(total > INT32_MAX, INT32_MAX, Mux(total < INT32_MIN, INT32_MIN, total))
            m.d.comb += new[j].eq(Mux(s1_add, saturated, s1_data[j]))
        m.d.comb += [wr.addr.eq(s1_addr), wr.data.eq(new),
                     wr.en.eq(Mux(s1_en, s1_mask, 0))]
        m.d.sync += [last_en.eq(s1_en), last_addr.eq(s1_addr), last_data.eq(new),
                     last_mask.eq(s1_mask)]
