//! A circuit breaker per cache endpoint. After `failures` consecutive failed calls the
//! endpoint is *open*: calls fail at once, without touching the network, for `open_for`.
//! Then one call is let through (*half-open*); its success closes the breaker, its failure
//! opens it again. So a dead or slow cache costs each request nothing, not a timeout, and
//! a recovered one is used again without a restart.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
    /// A half-open probe is in flight.
    probing: AtomicBool,
    epoch: Instant,
}

impl Breaker {
    pub fn new(options: BreakerOptions) -> Self {
        Breaker {
            options: BreakerOptions { failures: options.failures.max(1), ..options },
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
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

    /// May a call go out now? In half-open state only one caller gets `true`.
    pub fn allow(&self) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => !self.probing.swap(true, Ordering::AcqRel),
        }
    }

    pub fn record(&self, ok: bool) -> Transition {
        if ok {
            self.consecutive_failures.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
            if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
                return Transition::Closed;
            }
            return Transition::None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_open = self.open_until_ms.load(Ordering::Acquire) != 0;
        if failures >= self.options.failures || was_open {
            self.open_until_ms.store(self.now_ms() + self.options.open_for.as_millis() as u64, Ordering::Release);
            self.probing.store(false, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_once() {
        let b = Breaker::new(BreakerOptions { failures: 3, open_for: Duration::from_secs(1) });
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(true), Transition::None, "a success resets the count");
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(false), Transition::Opened);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.allow(), "one probe goes out");
        assert!(!b.allow(), "and only one");
        // The probe fails: open again for a full period.
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(b.allow());
        assert_eq!(b.record(true), Transition::Closed);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow() && b.allow());
    }
}
