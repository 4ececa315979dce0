//! End-to-end tests: the real server on port 0, a fresh database per test, driven over
//! HTTP, once per backend. PostgreSQL and MySQL are skipped visibly when unreachable,
//! unless `STRATA_REQUIRE_BACKENDS` names them (CI).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use strata::app::Application;
use strata::config::Config;
use strata_core::ports::{Clock, ManualClock, SystemClock};
use strata_store::Backend;
use strata_store::testing::{TestDb, fresh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "test-admin-token-0123456789";
const PASSWORD: &str = "correct horse battery";

struct TestApp {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    clock: Arc<ManualClock>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: TestDb,
    /// A sharded app's shard databases, dropped with it.
    _shards: Vec<TestDb>,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with this status, code and (if given) field.
    #[track_caller]
    fn assert_problem(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "body: {}", String::from_utf8_lossy(&self.raw));
        assert_eq!(self.header("content-type"), "application/problem+json");
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status);
        assert_eq!(self.body["type"], format!("urn:strata:problem:{code}"));
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        if let Some(field) = field {
            assert_eq!(self.body["field"], field, "body: {}", self.body);
        }
    }
}

fn test_config(url: &str) -> Config {
    let mut c = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    c.database.url = url.to_owned();
    c.auth.admin_token = Some(strata_core::secret::Secret::new(ADMIN));
    // Cheap hashing keeps the suite fast; the OWASP defaults are unit-tested in core.
    c.password.memory_kib = 256;
    c.password.iterations = 1;
    c.throttle.account_max_failures = 3;
    c.throttle.client_max_failures = 1000;
    c.throttle.registration_max = 100_000;
    c.auth.session_ttl_secs = 3600;
    c
}

async fn spawn(backend: Backend, what: &str, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let db = fresh(backend, what).await?;
    let mut config = test_config(&db.url);
    tweak(&mut config);
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let app = Application::build_with_clock(config, clock.clone()).await.expect("build app");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Some(TestApp { addr, client, clock, shutdown: Some(tx), server: Some(server), _db: db, _shards: Vec::new() })
}

impl TestApp {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Bytes>) -> Resp {
        let mut req = Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.unwrap_or_default())).unwrap();
        let res = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = res.status();
        let headers = res.headers().clone();
        let raw = res.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Resp { status, headers, body, raw }
    }

    async fn json(&self, method: Method, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        self.send(method, path, &headers, Some(Bytes::from(body.to_string()))).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(Method::GET, path, &headers, None).await
    }

    async fn register(&self, email: &str, name: &str) -> Value {
        let r = self
            .json(Method::POST, "/v1/users", None, &json!({"email": email, "name": name, "password": PASSWORD}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }

    async fn login(&self, email: &str, password: &str) -> Resp {
        self.json(Method::POST, "/v1/sessions", None, &json!({"email": email, "password": password})).await
    }

    /// Registers and logs in; returns (user, token).
    async fn user_with_token(&self, email: &str) -> (Value, String) {
        let user = self.register(email, "Test User").await;
        let r = self.login(email, PASSWORD).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (user, r.body["token"].as_str().unwrap().to_owned())
    }

    /// Sends raw bytes on a fresh connection and returns the status code and body.
    async fn raw(&self, bytes: &[u8]) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

async fn register_login_whoami_logout(app: TestApp) {
    let r = app
        .json(
            Method::POST,
            "/v1/users",
            None,
            &json!({"email": " Ada@Example.COM ", "name": "Ada", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), format!("/v1/users/{id}"));
    assert_eq!(r.header("etag"), "\"1\"");
    assert_eq!(r.body["email"], "ada@example.com");
    assert_eq!(r.body["role"], "user");
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["version"], 1);
    let keys: Vec<_> = r.body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        ["created_at", "email", "id", "mfa_enabled", "name", "role", "status", "updated_at", "verified", "version"]
    );
    assert_eq!((r.body["verified"].clone(), r.body["mfa_enabled"].clone()), (json!(false), json!(false)));
    assert!(!String::from_utf8_lossy(&r.raw).contains("argon2"));

    let login = app.login("ADA@example.com", PASSWORD).await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.body);
    assert_eq!(login.header("cache-control"), "no-store");
    let token = login.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("st_") && token.len() == 46);
    assert_eq!(login.body["user"]["id"], id.as_str());

    let me = app.get("/v1/sessions/current", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["user"]["id"], id.as_str());
    assert_eq!(me.body["session"]["expires_at"], login.body["expires_at"]);
    let timing = me.header("server-timing").to_owned();
    assert!(timing.contains("app;dur=") && timing.contains("db;dur="), "{timing}");
    assert!(!me.header("x-request-id").is_empty());

    let r =
        app.send(Method::DELETE, "/v1/sessions/current", &[("authorization", &format!("Bearer {token}"))], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get("/v1/sessions/current", Some(&token)).await.assert_problem(401, "token_revoked", Some("Authorization"));
    app.stop().await;
}

async fn duplicate_email_conflicts(app: TestApp) {
    app.register("dup@example.com", "One").await;
    let r = app
        .json(
            Method::POST,
            "/v1/users",
            None,
            &json!({"email": "DUP@example.com", "name": "Two", "password": PASSWORD}),
        )
        .await;
    r.assert_problem(409, "email_taken", Some("email"));
    app.stop().await;
}

