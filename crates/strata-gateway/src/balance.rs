//! Choosing an upstream for a request: the five algorithms over a live upstream set.
//!
//! The set is an immutable snapshot ([`UpstreamSet`]) swapped whole when discovery reports a
//! change; upstreams that stay keep their `Arc<Upstream>`, and with it their health, latency
//! and in-flight count, so a change moves no state and drops no connection. Every algorithm
//! sees only the *available* upstreams (healthy and not ejected), with weights scaled down
//! during slow start; when none is available it falls back to every upstream not yet tried
//! ("panic routing": a request to a maybe-sick instance beats a certain 503).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::upstream::Upstream;

/// `STRATA_GATEWAY_ALGORITHM`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Each available upstream in turn; weights ignored.
    RoundRobin,
    /// nginx's smooth weighted round robin: 5:1:1 → a a b a c a a.
    #[default]
    Weighted,
    /// Fewest in-flight requests per unit of weight; ties by smooth weighted round robin.
    LeastConn,
    /// Power of two random choices, the cheaper by peak-EWMA latency × (in-flight + 1).
    P2cEwma,
    /// Consistent hashing on the bearer token (cache affinity); requests without one go
    /// by smooth weighted round robin.
    Hash,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "round-robin" => Algorithm::RoundRobin,
            "weighted" => Algorithm::Weighted,
            "least-conn" => Algorithm::LeastConn,
            "p2c-ewma" => Algorithm::P2cEwma,
            "hash" => Algorithm::Hash,
            other => {
                return Err(format!(
                    "unknown gateway algorithm {other:?}: expected round-robin, weighted, least-conn, p2c-ewma or hash"
                ));
            }
        })
    }
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Weighted => "weighted",
            Algorithm::LeastConn => "least-conn",
            Algorithm::P2cEwma => "p2c-ewma",
            Algorithm::Hash => "hash",
        }
    }
}

/// Points on the hash ring per unit of weight: enough that each upstream's share is within
/// a few percent of its weight's.
const POINTS_PER_WEIGHT: u32 = 160;

/// One snapshot of the upstreams and the algorithms' state over it.
pub struct UpstreamSet {
    pub upstreams: Vec<Arc<Upstream>>,
    /// Smooth WRR's current weights, by index into `upstreams`.
    current: Mutex<Vec<i64>>,
    next: AtomicUsize,
    /// (point, index), sorted by point. Built only for [`Algorithm::Hash`].
    ring: Vec<(u64, usize)>,
}

impl UpstreamSet {
    pub fn new(upstreams: Vec<Arc<Upstream>>, algorithm: Algorithm) -> Self {
        let ring = if algorithm == Algorithm::Hash { ring(&upstreams) } else { Vec::new() };
        UpstreamSet { current: Mutex::new(vec![0; upstreams.len()]), next: AtomicUsize::new(0), ring, upstreams }
    }

    /// The upstream for the next try of a request, never one in `tried` unless every
    /// upstream was. `key` is the bearer token for [`Algorithm::Hash`].
    pub fn pick(&self, algorithm: Algorithm, key: Option<&[u8]>, tried: &[usize], now: Instant) -> Option<usize> {
        let fresh = |i: &usize| !tried.contains(i);
        let mut candidates: Vec<usize> =
            (0..self.upstreams.len()).filter(fresh).filter(|&i| self.upstreams[i].available(now)).collect();
        if candidates.is_empty() {
            candidates = (0..self.upstreams.len()).filter(fresh).collect();
        }
        if candidates.is_empty() {
            return None;
        }
        if candidates.len() == 1 {
            // Still counted, so weighted sequences stay smooth when one is skipped.
            return Some(candidates[0]);
        }
        Some(match algorithm {
            Algorithm::RoundRobin => candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()],
            Algorithm::Weighted => self.smooth_wrr(&candidates, now),
            Algorithm::LeastConn => {
                // One reading per upstream: in-flight counts move under our feet, and the
                // minimum must be taken over the same numbers the ties are.
                let loads: Vec<(usize, f64)> = candidates
                    .iter()
                    .map(|&i| (i, self.upstreams[i].in_flight() as f64 / self.upstreams[i].effective_weight(now)))
                    .collect();
                let least = loads.iter().map(|&(_, l)| l).fold(f64::INFINITY, f64::min);
                let tied: Vec<usize> =
                    loads.iter().filter(|&&(_, l)| l <= least * (1.0 + 1e-9)).map(|&(i, _)| i).collect();
                if tied.len() == 1 { tied[0] } else { self.smooth_wrr(&tied, now) }
            }
            Algorithm::P2cEwma => {
                let (a, b) = two_distinct(candidates.len());
                let cost = |i: usize| self.upstreams[i].cost(now);
                let (a, b) = (candidates[a], candidates[b]);
                if cost(b) < cost(a) { b } else { a }
            }
            Algorithm::Hash => match key {
                Some(key) => self.on_ring(hash(key), &candidates).unwrap_or(candidates[0]),
                None => self.smooth_wrr(&candidates, now),
            },
        })
    }

    /// nginx's smooth weighted round robin over `candidates`: every candidate gains its
    /// weight, the one with the most is chosen and pays the total.
    fn smooth_wrr(&self, candidates: &[usize], now: Instant) -> usize {
        let mut current = self.current.lock();
        let mut total = 0i64;
        let mut best = candidates[0];
        for &i in candidates {
            // Scaled so slow start's fractional weights keep their proportions.
            let w = (self.upstreams[i].effective_weight(now) * 1000.0) as i64;
            current[i] += w;
            total += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }

    /// The first ring point at or after `point` that belongs to a candidate.
    fn on_ring(&self, point: u64, candidates: &[usize]) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|&(p, _)| p < point);
        (0..self.ring.len()).map(|k| self.ring[(start + k) % self.ring.len()].1).find(|i| candidates.contains(i))
    }
}

