//! Wire shapes (JSON) of API v1. Requests deny unknown fields; responses never carry a
//! password or a hash.

use serde::{Deserialize, Serialize};
use strata_core::domain::{Session, User};
use utoipa::ToSchema;

use crate::extract::{WholeNumber, nullable, present};

pub use strata_core::domain::rfc3339;

/// A timestamp written as RFC 3339 straight into the JSON output: the who-am-I answer, the
/// hottest response, carries four, and a `String` each was a measurable share of its cost.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub strata_core::domain::Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match strata_core::domain::rfc3339_bytes(self.0) {
            // Only ASCII digits and separators are written.
            Some(bytes) => s.serialize_str(std::str::from_utf8(&bytes).unwrap_or_default()),
            None => s.serialize_str(""),
        }
    }
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
    /// Browser clients: set the session as an `HttpOnly` cookie and answer with a
    /// `csrf_token` instead of the `token` (see the README, Browser clients).
    #[serde(default)]
    pub cookie: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    pub email: String,
    pub name: String,
    /// `user` or `admin`.
    pub role: &'static str,
    /// `active` or `disabled`.
    pub status: &'static str,
    /// Whether the user proved they receive mail at `email` (a verification mail, or the
    /// confirmation of an email change); an admin's change of the address makes it false.
    pub verified: bool,
    /// Whether logins need a second factor (TOTP enabled).
    pub mfa_enabled: bool,
    /// Optimistic-concurrency version; also the ETag.
    pub version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Rfc3339,
}

impl From<&User> for UserBody {
    fn from(u: &User) -> Self {
        UserBody {
            id: u.id.as_uuid(),
            email: u.email.as_str().to_owned(),
            name: u.name.as_str().to_owned(),
            role: u.role.as_str(),
            status: u.status.as_str(),
            verified: u.verified,
            mfa_enabled: u.mfa_enabled,
            version: u.version.0,
            created_at: Rfc3339(u.created_at),
            updated_at: Rfc3339(u.updated_at),
        }
    }
}

/// The answer to a PATCH that changes your own email: nothing changed yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailChangePendingBody {
    #[schema(example = "confirmation_sent")]
    pub status: &'static str,
    /// The address the confirmation mail went to; the account keeps its email until then.
    #[schema(example = "ada@new.example")]
    pub pending_email: String,
    /// When the confirmation link stops working.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// The account as it still is.
    pub user: UserBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Rfc3339,
}

impl From<&Session> for SessionBody {
    fn from(s: &Session) -> Self {
        SessionBody { id: s.id.as_uuid(), created_at: Rfc3339(s.created_at), expires_at: Rfc3339(s.expires_at) }
    }
}

/// One session of a user, as its owner or an admin sees it (never the token).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSessionBody {
    #[serde(flatten)]
    pub session: SessionBody,
    /// When it was ended (logout, revocation, disable, password change); `null` if it was not.
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
    /// Neither revoked nor expired: its token works.
    pub active: bool,
    /// The session this request was made with.
    pub current: bool,
}

