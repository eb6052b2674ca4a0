"""Magnitude pruning: keep the largest |weight|."""

from __future__ import annotations

import torch

from synflow.masks import Masks
from synflow.scorers.base import Scorer


class MagnitudeScorer(Scorer):
    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        return {key: p.detach().abs() for key, p in self.ctx.params.items()}
