//! TOTP second factor end to end (issue 16), on every backend: codes computed by an
//! independent implementation (pyotp, from PyPI) at the server's manual clock; replayed,
//! wrong and expired inputs get their problems; recovery codes work once; the throttle holds
//! under concurrency; an admin reset is audited. No timed assertions: time moves with the
//! `ManualClock`.

use super::*;

/// A Python with pyotp (CI installs it pinned in its cached virtualenv).
fn pyotp() -> Option<String> {
    super::python_with("pyotp", "mfa", "totp", "no python with pyotp (pip install pyotp)")
}

/// The code pyotp computes for `secret` at the server's current time.
fn code_at(python: &str, secret: &str, app: &TestApp) -> String {
    let secs = app.clock.now().micros() / 1_000_000;
    let out = std::process::Command::new(python)
        .args(["-c", "import pyotp, sys; print(pyotp.TOTP(sys.argv[1]).at(int(sys.argv[2])))", secret])
        .arg(secs.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A six-digit code valid in none of the accepted steps (now ± 1).
fn wrong_code(python: &str, secret: &str, app: &TestApp) -> String {
    let secs = app.clock.now().micros() / 1_000_000;
    let script = "import pyotp, sys\nt = pyotp.TOTP(sys.argv[1]); n = int(sys.argv[2])\n\
                  valid = {t.at(n + d) for d in (-30, 0, 30)}\n\
                  print(next(c for c in ('000000', '111111', '222222', '333333') if c not in valid))";
    let out = std::process::Command::new(python).args(["-c", script, secret]).arg(secs.to_string()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The audit entries of `event_type` once at least `n` are there (the relay writes the
/// audit log after the request; bounded wait, no timing asserted).
async fn audit(app: &TestApp, event_type: &str, n: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.get(&format!("/v1/audit?type={event_type}&limit=200"), Some(ADMIN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let found = r.body["items"].as_array().map_or(0, Vec::len);
        if found >= n {
            return String::from_utf8_lossy(&r.raw).into_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "{found} of {n} {event_type} events in the audit log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Enrolled {
    id: String,
    token: String,
    secret: String,
    recovery_codes: Vec<String>,
}

fn totp_path(id: &str) -> String {
    format!("/v1/users/{id}/mfa/totp")
}

/// Registers `email`, enrols and confirms TOTP; the clock is then moved to the next step
/// so that the confirming code is spent.
async fn enrolled(app: &TestApp, python: &str, email: &str) -> Enrolled {
    let (user, token) = app.user_with_token(email).await;
    let id = user["id"].as_str().unwrap().to_owned();
    let r = app.json(Method::POST, &totp_path(&id), Some(&token), &json!({"current_password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    let code = code_at(python, &secret, app);
    let path = format!("{}/confirm", totp_path(&id));
    let r = app.json(Method::POST, &path, Some(&token), &json!({"code": code})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let recovery_codes: Vec<String> =
        r.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    app.clock.advance(Duration::from_secs(30));
    Enrolled { id, token, secret, recovery_codes }
}

/// A password login that must answer `mfa_required`; returns the challenge.
async fn challenge(app: &TestApp, email: &str) -> String {
    let r = app.login(email, PASSWORD).await;
    r.assert_problem(401, "mfa_required", None);
    assert!(r.body.get("token").is_none(), "{}", r.body);
    r.body["challenge"].as_str().unwrap().to_owned()
}

async fn second_step(app: &TestApp, challenge: &str, code: &str) -> Resp {
    app.json(Method::POST, "/v1/sessions/mfa", None, &json!({"challenge": challenge, "code": code})).await
}

async fn enrolment_login_replay_and_recovery_codes(backend: Backend) {
    let Some(python) = pyotp() else { return };
    let Some(app) = spawn(backend, "mfa journey", |_| {}).await else { return };

    // Enrolment needs the current password, and gives a secret apps can take.
    let (user, token) = app.user_with_token("ada@example.com").await;
    let id = user["id"].as_str().unwrap();
    let r = app.json(Method::POST, &totp_path(id), Some(&token), &json!({"current_password": "not my password"})).await;
    r.assert_problem(403, "current_password_incorrect", Some("current_password"));
    let r = app.json(Method::POST, &totp_path(id), Some(&token), &json!({"current_password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    let uri = r.body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Strata:ada@example.com?") && uri.contains(&format!("secret={secret}")));
    // Not on until confirmed: the password alone still logs in.
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status, StatusCode::CREATED);
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.body["user"]["mfa_enabled"], false);

    let confirm = format!("{}/confirm", totp_path(id));
    let wrong = wrong_code(&python, &secret, &app);
    app.json(Method::POST, &confirm, Some(&token), &json!({"code": wrong})).await.assert_problem(
        422,
        "mfa_code_invalid",
        Some("code"),
    );
    let first = code_at(&python, &secret, &app);
    let r = app.json(Method::POST, &confirm, Some(&token), &json!({"code": first})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let recovery: Vec<String> =
        r.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(recovery.len(), 10);
    // The user JSON shows it at once: the cached who-am-I too (the write invalidated it).
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.body["user"]["mfa_enabled"], true);
    assert_eq!(app.get(&format!("/v1/users/{id}"), Some(ADMIN)).await.body["mfa_enabled"], true);
    let r = app.json(Method::POST, &totp_path(id), Some(&token), &json!({"current_password": PASSWORD})).await;
    r.assert_problem(409, "mfa_already_enabled", None);

    // The password now leads to a challenge; the code that confirmed is spent.
    let ch = challenge(&app, "ada@example.com").await;
    second_step(&app, &ch, &first).await.assert_problem(422, "mfa_code_replayed", Some("code"));
    app.clock.advance(Duration::from_secs(30));
    let code = code_at(&python, &secret, &app);
    let r = second_step(&app, &ch, &code).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("location"), "/v1/sessions/current");
    let session = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(r.body["user"]["id"], id);
    assert_eq!(app.get("/v1/sessions/current", Some(&session)).await.status, StatusCode::OK);
    // Replayed within its window (even one step later, inside the skew), with a new challenge.
    let ch = challenge(&app, "ada@example.com").await;
    second_step(&app, &ch, &code).await.assert_problem(422, "mfa_code_replayed", Some("code"));
    app.clock.advance(Duration::from_secs(30));
    second_step(&app, &ch, &code).await.assert_problem(422, "mfa_code_replayed", Some("code"));
    let wrong = wrong_code(&python, &secret, &app);
    second_step(&app, &ch, &wrong).await.assert_problem(422, "mfa_code_invalid", Some("code"));

    // Those were three failures: the budget (3 in tests) is spent until the window ends.
    second_step(&app, &ch, &recovery[0]).await.assert_problem(429, "too_many_attempts", None);
    app.clock.advance(Duration::from_secs(301));
    let ch = challenge(&app, "ada@example.com").await;

    // A recovery code works once, in any case and without its dash.
    let r = second_step(&app, &ch, &recovery[0].replace('-', "").to_uppercase()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ch = challenge(&app, "ada@example.com").await;
    second_step(&app, &ch, &recovery[0]).await.assert_problem(422, "mfa_code_invalid", Some("code"));

    // Malformed inputs.
    second_step(&app, "mfa_nope", &recovery[1]).await.assert_problem(422, "mfa_challenge_invalid", Some("challenge"));
    second_step(&app, &ch, "12345").await.assert_problem(422, "mfa_code_malformed", Some("code"));
    let tampered = format!("{}{}", &ch[..ch.len() - 1], if ch.ends_with('A') { 'B' } else { 'A' });
    second_step(&app, &tampered, &recovery[1]).await.assert_problem(422, "mfa_challenge_invalid", Some("challenge"));

    // A challenge is short-lived.
    app.clock.advance(Duration::from_secs(301));
    let code = code_at(&python, &secret, &app);
    second_step(&app, &ch, &code).await.assert_problem(422, "mfa_challenge_expired", Some("challenge"));

    // New recovery codes replace the old ones.
    let path = format!("{}/recovery-codes", totp_path(id));
    let r = app.json(Method::POST, &path, Some(&token), &json!({"code": code})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = r.body["recovery_codes"].as_array().unwrap().clone();
    assert_eq!(fresh.len(), 10);
    let ch = challenge(&app, "ada@example.com").await;
    second_step(&app, &ch, &recovery[1]).await.assert_problem(422, "mfa_code_invalid", Some("code"));

    // Turning it off needs a code; then the password alone logs in again.
    let r = app.send(Method::DELETE, &totp_path(id), &[("authorization", &format!("Bearer {token}"))], None).await;
    r.assert_problem(422, "mfa_code_required", Some("code"));
    let r = app.json(Method::DELETE, &totp_path(id), Some(&token), &json!({"code": fresh[0]})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(app.login("ada@example.com", PASSWORD).await.status, StatusCode::CREATED);

    // Every change is audited, and the secret is in no event.
    for t in ["mfa.enabled", "mfa.recovery_code_used", "mfa.recovery_codes_regenerated", "mfa.disabled"] {
        let text = audit(&app, t, 1).await;
        assert!(!text.contains(&secret), "the TOTP secret leaked into {t}");
    }
    let used = audit(&app, "mfa.recovery_code_used", 1).await;
    assert!(used.contains("\"recovery_codes_left\":9"), "{used}");
    app.stop().await;
}

async fn admins_reset_mfa_and_it_is_audited(backend: Backend) {
    let Some(python) = pyotp() else { return };
    let Some(app) = spawn(backend, "mfa admin reset", |_| {}).await else { return };
    let bob = enrolled(&app, &python, "bob@example.com").await;
    let (_, other) = app.user_with_token("eve@example.com").await;
    let r = app.send(Method::DELETE, &totp_path(&bob.id), &[("authorization", &format!("Bearer {other}"))], None).await;
    r.assert_problem(403, "forbidden", None);
    // Another user cannot enrol or confirm for bob either.
    let r = app.json(Method::POST, &totp_path(&bob.id), Some(&other), &json!({"current_password": PASSWORD})).await;
    r.assert_problem(403, "forbidden", None);

    // A password change voids every outstanding challenge.
    let ch = challenge(&app, "bob@example.com").await;
    let me = app.get(&format!("/v1/users/{}", bob.id), Some(&bob.token)).await;
    let etag = me.header("etag").to_owned();
    let body = json!({"password": "a brand new password", "current_password": PASSWORD}).to_string();
    let auth = format!("Bearer {}", bob.token);
    let headers = [("content-type", "application/json"), ("authorization", auth.as_str()), ("if-match", etag.as_str())];
    let r = app.send(Method::PATCH, &format!("/v1/users/{}", bob.id), &headers, Some(Bytes::from(body))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let code = code_at(&python, &bob.secret, &app);
    second_step(&app, &ch, &code).await.assert_problem(422, "mfa_challenge_invalid", Some("challenge"));

    let r = app.send(Method::DELETE, &totp_path(&bob.id), &[("authorization", &format!("Bearer {ADMIN}"))], None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = app.send(Method::DELETE, &totp_path(&bob.id), &[("authorization", &format!("Bearer {ADMIN}"))], None).await;
    r.assert_problem(409, "mfa_not_enabled", None);
    let r = app.login("bob@example.com", "a brand new password").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["user"]["mfa_enabled"], false, "the reset cleared the flag");
    assert_eq!(app.get(&format!("/v1/users/{}", bob.id), Some(&bob.token)).await.body["mfa_enabled"], false);

    let text = audit(&app, "mfa.disabled", 1).await;
    assert!(text.contains("\"via\":\"admin_reset\"") && text.contains("\"via\":\"admin_token\""), "{text}");
    assert!(!text.contains(&bob.secret));
    // Bob can enrol again, with a new secret.
    let new_password = json!({"current_password": "a brand new password"});
    let r = app.json(Method::POST, &totp_path(&bob.id), Some(&bob.token), &new_password).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_ne!(r.body["secret"], bob.secret.as_str());
    assert_eq!(bob.recovery_codes.len(), 10);
    app.stop().await;
}

/// 100 concurrent wrong codes on one challenge: the throttle (3 failures per window in
/// tests) lets no more than 3 be checked; then the right code is refused too until the
/// window ends, and a password success does not reopen the code budget.
async fn concurrent_code_guesses_are_capped_by_the_throttle(backend: Backend) {
    let Some(python) = pyotp() else { return };
    let Some(app) = spawn(backend, "mfa throttle", |_| {}).await else { return };
    let carol = enrolled(&app, &python, "carol@example.com").await;
    let ch = challenge(&app, "carol@example.com").await;
    let wrong = wrong_code(&python, &carol.secret, &app);
    let attempts = (0..100).map(|_| {
        let (app, ch, wrong) = (&app, &ch, &wrong);
        async move { second_step(app, ch, wrong).await.status.as_u16() }
    });
    let statuses = super::futures_join_all(attempts).await;
    let checked = statuses.iter().filter(|&&s| s == 422).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert!((1..=3).contains(&checked), "{checked} wrong codes checked: {statuses:?}");
    assert_eq!(checked + refused, 100, "{statuses:?}");
    let ch = challenge(&app, "carol@example.com").await;
    let right = code_at(&python, &carol.secret, &app);
    second_step(&app, &ch, &right).await.assert_problem(429, "too_many_attempts", None);
    app.clock.advance(Duration::from_secs(301));
    let ch = challenge(&app, "carol@example.com").await;
    let right = code_at(&python, &carol.secret, &app);
    assert_eq!(second_step(&app, &ch, &right).await.status, StatusCode::CREATED);
    app.stop().await;
}

per_backend!(
    enrolment_login_replay_and_recovery_codes,
    admins_reset_mfa_and_it_is_audited,
    concurrent_code_guesses_are_capped_by_the_throttle,
);
