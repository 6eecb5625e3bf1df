"""The performance model against hand-computed cycle counts, and its counts against golden.

Hand counts use the ``tiny`` configuration (mv_k 16, 4 chains, 4 SFU lanes, 64-bit AXI at
200 MHz) with the U280's HBM figures: 8 bytes per cycle per channel (the port, not the DRAM,
limits), a row gap of round(31.1 ns x 200 MHz) = 6 cycles, latency round(106.7 x 0.2) = 21.
An LD/ST keeps its engine busy for ISSUE, then the longest of its channels' time, its data
path (every segment of every channel in turn: one 8-byte beat per cycle, at least SEG_ISSUE a
segment; an ST segment SEG more) and
its buffer port, then LAT and DRAIN (the engine waits for every burst before ``done``).
"""

import pytest

from flightllm.contract.config import BufferSpec, preset
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, Opcode, SysOp, WeightBits
from flightllm.sim.golden import DeadlockError, GoldenSimulator
from flightllm.sim.perf import PerfError, PerfModel, SparsityMap
from flightllm.sim.perf_units import UnitTiming

from .progs import Q, bit, load, store

CFG = preset("tiny")
#: tiny with a 64-byte WBUF port: the weight port no longer binds, so the matrix engine's own
#: timing shows (as in the RTL engine bench, which fed the chains directly).
ENGINE = CFG.replace(wbuf=BufferSpec(64, 1024))
_T = UnitTiming()
#: mv_k + the chain's pipeline beyond it + the output stage + issue.
FILL = CFG.mv_k + _T.chain_latency_extra + _T.output_stage + _T.matrix_issue
#: The default mv() (8 dense strips of 8 blocks on the four chains) on ENGINE: 272 + FILL.
MV_ENGINE = 272 + FILL
ISSUE, GAP, LAT = 4, 6, 21
SEG, SEG_ISSUE, DRAIN, MISC_ISSUE = 3, 4, 2, 15


def mv(strips=8, kb=8, **kw) -> Instruction:
    fields = dict(w_addr=0, wbits=WeightBits.INT4, n_strips=strips, k_blocks=kb, x_addr=0,
                  out_addr=0)
    fields.update(kw)
    return Instruction(Opcode.MV, **fields)


#: Fetch out of the way (every instruction decoded at cycle 0, no FIFO limit), so the unit
#: tests below count one mechanism at a time; the fetch tests use the defaults.
NO_FETCH = dict(decode_word=0, queue_latency=0, queue_depth=1 << 30)


def run(streams, cfg=ENGINE, **kw):
    model_kw = {k: kw.pop(k) for k in ("default_keep", "sparsity", "channel_map", "timing")
                if k in kw}
    model_kw.setdefault("timing", UnitTiming(**NO_FETCH))
    return PerfModel(cfg, **model_kw).run(streams, **kw)


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize("sparse, keep, block, table", [
    (0, 16, 1 + 0 + 16, 0),   # dense: 16 value words (4-bit), 16 passes of the 16-slice chain
    # 8 index words + 8 value words, the first index word taken in the block's select
    # cycle; one code-table word per strip.
    (1, 8, 8 + 8, 1),
    (1, 4, 4 + 4, 1),
    (1, 2, 2 + 2, 1),
])
def test_mv_cycles_by_sparsity(sparse, keep, block, table):
    # 8 strips on 4 chains: 2 strips of 8 blocks per chain.
    r = run([[mv(sparse=sparse)]], default_keep=keep)
    assert r.cycles == 2 * (table + 8 * block) + FILL
    assert r.macs_dense == 256 * 64 and r.macs_stored == 16 * keep * 64


def test_mv_model_is_close_to_the_rtl_engine_bench():
    # docs/hw_datapath.md, mv_cycles bench: 313 / 293 / 166 / 104 cycles (N = 16, 8, 4, 2).
    measured = {16: 313, 8: 293, 4: 166, 2: 104}
    for keep, cycles in measured.items():
        r = run([[mv(sparse=int(keep < 16))]], default_keep=keep)
        assert abs(r.cycles - cycles) / cycles < 0.02, (keep, r.cycles)


