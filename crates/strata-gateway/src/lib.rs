//! The gateway role (`strata serve --role gateway`): one address in front of many api
//! instances. See ARCHITECTURE.md, Gateway.
//!
//! Its own endpoints live under `/gateway/` (health, readiness, metrics, the upstream
//! list), so that every other path — `/healthz` included — reaches an upstream.

pub mod balance;
pub mod discovery;
pub mod proxy;
pub mod registry;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strata_api::Metrics;
use strata_api::server::ServerLimits;
use tokio::net::TcpListener;

pub use crate::proxy::{Gateway, GatewayOptions};

#[derive(Clone)]
struct GatewayState {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    client: proxy::UpstreamClient,
}

impl axum::extract::FromRef<GatewayState> for Arc<Gateway> {
    fn from_ref(s: &GatewayState) -> Self {
        s.gateway.clone()
    }
}

impl axum::extract::FromRef<GatewayState> for proxy::UpstreamClient {
    fn from_ref(s: &GatewayState) -> Self {
        s.client.clone()
    }
}

/// The gateway's routes for one serving thread, with that thread's upstream pool.
pub fn router(gateway: Arc<Gateway>, metrics: Arc<Metrics>) -> Router {
    let client = proxy::upstream_client(gateway.options());
    Router::new()
        .route("/gateway/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/gateway/readyz", get(readyz))
        .route("/gateway/metrics", get(render_metrics))
        .route("/gateway/upstreams", get(proxy::upstreams_view))
        .fallback(proxy::proxy)
        .with_state(GatewayState { gateway, metrics, client })
}

/// Ready once discovery has answered, while at least one upstream is available, and
/// until shutdown begins.
async fn readyz(State(s): State<GatewayState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let now = std::time::Instant::now();
    let available = s.gateway.upstreams().upstreams.iter().filter(|u| u.available(now)).count();
    let ready = s.gateway.ready.load(Ordering::Acquire) && available > 0;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        axum::Json(
            serde_json::json!({"status": if ready {"ready"} else {"not ready"}, "available_upstreams": available}),
        ),
    )
}

async fn render_metrics(State(s): State<GatewayState>) -> Response {
    let mut text = s.metrics.render(strata_core::ports::PoolStats::default(), 0);
    text.push_str(&s.gateway.render_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Runs the gateway on `listener` until `shutdown` resolves, then drains: readiness false,
/// `drain_delay` for whoever balances the gateways to notice, stop accepting, and wait up
/// to `grace` for requests in flight. Fails only if the serving threads cannot start.
pub async fn run(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    drain_delay: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(gateway.clone().discover(stopping.clone()));
    tokio::spawn(gateway.clone().check_health(stopping));
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let draining = gateway.clone();
    let stop_accepting = async move {
        shutdown.await;
        draining.ready.store(false, Ordering::Release);
        tracing::info!(
            drain_delay_ms = drain_delay.as_millis() as u64,
            "shutdown requested; gateway readiness now false"
        );
        tokio::time::sleep(drain_delay).await;
        let _ = draining_tx.send(());
    };
    // One serving thread per core, each with its own pool (see serve_threads).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let routers = (0..threads).map(|_| router(gateway.clone(), metrics.clone())).collect();
    let server = tokio::spawn(strata_api::server::serve_threads(listener, routers, limits, metrics, stop_accepting));
    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        _ = draining_rx => match tokio::time::timeout(grace, &mut server).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time; exiting");
                Ok(Ok(()))
            }
        },
    };
    let _ = stop.send(true);
    served.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
