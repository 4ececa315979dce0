"""Django authentication against Strata: a backend, a middleware and ``login``/``logout``.

The switch in ``settings.py``::

    STRATA_URL = "http://strata.internal:8080"
    AUTHENTICATION_BACKENDS = ["strata_client.django.StrataBackend"]
    MIDDLEWARE = [..., "django.contrib.sessions.middleware.SessionMiddleware",
                  "strata_client.django.StrataAuthenticationMiddleware", ...]   # in place of
                  # django.contrib.auth.middleware.AuthenticationMiddleware

and in views ``from strata_client.django import login, logout`` in place of
``django.contrib.auth``'s: ``authenticate(request, username=email, password=...)`` logs in at
Strata, ``login(request, user)`` keeps the Strata session token in the Django session,
``logout(request)`` ends the Strata session.

``request.user`` is then a :class:`StrataUser` (``is_authenticated``, ``id``, ``email``,
``is_staff`` and ``is_superuser`` for Strata's ``admin`` role, ``is_active``) or Django's
``AnonymousUser``. It is read lazily from ``Authorization: Bearer <token>`` or, without that
header, from the token ``login`` stored in the session, checked at Strata's
``GET /v1/sessions/current``. Nothing is stored in Django's database.

Answers are cached for ``STRATA_AUTH_CACHE_TTL`` seconds (default 5; 0 turns the cache off),
at most ``STRATA_AUTH_CACHE_MAX_ENTRIES`` (10,000) tokens, keyed by the token's SHA-256: a
session revoked at Strata keeps working here for at most that long; ``logout`` takes effect at
once. If Strata cannot answer, the middleware turns the error into a 503 (429 when Strata
throttles a login) instead of treating the user as anonymous. ``STRATA_TIMEOUT`` (5 s) bounds
each call.

Django's own ``login()`` must not be used with these users: its ``user_logged_in`` handler
saves ``last_login`` to a database row they do not have.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import rotate_token
from django.utils.functional import SimpleLazyObject

from ._auth import DEFAULT_CACHE_MAX_ENTRIES, DEFAULT_CACHE_TTL, Authenticated, SessionVerifier, TokenCache
from ._sync import StrataClient
from .errors import StrataError, TooManyRequests, Unauthorized
from .models import GroupRef, Session, User, WhoAmI

__all__ = [
    "SESSION_KEY",
    "StrataAuthenticationMiddleware",
    "StrataBackend",
    "StrataUser",
    "get_user",
    "get_verifier",
    "login",
    "logout",
]

#: Where :func:`login` keeps the Strata session token in ``request.session``.
SESSION_KEY = "_strata_token"


class StrataUser:
    """The user of a request authenticated by Strata, with the attributes Django code reads
    from ``request.user``. Permissions: Strata admins have all, everyone else none."""

    is_authenticated = True
    is_anonymous = False
    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"

    def __init__(self, user: User, session: Session, token: str, groups: list[GroupRef] | None = None) -> None:
        self.strata_user = user
        self.strata_session = session
        self.strata_groups = groups
        self._strata_token = token

    @classmethod
    def of(cls, authenticated: Authenticated) -> StrataUser:
        return cls(authenticated.user, authenticated.session, authenticated.token, authenticated.groups)

    @property
    def id(self) -> uuid.UUID:
        return self.strata_user.id

    @property
    def pk(self) -> uuid.UUID:
        return self.strata_user.id

    @property
    def email(self) -> str:
        return self.strata_user.email

    @property
    def username(self) -> str:
        return self.strata_user.email

    @property
    def name(self) -> str:
        return self.strata_user.name

    @property
    def role(self) -> str:
        return self.strata_user.role

    @property
    def is_active(self) -> bool:
        return self.strata_user.is_active

    @property
    def is_staff(self) -> bool:
        return self.strata_user.role == "admin"

    @property
    def is_superuser(self) -> bool:
        return self.strata_user.role == "admin"

    @property
    def is_verified(self) -> bool:
        return self.strata_user.verified

    def get_username(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        return self.name

    def get_short_name(self) -> str:
        return self.name

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return self.is_active and self.is_superuser

    def has_perms(self, perm_list: Any, obj: object = None) -> bool:
        return all(self.has_perm(perm, obj) for perm in perm_list)

    def has_module_perms(self, app_label: str) -> bool:
        return self.is_active and self.is_superuser

    def get_all_permissions(self, obj: object = None) -> set[str]:
        return set()

    def get_user_permissions(self, obj: object = None) -> set[str]:
        return set()

    def get_group_permissions(self, obj: object = None) -> set[str]:
        return set()

    def __str__(self) -> str:
        return self.email

    def __repr__(self) -> str:
        return f"<StrataUser {self.id} {self.email}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StrataUser) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


# --- the shared verifier, made from settings on first use ---------------------------------------

_verifier: SessionVerifier | None = None
_verifier_lock = threading.Lock()


def get_verifier() -> SessionVerifier:
    """The process-wide token checker, built from the ``STRATA_*`` settings on first use."""
    global _verifier
    with _verifier_lock:
        if _verifier is None:
            url = getattr(settings, "STRATA_URL", None)
            if not url:
                raise ImproperlyConfigured("strata_client.django needs settings.STRATA_URL")
            client = StrataClient(url, timeout=float(getattr(settings, "STRATA_TIMEOUT", 5.0)))
            cache: TokenCache[WhoAmI] = TokenCache(
                ttl=float(getattr(settings, "STRATA_AUTH_CACHE_TTL", DEFAULT_CACHE_TTL)),
                max_entries=int(getattr(settings, "STRATA_AUTH_CACHE_MAX_ENTRIES", DEFAULT_CACHE_MAX_ENTRIES)),
            )
            _verifier = SessionVerifier(client, cache)
        return _verifier


def _reset_verifier(*, setting: str, **kwargs: Any) -> None:
    # override_settings in tests, or a settings reload: the next request builds a new one.
    global _verifier
    if setting.startswith("STRATA_"):
        with _verifier_lock:
            old, _verifier = _verifier, None
        if old is not None:
            old.client.close()


setting_changed.connect(_reset_verifier)


# --- backend -------------------------------------------------------------------------------------


class StrataBackend:
    """``django.contrib.auth.authenticate`` against Strata.

    - ``authenticate(request, token=...)``: the user of a Strata session token;
    - ``authenticate(request, username=email, password=...)`` (or ``email=``): logs in at
      Strata; pass the user to :func:`login` to keep the session. Raises
      :class:`~strata_client.errors.MfaRequired` (with ``challenge``) when the account has
      TOTP on; then ``authenticate(request, mfa_challenge=..., mfa_code=...)``.

    Wrong credentials give ``None`` (Django then sends ``user_login_failed``).
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        email: str | None = None,
        mfa_challenge: str | None = None,
        mfa_code: str | None = None,
    ) -> StrataUser | None:
        verifier = get_verifier()
        if token is not None:
            authenticated = verifier.verify(token)
            return None if authenticated is None else StrataUser.of(authenticated)
        try:
            if mfa_challenge is not None and mfa_code is not None:
                result = verifier.client.complete_mfa_login(mfa_challenge, mfa_code)
            else:
                login_email = email if email is not None else username
                if login_email is None or password is None:
                    return None
                result = verifier.client.login(login_email, password)
        except Unauthorized as refusal:
            if refusal.code == "mfa_required":
                raise
            return None
        if result.token is None:
            return None
        # Checked once more so the user carries its session like every other request's user.
        authenticated = verifier.verify(result.token)
        return None if authenticated is None else StrataUser.of(authenticated)

    def get_user(self, user_id: object) -> None:
        # Django's AuthenticationMiddleware restores users by id from the session; Strata
        # users are restored from their token by StrataAuthenticationMiddleware instead.
        return None


