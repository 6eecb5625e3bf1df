"""Devices the host driver runs the kernel on: one small interface, three implementations.

A device is what the host sees of one compute unit of the kernel: buffers in the memory banks
its AXI masters reach, the AXI4-Lite registers of :mod:`flightllm.contract.regmap`, and
start/wait. The driver (:mod:`flightllm.host.driver`) speaks only this interface, so the same
driver code runs on:

- ``golden``: a register-level emulation of the kernel. A start reads the program and the
  arguments back from its registers and memories, exactly as the RTL would, and executes them on
  :class:`~flightllm.sim.golden.GoldenSimulator`; errors become the ``status`` register.
- ``rtl``: the same emulated registers and memories, but a start simulates the generated RTL
  kernel (``flightllm.sim.rtl.run_kernel``, one kernel start per call).
- ``xrt``: a real board through XRT's Python bindings (``pyxrt``), imported only when chosen.

Each device knows the accelerator configuration its kernel was built for; the driver refuses a
build compiled for another.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import IsaDecodeError
from flightllm.contract.regmap import (
    CtrlBit, ErrorCode, INSTR_PORT, axi_masters, register_map,
)
from flightllm.sim.execute import Counters
from flightllm.sim.golden import (
    DeadlockError, GoldenSimulator, ProgramError, TokenBalanceError, load_streams,
)
from flightllm.sim.hbm import HBM, HBMError

__all__ = [
    "BankBuffer", "Device", "DeviceError", "GoldenDevice", "RtlDevice", "XrtDevice",
    "BANK_STRIDE", "KERNEL_NAME",
]

#: Emulated devices give each AXI master's bank its own address window of this size, so a
#: pointer register's value says which bank it designates (as on a board's address map).
BANK_STRIDE = 1 << 36
#: Buffers start on 4 KiB boundaries (XRT's allocation granule).
ALIGN = 4096
#: Name of the kernel in the xclbin.
KERNEL_NAME = "flightllm"


class DeviceError(RuntimeError):
    """A device cannot be opened or used: missing runtime, bad argument, no response."""


@dataclass
class BankBuffer:
    """A buffer in the memory bank that AXI master ``port`` reaches.

    Attributes:
        port: the AXI master (and pointer argument) name: ``instr``, ``hbm00``...
        size: bytes.
        address: device address of byte 0 (what a pointer register holds).
        handle: the implementation's object (an ``HBM`` store, a ``pyxrt.bo``).
    """

    port: str
    size: int
    address: int
    handle: Any = field(repr=False)


class Device(ABC):
    """What the driver needs of a device. ``config`` is the configuration the kernel was built
    for; ``regmap`` is derived from it."""

    name: str = "device"
    #: Whether the ``cycles`` and ``busy_*`` counters measure anything on this device.
    timed: bool = True

    def __init__(self, config: AcceleratorConfig):
        self.config = config
        self.regmap = register_map(config)
        self._ports = {m.name: i for i, m in enumerate(axi_masters(config))}

    def _check_port(self, port: str) -> None:
        if port not in self._ports:
            raise DeviceError(f"no AXI master {port!r} on a kernel for configuration "
                              f"{self.config.name} (ports: {', '.join(self._ports)})")

    @abstractmethod
    def allocate(self, port: str, nbytes: int) -> BankBuffer:
        """A zeroed buffer of ``nbytes`` in the bank that ``port`` reaches."""

    @abstractmethod
    def write(self, buf: BankBuffer, offset: int, data: bytes) -> None:
        """Copy host bytes to the device buffer at ``offset`` (synced to the device)."""

    @abstractmethod
    def read(self, buf: BankBuffer, offset: int, nbytes: int) -> bytes:
        """Device bytes at ``offset`` of the buffer (synced from the device first)."""

    @abstractmethod
    def write_register(self, name: str, value: int | BankBuffer) -> None:
        """Set a writable register; a pointer argument takes the buffer it designates."""

    @abstractmethod
    def read_register(self, name: str) -> int:
        """A register's value (64-bit registers are read as their two words)."""

    @abstractmethod
    def start(self) -> None:
        """Start one kernel run with the arguments written so far."""

    @abstractmethod
    def wait(self, timeout_s: float) -> bool:
        """Wait for the run to finish; False if it did not within ``timeout_s``."""

    def functional_counters(self) -> Counters | None:
        """What a functional model counted in the last run (only the golden device has one)."""
        return None

    def error_detail(self) -> str:
        """A device's own description of the last run's error, if it has one."""
        return ""


