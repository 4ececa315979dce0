//! Request tracing, W3C Trace Context in and OpenTelemetry-shaped spans out.
//!
//! Off by default, and then free: no [`Tracer`] means the HTTP layer makes no trace, and
//! every recording point ([`crate::timing::measure`]) only checks an `Option` it already
//! reads for `Server-Timing`. With a tracer, a request is recorded when its caller's
//! `traceparent` says *sampled* (parent-based: a caller who decided not to sample is obeyed
//! too), or, with no caller context, with probability `ratio`. A recorded request becomes one
//! SERVER span plus a child span per storage call, cache call and password hash, all handed to
//! the [`SpanExporter`] when the response is ready. The request's outgoing context (events'
//! `traceparent`) then names the server span, so a consumer's span joins the same trace.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand_core::{OsRng, RngCore};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Str(Cow<'static, str>),
    Int(i64),
}

pub type Attribute = (&'static str, AttributeValue);

/// A finished span, ready to export.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<Attribute>,
    pub error: bool,
}

/// Where finished spans go. Must not block: an exporter that cannot keep up drops (and
/// counts) spans rather than slow requests down.
pub trait SpanExporter: Send + Sync + 'static {
    fn export(&self, spans: Vec<Span>);
}

/// What happened to spans after the request: for metrics.
pub trait TraceObserver: Send + Sync + 'static {
    fn exported(&self, spans: usize);
    /// `reason`: `queue_full` (the exporter fell behind), `rejected` (the collector refused
    /// them), `unreachable` (no collector answer after retries).
    fn dropped(&self, reason: &'static str, spans: usize);
}

/// Decides which requests are recorded and hands their spans on.
pub struct Tracer {
    exporter: Arc<dyn SpanExporter>,
    /// A root request is recorded when a uniform random `u64` is below this.
    threshold: u64,
    /// `db.system.name` of the storage spans (OpenTelemetry's names: `sqlite`, `postgresql`,
    /// `mysql`).
    db_system: &'static str,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("threshold", &self.threshold).field("db_system", &self.db_system).finish()
    }
}

impl Tracer {
    /// `ratio` is clamped to `0.0..=1.0`.
    pub fn new(exporter: Arc<dyn SpanExporter>, ratio: f64, db_system: &'static str) -> Tracer {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1.0) };
        // 1.0 must record everything: u64::MAX as f64 rounds up to 2^64, which saturates back.
        let threshold = if ratio >= 1.0 { u64::MAX } else { (ratio * u64::MAX as f64) as u64 };
        Tracer { exporter, threshold, db_system }
    }

    /// The trace a request records into, if it is sampled. `incoming` is the caller's
    /// `traceparent` as [`crate::timing::parse_traceparent`] accepted it.
    pub fn start(&self, incoming: Option<&str>) -> Option<RequestTrace> {
        let (trace_id, parent) = match incoming.and_then(parse_context) {
            Some((_, _, false)) => return None,
            Some((trace_id, parent, true)) => (trace_id, Some(parent)),
            None => {
                if self.threshold != u64::MAX && fast_random() >= self.threshold {
                    return None;
                }
                let mut id = [0u8; 16];
                OsRng.fill_bytes(&mut id);
                // All-zero ids are invalid; the odds are nil, the fix is free.
                id[15] |= 1;
                (id, None)
            }
        };
        let span_id = new_span_id();
        let start_unix_nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Some(RequestTrace {
            trace_id,
            span_id,
            parent,
            start: Instant::now(),
            start_unix_nanos,
            db_system: self.db_system,
            children: Mutex::new(Vec::new()),
        })
    }

    pub fn export(&self, spans: Vec<Span>) {
        if !spans.is_empty() {
            self.exporter.export(spans);
        }
    }
}

/// A recorded request in flight: its ids, its start, and the child spans so far.
#[derive(Debug)]
pub struct RequestTrace {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    start: Instant,
    start_unix_nanos: u64,
    db_system: &'static str,
    children: Mutex<Vec<Span>>,
}

