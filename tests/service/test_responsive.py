"""The API answers status polls while big uploads stream (issue 14): 50 pollers and 10
concurrent 50 MiB uploads from another process, in both modes. Asserted is only what holds on
a loaded shared CI machine: no 5xx and no poll over 2 s; the figures come from
`bench/service_latency.py` (printed here with `-s`)."""

from __future__ import annotations

import pytest

from tests.service.harness import (
    base_env,
    client_for,
    drop_redis_keys,
    redis_settings,
    start_api,
    submit,
    write_model,
)
from tests.service.upload_load import big_model, polls_during_uploads, upload_fields

pytestmark = pytest.mark.slow

SLOWEST_POLL_S = 2.0


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return big_model(tmp_path_factory.mktemp("big") / "big.pt", 50)


@pytest.mark.parametrize("mode", ["embedded", "redis"])
def test_polls_stay_fast_while_uploads_stream(mode, big, tmp_path):
    settings = redis_settings() if mode == "redis" else {}
    api, url = start_api(base_env(tmp_path / "data", **settings), tmp_path)
    try:
        with client_for(url) as client:
            job = submit(
                client, write_model(tmp_path / "small.pt"), sparsity=0.5, iterations=2
            ).json()
        fields, expected = upload_fields(mode, big[1])
        result = polls_during_uploads(url, job["id"], big[0], fields=fields)
    finally:
        api.stop()
        if mode == "redis":
            drop_redis_keys(settings["redis_prefix"])
    print(f"\n{mode}: {result.summary()}")
    assert result.upload_statuses == [expected] * 10
    assert set(result.poll_statuses) == {200}, result.poll_statuses  # no 5xx, nothing else
    assert max(result.latencies) < SLOWEST_POLL_S, result.summary()
