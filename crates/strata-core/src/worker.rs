//! The worker role: listeners that consume events from the bus.
//!
//! Each listener is a durable consumer group of its own (its name), so it sees every
//! event once its group has acknowledged it, and a redelivery — after a crash, a relay
//! that published twice, or a missed acknowledgement — is applied at most once: every
//! listener records the event ids it applied in the same write as the effect (the audit
//! log's primary key is the event id).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::domain::{AuditEntry, Timestamp};
use crate::events::{Consumer, Event};
use crate::ports::{Clock, EventBus, Store};

#[async_trait]
pub trait Listener: Send + Sync {
    /// Also its consumer group name.
    fn name(&self) -> &'static str;

    /// Durable group (the default) or broadcast to every instance.
    fn consumer(&self) -> Consumer<'static> {
        Consumer::Group(self.name())
    }

    /// Applies a batch. Must be idempotent per event id. An error leaves the batch
    /// unacknowledged: the bus redelivers it after its ack wait.
    async fn apply(&self, events: &[Event]) -> Result<(), String>;
}

/// What listeners report, for metrics.
pub trait ListenerObserver: Send + Sync {
    /// `outcome`: `applied` or `failed`; `lag` is now − the oldest event's time.
    fn batch(&self, listener: &'static str, outcome: &'static str, events: usize, lag: Duration);
}

impl ListenerObserver for crate::ports::NoopObserver {
    fn batch(&self, _: &'static str, _: &'static str, _: usize, _: Duration) {}
}

/// Runs `listener` until `shutdown` turns true: subscribe (retrying), fetch, apply, ack.
pub async fn run_listener(
    bus: Arc<dyn EventBus>,
    listener: Arc<dyn Listener>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn ListenerObserver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = listener.name();
    let mut failures = 0u32;
    'subscribe: while !*shutdown.borrow() {
        let mut sub = match bus.subscribe(listener.consumer()).await {
            Ok(sub) => sub,
            Err(e) => {
                failures += 1;
                tracing::warn!(listener = name, error = %e, "cannot subscribe; retrying");
                wait(crate::relay::backoff(failures, Duration::from_secs(30)), &mut shutdown).await;
                continue;
            }
        };
        tracing::info!(listener = name, "listener subscribed");
        while !*shutdown.borrow() {
            let batch = tokio::select! {
                b = sub.fetch(256, Duration::from_secs(1)) => b,
                _ = shutdown.changed() => break 'subscribe,
            };
            let batch = match batch {
                Ok(b) if b.is_empty() => continue,
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(listener = name, error = %e, "fetch failed; resubscribing");
                    wait(crate::relay::backoff(failures, Duration::from_secs(30)), &mut shutdown).await;
                    continue 'subscribe;
                }
            };
            let events: Vec<Event> = batch.iter().map(|d| d.event.clone()).collect();
            let now = clock.now();
            let oldest = events.iter().map(|e| e.time).min().unwrap_or(now);
            let lag = Duration::from_micros(now.micros().saturating_sub(oldest.micros()).max(0) as u64);
            match listener.apply(&events).await {
                Ok(()) => {
                    failures = 0;
                    observer.batch(name, "applied", events.len(), lag);
                    if let Err(e) = sub.ack(&batch).await {
                        // Applied but not acknowledged: redelivered, and ignored by id.
                        tracing::warn!(listener = name, error = %e, "ack failed; the batch will be redelivered");
                    }
                }
                Err(e) => {
                    failures += 1;
                    observer.batch(name, "failed", events.len(), lag);
                    tracing::warn!(listener = name, error = %e, events = events.len(), "listener failed; redelivery after the ack wait");
                    wait(crate::relay::backoff(failures, Duration::from_secs(30)), &mut shutdown).await;
                }
            }
        }
    }
    tracing::info!(listener = name, "listener stopped");
}

async fn wait(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

/// Appends every event to the audit log (exactly once per event id), and prunes entries
/// past the retention.
pub struct AuditListener {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    next_prune: parking_lot::Mutex<Timestamp>,
}

impl AuditListener {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, retention: Duration) -> Self {
        AuditListener { store, clock, retention, next_prune: parking_lot::Mutex::new(Timestamp(0)) }
    }

    /// The entry for an event: the actor lifted out of the data.
    pub fn entry(event: &Event) -> Result<AuditEntry, String> {
        let mut data: serde_json::Value =
            serde_json::from_str(&event.data).map_err(|e| format!("event {} data is not JSON: {e}", event.id))?;
        let actor = data
            .as_object_mut()
            .and_then(|o| o.remove("actor"))
            .unwrap_or_else(|| serde_json::json!({ "type": "system" }));
        let subject = event.subject.parse().map_err(|_| format!("event {} subject is not a UUID", event.id))?;
        Ok(AuditEntry {
            id: event.id,
            event_type: event.event_type.clone(),
            subject,
            actor: actor.to_string(),
            time: event.time,
            data: data.to_string(),
        })
    }
}

#[async_trait]
impl Listener for AuditListener {
    fn name(&self) -> &'static str {
        "audit"
    }

    async fn apply(&self, events: &[Event]) -> Result<(), String> {
        let mut entries = Vec::with_capacity(events.len());
        for e in events {
            match Self::entry(e) {
                Ok(entry) => entries.push(entry),
                // Not ours to fix by retrying forever: log and skip it.
                Err(why) => tracing::warn!(event_id = %e.id, "skipping an event the audit log cannot record: {why}"),
            }
        }
        self.store.append_audit(&entries).await.map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let due = {
            let mut next = self.next_prune.lock();
            let due = now >= *next;
            if due {
                *next = now.plus(Duration::from_secs(60));
            }
            due
        };
        if due {
            match self.store.prune_audit(now.minus(self.retention), 10_000).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(entries = n, "pruned audit log"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
            }
        }
        Ok(())
    }
}
