"""Random graph specs for scripts/fuzz_engine.py: ``random_spec(rng)`` draws one case (the ops,
their attributes and odd sizes); fuzz_graphs.build_model turns it into an ONNX model."""

from __future__ import annotations

import numpy as np

import fuzz_graphs
from fuzz_graphs import FUSE_FLOATS, Invalid, _Builder, _layer


def _odd_channels(r, lo=1, hi=300):
    if r.random() < 0.15 and hi >= 16:  # some multiples of 16: the kernels' full-vector paths
        return 16 * int(r.integers(max(1, lo // 16), hi // 16 + 1))
    c = int(r.integers(lo, hi + 1))
    return c if r.random() < 0.3 else c | 1  # mostly odd: no multiple of 4 / 16


def random_act(r) -> dict | None:
    k = int(r.integers(0, 15))
    if k == 0:
        return None
    table = [
        {"op": "Relu"}, {"op": "Relu"},
        {"op": "Clip", "lo": 0.0, "hi": 6.0},
        {"op": "Clip", "lo": float(r.uniform(-2, 0)), "hi": float(r.uniform(0, 2))},
        {"op": "Clip", "lo": float(r.uniform(-1, 1)), "hi": None},
        {"op": "Clip", "lo": None, "hi": float(r.uniform(-1, 1))},
        {"op": "HardSwish"}, {"op": "Sigmoid"}, {"op": "LeakyRelu", "alpha": float(r.uniform(0, 0.5))},
        {"op": "HardSigmoid", "alpha": float(r.uniform(0.1, 0.3)), "beta": float(r.uniform(0.3, 0.7))},
        {"op": "Tanh"}, {"op": "Silu"}, {"op": "Elu", "alpha": float(r.uniform(0.5, 1.5))},
        {"op": "Gelu", "approximate": ["none", "tanh"][int(r.integers(2))]},
    ]
    a = table[k - 1]
    if r.random() < 0.05:
        a = {"op": "PRelu", "wseed": int(r.integers(1 << 30))}
    return a


def _conv_layer(r, shape) -> dict:
    c, h, w = shape
    kind = r.choice(["dense", "dw", "grouped", "pw"], p=[0.35, 0.3, 0.15, 0.2])
    L = {"op": "conv", "wseed": int(r.integers(1 << 30)), "bias": bool(r.random() < 0.7), "act": random_act(r),
         "res": bool(r.random() < 0.3)}
    if kind == "pw":
        L.update(k=[1, 1], s=[1, 1], d=[1, 1], p=[0, 0, 0, 0])
    else:
        kh = int(r.integers(1, 8))
        kw = kh if r.random() < 0.6 else int(r.integers(1, 8))
        s = int(r.integers(1, 4))
        L["s"] = [s, s] if r.random() < 0.8 else [int(r.integers(1, 4)), int(r.integers(1, 4))]
        L["d"] = [1, 1] if r.random() < 0.7 else [int(r.integers(1, 4)), int(r.integers(1, 4))]
        L["k"] = [kh, kw]
        if r.random() < 0.5:
            L["p"] = [L["d"][0] * (kh - 1) // 2, L["d"][1] * (kw - 1) // 2] * 2
        else:
            L["p"] = [int(v) for v in r.integers(0, 4, 4)]
    if kind == "dw":
        L["g"] = "dw"
        L["mult"] = 1 if r.random() < 0.85 else 2
    elif kind == "grouped":
        divs = [g for g in range(2, min(c, 16) + 1) if c % g == 0] or [1]
        g = int(r.choice(divs))
        L["g"], L["cout"] = g, g * int(r.integers(1, max(2, 96 // g)))
    else:
        L["g"], L["cout"] = 1, _odd_channels(r, 1, 160 if h * w > 400 else 300)
    return L


def _fusable_act(r) -> dict | None:
    """Mostly the activations the lowering folds into a Conv (a chain fuses only then)."""
    if r.random() < 0.2:
        return random_act(r)
    return [None, {"op": "Relu"}, {"op": "Clip", "lo": 0.0, "hi": 6.0},
            {"op": "Clip", "lo": float(r.uniform(-1, 0)), "hi": float(r.uniform(0.1, 3))}][int(r.integers(4))]


def _chain_layer(r, shape, big: bool) -> dict:
    c, h, w = shape
    if r.random() < 0.6:
        kh = kw = int(r.choice([3, 5, 3, 7]))
        s, d = [int(r.choice([1, 2]))] * 2, [1, 1]
        p = [kh // 2] * 4
    else:  # odd geometry: non-square taps, strides to 3, dilation, pads beyond the taps
        kh, kw = int(r.integers(1, 8)), int(r.integers(1, 8))
        s, d = [int(r.integers(1, 4)), int(r.integers(1, 4))], [int(r.integers(1, 3)), int(r.integers(1, 3))]
        p = [int(r.integers(0, kh + 2)), int(r.integers(0, kw + 2)), int(r.integers(0, kh + 2)), int(r.integers(0, kw + 2))]
    cexp = _odd_channels(r, max(c, 8), max(c, 8, 200))
    if big:  # inner floats above the default budget's 3 MiB: fuses without EDGERUN_FUSE_KB
        oh = max(1, (h + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1)
        ow = max(1, (w + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1)
        cexp = max(cexp, FUSE_FLOATS // max(1, h * w + oh * ow) + 1)
    return {"op": "chain", "wseed": int(r.integers(1 << 30)), "cexp": cexp,
            "cout": c if r.random() < 0.6 else _odd_channels(r, 1, 64),
            "k": [kh, kw], "s": s, "d": d, "p": p, "bias": bool(r.random() < 0.8),
            "acts": [_fusable_act(r), _fusable_act(r), None if r.random() < 0.7 else _fusable_act(r)],
            "res": bool(r.random() < 0.6)}


def _pool_layer(r, shape) -> dict:
    t = "MaxPool" if r.random() < 0.5 else "AveragePool"
    kh = int(r.integers(1, 6))
    kw = kh if r.random() < 0.6 else int(r.integers(1, 6))
    s = [int(r.integers(1, 4)), int(r.integers(1, 4))]
    d = [1, 1] if r.random() < 0.7 else [int(r.integers(1, 3)), int(r.integers(1, 3))]
    p = [int(r.integers(0, kh)), int(r.integers(0, kw)), int(r.integers(0, kh)), int(r.integers(0, kw))]
    return {"op": "pool", "type": t, "k": [kh, kw], "s": s, "d": d, "p": p, "ceil": int(r.random() < 0.4),
            "cip": int(r.random() < 0.5)}


def _resize_layer(r) -> dict:
    if r.random() < 0.5:
        f = [int(r.integers(1, 4)), int(r.integers(1, 4))]
        mode = [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"), ("pytorch_half_pixel", "round_prefer_ceil")]
        coord, nm = mode[int(r.integers(3))]
        return {"op": "resize", "mode": "nearest", "scales": [float(v) for v in f], "coord": coord,
                "nearest_mode": nm, "sizes": False}
    sc = [float(np.float32(r.choice([0.5, 1.5, 2.0, 0.75, r.uniform(0.4, 2.6)]))) for _ in range(2)]
    coord = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"][int(r.integers(4))]
    return {"op": "resize", "mode": "linear", "scales": sc, "coord": coord, "sizes": bool(r.random() < 0.3)}


def _extra_layer(r) -> dict:
    """Reductions, norms, attention, Conv1d, Split, Gather."""
    v = r.random()
    if v < 0.2:
        return {"op": "reduce", "kind": str(r.choice(["ReduceMean", "ReduceSum"])), "keep": 1,
                "axes": sorted(int(a) for a in r.choice([1, 2, 3], size=int(r.integers(1, 3)), replace=False))}
    if v < 0.4:
        return {"op": "norm", "kind": str(r.choice(["LayerNormalization", "InstanceNormalization"])),
                "axis": int(r.choice([1, 2, 3, -1, -2])), "wseed": int(r.integers(1 << 30))}
    if v < 0.55:
        return {"op": "attn"}
    if v < 0.7:
        return {"op": "conv1d", "k": int(r.integers(1, 8)), "s": int(r.integers(1, 4)), "d": int(r.integers(1, 3)),
                "p": [int(v) for v in r.integers(0, 4, 2)], "cout": _odd_channels(r, 1, 64), "wseed": int(r.integers(1 << 30))}
    if v < 0.85:
        return {"op": "split", "axis": int(r.integers(1, 4)), "at": int(r.integers(1, 64))}
    return {"op": "gather", "axis": int(r.integers(1, 4)), "scalar": bool(r.random() < 0.4), "i": int(r.integers(0, 64)),
            "neg": bool(r.random() < 0.5), "step": int(r.integers(1, 4))}


def _spatial_layer(r, shape, layers_left) -> dict:
    u = r.random()
    if u < 0.30:
        return _conv_layer(r, shape)
    if u < 0.40:
        return _extra_layer(r)
    if u < 0.50:
        return _chain_layer(r, shape, big=False)
    if u < 0.60:
        return _pool_layer(r, shape)
    if u < 0.65:
        return {"op": "act", "act": random_act(r) or {"op": "Relu"}}
    if u < 0.70:
        return {"op": "bn", "wseed": int(r.integers(1 << 30))}
    if u < 0.76:
        kind = ["convs", "self", "convs"][int(r.integers(3))]
        return {"op": "concat", "kind": kind, "axis": 1 if kind == "convs" else int(r.integers(1, 4)),
                "branches": [[_odd_channels(r, 1, 48), int(r.choice([1, 3, 5]))] for _ in range(int(r.integers(2, 4)))],
                "act": random_act(r) or {"op": "Sigmoid"}, "wseed": int(r.integers(1 << 30))}
    if u < 0.82:
        return _resize_layer(r)
    if u < 0.86:
        return {"op": "softmax", "axis": int(r.integers(1, 4))}
    if u < 0.90:
        perm = [0] + [int(v) + 1 for v in r.permutation(3)]
        return {"op": "transpose", "perm": perm}
    if u < 0.93:
        axes = sorted(int(a) for a in r.choice([1, 2, 3], size=int(r.integers(1, 3)), replace=False))
        starts = [int(r.integers(0, max(1, shape[a - 1] // 2))) for a in axes]
        steps = [int(r.integers(1, 4)) for _ in axes]
        ends = [int(r.integers(s + 1, shape[a - 1] + 2)) for s, a in zip(starts, axes)]
        return {"op": "slice", "axes": axes, "starts": starts, "ends": ends, "steps": steps}
    if u < 0.95:
        lo = -2 if r.random() < 0.3 else 0  # negative pads crop
        return {"op": "pad", "pads": [0] + [int(v) for v in r.integers(lo, 3, 3)] + [0] + [int(v) for v in r.integers(lo, 3, 3)],
                "value": float(r.choice([0.0, 0.5, -1.0]))}
    if u < 0.97:
        return _extra_layer(r)
    if u < 0.985:
        return {"op": "se", "r": int(r.integers(1, 40)), "gate": str(r.choice(["Sigmoid", "HardSigmoid", "HardSwish"])),
                "order": int(r.integers(2)), "wseed": int(r.integers(1 << 30))}
    return {"op": "binary", "kind": str(r.choice(["Add", "Mul", "Sub", "Div"])),
            "other": str(r.choice(["scalar", "channel", "self_act", "bcast", "gap"])),
            "keep": [int(v) for v in r.integers(0, 2, 3)], "drop": int(r.integers(0, 3)),
            "v": float(r.choice([r.uniform(0.5, 2.0), r.uniform(-40, 40)])), "wseed": int(r.integers(1 << 30))}


def _targeted(r, spec: dict) -> None:
    """A layer shaped for one of the engine's special kernels, then maybe an activation."""
    kind = r.choice(["stem", "pw_small", "dw_pair", "dw_s2"])
    conv = {"op": "conv", "wseed": int(r.integers(1 << 30)), "bias": bool(r.random() < 0.8), "act": random_act(r),
            "res": False, "d": [1, 1]}
    if kind == "stem":  # conv-3x3s2-direct: 3x3 stride 2, cin * 9 taps, cout a multiple of 16
        c, h, w = int(r.integers(1, 8)), int(r.integers(1, 131)), int(r.integers(1, 131))
        conv.update(k=[3, 3], s=[2, 2], p=[int(v) for v in r.integers(0, 2, 4)], g=1, cout=16 * int(r.integers(1, 5)))
    elif kind == "pw_small":  # conv-1x1-small: a plane of <= 256 pixels, cout >= 16
        h = int(r.integers(1, 17))
        w = int(r.integers(1, 256 // h + 1))
        c = _odd_channels(r, 1, 300)
        conv.update(k=[1, 1], s=[1, 1], p=[0, 0, 0, 0], g=1, cout=_odd_channels(r, 16, 300))
    else:  # depthwise: two channels per vector (<= 8 columns) or stride 2 read directly
        k = int(r.choice([3, 5]))
        c = _odd_channels(r, 1, 96)
        h = int(r.integers(1, 40))
        w = int(r.integers(1, 9)) if kind == "dw_pair" else int(r.integers(1, 131))
        conv.update(k=[k, k], s=[1, 1] if kind == "dw_pair" else [2, 2], g="dw",
                    p=[k // 2] * 4 if r.random() < 0.5 else [int(v) for v in r.integers(0, k // 2 + 2, 4)])
    spec["in"] = [c, h, w]
    spec["layers"] = [conv]
    if r.random() < 0.3:
        spec["layers"].append({"op": "act", "act": random_act(r) or {"op": "Relu"}})


def random_spec(r: np.random.Generator) -> dict:
    """One random case; layers that do not fit their input are drawn again (a few tries)."""
    family = r.choice(["spatial", "chain", "dense", "targeted"], p=[0.5, 0.15, 0.15, 0.2])
    batch = int(r.integers(1, 4))
    spec = {"batch": batch, "dyn": bool(r.random() < 0.8), "xseed": int(r.integers(1 << 30)), "family": str(family)}
    if family == "dense":
        k = _odd_channels(r, 1, 600)
        spec["in"] = [k] if r.random() < 0.6 else [int(r.integers(1, 20)), k]
        layers = []
        for _ in range(int(r.integers(1, 4))):
            if len(spec["in"]) == 1 and r.random() < 0.6:
                layers.append({"op": "gemm", "n": _odd_channels(r, 1, 700), "transB": int(r.integers(2)),
                               "alpha": float(r.choice([1.0, 0.5, 1.7])), "beta": float(r.choice([1.0, 0.3])),
                               "bias": str(r.choice(["row", "scalar", ""])), "act": random_act(r),
                               "wseed": int(r.integers(1 << 30))})
            else:
                layers.append({"op": "matmul", "n": _odd_channels(r, 1, 700), "bias": bool(r.random() < 0.7),
                               "act": random_act(r), "wseed": int(r.integers(1 << 30))})
        if r.random() < 0.3:
            layers.append({"op": "softmax", "axis": len(spec["in"])})
        spec["layers"] = layers
        return spec
    if family == "targeted":
        _targeted(r, spec)
        return spec
    if family == "chain":
        c = _odd_channels(r, 1, 48)
        h, w = int(r.integers(20, 131)), int(r.integers(20, 131))
        spec["in"] = [c, h, w]
        spec["layers"] = [_chain_layer(r, [c, h, w], big=True)]
        return spec
    c = _odd_channels(r, 1, 64)
    h = int(r.integers(1, 131))
    w = int(r.integers(1, 131)) if r.random() < 0.6 else h
    while c * h * w > fuzz_graphs.FLOAT_BUDGET:
        h, w = max(1, h // 2), max(1, w // 2)
    spec["in"] = [c, h, w]
    layers, b = [], _Builder(spec)
    for _ in range(int(r.integers(1, 5))):
        for _try in range(8):
            L = _spatial_layer(r, b.shape, 0) if len(b.shape) == 3 else {"op": "act", "act": random_act(r) or {"op": "Tanh"}}
            nodes, inits, n, cur, shape = list(b.nodes), list(b.inits), b.n, b.cur, list(b.shape)
            try:
                _layer(b, L)
                layers.append(L)
                break
            except Invalid:
                b.nodes, b.inits, b.n, b.cur, b.shape = nodes, inits, n, cur, shape
    if len(b.shape) == 3 and r.random() < 0.3:
        layers += [{"op": "gap"}, {"op": "flatten"},
                   {"op": "gemm", "n": _odd_channels(r, 1, 100), "transB": 1, "alpha": 1.0, "beta": 1.0, "bias": "row",
                    "act": None, "wseed": int(r.integers(1 << 30))}]
    spec["layers"] = layers
    if r.random() < 0.25:
        spec["extra_out"] = int(r.integers(0, 8))
    return spec