async fn idempotent_create(app: TestApp) {
    let body = json!({"email": "idem@example.com", "name": "Idem", "password": PASSWORD}).to_string();
    let send = |key: &'static str, body: String| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/v1/users",
                &[("content-type", "application/json"), ("idempotency-key", key)],
                Some(Bytes::from(body)),
            )
            .await
        }
    };
    let first = send("key-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send("key-1", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));

    // Same key, different body: refused, nothing created.
    let other = json!({"email": "idem2@example.com", "name": "Idem", "password": PASSWORD}).to_string();
    send("key-1", other).await.assert_problem(422, "idempotency_key_reused", Some("Idempotency-Key"));
    let wrong_pw = json!({"email": "idem@example.com", "name": "Idem", "password": "another password"}).to_string();
    send("key-1", wrong_pw).await.assert_problem(422, "idempotency_key_reused", Some("Idempotency-Key"));

    // Concurrent retries with a fresh key all get the one user.
    let body2 = json!({"email": "race@example.com", "name": "Race", "password": PASSWORD}).to_string();
    let results = futures_join_all((0..6).map(|_| send("key-2", body2.clone()))).await;
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);

    let list = app.get("/v1/users?limit=200", Some(ADMIN)).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 2, "{}", list.body);
    app.stop().await;
}

/// Runs futures concurrently on this task (a join_all without the futures crate).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futs.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot
                && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *result = Some(v);
                *slot = None;
            }
        }
        if pending.iter().all(Option::is_none) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    results.into_iter().map(|r| r.expect("completed")).collect()
}

async fn login_failures_do_not_enumerate_and_are_throttled(app: TestApp) {
    app.register("victim@example.com", "Victim").await;
    let unknown = app.login("nobody@example.com", "whatever password").await;
    let wrong = app.login("victim@example.com", "wrong password").await;
    unknown.assert_problem(401, "invalid_credentials", None);
    assert_eq!(unknown.raw, wrong.raw, "unknown email and wrong password must answer identically");

    // account_max_failures = 3 in tests: two more failures lock the account…
    app.login("victim@example.com", "wrong password").await.assert_problem(401, "invalid_credentials", None);
    app.login("victim@example.com", "wrong password").await;
    let locked = app.login("victim@example.com", PASSWORD).await;
    locked.assert_problem(429, "too_many_attempts", None);
    let retry: u64 = locked.header("retry-after").parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    // …until the window passes.
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(app.login("victim@example.com", PASSWORD).await.status, StatusCode::CREATED);
    app.stop().await;
}

/// 200 concurrent wrong guesses for one account: the throttle (3 failures per window in
/// tests) lets no more than 3 reach password verification, whatever the interleaving.
/// Before reservations, the check and the count were separate and most of the burst got
/// verified (130 × 401 of 200 against a limit of 5).
async fn concurrent_guesses_are_capped_by_the_throttle(app: TestApp) {
    app.register("target@example.com", "Target").await;
    let attempts = (0..200).map(|i| {
        let app = &app;
        async move { app.login("target@example.com", &format!("guess number {i}")).await.status.as_u16() }
    });
    let statuses = futures_join_all(attempts).await;
    let verified = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429 || s == 503).count();
    assert!((1..=3).contains(&verified), "{verified} wrong guesses verified: {statuses:?}");
    assert_eq!(verified + refused, 200, "{statuses:?}");
    // The budget is spent: the right password is refused too until the window ends.
    app.login("target@example.com", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    app.stop().await;
}

