"""int8 / int4 weights on the native engine: kernels vs a numpy reference of the same
quantization, vs onnxruntime fp32, portable vs AVX2, zoo intermediates at int8, and
refusal of damaged quantized files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgerun.engine import NativeEngine, OrtEngine
from edgerun.errors import BundleError, EdgerunError, ExportError
from edgerun.exporters import erg
from edgerun.exporters.erg_quant import fake_quantize

torch = pytest.importorskip("torch")
nn = torch.nn

# Same quantized weights (and, for int8 Conv, the same asymmetric 8-bit per-pixel
# activation quantization) in numpy: only fp32 summation order differs -> ~1e-6 of scale.
QUANT_VS_REF_RTOL = 1e-4
# The int8 Conv's integer sums are exact and its epilogue is shared, so portable and
# AVX2 agree bit for bit there; fp32 layers differ in FMA rounding only.
PORTABLE_VS_AVX2_RTOL = 1e-5
# Against the fp32 model (random weights, small nets): int8 weights + 8-bit activations
# ~1% of the output scale; int4 (group 16) ~5-10%.
INT8_VS_FP32_RTOL = 0.05
INT4_VS_FP32_RTOL = 0.25
# Every intermediate of a zoo model with ALL Conv/Gemm layers int8 vs fp32 onnxruntime,
# as relative L2 error ||q - f|| / ||f||. Errors compound with depth: digits-cnn stays
# at ~2%; EfficientNet-Lite0's BN-folded depthwise layers give ~10-30% deep in the net
# (measured; the precision planner keeps those layers fp32 when accuracy matters).
ZOO_INT8_REL_L2 = {"digits": 0.05, "effnet": 0.5}
GROUP = 16


class QNet(nn.Module):
    """Every quantized code path: int8 GEMM conv (grouped, strided, K = 180), small-K int8
    conv (K = 27 and 16 < S8_MIN_K, 1x1), depthwise and Gemm (dequantized). The int8 GEMM
    with K % 4 != 0 is covered by the single-conv reference test (K = 117)."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, padding=1)           # K = 27: fp32 on int8 weights
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 37, 1)                       # 1x1 stride 1: no im2col
        self.gr = nn.Conv2d(37 + 3, 20, 3, stride=2, groups=2)  # grouped, strided
        self.fc = nn.Linear(20 * 7 * 7, 10)

    def forward(self, x):
        y = torch.relu(self.c0(x))
        y = torch.nn.functional.relu6(self.pw(self.dw(y)))
        y = self.gr(torch.cat([y, x], 1))
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def qnet(tmp_path_factory):
    from edgerun.exporters.trace import to_onnx

    torch.manual_seed(0)
    m = QNet().eval()
    with torch.no_grad():
        m.pw.weight[5].zero_()  # an all-zero output channel: its scale must not be 0
    model = to_onnx(m, torch.randn(1, 3, 16, 16))
    d = tmp_path_factory.mktemp("qnet")
    onnx.save(model, d / "fp32.onnx")
    return model, d


def _precisions(model, prec):
    return {l["name"]: prec for l in erg.weight_layers(model)}


