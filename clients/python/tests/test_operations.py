"""Every /v1 operation of the server's OpenAPI document, called through the sync and the
async client against a real Strata, with the answers read into models."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from conftest import PASSWORD, StrataServer, totp, unique_email
from strata_client import (
    OPERATIONS,
    AsyncStrataClient,
    EmailChangePending,
    Forbidden,
    MfaRequired,
    NotFound,
    PreconditionFailed,
    StrataClient,
    Unauthorized,
    User,
    ValidationError,
    models,
)

# Well-formed (the pattern the API documents) and never issued: the operation is reached and
# answers token_invalid, which also proves the body's field names are the server's.
UNKNOWN_MAIL_TOKEN = "ot_" + "A" * 43


def _v1_operations(strata: StrataServer) -> set[tuple[str, str]]:
    document = httpx.get(f"{strata.url}/openapi.json").json()
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }


def test_the_client_has_every_v1_operation_of_the_openapi_document(strata: StrataServer) -> None:
    documented = _v1_operations(strata)
    missing = sorted(documented - OPERATIONS.keys())
    assert not missing, f"the client lacks these /v1 operations: {missing}"
    stale = sorted(OPERATIONS.keys() - documented)
    assert not stale, f"the client has operations the server does not document: {stale}"


MODELS_AND_SCHEMAS = [
    (models.User, "UserBody"),
    (models.Session, "SessionBody"),
    (models.UserSession, "UserSessionBody"),
    (models.GroupRef, "GroupRef"),
    (models.WhoAmI, "WhoAmI"),
    (models.LoginResult, "LoginResponse"),
    (models.EmailChangePending, "EmailChangePendingBody"),
    (models.Accepted, "PasswordResetAccepted"),
    (models.TotpEnrolment, "TotpEnrolResponse"),
    (models.AuditEntry, "AuditEntryBody"),
    (models.Group, "GroupBody"),
    (models.Member, "MemberBody"),
    (models.ProvisioningToken, "ProvisioningTokenBody"),
    (models.Webhook, "WebhookBody"),
    (models.Delivery, "DeliveryBody"),
    (models.DeliveryAttempt, "AttemptBody"),
    (models.DeliveryDetail, "DeliveryDetail"),
    (models.Health, "Health"),
]


def _properties(schemas: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        return _properties(schemas, schemas[schema["$ref"].rsplit("/", 1)[1]])
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= _properties(schemas, part)
    return names


def test_the_models_have_every_documented_field(strata: StrataServer) -> None:
    schemas = httpx.get(f"{strata.url}/openapi.json").json()["components"]["schemas"]
    for model, name in MODELS_AND_SCHEMAS:
        fields = {f.name for f in dataclasses.fields(model)}
        assert fields == _properties(schemas, schemas[name]), f"{model.__name__} against {name}"
    webhook_events = schemas["CreateWebhookRequest"]["properties"]["events"]["items"]["enum"]
    assert sorted(models.EVENT_TYPES) == sorted(webhook_events)


class Recorder:
    """Which documented operations the requests went to (method + path template)."""

    def __init__(self, operations: set[tuple[str, str]]) -> None:
        self.patterns = [
            (method, template, re.compile(re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"))
            for method, template in operations
        ]
        self.called: set[tuple[str, str]] = set()

    def record(self, request: httpx.Request) -> None:
        for method, template, pattern in self.patterns:
            if request.method == method and pattern.match(request.url.path):
                self.called.add((method, template))


class Blocking:
    """An AsyncStrataClient driven from sync code on a private event loop, so one walkthrough
    exercises both clients."""

    def __init__(self, client: AsyncStrataClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client, self._loop = client, loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name == "with_token":
            return lambda token: Blocking(attribute(token), self._loop)
        if inspect.isasyncgenfunction(attribute):

            async def collect(*args: Any, **kwargs: Any) -> list[Any]:
                return [item async for item in attribute(*args, **kwargs)]

            return lambda *args, **kwargs: self._loop.run_until_complete(collect(*args, **kwargs))
        if inspect.iscoroutinefunction(attribute):
            return lambda *args, **kwargs: self._loop.run_until_complete(attribute(*args, **kwargs))
        return attribute


@pytest.fixture(params=["sync", "async"])
def recorded(request: pytest.FixtureRequest, strata: StrataServer) -> Iterator[tuple[Any, Recorder]]:
    """(admin client, recorder); ``admin.with_token(None)`` is the anonymous client."""
    recorder = Recorder(_v1_operations(strata))
    if request.param == "sync":
        http = httpx.Client(event_hooks={"request": [recorder.record]})
        yield StrataClient(strata.url, strata.admin_token, http_client=http), recorder
        http.close()
    else:
        loop = asyncio.new_event_loop()

        async def record(request: httpx.Request) -> None:
            recorder.record(request)

        async_http = httpx.AsyncClient(event_hooks={"request": [record]})
        yield Blocking(AsyncStrataClient(strata.url, strata.admin_token, http_client=async_http), loop), recorder
        loop.run_until_complete(async_http.aclose())
        loop.close()


def _wait_for(what: str, probe: Callable[[], Any]) -> Any:
    """Polls for a state the server reaches in the background (the webhook worker); a bound
    on waiting, not an assertion on speed."""
    deadline = time.monotonic() + 30
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_every_operation_round_trips(recorded: tuple[Any, Recorder], strata: StrataServer) -> None:
    admin, recorder = recorded
    anonymous = admin.with_token(None)

    # --- users and sessions
    email = unique_email("walk")
    key = f"walk-{uuid.uuid4()}"
    user = anonymous.create_user(email, "Walk Through", PASSWORD, idempotency_key=key)
    assert isinstance(user, User) and user.email == email and user.version == 1 and not user.verified
    again = anonymous.create_user(email, "Walk Through", PASSWORD, idempotency_key=key)
    assert again.id == user.id  # the retry got the first answer, not email_taken

    login = anonymous.login(email.upper(), PASSWORD)  # emails are case-insensitive
    assert login.token and login.token.startswith("st_") and login.user.id == user.id
    me = admin.with_token(login.token)
    whoami = me.current_session(include_groups=True)
    assert whoami.user.id == user.id and whoami.groups == [] and whoami.session.expires_at > whoami.session.created_at
    assert me.current_session().groups is None

    assert me.get_user(user.id) == user
    renamed = me.update_user(user.id, if_match=user, name="Walk Renamed")
    assert isinstance(renamed, User) and renamed.name == "Walk Renamed" and renamed.version == 2
    with pytest.raises(PreconditionFailed) as stale:
        me.update_user(user.id, if_match=user, name="Lost Update")
    assert stale.value.code == "version_mismatch"

    pending = me.update_user(user.id, if_match=renamed, email=unique_email("moved"), current_password=PASSWORD)
    assert isinstance(pending, EmailChangePending) and pending.user.email == email
    with pytest.raises(ValidationError) as unknown:
        anonymous.confirm_email_change(UNKNOWN_MAIL_TOKEN)
    assert (unknown.value.code, unknown.value.field) == ("token_invalid", "token")

    # --- verification and password resets
    assert me.request_verification(user.id).status == "accepted"
    with pytest.raises(ValidationError) as unknown:
        anonymous.confirm_verification(UNKNOWN_MAIL_TOKEN)
    assert unknown.value.code == "token_invalid"
    assert anonymous.request_password_reset(email).status == "accepted"
    with pytest.raises(ValidationError) as unknown:
        anonymous.confirm_password_reset(UNKNOWN_MAIL_TOKEN, "another long password")
    assert unknown.value.code == "token_invalid"

    # --- MFA: enrol, log in with a recovery code, new codes, off
    enrolment = me.start_totp(user.id, PASSWORD)
    assert enrolment.otpauth_uri.startswith("otpauth://totp/")
    recovery = me.confirm_totp(user.id, totp(enrolment.secret))
    assert len(recovery) == 10 and len(set(recovery)) == 10
    with pytest.raises(MfaRequired) as mfa:
        anonymous.login(email, PASSWORD)
    assert mfa.value.challenge.startswith("mfa_")
    second = anonymous.complete_mfa_login(mfa.value.challenge, recovery[0])
    assert second.user.mfa_enabled and second.token
    fresh = me.regenerate_recovery_codes(user.id, recovery[1])
    assert len(fresh) == 10 and not set(fresh) & set(recovery)
    me.disable_totp(user.id, fresh[0])
    assert not me.current_session().user.mfa_enabled

    # --- groups and members
    members = [user] + [anonymous.create_user(unique_email("member"), f"Member {n}", PASSWORD) for n in range(3)]

    # --- admin: lists and pagination (there are at least four users now)
    page = admin.list_users(limit=1)
    assert len(page.items) == 1 and page.next_cursor is not None
    assert [u.id for u in admin.list_users(email=email).items] == [user.id]
    assert user.id in {u.id for u in admin.iter_users(email=email, page_size=1)}
    with pytest.raises(Forbidden):
        me.list_users()

    name = f"Walkers {uuid.uuid4().hex[:8]}"
    group = admin.create_group(name, external_id=f"ext-{uuid.uuid4().hex[:8]}", members=[m.id for m in members[:3]])
    assert group.display_name == name and group.external_id
    assert admin.get_group(group.id) == group
    assert [g.id for g in admin.list_groups(display_name=name).items] == [group.id]
    assert [g.id for g in admin.iter_groups(display_name=name, page_size=1)] == [group.id]
    group = admin.update_group(group.id, if_match=group, external_id=None)
    assert group.external_id is None and group.display_name == name
    listed = admin.list_group_members(group.id, limit=2)
    assert len(listed.items) == 2 and listed.next_cursor is not None
    assert {m.user_id for m in admin.iter_group_members(group.id, page_size=2)} == {m.id for m in members[:3]}
    group = admin.add_group_members(group.id, [members[3].id], if_match=group)
    admin.remove_group_member(group.id, members[2].id)
    assert {m.user_id for m in admin.iter_group_members(group.id)} == {members[i].id for i in (0, 1, 3)}
    assert [g.id for g in me.current_session(include_groups=True).groups or []] == [group.id]
    with pytest.raises(PreconditionFailed):
        admin.delete_group(group.id, if_match=group)  # the removal moved the version
    admin.delete_group(group.id, if_match=admin.get_group(group.id))
    with pytest.raises(NotFound):
        admin.get_group(group.id)

    # --- provisioning tokens
    provisioning = admin.create_provisioning_token(f"walk {uuid.uuid4().hex[:8]}")
    assert provisioning.token and provisioning.token.startswith("scim_")
    listed_tokens = {t.id: t for t in admin.list_provisioning_tokens()}
    assert listed_tokens[provisioning.id].token is None  # shown once
    admin.revoke_provisioning_token(provisioning.id)
    revoked = {t.id: t for t in admin.list_provisioning_tokens()}.get(provisioning.id)
    assert revoked is None or revoked.revoked_at is not None

    # --- webhooks and deliveries (the endpoint is unreachable from here: deliveries fail)
    started = datetime.now(timezone.utc) - timedelta(seconds=1)
    hook = admin.create_webhook("https://hooks.example.com/strata", ["user.created"], description="walk")
    assert hook.secret and hook.secret.startswith("whsec_") and hook.enabled
    assert admin.get_webhook(hook.id).secret is None
    assert hook.id in {w.id for w in admin.list_webhooks()}
    hook = admin.update_webhook(hook.id, description="walk, renamed", rate_limit=7)
    assert (hook.description, hook.rate_limit) == ("walk, renamed", 7)
    anonymous.create_user(unique_email("hooked"), "Hooked", PASSWORD)
    delivery = _wait_for("a delivery", lambda: admin.list_webhook_deliveries(hook.id, limit=1).items)[0]
    assert delivery.event_type == "user.created"
    assert [d.id for d in admin.iter_webhook_deliveries(hook.id, page_size=1)][:1] == [delivery.id]
    detail = admin.get_webhook_delivery(hook.id, delivery.id)
    assert detail.id == delivery.id and isinstance(detail.attempt_log, list)
    try:
        admin.replay_webhook_delivery(hook.id, delivery.id)
    except ValidationError as refused:
        assert refused.code == "pending"  # still retrying: nothing to replay yet
    assert admin.replay_failed_webhook_deliveries(hook.id, started) >= 0
    rotated = admin.rotate_webhook_secret(hook.id)
    assert rotated.secret and rotated.secret != hook.secret and rotated.previous_secret_expires_at
    admin.delete_webhook(hook.id)
    with pytest.raises(NotFound):
        admin.get_webhook(hook.id)

    # --- audit
    updates = admin.list_audit(user_id=user.id, event_type="user.updated", since=started - timedelta(hours=1))
    assert updates.items and all(e.type == "user.updated" and e.subject == user.id for e in updates.items)
    history = list(admin.iter_audit(user_id=user.id, page_size=2))
    assert len(history) > 2 and history[0].type == "user.created"
    assert len({e.id for e in history}) == len(history)

    # --- a user's sessions, and revoking them all
    mine = me.user_sessions(user.id)
    assert any(s.current and s.active for s in mine)
    spare = anonymous.login(email, PASSWORD)
    assert admin.revoke_user_sessions(user.id) >= 2
    assert not any(s.active for s in admin.user_sessions(user.id))
    with pytest.raises(Unauthorized):
        anonymous.with_token(spare.token).current_session()
    me = admin.with_token(anonymous.login(email, PASSWORD).token)

    # --- the end of a session and of an account
    me.logout()
    with pytest.raises(Unauthorized) as dead:
        me.current_session()
    assert dead.value.code in ("token_revoked", "invalid_token")
    current = admin.get_user(user.id)
    with pytest.raises(PreconditionFailed):
        admin.delete_user(user.id, if_match=current.version - 1)
    admin.delete_user(user.id, if_match=current)
    with pytest.raises(NotFound):
        admin.get_user(user.id)

    missed = sorted(_v1_operations(strata) - recorder.called)
    assert not missed, f"the walkthrough did not call {missed}"


def test_mail_links_verify_confirm_email_changes_and_reset_passwords(admin: StrataClient, strata: StrataServer) -> None:
    email = unique_email("mail")
    with StrataClient(strata.url) as anonymous:
        user = anonymous.create_user(email, "Mail Reader", PASSWORD)
        me = anonymous.with_token(anonymous.login(email, PASSWORD).token)

        me.request_verification(user.id)
        verified = anonymous.confirm_verification(strata.mail_token("verify-email", email))
        assert verified.verified and verified.id == user.id

        new_email = unique_email("moved")
        me.update_user(user.id, if_match=verified, email=new_email, current_password=PASSWORD)
        moved = anonymous.confirm_email_change(strata.mail_token("confirm-email-change", new_email))
        assert moved.email == new_email and moved.verified

        anonymous.request_password_reset(new_email)
        anonymous.confirm_password_reset(strata.mail_token("reset-password", new_email), "a brand new passphrase")
        with pytest.raises(Unauthorized):
            me.current_session()  # a reset revokes every session
        assert anonymous.login(new_email, "a brand new passphrase").user.id == user.id


@pytest.mark.anyio
async def test_the_async_client_in_its_own_event_loop(strata: StrataServer) -> None:
    async with AsyncStrataClient(strata.url) as anonymous:
        email = unique_email("async")
        user = await anonymous.create_user(email, "Async", PASSWORD)
        session = await anonymous.login(email, PASSWORD)
        me = anonymous.with_token(session.token)
        # Concurrent calls over one pool.
        results = await asyncio.gather(*(me.current_session() for _ in range(10)))
        assert {r.user.id for r in results} == {user.id}
        await me.logout()
        with pytest.raises(Unauthorized):
            await me.current_session()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
