"""The parts of job isolation, each against a plain expectation: redaction of host paths, the
scratch scan and its background cleanup, uid slot leases between processes, private file modes,
the default data folder, and what the sandbox lets a job read of the checkout."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from jobs.settings import Settings
from jobs.stores.artifacts import ArtifactStore
from jobs.stores.sqlite_jobs import SqliteJobStore
from worker import scratch as scratch_folder
from worker.redaction import redact
from worker.sandbox import SandboxPolicy, read_scratch_file, start
from worker.sandbox.policy import PROJECT_ROOT
from worker.slots import NoFreeSlot, UidSlots

IS_ROOT = os.geteuid() == 0
UID = random.randrange(300_000, 360_000, 4)

# --- redaction --------------------------------------------------------------------------------


def test_redact_names_known_folders_and_hides_other_absolute_paths(tmp_path):
    scratch = tmp_path / "scratch" / "job-1"
    text = (
        f"cannot open {scratch}/input; {PROJECT_ROOT}/synflow/io.py line 3; "
        f"{sys.prefix}/lib/x.so; '/etc/shadow' missing; shape 1,3,8/2 and code/__torch__.py"
    )
    out = redact(text, {"scratch": scratch})
    assert "<scratch>/input" in out and "<code>/synflow/io.py" in out
    assert "<python>/lib/x.so" in out and "'<path>'" in out
    assert "8/2" in out and "code/__torch__.py" in out  # not paths: kept
    assert str(tmp_path) not in out and str(PROJECT_ROOT) not in out and "/etc" not in out
    capped = redact("x" * 10_000, limit=100)
    assert len(capped) == 100 and capped.endswith("...")


# --- scratch ----------------------------------------------------------------------------------


def test_scratch_scan_counts_and_stops_past_the_limit(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for i in range(5):
        (tmp_path / "d" / f"f{i}").write_bytes(b"x" * 5000)
    (tmp_path / "link").symlink_to("/etc")  # counted, never followed
    found = scratch_folder.usage(tmp_path, max_entries=100)
    assert found.complete and found.files == 8
    assert found.bytes >= 5 * 4096
    early = scratch_folder.usage(tmp_path, max_entries=3)
    assert not early.complete and early.files == 4
    assert scratch_folder.over_limit(tmp_path, 100, 1 << 30) is None
    assert "more than 3 files" in scratch_folder.over_limit(tmp_path, 3, 1 << 30)
    assert "more than 20000 bytes" in scratch_folder.over_limit(tmp_path, 100, 20_000)


def test_scratch_is_discarded_at_once_and_deleted_in_the_background(tmp_path):
    folder = tmp_path / "job-run"
    folder.mkdir()
    for i in range(3000):
        (folder / str(i)).touch()
    began = time.monotonic()
    thread = scratch_folder.discard(folder)
    assert time.monotonic() - began < 0.5 and not folder.exists()
    thread.join(30)
    assert list(tmp_path.iterdir()) == [tmp_path / ".trash"]
    assert not any((tmp_path / ".trash").iterdir())


# --- uid slots --------------------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_uid_slots_are_exclusive_across_processes(tmp_path):
    slots = UidSlots(tmp_path / "slots", base=UID, count=3)
    (tmp_path / "slots").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "slots" / f"uid-{UID}.lock")],
        stdout=subprocess.PIPE,
    )  # another worker of this host, holding the first slot
    try:
        assert holder.stdout.readline() == b"held\n"
        with slots.lease(timeout=1) as first, slots.lease(timeout=1) as second:
            assert (first, second) == (UID + 1, UID + 2)
            began = time.monotonic()
            with pytest.raises(NoFreeSlot, match="SYNFLOW_SANDBOX_UID_SLOTS"), slots.lease(0.3):
                pass
            assert time.monotonic() - began < 2
        holder.kill()  # the kernel releases a dead holder's lock
        holder.wait()
        with slots.lease(timeout=1) as again:
            assert again == UID
    finally:
        holder.kill()
        holder.wait()
    assert stat.S_IMODE((tmp_path / "slots" / f"uid-{UID}.lock").stat().st_mode) == 0o600


# --- private modes and the data folder --------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_stored_files_are_private(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    job_id = str(uuid.uuid4())
    store.upload_path(job_id).write_bytes(b"model")
    store.upload_path(job_id).chmod(0o644)
    store.adopt_upload(job_id)
    source = tmp_path / "out"
    source.mkdir()
    (source / "report.json").write_text("{}")
    (source / "report.json").chmod(0o644)
    store.publish(job_id, source, ["report.json"], {"report.png": b"drawn by the worker"})
    assert mode(store.input_path(job_id)) == 0o600
    assert mode(store.artifact_path(job_id, "report", "torchscript")) == 0o600
    assert mode(store.artifact_path(job_id, "report.png", "torchscript")) == 0o600
    for folder in ("artifacts", "artifacts/uploads", "artifacts/jobs"):
        assert mode(tmp_path / folder) == 0o700, folder
    assert mode(store.job_dir(job_id)) == mode(store.artifacts_dir(job_id)) == 0o700
    jobs = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    jobs.ping()
    assert mode(tmp_path / "data") == 0o700
    for path in (tmp_path / "data").iterdir():  # the database and its -wal and -shm files
        assert mode(path) == 0o600, path.name


def test_data_dir_defaults_to_the_state_folder_outside_the_checkout(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("SYNFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert Settings().data_dir == tmp_path / "state" / "synflow"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().data_dir == tmp_path / "home" / ".local" / "state" / "synflow"
    monkeypatch.setenv("SYNFLOW_DATA_DIR", str(tmp_path / "mine"))
    assert Settings().data_dir == tmp_path / "mine"


# --- the sandbox's view of the checkout ---------------------------------------------------------

READER = """
import json, os
outcomes = {}
for name, path in json.load(open("targets.json")).items():
    try:
        with open(path, "rb") as f:
            outcomes[name] = "read: " + f.read(64).decode(errors="replace")
    except OSError as e:
        outcomes[name] = "error: " + type(e).__name__
