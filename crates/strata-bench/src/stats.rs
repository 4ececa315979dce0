//! Result recording and merging: per-endpoint counters and histograms, sharded so concurrent
//! workers rarely touch the same lock, and merged into interval (per-second) and whole-run
//! totals.

use parking_lot::Mutex;
use serde::Serialize;

use crate::histogram::LatencyHistogram;

/// Why a request counted as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A response whose status the step did not expect, by class.
    Status1xx,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Timeout,
    Connect,
    Protocol,
    /// The response was fine but a value the next steps need could not be captured from it.
    Capture,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Status1xx,
        ErrorKind::Status2xx,
        ErrorKind::Status3xx,
        ErrorKind::Status4xx,
        ErrorKind::Status5xx,
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::Protocol,
        ErrorKind::Capture,
    ];

    pub fn for_status(status: u16) -> Self {
        match status {
            0..=199 => ErrorKind::Status1xx,
            200..=299 => ErrorKind::Status2xx,
            300..=399 => ErrorKind::Status3xx,
            400..=499 => ErrorKind::Status4xx,
            _ => ErrorKind::Status5xx,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Status1xx => "status_1xx",
            ErrorKind::Status2xx => "status_2xx",
            ErrorKind::Status3xx => "status_3xx",
            ErrorKind::Status4xx => "status_4xx",
            ErrorKind::Status5xx => "status_5xx",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Capture => "capture",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Sum and count of one `Server-Timing` metric (e.g. `db`), in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimingSum {
    pub name: String,
    pub total_ms: f64,
    pub count: u64,
}

/// Everything recorded for one endpoint over some interval.
#[derive(Clone, Debug, Default)]
pub struct EndpointStats {
    pub latency: LatencyHistogram,
    /// Requests attempted (responses plus failures without one).
    pub requests: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub server_timing: Vec<TimingSum>,
}

impl EndpointStats {
    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    pub fn record_error(&mut self, kind: ErrorKind) {
        self.errors[kind.index()] += 1;
    }

    /// Adds one `Server-Timing` header's metrics (`app;dur=1.2, db;dur=0.3;desc="x"`).
    pub fn record_server_timing(&mut self, header: &str) {
        for entry in header.split(',') {
            let mut parts = entry.split(';');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let Some(dur) =
                parts.find_map(|p| p.trim().strip_prefix("dur=")).and_then(|d| d.trim().parse::<f64>().ok())
            else {
                continue;
            };
            match self.server_timing.iter_mut().find(|t| t.name == name) {
                Some(t) => {
                    t.total_ms += dur;
                    t.count += 1;
                }
                None => self.server_timing.push(TimingSum { name: name.to_string(), total_ms: dur, count: 1 }),
            }
        }
    }

    pub fn merge(&mut self, other: &EndpointStats) {
        self.latency.merge(&other.latency);
        self.requests += other.requests;
        for (a, b) in self.errors.iter_mut().zip(other.errors.iter()) {
            *a += b;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for t in &other.server_timing {
            match self.server_timing.iter_mut().find(|s| s.name == t.name) {
                Some(s) => {
                    s.total_ms += t.total_ms;
                    s.count += t.count;
                }
                None => self.server_timing.push(t.clone()),
            }
        }
    }

    pub fn reset(&mut self) {
        self.latency.reset();
        self.requests = 0;
        self.errors = [0; ErrorKind::ALL.len()];
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.server_timing.clear();
    }
}

/// How well an open-model run kept to its schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScheduleStats {
    /// Iterations sent more than 2 ms (`LATE_THRESHOLD_US`) after their intended start.
    pub late_sends: u64,
    /// Of those, the sends whose time had already come when a connection freed up: every
    /// connection was busy (a slow server, or too few `--connections`). The rest woke late
    /// (the generator was short of CPU).
    pub queued_sends: u64,
    /// The worst lateness seen, µs.
    pub max_lag_us: u64,
    /// Scheduled requests never sent because the run's hard stop came first.
    pub unsent: u64,
}

/// A send more than 2 ms behind schedule counts as late: tokio's timer ticks in milliseconds,
/// so anything less is the generator's own granularity, not falling behind.
pub const LATE_THRESHOLD_US: u64 = 2_000;

impl ScheduleStats {
    pub fn merge(&mut self, other: &ScheduleStats) {
        self.late_sends += other.late_sends;
        self.queued_sends += other.queued_sends;
        self.max_lag_us = self.max_lag_us.max(other.max_lag_us);
        self.unsent += other.unsent;
    }
}

/// All endpoints' statistics for one interval.
#[derive(Clone, Debug, Default)]
pub struct StatsSet {
    pub endpoints: Vec<EndpointStats>,
    pub iterations: u64,
    pub schedule: ScheduleStats,
}

impl StatsSet {
    pub fn new(endpoints: usize) -> Self {
        Self { endpoints: vec![EndpointStats::default(); endpoints], iterations: 0, schedule: ScheduleStats::default() }
    }

    pub fn merge(&mut self, other: &StatsSet) {
        if self.endpoints.len() < other.endpoints.len() {
            self.endpoints.resize(other.endpoints.len(), EndpointStats::default());
        }
        for (a, b) in self.endpoints.iter_mut().zip(other.endpoints.iter()) {
            a.merge(b);
        }
        self.iterations += other.iterations;
        self.schedule.merge(&other.schedule);
    }

    pub fn reset(&mut self) {
        self.endpoints.iter_mut().for_each(EndpointStats::reset);
        self.iterations = 0;
        self.schedule = ScheduleStats::default();
    }

    /// All endpoints folded into one.
    pub fn total(&self) -> EndpointStats {
        let mut total = EndpointStats::default();
        for e in &self.endpoints {
            total.merge(e);
        }
        total
    }
}

/// The recording side: workers lock one shard (chosen by worker id) per request. With a few
/// shards per core the locks are almost never contended, and the collector swaps each shard's
/// contents out once a second.
pub struct Recorder {
    shards: Vec<Mutex<StatsSet>>,
    endpoints: usize,
}

impl Recorder {
    pub fn new(endpoints: usize, shards: usize) -> Self {
        Self { shards: (0..shards.max(1)).map(|_| Mutex::new(StatsSet::new(endpoints))).collect(), endpoints }
    }

    pub fn shard(&self, worker: usize) -> &Mutex<StatsSet> {
        &self.shards[worker % self.shards.len()]
    }

    /// Moves everything recorded since the last call into `into`, leaving the shards empty.
    pub fn drain_into(&self, into: &mut StatsSet, spare: &mut StatsSet) {
        for shard in &self.shards {
            if spare.endpoints.len() != self.endpoints {
                *spare = StatsSet::new(self.endpoints);
            }
            {
                let mut guard = shard.lock();
                std::mem::swap(&mut *guard, spare);
            }
            into.merge(spare);
            spare.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn server_timing_is_parsed_and_averaged() {
        let mut e = EndpointStats::default();
        e.record_server_timing("app;dur=2.0, db;dur=0.5, hash;desc=\"argon2\";dur=30");
        e.record_server_timing("app;dur=4, db;dur=1.5, junk, cache;desc=miss");
        let get = |n: &str| e.server_timing.iter().find(|t| t.name == n).cloned().expect("present");
        assert_eq!(get("app"), TimingSum { name: "app".into(), total_ms: 6.0, count: 2 });
        assert_eq!(get("db").total_ms, 2.0);
        assert_eq!(get("hash").count, 1);
        assert!(e.server_timing.iter().all(|t| t.name != "junk" && t.name != "cache"));
    }

    fn random_set(rng: &mut Rng, endpoints: usize) -> StatsSet {
        let mut s = StatsSet::new(endpoints);
        for _ in 0..rng.below(200) {
            let e = &mut s.endpoints[rng.below(endpoints as u64) as usize];
            e.requests += 1;
            e.latency.record_us(1 + rng.below(1_000_000));
            e.bytes_in += rng.below(1000);
            if rng.below(10) == 0 {
                e.record_error(ErrorKind::ALL[rng.below(ErrorKind::ALL.len() as u64) as usize]);
            }
            if rng.below(3) == 0 {
                e.record_server_timing(&format!("app;dur={}", rng.below(50)));
            }
        }
        s.iterations = rng.below(100);
        s.schedule = ScheduleStats {
            late_sends: rng.below(10),
            queued_sends: rng.below(5),
            max_lag_us: rng.below(10_000),
            unsent: rng.below(3),
        };
        s
    }

    fn fingerprint(s: &StatsSet) -> Vec<(u64, Vec<u64>, u64, String, u64)> {
        s.endpoints
            .iter()
            .map(|e| {
                let mut t: Vec<_> = e.server_timing.iter().map(|t| (t.name.clone(), t.total_ms, t.count)).collect();
                t.sort_by(|a, b| a.0.cmp(&b.0));
                (e.requests, e.errors.to_vec(), e.bytes_in, format!("{:?}{t:?}", e.latency.summary()), e.latency.len())
            })
            .collect()
    }

    /// Property: merging report parts is associative and commutative, and sums every counter,
    /// so it does not matter which worker or which second a request was recorded in.
    #[test]
    fn property_merge_is_associative_commutative_and_additive() {
        let mut rng = Rng::new(2024);
        for _case in 0..60 {
            let n = 1 + rng.below(4) as usize;
            let (a, b, c) = (random_set(&mut rng, n), random_set(&mut rng, n), random_set(&mut rng, n));
            let mut left = a.clone();
            left.merge(&b);
            left.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut right = a.clone();
            right.merge(&bc);
            let mut rev = c.clone();
            rev.merge(&b);
            rev.merge(&a);
            assert_eq!(fingerprint(&left), fingerprint(&right));
            assert_eq!(fingerprint(&left), fingerprint(&rev));
            assert_eq!(left.schedule, rev.schedule);
            let requests = |s: &StatsSet| s.endpoints.iter().map(|e| e.requests).sum::<u64>();
            assert_eq!(requests(&left), requests(&a) + requests(&b) + requests(&c));
            assert_eq!(left.iterations, a.iterations + b.iterations + c.iterations);
            assert_eq!(
                left.total().error_count(),
                a.total().error_count() + b.total().error_count() + c.total().error_count()
            );
        }
    }

    #[test]
    fn recorder_drains_everything_exactly_once() {
        let recorder = Recorder::new(2, 3);
        for worker in 0..10 {
            let mut s = recorder.shard(worker).lock();
            s.endpoints[worker % 2].requests += 1;
            s.endpoints[worker % 2].latency.record_us(100);
        }
        let (mut into, mut spare) = (StatsSet::new(2), StatsSet::new(2));
        recorder.drain_into(&mut into, &mut spare);
        assert_eq!(into.endpoints[0].requests + into.endpoints[1].requests, 10);
        assert_eq!(into.total().latency.len(), 10);
        let mut again = StatsSet::new(2);
        recorder.drain_into(&mut again, &mut spare);
        assert_eq!(again.total().requests, 0);
    }
}
