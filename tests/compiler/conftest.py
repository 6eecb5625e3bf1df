"""Shared fixtures: the committed ONNX test models."""

import json
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "onnx"
_ENTRIES = json.loads((MODEL_DIR / "MANIFEST.json").read_text())["models"]
#: Decoder-only models (the manifest also holds an encoder-only one for the frontend's errors).
MODELS = sorted(m["file"] for m in _ENTRIES if m.get("decoder_only", True))


def reference_qmodel(ir, opts):
    """The integer model a build of ``ir`` with ``opts`` was compiled from (same calibration
    sequences, same recipe): the bit-exact reference of its logits."""
    from flightllm.compiler.calibrate import calibrate, default_calibration_tokens
    from flightllm.compiler.qmodel import QuantRecipe, build_qmodel
    calib = [default_calibration_tokens(ir.config.vocab_size, opts.calibration_length, i)
             for i in range(opts.calibration_sequences)]
    recipe = QuantRecipe(weight_bits=opts.weight_bits, sparsity=dict(opts.sparsity),
                         split_hidden=opts.mlp_hidden_digits == 2)
    return build_qmodel(ir, calibrate(ir, calib), recipe, max_len=opts.max_len)


def assert_generation_matches(session, qm, prompt, decode_steps: int, *, attn_mask=None):
    """Prefill ``prompt`` and greedy-decode ``decode_steps`` tokens on ``session``, each
    step's logits equal to the reference ``qm``'s; returns the reference's KV cache.
    ``attn_mask``: the block-sparse prefill mask the build applies (decode stays dense)."""
    import numpy as np

    from flightllm.compiler.qmodel import KVState, qforward
    kv = KVState.empty(qm)
    want = qforward(qm, prompt, 0, kv, attn_mask=attn_mask) * qm.lm_head.s_out
    np.testing.assert_array_equal(session.prefill(prompt).logits, want)
    token = int(np.argmax(want[-1]))
    for step in range(decode_steps):
        want = qforward(qm, [token], len(prompt) + step, kv) * qm.lm_head.s_out
        np.testing.assert_array_equal(session.decode(token).logits, want)
        token = int(np.argmax(want[-1]))
    return kv
