"""SynFlow-L2 (Gebhart, Saxena, Schrater, ICLR 2021 "A unified paths perspective for pruning at
initialization"): SynFlow with every tensor squared instead of made absolute.

R is then the sum over input-output paths of the products of *squared* weights (the diagonal of
the path kernel), and each weight's score is theta^2 * dR/d(theta^2), the share of R carried by
the paths through it; like SynFlow's it is conserved layer by layer, so iterating avoids layer
collapse. Everything else (rounds, rescaling, float64 fallback, restoring) is SynFlow's.
"""

from __future__ import annotations

import torch

from synflow.scorers.synflow import SynFlowScorer


class SynFlowL2Scorer(SynFlowScorer):
    @staticmethod
    def positive(tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.square(tensor, out=out)
