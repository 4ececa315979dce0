//! The outbox relay: publishes committed outbox rows to the event bus, in order per
//! aggregate, at least once.
//!
//! - **Which rows.** Unpublished rows, found by flag, never by "id greater than the last
//!   one seen" (ids are made before commit, so rows commit out of id order). For each
//!   aggregate the rows go out in `sequence` order, and a row's sequence is assigned under
//!   the aggregate's lock in the writing transaction, so sequence order is commit order.
//! - **Several relays.** The outbox is split into [`OUTBOX_PARTITIONS`] partitions by
//!   aggregate; a relay publishes only partitions it holds a lease on. Relays announce
//!   themselves with heartbeats and each takes a fair share (`ceil(16 / relays)`), releasing
//!   the excess when a new relay appears, so one partition — and so one aggregate — has at
//!   most one publisher while leases are honoured. A relay that stalls past its lease may
//!   publish a batch that its successor publishes too: a duplicate, never a reordering of
//!   what consumers apply, since consumers drop event ids they have seen.
//! - **Failure.** A publish error leaves the rows unpublished and backs off (jittered,
//!   doubling to `max_backoff`); a crash between publishing and marking republishes the
//!   batch: at least once. Published rows are pruned after `retention`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::domain::{Backlog, OUTBOX_PARTITIONS, StoredEvent, Timestamp, partition_lease};
use crate::events::{BusError, Event};
use crate::ports::{Clock, EventBus, Store};

#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// The CloudEvents `source` of every event.
    pub source: String,
    /// Rows per publish.
    pub batch: u32,
    /// How often to look for rows when nothing wakes the relay (writes through this
    /// instance do; other instances' writes are found by polling).
    pub poll_interval: Duration,
    pub lease_ttl: Duration,
    pub max_backoff: Duration,
    /// After a wake-up, how long to let more commits gather before reading the outbox. One
    /// read, publish and mark per commit would cost the database more transactions than
    /// the writes themselves (on SQLite's single writer, API writes fell to 63 % with
    /// events on); a few milliseconds turn them into batches.
    pub coalesce: Duration,
    /// How long published rows are kept.
    pub retention: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            source: "/strata".to_owned(),
            batch: 500,
            poll_interval: Duration::from_millis(50),
            lease_ttl: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            coalesce: Duration::from_millis(5),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What the relay reports, so the HTTP layer can export metrics without the core
/// depending on a metrics library.
pub trait RelayObserver: Send + Sync {
    /// A batch reached the broker and was marked published.
    fn published(&self, events: usize, elapsed: Duration);
    fn publish_failed(&self, error: &BusError);
    fn backlog(&self, backlog: Backlog, now: Timestamp);
    fn partitions_held(&self, count: usize);
}

impl RelayObserver for crate::ports::NoopObserver {
    fn published(&self, _: usize, _: Duration) {}
    fn publish_failed(&self, _: &BusError) {}
    fn backlog(&self, _: Backlog, _: Timestamp) {}
    fn partitions_held(&self, _: usize) {}
}

/// The CloudEvent for an outbox row.
pub fn to_event(row: StoredEvent, source: &str) -> Event {
    Event {
        id: row.id,
        source: source.to_owned(),
        event_type: row.event_type,
        time: row.created_at,
        subject: row.aggregate_id.to_string(),
        sequence: row.sequence,
        traceparent: row.traceparent,
        data: row.payload,
    }
}

pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn RelayObserver>,
    settings: RelaySettings,
    /// Unique per process: host, pid and a random suffix.
    owner: String,
    wake: Arc<Notify>,
}

