//! `strata bench`: Strata's load generator.
//!
//! It offers load under an open model (requests start on a fixed schedule, latency counted from
//! the intended start, so server stalls cannot hide — no coordinated omission) or a closed model
//! (N connections back to back), runs built-in or TOML-defined multi-step scenarios whose steps
//! feed values to each other, records HdrHistograms per endpoint and per second, samples its own
//! and the target's CPU/RSS from /proc, diffs the target's `/metrics`, and reports as a table,
//! JSON (SCHEMA.md), CSV and a self-contained HTML page; `--slo` turns it into a CI gate.
//!
//! This crate depends on nothing else in the workspace: it sees Strata only over HTTP, like
//! any client, so it can measure any deployment (and any other HTTP/1.1 server).

pub mod analyze;
mod args;
mod client;
mod engine;
pub mod histogram;
pub mod html;
mod metrics;
pub mod probe;
mod progress;
pub mod report;
mod resources;
mod rng;
pub mod scenario;
pub mod schedule;
mod seed;
pub mod slo;
mod stats;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

pub use args::{AnalyzeArgs, BenchArgs};
pub use engine::{IntervalFigures, SecondSample};
pub use metrics::{ServerDbOp, ServerMetrics, ServerRoute};
pub use report::Report;
pub use resources::ResourcePoint;
pub use stats::ScheduleStats;

use engine::{Model, PhaseResult, RunContext, run_phase};
use progress::Progress;
use report::{FindMaxReport, FindMaxStep, ReportInputs, RunConfig};
use schedule::Schedule;
use stats::StatsSet;

/// Exit status when the run completed but an `--slo` objective was violated.
pub const EXIT_SLO_VIOLATED: u8 = 3;

/// Default connection pool of the open model: enough to ride out a stall of a few hundred
/// milliseconds at moderate rates without the pool itself becoming the queue.
const DEFAULT_OPEN_CONNECTIONS: usize = 128;
const DEFAULT_CLOSED_CONNECTIONS: usize = 10;
const FIND_MAX_STEPS: usize = 30;

/// Runs `strata bench` and prints its summary; the exit code is non-zero when an SLO failed.
/// Ctrl-C stops the load early and still reports what was measured (a second one quits).
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let report = execute_until(args.clone(), interrupted()).await?;
    print!("{}", report::summary_text(&report));
    write_outputs(&args, &report)?;
    if report.passed {
        return Ok(ExitCode::SUCCESS);
    }
    for s in report.slo.iter().filter(|s| !s.passed) {
        eprintln!("SLO violated: {} (actual {})", s.objective, s.actual_display);
    }
    Ok(ExitCode::from(EXIT_SLO_VIOLATED))
}

/// Resolves at the first Ctrl-C; from then on a second one ends the process at once.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling available: never interrupt.
        std::future::pending::<()>().await;
    }
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

/// `strata analyze REPORT.json`: the analysis of a saved run, redone with these rules.
pub fn analyze_saved(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.report).with_context(|| format!("reading {}", args.report.display()))?;
    let mut report = Report::from_json(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", args.report.display()))?;
    if report.steps.is_empty() {
        bail!(
            "{}: no per-step measurements; record the run with `strata bench --analyze --json FILE`",
            args.report.display()
        );
    }
    let p99_bound = report.find_max.as_ref().map_or(100_000, |f| f.p99_bound_us);
    report.analysis = analyze::analyze(&report.steps, p99_bound, report.config.model == "closed");
    let Some(analysis) = &report.analysis else {
        bail!("{}: nothing to analyse", args.report.display());
    };
    if args.quiet {
        println!("verdict: {} (confidence {:.0}%)", analysis.verdict, analysis.confidence * 100.0);
    } else {
        print!("{}", analyze::text(analysis, &report.steps));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&report)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the --json, --csv and --html files a run asked for.
pub fn write_outputs(args: &BenchArgs, report: &Report) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::csv(report)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(report)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs the benchmark and returns its report without printing the summary or writing files
/// (the live progress line still goes to stderr unless `quiet`). This is what tests and other
/// tools embed; `run` is this plus the outputs and the exit status.
pub async fn execute(args: BenchArgs) -> anyhow::Result<Report> {
    execute_until(args, std::future::pending()).await
}

/// [`execute`], stopping early (and reporting what was measured so far) when `stop` resolves.
pub async fn execute_until<F>(args: BenchArgs, stop: F) -> anyhow::Result<Report>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
        // Keep the sender alive so receivers do not mistake its drop for a change.
        std::future::pending::<()>().await;
    });
    let result = execute_inner(args, stop_rx).await;
    watcher.abort();
    result
}

