"""Channel SynFlow: remove whole coupled channel groups, iteratively, so the model gets smaller.

A *group* is everything that must shrink together when one output channel of a convolution or
linear layer goes: its BatchNorm entries, the next layers' input channels, the other operands of
a residual add, the matching slice of a concat, the channels of a depthwise convolution.
Torch-Pruning's dependency graph finds the groups (`torch_pruning.DependencyGraph`); this module
scores, selects and tracks them.

Score of a channel = the sum of the scorer's per-weight scores over every weight of its group
(SynFlow: the synaptic flow through those weights, a conserved quantity, so sums over groups
compare across layers). Each round t scores the current (already smaller) model, then prunes
each group (local scope) or all groups together (global scope) down to
`kept = C0 - floor((1 - d_t) * C0)` channels, d_t on the usual schedule, C0 the group's channels
before the first round; every group keeps at least one channel, so no layer is removed and the
network stays connected. Local scope makes the kept-channel count of every group exact; the MAC
and parameter counts are measured, not targeted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from synflow.errors import InvalidModelError, PruningCanceled
from synflow.schedule import density_at

#: Layer types that own prunable channels (the roots of the groups) and whose weights are scored.
WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_OUT_FNS = (
    tp.prune_conv_out_channels,
    tp.prune_depthwise_conv_out_channels,
    tp.prune_linear_out_channels,
)
_IN_FNS = (
    tp.prune_conv_in_channels,
    tp.prune_depthwise_conv_in_channels,
    tp.prune_linear_in_channels,
)

#: module -> score tensor shaped like its weight (>= 0, higher = keep)
WeightScores = dict[nn.Module, torch.Tensor]
ScoreFn = Callable[[nn.Module], WeightScores]


@dataclass
class ChannelPruning:
    """What a run removed, in the original layers' index space."""

    module: nn.Module  # the pruned module (the one given, changed in place)
    #: layer name -> original output-channel / input-channel indices still present
    alive_out: dict[str, torch.Tensor]
    alive_in: dict[str, torch.Tensor]
    #: layer name -> (original, kept) output channels, for every scored layer
    channels: dict[str, tuple[int, int]]
    groups: int  # coupled groups that were candidates for pruning
    floor_layers: list[str]  # group roots that ended at one channel (the floor)
    fixed_layers: list[str]  # layers whose outputs were never pruned (model outputs, exclude)
    history: list[float] = field(default_factory=list)  # kept fraction of channels per round


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def build_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph, or a clear error where it cannot see the layers."""
    if isinstance(module, torch.jit.ScriptModule):
        raise InvalidModelError(
            "channel pruning needs the model's layers as torch modules; a TorchScript module "
            "hides them (its dependency graph is empty)"
        )
    try:
        graph = tp.DependencyGraph().build_dependency(
            module, example_inputs=list(inputs) if len(inputs) > 1 else inputs[0]
        )
    except Exception as exc:  # the tracer's own errors are of any type
        raise InvalidModelError(
            f"channel pruning could not trace the model's layers ({type(exc).__name__}: "
            f"{str(exc)[:300]}); use granularity unstructured or N:M for this model"
        ) from exc
    return graph


def output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """The weight layers whose outputs reach a model output without passing another weight
    layer: their output channels are the model's outputs, so they are never pruned."""
    found: list[nn.Module] = []
    seen: set[int] = set()
    frontier = [node for node in graph.module2node.values() if not node.outputs]
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, WEIGHT_TYPES):
            found.append(node.module)
            continue
        frontier.extend(node.inputs)
    return found


def group_importance(group, scores: WeightScores) -> torch.Tensor:
    """Sum of the weight scores of every channel of a group (indexed like the root's channels)."""
    size = len(group[0].idxs)
    total = torch.zeros(size, dtype=torch.float64)
    for i, (dep, idxs) in enumerate(group):
        layer, fn = dep.target.module, dep.handler
        score = scores.get(layer)
        if score is None:
            continue
        transposed = bool(getattr(layer, "transposed", False))
        if fn in _OUT_FNS:
            rows = score.transpose(0, 1) if transposed else score
        elif fn in _IN_FNS:
            rows = score if transposed else score.transpose(0, 1)
        else:
            continue
        local = rows.flatten(1).sum(1).to(torch.float64)
        groups = getattr(layer, "groups", 1)
        if fn in _IN_FNS and groups > 1:
            if groups == getattr(layer, "in_channels", -1):
                continue  # depthwise: its input channels are its output channels, scored above
            local = local.repeat(groups)
        root = torch.as_tensor(group[i].root_idxs, dtype=torch.long)
        total.index_add_(0, root, local[torch.as_tensor(idxs, dtype=torch.long)])
    return total


def _to_prune_local(imp: torch.Tensor, keep: int) -> list[int]:
    """Indices of the lowest scores beyond the `keep` best (ties: the lower index goes first)."""
    excess = imp.numel() - keep
    if excess <= 0:
        return []
    order = torch.sort(imp, stable=True).indices
    return sorted(order[:excess].tolist())


