//! Fault tests at the adapter level, on private server processes (spare loopback ports,
//! started and killed by the test; the shared servers are never touched).

use std::sync::Arc;
use std::time::Duration;

use strata_cache::testing::ServerProcess;
use strata_cache::{BreakerOptions, CacheOptions, L1Options};
use strata_core::ports::{Cache, NoopObserver};

const TTL: Duration = Duration::from_secs(60);

fn options(l1: bool) -> CacheOptions {
    CacheOptions {
        timeout: Duration::from_millis(300),
        breaker: BreakerOptions { failures: 3, open_for: Duration::from_millis(200) },
        l1: l1.then(L1Options::default),
        ..CacheOptions::default()
    }
}

fn open(url: &str, l1: bool) -> Arc<dyn Cache> {
    strata_cache::open(url, &options(l1), Arc::new(NoopObserver)).unwrap().unwrap()
}

/// Polls `probe` every 50 ms until it holds, at most `tries` times.
async fn eventually<F: AsyncFn() -> bool>(tries: usize, probe: F) -> bool {
    for _ in 0..tries {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reads_fall_back_to_the_replica_and_invalidations_are_replayed() {
    let what = "cache redis primary failover";
    let Some(mut primary) = ServerProcess::redis(what, None) else { return };
    let Some(replica) = ServerProcess::redis(what, Some(primary.port())) else { return };
    replica.wait_replica_synced().unwrap();
    let cache = open(&format!("redis://{}?replica={}", primary.addr(), replica.addr()), false);
    let replica_only = open(&format!("redis://{}", replica.addr()), false);

    let (kept, dropped) = ("k:kept".to_owned(), "k:dropped".to_owned());
    for k in [&kept, &dropped] {
        assert!(cache.fill(k, b"v".to_vec(), TTL, 0).await.unwrap());
    }
    assert!(eventually(100, async || replica_only.get(&dropped).await.ok().flatten().is_some()).await, "replication");

    primary.kill();
    // Every read still answers, from the replica.
    for _ in 0..20 {
        assert_eq!(cache.get(&kept).await.unwrap().as_deref(), Some(&b"v"[..]));
    }
    // Writes cannot land on a replica: the invalidation fails, and from then on this
    // instance never serves the key, although the replica still holds it.
    assert!(cache.invalidate(std::slice::from_ref(&dropped)).await.is_err());
    assert!(replica_only.get(&dropped).await.unwrap().is_some());
    for _ in 0..5 {
        assert_eq!(cache.get(&dropped).await.unwrap(), None);
    }
    assert!(!cache.fill(&dropped, b"stale".to_vec(), TTL, 0).await.unwrap_or(false));

    // The primary comes back (empty); the replica resyncs, and the pending invalidation
    // is replayed without anyone asking.
    primary.restart().unwrap();
    replica.wait_replica_synced().unwrap();
    assert!(
        eventually(200, async || cache.fill(&dropped, b"fresh".to_vec(), TTL, 0).await.unwrap_or(false)).await,
        "fills resume on the restarted primary once the invalidation was replayed"
    );
    assert_eq!(cache.get(&dropped).await.unwrap().as_deref(), Some(&b"fresh"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_opens_the_breaker_and_a_restarted_one_is_used_again() {
    let what = "cache breaker";
    for kind in ["redis", "memcached"] {
        let server = if kind == "redis" { ServerProcess::redis(what, None) } else { ServerProcess::memcached(what) };
        let Some(mut server) = server else { return };
        let url = if kind == "redis" {
            format!("redis://{}", server.addr())
        } else {
            format!("memcache://{}", server.addr())
        };
        let cache = open(&url, false);
        assert!(cache.fill("k", b"v".to_vec(), TTL, 0).await.unwrap());
        server.kill();
        let mut errors = 0;
        for _ in 0..10 {
            if cache.get("k").await.is_err() {
                errors += 1;
            }
        }
        assert_eq!(errors, 10, "{kind}: a dead server answers with errors, which callers treat as misses");
        server.restart().unwrap();
        assert!(
            eventually(200, async || cache.fill("k2", b"v2".to_vec(), TTL, 0).await.is_ok()).await,
            "{kind}: not used again after restart"
        );
        assert_eq!(cache.get("k2").await.unwrap().as_deref(), Some(&b"v2"[..]), "{kind}");
    }
}

/// Two instances with an L1 each over one Redis: an invalidation on A reaches B's L1 via
/// pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_other_instances_l1() {
    let Some(server) = ServerProcess::redis("cache pub/sub", None) else { return };
    let url = format!("redis://{}", server.addr());
    let (a, b) = (open(&url, true), open(&url, true));
    for c in [&a, &b] {
        assert!(eventually(200, async || c.generation() > 0).await, "subscriber connected");
    }
    assert!(a.fill("shared", b"v1".to_vec(), TTL, a.generation()).await.unwrap());
    // B copies it into its L1 …
    assert_eq!(b.get("shared").await.unwrap().as_deref(), Some(&b"v1"[..]));
    // … and the server's copy goes away, so only B's L1 could still answer.
    let b_generation = b.generation();
    a.invalidate(&["shared".to_owned()]).await.unwrap();
    assert!(eventually(100, async || b.generation() > b_generation).await, "B heard the invalidation");
    assert_eq!(b.get("shared").await.unwrap(), None);
}

/// A tiered cache whose subscriber lost its server bypasses L1 rather than risk serving
/// entries whose invalidations it cannot hear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_is_bypassed_while_the_subscriber_is_down() {
    let Some(mut server) = ServerProcess::redis("cache subscriber down", None) else { return };
    let cache = open(&format!("redis://{}", server.addr()), true);
    assert!(eventually(200, async || cache.generation() > 0).await);
    assert!(cache.fill("k", b"v".to_vec(), TTL, cache.generation()).await.unwrap());
    assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    server.kill();
    // The L1 copy exists, but the only honest answer without the bus is "ask the server".
    assert!(eventually(100, async || cache.get("k").await.is_err()).await);
}
