"""Input images: the SSRF guard, strict decoding and pad/crop fitting (`reelserve.media.images`).

Network safety of the tests themselves: the autouse `loopback_only` fixture wraps
`socket.socket.connect` and `socket.getaddrinfo` for every test here, so even if the guard under
test were broken, nothing could leave the machine: connections go to loopback only and no DNS
query is ever made. Loopback cases run end to end against a local "canary" HTTP server that
must see no request when the policy does not allow loopback. Private, link-local and other
ranges are reached only through `resolve_overrides` names (the refusal happens before any
connection, which the fixture's record of connection attempts shows) or through the submit-time
check, which never connects.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import http.server
import io
import ipaddress
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image, ImageFile

from reelserve.media.images import (
    FetchPolicy,
    ImageInputError,
    check_image_source,
    decode_image,
    fetch_image,
    fit_image,
    load_input_image,
    sniff_mime,
)
from reelserve.net.guard import AddressRefused, OutboundError, check_destination

PARAM = "first_frame_image"
LOOPBACK = FetchPolicy(allow_networks=("127.0.0.0/8",), total_timeout=5.0)
STRICT = FetchPolicy(total_timeout=5.0)


# --------------------------------------------------------------------------------------------
# Safety net: loopback only, no DNS


def _is_ip(host: object) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse every non-loopback connection and every DNS lookup; record connection attempts."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True
        attempts.append(address)
        return ipaddress.ip_address(str(address[0]).split("%", 1)[0]).is_loopback

    def connect(self: socket.socket, address: Any) -> None:
        if not allowed(self, address):
            raise OSError(errno.ENETUNREACH, f"test guard: refusing to connect to {address}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not allowed(self, address):
            return errno.ENETUNREACH
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is None or _is_ip(host):
            return real_getaddrinfo(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: no DNS lookups ({host!r})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def fake_resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Stand in for the system resolver (what `loop.getaddrinfo` calls in its thread)."""
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        results = []
        for address in answers[host]:
            if ":" in address:
                results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return results

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


# --------------------------------------------------------------------------------------------
# The canary: a local HTTP server that records every request


Route = Callable[["_Handler"], None]


@dataclass
class Canary:
    port: int
    scheme: str = "http"
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    canary: Canary

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-response (as the fetcher does past max_bytes) is expected.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        canary = self.server.canary
        canary.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = canary.routes.get(self.path)
        try:
            if route is None:
                respond(b"not found", "text/plain", status=404)(self)
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


