"""One-row linear layers scored from their gradient's factors (`synflow.outer`): the same scores,
bit for bit, as autograd's weight gradient times the weight.

At three levels: one routed `F.linear` against autograd (inputs of every rank, with and without
bias, the routing refused where autograd's arithmetic would differ); the scorer's passes with
routing on and off over several rounds of pruning (dense and compact rounds, power-of-two
rescaling, weights read twice; eager, `.pt2` and ONNX); and the engine's masks with routing on
and off."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synflow import kernels
from synflow.config import PruneConfig
from synflow.engine import prune
from synflow.io.onnx import load_onnx
from synflow.io.pt2 import read_pt2
from synflow.masks import Masks
from synflow.outer import OuterScoring, SharedWeight, one_row
from synflow.scorers import synflow as synflow_scorer
from synflow.scorers.synflow import SynFlowScorer
from tests.synflow import nets, onnx_nets
from tests.synflow.kernel_paths import kernel_path  # noqa: F401 (fixture)
from tests.synflow.pt2_files import export

pytestmark = pytest.mark.usefixtures("kernel_path")


def in_place_scorer(extremes: dict):
    """The dense rule: weight *= outer(g, x), extremes noted per weight."""

    def score(w: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
        row = torch.zeros(2, dtype=w.dtype)
        with torch.no_grad():
            kernels.mul_outer(w.detach(), g, x, row)
        extremes[id(w)] = row

    return score


def chain(x: torch.Tensor, weights, biases) -> torch.Tensor:
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        x = F.linear(x, w, b)
        if i < len(weights) - 1:
            x = torch.relu(x)
    return x


def layers(widths, bias: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for a, b in itertools.pairwise(widths):
        # few levels: ties and exact zeros; |.| as the linearised network has them
        weights.append(nn.Parameter(torch.randint(0, 4, (b, a), generator=g).float() / 3))
        biases.append(torch.rand(b, generator=g) if bias else None)
    return weights, biases


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 70), (70,), (1, 1, 70)])
def test_routed_chain_scores_equal_autograd_bit_for_bit(shape, bias: bool) -> None:
    widths = (70, 90, 33, 5)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3)) + 0.5
    weights, biases = layers(widths, bias, seed=1)
    chain(x, weights, biases).sum().backward()
    expected = [w.detach() * w.grad for w in weights]

    routed_weights, _ = layers(widths, bias, seed=1)
    extremes: dict = {}
    mode = OuterScoring({id(w) for w in routed_weights}, in_place_scorer(extremes))
    with mode:
        out = chain(x, routed_weights, biases)
    out.sum().backward()
    assert mode.routed == {id(w) for w in routed_weights}
    for w, want in zip(routed_weights, expected, strict=True):
        assert w.grad is None  # no weight-sized gradient was formed
        assert torch.equal(w.detach(), want)
        low, high = extremes[id(w)]
        assert (float(low), float(high)) == (float(want.min()), float(want.max()))


@pytest.mark.parametrize("shape", [(1, 30), (30,), (1, 1, 30)])
def test_input_and_bias_gradients_equal_autograd(shape) -> None:
    w = torch.rand(40, 30) + 0.1
    x1 = (torch.rand(shape) + 0.5).requires_grad_(True)
    b1 = torch.rand(40).requires_grad_(True)
    seed = torch.rand(40).reshape((*shape[:-1], 40))
    F.linear(x1, w.clone().requires_grad_(True), b1).backward(seed)
    x2 = x1.detach().clone().requires_grad_(True)
    b2 = b1.detach().clone().requires_grad_(True)
    routed = nn.Parameter(w.clone())
    mode = OuterScoring({id(routed)}, lambda *_: None)
    with mode:
        out = F.linear(x2, routed, b2)
    out.backward(seed)
    assert mode.routed == {id(routed)}
    assert torch.equal(x1.grad, x2.grad)
    assert torch.equal(b1.grad, b2.grad)


def test_exported_graph_is_routed(tmp_path) -> None:
    model = nets.seeded(nets.mlp, seed=2, widths=(20, 32, 10)).eval()
    loaded = read_pt2(export(model, (torch.ones(1, 20),), tmp_path / "m.pt2"))
    weights = [p for n, p in loaded.module.named_parameters() if n.endswith("weight")]
    mode = OuterScoring({id(w) for w in weights}, lambda *_: None)
    with mode:
        loaded.module(torch.ones(1, 20))
    assert mode.routed == {id(w) for w in weights}


def test_routing_refused_where_autograd_differs() -> None:
    w = torch.ones(4, 3)
    assert one_row(torch.ones(1, 3), w)
    assert not one_row(torch.ones(2, 3), w)  # two rows: dR/dW is a sum over them
    assert not one_row(torch.ones(3, 1).t(), w)  # column-major: mm's other backward branch
    assert not one_row(torch.ones(1, 1), torch.ones(4, 1))  # one column: the same
    assert not one_row(torch.ones(1, 3, dtype=torch.float64), w)
    assert not one_row(torch.ones(1, 3), torch.ones(0, 3))  # no output
    p = nn.Parameter(torch.ones(4, 3))
    mode = OuterScoring({id(p)}, lambda *_: None)
    with mode:
        F.linear(torch.ones(5, 3), p)
    assert mode.routed == set()


def test_weight_read_twice_raises() -> None:
    p = nn.Parameter(torch.ones(3, 3))
    with pytest.raises(SharedWeight) as raised, OuterScoring({id(p)}, lambda *_: None):
        F.linear(F.linear(torch.ones(1, 3), p), p)
    assert raised.value.weight is p


class Twice(nn.Module):
    """One linear layer applied twice (shared weight)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


