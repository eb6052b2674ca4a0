"""SNIP (Lee, Ajanthan, Torr, ICLR 2019): connection sensitivity |theta * dL/dtheta|, with L the
cross-entropy of the calibration batch through the masked network, as the reference code
(ganguli-lab/Synaptic-Flow `Pruners.SNIP`) computes it (there as the gradient with respect to a
mask of ones; the same number). Its normalisation by the sum of all scores changes no ranking and
is left out."""

from __future__ import annotations

import torch

from synflow.masks import Masks
from synflow.scorers.data import DataScorer, gradients


class SNIPScorer(DataScorer):
    method = "snip"

    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        params = self._load(masks)
        with torch.enable_grad():
            grads = gradients(self.loss(), params)
        return {
            key: (p.detach() * g).abs()
            for (key, p), g in zip(self.ctx.params.items(), grads, strict=True)
        }
