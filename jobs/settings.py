"""Service and worker configuration: one pydantic-settings object, env prefix `SYNFLOW_`.

With nothing set the service runs embedded: a SQLite job store, an artifact folder and a
filesystem Celery transport, all under `data_dir` (a per-user state folder outside the checkout:
`$XDG_STATE_HOME/synflow`, default `~/.local/state/synflow`). Setting `REDIS_URL` (or
`SYNFLOW_REDIS_URL`) switches to production mode: Redis is the broker, the result backend and
the job store; artifacts stay in a folder that every API and worker process shares (a volume).
Every field is documented in the README, section "Configuration".
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.webhooks.addresses import AllowList
from synflow.io.limits import ArchiveLimits, CalibrationLimits, InputLimits, OnnxLimits
from synflow.webhooks import secret_key

ENV_PREFIX = "SYNFLOW_"


def hash_key(key: str) -> str:
    """What `api_keys` stores for an API key: its SHA-256, hex (the key itself is never kept)."""
    return hashlib.sha256(key.encode()).hexdigest()


#: layer names `worker.sandbox` reports (docs/sandbox.md, "Layers")
SANDBOX_LAYERS = frozenset(
    {
        "user-namespace", "net-namespace", "pid-namespace", "mount-namespace", "ipc-namespace",
        "uts-namespace", "private-filesystem-view", "reaper-pid-namespace", "reaper-subreaper",
        "uid-drop", "rlimits", "rlimit-nproc", "new-session", "no-new-privs", "landlock-fs",
        "landlock-tcp", "landlock-scope", "seccomp",
    }
)  # fmt: skip


def default_data_dir() -> Path:
    """`$XDG_STATE_HOME/synflow` (default `~/.local/state/synflow`): outside any checkout, so the
    code a job may read and the data of other jobs never share a folder."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "synflow"


