//! The load engine: workers that run scenario iterations under the open or closed workload
//! model, and the collector that turns their records into per-second samples and run totals.
//!
//! Open model: workers take numbered tickets from one atomic counter; ticket n is due at the
//! schedule's n-th start time, whatever the server is doing. A free worker always takes the
//! earliest ticket not yet taken, so when every connection is busy (the server stalls) tickets
//! queue, and their latency is measured from when they were *due*, not from when a connection
//! freed up: that is what avoids coordinated omission. The one exception is the wake-up slack
//! of the timer (tokio's timer has 1 ms granularity): for a ticket that was not yet due when a
//! worker took it, up to [`LATE_THRESHOLD_US`] of oversleeping is the generator's, not the
//! server's, and is not charged; beyond that it is (and the send is counted as late).
//!
//! Closed model: each worker starts its next iteration as soon as the previous one ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Client, Failure, Response, Target, Want, write_request};
use crate::histogram::LatencySummary;
use crate::progress::{Progress, fmt_us};
use crate::resources::{ProcessSampler, ResourcePoint};
use crate::rng::Rng;
use crate::scenario::{Flow, Scenario, SeedUser, Step, Vars, extract_captures};
use crate::schedule::Schedule;
use crate::stats::{ErrorKind, LATE_THRESHOLD_US, Recorder, StatsSet};

/// How load is offered in one phase.
#[derive(Clone, Debug)]
pub enum Model {
    Closed {
        connections: usize,
        duration: Duration,
    },
    /// `schedule` includes the warm-up prefix, if any.
    Open {
        schedule: Schedule,
        connections: usize,
    },
}

/// What stays the same across the phases of a run.
pub struct RunContext {
    pub target: Target,
    pub scenario: Scenario,
    pub users: Vec<SeedUser>,
    pub run_id: String,
    pub timeout: Duration,
    /// Iteration numbers, unique over the whole run (they make registered emails unique).
    pub seq: AtomicU64,
    pub watch_pids: Vec<u32>,
    /// Pre-serialised requests of steps without templates, by [flow][step].
    static_requests: Vec<Vec<Option<Vec<u8>>>>,
    /// Lower-case header names each step captures, by [flow][step].
    wanted_headers: Vec<Vec<Vec<String>>>,
}

impl RunContext {
    pub fn new(
        target: Target,
        scenario: Scenario,
        users: Vec<SeedUser>,
        run_id: String,
        timeout: Duration,
        watch_pids: Vec<u32>,
    ) -> Self {
        let mut static_requests = Vec::new();
        let mut wanted_headers = Vec::new();
        let no_vars = Vars { run: &run_id, seq: 0, worker: 0, rand: 0, user: None, captured: Vec::new() };
        for flow in &scenario.flows {
            let mut statics = Vec::new();
            let mut wanted = Vec::new();
            for step in &flow.steps {
                statics.push(if step.is_static() {
                    let mut buf = Vec::new();
                    render_request(step, &target, &no_vars, &mut buf, &mut Vec::new()).ok().map(|_| buf)
                } else {
                    None
                });
                wanted.push(
                    step.captures
                        .iter()
                        .filter_map(|c| match &c.source {
                            crate::scenario::CaptureSource::Header(h) => Some(h.clone()),
                            crate::scenario::CaptureSource::Body(_) => None,
                        })
                        .collect(),
                );
            }
            static_requests.push(statics);
            wanted_headers.push(wanted);
        }
        Self {
            target,
            scenario,
            users,
            run_id,
            timeout,
            seq: AtomicU64::new(0),
            watch_pids,
            static_requests,
            wanted_headers,
        }
    }
}

fn render_request(
    step: &Step,
    target: &Target,
    vars: &Vars<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    scratch.clear();
    scratch.extend_from_slice(target.base_path.as_bytes());
    step.path.render_into(vars, scratch)?;
    let mut headers = Vec::with_capacity(step.headers.len());
    for (name, value) in &step.headers {
        let mut v = Vec::new();
        value.render_into(vars, &mut v)?;
        headers.push((name.clone(), v));
    }
    let body = match &step.body {
        Some(t) => {
            let mut b = Vec::new();
            t.render_into(vars, &mut b)?;
            Some(b)
        }
        None => None,
    };
    write_request(out, &step.method, scratch, &target.authority, &headers, body.as_deref());
    Ok(())
}

