//! Issue 14, the admin console: a user's sessions listed and revoked over HTTP, the user
//! list's filters, and `/admin` served with its Content-Security-Policy. The console itself
//! is driven in Chromium by `tests/admin/journey.js` (CI runs it).

use super::*;

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

async fn delete(app: &TestApp, path: &str, token: Option<&str>, if_match: Option<&str>) -> Resp {
    let bearer = token.map(auth);
    let mut headers: Vec<(&str, &str)> = bearer.iter().map(|a| ("authorization", a.as_str())).collect();
    if let Some(m) = if_match {
        headers.push(("if-match", m));
    }
    app.send(Method::DELETE, path, &headers, None).await
}

/// Who may see and end whose sessions, what a listing shows, and that revocation reaches
/// the cache (each token was checked, hence cached, before), the events and the audit log.
async fn sessions_are_listed_and_revoked(app: TestApp) {
    let (alice, alice_token) = app.user_with_token("alice@example.com").await;
    let alice_id = alice["id"].as_str().unwrap().to_owned();
    let alice_again = app.login("alice@example.com", PASSWORD).await.body["token"].as_str().unwrap().to_owned();
    let (bob, bob_token) = app.user_with_token("bob@example.com").await;
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    for token in [&alice_token, &alice_again, &bob_token] {
        assert_eq!(app.get("/v1/sessions/current", Some(token)).await.status, StatusCode::OK);
    }
    let alice_sessions = format!("/v1/users/{alice_id}/sessions");
    let bob_sessions = format!("/v1/users/{bob_id}/sessions");

    // Your own: newest first, the one you asked with marked, never a token or a hash.
    let r = app.get(&alice_sessions, Some(&alice_token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.header("cache-control"), "no-store");
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", r.body);
    assert!(items[0]["created_at"].as_str() >= items[1]["created_at"].as_str());
    assert!(items[0]["id"].as_str() > items[1]["id"].as_str(), "newest first");
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    assert_eq!(items[1]["current"], true, "the first login's session made this request");
    for s in items {
        assert_eq!((s["active"].clone(), s["revoked_at"].clone()), (json!(true), Value::Null));
        let keys: Vec<_> = s.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["active", "created_at", "current", "expires_at", "id", "revoked_at"]);
    }
    assert!(!String::from_utf8_lossy(&r.raw).contains("st_"), "no token in a listing");

    // Someone else's: only admins.
    app.get(&bob_sessions, Some(&alice_token)).await.assert_problem(403, "forbidden", None);
    delete(&app, &bob_sessions, Some(&alice_token), None).await.assert_problem(403, "forbidden", None);
    assert_eq!(app.get("/v1/sessions/current", Some(&bob_token)).await.status, StatusCode::OK);
    let r = app.get(&bob_sessions, Some(ADMIN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["items"][0]["current"], false);

    // Bad and unknown ids, missing credentials; a stranger learns nothing about unknown ids.
    let missing = format!("/v1/users/{}/sessions", uuid::Uuid::now_v7());
    app.get(&missing, Some(ADMIN)).await.assert_problem(404, "not_found", None);
    delete(&app, &missing, Some(ADMIN), None).await.assert_problem(404, "not_found", None);
    app.get(&missing, Some(&alice_token)).await.assert_problem(403, "forbidden", None);
    app.get("/v1/users/not-a-uuid/sessions", Some(ADMIN)).await.assert_problem(400, "invalid_uuid", Some("id"));
    delete(&app, "/v1/users/not-a-uuid/sessions", Some(ADMIN), None).await.assert_problem(
        400,
        "invalid_uuid",
        Some("id"),
    );
    app.get(&alice_sessions, None).await.assert_problem(401, "missing_token", None);
    delete(&app, &alice_sessions, None, None).await.assert_problem(401, "missing_token", None);

    // An admin acting on a stale view of the user is told so, and nothing ends.
    delete(&app, &alice_sessions, Some(ADMIN), Some("\"7\"")).await.assert_problem(
        412,
        "version_mismatch",
        Some("If-Match"),
    );
    delete(&app, &alice_sessions, Some(ADMIN), Some("7")).await.assert_problem(
        400,
        "malformed_if_match",
        Some("If-Match"),
    );
    assert_eq!(app.get("/v1/sessions/current", Some(&alice_token)).await.status, StatusCode::OK);

    // The admin ends both of Alice's sessions; the account is untouched, Bob's session lives.
    let r = delete(&app, &alice_sessions, Some(ADMIN), Some("\"1\"")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"revoked": 2}));
    for token in [&alice_token, &alice_again] {
        app.get("/v1/sessions/current", Some(token)).await.assert_problem(401, "token_revoked", None);
    }
    assert_eq!(app.get("/v1/sessions/current", Some(&bob_token)).await.status, StatusCode::OK);
    let after = app.get(&format!("/v1/users/{alice_id}"), Some(ADMIN)).await;
    assert_eq!((after.body["version"].clone(), after.body["status"].clone()), (json!(1), json!("active")));
    let r = app.get(&alice_sessions, Some(ADMIN)).await;
    for s in r.body["items"].as_array().unwrap() {
        assert_eq!(s["active"], false, "{s}");
        assert!(s["revoked_at"].is_string(), "{s}");
    }
    let r = delete(&app, &alice_sessions, Some(ADMIN), None).await;
    assert_eq!(r.body, json!({"revoked": 0}), "nothing left to end");

    // Each ended session is a `session.revoked` naming who ended it.
    let audit =
        super::events::audit_until(&app, &format!("/v1/audit?user_id={alice_id}&type=session.revoked"), 2).await;
    assert_eq!(audit.len(), 2, "{audit:?}");
    for entry in &audit {
        assert_eq!(entry["data"]["reason"], "revoked", "{entry}");
        assert_eq!(entry["actor"]["type"], "admin", "{entry}");
        assert_eq!(entry["actor"]["via"], "admin_token", "{entry}");
    }

    // "Sign out everywhere": Bob ends his own sessions, the one he asks with included.
    let r = delete(&app, &bob_sessions, Some(&bob_token), None).await;
    assert_eq!(r.body, json!({"revoked": 1}), "{}", r.body);
    app.get("/v1/sessions/current", Some(&bob_token)).await.assert_problem(401, "token_revoked", None);
    app.stop().await;
}

