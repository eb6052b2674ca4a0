"""Layer collapse at initialisation (Tanaka et al. 2020, Figure 1 and section 7), measured.

    python bench/collapse.py           # VGG-style conv net (BN) and a deep MLP, 7 methods
    python bench/collapse.py --quick   # a short grid, 20 SynFlow rounds (seconds)

For each network and method it prunes the freshly initialised network at compressions evenly
spaced in log10 (step 10^0.25) up to just past the theoretical maximum, and reports:

- `alive`: the largest compression of the grid up to which (at it and every smaller grid point)
  every prunable layer keeps at least one weight;
- `path`: the same for "some input-output path runs through kept weights only", computed exactly
  (`digits.path_exists`: path counts in float64 on the 0/1 masks, no rounding);
- `max`: the theoretical maximum, N / L: N prunable weights, L prunable layers. A path needs at
  least one weight in every layer and one weight per layer suffices (a chain of single kernel
  entries or matrix entries), so N / L is the largest compression at which a path can remain.

Each network is measured at the reference code's initialisation (Kaiming-normal, zero biases)
and at PyTorch's layer defaults (non-zero uniform biases). SynFlow is expected (the paper's
claim) to keep a path up to the maximum's neighbourhood while the others collapse earlier.
SNIP and GraSP get 10 digits per class as calibration data; the networks take 1x8x8 inputs.
Writes `collapse.json` and `collapse.png` to `--out`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import digits as D
import torch

from synflow.errors import DegenerateFlowError

ARCHS = {
    "vgg": lambda: D.vgg(),
    "deep-mlp": lambda: D.mlp((64, 128, 128, 128, 128, 128, 128, 10)),
}
#: network name -> (architecture, initialisation): each at the reference code's initialisation
#: and at PyTorch's layer defaults (non-zero biases)
NETS = {f"{arch} ({init} init)": (arch, init) for init in D.INITS for arch in ARCHS}
STEP = 0.25  # log10 spacing of the compression grid


def sweep(net: str, method: str, grid: list[float], digits: D.Digits, seed: int, iterations):
    arch, init = NETS[net]
    rows = []
    for c in grid:
        model = D.build(ARCHS[arch], seed, init)
        try:
            masks = D.prune_masks(model, method, c, seed, digits, iterations)
        except DegenerateFlowError as exc:  # SynFlow's rounds disconnected the network
            rows.append({"compression": c, "alive": False, "path": False, "error": exc.message})
            continue
        rows.append({
            "compression": c,
            "alive": D.layer_alive(masks),
            "path": D.path_exists(model, masks, D.INPUT_SHAPE),
            "empty_layers": [k for k, m in masks.items() if not bool(m.any())],
        })  # fmt: skip
    return rows


def largest_before_failure(rows: list[dict], key: str) -> float | None:
    """The largest grid compression up to which `key` holds at every grid point (None: not
    even at the first)."""
    best = None
    for row in rows:
        if not row[key]:
            break
        best = row["compression"]
    return best


def theoretical_max(net: str) -> tuple[int, int]:
    """(N, L): prunable weights and prunable layers (conv and linear weights)."""
    model = ARCHS[NETS[net][0]]()
    weights = [
        m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    return sum(w.numel() for w in weights), len(weights)


def run(args) -> dict:
    digits = D.load_digits()
    out: dict = {"nets": {}, "step_log10": STEP}
    for net in args.nets:
        n, layers = theoretical_max(net)
        top = math.log10(n / layers) + STEP
        if args.quick:
            grid = D.log_grid(10, n / layers / 10, 3)
        else:
            count = round((top - 0.5) / STEP) + 1
            grid = [10 ** (0.5 + STEP * i) for i in range(count)]
        methods = {}
        for method in args.methods:
            rows = sweep(net, method, grid, digits, args.seed, args.iterations)
            methods[method] = {
                "alive": largest_before_failure(rows, "alive"),
                "path": largest_before_failure(rows, "path"),
                "rows": rows,
            }
            seconds = time.perf_counter() - START
            print(f"{net} {method}: alive to {methods[method]['alive']}, path to "
                  f"{methods[method]['path']} ({seconds:.0f} s)", flush=True)  # fmt: skip
        out["nets"][net] = {"prunable": n, "layers": layers, "max": n / layers,
                            "grid": grid, "methods": methods}  # fmt: skip
    return out


def markdown(results: dict) -> str:
    lines = ["| network | N | L | max = N/L | method | all layers alive up to | a path up to |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    fmt = lambda v: "below the grid" if v is None else f"{v:,.0f}"  # noqa: E731
    for net, data in results["nets"].items():
        for method, m in data["methods"].items():
            lines.append(f"| {net} | {data['prunable']:,} | {data['layers']} | "
                         f"{data['max']:,.0f} | {method} | {fmt(m['alive'])} | "
                         f"{fmt(m['path'])} |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = results["nets"]
    cols = min(2, len(nets))
    rows = math.ceil(len(nets) / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    axes = [list(grid.flat)]
    for ax, (net, data) in zip(axes[0], nets.items(), strict=False):
        names = list(data["methods"])
        xs = range(len(names))
        low = data["grid"][0] / 2
        for offset, key, label in ((-0.2, "alive", "every layer alive"), (0.2, "path", "a path")):
            values = [data["methods"][m][key] or low for m in names]
            ax.bar([x + offset for x in xs], values, width=0.4, label=label)
        ax.axhline(data["max"], color="k", ls="--", lw=1, label="theoretical max N/L")
        ax.set_yscale("log")
        ax.set_xticks(list(xs), names, rotation=30, fontsize=8)
        ax.set_ylabel("largest compression before collapse")
        ax.set_title(f"{net}: N={data['prunable']:,}, L={data['layers']}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short grid, 20 SynFlow rounds")
    parser.add_argument("--out", type=Path, default=D.ROOT / "docs", help="folder for outputs")
    parser.add_argument("--methods", nargs="+", default=list(D.METHODS), choices=D.METHODS)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--init", choices=list(D.INITS), help="only networks of this init")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, help="pruning rounds (method default; quick: 20)")
    args = parser.parse_args()
    if args.quick and args.iterations is None:
        args.iterations = 20
    if args.init:
        args.nets = [n for n in args.nets if NETS[n][1] == args.init]
    torch.set_num_threads(1)
    results = run(args)
    D.publish(results, args.out, "collapse", START, markdown, plot)


START = time.perf_counter()

if __name__ == "__main__":
    main()
