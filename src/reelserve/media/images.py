"""Input images: SSRF-safe fetching, strict decoding and fitting to the output frame.

Clients name their first/last frame by an http(s) URL, which *this server* fetches, or by a
base64 `data:image/...` URL. A server that fetches URLs for strangers is an SSRF target: without
care, `http://169.254.169.254/` (cloud metadata), `http://localhost:6379/` or an intranet host
becomes reachable by anyone who can submit a task. The rules here:

* Only `http` and `https` (and `data:` as the client's own bytes). No credentials in URLs.
* The host is resolved by *us*, once per hop: IP literals in every spelling the OS resolver
  accepts (`2130706433`, `0177.0.0.1`, `0x7f.1`, `[::ffff:127.0.0.1]`) are parsed as the address
  they denote, never passed on as opaque names; other names go through `resolve_overrides` or
  the system resolver. EVERY resolved address must be public unicast (see `_classify`), unless
  the operator allowed the host name or the network.
* The connection goes to the address that was checked - the IP is put into the request URL, the
  original name into the `Host` header and the TLS SNI/certificate check - so a DNS answer that
  changes between check and connect (DNS rebinding) cannot redirect us. A fresh client per hop
  means no pooled connection (whose certificate was checked for another name) is ever reused.
* Redirects are followed by hand, at most `max_redirects`, and every hop is checked again.
* Env proxies are ignored (`trust_env=False`): a proxy would do its own resolution and defeat
  the address check. The body is streamed and abandoned as soon as it passes `max_bytes`; the
  whole operation, DNS included, runs under one `total_timeout`.

Decoding is equally strict, because the bytes are hostile too: the type is sniffed from magic
bytes (the URL's extension and Content-Type are not trusted), only the sniffed format's Pillow
plugin is tried, the pixel count is checked from the header before any pixel is decoded
(decompression bombs), and truncation is detected structurally - independently of Pillow's
process-global `ImageFile.LOAD_TRUNCATED_IMAGES` - so a half-downloaded file is an error, never
a half-grey frame.

Errors are `ImageInputError`, whose message is safe to show the client: it names the field and
says what was wrong, without revealing what *our* resolver thinks internal names resolve to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import ipaddress
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from reelserve import __version__

try:  # Pillow is normally built with LittleCMS; colour management is a nicety, not a must.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None  # type: ignore[assignment]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MIB = 1024 * 1024
DEFAULT_MAX_BYTES = 20 * MIB
"""Same limit as the submit-time syntactic check of data URLs (`domain.spec.MAX_IMAGE_BYTES`)."""
DEFAULT_MAX_PIXELS = 40_000_000
"""40 MP: above any phone camera, far below what would exhaust memory (about 120 MB as RGB)."""

FILL_COLOUR = (0, 0, 0)
"""Black: the colour of `pad` bars and of transparent pixels once flattened. One colour for both
keeps a transparent logo on a letterboxed frame seamless, and black bars are what video players
show anyway."""

SUPPORTED_MIMES = ("image/jpeg", "image/png", "image/webp")
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_FORMAT_NAMES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DATA_URL_RE = re.compile(
    r"^data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*?);base64,(?P<payload>.*)$",
    re.DOTALL | re.IGNORECASE,
)
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IPV4_NUMBER_RE = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


class ImageInputError(Exception):
    """An image input is unusable: refused address, failed fetch, not an image, too large...

    `message` is client-safe and starts with the field name; `param` is that field
    (`first_frame_image` / `last_frame_image`). At submit the API turns it into a 400
    `invalid_request_error` with this `param`; in the worker it fails the task with error code
    `invalid_image`.
    """

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AddressRefused(ImageInputError):
    """The host resolves to an address the policy does not allow: a permanent refusal, unlike a
    failed lookup or connection (webhook delivery retries those, never this)."""


@dataclass(frozen=True)
class FetchPolicy:
    """What image fetching may reach and how much it may take. Build one from settings.

    `allow_hosts` are host names (exact, case-insensitive; `*.example.com` matches subdomains)
    that may resolve to non-public addresses, e.g. an internal image store; IP literals in URLs
    are governed by `allow_networks` only. `allow_networks` are
    CIDRs likewise allowed (e.g. `"127.0.0.0/8"` in tests). Allowing never makes unspecified
    (0.0.0.0, ::), broadcast or multicast addresses fetchable: nothing legitimate serves there.
    `resolve_overrides` pins host names to IP literals without DNS (like `curl --resolve`); the
    pinned address is checked like any other. `ssl_context` replaces the default trust store
    (certifi, via httpx) for https, e.g. for a private CA.
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
class _Target:
    """One checked hop: where to connect and what to tell the server and TLS."""

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


