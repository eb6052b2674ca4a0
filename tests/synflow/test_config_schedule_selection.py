"""Pure pieces: request validation, the density schedule, the count rule, selection."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from synflow.config import PruneConfig, parse_shape
from synflow.masks import Masks
from synflow.schedule import density_at, prune_count
from synflow.selection import select

ROOT = Path(__file__).resolve().parents[2]


def test_config_is_importable_without_torch():
    code = "import sys, synflow.config, synflow; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1,3,224,224", (1, 3, 224, 224)),
        ("1x3x32x32", (1, 3, 32, 32)),
        ("[1, 20]", (1, 20)),
        ([1, 784], (1, 784)),
        (" 1, 3 ", (1, 3)),
    ],
)
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    "bad", ["1,0,3", "a,b", "[1, 2.5]", "[]", "[true, 2]", "1,-3", "1,3,x", "x1", "1,,3", "1;3"]
)
def test_parse_shape_rejects(bad):
    with pytest.raises(ValueError, match="input_shape"):
        parse_shape(bad)


def test_normalized_fills_defaults():
    cfg = PruneConfig(compression=100, input_shape="1,3,32,32", exclude="fc.*, head.*")
    data = cfg.normalized()
    assert data["iterations"] == 100 and data["density"] == pytest.approx(0.01)
    assert data["input_shape"] == [1, 3, 32, 32] and data["exclude"] == ["fc.*", "head.*"]
    assert PruneConfig(sparsity=0.5, method="magnitude").resolved_iterations == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"sparsity": 0.5, "compression": 2},
        {"sparsity": 1.0},
        {"compression": 0.9},
        {"compression": float("inf")},
        {"sparsity": 0.5, "method": "optimal-brain-damage"},
        {"sparsity": 0.5, "iterations": 0},
        {"sparsity": 0.5, "schedule": "cosine"},
        {"sparsity": 0.5, "unknown_field": 1},
    ],
)
def test_config_rejects(kwargs):
    with pytest.raises(ValidationError):
        PruneConfig(**kwargs)


def test_schedule_matches_reference_arithmetic():
    d, n = 1e-3, 100
    for t in (1, 37, 100):
        assert density_at(d, t, n, "exponential") == d ** ((t - 1 + 1) / n)
        assert density_at(d, t, n, "linear") == 1.0 - (1.0 - d) * (t / n)
    assert density_at(d, n, n, "exponential") == d
    with pytest.raises(ValueError):
        density_at(d, 0, n, "exponential")


def test_prune_count_is_floor_not_round():
    assert prune_count(10, 0.25) == 7  # 7.5 -> 7
    assert prune_count(3, 1 / 3) == math.floor((1 - 1 / 3) * 3)
    assert prune_count(272474, 0.001 ** (1 / 100)) == math.floor((1 - 0.001**0.01) * 272474)


def test_select_global_and_local_and_pruned_first():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0, 3.0]), "b": torch.tensor([[0.5, 9.0], [3.0, 2.0]])}
    masks = Masks.from_dict(
        {
            "a": torch.tensor([True, True, True, True]),
            "b": torch.tensor([[True, True], [True, False]]),
        }
    )
    out = select(scores, masks, 0.5)  # 4 of 8 go: b[1,1] (pruned), 0.5, 1.0, then first tied 3.0
    assert out["a"].tolist() == [True, False, False, True]
    assert out["b"].tolist() == [[False, True], [True, False]]
    local = select(scores, masks, 0.5, scope="local")
    assert local["a"].tolist() == [True, False, False, True]
    assert local["b"].tolist() == [[False, True], [True, False]]


def test_select_random_agrees_with_sorting():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        # no zero scores: those ties are spread over the tensors (tests/synflow/test_zero_ties.py)
        scores = {k: torch.randint(1, 6, (7, 3), generator=gen).float() for k in "xyz"}
        masks = Masks.from_dict({k: torch.rand(7, 3, generator=gen) > 0.3 for k in "xyz"})
        d = float(torch.rand((), generator=gen)) * 0.6
        out = select(scores, masks, d)
        flat = torch.cat([torch.where(masks[k], scores[k], -math.inf).flatten() for k in "xyz"])
        order = torch.sort(flat, stable=True).indices[: math.floor((1 - d) * flat.numel())]
        expected = torch.ones_like(flat, dtype=torch.bool)
        expected[order] = False
        assert torch.equal(torch.cat([out[k].flatten() for k in "xyz"]), expected)
