"""Turn scores into masks: prune exactly floor((1 - d) * N) of the lowest scores.

One function serves every scorer. Already-pruned weights rank below everything, so they stay
pruned. Ties at the threshold are broken by position (parameter order, then element order): the
lowest positions go first. Where no tie straddles the threshold this equals the reference code,
which prunes `score <= kthvalue` and so takes every tie (more weights than asked).

Zero-score ties are the exception. A score of exactly 0 says nothing about a weight's worth (its
layer carries no flow this round: all-zero weights, a dead branch, a saturated op), so breaking
those ties by position would empty the first such layers silently while keeping the later ones.
When the threshold is 0 and only some of the zero-score weights go, the cut is spread over the
tensors in proportion to each one's number of zero-score weights (largest remainder, ties to the
earlier tensor; by position inside a tensor): every tensor loses the same fraction of them, and
none is emptied unless all of them are.
"""

from __future__ import annotations

import torch

from synflow import kernels
from synflow.masks import Masks, flat_view
from synflow.schedule import prune_count


def _prune_lowest(scores: torch.Tensor, count: int, sizes: list[int] | None = None) -> torch.Tensor:
    """Boolean tensor, same shape as flat `scores`, True for exactly `count` lowest entries.
    `sizes`: the tensors `scores` concatenates, for spreading zero-score ties over them."""
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= scores.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, count).values
    below = scores < threshold
    tied = scores == threshold
    room = count - int(below.sum())
    if float(threshold) == 0.0 and sizes is not None and len(sizes) > 1:
        positions = torch.nonzero(tied).squeeze(1)
        below[positions[spread_ties(positions, sizes, room)]] = True
        return below
    return below | (tied & (torch.cumsum(tied, 0, dtype=torch.int64) <= room))


def spread_ties(positions: torch.Tensor, sizes: list[int], room: int) -> torch.Tensor:
    """Which `room` of the tied entries at sorted global `positions` go, as a bool tensor over
    `positions`: each tensor (of the given `sizes`, back to back) gives a share proportional to
    its number of tied entries, by largest remainder (equal remainders: the earlier tensor), and
    its lowest positions first."""
    total = positions.numel()
    if room >= total:
        return torch.ones(total, dtype=torch.bool, device=positions.device)
    bounds = torch.tensor(sizes, dtype=torch.int64).cumsum(0).to(positions.device)
    owner = torch.bucketize(positions, bounds, right=True)
    counts = torch.bincount(owner, minlength=len(sizes)).tolist()
    quotas = [room * c // total for c in counts]
    left = room - sum(quotas)
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(room * counts[i] % total), i))
    for i in by_remainder[:left]:
        quotas[i] += 1
    starts = torch.tensor([0, *counts[:-1]], dtype=torch.int64).cumsum(0).to(positions.device)
    rank = torch.arange(total, device=positions.device) - starts[owner]
    return rank < torch.tensor(quotas, dtype=torch.int64, device=positions.device)[owner]


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
    sizes = [masks[n].numel() for n in names]
    pruned = _prune_lowest(flat, prune_count(flat.numel(), density), sizes)
    out = Masks()
    offset = 0
    for name in names:
        size = masks[name].numel()
        out[name] = ~pruned[offset : offset + size].view_as(masks[name])
        offset += size
    return out


#: Largest stratified sample for bracketing the threshold; the result is exact whatever the sample.
SAMPLE_SIZE = 1 << 17
#: Smallest sample (unless SAMPLE_SIZE is smaller). Between the two the sample is N^(2/3) for N
#: scores: sampling and sorting cost about m log m, the candidates left in the bracket about
#: N / sqrt(m), so the sample grows slower than N and a small (compact) selection stays cheap.
MIN_SAMPLE_SIZE = 1 << 11
#: Width of the bracket around the sample quantile, in standard deviations of that quantile.
BRACKET_SIGMAS = 5.0


