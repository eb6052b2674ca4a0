"""Random pruning with Erdos-Renyi-Kernel layer densities (Evci et al., ICML 2020, "Rigging the
lottery"; Liu et al., ICLR 2022 found it a strong baseline at initialisation).

Layer l of shape (n_out, n_in, k_h, k_w) keeps density eps * sum(shape) / prod(shape) (a linear
layer: (n_in + n_out) / (n_in * n_out)), with eps chosen so that the kept total is the run's;
a layer whose density would exceed 1 stays dense and eps is solved again without it, as RigL's
`get_mask_random` does. Within a layer the kept weights are a uniform random choice (the run's
seeded generator). The scores make the shared selection keep exactly that choice: the chosen
weights score 1 + u, the others u (u uniform in [0, 1)), and the per-layer counts (largest
remainder of density * size) sum to exactly the count the selection keeps. The choice is drawn
once, among the weights still kept, so that later rounds of a multi-round run keep a superset.
"""

from __future__ import annotations

import math

import torch

from synflow.masks import Masks
from synflow.schedule import prune_count
from synflow.scorers.base import Scorer


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-tensor densities whose size-weighted mean is `density` (RigL's ERK, power 1)."""
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / sizes[k] for k, s in shapes.items() if sizes[k]}
    dense: set[str] = set()
    eps = 0.0
    while True:
        sparse = [k for k in raw if k not in dense]
        budget = density * sum(sizes.values()) - sum(sizes[k] for k in dense)
        divisor = sum(raw[k] * sizes[k] for k in sparse)
        if not sparse or divisor == 0:
            break
        eps = budget / divisor
        top = max(raw[k] for k in sparse)
        if eps * top <= 1.0:
            break
        dense |= {k for k in sparse if raw[k] == top}
    out = {}
    for k in shapes:
        if k in dense or k not in raw:
            out[k] = 1.0
        else:
            out[k] = eps * raw[k]
    return out


def layer_counts(sizes: dict[str, int], densities: dict[str, float], total: int) -> dict[str, int]:
    """Integer counts near densities * sizes (capped at each size) summing to exactly `total`:
    floors first, then one more for the largest remainders."""
    want = {k: min(densities[k] * sizes[k], sizes[k]) for k in sizes}
    counts = {k: math.floor(v) for k, v in want.items()}
    short = total - sum(counts.values())
    order = sorted(sizes, key=lambda k: (-(want[k] - counts[k]), k))
    while short > 0:
        progressed = False
        for k in order:
            if short and counts[k] < sizes[k]:
                counts[k] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    return counts


class ERKScorer(Scorer):
    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        if getattr(self, "_scores", None) is None:
            self._scores = self._draw(masks)
        return {k: v.clone() for k, v in self._scores.items()}

    def _draw(self, masks: Masks) -> dict[str, torch.Tensor]:
        params = self.ctx.params
        gen = self.ctx.generator
        sizes = {k: p.numel() for k, p in params.items()}
        total = sum(sizes.values())
        keep = total - prune_count(total, self.ctx.density)
        densities = erk_densities({k: tuple(p.shape) for k, p in params.items()}, keep / total)
        counts = layer_counts(sizes, densities, keep)
        scores = {}
        for key, p in params.items():
            u = torch.rand(p.shape, generator=gen, dtype=torch.float64).flatten()
            alive = masks[key].flatten().cpu()
            # rank the still-kept weights by u; the first counts[key] of them are chosen
            order = torch.argsort(torch.where(alive, u, 2.0), descending=False)
            chosen = order[: min(counts[key], int(alive.sum()))]
            u[chosen] += 1.0
            scores[key] = u.view(p.shape).to(p.device)  # chosen in [1, 2), the others below 1
        return scores
