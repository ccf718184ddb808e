"""Outbound HTTP to URLs that clients supply, limited to public addresses (the SSRF guard).

A server that requests URLs for strangers - input images, webhook targets - is an SSRF target:
without care, `http://169.254.169.254/` (cloud metadata), `http://localhost:6379/` or an
intranet host becomes reachable by anyone who can submit a task. This package is the one place
that decides what such a request may reach and makes sure it reaches only that; this module
decides:

* Only `http` and `https`, with a host and no credentials (`parse_http_url`).
* The host is resolved by *us*, once per hop (`check_url`; `check_destination` parses and
  checks a client's URL in one step, e.g. a webhook target at submit): IP literals in every
  spelling the OS resolver accepts are parsed as the address they denote
  (`net.addresses.parse_ipv4_like`), never passed on as opaque names; other names go through
  `resolve_overrides` or the system resolver. EVERY resolved address must be public unicast
  (`net.addresses.classify`), unless the operator allowed the host name or the network. A
  refusal is an `AddressRefused`; every other problem an `OutboundError`.
* The connection then goes to the address that was checked, and redirects are checked again
  hop by hop: `net.transport` (`pinned_request`, `follow_redirects`).

Errors carry a message that is safe to show the client: it names the field (`param`) and says
what was wrong, without revealing what *our* resolver thinks internal names resolve to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from reelserve import __version__
from reelserve.net.addresses import (
    ALWAYS_REFUSED,
    IPAddress,
    classify,
    config_host,
    connect_address,
    normalise_name,
    parse_ipv4_like,
    show,
    valid_hostname,
)

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 20 * MIB
"""Same limit as the submit-time syntactic check of data URLs (`domain.spec.MAX_IMAGE_BYTES`)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""40 MP: above any phone camera, far below what would exhaust memory (about 120 MB as RGB)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


class OutboundError(Exception):
    """A client-supplied URL is unusable: invalid, refused address, failed lookup or request.

    `message` is client-safe and starts with the field name; `param` is that field (e.g.
    `first_frame_image`, `webhook_url`). Only this package raises it: the image fetcher turns
    it into its own `media.images.ImageInputError`, so code that checks or sends to a webhook
    URL catches this error and never an image's.
    """

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AddressRefused(OutboundError):
    """The host resolves to an address the policy does not allow: a permanent refusal, unlike a
    failed lookup or connection (webhook delivery retries those, never this)."""


@dataclass(frozen=True)
class FetchPolicy:
    """What outbound requests may reach and how much they may take. Build one from settings.

    `allow_hosts` are host names (exact, case-insensitive; `*.example.com` matches subdomains)
    that may resolve to non-public addresses, e.g. an internal image store; IP literals in URLs
    are governed by `allow_networks` only. `allow_networks` are
    CIDRs likewise allowed (e.g. `"127.0.0.0/8"` in tests). Allowing never makes unspecified
    (0.0.0.0, ::), broadcast or multicast addresses fetchable: nothing legitimate serves there.
    `resolve_overrides` pins host names to IP literals without DNS (like `curl --resolve`); the
    pinned address is checked like any other. `ssl_context` replaces the default trust store
    (certifi, via httpx) for https, e.g. for a private CA. `total_timeout` bounds each request
    (`pinned_request`); `max_bytes`, `max_pixels` and `user_agent` are read by the image
    fetcher (`media.images`), which also bounds a whole fetch, DNS included, by `total_timeout`.
    """

    allow_hosts: tuple[str, ...] = ()
    allow_networks: tuple[str, ...] = ()
    resolve_overrides: Mapping[str, str] = field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES
    total_timeout: float = 20.0
    max_redirects: int = 5
    max_pixels: int = DEFAULT_MAX_PIXELS
    user_agent: str = f"reelserve/{__version__} (image fetcher)"
    ssl_context: ssl.SSLContext | None = None

    # Parsed forms, validated once so a bad setting fails at startup, not on the first request.
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False, compare=False
    )
    _overrides: dict[str, IPAddress] = field(init=False, repr=False, compare=False)
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            networks = tuple(ipaddress.ip_network(n, strict=False) for n in self.allow_networks)
        except ValueError as exc:
            raise ValueError(f"allow_networks: {exc}") from None
        overrides: dict[str, IPAddress] = {}
        for name, address in self.resolve_overrides.items():
            try:
                overrides[config_host(name)] = ipaddress.ip_address(address.strip("[]"))
            except ValueError:
                raise ValueError(
                    f"resolve_overrides: {address!r} (for {name!r}) is not an IP address"
                ) from None
        if self.max_bytes < 1 or self.max_pixels < 1 or self.max_redirects < 0:
            raise ValueError("max_bytes and max_pixels must be positive, max_redirects >= 0")
        if self.total_timeout <= 0:
            raise ValueError("total_timeout must be positive")
        object.__setattr__(self, "_networks", networks)
        object.__setattr__(self, "_overrides", overrides)
        object.__setattr__(self, "_hosts", frozenset(config_host(h) for h in self.allow_hosts))

    def host_allowed(self, host: str) -> bool:
        host = config_host(host)
        if host in self._hosts:
            return True
        return any(p.startswith("*.") and host.endswith(p[1:]) for p in self._hosts)

    def network_allowed(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)


@dataclass(frozen=True)
class Target:
    """One checked hop (from `check_url`): where to connect and what to tell the server and TLS.

    `addresses` are the checked addresses to connect to, in the resolver's order; a caller tries
    them in turn with `pinned_request`.
    """

    url: httpx.URL
    scheme: str
    host: str  # canonical: lower-case ASCII (IDNA) name, or the address for IP literals
    is_literal: bool
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _article(label: str) -> str:
    return "an" if label[0].lower() in "aeiou" else "a"


