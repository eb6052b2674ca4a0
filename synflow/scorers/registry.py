"""Name -> scorer registry.

Adding a method is one new module under `synflow/scorers/` and one line here; the pruning loop never
changes. Entries name their implementation by import path so that this module (and the request
validation that uses it) stays free of torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synflow.scorers.base import Scorer


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    target: str  # "module:Class"
    default_iterations: int
    description: str

    def load(self) -> type[Scorer]:
        module_name, _, cls_name = self.target.partition(":")
        return getattr(importlib.import_module(module_name), cls_name)


SCORERS: dict[str, ScorerSpec] = {
    spec.name: spec
    for spec in (
        ScorerSpec(
            "synflow",
            "synflow.scorers.synflow:SynFlowScorer",
            100,
            "Iterative Synaptic Flow (Tanaka et al. 2020): data-free, avoids layer collapse",
        ),
        ScorerSpec("magnitude", "synflow.scorers.magnitude:MagnitudeScorer", 1, "|weight|"),
        ScorerSpec("random", "synflow.scorers.random:RandomScorer", 1, "Gaussian noise (seeded)"),
    )
}


def scorer_spec(name: str) -> ScorerSpec:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(SCORERS)}") from None
