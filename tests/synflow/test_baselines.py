"""ERK, SynFlow-L2, SNIP and GraSP against plain references on tiny networks.

The references are written out by hand: SNIP's gradient by the chain rule of a two-layer ReLU
net (no autograd), SynFlow-L2's path sums as matrix products, GraSP's Hessian-gradient product
by torch.autograd.functional.hvp on a flat-vector function (not the scorer's double backward),
and ERK's densities from the formula. Masks are compared as the sets of the highest scores.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from synflow.calibration import Calibration
from synflow.config import PruneConfig
from synflow.engine import prune
from synflow.model import LoadedModel
from synflow.schedule import density_at, prune_count
from synflow.scorers.erk import erk_densities, layer_counts

IN, HID, OUT, BATCH = 6, 5, 4, 12


def two_layer(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HID, bias=bias), nn.ReLU(), nn.Linear(HID, OUT, bias=bias))


def loaded(module: nn.Module) -> LoadedModel:
    return LoadedModel(format="torchscript", module=module.eval(), source=Path("<memory>"))


def batch(seed: int = 1) -> Calibration:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, IN, generator=gen)
    return Calibration(x, torch.randint(0, OUT, (BATCH,), generator=gen))


def keep_top(scores: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """The kept sets of one global round: all but the floor((1 - d) N) lowest scores."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    kept = flat.numel() - prune_count(flat.numel(), density)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:kept]] = True
    out, offset = {}, 0
    for key, s in scores.items():
        out[key] = chosen[offset : offset + s.numel()].view(s.shape)
        offset += s.numel()
    return out


def engine_masks(module, method, density, calibration=None, **config):
    cfg = PruneConfig(sparsity=1 - density, method=method, **config)
    return prune(loaded(module), cfg, calibration=calibration).masks


def snip_reference(net: nn.Sequential, cal: Calibration) -> dict[str, torch.Tensor]:
    """|W * dL/dW| by the chain rule: L = mean cross-entropy of W2 relu(W1 x + b1) + b2."""
    w1, b1, w2, b2 = (p.detach().double() for p in net.parameters())
    x = cal.inputs.double()
    pre = x @ w1.T + b1
    h = pre.clamp(min=0)
    logits = h @ w2.T + b2
    delta = (logits.softmax(1) - nn.functional.one_hot(cal.labels, OUT).double()) / len(x)
    g2 = delta.T @ h
    g1 = ((delta @ w2) * (pre > 0)).T @ x
    return {"0.weight": (w1 * g1).abs(), "2.weight": (w2 * g2).abs()}


@pytest.mark.parametrize("density", [0.5, 0.2])
def test_snip_keeps_the_highest_connection_sensitivity(density):
    net, cal = two_layer(), batch()
    masks = engine_masks(net, "snip", density, cal)
    expected = keep_top(snip_reference(net, cal), density)
    for key, mask in expected.items():
        assert torch.equal(masks[key], mask), key


def grasp_reference(net: nn.Sequential, cal: Calibration, temperature=200.0):
    """theta * Hg, H and g of L(theta) = CE(logits / T), from a function of one flat vector."""
    w1, b1, w2, b2 = (p.detach().double() for p in net.parameters())
    n1 = w1.numel()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        a = theta[:n1].view_as(w1)
        b = theta[n1:].view_as(w2)
        logits = torch.relu(cal.inputs.double() @ a.T + b1) @ b.T + b2
        return nn.functional.cross_entropy(logits / temperature, cal.labels)

    theta = torch.cat([w1.flatten(), w2.flatten()])
    g = torch.autograd.functional.jacobian(loss, theta)
    _, hg = torch.autograd.functional.hvp(loss, theta, g)
    score = theta * hg
    return {"0.weight": score[:n1].view_as(w1), "2.weight": score[n1:].view_as(w2)}


