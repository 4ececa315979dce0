"""Strata's problem+json answers, raised as exceptions with the status, code and field the
README's error table documents."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from conftest import PASSWORD, StrataServer, unique_email
from strata_client import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionRequired,
    ProblemError,
    StrataClient,
    TooManyRequests,
    TransportError,
    Unauthorized,
    User,
    ValidationError,
)
from strata_client import _operations as ops


def test_a_bad_email_names_the_field(anonymous: StrataClient) -> None:
    with pytest.raises(ValidationError) as raised:
        anonymous.create_user("not-an-email", "Ada", PASSWORD)
    error = raised.value
    assert (error.status, error.code, error.field) == (422, "invalid_email", "email")
    assert error.title and error.detail and error.request_id
    assert error.type == "urn:strata:problem:invalid_email"
    assert "invalid_email" in str(error) and "email" in str(error)


@pytest.mark.parametrize(
    ("name", "password", "code", "field"),
    [
        ("", PASSWORD, "required", "name"),
        ("Ada", "short", "too_short", "password"),
        ("x" * 101, PASSWORD, "too_long", "name"),
    ],
)
def test_invalid_fields_are_named(anonymous: StrataClient, name: str, password: str, code: str, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        anonymous.create_user(unique_email(), name, password)
    assert (raised.value.code, raised.value.field) == (code, field)


def test_conflicts_and_reused_idempotency_keys(anonymous: StrataClient, new_user: User) -> None:
    with pytest.raises(Conflict) as taken:
        anonymous.create_user(new_user.email, "Twin", PASSWORD)
    assert (taken.value.status, taken.value.code) == (409, "email_taken")

    key = f"reuse-{uuid.uuid4()}"
    anonymous.create_user(unique_email(), "First", PASSWORD, idempotency_key=key)
    with pytest.raises(ValidationError) as reused:
        anonymous.create_user(unique_email(), "Second", PASSWORD, idempotency_key=key)
    assert reused.value.code == "idempotency_key_reused"


def test_authentication_failures(anonymous: StrataClient, admin: StrataClient, new_user: User) -> None:
    with pytest.raises(Unauthorized) as wrong:
        anonymous.login(new_user.email, "wrong password!")
    assert wrong.value.code == "invalid_credentials"

    with pytest.raises(Unauthorized) as missing:
        anonymous.current_session()
    assert (missing.value.code, missing.value.field) == ("missing_token", "Authorization")

    with pytest.raises(Unauthorized) as unknown:
        anonymous.with_token("st_" + "A" * 43).current_session()
    assert unknown.value.code in ("invalid_token", "malformed_token")

    with pytest.raises(Unauthorized) as admin_token:
        admin.current_session()
    assert admin_token.value.code == "not_a_session"


def test_authorization_and_lookups(anonymous: StrataClient, admin: StrataClient, new_user: User) -> None:
    me = anonymous.with_token(anonymous.login(new_user.email, PASSWORD).token)
    with pytest.raises(Forbidden) as forbidden:
        me.list_users()
    assert forbidden.value.code == "forbidden"
    with pytest.raises(Forbidden):
        me.update_user(new_user.id, if_match=new_user, role="admin")

    with pytest.raises(NotFound) as missing:
        admin.get_user(uuid.uuid4())
    assert missing.value.code == "not_found"

    with pytest.raises(BadRequest) as malformed:
        admin.get_user("not-a-uuid")
    assert (malformed.value.code, malformed.value.field) == ("invalid_uuid", "id")

    with pytest.raises(BadRequest) as cursor:
        admin.list_users(cursor="A" * 23)
    assert cursor.value.field == "cursor"


def test_a_patch_without_if_match_is_refused(admin: StrataClient, new_user: User) -> None:
    # The client always sends If-Match on PATCH; the raw call shows what the server demands.
    call = dataclasses.replace(ops.update_user(new_user.id, if_match=new_user, name="No Match"), headers={})
    with pytest.raises(PreconditionRequired) as raised:
        admin.send(call)
    assert (raised.value.status, raised.value.code) == (428, "if_match_required")


def test_throttled_logins_say_when_to_come_back(anonymous: StrataClient, new_user: User) -> None:
    # The per-account throttle (5 failures per 5 minutes by default) is left as configured.
    with pytest.raises(TooManyRequests) as throttled:
        for _ in range(20):
            with pytest.raises(Unauthorized):
                anonymous.login(new_user.email, "wrong password!")
    assert throttled.value.code == "too_many_attempts"
    assert throttled.value.retry_after is not None and throttled.value.retry_after > 0
    assert isinstance(throttled.value, ProblemError)


def test_an_unreachable_server_is_a_transport_error() -> None:
    with StrataClient("http://127.0.0.1:9", timeout=2) as nowhere, pytest.raises(TransportError):
        nowhere.health()


def test_strata_is_up(admin: StrataClient, strata: StrataServer) -> None:
    assert admin.health().status == "ok"
    assert admin.ready().status == "ok"
