//! Readings taken at the edges of each load step for `--analyze`: CPU time, scheduler run
//! delay, major faults and memory of the target and of the generator itself, the CPU and
//! memory each may use (affinity and cgroup limits), system pressure (PSI), and the target's
//! `/metrics` (pool waits, cache lookups, Tokio busy time, requests in flight). Two readings
//! make a [`StepProbe`]: rates and per-request costs over the step.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::metrics::Scrape;

const TICKS_PER_SECOND: f64 = 100.0;

/// One process at one instant.
#[derive(Clone, Copy, Debug, Default)]
struct ProcReading {
    cpu_s: f64,
    run_delay_s: f64,
    majflt: u64,
    rss_bytes: u64,
}

fn read_proc(pid: Option<u32>) -> Option<ProcReading> {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // A killed process not yet reaped by its parent is a zombie: it uses nothing any more.
    if matches!(f.first(), Some(&"Z" | &"X")) {
        return None;
    }
    let majflt: u64 = f.get(9)?.parse().ok()?;
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // Per thread: the process file only covers the main thread. Field 2 is the time spent
    // runnable but waiting for a CPU (ns).
    let mut run_delay_ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("{dir}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                run_delay_ns += text.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Some(ProcReading {
        cpu_s: ticks as f64 / TICKS_PER_SECOND,
        run_delay_s: run_delay_ns as f64 / 1e9,
        majflt,
        rss_bytes: rss_kb * 1024,
    })
}

/// What a process may use: CPUs it may run on (affinity, then the cgroup's CPU quota) and
/// its memory cgroup's limit, with that cgroup's limit-hit counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_cores: f64,
    /// The cgroup's memory limit, if one is set.
    pub memory_bytes: Option<u64>,
    /// Times the memory limit was hit (cgroup v1 `memory.failcnt`, v2 `memory.events` max).
    #[serde(skip)]
    pub memory_limit_hits: u64,
    /// Periods the CPU quota throttled the cgroup (`cpu.stat` nr_throttled).
    #[serde(skip)]
    pub cpu_throttled: u64,
}

fn cgroup_dirs(pid: Option<u32>, controller: &str) -> Vec<String> {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
    let Ok(text) = std::fs::read_to_string(format!("{dir}/cgroup")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if controllers.is_empty() {
            out.push(format!("/sys/fs/cgroup{path}"));
        } else if controllers.split(',').any(|c| c == controller) {
            out.push(format!("/sys/fs/cgroup/{controller}{path}"));
            out.push(format!("/sys/fs/cgroup/{controllers}{path}"));
        }
    }
    out
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_limits(pid: Option<u32>) -> Limits {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
    let affinity = std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| cpu_list_len(v.trim())))
        .filter(|n| *n > 0)
        .unwrap_or_else(crate::resources::cores) as f64;
    let mut limits = Limits { cpu_cores: affinity, ..Limits::default() };
    for cg in cgroup_dirs(pid, "cpu") {
        // v1: cfs_quota_us / cfs_period_us (-1 = none); v2: cpu.max "QUOTA PERIOD" or "max".
        let quota =
            match (read_number(&format!("{cg}/cpu.cfs_quota_us")), read_number(&format!("{cg}/cpu.cfs_period_us"))) {
                (Some(q), Some(p)) if p > 0 => Some(q as f64 / p as f64),
                _ => std::fs::read_to_string(format!("{cg}/cpu.max")).ok().and_then(|t| {
                    let mut it = t.split_whitespace();
                    let q: f64 = it.next()?.parse().ok()?;
                    let p: f64 = it.next()?.parse().ok()?;
                    (p > 0.0).then_some(q / p)
                }),
            };
        if let Some(q) = quota.filter(|q| *q > 0.0) {
            limits.cpu_cores = limits.cpu_cores.min(q);
        }
        if let Ok(stat) = std::fs::read_to_string(format!("{cg}/cpu.stat")) {
            limits.cpu_throttled = stat
                .lines()
                .find_map(|l| l.strip_prefix("nr_throttled "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(limits.cpu_throttled);
        }
    }
    for cg in cgroup_dirs(pid, "memory") {
        let limit =
            read_number(&format!("{cg}/memory.limit_in_bytes")).or_else(|| read_number(&format!("{cg}/memory.max")));
        // v1 reports "no limit" as a huge page-rounded number.
        if let Some(l) = limit.filter(|l| *l < (1 << 60)) {
            limits.memory_bytes = Some(limits.memory_bytes.map_or(l, |m: u64| m.min(l)));
        }
        let hits = read_number(&format!("{cg}/memory.failcnt")).or_else(|| {
            std::fs::read_to_string(format!("{cg}/memory.events"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|v| v.trim().parse().ok())
        });
        if let Some(h) = hits {
            limits.memory_limit_hits = limits.memory_limit_hits.max(h);
        }
    }
    limits
}

/// `0-3,6,8-9` → 7.
fn cpu_list_len(list: &str) -> usize {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().unwrap_or(0).saturating_sub(a.trim().parse().unwrap_or(0)) + 1,
            None => 1,
        })
        .sum()
}

