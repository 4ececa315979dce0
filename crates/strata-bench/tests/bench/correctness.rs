//! Latency correctness: the open model must show server stalls that a closed model hides, and
//! the schedule must offer exactly what was asked for.

use std::time::Duration;

use crate::mock_server::{MockOptions, spawn};
use crate::{bench_args, run_quiet};

const STALL: Duration = Duration::from_millis(100);
const STALL_EVERY: u64 = 200;

/// The server freezes for 100 ms on every 200th request. Open model at 500 req/s for 2 s over
/// one connection: each freeze holds back the ~50 requests due during it, whose latencies
/// (counted from their intended start) spread from 100 ms down to 0 — about a quarter of all
/// requests, so p90 and p99 are tens of milliseconds. Closed model over one connection: only
/// the one request caught in each freeze is slow (0.5% of them), so p99 looks healthy though
/// the server was frozen for a quarter of the time. These bounds follow from the stall
/// arithmetic alone; a slower machine only makes the open figures larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_reports_stalls_that_a_closed_model_hides() {
    let options = MockOptions { stall_every: STALL_EVERY, stall_for: STALL, ..MockOptions::default() };
    let open_server = spawn(options.clone()).await;
    let open = strata_bench::execute(bench_args(&[
        "--target",
        &open_server.url(),
        "--scenario",
        "http",
        "--path",
        "/healthz",
        "--rate",
        "500",
        "--connections",
        "1",
        "--duration",
        "2s",
        "--no-metrics",
        "--quiet",
    ]))
    .await
    .expect("open run");
    let closed_server = spawn(options).await;
    let closed = strata_bench::execute(bench_args(&[
        "--target",
        &closed_server.url(),
        "--scenario",
        "http",
        "--path",
        "/healthz",
        "--connections",
        "1",
        "--duration",
        "2s",
        "--no-metrics",
        "--quiet",
    ]))
    .await
    .expect("closed run");

    let (o, c) = (&open.totals, &closed.totals);
    eprintln!(
        "open:   {} requests, p50 {} p90 {} p99 {} max {} µs",
        o.requests, o.latency.p50_us, o.latency.p90_us, o.latency.p99_us, o.latency.max_us
    );
    eprintln!(
        "closed: {} requests, p50 {} p90 {} p99 {} max {} µs",
        c.requests, c.latency.p50_us, c.latency.p90_us, c.latency.p99_us, c.latency.max_us
    );

    // The schedule offers exactly rate × duration requests, stalls or not.
    assert_eq!(o.requests, 1000);
    assert_eq!(o.errors, 0);
    assert!(o.latency.max_us >= 100_000, "open max {}", o.latency.max_us);
    assert!(o.latency.p99_us >= 80_000, "open p99 {} should show the 100 ms stalls", o.latency.p99_us);
    assert!(o.latency.p90_us >= 20_000, "open p90 {} should show the backlog", o.latency.p90_us);
    let schedule = open.schedule.expect("open runs report their schedule");
    assert!(schedule.late_sends >= 5 * 40, "each stall delays ~50 sends: {schedule:?}");
    assert!(schedule.max_lag_us >= 90_000, "{schedule:?}");
    // They were late because the one connection was busy, not because the client slept in.
    assert!(schedule.queued_sends >= 5 * 40, "{schedule:?}");

    assert_eq!(c.errors, 0);
    assert!(c.latency.max_us >= 100_000, "the closed model sees each stall once: max {}", c.latency.max_us);
    assert!(
        c.latency.p99_us < 50_000,
        "closed p99 {} hides the stalls (only 1 in {STALL_EVERY} is slow)",
        c.latency.p99_us
    );
    assert!(closed.schedule.is_none());
}

/// A 0 → 400 req/s ramp over 1 s offers the triangle's area (200), then 400 req/s for 0.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_offer_the_integral_of_the_rate() {
    let server = spawn(MockOptions::default()).await;
    let report =
        run_quiet(&server.url(), &["--scenario", "http", "--path", "/healthz", "--stages", "400:1s,400:500ms"]).await;
    assert_eq!(report.totals.requests, 400);
    assert_eq!(report.config.model, "open");
    assert!((report.measured_s - 1.5).abs() < 1e-6);
    let offered: Vec<f64> = report.timeseries.iter().filter_map(|s| s.offered_rps).collect();
    // The first second averages the 0 → 400 ramp; the next half second is flat at 400.
    assert!(offered.first().is_some_and(|&r| (190.0..=210.0).contains(&r)), "{offered:?}");
    assert!(offered.get(1).is_some_and(|&r| (380.0..=400.0).contains(&r)), "{offered:?}");
}

