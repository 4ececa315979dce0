//! One upstream's state: in-flight requests, peak-EWMA latency, active health, passive
//! outlier ejection and slow start. Shared by the balancer, the health checker and the
//! requests in flight; every field is read without blocking a request for long (one short
//! mutex per upstream).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Health thresholds and timings, the same for every upstream of a gateway.
#[derive(Clone, Debug)]
pub struct HealthPolicy {
    /// Consecutive passed checks that bring a down upstream up.
    pub rise: u32,
    /// Consecutive failed checks that take an up upstream down.
    pub fall: u32,
    /// Consecutive 5xx answers or connect errors that eject an upstream.
    pub eject_after: u32,
    /// The first ejection's length; the n-th lasts n times this (capped at `max_ejection`).
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the upstreams is ejected at once.
    pub max_ejected_share: f64,
    /// A (re)joining upstream's weight ramps from 10 % to full over this long.
    pub slow_start: Duration,
    /// The latency a new upstream is assumed to have until it has answered.
    pub default_rtt: Duration,
    /// Peak EWMA's decay time.
    pub ewma_decay: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            rise: 2,
            fall: 2,
            eject_after: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
            slow_start: Duration::from_secs(10),
            default_rtt: Duration::from_millis(5),
            ewma_decay: Duration::from_secs(10),
        }
    }
}

pub struct Upstream {
    /// `host:port`, as discovery named it.
    pub authority: String,
    /// The same, parsed once for the request URIs; `None` if it is not a valid one.
    pub target: Option<http::uri::Authority>,
    pub weight: u32,
    in_flight: AtomicU64,
    policy: Arc<HealthPolicy>,
    state: Mutex<State>,
    pub stats: Stats,
}

/// Counters for metrics and `/gateway/upstreams`.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub ejections: AtomicU64,
    /// Every try's time to the response head, answered or not.
    pub latency: Histogram,
}

/// Upper bounds of the latency buckets, in seconds: 250 µs … 10 s, the range from a cached
/// session check to a try timeout.
pub const LATENCY_BUCKETS: [f64; 12] = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0];

