"""`flightllm simulate --engine rtl`: the generated kernel gives the golden simulator's tokens
and logits, and its JSON is clean (the simulator's log does not reach standard output)."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flightllm.cli import main
from flightllm.contract.isa import Opcode
from flightllm.default_model import default_model_path
from flightllm.hw.sim_runner import simulator_unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.rtl]


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_rtl_engine_matches_golden(tmp_path):
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    out = tmp_path / "build"
    assert invoke("compile", default_model_path(), "--arch", "tiny", "-o", out,
                  "--max-len", 32).exit_code == 0
    runs = {}
    for engine in ("golden", "rtl"):
        # A process of its own with an empty RTL cache: the Verilator build runs and writes
        # at the file-descriptor level, which CliRunner would not see.
        env = {**os.environ, "FLIGHTLLM_RTL_CACHE": str(tmp_path / "rtl")}
        result = subprocess.run([sys.executable, "-m", "flightllm", "simulate", str(out),
                                 "--input-ids", "1,2,3", "--decode-steps", "2", "--engine",
                                 engine, "--json"], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[engine] = json.loads(result.stdout)  # one JSON document, nothing else
    assert (tmp_path / "rtl").is_dir() and list((tmp_path / "rtl").glob("*/build.log"))
    assert runs["rtl"]["tokens"] == runs["golden"]["tokens"]
    assert runs["rtl"]["logits"] == runs["golden"]["logits"]
    assert len(runs["rtl"]["cycles"]) == 3 and all(c > 0 for c in runs["rtl"]["cycles"])


def _compile_variant(tmp_path, name: str, **fields):
    """Compile the bundled model for tiny with some configuration fields changed."""
    from flightllm.contract.config import preset
    arch = tmp_path / f"{name}.yaml"
    arch.write_text(preset("tiny").replace(name=name, **fields).to_yaml())
    out = tmp_path / "build"
    assert invoke("compile", default_model_path(), "--arch", arch, "-o", out,
                  "--max-len", 32).exit_code == 0
    return out


def _assert_rtl_is_golden(out, input_ids: str):
    """Tokens and logits of a prompt and two decode steps agree on both engines."""
    runs = {}
    for engine in ("golden", "rtl"):
        result = invoke("simulate", out, "--input-ids", input_ids, "--decode-steps", "2",
                        "--engine", engine, "--json")
        assert result.exit_code == 0, result.output[-2000:]
        runs[engine] = json.loads(result.output)
    assert runs["rtl"]["tokens"] == runs["golden"]["tokens"]
    assert runs["rtl"]["logits"] == runs["golden"]["logits"]


def test_rtl_engine_with_token_pair_groups_matches_golden(tmp_path):
    """tiny with mm_pair_group = 2: an 11-token prompt is six token pairs, three groups that
    each read the weights once; tokens and logits are still the golden simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    out = _compile_variant(tmp_path, "tiny-g2", mm_pair_group=2)
    _assert_rtl_is_golden(out, "5,1,4,1,5,9,2,6,5,3,5")


def test_rtl_engine_with_k_split_chunks_matches_golden(tmp_path):
    """tiny with a 3 KiB WBUF and four channels: every matrix is K-split into ranges of two
    or three blocks (down's eight blocks as 2 + 3 + 3, with the split hidden's second pass in
    its own partial-sum region), one strip per chunk, each chunk's bytes striped over all
    four channels; tokens and logits are still the golden simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    from flightllm.contract.config import BufferSpec
    out = _compile_variant(tmp_path, "tiny-ks", wbuf=BufferSpec(16, 192),
                           hbm_channels_per_core=4)
    tensors = json.loads((out / "manifest.json").read_text())["tensors"]
    down = [t for t in tensors if t["name"].startswith("layers.0.down.")]
    assert {t["shape"][1] for t in down} == {32, 48}, "down was not K-split as planned"
    assert all(len(t["channels"]) == 4 for t in down)
    _assert_rtl_is_golden(out, "7,3,9,2,8")


def test_rtl_engine_with_two_wbuf_read_ports_matches_golden(tmp_path):
    """tiny with wbuf_read_ports = 2 (as the full-size presets): the odd chains read their
    weights through WBUF's second read port, a second copy of the memory that every write
    also goes to; tokens and logits are still the golden simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    out = _compile_variant(tmp_path, "tiny-r2", wbuf_read_ports=2)
    _assert_rtl_is_golden(out, "4,8,15,16,23,42")