impl Relay {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn EventBus>,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn RelayObserver>,
        settings: RelaySettings,
        owner: String,
    ) -> Self {
        Relay { store, bus, clock, observer, settings, owner, wake: Arc::new(Notify::new()) }
    }

    /// Notify this to make the relay look for rows now (after a local write).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs until `shutdown` turns true, then gives its leases up so another relay takes
    /// over without waiting for them to expire.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut held: Vec<u16> = Vec::new();
        let mut next_lease_check = tokio::time::Instant::now();
        let mut next_housekeeping = tokio::time::Instant::now();
        let mut failures: u32 = 0;
        tracing::info!(owner = %self.owner, bus = %self.bus.describe(), "outbox relay started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= next_lease_check {
                match self.refresh_leases(&held).await {
                    Ok(mine) => {
                        if mine != held {
                            tracing::info!(owner = %self.owner, partitions = ?mine, "relay partitions changed");
                        }
                        held = mine;
                    }
                    // Leases not renewed expire: stop publishing before someone else starts.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew relay leases");
                        held.clear();
                    }
                }
                self.observer.partitions_held(held.len());
                next_lease_check = now + self.settings.lease_ttl / 3;
            }
            if now >= next_housekeeping {
                self.housekeeping().await;
                next_housekeeping = now + Duration::from_secs(5);
            }
            let pause = if held.is_empty() {
                self.settings.lease_ttl / 3
            } else {
                match self.publish_once(&held).await {
                    Ok(n) if n >= self.settings.batch as usize => {
                        failures = 0;
                        continue;
                    }
                    Ok(_) => {
                        failures = 0;
                        self.settings.poll_interval
                    }
                    Err(()) => {
                        failures = failures.saturating_add(1);
                        backoff(failures, self.settings.max_backoff)
                    }
                }
            };
            let wake = self.wake.notified();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = wake, if failures == 0 => tokio::time::sleep(self.settings.coalesce).await,
                _ = shutdown.changed() => {}
            }
        }
        for p in held {
            let _ = self.store.release_lease(&partition_lease(p), &self.owner).await;
        }
        let _ = self.store.relay_heartbeat(&self.owner, Timestamp(0), Timestamp(0)).await;
        tracing::info!(owner = %self.owner, "outbox relay stopped");
    }

    /// One batch: read, publish, mark. `Ok(rows)` or `Err(())` after logging.
    async fn publish_once(&self, partitions: &[u16]) -> Result<usize, ()> {
        let rows = match self.store.pending_events(partitions, self.settings.batch).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return Err(());
            }
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
        let events: Vec<Event> = rows.into_iter().map(|r| to_event(r, &self.settings.source)).collect();
        if let Err(e) = self.bus.publish(&events).await {
            tracing::warn!(error = %e, events = events.len(), "cannot publish outbox events; retrying with backoff");
            self.observer.publish_failed(&e);
            return Err(());
        }
        // Published but not marked (crash, database error) means published again later:
        // a duplicate the consumers drop by id.
        if let Err(e) = self.store.mark_published(&ids, self.clock.now()).await {
            tracing::warn!(error = %e, "published events not marked; they will be published again");
            return Err(());
        }
        self.observer.published(events.len(), started.elapsed());
        Ok(events.len())
    }

    /// Heartbeat, then keep or take a fair share of the partitions.
    async fn refresh_leases(&self, held: &[u16]) -> Result<Vec<u16>, crate::error::RepoError> {
        let now = self.clock.now();
        let until = now.plus(self.settings.lease_ttl);
        // Heartbeats dead for ten lease periods are forgotten.
        let forget = now.minus(self.settings.lease_ttl * 10);
        self.store.relay_heartbeat(&self.owner, until, forget).await?;
        let rows = self.store.relay_leases().await?;
        let mut relays: Vec<&str> = rows.iter().filter(|l| l.expires_at >= now).filter_map(|l| l.member()).collect();
        if !relays.contains(&self.owner.as_str()) {
            relays.push(&self.owner);
        }
        let share = (OUTBOX_PARTITIONS as usize).div_ceil(relays.len());
        let mut mine: Vec<u16> = Vec::new();
        // Keep what we hold (renewing), up to the share; give the rest back.
        for p in held {
            if mine.len() < share && self.store.claim_lease(&partition_lease(*p), &self.owner, now, until).await? {
                mine.push(*p);
            } else if mine.len() >= share {
                self.store.release_lease(&partition_lease(*p), &self.owner).await?;
            }
        }
        // Then free or expired ones, starting at an offset of our own so that relays
        // starting together do not all race for partition 0.
        let offset = (fxhash(&self.owner) % u64::from(OUTBOX_PARTITIONS)) as u16;
        for i in 0..OUTBOX_PARTITIONS {
            if mine.len() >= share {
                break;
            }
            let p = (offset + i) % OUTBOX_PARTITIONS;
            if mine.contains(&p) {
                continue;
            }
            let free = rows.iter().any(|l| {
                l.partition() == Some(p) && (l.owner.is_empty() || l.expires_at < now || l.owner == self.owner)
            });
            if free && self.store.claim_lease(&partition_lease(p), &self.owner, now, until).await? {
                mine.push(p);
            }
        }
        mine.sort_unstable();
        Ok(mine)
    }

    async fn housekeeping(&self) {
        let now = self.clock.now();
        match self.store.outbox_backlog().await {
            Ok(b) => self.observer.backlog(b, now),
            Err(e) => tracing::warn!(error = %e, "cannot measure the outbox backlog"),
        }
        match self.store.prune_published(now.minus(self.settings.retention), 10_000).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "pruned published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the outbox"),
        }
    }
}

/// Jittered exponential backoff: 100 ms × 2^(n-1), capped, times a factor in [0.5, 1).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = base.min(cap);
    let jitter = 0.5 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 2000.0;
    capped.mul_f64(jitter)
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(30);
        for n in 1..30 {
            let d = backoff(n, cap);
            let nominal = Duration::from_millis(100).saturating_mul(1 << (n - 1).min(16)).min(cap);
            assert!(d >= nominal / 2 && d < nominal, "{n}: {d:?} vs {nominal:?}");
        }
    }
}
