"""granularity=channel (physically smaller models) and N:M masks, on real torchvision models.

Random init, small inputs: the checks are structural (shapes, couplings, counts), so the size of
the input does not change what they prove.
"""

from __future__ import annotations

import json
import math
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
import torchvision
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from synflow.config import PruneConfig
from synflow.errors import InvalidModelError, NoPrunableParametersError
from synflow.io.onnx import load_onnx
from synflow.pipeline import prune_file
from synflow.structured.channels import WEIGHT_TYPES, prune_channels
from synflow.structured.nm import check_groups
from synflow.structured.scoring import RegistryScores

SHAPE = (1, 3, 32, 32)


def _onnx(module: nn.Module, path, shape=SHAPE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.ones(shape),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"])  # fmt: skip
    return path


def _synflow_scores(shape=SHAPE) -> RegistryScores:
    from synflow.inputs import InputSpec

    return RegistryScores("synflow", "onnx", (InputSpec(shape),), device=torch.device("cpu"),
                          precision="auto", seed=0)  # fmt: skip


def _weights(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, WEIGHT_TYPES)}


# --- channel mode on the three architectures ----------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "vgg11_bn"])
def test_channel_synflow_shrinks_torchvision_models(arch):
    torch.manual_seed(0)
    module = getattr(torchvision.models, arch)(num_classes=10).eval()
    x = torch.ones(SHAPE)
    macs0, params0 = tp.utils.count_ops_and_params(module, x)
    run = prune_channels(module, x, _synflow_scores(), density=0.5, iterations=2)
    y = module(x)
    assert y.shape == (1, 10) and bool(torch.isfinite(y).all())
    macs1, params1 = tp.utils.count_ops_and_params(module, x)
    assert macs1 < 0.5 * macs0 and params1 < 0.5 * params0
    assert run.groups > 0 and run.history[-1] == pytest.approx(0.5, abs=0.02)
    layers = _weights(module)
    for name, (before, kept) in run.channels.items():
        out = layers[name].out_features if isinstance(layers[name], nn.Linear) else (
            layers[name].out_channels)  # fmt: skip
        assert out == kept == run.alive_out[name].numel()
        if name in run.fixed_layers:
            assert kept == before  # the classifier's outputs are the model's outputs
        else:  # local scope: exactly C0 - floor(C0 / 2) in every group
            assert kept == before - math.floor(0.5 * before), name


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_channel_job_on_onnx_reports_what_the_written_model_is(tmp_path, arch):
    torch.manual_seed(0)
    path = _onnx(getattr(torchvision.models, arch)(num_classes=10), tmp_path / "m.onnx")
    config = PruneConfig(sparsity=0.5, granularity="channel", iterations=2)
    report = prune_file(path, config, tmp_path / "out")
    s = report["structured"]
    assert s["macs"]["after"] < s["macs"]["before"] and s["groups"] > 0
    written = tmp_path / "out" / "model.onnx"
    graph = onnx.load(str(written))
    assert [i.name for i in graph.graph.input] == ["image"]
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"image": torch.ones(SHAPE).numpy()})
    assert list(y.shape) == s["output_shapes"][0] == [1, 10]
    assert torch.isfinite(torch.from_numpy(y)).all()
    reloaded = load_onnx(written)
    macs, params = tp.utils.count_ops_and_params(reloaded.module, torch.ones(SHAPE))
    assert macs == s["macs"]["after"]
    # the exporter stores equal tensors once (the zero biases of BN folded at random init)
    assert params <= s["parameters"]["after"] < s["parameters"]["before"]
    # per layer: the written model's weights have the reported channels; masks say which
    masks = load_file(tmp_path / "out" / "masks.safetensors")
    rows = {r["name"]: r for r in report["layers"]}
    kept = {c["key"]: c["kept"] for c in s["channels"]}
    for key, mask in masks.items():
        assert int(mask.sum()) == rows[key]["kept"]
        assert int(mask.flatten(1).any(1).sum()) == kept[key]
    assert sorted(kept.values()) == sorted(
        m.weight.shape[0] for m in _weights(reloaded.module).values()
    )
    latency = s["latency"]
    assert latency["onnxruntime_cpu_ms"]["after"] > 0 and latency["torch_cpu_ms"]["before"] > 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["structured"] == s


# --- coupled groups -------------------------------------------------------------------------------


