"""Service latency in both running modes (a benchmark, not a test).

- queue latency: submit -> `running` (the record's started_at - created_at) with an idle worker
- status polls: p50/p95/p99 of `GET /jobs/{id}` under 50 concurrent pollers (httpx asyncio,
  loopback, while the worker runs a job and writes its progress)
- status polls while uploads stream: p50/p99/max of `GET /jobs/{id}`, 50 pollers each polling
  every `--upload-poll-interval` s while `--uploads` uploads of `--upload-mib` MiB stream at once
  from another process (tests/service/upload_load.py; with Redis before any worker starts, so
  the jobs stay queued; embedded without an input shape, so that the body is received, parsed
  and detected, then refused with 422 instead of pruned on the same CPUs)

    python bench/service_latency.py [--jobs 5] [--pollers 50] [--requests 40] [--modes ...]
                                    [--uploads 10] [--upload-mib 50] [--upload-poll-interval 0.5]

Starts its own API and worker processes (the same harness as the end-to-end tests).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.harness import (
    base_env,
    client_for,
    drop_redis_keys,
    redis_settings,
    running_with_progress,
    start_api,
    start_worker,
    submit,
    wait_status,
    write_model,
)
from tests.service.upload_load import big_model, polls_during_uploads, upload_fields


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def server_seconds(metrics: str, route: str) -> float:
    """Mean server-side duration of GET `route` from the API's own Prometheus histogram."""
    values = {}
    for line in metrics.splitlines():
        for kind in ("sum", "count"):
            prefix = f"synflow_http_request_duration_seconds_{kind}{{"
            if line.startswith(prefix) and f'route="{route}"' in line and 'method="GET"' in line:
                values[kind] = float(line.rsplit(" ", 1)[1])
    return values["sum"] / values["count"]


def queue_latency(url: str, model: Path, jobs: int) -> list[float]:
    out = []
    with client_for(url) as client:
        for _ in range(jobs):
            job = submit(client, model, sparsity=0.5, iterations=2).json()
            done = wait_status(client, job["id"], timeout=120)
            started = datetime.fromisoformat(done["started_at"])
            created = datetime.fromisoformat(done["created_at"])
            out.append((started - created).total_seconds())
    return out


async def poll_latency(
    url: str, job_id: str, pollers: int, requests: int, interval: float
) -> list[float]:
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def poller() -> None:
            if interval:  # real clients are not in step with each other
                await asyncio.sleep(random.uniform(0, interval))
            for _ in range(requests):
                t = time.perf_counter()
                response = await client.get(f"/jobs/{job_id}")
                latencies.append(time.perf_counter() - t)
                assert response.status_code == 200
                if interval:
                    await asyncio.sleep(interval)

        started = time.perf_counter()
        await asyncio.gather(*(poller() for _ in range(pollers)))
        wall = time.perf_counter() - started
    print(f"    {len(latencies)} polls in {wall:.1f} s = {len(latencies) / wall:.0f}/s")
    return latencies


def report_polls(what: str, url: str, job_id: str, args, interval: float = 0.0) -> None:
    """Closed loop (interval 0: each poller sends its next poll as soon as it has the answer,
    i.e. saturation) or paced (each poller polls every `interval` seconds, like real clients)."""
    lat = asyncio.run(poll_latency(url, job_id, args.pollers, args.requests, interval))
    what += f", each poller every {interval:g} s" if interval else ", closed loop"
    with client_for(url) as client:
        server = server_seconds(client.get("/metrics").text, "/jobs/{job_id}")
    p50, p95, p99 = (pct(lat, q) * 1000 for q in (0.5, 0.95, 0.99))
    print(
        f"    status polls, {args.pollers} concurrent pollers ({what}): p50 {p50:.1f} ms, "
        f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {max(lat) * 1000:.1f} ms; mean time in the "
        f"API so far {server * 1000:.1f} ms"
    )


def report_upload_polls(mode: str, url: str, job_id: str, args, tmp: Path) -> None:
    big, shape = big_model(tmp / "big.pt", args.upload_mib)
    fields, _ = upload_fields(mode, shape)
    result = polls_during_uploads(
        url, job_id, big, uploads=args.uploads, fields=fields, pollers=args.pollers,
        interval=args.upload_poll_interval,
    )  # fmt: skip
    print(
        f"    status polls while {args.uploads} x {args.upload_mib} MiB uploads stream "
        f"({args.pollers} pollers, each every {args.upload_poll_interval:g} s): {result.summary()}"
    )
    with client_for(url) as client:  # nothing left queued ahead of the queue-latency jobs
        for job in client.get("/jobs", params={"limit": 100}).json()["items"]:
            client.delete(f"/jobs/{job['id']}")


def run_mode(mode: str, args, tmp: Path) -> None:
    settings = redis_settings() if mode == "redis" else {}
    env = base_env(tmp / mode, **settings)
    model = write_model(tmp / "model.pt")
    procs = []
    try:
        api, url = start_api(env, tmp)
        procs.append(api)
        print(f"{mode}:")
        with client_for(url) as client:
            polled = submit(client, model, sparsity=0.5, iterations=2).json()["id"]
        report_upload_polls(mode, url, polled, args, tmp)
        if mode == "redis":
            procs.append(start_worker(env, tmp))
        lat = queue_latency(url, model, args.jobs)
        median, worst = statistics.median(lat) * 1000, max(lat) * 1000
        print(f"    queue latency submit->running, {len(lat)} jobs: median {median:.0f} ms, "
              f"max {worst:.0f} ms")  # fmt: skip
        with client_for(url) as client:
            finished = client.get("/jobs", params={"limit": 1}).json()["items"][0]["id"]
            report_polls("idle worker, finished job", url, finished, args)
            job = submit(client, model, sparsity=0.99, iterations=10000).json()
            running_with_progress(client, job["id"])
            report_polls("worker pruning, running job", url, job["id"], args)
            report_polls("worker pruning, running job", url, job["id"], args, interval=0.5)
            client.post(f"/jobs/{job['id']}/cancel")
    finally:
        for proc in procs:
            proc.stop()
        if mode == "redis":
            drop_redis_keys(settings["redis_prefix"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="polls per poller")
    parser.add_argument("--modes", nargs="+", default=["embedded", "redis"])
    parser.add_argument("--uploads", type=int, default=10, help="concurrent uploads")
    parser.add_argument("--upload-mib", type=int, default=50, help="size of each upload")
    parser.add_argument(
        "--upload-poll-interval",
        type=float,
        default=0.5,
        help="seconds between one poller's polls while the uploads stream",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            run_mode(mode, args, Path(tmp))


if __name__ == "__main__":
    main()
