"""Every /v1 operation as a request description, shared by the sync and the async client.

A builder turns typed arguments into a :class:`Call`: method, path, query, headers, JSON body
and the function that reads a successful answer. The clients only send calls, so the two of
them cannot drift apart in what they put on the wire. :data:`OPERATIONS` maps each
``(method, path template)`` of the OpenAPI document to the builder (and client method) of the
same name; a test fails when the server's document has a /v1 operation missing from it.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import httpx

from .models import (
    Accepted,
    AuditEntry,
    Delivery,
    DeliveryDetail,
    EmailChangePending,
    Group,
    Health,
    LoginResult,
    Member,
    Page,
    ProvisioningToken,
    Role,
    TotpEnrolment,
    User,
    UserSession,
    UserStatus,
    Webhook,
    WhoAmI,
    _as_obj,
    _int,
    _list,
    recovery_codes_from_json,
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class HasVersion(Protocol):
    """Anything with a ``version``: a :class:`User` or :class:`Group` read earlier."""

    @property
    def version(self) -> int: ...


#: An If-Match precondition: the version number, or the resource read earlier.
IfMatch = int | HasVersion

#: What identifies a resource in a path: its UUID, or the UUID as text.
Id = uuid.UUID | str


class Unset(enum.Enum):
    """Marks a PATCH field that is left out, where ``None`` means "clear it"."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    has_body: bool = False


#: (method, OpenAPI path template) → the name of the builder and client method.
OPERATIONS: dict[tuple[str, str], str] = {}


def operation(method: str, template: str) -> Callable[[F], F]:
    def register(builder: F) -> F:
        OPERATIONS[(method, template)] = builder.__name__
        return builder

    return register


# --- helpers -----------------------------------------------------------------------------------


def _segment(value: Id) -> str:
    # Quoted without exceptions: an id with a "/" or ".." must not reach another route.
    return quote(str(value), safe="")


def _if_match(version: IfMatch | None) -> dict[str, str]:
    if version is None:
        return {}
    number = version if isinstance(version, int) else version.version
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError("if_match takes a version number or an object with a version")
    return {"If-Match": f'"{number}"'}


def _query(**values: object) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            query[key] = "true" if value else "false"
        elif isinstance(value, datetime):
            query[key] = _timestamp(value)
        else:
            query[key] = str(value)
    return query


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps sent to Strata must be timezone-aware")
    return value.isoformat()


def _body(**values: object) -> dict[str, object]:
    """The JSON object of the values given; ``None`` and :data:`UNSET` are left out."""
    return {key: value for key, value in values.items() if value is not None and value is not UNSET}


def _json(response: httpx.Response) -> Mapping[str, Any]:
    value = response.json()
    if not isinstance(value, dict):
        raise ValueError("the body is not a JSON object")
    return value


def _reader(parse: Callable[[Mapping[str, Any]], T]) -> Callable[[httpx.Response], T]:
    return lambda response: parse(_json(response))


def _page(parse: Callable[[Mapping[str, Any]], T]) -> Callable[[httpx.Response], Page[T]]:
    return lambda response: Page.from_json(_json(response), parse)


def _items(parse: Callable[[Mapping[str, Any]], T]) -> Callable[[httpx.Response], list[T]]:
    return lambda response: _list(_json(response), "items", lambda item: parse(_as_obj(item)))


def _nothing(response: httpx.Response) -> None:
    return None


def _user_or_pending(response: httpx.Response) -> User | EmailChangePending:
    if response.status_code == 202:
        return EmailChangePending.from_json(_json(response))
    return User.from_json(_json(response))


def _post(path: str, read: Callable[[httpx.Response], T], body: object = None, **kw: Any) -> Call[T]:
    return Call("POST", path, read, json=body, has_body=body is not None, **kw)


# --- health (not /v1, but what a client checks first) -------------------------------------------


def health() -> Call[Health]:
    return Call("GET", "/healthz", _reader(Health.from_json))


def ready() -> Call[Health]:
    return Call("GET", "/readyz", _reader(Health.from_json))


# --- users -------------------------------------------------------------------------------------


@operation("POST", "/v1/users")
def create_user(email: str, name: str, password: str, *, idempotency_key: str | None = None) -> Call[User]:
    headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
    return _post(
        "/v1/users", _reader(User.from_json), _body(email=email, name=name, password=password), headers=headers
    )


