"""SynFlow engine benchmark: our engine against the reference algorithm done the plain way.

    python bench/bench_synflow.py            # ResNet-50, VGG-16-BN, MLP-50M; 100 iterations
    python bench/bench_synflow.py --quick    # 2 small cases, 5 iterations, no noise floor, no
                                             # today's engine (under a minute on an idle CPU)
    python bench/bench_synflow.py --device cuda    # our engine on the GPU (the rest on the CPU)
    python bench/bench_synflow.py --against none   # skip today's engine (see --against)
    python bench/bench_synflow.py --scale    # linear stacks of 64M, 256M and 1.02B parameters
    python bench/bench_synflow.py --scale --sizes mlp:16000x5   # the 1B case alone

One command runs everything, on the same machine and in the same run. Every measurement runs in
a fresh child process of this script, so that its peak resident memory is its own: each
child imports everything and warms up on a toy model, records its resident size (the idle
footprint), resets the kernel's high-water mark (/proc/self/clear_refs), runs, and reports the
high-water mark (VmHWM) minus the idle footprint.

Per case it prints the wall time of our engine, of *today's* engine (`--against REV`, default
`main`: the `synflow/` package of that git revision, extracted to a temporary folder and run the
same way, so that the speed-up and the memory of a change are measured in one run) and of the
baseline, the floor (one float32 forward+backward pass of the linearised model, input scaled as
our run scaled it, times the iterations), the ratios ours/floor and baseline/ours, the peak memory
of each above idle, the per-layer kept-count gap to the float64 baseline (sum over layers of
|kept_ours - kept_ref|, over the baseline's kept total), the same gap for a float64 run with the
closest near-tie of round n/5 decided the other way (the noise floor: what one last-bit
difference in arithmetic does), and the IoU of the kept sets. At the end it prints all of it as
one markdown table.

The baseline is the reference algorithm (ganguli-lab/Synaptic-Flow) written the straightforward
way: a float64 copy of the model with every tensor replaced by its absolute value, an all-ones
input, the scores |theta * dR/dtheta| concatenated and `torch.kthvalue` on them every iteration
(pruning every score <= the threshold, as the reference does), masks re-applied by multiplication.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPARSITY = 0.99


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------
def build(case: str):
    """(module, input shape) for a case name; random initialisation, seeded."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    name, _, arg = case.partition(":")
    if name == "resnet50":
        side = int(arg or 224)
        return torchvision.models.resnet50(weights=None).eval(), (1, 3, side, side)
    if name == "vgg16_bn":
        model = torchvision.models.vgg16_bn(weights=None, num_classes=10)
        if arg == "cifar":  # the reference code's CIFAR head: pool to 1x1, one Linear(512, 10)
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier = nn.Linear(512, 10)
        return model.eval(), (1, 3, 32, 32)
    if name == "mlp":  # mlp:WIDTHxDEPTH, ~ WIDTH^2 * DEPTH parameters
        width, depth = (int(v) for v in arg.split("x"))
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(width, width if i < depth - 1 else 10))
            if i < depth - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers).eval(), (1, width)
    raise ValueError(case)


def prunable_weights(module):
    from synflow.model import WEIGHT_LAYERS

    return [
        (f"{n}.weight", m.weight)
        for n, m in module.named_modules()
        if type(m).__name__ in WEIGHT_LAYERS
    ]


def linearise(module) -> list:
    """SynFlow's view of `module`, in place: every floating-point tensor replaced by its absolute
    value, gradients on the prunable weights only. Returns those weights."""
    import torch

    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    for p in module.parameters():
        p.requires_grad_(False)
    weights = [w for _, w in prunable_weights(module)]
    for w in weights:
        w.requires_grad_(True)
    return weights


# --------------------------------------------------------------------------------------------
# workers (each runs in its own child process)
# --------------------------------------------------------------------------------------------
def work_idle(args) -> dict:
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import synflow.engine  # noqa: F401

    return {}


def work_ours(args) -> dict:
    import torch

    import synflow
    from synflow.config import PruneConfig
    from synflow.engine import prune
    from synflow.model import LoadedModel

    module, shape = build(args.case)
    model = LoadedModel("torchscript", module, Path(args.case))
    config = PruneConfig(sparsity=SPARSITY, input_shape=shape, iterations=args.iterations)
    started = time.perf_counter()
    result = prune(model, config, device=args.device, precision=args.precision)
    seconds = time.perf_counter() - started
    torch.save(dict(result.masks), args.masks)
    return {
        "seconds": seconds,
        "precision": result.precision,
        "scale": result.scale,
        "note": result.precision_note,
        "params": sum(m.numel() for m in result.masks.values()),
        "code": str(Path(synflow.__file__).parent),
    }


