//! `--analyze`: after a stepped run, name what limits the system, with the evidence.
//!
//! Explainable rules over measured quantities, not a trained model. The run's steps (one per
//! `--find-max` rate, or the whole run as one) are [`StepProbe`]s; the *baseline* is the
//! first step, the *saturated* step the first one that stopped keeping up (else the last).
//! Each label gets a score in [0, 1] from its predicates, read at the saturated step and
//! compared with the baseline; the verdict is the best score, unless the evidence is too weak
//! or two labels tie (abstain). On top of the rules: the knee of achieved-vs-offered and of
//! p99-vs-offered (Kneedle), a Universal Scalability Law fit with six or more steps, and the
//! operational-law check that the named resource's demand predicts the measured plateau
//! (`X_max ≤ capacity / D`).
//!
//! Thresholds were set on severities 1 and 3 of `bench/bottlenecks/` and are reported on
//! severity 2 (bench/RESULTS.md); change them there, not here, and rerun the matrix.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::probe::StepProbe;

pub const LABELS: [&str; 11] = [
    "generator",
    "network",
    "server_cpu",
    "server_memory",
    "db_pool",
    "db_server",
    "cache",
    "app_lock",
    "app_blocking",
    "none",
    "abstain",
];

/// One predicate that fired (or was checked), with its value at the saturated step and at
/// the baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub label: String,
    pub predicate: String,
    pub value: f64,
    pub baseline: f64,
    /// How strongly it holds, 0 to 1.
    pub strength: f64,
    /// Human form, e.g. `pool wait 3.1 ms/acquire (baseline 0.0)`.
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Knee {
    /// Index into `steps` of the baseline and of the saturated step.
    pub baseline_step: usize,
    pub saturated_step: usize,
    /// The highest throughput of a step that kept up (the usable capacity).
    pub plateau_rps: f64,
    /// Kneedle on achieved-vs-offered and on p99-vs-offered: the offered rate at the knee.
    pub throughput_knee_rps: Option<f64>,
    pub latency_knee_rps: Option<f64>,
    /// Whether any step stopped keeping up (throughput, p99 or errors).
    pub saturated: bool,
}

/// Universal Scalability Law fit, X(N) = λN / (1 + σ(N−1) + κN(N−1)), over the steps'
/// client-side concurrency N (Little's law) and throughput X.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usl {
    pub lambda: f64,
    /// Contention (serialisation): locks, a one-connection pool.
    pub sigma: f64,
    /// Coherency (crosstalk): throughput falling as load grows.
    pub kappa: f64,
    /// The concurrency and throughput where the fitted curve peaks (∞ when κ ≤ 0).
    pub peak_concurrency: Option<f64>,
    pub peak_rps: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub verdict: String,
    /// 0 to 1.
    pub confidence: f64,
    pub runner_up: Option<String>,
    pub evidence: Vec<Evidence>,
    pub knee: Knee,
    pub suggestion: String,
    /// The verdict's resource: its demand per request and the throughput that predicts.
    pub predicted_max_rps: Option<f64>,
    pub usl: Option<Usl>,
    /// Every label's score, best first (the verdict may still be `abstain` or `none`).
    pub scores: Vec<(String, f64)>,
    /// The simple baselines the accuracy suite compares against.
    pub baseline_utilisation: String,
    pub baseline_demand: String,
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// 0 below `lo`, 1 above `hi`, linear between.
fn ramp(x: f64, lo: f64, hi: f64) -> f64 {
    clamp01((x - lo) / (hi - lo))
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Kneedle (Satopää et al. 2011) on a curve sampled at increasing x: normalise both axes,
/// take the difference to the diagonal, and the knee is its maximum. `concave` curves
/// (throughput flattening) use y − x, convex ones (latency shooting up) x − y.
pub fn kneedle(points: &[(f64, f64)], concave: bool) -> Option<usize> {
    if points.len() < 3 {
        return None;
    }
    let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let diff: Vec<f64> = points
        .iter()
        .map(|p| {
            let (x, y) = ((p.0 - x0) / (x1 - x0), (p.1 - y0) / (y1 - y0));
            if concave { y - x } else { x - y }
        })
        .collect();
    let (best, value) = diff.iter().enumerate().fold((0, f64::MIN), |m, (i, v)| if *v > m.1 { (i, *v) } else { m });
    // A straight line has no knee.
    (value > 0.05).then_some(best)
}

/// Least squares of N/X = a + b(N−1) + cN(N−1) (the USL, linearised): λ = 1/a, σ = b/a, κ = c/a.
pub fn fit_usl(points: &[(f64, f64)]) -> Option<Usl> {
    let rows: Vec<([f64; 3], f64)> = points
        .iter()
        .filter(|(n, x)| *n > 0.0 && *x > 0.0)
        .map(|&(n, x)| ([1.0, n - 1.0, n * (n - 1.0)], n / x))
        .collect();
    if rows.len() < 6 {
        return None;
    }
    let mut m = [[0.0; 4]; 3];
    for (r, y) in &rows {
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += r[i] * r[j];
            }
            m[i][3] += r[i] * y;
        }
    }
    // Gaussian elimination with partial pivoting on the 3×3 normal equations.
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        m.swap(col, pivot);
        if m[col][col].abs() < 1e-12 {
            return None;
        }
        let pivot_row = m[col];
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    let (a, b, c) = (m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]);
    if a <= 0.0 {
        return None;
    }
    let (sigma, kappa) = (b / a, c / a);
    let peak_n = (kappa > 0.0).then(|| ((1.0 - sigma).max(0.0) / kappa).sqrt()).filter(|n| n.is_finite());
    let usl_x = |n: f64| n / a / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0));
    Some(Usl {
        lambda: round(1.0 / a, 1),
        sigma: round(sigma, 4),
        kappa: round(kappa, 6),
        peak_concurrency: peak_n.map(|n| round(n, 1)),
        peak_rps: peak_n.map(|n| round(usl_x(n), 1)),
    })
}

