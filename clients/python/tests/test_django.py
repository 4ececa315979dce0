"""A Django app protected by Strata, through Django's test Client: login through the app's
form view, who-am-I, logout, and Strata-side revocation seen within the cache TTL (a manual
clock moves time; nothing sleeps). The settings are this module's; so are the URLs."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import django
import httpx
import pytest
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY=secrets.token_urlsafe(32),
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "strata_client.django.StrataAuthenticationMiddleware",
    ],
    AUTHENTICATION_BACKENDS=["strata_client.django.StrataBackend"],
    # Sessions in the process's memory: no database anywhere in this app.
    SESSION_ENGINE="django.contrib.sessions.backends.cache",
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    DATABASES={},
    LOGIN_URL="/login",
    USE_TZ=True,
    STRATA_URL="http://strata.invalid",  # each test points it at the test server
)
django.setup()

from django.contrib.auth import authenticate  # noqa: E402  (needs the settings above)
from django.contrib.auth.decorators import login_required  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

import strata_client.django as strata_django  # noqa: E402
from conftest import PASSWORD, StrataServer, unique_email  # noqa: E402
from strata_client import MfaRequired, StrataClient, Unauthorized, User  # noqa: E402
from strata_client._auth import SessionVerifier, TokenCache  # noqa: E402
from strata_client.django import SESSION_KEY, StrataUser, login, logout  # noqa: E402

# --- the app ---------------------------------------------------------------------------------------


def login_view(request: HttpRequest) -> HttpResponse:
    try:
        if "challenge" in request.POST:
            user = authenticate(request, mfa_challenge=request.POST["challenge"], mfa_code=request.POST["code"])
        else:
            user = authenticate(request, username=request.POST["email"], password=request.POST["password"])
    except MfaRequired as mfa:
        return JsonResponse({"mfa_required": True, "challenge": mfa.challenge}, status=401)
    if user is None:
        return JsonResponse({"error": "bad credentials"}, status=400)
    login(request, user)
    return JsonResponse({"email": user.email})


def me_view(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.is_authenticated:
        return JsonResponse({"error": "not logged in"}, status=401)
    return JsonResponse({"id": str(user.id), "email": user.email, "is_staff": user.is_staff})


@login_required  # type: ignore[untyped-decorator]  # Django has no type hints
def private_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("private")


def staff_view(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        return HttpResponse(status=403)
    return HttpResponse("staff")


def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse(status=204)


def public_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("public")


urlpatterns = [
    path("login", login_view),
    path("me", me_view),
    path("private", private_view),
    path("staff", staff_view),
    path("logout", logout_view),
    path("public", public_view),
]


# --- fixtures --------------------------------------------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingVerifier:
    """Installed as the app's token checker: counts who-am-I calls, on a manual clock."""

    def __init__(self, url: str, ttl: float) -> None:
        self.calls = 0
        self.clock = ManualClock()

        def count(request: httpx.Request) -> None:
            if request.url.path == "/v1/sessions/current":
                self.calls += 1

        self.http = httpx.Client(event_hooks={"request": [count]}, timeout=5)
        cache: TokenCache[Any] = TokenCache(ttl=ttl, clock=self.clock)
        strata_django._verifier = SessionVerifier(StrataClient(url, http_client=self.http), cache)


@pytest.fixture
def install(strata: StrataServer) -> Iterator[Callable[..., CountingVerifier]]:
    installed: list[CountingVerifier] = []

    def make(ttl: float = 0.0, url: str | None = None) -> CountingVerifier:
        verifier = CountingVerifier(url or strata.url, ttl)
        installed.append(verifier)
        return verifier

    with override_settings(STRATA_URL=strata.url):
        yield make
    for verifier in installed:
        verifier.http.close()


@pytest.fixture
def account(anonymous: StrataClient) -> User:
    return anonymous.create_user(unique_email("django"), "Django Reinhardt", PASSWORD)


def post_login(client: Client, user: User, password: str = PASSWORD) -> Any:
    return client.post("/login", {"email": user.email, "password": password})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- tests -----------------------------------------------------------------------------------------


def test_login_who_am_i_and_logout_through_the_app(install: Any, strata: StrataServer, account: User) -> None:
    counting = install(ttl=5)
    client = Client()
    assert post_login(client, account, "wrong password!").status_code == 400
    assert client.get("/me").status_code == 401
    private = client.get("/private")
    assert private.status_code == 302 and private["Location"] == "/login?next=/private"

    answer = post_login(client, account)
    assert answer.status_code == 200 and json.loads(answer.content) == {"email": account.email}
    token = client.session[SESSION_KEY]
    assert token.startswith("st_")
    calls_after_login = counting.calls
    for _ in range(3):
        me = client.get("/me")
        assert me.status_code == 200
        assert json.loads(me.content) == {"id": str(account.id), "email": account.email, "is_staff": False}
    assert client.get("/private").content == b"private"
    assert counting.calls == calls_after_login  # all from the cache

    assert client.post("/logout").status_code == 204
    assert client.get("/me").status_code == 401  # at once, the clock stood still
    with StrataClient(strata.url, token) as dead, pytest.raises(Unauthorized):
        dead.current_session()  # the Strata session is over, not just the Django one