# --------------------------------------------------------------------------- emulated kernels
class _EmulatedKernel(Device):
    """Registers and bank memories held in Python; a start executes synchronously.

    Subclasses implement :meth:`_execute`, which reads the arguments from the registers and
    memories and leaves the status and counter registers as the kernel would."""

    def __init__(self, config: AcceleratorConfig):
        super().__init__(config)
        self.registers = {r.name: 0 for r in self.regmap}
        self.registers["ctrl"] = 1 << CtrlBit.IDLE
        self.buffers: list[BankBuffer] = []
        self._next = {port: 0 for port in self._ports}
        self._detail = ""

    def allocate(self, port: str, nbytes: int) -> BankBuffer:
        self._check_port(port)
        if nbytes <= 0:
            raise DeviceError(f"cannot allocate {nbytes} bytes for {port}")
        offset = self._next[port]
        self._next[port] = offset + -(-nbytes // ALIGN) * ALIGN
        buf = BankBuffer(port, nbytes, self._ports[port] * BANK_STRIDE + offset,
                         HBM(1, nbytes))
        self.buffers.append(buf)
        return buf

    def write(self, buf: BankBuffer, offset: int, data: bytes) -> None:
        try:
            buf.handle.write(0, offset, data)
        except HBMError as exc:
            raise DeviceError(f"{buf.port} buffer: {exc}") from None

    def read(self, buf: BankBuffer, offset: int, nbytes: int) -> bytes:
        try:
            return buf.handle.read(0, offset, nbytes).tobytes()
        except HBMError as exc:
            raise DeviceError(f"{buf.port} buffer: {exc}") from None

    def write_register(self, name: str, value: int | BankBuffer) -> None:
        reg = self.regmap[name]
        if not reg.writable:
            raise DeviceError(f"register {name} ({reg.kind}) is read-only")
        if isinstance(value, BankBuffer):
            if reg.kind != "pointer":
                raise DeviceError(f"register {name} is a {reg.kind}, not a pointer")
            value = value.address
        self.registers[name] = int(value) & ((1 << reg.bits) - 1)

    def read_register(self, name: str) -> int:
        value = self.registers[self.regmap[name].name]
        if name == "ctrl":  # ap_done is clear-on-read
            self.registers["ctrl"] &= ~(1 << CtrlBit.DONE)
        return value

    def start(self) -> None:
        if not self.registers["ctrl"] >> CtrlBit.IDLE & 1:
            raise DeviceError(f"{self.name} device: start while the kernel is running")
        self.registers["ctrl"] = 1 << CtrlBit.START
        for reg in self.regmap:
            if reg.kind in ("status", "counter"):
                self.registers[reg.name] = 0
        self._detail = ""
        if self._execute():
            self.registers["ctrl"] = sum(1 << b for b in (CtrlBit.DONE, CtrlBit.IDLE,
                                                           CtrlBit.READY))

    def wait(self, timeout_s: float) -> bool:
        # Runs are synchronous: by now the kernel has finished or given up (its watchdog).
        return bool(self.registers["ctrl"] >> CtrlBit.DONE & 1)

    def error_detail(self) -> str:
        return self._detail

    @abstractmethod
    def _execute(self) -> bool:
        """Run the kernel on the current registers and memories; False if it never finished."""

    # ---- what the kernel's AXI masters see
    def _resolve(self, port: str, address: int) -> tuple[BankBuffer, int] | None:
        """The buffer (and offset in it) that ``address`` falls in, if it is in ``port``'s
        bank; None otherwise (the interconnect would answer DECERR)."""
        for buf in self.buffers:
            if buf.port == port and buf.address <= address < buf.address + buf.size:
                return buf, address - buf.address
        return None

    def _fail(self, code: ErrorCode, core: int, word: int, detail: str) -> None:
        self.registers.update(status=int(code), error_core=core, error_word=word)
        self._detail = detail

    def _fetch_streams(self) -> list[list[int]] | None:
        """Each core's instruction words, fetched through the instruction port."""
        streams = []
        for core in range(self.config.cores):
            first = self.registers[f"prog_offset_c{core}"]
            count = self.registers[f"prog_words_c{core}"]
            where = self._resolve(INSTR_PORT, self.registers[INSTR_PORT] + 4 * first)
            if where is None or where[1] + 4 * count > where[0].size:
                self._fail(ErrorCode.AXI, core, 0,
                           f"core {core}: instruction fetch of {count} words at word {first} "
                           f"falls outside every instruction buffer")
                return None
            buf, offset = where
            streams.append(np.frombuffer(self.read(buf, offset, 4 * count), "<u4").tolist())
        return streams

    def _channel_bindings(self) -> list[tuple[BankBuffer, int]] | None:
        """The buffer and base offset each HBM port's pointer designates, in global order."""
        bound = []
        for m in axi_masters(self.config)[1:]:
            where = self._resolve(m.name, self.registers[m.name])
            if where is None:
                self._fail(ErrorCode.AXI, m.core, 0,
                           f"pointer {m.name} = {self.registers[m.name]:#x} is not in a buffer of "
                           f"{m.name}'s memory bank")
                return None
            bound.append(where)
        return bound


class _BoundChannels:
    """The HBM as the simulator sees it: channel i is the buffer the i-th port's pointer
    designates, from that pointer on."""

    def __init__(self, bindings: list[tuple[BankBuffer, int]]):
        self.bindings = bindings
        self.channels = len(bindings)

    def _at(self, channel: int, addr: int, length: int) -> tuple[HBM, int]:
        buf, base = self.bindings[channel]
        if addr < 0 or length < 0 or base + addr + length > buf.size:
            raise HBMError(f"HBM channel {channel}: bytes [{addr:#x}, {addr + length:#x}) lie "
                           f"outside the {buf.size - base:#x} bytes its pointer gives")
        return buf.handle, base + addr

    def read(self, channel: int, addr: int, length: int):
        store, at = self._at(channel, addr, length)
        return store.read(0, at, length)

    def write(self, channel: int, addr: int, data) -> None:
        store, at = self._at(channel, addr, len(data))
        store.write(0, at, data)


#: How the golden simulator's errors map to the kernel's status codes. The simulator reports
#: an error as an exception with a message naming the instruction; the RTL reports a code and
#: where. Checked in order; the first match wins.
_ERROR_CODES: list[tuple[type, str, ErrorCode]] = [
    (DeadlockError, "", ErrorCode.TIMEOUT),        # the watchdog's view of a deadlock
    (TokenBalanceError, "", ErrorCode.TOKENS),
    (ProgramError, "token counter", ErrorCode.TOKENS),
    (ProgramError, "disagree on the SYS", ErrorCode.SYNC),
    (ProgramError, "outside", ErrorCode.ADDRESS),
    (ProgramError, "run past", ErrorCode.ADDRESS),
    (ProgramError, "aligned", ErrorCode.ADDRESS),
    (ProgramError, "field 'chan'", ErrorCode.ADDRESS),
    (ProgramError, "", ErrorCode.DECODE),          # any other bad field value
]
_WHERE = re.compile(r"core (\d+) instruction #\d+ \(\w+ at word (\d+)\)")
_CORE = re.compile(r"core (\d+)")


def _classify(exc: ProgramError, streams) -> tuple[ErrorCode, int, int]:
    """Status code, core and word for a simulator error; an error with no instruction (tokens
    left at the end) points one past the core's last word."""
    code = next(c for cls, text, c in _ERROR_CODES if isinstance(exc, cls) and text in str(exc))
    if m := _WHERE.search(str(exc)):
        return code, int(m[1]), int(m[2])
    core = int(m[1]) if (m := _CORE.search(str(exc))) else 0
    return code, core, len(streams[core]) if core < len(streams) else 0


class GoldenDevice(_EmulatedKernel):
    """The golden simulator behind a register-level emulation of the kernel.

    Args:
        config: the configuration the emulated kernel is built for (a :class:`Build` gives its
            own, for callers that just want to run a build).
        order, seed: the simulator's queue order (``"random"`` exposes missing tokens).
    """

    name = "golden"
    timed = False  # a functional model: no cycles

    def __init__(self, config, *, order: str = "greedy", seed: int = 0):
        config = getattr(config, "config", config)  # a Build stands for its configuration
        super().__init__(config)
        self.sim = GoldenSimulator(config)
        self.order, self.seed = order, seed
        self._counters: Counters | None = None
        self._decodable: set[tuple] = set()  # streams already checked to decode

    def functional_counters(self) -> Counters | None:
        return self._counters

    def _execute(self) -> bool:
        self._counters = None
        streams = self._fetch_streams()
        if streams is None:
            return True
        bindings = self._channel_bindings()
        if bindings is None:
            return True
        for core, words in enumerate(streams):
            key = tuple(words)
            if key in self._decodable:
                continue
            try:  # decode per core here: the simulator's decode error does not name the core
                load_streams([words])
            except IsaDecodeError as exc:
                self._fail(ErrorCode.DECODE, core, exc.word_index, f"core {core} {exc}")
                return True
            self._decodable.add(key)
        self.sim.hbm = _BoundChannels(bindings)
        regs = {k: self.registers[k] for k in ("seq", "kv", "pos")}
        try:
            counters = self.sim.run(streams, order=self.order, seed=self.seed, **regs)
        except ProgramError as exc:
            self._fail(*_classify(exc, streams), str(exc))
            return True
        for m in axi_masters(self.config)[1:]:
            phys = m.core * self.config.hbm_channels_per_core + m.channel
            self.registers[f"bytes_{m.name}"] = (counters.hbm_read_bytes[phys]
                                                 + counters.hbm_write_bytes[phys])
        self._counters = counters
        return True


class RtlDevice(_EmulatedKernel):
    """The generated RTL kernel in simulation behind the same emulated registers and memories.

    Each start calls ``run_kernel(config, buffers=..., args=..., timeout_cycles=...)``: the
    buffers are the whole bank buffers the pointer arguments designate (by port name; each is
    that port's memory from address 0), the arguments every argument register by name, a
    pointer's value being its offset into the buffer passed for it. The returned buffers are
    copied back and its registers become the device's status and counters. A simulation that
    ends without done (``KernelRunError``) leaves the device not done.

    Args:
        config: the configuration of the RTL kernel.
        run_kernel: the simulation entry point (default ``flightllm.sim.rtl.run_kernel``).
        timeout_cycles: the simulation's cycle budget per start.
    """

    name = "rtl"

    def __init__(self, config: AcceleratorConfig, *, run_kernel: Callable | None = None,
                 timeout_cycles: int = 2_000_000):
        super().__init__(getattr(config, "config", config))
        try:
            rtl = importlib.import_module("flightllm.sim.rtl")
        except ImportError as exc:
            if run_kernel is None:
                raise DeviceError(f"the rtl device needs flightllm.sim.rtl.run_kernel, which "
                                  f"cannot be imported here ({exc})") from None
            rtl = None
        self._run_kernel = run_kernel or rtl.run_kernel
        # The simulation raises this when the kernel never raises done (or cannot run).
        self._run_errors = (rtl.KernelRunError,) if rtl is not None else ()
        self.timeout_cycles = timeout_cycles

    def _execute(self) -> bool:
        bindings = {}
        for reg in self.regmap.arguments:
            if reg.kind == "pointer":
                where = self._resolve(reg.name, self.registers[reg.name])
                if where is None:
                    self._fail(ErrorCode.AXI, 0, 0, f"pointer {reg.name} = "
                               f"{self.registers[reg.name]:#x} is not in a buffer of its bank")
                    return True
                bindings[reg.name] = where
        buffers = {port: self.read(buf, 0, buf.size) for port, (buf, _) in bindings.items()}
        args = {reg.name: bindings[reg.name][1] if reg.kind == "pointer"
                else self.registers[reg.name] for reg in self.regmap.arguments}
        try:
            run = self._run_kernel(self.config, buffers=buffers, args=args,
                                   timeout_cycles=self.timeout_cycles)
        except self._run_errors as exc:
            self._detail = str(exc)
            return False
        for port, data in run.buffers.items():
            buf = bindings[port][0]
            self.write(buf, 0, bytes(data)[:buf.size])
        for name, value in run.registers.items():
            if name in self.regmap and self.regmap[name].kind in ("status", "counter"):
                self.registers[name] = int(value)
        self.registers["cycles"] = int(run.cycles)
        return True


# --------------------------------------------------------------------------- XRT
class XrtDevice(Device):
    """A board through XRT's Python bindings.

    Buffers are ``pyxrt.bo`` objects in the memory group of their port's kernel argument
    (``kernel.group_id``); arguments are set on an ``xrt.run`` in the register map's argument
    order (the order ``kernel.xml`` declares them); status and counters are read with
    ``kernel.read_register``, which needs the compute unit opened for exclusive access.

    Args:
        xclbin: path of the bitstream container.
        config: the configuration the bitstream was built for.
        device_index: which XRT device to open.
        kernel_name: the kernel's name in the xclbin.
    """

    name = "xrt"

    def __init__(self, xclbin, config: AcceleratorConfig, *, device_index: int = 0,
                 kernel_name: str = KERNEL_NAME):
        super().__init__(config)
        try:
            self.xrt = importlib.import_module("pyxrt")
        except ImportError:
            raise DeviceError("the xrt device needs XRT's Python bindings (the pyxrt module), "
                              "which this Python cannot import: install XRT and source "
                              "/opt/xilinx/xrt/setup.sh, or choose --device golden or rtl"
                              ) from None
        xrt = self.xrt
        self.device = xrt.device(device_index)
        self.uuid = self.device.load_xclbin(str(xclbin))
        self.kernel = xrt.kernel(self.device, self.uuid, kernel_name,
                                 xrt.kernel.cu_access_mode.exclusive)
        self._arg_index = {r.name: i for i, r in enumerate(self.regmap.arguments)}
        self._args: dict[int, Any] = {}
        self._run = None

    def allocate(self, port: str, nbytes: int) -> BankBuffer:
        self._check_port(port)
        group = self.kernel.group_id(self._arg_index[port])
        bo = self.xrt.bo(self.device, nbytes, self.xrt.bo.flags.normal, group)
        return BankBuffer(port, nbytes, bo.address(), bo)

    def write(self, buf: BankBuffer, offset: int, data: bytes) -> None:
        buf.handle.write(data, offset)
        buf.handle.sync(self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(data), offset)

    def read(self, buf: BankBuffer, offset: int, nbytes: int) -> bytes:
        buf.handle.sync(self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, nbytes, offset)
        return np.asarray(buf.handle.read(nbytes, offset)).tobytes()

    def write_register(self, name: str, value: int | BankBuffer) -> None:
        reg = self.regmap[name]
        if not reg.is_argument:
            raise DeviceError(f"register {name}: XRT owns the control registers; only kernel "
                              "arguments are written by the host")
        self._args[self._arg_index[name]] = value.handle if isinstance(value, BankBuffer) \
            else int(value)

    def read_register(self, name: str) -> int:
        reg = self.regmap[name]
        value = self.kernel.read_register(reg.offset) & 0xFFFFFFFF
        if reg.bits == 64:
            value |= (self.kernel.read_register(reg.offset + 4) & 0xFFFFFFFF) << 32
        return value

    def start(self) -> None:
        missing = [r.name for i, r in enumerate(self.regmap.arguments) if i not in self._args]
        if missing:
            raise DeviceError(f"kernel arguments not set before start: {', '.join(missing)}")
        run = self.xrt.run(self.kernel)
        for index in range(len(self.regmap.arguments)):
            run.set_arg(index, self._args[index])
        run.start()
        self._run = run

    def wait(self, timeout_s: float) -> bool:
        if self._run is None:
            raise DeviceError("wait without a started run")
        state = self._run.wait(max(int(timeout_s * 1000), 1))
        states = self.xrt.ert_cmd_state
        if state == states.ERT_CMD_STATE_COMPLETED:
            return True
        if state in (states.ERT_CMD_STATE_ERROR, states.ERT_CMD_STATE_ABORT):
            raise DeviceError(f"XRT reports the run in state {getattr(state, 'name', state)}")
        return False