/// The figures of one endpoint (or all) over one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct IntervalFigures {
    pub requests: u64,
    pub errors: u64,
    /// Only the kinds that occurred, as in the run totals.
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    pub rps: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl IntervalFigures {
    fn from(stats: &crate::stats::EndpointStats, seconds: f64) -> Self {
        let s: LatencySummary = stats.latency.summary();
        Self {
            requests: stats.requests,
            errors: stats.error_count(),
            errors_by_kind: ErrorKind::ALL
                .iter()
                .filter(|k| stats.errors_of(**k) > 0)
                .map(|k| (k.name().to_owned(), stats.errors_of(*k)))
                .collect(),
            rps: if seconds > 0.0 { (stats.requests as f64 / seconds * 10.0).round() / 10.0 } else { 0.0 },
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            p50_us: s.p50_us,
            p90_us: s.p90_us,
            p99_us: s.p99_us,
            p999_us: s.p999_us,
            max_us: s.max_us,
        }
    }
}

/// One second of the time series.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SecondSample {
    /// Seconds since measurement started, at the end of this interval.
    pub t_s: f64,
    /// The open model's mean offered rate over the interval (0 once the schedule has ended);
    /// `None` for the closed model.
    pub offered_rps: Option<f64>,
    /// Iterations (flows) whose first step completed in this interval; the open model's
    /// offered rate is in iterations per second (requests per second for one-step flows).
    pub iterations: u64,
    pub total: IntervalFigures,
    /// In [`Scenario::endpoints`] order.
    pub endpoints: Vec<IntervalFigures>,
    pub client: Option<ResourcePoint>,
    /// In `--watch-pid` order; `None` once a process is gone.
    pub targets: Vec<Option<ResourcePoint>>,
}

pub struct PhaseResult {
    /// The phase was cut short by the stop signal; `measured` ends where it was.
    pub interrupted: bool,
    pub totals: StatsSet,
    pub series: Vec<SecondSample>,
    /// The measured window (warm-up excluded), the denominator of every rate.
    pub measured: Duration,
}

struct Shared {
    ctx: Arc<RunContext>,
    recorder: Recorder,
    ticket: AtomicU64,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    hard_stop: Instant,
    schedule: Option<Schedule>,
    /// Becomes true when the user interrupts the run: no new work starts after that.
    stop: watch::Receiver<bool>,
}