def select_inplace(
    scores: dict[str, torch.Tensor],
    masks: Masks,
    density: float,
    scope: str = "global",
    *,
    pruned_scores_zero: bool = False,
) -> Masks:
    """Same masks as `select`, without sorting or concatenating all scores.

    Cost per call: a few elementwise passes over the scores plus work proportional to the weights
    near the threshold, instead of a copy of every score and a selection over all of them. It
    overwrites `scores` and `masks` (their storage becomes the new masks), so callers pass tensors
    they no longer need. `pruned_scores_zero` promises that every score is >= 0 and that pruned
    entries score exactly 0 (SynFlow's |theta * dR/dtheta| with theta masked), which saves a pass.
    """
    if scope not in ("global", "local"):
        raise ValueError(f"unknown scope {scope!r}; choose global or local")
    names = list(masks)
    groups = [[n] for n in names] if scope == "local" else [names]
    out = Masks()
    for group in groups:
        values = [scores[n].detach().reshape(-1) for n in group]
        kept = [masks[n].reshape(-1) for n in group]
        total = sum(v.numel() for v in values)
        count = prune_count(total, density)
        flat_values, flat_kept = flat_view(values), flat_view(kept)
        sizes = [v.numel() for v in values]
        if len(group) > 1 and flat_values is not None and flat_kept is not None:
            # one buffer each (the engine's layout): whole-group ops, no concatenation
            (mask,) = _select_group([flat_values], [flat_kept], count, pruned_scores_zero, sizes)
            offset = 0
            for name in group:
                n = masks[name].numel()
                out[name] = mask[offset : offset + n].view_as(masks[name])
                offset += n
            continue
        for name, mask in zip(
            group, _select_group(values, kept, count, pruned_scores_zero, sizes), strict=True
        ):
            out[name] = mask.view_as(masks[name])
    return out


def _select_group(
    values: list[torch.Tensor], kept: list[torch.Tensor], count: int, zero: bool, sizes: list[int]
) -> list[torch.Tensor]:
    """`sizes`: the tensors the group's positions belong to (for spreading zero-score ties)."""
    total = sum(v.numel() for v in values)
    alive = sum(kernels.count_true(m) for m in kept)
    pruned = total - alive
    if count == pruned:
        return kept  # nothing new to prune: the pruned ones are exactly the lowest
    if count < pruned or count >= total:
        # nothing new to prune (or everything): the simple rule, which also covers the cases a
        # monotone schedule never produces (asking for fewer pruned than already are)
        flat = torch.cat([_ranked(v, m) for v, m in zip(values, kept, strict=True)])
        drop = _prune_lowest(flat, count, sizes)
        return [~d for d in drop.split([v.numel() for v in values])]
    if zero:
        floor_value = 0.0
        at_floor = total - sum(kernels.count_nonzero(v) for v in values)  # scores are >= 0
    else:
        floor_value = -torch.inf
        for v, m in zip(values, kept, strict=True):
            v.masked_fill_(~m, -torch.inf)
        at_floor = sum(int(torch.count_nonzero(v == -torch.inf)) for v in values)
        if at_floor > pruned:  # alive scores of -inf tie with the pruned: the simple rule
            flat = torch.cat([_ranked(v, m) for v, m in zip(values, kept, strict=True)])
            drop = _prune_lowest(flat, count, sizes)
            return [~d for d in drop.split([v.numel() for v in values])]
    if count <= at_floor:
        return _prune_floor_ties(values, kept, count - pruned, floor_value, sizes)
    # the threshold is above the floor: every floor entry goes, plus the lowest others. From here
    # the values alone say what was pruned (they sit at the floor), so `kept` can take the result.
    threshold, room, ties = _threshold(values, count, floor_value, at_floor)
    out = []
    for v, m in zip(values, kept, strict=True):
        out.append(kernels.greater(v, threshold, out=m))
    if room < len(ties):
        # ties at the threshold: the first `room` by position go (zero ties: spread), the rest stay
        stay = ties[~spread_ties(ties, sizes, room)] if threshold == 0.0 else ties[room:]
        for i, positions in _by_tensor(stay, values):
            out[i][positions] = True
    return out


def _prune_floor_ties(
    values: list[torch.Tensor],
    kept: list[torch.Tensor],
    room: int,
    floor_value: float,
    sizes: list[int],
) -> list[torch.Tensor]:
    """The threshold is the floor value: pruned stay pruned, and `room` alive entries scoring the
    floor value go (zero scores: spread over the tensors; else the first by position)."""
    if floor_value == 0.0 and len(sizes) > 1:
        tied, offset = [], 0
        for v, m in zip(values, kept, strict=True):
            tied.append(torch.nonzero(m & (v == 0)).squeeze(1) + offset)
            offset += v.numel()
        ties = torch.cat(tied)
        go = ties[spread_ties(ties, sizes, room)]
        for i, positions in _by_tensor(go, values):
            kept[i][positions] = False  # in place: keeps the caller's buffer layout
        return kept
    out = []
    for v, m in zip(values, kept, strict=True):
        floor_alive = torch.nonzero(m & (v == floor_value)).squeeze(1)
        take = floor_alive[: max(room, 0)]
        room -= take.numel()
        m[take] = False  # in place: keeps the caller's buffer layout
        out.append(m)
    return out


