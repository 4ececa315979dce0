//! Browser clients: the session as a cookie, CSRF protection for requests that the cookie
//! authenticates, and CORS for the origins allowed to call the API with credentials.
//!
//! A login opts in per request (`"cookie": true`). The session token then travels in an
//! `HttpOnly` cookie that scripts cannot read, and the answer carries a CSRF token instead of
//! the session token. The CSRF token is derived from the session token (SHA-256 under a
//! label), so any instance checks it without state or a shared secret, and nobody can make
//! one without the session token itself. It is also set as a readable cookie for pages on
//! the API's own site (classic double submit); pages on another origin read it from the
//! login answer or from `GET /v1/sessions/current`.
//!
//! Every unsafe request (POST, PUT, PATCH, DELETE) authenticated by the cookie must carry
//! `X-CSRF-Token` with that value, and its `Origin`, when sent, must be listed in
//! `http.cors_allowed_origins` or be the API's own. Bearer-authenticated requests are not
//! subject to either: a browser never attaches an `Authorization` header by itself.
//!
//! CORS costs nothing when `http.cors_allowed_origins` is empty: the layer is not installed.
//! With origins listed, a request without `Origin` costs one header lookup.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// The header a cookie-authenticated unsafe request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// `SameSite` of the session and CSRF cookies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Some(SameSite::Strict),
            "lax" => Some(SameSite::Lax),
            "none" => Some(SameSite::None),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing else.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw == "*" {
        return Err("\"*\" is not allowed: credentials are only for listed origins".into());
    }
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| format!("{raw:?} is not scheme://host[:port]"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("{raw:?}: the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err(format!("{raw:?} must be only scheme://host[:port], with no path or trailing slash"));
    }
    Ok(format!("{scheme}://{}", rest.to_ascii_lowercase()))
}

/// How cookie sessions and CORS behave (`auth.cookie_*`, `http.cors_*`).
#[derive(Clone, Debug)]
pub struct BrowserSettings {
    pub cookie_name: String,
    pub cookie_domain: Option<String>,
    pub same_site: SameSite,
    /// Off only for plain-HTTP local development (start-up warns).
    pub secure: bool,
    /// Exact origins allowed to call with credentials; empty: no CORS at all.
    pub cors_allowed_origins: Vec<String>,
    pub cors_max_age: Duration,
}

impl Default for BrowserSettings {
    fn default() -> Self {
        BrowserSettings {
            cookie_name: "strata_session".into(),
            cookie_domain: None,
            same_site: SameSite::Lax,
            secure: true,
            cors_allowed_origins: Vec::new(),
            cors_max_age: Duration::from_secs(600),
        }
    }
}

impl BrowserSettings {
    /// The readable cookie that carries the CSRF token.
    pub fn csrf_cookie_name(&self) -> String {
        format!("{}_csrf", self.cookie_name)
    }

    fn allows_origin(&self, origin: &[u8]) -> bool {
        self.cors_allowed_origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }

    fn cookie(&self, name: &str, value: &str, max_age_secs: i64, http_only: bool) -> Option<HeaderValue> {
        let mut c = format!("{name}={value}; Path=/; Max-Age={max_age_secs}; SameSite={}", self.same_site.as_str());
        if let Some(domain) = &self.cookie_domain {
            c.push_str("; Domain=");
            c.push_str(domain);
        }
        if self.secure {
            c.push_str("; Secure");
        }
        if http_only {
            c.push_str("; HttpOnly");
        }
        HeaderValue::from_str(&c).ok()
    }

