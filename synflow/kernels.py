"""Whole-buffer elementwise steps of a round, fast on the CPU.

A SynFlow round makes a handful of passes over every prunable weight besides its forward and
backward pass: rebuild the masked weights, count, compare against the threshold bracket, gather
the candidates. On the CPU, torch runs the ones that read or write bool tensors several times
slower than a float pass (measured on 50M entries, 2 threads: `gt` into a bool tensor 37 ms,
`count_nonzero` of floats 39 ms, `where(mask, w, 0)` 97 ms, against 10 ms for `mul_`). Here they
run as numpy ufuncs (SIMD bool kernels) over cache-sized chunks, split between
`torch.get_num_threads()` threads (numpy releases the GIL), so that a count or a comparison is one
pass over memory and its bool temporary never leaves the cache.

Every function gives exactly what the torch expression in its docstring gives (the tests check it
on random data with NaN, infinities and ties), and falls back to that expression for tensors that
are not contiguous CPU tensors of a numpy dtype, e.g. on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

#: Smaller buffers take the torch expression: numpy's per-call overhead would cost more.
FAST_FROM = 1 << 16
#: Entries per chunk: its bool temporary (256 KiB) stays in the core's cache.
CHUNK = 1 << 18
#: Buffers smaller than this run in the calling thread (threads cost more than they save).
PARALLEL_FROM = 1 << 20

T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _fast(*tensors: torch.Tensor) -> bool:
    """Whether the numpy path takes these tensors: contiguous CPU tensors of a numpy dtype, the
    first of at least `FAST_FROM` entries."""
    return tensors[0].numel() >= FAST_FROM and all(
        t.device.type == "cpu"
        and t.is_contiguous()
        and t.dtype in (torch.float32, torch.float64, torch.bool)
        for t in tensors
    )


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).numpy()


def _spans(n: int, chunk: int, entries: int) -> list[tuple[int, int]]:
    """[start, end) ranges, one per thread, chunk-aligned (`entries`: entries per unit)."""
    if n == 0:
        return [(0, 0)]
    threads = max(1, torch.get_num_threads()) if n * entries >= PARALLEL_FROM else 1
    per = -(-n // threads)
    per = -(-per // chunk) * chunk
    return [(s, min(s + per, n)) for s in range(0, n, per)]


def _each(
    n: int, work: Callable[[int, int], T], chunk: int | None = None, entries: int = 1
) -> list[T]:
    """`work(start, end)` over the chunks of range(n) (`chunk` units each, `CHUNK` by default;
    a unit `entries` entries wide), in chunk order, the threads' spans in parallel."""
    chunk = chunk or CHUNK

    def span(bounds: tuple[int, int]) -> list[T]:
        return [work(s, min(s + chunk, bounds[1])) for s in range(bounds[0], bounds[1], chunk)]

    spans = _spans(n, chunk, entries)
    if len(spans) == 1:
        return span(spans[0])
    global _pool, _pool_size
    if _pool is None or _pool_size != len(spans):
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool, _pool_size = ThreadPoolExecutor(len(spans), "synflow-kernels"), len(spans)
    return [result for part in _pool.map(span, spans) for result in part]


def _scalar(a: np.ndarray, value: float):
    """`value` in `a`'s dtype, as torch converts a Python scalar compared with a tensor."""
    return a.dtype.type(value)


def count_true(mask: torch.Tensor) -> int:
    """`int(torch.count_nonzero(mask))` for a bool tensor."""
    if not _fast(mask):
        return int(torch.count_nonzero(mask))
    m = _array(mask)
    return sum(_each(m.size, lambda s, e: int(np.count_nonzero(m[s:e]))))


def count_nonzero(values: torch.Tensor) -> int:
    """`int(torch.count_nonzero(values))` for a floating tensor (NaN counts as non-zero)."""
    if not _fast(values):
        return int(torch.count_nonzero(values))
    a = _array(values)
    zero = _scalar(a, 0.0)

    def work(s: int, e: int) -> int:
        return e - s - int(np.count_nonzero(np.equal(a[s:e], zero)))

    return sum(_each(a.size, work))


