"""Matchers for the pieces of a transformer block in an ONNX data path.

Each matcher gets the data-path nodes of one region (found by the frontend between two residual
adds) and the probe values of :class:`~flightllm.compiler.onnx_patterns.OnnxGraph`, and returns
the weights and facts of that piece or raises :class:`FrontendError` naming the node that does not
fit. Matchers read structure (which projection feeds the query, key or value input of the
attention core; which MLP branch goes through the activation) and take numbers from values
(weights, epsilons, head counts from the query's shape, the rotary base from its tables). The
frontend then checks each recognised piece numerically against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .onnx_patterns import (
    ATTENTION_OPS, LAYOUT_OPS, MLP_OPS, NORM_OPS, FrontendError, OnnxGraph, attribute, label,
)

__all__ = ["AttentionMatch", "Linear", "MlpMatch", "NormMatch", "check_ops", "fit_rope_theta",
           "match_attention", "match_linears", "match_mlp", "match_norm", "trace_back"]

ACTIVATION_OF_OP = {"Sigmoid": "silu", "Relu": "relu", "Tanh": "gelu_tanh", "Erf": "gelu_erf"}


@dataclass
class Linear:
    """A projection: ``out = x @ weight.T + bias`` with ``weight`` as ``[out, in]`` float32."""

    node: onnx.NodeProto
    x: str
    weight: np.ndarray
    bias: np.ndarray | None
    out: str
    nodes: set[int] = field(default_factory=set)

    def params(self, key: str, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """``{key.weight, key.bias}`` for output rows ``rows`` (a fused projection's share)."""
        found = {f"{key}.weight": np.ascontiguousarray(self.weight[rows])}
        if self.bias is not None:
            found[f"{key}.bias"] = np.ascontiguousarray(self.bias[rows])
        return found


def match_linears(g: OnnxGraph, region: set[int]) -> dict[int, Linear]:
    """Every MatMul/Gemm in ``region`` with a static weight, keyed by its node index."""
    found = {}
    for index in sorted(region):
        node = g.node(index)
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        a, b = node.input[0], node.input[1]
        if g.static_value(a) is not None:
            raise FrontendError(f"{label(node)}: weight on the left of the activations is not "
                                "supported")
        w = g.static_value(b)
        if w is None:
            continue  # both operands computed: attention scores or context
        if w.ndim != 2 or w.dtype.kind != "f":
            raise FrontendError(f"{label(node)}: weight {b!r} has shape {w.shape} and dtype "
                                f"{w.dtype}; expected a 2-D float matrix")
        bias = None
        if node.op_type == "MatMul":
            weight = w.T
        else:
            if (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                    or attribute(node, "beta", 1.0) != 1.0):
                raise FrontendError(f"{label(node)}: only Gemm with alpha=beta=1, transA=0 is "
                                    "supported")
            weight = w if attribute(node, "transB", 0) else w.T
            if len(node.input) > 2 and node.input[2]:
                bias = _vector(g, node.input[2], weight.shape[0], node)
        linear = Linear(node, a, weight.astype(np.float32), bias, node.output[0], {index})
        consumers = g.consumers.get(linear.out, [])
        if bias is None and len(consumers) == 1 and g.node(consumers[0]).op_type == "Add":
            add = g.node(consumers[0])
            other = add.input[1] if add.input[0] == linear.out else add.input[0]
            if g.static_value(other) is not None and consumers[0] in region:
                linear.bias = _vector(g, other, weight.shape[0], add)
                linear.out = add.output[0]
                linear.nodes.add(consumers[0])
        found[index] = linear
    return found


def _vector(g: OnnxGraph, name: str, size: int, node: onnx.NodeProto) -> np.ndarray:
    value = g.static_value(name)
    if value is None or value.size != size or value.shape[-1] != size:
        shape = None if value is None else value.shape
        raise FrontendError(f"{label(node)}: {name!r} with shape {shape} is not a vector of "
                            f"{size} values")
    return value.reshape(size).astype(np.float32)


def check_ops(g: OnnxGraph, nodes: set[int], allowed: frozenset[str], where: str) -> None:
    """Raise naming the first node of ``nodes`` whose op is not in ``allowed``."""
    for index in sorted(nodes):
        node = g.node(index)
        if node.op_type not in allowed:
            raise FrontendError(f"{label(node)} in the {where} is not a recognised operation")


def trace_back(g: OnnxGraph, tensor: str, width: int) -> str:
    """Step back through value-preserving layout nodes (reshape to 2-D, cast ...)."""
    node = g.producer_of(tensor)
    while node is not None and g.is_layout(node, width):
        tensor = node.input[0]
        node = g.producer_of(tensor)
    return tensor


@dataclass
class NormMatch:
    kind: str
    eps: float
    weight: np.ndarray
    bias: np.ndarray | None


def match_norm(g: OnnxGraph, nodes: set[int], width: int, where: str) -> NormMatch:
    """RMSNorm or LayerNorm, fused (opset >= 17/23) or decomposed; ``nodes`` is the whole norm."""
    check_ops(g, nodes, NORM_OPS, where)
    ops = {i: g.node(i) for i in nodes}
    fused = [n for n in ops.values() if n.op_type in ("RMSNormalization", "LayerNormalization")]
    if fused:
        node = fused[0]
        extra = [n for n in ops.values() if n is not node and n.op_type not in LAYOUT_OPS]
        if len(fused) > 1 or extra:
            raise FrontendError(f"{label((fused[1:] + extra)[0])} in the {where}: expected "
                                f"one {node.op_type} and layout ops only")
        if attribute(node, "axis", -1) not in (-1, g.value(node.input[0]).ndim - 1):
            raise FrontendError(f"{label(node)}: only a norm over the last axis is supported")
        weight = _vector(g, node.input[1], width, node)
        bias = (_vector(g, node.input[2], width, node)
                if len(node.input) > 2 and node.input[2] else None)
        kind = "rms" if node.op_type == "RMSNormalization" else "layer"
        if kind == "layer" and bias is None:
            bias = np.zeros(width, np.float32)
        return NormMatch(kind, _decimal(attribute(node, "epsilon", 1e-5)), weight, bias)
    kind = "layer" if any(n.op_type == "Sub" for n in ops.values()) else "rms"
    means = [n for n in ops.values() if n.op_type == "ReduceMean"]
    if len(means) != (2 if kind == "layer" else 1):
        node = means[0] if means else next(iter(ops.values()))
        raise FrontendError(f"{label(node)} in the {where}: not the ReduceMean pattern of a "
                            f"{kind} norm")
    eps, weight, bias = [], [], []
    for node in ops.values():
        statics = [g.static_value(i) for i in node.input if i in g.static]
        if node.op_type not in ("Add", "Mul") or not statics:
            continue
        value = statics[0]
        if node.op_type == "Add" and value.size == 1:
            eps.append(float(value.reshape(())))
        elif value.size == width:
            (bias if node.op_type == "Add" else weight).append(_vector(g, node.input[
                0 if node.input[0] in g.static else 1], width, node))
        elif not (node.op_type == "Mul" and value.size == 1 and float(value.reshape(())) == 1.0):
            raise FrontendError(f"{label(node)} in the {where}: unexpected constant of shape "
                                f"{value.shape}")
    if len(eps) != 1 or len(weight) > 1 or len(bias) > (kind == "layer"):
        raise FrontendError(f"{label(means[0])} in the {where}: expected one epsilon, at most "
                            "one gain and one bias")
    gain = weight[0] if weight else np.ones(width, np.float32)
    shift = bias[0] if bias else (np.zeros(width, np.float32) if kind == "layer" else None)
    return NormMatch(kind, _decimal(eps[0]), gain, shift)


def _decimal(value: float) -> float:
    """The shortest decimal that a float32 constant stands for (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def fit_rope_theta(cos: np.ndarray, sin: np.ndarray, head_dim: int,
                   node: onnx.NodeProto) -> tuple[float, bool | None]:
    """Fit the rotary base to tables of ``cos/sin(position * theta**(-2i/head_dim))``.

    Tables are ``[..., positions, n]`` with ``n = head_dim/2`` or ``head_dim`` (duplicated per
    half, or per adjacent pair for interleaved rotary). Returns the base and, for duplicated
    tables, whether the layout is interleaved (None when the table does not say).
    """
    cos = np.asarray(cos, np.float64).reshape(-1, cos.shape[-1])
    sin = np.asarray(sin, np.float64).reshape(-1, sin.shape[-1])
    half, interleaved = head_dim // 2, None
    if cos.shape[-1] == head_dim:
        if np.allclose(cos[:, :half], cos[:, half:]) and np.allclose(sin[:, :half], sin[:, half:]):
            cos, sin, interleaved = cos[:, :half], sin[:, :half], False
        elif np.allclose(cos[:, 0::2], cos[:, 1::2]):
            cos, sin, interleaved = cos[:, 0::2], sin[:, 0::2], True
    if cos.shape[-1] != half or cos.shape[0] < 2 or half < 2:
        raise FrontendError(f"{label(node)}: rotary table of shape {cos.shape} does not cover "
                            f"head_dim {head_dim} (partial rotary is not supported)")
    inv_freq = np.arctan2(sin[1], cos[1])
    i = np.arange(1, half)
    theta = float(np.exp(np.mean(-np.log(inv_freq[1:]) * head_dim / (2 * i))))
    theta = float(f"{theta:.6g}")
    expected = theta ** (-np.arange(half) * 2.0 / head_dim)
    angles = np.arange(cos.shape[0])[:, None] * expected[None, :]
    if not (np.allclose(np.cos(angles), cos, atol=2e-4) and np.allclose(np.sin(angles), sin,
                                                                          atol=2e-4)):
        raise FrontendError(f"{label(node)}: rotary tables are not cos/sin(position * "
                            "theta**(-2i/d)) for consecutive positions (scaled RoPE is not "
                            "supported)")
    return theta, interleaved


@dataclass
class AttentionMatch:
    params: dict[str, np.ndarray]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: tuple[float, bool] | None
    core: onnx.NodeProto


def _core(g: OnnxGraph, interior: set[int], where: str):
    """The attention core: a fused Attention, or the Softmax between two activation MatMuls."""
    cores = [g.node(i) for i in sorted(interior) if g.node(i).op_type in ("Attention", "Softmax")]
    if len(cores) != 1:
        node = cores[1] if cores else g.node(min(interior))
        raise FrontendError(f"{label(node)} in the {where}: expected exactly one attention core "
                            f"(Softmax or Attention), found {len(cores)}")
    core = cores[0]
    if core.op_type == "Attention":
        if len(core.input) > 4 and any(core.input[4:]):
            raise FrontendError(f"{label(core)}: past key/value inputs are not supported")
        return core, core.input[0], core.input[1], core.input[2]
    scores = g.producer_of(core.input[0])
    while scores is not None and not (scores.op_type == "MatMul"
                                      and all(i in g.tainted for i in scores.input)):
        if g.producer[scores.output[0]] not in interior:
            scores = None
            break
        scores = g.producer_of(next(i for i in scores.input if i in g.tainted))
    if scores is None:
        raise FrontendError(f"{label(core)} in the {where}: no query-key MatMul before it")
    tensor, context = core.output[0], None
    for _ in range(len(interior)):  # follow the probabilities through NaN guards and casts
        users = [g.node(i) for i in g.consumers.get(tensor, []) if i in interior]
        context = next((n for n in users if n.op_type == "MatMul" and n.input[0] == tensor), None)
        if context is not None:
            break
        passing = [n for n in users if n.op_type in ("Where", "Cast", "Identity")]
        if len(passing) != 1:
            break
        tensor = passing[0].output[0]
    if context is None:
        raise FrontendError(f"{label(core)} in the {where}: probabilities do not reach a "
                            "MatMul with the values")
    return core, scores.input[0], scores.input[1], context.input[1]


def match_attention(g: OnnxGraph, interior: set[int], h: str, width: int,
                    where: str) -> AttentionMatch:
    """Projections, head counts and rotary settings of one self-attention."""
    check_ops(g, interior, ATTENTION_OPS, where)
    linears = match_linears(g, interior)
    core, q_in, k_in, v_in = _core(g, interior, where)
    q_shape = g.value(q_in).shape
    if len(q_shape) == 4:
        num_heads, head_dim = q_shape[1], q_shape[3]
    elif core.op_type == "Attention" and attribute(core, "q_num_heads"):
        num_heads = attribute(core, "q_num_heads")
        head_dim = q_shape[-1] // num_heads
    else:
        raise FrontendError(f"{label(core)} in the {where}: cannot read heads from query shape "
                            f"{q_shape}")
    role_inputs = {"q": q_in, "k": k_in, "v": v_in}
    reach = {role: g.ancestors(t) for role, t in role_inputs.items()}
    params: dict[str, np.ndarray] = {}
    entries = [lin for lin in linears.values() if trace_back(g, lin.x, width) == h]
    for lin in entries:
        roles = [role for role, nodes in reach.items() if min(lin.nodes) in nodes]
        if len(roles) == 1:
            params.update(lin.params(roles[0]))
        elif len(roles) == 3:
            for role in roles:
                params.update(lin.params(role, _fused_rows(g, lin, reach[role], role_inputs[role],
                                                          where)))
        else:
            raise FrontendError(f"{label(lin.node)} in the {where}: projection feeds "
                                f"{roles or 'none'} of query/key/value")
    others = [lin for i, lin in linears.items() if lin not in entries]
    if len(others) != 1 or not ({"q.weight", "k.weight", "v.weight"} <= params.keys()):
        node = others[1].node if len(others) > 1 else core
        raise FrontendError(f"{label(node)} in the {where}: expected q, k, v projections of the "
                            f"normed input and one output projection")
    params.update(others[0].params("o"))
    num_kv_heads = params["k.weight"].shape[0] // head_dim
    if (params["q.weight"].shape[0] != num_heads * head_dim
            or params["v.weight"].shape[0] != num_kv_heads * head_dim or num_kv_heads == 0
            or num_heads % num_kv_heads):
        raise FrontendError(f"{label(core)} in the {where}: q/k/v widths "
                            f"{[params[k + '.weight'].shape[0] for k in 'qkv']} do not fit "
                            f"{num_heads} heads of {head_dim}")
    return AttentionMatch(params, num_heads, num_kv_heads, head_dim,
                          _rope(g, interior, head_dim, where), core)


def _fused_rows(g: OnnxGraph, lin: Linear, path: set[int], role_input: str,
                where: str) -> slice:
    """Output rows of a fused qkv projection that reach one role through a Split or Slice."""
    width = lin.weight.shape[0]
    for index in sorted(path & g.descendants([lin.out])):
        node = g.node(index)
        if node.op_type == "Split":
            sizes = (g.static_value(node.input[1]) if len(node.input) > 1 and node.input[1]
                     else attribute(node, "split"))
            if sizes is None:
                sizes = [width // len(node.output)] * len(node.output)
            starts = np.concatenate([[0], np.cumsum(sizes)])
            for k, out in enumerate(node.output):
                if out in {i for j in path for i in g.node(j).input} | {role_input}:
                    return slice(int(starts[k]), int(starts[k + 1]))
        if node.op_type == "Slice":
            start, end = (int(g.static_value(node.input[i]).reshape(-1)[0]) for i in (1, 2))
            return slice(start, min(end, width))
        if node.op_type == "SequenceAt":  # torch.split in an unoptimised export
            split = g.producer_of(node.input[0])
            size = g.static_value(split.input[1]) if len(split.input) > 1 else None
            sizes = np.broadcast_to(size, (width // int(size),)) if np.ndim(size) == 0 else size
            starts = np.concatenate([[0], np.cumsum(sizes)])
            k = int(g.static_value(node.input[1]))
            return slice(int(starts[k]), int(starts[k + 1]))
    raise FrontendError(f"{label(lin.node)} in the {where}: fused qkv projection is not split "
                        "by a Split or Slice")


def _rope(g: OnnxGraph, interior: set[int], head_dim: int, where: str):
    """(theta, interleaved) if the attention rotates q and k, else None."""
    nodes = [g.node(i) for i in sorted(interior)]
    fused = [n for n in nodes if n.op_type == "RotaryEmbedding"]
    if fused:
        node = fused[0]
        if attribute(node, "rotary_embedding_dim", 0) not in (0, head_dim):
            raise FrontendError(f"{label(node)} in the {where}: partial rotary is unsupported")
        cos, sin = g.value(node.input[1]), g.value(node.input[2])
        if len(node.input) > 3 and node.input[3]:  # tables are caches indexed by position_ids
            cos, sin = cos[g.value(node.input[3]).reshape(-1)], sin[g.value(node.input[3])
                                                                   .reshape(-1)]
        theta, _ = fit_rope_theta(cos, sin, head_dim, node)
        return theta, bool(attribute(node, "interleaved", 0))
    for node in nodes:  # decomposed: x * cos + rotate_half(x) * sin
        data = [i for i in node.input if i in g.tainted]
        tables = [i for i in node.input if i not in g.tainted]
        rotated = g.producer_of(data[0]) if len(data) == 1 else None
        if node.op_type != "Mul" or rotated is None or rotated.op_type != "Concat" or not tables:
            continue
        add = next(g.node(i) for i in g.consumers[node.output[0]])
        partner = g.producer_of(next(i for i in add.input if i != node.output[0]))
        cos = next(i for i in partner.input if i not in g.tainted)
        theta, interleaved = fit_rope_theta(g.value(cos), g.value(tables[0]), head_dim, node)
        steps = [n for n in nodes if n.op_type == "Slice" and len(n.input) > 4
                 and np.any(g.value(n.input[4]) == 2)]
        return theta, bool(steps) if interleaved is None else interleaved
    return None


@dataclass
class MlpMatch:
    params: dict[str, np.ndarray]
    activation: str
    gated: bool


def match_mlp(g: OnnxGraph, interior: set[int], h: str, width: int, where: str) -> MlpMatch:
    """Gated (gate/up/down) or plain (fc1/fc2) MLP and its activation."""
    check_ops(g, interior, MLP_OPS, where)
    linears = match_linears(g, interior)
    entries = [lin for lin in linears.values() if trace_back(g, lin.x, width) == h]
    exits = [lin for lin in linears.values() if lin not in entries]
    acts = [g.node(i) for i in sorted(interior)
            if g.node(i).op_type in ACTIVATION_OF_OP or g.node(i).op_type == "Gelu"]
    kinds = {ACTIVATION_OF_OP.get(n.op_type) or
             ("gelu_tanh" if attribute(n, "approximate", "none") == "tanh" else "gelu_erf")
             for n in acts}
    if len(kinds) != 1 or len(exits) != 1 or len(entries) not in (1, 2):
        node = acts[1] if len(kinds) > 1 else (exits + entries + [g.node(min(interior))])[0]
        raise FrontendError(f"{label(node)} in the {where}: expected one activation kind and "
                            f"fc1/fc2 or gate/up/down projections, found {len(linears)} "
                            f"projections and activations {sorted(kinds)}")
    down = exits[0]
    if len(entries) == 1:
        return MlpMatch({**entries[0].params("fc1"), **down.params("fc2")}, kinds.pop(), False)
    act_inputs = set().union(*(g.ancestors(n.output[0]) for n in acts))
    gates = [lin for lin in entries if min(lin.nodes) in act_inputs]
    if len(gates) != 1:
        raise FrontendError(f"{label(entries[0].node)} in the {where}: cannot tell the gate "
                            "projection (the one through the activation) from the up projection")
    up = entries[1] if gates[0] is entries[0] else entries[0]
    params = {**gates[0].params("gate"), **up.params("up"), **down.params("down")}
    return MlpMatch(params, kinds.pop(), True)
