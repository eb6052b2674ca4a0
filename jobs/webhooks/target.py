"""A `callback_url`: checked when the job is submitted (form, no DNS: an obviously bad URL is a
422 at once) and resolved when it is called. The addresses that resolution gives are checked
and the one connected to is one of them, so a name that resolves anew (DNS rebinding) cannot
slip past the check."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from jobs.webhooks.addresses import Address, AllowList, address_refusal, normal_host

SCHEMES = {"http": 80, "https": 443}


class CallbackRefused(ValueError):
    """A `callback_url` the service will not call (the message says why and what to do)."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # as written (an IPv6 literal without brackets), lower case
    port: int
    path: str  # path and query, at least "/"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"

    def url_for(self, ip: Address) -> str:
        """The URL that connects to `ip` itself (the Host header and TLS name stay the host's)."""
        shown = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{self.scheme}://{shown}:{self.port}{self.path}"


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, allow: AllowList, max_length: int) -> Target:
    """What can be said of `url` without resolving it; raises `CallbackRefused`."""
    if len(url) > max_length:
        raise CallbackRefused(f"callback_url is {len(url)} characters long; at most {max_length}")
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise CallbackRefused(
            "callback_url must be ASCII without spaces or control characters (IDNA-encode "
            "host names, percent-encode the path)"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise CallbackRefused(
            f"callback_url must be an http or https URL, e.g. https://hooks.example.com/synflow "
            f"(got scheme {parts.scheme!r})"
        )
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused(
            "callback_url must not carry credentials (user:password@); the webhook is signed "
            "(webhook-signature): verify that instead"
        )
    try:
        port = parts.port or SCHEMES[scheme]
    except ValueError:
        raise CallbackRefused("callback_url has an invalid port") from None
    host = normal_host(parts.hostname or "")
    if not host:
        raise CallbackRefused("callback_url has no host, e.g. https://hooks.example.com/synflow")
    ip = _literal(host)
    if ip is not None:
        reason = address_refusal(ip, host, allow)
        if reason:
            raise CallbackRefused(f"callback_url: {reason}")
    elif (host == "localhost" or host.endswith(".localhost")) and not allow.permits_host(host):
        raise CallbackRefused(
            f"callback_url: {host} is loopback: webhooks go to public addresses only, "
            "unless the operator allows this host (SYNFLOW_WEBHOOK_ALLOW)"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port, path=path)


def resolve(target: Target, allow: AllowList) -> list[Address]:
    """Every address of the target's host, each checked; raises `CallbackRefused` if any is
    refused (one bad address is enough: which one a connection would take is not ours to
    choose), `OSError` if the name does not resolve (worth retrying)."""
    ip = _literal(target.host)
    if ip is not None:
        found = [ip]
    else:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        found = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    for address in found:
        reason = address_refusal(address, target.host, allow)
        if reason:
            raise CallbackRefused(reason)
    if not found:
        raise OSError(f"{target.host} has no address")
    return found
