//! Redis adapter, on redis-rs multiplexed connections ([`crate::node`]). The URL forms
//! are in the crate docs; what each topology does:
//!
//! - **One primary** (`redis://`, `rediss://`): reads go to the primary and fall back to
//!   each `replica=` in turn when it fails or its breaker is open. Fills (`SET … PX ttl
//!   NX`) and invalidations (one pipeline of tombstone `SET … PX`s and a `PUBLISH`) go to
//!   the primary only: replicas are read-only.
//! - **Sentinel** (`redis+sentinel://`): the primary is whichever master Sentinel names;
//!   a connection that breaks or meets `READONLY` (a demoted master) is replaced by one to
//!   the master Sentinel names then, and the call is tried once more on it. Reads fall back
//!   to a replica Sentinel names. Replication is asynchronous, so writes acknowledged by
//!   the old master just before a failover may be lost — invalidations among them. So when
//!   Sentinel names a different master, this instance distrusts every entry written before
//!   that moment ([`Shield::distrust_now`]): slower for a while, never stale.
//! - **Cluster** (`redis+cluster://`): redis-rs routes each key to its slot's master,
//!   follows `MOVED`/`ASK` and retries while a failed master's replica takes over (within
//!   the per-call deadline). An invalidation's tombstones may live on several masters, so
//!   they are sent as separate commands, all acknowledged before the `PUBLISH`, which the
//!   cluster delivers to subscribers on every node. No replica reads: a replica may lag
//!   behind a tombstone.
//!
//! Invalidations are published on a channel so every instance drops the keys from its L1
//! ([`spawn_subscriber`]). Redis replicates `PUBLISH` to replicas, so a subscriber that had
//! to fall back to a replica still hears them.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisResult, Value};
use strata_core::ports::{Cache, CacheError, CacheObserver};

use crate::memory::MemoryCache;
use crate::node::{Conn, Node, Source};
use crate::shield::{self, Shield};
use crate::{BreakerOptions, CacheOptions, RedisTarget, RedisTopology};

/// `host:port` (or `[v6]:port`) as redis-rs wants it.
fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr}: not HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{addr}: bad port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

fn redis_settings(target: &RedisTarget) -> RedisConnectionInfo {
    let mut settings = RedisConnectionInfo::default();
    if let Some(c) = &target.credentials {
        if let Some(user) = &c.user {
            settings = settings.set_username(user);
        }
        settings = settings.set_password(c.password.expose());
    }
    settings
}

/// The CA file's PEM, read once at open so a bad path fails startup, not every connect.
fn root_cert(target: &RedisTarget) -> Result<Option<Vec<u8>>, String> {
    match target.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        None => Ok(None),
        Some(path) => std::fs::read(path).map(Some).map_err(|e| format!("ca={path}: {e}")),
    }
}

/// A client for one server of `target` (credentials, TLS).
pub(crate) fn client(target: &RedisTarget, addr: &str) -> Result<redis::Client, String> {
    let (host, port) = split_host_port(addr)?;
    let address = match target.tls {
        None => ConnectionAddr::Tcp(host, port),
        Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
    };
    let info =
        address.into_connection_info().map_err(|e| format!("{addr}: {e}"))?.set_redis_settings(redis_settings(target));
    let client = match root_cert(target)? {
        None => redis::Client::open(info),
        Some(pem) => {
            redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
        }
    };
    client.map_err(|e| format!("{addr}: {e}"))
}

fn sentinel_client(
    target: &RedisTarget,
    sentinels: &[String],
    master: &str,
    server_type: SentinelServerType,
) -> Result<SentinelClient, String> {
    let mut infos: Vec<ConnectionInfo> = Vec::new();
    for s in sentinels {
        let (host, port) = split_host_port(s)?;
        infos.push(ConnectionAddr::Tcp(host, port).into_connection_info().map_err(|e| format!("{s}: {e}"))?);
    }
    // The credentials are the data nodes'; Sentinels are asked without (most run without).
    let nodes = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_settings(target));
    SentinelClient::build(infos, master, Some(nodes), server_type).map_err(|e| format!("sentinel: {e}"))
}