def _to_prune_global(imps: list[torch.Tensor], total_keep: int) -> list[list[int]]:
    """Lowest scores across all groups until `total_keep` channels remain, one kept per group."""
    current = sum(i.numel() for i in imps)
    excess = current - total_keep
    chosen: list[list[int]] = [[] for _ in imps]
    if excess <= 0:
        return chosen
    scores = torch.cat(imps)
    owner = torch.cat([torch.full((i.numel(),), g, dtype=torch.long) for g, i in enumerate(imps)])
    local = torch.cat([torch.arange(i.numel()) for i in imps])
    room = [i.numel() - 1 for i in imps]  # the floor: one channel stays
    for position in torch.sort(scores, stable=True).indices.tolist():
        g = int(owner[position])
        if room[g] == 0:
            continue
        chosen[g].append(int(local[position]))
        room[g] -= 1
        excess -= 1
        if excess == 0:
            break
    return [sorted(c) for c in chosen]


def _candidate_groups(graph, fixed: list[nn.Module]) -> list:
    return [
        g
        for g in graph.get_all_groups(ignored_layers=list(fixed), root_module_types=WEIGHT_TYPES)
        if len(g[0].idxs) > 0
    ]


def prune_channels(
    module: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    score: ScoreFn,
    *,
    density: float,
    iterations: int,
    schedule: str = "exponential",
    scope: str = "local",
    keep_layers: Callable[[str], bool] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ChannelPruning:
    """Prune `module` in place to `density` of each group's channels (local scope) or of all
    channels (global scope). `keep_layers(name)` marks layers whose outputs stay whole."""
    xs = _as_tuple(inputs)
    names = {m: n for n, m in module.named_modules()}
    graph = build_graph(module, xs)
    fixed = output_layers(graph)
    if keep_layers is not None:
        fixed += [m for m, n in names.items() if isinstance(m, WEIGHT_TYPES) and keep_layers(n)]
    layers = [m for m in names if isinstance(m, WEIGHT_TYPES)]
    original = {m: _out_channels(m) for m in layers}
    alive_out = {m: torch.arange(_out_channels(m)) for m in layers}
    alive_in = {m: torch.arange(_in_channels(m)) for m in layers}
    groups = _candidate_groups(graph, fixed)
    if not groups:
        raise InvalidModelError(
            "channel pruning found no channel group it may remove (every convolution or linear "
            "layer feeds the model's output directly, or is excluded); use granularity "
            "unstructured or N:M"
        )
    # C0 of a group: its root layer's channels before the first round (rounds may pick another
    # layer of a group as its root, so this is kept per layer, not per group)
    total0 = sum(original[g[0].dep.target.module] for g in groups)
    history: list[float] = []
    for t in range(1, iterations + 1):
        if should_cancel is not None and should_cancel():
            raise PruningCanceled(f"canceled before round {t} of {iterations}")
        d_t = density_at(density, t, iterations, schedule)
        scores = score(module)
        groups = _candidate_groups(graph, fixed)
        imps = [group_importance(g, scores) for g in groups]
        if scope == "global":
            keep_total = total0 - math.floor((1.0 - d_t) * total0)
            plan = _to_prune_global(imps, keep_total)
        else:
            plan = [
                _to_prune_local(imp, _kept_channels(original[g[0].dep.target.module], d_t))
                for g, imp in zip(groups, imps, strict=True)
            ]  # fmt: skip
        for g, idxs in zip(groups, plan, strict=True):
            if idxs:
                _prune_group(graph, g, idxs, alive_out, alive_in)
        kept = sum(_out_channels(g[0].dep.target.module) for g in groups)
        history.append(kept / total0)
        if progress is not None:
            progress(t, iterations, history[-1])
    roots = [g[0].dep.target.module for g in groups]
    return ChannelPruning(
        module=module,
        alive_out={names[m]: v for m, v in alive_out.items()},
        alive_in={names[m]: v for m, v in alive_in.items()},
        channels={names[m]: (original[m], _out_channels(m)) for m in layers},
        groups=len(roots),
        floor_layers=[names[m] for m in roots if _out_channels(m) == 1 and original[m] > 1],
        fixed_layers=[names[m] for m in fixed],
        history=history,
    )


def _kept_channels(c0: int, density: float) -> int:
    """Channels a group of `c0` keeps at `density`: the engine's floor rule, and at least one."""
    return max(1, c0 - math.floor((1.0 - density) * c0))


def _prune_group(graph, group, idxs: list[int], alive_out, alive_in) -> None:
    """Prune one group at `idxs` (the root's current index space) and record, per layer, which
    original channels remain."""
    root = group[0].dep
    pruning = graph.get_pruning_group(root.target.module, root.handler, idxs)
    for dep, local in pruning:
        layer = dep.target.module
        table = None
        if dep.handler in _OUT_FNS:
            table = alive_out
        elif dep.handler in _IN_FNS:
            table = alive_in
        if table is not None and layer in table:
            gone = torch.zeros(table[layer].numel(), dtype=torch.bool)
            gone[torch.as_tensor(sorted(set(local)), dtype=torch.long)] = True
            table[layer] = table[layer][~gone]
    pruning.prune()


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    return m.out_channels  # type: ignore[return-value]


def _in_channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.in_features
    return m.in_channels  # type: ignore[return-value]
