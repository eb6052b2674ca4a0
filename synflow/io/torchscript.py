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
    module.eval()
    return LoadedModel(format=TORCHSCRIPT, module=module, source=path, writer=save_torchscript)


def save_torchscript(model: LoadedModel, path: Path) -> None:
    with quiet_deprecation():
        torch.jit.save(model.module, str(path))