impl UserSessionBody {
    pub fn new(
        s: &Session,
        now: strata_core::domain::Timestamp,
        current: Option<strata_core::domain::SessionId>,
    ) -> Self {
        UserSessionBody {
            session: s.into(),
            revoked_at: s.revoked_at.map(rfc3339),
            active: s.revoked_at.is_none() && s.expires_at > now,
            current: current == Some(s.id),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Newest first.
    pub items: Vec<UserSessionBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsRevoked {
    /// How many live sessions were ended.
    pub revoked: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Opaque bearer token (`st_…`); shown once, stored only as a hash. Absent for a
    /// cookie login: the cookie carries it, out of reach of scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// For a cookie login: what every unsafe request must send as `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub user: UserBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub session: SessionBody,
    pub user: UserBody,
    /// The groups the user belongs to, in id order; only with `?include=groups`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRef>>,
    /// When the session cookie authenticated the request: its CSRF token (so a page that
    /// reloaded can carry on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

impl WhoAmI {
    /// Exactly what `Serialize` writes (a test holds them equal), written by hand: this is
    /// the hottest response, and serde's map machinery and per-byte escaping of ids and
    /// timestamps that never need it were about 7,800 of its ~49,000 instructions.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let s = &self.session;
        out.extend_from_slice(b"{\"session\":{\"id\":");
        push_uuid(&mut out, s.id);
        out.extend_from_slice(b",\"created_at\":");
        push_time(&mut out, s.created_at);
        out.extend_from_slice(b",\"expires_at\":");
        push_time(&mut out, s.expires_at);
        let u = &self.user;
        out.extend_from_slice(b"},\"user\":{\"id\":");
        push_uuid(&mut out, u.id);
        out.extend_from_slice(b",\"email\":");
        push_str(&mut out, &u.email);
        out.extend_from_slice(b",\"name\":");
        push_str(&mut out, &u.name);
        out.extend_from_slice(b",\"role\":");
        push_str(&mut out, u.role);
        out.extend_from_slice(b",\"status\":");
        push_str(&mut out, u.status);
        out.extend_from_slice(if u.verified { b",\"verified\":true" } else { b",\"verified\":false" });
        out.extend_from_slice(if u.mfa_enabled { b",\"mfa_enabled\":true" } else { b",\"mfa_enabled\":false" });
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(u.version.to_string().as_bytes());
        out.extend_from_slice(b",\"created_at\":");
        push_time(&mut out, u.created_at);
        out.extend_from_slice(b",\"updated_at\":");
        push_time(&mut out, u.updated_at);
        out.push(b'}');
        if let Some(groups) = &self.groups {
            out.extend_from_slice(b",\"groups\":");
            // Rare (`?include=groups`) and not worth a hand-written path; a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, groups);
        }
        if let Some(csrf) = &self.csrf_token {
            out.extend_from_slice(b",\"csrf_token\":");
            push_str(&mut out, csrf);
        }
        out.push(b'}');
        out
    }
}

fn push_uuid(out: &mut Vec<u8>, id: uuid::Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buf).as_bytes());
    out.push(b'"');
}

fn push_time(out: &mut Vec<u8>, t: Rfc3339) {
    out.push(b'"');
    if let Some(bytes) = strata_core::domain::rfc3339_bytes(t.0) {
        out.extend_from_slice(&bytes);
    }
    out.push(b'"');
}

/// A JSON string: verbatim when nothing in it needs escaping (the usual case), else
/// serde_json's own escaping, so the two paths cannot disagree.
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
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

// Webhooks.

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http://` or `https://`, no credentials or fragment, at most 2048 bytes. Addresses in
    /// private, loopback, link-local and other special ranges are refused unless allowed by
    /// `STRATA_WEBHOOKS_ALLOWED_NETWORKS`.
    #[schema(example = "https://hooks.example.com/strata")]
    pub url: String,
    /// Short event types, e.g. `["user.created", "user.deleted"]`.
    pub events: Vec<String>,
    /// Up to 500 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// Deliveries per second to this endpoint, 1–10000, default 50.
    #[serde(default)]
    #[schema(value_type = Option<u32>)]
    pub rate_limit: Option<WholeNumber>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[serde(default, deserialize_with = "present")]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub rate_limit: Option<WholeNumber>,
    /// `true` re-enables an endpoint (also one disabled by a 410 or by failing for days).
    #[serde(default, deserialize_with = "present")]
    pub enabled: Option<bool>,
}

/// A webhook endpoint. `secret` is only present when it was just created or rotated.
#[derive(Serialize, ToSchema)]
pub struct WebhookBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why it is disabled: by an admin, the endpoint answered 410, or it failed for days.
    pub disabled_reason: Option<String>,
    pub rate_limit: u32,
    /// Since when every attempt has failed; `null` while healthy.
    #[schema(format = DateTime)]
    pub failing_since: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The Standard Webhooks signing secret (`whsec_…`), shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// After a rotation: until when deliveries are also signed with the previous secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
}

