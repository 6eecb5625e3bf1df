"""Pure-Python half of the SFU testbenches: random MISC instructions, the reference, the
stream beats, the checker. Nothing here imports cocotb, so pytest uses it directly.

The reference is the golden simulator itself: every case is a MISC instruction run by
``flightllm.sim.execute.exec_misc`` on a :class:`~flightllm.sim.machine.CoreBuffers` (which
calls the ``flightllm.contract.numerics`` functions), and the expected beats are the rows it
wrote to the destination (softmax zero fill included) and, for deferred softmax, to ``b_addr``.
The stream beats are this file's own reading of the source buffers (the future buffer engine's
job: rows, the row scalar, the norm parameters, the RoPE table expanded per element), so a
disagreement with the golden simulator's reading fails the check too. :func:`random_cases`
keeps generating until every variant has its element quota and every named corner
(:func:`required_corners`) has been reached.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from flightllm.contract import numerics as nm
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, Opcode
from flightllm.contract.params import norm_beta_offset, pack_norm_params, pack_rope_rows
from flightllm.sim.execute import Counters, exec_misc
from flightllm.sim.machine import ELEMENT_BYTES, CoreBuffers

#: Case variants: (label, function, fixed flags). Every label must reach the element quota.
VARIANTS = (
    ("REQUANT", MiscFunc.REQUANT, {}),
    ("ADD", MiscFunc.ADD, {}),
    ("MUL", MiscFunc.MUL, {}),
    ("MUL_ROWSCALAR", MiscFunc.MUL, {"rowscalar": 1}),
    ("SILU", MiscFunc.SILU, {}),
    ("GELU_TANH", MiscFunc.GELU_TANH, {}),
    ("GELU_ERF", MiscFunc.GELU_ERF, {}),
    ("RELU", MiscFunc.RELU, {}),
    ("SOFTMAX", MiscFunc.SOFTMAX, {}),
    ("SOFTMAX_DEFER", MiscFunc.SOFTMAX, {"defer": 1}),
    ("RMSNORM", MiscFunc.RMSNORM, {}),
    ("LAYERNORM", MiscFunc.LAYERNORM, {}),
    ("ROPE", MiscFunc.ROPE, {}),
    ("ROPE_INTERLEAVED", MiscFunc.ROPE, {"interleaved": 1}),
)
VARIANT_NAMES = tuple(v[0] for v in VARIANTS)

#: Byte offsets of the operands inside each buffer (tiny: ABUF 32 KiB, RBUF 64 KiB).
A_ADDR, B_ADDR, D_ADDR = 0, 1 << 13, 1 << 14
MAX_CASE_ELEMENTS = 2048
_INT32_EXTREMES = (nm.INT32_MIN, nm.INT32_MIN + 1, -1, 0, 1, nm.INT32_MAX)


@dataclass
class SFUCase:
    """One MISC instruction with its operands and the golden simulator's results."""

    label: str
    ins: Instruction
    a: np.ndarray                 # [m, n]
    b: np.ndarray | None          # [m, n], [m, 1] (row scalar) or None
    params: np.ndarray | None     # [m, n, 2]: per element (p0, p1)
    expected: np.ndarray          # [m, count]: the destination rows
    recip: np.ndarray | None      # [m]: deferred softmax reciprocals

    @property
    def elements(self) -> int:
        return self.ins.m * self.ins.n


# --------------------------------------------------------------------------- random values
def _int32(rng, shape, style=None) -> np.ndarray:
    style = style or rng.choice(["small", "full", "extreme", "wide", "mixed"])
    if style == "small":
        return rng.integers(-1000, 1001, shape)
    if style == "full":
        return rng.integers(nm.INT32_MIN, nm.INT32_MAX + 1, shape)
    if style == "extreme":
        return rng.choice(_INT32_EXTREMES, shape)
    if style == "wide":
        return np.clip(np.round(rng.normal(0, 10 ** rng.uniform(1, 9), shape)),
                       nm.INT32_MIN, nm.INT32_MAX).astype(np.int64)
    parts = [_int32(rng, shape, s) for s in ("small", "full", "extreme", "wide")]
    pick = rng.integers(0, 4, shape)
    return np.choose(pick, parts)


