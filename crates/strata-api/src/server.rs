//! The HTTP server loop: accepts connections up to a cap and serves each with hyper's
//! HTTP/1, under the timeouts a server facing hostile clients needs and `axum::serve` does
//! not have.
//!
//! Each connection is in one of three phases, tracked by the connection itself:
//!
//! - *head*: from accept, or from the first byte after an idle spell, until the request
//!   head is parsed. Bounded by `header_read`: a slowloris client dribbling a header is
//!   closed when it runs out, however steadily it sends.
//! - *request*: a handler runs; reading the body is bounded by the body extractor
//!   (`http.body_read_timeout_ms`), everything else by the storage and cache deadlines.
//! - *idle*: between a response and the next request's first byte. Bounded by
//!   `keep_alive_idle`, independently of the header timeout (hyper's own header timer
//!   would also cover idle time, with the header's shorter value), so a load balancer's
//!   pooled connections are not cut before its own idle timeout.
//!
//! Beyond `max_connections` open connections, new ones get a `503` problem and are closed
//! at once: answering costs one small write, and an overloaded server says why.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::Metrics;

#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub header_read: Duration,
    pub keep_alive_idle: Duration,
    pub max_connections: usize,
}

const HEAD: u8 = 0;
const REQUEST: u8 = 1;
const IDLE: u8 = 2;

/// One connection's phase, and when and how often it last changed.
struct Phase {
    epoch: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    /// Bumped on every change, so the watchdog can tell "still the same spell" from "a new
    /// spell of the same phase".
    generation: AtomicU64,
    /// Wakes the watchdog, whose deadline depends on the phase.
    changed: tokio::sync::Notify,
}

impl Phase {
    fn new() -> Self {
        Phase {
            epoch: Instant::now(),
            phase: AtomicU8::new(HEAD),
            since_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A stored permit if the watchdog is not waiting: no change is missed.
        self.changed.notify_one();
    }

    fn current(&self) -> (u8, u64, u64) {
        let generation = self.generation.load(Ordering::Acquire);
        (self.phase.load(Ordering::Acquire), self.since_ms.load(Ordering::Relaxed), generation)
    }
}

/// The socket, noticing the first byte of a request after an idle spell.
struct WatchedIo {
    inner: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let out = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(out, Poll::Ready(Ok(()))) && buf.filled().len() > before && self.phase.current().0 == IDLE {
            self.phase.enter(HEAD);
        }
        out
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Held by a request from its head to the end of its response body: dropping it starts
/// the idle spell.
struct InRequest(Arc<Phase>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.enter(IDLE);
    }
}

/// A response body that ends the request when it is done (or dropped).
struct Tracked {
    body: Body,
    _request: InRequest,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// every connection finish its current request (idle ones close at once) and returns
/// when all are closed. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    accept(&listener, limits, &metrics, &open, shutdown, |stream, peer| {
        let (router, metrics, open, stop) = (router.clone(), metrics.clone(), open.clone(), stop_rx.clone());
        tokio::spawn(serve_counted(stream, peer, router, limits, metrics, open, stop));
    })
    .await;
    drop(listener);
    let _ = stop_tx.send(true);
    while open.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`serve`], on `routers.len()` threads of their own, each a single-threaded runtime
