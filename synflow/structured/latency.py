"""Measured inference latency: batch 1, CPU, the median of repeated runs after a warm-up.

Two runtimes: torch (the module as loaded, before and after pruning) and, for ONNX, onnxruntime
on the graph as uploaded and as written. Medians resist the odd slow run of a loaded machine;
the absolute numbers still depend on it, so compare before and after from one report.

Models compared with each other are timed interleaved (`interleaved_ms`: each round runs every
one once, in turn), not one after another: on a shared 2-core machine the load changes within
seconds, and timing model A for a second and then model B for a second measured that change as
a 1.4-3.4x difference between models of identical shapes (docs/results.md, "latency puzzle").
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

#: timed runs (the median is reported) and untimed warm-up runs before them
REPEATS = 10
WARMUP = 3


def interleaved_ms(
    runs: dict[str, Callable[[], object]],
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    min_seconds: float = 0.0,
) -> dict[str, float]:
    """Median ms of each run, timed in rounds of one run of each (drift hits all alike); at least
    `repeats` rounds, more until `min_seconds` have passed, so fast models get enough rounds
    to outlast bursts of load (30 rounds of a 1 ms model still gave 2x apart medians)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    began = time.perf_counter()
    rounds = 0
    while rounds < repeats or time.perf_counter() - began < min_seconds:
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def median_ms(run: Callable[[], object], repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    return interleaved_ms({"run": run}, repeats, warmup)["run"]


def torch_ms(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], **kw) -> float:
    with torch.inference_mode():
        return median_ms(lambda: module(*inputs), **kw)


def onnxruntime_run(model: bytes | str, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """One inference of an ONNX graph (serialised bytes or a path) in onnxruntime's CPU
    provider, session and feeds prepared.

    Its threads do not spin after a run: spinning threads take the cores from whatever is timed
    next (measured, ResNet-18 at 224 interleaved with torch on 2 cores: torch 64.65 ms against
    28.5 ms without spinning and 26.72 ms alone; onnxruntime itself 19.76 against 16.07 ms)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {
        n: np.ascontiguousarray(x.detach().cpu().numpy())
        for n, x in zip(names, inputs, strict=True)
    }
    return lambda: session.run(None, feeds)


def onnxruntime_ms(model: bytes | str, inputs: tuple[torch.Tensor, ...], **kw) -> float:
    """Latency of an ONNX graph (serialised bytes or a path) in onnxruntime's CPU provider."""
    return median_ms(onnxruntime_run(model, inputs), **kw)


def cuda_ms(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], **kw) -> float | None:
    """Latency of a copy of the module on the first GPU (synchronised runs); None without one."""
    if not torch.cuda.is_available():
        return None
    import copy

    gpu = copy.deepcopy(module).to("cuda")
    xs = tuple(x.to("cuda") for x in inputs)

    def run() -> None:
        gpu(*xs)
        torch.cuda.synchronize()

    with torch.inference_mode():
        return median_ms(run, **kw)


NO_GPU = "not measured: no CUDA device on this machine"
