"""Sending to a checked destination (`net.guard.check_url`), and nowhere else.

* The connection goes to the address that was checked (`pinned_request`): the IP is put into
  the request URL, the original name into the `Host` header and the TLS SNI/certificate check,
  so a DNS answer that changes between check and connect (DNS rebinding) cannot redirect us. A
  fresh transport per request means no pooled connection (whose certificate was checked for
  another name) is ever reused, env proxies are ignored (a proxy would do its own resolution
  and defeat the address check) and httpx follows no redirects.
* Redirects, where a caller follows them at all, are followed by hand (`follow_redirects`), at
  most `max_redirects`, and every hop is checked again.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import httpx

from reelserve.net.addresses import IPAddress
from reelserve.net.guard import (
    FetchPolicy,
    OutboundError,
    Target,
    check_url,
    invalid_url,
    parse_http_url,
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

T = TypeVar("T")


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
        raise invalid_url(location, param, policy, redirect=True) from None


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
