"""What a pruning decision removes: single weights, whole channels, or N of every M weights.

Torch-free, so the API validates `granularity` without the numerical stack. `unstructured` is the
paper's SynFlow; `channel` removes whole coupled channel groups and returns a physically smaller
model (`synflow.structured`); `N:M` keeps N of every M consecutive weights along the input
dimension (2:4 is what sparse tensor cores run), so its density is N/M by construction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNSTRUCTURED = "unstructured"
CHANNEL = "channel"
#: Largest M accepted in N:M: groups are read as one small vector per output position, and the
#: hardware patterns in use are 2:4, 4:8 and 1:4-style ones; M beyond this is a typo.
MAX_M = 32
#: Default rounds for channel granularity: each round rebuilds the layers, and channels are
#: counted in tens to thousands, so more rounds than this move the same channels one at a time.
CHANNEL_ITERATIONS = 10

_NM = re.compile(r"^\s*(\d{1,3})\s*:\s*(\d{1,3})\s*$")


@dataclass(frozen=True)
class Granularity:
    name: str  # "unstructured", "channel" or "N:M" as normalised ("2:4")
    n_m: tuple[int, int] | None = None

    def check_target(self, sparsity: float | None, compression: float | None) -> None:
        """N:M fixes the density at N/M: a sparsity or compression given too must say the same."""
        assert self.n_m is not None
        n, m = self.n_m
        density = n / m
        given = None
        if sparsity is not None and compression is not None:
            raise ValueError("give at most one of sparsity and compression (N:M implies N/M)")
        if sparsity is not None:
            given = 1.0 - sparsity
        elif compression is not None:
            given = 1.0 / compression
        if given is not None and not math.isclose(given, density, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"granularity {self.name} keeps exactly {n} of every {m} weights (sparsity "
                f"{1 - density:g}); drop sparsity/compression or set sparsity={1 - density:g}"
            )


def parse_granularity(value: str) -> Granularity:
    """`unstructured`, `channel` or `N:M` (0 < N < M <= MAX_M); a ValueError says what to send."""
    text = str(value).strip().lower()
    if text in (UNSTRUCTURED, CHANNEL):
        return Granularity(text)
    match = _NM.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m <= MAX_M:
            return Granularity(f"{n}:{m}", (n, m))
        raise ValueError(
            f"granularity {value!r}: N:M needs 0 < N < M <= {MAX_M} (e.g. 2:4), got N={n}, M={m}"
        )
    raise ValueError(
        f"granularity {value!r} is not one of: unstructured, channel, or N:M such as 2:4"
    )
