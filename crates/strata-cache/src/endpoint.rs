//! One Memcached server as its adapter sees it: an address, a small pool of idle TCP
//! connections, a per-call deadline and a circuit breaker.
//!
//! Every call checks out a connection (or opens one — that is the automatic reconnection),
//! runs under the deadline, and returns the connection only if the call completed: a
//! connection interrupted mid-reply is in an unknown state and is dropped. The deadline
//! covers connecting too, so a server that accepts slowly costs no more than one that
//! answers slowly.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::ports::{CacheError, CacheObserver};
use tokio::io::BufStream;
use tokio::net::TcpStream;

use crate::breaker::{Breaker, BreakerOptions, Permit, State, Transition};

pub type Conn = BufStream<TcpStream>;

/// Idle connections kept per endpoint; more are opened under load and closed after.
const MAX_IDLE: usize = 64;

pub struct Endpoint {
    addr: String,
    label: String,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
    breaker: Breaker,
    observer: Arc<dyn CacheObserver>,
}

impl Endpoint {
    pub fn new(
        addr: String,
        label: String,
        timeout: Duration,
        breaker: BreakerOptions,
        observer: Arc<dyn CacheObserver>,
    ) -> Self {
        observer.endpoint(&label, false);
        Endpoint { addr, label, timeout, idle: Mutex::new(Vec::new()), breaker: Breaker::new(breaker), observer }
    }

    pub fn addr(&self) -> &str {
        &self.addr
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
        self.breaker.state() == State::Open
    }

    pub async fn connect(&self) -> io::Result<Conn> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(BufStream::new(stream))
    }

    /// Runs `op` on a pooled connection under the deadline and the breaker. Dropping the
    /// returned future mid-call drops the breaker permit with it, which frees a half-open
    /// probe slot (see [`Permit`]'s Drop).
    pub async fn call<T>(&self, op: impl AsyncFnOnce(&mut Conn) -> io::Result<T>) -> Result<T, CacheError> {
        let Some(permit) = self.breaker.allow() else {
            return Err(CacheError::Unavailable(format!("{}: circuit open", self.label)));
        };
        let attempt = tokio::time::timeout(self.timeout, async {
            let pooled = self.idle.lock().pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            let out = op(&mut conn).await?;
            Ok::<_, io::Error>((conn, out))
        })
        .await;
        let result = match attempt {
            Ok(Ok((conn, out))) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
                Ok(out)
            }
            Ok(Err(e)) => Err(CacheError::Unavailable(format!("{}: {e}", self.label))),
            Err(_) => Err(CacheError::Unavailable(format!("{}: timed out after {:?}", self.label, self.timeout))),
        };
        self.record(permit, result.is_ok());
        if result.is_err() {
            // A failure often means the server restarted: its other pooled connections are
            // dead too, and each would cost a failed call to discover.
            self.idle.lock().clear();
        }
        result
    }

    fn record(&self, permit: Permit<'_>, ok: bool) {
        match permit.record(ok) {
            Transition::Opened => {
                tracing::warn!(endpoint = %self.label, "cache endpoint degraded; circuit open");
                self.observer.endpoint(&self.label, true);
            }
            Transition::Closed => {
                tracing::info!(endpoint = %self.label, "cache endpoint recovered; circuit closed");
                self.observer.endpoint(&self.label, false);
            }
            Transition::None => {}
        }
    }
}

/// A protocol-level surprise (wrong reply type, oversized length): the connection is
/// no longer trustworthy.
pub fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

#[cfg(test)]
mod tests {
    use strata_core::ports::NoopObserver;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn a_probe_cancelled_mid_call_does_not_wedge_the_breaker() {
        // Connecting succeeds via the listen backlog; the server never needs to answer.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::new(
            listener.local_addr().unwrap().to_string(),
            "test".into(),
            // Far beyond the test: only the caller's cancellation ends the probe.
            Duration::from_secs(600),
            BreakerOptions { failures: 1, open_for: Duration::from_millis(1) },
            Arc::new(NoopObserver),
        );
        assert!(endpoint.call(async |_conn: &mut Conn| Err::<(), _>(protocol_error("boom"))).await.is_err());
        while endpoint.is_open() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let probe_started = Notify::new();
        let probe = endpoint.call(async |_conn: &mut Conn| {
            probe_started.notify_one();
            std::future::pending::<io::Result<()>>().await
        });
        tokio::select! {
            _ = probe => panic!("the probe never completes"),
            // Dropping the probe here cancels it while it awaits the server.
            _ = probe_started.notified() => {}
        }

        assert!(endpoint.call(async |_conn: &mut Conn| Ok(())).await.is_ok(), "the next call is let through");
        assert!(!endpoint.is_degraded(), "and its success closes the breaker");
    }
}
