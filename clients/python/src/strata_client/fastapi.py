"""FastAPI dependencies that authenticate requests against Strata.

The switch from fastapi-users keeps the routes as they are::

    from strata_client.fastapi import StrataAuth

    fastapi_users = StrataAuth("http://strata.internal:8080")
    current_active_user = fastapi_users.current_user(active=True)

    @app.get("/me")
    async def me(user: User = Depends(current_active_user)): ...   # strata_client.User

``current_user(optional=, active=, verified=, superuser=)`` behaves like fastapi-users': no or
a bad token → 401 with ``WWW-Authenticate: Bearer``; ``active`` refuses disabled accounts
with 401; ``verified`` and ``superuser`` (Strata's ``admin`` role) refuse with 403; ``optional``
gives ``None`` instead of raising. The user has fastapi-users' ``is_active``, ``is_superuser``
and ``is_verified``. When Strata cannot answer, the request gets 503, never a 401 that would
log the user out of a client.

Each token is checked at Strata's ``GET /v1/sessions/current`` and the answer cached for
``cache_ttl`` seconds (default 5, at most ``cache_max_entries``): a session revoked at Strata
(logout elsewhere, disabled account, password change, deletion) keeps working in this app for
at most that long. Logging out through :meth:`StrataAuth.logout` takes effect at once.

Module-level :func:`current_user`, :func:`current_active_user` and :func:`current_superuser`
use a default :class:`StrataAuth` configured by :func:`configure` or, failing that, from the
environment (``STRATA_URL``, ``STRATA_AUTH_CACHE_TTL``).

Close the client with the app (``await auth.aclose()`` in the lifespan); its connections
belong to the event loop that first used them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, overload

from fastapi import Depends, HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._async import AsyncStrataClient
from ._auth import DEFAULT_CACHE_MAX_ENTRIES, DEFAULT_CACHE_TTL, AsyncSessionVerifier, Authenticated, TokenCache
from .errors import StrataError, TooManyRequests
from .models import User, WhoAmI

__all__ = [
    "Authenticated",
    "StrataAuth",
    "bearer_scheme",
    "configure",
    "current_active_user",
    "current_superuser",
    "current_user",
    "default_auth",
]

#: The security scheme the dependencies declare, so the app's OpenAPI document shows it.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="StrataBearer",
    description="A Strata session token (`st_…`) from `POST /v1/sessions`.",
)

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class StrataAuth:
    """Authenticates bearer tokens against one Strata deployment; hands out dependencies."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        client: AsyncStrataClient | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 5.0,
        include_groups: bool = False,
    ) -> None:
        if client is None:
            if base_url is None:
                raise ValueError("StrataAuth needs a base_url or a client")
            client = AsyncStrataClient(base_url, timeout=timeout)
        self.client = client
        self.cache: TokenCache[WhoAmI] = TokenCache(ttl=cache_ttl, max_entries=cache_max_entries, clock=clock)
        self.verifier = AsyncSessionVerifier(client, self.cache, include_groups=include_groups)

    async def authenticate(self, token: str) -> Authenticated | None:
        """Who ``token`` belongs to, or ``None`` if it is not a live session."""
        return await self.verifier.verify(token)

    async def logout(self, token: str) -> None:
        """End the session at Strata and drop it from this app's cache."""
        await self.verifier.logout(token)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _resolve(
        self,
        credentials: HTTPAuthorizationCredentials | None,
        *,
        optional: bool,
        active: bool,
        verified: bool,
        superuser: bool,
    ) -> Authenticated | None:
        if credentials is None:
            if optional:
                return None
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Unauthorized", headers=_UNAUTHORIZED)
        try:
            authenticated = await self.authenticate(credentials.credentials)
        except TooManyRequests as throttled:
            retry = {} if throttled.retry_after is None else {"Retry-After": str(int(throttled.retry_after))}
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "Authentication throttled", headers=retry
            ) from None
        except StrataError:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Authentication unavailable") from None
        # The same decisions, in the same order, as fastapi-users' Authenticator.
        code = status.HTTP_401_UNAUTHORIZED
        headers = _INVALID_TOKEN
        if authenticated is not None:
            code, headers = status.HTTP_403_FORBIDDEN, {}
            user = authenticated.user
            if active and not user.is_active:
                code, headers = status.HTTP_401_UNAUTHORIZED, _INVALID_TOKEN
                authenticated = None
            elif (verified and not user.is_verified) or (superuser and not user.is_superuser):
                authenticated = None
        if authenticated is None and not optional:
            detail = "Forbidden" if code == status.HTTP_403_FORBIDDEN else "Unauthorized"
            raise HTTPException(code, detail, headers=headers or None)
        return authenticated

    @overload
    def current_session(
        self,
        *,
        optional: Literal[False] = False,
        active: bool = False,
        verified: bool = False,
        superuser: bool = False,
    ) -> Callable[..., Awaitable[Authenticated]]: ...

    @overload
    def current_session(
        self, *, optional: Literal[True], active: bool = False, verified: bool = False, superuser: bool = False
    ) -> Callable[..., Awaitable[Authenticated | None]]: ...

    def current_session(
        self, *, optional: bool = False, active: bool = False, verified: bool = False, superuser: bool = False
    ) -> Callable[..., Awaitable[Authenticated | None]]:
        """A dependency giving the :class:`Authenticated` session: user, session and token."""

        async def strata_session(
            credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
        ) -> Authenticated | None:
            return await self._resolve(
                credentials, optional=optional, active=active, verified=verified, superuser=superuser
            )

        return strata_session

    @overload
    def current_user(
        self,
        *,
        optional: Literal[False] = False,
        active: bool = False,
        verified: bool = False,
        superuser: bool = False,
    ) -> Callable[..., Awaitable[User]]: ...

    @overload
    def current_user(
        self, *, optional: Literal[True], active: bool = False, verified: bool = False, superuser: bool = False
    ) -> Callable[..., Awaitable[User | None]]: ...

    def current_user(
        self, *, optional: bool = False, active: bool = False, verified: bool = False, superuser: bool = False
    ) -> Callable[..., Awaitable[User | None]]:
        """A dependency giving the request's :class:`~strata_client.User`, as fastapi-users'
        ``current_user(optional=, active=, verified=, superuser=)``."""
        session_dependency: Callable[..., Awaitable[Authenticated | None]] = (
            self.current_session(optional=True, active=active, verified=verified, superuser=superuser)
            if optional
            else self.current_session(active=active, verified=verified, superuser=superuser)
        )

        async def strata_user(session: Authenticated | None = Depends(session_dependency)) -> User | None:
            return None if session is None else session.user

        return strata_user


