//! TOTP second factor endpoints: enrolment, confirmation, recovery codes, disabling (or
//! an admin's reset) and the second login step. Parse, call the service, render.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use strata_core::domain::Password;
use strata_core::error::ValidationError;
use strata_core::totp::{Challenge, RecoveryCode, SecondFactor};
use utoipa::ToSchema;

use crate::AppState;
use crate::dto::LoginResponse;
use crate::error::{ApiResult, Problem};
use crate::extract::{Caller, ClientAddr, JsonBody, OptionalJsonBody, PathUserId};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnrolRequest {
    pub current_password: String,
}

/// The new secret, shown this once; TOTP is off until confirmed with a code.
#[derive(Serialize, ToSchema)]
pub struct TotpEnrolResponse {
    /// Base32, 160 bits (SHA-1, 6 digits, 30 s steps).
    #[schema(example = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")]
    pub secret: String,
    #[schema(
        example = "otpauth://totp/Strata:ada%40example.com?secret=JBSW…&issuer=Strata&algorithm=SHA1&digits=6&period=30"
    )]
    pub otpauth_uri: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpCodeRequest {
    /// Six digits from the app, or (where accepted) a recovery code `xxxxx-xxxxx`.
    #[schema(example = "123456")]
    pub code: String,
}

/// Ten single-use recovery codes, shown this once; stored only hashed.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    /// The `challenge` of the `mfa_required` problem.
    pub challenge: String,
    /// A TOTP code or a recovery code.
    pub code: String,
    /// Set the session as a cookie, as for `POST /v1/sessions`.
    #[serde(default)]
    pub cookie: bool,
}

fn second_factor(raw: &str) -> Result<SecondFactor, ValidationError> {
    SecondFactor::parse(raw).ok_or_else(|| {
        ValidationError::new("code", "mfa_code_malformed", "a code is six digits, or a recovery code xxxxx-xxxxx")
    })
}

fn recovery_codes(codes: &[RecoveryCode]) -> Response {
    let body = RecoveryCodes { recovery_codes: codes.iter().map(RecoveryCode::expose).collect() };
    (StatusCode::OK, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)).into_response()
}

/// Start a TOTP enrolment (self only).
///
/// Answers with a new secret; TOTP turns on only once a code from it is confirmed.
/// Starting again replaces a pending secret.
#[utoipa::path(
    post, path = "/v1/users/{id}/mfa/totp", tag = "mfa",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    request_body = TotpEnrolRequest,
    responses(
        (status = 200, body = TotpEnrolResponse),
        (status = 401, description = "Not logged in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account, or `current_password_incorrect`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_already_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    )
)]
pub async fn start_totp(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ClientAddr(client): ClientAddr,
    PathUserId(id): PathUserId,
    JsonBody(req): JsonBody<TotpEnrolRequest>,
) -> ApiResult<Response> {
    let password = Password::parse_login(&req.current_password).map_err(|mut e| {
        e.field = "current_password".into();
        e
    })?;
    let enrolment = state.accounts.start_totp(&actor, id, Some(&password), &client).await?;
    let body = TotpEnrolResponse { secret: enrolment.secret, otpauth_uri: enrolment.otpauth_uri };
    Ok((StatusCode::OK, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)).into_response())
}

/// Turn TOTP on with a first code (self only); answers with ten recovery codes.
#[utoipa::path(
    post, path = "/v1/users/{id}/mfa/totp/confirm", tag = "mfa",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    request_body = TotpCodeRequest,
    responses(
        (status = 200, body = RecoveryCodes),
        (status = 401, description = "Not logged in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_already_enabled`, or `mfa_not_enabled` (no enrolment pending)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`mfa_code_malformed`, `mfa_code_invalid`, `mfa_code_replayed`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed codes", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    )
)]
pub async fn confirm_totp(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ClientAddr(client): ClientAddr,
    PathUserId(id): PathUserId,
    JsonBody(req): JsonBody<TotpCodeRequest>,
) -> ApiResult<Response> {
    let code = second_factor(&req.code)?;
    let codes = state.accounts.confirm_totp(&actor, id, &code, &client).await?;
    Ok(recovery_codes(&codes))
}

/// Replace the recovery codes (self only, with a TOTP or recovery code).
#[utoipa::path(
    post, path = "/v1/users/{id}/mfa/totp/recovery-codes", tag = "mfa",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    request_body = TotpCodeRequest,
    responses(
        (status = 200, body = RecoveryCodes),
        (status = 401, description = "Not logged in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_not_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`mfa_code_malformed`, `mfa_code_invalid`, `mfa_code_replayed`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed codes", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    )
)]
pub async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ClientAddr(client): ClientAddr,
    PathUserId(id): PathUserId,
    JsonBody(req): JsonBody<TotpCodeRequest>,
) -> ApiResult<Response> {
    let code = second_factor(&req.code)?;
    let codes = state.accounts.regenerate_recovery_codes(&actor, id, &code, &client).await?;
    Ok(recovery_codes(&codes))
}

/// Turn TOTP off: the user with a TOTP or recovery code, or an admin (no body) — the
/// audited MFA reset, recorded as `mfa.disabled` with `via: admin_reset`.
#[utoipa::path(
    delete, path = "/v1/users/{id}/mfa/totp", tag = "mfa",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    request_body(content = Option<TotpCodeRequest>, description = "Required when you turn off your own TOTP"),
    responses(
        (status = 204, description = "TOTP is off"),
        (status = 401, description = "Not logged in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Neither the user nor an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`mfa_not_enabled`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`mfa_code_required`, `mfa_code_malformed`, `mfa_code_invalid`, `mfa_code_replayed`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed codes", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    )
)]
pub async fn disable_totp(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ClientAddr(client): ClientAddr,
    PathUserId(id): PathUserId,
    OptionalJsonBody(req): OptionalJsonBody<TotpCodeRequest>,
) -> ApiResult<Response> {
    let code = req.map(|r| second_factor(&r.code)).transpose()?;
    state.accounts.disable_totp(&actor, id, code.as_ref(), &client).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Finish a login that answered `mfa_required`: the challenge and a TOTP or recovery code.
#[utoipa::path(
    post, path = "/v1/sessions/mfa", tag = "sessions",
    request_body = MfaLoginRequest,
    responses(
        (status = 201, body = LoginResponse, headers(("Location" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Account disabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`mfa_challenge_invalid`, `mfa_challenge_expired`, `mfa_code_malformed`, `mfa_code_invalid`, `mfa_code_replayed`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed codes for this account or address", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    )
)]
pub async fn complete_mfa_login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<MfaLoginRequest>,
) -> ApiResult<Response> {
    if req.cookie {
        crate::browser::check_origin(&headers, &state.browser)?;
    }
    let challenge = Challenge::parse(&req.challenge).ok_or_else(|| {
        ValidationError::new("challenge", "mfa_challenge_invalid", "the challenge is unknown or no longer valid")
    })?;
    let code = second_factor(&req.code)?;
    let done = state.accounts.complete_mfa_login(&challenge, &code, &client).await?;
    Ok(crate::routes::logged_in(&state, &done, req.cookie))
}
