"""The golden functional simulator: the executable specification of the accelerator.

It runs binary programs (one instruction stream per core) against a model of the HBM channels
and each core's on-chip buffers, bit-exact per contract/numerics.py, and counts what the
performance model needs. Its scheduling follows the hardware's rules: each instruction type has
an in-order queue; an instruction starts only when the tokens it waits for are there; SYS
barriers hold every core until all reach them. Because the golden model executes each
instruction atomically, a program whose dependencies are complete gives the same result here as
on any hardware interleaving.

A malformed program raises an error naming the core, the
instruction (its index and first word) and the field: bad words
(:class:`~flightllm.contract.isa.IsaDecodeError`), bad
addresses and values (:class:`ProgramError`, the base of the next two), tokens that can never arrive
(:class:`DeadlockError`), and tokens left over at the end (:class:`TokenBalanceError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.disasm import format_instruction
from flightllm.contract.isa import (
    Buffer, Instruction, LengthReg, Opcode, SysOp, apply_bindings, decode, decode_program_words,
    encode,
)
from flightllm.sim.execute import Counters, exec_matrix, exec_misc, exec_transfer
from flightllm.sim.hbm import HBM
from flightllm.sim.speed import blas_threads
from flightllm.sim.machine import CoreBuffers, ProgramError, check_size

__all__ = [
    "GoldenSimulator", "ProgramError", "DeadlockError", "TokenBalanceError",
    "Counters", "load_streams",
]

class DeadlockError(ProgramError):
    """No queue of any core can start and some instructions remain."""


class TokenBalanceError(ProgramError):
    """Tokens were released that no instruction consumed."""


@dataclass(frozen=True)
class _Slot:
    index: int  # position in the core's stream
    word: int   # index of its first word
    ins: Instruction


def load_streams(program) -> list[list[_Slot]]:
    """Decode a program: a program file's bytes, or per-core word lists, or instruction lists."""
    if isinstance(program, (bytes, bytearray)):
        key = bytes(program)
    else:
        try:
            arrays = [np.asarray(stream) for stream in program]
        except (TypeError, ValueError):
            arrays = None
        if arrays is None or any(a.size and a.dtype.kind not in "iu" for a in arrays):
            return _decode_streams(program)  # instruction lists, or not plain integer words
        key = tuple((a.dtype.str, a.tobytes()) for a in arrays)
    # Hosts run the same few programs over and over: decode each once. The slots and
    # instructions are immutable; the lists are copied so a caller may change its own.
    cached = _STREAMS.get(key)
    if cached is None:
        cached = _decode_streams(program)
        if len(_STREAMS) >= _STREAMS_MAX:
            _STREAMS.pop(next(iter(_STREAMS)))
        _STREAMS[key] = cached
    return [list(stream) for stream in cached]


_STREAMS: dict = {}
_BOUND: dict = {}
_BOUND_MAX = 1 << 17
_STREAMS_MAX = 16


def _decode_streams(program) -> list[list[_Slot]]:
    if isinstance(program, (bytes, bytearray)):
        program = decode_program_words(bytes(program))
    streams = []
    for stream in program:
        slots = []
        if stream and isinstance(stream[0], Instruction):
            word = 0
            for i, ins in enumerate(stream):
                slots.append(_Slot(i, word, ins))
                word += len(encode(ins))
        else:
            pos = 0
            while pos < len(stream):
                ins, nxt = decode(stream, pos)
                slots.append(_Slot(len(slots), pos, ins))
                pos = nxt
        streams.append(slots)
    return streams


class GoldenSimulator:
    """Functional model of a multi-core accelerator.

    Args:
        config: the accelerator configuration (buffer sizes, cores, channels).
        hbm: the HBM model; a fresh one sized from the config if omitted. Core c's local
            channel i is physical channel ``c * hbm_channels_per_core + i``.
    """

    def __init__(self, config: AcceleratorConfig, hbm: HBM | None = None):
        self.config = config
        self.hbm = hbm or HBM(config.hbm_channels_total, config.hbm_channel_bytes)
        if self.hbm.channels < config.hbm_channels_total:
            raise ValueError(f"HBM model has {self.hbm.channels} channels; the configuration "
                             f"needs {config.hbm_channels_total}")
        self.cores = [CoreBuffers(config) for _ in range(config.cores)]

    def run(self, program, *, seq: int = 1, kv: int = 1, pos: int | None = None,
            counters: Counters | None = None, order: str = "greedy",
            seed: int = 0) -> Counters:
        """Run a program to completion.

        Args:
            program: program file bytes, or one word list / instruction list per core.
            seq, kv, pos: the length registers (pos defaults to kv - seq).
            counters: counters to add to (a new set if omitted).
            order: how ready queues take turns: ``"greedy"`` (each queue runs as far as its
                tokens allow, in queue order), ``"random"`` (a seeded random ready queue at
                each step: a correct program gives the same result for every seed, so tests
                use it to expose missing tokens), or ``"program"`` (each core's stream in its
                written order, tokens ignored: the meaning the compiler intends).
            seed: the seed of ``"random"``.

        Returns:
            The counters.
        """
        streams = load_streams(program)
        if len(streams) != self.config.cores:
            raise ProgramError(f"program has {len(streams)} instruction streams; the "
                               f"configuration has {self.config.cores} cores")
        pos = kv - seq if pos is None else pos
        for name, value in (("seq", seq), ("kv", kv), ("pos", pos)):
            if not 0 <= value < 1 << 31:
                raise ValueError(f"length register {name} = {value} out of range")
        regs = {LengthReg.SEQ: seq, LengthReg.KV: kv, LengthReg.POS: pos}
        counters = counters if counters is not None else Counters()
        if order not in ("greedy", "random", "program"):
            raise ValueError(f"order {order!r} is not greedy, random or program")
        with blas_threads():
            _Run(self, streams, regs, counters, order, seed).go()
        return counters


