//! Wire shapes (JSON) of API v1. Requests deny unknown fields; responses never carry a
//! password or a hash.

use serde::{Deserialize, Serialize};
use strata_core::domain::{Session, User};
use utoipa::ToSchema;

use crate::extract::present;

pub use strata_core::domain::rfc3339;

// No Debug: these carry passwords.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Normalised to lower case; at most 254 bytes.
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// 1–100 characters, no control characters; stored verbatim.
    #[schema(example = "Ada Lovelace")]
    pub name: String,
    /// 8–256 characters.
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default, deserialize_with = "present")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
    /// Changing the password ends every other session of the user.
    #[serde(default, deserialize_with = "present")]
    pub password: Option<String>,
    /// Admins only: `user` or `admin`.
    #[serde(default, deserialize_with = "present")]
    pub role: Option<String>,
    /// Admins only: `active` or `disabled` (disabling ends every session).
    #[serde(default, deserialize_with = "present")]
    pub status: Option<String>,
    /// Required when you change your own `password` or `email` (not for an admin changing
    /// someone else): a stolen token alone cannot take the account over. Wrong guesses
    /// count against the same throttle as logins.
    #[serde(default, deserialize_with = "present")]
    pub current_password: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub email: String,
    pub name: String,
    /// `user` or `admin`.
    pub role: &'static str,
    /// `active` or `disabled`.
    pub status: &'static str,
    /// Optimistic-concurrency version; also the ETag.
    pub version: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&User> for UserBody {
    fn from(u: &User) -> Self {
        UserBody {
            id: u.id.to_string(),
            email: u.email.as_str().to_owned(),
            name: u.name.as_str().to_owned(),
            role: u.role.as_str(),
            status: u.status.as_str(),
            version: u.version.0,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

impl From<&Session> for SessionBody {
    fn from(s: &Session) -> Self {
        SessionBody { id: s.id.to_string(), created_at: rfc3339(s.created_at), expires_at: rfc3339(s.expires_at) }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Opaque bearer token (`st_…`); shown once, stored only as a hash.
    pub token: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub user: UserBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub session: SessionBody,
    pub user: UserBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserBody>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One audit log entry: an event as it happened.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryBody {
    /// The event id (also the CloudEvents `id` and the webhook id).
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    /// Short event type, e.g. `user.updated`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The user the event is about (the nil UUID for events about no account).
    #[schema(value_type = String, format = Uuid)]
    pub subject: String,
    /// Who acted: `{"type": "user" | "admin" | "anonymous", "id": …}`.
    #[schema(value_type = Object)]
    pub actor: serde_json::Value,
    #[schema(format = DateTime)]
    pub time: String,
    /// The event's data, as in the CloudEvent.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<&strata_core::domain::AuditEntry> for AuditEntryBody {
    fn from(e: &strata_core::domain::AuditEntry) -> Self {
        // Both were written by the audit listener as JSON; a row that is not is shown as text.
        let json = |s: &str| serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()));
        AuditEntryBody {
            id: e.id.to_string(),
            event_type: e.event_type.clone(),
            subject: e.subject.to_string(),
            actor: json(&e.actor),
            time: rfc3339(e.time),
            data: json(&e.data),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntryBody>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or for readiness `not_ready`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
}
