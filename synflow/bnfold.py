"""BatchNorm folded into the layer before it, for the SynFlow scoring passes only.

In eval mode a BatchNorm of the linearised network is an affine map per channel, y = s * x + t
with s = |gamma| / sqrt(|var| + eps) and t = |beta| - s * |mean| (the live, linearised tensors).
When its input is the output of a convolution or linear layer and nothing else reads that output,
scaling the layer's weight by s (per output channel) and adding t to its bias gives the same
network up to rounding, and the BatchNorm becomes the identity: its forward pass, its backward
pass and one activation-sized tensor per layer disappear. The scores are unchanged, because for
W' = s * W the chain rule gives W' * dR/dW' = W * dR/dW: the score the backward pass leaves in the
folded weight is the score of the original one.

Two ways to find the pairs, both proving that the norm is the output's only reader:

- **Graphs of aten calls** (`.pt2` programs: `ep.module()`): a conv/linear node whose only user is
  an eval-mode batch-norm node. The passes run a copy of the graph without that node (sharing
  the parameters); a shift t where the layer has no bias becomes the layer's bias operand.
- **Modules** (eager models, onnx2torch graphs): one no-grad run with hooks on the layers and a
  dispatch mode that counts, once a layer has returned, the ops that read its output. The norm's
  forward becomes the identity (plus t where the layer has no bias) while folded.

TorchScript modules (their submodules run no Python hooks and their graphs are not fx) keep their
BatchNorms: the passes are the same, only slower.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
#: aten layer ops whose output channel c is linear in weight[c] plus bias[c]: weight operand 1,
#: bias operand 2
LAYER_OPS = frozenset(
    {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.linear.default}
)
#: aten.convolution is a layer op too when not transposed (operand 6)
CONVOLUTION = aten.convolution.default


@dataclass(eq=False)
class Fold:
    """One BatchNorm folded into the layer that alone feeds it (live tensors, by reference)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    gamma: torch.Tensor | None
    beta: torch.Tensor | None
    mean: torch.Tensor
    var: torch.Tensor
    eps: float
    #: the eager norm module whose forward is bypassed (module-found folds only)
    norm: torch.nn.Module | None = None
    #: graph-found folds without a bias: the folded graph's attribute holding t
    shift_attr: str | None = None
    scale: torch.Tensor | None = None  # s, one per output channel (set by `Folding.apply`)
    shift: torch.Tensor | None = None  # t, or None where it is exactly zero

    def channel_view(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (one value per output channel) shaped to broadcast over the layer's weight."""
        return t.view(-1, *([1] * (self.weight.dim() - 1)))

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.gamma, self.beta, self.mean, self.var) if t is not None]


@dataclass(eq=False)
class Folding:
    """The folds of one model, and the module the folded passes run."""

    folds: list[Fold]
    graph_module: torch.nn.Module | None = None  # graph-found: the copy without the norms
    by_weight: dict[int, Fold] = field(init=False)

    def __post_init__(self) -> None:
        self.by_weight = {id(f.weight): f for f in self.folds}

    def runner(self, module: torch.nn.Module) -> torch.nn.Module:
        return self.graph_module if self.graph_module is not None else module

    def apply(self, prunable: set[int]) -> None:
        """After the live tensors were (re)linearised: s and t from the norms' live tensors (in
        their dtype and power-of-two scale: the numbers the norm itself would apply), folded
        into the layers' biases and into the weights that are not rebuilt each round (the
        prunable ones are scaled by the caller as it rebuilds them)."""
        with torch.no_grad():
            for fold in self.folds:
                s = torch.rsqrt(fold.var + fold.eps)
                if fold.gamma is not None:
                    s = s * fold.gamma
                t = -s * fold.mean
                if fold.beta is not None:
                    t = t + fold.beta
                fold.scale = s
                fold.shift = t if bool(t.ne(0).any()) else None
                if id(fold.weight) not in prunable:
                    fold.weight.mul_(fold.channel_view(s))
                if fold.bias is not None:
                    fold.bias.mul_(s)
                    if fold.shift is not None:
                        fold.bias.add_(fold.shift)
                self._bypass(fold)

    def _bypass(self, fold: Fold) -> None:
        shift = None if fold.bias is not None else fold.shift
        if fold.norm is not None:
            if shift is None:
                fold.norm.forward = _identity  # type: ignore[method-assign]
            else:
                view = shift.view(-1, *([1] * (fold.weight.dim() - 2)))
                fold.norm.forward = functools.partial(torch.add, other=view)  # type: ignore
        elif fold.shift_attr is not None:
            zero = torch.zeros_like(fold.scale) if shift is None else shift
            setattr(self.graph_module, fold.shift_attr, zero)

    def restore(self) -> None:
        """The norms compute again (the live tensors are the caller's to restore)."""
        for fold in self.folds:
            if fold.norm is not None:
                fold.norm.__dict__.pop("forward", None)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def find_folding(
    module: torch.nn.Module, xs: tuple, prunable: set[int], run_output=None
) -> Folding | None:
    """The exact folds of `module`, or None. `prunable`: ids of the tensors being scored; a norm
    with a scored tensor, or a layer whose bias is scored, is left alone (its own gradient is
    needed). `xs` and `run_output` (what the caller does with the output): the module-found
    folds' proving run."""
    if isinstance(module, torch.jit.ScriptModule):
        return None
    if isinstance(module, torch.fx.GraphModule) and any(_layer_node(n) for n in module.graph.nodes):
        try:
            folding = _graph_folding(module, prunable)
        except Exception:  # an optimisation only: a graph it cannot rewrite runs unfolded
            folding = None
    else:
        folding = _module_folding(module, xs, prunable, run_output)
    return folding if folding is not None and folding.folds else None


