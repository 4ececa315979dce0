//! `/docs`: the interactive API reference. Swagger UI (vendored from npm, see
//! `assets/swagger-ui/VERSION`) renders `/openapi.json` with "try it out" against this
//! server. Everything is embedded in the binary: no CDN, works offline. The page runs under
//! a Content-Security-Policy that allows scripts, styles and requests from this origin only
//! (Swagger UI sets inline style attributes, hence `style-src 'unsafe-inline'`). Tokens typed
//! into "Authorize" stay in the page's memory: `persistAuthorization` is off.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Strata API reference</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="stylesheet" href="/docs/strata-docs.css">
</head>
<body>
<main id="swagger-ui" data-spec="/openapi.json"><noscript>This reference needs JavaScript; the raw document is at <a href="/openapi.json">/openapi.json</a>.</noscript></main>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/strata-docs.js"></script>
</body>
</html>
"#;

/// Starts Swagger UI on the document the page names. No online validator (offline, and no
/// third party learns our schema), no token persistence.
const INIT: &str = r#""use strict";
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
    filter: true,
    persistAuthorization: false,
    validatorUrl: null,
    defaultModelsExpandDepth: 0,
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout"
  });
});
"#;

const EXTRA_CSS: &str = "body { margin: 0; } .swagger-ui .info { margin: 24px 0; }\n";

/// The reference page.
#[utoipa::path(get, path = "/docs", tag = "operations", responses(
    (status = 200, description = "Interactive API reference (Swagger UI, embedded)", content_type = "text/html", body = String),
))]
pub async fn page() -> Response {
    asset_response("text/html; charset=utf-8", PAGE.as_bytes(), "no-cache")
}

/// The reference page's scripts and styles.
#[utoipa::path(get, path = "/docs/{asset}", tag = "operations",
    params(("asset" = String, Path, description = "swagger-ui-bundle.js, swagger-ui.css, strata-docs.js or strata-docs.css")),
    responses(
        (status = 200, description = "The asset"),
        (status = 404, description = "No such asset", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    // The vendored files change only with Strata's version; a day of caching is plenty and
    // a new release's page asks again (`no-cache` on the page itself).
    let cached = "public, max-age=86400";
    let (content_type, body): (&str, &'static [u8]) = match name.as_str() {
        "swagger-ui-bundle.js" => {
            ("text/javascript; charset=utf-8", include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js"))
        }
        "swagger-ui.css" => ("text/css; charset=utf-8", include_bytes!("../assets/swagger-ui/swagger-ui.css")),
        "strata-docs.js" => ("text/javascript; charset=utf-8", INIT.as_bytes()),
        "strata-docs.css" => ("text/css; charset=utf-8", EXTRA_CSS.as_bytes()),
        _ => return Err(ApiError::not_found_route(&format!("/docs/{name}"))),
    };
    Ok(asset_response(content_type, body, cached))
}

fn asset_response(content_type: &'static str, body: &'static [u8], cache: &'static str) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}