/// `total=` of the `some` line of /proc/pressure/RESOURCE, µs.
fn psi_total(resource: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok()?;
    text.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Everything read at one step edge.
#[derive(Clone, Debug)]
pub struct Snapshot {
    at: Instant,
    client: Option<ProcReading>,
    client_limits: Limits,
    target: Option<ProcReading>,
    target_limits: Option<Limits>,
    psi_cpu_us: Option<u64>,
    psi_memory_us: Option<u64>,
    pub metrics: Option<Scrape>,
}

impl Snapshot {
    /// Reads the generator (this process), the first watched target pid, if any, and the
    /// system; `metrics` is the target's /metrics at this edge.
    pub fn take(target_pid: Option<u32>, metrics: Option<Scrape>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            client: read_proc(None),
            client_limits: read_limits(None),
            target: target_pid.and_then(|p| read_proc(Some(p))),
            target_limits: target_pid.map(|p| read_limits(Some(p))),
            psi_cpu_us: psi_total("cpu"),
            psi_memory_us: psi_total("memory"),
            metrics,
        }
    }
}

/// The server-side figures of one step, from two /metrics scrapes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStep {
    /// Requests the server finished in the step (from its histogram counts).
    pub requests: f64,
    /// Mean time inside the server per request, ms.
    pub mean_ms: f64,
    /// Storage calls per request, and the time connections were held per request, ms.
    pub db_calls_per_request: f64,
    /// False when the store counts no pool acquisitions (SQLite, in-process): its query
    /// time is then the server's own CPU.
    #[serde(default)]
    pub pooled_store: bool,
    pub db_ms_per_request: f64,
    /// Mean time a connection was held per call (the call's cost net of its pool wait), ms.
    pub db_call_ms: f64,
    /// Pool waits per request (ms) and per acquire (ms); the pool's size at the end.
    pub pool_wait_ms_per_request: f64,
    pub pool_wait_ms_per_acquire: f64,
    pub pool_size: f64,
    /// Callers queued for a connection at the step's end.
    pub pool_waiting: f64,
    /// Cache lookups answered from the cache / all lookups (None: no lookups).
    pub cache_hit_ratio: Option<f64>,
    pub cache_lookups_per_request: f64,
    /// Busy time of the Tokio workers over the step / (workers × step).
    pub runtime_busy: Option<f64>,
    pub runtime_workers: f64,
    /// Requests in flight inside the server (gauge at the step's end, minus the scrape).
    pub in_flight: Option<f64>,
    /// Requests waiting for a password-hashing slot at the step's end.
    pub hash_queue: f64,
}

