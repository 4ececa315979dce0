//! The Redis deployments users run, each a private set of server processes on spare
//! loopback ports: an ACL user, TLS, Sentinel (with a failover under load) and Cluster
//! (with a master killed under load).
//!
//! "Costs no request" for a cache means: no operation comes back as an error. Strata
//! treats a cache error as a miss, so errors are what a failover would cost; the adapter
//! may retry within its per-call deadline, which these tests set generously (a failover
//! takes a second or two) — in production the deadline is 10 ms, and an operation caught
//! in the failover window is a miss instead. Reads may miss (a Sentinel failover makes an
//! instance distrust older entries); a value read is always the one written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use strata_cache::testing::{RedisCluster, ServerProcess, TestCa, raw_command};
use strata_cache::{BreakerOptions, CacheOptions};
use strata_core::ports::{Cache, NoopObserver};

use crate::conformance;

const TTL: Duration = Duration::from_secs(60);

fn open_with_deadline(url: &str, timeout: Duration) -> Arc<dyn Cache> {
    let options = CacheOptions { timeout, breaker: BreakerOptions::default(), ..CacheOptions::default() };
    strata_cache::open(url, &options, Arc::new(NoopObserver)).unwrap().unwrap()
}

/// The conformance cases that need no shared server state, on one deployment.
async fn conforms(url: &str) {
    for l1 in [false, true] {
        let cache = conformance::open(url, l1);
        conformance::settle(&cache).await;
        conformance::miss_fill_hit(cache.clone()).await;
        conformance::fill_never_overwrites(cache.clone()).await;
        conformance::late_fill_after_invalidate_is_refused(cache.clone()).await;
        conformance::invalidates_many_at_once(cache.clone()).await;
        conformance::binary_and_large_values(cache).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_a_password() {
    let what = "cache redis ACL user";
    let Some(server) = ServerProcess::redis_acl(what, "strata", "s3cret@pa:ss") else { return };
    // The password has an `@` and a `:`: percent-encoded in the URL.
    conforms(&format!("redis://strata:s3cret%40pa%3Ass@{}", server.addr())).await;
    // A wrong password is a cache that never answers, not a crash.
    let wrong = open_with_deadline(&format!("redis://strata:nope@{}", server.addr()), Duration::from_millis(500));
    assert!(wrong.get("k").await.is_err());
    assert!(wrong.fill("k", b"v".to_vec(), TTL, 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let what = "cache rediss://";
    let Some(ca) = TestCa::make(what) else { return };
    let Some(server) = ServerProcess::redis_tls(what, &ca) else { return };
    conforms(&format!("rediss://{}?ca={}", server.addr(), ca.ca.display())).await;
    // Without the CA the server's certificate is not trusted: every call fails.
    let untrusted = open_with_deadline(&format!("rediss://{}", server.addr()), Duration::from_millis(500));
    assert!(untrusted.get("k").await.is_err());
    // Nor is plain text understood by a TLS port.
    let plain = open_with_deadline(&format!("redis://{}", server.addr()), Duration::from_millis(500));
    assert!(plain.get("k").await.is_err());
}

/// Runs `tasks` loops of fill → get → (every 10th) invalidate on distinct keys until
/// `stop` is set (or 60 s, or 1,000,000 rounds each have passed), counting operations that
/// came back as errors and values that were not the ones written.
fn load(
    cache: &Arc<dyn Cache>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let errors = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    let handles = (0..tasks)
        .map(|t| {
            let (cache, stop, errors, rounds) = (cache.clone(), stop.clone(), errors.clone(), rounds.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let prefix = uuid::Uuid::new_v4().simple().to_string();
                for i in 0..1_000_000 {
                    if stop.load(Ordering::Acquire) || started.elapsed() > Duration::from_secs(60) {
                        return;
                    }
                    let k = format!("load:{prefix}:{t}:{i}");
                    let v = format!("{t}/{i}").into_bytes();
                    if let Err(e) = cache.fill(&k, v.clone(), TTL, 0).await {
                        eprintln!("fill {k}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    match cache.get(&k).await {
                        Ok(got) => assert!(got.is_none() || got == Some(v), "wrong value for {k}"),
                        Err(e) => {
                            eprintln!("get {k}: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if i % 10 == 0 {
                        if let Err(e) = cache.invalidate(std::slice::from_ref(&k)).await {
                            eprintln!("invalidate {k}: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        match cache.get(&k).await {
                            Ok(got) => assert_eq!(got, None, "{k} served after its invalidation"),
                            Err(e) => {
                                eprintln!("get {k}: {e}");
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (handles, errors, rounds)
}

/// Waits (bounded: `tries` × 50 ms) until `probe` holds.
async fn eventually(tries: usize, probe: impl Fn() -> bool) -> bool {
    for _ in 0..tries {
        if probe() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_costs_no_request() {
    let what = "cache redis sentinel failover";
    let Some(master) = ServerProcess::redis(what, None) else { return };
    let Some(replica) = ServerProcess::redis(what, Some(master.port())) else { return };
    replica.wait_replica_synced().unwrap();
    let Some(sentinel) = ServerProcess::sentinel(what, master.port()) else { return };
    let url = format!("redis+sentinel://{}/mymaster", sentinel.addr());
    conforms(&url).await;

    let cache = open_with_deadline(&url, Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, errors, rounds) = load(&cache, 4, &stop);
    assert!(eventually(200, || rounds.load(Ordering::Relaxed) >= 100).await, "load is running");

    // Sentinel learns of the replica from the master's INFO; until then it has no one
    // to promote (-NOGOODSLAVE), so ask until it agrees.
    let replica_port = replica.port().to_string();
    assert!(
        eventually(400, || sentinel.command(&["SENTINEL", "FAILOVER", "mymaster"]).is_ok_and(|r| r.starts_with("+OK")))
            .await,
        "sentinel never started the failover"
    );
    assert!(
        eventually(400, || sentinel
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
            .is_ok_and(|r| r.contains(&replica_port)))
        .await,
        "sentinel never named the replica as master"
    );
    // The old master has been told to follow the new one.
    assert!(eventually(400, || master.command(&["ROLE"]).is_ok_and(|r| r.contains("slave"))).await);
    let before = rounds.load(Ordering::Relaxed);
    assert!(eventually(400, || rounds.load(Ordering::Relaxed) >= before + 200).await, "load continued");
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "operations failed during the failover");

    // And writes now land on the new master.
    let k = format!("after-failover:{}", uuid::Uuid::new_v4().simple());
    assert!(cache.fill(&k, b"v".to_vec(), TTL, 0).await.unwrap());
    assert!(raw_command(&replica.addr(), &[b"GET", k.as_bytes()]).unwrap().is_some(), "not on the new master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_under_load_costs_no_request() {
    let what = "cache redis cluster";
    let Some(mut cluster) = RedisCluster::start(what) else { return };
    let url = cluster.url();
    conforms(&url).await;

    let cache = open_with_deadline(&url, Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, errors, rounds) = load(&cache, 4, &stop);
    assert!(eventually(200, || rounds.load(Ordering::Relaxed) >= 100).await, "load is running");

    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "three masters");
    let victim = masters[0];
    cluster.nodes[victim].kill();
    // Its replica takes over once the others agree it is gone (node timeout 1 s).
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != victim).collect();
    assert!(
        eventually(600, || cluster.masters().len() == 3
            && survivors.iter().all(|&i| cluster.nodes[i]
                .command(&["CLUSTER", "INFO"])
                .is_ok_and(|info| info.contains("cluster_state:ok"))))
        .await,
        "the cluster did not fail over"
    );
    let before = rounds.load(Ordering::Relaxed);
    assert!(eventually(400, || rounds.load(Ordering::Relaxed) >= before + 200).await, "load continued");
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "operations failed while a master was killed");
}

/// Two instances with an L1 each over one cluster: an invalidation on A reaches B's L1
/// whichever node each subscribed to (PUBLISH is cluster-wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_invalidations_reach_other_instances_l1() {
    let what = "cache redis cluster pub/sub";
    let Some(cluster) = RedisCluster::start(what) else { return };
    let seeds: Vec<String> = cluster.nodes.iter().map(|n| n.addr()).collect();
    // Different first seeds, so the two subscribers likely sit on different nodes.
    let a = conformance::open(&format!("redis+cluster://{}", seeds.join(",")), true);
    let b = conformance::open(
        &format!("redis+cluster://{}", seeds.iter().rev().cloned().collect::<Vec<_>>().join(",")),
        true,
    );
    conformance::settle(&a).await;
    conformance::settle(&b).await;
    assert!(a.fill("shared", b"v1".to_vec(), TTL, a.generation()).await.unwrap());
    assert_eq!(b.get("shared").await.unwrap().as_deref(), Some(&b"v1"[..]));
    let b_generation = b.generation();
    a.invalidate(&["shared".to_owned()]).await.unwrap();
    let mut heard = false;
    for _ in 0..100 {
        if b.generation() > b_generation {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heard, "B heard the invalidation");
    assert_eq!(b.get("shared").await.unwrap(), None);
}