def test_requantising_waits_for_each_strips_parameters():
    # A Q8/Q32 result needs its strip's 128 bytes of parameter records; the unit reads them
    # one strip ahead, so the strips of a round that finish together wait for the PBUF rows
    # of all but the first (ENGINE: 16-byte rows, 8 a strip, less the one row the strip
    # before puts out). The matrix unit bench: dense INT4 MV of 4 strips x 4 blocks on 4
    # chains, ACC32 116 cycles and Q32 139 in the RTL; the model adds 3 x 7 = 21.
    from flightllm.contract.isa import OutMode
    acc = run([[mv(strips=4, kb=4)]]).cycles
    assert run([[mv(strips=4, kb=4, out_mode=OutMode.Q32)]]).cycles == acc + 3 * 7
    assert run([[mv(strips=4, kb=4, out_mode=OutMode.Q8, p_uniform=1)]]).cycles == acc
    assert run([[mv(strips=1, kb=4, out_mode=OutMode.Q32)]]).cycles == \
        run([[mv(strips=1, kb=4)]]).cycles
    # An MM's rows hide it: 8 rows a strip take as long as the strip's parameter rows.
    mm = Instruction(Opcode.MM, w_addr=0, wbits=WeightBits.INT4, n_strips=4, k_blocks=4,
                     x_addr=0, out_addr=0, m_rows=8)
    assert run([[mm.replace(out_mode=OutMode.Q32)]]).cycles == run([[mm]]).cycles


def test_the_wbuf_port_bounds_the_engine():
    # tiny's WBUF serves one 16-byte row per cycle to all four chains: 8 strips x 8 blocks x
    # 128 bytes take 512 cycles of the port, more than the chains' 272.
    r = run([[mv()]], cfg=CFG)
    assert r.cycles == 8 * 8 * 128 // 16 + FILL
    assert run([[mv()]]).cycles == MV_ENGINE


def test_readers_take_turns_on_a_buffer_port_and_a_writer_does_not_wait():
    # 128-bit masters: an 8 KiB transfer's channel time (512 + gap) matches its 512 WBUF rows.
    cfg = CFG.replace(axi_data_bits=128)
    # A store from WBUF reads the rows the MV's weight reads need: the ST goes first (queue
    # order breaks the tie at cycle 0) and holds the read port for 512 cycles from cycle 4;
    # the MV's 512 weight rows come after it.
    readers = run([[store(Buffer.WBUF, 8192, 8192), mv()]], cfg=cfg)
    assert readers.cycles == ISSUE + 512 + 512 + FILL
    # A load refilling WBUF uses the write port (hw/bufport.py takes one read and one write
    # per cycle): the MV runs beside it as if the load went to another buffer.
    refill = run([[load(Buffer.WBUF, 8192, 8192), mv()]], cfg=cfg)
    apart = run([[load(Buffer.ABUF, 0, 8192), mv()]], cfg=cfg)
    assert refill.cycles == apart.cycles == 512 + FILL


def test_mm_streams_weights_once_per_token_pair():
    mm = Instruction(Opcode.MM, w_addr=0, wbits=WeightBits.INT4, n_strips=8, k_blocks=8,
                     m_rows=4, x_stride=128, out_stride=128)
    r = run([[mm]])
    assert r.cycles == 2 * 272 + UnitTiming().mm_pair_switch + FILL  # RTL bench: 594
    # Five rows need three pairs; the odd row's pair costs as much as a full one.
    r5 = run([[mm.replace(m_rows=5)]])
    assert r5.cycles == 3 * 272 + 2 * UnitTiming().mm_pair_switch + FILL


def test_mm_pair_group_reads_weights_once_per_group():
    # mm_pair_group = 2: each chain holds a weight pass for both pairs of a group, so a dense
    # INT4 block takes its 2 x 16 passes (the 17 cycles of words and block switch hide under
    # them); the group starts once both pairs' 8 activation blocks are in, and its 4 rows of
    # each chain's last strip leave after the last pass.
    mm = Instruction(Opcode.MM, w_addr=0, wbits=WeightBits.INT4, n_strips=8, k_blocks=8,
                     m_rows=4, x_stride=128, out_stride=128)
    grouped = ENGINE.replace(mm_pair_group=2)
    shared = run([[mm]], cfg=grouped)
    assert shared.cycles == 2 * 8 * 32 + FILL + (2 - 1) * 8 + (4 - 2) * 4
    # The timing knob overrides the configuration (a what-if of the study).
    assert run([[mm]], timing=UnitTiming(**NO_FETCH, mm_pairs_per_weight_read=2)
               ).cycles == shared.cycles
    # A short last group: 3 pairs are a group of 2 and one of 1 (as per pair).
    r5 = run([[mm.replace(m_rows=5)]], cfg=grouped)
    assert r5.cycles == (2 * 8 * 32 + 2 * 8 * 17 + UnitTiming().mm_pair_switch + FILL
                         + (2 - 1) * 8)
    # On tiny's 16-byte WBUF port the weights bind when read per pair (2 x 512 rows); read
    # once (512 rows), the port takes as long as the chains.
    assert run([[mm]], cfg=CFG).cycles == 2 * 512 + FILL
    assert run([[mm]], cfg=CFG.replace(mm_pair_group=2)).cycles == shared.cycles


