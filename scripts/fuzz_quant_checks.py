"""The checks of ``scripts/fuzz_quant.py`` on one case's engine outputs: bits across
threads / fusion / kernel paths, every node against the numpy reference, weights
within half a quantization step, NaN where fp32 gives NaN."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

import fuzz_quant_ref as ref

REF_TOL = 2e-5        # float64 reference vs fp32 engine, of ||w||_1 ||x||_inf per output
ELEM_TOL = 1e-5       # Relu / Clip / Add / pooling, of the values' magnitude


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    same = a.view(np.uint32) == b.view(np.uint32)
    return bool(np.all(same | (np.isnan(a) & np.isnan(b))))


def _node_ref(node, vals, info, spec):
    """(reference, error scale) of one node from the engine's inputs to it; None: skip."""
    ins = [vals.get(i) for i in node.input]
    meta, name = info["meta"].get(node.name), node.name
    if node.op_type == "Conv":
        prec = info["precisions"][name]
        w = meta["w"]
        s8 = (prec == "int8" and name not in info["depthwise"] and name not in info["fp32_acts"]
              and int(np.prod(w.shape[1:])) >= ref.S8_MIN_K)
        return ref.conv_ref(ins[0], w, meta["b"], meta["stride"], meta["pads"], meta["groups"], prec,
                            spec["gs"], s8, info["rounded"].get(name))
    if node.op_type in ("Gemm", "MatMul"):
        return ref.gemm_ref(ins[0], meta["w"], meta["b"], meta["trans_b"], info["precisions"][name], spec["gs"],
                            info["rounded"].get(name))
    a = ins[0].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if node.op_type == "Relu":
            return np.where(np.isnan(a), np.nan, np.maximum(a, 0)), np.abs(a)
        if node.op_type == "Clip":
            return np.clip(a, 0, 6), np.abs(a)
        if node.op_type == "Add":
            b = ins[1].astype(np.float64)
            return a + b, np.abs(a) + np.abs(b)
        if node.op_type == "GlobalAveragePool":
            return a.mean(axis=(2, 3), keepdims=True), np.abs(a).max(axis=(2, 3), keepdims=True)
        if node.op_type == "Flatten":
            return a.reshape(a.shape[0], -1), np.abs(a).reshape(a.shape[0], -1)
    return None


