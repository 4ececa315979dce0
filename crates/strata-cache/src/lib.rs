//! Strata's cache adapters, behind strata-core's byte-level [`Cache`] port, chosen by URL:
//!
//! | URL | adapter |
//! |---|---|
//! | `memory://[?entries=N&mb=N]` | in-process W-TinyLFU ([`memory`], [`tinylfu`]); the embedded default |
//! | `redis://[[USER]:PASSWORD@]HOST:PORT[?replica=HOST:PORT…]` | Redis primary with read fallback to replicas, pub/sub invalidation ([`redis`]) |
//! | `memcache://HOST:PORT[,HOST:PORT…]` | Memcached servers on a consistent-hash ring ([`memcache`]) |
//! | `none://` | no cache at all (benchmark baseline) |
//!
//! With an L1 spec (`STRATA_CACHE_L1=entries=…,mb=…,ttl_ms=…`) a Redis or Memcached cache
//! gets an in-process tier in front ([`tiered`]). Remote calls run under a per-call
//! deadline and a circuit breaker per server ([`endpoint`], [`breaker`]); invalidations
//! that fail are replayed and meanwhile shielded ([`shield`]).
//!
//! Architecture invariant: this crate knows bytes and servers, not the domain: what is
//! cached, under which key and when it is invalidated is strata-core's business. It does
//! not depend on HTTP, SQL or a metrics library (events go to a `CacheObserver`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use strata_core::ports::{Cache, CacheObserver};

pub mod breaker;
pub mod bus;
pub mod counters;
pub mod endpoint;
pub mod memcache;
pub mod memory;
pub mod redis;
pub mod resp;
pub mod shield;
pub mod tiered;
pub mod tinylfu;

#[cfg(feature = "testing")]
pub mod testing;

pub use breaker::BreakerOptions;
pub use memory::{MemoryCache, MemoryOptions};
pub use tiered::Tiered;

/// Settings shared by the adapters.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheOptions {
    /// Deadline of one remote call, connecting included.
    pub timeout: Duration,
    pub breaker: BreakerOptions,
    /// How long an invalidation's tombstone blocks fills of its key in a shared tier: it
    /// must outlast the slowest read-then-fill (database timeout + cache timeouts).
    pub tombstone_ttl: Duration,
    /// Redis pub/sub channel for L1 invalidations.
    pub channel: String,
    /// In-process tier in front of Redis/Memcached; `None` = L2 only.
    pub l1: Option<L1Options>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            timeout: Duration::from_millis(10),
            breaker: BreakerOptions::default(),
            tombstone_ttl: Duration::from_secs(10),
            channel: "strata:cache:invalidate".into(),
            l1: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1Options {
    pub entries: usize,
    pub bytes: usize,
    /// Upper bound on an L1 entry's life: the staleness bound when a broadcast is missed.
    pub ttl: Duration,
}

impl Default for L1Options {
    fn default() -> Self {
        L1Options { entries: 100_000, bytes: 64 << 20, ttl: Duration::from_secs(5) }
    }
}

impl L1Options {
    /// `off` (or empty) → `None`; otherwise comma-separated `entries=N`, `mb=N`,
    /// `ttl_ms=N`, each optional (defaults: 100000, 64, 5000).
    pub fn parse(spec: &str) -> Result<Option<L1Options>, String> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "off" || spec == "none" {
            return Ok(None);
        }
        let mut l1 = L1Options::default();
        for part in spec.split(',') {
            let (name, value) = part.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {part:?}"))?;
            let n: u64 = value.trim().parse().map_err(|_| format!("{name}: not a number: {value:?}"))?;
            if n == 0 {
                return Err(format!("{name} must be positive"));
            }
            match name.trim() {
                "entries" => l1.entries = n as usize,
                "mb" => l1.bytes = (n as usize).saturating_mul(1 << 20),
                "ttl_ms" => l1.ttl = Duration::from_millis(n),
                other => return Err(format!("unknown L1 setting {other:?} (expected entries, mb, ttl_ms)")),
            }
        }
        Ok(Some(l1))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: strata_core::secret::Secret,
}

