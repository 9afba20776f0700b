"""Random quantized conv nets for ``scripts/fuzz_quant.py``: a JSON-serializable spec per
case (so a failure can be shrunk and replayed), its ONNX model and its input."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GROUPS = (8, 16, 32, 64, 128)  # int4 group sizes drawn


_EDGES = (1, 2, 3, 5, 7, 8, 9, 15, 17, 31, 33, 39, 40, 41, 47, 49, 63, 65, 127, 129, 255, 257, 513)


def _odd_k(rng, lo, hi):
    """A K in [lo, hi] that is not a multiple of 4 most of the time; often a tile edge
    (the int8 GEMM threshold 40, 8 / 16 / 32-row blocks, 16-pixel strips, 64-byte rows)."""
    edges = [e for e in _EDGES if lo <= e <= hi]
    if edges and rng.random() < 0.3:
        return int(rng.choice(edges))
    k = int(rng.integers(lo, max(lo, hi) + 1))
    if k % 4 == 0 and rng.random() < 0.8 and k > 1:
        k -= 1
    return max(k, 1)


def gen_case(rng: np.random.Generator, small: bool = False) -> dict:
    """A random net spec (JSON-serializable): input, layers, quantization; ``small``:
    planes up to 9 x 9 and at most 2e6 multiply-adds a layer (the suite's smoke run)."""
    big = rng.random() < 0.05 and not small
    hw = int(rng.choice([1, 2, 3, 5, 7, 9, 13, 16, 17, 23, 31, 40, 60][:6 if small else None])) if not big \
        else int(rng.integers(64, 90))
    h = hw if rng.random() < 0.6 else max(1, int(hw * rng.uniform(0.5, 1.5)))
    cin = _odd_k(rng, 1, 700 if h * hw <= 64 else (200 if h * hw <= 1024 else 64))
    if big:
        cin = int(rng.integers(8, 24))
    s8only = rng.random() < 0.25  # every Conv on the int8 GEMM: the whole output must match across paths
    if s8only:
        cin = max(cin, 40)
    layers, c, hh, ww = [], cin, h, hw
    budget = 2e6 if small else 6e7  # multiply-adds per layer
    for _ in range(int(rng.integers(1, 6))):
        r = rng.random() * (0.6 if s8only else 1.0)
        px = hh * ww
        cap = int(max(1, min(300, budget / max(1, px * c))))
        if r < 0.45:
            cout = _odd_k(rng, 40 if s8only else 1, max(cap, 40 if s8only else 1))
            s = 2 if rng.random() < 0.2 and hh > 1 else 1
            layers.append({"op": "pw", "cout": cout, "stride": s})
        elif r < 0.6:
            k = int(rng.choice([3, 5])) if min(hh, ww) >= 3 else 1
            g = int(rng.choice([d for d in range(1, 5) if c % d == 0]))
            cout = g * max(1, _odd_k(rng, 1, max(1, min(cap // 9, 100)) // g or 1))
            if s8only:
                g, cout = 1, max(cout, 40)
                k = max(k, 3) if c < 40 else k
            s = int(rng.choice([1, 2]))
            p = int(rng.integers(0, k // 2 + 1))
            layers.append({"op": "conv", "k": k, "cout": cout, "stride": s, "pad": p, "groups": g})
        elif r < 0.75 and c > 1:
            k = int(rng.choice([3, 5]))
            s = int(rng.choice([1, 2]))
            layers.append({"op": "dw", "k": k, "stride": s, "pad": k // 2})
        elif r < 0.9 and px > 1:  # inverted residual: expand, depthwise, project, + skip
            e = _odd_k(rng, max(2, c), max(2, min(4 * c + 8, 300, cap)))
            s = 2 if rng.random() < 0.2 else 1
            layers.append({"op": "block", "exp": e, "k": 3, "stride": s})
        else:
            layers.append({"op": "pw", "cout": _odd_k(rng, 1, cap), "stride": 1})
        layers[-1]["act"] = str(rng.choice(["none", "relu", "relu6"]))
        c, hh, ww = _shape_after(layers[-1], c, hh, ww)
    head = rng.random() < 0.4 and not s8only
    if head:
        layers.append({"op": "head", "pool": bool(rng.random() < 0.5 or c * hh * ww > 4000),
                       "cout": int(rng.integers(1, 40)), "trans_b": bool(rng.random() < 0.7),
                       "matmul": bool(rng.random() < 0.3)})
    precs = ["fp32", "int8", "int4"]
    mix = "int8" if s8only else str(rng.choice(["int8", "int4", "mixed"], p=[0.45, 0.25, 0.3]))
    for l in layers:
        n = 3 if l["op"] == "block" else 1
        l["prec"] = [mix if mix != "mixed" else str(rng.choice(precs)) for _ in range(n)]
        l["zero_rows"] = bool(rng.random() < 0.2)
    return {"seed": int(rng.integers(1 << 30)), "batch": int(rng.integers(1, 4)), "cin": cin,
            "h": h, "w": hw, "layers": layers, "gs": int(rng.choice(GROUPS)),
            "act": "int8" if s8only else str(rng.choice(["int8", "fp32"], p=[0.8, 0.2])),
            "extra_batch": int(rng.choice([0, 0, 1, 3])),
            "rounding": str(rng.choice(["rtn", "gptq"], p=[0.85, 0.15])),
            "input": str(rng.choice(["normal", "shift", "const", "huge", "nan", "zero_pixel", "tiny"],
                                    p=[0.4, 0.15, 0.1, 0.1, 0.1, 0.1, 0.05]))}


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _shape_after(l, c, h, w):
    if l["op"] == "pw":
        return l["cout"], _conv_out(h, 1, l["stride"], 0), _conv_out(w, 1, l["stride"], 0)
    if l["op"] == "conv":
        return l["cout"], _conv_out(h, l["k"], l["stride"], l["pad"]), _conv_out(w, l["k"], l["stride"], l["pad"])
    if l["op"] == "dw":
        return c, _conv_out(h, l["k"], l["stride"], l["pad"]), _conv_out(w, l["k"], l["stride"], l["pad"])
    if l["op"] == "block":
        return c, _conv_out(h, 3, l["stride"], 1), _conv_out(w, 3, l["stride"], 1)
    return l["cout"], 0, 0


class _Builder:
    def __init__(self, seed):
        self.seed, self.nodes, self.inits, self.n = seed, [], [], 0
        self.layers = []   # (name, prec, kind, meta) for every weight layer
        self.nodes_meta = {}

    def rng(self, i):
        return np.random.default_rng([self.seed, i])

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def init(self, name, a):
        self.inits.append(numpy_helper.from_array(np.array(a, np.float32), name))

    def weights(self, i, shape, zero_rows):
        r = self.rng(i)
        k = int(np.prod(shape[1:]))
        w = r.standard_normal(shape).astype(np.float32) / np.sqrt(k)
        if r.random() < 0.3:  # outliers: int4 / int8 scales set by a few values
            m = r.random(w.shape) < 0.01
            w[m] *= 20
        if zero_rows:
            w[r.random(shape[0]) < 0.3] = 0.0
            if len(shape) == 2 or shape[1] * shape[2] * shape[3] > 8:
                flat = w.reshape(shape[0], -1)
                flat[:, : max(1, flat.shape[1] // 3)] = 0.0  # whole int4 groups of zeros
        b = (r.standard_normal(shape[0]) * 0.1).astype(np.float32)
        return w, b

    def conv(self, x, cout, cin, k, s, pad, g, act, prec, zero_rows, li):
        name = self.name("conv")
        w, b = self.weights(li, (cout, cin // g, k, k), zero_rows)
        self.init(name + "_w", w)
        self.init(name + "_b", b)
        y = name + "_y"
        self.nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [y], name=name,
                                           kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, group=g))
        self.layers.append((name, prec))
        self.nodes_meta[name] = {"w": w, "b": b, "stride": s, "pads": [pad] * 4, "groups": g}
        return self.act(y, act)

    def act(self, x, act):
        if act == "none":
            return x
        name = self.name(act)
        y = name + "_y"
        if act == "relu":
            self.nodes.append(helper.make_node("Relu", [x], [y], name=name))
        else:
            self.init(name + "_lo", np.float32(0))
            self.init(name + "_hi", np.float32(6))
            self.nodes.append(helper.make_node("Clip", [x, name + "_lo", name + "_hi"], [y], name=name))
        return y


def build_onnx(spec: dict) -> tuple[onnx.ModelProto, list[tuple[str, str]], dict]:
    """The spec's net as ONNX, its weight layers [(name, prec)] and the weights by layer."""
    b = _Builder(spec["seed"])
    x, c, h, w = "x", spec["cin"], spec["h"], spec["w"]
    for li, l in enumerate(spec["layers"]):
        op, zr = l["op"], l.get("zero_rows", False)
        if op == "pw":
            x = b.conv(x, l["cout"], c, 1, l["stride"], 0, 1, l["act"], l["prec"][0], zr, li)
        elif op == "conv":
            x = b.conv(x, l["cout"], c, l["k"], l["stride"], l["pad"], l["groups"], l["act"], l["prec"][0], zr, li)
        elif op == "dw":
            x = b.conv(x, c, c, l["k"], l["stride"], l["pad"], c, l["act"], l["prec"][0], zr, li)
        elif op == "block":
            skip = x
            e = b.conv(x, l["exp"], c, 1, 1, 0, 1, "relu6", l["prec"][0], zr, 100 + li)
            d = b.conv(e, l["exp"], l["exp"], 3, l["stride"], 1, l["exp"], "relu6", l["prec"][1], zr, 200 + li)
            x = b.conv(d, c, l["exp"], 1, 1, 0, 1, "none", l["prec"][2], zr, 300 + li)
            if l["stride"] == 1:
                name = b.name("add")
                b.nodes.append(helper.make_node("Add", [x, skip], [name + "_y"], name=name))
                x = name + "_y"
            x = b.act(x, l["act"])
        elif op == "head":
            name = b.name("flat")
            if l["pool"]:
                b.nodes.append(helper.make_node("GlobalAveragePool", [x], [name + "_p"], name=name + "p"))
                x, k = name + "_p", c
            else:
                k = c * h * w
            b.nodes.append(helper.make_node("Flatten", [x], [name + "_y"], name=name))
            x = name + "_y"
            gname = b.name("gemm")
            wt, bias = b.weights(400 + li, (l["cout"], k), zr)
            bm = wt if l["trans_b"] and not l.get("matmul") else wt.T
            b.init(gname + "_w", bm)
            b.init(gname + "_b", bias)
            if l.get("matmul"):  # MatMul + Add: lowered to a Gemm with the Add as its bias
                b.nodes.append(helper.make_node("MatMul", [x, gname + "_w"], [gname + "_m"], name=gname))
                b.nodes.append(helper.make_node("Add", [gname + "_m", gname + "_b"], [gname + "_y"], name=gname + "a"))
            else:
                b.nodes.append(helper.make_node("Gemm", [x, gname + "_w", gname + "_b"], [gname + "_y"], name=gname,
                                                transB=int(l["trans_b"])))
            b.layers.append((gname, l["prec"][0]))
            b.nodes_meta[gname] = {"w": bm, "b": None if l.get("matmul") else bias,
                                   "trans_b": l["trans_b"] and not l.get("matmul")}
            x = gname + "_y"
        if op != "head":
            c, h, w = _shape_after(l, c, h, w)
    g = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          ["n", spec["cin"], spec["h"], spec["w"]])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    return onnx.shape_inference.infer_shapes(m), b.layers, b.nodes_meta


def make_input(spec: dict) -> np.ndarray:
    r = np.random.default_rng([spec["seed"], 999])
    shape = (spec["batch"], spec["cin"], spec["h"], spec["w"])
    x = r.standard_normal(shape).astype(np.float32)
    kind = spec["input"]
    if kind == "shift":
        x += 3.0
    elif kind == "const":
        x[:] = np.float32(r.choice([0.0, 1.5, -2.25]))
    elif kind == "huge":
        x *= np.float32(1e6)
    elif kind == "tiny":
        x *= np.float32(1e-30)
    elif kind == "nan":
        x.reshape(-1)[r.integers(0, x.size, max(1, x.size // 50))] = np.nan
    elif kind == "zero_pixel":
        x[:, :, 0, 0] = 0.0
        x[0, :, -1, :] = np.float32(0.75)
    return np.ascontiguousarray(x)