# --- request.user --------------------------------------------------------------------------------


def _anonymous() -> Any:
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


def _bearer_token(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return str(credentials.strip())
    return None


def get_user(request: HttpRequest) -> Any:
    """The request's :class:`StrataUser`, or ``AnonymousUser``."""
    token = _bearer_token(request)
    from_session = False
    session = getattr(request, "session", None)
    if token is None and session is not None:
        stored = session.get(SESSION_KEY)
        token, from_session = (stored, True) if isinstance(stored, str) else (None, False)
    if token is None:
        return _anonymous()
    authenticated = get_verifier().verify(token)
    if authenticated is None:
        if from_session and session is not None:
            # The Strata session ended (logout elsewhere, disabled, expired): stop asking.
            session.pop(SESSION_KEY, None)
        return _anonymous()
    return StrataUser.of(authenticated)


class StrataAuthenticationMiddleware:
    """Sets ``request.user`` (lazily) from the bearer token or the session's Strata token.

    Put it where ``django.contrib.auth.middleware.AuthenticationMiddleware`` was, after
    ``SessionMiddleware``. Strata being unreachable becomes a 503, throttling a 429.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.user = SimpleLazyObject(lambda: get_user(request))
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, TooManyRequests):
            response = JsonResponse({"detail": "too many attempts"}, status=429)
            if exception.retry_after is not None:
                response["Retry-After"] = str(int(exception.retry_after))
            return response
        if isinstance(exception, StrataError) and not isinstance(exception, Unauthorized):
            return JsonResponse({"detail": "authentication unavailable"}, status=503)
        return None


def login(request: HttpRequest, user: StrataUser) -> None:
    """Keep ``user``'s Strata session in the Django session (like ``django.contrib.auth.login``:
    a new session key against fixation, a new CSRF token) and make it ``request.user``."""
    session = getattr(request, "session", None)
    if session is None:
        raise ImproperlyConfigured("strata_client.django.login needs SessionMiddleware")
    previous = session.get(SESSION_KEY)
    if isinstance(previous, str) and previous != user._strata_token:
        # Someone else's (or an older) session in this browser: end it rather than orphan it.
        get_verifier().logout(previous)
    session.cycle_key()
    session[SESSION_KEY] = user._strata_token
    rotate_token(request)
    request.user = user


def logout(request: HttpRequest) -> None:
    """End the request's Strata session (at Strata, at once) and flush the Django session."""
    token = _bearer_token(request)
    session = getattr(request, "session", None)
    if token is None and session is not None:
        stored = session.get(SESSION_KEY)
        token = stored if isinstance(stored, str) else None
    if token is not None:
        get_verifier().logout(token)
    if session is not None:
        session.flush()
    request.user = _anonymous()