/// Runs one phase to completion. `time_offset` shifts the time series (for multi-phase runs).
pub async fn run_phase(
    ctx: Arc<RunContext>,
    model: Model,
    warmup: Duration,
    time_offset: f64,
    progress: &mut Progress,
    label: &str,
    stop: watch::Receiver<bool>,
) -> PhaseResult {
    let endpoints = ctx.scenario.endpoints.len();
    let (connections, schedule, span) = match &model {
        Model::Closed { connections, duration } => (*connections, None, warmup + *duration),
        Model::Open { schedule, connections } => (*connections, Some(schedule.clone()), schedule.total_duration()),
    };
    let connections = connections.max(1);
    let shards = connections.min(4 * crate::resources::cores()).max(1);
    let start = Instant::now();
    let end = start + span;
    let shared = Arc::new(Shared {
        ctx: Arc::clone(&ctx),
        recorder: Recorder::new(endpoints, shards),
        ticket: AtomicU64::new(0),
        start,
        measure_from: start + warmup,
        end,
        hard_stop: end + ctx.timeout,
        schedule,
        stop: stop.clone(),
    });
    let mut stop = stop;
    let mut stopped_at: Option<Instant> = None;

    let mut set = JoinSet::new();
    for id in 0..connections {
        let shared = Arc::clone(&shared);
        set.spawn(async move { worker(shared, id).await });
    }

    let mut collector = Collector::new(&shared, endpoints, time_offset);
    let mut series = Vec::new();
    let mut next_tick = shared.measure_from + Duration::from_secs(1);
    let hard_stop = shared.hard_stop;
    if !warmup.is_zero() {
        progress.update(&format!("{label}warming up for {:.0}s", warmup.as_secs_f64()));
    }

    let timed_out = {
        let all_done = async { while set.join_next().await.is_some() {} };
        tokio::pin!(all_done);
        loop {
            tokio::select! {
                _ = &mut all_done => break false,
                Ok(()) = stop.changed(), if stopped_at.is_none() => {
                    if *stop.borrow() {
                        stopped_at = Some(Instant::now());
                        progress.say(&format!("{label}interrupted: finishing in-flight requests, then reporting"));
                    }
                }
                _ = tokio::time::sleep_until(hard_stop) => break true,
                _ = tokio::time::sleep_until(next_tick) => {
                    let now = Instant::now();
                    let sample = collector.tick(&shared, now);
                    let span = shared.end.saturating_duration_since(shared.measure_from);
                    progress.update(&status_line(label, &sample, &collector.totals, span, time_offset));
                    series.push(sample);
                    next_tick += Duration::from_secs(1);
                }
            }
        }
    };
    if timed_out {
        // Only requests stuck past the drain allowance are left; their iteration is abandoned.
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
    let now = Instant::now();
    collector.finish(&shared, now, &mut series);
    if stopped_at.is_none() && *stop.borrow() {
        // The workers saw the stop and finished before the loop above did; they stop within
        // moments of it, so now is when it happened, near enough.
        stopped_at = Some(now);
    }
    let measured_until = stopped_at.map_or(end, |at| at.min(end));
    PhaseResult {
        interrupted: stopped_at.is_some(),
        totals: collector.totals,
        series,
        measured: measured_until.saturating_duration_since(shared.measure_from),
    }
}

/// Turns the shards' records into per-second samples and run totals.
struct Collector {
    totals: StatsSet,
    spare: StatsSet,
    /// The last interval's raw statistics, kept so a short final interval can be folded into it.
    previous: Option<(Instant, StatsSet)>,
    last_tick: Instant,
    time_offset: f64,
    client: ProcessSampler,
    targets: Vec<ProcessSampler>,
}

/// A final interval shorter than this is folded into the previous second: on its own, a few
/// requests over a few milliseconds would plot as an absurd rate.
const SHORTEST_INTERVAL: Duration = Duration::from_millis(250);

impl Collector {
    fn new(shared: &Shared, endpoints: usize, time_offset: f64) -> Self {
        Self {
            totals: StatsSet::new(endpoints),
            spare: StatsSet::new(endpoints),
            previous: None,
            last_tick: shared.measure_from,
            time_offset,
            client: ProcessSampler::new(None),
            targets: shared.ctx.watch_pids.iter().map(|&p| ProcessSampler::new(Some(p))).collect(),
        }
    }

    fn drain(&mut self, shared: &Shared) -> StatsSet {
        let mut interval = StatsSet::new(self.totals.endpoints.len());
        shared.recorder.drain_into(&mut interval, &mut self.spare);
        self.totals.merge(&interval);
        interval
    }

    fn figures(&self, shared: &Shared, interval: &StatsSet, from: Instant, to: Instant) -> SecondSample {
        let seconds = to.saturating_duration_since(from).as_secs_f64();
        let offered_rps = shared.schedule.as_ref().map(|s| {
            let rate = s.offered_between(
                from.saturating_duration_since(shared.start),
                to.saturating_duration_since(shared.start),
            );
            (rate * 10.0).round() / 10.0
        });
        let t = to.saturating_duration_since(shared.measure_from).as_secs_f64() + self.time_offset;
        SecondSample {
            t_s: (t * 1000.0).round() / 1000.0,
            offered_rps,
            iterations: interval.iterations,
            total: IntervalFigures::from(&interval.total(), seconds),
            endpoints: interval.endpoints.iter().map(|e| IntervalFigures::from(e, seconds)).collect(),
            client: None,
            targets: Vec::new(),
        }
    }

    /// One regular tick: a new sample with fresh resource readings.
    fn tick(&mut self, shared: &Shared, to: Instant) -> SecondSample {
        let interval = self.drain(shared);
        let mut sample = self.figures(shared, &interval, self.last_tick, to);
        sample.client = self.client.sample();
        sample.targets = self.targets.iter_mut().map(ProcessSampler::sample).collect();
        self.previous = Some((self.last_tick, interval));
        self.last_tick = to;
        sample
    }

    /// The last drain, once every worker is done; nothing recorded is left behind.
    fn finish(&mut self, shared: &Shared, to: Instant, series: &mut Vec<SecondSample>) {
        let short = to.saturating_duration_since(self.last_tick) < SHORTEST_INTERVAL;
        if short && !series.is_empty() {
            let interval = self.drain(shared);
            if let (Some((from, mut previous)), Some(last)) = (self.previous.take(), series.last_mut()) {
                previous.merge(&interval);
                let merged = self.figures(shared, &previous, from, to);
                *last = SecondSample { client: last.client, targets: std::mem::take(&mut last.targets), ..merged };
            }
            return;
        }
        let sample = self.tick(shared, to);
        if sample.total.requests > 0 || series.is_empty() {
            series.push(sample);
        }
    }
}

fn status_line(label: &str, s: &SecondSample, totals: &StatsSet, span: Duration, time_offset: f64) -> String {
    let elapsed = s.t_s - time_offset;
    let all = totals.total();
    let error_pct = if all.requests > 0 { all.error_count() as f64 * 100.0 / all.requests as f64 } else { 0.0 };
    let past_end = elapsed > span.as_secs_f64() + 0.5;
    let offered = match s.offered_rps {
        _ if past_end => " (draining in-flight requests)".to_string(),
        Some(r) => format!(" (offered {r:.0})"),
        None => String::new(),
    };
    let cpu = s.client.map(|c| format!("  client cpu {:.0}%", c.cpu_pct)).unwrap_or_default();
    format!(
        "{label}{:>5.0}s/{:.0}s  {:>9.0} req/s{offered}  p99 {:>8}  errors {} ({error_pct:.2}%){cpu}",
        elapsed,
        span.as_secs_f64(),
        s.total.rps,
        fmt_us(s.total.p99_us),
        all.error_count(),
    )
}

/// Per-worker scratch space, reused so a steady-state request allocates (almost) nothing.
struct WorkerState {
    id: usize,
    client: Client,
    rng: Rng,
    request: Vec<u8>,
    scratch: Vec<u8>,
    response: Response,
    captured: Vec<(String, String)>,
}

async fn worker(shared: Arc<Shared>, id: usize) {
    let ctx = Arc::clone(&shared.ctx);
    let mut state = WorkerState {
        id,
        client: Client::new(ctx.target.addr, ctx.timeout),
        // Seeded by worker id only, so a given worker picks the same flow sequence every run.
        rng: Rng::new(0x9e37_79b9 ^ (id as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)),
        request: Vec::with_capacity(512),
        scratch: Vec::with_capacity(256),
        response: Response::default(),
        captured: Vec::new(),
    };
    let mut stop = shared.stop.clone();
    match &shared.schedule {
        None => loop {
            let now = Instant::now();
            if now >= shared.end || *stop.borrow() {
                break;
            }
            let flow = ctx.scenario.pick(state.rng.next_u64());
            let failure = run_iteration(&shared, &mut state, flow, now, now >= shared.measure_from).await;
            if failure == Some(Failure::Connect) {
                // Without a pause a refused connection turns the loop into a busy spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
        Some(schedule) => loop {
            let n = shared.ticket.fetch_add(1, Ordering::Relaxed);
            let Some(due) = schedule.due(n) else { break };
            let intended = shared.start + due;
            let taken_at = Instant::now();
            if taken_at >= shared.hard_stop {
                shared.recorder.shard(id).lock().schedule.unsent += 1;
                continue;
            }
            if *stop.borrow() {
                break;
            }
            let already_due = taken_at >= intended;
            if !already_due {
                tokio::select! {
                    _ = tokio::time::sleep_until(intended) => {}
                    Ok(()) = stop.changed() => if *stop.borrow() { break },
                }
            }
            let sent_at = Instant::now();
            let lag_us = sent_at.saturating_duration_since(intended).as_micros() as u64;
            let late = lag_us > LATE_THRESHOLD_US;
            let measured_from = if already_due || late { intended } else { sent_at };
            let record = intended >= shared.measure_from;
            if record {
                let mut s = shared.recorder.shard(id).lock();
                s.schedule.max_lag_us = s.schedule.max_lag_us.max(lag_us);
                if late {
                    s.schedule.late_sends += 1;
                    if already_due {
                        s.schedule.queued_sends += 1;
                    }
                }
            }
            let flow = ctx.scenario.pick(state.rng.next_u64());
            run_iteration(&shared, &mut state, flow, measured_from, record).await;
        },
    }
}

/// Runs one flow; returns the failure that ended it early, if any.
async fn run_iteration(
    shared: &Shared,
    state: &mut WorkerState,
    flow: &Flow,
    first_start: Instant,
    record: bool,
) -> Option<Failure> {
    let ctx = &shared.ctx;
    let seq = ctx.seq.fetch_add(1, Ordering::Relaxed);
    let user = if ctx.users.is_empty() { None } else { Some(&ctx.users[(seq as usize) % ctx.users.len()]) };
    let flow_index = ctx.scenario.flows.iter().position(|f| std::ptr::eq(f, flow)).unwrap_or(0);
    state.captured.clear();
    let mut vars = Vars {
        run: &ctx.run_id,
        seq,
        worker: state.id,
        rand: state.rng.next_u64(),
        user,
        captured: std::mem::take(&mut state.captured),
    };
    let mut outcome = None;
    for (i, step) in flow.steps.iter().enumerate() {
        if i > 0 && Instant::now() >= shared.hard_stop {
            break;
        }
        let request: &[u8] = match &ctx.static_requests[flow_index][i] {
            Some(bytes) => bytes,
            None => {
                if let Err(_missing) = render_request(step, &ctx.target, &vars, &mut state.request, &mut state.scratch)
                {
                    if record {
                        let mut s = shared.recorder.shard(state.id).lock();
                        if i == 0 {
                            s.iterations += 1;
                        }
                        s.endpoints[step.endpoint].requests += 1;
                        s.endpoints[step.endpoint].record_error(ErrorKind::Capture);
                    }
                    break;
                }
                &state.request
            }
        };
        let want = Want {
            body: step.needs_body(),
            headers: &ctx.wanted_headers[flow_index][i],
            head_request: step.method == "HEAD",
        };
        let sent_at = Instant::now();
        let start = if i == 0 { first_start.min(sent_at) } else { sent_at };
        let result = state.client.send(request, want, &mut state.response).await;
        let done = Instant::now();
        let mut ok = result.is_ok() && step.is_success(state.response.status);
        let mut capture_failed = false;
        if ok
            && !step.captures.is_empty()
            && extract_captures(step, &state.response.body, &state.response.headers, &mut vars.captured).is_err()
        {
            ok = false;
            capture_failed = true;
        }
        if record {
            let mut s = shared.recorder.shard(state.id).lock();
            if i == 0 {
                s.iterations += 1;
            }
            let e = &mut s.endpoints[step.endpoint];
            e.requests += 1;
            e.bytes_out += request.len() as u64;
            match result {
                Ok(()) => {
                    e.latency.record_us(done.saturating_duration_since(start).as_micros() as u64);
                    e.bytes_in += state.response.bytes_in;
                    if !state.response.server_timing.is_empty() {
                        e.record_server_timing(&state.response.server_timing);
                    }
                    if capture_failed {
                        e.record_error(ErrorKind::Capture);
                    } else if !ok {
                        e.record_error(ErrorKind::for_status(state.response.status));
                    }
                }
                Err(failure) => e.record_error(match failure {
                    Failure::Timeout => ErrorKind::Timeout,
                    Failure::Connect => ErrorKind::Connect,
                    Failure::Protocol => ErrorKind::Protocol,
                }),
            }
        }
        if let Err(failure) = result {
            outcome = Some(failure);
            break;
        }
        if !ok {
            // Later steps depend on this one's success (and its captured values).
            break;
        }
    }
    state.captured = vars.captured;
    outcome
}
