"""The HTTP server `synflow serve` runs: uvicorn with every request bounded before the app sees it.

uvicorn's default parser (httptools) buffers a request head of any size: four connections sending
1 GiB of headers each took the API to 5.3 GB. So the server runs uvicorn's h11 protocol with
h11's buffer cap (`http_max_header_bytes`) and a cap on the number of header fields, both
answered `431` with a problem document, and with timers that close connections a client leaves
half-sent: the request head must arrive within `http_header_timeout` of its first byte, and a
request (head or body) may not stall for `http_idle_timeout`. Idle keep-alive connections close
after `http_keepalive_timeout` (uvicorn's own timer).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from jobs.logs import json_logging_config
from jobs.settings import Settings
from service.problems import MEDIA_TYPE

log = logging.getLogger("service")

#: what each refusal of the server itself tells the client
_DETAILS = {
    431: "the request's header fields are too large or too many (at most {bytes} bytes and "
    "{count} fields); send fewer or smaller headers",
    400: "the request is not valid HTTP/1.1",
}


class _BoundedConnection(h11.Connection):
    """h11's connection with caps on the head's size and number of fields; remembers the status
    hint of the last protocol error so that the response can say 431 where h11 means it."""

    def __init__(self, max_header_bytes: int, max_headers: int):
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.error_status = 400

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status = exc.error_status_hint
            raise
        if isinstance(event, h11.Request):
            # h11 caps only a head that is still incomplete; one that arrived whole in a single
            # read (up to 256 KiB) is measured here
            size = len(event.method) + len(event.target) + 12
            size += sum(len(name) + len(value) + 4 for name, value in event.headers)
            if len(event.headers) > self.max_headers or size > self.max_header_bytes:
                self.error_status = 431
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header caps answered 431 and request timers."""

    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout = 10.0
    idle_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.conn = _BoundedConnection(self.max_header_bytes, self.max_headers)
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- timers --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._rearm(new_bytes=True)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._rearm(new_bytes=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._rearm(new_bytes=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None

    def _receiving(self) -> bool:
        """Whether the server waits on the client for (more of) a request."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _rearm(self, new_bytes: bool) -> None:
        if self.transport is None or self.transport.is_closing() or not self._receiving():
            self._cancel_timers()
            return
        waiting_for_head = self.conn.their_state is h11.IDLE
        if not waiting_for_head and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if waiting_for_head and self._head_timer is None and new_bytes:
            self._head_timer = self.loop.call_later(self.header_timeout, self._on_head_timeout)
        if new_bytes or self._idle_timer is None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._idle_timer = self.loop.call_later(self.idle_timeout, self._on_idle_timeout)

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._close(f"no complete request head within {self.header_timeout:g} s")

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing() or not self._receiving():
            return
        if self.flow is not None and self.flow.read_paused:  # we are the slow side
            self._idle_timer = self.loop.call_later(self.idle_timeout, self._on_idle_timeout)
            return
        self._close(f"the client sent nothing for {self.idle_timeout:g} s mid-request")

    def _close(self, why: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning("closing the connection of %s: %s", client, why)
        self._cancel_timers()
        self.transport.close()

    # --- refusals ------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this on any protocol error; answer with h11's status (431 for an
        oversized head) as a problem document, then close."""
        status = self.conn.error_status if 400 <= self.conn.error_status < 500 else 400
        detail = _DETAILS.get(status, _DETAILS[400]).format(
            bytes=self.max_header_bytes, count=self.max_headers
        )
        title = STATUS_PHRASES[status].decode() or "Bad request"
        body = json.dumps(
            {"type": f"urn:synflow:problem:http_{status}", "title": title, "status": status,
             "detail": detail}
        ).encode()  # fmt: skip
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"connection", b"close")]
        try:
            for event in (
                h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response was already under way: just close
            pass
        self._cancel_timers()
        self.transport.close()


def protocol_for(settings: Settings) -> type[BoundedH11Protocol]:
    """The protocol class with this deployment's limits."""
    return type(
        "SynflowH11Protocol",
        (BoundedH11Protocol,),
        {
            "max_header_bytes": settings.http_max_header_bytes,
            "max_headers": settings.http_max_headers,
            "header_timeout": settings.http_header_timeout,
            "idle_timeout": settings.http_idle_timeout,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for `synflow serve` (JSON log
    lines with `SYNFLOW_LOG_FORMAT=json`, jobs/logs.py)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "http": protocol_for(settings),
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "timeout_keep_alive": settings.http_keepalive_timeout,
        "ws": "none",
    }
    if settings.log_format == "json":
        options["log_config"] = json_logging_config(settings.log_level)
    return options
