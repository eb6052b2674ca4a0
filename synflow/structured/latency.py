"""Measured inference latency: batch 1, CPU, the median of repeated runs after a warm-up.

Two runtimes: torch (the module as loaded, before and after pruning) and, for ONNX, onnxruntime
on the graph as uploaded and as written. Medians resist the odd slow run of a loaded machine;
the absolute numbers still depend on it, so compare before and after from one report.
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


def median_ms(run: Callable[[], object], repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def torch_ms(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], **kw) -> float:
    with torch.inference_mode():
        return median_ms(lambda: module(*inputs), **kw)


def onnxruntime_ms(model: bytes | str, inputs: tuple[torch.Tensor, ...], **kw) -> float:
    """Latency of an ONNX graph (serialised bytes or a path) in onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {
        n: np.ascontiguousarray(x.detach().cpu().numpy())
        for n, x in zip(names, inputs, strict=True)
    }
    return median_ms(lambda: session.run(None, feeds), **kw)


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
