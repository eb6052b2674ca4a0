"""Accuracy after pruning at initialisation: every method, on scikit-learn's digits.

    python bench/quality.py            # 2 nets x 7 methods x 7 compressions x 3 seeds (< 20 min)
    python bench/quality.py --quick    # 2 compressions, 1 seed, 3 epochs (< 2 min)

Each network (an MLP 64-300-100-10 and a 3-conv net) is initialised with a seed as the reference
code initialises (`digits.paper_init`: Kaiming-normal weights, zero biases), pruned by the
engine at each compression from 10^0.5 to 10^3 (global scope; SynFlow and SynFlow-L2 with their
100 rounds, the others in one), then trained with the same fixed budget (`digits.Budget`) and
evaluated on the held-out third. Prints a table of test accuracy (mean ± sample standard
deviation over seeds) per method and compression, and writes `quality.json` and `quality.png`
into `--out`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import digits as D
import torch

from synflow.errors import DegenerateFlowError


def run(args: argparse.Namespace) -> dict:
    digits = D.load_digits()
    budget = D.Budget(epochs=args.epochs)
    results: dict = {"compressions": args.compressions, "seeds": args.seeds,
                     "budget": vars(budget), "archs": {}}  # fmt: skip
    for arch in args.archs:
        dense = []
        table: dict[str, list[list[float]]] = {m: [] for m in args.methods}
        for seed in range(args.seeds):
            dense.append(D.train_masked(D.build(D.ARCHS[arch], seed), {}, digits, seed, budget))
        for c in args.compressions:
            for method in args.methods:
                accs = []
                for seed in range(args.seeds):
                    model = D.build(D.ARCHS[arch], seed)
                    try:
                        masks = D.prune_masks(model, method, c, seed, digits, args.iterations)
                    except DegenerateFlowError:
                        accs.append(None)  # the pruning itself disconnected the network
                        continue
                    accs.append(D.train_masked(model, masks, digits, seed, budget))
                table[method].append(accs)
            print(f"{arch} compression {c:.3g} done ({time.perf_counter() - START:.0f} s)",
                  flush=True)  # fmt: skip
        results["archs"][arch] = {"dense": dense, "accuracy": table}
    return results


def cell(accs: list[float | None]) -> str:
    done = [a for a in accs if a is not None]
    text = "{:.3f} ± {:.3f}".format(*D.mean_spread(done)) if done else "-"
    if len(done) < len(accs):
        text += f" ({len(accs) - len(done)} disconnected)"
    return text


def markdown(results: dict) -> str:
    lines = []
    cs = results["compressions"]
    for arch, data in results["archs"].items():
        dm, ds = D.mean_spread(data["dense"])
        lines.append(f"**{arch}** (dense: {dm:.3f} ± {ds:.3f})\n")
        lines.append("| method | " + " | ".join(f"{c:.3g}" for c in cs) + " |")
        lines.append("|---|" + "---|" * len(cs))
        for method, rows in data["accuracy"].items():
            cells = [cell(accs) for accs in rows]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    cs = results["compressions"]
    panels = {
        arch: {
            m: [
                (c, *D.mean_spread([x for x in a if x is not None]))
                for c, a in zip(cs, rows, strict=True)
                if any(x is not None for x in a)
            ]
            for m, rows in data["accuracy"].items()
        }
        for arch, data in results["archs"].items()
    }
    dense = {arch: D.mean_spread(d["dense"])[0] for arch, d in results["archs"].items()}
    D.plot_lines(path, panels, "test accuracy", dense)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid and budget")
    parser.add_argument("--out", type=Path, default=D.ROOT / "docs", help="folder for outputs")
    parser.add_argument("--methods", nargs="+", default=list(D.METHODS), choices=D.METHODS)
    parser.add_argument("--archs", nargs="+", default=list(D.ARCHS), choices=list(D.ARCHS))
    parser.add_argument("--seeds", type=int, help="seeds per point (3; quick: 1)")
    parser.add_argument("--epochs", type=int, help="training epochs (15; quick: 3)")
    parser.add_argument("--points", type=int, help="compressions from 10^0.5 to 10^3 (7; quick: 2)")
    parser.add_argument("--iterations", type=int, help="pruning rounds (method default; quick: 10)")
    args = parser.parse_args()
    quick = args.quick
    args.seeds = args.seeds or (1 if quick else 3)
    args.epochs = args.epochs or (3 if quick else D.Budget.epochs)
    args.compressions = D.log_grid(10**0.5, 10**3, args.points or (2 if quick else 7))
    if quick and args.iterations is None:
        args.iterations = 10
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and polite on a shared CPU
    results = run(args)
    D.publish(results, args.out, "quality", START, markdown, plot)


START = time.perf_counter()

if __name__ == "__main__":
    main()
