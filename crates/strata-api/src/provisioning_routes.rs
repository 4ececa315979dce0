//! Handlers of `/v1/provisioning-tokens` (admins only): the bearer tokens SCIM clients use.
//! Parse, call [`strata_core::provisioning::ProvisioningTokens`], render.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use strata_core::domain::rfc3339;
use strata_core::provisioning::ProvisioningToken;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Caller, JsonBody};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvisioningTokenRequest {
    /// What the token is for, e.g. "Entra ID production"; 1–100 characters.
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProvisioningTokenBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub name: String,
    /// The bearer token (`scim_…`): only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProvisioningTokenList {
    pub items: Vec<ProvisioningTokenBody>,
}

fn body(t: &ProvisioningToken, token: Option<String>) -> ProvisioningTokenBody {
    ProvisioningTokenBody {
        id: t.id.to_string(),
        name: t.name.clone(),
        token,
        created_at: rfc3339(t.created_at),
        revoked_at: t.revoked_at.map(rfc3339),
    }
}

/// Create a provisioning token for a SCIM client; the token is shown once.
#[utoipa::path(
    post, path = "/v1/provisioning-tokens", tag = "scim",
    request_body = CreateProvisioningTokenRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ProvisioningTokenBody),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_token(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(req): JsonBody<CreateProvisioningTokenRequest>,
) -> ApiResult<Response> {
    let (token, secret) = state.provisioning.create(&actor, &req.name).await?;
    let mut res = (StatusCode::CREATED, Json(body(&token, Some(secret)))).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Every provisioning token (without the tokens), revoked ones too.
#[utoipa::path(
    get, path = "/v1/provisioning-tokens", tag = "scim",
    security(("bearer" = [])),
    responses(
        (status = 200, body = ProvisioningTokenList),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<ProvisioningTokenList>> {
    let all = state.provisioning.list(&actor).await?;
    Ok(Json(ProvisioningTokenList { items: all.iter().map(|t| body(t, None)).collect() }))
}

/// Revoke a provisioning token: it stops working at once.
#[utoipa::path(
    delete, path = "/v1/provisioning-tokens/{id}", tag = "scim",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked (or already was)"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_token(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = id
        .parse::<uuid::Uuid>()
        .map_err(|_| ApiError::bad_request("invalid_uuid", "id", format!("{id:?} is not a UUID")))?;
    state.provisioning.revoke(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