class _Run:
    """One execution: queue heads, token counters, and the scheduling loop."""

    def __init__(self, sim: GoldenSimulator, streams, regs: Mapping[LengthReg, int],
                 counters: Counters, order: str, seed: int):
        self.sim, self.regs, self.counters = sim, regs, counters
        self.order, self.rng = order, np.random.default_rng(seed)
        self.streams = streams
        ncores = len(streams)
        # queues[c][q]: that core's instructions of type q, in program order.
        self.queues = [[[s for s in stream if s.ins.op == q] for q in Opcode]
                       for stream in streams]
        self.heads = np.zeros((ncores, len(Opcode)), dtype=np.int64)
        # tokens[c][src][dst]: tokens queue src released to queue dst, not yet consumed.
        self.tokens = np.zeros((ncores, len(Opcode), len(Opcode)), dtype=np.int64)

    def _head(self, c: int, q: int) -> _Slot | None:
        queue = self.queues[c][q]
        return queue[self.heads[c, q]] if self.heads[c, q] < len(queue) else None

    def _ready(self, c: int, slot: _Slot) -> bool:
        q = int(slot.ins.op)
        return all(self.tokens[c, src, q] > 0 for src in Opcode if slot.ins.wait >> src & 1)

    def go(self) -> None:
        if self.order == "program":
            return self._go_program_order()
        if self.order == "random":
            return self._go_random()
        ncores = len(self.queues)
        while True:
            progressed = False
            for c in range(ncores):
                for q in Opcode:
                    if q == Opcode.SYS:
                        continue
                    # Drain each queue as far as its tokens allow; order across queues is free.
                    while (slot := self._head(c, q)) is not None and self._ready(c, slot):
                        self._execute(c, slot)
                        progressed = True
            progressed |= self._sys_step()
            if not progressed:
                break
        self._finish()

    def _go_random(self) -> None:
        ncores = len(self.queues)
        while True:
            ready = [(c, q) for c in range(ncores) for q in Opcode if q != Opcode.SYS
                     and (s := self._head(c, q)) is not None and self._ready(c, s)]
            if ready:
                c, q = ready[self.rng.integers(len(ready))]
                self._execute(c, self._head(c, q))
            elif not self._sys_step():
                break
        self._finish()

    def _go_program_order(self) -> None:
        # Cores run in turn up to their next SYS, then the SYS executes as a collective.
        pos = [0] * len(self.streams)
        while True:
            for c, stream in enumerate(self.streams):
                while pos[c] < len(stream) and stream[pos[c]].ins.op != Opcode.SYS:
                    self._execute(c, stream[pos[c]], tokens=False)
                    pos[c] += 1
            if all(p == len(s) for p, s in zip(pos, self.streams)):
                return
            heads = [s[p] if p < len(s) else None for p, s in zip(pos, self.streams)]
            if any(h is None for h in heads):
                raise DeadlockError("a core ended while others wait at a SYS barrier")
            self._collective(heads, tokens=False)
            pos = [p + 1 for p in pos]

    def _sys_step(self) -> bool:
        heads = [self._head(c, Opcode.SYS) for c in range(len(self.queues))]
        if any(h is None for h in heads):
            return False  # a core without a SYS head leaves the others stuck (a deadlock)
        if not all(self._ready(c, h) for c, h in enumerate(heads)):
            return False
        self._collective(heads, tokens=True)
        return True

    def _collective(self, heads, *, tokens: bool) -> None:
        first = heads[0].ins
        for c, h in enumerate(heads):
            if (h.ins.sync_op, h.ins.sync_id) != (first.sync_op, first.sync_id):
                raise ProgramError(f"{self._where(c, h)} meets {self._where(0, heads[0])}: "
                                   f"cores disagree on the SYS sequence ("
                                   f"{SysOp(h.ins.sync_op).name} id {h.ins.sync_id} vs "
                                   f"{SysOp(first.sync_op).name} id {first.sync_id})")
        if tokens:
            for c, h in enumerate(heads):
                self._consume(c, h)
        ins = apply_bindings(first, self.regs)
        if SysOp(ins.sync_op) == SysOp.GATHER:
            self._gather(heads)
        for c, h in enumerate(heads):
            self.counters.instructions["SYS"] += 1
            if tokens:
                self._release(c, h)
            self.heads[c, Opcode.SYS] += 1

    def _gather(self, heads) -> None:
        # Each core's own instruction names the slice it broadcasts.
        slices = []
        for c, h in enumerate(heads):
            ins = apply_bindings(h.ins, self.regs)
            where = self._where(c, h)
            buf, rows = Buffer(ins.buf), max(ins.rows, 1)
            check_size(rows * ins.len, where)
            data = [self.sim.cores[c].read_bytes(buf, ins.addr + r * ins.stride, ins.len, where)
                    for r in range(rows)]
            slices.append((buf, ins, rows, data))
        for c, core in enumerate(self.sim.cores):
            for src, (buf, ins, rows, data) in enumerate(slices):
                if src != c:
                    for r in range(rows):
                        core.write_bytes(buf, ins.addr + r * ins.stride, data[r],
                                         self._where(c, heads[c]))

    def _execute(self, c: int, slot: _Slot, *, tokens: bool = True) -> None:
        if tokens:
            self._consume(c, slot)
        ins = self._bound(slot.ins)
        where = self._where(c, slot)
        core, cfg = self.sim.cores[c], self.sim.config
        try:
            if ins.op in (Opcode.LD, Opcode.ST):
                exec_transfer(ins, core, self.sim.hbm, c * cfg.hbm_channels_per_core,
                              cfg.hbm_channels_per_core, self.counters, where)
            elif ins.op in (Opcode.MM, Opcode.MV):
                exec_matrix(ins, core, self.counters, where)
            else:
                exec_misc(ins, core, self.counters, where)
        except ProgramError:
            raise
        except ValueError as exc:  # a numerics precondition (shift range, RoPE group...)
            raise ProgramError(f"{where}: {exc}") from None
        self.counters.instructions[ins.op.name] += 1
        if tokens:
            self._release(c, slot)
        self.heads[c, ins.op] += 1

    def _bound(self, ins: Instruction) -> Instruction:
        # apply_bindings, remembered per (instruction, length registers): a host runs the same
        # program at the same few lengths again and again.
        if not ins.bindings:
            return ins
        key = (id(ins), self.regs[LengthReg.SEQ], self.regs[LengthReg.KV],
               self.regs[LengthReg.POS])
        hit = _BOUND.get(key)
        if hit is None or hit[0] is not ins:
            if len(_BOUND) >= _BOUND_MAX:
                _BOUND.clear()
            hit = _BOUND[key] = (ins, apply_bindings(ins, self.regs))
        return hit[1]

    def _consume(self, c: int, slot: _Slot) -> None:
        q = int(slot.ins.op)
        for src in Opcode:
            if slot.ins.wait >> src & 1:
                self.tokens[c, src, q] -= 1

    def _release(self, c: int, slot: _Slot) -> None:
        q = int(slot.ins.op)
        for dst in Opcode:
            if slot.ins.release >> dst & 1:
                self.tokens[c, q, dst] += 1
                if self.tokens[c, q, dst] > self.sim.config.token_depth:
                    raise ProgramError(f"core {c} {self._where(c, slot)}: token counter "
                                       f"{Opcode(q).name}->{dst.name} exceeds the hardware's "
                                       f"{self.sim.config.token_depth}")

    def _where(self, c: int, slot: _Slot) -> str:
        return f"core {c} instruction #{slot.index} ({slot.ins.op.name} at word {slot.word})"

    def _finish(self) -> None:
        stuck = []
        for c in range(len(self.queues)):
            for q in Opcode:
                slot = self._head(c, q)
                if slot is not None:
                    missing = [src.name for src in Opcode
                               if slot.ins.wait >> src & 1 and self.tokens[c, src, q] <= 0]
                    why = (f"waits for a token from {'/'.join(missing)}" if missing
                           else "waits for the other cores at a SYS barrier")
                    stuck.append(f"{self._where(c, slot)} {why}: {format_instruction(slot.ins)}")
        if stuck:
            raise DeadlockError("dependency tokens can never be satisfied; stuck queue heads:\n  "
                                + "\n  ".join(stuck))
        left = np.argwhere(self.tokens != 0)
        if len(left):
            desc = ", ".join(f"core {c} {Opcode(s).name}->{Opcode(d).name}: "
                             f"{self.tokens[c, s, d]}" for c, s, d in left)
            raise TokenBalanceError(f"program ended with unconsumed tokens ({desc})")


def run_program(config: AcceleratorConfig, program, hbm: HBM | None = None,
                **lengths) -> tuple[GoldenSimulator, Counters]:
    """Convenience: a fresh simulator, one run; returns the simulator and its counters."""
    sim = GoldenSimulator(config, hbm)
    return sim, sim.run(program, **lengths)

