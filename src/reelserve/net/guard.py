"""Outbound HTTP to URLs that clients supply, limited to public addresses (the SSRF guard).

A server that requests URLs for strangers - input images, webhook targets - is an SSRF target:
without care, `http://169.254.169.254/` (cloud metadata), `http://localhost:6379/` or an
intranet host becomes reachable by anyone who can submit a task. This module is the one place
that decides what such a request may reach and makes sure it reaches only that:

* Only `http` and `https`, with a host and no credentials (`parse_http_url`).
* The host is resolved by *us*, once per hop (`check_url`): IP literals in every spelling the OS
  resolver accepts (`2130706433`, `0177.0.0.1`, `0x7f.1`, `[::ffff:127.0.0.1]`) are parsed as
  the address they denote, never passed on as opaque names; other names go through
  `resolve_overrides` or the system resolver. EVERY resolved address must be public unicast
  (see `_classify`), unless the operator allowed the host name or the network. A refusal is an
  `AddressRefused`; every other problem an `OutboundError`.
* The connection goes to the address that was checked (`pinned_request`): the IP is put into
  the request URL, the original name into the `Host` header and the TLS SNI/certificate check,
  so a DNS answer that changes between check and connect (DNS rebinding) cannot redirect us. A
  fresh transport per request means no pooled connection (whose certificate was checked for
  another name) is ever reused, env proxies are ignored (a proxy would do its own resolution
  and defeat the address check) and httpx follows no redirects.
* Redirects, where a caller follows them at all, are followed by hand (`follow_redirects`), at
  most `max_redirects`, and every hop is checked again.

Errors carry a message that is safe to show the client: it names the field (`param`) and says
what was wrong, without revealing what *our* resolver thinks internal names resolve to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from reelserve import __version__

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 20 * MIB
"""Same limit as the submit-time syntactic check of data URLs (`domain.spec.MAX_IMAGE_BYTES`)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""40 MP: above any phone camera, far below what would exhaust memory (about 120 MB as RGB)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IPV4_NUMBER_RE = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")

T = TypeVar("T")


class OutboundError(Exception):
    """A client-supplied URL is unusable: invalid, refused address, failed lookup or request.

    `message` is client-safe and starts with the field name; `param` is that field (e.g.
    `first_frame_image`, `webhook_url`). `media.images` uses this very class as its
    `ImageInputError` (an alias, so one `except` catches a refused image URL and an undecodable
    image alike); see there for how the API and the worker report it.
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
                overrides[_config_host(name)] = ipaddress.ip_address(address.strip("[]"))
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
        object.__setattr__(self, "_hosts", frozenset(_config_host(h) for h in self.allow_hosts))

    def host_allowed(self, host: str) -> bool:
        host = _config_host(host)
        if host in self._hosts:
            return True
        return any(p.startswith("*.") and host.endswith(p[1:]) for p in self._hosts)

    def network_allowed(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)


# --------------------------------------------------------------------------------------------
# Address classification


def _networks(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Ordered: the first match names the refusal. Written out rather than trusting `is_global`
# alone, whose lists differ between Python versions (3.11 calls ::8.8.8.8, fec0::1 and
# 192.0.0.9 global); `is_global` stays as the final catch-all.
_V4_RULES: tuple[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], str], ...] = (
    (_networks("0.0.0.0/32"), "unspecified"),
    (_networks("0.0.0.0/8"), "reserved"),
    (_networks("127.0.0.0/8"), "loopback"),
    (_networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "private"),
    (_networks("100.64.0.0/10"), "shared (carrier-grade NAT)"),
    (_networks("169.254.0.0/16"), "link-local"),
    (_networks("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "documentation"),
    (_networks("198.18.0.0/15"), "benchmarking"),
    (_networks("192.0.0.0/24", "192.88.99.0/24"), "reserved"),
    (_networks("224.0.0.0/4"), "multicast"),
    (_networks("255.255.255.255/32"), "broadcast"),
    (_networks("240.0.0.0/4"), "reserved"),
)
_V6_RULES: tuple[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], str], ...] = (
    (_networks("::/128"), "unspecified"),
    (_networks("::1/128"), "loopback"),
    (_networks("64:ff9b:1::/48"), "private (local-use NAT64)"),
    (_networks("fc00::/7", "fec0::/10"), "private"),
    (_networks("fe80::/10"), "link-local"),
    (_networks("ff00::/8"), "multicast"),
    (_networks("2001:db8::/32", "3fff::/20"), "documentation"),
    (_networks("2001:2::/48"), "benchmarking"),
    (_networks("2001::/32"), "Teredo tunnel"),
    (_networks("100::/64", "2001::/23", "5f00::/16"), "reserved"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
# Never fetchable, even from an allowed host or network.
_ALWAYS_REFUSED = frozenset({"unspecified", "broadcast", "multicast"})


def _classify_v4(address: ipaddress.IPv4Address) -> str | None:
    for networks, label in _V4_RULES:
        if any(address in n for n in networks):
            return label
    return None if address.is_global else "non-public"


def _classify(address: IPAddress) -> str | None:
    """Why `address` may not be fetched (a label such as "private"), or None if it is public.

    IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged
    by the IPv4 address they lead to, because that is where the packets end up.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _classify_v4(address)
    if address.ipv4_mapped is not None:
        label = _classify_v4(address.ipv4_mapped)
        return None if label is None else f"IPv4-mapped {label}"
    if address in _NAT64:
        label = _classify_v4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return None if label is None else f"NAT64 {label}"
    if address.sixtofour is not None:
        label = _classify_v4(address.sixtofour)
        if label is not None:
            return f"6to4 {label}"
    if address.teredo is not None:
        for embedded in address.teredo:
            label = _classify_v4(embedded)
            if label is not None:
                return f"Teredo {label}"
    for networks, label in _V6_RULES:
        if any(address in n for n in networks):
            return label
    if address in _V4_COMPATIBLE:
        # Deprecated IPv4-compatible form (::a.b.c.d): name the embedded address's problem.
        label = _classify_v4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return f"IPv4-compatible {label}" if label is not None else "reserved"
    if address not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None if address.is_global else "non-public"


