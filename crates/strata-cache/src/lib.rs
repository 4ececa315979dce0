//! Strata's cache adapters, behind strata-core's byte-level [`Cache`] port, chosen by URL:
//!
//! | URL | adapter |
//! |---|---|
//! | `memory://[?entries=N&mb=N]` | in-process W-TinyLFU ([`memory`], [`tinylfu`]); the embedded default |
//! | `redis://[[USER]:PASSWORD@]HOST:PORT[?replica=HOST:PORT…]` | Redis primary with read fallback to replicas, pub/sub invalidation ([`redis`]) |
//! | `rediss://…[?ca=PEM_FILE]` | the same over TLS, verified against the system roots (or the CA in `PEM_FILE`) |
//! | `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME` | the master Sentinel names, found again after a failover; reads fall back to a replica (credentials are the data nodes'; Sentinels are asked without) |
//! | `redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…]`, `rediss+cluster://…` | Redis Cluster: keys routed to their slot's master, failovers followed |
//! | `memcache://HOST:PORT[,HOST:PORT…]` | Memcached servers on a consistent-hash ring ([`memcache`]) |
//! | `none://` | no cache at all (benchmark baseline) |
//!
//! With an L1 spec (`STRATA_CACHE_L1=entries=…,mb=…,ttl_ms=…`) a Redis or Memcached cache
//! gets an in-process tier in front ([`tiered`]). Remote calls run under a per-call
//! deadline and a circuit breaker per server ([`node`] for Redis, on redis-rs multiplexed
//! connections; [`endpoint`] for Memcached; [`breaker`]); invalidations
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
pub mod node;
pub mod positions;
pub mod redis;
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

/// How a Redis deployment is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One primary (writes and reads) and read-fallback replicas.
    Single { primary: String, replicas: Vec<String> },
    /// The master the Sentinels name `master`.
    Sentinel { sentinels: Vec<String>, master: String },
    /// A Redis Cluster, discovered from any of these nodes.
    Cluster { nodes: Vec<String> },
}

/// TLS for `rediss…` URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file of the CA(s) to trust instead of the system roots.
    pub ca: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    pub topology: RedisTopology,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsOptions>,
}

/// For logs and `describe`: the addresses, never the credentials.
impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = if self.tls.is_some() { " (TLS)" } else { "" };
        match &self.topology {
            RedisTopology::Single { primary, replicas } => {
                let replicas = if replicas.is_empty() { "none".to_owned() } else { replicas.join(", ") };
                write!(f, "redis {primary}{tls} (replicas: {replicas})")
            }
            RedisTopology::Sentinel { sentinels, master } => {
                write!(f, "redis sentinel master {master}{tls} (sentinels: {})", sentinels.join(", "))
            }
            RedisTopology::Cluster { nodes } => write!(f, "redis cluster{tls} (seeds: {})", nodes.join(", ")),
        }
    }
}

/// A parsed cache URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    None,
    Memory(MemoryOptions),
    Redis(RedisTarget),
    Memcache { servers: Vec<String> },
}

