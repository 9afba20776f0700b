"""Stage 1 of export: a torch model -> one clean ONNX graph.

torch's dynamo exporter (with its onnxscript optimizer) folds BatchNorm into
the preceding Conv and zero Pad into Conv pads; we then infer every
intermediate shape and check the graph is topologically sorted, so the cut
finder and the converters downstream can rely on both. Attention is kept batch
first for the native engine (``attention_trace``, ``pick_transpose``,
``folded_transpose``): the same computation, with the batch the first dim of
every tensor.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch.nn.parameter import is_lazy

from edgerun.errors import ExportError
from edgerun.exporters.as_strided import fold_identity_gathers
from edgerun.exporters.attention_trace import batch_first_attention
from edgerun.exporters.folded_transpose import fold_merged_transposes
from edgerun.exporters.pick_transpose import fold_batch_transposes

OPSET = 20
BATCH_DIM = "batch"


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _check_runs_batched(module: torch.nn.Module, examples: tuple[torch.Tensor, ...]) -> list[str] | None:
    """Run the model eagerly on its example(s), and on two examples stacked, before tracing it.

    A model that fails on its own example (a channel mismatch, say) failed deep in the exporter
    with a message cut at 400 characters and advice about control flow; one whose example has no
    batch dimension traced, then failed in onnxruntime. Both now say what is wrong.
    """
    shapes = ", ".join(str(tuple(e.shape)) for e in examples)
    scalar = next((i for i, e in enumerate(examples) if e.dim() == 0), None)
    if scalar is not None:
        which = "the example input is" if len(examples) == 1 else f"example input {scalar} is"
        raise ExportError(f"{which} a scalar; give each input with the batch dimension first, "
                          "e.g. torch.randn(1, C, H, W)")
    if any(e.shape[0] == 0 for e in examples):  # torch's exporter said only "0 not in range [1, 1024]"
        raise ExportError(f"the example input holds no sample (shape {shapes}): give one or more, batch dimension "
                          "first, e.g. torch.randn(1, C, H, W)")
    if len({e.shape[0] for e in examples}) > 1:
        raise ExportError(f"the example inputs have different batch sizes (shapes {shapes}); each input's first "
                          "dimension is the batch: give every input the same first dimension")
    state = _state(module)
    try:  # the model is put back whatever its runs here did to its buffers
        try:
            with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # a print in forward(): not in `--json`
                out = module(*examples)
        except Exception as exc:  # the model's own error, whatever its type
            todo = _dtype_hint(module, examples) or "make the example what forward() takes, batch dimension first"
            raise ExportError(f"the model fails on its own example input{'s' if len(examples) > 1 else ''} (shape "
                              f"{shapes}): {type(exc).__name__}: {_first_line(exc)}; {todo}") from exc
        _check_stateless(module, state)
        names, outs = _outputs(out)
        two = [torch.cat([e, e]) for e in examples]
        try:
            with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
                got_shapes = [tuple(t.shape) for t in _outputs(module(*two))[1]]
            got = f"gave shape{'s' if len(got_shapes) > 1 else ''} {', '.join(map(str, got_shapes))}"
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
            got_shapes, got = None, f"failed: {type(exc).__name__}: {_first_line(exc, 160)}"
        if got_shapes is None or any(sh[:1] != (2 * examples[0].shape[0],) for sh in got_shapes):
            # a forward() that flattens the batch away (x.view(1, -1), x.flatten()) was told to add a batch
            # dimension to an example that had one
            stacked = ", ".join(str(tuple(t.shape)) for t in two)
            raise ExportError(f"two examples stacked (shape {stacked}) did not give two answers ({got}): the example "
                              "input's first dimension must be the batch (add one: example.unsqueeze(0)), and "
                              "forward() must keep it in every output (x.flatten(1) or x.view(x.size(0), -1), not "
                              "x.flatten() or x.view(1, -1))")
        _check_samples_alone(module, examples, outs)
        return names
    finally:
        _restore(module, state)


def _check_samples_alone(module: torch.nn.Module, examples: tuple[torch.Tensor, ...],
                         outs: list[torch.Tensor]) -> None:
    """Refuse a forward() whose answer for one sample depends on the others in its batch (``x - x.mean()``,
    ``x / x.std()`` over the whole tensor, batch included).

    Such a model exported and verified, and its answers then moved with whatever else was in the batch: the
    server batches requests of several devices (``--max-batch``), and the export measured it in batches.
    The first example sample is run beside a sample of zeros; its answer must not change.
    """
    first = [e[:1] for e in examples]
    try:
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            beside = _outputs(module(*[torch.cat([e, torch.zeros_like(e)]) for e in first]))[1]
    except Exception:  # noqa: BLE001 - zeros outside what the model takes (ids, masks): nothing to compare
        return
    for i, (alone, mixed) in enumerate(zip(outs, beside)):
        a, m = alone[:1].double(), mixed[:1].double()
        if a.shape != m.shape:
            continue
        ok = torch.isfinite(a) & torch.isfinite(m)
        scale = float(a[ok].abs().max()) if bool(ok.any()) else 0.0
        diff = float((a[ok] - m[ok]).abs().max()) if bool(ok.any()) else 0.0
        if diff > 1e-3 * scale + 1e-5 or not torch.equal(torch.isfinite(a), torch.isfinite(m)):
            which = "answer" if len(outs) == 1 else f"output {i}"
            raise ExportError(f"forward() mixes the samples of a batch: the example's {which} changed by {diff:.3g} "
                              "when another sample was stacked beside it, and the server batches requests of "
                              "several devices together; compute each sample alone (e.g. normalise over the "
                              "sample's own dims, x.mean(dim=tuple(range(1, x.dim())), keepdim=True), not x.mean())")


@dataclass
class _State:
    """What forward() must leave as it found it: every buffer and every parameter (copies of their values,
    and the parameter objects themselves, so that one forward() replaced is put back as it was)."""

    buffers: dict[str, torch.Tensor]
    params: dict[str, torch.nn.Parameter]
    param_values: dict[str, torch.Tensor]


def _state(module: torch.nn.Module) -> _State:
    """A copy of every buffer and parameter, to tell whether forward() changes them. The parameters' copy
    doubles their memory only for these eager runs, before the trace; the trace itself holds more (the ONNX
    model keeps its own copy of every weight)."""
    # a lazy module's (nn.LazyLinear) are set by its first forward(), as meant: not state that forward() changes
    params = {n: p for n, p in module.named_parameters() if not is_lazy(p)}
    return _State({n: t.detach().clone() for n, t in module.named_buffers() if not is_lazy(t)}, params,
                  {n: p.detach().clone() for n, p in params.items()})


def _restore(module: torch.nn.Module, state: _State) -> None:
    with torch.no_grad():
        for n, t in module.named_buffers():
            if n in state.buffers and not _same(t, state.buffers[n]):
                if t.shape == state.buffers[n].shape and t.dtype == state.buffers[n].dtype:
                    t.copy_(state.buffers[n])
                else:  # forward() put another tensor there (self.buf = torch.cat(...))
                    owner, _, leaf = n.rpartition(".")
                    module.get_submodule(owner)._buffers[leaf] = state.buffers[n]
        for n, p in state.params.items():
            owner, _, leaf = n.rpartition(".")
            holder = module.get_submodule(owner)
            if holder._parameters.get(leaf) is not p:  # forward() put another one there (self.w = Parameter(...))
                holder._parameters[leaf] = p
            if not _same(p, state.param_values[n]):  # written in place (.data.mul_, +=) or its .data replaced
                if p.shape == state.param_values[n].shape and p.dtype == state.param_values[n].dtype:
                    p.copy_(state.param_values[n])
                else:
                    p.data = state.param_values[n]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit the same values (a NaN in a buffer equals itself: a mask of -inf / NaN is not a change)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    return torch.equal(a, b)


def _check_stateless(module: torch.nn.Module, state: _State) -> None:
    """Refuse a forward() that changes the model's buffers (``self.count += 1``, a running statistic) or its
    parameters (``self.weight.data.mul_(0.9)``, ``self.w += 1``).

    The exporter's own runs of the model moved such a buffer, and the traced graph then added the update to
    the value it had after them: the bundle's every answer differed from the model's first one (by 2 for
    a step counter) and verify found nothing, as it compares the bundle with itself. A parameter written so
    was exported as it stood after those runs: weights the model the user runs never had. The model is put
    back (``_restore``).
    """
    params = dict(module.named_parameters())
    changed_params = [n for n, v in state.param_values.items() if n not in params or not _same(params[n], v)]
    if changed_params:
        many = len(changed_params) > 1
        raise ExportError(f"forward() changes the model's parameter{'s' if many else ''} "
                          f"{', '.join(repr(n) for n in changed_params[:4])} (e.g. self.weight.data.mul_(0.9), "
                          "self.w += 1): the bundle would hold the weights as the exporter's own runs left them, "
                          "not the ones your model answers with; compute with a changed copy in forward() "
                          "(w = self.weight * 0.9) and change weights only when training (an optimizer step, "
                          "`if self.training:`; edgerun runs the model in eval mode)")
    changed = [n for n, t in module.named_buffers() if n in state.buffers and not _same(t, state.buffers[n])]
    if not changed:
        return
    raise ExportError(f"forward() changes the model's buffer{'s' if len(changed) > 1 else ''} "
                      f"{', '.join(repr(n) for n in changed[:4])} (e.g. self.count += 1, a running statistic): a "
                      "bundle answers each input alone, from fixed weights, so it cannot keep such state; change it "
                      "only when training (`if self.training:`; edgerun runs the model in eval mode), or take it as "
                      "an input and return the new value as an output")


def _dtype_hint(module: torch.nn.Module, examples: tuple[torch.Tensor, ...]) -> str | None:
    """What to do when the weights' float type is not the example's (``module.half()`` with a float32 example
    failed as "mat1 and mat2 must have the same dtype", with advice to change the example)."""
    weights = {t.dtype for t in module.parameters() if t.is_floating_point()}
    given = {e.dtype for e in examples if e.is_floating_point()}
    if not weights or not given or weights == given:
        return None
    def names(dtypes: set[torch.dtype]) -> str:
        return ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))

    return (f"the model's weights are {names(weights)} and its example {names(given)}: return module.float() and a "
            "float32 example (edgerun's model inputs and outputs are float32)")


def _outputs(out: object) -> tuple[list[str] | None, list[torch.Tensor]]:
    """What forward() returned: (None, [tensor]) for one tensor; output names and tensors for several (a dict:
    its keys, in order; a tuple or list: ``output_0``, ``output_1``, ...)."""
    if isinstance(out, torch.Tensor):
        return None, [out]
    if isinstance(out, dict) and out and all(isinstance(k, str) and k and isinstance(v, torch.Tensor)
                                             for k, v in out.items()):
        return list(out), list(out.values())
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return (None if len(out) == 1 else [f"output_{i}" for i in range(len(out))]), list(out)
    raise ExportError(f"forward() returned {_what(out)}; return a tensor, a flat tuple of tensors, or a dict of "
                      "tensors by name (e.g. {\"action\": a, \"value\": v}), each with the batch dimension first")


def _what(out: object) -> str:
    """What forward() returned, down to the element that is not a tensor: a tuple holding None or another
    tuple was reported as "forward() returned tuple; return ... a tuple of tensors"."""
    kind = type(out).__name__
    if isinstance(out, (tuple, list, dict)) and not out:
        return f"an empty {kind}"
    if isinstance(out, dict):
        bad_key = next((k for k in out if not (isinstance(k, str) and k)), None)
        if bad_key is not None:
            return f"a dict with the key {bad_key!r} (names must be non-empty strings)"
        key = next(k for k, v in out.items() if not isinstance(v, torch.Tensor))
        return f"a dict whose {key!r} is {type(out[key]).__name__}, not a tensor"
    if isinstance(out, (tuple, list)):
        i = next(i for i, v in enumerate(out) if not isinstance(v, torch.Tensor))
        nested = " (nested: flatten it)" if isinstance(out[i], (tuple, list, dict)) else ""
        what = "None" if out[i] is None else type(out[i]).__name__
        return f"a {kind} whose element {i} is {what}{nested}, not a tensor"
    return kind


def to_onnx(
    module: torch.nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    input_name: str = "input",
    output_name: str = "output",
) -> onnx.ModelProto:
    """Trace ``module`` on ``example`` into an ONNX model with a dynamic batch dim.

    Args:
        module: the torch model (put in eval mode here).
        example: one example input, batch first; or a tuple of them, one per argument of forward()
            (a camera image and a joint state), all with the same batch size.
        input_name / output_name: names of the graph input (one input; several take the names of
            forward()'s arguments) and output.

    Returns:
        The ONNX model, BatchNorm folded, shapes inferred for every tensor; all inputs share the
        batch dimension.

    Raises:
        ExportError: torch cannot export the model, or the graph is not usable.
    """
    module = module.eval()
    examples = example if isinstance(example, tuple) else (example,)
    output_names = _check_runs_batched(module, examples) or [output_name]
    batch = torch.export.Dim("batch", min=1, max=1024)
    args = arg_names(module, len(examples))
    input_names = [input_name] if len(examples) == 1 else args
    # torch names its own tensors after their ops (relu, linear, cat) and gives the outputs the names it is
    # told without looking: a dict key "relu" made two tensors named "relu". Trace under names no op takes,
    # then rename (_name_outputs).
    traced_names = [f"{_TRACED_OUTPUT}{i}" for i in range(len(output_names))]
    # torch specialises a dim of size 1 (its "0/1 specialisation"): with a batch-1 example, LSTM and
    # attention traced to a fixed batch of 1, and ConvNeXt / Swin failed with "Invalid ranges [2:1]"
    # (a guard batch >= 2 against the example's 1). Two copies stacked trace the same graph with a free
    # batch; _check_runs_batched has just run the model on them.
    traced_examples = tuple(torch.cat([e, e]) for e in examples) if examples[0].shape[0] == 1 else examples
    try:
        # nn.MultiheadAttention runs sequence first inside: traced batch first (attention_trace.py)
        with quiet_torch_export(), batch_first_attention(module):
            program = torch.onnx.export(
                module,
                traced_examples,
                dynamo=True,
                opset_version=OPSET,
                input_names=input_names,
                output_names=traced_names,
                dynamic_shapes={a: {0: batch} for a in args},
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # torch raises many types here
        raise ExportError(
            f"torch.onnx.export could not trace the model ({_root_cause(exc, module)}). "
            "edgerun exports with torch's dynamo exporter: make forward() traceable "
            "(no data-dependent Python control flow) and return tensors."
        ) from exc
    model = program.model_proto
    if [o.name for o in model.graph.output] != traced_names:
        raise ExportError(f"the traced model gives {len(model.graph.output)} outputs, not the "
                          f"{output_names} forward() returned (an output that is an input, or the same tensor "
                          "twice?): return each output once, computed from the inputs")
    clash = sorted(set(output_names) & set(input_names))
    if clash:
        raise ExportError(f"forward() returns outputs named like its inputs {clash}: rename the dict's keys")
    _name_outputs(model, dict(zip(traced_names, output_names)))
    _check_float32(model)
    _check_dynamic_batch(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    if fold_identity_gathers(model):  # ConvNeXt / Swin's pooled features: a Reshape, not a Shape-fed Gather
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    # timm's qkv permute(2, 0, 3, 1, 4) + unbind: picks, then batch first; the key's transpose in torch's
    # scaled_dot_product_attention: a Transpose, not batch and heads folded into one dim around it
    if fold_batch_transposes(model) + fold_merged_transposes(model):
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    _check_sorted(model)
    _name_nodes(model)
    return model


def _root_cause(exc: BaseException, module: torch.nn.Module) -> str:
    """The first line of the innermost error, and the line of the model's own file torch names.

    torch's exporter wraps the reason in a TorchExportError whose first 400 characters were its
    generic "Next steps" text (with terminal colour codes): `if h.sum() > 0:` was reported without
    the reason or the line.
    """
    import inspect
    import re

    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip()
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:300]
    reason = f"{type(root).__name__}: {first}" if first else type(root).__name__
    try:
        src = inspect.getsourcefile(type(module))
    except TypeError:
        src = None
    at = next((ln.strip() for ln in text.splitlines() if src and src in ln and ", line " in ln), None)
    return f"{reason}; at {at}" if at else reason


def _check_float32(model: onnx.ModelProto) -> None:
    """The bundle's input and output travel as float32 (manifest, samples, wire): refuse others here.

    An fp16 / fp64 model or an int64 token-id input traced, then died in onnxruntime with a traceback
    ("Unexpected input data type"); an int64 output (argmax) exported and verified, and every
    `edgerun run` then called the server's reply not the model's answer.
    """
    for kind, vi in [*(("input", i) for i in model.graph.input), *(("output", o) for o in model.graph.output)]:
        elem = vi.type.tensor_type.elem_type
        if elem == onnx.TensorProto.FLOAT:
            continue
        name = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "of unknown type"
        if kind == "output":
            what = ("return float32 scores (e.g. the logits) from forward() and take argmax / topk indices from "
                    "the answer")
        elif elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            what = ("return module.float() and example.float() from the model file (--back-precision fp16 makes "
                    "the server half fp16)")
        else:
            what = ("token ids and other integer inputs are not supported: look the embeddings up before the model "
                    "and give it the float32 embeddings")
        several = len(model.graph.input if kind == "input" else model.graph.output) > 1
        which = f"{kind} {vi.name!r}" if several else kind
        raise ExportError(f"the model's {which} is {name}; edgerun's model inputs and outputs are float32: {what}")


def _check_dynamic_batch(model: onnx.ModelProto) -> None:
    """The graph input's first dim must be symbolic: torch's exporter can silently specialise it.

    With a batch-1 example, LSTM and nn.MultiheadAttention models traced to a graph with a fixed
    batch of 1 (no error from torch); export then died in onnxruntime on the first batched run
    ("Got: 8 Expected: 1"). A batch-1 example is now traced as two copies (``to_onnx``); a batch
    still fixed comes from forward() itself (a shape or a loop taken from the batch size).
    """
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and not dims[0].dim_param:
            n = dims[0].dim_value
            shape = [d.dim_param or d.dim_value for d in dims]
            raise ExportError(
                f"the traced graph has a fixed batch of {n} (torch could not keep the batch dimension "
                "dynamic): forward() must not depend on the batch size (no shape, loop or constant taken from "
                f"x.shape[0] / x.size(0) other than passing it on); input {inp.name!r} traced as shape {shape}")


def arg_names(module: torch.nn.Module, n: int) -> list[str]:
    """The names of forward()'s first ``n`` arguments (the dynamic-shape spec and, for several inputs,
    the graph's input names)."""
    import inspect

    every = list(inspect.signature(module.forward).parameters.values())
    params = [p for p in every if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p.name for p in every if p.kind == p.VAR_POSITIONAL), None)
    if star is not None and len(params) < n:  # torch's dynamic shapes cannot name a *args entry
        raise ExportError(f"forward(*{star}) cannot be exported with a dynamic batch: name its arguments, e.g. "
                          "forward(self, image, joints), one per example input")
    if not params:
        raise ExportError("the model's forward() takes no argument; it must take the input tensor")
    if len(params) < n:
        raise ExportError(f"{n} example inputs were given, but forward() takes {len(params)} argument"
                          f"{'s' if len(params) > 1 else ''} ({', '.join(p.name for p in params)}): give one example "
                          "per argument")
    return [p.name for p in params[:n]]