def _where(param: str, host: str, *, redirect: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f'{param} redirect target host "{shown}"' if redirect else f'{param} host "{shown}"'


def _refusal(where: str, label: str, shown: str | None, param: str) -> OutboundError:
    detail = f" ({shown})" if shown else ""
    return AddressRefused(
        f"{where} resolves to {_article(label)} {label} address{detail}, which is not allowed",
        param,
    )


def invalid_url(url: str, param: str, policy: FetchPolicy, *, redirect: bool) -> OutboundError:
    """The error for a URL httpx cannot parse.

    httpx refuses some IPv4 spellings that the OS resolver accepts (`0177.0.0.1`, `1.02.3.4`);
    they are named as the address they denote, so the client learns why they are refused.
    """
    try:
        host = urlsplit(url).hostname
        v4 = parse_ipv4_like(host) if host else None
    except ValueError:
        host, v4 = None, None
    if host is not None and v4 is not None:
        where = _where(param, host, redirect=redirect)
        label = classify(v4)
        if label is not None and not policy.network_allowed(v4):
            return _refusal(where, label, str(v4), param)
        return OutboundError(f"{where} must be written as {v4}", param)
    if redirect:
        return OutboundError(f"{param} redirected to an invalid URL", param)
    return OutboundError(f"{param} must be a valid http(s) URL", param)


def parse_http_url(
    url: str | httpx.URL, param: str, policy: FetchPolicy, *, redirect: bool
) -> httpx.URL:
    """Parse with httpx - the parser whose reading of the URL is what actually gets requested -
    and refuse anything but http(s) URLs with a host and no credentials."""
    what = f"{param} redirected to" if redirect else f"{param} must be"
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise invalid_url(str(url), param, policy, redirect=redirect) from None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        shown = scheme or "none"
        if redirect:
            raise OutboundError(
                f'{what} a URL with scheme "{shown}"; only http and https are fetched', param
            )
        raise OutboundError(
            f"{what} an http(s) URL or a data:image/...;base64, URL (got scheme {shown})", param
        )
    if not parsed.raw_host:
        raise OutboundError(f"{param} URL has no host", param)
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        # httpx keeps `:0` and `:99999`; `port or default` would read `:0` as the default port.
        raise OutboundError(
            f"{param} URL port must be between 1 and 65535 (got {parsed.port})", param
        )
    if parsed.userinfo:
        raise OutboundError(f"{param} URL must not contain credentials (user@host)", param)
    return parsed


async def _resolve(
    host: str, port: int, where: str, param: str, policy: FetchPolicy
) -> tuple[tuple[IPAddress, ...], bool]:
    """The addresses `host` stands for, and whether they came from the URL itself (a literal).

    Literals are parsed here, never handed to a resolver; names use `resolve_overrides`, then
    the system resolver (`loop.getaddrinfo`, which runs in a thread, off the event loop).
    """
    if ":" in host:
        if "%" in host:
            raise OutboundError(
                f"{where} is an IPv6 address with a zone, which is not allowed", param
            )
        try:
            return (ipaddress.IPv6Address(host),), True
        except ValueError:
            raise OutboundError(f"{where} is not a valid IPv6 address", param) from None
    try:
        v4 = parse_ipv4_like(host)
    except ValueError:
        raise OutboundError(f"{where} is not a valid IPv4 address or host name", param) from None
    if v4 is not None:
        return (v4,), True
    name = normalise_name(host)
    if not valid_hostname(name):
        raise OutboundError(f"{where} is not a valid host name", param)
    override = policy._overrides.get(name)
    if override is not None:
        return (override,), False
    if (name == "localhost" or name.endswith(".localhost")) and not policy.host_allowed(name):
        # RFC 6761: always loopback, whatever a resolver says; refuse without asking one.
        return (ipaddress.IPv4Address("127.0.0.1"),), False
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        raise OutboundError(f"{where} could not be resolved", param) from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            continue
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundError(f"{where} could not be resolved", param)
    return tuple(addresses), False


async def check_url(url: httpx.URL, param: str, policy: FetchPolicy, *, hop: int) -> Target:
    """Resolve `url`'s host and refuse it unless every address is public or allowed."""
    scheme = url.scheme.lower()
    raw = url.raw_host.decode("ascii", errors="replace").lower()
    port = url.port or _DEFAULT_PORTS[scheme]
    where = _where(param, raw, redirect=hop > 0)
    addresses, literal = await _resolve(raw, port, where, param, policy)
    host = str(addresses[0]) if literal else normalise_name(raw)
    host_allowed = not literal and policy.host_allowed(host)
    for address in addresses:
        label = classify(address)
        if label is None:
            continue
        allowed = host_allowed or policy.network_allowed(connect_address(address))
        if allowed and label.split()[-1] not in ALWAYS_REFUSED:
            continue
        # The address is shown only when the client wrote it (a literal, in whatever spelling);
        # what our resolver says about a *name* stays private, so the API is no DNS oracle.
        raise _refusal(where, label, show(address) if literal else None, param)
    connect = tuple(dict.fromkeys(connect_address(a) for a in addresses))
    return Target(url, scheme, host, literal, port, connect)


async def check_destination(url: str, param: str, policy: FetchPolicy) -> Target:
    """Parse a client-supplied URL and check its host (`parse_http_url`, then `check_url`), the
    lookup bounded by `policy.total_timeout`: what can be known of a destination before any
    request is sent. Raises `OutboundError` (`AddressRefused` for a refused address)."""
    parsed = parse_http_url(url, param, policy, redirect=False)
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await check_url(parsed, param, policy, hop=0)
    except TimeoutError:
        raise OutboundError(f"{param} host could not be resolved in time", param) from None