def _fake_quant_model(model, prec):
    """The ONNX model with each Conv/Gemm weight replaced by its quantize/dequantize round trip."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        w2 = w.reshape(w.shape[0], -1) if n.op_type == "Conv" or trans_b else w.T
        wq = fake_quantize(prec, w2, GROUP)
        wq = wq.reshape(w.shape) if n.op_type == "Conv" or trans_b else wq.T
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(wq, np.float32), n.input[1]))
    return m


# int8 Conv with K < this runs fp32 on dequantized weights (edgerun::kernels::kS8MinK).
S8_MIN_K = 40


def _conv_s8_ref(x, w, b, stride=1, pad=0, groups=1):
    """numpy reference of the int8 Conv: per-channel int8 weights, per-pixel asymmetric 8-bit
    activations u = rne((x - min) * 255 / (max - min)), x ~ u * (max - min) / 255 + min
    (activations stay fp32 when K < S8_MIN_K)."""
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, co, oh, ow), np.float64)
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        cols = np.stack([xg[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
                         for i in range(kh) for j in range(kw)], 2)       # n, cg, kh*kw, oh, ow
        cols = cols.reshape(n, cg * kh * kw, oh * ow)
        # float32 like the kernel, so round-half cases fall the same way
        cols = cols.astype(np.float32)
        mn = cols.min(axis=1, keepdims=True)
        d = cols.max(axis=1, keepdims=True) - mn
        inv = np.float32(255) / np.maximum(d, np.float32(1e-30))  # kQMinRange
        xs = (d / np.float32(255)).astype(np.float64)
        u = np.clip(np.rint((cols - mn) * inv), 0, 255).astype(np.float64)
        xq = u * xs + mn.astype(np.float64)
        if cols.shape[1] < S8_MIN_K:
            xq = cols.astype(np.float64)
        wg = w[g * (co // groups):(g + 1) * (co // groups)].reshape(co // groups, -1)
        q = fake_quantize("int8", wg)  # = s * q
        out[:, g * (co // groups):(g + 1) * (co // groups)] = \
            np.einsum("ok,nkp->nop", q.astype(np.float64), xq).reshape(n, -1, oh, ow)
    return (out + b[None, :, None, None]).astype(np.float32)


def _rel_max(ref, got):
    return float(np.abs(ref - got).max()) / max(float(np.abs(ref).max()), 1e-6)


def test_int8_conv_matches_numpy_reference_of_same_quantization(tmp_path):
    rng = np.random.default_rng(1)
    for (ci, co, k, s, p, g, hw) in [(3, 16, 3, 1, 1, 1, 12), (16, 37, 1, 1, 0, 1, 9),
                                     (40, 20, 3, 2, 0, 2, 16), (8, 8, 5, 2, 2, 1, 11),
                                     (13, 9, 3, 1, 1, 1, 10), (70, 11, 1, 1, 0, 1, 7)]:
        conv = nn.Conv2d(ci, co, k, stride=s, padding=p, groups=g).eval()
        from edgerun.exporters.trace import to_onnx

        model = to_onnx(conv, torch.randn(1, ci, hw, hw))
        path = tmp_path / "c.erg"
        erg.write_erg(model, path, precisions=_precisions(model, "int8"))
        for shift in (0.0, 3.0):  # 3: most pixels' minimum far from 0 (the min * R term)
            x = (rng.standard_normal((2, ci, hw, hw)) + shift).astype(np.float32)
            got = next(iter(NativeEngine(path, max_batch=2).run(x).values()))
            ref = _conv_s8_ref(x, conv.weight.detach().numpy(),
                               conv.bias.detach().numpy(), s, p, g)
            assert _rel_max(ref, got) <= QUANT_VS_REF_RTOL, (ci, co, k, s, p, g, shift)


@pytest.mark.parametrize("prec", ["int8", "int4"])
@pytest.mark.parametrize("threads", [1, 2])
def test_quantized_net_vs_ort(qnet, prec, threads):
    model, d = qnet
    path = d / f"{prec}.erg"
    info = erg.write_erg(model, path, precisions=_precisions(model, prec), group_size=GROUP)
    assert info["version"] == erg.VERSION_QUANT
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = next(iter(NativeEngine(path, max_batch=4, threads=threads).run(x).values()))
    fp32 = next(iter(OrtEngine(d / "fp32.onnx").run(x).values()))
    limit = INT8_VS_FP32_RTOL if prec == "int8" else INT4_VS_FP32_RTOL
    assert _rel_max(fp32, got) <= limit
    if prec == "int4":  # int4 layers compute with dequantized weights: same as fake-quant fp32
        fq = _fake_quant_model(model, prec)
        ref = OrtEngine.__new__(OrtEngine)
        import onnxruntime as ort

        sess = ort.InferenceSession(fq.SerializeToString(), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert _rel_max(ref, got) <= QUANT_VS_REF_RTOL


def test_weight_bytes_shrink(qnet):
    model, d = qnet
    sizes = {p: erg.write_erg(model, d / f"s_{p}.erg", precisions=_precisions(model, p),
                              group_size=GROUP)["weight_bytes"] for p in ("fp32", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"] / 3


_PROBE = """
import json, sys, numpy as np
from edgerun.engine import NativeEngine
from edgerun import _core
x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
out = next(iter(NativeEngine(sys.argv[1], max_batch=2).run(x).values()))
print(json.dumps({"path": _core.qgemm_path(), "gemm": _core.gemm_path(), "y": out.ravel().tolist()}))
"""


@pytest.mark.parametrize("prec", ["fp32", "int8", "int4"])
def test_portable_and_simd_paths_agree(qnet, prec):
    model, d = qnet
    path = d / f"p_{prec}.erg"
    erg.write_erg(model, path, precisions=_precisions(model, prec), group_size=GROUP)
    outs = {}
    for force in ("0", "1"):
        env = dict(os.environ, EDGERUN_FORCE_PORTABLE=force)
        r = subprocess.run([sys.executable, "-c", _PROBE, str(path)], env=env, capture_output=True,
                           text=True, check=True)
        outs[force] = json.loads(r.stdout.strip().splitlines()[-1])
    assert outs["1"]["path"] == "portable" and outs["1"]["gemm"] == "portable"
    simd, port = np.array(outs["0"]["y"]), np.array(outs["1"]["y"])
    assert _rel_max(simd, port) <= PORTABLE_VS_AVX2_RTOL


# Single int8 Convs with odd shapes for the int8 micro-kernels: K not a multiple of 4,
# M not a multiple of the 4 / 8 tile rows, N not a multiple of the 16 / 48 tile pixels
# (including N < 16), grouped, strided, fused Relu / Clip; (ci, co, k, stride, pad, groups, hw, act).
_ODD_CONVS = [(13, 37, 3, 1, 1, 1, 9, "relu"), (70, 11, 1, 1, 0, 1, 7, None),
              (40, 20, 3, 2, 0, 2, 16, "relu6"), (64, 24, 1, 1, 0, 1, 14, "relu6"),
              (47, 9, 1, 1, 0, 1, 23, None), (41, 5, 1, 1, 0, 1, 3, "relu"),
              (150, 70, 1, 1, 0, 1, 5, "relu6"),  # AMX: 3 k-tiles, row blocks 32 + 32 + 6
              (250, 6, 3, 1, 1, 1, 6, "relu")]  # K = 2250: AVX2's widened weights in 2 k chunks
# Which int8 kernel each environment asks for (a path the CPU lacks falls back to the next).
_QPATH_ENVS = {"default": {}, "no-amx": {"EDGERUN_NO_AMX": "1"}, "no-avx512": {"EDGERUN_NO_AVX512": "1"},
               "no-vnni": {"EDGERUN_NO_VNNI": "1"}, "portable": {"EDGERUN_FORCE_PORTABLE": "1"}}
_QPROBE = """
import json, sys, numpy as np
from edgerun.engine import NativeEngine
from edgerun import _core
rng = np.random.default_rng(4)
ys = []
for path, ci, hw in json.loads(sys.argv[1]):
    x = rng.standard_normal((3, ci, hw, hw)).astype(np.float32)
    x[0, :, 0, 0] = 0.0                    # an all-zero pixel: scale 0
    x[1, :, 1, :] *= 1e3                   # a row of large pixels
    x[2] = np.round(x[2] * 4) / 4          # exact halves after scaling are likely
    for threads in (1, 2):
        ys.append(next(iter(NativeEngine(path, max_batch=3, threads=threads).run(x).values())).ravel().tolist())
