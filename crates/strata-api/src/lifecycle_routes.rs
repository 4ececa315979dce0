//! Account lifecycle endpoints: password reset, email verification, email-change
//! confirmation. Parse, call the service, render.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use strata_core::domain::{Email, Password};
use strata_core::error::ValidationError;
use strata_core::lifecycle::OneTimeToken;
use utoipa::ToSchema;

use crate::AppState;
use crate::dto::UserBody;
use crate::error::{ApiResult, Problem};
use crate::extract::{Caller, ClientAddr, JsonBody, PathUserId};

/// A mailed token, syntax only; malformed and unknown tokens get the same answer.
fn one_time_token(raw: &str) -> Result<OneTimeToken, ValidationError> {
    OneTimeToken::parse(raw).ok_or_else(|| {
        ValidationError::new("token", "token_invalid", "the token is unknown, already used or superseded")
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
}

/// The one answer to every well-formed reset request.
#[derive(Serialize, ToSchema)]
pub struct PasswordResetAccepted {
    #[schema(example = "accepted")]
    pub status: &'static str,
    #[schema(example = "if an account has this email, a message with a reset link is on its way")]
    pub detail: &'static str,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirmRequest {
    /// The token from the mail (`ot_…`).
    pub token: String,
    #[schema(example = "correct horse battery staple")]
    pub new_password: String,
}

/// Ask for a password reset mail.
///
/// Answers 202 with the same body whether or not an account has this email, after the
/// same work; the mail leaves from the worker.
#[utoipa::path(
    post, path = "/v1/password-resets", tag = "password resets",
    request_body = PasswordResetRequest,
    responses(
        (status = 202, description = "Accepted (whether or not the email has an account)", body = PasswordResetAccepted),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid email", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many reset requests for this email or from this address", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn request_password_reset(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(req): JsonBody<PasswordResetRequest>,
) -> ApiResult<Response> {
    let email = Email::parse(&req.email)?;
    state.accounts.request_password_reset(&email, &client).await?;
    let body = PasswordResetAccepted {
        status: "accepted",
        detail: "if an account has this email, a message with a reset link is on its way",
    };
    Ok((StatusCode::ACCEPTED, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body))
        .into_response())
}

/// Set a new password with the token from a reset mail.
///
/// Revokes every session of the account. The token works once, for 30 minutes
/// (`auth.password_reset_ttl_secs`), and only while it is the account's newest and the
/// password has not changed since it was made.
#[utoipa::path(
    post, path = "/v1/password-resets/confirm", tag = "password resets",
    request_body = PasswordResetConfirmRequest,
    responses(
        (status = 204, description = "Password set; every session revoked"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The account is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`token_invalid` (unknown, used, superseded), `token_expired`, or an unacceptable `new_password`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Overloaded or storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_password_reset(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<PasswordResetConfirmRequest>,
) -> ApiResult<Response> {
    // Malformed and unknown tokens get the same answer: the syntax check only keeps
    // garbage away from the database.
    let token = one_time_token(&req.token)?;
    let password = Password::parse_new(&req.new_password).map_err(|mut e| {
        e.field = "new_password".into();
        e
    })?;
    state.accounts.confirm_password_reset(&token, &password).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerificationRequest {
    /// The token from the verification mail (`ot_…`).
    pub token: String,
}

/// Ask for a verification mail to your current email.
#[utoipa::path(
    post, path = "/v1/users/{id}/verification", tag = "email verification",
    params(("id" = String, Path, format = Uuid)),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A verification mail is on its way", body = PasswordResetAccepted),
        (status = 401, description = "Not logged in", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not your account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_verified`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many verification requests", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64))),
    )
)]
pub async fn request_verification(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ClientAddr(client): ClientAddr,
    PathUserId(id): PathUserId,
) -> ApiResult<Response> {
    state.accounts.request_verification(&actor, id, &client).await?;
    let body = PasswordResetAccepted { status: "accepted", detail: "a verification mail is on its way" };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Confirm an email with the token from a verification mail.
#[utoipa::path(
    post, path = "/v1/verifications", tag = "email verification",
    request_body = VerificationRequest,
    responses(
        (status = 200, description = "Verified: the user, now with `verified: true`", body = UserBody),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`token_invalid` (unknown, used, superseded, or sent to an email the account no longer has) or `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_verification(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<VerificationRequest>,
) -> ApiResult<Response> {
    let token = one_time_token(&req.token)?;
    let user = state.accounts.confirm_verification(&token).await?;
    Ok((StatusCode::OK, Json(UserBody::from(&user))).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChangeConfirmRequest {
    /// The token from the confirmation mail sent to the new address (`ot_…`).
    pub token: String,
}

/// Confirm an email change with the token mailed to the new address.
///
/// No authentication: the token is the proof (the link may be opened on another device).
/// The account moves to the new address, which is thereby verified; sessions stay.
#[utoipa::path(
    post, path = "/v1/email-changes/confirm", tag = "email changes",
    request_body = EmailChangeConfirmRequest,
    responses(
        (status = 200, description = "Changed: the user with the new email and `verified: true`", body = UserBody,
            headers(("ETag" = String, description = "The new version"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`account_disabled`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`email_taken`: the new address was registered since the request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`token_invalid` (unknown, used, superseded by a newer request, or voided by a password or email change since) or `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_email_change(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EmailChangeConfirmRequest>,
) -> ApiResult<Response> {
    let token = one_time_token(&req.token)?;
    let user = state.accounts.confirm_email_change(&token).await?;
    Ok(crate::routes::user_response(StatusCode::OK, &user))
}
