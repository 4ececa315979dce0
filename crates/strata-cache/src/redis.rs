//! Redis adapter (`redis://[:PASSWORD@]HOST:PORT[?replica=HOST:PORT…]`): a small RESP2
//! client over tokio, leaner than a general-purpose client and with the timeouts and
//! breakers where we want them.
//!
//! - Reads go to the primary and fall back to each replica in turn when the primary fails
//!   or its breaker is open.
//! - Fills (`SET … PX ttl NX`) and invalidations (a pipeline of tombstone `SET … PX`s and
//!   one `PUBLISH`) go to the primary only: replicas are read-only.
//! - Invalidations are published on a channel so every instance drops the keys from its
//!   L1 ([`spawn_subscriber`]). Redis replicates `PUBLISH` to replicas, so a subscriber
//!   that had to fall back to a replica still hears them.
//!
//! Sentinel discovery is not implemented: a failed-over primary is followed by changing
//! the URL. Reads keep working from the replica meanwhile.

use std::io;
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use strata_core::ports::{Cache, CacheError, CacheObserver};
use tokio::io::AsyncWriteExt;

use crate::endpoint::{Conn, Endpoint, protocol_error};
use crate::memory::MemoryCache;
use crate::resp::{self, Reply};
use crate::shield::{self, Shield};
use crate::{CacheOptions, Credentials};

pub struct RedisCache {
    primary: Endpoint,
    replicas: Vec<Endpoint>,
    shield: Arc<Shield>,
    tombstone_ttl: Duration,
    channel: String,
    instance_id: String,
    observer: Arc<dyn CacheObserver>,
}

pub(crate) fn handshake(credentials: &Option<Credentials>) -> Option<Vec<u8>> {
    let c = credentials.as_ref()?;
    let mut out = Vec::new();
    match &c.user {
        Some(user) => resp::encode(&mut out, &[b"AUTH", user.as_bytes(), c.password.expose().as_bytes()]),
        None => resp::encode(&mut out, &[b"AUTH", c.password.expose().as_bytes()]),
    }
    Some(out)
}

impl RedisCache {
    pub fn new(
        primary: &str,
        replicas: &[String],
        credentials: &Option<Credentials>,
        options: &CacheOptions,
        instance_id: String,
        observer: Arc<dyn CacheObserver>,
    ) -> Arc<Self> {
        let endpoint = |addr: &str, role: &str| {
            Endpoint::new(
                addr.to_owned(),
                format!("redis {role} {addr}"),
                options.timeout,
                options.breaker,
                handshake(credentials),
                observer.clone(),
            )
        };
        let cache = Arc::new(RedisCache {
            primary: endpoint(primary, "primary"),
            replicas: replicas.iter().map(|r| endpoint(r, "replica")).collect(),
            shield: Arc::new(Shield::default()),
            tombstone_ttl: options.tombstone_ttl,
            channel: options.channel.clone(),
            instance_id,
            observer,
        });
        shield::spawn_replayer(Arc::downgrade(&cache), cache.shield.clone(), Duration::from_millis(100));
        cache
    }

    pub fn primary(&self) -> &Endpoint {
        &self.primary
    }

    pub fn replicas(&self) -> &[Endpoint] {
        &self.replicas
    }

    async fn get_from(endpoint: &Endpoint, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        endpoint
            .call(async |conn: &mut Conn| match command(conn, &[b"GET", key.as_bytes()]).await? {
                Reply::Bulk(value) => Ok(value),
                other => Err(unexpected(other)),
            })
            .await
    }
}

pub(crate) async fn command(conn: &mut Conn, args: &[&[u8]]) -> io::Result<Reply> {
    let mut out = Vec::with_capacity(64);
    resp::encode(&mut out, args);
    conn.write_all(&out).await?;
    conn.flush().await?;
    resp::read(conn).await
}

fn unexpected(reply: Reply) -> io::Error {
    match reply {
        Reply::Error(e) => protocol_error(format!("redis error: {e}")),
        other => protocol_error(format!("unexpected redis reply: {other:?}")),
    }
}

fn ms(d: Duration) -> Vec<u8> {
    d.as_millis().max(1).to_string().into_bytes()
}

#[async_trait]
impl Cache for RedisCache {
    fn available(&self) -> bool {
        !self.primary.is_open() || self.replicas.iter().any(|r| !r.is_open())
    }

    fn describe(&self) -> String {
        let replicas: Vec<&str> = self.replicas.iter().map(|r| r.addr()).collect();
        format!(
            "redis {} (replicas: {})",
            self.primary.addr(),
            if replicas.is_empty() { "none".into() } else { replicas.join(", ") }
        )
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
        self.shield.finish_get(key, result, &*self.observer)
    }