fn ring(upstreams: &[Arc<Upstream>]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, u) in upstreams.iter().enumerate() {
        for point in 0..u.weight.max(1) * POINTS_PER_WEIGHT {
            ring.push((hash(format!("{}#{point}", u.authority).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A hash that is the same in every gateway process and release, so several gateways send
/// one token to the same instance.
pub fn hash(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Two different indexes below `n` (n ≥ 2), uniformly.
fn two_distinct(n: usize) -> (usize, usize) {
    let a = random_below(n);
    let b = random_below(n - 1);
    (a, if b >= a { b + 1 } else { b })
}

/// xorshift64*, one state per thread: the choice needs to be uniform, not unpredictable.
fn random_below(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(Instant::now().elapsed().as_nanos() as u64);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize) % n
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::HealthPolicy;
    use std::time::Duration;

    fn set(weights: &[u32], algorithm: Algorithm) -> UpstreamSet {
        let policy = Arc::new(HealthPolicy { slow_start: Duration::ZERO, ..HealthPolicy::default() });
        let now = Instant::now();
        let upstreams = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Upstream::new(format!("10.0.0.{i}:80"), w, policy.clone(), now, None)))
            .collect();
        UpstreamSet::new(upstreams, algorithm)
    }

    fn names(seq: &[usize]) -> String {
        seq.iter().map(|&i| ((b'a' + i as u8) as char).to_string()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn weighted_is_nginx_smooth_wrr() {
        let s = set(&[5, 1, 1], Algorithm::Weighted);
        let now = Instant::now();
        let seq: Vec<usize> = (0..7).map(|_| s.pick(Algorithm::Weighted, None, &[], now).unwrap()).collect();
        assert_eq!(names(&seq), "a a b a c a a");
    }

    #[test]
    fn every_algorithm_shares_by_weight_over_many_picks() {
        let now = Instant::now();
        for (algorithm, weights, expect) in [
            (Algorithm::RoundRobin, [5, 1, 1], [1.0 / 3.0; 3]),
            (Algorithm::Weighted, [5, 1, 1], [5.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0]),
            (Algorithm::LeastConn, [5, 1, 1], [5.0 / 7.0, 1.0 / 7.0, 1.0 / 7.0]),
            (Algorithm::P2cEwma, [1, 1, 1], [1.0 / 3.0; 3]),
        ] {
            let s = set(&weights, algorithm);
            let mut counts = [0usize; 3];
            let n = 7000;
            for _ in 0..n {
                counts[s.pick(algorithm, None, &[], now).unwrap()] += 1;
            }
            for (i, &c) in counts.iter().enumerate() {
                let share = c as f64 / n as f64;
                assert!(
                    (share - expect[i]).abs() < 0.03,
                    "{algorithm:?}: upstream {i} got {share:.3}, want {:.3}",
                    expect[i]
                );
            }
        }
    }

    #[test]
    fn least_conn_prefers_the_idle_and_divides_by_weight() {
        let s = set(&[1, 1, 2], Algorithm::LeastConn);
        let now = Instant::now();
        let _busy = (s.upstreams[0].begin(), s.upstreams[0].begin(), s.upstreams[2].begin());
        // a: 2/1, b: 0/1 (idle), c: 1/2.
        assert_eq!(s.pick(Algorithm::LeastConn, None, &[], now), Some(1));
        let _b = (s.upstreams[1].begin(), s.upstreams[1].begin());
        // a: 2, b: 2, c: 0.5.
        assert_eq!(s.pick(Algorithm::LeastConn, None, &[], now), Some(2));
    }

    #[test]
    fn p2c_avoids_the_slow_upstream() {
        let s = set(&[1, 1, 1], Algorithm::P2cEwma);
        let now = Instant::now();
        for _ in 0..20 {
            s.upstreams[0].observe(Duration::from_millis(200), now);
            s.upstreams[1].observe(Duration::from_millis(1), now);
            s.upstreams[2].observe(Duration::from_millis(1), now);
        }
        let mut to_slow = 0;
        for _ in 0..3000 {
            if s.pick(Algorithm::P2cEwma, None, &[], now) == Some(0) {
                to_slow += 1;
            }
        }
        // The slow one wins only when both choices are it, which they never are.
        assert_eq!(to_slow, 0);
    }

    #[test]
    fn a_retry_never_goes_to_an_upstream_already_tried() {
        let now = Instant::now();
        for algorithm in
            [Algorithm::RoundRobin, Algorithm::Weighted, Algorithm::LeastConn, Algorithm::P2cEwma, Algorithm::Hash]
        {
            let s = set(&[3, 1, 1], algorithm);
            for k in 0..200u32 {
                let key = k.to_be_bytes();
                let first = s.pick(algorithm, Some(&key), &[], now).unwrap();
                let second = s.pick(algorithm, Some(&key), &[first], now).unwrap();
                let third = s.pick(algorithm, Some(&key), &[first, second], now).unwrap();
                assert!(first != second && second != third && first != third, "{algorithm:?}");
                assert_eq!(s.pick(algorithm, Some(&key), &[0, 1, 2], now), None);
            }
        }
    }

    #[test]
    fn hashing_is_sticky_and_moves_about_one_nth_when_an_upstream_joins() {
        let now = Instant::now();
        let four = set(&[1, 1, 1, 1], Algorithm::Hash);
        let five = {
            let mut ups = four.upstreams.clone();
            let policy = Arc::new(HealthPolicy { slow_start: Duration::ZERO, ..HealthPolicy::default() });
            ups.push(Arc::new(Upstream::new("10.0.0.9:80".into(), 1, policy, now, None)));
            UpstreamSet::new(ups, Algorithm::Hash)
        };
        let keys: Vec<String> = (0..10_000).map(|k| format!("token-{k}")).collect();
        let mut moved = 0;
        let mut shares = [0usize; 5];
        for key in &keys {
            let before = four.pick(Algorithm::Hash, Some(key.as_bytes()), &[], now).unwrap();
            assert_eq!(four.pick(Algorithm::Hash, Some(key.as_bytes()), &[], now), Some(before), "sticky");
            let after = five.pick(Algorithm::Hash, Some(key.as_bytes()), &[], now).unwrap();
            shares[after] += 1;
            if after != before {
                // Only to the newcomer: no key moves between the old upstreams.
                assert_eq!(after, 4);
                moved += 1;
            }
        }
        let moved = moved as f64 / keys.len() as f64;
        assert!((moved - 0.2).abs() < 0.05, "moved {moved:.3}, want about 1/5");
        for s in shares {
            assert!((s as f64 / keys.len() as f64 - 0.2).abs() < 0.05, "shares {shares:?}");
        }
    }

    #[test]
    fn unavailable_upstreams_are_skipped_until_none_is_left() {
        let s = set(&[1, 1, 1], Algorithm::RoundRobin);
        let now = Instant::now();
        s.upstreams[0].set_down_for_test();
        s.upstreams[1].set_down_for_test();
        for _ in 0..10 {
            assert_eq!(s.pick(Algorithm::RoundRobin, None, &[], now), Some(2));
        }
        // All down: panic routing to any not yet tried.
        s.upstreams[2].set_down_for_test();
        assert!(s.pick(Algorithm::RoundRobin, None, &[], now).is_some());
    }

    #[test]
    fn parses_every_algorithm_name() {
        for a in [Algorithm::RoundRobin, Algorithm::Weighted, Algorithm::LeastConn, Algorithm::P2cEwma, Algorithm::Hash]
        {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
        }
        assert!("random".parse::<Algorithm>().unwrap_err().contains("least-conn"));
    }
}
