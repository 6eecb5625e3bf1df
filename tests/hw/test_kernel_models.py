"""Whole compiled models on the RTL kernel (slow): the committed tiny LLaMA-style (GQA, RoPE,
SwiGLU) and OPT-style exports, prefill and four decode steps, with the logits and every HBM
channel (KV cache included) bit-identical to the golden simulator after each step.

Both sides run through the host's driver: ``RtlDevice`` (``flightllm.sim.rtl.run_kernel``,
cocotb + Verilator, AXI back-pressure on) and ``GoldenDevice``.
"""

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.contract.config import preset
from flightllm.hw.sim_runner import simulator_unavailable_reason
from flightllm.host.build import load_build

MODELS = Path(__file__).resolve().parents[1] / "models" / "onnx"
PROMPT = [3, 1, 4, 1, 5, 9]
DECODE_STEPS = 4

pytestmark = [
    pytest.mark.slow, pytest.mark.rtl,
    pytest.mark.skipif(simulator_unavailable_reason() is not None,
                       reason=str(simulator_unavailable_reason())),
]


def compile_tiny(out: Path, model: str):
    opts = CompileOptions(max_len=16, chunk=8, calibration_sequences=1)
    compile_model(load_onnx(MODELS / model), preset("tiny"), out, opts)
    return load_build(out)


def _channels(session) -> dict:
    cfg, driver = session.build.config, session.driver
    return {(c, ch): session.device.read(driver.channel_buffer(c, ch), 0,
                                         driver.channel_buffer(c, ch).size)
            for c in range(cfg.cores) for ch in range(cfg.hbm_channels_per_core)}


def run_model_steps(build, *, stall: float = 0.2, steps: int = DECODE_STEPS):
    """Prefill then ``steps`` decode steps on both devices; compares after every step and
    returns the RTL cycles per step."""
    from flightllm.host.devices import GoldenDevice, RtlDevice
    from flightllm.host.session import Session
    from flightllm.sim import rtl

    run = partial(rtl.run_kernel, stall=stall, build=rtl.build_kernel(build.config))
    gold = Session(build, GoldenDevice(build))
    hw = Session(build, RtlDevice(build.config, run_kernel=run, timeout_cycles=5_000_000))
    cycles = []
    token = None
    for step in range(steps + 1):
        if step == 0:
            want, got = gold.prefill(PROMPT), hw.prefill(PROMPT)
        else:
            want, got = gold.decode(token), hw.decode(token)
        np.testing.assert_array_equal(got.logits, want.logits, err_msg=f"step {step} logits")
        for key, image in _channels(gold).items():
            assert _channels(hw)[key] == image, f"step {step}: HBM core/channel {key} differs"
        token = int(np.argmax(want.logits[-1]))
        cycles.append(got.counters.cycles)
    return cycles


@pytest.mark.parametrize("model", ["llama_dynamo_op18.onnx", "opt_dynamo_op18.onnx"])
def test_model_prefill_and_decode_match_golden(model, tmp_path):
    build = compile_tiny(tmp_path / "build", model)
    cycles = run_model_steps(build)
    assert all(c > 0 for c in cycles)
