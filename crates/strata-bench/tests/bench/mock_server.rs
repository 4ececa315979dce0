//! A small in-memory stand-in for Strata's HTTP API (the contract in the bench crate's brief),
//! used by the tests and by `examples/mock-server.rs` for the wrk comparison until `strata serve`
//! exists. It can freeze the whole server for a fixed time on every Nth request, which is how
//! the latency-correctness test creates stalls of a known size.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, Default)]
pub struct MockOptions {
    /// Freeze every request for `stall_for` on each `stall_every`-th request (0: never).
    pub stall_every: u64,
    pub stall_for: Duration,
    /// Never answer at all (for timeout tests).
    pub black_hole: bool,
}

#[derive(Clone)]
struct User {
    id: String,
    email: String,
    name: String,
    password: String,
    version: u64,
}

#[derive(Default)]
struct RouteStats {
    count: u64,
    sum: f64,
    buckets: [u64; 6],
}

const BUCKETS: [f64; 5] = [0.0005, 0.001, 0.005, 0.01, 0.1];

#[derive(Default)]
struct State {
    users: HashMap<String, User>,
    by_email: HashMap<String, String>,
    sessions: HashMap<String, String>,
    next_id: u64,
    routes: BTreeMap<(String, String, u16), RouteStats>,
    patches: u64,
}

pub struct MockServer {
    pub addr: SocketAddr,
    /// Requests answered (excluding /metrics).
    pub requests: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn users(&self) -> usize {
        self.state.lock().users.len()
    }

    pub fn patches(&self) -> u64 {
        self.state.lock().patches
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    options: MockOptions,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicU64>,
    /// Held for writing during a stall so that every request, on any connection, waits.
    freeze: tokio::sync::RwLock<()>,
}

pub async fn spawn(options: MockOptions) -> MockServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    serve(listener, options).await
}

pub async fn serve(listener: TcpListener, options: MockOptions) -> MockServer {
    let addr = listener.local_addr().expect("local addr");
    let state = Arc::new(Mutex::new(State::default()));
    let requests = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(Shared {
        options,
        state: state.clone(),
        requests: requests.clone(),
        freeze: tokio::sync::RwLock::new(()),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = connection(stream, shared).await;
            });
        }
    });
    MockServer { addr, requests, state, task }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    if_match: Option<String>,
    body: Vec<u8>,
}

