//! The open-model rate scheduler: when the n-th request is *meant* to start.
//!
//! The offered rate is piecewise linear in time (constant `--rate`, or `--stages` ramps in the
//! k6 sense: each stage moves linearly from the previous target to its own). The count of
//! requests due by time t is the integral N(t) of the rate; the n-th request is due at the t
//! where N(t) = n. Computing that directly from n (rather than accumulating intervals) keeps the
//! schedule exact over long runs and lets any worker compute any ticket's time lock-free.

use std::time::Duration;

use anyhow::{Context, bail};

/// One stage of `--stages`: ramp linearly to `target_rps` over `duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    pub target_rps: f64,
    pub duration: Duration,
}

/// Parses `"1000:10s,5000:30s,0:5s"`.
pub fn parse_stages(text: &str) -> anyhow::Result<Vec<Stage>> {
    let mut stages = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (rate, duration) =
            part.split_once(':').with_context(|| format!("stage `{part}`: expected RATE:DURATION, e.g. 1000:10s"))?;
        let target_rps: f64 = rate.trim().parse().with_context(|| format!("stage `{part}`: `{rate}` is not a rate"))?;
        if !target_rps.is_finite() || target_rps < 0.0 {
            bail!("stage `{part}`: the rate must be a non-negative number");
        }
        let duration =
            crate::args::parse_duration(duration.trim()).map_err(|e| anyhow::anyhow!("stage `{part}`: {e}"))?;
        stages.push(Stage { target_rps, duration });
    }
    if stages.is_empty() {
        bail!("--stages needs at least one RATE:DURATION stage");
    }
    Ok(stages)
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Segment {
    start_s: f64,
    duration_s: f64,
    from_rps: f64,
    to_rps: f64,
    /// Requests due before this segment starts.
    count_before: f64,
}

impl Segment {
    fn count(&self) -> f64 {
        (self.from_rps + self.to_rps) / 2.0 * self.duration_s
    }
}

/// A piecewise-linear rate over `[0, total_duration)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    segments: Vec<Segment>,
    total_s: f64,
    total_count: f64,
}

impl Schedule {
    pub fn constant(rps: f64, duration: Duration) -> Self {
        Self::from_points(rps, &[Stage { target_rps: rps, duration }])
    }

    /// Stages ramp from `start_rps` (the first stage from it, each later one from the previous
    /// target).
    pub fn from_points(start_rps: f64, stages: &[Stage]) -> Self {
        let mut segments = Vec::with_capacity(stages.len());
        let (mut t, mut count, mut from) = (0.0, 0.0, start_rps.max(0.0));
        for stage in stages {
            let segment = Segment {
                start_s: t,
                duration_s: stage.duration.as_secs_f64(),
                from_rps: from,
                to_rps: stage.target_rps.max(0.0),
                count_before: count,
            };
            t += segment.duration_s;
            count += segment.count();
            from = segment.to_rps;
            segments.push(segment);
        }
        Self { segments, total_s: t, total_count: count }
    }

    /// Prefixes `warmup` at a constant rate (the rate the schedule starts at, or the first
    /// stage's target when it ramps up from zero, since warming up at zero warms nothing).
    pub fn with_warmup(self, warmup: Duration) -> Self {
        if warmup.is_zero() {
            return self;
        }
        let rate = match self.segments.first() {
            Some(s) if s.from_rps > 0.0 => s.from_rps,
            Some(s) => s.to_rps,
            None => 0.0,
        };
        let mut stages = vec![Stage { target_rps: rate, duration: warmup }];
        stages.extend(
            self.segments
                .iter()
                .map(|s| Stage { target_rps: s.to_rps, duration: Duration::from_secs_f64(s.duration_s) }),
        );
        let first_from = self.segments.first().map_or(rate, |s| s.from_rps);
        // The warm-up segment is flat at `rate`; the original first segment keeps its own start.
        let mut out = Self::from_points(rate, &stages);
        if let Some(second) = out.segments.get_mut(1) {
            second.from_rps = first_from;
        }
        out.recount();
        out
    }

    fn recount(&mut self) {
        let mut count = 0.0;
        for s in &mut self.segments {
            s.count_before = count;
            count += s.count();
        }
        self.total_count = count;
    }

