"""`synflow.kernels` gives exactly what the torch expression it replaces gives.

Random data with the values that break naive versions: NaN, +-inf, -0.0, denormals, ties at the
bounds, both float dtypes; sizes that are not multiples of the chunk, split over two threads."""

from __future__ import annotations

import pytest
import torch

from synflow import kernels
from tests.synflow.kernel_paths import kernel_path  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("kernel_path")

SIZES = [0, 1, 63, 64, 65, 1000, 4099]


def nasty(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 8, (n,), generator=g).to(dtype) / 4  # ties at every level
    specials = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, torch.finfo(dtype).tiny / 4],
        dtype=dtype,
    )
    pick = torch.rand(n, generator=g) < 0.2
    x[pick] = specials[torch.randint(0, len(specials), (int(pick.sum()),), generator=g)]
    return x


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN included, -0.0 told from 0.0."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            torch.nan_to_num(a, nan=123.0).view(torch.uint8 if a.dtype == torch.bool else a.dtype),
            torch.nan_to_num(b, nan=123.0).view(torch.uint8 if b.dtype == torch.bool else b.dtype),
        )
        and torch.equal(torch.signbit(a.float()), torch.signbit(b.float()))
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
def test_counts(n: int, dtype: torch.dtype) -> None:
    x = nasty(n, dtype, n)
    assert kernels.count_true(x > 0.5) == int(torch.count_nonzero(x > 0.5))
    assert kernels.count_nonzero(x) == int(torch.count_nonzero(x))
    for bound in (0.0, 0.5, 1.0, float("inf"), -float("inf")):
        assert kernels.count_le(x, bound) == int(torch.count_nonzero(x <= bound)), bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
def test_greater_and_between(n: int, dtype: torch.dtype) -> None:
    x = nasty(n, dtype, 100 + n)
    for lo, hi in ((0.0, 0.5), (0.25, 0.25), (0.5, float("inf")), (-float("inf"), 0.0)):
        out = torch.ones(n, dtype=torch.bool)
        assert kernels.greater(x, lo, out=out) is out
        assert torch.equal(out, torch.gt(x, lo))
        values, positions = kernels.between(x, lo, hi)
        expected = torch.nonzero((x > lo) & (x <= hi)).squeeze(1)
        assert positions.dtype == torch.int64
        assert torch.equal(positions, expected), (lo, hi)
        assert same(values, x[expected])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
def test_where_kept_zeroes_exactly(n: int, dtype: torch.dtype) -> None:
    """Pruned entries become +0.0 even when they hold NaN or inf; kept ones keep every bit."""
    x = nasty(n, dtype, 200 + n)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.6
    expected = torch.where(mask, x, torch.zeros((), dtype=dtype))
    got = x.clone()
    assert kernels.where_kept(got, mask) is got
    assert same(got, expected)


def test_views_and_shapes() -> None:
    """Views into a flat buffer (the engine's layout) and multi-dimensional tensors."""
    buffer = nasty(1000, torch.float32, 7)
    view = buffer[100:700].view(20, 30)
    assert kernels.count_le(view, 0.5) == int((view <= 0.5).sum())
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[::2] = True
    before = buffer.clone()
    kernels.where_kept(view, mask)
    assert same(buffer[:100], before[:100]) and same(buffer[700:], before[700:])
    assert same(view, torch.where(mask, before[100:700].view(20, 30), torch.zeros(())))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32])
@pytest.mark.parametrize("n", SIZES)
def test_compress(n: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(300 + n)
    values = torch.randint(-1000, 1000, (n,), generator=g).to(dtype)
    for share in (0.0, 0.05, 0.5, 1.0):
        keep = torch.rand(n, generator=g) < share
        got = kernels.compress(values, keep)
        assert got.dtype == dtype and torch.equal(got, values[keep]), share


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
def test_abs_where(n: int, dtype: torch.dtype) -> None:
    source = nasty(n, dtype, 400 + n) * torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0).to(dtype)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.6
    expected = torch.where(mask, source.abs(), torch.zeros((), dtype=dtype))
    out = torch.full((n,), 7.0, dtype=dtype)
    assert kernels.abs_where(source, mask, out) is out
    assert same(out, expected)
    in_place = source.clone()
    assert same(kernels.abs_where(in_place, mask, in_place), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
def test_min_positive(n: int, dtype: torch.dtype) -> None:
    x = nasty(n, dtype, 600 + n).nan_to_num(nan=0.0).abs()  # what log2_range hands it
    x[: n // 2] = 0.0
    expected = float(torch.where(x > 0, x, float("inf")).amin()) if n else float("inf")
    assert kernels.min_positive(x) == expected
    assert kernels.min_positive(torch.zeros(n, dtype=dtype)) == float("inf")


def same_but_nan_sign(a: torch.Tensor, b: torch.Tensor) -> bool:
    """`same`, any NaN equal to any NaN (x86 gives inf * 0 a sign bit that depends on the operand
    order a vectorised loop chose; no caller looks at a NaN's sign)."""
    nan = torch.tensor(float("nan"), dtype=a.dtype)
    return same(torch.where(a.isnan(), nan, a), torch.where(b.isnan(), nan, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 2), (3, 70), (40, 9), (9, 300), (257, 64)])
def test_mul_outer(shape: tuple[int, int], dtype: torch.dtype) -> None:
    n = shape[0] * shape[1]
    w = nasty(n, dtype, n).reshape(shape)
    rows, cols = nasty(shape[0], dtype, 7), nasty(shape[1], dtype, 8)
    expected = w * torch.outer(rows, cols)
    extremes = torch.full((2,), 5.0, dtype=dtype)
    out = w.clone()
    assert kernels.mul_outer(out, rows, cols, extremes) is out
    assert same_but_nan_sign(out, expected)
    low, high = torch.aminmax(expected)  # NaN if any is NaN (its sign does not matter)
    torch.testing.assert_close(extremes, torch.stack([low, high]), rtol=0, atol=0, equal_nan=True)
    finite = torch.rand(shape, dtype=dtype) + 0.5  # no NaN: the extremes themselves
    out = finite.clone()
    kernels.mul_outer(out, rows.abs().nan_to_num(), cols.abs().nan_to_num(), extremes)
    assert same(out, finite * torch.outer(rows.abs().nan_to_num(), cols.abs().nan_to_num()))
    assert same(extremes, torch.stack(list(torch.aminmax(out))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 2), (3, 70), (40, 9), (257, 64)])
def test_gather_outer(shape: tuple[int, int], dtype: torch.dtype) -> None:
    n = shape[0] * shape[1]
    w = nasty(n, dtype, 3 * n).reshape(shape)
    rows, cols = nasty(shape[0], dtype, 9), nasty(shape[1], dtype, 10)
    g = torch.Generator().manual_seed(n)
    positions = torch.nonzero(torch.rand(n, generator=g) < 0.4).squeeze(1).to(torch.int32)
    out = torch.full((positions.numel(),), 7.0, dtype=dtype)
    assert kernels.gather_outer(w, positions, rows, cols, out) is out
    p = positions.long()
    assert same_but_nan_sign(out, w.reshape(-1)[p] * torch.outer(rows, cols).reshape(-1)[p])
