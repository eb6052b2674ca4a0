"""Uploaded inputs and published artifacts, in one folder shared by the API and the workers.

Layout, derived only from server-generated job ids (never from client-supplied names):

    <root>/uploads/<id>.partial       an upload being received
    <root>/jobs/<id>/input            the uploaded model
    <root>/jobs/<id>/calibration      its calibration data, when it came with some
    <root>/jobs/<id>/artifacts/       masks.safetensors, weights.safetensors, the model (named
                                      by the format registry, synflow.io.formats: model.pt,
                                      model.onnx, ...), report.json, report.png (drawn by the
                                      worker); appears whole (one rename)

Every file is stored mode 0600 and every folder 0700 (jobs/stores/private.py): only the
service's user reads them; a job reads its own input only, through the sandbox's grant.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

from jobs.stores.private import DIR_MODE, FILE_MODE, private_dir, private_file
from synflow.io.formats import model_file

#: what the job writes (besides its model file)
ARTIFACT_FILES = {
    "masks": "masks.safetensors",
    "weights": "weights.safetensors",
    "report": "report.json",
}
#: what the worker draws from the checked report, outside the sandbox (synflow/plot.py)
DRAWN_FILES = {"report.png": "report.png"}


def artifact_file(name: str, fmt: str) -> str:
    return model_file(fmt) if name == "model" else {**ARTIFACT_FILES, **DRAWN_FILES}[name]


def _checked(job_id: str) -> str:
    """Refuse anything but a canonical UUID, so a path can never be steered elsewhere."""
    if str(uuid.UUID(job_id)) != job_id:
        raise ValueError(f"not a canonical job id: {job_id!r}")
    return job_id


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("uploads", "jobs"):
            private_dir(self.root / sub)

    def upload_path(self, job_id: str) -> Path:
        return self.root / "uploads" / f"{_checked(job_id)}.partial"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / _checked(job_id)

    def input_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def calibration_upload_path(self, job_id: str) -> Path:
        return self.root / "uploads" / f"{_checked(job_id)}.calibration.partial"

    def calibration_path(self, job_id: str) -> Path:
        """The job's calibration data (the `calibration` part), when it came with one."""
        return self.job_dir(job_id) / "calibration"

    def artifacts_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "artifacts"

    def artifact_path(self, job_id: str, name: str, fmt: str) -> Path:
        return self.artifacts_dir(job_id) / artifact_file(name, fmt)

    def adopt_upload(self, job_id: str) -> Path:
        """Move a completely received upload to its job's input (and its calibration data, when
        it came with some)."""
        target = self.input_path(job_id)
        private_dir(target.parent)
        calibration = self.calibration_upload_path(job_id)
        if calibration.exists():
            private_file(calibration)
            os.replace(calibration, self.calibration_path(job_id))
        upload = self.upload_path(job_id)
        private_file(upload)
        os.replace(upload, target)
        return target

    def publish(
        self, job_id: str, source: Path, files: list[str], drawn: dict[str, bytes] | None = None
    ) -> Path:
        """Move `files` from `source` and write the `drawn` ones (name -> bytes) into the
        job's artifacts; all appear at once or none."""
        final = self.artifacts_dir(job_id)
        staging = final.with_name(f".artifacts-{uuid.uuid4().hex}.partial")
        private_dir(final.parent)
        staging.mkdir(mode=DIR_MODE)
        os.chmod(staging, DIR_MODE)
        try:
            for name in files:
                shutil.move(source / name, staging / name)
                private_file(staging / name)
            for name, data in (drawn or {}).items():
                fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def delete(self, job_id: str) -> None:
        self.upload_path(job_id).unlink(missing_ok=True)
        self.calibration_upload_path(job_id).unlink(missing_ok=True)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def remove_stale_uploads(self, older_than: float = 24 * 3600.0) -> int:
        """Delete partial uploads left by an API process that was killed mid-request."""
        removed = 0
        cutoff = time.time() - older_than
        for partial in (self.root / "uploads").glob("*.partial"):
            with contextlib.suppress(FileNotFoundError):
                if partial.stat().st_mtime < cutoff:
                    partial.unlink()
                    removed += 1
        return removed

    def ping(self) -> None:
        probe = self.root / "uploads" / f".ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
