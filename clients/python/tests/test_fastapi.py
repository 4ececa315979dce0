"""A FastAPI app protected by Strata: login through the app, who-am-I on a protected route,
logout, and Strata-side revocation seen by the app within the cache TTL (a manual clock moves
time; nothing sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

import strata_client.fastapi as strata_fastapi
from conftest import PASSWORD, StrataServer, unique_email
from strata_client import AsyncStrataClient, StrataClient, Unauthorized, User
from strata_client.fastapi import Authenticated, StrataAuth


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Credentials(BaseModel):
    email: str
    password: str


def user_json(user: User | None) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": str(user.id), "email": user.email, "is_superuser": user.is_superuser}


def make_app(auth: StrataAuth, *, close: list[Any] | None = None) -> FastAPI:
    """What an app written for fastapi-users looks like after the switch."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await auth.aclose()
        for closable in close or []:
            await closable.aclose()

    app = FastAPI(lifespan=lifespan)
    current_active_user = auth.current_user(active=True)
    current_superuser = auth.current_user(active=True, superuser=True)
    current_verified_user = auth.current_user(verified=True)
    optional_user = auth.current_user(optional=True)
    current_session = auth.current_session()

    @app.post("/auth/login")
    async def login(credentials: Credentials) -> dict[str, Any]:
        try:
            result = await auth.client.login(credentials.email, credentials.password)
        except Unauthorized:
            raise HTTPException(400, "LOGIN_BAD_CREDENTIALS") from None
        return {"access_token": result.token, "token_type": "bearer"}  # fastapi-users' BearerResponse

    @app.post("/auth/logout", status_code=204)
    async def logout(session: Authenticated = Depends(current_session)) -> None:
        await auth.logout(session.token)

    @app.get("/me")
    async def me(user: User = Depends(current_active_user)) -> Any:
        return user_json(user)

    @app.get("/admin")
    async def admin_only(user: User = Depends(current_superuser)) -> Any:
        return user_json(user)

    @app.get("/verified")
    async def verified_only(user: User = Depends(current_verified_user)) -> Any:
        return user_json(user)

    @app.get("/maybe")
    async def maybe(user: User | None = Depends(optional_user)) -> Any:
        return user_json(user)

    return app


class CountingStrata:
    """A StrataAuth whose calls to Strata are counted, on a manual clock."""

    def __init__(self, strata: StrataServer, ttl: float) -> None:
        self.calls = 0
        self.clock = ManualClock()

        async def count(request: httpx.Request) -> None:
            if request.url.path == "/v1/sessions/current":
                self.calls += 1

        self.http = httpx.AsyncClient(event_hooks={"request": [count]})
        self.auth = StrataAuth(
            client=AsyncStrataClient(strata.url, http_client=self.http), cache_ttl=ttl, clock=self.clock
        )

    def app(self) -> FastAPI:
        return make_app(self.auth, close=[self.http])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def account(anonymous: StrataClient) -> User:
    return anonymous.create_user(unique_email("fastapi"), "Fast Api", PASSWORD)