    pub fn total_duration(&self) -> Duration {
        Duration::from_secs_f64(self.total_s)
    }

    /// How many requests the schedule offers in total (the tickets with a due time inside it).
    pub fn total_requests(&self) -> u64 {
        // Ticket n is due at N⁻¹(n); tickets 0..ceil(total) fall inside [0, total).
        let c = self.total_count;
        if c <= 0.0 { 0 } else { (c - 1e-9).ceil().max(0.0) as u64 }
    }

    /// The offered rate at `t`.
    pub fn rate_at(&self, t: Duration) -> f64 {
        let t = t.as_secs_f64();
        for s in &self.segments {
            if t < s.start_s + s.duration_s {
                let f = if s.duration_s > 0.0 { (t - s.start_s) / s.duration_s } else { 0.0 };
                return s.from_rps + (s.to_rps - s.from_rps) * f;
            }
        }
        0.0
    }

    /// How many requests are due in `[0, t)`: the integral of the rate.
    pub fn count_until(&self, t: Duration) -> f64 {
        let t = t.as_secs_f64();
        let mut count = 0.0;
        for s in &self.segments {
            if t <= s.start_s {
                break;
            }
            let tau = (t - s.start_s).min(s.duration_s);
            let a = if s.duration_s > 0.0 { (s.to_rps - s.from_rps) / (2.0 * s.duration_s) } else { 0.0 };
            count = s.count_before + s.from_rps * tau + a * tau * tau;
        }
        count
    }

    /// The mean offered rate over `[from, to)`.
    pub fn offered_between(&self, from: Duration, to: Duration) -> f64 {
        let seconds = to.saturating_sub(from).as_secs_f64();
        if seconds <= 0.0 { 0.0 } else { (self.count_until(to) - self.count_until(from)) / seconds }
    }