async fn access_rules(app: TestApp) {
    let (alice, alice_token) = app.user_with_token("alice@example.com").await;
    let (bob, _) = app.user_with_token("bob@example.com").await;
    let alice_path = format!("/v1/users/{}", alice["id"].as_str().unwrap());
    let bob_path = format!("/v1/users/{}", bob["id"].as_str().unwrap());

    assert_eq!(app.get(&alice_path, Some(&alice_token)).await.status, StatusCode::OK);
    app.get(&bob_path, Some(&alice_token)).await.assert_problem(403, "forbidden", None);
    app.get("/v1/users", Some(&alice_token)).await.assert_problem(403, "forbidden", None);
    assert_eq!(app.get(&bob_path, Some(ADMIN)).await.status, StatusCode::OK);
    app.get("/v1/sessions/current", Some(ADMIN)).await.assert_problem(401, "not_a_session", Some("Authorization"));
    let missing = format!("/v1/users/{}", uuid::Uuid::now_v7());
    app.get(&missing, Some(ADMIN)).await.assert_problem(404, "not_found", None);

    // Promote Alice; as an admin user she may now read Bob.
    let r = app
        .send(
            Method::PATCH,
            &alice_path,
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {ADMIN}")),
                ("if-match", "\"1\""),
            ],
            Some(Bytes::from(json!({"role": "admin"}).to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["role"], "admin");
    assert_eq!(app.get(&bob_path, Some(&alice_token)).await.status, StatusCode::OK);
    app.stop().await;
}

async fn patch_with_optimistic_concurrency(app: TestApp) {
    let (user, token) = app.user_with_token("pat@example.com").await;
    app.register("taken@example.com", "Taken").await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let auth = format!("Bearer {token}");
    let patch = |if_match: Option<&'static str>, body: Value| {
        let (app, path, auth) = (&app, path.clone(), auth.clone());
        async move {
            let mut h = vec![("content-type", "application/json"), ("authorization", auth.as_str())];
            if let Some(m) = if_match {
                h.push(("if-match", m));
            }
            app.send(Method::PATCH, &path, &h, Some(Bytes::from(body.to_string()))).await
        }
    };
    patch(None, json!({"name": "X"})).await.assert_problem(428, "if_match_required", Some("If-Match"));
    // An empty If-Match is an empty list: the same as none.
    patch(Some(""), json!({"name": "X"})).await.assert_problem(428, "if_match_required", Some("If-Match"));
    patch(Some("1"), json!({"name": "X"})).await.assert_problem(400, "malformed_if_match", Some("If-Match"));
    patch(Some("\"abc\""), json!({"name": "X"})).await.assert_problem(400, "malformed_if_match", Some("If-Match"));
    patch(Some("\"7\""), json!({"name": "X"})).await.assert_problem(412, "version_mismatch", Some("If-Match"));
    patch(Some("\"1\""), json!({"role": "admin"})).await.assert_problem(403, "forbidden", None);
    // Your own email or password needs your current password; a name does not.
    patch(Some("\"1\""), json!({"email": "x@example.com"})).await.assert_problem(
        422,
        "current_password_required",
        Some("current_password"),
    );
    patch(Some("\"1\""), json!({"password": "a brand new password", "current_password": "not it at all"}))
        .await
        .assert_problem(403, "current_password_incorrect", Some("current_password"));
    patch(Some("\"1\""), json!({"email": "TAKEN@example.com", "current_password": PASSWORD})).await.assert_problem(
        409,
        "email_taken",
        Some("email"),
    );

    // Your own email change is confirmed by mail (lifecycle tests): it goes alone, and
    // changes nothing yet.
    patch(Some("\"1\""), json!({"name": "Renamed ✓", "email": "new@example.com", "current_password": PASSWORD}))
        .await
        .assert_problem(422, "email_change_not_alone", Some("email"));
    let pending = patch(Some("\"1\""), json!({"email": "new@example.com", "current_password": PASSWORD})).await;
    assert_eq!(pending.status, StatusCode::ACCEPTED, "{}", pending.body);
    assert_eq!(pending.body["user"]["email"], "pat@example.com");
    let ok = patch(Some("\"1\""), json!({"name": "Renamed ✓"})).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.header("etag"), "\"2\"");
    assert_eq!(ok.body["name"], "Renamed ✓");
    assert_eq!(ok.body["email"], "pat@example.com");
    // The same stale request again: lost update prevented.
    patch(Some("\"1\""), json!({"name": "Stale"})).await.assert_problem(412, "version_mismatch", None);

    // Password change: other sessions end, this one stays, the old password stops working.
    let other = app.login("pat@example.com", PASSWORD).await.body["token"].as_str().unwrap().to_owned();
    let changed =
        patch(Some("W/\"2\""), json!({"password": "a brand new password", "current_password": PASSWORD})).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.status, StatusCode::OK);
    app.get("/v1/sessions/current", Some(&other)).await.assert_problem(401, "token_revoked", None);
    app.login("pat@example.com", PASSWORD).await.assert_problem(401, "invalid_credentials", None);
    assert_eq!(app.login("pat@example.com", "a brand new password").await.status, StatusCode::CREATED);
    app.stop().await;
}

