"""The transformer IR: a decoder-only LM as architectural facts plus declared float tensors.

A :class:`ModelConfig` holds every architectural number a later pass needs (sizes, norm, activation,
positional scheme, tying, biases) and validates itself. :meth:`ModelConfig.tensor_specs` *declares*
every tensor the model has, by canonical name, shape and role, in the way hls4ml layers declare
their expected attributes. A :class:`TransformerIR` pairs a config with its weights, which may be

* absent (shape-only work on full-size models),
* in memory as numpy arrays (what the ONNX frontend produces), or
* made on demand by a *provider* callable (synthetic weights), so a pass can stream a 7B model
  layer by layer through :meth:`TransformerIR.layer` without holding it all.

:func:`check` validates an IR against its declaration and names the offending tensor.

Conventions: linear weights are ``[out_features, in_features]`` float32 (``y = x @ W.T + b``);
per-layer tensors are named ``layers.<i>.<key>`` with keys ``attn_norm.weight``, ``q.weight``,
``k.weight``, ``v.weight``, ``o.weight``, ``mlp_norm.weight`` and either ``gate/up/down.weight``
(gated MLP) or ``fc1/fc2.weight``; ``.bias`` tensors exist where the config says so. Model-level
tensors are ``embed.weight``, ``pos_embed.weight`` (learned positions), ``final_norm.weight`` and
``lm_head.weight`` (absent when the embeddings are tied).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = [
    "ACTIVATIONS", "ARCH_FEATURES", "IRError", "ModelConfig", "NORMS", "POSITIONS", "TensorSpec",
    "TransformerIR", "WeightProvider", "check",
]

NORMS = ("rms", "layer")
ACTIVATIONS = ("silu", "relu", "gelu_tanh", "gelu_erf")
POSITIONS = ("rope", "learned")
#: What each architecture family fixes; the activation is left free (GPT-2 configs may pick one).
ARCH_FEATURES: dict[str, dict[str, Any]] = {
    "llama": {"norm": "rms", "gated_mlp": True, "position": "rope"},
    "opt": {"norm": "layer", "gated_mlp": False, "position": "learned"},
    "gpt2": {"norm": "layer", "gated_mlp": False, "position": "learned"},
}
ROLES = ("embedding", "position_table", "linear", "bias", "norm_weight", "norm_bias")


class IRError(ValueError):
    """An IR or config is inconsistent; the message names the tensor or field."""


@dataclass(frozen=True)
class TensorSpec:
    """One declared tensor: canonical name, shape, role and the layer it belongs to (or None)."""

    name: str
    shape: tuple[int, ...]
    role: str
    layer: int | None = None

    @property
    def key(self) -> str:
        """The name without its ``layers.<i>.`` prefix (``q.weight``)."""
        return self.name.split(".", 2)[2] if self.layer is not None else self.name

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


#: A weight provider makes the float32 array of one declared tensor on demand.
WeightProvider = Callable[[TensorSpec], np.ndarray]


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural fact of a decoder-only transformer LM.

    Attributes:
        arch: Family label, one of :data:`ARCH_FEATURES` ("llama", "opt", "gpt2").
        vocab_size: Token vocabulary size.
        hidden_size: Width of the residual stream.
        num_layers: Number of transformer blocks.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (fewer than ``num_heads`` for grouped-query attention).
        head_dim: Width of one head.
        intermediate_size: Width of the MLP's hidden layer.
        norm: "rms" (RMSNorm, gain only) or "layer" (LayerNorm, gain and bias).
        norm_eps: Epsilon added to the variance in every norm.
        activation: "silu", "relu", "gelu_tanh" or "gelu_erf".
        gated_mlp: True for ``down(act(gate(x)) * up(x))``, False for ``fc2(act(fc1(x)))``.
        position: "rope" (rotary on q and k) or "learned" (a table added to the embeddings).
        rope_theta: Rotary base; set iff ``position == "rope"``.
        rope_interleaved: Rotary pairs are adjacent lanes (GPT-J) instead of the two halves
            of each head (LLaMA/NeoX, the default).
        position_offset: Learned tables are read at ``position + offset`` (OPT: 2).
        max_positions: Longest sequence; required for learned positions, None when unknown.
        tied_embeddings: The LM head reuses ``embed.weight`` (no ``lm_head.weight`` tensor).
        attention_bias: q/k/v/o projections have biases.
        mlp_bias: MLP projections have biases.
        name: Free-form model name (a preset name or a file name).
    """

    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str
    norm_eps: float
    activation: str
    gated_mlp: bool
    position: str
    rope_theta: float | None = None
    rope_interleaved: bool = False
    position_offset: int = 0
    max_positions: int | None = None
    tied_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`IRError` naming the first field that is out of range or inconsistent."""
        def require(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise IRError(f"config field {field}={getattr(self, field)!r}: {why}")

        require(self.arch in ARCH_FEATURES, "arch", f"must be one of {sorted(ARCH_FEATURES)}")
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "intermediate_size"):
            value = getattr(self, field)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
                    "must be a positive integer")
        require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                f"must divide num_heads={self.num_heads}")
        require(self.norm in NORMS, "norm", f"must be one of {NORMS}")
        require(0.0 < self.norm_eps < 1.0, "norm_eps", "must be in (0, 1)")
        require(self.activation in ACTIVATIONS, "activation", f"must be one of {ACTIVATIONS}")
        require(self.position in POSITIONS, "position", f"must be one of {POSITIONS}")
        if self.position == "rope":
            require(self.rope_theta is not None and self.rope_theta > 1.0, "rope_theta",
                    "rotary positions need a base > 1")
            require(self.head_dim % 2 == 0, "head_dim", "rotary positions need an even head_dim")
            require(self.position_offset == 0, "position_offset", "only learned tables have one")
        else:
            require(self.rope_theta is None, "rope_theta", "only rotary positions have a base")
            require(isinstance(self.max_positions, int) and self.max_positions > 0,
                    "max_positions", "a learned position table needs a positive length")
            require(self.position_offset >= 0, "position_offset", "must be >= 0")
        require(self.max_positions is None or self.max_positions > 0, "max_positions",
                "must be positive or None")
        for field, expected in ARCH_FEATURES[self.arch].items():
            require(getattr(self, field) == expected, field,
                    f"the {self.arch} family has {expected!r}")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def tensor_specs(self) -> dict[str, TensorSpec]:
        """Declare every tensor of the model, in storage order (globals, layers, head)."""
        specs = [TensorSpec("embed.weight", (self.vocab_size, self.hidden_size), "embedding")]
        if self.position == "learned":
            rows = self.max_positions + self.position_offset
            specs.append(TensorSpec("pos_embed.weight", (rows, self.hidden_size), "position_table"))
        for i in range(self.num_layers):
            specs += self.layer_specs(i)
        specs += self._norm_specs("final_norm", None)
        if not self.tied_embeddings:
            specs.append(TensorSpec("lm_head.weight", (self.vocab_size, self.hidden_size),
                                    "linear"))
        return {spec.name: spec for spec in specs}

    def layer_specs(self, layer: int) -> list[TensorSpec]:
        """Declare the tensors of one transformer block."""
        d, q, kv, f = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        attention = [("q", q, d), ("k", kv, d), ("v", kv, d), ("o", d, q)]
        if self.gated_mlp:
            mlp = [("gate", f, d), ("up", f, d), ("down", d, f)]
        else:
            mlp = [("fc1", f, d), ("fc2", d, f)]
        prefix = f"layers.{layer}."
        specs = self._norm_specs(prefix + "attn_norm", layer)
        specs += self._linear_specs(prefix, attention, self.attention_bias, layer)
        specs += self._norm_specs(prefix + "mlp_norm", layer)
        specs += self._linear_specs(prefix, mlp, self.mlp_bias, layer)
        return specs

    @staticmethod
    def _linear_specs(prefix: str, linears: list[tuple[str, int, int]], bias: bool,
                      layer: int) -> list[TensorSpec]:
        specs = []
        for key, out_features, in_features in linears:
            specs.append(TensorSpec(f"{prefix}{key}.weight", (out_features, in_features),
                                    "linear", layer))
            if bias:
                specs.append(TensorSpec(f"{prefix}{key}.bias", (out_features,), "bias", layer))
        return specs

    def _norm_specs(self, stem: str, layer: int | None) -> list[TensorSpec]:
        specs = [TensorSpec(f"{stem}.weight", (self.hidden_size,), "norm_weight", layer)]
        if self.norm == "layer":
            specs.append(TensorSpec(f"{stem}.bias", (self.hidden_size,), "norm_bias", layer))
        return specs

    def num_parameters(self) -> int:
        """Total parameter count (tied embeddings counted once)."""
        return sum(spec.size for spec in self.tensor_specs().values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error, naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IRError(f"unknown config field {unknown[0]!r}")
        return cls(**data)


@dataclass(frozen=True, eq=False)
class TransformerIR:
    """A model: its config and, optionally, its weights.

    Args:
        config: The architectural facts.
        tensors: Float32 arrays by canonical name (see the module docstring), or None.
        provider: Makes one tensor's array on demand (for synthetic weights), or None.
            At most one of ``tensors`` and ``provider`` is given; with neither the IR is
            shape-only.
        source: Where the model came from (a file path or a preset name).
    """

    config: ModelConfig
    tensors: Mapping[str, np.ndarray] | None = None
    provider: WeightProvider | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.tensors is not None and self.provider is not None:
            raise IRError("an IR holds either tensors or a weight provider, not both")

    @cached_property
    def specs(self) -> dict[str, TensorSpec]:
        """The declared tensors of :attr:`config`."""
        return self.config.tensor_specs()

    @property
    def has_weights(self) -> bool:
        return self.tensors is not None or self.provider is not None

    def tensor(self, name: str) -> np.ndarray:
        """One tensor by canonical name (made by the provider on each call, never cached)."""
        spec = self.specs.get(name)
        if spec is None:
            raise IRError(f"tensor {name!r} is not declared by the config")
        if self.tensors is not None:
            return self.tensors[name]
        if self.provider is not None:
            return self.provider(spec)
        raise IRError(f"tensor {name!r}: this IR is shape-only and holds no weights")

    def layer(self, index: int) -> dict[str, np.ndarray]:
        """The tensors of block ``index`` by short key (``q.weight``), made one layer at a time."""
        if not 0 <= index < self.config.num_layers:
            raise IRError(f"layer {index} out of range 0..{self.config.num_layers - 1}")
        return {spec.key: self.tensor(spec.name) for spec in self.config.layer_specs(index)}

    def layers(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Stream ``(index, tensors)`` for every block; only one block is alive at a time."""
        for index in range(self.config.num_layers):
            yield index, self.layer(index)

    def lm_head_weight(self) -> np.ndarray:
        """The ``[vocab, hidden]`` output projection (the embedding table when tied)."""
        return self.tensor("embed.weight" if self.config.tied_embeddings else "lm_head.weight")


