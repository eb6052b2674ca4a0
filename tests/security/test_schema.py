"""schemathesis over the OpenAPI schema, as a tenant with a valid key: generated requests to
every route never get a 5xx, and every answer conforms to the schema (status codes, content
types, bodies). In process (ASGI), no worker: jobs stay queued. Bounded and deterministic."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobs.settings import Settings, hash_key
from service.app import create_app

KEY = "schema-key"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(
        Settings(
            data_dir=tmp_path_factory.mktemp("data"),
            api_keys={"tenant": hash_key(KEY)},
            max_upload_bytes=100_000,
            rate_limit_per_minute=0,
        )
    )


def operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_api_conforms_to_its_schema(app):
    tested = []
    for operation in operations(app):

        @settings(
            max_examples=15,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {KEY}"},
                # a schema cannot say "a loadable model" or "a sparsity the model allows":
                # 422 for schema-valid junk is the contract, not a failure
                excluded_checks=[positive_data_acceptance],
            )

        check()
        tested.append(operation.label)
    assert "POST /prune" in tested and "GET /jobs/{job_id}" in tested, tested