#: units a duration setting may carry (`SYNFLOW_RETENTION=7d`), in seconds
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """Seconds from a number, or from a number with a unit: `90`, `45s`, `30m`, `12h`, `7d`."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        return float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise ValueError(
            f"{value!r} is not a duration: give seconds (604800) or a number with a unit "
            "s, m, h or d (7d)"
        ) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="root for the embedded job store, broker folders, artifacts and scratch "
        "(default: $XDG_STATE_HOME/synflow, else ~/.local/state/synflow)",
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
    max_calibration_bytes: int = Field(
        64 << 20,
        ge=1,
        description="largest accepted calibration upload (the `calibration` part), in bytes "
        "(larger: 413)",
    )
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="tenant -> SHA-256 hex of its API key (JSON); empty = open, tenant 'default'",
    )
    metrics_key: str | None = Field(
        None,
        description="SHA-256 hex of the bearer token `GET /metrics` requires (tenants' API keys "
        "do not open it); unset: /metrics is open",
    )
    allow_anonymous: bool = Field(
        False,
        description="serve without API keys on a non-loopback address (refused otherwise)",
    )
    rate_limit_per_minute: float = Field(
        30.0, ge=0, description="`POST /prune` requests per minute per API key (0: no limit)"
    )
    rate_limit_burst: int = Field(
        10, ge=1, description="`POST /prune` requests a key may send at once before the limit"
    )
    page_size_max: int = Field(100, ge=1, description="largest page `GET /jobs` returns")
    http_max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="largest request head (request line + headers); larger: 431"
    )
    http_max_headers: int = Field(
        100, ge=8, description="most header fields in one request; more: 431"
    )
    http_header_timeout: float = Field(
        10.0, gt=0, description="seconds a client has to send a whole request head"
    )
    http_idle_timeout: float = Field(
        30.0, gt=0, description="seconds a request (head or body) may stall before it is closed"
    )
    http_keepalive_timeout: float = Field(
        5.0, gt=0, description="seconds an idle keep-alive connection stays open"
    )

    # --- retention, quotas and fairness (per tenant) -------------------------------------------
    keep_inputs: bool = Field(
        False, description="keep a job's uploaded model after the job ends (default: deleted)"
    )
    retention: float = Field(
        7 * 86400.0,
        ge=0,
        description="finished jobs (record and artifacts) are deleted this long after they end; "
        "seconds or a number with a unit (s, m, h, d: `7d`); 0: kept until deleted",
    )
    tenant_max_active_jobs: int = Field(
        20, ge=0, description="jobs a tenant may have queued or running at once (0: no limit)"
    )
    tenant_max_stored_bytes: int = Field(
        32 << 30,
        ge=0,
        description="bytes of uploads and artifacts a tenant's jobs may hold (0: no limit)",
    )
    tenant_max_running: int = Field(
        1, ge=0, description="jobs of one tenant that run at once, over all workers (0: no limit)"
    )

    # --- webhooks (README, "Webhooks") ---------------------------------------------------------
    webhook_secrets: dict[str, str] = Field(
        default_factory=dict,
        description="tenant -> its webhook signing secret, `whsec_` + base64 (JSON); a tenant "
        "without one cannot ask for a `callback_url` (422)",
    )
    webhook_allow: str = Field(
        "",
        description="comma-separated CIDRs and host names a webhook may reach although they are "
        "loopback, private, link-local or otherwise not public (refused by default), e.g. "
        "`10.0.0.0/8,hooks.internal`",
    )
    webhook_attempts: int = Field(
        6, ge=1, description="attempts to deliver one webhook before it is marked `failed`"
    )
    webhook_backoff: float = Field(
        2.0,
        gt=0,
        description="seconds before the first retry; each further retry waits twice as long",
    )
    webhook_timeout: float = Field(
        10.0, gt=0, description="seconds one delivery attempt may take (connect, send, answer)"
    )
    webhook_max_response_bytes: int = Field(
        4096, ge=0, description="bytes of a receiver's answer read (the rest is not)"
    )
    webhook_url_max_length: int = Field(
        2048, ge=16, description="longest `callback_url` accepted (longer: 422)"
    )
    webhook_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) that webhook receivers' TLS certificates are checked "
        "against, for receivers with a private CA (default: certifi's public CAs)",
    )
    webhook_poll_interval: float = Field(
        1.0, gt=0, description="seconds between a worker's looks for webhooks due"
    )

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
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object per log line from the API and the workers, with "
        "`request_id`, `job_id` and `tenant` when known (jobs/logs.py)",
    )

    # --- sandbox of the pruning child (docs/sandbox.md) ----------------------------------------
    sandbox_memory_bytes: int = Field(
        8 << 30, gt=0, description="RLIMIT_DATA of the pruning child (heap), in bytes"
    )
    sandbox_cpu_seconds: int | None = Field(
        None,
        gt=0,
        description="RLIMIT_CPU of the pruning child, summed over its threads (default: "
        "JOB_TIME_LIMIT x CPU count, so that a multi-threaded job is stopped by the wall clock, "
        "never by this)",
    )
    sandbox_max_processes: int = Field(
        1024, gt=0, description="RLIMIT_NPROC of the child's uid: processes and threads"
    )
    sandbox_max_file_bytes: int = Field(
        8 << 30, gt=0, description="RLIMIT_FSIZE: the largest file the child may write"
    )
    sandbox_max_open_files: int = Field(1024, gt=0, description="RLIMIT_NOFILE of the child")
    sandbox_uid_base: int = Field(
        61000,
        ge=1000,
        description="first uid (and gid) of the job slots of a root worker: a job runs as the "
        "first of base .. base + SANDBOX_UID_SLOTS - 1 that no other job on the host holds",
    )
    sandbox_uid_slots: int = Field(
        64,
        ge=1,
        description="uids a root worker may take from base upward; every worker on a host takes "
        "a free one per job through a lock file in SANDBOX_SLOT_DIR",
    )
    sandbox_slot_dir: Path = Field(
        Path("/run/synflow-slots"),
        description="host-local folder of the uid slot lock files (one per uid, shared by every "
        "worker of the host)",
    )
    scratch_max_files: int = Field(
        10_000, ge=16, description="files and folders a job may create in its scratch folder"
    )
    scratch_max_bytes: int = Field(
        32 << 30, ge=1 << 20, description="bytes (allocated) a job may use in its scratch folder"
    )
    sandbox_required_layers: str = Field(
        "",
        description="comma-separated sandbox layers without which a job does not start, e.g. "
        "`uid-drop,rlimits,landlock-fs,seccomp` (see `python -m worker.sandbox`)",
    )

    # --- what an uploaded model may contain, checked before it is loaded -----------------------
    # (defaults: synflow.io.limits, the one place they are written down)
    archive_max_members: int = Field(
        ArchiveLimits.max_members, gt=0, description="files in a TorchScript zip or ONNX bundle"
    )
    archive_max_member_bytes: int = Field(
        ArchiveLimits.max_member_bytes, gt=0, description="uncompressed size of one zip member"
    )
    archive_max_total_bytes: int = Field(
        ArchiveLimits.max_total_bytes, gt=0, description="uncompressed size of a whole zip"
    )
    archive_max_code_bytes: int = Field(
        ArchiveLimits.max_code_bytes,
        gt=0,
        description="uncompressed size of a TorchScript zip's code members",
    )
    archive_max_ratio: float = Field(
        ArchiveLimits.max_ratio,
        gt=1,
        description="largest compression ratio of a zip member over 1 MiB",
    )
    calibration_max_header_bytes: int = Field(
        CalibrationLimits.max_header_bytes,
        gt=0,
        description="JSON header of a calibration file (safetensors)",
    )
    calibration_max_samples: int = Field(
        CalibrationLimits.max_samples, gt=0, description="samples in a calibration file"
    )
    onnx_max_nodes: int = Field(OnnxLimits.max_nodes, gt=0, description="nodes in an ONNX graph")
    onnx_max_initializers: int = Field(
        OnnxLimits.max_initializers, gt=0, description="initializers in an ONNX graph"
    )
    onnx_max_elements: int = Field(
        OnnxLimits.max_elements, gt=0, description="declared elements over all ONNX initializers"
    )
    onnx_max_rank: int = Field(
        OnnxLimits.max_rank, gt=0, description="largest rank of an ONNX tensor"
    )
    onnx_max_data_bytes: int = Field(
        OnnxLimits.max_data_bytes,
        gt=0,
        description="external data of an ONNX bundle: largest data file, and all read together",
    )

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

    @field_validator("metrics_key")
    @classmethod
    def _metrics_hash(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
            raise ValueError(
                "metrics_key must be the SHA-256 hex digest of the /metrics token (64 hex "
                "characters), not the token itself"
            )
        return value.lower()

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, secret in value.items():
            try:
                secret_key(secret)
            except ValueError as exc:
                raise ValueError(f"webhook_secrets[{tenant!r}]: {exc}") from None
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _webhook_allow(cls, value: str) -> str:
        AllowList.parse(value)  # raises, naming the entry that is neither a CIDR nor a host
        return value

    @field_validator("retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("sandbox_required_layers")
    @classmethod
    def _layer_names(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = sorted(set(names) - SANDBOX_LAYERS)
        if unknown:
            raise ValueError(
                f"unknown sandbox layers {unknown}; known: {', '.join(sorted(SANDBOX_LAYERS))}"
            )
        return ",".join(names)

    @model_validator(mode="after")
    def _no_open_network_service(self) -> Settings:
        """Auth is required by default whenever the API listens beyond loopback."""
        if not self.api_keys and not self.allow_anonymous and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set SYNFLOW_API_KEYS "
                "(tenant -> sha256 of its key), or SYNFLOW_ALLOW_ANONYMOUS=true to serve "
                "everyone as one tenant"
            )
        return self

    @property
    def webhook_allow_list(self) -> AllowList:
        return AllowList.parse(self.webhook_allow)

    @property
    def required_layers(self) -> frozenset[str]:
        return frozenset(n for n in self.sandbox_required_layers.split(",") if n)

    @property
    def cpu_seconds(self) -> int:
        """RLIMIT_CPU: a backstop only. Torch burns CPU seconds on every core at once, so the
        default allows the whole wall-clock limit on all of them."""
        if self.sandbox_cpu_seconds is not None:
            return self.sandbox_cpu_seconds
        return int(self.job_time_limit * (os.cpu_count() or 1)) + 60

    def input_limits(self) -> InputLimits:
        """The bounds on an uploaded model, from these settings (the rest: InputLimits' own)."""
        return InputLimits(
            archive=ArchiveLimits(
                max_members=self.archive_max_members,
                max_member_bytes=self.archive_max_member_bytes,
                max_total_bytes=self.archive_max_total_bytes,
                max_code_bytes=self.archive_max_code_bytes,
                max_ratio=self.archive_max_ratio,
            ),
            onnx=OnnxLimits(
                max_file_bytes=min(self.max_upload_bytes, OnnxLimits.max_file_bytes),
                max_nodes=self.onnx_max_nodes,
                max_initializers=self.onnx_max_initializers,
                max_elements=self.onnx_max_elements,
                max_rank=self.onnx_max_rank,
                max_data_bytes=self.onnx_max_data_bytes,
                external_data_beside=False,  # an upload is one file: data comes in a bundle
            ),
            calibration=CalibrationLimits(
                max_file_bytes=self.max_calibration_bytes,
                max_header_bytes=self.calibration_max_header_bytes,
                max_samples=self.calibration_max_samples,
            ),
        )

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
