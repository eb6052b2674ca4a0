"""N:M masks: SynFlow under the constraint "N kept in every M consecutive input weights".

The groups run along the input dimension of each weight (a linear layer's row, a convolution's
input channels at one kernel position), which is the reduction axis the 2:4 sparse kernels
compress. Iterative as unstructured SynFlow: in round t the scorer scores the current masks and
every group keeps its `M - p_t` best weights, `p_t = floor((1 - d_t) * M)` with d_t on the
schedule towards N/M (the last round exactly `M - N`); pruned weights stay pruned (they rank
below every kept one), ties go to the lower index.

A weight whose input dimension is not a multiple of M (an RGB stem convolution: 3 inputs) cannot
be cut into groups; it stays dense and the report says why.
"""

from __future__ import annotations

import math

import torch

from synflow.masks import Masks
from synflow.model import PrunableTensor
from synflow.schedule import density_at

#: `torch.sparse.to_sparse_semi_structured` (2:4 only): dtypes, and multiples the weight's rows
#: and columns must have (the strictest of its CUTLASS and cuSPARSELt backends)
SEMI_STRUCTURED_DTYPES = ("float16", "bfloat16", "int8")
SEMI_STRUCTURED_ROWS = 64
SEMI_STRUCTURED_COLS = 128


def skip_reason(t: PrunableTensor, shape: torch.Size, m: int) -> str | None:
    """Why `t` cannot take N:M masks, or None when it can."""
    if t.role != "weight":
        return f"{t.role} tensors have no input dimension to group"
    if len(shape) < 2:
        return "not a matrix or convolution kernel"
    if shape[1] % m:
        return f"its input dimension ({shape[1]}) is not a multiple of M={m}"
    return None


def _grouped(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """(positions, M) copy: input axis last, then cut into runs of M."""
    return tensor.movedim(1, -1).reshape(-1, m)


def _ungrouped(groups: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    moved = (shape[0], *shape[2:], shape[1])
    return groups.reshape(moved).movedim(-1, 1)


def pruned_per_group(n: int, m: int, t: int, iterations: int, schedule: str) -> int:
    """Weights of every group pruned after round `t`."""
    if t == iterations:
        return m - n
    density = density_at(n / m, t, iterations, schedule)
    return min(m - n, math.floor((1.0 - density) * m))


@torch.no_grad()
def select_nm(
    scores: dict[str, torch.Tensor], masks: Masks, keys: list[str], m: int, prune: int
) -> Masks:
    """Keep the `m - prune` best of every group of `m` in each of `keys`, in place."""
    for key in keys:
        mask = masks[key]
        s = _grouped(scores[key].to(mask.device, torch.float64), m)
        kept = _grouped(mask, m)
        s = torch.where(kept, s, torch.full_like(s, -math.inf))
        order = torch.sort(s, dim=1, stable=True).indices
        keep = torch.ones_like(kept)
        keep.scatter_(1, order[:, :prune], False)
        mask.copy_(_ungrouped(keep, mask.shape))
    return masks


def check_groups(mask: torch.Tensor, n: int, m: int) -> bool:
    """Every group of `m` along the input dimension has exactly `n` kept."""
    return bool((_grouped(mask, m).sum(1) == n).all())


def semi_structured_reason(t: PrunableTensor, shape: torch.Size, nm: tuple[int, int]) -> str | None:
    """Why the 2:4 sparse kernels (`to_sparse_semi_structured`, in one of
    `SEMI_STRUCTURED_DTYPES`) cannot run this weight."""
    if nm != (2, 4):
        return "the sparse kernels run 2:4 only"
    if t.layer_type != "Linear" or len(shape) != 2:
        return "only linear (2-D) weights convert; convolutions stay dense"
    rows, cols = shape
    if rows % SEMI_STRUCTURED_ROWS or cols % SEMI_STRUCTURED_COLS:
        return (
            f"shape {rows}x{cols}: rows must be a multiple of {SEMI_STRUCTURED_ROWS} and columns "
            f"of {SEMI_STRUCTURED_COLS}"
        )
    return None


def nm_summary(
    tensors: list[PrunableTensor], masks: Masks, skipped: dict[str, str], nm: tuple[int, int]
) -> dict[str, object]:
    """The report's `structured` section for N:M masks."""
    n, m = nm
    grouped = [t for t in tensors if t.key not in skipped]
    ready, not_ready = [], {}
    for t in grouped:
        reason = semi_structured_reason(t, masks[t.key].shape, nm)
        if reason is None:
            ready.append(t.key)
        else:
            not_ready[t.key] = reason
    return {
        "granularity": f"{n}:{m}",
        "target": f"exact: {n} kept in every group of {m} consecutive weights along the input "
        "dimension of every grouped weight",
        "grouped_layers": [t.key for t in grouped],
        "all_groups_valid": all(check_groups(masks[t.key], n, m) for t in grouped),
        "dense_layers": [{"name": k, "reason": r} for k, r in skipped.items()],
        "semi_structured": {
            "convertible": ready,
            "not_convertible": [{"name": k, "reason": r} for k, r in not_ready.items()],
            "dtypes": list(SEMI_STRUCTURED_DTYPES),
            "gpu_speedup": "not measured: to_sparse_semi_structured needs a CUDA GPU of compute "
            "capability 8.0 or newer (bench/structured.py measures it there)",
        },
    }