impl RequestTrace {
    /// The context to hand on (events, outgoing calls): this request's server span, sampled.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex(&mut s, &self.trace_id);
        s.push('-');
        hex(&mut s, &self.span_id);
        s.push_str("-01");
        s
    }

    fn unix_nanos(&self, at: Instant) -> u64 {
        self.start_unix_nanos.saturating_add(at.saturating_duration_since(self.start).as_nanos() as u64)
    }

    /// Records a child of the server span: a storage call, cache call or hash.
    pub fn child(
        &self,
        component: crate::timing::Component,
        name: &'static str,
        started: Instant,
        ended: Instant,
        error: bool,
    ) {
        use crate::timing::Component;
        let (kind, attributes) = match component {
            Component::Db => (
                SpanKind::Client,
                vec![
                    ("db.system.name", AttributeValue::Str(Cow::Borrowed(self.db_system))),
                    ("db.operation.name", AttributeValue::Str(Cow::Borrowed(name))),
                ],
            ),
            Component::Cache => {
                (SpanKind::Client, vec![("strata.cache.operation", AttributeValue::Str(Cow::Borrowed(name)))])
            }
            Component::Hash => {
                (SpanKind::Internal, vec![("strata.hash.operation", AttributeValue::Str(Cow::Borrowed(name)))])
            }
        };
        let prefix = match component {
            Component::Db => "db ",
            Component::Cache => "cache ",
            Component::Hash => "password ",
        };
        let span = Span {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            parent_span_id: Some(self.span_id),
            name: Cow::Owned(format!("{prefix}{name}")),
            kind,
            start_unix_nanos: self.unix_nanos(started),
            end_unix_nanos: self.unix_nanos(ended),
            attributes,
            error,
        };
        self.children.lock().push(span);
    }

    /// The server span and its children, ending now.
    pub fn finish(&self, name: String, attributes: Vec<Attribute>, error: bool) -> Vec<Span> {
        let mut spans = std::mem::take(&mut *self.children.lock());
        spans.push(Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent,
            name: Cow::Owned(name),
            kind: SpanKind::Server,
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.unix_nanos(Instant::now()),
            attributes,
            error,
        });
        spans
    }
}

/// A random span id from the OS; never all zero (invalid), the odds are nil, the fix free.
fn new_span_id() -> SpanId {
    let mut id = [0u8; 8];
    OsRng.fill_bytes(&mut id);
    id[7] |= 1;
    id
}

/// `(trace id, parent span id, sampled)` of a well-formed `traceparent`.
fn parse_context(tp: &str) -> Option<(TraceId, SpanId, bool)> {
    let b = tp.as_bytes();
    if b.len() < 55 {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    unhex(&b[3..35], &mut trace)?;
    unhex(&b[36..52], &mut span)?;
    let mut flags = [0u8; 1];
    unhex(&b[53..55], &mut flags)?;
    Some((trace, span, flags[0] & 1 == 1))
}

fn unhex(src: &[u8], out: &mut [u8]) -> Option<()> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in src.chunks_exact(2).enumerate() {
        *out.get_mut(i)? = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(())
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// A per-thread xorshift64* for the sampling coin: the decision is made for every request,
/// so it must not be a syscall; the ids of the requests it picks do come from the OS.
fn fast_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(OsRng.next_u64() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Span>>);

    impl SpanExporter for Collect {
        fn export(&self, spans: Vec<Span>) {
            self.0.lock().extend(spans);
        }
    }

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn the_callers_decision_wins_over_the_ratio() {
        let never = Tracer::new(Arc::new(Collect::default()), 0.0, "sqlite");
        let always = Tracer::new(Arc::new(Collect::default()), 1.0, "sqlite");
        let joined = never.start(Some(SAMPLED)).expect("a sampled caller is recorded even at ratio 0");
        assert!(joined.traceparent().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!joined.traceparent().contains("00f067aa0ba902b7"), "a new span id");
        assert!(joined.traceparent().ends_with("-01"));
        assert!(always.start(Some(UNSAMPLED)).is_none(), "an unsampled caller is obeyed at ratio 1");
        assert!(never.start(None).is_none());
        assert!(always.start(None).is_some());
    }

    #[test]
    fn the_ratio_samples_about_that_share() {
        let tracer = Tracer::new(Arc::new(Collect::default()), 0.1, "sqlite");
        let picked = (0..20_000).filter(|_| tracer.start(None).is_some()).count();
        assert!((1_400..2_600).contains(&picked), "{picked} of 20000 at 10 %");
    }

    #[test]
    fn children_hang_under_the_server_span() {
        let collect = Arc::new(Collect::default());
        let tracer = Tracer::new(collect.clone(), 1.0, "postgresql");
        let trace = tracer.start(Some(SAMPLED)).unwrap();
        let t0 = Instant::now();
        trace.child(crate::timing::Component::Db, "user_by_id", t0, Instant::now(), true);
        tracer.export(trace.finish("GET /v1/users/{id}".into(), vec![], false));
        let spans = collect.0.lock().clone();
        let (db, server) = (&spans[0], &spans[1]);
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.parent_span_id, Some(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7"));
        assert_eq!(db.parent_span_id, Some(server.span_id));
        assert_eq!(db.trace_id, server.trace_id);
        assert_eq!(db.name, "db user_by_id");
        assert!(db.error);
        assert!(db.attributes.contains(&("db.system.name", AttributeValue::Str("postgresql".into()))));
        assert!(server.start_unix_nanos <= db.start_unix_nanos && db.end_unix_nanos <= server.end_unix_nanos);
    }
}
