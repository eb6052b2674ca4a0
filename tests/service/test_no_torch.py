"""The API process never imports torch (nor does the worker's parent process): checked in a
fresh interpreter, after building the app and handling a request."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.service.harness import REPO_ROOT

PROGRAM = textwrap.dedent(
    """
    import sys, tempfile
    from fastapi.testclient import TestClient
    from service.app import create_app
    from jobs.settings import Settings
    import worker.runner, worker.context, service.cli

    app = create_app(Settings(data_dir=tempfile.mkdtemp()))
    with TestClient(app) as client:
        r = client.post("/prune", files={"model": ("m.pt", b"PK\\x03\\x04junk")},
                        data={"sparsity": "0.5", "input_shape": "1,3,8,8"})
        assert r.status_code == 422, r.text
        assert client.get("/jobs").status_code == 200
    heavy = sorted(m for m in ("torch", "numpy", "safetensors", "onnx") if m in sys.modules)
    print(heavy)
    """
)


def test_api_and_worker_parent_do_not_import_torch():
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
