"""TorchScript in and out.

`torch.jit.load` executes code from the archive (TorchScript `__setstate__` methods), so callers
that load untrusted files must do it in a sandboxed process; this module only makes sure that
what reaches `torch.jit.load` is a TorchScript archive and not a pickle.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from synflow.errors import InvalidModelError
from synflow.io.archive import inspect_zip
from synflow.io.atomic import write_atomically
from synflow.io.formats import TORCHSCRIPT, model_file
from synflow.io.limits import InputLimits
from synflow.model import LoadedModel


@contextmanager
def quiet_deprecation():
    """torch 2.10+ flags every torch.jit call as deprecated; our users chose TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning
        )
        yield


def load_torchscript(
    path: str | Path, limits: InputLimits | None = None, workdir: Path | None = None
) -> LoadedModel:
    """The registry's loader: inspect the archive (sizes, ratios, names), then load it."""
    inspect_zip(path, (limits or InputLimits()).archive)
    return read_torchscript(path)


def read_torchscript(path: str | Path) -> LoadedModel:
    """Load an archive that `detect_format` and `inspect_zip` accepted."""
    path = Path(path)
    try:
        with quiet_deprecation():
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidModelError(
            f"torch.jit.load could not read the archive: {first[:300]}"
        ) from exc
    refuse_unprunable(module)
    module.eval()
    return LoadedModel(format=TORCHSCRIPT, module=module, source=path)


def _is_quantized(module: torch.jit.ScriptModule) -> bool:
    """Whether any submodule was made from a quantized layer (torch.ao.nn.quantized...)."""
    for _, sub in module.named_modules():
        try:
            name = sub._c._type().qualified_name()
        except (AttributeError, RuntimeError):
            continue
        if ".quantized." in name:
            return True
    return False


def _is_frozen(module: torch.jit.ScriptModule) -> bool:
    """`torch.jit.freeze` folds parameters into the graph: none are left, tensors are constants."""
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        return False
    try:
        graph = module.inlined_graph
    except (AttributeError, RuntimeError):
        return False
    return any(
        node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType"
        for node in graph.nodes()
    )


def refuse_unprunable(module: torch.jit.ScriptModule) -> None:
    """Refuse, saying what to do instead, the TorchScript kinds whose weights cannot be pruned."""
    if _is_quantized(module):
        raise InvalidModelError(
            "this is a quantized model: quantized weights are packed integers that cannot be "
            "pruned. Prune the float model first, then quantize the pruned model"
        )
    if _is_frozen(module):
        raise InvalidModelError(
            "this TorchScript model was frozen (torch.jit.freeze): its weights became constants "
            "of the graph, so there are no parameters to prune. Save it with torch.jit.script "
            "(or trace) without freezing, or freeze with preserved_attrs naming the layers to "
            "keep as parameters"
        )


def save_torchscript(model: LoadedModel, path: Path) -> None:
    with quiet_deprecation():
        torch.jit.save(model.module, str(path))


def write_torchscript(model: LoadedModel, out_dir: Path) -> list[str]:
    """The registry's writer: the pruned module as `model.pt`."""
    name = model_file(TORCHSCRIPT)
    write_atomically(Path(out_dir) / name, lambda tmp: save_torchscript(model, tmp))
    return [name]