def login(client: TestClient, user: User) -> str:
    answer = client.post("/auth/login", json={"email": user.email, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture
def uncached(strata: StrataServer) -> Iterator[TestClient]:
    """The app with the cache off: every request asks Strata."""
    with TestClient(make_app(StrataAuth(strata.url, cache_ttl=0))) as client:
        yield client


def test_login_who_am_i_and_logout_through_the_app(strata: StrataServer, account: User) -> None:
    counting = CountingStrata(strata, ttl=5)
    with TestClient(counting.app()) as client:
        assert client.post("/auth/login", json={"email": account.email, "password": "wrong!"}).status_code == 400
        token = login(client, account)
        for _ in range(3):
            me = client.get("/me", headers=bearer(token))
            assert me.status_code == 200
            assert me.json() == {"id": str(account.id), "email": account.email, "is_superuser": False}
        assert counting.calls == 1  # the other two came from the cache

        assert client.post("/auth/logout", headers=bearer(token)).status_code == 204
        # Logging out through the app takes effect at once, TTL or not (the clock stood still).
        answer = client.get("/me", headers=bearer(token))
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    with StrataClient(strata.url, token) as dead, pytest.raises(Unauthorized):
        dead.current_session()  # and at Strata too


def test_revocation_at_strata_reaches_the_app_within_the_ttl(
    strata: StrataServer, admin: StrataClient, account: User
) -> None:
    counting = CountingStrata(strata, ttl=5)
    with TestClient(counting.app()) as client:
        token = login(client, account)
        assert client.get("/me", headers=bearer(token)).status_code == 200

        # An admin disables the account: Strata revokes every session of it at once.
        admin.update_user(account.id, if_match=admin.get_user(account.id), status="disabled")
        with StrataClient(strata.url, token) as revoked, pytest.raises(Unauthorized):
            revoked.current_session()

        counting.clock.now += 4.9  # inside the TTL the app still trusts its cached answer
        assert client.get("/me", headers=bearer(token)).status_code == 200
        counting.clock.now += 0.1  # the TTL is the bound
        assert client.get("/me", headers=bearer(token)).status_code == 401
        assert counting.calls == 2


def test_with_the_cache_off_revocations_are_seen_at_once(
    uncached: TestClient, admin: StrataClient, anonymous: StrataClient, account: User
) -> None:
    token = login(uncached, account)
    assert uncached.get("/admin", headers=bearer(token)).status_code == 403
    promoted = admin.update_user(account.id, if_match=admin.get_user(account.id), role="admin")
    assert isinstance(promoted, User) and promoted.is_superuser
    assert uncached.get("/admin", headers=bearer(token)).json()["is_superuser"] is True

    # Logout elsewhere (another client of the same session).
    anonymous.with_token(token).logout()
    assert uncached.get("/me", headers=bearer(token)).status_code == 401

    # Deletion of the account ends its other sessions.
    other = login(uncached, account)
    assert uncached.get("/me", headers=bearer(other)).status_code == 200
    admin.delete_user(account.id)
    assert uncached.get("/me", headers=bearer(other)).status_code == 401


def test_refusals_answer_as_fastapi_users_does(uncached: TestClient, account: User) -> None:
    missing = uncached.get("/me")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert uncached.get("/me", headers={"Authorization": "Basic YTpi"}).status_code == 401
    for bad in ("st_" + "A" * 43, "not a token at all", "x" * 600):
        answer = uncached.get("/me", headers=bearer(bad))
        assert answer.status_code == 401, bad
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    token = login(uncached, account)
    assert uncached.get("/admin", headers=bearer(token)).status_code == 403  # not an admin
    assert uncached.get("/verified", headers=bearer(token)).status_code == 403  # not verified
    assert uncached.get("/maybe").json() is None
    assert uncached.get("/maybe", headers=bearer("st_" + "A" * 43)).json() is None
    assert uncached.get("/maybe", headers=bearer(token)).json()["email"] == account.email


def test_strata_unreachable_is_503_not_401(anonymous: StrataClient, account: User) -> None:
    token = anonymous.login(account.email, PASSWORD).token
    assert token
    with TestClient(make_app(StrataAuth("http://127.0.0.1:9", cache_ttl=0, timeout=2))) as client:
        answer = client.get("/me", headers=bearer(token))
    assert answer.status_code == 503


def test_the_apps_openapi_document_declares_the_bearer_scheme(uncached: TestClient) -> None:
    document = uncached.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["StrataBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A Strata session token (`st_…`) from `POST /v1/sessions`.",
    }
    assert document["paths"]["/me"]["get"]["security"] == [{"StrataBearer": []}]


def test_the_module_level_dependencies_use_the_configured_default(
    strata: StrataServer, admin: StrataClient, anonymous: StrataClient, account: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unconfigured, the default comes from STRATA_URL.
    monkeypatch.setattr(strata_fastapi, "_default", None)
    monkeypatch.setenv("STRATA_URL", strata.url)
    monkeypatch.setenv("STRATA_AUTH_CACHE_TTL", "0")
    default = strata_fastapi.default_auth()
    assert default.client.base_url == strata.url and default.cache.ttl == 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await strata_fastapi.default_auth().aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/me")
    async def me(user: User = Depends(strata_fastapi.current_user)) -> Any:
        return user_json(user)

    @app.get("/active")
    async def active(user: User = Depends(strata_fastapi.current_active_user)) -> Any:
        return user_json(user)

    @app.get("/admin")
    async def admin_only(user: User = Depends(strata_fastapi.current_superuser)) -> Any:
        return user_json(user)

    token = anonymous.login(account.email, PASSWORD).token
    assert token
    with TestClient(app) as client:
        assert client.get("/me", headers=bearer(token)).json()["email"] == account.email
        assert client.get("/active", headers=bearer(token)).status_code == 200
        assert client.get("/admin", headers=bearer(token)).status_code == 403
        assert client.get("/me").status_code == 401

    # configure() replaces it.
    configured = strata_fastapi.configure(strata.url, cache_ttl=3)
    assert strata_fastapi.default_auth() is configured and configured.cache.ttl == 3