def _show(address: IPAddress) -> str:
    """Display form; IPv4-mapped addresses as `::ffff:a.b.c.d` on every Python version."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _connect_address(address: IPAddress) -> IPAddress:
    """The address to actually connect to: an IPv4-mapped IPv6 address means its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# --------------------------------------------------------------------------------------------
# Host parsing and resolution


def _normalise_name(host: str) -> str:
    host = host.strip().lower()
    return host[:-1] if host.endswith(".") and len(host) > 1 else host


def _config_host(host: str) -> str:
    """A configured host name in the form URLs are compared in: lower-case ASCII (IDNA)."""
    host = _normalise_name(host)
    prefix = "*." if host.startswith("*.") else ""
    try:
        return prefix + host[len(prefix) :].encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _parse_ipv4_like(host: str) -> ipaddress.IPv4Address | None:
    """Parse `host` the way inet_aton / getaddrinfo (and browsers) read IPv4 literals.

    1 to 4 dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part fills
    the remaining bytes: `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1.
    Returns None when `host` is a name. Raises ValueError for a host that ends in a number but
    is no valid address (`1.2.3.999`, `08.0.0.1`, `foo.123`): the OS might read those in some
    other way, so they are refused rather than guessed at (as the WHATWG URL standard does).
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels = labels[:-1]
    if not _IPV4_NUMBER_RE.match(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError("too many parts")
    numbers: list[int] = []
    for label in labels:
        if re.fullmatch(r"0[xX][0-9a-fA-F]{0,8}", label):
            numbers.append(int(label[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]{1,11}", label):
            numbers.append(int(label, 8))
        elif re.fullmatch(r"0|[1-9][0-9]{0,9}", label):
            numbers.append(int(label))
        else:
            raise ValueError(f"bad part {label!r}")
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (4 - len(leading)):
        raise ValueError("part out of range")
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


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


def _unparsable(url: str, param: str, policy: FetchPolicy, *, redirect: bool) -> OutboundError:
    """The error for a URL httpx cannot parse.

    httpx refuses some IPv4 spellings that the OS resolver accepts (`0177.0.0.1`, `1.02.3.4`);
    they are named as the address they denote, so the client learns why they are refused.
    """
    try:
        host = urlsplit(url).hostname
        v4 = _parse_ipv4_like(host) if host else None
    except ValueError:
        host, v4 = None, None
    if host is not None and v4 is not None:
        where = _where(param, host, redirect=redirect)
        label = _classify(v4)
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
        raise _unparsable(str(url), param, policy, redirect=redirect) from None
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
        v4 = _parse_ipv4_like(host)
    except ValueError:
        raise OutboundError(f"{where} is not a valid IPv4 address or host name", param) from None
    if v4 is not None:
        return (v4,), True
    name = _normalise_name(host)
    if len(name) > 253 or not _HOSTNAME_RE.match(name):
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
    host = str(addresses[0]) if literal else _normalise_name(raw)
    host_allowed = not literal and policy.host_allowed(host)
    for address in addresses:
        label = _classify(address)
        if label is None:
            continue
        allowed = host_allowed or policy.network_allowed(_connect_address(address))
        if allowed and label.split()[-1] not in _ALWAYS_REFUSED:
            continue
        # The address is shown only when the client wrote it (a literal, in whatever spelling);
        # what our resolver says about a *name* stays private, so the API is no DNS oracle.
        raise _refusal(where, label, _show(address) if literal else None, param)
    connect = tuple(dict.fromkeys(_connect_address(a) for a in addresses))
    return Target(url, scheme, host, literal, port, connect)


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi) context, built once: loading the bundle per request is slow."""
    return httpx.create_ssl_context()


