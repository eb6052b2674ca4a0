"""The compact alive path (`synflow.alive`, `selection.select_alive`) gives the dense path's masks.

Against `select` (the obviously correct rule) on random scores with heavy ties, both scopes,
across rounds; and end to end: the engine's masks with the compact path from the first round on
equal those with it never used, on random models with heavily tied weights.
"""

from __future__ import annotations

import pytest
import torch

import synflow.scorers.synflow as synflow_scorer
from synflow.alive import AliveIndex
from synflow.config import PruneConfig
from synflow.engine import prune
from synflow.masks import Masks
from synflow.schedule import density_at
from synflow.selection import select, select_alive
from tests.synflow import nets
from tests.synflow.kernel_paths import kernel_path  # noqa: F401 (fixture)

# every test on both paths of synflow.kernels (torch, and numpy in small chunks)
pytestmark = pytest.mark.usefixtures("kernel_path")

SHAPES = {"a": (7, 5), "b": (300,), "c": (4, 3, 3, 3), "d": (1,), "e": (50,)}


def tied_scores(g: torch.Generator, levels: int) -> dict[str, torch.Tensor]:
    """Scores from a few integer levels (0 among them: zero-score ties too)."""
    return {k: torch.randint(0, levels, s, generator=g).float() for k, s in SHAPES.items()}


@pytest.mark.parametrize("levels", [2, 4, 1000])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_compact_selection_equals_select_across_rounds(scope: str, levels: int) -> None:
    rounds = 12
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        masks = Masks.from_dict({k: torch.ones(s, dtype=torch.bool) for k, s in SHAPES.items()})
        index = AliveIndex(list(masks.values()))
        for t in range(1, rounds + 1):
            density = density_at(0.02, t, rounds, "exponential")
            scores = tied_scores(g, levels)
            expected = select(scores, masks, density, scope)
            # the compact path: gather the alive scores, select on them, prune in place
            compact = index.prepare(torch.float32)
            for view, positions, key in zip(index.views, index.positions, SHAPES, strict=True):
                view.copy_(scores[key].reshape(-1)[positions.long()])
            keep = select_alive(compact, index.counts, index.totals, density, scope)
            assert keep is not None
            weights = [torch.ones(s).reshape(-1) for s in SHAPES.values()]
            index.prune(keep, weights, [m.reshape(-1) for m in masks.values()])
            for key, w in zip(SHAPES, weights, strict=True):
                assert torch.equal(masks[key], expected[key]), (seed, t, key)
                # newly pruned weights are zeroed, the others untouched
                gone = ~expected[key].reshape(-1) & (w == 0)
                assert torch.equal(w == 0, gone), (seed, t, key)
            assert index.counts == [int(m.sum()) for m in expected.values()]
            masks = expected


def test_schedule_that_unprunes_is_refused() -> None:
    scores = torch.rand(10)
    assert select_alive(scores, [10], [20], density=0.9) is None


def tied_model(builder, seed: int, levels=(0.0, 0.5, 1.0)) -> torch.nn.Module:
    """Every weight from a few magnitudes (random signs; 0 among them): scores tie heavily."""
    model = nets.seeded(builder, seed=seed)
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(levels)
    with torch.no_grad():
        for p in model.parameters():
            pick = torch.randint(0, len(levels), p.shape, generator=g)
            sign = torch.randint(0, 2, p.shape, generator=g) * 2 - 1
            p.copy_(values[pick] * sign)
    return model


def run(model, config, compact_below: float, monkeypatch, precision="auto") -> Masks:
    monkeypatch.setattr(synflow_scorer, "COMPACT_BELOW", compact_below)
    return prune(nets.as_loaded(model), config, precision=precision).masks


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize(
    ("builder", "shape", "options"),
    [
        (nets.mlp, (1, 20), {}),
        (nets.ResCNN, (1, 3, 8, 8), {"prune_bias": True}),
        (nets.plain_cnn, (1, 3, 8, 8), {}),
    ],
)
def test_engine_masks_equal_dense_path(builder, shape, options, scope, monkeypatch) -> None:
    for seed in range(2 if builder is nets.mlp else 1):
        model = tied_model(builder, seed)
        config = PruneConfig(
            sparsity=0.97, input_shape=shape, iterations=10, scope=scope, **options
        )
        dense = run(model, config, -1.0, monkeypatch)  # never compact
        compact = run(model, config, 1.0, monkeypatch)  # compact from the first round
        switched = run(model, config, synflow_scorer.COMPACT_BELOW, monkeypatch)
        for key in dense:
            assert torch.equal(dense[key], compact[key]), (seed, key)
            assert torch.equal(dense[key], switched[key]), (seed, key)


def test_engine_masks_equal_dense_path_float64(monkeypatch) -> None:
    model = nets.seeded(nets.ResCNN, seed=4)
    config = PruneConfig(sparsity=0.99, input_shape=(1, 3, 8, 8), iterations=10)
    dense = run(model, config, -1.0, monkeypatch, "float64")
    compact = run(model, config, 1.0, monkeypatch, "float64")
    assert all(torch.equal(dense[k], compact[k]) for k in dense)