/// `GET /v1/users` filtered by email prefix, status and role, paged by cursor.
async fn users_are_filtered_and_paged(app: TestApp) {
    let mut ids = std::collections::HashMap::new();
    for email in ["ann@example.com", "anna@example.com", "annika@example.com", "bert@example.com", "anz@example.org"] {
        ids.insert(email, app.register(email, "Filtered").await["id"].as_str().unwrap().to_owned());
    }
    let patch = |email: &'static str, body: Value| {
        let (app, id) = (&app, ids[email].clone());
        async move {
            let r = app
                .send(
                    Method::PATCH,
                    &format!("/v1/users/{id}"),
                    &[("content-type", "application/json"), ("authorization", &auth(ADMIN)), ("if-match", "\"1\"")],
                    Some(Bytes::from(body.to_string())),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
    };
    patch("anna@example.com", json!({"status": "disabled"})).await;
    patch("annika@example.com", json!({"role": "admin"})).await;
    let emails = |query: &str| {
        let app = &app;
        let query = query.to_owned();
        async move {
            let mut seen = Vec::new();
            let mut path = format!("/v1/users?limit=1&{query}");
            loop {
                let r = app.get(&path, Some(ADMIN)).await;
                assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
                seen.extend(
                    r.body["items"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_owned()),
                );
                match r.body["next_cursor"].as_str() {
                    Some(c) => path = format!("/v1/users?limit=1&{query}&cursor={c}"),
                    None => return seen,
                }
            }
        }
    };
    // Prefixes are normalised like emails; blank is no filter.
    assert_eq!(emails("email_prefix=%20ANN").await, ["ann@example.com", "anna@example.com", "annika@example.com"]);
    assert_eq!(emails("email_prefix=an").await.len(), 4);
    assert_eq!(emails("email_prefix=%20").await.len(), 5);
    assert_eq!(emails("email_prefix=ann%40example.com").await, ["ann@example.com"]);
    assert!(emails("email_prefix=zz").await.is_empty());
    assert_eq!(emails("status=disabled").await, ["anna@example.com"]);
    assert_eq!(emails("role=admin").await, ["annika@example.com"]);
    assert_eq!(emails("email_prefix=ann&status=active&role=user").await, ["ann@example.com"]);
    assert_eq!(emails("email_prefix=anz&role=user").await, ["anz@example.org"]);

    let long = "a".repeat(255);
    app.get(&format!("/v1/users?email_prefix={long}"), Some(ADMIN)).await.assert_problem(
        422,
        "too_long",
        Some("email_prefix"),
    );
    app.get("/v1/users?email_prefix=a%07", Some(ADMIN)).await.assert_problem(
        422,
        "invalid_character",
        Some("email_prefix"),
    );
    app.get("/v1/users?status=gone", Some(ADMIN)).await.assert_problem(422, "invalid_value", Some("status"));
    app.get("/v1/users?role=root", Some(ADMIN)).await.assert_problem(422, "invalid_value", Some("role"));
    app.get("/v1/users?status=active&status=disabled", Some(ADMIN)).await.assert_problem(
        400,
        "duplicate_parameter",
        Some("status"),
    );
    let (_, user_token) = app.user_with_token("plain@example.com").await;
    app.get("/v1/users?email_prefix=a", Some(&user_token)).await.assert_problem(403, "forbidden", None);
    app.stop().await;
}

all_backends!(sessions_are_listed_and_revoked, users_are_filtered_and_paged);

const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                           connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `/admin` and its assets: embedded, with their content types, revalidation and the strict
/// policy; the bench report viewer for admins only.
#[tokio::test]
async fn the_console_is_served_under_its_csp() {
    let app = spawn(Backend::Sqlite, "admin console", |_| {}).await.unwrap();
    for (path, content_type) in [
        ("/admin", "text/html; charset=utf-8"),
        ("/admin/admin.js", "text/javascript; charset=utf-8"),
        ("/admin/admin.css", "text/css; charset=utf-8"),
        ("/admin/bench-report.css", "text/css; charset=utf-8"),
    ] {
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.header("content-type"), content_type, "{path}");
        assert_eq!(r.header("content-security-policy"), CONSOLE_CSP, "{path}");
        assert_eq!(r.header("cache-control"), "no-cache", "{path}");
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(r.header("x-frame-options"), "DENY", "{path}");
        let etag = r.header("etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() > 2, "{path}: {etag}");
        let again = app.send(Method::GET, path, &[("if-none-match", &etag)], None).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.raw.is_empty());
        assert_eq!(again.header("content-security-policy"), CONSOLE_CSP, "{path}");
    }
    let page = String::from_utf8_lossy(&app.get("/admin", None).await.raw).into_owned();
    assert!(page.contains("<script src=\"/admin/admin.js\" defer></script>"), "{page}");
    for path in ["/admin/nope.js", "/admin/../docs", "/admin/index.html"] {
        let r = app.get(path, None).await;
        assert!(matches!(r.status.as_u16(), 404 | 400), "{path}: {}", r.status);
    }
    app.get("/admin/nope.js", None).await.assert_problem(404, "route_not_found", None);

    // The report viewer: admins only, JSON only, reports only.
    let report = bench_report(&app).await;
    let post = |token: Option<String>, content_type: &'static str, body: Bytes| {
        let app = &app;
        async move {
            let bearer = token.as_deref().map(auth);
            let mut headers = vec![("content-type", content_type)];
            if let Some(b) = &bearer {
                headers.push(("authorization", b.as_str()));
            }
            app.send(Method::POST, "/admin/bench-report", &headers, Some(body)).await
        }
    };
    post(None, "application/json", report.clone()).await.assert_problem(401, "missing_token", None);
    let (_, user_token) = app.user_with_token("viewer@example.com").await;
    post(Some(user_token), "application/json", report.clone()).await.assert_problem(403, "forbidden", None);
    let admin = || Some(ADMIN.to_owned());
    post(admin(), "text/plain", report.clone()).await.assert_problem(
        415,
        "unsupported_media_type",
        Some("Content-Type"),
    );
    let r = post(admin(), "application/json", Bytes::from_static(b"{\"schema\": \"strata-bench/0\"}")).await;
    r.assert_problem(422, "bench_report_invalid", Some("body"));
    assert!(r.body["detail"].as_str().unwrap().contains("strata-bench/0"), "{}", r.body);
    post(admin(), "application/json", Bytes::from_static(b"[1, 2")).await.assert_problem(
        422,
        "bench_report_invalid",
        Some("body"),
    );
    let r = post(admin(), "application/json", report).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.raw));
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(r.header("cache-control"), "no-store");
    let csp = r.header("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("sandbox") && !csp.contains("script-src"), "{csp}");
    let html = String::from_utf8_lossy(&r.raw);
    assert!(html.contains("<link rel=\"stylesheet\" href=\"/admin/bench-report.css\">"), "{html}");
    assert!(!html.contains("<script") && !html.contains("<style") && !html.contains("style="), "nothing inline");
    assert!(html.matches("<svg class=\"plot\"").count() >= 5, "{html}");
    app.stop().await;
}

/// A small real report: `strata bench` for half a second against this app's `/healthz`.
async fn bench_report(app: &TestApp) -> Bytes {
    let dir = strata_store::testing::TempDir::new();
    let json = dir.path.join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["bench", "--target", &format!("http://{}", app.addr), "--scenario", "http", "--path", "/healthz"])
        .args(["--rate", "100", "--duration", "500ms", "--no-metrics", "--quiet", "--json"])
        .arg(&json)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Bytes::from(std::fs::read(&json).unwrap())
}