/// `%XX` escapes in URL credentials (a password may contain `@`, `:` or `/`).
fn percent_decode(raw: &str, what: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or_else(|| format!("{what}: incomplete %-escape"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("{what}: bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what}: not UTF-8 once decoded"))
}

fn parse_redis(scheme: &str, authority: &str, params: Vec<(&str, &str)>) -> Result<RedisTarget, String> {
    let (base, tls) = match scheme.strip_prefix("rediss") {
        Some(rest) => (format!("redis{rest}"), Some(TlsOptions::default())),
        None => (scheme.to_owned(), None),
    };
    let (userinfo, rest) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let credentials = match userinfo {
        None => None,
        Some(u) => {
            let (user, password) = u
                .split_once(':')
                .ok_or_else(|| format!("{scheme}://: credentials must be USER:PASSWORD@ or :PASSWORD@"))?;
            Some(Credentials {
                user: Some(percent_decode(user, "user")?).filter(|u| !u.is_empty()),
                password: strata_core::secret::Secret::new(percent_decode(password, "password")?),
            })
        }
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let servers = |what: &str| hosts.split(',').map(|s| host_port(s.trim(), what)).collect::<Result<Vec<_>, _>>();
    let mut replicas = Vec::new();
    let mut tls = tls;
    for (name, value) in params {
        match (name, &mut tls) {
            ("replica", _) if base == "redis" => replicas.push(host_port(value, "replica")?),
            ("ca", Some(tls)) if !value.is_empty() => tls.ca = Some(value.to_owned()),
            _ => {
                let known = match (base.as_str(), tls.is_some()) {
                    ("redis", true) => "replica, ca",
                    ("redis", false) => "replica",
                    (_, true) => "ca",
                    (_, false) => "none",
                };
                return Err(format!("{scheme}://: unknown parameter {name:?} (known: {known})"));
            }
        }
    }
    let topology = match base.as_str() {
        "redis" => {
            if !path.is_empty() || hosts.contains(',') {
                return Err(format!("{scheme}://: expected one HOST:PORT (replicas go in ?replica=)"));
            }
            RedisTopology::Single { primary: host_port(hosts, "redis primary")?, replicas }
        }
        "redis+sentinel" => {
            if tls.is_some() {
                return Err("rediss+sentinel:// is not supported yet (TLS to Sentinel-managed servers)".into());
            }
            if path.is_empty() || path.contains('/') {
                return Err(format!("{scheme}://: expected HOST:PORT[,HOST:PORT…]/MASTER_NAME"));
            }
            RedisTopology::Sentinel { sentinels: servers("sentinel")?, master: path.to_owned() }
        }
        "redis+cluster" => {
            if !path.is_empty() {
                return Err(format!(
                    "{scheme}://: expected HOST:PORT[,HOST:PORT…] (no path: a cluster has one database)"
                ));
            }
            RedisTopology::Cluster { nodes: servers("cluster node")? }
        }
        _ => return Err(format!("unknown cache scheme {scheme:?}")),
    };
    Ok(RedisTarget { topology, credentials, tls })
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
            "redis" | "rediss" | "redis+sentinel" | "redis+cluster" | "rediss+cluster" | "rediss+sentinel" => {
                Ok(Target::Redis(parse_redis(scheme, authority, params)?))
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
            other => Err(format!(
                "unknown cache scheme {other:?} (memory, redis, rediss, redis+sentinel, redis+cluster, memcache, none)"
            )),
        }
    }
}

/// Shared throttle counters for `throttle.url`: empty means per instance (`None`); a
/// `redis://`, `rediss://` or `redis+sentinel://` URL (replicas are not used: counting
/// needs the primary) means shared.
pub fn open_counters(
    url: &str,
    options: &CacheOptions,
    observer: Arc<dyn CacheObserver>,
) -> Result<Option<Arc<dyn strata_core::throttle::SharedCounters>>, String> {
    if url.trim().is_empty() {
        return Ok(None);
    }
    match Target::parse(url)? {
        Target::Redis(target) => {
            Ok(Some(Arc::new(counters::RedisCounters::new(&target, options.timeout, options.breaker, observer)?)))
        }
        _ => Err("must be a redis:// URL, or empty for per-instance counters".into()),
    }
}

/// The read-your-writes position board in the Redis `url` names (see [`positions`]).
pub fn open_positions(
    url: &str,
    options: &CacheOptions,
    observer: Arc<dyn CacheObserver>,
) -> Result<Arc<dyn strata_core::ports::PositionBoard>, String> {
    match Target::parse(url)? {
        Target::Redis(target) => {
            Ok(Arc::new(positions::RedisPositions::new(&target, options.timeout, options.breaker, observer)?))
        }
        _ => Err("the position board must be in Redis (a redis:// URL)".into()),
    }
}

/// Opens the cache a URL names; `None` for `none://`. Never connects eagerly: a cache
/// server that is down at startup is just a degraded cache.
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
        Target::Redis(target) => {
            let redis = redis::RedisCache::new(&target, options, instance_id.clone(), observer.clone())?;
            match l1(observer.clone()) {
                None => redis,
                Some((memory, ttl)) => {
                    let subscribed = Arc::new(AtomicBool::new(false));
                    redis::spawn_subscriber(
                        redis::SubscribeTo::of(&target)?,
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
        let single = |primary: &str, replicas: &[&str]| RedisTopology::Single {
            primary: primary.into(),
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
        };
        let redis = |url: &str| match Target::parse(url) {
            Ok(Target::Redis(target)) => target,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(
            redis("redis://127.0.0.1:6379?replica=127.0.0.1:6380&replica=127.0.0.1:6381"),
            RedisTarget {
                topology: single("127.0.0.1:6379", &["127.0.0.1:6380", "127.0.0.1:6381"]),
                credentials: None,
                tls: None
            }
        );
        assert!(matches!(redis("redis://:pw@h:1/").credentials, Some(Credentials { user: None, .. })));
        let acl = redis("redis://app:p%40ss%3Aw0rd@h:1");
        let credentials = acl.credentials.clone().unwrap();
        assert_eq!((credentials.user.as_deref(), credentials.password.expose()), (Some("app"), "p@ss:w0rd"));
        let tls = redis("rediss://u:p@cache.example.com:6380?ca=/etc/ssl/redis-ca.pem");
        assert_eq!(tls.topology, single("cache.example.com:6380", &[]));
        assert_eq!(tls.tls, Some(TlsOptions { ca: Some("/etc/ssl/redis-ca.pem".into()) }));
        assert_eq!(redis("rediss://h:1").tls, Some(TlsOptions { ca: None }));
        assert_eq!(
            redis("redis+sentinel://s1:26379,s2:26379/mymaster").topology,
            RedisTopology::Sentinel {
                sentinels: vec!["s1:26379".into(), "s2:26379".into()],
                master: "mymaster".into()
            }
        );
        assert!(redis("redis+sentinel://u:p@s1:26379/m").credentials.is_some());
        assert_eq!(
            redis("redis+cluster://a:7000,b:7001,c:7002").topology,
            RedisTopology::Cluster { nodes: vec!["a:7000".into(), "b:7001".into(), "c:7002".into()] }
        );
        assert!(redis("rediss+cluster://a:7000?ca=/ca.pem").tls.is_some());
        // What logs show: addresses, never the password.
        assert_eq!(acl.to_string(), "redis h:1 (replicas: none)");
        assert!(!format!("{:?}", Target::parse("redis://app:hunter2@h:1")).contains("hunter2"));
        assert_eq!(
            Target::parse("memcache://a:1,b:2").unwrap(),
            Target::Memcache { servers: vec!["a:1".into(), "b:2".into()] }
        );
        for (bad, needle) in [
            ("redis://nohost", "HOST:PORT"),
            ("redis://h:1?replica=x", "replica"),
            ("redis://h:1?foo=1", "foo"),
            ("redis://h:1?ca=/x.pem", "\"ca\""),
            ("redis://h:1/0", "one HOST:PORT"),
            ("redis://a:1,b:2", "one HOST:PORT"),
            ("redis://user@h:1", "USER:PASSWORD@"),
            ("redis://:p%4@h:1", "escape"),
            ("redis+sentinel://s:26379", "MASTER_NAME"),
            ("redis+sentinel://s:26379,t/m", "sentinel"),
            ("redis+sentinel://s:1/m?replica=r:2", "replica"),
            ("rediss+sentinel://s:1/m", "not supported"),
            ("redis+cluster://a:1,b:x", "cluster node"),
            ("redis+cluster://a:1/0", "no path"),
            ("redis+bogus://a:1", "redis+bogus"),
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
