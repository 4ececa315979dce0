//! Request extractors. Each turns one part of a request into a domain value or a problem
//! response that names the part at fault; handlers never see unparsed input.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use strata_core::domain::{IdempotencyKey, Session, SessionToken, User, UserId, Version};
use strata_core::error::TokenProblem;
use strata_core::service::Actor;

use crate::AppState;
use crate::client::{self, ClientIp};
use crate::error::ApiError;

/// A JSON request body: right content type, within the size limit, syntactically valid,
/// and matching `T` exactly (unknown, duplicate or missing fields are refused).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(req, state, state.body_limit).await.map(JsonBody)
    }
}

/// Bodies that list many ids (group members): bigger than the ordinary limit, bounded all
/// the same.
pub const LIST_BODY_LIMIT: usize = 1024 * 1024;

/// A [`JsonBody`] that may be up to [`LIST_BODY_LIMIT`] (or the configured limit, if larger).
pub struct ListJsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ListJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        json_body(req, state, state.body_limit.max(LIST_BODY_LIMIT)).await.map(ListJsonBody)
    }
}

async fn json_body<T: DeserializeOwned>(req: Request, state: &AppState, limit: usize) -> Result<T, ApiError> {
    require_json(req.headers())?;
    // Declared beyond what we would even drain: refuse without reading.
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large(limit));
    }
    let bytes = read_body(req.into_body(), limit, state.body_read_timeout).await?;
    parse_json(&bytes)
}

/// A JSON media type, or the 415 that says what to send.
pub(crate) fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" && mime != "application/merge-patch+json" {
        let detail = if content_type.is_empty() {
            "a JSON body needs Content-Type: application/json".to_owned()
        } else {
            format!("Content-Type {content_type:?} is not supported; send application/json")
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            detail,
        )
        .field("Content-Type"));
    }
    Ok(())
}

/// A JSON body that may be left out entirely (no `Content-Type`, no bytes); one that is
/// sent is held to everything [`JsonBody`] checks.
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let headers = req.headers();
        let empty_length =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == "0");
        if !headers.contains_key(header::CONTENT_TYPE)
            && empty_length
            && !headers.contains_key(header::TRANSFER_ENCODING)
        {
            return Ok(OptionalJsonBody(None));
        }
        JsonBody::from_request(req, state).await.map(|JsonBody(body)| OptionalJsonBody(Some(body)))
    }
}

/// How much of an oversized body is read and thrown away so that the `413` reaches the
/// client: a client that writes its whole body before reading gets a connection reset
/// instead of the answer if the server closes with unread data (nginx lingers likewise).
/// Beyond this the connection is closed anyway.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// The body, at most `limit` bytes, received within `timeout`. An oversized body is
/// drained (up to [`DRAIN_LIMIT`], within the same time) before the `413` is returned.
pub(crate) async fn read_body(
    mut body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = bytes::BytesMut::new();
    let mut received = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::bad_request("body_unreadable", "body", "the request body could not be read"));
            }
            Err(_) if received > limit => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "Request timeout",
                    format!("the request body did not arrive within {} ms", timeout.as_millis()),
                )
                .field("body"));
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        received = received.saturating_add(data.len());
        if received <= limit {
            buf.extend_from_slice(&data);
        } else if received > DRAIN_LIMIT {
            break;
        }
    }
    if received > limit {
        return Err(too_large(limit));
    }
    Ok(buf.freeze())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "Payload too large",
        format!("the request body must be at most {limit} bytes"),
    )
    .field("body")
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("malformed_json", "body", "the request body is empty; send a JSON object"));
    }
    // Every request body of API v1 is an object; say so instead of reporting "[0]".
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            return Err(ApiError::invalid_field("invalid_type", "body", "the request body must be a JSON object"));
        }
        _ => {}
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_problem(&path, &inner)
    })?;
    de.end().map_err(|e| json_problem(".", &e))?;
    Ok(value)
}

