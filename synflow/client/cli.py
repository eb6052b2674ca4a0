"""The remote subcommands of `synflow` (`submit`, `status`, `wait`, `download`, `cancel`,
`delete`, `jobs`), on `synflow.client`; added through the `synflow.commands` entry point.

Exit codes: 0 done (for `wait` and `submit --wait`: the job succeeded); 1 the service refused
(any HTTP error, shown as one line), the job failed or was canceled, `--timeout` passed, or a
local file is missing; 2 a request the CLI refuses before sending it, or no service at `--url`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pydantic import ValidationError

from synflow.client.client import DEFAULT_URL, KEY_ENV, URL_ENV, Client, JobTimeout
from synflow.client.errors import ProblemError
from synflow.client.models import Job

#: what the CLI says instead of the service's curl-flavoured hint for a missing input shape
MISSING_INPUTS_HINT = (
    "add --input-shape 1,3,224,224 (batch first, the shape of the model's one input), or one "
    "--input SPEC per forward argument, e.g. --input int64:1,128"
)


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _print_job(job: Job) -> None:
    _print(job.model_dump(mode="json", exclude_unset=True))


def _wait(client: Client, args: argparse.Namespace, job_id: str) -> int:
    job = client.wait(job_id, args.timeout, progress=True, interval=args.interval)
    _print_job(job)
    return 0 if job.status == "succeeded" else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    from synflow.cli import config_from_args

    config = config_from_args(args)  # validated here: mistakes are reported before uploading
    with _client(args) as client:
        try:
            job = client.submit(args.model, **config.model_dump(mode="json", exclude_defaults=True))
        except ProblemError as exc:
            if exc.code == "missing_inputs":
                exc.detail = f"{exc.detail.partition('; add')[0]}; {MISSING_INPUTS_HINT}"
            raise
        if args.wait:
            return _wait(client, args, job.id)
    _print_job(job)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(client.get(args.job_id))
    return 0


def _cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _wait(client, args, args.job_id)


def _cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        files = client.download(args.job_id, args.out, [args.artifact] if args.artifact else None)
    for path in files.values():
        print(path)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(client.cancel(args.job_id))
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete(args.job_id)
    print(f"deleted {args.job_id}")
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.all:
            jobs, more = list(client.list(args.limit)), None
        else:
            page = client.page(args.limit, args.cursor)
            jobs, more = page.items, page.next_cursor
    for job in jobs:
        print(f"{job.id}  {job.status:<9}  {job.created_at.isoformat()}")
    if more:
        print(f"more: --cursor {more}")
    return 0


def _error(message: str, code: int) -> int:
    print(f"synflow: error: {message}", file=sys.stderr)
    return code


def _remote_handler(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ProblemError as exc:  # one line; no answer at all is exit 2
            return _error(str(exc), 2 if exc.status is None else 1)
        except JobTimeout as exc:
            return _error(str(exc), 1)
        except ValidationError as exc:
            from synflow.cli import validation_message

            return _error(validation_message(exc), 2)
        except FileNotFoundError as exc:
            return _error(f"no such file: {exc.filename}", 1)
        except OSError as exc:
            return _error(str(exc), 1)

    return run


def _remote_parser(sub, name: str, help: str, handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"service URL (env {URL_ENV}, default {DEFAULT_URL})",
    )
    p.add_argument("--api-key", default=os.environ.get(KEY_ENV), help=f"API key (env {KEY_ENV})")
    p.set_defaults(handler=_remote_handler(handler))
    return p


def _add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between the first polls (backs off)"
    )


def register(sub) -> None:
    from synflow.cli import add_config_arguments

    submit = _remote_parser(sub, "submit", "upload a model to a running service", _cmd_submit)
    submit.add_argument(
        "model",
        help="TorchScript (.pt), torch.export (.pt2) or ONNX (.onnx) file, or a zip of an .onnx "
        "and its data",
    )
    add_config_arguments(submit)
    submit.add_argument("--wait", action="store_true", help="wait until the job has finished")
    _add_wait_flags(submit)

    for name, help, handler in (
        ("status", "show a job", _cmd_status),
        ("wait", "wait until a job has finished; exit 0 if it succeeded", _cmd_wait),
        ("cancel", "cancel a job", _cmd_cancel),
        ("delete", "delete a job and its files", _cmd_delete),
    ):
        p = _remote_parser(sub, name, help, handler)
        p.add_argument("job_id")
        if name == "wait":
            _add_wait_flags(p)

    download = _remote_parser(sub, "download", "download a job's artifacts", _cmd_download)
    download.add_argument("job_id")
    download.add_argument("--out", required=True, help="directory to write into (created)")
    download.add_argument(
        "--artifact", choices=["masks", "weights", "model", "report", "report.png"]
    )

    jobs = _remote_parser(sub, "jobs", "list your jobs, newest first", _cmd_jobs)
    jobs.add_argument("--limit", type=int, default=20, help="page size")
    jobs.add_argument("--cursor", default=None, help="the `more: --cursor` of the last page")
    jobs.add_argument("--all", action="store_true", help="every page, not just one")
