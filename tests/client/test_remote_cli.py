"""The remote CLI (`synflow submit/status/wait/cancel/delete/download/jobs`) against the real
embedded service: its exit codes (0 done, 1 refused or job not succeeded, 2 refused before
sending or no service) and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from synflow.client import Client
from tests.client.conftest import KEYS, LONG, SHAPE
from tests.service.harness import REPO_ROOT, wait_until

pytestmark = pytest.mark.slow

SHAPE_FLAG = ["--input-shape", ",".join(map(str, SHAPE))]


def cli(service, tenant: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNFLOW_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if tenant:
        env["SYNFLOW_API_KEY"] = KEYS[tenant]
    env["SYNFLOW_URL"] = service.url
    return subprocess.run([sys.executable, "-m", "synflow", *args], env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("synflow: error: ")
    return err


def test_missing_shape_names_the_cli_flag(service):
    err = one_line_error(
        cli(service, "heidi", "submit", str(service.model), "--sparsity", "0.9"), 1
    )
    assert "HTTP 422" in err and "--input-shape 1,3,224,224" in err and "--input SPEC" in err
    assert "-F " not in err


def test_submit_wait_jobs_download(service, tmp_path):
    submitted = cli(service, "heidi", "submit", str(service.model), "--sparsity", "0.5",
                    "--iterations", "3", *SHAPE_FLAG)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] in ("queued", "running", "succeeded")
    waited = cli(service, "heidi", "wait", job["id"], "--interval", "0.2", "--timeout", "120")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "succeeded"
    listing = cli(service, "heidi", "jobs", "--all", "--limit", "1")
    assert listing.returncode == 0 and listing.stdout.startswith(f"{job['id']}  succeeded")
    out = tmp_path / "new" / "pruned"
    got = cli(service, "heidi", "download", job["id"], "--out", str(out), "--artifact", "report")
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(out / "report.json")
    assert json.loads((out / "report.json").read_text())["totals"]
    assert cli(service, "heidi", "delete", job["id"]).returncode == 0


def test_wait_timeout_cancel_and_canceled_download(service, tmp_path):
    with Client(service.url, KEYS["heidi"]) as c:
        job = c.submit(service.model, input_shape=SHAPE, **LONG)
        try:
            wait_until(lambda: c.get(job.id).status == "running", 60, "never ran")
            late = cli(service, "heidi", "wait", job.id, "--timeout", "0.5", "--interval", "0.1")
            assert f"job {job.id} still running after 0.5 s" in one_line_error(late, 1)
            canceled = cli(service, "heidi", "cancel", job.id)
            assert canceled.returncode == 0, canceled.stderr
            assert json.loads(canceled.stdout)["status"] in ("running", "canceled")
            ended = cli(service, "heidi", "wait", job.id, "--timeout", "60")
            assert ended.returncode == 1 and json.loads(ended.stdout)["status"] == "canceled"
            out = tmp_path / "nested" / "pruned"
            err = one_line_error(cli(service, "heidi", "download", job.id, "--out", str(out)), 1)
            assert "HTTP 409" in err and "canceled" in err
            assert not (tmp_path / "nested").exists()  # no empty folder left
        finally:
            c.delete(job.id)


def test_refusals_are_one_line(service):
    bad_key = one_line_error(cli(service, None, "jobs"), 1)
    assert "HTTP 401" in bad_key and "Authorization: Bearer" in bad_key
    missing = one_line_error(cli(service, "heidi", "status", "nope"), 1)
    assert "HTTP 404 Job not found: there is no job nope" in missing
    before = one_line_error(
        cli(service, "heidi", "submit", str(service.model), "--sparsity", "2"), 2
    )
    assert "sparsity" in before  # refused before any upload
    gone = one_line_error(cli(service, "heidi", "submit", "no-such.pt", "--sparsity", "0.5"), 1)
    assert "no such file: no-such.pt" in gone