    /// The `Set-Cookie` values of a cookie login: the session (HttpOnly) and its CSRF token.
    pub fn login_cookies(&self, token: &str, csrf: &str, max_age_secs: i64) -> Vec<HeaderValue> {
        let max_age = max_age_secs.max(0);
        [
            self.cookie(&self.cookie_name, token, max_age, true),
            self.cookie(&self.csrf_cookie_name(), csrf, max_age, false),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The `Set-Cookie` values that remove both cookies.
    pub fn clearing_cookies(&self) -> Vec<HeaderValue> {
        [self.cookie(&self.cookie_name, "", 0, true), self.cookie(&self.csrf_cookie_name(), "", 0, false)]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The CSRF token that belongs to a session token.
pub fn csrf_token_for(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"strata csrf v1\0");
    h.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// The value of cookie `name` in the request's `Cookie` headers, if any.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn forbidden(code: &'static str, field: &'static str, detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, "Forbidden", detail).field(field)
}

fn origin_not_allowed() -> ApiError {
    forbidden("origin_not_allowed", "Origin", "this origin is not in http.cors_allowed_origins")
}

/// A request that sets or uses a session cookie may come from a page of another origin
/// only if that origin is listed. Same-origin requests (the `Origin` naming the `Host` the
/// request was sent to) and requests without `Origin` (not sent by a script in a browser
/// that forges nothing) pass.
pub fn check_origin(parts_headers: &HeaderMap, settings: &BrowserSettings) -> Result<(), ApiError> {
    let Some(origin) = parts_headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.as_bytes();
    if settings.allows_origin(origin) {
        return Ok(());
    }
    let authority = origin.split(|b| *b == b'/').nth(2);
    let host = parts_headers.get(header::HOST).map(HeaderValue::as_bytes);
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(origin_not_allowed()),
    }
}

/// The checks a cookie-authenticated request must pass before its session is even looked
/// up: for unsafe methods, an allowed origin and the session's CSRF token in the header.
pub fn check_cookie_request(parts: &Parts, settings: &BrowserSettings, session_token: &str) -> Result<(), ApiError> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    check_origin(&parts.headers, settings)?;
    let Some(presented) = parts.headers.get(CSRF_HEADER) else {
        return Err(forbidden(
            "csrf_token_missing",
            "X-CSRF-Token",
            "a request authenticated by the session cookie needs the X-CSRF-Token header from the login",
        ));
    };
    let expected = csrf_token_for(session_token);
    if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(forbidden("csrf_token_invalid", "X-CSRF-Token", "X-CSRF-Token is not this session's CSRF token"));
    }
    Ok(())
}

const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const ALLOW_HEADERS: &str =
    "Authorization, Content-Type, If-Match, Idempotency-Key, X-CSRF-Token, X-Request-Id, traceparent";
const EXPOSE_HEADERS: &str = "ETag, Location, Retry-After, X-Request-Id";

/// The CORS layer (installed only when origins are listed). Listed origins get their own
/// origin echoed with credentials allowed; a preflight from an unlisted one gets a 403
/// `origin_not_allowed`; other requests from unlisted origins are served without CORS
/// headers, so the browser keeps the answer from the page.
pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let allowed = state.browser.allows_origin(origin.as_bytes());
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut res = if allowed {
            let mut res = StatusCode::NO_CONTENT.into_response();
            let h = res.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(state.browser.cors_max_age.as_secs()));
            res
        } else {
            origin_not_allowed().into_response()
        };
        let h = res.headers_mut();
        h.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        if allowed {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        return res;
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_exactly() {
        assert_eq!(parse_origin("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(parse_origin("https://App.Example").unwrap(), "https://app.example");
        for bad in ["*", "app.example", "ftp://x", "https://x/", "https://x/path", "https://", "https://*.x"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_among_others_and_set_with_every_attribute() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; strata_session=st_x"));
        h.append(header::COOKIE, HeaderValue::from_static("strata_session_csrf=c"));
        assert_eq!(cookie_value(&h, "strata_session"), Some("st_x"));
        assert_eq!(cookie_value(&h, "strata_session_csrf"), Some("c"));
        assert_eq!(cookie_value(&h, "strata"), None);
        let s = BrowserSettings { cookie_domain: Some("app.example".into()), ..BrowserSettings::default() };
        let set = s.login_cookies("st_x", "c", 60);
        assert_eq!(
            set[0].to_str().unwrap(),
            "strata_session=st_x; Path=/; Max-Age=60; SameSite=Lax; Domain=app.example; Secure; HttpOnly"
        );
        assert_eq!(
            set[1].to_str().unwrap(),
            "strata_session_csrf=c; Path=/; Max-Age=60; SameSite=Lax; Domain=app.example; Secure"
        );
        assert!(s.clearing_cookies().iter().all(|c| c.to_str().unwrap().contains("Max-Age=0")));
        assert_ne!(csrf_token_for("st_a"), csrf_token_for("st_b"));
    }
}
