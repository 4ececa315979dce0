//! One cache server as the adapters see it: an address, a small pool of idle TCP
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
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::breaker::{Breaker, BreakerOptions, State, Transition};

pub type Conn = BufStream<TcpStream>;

/// Idle connections kept per endpoint; more are opened under load and closed after.
const MAX_IDLE: usize = 64;

pub struct Endpoint {
    addr: String,
    label: String,
    timeout: Duration,
    /// Sent on every new connection (Redis `AUTH`), expecting `+OK`.
    handshake: Option<Vec<u8>>,
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
        handshake: Option<Vec<u8>>,
        observer: Arc<dyn CacheObserver>,
    ) -> Self {
        observer.endpoint(&label, false);
        Endpoint {
            addr,
            label,
            timeout,
            handshake,
            idle: Mutex::new(Vec::new()),
            breaker: Breaker::new(breaker),
            observer,
        }
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
        let mut conn = BufStream::new(stream);
        if let Some(hello) = &self.handshake {
            conn.write_all(hello).await?;
            conn.flush().await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            if !line.starts_with("+OK") {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "authentication refused"));
            }
        }
        Ok(conn)
    }

    /// Runs `op` on a pooled connection under the deadline and the breaker.
    pub async fn call<T>(&self, op: impl AsyncFnOnce(&mut Conn) -> io::Result<T>) -> Result<T, CacheError> {
        if !self.breaker.allow() {
            return Err(CacheError::Unavailable(format!("{}: circuit open", self.label)));
        }
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
        self.record(result.is_ok());
        if result.is_err() {
            // A failure often means the server restarted: its other pooled connections are
            // dead too, and each would cost a failed call to discover.
            self.idle.lock().clear();
        }
        result
    }

    fn record(&self, ok: bool) {
        match self.breaker.record(ok) {
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
