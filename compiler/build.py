"""``flightllm compile``: the pass pipeline, and the build directory it writes.

The pipeline is an explicit list of named steps (:data:`STEPS`); each is timed, and with a dump
directory each leaves its result to look at. The build directory holds:

* ``manifest.json``: the accelerator configuration and its hash, the ISA hash, the model,
  the program table (which program serves which phase and length range), every placed
  tensor (channel, offset, bytes, dtype, shape, SHA-256), the host I/O layout and scales;
* ``programs/{prefill,decode}.bin``: the instruction programs (contract program files);
* ``hbm/core0_chNN.bin``: one image per HBM channel the core uses;
* ``host/embed.npy`` (and ``host/pos_embed.npy``): the table the host embeds tokens with;
* ``report.json``: instruction bytes against a program-per-length baseline, padding waste,
  weight bytes and bits, compile time.

Everything but the timing fields of ``report.json`` is byte-identical across rebuilds of the
same inputs, and the directory appears only when complete (written beside, then renamed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from flightllm import __version__
from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import ISA_VERSION, encode, encode_program, isa_hash

from .calibrate import calibrate_channels, default_calibration_tokens
from .ir import TransformerIR, check
from .layout import CompileError
from .mixed import allocate_bits
from .lower import Lowered, Lowerer
from .qmodel import QModel, QuantRecipe, build_qmodel
from .report import program_report
from .smooth import smooth

__all__ = ["CompileOptions", "compile_model", "STEPS", "MANIFEST_VERSION"]

MANIFEST_VERSION = 1


@dataclass
class CompileOptions:
    """What ``flightllm compile`` takes besides the model and the configuration."""

    weight_bits: int = 8
    avg_bits: float | None = None
    sparsity: dict[str, int] = field(default_factory=dict)
    max_len: int = 128
    chunk: int | None = None
    calibration_sequences: int = 8
    calibration_length: int = 64
    smooth_alpha: float | None = None
    seed: int = 0
    #: Block-sparse prefill attention: (sink, band) in blocks of the configuration's
    #: ``attn_block`` tokens (compiler.qmodel.AttentionSparsity); None is dense.
    attn_sparsity: tuple[int, int] | None = None
    #: INT8 digits of the gated MLP's hidden (``QuantRecipe.split_hidden``): 2 carries ~15
    #: bits (prefill runs ``down`` once per digit, decode once with MM ``sum_rows``); 1 is
    #: less accurate.
    mlp_hidden_digits: int = 2

    def __post_init__(self):
        if self.mlp_hidden_digits not in (1, 2):
            raise CompileError(f"mlp_hidden_digits = {self.mlp_hidden_digits!r}: 1 or 2")


def _step_frontend(state):
    check(state["ir"])


def _step_smooth(state):
    opts = state["opts"]
    if opts.smooth_alpha is not None:
        state["ir"] = smooth(state["ir"], calibrate_channels(state["ir"], state["calib"]),
                             alpha=opts.smooth_alpha)


def _step_calibrate(state):
    channels = calibrate_channels(state["ir"], state["calib"])
    state["channel_ranges"] = channels
    state["ranges"] = {k: float(v.max()) for k, v in channels.items()}


def _step_mixed_precision(state):
    opts = state["opts"]
    if opts.avg_bits is not None:
        try:
            state["bits_by_name"] = allocate_bits(state["ir"], opts.avg_bits,
                                                  sparsity=dict(opts.sparsity),
                                                  activation_ranges=state["channel_ranges"])
        except ValueError as exc:  # an infeasible budget: the user's input
            raise CompileError(f"--avg-bits {opts.avg_bits}: {exc}") from None


def _step_quantize(state):
    # Quantisation streams into placement: each projection's bytes go to the HBM images as
    # soon as it is packed, and its arrays are dropped (a 7B model never sits in memory).
    opts = state["opts"]
    recipe = QuantRecipe(weight_bits=opts.weight_bits, sparsity=dict(opts.sparsity),
                         split_hidden=opts.mlp_hidden_digits == 2,
                         bits_by_name=state.get("bits_by_name", {}))
    lowerer = Lowerer(state["ir"].config, state["config"], opts.max_len, spool=state["spool"],
                      attn_sparsity=opts.attn_sparsity)
    state["qmodel"] = build_qmodel(state["ir"], state["ranges"], recipe, max_len=opts.max_len,
                                   sink=lowerer.place)
    state["lowerer"] = lowerer


def _step_lower(state):
    state["lowered"] = state["lowerer"].finish(state["qmodel"], state["opts"].chunk)


#: The pipeline, in order: (name, function of the state dict).
STEPS = [("frontend", _step_frontend), ("smooth", _step_smooth),
         ("calibrate", _step_calibrate), ("mixed_precision", _step_mixed_precision),
         ("quantize", _step_quantize), ("lower", _step_lower)]


def compile_model(ir: TransformerIR, config: AcceleratorConfig, out: Path,
                  opts: CompileOptions | None = None, *, dump_dir: Path | None = None) -> dict:
    """Run the pipeline and write the build directory ``out`` atomically.

    Returns:
        The report (also written as ``report.json``).
    """
    opts = opts or CompileOptions()
    if not ir.has_weights:
        raise CompileError("this model holds no weights; compile a model with weights (ONNX, "
                           "or a preset with --weights synthetic)")
    start = time.perf_counter()
    vocab = ir.config.vocab_size
    calib = [default_calibration_tokens(vocab, opts.calibration_length, opts.seed + i)
             for i in range(opts.calibration_sequences)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # HBM images are written as they are placed, beside the output (same file system, so
    # they move into the build without a copy); the spool goes whatever happens.
    spool = Path(tempfile.mkdtemp(prefix=f".{out.name}.spool.", dir=out.parent))
    try:
        state = {"ir": ir, "config": config, "opts": opts, "calib": calib, "spool": spool}
        timings = {}
        for name, fn in STEPS:
            t0 = time.perf_counter()
            fn(state)
            timings[name] = round(time.perf_counter() - t0, 4)
            if dump_dir is not None:
                _dump(Path(dump_dir), name, state, timings[name])
        lowered: Lowered = state["lowered"]
        qm: QModel = state["qmodel"]
        report = program_report(lowered, qm)
        report["compile_seconds"] = round(time.perf_counter() - start, 3)
        report["timings"] = timings
        _write_build(out, ir, config, opts, qm, lowered, report)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return report


def _dump(root: Path, name: str, state: dict, seconds: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    summary = {"step": name, "seconds": seconds}
    if name in ("frontend", "smooth"):
        summary["config"] = state["ir"].config.to_dict()
    elif name == "calibrate":
        summary["ranges"] = {k: round(v, 6) for k, v in sorted(state["ranges"].items())}
    elif name == "mixed_precision":
        summary["bits_by_name"] = state.get("bits_by_name", {})
    elif name == "quantize":
        qm = state["qmodel"]
        summary["s_resid"] = qm.s_resid
        summary["layers"] = [{"bits": layer.q.weight.bits, "s_q": layer.s_q, "s_k": layer.s_k,
                              "s_v": layer.s_v} for layer in qm.layers]
    elif name == "lower":
        low = state["lowered"]
        from flightllm.contract.disasm import format_instruction
        for phase in ("prefill", "decode"):
            for core, stream in enumerate(getattr(low, phase)):
                text = "\n".join(format_instruction(i) for i in stream)
                (root / f"{phase}.core{core}.asm").write_text(text + "\n")
        summary["instructions"] = {p: [len(s) for s in getattr(low, p)]
                                   for p in ("prefill", "decode")}
    (root / f"{name}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _write_build(out: Path, ir: TransformerIR, config: AcceleratorConfig, opts: CompileOptions,
                 qm: QModel, low: Lowered, report: dict) -> None:
    files: dict[str, bytes] = {}
    programs = {"prefill": encode_program(low.prefill), "decode": encode_program(low.decode)}
    for phase, data in programs.items():
        files[f"programs/{phase}.bin"] = data
    hbm_files, tensors = [], []
    for core, image in enumerate(low.images):
        for c in range(image.channels):
            name = f"hbm/core{core}_ch{c:02d}.bin"
            if image.paths is not None:  # spooled: moved into the build, hashed in pieces
                files[name] = image.paths[c]
                digest = _file_sha256(image.paths[c])
            else:
                files[name] = image.channel_bytes(c)
                digest = hashlib.sha256(files[name]).hexdigest()
            hbm_files.append({"core": core, "channel": c, "file": name, "sha256": digest})
        tensors += [dict(p.to_dict(), core=core) for p in image.placements.values()]
    files["host/embed.npy"] = _npy(qm.embed.astype(np.float32))
    if qm.pos_embed is not None:
        files["host/pos_embed.npy"] = _npy(qm.pos_embed.astype(np.float32))
    L = opts.max_len
    manifest = {
        "format": "flightllm-build", "version": MANIFEST_VERSION, "flightllm": __version__,
        "isa": {"version": ISA_VERSION, "hash": isa_hash()},
        "config": config.to_dict(), "config_hash": config.config_hash(),
        "model": {"config": ir.config.to_dict(), "source": ir.source,
                  # Absolute, so tools run from elsewhere (perplexity's float reference, the
                  # tokenizer lookup) still find an ONNX source; None for presets.
                  "source_path": (str(Path(ir.source).resolve())
                                  if str(ir.source).endswith(".onnx") else None),
                  "recipe": asdict(qm.recipe), "max_len": L,
                  # The prefill attention mask the programs implement (null: dense causal).
                  "attention_sparsity": low.attention and low.attention.to_dict()},
        "programs": [
            {"phase": "prefill", "file": "programs/prefill.bin", "seq": [1, low.chunk],
             "kv": [1, L], "words": _words(low.prefill),
             "sha256": hashlib.sha256(programs["prefill"]).hexdigest()},
            {"phase": "decode", "file": "programs/decode.bin", "seq": [1, 1], "kv": [1, L],
             "words": _words(low.decode),
             "sha256": hashlib.sha256(programs["decode"]).hexdigest()},
        ],
        "hbm": hbm_files,
        "tensors": tensors,
        "io": {
            "chunk": low.chunk,
            # Every core reads the input rows from its own channels; core 0 stores the logits.
            "input": [dict(io["input"].to_dict(), core=core) for core, io in enumerate(low.io)],
            # Each core stores its own columns of the logits.
            "logits": [dict(io["logits"].to_dict(), core=core, columns=io["logit_cols"])
                       for core, io in enumerate(low.io)],
            "kv_heads": [io["kv_heads"] for io in low.io],
            "k_cache": [[p.to_dict() for p in io["k_cache"]] for io in low.io],
            "v_cache": [[p.to_dict() for p in io["v_cache"]] for io in low.io],
            "residual_scale": qm.s_resid, "logit_scale": qm.lm_head.s_out,
            "vocab_size": ir.config.vocab_size, "hidden_size": ir.config.hidden_size,
            "position_offset": ir.config.position_offset,
            "embed": "host/embed.npy",
            "pos_embed": "host/pos_embed.npy" if qm.pos_embed is not None else None,
        },
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    files["report.json"] = (json.dumps(report, indent=1, sort_keys=True) + "\n").encode()
    write_atomically(out, files)


def _words(streams) -> int:
    return sum(len(encode(i)) for s in streams for i in s)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def write_atomically(out: Path, files: dict[str, bytes | bytearray | Path]) -> None:
    """Write ``files`` into a fresh directory beside ``out``, then swap it into place; a
    failure at any point leaves no partial ``out``. A :class:`Path` value is a finished file
    on the same file system, moved in rather than copied."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, Path):
                os.replace(data, path)
            else:
                path.write_bytes(data)
        old = None
        if out.exists():
            old = out.parent / f"{tmp.name}.old"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