@contextlib.asynccontextmanager
async def pinned_request(
    method: str,
    target: Target,
    address: IPAddress,
    policy: FetchPolicy,
    *,
    headers: Mapping[str, str],
    content: bytes | None = None,
) -> AsyncIterator[httpx.Response]:
    """Send one request for `target` to the checked `address`; the response, body unread.

    The checked IP goes into the URL, so nothing resolves the name again; the name goes into
    Host and (for https) into SNI and the certificate check. `headers` come after Host (they
    must not set it). A bare transport rather than a client: no env proxies or redirect
    machinery can get involved (httpx's client even parses Location headers it is not asked to
    follow), and no connection outlives this request: the response and its connection are
    closed when the block ends. Each network step is bounded by `policy.total_timeout`.
    """
    request_url = target.url.copy_with(host=str(address), fragment=None)
    extensions: dict[str, object] = {"timeout": httpx.Timeout(policy.total_timeout).as_dict()}
    if target.scheme == "https" and not target.is_literal:
        extensions["sni_hostname"] = target.host
    transport = httpx.AsyncHTTPTransport(
        verify=policy.ssl_context or default_ssl_context(),
        trust_env=False,
        retries=0,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )
    async with transport:
        request = httpx.Request(
            method,
            request_url,
            headers={"Host": target.host_header, **headers},
            content=content,
            extensions=extensions,
        )
        response = await transport.handle_async_request(request)
        try:
            yield response
        finally:
            await response.aclose()


def redirect_location(
    response: httpx.Response, target: Target, param: str, policy: FetchPolicy
) -> httpx.URL | None:
    """Where `response` redirects to (resolved against `target`'s URL, without fragment), or
    None when it is no redirect. The URL is not checked yet: `follow_redirects` does that."""
    status = response.status_code
    if status not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("location")
    if not location:
        raise OutboundError(
            f"{param} URL answered HTTP {status} without a Location to redirect to", param
        )
    try:
        return target.url.join(location).copy_with(fragment=None)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise _unparsable(location, param, policy, redirect=True) from None


async def follow_redirects(
    url: httpx.URL,
    param: str,
    policy: FetchPolicy,
    send: Callable[[Target], Awaitable[T | httpx.URL]],
) -> T:
    """Check `url` and run `send` on it; while `send` answers with a URL to redirect to, parse
    and check that one afresh and run `send` again, at most `policy.max_redirects` times."""
    for index in range(policy.max_redirects + 1):
        target = await check_url(url, param, policy, hop=index)
        result = await send(target)
        if isinstance(result, httpx.URL):
            url = parse_http_url(result, param, policy, redirect=True)
            continue
        return result
    raise OutboundError(f"{param} URL redirected more than {policy.max_redirects} times", param)
