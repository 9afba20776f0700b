"""ONNX -> engine graph (".erg") converter for the native engine.

The file layout is documented in ``cpp/include/edgerun/ERG.md``; the C++ loader
(``cpp/src/graph.cpp``) validates everything this module writes. Each ONNX op
is lowered by one function registered with ``@_lowers("Op")`` in ``erg_lower.py``
(compute ops) or ``erg_lower_data.py`` (data movement); supporting a new op is one
new function. This module prepares the graph (shapes, constant folding, nodes that
only compute a shape), applies per-layer precisions and writes the file.

Example:
    >>> import onnx
    >>> from edgerun.exporters.erg import check_native_support, write_erg
    >>> model = onnx.load("front.onnx")                      # doctest: +SKIP
    >>> assert not check_native_support(model)               # doctest: +SKIP
    >>> info = write_erg(model, "front.erg")                 # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from edgerun.errors import ExportError, UnsupportedOpError

from edgerun.exporters import erg_lower_data  # noqa: F401 - registers the data-movement lowerings
from edgerun.exporters.erg_lower import _LOWER, _Ctx, _ENode, _Unsupported
from edgerun.exporters.erg_lower_data import _NEAREST_FLOOR  # noqa: F401 - tests sweep its modes
from edgerun.exporters.erg_quant import PREC_CODE, PREC_DTYPE, check_group_size, quantize
from edgerun.exporters.erg_write import (  # noqa: F401 - re-exported format constants
    ACT_CLIP, ACT_NONE, ACT_RELU, ALIGN, FLT_MAX, HEADER_BYTES, KIND_ACT, KIND_INPUT, KIND_WEIGHT,
    MAGIC, MAX_DIMS, N_FATTR, N_IATTR, NO_TENSOR, NODE_BYTES, OP, TENSOR_BYTES, VERSION,
    VERSION_QUANT, read_erg_header, serialize)


# ---------------------------------------------------------------------------
# Preparation: shapes, constant folding, consumers
# ---------------------------------------------------------------------------
def _dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif i == 0:
            out.append(-1)  # the batch dim, set per run by the engine
        else:
            return None
    return out


def _fold_constants(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], list[onnx.NodeProto]]:
    """Initializers and Constant nodes become arrays; nodes with only constant inputs are
    evaluated once here with onnx's reference evaluator. Returns (consts, remaining nodes)."""
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    rest = []
    for node in graph.node:
        ins = [n for n in node.input if n]
        if node.op_type != "Shape" and all(n in consts for n in ins):
            try:
                values = ReferenceEvaluator(node).run(None, {n: consts[n] for n in ins})
            except Exception as exc:  # noqa: BLE001 - surfaced as an ExportError with context
                raise ExportError(
                    f"cannot fold constant node {node.name!r} ({node.op_type}): {exc}; "
                    "simplify the graph before converting") from exc
            consts.update({o: np.asarray(v) for o, v in zip(node.output, values) if o})
        else:
            rest.append(node)
    return consts, rest


def _prepare(model: onnx.ModelProto, extra_outputs: Sequence[str]) -> _Ctx:
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    for i, node in enumerate(g.node):  # synthetic weight names derive from node names
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    consts, nodes = _fold_constants(g)
    shapes, dim0 = {}, {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
            if dims and dims[0] == -1:
                dim0[vi.name] = vi.type.tensor_type.shape.dim[0].dim_param
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for n in node.input:
            consumers.setdefault(n, []).append(node)
    protected = {o.name for o in g.output} | set(extra_outputs)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 20)
    return _Ctx(consts, shapes, consumers, protected, onnx_nodes=nodes, graph=g, opset=opset, dim0=dim0)


# Inputs that only carry a target shape: the engine takes output shapes from the file instead.
_SHAPE_SINKS = {"Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Expand": (1,)}