/// serving with its router; the caller's runtime only accepts, handing each connection
/// to the next thread in turn. For a proxy: everything one request touches (its
/// connection, the upstream connection, their tasks) stays on one thread, so no wake-up
/// crosses threads — on two cores that halved the CPU time per proxied request against
/// one work-stealing runtime (bench/RESULTS.md, Gateway). Per-thread state, such as an
/// upstream connection pool, goes into each router.
pub async fn serve_threads(
    listener: TcpListener,
    routers: Vec<Router>,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let mut lanes = Vec::new();
    let mut finished = Vec::new();
    for (k, router) in routers.into_iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (metrics, open, stop) = (metrics.clone(), open.clone(), stop_rx.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name(format!("strata-lane-{k}")).spawn(move || {
            runtime.block_on(async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Some((stream, peer)) = rx.recv().await {
                    let (router, metrics, open, stop) = (router.clone(), metrics.clone(), open.clone(), stop.clone());
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            connections.spawn(serve_counted(stream, peer, router, limits, metrics, open, stop));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot take over an accepted connection");
                            metrics.connection_closed();
                            open.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    // Reap finished connections as we go, so the set stays small.
                    while connections.try_join_next().is_some() {}
                }
                while connections.join_next().await.is_some() {}
            });
            let _ = done_tx.send(());
        })?;
        lanes.push(tx);
        finished.push(done_rx);
    }
    let mut next = 0;
    accept(&listener, limits, &metrics, &open, shutdown, |stream, peer| {
        let lane = &lanes[next % lanes.len()];
        next += 1;
        let handed = stream
            .into_std()
            .map_err(|e| e.to_string())
            .and_then(|s| lane.send((s, peer)).map_err(|_| "the serving thread has stopped".to_owned()));
        if let Err(e) = handed {
            tracing::warn!(error = %e, "cannot hand over an accepted connection");
            metrics.connection_closed();
            open.fetch_sub(1, Ordering::AcqRel);
        }
    })
    .await;
    drop(listener);
    let _ = stop_tx.send(true);
    drop(lanes);
    for done in finished {
        let _ = done.await;
    }
    Ok(())
}

/// The accept loop of both: up to `limits.max_connections` open (counted in `open`, the
/// server's to decrement), the rest refused with a `503`; each accepted one goes to
/// `handle`. Returns when `shutdown` resolves.
async fn accept(
    listener: &TcpListener,
    limits: ServerLimits,
    metrics: &Arc<Metrics>,
    open: &AtomicUsize,
    shutdown: impl Future<Output = ()>,
    mut handle: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning; the
                    // connections we hold will close and free some.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.load(Ordering::Acquire) >= limits.max_connections {
            metrics.connection_refused();
            tokio::spawn(refuse(stream));
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        metrics.connection_opened();
        handle(stream, peer);
    }
}

/// One counted connection, served to its end.
async fn serve_counted(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    open: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Some(phase) = serve_connection(stream, peer, router, limits, stop).await {
        metrics.connection_timed_out(phase);
    }
    metrics.connection_closed();
    open.fetch_sub(1, Ordering::AcqRel);
}

/// `Some(phase)` when the connection was closed by that phase's timeout.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<&'static str> {
    let _ = stream.set_nodelay(true);
    let phase = Arc::new(Phase::new());
    let io = TokioIo::new(WatchedIo { inner: stream, phase: phase.clone() });
    let service = {
        let phase = phase.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            phase.enter(REQUEST);
            let request = InRequest(phase.clone());
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let Ok(res) = router.oneshot(req).await;
                Ok::<_, Infallible>(res.map(|body| Tracked { body, _request: request }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our watchdog times the head (hyper's timer would also cut idle connections at the
    // header timeout).
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return None;
            }
            phase = watchdog(&phase, limits) => return Some(phase),
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves with the phase's name once the connection has spent longer than allowed in
/// its current head or idle spell.
async fn watchdog(phase: &Phase, limits: ServerLimits) -> &'static str {
    loop {
        let (current, since_ms, generation) = phase.current();
        let (limit, name) = match current {
            HEAD => (limits.header_read, "header"),
            IDLE => (limits.keep_alive_idle, "idle"),
            // A handler runs: its own deadlines apply until the phase changes.
            _ => {
                phase.changed.notified().await;
                continue;
            }
        };
        let deadline = phase.epoch + Duration::from_millis(since_ms) + limit;
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {
                if phase.current().2 == generation {
                    return name;
                }
            }
            () = phase.changed.notified() => {}
        }
    }
}

/// Tells a connection over the cap why it is being closed.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"type":"urn:strata:problem:too_many_connections","title":"Service unavailable","status":503,"code":"too_many_connections","detail":"the server has as many open connections as it accepts; retry shortly"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
}