def check(ir: TransformerIR, *, materialize: bool = False) -> None:
    """Validate an IR against its declaration; raise :class:`IRError` naming the bad tensor.

    Checks the config, then every held tensor: no undeclared or missing names, float32
    ndarrays of the declared shape, finite values. Provider-backed IRs are only checked when
    ``materialize`` is set (each tensor is made, checked and dropped, so memory stays at one
    tensor); shape-only IRs have nothing more to check.

    Args:
        ir: The IR to check.
        materialize: Also make and check every tensor of a provider-backed IR.
    """
    ir.config.validate()
    specs = ir.specs
    if ir.tensors is not None:
        for name in ir.tensors:
            if name not in specs:
                raise IRError(f"tensor {name!r} is not declared by the config")
        for name in specs:
            if name not in ir.tensors:
                raise IRError(f"tensor {name!r} is declared by the config but missing")
            _check_array(specs[name], ir.tensors[name])
    elif ir.provider is not None and materialize:
        for spec in specs.values():
            _check_array(spec, ir.provider(spec))


def _check_array(spec: TensorSpec, array: Any) -> None:
    if not isinstance(array, np.ndarray):
        raise IRError(f"tensor {spec.name!r} is a {type(array).__name__}, not a numpy array")
    if array.dtype != np.float32:
        raise IRError(f"tensor {spec.name!r} has dtype {array.dtype}, expected float32")
    if array.shape != spec.shape:
        raise IRError(f"tensor {spec.name!r} has shape {array.shape}, "
                      f"the config declares {spec.shape}")
    if not np.all(np.isfinite(array)):
        raise IRError(f"tensor {spec.name!r} has non-finite values")
