"""Pure-Python half of the matrix-engine testbench: random MM/MV instructions staged in a
golden-simulator :class:`~flightllm.sim.machine.CoreBuffers`, the engine's input streams read
from those bytes, and the expected result rows read back from the buffers after the golden
simulator's own ``exec_matrix`` ran the instruction.

So the reference is the executable spec itself; the testbench's only own logic is addressing
(which buffer bytes feed which stream, where a result row lands). No cocotb here: pytest and
the Amaranth-simulator test import it too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from flightllm.contract.config import BLOCK, AcceleratorConfig
from flightllm.contract.isa import Buffer, Instruction, Opcode, OutMode, WeightBits
from flightllm.contract.params import REQUANT_RECORD_BYTES, pack_requant_records
from flightllm.contract.weights import SPARSITY_CODES, block_bytes, code_table_bytes
from flightllm.sim.execute import Counters, exec_matrix
from flightllm.sim.machine import CoreBuffers
from tb_model import scenario_matrix, words64

WBITS_CODE = {code.bits: int(code) for code in WeightBits}


@dataclass
class EngineCase:
    """One instruction: what each input stream carries and the result rows expected."""

    ins: Instruction
    command: dict
    words: list[list[int]]                 # per chain
    acts: list[int]
    params: list[int]
    psum: list[int]
    residual: list[int]
    expected: list[dict]                   # {"y": [16], "row", "strip", "last"}
    blocks: int = 0                        # 16x16 weight blocks per pass over the matrix
    label: str = ""

    @property
    def values(self) -> int:
        return BLOCK * len(self.expected)


def _le(data) -> int:
    return int.from_bytes(bytes(np.asarray(data, dtype=np.uint8)), "little")


def _records(rng, n: int, scale: float, out_bits: int) -> bytes:
    """``n`` requantisation records: most keep results inside the output range, a few take
    the extremes (shift 0 or 62, the largest multipliers and biases)."""
    mult = rng.integers(-(1 << 15), 1 << 15, n)
    target = 6 if out_bits == 8 else 22
    need = np.array([int(abs(m) * scale + 1).bit_length() for m in mult])
    shift = np.clip(need - target + rng.integers(-2, 3, n), 0, 62)
    bias = rng.integers(-int(scale) - 1, int(scale) + 2, n)
    wild = rng.random(n) < 0.08
    shift[wild] = rng.choice([0, 1, 62], wild.sum())
    mult[wild] = rng.choice([-(1 << 15), (1 << 15) - 1, 1], wild.sum())
    bias[wild] = rng.choice([-(1 << 31), (1 << 31) - 1, 0], wild.sum())
    return pack_requant_records(bias, mult, shift)


def stage_records(rng, core: CoreBuffers, mode: OutMode, *, p_uniform: bool, n_out: int,
                  scale: float, sum_rows: bool = False) -> tuple[int, int]:
    """Write an instruction's requantisation records (Q8/Q32; none for ACC32) at a random
    record-aligned PBUF address; return ``(p_addr, p_stride)``.

    ``sum_rows``: a second per-channel set (row 1's, drawn independently) after the first
    (``p_stride >= 0``: the field is unsigned), never overlapping it, either right behind it
    or at a random record-aligned place further on. Without it ``p_stride`` is 0 and the
    random draws are the ones this function always made."""
    if mode == OutMode.ACC32:
        return 0, 0
    out_bits = 8 if mode == OutMode.Q8 else 32
    blob = _records(rng, 1 if p_uniform else n_out, scale, out_bits)
    pbuf = len(core.mem[Buffer.PBUF])
    if not sum_rows:
        p_addr = REQUANT_RECORD_BYTES * int(rng.integers(
            0, (pbuf - len(blob)) // REQUANT_RECORD_BYTES))
        core.write_bytes(Buffer.PBUF, p_addr, np.frombuffer(blob, np.uint8), "tb")
        return p_addr, 0
    assert mode == OutMode.Q32 and not p_uniform, "sum_rows: Q32, per-channel records"
    blob1 = _records(rng, n_out, scale, out_bits)
    nbytes = len(blob)
    p_addr = REQUANT_RECORD_BYTES * int(rng.integers(
        0, (pbuf - 2 * nbytes) // REQUANT_RECORD_BYTES + 1))
    room = (pbuf - nbytes - (p_addr + nbytes)) // REQUANT_RECORD_BYTES     # >= 0
    gap = 0 if rng.random() < 0.3 else int(rng.integers(0, room + 1))
    p_stride = nbytes + REQUANT_RECORD_BYTES * gap
    core.write_bytes(Buffer.PBUF, p_addr, np.frombuffer(blob, np.uint8), "tb")
    core.write_bytes(Buffer.PBUF, p_addr + p_stride, np.frombuffer(blob1, np.uint8), "tb")
    return p_addr, p_stride


def random_case(rng: np.random.Generator, cfg: AcceleratorConfig, chains: int, *, mv: bool,
                bits: int, gscale: bool, kind, mode: OutMode, psum: bool, residual: bool,
                relu: bool, p_uniform: bool, n_strips: int, k_blocks: int, m_rows: int,
                strided: bool, pair_group: int = 1, sum_rows: bool = False) -> EngineCase:
    """Stage one random instruction, run the golden simulator on it, and derive the streams.

    Args:
        kind: a matrix kind of ``tb_model.KINDS`` (mixed codes, one N, dense format, extreme
            values, random bytes).
        strided: strips ``w_stride`` bytes apart (else back to back).
        pair_group: the engine's ``mm_pair_group``: the weights stream once per group of
            that many token pairs, a strip's records once per group, and results come in
            (group, strip, pair, token) order.
        sum_rows: an MM of two rows (Q32, per-channel records) summed into one: row 1's
            records ``p_stride`` after row 0's; the engine takes two record beats per strip,
            the residual of row 0 only, partial sums of both rows, and gives one result beat
            per strip (row 0).
    """
    if sum_rows:
        assert not mv and m_rows == 2 and mode == OutMode.Q32 and not p_uniform, \
            "sum_rows: a 2-row Q32 MM with per-channel records"
    core = CoreBuffers(cfg)
    for buf in Buffer:                          # junk everywhere the instruction must not read
        core.mem[buf][:] = rng.integers(0, 256, len(core.mem[buf]), dtype=np.uint8)
    rows = 1 if mv else m_rows
    pairs = 1 if mv else -(-m_rows // 2)
    groups = -(-pairs // pair_group)
    n_out, k = BLOCK * n_strips, BLOCK * k_blocks

    # Weights: the contract's packer, strips placed back to back or w_stride apart.
    matrix = scenario_matrix(rng, kind, bits, gscale, n_strips=n_strips, k_blocks=k_blocks)
    lengths = [code_table_bytes(k_blocks, matrix.sparse)
               + sum(block_bytes(SPARSITY_CODES[c], bits, gscale) for c in matrix.codes[s])
               for s in range(n_strips)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    w_stride = (max(lengths) + 8 * int(rng.integers(0, 4))) if strided else 0
    span = w_stride * n_strips if strided else offsets[-1]
    w_addr = 8 * int(rng.integers(0, (len(core.mem[Buffer.WBUF]) - span) // 8))
    starts = [w_addr + (s * w_stride if strided else offsets[s]) for s in range(n_strips)]
    for s in range(n_strips):
        core.write_bytes(Buffer.WBUF, starts[s],
                         np.frombuffer(matrix.data, np.uint8)[offsets[s]:offsets[s + 1]], "tb")

    # Activations in the lower half of ABUF; Q8 results go to the upper half.
    abuf = len(core.mem[Buffer.ABUF])
    x_stride = k + int(rng.integers(0, 24))
    x_addr = int(rng.integers(0, abuf // 2 - rows * x_stride))
    X = rng.integers(-128, 128, (rows, k))
    if kind == "extreme":
        X[:] = -128
    for i in range(rows):
        core.write_rows(Buffer.ABUF, x_addr + i * x_stride, 0, X[i:i + 1], "tb")
    scale = float(np.abs(X @ matrix.dense().T).max()) + 1.0

    # Results: ABUF (Q8) or RBUF (upper half); partial sums in RBUF's lower half.
    es = 1 if mode == OutMode.Q8 else 4
    out_buf = Buffer.ABUF if mode == OutMode.Q8 else Buffer.RBUF
    row_bytes = es * n_out
    out_stride = row_bytes + es * int(rng.integers(0, 6))
    lo = abuf // 2 if out_buf == Buffer.ABUF else len(core.mem[Buffer.RBUF]) // 2
    out_addr = lo + es * int(rng.integers(0, (lo - rows * out_stride) // es))
    psum_stride = 4 * (n_out + int(rng.integers(0, 6)))
    psum_addr = 4 * int(rng.integers(0, (len(core.mem[Buffer.RBUF]) // 2 - rows * psum_stride)
                                     // 4))
    if psum:
        big = rng.random() < 0.2
        lim = (1 << 31) if big else int(scale)
        values = rng.integers(-lim, lim, (rows, n_out))
        for i in range(rows):
            core.write_rows(Buffer.RBUF, psum_addr + i * psum_stride, 0, values[i:i + 1], "tb")
        scale += 0 if big else lim
    p_addr, p_stride = stage_records(rng, core, mode, p_uniform=p_uniform, n_out=n_out,
                                     scale=scale, sum_rows=sum_rows)

    fields = dict(w_addr=w_addr, w_stride=w_stride, wbits=WBITS_CODE[bits], sparse=int(
        matrix.sparse), gscale=int(gscale), n_strips=n_strips, k_blocks=k_blocks, x_addr=x_addr,
        out_mode=int(mode), out_addr=out_addr, p_addr=p_addr, p_uniform=int(p_uniform),
        psum=int(psum), psum_addr=psum_addr, residual=int(residual), relu=int(relu))
    if not mv:
        fields.update(m_rows=m_rows, x_stride=x_stride, out_stride=out_stride,
                      psum_stride=psum_stride)
    if sum_rows:
        fields.update(sum_rows=1, p_stride=p_stride)
    ins = Instruction(Opcode.MV if mv else Opcode.MM, **fields)
    after = copy.deepcopy(core)
    exec_matrix(ins, after, Counters(), "tb")

    # ---- the streams, read from the staged bytes
    before = core.mem
    if mv:
        x_stride = out_stride = psum_stride = 0
    command = {name: fields.get(name, 0) for name in (
        "wbits", "sparse", "gscale", "n_strips", "k_blocks", "out_mode", "p_uniform", "psum",
        "residual", "relu", "sum_rows")}
    command.update(mv=int(mv), m_rows=m_rows)        # MV carries a junk m_rows: ignored
    words = [[] for _ in range(chains)]
    for c in range(chains):
        for _ in range(groups):
            for s in range(c, n_strips, chains):
                words[c] += words64(bytes(before[Buffer.WBUF][starts[s]:starts[s] + lengths[s]]))
    acts = []
    for p in range(pairs):
        for kb in range(k_blocks):
            lanes = []
            for tok in (2 * p, 2 * p + 1):
                if tok < rows:
                    at = x_addr + tok * x_stride + BLOCK * kb
                    lanes.append(before[Buffer.ABUF][at:at + BLOCK])
                else:
                    lanes.append(rng.integers(0, 256, BLOCK, dtype=np.uint8))
            acts.append(_le(np.concatenate(lanes)))
    params, psums, residuals, expected = [], [], [], []
    rec_bytes = BLOCK * REQUANT_RECORD_BYTES
    if mode != OutMode.ACC32 and p_uniform:
        params.append(_le(np.concatenate([before[Buffer.PBUF][p_addr:p_addr + 8],
                                          rng.integers(0, 256, rec_bytes - 8, np.uint8)])))
    for group in range(groups):
        for s in range(n_strips):
            if mode != OutMode.ACC32 and not p_uniform:
                for base in (p_addr, p_addr + p_stride) if sum_rows else (p_addr,):
                    at = base + s * rec_bytes
                    params.append(_le(before[Buffer.PBUF][at:at + rec_bytes]))
            for p, tok in ((p, tok) for p in range(group * pair_group,
                                                   min(pairs, (group + 1) * pair_group))
                           for tok in range(2 if 2 * p + 1 < rows else 1)):
                i = 2 * p + tok
                if psum:
                    at = psum_addr + i * psum_stride + 4 * BLOCK * s
                    psums.append(_le(before[Buffer.RBUF][at:at + 4 * BLOCK]))
                if sum_rows and tok:
                    continue            # row 1 is added into row 0's one result beat
                at = out_addr + i * out_stride + es * BLOCK * s
                if residual and mode == OutMode.Q32:
                    residuals.append(_le(before[Buffer.RBUF][at:at + 4 * BLOCK]))
                y = after.read_rows(out_buf, at, 0, 1, BLOCK, "tb")[0]
                expected.append({"y": y.tolist(), "row": i, "strip": s,
                                 "last": int(p == pairs - 1 and s == n_strips - 1
                                             and (sum_rows or 2 * p + tok == rows - 1))})
    label = (f"{'MV' if mv else 'MM'} int{bits}{' g' if gscale else ''} {kind} "
             f"{OutMode(mode).name}{' psum' if psum else ''}{' res' if residual else ''}"
             f"{' relu' if relu else ''}{' uni' if p_uniform else ''}{' sum' if sum_rows else ''}"
             f" {n_strips}x{k_blocks}"
             f"{'' if mv else f' m{m_rows}'}{' strided' if strided else ''}")
    return EngineCase(ins, command, words, acts, params, psums, residuals, expected,
                      blocks=n_strips * k_blocks, label=label)


# --------------------------------------------------------------------------- scenarios
MODES = (OutMode.ACC32, OutMode.Q8, OutMode.Q32)
VARIANTS = [(bits, gscale) for bits in (2, 4, 8) for gscale in ((False, True) if bits < 8
                                                               else (False,))]
KINDS = ("mixed", 2, 4, 8, 16, "dense", "extreme", "bytes")


def empty_case(mv: bool) -> EngineCase:
    """An instruction with nothing to do (``n_strips = 0``, or MM with ``m_rows = 0``): the
    golden simulator writes nothing, and the engine must take the command and emit nothing."""
    fields = dict(wbits=1, n_strips=0 if mv else 3, k_blocks=2, out_mode=int(OutMode.Q8))
    if not mv:
        fields["m_rows"] = 0
    ins = Instruction(Opcode.MV if mv else Opcode.MM, **fields)
    command = {name: fields.get(name, 0) for name in (
        "wbits", "n_strips", "k_blocks", "out_mode", "m_rows")}
    command["mv"] = int(mv)
    return EngineCase(ins, command, [], [], [], [], [], [], label="empty")


def scenario(rng: np.random.Generator, cfg: AcceleratorConfig, chains: int, i: int, *,
             max_k_blocks: int = 4) -> EngineCase:
    """The ``i``-th instruction of the random run. Matrix kind, weight variant and output mode
    cycle with coprime periods (8, 5, 3), so every 120 cases meet every combination;
    operation, flags and sizes are drawn at random: K of 1 to 4 blocks, one case in ten
    ``max_k_blocks`` (the longest the engine was built for), one in 25 an empty instruction;
    one MM Q32 case with per-channel records in four sums its two rows (``sum_rows``)."""
    bits, gscale = VARIANTS[i % len(VARIANTS)]
    kind = KINDS[i % len(KINDS)]
    mode = MODES[i % len(MODES)]
    mv = bool(rng.random() < 0.5)
    if rng.random() < 0.04:
        return empty_case(mv)
    requant = mode != OutMode.ACC32
    k_blocks = max_k_blocks if rng.random() < 0.1 else int(rng.integers(1, 5))
    args = dict(
        psum=bool(rng.random() < 0.4), residual=mode == OutMode.Q32 and bool(rng.random() < 0.5),
        relu=requant and bool(rng.random() < 0.4), p_uniform=requant and bool(rng.random() < 0.3),
        n_strips=int(rng.integers(1, 2 * chains + 2)), k_blocks=k_blocks,
        m_rows=int(rng.integers(1, 6)), strided=bool(rng.random() < 0.4))
    args["sum_rows"] = draw_sum_rows(rng, mv=mv, mode=mode, p_uniform=args["p_uniform"])
    if args["sum_rows"]:
        args["m_rows"] = 2
    return random_case(rng, cfg, chains, mv=mv, bits=bits, gscale=gscale, kind=kind, mode=mode,
                       **args)


def draw_sum_rows(rng: np.random.Generator, *, mv: bool, mode: OutMode, p_uniform: bool,
                  share: float = 0.25) -> bool:
    """Whether a random instruction sums its rows: ``share`` of the MM Q32 instructions with
    per-channel records (a draw only for those, so other cases keep their random draws)."""
    if mv or mode != OutMode.Q32 or p_uniform:
        return False
    return bool(rng.random() < share)


def coverage_key(case: EngineCase) -> tuple:
    ins = case.ins
    return (ins.op.name, ins.wbits, ins.gscale, ins.out_mode,
            int(ins.op == Opcode.MM and ins.sum_rows))


# --------------------------------------------------------------------------- checker
@dataclass
class RowChecker:
    """Compares result rows in order; counts checked values and wrong ones."""

    name: str
    log: object = None
    count: int = 0             # values checked
    errors: int = 0            # values (or row tags) that differ
    expected: list = field(default_factory=list)
    _shown: int = 0

    def expect(self, row: dict) -> None:
        self.expected.append(row)

    def check(self, actual: dict) -> None:
        if not self.expected:
            self._error(f"unexpected result row {actual!r}")
            return
        want = self.expected.pop(0)
        bad = sum(int(a != b) for a, b in zip(want["y"], actual["y"]))
        bad += sum(int(want[key] != actual[key]) for key in ("row", "strip", "last"))
        if bad:
            self._error(f"row {want['row']} strip {want['strip']}: {bad} differences\n"
                        f"  expected {want}\n  actual   {actual}", bad)
        self.count += len(want["y"])

    def _error(self, text: str, n: int = 1) -> None:
        self.errors += n
        if self.log is not None and self._shown < 5:
            self.log.error("%s: %s", self.name, text)
            self._shown += 1
