//! One Redis server (or one cluster) as the adapters see it: where its connection comes
//! from, one shared multiplexed connection, a per-call deadline and a circuit breaker.
//!
//! Why one multiplexed connection and not a pool: every caller's command goes out on the
//! same socket, and redis-rs writes whatever is queued in one `write` and reads every
//! reply that arrived in one `read`. Under load that is one system call (and one Redis
//! event-loop wakeup) per batch instead of per request, which on a small machine shared
//! by the load generator, Strata and Redis is where the time went (see `bench/RESULTS.md`).
//!
//! A call whose connection broke (reset, closed, a demoted master answering `READONLY`)
//! forgets that connection and is tried again on a fresh one, still inside the same
//! deadline ([`Node::may_retry`]): after a Sentinel failover the fresh connection goes to
//! the new master. The cache's commands are idempotent (GET, SET NX, tombstone SETs, a
//! repeated PUBLISH only drops L1 keys twice); a node for work that is not
//! ([`Node::not_idempotent`]: the throttle counters) retries only when nothing was sent. A
//! timeout alone does not drop the connection (the late reply is simply discarded), unless
//! it opens the breaker: then the server looks gone and the next probe starts afresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use strata_core::ports::{CacheError, CacheObserver};

use crate::breaker::{Breaker, BreakerOptions, Transition};

/// Where a node's connection comes from.
pub enum Source {
    /// A fixed address.
    Fixed(redis::Client),
    /// Whichever server Sentinel names now (the master, or one of its replicas).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// A Redis Cluster: redis-rs routes each key to its slot's master and follows
    /// `MOVED`/`ASK` and failovers itself.
    Cluster(redis::cluster::ClusterClient),
}

/// A live connection; cheap to clone (a handle to one socket's driver task).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// An error that says the connection (or the server behind it) is no longer the one to
/// use. `READONLY` is a master that Sentinel demoted while we were connected.
pub fn drops_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code() == Some("READONLY")
}