    /// When ticket `n` (0-based) is due, as an offset from the schedule start; `None` once the
    /// schedule is exhausted.
    pub fn due(&self, n: u64) -> Option<Duration> {
        let n = n as f64;
        if n >= self.total_count - 1e-9 {
            return None;
        }
        // Segments are few (a handful of stages), so a scan beats a search.
        let s = self.segments.iter().find(|s| n < s.count_before + s.count() - 1e-9)?;
        let m = n - s.count_before;
        let a = (s.to_rps - s.from_rps) / (2.0 * s.duration_s);
        // Solve a·τ² + from·τ = m for τ ≥ 0 in the form that stays exact when a → 0 and when
        // from = 0 (the usual formula divides by a).
        let disc = (s.from_rps * s.from_rps + 4.0 * a * m).max(0.0);
        let denom = s.from_rps + disc.sqrt();
        let tau = if denom > 0.0 { 2.0 * m / denom } else { 0.0 };
        Some(Duration::from_secs_f64(s.start_s + tau.clamp(0.0, s.duration_s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn constant_rate_is_exactly_n_over_r() {
        let s = Schedule::constant(1000.0, Duration::from_secs(2));
        assert_eq!(s.total_requests(), 2000);
        for n in [0u64, 1, 7, 999, 1000, 1999] {
            let due = s.due(n).expect("inside the schedule");
            assert!((due.as_secs_f64() - n as f64 / 1000.0).abs() < 1e-9, "n={n} {due:?}");
        }
        assert_eq!(s.due(2000), None);
    }

    #[test]
    fn counts_follow_the_integral() {
        let s = Schedule::from_points(0.0, &[Stage { target_rps: 100.0, duration: Duration::from_secs(10) }]);
        assert!((s.count_until(Duration::from_secs(5)) - 125.0).abs() < 1e-9);
        assert!((s.count_until(Duration::from_secs(60)) - 500.0).abs() < 1e-9);
        assert!((s.offered_between(Duration::from_secs(4), Duration::from_secs(6)) - 50.0).abs() < 1e-9);
        assert_eq!(s.offered_between(Duration::from_secs(11), Duration::from_secs(12)), 0.0);
    }

    #[test]
    fn parses_stages() {
        let st = parse_stages("1000:10s, 5000:30s,0:500ms").expect("valid");
        assert_eq!(st.len(), 3);
        assert_eq!(st[1], Stage { target_rps: 5000.0, duration: Duration::from_secs(30) });
        assert_eq!(st[2].duration, Duration::from_millis(500));
        assert!(parse_stages("").is_err());
        assert!(parse_stages("100").is_err());
        assert!(parse_stages("-1:1s").is_err());
        assert!(parse_stages("10:forever").is_err());
    }

    #[test]
    fn ramp_from_zero_offers_the_triangle_area() {
        // 0 → 100 rps over 10 s: 500 requests, the first at t=0, spaced ever closer.
        let s = Schedule::from_points(0.0, &[Stage { target_rps: 100.0, duration: Duration::from_secs(10) }]);
        assert_eq!(s.total_requests(), 500);
        assert_eq!(s.due(0), Some(Duration::ZERO));
        // N(t) = 5 t², so ticket 125 is due at t = 5 s.
        let t = s.due(125).expect("inside").as_secs_f64();
        assert!((t - 5.0).abs() < 1e-9, "{t}");
        assert!((s.rate_at(Duration::from_secs(5)) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn warmup_prefix_runs_at_the_starting_rate() {
        let s = Schedule::constant(200.0, Duration::from_secs(1)).with_warmup(Duration::from_secs(1));
        assert_eq!(s.total_requests(), 400);
        assert!((s.due(200).expect("inside").as_secs_f64() - 1.0).abs() < 1e-9);
        let ramp = Schedule::from_points(0.0, &[Stage { target_rps: 100.0, duration: Duration::from_secs(2) }])
            .with_warmup(Duration::from_secs(1));
        // Warm-up at the first target (100 rps for 1 s), then the 0 → 100 ramp (100 requests).
        assert_eq!(ramp.total_requests(), 200);
    }

    /// Properties over random stage lists: due times never go backwards, stay inside the
    /// schedule, and the number of tickets equals the integral of the rate (rounded up).
    #[test]
    fn property_due_times_are_monotonic_and_count_matches_integral() {
        let mut rng = Rng::new(1234);
        for _case in 0..300 {
            let stages: Vec<Stage> = (0..1 + rng.below(4))
                .map(|_| Stage {
                    target_rps: if rng.below(5) == 0 { 0.0 } else { rng.below(3_000) as f64 },
                    duration: Duration::from_millis(1 + rng.below(3_000)),
                })
                .collect();
            let start = rng.below(2_000) as f64;
            let s = Schedule::from_points(start, &stages);
            let integral: f64 = {
                let mut from = start;
                stages
                    .iter()
                    .map(|st| {
                        let a = (from + st.target_rps) / 2.0 * st.duration.as_secs_f64();
                        from = st.target_rps;
                        a
                    })
                    .sum()
            };
            let total = s.total_requests();
            assert!((total as f64 - integral).abs() <= 1.0 + 1e-6, "total {total} vs {integral}");
            let mut previous = Duration::ZERO;
            for n in 0..total {
                let due = s.due(n).unwrap_or_else(|| panic!("ticket {n} of {total} has no due time: {stages:?}"));
                assert!(due + Duration::from_nanos(2) >= previous, "n={n} went backwards");
                assert!(due <= s.total_duration() + Duration::from_nanos(2));
                previous = due;
            }
            assert_eq!(s.due(total), None);
        }
    }

    /// Property: in every window of the schedule the number of due tickets follows the
    /// integral of the rate over that window to within one request.
    #[test]
    fn property_windows_follow_the_rate() {
        let mut rng = Rng::new(99);
        for _case in 0..50 {
            let r0 = rng.below(1_000) as f64;
            let r1 = rng.below(1_000) as f64;
            let s = Schedule::from_points(r0, &[Stage { target_rps: r1, duration: Duration::from_secs(4) }]);
            let dues: Vec<f64> = (0..s.total_requests()).filter_map(|n| s.due(n)).map(|d| d.as_secs_f64()).collect();
            for w in 0..4 {
                let (a, b) = (w as f64, w as f64 + 1.0);
                let in_window = dues.iter().filter(|&&t| t >= a && t < b).count() as f64;
                let ra = r0 + (r1 - r0) * a / 4.0;
                let rb = r0 + (r1 - r0) * b / 4.0;
                let expected = (ra + rb) / 2.0;
                assert!((in_window - expected).abs() <= 1.0 + 1e-6, "window {w}: {in_window} vs {expected}");
            }
        }
    }
}
