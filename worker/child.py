"""`python -m worker.child SPEC.json`: prune ONE job, in a process of its own.

Started only by worker/confinement.py (for worker/supervise.py), inside the sandbox
(docs/sandbox.md). It talks back through files in its scratch folder, never through pipes (a
child blocked on a full pipe would hang its parent): `progress.json` (rewritten as rounds
finish) and `outcome.json` (written once, last). It dies with its parent (PR_SET_PDEATHSIG)
so a killed worker leaves no orphan.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from worker.lifeline import die_with_parent

PROGRESS_FILE = "progress.json"
OUTCOME_FILE = "outcome.json"
MIN_PROGRESS_SECONDS = 0.1  # the parent reads it every poll; more often buys nothing


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from synflow.config import PruneConfig
    from synflow.errors import SynflowError
    from synflow.io.limits import InputLimits
    from synflow.pipeline import prune_file

    scratch = Path(spec["scratch"])
    last = [0.0]

    def progress(p) -> None:
        now = time.monotonic()
        if p.iteration == p.iterations or now - last[0] >= MIN_PROGRESS_SECONDS:
            last[0] = now
            write_json(
                scratch / PROGRESS_FILE,
                {"iteration": p.iteration, "iterations": p.iterations, "density": p.density},
            )

    fields = {k: v for k, v in spec["config"].items() if k in PruneConfig.model_fields}
    try:
        config = PruneConfig.model_validate(fields)
        device = resolve_device(spec["device"])
        limits = InputLimits.from_dict(spec.get("limits"))
        prune_file(
            spec["input"],
            config,
            spec["out"],
            device=device,
            precision=spec["precision"],
            progress=progress,
            limits=limits,
        )
    except SynflowError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message}
    except MemoryError:
        return {
            "ok": False,
            "code": "out_of_memory",
            "message": "the pruning process ran out of memory; try a smaller input_shape",
        }
    except Exception as exc:
        traceback.print_exc()
        return {
            "ok": False,
            "code": "engine_error",
            "message": f"pruning failed: {type(exc).__name__}: {exc}"[:2000],
        }
    return {"ok": True}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    if spec.get("parent_pid"):  # none inside a pid namespace, where the sandbox's init reaps
        die_with_parent(spec["parent_pid"])
    outcome = run(spec)
    write_json(Path(spec["scratch"]) / OUTCOME_FILE, outcome)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
