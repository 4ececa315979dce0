//! Per-request time accounting by component (database, password hashing, cache, later
//! broker). The HTTP layer opens a scope per request and turns the totals into a
//! `Server-Timing` header; the services record into whatever scope they run in, and
//! outside a scope recording is a no-op.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
}

impl Timings {
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

pub fn record(component: Component, elapsed: Duration) {
    let _ = CURRENT.try_with(|t| t.add(component, elapsed));
}

/// Marks the current request as made by a caller who authenticated (a valid session or
/// admin token, or the right password).
pub fn mark_authenticated() {
    let _ = CURRENT.try_with(|t| t.authenticated.store(true, Ordering::Relaxed));
}

/// Awaits `fut` and charges its wall time to `component`.
pub async fn measure<F: Future>(component: Component, fut: F) -> (F::Output, Duration) {
    let started = Instant::now();
    let out = fut.await;
    let elapsed = started.elapsed();
    record(component, elapsed);
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
}
