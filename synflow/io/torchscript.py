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
from synflow.io.formats import TORCHSCRIPT
from synflow.model import LoadedModel


@contextmanager
def quiet_deprecation():
    """torch 2.10+ flags every torch.jit call as deprecated; our users chose TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning
        )
        yield


def read_torchscript(path: str | Path) -> LoadedModel:
    """Load an archive that `detect_format` accepted (`synflow.io.loader.load_model` does both)."""
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
    return LoadedModel(format=TORCHSCRIPT, module=module, source=path, writer=save_torchscript)


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
