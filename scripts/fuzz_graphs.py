"""ONNX models from the graph specs of scripts/fuzz_engine.py (drawn by fuzz_specs.py).

A spec is plain JSON: the input shape (per sample), the batch, whether the batch dim is dynamic,
and a list of layers. ``build_model`` turns any spec into an ONNX model, raising ``Invalid`` when
a layer does not fit the shape it gets (a spec edited by hand, or shrunk to a smaller case).
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
FLOAT_BUDGET = 400_000   # per-sample floats of any tensor in an ordinary case
FUSE_FLOATS = 800_000    # a chain's inner floats (h*w + oh*ow) * cexp above 3 MiB fuses by default


class Invalid(Exception):
    """The spec does not give a valid graph (a layer does not fit its input)."""


# ---------------------------------------------------------------------------
# Building: spec -> ONNX
# ---------------------------------------------------------------------------
class _Builder:
    def __init__(self, spec: dict):
        self.nodes, self.inits, self.n = [], [], 0
        self.shape = list(spec["in"])
        self.cur = "x"
        self.history: list[tuple[str, list[int]]] = []  # (tensor, shape) after each layer

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"  # the separator: "w1" + "3" was "w" + "13" (two initializers, one name)

    def const(self, base: str, a) -> str:
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(a), nm))
        return nm

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, ins, [out], name=out + "n", **attrs))
        return out


def _rng(layer: dict) -> np.random.Generator:
    return np.random.default_rng(layer.get("wseed", 0))


def _act(b: _Builder, x: str, act: dict | None, ch: int | None) -> str:
    if not act:
        return x
    kind = act["op"]
    if kind == "Clip":
        ins = [x, b.const("lo", np.float32(act["lo"])) if act.get("lo") is not None else "",
               b.const("hi", np.float32(act["hi"])) if act.get("hi") is not None else ""]
        while ins[-1] == "":
            ins.pop()
        return b.node("Clip", ins)
    if kind == "Silu":
        s = b.node("Sigmoid", [x])
        return b.node("Mul", [x, s])
    if kind == "PRelu":
        if ch is None:
            raise Invalid("PRelu needs channels")
        slope = _rng(act).uniform(-0.5, 0.5, (ch, 1, 1)).astype(np.float32)
        return b.node("PRelu", [x, b.const("slope", slope)])
    attrs = {k: v for k, v in act.items() if k not in ("op", "wseed")}
    return b.node(kind, [x], **attrs)


def _conv(b: _Builder, x: str, shape: list[int], L: dict) -> tuple[str, list[int]]:
    if len(shape) != 3:
        raise Invalid("conv needs [C, H, W]")
    c, h, w = shape
    g = c if L["g"] == "dw" else L["g"]
    cout = c * L.get("mult", 1) if L["g"] == "dw" else L["cout"]
    if g < 1 or c % g or cout % g:
        raise Invalid(f"group {g} for {c} -> {cout}")
    (kh, kw), (sh, sw), (dh, dw), p = L["k"], L["s"], L["d"], L["p"]
    oh = (h + p[0] + p[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + p[1] + p[3] - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1 or cout * oh * ow > 4 * FLOAT_BUDGET:
        raise Invalid("conv output size")
    r = _rng(L)
    wt = (r.standard_normal((cout, c // g, kh, kw)) / math.sqrt(c // g * kh * kw)).astype(np.float32)
    ins = [x, b.const("w", wt)]
    if L["bias"]:
        ins.append(b.const("b", r.standard_normal(cout).astype(np.float32) * 0.5))
    y = b.node("Conv", ins, kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], pads=p, group=g)
    return _act(b, y, L.get("act"), cout), [cout, oh, ow]


def _pool_out(n, k, s, d, pb, pe, ceil):
    span = n + pb + pe - d * (k - 1) - 1
    if span < 0:
        return 0
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + pb:
        out -= 1
    return out


def _layer(b: _Builder, L: dict) -> None:
    op, x, shape = L["op"], b.cur, b.shape
    if op == "conv":
        y, shape = _conv(b, x, shape, L)
        if L.get("res") and shape == b.shape:
            y = b.node("Add", [y, x])
    elif op == "chain":
        if len(shape) != 3:
            raise Invalid("chain needs [C, H, W]")
        e, s1 = _conv(b, x, shape, {"g": 1, "cout": L["cexp"], "k": [1, 1], "s": [1, 1], "d": [1, 1],
                                    "p": [0, 0, 0, 0], "bias": L["bias"], "act": L["acts"][0], "wseed": L["wseed"]})
        d, s2 = _conv(b, e, s1, {"g": "dw", "k": L["k"], "s": L["s"], "d": L["d"], "p": L["p"],
                                 "bias": L["bias"], "act": L["acts"][1], "wseed": L["wseed"] + 1})
        y, shape = _conv(b, d, s2, {"g": 1, "cout": L["cout"], "k": [1, 1], "s": [1, 1], "d": [1, 1],
                                    "p": [0, 0, 0, 0], "bias": L["bias"], "act": L["acts"][2], "wseed": L["wseed"] + 2})
        if L.get("res") and shape == b.shape:
            y = b.node("Add", [x, y])
    elif op == "act":
        y = _act(b, x, L["act"], shape[0] if len(shape) == 3 else None)
    elif op == "pool":
        if len(shape) != 3:
            raise Invalid("pool needs [C, H, W]")
        k, s, d, p, ceil = L["k"], L["s"], L["d"], L["p"], L["ceil"]
        if any(p[i] >= k[i % 2] for i in range(4)):
            raise Invalid("pads must be below the kernel")
        oh, ow = (_pool_out(shape[1 + i], k[i], s[i], d[i], p[i], p[i + 2], ceil) for i in (0, 1))
        if oh < 1 or ow < 1:
            raise Invalid("pool output size")
        attrs = {"kernel_shape": k, "strides": s, "pads": p, "ceil_mode": ceil, "dilations": d}
        if L["type"] == "AveragePool":
            attrs["count_include_pad"] = L["cip"]
        y, shape = b.node(L["type"], [x], **attrs), [shape[0], oh, ow]
    elif op == "gap":
        if len(shape) != 3:
            raise Invalid("gap needs [C, H, W]")
        y, shape = b.node("GlobalAveragePool", [x]), [shape[0], 1, 1]
    elif op == "bn":
        if len(shape) != 3:
            raise Invalid("bn needs [C, H, W]")
        r, c = _rng(L), shape[0]
        stats = [r.uniform(0.5, 1.5, c), r.standard_normal(c) * 0.2, r.standard_normal(c) * 0.2, r.uniform(0.5, 1.5, c)]
        y = b.node("BatchNormalization", [x] + [b.const("bn", v.astype(np.float32)) for v in stats])
    elif op == "concat":
        y, shape = _concat(b, x, shape, L)
    elif op == "resize":
        y, shape = _resize(b, x, shape, L)
    elif op == "softmax":
        if L["axis"] >= len(shape) + 1:
            raise Invalid("softmax axis")
        y = b.node("Softmax", [x], axis=L["axis"])
    elif op == "transpose":
        if len(L["perm"]) != len(shape) + 1:
            raise Invalid("perm rank")
        y = b.node("Transpose", [x], perm=L["perm"])
        shape = [shape[p - 1] for p in L["perm"][1:]]
    elif op == "slice":
        y, shape = _slice(b, x, shape, L)
    elif op == "pad":
        pads = L["pads"]
        if len(pads) != 2 * (len(shape) + 1):
            raise Invalid("pad rank")
        y = b.node("Pad", [x, b.const("pads", np.array(pads, np.int64)), b.const("pv", np.float32(L["value"]))])
        shape = [n + pads[i + 1] + pads[i + 2 + len(shape)] for i, n in enumerate(shape)]
    elif op == "binary":
        other = L["other"]
        if other == "scalar":
            o = b.const("s", np.float32(L["v"]))
        elif other == "channel" and len(shape) == 3:
            o = b.const("cv", _rng(L).uniform(0.5, 1.5, (shape[0], 1, 1)).astype(np.float32))
        elif other == "bcast":  # a constant over a random subset of the dims (numpy broadcasting)
            keep = L["keep"][-len(shape):]
            cshape = [n if k else 1 for n, k in zip(shape, keep)][L["drop"]:]
            o = b.const("bc", _rng(L).uniform(0.5, 1.5, cshape).astype(np.float32))
        elif other == "gap" and len(shape) == 3:  # x op mean(x) over the plane: [N, C, 1, 1] broadcast
            o = b.node("GlobalAveragePool", [x])
            if L["kind"] == "Div":
                o = b.node("Sigmoid", [o])
        elif other == "self_act":  # x / relu(x) would divide by zero
            o = b.node("Sigmoid" if L["kind"] == "Div" else "Relu", [x])
        else:
            raise Invalid("binary operand")
        y = b.node(L["kind"], [x, o])
    elif op == "se":  # squeeze-excite: x * gate(fc(relu(fc(mean(x)))))
        if len(shape) != 3:
            raise Invalid("se needs [C, H, W]")
        c = shape[0]
        g, gs = b.node("GlobalAveragePool", [x]), [c, 1, 1]
        for i, (co, act) in enumerate(((L["r"], {"op": "Relu"}), (c, None))):
            g, gs = _conv(b, g, gs, {"g": 1, "cout": co, "k": [1, 1], "s": [1, 1], "d": [1, 1], "p": [0, 0, 0, 0],
                                     "bias": True, "act": act, "wseed": L["wseed"] + i})
        g = b.node(L["gate"], [g])
        y = b.node("Mul", [x, g] if L["order"] else [g, x])
    elif op == "reduce":  # ReduceMean / ReduceSum off the batch dim (keepdims keeps the rank)
        axes = [a for a in L["axes"] if a <= len(shape)]
        if not axes or not L["keep"]:
            raise Invalid("reduce axes")  # keepdims=0 would change the rank the next layers expect
        y = b.node(L["kind"], [x, b.const("ra", np.array(axes, np.int64))], keepdims=1)
        shape = [1 if i + 1 in axes else n for i, n in enumerate(shape)]
    elif op == "norm":
        r = _rng(L)
        if L["kind"] == "InstanceNormalization":
            if len(shape) != 3:
                raise Invalid("instance norm needs [C, H, W]")
            group = shape[1:]
        else:
            ax = L["axis"] if L["axis"] < 0 else min(L["axis"], len(shape))
            group = shape[ax:] if ax < 0 else shape[ax - 1:]
        if int(np.prod(group)) == 1:
            # one value per group: 0 / sqrt(eps) exactly, but onnxruntime's rounding noise times
            # 1 / sqrt(eps) = 316 (ReduceSum -> InstanceNormalization gave bias + 1e-3 there)
            raise Invalid("normalizing single values")
        if L["kind"] == "InstanceNormalization":
            sc, bi = r.uniform(0.5, 1.5, shape[0]), r.standard_normal(shape[0])
            y = b.node(L["kind"], [x, b.const("ns", sc.astype(np.float32)), b.const("nb", bi.astype(np.float32))])
        else:
            y = b.node("LayerNormalization", [x, b.const("ns", r.uniform(0.5, 1.5, group).astype(np.float32)),
                                              b.const("nb", r.standard_normal(group).astype(np.float32))], axis=ax)
    elif op == "attn":  # [C, H, W] as C tokens of H*W: softmax(t t^T) t, back to [C, H, W]
        if len(shape) != 3:
            raise Invalid("attn needs [C, H, W]")
        c, hw = shape[0], shape[1] * shape[2]
        t = b.node("Reshape", [x, b.const("rs", np.array([0, c, hw], np.int64))])
        s_ = b.node("MatMul", [t, b.node("Transpose", [t], perm=[0, 2, 1])])
        s_ = b.node("Softmax", [b.node("Mul", [s_, b.const("sc", np.float32(1 / math.sqrt(hw)))])], axis=-1)
        y = b.node("Reshape", [b.node("MatMul", [s_, t]), b.const("rb", np.array([0] + shape, np.int64))])
    elif op == "conv1d":  # [C, H, W] as [C, H*W] through a Conv1d, out as [C', 1, W']
        if len(shape) != 3:
            raise Invalid("conv1d needs [C, H, W]")
        c, w = shape[0], shape[1] * shape[2]
        t = b.node("Reshape", [x, b.const("rs", np.array([0, c, w], np.int64))])
        k, s_, d, p = L["k"], L["s"], L["d"], L["p"]
        ow = (w + p[0] + p[1] - d * (k - 1) - 1) // s_ + 1
        if ow < 1:
            raise Invalid("conv1d size")
        wt = (_rng(L).standard_normal((L["cout"], c, k)) / math.sqrt(c * k)).astype(np.float32)
        t = b.node("Conv", [t, b.const("w1", wt)], kernel_shape=[k], strides=[s_], dilations=[d], pads=p)
        y, shape = b.node("Reshape", [t, b.const("rb", np.array([0, L["cout"], 1, ow], np.int64))]), [L["cout"], 1, ow]
    elif op == "split":  # Split on an axis, the parts concatenated in reverse (a shuffle)
        ax = L["axis"]
        if ax > len(shape) or shape[ax - 1] < 2:
            raise Invalid("split axis")
        first = max(1, min(shape[ax - 1] - 1, L["at"]))
        parts = [b.name("sp"), b.name("sp")]
        b.nodes.append(helper.make_node("Split", [x, b.const("ss", np.array([first, shape[ax - 1] - first], np.int64))],
                                        parts, name=parts[0] + "n", axis=ax))
        y = b.node("Concat", parts[::-1], axis=ax)
    elif op == "gather":  # a constant index off the batch dim: x[:, i] (scalar: drops the dim) or x[:, a::k]
        ax = L["axis"]
        if ax > len(shape) or (L["scalar"] and len(shape) < 2):
            raise Invalid("gather axis")
        n = shape[ax - 1]
        if L["scalar"]:
            idx = np.array(L["i"] % n - (n if L["neg"] else 0), np.int64)
            shape = shape[:ax - 1] + shape[ax:]
        else:
            idx = np.arange(L["i"] % n, n, L["step"], dtype=np.int64)
            shape = shape[:ax - 1] + [len(idx)] + shape[ax:]
        y = b.node("Gather", [x, b.const("gi", idx)], axis=ax)
    elif op == "flatten":
        y, shape = b.node("Flatten", [x], axis=1), [int(np.prod(shape))]
    elif op == "gemm":
        if len(shape) != 1:
            raise Invalid("gemm needs [K]")
        k, n, r = shape[0], L["n"], _rng(L)
        wt = (r.standard_normal((n, k) if L["transB"] else (k, n)) / math.sqrt(k)).astype(np.float32)
        ins = [x, b.const("gw", wt)]
        if L["bias"]:
            ins.append(b.const("gc", r.standard_normal(n if L["bias"] == "row" else 1).astype(np.float32)))
        y = b.node("Gemm", ins, transB=L["transB"], alpha=L["alpha"], beta=L["beta"])
        y, shape = _act(b, y, L.get("act"), None), [n]
    elif op == "matmul":
        k, n, r = shape[-1], L["n"], _rng(L)
        y = b.node("MatMul", [x, b.const("mw", (r.standard_normal((k, n)) / math.sqrt(k)).astype(np.float32))])
        if L["bias"]:
            y = b.node("Add", [y, b.const("mb", r.standard_normal(n).astype(np.float32))])
        y, shape = _act(b, y, L.get("act"), None), shape[:-1] + [n]
    else:
        raise Invalid(f"unknown layer {op}")
    if int(np.prod(shape)) > 4 * FLOAT_BUDGET or min(shape) < 1:
        raise Invalid("tensor size")
    b.cur, b.shape = y, shape
    b.history.append((y, list(shape)))


def _concat(b, x, shape, L):
    ax = L["axis"]
    if ax > len(shape):
        raise Invalid("concat axis")
    if L["kind"] == "convs":
        if len(shape) != 3 or ax != 1:
            raise Invalid("conv branches need [C, H, W] and axis 1")
        outs = []
        for i, (cout, k) in enumerate(L["branches"]):
            y, s = _conv(b, x, shape, {"g": 1, "cout": cout, "k": [k, k], "s": [1, 1], "d": [1, 1],
                                       "p": [k // 2] * 4, "bias": True, "act": {"op": "Relu"}, "wseed": L["wseed"] + i})
            outs.append(y)
        return b.node("Concat", outs, axis=1), [sum(c for c, _ in L["branches"])] + shape[1:]
    y2 = _act(b, x, L["act"], shape[0] if len(shape) == 3 else None)  # x with an activation of itself
    new = list(shape)
    new[ax - 1] = shape[ax - 1] * 2
    return b.node("Concat", [x, y2], axis=ax), new


def _resize(b, x, shape, L):
    if len(shape) != 3:
        raise Invalid("resize needs [C, H, W]")
    sh, sw = L["scales"]
    oh, ow = int(math.floor(shape[1] * np.float32(sh))), int(math.floor(shape[2] * np.float32(sw)))
    if oh < 1 or ow < 1:
        raise Invalid("resize size")
    attrs = {"mode": L["mode"], "coordinate_transformation_mode": L["coord"]}
    if L["mode"] == "nearest":
        attrs["nearest_mode"] = L["nearest_mode"]
    if L["sizes"]:
        ins = [x, "", "", b.const("sz", np.array([oh, ow], np.int64))]
        attrs["axes"] = [2, 3]
    else:
        ins = [x, "", b.const("sc", np.array([1, 1, sh, sw], np.float32))]
    return b.node("Resize", ins, **attrs), [shape[0], oh, ow]


def _slice(b, x, shape, L):
    axes, starts, ends, steps = L["axes"], L["starts"], L["ends"], L["steps"]
    new = list(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        if not 1 <= a <= len(shape):
            raise Invalid("slice axis")
        new[a - 1] = len(range(*slice(s, e, st).indices(shape[a - 1])))
    ins = [x] + [b.const(n, np.array(v, np.int64)) for n, v in (("st", starts), ("en", ends), ("ax", axes), ("sp", steps))]
    return b.node("Slice", ins), new


def build_model(spec: dict):
    """Returns (onnx model, per-sample input shape, per-sample output shape)."""
    b = _Builder(spec)
    for L in spec["layers"]:
        _layer(b, L)
    batch = "N" if spec["dyn"] else spec["batch"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *spec["in"]])
    y = helper.make_tensor_value_info(b.cur, TensorProto.FLOAT, [batch, *b.shape])
    if b.cur == "x":
        raise Invalid("no layers")
    outs = [y]
    if spec.get("extra_out") is not None and len(b.history) > 1:  # an intermediate tensor as a second output
        name, shape = b.history[spec["extra_out"] % (len(b.history) - 1)]
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *shape]))
    g = helper.make_graph(b.nodes, "fuzz", [x], outs, b.inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9), list(spec["in"]), list(b.shape)
