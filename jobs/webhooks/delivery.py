"""One delivery attempt: POST the signed body to an address of the `callback_url` that was
checked (target.py), with no proxy from the environment, no redirect followed (a 3xx is a
failed attempt), each phase bounded by `webhook_timeout` and at most
`webhook_max_response_bytes` of the answer read."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import certifi
import httpx

from jobs.settings import Settings
from jobs.webhooks.target import CallbackRefused, Target, check_url, resolve
from synflow import __version__

#: characters of a receiver's answer quoted in `last_error`
QUOTED = 200


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    refused: bool = False  # the URL may not be called at all: no retry
    error: str | None = None


def attempt(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> Attempt:
    allow = settings.webhook_allow_list
    try:
        target = check_url(url, allow, settings.webhook_url_max_length)
        addresses = resolve(target, allow)
    except CallbackRefused as exc:
        return Attempt(False, refused=True, error=str(exc))
    except OSError as exc:
        return Attempt(False, error=f"cannot resolve the callback host: {exc}")
    error = "no address to connect to"
    for address in addresses:  # the next address only when this one cannot be reached
        try:
            status, location, answer = _post(
                target, target.url_for(address), body, headers, settings
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error = f"cannot connect to {target.host} ({address}): {exc or type(exc).__name__}"
            continue
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Attempt(False, error=f"{type(exc).__name__} from {target.host}: {exc}")
        if 200 <= status < 300:
            return Attempt(True)
        if 300 <= status < 400:
            return Attempt(
                False,
                error=f"the receiver answered {status} (a redirect to {quote(location or '?')}); "
                "redirects are not followed: give the final URL as callback_url",
            )
        return Attempt(False, error=f"the receiver answered {status}: {answer}".rstrip(": "))
    return Attempt(False, error=error)


@cache
def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """One verifying TLS context per CA bundle for every attempt (building one costs ~0.1 s
    of CPU)."""
    return ssl.create_default_context(cafile=str(ca_file or certifi.where()))


def _post(
    target: Target, url: str, body: bytes, headers: dict[str, str], settings: Settings
) -> tuple[int, str | None, str]:
    """(status, Location header, the start of the answer)."""
    limit = settings.webhook_max_response_bytes
    deadline = time.monotonic() + settings.webhook_timeout
    request_headers = {
        **headers,
        "host": target.host_header,
        "content-type": "application/json",
        "user-agent": f"synflow-webhooks/{__version__}",
    }
    # TLS: the certificate is checked against the host name, though the connection goes to
    # the checked address
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    with httpx.Client(
        timeout=httpx.Timeout(settings.webhook_timeout),
        follow_redirects=False,
        trust_env=False,
        verify=tls_context(settings.webhook_ca_file),
    ) as client:
        request = client.build_request(
            "POST", url, content=body, headers=request_headers, extensions=extensions
        )
        response = client.send(request, stream=True)
        try:
            answer = b""
            if limit:
                for chunk in response.iter_raw(chunk_size=min(limit, 4096)):
                    answer += chunk
                    if len(answer) >= limit or time.monotonic() > deadline:
                        break
        finally:
            response.close()
    return response.status_code, response.headers.get("location"), quote(answer[:limit])


def quote(data: bytes | str) -> str:
    """The start of what a receiver sent, printable, for `last_error`."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return "".join(c if c.isprintable() else " " for c in text)[:QUOTED].strip()
