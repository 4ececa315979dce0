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
    "/v1/users/{id}/sessions",
    "/v1/sessions",
    "/v1/sessions/current",
    "/v1/users/{id}/verification",
    "/v1/users/{id}/mfa/totp",
    "/v1/users/{id}/mfa/totp/confirm",
    "/v1/users/{id}/mfa/totp/recovery-codes",
    "/v1/sessions/mfa",
    "/v1/verifications",
    "/v1/email-changes/confirm",
    "/v1/password-resets",
    "/v1/password-resets/confirm",
    "/v1/audit",
    "/v1/groups",
    "/v1/groups/{id}",
    "/v1/groups/{id}/members",
    "/v1/groups/{id}/members/{user_id}",
    "/v1/provisioning-tokens",
    "/v1/provisioning-tokens/{id}",
    "/scim/v2/ServiceProviderConfig",
    "/scim/v2/ResourceTypes",
    "/scim/v2/ResourceTypes/{name}",
    "/scim/v2/Schemas",
    "/scim/v2/Schemas/{uri}",
    "/scim/v2/Users",
    "/scim/v2/Users/{id}",
    "/scim/v2/Groups",
    "/scim/v2/Groups/{id}",
    "/scim/v2/Bulk",
    "/v1/webhooks",
    "/v1/webhooks/{id}",
    "/v1/webhooks/{id}/rotate-secret",
    "/v1/webhooks/{id}/replay",
    "/v1/webhooks/{id}/deliveries",
    "/v1/webhooks/{id}/deliveries/{delivery_id}",
    "/v1/webhooks/{id}/deliveries/{delivery_id}/replay",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/asyncapi.json",
    "/docs",
    "/docs/{asset}",
    "/admin",
    "/admin/{asset}",
    "/admin/bench-report",
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
    let tag = *PROCESS_TAG.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    // `{tag:08x}-{n:012x}`, written by hand: `format!` was ~2,500 instructions a request.
    let mut id = [b'-'; 21];
    let hex = |out: &mut [u8], mut v: u64| {
        for b in out.iter_mut().rev() {
            *b = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
        }
    };
    hex(&mut id[..8], u64::from(tag));
    hex(&mut id[9..], n);
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends `d` in milliseconds with three decimals (whole microseconds), as `Server-Timing`
/// wants it, without float formatting or an allocation.
fn push_ms(out: &mut String, d: std::time::Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = micros / 1000;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&b| char::from(b)));
    out.push('.');
    let frac = (micros % 1000) as u32;
    for digit in [frac / 100, frac / 10 % 10, frac % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.in_flight();
    let route = route_label(&req);
    let method = method_label(req.method());
    let id = request_id(&req);
    // Without connect info (a router driven directly, as in unit tests) there is no peer.
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ci| ci.0.ip());
    let client = client::client_ip(peer, req.headers(), &state.trusted_proxies);
    req.extensions_mut().insert(ClientIp(client));
    let detail_for_client = state.timing_detail_from.iter().any(|c| c.contains(client));
    let traceparent =
        req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(timing::parse_traceparent);
    let trace = state.tracer.as_ref().and_then(|t| t.start(traceparent.as_deref()));
    let timings = Arc::new(Timings::traced(traceparent, trace));
    #[cfg(feature = "fault-injection")]
    let _held = fault::before_handler(route).await;
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
    let mut server_timing = String::with_capacity(96);
    if detail_for_client || timings.authenticated() {
        for (name, d) in [("app;dur=", app), (", cache;dur=", cache), (", db;dur=", db), (", hash;dur=", hash)] {
            server_timing.push_str(name);
            push_ms(&mut server_timing, d);
        }
        server_timing.push_str(", ");
    }
    server_timing.push_str("total;dur=");
    push_ms(&mut server_timing, total);
    let status = res.status().as_u16();
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&server_timing) {
        headers.insert("server-timing", v);
    }
    headers.insert("x-request-id", id.clone());
    state.metrics.observe_http(route, method, status, total);
    if let (Some(tracer), Some(trace)) = (&state.tracer, timings.trace()) {
        tracer.export(server_span(trace, route, method, status, &id));
    }

    let request_id = id.to_str().unwrap_or("");
    if status >= 500 {
        tracing::error!(request_id, route, method, status, total_ms = ms(total), db_ms = ms(db), "request failed");
    } else {
        tracing::debug!(request_id, route, method, status, total_ms = ms(total), db_ms = ms(db), "request");
    }
    res
}

/// The request's SERVER span (named and attributed per OpenTelemetry's HTTP conventions,
/// the route template rather than the path, so no ids or tokens) and its children.
fn server_span(
    trace: &strata_core::trace::RequestTrace,
    route: &'static str,
    method: &'static str,
    status: u16,
    request_id: &HeaderValue,
) -> Vec<strata_core::trace::Span> {
    use std::borrow::Cow;
    use strata_core::trace::AttributeValue::{Int, Str};
    let mut attributes = vec![
        ("http.request.method", Str(Cow::Borrowed(method))),
        ("http.response.status_code", Int(i64::from(status))),
        ("strata.request_id", Str(Cow::Owned(request_id.to_str().unwrap_or("").to_owned()))),
    ];
    let name = if route == "unmatched" {
        method.to_owned()
    } else {
        attributes.push(("http.route", Str(Cow::Borrowed(route))));
        format!("{method} {route}")
    };
    trace.finish(name, attributes, status >= 500)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn milliseconds_have_three_decimals() {
        let shown = |d| {
            let mut s = String::new();
            push_ms(&mut s, d);
            s
        };
        assert_eq!(shown(Duration::ZERO), "0.000");
        assert_eq!(shown(Duration::from_micros(7)), "0.007");
        assert_eq!(shown(Duration::from_micros(1_234)), "1.234");
        assert_eq!(shown(Duration::from_micros(12_345_670)), "12345.670");
        assert_eq!(shown(Duration::from_nanos(999)), "0.000");
    }

    #[test]
    fn minted_request_ids_are_hex_tag_and_counter() {
        let req = Request::new(axum::body::Body::empty());
        let a = request_id(&req);
        let b = request_id(&req);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a.len(), 21);
        assert_eq!(&a[8..9], "-");
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'), "{a}");
        assert_eq!(&a[..8], &b[..8], "one tag per process");
        let n = |id: &str| u64::from_str_radix(&id[9..], 16).unwrap();
        assert!(n(b) > n(a), "the counter increases");
    }
}

/// The induced bottlenecks of `STRATA_FAULT_INJECT` (see `strata_core::fault`), on `/v1`
/// routes only so probes and scrapes still measure the process.
#[cfg(feature = "fault-injection")]
mod fault {
    use std::sync::Mutex;

    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static LEAK: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

    /// Runs the configured faults; the returned guard (app_lock) is held until the
    /// response is ready, across every await of the handler.
    pub async fn before_handler(route: &str) -> Option<tokio::sync::MutexGuard<'static, ()>> {
        if !route.starts_with("/v1") {
            return None;
        }
        let faults = strata_core::fault::get();
        if let Some(bytes) = faults.mem_leak_bytes {
            // Written, so the pages are resident, not just reserved.
            let entry = vec![0x5a_u8; bytes].into_boxed_slice();
            LEAK.lock().unwrap_or_else(|p| p.into_inner()).push(entry);
        }
        if let Some(block) = faults.app_blocking {
            std::thread::sleep(block);
        }
        let held = match faults.app_lock {
            Some(hold) => {
                let guard = LOCK.lock().await;
                tokio::time::sleep(hold).await;
                Some(guard)
            }
            None => None,
        };
        held
    }
}
