//! Errors of the domain and the application services. The HTTP crate maps these to status
//! codes in exactly one place; nothing here knows what a status code is.

use std::borrow::Cow;
use std::time::Duration;

/// One input that failed to parse, naming the field and a stable machine-readable code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: Cow<'static, str>,
    pub code: &'static str,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<Cow<'static, str>>, code: &'static str, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), code, message: message.into() }
    }
}

/// Why a bearer token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    AccountDisabled,
    /// The static admin credential was presented where a session is required.
    NotASession,
}

/// Errors from a repository port. Adapters translate driver errors into these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    #[error("email already registered")]
    EmailTaken,
    #[error("idempotency key already used")]
    IdempotencyKeyTaken,
    #[error("version conflict")]
    VersionConflict,
    #[error("not found")]
    NotFound,
    /// The backend could not be reached or timed out; retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a schema mismatch. Logged, never shown to clients.
    #[error("storage error: {0}")]
    Internal(String),
    /// A restore found rows in a target it was told not to overwrite (names the tables).
    #[error("the target database is not empty: {0}")]
    NotEmpty(String),
}

/// Everything an application service can answer with besides success.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("account disabled")]
    AccountDisabled,
    /// `auth.require_verified_email` is on and this account's email is not verified.
    #[error("email not verified")]
    EmailNotVerified,
    /// A verification was asked for an email that already is.
    #[error("email already verified")]
    AlreadyVerified,
    /// `current_password` did not match (a re-authentication, not a login).
    #[error("current password is wrong")]
    WrongCurrentPassword,
    /// The password was right and the account has a second factor: the login goes on at
    /// `POST /v1/sessions/mfa` with this challenge.
    #[error("a second factor is required")]
    MfaRequired { challenge: String },
    /// An enrolment was started for an account whose TOTP is already on.
    #[error("TOTP is already enabled")]
    MfaAlreadyEnabled,
    /// The account has no TOTP enabled (or no enrolment pending, for a confirmation).
    #[error("TOTP is not enabled")]
    MfaNotEnabled,
    #[error("too many failed attempts")]
    Throttled { retry_after: Duration },
    #[error("unauthenticated: {0:?}")]
    Unauthenticated(TokenProblem),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("email already registered")]
    EmailTaken,
    #[error("version mismatch")]
    VersionMismatch,
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("busy, retry later")]
    Overloaded { retry_after: Duration },
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RepoError> for AppError {
    fn from(err: RepoError) -> Self {
        match err {
            RepoError::EmailTaken => AppError::EmailTaken,
            RepoError::VersionConflict => AppError::VersionMismatch,
            RepoError::NotFound => AppError::NotFound("user"),
            RepoError::IdempotencyKeyTaken => AppError::IdempotencyKeyReused,
            RepoError::Unavailable(m) => AppError::Unavailable(m),
            RepoError::Internal(m) => AppError::Internal(m),
            // Only restores ask for an empty target; no API path can meet this.
            e @ RepoError::NotEmpty(_) => AppError::Internal(e.to_string()),
        }
    }
}
