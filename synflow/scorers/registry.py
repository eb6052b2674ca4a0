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
    """A method and what it needs: the engine, the CLI and the API decide from these fields
    alone (no method is special-cased by name), and they stay torch-free."""

    name: str
    target: str  # "module:Class"
    default_iterations: int
    description: str
    #: runs the model on all-ones inputs, so it needs their shapes (input_shape / inputs)
    needs_inputs: bool = False
    #: scores from a calibration batch (`inputs` and `labels`): data-driven, not data-free
    needs_data: bool = False
    #: its weight scores, summed over a coupled channel group, rank channels (granularity
    #: `channel`); not so for ERK (its content is per-layer densities) nor the data-driven ones
    #: (channel pruning carries no calibration batch)
    ranks_channels: bool = True

    @property
    def data_free(self) -> bool:
        return not self.needs_data

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
            needs_inputs=True,
        ),
        ScorerSpec("magnitude", "synflow.scorers.magnitude:MagnitudeScorer", 1, "|weight|"),
        ScorerSpec("random", "synflow.scorers.random:RandomScorer", 1, "Gaussian noise (seeded)"),
        ScorerSpec(
            "synflow-l2",
            "synflow.scorers.synflow_l2:SynFlowL2Scorer",
            100,
            "SynFlow on squared weights (Gebhart et al. 2021): data-free",
            needs_inputs=True,
        ),
        ScorerSpec(
            "erk",
            "synflow.scorers.erk:ERKScorer",
            1,
            "random within Erdos-Renyi-Kernel layer densities (Evci et al. 2020)",
            ranks_channels=False,
        ),
        ScorerSpec(
            "snip",
            "synflow.scorers.snip:SNIPScorer",
            1,
            "|weight * dL/dweight| on a calibration batch (Lee et al. 2019)",
            needs_data=True,
            ranks_channels=False,
        ),
        ScorerSpec(
            "grasp",
            "synflow.scorers.grasp:GraSPScorer",
            1,
            "weight * (Hessian x gradient) on a calibration batch (Wang et al. 2020)",
            needs_data=True,
            ranks_channels=False,
        ),
    )
}


def scorer_spec(name: str) -> ScorerSpec:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(SCORERS)}") from None
