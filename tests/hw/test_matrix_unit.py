# amaranth: UnusedElaboratable=no
"""The matrix unit (hw/matrix_unit.py): MM/MV instructions read from and written to real buffer
memories behind their arbiters, compared with the golden simulator's exec_matrix on the same
buffer images (cocotb + Verilator benches in tests/hw/cocotb/tb_matrix_unit.py)."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from flightllm.contract.config import BLOCK, BufferSpec, preset
from flightllm.contract.isa import Buffer, Opcode, OutMode
from flightllm.contract.numerics import INT32_MAX, INT32_MIN
from flightllm.contract.params import REQUANT_RECORD_BYTES
from flightllm.contract.regmap import ErrorCode
from flightllm.hw.isa_layouts import instruction_layout
from flightllm.hw.matrix_unit import MatrixUnit
from flightllm.sim.execute import Counters, exec_matrix
from flightllm.sim.machine import CoreBuffers, ProgramError

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
from tb_matrix_unit import stage_matrix  # noqa: E402
from tb_unit_host import instruction_bits  # noqa: E402
from tb_units_common import (  # noqa: E402
    BUFFER_OF, BUFFERS, UnitHarness, dirty_rows, initial_contents, pysim_issue, pysim_read_rows,
)

MODULE = "tb_matrix_unit"
#: The benches' build: tiny's four chains, K up to 8 blocks.
MAX_K_BLOCKS = 8


def make_harness(init=None, *, chains=None, max_k_blocks=MAX_K_BLOCKS, cfg=None):
    return UnitHarness(
        cfg or preset("tiny"), lambda cfg: MatrixUnit(cfg, max_k_blocks=max_k_blocks, chains=chains),
        {"mm": instruction_layout(Opcode.MM), "mv": instruction_layout(Opcode.MV)},
        ("mm_done", "mv_done", "busy"), init=init)


def _staged_core(cfg) -> CoreBuffers:
    core = CoreBuffers(cfg)
    for name, image in initial_contents(cfg).items():
        core.mem[BUFFER_OF[name]][:] = image
    return core


def _check_program(cfg, specs, seed, chains=2, min_rows=10, max_k_blocks=MAX_K_BLOCKS):
    """Stage the instructions of ``specs`` (stage_matrix arguments, ``sum_rows=True`` making
    a 2-row Q32 MM a summing one with :func:`_sum_rows`; or ``stage(rng, core, program)``
    returning an instruction), run them through a unit of ``chains`` chains in the Amaranth
    simulator and compare every buffer row they change with exec_matrix's, and the rows of
    a summing MM's row 1 results, which must keep their contents; return the instructions
    and their cycles."""
    rng = np.random.default_rng(seed)
    core = _staged_core(cfg)
    common = dict(gscale=False, psum=False, residual=False, relu=False, p_uniform=False,
                  k_blocks=2, m_rows=1, strided=False)
    program = []
    for spec in specs:
        if callable(spec):
            program.append(spec(rng, core, program))
            continue
        spec = dict(common, **spec)
        summed = spec.pop("sum_rows", False)
        ins = stage_matrix(rng, core, **spec)
        program.append(_sum_rows(rng, core, ins) if summed else ins)
    staged = {name: core.mem[BUFFER_OF[name]].copy() for name in BUFFERS}
    for ins in program:
        exec_matrix(ins, core, Counters(), "test")
    dut = make_harness(staged, chains=chains, cfg=cfg, max_k_blocks=max_k_blocks)
    changed = {name: dirty_rows(staged[name], core.mem[BUFFER_OF[name]],
                                cfg.buffer(name).width) for name in BUFFERS}
    assert sum(len(rows) for rows in changed.values()) > min_rows
    width = cfg.rbuf.width
    for ins in program:
        if ins.op == Opcode.MM and ins.sum_rows:
            # Row 1's result row: the golden run leaves it, so must the unit.
            start = ins.out_addr + ins.out_stride
            kept = range(start // width, -(-(start + 4 * BLOCK * ins.n_strips) // width))
            changed["rbuf"] = sorted(set(changed["rbuf"]) | set(kept))
    got, cycles = {}, []

    async def bench(ctx):
        for ins in program:
            mv = ins.op == Opcode.MV
            cycles.append(await pysim_issue(ctx, dut.mv if mv else dut.mm,
                                            instruction_bits(ins),
                                            dut.mv_done if mv else dut.mm_done,
                                            max_cycles=5000))
        for name in BUFFERS:
            got[name] = await pysim_read_rows(ctx, getattr(dut, f"host_{name}"),
                                              changed[name])
        assert ctx.get(dut.error) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for name in BUFFERS:
        width = cfg.buffer(name).width
        image = core.mem[BUFFER_OF[name]]
        want = [int.from_bytes(image[r * width:(r + 1) * width].tobytes(), "little")
                for r in changed[name]]
        assert got[name] == want, name
    return program, cycles


@pytest.mark.parametrize("variant", ["tiny", "abuf as wide as rbuf", "two wbuf read ports",
                                     "two dequantiser words", "two words on wide rows"])
def test_unit_in_amaranth_simulator(variant):
    """Three instructions through two chains in the Amaranth simulator (MV on mixed sparse
    codes into ACC32; MM Q8 with psum and relu, strided strips, three rows; MM Q32 with a
    residual and a uniform record), buffers compared with exec_matrix's afterwards. With
    ABUF rows as wide as RBUF's (as on the full-size presets) one writer serves both; with
    two WBUF read ports the odd chain reads its weights through the second; with two
    dequantiser words per cycle the chains' readers deliver word pairs (strips of odd word
    counts and, on 64-byte rows, pairs across rows among them)."""
    cfg = preset("tiny")
    if variant == "abuf as wide as rbuf":
        cfg = cfg.replace(abuf=BufferSpec(cfg.rbuf.width, cfg.abuf.bytes // cfg.rbuf.width))
    elif variant == "two wbuf read ports":
        cfg = cfg.replace(wbuf_read_ports=2)
    elif variant == "two dequantiser words":
        cfg = cfg.replace(dequant_words=2)
    elif variant == "two words on wide rows":
        cfg = cfg.replace(dequant_words=2, wbuf=BufferSpec(64, 1024))
    _check_program(cfg, [
        dict(mv=True, bits=4, kind="mixed", mode=OutMode.ACC32, n_strips=3),
        dict(mv=False, bits=8, kind=2, mode=OutMode.Q8, psum=True, relu=True, strided=True,
             m_rows=3, n_strips=2),
        dict(mv=False, bits=2, kind="dense", gscale=True, mode=OutMode.Q32, residual=True,
             p_uniform=True, m_rows=2, n_strips=3, k_blocks=1),
    ], seed=5)


@pytest.mark.parametrize("pair_group", [2, 4])
def test_unit_serves_groups_of_token_pairs(pair_group):
    """With mm_pair_group > 1 the unit reads each strip's weights and records once per group
    of token pairs and writes, reads partial sums and residuals in (group, strip, pair,
    token) order: MMs of several groups with a short last one, one pair, and an MV, against
    exec_matrix."""
    cfg = preset("tiny").replace(mm_pair_group=pair_group)
    _check_program(cfg, [
        dict(mv=False, bits=8, kind=2, mode=OutMode.Q8, psum=True, relu=True, strided=True,
             m_rows=4 * pair_group + 1, n_strips=3),
        dict(mv=True, bits=4, kind="mixed", mode=OutMode.ACC32, n_strips=3),
        dict(mv=False, bits=4, kind="dense", gscale=True, mode=OutMode.Q32, residual=True,
             m_rows=2 * pair_group - 1, n_strips=2, k_blocks=1),
        dict(mv=False, bits=2, kind="mixed", mode=OutMode.ACC32, psum=True, m_rows=2,
             n_strips=1),
    ], seed=9 + pair_group)


def _sum_rows(rng, core, ins, *, near_limits: bool = True):
    """A staged 2-row Q32 MM (stage_matrix's) made a ``sum_rows`` one: row 0's records moved
    to a random place, row 1's (row 0's in another channel order) ``p_stride`` after them;
    with ``residual`` and ``near_limits``, result-row residuals within 2**21 of the INT32
    limits, so that both of sat32(sat32(res + y0) + y1)'s saturations happen."""
    n_out = BLOCK * ins.n_strips
    nbytes = n_out * REQUANT_RECORD_BYTES
    rec0 = core.read_bytes(Buffer.PBUF, ins.p_addr, nbytes, "tb").copy()
    order = rng.permutation(n_out)
    rec1 = rec0.reshape(n_out, REQUANT_RECORD_BYTES)[order].reshape(-1)
    p_stride = nbytes + REQUANT_RECORD_BYTES * int(rng.integers(0, 5))
    pbuf = len(core.mem[Buffer.PBUF])
    p_addr = REQUANT_RECORD_BYTES * int(rng.integers(
        0, (pbuf - p_stride - nbytes) // REQUANT_RECORD_BYTES))
    core.write_bytes(Buffer.PBUF, p_addr, rec0, "tb")
    core.write_bytes(Buffer.PBUF, p_addr + p_stride, rec1, "tb")
    if ins.residual and near_limits:
        near = INT32_MAX - rng.integers(0, 1 << 21, n_out)
        res = np.where(rng.random(n_out) < 0.5, near, INT32_MIN + INT32_MAX - near)
        core.write_rows(Buffer.RBUF, ins.out_addr, 0, res[None], "tb")
    return ins.replace(sum_rows=1, p_addr=p_addr, p_stride=p_stride)


def _digits(core, ins):
    """A summing MM's residual and its two rows' requantised results (each with its
    records), from the golden simulator on copies of ``core``."""
    rows = []
    for r in range(2):
        probe = copy.deepcopy(core)
        exec_matrix(ins.replace(sum_rows=0, residual=0, p_addr=ins.p_addr + r * ins.p_stride),
                    probe, Counters(), "probe")
        rows.append(probe.read_rows(Buffer.RBUF, ins.out_addr, ins.out_stride, 2,
                                    BLOCK * ins.n_strips, "probe")[r])
    res = core.read_rows(Buffer.RBUF, ins.out_addr, 0, 1, BLOCK * ins.n_strips, "probe")[0]
    return res, rows[0], rows[1]


def test_sum_rows_adds_both_digits_into_one_row():
    """sum_rows: a 2-row MM of INT4 weights (3 strips, 4 K blocks, on two chains), each row
    requantised with its own records (p_addr and p_addr + p_stride), added into row 0's
    result with residuals near the INT32 limits: sat32(sat32(res + y0) + y1), bit for bit
    exec_matrix's; row 1's result row stays as it was. Then an MV and a plain 2-row MM, which
    must not inherit sum_rows or p_stride."""
    cfg = preset("tiny")
    main = dict(mv=False, bits=4, kind="mixed", mode=OutMode.Q32, residual=True, m_rows=2,
                n_strips=3, k_blocks=4)
    # Both saturations matter for the seed: an implementation adding res + y0 + y1 at once,
    # or saturating only at the end, differs from the golden one.
    rng = np.random.default_rng(31)
    core = _staged_core(cfg)
    ins = _sum_rows(rng, core, stage_matrix(rng, core, gscale=False, psum=False, relu=False,
                                            p_uniform=False, strided=False, **main))
    res, y0, y1 = _digits(core, ins)
    first = res + y0
    inner = np.clip(first, INT32_MIN, INT32_MAX)
    assert ((first > INT32_MAX) | (first < INT32_MIN)).any()
    assert ((inner + y1 > INT32_MAX) | (inner + y1 < INT32_MIN)).any()
    assert (np.clip(inner + y1, INT32_MIN, INT32_MAX)
            != np.clip(first + y1, INT32_MIN, INT32_MAX)).any()
    (summed, *_), _ = _check_program(cfg, [
        dict(main, sum_rows=True),
        dict(mv=True, bits=4, kind="mixed", mode=OutMode.Q32, residual=True, n_strips=3),
        dict(mv=False, bits=8, kind=2, mode=OutMode.Q32, m_rows=2, n_strips=2),
    ], seed=31)
    assert summed == ins


def _k_split_last(rng, core, program):
    """The last K range of a K-split summing MM: the partial sums of the previous (plain
    2-row ACC32) MM added per row, relu, no residual, the result written over row 0's
    partial sums."""
    prev = program[-1]
    ins = stage_matrix(rng, core, mv=False, bits=4, gscale=False, kind=4, mode=OutMode.Q32,
                       psum=True, residual=False, relu=True, p_uniform=False,
                       n_strips=prev.n_strips, k_blocks=2, m_rows=2, strided=True)
    ins = ins.replace(psum_addr=prev.out_addr, psum_stride=prev.out_stride,
                      out_addr=prev.out_addr, out_stride=prev.out_stride)
    return _sum_rows(rng, core, ins)


@pytest.mark.parametrize("chains", [1, 4])
def test_sum_rows_finishes_a_k_split(chains):
    """A K split in two: a plain 2-row ACC32 MM over the first K blocks, then a summing MM
    over the rest with psum (per row, from the first's rows) and relu; against exec_matrix,
    row 1's partial sums left in place."""
    _check_program(preset("tiny"), [
        dict(mv=False, bits=4, kind="mixed", mode=OutMode.ACC32, m_rows=2, n_strips=5,
             k_blocks=3),
        _k_split_last,
    ], seed=40 + chains, chains=chains, min_rows=4)


@pytest.mark.parametrize("what,change,code", [
    ("three rows", dict(m_rows=3), ErrorCode.DECODE),
    ("uniform records", dict(p_uniform=1), ErrorCode.DECODE),
    ("Q8", dict(out_mode=int(OutMode.Q8), residual=0), ErrorCode.DECODE),
    ("p_stride misaligned", dict(p_stride=4 + 128), ErrorCode.ADDRESS),
    ("row 1's records past PBUF", "past", ErrorCode.ADDRESS),
])
def test_sum_rows_refused(what, change, code):
    """What exec_matrix refuses in a summing MM sets its error code (DECODE for the flag
    combination, ADDRESS for p_stride off the record grid or row 1's records past PBUF's
    end); the instruction completes and writes nothing."""
    cfg = preset("tiny")
    rng = np.random.default_rng(7)
    core = _staged_core(cfg)
    ins = stage_matrix(rng, core, mv=False, bits=4, gscale=False, kind="mixed",
                       mode=OutMode.Q32, psum=False, residual=True, relu=False,
                       p_uniform=False, n_strips=2, k_blocks=2, m_rows=2, strided=False)
    ins = _sum_rows(rng, core, ins)
    if change == "past":
        nbytes = BLOCK * ins.n_strips * REQUANT_RECORD_BYTES
        change = dict(p_stride=cfg.pbuf.bytes - ins.p_addr - nbytes + REQUANT_RECORD_BYTES)
    ins = ins.replace(**change)
    staged = {name: core.mem[BUFFER_OF[name]].copy() for name in BUFFERS}
    with pytest.raises(ProgramError):
        exec_matrix(ins, copy.deepcopy(core), Counters(), "test")
    dut = make_harness(staged, chains=2, cfg=cfg)
    width = cfg.rbuf.width
    n_bytes = 4 * BLOCK * ins.n_strips
    rows = sorted({r for start in (ins.out_addr, ins.out_addr + ins.out_stride)
                   for r in range(start // width, -(-(start + n_bytes) // width))})
    got = []

    async def bench(ctx):
        await pysim_issue(ctx, dut.mm, instruction_bits(ins), dut.mm_done, max_cycles=200)
        assert ctx.get(dut.error) == code
        got.extend(await pysim_read_rows(ctx, dut.host_rbuf, rows))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    image = staged["rbuf"]
    assert got == [int.from_bytes(image[r * width:(r + 1) * width].tobytes(), "little")
                   for r in rows], what


@pytest.mark.parametrize("chains,ports", [(4, (1, 2)), (8, (2, 4))])
def test_more_wbuf_read_ports_speed_a_port_bound_mv(chains, ports):
    """A dense INT8 MV (a strip per chain x 8 K blocks) is bound by the WBUF read ports:
    16-byte rows feed chains that take an 8-byte word each per cycle, so a port serves two.
    Twice the ports (chain c through port c mod P) nearly halve it, up to four ports for
    eight chains; every run is bit-exact and within 5% of sim/perf_units.matrix_cost, which
    the full-size estimates use, or 24 cycles: once the ports keep up, the dequantisers
    bind and the model's fill is 8-20 cycles short of the RTL's (eight chains, four ports:
    317 against 302), a fixed amount that is under 1% of a full-size MV."""
    from flightllm.sim.perf_units import UnitTiming, matrix_cost
    spec = dict(mv=True, bits=8, kind="dense", mode=OutMode.ACC32, n_strips=chains,
                k_blocks=8)
    cycles = {}
    for p in ports:
        cfg = preset("tiny").replace(wbuf_read_ports=p, mv_rows=chains)
        (ins,), (rtl,) = _check_program(cfg, [spec], seed=21, chains=chains, min_rows=3)
        model = matrix_cost(ins, 16, cfg, UnitTiming()).cycles
        assert abs(model - rtl) <= max(0.05 * rtl, 24), (p, model, rtl)
        cycles[p] = rtl
    assert cycles[ports[1]] <= 0.6 * cycles[ports[0]], cycles


@pytest.mark.parametrize("words", [1, 2])
def test_an_mv_starts_while_its_activations_load(words):
    """A long MV (K = 32 blocks, 4-bit with multipliers, a strip per chain, 32-slice chains
    on 64-byte rows, as on u280) starts its passes as its activation blocks arrive instead
    of after all 32: bit-exact, and within 3% of sim/perf_units.matrix_cost, which never
    charged the load (the engine waiting for the whole vector took 632 cycles against the
    model's 598; now 606). With two dequantiser words per cycle a block takes 9 cycles
    instead of 17, and the four chains' word pairs fill the one read port's rows."""
    from flightllm.sim.perf_units import UnitTiming, matrix_cost
    cfg = preset("tiny").replace(wbuf=BufferSpec(64, 1024), mv_k=32, dequant_words=words)
    spec = dict(mv=True, bits=4, kind="dense", gscale=True, mode=OutMode.ACC32, n_strips=4,
                k_blocks=32)
    (ins,), (rtl,) = _check_program(cfg, [spec], seed=21, chains=4, min_rows=3,
                                    max_k_blocks=32)
    model = matrix_cost(ins, 16, cfg, UnitTiming()).cycles
    print(f"dequant_words={words}: RTL {rtl}, model {model}")
    assert abs(model - rtl) <= 0.03 * rtl, (model, rtl)


def test_interface_matches_the_brief():
    unit = MatrixUnit(preset("tiny"), max_k_blocks=8)
    names = {name for name, _ in unit.signature.members.items()}
    assert names == {"mm", "mv", "mm_done", "mv_done", "busy", "error",
                     "abuf", "wbuf", "rbuf", "pbuf"}
    assert unit.signature.members["error"].shape == 3
    two = MatrixUnit(preset("tiny").replace(wbuf_read_ports=2), max_k_blocks=8)
    assert set(two.signature.members) == names | {"wbuf_b"}
    four = MatrixUnit(preset("tiny").replace(wbuf_read_ports=4), max_k_blocks=8)
    assert set(four.signature.members) == names | {"wbuf_b", "wbuf_c", "wbuf_d"}
    with pytest.raises(ValueError, match="chains must be a power of two"):
        MatrixUnit(preset("tiny"), chains=3)
    with pytest.raises(ValueError, match="max_k_blocks"):
        MatrixUnit(preset("tiny"), max_k_blocks=12)


@pytest.fixture(scope="module")
def unit_tiny(rtl_sim):
    return rtl_sim.build("matrix_unit_tiny", make_harness)


def _run(rtl_sim, build, testcase, tmp_path, **env):
    return rtl_sim.run(build, MODULE, testcase, tmp_path, FLIGHTLLM_TB_PRESET="tiny",
                       FLIGHTLLM_TB_MAX_K_BLOCKS=MAX_K_BLOCKS, **env)


@pytest.mark.rtl
def test_random_instructions(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "random_instructions", tmp_path)
    assert out["ok"], out
    assert out["mismatches"] == 0 and out["instructions"] >= 120, out
    assert out["checked_rows"] > 1000 and out["final_rows_checked"] > 9000, out


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "corrupted_reference", tmp_path)
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["mismatches"] == 1, out


@pytest.mark.rtl
def test_out_of_range_operand_sets_error_and_finishes(rtl_sim, unit_tiny, tmp_path):
    """Out-of-range and misaligned operands (weights off the 8-byte grid among them) and bad
    flags each set their error code, as the golden simulator refuses them."""
    out = _run(rtl_sim, unit_tiny, "bad_operands", tmp_path)
    assert out["ok"], out
    assert out["errors_seen"] == out["bad_instructions"] == 8, out


@pytest.mark.rtl
def test_cycles_per_instruction(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "cycles", tmp_path)
    assert out["ok"], out
    for key, v in out["cycles"].items():
        # The engine alone needs the chain-bound time; the unit adds its start-up and drain.
        assert v["cycles"] <= 3 * v["wbuf_rows"] + v["chain_bound"] + 120, (key, v)


@pytest.fixture(scope="module")
def unit_tiny_pairs(rtl_sim):
    return rtl_sim.build("matrix_unit_tiny_w2",
                         lambda: make_harness(cfg=preset("tiny").replace(dequant_words=2)))


@pytest.mark.rtl
def test_random_instructions_with_two_word_dequantisers(rtl_sim, unit_tiny_pairs, tmp_path):
    """The random bench with the chains' readers delivering word pairs to dequantisers of two
    words per cycle (strips of odd word counts among them; the host's reads contend for every
    buffer port at random)."""
    out = _run(rtl_sim, unit_tiny_pairs, "random_instructions", tmp_path,
               FLIGHTLLM_TB_DEQUANT_WORDS="2")
    assert out["ok"], out
    assert out["mismatches"] == 0 and out["instructions"] >= 120, out
    assert out["checked_rows"] > 1000 and out["final_rows_checked"] > 9000, out


@pytest.mark.rtl
@pytest.mark.slow
def test_random_instructions_long(rtl_sim, unit_tiny, tmp_path):
    out = _run(rtl_sim, unit_tiny, "random_instructions", tmp_path,
               FLIGHTLLM_TB_INSTRUCTIONS="1500", FLIGHTLLM_TB_SEED="7")
    assert out["ok"] and out["mismatches"] == 0, out