def test_sfu_cycle_model():
    soft = Instruction(Opcode.MISC, func=MiscFunc.SOFTMAX, defer=1, n=64, m=2,
                       a_buf=Buffer.RBUF, b_buf=Buffer.RBUF, d_buf=Buffer.ABUF)
    # 64 elements on 4 lanes: 16 beats; deferred row = max(16 + 12, divider 18 + 10) = 28.
    assert run([[soft]]).cycles == 2 * 28 + 10 + MISC_ISSUE
    add = Instruction(Opcode.MISC, func=MiscFunc.ADD, n=256, m=8, a_buf=Buffer.ABUF,
                      b_buf=Buffer.ABUF, d_buf=Buffer.ABUF)
    # SFU bench: 64 cycles per 256-element row.
    assert run([[add]]).cycles == 8 * 64 + 10 + MISC_ISSUE
    norm = Instruction(Opcode.MISC, func=MiscFunc.RMSNORM, n=64, m=1, a_buf=Buffer.RBUF,
                       d_buf=Buffer.ABUF)
    assert run([[norm]]).cycles == (16 + 11 + 18 + 5) + 10 + MISC_ISSUE


def test_a_load_moves_one_beat_per_cycle_whatever_its_channels():
    # hw/dma.py's data path takes one segment at a time: two channels' 4096 bytes pass one
    # after the other, 2 x 512 beats (the next segment's descriptor loads as one ends),
    # although each channel alone needs 512 + GAP.
    both = Instruction(Opcode.LD, buf=Buffer.ABUF, buf_addr=0, chan=0, nch=2, ch_stride=4096,
                       hbm_addr=0, len=4096, n1=1, n2=1)
    assert run([[both]]).cycles == ISSUE + 2 * 512 + LAT + DRAIN
    # 128-bit beats halve it; the 16-byte ABUF row per cycle (512 rows) does not bind.
    wide = run([[both]], cfg=CFG.replace(axi_data_bits=128))
    assert wide.cycles == ISSUE + 2 * 256 + LAT + DRAIN


def test_load_lanes_move_channels_side_by_side():
    # ld_lanes = 2: channels' segments move side by side, each lane one beat per cycle, so
    # two channels on two lanes take one channel's time (the timing's ld_lanes, a what-if,
    # gives the same).
    both = Instruction(Opcode.LD, buf=Buffer.ABUF, buf_addr=0, chan=0, nch=2, ch_stride=4096,
                       hbm_addr=0, len=4096, n1=1, n2=1)
    cfg = CFG.replace(abuf=BufferSpec(64, 512))   # the buffer's row port does not bind
    assert run([[both]], cfg=cfg.replace(ld_lanes=2)).cycles == ISSUE + 512 + GAP + LAT + DRAIN
    lanes = UnitTiming(**NO_FETCH, ld_lanes=2)
    assert run([[both]], cfg=cfg, timing=lanes).cycles == ISSUE + 512 + GAP + LAT + DRAIN
    assert run([[both]], cfg=cfg).cycles == ISSUE + 2 * 512 + LAT + DRAIN
    # Each lane writes its own bank of WBUF: with 32-byte beats and 16-byte rows (256 per
    # channel) the one write port binds a single lane at 512 rows, two lanes at 256 rows
    # each. ABUF has one write port, which binds two lanes as it does one.
    narrow = CFG.replace(axi_data_bits=256)
    wbuf = both.replace(buf=Buffer.WBUF)
    one = run([[wbuf]], cfg=narrow).cycles
    two = run([[wbuf]], cfg=narrow.replace(ld_lanes=2)).cycles
    assert one >= ISSUE + 512 + LAT + DRAIN and two < ISSUE + 512 - 128
    assert run([[both]], cfg=narrow.replace(ld_lanes=2)).cycles >= ISSUE + 512 + LAT + DRAIN


