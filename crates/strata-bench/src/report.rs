//! The run's results as one serialisable model (the `--json` schema, see SCHEMA.md), and its
//! renderings as a human summary table and a CSV time series.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::engine::SecondSample;
use crate::histogram::{LatencyHistogram, LatencySummary, PercentilePoint};
use crate::metrics::ServerMetrics;
use crate::progress::{fmt_bytes, fmt_us};
use crate::slo::SloResult;
use crate::stats::{EndpointStats, ErrorKind, ScheduleStats, StatsSet};

pub const SCHEMA: &str = "strata-bench/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointReport {
    pub name: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub rps: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: LatencySummary,
    /// Mean milliseconds per `Server-Timing` metric over the responses that carried it.
    pub server_timing_ms: BTreeMap<String, f64>,
    /// This endpoint's percentile curve, on the grid of the run's `latency_distribution`.
    /// Absent from reports of versions before it was added.
    #[serde(default)]
    pub latency_distribution: Vec<PercentilePoint>,
    #[serde(skip)]
    pub histogram: LatencyHistogram,
}

impl EndpointReport {
    pub fn from_stats(name: &str, stats: &EndpointStats, measured_s: f64) -> Self {
        let errors = stats.error_count();
        Self {
            name: name.to_string(),
            requests: stats.requests,
            ok: stats.requests - errors.min(stats.requests),
            errors,
            error_rate: if stats.requests > 0 { errors as f64 / stats.requests as f64 } else { 0.0 },
            errors_by_kind: ErrorKind::ALL
                .iter()
                .filter(|k| stats.errors_of(**k) > 0)
                .map(|k| (k.name().to_owned(), stats.errors_of(*k)))
                .collect(),
            rps: if measured_s > 0.0 { (stats.requests as f64 / measured_s * 10.0).round() / 10.0 } else { 0.0 },
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            latency: stats.latency.summary(),
            server_timing_ms: stats
                .server_timing
                .iter()
                .filter(|t| t.count > 0)
                .map(|t| (t.name.clone(), (t.total_ms / t.count as f64 * 1000.0).round() / 1000.0))
                .collect(),
            latency_distribution: stats.latency.distribution(),
            histogram: stats.latency.clone(),
        }
    }

