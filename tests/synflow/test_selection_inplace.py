"""`select_inplace` (the engine's selection) must give exactly the masks of the simple `select`."""

from __future__ import annotations

import pytest
import torch

from synflow.masks import Masks, flat_buffer
from synflow.selection import select, select_inplace
from tests.synflow.kernel_paths import kernel_path  # noqa: F401 (fixture)

# every test on both paths of synflow.kernels (torch, and numpy in small chunks)
pytestmark = pytest.mark.usefixtures("kernel_path")

SHAPES = {"a": (7, 5), "b": (300,), "c": (4, 3, 3, 3), "d": (1,)}


def random_case(seed: int, ties: bool, zero: bool, flat: bool):
    g = torch.Generator().manual_seed(seed)
    if flat:
        _, scores = flat_buffer(SHAPES, torch.float32, "cpu")
        _, masks = flat_buffer(SHAPES, torch.bool, "cpu")
    else:
        scores = {k: torch.empty(s) for k, s in SHAPES.items()}
        masks = {k: torch.empty(s, dtype=torch.bool) for k, s in SHAPES.items()}
    for k in SHAPES:
        if ties:
            scores[k].copy_(torch.randint(0, 6, SHAPES[k], generator=g).float())
        else:
            scores[k].copy_(torch.rand(SHAPES[k], generator=g))
        masks[k].copy_(torch.rand(SHAPES[k], generator=g) < 0.7)
        if zero:
            scores[k].mul_(masks[k])  # pruned score exactly 0; alive zeros remain possible
    return scores, Masks.from_dict(masks)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("zero", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_equals_simple_select(flat: bool, zero: bool, ties: bool, scope: str) -> None:
    for seed in range(12):
        for density in (0.99, 0.7, 0.5, 0.31, 0.1, 0.01, 0.0):
            scores, masks = random_case(seed, ties, zero, flat)
            expected = select(
                {k: v.clone() for k, v in scores.items()}, masks.clone(), density, scope
            )
            got = select_inplace(scores, masks, density, scope, pruned_scores_zero=zero)
            for k in SHAPES:
                assert torch.equal(got[k], expected[k]), (seed, density, k)


def test_large_input_uses_bracket_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample too small to bracket well must still give the exact answer (the retry path)."""
    import synflow.selection as selection

    g = torch.Generator().manual_seed(1)
    _, scores = flat_buffer({"w": (200_000,), "v": (50_000,)}, torch.float32, "cpu")
    _, masks = flat_buffer({"w": (200_000,), "v": (50_000,)}, torch.bool, "cpu")
    for k in scores:
        scores[k].copy_(torch.randint(0, 1000, scores[k].shape, generator=g).float())
        masks[k].copy_(torch.rand(scores[k].shape, generator=g) < 0.5)
        scores[k].mul_(masks[k])
    for sample_size in (selection.SAMPLE_SIZE, 64):
        monkeypatch.setattr(selection, "SAMPLE_SIZE", sample_size)
        for density in (0.45, 0.2, 0.01):
            m = Masks.from_dict({k: v.clone() for k, v in masks.items()})
            expected = select({k: v.clone() for k, v in scores.items()}, m.clone(), density)
            got = select_inplace(
                {k: v.clone() for k, v in scores.items()}, m, density, pruned_scores_zero=True
            )
            assert all(torch.equal(got[k], expected[k]) for k in scores)
            assert got.kept == expected.kept
