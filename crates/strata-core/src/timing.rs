//! Per-request time accounting by component (database, password hashing, cache, later
//! broker). The HTTP layer opens a scope per request and turns the totals into a
//! `Server-Timing` header; the services record into whatever scope they run in, and
//! outside a scope recording is a no-op. The scope also carries the request's W3C trace
//! context, so the events a request causes name it (`traceparent`), even from work moved
//! onto its own task ([`propagate`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::trace::RequestTrace;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Db,
    Hash,
    /// Calls to the cache port (every tier together).
    Cache,
}

/// Accumulated microseconds per component for one request.
#[derive(Debug, Default)]
pub struct Timings {
    db_micros: AtomicU64,
    hash_micros: AtomicU64,
    cache_micros: AtomicU64,
    /// The caller proved who they are during this request, so the per-component split
    /// may be shown to them (it cannot tell them anything about other accounts).
    authenticated: AtomicBool,
    /// The caller's `traceparent`, when it sent a valid one.
    traceparent: Option<String>,
    /// Present when this request is recorded as a trace (see [`crate::trace`]).
    trace: Option<RequestTrace>,
}

impl Timings {
    /// The caller's trace context, and `trace` when this request is recorded (its child
    /// spans are collected there).
    pub fn traced(traceparent: Option<String>, trace: Option<RequestTrace>) -> Timings {
        Timings { traceparent, trace, ..Timings::default() }
    }

    pub fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_ref()
    }

    fn slot(&self, component: Component) -> &AtomicU64 {
        match component {
            Component::Db => &self.db_micros,
            Component::Hash => &self.hash_micros,
            Component::Cache => &self.cache_micros,
        }
    }

    pub fn add(&self, component: Component, elapsed: Duration) {
        self.slot(component).fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn get(&self, component: Component) -> Duration {
        Duration::from_micros(self.slot(component).load(Ordering::Relaxed))
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }
}

tokio::task_local! {
    static CURRENT: Arc<Timings>;
}

/// Runs `fut` with `timings` as the current request's accumulator.
pub async fn scope<F: Future>(timings: Arc<Timings>, fut: F) -> F::Output {
    CURRENT.scope(timings, fut).await
}

/// `fut` in the current request's scope, if there is one: for work moved onto its own
/// task (task-locals do not follow `tokio::spawn`), so its time still counts.
pub fn propagate<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    let current = CURRENT.try_with(Arc::clone).ok();
    async move {
        match current {
            Some(timings) => CURRENT.scope(timings, fut).await,
            None => fut.await,
        }
    }
}

/// The trace context to hand on from the current request, if it has one: its own server
/// span when the request is recorded, else the caller's context unchanged.
pub fn traceparent() -> Option<String> {
    CURRENT
        .try_with(|t| match &t.trace {
            Some(trace) => Some(trace.traceparent()),
            None => t.traceparent.clone(),
        })
        .ok()
        .flatten()
}

/// A W3C `traceparent` header value, if well-formed: `VV-<32 hex>-<16 hex>-<2 hex>`,
/// lower-case, version not `ff`, ids not all zero; version `00` exactly that long, later
/// versions may append fields. Anything else is ignored, as the specification asks.
pub fn parse_traceparent(value: &str) -> Option<String> {
    let b = value.as_bytes();
    let hex = |s: &[u8]| !s.is_empty() && s.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    let zero = |s: &[u8]| s.iter().all(|c| *c == b'0');
    let ok = b.len() >= 55
        && hex(&b[0..2])
        && &b[0..2] != b"ff"
        && b[2] == b'-'
        && hex(&b[3..35])
        && !zero(&b[3..35])
        && b[35] == b'-'
        && hex(&b[36..52])
        && !zero(&b[36..52])
        && b[52] == b'-'
        && hex(&b[53..55])
        && (b.len() == 55 || (&b[0..2] != b"00" && b[55] == b'-'));
    ok.then(|| value[..55].to_owned())
}

pub fn record(component: Component, elapsed: Duration) {
    let _ = CURRENT.try_with(|t| t.add(component, elapsed));
}

/// Marks the current request as made by a caller who authenticated (a valid session or
/// admin token, or the right password).
pub fn mark_authenticated() {
    let _ = CURRENT.try_with(|t| t.authenticated.store(true, Ordering::Relaxed));
}

/// Awaits `fut`, charges its wall time to `component` and, in a recorded request, makes it
/// a span named `name`.
pub async fn measure<F: Future>(component: Component, name: &'static str, fut: F) -> (F::Output, Duration) {
    measure_outcome(component, name, fut, |_| false).await
}

/// [`measure`], with `failed` telling whether the outcome marks the span as an error.
pub async fn measure_outcome<F: Future>(
    component: Component,
    name: &'static str,
    fut: F,
    failed: impl FnOnce(&F::Output) -> bool,
) -> (F::Output, Duration) {
    let started = Instant::now();
    let out = fut.await;
    let ended = Instant::now();
    let elapsed = ended.saturating_duration_since(started);
    let _ = CURRENT.try_with(|t| {
        t.add(component, elapsed);
        if let Some(trace) = &t.trace {
            trace.child(component, name, started, ended, failed(&out));
        }
    });
    (out, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_inside_scope_only() {
        record(Component::Db, Duration::from_millis(5)); // no scope: ignored, no panic
        let timings = Arc::new(Timings::default());
        scope(timings.clone(), async {
            record(Component::Db, Duration::from_micros(1500));
            record(Component::Db, Duration::from_micros(500));
            record(Component::Hash, Duration::from_micros(7));
            record(Component::Cache, Duration::from_micros(3));
        })
        .await;
        assert!(!timings.authenticated());
        scope(timings.clone(), async { mark_authenticated() }).await;
        assert!(timings.authenticated());
        assert_eq!(timings.get(Component::Cache), Duration::from_micros(3));
        assert_eq!(timings.get(Component::Db), Duration::from_micros(2000));
        assert_eq!(timings.get(Component::Hash), Duration::from_micros(7));
    }

    #[tokio::test]
    async fn the_scope_carries_the_trace_context() {
        assert_eq!(traceparent(), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        let seen = scope(Arc::new(Timings::traced(Some(tp.clone()), None)), async {
            tokio::spawn(propagate(async { traceparent() })).await.unwrap()
        })
        .await;
        assert_eq!(seen, Some(tp));
    }

    #[test]
    fn traceparent_is_taken_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(good).as_deref(), Some(good));
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(parse_traceparent(future).as_deref(), Some(&future[..55]));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }
}