def test_load_cycles_and_contiguity():
    r = run([[load(Buffer.ABUF, 0, 4096)]])
    assert r.cycles == ISSUE + 4096 // 8 + GAP + LAT + DRAIN  # the channel binds
    assert r.hbm_read_bytes == {0: 4096}
    # The same bytes as 16 separate 256-byte rows open 16 DRAM rows.
    strided = Instruction(Opcode.LD, buf=Buffer.ABUF, buf_addr=0, chan=0, hbm_addr=0, len=256,
                          n1=16, hbm_stride1=1024, buf_stride1=256, n2=1)
    assert run([[strided]]).cycles == ISSUE + 4096 // 8 + 16 * GAP + LAT + DRAIN
    # Contiguous, one DRAM row: 16 segments back to back through the data path take what
    # one segment of the same bytes does (the channel binds); segments shorter than the
    # address generator's SEG_ISSUE cycles wait for it.
    contiguous = strided.replace(hbm_stride1=256)
    assert run([[contiguous]]).cycles == r.cycles
    short = strided.replace(len=16, n1=64, hbm_stride1=16, buf_stride1=16)
    assert run([[short]]).cycles == ISSUE + 64 * SEG_ISSUE + LAT + DRAIN


def test_one_transfer_in_flight_per_engine():
    both = Instruction(Opcode.LD, buf=Buffer.ABUF, buf_addr=0, chan=0, nch=2, ch_stride=4096,
                       hbm_addr=0, len=4096, n1=1, n2=1)
    assert run([[both]]).hbm_read_bytes == {0: 4096, 1: 4096}
    # Two LDs: the second starts once the first is done, latency included.
    serial = run([[load(Buffer.ABUF, 0, 4096), load(Buffer.ABUF, 4096, 4096)]])
    assert serial.cycles == 2 * (ISSUE + 512 + GAP + LAT + DRAIN)
    assert serial.busy[0]["LD"] == serial.cycles


def test_cross_channel_penalty():
    plain = run([[load(Buffer.ABUF, 0, 4096)]])
    # Local channel 0 wired to pseudo-channel 5: another mini-switch group (4 per group).
    crossed = run([[load(Buffer.ABUF, 0, 4096)]], channel_map=lambda core, local: 5)
    assert crossed.hbm_read_bytes == {5: 4096}
    # Half the rate (1024 cycles for the bytes) plus the crossing latency round(20 x 0.2) = 4.
    assert crossed.cycles == ISSUE + 1024 + GAP + 4 + LAT + DRAIN
    assert crossed.cycles > plain.cycles


def test_a_store_during_a_port_bound_matrix_instruction_delays_it():
    # On tiny's 16-byte WBUF port the MV's 8192 weight bytes need 512 port cycles, more than
    # its chains (272): port-bound, 512 + FILL. A ST that reads 1024 bytes (64 rows) of WBUF
    # meanwhile wins every other cycle of the round-robin read arbiter: the MV loses 64.
    add = Instruction(Opcode.MISC, func=MiscFunc.ADD, n=4, m=1, a_buf=Buffer.ABUF,
                      b_buf=Buffer.ABUF, d_buf=Buffer.ABUF, release=bit(Q.ST, Q.LD))
    alone = run([[mv()]], cfg=CFG)
    assert alone.cycles == 512 + FILL
    from_wbuf = store(Buffer.WBUF, 8192, 1024, wait=bit(Q.MISC))
    assert run([[add, from_wbuf, mv()]], cfg=CFG).cycles == 512 + FILL + 64
    # Negative controls: the same ST from ABUF, and an LD writing those rows into WBUF (the
    # write port), leave the WBUF read port to the MV.
    from_abuf = store(Buffer.ABUF, 0, 1024, wait=bit(Q.MISC))
    assert run([[add, from_abuf, mv()]], cfg=CFG).cycles == 512 + FILL
    into_wbuf = load(Buffer.WBUF, 8192, 1024, wait=bit(Q.MISC))
    assert run([[add, into_wbuf, mv()]], cfg=CFG).cycles == 512 + FILL


