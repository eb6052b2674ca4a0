"""`synflow serve`, added to the `synflow` command through the `synflow.commands` entry point.

`synflow serve` runs the embedded service: the API plus one Celery worker child process (with
`REDIS_URL` set it runs the API only; workers are started with `celery -A worker.celery_app
worker`). The remote subcommands that talk to a running service are the client's
(`synflow/client/cli.py`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from jobs.settings import Settings, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def register(sub) -> None:
    serve = sub.add_parser("serve", help="run the service (embedded: API + one worker)")
    serve.add_argument("--host", default=None, help="listen address (default SYNFLOW_HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default SYNFLOW_PORT)")
    serve.set_defaults(handler=_cmd_serve)
