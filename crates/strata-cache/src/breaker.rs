//! A circuit breaker per cache endpoint. After `failures` consecutive failed calls the
//! endpoint is *open*: calls fail at once, without touching the network, for `open_for`.
//! Then one call is let through (*half-open*); its success closes the breaker, its failure
//! opens it again. So a dead or slow cache costs each request nothing, not a timeout, and
//! a recovered one is used again without a restart.
//!
//! Permission to call is a [`Permit`] held for the duration of the call, not a flag the
//! caller promises to clear: a call whose future is dropped mid-flight (client gone, an
//! outer timeout) drops its permit too, so a cancelled probe frees the half-open slot
//! instead of leaving the breaker refusing every call forever.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerOptions {
    pub failures: u32,
    pub open_for: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        BreakerOptions { failures: 5, open_for: Duration::from_secs(1) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

/// What a recorded outcome changed, so the caller can report transitions once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

pub struct Breaker {
    options: BreakerOptions,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker stays open; 0 when closed.
    open_until_ms: AtomicU64,
    /// The ticket of the half-open probe in flight; 0 when none. A ticket rather than a
    /// flag so that a stale permit can only release its own probe, never a newer one.
    probe: AtomicU64,
    last_ticket: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(options: BreakerOptions) -> Self {
        Breaker {
            options: BreakerOptions { failures: options.failures.max(1), ..options },
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe: AtomicU64::new(0),
            last_ticket: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 always means "closed".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn state(&self) -> State {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            State::Closed
        } else if self.now_ms() < until {
            State::Open
        } else {
            State::HalfOpen
        }
    }

    /// May a call go out now? In half-open state only one caller gets a permit. The call's
    /// outcome is reported through [`Permit::record`].
    pub fn allow(&self) -> Option<Permit<'_>> {
        match self.state() {
            State::Closed => Some(Permit { breaker: self, probe: None }),
            State::Open => None,
            State::HalfOpen => {
                let ticket = self.last_ticket.fetch_add(1, Ordering::Relaxed) + 1;
                self.probe
                    .compare_exchange(0, ticket, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                    .then_some(Permit { breaker: self, probe: Some(ticket) })
            }
        }
    }

    fn record(&self, ok: bool) -> Transition {
        if ok {
            self.consecutive_failures.store(0, Ordering::Release);
            self.probe.store(0, Ordering::Release);
            if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
                return Transition::Closed;
            }
            return Transition::None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_open = self.open_until_ms.load(Ordering::Acquire) != 0;
        if failures >= self.options.failures || was_open {
            self.open_until_ms.store(self.now_ms() + self.options.open_for.as_millis() as u64, Ordering::Release);
            self.probe.store(0, Ordering::Release);
            if !was_open {
                return Transition::Opened;
            }
        }
        Transition::None
    }

    pub fn is_degraded(&self) -> bool {
        self.state() != State::Closed
    }
}

/// One call's permission to go out. Report its outcome with [`Permit::record`].
#[must_use = "a call's outcome must be recorded, or its probe slot is released unjudged"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// `Some` for the half-open probe.
    probe: Option<u64>,
}

impl Permit<'_> {
    pub fn record(mut self, ok: bool) -> Transition {
        // The outcome settles the probe itself; Drop must not touch the slot again.
        self.probe = None;
        self.breaker.record(ok)
    }
}

impl Drop for Permit<'_> {
    /// A probe dropped without an outcome was cancelled from outside (client gone, caller's
    /// own deadline), which says nothing about the server: the endpoint's deadline already
    /// turns a slow server into a recorded failure. So the slot is only released, not
    /// counted as a failure, and the next caller probes at once. Counting it would let
    /// impatient clients keep a healthy server's breaker open; a slow server still costs
    /// at most one call at a time, as the half-open state intends.
    fn drop(&mut self) {
        if let Some(ticket) = self.probe {
            let _ = self.breaker.probe.compare_exchange(ticket, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(b: &Breaker, ok: bool) -> Transition {
        b.allow().expect("a call may go out").record(ok)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_once() {
        let b = Breaker::new(BreakerOptions { failures: 3, open_for: Duration::from_secs(1) });
        assert_eq!(outcome(&b, false), Transition::None);
        assert_eq!(outcome(&b, true), Transition::None, "a success resets the count");
        assert_eq!(outcome(&b, false), Transition::None);
        assert_eq!(outcome(&b, false), Transition::None);
        assert_eq!(outcome(&b, false), Transition::Opened);
        assert_eq!(b.state(), State::Open);
        assert!(b.allow().is_none());
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.allow().expect("one probe goes out");
        assert!(b.allow().is_none(), "and only one");
        // The probe fails: open again for a full period.
        assert_eq!(probe.record(false), Transition::None);
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(outcome(&b, true), Transition::Closed);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow().is_some() && b.allow().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_the_half_open_slot() {
        let b = Breaker::new(BreakerOptions { failures: 1, open_for: Duration::from_secs(1) });
        assert_eq!(outcome(&b, false), Transition::Opened);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let probe_call = async {
            let permit = b.allow().expect("the probe goes out");
            std::future::pending::<()>().await;
            permit.record(true)
        };
        assert!(tokio::time::timeout(Duration::from_millis(50), probe_call).await.is_err(), "the probe was cancelled");
        assert_eq!(b.state(), State::HalfOpen, "a cancelled probe is no verdict on the server");
        let next = b.allow().expect("the next caller probes");
        assert!(b.allow().is_none(), "still one probe at a time");
        assert_eq!(next.record(true), Transition::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_probe_cannot_release_a_newer_one() {
        let b = Breaker::new(BreakerOptions { failures: 1, open_for: Duration::from_secs(1) });
        let slow_call = b.allow().expect("closed");
        assert_eq!(outcome(&b, false), Transition::Opened);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let first_probe = b.allow().expect("probe");
        // A call from before the breaker opened fails late and reopens it.
        assert_eq!(slow_call.record(false), Transition::None);
        tokio::time::advance(Duration::from_millis(1100)).await;
        let second_probe = b.allow().expect("a new period, a new probe");
        drop(first_probe);
        assert!(b.allow().is_none(), "the second probe still holds the slot");
        assert_eq!(second_probe.record(true), Transition::Closed);
    }
}
