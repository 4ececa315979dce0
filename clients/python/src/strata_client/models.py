"""What Strata's /v1 answers look like, as frozen dataclasses.

Each ``from_json`` reads the documented fields and ignores any others, so a newer server that
adds fields does not break an older client; a documented field that is missing or of the wrong
type raises :class:`~strata_client.errors.UnexpectedResponse` instead of surfacing later as a
``KeyError``. Ids are :class:`uuid.UUID`, timestamps timezone-aware :class:`datetime.datetime`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "EVENT_TYPES",
    "Accepted",
    "AuditEntry",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryDetail",
    "EmailChangePending",
    "Group",
    "GroupRef",
    "Health",
    "LoginResult",
    "Member",
    "Page",
    "ProvisioningToken",
    "Role",
    "Session",
    "TotpEnrolment",
    "User",
    "UserStatus",
    "Webhook",
    "WhoAmI",
]

T = TypeVar("T")

Role = Literal["user", "admin"]
UserStatus = Literal["active", "disabled"]

#: The event types webhooks can subscribe to and the audit log can be filtered by.
EVENT_TYPES: tuple[str, ...] = (
    "user.created",
    "user.updated",
    "user.deleted",
    "session.created",
    "session.revoked",
    "login.failed",
    "login.throttled",
    "password_reset.requested",
    "email_verification.requested",
    "email_change.requested",
    "mfa.enabled",
    "mfa.disabled",
    "mfa.recovery_codes_regenerated",
    "mfa.recovery_code_used",
    "webhook.endpoint.disabled",
    "group.created",
    "group.updated",
    "group.deleted",
)


class _Malformed(Exception):
    """A documented field is missing or has the wrong type; the client reports it as
    UnexpectedResponse with the status and body it came with."""


# --- field readers -----------------------------------------------------------------------------


def _get(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise _Malformed(f"missing field {key!r}") from None


def _str(data: Mapping[str, Any], key: str) -> str:
    value = _get(data, key)
    if not isinstance(value, str):
        raise _Malformed(f"field {key!r} is not a string")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Malformed(f"field {key!r} is not a string")
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _get(data, key)
    # bool is an int subclass; a boolean where a number belongs is malformed.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"field {key!r} is not an integer")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    if data.get(key) is None:
        return None
    return _int(data, key)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = _get(data, key)
    if not isinstance(value, bool):
        raise _Malformed(f"field {key!r} is not a boolean")
    return value


def _uuid(data: Mapping[str, Any], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(_str(data, key))
    except ValueError:
        raise _Malformed(f"field {key!r} is not a UUID") from None


def _obj(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = _get(data, key)
    if not isinstance(value, dict):
        raise _Malformed(f"field {key!r} is not an object")
    return value


def _list(data: Mapping[str, Any], key: str, item: Callable[[Any], T]) -> list[T]:
    value = _get(data, key)
    if not isinstance(value, list):
        raise _Malformed(f"field {key!r} is not an array")
    return [item(element) for element in value]


def _as_obj(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed("an array element is not an object")
    return value


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Malformed("an array element is not a string")
    return value


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp as an aware datetime (Python 3.10's ``fromisoformat`` takes no ``Z``)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise _Malformed(f"{text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, offset_h, offset_m = match.groups()
    if zulu:
        tz = timezone.utc
    else:
        offset = timedelta(hours=int(offset_h), minutes=int(offset_m))
        tz = timezone(offset if sign == "+" else -offset)
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, tz)
    except ValueError:
        raise _Malformed(f"{text!r} is not a valid time") from None


def _time(data: Mapping[str, Any], key: str) -> datetime:
    return parse_timestamp(_str(data, key))


def _opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    text = _opt_str(data, key)
    return None if text is None else parse_timestamp(text)


# --- resources ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    """An account. ``version`` is also its ETag: pass the user (or the number) as ``if_match``."""

    id: uuid.UUID
    email: str
    name: str
    role: str
    status: str
    verified: bool
    mfa_enabled: bool
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> User:
        return cls(
            id=_uuid(data, "id"),
            email=_str(data, "email"),
            name=_str(data, "name"),
            role=_str(data, "role"),
            status=_str(data, "status"),
            verified=_bool(data, "verified"),
            mfa_enabled=_bool(data, "mfa_enabled"),
            version=_int(data, "version"),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
        )

    # fastapi-users' names, so code written against its user model keeps working.
    @property
    def is_active(self) -> bool:
        return self.status == "active"

    @property
    def is_superuser(self) -> bool:
        return self.role == "admin"

    @property
    def is_verified(self) -> bool:
        return self.verified


@dataclass(frozen=True, slots=True)
class Session:
    id: uuid.UUID
    created_at: datetime
    expires_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Session:
        return cls(id=_uuid(data, "id"), created_at=_time(data, "created_at"), expires_at=_time(data, "expires_at"))


@dataclass(frozen=True, slots=True)
class UserSession:
    """One session of a user as its owner or an admin sees it (never the token)."""

    id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool
    current: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UserSession:
        return cls(
            id=_uuid(data, "id"),
            created_at=_time(data, "created_at"),
            expires_at=_time(data, "expires_at"),
            revoked_at=_opt_time(data, "revoked_at"),
            active=_bool(data, "active"),
            current=_bool(data, "current"),
        )


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A group as who-am-I lists it."""

    id: uuid.UUID
    display_name: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupRef:
        return cls(id=_uuid(data, "id"), display_name=_str(data, "display_name"))


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """The answer of ``GET /v1/sessions/current``. ``groups`` is ``None`` unless asked for."""

    session: Session
    user: User
    groups: list[GroupRef] | None
    csrf_token: str | None = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WhoAmI:
        return cls(
            session=Session.from_json(_obj(data, "session")),
            user=User.from_json(_obj(data, "user")),
            groups=None if data.get("groups") is None else [GroupRef.from_json(_as_obj(g)) for g in data["groups"]],
            csrf_token=_opt_str(data, "csrf_token"),
        )


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A new session. ``token`` is shown this once; Strata keeps only its hash."""

    # Live credentials stay out of reprs, and so out of logs and tracebacks.
    token: str | None = field(repr=False)
    expires_at: datetime
    user: User
    csrf_token: str | None = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoginResult:
        return cls(
            token=_opt_str(data, "token"),
            expires_at=_time(data, "expires_at"),
            user=User.from_json(_obj(data, "user")),
            csrf_token=_opt_str(data, "csrf_token"),
        )


@dataclass(frozen=True, slots=True)
class EmailChangePending:
    """202 to a PATCH of your own email: nothing changed until the link mailed to
    ``pending_email`` is used (``confirm_email_change``)."""

    status: str
    pending_email: str
    expires_at: datetime
    user: User

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmailChangePending:
        return cls(
            status=_str(data, "status"),
            pending_email=_str(data, "pending_email"),
            expires_at=_time(data, "expires_at"),
            user=User.from_json(_obj(data, "user")),
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    """202 of a mail-sending request (password reset, verification): ``status`` is ``accepted``."""

    status: str
    detail: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Accepted:
        return cls(status=_str(data, "status"), detail=_str(data, "detail"))


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """A new TOTP secret, shown once; TOTP is off until ``confirm_totp`` with a code."""

    secret: str = field(repr=False)
    otpauth_uri: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TotpEnrolment:
        return cls(secret=_str(data, "secret"), otpauth_uri=_str(data, "otpauth_uri"))


def recovery_codes_from_json(data: Mapping[str, Any]) -> list[str]:
    return _list(data, "recovery_codes", _as_str)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry. ``actor`` is ``{"type": "user" | "admin" | "anonymous", "id": …}``."""

    id: uuid.UUID
    type: str
    subject: uuid.UUID
    actor: Mapping[str, Any]
    time: datetime
    data: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditEntry:
        return cls(
            id=_uuid(data, "id"),
            type=_str(data, "type"),
            subject=_uuid(data, "subject"),
            actor=_obj(data, "actor"),
            time=_time(data, "time"),
            data=_obj(data, "data"),
        )