/// A step keeps up when it achieved ≥ 90 % of the offered rate, p99 stayed within the
/// bound and errors within 1 %.
fn kept_up(s: &StepProbe, p99_bound_us: u64) -> bool {
    s.achieved_rps >= 0.9 * s.offered_rps && s.p99_us <= p99_bound_us && s.error_rate <= 0.01
}

struct Ctx {
    evidence: Vec<Evidence>,
}

impl Ctx {
    fn add(&mut self, label: &str, predicate: &str, value: f64, baseline: f64, strength: f64, text: String) -> f64 {
        let strength = clamp01(strength);
        self.evidence.push(Evidence {
            label: label.into(),
            predicate: predicate.into(),
            value: round(value, 4),
            baseline: round(baseline, 4),
            strength: round(strength, 3),
            text,
        });
        strength
    }
}

fn opt(x: Option<f64>) -> f64 {
    x.unwrap_or(0.0)
}

/// Analyses the steps of a run. `closed` runs are at capacity by construction (each
/// connection sends as fast as it is answered).
pub fn analyze(steps: &[StepProbe], p99_bound_us: u64, closed: bool) -> Option<Analysis> {
    let b = steps.first()?;
    let failed = steps.iter().position(|s| !kept_up(s, p99_bound_us));
    let saturated = closed || failed.is_some();
    let si = failed.unwrap_or(steps.len() - 1);
    let s = &steps[si];
    let plateau = steps.iter().filter(|s| kept_up(s, p99_bound_us)).map(|s| s.achieved_rps).fold(0.0, f64::max);
    let offered: Vec<(f64, f64)> = steps.iter().map(|s| (s.offered_rps, s.achieved_rps)).collect();
    let latency: Vec<(f64, f64)> = steps.iter().map(|s| (s.offered_rps, s.p99_us as f64)).collect();
    let knee = Knee {
        baseline_step: 0,
        saturated_step: si,
        plateau_rps: round(if plateau > 0.0 { plateau } else { s.achieved_rps }, 1),
        throughput_knee_rps: kneedle(&offered, true).map(|i| steps[i].offered_rps),
        latency_knee_rps: kneedle(&latency, false).map(|i| steps[i].offered_rps),
        saturated,
    };
    let usl = fit_usl(&steps.iter().map(|s| (s.client_in_flight, s.achieved_rps)).collect::<Vec<_>>());
    let mut c = Ctx { evidence: Vec::new() };
    let mut scores: Vec<(String, f64)> = Vec::new();

    // The generator first: if it fell behind, nothing it measured describes the server.
    let gen_util = s.client_cpu_cores / s.client_cpu_limit.max(0.01);
    let g_cpu = c.add(
        "generator",
        "generator_cpu",
        gen_util,
        b.client_cpu_cores / b.client_cpu_limit.max(0.01),
        ramp(gen_util, 0.8, 0.95),
        format!(
            "generator cpu {:.2} of {:.2} cores ({:.0}%)",
            s.client_cpu_cores,
            s.client_cpu_limit,
            gen_util * 100.0
        ),
    );
    let woke_late = s.late_fraction * (1.0 - s.late_queued_share);
    let g_lag = c.add(
        "generator",
        "send_lag",
        woke_late,
        b.late_fraction * (1.0 - b.late_queued_share),
        ramp(woke_late, 0.02, 0.10),
        format!(
            "{:.1}% of sends woke >2 ms late with a connection free (max lag {:.1} ms)",
            woke_late * 100.0,
            s.max_lag_ms
        ),
    );
    scores.push(("generator".into(), g_cpu.max(g_lag)));

    let server = s.server.clone().unwrap_or_default();
    let bserver = b.server.clone().unwrap_or_default();
    let has_server = s.server.is_some();
    let cpu_limit = s.target_cpu_limit.unwrap_or(crate::resources::cores() as f64).max(0.01);
    let cpu_util = opt(s.target_cpu_cores) / cpu_limit;
    let b_cpu_util = opt(b.target_cpu_cores) / cpu_limit;
    let busy = opt(server.runtime_busy);
    let db_share = if server.mean_ms > 0.0 { server.db_ms_per_request / server.mean_ms } else { 0.0 };
    let pool_share = if server.mean_ms > 0.0 { server.pool_wait_ms_per_request / server.mean_ms } else { 0.0 };
    // Time the client waited outside the server's own measurement (network, socket queues).
    let gap = (s.mean_ms - server.mean_ms).max(0.0);
    let b_gap = (b.mean_ms - bserver.mean_ms).max(0.0);

    // server_cpu: the process uses what it may; the demand predicts the plateau.
    let cpu = c.add(
        "server_cpu",
        "cpu_utilisation",
        cpu_util,
        b_cpu_util,
        ramp(cpu_util, 0.75, 0.92),
        format!("server cpu {:.2} of {:.2} cores ({:.0}%)", opt(s.target_cpu_cores), cpu_limit, cpu_util * 100.0),
    );
    // Busy workers at a busy CPU: computing, not blocked.
    let consistent = if busy > 0.0 {
        ramp(opt(s.target_cpu_cores) / (busy * server.runtime_workers).max(0.01), 0.4, 0.7)
    } else {
        1.0
    };
    scores.push(("server_cpu".into(), cpu * consistent));

    // server_memory: at the cgroup's limit, faulting pages back in, or under memory pressure.
    let mem_util = match (s.target_rss_bytes, s.target_memory_limit) {
        (Some(r), Some(l)) if l > 0 => r as f64 / l as f64,
        _ => 0.0,
    };
    let b_mem_util = match (b.target_rss_bytes, b.target_memory_limit) {
        (Some(r), Some(l)) if l > 0 => r as f64 / l as f64,
        _ => 0.0,
    };
    // A process killed at its memory limit (the OOM killer) leaves no reading in the step
    // it died in: the last step it was seen in tells how close it was.
    // (An RSS of 0 is a zombie, as reports of versions that did not skip them recorded it.)
    let alive = |st: &StepProbe| st.target_cpu_cores.is_some() && st.target_rss_bytes != Some(0);
    let gone = !alive(s) && alive(b);
    let seen: Vec<f64> = steps
        .iter()
        .filter(|st| alive(st))
        .filter_map(|st| Some(st.target_rss_bytes? as f64 / st.target_memory_limit.filter(|l| *l > 0)? as f64))
        .collect();
    // How close it got, or where its growth was heading: a leak kills between two readings.
    let last_seen_mem_util = match seen.as_slice() {
        [.., a, b] if b > a => b + (b - a),
        [.., b] => *b,
        [] => 0.0,
    };
    let m_rss = c.add(
        "server_memory",
        "rss_of_limit",
        mem_util,
        b_mem_util,
        ramp(mem_util, 0.8, 0.95).max(if gone { ramp(last_seen_mem_util, 0.5, 0.8) } else { 0.0 }),
        format!(
            "server rss {} of limit {}{}",
            s.target_rss_bytes.map_or("-".into(), crate::progress::fmt_bytes),
            s.target_memory_limit.map_or("none".into(), crate::progress::fmt_bytes),
            if gone {
                format!(
                    " (the process is gone; {:.0}% of its limit and growing when last seen)",
                    last_seen_mem_util * 100.0
                )
            } else {
                String::new()
            }
        ),
    );
    let majflt = opt(s.target_majflt_per_s);
    let m_flt = c.add(
        "server_memory",
        "major_faults",
        majflt,
        opt(b.target_majflt_per_s),
        ramp(majflt - opt(b.target_majflt_per_s), 20.0, 200.0),
        format!("{majflt:.0} major faults/s (baseline {:.0})", opt(b.target_majflt_per_s)),
    );
    let m_psi = c.add(
        "server_memory",
        "memory_pressure",
        opt(s.psi_memory),
        opt(b.psi_memory),
        ramp(opt(s.psi_memory), 0.02, 0.10),
        format!("memory pressure stalls {:.1}% of the time", opt(s.psi_memory) * 100.0),
    );
    let hits = s.target_memory_limit_hits.unwrap_or(0) as f64;
    let m_hits = if hits > 0.0 { 0.3 } else { 0.0 };
    scores.push(("server_memory".into(), clamp01(m_rss.max(m_flt).max(m_psi) + m_hits * m_rss.max(m_flt))));

    // db_pool: callers wait for a connection while the queries themselves stay fast.
    let wait = server.pool_wait_ms_per_acquire;
    let p_wait = c.add(
        "db_pool",
        "pool_wait_per_acquire_ms",
        wait,
        bserver.pool_wait_ms_per_acquire,
        ramp(wait / (server.db_call_ms + 0.05), 1.0, 4.0).min(ramp(pool_share, 0.2, 0.5)),
        format!(
            "pool wait {wait:.2} ms per acquire, {:.0}% of server time (baseline {:.2} ms)",
            pool_share * 100.0,
            bserver.pool_wait_ms_per_acquire
        ),
    );
    let fast = 1.0 - ramp(server.db_call_ms / (bserver.db_call_ms + 0.1), 2.0, 4.0);
    let p_fast = c.add(
        "db_pool",
        "query_time_flat",
        server.db_call_ms,
        bserver.db_call_ms,
        fast * (1.0 - ramp(server.db_call_ms, 2.0, 5.0)),
        format!(
            "db {:.3} ms per call (baseline {:.3}), pool of {:.0}",
            server.db_call_ms, bserver.db_call_ms, server.pool_size
        ),
    );
    scores.push(("db_pool".into(), p_wait * (0.5 + 0.5 * p_fast)));

    // db_server: the queries themselves are slow, or got slower with load, and dominate.
    let slow = ramp(server.db_call_ms, 0.8, 2.5).max(ramp(server.db_call_ms / (bserver.db_call_ms + 0.05), 3.0, 8.0));
    let d_slow = c.add(
        "db_server",
        "query_time",
        server.db_call_ms,
        bserver.db_call_ms,
        slow,
        format!("db {:.3} ms per call (baseline {:.3})", server.db_call_ms, bserver.db_call_ms),
    );
    let d_share = c.add(
        "db_server",
        "db_share_of_server_time",
        db_share + pool_share,
        if bserver.mean_ms > 0.0 {
            (bserver.db_ms_per_request + bserver.pool_wait_ms_per_request) / bserver.mean_ms
        } else {
            0.0
        },
        ramp(db_share + pool_share, 0.4, 0.7),
        format!(
            "storage {:.0}% of server time ({:.2} calls/request)",
            (db_share + pool_share) * 100.0,
            server.db_calls_per_request
        ),
    );
    // An in-process store (SQLite) is slow when the server's CPU is: that is server_cpu.
    let in_process_cpu = if server.pooled_store { 0.0 } else { ramp(cpu_util, 0.7, 0.9) };
    scores.push(("db_server".into(), d_slow * d_share * (1.0 - in_process_cpu)));

    // cache: lookups miss (or bypass a disabled cache) and go to the database.
    let hit = server.cache_hit_ratio;
    let k_hit = c.add(
        "cache",
        "cache_hit_ratio",
        hit.unwrap_or(1.0),
        bserver.cache_hit_ratio.unwrap_or(1.0),
        hit.map_or(0.0, |h| 1.0 - ramp(h, 0.2, 0.6)) * ramp(server.cache_lookups_per_request, 0.3, 0.8),
        format!(
            "cache hit ratio {} over {:.2} lookups/request",
            hit.map_or("-".into(), |h| format!("{:.0}%", h * 100.0)),
            server.cache_lookups_per_request
        ),
    );
    let k_db = c.add(
        "cache",
        "db_calls_per_request",
        server.db_calls_per_request,
        bserver.db_calls_per_request,
        ramp(server.db_calls_per_request, 0.3, 0.8),
        format!("{:.2} storage calls per request", server.db_calls_per_request),
    );
    let cache_score = k_hit * k_db;
    scores.push(("cache".into(), cache_score));
    // A low hit ratio is the cause, the resource it overloads (the server's CPU running the
    // queries, the pool, the database) the consequence: name the cause.
    for (label, score) in &mut scores {
        if matches!(label.as_str(), "server_cpu" | "db_pool" | "db_server") {
            *score *= 1.0 - 0.6 * ramp(cache_score, 0.4, 0.8);
        }
    }

    // app_lock: time inside the server grows with load while CPU, database and runtime idle.
    let grew = server.mean_ms / (bserver.mean_ms + 0.05);
    let l_grew = c.add(
        "app_lock",
        "server_time_growth",
        server.mean_ms,
        bserver.mean_ms,
        ramp(grew, 2.0, 5.0),
        format!("server time {:.2} ms/request (baseline {:.2})", server.mean_ms, bserver.mean_ms),
    );
    let in_flight = opt(server.in_flight).max(s.achieved_rps * server.mean_ms / 1e3);
    let idle = (1.0 - ramp(cpu_util, 0.6, 0.85))
        * (1.0 - ramp(busy, 0.5, 0.8))
        * (1.0 - ramp(db_share + pool_share, 0.3, 0.6));
    let l_idle = c.add(
        "app_lock",
        "waiting_on_nothing_measured",
        in_flight,
        opt(bserver.in_flight),
        idle * ramp(in_flight, 2.0, 8.0),
        format!(
            "{in_flight:.1} requests in flight inside the server, cpu {:.0}%, runtime busy {:.0}%, storage {:.0}% of time",
            cpu_util * 100.0,
            busy * 100.0,
            (db_share + pool_share) * 100.0
        ),
    );
    scores.push(("app_lock".into(), l_grew * l_idle));

    // app_blocking: the runtime's workers are busy but the CPU is not.
    let blocked = busy * server.runtime_workers - opt(s.target_cpu_cores);
    let a_busy = c.add(
        "app_blocking",
        "runtime_busy",
        busy,
        opt(bserver.runtime_busy),
        ramp(busy, 0.6, 0.85),
        format!("tokio workers busy {:.0}% of {:.0}", busy * 100.0, server.runtime_workers),
    );
    let a_idle = c.add(
        "app_blocking",
        "busy_without_cpu",
        blocked,
        opt(bserver.runtime_busy) * bserver.runtime_workers - opt(b.target_cpu_cores),
        // A CPU quota also stops busy workers: only an uncapped CPU makes this blocking.
        ramp(blocked / server.runtime_workers.max(1.0), 0.2, 0.5) * (1.0 - ramp(cpu_util, 0.7, 0.9)),
        format!("{:.2} worker-seconds/s busy without using a CPU", blocked.max(0.0)),
    );
    scores.push(("app_blocking".into(), a_busy * a_idle));

    // network: the client waits far longer than the server works, and the server is idle.
    let n_gap = c.add(
        "network",
        "time_outside_server_ms",
        gap,
        b_gap,
        if has_server { ramp(gap / (server.mean_ms + 0.2), 3.0, 10.0) * ramp(gap, 1.0, 5.0) } else { 0.0 },
        format!(
            "client latency {:.2} ms vs {:.2} ms inside the server (baseline gap {b_gap:.2} ms)",
            s.mean_ms, server.mean_ms
        ),
    );
    let n_idle = (1.0 - ramp(cpu_util, 0.6, 0.85)) * (1.0 - ramp(busy, 0.5, 0.8)) * (1.0 - ramp(mem_util, 0.8, 0.95));
    scores.push(("network".into(), n_gap * n_idle));

    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    for sc in &mut scores {
        sc.1 = round(sc.1, 3);
    }

    // The operational laws: capacity / demand for the resources we can measure.
    let predicted = |label: &str| -> Option<f64> {
        match label {
            "server_cpu" => s.cpu_ms_per_request.filter(|d| *d > 0.0).map(|d| cpu_limit / (d / 1e3)),
            "db_pool" | "db_server" if server.db_ms_per_request > 0.0 && server.pool_size > 0.0 => {
                Some(server.pool_size / (server.db_ms_per_request / 1e3))
            }
            "generator" if s.client_cpu_cores > 0.0 && s.achieved_rps > 0.0 => {
                Some(s.client_cpu_limit / (s.client_cpu_cores / s.achieved_rps))
            }
            _ => None,
        }
    };

    let (top, top_score) = scores[0].clone();
    let (second, second_score) = scores.get(1).cloned().unwrap_or(("none".into(), 0.0));
    let generator_bound = scores.iter().find(|s| s.0 == "generator").map_or(0.0, |s| s.1) >= 0.5;
    let (mut verdict, mut confidence, runner_up) = if generator_bound {
        ("generator".to_string(), scores.iter().find(|s| s.0 == "generator").map_or(0.0, |s| s.1), None)
    } else if !saturated {
        // Healthy within the tested range, unless a resource is already at its limit.
        if top_score >= 0.8 && top != "generator" {
            (top.clone(), top_score * 0.6, Some("none".to_string()))
        } else {
            ("none".to_string(), 1.0 - top_score * 0.5, Some(top.clone()))
        }
    } else if top_score < 0.35 {
        ("abstain".to_string(), 1.0 - top_score, Some(top.clone()))
    } else if second_score >= 0.5 && top_score - second_score < 0.1 {
        // Two limits at once (each label's predicates exclude the others' causes, so two
        // strong scores are two bottlenecks, not one ambiguous one): name the first, the
        // second as runner-up, with the confidence of a coin toss between them.
        (top.clone(), 0.5 * top_score, Some(second.clone()))
    } else {
        (top.clone(), top_score * (1.0 - 0.5 * second_score), Some(second.clone()))
    };
    let predicted_max = predicted(&verdict);
    if let Some(p) = predicted_max
        && verdict != "generator"
    {
        // The named resource must explain the plateau: a demand predicting far more than
        // was reached means something else stopped the run first.
        let measured = s.achieved_rps.max(knee.plateau_rps);
        let text = format!("{verdict} demand predicts X_max {p:.0} req/s; measured plateau {measured:.0} req/s");
        let ratio = p / measured.max(1.0);
        let agree = 1.0 - ramp(ratio, 1.6, 3.0);
        c.add(&verdict, "operational_law", p, measured, agree, text);
        if agree < 0.5 {
            confidence *= 0.6;
        }
    }
    if verdict != "generator" && verdict != "none" && verdict != "abstain" && confidence < 0.25 {
        verdict = "abstain".to_string();
    }
    let top_evidence = |label: &str| -> Vec<Evidence> {
        let mut e: Vec<Evidence> = c.evidence.iter().filter(|e| e.label == label).cloned().collect();
        e.sort_by(|a, b| b.strength.total_cmp(&a.strength));
        e.truncate(4);
        e
    };
    let evidence = match verdict.as_str() {
        "none" | "abstain" => {
            let mut e = top_evidence(&top);
            e.extend(top_evidence(&second).into_iter().take(2));
            e
        }
        v => top_evidence(v),
    };

    // The simple baselines: the most utilised resource; the largest per-request demand.
    let utilisation = [
        ("generator", gen_util),
        ("server_cpu", cpu_util),
        ("server_memory", mem_util),
        (
            "db_pool",
            if server.pool_size > 0.0 {
                s.achieved_rps * server.db_ms_per_request / 1e3 / server.pool_size
            } else {
                0.0
            },
        ),
        ("app_blocking", busy),
    ];
    let demand = [
        ("server_cpu", opt(s.cpu_ms_per_request) / cpu_limit),
        ("db_server", server.db_ms_per_request),
        ("db_pool", server.pool_wait_ms_per_request),
        ("network", gap),
        ("app_lock", (server.mean_ms - server.db_ms_per_request - server.pool_wait_ms_per_request).max(0.0)),
    ];
    let argmax = |xs: &[(&str, f64)]| xs.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map_or("none", |x| x.0).to_string();

    Some(Analysis {
        suggestion: suggestion(&verdict, s, &server).to_string(),
        verdict,
        confidence: round(clamp01(confidence), 2),
        runner_up,
        evidence,
        knee,
        predicted_max_rps: predicted_max.map(|p| round(p, 1)),
        usl,
        scores,
        baseline_utilisation: argmax(&utilisation),
        baseline_demand: argmax(&demand),
    })
}