/// A server's answer that means "not now" rather than "no": a cluster between a master's
/// failure and its replica's promotion (or still redirecting to the dead master after
/// redis-rs's own retries), a server still loading its data. Worth another try within the
/// deadline on the same connection.
pub fn transient(e: &RedisError) -> bool {
    matches!(e.code(), Some("CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "LOADING" | "MOVED" | "ASK"))
}

pub struct Node {
    label: String,
    source: Source,
    timeout: Duration,
    /// The shared connection and its number, so that a failed call forgets only the
    /// connection it used, never a newer one another caller already opened.
    conn: Mutex<Option<(u64, Conn)>>,
    /// One connect at a time: the others wait for it rather than open their own.
    connecting: tokio::sync::Mutex<()>,
    opened: AtomicU64,
    /// The address Sentinel last named, to notice a failover ([`Node::take_switched`]).
    server: Mutex<Option<String>>,
    switched: std::sync::atomic::AtomicBool,
    breaker: Breaker,
    observer: Arc<dyn CacheObserver>,
    /// May a call whose command went out be sent again?
    idempotent: bool,
}

impl Node {
    pub fn new(
        label: String,
        source: Source,
        timeout: Duration,
        breaker: BreakerOptions,
        observer: Arc<dyn CacheObserver>,
    ) -> Self {
        observer.endpoint(&label, false);
        Node {
            label,
            source,
            timeout,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            opened: AtomicU64::new(0),
            server: Mutex::new(None),
            switched: std::sync::atomic::AtomicBool::new(false),
            breaker: Breaker::new(breaker),
            observer,
            idempotent: true,
        }
    }

    /// Calls are retried only when their command never went out (connecting failed).
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn is_degraded(&self) -> bool {
        self.breaker.is_degraded()
    }

    /// Calls are refused now; false again once the open period ends (half-open: a probe
    /// may go out).
    pub fn is_open(&self) -> bool {
        self.breaker.state() == crate::breaker::State::Open
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    /// True once after Sentinel named a different server than the one before.
    pub fn take_switched(&self) -> bool {
        self.switched.swap(false, Ordering::AcqRel)
    }

    fn config(&self) -> AsyncConnectionConfig {
        // Our own deadline bounds every call (connecting included); redis-rs's timeouts
        // only keep a connect from outliving it.
        AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(None)
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.source {
            Source::Fixed(client) => {
                Ok(Conn::Single(client.get_multiplexed_async_connection_with_config(&self.config()).await?))
            }
            Source::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                let addr = client.get_connection_info().addr().to_string();
                let conn = client.get_multiplexed_async_connection_with_config(&self.config()).await?;
                let mut server = self.server.lock();
                if server.as_ref().is_some_and(|old| *old != addr) {
                    tracing::warn!(endpoint = %self.label, from = ?*server, to = %addr, "sentinel named a new server");
                    self.switched.store(true, Ordering::Release);
                }
                *server = Some(addr);
                Ok(Conn::Single(conn))
            }
            Source::Cluster(cluster) => Ok(Conn::Cluster(cluster.get_async_connection().await?)),
        }
    }

    async fn connection(&self) -> RedisResult<(u64, Conn)> {
        if let Some(current) = self.conn.lock().clone() {
            return Ok(current);
        }
        let _one_at_a_time = self.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(current) = self.conn.lock().clone() {
            return Ok(current);
        }
        let conn = self.connect().await?;
        let id = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        *self.conn.lock() = Some((id, conn.clone()));
        Ok((id, conn))
    }

    fn forget(&self, id: u64) {
        let mut conn = self.conn.lock();
        if conn.as_ref().is_some_and(|(current, _)| *current == id) {
            *conn = None;
        }
    }

    /// A fixed server gets one more try (its connection may just be stale after a
    /// restart; a dead server should fail fast). Behind Sentinel or in a cluster the server
    /// may be changing hands, so the call keeps trying until its deadline.
    fn may_retry(&self, retries: u32) -> bool {
        match self.source {
            Source::Fixed(_) => retries < 1,
            Source::Sentinel(_) | Source::Cluster(_) => true,
        }
    }

    /// The first retry goes at once; then 10, 20, 40… ms, at most 200.
    async fn backoff(&self, retries: u32) {
        if retries > 1 {
            let ms = 10u64.saturating_mul(1 << (retries - 2).min(5)).min(200);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Runs `op` under the deadline and the breaker. Dropping the returned future mid-call
    /// drops the breaker permit with it, which frees a half-open probe slot (see
    /// [`crate::breaker::Permit`]'s Drop); the multiplexed connection discards the reply.
    ///
    /// `op` is a plain closure returning a future (not an async closure): it may run more
    /// than once, and a future that borrowed the closure itself would not be `Send` for
    /// every lifetime, which the `async_trait` callers need.
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let Some(permit) = self.breaker.allow() else {
            return Err(CacheError::Unavailable(format!("{}: circuit open", self.label)));
        };
        let attempt = tokio::time::timeout(self.timeout, async {
            let mut retries = 0u32;
            loop {
                let failed = match self.connection().await {
                    Err(e) => e,
                    Ok((id, conn)) => match op(conn).await {
                        Err(e) if drops_connection(&e) && self.idempotent => {
                            // A cluster connection reconnects to its nodes by itself.
                            if !self.is_cluster() {
                                self.forget(id);
                            }
                            e
                        }
                        Err(e) if transient(&e) && self.idempotent => e,
                        Err(e) if drops_connection(&e) => {
                            if !self.is_cluster() {
                                self.forget(id);
                            }
                            return Err(e);
                        }
                        other => return other,
                    },
                };
                if !self.may_retry(retries) {
                    return Err(failed);
                }
                retries += 1;
                self.backoff(retries).await;
            }
        })
        .await;
        let result = match attempt {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(CacheError::Unavailable(format!("{}: {e}", self.label))),
            Err(_) => Err(CacheError::Unavailable(format!("{}: timed out after {:?}", self.label, self.timeout))),
        };
        match permit.record(result.is_ok()) {
            Transition::Opened => {
                tracing::warn!(endpoint = %self.label, "cache endpoint degraded; circuit open");
                self.observer.endpoint(&self.label, true);
                // The server looks gone: the probe after the open period starts afresh
                // rather than wait on a socket that may be dead without a reset.
                *self.conn.lock() = None;
            }
            Transition::Closed => {
                tracing::info!(endpoint = %self.label, "cache endpoint recovered; circuit closed");
                self.observer.endpoint(&self.label, false);
            }
            Transition::None => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use strata_core::ports::NoopObserver;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::breaker::BreakerOptions;

    #[tokio::test]
    async fn a_probe_cancelled_mid_call_does_not_wedge_the_breaker() {
        // Nobody listens at first: the first call is refused and opens the breaker.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let client = redis::Client::open(format!("redis://{addr}")).unwrap();
        let node = Node::new(
            "test".into(),
            Source::Fixed(client),
            // Far beyond the test: only the caller's cancellation ends the probe.
            Duration::from_secs(600),
            BreakerOptions { failures: 1, open_for: Duration::from_millis(1) },
            Arc::new(NoopObserver),
        );
        assert!(node.call(|_conn: Conn| async { Ok(()) }).await.is_err());
        while node.is_open() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        // Now something accepts (the listen backlog) but never answers: the probe hangs.
        let _listener = TcpListener::bind(addr).await.unwrap();
        let probe_started = Notify::new();
        let probe = node.call(|_conn: Conn| async {
            probe_started.notify_one();
            std::future::pending::<RedisResult<()>>().await
        });
        tokio::select! {
            _ = probe => panic!("the probe never completes"),
            // Dropping the probe here cancels it while it waits for the server.
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = probe_started.notified() => {}
        }
        let next = node.breaker.allow();
        assert!(next.is_some(), "a cancelled probe is no verdict on the server: the next caller probes");
    }
}
