"""Programs of a full-size model from its shapes alone, for the performance model.

Timing needs the programs and where each weight chunk lives, not the weights. This runs the
compiler's own :func:`~flightllm.compiler.qmodel.build_qmodel` and
:class:`~flightllm.compiler.lower.Lowerer` on an IR whose tensors are zero (``np.zeros`` pages
are never touched) with quantisation replaced by a stand-in that only knows each matrix's
shape, width and N, and HBM images that record placements without storing bytes. The
instruction streams are the ones ``flightllm compile`` would emit for the same recipe
(addresses, chunking, tokens), because they depend on sizes only; LLaMA2-7B lowers in seconds
instead of the ~10 minutes of a real quantisation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import numpy as np

from flightllm.compiler import qmodel as qmodel_module
from flightllm.compiler.ir import ModelConfig, TransformerIR
from flightllm.compiler.layout import HBMImage
from flightllm.compiler.lower import Lowered, Lowerer
from flightllm.compiler.qmodel import QuantRecipe, build_qmodel
from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import encode_program
from flightllm.contract.weights import strip_bytes
from flightllm.paths import cache_dir

__all__ = ["ShapePrograms", "shape_programs", "bits_for_average", "DEFAULT_CACHE"]

#: Where lowered shape programs are kept (the token pass is slow on a 7B model); override
#: with FLIGHTLLM_CACHE, or pass ``cache_dir=None`` to :func:`shape_programs` to not cache.
DEFAULT_CACHE = cache_dir("shape_programs")
_SOURCES = [Path(__file__).resolve().parents[1] / "compiler",
            Path(__file__).resolve().parents[1] / "flightllm" / "contract"]


class _ZeroBytes:
    """The packed image of a matrix as far as placement needs it: a length, zero slices."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self.n)
        return bytes(max(stop - start, 0))


@dataclass
class _ShapeWeight:
    """What the lowering reads of a :class:`~flightllm.compiler.quantize.QuantWeight`."""

    bits: int
    shape: tuple[int, int]
    keep: int
    has_mult: bool

    def __post_init__(self):
        n, k = self.shape
        self.padded = (-(-n // 16) * 16, -(-k // 16) * 16)
        self.scale = np.zeros(self.padded[0])
        kb = self.padded[1] // 16
        self.nbytes = self.padded[0] // 16 * strip_bytes([self.keep] * kb, self.bits,
                                                         self.has_mult, self.sparse)

    @property
    def sparse(self) -> bool:
        return self.keep < 16

    def packed(self) -> _ZeroBytes:
        return _ZeroBytes(self.nbytes)

    def packed_columns(self, k0: int, n: int) -> _ZeroBytes:
        strips = self.padded[0] // 16
        return _ZeroBytes(strips * strip_bytes([self.keep] * n, self.bits, self.has_mult,
                                               self.sparse))

    def release(self) -> None:
        pass


def _shape_quantize(w, bits: int, *, sparsity: int = 16, group_scales: bool = True):
    return _ShapeWeight(bits, tuple(w.shape), sparsity, group_scales and bits < 8)


class _PlacementOnlyImage(HBMImage):
    """An HBM image that reserves and records placements but keeps no bytes."""

    def _write(self, channel: int, offset: int, data: bytes) -> None:
        pass

    def _record(self, name, chans, offset, size, dtype, shape, data):
        return super()._record(name, chans, offset, size, dtype, shape, b"")

    def finish(self) -> None:
        pass


class _Ranges(dict):
    """Calibrated ranges: every point at 1.0 (scales do not change the programs' shapes)."""

    def __missing__(self, key):
        return 1.0


@dataclass
class ShapePrograms:
    """Program files plus the placements of every core (manifest-style records)."""

    prefill: bytes
    decode: bytes
    chunk: int
    tensors: list[dict]
    weight_bytes: int
    avg_weight_bits: float


@contextmanager
def _shape_only_quantisation():
    with mock.patch.object(qmodel_module, "quantize_weight", _shape_quantize):
        yield


def _cache_key(model, config, recipe, max_len, chunk) -> str:
    h = hashlib.sha256(json.dumps([model.to_dict(), config.to_dict(), asdict(recipe), max_len,
                                   chunk], sort_keys=True, default=str).encode())
    for folder in _SOURCES:  # any change to the compiler or the contract is another key
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:24]


