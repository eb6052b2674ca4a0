"""docker-compose.yml against the code: no Docker engine runs here, so the file is parsed and
its services, commands, environment and volumes are checked against the settings the code reads
and the entry points that exist."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from jobs.settings import ENV_PREFIX, Settings, hash_key

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("worker-gpu", "worker-cpu")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_of(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    """The Settings a container would build from this environment."""
    for key in list(__import__("os").environ):
        if key.startswith(ENV_PREFIX) or key == "REDIS_URL":
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value.startswith("${SYNFLOW_API_KEYS"):
            value = json.dumps({"team": hash_key("k")})  # what the operator must provide
        monkeypatch.setenv(key, value)
    return Settings()


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_services(compose):
    assert set(compose["services"]) == {"redis", "api", *WORKERS}
    assert {"artifacts", "redis-data"} <= set(compose["volumes"])


def test_redis_persists_and_never_evicts(compose):
    redis = compose["services"]["redis"]
    cmd = [str(c) for c in redis["command"]]
    assert cmd[0] == "redis-server"
    assert flag(cmd, "--appendonly") == "yes" and flag(cmd, "--appendfsync") == "everysec"
    assert flag(cmd, "--maxmemory-policy") == "noeviction"  # queued jobs must never vanish
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_every_variable_is_a_setting_the_code_reads(compose, monkeypatch):
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for name in ("api", *WORKERS):
        env = env_of(compose["services"][name])
        unknown = {k for k in env if k.startswith(ENV_PREFIX)} - fields
        assert not unknown, f"{name}: {unknown} are not Settings fields"
        settings = settings_from(env, monkeypatch)
        assert not settings.embedded  # production mode: Redis is the broker and job store
        host = re.match(r"redis://([^:/]+)", settings.redis_url).group(1)
        assert host in compose["services"]
        assert settings.api_keys, "production runs with API keys"


def test_api_and_workers_share_the_artifacts_volume_and_queue(compose, monkeypatch):
    mounts = {}
    queues = {}
    for name in ("api", *WORKERS):
        service = compose["services"][name]
        settings = settings_from(env_of(service), monkeypatch)
        volumes = dict(v.split(":")[::-1] for v in service["volumes"])  # path -> volume
        mounts[name] = volumes.get(str(settings.artifacts_path))
        queues[name] = settings.queue
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"]
    assert set(mounts.values()) == {"artifacts"}, mounts
    assert len(set(queues.values())) == 1


def test_api_command(compose):
    api = compose["services"]["api"]
    cmd = api["command"]
    assert cmd[:2] == ["synflow", "serve"]
    port = flag(cmd, "--port")
    assert flag(cmd, "--host") == "0.0.0.0"
    assert any(str(p).endswith(f":{port}") for p in api["ports"])
    assert f"127.0.0.1:{port}/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["build"] == "."


def test_workers(compose, monkeypatch):
    assert importlib.util.find_spec("worker.celery_app") is not None
    for name in WORKERS:
        service = compose["services"][name]
        cmd = service["command"]
        assert cmd[:4] == ["celery", "-A", "worker.celery_app", "worker"]
        settings = settings_from(env_of(service), monkeypatch)
        assert flag(cmd, "--queues") == settings.queue
        assert flag(cmd, "--concurrency") == "1" and settings.worker_concurrency == 1
        assert "inspect ping" in " ".join(service["healthcheck"]["test"])
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert settings_from(env_of(gpu), monkeypatch).device == "cuda"
    cpu = settings_from(env_of(compose["services"]["worker-cpu"]), monkeypatch)
    assert cpu.device == "cpu"


def test_dockerfile_installs_every_package(compose):
    text = (ROOT / "Dockerfile").read_text()
    for package in ("synflow", "jobs", "service", "worker"):
        assert f"COPY {package} ./{package}" in text
    assert "pip install ." in text and "USER synflow" in text


def test_workers_are_hardened(compose, monkeypatch):
    """The container is the sandbox's outer layer (docs/sandbox.md, "What deployment must add")."""
    for name in WORKERS:
        service = compose["services"][name]
        assert service["read_only"] is True
        tmpfs = {entry.split(":")[0]: entry.split(":", 1)[1] for entry in service["tmpfs"]}
        settings = settings_from(env_of(service), monkeypatch)
        scratch = tmpfs[str(settings.scratch_path)]  # scratch is a tmpfs...
        assert re.search(r"(^|,)size=\d+[kmg]", scratch)  # ...with a size cap
        assert "uid=10001" in scratch  # owned by the image's user (Dockerfile: USER synflow)
        assert "/tmp" in tmpfs  # the sandbox launcher's control files
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["pids_limit"] > 0 and service["mem_limit"]
        # a job starts only with the layers this container gives a non-root worker
        assert {"landlock-fs", "seccomp", "rlimits"} <= settings.required_layers
        assert "uid-drop" not in settings.required_layers  # the worker is not root here
        memory = int(re.fullmatch(r"(\d+)g", service["mem_limit"]).group(1)) << 30
        assert settings.sandbox_memory_bytes < memory
    api = compose["services"]["api"]
    assert api["read_only"] is True and api["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in api["security_opt"]


def test_production_settings_bound_retries_and_submissions(compose, monkeypatch):
    for name in ("api", *WORKERS):
        settings = settings_from(env_of(compose["services"][name]), monkeypatch)
        assert settings.max_attempts >= 1 and settings.rate_limit_per_minute > 0
        assert settings.job_time_limit < settings.soft_time_limit < settings.hard_time_limit
        assert settings.hard_time_limit < settings.visibility_timeout