@operation("GET", "/v1/users/{id}")
def get_user(user_id: Id) -> Call[User]:
    return Call("GET", f"/v1/users/{_segment(user_id)}", _reader(User.from_json))


@operation("PATCH", "/v1/users/{id}")
def update_user(
    user_id: Id,
    *,
    if_match: IfMatch,
    name: str | None = None,
    email: str | None = None,
    password: str | None = None,
    current_password: str | None = None,
    role: Role | None = None,
    status: UserStatus | None = None,
) -> Call[User | EmailChangePending]:
    body = _body(name=name, email=email, password=password, current_password=current_password, role=role, status=status)
    return Call(
        "PATCH",
        f"/v1/users/{_segment(user_id)}",
        _user_or_pending,
        headers=_if_match(if_match),
        json=body,
        has_body=True,
    )


@operation("DELETE", "/v1/users/{id}")
def delete_user(user_id: Id, *, if_match: IfMatch | None = None) -> Call[None]:
    return Call("DELETE", f"/v1/users/{_segment(user_id)}", _nothing, headers=_if_match(if_match))


@operation("GET", "/v1/users/{id}/sessions")
def user_sessions(user_id: Id) -> Call[list[UserSession]]:
    def parse(response: httpx.Response) -> list[UserSession]:
        body = response.json()
        return [UserSession.from_json(item) for item in body["items"]]

    return Call("GET", f"/v1/users/{_segment(user_id)}/sessions", parse)


@operation("DELETE", "/v1/users/{id}/sessions")
def revoke_user_sessions(user_id: Id, *, if_match: IfMatch | None = None) -> Call[int]:
    def parse(response: httpx.Response) -> int:
        return int(response.json()["revoked"])

    return Call("DELETE", f"/v1/users/{_segment(user_id)}/sessions", parse, headers=_if_match(if_match))


@operation("GET", "/v1/users")
def list_users(*, limit: int | None = None, cursor: str | None = None, email: str | None = None) -> Call[Page[User]]:
    return Call("GET", "/v1/users", _page(User.from_json), params=_query(limit=limit, cursor=cursor, email=email))


# --- sessions ----------------------------------------------------------------------------------


@operation("POST", "/v1/sessions")
def login(email: str, password: str) -> Call[LoginResult]:
    return _post("/v1/sessions", _reader(LoginResult.from_json), _body(email=email, password=password))


@operation("POST", "/v1/sessions/mfa")
def complete_mfa_login(challenge: str, code: str) -> Call[LoginResult]:
    return _post("/v1/sessions/mfa", _reader(LoginResult.from_json), _body(challenge=challenge, code=code))


@operation("GET", "/v1/sessions/current")
def current_session(*, include_groups: bool = False) -> Call[WhoAmI]:
    params = {"include": "groups"} if include_groups else {}
    return Call("GET", "/v1/sessions/current", _reader(WhoAmI.from_json), params=params)


@operation("DELETE", "/v1/sessions/current")
def logout() -> Call[None]:
    return Call("DELETE", "/v1/sessions/current", _nothing)


# --- MFA (TOTP) --------------------------------------------------------------------------------


@operation("POST", "/v1/users/{id}/mfa/totp")
def start_totp(user_id: Id, current_password: str) -> Call[TotpEnrolment]:
    return _post(
        f"/v1/users/{_segment(user_id)}/mfa/totp",
        _reader(TotpEnrolment.from_json),
        _body(current_password=current_password),
    )


@operation("POST", "/v1/users/{id}/mfa/totp/confirm")
def confirm_totp(user_id: Id, code: str) -> Call[list[str]]:
    return _post(f"/v1/users/{_segment(user_id)}/mfa/totp/confirm", _reader(recovery_codes_from_json), _body(code=code))


@operation("POST", "/v1/users/{id}/mfa/totp/recovery-codes")
def regenerate_recovery_codes(user_id: Id, code: str) -> Call[list[str]]:
    return _post(
        f"/v1/users/{_segment(user_id)}/mfa/totp/recovery-codes", _reader(recovery_codes_from_json), _body(code=code)
    )


@operation("DELETE", "/v1/users/{id}/mfa/totp")
def disable_totp(user_id: Id, code: str | None = None) -> Call[None]:
    # Without a code it is the admin's audited MFA reset; the user themself must send one.
    return Call(
        "DELETE",
        f"/v1/users/{_segment(user_id)}/mfa/totp",
        _nothing,
        json=None if code is None else _body(code=code),
        has_body=code is not None,
    )