/// A parsed cache URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    None,
    Memory(MemoryOptions),
    Redis { primary: String, replicas: Vec<String>, credentials: Option<Credentials> },
    Memcache { servers: Vec<String> },
}

fn host_port(raw: &str, what: &str) -> Result<String, String> {
    let (host, port) = raw.rsplit_once(':').ok_or_else(|| format!("{what} must be HOST:PORT, got {raw:?}"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{what} must be HOST:PORT, got {raw:?}"));
    }
    Ok(raw.to_owned())
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("not a URL: {url:?}"))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let params: Vec<(&str, &str)> =
            query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
        match scheme {
            "none" => Ok(Target::None),
            "memory" => {
                let mut options = MemoryOptions::default();
                for (name, value) in params {
                    let n: usize = value.parse().map_err(|_| format!("memory://: {name} is not a number"))?;
                    match name {
                        "entries" if n > 0 => options.max_entries = n,
                        "mb" if n > 0 => options.max_bytes = n.saturating_mul(1 << 20),
                        _ => return Err(format!("memory://: unknown or zero parameter {name:?} (entries, mb)")),
                    }
                }
                Ok(Target::Memory(options))
            }
            "redis" => {
                let (userinfo, host) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, authority),
                };
                let credentials = match userinfo {
                    None => None,
                    Some(u) => {
                        let (user, password) = u
                            .split_once(':')
                            .ok_or_else(|| "redis://: credentials must be USER:PASSWORD@ or :PASSWORD@".to_owned())?;
                        Some(Credentials {
                            user: Some(user.to_owned()).filter(|u| !u.is_empty()),
                            password: strata_core::secret::Secret::new(password),
                        })
                    }
                };
                let primary = host_port(host, "redis primary")?;
                let mut replicas = Vec::new();
                for (name, value) in params {
                    match name {
                        "replica" => replicas.push(host_port(value, "replica")?),
                        _ => return Err(format!("redis://: unknown parameter {name:?} (replica)")),
                    }
                }
                Ok(Target::Redis { primary, replicas, credentials })
            }
            "memcache" | "memcached" => {
                if !params.is_empty() {
                    return Err("memcache://: takes no parameters".into());
                }
                let servers = authority
                    .split(',')
                    .map(|s| host_port(s.trim(), "memcached server"))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Target::Memcache { servers })
            }
            other => Err(format!("unknown cache scheme {other:?} (memory, redis, memcache, none)")),
        }
    }
}

/// Opens the cache a URL names; `None` for `none://`. Never connects eagerly: a cache
/// server that is down at startup is just a degraded cache.
/// Shared throttle counters for `throttle.url`: empty means per instance (`None`); a
/// `redis://` URL (replicas are not used: counting needs the primary) means shared.
pub fn open_counters(
    url: &str,
    options: &CacheOptions,
    observer: Arc<dyn CacheObserver>,
) -> Result<Option<Arc<dyn strata_core::throttle::SharedCounters>>, String> {
    if url.trim().is_empty() {
        return Ok(None);
    }
    match Target::parse(url)? {
        Target::Redis { primary, credentials, .. } => Ok(Some(Arc::new(counters::RedisCounters::new(
            &primary,
            &credentials,
            options.timeout,
            options.breaker,
            observer,
        )))),
        _ => Err("must be a redis:// URL, or empty for per-instance counters".into()),
    }
}

pub fn open(
    url: &str,
    options: &CacheOptions,
    observer: Arc<dyn CacheObserver>,
) -> Result<Option<Arc<dyn Cache>>, String> {
    open_with_bus(url, options, observer, None)
}

