"""Running a build: prefill and decode steps on a device, and greedy generation.

A :class:`Session` holds the state of one sequence on one device (its KV cache lives in the
device's HBM). Per step it embeds tokens on the host, writes the input rows into the input
region of their HBM channel, runs the program that serves the step through the
:class:`~flightllm.host.driver.Driver` (length registers, start, done, status), and reads the
logits back. Any device of :mod:`flightllm.host.devices` serves: ``GoldenDevice`` (the golden
simulator behind an emulation of the kernel's registers), ``RtlDevice`` or ``XrtDevice``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .build import Build, BuildError
from .devices import Device, GoldenDevice
from .driver import Driver, StepCounters

__all__ = ["GoldenDevice", "Session", "StepResult"]


@dataclass
class StepResult:
    """The logits (float, ``[tokens, vocab]``) of one step and what the kernel counted."""

    logits: np.ndarray
    counters: StepCounters


class Session:
    """One sequence on one device.

    Args:
        build: the loaded build.
        device: the device to run on (its configuration must be the build's).
        timeout_s: the driver's per-run timeout.
    """

    def __init__(self, build: Build, device: Device, *, timeout_s: float = 60.0):
        self.build = build
        self.device = device
        self.driver = Driver(build, device, timeout_s=timeout_s)
        self.position = 0
        #: StepCounters of every kernel run, in order.
        self.counters: list[StepCounters] = []

    def _step(self, phase: str, tokens: np.ndarray) -> StepResult:
        io, n = self.build.io, len(tokens)
        if self.position + n > self.build.max_len:
            raise BuildError(f"sequence of {self.position + n} tokens exceeds the build's "
                             f"max_len {self.build.max_len}")
        rows = self.build.embed(tokens, np.arange(self.position, self.position + n))
        data = rows.astype("<i4").tobytes()
        for inp in io["input"]:
            self.driver.write_channel(inp["core"], inp["channels"][0], inp["offset"], data)
        counters = self.driver.run(phase, seq=n, kv=self.position + n, pos=self.position)
        logits = np.zeros((n, max(part["columns"][1] for part in io["logits"])), np.int64)
        for part in io["logits"]:
            lo, hi = part["columns"]
            if hi > lo:
                raw = self.driver.read_channel(part["core"], part["channels"][0], part["offset"],
                                               4 * (hi - lo) * n)
                logits[:, lo:hi] = np.frombuffer(raw, dtype="<i4").reshape(n, hi - lo)
        self.position += n
        self.counters.append(counters)
        logits = logits[:, :io["vocab_size"]]
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
        """One decode step: the logits after ``token`` at the current position."""
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
