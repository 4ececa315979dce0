//! Scenarios end to end against the mock API: seeding, captured values, TOML files, errors.

use std::time::{Duration, Instant};

use crate::mock_server::{MockOptions, spawn};
use crate::{bench_args, run_quiet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_feeds_each_step_from_the_previous_response() {
    let server = spawn(MockOptions::default()).await;
    let report = run_quiet(&server.url(), &["--scenario", "journey", "--rate", "40", "--duration", "1s"]).await;
    let names: Vec<&str> = report.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["register", "login", "who-am-i", "update-user", "logout"]);
    for e in &report.endpoints {
        assert_eq!((e.name.as_str(), e.requests, e.errors), (e.name.as_str(), 40, 0), "{:?}", e.errors_by_kind);
    }
    assert_eq!(report.iterations, 40);
    // The PATCH only succeeds with the ETag captured from registration and the login token.
    assert_eq!(server.patches(), 40);
    assert_eq!(server.users(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_check_seeds_users_then_uses_their_tokens() {
    let server = spawn(MockOptions::default()).await;
    let report = run_quiet(
        &server.url(),
        &["--scenario", "session-check", "--users", "25", "--connections", "2", "--duration", "500ms"],
    )
    .await;
    assert_eq!(server.users(), 25);
    assert_eq!(report.config.users, 25);
    assert!(report.totals.requests > 0);
    assert_eq!(report.totals.errors, 0, "{:?}", report.totals.errors_by_kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_request_builtins_run_clean() {
    let server = spawn(MockOptions::default()).await;
    for scenario in ["get-user", "login", "register"] {
        let report =
            run_quiet(&server.url(), &["--scenario", scenario, "--users", "5", "--rate", "50", "--duration", "500ms"])
                .await;
        assert_eq!(report.endpoints.len(), 1);
        assert_eq!(report.endpoints[0].name, scenario);
        assert_eq!(
            (report.totals.requests, report.totals.errors),
            (25, 0),
            "{scenario}: {:?}",
            report.totals.errors_by_kind
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_follows_configured_weights() {
    let server = spawn(MockOptions::default()).await;
    let report = run_quiet(
        &server.url(),
        &[
            "--scenario",
            "mixed",
            "--mix",
            "session-check=3,get-user=1",
            "--users",
            "10",
            "--rate",
            "400",
            "--duration",
            "1s",
        ],
    )
    .await;
    let count = |n: &str| report.endpoints.iter().find(|e| e.name == n).map_or(0, |e| e.requests);
    assert_eq!(count("session-check") + count("get-user"), 400);
    assert_eq!(count("login") + count("register"), 0);
    // 3:1 picked at random (seeded per worker): well within ±10 percentage points.
    let share = count("session-check") as f64 / 400.0;
    assert!((0.65..=0.85).contains(&share), "session-check share {share}");
    assert_eq!(report.totals.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_scenario_file_runs() {
    let server = spawn(MockOptions::default()).await;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/scenarios/profile-refresh.toml");
    let report =
        run_quiet(&server.url(), &["--scenario", file, "--users", "8", "--rate", "100", "--duration", "1s"]).await;
    assert_eq!(
        report.totals.errors,
        0,
        "{:?}",
        report.endpoints.iter().map(|e| (&e.name, &e.errors_by_kind)).collect::<Vec<_>>()
    );
    assert_eq!(report.iterations, 100);
    assert!(report.endpoints.len() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_framed() {
    let server = spawn(MockOptions::default()).await;
    let report =
        run_quiet(&server.url(), &["--scenario", "http", "--path", "/chunked", "--rate", "100", "--duration", "500ms"])
            .await;
    assert_eq!(report.totals.requests, 50);
    assert_eq!(report.totals.errors, 0, "{:?}", report.totals.errors_by_kind);
    assert!(report.totals.bytes_in > 50 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_time_out_and_the_run_still_ends() {
    let server = spawn(MockOptions { black_hole: true, ..MockOptions::default() }).await;
    let started = Instant::now();
    let report = run_quiet(
        &server.url(),
        &[
            "--scenario",
            "http",
            "--path",
            "/healthz",
            "--connections",
            "2",
            "--duration",
            "300ms",
            "--timeout",
            "200ms",
        ],
    )
    .await;
    assert!(
        report.totals.errors_by_kind.get("timeout").copied().unwrap_or(0) >= 2,
        "{:?}",
        report.totals.errors_by_kind
    );
    assert_eq!(report.totals.errors, report.totals.requests);
    // Duration plus one timeout of drain, with a wide margin for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_as_connect_errors() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let target = format!("http://127.0.0.1:{port}");
    let report = strata_bench::execute(bench_args(&[
        "--target",
        &target,
        "--scenario",
        "http",
        "--path",
        "/healthz",
        "--connections",
        "1",
        "--duration",
        "200ms",
        "--quiet",
    ]))
    .await
    .expect("run");
    assert!(report.totals.errors_by_kind.get("connect").copied().unwrap_or(0) >= 1);
    assert!(report.server.as_ref().is_some_and(|s| !s.available));
    let err = strata_bench::execute(bench_args(&[
        "--target",
        &target,
        "--scenario",
        "login",
        "--duration",
        "200ms",
        "--quiet",
    ]))
    .await
    .expect_err("seeding cannot work without a server");
    assert!(format!("{err:#}").contains("seeding"), "{err:#}");
}
