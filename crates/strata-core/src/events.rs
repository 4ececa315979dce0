//! Events: the CloudEvents 1.0 envelope every outbox row is published in, and the
//! binary-mode header mapping the broker adapters share.
//!
//! One envelope everywhere: `id` is the outbox event id (also the broker's dedup id and the
//! webhook id), `subject` and the `partitionkey` extension are the aggregate id, and the
//! `sequence` extension is the aggregate's own counter, assigned under the aggregate's
//! lock in the writing transaction, so it orders an aggregate's events as they committed.
//! `data` is the JSON payload (`datacontenttype: application/json`); it never carries a
//! secret.

use std::time::Duration;

use crate::domain::{Timestamp, rfc3339};

/// The CloudEvents `type` prefix: `user.created` travels as `dev.strata.user.created`.
pub const TYPE_PREFIX: &str = "dev.strata.";

/// Not a domain event: L1 cache invalidations between instances, on a namespace of their
/// own (`<namespace>-cache`) and never in the outbox, the audit log or a webhook.
pub const CACHE_INVALIDATED: &str = "cache.invalidated";

/// Every short event type Strata emits, for the AsyncAPI document, webhook subscription
/// validation and the audit filter.
pub const EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.updated",
    "user.deleted",
    "session.created",
    "session.revoked",
    "login.failed",
    "login.throttled",
    "password_reset.requested",
    "email_verification.requested",
    "email_change.requested",
    "mfa.enabled",
    "mfa.disabled",
    "mfa.recovery_codes_regenerated",
    "mfa.recovery_code_used",
    "webhook.endpoint.disabled",
    "group.created",
    "group.updated",
    "group.deleted",
];

/// Whether `t` is one of [`EVENT_TYPES`].
pub fn is_event_type(t: &str) -> bool {
    EVENT_TYPES.contains(&t)
}

/// One event in CloudEvents 1.0 terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: uuid::Uuid,
    /// URI-reference naming the deployment (`events.source`, default `/strata`).
    pub source: String,
    /// The short type, e.g. `user.created`; [`Event::ce_type`] gives the CloudEvents one.
    pub event_type: String,
    pub time: Timestamp,
    /// The aggregate id (a user id), also the `partitionkey`.
    pub subject: String,
    /// Per-aggregate order, 1-based.
    pub sequence: u64,
    /// W3C trace context of the request that caused the change, when tracing is on.
    pub traceparent: Option<String>,
    /// JSON object.
    pub data: String,
}

/// Why an event could not be decoded from the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a Strata CloudEvent: {0}")]
pub struct DecodeError(pub String);

impl Event {
    /// `dev.strata.` + the short type.
    pub fn ce_type(&self) -> String {
        let mut t = String::with_capacity(TYPE_PREFIX.len() + self.event_type.len());
        t.push_str(TYPE_PREFIX);
        t.push_str(&self.event_type);
        t
    }

    /// The `sequence` attribute: the spec asks for a lexicographically orderable string,
    /// so the counter is zero-padded to the width of a u64.
    pub fn ce_sequence(&self) -> String {
        format!("{:020}", self.sequence)
    }

