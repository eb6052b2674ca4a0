"""Service and worker configuration: one pydantic-settings object, env prefix `SYNFLOW_`.

With nothing set the service runs embedded: a SQLite job store, an artifact folder and a
filesystem Celery transport, all under `data_dir` (`./var`). Setting `REDIS_URL` (or
`SYNFLOW_REDIS_URL`) switches to production mode: Redis is the broker, the result backend and
the job store; artifacts stay in a folder that every API and worker process shares (a volume).
Every field is documented in the README, section "Configuration".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SYNFLOW_"


def hash_key(key: str) -> str:
    """What `api_keys` stores for an API key: its SHA-256, hex (the key itself is never kept)."""
    return hashlib.sha256(key.encode()).hexdigest()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(
        Path("var"),
        description="root for the embedded job store, broker folders, artifacts and scratch",
    )
    artifacts_dir: Path | None = Field(
        None, description="uploads and published artifacts (default: DATA_DIR/artifacts)"
    )
    scratch_dir: Path | None = Field(
        None, description="per-job working folders of the worker (default: DATA_DIR/scratch)"
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SYNFLOW_REDIS_URL", "REDIS_URL"),
        description="Redis URL; set = production mode (Redis broker, results and job store)",
    )
    redis_prefix: str = Field(
        "synflow:", description="prefix of every Redis key the service and Celery write"
    )
    queue: str = Field("synflow", pattern=r"^[A-Za-z0-9_-]+$", description="Celery queue name")

    # --- HTTP ----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address `synflow serve` listens on")
    port: int = Field(8000, ge=0, le=65535, description="port `synflow serve` listens on")
    max_upload_bytes: int = Field(
        1 << 30, ge=1, description="largest accepted model upload, in bytes (larger: 413)"
    )
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="tenant -> SHA-256 hex of its API key (JSON); empty = open, tenant 'default'",
    )
    page_size_max: int = Field(100, ge=1, description="largest page `GET /jobs` returns")

    # --- worker --------------------------------------------------------------------------------
    device: str = Field(
        "auto", description="torch device of the pruning child: auto (cuda if present), cpu, cuda:N"
    )
    precision: Literal["auto", "float32", "float64"] = Field(
        "auto", description="SynFlow arithmetic (auto: float32, float64 where float32 overflows)"
    )
    worker_concurrency: int = Field(
        1, ge=1, description="jobs one worker runs at once (keep 1 per GPU)"
    )
    job_time_limit: float = Field(
        6 * 3600.0, gt=0, description="seconds a job may run before it is stopped and failed"
    )
    progress_interval: float = Field(
        0.5, gt=0, description="least seconds between two progress writes to the job record"
    )
    poll_interval: float = Field(
        0.1, gt=0, description="seconds between the worker's looks at its child and cancel flag"
    )
    heartbeat_timeout: float = Field(
        60.0,
        gt=0,
        description="a running job whose worker has been silent this long is requeued",
    )
    max_attempts: int = Field(
        3, ge=1, description="times a job is started before a lost worker fails it"
    )
    broker_polling_interval: float = Field(
        0.1, gt=0, description="seconds between looks at the embedded (filesystem) broker"
    )
    log_level: str = Field("info", description="log level of the API and the worker")

    @field_validator("api_keys")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, digest in value.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(
                    f"api_keys[{tenant!r}] must be the SHA-256 hex digest of the key "
                    "(64 hex characters), not the key itself"
                )
        return {tenant: digest.lower() for tenant, digest in value.items()}

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @property
    def artifacts_path(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def scratch_path(self) -> Path:
        return (self.scratch_dir or self.data_dir / "scratch").resolve()

    @property
    def sqlite_path(self) -> Path:
        return (self.data_dir / "jobs.sqlite3").resolve()

    @property
    def broker_path(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def soft_time_limit(self) -> float:
        """Celery's soft limit: past the job's own limit, so the runner stops the child first."""
        return self.job_time_limit + 60

    @property
    def hard_time_limit(self) -> float:
        return self.job_time_limit + 120

    @property
    def visibility_timeout(self) -> float:
        """Redis redelivers an unacknowledged task after this; longer than any task may run."""
        return self.hard_time_limit + 600


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process (the embedded worker)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json", exclude_unset=False).items():
        if value is None:
            continue
        key = ENV_PREFIX + name.upper()
        if isinstance(value, dict | list):
            import json

            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    return env