class ReadElsewhere(Twice):
    """A weight read by its linear layer and by another op that gives it a gradient."""

    def forward(self, x):
        return self.head(torch.relu(self.fc(x))) + self.fc.weight.sum() / 64


class Wide(nn.Module):
    """Linear layers deep and wide enough to overflow float32 on the all-ones input, so that
    the run rescales by powers of two."""

    def __init__(self):
        super().__init__()
        self.body = nets.mlp(widths=(64,) + (256,) * 12 + (10,))

    def forward(self, x):
        return self.body(x * 2.0**100)


def masks_over_rounds(loaded, shape, route: bool, monkeypatch, rounds: int, compact: float):
    """Each round's masks (alternating scopes), and how many weights the last pass routed."""
    monkeypatch.setattr(synflow_scorer, "ROUTE_LINEAR", route)
    monkeypatch.setattr(synflow_scorer, "COMPACT_BELOW", compact)
    ctx, params = nets.scoring_context(loaded, shape, "auto")
    masks = Masks.dense(params)
    out = []
    with SynFlowScorer(ctx) as scorer:
        for r in range(rounds):
            density = 0.6 ** (r + 1)
            masks = scorer.next_masks(masks, density, "global" if r % 2 else "local")
            out.append({k: m.clone() for k, m in masks.items()})
        routed, scale = scorer.routed_linears, scorer.scale
    return out, routed, scale


@pytest.mark.parametrize("compact", [-1.0, 1.0, 0.3])
@pytest.mark.parametrize(
    ("build", "shape", "how", "routed"),
    [
        (lambda: nets.seeded(nets.mlp, seed=5, widths=(30, 64, 64, 10)), (1, 30), "eager", 3),
        (lambda: nets.seeded(nets.mlp, seed=6), (20,), "eager", 3),  # 1-D input
        (lambda: nets.seeded(nets.ResCNN, seed=7), (1, 3, 8, 8), "eager", 1),
        (lambda: nets.seeded(Twice, seed=8), (1, 12), "eager", 1),  # fc read twice: not routed
        (lambda: nets.seeded(ReadElsewhere, seed=9), (1, 12), "eager", 1),  # the same
        (lambda: nets.seeded(Wide, seed=10), (1, 64), "eager", 13),
        (lambda: nets.seeded(nets.mlp, seed=11), (1, 20), "pt2", 3),
        (lambda: nets.seeded(nets.mlp, seed=12), (1, 20), "onnx", 3),  # Gemm -> nn.Linear
    ],
)
def test_scorer_masks_with_routing_equal_without(
    build, shape, how, routed, compact, monkeypatch, tmp_path
) -> None:
    def loaded():
        model = build().eval()
        if how == "pt2":
            return read_pt2(export(model, (torch.ones(shape),), tmp_path / "m.pt2"))
        if how == "onnx":
            path = onnx_nets.export(model, torch.ones(shape), tmp_path / "m.onnx", "legacy17")
            return load_onnx(path)
        return nets.as_loaded(model, "eager")

    plain, none, scale = masks_over_rounds(loaded(), shape, False, monkeypatch, 8, compact)
    masks, count, routed_scale = masks_over_rounds(loaded(), shape, True, monkeypatch, 8, compact)
    assert none == 0
    assert count == routed
    assert routed_scale == scale
    for r, (a, b) in enumerate(zip(masks, plain, strict=True)):
        for key in a:
            assert torch.equal(a[key], b[key]), (r, key)
    if build().__class__ is Wide:
        assert scale is not None  # the rescaled float32 path was exercised


@pytest.mark.parametrize("scope", ["global", "local"])
def test_engine_masks_with_routing_equal_without(scope: str, monkeypatch) -> None:
    from tests.synflow.test_alive import tied_model

    model = tied_model(lambda: nets.mlp(widths=(40, 64, 64, 10)), seed=3)
    config = PruneConfig(sparsity=0.98, input_shape=(1, 40), iterations=12, scope=scope)
    runs = []
    for route in (False, True):
        monkeypatch.setattr(synflow_scorer, "ROUTE_LINEAR", route)
        runs.append(prune(nets.as_loaded(model, "eager"), config).masks)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
