"""Authentication and permissions: `@requires("inference")` on every protected handler.

The handler runs with `request[API_KEY]` set to the key record (id, name, permissions, tier,
...). Order of checks: the key (401 missing/invalid/expired/revoked), the permission (403),
the key's request rate (429 with Retry-After).
"""
from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from llmp.errors import AuthenticationError, PermissionDeniedError
from llmp.server.state import API_KEY, DB, LIMITER
from llmp.services import keys as keys_service

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: a handler's `permission` when any valid key may call it (`requires(None)`)
AUTHENTICATED = "authenticated"


def bearer(request: web.Request) -> str | None:
    """The bearer token; AuthenticationError for one no key can be (not printable ASCII)."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if not (token.isascii() and token.isprintable()) or len(token) > 256:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    return token


def requires(permission: str | None) -> Callable[[Handler], Handler]:
    """`permission`: the one the key needs; None: any valid key (the handler scopes what it
    shows to the key, e.g. GET /v1/auth/api-keys)."""
    if permission is not None and permission not in keys_service.PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            key = keys_service.authenticate(request.app[DB], bearer(request))
            request[API_KEY] = key
            if permission is not None and not keys_service.has_permission(key, permission):
                raise PermissionDeniedError(f"This API key lacks the '{permission}' permission")
            request.app[LIMITER].take_request(key)
            return await handler(request)

        # what /openapi.json shows as x-permission ("authenticated": any valid key)
        wrapped.permission = permission or AUTHENTICATED  # type: ignore[attr-defined]
        return wrapped

    return decorate