    async fn fill(&self, key: &str, value: Vec<u8>, ttl: Duration, _generation: u64) -> Result<bool, CacheError> {
        if self.shield.is_pending(key) {
            self.observer.tier("l2", "fill", "skipped");
            return Ok(false);
        }
        let wrapped = shield::wrap(&value);
        let ttl = ms(ttl);
        let stored = self
            .primary
            .call(async |conn: &mut Conn| {
                match command(conn, &[b"SET", key.as_bytes(), &wrapped, b"PX", &ttl, b"NX"]).await? {
                    Reply::Simple(_) => Ok(true),
                    Reply::Bulk(None) => Ok(false),
                    other => Err(unexpected(other)),
                }
            })
            .await;
        shield::count_fill(&stored, &*self.observer);
        stored
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let tomb = shield::tombstone();
        let ttl = ms(self.tombstone_ttl);
        let mut message = self.instance_id.clone();
        for k in keys {
            message.push('\n');
            message.push_str(k);
        }
        let mut pipeline = Vec::with_capacity(keys.len() * 64 + message.len() + 64);
        for k in keys {
            resp::encode(&mut pipeline, &[b"SET", k.as_bytes(), &tomb, b"PX", &ttl]);
        }
        resp::encode(&mut pipeline, &[b"PUBLISH", self.channel.as_bytes(), message.as_bytes()]);
        let done = self
            .primary
            .call(async |conn: &mut Conn| {
                conn.write_all(&pipeline).await?;
                conn.flush().await?;
                for _ in keys {
                    match resp::read(conn).await? {
                        Reply::Simple(_) => {}
                        other => return Err(unexpected(other)),
                    }
                }
                match resp::read(conn).await? {
                    Reply::Integer(_) => Ok(()),
                    other => Err(unexpected(other)),
                }
            })
            .await;
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

/// Listens for invalidations published by any instance and drops those keys from `l1`.
///
/// `connected` is true only while subscribed: an L1 that might miss invalidations must not
/// be used, so the tiered cache bypasses it meanwhile, and it is cleared on every
/// (re)subscription because messages sent while we were away are lost (Redis pub/sub is
/// at-most-once). A silent connection is detected by pinging every second and giving up
/// after three unanswered pings. The task ends when `l1` is dropped.
#[allow(clippy::too_many_arguments)]
pub fn spawn_subscriber(
    addrs: Vec<String>,
    credentials: Option<Credentials>,
    channel: String,
    instance_id: String,
    l1: Weak<MemoryCache>,
    connected: Arc<AtomicBool>,
    connect_timeout: Duration,
    observer: Arc<dyn CacheObserver>,
) {
    tokio::spawn(async move {
        let hello = handshake(&credentials);
        let mut turn = 0usize;
        loop {
            if l1.strong_count() == 0 {
                return;
            }
            let addr = &addrs[turn % addrs.len()];
            turn += 1;
            let subscribed = tokio::time::timeout(connect_timeout, subscribe(addr, &hello, &channel)).await;
            let Ok(Ok(mut conn)) = subscribed else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Whatever was published while we were not listening is lost: start clean.
            if let Some(l1) = l1.upgrade() {
                l1.clear();
            }
            connected.store(true, Ordering::Release);
            tracing::info!(%addr, "cache invalidation subscriber connected");
            let reason = listen(&mut conn, &instance_id, &l1, observer.as_ref()).await;
            connected.store(false, Ordering::Release);
            if let Some(l1) = l1.upgrade() {
                l1.clear();
            }
            tracing::warn!(%addr, %reason, "cache invalidation subscriber disconnected; L1 bypassed until it reconnects");
            turn = 0;
        }
    });
}

async fn subscribe(addr: &str, hello: &Option<Vec<u8>>, channel: &str) -> io::Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut conn = tokio::io::BufStream::new(stream);
    if let Some(hello) = hello {
        conn.write_all(hello).await?;
        conn.flush().await?;
        if !matches!(resp::read(&mut conn).await?, Reply::Simple(_)) {
            return Err(protocol_error("authentication refused"));
        }
    }
    match command(&mut conn, &[b"SUBSCRIBE", channel.as_bytes()]).await? {
        Reply::Array(Some(_)) => Ok(conn),
        other => Err(unexpected(other)),
    }
}

async fn listen(conn: &mut Conn, instance_id: &str, l1: &Weak<MemoryCache>, observer: &dyn CacheObserver) -> String {
    let mut unanswered = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), resp::read(conn)).await {
            Ok(Ok(Reply::Array(Some(parts)))) => {
                unanswered = 0;
                if let [Reply::Bulk(Some(kind)), _, Reply::Bulk(Some(payload))] = parts.as_slice()
                    && kind == b"message"
                {
                    let Some(l1) = l1.upgrade() else { return "cache dropped".into() };
                    let text = String::from_utf8_lossy(payload);
                    let mut lines = text.split('\n');
                    if lines.next() != Some(instance_id) {
                        let keys: Vec<String> = lines.map(str::to_owned).collect();
                        l1.remove(&keys);
                        observer.tier("l1", "remote_invalidate", "ok");
                    }
                }
            }
            Ok(Ok(_)) => unanswered = 0,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => {
                if l1.strong_count() == 0 {
                    return "cache dropped".into();
                }
                unanswered += 1;
                if unanswered > 3 {
                    return "no answer to pings".into();
                }
                let mut ping = Vec::new();
                resp::encode(&mut ping, &[b"PING"]);
                if let Err(e) = async {
                    conn.write_all(&ping).await?;
                    conn.flush().await
                }
                .await
                {
                    return e.to_string();
                }
            }
        }
    }
}
