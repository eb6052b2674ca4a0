"""Tenants: the per-key rate limit of `POST /prune` (in memory when embedded, in Redis shared
by every API replica otherwise) and the refusal to serve beyond loopback without keys."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from jobs.settings import Settings, hash_key
from service.app import create_app
from service.ratelimit import RedisRateLimiter
from tests.service.harness import REPO_ROOT, base_env, drop_redis_keys, redis_settings

KEYS = {"alice": "a-key", "bob": "b-key"}


def test_prune_is_rate_limited_per_key_with_retry_after(tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        api_keys={t: hash_key(k) for t, k in KEYS.items()},
        rate_limit_per_minute=6,
        rate_limit_burst=2,
    )
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": "Bearer a-key"}) as alice:
        answers = [alice.post("/prune", files={"model": ("m.pt", b"junk")}) for _ in range(3)]
        assert [r.status_code for r in answers] == [422, 422, 429]  # 422: not a model
        limited = answers[2]
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.json()["type"] == "urn:synflow:problem:rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 10  # one token per 10 s
        assert alice.get("/jobs").status_code == 200  # only submissions are limited
    with TestClient(app, headers={"Authorization": "Bearer b-key"}) as bob:
        assert bob.post("/prune", files={"model": ("m.pt", b"junk")}).status_code == 422


def test_redis_buckets_are_shared_by_api_replicas():
    settings = redis_settings()
    prefix = settings["redis_prefix"]
    try:
        first, second = (
            RedisRateLimiter(settings["redis_url"], prefix, per_minute=600, burst=3)
            for _ in range(2)
        )
        key = f"tenant-{uuid.uuid4().hex[:6]}"
        waits = [first.take(key), second.take(key), first.take(key), second.take(key)]
        assert waits[:3] == [0, 0, 0]
        assert 0 < waits[3] <= 0.1  # 10 tokens per second
        assert first.take("another-tenant") == 0
        time.sleep(waits[3] + 0.05)
        assert second.take(key) == 0  # refilled
    finally:
        drop_redis_keys(prefix)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com"])
def test_no_keys_beyond_loopback_is_refused(tmp_path, host):
    with pytest.raises(ValidationError, match="without API keys"):
        Settings(data_dir=tmp_path, host=host)
    assert Settings(data_dir=tmp_path, host=host, allow_anonymous=True).api_keys == {}
    assert Settings(data_dir=tmp_path, host=host, api_keys={"a": hash_key("k")})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_may_run_without_keys(tmp_path, host):
    assert Settings(data_dir=tmp_path, host=host).api_keys == {}


def test_serve_refuses_to_start_open_on_all_interfaces(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--host", "0.0.0.0", "--port", "0"],
        env=base_env(tmp_path),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "broker").exists()  # nothing started


def test_keys_are_stored_only_as_hashes(tmp_path):
    with pytest.raises(ValidationError, match="SHA-256"):
        Settings(data_dir=tmp_path, api_keys={"alice": "a-key"})
