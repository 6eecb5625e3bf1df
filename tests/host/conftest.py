"""Shared fixtures: the committed tiny LLaMA compiled once per test session, and the reference
the driver is checked against (the golden simulator called directly, as the host did before
the driver existed: images into the simulator's HBM, input rows in, program run, logits out)."""

from pathlib import Path

import numpy as np
import pytest

from flightllm.compiler.build import CompileOptions, compile_model
from flightllm.compiler.frontend import load_onnx
from flightllm.contract.config import preset
from flightllm.host.build import load_build
from flightllm.sim.golden import GoldenSimulator

MODEL = Path(__file__).resolve().parents[1] / "models" / "onnx" / "llama_dynamo_op18.onnx"
#: Short enough that the max_len stop is cheap to reach; chunk 16 makes prompts of 17+ tokens
#: take two prefill runs.
MAX_LEN, CHUNK = 32, 16


def compile_tiny(out: Path, cores: int = 1, model: Path = MODEL):
    opts = CompileOptions(max_len=MAX_LEN, chunk=CHUNK, calibration_sequences=1)
    compile_model(load_onnx(model), preset("tiny").replace(cores=cores), out, opts)
    return load_build(out)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    return compile_tiny(tmp_path_factory.mktemp("host") / "llama")


@pytest.fixture(scope="session")
def tiny_build_2core(tmp_path_factory):
    return compile_tiny(tmp_path_factory.mktemp("host") / "llama2c", cores=2)


def reference_logits(build, prompt, decode_tokens):
    """Integer logits of the prompt's prefill chunks and of each decode token, straight from
    GoldenSimulator.run (no driver, no registers)."""
    cfg, io = build.config, build.io
    sim = GoldenSimulator(cfg)
    for entry in build.manifest["hbm"]:
        sim.hbm.write(entry["core"] * cfg.hbm_channels_per_core + entry["channel"], 0,
                      build.file(entry["file"]))
    programs = {p: build.program(p) for p in ("prefill", "decode")}

    def step(phase, tokens, pos):
        n = len(tokens)
        rows = build.embed(np.asarray(tokens), np.arange(pos, pos + n)).astype("<i4").tobytes()
        for inp in io["input"]:
            phys = inp["core"] * cfg.hbm_channels_per_core + inp["channels"][0]
            sim.hbm.write(phys, inp["offset"], rows)
        sim.run(programs[phase], seq=n, kv=pos + n, pos=pos)
        out = np.zeros((n, max(p["columns"][1] for p in io["logits"])), np.int64)
        for part in io["logits"]:
            lo, hi = part["columns"]
            phys = part["core"] * cfg.hbm_channels_per_core + part["channels"][0]
            raw = sim.hbm.read(phys, part["offset"], 4 * (hi - lo) * n)
            out[:, lo:hi] = raw.view("<i4").reshape(n, hi - lo)
        return out[:, :io["vocab_size"]] * io["logit_scale"]

    rows, pos = [], 0
    for i in range(0, len(prompt), io["chunk"]):
        part = list(prompt[i:i + io["chunk"]])
        rows.append(step("prefill", part, pos))
        pos += len(part)
    prefill = np.concatenate(rows)
    decoded = []
    for t in decode_tokens:
        decoded.append(step("decode", [t], pos)[0])
        pos += 1
    return prefill, np.array(decoded)
