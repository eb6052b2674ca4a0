"""What SynFlow's masks carry beyond their layer densities (Frankle et al., ICLR 2021).

    python bench/shuffle.py            # 2 nets x 3 compressions x 3 seeds, trained on digits
    python bench/shuffle.py --quick    # 1 compression, 1 seed, 3 epochs

For each seed the network is pruned by SynFlow at init; one copy trains with the masks as they
are, another with each layer's mask shuffled (the same number kept per layer, at uniformly random
positions: `digits.shuffle_within_layers`), both with the same fixed budget and the same batches.
If accuracy holds after shuffling, what the masks carry is their per-layer densities. Prints the
accuracies and the paired difference (unshuffled - shuffled), writes `shuffle.json` to `--out`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import digits as D
import torch

COMPRESSIONS = (10.0, 10**1.5, 100.0)


def run(args) -> dict:
    digits = D.load_digits()
    budget = D.Budget(epochs=args.epochs)
    out: dict = {"compressions": args.compressions, "seeds": args.seeds, "budget": vars(budget),
                 "archs": {}}  # fmt: skip
    for arch in args.archs:
        rows = []
        for c in args.compressions:
            plain, shuffled = [], []
            for seed in range(args.seeds):
                model = D.build(D.ARCHS[arch], seed)
                masks = D.prune_masks(model, "synflow", c, seed, digits, args.iterations)
                state = {k: v.clone() for k, v in model.state_dict().items()}
                plain.append(D.train_masked(model, masks, digits, seed, budget))
                model.load_state_dict(state)
                mixed = D.shuffle_within_layers(masks, seed)
                shuffled.append(D.train_masked(model, mixed, digits, seed, budget))
            rows.append({"compression": c, "synflow": plain, "shuffled": shuffled})
            print(f"{arch} compression {c:.3g} done ({time.perf_counter() - START:.0f} s)",
                  flush=True)  # fmt: skip
        out["archs"][arch] = rows
    return out


def markdown(results: dict) -> str:
    lines = ["| network | compression | SynFlow masks | shuffled within layers | difference |",
             "|---|---|---|---|---|"]  # fmt: skip
    for arch, rows in results["archs"].items():
        for row in rows:
            diffs = [a - b for a, b in zip(row["synflow"], row["shuffled"], strict=True)]
            a, b, d = (D.mean_spread(v) for v in (row["synflow"], row["shuffled"], diffs))
            lines.append(f"| {arch} | {row['compression']:.3g} | {a[0]:.3f} ± {a[1]:.3f} | "
                         f"{b[0]:.3f} ± {b[1]:.3f} | {d[0]:+.3f} ± {d[1]:.3f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 compression, 1 seed, 3 epochs")
    parser.add_argument("--out", type=Path, default=D.ROOT / "docs", help="folder for outputs")
    parser.add_argument("--archs", nargs="+", default=list(D.ARCHS), choices=list(D.ARCHS))
    parser.add_argument("--seeds", type=int, help="seeds per point (3; quick: 1)")
    parser.add_argument("--epochs", type=int, help="training epochs (15; quick: 3)")
    parser.add_argument("--iterations", type=int, help="SynFlow rounds (100; quick: 10)")
    args = parser.parse_args()
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.epochs = args.epochs or (3 if args.quick else D.Budget.epochs)
    args.compressions = list(COMPRESSIONS[:1] if args.quick else COMPRESSIONS)
    if args.quick and args.iterations is None:
        args.iterations = 10
    torch.set_num_threads(1)
    results = run(args)
    D.publish(results, args.out, "shuffle", START, markdown)


START = time.perf_counter()

if __name__ == "__main__":
    main()