# -- graphs of aten calls ---------------------------------------------------------------------
def _layer_node(n: torch.fx.Node) -> bool:
    if n.op != "call_function":
        return False
    if n.target in LAYER_OPS:
        return True
    return n.target is CONVOLUTION and len(n.args) > 6 and n.args[6] is False


def _norm_node(n: torch.fx.Node) -> bool:
    """An eval-mode batch norm with running statistics: aten.batch_norm(training=False)."""
    return (
        n.op == "call_function"
        and n.target is aten.batch_norm.default
        and len(n.args) >= 8
        and n.args[5] is False
        and all(isinstance(a, torch.fx.Node) for a in n.args[3:5])
    )


def _graph_folding(gm: torch.fx.GraphModule, prunable: set[int]) -> Folding | None:
    def attr(a) -> torch.Tensor | None:
        if a is None:
            return None
        if not (isinstance(a, torch.fx.Node) and a.op == "get_attr"):
            raise LookupError
        return functools.reduce(getattr, a.target.split("."), gm)

    reads: Counter[int] = Counter()  # id(tensor) -> how many operands read it
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            reads[id(attr(n))] += len(n.users)
    chosen: list[tuple[str, str, Fold]] = []
    for norm in gm.graph.nodes:
        if not _norm_node(norm):
            continue
        layer = norm.args[0]
        if not (isinstance(layer, torch.fx.Node) and _layer_node(layer)):
            continue
        val = layer.meta.get("val")
        if list(layer.users) != [norm] or len(layer.args) < 2 or val is None:
            continue
        operands = [layer.args[1], layer.args[2] if len(layer.args) > 2 else None]
        try:
            weight, bias = (attr(a) for a in operands)
            gamma, beta, mean, var = (attr(a) for a in norm.args[1:5])
        except LookupError:
            continue
        if any(t is not None and reads[id(t)] != 1 for t in (weight, bias)):
            continue  # a weight or bias another node reads too
        linear = layer.target is aten.linear.default
        if val.dim() != (2 if linear else weight.dim()):
            continue  # the norm's channels (dim 1) must be the layer's output channels
        fold = Fold(weight, bias, gamma, beta, mean, var, float(norm.args[7]))
        if _foldable(fold, prunable, int(val.shape[1])):
            chosen.append((layer.name, norm.name, fold))
    if not chosen:
        return None
    graph = copy.deepcopy(gm.graph)
    nodes = {n.name: n for n in graph.nodes}
    for i, (layer_name, norm_name, fold) in enumerate(chosen):
        layer, norm = nodes[layer_name], nodes[norm_name]
        if fold.bias is None:
            fold.shift_attr = f"_synflow_folded_shift_{i}"
            with graph.inserting_before(layer):
                shift = graph.get_attr(fold.shift_attr)
            args = list(layer.args) + [None] * (3 - len(layer.args))
            args[2] = shift
            layer.args = tuple(args)
        norm.replace_all_uses_with(layer)
        graph.erase_node(norm)
    folding = Folding([fold for _, _, fold in chosen])
    for fold in folding.folds:
        if fold.shift_attr is not None:
            setattr(gm, fold.shift_attr, torch.zeros(fold.weight.shape[0]))
    try:
        folding.graph_module = torch.fx.GraphModule(gm, graph)
    finally:
        for fold in folding.folds:
            if fold.shift_attr is not None:
                delattr(gm, fold.shift_attr)  # the copy keeps its own; the model stays as given
    return folding