def count_le(values: torch.Tensor, bound: float) -> int:
    """`int(torch.count_nonzero(values <= bound))`."""
    if not _fast(values):
        return int(torch.count_nonzero(values <= bound))
    a = _array(values)
    b = _scalar(a, bound)
    return sum(_each(a.size, lambda s, e: int(np.count_nonzero(np.less_equal(a[s:e], b)))))


def greater(values: torch.Tensor, bound: float, out: torch.Tensor) -> torch.Tensor:
    """`torch.gt(values, bound, out=out)` (`out`: a bool tensor shaped like `values`)."""
    if not _fast(values, out) or out.shape != values.shape:
        return torch.gt(values, bound, out=out)
    a, o = _array(values), _array(out)
    b = _scalar(a, bound)
    _each(a.size, lambda s, e: np.greater(a[s:e], b, out=o[s:e]))
    return out


def between(values: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries in (lo, hi] and their positions (int64), in position order:
    `(values[(values > lo) & (values <= hi)], torch.nonzero(...).squeeze(1))`."""
    if not _fast(values):
        inside = (values > lo) & (values <= hi)
        positions = torch.nonzero(inside.reshape(-1)).squeeze(1)
        return values.reshape(-1)[positions], positions
    a = _array(values)
    low, high = _scalar(a, lo), _scalar(a, hi)

    def work(s: int, e: int) -> np.ndarray:
        chunk = a[s:e]
        inside = np.greater(chunk, low)
        np.logical_and(inside, np.less_equal(chunk, high), out=inside)
        return np.flatnonzero(inside) + s

    positions = np.concatenate([np.empty(0, dtype=np.int64), *_each(a.size, work)])
    return torch.from_numpy(a[positions]), torch.from_numpy(positions.astype(np.int64))


def _keep_bits(mask: np.ndarray, bits: type) -> np.ndarray:
    """All-ones bits where `mask` is True, zero bits where False (True is 1: its negation -1)."""
    return np.negative(mask.view(np.int8)).astype(bits)


def _bits(a: np.ndarray) -> np.ndarray:
    """The same memory as integers of the same width (float32 -> int32, float64 -> int64)."""
    return a.view(np.int32 if a.dtype == np.float32 else np.int64)


def where_kept(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`torch.where(mask, values, 0, out=values)`: zero the pruned entries in place (exactly
    +0.0, whatever they held: a bitwise and, not a multiplication that would keep NaN)."""
    if not _fast(values, mask) or values.shape != mask.shape:
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        return torch.where(mask, values, zero, out=values)
    v, m = _array(values), _array(mask)
    vb = _bits(v)
    _each(v.size, lambda s, e: np.bitwise_and(vb[s:e], _keep_bits(m[s:e], vb.dtype), out=vb[s:e]))
    return values


def abs_where(source: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`torch.where(mask, source.abs(), 0, out=out)` in one pass over memory."""
    if not _fast(source, mask, out) or not (
        source.shape == mask.shape == out.shape and source.dtype == out.dtype
    ):
        torch.abs(source, out=out)
        return where_kept(out, mask)
    src, m, o = _array(source), _array(mask), _array(out)
    ob = _bits(o)

    def work(s: int, e: int) -> None:
        np.abs(src[s:e], out=o[s:e])
        np.bitwise_and(ob[s:e], _keep_bits(m[s:e], ob.dtype), out=ob[s:e])

    _each(o.size, work)
    return out


def compress(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`values[keep]` for 1-D `values` and a bool `keep` of the same length (a new tensor)."""
    if not _fast(keep) or values.device.type != "cpu" or not values.is_contiguous():
        return values[keep]
    v, k = values.numpy(), _array(keep)
    counts = _each(k.size, lambda s, e: int(np.count_nonzero(k[s:e])))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out = np.empty(int(offsets[-1]), dtype=v.dtype)

    def fill(s: int, e: int) -> None:
        i = s // CHUNK
        np.compress(k[s:e], v[s:e], out=out[offsets[i] : offsets[i + 1]])

    _each(k.size, fill)
    return torch.from_numpy(out)


def min_positive(values: torch.Tensor) -> float:
    """`float(torch.where(values > 0, values, inf).amin())`: the smallest positive entry (inf
    when there is none), for the magnitude ranges of a traced pass (pruned weights are zeros)."""
    if values.numel() == 0:
        return math.inf
    if not _fast(values):
        return float(torch.where(values > 0, values, math.inf).amin())
    a = _array(values)
    inf = _scalar(a, math.inf)

    def work(s: int, e: int) -> float:
        chunk = a[s:e]
        return float(np.where(chunk > 0, chunk, inf).min())

    return min(_each(a.size, work), default=math.inf)


def _extremes(parts: list[tuple[float, float]]) -> tuple[float, float]:
    """(min, max) over per-chunk (min, max) pairs; NaN if any is NaN, as `torch.aminmax`."""
    lows, highs = zip(*parts, strict=True)
    if any(math.isnan(v) for v in lows):
        return math.nan, math.nan
    return min(lows), max(highs)


def mul_outer(
    weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, extremes: torch.Tensor
) -> torch.Tensor:
    """`weight.mul_(torch.outer(rows, cols))` for a 2-D `weight` (each entry times the exact
    float product rows[i] * cols[j], as a batch-1 weight gradient holds it), and
    `torch.aminmax(weight, out=(extremes[0], extremes[1]))` of the result, without the
    weight-sized outer product: a block of rows at a time, while it is in the cache."""
    if not (_fast(weight, rows, cols) and weight.dim() == 2 and extremes.device.type == "cpu"):
        width = weight.shape[1] if weight.dim() == 2 else 1
        block = max(1, CHUNK // max(1, width)) if weight.device.type == "cpu" else 1 << 30
        for start in range(0, weight.shape[0], block):
            part = weight[start : start + block]
            part.mul_(torch.outer(rows[start : start + block], cols))
        torch.aminmax(weight, out=(extremes[0], extremes[1]))
        return weight
    w, g, x = weight.detach().numpy(), _array(rows), _array(cols)
    block = max(1, CHUNK // w.shape[1])

    def work(s: int, e: int) -> tuple[float, float]:
        part = w[s:e]
        with np.errstate(all="ignore"):  # inf * 0 is NaN, as in torch, without a warning
            np.multiply(part, np.multiply.outer(g[s:e], x), out=part)
        return float(part.min()), float(part.max())

    extremes.numpy()[:2] = _extremes(_each(w.shape[0], work, chunk=block, entries=w.shape[1]))
    return weight


def gather_outer(
    weight: torch.Tensor,
    positions: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """`out = weight.reshape(-1)[positions] * torch.outer(rows, cols).reshape(-1)[positions]`
    for a 2-D `weight` and int32 `positions`: the scores of the alive entries alone, their
    gradient formed only where it is needed."""
    width = weight.shape[1]
    flat = weight.detach().reshape(-1)
    if not (_fast(out, rows, cols) and flat.device.type == "cpu" and flat.is_contiguous()):
        torch.index_select(flat, 0, positions, out=out)
        across = torch.div(positions, width, rounding_mode="floor").long()
        out.mul_(rows[across] * cols[positions.long() - across * width])
        return out
    w, p, o = flat.numpy(), positions.numpy(), _array(out)
    g, x = _array(rows), _array(cols)

    def work(s: int, e: int) -> None:
        at = p[s:e]
        i, j = np.divmod(at, np.int32(width))
        np.take(w, at, out=o[s:e])
        with np.errstate(all="ignore"):
            np.multiply(o[s:e], np.multiply(g[i], x[j]), out=o[s:e])

    _each(o.size, work)
    return out
