"""The scoring passes score each blocking op by its documented linear part (synflow.linearise).

Each rule is checked against the same network written with that linear part as plain modules and
scored by the independent reference (tests/synflow/reference.py), for eager, scripted and traced
models; then on the mobile nets the issue names.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from synflow import PruneConfig, prune
from synflow.masks import Masks
from synflow.scorers.synflow import SynFlowScorer
from tests.synflow import nets
from tests.synflow.input_nets import SumOfRows
from tests.synflow.reference import synflow_scores


def _engine_scores(module, shape, how="eager", precision="float32"):
    loaded = nets.as_loaded(module, how, shape)
    ctx, params = nets.scoring_context(loaded, shape, precision)
    scorer = SynFlowScorer(ctx)
    with scorer:
        scores = scorer.score(Masks.dense(params))
    return scores, scorer


def _reference_scores(module, shape):
    masks = {
        n: torch.ones_like(p, dtype=torch.bool)
        for n, p in module.named_parameters()
        if n.endswith("weight") and p.dim() > 1
    }
    return synflow_scores(module, masks, shape)[0]


class Act(nn.Module):
    """Linear - activation - Linear; `act` is a module or a function of one tensor."""

    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(6, 8), nn.Linear(8, 3), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FrozenGate(nn.Module):
    """The documented gate, written with autograd: (s + c) / (2c), c = max(s) held constant."""

    def forward(self, s):
        c = s.max().detach()
        return (s + c) / (2 * c)


class Gated(nn.Module):
    """Squeeze-excitation shape: x * gate(fc(x))."""

    def __init__(self, gate):
        super().__init__()
        self.fc1, self.se, self.fc2, self.gate = (
            nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3), gate,
        )  # fmt: skip

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * self.gate(self.se(h)))


class Affine(nn.Module):
    """LayerNorm's documented linear part: x * gamma + beta (the pass takes |.| of both)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x):
        return x * self.weight + self.bias


class Attention(nn.Module):
    """Single-head attention with separate q/k/v layers; `normalise` maps logits to weights."""

    def __init__(self, normalise=None):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(4, 4) for _ in range(4))
        self.normalise = normalise

    def forward(self, x):
        logits = self.q(x) @ self.k(x).transpose(1, 2)
        weights = torch.softmax(logits, -1) if self.normalise is None else self.normalise(logits)
        return self.out(weights @ self.v(x))


def _frozen_rows(logits):
    return logits / logits.sum(-1, keepdim=True).detach()


def _close(ours, ref):
    """Every tensor the engine prunes scores as the reference's (the reference also scores
    tensors this engine may leave dense, such as embeddings)."""
    assert ours and set(ours) <= set(ref)
    for key in ours:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-5, atol=0, msg=key)