def work_baseline(args) -> dict:
    import torch

    module, shape = build(args.case)
    started = time.perf_counter()
    model = copy.deepcopy(module).double().eval()
    weights = linearise(model)
    masks = [torch.ones_like(w) for w in weights]
    total = sum(w.numel() for w in weights)
    swap = None
    for t in range(1, args.iterations + 1):
        with torch.no_grad():
            for w, m in zip(weights, masks, strict=True):
                w.mul_(m)
        x = torch.ones(shape, dtype=torch.float64)
        flow = model(x).sum()
        grads = torch.autograd.grad(flow, weights)
        scores = [(g * w).detach().abs() for g, w in zip(grads, weights, strict=True)]
        del grads
        flat = torch.cat([s.flatten() for s in scores])
        density = (1.0 - SPARSITY) ** (t / args.iterations)
        k = math.floor((1.0 - density) * total)
        if k >= 1:
            threshold = torch.kthvalue(flat, k).values
            masks = [(s > threshold).to(torch.float64) for s in scores]
            if t == args.swap_round:
                swap = decide_closest_tie_the_other_way(flat, masks)
        del flat, scores
    seconds = time.perf_counter() - started
    names = [n for n, _ in prunable_weights(module)]
    torch.save({n: m.bool() for n, m in zip(names, masks, strict=True)}, args.masks)
    return {"seconds": seconds, "swap": swap}


def decide_closest_tie_the_other_way(flat, masks) -> list[float]:
    """The noise floor probe: keep the highest score this round pruned and prune the lowest it
    kept (the two scores nearest the threshold), as a last-bit difference in arithmetic would.
    Edits `masks` in place; returns the two scores."""
    import torch

    kept = torch.cat([m.flatten() for m in masks]).bool()
    lowest_kept = int(torch.where(kept, flat, torch.inf).argmin())
    # pruned this round = positive score (earlier rounds' pruned weights score exactly 0)
    highest_pruned = int(torch.where(~kept & (flat > 0), flat, -torch.inf).argmax())
    offset = 0
    for m in masks:  # float or bool masks, one per tensor or one flat
        n = m.numel()
        for index, value in ((lowest_kept, False), (highest_pruned, True)):
            if offset <= index < offset + n:
                m.view(-1)[index - offset] = value
        offset += n
    return [float(flat[lowest_kept]), float(flat[highest_pruned])]


def work_floor(args) -> dict:
    """Median of a few forward+backward passes of the linearised float32 model (input 2^a)."""
    import torch

    module, shape = build(args.case)
    weights = linearise(module)
    x = torch.full(shape, 2.0**args.input_exponent)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        flow = module(x).sum()
        grads = torch.autograd.grad(flow, weights)
        del grads, flow
        times.append(time.perf_counter() - started)
    per_pass = statistics.median(times[1:] if len(times) > 2 else times)
    return {"per_pass": per_pass, "seconds": per_pass * args.iterations}