/// One load step, as `--analyze` sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepProbe {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Mean latency as the client measured it, ms.
    pub mean_ms: f64,
    pub error_rate: f64,
    /// Client-side concurrency by Little's law: achieved × mean latency.
    pub client_in_flight: f64,
    /// Generator CPU (cores) and what it may use; sends more than 2 ms late, as a fraction,
    /// and the share of those that waited for a free connection (the rest woke late).
    pub client_cpu_cores: f64,
    pub client_cpu_limit: f64,
    pub late_fraction: f64,
    pub late_queued_share: f64,
    pub max_lag_ms: f64,
    /// Target process (first --watch-pid): CPU (cores), its limit, CPU-seconds per request,
    /// scheduler run delay (s per s: threads waiting for a CPU), major faults per second,
    /// RSS and memory limit, limit hits and CPU-quota throttling in the step.
    pub target_cpu_cores: Option<f64>,
    pub target_cpu_limit: Option<f64>,
    pub cpu_ms_per_request: Option<f64>,
    pub target_run_delay: Option<f64>,
    pub target_majflt_per_s: Option<f64>,
    pub target_rss_bytes: Option<u64>,
    pub target_memory_limit: Option<u64>,
    pub target_memory_limit_hits: Option<u64>,
    pub target_cpu_throttled: Option<u64>,
    /// System pressure stall (PSI `some`), fraction of the step.
    pub psi_cpu: Option<f64>,
    pub psi_memory: Option<f64>,
    pub server: Option<ServerStep>,
}

/// The fields of a step the load itself decides (rates, latencies, schedule keeping).
pub struct LoadFigures {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub mean_us: f64,
    pub error_rate: f64,
    /// Requests completed in the step (the denominator of per-request costs).
    pub requests: u64,
    pub iterations: u64,
    pub late_sends: u64,
    pub queued_sends: u64,
    pub max_lag_us: u64,
}

fn counter_delta(before: &Scrape, after: &Scrape, name: &str, filter: impl Fn(&[(String, String)]) -> bool) -> f64 {
    after
        .series
        .iter()
        .filter(|(_, (n, labels, _))| n == name && filter(labels))
        .map(|(key, (_, _, v))| v - before.series.get(key).map_or(0.0, |s| s.2))
        .sum()
}

