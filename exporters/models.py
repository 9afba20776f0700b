"""Resolve the MODEL argument of ``edgerun export``: ``zoo:NAME`` or ``path/to/file.py:fn``."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgerun.errors import ConfigError, ExportError


@dataclass
class SourceModel:
    """A torch model ready to trace, with what evaluation needs."""

    model_id: str
    module: torch.nn.Module
    example: torch.Tensor | tuple[torch.Tensor, ...]  # one example input, or one per input of forward()
    zoo: Any = None  # the ZooModel when it comes from the zoo (gives eval/calibration data)
    task: str = "auto"  # "classify" / "regress": how its first output is scored (``--task``); auto: see
    # ``evaluate.is_regression``

    @property
    def examples(self) -> tuple[torch.Tensor, ...]:
        """The example inputs, in forward()'s order (one for a single-input model)."""
        return self.example if isinstance(self.example, tuple) else (self.example,)

    @property
    def input_names(self) -> list[str]:
        """The traced graph's input names: the zoo's name or ``input`` for one input, forward()'s argument
        names for several (``image``, ``joints``)."""
        if not isinstance(self.example, tuple):
            return [getattr(self.zoo, "input_name", None) or "input"]
        from edgerun.exporters.trace import arg_names

        return arg_names(self.module, len(self.example))

    def example_inputs(self) -> np.ndarray | dict[str, np.ndarray]:
        """The example as float32 numpy: one array, or ``{input name: array}`` for several inputs."""
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in self.examples]
        return arrays[0] if not isinstance(self.example, tuple) else dict(zip(self.input_names, arrays))


def resolve_model(spec: str) -> SourceModel:
    """Load the model named by ``spec``.

    Args:
        spec: ``zoo:digits-cnn``, ``zoo:efficientnet-lite0``, or ``path/to/file.py:fn``
            where ``fn()`` returns ``(torch_module, example_input)``.

    Raises:
        ConfigError: the spec names nothing loadable; the message says the accepted forms.
    """
    if spec.startswith("zoo:"):
        from edgerun.exporters import zoo

        m = zoo.load(spec)
        return SourceModel(m.name, m.module.eval(), m.example, m)
    if ":" in spec:
        path_s, fn_name = spec.rsplit(":", 1)
        return _from_file(Path(path_s), fn_name)
    from edgerun.exporters import zoo

    raise ConfigError(
        f"cannot resolve model {spec!r}: use zoo:NAME ({', '.join('zoo:' + n for n in zoo.names())}) "
        "or path/to/file.py:fn where fn() returns (torch_module, example_input)"
    )


def _from_file(path: Path, fn_name: str) -> SourceModel:
    if not path.is_file():
        what = "is a directory, not a Python file" if path.is_dir() else "does not exist"
        raise ConfigError(f"model file {path} {what}; give MODEL as path/to/file.py:function or zoo:NAME")
    mod_name = f"edgerun_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} is not an importable Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    with _as_script(path):
        try:
            spec.loader.exec_module(mod)
        except SystemExit as exc:
            raise ConfigError(f"importing {path} called sys.exit({exc.code!r}) (an argparse parse_args() or a sys.exit() "
                              "at the top level of the file?); put it under `if __name__ == \"__main__\":`") from None
        except Exception as exc:
            raise ConfigError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise ConfigError(f"{path} has no function {fn_name}(); define {fn_name}() returning "
                              "(torch.nn.Module, example_input_tensor) or name another function after the ':'")
        got = _call_make(fn, path, fn_name)
    return _source(got, path, fn_name)


@contextlib.contextmanager
def _as_script(path: Path) -> Iterator[None]:
    """Import and call the model file as `python model.py` would see the world: its own directory first on
    sys.path (`from mylayers import Block` beside it failed with ModuleNotFoundError, from any directory)
    and sys.argv = [model.py] (argparse at import read edgerun's own command line and printed
    "edgerun: error: unrecognized arguments"). Both are put back after. What it prints goes to stderr
    (stdout is the command's own: `--json`)."""
    argv, here = sys.argv, str(path.resolve().parent)
    sys.argv = [str(path)]
    sys.path.insert(0, here)
    try:
        # its prints go to stderr: `export --json` printed "loading weights ..." before its JSON on stdout
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.argv = argv
        if here in sys.path:
            sys.path.remove(here)


