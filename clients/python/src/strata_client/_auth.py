"""Checking a bearer token against Strata, with a small TTL cache: the core of the framework
drop-ins (``strata_client.fastapi``, ``strata_client.django``), free of either framework.

Why a cache, and why a small one: every request of the protected app would otherwise cost a
round trip to ``GET /v1/sessions/current``. Strata answers that from its own cache in well
under a millisecond, so the app's cache only has to absorb bursts; its TTL is the bound on how
long a revoked token (logout elsewhere, a disabled account, a password change) keeps working
in the app. The default is 5 seconds; 0 turns the cache off.

Tokens are never stored or logged: the cache is keyed by the token's SHA-256, and log lines
name at most the first 8 hex digits of that hash.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Generic, TypeVar

from ._async import AsyncStrataClient
from ._sync import StrataClient
from .errors import Unauthorized
from .models import GroupRef, Session, User, WhoAmI

__all__ = ["AsyncSessionVerifier", "Authenticated", "SessionVerifier", "TokenCache", "token_fingerprint"]

log = logging.getLogger("strata_client.auth")

V = TypeVar("V")

DEFAULT_CACHE_TTL = 5.0
DEFAULT_CACHE_MAX_ENTRIES = 10_000
# Strata's tokens are `st_` + 43 characters; anything far longer is not worth a round trip.
MAX_TOKEN_LENGTH = 512


def token_fingerprint(token: str) -> str:
    """What may appear in logs instead of a token: 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def plausible_token(token: str) -> bool:
    """Cheap local refusal of what cannot be a token (too long, spaces, control characters)."""
    return 0 < len(token) <= MAX_TOKEN_LENGTH and all("!" <= c <= "~" for c in token)


class TokenCache(Generic[V]):
    """A bounded LRU map from token to value whose entries expire after ``ttl`` seconds.

    Keys are SHA-256 digests, so a heap dump shows no live token. Thread-safe: Django serves
    requests from threads, FastAPI runs sync dependencies in a thread pool. ``clock`` is a
    monotonic seconds source, replaceable in tests (no sleeping).
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_CACHE_TTL,
        max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise ValueError("ttl must be >= 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> V | None:
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            deadline, value = entry
            if self._clock() >= deadline:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, token: str, value: V, *, ttl: float | None = None) -> None:
        """Remember ``value`` for ``min(ttl, self.ttl)`` seconds (nothing when that is <= 0)."""
        lifetime = self.ttl if ttl is None else min(ttl, self.ttl)
        if lifetime <= 0:
            return
        key = self._key(token)
        with self._lock:
            self._entries[key] = (self._clock() + lifetime, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, token: str) -> None:
        with self._lock:
            self._entries.pop(self._key(token), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass(frozen=True)
class Authenticated:
    """A request's verified session: who, which session, and the token itself (for logout or
    for calling Strata on the user's behalf; kept out of ``repr``)."""

    user: User
    session: Session
    groups: list[GroupRef] | None
    token: str = field(repr=False)

    @classmethod
    def of(cls, whoami: WhoAmI, token: str) -> Authenticated:
        return cls(user=whoami.user, session=whoami.session, groups=whoami.groups, token=token)


def _seconds_left(whoami: WhoAmI) -> float:
    # A cached answer must not outlive the session itself.
    return (whoami.session.expires_at - datetime.now(timezone.utc)).total_seconds()


class SessionVerifier:
    """Sync token check: :meth:`verify` answers who a token belongs to, or ``None`` when
    Strata says it is no live session (401). Other failures (Strata unreachable, 5xx, 429)
    raise :class:`~strata_client.errors.StrataError`: the token may be fine, so callers answer
    503, not 401."""

    def __init__(self, client: StrataClient, cache: TokenCache[WhoAmI], *, include_groups: bool = False) -> None:
        self.client = client
        self.cache = cache
        self.include_groups = include_groups

    def verify(self, token: str) -> Authenticated | None:
        if not plausible_token(token):
            return None
        whoami = self.cache.get(token)
        if whoami is None:
            try:
                whoami = self.client.with_token(token).current_session(include_groups=self.include_groups)
            except Unauthorized as refusal:
                log.debug("strata refused token %s: %s", token_fingerprint(token), refusal.code)
                return None
            self.cache.put(token, whoami, ttl=_seconds_left(whoami))
        return Authenticated.of(whoami, token)

    def logout(self, token: str) -> None:
        """End the session at Strata and forget it here at once (an already dead one is fine)."""
        try:
            self.client.with_token(token).logout()
        except Unauthorized:
            pass
        finally:
            # After the logout, so that a check racing with it cannot put the session back.
            self.cache.discard(token)


class AsyncSessionVerifier:
    """:class:`SessionVerifier` over the async client."""

    def __init__(self, client: AsyncStrataClient, cache: TokenCache[WhoAmI], *, include_groups: bool = False) -> None:
        self.client = client
        self.cache = cache
        self.include_groups = include_groups

    async def verify(self, token: str) -> Authenticated | None:
        if not plausible_token(token):
            return None
        whoami = self.cache.get(token)
        if whoami is None:
            try:
                whoami = await self.client.with_token(token).current_session(include_groups=self.include_groups)
            except Unauthorized as refusal:
                log.debug("strata refused token %s: %s", token_fingerprint(token), refusal.code)
                return None
            self.cache.put(token, whoami, ttl=_seconds_left(whoami))
        return Authenticated.of(whoami, token)

    async def logout(self, token: str) -> None:
        try:
            await self.client.with_token(token).logout()
        except Unauthorized:
            pass
        finally:
            self.cache.discard(token)