/// As [`open`]; `bus` (if any) carries L1 invalidations between instances for a shared
/// tier that has no broadcast of its own (Memcached with an L1, see [`bus`]).
pub fn open_with_bus(
    url: &str,
    options: &CacheOptions,
    observer: Arc<dyn CacheObserver>,
    bus: Option<Arc<dyn strata_core::ports::EventBus>>,
) -> Result<Option<Arc<dyn Cache>>, String> {
    let l1 = |observer: Arc<dyn CacheObserver>| {
        options.l1.map(|l1| {
            let memory = MemoryOptions { max_entries: l1.entries, max_bytes: l1.bytes, max_ttl: Some(l1.ttl) };
            (Arc::new(MemoryCache::new(memory, observer)), l1.ttl)
        })
    };
    let instance_id = uuid::Uuid::new_v4().simple().to_string();
    let cache: Arc<dyn Cache> = match Target::parse(url)? {
        Target::None => return Ok(None),
        Target::Memory(memory) => Arc::new(MemoryCache::new(memory, observer)),
        Target::Redis { primary, replicas, credentials } => {
            let redis = redis::RedisCache::new(
                &primary,
                &replicas,
                &credentials,
                options,
                instance_id.clone(),
                observer.clone(),
            );
            match l1(observer.clone()) {
                None => redis,
                Some((memory, ttl)) => {
                    let subscribed = Arc::new(AtomicBool::new(false));
                    let mut addrs = vec![primary];
                    addrs.extend(replicas);
                    redis::spawn_subscriber(
                        addrs,
                        credentials,
                        options.channel.clone(),
                        instance_id,
                        Arc::downgrade(&memory),
                        subscribed.clone(),
                        options.timeout.max(Duration::from_millis(500)),
                        observer,
                    );
                    Arc::new(Tiered::new(memory, redis, ttl, Some(subscribed)))
                }
            }
        }
        Target::Memcache { servers } => {
            let memcache = memcache::MemcacheCache::new(&servers, options, observer.clone());
            match (l1(observer.clone()), bus) {
                (None, _) => memcache,
                (Some((memory, ttl)), None) => Arc::new(Tiered::new(memory, memcache, ttl, None)),
                (Some((memory, ttl)), Some(bus)) => {
                    let subscribed = Arc::new(AtomicBool::new(false));
                    bus::spawn_subscriber(
                        bus.clone(),
                        instance_id.clone(),
                        Arc::downgrade(&memory),
                        subscribed.clone(),
                        observer,
                    );
                    let broadcast = bus::BusBroadcast::new(bus, instance_id, ttl);
                    Arc::new(Tiered::new(memory, memcache, ttl, Some(subscribed)).with_broadcast(broadcast))
                }
            }
        }
    };
    Ok(Some(cache))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_is_wrong() {
        assert_eq!(Target::parse("none://").unwrap(), Target::None);
        assert!(matches!(Target::parse("memory://").unwrap(), Target::Memory(m) if m == MemoryOptions::default()));
        assert!(matches!(Target::parse("memory://?entries=10&mb=2").unwrap(),
            Target::Memory(m) if m.max_entries == 10 && m.max_bytes == 2 << 20));
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379?replica=127.0.0.1:6380&replica=127.0.0.1:6381").unwrap(),
            Target::Redis {
                primary: "127.0.0.1:6379".into(),
                replicas: vec!["127.0.0.1:6380".into(), "127.0.0.1:6381".into()],
                credentials: None
            }
        );
        assert!(matches!(
            Target::parse("redis://:pw@h:1").unwrap(),
            Target::Redis { credentials: Some(Credentials { user: None, .. }), .. }
        ));
        assert_eq!(
            Target::parse("memcache://a:1,b:2").unwrap(),
            Target::Memcache { servers: vec!["a:1".into(), "b:2".into()] }
        );
        for (bad, needle) in [
            ("redis://nohost", "HOST:PORT"),
            ("redis://h:1?replica=x", "replica"),
            ("redis://h:1?foo=1", "foo"),
            ("memcache://a:1,b", "memcached server"),
            ("memory://?entries=0", "entries"),
            ("ftp://x", "ftp"),
            ("nothing", "not a URL"),
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn l1_spec() {
        assert_eq!(L1Options::parse("off").unwrap(), None);
        assert_eq!(L1Options::parse("").unwrap(), None);
        let l1 = L1Options::parse("entries=500, mb=8,ttl_ms=2000").unwrap().unwrap();
        assert_eq!(l1, L1Options { entries: 500, bytes: 8 << 20, ttl: Duration::from_secs(2) });
        assert!(L1Options::parse("entries=x").is_err());
        assert!(L1Options::parse("size=1").unwrap_err().contains("size"));
        assert!(L1Options::parse("ttl_ms=0").is_err());
    }
}
