"""Settings: the embedded default, the switch to production mode, and the API-key format."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.queue import celery_config
from jobs.settings import Settings, hash_key, settings_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("SYNFLOW_") or key == "REDIS_URL":
            monkeypatch.delenv(key)


def test_embedded_by_default(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.embedded and settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.sqlite_path == tmp_path / "jobs.sqlite3"
    assert settings.artifacts_path == tmp_path / "artifacts"
    config = celery_config(settings)
    assert config["broker_url"] == "filesystem://"
    assert (tmp_path / "broker" / "queue").is_dir()
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["task_ignore_result"]


@pytest.mark.parametrize("variable", ["REDIS_URL", "SYNFLOW_REDIS_URL"])
def test_redis_url_switches_to_production(monkeypatch, variable):
    monkeypatch.setenv(variable, "redis://cache:6379/2")
    monkeypatch.setenv("SYNFLOW_JOB_TIME_LIMIT", "100")
    settings = Settings()
    assert not settings.embedded
    config = celery_config(settings)
    assert config["broker_url"] == config["result_backend"] == "redis://cache:6379/2"
    assert config["task_soft_time_limit"] > 100 and config["task_time_limit"] > 100
    options = config["broker_transport_options"]
    assert options["visibility_timeout"] > config["task_time_limit"]
    # the job's own limit (the sandbox's wall clock) comes first, then Celery's, then Redis's
    assert settings.job_time_limit < config["task_soft_time_limit"] < config["task_time_limit"]
    backend = config["result_backend_transport_options"]
    assert backend["visibility_timeout"] == options["visibility_timeout"]
    assert options["global_keyprefix"] == settings.redis_prefix


def test_api_keys_are_hashes(monkeypatch):
    monkeypatch.setenv("SYNFLOW_API_KEYS", '{"team": "my-plain-key"}')
    with pytest.raises(ValidationError, match="SHA-256"):
        Settings()
    monkeypatch.setenv("SYNFLOW_API_KEYS", f'{{"team": "{hash_key("k").upper()}"}}')
    assert Settings().api_keys == {"team": hash_key("k")}


def test_settings_env_round_trips(monkeypatch, tmp_path):
    original = Settings(data_dir=tmp_path, port=9000, api_keys={"t": hash_key("k")})
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original