import synflow.engine, worker.child  # the code itself is importable
outcomes["cwd-listing"] = sorted(os.listdir("."))
json.dump(outcomes, open("result.json", "w"))
"""

POLICIES = pytest.mark.parametrize(
    "extra",
    [{}, {"namespaces": False, "drop_privileges": False}],
    ids=["full", "degraded"],
)


@POLICIES
def test_a_job_reads_its_granted_input_and_nothing_else_of_checkout_or_data(tmp_path, extra):
    secret = "CHECKOUT-SECRET-" + uuid.uuid4().hex[:8]
    dotfile = PROJECT_ROOT / f".env.isolation-test-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    (data / "jobs").mkdir(parents=True)
    data.chmod(0o755)  # even readable for everyone: the view and Landlock keep the job out
    other = data / "jobs" / "other-input"
    other.write_text("OTHER-TENANT-" + secret)
    mine = data / "jobs" / "my-input"
    mine.write_text("MINE")
    mine.chmod(0o600)  # private, as stored: readable by the job only through the grant
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dotfile.write_text(secret)
    dotfile.chmod(0o644)
    targets = {
        "dotfile": str(dotfile),
        "pyproject": str(PROJECT_ROOT / "pyproject.toml"),
        "service code": str(PROJECT_ROOT / "service" / "app.py"),
        "other input": str(other),
        "mine": str(mine),
    }
    (scratch / "targets.json").write_text(json.dumps(targets))
    policy = SandboxPolicy(
        scratch=scratch, uid=UID, gid=UID, read_only_paths=(mine,), granted_files=(mine,),
        hidden_paths=(data,), **extra,
    )  # fmt: skip
    try:
        proc = start([sys.executable, "-c", READER], policy)
        proc.wait(120)
    finally:
        dotfile.unlink()
    raw = read_scratch_file(scratch, "result.json")
    outcomes = json.loads(raw)
    assert proc.returncode == 0, proc.stderr_tail()
    assert outcomes["mine"] == "read: MINE"
    for name in ("dotfile", "pyproject", "service code", "other input"):
        assert outcomes[name].startswith("error:"), (name, outcomes[name])
    assert secret.encode() not in raw
    assert mode(mine) == 0o600 and mine.stat().st_gid == os.getgid()  # the grant is undone
