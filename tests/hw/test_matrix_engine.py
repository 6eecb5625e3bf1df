# amaranth: UnusedElaboratable=no
"""The matrix engine: contract-derived layouts, a quick Amaranth-simulator run, and the cocotb +
Verilator benches (random MM/MV instructions against the golden simulator's exec_matrix,
checker self-test, cycles per MV instruction)."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import data

from flightllm.contract.config import BLOCK, preset
from flightllm.contract.isa import OPCODES, Buffer, Opcode, OutMode
from flightllm.contract.numerics import INT32_MAX, INT32_MIN
from flightllm.contract.params import REQUANT_RECORD_BYTES, pack_requant_records
from flightllm.hw.matrix_engine import COMMAND_LAYOUT, PARAMS_LAYOUT, RESULT_LAYOUT, MatrixEngine
from flightllm.sim.execute import Counters, exec_matrix

sys.path.insert(0, str(Path(__file__).parent / "cocotb"))
import tb_matrix_model  # noqa: E402
from tb_matrix_model import EngineCase, RowChecker, _le, random_case  # noqa: E402
from tb_model import pack_fields, unpack_fields  # noqa: E402

MODULE = "tb_matrix_engine"
#: The RTL benches' build: tiny's four chains, K up to 16 blocks.
MAX_K_BLOCKS = 16


def test_layouts_follow_the_contract():
    spec = OPCODES[Opcode.MM]
    for name, fld in COMMAND_LAYOUT:
        if name != "mv":
            assert fld.shape.width == spec.field(name).width, name
    # 16 records packed by the contract read back field by field through the layout.
    rng = np.random.default_rng(0)
    bias = rng.integers(-(1 << 31), 1 << 31, 16)
    mult = rng.integers(-(1 << 15), 1 << 15, 16)
    shift = rng.integers(0, 63, 16)
    raw = int.from_bytes(pack_requant_records(bias, mult, shift), "little")
    view = data.Const(PARAMS_LAYOUT, raw)
    assert [view[j].bias for j in range(16)] == bias.tolist()
    assert [view[j].mult for j in range(16)] == mult.tolist()
    assert [view[j].shift for j in range(16)] == shift.tolist()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="chains must be a power of two"):
        MatrixEngine(preset("tiny"), chains=3)
    with pytest.raises(ValueError, match="max_k_blocks"):
        MatrixEngine(preset("tiny"), max_k_blocks=12)


def test_sub_units_can_be_replaced_by_black_boxes():
    """The hook hierarchical Verilog and the resource estimate use: every chain and
    dequantiser replaced by a unit made from its kind and the unit, the engine still
    elaborates around them."""
    from amaranth.back import rtlil
    from amaranth.lib import wiring

    class Box(wiring.Component):
        def __init__(self, kind, unit):
            self.kind = kind
            super().__init__(unit.signature)

        def elaborate(self, platform):
            return Module()

    engine = MatrixEngine(preset("tiny"), chains=2, max_k_blocks=8)
    originals = engine.chain_units + engine.dequantisers
    engine.replace_sub_units(Box)
    assert [b.kind for b in engine.chain_units] == ["dsp_chain"] * 2
    assert [b.kind for b in engine.dequantisers] == ["dequantiser"] * 2
    assert [b.signature for b in engine.chain_units + engine.dequantisers] == \
        [u.signature for u in originals]
    text = rtlil.convert(engine, name="top")
    # The boxes are empty: no slice of a chain, no code table of a dequantiser (both are in
    # the engine's RTLIL without the replacement).
    assert "top.chain0.dsp0" not in text and "\\codes" not in text


def _simulate(bench_class, cases, chains: int, *, max_cycles: int = 20000,
              pair_group: int = 1) -> RowChecker:
    dut = MatrixEngine(preset("tiny"), chains=chains, max_k_blocks=8, pair_group=pair_group)
    checker = RowChecker("matrix engine")
    for case in cases:
        for row in case.expected:
            checker.expect(row)
    bench = bench_class(dut)
    bench.feed(dut.cmd, [pack_fields(COMMAND_LAYOUT, c.command) for c in cases])
    for c in range(chains):
        bench.feed(dut.words[c], [w for case in cases for w in case.words[c]])
    for name in ("acts", "params", "psum", "residual"):
        bench.feed(getattr(dut, name), [b for case in cases for b in getattr(case, name)])
    got = bench.drain(dut.results, count=sum(len(case.expected) for case in cases),
                      max_cycles=max_cycles)
    bench.run()
    for row in got:
        checker.check(row)
    return checker


def test_engine_in_amaranth_simulator(stream_bench):
    """Three instructions (MV ACC32 on mixed codes; MM Q8 with psum and relu, strided, odd
    rows; MM Q32 with psum, residual and a uniform record on random index bytes) through two
    chains, against exec_matrix."""
    cfg = preset("tiny")
    rng = np.random.default_rng(4)
    common = dict(mv=False, psum=True, residual=False, relu=False, p_uniform=False,
                  strided=False, m_rows=1)
    cases = [
        random_case(rng, cfg, 2, **dict(common, mv=True, psum=False), bits=4, gscale=False,
                    kind="mixed", mode=OutMode.ACC32, n_strips=3, k_blocks=2),
        random_case(rng, cfg, 2, **dict(common, relu=True, strided=True, m_rows=3), bits=8,
                    gscale=False, kind=2, mode=OutMode.Q8, n_strips=2, k_blocks=2),
        random_case(rng, cfg, 2, **dict(common, residual=True, p_uniform=True, m_rows=4),
                    bits=2, gscale=True, kind="bytes", mode=OutMode.Q32, n_strips=3,
                    k_blocks=1),
    ]
    checker = _simulate(stream_bench, cases, chains=2)
    assert checker.errors == 0 and checker.count == sum(c.values for c in cases) == 336


@pytest.mark.parametrize("pair_group", [2, 4])
def test_engine_serves_groups_of_token_pairs(pair_group, stream_bench):
    """With ``mm_pair_group`` > 1 the weights stream once per group of token pairs: MMs with
    full and short last groups (odd rows, one pair), an MV, Q8/Q32/ACC32 with psum, residual
    and uniform records, against exec_matrix in (group, strip, pair, token) order."""
    cfg = preset("tiny")
    rng = np.random.default_rng(40 + pair_group)
    common = dict(mv=False, psum=True, residual=False, relu=False, p_uniform=False,
                  strided=False, pair_group=pair_group)
    cases = [
        random_case(rng, cfg, 2, **dict(common, relu=True, strided=True, m_rows=4 * pair_group - 1),
                    bits=8, gscale=False, kind=2, mode=OutMode.Q8, n_strips=3, k_blocks=2),
        random_case(rng, cfg, 2, **dict(common, mv=True, psum=False, m_rows=1), bits=4,
                    gscale=False, kind="mixed", mode=OutMode.ACC32, n_strips=3, k_blocks=2),
        random_case(rng, cfg, 2, **dict(common, residual=True, p_uniform=True,
                                        m_rows=2 * pair_group + 2),
                    bits=2, gscale=True, kind="bytes", mode=OutMode.Q32, n_strips=2,
                    k_blocks=1),
        random_case(rng, cfg, 2, **dict(common, psum=False, m_rows=2), bits=4, gscale=True,
                    kind="dense", mode=OutMode.ACC32, n_strips=1, k_blocks=3),
    ]
    checker = _simulate(stream_bench, cases, chains=2, pair_group=pair_group)
    assert checker.errors == 0 and checker.count == sum(c.values for c in cases)


@pytest.mark.parametrize("pair_group,m_rows", [(2, 8), (4, 8), (4, 5)])
def test_group_cycles_match_the_performance_model(pair_group, m_rows, stream_bench):
    """A dense INT4 MM (4 strips x 8 K blocks on tiny's four chains) in the engine, from the
    command to its last result row, within 3% of sim/perf_units.matrix_cost (less the unit's
    issue cycles; a WBUF port wide enough not to bind, as the engine alone has none)."""
    from flightllm.contract.config import BufferSpec
    from flightllm.sim.perf_units import UnitTiming, matrix_cost
    cfg = preset("tiny").replace(mm_pair_group=pair_group)
    rng = np.random.default_rng(1)
    case = random_case(rng, cfg, 4, mv=False, bits=4, gscale=False, kind="dense",
                       mode=OutMode.ACC32, psum=False, residual=False, relu=False,
                       p_uniform=False, n_strips=4, k_blocks=8, m_rows=m_rows, strided=False,
                       pair_group=pair_group)
    dut = MatrixEngine(cfg, max_k_blocks=8)
    bench = stream_bench(dut)
    bench.feed(dut.cmd, [pack_fields(COMMAND_LAYOUT, case.command)])
    for c in range(4):
        bench.feed(dut.words[c], case.words[c])
    for name in ("acts", "params", "psum", "residual"):
        bench.feed(getattr(dut, name), getattr(case, name))
    got = bench.drain(dut.results, count=len(case.expected), watch=(dut.busy,))
    bench.run()
    assert len(got) == len(case.expected)
    busy = [i for i, (b,) in enumerate(bench.samples) if b]
    rtl = busy[-1] - busy[0] + 1
    t = UnitTiming()
    wide = cfg.replace(wbuf=BufferSpec(1024, 64))
    model = matrix_cost(case.ins, 16, wide, t).cycles - t.matrix_issue
    assert abs(model - rtl) <= 0.03 * rtl, (model, rtl)


def _sum_rows_case(rng, cfg, chains, monkeypatch, **kw) -> EngineCase:
    """A random 2-row Q32 MM (random_case's, ``kw`` its arguments) made a ``sum_rows`` one:
    row 1's records (row 0's in another channel order) ``p_stride`` after row 0's, result-row
    residuals within 2**21 of the INT32 limits; streams and expected rows (one per strip,
    row 0) from exec_matrix on the bytes random_case staged."""
    staged = []
    real = tb_matrix_model.exec_matrix

    def capture(ins, core, *args):
        staged.append(copy.deepcopy(core))
        real(ins, core, *args)

    with monkeypatch.context() as patch:
        patch.setattr(tb_matrix_model, "exec_matrix", capture)
        case = random_case(rng, cfg, chains, mv=False, mode=OutMode.Q32, p_uniform=False,
                           m_rows=2, **kw)
    core, ins = staged[0], case.ins
    n_out = BLOCK * ins.n_strips
    nbytes = n_out * REQUANT_RECORD_BYTES
    recs = core.read_bytes(Buffer.PBUF, ins.p_addr, nbytes, "tb").reshape(n_out, -1)
    p_stride = nbytes + 8 * int(rng.integers(0, 4))
    p_addr = 8 * int(rng.integers(0, (len(core.mem[Buffer.PBUF]) - p_stride - nbytes) // 8))
    core.write_bytes(Buffer.PBUF, p_addr, recs.reshape(-1), "tb")
    core.write_bytes(Buffer.PBUF, p_addr + p_stride, recs[rng.permutation(n_out)].reshape(-1),
                     "tb")
    near = INT32_MAX - rng.integers(0, 1 << 21, n_out)
    res = np.where(rng.random(n_out) < 0.5, near, INT32_MIN + INT32_MAX - near)
    core.write_rows(Buffer.RBUF, ins.out_addr, 0, res[None], "tb")
    ins = ins.replace(sum_rows=1, p_addr=p_addr, p_stride=p_stride)
    after = copy.deepcopy(core)
    exec_matrix(ins, after, Counters(), "tb")
    rec_bytes = BLOCK * REQUANT_RECORD_BYTES
    params, residual, expected = [], [], []
    for s in range(ins.n_strips):
        for at in (p_addr + s * rec_bytes, p_addr + p_stride + s * rec_bytes):
            params.append(_le(core.mem[Buffer.PBUF][at:at + rec_bytes]))
        at = ins.out_addr + 4 * BLOCK * s
        if ins.residual:
            residual.append(_le(core.mem[Buffer.RBUF][at:at + 4 * BLOCK]))
        y = after.read_rows(Buffer.RBUF, at, 0, 1, BLOCK, "tb")[0]
        expected.append({"y": y.tolist(), "row": 0, "strip": s,
                         "last": int(s == ins.n_strips - 1)})
    return EngineCase(ins, dict(case.command, sum_rows=1), case.words, case.acts, params,
                      case.psum, residual, expected, label="sum_rows " + case.label)


def _bumpy_feed(bench, port, beats, rng) -> None:
    """Feed ``port`` like StreamBench.feed, but idle for a random 0..3 cycles before each
    beat (bubbles between a sum's two tokens)."""
    gaps = rng.integers(0, 4, len(beats)).tolist()

    async def feed(ctx):
        for beat, gap in zip(beats, gaps):
            ctx.set(port.valid, 0)
            for _ in range(gap):
                await ctx.tick()
            ctx.set(port.payload.as_value(), beat)
            ctx.set(port.valid, 1)
            while not (await ctx.tick().sample(port.ready))[-1]:
                pass
        ctx.set(port.valid, 0)

    bench.sim.add_testbench(feed, background=True)


def test_sum_rows_adds_two_requantised_rows(stream_bench, monkeypatch):
    """sum_rows: each token of the pair requantised with its own record beat, the sums
    sat32(sat32(res + y0) + y1) (residual near the INT32 limits, with and without psum and
    relu, or no residual) as one result row per strip, tagged row 0, ``last`` on the final
    one; between plain instructions, with bubbles in the record and residual streams and a
    results consumer that is not always ready."""
    cfg = preset("tiny")
    rng = np.random.default_rng(12)
    common = dict(psum=False, residual=False, relu=False, strided=False, p_uniform=False)
    plain = dict(common, bits=8, gscale=False, kind=2, n_strips=2, k_blocks=2)
    cases = [
        _sum_rows_case(rng, cfg, 2, monkeypatch, bits=4, gscale=False, kind="mixed",
                       psum=False, residual=True, relu=False, n_strips=5, k_blocks=3,
                       strided=False),
        random_case(rng, cfg, 2, **dict(plain, mv=False, mode=OutMode.Q32, residual=True,
                                        m_rows=2)),
        _sum_rows_case(rng, cfg, 2, monkeypatch, bits=4, gscale=True, kind=4, psum=True,
                       residual=False, relu=True, n_strips=3, k_blocks=4, strided=True),
        random_case(rng, cfg, 2, **dict(plain, mv=True, mode=OutMode.Q8, m_rows=1)),
        _sum_rows_case(rng, cfg, 2, monkeypatch, bits=4, gscale=False, kind="dense",
                       psum=True, residual=True, relu=True, n_strips=2, k_blocks=1,
                       strided=False),
    ]
    dut = MatrixEngine(cfg, chains=2, max_k_blocks=8)
    bench = stream_bench(dut)
    bench.feed(dut.cmd, [pack_fields(COMMAND_LAYOUT, c.command) for c in cases])
    for c in range(2):
        bench.feed(dut.words[c], [w for case in cases for w in case.words[c]])
    bench.feed(dut.acts, [b for case in cases for b in case.acts])
    for name in ("params", "psum", "residual"):
        _bumpy_feed(bench, getattr(dut, name), [b for case in cases for b in getattr(case, name)],
                    rng)
    want = [row for case in cases for row in case.expected]
    stalls = rng.random(4 * len(want) + 2000) < 0.3
    got = []

    async def drain(ctx):
        for stall in stalls:
            if len(got) == len(want):
                return
            ctx.set(dut.results.ready, int(not stall))
            _, _, valid, ready, payload = await ctx.tick().sample(
                dut.results.valid, dut.results.ready, dut.results.payload.as_value())
            if valid and ready:
                got.append(unpack_fields(RESULT_LAYOUT, payload))

    bench.sim.add_testbench(drain)
    bench.run()
    checker = RowChecker("sum_rows")
    for row in want:
        checker.expect(row)
    for row in got:
        checker.check(row)
    assert len(got) == len(want) and checker.errors == 0


# --------------------------------------------------------------------------- cocotb
@pytest.fixture(scope="module")
def engine_tiny(rtl_sim):
    return rtl_sim.build("matrix_engine_tiny",
                         lambda: MatrixEngine(preset("tiny"), max_k_blocks=MAX_K_BLOCKS))


#: What the benches need to know about the build.
TB_ENV = {"FLIGHTLLM_TB_PRESET": "tiny", "FLIGHTLLM_TB_MAX_K_BLOCKS": MAX_K_BLOCKS}


@pytest.mark.rtl
def test_random_instructions(rtl_sim, engine_tiny, tmp_path):
    rtl_sim.expect_pass(engine_tiny, MODULE, "random_instructions", tmp_path, min_count=1000,
                        **TB_ENV)


@pytest.mark.rtl
def test_checker_catches_a_corrupted_reference(rtl_sim, engine_tiny, tmp_path):
    rtl_sim.expect_caught(engine_tiny, MODULE, "corrupted_reference", tmp_path, checked="rows",
                          per_item=16, **TB_ENV)


@pytest.mark.rtl
def test_mv_cycles_per_instruction(rtl_sim, engine_tiny, tmp_path):
    """Cycles per MV instruction at each N: sparser is never slower, and no instruction takes
    more than its chain-bound or dequantiser-bound time plus the pipeline's fill."""
    out = rtl_sim.run(engine_tiny, MODULE, "mv_cycles", tmp_path, **TB_ENV)
    assert out["ok"], out
    cycles = {key: v["cycles"] for key, v in out["cycles"].items()}
    mv = [cycles[f"MV N={n}"] for n in (16, 8, 4, 2)]
    assert mv == sorted(mv, reverse=True), cycles
    assert mv[-1] < mv[0] / 2, cycles
    for key, v in out["cycles"].items():
        # A block costs at most one cycle per word plus two (dequantiser); fill <= 80.
        blocks = out["k_blocks"] * out["n_strips"] // out["chains"] * (2 if "MM" in key else 1)
        bound = max(v["chain_bound"], v["words_per_chain"] + 2 * blocks) + 80
        assert v["cycles"] <= bound, (key, v, bound)


@pytest.mark.rtl
@pytest.mark.slow
def test_random_instructions_long(rtl_sim, engine_tiny, tmp_path):
    rtl_sim.expect_pass(engine_tiny, MODULE, "random_instructions", tmp_path, min_count=100000,
                        FLIGHTLLM_TB_VALUES="100000", FLIGHTLLM_TB_SEED="7", **TB_ENV)
