//! L1 in front of L2: an in-process W-TinyLFU tier (short TTL) before Redis or Memcached.
//!
//! Reads try L1, then L2, and copy L2 hits into L1. Fills go to L2 first and into L1 only
//! if L2 stored them (a refused `NX`/`add` means a tombstone or another fill got there
//! first, and our value may be stale) or L2 is unreachable. Invalidations go to L2 first
//! (tombstone + broadcast), then to the local L1; in that order no local reader can copy
//! the old L2 value into L1 after the invalidation returns (see `MemoryCache` for the
//! generation check that makes this hold).
//!
//! With Redis, other instances hear the broadcast and drop the keys from their L1; while
//! this instance's subscriber is disconnected its L1 is bypassed entirely. Memcached has no
//! broadcast: with an event bus the invalidations ride that instead ([`crate::bus`], same
//! rules); without one, other instances' L1 entries live out their (short) TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use strata_core::ports::{Cache, CacheError};

use crate::memory::MemoryCache;

pub struct Tiered {
    l1: Arc<MemoryCache>,
    l2: Arc<dyn Cache>,
    l1_ttl: Duration,
    /// `Some` when L1 depends on a broadcast subscriber: L1 is usable only while it is
    /// connected.
    subscribed: Option<Arc<AtomicBool>>,
    /// Sends invalidations to other instances when L2 does not (Memcached).
    broadcast: Option<crate::bus::BusBroadcast>,
}

impl Tiered {
    pub fn new(
        l1: Arc<MemoryCache>,
        l2: Arc<dyn Cache>,
        l1_ttl: Duration,
        subscribed: Option<Arc<AtomicBool>>,
    ) -> Self {
        Tiered { l1, l2, l1_ttl, subscribed, broadcast: None }
    }

    /// Invalidations also go out on the event bus.
    pub fn with_broadcast(mut self, broadcast: crate::bus::BusBroadcast) -> Self {
        self.broadcast = Some(broadcast);
        self
    }

    fn l1_usable(&self) -> bool {
        self.subscribed.as_ref().is_none_or(|s| s.load(Ordering::Acquire))
    }

    pub fn l1(&self) -> &Arc<MemoryCache> {
        &self.l1
    }
}

#[async_trait]
impl Cache for Tiered {
    fn describe(&self) -> String {
        let bus = match (&self.subscribed, &self.broadcast) {
            (Some(_), Some(_)) => "invalidation over the event bus",
            (Some(_), None) => "pub/sub invalidation",
            (None, _) => "no broadcast",
        };
        format!("tiered: L1 {} ttl {:?}, L2 {} ({bus})", self.l1.describe(), self.l1_ttl, self.l2.describe())
    }

    fn generation(&self) -> u64 {
        self.l1.current_generation()
    }

    fn available(&self) -> bool {
        self.l1_usable() || self.l2.available()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let usable = self.l1_usable();
        if usable && let Some(v) = self.l1.lookup(key) {
            return Ok(Some(v));
        }
        // Read before L2, so an invalidation arriving while we wait voids the copy.
        let generation = self.l1.current_generation();
        let value = self.l2.get(key).await?;
        if usable && let Some(v) = &value {
            self.l1.insert(key, v, self.l1_ttl, generation);
        }
        Ok(value)
    }

    async fn fill(&self, key: &str, value: Vec<u8>, ttl: Duration, generation: u64) -> Result<bool, CacheError> {
        let shared = self.l2.fill(key, value.clone(), ttl, self.l2.generation()).await;
        let local = match shared {
            Ok(false) => false,
            Ok(true) | Err(_) => self.l1_usable() && self.l1.insert(key, &value, ttl.min(self.l1_ttl), generation),
        };
        match shared {
            Ok(stored) => Ok(stored || local),
            Err(_) if local => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        let shared = self.l2.invalidate(keys).await;
        self.l1.remove(keys);
        if let Some(b) = &self.broadcast {
            b.publish(keys);
        }
        shared
    }
}