# --- email verification and email changes ------------------------------------------------------


@operation("POST", "/v1/users/{id}/verification")
def request_verification(user_id: Id) -> Call[Accepted]:
    return _post(f"/v1/users/{_segment(user_id)}/verification", _reader(Accepted.from_json))


@operation("POST", "/v1/verifications")
def confirm_verification(token: str) -> Call[User]:
    return _post("/v1/verifications", _reader(User.from_json), _body(token=token))


@operation("POST", "/v1/email-changes/confirm")
def confirm_email_change(token: str) -> Call[User]:
    return _post("/v1/email-changes/confirm", _reader(User.from_json), _body(token=token))


# --- password resets ---------------------------------------------------------------------------


@operation("POST", "/v1/password-resets")
def request_password_reset(email: str) -> Call[Accepted]:
    return _post("/v1/password-resets", _reader(Accepted.from_json), _body(email=email))


@operation("POST", "/v1/password-resets/confirm")
def confirm_password_reset(token: str, new_password: str) -> Call[None]:
    return _post("/v1/password-resets/confirm", _nothing, _body(token=token, new_password=new_password))


# --- audit -------------------------------------------------------------------------------------


@operation("GET", "/v1/audit")
def list_audit(
    *,
    user_id: Id | None = None,
    event_type: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[AuditEntry]]:
    params = _query(user_id=user_id, type=event_type, since=since, limit=limit, cursor=cursor)
    return Call("GET", "/v1/audit", _page(AuditEntry.from_json), params=params)


# --- groups ------------------------------------------------------------------------------------


@operation("POST", "/v1/groups")
def create_group(
    display_name: str, *, external_id: str | None = None, members: Sequence[Id] | None = None
) -> Call[Group]:
    body = _body(
        display_name=display_name,
        external_id=external_id,
        members=None if members is None else [str(m) for m in members],
    )
    return _post("/v1/groups", _reader(Group.from_json), body)


@operation("GET", "/v1/groups")
def list_groups(
    *,
    limit: int | None = None,
    cursor: str | None = None,
    display_name: str | None = None,
    external_id: str | None = None,
) -> Call[Page[Group]]:
    params = _query(limit=limit, cursor=cursor, display_name=display_name, external_id=external_id)
    return Call("GET", "/v1/groups", _page(Group.from_json), params=params)


@operation("GET", "/v1/groups/{id}")
def get_group(group_id: Id) -> Call[Group]:
    return Call("GET", f"/v1/groups/{_segment(group_id)}", _reader(Group.from_json))


@operation("PATCH", "/v1/groups/{id}")
def update_group(
    group_id: Id,
    *,
    if_match: IfMatch,
    display_name: str | None = None,
    external_id: str | Unset | None = UNSET,
) -> Call[Group]:
    body: dict[str, object] = _body(display_name=display_name)
    if external_id is not UNSET:
        body["external_id"] = external_id  # None is sent as null: it clears the external id
    return Call(
        "PATCH",
        f"/v1/groups/{_segment(group_id)}",
        _reader(Group.from_json),
        headers=_if_match(if_match),
        json=body,
        has_body=True,
    )


@operation("DELETE", "/v1/groups/{id}")
def delete_group(group_id: Id, *, if_match: IfMatch | None = None) -> Call[None]:
    return Call("DELETE", f"/v1/groups/{_segment(group_id)}", _nothing, headers=_if_match(if_match))


@operation("GET", "/v1/groups/{id}/members")
def list_group_members(group_id: Id, *, limit: int | None = None, cursor: str | None = None) -> Call[Page[Member]]:
    return Call(
        "GET",
        f"/v1/groups/{_segment(group_id)}/members",
        _page(Member.from_json),
        params=_query(limit=limit, cursor=cursor),
    )


@operation("POST", "/v1/groups/{id}/members")
def add_group_members(group_id: Id, user_ids: Sequence[Id], *, if_match: IfMatch | None = None) -> Call[Group]:
    return _post(
        f"/v1/groups/{_segment(group_id)}/members",
        _reader(Group.from_json),
        {"user_ids": [str(u) for u in user_ids]},
        headers=_if_match(if_match),
    )


