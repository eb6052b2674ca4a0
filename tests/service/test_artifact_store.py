"""The artifact folder: paths only from canonical job ids, all-or-nothing publishing, and the
sweep of uploads an interrupted request left behind."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from jobs.stores.artifacts import ArtifactStore


def test_paths_only_from_canonical_job_ids(tmp_path):
    store = ArtifactStore(tmp_path)
    job_id = str(uuid.uuid4())
    assert store.input_path(job_id) == tmp_path / "jobs" / job_id / "input"
    for bad in ("../../etc", job_id.upper(), job_id.replace("-", ""), "", "a/b"):
        with pytest.raises(ValueError):
            store.job_dir(bad)


def test_publish_moves_all_files_at_once(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    job_id = str(uuid.uuid4())
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b"):
        (out / name).write_text(name)
    final = store.publish(job_id, out, ["a", "b"])
    assert sorted(p.name for p in final.iterdir()) == ["a", "b"]
    assert [p.name for p in store.job_dir(job_id).iterdir()] == ["artifacts"]  # no staging left
    with pytest.raises(FileNotFoundError):
        store.publish(job_id, out, ["missing"])
    assert sorted(p.name for p in store.artifacts_dir(job_id).iterdir()) == ["a", "b"]
    store.delete(job_id)
    assert not store.job_dir(job_id).exists()


def test_stale_partial_uploads_are_removed(tmp_path):
    store = ArtifactStore(tmp_path)
    old, new = (store.upload_path(str(uuid.uuid4())) for _ in range(2))
    for path in (old, new):
        path.write_bytes(b"x")
    past = time.time() - 2 * 24 * 3600
    os.utime(old, (past, past))
    assert store.remove_stale_uploads() == 1
    assert not old.exists() and new.exists()