async fn connection(mut stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        let (head_len, mut request, content_length) = loop {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let mut length = 0usize;
                        let (mut authorization, mut if_match) = (None, None);
                        for h in req.headers.iter() {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            if h.name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            } else if h.name.eq_ignore_ascii_case("authorization") {
                                authorization = Some(value);
                            } else if h.name.eq_ignore_ascii_case("if-match") {
                                if_match = Some(value);
                            }
                        }
                        Some((
                            n,
                            Request {
                                method: req.method.unwrap_or("GET").to_string(),
                                path: req.path.unwrap_or("/").to_string(),
                                authorization,
                                if_match,
                                body: Vec::new(),
                            },
                            length,
                        ))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Ok(()),
                }
            };
            if let Some(p) = parsed {
                break p;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        buf.advance(head_len);
        while buf.len() < content_length {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        request.body = buf[..content_length].to_vec();
        buf.advance(content_length);
        if shared.options.black_hole {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let started = Instant::now();
        if request.path != "/metrics" {
            let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
            if shared.options.stall_every > 0 {
                if n % shared.options.stall_every == 0 {
                    let _frozen = shared.freeze.write().await;
                    tokio::time::sleep(shared.options.stall_for).await;
                } else {
                    drop(shared.freeze.read().await);
                }
            }
        }
        out.clear();
        respond(&shared, &request, started, &mut out);
        stream.write_all(&out).await?;
    }
}

fn json_field(body: &serde_json::Value, key: &str) -> Option<String> {
    body.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

fn user_json(u: &User) -> serde_json::Value {
    serde_json::json!({
        "id": u.id, "email": u.email, "name": u.name, "role": "user", "status": "active",
        "version": u.version, "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"
    })
}

fn respond(shared: &Shared, req: &Request, started: Instant, out: &mut Vec<u8>) {
    let mut state = shared.state.lock();
    let token = req.authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).map(str::to_string);
    let session_user = token.as_ref().and_then(|t| state.sessions.get(t).cloned());
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or(serde_json::Value::Null);
    let path = req.path.split('?').next().unwrap_or("");
    let (route, status, payload, etag, chunked): (&str, u16, String, Option<u64>, bool) = match (
        req.method.as_str(),
        path,
    ) {
        ("GET", "/healthz") => ("/healthz", 200, r#"{"status":"ok"}"#.to_string(), None, false),
        ("GET", "/chunked") => ("/chunked", 200, "hello, chunked world".to_string(), None, true),
        ("GET", "/metrics") => {
            let mut text = String::from("# TYPE strata_http_request_duration_seconds histogram\n");
            for ((route, method, status), s) in &state.routes {
                let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
                let mut cumulative = 0;
                for (i, le) in BUCKETS.iter().enumerate() {
                    cumulative += s.buckets[i];
                    text.push_str(&format!(
                        "strata_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}\n"
                    ));
                }
                text.push_str(&format!(
                    "strata_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n",
                    s.count
                ));
                text.push_str(&format!("strata_http_request_duration_seconds_sum{{{labels}}} {}\n", s.sum));
                text.push_str(&format!("strata_http_request_duration_seconds_count{{{labels}}} {}\n", s.count));
                text.push_str(&format!("strata_http_requests_total{{{labels}}} {}\n", s.count));
            }
            let lookups = state.routes.iter().filter(|(k, _)| k.0 != "/healthz").map(|(_, s)| s.count).sum::<u64>();
            text.push_str(&format!(
                "strata_db_query_duration_seconds_sum{{op=\"user_lookup\"}} {}\n",
                lookups as f64 * 0.0001
            ));
            text.push_str(&format!("strata_db_query_duration_seconds_count{{op=\"user_lookup\"}} {lookups}\n"));
            ("/metrics", 200, text, None, false)
        }
        ("POST", "/v1/users") => {
            match (json_field(&body, "email"), json_field(&body, "name"), json_field(&body, "password")) {
                (Some(email), Some(name), Some(password)) => {
                    if state.by_email.contains_key(&email) {
                        ("/v1/users", 409, r#"{"title":"email taken"}"#.to_string(), None, false)
                    } else {
                        state.next_id += 1;
                        let user = User {
                            id: format!("u{:08x}", state.next_id),
                            email: email.clone(),
                            name,
                            password,
                            version: 1,
                        };
                        state.by_email.insert(email, user.id.clone());
                        state.users.insert(user.id.clone(), user.clone());
                        ("/v1/users", 201, user_json(&user).to_string(), Some(1), false)
                    }
                }
                _ => ("/v1/users", 422, r#"{"title":"invalid"}"#.to_string(), None, false),
            }
        }
        ("POST", "/v1/sessions") => {
            let found = json_field(&body, "email")
                .and_then(|e| state.by_email.get(&e).cloned())
                .and_then(|id| state.users.get(&id).cloned());
            match found {
                Some(u) if json_field(&body, "password").as_deref() == Some(u.password.as_str()) => {
                    state.next_id += 1;
                    let token = format!("tok{:016x}", state.next_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    state.sessions.insert(token.clone(), u.id.clone());
                    let payload = serde_json::json!({"token": token, "expires_at": "2030-01-01T00:00:00Z", "user": user_json(&u)});
                    ("/v1/sessions", 201, payload.to_string(), None, false)
                }
                _ => ("/v1/sessions", 401, r#"{"title":"invalid credentials"}"#.to_string(), None, false),
            }
        }
        ("GET", "/v1/sessions/current") => match session_user.and_then(|id| state.users.get(&id).cloned()) {
            Some(u) => (
                "/v1/sessions/current",
                200,
                serde_json::json!({"session": {"expires_at": "2030-01-01T00:00:00Z"}, "user": user_json(&u)})
                    .to_string(),
                None,
                false,
            ),
            None => ("/v1/sessions/current", 401, "{}".to_string(), None, false),
        },
        ("DELETE", "/v1/sessions/current") => match token {
            Some(t) if state.sessions.remove(&t).is_some() => ("/v1/sessions/current", 204, String::new(), None, false),
            _ => ("/v1/sessions/current", 401, "{}".to_string(), None, false),
        },
        (method, p) if p.starts_with("/v1/users/") => {
            let id = p.trim_start_matches("/v1/users/").to_string();
            if session_user.as_deref() != Some(id.as_str()) {
                ("/v1/users/{id}", 403, "{}".to_string(), None, false)
            } else if method == "GET" {
                let u = state.users.get(&id).cloned();
                match u {
                    Some(u) => ("/v1/users/{id}", 200, user_json(&u).to_string(), Some(u.version), false),
                    None => ("/v1/users/{id}", 404, "{}".to_string(), None, false),
                }
            } else if method == "PATCH" {
                let current = state.users.get(&id).map(|u| u.version).unwrap_or(0);
                if req.if_match.as_deref() != Some(format!("\"{current}\"").as_str()) {
                    ("/v1/users/{id}", 412, "{}".to_string(), None, false)
                } else {
                    state.patches += 1;
                    let u = state.users.get_mut(&id).map(|u| {
                        if let Some(n) = json_field(&body, "name") {
                            u.name = n;
                        }
                        u.version += 1;
                        u.clone()
                    });
                    match u {
                        Some(u) => ("/v1/users/{id}", 200, user_json(&u).to_string(), Some(u.version), false),
                        None => ("/v1/users/{id}", 404, "{}".to_string(), None, false),
                    }
                }
            } else {
                ("/v1/users/{id}", 405, "{}".to_string(), None, false)
            }
        }
        _ => ("unmatched", 404, r#"{"title":"not found"}"#.to_string(), None, false),
    };
    let elapsed = started.elapsed().as_secs_f64();
    if route != "/metrics" {
        let s = state.routes.entry((route.to_string(), req.method.clone(), status)).or_default();
        s.count += 1;
        s.sum += elapsed;
        let i = BUCKETS.iter().position(|b| elapsed <= *b).unwrap_or(BUCKETS.len());
        s.buckets[i] += 1;
    }
    drop(state);
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        _ => "Other",
    };
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nServer-Timing: app;dur={:.3}, db;dur=0.010\r\n", elapsed * 1e3).as_bytes());
    if let Some(v) = etag {
        out.extend_from_slice(format!("ETag: \"{v}\"\r\n").as_bytes());
    }
    if status == 204 {
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for part in payload.as_bytes().chunks(7) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    } else {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload.as_bytes());
    }
}
