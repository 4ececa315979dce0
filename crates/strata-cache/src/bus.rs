//! L1 invalidations over the event bus, for a shared tier with no broadcast of its own
//! (Memcached): the same cross-instance freshness Redis pub/sub gives.
//!
//! An instance that invalidates publishes the keys as one `cache.invalidated` event on a
//! bus of its own (its own namespace, so domain listeners never see these); every instance
//! holds a broadcast subscription and drops the keys it hears of from its L1, skipping its
//! own (already dropped). As with Redis: L1 is used only while the subscription is healthy,
//! and it is cleared whenever the subscription is (re)made, because what was published
//! meanwhile may be lost. A publish that fails is retried in the background for as long as
//! an L1 entry can live; after that there is nothing left to invalidate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use strata_core::events::{Consumer, Event};
use strata_core::ports::{CacheObserver, Clock, EventBus, SystemClock};

use crate::memory::MemoryCache;

pub use strata_core::events::CACHE_INVALIDATED as EVENT_TYPE;
const SOURCE: &str = "/strata/cache";

/// Publishes this instance's invalidations.
pub struct BusBroadcast {
    bus: Arc<dyn EventBus>,
    instance_id: String,
    /// How long an unpublished invalidation still matters (the L1 TTL).
    retry_for: Duration,
}

impl BusBroadcast {
    pub fn new(bus: Arc<dyn EventBus>, instance_id: String, retry_for: Duration) -> Self {
        BusBroadcast { bus, instance_id, retry_for }
    }

    /// Sends `keys` in the background: the write that caused them does not wait for the
    /// broker, and a broker that is down costs it nothing.
    pub fn publish(&self, keys: &[String]) {
        let event = Event {
            id: uuid::Uuid::now_v7(),
            source: SOURCE.to_owned(),
            event_type: EVENT_TYPE.to_owned(),
            time: SystemClock.now(),
            subject: self.instance_id.clone(),
            sequence: 1,
            traceparent: None,
            data: encode_keys(keys),
        };
        let (bus, retry_for) = (self.bus.clone(), self.retry_for);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + retry_for;
            let mut pause = Duration::from_millis(50);
            loop {
                match bus.publish(std::slice::from_ref(&event)).await {
                    Ok(()) => return,
                    Err(e) if tokio::time::Instant::now() + pause < deadline => {
                        tracing::debug!(error = %e, "cache invalidation not published yet; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                    Err(e) => {
                        // Every L1 entry it was about has expired by now.
                        tracing::warn!(error = %e, "gave up publishing a cache invalidation");
                        return;
                    }
                }
            }
        });
    }
}

/// `{"keys": [...]}`. Keys are ASCII (prefix, kind, hex or UUID), so no escaping is needed,
/// but it is done anyway rather than trusted.
fn encode_keys(keys: &[String]) -> String {
    let mut out = String::from(r#"{"keys":["#);
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in k.chars() {
            match c {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push_str("]}");
    out
}

/// The keys of an invalidation we published; `None` for anything else. Only what
/// [`encode_keys`] writes is accepted: keys never contain quotes or backslashes.
fn decode_keys(data: &str) -> Option<Vec<String>> {
    let list = data.strip_prefix(r#"{"keys":["#)?.strip_suffix("]}")?;
    if list.is_empty() {
        return Some(Vec::new());
    }
    list.split(',')
        .map(|k| {
            let k = k.strip_prefix('"')?.strip_suffix('"')?;
            (!k.contains(['"', '\\'])).then(|| k.to_owned())
        })
        .collect()
}

/// Subscribes (retrying) and applies other instances' invalidations to `l1`; `connected`
/// says whether L1 may be used. Ends when `l1` is dropped.
pub fn spawn_subscriber(
    bus: Arc<dyn EventBus>,
    instance_id: String,
    l1: Weak<MemoryCache>,
    connected: Arc<AtomicBool>,
    observer: Arc<dyn CacheObserver>,
) {
    tokio::spawn(async move {
        loop {
            if l1.strong_count() == 0 {
                return;
            }
            let mut sub = match bus.subscribe(Consumer::Broadcast).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::debug!(error = %e, "cache invalidation subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if let Some(l1) = l1.upgrade() {
                l1.clear();
            }
            connected.store(true, Ordering::Release);
            tracing::info!(bus = %bus.describe(), "cache invalidation subscriber connected (event bus)");
            let reason = loop {
                let batch = match sub.fetch(256, Duration::from_secs(1)).await {
                    Ok(batch) => batch,
                    Err(e) => break e.to_string(),
                };
                let Some(cache) = l1.upgrade() else { break "cache dropped".into() };
                for d in &batch {
                    let e = &d.event;
                    if e.event_type != EVENT_TYPE || e.subject == instance_id {
                        continue;
                    }
                    match decode_keys(&e.data) {
                        Some(keys) => {
                            cache.remove(&keys);
                            observer.tier("l1", "remote_invalidate", "ok");
                        }
                        None => tracing::warn!(event = %e.id, "ignoring a malformed cache invalidation"),
                    }
                }
                drop(cache);
                if let Err(e) = sub.ack(&batch).await {
                    break e.to_string();
                }
            };
            connected.store(false, Ordering::Release);
            if let Some(l1) = l1.upgrade() {
                l1.clear();
            }
            tracing::warn!(%reason, "cache invalidation subscriber disconnected; L1 bypassed until it reconnects");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_anything_else_is_refused() {
        let keys = vec!["strata:1:s:abcd".to_owned(), "strata:1:u:0123".to_owned()];
        assert_eq!(decode_keys(&encode_keys(&keys)), Some(keys));
        assert_eq!(decode_keys(&encode_keys(&[])), Some(vec![]));
        for bad in ["", "{}", r#"{"keys":["a\"b"]}"#, r#"{"keys":[1]}"#, r#"{"keys":["a"]"#] {
            assert_eq!(decode_keys(bad), None, "{bad}");
        }
    }
}