# --- the module-level default -------------------------------------------------------------------

_default: StrataAuth | None = None
_default_lock = threading.Lock()


def configure(base_url: str | None = None, **options: Any) -> StrataAuth:
    """Set the :class:`StrataAuth` behind the module-level dependencies (returns it)."""
    global _default
    auth = StrataAuth(base_url, **options)
    with _default_lock:
        _default = auth
    return auth


def default_auth() -> StrataAuth:
    """The configured default, or one made from ``STRATA_URL`` (and ``STRATA_AUTH_CACHE_TTL``)."""
    global _default
    with _default_lock:
        if _default is None:
            url = os.environ.get("STRATA_URL")
            if not url:
                raise RuntimeError("strata_client.fastapi: call configure(base_url) or set STRATA_URL")
            ttl = float(os.environ.get("STRATA_AUTH_CACHE_TTL", DEFAULT_CACHE_TTL))
            _default = StrataAuth(url, cache_ttl=ttl)
        return _default


async def _required_user(credentials: HTTPAuthorizationCredentials | None, *, active: bool, superuser: bool) -> User:
    session = await default_auth()._resolve(
        credentials, optional=False, active=active, verified=False, superuser=superuser
    )
    if session is None:  # _resolve raises itself when not optional; this keeps the types honest
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Unauthorized", headers=_UNAUTHORIZED)
    return session.user


async def current_user(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> User:
    """The request's user (any status); 401 without a live session."""
    return await _required_user(credentials, active=False, superuser=False)


async def current_active_user(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> User:
    """The request's user, whose account must be active."""
    return await _required_user(credentials, active=True, superuser=False)


async def current_superuser(credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> User:
    """The request's user, who must be active and an admin (403 otherwise)."""
    return await _required_user(credentials, active=True, superuser=True)