fn json_problem(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let msg = err.to_string();
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("malformed_json", "body", format!("the body is not valid JSON: {msg}"))
        }
        Category::Data => {
            // serde names the culprit in backticks for missing/unknown/duplicate fields;
            // otherwise the path (from serde_path_to_error) points at it.
            let named = msg.split('`').nth(1).map(str::to_owned);
            let (code, field) = if msg.starts_with("missing field") {
                ("missing_field", named)
            } else if msg.starts_with("unknown field") {
                ("unknown_field", named)
            } else if msg.starts_with("duplicate field") {
                ("duplicate_field", named)
            } else {
                ("invalid_type", Some(path.to_owned()).filter(|p| p != "."))
            };
            let detail = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            ApiError::invalid_field(code, field.unwrap_or_else(|| "body".to_owned()), detail)
        }
    }
}

/// Serde helper for optional PATCH fields: absent means "leave alone", while an explicit
/// `null` is refused instead of being silently treated as absent.
pub fn present<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

/// A count in a JSON body. `50.0` is the integer 50 to JSON Schema (and to JavaScript, which
/// has no other numbers), so it is taken; `50.5`, negatives and overflow are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WholeNumber(pub u32);

impl<'de> serde::Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let n = serde_json::Number::deserialize(de)?;
        let whole = match n.as_u64() {
            Some(v) => Some(v),
            None => n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= f64::from(u32::MAX)).map(|f| f as u64),
        };
        whole
            .and_then(|v| u32::try_from(v).ok())
            .map(WholeNumber)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a whole number from 0 to {}, got {n}", u32::MAX)))
    }
}

/// Serde helper for fields that may be cleared: absent is `None`, `null` is `Some(None)`.
pub fn nullable<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(de).map(Some)
}

/// A user id from the path.
pub struct PathUserId(pub UserId);

impl FromRequestParts<AppState> for PathUserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_uuid", "id", "the path must end in a user id"))?;
        UserId::parse(&raw)
            .map(PathUserId)
            .map_err(|_| ApiError::bad_request("invalid_uuid", "id", format!("{raw:?} is not a UUID")))
    }
}

/// The version a conditional request expects, from `If-Match: "<version>"` (weak
/// validators `W/"…"` are accepted too: versions are exact either way).
pub struct IfMatch(pub Version);

pub fn parse_if_match(parts: &Parts) -> Result<Option<Version>, ApiError> {
    let Some(raw) = parts.headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::bad_request(
            "malformed_if_match",
            "If-Match",
            "If-Match must be the ETag from a previous response, e.g. \"3\"",
        )
    };
    let text = raw.to_str().map_err(|_| malformed())?.trim();
    // An empty field value is an empty list (RFC 9110 §5.6.1: recipients ignore empty
    // elements), the same as no header.
    if text.is_empty() {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let inner = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).ok_or_else(malformed)?;
    let version: u64 = inner.parse().map_err(|_| malformed())?;
    if version == 0 {
        return Err(malformed());
    }
    Ok(Some(Version(version)))
}

impl FromRequestParts<AppState> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parse_if_match(parts)?.map(IfMatch).ok_or_else(|| {
            ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "if_match_required",
                "Precondition required",
                "changes need an If-Match header with the user's current ETag",
            )
            .field("If-Match")
        })
    }
}

/// `If-Match` when present (DELETE accepts it but does not require it).
pub struct OptionalIfMatch(pub Option<Version>);

impl FromRequestParts<AppState> for OptionalIfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parse_if_match(parts).map(OptionalIfMatch)
    }
}

pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

impl FromRequestParts<AppState> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let Some(raw) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKeyHeader(None));
        };
        let text = raw.to_str().map_err(|_| {
            ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key", "Idempotency-Key must be ASCII")
        })?;
        IdempotencyKey::parse(text)
            .map(|k| IdempotencyKeyHeader(Some(k)))
            .map_err(|e| ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key", e.message))
    }
}

pub(crate) fn bearer(parts: &Parts) -> Result<&str, TokenProblem> {
    let raw = parts.headers.get(header::AUTHORIZATION).ok_or(TokenProblem::Missing)?;
    let text = raw.to_str().map_err(|_| TokenProblem::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(TokenProblem::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenProblem::Malformed);
    }
    Ok(token.trim())
}

