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
    let app = sqlite_app("hardening idempotency", |c| {
        behind_proxy(c);
        c.throttle.client_max_failures = 3;
    })
    .await;
    let key = "key-0001";
    let first = register_from(&app, "203.0.113.1", "idem@example.com", PASSWORD, Some(key)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = register_from(&app, "203.0.113.1", "idem@example.com", PASSWORD, Some(key)).await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (StatusCode::CREATED, "true"));
    assert_eq!(retry.body["id"], first.body["id"]);
    // The same key from elsewhere is another key: no replay, no oracle; the email exists.
    let elsewhere = register_from(&app, "198.51.100.9", "idem@example.com", PASSWORD, Some(key)).await;
    elsewhere.assert_problem(409, "email_taken", Some("email"));
    // Guessing the password through replays: 3 wrong guesses (the client budget here),
    // then this client is refused even with the right password, like after failed logins.
    for guess in ["guess one!", "guess two!", "guess three"] {
        let r = register_from(&app, "203.0.113.1", "idem@example.com", guess, Some(key)).await;
        r.assert_problem(422, "idempotency_key_reused", None);
    }
    let locked = register_from(&app, "203.0.113.1", "idem@example.com", PASSWORD, Some(key)).await;
    locked.assert_problem(429, "too_many_attempts", None);
    let login = json!({"email": "idem@example.com", "password": PASSWORD}).to_string();
    let headers = [("content-type", "application/json"), ("x-forwarded-for", "203.0.113.1")];
    let same_client = app.send(Method::POST, "/v1/sessions", &headers, Some(Bytes::from(login))).await;
    same_client.assert_problem(429, "too_many_attempts", None);
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

/// The soft limit on open files, from /proc (no libc binding needed); None off Linux.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Reads until the peer closes (or resets) the connection; false if it is still open
/// when `within` runs out.
async fn closed_by_peer(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// 1,000 slowloris connections (half a request head, then a byte now and then) are all
/// closed by the server after the header timeout, and counted, while ordinary clients
/// keep being served. Before, such a connection was still open after 70 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_while_others_are_served() {
    // Each connection costs two descriptors here (client and server in one process).
    let wanted = 1000;
    let count = match open_file_limit() {
        Some(limit) if limit < 2 * wanted + 200 => {
            let n = (limit.saturating_sub(200) / 2).max(10);
            eprintln!("REDUCED slowloris test: open-file limit {limit} allows {n} connections, not {wanted}");
            n
        }
        _ => wanted,
    };
    let app = sqlite_app("hardening slowloris", |c| {
        c.http.header_read_timeout_ms = 1000;
        c.http.max_connections = count + 100;
    })
    .await;
    let (_, token) = app.user_with_token("steady@example.com").await;
    let mut slow = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /v1/sessions/current HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
        slow.push(s);
    }
    // Keep dribbling for a while, as a slowloris does, while real clients are served.
    for round in 0..5 {
        for s in &mut slow {
            let _ = s.write_all(b"a").await;
        }
        let me = app.get("/v1/sessions/current", Some(&token)).await;
        assert_eq!(me.status, StatusCode::OK, "ordinary request failed in round {round}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed = futures_join_all(slow.iter_mut().map(|s| closed_by_peer(s, Duration::from_secs(30)))).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of {count} slowloris connections were never closed");
    let m = app.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&m.raw);
    let timeouts = metric_value(&text, r#"strata_http_connection_timeouts_total{phase="header"}"#);
    assert!(timeouts >= count as f64, "{timeouts} header timeouts counted for {count} connections");
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.status, StatusCode::OK);
    app.stop().await;
}

/// A kept-alive connection that goes idle is closed after the keep-alive timeout, which
/// is independent of (here: shorter than) the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let app = sqlite_app("hardening keep-alive", |c| {
        c.http.header_read_timeout_ms = 60_000;
        c.http.keep_alive_timeout_ms = 300;
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(closed_by_peer(&mut s, Duration::from_secs(30)).await, "the idle connection stayed open");
    let m = app.get("/metrics", None).await;
    assert!(
        metric_value(&String::from_utf8_lossy(&m.raw), r#"strata_http_connection_timeouts_total{phase="idle"}"#) >= 1.0
    );
    app.stop().await;
}

/// Beyond `http.max_connections`, a new connection is told 503 in a problem and closed;
/// once a slot frees up, connections are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_a_503_problem() {
    let app = sqlite_app("hardening connection cap", |c| c.http.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    // Let the server account for them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, text) = app.raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("application/problem+json") && text.contains("too_many_connections"), "{text}");
    drop(held.pop());
    let mut accepted = false;
    for _ in 0..100 {
        if app.raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.0 == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "no connection accepted after one closed");
    drop(held);
    app.stop().await;
}

/// A client that writes a whole 2 MiB body before reading gets the 413 problem, not a
/// broken pipe or reset, with or without a Content-Length; a body that stops arriving gets
/// a 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_stalled_bodies_get_their_answer() {
    let app = sqlite_app("hardening bodies", |c| c.http.body_read_timeout_ms = 300).await;
    let body = vec![b'x'; 2 * 1024 * 1024];
    let sized = format!(
        "POST /v1/users HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut chunked =
        b"POST /v1/users HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for chunk in body.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for request in [[sized.as_bytes(), &body].concat(), chunked] {
        let (status, text) = app.raw(&request).await;
        assert_eq!(status, 413, "{}", &text[..text.len().min(300)]);
        assert!(text.contains("body_too_large"), "{}", &text[..text.len().min(300)]);
    }
    let (status, text) = app
        .raw(b"POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\"")
        .await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_timeout") && text.contains("application/problem+json"), "{text}");
    app.stop().await;
}
