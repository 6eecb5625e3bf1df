"""cocotb testbench of hw/matrix_unit.MatrixUnit inside tb_units_common.UnitHarness.

Each random MM/MV instruction is staged in a golden ``CoreBuffers`` that mirrors the RTL
buffers (operands written where the instruction will read them, everything else keeps its
earlier contents), the changed rows are written to the RTL through the host ports, the
instruction runs on the RTL while the host ports contend for the buffers at random, and
``exec_matrix`` runs on the golden buffers. Then every row the golden run changed, and the
rows around the result region, are read back and compared; at the end all four buffers are
compared whole. Environment: ``FLIGHTLLM_TB_PRESET``, ``FLIGHTLLM_TB_MAX_K_BLOCKS``,
``FLIGHTLLM_TB_SEED``, ``FLIGHTLLM_TB_INSTRUCTIONS``, ``FLIGHTLLM_TB_SUMMARY``.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np

from flightllm.contract.config import BLOCK, preset
from flightllm.contract.isa import Buffer, Instruction, Opcode, OutMode
from flightllm.contract.regmap import ErrorCode
from flightllm.contract.weights import SPARSITY_CODES, block_bytes, code_table_bytes
from flightllm.hw.dsp_chain import passes_per_block
from flightllm.sim.execute import Counters, exec_matrix
from flightllm.sim.machine import CoreBuffers, ProgramError
from tb_common import seeded_rng, start, write_summary
from tb_matrix_model import KINDS, MODES, VARIANTS, WBITS_CODE, draw_sum_rows, stage_records
from tb_model import scenario_matrix
from tb_unit_host import UnitHost, issue, reset
from tb_units_common import dirty_rows

NAMES = {Buffer.ABUF: "abuf", Buffer.WBUF: "wbuf", Buffer.RBUF: "rbuf", Buffer.PBUF: "pbuf"}


def _config():
    cfg = preset(os.environ.get("FLIGHTLLM_TB_PRESET", "tiny"))
    return cfg.replace(dequant_words=int(os.environ.get("FLIGHTLLM_TB_DEQUANT_WORDS", "1")))


def _max_k() -> int:
    return int(os.environ.get("FLIGHTLLM_TB_MAX_K_BLOCKS", "8"))


def stage_matrix(rng: np.random.Generator, core: CoreBuffers, *, mv: bool, bits: int,
                 gscale: bool, kind, mode: OutMode, psum: bool, residual: bool, relu: bool,
                 p_uniform: bool, n_strips: int, k_blocks: int, m_rows: int, strided: bool,
                 in_place: bool = False, sum_rows: bool = False) -> Instruction:
    """Write one random instruction's operands into ``core``; return the instruction.
    Activations may start at any byte; ``in_place``: partial sums read from the result rows;
    ``sum_rows`` (2-row Q32 MM, per-channel records): row 1's records ``p_stride`` on."""
    rows = 1 if mv else m_rows
    n_out, k = BLOCK * n_strips, BLOCK * k_blocks
    matrix = scenario_matrix(rng, kind, bits, gscale, n_strips=n_strips, k_blocks=k_blocks)
    lengths = [code_table_bytes(k_blocks, matrix.sparse)
               + sum(block_bytes(SPARSITY_CODES[c], bits, gscale) for c in matrix.codes[s])
               for s in range(n_strips)]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    w_stride = (max(lengths) + 8 * int(rng.integers(0, 4))) if strided else 0
    span = w_stride * n_strips if strided else offsets[-1]
    wbuf = len(core.mem[Buffer.WBUF])
    w_addr = 8 * int(rng.integers(0, (wbuf - span) // 8))
    for s in range(n_strips):
        start = w_addr + (s * w_stride if strided else offsets[s])
        core.write_bytes(Buffer.WBUF, start,
                         np.frombuffer(matrix.data, np.uint8)[offsets[s]:offsets[s + 1]], "tb")

    abuf = len(core.mem[Buffer.ABUF])
    x_stride = k + int(rng.integers(0, 24))
    x_addr = int(rng.integers(0, abuf // 2 - rows * x_stride))
    X = rng.integers(-128, 128, (rows, k))
    if kind == "extreme":
        X[:] = -128
    for i in range(rows):
        core.write_rows(Buffer.ABUF, x_addr + i * x_stride, 0, X[i:i + 1], "tb")
    scale = float(np.abs(X @ matrix.dense().T).max()) + 1.0

    es = 1 if mode == OutMode.Q8 else 4
    out_buf = Buffer.ABUF if mode == OutMode.Q8 else Buffer.RBUF
    out_stride = es * n_out + es * int(rng.integers(0, 6))
    rbuf = len(core.mem[Buffer.RBUF])
    lo = abuf // 2 if out_buf == Buffer.ABUF else rbuf // 2
    out_addr = lo + es * int(rng.integers(0, (lo - rows * out_stride) // es))
    psum_stride = 4 * (n_out + int(rng.integers(0, 6)))
    psum_addr = 4 * int(rng.integers(0, (rbuf // 2 - rows * psum_stride) // 4))
    if in_place and out_buf == Buffer.RBUF:
        psum_addr, psum_stride = out_addr, out_stride
    if psum:
        big = rng.random() < 0.2
        lim = (1 << 31) if big else int(scale)
        values = rng.integers(-lim, lim, (rows, n_out))
        for i in range(rows):
            core.write_rows(Buffer.RBUF, psum_addr + i * psum_stride, 0, values[i:i + 1], "tb")
        scale += 0 if big else lim
    p_addr, p_stride = stage_records(rng, core, mode, p_uniform=p_uniform, n_out=n_out,
                                     scale=scale, sum_rows=sum_rows)
    fields = dict(w_addr=w_addr, w_stride=w_stride, wbits=WBITS_CODE[bits],
                  sparse=int(matrix.sparse), gscale=int(gscale), n_strips=n_strips,
                  k_blocks=k_blocks, x_addr=x_addr, out_mode=int(mode), out_addr=out_addr,
                  p_addr=p_addr, p_uniform=int(p_uniform), psum=int(psum),
                  psum_addr=psum_addr, residual=int(residual), relu=int(relu))
    if not mv:
        fields.update(m_rows=m_rows, x_stride=x_stride, out_stride=out_stride,
                      psum_stride=psum_stride)
    if sum_rows:
        fields.update(sum_rows=1, p_stride=p_stride)
    return Instruction(Opcode.MV if mv else Opcode.MM, **fields)


def scenario(rng: np.random.Generator, i: int, max_k: int) -> Instruction | None:
    """Staging arguments of the ``i``-th random instruction (kind, variant and mode cycle with
    coprime periods 8, 5, 3 so every 120 instructions meet every combination)."""
    bits, gscale = VARIANTS[i % len(VARIANTS)]
    kind = KINDS[i % len(KINDS)]
    mode = MODES[i % len(MODES)]
    requant = mode != OutMode.ACC32
    args = dict(
        mv=bool(rng.random() < 0.5), bits=bits, gscale=gscale, kind=kind, mode=mode,
        psum=bool(rng.random() < 0.4), residual=mode == OutMode.Q32 and bool(rng.random() < 0.5),
        relu=requant and bool(rng.random() < 0.4), p_uniform=requant and bool(rng.random() < 0.3),
        n_strips=int(rng.integers(1, 10)),
        k_blocks=max_k if rng.random() < 0.1 else int(rng.integers(1, 5)),
        m_rows=int(rng.integers(1, 6)), strided=bool(rng.random() < 0.4),
        in_place=bool(rng.random() < 0.3))
    # One MM Q32 instruction with per-channel records in four sums its two rows.
    args["sum_rows"] = draw_sum_rows(rng, mv=args["mv"], mode=mode, p_uniform=args["p_uniform"])
    if args["sum_rows"]:
        args["m_rows"] = 2
    return args


def _empty(mv: bool) -> Instruction:
    fields = dict(wbits=1, n_strips=0 if mv else 3, k_blocks=2, out_mode=int(OutMode.Q8))
    if not mv:
        fields["m_rows"] = 0
    return Instruction(Opcode.MV if mv else Opcode.MM, **fields)


def _region_rows(ins: Instruction, width: int) -> list[int]:
    """Rows around the result region (one row of margin each side)."""
    rows = 1 if ins.op == Opcode.MV else ins.m_rows
    stride = 0 if ins.op == Opcode.MV else ins.out_stride
    es = 1 if ins.out_mode == OutMode.Q8 else 4
    lo = ins.out_addr // width - 1
    hi = (ins.out_addr + (rows - 1) * stride + es * BLOCK * ins.n_strips) // width + 1
    return list(range(max(lo, 0), hi + 1))


class MatrixBench:
    def __init__(self, dut, rng, *, contention: float):
        self.dut, self.cfg = dut, _config()
        self.host = UnitHost(dut, self.cfg, rng, contention=contention)
        self.core = CoreBuffers(self.cfg)
        self.host.load_golden(self.core)
        self.cycles = []

    async def run(self, ins: Instruction, *, corrupt: bool = False) -> str | None:
        """Stage (already in ``core``), run on both sides, compare; returns the golden error."""
        dut, core, host = self.dut, self.core, self.host
        await host.stage(core)
        before = {b: core.mem[b].copy() for b in NAMES}
        error = None
        try:
            exec_matrix(ins, core, Counters(), "tb")
        except ProgramError as exc:
            error = str(exc)
        mv = ins.op == Opcode.MV
        host.contend = True
        accepted, done = await issue(dut, "mv" if mv else "mm", ins,
                                     "mv_done" if mv else "mm_done", max_cycles=200000)
        host.contend = False
        self.cycles.append(done - accepted + 1)
        rows = {}
        for b, name in NAMES.items():
            width = self.cfg.buffer(name).width
            rows[name] = set(dirty_rows(before[b], core.mem[b], width))
        if error is None and ins.n_strips:
            out = "abuf" if ins.out_mode == OutMode.Q8 else "rbuf"
            rows[out] |= set(r for r in _region_rows(ins, self.cfg.buffer(out).width)
                             if r < self.cfg.buffer(out).depth)
        await host.compare(core, {n: sorted(r) for n, r in rows.items()}, corrupt=corrupt,
                           what=repr(ins))
        return error


async def _random_run(dut, *, corrupt: bool) -> None:
    seed, rng = seeded_rng(dut, "matrix_unit")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = MatrixBench(dut, rng, contention=0.3)
    count = int(os.environ.get("FLIGHTLLM_TB_INSTRUCTIONS", "10" if corrupt else "120"))
    features = set()
    for i in range(count):
        if nrng.random() < 0.04:
            ins = _empty(bool(nrng.random() < 0.5))
            features.add("empty")
        else:
            args = scenario(nrng, i, _max_k())
            ins = stage_matrix(nrng, bench.core, **args)
            features |= {name for name in ("psum", "residual", "relu", "p_uniform", "gscale",
                                           "in_place", "strided", "sum_rows") if args[name]}
            features.add(ins.op.name)
        error = await bench.run(ins, corrupt=corrupt and i == 3)
        assert error is None, f"the generator made a bad instruction: {error}"
        assert int(dut.error.value) == 0, f"error {int(dut.error.value)} after {ins!r}"
    final = await bench.host.compare_all(bench.core)
    write_summary(seed=seed, instructions=count, checked_rows=bench.host.checked_rows,
                  final_rows_checked=final, mismatches=bench.host.mismatches,
                  features=sorted(features), mean_cycles=float(np.mean(bench.cycles)))
    if not corrupt:
        assert features >= {"psum", "residual", "relu", "p_uniform", "gscale", "in_place",
                            "strided", "MM", "MV"}, features
    assert bench.host.mismatches == 0, f"{bench.host.mismatches} rows differ (seed {seed})"


@cocotb.test()
async def random_instructions(dut):
    """Random MM and MV instructions (every weight width, sparsity kind, multipliers, out
    mode, psum in place or apart, residual, relu, uniform records, byte-aligned activations)
    with 30 % random contention on every buffer; every changed row and the final images
    compared with exec_matrix's."""
    await _random_run(dut, corrupt=False)


@cocotb.test()
async def corrupted_reference(dut):
    """The same flow with one expected byte flipped: this test must fail."""
    await _random_run(dut, corrupt=True)


@cocotb.test()
async def bad_operands(dut):
    """Instructions the golden simulator rejects (found before the start, or while streaming
    the weights): each must set ``error`` to its code and still raise done, writing nothing;
    a reset clears the error; a valid instruction afterwards still runs."""
    seed, rng = seeded_rng(dut, "matrix_unit bad operands")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = MatrixBench(dut, rng, contention=0.3)
    cfg = bench.cfg
    good = dict(mv=True, bits=4, gscale=False, kind=2, mode=OutMode.Q8, psum=False,
                residual=False, relu=False, p_uniform=False, n_strips=3, k_blocks=2, m_rows=1,
                strided=False)
    bad = [
        ("x past ABUF", dict(x_addr=cfg.abuf.bytes - 8), ErrorCode.ADDRESS),
        ("out past ABUF", dict(out_addr=cfg.abuf.bytes - 16), ErrorCode.ADDRESS),
        ("records misaligned", dict(p_addr=4), ErrorCode.ADDRESS),
        ("weights misaligned", "w_addr", ErrorCode.ADDRESS),
        ("strip stride misaligned", dict(w_stride=1028), ErrorCode.ADDRESS),
        ("residual in Q8", dict(residual=1), ErrorCode.DECODE),
        ("relu in ACC32", dict(out_mode=int(OutMode.ACC32), relu=1), ErrorCode.DECODE),
        ("code byte 7", None, ErrorCode.DECODE),
    ]
    seen = 0
    for what, change, expected in bad:
        ins = stage_matrix(nrng, bench.core, **good)
        if change is None:
            # Found while streaming: strip 0's first code byte is not 0..3.
            bench.core.mem[Buffer.WBUF][ins.w_addr] = 7
        elif change == "w_addr":
            # Four bytes off the 8-byte word grid, staying inside WBUF.
            ins = ins.replace(w_addr=ins.w_addr + (4 if ins.w_addr < 64 else -4))
        else:
            ins = ins.replace(**change)
        error = await bench.run(ins)
        assert error is not None, f"{what}: the golden simulator accepted it"
        code = int(dut.error.value)
        dut._log.info("%s: golden '%s'; RTL error %d", what, error, code)
        seen += code == expected
        await reset(dut, bench.host)
    assert int(dut.error.value) == 0
    ins = stage_matrix(nrng, bench.core, **good)
    assert await bench.run(ins) is None and int(dut.error.value) == 0
    final = await bench.host.compare_all(bench.core)
    write_summary(seed=seed, bad_instructions=len(bad), errors_seen=seen,
                  mismatches=bench.host.mismatches, final_rows_checked=final)
    assert seen == len(bad) and bench.host.mismatches == 0


@cocotb.test()
async def cycles(dut):
    """Cycles per instruction, from acceptance to done, without contention, for a few
    shapes; also the WBUF rows the weights span and the chains' bound."""
    seed, rng = seeded_rng(dut, "matrix_unit cycles")
    nrng = np.random.default_rng(seed)
    await start(dut)
    bench = MatrixBench(dut, rng, contention=0.0)
    cfg = bench.cfg
    chains = cfg.mv_rows
    measured = {}
    shapes = [("MV N=16 int4 8x8 ACC32", True, 16, 4, OutMode.ACC32, 8, 8, 1),
              ("MV N=2 int4 8x8 ACC32", True, 2, 4, OutMode.ACC32, 8, 8, 1),
              ("MV N=16 int8 8x8 Q8", True, 16, 8, OutMode.Q8, 8, 8, 1),
              ("MV N=16 int4 16x4 Q32 psum", True, 16, 4, OutMode.Q32, 16, 4, 1),
              ("MM4 N=16 int4 8x8 Q8", False, 16, 4, OutMode.Q8, 8, 8, 4),
              ("MM8 N=4 int2 8x8 ACC32", False, 4, 2, OutMode.ACC32, 8, 8, 8)]
    for key, mv, n, bits, mode, n_strips, k_blocks, m_rows in shapes:
        ins = stage_matrix(nrng, bench.core, mv=mv, bits=bits, gscale=False, kind=n, mode=mode,
                           psum="psum" in key, residual=False, relu=False, p_uniform=False,
                           n_strips=n_strips, k_blocks=k_blocks, m_rows=m_rows, strided=False)
        assert await bench.run(ins) is None
        pairs = 1 if mv else -(-m_rows // 2)
        wrows = -(-sum(block_bytes(n, bits, False) for _ in range(k_blocks)) * n_strips
                  // cfg.wbuf.width) * pairs
        bound = pairs * (n_strips // chains) * k_blocks * passes_per_block(n, cfg.mv_k)
        measured[key] = {"cycles": bench.cycles[-1], "chain_bound": bound, "wbuf_rows": wrows}
        dut._log.info("%s: %d cycles (chain bound %d, %d WBUF rows)", key, bench.cycles[-1],
                      bound, wrows)
    write_summary(seed=seed, cycles=measured, mismatches=bench.host.mismatches)
    assert bench.host.mismatches == 0
