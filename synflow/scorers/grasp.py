"""GraSP (Wang, Zhang, Grosse, ICLR 2020): gradient signal preservation.

With g = dL/dtheta (L the cross-entropy of the calibration batch, logits divided by the
temperature T = 200) and H the Hessian of L, the paper removes the weights with the highest
-theta * Hg. Here the score is theta * Hg and the shared selection removes the lowest: the same
weights, exactly as the reference code (alecwangcq/GraSP; ganguli-lab/Synaptic-Flow
`Pruners.GraSP`) does. Hg is the gradient of g . stop(g) (a Hessian-vector product, no Hessian
is formed). The reference's division by |sum of scores| changes no ranking and is left out.
"""

from __future__ import annotations

import torch

from synflow.masks import Masks
from synflow.scorers.data import DataScorer, gradients

#: the softmax temperature of the GraSP paper and its code
TEMPERATURE = 200.0


class GraSPScorer(DataScorer):
    method = "grasp"

    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        params = self._load(masks)
        with torch.enable_grad():
            stopped = [g.detach() for g in gradients(self.loss(TEMPERATURE), params)]
            grads = gradients(self.loss(TEMPERATURE), params, create_graph=True)
            product = sum((s * g).sum() for s, g in zip(stopped, grads, strict=True))
            if not isinstance(product, torch.Tensor) or not product.requires_grad:
                hg = [torch.zeros_like(p) for p in params]
            else:
                hg = gradients(product, params)
        return {
            key: p.detach() * h for (key, p), h in zip(self.ctx.params.items(), hg, strict=True)
        }