def _shape_only_nodes(ctx: _Ctx) -> set[int]:
    """ONNX nodes that compute nothing but a shape for a Reshape or Resize (torch writes
    ``Shape -> Slice -> Concat -> Resize(sizes)`` for ``interpolate(size=...)`` and GroupNorm's
    reshape back to ``Shape(x)``): ids of nodes the engine need not run."""
    produced = {o: n for n in ctx.onnx_nodes for o in n.output}
    cand = {id(n) for n in ctx.onnx_nodes if n.op_type == "Shape"}
    grew = True
    while grew:  # forward: nodes fed only by shape nodes and constants
        grew = False
        for n in ctx.onnx_nodes:
            if id(n) in cand or n.op_type in _SHAPE_SINKS:
                continue
            srcs = [produced.get(i) for i in n.input if i and i not in ctx.consts]
            if srcs and all(src is not None and id(src) in cand for src in srcs):
                cand.add(id(n))
                grew = True

    def sink_only(n: onnx.NodeProto) -> bool:
        for o in n.output:
            if o in ctx.protected:
                return False
            for u in ctx.consumers.get(o, []):
                slots = [k for k, i in enumerate(u.input) if i == o]
                if id(u) in cand or (u.op_type in _SHAPE_SINKS and all(k in _SHAPE_SINKS[u.op_type] for k in slots)):
                    continue
                return False
        return True

    shrunk = True
    while shrunk:  # backward: drop any whose value reaches something other than a shape input
        shrunk = False
        for n in ctx.onnx_nodes:
            if id(n) in cand and not sink_only(n):
                cand.discard(id(n))
                shrunk = True
    return cand


def _lower_all(ctx: _Ctx, collect: list | None) -> None:
    ctx.skip |= _shape_only_nodes(ctx)
    for node in ctx.onnx_nodes:
        if id(node) in ctx.skip:
            continue
        fn = _LOWER.get(node.op_type)
        try:
            if fn is None or node.domain not in ("", "ai.onnx"):
                raise _Unsupported("op not implemented by the native engine")
            fn(ctx, node)
        except _Unsupported as exc:
            if collect is None:
                raise UnsupportedOpError(
                    f"the native engine cannot run node {node.name!r} (op {node.op_type}): {exc}; "
                    "run this front half on onnxruntime with `--engine ort`") from None
            collect.append((node.name, node.op_type))