def test_bearer_tokens_authenticate_without_a_session(install: Any, anonymous: StrataClient, account: User) -> None:
    install(ttl=5)  # the clock stands still: only logout's own forgetting can end the session here
    token = anonymous.login(account.email, PASSWORD).token
    assert token
    client = Client()
    assert json.loads(client.get("/me", headers=bearer(token)).content)["email"] == account.email
    assert client.get("/private", headers=bearer(token)).status_code == 200
    for bad in ("st_" + "A" * 43, "x" * 600):
        assert client.get("/me", headers=bearer(bad)).status_code == 401
    assert client.get("/me", headers={"Authorization": "Basic YTpi"}).status_code == 401

    # Logout with a bearer token ends that session.
    assert client.post("/logout", headers=bearer(token)).status_code == 204
    assert client.get("/me", headers=bearer(token)).status_code == 401


def test_revocation_at_strata_reaches_the_app_within_the_ttl(install: Any, admin: StrataClient, account: User) -> None:
    counting = install(ttl=5)
    client = Client()
    assert post_login(client, account).status_code == 200
    assert client.get("/me").status_code == 200

    admin.update_user(account.id, if_match=admin.get_user(account.id), status="disabled")
    counting.clock.now += 4.9  # the cached answer still holds inside the TTL
    assert client.get("/me").status_code == 200
    counting.clock.now += 0.1
    assert client.get("/me").status_code == 401
    assert SESSION_KEY not in client.session  # a dead token is not asked about again
    calls = counting.calls
    assert client.get("/me").status_code == 401 and counting.calls == calls


def test_with_the_cache_off_role_changes_and_deletion_are_seen_at_once(
    install: Any, admin: StrataClient, account: User
) -> None:
    install(ttl=0)
    client = Client()
    assert post_login(client, account).status_code == 200
    assert client.get("/staff").status_code == 403
    admin.update_user(account.id, if_match=admin.get_user(account.id), role="admin")
    assert client.get("/staff").content == b"staff"
    assert json.loads(client.get("/me").content)["is_staff"] is True
    admin.delete_user(account.id)
    assert client.get("/me").status_code == 401


def test_request_user_is_lazy(install: Any, account: User) -> None:
    counting = install(ttl=0)
    client = Client()
    assert post_login(client, account).status_code == 200
    calls = counting.calls
    assert client.get("/public").content == b"public"
    assert counting.calls == calls  # the view never looked at request.user


def test_second_factor_through_the_backend(install: Any, anonymous: StrataClient, account: User) -> None:
    from conftest import totp

    install()
    me = anonymous.with_token(anonymous.login(account.email, PASSWORD).token)
    enrolment = me.start_totp(account.id, PASSWORD)
    recovery = me.confirm_totp(account.id, totp(enrolment.secret))

    client = Client()
    first = post_login(client, account)
    assert first.status_code == 401
    challenge = json.loads(first.content)["challenge"]
    second = client.post("/login", {"challenge": challenge, "code": recovery[0]})
    assert second.status_code == 200
    assert json.loads(client.get("/me").content)["email"] == account.email


def test_strata_unreachable_is_503_and_throttling_429(install: Any, anonymous: StrataClient, account: User) -> None:
    token = anonymous.login(account.email, PASSWORD).token
    assert token
    install(url="http://127.0.0.1:9")
    assert Client().get("/me", headers=bearer(token)).status_code == 503

    install()
    client = Client()
    statuses = [post_login(client, account, "wrong password!").status_code for _ in range(20)]
    assert statuses[0] == 400 and statuses[-1] == 429, statuses
    throttled = post_login(client, account, "wrong password!")
    assert int(throttled["Retry-After"]) > 0


def test_the_verifier_is_built_from_settings(strata: StrataServer, account: User, anonymous: StrataClient) -> None:
    token = anonymous.login(account.email, PASSWORD).token
    assert token
    with override_settings(STRATA_URL=strata.url, STRATA_AUTH_CACHE_TTL=0, STRATA_AUTH_CACHE_MAX_ENTRIES=7):
        verifier = strata_django.get_verifier()
        assert verifier.client.base_url == strata.url
        assert (verifier.cache.ttl, verifier.cache.max_entries) == (0, 7)
        assert json.loads(Client().get("/me", headers=bearer(token)).content)["email"] == account.email
    with override_settings(STRATA_URL=""):
        from django.core.exceptions import ImproperlyConfigured

        with pytest.raises(ImproperlyConfigured):
            strata_django.get_verifier()


def test_strata_users_look_like_django_users(install: Any, anonymous: StrataClient, admin: StrataClient) -> None:
    install()
    plain = anonymous.create_user(unique_email("plain"), "Plain", PASSWORD)
    boss = anonymous.create_user(unique_email("boss"), "Boss", PASSWORD)
    admin.update_user(boss.id, if_match=boss, role="admin")
    users = {}
    for user in (plain, boss):
        authenticated = authenticate(None, token=anonymous.login(user.email, PASSWORD).token)
        assert isinstance(authenticated, StrataUser)
        users[user.email] = authenticated
    plain_user, boss_user = users[plain.email], users[boss.email]
    assert plain_user.is_authenticated and not plain_user.is_anonymous
    assert (plain_user.id, plain_user.pk, plain_user.get_username(), str(plain_user)) == (
        plain.id,
        plain.id,
        plain.email,
        plain.email,
    )
    assert not plain_user.is_staff and not plain_user.has_perm("app.change_thing")
    assert boss_user.is_staff and boss_user.is_superuser and boss_user.has_perms(["a.b", "c.d"])
    assert plain_user != boss_user and len({plain_user, boss_user}) == 2
    assert "st_" not in repr(plain_user)
    assert authenticate(None, token="st_" + "A" * 43) is None
