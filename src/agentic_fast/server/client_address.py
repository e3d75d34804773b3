"""Who the client is, behind trusted reverse proxies (``server.trusted_proxies``).

With TLS ended by a proxy or tunnel, every connection comes from the proxy. The proxy's
forwarding header (``X-Forwarded-For``, or RFC 7239 ``Forwarded``: ``server.proxy_header``)
is believed only when the direct peer is a trusted proxy, and then only as far as the chain
of trusted proxies goes: the client is the right-most address that is not itself a trusted
proxy (everything left of it was written by the client and may be forged).

Only the configured header is read: a proxy that appends to ``X-Forwarded-For`` passes a
client's own ``Forwarded`` header through untouched, so believing both would let a client
choose its address.

``client_address(request)`` (or ``client_address(peer, headers, trusted)``) is the one
entry point for caps, rate limits and logs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from aiohttp import web

from agentic_fast.core import metrics

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: At most this many hops of a forwarding header are looked at (right to left).
MAX_HOPS = 32
#: Headers that only a proxy adds: a request carrying one came through a proxy.
PROXY_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip", "via")


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses or CIDRs (``10.0.0.0/8``, ``::1``); raises ``ValueError`` naming the entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
    return tuple(out)


def parse_ip(text: str) -> IPAddress | None:
    """An address as a proxy writes it (``1.2.3.4``, ``1.2.3.4:5``, ``[::1]:5``, ``::1``);
    IPv4-mapped IPv6 becomes IPv4. None when it is not an address (``unknown``, ``_x``)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """The trusted proxy networks and which forwarding header they write."""

    __slots__ = ("header", "networks")

    def __init__(self, networks: Iterable[str] = (),
                 header: str = "x-forwarded-for") -> None:
        if header not in ("x-forwarded-for", "forwarded"):
            raise ValueError(f"proxy header must be x-forwarded-for or forwarded, got {header!r}")
        self.networks = parse_networks(networks)
        self.header = header

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.networks)

    def resolve(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: ``peer`` unless it is a trusted proxy, then the right-most
        untrusted hop of the forwarding header (the peer itself when there is none)."""
        peer_ip = parse_ip(peer) if peer else None
        if peer_ip is None:
            return peer or "?"
        if not self.networks or not self.trusts(peer_ip):
            return str(peer_ip)
        hops = self._hops(headers)
        client = peer_ip
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:  # "unknown", obfuscated or garbage: the chain ends at `client`
                metrics.incr("client_address.unparsed_hop")
                break
            client = ip
            if not self.trusts(ip):
                break
        return str(client)

    def _hops(self, headers: Mapping[str, str]) -> list[str]:
        values = _all_values(headers, self.header)
        if not values:
            return []
        joined = ",".join(values)
        hops = joined.rsplit(",", MAX_HOPS)[-MAX_HOPS:]
        if self.header == "forwarded":
            return [_forwarded_for(element) for element in hops]
        return hops


def _all_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)  # aiohttp's CIMultiDict: repeated headers
    if getall is not None:
        return list(getall(name, []))
    value = headers.get(name)  # our own upgrade parser: lower-case, repeats joined by ", "
    return [value] if value else []


def _forwarded_for(element: str) -> str:
    """The ``for=`` node of one RFC 7239 ``forwarded-element`` (empty if none)."""
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            return value.strip()
    return ""


def came_through_proxy(headers: Mapping[str, str]) -> bool:
    """The request carries a header only a proxy adds (``X-Forwarded-For``, ``Via``...)."""
    return any(name in headers for name in PROXY_HEADERS)


TRUSTED_PROXIES: web.AppKey[TrustedProxies] = web.AppKey("trusted_proxies", TrustedProxies)


def client_address(source: web.BaseRequest | str | None,
                   headers: Mapping[str, str] | None = None,
                   trusted: TrustedProxies | None = None) -> str:
    """The client's address for caps, rate limits and logs.

    ``source`` is an aiohttp request (its peer, headers, and the app's trusted proxies are
    used unless given) or the direct peer's address (then pass ``headers`` and ``trusted``;
    without ``trusted`` no proxy is trusted and the peer is the client).
    """
    if isinstance(source, web.BaseRequest):
        if headers is None:
            headers = source.headers
        if trusted is None:
            app = getattr(source, "app", None)
            trusted = app.get(TRUSTED_PROXIES) if app is not None else None
        source = source.remote
    if trusted is None or not trusted:
        ip = parse_ip(source) if source else None
        return str(ip) if ip is not None else (source or "?")
    return trusted.resolve(source, headers or {})
