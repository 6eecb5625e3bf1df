"""Weight chunks narrower than the core's channels: the LD moves only the channels that hold
strips, the chunk stays inside its WBUF slot, and the logits stay bit-exact."""

import numpy as np

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.contract.config import BufferSpec, preset
from flightllm.contract.isa import Buffer, Opcode
from flightllm.host.build import load_build
from flightllm.host.session import GoldenDevice, Session
from flightllm.sim.golden import load_streams

from .conftest import MODEL_DIR, assert_generation_matches, reference_qmodel

# Eight channels and a 12 KiB WBUF: a weight slot holds fewer than eight strips of most
# matrices, so their chunks use only some of the channels (as LLaMA2-7B's down projection
# does on the u280 preset: 8 strips of K = 11,008 on 13 channels).
CFG = preset("tiny").replace(hbm_channels_per_core=8, wbuf=BufferSpec(16, 768))
OPTS = CompileOptions(max_len=64, chunk=16, calibration_sequences=2)


def _weight_loads(program) -> list[tuple]:
    """(LD, the matrix instruction after it) for every multi-channel LD into WBUF."""
    pairs = []
    for stream in load_streams(program):
        ins = [slot.ins for slot in stream]
        for i, ld in enumerate(ins):
            if ld.op == Opcode.LD and ld.buf == Buffer.WBUF and ld.nch > 1:
                pairs.append((ld, next(x for x in ins[i + 1:]
                                       if x.op in (Opcode.MV, Opcode.MM))))
    return pairs


def test_narrow_chunks_load_only_their_channels(tmp_path):
    ir = load_onnx(MODEL_DIR / "llama_dynamo_op18.onnx")
    compile_model(ir, CFG, tmp_path / "b", OPTS)
    build = load_build(tmp_path / "b")
    for phase in ("prefill", "decode"):
        pairs = _weight_loads(build.program(phase))
        narrow = [(ld, mat) for ld, mat in pairs if mat.n_strips < CFG.hbm_channels_per_core]
        assert narrow, "the configuration did not produce chunks narrower than the channels"
        for ld, mat in pairs:
            # A channel without a strip would carry zeros, and nch * len past the slot.
            assert ld.nch <= mat.n_strips, (phase, ld, mat)
            assert ld.buf_addr + ld.nch * ld.len <= CFG.wbuf.bytes
    placed = [t for t in build.manifest["tensors"] if t["dtype"] == "blocks"]
    assert any(len(t["channels"]) < CFG.hbm_channels_per_core for t in placed)

    session = Session(build, GoldenDevice(build, order="random", seed=3))
    prompt = np.random.default_rng(2).integers(0, ir.config.vocab_size, 19)
    assert_generation_matches(session, reference_qmodel(ir, OPTS), prompt, 3)
