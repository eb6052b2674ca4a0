"""When the broker cannot take a job's message, `POST /prune` answers 503 and the job ends
through the lifecycle (`fail_unqueued`): failed with `queue_unavailable`, its upload gone, and
its webhook due like any other ended job's. The real app, SQLite store and filesystem broker,
whose queue folder is made unusable (a file where the folder was)."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from jobs.records import utcnow
from jobs.settings import Settings
from service.app import create_app
from synflow.webhooks import new_secret
from tests.service.harness import INPUT_SHAPE, write_model


def test_an_unqueueable_job_fails_through_the_lifecycle(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data",
        webhook_secrets={"default": new_secret()},
        webhook_allow="127.0.0.1/32",
    )
    app = create_app(settings)
    queue_folder = settings.broker_path / "queue"
    shutil.rmtree(queue_folder)
    queue_folder.write_text("")  # every message written there now fails
    model = write_model(tmp_path / "m.pt")
    with TestClient(app) as client, model.open("rb") as fh:
        data = {
            "sparsity": "0.5",
            "input_shape": ",".join(map(str, INPUT_SHAPE)),
            "callback_url": "http://127.0.0.1:9/hook",
        }
        answer = client.post("/prune", data=data, files={"model": ("m.pt", fh)})
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"] == "urn:synflow:problem:queue_unavailable"
        assert answer.headers["retry-after"] == "5"
        [job] = client.get("/jobs").json()["items"]
    assert job["status"] == "failed" and job["error"]["code"] == "queue_unavailable"
    assert job["finished_at"] is not None
    record = app.state.jobs.get(job["id"])
    assert record.input_held is False
    assert not app.state.artifacts.job_dir(job["id"]).exists()
    # ended, so its webhook is due (a worker's courier sends it once the store is reachable)
    assert app.state.jobs.callbacks_due(utcnow(), 10) == [job["id"]]
    assert app.state.jobs.usage("default").active == 0