@contextlib.contextmanager
def quiet_torch_export():
    """The exporter prints progress and warnings; keep the CLI output ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript",
                                              "torch.fx.experimental.symbolic_shapes", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # stderr too: torch.export prints the whole traced graph there before raising (60 lines for a
        # model with `if tensor > 0:`); the error it raises says what failed
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _check_sorted(model: onnx.ModelProto) -> None:
    g = model.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    for node in g.node:
        for name in node.input:
            if name not in known:
                raise ExportError(f"ONNX graph is not topologically sorted at node {node.name} ({name})")
        known.update(node.output)


_TRACED_OUTPUT = "edgerun_traced_output_"  # what the outputs are called while torch traces


def _name_outputs(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename the graph's outputs ``{traced name: output name}``; a tensor of the model's own that already
    has an output's name (torch's "relu" beside a dict key "relu") is renamed first (``relu__1``)."""
    g = model.graph
    taken = {t for n in g.node for t in (*n.input, *n.output)} | {i.name for i in (*g.input, *g.initializer)}
    ren: dict[str, str] = {}
    for want in names.values():
        if want in taken:
            k = 1
            while f"{want}__{k}" in taken:
                k += 1
            ren[want] = f"{want}__{k}"
            taken.add(ren[want])
    ren.update(names)
    for init in g.initializer:
        init.name = ren.get(init.name, init.name)
    for n in g.node:
        n.input[:] = [ren.get(t, t) for t in n.input]
        n.output[:] = [ren.get(t, t) for t in n.output]
    for vi in (*g.value_info, *g.output):
        vi.name = ren.get(vi.name, vi.name)


def _name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def module_scopes(node: onnx.NodeProto) -> tuple[list[str], str]:
    """The torch modules a node came from, outermost first, and its aten op name.

    The dynamo exporter records them in the node's ``namespace`` metadata as
    ``": Root/blocks.3: MBConv/blocks.3._project_conv: Conv2d/conv2d: aten.conv2d"``
    (each segment a fully qualified module name, the last one the op).
    """
    for prop in node.metadata_props:
        if prop.key == "namespace":
            parts = [seg.split(":")[0].strip() for seg in prop.value.split("/")[1:]]
            parts = [p for p in parts if p]
            return parts[:-1], (parts[-1] if parts else node.op_type)
    return [], node.name