fn gauge(scrape: &Scrape, name: &str, filter: impl Fn(&[(String, String)]) -> bool) -> Option<f64> {
    let values: Vec<f64> =
        scrape.series.values().filter(|(n, labels, _)| n == name && filter(labels)).map(|s| s.2).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn has(labels: &[(String, String)], key: &str, value: &str) -> bool {
    labels.iter().any(|(k, v)| k == key && v == value)
}

fn server_step(before: &Scrape, after: &Scrape, seconds: f64) -> Option<ServerStep> {
    let not_metrics = |l: &[(String, String)]| !has(l, "route", "/metrics");
    let requests = counter_delta(before, after, "strata_http_request_duration_seconds_count", not_metrics);
    if requests <= 0.0 {
        return None;
    }
    let http_s = counter_delta(before, after, "strata_http_request_duration_seconds_sum", not_metrics);
    let db_calls = counter_delta(before, after, "strata_db_query_duration_seconds_count", |_| true);
    let db_s = counter_delta(before, after, "strata_db_query_duration_seconds_sum", |_| true);
    let wait_s = counter_delta(before, after, "strata_db_pool_wait_seconds_total", |_| true);
    let acquires = counter_delta(before, after, "strata_db_pool_acquires_total", |_| true);
    let hold_s = counter_delta(before, after, "strata_db_pool_hold_seconds_total", |_| true);
    let lookups = counter_delta(before, after, "strata_cache_lookups_total", |_| true);
    let hits = counter_delta(before, after, "strata_cache_lookups_total", |l| {
        has(l, "outcome", "hit") || has(l, "outcome", "negative_hit")
    });
    let busy_s = counter_delta(before, after, "strata_tokio_worker_busy_seconds_total", |_| true);
    let workers = gauge(after, "strata_tokio_workers", |_| true).unwrap_or(0.0);
    // Pools that count acquisitions also time every call, whichever service made it;
    // otherwise (SQLite) the query histogram net of waits is the best measure.
    let (db_calls, net_db_s) = if acquires > 0.0 { (acquires, hold_s) } else { (db_calls, (db_s - wait_s).max(0.0)) };
    Some(ServerStep {
        requests,
        mean_ms: http_s / requests * 1e3,
        db_calls_per_request: db_calls / requests,
        pooled_store: acquires > 0.0,
        db_ms_per_request: net_db_s / requests * 1e3,
        db_call_ms: if db_calls > 0.0 { net_db_s / db_calls * 1e3 } else { 0.0 },
        pool_wait_ms_per_request: wait_s / requests * 1e3,
        pool_wait_ms_per_acquire: if acquires > 0.0 { wait_s / acquires * 1e3 } else { 0.0 },
        pool_size: gauge(after, "strata_db_pool_connections", |l| has(l, "state", "size")).unwrap_or(0.0),
        pool_waiting: gauge(after, "strata_db_pool_connections", |l| has(l, "state", "waiting")).unwrap_or(0.0),
        cache_hit_ratio: (lookups > 0.0).then(|| hits / lookups),
        cache_lookups_per_request: lookups / requests,
        runtime_busy: (workers > 0.0 && seconds > 0.0).then(|| (busy_s / (workers * seconds)).min(1.0)),
        runtime_workers: workers,
        in_flight: gauge(after, "strata_http_requests_in_flight", |_| true).map(|g| (g - 1.0).max(0.0)),
        hash_queue: gauge(after, "strata_password_hash_queue", |_| true).unwrap_or(0.0),
    })
}

/// The step between two snapshots.
pub fn step(before: &Snapshot, after: &Snapshot, load: LoadFigures) -> StepProbe {
    let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let per_s = |a: f64, b: f64| (b - a).max(0.0) / seconds;
    let (client_cpu, _) = match (before.client, after.client) {
        (Some(a), Some(b)) => (per_s(a.cpu_s, b.cpu_s), ()),
        _ => (0.0, ()),
    };
    let target = match (before.target, after.target) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    let completed = load.requests as f64;
    let psi = |a: Option<u64>, b: Option<u64>| Some(((b? as f64 - a? as f64) / 1e6 / seconds).clamp(0.0, 1.0));
    let server = match (&before.metrics, &after.metrics) {
        (Some(a), Some(b)) => server_step(a, b, seconds),
        _ => None,
    };
    let mean_ms = load.mean_us / 1e3;
    StepProbe {
        offered_rps: load.offered_rps,
        achieved_rps: load.achieved_rps,
        seconds,
        p50_us: load.p50_us,
        p99_us: load.p99_us,
        mean_ms,
        error_rate: load.error_rate,
        client_in_flight: load.achieved_rps * mean_ms / 1e3,
        client_cpu_cores: client_cpu,
        client_cpu_limit: after.client_limits.cpu_cores,
        late_fraction: if load.iterations > 0 { load.late_sends as f64 / load.iterations as f64 } else { 0.0 },
        late_queued_share: if load.late_sends > 0 { load.queued_sends as f64 / load.late_sends as f64 } else { 0.0 },
        max_lag_ms: load.max_lag_us as f64 / 1e3,
        target_cpu_cores: target.map(|(a, b)| per_s(a.cpu_s, b.cpu_s)),
        target_cpu_limit: after.target_limits.map(|l| l.cpu_cores),
        cpu_ms_per_request: target.filter(|_| completed > 0.0).map(|(a, b)| (b.cpu_s - a.cpu_s) / completed * 1e3),
        target_run_delay: target.map(|(a, b)| per_s(a.run_delay_s, b.run_delay_s)),
        target_majflt_per_s: target.map(|(a, b)| per_s(a.majflt as f64, b.majflt as f64)),
        target_rss_bytes: target.map(|(_, b)| b.rss_bytes),
        target_memory_limit: after.target_limits.and_then(|l| l.memory_bytes),
        target_memory_limit_hits: match (before.target_limits, after.target_limits) {
            (Some(a), Some(b)) => Some(b.memory_limit_hits.saturating_sub(a.memory_limit_hits)),
            _ => None,
        },
        target_cpu_throttled: match (before.target_limits, after.target_limits) {
            (Some(a), Some(b)) => Some(b.cpu_throttled.saturating_sub(a.cpu_throttled)),
            _ => None,
        },
        psi_cpu: psi(before.psi_cpu_us, after.psi_cpu_us),
        psi_memory: psi(before.psi_memory_us, after.psi_memory_us),
        server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_len("0-3,6,8-9"), 7);
        assert_eq!(cpu_list_len("1"), 1);
        assert_eq!(cpu_list_len(""), 0);
    }

    #[test]
    fn reads_this_process_and_its_limits() {
        let r = read_proc(None).expect("/proc/self");
        assert!(r.rss_bytes > 0);
        let l = read_limits(None);
        assert!(l.cpu_cores > 0.0 && l.cpu_cores <= crate::resources::cores() as f64);
    }

    #[test]
    fn server_step_from_two_scrapes() {
        let before = crate::metrics::parse_prometheus(
            "strata_http_request_duration_seconds_count{route=\"/v1/sessions/current\"} 100\n\
             strata_http_request_duration_seconds_sum{route=\"/v1/sessions/current\"} 0.1\n\
             strata_db_query_duration_seconds_count{op=\"session\"} 100\n\
             strata_db_query_duration_seconds_sum{op=\"session\"} 0.05\n\
             strata_db_pool_wait_seconds_total 0.01\n\
             strata_db_pool_acquires_total 100\n\
             strata_tokio_worker_busy_seconds_total{worker=\"0\"} 1\n\
             strata_tokio_worker_busy_seconds_total{worker=\"1\"} 1\n",
        );
        let after = crate::metrics::parse_prometheus(
            "strata_http_request_duration_seconds_count{route=\"/v1/sessions/current\"} 1100\n\
             strata_http_request_duration_seconds_count{route=\"/metrics\"} 50\n\
             strata_http_request_duration_seconds_sum{route=\"/v1/sessions/current\"} 2.1\n\
             strata_db_query_duration_seconds_count{op=\"session\"} 1100\n\
             strata_db_query_duration_seconds_sum{op=\"session\"} 1.55\n\
             strata_db_pool_wait_seconds_total 1.01\n\
             strata_db_pool_acquires_total 1100\n\
             strata_db_pool_hold_seconds_total 0.5\n\
             strata_db_pool_connections{state=\"size\"} 1\n\
             strata_cache_lookups_total{kind=\"session\",outcome=\"hit\"} 250\n\
             strata_cache_lookups_total{kind=\"session\",outcome=\"miss\"} 750\n\
             strata_tokio_workers 2\n\
             strata_tokio_worker_busy_seconds_total{worker=\"0\"} 1.5\n\
             strata_tokio_worker_busy_seconds_total{worker=\"1\"} 1.5\n\
             strata_http_requests_in_flight 4\n",
        );
        let s = server_step(&before, &after, 1.0).expect("requests seen");
        assert_eq!(s.requests, 1000.0);
        assert!((s.mean_ms - 2.0).abs() < 1e-9);
        // 1.5 s of storage time, 1 s of it waiting for the pool.
        assert!((s.db_ms_per_request - 0.5).abs() < 1e-9);
        assert!((s.pool_wait_ms_per_acquire - 1.0).abs() < 1e-9);
        assert_eq!(s.cache_hit_ratio, Some(0.25));
        assert_eq!(s.runtime_busy, Some(0.5));
        assert_eq!(s.in_flight, Some(3.0));
        assert_eq!(s.pool_size, 1.0);
    }
}
