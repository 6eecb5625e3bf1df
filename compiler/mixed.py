"""Mixed-precision weights: choose each matrix's width under an average-bits budget.

Every linear weight (``layers.<i>.<kind>`` for the kinds of :data:`INPUT_POINT`, and
``lm_head``) is quantised once at each candidate width. That gives a small curve per matrix:
the bytes its packed image takes (code tables, indices and group multipliers included, exactly
what :meth:`QuantWeight.packed` emits) and a sensitivity, the output error energy the width
costs::

    e(m, b) = ||(W - Q_b(W)) diag(a)||^2 / (||W||^2 * mean_a2)

where ``a`` is the per-channel magnitude (max or RMS) of the matrix's input from calibration
(ones without it) and ``mean_a2`` is the model-wide mean of ``a**2``, a constant that makes
``e`` dimensionless. The error is relative to the *weight* energy, not to the output energy
``||W diag(a)||^2``: that normalisation would cancel the input's scale, so a matrix reading
activations 100x larger than its neighbours', which passes 100x larger errors on, would look
no more sensitive than they do.

Allocation minimises the summed sensitivity under the byte budget, a multiple-choice
knapsack. The convex-hull upgrades of all curves, sorted by error saved per byte, give a
Lagrangian path from all-narrowest to all-widest; the answer is the best allocation on that
path with at most one matrix moved to another width, among those that fit. That candidate set
does not depend on the budget, so more budget never gives a larger total, and the single move
uses the slack that the path's next upgrade would overrun.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from flightllm.contract.weights import block_bytes, code_table_bytes

from .ir import TransformerIR
from .quantize import quantize_weight

__all__ = ["INPUT_POINT", "SensitivityTable", "allocate_bits", "measure_sensitivity",
           "stored_bits_of"]

#: Calibration point (compiler/calibrate.py) each matrix kind reads.
INPUT_POINT = {"q": "h1", "k": "h1", "v": "h1", "o": "ctx", "gate": "h2", "up": "h2",
               "fc1": "h2", "down": "mlp_hidden", "fc2": "mlp_hidden", "lm_head": "final_h"}


def _linear_weights(ir: TransformerIR) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(name, kind, weight)`` of every linear weight, one block alive at a time."""
    for i, tensors in ir.layers():
        for key, weight in tensors.items():
            kind = key.removesuffix(".weight")
            if kind in INPUT_POINT:
                yield f"layers.{i}.{kind}", kind, weight
    yield "lm_head", "lm_head", ir.lm_head_weight()


