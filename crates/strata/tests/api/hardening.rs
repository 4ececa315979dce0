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

async fn register_from(app: &TestApp, client: &str, email: &str, password: &str, key: Option<&str>) -> Resp {
    let body = json!({"email": email, "name": "Someone", "password": password}).to_string();
    let mut headers = vec![("content-type", "application/json"), ("x-forwarded-for", client)];
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    app.send(Method::POST, "/v1/users", &headers, Some(Bytes::from(body))).await
}

fn behind_proxy(c: &mut Config) {
    c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
}

/// Registration is throttled per client; one client's flood does not lock out another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_throttled_per_client() {
    let app = sqlite_app("hardening registration throttle", |c| {
        behind_proxy(c);
        c.throttle.registration_max = 3;
    })
    .await;
    for i in 0..3 {
        let r = register_from(&app, "203.0.113.7", &format!("flood{i}@example.com"), PASSWORD, None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let refused = register_from(&app, "203.0.113.7", "flood9@example.com", PASSWORD, None).await;
    refused.assert_problem(429, "too_many_attempts", None);
    assert!(refused.header("retry-after").parse::<u64>().is_ok());
    let other = register_from(&app, "203.0.113.8", "calm@example.com", PASSWORD, None).await;
    assert_eq!(other.status, StatusCode::CREATED);
    app.clock.advance(Duration::from_secs(601));
    assert_eq!(
        register_from(&app, "203.0.113.7", "later@example.com", PASSWORD, None).await.status,
        StatusCode::CREATED
    );
    app.stop().await;
}

/// Idempotency keys: a key replays only for the client that made it; replays that guess
/// the password are throttled like logins; after the key's lifetime it is forgotten (the
/// expired record is purged, so the key can be used afresh). Before, keys were global and
/// eternal, and a replay was an unthrottled password oracle (201 vs 422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_throttled_and_expire() {
    let app = sqlite_app("hardening idempotency", behind_proxy).await;
    let key = "key-0001";
    let first = register_from(&app, "203.0.113.1", "idem@example.com", PASSWORD, Some(key)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = register_from(&app, "203.0.113.1", "idem@example.com", PASSWORD, Some(key)).await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (StatusCode::CREATED, "true"));
    assert_eq!(retry.body["id"], first.body["id"]);
    // The same key from elsewhere is another key: no replay, no oracle; the email exists.
    let elsewhere = register_from(&app, "198.51.100.9", "idem@example.com", PASSWORD, Some(key)).await;
    elsewhere.assert_problem(409, "email_taken", Some("email"));
    // Guessing the password through replays: 3 wrong guesses (the account budget in
    // tests), then refused even with the right password, like a login.
    for guess in ["guess one!", "guess two!", "guess three"] {
        let r = register_from(&app, "203.0.113.1", "idem@example.com", guess, Some(key)).await;
        r.assert_problem(422, "idempotency_key_reused", None);
    }
    let locked = register_from(&app, "203.0.113.1", "idem@example.com", PASSWORD, Some(key)).await;
    locked.assert_problem(429, "too_many_attempts", None);
    app.login("idem@example.com", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    // A day later the key is expired: reusing it for another account is a new create.
    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let reused = register_from(&app, "203.0.113.1", "second@example.com", PASSWORD, Some(key)).await;
    assert_eq!(reused.status, StatusCode::CREATED, "{}", reused.body);
    assert_ne!(reused.body["id"], first.body["id"]);
    app.stop().await;
}

/// A stolen token cannot change the password or email without the current password;
/// wrong guesses are throttled like logins; an admin changing someone else needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_credential_changes_need_the_current_password() {
    let app = sqlite_app("hardening current password", |_| {}).await;
    let (user, token) = app.user_with_token("owner@example.com").await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let patch = async |bearer: &str, body: Value| {
        let auth = format!("Bearer {bearer}");
        let headers = [("content-type", "application/json"), ("authorization", auth.as_str()), ("if-match", "\"1\"")];
        app.send(Method::PATCH, &path, &headers, Some(Bytes::from(body.to_string()))).await
    };
    let takeover = json!({"password": "attacker's new password"});
    patch(&token, takeover.clone()).await.assert_problem(422, "current_password_required", Some("current_password"));
    patch(&token, json!({"email": "attacker@example.com"})).await.assert_problem(
        422,
        "current_password_required",
        Some("current_password"),
    );
    for guess in ["guess one!", "guess two!", "guess three"] {
        let r = patch(&token, json!({"password": "attacker's new password", "current_password": guess})).await;
        r.assert_problem(403, "current_password_incorrect", Some("current_password"));
    }
    let locked = patch(&token, json!({"password": "attacker's new password", "current_password": PASSWORD})).await;
    locked.assert_problem(429, "too_many_attempts", None);
    // Nothing changed: the owner still logs in with the old password once the window ends.
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(app.login("owner@example.com", PASSWORD).await.status, StatusCode::CREATED);
    // An admin resets it without knowing it.
    let reset = patch(ADMIN, json!({"password": "set by the admin team"})).await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    assert_eq!(app.login("owner@example.com", "set by the admin team").await.status, StatusCode::CREATED);
    app.stop().await;
}