def shape_programs(model: ModelConfig, config: AcceleratorConfig, recipe: QuantRecipe,
                   max_len: int, chunk: int | None = None, *,
                   cache_dir: Path | None = DEFAULT_CACHE) -> ShapePrograms:
    """Lower ``model`` for ``config`` from shapes; the programs ``flightllm compile`` would
    write for ``recipe`` and ``max_len``. Results are cached in ``cache_dir`` by a hash of the
    inputs and of the compiler's and contract's sources."""
    if cache_dir is None:
        return _lower(model, config, recipe, max_len, chunk)
    key = _cache_key(model, config, recipe, max_len, chunk)
    files = {name: Path(cache_dir) / f"{key}.{name}" for name in ("prefill", "decode", "json")}
    if all(p.is_file() for p in files.values()):
        meta = json.loads(files["json"].read_text())
        return ShapePrograms(files["prefill"].read_bytes(), files["decode"].read_bytes(), **meta)
    progs = _lower(model, config, recipe, max_len, chunk)
    meta = {k: v for k, v in asdict(progs).items() if k not in ("prefill", "decode")}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    for name, data in (("prefill", progs.prefill), ("decode", progs.decode),
                       ("json", json.dumps(meta).encode())):
        tmp = files[name].with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, files[name])  # the .json goes last: it marks the entry complete
    return progs


def _lower(model, config, recipe, max_len, chunk) -> ShapePrograms:
    ir = TransformerIR(model, provider=lambda spec: np.zeros(spec.shape, np.float32),
                       source=model.name)
    lowerer = Lowerer(model, config, max_len)
    for core, placer in enumerate(lowerer.placers):
        placer.image = _PlacementOnlyImage(config.hbm_channels_per_core,
                                           config.hbm_channel_bytes, name=f"core{core}")
    weights = []

    def sink(name, lin):
        weights.append(lin.weight)
        lowerer.place(name, lin)
    with _shape_only_quantisation():
        qm = build_qmodel(ir, _Ranges(), recipe, max_len=max_len, sink=sink)
    low: Lowered = lowerer.finish(qm, chunk)
    tensors = [dict(p.to_dict(), core=core) for core, image in enumerate(low.images)
               for p in image.placements.values()]
    nbytes = sum(w.nbytes for w in weights)
    params = sum(w.shape[0] * w.shape[1] for w in weights)
    return ShapePrograms(encode_program(low.prefill), encode_program(low.decode), low.chunk,
                         tensors, nbytes, 8 * nbytes / params)


def bits_for_average(model: ModelConfig, avg_bits: float, sparsity: dict[str, int],
                     group_scales: bool = True) -> dict[str, int]:
    """Per-matrix widths whose stored average is at most ``avg_bits``, for timing only.

    The compiler chooses widths by calibrated sensitivity, which needs the weights; the time
    a step takes depends only on how many bytes each matrix streams. This takes the widest
    uniform width within budget, then widens whole layers (in order) to the next width while
    the average stays within it.
    """
    mats = [(spec.name.removesuffix(".weight"), spec.name.split(".")[2], spec.shape)
            for spec in model.tensor_specs().values()
            if spec.role == "linear" and spec.name.startswith("layers.")]
    mats.append(("lm_head", "lm_head", (model.vocab_size, model.hidden_size)))

    def size(shape, bits, kind):
        return _ShapeWeight(bits, tuple(shape), sparsity.get(kind, 16),
                            group_scales and bits < 8).nbytes
    params = sum(s[0] * s[1] for _, _, s in mats)
    budget = avg_bits * params / 8
    for low_bits, high_bits in ((8, None), (4, 8), (2, 4)):
        base = sum(size(s, low_bits, k) for _, k, s in mats)
        if base <= budget:
            break
    else:
        raise ValueError(f"--avg-bits {avg_bits}: even 2-bit weights take "
                         f"{8 * base / params:.3f} bits per weight")
    chosen = {name: low_bits for name, _, _ in mats}
    if high_bits is not None:
        by_layer = defaultdict(list)
        for name, kind, shape in mats:
            by_layer[name.split(".")[1] if name.startswith("layers.") else name].append(
                (name, kind, shape))
        total = base
        for group in by_layer.values():
            extra = sum(size(s, high_bits, k) - size(s, low_bits, k) for _, k, s in group)
            if total + extra <= budget:
                total += extra
                for name, _, _ in group:
                    chosen[name] = high_bits
    return chosen