fn cluster_client(
    target: &RedisTarget,
    nodes: &[String],
    timeout: Duration,
) -> Result<redis::cluster::ClusterClient, String> {
    let mut infos: Vec<ConnectionInfo> = Vec::new();
    for n in nodes {
        let (host, port) = split_host_port(n)?;
        let address = match target.tls {
            None => ConnectionAddr::Tcp(host, port),
            Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        };
        infos.push(address.into_connection_info().map_err(|e| format!("{n}: {e}"))?);
    }
    let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // redis-rs's defaults wait over a second between retries; a cache call must end
        // within its deadline, so retry quickly and let the deadline cut it off.
        .retries(16)
        .min_retry_wait(10)
        .max_retry_wait(250);
    if let Some(c) = &target.credentials {
        if let Some(user) = &c.user {
            builder = builder.username(user);
        }
        builder = builder.password(c.password.expose());
    }
    if target.tls.is_some() {
        builder = builder.tls(redis::TlsMode::Secure);
        if let Some(pem) = root_cert(target)? {
            builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem) });
        }
    }
    builder.build().map_err(|e| format!("cluster: {e}"))
}

/// The one primary node of a target, for scripts whose keys must all live on one server
/// (`what` names them in the error): a cluster is refused, replicas are not used.
pub(crate) fn single_primary(
    target: &RedisTarget,
    purpose: &str,
    what: &str,
    timeout: Duration,
    breaker: BreakerOptions,
    observer: &Arc<dyn CacheObserver>,
) -> Result<Node, String> {
    if matches!(target.topology, crate::RedisTopology::Cluster { .. }) {
        return Err(format!("{what} need one primary: use redis://, rediss:// or redis+sentinel://, not a cluster"));
    }
    Ok(nodes(target, purpose, timeout, breaker, observer)?.0)
}

/// The primary (writes and first reads) and the read fallbacks of `target`.
pub(crate) fn nodes(
    target: &RedisTarget,
    purpose: &str,
    timeout: Duration,
    breaker: BreakerOptions,
    observer: &Arc<dyn CacheObserver>,
) -> Result<(Node, Vec<Node>), String> {
    let node = |label: String, source| Node::new(label, source, timeout, breaker, observer.clone());
    Ok(match &target.topology {
        RedisTopology::Single { primary, replicas } => (
            node(format!("redis {purpose}primary {primary}"), Source::Fixed(client(target, primary)?)),
            replicas
                .iter()
                .map(|r| Ok(node(format!("redis {purpose}replica {r}"), Source::Fixed(client(target, r)?))))
                .collect::<Result<_, String>>()?,
        ),
        RedisTopology::Sentinel { sentinels, master } => {
            let source = |kind| sentinel_client(target, sentinels, master, kind).map(tokio::sync::Mutex::new);
            (
                node(
                    format!("redis {purpose}sentinel master {master}"),
                    Source::Sentinel(source(SentinelServerType::Master)?),
                ),
                vec![node(
                    format!("redis {purpose}sentinel replica {master}"),
                    Source::Sentinel(source(SentinelServerType::Replica)?),
                )],
            )
        }
        RedisTopology::Cluster { nodes } => (
            node(
                format!("redis {purpose}cluster {}", nodes.join(",")),
                Source::Cluster(cluster_client(target, nodes, timeout)?),
            ),
            Vec::new(),
        ),
    })
}

pub struct RedisCache {
    primary: Node,
    replicas: Vec<Node>,
    described: String,
    shield: Arc<Shield>,
    tombstone_ttl: Duration,
    channel: String,
    instance_id: String,
    observer: Arc<dyn CacheObserver>,
}

