"""Exceptions raised by the Strata client.

Strata answers every error with an RFC 9457 ``application/problem+json`` body carrying a
stable ``code`` (see the error table in Strata's README) and, where one is at fault, the
``field``. :func:`error_from_response` turns such an answer into a :class:`ProblemError`
subclass chosen by the status, so callers can catch by kind (``except NotFound``) or branch on
``code`` (``if e.code == "email_taken"``).

Hierarchy::

    StrataError                     anything this package raises about talking to Strata
    ├── TransportError              Strata could not be reached, or the connection failed
    ├── UnexpectedResponse          a 2xx answer that is not what the API documents
    └── ProblemError                an error status, with status, code, field, detail, title
        ├── BadRequest              400
        ├── Unauthorized            401
        │   └── MfaRequired         401 mfa_required (carries the challenge)
        ├── Forbidden               403
        ├── NotFound                404
        ├── MethodNotAllowed        405
        ├── Conflict                409
        ├── PreconditionFailed      412 (a stale If-Match version)
        ├── PayloadTooLarge         413
        ├── UnsupportedMediaType    415
        ├── ValidationError         422
        ├── PreconditionRequired    428 (If-Match missing)
        ├── TooManyRequests         429 (retry_after)
        └── ServerError             5xx
            └── ServiceUnavailable  503 (retry_after)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "MethodNotAllowed",
    "MfaRequired",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PreconditionRequired",
    "ProblemError",
    "ServerError",
    "ServiceUnavailable",
    "StrataError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "ValidationError",
    "error_from_response",
]


class StrataError(Exception):
    """Base class of every exception this package raises about talking to Strata."""


class TransportError(StrataError):
    """Strata could not be reached or the exchange broke off (the httpx error is ``__cause__``).

    Whether a retry is safe depends on the operation: reads and requests sent with an
    ``Idempotency-Key`` are; other writes may have happened.
    """


class UnexpectedResponse(StrataError):
    """A successful status whose body is not what the API documents (a proxy's page, say)."""

    def __init__(self, message: str, *, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class ProblemError(StrataError):
    """Strata answered with an error status.

    ``code`` is Strata's stable machine-readable code (``None`` only when the body was not a
    problem document, e.g. from a proxy in between); ``field`` names the body field, header,
    path segment or query parameter at fault, when one is.
    """

    status: int
    code: str | None
    field: str | None
    title: str
    detail: str
    type: str | None
    request_id: str | None
    problem: Mapping[str, Any]

    def __init__(
        self,
        *,
        status: int,
        code: str | None,
        field: str | None = None,
        title: str = "",
        detail: str = "",
        type: str | None = None,
        request_id: str | None = None,
        problem: Mapping[str, Any] | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.field = field
        self.title = title
        self.detail = detail
        self.type = type
        self.request_id = request_id
        self.problem = problem if problem is not None else {}
        self.headers = headers if headers is not None else httpx.Headers()
        super().__init__(self._message())

    def _message(self) -> str:
        message = f"{self.status} {self.code or self.title or 'error'}"
        if self.field:
            message += f" ({self.field})"
        if self.detail:
            message += f": {self.detail}"
        return message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, field={self.field!r})"


class BadRequest(ProblemError):
    """400: the request could not be read (malformed JSON, a bad cursor or UUID…)."""


class Unauthorized(ProblemError):
    """401: no valid credentials (missing, expired or revoked token; wrong password…)."""


class MfaRequired(Unauthorized):
    """401 ``mfa_required``: the password was right and the account has TOTP on.

    Send :attr:`challenge` with a code to ``complete_mfa_login`` within five minutes.
    """

    @property
    def challenge(self) -> str:
        value = self.problem.get("challenge")
        return value if isinstance(value, str) else ""


class Forbidden(ProblemError):
    """403: authenticated, but not allowed (or the account is disabled / unverified)."""


class NotFound(ProblemError):
    """404: no such resource (or no such route)."""


class MethodNotAllowed(ProblemError):
    """405."""


class Conflict(ProblemError):
    """409: the state forbids it (``email_taken``, ``already_verified``, ``mfa_already_enabled``…)."""


class PreconditionFailed(ProblemError):
    """412 ``version_mismatch``: the If-Match version is stale; read the resource again."""


class PayloadTooLarge(ProblemError):
    """413."""


class UnsupportedMediaType(ProblemError):
    """415."""


class ValidationError(ProblemError):
    """422: a field's value was refused; ``field`` names it."""


class PreconditionRequired(ProblemError):
    """428 ``if_match_required``."""


class _RetryAfter(ProblemError):
    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before trying again, from ``Retry-After`` (``None`` if absent)."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            return None
        return seconds if seconds >= 0 else None


class TooManyRequests(_RetryAfter):
    """429 ``too_many_attempts``: throttled; see :attr:`retry_after`."""


class ServerError(_RetryAfter):
    """5xx: Strata could not answer; internals are in its log, never in the body."""


class ServiceUnavailable(ServerError):
    """503 ``overloaded`` / ``unavailable``: try again after :attr:`retry_after`."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    428: PreconditionRequired,
    429: TooManyRequests,
    503: ServiceUnavailable,
}


def _optional_str(problem: Mapping[str, Any], key: str) -> str | None:
    value = problem.get(key)
    return value if isinstance(value, str) else None


def error_from_response(response: httpx.Response) -> ProblemError:
    """The exception for an error answer, of the class its status (and code) calls for."""
    problem: Mapping[str, Any] = {}
    content_type = response.headers.get("content-type", "")
    if "json" in content_type:
        try:
            parsed = json.loads(response.content)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            problem = parsed
    status = response.status_code
    code = _optional_str(problem, "code")
    if status == 401 and code == "mfa_required":
        cls: type[ProblemError] = MfaRequired
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    else:
        cls = ProblemError
    return cls(
        status=status,
        code=code,
        field=_optional_str(problem, "field"),
        title=_optional_str(problem, "title") or response.reason_phrase,
        detail=_optional_str(problem, "detail") or ("" if problem else response.text[:200]),
        type=_optional_str(problem, "type"),
        request_id=response.headers.get("x-request-id"),
        problem=problem,
        headers=response.headers,
    )
