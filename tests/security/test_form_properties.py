"""Property: no `POST /prune` form and no `GET /jobs` cursor gets a 5xx. Generated fields with
unicode names and values, JSON of any shape, nesting thousands of levels deep (balanced or not),
in form fields and in the `config` part, with a real model or junk. The real app and stores in
process (ASGI); no worker, so accepted jobs stay queued."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.settings import Settings
from service.app import create_app
from synflow.config import PruneConfig
from tests.service.harness import write_model

FIELDS = [*PruneConfig.model_fields, "config"]
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
PROPERTY_SETTINGS = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def nested(draw) -> str:
    """Brackets nested `depth` levels around something, sometimes unbalanced or in a string."""
    depth = draw(st.integers(1, 20_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ("[", "}")]))
    core = draw(st.sampled_from(["", "1", '"x"', "[1,2]", '"[[[["']))
    text = opener * depth + core + closer * draw(st.integers(0, depth))
    return text[:60_000]


values = st.one_of(
    TEXT,
    nested(),
    json_values.map(json.dumps),
    st.integers().map(str),
    st.sampled_from(["0.5", "10", "1,3,16,16", "[1, 3, 16, 16]", "unstructured", "2:4"]),
)


@st.composite
def forms(draw) -> dict[str, str]:
    names = st.sampled_from(FIELDS) | st.text(
        st.characters(min_codepoint=0x20, exclude_categories=("Cs", "Cc")), min_size=1,
        max_size=12,
    )  # fmt: skip
    form = draw(st.dictionaries(names, values, max_size=6))
    if draw(st.booleans()):  # one JSON config part whose fields nest and mix
        config = draw(st.dictionaries(st.sampled_from(FIELDS[:-1]) | TEXT, json_values | nested(),
                                      max_size=4))  # fmt: skip
        text = "{" + ",".join(
            f"{json.dumps(k)}: {v if isinstance(v, str) and v[:1] in '[{' else json.dumps(v)}"
            for k, v in config.items()
        ) + "}"  # fmt: skip
        form = {"config": text[:60_000]}
    return form


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), rate_limit_per_minute=0))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    return write_model(tmp_path_factory.mktemp("m") / "m.pt").read_bytes()


def check_answer(response) -> None:
    assert response.status_code < 500, response.text[:2000]
    if response.status_code != 202:
        assert 400 <= response.status_code < 500, response.status_code
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"], response.text


def test_no_form_gets_a_5xx(client, model_bytes):
    @PROPERTY_SETTINGS
    @given(form=forms(), real_model=st.booleans())
    def check(form, real_model) -> None:
        model = model_bytes if real_model else b"PK\x03\x04junk"
        check_answer(client.post("/prune", data=form, files={"model": ("m.pt", model)}))

    check()


def test_no_cursor_gets_a_5xx(client):
    @PROPERTY_SETTINGS
    @given(cursor=TEXT | st.integers().map(str))
    def check(cursor) -> None:
        response = client.get("/jobs", params={"cursor": cursor})
        assert response.status_code in (200, 422), response.text[:500]

    check()
