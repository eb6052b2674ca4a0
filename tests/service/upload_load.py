"""Status polls while big uploads stream: the load that the responsiveness test and
`bench/service_latency.py` put on the API.

The uploads run in a process of their own (`python -m tests.service.upload_load`), so that the
pollers' timings are the API's answers, not the wait for a load generator sharing their event
loop."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def big_model(path: Path, mib: int) -> tuple[Path, str]:
    """A TorchScript file of about `mib` MiB (one square float32 Linear layer), and its input
    shape."""
    import torch
    from torch import nn

    side = int((mib * 2**20 / 4) ** 0.5)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(side, side))), str(path))
    return path, f"1,{side}"


def upload_all(url: str, model: str, count: int, fields: dict, headers: dict) -> dict:
    """`count` concurrent uploads of `model`: their statuses and the wall time."""

    def one(_: int) -> int:
        with (
            httpx.Client(base_url=url, headers=headers, timeout=600) as client,
            open(model, "rb") as fh,
        ):
            return client.post("/prune", data=fields, files={"model": ("big.pt", fh)}).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(one, range(count)))
    return {"statuses": statuses, "seconds": time.perf_counter() - started}


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, one per status poll sent while the uploads ran
    poll_statuses: Counter
    upload_statuses: list[int]
    upload_seconds: float

    def pct(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    def summary(self) -> str:
        p50, p99, worst = (x * 1000 for x in (self.pct(0.5), self.pct(0.99), max(self.latencies)))
        return (
            f"{len(self.latencies)} polls: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms "
            f"(statuses {dict(self.poll_statuses)}); uploads {self.upload_statuses} in "
            f"{self.upload_seconds:.1f} s"
        )


async def _poll_until(url: str, job_id: str, pollers: int, interval: float, headers: dict,
                      done: asyncio.Event, result: LoadResult) -> None:  # fmt: skip
    """Each poller keeps one connection and sends plain HTTP/1.1 GETs over asyncio streams: a
    fraction of httpx's CPU per request, so that on a small machine the pollers measure the
    API rather than themselves."""
    parts = urlsplit(url)
    head = f"GET /jobs/{job_id} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (head + "\r\n").encode()

    async def poller() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while not done.is_set():
                started = time.perf_counter()
                writer.write(request)
                status_line = await reader.readuntil(b"\r\n")
                length = 0
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                result.latencies.append(time.perf_counter() - started)
                result.poll_statuses[int(status_line.split()[1])] += 1
                await asyncio.sleep(interval)
        finally:
            writer.close()

    await asyncio.gather(*(poller() for _ in range(pollers)))


async def _run(url, job_id, model, uploads, fields, pollers, interval, headers) -> LoadResult:
    result = LoadResult([], Counter(), [], 0.0)
    done = asyncio.Event()
    polling = asyncio.create_task(
        _poll_until(url, job_id, pollers, interval, headers, done, result)
    )
    spec = json.dumps([url, str(model), uploads, fields, headers])
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.service.upload_load", spec, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
    finally:
        done.set()
        await polling
    if proc.returncode != 0:
        raise AssertionError(f"the uploads failed:\n{err.decode(errors='replace')[-3000:]}")
    answer = json.loads(out)
    result.upload_statuses, result.upload_seconds = answer["statuses"], answer["seconds"]
    return result


def upload_fields(mode: str, side_input: str) -> tuple[dict[str, str], int]:
    """The form fields of the uploads and the status they get. With Redis (no worker started)
    the jobs are created and stay queued: 202. Embedded, the service's own worker would prune
    them on the same CPUs as the API, so the uploads leave out the input shape: the whole body
    is still received, parsed and its format detected before the 422 (`missing_inputs`)."""
    if mode == "redis":
        return {"sparsity": "0.9", "input_shape": side_input}, 202
    return {"sparsity": "0.9"}, 422


def polls_during_uploads(
    url: str,
    job_id: str,
    model: Path,
    *,
    uploads: int = 10,
    fields: dict[str, str],
    pollers: int = 50,
    interval: float = 0.5,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """`pollers` clients GET /jobs/{job_id} every `interval` s while `uploads` POST /prune of
    `model` stream at once; the polls' latencies and statuses, the uploads' statuses."""
    headers = headers or {}
    return asyncio.run(_run(url, job_id, model, uploads, fields, pollers, interval, headers))


if __name__ == "__main__":  # the uploading process
    print(json.dumps(upload_all(*json.loads(sys.argv[1]))))
