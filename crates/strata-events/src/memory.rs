//! `memory://`: an in-process bus, the embedded default. Durable only for the life of the
//! process — the outbox is the durable copy: events not yet published when the process
//! dies are still unpublished rows, and the next relay publishes them.
//!
//! One ordered log; each group has a cursor and a set of delivered-but-unacknowledged
//! entries, redelivered after the ack wait. The log is trimmed below the slowest group's
//! oldest unacknowledged entry; with no group yet it keeps the last [`UNCLAIMED_CAP`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use strata_core::events::{BusError, BusOptions, Consumer, Delivery, DeliveryToken, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

/// Events kept while no group has subscribed yet.
const UNCLAIMED_CAP: usize = 100_000;
/// Broadcast subscribers that fall this far behind lose the oldest events.
const BROADCAST_CAPACITY: usize = 16_384;

pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    options: BusOptions,
    state: Mutex<State>,
    published: Notify,
    /// Made by the first broadcast subscriber: its 16k slots are 2.8 MB, touched when made,
    /// and most processes never subscribe (a receiver sees only what is sent after it
    /// subscribed, so nothing is lost by not sending before).
    broadcast: OnceLock<broadcast::Sender<Event>>,
}

#[derive(Default)]
struct State {
    /// Sequence number of `log[0]`.
    base: u64,
    log: VecDeque<Event>,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    /// Next sequence never yet delivered.
    next: u64,
    /// Delivered, not acknowledged: sequence → when it may be redelivered.
    pending: BTreeMap<u64, Instant>,
}

impl MemoryBus {
    pub fn new(options: BusOptions) -> Self {
        MemoryBus {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State::default()),
                published: Notify::new(),
                broadcast: OnceLock::new(),
            }),
        }
    }
}

impl State {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    fn trim(&mut self) {
        let keep_from = if self.groups.is_empty() {
            self.end().saturating_sub(UNCLAIMED_CAP as u64)
        } else {
            self.groups.values().map(|g| g.pending.keys().next().copied().unwrap_or(g.next)).min().unwrap_or(self.base)
        };
        while self.base < keep_from && !self.log.is_empty() {
            self.log.pop_front();
            self.base += 1;
        }
    }

    fn take(&mut self, group: &str, max: usize, ack_wait: Duration) -> Vec<Delivery> {
        let now = Instant::now();
        let base = self.base;
        let end = self.end();
        let Some(g) = self.groups.get_mut(group) else { return Vec::new() };
        let mut out = Vec::new();
        // Overdue redeliveries first, oldest first, then what the group has never seen.
        let overdue: Vec<u64> = g.pending.iter().filter(|(_, due)| **due <= now).map(|(s, _)| *s).take(max).collect();
        for seq in overdue {
            g.pending.insert(seq, now + ack_wait);
            out.push((seq, self.log[(seq - base) as usize].clone()));
        }
        while out.len() < max && g.next < end {
            let seq = g.next;
            g.next += 1;
            g.pending.insert(seq, now + ack_wait);
            out.push((seq, self.log[(seq - base) as usize].clone()));
        }
        out.into_iter().map(|(seq, event)| Delivery { event, token: DeliveryToken::Number(seq) }).collect()
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    fn describe(&self) -> String {
        "memory:// (in-process)".to_owned()
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        {
            let mut state = self.inner.state.lock();
            state.log.extend(events.iter().cloned());
            state.trim();
        }
        if let Some(broadcast) = self.inner.broadcast.get() {
            for e in events {
                // No receivers is not an error: nobody is listening for broadcasts yet.
                let _ = broadcast.send(e.clone());
            }
        }
        self.inner.published.notify_waiters();
        Ok(())
    }

    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        match consumer {
            Consumer::Group(name) => {
                let mut state = self.inner.state.lock();
                let base = state.base;
                state.groups.entry(name.to_owned()).or_insert_with(|| Group { next: base, pending: BTreeMap::new() });
                Ok(Box::new(GroupSubscription { inner: self.inner.clone(), group: name.to_owned() }))
            }
            Consumer::Broadcast => {
                let broadcast = self.inner.broadcast.get_or_init(|| broadcast::channel(BROADCAST_CAPACITY).0);
                Ok(Box::new(BroadcastSubscription { rx: broadcast.subscribe() }))
            }
        }
    }
}

struct GroupSubscription {
    inner: Arc<Inner>,
    group: String,
}

#[async_trait]
impl Subscription for GroupSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let published = self.inner.published.notified();
            tokio::pin!(published);
            // Registered before looking, so a publish between the look and the wait wakes us.
            published.as_mut().enable();
            let (batch, next_due) = {
                let mut state = self.inner.state.lock();
                let batch = state.take(&self.group, max.max(1), self.inner.options.ack_wait);
                let due = state.groups.get(&self.group).and_then(|g| g.pending.values().min().copied());
                (batch, due)
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
            let wake = next_due.map_or(deadline, |due| due.min(deadline));
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout_at(wake, published).await;
        }
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        let mut state = self.inner.state.lock();
        if let Some(g) = state.groups.get_mut(&self.group) {
            for d in deliveries {
                if let DeliveryToken::Number(seq) = d.token {
                    g.pending.remove(&seq);
                }
            }
        }
        state.trim();
        Ok(())
    }
}

struct BroadcastSubscription {
    rx: broadcast::Receiver<Event>,
}

#[async_trait]
impl Subscription for BroadcastSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        while out.len() < max.max(1) {
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => Err(broadcast::error::RecvError::Lagged(n)),
                    Err(_) => break,
                }
            };
            match next {
                Ok(event) => out.push(Delivery { event, token: DeliveryToken::Number(0) }),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Err(BusError::Unavailable(format!("broadcast subscriber fell {n} events behind")));
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, _: &[Delivery]) -> Result<(), BusError> {
        Ok(())
    }
}