def check_native_support(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """List the nodes the native engine cannot run.

    Args:
        model: the front half as ONNX (after the exporter's passes).

    Returns:
        ``(node_name, op_type)`` per unsupported node; empty when the engine runs it all.
    """
    ctx = _prepare(model, ())
    bad: list[tuple[str, str]] = []
    _lower_all(ctx, bad)
    return bad


# ---------------------------------------------------------------------------
# Per-layer weight precision
# ---------------------------------------------------------------------------
_PREC_SLOT = {"Conv": 10, "Gemm": 1}  # iattr slot "prec" (ERG.md)
_ACT_SLOT = 11  # Conv iattr "act_prec": 1 = fp32 activations on int8 weights (ERG.md)


def _weight_rows(e: _ENode, w: np.ndarray) -> np.ndarray:
    """The weight as [rows = output channels, k]; Gemm's B [K, N] is stored transposed."""
    return w.reshape(w.shape[0], -1) if e.op == "Conv" else np.ascontiguousarray(w.T)


def weight_layers(model: onnx.ModelProto) -> list[dict]:
    """The Conv / Gemm layers whose weights may be quantized, in graph order.

    Returns:
        ``{"name", "op", "rows", "k", "depthwise", "params"}`` per layer (``name`` is the key
        of ``write_erg``'s ``precisions``).

    Raises:
        UnsupportedOpError: the engine cannot run the model at all.
    """
    ctx = _prepare(model, ())
    _lower_all(ctx, None)
    out = []
    for e in ctx.nodes:
        if e.op not in _PREC_SLOT:
            continue
        w2 = _weight_rows(e, ctx.weights[e.inputs[1]])
        group = e.iattr[8] if e.op == "Conv" else 1
        out.append({"name": e.name, "op": e.op, "rows": int(w2.shape[0]), "k": int(w2.shape[1]),
                    "depthwise": bool(e.op == "Conv" and group > 1 and group == w2.shape[0]
                                      and ctx.weights[e.inputs[1]].shape[1] == 1),
                    "params": int(w2.size)})
    return out


def _rounded_weights(e: _ENode, prec: str, w2: np.ndarray, r, group_size: int):
    """(q, scales) of a precomputed data-aware rounding, checked against the layer."""
    if r.prec != prec or r.k != w2.shape[1] or r.q.shape[0] != w2.shape[0] \
            or (prec == "int4" and r.group_size != group_size) \
            or (r.bias is not None and r.bias.shape != (w2.shape[0],)):
        raise ExportError(f"layer {e.name!r}: the rounded weights do not match (precision {r.prec} "
                          f"vs {prec}, k {r.k} vs {w2.shape[1]}, group {r.group_size} vs {group_size}); "
                          "round again with the same precisions and group_size")
    return r.q, r.scales


def _apply_precisions(ctx: _Ctx, precisions: dict[str, str], group_size: int,
                      rounded: dict | None = None) -> None:
    """Replace the weights of the named Conv / Gemm nodes by int8 / int4 + scales (from
    ``rounded`` where given: q, scales and the corrected bias of ``quant_rounding``)."""
    rounded = rounded or {}
    stray = sorted(set(rounded) - {n for n, p in precisions.items() if p != "fp32"})
    if stray:
        raise ExportError(f"rounded weights given for layers not quantized by precisions: {stray[:5]}; "
                          "round with the same precisions you write")
    layers = {e.name: e for e in ctx.nodes if e.op in _PREC_SLOT}
    unknown = sorted(set(precisions) - set(layers))
    if unknown:
        raise ExportError(f"precisions name nodes that are not Conv/Gemm layers of this graph: "
                          f"{unknown[:5]}; use the names from weight_layers(model)")
    for name, prec in precisions.items():
        if prec not in PREC_CODE:
            raise ExportError(f"layer {name!r}: unknown precision {prec!r}; use fp32, int8 or int4")
        if prec == "fp32":
            continue
        e = layers[name]
        w = ctx.weights[e.inputs[1]]
        w2 = _weight_rows(e, w)
        r = rounded.get(name)
        q, sc = quantize(prec, w2, group_size) if r is None else \
            _rounded_weights(e, prec, w2, r, group_size)
        qname, sname = f"{e.name}::W{prec}", f"{e.name}::Wscale"
        ctx.weights[qname] = np.ascontiguousarray(q)
        ctx.qmeta[qname] = (PREC_DTYPE[prec], list(w.shape) if e.op == "Conv" else list(w2.shape),
                            group_size if prec == "int4" else 0)
        ctx.weights[sname] = np.ascontiguousarray(sc, np.float32)
        old = e.inputs[1]
        e.inputs[1] = qname
        e.inputs += [""] * (3 - len(e.inputs)) + [sname]
        slot = _PREC_SLOT[e.op]
        e.iattr += [0] * (slot + 1 - len(e.iattr))
        e.iattr[slot] = PREC_CODE[prec]
        if not any(old in n.inputs for n in ctx.nodes):
            del ctx.weights[old]  # no fp32 copy left behind
        if r is not None and r.bias is not None:
            old_b, e.inputs[2] = e.inputs[2], ctx.weight(f"{e.name}::Bcorr", r.bias)
            if old_b and not any(old_b in n.inputs for n in ctx.nodes):
                del ctx.weights[old_b]


def _apply_fp32_acts(ctx: _Ctx, names: Sequence[str]) -> None:
    """Mark int8 Conv layers whose activations the engine keeps in fp32 (iattr 11)."""
    convs = {e.name: e for e in ctx.nodes if e.op == "Conv"}
    for name in names:
        e = convs.get(name)
        if e is None or (e.iattr + [0] * 11)[_PREC_SLOT["Conv"]] != PREC_CODE["int8"]:
            raise ExportError(f"fp32_acts names {name!r}, which is not an int8 Conv layer of this graph; "
                              "fp32 activations apply to int8 Conv layers (see weight_layers and precisions)")
        e.iattr += [0] * (_ACT_SLOT + 1 - len(e.iattr))
        e.iattr[_ACT_SLOT] = 1


def write_erg(model: onnx.ModelProto, path: str | os.PathLike, *,
              precisions: dict[str, str] | None = None, group_size: int = 32,
              extra_outputs: Sequence[str] = (), rounded: dict | None = None,
              fp32_acts: Sequence[str] = ()) -> dict:
    """Convert an ONNX front half into an engine graph file.

    Args:
        model: the front half (torch.onnx.export output after the exporter's passes).
        path: where to write the ``.erg`` file.
        precisions: ``{layer name: "fp32" | "int8" | "int4"}`` for Conv / Gemm layers
            (names from ``weight_layers``; see ``exporters.quantize_front``). Layers not
            named stay fp32. Any int8 / int4 layer makes the file format version 2.
        group_size: int4 group size along K (even, 2..4096).
        extra_outputs: intermediate tensors to expose as outputs too (kept alive by the
            engine's memory plan; they are never fused away).
        rounded: ``{layer name: quant_rounding.RoundedLayer}`` precomputed data-aware
            rounding (``FrontRounder.sequential(precisions)``) used instead of round to
            nearest for those layers (q, scales and the corrected bias); same file format.
        fp32_acts: int8 Conv layers that run on fp32 activations (weights dequantized per
            run) instead of the engine's int8 GEMM with 8-bit activations: more accurate,
            not faster (``FrontPrecisionConfig.act``).

    Returns:
        ``{"nodes", "tensors", "weight_bytes", "file_bytes", "version", "ops", "fused",
        "inputs", "outputs"}``.

    Raises:
        UnsupportedOpError: a node the engine cannot run (message names op and node).
        ExportError: the graph lacks shapes, an output is not computed, ``precisions``
            names an unknown layer or precision, or ``rounded`` does not match it.
        ConfigError: an invalid ``group_size``.

    Example:
        >>> info = write_erg(onnx.load("front.onnx"), "front.erg")  # doctest: +SKIP
    """
    group_size = check_group_size(group_size)
    ctx = _prepare(model, extra_outputs)
    _lower_all(ctx, None)
    _apply_precisions(ctx, dict(precisions or {}), group_size, rounded)
    _apply_fp32_acts(ctx, list(fp32_acts))
    inits = {i.name for i in ctx.graph.initializer}
    inputs = [i.name for i in ctx.graph.input if i.name not in inits]
    outputs = [o.name for o in ctx.graph.output] + [o for o in extra_outputs
                                                    if o not in {x.name for x in ctx.graph.output}]
    for vi in ctx.graph.input:
        if vi.name in inputs and vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise UnsupportedOpError(f"graph input {vi.name!r} is not float32; the native engine "
                                     "runs fp32 front halves only; use `--engine ort`")
    data, n_tensors = serialize(ctx, inputs, outputs)
    with open(path, "wb") as f:
        f.write(data)
    return {
        "nodes": len(ctx.nodes), "tensors": n_tensors, "weight_bytes": sum(w.nbytes for w in ctx.weights.values()),
        "file_bytes": len(data), "version": VERSION_QUANT if ctx.qmeta else VERSION, "ops": dict(Counter(e.op for e in ctx.nodes)),
        "fused": len(ctx.skip), "inputs": inputs, "outputs": outputs,
        "precisions": {e.name: next((p for p, c in PREC_CODE.items()
                                     if c == (e.iattr + [0] * 11)[_PREC_SLOT[e.op]]), "fp32")
                       for e in ctx.nodes if e.op in _PREC_SLOT},
        "fp32_acts": sorted(fp32_acts),
    }


