"""Early exits at export time: choose exit points, train heads, write segments, calibrate budgets.

The front half is cut into SEGMENTS at the exit points (each a valid cut that one computed
tensor crosses, see ``cuts.find_cuts``). Segment ``i`` maps the previous point's tensor (or the
model input) to ``(point tensor, exit head output)``; the last segment ends at the bundle's
cut, so the device sends its point tensor to the server and keeps its head as the
deepest local answer. Segments run on the native engine (``exit<i>.erg``) or on
onnxruntime (``exit<i>.onnx``); the engine itself needs no change.

A model with several inputs (a robot policy's image and joint state), or an input that passes
through a point: each segment also takes, by name, the model inputs its nodes read
(``model_inputs`` in the manifest), and each head reads the model inputs passing through its
point beside the pooled point tensor (``head_inputs``: flattened, concatenated before the first
Gemm): a policy's head sees the joints. A cut crossed by two computed tensors (a skip
connection) is refused.

Heads are small MLPs (spatial average pool to <= 4x4, Flatten, Gemm, Relu, Gemm) trained
by distillation from the fp32 whole model on TRAINING inputs (backbone frozen, features
from onnxruntime). No labels are needed, so any zoo model works. The training inputs
are split: 75% train the heads, 25% (held out) calibrate the thresholds of each named
budget (BranchyNet / DeeR-VLA style: the share of samples leaving at each exit is set
so the average front compute meets the budget with the smallest loss). Reported
figures are on the model's test split.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.utils import Extractor

from edgerun.errors import ConfigError, ExportError, UnsupportedOpError
from edgerun.exporters.cuts import Cut, shapes_of
from edgerun.feeds import Inputs, as_feeds, float32, n_samples

HIDDEN = 32                 # head width: ~10k MACs on an 8x8 map, a few % of the digits front
HEAD_IN_PER_UNIT = 4        # narrow features (an MLP's 64) get a narrower head: width = inputs / 4, >= 8
HEAD_STEPS = {True: 400, False: 1500}  # classification / regression (a regression head needs longer to fit)
POOL_TO = 4                 # heads average-pool a feature map down to at most 4x4
MAX_SIDE_VALUES = 4096     # values per sample a head reads of the model inputs passing through its point
CALIB_SHARE = 0.25          # share of the training inputs held out for threshold calibration
MAX_TRAIN = 4096            # training inputs used at most
AUTO_EXITS = 3              # `--exits auto`: two intermediate exits + the deepest one at the cut
CRITERIA = ("max_prob", "entropy", "consistency")


@dataclass(frozen=True)
class Budget:
    """A named compute budget for the exits.

    Args:
        name: e.g. "fast", chosen at run time with ``--budget``.
        avg_compute: target average front compute, as a fraction of the whole front half.
        peak_exit: deepest exit allowed to answer on confidence (None = any).
        max_loss: accuracy floor, as the largest allowed loss vs no exits on the calibration
            data (classification: disagreement with the whole model; regression: mean abs
            deviation from the whole model's output, in units of its std).
    """

    name: str
    avg_compute: float
    peak_exit: int | None = None
    max_loss: float = 0.01

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"budget name {self.name!r}: use letters, digits, '-' or '_'")
        if not 0 < self.avg_compute <= 1:
            raise ConfigError(f"budget {self.name}: avg_compute is a fraction of the front half in (0, 1], "
                              f"got {self.avg_compute}")
        if self.peak_exit is not None and self.peak_exit < 0:
            raise ConfigError(f"budget {self.name}: peak_exit must be >= 0 or None")
        if not 0 <= self.max_loss < 1:
            raise ConfigError(f"budget {self.name}: max_loss must be in [0, 1), got {self.max_loss}")


DEFAULT_BUDGETS = (
    Budget("fast", 0.25, max_loss=0.03),
    Budget("balanced", 0.45, max_loss=0.01),
    Budget("accurate", 0.7, max_loss=0.003),
)
DEFAULT_BUDGET = "balanced"


def parse_exits(spec: str | int | None) -> int | None:
    """``--exits``: None/"none"/0 -> no exits, "auto" -> AUTO_EXITS, N -> N exits (>= 1, the last at the cut)."""
    if spec is None or spec in ("none", "0", 0):
        return None
    if spec == "auto":
        return AUTO_EXITS
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise ConfigError(f"--exits {spec!r}: use auto, none (or 0) or a number of exits >= 1") from None
    if n < 1:
        raise ConfigError(f"--exits {n}: use auto, none (or 0) or a number of exits >= 1")
    return n


def computed_tensors(c: Cut, inputs: Collection[str] = ()) -> list[str]:
    """The tensors crossing ``c`` that the front computes (not model ``inputs`` passing through)."""
    return [t for t in c.tensors if t not in inputs]


def choose_points(cuts: list[Cut], cut: Cut, n: int, inputs: Collection[str] = ()) -> list[Cut]:
    """``n`` exit points: ``n-1`` cuts inside the front half, spread geometrically by front
    compute (1/3, 1/9, ... of it: early exits are where compute is saved), then ``cut``.
    A point is crossed by one computed tensor; model ``inputs`` may pass through it beside."""
    front = max(cut.front_macs, 1)
    cands = [c for c in cuts if c.index < cut.index and c.front_macs < 0.9 * front and "/" not in c.label
             and "#" not in c.label and len(computed_tensors(c, inputs)) == 1]
    chosen: list[Cut] = []
    for k in range(n - 1, 0, -1):
        target = 3.0 ** (-k)
        free = [c for c in cands if c not in chosen]
        if not free:
            break
        chosen.append(min(free, key=lambda c: abs(c.front_macs / front - target)))
    return sorted(set(chosen), key=lambda c: c.index) + [cut]


# -- heads -------------------------------------------------------------------------
def _pool_kernel(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) != 4 or (shape[2] <= POOL_TO and shape[3] <= POOL_TO):
        return None
    kh, kw = max(1, shape[2] // POOL_TO), max(1, shape[3] // POOL_TO)
    return kh, kw


def pool_features(x: np.ndarray, kernel: tuple[int, int] | None) -> np.ndarray:
    """What the head's AveragePool + Flatten compute (floor mode, no padding)."""
    if kernel is not None:
        kh, kw = kernel
        n, c, h, w = x.shape
        ho, wo = h // kh, w // kw
        x = x[:, :, : ho * kh, : wo * kw].reshape(n, c, ho, kh, wo, kw).mean(axis=(3, 5))
    return x.reshape(len(x), -1).astype(np.float32)


def head_features(point: np.ndarray, kernel: tuple[int, int] | None, side: list[tuple] | tuple = ()) -> np.ndarray:
    """What a head's first Gemm reads: the pooled point tensor, then each model input that passes through the
    point (``side``: ``(array, kernel)`` pairs; a robot policy's joint state beside its image features; an image
    passing through is pooled like a point tensor), flattened, concatenated."""
    f = pool_features(point, kernel)
    if not len(side):
        return f
    return np.concatenate([f] + [pool_features(np.asarray(a, np.float32), k) for a, k in side], axis=1)


def side_inputs(point: Cut, model_inputs: list[str], shapes: dict) -> list[tuple[str, tuple[int, int] | None]]:
    """The model inputs passing through ``point`` that its head reads, each with its pooling kernel (images are
    pooled to <= 4x4 like a point tensor).

    Raises:
        ExportError: one of them is still over MAX_SIDE_VALUES values per sample (a sequence, say).
    """
    side = []
    for name in [n for n in model_inputs if n in point.tensors]:
        kernel = _pool_kernel(shapes[name])
        kh, kw = kernel or (1, 1)
        dims = list(shapes[name][1:])
        if len(dims) == 3:
            dims = [dims[0], dims[1] // kh, dims[2] // kw]
        size = int(np.prod(dims, dtype=np.int64))
        if size > MAX_SIDE_VALUES:
            raise ExportError(f"the model input {name!r} passes through the exit point {point.label} with {size} values "
                              f"per sample (shape {list(shapes[name][1:])}), over the {MAX_SIDE_VALUES} an exit head "
                              "reads beside its point tensor: choose a cut after the model reads it (`--list-cuts`), "
                              "or export without --exits")
        side.append((name, kernel))
    return side


def train_head(feats: np.ndarray, teacher: np.ndarray, classify: bool, seed: int = 0) -> list[np.ndarray]:
    """Fit Gemm-Relu-Gemm on (pooled features -> teacher outputs); returns [W1, b1, W2, b2]."""
    import torch

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(feats)
        mu, sd = x.mean(0), x.std(0) + 1e-3
        t = torch.from_numpy(teacher.astype(np.float32))
        # Keep the head cheap next to the backbone it rides on (unchanged for conv maps: >= 128 inputs).
        hidden = min(HIDDEN, max(8, x.shape[1] // HEAD_IN_PER_UNIT))
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, t.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
        xs = (x - mu) / sd
        for _ in range(HEAD_STEPS[classify]):  # full batch: a few thousand samples, a few hundred inputs
            opt.zero_grad()
            out = net(xs)
            if classify:
                loss = torch.nn.functional.kl_div(out.log_softmax(1), t.softmax(1), reduction="batchmean")
                loss = loss + torch.nn.functional.cross_entropy(out, t.argmax(1))
            else:
                loss = torch.nn.functional.mse_loss(out, t)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    # Fold the input standardization into the first layer: W (x - mu)/sd + b.
    w1 = (net[0].weight.detach() / sd).numpy()
    b1 = (net[0].bias.detach() - (net[0].weight.detach() / sd) @ mu).numpy()
    return [w1.astype(np.float32), b1.astype(np.float32), net[2].weight.detach().numpy().astype(np.float32),
            net[2].bias.detach().numpy().astype(np.float32)]


def head_macs(weights: list[np.ndarray]) -> int:
    return int(weights[0].size + weights[2].size)


def _head_nodes(i: int, src: str, kernel, weights: list[np.ndarray], side: list[tuple] | tuple = ()) -> tuple[list, list, str]:
    p = f"exit{i}_"
    nodes, inits, cur = [], [], src
    if kernel is not None:
        nodes.append(helper.make_node("AveragePool", [cur], [p + "pool"], kernel_shape=list(kernel),
                                      strides=list(kernel), name=p + "pool"))
        cur = p + "pool"
    nodes.append(helper.make_node("Flatten", [cur], [p + "flat"], axis=1, name=p + "flatten"))
    flat = p + "flat"
    if side:  # the model inputs passing through the point join the pooled features (see head_features)
        parts = [flat]
        for j, (name, k) in enumerate(side):
            if k is not None:
                nodes.append(helper.make_node("AveragePool", [name], [f"{p}side{j}_pool"], kernel_shape=list(k),
                                              strides=list(k), name=f"{p}pool_side{j}"))
                name = f"{p}side{j}_pool"
            nodes.append(helper.make_node("Flatten", [name], [f"{p}side{j}"], axis=1, name=f"{p}flatten_side{j}"))
            parts.append(f"{p}side{j}")
        nodes.append(helper.make_node("Concat", parts, [p + "cat"], axis=1, name=p + "concat"))
        flat = p + "cat"
    names = [p + "w1", p + "b1", p + "w2", p + "b2"]
    inits = [numpy_helper.from_array(w, n) for w, n in zip(weights, names)]
    nodes += [
        helper.make_node("Gemm", [flat, names[0], names[1]], [p + "h"], transB=1, name=p + "gemm1"),
        helper.make_node("Relu", [p + "h"], [p + "hr"], name=p + "relu"),
        helper.make_node("Gemm", [p + "hr", names[2], names[3]], [p + "out"], transB=1, name=p + "gemm2"),
    ]
    return nodes, inits, p + "out"


def build_segment(model: onnx.ModelProto, inputs: list[str], point: str, i: int, kernel,
                  weights: list[np.ndarray], side: list[tuple] | tuple = ()) -> onnx.ModelProto:
    """inputs -> (point, exit head output) as one ONNX graph; the head also reads the model inputs ``side``
    (``(name, pooling kernel)`` pairs, see ``side_inputs``).
    With ``side`` (or several ``inputs``) the segment takes only the inputs its nodes read."""
    seg = Extractor(model).extract_model(inputs, [point])
    nodes, inits, out = _head_nodes(i, point, kernel, weights, side)
    seg.graph.node.extend(nodes)
    seg.graph.initializer.extend(inits)
    if side or len(inputs) > 1:
        read = {t for n in seg.graph.node for t in n.input}
        for vi in [v for v in seg.graph.input if v.name not in read]:
            seg.graph.input.remove(vi)
    seg.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["batch", weights[2].shape[0]]))
    seg.graph.name = f"exit{i}_segment"
    seg = onnx.shape_inference.infer_shapes(seg)
    onnx.checker.check_model(seg)
    return seg


# -- data ----------------------------------------------------------------------------
def _ort(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_points(model: onnx.ModelProto, points: list[str], x: Inputs, batch: int = 64) -> dict[str, np.ndarray]:
    """fp32 tensors at ``points`` and the model's output, via onnxruntime."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    shapes = {vi.name: vi for vi in m.graph.value_info}
    for p in points:
        if p not in have:
            m.graph.output.append(shapes[p] if p in shapes else helper.make_empty_tensor_value_info(p))
    s = _ort(m)
    feeds = as_feeds(x, [i.name for i in s.get_inputs()])
    names = [o.name for o in s.get_outputs()]
    chunks = [s.run(None, {k: v[i: i + batch] for k, v in feeds.items()}) for i in range(0, n_samples(x), batch)]
    return {n: np.concatenate([c[k] for c in chunks]) for k, n in enumerate(names)}


def exit_data(src) -> dict[str, np.ndarray | None]:
    """Training inputs (head training + calibration) and test inputs/targets of a zoo model (or of a
    model file's --data: its calibration and held-out samples)."""
    zoo = src.zoo
    if zoo is None:
        raise ExportError("early exits need training inputs to fit the heads on: give the model file's samples "
                          "with --data samples.npz, or export it without --exits")
    custom = getattr(zoo, "exit_data", None)
    if custom is not None:
        return custom()
    x_train = float32(zoo.calib_data(MAX_TRAIN))  # several inputs: {name: array}, every one of them
    x_test, y_test = zoo.eval_data(None)
    return {"x_train": x_train, "x_test": float32(x_test), "y_test": y_test}


def _take(x: Inputs, idx: np.ndarray) -> Inputs:
    """Samples ``idx`` of every input."""
    return x[idx] if isinstance(x, np.ndarray) else {k: v[idx] for k, v in x.items()}


# -- build -----------------------------------------------------------------------------
class _Staged:
    """Bundle-like view of a directory being written (what ``edgerun.exits.Segments`` needs)."""

    def __init__(self, path: Path, entry: dict) -> None:
        self.path, self.manifest = path, {"exits": entry}

    def file(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"bundle being written at {self.path}"


def _value_rows(heads: list[np.ndarray], ref: np.ndarray, classify: bool, *, loss: bool, scale: float = 1.0,
                server: np.ndarray | None = None) -> np.ndarray:
    """(K+1, N): loss vs ``ref`` (calibration) or metric vs labels ``ref`` (test) per exit and server."""
    rows = list(heads) + [server if server is not None else ref]
    if classify:
        ref_cls = ref.argmax(1) if ref.ndim == 2 else ref
        hit = np.stack([r.argmax(1) == ref_cls for r in rows]).astype(np.float64)
        return 1.0 - hit if loss else hit
    return np.stack([np.abs(r - ref.reshape(r.shape)).mean(1) / scale for r in rows])


def _scores(heads: list[np.ndarray], criterion: str) -> np.ndarray:
    from edgerun.exits import scores

    rows = []
    for i, h in enumerate(heads):
        if criterion == "consistency":
            rows.append(np.full(len(h), np.nan, np.float32) if i == 0 else scores(criterion, h, heads[i - 1]))
        else:
            rows.append(scores(criterion, h))
    return np.stack(rows)


def build_exits(traced, cut: Cut, out: Path, n_exits: int, budgets: tuple[Budget, ...] | None = None,
                *, native: bool = True) -> tuple[dict, dict, dict]:
    """Attach exit heads to the front half of ``traced`` and write the segments into ``out``.

    Args:
        traced: the traced model (``pipeline.Traced``); its source must be a zoo model.
        cut: the bundle's cut (the deepest exit sits there).
        out: the bundle directory being written.
        n_exits: number of exits, the last at the cut (see ``parse_exits``).
        budgets: named budgets (default ``DEFAULT_BUDGETS``).
        native: also write ``exit<i>.erg`` for the native engine (skipped with a reason when it
            cannot run a segment).

    Returns:
        ``(files, manifest entry, report entry)``.

    Raises:
        ExportError: the model has no training data or not one 2-D output.
    """
    from edgerun.exits import Segments
    from edgerun.exporters.evaluate import is_regression
    from edgerun.exporters.exits_calib import ExitTable, calibrate, plot

    budgets = tuple(budgets or DEFAULT_BUDGETS)
    model = traced.model
    outs = [o.name for o in model.graph.output]
    shapes = shapes_of(model)
    if len(outs) != 1 or len(shapes[outs[0]]) != 2:
        raise ExportError(f"early exits need one (batch, n) model output; this model has {outs}")
    model_inputs = [i.name for i in model.graph.input]
    computed = computed_tensors(cut, model_inputs)
    if len(computed) != 1:  # the segments chain one computed tensor from exit to exit, and the heads read it
        raise ExportError(f"early exits need a cut that one tensor crosses (model inputs may pass through beside "
                          f"it); {cut.label} crosses {', '.join(computed)}, all computed by the front (a skip "
                          "connection): choose a cut with one (`--list-cuts`), or export without --exits")
    classify = not is_regression(traced.source, shapes[outs[0]])  # a one-value output's softmax is always 1.0
    criterion = "max_prob" if classify else "consistency"
    points = choose_points(traced.cuts, cut, n_exits, model_inputs)
    # Several inputs, or an input passing through a point: each segment takes the model inputs it reads by name
    # and each head the ones passing through its point (manifest: "model_inputs", "head_inputs").
    by_name = len(model_inputs) > 1 or any(len(p.tensors) > 1 for p in points)
    sides = [side_inputs(p, model_inputs, shapes) for p in points]  # before the work: a refusal comes at once
    data = exit_data(traced.source)
    x_all = data["x_train"]
    rng = np.random.default_rng(0)
    perm = rng.permutation(n_samples(x_all))
    n_cal = max(1, int(n_samples(x_all) * CALIB_SHARE))
    x_fit, x_cal = _take(x_all, perm[n_cal:]), _take(x_all, perm[:n_cal])
    feats = run_points(model, [computed_tensors(p, model_inputs)[0] for p in points], x_fit)
    fit_inputs = as_feeds(x_fit, model_inputs)
    teacher = feats[outs[0]]

    files, pts, prev = {}, [], list(model_inputs)
    hmacs_total, native_reason, front = 0, "", max(cut.front_macs, 1)
    for i, p in enumerate(points):
        t = computed_tensors(p, model_inputs)[0]
        side = sides[i]  # the model inputs passing through this point, each with its pooling
        kernel = _pool_kernel(shapes[t])
        w = train_head(head_features(feats[t], kernel, [(fit_inputs[n], k) for n, k in side]), teacher, classify,
                       seed=i)
        seg_inputs = prev + [n for n in model_inputs if n not in prev] if by_name else prev
        seg = build_segment(model, seg_inputs, t, i, kernel, w, side)
        onnx.save(seg, out / f"exit{i}.onnx")
        files[f"exit{i}.onnx"] = {"role": f"exit segment {i} (to {p.label}) + head, fp32, onnxruntime"}
        erg = None
        if native and not native_reason:
            try:
                from edgerun.exporters.erg import write_erg

                write_erg(seg, out / f"exit{i}.erg")
                erg = f"exit{i}.erg"
                files[erg] = {"role": f"exit segment {i} (to {p.label}) + head, fp32, native engine"}
            except UnsupportedOpError as exc:
                native_reason = str(exc)
        hmacs_total += head_macs(w)
        pts.append({"index": i, "label": p.label, "input": prev[0], "tensor": t, "head": f"exit{i}_out",
                    "onnx": f"exit{i}.onnx", "erg": erg, "head_macs": head_macs(w),
                    "backbone_fraction": round(p.front_macs / front, 6),
                    "compute_fraction": round((p.front_macs + hmacs_total) / front, 6)})
        if by_name:
            pts[-1]["model_inputs"] = [v.name for v in seg.graph.input if v.name in model_inputs]
            pts[-1]["head_inputs"] = [n for n, _ in side]
        prev = [t]
    if native_reason:  # all or nothing: the device runs every segment on one engine
        for pt in pts:
            if pt["erg"]:
                files.pop(pt["erg"], None)
                (out / pt["erg"]).unlink(missing_ok=True)
            pt["erg"] = None
    costs = np.array([pt["compute_fraction"] for pt in pts])
    server_cost = float(costs[-1])
    entry = {"criterion": criterion, "cut_tensors": list(cut.tensors), "points": pts,
             "server_compute_fraction": server_cost, "native_reason": native_reason,
             "default_budget": DEFAULT_BUDGET if any(b.name == DEFAULT_BUDGET for b in budgets) else budgets[0].name}

    # Calibrate on the held-out share of the training inputs (fp32 segments, onnxruntime).
    cal_heads = Segments(_Staged(out, entry), "ort").run_all(x_cal)
    cal_ref = run_points(model, [], x_cal)[outs[0]]
    scale = 1.0 if classify else float(cal_ref.std() or 1.0)
    cal = ExitTable(_scores(cal_heads, criterion), _value_rows(cal_heads, cal_ref, classify, loss=True, scale=scale),
                    costs, server_cost)
    entry["budgets"] = {}
    for b in budgets:
        r = calibrate(cal, criterion, b.avg_compute, b.max_loss, b.peak_exit)
        entry["budgets"][b.name] = {"thresholds": r["thresholds"], "avg_compute": b.avg_compute,
                                    "peak_exit": b.peak_exit, "max_loss": b.max_loss,
                                    "budget_met_on_calib": r["budget_met"],
                                    "calib": {k: r[k] for k in ("value", "avg_compute", "local_fraction")}}

    report, curve, marks = _test_report(traced, out, entry, data, classify, criterion, costs, server_cost,
                                        "native" if native and not native_reason else "ort")
    try:
        plot(curve, marks, out / "exits.png", metric=report["metric"],
             title=f"{traced.source.model_id}: early exits at {', '.join(p['label'] for p in pts)} (test split)")
        files["exits.png"] = {"role": "early exits: metric vs average front compute and local share (test split)"}
    except ImportError:
        report["plot"] = "matplotlib is missing: no exits.png (pip install matplotlib)"
    return files, entry, report


def _test_report(traced, out: Path, entry: dict, data: dict, classify: bool, criterion: str, costs, server_cost,
                 engine: str) -> tuple[dict, list, dict]:
    from edgerun.exits import Segments
    from edgerun.exporters.exits_calib import ExitTable, simulate, sweep

    x, y = data["x_test"], data.get("y_test")
    heads = Segments(_Staged(out, entry), engine, max_batch=32).run_all(x, batch=32)
    whole = run_points(traced.model, [], x)[traced.model.graph.output[0].name]
    ref = y if y is not None else (whole.argmax(1) if classify else whole)
    metric = ("top1" if y is not None else "top1_agreement") if classify else "action_mae"
    test = ExitTable(_scores(heads, criterion), _value_rows(heads, ref, classify, loss=False, server=whole),
                     costs, server_cost)
    k = len(heads)
    rep = {"criterion": criterion, "metric": metric, "eval_engine": engine, "n_test": n_samples(x),
           "points": [p["label"] for p in entry["points"]],
           "compute_fraction": [p["compute_fraction"] for p in entry["points"]],
           "metric_no_exits": float(test.value[k].mean()),
           "metric_per_exit": [float(test.value[i].mean()) for i in range(k)],
           "budgets": {}}
    marks = {}
    for name, b in entry["budgets"].items():
        r = simulate(test, criterion, b["thresholds"])
        marks[name] = r
        rep["budgets"][name] = {"avg_front_compute_fraction": round(r["avg_compute"], 4), "metric": r["value"],
                                "local_fraction": r["local_fraction"],
                                "exit_shares": [round(s, 4) for s in r["exit_shares"]],
                                "budget_met_on_calib": b["budget_met_on_calib"]}
    return rep, sweep(test, criterion), marks
