"""Which addresses a webhook may reach: public unicast only, unless the operator's allow-list
says otherwise. A `callback_url` is chosen by the client, so without this guard a job could
make the worker call the cloud metadata service, the Redis next door or an admin port on
loopback (server-side request forgery)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: instance metadata services (AWS, GCP, Azure, ...: IPv4; AWS Nitro: IPv6)
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
#: IPv6 prefixes that carry an IPv4 address, judged by that address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: Address) -> str | None:
    """Why a webhook may not reach `ip` by default, in words; None for a public address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return refusal(inner)
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 6 and ip in UNIQUE_LOCAL:
        return "a unique-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved (not public) address"
    return None


def is_metadata(ip: Address) -> bool:
    inner = embedded_ipv4(ip)
    return ip in METADATA or (inner is not None and inner in METADATA)


def normal_host(host: str) -> str:
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class AllowList:
    """`SYNFLOW_WEBHOOK_ALLOW`: networks whose addresses a webhook may reach, and host names it
    may reach whatever they resolve to (except a metadata address: only a network that
    contains it lets a webhook reach that)."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        networks: list[Network] = []
        hosts: set[str] = set()
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = normal_host(entry)
            labels = name.split(".")
            if not all(label and len(label) <= 63 for label in labels) or not all(
                c.isalnum() or c in "-_." for c in name
            ):
                raise ValueError(
                    f"webhook_allow entry {entry!r} is neither a CIDR (10.0.0.0/8, ::1/128) "
                    "nor a host name (hooks.internal)"
                )
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def permits_address(self, ip: Address) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def permits_host(self, host: str) -> bool:
        return normal_host(host) in self.hosts


def address_refusal(ip: Address, host: str, allow: AllowList) -> str | None:
    """Why a webhook to `host` may not connect to `ip` (one of its addresses); None if it may."""
    reason = refusal(ip)
    if reason is None or allow.permits_address(ip):
        return None
    if allow.permits_host(host) and not is_metadata(ip):
        return None
    shown = host if host == str(ip) else f"{host} ({ip})"
    return (
        f"{shown} is {reason}: webhooks go to public addresses only, unless the operator "
        "allows this network or host (SYNFLOW_WEBHOOK_ALLOW)"
    )
