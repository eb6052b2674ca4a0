"""Turn scores into masks: prune exactly floor((1 - d) * N) of the lowest scores.

One function serves every scorer. Already-pruned weights rank below everything, so they stay
pruned. Ties at the threshold are broken by position (parameter order, then element order): the
lowest positions go first. Where no tie straddles the threshold this equals the reference code,
which prunes `score <= kthvalue` and so takes every tie (more weights than asked).
"""

from __future__ import annotations

import torch

from synflow.masks import Masks
from synflow.schedule import prune_count


def _prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean tensor, same shape as flat `scores`, True for exactly `count` lowest entries."""
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= scores.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, count).values
    below = scores < threshold
    tied = scores == threshold
    room = count - int(below.sum())
    return below | (tied & (torch.cumsum(tied, 0, dtype=torch.int64) <= room))


def _ranked(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flat scores with pruned entries forced to the bottom."""
    return torch.where(mask, score, torch.full_like(score, -torch.inf)).flatten()


def select(
    scores: dict[str, torch.Tensor], masks: Masks, density: float, scope: str = "global"
) -> Masks:
    """New masks keeping the highest scores at `density` (global: over all tensors together)."""
    if scope == "local":
        out = Masks()
        for name, mask in masks.items():
            flat = _ranked(scores[name], mask)
            out[name] = ~_prune_lowest(flat, prune_count(flat.numel(), density)).view_as(mask)
        return out
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}; choose global or local")
    names = list(masks)
    flat = torch.cat([_ranked(scores[n], masks[n]) for n in names])
    pruned = _prune_lowest(flat, prune_count(flat.numel(), density))
    out = Masks()
    offset = 0
    for name in names:
        size = masks[name].numel()
        out[name] = ~pruned[offset : offset + size].view_as(masks[name])
        offset += size
    return out
