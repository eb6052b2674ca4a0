"""`synflow serve` (and so the compose API and the image's default command) runs uvicorn with
the bounded h11 protocol built from the settings; the behaviour itself is tested through the
running service in tests/security/test_api_bounds.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from jobs.settings import Settings
from service.server import BoundedH11Protocol, uvicorn_options
from tests.deploy.test_compose import env_of, settings_from

ROOT = Path(__file__).resolve().parents[2]


def test_options_carry_every_http_setting():
    settings = Settings(
        http_max_header_bytes=4096, http_max_headers=9, http_header_timeout=1.5,
        http_idle_timeout=2.5, http_keepalive_timeout=0.5, port=1234,
    )  # fmt: skip
    options = uvicorn_options(settings)
    protocol = options["http"]
    assert issubclass(protocol, BoundedH11Protocol)
    assert (protocol.max_header_bytes, protocol.max_headers) == (4096, 9)
    assert (protocol.header_timeout, protocol.idle_timeout) == (1.5, 2.5)
    assert options["h11_max_incomplete_event_size"] == 4096
    assert options["timeout_keep_alive"] == 0.5
    assert (options["host"], options["port"]) == ("127.0.0.1", 1234)


def test_compose_api_and_image_run_synflow_serve_with_the_bounds(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["command"][:2] == ["synflow", "serve"]
    assert 'CMD ["synflow", "serve"' in (ROOT / "Dockerfile").read_text()
    settings = settings_from(env_of(api), monkeypatch)
    protocol = uvicorn_options(settings)["http"]
    assert protocol.max_header_bytes == settings.http_max_header_bytes == 65536
    assert protocol.header_timeout == 10 and protocol.idle_timeout == 30