def _foldable(fold: Fold, prunable: set[int], channels: int) -> bool:
    return (
        fold.weight.shape[0] == channels
        and all(t.numel() == channels for t in fold.tensors())
        and (fold.bias is None or fold.bias.numel() == channels)
        and not any(id(t) in prunable for t in fold.tensors())
        and (fold.bias is None or id(fold.bias) not in prunable)
    )


# -- modules ----------------------------------------------------------------------------------
def _layer_module(m: torch.nn.Module) -> bool:
    """Transposed convolutions keep their output channels on dim 1: not folded."""
    if isinstance(m, _ConvNd):
        return not m.transposed and isinstance(m.weight, torch.Tensor)
    return isinstance(m, torch.nn.Linear) and isinstance(m.weight, torch.Tensor)


def _norm_module(m: torch.nn.Module) -> bool:
    """A BatchNorm whose eval-mode forward uses its running statistics (an affine map)."""
    return (
        isinstance(m, _BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
        and m.running_var is not None
    )


class _ReadCounter(TorchDispatchMode):
    """Counts, per storage, the ops that read a tensor of it once it is being watched."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: set[int] = set()
        self.readers: dict[int, list[str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.watched:
            seen = set()
            for leaf in tree_leaves((args, kwargs)):
                ptr = leaf.data_ptr() if isinstance(leaf, torch.Tensor) else None
                if ptr in self.watched and ptr not in seen:
                    seen.add(ptr)
                    self.readers.setdefault(ptr, []).append(str(func))
        return func(*args, **kwargs)


def _module_folding(module, xs, prunable, run_output) -> Folding | None:
    layers = [m for m in module.modules() if _layer_module(m)]
    norms = [m for m in module.modules() if _norm_module(m)]
    if not layers or not norms:
        return None
    owners: Counter[int] = Counter()
    for m in module.modules():
        for p in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            owners[id(p)] += 1
    counter = _ReadCounter()
    calls: Counter[int] = Counter()
    produced: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}  # data_ptr -> (layer, out)
    fed: dict[int, torch.Tensor] = {}  # id(norm) -> its input

    def after_layer(m, args, out):
        calls[id(m)] += 1
        if isinstance(out, torch.Tensor):
            produced[out.data_ptr()] = (m, out)
            counter.watched.add(out.data_ptr())

    def before_norm(m, args):
        calls[id(m)] += 1
        if args and isinstance(args[0], torch.Tensor):
            fed[id(m)] = args[0]

    hooks = [m.register_forward_hook(after_layer) for m in layers]
    hooks += [m.register_forward_pre_hook(before_norm) for m in norms]
    try:
        with torch.no_grad(), counter:
            output = module(*xs)
            if run_output is not None:
                run_output(output)
    except Exception:  # the scoring pass raises the model's own error; nothing folds meanwhile
        return None
    finally:
        for h in hooks:
            h.remove()
    folds = []
    for norm in norms:
        x = fed.get(id(norm))
        source = produced.get(x.data_ptr()) if x is not None else None
        if source is None or source[1] is not x or calls[id(norm)] != 1:
            continue
        layer, out = source
        readers = counter.readers.get(out.data_ptr(), [])
        if (
            calls[id(layer)] != 1
            or len(readers) != 1
            or "batch_norm" not in readers[0]
            or out.dim() != (2 if isinstance(layer, torch.nn.Linear) else layer.weight.dim())
            or any(owners[id(t)] != 1 for t in layer.parameters(recurse=False))
        ):
            continue
        fold = Fold(
            layer.weight, layer.bias, norm.weight, norm.bias, norm.running_mean,
            norm.running_var, float(norm.eps), norm=norm,
        )  # fmt: skip
        if all(owners[id(t)] == 1 for t in fold.tensors()) and _foldable(
            fold, prunable, int(out.shape[1])
        ):
            folds.append(fold)
    return Folding(folds)