fn suggestion(verdict: &str, s: &StepProbe, server: &crate::probe::ServerStep) -> String {
    match verdict {
        "generator" => "the run is invalid: give the generator more CPU (fewer connections, another machine, or taskset it apart from the server) and rerun".into(),
        "network" => "the time goes outside the server: check the path's latency and loss (ping, ss -ti retransmits), put the client closer, or raise --connections to cover the round trip".into(),
        "server_cpu" => format!(
            "the server uses all {:.1} cores it may: add cores or instances, or profile the hot path (perf record -g) — {:.2} ms CPU per request",
            s.target_cpu_limit.unwrap_or(0.0),
            s.cpu_ms_per_request.unwrap_or(0.0)
        ),
        "server_memory" => "the server is at its memory limit: raise the limit, or bound the cache (cache.url memory://?entries=N&mb=N)".into(),
        "db_pool" => format!(
            "requests queue for one of {:.0} database connections while queries stay fast: raise database.max_connections (STRATA_DATABASE_MAX_CONNECTIONS)",
            server.pool_size
        ),
        "db_server" => "the queries themselves are slow: EXPLAIN the hot queries (`strata check` lists their plans), add the missing index, or give the database more CPU / a replica".into(),
        "cache" => "reads miss the cache and go to the database: enable the cache (cache.url) or make it larger, and check its hit ratio on /metrics".into(),
        "app_lock" => "requests wait inside the server for something that is neither CPU nor database: look for a lock or semaphore held across an await (tokio-console, or a trace's gaps)".into(),
        "app_blocking" => "the async workers are busy without using CPU: a blocking call runs on them; move it to spawn_blocking or make it async".into(),
        "none" => "no limit within the tested range: raise the offered load (--find-max without an upper bound) to find one".into(),
        _ => "the evidence conflicts or is too weak: rerun with longer steps, --watch-pid on the server, and /metrics reachable".into(),
    }
}

