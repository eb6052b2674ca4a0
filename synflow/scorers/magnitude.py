"""Magnitude pruning: keep the largest |weight|, ranked in float32 or float64 (a float16 or
bfloat16 weight converts to float32 exactly, so the ranking is the weights' own)."""

from __future__ import annotations

import torch

from synflow.masks import Masks
from synflow.scorers.base import Scorer


class MagnitudeScorer(Scorer):
    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        return {
            key: p.detach().abs().to(torch.promote_types(p.dtype, torch.float32))
            for key, p in self.ctx.params.items()
        }
