//! Handlers of API v1: parse (via extractors and domain `parse`), call the service,
//! render. No business rules here.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use strata_core::domain::{AuditQuery, DisplayName, Email, Password, Role, User, UserId, UserStatus, parse_rfc3339};
use strata_core::error::ValidationError;
use strata_core::service::{Actor, Patched, Registration, UserChanges, UserFilter};

use crate::AppState;
use crate::dto::{
    AuditEntryBody, AuditList, CreateUserRequest, EmailChangePendingBody, GroupRef, LoginRequest, LoginResponse,
    SessionList, SessionsRevoked, UpdateUserRequest, UserBody, UserList, UserSessionBody, WhoAmI, rfc3339,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{
    Caller, ClientAddr, CurrentSession, IdempotencyKeyHeader, IfMatch, JsonBody, OptionalIfMatch, PathUserId,
    query_pairs,
};

fn etag(user: &User) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", user.version.0)).unwrap_or(HeaderValue::from_static("\"0\""))
}

pub(crate) fn user_response(status: StatusCode, user: &User) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag(user));
    (status, headers, Json(UserBody::from(user))).into_response()
}

/// Register a new account.
#[utoipa::path(
    post, path = "/v1/users", tag = "users",
    request_body = CreateUserRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the create safe to retry: a retry with the same key and body returns the same user and creates nothing.")),
    responses(
        (status = 201, description = "Created (or replayed for a retried Idempotency-Key)", body = UserBody,
            headers(("Location" = String), ("ETag" = String), ("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Email already registered", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or Idempotency-Key reused with another body or password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations from this address, or too many failed replays", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "Overloaded or storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(req): JsonBody<CreateUserRequest>,
) -> ApiResult<Response> {
    let registration = Registration {
        email: Email::parse(&req.email)?,
        name: DisplayName::parse(&req.name)?,
        password: Password::parse_new(&req.password)?,
    };
    let done = state.accounts.register(registration, key, &client).await?;
    // The caller chose this account's password: the split tells them nothing new.
    strata_core::timing::mark_authenticated();
    let mut res = user_response(StatusCode::CREATED, &done.user);
    let location = format!("/v1/users/{}", done.user.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    if done.replayed {
        res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// Read a user (yourself, or anyone as an admin).
#[utoipa::path(
    get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserBody, headers(("ETag" = String))),
        (status = 400, description = "Invalid UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, malformed, unknown, expired or revoked token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not yourself and not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathUserId(id): PathUserId,
) -> ApiResult<Response> {
    let user = state.accounts.get_user(&actor, id).await?;
    Ok(user_response(StatusCode::OK, &user))
}

/// Change name, email or password (role and status: admins only).
///
/// Changing your own email needs `current_password` and must be the only change in its
/// PATCH: it answers 202 and mails a confirmation link to the new address (and a notice
/// to the old one); the change applies at `POST /v1/email-changes/confirm`. An admin's
/// change of someone else's email applies at once and leaves it unverified.
#[utoipa::path(
    patch, path = "/v1/users/{id}", tag = "users",
    request_body(content = UpdateUserRequest, content_type = "application/json"),
    params(("id" = String, Path, format = Uuid), ("If-Match" = String, Header, description = "The ETag of the version being changed, e.g. `\"3\"`")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserBody, headers(("ETag" = String))),
        (status = 202, description = "Your own email change awaits its confirmation; nothing changed yet", body = EmailChangePendingBody),
        (status = 400, description = "Malformed JSON, UUID or If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed, or current_password incorrect", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`: email already registered", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current_password guesses, or email-change mails, for this account or address", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "Hashing pool saturated or storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_user(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ClientAddr(client): ClientAddr,
    PathUserId(id): PathUserId,
    IfMatch(expected): IfMatch,
    JsonBody(req): JsonBody<UpdateUserRequest>,
) -> ApiResult<Response> {
    let changes = UserChanges {
        email: req.email.as_deref().map(Email::parse).transpose()?,
        name: req.name.as_deref().map(DisplayName::parse).transpose()?,
        password: req.password.as_deref().map(Password::parse_new).transpose()?,
        role: req.role.as_deref().map(Role::parse).transpose()?,
        status: req.status.as_deref().map(UserStatus::parse).transpose()?,
        current_password: req.current_password.as_deref().map(Password::parse_login).transpose()?,
    };
    match state.accounts.patch_user(&actor, id, expected, changes, &client).await? {
        Patched::Updated(user) => Ok(user_response(StatusCode::OK, &user)),
        Patched::EmailChangeRequested(requested) => {
            let body = EmailChangePendingBody {
                status: "confirmation_sent",
                pending_email: requested.new_email.as_str().to_owned(),
                expires_at: rfc3339(requested.expires_at),
                user: UserBody::from(&requested.user),
            };
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
    }
}

/// Delete a user and end all their sessions.
#[utoipa::path(
    delete, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, format = Uuid), ("If-Match" = Option<String>, Header, description = "Optional: only delete this version")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 412, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_user(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathUserId(id): PathUserId,
    OptionalIfMatch(expected): OptionalIfMatch,
) -> ApiResult<StatusCode> {
    state.accounts.delete_user(&actor, id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's sessions, newest first: live, revoked and expired ones still stored (admins,
/// or the user themself).
#[utoipa::path(
    get, path = "/v1/users/{id}/sessions", tag = "sessions",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, body = SessionList),
        (status = 400, description = "Invalid UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not yourself and not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_user_sessions(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathUserId(id): PathUserId,
) -> ApiResult<Response> {
    let sessions = state.accounts.sessions_of_user(&actor, id).await?;
    let now = state.accounts.now();
    let current = match &actor {
        Actor::User { session, .. } => Some(*session),
        _ => None,
    };
    let items = sessions.iter().map(|s| UserSessionBody::new(s, now, current)).collect();
    // Session ids and times: nothing a shared cache should keep.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(SessionList { items })).into_response())
}

/// End every live session of a user: "sign out everywhere" for yourself, or an admin
/// cutting off a user (the account stays as it is). Each ends at once, cached copies too.
#[utoipa::path(
    delete, path = "/v1/users/{id}/sessions", tag = "sessions",
    params(("id" = String, Path, format = Uuid), ("If-Match" = Option<String>, Header, description = "Optional: only while the user is at this version (the ETag of the user)")),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "How many live sessions were ended (0 when there were none)", body = SessionsRevoked),
        (status = 400, description = "Invalid UUID", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not yourself and not an admin; or a cookie session without its CSRF token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The user is no longer at the If-Match version", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_user_sessions(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathUserId(id): PathUserId,
    OptionalIfMatch(expected): OptionalIfMatch,
) -> ApiResult<Json<SessionsRevoked>> {
    let revoked = state.accounts.revoke_sessions(&actor, id, expected).await?;
    Ok(Json(SessionsRevoked { revoked: revoked as u64 }))
}

const CURSOR_VERSION: u8 = 1;

/// An opaque page cursor carrying the last id of the previous page.
pub(crate) fn encode_cursor(id: &[u8; 16]) -> String {
    let mut raw = [0u8; 17];
    raw[0] = CURSOR_VERSION;
    raw[1..].copy_from_slice(id);
    URL_SAFE_NO_PAD.encode(raw)
}

pub(crate) fn decode_cursor(text: &str) -> Result<[u8; 16], ApiError> {
    let bad =
        || ApiError::bad_request("invalid_cursor", "cursor", "cursor must be a next_cursor value from a previous page");
    let mut raw = [0u8; 17];
    let n = URL_SAFE_NO_PAD.decode_slice(text, &mut raw).map_err(|_| bad())?;
    if n != 17 || raw[0] != CURSOR_VERSION {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&raw[1..]);
    Ok(id)
}

/// The longest `email_prefix` of `GET /v1/users`: an email's own limit.
pub const EMAIL_PREFIX_MAX_CHARS: usize = 254;

/// List users in a stable order (admins only), with cursor pagination and filters.
#[utoipa::path(
    get, path = "/v1/users", tag = "users",
    params(
        ("limit" = Option<u32>, Query, description = "1–200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("email" = Option<String>, Query, description = "Exact (normalised) email to look up"),
        ("email_prefix" = Option<String>, Query, description = "Only emails starting with this (trimmed, lower-cased; at most 254 characters)"),
        ("status" = Option<String>, Query, description = "Only `active` or only `disabled` users"),
        ("role" = Option<String>, Query, description = "Only `user` or only `admin` users"),
    ),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, body = UserList),
        (status = 400, description = "Bad limit, cursor or unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email, email_prefix, status or role filter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_users(
    State(state): State<AppState>,
    Caller(actor): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<UserList>> {
    let (mut limit, mut after, mut filter) = (None, None, UserFilter::default());
    for (k, v) in query_pairs(query.as_deref(), &["limit", "cursor", "email", "email_prefix", "status", "role"])? {
        match k.as_str() {
            "limit" => limit = Some(list_limit(&state, &v)?),
            "cursor" => after = Some(UserId::from_bytes(decode_cursor(&v)?)),
            "email_prefix" => filter.email_prefix = email_prefix(&v)?,
            "status" => filter.status = Some(UserStatus::parse(&v)?),
            "role" => filter.role = Some(Role::parse(&v)?),
            _ => filter.email = Some(Email::parse(&v)?),
        }
    }
    let page = state.accounts.list_users(&actor, after, limit, filter).await?;
    Ok(Json(UserList {
        items: page.items.iter().map(UserBody::from).collect(),
        next_cursor: page.next_after.map(|id| encode_cursor(id.as_bytes())),
    }))
}

/// The start of an email, normalised as emails are (trimmed, lower-cased); blank means no
/// filter, as an empty search box does.
fn email_prefix(raw: &str) -> Result<Option<String>, ApiError> {
    let prefix = raw.trim().to_lowercase();
    if prefix.chars().count() > EMAIL_PREFIX_MAX_CHARS {
        return Err(ValidationError::new(
            "email_prefix",
            "too_long",
            format!("email_prefix must be at most {EMAIL_PREFIX_MAX_CHARS} characters"),
        )
        .into());
    }
    if prefix.chars().any(char::is_control) {
        return Err(
            ValidationError::new("email_prefix", "invalid_character", "email_prefix has a control character").into()
        );
    }
    Ok(Some(prefix).filter(|p| !p.is_empty()))
}

/// The audit log (admins only): every event, oldest first, with cursor pagination.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(
        ("user_id" = Option<String>, Query, format = Uuid, description = "Only events about this user"),
        ("type" = Option<String>, Query, description = "Only this event type, e.g. `user.updated`"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only events at or after this RFC 3339 time"),
        ("limit" = Option<u32>, Query, description = "1–200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = AuditList),
        (status = 400, description = "Bad limit, cursor, user_id, since or unknown parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown event type", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_audit(
    State(state): State<AppState>,
    Caller(actor): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<AuditList>> {
    let mut q = AuditQuery::default();
    for (k, v) in query_pairs(query.as_deref(), &["user_id", "type", "since", "limit", "cursor"])? {
        match k.as_str() {
            "user_id" => {
                q.subject = Some(
                    v.parse()
                        .map_err(|_| ApiError::bad_request("invalid_user_id", "user_id", "user_id must be a UUID"))?,
                )
            }
            "type" => q.event_type = Some(v),
            "since" => {
                q.since = Some(parse_rfc3339(&v).ok_or_else(|| {
                    ApiError::bad_request("invalid_since", "since", "since must be an RFC 3339 date-time")
                })?)
            }
            "limit" => q.limit = list_limit(&state, &v)?,
            _ => q.after = Some(uuid::Uuid::from_bytes(decode_cursor(&v)?)),
        }
    }
    let page = state.accounts.list_audit(&actor, q).await?;
    Ok(Json(AuditList {
        items: page.items.iter().map(AuditEntryBody::from).collect(),
        next_cursor: page.next_after.map(|id| encode_cursor(id.as_bytes())),
    }))
}

/// Log in: exchange email and password for a session token.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "sessions",
    request_body = LoginRequest,
    responses(
        (status = 201, description = "Logged in. With `\"cookie\": true`: `Set-Cookie` of the session (HttpOnly) and of its CSRF token, and `csrf_token` instead of `token` in the body", body = LoginResponse, headers(("Location" = String), ("Set-Cookie" = String, description = "Only for a cookie login"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Unknown email or wrong password (indistinguishable)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Account disabled; or, for a cookie login, `origin_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failures for this account or address", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "Hashing pool saturated", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Response> {
    if req.cookie {
        // Login CSRF: a page of an unlisted origin must not log the browser in (to the
        // attacker's account, say).
        crate::browser::check_origin(&headers, &state.browser)?;
    }
    let email = Email::parse(&req.email)?;
    let password = Password::parse_login(&req.password)?;
    let done = state.accounts.login(&email, &password, &client).await?;
    Ok(logged_in(&state, &done, req.cookie))
}

/// The 201 of a completed login, with a password alone or with a second factor; with
/// `cookie`, the session goes into the cookie and the body carries its CSRF token instead.
pub(crate) fn logged_in(state: &AppState, done: &strata_core::service::LoggedIn, cookie: bool) -> Response {
    strata_core::timing::mark_authenticated();
    let token = done.token.expose();
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, HeaderValue::from_static("/v1/sessions/current"));
    // A token must not sit in any shared cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let (token, csrf_token) = if cookie {
        let csrf = crate::browser::csrf_token_for(&token);
        let lifetime = done.session.expires_at.micros().saturating_sub(done.session.created_at.micros()) / 1_000_000;
        for value in state.browser.login_cookies(&token, &csrf, lifetime) {
            headers.append(header::SET_COOKIE, value);
        }
        (None, Some(csrf))
    } else {
        (Some(token), None)
    };
    let body = LoginResponse {
        token,
        csrf_token,
        expires_at: rfc3339(done.session.expires_at),
        user: UserBody::from(&done.user),
    };
    (StatusCode::CREATED, headers, Json(body)).into_response()
}

/// Who am I: the session and user behind a token. The hottest path in the system.
#[utoipa::path(
    get, path = "/v1/sessions/current", tag = "sessions",
    security(("bearer" = [])),
    params(("include" = Option<String>, Query, description = "`groups` adds the user's groups (one database read)")),
    responses(
        (status = 200, body = WhoAmI),
        (status = 400, description = "Unknown query parameter or include value", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, malformed, unknown, expired or revoked token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn current_session(
    State(state): State<AppState>,
    current: CurrentSession,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    // Groups cost a database read that the cached session check otherwise never makes, so
    // they come only when asked for (`?include=groups`).
    let mut with_groups = false;
    for (_, v) in query_pairs(query.as_deref(), &["include"])? {
        match v.as_str() {
            "groups" => with_groups = true,
            _ => return Err(ApiError::bad_request("invalid_include", "include", "include accepts only \"groups\"")),
        }
    }
    let groups = if with_groups {
        let groups = state.groups.of_user(current.user.id).await?;
        Some(
            groups
                .iter()
                .map(|g| GroupRef { id: g.id.to_string(), display_name: g.display_name.as_str().to_owned() })
                .collect(),
        )
    } else {
        None
    };
    let body = WhoAmI {
        session: (&current.session).into(),
        user: (&current.user).into(),
        groups,
        csrf_token: current.csrf_token,
    };
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_json()).into_response())
}

/// Log out: the token stops working immediately.
#[utoipa::path(
    delete, path = "/v1/sessions/current", tag = "sessions",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "Logged out; a cookie session's cookies are cleared (`Set-Cookie` with `Max-Age=0`)",
            headers(("Set-Cookie" = String, description = "Only when the cookie authenticated the request"))),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Cookie session: `csrf_token_missing`, `csrf_token_invalid`, `origin_not_allowed`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(State(state): State<AppState>, current: CurrentSession) -> ApiResult<Response> {
    state.accounts.logout(&current.session).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    if current.csrf_token.is_some() {
        for value in state.browser.clearing_cookies() {
            res.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(res)
}

/// A list's `limit` parameter: 1 to the configured maximum.
pub(crate) fn list_limit(state: &AppState, v: &str) -> Result<u32, ApiError> {
    let max = state.accounts.settings().list_max_limit;
    v.parse().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
        ApiError::bad_request("invalid_limit", "limit", format!("limit must be an integer from 1 to {max}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let id = UserId::generate();
        assert_eq!(decode_cursor(&encode_cursor(id.as_bytes())).unwrap(), *id.as_bytes());
        for bad in ["", "abc", "!!!!", &URL_SAFE_NO_PAD.encode([2u8; 17]), &URL_SAFE_NO_PAD.encode([1u8; 18])] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
