"""A bounded load test on loopback: 50 concurrent status pollers and 10 concurrent 50 MB uploads
against the real API (uvicorn, production mode with Redis; no worker, so jobs stay queued).
No request fails, and the API's memory stays flat: uploads stream to disk, never into memory.
Two rounds: the second shows no growth over the first. Figures are printed (`-s`)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx
import pytest

from tests.service.harness import (
    base_env,
    drop_redis_keys,
    redis_settings,
    small_cnn,
    start_api,
    write_model,
)

pytestmark = pytest.mark.slow

POLLERS = 50
UPLOADS = 10
UPLOAD_MB = 50
#: the API may grow this much over its idle size under load (10 uploads held in memory would be
#: 500 MB); and this much from one round to the next
PEAK_GROWTH_MB = 150
ROUND_GROWTH_MB = 25
SIDE = int((UPLOAD_MB * 2**20 / 4) ** 0.5)  # one square float32 Linear layer of UPLOAD_MB


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def big_model(path: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(SIDE, SIDE))), str(path))
    return path


async def one_round(url: str, model: bytes, small: bytes, pid: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        first = await client.post(
            "/prune", data={"sparsity": "0.5", "input_shape": "1,3,16,16"},
            files={"model": ("small.pt", small)},
        )  # fmt: skip
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        done = asyncio.Event()
        latencies: list[float] = []
        poll_errors: list[str] = []
        samples: list[float] = []

        async def poll() -> None:
            while not done.is_set():
                started = time.perf_counter()
                response = await client.get(f"/jobs/{job_id}")
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    poll_errors.append(f"{response.status_code} {response.text[:200]}")
                await asyncio.sleep(0.05)

        async def sample() -> None:
            while not done.is_set():
                samples.append(rss_mb(pid))
                await asyncio.sleep(0.05)

        async def upload() -> tuple[int, float]:
            started = time.perf_counter()
            response = await client.post(
                "/prune", data={"sparsity": "0.9", "input_shape": f"1,{SIDE}"},
                files={"model": ("big.pt", model)},
            )  # fmt: skip
            return response.status_code, time.perf_counter() - started

        background = [asyncio.create_task(poll()) for _ in range(POLLERS)]
        background.append(asyncio.create_task(sample()))
        started = time.perf_counter()
        uploads = await asyncio.gather(*(upload() for _ in range(UPLOADS)))
        wall = time.perf_counter() - started
        done.set()
        await asyncio.gather(*background)
        listing = (await client.get("/jobs", params={"limit": 100})).json()["items"]
        for job in listing:  # free the disk for the next round
            assert (await client.delete(f"/jobs/{job['id']}")).status_code == 204
    return {
        "upload_status": [status for status, _ in uploads],
        "upload_seconds": [seconds for _, seconds in uploads],
        "wall": wall,
        "polls": len(latencies),
        "poll_errors": poll_errors,
        "poll_p50_ms": statistics.median(latencies) * 1000,
        "poll_p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "peak_rss_mb": max(samples),
    }


def test_pollers_and_big_uploads(tmp_path):
    settings = redis_settings()
    env = base_env(tmp_path / "data", **settings)
    model = big_model(tmp_path / "big.pt").read_bytes()
    small = write_model(tmp_path / "small.pt", small_cnn()).read_bytes()
    api, url = start_api(env, tmp_path)
    try:
        pid = api.proc.pid
        idle = rss_mb(pid)
        rounds = []
        for _ in range(2):
            rounds.append(asyncio.run(one_round(url, model, small, pid)))
            time.sleep(0.5)
        after = rss_mb(pid)
    finally:
        api.stop()
        drop_redis_keys(settings["redis_prefix"])
    print(
        f"\nload: {POLLERS} pollers + {UPLOADS} x {len(model) / 2**20:.0f} MiB uploads; "
        f"API RSS idle {idle:.0f} MiB, after {after:.0f} MiB"
    )
    for number, result in enumerate(rounds, 1):
        print(
            f"round {number}: uploads {result['wall']:.1f} s wall "
            f"(each {min(result['upload_seconds']):.1f}-{max(result['upload_seconds']):.1f} s), "
            f"{result['polls']} polls p50 {result['poll_p50_ms']:.1f} ms "
            f"p99 {result['poll_p99_ms']:.1f} ms, peak RSS {result['peak_rss_mb']:.0f} MiB"
        )
    for result in rounds:
        assert result["upload_status"] == [202] * UPLOADS
        assert not result["poll_errors"], result["poll_errors"][:5]
        assert result["peak_rss_mb"] < idle + PEAK_GROWTH_MB
    assert rounds[1]["peak_rss_mb"] < rounds[0]["peak_rss_mb"] + ROUND_GROWTH_MB
    assert after < rounds[0]["peak_rss_mb"] + ROUND_GROWTH_MB
