//! Strata's HTTP layer: the axum router of API v1, its extractors and DTOs, problem+json
//! errors, metrics, OpenAPI and the docs page.
//!
//! Architecture invariant: this is the only crate that knows JSON wire shapes and status
//! codes. It depends on strata-core's services and ports, never on a storage adapter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use strata_core::secret::Secret;
use strata_core::service::Accounts;

pub mod admin;
pub mod asyncapi;
pub mod browser;
pub mod client;
pub mod docs;
pub mod dto;
pub mod error;
pub mod extract;
pub mod group_routes;
pub mod lifecycle_routes;
pub mod metrics;
pub mod mfa_routes;
pub mod observe;
pub mod openapi;
mod openapi_rules;
pub mod provisioning_routes;
pub mod routes;
pub mod scim_bulk;
pub mod scim_routes;
pub mod server;
pub mod webhook_routes;

use crate::dto::Health;
use crate::error::ApiError;
pub use crate::metrics::Metrics;

/// Default request body limit: far above any legitimate request of API v1.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// What every handler shares. Cloned per request by axum (several times: the middleware
/// and each extractor), so it is one `Arc`: cloning the fields one by one cost an allocation
/// (the admin token) and a handful of reference-count updates per clone.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

impl AppState {
    pub fn new(inner: StateInner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = StateInner;

    fn deref(&self) -> &StateInner {
        &self.0
    }
}

pub struct StateInner {
    pub accounts: Arc<Accounts>,
    pub webhooks: Arc<strata_core::webhook_admin::WebhookAdmin>,
    pub groups: Arc<strata_core::groups::Groups>,
    pub provisioning: Arc<strata_core::provisioning::ProvisioningTokens>,
    pub metrics: Arc<Metrics>,
    /// Static admin bearer secret, if configured.
    pub admin_token: Option<Secret>,
    /// False before startup completes and once shutdown begins, so load balancers drain us.
    pub ready: Arc<AtomicBool>,
    pub body_limit: usize,
    /// Bound on receiving a request body once its head has arrived.
    pub body_read_timeout: std::time::Duration,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers are believed.
    pub trusted_proxies: Arc<[client::Cidr]>,
    /// Clients that always get the full `Server-Timing` split (others only once they
    /// authenticate).
    pub timing_detail_from: Arc<[client::Cidr]>,
    /// Cookie sessions, CSRF and CORS.
    pub browser: browser::BrowserSettings,
    /// Request tracing; `None` (the default) costs nothing.
    pub tracer: Option<Arc<strata_core::trace::Tracer>>,
    /// The admin console's bench report viewer; `None` answers 404 there.
    pub bench_report: Option<admin::BenchReportRenderer>,
}

impl StateInner {
    pub fn is_admin_token(&self, presented: &str) -> bool {
        self.admin_token.as_ref().is_some_and(|secret| secret.matches(presented))
    }
}

pub fn router(state: AppState) -> Router {
    use axum::routing::{get as g, post};

    use crate::group_routes as gr;
    use crate::webhook_routes as wh;
    let router = Router::new()
        .route("/v1/groups", post(gr::create_group).get(gr::list_groups))
        .route("/v1/groups/{id}", g(gr::get_group).patch(gr::update_group).delete(gr::delete_group))
        .route("/v1/groups/{id}/members", g(gr::list_members).post(gr::add_members))
        .route("/v1/groups/{id}/members/{user_id}", axum::routing::delete(gr::remove_member))
        .route("/v1/users", post(routes::create_user).get(routes::list_users))
        .route("/v1/users/{id}", g(routes::get_user).patch(routes::update_user).delete(routes::delete_user))
        .route("/v1/users/{id}/sessions", g(routes::list_user_sessions).delete(routes::revoke_user_sessions))
        .route("/v1/sessions", post(routes::login))
        .route("/v1/sessions/mfa", post(crate::mfa_routes::complete_mfa_login))
        .route("/v1/users/{id}/mfa/totp", post(crate::mfa_routes::start_totp).delete(crate::mfa_routes::disable_totp))
        .route("/v1/users/{id}/mfa/totp/confirm", post(crate::mfa_routes::confirm_totp))
        .route("/v1/users/{id}/mfa/totp/recovery-codes", post(crate::mfa_routes::regenerate_recovery_codes))
        .route("/v1/sessions/current", g(routes::current_session).delete(routes::logout))
        .route("/v1/users/{id}/verification", post(crate::lifecycle_routes::request_verification))
        .route("/v1/verifications", post(crate::lifecycle_routes::confirm_verification))
        .route("/v1/email-changes/confirm", post(crate::lifecycle_routes::confirm_email_change))
        .route("/v1/password-resets", post(crate::lifecycle_routes::request_password_reset))
        .route("/v1/password-resets/confirm", post(crate::lifecycle_routes::confirm_password_reset))
        .route("/v1/audit", g(routes::list_audit))
        .route("/v1/webhooks", post(wh::create_webhook).get(wh::list_webhooks))
        .route("/v1/webhooks/{id}", g(wh::get_webhook).patch(wh::update_webhook).delete(wh::delete_webhook))
        .route("/v1/webhooks/{id}/rotate-secret", post(wh::rotate_secret))
        .route("/v1/webhooks/{id}/replay", post(wh::replay_failed))
        .route("/v1/webhooks/{id}/deliveries", g(wh::list_deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}", g(wh::get_delivery))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/replay", post(wh::replay_delivery))
        .route("/v1/provisioning-tokens", post(provisioning_routes::create_token).get(provisioning_routes::list_tokens))
        .route("/v1/provisioning-tokens/{id}", axum::routing::delete(provisioning_routes::revoke_token))
        .nest("/scim/v2", scim_routes::router())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/asyncapi.json", get(asyncapi_json))
        .route("/docs", get(docs::page))
        .route("/docs/{asset}", get(docs::asset))
        .route("/admin", get(admin::page))
        .route("/admin/{asset}", get(admin::asset))
        .route("/admin/bench-report", post(admin::bench_report))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // Not installed without listed origins, so the hot paths pay nothing for it then.
    let router = if state.browser.cors_allowed_origins.is_empty() {
        router
    } else {
        router.layer(axum::middleware::from_fn_with_state(state.clone(), browser::cors))
    };
    router.layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe)).with_state(state)
}

/// What a `worker` instance serves: health, readiness, metrics and the documents, so that
/// it can be probed and scraped like an API instance.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/asyncapi.json", get(asyncapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found_route(uri.path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok", database: None })
}

/// Readiness: accepting traffic and the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = Health),
    (status = 503, description = "Starting, draining, or the database is unreachable", body = Health),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    if !state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "not_ready", database: None }));
    }
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.accounts.store().ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, axum::Json(Health { status: "ok", database: Some("ok") })),
        _ => {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "not_ready", database: Some("unreachable") }))
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain; version=0.0.4", body = String),
))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(routing) = state.accounts.store().read_routing() {
        state.metrics.observe_read_routing(&routing);
    }
    if let Some(routing) = state.accounts.store().shard_routing() {
        state.metrics.observe_shard_routing(&routing);
    }
    let text = state.metrics.render(state.accounts.store().pool_stats(), state.accounts.hasher().queued());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The AsyncAPI 3.0 document of every event Strata publishes.
#[utoipa::path(get, path = "/asyncapi.json", tag = "operations", responses(
    (status = 200, description = "AsyncAPI 3.0 document", content_type = "application/json", body = Object),
))]
pub async fn asyncapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], asyncapi::json()).into_response()
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object),
))]
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document_json()).into_response()
}