    pub fn percentile_us(&self, p: f64) -> u64 {
        self.histogram.percentile_us(p)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub target: String,
    pub scenario: String,
    /// "open" or "closed".
    pub model: String,
    pub rate: Option<f64>,
    pub connections: usize,
    pub stages: Option<String>,
    pub find_max: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub users: usize,
    pub mix: Option<String>,
    pub run_id: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientReport {
    pub cores: usize,
    pub cpu_pct_mean: f64,
    pub cpu_pct_max: f64,
    pub rss_max_bytes: u64,
    /// True when the generator itself was the bottleneck (mean CPU ≥ 85% of all cores): the
    /// figures then describe the client.
    pub generator_bound: bool,
    /// Open model: the fraction of iterations sent more than 2 ms late.
    pub late_fraction: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetReport {
    pub pid: u32,
    pub samples: usize,
    pub cpu_pct_mean: f64,
    pub cpu_pct_max: f64,
    pub rss_max_bytes: u64,
    pub threads_max: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindMaxStep {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p99_us: u64,
    pub error_rate: f64,
    pub late_sends: u64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindMaxReport {
    pub p99_bound_us: u64,
    pub steps: Vec<FindMaxStep>,
    /// The highest throughput reached by a step that still followed the offered load.
    pub knee_rps: Option<f64>,
    pub stop_reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub generator_version: String,
    pub started_at_unix_ms: u64,
    pub config: RunConfig,
    pub measured_s: f64,
    pub iterations: u64,
    pub totals: EndpointReport,
    pub endpoints: Vec<EndpointReport>,
    /// Open model only.
    pub schedule: Option<ScheduleStats>,
    pub latency_distribution: Vec<PercentilePoint>,
    pub timeseries: Vec<SecondSample>,
    pub client: ClientReport,
    pub targets: Vec<TargetReport>,
    pub server: Option<ServerMetrics>,
    pub find_max: Option<FindMaxReport>,
    pub slo: Vec<SloResult>,
    /// False when an SLO was violated.
    pub passed: bool,
    /// The run was stopped early (Ctrl-C); `measured_s` ends where it stopped.
    pub interrupted: bool,
    /// `--analyze`: per load step, what the analysis reads (absent without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::probe::StepProbe>,
    /// `--analyze`: the verdict and its evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<crate::analyze::Analysis>,
}

impl Report {
    /// A report written by `--json` (this schema version, from any generator version:
    /// fields are only ever added within a version), for rendering again.
    pub fn from_json(bytes: &[u8]) -> Result<Report, String> {
        #[derive(Deserialize)]
        struct Schema {
            schema: Option<String>,
        }
        let found = serde_json::from_slice::<Schema>(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        if found.schema.as_deref() != Some(SCHEMA) {
            return Err(format!(
                "not a `strata bench --json` report of schema {SCHEMA:?} (schema: {})",
                found.schema.map_or_else(|| "missing".to_owned(), |s| format!("{s:?}"))
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("a {SCHEMA} report, but {e}"))
    }
}

/// Everything needed to build a report besides the measurements.
pub struct ReportInputs {
    pub config: RunConfig,
    pub started_at_unix_ms: u64,
    pub endpoint_names: Vec<String>,
    pub watch_pids: Vec<u32>,
    pub server: Option<ServerMetrics>,
    pub find_max: Option<FindMaxReport>,
}

pub fn build(inputs: ReportInputs, totals: &StatsSet, series: Vec<SecondSample>, measured_s: f64) -> Report {
    let endpoints: Vec<EndpointReport> = inputs
        .endpoint_names
        .iter()
        .zip(totals.endpoints.iter())
        .map(|(name, stats)| EndpointReport::from_stats(name, stats, measured_s))
        .collect();
    let all = totals.total();
    let client_points: Vec<_> = series.iter().filter_map(|s| s.client).collect();
    let cores = crate::resources::cores();
    let cpu_mean = mean(client_points.iter().map(|p| p.cpu_pct));
    let open = inputs.config.model == "open";
    let late_fraction =
        if totals.iterations > 0 { totals.schedule.late_sends as f64 / totals.iterations as f64 } else { 0.0 };
    let client = ClientReport {
        cores,
        cpu_pct_mean: cpu_mean,
        cpu_pct_max: client_points.iter().map(|p| p.cpu_pct).fold(0.0, f64::max),
        rss_max_bytes: client_points.iter().map(|p| p.rss_bytes).max().unwrap_or(0),
        generator_bound: cpu_mean >= 85.0 * cores as f64,
        late_fraction: if open { (late_fraction * 1e4).round() / 1e4 } else { 0.0 },
    };
    let targets = inputs
        .watch_pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| {
            let points: Vec<_> = series.iter().filter_map(|s| s.targets.get(i).copied().flatten()).collect();
            TargetReport {
                pid,
                samples: points.len(),
                cpu_pct_mean: mean(points.iter().map(|p| p.cpu_pct)),
                cpu_pct_max: points.iter().map(|p| p.cpu_pct).fold(0.0, f64::max),
                rss_max_bytes: points.iter().map(|p| p.rss_bytes).max().unwrap_or(0),
                threads_max: points.iter().map(|p| p.threads).max().unwrap_or(0),
            }
        })
        .collect();
    Report {
        schema: SCHEMA.to_owned(),
        generator_version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at_unix_ms: inputs.started_at_unix_ms,
        config: inputs.config,
        measured_s: (measured_s * 1000.0).round() / 1000.0,
        iterations: totals.iterations,
        totals: EndpointReport::from_stats("all", &all, measured_s),
        latency_distribution: all.latency.distribution(),
        endpoints,
        schedule: open.then_some(totals.schedule),
        timeseries: series,
        client,
        targets,
        server: inputs.server,
        find_max: inputs.find_max,
        slo: Vec::new(),
        passed: true,
        interrupted: false,
        steps: Vec::new(),
        analysis: None,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64 * 10.0).round() / 10.0 }
}

/// The human summary printed at the end of a run.
pub fn summary_text(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.config;
    let load = match (c.model.as_str(), c.find_max, &c.stages) {
        (_, true, _) => "open model, --find-max".to_string(),
        ("open", _, Some(stages)) => format!("open model, stages {stages}"),
        ("open", _, None) => {
            format!("open model at {} req/s ({} connections max)", c.rate.unwrap_or(0.0), c.connections)
        }
        _ => format!("closed model, {} connections", c.connections),
    };
    let _ = writeln!(
        out,
        "\nstrata bench: scenario `{}` against {}{}",
        c.scenario,
        c.target,
        if r.interrupted { " (interrupted)" } else { "" }
    );
    let _ = writeln!(
        out,
        "{load}; measured {:.1}s (warm-up {:.1}s); {} iterations\n",
        r.measured_s, c.warmup_s, r.iterations
    );
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>17}",
        "endpoint", "requests", "req/s", "errors", "p50", "p90", "p99", "p99.9", "max", "bytes in/out"
    );
    for e in r.endpoints.iter().chain(std::iter::once(&r.totals)) {
        if r.endpoints.len() == 1 && e.name == "all" {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>10.1} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>17}",
            truncate(&e.name, 24),
            e.requests,
            e.rps,
            e.errors,
            fmt_us(e.latency.p50_us),
            fmt_us(e.latency.p90_us),
            fmt_us(e.latency.p99_us),
            fmt_us(e.latency.p999_us),
            fmt_us(e.latency.max_us),
            format!("{}/{}", fmt_bytes(e.bytes_in), fmt_bytes(e.bytes_out)),
        );
    }
    if !r.totals.errors_by_kind.is_empty() {
        let kinds: Vec<String> = r.totals.errors_by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ =
            writeln!(out, "\nerrors: {} ({:.3}%): {}", r.totals.errors, r.totals.error_rate * 100.0, kinds.join(", "));
    }
    if let Some(s) = &r.schedule {
        let _ = writeln!(
            out,
            "\nschedule: {} late sends (>2ms behind; {} waited for a free connection), max lag {}, {} never sent",
            s.late_sends,
            s.queued_sends,
            fmt_us(s.max_lag_us),
            s.unsent
        );
        if let Some(warning) = schedule_warning(r) {
            let _ = writeln!(out, "⚠ {warning}");
        }
    }
    let _ = writeln!(
        out,
        "client: cpu mean {:.0}% max {:.0}% of {} cores, rss {}{}",
        r.client.cpu_pct_mean,
        r.client.cpu_pct_max,
        r.client.cores,
        fmt_bytes(r.client.rss_max_bytes),
        if r.client.generator_bound {
            "  ⚠ GENERATOR-BOUND: these figures measure the client, not the server"
        } else {
            ""
        }
    );
    for t in &r.targets {
        let _ = writeln!(
            out,
            "target pid {}: cpu mean {:.0}% max {:.0}%, rss max {}, threads max {}",
            t.pid,
            t.cpu_pct_mean,
            t.cpu_pct_max,
            fmt_bytes(t.rss_max_bytes),
            t.threads_max
        );
    }
    let timing: Vec<&EndpointReport> = r.endpoints.iter().filter(|e| !e.server_timing_ms.is_empty()).collect();
    if !timing.is_empty() {
        let _ = writeln!(out, "\nServer-Timing (mean ms per response):");
        for e in timing {
            let parts: Vec<String> = e.server_timing_ms.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            let _ = writeln!(out, "  {:<22} {}", truncate(&e.name, 22), parts.join("  "));
        }
    }
    if let Some(s) = &r.server {
        if s.available {
            let _ = writeln!(out, "\nserver /metrics during the run:");
            for route in &s.routes {
                let _ = writeln!(
                    out,
                    "  {:<6} {:<28} {:>4} {:>9} req  mean {:>9}  p50 {:>9}  p99 {:>9}",
                    route.method,
                    truncate(&route.route, 28),
                    route.status,
                    route.requests,
                    opt_ms(route.mean_ms),
                    opt_ms(route.p50_ms),
                    opt_ms(route.p99_ms)
                );
            }
            for db in &s.db {
                let _ = writeln!(
                    out,
                    "  db {:<30} {:>9} queries  mean {:>9}  p99 {:>9}",
                    truncate(&db.op, 30),
                    db.queries,
                    opt_ms(db.mean_ms),
                    opt_ms(db.p99_ms)
                );
            }
        } else if let Some(e) = &s.error {
            let _ = writeln!(out, "\nserver /metrics: unavailable ({e})");
        }
    }
    if let Some(f) = &r.find_max {
        let _ = writeln!(out, "\nfind-max (p99 bound {}):", fmt_us(f.p99_bound_us));
        for s in &f.steps {
            let _ = writeln!(
                out,
                "  offered {:>9.0}  achieved {:>9.1}  p99 {:>9}  errors {:.3}%  late {}  {}",
                s.offered_rps,
                s.achieved_rps,
                fmt_us(s.p99_us),
                s.error_rate * 100.0,
                s.late_sends,
                if s.passed { "ok" } else { "✗" }
            );
        }
        match f.knee_rps {
            Some(k) => {
                let _ = writeln!(out, "  knee: {k:.1} req/s ({})", f.stop_reason);
            }
            None => {
                let _ = writeln!(out, "  no step passed ({})", f.stop_reason);
            }
        }
    }
    if !r.slo.is_empty() {
        let _ = writeln!(out);
        for s in &r.slo {
            let _ = writeln!(
                out,
                "SLO {:<28} {}  (actual {})",
                s.objective,
                if s.passed { "PASS" } else { "FAIL" },
                s.actual_display
            );
        }
    }
    // Last: its final line is the verdict.
    if let Some(a) = &r.analysis
        && !r.steps.is_empty()
    {
        out.push_str(&crate::analyze::text(a, &r.steps));
    }
    out
}

/// Explains a schedule the client could not keep, if it did not; the latencies are still
/// right (counted from the intended start), but the offered load was not what was asked.
pub fn schedule_warning(r: &Report) -> Option<String> {
    let s = r.schedule?;
    if r.client.late_fraction <= 0.01 {
        return None;
    }
    let cause = if s.queued_sends * 2 >= s.late_sends {
        "every connection was busy: the server is slower than the offered rate, or --connections is too low"
    } else {
        "the client woke up late: it was short of CPU (another process on this machine, or the generator itself)"
    };
    Some(format!("{:.1}% of sends were more than 2 ms late; {cause}", r.client.late_fraction * 100.0))
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}ms")).unwrap_or_else(|| "-".to_string())
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        text.chars().take(width - 1).collect::<String>() + "…"
    }
}

