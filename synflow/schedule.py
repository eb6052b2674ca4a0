"""Density schedules and the prune-count rule, as pure functions.

Both follow the reference code (ganguli-lab/Synaptic-Flow, `prune.prune_loop` and
`Pruner._global_mask`) operation for operation, in double precision: iterative SynFlow amplifies a
one-weight difference at any round, so `round()` instead of `floor()`, or `d ** t / n` computed in a
different order, changes the final masks.
"""

from __future__ import annotations

import math


def density_at(target_density: float, iteration: int, iterations: int, schedule: str) -> float:
    """Fraction of prunable weights kept after round `iteration` (1-based) of `iterations`."""
    if not 1 <= iteration <= iterations:
        raise ValueError(f"iteration {iteration} outside 1..{iterations}")
    if schedule == "exponential":
        return target_density ** (iteration / iterations)
    if schedule == "linear":
        return 1.0 - (1.0 - target_density) * (iteration / iterations)
    raise ValueError(f"unknown schedule {schedule!r}; choose exponential or linear")


def prune_count(total: int, density: float) -> int:
    """How many of `total` weights are pruned at `density`: floor((1 - d) * N), as the reference."""
    return math.floor((1.0 - density) * total)
