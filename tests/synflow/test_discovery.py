"""Prunable = used as a weight: every weight kind is found from the ops the model runs.

Each case is a small model, pruned for real; its masks must hold exactly the weights named, with
the floor count rule applied to their total size.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synflow import PruneConfig, prune
from synflow.discovery import EXCLUDED, INTEGER_DTYPE, NOT_WEIGHT_OPERAND, OPTION_OFF, UNUSED
from synflow.errors import NoPrunableParametersError
from synflow.io.torchscript import save_torchscript
from synflow.model import LoadedModel
from tests.synflow import nets


def loaded(module: nn.Module, how: str, shape) -> LoadedModel:
    if how == "fx":
        gm = torch.fx.symbolic_trace(module.eval())
        return LoadedModel(format="torchscript", module=gm, source=Path("<fx>"))
    if how == "trace":
        module = torch.jit.trace(module.eval(), torch.ones(shape), check_trace=False)
        return nets.as_loaded(module, "eager")
    return nets.as_loaded(module, how, shape)


class RawLinear(nn.Module):
    """A raw parameter used through F.linear."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))
        self.b = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return F.linear(x, self.w, self.b)


class MyConv(nn.Conv2d):
    """A user subclass: not found by class name, found by use."""


class MyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MyConv(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


class Products(nn.Module):
    """matmul, mm, bmm, addmm, baddbmm and einsum, each on its own raw parameter."""

    def __init__(self):
        super().__init__()
        self.matmul_w = nn.Parameter(torch.rand(4, 4))
        self.mm_w = nn.Parameter(torch.rand(4, 4))
        self.bmm_w = nn.Parameter(torch.rand(1, 4, 4))
        self.addmm_w = nn.Parameter(torch.rand(4, 4))
        self.addmm_b = nn.Parameter(torch.rand(4))
        self.baddbmm_w = nn.Parameter(torch.rand(1, 4, 4))
        self.einsum_w = nn.Parameter(torch.rand(4, 4))

    def forward(self, x):  # x: (1, 4)
        x = x @ self.matmul_w
        x = torch.mm(x, self.mm_w)
        x = torch.bmm(x.unsqueeze(0), self.bmm_w).squeeze(0)
        x = torch.addmm(self.addmm_b, x, self.addmm_w)
        x = torch.baddbmm(x.new_zeros(1, 1, 4), x.unsqueeze(0), self.baddbmm_w).squeeze(0)
        return torch.einsum("bi,ij->bj", x, self.einsum_w)


class Attention(nn.Module):
    def __init__(self, kdim=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim)
        self.kdim = kdim

    def forward(self, x):
        kv = x if self.kdim is None else x[..., : self.kdim]
        return self.attn(x, kv, kv)[0]


class Recurrent(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](
            4, 5, num_layers=2, batch_first=True
        )

    def forward(self, x):
        return self.rnn(x)[0]


class Cell(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](4, 5)
        self.kind = kind

    def forward(self, x):
        out = self.cell(x)
        return out[0] if isinstance(out, tuple) else out


class TokenModel(nn.Module):
    """Token ids from the float all-ones input; an embedding and an embedding bag."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.bag = nn.EmbeddingBag(10, 4, mode="sum")
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        ids = x.long()
        return self.head(self.emb(ids).sum(1) + self.bag(ids))


class BilinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bil = nn.Bilinear(3, 3, 4)

    def forward(self, x):
        return self.bil(x, x)


def _conv(kind: str) -> nn.Module:
    layer = getattr(nn, kind)
    return nn.Sequential(layer(2, 3, 3, padding=1), nn.ReLU(), layer(3, 2, 3, padding=1))


CASES = {
    # name: (builder, input shape, expected prunable keys, hows)
    "raw_linear": (RawLinear, (1, 5), ["w"], ("eager", "script", "trace", "fx")),
    "subclass_conv": (MyConvNet, (1, 3, 6, 6), ["conv.weight"], ("eager", "script", "fx")),
    "products": (
        Products,
        (1, 4),
        ["matmul_w", "mm_w", "bmm_w", "addmm_w", "baddbmm_w", "einsum_w"],
        ("eager", "trace", "fx"),
    ),
    "mha": (
        Attention,
        (1, 3, 8),
        ["attn.in_proj_weight", "attn.out_proj.weight"],
        ("eager", "script", "fx"),
    ),
    "mha_kdim": (
        lambda: Attention(kdim=4),
        (1, 3, 8),
        ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"],
        ("eager",),
    ),
    "bilinear": (BilinearNet, (1, 3), ["bil.weight"], ("eager", "script", "trace")),
    "embedding_tables_dense": (TokenModel, (1, 3), ["head.weight"], ("eager", "trace")),
}
CONVS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
for _kind in CONVS:
    _dims = int(_kind[-2])
    CASES[_kind.lower()] = (
        lambda k=_kind: _conv(k),
        (1, 2) + (4,) * _dims,
        ["0.weight", "2.weight"],
        ("eager", "script", "trace"),
    )
for _kind in ("lstm", "gru", "rnn"):
    CASES[_kind] = (
        lambda k=_kind: Recurrent(k),
        (1, 3, 4),
        [f"rnn.weight_{m}_l{i}" for i in range(2) for m in ("ih", "hh")],
        ("eager", "trace", "fx"),
    )
    CASES[_kind + "_cell"] = (
        lambda k=_kind: Cell(k),
        (1, 4),
        ["cell.weight_ih", "cell.weight_hh"],
        ("eager", "trace", "fx"),
    )

PARAMS = [(name, how) for name, case in CASES.items() for how in case[3]]


def _prune(model: LoadedModel, shape, sparsity=0.5, **options):
    config = PruneConfig(sparsity=sparsity, input_shape=shape, iterations=2, **options)
    return prune(model, config, precision="float32")


@pytest.mark.parametrize(("case", "how"), PARAMS, ids=[f"{c}-{h}" for c, h in PARAMS])
def test_every_weight_kind_is_pruned(case, how):
    builder, shape, expected, _ = CASES[case]
    module = nets.seeded(builder, seed=1).eval()
    sizes = dict(module.named_parameters())
    result = _prune(loaded(module, how, shape), shape)
    assert list(result.masks) == expected, result.dense
    total = sum(sizes[k].numel() for k in expected)
    assert result.masks.total == total
    assert result.masks.total - result.masks.kept == math.floor(0.5 * total)
    assert result.discovery == "ops"
    for key in expected:
        assert result.masks[key].shape == sizes[key].shape


def test_biases_of_every_op_with_prune_bias():
    """conv/addmm bias operands, a parameter added to a product's output, fused RNN and
    attention biases."""

    class Biases(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3)
            self.w = nn.Parameter(torch.rand(3, 3))
            self.added = nn.Parameter(torch.rand(3))  # added to the output of x @ w
            self.lstm = nn.LSTM(3, 3, batch_first=True)

        def forward(self, x):
            x = self.conv(x).transpose(1, 2)  # (1, 2, 3)
            x = x @ self.w + self.added
            return self.lstm(x)[0]

    module = nets.seeded(Biases).eval()
    result = _prune(nets.as_loaded(module, "eager"), (1, 2, 4), prune_bias=True)
    assert list(result.masks) == [  # named_parameters order: own parameters, then children
        "w",
        "added",
        "conv.weight",
        "conv.bias",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
    ]
    roles = {t.key: t.role for t in result.tensors}
    assert roles["added"] == "bias" and roles["lstm.bias_ih_l0"] == "bias"


@pytest.mark.parametrize("how", ["eager", "trace"])
def test_prune_embedding_option(how):
    module = nets.seeded(TokenModel).eval()
    shape = (1, 3)
    dense = _prune(loaded(module, how, shape), shape)
    assert list(dense.masks) == ["head.weight"]
    reasons = {d.key: d.reason for d in dense.dense}
    assert reasons["emb.weight"] == OPTION_OFF["embedding"]
    assert reasons["bag.weight"] == OPTION_OFF["embedding"]
    result = _prune(loaded(module, how, shape), shape, prune_embedding=True)
    assert list(result.masks) == ["emb.weight", "bag.weight", "head.weight"]
    assert {t.key: t.role for t in result.tensors}["emb.weight"] == "embedding"
    assert result.masks.total == 40 + 40 + 12
    assert result.masks.total - result.masks.kept == math.floor(0.5 * 92)


def test_norm_weights_with_prune_batchnorm():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm2d(4, affine=True),
        nn.Flatten(),
        nn.LayerNorm(64),
        nn.Linear(64, 2),
    )
    model = nets.seeded(lambda: model).eval()
    shape = (1, 3, 6, 6)
    found = nets.as_loaded(model, "script").discover(
        prune_batchnorm=True, inputs=(torch.ones(shape),)
    )
    roles = {t.key: t.role for t in found.prunable}
    assert roles == {
        "0.weight": "weight",
        "1.weight": "norm_weight",
        "2.weight": "norm_weight",
        "3.weight": "norm_weight",
        "5.weight": "norm_weight",
        "6.weight": "weight",
    }
    both = nets.as_loaded(model, "script").discover(
        prune_bias=True, prune_batchnorm=True, inputs=(torch.ones(shape),)
    )
    assert {t.key for t in both.prunable} == {n for n, _ in model.named_parameters()}


def test_dense_parameters_and_reasons():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.scale = nn.Parameter(torch.ones(4, 1, 1))  # multiplied in: not a weight
            self.pos = nn.Parameter(torch.rand(4, 4, 4))  # added to activations
            self.steps = nn.Parameter(torch.tensor([3]), requires_grad=False)  # integer
            self.spare = nn.Parameter(torch.rand(2))  # never used
            self.fc = nn.Linear(64, 2)

        def forward(self, x):
            x = self.conv(x) * self.scale
            x = torch.cat([x[:, :2], x[:, 2:]], 1) + self.pos
            return self.fc(x.flatten(1))

    model = nets.seeded(Mixed).eval()
    shape = (1, 3, 6, 6)
    for how in ("eager", "script", "fx"):
        model_in = loaded(model, how, shape)
        found = model_in.discover(exclude=("fc.*",), inputs=(torch.ones(shape),))
        assert [t.key for t in found.prunable] == ["conv.weight"]
        reasons = {d.key: d.reason for d in found.dense}
        expected = {
            "conv.bias": OPTION_OFF["bias"],
            "scale": NOT_WEIGHT_OPERAND,
            "pos": NOT_WEIGHT_OPERAND,
            "steps": INTEGER_DTYPE,
            "spare": UNUSED,
            "fc.weight": EXCLUDED,
            "fc.bias": OPTION_OFF["bias"],
        }
        if how == "fx":  # symbolic_trace keeps only the parameters the graph reads
            assert not {"steps", "spare"} & set(dict(model_in.module.named_parameters()))
            del expected["steps"], expected["spare"]
        assert reasons == expected, how
        shapes = {d.key: d.shape for d in found.dense}
        assert shapes["pos"] == (4, 4, 4)


def test_dense_list_reaches_the_report(tmp_path):
    from synflow.pipeline import prune_file

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.scale = nn.Parameter(torch.ones(4, 1, 1))

        def forward(self, x):
            return self.conv(x) * self.scale

    path = tmp_path / "m.pt"
    save_torchscript(nets.as_loaded(nets.seeded(Scaled)), path)
    config = PruneConfig(sparsity=0.5, input_shape=(1, 3, 5, 5), iterations=1)
    report = prune_file(path, config, tmp_path / "out")
    assert report["discovery"] == "ops"
    assert [r["name"] for r in report["layers"]] == ["conv.weight"]
    assert report["dense"] == [
        {"name": "scale", "shape": [4, 1, 1], "total": 4, "reason": NOT_WEIGHT_OPERAND},
        {"name": "conv.bias", "shape": [4], "total": 4, "reason": OPTION_OFF["bias"]},
    ]


def test_prunable_order_is_parameter_order():
    class Reversed(nn.Module):
        """Declared a, b; used b then a: the order is the declaration's, as named_parameters."""

        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            return self.a(self.b(x))

    for how in ("eager", "script", "trace", "fx"):
        model = loaded(nets.seeded(Reversed), how, (1, 4))
        found = model.prunable(inputs=(torch.ones(1, 4),))
        assert [t.key for t in found] == [n for n, _ in model.module.named_parameters()], how
        # symbolic_trace registers submodules in the order the graph uses them
        expected = ["b.weight", "a.weight"] if how == "fx" else ["a.weight", "b.weight"]
        assert [t.key for t in found] == expected, how


def test_without_input_the_layer_type_rule_applies():
    model = nets.seeded(nets.ResCNN).eval()
    found = nets.as_loaded(model).discover()
    assert found.method == "layer type"
    by_ops = nets.as_loaded(model).discover(inputs=(torch.ones(1, 3, 8, 8),))
    assert [t.key for t in found.prunable] == [t.key for t in by_ops.prunable]
    assert [(d.key, d.reason) for d in found.dense] == [(d.key, d.reason) for d in by_ops.dense]


def test_nothing_used_as_a_weight_is_a_clear_error():
    class OnlyScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    config = PruneConfig(sparsity=0.5, input_shape=(1, 3), iterations=1)
    with pytest.raises(NoPrunableParametersError, match="uses as weights"):
        prune(nets.as_loaded(OnlyScale()), config)


def test_discovery_does_not_change_the_model():
    model = nets.randomize_batchnorm(nets.seeded(nets.ResCNN)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lm = LoadedModel(format="torchscript", module=model, source=Path("<memory>"))
    lm.discover(inputs=(torch.ones(1, 3, 8, 8),))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats untouched (eval pass)


def test_onnx_keeps_its_initializer_rule_and_lists_the_dense(tmp_path):
    """ONNX: keys are initializer names, the finder is the initializer rule, and the report's
    dense list gives each bias its reason."""
    import onnx

    from synflow.pipeline import prune_file
    from tests.synflow.onnx_nets import build, export

    path = export(build("mlp"), torch.ones(1, 20), tmp_path / "mlp.onnx", "legacy17")
    config = PruneConfig(sparsity=0.5, iterations=1)
    report = prune_file(path, config, tmp_path / "out")
    assert report["discovery"] == "onnx"
    names = {t.name for t in onnx.load(str(path)).graph.initializer}
    pruned = {r["name"] for r in report["layers"]}
    dense = {d["name"]: d["reason"] for d in report["dense"]}
    assert pruned | set(dense) == names and not pruned & set(dense)
    assert dense and set(dense.values()) == {OPTION_OFF["bias"]}