def respond(
    body: bytes,
    content_type: str = "application/octet-stream",
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    length: bool = True,
) -> Route:
    def route(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if length:
            handler.send_header("Content-Length", str(len(body)))
        else:  # the body runs until the connection closes
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        handler.wfile.write(body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    return respond(b"", "text/plain", status=status, headers={"Location": location})


def stream_forever(chunk_size: int = 64 * 1024, total: int = 50 * 1024 * 1024) -> Route:
    """A body with no Content-Length, far larger than any limit: only the client can stop it."""

    def route(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Connection", "close")
        handler.close_connection = True
        handler.end_headers()
        chunk = b"\x89PNG\r\n\x1a\n" + b"\x00" * (chunk_size - 8)
        for _ in range(total // chunk_size):
            handler.wfile.write(chunk)

    return route


def trickle(data: bytes, delay: float = 0.1) -> Route:
    """Headers at once, then one byte per `delay`: every read is quick, the whole is not."""

    def route(handler: _Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for index in range(len(data)):
            handler.wfile.write(data[index : index + 1])
            handler.wfile.flush()
            time.sleep(delay)

    return route


def _start(ssl_context: ssl.SSLContext | None = None) -> tuple[_Server, Canary]:
    server = _Server(("127.0.0.1", 0), _Handler)
    canary = Canary(port=server.server_address[1], scheme="https" if ssl_context else "http")
    server.canary = canary
    if ssl_context is not None:

        def record_sni(sock: Any, name: str | None, context: Any) -> None:
            canary.sni.append(name)

        ssl_context.sni_callback = record_sni
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server, canary


@pytest.fixture
def canary() -> Iterator[Canary]:
    server, canary = _start()
    canary.routes["/img.png"] = respond(png_bytes(), "image/png")
    yield canary
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------------
# Image makers


def _gradient(size: tuple[int, int]) -> Image.Image:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8), "RGB")


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    _gradient(size).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 48), **options: Any) -> bytes:
    buffer = io.BytesIO()
    _gradient(size).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def webp_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    _gradient(size).save(buffer, "WEBP", quality=90)
    return buffer.getvalue()


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    _gradient((16, 16)).convert("P").save(buffer, "GIF")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A structurally complete 1-bit greyscale PNG claiming `width`x`height` pixels.

    With `rows=None` every row is present (a real, valid image of zeros, which zlib squeezes
    into a few KB); otherwise only the first `rows` rows are (a header that lies cheaply).
    """
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height if rows is None else rows)]
    idat = b"".join(parts) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def refused(source: str, policy: FetchPolicy = STRICT) -> str:
    """Both the submit check and the fetch refuse `source`; the (shared) reason."""
    with pytest.raises(ImageInputError) as checked:
        await check_image_source(source, PARAM, policy)
    with pytest.raises(ImageInputError) as fetched:
        await fetch_image(source, PARAM, policy)
    for error in (checked.value, fetched.value):
        assert error.param == PARAM
        assert error.message == str(error)
        assert error.message.startswith(PARAM)
    assert checked.value.message == fetched.value.message
    return checked.value.message


# --------------------------------------------------------------------------------------------
# SSRF: loopback in every spelling, end to end against the canary


LOOPBACK_SPELLINGS = [
    ("127.0.0.1", "loopback address (127.0.0.1)"),
    ("127.0.0.1.", "loopback address (127.0.0.1)"),
    ("localhost", "loopback address, which"),
    ("LocalHost.", "loopback address, which"),
    ("foo.localhost", "loopback address, which"),
    ("[::1]", "loopback address (::1)"),
    ("0.0.0.0", "unspecified address (0.0.0.0)"),
    ("0", "unspecified address (0.0.0.0)"),
    ("[::]", "unspecified address (::)"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped loopback address (::ffff:127.0.0.1)"),
    ("[::ffff:7f00:1]", "IPv4-mapped loopback address (::ffff:127.0.0.1)"),
    ("2130706433", "loopback address (127.0.0.1)"),
    ("0177.0.0.1", "loopback address (127.0.0.1)"),
    ("0x7f000001", "loopback address (127.0.0.1)"),
    ("0x7f.0.0.1", "loopback address (127.0.0.1)"),
    ("0X7F.1", "loopback address (127.0.0.1)"),
    ("127.1", "loopback address (127.0.0.1)"),
    ("127.0.1", "loopback address (127.0.0.1)"),
    ("017700000001", "loopback address (127.0.0.1)"),
]


@pytest.mark.parametrize(("host", "expected"), LOOPBACK_SPELLINGS)
async def test_loopback_spellings_are_refused_and_nothing_is_sent(
    canary: Canary, loopback_only: list[Any], host: str, expected: str
) -> None:
    message = await refused(canary.url("/img.png", host=host))
    assert expected in message
    assert message.endswith("which is not allowed")
    assert canary.requests == []
    assert loopback_only == []


async def test_refusal_message_reads_well() -> None:
    message = await refused("http://2130706433/x.png")
    assert message == (
        'first_frame_image host "2130706433" resolves to a loopback address (127.0.0.1), '
        "which is not allowed"
    )


async def test_name_overridden_to_loopback_is_refused(
    canary: Canary, loopback_only: list[Any]
) -> None:
    policy = FetchPolicy(resolve_overrides={"canary.test": "127.0.0.1"}, total_timeout=5.0)
    message = await refused(canary.url("/img.png", host="canary.test"), policy)
    # What our resolver thinks a name resolves to is not told to the client.
    assert message == (
        'first_frame_image host "canary.test" resolves to a loopback address, which is not allowed'
    )
    assert canary.requests == []
    assert loopback_only == []


# --------------------------------------------------------------------------------------------
# SSRF: other ranges, never connected to


NON_PUBLIC = [
    ("10.0.0.5", "private"),
    ("10.255.255.254", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "shared (carrier-grade NAT)"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.2.10", "documentation"),
    ("203.0.113.7", "documentation"),
    ("224.0.0.251", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("0.1.2.3", "reserved"),
    ("192.0.0.9", "reserved"),
    ("fd00::1", "private"),
    ("fc00::1", "private"),
    ("fec0::1", "private"),
    ("fe80::1", "link-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("::8.8.8.8", "reserved"),
    ("2002:a00:1::1", "6to4 private"),
    ("2002:7f00:1::1", "6to4 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b:1::a00:1", "private (local-use NAT64)"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "Teredo private"),  # client 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo documentation"),
    ("100::1", "reserved"),
]


@pytest.mark.parametrize(("address", "label"), NON_PUBLIC)
async def test_names_resolving_to_non_public_ranges_are_refused_before_connecting(
    loopback_only: list[Any], address: str, label: str
) -> None:
    policy = FetchPolicy(resolve_overrides={"target.test": address}, total_timeout=5.0)
    message = await refused("http://target.test/img.png", policy)
    assert f"resolves to {'an' if label[0] in 'aeiouIA' else 'a'} {label} address," in message
    assert address not in message
    assert loopback_only == []


@pytest.mark.parametrize(
    ("url", "shown", "label"),
    [
        ("http://10.0.0.5/", "10.0.0.5", "private"),
        ("http://172.16.0.1/", "172.16.0.1", "private"),
        ("http://192.168.0.1:8080/", "192.168.0.1", "private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "link-local"),
        ("http://0xa9fea9fe/", "169.254.169.254", "link-local"),
        ("http://[fd00::1]/", "fd00::1", "private"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("http://[::ffff:192.168.0.1]/", "::ffff:192.168.0.1", "IPv4-mapped private"),
        ("http://100.64.0.1/", "100.64.0.1", "shared (carrier-grade NAT)"),
    ],
)
async def test_literal_non_public_addresses_are_refused_at_submit(
    loopback_only: list[Any], url: str, shown: str, label: str
) -> None:
    # The submit check never connects, so literal private addresses are safe to try here.
    with pytest.raises(ImageInputError) as info:
        await check_image_source(url, PARAM, STRICT)
    assert f"{label} address ({shown}), which is not allowed" in info.value.message
    assert loopback_only == []


async def test_a_refused_image_is_an_image_error_and_a_refused_destination_the_guards() -> None:
    """The image checks raise `ImageInputError` only, never the guard's `OutboundError` (which
    webhook code catches); the guard checks a destination such as a webhook URL on its own."""
    with pytest.raises(ImageInputError) as image:
        await check_image_source("http://10.0.0.5/cat.png", PARAM, STRICT)
    assert not isinstance(image.value, OutboundError)
    with pytest.raises(AddressRefused) as refused:
        await check_destination("http://10.0.0.5/hook", "webhook_url", STRICT)
    assert not isinstance(refused.value, ImageInputError)
    assert refused.value.param == "webhook_url"
    assert refused.value.message == (
        'webhook_url host "10.0.0.5" resolves to a private address (10.0.0.5), which is not allowed'
    )
    with pytest.raises(OutboundError) as invalid:
        await check_destination("http://user:pw@8.8.8.8/hook", "webhook_url", STRICT)
    assert invalid.value.message == "webhook_url URL must not contain credentials (user@host)"
    target = await check_destination("http://8.8.8.8:8080/hook", "webhook_url", STRICT)
    assert (target.host, target.port, target.addresses) == (
        "8.8.8.8",
        8080,
        (ipaddress.IPv4Address("8.8.8.8"),),
    )


async def test_message_for_a_private_literal() -> None:
    with pytest.raises(ImageInputError) as info:
        await check_image_source("http://10.0.0.5/cat.png", PARAM, STRICT)
    assert info.value.message == (
        'first_frame_image host "10.0.0.5" resolves to a private address (10.0.0.5), '
        "which is not allowed"
    )


async def test_every_resolved_address_must_be_public(
    monkeypatch: pytest.MonkeyPatch, loopback_only: list[Any]
) -> None:
    asked = fake_resolver(
        monkeypatch,
        {
            "mixed.example": ["8.8.8.8", "10.0.0.1"],
            "mixed6.example": ["2606:4700:4700::1111", "fd00::1"],
            "public.example": ["8.8.8.8", "2606:4700:4700::1111"],
        },
    )
    for host, label in (("mixed.example", "private"), ("mixed6.example", "private")):
        with pytest.raises(ImageInputError) as info:
            await check_image_source(f"https://{host}/a.png", PARAM, STRICT)
        assert f'host "{host}" resolves to a {label} address, which is not allowed' in str(
            info.value
        )
    await check_image_source("https://public.example/a.png", PARAM, STRICT)
    with pytest.raises(ImageInputError, match="could not be resolved"):
        await check_image_source("https://nowhere.example/a.png", PARAM, STRICT)
    assert asked == ["mixed.example", "mixed6.example", "public.example", "nowhere.example"]
    assert loopback_only == []


async def test_public_addresses_pass_the_submit_check(loopback_only: list[Any]) -> None:
    overrides = {
        "v4.test": "93.184.215.14",
        "v6.test": "2606:4700:4700::1111",
        "nat64.test": "64:ff9b::808:808",
        "6to4.test": "2002:808:808::1",
        "mapped.test": "::ffff:8.8.8.8",
    }
    policy = FetchPolicy(resolve_overrides=overrides, total_timeout=5.0)
    for host in overrides:
        await check_image_source(f"https://{host}/a.png", PARAM, policy)
    await check_image_source("http://8.8.8.8/a.png", PARAM, policy)
    assert loopback_only == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "ftp://127.0.0.1:{port}/img.png",
        "gopher://127.0.0.1:{port}/_GET%20/img.png",
        "dict://127.0.0.1:{port}/",
        "javascript:alert(1)",
        "//127.0.0.1:{port}/img.png",
    ],
)
async def test_other_schemes_are_refused(canary: Canary, url: str) -> None:
    message = await refused(url.format(port=canary.port))
    assert "must be an http(s) URL or a data:image/...;base64, URL" in message
    assert canary.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://user:pass@127.0.0.1:{port}/img.png", "http://images.test@127.0.0.1:{port}/img.png"],
)
async def test_credentials_in_urls_are_refused(canary: Canary, url: str) -> None:
    message = await refused(url.format(port=canary.port), LOOPBACK)
    assert "must not contain credentials" in message
    assert canary.requests == []


async def test_octal_spelling_of_a_public_address_is_refused_as_ambiguous() -> None:
    # httpx will not parse it, the OS would read it as 8.8.8.8: ask for the unambiguous form.
    message = await refused("http://010.8.8.8/img.png")
    assert message == 'first_frame_image host "010.8.8.8" must be written as 8.8.8.8'


async def test_ipv4_mapped_literal_connects_to_the_ipv4_address(canary: Canary) -> None:
    url = canary.url("/img.png", host="[::ffff:127.0.0.1]")
    assert (await fetch_image(url, PARAM, LOOPBACK))[1] == "image/png"
    assert canary.paths == ["/img.png"]


@pytest.mark.parametrize(
    "host", ["1.2.3.999", "08.0.0.1", "example.123", "1.2.3.4.5", "0x1ffffffff", "a..b"]
)
async def test_ambiguous_numeric_or_malformed_hosts_are_refused(host: str) -> None:
    message = await refused(f"http://{host}/img.png")
    assert "valid" in message


# --------------------------------------------------------------------------------------------
# Redirects


async def test_redirect_from_allowed_host_to_forbidden_ones_is_refused(
    canary: Canary, loopback_only: list[Any]
) -> None:
    canary.routes["/secret.png"] = respond(png_bytes(), "image/png")
    canary.routes["/to-loopback"] = redirect(canary.url("/secret.png"))
    canary.routes["/to-decimal"] = redirect(f"http://2130706433:{canary.port}/secret.png")
    canary.routes["/to-octal"] = redirect(f"http://0177.0.0.1:{canary.port}/secret.png")
    canary.routes["/to-private"] = redirect("http://private.test/secret.png")
    canary.routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data/", 307)
    canary.routes["/to-file"] = redirect("file:///etc/passwd", 301)
    canary.routes["/to-gopher"] = redirect(f"gopher://127.0.0.1:{canary.port}/_x", 308)
    policy = FetchPolicy(
        allow_hosts=("images.test",),
        resolve_overrides={"images.test": "127.0.0.1", "private.test": "10.1.2.3"},
        total_timeout=5.0,
    )
    # The allowed host itself may be fetched...
    _data, mime = await fetch_image(canary.url("/img.png", "images.test"), PARAM, policy)
    assert mime == "image/png"
    expected = {
        "/to-loopback": 'redirect target host "127.0.0.1" resolves to a loopback address',
        "/to-decimal": 'redirect target host "2130706433" resolves to a loopback address',
        "/to-octal": 'target host "0177.0.0.1" resolves to a loopback address (127.0.0.1)',
        "/to-private": 'redirect target host "private.test" resolves to a private address',
        "/to-metadata": 'redirect target host "169.254.169.254" resolves to a link-local',
        "/to-file": 'redirected to a URL with scheme "file"',
        "/to-gopher": 'redirected to a URL with scheme "gopher"',
    }
    for path, fragment in expected.items():
        with pytest.raises(ImageInputError) as info:
            await fetch_image(canary.url(path, "images.test"), PARAM, policy)
        assert fragment in info.value.message, info.value.message
    # ...but none of the forbidden targets was ever requested or even connected to.
    assert "/secret.png" not in canary.paths
    assert sorted(canary.paths) == sorted(["/img.png", *expected])
    assert {address[0] for address in loopback_only} == {"127.0.0.1"}


async def test_redirects_are_followed_and_rechecked_up_to_the_limit(canary: Canary) -> None:
    png = png_bytes()
    canary.routes["/a"] = redirect("/b", 301)
    canary.routes["/b"] = redirect(canary.url("/c", "second.test"), 303)
    canary.routes["/c"] = respond(png, "image/png")
    canary.routes["/loop"] = redirect("/loop")
    policy = FetchPolicy(
        allow_networks=("127.0.0.0/8",),
        resolve_overrides={"second.test": "127.0.0.1"},
        max_redirects=3,
        total_timeout=5.0,
    )
    assert await fetch_image(canary.url("/a"), PARAM, policy) == (png, "image/png")
    # The second hop went to the pinned address with the new name in Host.
    assert canary.requests[-1][1]["host"] == f"second.test:{canary.port}"

    canary.requests.clear()
    with pytest.raises(ImageInputError, match="redirected more than 3 times"):
        await fetch_image(canary.url("/loop"), PARAM, policy)
    assert canary.paths == ["/loop"] * 4


# --------------------------------------------------------------------------------------------
# Allowed fetches


@pytest.mark.parametrize(
    ("maker", "mime"),
    [(png_bytes, "image/png"), (jpeg_bytes, "image/jpeg"), (webp_bytes, "image/webp")],
)
async def test_allowed_fetch_returns_bytes_and_sniffed_type(
    canary: Canary, maker: Callable[[], bytes], mime: str
) -> None:
    body = maker()
    canary.routes["/image"] = respond(body, "application/octet-stream")
    data, got = await fetch_image(canary.url("/image"), PARAM, LOOPBACK)
    assert (data, got) == (body, mime)
    headers = canary.requests[0][1]
    assert headers["host"] == f"127.0.0.1:{canary.port}"
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"].startswith("reelserve/")

    data, got, image = await load_input_image(canary.url("/image"), PARAM, LOOPBACK)
    assert image.mode == "RGB"
    assert image.size == (64, 48)


async def test_content_sniffing_beats_content_type_and_extension(canary: Canary) -> None:
    png = png_bytes()
    canary.routes["/photo.jpg"] = respond(png, "image/jpeg")
    canary.routes["/page.png"] = respond(b"<!DOCTYPE html><html>hi</html>", "image/png")
    assert await fetch_image(canary.url("/photo.jpg"), PARAM, LOOPBACK) == (png, "image/png")
    with pytest.raises(ImageInputError) as info:
        await fetch_image(canary.url("/page.png"), PARAM, LOOPBACK)
    assert info.value.message == (
        "first_frame_image must be a JPEG, PNG or WebP image (the URL returned an HTML document)"
    )


async def test_name_is_pinned_to_the_checked_address(canary: Canary) -> None:
    """httpx never resolves the name (the guard would refuse the lookup): we connect to the IP
    we checked and send the name in Host."""
    policy = FetchPolicy(
        allow_networks=("127.0.0.0/8",),
        resolve_overrides={"images.test": "127.0.0.1"},
        total_timeout=5.0,
    )
    _data, mime = await fetch_image(canary.url("/img.png", "Images.Test"), PARAM, policy)
    assert mime == "image/png"
    assert canary.requests[0][1]["host"] == f"images.test:{canary.port}"


async def test_env_proxies_are_ignored(canary: Canary, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy_server, proxy = _start()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        _data, mime = await fetch_image(canary.url("/img.png"), PARAM, LOOPBACK)
        assert mime == "image/png"
        assert proxy.requests == []
    finally:
        proxy_server.shutdown()
        proxy_server.server_close()


@pytest.mark.parametrize("status", [404, 500, 204])
async def test_non_2xx_and_empty_responses_are_errors(canary: Canary, status: int) -> None:
    canary.routes["/x"] = respond(b"" if status == 204 else b"nope", "text/plain", status=status)
    with pytest.raises(ImageInputError) as info:
        await fetch_image(canary.url("/x"), PARAM, LOOPBACK)
    if status == 204:
        assert "(the URL returned no data)" in info.value.message
    else:
        assert f"URL returned HTTP {status}" in info.value.message


async def test_oversize_with_content_length_is_refused_before_reading(canary: Canary) -> None:
    body = png_bytes() + b"\x00" * 300_000
    canary.routes["/big.png"] = respond(body, "image/png")
    policy = FetchPolicy(allow_networks=("127.0.0.0/8",), max_bytes=100_000, total_timeout=5.0)
    with pytest.raises(ImageInputError) as info:
        await fetch_image(canary.url("/big.png"), PARAM, policy)
    assert info.value.message == (
        f"first_frame_image is {len(body)} bytes; the limit is 100000 bytes"
    )


async def test_oversize_stream_is_abandoned_with_bounded_memory(canary: Canary) -> None:
    canary.routes["/endless.png"] = stream_forever()
    policy = FetchPolicy(allow_networks=("127.0.0.0/8",), max_bytes=1024 * 1024, total_timeout=10.0)
    tracemalloc.start()
    try:
        with pytest.raises(ImageInputError) as info:
            await fetch_image(canary.url("/endless.png"), PARAM, policy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.message == "first_frame_image is larger than the limit of 1 MB"
    assert peak < 8 * 1024 * 1024  # 50 MB were on offer


async def test_whole_fetch_is_bounded_by_total_timeout(canary: Canary) -> None:
    canary.routes["/slow.png"] = trickle(png_bytes())
    policy = FetchPolicy(allow_networks=("127.0.0.0/8",), total_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ImageInputError) as info:
        await fetch_image(canary.url("/slow.png"), PARAM, policy)
    assert time.monotonic() - started < 3
    assert info.value.message == "first_frame_image could not be fetched within 0.5 seconds"


async def test_compressed_transfer_is_refused(canary: Canary) -> None:
    canary.routes["/gz.png"] = respond(
        zlib.compress(png_bytes()), "image/png", headers={"Content-Encoding": "deflate"}
    )
    with pytest.raises(ImageInputError, match="Content-Encoding deflate"):
        await fetch_image(canary.url("/gz.png"), PARAM, LOOPBACK)


@pytest.mark.parametrize(
    ("body", "looks_like"),
    [
        (b"<html><body>login</body></html>", "an HTML document"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG image"),
        (b'{"error": "nope"}', "JSON"),
        (None, "a GIF image"),
        (b"BM" + b"\x00" * 64, "a BMP image"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "an ISO media file (HEIC, AVIF or video)"),
    ],
)
async def test_non_images_are_refused(canary: Canary, body: bytes | None, looks_like: str) -> None:
    canary.routes["/x.png"] = respond(body or gif_bytes(), "image/png")
    with pytest.raises(ImageInputError) as info:
        await fetch_image(canary.url("/x.png"), PARAM, LOOPBACK)
    assert info.value.message.endswith(f"(the URL returned {looks_like})")


# --------------------------------------------------------------------------------------------
# https: SNI and certificate checked against the name, connection to the checked address


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=img.test", "-addext", "subjectAltName=DNS:img.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_uses_the_name_for_sni_and_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server, canary = _start(server_context)
    try:
        png = png_bytes()
        canary.routes["/img.png"] = respond(png, "image/png")
        policy = FetchPolicy(
            allow_networks=("127.0.0.0/8",),
            resolve_overrides={"img.test": "127.0.0.1", "other.test": "127.0.0.1"},
            ssl_context=ssl.create_default_context(cafile=str(cert)),
            total_timeout=5.0,
        )
        assert await fetch_image(canary.url("/img.png", "img.test"), PARAM, policy) == (
            png,
            "image/png",
        )
        assert canary.sni == ["img.test"]
        assert canary.requests[0][1]["host"] == f"img.test:{canary.port}"

        # The same server under a name its certificate does not cover: refused.
        with pytest.raises(ImageInputError) as info:
            await fetch_image(canary.url("/img.png", "other.test"), PARAM, policy)
        assert "TLS certificate could not be verified" in info.value.message
        assert len(canary.requests) == 1
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------
# data: URLs


async def test_data_urls_are_decoded_and_sniffed() -> None:
    png = png_bytes()
    url = data_url(png, "image/jpeg")  # the declared type lies; the bytes decide
    await check_image_source(url, PARAM, STRICT)
    assert await fetch_image(url, PARAM, STRICT) == (png, "image/png")
    _data, mime, image = await load_input_image(url, PARAM, STRICT)
    assert (mime, image.size) == ("image/png", (64, 48))
    assert await fetch_image(data_url(webp_bytes()), PARAM, STRICT) == (
        webp_bytes(),
        "image/webp",
    )


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("data:image/png;base64,!!!!", "valid base64"),
        ("data:image/png,plain", "malformed data URL"),
        (data_url(gif_bytes(), "image/gif"), "(the data URL contains a GIF image)"),
        (data_url(png_bytes() + b"\x00" * 5000), "must be at most 4096 bytes"),
        (data_url(png_bomb(7000, 7000)), "is 7000x7000 pixels (49.0 megapixels)"),
        (data_url(png_bytes()[:-30]), "truncated or damaged PNG"),
    ],
)
async def test_bad_data_urls_are_refused_at_submit(source: str, fragment: str) -> None:
    policy = FetchPolicy(max_bytes=4096) if fragment.startswith("must be at most") else STRICT
    with pytest.raises(ImageInputError) as info:
        await check_image_source(source, PARAM, policy)
    assert fragment in info.value.message


# --------------------------------------------------------------------------------------------
# Decoding: bombs, truncation, orientation, transparency


def test_header_bomb_beyond_pillows_own_limit_is_refused_cheaply() -> None:
    bomb = png_bomb(50_000, 50_000, rows=4)
    assert len(bomb) < 2000
    tracemalloc.start()
    try:
        with pytest.raises(ImageInputError) as info:
            decode_image(bomb, PARAM, max_pixels=40_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "the limit is 40 megapixels" in info.value.message
    assert peak < 10 * 1024 * 1024


async def test_real_bomb_served_over_http_is_refused_with_bounded_memory(
    canary: Canary,
) -> None:
    bomb = png_bomb(7000, 7000)  # valid and complete: 49 MP of zeros in a few KB
    assert len(bomb) < 64 * 1024
    canary.routes["/bomb.png"] = respond(bomb, "image/png")
    tracemalloc.start()
    try:
        with pytest.raises(ImageInputError) as info:
            await load_input_image(canary.url("/bomb.png"), PARAM, LOOPBACK)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.message == (
        "first_frame_image is 7000x7000 pixels (49.0 megapixels); the limit is 40 megapixels"
    )
    assert peak < 20 * 1024 * 1024


def test_bomb_refusal_keeps_process_memory_flat(tmp_path: Path) -> None:
    """Pillow allocates pixels outside tracemalloc's view, so measure a fresh process's RSS:
    decoding this file would take about 150 MB (7000x7000 RGB); refusing it takes nothing."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(7000, 7000))
    script = textwrap.dedent(
        """
        import io, resource, sys
        from PIL import Image
        from reelserve.media.images import ImageInputError, decode_image
        warm = io.BytesIO()
        Image.new("RGB", (8, 8)).save(warm, "PNG")
        decode_image(warm.getvalue(), "warm", max_pixels=100)  # plugins imported, caches warm
        data = open(sys.argv[1], "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_image(data, "first_frame_image", max_pixels=40_000_000)
        except ImageInputError as exc:
            print("refused:", exc.message)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kib:", after - before)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert lines["refused"].startswith("first_frame_image is 7000x7000 pixels")
    assert int(lines["grew_kib"]) < 40 * 1024


def test_pixel_limit_is_configurable() -> None:
    data = png_bytes((64, 48))
    assert decode_image(data, PARAM, max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(ImageInputError, match=r"is 64x48 pixels"):
        decode_image(data, PARAM, max_pixels=64 * 48 - 1)


@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize(
    ("maker", "kind"), [(png_bytes, "PNG"), (jpeg_bytes, "JPEG"), (webp_bytes, "WebP")]
)
def test_truncated_images_are_errors_even_if_pillow_is_told_to_be_lenient(
    monkeypatch: pytest.MonkeyPatch, maker: Callable[[tuple[int, int]], bytes], kind: str,
    lenient: bool,
) -> None:  # fmt: skip
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient)
    whole = maker((256, 192))
    assert decode_image(whole, PARAM, max_pixels=10**6).size == (256, 192)
    for cut in (len(whole) // 2, len(whole) - 3):
        with pytest.raises(ImageInputError) as info:
            decode_image(whole[:cut], PARAM, max_pixels=10**6)
        assert info.value.message == f"first_frame_image is a truncated or damaged {kind} file"


def test_damaged_image_with_intact_structure_is_an_error() -> None:
    data = bytearray(png_bytes((256, 192)))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 60] = b"\xff" * 20  # corrupt the compressed pixels (and the CRC)
    with pytest.raises(ImageInputError) as info:
        decode_image(bytes(data), PARAM, max_pixels=10**6)
    assert info.value.message == "first_frame_image is a truncated or damaged PNG file"


async def test_truncated_download_fails_at_decode(canary: Canary) -> None:
    canary.routes["/cut.jpg"] = respond(jpeg_bytes((256, 192))[:900], "image/jpeg")
    with pytest.raises(ImageInputError, match="truncated or damaged JPEG"):
        await load_input_image(canary.url("/cut.jpg"), PARAM, LOOPBACK)


def test_jpeg_with_data_after_the_end_marker_decodes() -> None:
    # e.g. Motion Photos append a video after the JPEG's EOI
    data = jpeg_bytes((64, 48)) + b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 1000
    assert decode_image(data, PARAM, max_pixels=10**6).size == (64, 48)


def test_exif_orientation_is_applied() -> None:
    # Landscape pixels, left half red and right half blue, tagged "rotate 90 clockwise" (6).
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(buffer.getvalue(), PARAM, max_pixels=10**6)
    assert image.size == (32, 64)  # portrait now
    array = np.asarray(image).astype(int)
    assert array[8, 16, 0] > 200 and array[8, 16, 2] < 60  # the left edge is now the top
    assert array[56, 16, 2] > 200 and array[56, 16, 0] < 60


def _encode(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def test_alpha_is_flattened_onto_black() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 0)  # fully transparent white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 255, 0, 128)  # half-transparent green
    source = Image.fromarray(rgba, "RGBA")
    for kind in ("PNG", "WEBP"):
        data = _encode(source, kind) if kind == "PNG" else _lossless_webp(source)
        image = decode_image(data, PARAM, max_pixels=100)
        assert image.mode == "RGB"
        array = np.asarray(image).astype(int)
        assert tuple(array[0, 0]) == (0, 0, 0)
        assert tuple(array[0, 1]) == (255, 0, 0)
        assert abs(array[0, 2, 1] - 128) <= 2 and array[0, 2, 0] == 0

    la = Image.fromarray(np.array([[[200, 0], [200, 255]]], np.uint8), "LA")
    assert np.asarray(decode_image(_encode(la, "PNG"), PARAM, max_pixels=100)).tolist() == [
        [[0, 0, 0], [200, 200, 200]]
    ]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 10, 20, 30])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    image = decode_image(buffer.getvalue(), PARAM, max_pixels=100)
    assert np.asarray(image).tolist() == [[[0, 0, 0], [10, 20, 30]]]


def _lossless_webp(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def test_icc_profiles_are_converted_and_broken_ones_ignored() -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, b"not a profile"):
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (200, 40, 40)).save(buffer, "PNG", icc_profile=icc)
        image = decode_image(buffer.getvalue(), PARAM, max_pixels=100)
        red, green, blue = np.asarray(image)[1, 1].astype(int)
        assert abs(red - 200) <= 3 and abs(green - 40) <= 3 and abs(blue - 40) <= 3


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    image = decode_image(data, PARAM, max_pixels=100)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 3, 128, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    image = decode_image(_encode(cmyk, "JPEG"), PARAM, max_pixels=100)
    assert image.mode == "RGB"
    red, green, blue = np.asarray(image)[4, 4].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_sniff_mime() -> None:
    assert sniff_mime(png_bytes()) == "image/png"
    assert sniff_mime(jpeg_bytes()) == "image/jpeg"
    assert sniff_mime(webp_bytes()) == "image/webp"
    assert sniff_mime(gif_bytes()) is None
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WAVE") is None


def test_policy_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="allow_networks"):
        FetchPolicy(allow_networks=("not-a-cidr",))
    with pytest.raises(ValueError, match="resolve_overrides"):
        FetchPolicy(resolve_overrides={"a.test": "a.example"})
    policy = FetchPolicy(allow_hosts=("*.images.test", "Store.Test.", "bücher.test"))
    assert policy.host_allowed("a.images.test") and policy.host_allowed("store.test")
    assert policy.host_allowed("xn--bcher-kva.test") and policy.host_allowed("BÜCHER.test")
    assert not policy.host_allowed("images.test") and not policy.host_allowed("evilimages.test")


async def test_allowed_networks_and_hosts_open_non_public_addresses(
    loopback_only: list[Any],
) -> None:
    overrides = {"store.internal": "10.1.2.3", "other.internal": "10.9.9.9", "any.test": "0.0.0.0"}
    policy = FetchPolicy(
        allow_hosts=("other.internal", "any.test"),
        allow_networks=("10.1.0.0/16",),
        resolve_overrides=overrides,
    )
    await check_image_source("http://store.internal/a.png", PARAM, policy)
    await check_image_source("http://other.internal/a.png", PARAM, policy)
    await check_image_source("http://10.1.200.1/a.png", PARAM, policy)
    with pytest.raises(ImageInputError, match="private address"):
        await check_image_source("http://10.2.0.1/a.png", PARAM, policy)
    # Unspecified addresses stay refused even for an allowed host.
    with pytest.raises(ImageInputError, match="unspecified address"):
        await check_image_source("http://any.test/a.png", PARAM, policy)
    assert loopback_only == []


# --------------------------------------------------------------------------------------------
# Fitting


def _marked_source() -> Image.Image:
    """800x400 red with a centred 200x200 green square: geometry is measurable after fitting."""
    pixels = np.zeros((400, 800, 3), np.uint8)
    pixels[:, :] = (200, 30, 30)
    pixels[100:300, 300:500] = (30, 200, 30)
    return Image.fromarray(pixels, "RGB")


def _bbox(mask: np.ndarray[Any, Any]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("size", [(1280, 720), (720, 1280)])
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_fit_geometry(size: tuple[int, int], mode: Literal["pad", "crop"]) -> None:
    width, height = size
    array = fit_image(_marked_source(), width, height, mode)
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    content = array.astype(int).sum(axis=2) > 60
    green = (array[:, :, 1] > 120) & (array[:, :, 0] < 120)
    gx0, gy0, gx1, gy1 = _bbox(green)
    # No distortion: the square stays square and centred.
    assert abs((gx1 - gx0) - (gy1 - gy0)) <= 2
    assert abs((gx0 + gx1) / 2 - width / 2) <= 1.5 and abs((gy0 + gy1) / 2 - height / 2) <= 1.5
    if mode == "crop":
        assert content.all()  # fills the frame
        scale = max(width / 800, height / 400)
    else:
        scale = min(width / 800, height / 400)
        x0, y0, x1, y1 = _bbox(content)
        # The whole 2:1 image, centred, touching two opposite edges, bars exactly black.
        assert abs((x1 - x0) - 2 * (y1 - y0)) <= 2
        assert (x0, x1) == (0, width) or (y0, y1) == (0, height)
        assert abs((x0 + x1) / 2 - width / 2) <= 1 and abs((y0 + y1) / 2 - height / 2) <= 1
        bars = np.ones((height, width), bool)
        bars[y0:y1, x0:x1] = False
        assert bars.any() and (array[bars] == 0).all()
    assert abs((gx1 - gx0) - 200 * scale) <= 2


def test_fit_same_size_is_identity_and_modes_are_checked() -> None:
    image = _gradient((64, 48))
    assert (fit_image(image, 64, 48, "pad") == np.asarray(image)).all()
    assert (
        fit_image(image.convert("L"), 64, 48, "crop")[:, :, 0] == np.asarray(image.convert("L"))
    ).all()
    with pytest.raises(ValueError):
        fit_image(image, 64, 48, "stretch")  # type: ignore[arg-type]


async def test_resolution_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow system resolver must not block other tasks (getaddrinfo runs in a thread)."""

    def slow(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port))]

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await check_image_source("https://slow.example/a.png", PARAM, STRICT)
    finally:
        task.cancel()
    assert ticks >= 10
