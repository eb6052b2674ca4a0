"""Where float32 and float64 SynFlow masks part ways, round by round, and why.

    python bench/divergence.py                                    # ResNet-50 at 64x64, 100 its
    python bench/divergence.py --case resnet50:224 --swap-rounds 20

Runs three kinds of trajectory of the engine on one case, in this process, one after the other:

- float64 (the reference the IoU is measured against);
- `auto` (float32 with power-of-two rescaling, the default);
- float64 again, except that in one round (each of `--swap-rounds`) the closest near-tie is
  decided the other way: the lowest score kept is pruned and the highest score pruned is kept.
  That is the smallest difference two correct implementations can have (their last bits
  differ once), so its IoU is the noise floor of the case.

For chosen rounds it prints how many mask entries differ from the float64 trajectory, and at the
end the IoU of the kept sets. Masks of the float64 trajectory are kept bit-packed in memory
(N/8 bytes a round).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_synflow import SPARSITY, build, decide_closest_tie_the_other_way  # noqa: E402

from synflow.config import PruneConfig  # noqa: E402
from synflow.engine import _next_masks  # noqa: E402
from synflow.masks import Masks, flat_view  # noqa: E402
from synflow.model import LoadedModel  # noqa: E402
from synflow.schedule import density_at  # noqa: E402
from synflow.scorers.base import ScoringContext  # noqa: E402
from synflow.scorers.synflow import SynFlowScorer  # noqa: E402
from synflow.selection import select  # noqa: E402


def trajectory(case: str, iterations: int, precision: str, swap_round: int = 0):
    """Yield (round, flat bool mask, swap info) after each round of one run."""
    module, shape = build(case)
    model = LoadedModel("torchscript", module, Path(case))
    config = PruneConfig(sparsity=SPARSITY, input_shape=shape, iterations=iterations)
    tensors = model.prunable(False, False, [])
    named = dict(module.named_parameters())
    params = {t.key: named[t.param_name] for t in tensors}
    ctx = ScoringContext(
        model, tensors, params, shape, torch.device("cpu"), torch.Generator(), precision
    )
    masks = Masks.dense_flat(params)
    with SynFlowScorer(ctx) as scorer:
        for t in range(1, iterations + 1):
            density = density_at(config.density, t, iterations, config.schedule)
            swap = None
            if t == swap_round:
                scores = scorer.score(masks)
                new = select(scores, masks, density)
                flat = torch.cat([s.flatten() for s in scores.values()])
                after = torch.cat([m.flatten() for m in new.values()])
                swap = decide_closest_tie_the_other_way(flat, [after])
                masks = Masks.dense_flat(params)
                flat_view(list(masks.values())).copy_(after)
            else:
                masks = _next_masks(scorer, masks, density, "global")
            yield t, flat_view(list(masks.values())), swap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="resnet50:64")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--swap-rounds", default="3,20,40", help="comma-separated rounds")
    args = parser.parse_args()
    n = args.iterations
    shown = {1, 2, 3, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, n}
    reference: dict[int, np.ndarray] = {}
    for t, mask, _ in trajectory(args.case, n, "float64"):
        reference[t] = np.packbits(mask.numpy())
    print(f"{args.case}, {n} iterations, sparsity {SPARSITY}: entries differing from float64")
    runs = [("auto", 0)] + [("float64", int(r)) for r in args.swap_rounds.split(",") if r]
    for precision, swap_round in runs:
        label = precision if not swap_round else f"float64, near-tie of round {swap_round} swapped"
        diffs, iou = {}, 1.0
        for t, mask, swap in trajectory(args.case, n, precision, swap_round):
            ref = torch.from_numpy(np.unpackbits(reference[t])[: mask.numel()].astype(bool))
            if swap is not None:
                kept, pruned = swap
                label += f" (scores {(kept - pruned) / kept:.1e} apart relatively)"
            if t in shown:
                diffs[t] = int((ref ^ mask).sum())
            if t == n:
                iou = int((ref & mask).sum()) / int((ref | mask).sum())
        row = "  ".join(f"r{t}:{d}" for t, d in diffs.items())
        print(f"{label}\n  {row}\n  final IoU vs float64: {iou:.4f}", flush=True)


if __name__ == "__main__":
    main()
