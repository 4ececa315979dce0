//! Browser clients (issue 16): cookie sessions, CSRF and CORS, over raw HTTP on every
//! backend, and for real in headless Chromium from a page on another origin.

use super::*;

const APP_ORIGIN: &str = "http://app.example";
const EVIL_ORIGIN: &str = "http://evil.example";

fn cookie_login_body(email: &str) -> Bytes {
    Bytes::from(json!({"email": email, "password": PASSWORD, "cookie": true}).to_string())
}

/// `name=value` of every `Set-Cookie` of a response.
fn set_cookies(r: &Resp) -> Vec<String> {
    r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

async fn cookie_sessions_csrf_and_cors(backend: Backend) {
    let Some(app) = spawn(backend, "browser cookies", |c| {
        c.http.cors_allowed_origins = vec![APP_ORIGIN.to_owned()];
    })
    .await
    else {
        return;
    };
    let user = app.register("cookie@example.com", "Cookie").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let json_from = |origin: &'static str| [("content-type", "application/json"), ("origin", origin)];

    // A cookie login from an unlisted origin is refused (no login CSRF), with no CORS headers.
    let r = app
        .send(Method::POST, "/v1/sessions", &json_from(EVIL_ORIGIN), Some(cookie_login_body("cookie@example.com")))
        .await;
    r.assert_problem(403, "origin_not_allowed", Some("Origin"));
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert!(set_cookies(&r).is_empty());
    // Bad input names the field.
    let bad = Bytes::from(json!({"email": "cookie@example.com", "password": PASSWORD, "cookie": "yes"}).to_string());
    app.send(Method::POST, "/v1/sessions", &json_from(APP_ORIGIN), Some(bad)).await.assert_problem(
        422,
        "invalid_type",
        Some("cookie"),
    );

    // From the listed origin: two cookies, a CSRF token instead of the session token.
    let r = app
        .send(Method::POST, "/v1/sessions", &json_from(APP_ORIGIN), Some(cookie_login_body("cookie@example.com")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert!(r.header("vary").contains("Origin"));
    assert!(r.body.get("token").is_none(), "{}", r.body);
    let csrf = r.body["csrf_token"].as_str().unwrap().to_owned();
    let cookies = set_cookies(&r);
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let session_cookie = cookies.iter().find(|c| c.starts_with("strata_session=st_")).unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=3600"] {
        assert!(session_cookie.contains(attribute), "{session_cookie} lacks {attribute}");
    }
    let csrf_cookie = cookies.iter().find(|c| c.starts_with("strata_session_csrf=")).unwrap();
    assert!(csrf_cookie.starts_with(&format!("strata_session_csrf={csrf};")) && !csrf_cookie.contains("HttpOnly"));
    let jar = session_cookie.split(';').next().unwrap().to_owned();

    // Who-am-I with the cookie alone, which also tells the page its CSRF token.
    let r = app.send(Method::GET, "/v1/sessions/current", &[("cookie", &jar), ("origin", APP_ORIGIN)], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["user"]["id"].as_str(), r.body["csrf_token"].as_str()),
        (Some(id.as_str()), Some(csrf.as_str()))
    );
    // A bearer caller is never shown one.
    let (_, bearer) = app.user_with_token("bearer@example.com").await;
    assert!(app.get("/v1/sessions/current", Some(&bearer)).await.body.get("csrf_token").is_none());

    // Unsafe requests authenticated by the cookie need the token, and a listed (or no) origin.
    let verification = format!("/v1/users/{id}/verification");
    let post = |headers: Vec<(&'static str, String)>| {
        let (app, path) = (&app, verification.clone());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.send(Method::POST, &path, &h, None).await
        }
    };
    let r = post(vec![("cookie", jar.clone()), ("origin", APP_ORIGIN.into())]).await;
    r.assert_problem(403, "csrf_token_missing", Some("X-CSRF-Token"));
    assert_eq!(r.header("access-control-allow-origin"), APP_ORIGIN, "the page may read why");
    post(vec![("cookie", jar.clone()), ("x-csrf-token", "forged".into())]).await.assert_problem(
        403,
        "csrf_token_invalid",
        Some("X-CSRF-Token"),
    );
    let other_csrf = csrf_of_another_session(&app).await;
    post(vec![("cookie", jar.clone()), ("x-csrf-token", other_csrf)]).await.assert_problem(
        403,
        "csrf_token_invalid",
        Some("X-CSRF-Token"),
    );
    let r = post(vec![("cookie", jar.clone()), ("x-csrf-token", csrf.clone()), ("origin", EVIL_ORIGIN.into())]).await;
    r.assert_problem(403, "origin_not_allowed", Some("Origin"));
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let r = post(vec![("cookie", jar.clone()), ("x-csrf-token", csrf.clone()), ("origin", APP_ORIGIN.into())]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    // A bearer request is not subject to CSRF checks, even with a stray cookie.
    let bearer_user = app.get("/v1/sessions/current", Some(&bearer)).await.body["user"]["id"].clone();
    let auth = format!("Bearer {bearer}");
    let path = format!("/v1/users/{}/verification", bearer_user.as_str().unwrap());
    let r = app
        .send(Method::POST, &path, &[("authorization", &auth), ("cookie", &jar), ("origin", EVIL_ORIGIN)], None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    // The admin token is a bearer credential only.
    let admin_cookie = format!("strata_session={ADMIN}");
    app.send(Method::GET, "/v1/users", &[("cookie", &admin_cookie)], None).await.assert_problem(
        401,
        "malformed_token",
        None,
    );

    // Preflights: exact answers for the listed origin, a problem for others.
    let preflight = |origin: &'static str| {
        let app = &app;
        async move {
            let headers = [
                ("origin", origin),
                ("access-control-request-method", "DELETE"),
                ("access-control-request-headers", "x-csrf-token, content-type"),
            ];
            app.send(Method::OPTIONS, "/v1/sessions/current", &headers, None).await
        }
    };
    let r = preflight(APP_ORIGIN).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("access-control-allow-origin"), APP_ORIGIN);
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    assert!(r.header("access-control-allow-methods").contains("DELETE"));
    assert!(r.header("access-control-allow-headers").contains("X-CSRF-Token"));
    assert_eq!(r.header("access-control-max-age"), "600");
    assert!(r.header("vary").contains("Origin"));
    let r = preflight(EVIL_ORIGIN).await;
    r.assert_problem(403, "origin_not_allowed", Some("Origin"));
    assert!(
        r.headers.get("access-control-allow-origin").is_none()
            && r.headers.get("access-control-allow-methods").is_none()
    );
    // Simple requests from unlisted origins are served without CORS headers.
    let r = app.send(Method::GET, "/healthz", &[("origin", EVIL_ORIGIN)], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    assert!(r.header("vary").contains("Origin"));

    // Logout clears both cookies; the session is dead.
    let headers = [("cookie", jar.as_str()), ("x-csrf-token", csrf.as_str()), ("origin", APP_ORIGIN)];
    let r = app.send(Method::DELETE, "/v1/sessions/current", &headers, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let cleared = set_cookies(&r);
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(cleared.iter().all(|c| c.contains("Max-Age=0")), "{cleared:?}");
    app.send(Method::GET, "/v1/sessions/current", &[("cookie", &jar)], None).await.assert_problem(
        401,
        "token_revoked",
        None,
    );
    app.send(Method::GET, "/v1/sessions/current", &[("cookie", "strata_session=garbage")], None).await.assert_problem(
        401,
        "malformed_token",
        None,
    );
    app.stop().await;

    // Without listed origins there is no CORS at all.
    let Some(plain) = spawn(backend, "browser no cors", |_| {}).await else { return };
    let r = plain.send(Method::GET, "/healthz", &[("origin", APP_ORIGIN)], None).await;
    assert!(r.headers.get("access-control-allow-origin").is_none() && r.headers.get("vary").is_none());
    plain.stop().await;
}

/// The CSRF token of a fresh cookie session of someone else.
async fn csrf_of_another_session(app: &TestApp) -> String {
    app.register("someone-else@example.com", "Else").await;
    let r = app
        .send(
            Method::POST,
            "/v1/sessions",
            &[("content-type", "application/json")],
            Some(cookie_login_body("someone-else@example.com")),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["csrf_token"].as_str().unwrap().to_owned()
}

/// `chromium`, or `None` after the skip-or-require rule for the `chromium` backend.
fn chromium() -> Option<String> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|bin| {
        std::process::Command::new(bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        strata_core::testing::unusable(
            "browser chromium",
            "chromium",
            "chromium is not installed (apt-get install chromium)",
        );
    }
    found.map(str::to_owned)
}

/// Serves `pages` (path → HTML) on 127.0.0.1, port 0, until dropped.
struct PageServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    /// `listener` is bound before Strata starts, so that Strata can list its origin.
    fn start(listener: std::net::TcpListener, pages: Vec<(&'static str, String)>) -> PageServer {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let pages = Arc::new(pages);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let pages = pages.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split(' ').nth(1).unwrap_or("/");
                    let (status, body) = match pages.iter().find(|(p, _)| *p == path) {
                        Some((_, html)) => ("200 OK", html.clone()),
                        None => ("404 Not Found", String::new()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        PageServer { port, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads `url` in headless Chromium and returns the text of `<pre id="out">` once the
/// page's script has written its JSON results there.
async fn run_page(chromium: &str, url: &str) -> Value {
    let profile = strata_store::testing::TempDir::new();
    let out = tokio::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path.display()))
        // Virtual time waits for the page's fetches (network pauses it) up to this budget.
        .args(["--virtual-time-budget=20000", "--dump-dom", url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out).await.expect("chromium finished").unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"out\">").map(|i| i + "<pre id=\"out\">".len());
    let text = start.and_then(|s| dom[s..].split("</pre>").next()).unwrap_or("");
    let text = text.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("no results in the page: {dom}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The page of the listed origin: logs in with a cookie, who-am-I, a POST without the CSRF
/// token, logout, who-am-I again; every outcome into `#out`.
const APP_PAGE: &str = r#"<!doctype html><html><body><pre id="out">running</pre><script>
const api = "API";
const out = {};
async function call(name, path, init) {
  try {
    const r = await fetch(api + path, Object.assign({credentials: "include"}, init));
    const text = await r.text();
    let body = null;
    try { body = JSON.parse(text); } catch (e) {}
    out[name] = {status: r.status, code: body && body.code, body: body};
    return body;
  } catch (e) {
    out[name] = {error: e.name};
    return null;
  }
}
(async () => {
  const json = {"Content-Type": "application/json"};
  const login = await call("login", "/v1/sessions", {method: "POST", headers: json,
    body: JSON.stringify({email: "EMAIL", password: "PASSWORD", cookie: true})});
  const csrf = login && login.csrf_token;
  out.login_has_token = !!(login && login.token);
  out.page_sees_session_cookie = document.cookie.includes("strata_session=st_");
  await call("whoami", "/v1/sessions/current", {});
  await call("post_without_csrf", "/v1/users/" + (login && login.user.id) + "/verification", {method: "POST"});
  await call("logout_without_csrf", "/v1/sessions/current", {method: "DELETE"});
  await call("whoami_still", "/v1/sessions/current", {});
  await call("logout", "/v1/sessions/current", {method: "DELETE", headers: {"X-CSRF-Token": csrf}});
  await call("whoami_after_logout", "/v1/sessions/current", {});
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>"#;

/// The page of an origin not listed: no CORS access, not even a cookie login.
const EVIL_PAGE: &str = r#"<!doctype html><html><body><pre id="out">running</pre><script>
const api = "API";
const out = {};
async function attempt(name, path, init) {
  try {
    const r = await fetch(api + path, Object.assign({credentials: "include"}, init));
    out[name] = {status: r.status};
  } catch (e) {
    out[name] = {error: e.name};
  }
}
(async () => {
  await attempt("whoami", "/v1/sessions/current", {});
  await attempt("cookie_login", "/v1/sessions", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({email: "EMAIL", password: "PASSWORD", cookie: true})});
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>"#;

/// Strata on 127.0.0.1:B; the page on 127.0.0.1:A (cross-origin, same site, listed) and on
/// localhost:A (another site, not listed). Plain HTTP, so `Secure` is off and `SameSite`
/// is `Lax`: browsers refuse `SameSite=None` without `Secure`, and same-site requests carry
/// `Lax` cookies (see the README, Browser clients).
async fn headless_chromium_from_another_origin(backend: Backend) {
    let Some(chromium) = chromium() else { return };
    let page_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page_port = page_listener.local_addr().unwrap().port();
    let listed = format!("http://127.0.0.1:{page_port}");
    let Some(app) = spawn(backend, "browser chromium", |c| {
        c.http.cors_allowed_origins = vec![listed.clone()];
        c.auth.cookie_secure = false;
    })
    .await
    else {
        return;
    };
    app.register("browser@example.com", "Browser").await;
    let api = format!("http://127.0.0.1:{}", app.addr.port());
    let fill =
        |page: &str| page.replace("API", &api).replace("EMAIL", "browser@example.com").replace("PASSWORD", PASSWORD);
    let pages = PageServer::start(page_listener, vec![("/app.html", fill(APP_PAGE)), ("/evil.html", fill(EVIL_PAGE))]);

    let out = run_page(&chromium, &format!("{listed}/app.html")).await;
    assert_eq!(out["login"]["status"], 201, "{out}");
    assert_eq!(out["login_has_token"], false, "{out}");
    assert_eq!(out["page_sees_session_cookie"], false, "HttpOnly: {out}");
    assert_eq!(out["whoami"]["status"], 200, "{out}");
    assert_eq!(out["whoami"]["body"]["user"]["email"], "browser@example.com", "{out}");
    assert_eq!(
        (out["post_without_csrf"]["status"].clone(), out["post_without_csrf"]["code"].clone()),
        (json!(403), json!("csrf_token_missing")),
        "{out}"
    );
    assert_eq!(out["logout_without_csrf"]["code"], "csrf_token_missing", "{out}");
    assert_eq!(out["whoami_still"]["status"], 200, "the refused logout ended nothing: {out}");
    assert_eq!(out["logout"]["status"], 204, "{out}");
    assert_eq!(
        (out["whoami_after_logout"]["status"].clone(), out["whoami_after_logout"]["code"].clone()),
        (json!(401), json!("missing_token")),
        "the cookie was cleared: {out}"
    );

    let out = run_page(&chromium, &format!("http://localhost:{}/evil.html", pages.port)).await;
    assert_eq!(out["whoami"]["error"], "TypeError", "no CORS access for an unlisted origin: {out}");
    assert_eq!(out["cookie_login"]["error"], "TypeError", "{out}");
    app.stop().await;
}

per_backend!(cookie_sessions_csrf_and_cors, headless_chromium_from_another_origin);

/// Issue 14: `/docs` renders every operation in headless Chromium from the embedded Swagger
/// UI, under its Content-Security-Policy, with no network but this server.
#[tokio::test]
async fn docs_render_offline_under_their_csp() {
    let Some(chromium) = chromium() else { return };
    let app = spawn(Backend::Sqlite, "docs", |_| {}).await.unwrap();
    let page = app.get("/docs", None).await;
    assert!(page.header("content-security-policy").contains("script-src 'self'"));
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css", "strata-docs.js", "strata-docs.css"] {
        let r = app.get(&format!("/docs/{asset}"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        assert!(r.header("cache-control").contains("max-age"), "{asset}");
    }
    app.get("/docs/../../etc/passwd", None).await.assert_problem(404, "route_not_found", None);
    app.get("/docs/nope.js", None).await.assert_problem(404, "route_not_found", None);

    let profile = strata_store::testing::TempDir::new();
    let out = tokio::process::Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path.display()))
        .args(["--virtual-time-budget=20000", "--dump-dom", &format!("http://{}/docs", app.addr)])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out).await.expect("chromium finished").unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let doc = app.get("/openapi.json", None).await.body;
    let paths = doc["paths"].as_object().unwrap();
    // Swagger UI renders one `opblock` per operation, each naming its path.
    let operations: usize = paths.values().map(|item| item.as_object().unwrap().len()).sum();
    assert_eq!(dom.matches("class=\"opblock opblock-").count(), operations, "{dom}");
    for path in paths.keys() {
        assert!(dom.contains(&format!("data-path=\"{path}\"")), "{path} not rendered");
    }
    app.stop().await;
}
