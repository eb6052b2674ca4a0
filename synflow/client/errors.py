"""The one exception the client raises for what the service (or the way to it) refused."""

from __future__ import annotations

import httpx

from synflow.client.models import Problem

PROBLEM_PREFIX = "urn:synflow:problem:"
#: `type` of a ProblemError raised when no answer came at all (status None)
UNREACHABLE = "urn:synflow:client:unreachable"


class ProblemError(Exception):
    """A problem document as an exception: `type`, `title`, `status`, `detail` and any other
    member (`errors`, `job_status`, `limit`, ...) as attributes of `problem`.

    `status` is the HTTP status, or None when the service could not be reached (refused
    connection, unknown host, timeout, TLS): then `type` is `UNREACHABLE`."""

    def __init__(self, problem: Problem, retry_after: str | None = None):
        self.problem = problem
        self.type, self.title, self.status = problem.type, problem.title, problem.status
        self.detail = problem.detail or ""
        self.retry_after = retry_after
        super().__init__(str(self))

    @property
    def code(self) -> str:
        """The short name of the problem type (`job_not_found`, `upload_too_large`, ...)."""
        return self.type.removeprefix(PROBLEM_PREFIX).rpartition(":")[2]

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"HTTP {self.status} {self.title}: {self.detail}".rstrip(": ")


def from_response(response: httpx.Response) -> ProblemError:
    """The error an answer >= 400 stands for, problem+json or not (a proxy's HTML page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "title" in body:
        problem = Problem.model_validate({**body, "status": response.status_code})
    else:
        text = " ".join(response.text.split())[:300]
        problem = Problem(title=response.reason_phrase, status=response.status_code, detail=text)
    return ProblemError(problem, response.headers.get("retry-after"))


def unreachable(url: str, exc: httpx.TransportError) -> ProblemError:
    """No answer: one line that says where and what to do."""
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    detail = (
        f"cannot reach the service at {url} ({reason}); start it with `synflow serve`, or "
        "point SYNFLOW_URL (the CLI's --url) at a running one"
    )
    return ProblemError(Problem(type=UNREACHABLE, title="Service unreachable", detail=detail))