/// The per-second time series: one row per second for all requests (`endpoint` = `all`) and
/// one per endpoint; resource columns sum the watched processes.
pub fn csv(r: &Report) -> String {
    let mut out = String::from(
        "t_s,endpoint,offered_rps,requests,rps,errors,p50_us,p90_us,p99_us,p999_us,max_us,bytes_in,bytes_out,client_cpu_pct,client_rss_bytes,target_cpu_pct,target_rss_bytes,target_threads\n",
    );
    for s in &r.timeseries {
        let client_cpu = s.client.map(|c| c.cpu_pct.to_string()).unwrap_or_default();
        let client_rss = s.client.map(|c| c.rss_bytes.to_string()).unwrap_or_default();
        let live: Vec<_> = s.targets.iter().flatten().collect();
        let (tcpu, trss, tthreads) = if live.is_empty() {
            (String::new(), String::new(), String::new())
        } else {
            (
                format!("{:.1}", live.iter().map(|p| p.cpu_pct).sum::<f64>()),
                live.iter().map(|p| p.rss_bytes).sum::<u64>().to_string(),
                live.iter().map(|p| p.threads).sum::<u64>().to_string(),
            )
        };
        let offered = s.offered_rps.map(|o| o.to_string()).unwrap_or_default();
        let rows = std::iter::once(("all", &s.total))
            .chain(r.endpoints.iter().map(|e| e.name.as_str()).zip(s.endpoints.iter()));
        for (name, f) in rows {
            let _ = writeln!(
                out,
                "{},{},{offered},{},{},{},{},{},{},{},{},{},{},{client_cpu},{client_rss},{tcpu},{trss},{tthreads}",
                s.t_s,
                csv_field(name),
                f.requests,
                f.rps,
                f.errors,
                f.p50_us,
                f.p90_us,
                f.p99_us,
                f.p999_us,
                f.max_us,
                f.bytes_in,
                f.bytes_out
            );
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}
