//! The gateway in front of real api processes (the `strata` binary, `--role api`, one
//! shared SQLite file, no cache so that no instance can answer from memory what another
//! changed): failures cost no idempotent request, and any instance serves any session.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

/// One `strata serve --role api` process; killed (SIGKILL) when dropped.
struct ApiProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl ApiProcess {
    fn start(db: &std::path::Path) -> ApiProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--role", "api", "--listen", "127.0.0.1:0"])
            .env("STRATA_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("STRATA_CACHE_URL", "none://")
            .env("STRATA_LOG_LEVEL", "error")
            .env("STRATA_ADMIN_TOKEN", ADMIN)
            .env("STRATA_PASSWORD_MEMORY_KIB", "4096")
            .env("STRATA_PASSWORD_ITERATIONS", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.split("http://").nth(1).and_then(|s| s.split(' ').next()).unwrap_or_default();
        let addr = addr.parse().unwrap_or_else(|_| panic!("no address in {line:?}"));
        ApiProcess { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

struct TestGateway {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn gateway(upstreams: &[SocketAddr], algorithm: &str) -> TestGateway {
    let list: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
    let mut options = strata_gateway::GatewayOptions::new(&format!("static://{}", list.join(","))).unwrap();
    options.algorithm = algorithm.parse().unwrap();
    options.check_interval = Duration::from_millis(200);
    options.admin_token = Some(strata_core::secret::Secret::new(ADMIN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gw = strata_gateway::Gateway::new(options);
    let limits = Config::default().server_limits();
    tokio::spawn(strata_gateway::run(
        gw,
        listener,
        limits,
        Arc::new(strata_api::Metrics::new()),
        Duration::ZERO,
        Duration::from_secs(5),
        async move {
            let _ = stopped.await;
        },
    ));
    TestGateway { addr, stop: Some(stop) }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn call(
    c: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    match c.request(req.body(Full::new(body)).unwrap()).await {
        Ok(res) => {
            let status = res.status();
            let raw = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
        }
        Err(_) => (StatusCode::from_u16(599).unwrap(), Value::Null),
    }
}

/// Registers a user and logs in through `addr`; returns the session token.
async fn user_token(c: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr, email: &str) -> String {
    let (status, _) = call(
        c,
        addr,
        Method::POST,
        "/v1/users",
        None,
        Some(json!({"email": email, "password": PASSWORD, "name": "G"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) =
        call(c, addr, Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": PASSWORD}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn wait_ready(c: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr, path: &str) {
    for _ in 0..100 {
        if call(c, addr, Method::GET, path, None, None).await.0 == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}{path} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_costs_no_idempotent_request() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("cluster.db");
    let mut apis: Vec<ApiProcess> = (0..3).map(|_| ApiProcess::start(&db)).collect();
    let c = client();
    for a in &apis {
        wait_ready(&c, a.addr, "/readyz").await;
    }
    let gw = gateway(&apis.iter().map(|a| a.addr).collect::<Vec<_>>(), "least-conn").await;
    wait_ready(&c, gw.addr, "/gateway/readyz").await;
    let token = user_token(&c, gw.addr, "load@example.com").await;

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, token, done, failures, addr) = (c.clone(), token.clone(), done.clone(), failures.clone(), gw.addr);
            tokio::spawn(async move {
                for i in 0..150 {
                    // Session checks and health, both idempotent.
                    let (path, auth) = if (w + i) % 2 == 0 {
                        ("/v1/sessions/current", Some(token.as_str()))
                    } else {
                        ("/healthz", None)
                    };
                    let (status, body) = call(&c, addr, Method::GET, path, auth, None).await;
                    if status != StatusCode::OK {
                        failures.lock().push(format!("{path}: {status} {body}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Kill one instance a third of the way through.
    while done.load(Ordering::Relaxed) < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = apis[1].addr;
    apis[1].kill();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 1200);
    let failures = failures.lock().clone();
    assert!(failures.is_empty(), "{} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);

    // The gateway saw it go and says so.
    let (status, view) = call(&c, gw.addr, Method::GET, "/gateway/upstreams", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    let dead =
        view["upstreams"].as_array().unwrap().iter().find(|u| u["authority"] == killed.to_string()).unwrap().clone();
    assert!(dead["state"] == "down" || dead["state"] == "ejected", "{dead}");
    assert!(dead["errors"].as_u64().unwrap() > 0, "{dead}");
    let (status, _) = call(&c, gw.addr, Method::GET, "/gateway/upstreams", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the upstream list is for admins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_serves_any_session() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("stateless.db");
    let apis: Vec<ApiProcess> = (0..3).map(|_| ApiProcess::start(&db)).collect();
    let c = client();
    for a in &apis {
        wait_ready(&c, a.addr, "/readyz").await;
    }
    let (a, b, cc) = (apis[0].addr, apis[1].addr, apis[2].addr);
    let token = user_token(&c, a, "roams@example.com").await;
    let (status, me) = call(&c, b, Method::GET, "/v1/sessions/current", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["email"], "roams@example.com", "{me}");
    let (status, _) = call(&c, cc, Method::DELETE, "/v1/sessions/current", Some(&token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&c, a, Method::GET, "/v1/sessions/current", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logged out on C, dead on A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_keeps_a_token_on_one_instance_and_non_idempotent_writes_are_not_retried() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("hash.db");
    let apis: Vec<ApiProcess> = (0..3).map(|_| ApiProcess::start(&db)).collect();
    let c = client();
    for a in &apis {
        wait_ready(&c, a.addr, "/readyz").await;
    }
    let gw = gateway(&apis.iter().map(|a| a.addr).collect::<Vec<_>>(), "hash").await;
    wait_ready(&c, gw.addr, "/gateway/readyz").await;
    let token = user_token(&c, gw.addr, "sticky@example.com").await;
    let requests = |view: &Value| -> Vec<u64> {
        view["upstreams"].as_array().unwrap().iter().map(|u| u["requests"].as_u64().unwrap()).collect()
    };
    let before = requests(&call(&c, gw.addr, Method::GET, "/gateway/upstreams", Some(ADMIN), None).await.1);
    for _ in 0..30 {
        assert_eq!(call(&c, gw.addr, Method::GET, "/v1/sessions/current", Some(&token), None).await.0, StatusCode::OK);
    }
    let after = requests(&call(&c, gw.addr, Method::GET, "/gateway/upstreams", Some(ADMIN), None).await.1);
    let grew: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // The admin token hashes too: one instance took the 30, at most one other the lookup.
    assert!(grew.iter().any(|&n| n >= 30), "{grew:?}");

    // A bad body is the api's 4xx, passed through as is.
    let (status, body) = call(&c, gw.addr, Method::POST, "/v1/users", None, Some(json!({"email": "nope"}))).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(body["status"], status.as_u16());
}

/// `strata cluster`: one command brings up a gateway and api instances that answer, and one
/// SIGTERM takes every process down.
#[test]
fn cluster_command_starts_and_stops_everything() {
    let dir = strata_store::testing::TempDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["cluster", "--api", "2", "--worker", "1", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path.join("data"))
        .env("STRATA_LOG_LEVEL", "warn")
        .env("STRATA_PASSWORD_MEMORY_KIB", "4096")
        .env("STRATA_PASSWORD_ITERATIONS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child = KillOnDrop(child);
    let (mut gateway, mut pids) = (String::new(), Vec::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [name, url, "pid", pid] = fields[..] {
            pids.push(pid.parse::<u32>().unwrap());
            if name == "gateway" {
                gateway = url.trim_start_matches("http://").to_owned();
            }
        }
        if line.starts_with("try: curl") {
            break;
        }
    }
    assert_eq!(pids.len(), 4, "gateway, two api instances and a worker");
    let mut answered = String::new();
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(&gateway).unwrap();
        std::io::Write::write_all(&mut s, b"GET /v1/users HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        answered.clear();
        std::io::Read::read_to_string(&mut s, &mut answered).unwrap();
        // Through the gateway to an api instance: its 401 problem, not the gateway's 502.
        if answered.starts_with("HTTP/1.1 401") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered.starts_with("HTTP/1.1 401") && answered.contains("application/problem+json"), "{answered}");
    let term = std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert!(child.0.wait().unwrap().success());
    for pid in pids {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
        assert!(!alive, "member {pid} outlived the cluster");
    }
}
