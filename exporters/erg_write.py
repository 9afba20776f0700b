"""Serialisation of lowered engine graphs into ``.erg`` bytes (layout: ``cpp/include/edgerun/ERG.md``).

Used by ``edgerun.exporters.erg.write_erg``; ``read_erg_header`` is a small reader for
tests and tooling.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from edgerun.errors import ExportError, UnsupportedOpError

MAGIC = b"ERGN"
VERSION = 1          # fp32-only files keep version 1 (every reader reads them)
VERSION_QUANT = 2    # files with int8 / int4 weights: version-1 readers refuse them
HEADER_BYTES, TENSOR_BYTES, NODE_BYTES = 128, 96, 176
MAX_DIMS, N_IATTR, N_FATTR, ALIGN = 6, 16, 4, 64
NO_TENSOR = 0xFFFFFFFF
KIND_ACT, KIND_WEIGHT, KIND_INPUT = 0, 1, 2
ACT_NONE, ACT_RELU, ACT_CLIP = 0, 1, 2
FLT_MAX = float(np.finfo(np.float32).max)

# Fixed numbered op codes (cpp/include/edgerun/graph.h). Never renumber.
OP = {
    "Conv": 1, "Gemm": 2, "Add": 3, "Sub": 4, "Mul": 5, "Div": 6, "Relu": 7, "Clip": 8,
    "Sigmoid": 9, "HardSigmoid": 10, "HardSwish": 11, "Silu": 12, "MaxPool": 13,
    "AveragePool": 14, "GlobalAveragePool": 15, "ReduceMean": 16, "Concat": 17,
    "Reshape": 18, "ChannelAffine": 19, "Pad": 20, "LeakyRelu": 21, "Gelu": 22, "Resize": 23,
    "Transpose": 24, "Slice": 25, "Softmax": 26, "Tanh": 27, "Elu": 28, "Softplus": 29, "Mish": 30,
    "PRelu": 31, "LayerNorm": 32, "MatMulAct": 33, "ResizeLinear": 34, "Expand": 35,
}


# ---------------------------------------------------------------------------
# Serialisation (layout: cpp/include/edgerun/ERG.md)
# ---------------------------------------------------------------------------
def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _tensor_table(ctx, inputs: list[str], outputs: list[str]):
    """Assign ids: graph inputs, then weights, then activations in order of first write."""
    names = list(inputs) + list(ctx.weights)
    for n in ctx.nodes:
        names += [o for o in n.outputs if o not in names]
    index = {n: i for i, n in enumerate(names)}
    for n in ctx.nodes:
        for i in n.inputs:
            if i and i not in index:  # "" = an absent optional input (a quantized layer's bias)
                raise ExportError(f"node {n.name!r} reads {i!r}, which no node computes; "
                                  "the ONNX graph is malformed or not topologically sorted")
    for o in outputs:
        if o not in index:
            raise ExportError(f"output {o!r} is not computed by the front half (a constant?); "
                              "pick another tensor")
    return names, index


def _pack_tensor(name_off: int, name_len: int, kind: int, dims: list[int], data_off: int,
                 nbytes: int, dtype: int = 1, group: int = 0) -> bytes:
    if len(dims) > MAX_DIMS:
        raise UnsupportedOpError(f"a tensor has {len(dims)} dims; the native engine supports "
                                 f"{MAX_DIMS}; use `--engine ort`")
    d = list(dims) + [0] * (MAX_DIMS - len(dims))
    rec = struct.pack("<IIBBBBIQQ6q", name_off, name_len, dtype, kind, len(dims), 0, group, data_off,
                      nbytes, *d)
    return rec + bytes(TENSOR_BYTES - len(rec))


def _pack_node(op: int, name_off: int, name_len: int, ids_at: int, n_in: int, n_out: int,
               iattr: list[int], fattr: list[float]) -> bytes:
    ia = [int(v) for v in iattr] + [0] * (N_IATTR - len(iattr))
    fa = [float(v) for v in fattr] + [0.0] * (N_FATTR - len(fattr))
    rec = struct.pack(f"<6I{N_IATTR}q{N_FATTR}f", op, name_off, name_len, ids_at, n_in, n_out, *ia, *fa)
    return rec + bytes(NODE_BYTES - len(rec))


def serialize(ctx, inputs: list[str], outputs: list[str]) -> tuple[bytes, int]:
    names, index = _tensor_table(ctx, inputs, outputs)
    strings = bytearray()
    name_at = {}
    for n in names + [e.name for e in ctx.nodes]:
        if n not in name_at:
            b = n.encode("utf-8")
            name_at[n] = (len(strings), len(b))
            strings += b
    ids = [index[n] for n in inputs] + [index[n] for n in outputs]
    node_recs = []
    for e in ctx.nodes:
        at = len(ids)
        ids += [index[i] if i else NO_TENSOR for i in e.inputs] + [index[o] for o in e.outputs]
        node_recs.append(_pack_node(OP[e.op], *name_at[e.name], at, len(e.inputs), len(e.outputs),
                                    e.iattr, e.fattr))
    blob, offsets = bytearray(), {}
    for n, arr in ctx.weights.items():
        blob += bytes(_align(len(blob)) - len(blob))
        offsets[n] = len(blob)
        blob += arr.tobytes()
    tensor_recs = []
    for n in names:
        if n in ctx.qmeta:  # quantized: raw bytes, logical dims, dtype and group in the record
            dtype, dims, group = ctx.qmeta[n]
            tensor_recs.append(_pack_tensor(*name_at[n], KIND_WEIGHT, dims, offsets[n],
                                            ctx.weights[n].nbytes, dtype, group))
            continue
        if n in ctx.weights:
            arr = ctx.weights[n]
            tensor_recs.append(_pack_tensor(*name_at[n], KIND_WEIGHT, list(arr.shape), offsets[n], arr.nbytes))
            continue
        if n not in ctx.shapes:
            raise ExportError(f"tensor {n!r} has no inferred shape; run onnx shape inference "
                              "on a graph with static non-batch dims")
        kind = KIND_INPUT if n in inputs else KIND_ACT
        tensor_recs.append(_pack_tensor(*name_at[n], kind, ctx.shapes[n], 0, 0))
    tensors_off = HEADER_BYTES
    nodes_off = tensors_off + TENSOR_BYTES * len(tensor_recs)
    ids_off = nodes_off + NODE_BYTES * len(node_recs)
    strings_off = ids_off + 4 * len(ids)
    weights_off = _align(strings_off + len(strings))
    file_bytes = weights_off + len(blob)
    header = MAGIC + struct.pack(
        "<9I9Q", VERSION_QUANT if ctx.qmeta else VERSION, HEADER_BYTES, TENSOR_BYTES, NODE_BYTES, len(tensor_recs), len(node_recs),
        len(inputs), len(outputs), len(ids), file_bytes, tensors_off, nodes_off, ids_off,
        strings_off, len(strings), weights_off, len(blob), 0)
    header += bytes(HEADER_BYTES - len(header))
    body = b"".join(tensor_recs) + b"".join(node_recs) + struct.pack(f"<{len(ids)}I", *ids) + strings
    return header + body + bytes(weights_off - strings_off - len(strings)) + bytes(blob), len(names)


def read_erg_header(path: str | os.PathLike) -> dict:
    """Parse a ``.erg`` header (Python side, for tests and tooling; no validation beyond magic)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:4] != MAGIC:
        raise ExportError(f"{os.fspath(path)!r} is not an engine graph file (bad magic or too short)")
    keys = ["version", "header_bytes", "tensor_bytes", "node_bytes", "n_tensors", "n_nodes",
            "n_inputs", "n_outputs", "n_ids", "file_bytes", "tensors_off", "nodes_off", "ids_off",
            "strings_off", "strings_bytes", "weights_off", "weights_bytes"]
    return dict(zip(keys, struct.unpack_from("<9I9Q", head, 4)))