/// Every scheduled request is counted exactly once, in the totals and in the time series,
/// however close to a tick of the collector the last ones finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheduled_request_is_counted_once() {
    let server = spawn(MockOptions::default()).await;
    for _ in 0..3 {
        let report = run_quiet(
            &server.url(),
            &["--scenario", "http", "--path", "/healthz", "--rate", "3000", "--duration", "1s"],
        )
        .await;
        assert_eq!(report.totals.requests, 3000);
        assert_eq!(report.iterations, 3000);
        let in_series: u64 = report.timeseries.iter().map(|s| s.total.requests).sum();
        assert_eq!(in_series, 3000);
        // No sliver of an interval (which would plot as an absurd rate): every sample spans at
        // least a quarter of a second.
        let ends: Vec<f64> = report.timeseries.iter().map(|s| s.t_s).collect();
        let mut previous = 0.0;
        for end in &ends {
            assert!(end - previous >= 0.25, "{ends:?}");
            previous = *end;
        }
    }
}

/// Warm-up requests are sent but not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_not_measured() {
    let server = spawn(MockOptions::default()).await;
    let report = run_quiet(
        &server.url(),
        &["--scenario", "http", "--path", "/healthz", "--rate", "200", "--duration", "1s", "--warmup", "500ms"],
    )
    .await;
    assert_eq!(report.totals.requests, 200);
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 300);
}

/// --find-max against a server that freezes 5 ms on every request (so it cannot exceed
/// 200 req/s however many connections): 50 and 100 req/s keep up, 400 cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_stops_at_the_knee() {
    let server =
        spawn(MockOptions { stall_every: 1, stall_for: Duration::from_millis(5), ..MockOptions::default() }).await;
    let report = run_quiet(
        &server.url(),
        &[
            "--scenario",
            "http",
            "--path",
            "/healthz",
            "--find-max",
            "--rate",
            "50",
            "--find-max-growth",
            "2",
            "--find-max-p99",
            "2s",
            "--duration",
            "1s",
            "--connections",
            "16",
            "--timeout",
            "3s",
        ],
    )
    .await;
    let f = report.find_max.expect("find-max report");
    eprintln!("{:#?}", f.steps);
    assert!(f.steps.len() >= 2 && f.steps.len() <= 4, "{:?}", f.steps);
    assert!(f.steps[0].passed && f.steps[1].passed, "{:?}", f.steps);
    assert!(!f.steps.last().expect("steps").passed);
    let knee = f.knee_rps.expect("a knee");
    assert!((45.0..=210.0).contains(&knee), "knee {knee}");
}

/// An interrupted run stops early in both models — including workers asleep on tickets due far
/// in the future — and still reports what it measured, over the time it actually ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_a_run_stops_it_and_still_reports() {
    let server = spawn(MockOptions::default()).await;
    for model in [["--rate", "20"], ["--connections", "2"]] {
        let started = std::time::Instant::now();
        let mut line = vec!["--target", server.url().leak(), "--scenario", "http", "--path", "/healthz"];
        line.extend(model);
        line.extend(["--duration", "60s", "--no-metrics", "--quiet"]);
        let report = strata_bench::execute_until(bench_args(&line), tokio::time::sleep(Duration::from_millis(1500)))
            .await
            .expect("run");
        assert!(report.interrupted, "{model:?}");
        assert!(started.elapsed() < Duration::from_secs(15), "{model:?} took {:?}", started.elapsed());
        assert!((1.4..5.0).contains(&report.measured_s), "{model:?}: measured {}", report.measured_s);
        assert!(report.totals.requests > 0 && report.totals.errors == 0, "{model:?}");
        if model[0] == "--rate" {
            // 20 req/s for the ~1.5 s it ran, not 60 s worth.
            assert!((25..=45).contains(&report.totals.requests), "{}", report.totals.requests);
        }
    }
}