def check_weights(spec, info) -> list[tuple[str, str]]:
    """Round-to-nearest weights (the reference's) within half a step of the fp32 ones, the
    step computed here from the format (int8: max|row| / 127; int4: max|group| / 7)."""
    fails = []
    for name, prec in info["layers"]:
        if prec == "fp32" or name in info["rounded"]:
            continue
        meta = info["meta"][name]
        w2 = meta["w"].reshape(meta["w"].shape[0], -1) if "groups" in meta else \
            (meta["w"] if meta["trans_b"] else meta["w"].T)
        wq = ref.layer_weight(prec, w2, spec["gs"], None)
        k, gsz = w2.shape[1], (w2.shape[1] if prec == "int8" else spec["gs"])
        pad = np.zeros((w2.shape[0], -(-k // gsz) * gsz), np.float64)
        pad[:, :k] = np.abs(w2)
        step = np.repeat(pad.reshape(len(pad), -1, gsz).max(-1) / (127 if prec == "int8" else 7), gsz, 1)[:, :k]
        bad = np.abs(wq - w2) > (0.5 + 1e-4) * step + 1e-37  # + float32 rounding of w / s and q * s
        if bad.any():
            fails.append(("weights", f"{name} ({prec}): {int(bad.sum())} weights off by more than half a step"))
    return fails


def check_reference(spec, info, outs) -> list[tuple[str, str]]:
    """Every node vs the numpy reference on the engine's own inputs (probe outputs)."""
    vals = {k[len("probe:"):]: v for k, v in outs.items() if k.startswith("probe:")}
    vals["x"] = info["x"]
    vals.update({i.name: numpy_helper.to_array(i) for i in info["model"].graph.initializer})
    fails = []
    for node in info["model"].graph.node:
        got = vals.get(node.output[0])
        if got is None or any(i not in vals for i in node.input if not i.endswith(("_w", "_b", "_lo", "_hi"))):
            continue
        r = _node_ref(node, vals, info, spec)
        if r is None:
            continue
        want, scale = r
        got = got.astype(np.float64).reshape(want.shape)
        nan_in = np.isnan(want)
        if node.op_type == "Relu":  # the engine's Relu maps NaN to 0 (max(v, 0)), fp32 or not
            nan_in = nan_in | np.isnan(scale)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(got - want)
            tol = (REF_TOL if node.op_type in ("Conv", "Gemm", "MatMul") else ELEM_TOL) * np.nan_to_num(scale, posinf=0) + 1e-30
            both_inf = np.isinf(got) & np.isinf(want) & (np.sign(got) == np.sign(want))
        bad = ~nan_in & ~both_inf & ~(err <= tol)
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            bad |= np.isnan(want) & ~np.isnan(got)     # NaN in, finite out: silent garbage
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), bad.shape)
            fails.append((f"ref:{node.op_type}", f"{node.name}: {int(bad.sum())} of {bad.size} off, e.g. at {i} "
                          f"got {got[i]!r} want {want[i]!r} tol {tol[i]:.3g}"))
            break  # later nodes read this node's output
    return fails


def _is_s8(name: str, info: dict) -> bool:
    """Whether Conv ``name`` runs the int8 GEMM (8-bit activations)."""
    w = info["meta"][name]["w"]
    return (info["precisions"][name] == "int8" and name not in info["depthwise"]
            and name not in info["fp32_acts"] and int(np.prod(w.shape[1:])) >= ref.S8_MIN_K)


def _exact(node, info) -> bool:
    """A node whose outputs are the same bits on every path for the same input bits."""
    return node.op_type in ("Relu", "Clip", "Add", "Flatten") or (node.op_type == "Conv" and _is_s8(node.name, info))


def check_threads_and_fusion(outs: dict) -> list[tuple[str, str]]:
    """Within each path: every (threads, fuse) run gives the bits of 1 thread unfused."""
    fails = []
    for name, o in outs.items():
        base = o["1_None"]
        for run, y in o.items():
            if run.startswith("probe:") or run == "fp32" or _same_bits(y, base):
                continue
            diff = np.flatnonzero(~((y == base) | (np.isnan(y) & np.isnan(base))).reshape(-1))
            fails.append((f"bits:{name}:{run}", f"{len(diff)} of {base.size} differ vs 1_None, first at "
                          f"{diff[0]}: {y.reshape(-1)[diff[0]]!r} vs {base.reshape(-1)[diff[0]]!r}"))
    return fails


def check_paths(info, outs) -> list[tuple[str, str]]:
    """Across paths (vs portable): an int8 GEMM Conv (or Relu / Clip / Add) given the same
    input bits gives the same output bits; a net made only of such nodes, the same output."""
    if "portable" not in outs:
        return []
    fails, base = [], outs["portable"]
    inits = {i.name for i in info["model"].graph.initializer}
    all_exact = all(_exact(n, info) for n in info["model"].graph.node)
    for name, o in outs.items():
        if name == "portable":
            continue
        if all_exact and not _same_bits(o["1_None"], base["1_None"]):
            fails.append((f"bits:{name}:path", "an all-int8-GEMM net differs from portable"))
            continue
        for node in info["model"].graph.node:
            if not _exact(node, info):
                continue
            ins = [i for i in node.input if i not in inits]
            get = lambda d, t: info["x"] if t == "x" else d.get("probe:" + t)  # noqa: E731
            if any(get(o, t) is None or get(base, t) is None or not _same_bits(get(o, t), get(base, t)) for t in ins):
                continue
            y, yb = get(o, node.output[0]), get(base, node.output[0])
            if y is not None and yb is not None and not _same_bits(y, yb):
                n_diff = int((~((y == yb) | (np.isnan(y) & np.isnan(yb)))).sum())
                fails.append((f"bits:{name}:node", f"{node.name} ({node.op_type}): same input bits as portable, "
                              f"{n_diff} of {y.size} outputs differ"))
                break
    return fails


def check_case(spec, info, d, results: dict) -> list[tuple[str, str]]:
    """All the case's checks; [(kind, detail)]."""
    fails, outs = [], {}
    for name, res in results.items():
        if isinstance(res, str):
            return [("crash", f"{name}: {res}")]
        if res.get(str(d)):
            fails.append(("error", f"{name}: {res[str(d)]}"))
        f = d / f"out_{name}.npz"
        if f.exists():
            with np.load(f) as z:
                outs[name] = {k: z[k] for k in z.files}
    if fails:
        if spec["input"] == "nan" and all("EdgerunError" in m or "Error" in m for _, m in fails) \
                and len(fails) == len(results):
            return []  # a clear error on NaN input, on every path
        return fails
    fails += check_threads_and_fusion(outs)
    fails += check_paths(info, outs)
    if "amx" in outs and any(k.startswith("probe:") for k in outs["amx"]):
        fails += check_weights(spec, info) + check_reference(spec, info, outs["amx"])
        fp = outs["amx"].get("fp32")
        base = outs["amx"]["1_None"]
        if fp is not None and not np.array_equal(np.isnan(fp), np.isnan(base)):
            fails.append(("nan-mask", f"quantized NaN count {int(np.isnan(base).sum())} vs fp32 {int(np.isnan(fp).sum())}"))
    return fails
