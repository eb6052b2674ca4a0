"""The Celery app as the API and the worker both configure it, from the same `Settings`.

The API only publishes messages (by task name, so it never imports the worker code); the worker
(worker/celery_app.py) adds the task. Embedded mode uses kombu's filesystem transport (no server);
production uses Redis. Results are ignored: a job's status lives in the job store.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from jobs.settings import Settings
from jobs.stores.private import private_dir

PRUNE_TASK = "synflow.prune"
#: the argument of a message that names no job: it lets the next queued job start
WAKE_UP = "wake-up"


def celery_config(settings: Settings) -> dict[str, Any]:
    reliability = {
        "task_acks_late": True,  # a message is acknowledged once its job is finished...
        "task_reject_on_worker_lost": True,  # ...and goes back to the queue if the worker dies
        "worker_prefetch_multiplier": 1,  # a worker holds no job it is not running
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "task_ignore_result": True,
        "task_default_queue": settings.queue,
        "task_routes": {PRUNE_TASK: {"queue": settings.queue}},
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_concurrency": settings.worker_concurrency,
        "broker_connection_retry_on_startup": True,
    }
    if settings.embedded:
        folder = settings.broker_path
        for sub in ("queue", "control", "processed"):
            private_dir(folder / sub)
        return {
            **reliability,
            "broker_url": "filesystem://",
            "broker_transport_options": {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "control_folder": str(folder / "control"),
                "processed_folder": str(folder / "processed"),
                "store_processed": False,
                "polling_interval": settings.broker_polling_interval,
            },
            "result_backend": None,
            "worker_enable_remote_control": False,  # no broadcast over a folder
        }
    return {
        **reliability,
        "broker_url": settings.redis_url,
        "broker_transport_options": {
            # longer than any task may run, or Redis hands a running job to a second worker
            "visibility_timeout": settings.visibility_timeout,
            "global_keyprefix": settings.redis_prefix,
        },
        "result_backend": settings.redis_url,
        "result_backend_transport_options": {
            "global_keyprefix": settings.redis_prefix,
            "visibility_timeout": settings.visibility_timeout,
        },
    }


def make_celery(settings: Settings, main: str = "synflow") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


class JobQueue:
    """Publishes jobs; `ping` checks the broker for /readyz."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        """One message per queued job. The worker that takes it starts the next job in fair
        order (jobs/scheduling.py), which need not be this one."""
        self.celery.send_task(PRUNE_TASK, args=[job_id], queue=self.settings.queue)

    def wake(self) -> None:
        """A message that lets one more queued job start (when a job's end freed a slot)."""
        self.enqueue(WAKE_UP)

    def ping(self) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
