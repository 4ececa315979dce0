//! The one place where errors become HTTP responses: RFC 9457 `application/problem+json`
//! bodies with a stable machine-readable `code` (documented in the README) and, where one
//! input is to blame, the `field` that was wrong.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use strata_core::error::{AppError, TokenProblem, ValidationError};
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI identifying the problem type: `urn:strata:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type.
    pub title: &'static str,
    pub status: u16,
    /// What went wrong with this request, for humans.
    pub detail: String,
    /// Stable machine-readable code; see the README's error table.
    pub code: &'static str,
    /// The request field, header, path or query parameter at fault, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `mfa_required`: what to send to `POST /v1/sessions/mfa` with the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// An error on its way to the client. Boxed: handlers return `Result<_, ApiError>`, and a
/// one-pointer error keeps the success path's values small.
#[derive(Debug)]
pub struct ApiError(Box<ErrorParts>);

#[derive(Debug)]
pub struct ErrorParts {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub retry_after: Option<Duration>,
    pub www_authenticate: Option<&'static str>,
    pub challenge: Option<String>,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorParts;
    fn deref(&self) -> &ErrorParts {
        &self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorParts {
            status,
            code,
            title,
            detail: detail.into(),
            field: None,
            retry_after: None,
            www_authenticate: None,
            challenge: None,
        }))
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    fn retry_after(mut self, wait: Duration) -> Self {
        self.0.retry_after = Some(wait);
        self
    }

    pub fn bad_request(code: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, "Bad request", detail).field(field)
    }

    pub fn invalid_field(code: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, "Invalid field", detail).field(field)
    }

    pub fn not_found_route(path: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "Not found", format!("no route for {path}"))
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this route does not support the request's method",
        )
    }

    fn unauthenticated(problem: TokenProblem) -> Self {
        let (code, detail, challenge) = match problem {
            TokenProblem::Missing => {
                ("missing_token", "this endpoint needs an Authorization: Bearer token", "Bearer realm=\"strata\"")
            }
            TokenProblem::Malformed => (
                "malformed_token",
                "the Authorization header must be `Bearer <token>` with a token issued by POST /v1/sessions",
                "Bearer realm=\"strata\", error=\"invalid_token\"",
            ),
            TokenProblem::Unknown => {
                ("invalid_token", "the token is not valid", "Bearer realm=\"strata\", error=\"invalid_token\"")
            }
            TokenProblem::Expired => {
                ("token_expired", "the session has expired", "Bearer realm=\"strata\", error=\"invalid_token\"")
            }
            TokenProblem::Revoked => (
                "token_revoked",
                "the session was ended (logout, password change or account deletion)",
                "Bearer realm=\"strata\", error=\"invalid_token\"",
            ),
            TokenProblem::AccountDisabled => (
                "account_disabled",
                "the account of this session is disabled",
                "Bearer realm=\"strata\", error=\"invalid_token\"",
            ),
            TokenProblem::NotASession => (
                "not_a_session",
                "the admin token is not a session; log in to get a session token",
                "Bearer realm=\"strata\", error=\"invalid_token\"",
            ),
        };
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, code, "Unauthenticated", detail).field("Authorization");
        e.0.www_authenticate = Some(challenge);
        e
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid_field(e.code, e.field.into_owned(), e.message)
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        use StatusCode as S;
        match err {
            AppError::Validation(v) => v.into(),
            AppError::InvalidCredentials => {
                ApiError::new(S::UNAUTHORIZED, "invalid_credentials", "Unauthenticated", "invalid email or password")
            }
            AppError::WrongCurrentPassword => ApiError::new(
                S::FORBIDDEN,
                "current_password_incorrect",
                "Current password incorrect",
                "current_password is not this account's password",
            )
            .field("current_password"),
            AppError::AccountDisabled => {
                ApiError::new(S::FORBIDDEN, "account_disabled", "Forbidden", "this account is disabled")
            }
            AppError::EmailNotVerified => ApiError::new(
                S::FORBIDDEN,
                "email_not_verified",
                "Forbidden",
                "this account's email is not verified yet; follow the link in the verification mail",
            ),
            AppError::AlreadyVerified => {
                ApiError::new(S::CONFLICT, "already_verified", "Conflict", "this account's email is already verified")
            }
            AppError::MfaRequired { challenge } => {
                let mut e = ApiError::new(
                    S::UNAUTHORIZED,
                    "mfa_required",
                    "Second factor required",
                    "the password is right; send a TOTP or recovery code with this challenge to POST /v1/sessions/mfa",
                );
                e.0.challenge = Some(challenge);
                e
            }
            AppError::MfaAlreadyEnabled => ApiError::new(
                S::CONFLICT,
                "mfa_already_enabled",
                "Conflict",
                "TOTP is already enabled for this account; disable it first",
            ),
            AppError::MfaNotEnabled => ApiError::new(
                S::CONFLICT,
                "mfa_not_enabled",
                "Conflict",
                "this account has no TOTP enabled (or, for a confirmation, no enrolment pending)",
            ),
            AppError::Throttled { retry_after } => ApiError::new(
                S::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "Too many requests",
                "too many failed logins for this account or address; retry later",
            )
            .retry_after(retry_after),
            AppError::Unauthenticated(p) => ApiError::unauthenticated(p),
            AppError::Forbidden(why) => ApiError::new(S::FORBIDDEN, "forbidden", "Forbidden", why),
            AppError::NotFound(what) => {
                ApiError::new(S::NOT_FOUND, "not_found", "Not found", format!("{what} not found"))
            }
            AppError::EmailTaken => {
                ApiError::new(S::CONFLICT, "email_taken", "Conflict", "an account with this email already exists")
                    .field("email")
            }
            AppError::VersionMismatch => ApiError::new(
                S::PRECONDITION_FAILED,
                "version_mismatch",
                "Precondition failed",
                "the resource changed since you read it; fetch it again and retry with the new ETag",
            )
            .field("If-Match"),
            AppError::IdempotencyKeyReused => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                "this Idempotency-Key was used for a different request",
            )
            .field("Idempotency-Key"),
            AppError::Overloaded { retry_after } => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "Service overloaded",
                "too many password operations in flight; retry shortly",
            )
            .retry_after(retry_after),
            AppError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "dependency unavailable");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Service unavailable",
                    "a backing service is unavailable; retry shortly",
                )
                .retry_after(Duration::from_secs(1))
            }
            AppError::Internal(msg) => {
                // Internals are logged for operators and never shown to clients.
                tracing::error!(error = %msg, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", "Internal error", "an unexpected error occurred")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let parts = *self.0;
        let body = Problem {
            type_uri: format!("urn:strata:problem:{}", parts.code),
            title: parts.title,
            status: parts.status.as_u16(),
            detail: parts.detail,
            code: parts.code,
            field: parts.field,
            challenge: parts.challenge,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (parts.status, bytes).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(wait) = parts.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        }
        if let Some(challenge) = parts.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