@operation("DELETE", "/v1/groups/{id}/members/{user_id}")
def remove_group_member(group_id: Id, user_id: Id, *, if_match: IfMatch | None = None) -> Call[None]:
    return Call(
        "DELETE",
        f"/v1/groups/{_segment(group_id)}/members/{_segment(user_id)}",
        _nothing,
        headers=_if_match(if_match),
    )


# --- provisioning tokens (SCIM clients) --------------------------------------------------------


@operation("POST", "/v1/provisioning-tokens")
def create_provisioning_token(name: str) -> Call[ProvisioningToken]:
    return _post("/v1/provisioning-tokens", _reader(ProvisioningToken.from_json), _body(name=name))


@operation("GET", "/v1/provisioning-tokens")
def list_provisioning_tokens() -> Call[list[ProvisioningToken]]:
    return Call("GET", "/v1/provisioning-tokens", _items(ProvisioningToken.from_json))


@operation("DELETE", "/v1/provisioning-tokens/{id}")
def revoke_provisioning_token(token_id: Id) -> Call[None]:
    return Call("DELETE", f"/v1/provisioning-tokens/{_segment(token_id)}", _nothing)


# --- webhooks ----------------------------------------------------------------------------------


@operation("POST", "/v1/webhooks")
def create_webhook(
    url: str, events: Sequence[str], *, description: str | None = None, rate_limit: int | None = None
) -> Call[Webhook]:
    body = _body(url=url, events=list(events), description=description, rate_limit=rate_limit)
    return _post("/v1/webhooks", _reader(Webhook.from_json), body)


@operation("GET", "/v1/webhooks")
def list_webhooks() -> Call[list[Webhook]]:
    return Call("GET", "/v1/webhooks", _items(Webhook.from_json))


@operation("GET", "/v1/webhooks/{id}")
def get_webhook(webhook_id: Id) -> Call[Webhook]:
    return Call("GET", f"/v1/webhooks/{_segment(webhook_id)}", _reader(Webhook.from_json))


@operation("PATCH", "/v1/webhooks/{id}")
def update_webhook(
    webhook_id: Id,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    description: str | None = None,
    rate_limit: int | None = None,
    enabled: bool | None = None,
) -> Call[Webhook]:
    body = _body(
        url=url,
        events=None if events is None else list(events),
        description=description,
        rate_limit=rate_limit,
        enabled=enabled,
    )
    return Call("PATCH", f"/v1/webhooks/{_segment(webhook_id)}", _reader(Webhook.from_json), json=body, has_body=True)


@operation("DELETE", "/v1/webhooks/{id}")
def delete_webhook(webhook_id: Id) -> Call[None]:
    return Call("DELETE", f"/v1/webhooks/{_segment(webhook_id)}", _nothing)


@operation("POST", "/v1/webhooks/{id}/rotate-secret")
def rotate_webhook_secret(webhook_id: Id) -> Call[Webhook]:
    return _post(f"/v1/webhooks/{_segment(webhook_id)}/rotate-secret", _reader(Webhook.from_json))


@operation("GET", "/v1/webhooks/{id}/deliveries")
def list_webhook_deliveries(
    webhook_id: Id, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
) -> Call[Page[Delivery]]:
    return Call(
        "GET",
        f"/v1/webhooks/{_segment(webhook_id)}/deliveries",
        _page(Delivery.from_json),
        params=_query(status=status, limit=limit, cursor=cursor),
    )


@operation("GET", "/v1/webhooks/{id}/deliveries/{delivery_id}")
def get_webhook_delivery(webhook_id: Id, delivery_id: Id) -> Call[DeliveryDetail]:
    return Call(
        "GET",
        f"/v1/webhooks/{_segment(webhook_id)}/deliveries/{_segment(delivery_id)}",
        _reader(DeliveryDetail.from_json),
    )


@operation("POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/replay")
def replay_webhook_delivery(webhook_id: Id, delivery_id: Id) -> Call[None]:
    return _post(f"/v1/webhooks/{_segment(webhook_id)}/deliveries/{_segment(delivery_id)}/replay", _nothing)


@operation("POST", "/v1/webhooks/{id}/replay")
def replay_failed_webhook_deliveries(webhook_id: Id, since: datetime) -> Call[int]:
    return _post(
        f"/v1/webhooks/{_segment(webhook_id)}/replay",
        _reader(lambda data: _int(data, "replayed")),
        {"since": _timestamp(since)},
    )
