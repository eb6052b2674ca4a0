"""Zero-score ties are spread over the tensors in proportion (synflow/selection.py), never
taken by position; counts stay exact and `select` equals `select_inplace`."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synflow import PruneConfig, prune
from synflow.masks import Masks, flat_buffer
from synflow.selection import select, select_inplace
from tests.synflow import nets


def reference_select(scores, masks, density):
    """Written from the rule: pruned first, then values below the threshold; at a zero
    threshold each tensor gives floor(room * z_i / Z) of its z_i zero-score entries plus one
    for the largest remainders (earlier tensor first), its lowest positions first."""
    names = list(masks)
    flat = torch.cat([torch.where(masks[n], scores[n], -math.inf).flatten() for n in names])
    count = math.floor((1 - density) * flat.numel())
    order = torch.sort(flat, stable=True).indices
    threshold = float(flat[order[count - 1]]) if count else -math.inf
    drop = torch.zeros_like(flat, dtype=torch.bool)
    if threshold != 0.0:
        drop[order[:count]] = True
    else:
        drop[flat < 0] = True
        room = count - int(drop.sum())
        sizes = [masks[n].numel() for n in names]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        zeros = [
            [starts[i] + j for j in range(sizes[i]) if float(flat[starts[i] + j]) == 0.0]
            for i in range(len(names))
        ]
        total = sum(len(z) for z in zeros)
        quota = [room * len(z) // total for z in zeros]
        rest = sorted(range(len(zeros)), key=lambda i: (-(room * len(zeros[i]) % total), i))
        for i in rest[: room - sum(quota)]:
            quota[i] += 1
        for z, q in zip(zeros, quota, strict=True):
            drop[z[:q]] = True
    out, offset = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = ~drop[offset : offset + size].view_as(masks[n])
        offset += size
    return out


def _case(gen, zero_share: float):
    shapes = {"a": (5, 7), "b": (40,), "c": (3, 3, 3)}
    scores, masks = {}, {}
    for name, shape in shapes.items():
        s = torch.rand(shape, generator=gen) + 0.1
        s[torch.rand(shape, generator=gen) < zero_share] = 0.0
        scores[name] = s
        masks[name] = torch.rand(shape, generator=gen) > 0.2
    for name in masks:  # SynFlow's promise: pruned entries score exactly 0
        scores[name] = torch.where(masks[name], scores[name], 0.0)
    return scores, masks


@pytest.mark.parametrize("zero_share", [0.3, 0.7, 1.0])
def test_zero_ties_spread_and_every_implementation_agrees(zero_share):
    gen = torch.Generator().manual_seed(7)
    for _ in range(30):
        scores, masks = _case(gen, zero_share)
        density = float(torch.rand((), generator=gen)) * 0.8
        expected = reference_select(scores, masks, density)
        total = sum(m.numel() for m in masks.values())
        pruned_expected = math.floor((1 - density) * total)
        out = select(scores, Masks.from_dict(masks), density)
        assert sum(int((~m).sum()) for m in out.values()) == pruned_expected
        for zero in (False, True):
            # the engine's layout: one flat buffer for the scores and one for the masks
            _, views = flat_buffer({n: s.shape for n, s in scores.items()}, torch.float32, "cpu")
            _, kviews = flat_buffer({n: m.shape for n, m in masks.items()}, torch.bool, "cpu")
            for n in scores:
                views[n].copy_(scores[n])
                kviews[n].copy_(masks[n])
            flat_out = select_inplace(
                dict(views), Masks.from_dict(dict(kviews)), density, pruned_scores_zero=zero
            )
            apart = select_inplace(
                {n: s.clone() for n, s in scores.items()},
                Masks.from_dict({n: m.clone() for n, m in masks.items()}),
                density,
                pruned_scores_zero=zero,
            )
            for n in masks:
                assert torch.equal(out[n], expected[n]), n
                assert torch.equal(flat_out[n], expected[n]), n
                assert torch.equal(apart[n], expected[n]), n


def test_two_dead_branches_lose_the_same_fraction():
    """Two layers whose weights all score 0 share the cut evenly instead of the first one
    being emptied."""
    scores = {"live": torch.rand(100) + 1, "dead1": torch.zeros(50), "dead2": torch.zeros(150)}
    masks = Masks.from_dict({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    out = select(scores, masks, 0.5)  # 150 go, all from the 200 zero-score weights
    assert int(out["live"].sum()) == 100
    assert int((~out["dead1"]).sum()) == 38 and int((~out["dead2"]).sum()) == 112


class DeadBranch(nn.Module):
    """`aux` feeds an output that is multiplied by zero: its weights score 0 (a dead branch)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.aux = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + 0.0 * self.aux(h)


class ZeroLayer(nn.Module):
    """`a` is all zero, so `b`, behind it, gets no flow either: only the direct path scores."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8, bias=False), nn.Linear(8, 4), nn.Linear(8, 4)
        with torch.no_grad():
            self.a.weight.zero_()

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.c(x)


def test_report_names_zero_score_layers_with_their_cause():
    config = PruneConfig(sparsity=0.3, input_shape=(1, 8), iterations=2)
    dead = prune(nets.as_loaded(nets.seeded(DeadBranch, seed=0)), config)
    assert list(dead.zero_score_layers) == ["aux.weight"]
    round_, cause = dead.zero_score_layers["aux.weight"]
    assert round_ == 1 and cause.startswith("dead branch")
    zero = prune(nets.as_loaded(nets.seeded(ZeroLayer, seed=0)), config)
    assert zero.zero_score_layers["a.weight"][1].startswith("zero weights")
    assert zero.zero_score_layers["b.weight"][1].startswith("dead branch")
    assert "c.weight" not in zero.zero_score_layers
    # 30% of 128 weights go, all from the 96 zero-score ones, spread: neither is emptied
    assert all(bool(zero.masks[k].any()) for k in ("a.weight", "b.weight"))
