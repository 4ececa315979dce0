//! Handlers of `/v1/webhooks` (admins only): endpoints, secret rotation, the delivery log
//! and replays. Parse, call [`strata_core::webhook_admin::WebhookAdmin`], render.

use axum::Json;
use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use strata_core::domain::parse_rfc3339;
use strata_core::webhook_admin::{EndpointPatch, NewEndpoint};
use strata_core::webhooks::{DeliveryQuery, DeliveryStatus};

use crate::AppState;
use crate::dto::{
    AttemptBody, CreateWebhookRequest, DeliveryBody, DeliveryDetail, DeliveryList, ReplayRequest, ReplayResponse,
    UpdateWebhookRequest, WebhookBody, WebhookList,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, JsonBody, query_pairs};
use crate::routes::{decode_cursor, encode_cursor, list_limit};

/// The ids in a `/v1/webhooks/{id}[/deliveries/{delivery_id}]` path.
pub struct PathIds(pub uuid::Uuid, pub Option<uuid::Uuid>);

impl FromRequestParts<AppState> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<Vec<String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_uuid", "id", "the path must name a webhook endpoint"))?;
        let parse = |field: &'static str, s: &String| {
            s.parse::<uuid::Uuid>()
                .map_err(|_| ApiError::bad_request("invalid_uuid", field, format!("{s:?} is not a UUID")))
        };
        let id = parse("id", raw.first().ok_or_else(|| ApiError::bad_request("invalid_uuid", "id", "no id"))?)?;
        let delivery = raw.get(1).map(|s| parse("delivery_id", s)).transpose()?;
        Ok(PathIds(id, delivery))
    }
}

fn created(body: WebhookBody) -> Response {
    let mut res = (StatusCode::CREATED, Json(&body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/webhooks/{}", body.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Register a webhook endpoint. The answer carries its signing secret, once.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhookRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = WebhookBody, headers(("Location" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad or forbidden URL, unknown event type, bad rate limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(req): JsonBody<CreateWebhookRequest>,
) -> ApiResult<Response> {
    let new = NewEndpoint {
        url: req.url,
        events: req.events,
        description: req.description,
        rate_limit: req.rate_limit.map(|n| n.0),
    };
    let endpoint = state.webhooks.create(&actor, new).await?;
    Ok(created(WebhookBody::new(&endpoint, true)))
}

/// Every webhook endpoint (without secrets).
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_webhooks(State(state): State<AppState>, Caller(actor): Caller) -> ApiResult<Json<WebhookList>> {
    let all = state.webhooks.list(&actor).await?;
    Ok(Json(WebhookList { items: all.iter().map(|e| WebhookBody::new(e, false)).collect() }))
}

#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, _): PathIds,
) -> ApiResult<Json<WebhookBody>> {
    Ok(Json(WebhookBody::new(&state.webhooks.get(&actor, id).await?, false)))
}

/// Change the URL, events, description or rate limit; enable or disable.
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    request_body = UpdateWebhookRequest,
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_webhook(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, _): PathIds,
    JsonBody(req): JsonBody<UpdateWebhookRequest>,
) -> ApiResult<Json<WebhookBody>> {
    let patch = EndpointPatch {
        url: req.url,
        events: req.events,
        description: req.description,
        rate_limit: req.rate_limit.map(|n| n.0),
        enabled: req.enabled,
    };
    Ok(Json(WebhookBody::new(&state.webhooks.update(&actor, id, patch).await?, false)))
}

/// Delete an endpoint with its deliveries.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 204),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, _): PathIds,
) -> ApiResult<StatusCode> {
    state.webhooks.delete(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate the signing secret: the new one is returned once; deliveries are signed with
/// both until `previous_secret_expires_at`.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, _): PathIds,
) -> ApiResult<Response> {
    let e = state.webhooks.rotate_secret(&actor, id).await?;
    let mut res = Json(WebhookBody::new(&e, true)).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// The endpoint's deliveries, oldest first.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(
        ("id" = String, Path, format = Uuid),
        ("status" = Option<String>, Query, description = "`pending`, `delivered` or `failed`"),
        ("limit" = Option<u32>, Query, description = "1–200, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DeliveryList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, _): PathIds,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<DeliveryList>> {
    let mut q = DeliveryQuery { endpoint_id: id, ..DeliveryQuery::default() };
    for (k, v) in query_pairs(query.as_deref(), &["status", "limit", "cursor"])? {
        match k.as_str() {
            "status" => {
                q.status = Some(DeliveryStatus::parse(&v).ok_or_else(|| {
                    ApiError::bad_request("invalid_status", "status", "status must be pending, delivered or failed")
                })?)
            }
            "limit" => q.limit = list_limit(&state, &v)?,
            _ => q.after = Some(uuid::Uuid::from_bytes(decode_cursor(&v)?)),
        }
    }
    let page = state.webhooks.deliveries(&actor, q).await?;
    Ok(Json(DeliveryList {
        items: page.items.iter().map(DeliveryBody::from).collect(),
        next_cursor: page.next_after.map(|id| encode_cursor(id.as_bytes())),
    }))
}

/// One delivery with every attempt made.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries/{delivery_id}", tag = "webhooks",
    params(("id" = String, Path, format = Uuid), ("delivery_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = DeliveryDetail),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_delivery(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, delivery): PathIds,
) -> ApiResult<Json<DeliveryDetail>> {
    let delivery = delivery.ok_or_else(|| ApiError::bad_request("invalid_uuid", "delivery_id", "no delivery id"))?;
    let (d, attempts) = state.webhooks.delivery(&actor, id, delivery).await?;
    Ok(Json(DeliveryDetail {
        delivery: DeliveryBody::from(&d),
        attempt_log: attempts.iter().map(AttemptBody::from).collect(),
    }))
}

/// Send one delivery again (dead-lettered or delivered), with a fresh set of attempts.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/replay", tag = "webhooks",
    params(("id" = String, Path, format = Uuid), ("delivery_id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Due again"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Still pending", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_delivery(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, delivery): PathIds,
) -> ApiResult<StatusCode> {
    let delivery = delivery.ok_or_else(|| ApiError::bad_request("invalid_uuid", "delivery_id", "no delivery id"))?;
    state.webhooks.replay(&actor, id, delivery).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Send every dead-lettered delivery since a time again.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/replay", tag = "webhooks",
    request_body = ReplayRequest,
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 202, body = ReplayResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad `since`, or the endpoint is disabled", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_failed(
    State(state): State<AppState>,
    Caller(actor): Caller,
    PathIds(id, _): PathIds,
    JsonBody(req): JsonBody<ReplayRequest>,
) -> ApiResult<(StatusCode, Json<ReplayResponse>)> {
    let since = parse_rfc3339(&req.since).ok_or_else(|| {
        ApiError::from(strata_core::error::ValidationError::new(
            "since",
            "invalid",
            "since must be an RFC 3339 date-time",
        ))
    })?;
    let replayed = state.webhooks.replay_failed(&actor, id, since).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayResponse { replayed })))
}
