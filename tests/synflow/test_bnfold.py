"""BatchNorm folded into the layer before it for the scoring passes: same scores, to 1e-5.

Each case scores the same model and masks twice, folded and not (`FOLD_BATCH_NORM`), over
several rounds of pruning, and checks how many norms were folded: the cheaper passes must be
found where they are exact and never taken where they are not."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from synflow import PruneConfig, prune
from synflow.io.pt2 import read_pt2
from synflow.masks import Masks
from synflow.scorers import synflow as synflow_scorer
from synflow.scorers.synflow import SynFlowScorer
from tests.synflow import nets
from tests.synflow.pt2_files import export

RTOL = 1e-5


def _rounds(loaded, shape, fold: bool, monkeypatch, rounds: int = 3, precision="float32"):
    """Scores of `rounds` rounds, each round's masks pruned from the previous scores (the
    unfolded run's masks are replayed in the folded one, so both score the same masks)."""
    monkeypatch.setattr(synflow_scorer, "FOLD_BATCH_NORM", fold)
    ctx, params = nets.scoring_context(loaded, shape, precision)
    masks = Masks.dense(params)
    out = []
    with SynFlowScorer(ctx) as scorer:
        for r in range(rounds):
            scores = scorer.score(masks)
            out.append((scores, {k: m.clone() for k, m in masks.items()}))
            gen = torch.Generator().manual_seed(r)
            for m in masks.values():  # prune a random half of what is alive
                m &= torch.rand(m.shape, generator=gen) < 0.5
        folded = scorer.folded_norms
    return out, folded


def _assert_same(a, b):
    for (sa, ma), (sb, mb) in zip(a, b, strict=True):
        for key in sa:
            assert torch.equal(ma[key], mb[key])
            ref = sb[key]
            assert torch.allclose(sa[key], ref, rtol=RTOL, atol=0), key
        assert any(bool((s > 0).any()) for s in sa.values())


def _compare(loaded_maker, shape, monkeypatch, expect_folded: int):
    plain, none = _rounds(loaded_maker(), shape, False, monkeypatch)
    folded, count = _rounds(loaded_maker(), shape, True, monkeypatch)
    assert none == 0
    assert count == expect_folded
    _assert_same(folded, plain)


def _resnet18():
    torch.manual_seed(0)
    return nets.randomize_batchnorm(torchvision.models.resnet18(num_classes=10), seed=1).eval()


def test_resnet18_eager_scores_unchanged(monkeypatch):
    """Every one of ResNet-18's 20 norms follows a bias-free conv: all fold, with non-zero
    means and shifts (the norm adds t)."""
    model = _resnet18()
    _compare(lambda: nets.as_loaded(model, "eager"), (1, 3, 32, 32), monkeypatch, 20)


def test_resnet18_pt2_scores_unchanged(monkeypatch, tmp_path):
    """The exported program's graph: the copy without the norm nodes gives t to the conv's
    bias operand."""
    path = export(_resnet18(), (torch.ones(1, 3, 32, 32),), tmp_path / "r18.pt2")
    _compare(lambda: read_pt2(path), (1, 3, 32, 32), monkeypatch, 20)


class ConvBias(nn.Module):
    """conv with a bias -> BN (folded into that bias); linear -> BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 8)
        self.bn1d = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(torch.relu(self.bn1d(self.fc(x))))


class ReadTwice(nn.Module):
    """The conv's output feeds the norm and a shortcut: folding would change the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        y = self.conv(x)
        x = torch.relu(self.bn(y) + y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ReturnsConvOutput(ReadTwice):
    """The conv's output is returned as it is besides the norm's: nothing else reads it in the
    forward, but R sums it."""

    def forward(self, x):
        y = self.conv(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.bn(y), 1), 1)), y


class BatchStatistics(ReadTwice):
    """A norm without running statistics normalises by the batch even in eval mode."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SharedConv(BatchStatistics):
    """One conv called twice (each call into its own norm): its weight cannot take two scales."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _randomized(cls):
    """Non-trivial statistics and affine parameters in every norm (as after training)."""
    torch.manual_seed(0)
    model = cls()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
    return model.eval()


CASES = [(ConvBias, 2), (ReadTwice, 0), (ReturnsConvOutput, 0), (SharedConv, 0)]


# a program with batch statistics is refused on upload (tests/synflow/test_pt2.py)
@pytest.mark.parametrize(
    ("how", "cls", "folded"),
    [("eager", c, n) for c, n in [*CASES, (BatchStatistics, 0)]]
    + [("pt2", c, n) for c, n in CASES],
)
def test_folds_only_where_exact(cls, folded, how, monkeypatch, tmp_path):
    model = _randomized(cls)
    shape = (2, 3, 8, 8)
    if how == "pt2":
        path = export(model, (torch.ones(shape),), tmp_path / "m.pt2")
        _compare(lambda: read_pt2(path), shape, monkeypatch, folded)
    else:
        _compare(lambda: nets.as_loaded(model, "eager"), shape, monkeypatch, folded)


def test_torchscript_keeps_its_norms(monkeypatch):
    """Scripted modules run no Python hooks: nothing is folded, the scores are the same."""
    model = _randomized(ConvBias)
    _compare(lambda: nets.as_loaded(model, "script"), (2, 3, 8, 8), monkeypatch, 0)


def test_prunable_norm_weights_are_not_folded(monkeypatch):
    """Pruning the norms' scales needs their own gradients: those norms stay."""
    monkeypatch.setattr(synflow_scorer, "FOLD_BATCH_NORM", True)
    loaded = nets.as_loaded(_randomized(ConvBias), "eager")
    ctx, params = nets.scoring_context(loaded, (2, 3, 8, 8), "float32", prune_batchnorm=True)
    with SynFlowScorer(ctx) as scorer:
        scores = scorer.score(Masks.dense(params))
        assert scorer.folded_norms == 0
    assert any(key.startswith("bn") for key in scores)


def test_model_restored_bit_for_bit_after_folded_run():
    """The folded passes change the live tensors and the norms' forward only while open."""
    model = _resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    out_before = model(x)
    prune(
        nets.as_loaded(model, "eager"),
        PruneConfig(sparsity=0.9, input_shape=(1, 3, 32, 32), iterations=5),
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(model(x), out_before)


def test_rescaled_folded_scores_are_exact_power_of_two_multiples(monkeypatch):
    """The degree trace for the power-of-two scale runs unfolded; the rescaled passes after it
    run folded, and s (scale-free) and t (scaled like the mean and shift it comes from) keep
    every score bit for bit 2^(a + b) times the unscaled folded one."""
    monkeypatch.setattr(synflow_scorer, "FOLD_BATCH_NORM", True)
    shape = (1, 3, 8, 8)
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN, seed=4), seed=4)
    loaded = nets.as_loaded(model, "eager")
    ctx, params = nets.scoring_context(loaded, shape, "float32")
    masks = Masks.dense(params)
    masks[next(iter(masks))].view(-1)[::3] = False
    with SynFlowScorer(ctx) as scorer:
        plain = scorer.score(masks)
        scorer.set_scale(masks, -70, -45)
        scaled = scorer.score(masks)
        assert scorer.folded_norms == 6  # the stem, two per block, the shortcut
    for key in plain:
        assert torch.equal(scaled[key], plain[key] * 2.0**-115), key
