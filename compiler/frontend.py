"""ONNX frontend: load a decoder-only LM exported by ``torch.onnx.export`` into the IR.

:func:`load_onnx` works in five steps, each of which raises :class:`FrontendError` naming the
ONNX node (name and op type) it cannot accept:

1. read the file (external data included) and find the data path (:mod:`.onnx_patterns`);
   a foreign op on it, such as a custom-domain op injected into a block, is rejected here;
2. run a probe: the whole graph once on a short random sequence with onnx's reference
   evaluator, so every tensor, including exporter noise, has a concrete value;
3. check that every attention is causal (rejects encoder-only, bidirectional models);
4. walk the residual stream from the embeddings: each residual ``Add`` closes a region,
   which must start with a norm and be an attention or an MLP (:mod:`.onnx_blocks`); every
   data-path node must belong to exactly one region;
5. build the config and tensors, then check each recognised norm, attention and MLP, and the
   logits, against :mod:`.reference` on the probe values, so a structure that was misread (an
   extra scale, a swapped projection) is an error instead of a silently wrong IR.

Exporter variations handled: dynamo (opsets 18-23: fused ``Attention``, ``RotaryEmbedding``,
``RMSNormalization``, ``LayerNormalization`` at 23; decomposed forms below) and TorchScript
(opset 17: ``Gemm``, shape arithmetic, explicit ``attention_mask`` input), and dynamo exports
without its optimiser (``CastLike``, ``SplitToSequence``); GPT-2's fused qkv projection is split
into q, k, v. Checked by hand on a real SmolLM2-135M export too (30 layers, 9/3 heads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from . import reference
from .ir import ModelConfig, TransformerIR, check
from .onnx_blocks import (
    AttentionMatch, MlpMatch, NormMatch, check_ops, match_attention, match_linears, match_mlp,
    match_norm, trace_back,
)
from .onnx_patterns import (
    EMBEDDING_OPS, LAYOUT_OPS, LINEAR_OPS, FrontendError, OnnxGraph, attribute, label, read_model,
)

__all__ = ["FrontendError", "load_onnx"]

#: Largest relative difference between a recognised piece and the graph on the probe.
TOLERANCE = 1e-3
_INT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def load_onnx(path: str | Path, *, max_positions: int | None = None, probe_length: int = 7,
              seed: int = 0) -> TransformerIR:
    """Load a decoder-only transformer LM from an ONNX file.

    Args:
        path: The ``.onnx`` file (its external data files next to it).
        max_positions: Longest sequence, for rotary models whose graph does not say
            (learned position tables give their own).
        probe_length: Tokens in the probe run, if the graph's sequence axis is dynamic; best
            unlike the export's example length, so a length baked into the graph shows.
        seed: Seed of the probe's random token ids.

    Returns:
        A :class:`TransformerIR` holding float32 weights, checked with :func:`~.ir.check`.

    Raises:
        FrontendError: The file is unreadable or the graph is not a supported model.
    """
    g = OnnxGraph(read_model(path), str(path))
    token, positions = _embedding_gathers(g)
    feeds, ids = _probe_feeds(g, token, probe_length, seed)
    g.run_probe(feeds)
    _check_causal(g)
    if len(positions) > 1:
        raise FrontendError(f"{label(positions[1])}: a third embedding table (token types?) is "
                            "not supported")
    position = positions[0] if positions else None
    stream0, embed_nodes = _embeddings(g, token, position, ids)
    hidden = g.value(token.input[0]).shape[1]
    blocks, final = _walk_stream(g, stream0, embed_nodes, hidden)
    ir = _build(g, token, position, blocks, final, max_positions, Path(path).name)
    _verify(g, ir, blocks, final, ids)
    return ir


def _embedding_gathers(g: OnnxGraph) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """The token lookup (its indices are a graph input, up to layout ops) and the others."""
    tokens, positions = [], []
    for node in g.nodes:
        if not g.is_embedding_gather(node):
            continue
        source = g.producer_of(node.input[1])
        name = node.input[1]
        while source is not None and source.op_type in LAYOUT_OPS:
            name, source = source.input[0], g.producer_of(source.input[0])
        (tokens if name in g.inputs else positions).append(node)
    if len(tokens) != 1:
        extra = (tokens[1:] + positions)[0]
        raise FrontendError(f"{label(extra)}: expected one token embedding lookup (a Gather "
                            f"indexed by a graph input), found {len(tokens)}")
    return tokens[0], positions


def _probe_feeds(g: OnnxGraph, token: onnx.NodeProto, length: int, seed: int):
    ids_input = token.input[1]
    while ids_input not in g.inputs:
        ids_input = g.producer_of(ids_input).input[0]
    vocab = g.table_shape(token.input[0])[0]
    feeds, ids = {}, None
    for name, info in g.inputs.items():
        tensor_type = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        dtype = _INT_TYPES.get(tensor_type.elem_type)
        if dtype is None or len(dims) not in (1, 2) or dims[:-1] not in ([], [None], [1]):
            raise FrontendError(f"graph input {name!r} {dims} is not a [1, seq] integer tensor: "
                                "export a plain forward over input_ids")
        seq = dims[-1] or length
        shape = (1, seq) if len(dims) == 2 else (seq,)
        if name == ids_input:
            ids = np.random.default_rng(seed).integers(0, vocab, seq)
            feeds[name] = ids.reshape(shape).astype(dtype)
        elif "mask" in name:
            feeds[name] = np.ones(shape, dtype)
        elif "position" in name:
            feeds[name] = np.arange(seq).reshape(shape).astype(dtype)
        else:
            raise FrontendError(f"graph input {name!r} is not supported (KV cache or token "
                                "types?): export a plain forward over input_ids")
    if ids.size < 2:
        raise FrontendError(f"graph input {ids_input!r} has a fixed length of {ids.size}")
    return feeds, ids


def _check_causal(g: OnnxGraph) -> None:
    """Every attention core must mask future positions; encoder-only models fail here."""
    cores = [g.node(i) for i in g.data_nodes() if g.node(i).op_type in ("Softmax", "Attention")]
    if not cores:
        raise FrontendError(f"no attention (Softmax or Attention node) in {g.path!r}")
    for node in cores:
        if node.op_type == "Softmax":
            probs = g.value(node.output[0])
            future = np.triu(np.ones(probs.shape[-2:], bool), 1)
            causal = probs.shape[-1] == probs.shape[-2] and np.all(probs[..., future] < 1e-6)
        elif attribute(node, "is_causal", 0):
            causal = True
        else:
            mask = g.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            causal = mask is not None and mask.shape[-1] == mask.shape[-2] and _is_causal(mask)
        if not causal:
            raise FrontendError(f"{label(node)}: attention is not causal; encoder-only "
                                "(bidirectional) models are not supported")


def _is_causal(mask: np.ndarray) -> bool:
    future = np.triu(np.ones(mask.shape[-2:], bool), 1)
    if mask.dtype == bool:
        return bool(np.all(~mask[..., future]) and np.all(mask[..., ~future]))
    return bool(np.all(mask[..., future] < -1e4) and np.all(mask[..., ~future] == 0))


def _embeddings(g: OnnxGraph, token: onnx.NodeProto, position: onnx.NodeProto | None,
                ids: np.ndarray) -> tuple[str, set[int]]:
    """The first residual-stream tensor and the nodes that build it."""
    if not np.array_equal(g.value(token.input[1]).reshape(-1), ids):
        raise FrontendError(f"{label(token)}: token lookup does not read the input ids")
    stream0 = token.output[0]
    if position is not None:
        both = g.descendants(token.output) & g.descendants(position.output)
        first = g.node(min(both)) if both else position
        if first.op_type != "Add":
            raise FrontendError(f"{label(first)}: position embeddings must be added to the "
                                "token embeddings")
        stream0 = first.output[0]
    nodes = g.ancestors(stream0)
    for index in sorted(nodes):
        if g.node(index).op_type not in EMBEDDING_OPS:
            raise FrontendError(f"{label(g.node(index))} in the embeddings is not supported "
                                "(scaled or projected embeddings?)")
    return stream0, nodes


def _stream_members(g: OnnxGraph, tensor: str, width: int) -> tuple[set[str], set[int]]:
    """A residual-stream tensor and its value-preserving copies (reshapes, casts)."""
    members, glue, frontier = {tensor}, set(), [tensor]
    while frontier:
        for index in g.consumers.get(frontier.pop(), []):
            node = g.node(index)
            if index not in glue and g.is_layout(node, width):
                glue.add(index)
                members.add(node.output[0])
                frontier.append(node.output[0])
    return members, glue


class _Region:
    """One residual branch: norm nodes, the normed tensor, and what follows it."""

    def __init__(self, g: OnnxGraph, nodes: set[int], members: set[str], out: str, width: int,
                 where: str):
        self.where, self.out, self.nodes = where, out, nodes
        self.anchor = g.producer_of(out)
        linears = match_linears(g, nodes)
        after = g.descendants([lin.node.output[0] for lin in linears.values()])
        pre = nodes - after - set(linears)
        normed = {trace_back(g, lin.x, width) for lin in linears.values()
                  if lin.x in members or g.producer.get(lin.x) in pre}
        if len(normed) != 1:
            node = g.node(min(nodes))
            raise FrontendError(f"{label(node)} in the {where}: the branch does not start with "
                                "one norm feeding its projections (post-norm is not supported)")
        self.h = normed.pop()
        norm_nodes = g.ancestors(self.h, stop=members)
        for index in sorted(pre - norm_nodes):
            if not g.is_layout(g.node(index), width):
                raise FrontendError(f"{label(g.node(index))} in the {where}: unexpected "
                                    "between the norm and the projections")
        if not norm_nodes:
            raise FrontendError(f"{label(g.node(min(nodes)))} in the {where}: no norm before "
                                "the projections")
        self.x = next(t for i in sorted(norm_nodes) for t in g.node(i).input if t in members)
        self.norm: NormMatch = match_norm(g, norm_nodes, width, f"norm before the {where}")
        self.interior = nodes - pre
        self.is_attention = any(g.node(i).op_type in ("Softmax", "Attention")
                                for i in self.interior)
        self.match: AttentionMatch | MlpMatch | None = None


def _walk_stream(g: OnnxGraph, stream0: str, claimed: set[int], width: int):
    """Split the data path at residual adds into (attention, MLP) pairs and the final head."""
    members, glue = _stream_members(g, stream0, width)
    claimed = claimed | glue
    regions: list[_Region] = []
    while True:
        adds = sorted({i for t in members for i in g.consumers.get(t, [])
                       if g.node(i).op_type == "Add" and i not in claimed
                       and sum(x in members for x in g.node(i).input) == 1
                       and all(x in g.tainted for x in g.node(i).input)})
        if not adds:
            break
        if len(adds) > 1:
            raise FrontendError(f"{label(g.node(adds[1]))}: the residual stream feeds two "
                                "residual adds (parallel attention and MLP is not supported)")
        add = g.node(adds[0])
        branch = next(x for x in add.input if x not in members)
        layer, kind = len(regions) // 2, ("attention", "MLP")[len(regions) % 2]
        region = _Region(g, _branch(g, branch, members, claimed), members, branch, width,
                         f"{kind} of layer {layer}")
        if region.is_attention != (kind == "attention"):
            raise FrontendError(f"{label(add)}: expected the {kind} of layer {layer} before this "
                                "residual add (blocks must be attention then MLP)")
        region.match = (match_attention if region.is_attention else match_mlp)(
            g, region.interior, region.h, width, region.where)
        regions.append(region)
        claimed |= region.nodes | {adds[0]}
        members, glue = _stream_members(g, add.output[0], width)
        claimed |= glue
    if not regions or len(regions) % 2:
        raise FrontendError(f"the residual stream of {g.path!r} has {len(regions)} residual "
                            "branches; expected attention and MLP pairs")
    blocks = [(regions[i], regions[i + 1]) for i in range(0, len(regions), 2)]
    if len(g.outputs) != 1:
        raise FrontendError(f"graph has outputs {g.outputs}; expected only the logits")
    final = _Region(g, _branch(g, g.outputs[0], members, claimed), members, g.outputs[0], width,
                    "LM head")
    check_ops(g, final.interior, LINEAR_OPS, final.where)
    claimed |= final.nodes
    for index in g.data_nodes():
        if index not in claimed:
            raise FrontendError(f"{label(g.node(index))}: on the hidden-state path but outside "
                                "every recognised block")
    return blocks, final


def _branch(g: OnnxGraph, out: str, members: set[str], claimed: set[int]) -> set[int]:
    nodes = g.ancestors(out, stop=members)
    reused = nodes & claimed
    if reused:
        raise FrontendError(f"{label(g.node(min(reused)))}: a block reads hidden states from "
                            "outside its residual branch")
    if not nodes:
        raise FrontendError(f"residual branch {out!r} has no operations")
    return nodes


def _consistent(regions: list[_Region], what: str, values: list):
    for region, value in zip(regions, values):
        if value != values[0]:
            raise FrontendError(f"{label(region.anchor)}: the {region.where} has {what} "
                                f"{value!r}, the first block has {values[0]!r}")
    return values[0]


def _build(g: OnnxGraph, token: onnx.NodeProto, position: onnx.NodeProto | None,
           blocks: list[tuple[_Region, _Region]], final: _Region,
           max_positions: int | None, name: str) -> TransformerIR:
    embed = g.value(token.input[0]).astype(np.float32)
    vocab, hidden = embed.shape
    attns, mlps = [a for a, _ in blocks], [m for _, m in blocks]
    norms = [r for block in blocks for r in block] + [final]
    head = list(match_linears(g, final.interior).values())
    if len(head) != 1 or head[0].bias is not None or head[0].weight.shape != (vocab, hidden):
        raise FrontendError(f"{label(head[0].node if head else g.producer_of(final.out))} in "
                            f"the LM head: expected one bias-free [{vocab}, {hidden}] projection")
    tensors = {"embed.weight": embed}
    offset = 0
    if position is not None:
        indices = g.value(position.input[1]).reshape(-1)
        offset = int(indices[0])
        if not np.array_equal(indices, offset + np.arange(indices.size)) or offset < 0:
            raise FrontendError(f"{label(position)}: position ids are not consecutive")
        tensors["pos_embed.weight"] = g.value(position.input[0]).astype(np.float32)
        table = tensors["pos_embed.weight"].shape[0] - offset
        if max_positions not in (None, table):
            raise FrontendError(f"{label(position)}: the position table holds {table} "
                                f"positions, not max_positions={max_positions}")
        max_positions = table
    ropes = _consistent(attns, "rotary settings", [r.match.rope for r in attns])
    if (ropes is None) == (position is None):
        raise FrontendError(f"{label(attns[0].match.core)}: expected either rotary or learned "
                            "positions")
    gated = _consistent(mlps, "a gated MLP", [r.match.gated for r in mlps])
    activation = _consistent(mlps, "activation", [r.match.activation for r in mlps])
    kind = _consistent(norms, "norm", [r.norm.kind for r in norms])
    arch = ("llama" if ropes and kind == "rms" and gated else
            "opt" if position is not None and activation == "relu" and not gated else
            "gpt2" if position is not None and activation.startswith("gelu") and not gated else
            None)
    if arch is None:
        raise FrontendError(f"{label(attns[0].match.core)}: {kind} norm, {activation} "
                            f"{'gated ' if gated else ''}MLP and "
                            f"{'rotary' if ropes else 'learned'} positions match no supported "
                            "family (llama, opt, gpt2)")
    for i, (attn, mlp) in enumerate(blocks):
        for stem, region in (("attn_norm", attn), ("mlp_norm", mlp)):
            tensors.update(_norm_tensors(f"layers.{i}.{stem}", region.norm))
        tensors.update({f"layers.{i}.{k}": v for k, v in attn.match.params.items()})
        tensors.update({f"layers.{i}.{k}": v for k, v in mlp.match.params.items()})
    tensors.update(_norm_tensors("final_norm", final.norm))
    tied = np.array_equal(head[0].weight, embed)
    if not tied:
        tensors["lm_head.weight"] = head[0].weight
    first = attns[0].match
    config = ModelConfig(
        arch=arch, vocab_size=vocab, hidden_size=hidden, num_layers=len(blocks),
        num_heads=_consistent(attns, "heads", [r.match.num_heads for r in attns]),
        num_kv_heads=_consistent(attns, "kv heads", [r.match.num_kv_heads for r in attns]),
        head_dim=_consistent(attns, "head_dim", [r.match.head_dim for r in attns]),
        intermediate_size=mlps[0].match.params[("up" if gated else "fc1") + ".weight"].shape[0],
        norm=kind, norm_eps=_consistent(norms, "norm epsilon", [r.norm.eps for r in norms]),
        activation=activation, gated_mlp=gated, position="rope" if ropes else "learned",
        rope_theta=ropes[0] if ropes else None, rope_interleaved=bool(ropes and ropes[1]),
        position_offset=offset, max_positions=max_positions, tied_embeddings=tied,
        attention_bias="q.bias" in first.params,
        mlp_bias=("down.bias" if gated else "fc2.bias") in mlps[0].match.params, name=name)
    ir = TransformerIR(config, tensors=tensors, source=g.path)
    try:
        check(ir)
    except ValueError as exc:
        raise FrontendError(f"{label(first.core)}: recognised tensors are inconsistent: "
                            f"{exc}") from exc
    return ir


def _norm_tensors(stem: str, norm: NormMatch) -> dict[str, np.ndarray]:
    found = {f"{stem}.weight": norm.weight}
    if norm.bias is not None:
        found[f"{stem}.bias"] = norm.bias
    return found


def _verify(g: OnnxGraph, ir: TransformerIR, blocks, final: _Region, ids: np.ndarray) -> None:
    """Compare every recognised piece with the reference on the probe's own inputs."""
    cfg = ir.config
    positions = np.arange(ids.size)
    for i, (attn, mlp) in enumerate(blocks):
        t = {k: v.astype(np.float64) for k, v in ir.layer(i).items()}
        for region, stem in ((attn, "attn_norm"), (mlp, "mlp_norm")):
            x = _rows(g, region.x, cfg.hidden_size)
            h = reference.norm(x, t[f"{stem}.weight"], t.get(f"{stem}.bias"), cfg.norm,
                               cfg.norm_eps)
            _agree(g, region.h, h, f"{stem} of layer {i}")
        out, _ = reference.attention(cfg, t, _rows(g, attn.h, cfg.hidden_size), positions)
        _agree(g, attn.out, out, f"attention of layer {i}")
        _agree(g, mlp.out, reference.mlp(cfg, t, _rows(g, mlp.h, cfg.hidden_size)),
               f"MLP of layer {i}")
    _agree(g, final.out, reference.forward(ir, ids), "logits")


def _rows(g: OnnxGraph, name: str, width: int) -> np.ndarray:
    return g.value(name).astype(np.float64).reshape(-1, width)


def _agree(g: OnnxGraph, name: str, computed: np.ndarray, what: str) -> None:
    graph = g.value(name).astype(np.float64)
    if graph.size != computed.size:
        raise FrontendError(f"{label(g.producer_of(name))}: the {what} has shape "
                            f"{graph.shape}, expected {computed.shape}")
    graph = graph.reshape(computed.shape)
    error = np.abs(graph - computed).max() / max(np.abs(graph).max(), 1e-6)
    if not error <= TOLERANCE:
        raise FrontendError(f"{label(g.producer_of(name))}: the {what} computed from the "
                            f"recognised structure differs from the graph (relative error "
                            f"{error:.2e})")
