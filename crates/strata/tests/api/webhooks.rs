//! Webhooks end to end (issue 9): endpoints over the API, deliveries from real events to a
//! real local receiver, signatures checked by the Standard Webhooks and CloudEvents Python
//! SDKs, retries on the durable schedule, 410, dead letters and replays, the SSRF policy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpListener;

use super::*;

/// What the receiver does with the next request.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16, &'static str),
    /// Reads the request, then never answers.
    Hang,
    /// Reads the request, then closes the connection.
    Close,
}

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// A webhook receiver on a spare loopback port: records every request and answers from a
/// script (then 204 once the script runs out).
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    async fn start(script: Vec<Answer>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (g, s) = (got.clone(), script.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (g, s) = (g.clone(), s.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut conn).await else { return };
                    let mut lines = head.split("\r\n");
                    let path = lines.next().unwrap_or("").split(' ').nth(1).unwrap_or("").to_owned();
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let body = String::from_utf8_lossy(&body).into_owned();
                    g.lock().push(Received { path, headers, body });
                    let answer = s.lock().pop_front().unwrap_or(Answer::Status(204, ""));
                    match answer {
                        Answer::Status(code, extra) => {
                            let res =
                                format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n{extra}\r\n");
                            let _ = conn.write_all(res.as_bytes()).await;
                        }
                        Answer::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                        Answer::Close => drop(conn),
                    }
                });
            }
        });
        Receiver { port, got, script }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().clone()
    }

    /// Waits (bounded) until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.got.lock().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.requests()
    }
}

fn tweak(c: &mut Config) {
    c.webhooks.allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
    c.webhooks.retry_schedule_secs = vec![10, 10, 10];
    c.webhooks.timeout_ms = 500;
}

