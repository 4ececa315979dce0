//! Latency histograms: an HdrHistogram at microsecond resolution with 3 significant digits.
//!
//! Every latency the generator records goes through [`LatencyHistogram`], so the range, the
//! precision and the behaviour on out-of-range values are decided in one place.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency the histogram tracks exactly: an hour. Anything longer (an open-model run
/// hopelessly behind schedule) is clamped to it rather than dropped, so counts stay right.
pub const HIGHEST_TRACKABLE_US: u64 = 3_600_000_000;
/// Three significant digits: 1 µs .. 1 ms exact to the µs, 1 s to the ms, and so on.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// The percentiles every summary reports, in order.
pub const REPORTED_PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts, so this cannot fail at run time.
        let inner = Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_US, SIGNIFICANT_DIGITS)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Self { inner }
    }

    /// Records one latency in microseconds. Zero is recorded as 1 µs (the lowest discernible
    /// value) and values above an hour as an hour, so no sample is ever lost.
    pub fn record_us(&mut self, micros: u64) {
        self.inner.saturating_record(micros.max(1));
    }

    pub fn record_n_us(&mut self, micros: u64, count: u64) {
        let value = micros.clamp(1, HIGHEST_TRACKABLE_US);
        // In range after the clamp, so `record_n` cannot fail; a failure would only drop counts.
        let _ = self.inner.record_n(value, count);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both sides have identical bounds, the only way `add` can fail.
        let _ = self.inner.add(&other.inner);
    }

    pub fn reset(&mut self) {
        self.inner.reset();
    }

    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Latency at `percentile` (0..=100), in µs; 0 when empty.
    pub fn percentile_us(&self, percentile: f64) -> u64 {
        if self.inner.is_empty() {
            return 0;
        }
        self.inner.value_at_percentile(percentile)
    }

    pub fn max_us(&self) -> u64 {
        if self.inner.is_empty() { 0 } else { self.inner.max() }
    }

    pub fn min_us(&self) -> u64 {
        if self.inner.is_empty() { 0 } else { self.inner.min() }
    }

    pub fn mean_us(&self) -> f64 {
        if self.inner.is_empty() { 0.0 } else { self.inner.mean() }
    }

    pub fn stdev_us(&self) -> f64 {
        if self.inner.is_empty() { 0.0 } else { self.inner.stdev() }
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.len(),
            min_us: self.min_us(),
            mean_us: round2(self.mean_us()),
            stdev_us: round2(self.stdev_us()),
            p50_us: self.percentile_us(50.0),
            p90_us: self.percentile_us(90.0),
            p99_us: self.percentile_us(99.0),
            p999_us: self.percentile_us(99.9),
            max_us: self.max_us(),
        }
    }

    /// The percentile distribution on a "number of nines" grid, the shape HdrHistogram plots
    /// use: dense near the tail where the interesting behaviour is.
    pub fn distribution(&self) -> Vec<PercentilePoint> {
        if self.inner.is_empty() {
            return Vec::new();
        }
        let mut points = Vec::new();
        let mut previous = -1.0;
        // 0, 10, 20 … 90, 91 … 99, 99.1 … 99.9, 99.91 … up to 99.999, then 100.
        for nines in 0..=4 {
            let base = 100.0 - 100.0 / 10f64.powi(nines);
            let step = 10.0 / 10f64.powi(nines);
            for i in 0..10 {
                let p = round4(base + step * f64::from(i));
                if p >= 100.0 || p <= previous {
                    continue;
                }
                previous = p;
                points.push(PercentilePoint { percentile: p, latency_us: self.inner.value_at_percentile(p) });
            }
        }
        points.push(PercentilePoint { percentile: 100.0, latency_us: self.max_us() });
        points
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// A histogram reduced to the numbers reports show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub stdev_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = LatencyHistogram::new();
        assert_eq!(h.summary(), LatencySummary::default());
        assert!(h.distribution().is_empty());
    }

    #[test]
    fn zero_and_huge_values_are_clamped_not_lost() {
        let mut h = LatencyHistogram::new();
        h.record_us(0);
        h.record_us(u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min_us(), 1);
        assert!(h.max_us() >= HIGHEST_TRACKABLE_US);
    }

    #[test]
    fn uniform_values_give_exact_percentiles_within_precision() {
        let mut h = LatencyHistogram::new();
        for v in 1..=10_000 {
            h.record_us(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert!((4_995..=5_005).contains(&s.p50_us), "{s:?}");
        assert!((9_890..=9_910).contains(&s.p99_us), "{s:?}");
        assert!((9_990..=10_010).contains(&s.max_us), "{s:?}");
    }

    /// Property: for random samples, every reported percentile is within 0.1% (3 significant
    /// digits) of the exact order statistic of the same samples.
    #[test]
    fn property_percentiles_match_sorted_samples_within_precision() {
        let mut rng = Rng::new(0x5eed);
        for _case in 0..200 {
            let n = 1 + rng.below(2_000) as usize;
            let spread = 1 + rng.below(5_000_000);
            let mut samples: Vec<u64> = (0..n).map(|_| 1 + rng.below(spread)).collect();
            let mut h = LatencyHistogram::new();
            for &s in &samples {
                h.record_us(s);
            }
            samples.sort_unstable();
            for p in [50.0, 90.0, 99.0, 99.9, 100.0] {
                // HdrHistogram's definition: the smallest value with at least p% at or below it.
                let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
                let exact = samples[rank - 1];
                let got = h.percentile_us(p);
                let tolerance = (exact as f64 * 0.001).ceil() as u64 + 1;
                assert!(got.abs_diff(exact) <= tolerance, "p{p} n={n}: got {got}, exact {exact}");
            }
        }
    }

    /// Property: merging is the same as recording everything into one histogram, whatever the
    /// split, and is commutative.
    #[test]
    fn property_merge_equals_recording_into_one() {
        let mut rng = Rng::new(42);
        for _case in 0..100 {
            let parts = 1 + rng.below(6) as usize;
            let mut all = LatencyHistogram::new();
            let mut pieces = vec![LatencyHistogram::new(); parts];
            for _ in 0..rng.below(3_000) {
                let v = 1 + rng.below(10_000_000);
                all.record_us(v);
                pieces[rng.below(parts as u64) as usize].record_us(v);
            }
            let mut forward = LatencyHistogram::new();
            for p in &pieces {
                forward.merge(p);
            }
            let mut backward = LatencyHistogram::new();
            for p in pieces.iter().rev() {
                backward.merge(p);
            }
            assert_eq!(forward.summary(), all.summary());
            assert_eq!(backward.summary(), all.summary());
            assert_eq!(forward.distribution(), all.distribution());
        }
    }

    #[test]
    fn distribution_is_monotonic_and_ends_at_max() {
        let mut h = LatencyHistogram::new();
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            h.record_us(1 + rng.below(100_000));
        }
        let d = h.distribution();
        assert!(d.windows(2).all(|w| w[0].percentile < w[1].percentile));
        assert!(d.windows(2).all(|w| w[0].latency_us <= w[1].latency_us));
        assert_eq!(d.last().map(|p| p.latency_us), Some(h.max_us()));
    }
}
