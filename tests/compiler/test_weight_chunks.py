"""Weight chunks on a small WBUF with many channels: whole rounds of the chains per chunk,
K-split to fill them, bytes striped over every channel, and the logits still bit-exact."""

from collections import defaultdict

import numpy as np
import pytest

from flightllm.compiler import chunking
from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.contract.config import BufferSpec, preset
from flightllm.contract.isa import Buffer, Opcode
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session
from flightllm.sim.golden import load_streams

from .conftest import MODEL_DIR, assert_generation_matches, reference_qmodel

# Eight channels and a 12 KiB WBUF: a weight slot holds one round of the four chains for
# most matrices but only two strips of the 128-wide down projection, as a u280 slot holds
# only 8 of LLaMA2-7B's down strips for 16 chains.
CFG = preset("tiny").replace(hbm_channels_per_core=8, wbuf=BufferSpec(16, 768))
OPTS = CompileOptions(max_len=64, chunk=16, calibration_sequences=2)
BEAT = 64


def _chunks(build) -> dict[str, list[dict]]:
    """Placed weight chunks per matrix, in placement order."""
    out = defaultdict(list)
    for t in build.manifest["tensors"]:
        if t["dtype"] == "blocks":
            out[t["name"].rsplit(".", 1)[0]].append(t)
    return out


@pytest.fixture(scope="module", params=["min16", "min1"])
def build(request, tmp_path_factory):
    """The default planner (down's 8 blocks are too short to split for the chains), and one
    that splits any range to fill them (as it splits LLaMA2-7B's down at full size)."""
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    out = tmp_path_factory.mktemp(request.param) / "b"
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "min1":
            mp.setattr(chunking, "MIN_SPLIT_BLOCKS", 1)
        compile_model(ir, CFG, out, OPTS)
    return request.param, ir, load_build(out)


def test_chunks_are_whole_rounds_of_the_chains(build):
    kind, _, b = build
    chains = CFG.mv_rows
    down = _chunks(b)["layers.0.down"]
    for name, chunks in _chunks(b).items():
        strips = [t["shape"][0] // 16 for t in chunks]
        # Only the last strip group of a matrix (all its K ranges) may be a partial round.
        assert all(s % chains == 0 for s in strips if s != strips[-1]), (name, strips)
    if kind == "min1":
        assert all(t["shape"][1] < 128 for t in down), "down was not K-split"
        assert all(t["shape"][0] // 16 == chains for t in down)
    else:
        assert all(t["shape"] == [32, 128] for t in down), "down split although too short"


def test_chunks_stream_from_every_channel(build):
    _, _, b = build
    for chunks in _chunks(b).values():
        for t in chunks:
            part, nbytes = t["bytes_per_channel"], len(t["channels"]) * t["bytes_per_channel"]
            assert part % BEAT == 0
            # As many channels as the chunk has beats for, up to all of them.
            assert len(t["channels"]) == min(CFG.hbm_channels_per_core, -(-nbytes // BEAT))
    for phase in ("prefill", "decode"):
        for stream in load_streams(b.program(phase)):
            for ld in (s.ins for s in stream):
                if ld.op == Opcode.LD and ld.buf == Buffer.WBUF and ld.nch > 1:
                    assert ld.ch_stride == ld.len
                    assert ld.buf_addr + ld.nch * ld.len <= CFG.wbuf.bytes


def test_generation_stays_bit_exact(build):
    kind, ir, b = build
    session = Session(b, GoldenDevice(b, order="random", seed=3))
    prompt = np.random.default_rng(2).integers(0, ir.config.vocab_size, 19)
    assert_generation_matches(session, reference_qmodel(ir, OPTS), prompt, 3)


def test_chunks_give_two_ld_lanes_equal_shares(tmp_path):
    """Seven channels and two LD lanes (lane k moves channels c with c mod 2 == k): chunks
    are striped over six, three parts a lane, as the u280's 13 channels become 12; the
    seventh still holds caches and parameters, and the logits stay bit-exact."""
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    cfg = CFG.replace(hbm_channels_per_core=7, ld_lanes=2)
    compile_model(ir, cfg, tmp_path / "b", OPTS)
    b = load_build(tmp_path / "b")
    widths = {len(t["channels"]) for chunks in _chunks(b).values() for t in chunks}
    assert max(widths) == 6, widths
    for chunks in _chunks(b).values():
        for t in chunks:
            lanes = [sum(1 for c in t["channels"] if c % 2 == k) for k in (0, 1)]
            assert lanes[0] - lanes[1] in (0, 1), t  # odd only when the chunk is short
    assert any(6 in t["channels"] for t in b.manifest["tensors"] if t["dtype"] != "blocks")
    session = Session(b, GoldenDevice(b))
    prompt = np.random.default_rng(4).integers(0, ir.config.vocab_size, 9)
    assert_generation_matches(session, reference_qmodel(ir, OPTS), prompt, 2)