/// The text section printed after the summary; its last line is `verdict: LABEL (confidence N%)`.
pub fn text(a: &Analysis, steps: &[StepProbe]) -> String {
    let mut out = String::from("\nanalysis:\n");
    let b = &steps[a.knee.baseline_step];
    let s = &steps[a.knee.saturated_step];
    let _ = writeln!(
        out,
        "  baseline step: offered {:.0} req/s, achieved {:.0}, p99 {}",
        b.offered_rps,
        b.achieved_rps,
        crate::progress::fmt_us(b.p99_us)
    );
    let _ = writeln!(
        out,
        "  {} step: offered {:.0} req/s, achieved {:.0}, p99 {}; plateau {:.0} req/s",
        if a.knee.saturated { "saturated" } else { "highest" },
        s.offered_rps,
        s.achieved_rps,
        crate::progress::fmt_us(s.p99_us),
        a.knee.plateau_rps
    );
    if a.knee.throughput_knee_rps.is_some() || a.knee.latency_knee_rps.is_some() {
        let show = |k: Option<f64>| k.map_or("-".into(), |k| format!("{k:.0} req/s"));
        let _ = writeln!(
            out,
            "  knee (Kneedle): throughput at {}, p99 at {}",
            show(a.knee.throughput_knee_rps),
            show(a.knee.latency_knee_rps)
        );
    }
    if let Some(u) = &a.usl {
        let _ = writeln!(
            out,
            "  USL fit: λ {:.0} req/s per unit of concurrency, σ {:.3} (contention), κ {:.5} (coherency){}",
            u.lambda,
            u.sigma,
            u.kappa,
            u.peak_rps.map_or(String::new(), |p| format!(", peak {p:.0} req/s"))
        );
    }
    let _ = writeln!(out, "  evidence:");
    for e in &a.evidence {
        let _ = writeln!(out, "    [{:.2}] {}: {}", e.strength, e.predicate, e.text);
    }
    let fired: Vec<String> = a.evidence.iter().filter(|e| e.strength >= 0.5).map(|e| e.text.clone()).collect();
    if !fired.is_empty() {
        let _ = writeln!(out, "  because: {}", fired.join(" ∧ "));
    }
    let scores: Vec<String> = a.scores.iter().take(4).map(|(l, v)| format!("{l} {v:.2}")).collect();
    let _ = writeln!(out, "  scores: {}", scores.join(", "));
    if let Some(r) = &a.runner_up {
        let _ = writeln!(out, "  runner-up: {r}");
    }
    let _ = writeln!(out, "  suggestion: {}", a.suggestion);
    let _ = writeln!(out, "verdict: {} (confidence {:.0}%)", a.verdict, a.confidence * 100.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ServerStep;

    fn step(offered: f64, achieved: f64, p99_us: u64) -> StepProbe {
        StepProbe {
            offered_rps: offered,
            achieved_rps: achieved,
            seconds: 2.0,
            p50_us: p99_us / 3,
            p99_us,
            mean_ms: p99_us as f64 / 2e3,
            client_cpu_cores: 0.1,
            client_cpu_limit: 1.0,
            target_cpu_cores: Some(0.1),
            target_cpu_limit: Some(1.0),
            cpu_ms_per_request: Some(0.1),
            server: Some(ServerStep {
                requests: achieved * 2.0,
                mean_ms: 0.2,
                db_calls_per_request: 1.0,
                db_ms_per_request: 0.1,
                db_call_ms: 0.1,
                pool_size: 1.0,
                cache_hit_ratio: Some(0.95),
                cache_lookups_per_request: 1.0,
                runtime_busy: Some(0.1),
                runtime_workers: 2.0,
                in_flight: Some(0.0),
                ..ServerStep::default()
            }),
            ..StepProbe::default()
        }
    }

    #[test]
    fn kneedle_finds_where_throughput_flattens() {
        let pts = [(100.0, 100.0), (200.0, 200.0), (400.0, 390.0), (800.0, 450.0), (1600.0, 460.0)];
        assert_eq!(kneedle(&pts, true), Some(2));
        assert_eq!(kneedle(&[(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)], true), None);
    }

    #[test]
    fn usl_recovers_its_parameters() {
        let (l, s, k) = (1000.0, 0.05, 0.001);
        let pts: Vec<(f64, f64)> = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
            .iter()
            .map(|&n| (n, l * n / (1.0 + s * (n - 1.0) + k * n * (n - 1.0))))
            .collect();
        let u = fit_usl(&pts).expect("seven points");
        assert!((u.lambda - l).abs() < 1.0, "{u:?}");
        assert!((u.sigma - s).abs() < 1e-3, "{u:?}");
        assert!((u.kappa - k).abs() < 1e-5, "{u:?}");
        assert!(fit_usl(&pts[..5]).is_none(), "fewer than six levels");
    }

    #[test]
    fn a_healthy_run_is_none() {
        let steps = vec![step(100.0, 100.0, 800), step(150.0, 150.0, 850), step(225.0, 225.0, 900)];
        let a = analyze(&steps, 100_000, false).unwrap();
        assert_eq!(a.verdict, "none", "{a:?}");
        assert!(!a.knee.saturated);
    }

    #[test]
    fn a_starved_pool_is_db_pool() {
        let mut steps = vec![step(100.0, 100.0, 800), step(1000.0, 600.0, 400_000)];
        let s = steps[1].server.as_mut().unwrap();
        s.mean_ms = 40.0;
        s.pool_wait_ms_per_acquire = 39.0;
        s.pool_wait_ms_per_request = 39.0;
        s.db_call_ms = 0.12;
        s.in_flight = Some(30.0);
        let a = analyze(&steps, 100_000, false).unwrap();
        assert_eq!(a.verdict, "db_pool", "{a:#?}");
        assert!(a.confidence > 0.5);
        assert!(
            text(&a, &steps)
                .trim_end()
                .ends_with(&format!("verdict: db_pool (confidence {:.0}%)", a.confidence * 100.0))
        );
    }

    #[test]
    fn a_busy_generator_invalidates_the_run() {
        let mut steps = vec![step(100.0, 100.0, 800), step(1000.0, 600.0, 400_000)];
        steps[1].client_cpu_cores = 0.98;
        steps[1].target_cpu_cores = Some(0.95);
        let a = analyze(&steps, 100_000, false).unwrap();
        assert_eq!(a.verdict, "generator");
        assert_eq!(a.runner_up, None, "no server label for an invalid run");
    }

    #[test]
    fn a_process_killed_at_its_memory_limit_is_server_memory() {
        let mut steps = vec![step(100.0, 100.0, 800), step(150.0, 150.0, 800), step(225.0, 225.0, 900)];
        for (st, mib) in steps.iter_mut().zip([40u64, 90, 0]) {
            st.target_memory_limit = Some(192 << 20);
            st.target_rss_bytes = Some(mib << 20);
        }
        // Killed during the last step: connection errors, no readings.
        steps[2].target_cpu_cores = None;
        steps[2].target_rss_bytes = None;
        steps[2].error_rate = 0.4;
        steps[2].server = None;
        let a = analyze(&steps, 100_000, false).unwrap();
        assert_eq!(a.verdict, "server_memory", "{a:#?}");
    }

    #[test]
    fn weak_evidence_abstains() {
        // Throughput fell short but nothing measured explains it (no server metrics).
        let mut steps = vec![step(100.0, 100.0, 800), step(1000.0, 600.0, 400_000)];
        steps[1].server = None;
        steps[0].server = None;
        let a = analyze(&steps, 100_000, false).unwrap();
        assert_eq!(a.verdict, "abstain", "{a:#?}");
    }
}
