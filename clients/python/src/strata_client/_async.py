"""The asynchronous client, generated from ``_sync.py`` by ``scripts/generate_async.py``: do not edit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
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


class AsyncStrataClient:
    """An asynchronous client for Strata's /v1 API.

    ``token`` is sent as ``Authorization: Bearer`` on every call: the admin token, or a
    session token from :meth:`login`. :meth:`with_token` makes a client for another token that
    shares this one's connection pool (cheap; use it per end user). Errors are raised as
    :class:`~strata_client.errors.ProblemError` subclasses carrying Strata's ``code`` and
    ``field``; network failures as :class:`~strata_client.errors.TransportError`.

    Use it as a context manager, or call :meth:`aclose`, to release the connections.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        self._token = token
        # Sent with every request rather than set on the httpx client, so they hold for a
        # client passed in as well.
        self._headers = default_headers(headers)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:
        return f"AsyncStrataClient({self.base_url!r}, token={'<set>' if self._token else None})"

    def with_token(self, token: str | None) -> AsyncStrataClient:
        """A client for ``token`` over the same connections (closing it leaves them open)."""
        clone = AsyncStrataClient.__new__(AsyncStrataClient)
        clone.base_url = self.base_url
        clone._token = token
        clone._headers = self._headers
        clone._owns_http = False
        clone._http = self._http
        return clone

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncStrataClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one prepared call (see ``strata_client._operations``) and read its answer."""
        try:
            response = await self._http.request(**request_arguments(self.base_url, self._headers, self._token, call))
        except httpx.HTTPError as error:
            raise TransportError(f"{call.method} {call.path}: {error}") from error
        return read_answer(call, response)

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> Health:
        """``GET /healthz``: the process is up."""
        return await self.send(ops.health())

    async def ready(self) -> Health:
        """``GET /readyz``: the instance can serve (its database answers); 503 raises."""
        return await self.send(ops.ready())

    # --- users -----------------------------------------------------------------------------

    async def create_user(self, email: str, name: str, password: str, *, idempotency_key: str | None = None) -> User:
        """Register an account. With an ``idempotency_key`` a retry returns the first answer."""
        return await self.send(ops.create_user(email, name, password, idempotency_key=idempotency_key))

    async def get_user(self, user_id: Id) -> User:
        return await self.send(ops.get_user(user_id))

    async def update_user(
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
        return await self.send(
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

    async def delete_user(self, user_id: Id, *, if_match: IfMatch | None = None) -> None:
        return await self.send(ops.delete_user(user_id, if_match=if_match))

    async def user_sessions(self, user_id: Id) -> list[UserSession]:
        """A user's sessions, newest first (yourself, or anyone as an admin)."""
        return await self.send(ops.user_sessions(user_id))

    async def revoke_user_sessions(self, user_id: Id, *, if_match: IfMatch | None = None) -> int:
        """Ends every live session of a user; how many were ended."""
        return await self.send(ops.revoke_user_sessions(user_id, if_match=if_match))

    async def list_users(
        self, *, limit: int | None = None, cursor: str | None = None, email: str | None = None
    ) -> Page[User]:
        return await self.send(ops.list_users(limit=limit, cursor=cursor, email=email))

    async def iter_users(self, *, email: str | None = None, page_size: int | None = None) -> AsyncIterator[User]:
        """Every user, in id order, fetching page after page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = await self.list_users(limit=page_size, cursor=cursor, email=email)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- sessions --------------------------------------------------------------------------

    async def login(self, email: str, password: str) -> LoginResult:
        """A new session. Raises :class:`MfaRequired` (with ``challenge``) when TOTP is on."""
        return await self.send(ops.login(email, password))

    async def complete_mfa_login(self, challenge: str, code: str) -> LoginResult:
        return await self.send(ops.complete_mfa_login(challenge, code))

    async def current_session(self, *, include_groups: bool = False) -> WhoAmI:
        """Who the client's token belongs to."""
        return await self.send(ops.current_session(include_groups=include_groups))

    async def logout(self) -> None:
        """End the client's session; its token is dead afterwards."""
        return await self.send(ops.logout())

    # --- MFA -------------------------------------------------------------------------------

    async def start_totp(self, user_id: Id, current_password: str) -> TotpEnrolment:
        return await self.send(ops.start_totp(user_id, current_password))

    async def confirm_totp(self, user_id: Id, code: str) -> list[str]:
        """Turn TOTP on with a code from the app; returns ten recovery codes (shown once)."""
        return await self.send(ops.confirm_totp(user_id, code))

    async def regenerate_recovery_codes(self, user_id: Id, code: str) -> list[str]:
        return await self.send(ops.regenerate_recovery_codes(user_id, code))

    async def disable_totp(self, user_id: Id, code: str | None = None) -> None:
        """Turn TOTP off: the user with a code, or an admin without one (an audited reset)."""
        return await self.send(ops.disable_totp(user_id, code))

    # --- email verification and email changes ----------------------------------------------

    async def request_verification(self, user_id: Id) -> Accepted:
        return await self.send(ops.request_verification(user_id))

    async def confirm_verification(self, token: str) -> User:
        return await self.send(ops.confirm_verification(token))

    async def confirm_email_change(self, token: str) -> User:
        return await self.send(ops.confirm_email_change(token))

    # --- password resets -------------------------------------------------------------------

    async def request_password_reset(self, email: str) -> Accepted:
        return await self.send(ops.request_password_reset(email))

    async def confirm_password_reset(self, token: str, new_password: str) -> None:
        return await self.send(ops.confirm_password_reset(token, new_password))

    # --- audit -----------------------------------------------------------------------------

    async def list_audit(
        self,
        *,
        user_id: Id | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[AuditEntry]:
        return await self.send(
            ops.list_audit(user_id=user_id, event_type=event_type, since=since, limit=limit, cursor=cursor)
        )

    async def iter_audit(
        self,
        *,
        user_id: Id | None = None,
        event_type: str | None = None,
        since: datetime | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[AuditEntry]:
        """The audit log, oldest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_audit(user_id=user_id, event_type=event_type, since=since, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # --- groups ----------------------------------------------------------------------------

    async def create_group(
        self, display_name: str, *, external_id: str | None = None, members: Sequence[Id] | None = None
    ) -> Group:
        return await self.send(ops.create_group(display_name, external_id=external_id, members=members))

    async def list_groups(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        display_name: str | None = None,
        external_id: str | None = None,
    ) -> Page[Group]:
        return await self.send(
            ops.list_groups(limit=limit, cursor=cursor, display_name=display_name, external_id=external_id)
        )

    async def iter_groups(
        self, *, display_name: str | None = None, external_id: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[Group]:
        cursor: str | None = None
        while True:
            page = await self.list_groups(limit=page_size, cursor=cursor, display_name=display_name, external_id=external_id)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_group(self, group_id: Id) -> Group:
        return await self.send(ops.get_group(group_id))

    async def update_group(
        self,
        group_id: Id,
        *,
        if_match: IfMatch,
        display_name: str | None = None,
        external_id: str | Unset | None = UNSET,
    ) -> Group:
        """Change a group; ``external_id=None`` clears it, leaving it out keeps it."""
        return await self.send(
            ops.update_group(group_id, if_match=if_match, display_name=display_name, external_id=external_id)
        )

    async def delete_group(self, group_id: Id, *, if_match: IfMatch | None = None) -> None:
        return await self.send(ops.delete_group(group_id, if_match=if_match))

    async def list_group_members(self, group_id: Id, *, limit: int | None = None, cursor: str | None = None) -> Page[Member]:
        return await self.send(ops.list_group_members(group_id, limit=limit, cursor=cursor))

    async def iter_group_members(self, group_id: Id, *, page_size: int | None = None) -> AsyncIterator[Member]:
        cursor: str | None = None
        while True:
            page = await self.list_group_members(group_id, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def add_group_members(self, group_id: Id, user_ids: Sequence[Id], *, if_match: IfMatch | None = None) -> Group:
        return await self.send(ops.add_group_members(group_id, user_ids, if_match=if_match))

    async def remove_group_member(self, group_id: Id, user_id: Id, *, if_match: IfMatch | None = None) -> None:
        return await self.send(ops.remove_group_member(group_id, user_id, if_match=if_match))

    # --- provisioning tokens ---------------------------------------------------------------

    async def create_provisioning_token(self, name: str) -> ProvisioningToken:
        return await self.send(ops.create_provisioning_token(name))

    async def list_provisioning_tokens(self) -> list[ProvisioningToken]:
        return await self.send(ops.list_provisioning_tokens())

    async def revoke_provisioning_token(self, token_id: Id) -> None:
        return await self.send(ops.revoke_provisioning_token(token_id))

    # --- webhooks --------------------------------------------------------------------------

    async def create_webhook(
        self, url: str, events: Sequence[str], *, description: str | None = None, rate_limit: int | None = None
    ) -> Webhook:
        return await self.send(ops.create_webhook(url, events, description=description, rate_limit=rate_limit))

    async def list_webhooks(self) -> list[Webhook]:
        return await self.send(ops.list_webhooks())

    async def get_webhook(self, webhook_id: Id) -> Webhook:
        return await self.send(ops.get_webhook(webhook_id))

    async def update_webhook(
        self,
        webhook_id: Id,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        description: str | None = None,
        rate_limit: int | None = None,
        enabled: bool | None = None,
    ) -> Webhook:
        return await self.send(
            ops.update_webhook(
                webhook_id, url=url, events=events, description=description, rate_limit=rate_limit, enabled=enabled
            )
        )

    async def delete_webhook(self, webhook_id: Id) -> None:
        return await self.send(ops.delete_webhook(webhook_id))

    async def rotate_webhook_secret(self, webhook_id: Id) -> Webhook:
        return await self.send(ops.rotate_webhook_secret(webhook_id))

    async def list_webhook_deliveries(
        self, webhook_id: Id, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Page[Delivery]:
        return await self.send(ops.list_webhook_deliveries(webhook_id, status=status, limit=limit, cursor=cursor))

    async def iter_webhook_deliveries(
        self, webhook_id: Id, *, status: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[Delivery]:
        cursor: str | None = None
        while True:
            page = await self.list_webhook_deliveries(webhook_id, status=status, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_webhook_delivery(self, webhook_id: Id, delivery_id: Id) -> DeliveryDetail:
        return await self.send(ops.get_webhook_delivery(webhook_id, delivery_id))

    async def replay_webhook_delivery(self, webhook_id: Id, delivery_id: Id) -> None:
        return await self.send(ops.replay_webhook_delivery(webhook_id, delivery_id))

    async def replay_failed_webhook_deliveries(self, webhook_id: Id, since: datetime) -> int:
        """Queue every failed delivery since ``since`` again; returns how many."""
        return await self.send(ops.replay_failed_webhook_deliveries(webhook_id, since))
