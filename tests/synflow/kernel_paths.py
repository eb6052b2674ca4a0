"""Run a test on both paths of `synflow.kernels`: torch (small buffers, GPUs) and numpy.

Test data is small, so by default every kernel takes its torch fallback. `kernel_path` runs a test
twice, the second time with the numpy path forced on and chunks of 64 entries split over two
threads, so that chunk and thread boundaries fall inside the test's tensors."""

from __future__ import annotations

import pytest

from synflow import kernels


@pytest.fixture(params=["torch", "numpy"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "numpy":
        monkeypatch.setattr(kernels, "FAST_FROM", 0)
        monkeypatch.setattr(kernels, "CHUNK", 64)
        monkeypatch.setattr(kernels, "PARALLEL_FROM", 128)
        monkeypatch.setattr(kernels.torch, "get_num_threads", lambda: 2)
    return request.param