def _refusal(where: str, label: str, shown: str | None, param: str) -> ImageInputError:
    detail = f" ({shown})" if shown else ""
    return AddressRefused(
        f"{where} resolves to {_article(label)} {label} address{detail}, which is not allowed",
        param,
    )


def _unparsable(url: str, param: str, policy: FetchPolicy, *, redirect: bool) -> ImageInputError:
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
        return ImageInputError(f"{where} must be written as {v4}", param)
    if redirect:
        return ImageInputError(f"{param} redirected to an invalid URL", param)
    return ImageInputError(f"{param} must be a valid http(s) URL", param)


def _parse_http_url(
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
            raise ImageInputError(
                f'{what} a URL with scheme "{shown}"; only http and https are fetched', param
            )
        raise ImageInputError(
            f"{what} an http(s) URL or a data:image/...;base64, URL (got scheme {shown})", param
        )
    if not parsed.raw_host:
        raise ImageInputError(f"{param} URL has no host", param)
    if parsed.userinfo:
        raise ImageInputError(f"{param} URL must not contain credentials (user@host)", param)
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
            raise ImageInputError(
                f"{where} is an IPv6 address with a zone, which is not allowed", param
            )
        try:
            return (ipaddress.IPv6Address(host),), True
        except ValueError:
            raise ImageInputError(f"{where} is not a valid IPv6 address", param) from None
    try:
        v4 = _parse_ipv4_like(host)
    except ValueError:
        raise ImageInputError(f"{where} is not a valid IPv4 address or host name", param) from None
    if v4 is not None:
        return (v4,), True
    name = _normalise_name(host)
    if len(name) > 253 or not _HOSTNAME_RE.match(name):
        raise ImageInputError(f"{where} is not a valid host name", param)
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
        raise ImageInputError(f"{where} could not be resolved", param) from None
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
        raise ImageInputError(f"{where} could not be resolved", param)
    return tuple(addresses), False


async def _check_url(url: httpx.URL, param: str, policy: FetchPolicy, *, hop: int) -> _Target:
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
    return _Target(url, scheme, host, literal, port, connect)


# --------------------------------------------------------------------------------------------
# data: URLs and content sniffing


def _is_data_url(source: str) -> bool:
    return source[:5].lower() == "data:"


def _decode_data_url(source: str, param: str, max_bytes: int) -> bytes:
    match = _DATA_URL_RE.match(source)
    if match is None:
        raise ImageInputError(
            f"{param} must be a data:image/...;base64, URL (got a malformed data URL)", param
        )
    payload = match.group("payload")
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise ImageInputError(f"{param} must be at most {_size(max_bytes)}", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(
            f"{param} must be a data URL with valid base64 (got invalid base64)", param
        ) from None
    if len(data) > max_bytes:
        raise ImageInputError(f"{param} must be at most {_size(max_bytes)}", param)
    return data


def sniff_mime(data: bytes) -> str | None:
    """`image/jpeg`, `image/png` or `image/webp` from the magic bytes, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _looks_like(data: bytes) -> str:
    """A short description of unsupported content, so the client learns what it sent."""
    head = data[:512]
    if not head:
        return "no data"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"BM"):
        return "a BMP image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if head[4:8] == b"ftyp":
        return "an ISO media file (HEIC, AVIF or video)"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG image"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML document"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if text.startswith(b"<"):
        return "markup"
    return "unrecognised data"


def _require_supported(data: bytes, param: str, origin: str) -> str:
    mime = sniff_mime(data)
    if mime is None:
        raise ImageInputError(
            f"{param} must be a JPEG, PNG or WebP image ({origin} {_looks_like(data)})", param
        )
    return mime


def _size(n: int) -> str:
    return f"{n / MIB:g} MB" if n >= MIB else f"{n} bytes"


# --------------------------------------------------------------------------------------------
# Submit-time check and fetching


async def check_image_source(source: str, param: str, policy: FetchPolicy) -> None:
    """Everything about an image input that can be known without downloading it.

    For data URLs: decodes them and checks size, type (magic bytes) and pixel count from the
    header. For http(s): scheme, credentials, and that the host resolves to allowed addresses
    only. Raises `ImageInputError` (a 400 at submit). The fetch itself, and redirects, are
    checked again by `fetch_image`, because DNS and servers can change their answers.
    """
    if _is_data_url(source):
        await asyncio.to_thread(_check_data_url, source, param, policy)
        return
    url = _parse_http_url(source, param, policy, redirect=False)
    try:
        async with asyncio.timeout(policy.total_timeout):
            await _check_url(url, param, policy, hop=0)
    except TimeoutError:
        raise ImageInputError(f"{param} host could not be resolved in time", param) from None


def _check_data_url(source: str, param: str, policy: FetchPolicy) -> None:
    data = _decode_data_url(source, param, policy.max_bytes)
    mime = _require_supported(data, param, "the data URL contains")
    _check_complete(data, mime, param)
    _check_header(data, mime, param, policy.max_pixels)


async def fetch_image(source: str, param: str, policy: FetchPolicy) -> tuple[bytes, str]:
    """The image's bytes and MIME type (sniffed: image/jpeg, image/png or image/webp).

    Does not decode pixels; `decode_image` does (and re-checks everything it relies on).
    """
    if _is_data_url(source):
        data = await asyncio.to_thread(_decode_data_url, source, param, policy.max_bytes)
        return data, _require_supported(data, param, "the data URL contains")
    url = _parse_http_url(source, param, policy, redirect=False)
    try:
        async with asyncio.timeout(policy.total_timeout):
            return await _fetch_http(url, param, policy)
    except TimeoutError:
        raise ImageInputError(
            f"{param} could not be fetched within {policy.total_timeout:g} seconds", param
        ) from None


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi) context, built once: loading the bundle per request is slow."""
    return httpx.create_ssl_context()


async def _fetch_http(url: httpx.URL, param: str, policy: FetchPolicy) -> tuple[bytes, str]:
    for hop in range(policy.max_redirects + 1):
        target = await _check_url(url, param, policy, hop=hop)
        result = await _request(target, param, policy)
        if isinstance(result, httpx.URL):
            url = _parse_http_url(result, param, policy, redirect=True)
            continue
        return result
    raise ImageInputError(f"{param} URL redirected more than {policy.max_redirects} times", param)


async def _request(
    target: _Target, param: str, policy: FetchPolicy
) -> tuple[bytes, str] | httpx.URL:
    """GET the target from its checked addresses in turn; the image, or where it redirects."""
    failure = "could not connect"
    for address in target.addresses:
        try:
            return await _request_from(target, address, param, policy)
        except httpx.ConnectError as exc:
            if "certificate" in str(exc).lower():
                failure = "its TLS certificate could not be verified"
            continue
        except httpx.TimeoutException:
            raise ImageInputError(
                f"{param} could not be fetched within {policy.total_timeout:g} seconds", param
            ) from None
        except httpx.HTTPError as exc:
            raise ImageInputError(
                f'{param} could not be fetched from "{target.host}" ({type(exc).__name__})',
                param,
            ) from None
    raise ImageInputError(f'{param} could not be fetched from "{target.host}": {failure}', param)


async def _request_from(
    target: _Target, address: IPAddress, param: str, policy: FetchPolicy
) -> tuple[bytes, str] | httpx.URL:
    """One GET of `target` from `address`, straight through an httpx transport.

    The checked IP goes into the URL, so nothing resolves the name again; the name goes into
    Host and (for https) into SNI and the certificate check. A bare transport rather than a
    client: no env proxies or redirect machinery can get involved (httpx's client even parses
    Location headers it is not asked to follow), and no connection outlives this hop.
    """
    request_url = target.url.copy_with(host=str(address), fragment=None)
    headers = {
        "Host": target.host_header,
        "User-Agent": policy.user_agent,
        "Accept": "image/png, image/jpeg, image/webp",
        # Compressed transfer would let a small body expand in memory before our size check.
        "Accept-Encoding": "identity",
    }
    extensions: dict[str, object] = {"timeout": httpx.Timeout(policy.total_timeout).as_dict()}
    if target.scheme == "https" and not target.is_literal:
        extensions["sni_hostname"] = target.host
    transport = httpx.AsyncHTTPTransport(
        verify=policy.ssl_context or _default_ssl_context(),
        trust_env=False,
        retries=0,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )
    async with transport:
        request = httpx.Request("GET", request_url, headers=headers, extensions=extensions)
        response = await transport.handle_async_request(request)
        try:
            return await _read_response(response, target, param, policy)
        finally:
            await response.aclose()


async def _read_response(
    response: httpx.Response, target: _Target, param: str, policy: FetchPolicy
) -> tuple[bytes, str] | httpx.URL:
    status = response.status_code
    if status in _REDIRECT_STATUSES:
        location = response.headers.get("location")
        if not location:
            raise ImageInputError(
                f"{param} URL answered HTTP {status} without a Location to redirect to", param
            )
        try:
            return target.url.join(location).copy_with(fragment=None)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise _unparsable(location, param, policy, redirect=True) from None
    if not 200 <= status < 300:
        reason = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise ImageInputError(
            f"{param} URL returned HTTP {status}{reason}; it must return the image (2xx)", param
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ImageInputError(
            f"{param} URL sent the image with Content-Encoding {encoding}; "
            "it must be sent uncompressed",
            param,
        )
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise ImageInputError(
            f"{param} is {_size(int(length))}; the limit is {_size(policy.max_bytes)}", param
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > policy.max_bytes:
            raise ImageInputError(
                f"{param} is larger than the limit of {_size(policy.max_bytes)}", param
            )
    data = bytes(body)
    return data, _require_supported(data, param, "the URL returned")


# --------------------------------------------------------------------------------------------
# Decoding


def _truncated(param: str, kind: str) -> ImageInputError:
    return ImageInputError(f"{param} is a truncated or damaged {kind} file", param)


def _check_complete(data: bytes, mime: str, param: str) -> None:
    """Refuse files that end early, by walking their structure to the end marker.

    Pillow refuses truncated files only while the process-global `LOAD_TRUNCATED_IMAGES` is
    False, and any library in the process may set it; this check does not depend on it.
    """
    n = len(data)
    if mime == "image/png":
        pos = 8
        while True:
            if pos + 12 > n:
                raise _truncated(param, "PNG")
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = data[pos + 4 : pos + 8]
            pos += 12 + length
            if pos > n:
                raise _truncated(param, "PNG")
            if kind == b"IEND":
                return
    elif mime == "image/webp":
        riff_size = int.from_bytes(data[4:8], "little")
        if riff_size < 4 or n < 8 + riff_size:
            raise _truncated(param, "WebP")
    else:
        _check_jpeg_complete(data, param)


def _check_jpeg_complete(data: bytes, param: str) -> None:
    """Walk JPEG segments (skipping entropy-coded scan data) until EOI.

    Data after the first EOI (e.g. a Motion Photo's video) is ignored; an EXIF thumbnail's EOI
    lives inside its APP1 segment and is skipped with it.
    """
    n = len(data)
    pos = 2
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            raise _truncated(param, "JPEG")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _truncated(param, "JPEG")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            return
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if pos + 2 > n:
            raise _truncated(param, "JPEG")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            raise _truncated(param, "JPEG")
        pos += length
        if pos > n:
            raise _truncated(param, "JPEG")
        if marker == 0xDA:  # SOS: scan data runs to the next marker that is not 00 or RSTn
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    raise _truncated(param, "JPEG")
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break


def _open(data: bytes, mime: str, param: str, max_pixels: int) -> Image.Image:
    """Open (header only) with the sniffed format's plugin alone, and refuse too many pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[mime]])
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, None, max_pixels) from None
    except MemoryError:
        raise
    except Exception:
        raise ImageInputError(
            f"{param} is not a readable {_FORMAT_NAMES[mime]} image", param
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageInputError(f"{param} has no pixels", param)
    if width * height > max_pixels:
        image.close()
        raise _too_many_pixels(param, (width, height), max_pixels)
    return image


def _too_many_pixels(param: str, size: tuple[int, int] | None, max_pixels: int) -> ImageInputError:
    limit = f"the limit is {max_pixels / 1e6:g} megapixels"
    if size is None:
        return ImageInputError(f"{param} has too many pixels; {limit}", param)
    width, height = size
    return ImageInputError(
        f"{param} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); {limit}",
        param,
    )


def _check_header(data: bytes, mime: str, param: str, max_pixels: int) -> None:
    _open(data, mime, param, max_pixels).close()


def decode_image(data: bytes, param: str, *, max_pixels: int) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes into a fully loaded, upright RGB image.

    Checks, in order of cost: magic bytes, structural completeness, pixel count from the header
    (before any pixel is decoded), then decodes. EXIF orientation is applied, embedded ICC
    profiles are converted to sRGB where Pillow has LittleCMS, 16-bit greyscale is scaled (not
    clipped) to 8 bits, and transparency is flattened onto black (`FILL_COLOUR`). Blocking and
    CPU-bound: call it in a thread. Animated images give their first frame.
    """
    mime = _require_supported(data, param, "got")
    _check_complete(data, mime, param)
    image = _open(data, mime, param, max_pixels)
    try:
        with image:
            image.load()
            return _to_rgb(image)
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, image.size, max_pixels) from None
    except MemoryError:
        raise
    except Exception:
        raise _truncated(param, _FORMAT_NAMES[mime]) from None


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    assert ImageCms is not None
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _apply_icc(image: Image.Image) -> Image.Image:
    """Convert from the embedded ICC profile to sRGB (e.g. Display P3 photos from phones).

    Best effort: a missing LittleCMS or a broken profile leaves the pixels as they are, which is
    what every viewer without colour management shows anyway.
    """
    icc = image.info.get("icc_profile")
    if not icc or ImageCms is None or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(
            image,
            source,
            _srgb_profile(),
            outputMode=output,
        )
    except Exception:
        return image
    return converted if converted is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: keep the stored orientation rather than fail
        upright = image
    if upright is None:  # pragma: no cover - only with in_place=True
        upright = image
    if upright.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale PNG: Pillow's convert() clips at 255, turning most of it white.
        values = np.asarray(upright).astype(np.uint32)
        upright = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    upright = _apply_icc(upright)
    has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in upright.info
    )
    if has_alpha:
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, FILL_COLOUR)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    result = upright.convert("RGB") if upright.mode != "RGB" else upright
    # `image` is closed by the caller, which frees its pixels: never hand it out itself.
    return result.copy() if result is image else result


async def load_input_image(
    source: str, param: str, policy: FetchPolicy
) -> tuple[bytes, str, Image.Image]:
    """Fetch and decode (in a thread): the original bytes, their MIME type and the RGB image."""
    data, mime = await fetch_image(source, param, policy)
    image = await asyncio.to_thread(decode_image, data, param, max_pixels=policy.max_pixels)
    return data, mime, image


# --------------------------------------------------------------------------------------------
# Fitting


def fit_image(
    image: Image.Image, width: int, height: int, mode: Literal["pad", "crop"]
) -> NDArray[np.uint8]:
    """Fit `image` to exactly `width`x`height` without distorting it; an HxWx3 uint8 array.

    `pad` scales the whole image to fit inside and centres it on black bars (letterbox or
    pillarbox); `crop` scales it to cover the frame and cuts the overflow equally from both
    sides. Lanczos with `reducing_gap` keeps large downscales sharp and fast.
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive (got {width}x{height})")
    if mode not in ("pad", "crop"):
        raise ValueError(f'mode must be "pad" or "crop" (got {mode!r})')
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    src_w, src_h = rgb.size
    if (src_w, src_h) == (width, height):
        return np.array(rgb, dtype=np.uint8)
    resample = Image.Resampling.LANCZOS
    if mode == "crop":
        # The largest centred box of the output's aspect ratio, resized straight to the output.
        if src_w * height > width * src_h:  # source wider than the frame
            box_w, box_h = src_h * width / height, float(src_h)
        else:
            box_w, box_h = float(src_w), src_w * height / width
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        fitted = rgb.resize(
            (width, height),
            resample,
            box=(left, top, left + box_w, top + box_h),
            reducing_gap=3.0,
        )
        return np.array(fitted, dtype=np.uint8)
    scale = min(width / src_w, height / src_h)
    new_w = min(width, max(1, round(src_w * scale)))
    new_h = min(height, max(1, round(src_h * scale)))
    scaled = rgb.resize((new_w, new_h), resample, reducing_gap=3.0)
    canvas = Image.new("RGB", (width, height), FILL_COLOUR)
    canvas.paste(scaled, ((width - new_w) // 2, (height - new_h) // 2))
    return np.array(canvas, dtype=np.uint8)