@pytest.mark.parametrize("density", [0.5, 0.2])
def test_grasp_removes_the_highest_minus_theta_hg(density):
    net, cal = two_layer(seed=3), batch(seed=4)
    masks = engine_masks(net, "grasp", density, cal)
    reference = grasp_reference(net, cal)
    # the paper removes the highest -theta*Hg: the reference keeps the highest theta*Hg
    expected = keep_top(reference, density)
    for key, mask in expected.items():
        assert torch.equal(masks[key], mask), key
    # the sign matters: keeping the lowest instead would give a different set
    flipped = keep_top({k: -v for k, v in reference.items()}, density)
    assert any(not torch.equal(flipped[k], expected[k]) for k in expected)


def synflow_l2_reference(net: nn.Sequential, masks: dict[str, torch.Tensor]):
    """theta^2 * dR/d(theta^2) with R = 1' (W2^2 (W1^2 1 + b1^2) + b2^2), pruned weights 0."""
    w1, b1, w2, _ = (p.detach().double() for p in net.parameters())
    s1 = (w1 * masks["0.weight"]) ** 2
    s2 = (w2 * masks["2.weight"]) ** 2
    hidden = s1.sum(1) + b1**2  # flow reaching each hidden unit (the input is all ones)
    downstream = s2.sum(0)  # d R / d hidden
    return {"0.weight": s1 * downstream[:, None], "2.weight": s2 * hidden[None, :]}


@pytest.mark.parametrize("iterations", [1, 4])
def test_synflow_l2_is_synflow_on_squared_weights(iterations):
    net = two_layer(seed=5)
    density = 0.15
    masks = engine_masks(net, "synflow-l2", density, input_shape=(1, IN), iterations=iterations)
    expected = {k: torch.ones_like(p, dtype=torch.bool) for k, p in
                (("0.weight", net[0].weight), ("2.weight", net[2].weight))}  # fmt: skip
    for t in range(1, iterations + 1):
        scores = synflow_l2_reference(net, expected)
        scores = {k: torch.where(expected[k], s, -math.inf) for k, s in scores.items()}
        expected = keep_top(scores, density_at(density, t, iterations, "exponential"))
    for key, mask in expected.items():
        assert torch.equal(masks[key], mask), key
    # and it is not SynFlow: |W| instead of W^2 ranks differently here
    plain = engine_masks(net, "synflow", density, input_shape=(1, IN), iterations=iterations)
    assert any(not torch.equal(plain[k], masks[k]) for k in masks)


def test_erk_densities_follow_the_formula():
    shapes = {"a": (30, 20), "b": (10, 30), "c": (8, 4, 3, 3)}
    density = 0.1
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: sum(s) / sizes[k] for k, s in shapes.items()}
    eps = density * sum(sizes.values()) / sum(raw[k] * sizes[k] for k in shapes)
    got = erk_densities(shapes, density)
    for k in shapes:
        assert got[k] == pytest.approx(eps * raw[k])
    assert sum(got[k] * sizes[k] for k in shapes) == pytest.approx(density * sum(sizes.values()))
    # a layer that would exceed density 1 stays dense and the others share the rest
    dense = erk_densities({"small": (2, 2), "big": (100, 100)}, 0.5)
    assert dense["small"] == 1.0
    assert dense["big"] == pytest.approx((0.5 * 10_004 - 4) / 10_000)


def test_erk_masks_have_the_layer_counts_and_are_random_within_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(),
                        nn.Linear(10, 4))  # fmt: skip
    density = 0.2
    params = {f"{i}.weight": net[i].weight for i in (0, 2, 4)}
    sizes = {k: p.numel() for k, p in params.items()}
    total = sum(sizes.values())
    keep = total - prune_count(total, density)
    counts = layer_counts(sizes, erk_densities({k: tuple(p.shape) for k, p in params.items()},
                                               keep / total), keep)  # fmt: skip
    assert sum(counts.values()) == keep
    first = engine_masks(net, "erk", density, seed=1)
    second = engine_masks(net, "erk", density, seed=2)
    for key in params:
        assert int(first[key].sum()) == counts[key] == int(second[key].sum())
    assert any(not torch.equal(first[k], second[k]) for k in params)
    # the smallest layer is the densest, as ERK intends
    assert first["4.weight"].float().mean() > first["0.weight"].float().mean()