def _call_make(fn, path: Path, fn_name: str):
    try:
        return fn()
    except TypeError as exc:
        if "argument" in str(exc):
            raise ConfigError(f"{path}:{fn_name}() must take no arguments ({exc}); wrap it in a function that "
                              "returns (torch.nn.Module, example_input_tensor)") from exc
        raise ExportError(f"{path}:{fn_name}() raised TypeError: {exc}") from exc
    except SystemExit as exc:  # it printed nothing of ours, and exited with the code it gave
        raise ExportError(f"{path}:{fn_name}() called sys.exit({exc.code!r}); it must return "
                          "(torch.nn.Module, example_input_tensor)") from None
    except Exception as exc:  # the user's code: report it, with its type, as what went wrong
        raise ExportError(f"{path}:{fn_name}() raised {type(exc).__name__}: {exc}") from exc


def _source(got, path: Path, fn_name: str) -> SourceModel:
    if isinstance(got, list) and len(got) == 2:  # [model, example]: the same pair
        got = tuple(got)
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], torch.nn.Module)):
        raise ExportError(f"{path}:{fn_name}() returned {_returned(got)}; it must return the model and one example "
                          "input: (torch.nn.Module, example_input_tensor)")
    module, example = got
    if isinstance(example, (tuple, list)) and example and all(isinstance(t, torch.Tensor) for t in example):
        # forward(image, joints): one example per input, in forward()'s order
        example = tuple(example) if len(example) > 1 else example[0]
    elif not isinstance(example, torch.Tensor):
        raise ExportError(f"{path}:{fn_name}(): the example input must be a torch.Tensor (or a tuple of them, one "
                          f"per input of forward()), got {type(example).__name__}")
    return SourceModel(path.stem, *_on_cpu(module, example, f"{path}:{fn_name}()"))


def _returned(got) -> str:
    """What make() returned, in a word: the model alone was reported only as "must return (module, example)"."""
    if isinstance(got, torch.nn.Module):
        return f"the model alone ({type(got).__name__}), without an example input"
    if isinstance(got, tuple):
        return f"a tuple of {len(got)} ({', '.join(type(g).__name__ for g in got[:4])})"
    return "None" if got is None else type(got).__name__


def _unwrapped(module: torch.nn.Module, where: str) -> torch.nn.Module:
    """The model inside torch's wrappers: torch.compile's and DataParallel's forward(*args) was refused with
    "forward(*args) cannot be exported ...: name its arguments" although the model's own forward() names them.

    Raises:
        ExportError: a TorchScript module (torch's exporter takes the Python module only).
    """
    while True:
        if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):  # torch.compile(model)
            module = module._orig_mod
        else:
            break
    if isinstance(module, torch.jit.ScriptModule):
        raise ExportError(f"{where} returned a TorchScript module (torch.jit.script / torch.jit.trace), which torch's "
                          "ONNX exporter cannot read: return the Python nn.Module it was made from")
    return module


def _on_cpu(module: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...],
            where: str) -> tuple[torch.nn.Module, torch.Tensor | tuple[torch.Tensor, ...]]:
    """The model in eval mode and its example(s), all on the CPU (the export traces and measures there).

    Weights on the meta device hold no values: the trace died in an onnx pass with a message about
    "PassManager" and control flow.
    """
    examples = example if isinstance(example, tuple) else (example,)
    module = _unwrapped(module, where)
    tensors = [*examples, *module.parameters(), *module.buffers()]
    if any(t.is_meta for t in tensors):
        raise ExportError(f"{where}: the model's weights or example are on the meta device and hold no values; "
                          "load real weights (e.g. module.to_empty(device='cpu'), then load_state_dict) before "
                          "returning them")
    bad = next((i for i, t in enumerate(examples) if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:  # every calibration and evaluation input is drawn around it: all came out NaN, and the
        # export blamed the model ("check the model for log / sqrt / division")
        which = "example input" if len(examples) == 1 else f"example input {bad}"
        raise ExportError(f"{where}: the {which} holds NaN or Inf; return a real input (the export measures the "
                          "model on inputs drawn around it)")
    on_cpu = tuple(t.detach().cpu() for t in examples)
    return module.eval().cpu(), on_cpu if isinstance(example, tuple) else on_cpu[0]