async fn execute_inner(args: BenchArgs, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Report> {
    let objectives = match &args.slo {
        Some(text) => slo::parse(text)?,
        None => Vec::new(),
    };
    if args.duration.is_zero() && args.stages.is_none() {
        bail!("--duration must be more than 0");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    if args.connections == Some(0) {
        bail!("--connections must be at least 1");
    }
    if args.find_max && args.stages.is_some() {
        bail!("--find-max chooses its own rates; drop --stages");
    }
    if args.find_max_until.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--find-max-until must be a positive number of requests per second");
    }
    if args.find_max && !(args.find_max_growth > 1.0 && args.find_max_growth.is_finite()) {
        bail!("--find-max-growth must be more than 1");
    }
    if args.scenario != "http" && (args.path.is_some() || !args.headers.is_empty() || args.body_file.is_some()) {
        bail!("--path, --header and --body-file describe the `http` scenario; add --scenario http");
    }
    let target = engine_target(&args.target).await?;
    let http_spec = match &args.path {
        Some(path) => Some(scenario::HttpRequestSpec {
            method: args.method.clone(),
            path: path.clone(),
            headers: args.headers.clone(),
            body: match &args.body_file {
                Some(f) => {
                    Some(std::fs::read_to_string(f).with_context(|| format!("reading --body-file {}", f.display()))?)
                }
                None => None,
            },
        }),
        None => None,
    };
    let mut scenario = scenario::resolve(&args.scenario, http_spec.as_ref())?;
    if let Some(mix) = &args.mix {
        let mix = args::parse_mix(mix).map_err(anyhow::Error::msg)?;
        scenario.apply_mix(&mix)?;
    }
    for &pid in &args.watch_pids {
        if !resources::process_exists(pid) {
            bail!("--watch-pid {pid}: no such process (or /proc/{pid} is not readable)");
        }
    }

    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // Unique per run so registered emails never collide with an earlier run's.
    let run_id = format!("{:x}{:x}", started.as_millis(), std::process::id() & 0xffff);
    let mut progress = Progress::new(args.quiet);

    let users = if let Some(file) = &args.users_file {
        seed::read_users(file)?
    } else if scenario.needs_users() {
        if args.users == 0 {
            bail!("scenario `{}` needs seeded users: --users must be at least 1", scenario.name);
        }
        seed::seed_users(&target, &run_id, args.users, args.seed_concurrency, args.timeout, &mut progress, stop.clone())
            .await?
    } else {
        Vec::new()
    };

    // Scraped after seeding, so the server-side figures cover the measured load only.
    let metrics_before = if args.no_metrics { None } else { Some(metrics::scrape(&target, args.timeout).await) };

    let endpoint_names = scenario.endpoints.clone();
    let scenario_name = scenario.name.clone();
    let ctx = Arc::new(RunContext::new(
        target.clone(),
        scenario,
        users,
        run_id.clone(),
        args.timeout,
        args.watch_pids.clone(),
    ));

    let open = args.rate.is_some() || args.stages.is_some() || args.find_max;
    let connections =
        args.connections.unwrap_or(if open { DEFAULT_OPEN_CONNECTIONS } else { DEFAULT_CLOSED_CONNECTIONS });

    let probe_pid = args.watch_pids.first().copied();
    let snapshot = {
        let (target, timeout, scrape) = (target.clone(), args.timeout, args.analyze && !args.no_metrics);
        move || {
            let target = target.clone();
            async move {
                let metrics = if scrape { metrics::scrape(&target, timeout).await.ok() } else { None };
                probe::Snapshot::take(probe_pid, metrics)
            }
        }
    };
    let mut steps = Vec::new();
    let (totals, series, measured, find_max, interrupted) = if args.find_max {
        find_max(&args, &ctx, connections, &objectives, &mut progress, &stop, &snapshot, &mut steps).await
    } else {
        let model = if let Some(stages) = &args.stages {
            let stages = schedule::parse_stages(stages)?;
            Model::Open {
                schedule: Schedule::from_points(args.rate.unwrap_or(0.0), &stages).with_warmup(args.warmup),
                connections,
            }
        } else if let Some(rate) = args.rate {
            Model::Open { schedule: Schedule::constant(rate, args.duration).with_warmup(args.warmup), connections }
        } else {
            Model::Closed { connections, duration: args.duration }
        };
        let closed = matches!(model, Model::Closed { .. });
        let before = if args.analyze { Some(snapshot().await) } else { None };
        let PhaseResult { totals, series, measured, interrupted } =
            run_phase(Arc::clone(&ctx), model, args.warmup, 0.0, &mut progress, "", stop.clone()).await;
        if let Some(before) = before {
            let achieved = totals.iterations as f64 / measured.as_secs_f64().max(1e-9);
            // The open model offered its schedule's mean rate; the closed model offers what
            // it achieves.
            let offered = match (closed, args.rate, &args.stages) {
                (true, _, _) => achieved,
                (false, Some(rate), None) => rate,
                _ => series.iter().filter_map(|s| s.offered_rps).sum::<f64>() / series.len().max(1) as f64,
            };
            steps.push(probe::step(&before, &snapshot().await, load_figures(&totals, offered, achieved)));
        }
        (totals, series, measured, None, interrupted)
    };
    progress.finish();

    let server = match metrics_before {
        None => None,
        Some(Err(e)) => Some(metrics::ServerMetrics { available: false, error: Some(e), ..Default::default() }),
        Some(Ok(before)) => Some(match metrics::scrape(&target, args.timeout).await {
            Ok(after) => metrics::diff(&before, &after),
            Err(e) => metrics::ServerMetrics { available: false, error: Some(e), ..Default::default() },
        }),
    };

    let config = RunConfig {
        target: target.url.clone(),
        scenario: scenario_name,
        model: if open { "open" } else { "closed" }.to_owned(),
        rate: args.rate,
        connections,
        stages: args.stages.clone(),
        find_max: args.find_max,
        duration_s: if args.stages.is_some() { measured.as_secs_f64() } else { args.duration.as_secs_f64() },
        warmup_s: args.warmup.as_secs_f64(),
        timeout_s: args.timeout.as_secs_f64(),
        users: ctx.users.len(),
        mix: args.mix.clone(),
        run_id,
    };
    let inputs = ReportInputs {
        config,
        started_at_unix_ms: started.as_millis() as u64,
        endpoint_names,
        watch_pids: args.watch_pids.clone(),
        server,
        find_max,
    };
    let mut report = report::build(inputs, &totals, series, measured.as_secs_f64());
    report.interrupted = interrupted;
    if args.analyze {
        report.analysis = analyze::analyze(&steps, p99_bound(&args, &objectives).as_micros() as u64, !open);
        report.steps = steps;
    }
    report.slo = objectives.iter().map(|o| o.evaluate(&report.totals, &report.endpoints)).collect();
    report.passed = report.slo.iter().all(|s| s.passed);
    Ok(report)
}

async fn engine_target(url: &str) -> anyhow::Result<client::Target> {
    client::Target::resolve(url).await
}

/// The p99 a step must stay within: --find-max-p99, else the --slo p99 bound, else 100 ms.
fn p99_bound(args: &BenchArgs, objectives: &[slo::Objective]) -> Duration {
    args.find_max_p99
        .or_else(|| {
            objectives
                .iter()
                .find(|o| o.endpoint.is_none() && o.metric == slo::Metric::Percentile(99.0))
                .map(|o| Duration::from_secs_f64(o.threshold / 1e6))
        })
        .unwrap_or(Duration::from_millis(100))
}

/// A step's load figures for the analysis.
fn load_figures(totals: &StatsSet, offered: f64, achieved: f64) -> probe::LoadFigures {
    let all = totals.total();
    probe::LoadFigures {
        offered_rps: (offered * 10.0).round() / 10.0,
        achieved_rps: (achieved * 10.0).round() / 10.0,
        p50_us: all.latency.percentile_us(50.0),
        p99_us: all.latency.percentile_us(99.0),
        mean_us: all.latency.mean_us(),
        error_rate: if all.requests > 0 { all.error_count() as f64 / all.requests as f64 } else { 0.0 },
        requests: all.requests,
        iterations: totals.iterations,
        late_sends: totals.schedule.late_sends,
        queued_sends: totals.schedule.queued_sends,
        max_lag_us: totals.schedule.max_lag_us,
    }
}

#[allow(clippy::too_many_arguments)]
async fn find_max<S, F>(
    args: &BenchArgs,
    ctx: &Arc<RunContext>,
    connections: usize,
    objectives: &[slo::Objective],
    progress: &mut Progress,
    stop: &tokio::sync::watch::Receiver<bool>,
    snapshot: &S,
    probes: &mut Vec<probe::StepProbe>,
) -> (StatsSet, Vec<engine::SecondSample>, Duration, Option<FindMaxReport>, bool)
where
    S: Fn() -> F,
    F: std::future::Future<Output = probe::Snapshot>,
{
    let p99_bound = p99_bound(args, objectives);
    let mut edge = if args.analyze { Some(snapshot().await) } else { None };
    let p99_bound_us = p99_bound.as_micros() as u64;
    let mut rate = args.rate.unwrap_or(100.0);
    let mut totals = StatsSet::new(ctx.scenario.endpoints.len());
    let mut series = Vec::new();
    let mut measured = Duration::ZERO;
    let mut steps: Vec<FindMaxStep> = Vec::new();
    let mut interrupted = false;
    let mut stop_reason = format!("stopped after {FIND_MAX_STEPS} steps without finding the limit");
    for step in 0..FIND_MAX_STEPS {
        let warmup = if step == 0 { args.warmup } else { Duration::ZERO };
        let schedule = Schedule::constant(rate, args.duration).with_warmup(warmup);
        let label = format!("[find-max step {} @ {rate:.0} req/s] ", step + 1);
        let phase = run_phase(
            Arc::clone(ctx),
            Model::Open { schedule, connections },
            warmup,
            measured.as_secs_f64(),
            progress,
            &label,
            stop.clone(),
        )
        .await;
        if phase.interrupted {
            // A cut-short step says nothing about whether that rate holds: keep its
            // measurements, judge nothing.
            totals.merge(&phase.totals);
            series.extend(phase.series);
            measured += phase.measured;
            stop_reason = "interrupted".to_string();
            interrupted = true;
            break;
        }
        let all = phase.totals.total();
        let seconds = phase.measured.as_secs_f64().max(1e-9);
        // The schedule offers iterations (requests, for one-step flows), so iterations have to
        // keep up. Throughput is what *completed* inside the step, from the per-second series: requests
        // still queued at the end finish during the drain and must not count as keeping up.
        let window_end = measured.as_secs_f64() + seconds + 0.25;
        let completed: u64 = phase.series.iter().filter(|s| s.t_s <= window_end).map(|s| s.iterations).sum();
        let achieved = completed as f64 / seconds;
        let error_rate = if all.requests > 0 { all.error_count() as f64 / all.requests as f64 } else { 0.0 };
        let p99 = all.latency.percentile_us(99.0);
        let mut reasons = Vec::new();
        if achieved < 0.9 * rate {
            reasons.push(format!("throughput {achieved:.0} req/s fell below 90% of the offered {rate:.0}"));
        }
        if p99 > p99_bound_us {
            reasons.push(format!("p99 {} crossed {}", progress::fmt_us(p99), progress::fmt_us(p99_bound_us)));
        }
        if error_rate > 0.01 {
            reasons.push(format!("errors {:.2}% above 1%", error_rate * 100.0));
        }
        let passed = reasons.is_empty();
        if let Some(before) = edge.take() {
            let after = snapshot().await;
            probes.push(probe::step(&before, &after, load_figures(&phase.totals, rate, achieved)));
            edge = Some(after);
        }
        steps.push(FindMaxStep {
            offered_rps: (rate * 10.0).round() / 10.0,
            achieved_rps: (achieved * 10.0).round() / 10.0,
            p99_us: p99,
            error_rate,
            late_sends: phase.totals.schedule.late_sends,
            passed,
        });
        progress.say(&format!(
            "{label}achieved {achieved:.0} req/s, p99 {}, errors {:.2}% → {}",
            progress::fmt_us(p99),
            error_rate * 100.0,
            if passed { "ok".to_string() } else { reasons.join("; ") }
        ));
        totals.merge(&phase.totals);
        series.extend(phase.series);
        measured += phase.measured;
        if !passed {
            stop_reason = reasons.join("; ");
            break;
        }
        rate *= args.find_max_growth;
        if let Some(until) = args.find_max_until
            && rate > until
        {
            stop_reason = format!("reached --find-max-until {until} req/s without finding a limit");
            break;
        }
    }
    let knee = steps
        .iter()
        .filter(|s| s.passed)
        .map(|s| s.achieved_rps)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    (totals, series, measured, Some(FindMaxReport { p99_bound_us, steps, knee_rps: knee, stop_reason }), interrupted)
}
