"""`synflow serve` and the remote subcommands, added to the `synflow` command through the
`synflow.commands` entry point.

`synflow serve` runs the embedded service: the API plus one Celery worker child process (with
`REDIS_URL` set it runs the API only; workers are started with `celery -A worker.celery_app
worker`). The remote subcommands (`submit`, `status`, `wait`, `download`, `cancel`, `delete`,
`jobs`) talk to a running service over HTTP, with the same request flags as `synflow prune`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.settings import Settings, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "canceled")


# --- serve ---------------------------------------------------------------------------------------


def start_embedded_worker(settings: Settings) -> subprocess.Popen:
    """One Celery worker as a child process that dies with us."""
    env = {**os.environ, **settings_env(settings)}
    env["SYNFLOW_DATA_DIR"] = str(settings.data_dir.resolve())
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
    )
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--loglevel", settings.log_level.upper(),
        "--concurrency", str(settings.worker_concurrency),
        "--queues", settings.queue,
        "--hostname", f"embedded-{os.getpid()}@{socket.gethostname()}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip

    def die_with_parent() -> None:
        from billiard.util import set_pdeathsig

        set_pdeathsig(9)

    return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedWorker:
    """The embedded worker child, restarted if it dies while the API runs (a killed worker's
    job is requeued by the next one, see worker/recovery.py)."""

    RESTART_DELAY = 2.0

    def __init__(self, settings: Settings):
        self.settings = settings
        self.proc = start_embedded_worker(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            code = self.proc.poll()
            if code is not None and not self._stop.is_set():
                print(f"synflow serve: the worker exited ({code}); restarting it", file=sys.stderr)
                self._stop.wait(self.RESTART_DELAY)
                if not self._stop.is_set():
                    self.proc = start_embedded_worker(self.settings)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        stop_process(self.proc)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.server import uvicorn_options

    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        messages = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        print(f"synflow serve: {messages}", file=sys.stderr)
        return 2
    app = create_app(settings)  # fails here, before any worker starts, on a bad setting
    worker = EmbeddedWorker(settings) if settings.embedded else None
    try:
        uvicorn.run(app, **uvicorn_options(settings))  # bounded requests (service/server.py)
    finally:
        if worker is not None:
            worker.stop()
    return 0


# --- remote --------------------------------------------------------------------------------------


class RemoteError(Exception):
    pass


def _client(args: argparse.Namespace):
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=httpx.Timeout(60.0))


def _check(response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            message = body.get("detail") or body.get("title")
        except ValueError:
            message = response.text[:500]
        raise RemoteError(f"HTTP {response.status_code}: {message}")
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _cmd_submit(args: argparse.Namespace) -> int:
    from synflow.cli import config_from_args

    config = config_from_args(args)  # validated here: mistakes are reported before uploading
    fields = {"config": json.dumps(config.model_dump(mode="json", exclude_defaults=True))}
    with _client(args) as client, open(args.model, "rb") as fh:
        job = _check(client.post("/prune", data=fields, files={"model": fh}))
    if args.wait:
        return _wait(args, job["id"])
    _print(job)
    return 0


def _wait(args: argparse.Namespace, job_id: str) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with _client(args) as client:
        while True:
            job = _check(client.get(f"/jobs/{job_id}"))
            if job["status"] in TERMINAL:
                break
            if deadline and time.monotonic() > deadline:
                raise RemoteError(f"job {job_id} still {job['status']} after {args.timeout} s")
            time.sleep(args.interval)
    _print(job)
    return 0 if job["status"] == "succeeded" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(_check(client.get(f"/jobs/{args.job_id}")))
    return 0


def _cmd_wait(args: argparse.Namespace) -> int:
    return _wait(args, args.job_id)


def _cmd_download(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        job = _check(client.get(f"/jobs/{args.job_id}"))
        names = [args.artifact] if args.artifact else list(job["links"]["artifacts"])
        for name in names:
            with client.stream("GET", job["links"]["artifacts"][name]) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                disposition = response.headers.get("content-disposition", "")
                filename = disposition.rpartition("filename=")[2].strip('"') or name
                target = out / filename.removeprefix(f"{args.job_id}-")
                with target.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
            print(target)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(_check(client.post(f"/jobs/{args.job_id}/cancel")))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _check(client.delete(f"/jobs/{args.job_id}"))
    print(f"deleted {args.job_id}")
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        params = {"limit": args.limit}
        if args.cursor:
            params["cursor"] = args.cursor
        page = _check(client.get("/jobs", params=params))
    for job in page["items"]:
        print(f"{job['id']}  {job['status']:<9}  {job['created_at']}")
    if page["next_cursor"]:
        print(f"more: --cursor {page['next_cursor']}")
    return 0


def _remote_handler(handler):
    def run(args: argparse.Namespace) -> int:
        import httpx

        try:
            return handler(args)
        except httpx.TransportError as exc:  # refused, unknown host, timed out, TLS...
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            reason = reason or type(exc).__name__
            print(
                f"synflow: error: cannot reach the service at {args.url} ({reason}); start it "
                "with `synflow serve`, or point --url (or SYNFLOW_URL) at a running one",
                file=sys.stderr,
            )
            return 2
        except RemoteError as exc:
            print(f"synflow: error: {exc}", file=sys.stderr)
            return 1
        except ValidationError as exc:
            from synflow.cli import validation_message

            print(f"synflow: error: {validation_message(exc)}", file=sys.stderr)
            return 2
        except OSError as exc:  # connection refused, file missing, ...
            print(f"synflow: error: {exc}", file=sys.stderr)
            return 1

    return run


def _remote_parser(sub, name: str, help: str, handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument(
        "--url",
        default=os.environ.get("SYNFLOW_URL", DEFAULT_URL),
        help=f"service URL (env SYNFLOW_URL, default {DEFAULT_URL})",
    )
    p.add_argument(
        "--api-key", default=os.environ.get("SYNFLOW_API_KEY"), help="API key (env SYNFLOW_API_KEY)"
    )
    p.set_defaults(handler=_remote_handler(handler))
    return p


def _add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")


def register(sub) -> None:
    from synflow.cli import add_config_arguments

    serve = sub.add_parser("serve", help="run the service (embedded: API + one worker)")
    serve.add_argument("--host", default=None, help="listen address (default SYNFLOW_HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default SYNFLOW_PORT)")
    serve.set_defaults(handler=_cmd_serve)

    submit = _remote_parser(sub, "submit", "upload a model to a running service", _cmd_submit)
    submit.add_argument(
        "model",
        help="TorchScript (.pt), torch.export (.pt2) or ONNX (.onnx) file, or a zip of an .onnx "
        "and its data",
    )
    add_config_arguments(submit)
    submit.add_argument("--wait", action="store_true", help="wait until the job has finished")
    _add_wait_flags(submit)

    for name, help, handler in (
        ("status", "show a job", _cmd_status),
        ("wait", "wait until a job has finished; exit 0 if it succeeded", _cmd_wait),
        ("cancel", "cancel a job", _cmd_cancel),
        ("delete", "delete a job and its files", _cmd_delete),
    ):
        p = _remote_parser(sub, name, help, handler)
        p.add_argument("job_id")
        if name == "wait":
            _add_wait_flags(p)

    download = _remote_parser(sub, "download", "download a job's artifacts", _cmd_download)
    download.add_argument("job_id")
    download.add_argument("--out", required=True, help="directory to write into")
    download.add_argument(
        "--artifact", choices=["masks", "weights", "model", "report", "report.png"]
    )

    jobs = _remote_parser(sub, "jobs", "list your jobs, newest first", _cmd_jobs)
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--cursor", default=None)