@dataclass(frozen=True, slots=True)
class Group:
    """A group. ``version`` (its ETag) moves with every change, membership included."""

    id: uuid.UUID
    display_name: str
    external_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Group:
        return cls(
            id=_uuid(data, "id"),
            display_name=_str(data, "display_name"),
            external_id=_opt_str(data, "external_id"),
            version=_int(data, "version"),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
        )


@dataclass(frozen=True, slots=True)
class Member:
    user_id: uuid.UUID
    email: str
    name: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Member:
        return cls(user_id=_uuid(data, "user_id"), email=_str(data, "email"), name=_str(data, "name"))


@dataclass(frozen=True, slots=True)
class ProvisioningToken:
    """A SCIM client's credential. ``token`` is only set in the answer to its creation."""

    id: uuid.UUID
    name: str
    created_at: datetime
    revoked_at: datetime | None
    token: str | None = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProvisioningToken:
        return cls(
            id=_uuid(data, "id"),
            name=_str(data, "name"),
            created_at=_time(data, "created_at"),
            revoked_at=_opt_time(data, "revoked_at"),
            token=_opt_str(data, "token"),
        )


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook endpoint. ``secret`` is only set right after creation or rotation."""

    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    enabled: bool
    rate_limit: int
    created_at: datetime
    updated_at: datetime
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    secret: str | None = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Webhook:
        return cls(
            id=_uuid(data, "id"),
            url=_str(data, "url"),
            events=_list(data, "events", _as_str),
            description=_str(data, "description"),
            enabled=_bool(data, "enabled"),
            rate_limit=_int(data, "rate_limit"),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
            disabled_reason=_opt_str(data, "disabled_reason"),
            failing_since=_opt_time(data, "failing_since"),
            previous_secret_expires_at=_opt_time(data, "previous_secret_expires_at"),
            secret=_opt_str(data, "secret"),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one webhook endpoint; ``status`` is ``pending``, ``delivered`` or ``failed``."""

    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(**_delivery_fields(data))


