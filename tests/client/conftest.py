"""One embedded service (API + worker, `synflow serve`) for the client and remote-CLI tests,
with API keys, a small upload cap and a rate limit; one tenant per test that submits, so that
each has its own rate-limit bucket and running cap."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.settings import hash_key
from tests.service.harness import base_env, start_api, write_model

TENANTS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
KEYS = {tenant: f"{tenant}-secret-key" for tenant in TENANTS}
MAX_UPLOAD = 1_000_000
BURST = 6  # POST /prune a key may send at once (then 1 a minute)
LONG = {"sparsity": 0.99, "iterations": 10000}  # tens of seconds on the small model
SHAPE = (1, 3, 16, 16)


@dataclass
class Service:
    url: str
    data_dir: Path
    model: Path


@pytest.fixture(scope="package")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client-svc")
    settings = {
        "api_keys": json.dumps({tenant: hash_key(key) for tenant, key in KEYS.items()}),
        "max_upload_bytes": str(MAX_UPLOAD),
        "rate_limit_per_minute": "1",
        "rate_limit_burst": str(BURST),
    }
    api, url = start_api(base_env(tmp / "data", **settings), tmp)
    try:
        yield Service(url, tmp / "data", write_model(tmp / "small.pt"))
    finally:
        api.stop()