def _threshold(
    values: list[torch.Tensor], count: int, floor_value: float, at_floor: int
) -> tuple[float, int, torch.Tensor]:
    """(T, room, ties): the count-th smallest value T (> floor_value), how many entries equal to T
    are pruned, and the global positions of all entries equal to T in position order."""
    above = sum(v.numel() for v in values) - at_floor
    rank = count - at_floor  # rank among the entries above the floor, 1-based
    lo, hi = _bracket(values, rank / above, floor_value)
    for attempt in range(2):
        if attempt == 1:
            lo, hi = floor_value, torch.inf  # the sample misled us: take everything
        below_lo = at_floor if lo == floor_value else sum(kernels.count_le(v, lo) for v in values)
        cand_values, cand_positions = _between(values, lo, hi)
        if below_lo < count <= below_lo + cand_values.numel():
            break
    threshold = torch.kthvalue(cand_values, count - below_lo).values
    is_tie = cand_values == threshold
    below = below_lo + int(torch.count_nonzero(cand_values < threshold))
    return float(threshold), count - below, cand_positions[is_tie]


def _bracket(values: list[torch.Tensor], q: float, floor_value: float) -> tuple[float, float]:
    """Bounds (lo, hi] that hold the q-quantile of the entries above the floor, from a sample."""
    total = sum(v.numel() for v in values)
    size = min(SAMPLE_SIZE, max(MIN_SAMPLE_SIZE, round(total ** (2 / 3))))
    gen = torch.Generator().manual_seed(0)
    parts = []
    for v in values:
        n = max(1, round(size * v.numel() / total))
        idx = torch.randint(v.numel(), (min(n, v.numel()),), generator=gen).to(v.device)
        parts.append(v[idx].to("cpu", torch.float64))
    sample = torch.cat(parts)
    sample = sample[sample > floor_value].sort().values
    m = sample.numel()
    if m < 32:
        return floor_value, torch.inf
    spread = BRACKET_SIGMAS * (m * q * (1 - q)) ** 0.5 + 2
    i_hi = int(q * m + spread)
    i_lo = int(q * m - spread)
    hi = float(sample[i_hi]) if i_hi < m else torch.inf
    # a lower bound costs one counting pass and keeps the candidates (and their kth-value) small
    lo = float(sample[i_lo]) if i_lo >= 0 else floor_value
    return lo, hi


def _between(values: list[torch.Tensor], lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Values in (lo, hi] and their global positions, in position order."""
    vals, poss = [], []
    offset = 0
    for v in values:
        inside, positions = kernels.between(v, lo, hi)
        vals.append(inside)
        poss.append(positions.to(v.device) + offset)
        offset += v.numel()
    return torch.cat(vals), torch.cat(poss)


def _by_tensor(positions: torch.Tensor, values: list[torch.Tensor]):
    """Split sorted global positions into (tensor index, local positions)."""
    offset = 0
    for i, v in enumerate(values):
        end = offset + v.numel()
        here = positions[(positions >= offset) & (positions < end)]
        if here.numel():
            yield i, here - offset
        offset = end


def select_alive(
    scores: torch.Tensor,
    alive: list[int],
    totals: list[int],
    density: float,
    scope: str = "global",
) -> torch.Tensor | None:
    """`select_inplace` on the alive weights only: which of them stay (bool, like `scores`).

    `scores` holds the alive weights' scores (>= 0) back to back in position order (tensor i has
    `alive[i]` of its `totals[i]` weights alive), as `synflow.alive.AliveIndex` lays them out;
    the pruned weights are not in it. Same masks as `select_inplace` on the full tensors with
    `pruned_scores_zero`: the pruned ones sit at the bottom there, so the count to prune among
    the alive is the round's count minus those already pruned, and compact order is position
    order (ties by position, zero-score ties spread over the tensors by their alive counts,
    which own the same tied entries). Overwrites `scores`. None when the schedule asks for fewer
    pruned weights than already are (not monotone): the caller takes the dense path.
    """
    if scope not in ("global", "local"):
        raise ValueError(f"unknown scope {scope!r}; choose global or local")
    groups = [[i] for i in range(len(alive))] if scope == "local" else [list(range(len(alive)))]
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    start = 0
    for group in groups:
        sizes = [alive[i] for i in group]
        end = start + sum(sizes)
        total = sum(totals[i] for i in group)
        count = prune_count(total, density) - (total - sum(sizes))
        if count < 0:
            return None
        if count > 0:
            kept = keep[start:end]
            (out,) = _select_group([scores[start:end]], [kept], count, True, sizes)
            if out is not kept:
                kept.copy_(out)
        start = end
    return keep
