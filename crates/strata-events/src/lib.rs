//! Event bus adapters for strata-core's [`EventBus`] port, chosen by URL scheme
//! ([`open`]): `memory://` (in-process, the embedded default), `nats://` (JetStream),
//! `amqp://` (RabbitMQ), `mqtt://` (MQTT 5), `redis-stream://` (Redis Streams) and
//! `kafka://`. Every adapter passes the same conformance suite (`tests/events`).
//!
//! Wire format: CloudEvents 1.0 in binary mode wherever the protocol has headers (see
//! [`strata_core::events::Event::binary_headers`]); each adapter's module documents its
//! mapping, its addresses and its delivery guarantees.
//!
//! Architecture invariant: this crate knows nothing of HTTP, SQL or the domain; it moves
//! events.

use std::sync::Arc;

use strata_core::events::{BusError, BusOptions};
use strata_core::ports::EventBus;

mod amqp;
mod kafka;
mod memory;
mod mqtt;
mod nats;
mod redis_stream;

pub use memory::MemoryBus;

/// Opens the bus named by `url`. Network adapters connect lazily or retry in the
/// background, so a broker that is down at startup delays events, not the API.
pub async fn open(url: &str, options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "memory" => Ok(Arc::new(MemoryBus::new(options.clone()))),
        "nats" => nats::open(url, options).await,
        "amqp" | "amqps" => amqp::open(url, options).await,
        "mqtt" | "mqtts" => mqtt::open(url, options).await,
        "redis-stream" | "rediss-stream" => redis_stream::open(url, options).await,
        "kafka" => kafka::open(url, options).await,
        _ => Err(BusError::Config(format!(
            "unknown event bus URL scheme {scheme:?} (expected memory, nats, amqp, mqtt, redis-stream or kafka)"
        ))),
    }
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or(userinfo);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(super::redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