/// The session token of a request: the bearer token, or else the session cookie. A
/// cookie-authenticated unsafe request must first pass the CSRF checks (see
/// [`crate::browser`]); then `csrf` is the session's CSRF token.
struct Presented<'a> {
    token: &'a str,
    csrf: Option<String>,
}

fn presented<'a>(parts: &'a Parts, state: &AppState) -> Result<Presented<'a>, ApiError> {
    match bearer(parts) {
        Ok(token) => Ok(Presented { token, csrf: None }),
        // Only without an Authorization header at all: a malformed one is an error, not a
        // reason to look elsewhere.
        Err(TokenProblem::Missing) => {
            let Some(token) = crate::browser::cookie_value(&parts.headers, &state.browser.cookie_name) else {
                return Err(strata_core::error::AppError::Unauthenticated(TokenProblem::Missing).into());
            };
            crate::browser::check_cookie_request(parts, &state.browser, token)?;
            Ok(Presented { token, csrf: Some(crate::browser::csrf_token_for(token)) })
        }
        Err(p) => Err(strata_core::error::AppError::Unauthenticated(p).into()),
    }
}

/// Whoever the bearer token (or the session cookie) says is calling: the admin credential
/// or a user session.
pub struct Caller(pub Actor);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = presented(parts, state)?;
        // The admin credential is a bearer token only, never a cookie.
        if presented.csrf.is_none() && state.is_admin_token(presented.token) {
            strata_core::timing::mark_authenticated();
            return Ok(Caller(Actor::System));
        }
        let (session, user) = authenticate(state, presented.token).await?;
        Ok(Caller(Actor::User { user: Box::new(user), session: session.id }))
    }
}

/// A user session (the admin credential is not one).
pub struct CurrentSession {
    pub session: Session,
    pub user: User,
    /// The session's CSRF token when the session cookie authenticated the request.
    pub csrf_token: Option<String>,
}

impl FromRequestParts<AppState> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = presented(parts, state)?;
        if presented.csrf.is_none() && state.is_admin_token(presented.token) {
            return Err(strata_core::error::AppError::Unauthenticated(TokenProblem::NotASession).into());
        }
        let (session, user) = authenticate(state, presented.token).await?;
        Ok(CurrentSession { session, user, csrf_token: presented.csrf })
    }
}

pub(crate) async fn authenticate(state: &AppState, token: &str) -> Result<(Session, User), ApiError> {
    let token =
        SessionToken::parse(token).ok_or(strata_core::error::AppError::Unauthenticated(TokenProblem::Malformed))?;
    let found = state.accounts.authenticate(&token).await?;
    strata_core::timing::mark_authenticated();
    Ok(found)
}

/// The client's throttle key: its address as resolved through trusted proxies by the
/// observe middleware, IPv6 grouped by /64 (see [`crate::client`]).
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .extensions
            .get::<ClientIp>()
            .map_or_else(|| "unknown".to_owned(), |ClientIp(ip)| client::throttle_key(*ip));
        Ok(ClientAddr(key))
    }
}

/// Parses `a=1&b=2`, refusing unknown and repeated parameters.
pub fn query_pairs(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                k.to_string(),
                format!("unknown query parameter {k:?}; allowed: {}", allowed.join(", ")),
            ));
        }
        if out.iter().any(|(seen, _)| seen == &k) {
            return Err(ApiError::bad_request("duplicate_parameter", k.to_string(), format!("{k:?} given twice")));
        }
        // `?email=` is what a form with an empty field sends: the filter is not given.
        if v.is_empty() {
            continue;
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let parse = |s: &str| serde_json::from_str::<WholeNumber>(s).map(|n| n.0).map_err(|e| e.to_string());
        assert_eq!(parse("50"), Ok(50));
        assert_eq!(parse("50.0"), Ok(50));
        assert_eq!(parse("5e1"), Ok(50));
        for bad in ["50.5", "-1", "4294967296", "1e300", "null", "\"5\""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_query_values_are_absent() {
        let pairs = query_pairs(Some("email=&limit=5&cursor="), &["email", "limit", "cursor"]).unwrap();
        assert_eq!(pairs, vec![("limit".to_owned(), "5".to_owned())]);
        assert!(query_pairs(Some("nope="), &["email"]).is_err(), "unknown names are still refused");
    }
}
