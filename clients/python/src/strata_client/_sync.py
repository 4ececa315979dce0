"""The synchronous client. Keep in step with ``_async.py``: it is generated from this file."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import httpx

from . import _operations as ops
from ._base import DEFAULT_TIMEOUT, default_headers, normalise_base_url, read_answer, request_arguments
from ._operations import UNSET, Call, Id, IfMatch, Unset
from .errors import TransportError
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
)

T = TypeVar("T")


class StrataClient:
    """A synchronous client for Strata's /v1 API.

    ``token`` is sent as ``Authorization: Bearer`` on every call: the admin token, or a
    session token from :meth:`login`. :meth:`with_token` makes a client for another token that
    shares this one's connection pool (cheap; use it per end user). Errors are raised as
    :class:`~strata_client.errors.ProblemError` subclasses carrying Strata's ``code`` and
    ``field``; network failures as :class:`~strata_client.errors.TransportError`.

    Use it as a context manager, or call :meth:`close`, to release the connections.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self._token = token
        # Sent with every request rather than set on the httpx client, so they hold for a
        # client passed in as well.
        self._headers = default_headers(headers)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"StrataClient({self.base_url!r}, token={'<set>' if self._token else None})"

    def with_token(self, token: str | None) -> StrataClient:
        """A client for ``token`` over the same connections (closing it leaves them open)."""
        clone = StrataClient.__new__(StrataClient)
        clone.base_url = self.base_url
        clone._token = token
        clone._headers = self._headers
        clone._owns_http = False
        clone._http = self._http
        return clone

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> StrataClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(self, call: Call[T]) -> T:
        """Send one prepared call (see ``strata_client._operations``) and read its answer."""
        try:
            response = self._http.request(**request_arguments(self.base_url, self._headers, self._token, call))
        except httpx.HTTPError as error:
            raise TransportError(f"{call.method} {call.path}: {error}") from error
        return read_answer(call, response)

    # --- health ----------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /healthz``: the process is up."""
        return self.send(ops.health())

    def ready(self) -> Health:
        """``GET /readyz``: the instance can serve (its database answers); 503 raises."""
        return self.send(ops.ready())

    # --- users -----------------------------------------------------------------------------

    def create_user(self, email: str, name: str, password: str, *, idempotency_key: str | None = None) -> User:
        """Register an account. With an ``idempotency_key`` a retry returns the first answer."""
        return self.send(ops.create_user(email, name, password, idempotency_key=idempotency_key))

    def get_user(self, user_id: Id) -> User:
        return self.send(ops.get_user(user_id))

    def update_user(
        self,
        user_id: Id,
        *,
        if_match: IfMatch,
        name: str | None = None,
        email: str | None = None,
        password: str | None = None,
        current_password: str | None = None,
        role: Role | None = None,
        status: UserStatus | None = None,
    ) -> User | EmailChangePending:
        """Change a user; ``if_match`` is the version read (412 ``PreconditionFailed`` if stale).

        Your own email change answers :class:`EmailChangePending`: it applies once confirmed.
        """
        return self.send(
            ops.update_user(
                user_id,
                if_match=if_match,
                name=name,
                email=email,
                password=password,
                current_password=current_password,
                role=role,
                status=status,
            )
        )

    def delete_user(self, user_id: Id, *, if_match: IfMatch | None = None) -> None:
        return self.send(ops.delete_user(user_id, if_match=if_match))

    def user_sessions(self, user_id: Id) -> list[UserSession]:
        """A user's sessions, newest first (yourself, or anyone as an admin)."""
        return self.send(ops.user_sessions(user_id))

    def revoke_user_sessions(self, user_id: Id, *, if_match: IfMatch | None = None) -> int:
        """Ends every live session of a user; how many were ended."""
        return self.send(ops.revoke_user_sessions(user_id, if_match=if_match))

    def list_users(
        self, *, limit: int | None = None, cursor: str | None = None, email: str | None = None
    ) -> Page[User]:
        return self.send(ops.list_users(limit=limit, cursor=cursor, email=email))

    def iter_users(self, *, email: str | None = None, page_size: int | None = None) -> Iterator[User]:
        """Every user, in id order, fetching page after page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self.list_users(limit=page_size, cursor=cursor, email=email)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- sessions --------------------------------------------------------------------------

    def login(self, email: str, password: str) -> LoginResult:
        """A new session. Raises :class:`MfaRequired` (with ``challenge``) when TOTP is on."""
        return self.send(ops.login(email, password))

    def complete_mfa_login(self, challenge: str, code: str) -> LoginResult:
        return self.send(ops.complete_mfa_login(challenge, code))

    def current_session(self, *, include_groups: bool = False) -> WhoAmI:
        """Who the client's token belongs to."""
        return self.send(ops.current_session(include_groups=include_groups))

    def logout(self) -> None:
        """End the client's session; its token is dead afterwards."""
        return self.send(ops.logout())

    # --- MFA -------------------------------------------------------------------------------

    def start_totp(self, user_id: Id, current_password: str) -> TotpEnrolment:
        return self.send(ops.start_totp(user_id, current_password))

    def confirm_totp(self, user_id: Id, code: str) -> list[str]:
        """Turn TOTP on with a code from the app; returns ten recovery codes (shown once)."""
        return self.send(ops.confirm_totp(user_id, code))

    def regenerate_recovery_codes(self, user_id: Id, code: str) -> list[str]:
        return self.send(ops.regenerate_recovery_codes(user_id, code))

    def disable_totp(self, user_id: Id, code: str | None = None) -> None:
        """Turn TOTP off: the user with a code, or an admin without one (an audited reset)."""
        return self.send(ops.disable_totp(user_id, code))

    # --- email verification and email changes ----------------------------------------------

    def request_verification(self, user_id: Id) -> Accepted:
        return self.send(ops.request_verification(user_id))

    def confirm_verification(self, token: str) -> User:
        return self.send(ops.confirm_verification(token))

    def confirm_email_change(self, token: str) -> User:
        return self.send(ops.confirm_email_change(token))

    # --- password resets -------------------------------------------------------------------

    def request_password_reset(self, email: str) -> Accepted:
        return self.send(ops.request_password_reset(email))

    def confirm_password_reset(self, token: str, new_password: str) -> None:
        return self.send(ops.confirm_password_reset(token, new_password))

    # --- audit -----------------------------------------------------------------------------

    def list_audit(
        self,
        *,
        user_id: Id | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[AuditEntry]:
        return self.send(
            ops.list_audit(user_id=user_id, event_type=event_type, since=since, limit=limit, cursor=cursor)
        )

    def iter_audit(
        self,
        *,
        user_id: Id | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        page_size: int | None = None,
    ) -> Iterator[AuditEntry]:
        """The audit log, oldest first, page after page."""
        cursor: str | None = None
        while True:
            page = self.list_audit(user_id=user_id, event_type=event_type, since=since, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- groups ----------------------------------------------------------------------------

    def create_group(
        self, display_name: str, *, external_id: str | None = None, members: Sequence[Id] | None = None
    ) -> Group:
        return self.send(ops.create_group(display_name, external_id=external_id, members=members))

    def list_groups(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        display_name: str | None = None,
        external_id: str | None = None,
    ) -> Page[Group]:
        return self.send(
            ops.list_groups(limit=limit, cursor=cursor, display_name=display_name, external_id=external_id)
        )

    def iter_groups(
        self, *, display_name: str | None = None, external_id: str | None = None, page_size: int | None = None
    ) -> Iterator[Group]:
        cursor: str | None = None
        while True:
            page = self.list_groups(limit=page_size, cursor=cursor, display_name=display_name, external_id=external_id)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_group(self, group_id: Id) -> Group:
        return self.send(ops.get_group(group_id))

    def update_group(
        self,
        group_id: Id,
        *,
        if_match: IfMatch,
        display_name: str | None = None,
        external_id: str | Unset | None = UNSET,
    ) -> Group:
        """Change a group; ``external_id=None`` clears it, leaving it out keeps it."""
        return self.send(
            ops.update_group(group_id, if_match=if_match, display_name=display_name, external_id=external_id)
        )

    def delete_group(self, group_id: Id, *, if_match: IfMatch | None = None) -> None:
        return self.send(ops.delete_group(group_id, if_match=if_match))

    def list_group_members(self, group_id: Id, *, limit: int | None = None, cursor: str | None = None) -> Page[Member]:
        return self.send(ops.list_group_members(group_id, limit=limit, cursor=cursor))

    def iter_group_members(self, group_id: Id, *, page_size: int | None = None) -> Iterator[Member]:
        cursor: str | None = None
        while True:
            page = self.list_group_members(group_id, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def add_group_members(self, group_id: Id, user_ids: Sequence[Id], *, if_match: IfMatch | None = None) -> Group:
        return self.send(ops.add_group_members(group_id, user_ids, if_match=if_match))

    def remove_group_member(self, group_id: Id, user_id: Id, *, if_match: IfMatch | None = None) -> None:
        return self.send(ops.remove_group_member(group_id, user_id, if_match=if_match))

    # --- provisioning tokens ---------------------------------------------------------------

    def create_provisioning_token(self, name: str) -> ProvisioningToken:
        return self.send(ops.create_provisioning_token(name))

    def list_provisioning_tokens(self) -> list[ProvisioningToken]:
        return self.send(ops.list_provisioning_tokens())

    def revoke_provisioning_token(self, token_id: Id) -> None:
        return self.send(ops.revoke_provisioning_token(token_id))

    # --- webhooks --------------------------------------------------------------------------

    def create_webhook(
        self, url: str, events: Sequence[str], *, description: str | None = None, rate_limit: int | None = None
    ) -> Webhook:
        return self.send(ops.create_webhook(url, events, description=description, rate_limit=rate_limit))

    def list_webhooks(self) -> list[Webhook]:
        return self.send(ops.list_webhooks())

    def get_webhook(self, webhook_id: Id) -> Webhook:
        return self.send(ops.get_webhook(webhook_id))

    def update_webhook(
        self,
        webhook_id: Id,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        description: str | None = None,
        rate_limit: int | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        return self.send(
            ops.update_webhook(
                webhook_id, url=url, events=events, description=description, rate_limit=rate_limit, enabled=enabled
            )
        )

    def delete_webhook(self, webhook_id: Id) -> None:
        return self.send(ops.delete_webhook(webhook_id))

    def rotate_webhook_secret(self, webhook_id: Id) -> Webhook:
        return self.send(ops.rotate_webhook_secret(webhook_id))

    def list_webhook_deliveries(
        self, webhook_id: Id, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[Delivery]:
        return self.send(ops.list_webhook_deliveries(webhook_id, status=status, limit=limit, cursor=cursor))

    def iter_webhook_deliveries(
        self, webhook_id: Id, *, status: str | None = None, page_size: int | None = None
    ) -> Iterator[Delivery]:
        cursor: str | None = None
        while True:
            page = self.list_webhook_deliveries(webhook_id, status=status, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_webhook_delivery(self, webhook_id: Id, delivery_id: Id) -> DeliveryDetail:
        return self.send(ops.get_webhook_delivery(webhook_id, delivery_id))

    def replay_webhook_delivery(self, webhook_id: Id, delivery_id: Id) -> None:
        return self.send(ops.replay_webhook_delivery(webhook_id, delivery_id))

    def replay_failed_webhook_deliveries(self, webhook_id: Id, since: datetime) -> int:
        """Queue every failed delivery since ``since`` again; returns how many."""
        return self.send(ops.replay_failed_webhook_deliveries(webhook_id, since))