def _delivery_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": _uuid(data, "id"),
        "event_id": _uuid(data, "event_id"),
        "event_type": _str(data, "event_type"),
        "status": _str(data, "status"),
        "attempts": _int(data, "attempts"),
        "created_at": _time(data, "created_at"),
        "updated_at": _time(data, "updated_at"),
        "next_attempt_at": _opt_time(data, "next_attempt_at"),
        "last_status": _opt_int(data, "last_status"),
        "last_error": _opt_str(data, "last_error"),
    }


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    attempt: int
    time: datetime
    duration_ms: int
    status: int | None
    error: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryAttempt:
        return cls(
            attempt=_int(data, "attempt"),
            time=_time(data, "time"),
            duration_ms=_int(data, "duration_ms"),
            status=_opt_int(data, "status"),
            error=_opt_str(data, "error"),
        )


@dataclass(frozen=True, slots=True)
class DeliveryDetail(Delivery):
    """A delivery with every attempt made."""

    attempt_log: list[DeliveryAttempt]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryDetail:
        return cls(
            **_delivery_fields(data),
            attempt_log=_list(data, "attempt_log", lambda a: DeliveryAttempt.from_json(_as_obj(a))),
        )


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list; pass ``next_cursor`` back for the next (``None``: last)."""

    items: list[T]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], item: Callable[[Mapping[str, Any]], T]) -> Page[T]:
        return cls(items=_list(data, "items", lambda i: item(_as_obj(i))), next_cursor=_opt_str(data, "next_cursor"))


@dataclass(frozen=True, slots=True)
class Health:
    status: str
    database: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        return cls(status=_str(data, "status"), database=_opt_str(data, "database"))
