//! Webhook rows as plain columns, shared by the three adapters so each only maps its
//! driver's row type: the JSON columns (event types, secrets, the event) and the parsed
//! fields (URL, status) are encoded and checked in one place.

use strata_core::domain::Timestamp;
use strata_core::webhooks::{
    DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookSecret, WebhookUrl, decode_event, encode_event,
};

pub(crate) struct EndpointRow {
    pub id: uuid::Uuid,
    pub url: String,
    /// JSON array of short event types.
    pub events: String,
    pub description: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// [`WebhookSecret::encode_all`].
    pub secrets: String,
    pub rate_limit: i64,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl EndpointRow {
    pub fn from_domain(e: &WebhookEndpoint) -> EndpointRow {
        EndpointRow {
            id: e.id,
            url: e.url.as_str().to_owned(),
            events: serde_json::Value::from(e.events.clone()).to_string(),
            description: e.description.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            secrets: WebhookSecret::encode_all(&e.secrets),
            rate_limit: i64::from(e.rate_limit),
            failing_since: e.failing_since.map(|t| t.0),
            created_at: e.created_at.0,
            updated_at: e.updated_at.0,
        }
    }

    /// `Err` names the corrupt column.
    pub fn into_domain(self) -> Result<WebhookEndpoint, String> {
        Ok(WebhookEndpoint {
            id: self.id,
            url: WebhookUrl::parse(&self.url).map_err(|e| format!("webhook url: {e}"))?,
            events: serde_json::from_str(&self.events).map_err(|e| format!("webhook events: {e}"))?,
            description: self.description,
            enabled: self.enabled,
            disabled_reason: self.disabled_reason,
            secrets: WebhookSecret::decode_all(&self.secrets)?,
            rate_limit: u32::try_from(self.rate_limit).map_err(|_| "webhook rate_limit out of range")?,
            failing_since: self.failing_since.map(Timestamp),
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

pub(crate) struct DeliveryRow {
    pub id: uuid::Uuid,
    pub endpoint_id: uuid::Uuid,
    /// The event's id, text: the (endpoint, event) uniqueness key.
    pub event_id: String,
    /// Structured CloudEvent JSON.
    pub event: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeliveryRow {
    pub fn from_domain(d: &WebhookDelivery) -> DeliveryRow {
        DeliveryRow {
            id: d.id,
            endpoint_id: d.endpoint_id,
            event_id: d.event.id.to_string(),
            event: encode_event(&d.event),
            status: d.status.as_str().to_owned(),
            attempts: i64::from(d.attempts),
            next_attempt_at: d.next_attempt_at.0,
            last_status: d.last_status.map(i64::from),
            last_error: d.last_error.clone(),
            created_at: d.created_at.0,
            updated_at: d.updated_at.0,
        }
    }

    pub fn into_domain(self) -> Result<WebhookDelivery, String> {
        Ok(WebhookDelivery {
            id: self.id,
            endpoint_id: self.endpoint_id,
            event: decode_event(&self.event).map_err(|e| format!("webhook delivery event: {e}"))?,
            status: DeliveryStatus::parse(&self.status).ok_or("webhook delivery status")?,
            attempts: u32::try_from(self.attempts).map_err(|_| "webhook delivery attempts out of range")?,
            next_attempt_at: Timestamp(self.next_attempt_at),
            last_status: self
                .last_status
                .map(u16::try_from)
                .transpose()
                .map_err(|_| "webhook delivery last_status out of range")?,
            last_error: self.last_error,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

/// Column lists in the order the adapters read them; macros so SQL can be `concat!`ed
/// into `&'static str` constants.
macro_rules! endpoint_columns {
    () => {
        "id, url, events, description, enabled, disabled_reason, secrets, rate_limit, failing_since, created_at, updated_at"
    };
}
macro_rules! delivery_columns {
    () => {
        "id, endpoint_id, event_id, event, status, attempts, next_attempt_at, last_status, last_error, created_at, updated_at"
    };
}
macro_rules! attempt_columns {
    () => {
        "delivery_id, attempt, at, status, error, duration_ms"
    };
}
pub(crate) use {attempt_columns, delivery_columns, endpoint_columns};
