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
pub(super) struct ApiProcess {
    child: std::process::Child,
    pub(super) addr: SocketAddr,
}

impl ApiProcess {
    fn start(db: &std::path::Path) -> ApiProcess {
        ApiProcess::spawn(db, "127.0.0.1:0", &[])
    }

    fn spawn(db: &std::path::Path, listen: &str, env: &[(&str, &str)]) -> ApiProcess {
        ApiProcess::spawn_with(std::process::Command::new(env!("CARGO_BIN_EXE_strata")), db, listen, env)
    }

    /// `command` is the binary itself or a wrapper that execs it (`ip netns exec NS …`).
    fn spawn_with(
        command: std::process::Command,
        db: &std::path::Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> ApiProcess {
        ApiProcess::on_database(command, &format!("sqlite://{}", db.display()), listen, env)
    }

    pub(super) fn on_database(
        mut command: std::process::Command,
        database_url: &str,
        listen: &str,
        env: &[(&str, &str)],
    ) -> ApiProcess {
        let mut child = command
            .args(["serve", "--role", "api", "--listen", listen])
            .envs(env.iter().copied())
            .env("STRATA_DATABASE_URL", database_url)
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

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful path (readiness false, deregistration, drain).
    fn terminate(&mut self) {
        let term = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(term.is_ok_and(|s| s.success()));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

/// A server process of the test's own (etcd, dnsmasq); killed when dropped.
struct Private(std::process::Child);

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `program` and waits (bounded) until `ready` says yes; `None` with a visible
/// skip (a failure in CI) when it cannot.
fn private_server(
    what: &str,
    backend: &str,
    program: &str,
    args: &[String],
    ready: impl Fn() -> bool,
) -> Option<Private> {
    let child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => Private(c),
        Err(e) => {
            strata_core::testing::unusable(what, backend, &format!("cannot start {program}: {e}"));
            return None;
        }
    };
    for _ in 0..100 {
        if ready() {
            return Some(child);
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            strata_core::testing::unusable(what, backend, &format!("{program} exited: {status}"));
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    strata_core::testing::unusable(what, backend, &format!("{program} did not become ready in 10 s"));
    None
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
    gateway_with(&format!("static://{}", list.join(",")), algorithm, |_| {}).await
}

async fn gateway_with(
    discovery: &str,
    algorithm: &str,
    tune: impl FnOnce(&mut strata_gateway::GatewayOptions),
) -> TestGateway {
    let mut options = strata_gateway::GatewayOptions::new(discovery).unwrap();
    options.algorithm = algorithm.parse().unwrap();
    options.check_interval = Duration::from_millis(200);
    options.discovery_interval = Duration::from_millis(300);
    tune(&mut options);
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

type Listed = Vec<(String, String, u64)>;

/// What `/gateway/upstreams` lists: (authority, state, requests) each.
async fn listed(c: &Client<HttpConnector, Full<Bytes>>, gw: SocketAddr) -> Listed {
    let (status, view) = call(c, gw, Method::GET, "/gateway/upstreams", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let field = |k: &str| u[k].as_str().unwrap_or_default().to_owned();
            (field("authority"), field("state"), u["requests"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// Polls the gateway's list (bounded: 15 s) until `check` holds.
async fn until_listed(
    c: &Client<HttpConnector, Full<Bytes>>,
    gw: SocketAddr,
    what: &str,
    check: impl Fn(&Listed) -> bool,
) -> Listed {
    let mut last = Vec::new();
    for _ in 0..150 {
        last = listed(c, gw).await;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 15 s; the gateway lists {last:?}");
}

fn requests_to(list: &Listed, addr: SocketAddr) -> u64 {
    list.iter().find(|u| u.0 == addr.to_string()).map_or(0, |u| u.2)
}

/// `n` session checks through the gateway, every one answered 200.
async fn checks(c: &Client<HttpConnector, Full<Bytes>>, gw: SocketAddr, token: &str, n: usize) {
    for i in 0..n {
        let (status, body) = call(c, gw, Method::GET, "/v1/sessions/current", Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "check {i}: {body}");
    }
}

/// Api instances given `STRATA_REGISTER` appear in a gateway that follows the same
/// registry and take traffic; one that shuts down deregisters and takes none; one killed
/// without a word drops out when its TTL runs out.
/// `poll`: the gateway's listing interval. With a minute, every change the test waits for
/// must arrive through the registry watch.
async fn follows_the_registry(registry: &str, poll: Duration) {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("registry.db");
    let env = [("STRATA_REGISTER", registry), ("STRATA_REGISTER_TTL_SECS", "2")];
    let c = client();
    let gw = gateway_with(registry, "round-robin", |o| {
        o.registry_ttl = Duration::from_secs(2);
        o.discovery_interval = poll;
    })
    .await;
    let mut a = ApiProcess::spawn(&db, "127.0.0.1:0", &env);
    until_listed(&c, gw.addr, "the first instance registers", |l| l.len() == 1 && l[0].0 == a.addr.to_string()).await;
    wait_ready(&c, gw.addr, "/gateway/readyz").await;
    let token = user_token(&c, gw.addr, "registered@example.com").await;

    let mut b = ApiProcess::spawn(&db, "127.0.0.1:0", &env);
    until_listed(&c, gw.addr, "a second instance registers", |l| l.iter().any(|u| u.0 == b.addr.to_string())).await;
    let before = listed(&c, gw.addr).await;
    checks(&c, gw.addr, &token, 40).await;
    let after = listed(&c, gw.addr).await;
    let to_b = requests_to(&after, b.addr) - requests_to(&before, b.addr);
    assert!(to_b >= 10, "the newcomer took {to_b} of 40 requests: {after:?}");

    b.terminate();
    until_listed(&c, gw.addr, "the stopped instance deregisters", |l| l.iter().all(|u| u.0 != b.addr.to_string()))
        .await;
    let before = listed(&c, gw.addr).await;
    checks(&c, gw.addr, &token, 20).await;
    let after = listed(&c, gw.addr).await;
    assert_eq!(requests_to(&after, a.addr) - requests_to(&before, a.addr), 20, "{after:?}");

    // SIGKILL: no deregistration; the TTL (2 s) takes it out.
    a.kill();
    until_listed(&c, gw.addr, "a killed instance's entry expires", |l| l.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_nats_kv_registry() {
    let Some(nats) = super::events::PrivateNats::start("gateway nats-kv registry") else { return };
    // NATS drops an entry past its max_age without an event, so the expiry at the end is
    // found by listing: poll often.
    follows_the_registry(&format!("nats-kv://127.0.0.1:{}/strata_api", nats.port), Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_an_etcd_registry() {
    let dir = strata_store::testing::TempDir::new();
    let (client_port, peer_port) = (spare_port(), spare_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let args: Vec<String> = [
        "--name",
        "strata-test",
        "--data-dir",
        &dir.path.join("etcd").display().to_string(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("strata-test={peer_url}"),
    ]
    .map(str::to_owned)
    .to_vec();
    let health = move || {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", client_port)) else { return false };
        let _ = std::io::Write::write_all(&mut s, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut answer);
        answer.contains("\"health\":\"true\"")
    };
    let Some(_etcd) = private_server("gateway etcd registry", "etcd", "etcd", &args, health) else { return };
    // etcd reports puts, deletes and lease expiries alike: the watch alone must do.
    follows_the_registry(&format!("etcd://127.0.0.1:{client_port}/strata/api"), Duration::from_secs(60)).await;
}

/// `dns+srv://` against a real DNS server (dnsmasq on a spare port): the records of the
/// best priority, with their ports and weights; the backup priority is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_discovers_srv_records() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("srv.db");
    let apis: Vec<ApiProcess> = (0..3).map(|_| ApiProcess::start(&db)).collect();
    let port = spare_port();
    let srv = |host: &str, api: &ApiProcess, priority: u16, weight: u16| {
        format!("--srv-host=_strata._tcp.cluster.test,{host}.cluster.test,{},{priority},{weight}", api.addr.port())
    };
    let args = vec![
        "--keep-in-foreground".to_owned(),
        "--conf-file=/dev/null".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        "--bind-interfaces".to_owned(),
        "--listen-address=127.0.0.1".to_owned(),
        format!("--port={port}"),
        "--pid-file=".to_owned(),
        "--host-record=a.cluster.test,127.0.0.1".to_owned(),
        "--host-record=b.cluster.test,127.0.0.1".to_owned(),
        "--host-record=backup.cluster.test,127.0.0.1".to_owned(),
        srv("a", &apis[0], 1, 3),
        srv("b", &apis[1], 1, 1),
        srv("backup", &apis[2], 10, 1),
    ];
    let answers = move || {
        std::process::Command::new("true").status().is_ok()
            && std::net::UdpSocket::bind("127.0.0.1:0").is_ok_and(|s| {
                // Any well-formed answer means the server is up: a query for the SRV name.
                let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07_strata\x04_tcp\x07cluster\x04test\x00\x00\x21\x00\x01";
                s.set_read_timeout(Some(Duration::from_millis(200))).is_ok()
                    && s.send_to(query, ("127.0.0.1", port)).is_ok()
                    && s.recv(&mut [0u8; 512]).is_ok()
            })
    };
    let Some(_dns) = private_server("gateway dns+srv discovery", "dnsmasq", "dnsmasq", &args, answers) else {
        return;
    };
    let c = client();
    let dns: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gw = gateway_with("dns+srv://_strata._tcp.cluster.test", "weighted", |o| o.dns_servers = vec![dns]).await;
    let list = until_listed(&c, gw.addr, "SRV discovery", |l| l.len() == 2).await;
    let mut authorities: Vec<&str> = list.iter().map(|u| u.0.as_str()).collect();
    authorities.sort();
    let mut expected = vec![apis[0].addr.to_string(), apis[1].addr.to_string()];
    expected.sort();
    assert_eq!(authorities, expected, "priority 1 only, not the backup");
    let (_, view) = call(&c, gw.addr, Method::GET, "/gateway/upstreams", Some(ADMIN), None).await;
    let weight = |a: SocketAddr| {
        view["upstreams"].as_array().unwrap().iter().find(|u| u["authority"] == a.to_string()).unwrap()["weight"]
            .clone()
    };
    assert_eq!((weight(apis[0].addr), weight(apis[1].addr)), (json!(3), json!(1)), "{view}");
    wait_ready(&c, gw.addr, "/gateway/readyz").await;
    assert_eq!(call(&c, gw.addr, Method::GET, "/healthz", None, None).await.0, StatusCode::OK);
}

/// A TCP relay to `upstream` that holds every chunk of the answer for `delay`: an instance
/// that has become slow, as the gateway sees it. Lives as long as the test's runtime.
async fn slow_relay(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else { return };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_upstream, mut to_upstream) = outbound.into_split();
                let requests = tokio::io::copy(&mut from_client, &mut to_upstream);
                let answers = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_upstream.read(&mut buf).await {
                        tokio::time::sleep(delay).await;
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = requests => {}
                    _ = answers => {}
                }
            });
        }
    });
    addr
}

/// Runs `workers` loops of idempotent requests (health and session checks) through `gw`
/// until `stop` is set (bounded: 20 000 requests each); returns how many were made and
/// every failure.
fn load(
    c: &Client<HttpConnector, Full<Bytes>>,
    gw: SocketAddr,
    token: &str,
    workers: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (c, token, stop) = (c.clone(), token.to_owned(), stop.clone());
            tokio::spawn(async move {
                let (mut done, mut failures) = (0, Vec::new());
                for i in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (path, auth) = if (w + i) % 2 == 0 {
                        ("/v1/sessions/current", Some(token.as_str()))
                    } else {
                        ("/healthz", None)
                    };
                    let (status, body) = call(&c, gw, Method::GET, path, auth, None).await;
                    if status != StatusCode::OK {
                        failures.push(format!("{path}: {status} {body}"));
                    }
                    done += 1;
                }
                (done, failures)
            })
        })
        .collect();
    tokio::spawn(async move {
        let (mut done, mut failures) = (0, Vec::new());
        for h in handles {
            let (d, f) = h.await.unwrap();
            done += d;
            failures.extend(f);
        }
        (done, failures)
    })
}

/// One instance answers 40 ms late: the latency-aware algorithms send it far less than its
/// third within seconds, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_loses_its_traffic() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("slow.db");
    let apis: Vec<ApiProcess> = (0..3).map(|_| ApiProcess::start(&db)).collect();
    let c = client();
    for a in &apis {
        wait_ready(&c, a.addr, "/readyz").await;
    }
    let slow = slow_relay(apis[2].addr, Duration::from_millis(40)).await;
    let token = user_token(&c, apis[0].addr, "slow@example.com").await;
    for algorithm in ["p2c-ewma", "least-conn"] {
        let gw = gateway(&[apis[0].addr, apis[1].addr, slow], algorithm).await;
        wait_ready(&c, gw.addr, "/gateway/readyz").await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = load(&c, gw.addr, &token, 8, &stop);
        // A second to notice, then a two-second window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = listed(&c, gw.addr).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = listed(&c, gw.addr).await;
        stop.store(true, Ordering::Relaxed);
        let (done, failures) = running.await.unwrap();
        assert!(failures.is_empty(), "{algorithm}: {} of {done} failed: {:?}", failures.len(), &failures[..1]);
        let grew = |a: SocketAddr| requests_to(&after, a) - requests_to(&before, a);
        let (fast, slowed) = (grew(apis[0].addr) + grew(apis[1].addr), grew(slow));
        let share = slowed as f64 / (fast + slowed).max(1) as f64;
        assert!(fast > 100, "{algorithm}: too little load to judge ({fast} fast requests)");
        assert!(share < 0.15, "{algorithm}: the slow instance took {slowed} of {} ({share:.2})", fast + slowed);
    }
}

/// Every api instance restarted in turn (SIGTERM, drain, a new process on the same port)
/// under load through the gateway: not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("rolling.db");
    // Readiness goes false for longer than the gateway takes to notice (2 checks × 200 ms).
    let env = [("STRATA_HTTP_DRAIN_DELAY_MS", "700")];
    let listens: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", spare_port())).collect();
    let mut apis: Vec<ApiProcess> = listens.iter().map(|l| ApiProcess::spawn(&db, l, &env)).collect();
    let c = client();
    for a in &apis {
        wait_ready(&c, a.addr, "/readyz").await;
    }
    let gw = gateway(&apis.iter().map(|a| a.addr).collect::<Vec<_>>(), "round-robin").await;
    wait_ready(&c, gw.addr, "/gateway/readyz").await;
    let token = user_token(&c, gw.addr, "rolling@example.com").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(&c, gw.addr, &token, 6, &stop);
    for (i, listen) in listens.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        apis[i].terminate();
        apis[i] = ApiProcess::spawn(&db, listen, &env);
        let addr = apis[i].addr.to_string();
        until_listed(&c, gw.addr, "the restarted instance is back", |l| {
            l.iter().any(|u| u.0 == addr && (u.1 == "up" || u.1 == "slow-start"))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (done, failures) = running.await.unwrap();
    assert!(done > 300, "too little load to judge: {done}");
    assert!(failures.is_empty(), "{} of {done} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
}

/// Network namespaces of the test's own, each joined to this one by a veth pair on a
/// private /30; deleted (with their links) when dropped.
struct Namespaces {
    names: Vec<String>,
    /// The namespace-side end of each link.
    links: Vec<String>,
}

/// Every namespace's address is in here. While the test runs, this range is a blackhole in
/// the host's routing table: without it, a packet whose link is gone would take the
/// default route, and this sandbox's egress proxy answers HTTP for any address (a 403 or
/// 404 with an empty body), which is not what a cut link does.
const NAMESPACE_RANGE: &str = "10.231.0.0/16";

impl Namespaces {
    /// `n` namespaces; namespace `k` is 10.231.k.2 behind a veth whose host end is 10.231.k.1.
    fn create(what: &str, n: usize) -> Option<Namespaces> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        let tag = std::process::id() % 100_000;
        if let Err(e) = run(&["route", "replace", "blackhole", NAMESPACE_RANGE]) {
            strata_core::testing::unusable(what, "netns", &e);
            return None;
        }
        let mut spaces = Namespaces { names: Vec::new(), links: Vec::new() };
        for k in 0..n {
            let (ns, host, inner) = (format!("strata-{tag}-{k}"), format!("sg{tag}h{k}"), format!("sg{tag}n{k}"));
            let made = run(&["netns", "add", &ns])
                .and_then(|()| {
                    spaces.names.push(ns.clone());
                    run(&["link", "add", &host, "type", "veth", "peer", "name", &inner])
                })
                .and_then(|()| run(&["link", "set", &inner, "netns", &ns]))
                .and_then(|()| run(&["addr", "add", &format!("10.231.{k}.1/30"), "dev", &host]))
                .and_then(|()| run(&["link", "set", &host, "up"]))
                .and_then(|()| run(&["-n", &ns, "addr", "add", &format!("10.231.{k}.2/30"), "dev", &inner]))
                .and_then(|()| run(&["-n", &ns, "link", "set", &inner, "up"]))
                .and_then(|()| run(&["-n", &ns, "link", "set", "lo", "up"]));
            if let Err(e) = made {
                strata_core::testing::unusable(what, "netns", &e);
                return None;
            }
            spaces.links.push(inner);
        }
        Some(spaces)
    }

    fn exec(&self, k: usize) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.names[k], env!("CARGO_BIN_EXE_strata")]);
        command
    }

    /// The link goes down at the namespace's end: packets to and from namespace `k` vanish,
    /// no RST, no FIN. (The host's end keeps its route, now without carrier.)
    fn cut(&self, k: usize) {
        let status = std::process::Command::new("ip")
            .args(["-n", &self.names[k], "link", "set", &self.links[k], "down"])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "cannot cut {}", self.links[k]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::process::Command::new("ip").args(["route", "del", "blackhole", NAMESPACE_RANGE]).status();
    }
}

/// A network failure, not a process death: three api instances in namespaces of their own,
/// the link to one cut under load. Requests in flight on it time out and are retried
/// elsewhere; not one idempotent request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_costs_no_idempotent_request() {
    let Some(spaces) = Namespaces::create("gateway link cut", 3) else { return };
    let dir = strata_store::testing::TempDir::new();
    let db = dir.path.join("netns.db");
    let apis: Vec<ApiProcess> =
        (0..3).map(|k| ApiProcess::spawn_with(spaces.exec(k), &db, &format!("10.231.{k}.2:8080"), &[])).collect();
    let c = client();
    for a in &apis {
        wait_ready(&c, a.addr, "/readyz").await;
    }
    let gw = gateway_with(
        &format!("static://{}", apis.iter().map(|a| a.addr.to_string()).collect::<Vec<_>>().join(",")),
        "least-conn",
        |o| {
            // A silent peer is found out by the per-try timeout, not a connection error.
            o.try_timeout = Duration::from_millis(500);
            o.connect_timeout = Duration::from_millis(300);
        },
    )
    .await;
    wait_ready(&c, gw.addr, "/gateway/readyz").await;
    let token = user_token(&c, gw.addr, "netns@example.com").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(&c, gw.addr, &token, 6, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    spaces.cut(1);
    let cut = apis[1].addr.to_string();
    until_listed(&c, gw.addr, "the cut instance is taken out", |l| {
        l.iter().any(|u| u.0 == cut && (u.1 == "down" || u.1 == "ejected"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (done, failures) = running.await.unwrap();
    assert!(done > 300, "too little load to judge: {done}");
    assert!(failures.is_empty(), "{} of {done} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
}
