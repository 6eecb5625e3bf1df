"""ONNX graph view for the frontend: reading, data-path analysis, a probe run, small matchers.

The frontend separates an exported graph into two parts:

* the **data path**: every node that depends on the hidden states, i.e. downstream of an
  embedding lookup (a ``Gather`` from a 2-D float initializer). Only transformer operations may
  appear there, and the frontend must account for each of those nodes;
* **exporter noise**: shape arithmetic, mask building, position and rotary tables, weight
  transposes. It is not interpreted node by node; its *values* are read from a probe run.

The probe runs the whole graph once on a short random sequence with onnx's reference evaluator
(pure numpy; onnx is already a dependency), so every tensor has a concrete value and shape: masks
can be checked for causality, reshapes read for head counts, rotary tables fitted for their base,
and every recognised block compared numerically with the numpy reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

__all__ = ["FrontendError", "OnnxGraph", "label", "read_model"]

#: Ops that read only a tensor's shape: the data path stops there.
SHAPE_OPS = frozenset({"Shape", "Size"})
#: Ops that can move or retype a tensor without changing its values (an unoptimised export
#: also slices the whole sequence before the LM head); ``OnnxGraph.is_layout`` checks the values.
LAYOUT_OPS = frozenset({"Reshape", "Cast", "CastLike", "Identity", "Flatten", "Squeeze",
                        "Unsqueeze", "Slice"})
NORM_OPS = frozenset({"RMSNormalization", "LayerNormalization", "Pow", "ReduceMean", "Add", "Sub",
                      "Mul", "Div", "Sqrt", "Reciprocal"}) | LAYOUT_OPS
LINEAR_OPS = frozenset({"MatMul", "Gemm", "Add"}) | LAYOUT_OPS
ATTENTION_OPS = LINEAR_OPS | frozenset({
    "Attention", "RotaryEmbedding", "Transpose", "Expand", "Concat", "Split", "Neg", "Mul",
    "Div", "Softmax", "Where", "IsNaN", "Tile", "SplitToSequence", "SequenceAt"})
MLP_OPS = LINEAR_OPS | frozenset({"Mul", "Div", "Pow", "Sigmoid", "Relu", "Tanh", "Erf", "Gelu"})
EMBEDDING_OPS = frozenset({"Gather", "Add"}) | LAYOUT_OPS
DATA_PATH_OPS = NORM_OPS | ATTENTION_OPS | MLP_OPS | EMBEDDING_OPS
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)


class FrontendError(ValueError):
    """The ONNX graph is unreadable or not a supported decoder-only LM; names node and reason."""


def label(node: onnx.NodeProto) -> str:
    """How errors name a node: ``node 'name' (OpType)``."""
    return f"node {node.name!r} ({node.op_type})"


def read_model(path: str | Path) -> onnx.ModelProto:
    """Load a model with its external data; any failure becomes a :class:`FrontendError`."""
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises protobuf, OS and validation errors alike
        raise FrontendError(f"cannot read ONNX model {str(path)!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    return model


class OnnxGraph:
    """Producers, consumers, static tensors and the data path of one ONNX graph.

    Args:
        model: The loaded model.
        path: Its file, for error messages.
    """

    def __init__(self, model: onnx.ModelProto, path: str):
        self.model = model
        self.path = path
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {v.name: v for v in graph.input if v.name not in self.initializers}
        self.outputs = [v.name for v in graph.output]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        self.values: dict[str, np.ndarray] = {}
        self._check_wellformed()
        self.static = self._static_tensors()
        self.tainted = self._data_path()

    # -- structure ---------------------------------------------------------------------------
    def _check_wellformed(self) -> None:
        known = set(self.initializers) | set(self.inputs) | {""}
        for index, node in enumerate(self.nodes):
            if node.domain not in ("", "ai.onnx"):
                raise FrontendError(f"{label(node)}: custom-domain op {node.domain!r} is not "
                                    "a recognised transformer operation")
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for a in node.attribute):
                raise FrontendError(f"{label(node)}: control flow is not supported")
            for name in node.input:
                if name not in known:
                    raise FrontendError(f"{label(node)}: input {name!r} is never defined "
                                        f"(truncated or corrupt file {self.path!r}?)")
                self.consumers.setdefault(name, []).append(index)
            for name in node.output:
                self.producer[name] = index
                known.add(name)
        for name in self.outputs:
            if name not in known:
                raise FrontendError(f"graph output {name!r} is never defined in {self.path!r}")

    def _static_tensors(self) -> set[str]:
        static = set(self.initializers)
        for node in self.nodes:
            inputs = [name for name in node.input if name]
            if all(name in static for name in inputs) and not node.op_type.startswith("Random"):
                static.update(node.output)
        return static

    def _constant(self, name: str) -> onnx.TensorProto | None:
        """The proto of an initializer or Constant output (its value is not loaded)."""
        tensor = self.initializers.get(name)
        if tensor is None and name in self.producer:
            node = self.nodes[self.producer[name]]
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                tensor = node.attribute[0].t
        return tensor

    def _is_float_table(self, name: str) -> bool:
        tensor = self._constant(name)
        return tensor is not None and len(tensor.dims) == 2 and tensor.data_type in FLOAT_TYPES

    def table_shape(self, name: str) -> tuple[int, ...]:
        """Shape of an embedding table (before the probe has run)."""
        return tuple(self._constant(name).dims)

    def _data_path(self) -> set[str]:
        """Tensors that depend on the hidden states; raises on a foreign op among them."""
        tainted: set[str] = set()
        for node in self.nodes:
            if self.is_embedding_gather(node):
                tainted.update(node.output)
            elif node.op_type not in SHAPE_OPS and any(i in tainted for i in _data_inputs(node)):
                if node.op_type not in DATA_PATH_OPS:
                    raise FrontendError(f"{label(node)}: op {node.op_type} is not a recognised "
                                        "transformer operation on the hidden-state path")
                tainted.update(node.output)
        if not tainted:
            raise FrontendError(f"no embedding lookup (Gather from a 2-D float initializer) "
                                f"in {self.path!r}")
        return tainted

    def is_embedding_gather(self, node: onnx.NodeProto) -> bool:
        """A Gather from a static 2-D float table by computed indices: token or position."""
        return (node.op_type == "Gather" and self._is_float_table(node.input[0])
                and node.input[1] not in self.static and _axis(node) == 0)

    def node(self, index: int) -> onnx.NodeProto:
        return self.nodes[index]

    def producer_of(self, name: str) -> onnx.NodeProto | None:
        index = self.producer.get(name)
        return None if index is None else self.nodes[index]

    def data_nodes(self) -> list[int]:
        """Indices of data-path nodes, in graph (topological) order."""
        return [i for i, n in enumerate(self.nodes) if any(o in self.tainted for o in n.output)]

    def descendants(self, tensors: Iterable[str], stop: set[int] = frozenset()) -> set[int]:
        """Data-path nodes reachable from ``tensors``, not entering nodes in ``stop``."""
        seen: set[int] = set()
        frontier = list(tensors)
        while frontier:
            for index in self.consumers.get(frontier.pop(), ()):
                node = self.nodes[index]
                if index in seen or index in stop or not any(o in self.tainted
                                                             for o in node.output):
                    continue
                seen.add(index)
                frontier.extend(node.output)
        return seen

    def ancestors(self, tensor: str, stop: set[str] = frozenset()) -> set[int]:
        """Data-path nodes that ``tensor`` depends on, not crossing tensors in ``stop``."""
        seen: set[int] = set()
        frontier = [tensor]
        while frontier:
            name = frontier.pop()
            index = self.producer.get(name)
            if name in stop or name not in self.tainted or index is None or index in seen:
                continue
            seen.add(index)
            frontier.extend(self.nodes[index].input)
        return seen

    # -- values from the probe ---------------------------------------------------------------
    def run_probe(self, feeds: dict[str, np.ndarray]) -> None:
        """Evaluate the whole graph on ``feeds``, keeping every intermediate value."""
        evaluator = ReferenceEvaluator(self.model, new_ops=[GatherElements])
        try:
            results = evaluator.run(None, feeds, intermediate=True)
        except Exception as exc:  # the evaluator re-raises numpy errors without the node
            node = _failing_node(evaluator, feeds)
            where = f"{label(node)} fails" if node is not None else "evaluation fails"
            raise FrontendError(f"{where} on a probe of {feeds_shape(feeds)}: "
                                f"{type(exc).__name__}: {exc} (inconsistent shapes?)") from exc
        # Sequence values (SplitToSequence) stay lists; everything else becomes an ndarray.
        self.values = {k: v if isinstance(v, list) else np.asarray(v)
                       for k, v in results.items() if k}

    def value(self, name: str) -> np.ndarray:
        return self.values[name]

    def static_value(self, name: str) -> np.ndarray | None:
        """The value of a static tensor (weights, folded constants), else None."""
        return self.values.get(name) if name in self.static else None

    def is_layout(self, node: onnx.NodeProto, width: int) -> bool:
        """A value-preserving move of a ``[..., width]`` float tensor (reshape, cast ...)."""
        if node.op_type not in LAYOUT_OPS or node.output[0] not in self.tainted:
            return False
        before, after = self.value(node.input[0]), self.value(node.output[0])
        return (before.shape[-1:] == after.shape[-1:] == (width,) and before.size == after.size
                and after.dtype.kind == "f"
                and np.array_equal(before.reshape(-1), after.reshape(-1)))


class GatherElements(OpRun):
    """Spec-correct GatherElements for the probe.

    onnx 1.23's reference version goes through ``np.choose``, which takes at most 64 choices, and
    its fallback mis-shapes the result (BERT's exported token-type lookup hits this).
    """

    op_domain = ""

    def _run(self, data, indices, axis=0):
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices.astype(np.int64), axis=axis),)


def _data_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs whose values reach the output (CastLike's second input only gives a type)."""
    return list(node.input[:1]) if node.op_type == "CastLike" else list(node.input)


def _axis(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return attribute.i
    return 0


def attribute(node: onnx.NodeProto, name: str, default=None):
    """One attribute's Python value, or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value
    return default


def feeds_shape(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())


def _failing_node(evaluator: ReferenceEvaluator, feeds: dict[str, np.ndarray]):
    """Re-run node by node to find the one that raised (uses evaluator internals; best effort)."""
    try:
        results = {"": None, **evaluator.rt_inits_, **feeds}
        for rt_node in evaluator.rt_nodes_:
            try:
                outputs = rt_node.run(*[results[i] for i in rt_node.input])
            except Exception:
                return rt_node.onnx_node
            results.update(zip(rt_node.output, outputs))
    except Exception:
        return None
    return None