def _stored_bytes(shape: tuple[int, int], bits: int, keep: int, group_scales: bool) -> int:
    """Bytes of the packed image :func:`quantize_weight` makes for a matrix of ``shape``."""
    strips, k_blocks = -(-shape[0] // 16), -(-shape[1] // 16)
    sparse = keep < 16
    block = block_bytes(keep, bits, group_scales and bits < 8)
    return strips * (code_table_bytes(k_blocks, sparse) + k_blocks * block)


def _input_range(ranges: Mapping | None, name: str, kind: str, width: int) -> np.ndarray:
    if ranges is None:
        return np.ones(width)
    point = "final_h" if kind == "lm_head" else f"{name.rsplit('.', 1)[0]}.{INPUT_POINT[kind]}"
    if point not in ranges:
        raise ValueError(f"activation_ranges has no entry {point!r} (input of {name})")
    a = np.abs(np.asarray(ranges[point], dtype=np.float64))
    if a.ndim == 0:
        return np.full(width, float(a))
    if a.shape != (width,):
        raise ValueError(f"activation range {point!r} has shape {a.shape}, but {name} reads "
                         f"{width} channels")
    return a


@dataclass(frozen=True, eq=False)
class SensitivityTable:
    """Per matrix and width: stored bytes and sensitivity (see the module docstring).

    Attributes:
        names: matrix names, in model order.
        choices: the candidate widths, ascending.
        weights: [M] unpadded weight count per matrix.
        nbytes: [M, C] packed bytes per matrix and width.
        error: [M, C] sensitivity per matrix and width.
    """

    names: tuple[str, ...]
    choices: tuple[int, ...]
    weights: np.ndarray
    nbytes: np.ndarray
    error: np.ndarray

    def _columns(self, bits_by_name: Mapping[str, int]) -> np.ndarray:
        if set(bits_by_name) != set(self.names):
            odd = sorted(set(bits_by_name) ^ set(self.names))
            raise ValueError(f"bits_by_name must name every linear weight once; {odd[0]!r} is "
                             "missing or unknown")
        try:
            return np.array([self.choices.index(bits_by_name[n]) for n in self.names])
        except ValueError:
            raise ValueError(f"widths must be among {self.choices}") from None

    def stored_bits(self, bits_by_name: Mapping[str, int]) -> float:
        """Average stored bits per weight of an allocation."""
        col = self._columns(bits_by_name)
        return 8 * int(self.nbytes[np.arange(len(col)), col].sum()) / int(self.weights.sum())

    def total_error(self, bits_by_name: Mapping[str, int]) -> float:
        """Summed sensitivity of an allocation (what :meth:`allocate` minimises)."""
        col = self._columns(bits_by_name)
        return float(self.error[np.arange(len(col)), col].sum())

    def allocate(self, budget_bits: float) -> dict[str, int]:
        """The least-sensitive allocation whose stored average is at most ``budget_bits``.

        Raises:
            ValueError: the budget is below what the narrowest width already stores.
        """
        if not (isinstance(budget_bits, numbers.Real) and math.isfinite(budget_bits)):
            raise ValueError(f"budget of {budget_bits!r} bits per weight is not a finite number")
        # Exact rational arithmetic so the stored average never exceeds the budget by rounding.
        limit = math.floor(Fraction(float(budget_bits)) * int(self.weights.sum()) / 8)
        floor_bytes = int(self.nbytes[:, 0].sum())
        if floor_bytes > limit:
            raise ValueError(
                f"budget of {budget_bits} bits per weight is infeasible: every matrix at "
                f"{self.choices[0]} bits already stores "
                f"{8 * floor_bytes / int(self.weights.sum()):.4f} bits per weight")
        path = self._hull_path()
        rows = np.arange(len(self.names))
        path_bytes = self.nbytes[rows, path].sum(axis=1)
        path_error = self.error[rows, path].sum(axis=1)
        # Candidate (k, m, c): path state k with matrix m moved to width c.
        cand_bytes = (path_bytes[:, None, None] - self.nbytes[rows, path][..., None]
                      + self.nbytes[None])
        cand_error = (path_error[:, None, None] - self.error[rows, path][..., None]
                      + self.error[None])
        fits = np.flatnonzero(cand_bytes.ravel() <= limit)
        best = fits[np.lexsort((fits, cand_bytes.ravel()[fits], cand_error.ravel()[fits]))[0]]
        k, m, c = np.unravel_index(best, cand_bytes.shape)
        cols = path[k].copy()
        cols[m] = c
        return {n: self.choices[j] for n, j in zip(self.names, cols)}

    def _hull_path(self) -> np.ndarray:
        """[T + 1, M] width index per matrix after each of the T hull upgrades, best first."""
        steps = []
        for m in range(len(self.names)):
            b, e = self.nbytes[m], self.error[m]
            cur = 0
            while True:
                best, best_slope = None, 0.0
                for j in range(cur + 1, len(b)):
                    slope = (e[cur] - e[j]) / (b[j] - b[cur])
                    if slope > best_slope:  # strict: on a tie the nearer width comes first
                        best, best_slope = j, slope
                if best is None:
                    break
                steps.append((-best_slope, m, best))
                cur = best
        # Slopes fall along each curve, so sorting keeps every matrix's upgrades in order.
        steps.sort()
        path = np.zeros((len(steps) + 1, len(self.names)), dtype=np.int64)
        for t, (_, m, j) in enumerate(steps):
            path[t + 1] = path[t]
            path[t + 1, m] = j
        return path


def measure_sensitivity(ir: TransformerIR, *, choices=(2, 4, 8), sparsity: dict | None = None,
                        activation_ranges: Mapping | None = None,
                        group_scales: bool = True) -> SensitivityTable:
    """Quantise every linear weight at every width and tabulate bytes and sensitivity.

    Args:
        ir: a model with weights; its blocks are streamed, one alive at a time.
        choices: candidate widths, a subset of (2, 4, 8).
        sparsity: N of N:16 per matrix kind (missing kinds are dense).
        activation_ranges: per-channel input magnitudes by calibration point
            (:func:`~flightllm.compiler.calibrate.calibrate_channels`), or None for uniform.
        group_scales: whether 2- and 4-bit weights carry group multipliers.
    """
    widths = tuple(sorted(set(choices)))
    if not widths or not set(widths) <= {2, 4, 8}:
        raise ValueError(f"width choices must be a non-empty subset of (2, 4, 8), not {choices}")
    sparsity = sparsity or {}
    names, counts, nbytes, energy, w_energy, a2_means = [], [], [], [], [], []
    for name, kind, weight in _linear_weights(ir):
        w = np.asarray(weight, dtype=np.float64)
        keep = sparsity.get(kind, 16)
        a2 = _input_range(activation_ranges, name, kind, w.shape[1]) ** 2
        names.append(name)
        counts.append(w.size)
        nbytes.append([_stored_bytes(w.shape, b, keep, group_scales) for b in widths])
        energy.append([_error_energy(w, a2, b, keep, group_scales) for b in widths])
        w_energy.append(float((w ** 2).sum()))
        a2_means.append(float(a2.mean()))
    scale = np.array(w_energy) * (np.mean(a2_means) or 1.0)
    error = np.array(energy) / np.where(scale > 0, scale, 1.0)[:, None]
    return SensitivityTable(tuple(names), widths, np.array(counts, dtype=np.int64),
                            np.array(nbytes, dtype=np.int64), error)


def _error_energy(w: np.ndarray, a2: np.ndarray, bits: int, keep: int,
                  group_scales: bool) -> float:
    """``||(W - Q(W)) diag(a)||^2`` for ``a2 = a**2``."""
    diff = quantize_weight(w, bits, sparsity=keep, group_scales=group_scales).float_weight()
    # In place: at full size each temporary is a matrix-sized float64 array.
    np.subtract(w, diff, out=diff)
    np.square(diff, out=diff)
    return float(diff.sum(axis=0) @ a2)


def allocate_bits(ir: TransformerIR, budget_bits: float, *, choices=(2, 4, 8),
                  sparsity: dict | None = None, activation_ranges: Mapping | None = None,
                  group_scales: bool = True) -> dict[str, int]:
    """Bits per matrix (``layers.<i>.<kind>``, ``lm_head``) for an average-bits budget.

    Args:
        ir: a model with weights.
        budget_bits: the most stored bits per weight allowed, averaged over every linear
            weight, metadata included.
        choices, sparsity, activation_ranges, group_scales: as for :func:`measure_sensitivity`.

    Raises:
        ValueError: the budget is infeasible (below every matrix at the narrowest width).
    """
    table = measure_sensitivity(ir, choices=choices, sparsity=sparsity,
                                activation_ranges=activation_ranges, group_scales=group_scales)
    return table.allocate(budget_bits)


def stored_bits_of(ir: TransformerIR, bits_by_name: Mapping[str, int],
                   sparsity: dict | None = None, *, group_scales: bool = True) -> float:
    """Measure an allocation: quantise and pack every matrix, average the packed bits.

    Args:
        ir: a model with weights.
        bits_by_name: width per matrix, as :func:`allocate_bits` returns.
        sparsity: N of N:16 per matrix kind (missing kinds are dense).
        group_scales: whether 2- and 4-bit weights carry group multipliers.
    """
    sparsity = sparsity or {}
    total_bytes = total_weights = 0
    seen = set()
    for name, kind, weight in _linear_weights(ir):
        if name not in bits_by_name:
            raise ValueError(f"bits_by_name has no width for {name!r}")
        seen.add(name)
        qw = quantize_weight(np.asarray(weight, dtype=np.float64), bits_by_name[name],
                             sparsity=sparsity.get(kind, 16), group_scales=group_scales)
        total_bytes += len(qw.packed())
        total_weights += weight.size
    if set(bits_by_name) - seen:
        raise ValueError(f"bits_by_name names {sorted(set(bits_by_name) - seen)[0]!r}, "
                         "which is no linear weight of this model")
    return 8 * total_bytes / total_weights
