"""The engine against the independent reference in float64, and on cases with real threshold ties.

The reference (tests/synflow/reference.py) always took a dtype, but every comparison ran it in
float32; here its float64 masks are compared to the engine's `precision="float64"`. The tie
cases use weights of one magnitude (a power of two), so every product is exact and whole layers
score exactly the same: the count rule (floor, ties pruned in position order) decides.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from synflow import PruneConfig, prune
from tests.synflow import nets
from tests.synflow.reference import (
    density_schedule,
    prunable_names,
    reference_synflow,
    select_exact,
    synflow_scores,
)

CASES = {
    "mlp": (lambda: nets.mlp(bias=True), (1, 20)),
    "rescnn": (lambda: nets.randomize_batchnorm(nets.ResCNN(bias=True)), (1, 3, 8, 8)),
}


def _assert_equal(ours, ref):
    assert list(ours) == list(ref)
    for name in ref:
        assert torch.equal(ours[name], ref[name]), f"mask of {name} differs"


@pytest.mark.parametrize("how", ["eager", "script"])
@pytest.mark.parametrize("sparsity", [0.5, 0.99])
@pytest.mark.parametrize("case", list(CASES))
def test_float64_engine_equals_float64_reference(case, sparsity, how):
    builder, shape = CASES[case]
    model = nets.seeded(builder, seed=5).eval()
    expected = reference_synflow(copy.deepcopy(model), shape, 1 - sparsity, 8, dtype=torch.float64)
    config = PruneConfig(sparsity=sparsity, input_shape=shape, iterations=8)
    result = prune(nets.as_loaded(model, how, shape), config, precision="float64")
    assert result.precision == "float64"
    _assert_equal(result.masks, expected)


def equal_magnitude(module: nn.Module, magnitude: float = 0.5, seed: int = 0) -> nn.Module:
    """Every weight +-magnitude (random signs), biases likewise: exact arithmetic, many ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            signs = torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1
            p.copy_(signs * magnitude)
    return module


def ties_at_threshold(model, shape, density, iterations, dtype):
    """Rounds of the reference's own loop in which equal scores straddle the cut (the k-th
    and (k+1)-th lowest scores of the ranking are equal), so only the tie rule decides."""
    names = prunable_names(model)
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    rounds = []
    for t in range(1, iterations + 1):
        scores, _ = synflow_scores(model, masks, shape, dtype)
        d = density_schedule(density, t, iterations, "exponential")
        flat = torch.cat([scores[n].flatten() for n in names])
        alive = torch.cat([masks[n].flatten() for n in names])
        ranked = torch.sort(torch.where(alive, flat, torch.full_like(flat, -math.inf))).values
        k = math.floor((1.0 - d) * flat.numel())
        if 0 < k < flat.numel() and ranked[k - 1] == ranked[k] and ranked[k - 1] > -math.inf:
            rounds.append(t)
        masks = select_exact(scores, masks, d)
    return rounds


TIE_CASES = {
    "mlp": (lambda: nets.mlp(bias=False), (1, 20)),
    "plain_cnn": (lambda: nets.plain_cnn(bias=False), (1, 3, 8, 8)),
}


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("case", list(TIE_CASES))
def test_engine_equals_reference_through_real_ties(case, precision):
    builder, shape = TIE_CASES[case]
    model = equal_magnitude(nets.seeded(builder, seed=1)).eval()
    dtype = getattr(torch, precision)
    density, iterations = 0.2, 5
    tied_rounds = ties_at_threshold(copy.deepcopy(model), shape, density, iterations, dtype)
    assert tied_rounds, "the case must have a tie at a threshold for the test to mean anything"
    expected = reference_synflow(copy.deepcopy(model), shape, density, iterations, dtype=dtype)
    config = PruneConfig(sparsity=1 - density, input_shape=shape, iterations=iterations)
    for how in ("eager", "script", "trace"):
        result = prune(nets.as_loaded(model, how, shape), config, precision=precision)
        _assert_equal(result.masks, expected)