    /// The attributes other than `data` as (name, value) pairs, in the order the binary
    /// bindings write them: `specversion` first, extensions last.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut a = vec![
            ("specversion", "1.0".to_owned()),
            ("id", self.id.to_string()),
            ("source", self.source.clone()),
            ("type", self.ce_type()),
            ("time", rfc3339(self.time)),
            ("subject", self.subject.clone()),
            ("datacontenttype", "application/json".to_owned()),
            ("partitionkey", self.subject.clone()),
            ("sequence", self.ce_sequence()),
        ];
        if let Some(tp) = &self.traceparent {
            a.push(("traceparent", tp.clone()));
        }
        a
    }

    /// Binary-mode headers: each attribute under `prefix` + name (`ce_` for Kafka and AMQP,
    /// `ce-` for NATS and HTTP, none for MQTT 5 user properties). `content-type` is the
    /// caller's to set where the protocol has one.
    pub fn binary_headers(&self, prefix: &str) -> Vec<(String, String)> {
        self.attributes()
            .into_iter()
            .filter(|(name, _)| *name != "datacontenttype")
            .map(|(name, value)| (format!("{prefix}{name}"), value))
            .collect()
    }

    /// Reads an event back from binary-mode headers (names compared case-insensitively,
    /// as HTTP and NATS headers are) and the body.
    pub fn from_binary<'a>(
        prefix: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Result<Event, DecodeError> {
        let mut attrs: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            if name.len() > prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix) {
                attrs.push((name[prefix.len()..].to_ascii_lowercase(), value.to_owned()));
            }
        }
        let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let data = std::str::from_utf8(body).map_err(|_| DecodeError("data is not UTF-8".into()))?;
        Event::from_parts(get, data)
    }

    /// Structured mode: the whole event as one JSON object (`application/cloudevents+json`),
    /// `data` inlined as JSON.
    pub fn to_structured_json(&self) -> String {
        let mut obj = serde_json::Map::new();
        for (name, value) in self.attributes() {
            obj.insert(name.to_owned(), serde_json::Value::String(value));
        }
        let data = serde_json::from_str(&self.data).unwrap_or(serde_json::Value::String(self.data.clone()));
        obj.insert("data".to_owned(), data);
        serde_json::Value::Object(obj).to_string()
    }

    pub fn from_structured_json(json: &[u8]) -> Result<Event, DecodeError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| DecodeError(format!("not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| DecodeError("not a JSON object".into()))?;
        let get = |n: &str| obj.get(n).and_then(|v| v.as_str());
        let data = obj.get("data").map(|d| d.to_string()).unwrap_or_else(|| "null".to_owned());
        Event::from_parts(get, &data)
    }

    fn from_parts<'g>(get: impl Fn(&str) -> Option<&'g str>, data: &str) -> Result<Event, DecodeError> {
        let need = |n: &str| get(n).ok_or_else(|| DecodeError(format!("missing {n}")));
        if need("specversion")? != "1.0" {
            return Err(DecodeError("specversion is not 1.0".into()));
        }
        let ce_type = need("type")?;
        let event_type = ce_type
            .strip_prefix(TYPE_PREFIX)
            .ok_or_else(|| DecodeError(format!("type {ce_type} is not {TYPE_PREFIX}*")))?;
        Ok(Event {
            id: need("id")?.parse().map_err(|_| DecodeError("id is not a UUID".into()))?,
            source: need("source")?.to_owned(),
            event_type: event_type.to_owned(),
            time: crate::domain::parse_rfc3339(need("time")?).ok_or_else(|| DecodeError("bad time".into()))?,
            subject: need("subject")?.to_owned(),
            sequence: need("sequence")?.parse().map_err(|_| DecodeError("sequence is not a number".into()))?,
            traceparent: get("traceparent").map(str::to_owned),
            data: data.to_owned(),
        })
    }
}

/// Why a broker call failed. The relay retries every error with backoff; listeners leave
/// the delivery unacknowledged so the broker redelivers it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Down, refused, timed out, or it did not confirm.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    /// Misconfigured (bad URL, missing stream and no right to create it).
    #[error("event bus misconfigured: {0}")]
    Config(String),
}

/// One delivered event and the adapter's handle for acknowledging it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub event: Event,
    /// Opaque to callers: a stream sequence, delivery tag, packet id or entry id.
    pub token: DeliveryToken,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryToken {
    Number(u64),
    Text(String),
}

/// Who receives an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer<'a> {
    /// A durable, named group: each event goes to one member; an unacknowledged one is
    /// redelivered (after the adapter's ack wait) until acknowledged; the group's position
    /// survives restarts. Events published before the group first subscribed are delivered
    /// too, as far back as the broker retains them.
    Group(&'a str),
    /// Every subscriber gets every event published after it subscribed, nothing durable
    /// (cache invalidation across instances).
    Broadcast,
}

/// Tunables every adapter honours.
#[derive(Clone, Debug)]
pub struct BusOptions {
    /// Name of the stream, topic, exchange or key prefix (`strata` → `strata.events`).
    pub namespace: String,
    /// How long a delivered event may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Bound on every broker call, so a hung broker is an error, not a hang.
    pub call_timeout: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            namespace: "strata".to_owned(),
            ack_wait: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            source: "/strata".into(),
            event_type: "user.created".into(),
            time: Timestamp(1_764_057_600_123_456),
            subject: uuid::Uuid::now_v7().to_string(),
            sequence: 7,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            data: r#"{"user":{"id":"x"}}"#.into(),
        }
    }

    #[test]
    fn binary_mode_round_trips_with_any_prefix_and_header_case() {
        let e = sample();
        for prefix in ["ce_", "ce-", ""] {
            let headers = e.binary_headers(prefix);
            assert!(headers.iter().any(|(k, v)| *k == format!("{prefix}type") && v == "dev.strata.user.created"));
            let upper: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_uppercase(), v.clone())).collect();
            let back =
                Event::from_binary(prefix, upper.iter().map(|(k, v)| (k.as_str(), v.as_str())), e.data.as_bytes())
                    .unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn structured_mode_round_trips_and_inlines_data() {
        let e = sample();
        let json = e.to_structured_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["data"]["user"]["id"], "x");
        assert_eq!(v["sequence"], "00000000000000000007");
        assert_eq!(v["partitionkey"], v["subject"]);
        assert_eq!(Event::from_structured_json(json.as_bytes()).unwrap(), e);
    }

    #[test]
    fn foreign_events_are_refused() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_structured_json()).unwrap();
        v["type"] = "com.example.thing".into();
        assert!(Event::from_structured_json(v.to_string().as_bytes()).is_err());
        assert!(Event::from_structured_json(b"[]").is_err());
    }
}
