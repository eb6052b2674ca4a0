"""Iterative Synaptic Flow Pruning (Tanaka et al., NeurIPS 2020) as a library.

    import synflow
    config = synflow.PruneConfig(sparsity=0.9, input_shape=(1, 3, 32, 32))
    report = synflow.prune_file("model.pt", config, "out/")

or, on a model already in memory:

    model = synflow.load_model("model.pt")
    result = synflow.prune(model, config)      # result.masks: name -> bool tensor

Only `PruneConfig` is imported eagerly; everything that needs torch loads on first use, so the
API process can validate requests with this package without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from synflow.config import PruneConfig

__version__ = "0.1.0"

_LAZY = {
    "prune": "synflow.engine",
    "apply_masks": "synflow.engine",
    "Progress": "synflow.engine",
    "PruneResult": "synflow.engine",
    "load_model": "synflow.io.loader",
    "prune_file": "synflow.pipeline",
    "Masks": "synflow.masks",
    "LoadedModel": "synflow.model",
}

__all__ = ["PruneConfig", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synflow' has no attribute {name!r}")