async fn create_endpoint(app: &TestApp, url: &str, events: &[&str]) -> Value {
    let r = app.json(Method::POST, "/v1/webhooks", Some(ADMIN), &json!({ "url": url, "events": events })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body
}

/// Waits (bounded) until the delivery of `endpoint` matching `pred` exists.
async fn delivery_where(app: &TestApp, endpoint: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.get(&format!("/v1/webhooks/{endpoint}/deliveries"), Some(ADMIN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        if let Some(d) = r.body["items"].as_array().unwrap().iter().find(|d| pred(d)) {
            return d.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no matching delivery: {}", r.body);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// The Python interpreter with `standardwebhooks` and `cloudevents` (CI installs them in
/// a cached virtualenv; `STRATA_TEST_PYTHON` overrides).
fn interop_python() -> Option<String> {
    super::python_with(
        "standardwebhooks, cloudevents.v1.http",
        "webhook interop",
        "webhook-interop",
        "no python with standardwebhooks and cloudevents (pip install standardwebhooks cloudevents)",
    )
}

/// Verifies a delivery with the Standard Webhooks library and parses it with the
/// CloudEvents SDK; returns what the SDK saw.
fn verify_with_sdks(py: &str, secret: &str, req: &Received) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
from cloudevents.v1.http import from_http
given = json.load(sys.stdin)
payload = Webhook(given["secret"]).verify(given["body"], given["headers"])
event = from_http(given["headers"], given["body"])
print(json.dumps({"payload": payload, "attributes": {k: str(v) for k, v in event.get_attributes().items()}, "data": event.get_data()}))
"#;
    let input = json!({ "secret": secret, "headers": req.headers, "body": req.body }).to_string();
    let mut child = std::process::Command::new(py)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the SDKs refused the delivery: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A created endpoint receives its events signed (Standard Webhooks) in CloudEvents binary
/// mode, verified by both SDKs; the secret is shown once; rotation signs with both secrets.
async fn deliveries_are_signed_and_interoperable(app: TestApp) {
    let rx = Receiver::start(vec![]).await;
    let ep = create_endpoint(&app, &rx.url("/hook?src=strata"), &["user.created", "user.deleted"]).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    let secret = ep["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{ep}");
    assert_eq!(ep["enabled"], true);
    let shown = app.get(&format!("/v1/webhooks/{id}"), Some(ADMIN)).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.body.get("secret").is_none() && !shown.raw.windows(6).any(|w| w == b"whsec_"), "{}", shown.body);

    // The request's trace context travels with the event it causes.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let created = app
        .send(
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json"), ("traceparent", traceparent)],
            Some(Bytes::from(
                json!({"email": "hooked@example.com", "name": "Hooked", "password": PASSWORD}).to_string(),
            )),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let user = created.body;
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1, "one delivery: login events are not subscribed");
    let req = &got[0];
    assert_eq!(req.path, "/hook?src=strata");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["ce-type"], "dev.strata.user.created");
    assert_eq!(req.headers["ce-specversion"], "1.0");
    assert_eq!(req.headers["ce-subject"], user["id"].as_str().unwrap());
    assert_eq!(req.headers["webhook-id"], req.headers["ce-id"], "one id everywhere");
    assert_eq!(req.headers["ce-traceparent"], traceparent);
    let body: Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(body["user"]["email"], "hooked@example.com");
    assert!(!req.body.contains("argon2") && !req.body.contains(PASSWORD));
    if let Some(py) = interop_python() {
        let seen = verify_with_sdks(&py, &secret, req);
        assert_eq!(seen["payload"]["user"]["id"], user["id"]);
        assert_eq!(seen["attributes"]["type"], "dev.strata.user.created");
        assert_eq!(seen["attributes"]["id"], req.headers["webhook-id"].as_str());
        // A tampered body or a wrong secret does not verify.
        let tampered = Received { body: req.body.replace("hooked", "hacked"), ..req.clone() };
        let input = json!({ "secret": secret, "headers": tampered.headers, "body": tampered.body }).to_string();
        let out = std::process::Command::new(&py)
            .args(["-c", "import json,sys\nfrom standardwebhooks.webhooks import Webhook\ng=json.load(sys.stdin)\nWebhook(g['secret']).verify(g['body'], g['headers'])"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .and_then(|mut c| {
                std::io::Write::write_all(&mut c.stdin.take().unwrap(), input.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(!out.success(), "a tampered body must not verify");
    }
    let d = delivery_where(&app, &id, |d| d["status"] == "delivered").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["event_type"], "user.created");
    let detail = app.get(&format!("/v1/webhooks/{id}/deliveries/{}", d["id"].as_str().unwrap()), Some(ADMIN)).await;
    assert_eq!(detail.body["attempt_log"][0]["status"], 204, "{}", detail.body);

    // Rotation: a new secret, and both sign until the old one expires.
    let rotated = app.json(Method::POST, &format!("/v1/webhooks/{id}/rotate-secret"), Some(ADMIN), &json!({})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated.body["previous_secret_expires_at"].is_string());
    let r = app
        .send(
            Method::DELETE,
            &format!("/v1/users/{}", user["id"].as_str().unwrap()),
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].headers["ce-type"], "dev.strata.user.deleted");
    assert_eq!(got[1].headers["webhook-signature"].split(' ').count(), 2, "{:?}", got[1].headers);
    if let Some(py) = interop_python() {
        verify_with_sdks(&py, &secret, &got[1]);
        verify_with_sdks(&py, &new_secret, &got[1]);
    }

    // Management answers.
    let list = app.get("/v1/webhooks", Some(ADMIN)).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let (_, token) = app.user_with_token("plain@example.com").await;
    app.get("/v1/webhooks", Some(&token)).await.assert_problem(403, "forbidden", None);
    app.get("/v1/webhooks", None).await.assert_problem(401, "missing_token", None);
    let api = &app;
    let bad = |body: Value| async move { api.json(Method::POST, "/v1/webhooks", Some(ADMIN), &body).await };
    bad(json!({"url": "ftp://x.example/", "events": ["user.created"]})).await.assert_problem(
        422,
        "invalid_scheme",
        Some("url"),
    );
    bad(json!({"url": rx.url("/"), "events": ["user.exploded"]})).await.assert_problem(
        422,
        "unknown_event_type",
        Some("events"),
    );
    bad(json!({"url": rx.url("/"), "events": []})).await.assert_problem(422, "empty", Some("events"));
    bad(json!({"url": rx.url("/"), "events": ["user.created"], "rate_limit": 0})).await.assert_problem(
        422,
        "out_of_range",
        Some("rate_limit"),
    );
    bad(json!({"url": rx.url("/"), "events": ["user.created"], "colour": "red"})).await.assert_problem(
        422,
        "unknown_field",
        Some("colour"),
    );
    app.get("/v1/webhooks/not-a-uuid", Some(ADMIN)).await.assert_problem(400, "invalid_uuid", Some("id"));
    app.get(&format!("/v1/webhooks/{}", uuid::Uuid::now_v7()), Some(ADMIN)).await.assert_problem(
        404,
        "not_found",
        None,
    );
    app.get(&format!("/v1/webhooks/{id}/deliveries?status=lost"), Some(ADMIN)).await.assert_problem(
        400,
        "invalid_status",
        Some("status"),
    );
    let patched = app.json(Method::PATCH, &format!("/v1/webhooks/{id}"), Some(ADMIN), &json!({"enabled": false})).await;
    assert_eq!(patched.body["enabled"], false, "{}", patched.body);
    assert_eq!(patched.body["disabled_reason"], "disabled by an admin");
    let r = app
        .send(Method::DELETE, &format!("/v1/webhooks/{id}"), &[("authorization", &format!("Bearer {ADMIN}"))], None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.get(&format!("/v1/webhooks/{id}"), Some(ADMIN)).await.assert_problem(404, "not_found", None);
    let metrics = String::from_utf8_lossy(&app.get("/metrics", None).await.raw).into_owned();
    assert!(metrics.contains(r#"strata_webhook_attempts_total{outcome="delivered"}"#), "{metrics}");
    app.stop().await;
}

/// A receiver that fails (500, hangs, closes, 429 with Retry-After) is retried on the
/// durable schedule until it answers, while a healthy endpoint gets its deliveries at once.
async fn failures_are_retried_without_holding_up_others(app: TestApp) {
    let flaky = Receiver::start(vec![
        Answer::Status(500, ""),
        Answer::Hang,
        Answer::Close,
        Answer::Status(429, "retry-after: 120\r\n"),
    ])
    .await;
    let healthy = Receiver::start(vec![]).await;
    let f = create_endpoint(&app, &flaky.url("/"), &["user.created"]).await;
    let fid = f["id"].as_str().unwrap().to_owned();
    create_endpoint(&app, &healthy.url("/"), &["user.created"]).await;
    // A retry schedule longer than the attempts we script would not finish: 3 waits = 4 attempts.
    app.register("retried@example.com", "R").await;
    assert_eq!(healthy.wait_for(1).await.len(), 1, "the healthy endpoint is not held up");
    assert_eq!(flaky.wait_for(1).await.len(), 1);
    let pending = delivery_where(&app, &fid, |d| d["attempts"] == 1).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["last_status"], 500);
    // Nothing happens until the schedule says so (the clock is the test's).
    for (n, answer) in [(2, "timed out"), (3, "closed")] {
        app.clock.advance(Duration::from_secs(13));
        assert_eq!(flaky.wait_for(n).await.len(), n);
        let d = delivery_where(&app, &fid, |d| d["attempts"] == n).await;
        assert!(d["last_error"].as_str().unwrap_or("").contains(answer), "attempt {n}: {d}");
    }
    // The last scripted failure is a 429 with Retry-After: 120, longer than the schedule's
    // 10 s; but it is also the 4th attempt of 4, so the delivery is dead-lettered.
    app.clock.advance(Duration::from_secs(13));
    assert_eq!(flaky.wait_for(4).await.len(), 4);
    let dead = delivery_where(&app, &fid, |d| d["status"] == "failed").await;
    assert_eq!((dead["attempts"].as_u64(), dead["last_status"].as_u64()), (Some(4), Some(429)), "{dead}");
    let detail = app.get(&format!("/v1/webhooks/{fid}/deliveries/{}", dead["id"].as_str().unwrap()), Some(ADMIN)).await;
    let statuses: Vec<Value> =
        detail.body["attempt_log"].as_array().unwrap().iter().map(|a| a["status"].clone()).collect();
    assert_eq!(statuses, [json!(500), Value::Null, Value::Null, json!(429)], "{}", detail.body);

    // Replay it singly: the receiver now answers 429 once more (Retry-After honoured), then 204.
    flaky.script.lock().push_back(Answer::Status(429, "retry-after: 120\r\n"));
    let path = format!("/v1/webhooks/{fid}/deliveries/{}/replay", dead["id"].as_str().unwrap());
    assert_eq!(app.json(Method::POST, &path, Some(ADMIN), &json!({})).await.status, StatusCode::ACCEPTED);
    assert_eq!(flaky.wait_for(5).await.len(), 5);
    let waiting = delivery_where(&app, &fid, |d| d["attempts"] == 1 && d["last_status"] == 429).await;
    let due = strata_core::domain::parse_rfc3339(waiting["next_attempt_at"].as_str().unwrap()).unwrap();
    assert!(due.micros() >= app.clock.now().plus(Duration::from_secs(119)).micros(), "Retry-After honoured: {waiting}");
    app.clock.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(flaky.requests().len(), 5, "not before Retry-After");
    app.clock.advance(Duration::from_secs(100));
    assert_eq!(flaky.wait_for(6).await.len(), 6);
    delivery_where(&app, &fid, |d| d["status"] == "delivered").await;
    // Replaying a pending one is refused; nothing was delivered twice to the healthy one.
    assert_eq!(healthy.requests().len(), 1);
    app.stop().await;
}

/// 410 disables the endpoint with an event; dead letters are replayed "all failed since T".
async fn gone_disables_and_failed_deliveries_replay(app: TestApp) {
    let gone = Receiver::start(vec![Answer::Status(410, "")]).await;
    let g = create_endpoint(&app, &gone.url("/"), &["user.created"]).await;
    let gid = g["id"].as_str().unwrap().to_owned();
    app.register("gone@example.com", "G").await;
    assert_eq!(gone.wait_for(1).await.len(), 1);
    let failed = delivery_where(&app, &gid, |d| d["status"] == "failed").await;
    assert_eq!(failed["last_status"], 410);
    let ep = app.get(&format!("/v1/webhooks/{gid}"), Some(ADMIN)).await;
    assert_eq!(ep.body["enabled"], false, "{}", ep.body);
    assert!(ep.body["disabled_reason"].as_str().unwrap().contains("410"));
    // The disable is an event (in the audit log, about the endpoint).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.get(&format!("/v1/audit?type=webhook.endpoint.disabled&user_id={gid}"), Some(ADMIN)).await;
        if r.body["items"].as_array().is_some_and(|i| i.len() == 1) {
            assert_eq!(r.body["items"][0]["data"]["endpoint"]["id"], gid.as_str());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no disable event: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While disabled, new events are not queued for it; replay is refused until re-enabled.
    app.register("while-disabled@example.com", "W").await;
    // Re-enabling before the webhooks listener saw that event would queue it after all:
    // wait until it has applied all three events so far (two user.created, the disable).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = app.get("/metrics", None).await;
        let applied = String::from_utf8_lossy(&m.raw)
            .lines()
            .find_map(|l| l.strip_prefix(r#"strata_listener_events_total{listener="webhooks",outcome="applied"} "#))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if applied >= 3.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the webhooks listener applied only {applied} events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = app
        .json(
            Method::POST,
            &format!("/v1/webhooks/{gid}/replay"),
            Some(ADMIN),
            &json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    r.assert_problem(422, "disabled", Some("enabled"));
    let r = app.json(Method::PATCH, &format!("/v1/webhooks/{gid}"), Some(ADMIN), &json!({"enabled": true})).await;
    assert_eq!((r.body["enabled"].clone(), r.body["disabled_reason"].clone()), (json!(true), Value::Null));
    let r = app
        .json(
            Method::POST,
            &format!("/v1/webhooks/{gid}/replay"),
            Some(ADMIN),
            &json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["replayed"], 1);
    assert_eq!(gone.wait_for(2).await.len(), 2);
    assert_eq!(gone.requests()[1].headers["webhook-id"], gone.requests()[0].headers["webhook-id"], "the same message");
    delivery_where(&app, &gid, |d| d["status"] == "delivered").await;
    let r = app.json(Method::POST, &format!("/v1/webhooks/{gid}/replay"), Some(ADMIN), &json!({"since": "soon"})).await;
    r.assert_problem(422, "invalid", Some("since"));
    app.stop().await;
}

/// Without an allowance, special addresses are refused: IP literals when the endpoint is
/// registered, names when a delivery resolves them; the receiver never sees a connection.
async fn the_network_policy_refuses_special_addresses(app: TestApp) {
    let rx = Receiver::start(vec![]).await;
    for url in [
        rx.url("/"),
        "http://10.0.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://100.64.0.1/".to_owned(),
    ] {
        let r =
            app.json(Method::POST, "/v1/webhooks", Some(ADMIN), &json!({"url": url, "events": ["user.created"]})).await;
        r.assert_problem(422, "forbidden_address", Some("url"));
        assert!(r.body["detail"].as_str().unwrap().contains("STRATA_WEBHOOKS_ALLOWED_NETWORKS"), "{}", r.body);
    }
    let ep = create_endpoint(&app, &format!("http://localhost:{}/", rx.port), &["user.created"]).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    app.register("ssrf@example.com", "S").await;
    let d = delivery_where(&app, &id, |d| d["attempts"] == 1).await;
    assert!(d["last_error"].as_str().unwrap().contains("network policy"), "{d}");
    assert!(rx.requests().is_empty(), "the receiver must not be reached");
    app.stop().await;
}

async fn with_loopback_allowed(backend: Backend, what: &str) -> Option<TestApp> {
    spawn(backend, what, tweak).await
}

macro_rules! webhook_tests {
    ($backend:ident, $kind:expr, [$($case:ident),*]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(app) = super::with_loopback_allowed($kind, stringify!($case)).await else { return };
                    super::$case(app).await;
                }
            )*
        }
    };
}

webhook_tests!(
    sqlite,
    Backend::Sqlite,
    [
        deliveries_are_signed_and_interoperable,
        failures_are_retried_without_holding_up_others,
        gone_disables_and_failed_deliveries_replay
    ]
);
webhook_tests!(
    postgres,
    Backend::Postgres,
    [deliveries_are_signed_and_interoperable, gone_disables_and_failed_deliveries_replay]
);
webhook_tests!(
    mysql,
    Backend::Mysql,
    [deliveries_are_signed_and_interoperable, gone_disables_and_failed_deliveries_replay]
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_policy_refuses_special_addresses_by_default() {
    let Some(app) = spawn(Backend::Sqlite, "ssrf", |c| c.webhooks.timeout_ms = 500).await else { return };
    the_network_policy_refuses_special_addresses(app).await;
}
