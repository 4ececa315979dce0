//! What keeps a shared (L2) cache from serving a value that an invalidation failed to
//! remove, and the envelope that makes it possible.
//!
//! Every value in Redis or Memcached is wrapped: magic, envelope version, kind (value or
//! tombstone) and the writer's wall-clock time in milliseconds. An invalidation writes a
//! tombstone (not a delete), and fills never overwrite, so a fill racing an invalidation
//! cannot resurrect the old value while the tombstone lives.
//!
//! When an invalidation cannot reach the server (down, slow, breaker open), its keys are
//! kept as *pending*: this instance treats them as misses and never fills them, and a
//! background task replays the invalidation until the server takes it. If more keys are
//! pending than the bound, the set is dropped and this instance instead distrusts every
//! L2 entry written before that moment (`distrust_before`), which is correct, only slower.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::ports::{Cache, CacheError, CacheObserver};

const MAGIC: u8 = 0xC5;
const ENVELOPE_VERSION: u8 = 1;
const KIND_VALUE: u8 = 0;
const KIND_TOMBSTONE: u8 = 1;
const HEADER: usize = 11;

/// Keys awaiting a replayed invalidation, at most this many.
pub const MAX_PENDING: usize = 10_000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub fn wrap(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&[MAGIC, ENVELOPE_VERSION, KIND_VALUE]);
    out.extend_from_slice(&now_ms().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn tombstone() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(&[MAGIC, ENVELOPE_VERSION, KIND_TOMBSTONE]);
    out.extend_from_slice(&now_ms().to_be_bytes());
    out
}

#[derive(Debug, PartialEq, Eq)]
pub enum Unwrapped<'a> {
    Value {
        written_ms: u64,
        payload: &'a [u8],
    },
    Tombstone,
    /// Not ours, or another envelope version: a miss.
    Foreign,
}

pub fn unwrap(bytes: &[u8]) -> Unwrapped<'_> {
    if bytes.len() < HEADER || bytes[0] != MAGIC || bytes[1] != ENVELOPE_VERSION {
        return Unwrapped::Foreign;
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&bytes[3..HEADER]);
    match bytes[2] {
        KIND_VALUE => Unwrapped::Value { written_ms: u64::from_be_bytes(ms), payload: &bytes[HEADER..] },
        KIND_TOMBSTONE => Unwrapped::Tombstone,
        _ => Unwrapped::Foreign,
    }
}

/// Counts an L2 fill's outcome (shared by the Redis and Memcached adapters).
pub fn count_fill(stored: &Result<bool, CacheError>, observer: &dyn CacheObserver) {
    let outcome = match stored {
        Ok(true) => "ok",
        Ok(false) => "skipped",
        Err(_) => "error",
    };
    observer.tier("l2", "fill", outcome);
}

#[derive(Default)]
pub struct Shield {
    pending: Mutex<HashSet<String>>,
    /// Fast path: no lock on reads while nothing is pending.
    any_pending: AtomicBool,
    distrust_before_ms: AtomicU64,
}

impl Shield {
    /// The payload a shared-tier read may use, if any.
    /// An L2 read as callers see it: the stored bytes through [`Shield::accept`], with the
    /// outcome counted (shared by the Redis and Memcached adapters).
    pub fn finish_get(
        &self,
        key: &str,
        read: Result<Option<Vec<u8>>, CacheError>,
        observer: &dyn CacheObserver,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        match read {
            Ok(stored) => {
                let value = self.accept(key, stored);
                observer.tier("l2", "get", if value.is_some() { "hit" } else { "miss" });
                Ok(value)
            }
            Err(e) => {
                observer.tier("l2", "get", "error");
                Err(e)
            }
        }
    }

    pub fn accept(&self, key: &str, stored: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let stored = stored?;
        if self.is_pending(key) {
            return None;
        }
        match unwrap(&stored) {
            Unwrapped::Value { written_ms, payload }
                if written_ms > self.distrust_before_ms.load(Ordering::Acquire) =>
            {
                Some(payload.to_vec())
            }
            _ => None,
        }
    }

    pub fn is_pending(&self, key: &str) -> bool {
        self.any_pending.load(Ordering::Acquire) && self.pending.lock().contains(key)
    }

    /// From now on, entries written up to this moment are misses.
    pub fn distrust_now(&self) {
        // Entries written in this very millisecond are distrusted too (`>` in `accept`).
        self.distrust_before_ms.fetch_max(now_ms(), Ordering::AcqRel);
    }

    pub fn failed(&self, keys: &[String]) {
        let mut pending = self.pending.lock();
        if pending.len() + keys.len() > MAX_PENDING {
            pending.clear();
            self.any_pending.store(false, Ordering::Release);
            self.distrust_now();
            tracing::warn!("too many cache invalidations pending; distrusting older shared-cache entries");
            return;
        }
        pending.extend(keys.iter().cloned());
        self.any_pending.store(true, Ordering::Release);
    }

    pub fn pending(&self) -> Vec<String> {
        if !self.any_pending.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.pending.lock().iter().cloned().collect()
    }

    pub fn replayed(&self, keys: &[String]) {
        let mut pending = self.pending.lock();
        for k in keys {
            pending.remove(k);
        }
        self.any_pending.store(!pending.is_empty(), Ordering::Release);
    }
}

/// Replays pending invalidations every `every` until they land; ends when the cache is
/// dropped.
pub fn spawn_replayer<C: Cache + 'static>(cache: Weak<C>, shield: Arc<Shield>, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(cache) = cache.upgrade() else { return };
            let keys = shield.pending();
            if !keys.is_empty() && cache.invalidate(&keys).await.is_ok() {
                shield.replayed(&keys);
                tracing::info!(keys = keys.len(), "replayed cache invalidations");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_rejects_foreign_bytes() {
        let w = wrap(b"payload");
        assert!(matches!(unwrap(&w), Unwrapped::Value { payload: b"payload", .. }));
        assert_eq!(unwrap(&tombstone()), Unwrapped::Tombstone);
        assert_eq!(unwrap(b"plain old value"), Unwrapped::Foreign);
        assert_eq!(unwrap(&w[..5]), Unwrapped::Foreign);
    }

    #[test]
    fn pending_keys_are_misses_until_replayed() {
        let s = Shield::default();
        let v = Some(wrap(b"x"));
        assert_eq!(s.accept("k", v.clone()), Some(b"x".to_vec()));
        s.failed(&["k".to_owned()]);
        assert_eq!(s.accept("k", v.clone()), None);
        assert_eq!(s.accept("other", v.clone()), Some(b"x".to_vec()));
        assert_eq!(s.pending(), vec!["k".to_owned()]);
        s.replayed(&["k".to_owned()]);
        assert_eq!(s.accept("k", v), Some(b"x".to_vec()));
        assert_eq!(s.accept("k", Some(tombstone())), None);
    }

    #[test]
    fn overflow_distrusts_everything_older() {
        let s = Shield::default();
        let old = Some(wrap(b"old"));
        let many: Vec<String> = (0..=MAX_PENDING).map(|i| format!("k{i}")).collect();
        s.failed(&many);
        assert!(s.pending().is_empty(), "the set is dropped, not kept over its bound");
        assert_eq!(s.accept("unrelated", old), None, "older entries are no longer trusted");
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(s.accept("unrelated", Some(wrap(b"new"))), Some(b"new".to_vec()));
    }
}
