"""What the API offers to operate it, over ASGI with the real app and stores: /docs and /redoc
that load with no network, X-Request-ID, and the token that guards /metrics."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings, hash_key
from service.app import create_app
from service.request_id import MAX_LENGTH

METRICS_TOKEN = "scraper-token"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        api_keys={"alice": hash_key("a-key")},
        metrics_key=hash_key(METRICS_TOKEN),
    )
    with TestClient(create_app(settings)) as c:
        yield c


class References(HTMLParser):
    """Every URL a page makes the browser fetch: src, href, and url(...) in inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]

    def handle_data(self, data):
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)
        self.urls += re.findall(r"\burl:\s*'([^']+)'", data)  # SwaggerUIBundle({url: ...})


def external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc) and not url.startswith("data:")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_offline(client, page):
    response = client.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    refs = References()
    refs.feed(response.text)
    assert refs.urls, response.text
    assert [u for u in refs.urls if external(u)] == []
    assert "fonts.googleapis" not in response.text
    for url in refs.urls:  # every asset comes from this server
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
        if url.endswith(".css"):  # stylesheets pull in nothing from elsewhere either
            found = re.findall(r"url\(\s*['\"]?([^'\")]+)", asset.text)
            assert [u for u in found if external(u)] == [], url
    if page == "/docs":
        assert '"validatorUrl": null' in response.text  # no badge from validator.swagger.io


def test_request_id_is_echoed(client):
    for good in ("abc-123", "3f2a1c0e9b8d4e7f", "trace:1/span=2+x_y.z~", "x" * MAX_LENGTH):
        response = client.get("/healthz", headers={"X-Request-ID": good})
        assert response.headers["x-request-id"] == good


def test_request_id_is_generated_when_absent_or_unacceptable(client):
    seen = set()
    for bad in (None, "", "has space", 'quote"', "x" * (MAX_LENGTH + 1), "new\nline", "é"):
        headers = {} if bad is None else {"X-Request-ID": bad.encode("utf-8")}
        response = client.get("/jobs/nope", headers={**headers, "Authorization": "Bearer a-key"})
        assert response.status_code == 404  # on errors too
        generated = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
        assert response.headers.get_list("x-request-id") == [generated]
        seen.add(generated)
    assert len(seen) == 7


def test_metrics_need_their_token(client):
    for headers in ({}, {"Authorization": "Bearer a-key"}, {"Authorization": "Bearer wrong"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert "metrics token" in response.json()["detail"]
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    assert "synflow_job_store_up 1.0" in response.text


def test_metrics_key_must_be_a_hash():
    with pytest.raises(ValueError, match="SHA-256 hex digest"):
        Settings(metrics_key=METRICS_TOKEN)
