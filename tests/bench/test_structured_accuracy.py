"""The digits accuracy path of bench/structured.py on a tiny setting (a slice of the data, one
round, one epoch, one bisection step): it completes, every variant of every seed gets a row, and
the table merges the seeds. Accuracies are not asserted (one epoch on 96 images), only that they
are accuracies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "structured.py"


@pytest.fixture(scope="module")
def structured():
    spec = importlib.util.spec_from_file_location("bench_structured", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_accuracy_rows_tiny(structured, one_thread, monkeypatch):
    monkeypatch.setattr(structured, "BISECTION_STEPS", 1)  # one density tried for L1's MACs
    x_train, y_train, x_test, y_test = structured.digits()
    assert x_train.shape[1:] == (3, 32, 32) and len(y_train) + len(y_test) == 1797
    data = (x_train[:96], y_train[:96], x_test[:32], y_test[:32])
    rows = structured.accuracy_rows(["mobilenet_v3_small"], 1, 1, seeds=(0, 1), data=data)
    variants = {r["variant"].split(" (d=")[0] for r in rows}
    assert len(rows) == 2 * len(variants) == 12
    assert "dense" in variants and "channel SynFlow 50% local" in variants
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    dense = [r for r in rows if r["variant"] == "dense"]
    local = [r for r in rows if r["variant"] == "channel SynFlow 50% local"]
    assert all(p["gmacs"] < d["gmacs"] for p, d in zip(local, dense, strict=True))
    table = structured.accuracy_table(rows)
    assert len(table) == len(variants) and all(t["seeds"] == 2 for t in table)
    for t in table:
        assert t["mean"] == pytest.approx(sum(t["accuracies"]) / 2) and t["sd"] >= 0.0
        assert len(t["densities"]) == (2 if "L1's MACs" in t["variant"] else 0)