impl RedisCache {
    pub fn new(
        target: &RedisTarget,
        options: &CacheOptions,
        instance_id: String,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Arc<Self>, String> {
        let (primary, replicas) = nodes(target, "", options.timeout, options.breaker, &observer)?;
        let cache = Arc::new(RedisCache {
            primary,
            replicas,
            described: target.to_string(),
            shield: Arc::new(Shield::default()),
            tombstone_ttl: options.tombstone_ttl,
            channel: options.channel.clone(),
            instance_id,
            observer,
        });
        shield::spawn_replayer(Arc::downgrade(&cache), cache.shield.clone(), Duration::from_millis(100));
        Ok(cache)
    }

    pub fn primary(&self) -> &Node {
        &self.primary
    }

    pub fn replicas(&self) -> &[Node] {
        &self.replicas
    }

    /// After Sentinel named a new master, entries from before may have outlived an
    /// invalidation the old master acknowledged and lost.
    fn check_switch(&self) {
        if self.primary.take_switched() {
            tracing::warn!("redis master changed; distrusting entries written before the failover");
            self.shield.distrust_now();
        }
    }

    async fn get_from(node: &Node, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let get = &redis::cmd("GET").arg(key).clone();
        node.call(|mut conn: Conn| async move { get.query_async::<Option<Vec<u8>>>(&mut conn).await }).await
    }

    async fn tombstones(&self, conn: &mut Conn, keys: &[String], message: &str) -> RedisResult<()> {
        let tomb = shield::tombstone();
        let ttl = ms(self.tombstone_ttl);
        if self.primary.is_cluster() {
            // Keys of one invalidation hash to different slots (masters), and a pipeline
            // goes to one node: send them side by side on the cluster connection.
            let sets = keys.iter().map(|k| {
                let mut conn = conn.clone();
                let set = redis::cmd("SET").arg(k).arg(&tomb).arg("PX").arg(ttl).clone();
                async move { set.query_async::<()>(&mut conn).await }
            });
            futures_util::future::try_join_all(sets).await?;
            return redis::cmd("PUBLISH").arg(&self.channel).arg(message).query_async::<()>(conn).await;
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("SET").arg(k).arg(&tomb).arg("PX").arg(ttl).ignore();
        }
        pipe.cmd("PUBLISH").arg(&self.channel).arg(message).ignore();
        pipe.query_async::<()>(conn).await
    }
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[async_trait]
impl Cache for RedisCache {
    fn available(&self) -> bool {
        !self.primary.is_open() || self.replicas.iter().any(|r| !r.is_open())
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    /// Fill races are settled by tombstones and `NX` in Redis itself.
    fn generation(&self) -> u64 {
        0
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        if self.shield.is_pending(key) {
            self.observer.tier("l2", "get", "miss");
            return Ok(None);
        }
        let mut result = Self::get_from(&self.primary, key).await;
        if result.is_err() {
            for replica in &self.replicas {
                result = Self::get_from(replica, key).await;
                if result.is_ok() {
                    break;
                }
            }
        }
        self.check_switch();
        self.shield.finish_get(key, result, &*self.observer)
    }

    async fn fill(&self, key: &str, value: Vec<u8>, ttl: Duration, _generation: u64) -> Result<bool, CacheError> {
        if self.shield.is_pending(key) {
            self.observer.tier("l2", "fill", "skipped");
            return Ok(false);
        }
        let set = &redis::cmd("SET").arg(key).arg(shield::wrap(&value)).arg("PX").arg(ms(ttl)).arg("NX").clone();
        let stored = self
            .primary
            .call(|mut conn: Conn| async move {
                // `+OK` when stored; nil when the key exists (a tombstone or an earlier fill).
                Ok(!matches!(set.query_async::<Value>(&mut conn).await?, Value::Nil))
            })
            .await;
        self.check_switch();
        shield::count_fill(&stored, &*self.observer);
        stored
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut message = self.instance_id.clone();
        for k in keys {
            message.push('\n');
            message.push_str(k);
        }
        let message = &message;
        let done =
            self.primary.call(|mut conn: Conn| async move { self.tombstones(&mut conn, keys, message).await }).await;
        self.check_switch();
        match &done {
            Ok(()) => self.observer.tier("l2", "invalidate", "ok"),
            Err(e) => {
                self.observer.tier("l2", "invalidate", "error");
                tracing::warn!(error = %e, keys = keys.len(), "redis invalidation failed; replaying until it lands");
                self.shield.failed(keys);
            }
        }
        done
    }
}

/// Where the subscriber connects: fixed servers in turn, or whatever Sentinel names.
pub enum SubscribeTo {
    Servers(Vec<redis::Client>),
    Sentinel(Box<SentinelClient>),
}

impl SubscribeTo {
    /// Every server of `target` that carries the invalidation channel: the primary and
    /// replicas (PUBLISH is replicated), any cluster node (PUBLISH is cluster-wide), or
    /// the current master.
    pub fn of(target: &RedisTarget) -> Result<SubscribeTo, String> {
        Ok(match &target.topology {
            RedisTopology::Single { primary, replicas } => SubscribeTo::Servers(
                std::iter::once(primary).chain(replicas).map(|a| client(target, a)).collect::<Result<_, _>>()?,
            ),
            RedisTopology::Cluster { nodes } => {
                SubscribeTo::Servers(nodes.iter().map(|a| client(target, a)).collect::<Result<_, _>>()?)
            }
            RedisTopology::Sentinel { sentinels, master } => {
                SubscribeTo::Sentinel(Box::new(sentinel_client(target, sentinels, master, SentinelServerType::Master)?))
            }
        })
    }

    async fn client(&mut self, turn: usize) -> RedisResult<redis::Client> {
        match self {
            SubscribeTo::Servers(clients) => clients
                .get(turn % clients.len().max(1))
                .cloned()
                .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, "no servers"))),
            SubscribeTo::Sentinel(sentinel) => sentinel.async_get_client().await,
        }
    }
}

