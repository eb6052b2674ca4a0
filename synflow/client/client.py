"""`Client`: the service's HTTP contract (DESIGN.md) as Python calls, on httpx.

Every error the service answers is raised as `ProblemError`, and so is a service that cannot
be reached (status None). Nothing here imports the service, the worker or torch."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from synflow.client.errors import ProblemError, from_response, unreachable
from synflow.client.models import Job, JobPage, Problem
from synflow.io.atomic import first_missing, write_atomically

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, KEY_ENV = "SYNFLOW_URL", "SYNFLOW_API_KEY"


class JobTimeout(TimeoutError):
    """`wait` gave up; `job` is the last state seen (the job itself goes on)."""

    def __init__(self, job: Job, timeout: float):
        self.job = job
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")


@dataclass
class Pruned:
    """What `prune_remote` got: the finished job and the files written, by artifact name."""

    job: Job
    files: dict[str, Path]


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class Client:
    """A connection to one service, for one API key.

    `url` defaults to `$SYNFLOW_URL`, else http://127.0.0.1:8000; `api_key` to
    `$SYNFLOW_API_KEY` (none: the open embedded service). `timeout` bounds each request."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise from_response(response)
        return response

    # --- the contract -----------------------------------------------------------------------

    def submit(self, path: str | Path, *, calibration: str | Path | None = None, **config) -> Job:
        """Upload the model at `path` with the request `config` (the fields of `POST /prune`:
        `sparsity=0.9, input_shape=(1, 3, 224, 224)`, `callback_url=...`, ...), sent as one
        JSON `config` part and checked by the service; `calibration` is sent as the part of
        that name."""
        fields = {"config": json.dumps({k: _json_value(v) for k, v in config.items()})}
        with ExitStack() as stack:
            files = {"model": (Path(path).name, stack.enter_context(open(path, "rb")))}
            if calibration is not None:
                part = stack.enter_context(open(calibration, "rb"))
                files["calibration"] = (Path(calibration).name, part)
            response = self._request("POST", "/prune", data=fields, files=files)
        return Job.model_validate(response.json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def page(self, limit: int = 20, cursor: str | None = None) -> JobPage:
        """One page of the caller's jobs, newest first (`next_cursor` leads to the next)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return JobPage.model_validate(self._request("GET", "/jobs", params=params).json())

    def list(self, page_size: int = 100) -> Iterator[Job]:
        """Every job of the caller, newest first, fetched page by page as you iterate."""
        cursor = None
        while True:
            page = self.page(page_size, cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (a running one is `cancel_requested` until its worker
        has stopped it); a finished job is left as it is."""
        return Job.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Cancel if needed, then delete the job and its files."""
        self._request("DELETE", f"/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        progress: bool = True,
        *,
        interval: float = 0.5,
        max_interval: float = 5.0,
    ) -> Job:
        """Poll until the job has ended (succeeded, failed or canceled) and return it; raise
        `JobTimeout` after `timeout` seconds. Polls back off from `interval` to `max_interval`
        (x1.5 each poll without news); a progress bar on stderr when it is a terminal."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        seen = None
        try:
            while True:
                job = self.get(job_id)
                if progress and job.progress is not None:
                    bar = bar or _progress_bar(job.progress.iterations)
                    bar.update(job.progress.iteration - bar.n)
                    bar.set_postfix(density=f"{job.progress.density:.4g}", refresh=False)
                if job.terminal:
                    return job
                news = (job.status, job.progress.iteration if job.progress else None)
                interval = interval if news != seen else min(interval * 1.5, max_interval)
                seen = news
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise JobTimeout(job, timeout)
                    time.sleep(min(interval, left))
                else:
                    time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()

    def download(
        self, job_id: str, dest: str | Path, artifacts: list[str] | None = None
    ) -> dict[str, Path]:
        """Write the artifacts of a succeeded job (all, or those named) into folder `dest`,
        created if needed, each file complete or absent. A job that has not succeeded raises
        `ProblemError` (409) before anything is written; on any error the folders this call
        created are removed again."""
        dest = Path(dest)
        job = self.get(job_id)
        names = artifacts or list(job.links.artifacts)
        created = first_missing(dest)
        files: dict[str, Path] = {}
        try:
            for name in names:
                link = job.links.artifacts.get(name)
                if link is None:
                    raise ValueError(
                        f"unknown artifact {name!r}; one of {list(job.links.artifacts)}"
                    )
                files[name] = self._download_one(job_id, link, name, dest)
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        return files

    def _download_one(self, job_id: str, link: str, name: str, dest: Path) -> Path:
        try:
            with self._http.stream("GET", link) as response:
                if response.status_code >= 400:
                    response.read()
                    raise from_response(response)
                disposition = response.headers.get("content-disposition", "")
                filename = disposition.rpartition("filename=")[2].strip('"') or name
                # the service's own name, without the job id; never a path of its choosing
                target = dest / Path(filename.removeprefix(f"{job_id}-")).name
                dest.mkdir(parents=True, exist_ok=True)

                def write(tmp: Path) -> None:
                    with tmp.open("wb") as fh:
                        for chunk in response.iter_bytes():
                            fh.write(chunk)

                write_atomically(target, write)
                return target
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc

    def prune_remote(
        self,
        path: str | Path,
        dest: str | Path,
        *,
        timeout: float | None = None,
        progress: bool = True,
        calibration: str | Path | None = None,
        **config,
    ) -> Pruned:
        """Submit, wait, download: the remote `synflow prune`. A job that fails or is canceled
        raises `ProblemError` with the job's error (`problem.job_id`, `problem.job_status`)."""
        job = self.submit(path, calibration=calibration, **config)
        job = self.wait(job.id, timeout, progress)
        if job.status != "succeeded":
            error = job.error or Problem(title=f"Job {job.status}", detail=f"the job {job.status}")
            raise ProblemError(Problem.model_validate(
                {**error.model_dump(), "job_id": job.id, "job_status": job.status}))  # fmt: skip
        return Pruned(job, self.download(job.id, dest))


def _progress_bar(total: int):
    from tqdm import tqdm

    # disable=None: drawn only when stderr is a terminal
    return tqdm(total=total, unit="round", desc="pruning", disable=None, file=sys.stderr)


def prune_remote(
    path: str | Path,
    dest: str | Path,
    *,
    url: str | None = None,
    api_key: str | None = None,
    **kwargs: Any,
) -> Pruned:
    """`Client(url, api_key).prune_remote(path, dest, ...)` in one call."""
    with Client(url, api_key) as client:
        return client.prune_remote(path, dest, **kwargs)