def _values(rng, shape, buf: Buffer, style=None) -> np.ndarray:
    if buf == Buffer.ABUF:
        return rng.integers(-128, 128, shape)
    return _int32(rng, shape, style)


def _mult(rng) -> int:
    r = rng.random()
    if r < 0.25:
        return int(rng.choice([-32768, 32767, -1, 0, 1, 16384]))
    if r < 0.6:
        return int(rng.integers(-32768, 32768))
    return nm.quantize_multiplier(float(rng.uniform(0.01, 1.0) * rng.choice([-1, 1])))[0]


def _shift(rng, hi: int = 62) -> int:
    r = rng.random()
    if r < 0.2:
        return int(rng.choice([0, 1, hi]))
    if r < 0.6:
        return int(rng.integers(10, min(hi, 40) + 1))
    return int(rng.integers(0, hi + 1))


def _shape(rng, lanes: int) -> tuple[int, int]:
    m = int(rng.integers(1, 6))
    r = rng.random()
    if r < 0.15:
        n = int(rng.integers(1, lanes + 1))
    elif r < 0.85:
        n = int(rng.integers(1, 80))
    else:
        n = int(rng.integers(80, 300))
    m = max(1, min(m, MAX_CASE_ELEMENTS // n))
    return m, n


# --------------------------------------------------------------------------- cases
def _bits(values) -> int:
    """Bit length of the largest magnitude in ``values``."""
    return int(np.max(np.abs(np.asarray(values, np.int64)), initial=0)).bit_length()


def _near(rng, bits: int, out_bits: int, hi: int = 62) -> int:
    """A shift that brings a ``bits``-bit value to about the edge of an ``out_bits`` result,
    so that some outputs saturate and some do not."""
    return int(np.clip(bits - out_bits + 1 + rng.integers(-3, 4), 0, hi))


def random_case(rng, label: str, lanes: int, *, shape: tuple[int, int] | None = None,
                group: int | None = None) -> SFUCase:
    """A random MISC instruction of the given variant, run by the golden simulator.

    Half of the output shifts are chosen near the destination's saturation edge.

    Args:
        shape: ``(m, n)``; random (many rows of varied lengths) when not given.
        group: the RoPE head dimension; random when not given (must divide ``n``).
    """
    _, func, flags = next(v for v in VARIANTS if v[0] == label)
    m, n = shape or _shape(rng, lanes)
    fields = dict(flags, func=int(func))
    d_buf = Buffer(rng.choice([Buffer.ABUF, Buffer.RBUF]))
    out_bits = 8 if d_buf == Buffer.ABUF else 32
    near = rng.random() < 0.5
    a_buf, a, b, pbuf = Buffer.RBUF, None, None, b""
    if func in (MiscFunc.REQUANT, MiscFunc.ADD, MiscFunc.MUL):
        a_buf = Buffer(rng.choice([Buffer.ABUF, Buffer.RBUF], p=[0.3, 0.7]))
        a = _values(rng, (m, n), a_buf)
        m1, m2 = _mult(rng), _mult(rng)
        s1, s2 = _shift(rng), _shift(rng, 16 if func == MiscFunc.ADD else 62)
        if func != MiscFunc.REQUANT:
            b_buf = Buffer(rng.choice([Buffer.ABUF, Buffer.RBUF], p=[0.3, 0.7]))
            fields["b_buf"] = int(b_buf)
            b = _values(rng, (m, 1 if flags.get("rowscalar") else n), b_buf)
        if func == MiscFunc.ADD and rng.random() < 0.5:
            ra, rb = (float(10 ** rng.uniform(-6, 1)) for _ in range(2))
            _, m1, s1, m2, s2 = nm.add_multipliers(ra, rb)
        if near and func == MiscFunc.REQUANT:
            s1 = _near(rng, _bits(a) + _bits(m1), out_bits)
        elif near and func == MiscFunc.ADD:
            s1 = _near(rng, max(_bits(a) + _bits(m1), _bits(b) + _bits(m2) + s2), out_bits)
        elif near:
            s1 = _near(rng, _bits(a) + _bits(b), 32)
            s2 = _near(rng, 31 + _bits(m2), out_bits)
        fields.update(m1=m1, s1=min(s1, 62), m2=m2, s2=s2)
    elif func in (MiscFunc.SILU, MiscFunc.GELU_TANH, MiscFunc.GELU_ERF, MiscFunc.RELU):
        a_buf = Buffer(rng.choice([Buffer.ABUF, Buffer.RBUF], p=[0.2, 0.8]))
        m1, s1, m2, s2 = _mult(rng), _shift(rng), _mult(rng), _shift(rng)
        if rng.random() < 0.6:        # inputs that sweep the gate table and beyond
            scale = float(10 ** rng.uniform(-6, -1))
            m1, s1 = nm.quantize_multiplier(scale * 256)
            if a_buf == Buffer.RBUF:
                a = np.round(rng.uniform(-12, 12, (m, n)) / scale).astype(np.int64)
                a = np.clip(a, nm.INT32_MIN, nm.INT32_MAX)
        if a is None:
            a = _values(rng, (m, n), a_buf)
        if near:
            s2 = _near(rng, _bits(a) + _bits(m2), out_bits)
        fields.update(m1=m1, s1=s1, m2=m2, s2=s2)
    elif func == MiscFunc.SOFTMAX:
        d_buf = Buffer(rng.choice([Buffer.ABUF, Buffer.RBUF], p=[0.8, 0.2]))
        if rng.random() < 0.7:
            s_in = float(2.0 ** rng.uniform(-14, -3))
            m1, s1 = nm.quantize_multiplier(s_in * math.log2(math.e) * 256)
            a = np.round(rng.normal(0, rng.uniform(0.5, 6), (m, n)) / s_in).astype(np.int64)
            a = np.clip(a, nm.INT32_MIN + 1, nm.INT32_MAX)
        else:
            m1, s1 = _mult(rng), _shift(rng)
            a = _int32(rng, (m, n))
        a[rng.random((m, n)) < 0.1] = nm.MASKED
        if rng.random() < 0.1:
            a[rng.integers(0, m)] = nm.MASKED          # a row with nothing live
        fields.update(m1=m1, s1=s1)
        if rng.random() < 0.5:        # causal; the first rows may see no column at all
            fields.update(causal=1, aux=int(rng.integers(-m - 1, n + 2)))
        if flags.get("defer"):
            fields["b_buf"] = int(Buffer.RBUF)
    elif func in (MiscFunc.RMSNORM, MiscFunc.LAYERNORM):
        gamma = rng.integers(-32768, 32768, n)
        beta = None
        if rng.random() < 0.5:
            beta = _int32(rng, n, rng.choice(["small", "wide", "full"]))
            fields["beta"] = 1
        pbuf = pack_norm_params(gamma, beta)
        eps = int(rng.choice([0, 1, int(rng.integers(0, 1 << 20)), int(rng.integers(0, 1 << 31))]))
        s1 = _near(rng, 17, out_bits) if near else _shift(rng)   # y ~ gamma, 16 bits
        fields.update(s1=s1, aux=eps)
        if func == MiscFunc.LAYERNORM and rng.random() < 0.4:   # a large common offset
            a = rng.integers(-3000, 3000, (m, n)) + int(rng.integers(-1 << 24, 1 << 24))
    else:  # ROPE
        group = group or int(rng.choice([2, 4, 6, 8, 10, 12, 16, 24, 32]))
        if shape is None:
            heads = max(1, min(int(rng.integers(1, 6)), 300 // group))
            n = group * heads
            m = max(1, min(m, MAX_CASE_ELEMENTS // n))
        a = _values(rng, (m, n), a_buf)
        m1 = _mult(rng)
        s1 = _near(rng, _bits(a) + _bits(m1) + 1, out_bits, 48) if near else _shift(rng, 48)
        fields.update(group=group, m1=m1, s1=s1, p_stride=2 * group)
        if rng.random() < 0.6:
            cos, sin = nm.rope_table(rng.integers(0, 4096, m), group)
        else:
            cos, sin = (rng.integers(-32768, 32768, (m, group // 2)) for _ in range(2))
        pbuf = pack_rope_rows(cos, sin)
    if a is None:
        a = _values(rng, (m, n), a_buf)
    if a_buf == Buffer.ABUF:
        a = np.clip(a, -128, 127)
    fields.update(n=n, m=m)
    return _run_golden(label, fields, a_buf, d_buf, a, b, pbuf)


def _run_golden(label, fields, a_buf, d_buf, a, b, pbuf) -> SFUCase:
    from flightllm.contract.config import preset

    core = CoreBuffers(preset("tiny"))
    m, n = fields["m"], fields["n"]
    func = MiscFunc(fields["func"])
    count = -(-n // 16) * 16 if func == MiscFunc.SOFTMAX else n
    ea, ed = ELEMENT_BYTES[a_buf], ELEMENT_BYTES[d_buf]
    fields.update(a_buf=int(a_buf), a_addr=A_ADDR, a_stride=n * ea, d_buf=int(d_buf),
                  d_addr=D_ADDR, d_stride=count * ed, b_addr=B_ADDR, p_addr=0)
    core.write_rows(a_buf, A_ADDR, n * ea, a, "a")
    if b is not None:
        b_buf = Buffer(fields["b_buf"])
        eb = ELEMENT_BYTES[b_buf]
        fields["b_stride"] = b.shape[1] * eb
        core.write_rows(b_buf, B_ADDR, b.shape[1] * eb, b, "b")
    if fields.get("defer"):
        fields["b_stride"] = 4
    if pbuf:
        core.write_bytes(Buffer.PBUF, 0, np.frombuffer(pbuf, dtype=np.uint8), "p")
    ins = Instruction(Opcode.MISC, **fields)
    exec_misc(ins, core, Counters(), label)
    expected = core.read_rows(d_buf, D_ADDR, count * ed, m, count, "d")
    recip = None
    if fields.get("defer"):
        recip = core.read_rows(Buffer.RBUF, B_ADDR, 4, m, 1, "recip")[:, 0]
    params = _read_params(core, ins)
    return SFUCase(label, ins, np.asarray(a, np.int64), b, params, expected, recip)


def _read_params(core: CoreBuffers, ins: Instruction) -> np.ndarray | None:
    """The parameter stream: per element (p0, p1) as the SFU takes it."""
    func, m, n = MiscFunc(ins.func), ins.m, ins.n
    if func in (MiscFunc.RMSNORM, MiscFunc.LAYERNORM):
        gamma = core.read_bytes(Buffer.PBUF, ins.p_addr, 2 * n, "gamma").view("<i2")
        beta = np.zeros(n, np.int64)
        if ins.beta:
            off = ins.p_addr + norm_beta_offset(n)
            beta = core.read_bytes(Buffer.PBUF, off, 4 * n, "beta").view("<i4")
        row = np.stack([gamma.astype(np.int64), beta.astype(np.int64)], axis=-1)
        return np.broadcast_to(row, (m, n, 2)).copy()
    if func == MiscFunc.ROPE:
        g, half = ins.group, ins.group // 2
        pos = np.arange(n) % g
        pair = pos // 2 if ins.interleaved else pos % half
        out = np.empty((m, n, 2), np.int64)
        for r in range(m):
            table = core.read_bytes(Buffer.PBUF, ins.p_addr + r * ins.p_stride, 2 * g,
                                    "rope").view("<i2").astype(np.int64)
            out[r, :, 0] = table[pair]
            out[r, :, 1] = table[half + pair]
        return out
    return None


_SPECIFIC_CORNERS = {
    "SILU": ("gate-table", "gate-above", "gate-below"),
    "GELU_TANH": ("gate-table", "gate-above", "gate-below"),
    "GELU_ERF": ("gate-table", "gate-above", "gate-below"),
    "SOFTMAX": ("causal", "masked", "empty-row"),
    "SOFTMAX_DEFER": ("causal", "masked", "empty-row"),
    "RMSNORM": ("input-saturated", "beta", "no-beta"),
    "LAYERNORM": ("input-saturated", "beta", "no-beta"),
    "ROPE": ("group<lanes", "half%lanes!=0", "group%2lanes==0"),
    "ROPE_INTERLEAVED": ("group<lanes", "half%lanes!=0", "group%2lanes==0"),
}


def required_corners(lanes: int) -> set[str]:
    """Corners every random run must reach: per variant a partial last beat, several rows,
    saturated outputs (softmax: a probability of 1) and the variant's own corners."""
    out = set()
    for label in VARIANT_NAMES:
        out |= {f"{label}:partial-beat", f"{label}:multi-row"}
        if label != "SOFTMAX_DEFER":     # its row maximum is exactly 127 by construction
            out.add(f"{label}:saturated")
        out |= {f"{label}:{c}" for c in _SPECIFIC_CORNERS.get(label, ())}
        if lanes == 1:
            out -= {f"{label}:partial-beat", f"{label}:group<lanes"}
    return out


def corners(case: SFUCase, lanes: int) -> set[str]:
    """The corners one case reaches (see :func:`required_corners`)."""
    ins, label = case.ins, case.label
    func = MiscFunc(ins.func)
    hi = 127 if ins.d_buf == Buffer.ABUF else nm.INT32_MAX
    got = set()
    if ins.n % lanes:
        got.add("partial-beat")
    if ins.m > 1:
        got.add("multi-row")
    if (case.expected[:, :ins.n] >= hi).any() or (case.expected <= -hi - 1).any():
        got.add("saturated")
    if func in (MiscFunc.SILU, MiscFunc.GELU_TANH, MiscFunc.GELU_ERF):
        t = nm.rshift_round(case.a * ins.m1, ins.s1)
        lim = nm.ACT_RANGE << nm.ACT_FRAC_BITS
        for name, hit in (("gate-table", (t >= -lim) & (t < lim)), ("gate-above", t >= lim),
                          ("gate-below", t < -lim)):
            if hit.any():
                got.add(name)
    elif func == MiscFunc.SOFTMAX:
        live = case.a != nm.MASKED
        if ins.causal:
            got.add("causal")
            live &= np.arange(ins.n)[None, :] <= ins.aux + np.arange(ins.m)[:, None]
        if (case.a == nm.MASKED).any():
            got.add("masked")
        if not live.all(axis=1).all() and (~live.any(axis=1)).any():
            got.add("empty-row")
    elif func in (MiscFunc.RMSNORM, MiscFunc.LAYERNORM):
        got.add("beta" if ins.beta else "no-beta")
        if (np.abs(case.a) >= 1 << (nm.NORM_INPUT_BITS - 1)).any():
            got.add("input-saturated")
    elif func == MiscFunc.ROPE:
        g = ins.group
        got |= {name for name, hit in (("group<lanes", g < lanes),
                                       ("half%lanes!=0", (g // 2) % lanes != 0),
                                       ("group%2lanes==0", g % (2 * lanes) == 0)) if hit}
    return {f"{label}:{c}" for c in got}


def random_cases(rng, lanes: int, *, min_elements: int,
                 variants=VARIANT_NAMES) -> tuple[list[SFUCase], set[str]]:
    """Cases of every variant, shuffled, until each has ``min_elements`` elements and every
    required corner of those variants is reached; returns the cases and the missing corners
    (empty unless the generator gave up after many more cases than usual)."""
    totals = Counter()
    wanted = {c for c in required_corners(lanes) if c.split(":")[0] in variants}
    seen = set()
    cases = []
    for _ in range(100 * len(variants)):
        missing = {c.split(":")[0] for c in wanted - seen}
        todo = [v for v in variants if totals[v] < min_elements or v in missing]
        if not todo:
            break
        for label in todo:
            case = random_case(rng, label, lanes)
            totals[label] += case.elements
            seen |= corners(case, lanes)
            cases.append(case)
    order = rng.permutation(len(cases))
    return [cases[i] for i in order], wanted - seen


# --------------------------------------------------------------------------- beats
def command(case: SFUCase, fields) -> dict:
    return {name: case.ins.values[name] for name in fields}


def _pad_beats(rows: np.ndarray, lanes: int, rng) -> list[list[int]]:
    """Rows cut into beats; lanes past the row end carry random garbage."""
    beats = []
    for row in rows:
        nb = -(-len(row) // lanes)
        padded = rng.integers(nm.INT32_MIN, nm.INT32_MAX + 1, nb * lanes)
        padded[:len(row)] = row
        beats += [list(map(int, padded[i * lanes:(i + 1) * lanes])) for i in range(nb)]
    return beats


def input_beats(case: SFUCase, lanes: int, rng) -> dict[str, list]:
    """The ``a``, ``b`` and ``p`` beats of a case, in stream order."""
    out = {"a": _pad_beats(case.a, lanes, rng), "b": [], "p": []}
    if case.b is not None:
        out["b"] = _pad_beats(case.b, lanes, rng)
    if case.params is not None:
        p0 = _pad_beats(case.params[..., 0], lanes, rng)
        p1 = _pad_beats(case.params[..., 1], lanes, rng)
        out["p"] = [{"p0": [((v + (1 << 15)) % (1 << 16)) - (1 << 15) for v in x], "p1": y}
                    for x, y in zip(p0, p1)]
    return out


@dataclass
class ExpectedBeat:
    label: str
    elements: int
    value: dict


def expected_beats(case: SFUCase, lanes: int) -> list[ExpectedBeat]:
    """The result beats: rows padded with zeros to whole beats, ``last`` on each row's end."""
    beats = []
    n = case.ins.n
    for row in case.expected:
        nb = -(-len(row) // lanes)
        padded = np.zeros(nb * lanes, np.int64)
        padded[:len(row)] = row
        for i in range(nb):
            real = max(0, min(lanes, n - i * lanes))
            beats.append(ExpectedBeat(case.label, real, {
                "y": list(map(int, padded[i * lanes:(i + 1) * lanes])), "last": int(i == nb - 1)}))
    return beats


@dataclass
class SFUChecker:
    """In-order comparison of result beats and reciprocals, counting checked elements by
    variant."""

    log: object = None
    errors: int = 0
    beats: int = 0
    recips: int = 0
    elements: Counter = field(default_factory=Counter)
    expected: deque = field(default_factory=deque)
    expected_recips: deque = field(default_factory=deque)
    _shown: int = 0

    def expect(self, case: SFUCase, lanes: int, *, corrupt_beat: int | None = None) -> None:
        for beat in expected_beats(case, lanes):
            if corrupt_beat is not None and self.beats + len(self.expected) == corrupt_beat:
                beat.value["y"][0] += 1                    # the deliberate reference bug
            self.expected.append(beat)
        if case.recip is not None:
            self.expected_recips.extend((case.label, int(r)) for r in case.recip)

    @property
    def pending(self) -> int:
        return len(self.expected) + len(self.expected_recips)

    def check(self, actual: dict) -> None:
        if not self.expected:
            self._error(f"unexpected result beat {self.beats}: {actual}")
            return
        want = self.expected.popleft()
        if want.value != actual:
            self._error(f"{want.label} beat {self.beats} differs:\n  expected {want.value}\n"
                        f"  actual   {actual}")
        else:
            self.elements[want.label] += want.elements
        self.beats += 1

    def check_recip(self, actual: int) -> None:
        if not self.expected_recips:
            self._error(f"unexpected reciprocal {actual}")
            return
        label, want = self.expected_recips.popleft()
        if want != actual:
            self._error(f"{label} reciprocal {self.recips}: expected {want}, actual {actual}")
        else:
            self.elements[label + "/recip"] += 1
        self.recips += 1

    def _error(self, text: str) -> None:
        self.errors += 1
        if self.log is not None and self._shown < 5:
            self.log.error("sfu: %s", text)
            self._shown += 1