def test_fetch_stops_at_a_full_queue():
    # Decode is in program order, one word per cycle, into FIFOs of 2 undispatched
    # instructions (hw/core.py), heads visible a cycle after the push. MV0 starts at
    # w + 1 (w: an MV's words) and MV1 when MV0 is done (MV_ENGINE later); MV3 finds the FIFO
    # full (MV1, MV2) until MV1 is dispatched, and the LD behind it must wait as well.
    from flightllm.contract.isa import encode
    prog = [mv(), mv(), mv(), mv(), load(Buffer.ABUF, 0, 64)]
    w, w_ld = len(encode(prog[0])), len(encode(prog[4]))
    mv1_start = w + 1 + MV_ENGINE
    r = PerfModel(ENGINE).run([prog], trace=True)
    ld_start = next(start for _, unit, start, _, _ in r.trace if unit == "LD")
    assert ld_start == (mv1_start + 1) + w_ld + 1
    # Negative control: FIFOs of 8 let the LD through once decoded.
    deep = PerfModel(ENGINE, timing=UnitTiming(queue_depth=8)).run([prog], trace=True)
    assert next(start for _, unit, start, _, _ in deep.trace if unit == "LD") == 4 * w + w_ld + 1


# ----------------------------------------------------------------------------- tokens
def test_token_orders_dependent_units():
    ld = load(Buffer.WBUF, 0, 4096, release=bit(Q.MV))
    ld_done = ISSUE + 512 + GAP + LAT + DRAIN
    dependent = run([[ld, mv(wait=bit(Q.LD))]])
    assert dependent.cycles == ld_done + 1 + MV_ENGINE
    # Negative control: without the token the two units overlap.
    independent = run([[load(Buffer.WBUF, 0, 4096), mv()]])
    assert independent.cycles == max(ld_done, MV_ENGINE)


def test_in_order_queue_and_double_buffering():
    # Four weight chunks: LD i+1 overlaps MV i; the MV queue runs in order.
    prog = []
    for i in range(4):
        prog.append(load(Buffer.WBUF, 4096 * (i % 2), 4096, release=bit(Q.MV)))
        prog.append(mv(w_addr=4096 * (i % 2), wait=bit(Q.LD)))
    r = run([prog])
    ld = ISSUE + 512 + GAP + LAT + DRAIN  # per chunk; the MV (MV_ENGINE) is shorter: HBM-bound
    assert r.cycles == 4 * ld + 1 + MV_ENGINE
    assert r.binding_unit()[0] == "LD"


def test_compute_bound_program_is_bound_by_the_engine():
    prog = []
    for i in range(4):
        prog.append(load(Buffer.WBUF, 4096 * (i % 2), 256, release=bit(Q.MV)))
        prog.append(mv(strips=16, kb=16, w_addr=4096 * (i % 2), wait=bit(Q.LD)))
    r = run([prog])
    mv_cycles = 4 * 16 * 17 + FILL
    assert r.cycles == ISSUE + 32 + GAP + LAT + DRAIN + 1 + 4 * mv_cycles
    unit, busy = r.binding_unit()
    assert unit == "MPE" and busy > 0.95


def test_barrier_waits_for_the_slowest_core():
    cfg = ENGINE.replace(cores=2)
    sync = dict(sync_op=SysOp.BARRIER, sync_id=0)
    slow = [mv(release=bit(Q.SYS)), Instruction(Opcode.SYS, wait=bit(Q.MV), **sync)]
    fast = [Instruction(Opcode.SYS, **sync)]
    r = run([slow, fast], cfg=cfg)
    assert r.cycles == MV_ENGINE + 1 + UnitTiming().barrier
    assert r.busy[1]["SYS"] == UnitTiming().barrier


def test_gather_time_counts_received_bytes():
    cfg = ENGINE.replace(cores=2)
    g = dict(sync_op=SysOp.GATHER, sync_id=0, buf=Buffer.ABUF, addr=0, rows=1, stride=0)
    r = run([[Instruction(Opcode.SYS, len=640, **g)], [Instruction(Opcode.SYS, len=64, **g)]],
            cfg=cfg)
    t = UnitTiming()
    assert r.busy[0]["SYS"] == t.barrier + 64 // t.gather_bytes_per_cycle
    assert r.busy[1]["SYS"] == t.barrier + 640 // t.gather_bytes_per_cycle


def test_missing_token_is_a_deadlock():
    with pytest.raises(DeadlockError, match="MV"):
        run([[mv(wait=bit(Q.LD))]])


def test_sparse_matrix_without_known_n_is_an_error():
    with pytest.raises(PerfError, match=r"instruction #0 \(MV"):
        run([[mv(sparse=1)]])