def test_rtl_engine_with_two_ld_lanes_matches_golden(tmp_path):
    """tiny with ld_lanes = 2 and two WBUF read ports (as the full-size presets): each LD
    lane moves its own channel's stripe of a weight chunk into its own bank of WBUF, side by
    side; tokens and logits are still the golden simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    out = _compile_variant(tmp_path, "tiny-l2", ld_lanes=2, wbuf_read_ports=2)
    _assert_rtl_is_golden(out, "2,7,1,8,2,8")


def test_rtl_engine_with_four_ld_lanes_and_read_ports_matches_golden(tmp_path):
    """tiny with four HBM channels, four LD lanes of row-wide beats, four WBUF read ports
    and eight chains (two per port, as the full-size presets' 32 chains are eight per port):
    each lane moves its channel's stripe of a weight chunk into its own bank of WBUF, and
    the chains read through four copies of it; tokens and logits are still the golden
    simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    out = _compile_variant(tmp_path, "tiny-l4", ld_lanes=4, wbuf_read_ports=4, mv_rows=8,
                           hbm_channels_per_core=4, axi_data_bits=128)
    tensors = json.loads((out / "manifest.json").read_text())["tensors"]
    assert any(len(t["channels"]) == 4 for t in tensors), "no weight striped over 4 lanes"
    _assert_rtl_is_golden(out, "1,4,1,4,2,1,3,5")


def test_rtl_engine_with_two_word_dequantisers_matches_golden(tmp_path):
    """tiny with dequantisers of two words per cycle on 64-byte WBUF rows (two read ports,
    two LD lanes, as the full-size presets): the chains' readers deliver word pairs, which
    cross rows through their carry where a strip starts at an odd word; tokens and logits are
    still the golden simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    from flightllm.contract.config import BufferSpec
    out = _compile_variant(tmp_path, "tiny-d2", dequant_words=2, wbuf=BufferSpec(64, 1024),
                           wbuf_read_ports=2, ld_lanes=2)
    _assert_rtl_is_golden(out, "3,1,4,1,5")


def test_rtl_engine_with_caches_split_over_two_lanes_matches_golden(tmp_path):
    """A synthetic LLaMA-style model with head-dim 32 on tiny with two LD lanes of 16-byte
    beats: each K/V cache is split over the core's two channels, so every tile load (V's
    with the transpose) moves half on each lane and every new row is two stores, and decode
    packs both heads' P.V into one MM of two rows over both V tiles (compiler/attention.py:
    lanes this fast make the pack pay); tokens and logits are still the golden simulator's."""
    if simulator_unavailable_reason():
        pytest.skip(simulator_unavailable_reason())
    from flightllm.compiler.build import CompileOptions, compile_model
    from flightllm.compiler.presets import WIDE_HEADS, build_ir
    from flightllm.contract.config import preset
    from flightllm.sim.golden import load_streams
    out = tmp_path / "build"
    compile_model(build_ir(WIDE_HEADS, "synthetic", seed=3),
                  preset("tiny").replace(name="tiny-l2", ld_lanes=2, wbuf_read_ports=2,
                                         axi_data_bits=128), out,
                  CompileOptions(max_len=32, chunk=8, calibration_sequences=1))
    caches = json.loads((out / "manifest.json").read_text())["io"]["k_cache"][0]
    assert all(len(entry["channels"]) == 2 for entry in caches)
    decode = [s.ins for stream in load_streams((out / "programs" / "decode.bin").read_bytes())
              for s in stream]
    assert any(i.op == Opcode.MM and i.m_rows == 2 and i.n_strips == 4 for i in decode)
    _assert_rtl_is_golden(out, "3,1,4,1,5,9,2,6,5,3")
