"""The host driver: a build on a device, through the kernel's register map.

It speaks :mod:`flightllm.contract.regmap` and the build manifest's buffer layout and nothing
else, so it is the same on every device:

- one buffer per HBM channel port, in that port's memory bank, sized to the manifest's
  placements, holding the channel's image (weights, parameters, tables) and the regions the
  kernel reads and writes (input rows, KV cache, logits);
- one instruction buffer with every phase's program, each core's stream at its own word offset;
- per run: the pointer arguments, the stream offsets and lengths of the phase, the length
  registers SEQ, KV and POS; start; done within a timeout; the ``status`` register decoded to
  :class:`~flightllm.contract.regmap.ErrorCode` (a :class:`KernelError` naming the core, the
  word and the instruction); the counters.

The driver refuses a build whose configuration hash is not the device's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flightllm.contract.disasm import format_instruction
from flightllm.contract.isa import IsaDecodeError, decode, decode_program_words
from flightllm.contract.regmap import INSTR_PORT, UNITS, ErrorCode, axi_masters, channel_port
from flightllm.sim.execute import Counters
from flightllm.sim.machine import ProgramError

from .build import Build, BuildError
from .devices import ALIGN, BankBuffer, Device, DeviceError

__all__ = ["Driver", "KernelError", "KernelTimeout", "StepCounters", "PHASES"]

#: The programs a build holds, in the order they sit in the instruction buffer.
PHASES = ("prefill", "decode")


class KernelError(ProgramError):
    """The kernel finished with a non-zero ``status``.

    Attributes:
        code: the decoded :class:`ErrorCode`.
        core, word: where the kernel says it happened (its stream and word index).
        instruction: that instruction, disassembled ('' if the word does not decode).
    """

    def __init__(self, code: ErrorCode, core: int, word: int, phase: str, instruction: str,
                 detail: str):
        self.code, self.core, self.word, self.instruction = code, core, word, instruction
        text = f"kernel error {code.name} ({int(code)}) in the {phase} program, core {core} " \
               f"word {word}"
        if instruction:
            text += f": {instruction}"
        if detail:
            text += f" [{detail}]"
        super().__init__(text)


class KernelTimeout(DeviceError):
    """The kernel did not raise done within the timeout."""


@dataclass
class StepCounters:
    """What one kernel run reported.

    Attributes:
        phase, seq, kv, pos: the program and its length registers.
        cycles: kernel cycles from start to done (None on an untimed device).
        busy: busy cycles per core and unit, ``"c0_mm"`` -> cycles (empty when untimed).
        port_bytes: bytes moved per HBM port (read + write).
        host_seconds: wall time of the run on this host (uploads and read-back excluded).
        functional: the golden simulator's counters (golden device only).
    """

    phase: str
    seq: int
    kv: int
    pos: int
    cycles: int | None
    busy: dict = field(default_factory=dict)
    port_bytes: dict = field(default_factory=dict)
    host_seconds: float = 0.0
    functional: Counters | None = None

    def to_dict(self) -> dict:
        out = self.functional.to_dict() if self.functional is not None else {}
        out.update(phase=self.phase, seq=self.seq, kv=self.kv, pos=self.pos, cycles=self.cycles,
                   busy=dict(self.busy), port_bytes=dict(self.port_bytes),
                   host_seconds=round(self.host_seconds, 6))
        return out


def _channel_extents(build: Build) -> dict[tuple[int, int], int]:
    """Bytes each (core, channel) must hold: its image and every placement in it."""
    extent: dict[tuple[int, int], int] = {}
    for entry in build.manifest["hbm"]:
        key = (entry["core"], entry["channel"])
        extent[key] = max(extent.get(key, 0), (build.path / entry["file"]).stat().st_size)
    for t in build.manifest["tensors"]:
        for ch in t["channels"]:
            key = (t["core"], ch)
            extent[key] = max(extent.get(key, 0), t["offset"] + t["bytes_per_channel"])
    return extent


class Driver:
    """A build loaded onto a device, ready to run its programs.

    Args:
        build: the loaded build.
        device: the device; its configuration must be the build's.
        timeout_s: how long one kernel run may take before :class:`KernelTimeout`.
    """

    def __init__(self, build: Build, device: Device, *, timeout_s: float = 60.0):
        want, have = build.manifest["config_hash"], device.config.config_hash()
        if want != have:
            raise BuildError(f"{build.path}: compiled for configuration {build.config.name} "
                             f"(hash {want}); the {device.name} device's kernel is built for "
                             f"{device.config.name} (hash {have}): recompile the build with "
                             f"that configuration, or use a device built for this one")
        self.build, self.device, self.timeout_s = build, device, timeout_s
        self.regmap = device.regmap
        self.buffers: dict[str, BankBuffer] = {}
        self._place_channels()
        self.streams: dict[str, list[list[int]]] = {}
        self.offsets: dict[str, list[int]] = {}
        self.load_programs({phase: build.program(phase) for phase in PHASES})

    # ---- placement
    def _place_channels(self) -> None:
        cfg = self.build.config
        extents = _channel_extents(self.build)
        for m in axi_masters(cfg)[1:]:
            size = extents.get((m.core, m.channel), 0)
            # Every pointer argument needs a buffer, even a channel the build leaves empty.
            self.buffers[m.name] = self.device.allocate(m.name, max(-(-size // ALIGN), 1) * ALIGN)
        for entry in self.build.manifest["hbm"]:
            port = channel_port(entry["core"], entry["channel"], cfg)
            self.device.write(self.buffers[port], 0, self.build.file(entry["file"]))

    def load_programs(self, programs: dict[str, bytes]) -> None:
        """Upload program files (by phase): every loaded phase's streams, back to back, in one
        new instruction buffer (the kernel finds programs only through its ``instr`` pointer)."""
        new = {phase: decode_program_words(data) for phase, data in programs.items()}
        for phase, per_core in new.items():
            if len(per_core) != self.build.config.cores:
                raise BuildError(f"the {phase} program has {len(per_core)} instruction streams; "
                                 f"the kernel has {self.build.config.cores} cores")
        streams = {**self.streams, **new}  # phases not given keep their program
        words, offsets = [], {}
        for phase, per_core in streams.items():
            offsets[phase] = []
            for stream in per_core:
                offsets[phase].append(len(words))
                words += stream
        self.buffers[INSTR_PORT] = self.device.allocate(INSTR_PORT, max(4 * len(words), 4))
        self.device.write(self.buffers[INSTR_PORT], 0,
                          b"".join(w.to_bytes(4, "little") for w in words))
        self.streams, self.offsets = streams, offsets

    # ---- channel access by the manifest's (core, channel) coordinates
    def channel_buffer(self, core: int, channel: int) -> BankBuffer:
        """The buffer of a core's HBM channel."""
        return self.buffers[channel_port(core, channel, self.build.config)]

    def write_channel(self, core: int, channel: int, offset: int, data: bytes) -> None:
        self.device.write(self.channel_buffer(core, channel), offset, data)

    def read_channel(self, core: int, channel: int, offset: int, nbytes: int) -> bytes:
        return self.device.read(self.channel_buffer(core, channel), offset, nbytes)

    # ---- one kernel run
    def run(self, phase: str, *, seq: int, kv: int, pos: int) -> StepCounters:
        """Run a phase's program with the given length registers; its counters.

        Raises:
            KernelError: the kernel reported an error status.
            KernelTimeout: no done within the timeout.
        """
        if phase not in self.streams:
            raise BuildError(f"no {phase} program is loaded (have: {', '.join(self.streams)})")
        dev = self.device
        for name, buf in self.buffers.items():
            dev.write_register(name, buf)
        for core, (first, stream) in enumerate(zip(self.offsets[phase], self.streams[phase])):
            dev.write_register(f"prog_offset_c{core}", first)
            dev.write_register(f"prog_words_c{core}", len(stream))
        for name, value in (("seq", seq), ("kv", kv), ("pos", pos)):
            dev.write_register(name, value)
        t0 = time.perf_counter()
        dev.start()
        if not dev.wait(self.timeout_s):
            detail = dev.error_detail()
            raise KernelTimeout(f"the {phase} program (seq {seq}, kv {kv}, pos {pos}) did not "
                                f"finish on the {dev.name} device "
                                + (f"({detail})" if detail else f"within {self.timeout_s} s"))
        seconds = time.perf_counter() - t0
        self._check_status(phase)
        return self._counters(phase, seq, kv, pos, seconds)

    def _check_status(self, phase: str) -> None:
        status = self.device.read_register("status")
        if status == ErrorCode.NONE:
            return
        core = self.device.read_register("error_core")
        word = self.device.read_register("error_word")
        try:
            code = ErrorCode(status)
        except ValueError:
            raise DeviceError(f"the {self.device.name} device reports status {status}, which is "
                              f"no ErrorCode ({', '.join(c.name for c in ErrorCode)})") from None
        raise KernelError(code, core, word, phase, self._instruction_at(phase, core, word),
                          self.device.error_detail())

    def _instruction_at(self, phase: str, core: int, word: int) -> str:
        streams = self.streams[phase]
        if not (0 <= core < len(streams) and 0 <= word < len(streams[core])):
            return ""
        try:
            return format_instruction(decode(streams[core], word)[0])
        except IsaDecodeError:
            return f"undecodable word {streams[core][word]:#010x}"

    def _counters(self, phase, seq, kv, pos, seconds) -> StepCounters:
        dev, cfg = self.device, self.build.config
        busy = {}
        if dev.timed:
            busy = {f"c{c}_{u}": dev.read_register(f"busy_c{c}_{u}")
                    for c in range(cfg.cores) for u in UNITS}
        port_bytes = {m.name: dev.read_register(f"bytes_{m.name}") for m in axi_masters(cfg)[1:]}
        return StepCounters(phase, seq, kv, pos,
                            dev.read_register("cycles") if dev.timed else None,
                            busy, port_bytes, seconds, dev.functional_counters())
