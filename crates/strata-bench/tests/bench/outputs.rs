//! Reports and gates: JSON/CSV/HTML files, server metrics and Server-Timing, SLO exit codes.

use std::process::ExitCode;

use crate::mock_server::{MockOptions, spawn};
use crate::{bench_args, run_quiet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_json_csv_and_html_and_passes_slos() {
    let server = spawn(MockOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("strata-bench-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (json, csv, html) = (dir.join("r.json"), dir.join("r.csv"), dir.join("r.html"));
    let pid = std::process::id().to_string();
    let args = bench_args(&[
        "--target",
        &server.url(),
        "--scenario",
        "http",
        "--path",
        "/healthz",
        "--rate",
        "300",
        "--duration",
        "2s",
        "--watch-pid",
        &pid,
        "--slo",
        "p99<10s,errors<1%,rps>100",
        "--quiet",
        "--json",
        json.to_str().expect("utf8"),
        "--csv",
        csv.to_str().expect("utf8"),
        "--html",
        html.to_str().expect("utf8"),
    ]);
    assert_eq!(strata_bench::run(args).await.expect("run"), ExitCode::SUCCESS);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("valid json");
    assert_eq!(report["schema"], "strata-bench/1");
    assert_eq!(report["totals"]["requests"], 600);
    assert_eq!(report["endpoints"][0]["name"], "GET /healthz");
    assert!(report["timeseries"].as_array().is_some_and(|t| t.len() >= 2));
    assert!(report["latency_distribution"].as_array().is_some_and(|d| d.len() > 20));
    assert_eq!(report["targets"][0]["pid"], std::process::id());
    assert!(report["targets"][0]["rss_max_bytes"].as_u64().is_some_and(|r| r > 0));
    assert!(report["slo"].as_array().is_some_and(|s| s.len() == 3 && s.iter().all(|o| o["passed"] == true)));
    // The server saw exactly what the client sent, and said so in /metrics.
    let routes = report["server"]["routes"].as_array().expect("server routes");
    let health = routes.iter().find(|r| r["route"] == "/healthz").expect("/healthz route");
    assert_eq!(health["requests"], 600.0);
    assert_eq!(report["endpoints"][0]["server_timing_ms"]["db"], 0.01);

    let csv_text = std::fs::read_to_string(&csv).expect("csv written");
    assert!(csv_text.starts_with("t_s,endpoint,offered_rps,requests,"));
    let rows: Vec<&str> = csv_text.lines().skip(1).collect();
    assert!(rows.len() >= 4 && rows.iter().any(|r| r.contains(",all,")));
    let csv_requests: u64 = rows
        .iter()
        .filter(|r| r.contains(",all,"))
        .map(|r| r.split(',').nth(3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum();
    assert_eq!(csv_requests, 600, "the per-second rows add up to the total");

    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.matches("<svg class=\"plot\"").count() >= 5);
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "the page must be self-contained");
    // The JSON holds everything the page shows: rendered again from it, as the admin console
    // does, it is the same page.
    let again = strata_bench::Report::from_json(&std::fs::read(&json).expect("json")).expect("the report parses");
    assert_eq!(strata_bench::html::render(&again), page);
    let linked = strata_bench::html::render_linked(&again, "/r.css");
    assert!(!linked.contains("<script") && !linked.contains("<style") && linked.contains("href=\"/r.css\""));
    assert_eq!(linked.matches("<svg class=\"plot\"").count(), page.matches("<svg class=\"plot\"").count());
    let other = strata_bench::Report::from_json(br#"{"schema": "other/1"}"#).expect_err("another schema");
    assert!(other.contains("\"other/1\""), "{other}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violated_slo_exits_non_zero_and_is_named() {
    let server = spawn(MockOptions::default()).await;
    let args = bench_args(&[
        "--target",
        &server.url(),
        "--scenario",
        "http",
        "--path",
        "/healthz",
        "--rate",
        "50",
        "--duration",
        "500ms",
        "--slo",
        "rps>1000000,p99<1h",
        "--no-metrics",
        "--quiet",
    ]);
    assert_eq!(strata_bench::run(args.clone()).await.expect("run"), ExitCode::from(strata_bench::EXIT_SLO_VIOLATED));
    let report = strata_bench::execute(args).await.expect("run");
    let failed: Vec<&str> = report.slo.iter().filter(|s| !s.passed).map(|s| s.objective.as_str()).collect();
    assert_eq!(failed, ["rps>1000000"]);
    assert!(!report.passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_scenario_sends_method_headers_and_body() {
    let server = spawn(MockOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("strata-bench-body-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let body = dir.join("body.json");
    std::fs::write(&body, r#"{"email":"x-${seq}@bench.strata.test","name":"X","password":"Long-enough-1"}"#)
        .expect("write body");
    let report = run_quiet(
        &server.url(),
        &[
            "--scenario",
            "http",
            "--method",
            "POST",
            "--path",
            "/v1/users",
            "--header",
            "X-Test: 1",
            "--body-file",
            body.to_str().expect("utf8"),
            "--rate",
            "50",
            "--duration",
            "500ms",
        ],
    )
    .await;
    assert_eq!(report.totals.requests, 25);
    assert_eq!(report.totals.errors, 0, "{:?}", report.totals.errors_by_kind);
    assert_eq!(server.users(), 25, "each POST created a distinct user through ${{seq}}");
    let _ = std::fs::remove_dir_all(&dir);
}