@pytest.mark.parametrize(
    "act,linear_part",
    [
        (nn.ReLU6(), nn.ReLU()),
        (nn.Hardtanh(0.0, 2.0), nn.ReLU()),
        (nn.Hardtanh(-1.0, 1.0), nn.Identity()),
        (nn.SiLU(), nn.Identity()),
        (nn.Hardswish(), nn.Identity()),
        (nn.GELU(), nn.Identity()),
        (nn.GELU(approximate="tanh"), nn.Identity()),
        (nn.Tanh(), nn.Identity()),
        (nn.ELU(), nn.Identity()),
    ],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("how", ["eager", "script", "trace"])
def test_ramps_score_as_their_linear_part(act, linear_part, how):
    model = nets.seeded(Act, seed=1, act=act)
    twin = nets.seeded(Act, seed=1, act=linear_part)
    ours, scorer = _engine_scores(model, (1, 6), how)
    _close(ours, _reference_scores(twin, (1, 6)))
    assert scorer.linearised, "the activation was not replaced"


@pytest.mark.parametrize("gate", [nn.Sigmoid(), nn.Hardsigmoid()], ids=["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("how", ["eager", "script"])
def test_gates_score_as_frozen_scale_linear_gates(gate, how):
    model = nets.seeded(Gated, seed=2, gate=gate)
    ours, _ = _engine_scores(model, (1, 6), how)
    _close(ours, _reference_scores(nets.seeded(Gated, seed=2, gate=FrozenGate()), (1, 6)))
    assert bool(ours["se.weight"].gt(0).all()), "the gate's layer must carry flow"


def test_layer_norm_scores_as_its_affine_part():
    torch.manual_seed(3)
    model = Act(nn.LayerNorm(8))
    with torch.no_grad():
        model.act.weight.uniform_(0.5, 1.5)
        model.act.bias.uniform_(-0.5, 0.5)
    ours, _ = _engine_scores(model, (1, 6), "script")
    twin = Act(Affine(model.act))
    twin.load_state_dict(model.state_dict())
    _close(ours, _reference_scores(twin, (1, 6)))
    assert all(bool(s.gt(0).all()) for s in ours.values())


def test_attention_scores_queries_and_keys_on_linear_logits():
    """Identical tokens: softmax gives q and k exactly zero gradient; the frozen-row-sum rule
    scores them, and equals the reference written with that rule."""
    model = nets.seeded(Attention, seed=4)
    ours, _ = _engine_scores(model, (1, 5, 4), "script")
    twin = nets.seeded(Attention, seed=4, normalise=_frozen_rows)
    _close(ours, _reference_scores(twin, (1, 5, 4)))
    assert bool(ours["q.weight"].gt(0).all()) and bool(ours["k.weight"].gt(0).all())
    plain = _reference_scores(model, (1, 5, 4))  # what softmax alone gives
    assert float(plain["q.weight"].max()) == pytest.approx(
        0.0, abs=1e-3 * float(ours["q.weight"].max())
    )


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(7, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.emb(x.long()))


def test_embedding_lookup_is_the_sum_of_all_rows():
    model = nets.seeded(Tokens, seed=5)
    ours, scorer = _engine_scores(model, (1, 3), "script")
    twin = nets.seeded(Tokens, seed=5)
    twin.emb = SumOfRows(model.emb)
    _close(ours, _reference_scores(twin, (1, 3)))
    assert scorer.linearised.get("embedding") == 1


def test_plain_relu_networks_replace_nothing():
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=3))
    _, scorer = _engine_scores(model, (1, 3, 8, 8), "script")
    assert scorer.linearised == {}


def test_rescaling_stays_exact_through_the_substitutes():
    """Gates and LayerNorm keep the network homogeneous: auto rescales a deep gated net that
    overflows float32 and its masks equal float64's."""
    layers = []
    for _ in range(40):
        layers += [nn.Linear(16, 16), nn.SiLU()]
    model = nets.seeded(lambda: nn.Sequential(*layers, nn.LayerNorm(16), nn.Linear(16, 4)))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.uniform_(-2.0, 2.0)  # gain 16: R ~ 2^160 after 40 layers
    config = PruneConfig(sparsity=0.9, input_shape=(1, 16), iterations=4)
    auto = prune(nets.as_loaded(model), config, precision="auto")
    exact = prune(nets.as_loaded(model), config, precision="float64")
    assert auto.precision == "float32" and auto.scale is not None, auto.precision_note
    for key in exact.masks:
        assert torch.equal(auto.masks[key], exact.masks[key]), key


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_b0", "mobilenet_v3_small"])
def test_mobile_nets_prune_at_sparsity_0_9(arch):
    """ReLU6, hardswish, SiLU and the squeeze-excitation gates no longer block the flow: no
    layer scores zero, none is emptied, and the count is exact."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    config = PruneConfig(sparsity=0.9, input_shape=(1, 3, 32, 32), iterations=3)
    result = prune(nets.as_loaded(model), config)
    assert result.zero_score_layers == {}
    assert [k for k, m in result.masks.items() if not m.any()] == []
    total = sum(m.numel() for m in result.masks.values())
    kept = sum(int(m.sum()) for m in result.masks.values())
    assert total - kept == int((1 - 0.1) * total) or total - kept == int(0.9 * total)
