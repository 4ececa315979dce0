//! Single-flight: concurrent callers asking for the same key share one execution of the
//! work. The account service uses it so that a burst of cache misses on one session token
//! (a popular token after a restart, an expired entry under load) costs one database read,
//! not one per request.
//!
//! Built on `tokio::sync::OnceCell`: its `get_or_init` runs one initialiser at a time and
//! hands the value to every waiter; if the running caller is cancelled (its client went
//! away), a waiting caller takes over, so a cancelled leader never strands the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { in_flight: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `work` unless a call for `key` is already running, in which case this waits for
    /// that call's result instead. A call that starts after the previous one finished runs
    /// its own `work`: results are shared, never cached.
    pub async fn run<F, Fut>(&self, key: &K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.in_flight.lock().entry(key.clone()).or_insert_with(|| Arc::new(OnceCell::new())).clone();
        let value = cell.get_or_init(work).await.clone();
        let mut in_flight = self.in_flight.lock();
        // Only the flight we joined is removed; a newer one for the same key stays.
        if in_flight.get(key).is_some_and(|current| Arc::ptr_eq(current, &cell)) {
            in_flight.remove(key);
        }
        value
    }

    /// Keys with a call in progress (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_execution() {
        let flights = Arc::new(SingleFlight::<u32, u64>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(&7, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        // Hold the flight open until every caller has joined it.
                        gate.notified().await;
                        42
                    })
                    .await
            }));
        }
        // Wait (bounded) until the leader is inside the work; the others are queued on it.
        for _ in 0..500 {
            if runs.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        gate.notify_waiters();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "finished flights are forgotten");
    }

    #[tokio::test]
    async fn different_keys_and_later_calls_run_their_own_work() {
        let flights = SingleFlight::<u32, u32>::default();
        assert_eq!(flights.run(&1, || async { 10 }).await, 10);
        assert_eq!(flights.run(&2, || async { 20 }).await, 20);
        // Not a cache: the next call for key 1 runs again.
        assert_eq!(flights.run(&1, || async { 11 }).await, 11);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(SingleFlight::<u32, u32>::default());
        let started = Arc::new(tokio::sync::Notify::new());
        let leader = {
            let (flights, started) = (flights.clone(), started.clone());
            tokio::spawn(async move {
                flights
                    .run(&1, || async move {
                        started.notify_one();
                        std::future::pending::<u32>().await
                    })
                    .await
            })
        };
        started.notified().await;
        let follower = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(&1, || async { 5 }).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        leader.abort();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), follower).await.unwrap().unwrap();
        assert_eq!(got, 5);
    }
}
