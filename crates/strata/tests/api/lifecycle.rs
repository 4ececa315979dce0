//! Account lifecycle end to end (issue 16): password resets whose tokens are read from
//! mails a real SMTP server (aiosmtpd, from PyPI) received, on every backend; mail retries
//! while the server is down; no user enumeration; the throttle under concurrency.

use std::path::PathBuf;

use super::*;

/// A Python with aiosmtpd (CI installs it pinned in its cached virtualenv).
fn smtp_python() -> Option<String> {
    super::python_with("aiosmtpd", "lifecycle mail", "smtp", "no python with aiosmtpd (pip install aiosmtpd)")
}

/// aiosmtpd storing every mail it accepts in a Maildir, on a port of its own.
struct SmtpServer {
    python: String,
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

/// A port nothing listens on right now.
fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl SmtpServer {
    fn new(python: String) -> SmtpServer {
        let dir = std::env::temp_dir().join(format!("strata-maildir-{}", uuid::Uuid::new_v4().simple()));
        SmtpServer { python, port: spare_port(), dir, child: None }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    async fn start(&mut self) {
        let child = std::process::Command::new(&self.python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port), "-c"])
            .args(["aiosmtpd.handlers.Mailbox", self.dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_until_listening().await;
    }

    /// Starts it with TLS (`starttls`: STARTTLS required; `smtps`: TLS from the first
    /// byte) and AUTH required (user `mailer`, password `mail-secret`), with `cert`/`key`.
    async fn start_tls(&mut self, mode: &str, cert: &std::path::Path, key: &std::path::Path) {
        const SCRIPT: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
port, maildir, cert, key, mode = sys.argv[1:6]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
def check(server, session, envelope, mechanism, data):
    return AuthResult(success=isinstance(data, LoginPassword) and data.login == b"mailer" and data.password == b"mail-secret")
common = dict(hostname="127.0.0.1", port=int(port), authenticator=check, auth_required=True)
if mode == "smtps":
    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; this socket is TLS throughout.
    c = Controller(Mailbox(maildir), ssl_context=ctx, auth_require_tls=False, **common)
else:
    c = Controller(Mailbox(maildir), tls_context=ctx, require_starttls=True, auth_require_tls=True, **common)
c.start()
while True:
    time.sleep(3600)
"#;
        let child = std::process::Command::new(&self.python)
            .args(["-c", SCRIPT, &self.port.to_string(), self.dir.to_str().unwrap()])
            .args([cert.to_str().unwrap(), key.to_str().unwrap(), mode])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_until_listening().await;
    }

    async fn wait_until_listening(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "aiosmtpd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every mail received so far, decoded by Python's own `mailbox` and `email` modules:
    /// `{to, from, subject, message_id, text, html}`, oldest first.
    fn mails(&self) -> Vec<Value> {
        const SCRIPT: &str = r#"
import json, mailbox, sys
from email import policy
from email.parser import BytesParser
box = mailbox.Maildir(sys.argv[1], factory=None, create=False)
out = []
# Maildir names end in a per-process counter (Q<n>): the order mails were stored in.
for key in sorted(box.keys(), key=lambda k: int(k.split("Q")[1].split(".")[0])):
    with box.get_file(key) as f:
        msg = BytesParser(policy=policy.default).parse(f)
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    out.append({"to": str(msg["To"]), "from": str(msg["From"]), "subject": str(msg["Subject"]),
                "message_id": str(msg["Message-ID"]), "date": str(msg["Date"]),
                "text": text.get_content() if text else None, "html": html.get_content() if html else None})
print(json.dumps(out))
"#;
        if !self.dir.join("new").exists() {
            return Vec::new();
        }
        let out =
            std::process::Command::new(&self.python).args(["-c", SCRIPT, self.dir.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// Waits until `n` mails have arrived, and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} mails arrived", mails.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The one-time token in a mail's text.
fn token_in(mail: &Value) -> String {
    link_token(mail, "reset-password")
}

/// The token in a mail's link to `{base_url}/{page}?token=…`.
fn link_token(mail: &Value, page: &str) -> String {
    let text = mail["text"].as_str().unwrap();
    let start = text.find("token=ot_").map(|i| i + "token=".len()).expect("a link with a token in the mail");
    let token: String =
        text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    assert_eq!(token.len(), 46, "{text}");
    // The same token stands on its own line for typing in, and in the HTML part's link.
    assert!(text.lines().any(|l| l.trim() == token), "{text}");
    assert!(text.contains(&format!("/{page}?token={token}")), "{text}");
    assert!(mail["html"].as_str().unwrap().contains(&format!("{page}?token={token}")));
    token
}

/// A count from /metrics: the sample whose name and labels start with `prefix`.
async fn metric(app: &TestApp, prefix: &str) -> f64 {
    let text = String::from_utf8_lossy(&app.get("/metrics", None).await.raw).into_owned();
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

async fn spawn_with_smtp(
    backend: Backend,
    what: &str,
    tweak: impl FnOnce(&mut Config),
) -> Option<(TestApp, SmtpServer)> {
    let python = smtp_python()?;
    let mut smtp = SmtpServer::new(python);
    smtp.start().await;
    let url = smtp.url();
    let app = spawn(backend, what, |c| {
        c.mail.smtp_url = url;
        c.mail.from = "Strata Test <no-reply@strata.test>".into();
        c.mail.base_url = "https://app.example.com/".into();
        c.mail.poll_interval_ms = 50;
        tweak(c);
    })
    .await?;
    Some((app, smtp))
}

async fn confirm(app: &TestApp, token: &str, new_password: &str) -> Resp {
    app.json(Method::POST, "/v1/password-resets/confirm", None, &json!({"token": token, "new_password": new_password}))
        .await
}

async fn request_reset(app: &TestApp, email: &str) -> Resp {
    app.json(Method::POST, "/v1/password-resets", None, &json!({"email": email})).await
}

async fn the_reset_journey_reads_its_token_from_a_delivered_mail(backend: Backend) {
    let Some((app, smtp)) = spawn_with_smtp(backend, "lifecycle reset journey", |_| {}).await else { return };
    let (user, old_session) = app.user_with_token("forgot@example.com").await;

    let r = request_reset(&app, "Forgot@Example.com").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "accepted");
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail["to"], "forgot@example.com");
    assert_eq!(mail["from"], "Strata Test <no-reply@strata.test>");
    assert_eq!(mail["subject"], "Reset your password");
    let text = mail["text"].as_str().unwrap();
    assert!(text.contains("Hello Test User,") && text.contains("within 30 minutes"), "{text}");
    assert!(text.contains("https://app.example.com/reset-password?token=ot_"), "{text}");
    let token = token_in(mail);

    // Bad input: each kind gets its problem, and nothing changes.
    confirm(&app, "ot_not-a-token", "a brand new password").await.assert_problem(422, "token_invalid", Some("token"));
    let unknown = strata_core::lifecycle::OneTimeToken::generate().expose();
    confirm(&app, &unknown, "a brand new password").await.assert_problem(422, "token_invalid", Some("token"));
    confirm(&app, &token, "short").await.assert_problem(422, "too_short", Some("new_password"));
    let r = app.json(Method::POST, "/v1/password-resets/confirm", None, &json!({"token": token})).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    let r = app.json(Method::POST, "/v1/password-resets", None, &json!({"email": "no-at-sign"})).await;
    assert_eq!((r.status.as_u16(), &r.body["field"]), (422, &json!("email")), "{}", r.body);
    let r = app.json(Method::POST, "/v1/password-resets", None, &json!({"email": "a@example.com", "x": 1})).await;
    assert_eq!(r.status.as_u16(), 422, "unknown fields are refused: {}", r.body);
    assert_eq!(app.get("/v1/sessions/current", Some(&old_session)).await.status, StatusCode::OK);

    let r = confirm(&app, &token, "a brand new password").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Every session is gone, the old password too, the new one works.
    app.get("/v1/sessions/current", Some(&old_session)).await.assert_problem(401, "token_revoked", None);
    assert_eq!(app.login("forgot@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    let login = app.login("forgot@example.com", "a brand new password").await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.body);
    assert_eq!(login.body["user"]["id"], user["id"]);
    assert_eq!(login.body["user"]["version"], 2);
    // Single use.
    confirm(&app, &token, "yet another password").await.assert_problem(422, "token_invalid", Some("token"));

    // The event says what happened, and carries no token.
    let audit = app.get("/v1/audit?type=user.updated", Some(ADMIN)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut audit = audit;
    while audit.body["items"].as_array().is_none_or(|i| i.is_empty()) {
        assert!(tokio::time::Instant::now() < deadline, "no user.updated in the audit log");
        tokio::time::sleep(Duration::from_millis(50)).await;
        audit = app.get("/v1/audit?type=user.updated", Some(ADMIN)).await;
    }
    let data = &audit.body["items"][0]["data"];
    assert_eq!(data["via"], "password_reset");
    assert_eq!(data["changed"], json!(["password"]));
    assert_eq!(data["sessions_revoked"], "all");
    let requested = app.get("/v1/audit?type=password_reset.requested", Some(ADMIN)).await;
    assert!(!requested.raw.is_empty() && !String::from_utf8_lossy(&requested.raw).contains(&token));

    assert_eq!(metric(&app, "strata_mails_total{template=\"password_reset\",outcome=\"sent\"}").await, 1.0);
    app.stop().await;
}

async fn reset_tokens_expire_are_superseded_and_die_with_a_password_change(backend: Backend) {
    let Some((app, smtp)) = spawn_with_smtp(backend, "lifecycle reset rules", |_| {}).await else { return };
    let (user, session) = app.user_with_token("rules@example.com").await;
    let id = user["id"].as_str().unwrap();

    // A newer request supersedes the older token.
    assert_eq!(request_reset(&app, "rules@example.com").await.status, StatusCode::ACCEPTED);
    smtp.wait_for(1).await;
    assert_eq!(request_reset(&app, "rules@example.com").await.status, StatusCode::ACCEPTED);
    let mails = smtp.wait_for(2).await;
    let (first, second) = (token_in(&mails[0]), token_in(&mails[1]));
    assert_ne!(first, second);
    confirm(&app, &first, "a brand new password").await.assert_problem(422, "token_invalid", Some("token"));

    // 30 minutes later it has expired.
    app.clock.advance(Duration::from_secs(30 * 60));
    confirm(&app, &second, "a brand new password").await.assert_problem(422, "token_expired", Some("token"));

    // Any password change voids an outstanding token.
    assert_eq!(request_reset(&app, "rules@example.com").await.status, StatusCode::ACCEPTED);
    let third = token_in(&smtp.wait_for(3).await[2]);
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {session}")),
                ("if-match", "\"1\""),
            ],
            Some(Bytes::from(json!({"password": "changed by hand", "current_password": PASSWORD}).to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    confirm(&app, &third, "a brand new password").await.assert_problem(422, "token_invalid", Some("token"));
    assert_eq!(app.login("rules@example.com", "changed by hand").await.status, StatusCode::CREATED);
    app.stop().await;
}

/// The known and the unknown email get the same status, headers and body, after the same
/// work on the request's path (one lookup by email; the known account's write happens
/// after the answer), and draw on the same throttle.
async fn reset_requests_do_not_enumerate_and_are_throttled(backend: Backend) {
    let Some((app, smtp)) = spawn_with_smtp(backend, "lifecycle enumeration", |c| {
        c.mail.reset_account_max = 3;
        c.mail.reset_client_max = 1000;
    })
    .await
    else {
        return;
    };
    app.register("known@example.com", "Known").await;
    let lookups = "strata_db_query_duration_seconds_count{op=\"user_by_email\"";
    let issues = "strata_db_query_duration_seconds_count{op=\"issue_account_token\"";

    let before = (metric(&app, lookups).await, metric(&app, issues).await);
    let unknown = request_reset(&app, "nobody@example.com").await;
    let after_unknown = (metric(&app, lookups).await, metric(&app, issues).await);
    let known = request_reset(&app, "known@example.com").await;
    smtp.wait_for(1).await;
    let after_known = (metric(&app, lookups).await, metric(&app, issues).await);

    assert_eq!((unknown.status, known.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(unknown.raw, known.raw);
    let shown = |r: &Resp| {
        let mut h: Vec<_> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-request-id" | "server-timing"))
            .map(|(k, v)| format!("{k}: {v:?}"))
            .collect();
        h.sort();
        h
    };
    assert_eq!(shown(&unknown), shown(&known));
    assert_eq!(after_unknown.0 - before.0, 1.0, "the unknown email was looked up once");
    assert_eq!(after_known.0 - after_unknown.0, 1.0, "the known email was looked up once");
    assert_eq!(after_unknown.1 - before.1, 0.0);
    assert_eq!(after_known.1 - after_unknown.1, 1.0, "the known account's token was written");
    assert_eq!(smtp.mails().len(), 1, "no mail for the unknown email");

    // Per email: the limit counts for unknown addresses exactly as for known ones, and
    // holds under concurrency.
    let burst = |email: &'static str| {
        let app = &app;
        async move {
            let all = futures_join_all((0..8).map(|_| request_reset(app, email))).await;
            let accepted = all.iter().filter(|r| r.status == StatusCode::ACCEPTED).count();
            for r in all.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
                r.assert_problem(429, "too_many_attempts", None);
                assert!(!r.header("retry-after").is_empty());
            }
            accepted
        }
    };
    assert_eq!(burst("nobody@example.com").await, 2, "3 per window, one already used");
    assert_eq!(burst("known@example.com").await, 2);
    assert_eq!(burst("third@example.com").await, 3);
    app.stop().await;
}

async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.collect();
    let mut pinned: Vec<_> = handles.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(pinned.len());
    // Polled together: each request is in flight before any answer is awaited.
    let joined = std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out.len() <= i {
                out.push(None);
            }
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    });
    joined.await;
    out.into_iter().map(|v| v.unwrap()).collect()
}

/// With the mail server down, the request still answers 202; the mail is retried with
/// backoff (due again only once the test's clock has moved past the backoff) and
/// delivered once the server is up.
async fn a_mail_server_outage_delays_mail_and_fails_no_request(backend: Backend) {
    let Some(python) = smtp_python() else { return };
    let mut smtp = SmtpServer::new(python);
    let url = smtp.url();
    let Some(app) = spawn(backend, "lifecycle smtp outage", |c| {
        c.mail.smtp_url = url;
        c.mail.poll_interval_ms = 50;
        c.mail.first_backoff_ms = 100;
        c.mail.timeout_ms = 5000;
    })
    .await
    else {
        return;
    };
    app.register("patient@example.com", "Patient").await;
    let r = request_reset(&app, "patient@example.com").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let retry = "strata_mails_total{template=\"password_reset\",outcome=\"retry\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(&app, retry).await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the mail was not tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not due again until its backoff has passed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&app, retry).await, 1.0);
    app.clock.advance(Duration::from_secs(1));
    while metric(&app, retry).await < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "the mail was not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    smtp.start().await;
    app.clock.advance(Duration::from_secs(1));
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0]["to"], "patient@example.com");
    token_in(&mails[0]);
    assert_eq!(metric(&app, "strata_mails_total{template=\"password_reset\",outcome=\"sent\"}").await, 1.0);
    app.stop().await;
}

async fn verify(app: &TestApp, token: &str) -> Resp {
    app.json(Method::POST, "/v1/verifications", None, &json!({"token": token})).await
}

async fn email_verification_journey_and_email_changes(backend: Backend) {
    let Some((app, smtp)) = spawn_with_smtp(backend, "lifecycle verification", |_| {}).await else { return };
    let (user, session) = app.user_with_token("verify@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(user["verified"], false);
    let ask = |token: Option<String>, id: String| {
        let app = &app;
        async move { app.json(Method::POST, &format!("/v1/users/{id}/verification"), token.as_deref(), &json!({})).await }
    };
    // Only the user themself, logged in.
    ask(None, id.clone()).await.assert_problem(401, "missing_token", None);
    let (_, other) = app.user_with_token("other@example.com").await;
    ask(Some(other.clone()), id.clone()).await.assert_problem(403, "forbidden", None);
    ask(Some(ADMIN.to_owned()), id.clone()).await.assert_problem(403, "forbidden", None);

    let r = ask(Some(session.clone()), id.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0]["to"], "verify@example.com");
    assert_eq!(mails[0]["subject"], "Confirm your email address");
    let token = link_token(&mails[0], "verify-email");

    verify(&app, "garbage").await.assert_problem(422, "token_invalid", Some("token"));
    let r = verify(&app, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((r.body["verified"].clone(), r.body["version"].clone()), (json!(true), json!(2)));
    assert_eq!(app.get(&format!("/v1/users/{id}"), Some(&session)).await.body["verified"], true);
    verify(&app, &token).await.assert_problem(422, "token_invalid", Some("token"));
    ask(Some(session.clone()), id.clone()).await.assert_problem(409, "already_verified", None);
    // A reset token is not a verification token, nor the other way round.
    confirm(&app, &token, "a brand new password").await.assert_problem(422, "token_invalid", Some("token"));

    // An admin's change of the address applies at once and leaves it unverified; a
    // token sent to the old address proves nothing about the new one.
    let other_user = app.get("/v1/sessions/current", Some(&other)).await.body["user"]["id"].clone();
    let other_id = other_user.as_str().unwrap().to_owned();
    let r = ask(Some(other.clone()), other_id).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let stale = link_token(&smtp.wait_for(2).await[1], "verify-email");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer test-admin-token-0123456789"),
        ("if-match", "\"2\""),
    ];
    let body = Bytes::from(json!({"email": "moved@example.com"}).to_string());
    let r = app.send(Method::PATCH, &format!("/v1/users/{id}"), &headers, Some(body)).await;
    assert_eq!((r.status, r.body["verified"].clone()), (StatusCode::OK, json!(false)), "{}", r.body);
    assert_eq!(r.body["email"], "moved@example.com");
    verify(&app, &token).await.assert_problem(422, "token_invalid", Some("token"));
    let r = ask(Some(session.clone()), id.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let mails = smtp.wait_for(3).await;
    assert_eq!(mails[2]["to"], "moved@example.com");
    let fresh = link_token(&mails[2], "verify-email");
    assert_eq!(verify(&app, &fresh).await.body["verified"], true);
    // The other user's token still works for them.
    assert_eq!(verify(&app, &stale).await.body["email"], "other@example.com");
    app.stop().await;
}

async fn confirm_change(app: &TestApp, token: &str) -> Resp {
    app.json(Method::POST, "/v1/email-changes/confirm", None, &json!({"token": token})).await
}

/// `PATCH /v1/users/{id}` of the caller's own account with `body`, at version `version`.
async fn patch_self(app: &TestApp, id: &str, session: &str, version: u64, body: Value) -> Resp {
    let auth = format!("Bearer {session}");
    let etag = format!("\"{version}\"");
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str()), ("if-match", etag.as_str())];
    app.send(Method::PATCH, &format!("/v1/users/{id}"), &headers, Some(Bytes::from(body.to_string()))).await
}

async fn email_changes_are_confirmed_from_the_new_address(backend: Backend) {
    // Every request below counts against the mail throttle; this test is not about it.
    let Some((app, smtp)) =
        spawn_with_smtp(backend, "lifecycle email change", |c| c.mail.reset_account_max = 100).await
    else {
        return;
    };
    let (user, session) = app.user_with_token("old@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let (_, squatter) = app.user_with_token("taken@example.com").await;

    // The current password is needed, the change goes alone, and a taken address is refused
    // at once; none of these mails anything or changes the account.
    let change = |to: &str| json!({"email": to, "current_password": PASSWORD});
    patch_self(&app, &id, &session, 1, json!({"email": "new@example.com"})).await.assert_problem(
        422,
        "current_password_required",
        Some("current_password"),
    );
    let both = json!({"email": "new@example.com", "name": "New", "current_password": PASSWORD});
    patch_self(&app, &id, &session, 1, both).await.assert_problem(422, "email_change_not_alone", Some("email"));
    patch_self(&app, &id, &session, 1, change("taken@example.com")).await.assert_problem(
        409,
        "email_taken",
        Some("email"),
    );

    // A request changes nothing yet: a confirmation goes to the new address, a notice to the old.
    let r = patch_self(&app, &id, &session, 1, change("first@example.com")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "confirmation_sent");
    assert_eq!(r.body["pending_email"], "first@example.com");
    assert!(r.body["expires_at"].is_string());
    assert_eq!(
        (r.body["user"]["email"].clone(), r.body["user"]["version"].clone()),
        (json!("old@example.com"), json!(1))
    );
    let me = app.get(&format!("/v1/users/{id}"), Some(&session)).await;
    assert_eq!(
        (me.body["email"].clone(), me.header("etag").to_owned()),
        (json!("old@example.com"), "\"1\"".to_owned())
    );
    let mails = smtp.wait_for(2).await;
    let (to_new, to_old): (Vec<&Value>, Vec<&Value>) = mails.iter().partition(|m| m["to"] == "first@example.com");
    assert_eq!((to_new.len(), to_old.len()), (1, 1), "{mails:?}");
    assert_eq!(to_old[0]["to"], "old@example.com");
    assert_eq!(to_new[0]["subject"], "Confirm your new email address");
    assert_eq!(to_old[0]["subject"], "Your email address is about to change");
    let notice = to_old[0]["text"].as_str().unwrap();
    assert!(notice.contains("first@example.com") && !notice.contains("ot_"), "{notice}");
    assert!(to_old[0]["html"].as_str().unwrap().contains("first@example.com"));
    let superseded = link_token(to_new[0], "confirm-email-change");

    // A newer request supersedes the older one.
    let r = patch_self(&app, &id, &session, 1, change("second@example.com")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mails = smtp.wait_for(4).await;
    let to_second = mails.iter().find(|m| m["to"] == "second@example.com").unwrap();
    let second = link_token(to_second, "confirm-email-change");
    confirm_change(&app, &superseded).await.assert_problem(422, "token_invalid", Some("token"));
    confirm_change(&app, "ot_garbage").await.assert_problem(422, "token_invalid", Some("token"));
    // Not a verification token either.
    verify(&app, &second).await.assert_problem(422, "token_invalid", Some("token"));

    // Someone registers the address between request and confirmation: 409, nothing changes.
    app.register("second@example.com", "Quick").await;
    confirm_change(&app, &second).await.assert_problem(409, "email_taken", Some("email"));
    assert_eq!(app.get(&format!("/v1/users/{id}"), Some(&session)).await.body["email"], "old@example.com");

    // Confirmed: the new address, verified, one version on; the token works once.
    let r = patch_self(&app, &id, &session, 1, change("third@example.com")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mails = smtp.wait_for(6).await;
    let third = link_token(mails.iter().find(|m| m["to"] == "third@example.com").unwrap(), "confirm-email-change");
    let r = confirm_change(&app, &third).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("etag"), "\"2\"");
    assert_eq!((r.body["email"].clone(), r.body["verified"].clone()), (json!("third@example.com"), json!(true)));
    confirm_change(&app, &third).await.assert_problem(422, "token_invalid", Some("token"));
    // Sessions stay; who-am-I (cached before the change) shows the new address.
    let me = app.get("/v1/sessions/current", Some(&session)).await;
    assert_eq!(
        (me.body["user"]["email"].clone(), me.body["user"]["verified"].clone()),
        (json!("third@example.com"), json!(true))
    );
    assert_eq!(app.login("third@example.com", PASSWORD).await.status, StatusCode::CREATED);
    app.login("old@example.com", PASSWORD).await.assert_problem(401, "invalid_credentials", None);

    // A password change voids an outstanding email change.
    let r = patch_self(&app, &id, &session, 2, change("fourth@example.com")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let mails = smtp.wait_for(8).await;
    let fourth = link_token(mails.iter().find(|m| m["to"] == "fourth@example.com").unwrap(), "confirm-email-change");
    let new_password = json!({"password": "another fine password", "current_password": PASSWORD});
    assert_eq!(patch_self(&app, &id, &session, 2, new_password).await.status, StatusCode::OK);
    confirm_change(&app, &fourth).await.assert_problem(422, "token_invalid", Some("token"));

    // And a token expires with the verification lifetime.
    let change = json!({"email": "fifth@example.com", "current_password": "another fine password"});
    assert_eq!(patch_self(&app, &id, &session, 3, change).await.status, StatusCode::ACCEPTED);
    let mails = smtp.wait_for(10).await;
    let fifth = link_token(mails.iter().find(|m| m["to"] == "fifth@example.com").unwrap(), "confirm-email-change");
    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    confirm_change(&app, &fifth).await.assert_problem(422, "token_expired", Some("token"));
    assert!(!squatter.is_empty());
    app.stop().await;
}

async fn require_verified_email_gates_logins(backend: Backend) {
    let Some((app, smtp)) =
        spawn_with_smtp(backend, "lifecycle require verified", |c| c.auth.require_verified_email = true).await
    else {
        return;
    };
    app.register("gated@example.com", "Gated").await;
    app.login("gated@example.com", PASSWORD).await.assert_problem(403, "email_not_verified", None);
    // Wrong passwords still say only that.
    app.login("gated@example.com", "not the password").await.assert_problem(401, "invalid_credentials", None);
    // The first verification mail comes with the registration.
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0]["to"], "gated@example.com");
    let r = verify(&app, &link_token(&mails[0], "verify-email")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(app.login("gated@example.com", PASSWORD).await.status, StatusCode::CREATED);
    app.stop().await;
}

/// A private CA and a certificate for 127.0.0.1 signed by it, made by the openssl CLI:
/// (ca.pem, server cert, server key) in `dir`.
fn test_certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    // The CA's subject and constraints, set on the command line (no config file needed).
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Strata test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// STARTTLS (required) and smtps://, each with AUTH required by the server, against a
/// server whose certificate a private CA signed (`mail.tls_ca_file`).
async fn starttls_and_smtps_with_auth_deliver(backend: Backend) {
    let Some(python) = smtp_python() else { return };
    let dir = strata_store::testing::TempDir::new();
    let (ca, cert, key) = test_certificates(&dir.path);
    for (mode, scheme, query) in [("starttls", "smtp", "?tls=required"), ("smtps", "smtps", "")] {
        let mut smtp = SmtpServer::new(python.clone());
        smtp.start_tls(mode, &cert, &key).await;
        let good = format!("{scheme}://mailer:mail-secret@127.0.0.1:{}{query}", smtp.port);
        let ca_file = ca.display().to_string();
        let Some(app) = spawn(backend, "lifecycle tls and auth", |c| {
            c.mail.smtp_url = good;
            c.mail.tls_ca_file = ca_file;
            c.mail.poll_interval_ms = 50;
            c.mail.first_backoff_ms = 100;
        })
        .await
        else {
            return;
        };
        app.register("tls@example.com", "Tls").await;
        assert_eq!(request_reset(&app, "tls@example.com").await.status, StatusCode::ACCEPTED);
        // Time moves on meanwhile, so an attempt that failed on a busy machine is retried.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while smtp.mails().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "{mode}: no mail arrived");
            app.clock.advance(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mails = smtp.mails();
        assert_eq!(mails[0]["to"], "tls@example.com", "{mode}");
        token_in(&mails[0]);
        app.stop().await;
    }
}

per_backend!(
    the_reset_journey_reads_its_token_from_a_delivered_mail,
    reset_tokens_expire_are_superseded_and_die_with_a_password_change,
    reset_requests_do_not_enumerate_and_are_throttled,
    a_mail_server_outage_delays_mail_and_fails_no_request,
    email_verification_journey_and_email_changes,
    email_changes_are_confirmed_from_the_new_address,
    require_verified_email_gates_logins,
    starttls_and_smtps_with_auth_deliver,
);
