//! `/admin`: the admin console, a web page served by the binary itself. Plain HTML, CSS and
//! JavaScript (`assets/admin/`: no framework, no build step, nothing from a CDN), embedded
//! with `include_str!`, so it works offline and needs no Node.js to build or run.
//!
//! The console holds no privilege of its own. It signs in through the API (a cookie session
//! of an admin account, its CSRF token on every change; or the admin token as a bearer,
//! kept in the tab's `sessionStorage`) and every action is an ordinary API call, with the
//! API's checks, throttles, versions and audit. Live health is read from `/metrics`.
//!
//! Every response here carries a Content-Security-Policy that allows scripts, styles and
//! requests from this origin only — no inline script or style, no framing, no foreign form
//! targets — so that text injected into the page could neither run nor leak anything.
//!
//! `POST /admin/bench-report` renders a `strata bench --json` report as its HTML report.
//! The renderer lives in strata-bench, which this crate does not link: the binary hands it
//! over as a [`BenchReportRenderer`] in the state.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Caller;

/// The console's policy: this origin only, nothing inline.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// A rendered bench report on its own: no script at all, its stylesheet from here, framed
/// only by the console (which shows it in a sandboxed frame).
const REPORT_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-ancestors 'self'; \
                          base-uri 'none'; form-action 'none'; sandbox";

/// Where the console's frame finds a rendered report's stylesheet.
pub const BENCH_REPORT_STYLESHEET: &str = "/admin/bench-report.css";

/// Bench reports carry a sample per second per endpoint: a long run with many endpoints is
/// a few megabytes.
pub const BENCH_REPORT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Renders `strata bench --json` reports for the console. Provided by the binary, which links
/// the load generator.
#[derive(Clone, Copy)]
pub struct BenchReportRenderer {
    /// The report as an HTML document linking its stylesheet from the given address, or why
    /// the bytes are not a report.
    pub render: fn(&[u8], &str) -> Result<String, String>,
    /// The stylesheet that document links.
    pub stylesheet: &'static str,
}

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const PAGE: &str = include_str!("../assets/admin/index.html");

const ASSETS: &[Asset] = &[
    Asset {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/admin/admin.js"),
    },
    Asset {
        name: "admin.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/admin/admin.css"),
    },
];

/// A strong validator per embedded file: the files change only with the binary, and a
/// browser revalidating gets a 304 instead of the bytes. Computed once for the console's own
/// files.
fn etag_of(body: &'static str) -> String {
    static TAGS: OnceLock<Vec<(usize, String)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(PAGE).chain(ASSETS.iter().map(|a| a.body)).map(|b| (b.as_ptr() as usize, digest(b))).collect()
    });
    let known = tags.iter().find(|(ptr, _)| *ptr == body.as_ptr() as usize);
    known.map_or_else(|| digest(body), |(_, tag)| tag.clone())
}

fn digest(body: &str) -> String {
    let hex: String = Sha256::digest(body.as_bytes()).iter().take(12).map(|byte| format!("{byte:02x}")).collect();
    format!("\"{hex}\"")
}

/// The console page.
#[utoipa::path(get, path = "/admin", tag = "admin console", responses(
    (status = 200, description = "The admin console (HTML; its script and stylesheet are under /admin/)", content_type = "text/html", body = String),
    (status = 304, description = "Not modified (`If-None-Match`)"),
))]
pub async fn page(headers: HeaderMap) -> Response {
    embedded(&headers, "text/html; charset=utf-8", PAGE)
}

/// The console's script and stylesheet, and a rendered bench report's stylesheet.
#[utoipa::path(get, path = "/admin/{asset}", tag = "admin console",
    params(("asset" = String, Path, description = "admin.js, admin.css or bench-report.css")),
    responses(
        (status = 200, description = "The asset"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such asset", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn asset(State(state): State<AppState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Some(asset) = ASSETS.iter().find(|a| a.name == name) {
        return embedded(&headers, asset.content_type, asset.body);
    }
    match (&state.bench_report, name.as_str()) {
        (Some(renderer), "bench-report.css") => embedded(&headers, "text/css; charset=utf-8", renderer.stylesheet),
        _ => ApiError::not_found_route(&format!("/admin/{name}")).into_response(),
    }
}

/// A `strata bench --json` report rendered as its HTML report (admins only). The console
/// reads the file in the browser and posts it here; nothing is stored.
#[utoipa::path(post, path = "/admin/bench-report", tag = "admin console",
    request_body(content = Object, content_type = "application/json", description = "A report written by `strata bench --json` (schema `strata-bench/1`)"),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The HTML report; its stylesheet is /admin/bench-report.css", content_type = "text/html", body = String),
        (status = 401, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin; or a cookie session without its CSRF token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "This server was built without the report renderer", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 16 MiB", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`bench_report_invalid`: not a report of this schema (`detail` says why)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn bench_report(
    State(state): State<AppState>,
    Caller(actor): Caller,
    req: Request,
) -> Result<Response, ApiError> {
    if !actor.is_admin() {
        return Err(strata_core::error::AppError::Forbidden("the bench report viewer requires an admin").into());
    }
    let Some(renderer) = state.bench_report else {
        return Err(ApiError::not_found_route("/admin/bench-report"));
    };
    crate::extract::require_json(req.headers())?;
    let bytes = crate::extract::read_body(req.into_body(), BENCH_REPORT_MAX_BYTES, state.body_read_timeout).await?;
    let html = (renderer.render)(&bytes, BENCH_REPORT_STYLESHEET)
        .map_err(|why| ApiError::invalid_field("bench_report_invalid", "body", why))?;
    let mut res = Response::new(Body::from(html));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPORT_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(res)
}

/// An embedded file with its policy headers; `no-cache` with an ETag, so a new binary's
/// console is picked up at once and an unchanged one costs a 304.
fn embedded(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let tag = etag_of(body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut res = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = res.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_embedded_assets_and_nothing_inline() {
        for asset in ["/admin/admin.js", "/admin/admin.css"] {
            assert!(PAGE.contains(asset), "{asset}");
        }
        assert!(!PAGE.contains("<script>") && !PAGE.contains("<style") && !PAGE.contains("style="), "nothing inline");
        // No inline event handlers (` onclick=` and the like).
        for (at, _) in PAGE.match_indices(" on") {
            let attribute: String = PAGE[at + 1..].chars().take_while(char::is_ascii_alphabetic).collect();
            assert!(!PAGE[at + 1 + attribute.len()..].starts_with('='), "inline handler {attribute}");
        }
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"), "nothing from elsewhere");
        for asset in ASSETS {
            assert!(!asset.body.contains("innerHTML"), "{}: text goes in as text", asset.name);
            assert!(!asset.body.contains("localStorage"), "{}: nothing outlives the tab", asset.name);
        }
    }

    #[test]
    fn every_file_has_its_own_etag() {
        let tags: Vec<String> = std::iter::once(PAGE).chain(ASSETS.iter().map(|a| a.body)).map(etag_of).collect();
        assert!(tags.iter().all(|t| t.len() == 26 && t.starts_with('"')), "{tags:?}");
        let mut unique = tags.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), tags.len());
    }
}
