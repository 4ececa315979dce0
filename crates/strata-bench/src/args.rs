//! The command line of `strata bench` and the small parsers behind its flag values.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// `strata bench`: measure a Strata deployment (or any HTTP/1.1 server) under load.
#[derive(Args, Clone, Debug)]
#[command(about = "Load-test a Strata API: open/closed workload models, latency percentiles, resource use, reports")]
pub struct BenchArgs {
    /// Base URL of the target (plain HTTP/1.1).
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "STRATA_BENCH_TARGET")]
    pub target: String,

    /// Built-in scenario (session-check, get-user, login, register, mixed, journey, http) or the
    /// path of a TOML scenario file.
    #[arg(long, default_value = "session-check")]
    pub scenario: String,

    /// Open model: start requests at this many per second on a fixed schedule, whatever the
    /// server does; latency counts from the intended start. With --stages or --find-max it is
    /// the starting rate.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// Closed model: this many connections, each sending its next request when the previous
    /// one finished. With --rate (or --stages) it caps the open model's connection pool instead
    /// (default 128).
    #[arg(long, short = 'c', value_name = "C")]
    pub connections: Option<usize>,

    /// Open model with ramps, k6-style: each RATE:DURATION stage moves linearly from the
    /// previous rate (--rate, else 0) to RATE. Example: "1000:10s,5000:30s,0:5s".
    #[arg(long, value_name = "STAGES")]
    pub stages: Option<String>,

    /// Step the open-model rate up (by --find-max-growth per step of --duration) until
    /// throughput stops following the offered load, errors exceed 1% or p99 crosses
    /// --find-max-p99; report the knee.
    #[arg(long)]
    pub find_max: bool,

    /// Rate multiplier between --find-max steps.
    #[arg(long, default_value_t = 1.5, value_name = "FACTOR")]
    pub find_max_growth: f64,

    /// p99 bound for --find-max (default: the --slo p99 bound if any, else 100ms).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub find_max_p99: Option<Duration>,

    /// Stop --find-max once the offered rate would pass this (a run below the knee: "healthy
    /// within the tested range" is then a possible verdict).
    #[arg(long, value_name = "R")]
    pub find_max_until: Option<f64>,

    /// After the run, name what limits the system (generator, network, server_cpu,
    /// server_memory, db_pool, db_server, cache, app_lock, app_blocking, none, abstain) with
    /// the evidence, per step of --find-max (or the whole run). Needs /metrics and, for the
    /// server's CPU and memory, --watch-pid.
    #[arg(long)]
    pub analyze: bool,

    /// Measured duration (per step with --find-max; ignored with --stages, whose stages set it).
    #[arg(long, short = 'd', default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Unmeasured warm-up before the measured duration.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Per-request timeout; also how long in-flight requests may drain after the end.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Users (with a session each) seeded through the API before the run, for the scenarios
    /// that need them.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub users: usize,

    /// Concurrent requests while seeding users.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub seed_concurrency: usize,

    /// Users that already exist, instead of seeding: one per line, `ID TOKEN [EMAIL
    /// PASSWORD]` separated by spaces or tabs (a database seeded in bulk, e.g. 10 million
    /// users, by bench/replicas.sh).
    #[arg(long, value_name = "FILE", conflicts_with = "users")]
    pub users_file: Option<std::path::PathBuf>,

    /// Flow weights for multi-flow scenarios, e.g. "session-check=80,get-user=15,login=4,register=1".
    #[arg(long, value_name = "WEIGHTS")]
    pub mix: Option<String>,

    /// `http` scenario: request path (and query).
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,

    /// `http` scenario: request method.
    #[arg(long, default_value = "GET", value_name = "M")]
    pub method: String,

    /// `http` scenario: extra header, repeatable: --header 'K: V'.
    #[arg(long = "header", short = 'H', value_name = "K: V")]
    pub headers: Vec<String>,

    /// `http` scenario: request body read from this file.
    #[arg(long, value_name = "F")]
    pub body_file: Option<PathBuf>,

    /// Sample CPU %, RSS and threads of this process every second from /proc (repeatable).
    #[arg(long = "watch-pid", value_name = "PID")]
    pub watch_pids: Vec<u32>,

    /// Do not scrape the target's /metrics before and after the run.
    #[arg(long)]
    pub no_metrics: bool,

    /// Service-level objectives; the run exits with status 3 naming each one violated.
    /// Example: "p99<5ms,errors<0.1%,rps>10000" (also p50, p90, p99.9, max, mean; prefix
    /// ENDPOINT: to scope one, e.g. "login:p99<80ms").
    #[arg(long, value_name = "OBJECTIVES")]
    pub slo: Option<String>,

    /// Write the full report as JSON (schema: crates/strata-bench/SCHEMA.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report with plots.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Write the per-second time series as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// No live progress line (the summary is still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `strata analyze REPORT.json`.
#[derive(Args, Clone, Debug)]
pub struct AnalyzeArgs {
    /// A report written by `strata bench --analyze --json FILE`.
    pub report: PathBuf,

    /// Write the report, with the new analysis, as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the HTML report, with the verdict section, here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Print only the last line (`verdict: LABEL (confidence N%)`).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Parses `250ms`, `30s`, `2m`, `1h`, `1.5s`, `500us`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration (try 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!("`{other}` is not a duration unit (use us, ms, s, m or h)"));
        }
    };
    if !seconds.is_finite() || !(0.0..=365.0 * 86_400.0).contains(&seconds) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `--mix "a=80,b=20"` into (flow, weight) pairs.
pub fn parse_mix(text: &str) -> Result<Vec<(String, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (name, weight) =
                part.split_once('=').ok_or_else(|| format!("mix entry `{part}`: expected FLOW=WEIGHT"))?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("mix entry `{part}`: weight must be a whole number"))?;
            Ok((name.trim().to_string(), weight))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn mix() {
        assert_eq!(parse_mix("a=80, b = 20"), Ok(vec![("a".to_string(), 80), ("b".to_string(), 20)]));
        assert!(parse_mix("a").is_err());
        assert!(parse_mix("a=x").is_err());
    }
}