print(json.dumps({"path": _core.qgemm_path(), "y": ys}))
"""


def _odd_conv(ci, co, k, s, p, g, act):
    conv = nn.Conv2d(ci, co, k, stride=s, padding=p, groups=g)
    return nn.Sequential(conv, {"relu": nn.ReLU(), "relu6": nn.ReLU6(), None: nn.Identity()}[act]).eval()


def test_int8_kernel_paths_bit_identical_on_odd_shapes(tmp_path):
    """AMX, AVX-512 VNNI, AVX-VNNI, AVX2 and portable int8 Convs give the same bits: exact
    int32 sums and the same epilogue operations; 1 and 2 threads too."""
    from edgerun.exporters.trace import to_onnx

    torch.manual_seed(5)
    specs = []
    for i, (ci, co, k, s, p, g, hw, act) in enumerate(_ODD_CONVS):
        assert ci // g * k * k >= S8_MIN_K  # every case runs the int8 GEMM
        model = to_onnx(_odd_conv(ci, co, k, s, p, g, act), torch.randn(1, ci, hw, hw))
        path = tmp_path / f"odd{i}.erg"
        erg.write_erg(model, path, precisions=_precisions(model, "int8"))
        specs.append((str(path), ci, hw))
    outs = {}
    for name, extra in _QPATH_ENVS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")} | extra
        r = subprocess.run([sys.executable, "-c", _QPROBE, json.dumps(specs)], env=env,
                           capture_output=True, text=True, check=True)
        outs[name] = json.loads(r.stdout.strip().splitlines()[-1])
    assert outs["portable"]["path"] == "portable"
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if all(f in flags for f in ("avx512_vnni", "avx512bw", "avx512vl")):
        assert outs["no-amx"]["path"] == "avx512-vnni"
        assert outs["default"]["path"] == ("amx" if "amx_int8" in flags else "avx512-vnni")
        assert outs["no-avx512"]["path"] in ("avx-vnni", "avx2")
    if "avx2" in flags and "fma" in flags:
        assert outs["no-vnni"]["path"] == "avx2"
    ref = outs["portable"]["y"]
    for name, o in outs.items():
        for i, (a, b) in enumerate(zip(o["y"], ref)):
            assert np.array_equal(np.array(a), np.array(b)), (name, o["path"], _ODD_CONVS[i // 2])
    for a, b in zip(ref[0::2], ref[1::2]):  # 1 vs 2 threads
        assert np.array_equal(np.array(a), np.array(b))


def _zoo_intermediates_int8(traced, tmp_path, limit):
    model = traced.model
    inter = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Add", "Clip", "Relu", "MaxPool")]
    path = tmp_path / "all_int8.erg"
    erg.write_erg(model, path, precisions=_precisions(model, "int8"), extra_outputs=inter)
    onnx_path = tmp_path / "all.onnx"
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend([onnx.ValueInfoProto(name=t) for t in inter if t not in known])
    onnx.save(m, onnx_path)
    x = traced.source.example.numpy().astype(np.float32)
    ref, got = OrtEngine(onnx_path).run(x), NativeEngine(path, max_batch=1).run(x)
    worst = 0.0
    for t in inter:
        err = float(np.linalg.norm(got[t] - ref[t]) / max(np.linalg.norm(ref[t]), 1e-12))
        worst = max(worst, err)
        assert err <= limit, f"{t}: relative L2 error {err:.3f} > {limit}"
    return worst


def test_digits_every_intermediate_int8(digits_traced, tmp_path):
    _zoo_intermediates_int8(digits_traced, tmp_path, ZOO_INT8_REL_L2["digits"])


@pytest.mark.slow
def test_effnet_every_intermediate_int8(effnet_traced, tmp_path):
    _zoo_intermediates_int8(effnet_traced, tmp_path, ZOO_INT8_REL_L2["effnet"])


# --------------------------------------------------------------------------- damaged files
def _tensor_records(path):
    h = erg.read_erg_header(path)
    data = bytearray(path.read_bytes())
    recs = []
    for i in range(h["n_tensors"]):
        off = h["tensors_off"] + i * h["tensor_bytes"]
        no, nl, dtype = struct.unpack_from("<IIB", data, off)
        s = h["strings_off"] + no
        recs.append((off, data[s:s + nl].decode(), dtype))
    return data, recs


@pytest.mark.parametrize("damage", ["version1", "dtype", "group", "size", "scale", "prec_attr"])
def test_damaged_int8_file_is_refused(qnet, tmp_path, damage):
    model, _ = qnet
    path = tmp_path / "q.erg"
    erg.write_erg(model, path, precisions=_precisions(model, "int4"), group_size=GROUP)
    data, recs = _tensor_records(path)
    q_off = next(off for off, _, dt in recs if dt == 3)
    if damage == "version1":      # an int4 tensor in a file claiming version 1
        data[4:8] = struct.pack("<I", 1)
    elif damage == "dtype":
        data[q_off + 8] = 9
    elif damage == "group":
        struct.pack_into("<I", data, q_off + 12, 7)
    elif damage == "size":
        struct.pack_into("<Q", data, q_off + 24, struct.unpack_from("<Q", data, q_off + 24)[0] - 1)
    elif damage == "scale":       # a negative scale
        s_off = next(off for off, n, _ in recs if n.endswith("::Wscale"))
        h = erg.read_erg_header(path)
        woff = h["weights_off"] + struct.unpack_from("<Q", data, s_off + 16)[0]
        struct.pack_into("<f", data, woff, -1.0)
    else:                         # node precision slot disagrees with the weight dtype
        h = erg.read_erg_header(path)
        node0 = h["nodes_off"]
        struct.pack_into("<q", data, node0 + 24 + 8 * 10, 1)
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt"):
        NativeEngine(path)


def test_old_reader_refuses_quantized_version(qnet, tmp_path):
    """A version-2 file is refused by a reader that only knows version 1 (simulated:
    the same check with the version bumped past what this reader knows)."""
    model, _ = qnet
    path = tmp_path / "q.erg"
    erg.write_erg(model, path, precisions=_precisions(model, "int8"))
    assert erg.read_erg_header(path)["version"] == 2
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 3)
    path.write_bytes(bytes(data))
    with pytest.raises(EdgerunError, match="version 3"):
        NativeEngine(path)


# --------------------------------------------------------------------------- planner
def test_planner_measures_sensitivity_and_meets_budget(digits_traced):
    from edgerun.exporters import zoo
    from edgerun.exporters.cuts import resolve_cut
    from edgerun.exporters.quantize_front import FrontPrecisionConfig, plan_front_precision
    from edgerun.exporters.split import split

    front, _ = split(digits_traced.model, resolve_cut(digits_traced.cuts, "down"))
    calib = zoo.load("digits-cnn").calib_data(16).astype(np.float32)
    full = plan_front_precision(front, calib, FrontPrecisionConfig("int8"))
    assert set(full.precisions.values()) == {"int8"}
    assert all(0 < s["int8"] < s["int4"] for s in full.sensitivity.values())
    fp32 = plan_front_precision(front, calib, FrontPrecisionConfig("fp32"))
    budget = (fp32.arena_bytes + (fp32.weight_bytes + full.weight_bytes) / 2) / 2**20
    auto = plan_front_precision(front, calib, FrontPrecisionConfig("auto", 32, budget))
    assert auto.device_bytes <= budget * 2**20
    assert "fp32" in auto.precisions.values() and "int8" in auto.table()
    with pytest.raises(ExportError, match="smallest reachable"):
        plan_front_precision(front, calib, FrontPrecisionConfig("auto", 32, fp32.arena_bytes / 2**20))


def test_int8_convs_on_fp32_activations_compute_fp32_on_the_int8_weights(tmp_path):
    """``fp32_acts`` (``--front-act fp32``): an int8 Conv skips the int8 GEMM and its run-time
    activation quantization; it matches onnxruntime fp32 on the dequantized weights to fp32
    rounding, while the default int8 GEMM carries the 8-bit activation error."""
    from edgerun.exporters.trace import to_onnx

    torch.manual_seed(6)
    for i, (ci, co, k, s, p, g, hw, act) in enumerate(_ODD_CONVS):
        model = to_onnx(_odd_conv(ci, co, k, s, p, g, act), torch.randn(1, ci, hw, hw))
        names = [l["name"] for l in erg.weight_layers(model)]
        fq = tmp_path / f"fq{i}.onnx"
        onnx.save(_fake_quant_model(model, "int8"), fq)
        x = np.random.default_rng(i).standard_normal((2, ci, hw, hw)).astype(np.float32)
        ref = next(iter(OrtEngine(fq).run(x).values()))
        errs = {}
        for acts in ((), names):
            path = tmp_path / f"a{i}_{len(acts)}.erg"
            info = erg.write_erg(model, path, precisions=_precisions(model, "int8"), fp32_acts=acts)
            assert info["fp32_acts"] == sorted(acts)
            eng = NativeEngine(path, max_batch=2)
            kinds = [st["kernel"] for st in eng.profile_layers(x, runs=1, warmup=0) if st["op"] == "Conv"]
            assert kinds == (["conv-w8"] if acts else ["conv-s8"]), kinds
            errs[len(acts)] = _rel_max(ref, next(iter(eng.run(x).values())))
        assert errs[len(names)] <= QUANT_VS_REF_RTOL, (_ODD_CONVS[i], errs)
        assert errs[0] > 10 * errs[len(names)], (_ODD_CONVS[i], errs)  # 8-bit activations: visibly worse


def test_fp32_acts_must_name_int8_convs(qnet, tmp_path):
    model, _ = qnet
    layers = erg.weight_layers(model)
    conv = next(l["name"] for l in layers if l["op"] == "Conv" and not l["depthwise"])
    with pytest.raises(ExportError, match="not an int8 Conv"):  # fp32 weights: nothing to keep fp32
        erg.write_erg(model, tmp_path / "a.erg", fp32_acts=[conv])
    with pytest.raises(ExportError, match="not an int8 Conv"):
        erg.write_erg(model, tmp_path / "b.erg", precisions=_precisions(model, "int8"), fp32_acts=["no_such_layer"])
