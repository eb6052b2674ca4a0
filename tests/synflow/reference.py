"""A plain, obviously-correct SynFlow, written from DESIGN.md and the paper's code, for tests.

Slow on purpose: masks are separate tensors multiplied in through `torch.func.functional_call`
(as the reference code's masked layers do), selection sorts everything every round. Two count
rules are offered: the product's (exactly floor((1 - d_t) N) pruned, ties by position, via a
stable sort) and the paper code's (`score <= kthvalue`, which prunes every tie).
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call

CONV_LINEAR = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.LayerNorm)


def prunable_names(model: torch.nn.Module, bias: bool = False, batchnorm: bool = False):
    """Reference rule (Synaptic-Flow `masked_parameters`): module order, weight then bias."""
    names = []
    for mname, module in model.named_modules():
        ok = isinstance(module, CONV_LINEAR) or (batchnorm and isinstance(module, NORMS))
        if not ok:
            continue
        for pname, _ in module.named_parameters(recurse=False):
            if pname == "weight" or (pname == "bias" and bias):
                names.append(f"{mname}.{pname}" if mname else pname)
    return names


def ones(input_shape, dtype):
    """The all-ones forward arguments: a shape gives one floating input; a list of
    (shape, dtype name) one per argument, floating ones in `dtype`, integer ones in their own."""
    if input_shape and isinstance(input_shape[0], int):
        return (torch.ones(input_shape, dtype=dtype),)
    return tuple(
        torch.ones(
            shape, dtype=dtype if getattr(torch, name).is_floating_point else getattr(torch, name)
        )
        for shape, name in input_shape
    )


def synflow_scores(model, masks, input_shape, dtype=torch.float32):
    """|theta * dR/dtheta| for each masked parameter, model linearised, all-ones input(s)."""
    model = model.eval()
    state = {k: v.detach().clone().to(dtype) for k, v in model.state_dict().items()}
    abs_state = {k: v.abs() if v.is_floating_point() else v for k, v in state.items()}
    raw = {k: abs_state[k].clone().requires_grad_(True) for k in masks}
    effective = dict(abs_state)
    for k in masks:
        effective[k] = raw[k] * masks[k].to(dtype)
    out = functional_call(model, effective, ones(input_shape, dtype))
    R = out.sum()
    grads = torch.autograd.grad(R, [raw[k] for k in masks], allow_unused=True)
    scores = {}
    for k, g in zip(masks, grads, strict=True):
        g = torch.zeros_like(raw[k]) if g is None else g
        scores[k] = (g * raw[k]).detach().abs()
    return scores, R.detach()


def density_schedule(density, t, n, schedule):
    if schedule == "exponential":
        return density ** (t / n)
    return 1.0 - (1.0 - density) * (t / n)


def select_exact(scores, masks, density, scope="global"):
    """Prune exactly floor((1 - d) N) lowest, pruned first, ties by position (stable sort)."""

    def pick(flat_scores, flat_mask):
        k = math.floor((1.0 - density) * flat_scores.numel())
        ranked = torch.where(flat_mask, flat_scores, torch.full_like(flat_scores, -math.inf))
        order = torch.sort(ranked, stable=True).indices
        keep = torch.ones_like(flat_mask)
        keep[order[:k]] = False
        return keep

    if scope == "local":
        return {k: pick(scores[k].flatten(), masks[k].flatten()).view_as(masks[k]) for k in masks}
    names = list(masks)
    keep = pick(
        torch.cat([scores[n].flatten() for n in names]),
        torch.cat([masks[n].flatten() for n in names]),
    )
    out, offset = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = keep[offset : offset + size].view_as(masks[n])
        offset += size
    return out


def select_paper(scores, masks, density):
    """Synaptic-Flow `_global_mask`: threshold = kthvalue, prune score <= threshold.

    Returns the masks and whether a tie straddled the threshold (where the rules differ).
    """
    names = list(masks)
    flat = torch.cat([scores[n].flatten() for n in names])
    k = int((1.0 - density) * flat.numel())
    if k < 1:
        return {n: masks[n].clone() for n in names}, False
    threshold = torch.kthvalue(flat, k).values
    tie = int((flat <= threshold).sum()) != k
    return {n: scores[n] > threshold for n in names}, tie


def reference_synflow(
    model,
    input_shape,
    density,
    iterations,
    schedule="exponential",
    scope="global",
    bias=False,
    batchnorm=False,
    rule="exact",
    dtype=torch.float32,
):
    """Iterative SynFlow masks. rule="paper" also returns whether any round had a tie; `dtype`
    is the arithmetic of the scores (float32 as the paper's code, float64 to check ours)."""
    names = prunable_names(model, bias, batchnorm)
    params = dict(model.named_parameters())
    masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    any_tie = False
    for t in range(1, iterations + 1):
        scores, _ = synflow_scores(model, masks, input_shape, dtype)
        d = density_schedule(density, t, iterations, schedule)
        if rule == "paper":
            masks, tie = select_paper(scores, masks, d)
            any_tie |= tie
        else:
            masks = select_exact(scores, masks, d, scope)
    return (masks, any_tie) if rule == "paper" else masks
