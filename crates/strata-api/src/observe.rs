//! The middleware every request passes through: request id, per-component time accounting
//! turned into `Server-Timing`, per-route metrics and a structured log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use strata_core::timing::{self, Component, Timings};

use crate::AppState;
use crate::client::{self, ClientIp};

/// Every route we serve, as a closed set of static label values.
pub const ROUTES: &[&str] = &[
    "/v1/users",
    "/v1/users/{id}",
    "/v1/sessions",
    "/v1/sessions/current",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
];

fn route_label(req: &Request) -> &'static str {
    req.extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied())
        .unwrap_or("unmatched")
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);
static PROCESS_TAG: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// A client-supplied id is kept if it is short and harmless in logs; otherwise we mint one
/// from a per-process random tag and a counter (no syscall per request).
fn request_id(req: &Request) -> HeaderValue {
    if let Some(v) = req.headers().get("x-request-id")
        && v.len() <= 64
        && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        && !v.is_empty()
    {
        return v.clone();
    }
    let tag = PROCESS_TAG.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{tag:08x}-{n:012x}")).unwrap_or(HeaderValue::from_static("unknown"))
}

pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(&req);
    let method = method_label(req.method());
    let id = request_id(&req);
    // Without connect info (a router driven directly, as in unit tests) there is no peer.
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ci| ci.0.ip());
    let client = client::client_ip(peer, req.headers(), &state.trusted_proxies);
    req.extensions_mut().insert(ClientIp(client));
    let detail_for_client = state.timing_detail_from.iter().any(|c| c.contains(client));
    let timings = Arc::new(Timings::default());
    let mut res = timing::scope(timings.clone(), next.run(req)).await;

    let total = started.elapsed();
    let db = timings.get(Component::Db);
    let hash = timings.get(Component::Hash);
    let cache = timings.get(Component::Cache);
    let app = total.saturating_sub(db).saturating_sub(hash).saturating_sub(cache);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    // The split would tell an anonymous caller which phase ran (a hash for an existing
    // account, a database miss for an unknown one); the total alone is what any client
    // measures anyway.
    let server_timing = if detail_for_client || timings.authenticated() {
        format!(
            "app;dur={:.3}, cache;dur={:.3}, db;dur={:.3}, hash;dur={:.3}, total;dur={:.3}",
            ms(app),
            ms(cache),
            ms(db),
            ms(hash),
            ms(total)
        )
    } else {
        format!("total;dur={:.3}", ms(total))
    };
    let status = res.status().as_u16();
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&server_timing) {
        headers.insert("server-timing", v);
    }
    headers.insert("x-request-id", id.clone());
    state.metrics.observe_http(route, method, status, total);

    let request_id = id.to_str().unwrap_or("");
    if status >= 500 {
        tracing::error!(request_id, route, method, status, total_ms = ms(total), db_ms = ms(db), "request failed");
    } else {
        tracing::debug!(request_id, route, method, status, total_ms = ms(total), db_ms = ms(db), "request");
    }
    res
}