/// A fixed-bucket histogram of atomics: one `fetch_add` per observation, no lock.
#[derive(Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last slot is above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`, the total) and the sum in seconds.
    pub fn read(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        (cumulative, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

struct State {
    up: bool,
    rises: u32,
    falls: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far, decaying by one per `base_ejection` spent in service.
    ejections: u32,
    /// When the upstream last (re)joined: slow start runs from here.
    since: Instant,
    /// Peak EWMA of response time, in nanoseconds, and when it was last updated.
    rtt_ns: f64,
    rtt_at: Instant,
    last_check: Option<String>,
}

/// The upstream as `/gateway/upstreams` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    pub authority: String,
    pub weight: u32,
    pub state: &'static str,
    pub in_flight: u64,
    pub ewma_ms: f64,
    pub requests: u64,
    pub errors: u64,
    pub ejections: u64,
    pub consecutive_failures: u32,
    pub last_check_error: Option<String>,
}

impl Upstream {
    /// `seed_rtt` is the latency assumed until the first answer; a newcomer seeded with its
    /// peers' worst gets no burst from latency-aware balancing.
    pub fn new(
        authority: String,
        weight: u32,
        policy: Arc<HealthPolicy>,
        now: Instant,
        seed_rtt: Option<Duration>,
    ) -> Self {
        let rtt = seed_rtt.unwrap_or(policy.default_rtt);
        Upstream {
            target: http::uri::Authority::try_from(authority.as_str()).ok(),
            authority,
            weight: weight.max(1),
            in_flight: AtomicU64::new(0),
            state: Mutex::new(State {
                up: true,
                rises: 0,
                falls: 0,
                failures: 0,
                ejected_until: None,
                ejections: 0,
                since: now,
                rtt_ns: rtt.as_nanos() as f64,
                rtt_at: now,
                last_check: None,
            }),
            policy,
            stats: Stats::default(),
        }
    }

    /// Up by the active checks and not ejected.
    pub fn available(&self, now: Instant) -> bool {
        let s = self.state.lock();
        s.up && s.ejected_until.is_none_or(|t| t <= now)
    }

    pub fn ejected(&self, now: Instant) -> bool {
        self.state.lock().ejected_until.is_some_and(|t| t > now)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The weight now: during slow start a share of it growing from 10 % to 100 %.
    pub fn effective_weight(&self, now: Instant) -> f64 {
        let slow = self.policy.slow_start;
        let w = self.weight as f64;
        if slow.is_zero() {
            return w;
        }
        let since = {
            let s = self.state.lock();
            s.ejected_until.filter(|&t| t <= now).map_or(s.since, |t| t.max(s.since))
        };
        let ramp = now.saturating_duration_since(since).as_secs_f64() / slow.as_secs_f64();
        w * ramp.clamp(0.1, 1.0)
    }

    /// p2c's cost: peak-EWMA latency × (in-flight + 1) ÷ weight.
    pub fn cost(&self, now: Instant) -> f64 {
        let rtt = self.state.lock().rtt_ns;
        rtt * (self.in_flight() as f64 + 1.0) / self.effective_weight(now)
    }

    pub fn rtt(&self) -> Duration {
        Duration::from_nanos(self.state.lock().rtt_ns as u64)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Peak EWMA: a slower answer counts at once, faster ones pull it down gradually.
    pub fn observe(&self, elapsed: Duration, now: Instant) {
        self.stats.latency.observe(elapsed);
        let rtt = elapsed.as_nanos() as f64;
        let mut s = self.state.lock();
        if rtt > s.rtt_ns {
            s.rtt_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(s.rtt_at).as_secs_f64();
            let w = (-elapsed / self.policy.ewma_decay.as_secs_f64()).exp();
            s.rtt_ns = s.rtt_ns * w + rtt * (1.0 - w);
        }
        s.rtt_at = now;
    }

    /// A request answered below 500 (or a 5xx the upstream's own application chose, such
    /// as 500 from a handler: only 502/503/504 and connect errors count against it).
    pub fn succeeded(&self) {
        self.state.lock().failures = 0;
    }

    /// A connect error or a 502/503/504. True when this ejected the upstream; `may_eject`
    /// says whether the share cap leaves room.
    pub fn failed(&self, now: Instant, may_eject: bool) -> bool {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state.lock();
        s.failures += 1;
        if s.failures < self.policy.eject_after || s.ejected_until.is_some_and(|t| t > now) || !may_eject {
            return false;
        }
        // Time served since the last return earns back one ejection per base period.
        if let Some(back) = s.ejected_until {
            let served = now.saturating_duration_since(back).as_secs_f64();
            let earned = (served / self.policy.base_ejection.as_secs_f64()) as u32;
            s.ejections = s.ejections.saturating_sub(earned);
        }
        s.ejections += 1;
        let length = (self.policy.base_ejection * s.ejections).min(self.policy.max_ejection);
        s.ejected_until = Some(now + length);
        s.failures = 0;
        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(upstream = %self.authority, ejection_secs = length.as_secs(), "upstream ejected");
        true
    }

    /// An active check's result. Returns the new state when it changed.
    pub fn checked(&self, result: Result<(), String>, now: Instant) -> Option<bool> {
        let mut s = self.state.lock();
        match result {
            Ok(()) => {
                s.rises += 1;
                s.falls = 0;
                s.last_check = None;
                if !s.up && s.rises >= self.policy.rise {
                    s.up = true;
                    s.since = now;
                    s.failures = 0;
                    return Some(true);
                }
            }
            Err(e) => {
                s.falls += 1;
                s.rises = 0;
                s.last_check = Some(e);
                if s.up && s.falls >= self.policy.fall {
                    s.up = false;
                    return Some(false);
                }
            }
        }
        None
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let s = self.state.lock();
        let state = if !s.up {
            "down"
        } else if s.ejected_until.is_some_and(|t| t > now) {
            "ejected"
        } else if !self.policy.slow_start.is_zero()
            && now.saturating_duration_since(s.ejected_until.map_or(s.since, |t| t.max(s.since)))
                < self.policy.slow_start
        {
            "slow-start"
        } else {
            "up"
        };
        Snapshot {
            authority: self.authority.clone(),
            weight: self.weight,
            state,
            in_flight: self.in_flight(),
            ewma_ms: s.rtt_ns / 1e6,
            requests: self.stats.requests.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            ejections: self.stats.ejections.load(Ordering::Relaxed),
            consecutive_failures: s.failures,
            last_check_error: s.last_check.clone(),
        }
    }

    #[cfg(test)]
    pub fn set_down_for_test(&self) {
        self.state.lock().up = false;
    }
}

pub struct InFlight<'a>(&'a Upstream);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(policy: HealthPolicy) -> (Upstream, Instant) {
        let now = Instant::now();
        (Upstream::new("u:1".into(), 1, Arc::new(policy), now, None), now)
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let (u, now) = upstream(HealthPolicy::default());
        assert_eq!(u.checked(Err("refused".into()), now), None);
        assert_eq!(u.checked(Ok(()), now), None, "a pass in between resets the falls");
        assert_eq!(u.checked(Err("refused".into()), now), None);
        assert_eq!(u.checked(Err("refused".into()), now), Some(false));
        assert!(!u.available(now));
        assert_eq!(u.checked(Ok(()), now), None);
        assert_eq!(u.checked(Ok(()), now), Some(true));
        assert!(u.available(now));
    }

    #[test]
    fn ejections_grow_and_respect_the_cap() {
        let (u, now) = upstream(HealthPolicy::default());
        for _ in 0..4 {
            assert!(!u.failed(now, true));
        }
        assert!(u.failed(now, true), "the fifth consecutive failure ejects");
        assert!(!u.available(now) && u.available(now + Duration::from_secs(10)));
        let later = now + Duration::from_secs(11);
        for _ in 0..4 {
            u.failed(later, true);
        }
        assert!(u.failed(later, true));
        // Back after 1 s in service: the second ejection is twice the first.
        assert!(u.ejected(later + Duration::from_secs(19)) && !u.ejected(later + Duration::from_secs(21)));
        let (v, now) = upstream(HealthPolicy::default());
        for _ in 0..10 {
            assert!(!v.failed(now, false), "no ejection beyond the share cap");
        }
        assert!(v.available(now));
    }

    #[test]
    fn slow_start_ramps_the_weight() {
        let (u, now) = upstream(HealthPolicy::default());
        assert!((u.effective_weight(now) - 0.1).abs() < 1e-9);
        assert!((u.effective_weight(now + Duration::from_secs(5)) - 0.5).abs() < 1e-6);
        assert_eq!(u.effective_weight(now + Duration::from_secs(30)), 1.0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let (u, now) = upstream(HealthPolicy::default());
        u.observe(Duration::from_millis(100), now);
        assert_eq!(u.rtt(), Duration::from_millis(100));
        u.observe(Duration::from_millis(1), now + Duration::from_secs(10));
        let ms = u.rtt().as_secs_f64() * 1e3;
        // e^-1 of the old value remains.
        assert!((ms - (100.0 * (-1f64).exp() + 1.0 * (1.0 - (-1f64).exp()))).abs() < 0.5, "{ms}");
    }

    #[test]
    fn the_histogram_counts_each_try_in_its_bucket() {
        let (u, now) = upstream(HealthPolicy::default());
        for ms in [0, 2, 2, 40, 20_000] {
            u.observe(Duration::from_millis(ms), now);
        }
        let (cumulative, sum) = u.stats.latency.read();
        let at = |bound: f64| cumulative[LATENCY_BUCKETS.iter().position(|&b| b == bound).unwrap()];
        assert_eq!((at(0.00025), at(0.0025), at(0.05), at(10.0)), (1, 3, 4, 4));
        assert_eq!(cumulative.last(), Some(&5), "+Inf holds the 20 s try too");
        assert!((sum - 20.044).abs() < 1e-9, "{sum}");
    }
}