WORKERS = {
    "idle": work_idle,
    "ours": work_ours,
    "baseline": work_baseline,
    "floor": work_floor,
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def warm_up() -> None:
    """Load every library a run touches (autograd, kernels, thread pool) on a toy model, so that
    the idle footprint holds them and the peaks below measure the work itself."""
    import torch
    import torchvision  # noqa: F401

    import synflow.engine  # noqa: F401

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    for dtype in (torch.float32, torch.float64):
        net = net.to(dtype)
        torch.autograd.grad(net(torch.ones(1, 3, 8, 8, dtype=dtype)).sum(), list(net.parameters()))
    torch.kthvalue(torch.rand(1000), 10)


def reset_peak() -> bool:
    """Reset the kernel's resident-size high-water mark (Linux >= 4.0), so that import-time
    transients do not count as the run's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """The resident-size high-water mark since `reset_peak` (VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_main(args) -> None:
    if args.code:  # another revision's synflow package (today's engine) before ours
        sys.path.insert(0, args.code)
    warm_up()
    import gc

    gc.collect()
    idle = rss_bytes()
    reset = reset_peak()
    result = WORKERS[args.worker](args)
    result["peak_bytes"] = peak_bytes()
    result["idle_bytes"] = idle
    result["peak_reset"] = reset
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------
def run_child(worker: str, case: str = "", iterations: int = 0, **extra) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--case", case]
    cmd += ["--iterations", str(iterations)]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{worker} {case} failed (rc {proc.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1][len("RESULT ") :])


def iou(a_path: str, b_path: str) -> float:
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    union = sum(int((a[k] | b[k]).sum()) for k in a)
    return inter / union if union else 1.0


def layer_gap(a_path: str, ref_path: str) -> float:
    """Per-layer kept-count gap: sum over layers of |kept_a - kept_ref|, over sum of kept_ref.
    Per-layer densities are what training depends on (Frankle et al. 2021), not which element."""
    import torch

    a, ref = torch.load(a_path), torch.load(ref_path)
    diff = sum(abs(int(a[k].sum()) - int(ref[k].sum())) for k in ref)
    kept = sum(int(ref[k].sum()) for k in ref)
    return diff / kept if kept else 0.0


def today_code(rev: str, tmp: Path) -> str | None:
    """The `synflow/` package of git revision `rev`, extracted under `tmp`; None for `none`."""
    if rev == "none":
        return None
    folder = tmp / "today"
    folder.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "synflow"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return str(folder)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def compare(
    case: str,
    iterations: int,
    tmp: Path,
    sensitivity: bool = True,
    quick: bool = False,
    today: str | None = None,
    device: str = "cpu",
) -> dict:
    ours_masks, base_masks = str(tmp / "ours.pt"), str(tmp / "base.pt")
    ours = run_child("ours", case, iterations, masks=ours_masks, precision="auto", device=device)
    old = None
    if today is not None:
        old_masks = str(tmp / "today.pt")
        old = run_child(
            "ours", case, iterations, masks=old_masks, precision="auto", code=today, device=device
        )
        if old["code"] == ours["code"]:
            raise RuntimeError(f"today's engine ran from our own code ({ours['code']})")
    base = run_child("baseline", case, iterations, masks=base_masks)
    noise_floor = swap = gap_noise = None
    if sensitivity:
        probe_masks = str(tmp / "noise_floor.pt")
        swap_round = max(1, iterations // 5)
        probe = run_child("baseline", case, iterations, masks=probe_masks, swap_round=swap_round)
        noise_floor = iou(probe_masks, base_masks)
        gap_noise = layer_gap(probe_masks, base_masks)
        kept, pruned = probe["swap"]
        swap = (swap_round, (kept - pruned) / kept)
    a = ours["scale"][0] if ours["scale"] else 0
    floor = run_child("floor", case, iterations, input_exponent=a, repeats=3 if quick else 5)
    row = {
        "case": case,
        "params": ours["params"],
        "iterations": iterations,
        "ours_s": ours["seconds"],
        "baseline_s": base["seconds"],
        "speedup": base["seconds"] / ours["seconds"],
        "floor_s": floor["seconds"],
        "ours_over_floor": ours["seconds"] / floor["seconds"],
        "ours_peak": ours["peak_bytes"] - ours["idle_bytes"],
        "baseline_peak": base["peak_bytes"] - base["idle_bytes"],
        "param_bytes": 4 * ours["params"],
        "iou": iou(ours_masks, base_masks),
        "iou_noise_floor": noise_floor,
        "gap": layer_gap(ours_masks, base_masks),
        "gap_noise_floor": gap_noise,
        "today_s": old["seconds"] if old else None,
        "today_peak": old["peak_bytes"] - old["idle_bytes"] if old else None,
        "same_as_today": iou(ours_masks, old_masks) == 1.0 if old else None,
        "swap": swap,
        "precision": ours["precision"] + (f" x2^{ours['scale']}" if ours["scale"] else ""),
        "note": ours["note"],
    }
    print(
        f"{case:<18} params {row['params'] / 1e6:7.1f}M  it {iterations:3d} | "
        f"ours {row['ours_s']:8.1f}s  baseline {row['baseline_s']:8.1f}s  "
        f"speedup {row['speedup']:5.2f}x | floor {row['floor_s']:7.1f}s "
        f"(ours/floor {row['ours_over_floor']:4.2f}) | peak ours {mib(row['ours_peak'])} "
        f"({row['ours_peak'] / row['param_bytes']:.2f}x params) baseline "
        f"{mib(row['baseline_peak'])} | IoU {row['iou']:.4f}"
        + (
            f" (noise floor: float64 vs float64 with one near-tie of round {swap[0]} decided the"
            f" other way, scores {swap[1]:.1e} apart relatively: {noise_floor:.4f})"
            if noise_floor is not None and swap is not None
            else ""
        )
        + f" | {row['precision']}"
        + (f" ({row['note']})" if row["note"] else ""),
        flush=True,
    )
    return row


def fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def print_table(rows: list[dict]) -> None:
    """Everything the issue asks for, one row per case, as a markdown table."""
    head = (
        "| case | params | it | ours | today | floor | reference | ours/floor | ref/ours "
        "| today/ours | peak ours | peak today | peak ref | gap | gap noise floor | IoU "
        "| IoU noise floor | masks = today's | precision |"
    )
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        today_ratio = r["today_s"] / r["ours_s"] if r["today_s"] else None
        peaks = [mib(r["ours_peak"]), "-", mib(r["baseline_peak"])]
        if r["today_peak"] is not None:
            peaks[1] = mib(r["today_peak"])
        print(
            f"| {r['case']} | {r['params'] / 1e6:.1f}M | {r['iterations']} "
            f"| {r['ours_s']:.1f} s | {fmt(r['today_s'], '.1f', ' s')} | {r['floor_s']:.1f} s "
            f"| {r['baseline_s']:.1f} s | {r['ours_over_floor']:.2f} | {r['speedup']:.2f}x "
            f"| {fmt(today_ratio, '.2f', 'x')} | {' | '.join(peaks)} "
            f"| {r['gap']:.2%} | {fmt(r['gap_noise_floor'], '.2%')} | {r['iou']:.4f} "
            f"| {fmt(r['iou_noise_floor'], '.4f')} | {fmt(r['same_as_today'], '')} "
            f"| {r['precision']} |",
            flush=True,
        )


def scale_mode(tmp: Path, iterations: int, sizes: list[str]) -> None:
    print(f"scale: linear stacks, {iterations} iterations, ours only", flush=True)
    for case in sizes:
        ours = run_child("ours", case, iterations, masks=str(tmp / "s.pt"), precision="auto")
        peak = ours["peak_bytes"] - ours["idle_bytes"]
        print(
            f"{case:<18} params {ours['params'] / 1e9:6.3f}B | time {ours['seconds']:8.1f}s "
            f"({ours['seconds'] / iterations:6.2f}s/it, "
            f"{ours['seconds'] / iterations / ours['params'] * 1e9:5.2f}s/it per 1B params) | "
            f"peak {mib(peak)} ({peak / (4 * ours['params']):.2f}x float32 params) | "
            f"{ours['precision']}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases, about a minute")
    parser.add_argument("--scale", action="store_true", help="1B-parameter scale run")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument(
        "--sensitivity",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run float64 with the closest near-tie of round iterations/5 decided the other "
        "way: the noise floor (default on, off with --quick)",
    )
    parser.add_argument(
        "--against",
        default=None,
        help="git revision whose synflow/ is today's engine, run the same way; none skips it "
        "(default main, none with --quick)",
    )
    parser.add_argument("--device", default="cpu", help="device of our engine's runs")
    parser.add_argument("--sizes", default=None, help="scale mode: comma-separated mlp cases")
    # child-process options
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--case", default="", help=argparse.SUPPRESS)
    parser.add_argument("--masks", default="", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--input-exponent", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--swap-round", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--code", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        child_main(args)
        return

    import platform

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    idle = run_child("idle")["idle_bytes"]
    print(
        f"idle footprint of a child after imports and warm-up: {mib(idle)} (each child's own "
        "is subtracted from its peak below)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.scale:
            sizes = (args.sizes or "mlp:4000x5,mlp:8000x5,mlp:16000x5").split(",")
            scale_mode(tmp, args.iterations or 100, sizes)
        else:
            if args.quick:
                cases = "resnet50:32,mlp:1024x3"
                iterations = args.iterations or 5
            else:
                cases = "resnet50:224,vgg16_bn,mlp:4096x4"
                iterations = args.iterations or 100
            sensitivity = not args.quick if args.sensitivity is None else args.sensitivity
            today = today_code(args.against or ("none" if args.quick else "main"), tmp)
            rows = [
                compare(case, iterations, tmp, sensitivity, args.quick, today, args.device)
                for case in (args.cases or cases).split(",")
            ]
            print_table(rows)
    print(f"load average at end {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