async fn delete_revokes_sessions(app: TestApp) {
    let (user, token) = app.user_with_token("gone@example.com").await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let auth = format!("Bearer {token}");
    let r = app.send(Method::DELETE, &path, &[("authorization", &auth), ("if-match", "\"5\"")], None).await;
    r.assert_problem(412, "version_mismatch", None);
    let r = app.send(Method::DELETE, &path, &[("authorization", &auth)], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get("/v1/sessions/current", Some(&token)).await.assert_problem(401, "invalid_token", None);
    app.get(&path, Some(ADMIN)).await.assert_problem(404, "not_found", None);
    app.login("gone@example.com", PASSWORD).await.assert_problem(401, "invalid_credentials", None);
    app.stop().await;
}

async fn disabled_accounts_lose_access(app: TestApp) {
    let (user, token) = app.user_with_token("dis@example.com").await;
    let path = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let r = app
        .send(
            Method::PATCH,
            &path,
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {ADMIN}")),
                ("if-match", "\"1\""),
            ],
            Some(Bytes::from(json!({"status": "disabled"}).to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app.get("/v1/sessions/current", Some(&token)).await.assert_problem(401, "token_revoked", None);
    app.login("dis@example.com", PASSWORD).await.assert_problem(403, "account_disabled", None);
    app.stop().await;
}

async fn sessions_expire(app: TestApp) {
    let (_, token) = app.user_with_token("exp@example.com").await;
    app.clock.advance(Duration::from_secs(3599));
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.status, StatusCode::OK);
    app.clock.advance(Duration::from_secs(2));
    app.get("/v1/sessions/current", Some(&token)).await.assert_problem(401, "token_expired", Some("Authorization"));
    app.stop().await;
}

async fn cursor_pagination(app: TestApp) {
    let mut created = Vec::new();
    for i in 0..12 {
        created.push(
            app.register(&format!("p{i:02}@example.com"), &format!("P{i}")).await["id"].as_str().unwrap().to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/users?limit=5".to_owned();
    loop {
        let page = app.get(&path, Some(ADMIN)).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        seen.extend(items.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/users?limit=5&cursor={c}"),
            None => break,
        }
    }
    created.sort();
    assert_eq!(seen, created, "a walk visits every user exactly once, in a stable order");

    let one = app.get("/v1/users?email=P03%40EXAMPLE.com", Some(ADMIN)).await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(one.body["next_cursor"], Value::Null);

    for (query, code, field) in [
        ("limit=0", "invalid_limit", "limit"),
        ("limit=201", "invalid_limit", "limit"),
        ("limit=abc", "invalid_limit", "limit"),
        ("limit=-1", "invalid_limit", "limit"),
        ("cursor=garbage", "invalid_cursor", "cursor"),
        ("sort=name", "unknown_parameter", "sort"),
        ("limit=5&limit=6", "duplicate_parameter", "limit"),
    ] {
        app.get(&format!("/v1/users?{query}"), Some(ADMIN)).await.assert_problem(400, code, Some(field));
    }
    app.get("/v1/users?email=not-an-email", Some(ADMIN)).await.assert_problem(422, "invalid_email", Some("email"));
    // An empty value is a filter not given (what a form with an empty field sends).
    assert_eq!(app.get("/v1/users?cursor=&email=", Some(ADMIN)).await.status, StatusCode::OK);
    app.stop().await;
}

async fn names_are_stored_verbatim(app: TestApp) {
    let name = "Robert'); DROP TABLE users;-- \"Bobby\" <b>&amp; \\ % _ 🦀 日本語 Ωμέγα";
    let user = app.register("bobby@example.com", name).await;
    assert_eq!(user["name"], name);
    let r = app.get(&format!("/v1/users/{}", user["id"].as_str().unwrap()), Some(ADMIN)).await;
    assert_eq!(r.body["name"], name);
    app.stop().await;
}

async fn bad_input_gets_problems_and_writes_nothing(app: TestApp) {
    let (user, token) = app.user_with_token("me@example.com").await;
    let me = format!("/v1/users/{}", user["id"].as_str().unwrap());
    let bearer = format!("Bearer {token}");
    let json_ct = ("content-type", "application/json");
    let post = |body: &str| {
        let (app, body) = (&app, body.to_owned());
        async move { app.send(Method::POST, "/v1/users", &[json_ct], Some(Bytes::from(body))).await }
    };
    let long = "x".repeat(101);
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{".into(), 400, "malformed_json", Some("body")),
        ("".into(), 400, "malformed_json", Some("body")),
        (r#"{"email":"a@b.co","name":"n","password":"pppppppp"} trailing"#.into(), 400, "malformed_json", Some("body")),
        ("[1,2]".into(), 422, "invalid_type", Some("body")),
        ("\"just a string\"".into(), 422, "invalid_type", Some("body")),
        (r#"{"email":"a@b.co","name":"n"}"#.into(), 422, "missing_field", Some("password")),
        (
            r#"{"email":"a@b.co","name":"n","password":"pppppppp","admin":true}"#.into(),
            422,
            "unknown_field",
            Some("admin"),
        ),
        (
            r#"{"email":"a@b.co","name":"n","password":"pppppppp","name":"m"}"#.into(),
            422,
            "duplicate_field",
            Some("name"),
        ),
        (r#"{"email":"a@b.co","name":42,"password":"pppppppp"}"#.into(), 422, "invalid_type", Some("name")),
        (r#"{"email":null,"name":"n","password":"pppppppp"}"#.into(), 422, "invalid_type", Some("email")),
        (r#"{"email":"not-an-email","name":"n","password":"pppppppp"}"#.into(), 422, "invalid_email", Some("email")),
        (r#"{"email":"a@b.co","name":"","password":"pppppppp"}"#.into(), 422, "required", Some("name")),
        (r#"{"email":"a@b.co","name":"   ","password":"pppppppp"}"#.into(), 422, "required", Some("name")),
        (format!(r#"{{"email":"a@b.co","name":"{long}","password":"pppppppp"}}"#), 422, "too_long", Some("name")),
        (
            r#"{"email":"a@b.co","name":"bell\u0007","password":"pppppppp"}"#.into(),
            422,
            "invalid_character",
            Some("name"),
        ),
        (r#"{"email":"a@b.co","name":"n","password":"short"}"#.into(), 422, "too_short", Some("password")),
        (
            format!(r#"{{"email":"a@b.co","name":"n","password":"{}"}}"#, "p".repeat(257)),
            422,
            "too_long",
            Some("password"),
        ),
        // Hostile nesting is refused at the first level, before any recursion.
        (format!(r#"{{"email":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000)), 422, "invalid_type", Some("email")),
    ];
    for (body, status, code, field) in &cases {
        let r = post(body).await;
        assert_eq!(r.status.as_u16(), *status, "case {body:.80}: {}", r.body);
        r.assert_problem(*status, code, *field);
    }
    // Invalid UTF-8 inside a JSON string.
    let r =
        app.send(Method::POST, "/v1/users", &[json_ct], Some(Bytes::from_static(b"{\"email\":\"\xff\xfe\"}"))).await;
    r.assert_problem(400, "malformed_json", Some("body"));

    // Content type and size.
    let body = Bytes::from(json!({"email": "a@b.co", "name": "n", "password": PASSWORD}).to_string());
    app.send(Method::POST, "/v1/users", &[("content-type", "text/plain")], Some(body.clone())).await.assert_problem(
        415,
        "unsupported_media_type",
        Some("Content-Type"),
    );
    app.send(Method::POST, "/v1/users", &[], Some(body.clone())).await.assert_problem(
        415,
        "unsupported_media_type",
        None,
    );
    let huge = format!(r#"{{"email":"a@b.co","name":"n","password":"{}"}}"#, "p".repeat(20_000));
    post(&huge).await.assert_problem(413, "body_too_large", Some("body"));
    // Oversized without Content-Length (chunked): caught while reading.
    let chunk = "a".repeat(20_000);
    let raw = format!(
        "POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (status, text) = app.raw(raw.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("application/problem+json"));

    // Tokens.
    app.get("/v1/sessions/current", None).await.assert_problem(401, "missing_token", Some("Authorization"));
    assert!(app.get("/v1/sessions/current", None).await.header("www-authenticate").starts_with("Bearer"));
    app.get("/v1/sessions/current", Some("garbage")).await.assert_problem(401, "malformed_token", None);
    let forged = format!("st_{}", "A".repeat(43));
    app.get("/v1/sessions/current", Some(&forged)).await.assert_problem(401, "invalid_token", None);
    app.send(Method::GET, "/v1/sessions/current", &[("authorization", "Basic dTpw")], None).await.assert_problem(
        401,
        "malformed_token",
        None,
    );
    app.send(Method::GET, "/v1/sessions/current", &[("authorization", "Bearer")], None).await.assert_problem(
        401,
        "malformed_token",
        None,
    );

    // Paths, headers, routes, methods.
    app.get("/v1/users/not-a-uuid", Some(ADMIN)).await.assert_problem(400, "invalid_uuid", Some("id"));
    app.get("/v1/users/%27%20OR%201=1", Some(ADMIN)).await.assert_problem(400, "invalid_uuid", Some("id"));
    let patch_headers = [json_ct, ("authorization", bearer.as_str()), ("if-match", "\"1\"")];
    app.send(Method::PATCH, &me, &patch_headers, Some(Bytes::from("{}"))).await.assert_problem(
        422,
        "empty_patch",
        Some("body"),
    );
    app.send(Method::PATCH, &me, &patch_headers, Some(Bytes::from(r#"{"name":null}"#))).await.assert_problem(
        422,
        "invalid_type",
        Some("name"),
    );
    app.send(Method::PATCH, &me, &patch_headers, Some(Bytes::from(r#"{"status":"root"}"#))).await.assert_problem(
        422,
        "invalid_value",
        Some("status"),
    );
    app.send(Method::PATCH, &me, &patch_headers, Some(Bytes::from(r#"{"status":"disabled"}"#))).await.assert_problem(
        403,
        "forbidden",
        None,
    );
    app.send(
        Method::PATCH,
        &me,
        &[json_ct, ("authorization", bearer.as_str()), ("if-match", "\"\"")],
        Some(Bytes::from("{}")),
    )
    .await
    .assert_problem(400, "malformed_if_match", Some("If-Match"));
    let long_key = "k".repeat(300);
    app.send(Method::POST, "/v1/users", &[json_ct, ("idempotency-key", &long_key)], Some(body.clone()))
        .await
        .assert_problem(400, "invalid_idempotency_key", Some("Idempotency-Key"));
    app.get("/v1/nope", None).await.assert_problem(404, "route_not_found", None);
    let r = app.send(Method::PUT, "/v1/sessions", &[], None).await;
    r.assert_problem(405, "method_not_allowed", None);
    assert_eq!(r.header("allow"), "POST");

    // Second factor: malformed codes and challenges, and requests in the wrong state.
    let totp = format!("{me}/mfa/totp");
    let auth = [json_ct, ("authorization", bearer.as_str())];
    type Case<'a> = (Method, String, &'a str, u16, &'a str, Option<&'a str>);
    let mfa_cases: Vec<Case> = vec![
        (Method::POST, totp.clone(), "{}", 422, "missing_field", Some("current_password")),
        (
            Method::POST,
            totp.clone(),
            r#"{"current_password":"wrong password"}"#,
            403,
            "current_password_incorrect",
            Some("current_password"),
        ),
        (Method::POST, format!("{totp}/confirm"), r#"{"code":"12a456"}"#, 422, "mfa_code_malformed", Some("code")),
        (Method::POST, format!("{totp}/confirm"), r#"{"code":"123456"}"#, 409, "mfa_not_enabled", None),
        (Method::POST, format!("{totp}/recovery-codes"), r#"{"code":"123456"}"#, 409, "mfa_not_enabled", None),
        (Method::DELETE, totp.clone(), r#"{"code":"123456"}"#, 409, "mfa_not_enabled", None),
        (Method::DELETE, totp.clone(), r#"{"code":7}"#, 422, "invalid_type", Some("code")),
        (
            Method::POST,
            "/v1/sessions/mfa".into(),
            r#"{"challenge":"mfa_x","code":"123456"}"#,
            422,
            "mfa_challenge_invalid",
            Some("challenge"),
        ),
        (Method::POST, "/v1/sessions/mfa".into(), r#"{"code":"123456"}"#, 422, "missing_field", Some("challenge")),
    ];
    for (method, path, body, status, code, field) in mfa_cases {
        let r = app.send(method.clone(), &path, &auth, Some(Bytes::from(body))).await;
        r.assert_problem(status, code, field);
    }

    // Nothing above created or changed anything.
    let list = app.get("/v1/users", Some(ADMIN)).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "{}", list.body);
    assert_eq!(list.body["items"][0]["version"], 1);
    app.stop().await;
}

async fn operations_endpoints(app: TestApp) {
    let h = app.get("/healthz", None).await;
    assert_eq!((h.status, h.body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let r = app.get("/readyz", None).await;
    assert_eq!((r.status, r.body["database"].as_str()), (StatusCode::OK, Some("ok")));
    app.user_with_token("m@example.com").await;

    let m = app.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&m.raw);
    assert!(m.header("content-type").starts_with("text/plain"));
    assert!(
        text.contains(r#"strata_http_requests_total{route="/v1/sessions",method="POST",status="201"} 1"#),
        "{text}"
    );
    assert!(text.contains("strata_http_request_duration_seconds_bucket{"));
    assert!(text.contains(r#"strata_db_query_duration_seconds_count{op="user_by_email",outcome="ok"}"#));
    assert!(text.contains(r#"strata_db_pool_connections{state="size"}"#));
    // The scrape itself is the one request in flight.
    assert!(text.contains("\nstrata_http_requests_in_flight 1\n"), "{text}");
    assert!(text.contains("\nstrata_db_pool_acquires_total "), "{text}");
    assert!(text.contains("\nstrata_db_pool_wait_seconds_total "), "{text}");
    assert!(text.contains("\nstrata_db_pool_hold_seconds_total "), "{text}");

    let doc = app.get("/openapi.json", None).await;
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for route in strata_api::observe::ROUTES {
        assert!(doc.body["paths"].get(*route).is_some(), "{route} missing from OpenAPI");
    }
    // And the converse: a new route must get its own metrics label, not "unmatched".
    for path in doc.body["paths"].as_object().unwrap().keys() {
        assert!(strata_api::observe::ROUTES.contains(&path.as_str()), "{path} missing from observe::ROUTES");
    }
    // Every operation documents its problem responses.
    for (path, item) in doc.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if path.starts_with("/v1/") {
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|s| s.starts_with('4')), "{method} {path} documents no 4xx");
            }
        }
    }
    let docs = app.get("/docs", None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.header("content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(&docs.raw).contains("/openapi.json"));
    app.stop().await;
}

async fn shutdown_drains_in_flight_requests(mut app: TestApp) {
    // Start a request and leave its body half-sent, so it is surely in flight…
    let body = json!({"email": "late@example.com", "name": "Late", "password": PASSWORD}).to_string();
    let (head, tail) = body.split_at(10);
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "POST /v1/users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …then ask the server to stop, and finish the request afterwards.
    let _ = app.shutdown.take().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(tail.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    app.server.take().unwrap().await.unwrap().unwrap();
    // And new connections are refused.
    assert!(tokio::net::TcpStream::connect(app.addr).await.is_err());
}

macro_rules! api_tests {
    ($backend:ident, $variant:expr, [$($case:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let what = concat!("api ", stringify!($case));
                    let Some(app) = spawn($variant, what, |_| {}).await else { return };
                    super::$case(app).await;
                }
            )*
        }
    };
}

/// `case(backend)` as one test per backend, for test modules that start their own app.
macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Backend::Postgres).await })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Backend::Mysql).await })*
        }
    };
}

/// An app over a sharded store: a catalog and two shards, fresh databases of `backend`,
/// 8 logical shards.
async fn spawn_sharded(backend: Backend, what: &str) -> Option<TestApp> {
    let catalog = fresh(backend, what).await?;
    let shards = vec![fresh(backend, what).await?, fresh(backend, what).await?];
    let mut config = test_config(&catalog.url);
    config.database.shards = shards.iter().map(|db| db.url.clone()).collect::<Vec<_>>().join(",");
    config.database.logical_shards = 8;
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let app = Application::build_with_clock(config, clock.clone()).await.expect("build sharded app");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Some(TestApp { addr, client, clock, shutdown: Some(tx), server: Some(server), _db: catalog, _shards: shards })
}

macro_rules! api_tests_sharded {
    ($name:ident, $variant:expr, [$($case:ident),* $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let what = concat!("sharded api ", stringify!($case));
                    let Some(app) = spawn_sharded($variant, what).await else { return };
                    super::$case(app).await;
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($case:ident),* $(,)?) => {
        api_tests!(sqlite, Backend::Sqlite, [$($case),*]);
        api_tests!(postgres, Backend::Postgres, [$($case),*]);
        api_tests!(mysql, Backend::Mysql, [$($case),*]);
        api_tests_sharded!(sharded_sqlite, Backend::Sqlite, [$($case),*]);
        api_tests_sharded!(sharded_postgres, Backend::Postgres, [$($case),*]);
        api_tests_sharded!(sharded_mysql, Backend::Mysql, [$($case),*]);
    };
}

all_backends!(
    register_login_whoami_logout,
    duplicate_email_conflicts,
    idempotent_create,
    login_failures_do_not_enumerate_and_are_throttled,
    concurrent_guesses_are_capped_by_the_throttle,
    access_rules,
    patch_with_optimistic_concurrency,
    delete_revokes_sessions,
    disabled_accounts_lose_access,
    sessions_expire,
    cursor_pagination,
    names_are_stored_verbatim,
    bad_input_gets_problems_and_writes_nothing,
    operations_endpoints,
    shutdown_drains_in_flight_requests,
);

/// The binary itself: `strata serve` prints where it listens, serves, and exits cleanly
/// on SIGTERM.
#[test]
fn binary_serves_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let dir = strata_store::testing::TempDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("STRATA_DATABASE_URL", format!("sqlite://{}/s.db", dir.path.display()))
        .env("STRATA_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the server running (it would hold the test
    // harness's output pipe open and hang `cargo test`).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("strata listening on http://127.0.0.1:"), "{line}");
    assert!(line.contains("role: api + worker, database: sqlite"), "{line}");
    let addr = line.split("http://").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let killed = std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn migrate_command_prepares_the_database() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("m.db");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("migrate")
        .env("STRATA_DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("STRATA_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is migrated"));
    assert!(db.exists());
}

#[test]
fn config_show_redacts_secrets() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["config", "show"])
        .env("STRATA_DATABASE_URL", "postgres://app:hunter2@db.internal/strata")
        .env("STRATA_ADMIN_TOKEN", "very-secret-admin-token")
        .env("STRATA_CACHE_URL", "redis://:cache-hunter3@127.0.0.1:6379")
        .env("STRATA_CACHE_SECRET", "very-secret-cache-hmac-key")
        .env("STRATA_CACHE_PREVIOUS_SECRETS", "very-secret-old-hmac-key-1,very-secret-old-hmac-key-2")
        .env("STRATA_SMTP_URL", "smtp://mailer:smtp-hunter4@mail.example.com:587?tls=required")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("postgres://app:REDACTED@db.internal/strata"), "{text}");
    assert!(text.contains("smtp://mailer:REDACTED@mail.example.com:587?tls=required"), "{text}");
    assert!(!text.contains("hunter") && !text.contains("very-secret"), "{text}");
}

#[test]
fn bad_configuration_fails_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve"])
        .env("STRATA_DATABASE_URL", "oracle://nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database.url") && err.contains("oracle"), "{err}");
}

/// Cache behaviour end to end: single-flight, failures, cross-instance staleness.
#[path = "api/cache.rs"]
mod cache;

/// Issue 11: read replicas with read-your-writes across instances.
#[path = "api/replicas.rs"]
mod replicas;

/// Issue 11: `strata shards` against a sharded server that keeps serving.
#[path = "api/shards.rs"]
mod shards;

/// Issue 7: what hostile clients can learn or do through the HTTP layer.
#[path = "api/hardening.rs"]
mod hardening;

/// Issue 9: the outbox relay, the bus, the listeners and the audit log.
#[path = "api/events.rs"]
mod events;

/// Issue 9: webhook endpoints, signed durable deliveries, replays and the SSRF policy.
#[path = "api/webhooks.rs"]
mod webhooks;

/// Issue 15: groups, membership rows, who-am-I.
#[path = "api/groups.rs"]
mod groups;

/// Issue 15: SCIM 2.0 groups and discovery.
#[path = "api/scim.rs"]
mod scim;

/// Reads one HTTP/1.1 request from a test receiver's connection: the head (request line and
/// headers, without the blank line) and the `Content-Length` body. `None` if the peer
/// closes first.
async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = conn.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + 4 + len {
        let n = conn.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end + 4..head_end + 4 + len].to_vec()))
}

/// A Python that can import `modules` (STRATA_TEST_PYTHON, then CI's cached venv, then
/// `python3`), or `None` after the skip-or-require rule for `backend` has had its say.
fn python_with(modules: &str, what: &str, backend: &str, why: &str) -> Option<String> {
    let candidates = [
        std::env::var("STRATA_TEST_PYTHON").ok(),
        std::env::var("HOME").ok().map(|h| format!("{h}/.cache/strata-tools/py/bin/python")),
        Some("python3".to_owned()),
    ];
    let found = candidates.into_iter().flatten().find(|py| {
        std::process::Command::new(py)
            .args(["-c", &format!("import {modules}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        strata_core::testing::unusable(what, backend, why);
    }
    found
}

/// Issue 16: password resets over real SMTP.
#[path = "api/lifecycle.rs"]
mod lifecycle;

/// Issue 16: the TOTP second factor.
#[path = "api/mfa.rs"]
mod mfa;

/// Issue 16: cookie sessions, CSRF and CORS; headless Chromium from another origin.
#[path = "api/browser.rs"]
mod browser;

/// Issue 14: the admin console's endpoints (a user's sessions, the list's filters) and
/// `/admin` under its Content-Security-Policy.
#[path = "api/admin.rs"]
mod admin;

/// Issue 12: `strata backup` and `strata restore`.
#[path = "api/backup.rs"]
mod backup;

/// Issue 10: the gateway in front of real api processes.
#[path = "api/gateway.rs"]
mod gateway;

/// Issue 12: password hashes imported from other systems, rehashed on first login.
#[path = "api/imported.rs"]
mod imported;

/// Issue 12: `strata import` from fastapi-users, Django, Keycloak and Strata backups.
#[path = "api/import.rs"]
mod import;

/// No configured secret, and no password or token a client sent, appears in any log line,
/// at the most verbose level of Strata's own targets, through startup, requests, a cache
/// that cannot be reached and shutdown.
#[test]
fn secrets_never_reach_the_logs() {
    use std::io::{BufRead as _, Read as _, Write as _};
    const ADMIN_SECRET: &str = "admin-secret-never-logged-0001";
    const CACHE_SECRET: &str = "cache-password-never-logged";
    const CACHE_HMAC_KEY: &str = "cache-hmac-key-never-logged";
    const USER_PASSWORD: &str = "user-password-never-logged";
    const SMTP_PASSWORD: &str = "smtp-password-never-logged";
    const NEW_PASSWORD: &str = "new-password-never-logged";
    let dir = strata_store::testing::TempDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("STRATA_DATABASE_URL", format!("sqlite://{}/s.db", dir.path.display()))
        .env("STRATA_ADMIN_TOKEN", ADMIN_SECRET)
        // A closed port: the cache is down, so its errors get logged too.
        .env("STRATA_CACHE_URL", format!("redis://:{CACHE_SECRET}@127.0.0.1:1"))
        .env("STRATA_CACHE_L1", "off")
        .env("STRATA_CACHE_SECRET", CACHE_HMAC_KEY)
        // A closed port too: mail attempts fail and get logged.
        .env("STRATA_SMTP_URL", format!("smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:1"))
        .env("STRATA_PASSWORD_MEMORY_KIB", "256")
        .env("STRATA_PASSWORD_ITERATIONS", "1")
        .env("STRATA_LOG_LEVEL", "strata=trace,strata_api=trace,strata_core=trace,strata_cache=trace,debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).unwrap().split(' ').next().unwrap().to_owned();
    let request = |req: String| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let post = |path: &str, body: String| {
        request(format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
    };
    let created =
        post("/v1/users", json!({"email": "l@example.com", "name": "L", "password": USER_PASSWORD}).to_string());
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let login = post("/v1/sessions", json!({"email": "l@example.com", "password": USER_PASSWORD}).to_string());
    assert!(login.starts_with("HTTP/1.1 201"), "{login}");
    let token = login.split("\"token\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let wrong = post("/v1/sessions", json!({"email": "l@example.com", "password": "x".repeat(5000)}).to_string());
    assert!(wrong.starts_with("HTTP/1.1 4"), "{wrong}");
    let reset = post("/v1/password-resets", json!({"email": "l@example.com"}).to_string());
    assert!(reset.starts_with("HTTP/1.1 202"), "{reset}");
    let guessed = strata_core::lifecycle::OneTimeToken::generate().expose();
    let confirm =
        post("/v1/password-resets/confirm", json!({"token": guessed, "new_password": NEW_PASSWORD}).to_string());
    assert!(confirm.starts_with("HTTP/1.1 422"), "{confirm}");
    // A TOTP enrolment and a second login step: neither the secret nor the challenge is logged.
    let id = created.split("\"id\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let body = json!({"current_password": USER_PASSWORD}).to_string();
    let enrol = request(format!(
        "POST /v1/users/{id}/mfa/totp HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(enrol.starts_with("HTTP/1.1 200"), "{enrol}");
    let totp_secret = enrol.split("\"secret\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let challenge = strata_core::totp::TotpRecord {
        user_id: strata_core::domain::UserId::parse(&id).unwrap(),
        secret: strata_core::totp::TotpSecret::from_base32(&totp_secret).unwrap(),
        enabled: true,
        last_step: None,
        recovery_hashes: vec![],
        version: 1,
        created_at: strata_core::domain::Timestamp(0),
        updated_at: strata_core::domain::Timestamp(0),
    }
    .challenge("not the hash", strata_core::domain::Timestamp(i64::MAX));
    let second = post("/v1/sessions/mfa", json!({"challenge": challenge, "code": "123456"}).to_string());
    assert!(second.starts_with("HTTP/1.1 4"), "{second}");
    for bearer in [ADMIN_SECRET, &token] {
        let out = request(format!(
            "GET /v1/users HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {bearer}\r\nconnection: close\r\n\r\n"
        ));
        assert!(out.starts_with("HTTP/1.1 "), "{out}");
    }
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
    let mut logs = line;
    stdout.read_to_string(&mut logs).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(logs.lines().count() > 3, "expected verbose logs, got: {logs}");
    for secret in [
        ADMIN_SECRET,
        CACHE_SECRET,
        CACHE_HMAC_KEY,
        USER_PASSWORD,
        SMTP_PASSWORD,
        NEW_PASSWORD,
        &token,
        &guessed,
        &totp_secret,
        &challenge,
    ] {
        assert!(!logs.contains(secret), "{secret} appeared in the logs:\n{logs}");
    }
}

/// Issue 14: OTLP traces, Tokio runtime metrics, the dashboard and alert rules.
#[path = "api/observability.rs"]
mod observability;
