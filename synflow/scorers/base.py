"""The scorer interface: scores in, nothing else.

A scorer maps the current masks to one score tensor per prunable parameter (higher = keep). It
knows nothing of thresholds, schedules or counts; `synflow.selection` turns scores into masks.
A scorer may change the module while it is open (SynFlow linearises it) and must restore it,
bit for bit, when closed.

Optional extensions the pruning loop uses when a scorer has them (SynFlow does):
`score_borrowed(masks)` returns the scores in the scorer's own buffers, valid until the next call
and free for the caller to overwrite (saves a copy of every score), and `pruned_scores_zero =
True` promises scores >= 0 that are exactly 0 where pruned (saves the selection a pass).
`score()` always returns tensors the caller owns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Self

import torch

from synflow.calibration import Calibration
from synflow.inputs import InputSpec
from synflow.masks import Masks
from synflow.model import LoadedModel, PrunableTensor


@dataclass
class ScoringContext:
    model: LoadedModel
    tensors: list[PrunableTensor]
    params: dict[str, torch.nn.Parameter]  # key -> live parameter of `model.module`
    #: one spec per `forward` argument; a bare shape means one float32 input of that shape
    inputs: tuple[InputSpec, ...] | tuple[int, ...] | None
    device: torch.device
    generator: torch.Generator
    precision: str = "auto"  # "auto" | "float32" | "float64"
    density: float = 1.0  # the run's target density (ERK sets its layer densities from it)
    calibration: Calibration | None = None  # the data-driven scorers' batch

    def __post_init__(self) -> None:
        if self.inputs and not isinstance(self.inputs[0], InputSpec):
            self.inputs = (InputSpec(tuple(self.inputs)),)  # type: ignore[arg-type]

    @property
    def input_specs(self) -> tuple[InputSpec, ...] | None:
        return self.inputs  # type: ignore[return-value]


class Scorer(ABC):
    def __init__(self, ctx: ScoringContext):
        self.ctx = ctx

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        """One score per element of each prunable parameter; pruned elements may score anything."""
