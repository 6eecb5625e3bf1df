"""Build the tiny random-weight test models and export them to ONNX.

Run from the repository root (needs ``torch==2.13.0``, ``transformers`` and ``onnxscript``, none
of which the package or its test extra depends on)::

    python tests/models/make_models.py

Every model is built from a small config with a fixed seed and exported as a plain forward over
``input_ids`` (no KV-cache inputs) with the dynamo exporter at opsets 18, 20 and 23 and with the
TorchScript exporter at opset 17. One LLaMA is also written with its weights in an external data
file. ``tests/models/onnx/MANIFEST.json`` lists every file with its architecture, exporter, opset,
config and the tool versions used; the tests read it and need neither torch nor transformers.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path

import onnx
import torch
import transformers

OUT_DIR = Path(__file__).resolve().parent / "onnx"
SEED = 1234
#: Larger than the HF default (0.02) so attention scores are far from uniform and a wrong scale,
#: mask or rotary layout shows up in the logits instead of vanishing under a flat softmax.
INIT_RANGE = 0.15
EXPORTS = (("dynamo", 18), ("dynamo", 20), ("dynamo", 23), ("torchscript", 17))

CONFIGS = {
    "llama": dict(
        config_class="LlamaConfig", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, intermediate_size=128, vocab_size=256, rope_theta=10000.0,
        max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    "opt": dict(
        config_class="OPTConfig", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
        ffn_dim=128, vocab_size=256, max_position_embeddings=128, word_embed_proj_dim=64,
        do_layer_norm_before=True, activation_function="relu", tie_word_embeddings=True,
        dropout=0.0, attention_dropout=0.0,
    ),
    # Encoder-only (bidirectional attention): exported only so the tests can check that the
    # frontend rejects it.
    "bert": dict(
        config_class="BertConfig", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
        intermediate_size=128, vocab_size=256, max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ),
    "gpt2": dict(
        config_class="GPT2Config", n_embd=64, n_head=4, n_layer=2, vocab_size=256, n_positions=128,
        activation_function="gelu_new", tie_word_embeddings=True, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    ),
}
MODEL_CLASSES = {"llama": "LlamaForCausalLM", "opt": "OPTForCausalLM", "gpt2": "GPT2LMHeadModel",
                 "bert": "BertForMaskedLM"}
#: Decoder-only models get every export; the encoder-only negative example gets one.
DECODERS = ("llama", "opt", "gpt2")


class LogitsOnly(torch.nn.Module):
    """Forward over ``input_ids`` (and an all-ones ``attention_mask`` if given) to logits only."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).logits


def build_model(arch: str) -> tuple[torch.nn.Module, dict]:
    """Build one tiny model with seeded random weights, including the norms and biases."""
    cfg_kwargs = dict(CONFIGS[arch])
    cfg_cls = getattr(transformers, cfg_kwargs.pop("config_class"))
    config = cfg_cls(initializer_range=INIT_RANGE, **cfg_kwargs)
    config._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    model = getattr(transformers, MODEL_CLASSES[arch])(config).eval()
    # HF initialises norm gains to one and biases to zero; random values make the frontend prove
    # it wires each gain and bias to the right place (identical all-ones gains also get
    # deduplicated into one initializer by the exporter, which would hide a mix-up).
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and ("norm" in name or name.split(".")[-2].startswith("ln")):
                if name.endswith("weight"):
                    param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
                else:
                    param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return model, {"model_class": MODEL_CLASSES[arch], **CONFIGS[arch],
                   "initializer_range": INIT_RANGE}


def export(model: torch.nn.Module, path: Path, exporter: str, opset: int,
           external_data: bool = False, optimize: bool = True) -> list[str]:
    """Export ``model`` to ``path``; returns the graph input names."""
    wrapper = LogitsOnly(model).eval()
    generator = torch.Generator().manual_seed(SEED + 2)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=generator)
    if exporter == "dynamo":
        program = torch.onnx.export(
            wrapper, (ids,), dynamo=True, opset_version=opset, input_names=["input_ids"],
            output_names=["logits"], dynamic_shapes={"input_ids": {1: torch.export.Dim("seq")}},
            optimize=optimize,
        )
        program.save(str(path), external_data=external_data)
        return ["input_ids"]
    # Without a mask, transformers builds one from the ids with aten::diff, which the TorchScript
    # exporter cannot export (LLaMA, GPT-2); an all-ones mask input avoids that path for all.
    mask = torch.ones_like(ids)
    torch.onnx.export(
        wrapper, (ids, mask), str(path), dynamo=False, opset_version=opset,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes={"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}},
    )
    return ["input_ids", "attention_mask"]


def strip_metadata(path: Path, external: bool) -> None:
    """Drop per-node export metadata (stack traces with local paths: half the file size)."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=path.name + ".data",
                    size_threshold=1024)


def main() -> None:
    """Export every model and write the manifest."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for stale in OUT_DIR.glob("*.onnx*"):
        stale.unlink()
    entries = []
    jobs = [(arch, exp, opset, "") for arch in DECODERS for exp, opset in EXPORTS]
    # Weights in a .data file; a graph without the exporter's clean-up passes (CastLike,
    # SplitToSequence, a whole-sequence Slice: more noise to tolerate); the negative example.
    jobs += [("llama", "dynamo", 18, "external"), ("gpt2", "dynamo", 18, "unoptimized"),
             ("bert", "dynamo", 18, "")]
    for arch, exporter, opset, variant in jobs:
        model, config = build_model(arch)
        external = variant == "external"
        path = OUT_DIR / f"{arch}_{exporter}_op{opset}{'_' + variant if variant else ''}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = export(model, path, exporter, opset, external_data=external,
                            optimize=variant != "unoptimized")
        strip_metadata(path, external)
        onnx.checker.check_model(str(path))
        files = sorted(p.name for p in OUT_DIR.glob(path.name + "*"))
        entries.append({
            "file": path.name, "arch": arch, "exporter": exporter, "opset": opset,
            "external_data": external, "optimized": variant != "unoptimized",
            "inputs": inputs, "files": files,
            "decoder_only": arch in DECODERS, "config": config,
            "hf_config": json.loads(model.config.to_json_string(use_diff=False)),
        })
        print(f"wrote {path.name} ({sum((OUT_DIR / f).stat().st_size for f in files)} bytes)")
    manifest = {
        "generator": "tests/models/make_models.py",
        "seed": SEED,
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxscript": _version("onnxscript"),
        },
        "models": entries,
    }
    (OUT_DIR / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


if __name__ == "__main__":
    main()