class Coupled(nn.Module):
    """A residual add, a concat and a depthwise convolution, in one small net."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 12, 1)
        self.dw = nn.Conv2d(20, 20, 3, padding=1, groups=20)
        self.pw = nn.Conv2d(20, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + torch.relu(self.res(x))
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        return self.fc(x.mean((2, 3)))


def test_coupled_groups_prune_together():
    torch.manual_seed(0)
    module = Coupled().eval()
    x = torch.ones(1, 3, 8, 8)
    run = prune_channels(module, x, _synflow_scores((1, 3, 8, 8)), density=0.5, iterations=3)
    assert module(x).shape == (1, 5)
    out, inp = run.alive_out, run.alive_in
    # residual add: both operands keep the same channels, and so do BN and the next layers
    assert torch.equal(out["stem"], out["res"]) and out["stem"].numel() == 8
    assert module.bn.num_features == 8 and module.bn.running_mean.numel() == 8
    assert torch.equal(inp["res"], out["stem"]) and torch.equal(inp["left"], out["stem"])
    # concat then depthwise: the depthwise layer keeps exactly the concat's surviving slices
    concat = torch.cat([out["left"], out["right"] + 8])
    assert torch.equal(out["dw"], concat) and module.dw.groups == concat.numel()
    assert torch.equal(inp["pw"], concat)
    # the depthwise layer couples both concat branches into one group of 20: half of it stays,
    # split between the branches by score
    assert out["left"].numel() + out["right"].numel() == 10
    assert min(out["left"].numel(), out["right"].numel()) >= 1
    assert torch.equal(inp["fc"], out["pw"]) and module.fc.out_features == 5
    assert run.fixed_layers == ["fc"]


def test_one_channel_floor_is_reported():
    module = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    run = prune_channels(module.eval(), torch.ones(1, 3, 8, 8),
                         _synflow_scores((1, 3, 8, 8)), density=0.01, iterations=2)  # fmt: skip
    assert run.channels["0"] == (2, 1) and run.floor_layers == ["0"]
    assert module(torch.ones(1, 3, 8, 8)).shape == (1, 3)


# --- models that cannot be restructured ---------------------------------------------------


def test_torchscript_upload_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(Coupled().eval()), str(path))
    config = PruneConfig(sparsity=0.5, granularity="channel", input_shape=(1, 3, 8, 8))
    with pytest.raises(InvalidModelError, match=r"dynamo=False"):
        prune_file(path, config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_without_a_removable_channel_is_refused(tmp_path):
    path = _onnx(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), tmp_path / "m.onnx", (1, 3, 2, 2))
    with pytest.raises(InvalidModelError, match="no channel group"):
        prune_file(path, PruneConfig(sparsity=0.5, granularity="channel"), tmp_path / "out")


# --- N:M masks ------------------------------------------------------------------------------


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_in_every_group(tmp_path, nm):
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=16).eval()
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    n, m = nm
    config = PruneConfig(granularity=f"{n}:{m}", iterations=4, input_shape=SHAPE)
    report = prune_file(path, config, tmp_path / "out")
    masks = load_file(tmp_path / "out" / "masks.safetensors")
    s = report["structured"]
    assert s["all_groups_valid"] and s["dense_layers"] == [
        {"name": "conv1.weight", "reason": f"its input dimension (3) is not a multiple of M={m}"}
    ]
    for key in s["grouped_layers"]:
        mask = masks[key]
        groups = mask.movedim(1, -1).reshape(-1, m)
        assert bool((groups.sum(1) == n).all()), key
        assert check_groups(mask, n, m)
    assert bool(masks["conv1.weight"].all())
    assert "not measured" in s["semi_structured"]["gpu_speedup"]
    fc = {r["name"]: r["reason"] for r in s["semi_structured"]["not_convertible"]}
    if nm == (2, 4):  # 16 x 512: too few rows for the kernels
        assert fc["fc.weight"].startswith("shape 16x512: rows must be a multiple of 64")
    else:
        assert fc["fc.weight"] == "the sparse kernels run 2:4 only"


def test_nm_masks_follow_the_flow_not_the_index():
    """Within a group the kept weights are the highest-scoring ones: a 1-layer net whose flow is
    |w|, so the kept pair of each group is its two largest |w|."""
    from synflow.engine import prune
    from synflow.model import LoadedModel

    torch.manual_seed(3)
    lin = nn.Linear(8, 4, bias=False)
    loaded = LoadedModel(format="torchscript", module=torch.jit.script(nn.Sequential(lin)),
                         source=None)  # fmt: skip
    result = prune(loaded, PruneConfig(granularity="2:4", iterations=1, input_shape=(1, 8)))
    mask = result.masks["0.weight"]
    w = lin.weight.detach().abs().reshape(-1, 4)
    top = torch.zeros_like(w, dtype=torch.bool).scatter_(1, w.topk(2, dim=1).indices, True)
    assert torch.equal(mask.reshape(-1, 4), top)


def test_nm_configuration_is_validated():
    assert PruneConfig(granularity="2:4").density == 0.5
    assert PruneConfig(granularity="2:4", sparsity=0.5).granularity == "2:4"
    for bad in (
        {"granularity": "4:2"},
        {"granularity": "0:4"},
        {"granularity": "2:64"},
        {"granularity": "2:4", "sparsity": 0.9},
        {"granularity": "rows", "sparsity": 0.5},
    ):
        with pytest.raises(ValidationError):
            PruneConfig(**bad)  # fmt: skip
    with pytest.raises(ValidationError, match="exactly one"):
        PruneConfig(granularity="channel")


def test_nm_without_groupable_weights_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(3, 5))), str(path))
    config = PruneConfig(granularity="2:4", input_shape=(1, 3))
    with pytest.raises(NoPrunableParametersError, match="multiple of 4"):
        prune_file(path, config, tmp_path / "out")


@pytest.mark.parametrize("method", ["erk", "snip", "grasp"])
def test_channel_granularity_refuses_methods_that_cannot_rank_channels(method):
    with pytest.raises(ValueError, match="cannot rank channels with " + method):
        PruneConfig(sparsity=0.5, granularity="channel", method=method)


def test_interleaved_ms_times_the_runs_in_turn():
    """Every round runs each model once, so a change of load between rounds hits all alike."""
    from synflow.structured import latency

    calls: list[str] = []
    ms = latency.interleaved_ms(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(ms) == {"a", "b"} and all(v >= 0.0 for v in ms.values())
