//! The in-process cache (`memory://`, and the L1 tier): W-TinyLFU shards behind short
//! mutexes. The embedded default: no server, nothing to configure.
//!
//! Fill/invalidate races are closed with the generation counter of the [`Cache`] port:
//! an invalidation bumps the generation *before* removing keys, and a fill checks the
//! generation under the shard lock it inserts with. So a fill either lands before the
//! removal (and is removed) or sees the new generation (and is skipped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use strata_core::ports::{Cache, CacheError, CacheObserver};
use tokio::time::Instant;

use crate::tinylfu::{Limits, TinyLfu, hash_key};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Upper bound on any entry's lifetime here, whatever the fill asked for (the L1
    /// tier's staleness bound); `None` keeps the fill's TTL.
    pub max_ttl: Option<Duration>,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions { max_entries: 100_000, max_bytes: 64 << 20, max_ttl: None }
    }
}

pub struct MemoryCache {
    shards: Vec<Mutex<TinyLfu>>,
    generation: AtomicU64,
    options: MemoryOptions,
    observer: Arc<dyn CacheObserver>,
    tier: &'static str,
}

impl MemoryCache {
    pub fn new(options: MemoryOptions, observer: Arc<dyn CacheObserver>) -> Self {
        Self::with_tier(options, observer, "l1")
    }

    /// `tier` labels this cache's metrics.
    pub fn with_tier(options: MemoryOptions, observer: Arc<dyn CacheObserver>, tier: &'static str) -> Self {
        // Sharding cuts lock contention but splits capacity; small caches stay whole so
        // their admission decisions see all keys.
        let shards: usize = if options.max_entries >= 4096 { 16 } else { 1 };
        let per_shard = Limits {
            entries: options.max_entries.div_ceil(shards).max(1),
            bytes: options.max_bytes.div_ceil(shards).max(1),
        };
        MemoryCache {
            shards: (0..shards).map(|_| Mutex::new(TinyLfu::new(per_shard))).collect(),
            generation: AtomicU64::new(0),
            options,
            observer,
            tier,
        }
    }

    fn shard(&self, hash: u64) -> &Mutex<TinyLfu> {
        // Picked from a remix of the whole hash, not from some of its bits: the shard's table
        // places keys by the low bits and tags them with the top seven, and the sketch reads
        // both ends, so bits fixed by the choice of shard would cluster them all.
        &self.shards[(hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % self.shards.len()]
    }

    pub fn lookup(&self, key: &str) -> Option<Vec<u8>> {
        let hash = hash_key(key);
        let got = self.shard(hash).lock().get(key, hash, Instant::now()).map(|v| v.to_vec());
        self.observer.tier(self.tier, "get", if got.is_some() { "hit" } else { "miss" });
        got
    }

    /// Inserts unless present or `generation` is no longer current.
    pub fn insert(&self, key: &str, value: &[u8], ttl: Duration, generation: u64) -> bool {
        let ttl = self.options.max_ttl.map_or(ttl, |max| ttl.min(max));
        let hash = hash_key(key);
        let now = Instant::now();
        let stored = {
            let mut shard = self.shard(hash).lock();
            self.generation.load(Ordering::SeqCst) == generation
                && shard.insert_if_absent(key, hash, Arc::from(value), now + ttl, now)
        };
        self.observer.tier(self.tier, "fill", if stored { "ok" } else { "skipped" });
        stored
    }

    /// Bumps the generation, then removes: see the module comment for why in this order.
    pub fn remove(&self, keys: &[String]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            let hash = hash_key(key);
            self.shard(hash).lock().remove(key, hash);
        }
    }

    /// Forgets everything (an L1 that may have missed invalidations).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for shard in &self.shards {
            shard.lock().clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn current_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Cache for MemoryCache {
    fn describe(&self) -> String {
        format!("memory (entries ≤ {}, bytes ≤ {})", self.options.max_entries, self.options.max_bytes)
    }

    fn generation(&self) -> u64 {
        self.current_generation()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(self.lookup(key))
    }

    async fn fill(&self, key: &str, value: Vec<u8>, ttl: Duration, generation: u64) -> Result<bool, CacheError> {
        Ok(self.insert(key, &value, ttl, generation))
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        self.remove(keys);
        self.observer.tier(self.tier, "invalidate", "ok");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys spread evenly over the shards (16 000 keys, 16 shards).
    #[test]
    fn keys_spread_over_the_shards() {
        let cache = MemoryCache::new(MemoryOptions::default(), Arc::new(strata_core::ports::NoopObserver));
        for n in 0..16_000 {
            assert!(cache.insert(&format!("strata:1:s:{n:064x}"), b"v", Duration::from_secs(60), 0));
        }
        let sizes: Vec<usize> = cache.shards.iter().map(|s| s.lock().len()).collect();
        assert!(sizes.iter().all(|&n| (800..1200).contains(&n)), "shard sizes {sizes:?}");
    }
}
