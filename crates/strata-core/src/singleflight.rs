//! Single-flight: concurrent callers asking for the same key share one execution of the
//! work. The account service uses it so that a burst of cache misses on one session token
//! (a popular token after a restart, an expired entry under load) costs one database read,
//! not one per request.
//!
//! Built on `tokio::sync::OnceCell`: its `get_or_init` runs one initialiser at a time and
//! hands the value to every waiter; if the running caller is cancelled (its client went
//! away), a waiting caller takes over with its own work, so a cancelled leader never
//! strands the others.
//!
//! Each caller is a participant of its key's flight until its future ends or is dropped,
//! and leaving happens in a guard's Drop: a flight whose every participant was cancelled is
//! forgotten like a finished one. Otherwise each abandoned key (session tokens are
//! unbounded, and a client that disconnects is exactly what a flood looks like) would stay
//! in the map for good.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, Flight<V>>>,
}

struct Flight<V> {
    cell: Arc<OnceCell<V>>,
    /// Callers inside `run` for this flight, counted under the map's lock.
    participants: usize,
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
        let participant = self.join(key);
        participant.cell.get_or_init(work).await.clone()
    }

    fn join<'a>(&'a self, key: &'a K) -> Participant<'a, K, V> {
        let mut in_flight = self.in_flight.lock();
        let flight =
            in_flight.entry(key.clone()).or_insert_with(|| Flight { cell: Arc::new(OnceCell::new()), participants: 0 });
        flight.participants += 1;
        Participant { flights: self, key, cell: flight.cell.clone() }
    }

    /// Keys with a call in progress (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().len()
    }
}

/// One caller's membership of a flight; dropping it, on return or on cancellation, leaves.
struct Participant<'a, K: Eq + Hash, V> {
    flights: &'a SingleFlight<K, V>,
    key: &'a K,
    cell: Arc<OnceCell<V>>,
}

impl<K: Eq + Hash, V> Drop for Participant<'_, K, V> {
    fn drop(&mut self) {
        let mut in_flight = self.flights.in_flight.lock();
        // Only the flight we joined is touched; a newer one for the same key stays.
        let Some(flight) = in_flight.get_mut(self.key).filter(|flight| Arc::ptr_eq(&flight.cell, &self.cell)) else {
            return;
        };
        flight.participants -= 1;
        // A finished flight goes at once, so the next caller runs fresh work even while
        // slower participants are still picking up the shared value.
        if flight.participants == 0 || self.cell.initialized() {
            in_flight.remove(self.key);
        }
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

    /// Polls `future` once, as an executor would before the caller goes away.
    fn poll_once<F: Future>(future: &mut std::pin::Pin<Box<F>>) -> bool {
        future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_cancelled_mid_flight_leaves_no_entry() {
        let flights = SingleFlight::<u32, u32>::default();
        let cancelled =
            tokio::time::timeout(std::time::Duration::from_millis(10), flights.run(&1, std::future::pending)).await;
        assert!(cancelled.is_err(), "the leader was dropped while its work was pending");
        assert_eq!(flights.in_flight(), 0, "an abandoned flight is forgotten");
        assert_eq!(flights.run(&1, || async { 3 }).await, 3, "and the next call runs its own work");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiting_follower() {
        let flights = SingleFlight::<u32, u32>::default();
        let runs = AtomicUsize::new(0);
        let mut leader = Box::pin(flights.run(&1, std::future::pending));
        assert!(!poll_once(&mut leader), "the leader is inside its work");
        let mut follower = Box::pin(flights.run(&1, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            5
        }));
        assert!(!poll_once(&mut follower), "the follower waits on the leader");
        drop(leader);
        // A caller arriving now joins the follower's flight rather than starting another.
        let mut latecomer = Box::pin(flights.run(&1, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            6
        }));
        assert!(!poll_once(&mut latecomer));
        assert_eq!(follower.await, 5, "the follower ran its own work");
        assert_eq!(latecomer.await, 5, "and shared it");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_flight_whose_every_caller_was_cancelled_leaves_no_entry() {
        let flights = SingleFlight::<u32, u32>::default();
        for leader_goes_first in [true, false] {
            let mut leader = Box::pin(flights.run(&1, std::future::pending));
            let mut follower = Box::pin(flights.run(&1, std::future::pending));
            assert!(!poll_once(&mut leader) && !poll_once(&mut follower));
            assert_eq!(flights.in_flight(), 1);
            if leader_goes_first {
                drop(leader);
                // The follower becomes the leader before it too is cancelled.
                assert!(!poll_once(&mut follower));
                assert_eq!(flights.in_flight(), 1, "the follower still holds the flight");
                drop(follower);
            } else {
                drop(follower);
                drop(leader);
            }
            assert_eq!(flights.in_flight(), 0, "leader first: {leader_goes_first}");
        }
    }
}
