//! One suite, written once as generic functions over `Arc<dyn Cache>`, instantiated per
//! adapter by a macro. Keys carry a per-test random prefix, so runs sharing a server never
//! see each other's entries.

use std::sync::Arc;
use std::time::Duration;

use strata_cache::{CacheOptions, L1Options};
use strata_core::ports::{Cache, NoopObserver};

const TTL: Duration = Duration::from_secs(60);

fn key(name: &str) -> String {
    format!("test:{}:{name}", uuid::Uuid::new_v4().simple())
}

pub fn options(l1: bool) -> CacheOptions {
    CacheOptions {
        // Generous: this machine is small and busy during tests; the default is 10 ms.
        timeout: Duration::from_millis(500),
        l1: l1.then(L1Options::default),
        ..CacheOptions::default()
    }
}

pub fn open(url: &str, l1: bool) -> Arc<dyn Cache> {
    strata_cache::open(url, &options(l1), Arc::new(NoopObserver)).unwrap().unwrap()
}

/// A tiered cache over Redis uses its L1 only once its invalidation subscriber is
/// connected, which clears L1 and so moves the generation: wait (bounded) for that, so the
/// tests exercise both tiers.
pub async fn settle(cache: &Arc<dyn Cache>) {
    if !cache.describe().contains("pub/sub") {
        return;
    }
    for _ in 0..250 {
        if cache.generation() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the invalidation subscriber never connected");
}

pub async fn miss_fill_hit(cache: Arc<dyn Cache>) {
    let k = key("a");
    assert_eq!(cache.get(&k).await.unwrap(), None);
    assert!(cache.fill(&k, b"value".to_vec(), TTL, cache.generation()).await.unwrap());
    assert_eq!(cache.get(&k).await.unwrap().as_deref(), Some(&b"value"[..]));
    // Twice: the second read may come from another tier.
    assert_eq!(cache.get(&k).await.unwrap().as_deref(), Some(&b"value"[..]));
}

pub async fn fill_never_overwrites(cache: Arc<dyn Cache>) {
    let k = key("b");
    assert!(cache.fill(&k, b"first".to_vec(), TTL, cache.generation()).await.unwrap());
    assert!(!cache.fill(&k, b"second".to_vec(), TTL, cache.generation()).await.unwrap());
    assert_eq!(cache.get(&k).await.unwrap().as_deref(), Some(&b"first"[..]));
}

pub async fn invalidate_removes(cache: Arc<dyn Cache>) {
    let k = key("c");
    cache.fill(&k, b"v".to_vec(), TTL, cache.generation()).await.unwrap();
    assert!(cache.get(&k).await.unwrap().is_some());
    cache.invalidate(std::slice::from_ref(&k)).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), None);
    // Invalidating what does not exist is fine.
    cache.invalidate(&[key("never")]).await.unwrap();
    cache.invalidate(&[]).await.unwrap();
}

/// The race the port exists to close: a reader took the generation, read the database
/// (old value), and fills only after a writer invalidated. That fill must not be visible.
pub async fn late_fill_after_invalidate_is_refused(cache: Arc<dyn Cache>) {
    let k = key("d");
    let generation = cache.generation();
    cache.invalidate(std::slice::from_ref(&k)).await.unwrap();
    let _ = cache.fill(&k, b"stale".to_vec(), TTL, generation).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), None, "a stale fill resurrected an invalidated key");
}

pub async fn invalidates_many_at_once(cache: Arc<dyn Cache>) {
    let keys: Vec<String> = (0..50).map(|i| key(&format!("m{i}"))).collect();
    for k in &keys {
        cache.fill(k, k.as_bytes().to_vec(), TTL, cache.generation()).await.unwrap();
    }
    for k in &keys {
        assert_eq!(cache.get(k).await.unwrap().as_deref(), Some(k.as_bytes()));
    }
    cache.invalidate(&keys).await.unwrap();
    for k in &keys {
        assert_eq!(cache.get(k).await.unwrap(), None, "{k}");
    }
}

pub async fn binary_and_large_values(cache: Arc<dyn Cache>) {
    let all_bytes: Vec<u8> = (0..=255u8).chain(b"\r\nEND\r\n".iter().copied()).collect();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for value in [all_bytes, large, Vec::new()] {
        let k = key("bin");
        assert!(cache.fill(&k, value.clone(), TTL, cache.generation()).await.unwrap());
        assert_eq!(cache.get(&k).await.unwrap(), Some(value));
    }
}

pub async fn entries_expire(cache: Arc<dyn Cache>) {
    let k = key("ttl");
    cache.fill(&k, b"short".to_vec(), Duration::from_millis(500), cache.generation()).await.unwrap();
    // Polled, not timed: it must disappear, within a generous bound.
    let mut gone = false;
    for _ in 0..100 {
        if cache.get(&k).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "entry did not expire");
    // And the key can be filled again afterwards.
    assert!(cache.fill(&k, b"again".to_vec(), TTL, cache.generation()).await.unwrap());
}

pub async fn concurrent_use_stays_consistent(cache: Arc<dyn Cache>) {
    let prefix = key("conc");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let cache = cache.clone();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30 {
                let k = format!("{prefix}:{t}:{i}");
                let v = format!("{t}/{i}").into_bytes();
                cache.fill(&k, v.clone(), TTL, cache.generation()).await.unwrap();
                let got = cache.get(&k).await.unwrap();
                // Another task's invalidation may bump the generation, so a fill can be
                // skipped in L1, but a value read back is always the one written.
                assert!(got.is_none() || got == Some(v), "wrong value for {k}");
                if i % 10 == 0 {
                    cache.invalidate(std::slice::from_ref(&k)).await.unwrap();
                    assert_eq!(cache.get(&k).await.unwrap(), None);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            conformance!(@cases $make, [
                miss_fill_hit,
                fill_never_overwrites,
                invalidate_removes,
                late_fill_after_invalidate_is_refused,
                invalidates_many_at_once,
                binary_and_large_values,
                entries_expire,
                concurrent_use_stays_consistent,
            ]);
        }
    };
    (@cases $make:expr, [$($case:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let make: fn(&str) -> Option<Arc<dyn Cache>> = $make;
                let Some(cache) = make(concat!("cache ", stringify!($case))) else { return };
                settle(&cache).await;
                super::$case(cache).await;
            }
        )*
    };
}

conformance!(memory, |_| Some(open("memory://?entries=10000", false)));
conformance!(redis, |what| strata_cache::testing::shared_redis(what).map(|url| open(&url, false)));
conformance!(memcached, |what| strata_cache::testing::shared_memcached(what).map(|url| open(&url, false)));
conformance!(tiered_redis, |what| strata_cache::testing::shared_redis(what).map(|url| open(&url, true)));
conformance!(tiered_memcached, |what| strata_cache::testing::shared_memcached(what).map(|url| open(&url, true)));
