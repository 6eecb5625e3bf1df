"""Running a build: prefill and decode steps on a device, and greedy generation.

A :class:`Session` holds the device state of one sequence (its KV cache lives in the device's
HBM). It embeds tokens on the host, writes the input rows, sets the length registers, runs
the program that serves the step, and reads the logits back. The golden device is the
simulator in flightllm.sim; the RTL and XRT devices plug in behind the same few calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flightllm.sim.execute import Counters
from flightllm.sim.golden import GoldenSimulator

from .build import Build, BuildError

__all__ = ["GoldenDevice", "Session", "StepResult"]


class GoldenDevice:
    """The golden functional simulator as a device: HBM images in, programs run."""

    name = "golden"

    def __init__(self, build: Build):
        self.sim = GoldenSimulator(build.config)
        self.programs = {p: build.program(p) for p in ("prefill", "decode")}
        for entry in build.manifest["hbm"]:
            phys = entry["core"] * build.config.hbm_channels_per_core + entry["channel"]
            self.sim.hbm.write(phys, 0, build.file(entry["file"]))

    def write(self, channel: int, offset: int, data: bytes) -> None:
        self.sim.hbm.write(channel, offset, data)

    def read(self, channel: int, offset: int, nbytes: int) -> bytes:
        return self.sim.hbm.read(channel, offset, nbytes).tobytes()

    def run(self, phase: str, *, seq: int, kv: int, pos: int) -> Counters:
        return self.sim.run(self.programs[phase], seq=seq, kv=kv, pos=pos)


@dataclass
class StepResult:
    logits: np.ndarray  # float [tokens, vocab]
    counters: Counters


@dataclass
class Session:
    """One sequence on one device."""

    build: Build
    device: GoldenDevice
    position: int = 0
    counters: list = field(default_factory=list)

    def _phys(self, entry: dict) -> int:
        return entry["core"] * self.build.config.hbm_channels_per_core + entry["channels"][0]

    def _step(self, phase: str, tokens: np.ndarray) -> StepResult:
        io, n = self.build.io, len(tokens)
        if self.position + n > self.build.max_len:
            raise BuildError(f"sequence of {self.position + n} tokens exceeds the build's "
                             f"max_len {self.build.max_len}")
        rows = self.build.embed(tokens, np.arange(self.position, self.position + n))
        data = rows.astype("<i4").tobytes()
        for inp in io["input"]:
            self.device.write(self._phys(inp), inp["offset"], data)
        counters = self.device.run(phase, seq=n, kv=self.position + n, pos=self.position)
        vocab = io["vocab_size"]
        logits = np.zeros((n, max(part["columns"][1] for part in io["logits"])), np.int64)
        for part in io["logits"]:
            lo, hi = part["columns"]
            if hi > lo:
                raw = self.device.read(self._phys(part), part["offset"], 4 * (hi - lo) * n)
                logits[:, lo:hi] = np.frombuffer(raw, dtype="<i4").reshape(n, hi - lo)
        self.position += n
        self.counters.append(counters)
        logits = logits[:, :vocab]
        return StepResult(logits * io["logit_scale"], counters)

    def prefill(self, tokens) -> StepResult:
        """Feed a prompt (in chunks of the prefill program's size); logits of every token."""
        tokens = np.asarray(tokens, dtype=np.int64).ravel()
        if tokens.size == 0:
            raise BuildError("the prompt is empty")
        chunk = self.build.io["chunk"]
        parts = [self._step("prefill", tokens[i:i + chunk]) for i in range(0, len(tokens), chunk)]
        return StepResult(np.concatenate([p.logits for p in parts]), parts[-1].counters)

    def decode(self, token: int) -> StepResult:
        return self._step("decode", np.array([token], dtype=np.int64))

    def generate(self, prompt, steps: int):
        """Greedy: yields (token, logits row) for the prefill's next token, then each step."""
        last = self.prefill(prompt).logits[-1]
        token = int(np.argmax(last))
        yield token, last
        for _ in range(steps):
            last = self.decode(token).logits[0]
            token = int(np.argmax(last))
            yield token, last
