//! The event bus conformance suite, run against every adapter (one test binary).
//!
//! Each adapter contributes a factory: `async fn(BusOptions) -> Option<Arc<dyn EventBus>>`
//! that returns `None` (after `strata_core::testing::unusable`) when its broker cannot be
//! reached. Every case uses its own namespace, so runs and cases never see each other's
//! events. Broker URLs can be overridden with `STRATA_TEST_<BACKEND>_URL`.

mod conformance;
// Broker-specific tests; the plain names are the conformance suite's modules.
#[path = "amqp.rs"]
mod amqp_broker;
#[path = "kafka.rs"]
mod kafka_broker;
#[path = "mqtt.rs"]
mod mqtt_broker;
#[path = "nats.rs"]
mod nats_broker;
#[path = "redis_stream.rs"]
mod redis_stream_broker;

use std::sync::Arc;

use strata_core::events::BusOptions;
use strata_core::ports::EventBus;

async fn memory(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    Some(Arc::new(strata_events::MemoryBus::new(options)))
}

/// Opens `default_url` (or the override) if something listens on its port; otherwise
/// reports the backend as unusable (a failure when CI requires it).
async fn broker(backend: &str, default_url: &str, options: BusOptions) -> Option<Arc<dyn EventBus>> {
    let var = format!("STRATA_TEST_{}_URL", backend.to_uppercase().replace('-', "_"));
    let url = std::env::var(&var).unwrap_or_else(|_| default_url.to_owned());
    let authority = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = authority.split('/').next().unwrap_or(authority);
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let probe = tokio::time::timeout(std::time::Duration::from_secs(2), tokio::net::TcpStream::connect(host_port));
    if !matches!(probe.await, Ok(Ok(_))) {
        strata_core::testing::unusable("event bus conformance", backend, &format!("nothing listens at {host_port}"));
        return None;
    }
    match strata_events::open(&url, &options).await {
        Ok(bus) => Some(bus),
        Err(e) => panic!("{backend} listens at {host_port} but cannot be opened: {e}"),
    }
}

async fn nats(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    broker("nats", "nats://127.0.0.1:4222", options).await
}
async fn amqp(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    broker("amqp", "amqp://guest:guest@127.0.0.1:5672/%2f", options).await
}
async fn mqtt(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    broker("mqtt", "mqtt://127.0.0.1:1883", options).await
}
async fn redis_stream(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    broker("redis-stream", "redis-stream://127.0.0.1:6379", options).await
}
async fn kafka(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    broker("kafka", "kafka://127.0.0.1:9092", options).await
}

conformance::suite!(memory, crate::memory);
conformance::suite!(nats, crate::nats);
conformance::suite!(amqp, crate::amqp);
conformance::suite!(mqtt, crate::mqtt);
conformance::suite!(redis_stream, crate::redis_stream);
conformance::suite!(kafka, crate::kafka);