/// Listens for invalidations published by any instance and drops those keys from `l1`.
///
/// `connected` is true only while subscribed: an L1 that might miss invalidations must not
/// be used, so the tiered cache bypasses it meanwhile, and it is cleared on every
/// (re)subscription because messages sent while we were away are lost (Redis pub/sub is
/// at-most-once). A silent connection is detected by pinging after every quiet second and
/// giving up after three unanswered pings. The task ends when `l1` is dropped.
pub fn spawn_subscriber(
    mut to: SubscribeTo,
    channel: String,
    instance_id: String,
    l1: Weak<MemoryCache>,
    connected: Arc<AtomicBool>,
    connect_timeout: Duration,
    observer: Arc<dyn CacheObserver>,
) {
    tokio::spawn(async move {
        let mut turn = 0usize;
        loop {
            if l1.strong_count() == 0 {
                return;
            }
            let subscribed = tokio::time::timeout(connect_timeout, async {
                let client = to.client(turn).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>((client.get_connection_info().addr().to_string(), pubsub))
            })
            .await;
            turn += 1;
            let Ok(Ok((addr, pubsub))) = subscribed else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Whatever was published while we were not listening is lost: start clean.
            if let Some(l1) = l1.upgrade() {
                l1.clear();
            }
            connected.store(true, Ordering::Release);
            tracing::info!(%addr, "cache invalidation subscriber connected");
            let reason = listen(pubsub, &instance_id, &l1, observer.as_ref()).await;
            connected.store(false, Ordering::Release);
            if let Some(l1) = l1.upgrade() {
                l1.clear();
            }
            tracing::warn!(%addr, %reason, "cache invalidation subscriber disconnected; L1 bypassed until it reconnects");
            turn = 0;
        }
    });
}

async fn listen(
    pubsub: redis::aio::PubSub,
    instance_id: &str,
    l1: &Weak<MemoryCache>,
    observer: &dyn CacheObserver,
) -> String {
    let (mut sink, mut messages) = pubsub.split();
    let mut unanswered = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), messages.next()).await {
            Ok(Some(message)) => {
                unanswered = 0;
                let Some(l1) = l1.upgrade() else { return "cache dropped".into() };
                let text = String::from_utf8_lossy(message.get_payload_bytes());
                let mut lines = text.split('\n');
                if lines.next() != Some(instance_id) {
                    let keys: Vec<String> = lines.map(str::to_owned).collect();
                    l1.remove(&keys);
                    observer.tier("l1", "remote_invalidate", "ok");
                }
            }
            Ok(None) => return "connection closed".into(),
            Err(_) => {
                if l1.strong_count() == 0 {
                    return "cache dropped".into();
                }
                match tokio::time::timeout(Duration::from_secs(1), sink.ping::<Value>()).await {
                    Ok(Ok(_)) => unanswered = 0,
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => {
                        unanswered += 1;
                        if unanswered >= 3 {
                            return "no answer to pings".into();
                        }
                    }
                }
            }
        }
    }
}
