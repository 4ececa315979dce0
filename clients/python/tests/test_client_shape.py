"""What can be checked without a server: the two clients' shapes, the wire format of calls,
error mapping, answer parsing and the token cache."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import strata_client
from strata_client import (
    OPERATIONS,
    AsyncStrataClient,
    BadRequest,
    MfaRequired,
    NotFound,
    PreconditionFailed,
    ProblemError,
    ServerError,
    ServiceUnavailable,
    StrataClient,
    TooManyRequests,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    ValidationError,
)
from strata_client import _operations as ops
from strata_client._auth import TokenCache, plausible_token, token_fingerprint
from strata_client.models import parse_timestamp

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src" / "strata_client"

USER_JSON: dict[str, Any] = {
    "id": "01a24baf-275f-760f-b0ac-ec2b4335b97e",
    "email": "ada@example.com",
    "name": "Ada",
    "role": "user",
    "status": "active",
    "verified": False,
    "mfa_enabled": False,
    "version": 3,
    "created_at": "2026-12-06T14:08:19.807441Z",
    "updated_at": "2026-12-06T14:08:19.807441Z",
}


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_async", HERE.parent / "scripts" / "generate_async.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_async_client_is_generated_from_the_sync_one() -> None:
    generator = _load_generator()
    expected = generator.generate((SOURCE / "_sync.py").read_text())
    assert (SOURCE / "_async.py").read_text() == expected, "run: python scripts/generate_async.py"


def test_the_installed_package_is_this_source_and_typed() -> None:
    installed = Path(strata_client.__file__).resolve().parent
    for name in ("_sync.py", "_async.py", "_operations.py", "models.py", "errors.py"):
        assert (installed / name).read_text() == (SOURCE / name).read_text(), f"stale install of {name}"
    assert (installed / "py.typed").exists()


def _public_methods(cls: type) -> dict[str, Any]:
    return {name: member for name, member in vars(cls).items() if not name.startswith("_") and callable(member)}


def test_both_clients_have_every_registered_operation_with_the_same_parameters() -> None:
    sync_methods, async_methods = _public_methods(StrataClient), _public_methods(AsyncStrataClient)
    assert len(OPERATIONS) >= 39
    for name in OPERATIONS.values():
        assert name in sync_methods, f"StrataClient lacks {name}"
        assert name in async_methods, f"AsyncStrataClient lacks {name}"
        assert inspect.iscoroutinefunction(async_methods[name]), name
        assert not inspect.iscoroutinefunction(sync_methods[name]), name
        builder = getattr(ops, name)
        for method in (sync_methods[name], async_methods[name]):
            client_parameters = list(inspect.signature(method).parameters.values())[1:]
            assert client_parameters == list(inspect.signature(builder).parameters.values()), name
    for name, method in sync_methods.items():
        if name.startswith("iter_"):
            assert inspect.isgeneratorfunction(method), name
            assert inspect.isasyncgenfunction(async_methods[name]), name


def test_calls_put_versions_ids_and_optional_fields_on_the_wire() -> None:
    user_id = uuid.UUID(USER_JSON["id"])
    call = ops.update_user(user_id, if_match=7, name="Ada King")
    assert (call.method, call.path) == ("PATCH", f"/v1/users/{user_id}")
    assert call.headers == {"If-Match": '"7"'}
    assert call.json == {"name": "Ada King"}  # the fields not given are not sent as null

    class Read:
        version = 12

    assert ops.delete_group("g", if_match=Read()).headers == {"If-Match": '"12"'}
    assert ops.delete_group("g").headers == {}
    with pytest.raises(TypeError):
        ops.delete_user("u", if_match=True)

    # An id cannot climb to another route.
    assert ops.get_user("../sessions/current").path == "/v1/users/..%2Fsessions%2Fcurrent"

    assert ops.create_user("a@b.co", "A", "pw", idempotency_key="k1").headers == {"Idempotency-Key": "k1"}

    # external_id: left out keeps it, None clears it.
    assert ops.update_group("g", if_match=1, display_name="x").json == {"display_name": "x"}
    assert ops.update_group("g", if_match=1, external_id=None).json == {"external_id": None}

    # An admin's MFA reset has no body at all; the user's has the code.
    assert not ops.disable_totp("u").has_body
    assert ops.disable_totp("u", "123456").json == {"code": "123456"}

    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert ops.list_audit(since=since, event_type="user.created", limit=5).params == {
        "type": "user.created",
        "since": "2026-01-02T03:04:05+00:00",
        "limit": "5",
    }
    with pytest.raises(ValueError):
        ops.list_audit(since=datetime(2026, 1, 2))  # naive: which zone would it be?
    assert ops.current_session(include_groups=True).params == {"include": "groups"}


def _client(handler: Any) -> StrataClient:
    return StrataClient(
        "http://strata.test", "st_token", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def _problem(status: int, code: str, **extra: Any) -> httpx.Response:
    body = {"type": f"urn:strata:problem:{code}", "title": "T", "status": status, "detail": "D", "code": code}
    body.update(extra)
    return httpx.Response(
        status, headers={"content-type": "application/problem+json", "x-request-id": "rid-1"}, json=body
    )


@pytest.mark.parametrize(
    ("response", "cls", "code"),
    [
        (_problem(400, "invalid_uuid", field="id"), BadRequest, "invalid_uuid"),
        (_problem(401, "token_revoked", field="Authorization"), Unauthorized, "token_revoked"),
        (_problem(404, "not_found"), NotFound, "not_found"),
        (_problem(412, "version_mismatch", field="If-Match"), PreconditionFailed, "version_mismatch"),
        (_problem(422, "too_long", field="name"), ValidationError, "too_long"),
        (_problem(418, "teapot"), ProblemError, "teapot"),
        (httpx.Response(502, text="<html>bad gateway</html>"), ServerError, None),
    ],
)
def test_error_answers_become_exceptions_by_status(
    response: httpx.Response, cls: type[ProblemError], code: str | None
) -> None:
    with _client(lambda request: response) as client, pytest.raises(cls) as raised:
        client.get_user("x")
    assert type(raised.value) is cls
    assert raised.value.status == response.status_code
    assert raised.value.code == code
    if code is not None:
        assert raised.value.request_id == "rid-1"
        assert raised.value.title == "T" and raised.value.detail == "D"
    else:
        assert "bad gateway" in raised.value.detail


def test_mfa_required_carries_the_challenge_and_throttling_the_wait() -> None:
    challenge = "mfa_" + "a" * 96
    with (
        _client(lambda r: _problem(401, "mfa_required", challenge=challenge)) as client,
        pytest.raises(MfaRequired) as mfa,
    ):
        client.login("a@b.co", "pw")
    assert mfa.value.challenge == challenge and isinstance(mfa.value, Unauthorized)

    throttled = _problem(429, "too_many_attempts")
    throttled.headers["retry-after"] = "17"
    with _client(lambda r: throttled) as client, pytest.raises(TooManyRequests) as caught:
        client.login("a@b.co", "pw")
    assert caught.value.retry_after == 17.0

    with _client(lambda r: _problem(503, "overloaded")) as client, pytest.raises(ServiceUnavailable) as busy:
        client.login("a@b.co", "pw")
    assert busy.value.retry_after is None and isinstance(busy.value, ServerError)


def test_answers_parse_into_typed_models_and_ignore_new_fields() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=dict(USER_JSON, shoe_size=44), headers={"etag": '"3"'})

    with _client(handler) as client:
        user = client.get_user(USER_JSON["id"])
    assert user.id == uuid.UUID(USER_JSON["id"]) and user.version == 3
    assert user.created_at == datetime(2026, 12, 6, 14, 8, 19, 807441, tzinfo=timezone.utc)
    assert user.is_active and not user.is_superuser and not user.is_verified
    assert seen[0].headers["authorization"] == "Bearer st_token"
    assert seen[0].headers["user-agent"].startswith("strata-client-python/")


@pytest.mark.parametrize(
    "body", [{}, dict(USER_JSON, version="3"), dict(USER_JSON, id="nope"), dict(USER_JSON, created_at="yesterday")]
)
def test_an_undocumented_answer_is_an_unexpected_response(body: dict[str, Any]) -> None:
    with _client(lambda r: httpx.Response(200, json=body)) as client, pytest.raises(UnexpectedResponse):
        client.get_user("x")
    with _client(lambda r: httpx.Response(200, text="<html>")) as client, pytest.raises(UnexpectedResponse):
        client.get_user("x")


def test_transport_failures_are_transport_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with _client(refuse) as client, pytest.raises(TransportError) as caught:
        client.health()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_pagination_follows_cursors_until_the_last_page() -> None:
    pages = {None: ("c1", [1, 2]), "c1": ("c2", [3]), "c2": (None, [4, 5])}
    cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        cursors.append(cursor)
        next_cursor, numbers = pages[cursor]
        items = [dict(USER_JSON, version=n) for n in numbers]
        return httpx.Response(200, json={"items": items, "next_cursor": next_cursor})

    with _client(handler) as client:
        assert [u.version for u in client.iter_users(page_size=2)] == [1, 2, 3, 4, 5]
    assert cursors == [None, "c1", "c2"]


def test_timestamps_parse_with_any_fraction_and_offset() -> None:
    assert parse_timestamp("2026-12-06T14:08:19Z") == datetime(2026, 12, 6, 14, 8, 19, tzinfo=timezone.utc)
    assert parse_timestamp("2026-12-06T14:08:19.5+02:00") == datetime(
        2026, 12, 6, 12, 8, 19, 500000, tzinfo=timezone.utc
    )
    assert parse_timestamp("2026-12-06T14:08:19.1234567891Z").microsecond == 123456


def test_secrets_stay_out_of_reprs() -> None:
    client = StrataClient("http://strata.test", "st_secret")
    assert "st_secret" not in repr(client) and "st_secret" not in repr(client.with_token("st_other"))
    client.close()
    login = strata_client.LoginResult.from_json(
        {"token": "st_secret", "expires_at": USER_JSON["created_at"], "user": USER_JSON}
    )
    assert "st_secret" not in repr(login)


def test_base_urls_must_be_http() -> None:
    with pytest.raises(ValueError):
        StrataClient("strata.internal:8080")
    client = StrataClient("http://strata.internal:8080/prefix/")
    assert client.base_url == "http://strata.internal:8080/prefix"
    client.close()


# --- token cache ---------------------------------------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_expires_entries_after_the_ttl() -> None:
    clock = ManualClock()
    cache: TokenCache[str] = TokenCache(ttl=5, max_entries=10, clock=clock)
    cache.put("st_a", "ada")
    clock.now += 4.9
    assert cache.get("st_a") == "ada"
    clock.now += 0.1
    assert cache.get("st_a") is None and len(cache) == 0


def test_the_cache_never_outlives_a_shorter_entry_ttl_and_ttl_zero_stores_nothing() -> None:
    clock = ManualClock()
    cache: TokenCache[str] = TokenCache(ttl=5, clock=clock)
    cache.put("st_a", "ada", ttl=1)  # the session expires in a second
    clock.now += 1
    assert cache.get("st_a") is None
    off: TokenCache[str] = TokenCache(ttl=0, clock=clock)
    off.put("st_a", "ada")
    assert off.get("st_a") is None and len(off) == 0


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache: TokenCache[int] = TokenCache(ttl=60, max_entries=3, clock=ManualClock())
    for n in range(3):
        cache.put(f"st_{n}", n)
    assert cache.get("st_0") == 0  # now the most recently used
    cache.put("st_3", 3)
    assert len(cache) == 3
    assert cache.get("st_1") is None
    assert [cache.get(f"st_{n}") for n in (0, 2, 3)] == [0, 2, 3]


def test_the_cache_keeps_no_token_in_memory() -> None:
    cache: TokenCache[str] = TokenCache(ttl=60)
    cache.put("st_live_token_value", "ada")
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cache._entries)
    assert b"st_live_token_value" not in b"".join(cache._entries)
    assert token_fingerprint("st_live_token_value") not in "st_live_token_value"
    assert len(token_fingerprint("st_x")) == 8


def test_implausible_tokens_are_refused_without_asking() -> None:
    assert plausible_token("st_" + "a" * 43)
    assert not plausible_token("")
    assert not plausible_token("st_a b")
    assert not plausible_token("st_\x00")
    assert not plausible_token("x" * 513)


def test_models_are_frozen() -> None:
    user = strata_client.User.from_json(USER_JSON)
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.name = "Eve"  # type: ignore[misc]
    assert json.dumps(USER_JSON)  # the fixture itself is plain JSON
    assert user.created_at + timedelta(0) == user.updated_at
