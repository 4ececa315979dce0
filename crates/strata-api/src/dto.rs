//! Wire shapes (JSON) of API v1. Requests deny unknown fields; responses never carry a
//! password or a hash.

use serde::{Deserialize, Serialize};
use strata_core::domain::{Session, Timestamp, User};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::extract::present;

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-25T08:00:00.123456Z`.
/// Fixed width, so clients can compare timestamps as strings.
///
/// Digits are written by hand: through `format!` this was ~13,000 instructions per session
/// check (four timestamps), 15 % of the whole cached request (callgrind, issue 8).
pub fn rfc3339(t: Timestamp) -> String {
    let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.micros()) * 1000) else {
        return String::new();
    };
    let year = dt.year();
    if !(0..=9999).contains(&year) {
        return String::new();
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, u32::from(u8::from(dt.month())));
    put(8, 2, u32::from(dt.day()));
    put(11, 2, u32::from(dt.hour()));
    put(14, 2, u32::from(dt.minute()));
    put(17, 2, u32::from(dt.second()));
    put(20, 6, dt.microsecond());
    // Only ASCII digits and separators were written.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

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

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or for readiness `not_ready`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_fixed_width_utc_with_microseconds() {
        let reference = |t: Timestamp| {
            let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.micros()) * 1000).unwrap();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.microsecond()
            )
        };
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(Timestamp(1_764_057_600_123_456)), "2025-11-25T08:00:00.123456Z");
        // A spread of instants, leap days and the last microsecond of a year included.
        let mut t: i64 = 951_782_400_000_000; // 2000-02-29
        for _ in 0..20_000 {
            let ts = Timestamp(t);
            assert_eq!(rfc3339(ts), reference(ts));
            t += 3_600_000_123 * 7 + 999_999;
        }
        let last = Timestamp(4_102_444_799_999_999); // 2099-12-31T23:59:59.999999Z
        assert_eq!(rfc3339(last), "2099-12-31T23:59:59.999999Z");
    }
}
