//! Hardening end to end (issue 7): what a hostile client can learn or do through the HTTP
//! layer. These do not depend on the storage backend, so they run on SQLite only.

use super::*;

async fn sqlite_app(what: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn(Backend::Sqlite, what, tweak).await.expect("SQLite is always available")
}

fn timing_names(resp: &Resp) -> Vec<String> {
    resp.header("server-timing").split(',').map(|m| m.split(';').next().unwrap_or("").trim().to_owned()).collect()
}

/// An anonymous caller sees only `total`: the per-phase split would tell an existing
/// account (a hash ran) from an unknown one. Authenticated callers and configured clients
/// get the full split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_split_only_for_authenticated_or_configured_clients() {
    let app = sqlite_app("hardening server-timing", |_| {}).await;
    let (_, token) = app.user_with_token("timing@example.com").await;
    let full = ["app", "cache", "db", "hash", "total"];
    for anonymous in [
        app.login("timing@example.com", "wrong password").await,
        app.login("nobody@example.com", "wrong password").await,
        app.get("/v1/sessions/current", Some("not-a-token")).await,
        app.get("/healthz", None).await,
    ] {
        assert_eq!(timing_names(&anonymous), ["total"], "status {}", anonymous.status);
    }
    assert_eq!(timing_names(&app.get("/v1/sessions/current", Some(&token)).await), full);
    assert_eq!(timing_names(&app.get("/v1/users", Some(ADMIN)).await), full);
    assert_eq!(timing_names(&app.login("timing@example.com", PASSWORD).await), full);
    app.stop().await;

    let app = sqlite_app("hardening server-timing detail", |c| {
        c.http.timing_detail_from = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    assert_eq!(timing_names(&app.login("nobody@example.com", "wrong password").await), full);
    app.stop().await;
}

async fn login_from(app: &TestApp, forwarded_for: &str, password: &str) -> Resp {
    let body = json!({"email": "proxied@example.com", "password": password}).to_string();
    app.send(
        Method::POST,
        "/v1/sessions",
        &[("content-type", "application/json"), ("x-forwarded-for", forwarded_for)],
        Some(Bytes::from(body)),
    )
    .await
}

/// Behind a trusted proxy each real client has its own budget, a forged leading
/// `X-Forwarded-For` entry changes nothing, and IPv6 clients are counted per /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_budget_follows_the_forwarded_client_behind_trusted_proxies() {
    let app = sqlite_app("hardening trusted proxies", |c| {
        c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.throttle.client_max_failures = 2;
        c.throttle.account_max_failures = 1000;
    })
    .await;
    app.register("proxied@example.com", "Proxied").await;
    for forged in ["1.1.1.1, 203.0.113.5", "2.2.2.2, 203.0.113.5"] {
        login_from(&app, forged, "wrong password").await.assert_problem(401, "invalid_credentials", None);
    }
    // 203.0.113.5 spent its budget whatever it put in front …
    login_from(&app, "3.3.3.3, 203.0.113.5", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    // … while another client behind the same proxy is unaffected.
    assert_eq!(login_from(&app, "203.0.113.6", PASSWORD).await.status, StatusCode::CREATED);
    // One /64 is one client.
    for host in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        login_from(&app, host, "wrong password").await.assert_problem(401, "invalid_credentials", None);
    }
    login_from(&app, "2001:db8:1:2:ffff::9", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    assert_eq!(login_from(&app, "2001:db8:1:3::1", PASSWORD).await.status, StatusCode::CREATED);
    app.stop().await;

    // Without trusted proxies the header is the client's own word: ignored, so rotating
    // it buys nothing.
    let app = sqlite_app("hardening untrusted forwarded", |c| {
        c.throttle.client_max_failures = 2;
        c.throttle.account_max_failures = 1000;
    })
    .await;
    app.register("proxied@example.com", "Proxied").await;
    login_from(&app, "198.51.100.1", "wrong password").await;
    login_from(&app, "198.51.100.2", "wrong password").await;
    login_from(&app, "198.51.100.3", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    app.stop().await;
}