impl WebhookBody {
    pub fn new(e: &strata_core::webhooks::WebhookEndpoint, with_secret: bool) -> Self {
        WebhookBody {
            id: e.id.to_string(),
            url: e.url.as_str().to_owned(),
            events: e.events.clone(),
            description: e.description.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            rate_limit: e.rate_limit,
            failing_since: e.failing_since.map(rfc3339),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
            secret: with_secret.then(|| e.secrets.first().map(|s| s.key.clone())).flatten(),
            previous_secret_expires_at: with_secret
                .then(|| e.secrets.get(1).and_then(|s| s.expires_at).map(rfc3339))
                .flatten(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookBody>,
}

/// One event for one endpoint.
#[derive(Serialize, ToSchema)]
pub struct DeliveryBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    /// The event id: also the `webhook-id` and `ce-id` headers.
    #[schema(value_type = String, format = Uuid)]
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (dead-lettered: replayable).
    pub status: &'static str,
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// The status code of the last answer.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&strata_core::webhooks::WebhookDelivery> for DeliveryBody {
    fn from(d: &strata_core::webhooks::WebhookDelivery) -> Self {
        DeliveryBody {
            id: d.id.to_string(),
            event_id: d.event.id.to_string(),
            event_type: d.event.event_type.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            next_attempt_at: (d.status == strata_core::webhooks::DeliveryStatus::Pending)
                .then(|| rfc3339(d.next_attempt_at)),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryBody>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptBody {
    pub attempt: u32,
    #[schema(format = DateTime)]
    pub time: String,
    /// The answer's status code; `null` when there was none (refused, timed out, …).
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u32,
}

impl From<&strata_core::webhooks::WebhookAttempt> for AttemptBody {
    fn from(a: &strata_core::webhooks::WebhookAttempt) -> Self {
        AttemptBody {
            attempt: a.attempt,
            time: rfc3339(a.at),
            status: a.status,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
        }
    }
}

/// A delivery with its attempt log.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryBody,
    pub attempt_log: Vec<AttemptBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Replay every failed delivery created at or after this RFC 3339 time.
    #[schema(format = DateTime)]
    pub since: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayResponse {
    /// How many deliveries are due again.
    pub replayed: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// 1–256 characters, no control characters; stored verbatim. Not unique.
    #[schema(example = "Engineering")]
    pub display_name: String,
    /// The id an identity provider knows the group by.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Initial members (user ids), at most 1,000.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub members: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupRequest {
    #[serde(default, deserialize_with = "present")]
    pub display_name: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub external_id: Option<Option<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembersRequest {
    /// User ids to add (1–1,000); members already in the group are left as they are.
    #[schema(value_type = Vec<String>)]
    pub user_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupBody {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// Moves on every change, membership included; also the ETag.
    pub version: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&strata_core::groups::Group> for GroupBody {
    fn from(g: &strata_core::groups::Group) -> Self {
        GroupBody {
            id: g.id.to_string(),
            display_name: g.display_name.as_str().to_owned(),
            external_id: g.external_id.as_ref().map(|e| e.as_str().to_owned()),
            version: g.version.0,
            created_at: rfc3339(g.created_at),
            updated_at: rfc3339(g.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub items: Vec<GroupBody>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A group as who-am-I lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupRef {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub display_name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberBody {
    #[schema(value_type = String, format = Uuid)]
    pub user_id: String,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub items: Vec<MemberBody>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::domain::Timestamp;

    fn who(name: &str, email: &str, groups: Option<Vec<GroupRef>>, csrf: Option<&str>) -> WhoAmI {
        let t = |micros| Rfc3339(Timestamp(micros));
        WhoAmI {
            session: SessionBody { id: uuid::Uuid::now_v7(), created_at: t(1_700_000_000_123_456), expires_at: t(0) },
            user: UserBody {
                id: uuid::Uuid::now_v7(),
                email: email.to_owned(),
                name: name.to_owned(),
                role: "admin",
                status: "active",
                verified: true,
                mfa_enabled: false,
                version: 18_446_744_073_709_551_615,
                created_at: t(253_402_300_799_999_999),
                // Outside years 0–9999: the empty string, as `rfc3339` gives.
                updated_at: t(i64::MAX),
            },
            groups,
            csrf_token: csrf.map(str::to_owned),
        }
    }

    #[test]
    fn hand_written_who_am_i_is_serdes_json() {
        let groups = || Some(vec![GroupRef { id: "g-1".into(), display_name: "Ops \"on call\"".into() }]);
        let cases = [
            who("Ada Lovelace", "ada@example.com", None, None),
            who("quote \" backslash \\ tab \t nul \u{0} del \u{7f}", "\"odd\\local\"@example.com", None, None),
            who("Zoë 李 🦀 </script>", "zoe@example.com", groups(), Some("csrf-\"token\"")),
            who("", "a@b.c", Some(vec![]), Some("")),
        ];
        for case in cases {
            let serde = serde_json::to_vec(&case).unwrap();
            assert_eq!(String::from_utf8(case.to_json()).unwrap(), String::from_utf8(serde).unwrap());
        }
    }
}
