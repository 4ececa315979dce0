//! Shared PostgreSQL connections for the hot point reads (a session with its user, a user
//! by id), used by many requests at once.
//!
//! A pooled connection carries one query per round trip, and each costs a checkout, a
//! write, a read and two task wake-ups; with 32 requests in flight and 8 pooled
//! connections, most of a request's time was spent queueing for a connection
//! (`strata_db_pool_wait_seconds_total`). tokio-postgres pipelines the queries that callers
//! issue concurrently on one `Client`: its connection task writes everything queued in
//! one syscall and reads the answers in bulk, and the server's backend works through them
//! without waiting for the network in between. So these reads share a few connections
//! instead of holding one each.
//!
//! A shared connection that is not there (not yet connected, closed by the server, timed
//! out) is never waited for: that call uses the pool, exactly as before, and one
//! background task reconnects. So failure handling stays the pool's, and a server that
//! went away costs the hot path nothing more than it did without pipelining.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::RwLock;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use strata_core::error::RepoError;

/// One shared connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: RwLock<HashMap<&'static str, Statement>>,
}

impl Conn {
    async fn statement(&self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.statements.read().get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(sql).await?;
        self.statements.write().insert(sql, stmt.clone());
        Ok(stmt)
    }
}

#[derive(Default)]
struct Slot {
    conn: RwLock<Option<Arc<Conn>>>,
    connecting: AtomicBool,
    /// After a failed attempt, none before this: a server that refuses (down, or at
    /// `max_connections`) is not asked again by every request.
    retry_at: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// How long a slot waits after a failed connection attempt.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct Pipeline {
    config: tokio_postgres::Config,
    slots: Box<[Arc<Slot>]>,
    next: AtomicUsize,
}

/// What a pipelined read found: the answer, or that it must be asked elsewhere (no shared
/// connection was open, or it closed under the query).
pub(crate) enum Pipelined {
    Done(Result<Option<Row>, RepoError>),
    Elsewhere,
}

impl Pipeline {
    /// `connections` shared connections to the server `config` names; none is opened yet.
    pub(crate) fn new(config: tokio_postgres::Config, connections: usize) -> Self {
        let slots = (0..connections.max(1)).map(|_| Arc::new(Slot::default())).collect();
        Pipeline { config, slots, next: AtomicUsize::new(0) }
    }

    /// The next shared connection, round robin; `None` (and a reconnect started) if it is
    /// not open.
    fn pick(&self) -> Option<(Arc<Slot>, Arc<Conn>)> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let conn = slot.conn.read().clone();
        match conn {
            Some(conn) if !conn.client.is_closed() => Some((slot.clone(), conn)),
            _ => {
                self.reconnect(slot);
                None
            }
        }
    }

    /// Opens the slot's connection in the background, once at a time.
    fn reconnect(&self, slot: &Arc<Slot>) {
        if slot.retry_at.lock().is_some_and(|at| std::time::Instant::now() < at) {
            return;
        }
        if slot.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        *slot.conn.write() = None;
        let (slot, config) = (slot.clone(), self.config.clone());
        tokio::spawn(async move {
            match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "pipelined postgres connection ended");
                        }
                    });
                    *slot.conn.write() = Some(Arc::new(Conn { client, statements: RwLock::default() }));
                    *slot.retry_at.lock() = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pipelined postgres connection failed; the pool serves");
                    *slot.retry_at.lock() = Some(std::time::Instant::now() + RETRY_AFTER);
                }
            }
            slot.connecting.store(false, Ordering::Release);
        });
    }

    /// `sql` (a constant, prepared once per connection) on a shared connection, within
    /// `limit`. A timed-out or broken connection is dropped, so the next call reconnects
    /// rather than queueing behind it.
    pub(crate) async fn query_opt(
        &self,
        limit: std::time::Duration,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Pipelined {
        let Some((slot, conn)) = self.pick() else {
            return Pipelined::Elsewhere;
        };
        let run = async {
            let stmt = conn.statement(sql).await?;
            conn.client.query_opt(&stmt, params).await
        };
        let out = match tokio::time::timeout(limit, run).await {
            Ok(Ok(row)) => Ok(row),
            // The server ended the connection (a restart, a terminated backend): a read
            // changed nothing, so it may go elsewhere.
            Ok(Err(e)) if e.is_closed() || conn.client.is_closed() || connection_ended(&e) => {
                self.forget(&slot, &conn);
                return Pipelined::Elsewhere;
            }
            Ok(Err(e)) => Err(super::postgres::pg_err(e)),
            Err(_) => {
                self.forget(&slot, &conn);
                Err(RepoError::Unavailable(format!("storage call timed out after {limit:?}")))
            }
        };
        Pipelined::Done(out)
    }

    /// Drops `conn` from its slot if it is still the one there.
    fn forget(&self, slot: &Slot, conn: &Arc<Conn>) {
        let mut current = slot.conn.write();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
    }
}

/// Errors that end the connection rather than the query: a connection exception (08) or
/// an administrator or crash shutdown (57P01–57P03).
fn connection_ended(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("08") || matches!(c.code(), "57P01" | "57P02" | "57P03"))
}
