"""Bearer-key authentication as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from reelserve.core import Reelserve
from reelserve.domain.errors import AuthenticationFailed
from reelserve.store.keys import ApiKey


async def get_service(request: Request) -> Reelserve:
    service: Reelserve = request.app.state.reelserve
    return service


Service = Annotated[Reelserve, Depends(get_service)]


async def require_key(request: Request, service: Service) -> ApiKey:
    return await authenticate_request(request, service)


async def authenticate_request(request: Request, service: Reelserve) -> ApiKey:
    """The caller's API key from `Authorization: Bearer ...`, or a 401."""
    return await key_from_header(service, request.headers.get("authorization"))


async def key_from_header(service: Reelserve, header: str | None) -> ApiKey:
    if not header:
        raise AuthenticationFailed(
            "missing Authorization header; send 'Authorization: Bearer <api key>'"
        )
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthenticationFailed("malformed Authorization header; expected 'Bearer <api key>'")
    key = await service.access.authenticate(secret)
    if key is None:
        raise AuthenticationFailed("invalid or revoked API key")
    return key


Key = Annotated[ApiKey, Depends(require_key)]