def test_sparsity_map_tags_wbuf_from_the_load_source():
    regions = SparsityMap([(0, 0, 1 << 20, 4096, 2)])
    prog = [load(Buffer.WBUF, 0, 4096, hbm_addr=1 << 20, release=bit(Q.MV)),
            mv(sparse=1, wait=bit(Q.LD))]
    r = run([prog], sparsity=regions)
    assert r.macs_stored == 16 * 2 * 64
    assert regions.keep_at(0, 0, (1 << 20) + 4095) == 2
    assert regions.keep_at(0, 0, (1 << 20) + 4096) is None


def test_bindings_change_the_work():
    from flightllm.contract.isa import Binding, BindKind, LengthReg
    bound = mv(strips=64, bindings=[Binding(BindKind.COUNT, LengthReg.KV, "n_strips", 4)])
    short, long = run([[bound]], kv=64), run([[bound]], kv=1024)
    assert short.macs_dense == 256 * 4 * 8 and long.macs_dense == 256 * 64 * 8
    assert long.cycles == 16 * 8 * 17 + FILL


# ----------------------------------------------------------------------------- a whole build
@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    from flightllm.compiler.build import CompileOptions, compile_model
    from flightllm.compiler.sources import load_model
    from flightllm.host.build import load_build
    out = tmp_path_factory.mktemp("perf") / "build"
    ir = load_model("tests/models/onnx/llama_dynamo_op18.onnx")
    compile_model(ir, CFG, out, CompileOptions(weight_bits=4, max_len=64,
                                               sparsity={"q": 8, "up": 2},
                                               calibration_sequences=2))
    return load_build(out)


def test_counts_match_the_golden_simulator(tiny_build):
    b = tiny_build
    sim = GoldenSimulator(b.config)
    for e in b.manifest["hbm"]:
        sim.hbm.write(e["core"] * b.config.hbm_channels_per_core + e["channel"], 0,
                      b.file(e["file"]))
    recipe = b.manifest["model"]["recipe"]
    model = PerfModel(b.config,
                      sparsity=SparsityMap.from_placements(b.manifest["tensors"],
                                                           recipe["sparsity"]))
    for phase, seq, kv in (("prefill", 7, 7), ("decode", 1, 8), ("decode", 1, 40)):
        golden = sim.run(b.program(phase), seq=seq, kv=kv)
        timed = model.run(b.program(phase), seq=seq, kv=kv)
        assert timed.hbm_read_bytes == dict(golden.hbm_read_bytes)
        assert timed.hbm_write_bytes == dict(golden.hbm_write_bytes)
        assert timed.macs_dense == golden.macs_dense
        # Stored MACs depend on N per block, read here from the placements, there from bytes.
        assert timed.macs_stored == golden.macs_stored < golden.macs_dense
        assert timed.weight_stream_bytes == golden.weight_stream_bytes
        assert dict(timed.instructions) == dict(golden.instructions)
    # Longer KV means more attention work and more cycles.
    assert model.run(b.program("decode"), seq=1, kv=64).cycles > \
        model.run(b.program("decode"), seq=1, kv=8).cycles


def test_hbm_parameters():
    from flightllm.sim.hbm_model import HBMParams, transfer_runs
    u280 = HBMParams.for_board("u280")
    assert u280.board_peak_gbps == pytest.approx(460)
    # 256-bit masters at 225 MHz: the port (32 B/cycle), not the DRAM (~58 B/cycle), limits.
    assert u280.bytes_per_cycle(225, 256) == 32
    assert u280.bytes_per_cycle(225, 512) == pytest.approx(425e9 / 32 / 225e6)
    assert HBMParams.for_board("vhk158").board_peak_gbps == pytest.approx(819)
    with pytest.raises(ValueError, match="zcu104"):
        HBMParams.for_board("zcu104")
    from flightllm.sim.hbm_model import RTL_TESTBENCH
    # The RTL testbench's AxiRam: the 64-bit port's 8 bytes per cycle, 2 cycles to data.
    assert RTL_TESTBENCH.bytes_per_cycle(200, 64) == 8
    assert RTL_TESTBENCH.cycles(RTL_TESTBENCH.latency_ns, 200) == 2
    assert transfer_runs(256, 8, 256, 4, 2048) == 1       # one contiguous range
    assert transfer_runs(256, 8, 4096, 4, 256) == 32      # every segment apart
    assert transfer_runs(256, 8, 256, 4, 4096) == 4       # contiguous rows, strided blocks
    assert transfer_runs(0, 8, 256, 4, 4096) == 0
