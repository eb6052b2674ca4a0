"""`X-Request-ID`: taken from the request when it is a sane token, generated otherwise, echoed on
every response and carried by every log line of the request (jobs/logs.py).

A proxy or a client that already traces its calls sends its own id, and the service's lines can
then be found by it. An id is accepted only when it is 1 to `MAX_LENGTH` characters of
letters, digits and `-_.:+/=~` (what tracing ids and base64 use): anything else (too long, spaces,
quotes, control characters that could forge log lines) is replaced by a generated id, which
the response then carries, rather than refusing a request over a tracing header.
"""

from __future__ import annotations

import re
import uuid

from jobs.logs import log_scope

HEADER = "x-request-id"
MAX_LENGTH = 128
_VALID = re.compile(rf"[A-Za-z0-9._:+/=~-]{{1,{MAX_LENGTH}}}")


def request_id_of(value: bytes | None) -> str:
    """The request's id: its own when acceptable, else a new random one (32 hex digits)."""
    if value is not None:
        text = value.decode("latin-1")
        if _VALID.fullmatch(text):
            return text
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Plain ASGI (request bodies stream through untouched): sets the id as the request's log
    scope and adds it to the response's headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        name = HEADER.encode()
        request_id = request_id_of(dict(scope["headers"]).get(name))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != name]
                message = {**message, "headers": [*headers, (name, request_id.encode())]}
            await send(message)

        with log_scope(request_id=request_id):
            await self.app(scope, receive, send_with_id)
