"""Random pruning: i.i.d. Gaussian scores from the run's seeded generator (as the reference)."""

from __future__ import annotations

import torch

from synflow.masks import Masks
from synflow.scorers.base import Scorer


class RandomScorer(Scorer):
    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        gen = self.ctx.generator
        return {
            key: torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device)
            for key, p in self.ctx.params.items()
        }
