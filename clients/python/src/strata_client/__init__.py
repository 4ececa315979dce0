"""Typed Python client for Strata, the account and authentication service.

    from strata_client import StrataClient

    with StrataClient("http://127.0.0.1:8080") as strata:
        strata.create_user("ada@example.com", "Ada Lovelace", "correct horse battery")
        session = strata.login("ada@example.com", "correct horse battery")
        me = strata.with_token(session.token).current_session().user

:class:`StrataClient` (sync) and :class:`AsyncStrataClient` (async) cover every /v1
operation; errors are :mod:`strata_client.errors` exceptions carrying Strata's ``code`` and
``field``. Framework drop-ins live in :mod:`strata_client.fastapi` and
:mod:`strata_client.django` (import them explicitly; neither framework is a dependency).
"""

from ._async import AsyncStrataClient
from ._operations import OPERATIONS, UNSET, HasVersion, Id, IfMatch, Unset
from ._sync import StrataClient
from ._version import __version__
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    MfaRequired,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
    ProblemError,
    ServerError,
    ServiceUnavailable,
    StrataError,
    TooManyRequests,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    ValidationError,
)
from .models import (
    EVENT_TYPES,
    Accepted,
    AuditEntry,
    Delivery,
    DeliveryAttempt,
    DeliveryDetail,
    EmailChangePending,
    Group,
    GroupRef,
    Health,
    LoginResult,
    Member,
    Page,
    ProvisioningToken,
    Role,
    Session,
    TotpEnrolment,
    User,
    UserSession,
    UserStatus,
    Webhook,
    WhoAmI,
)

__all__ = [
    "EVENT_TYPES",
    "OPERATIONS",
    "UNSET",
    "Accepted",
    "AsyncStrataClient",
    "AuditEntry",
    "BadRequest",
    "Conflict",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryDetail",
    "EmailChangePending",
    "Forbidden",
    "Group",
    "GroupRef",
    "HasVersion",
    "Health",
    "Id",
    "IfMatch",
    "LoginResult",
    "Member",
    "MethodNotAllowed",
    "MfaRequired",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PreconditionRequired",
    "ProblemError",
    "ProvisioningToken",
    "Role",
    "ServerError",
    "ServiceUnavailable",
    "Session",
    "StrataClient",
    "StrataError",
    "TooManyRequests",
    "TotpEnrolment",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "Unset",
    "UnsupportedMediaType",
    "User",
    "UserSession",
    "UserStatus",
    "ValidationError",
    "Webhook",
    "WhoAmI",
    "__version__",
]
