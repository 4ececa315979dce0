//! Test support (feature `testing`): the shared Redis and Memcached servers, and private
//! server processes on spare loopback ports that a test may kill and restart.
//!
//! As with the databases (`strata_store::testing`), an unreachable server skips the test
//! with a visible line unless `STRATA_REQUIRE_BACKENDS` names it (`redis`, `memcached`,
//! and for the private deployments `redis-tls`, `redis-sentinel`, `redis-cluster`), in
//! which case the test fails. Only 127.0.0.1 is ever used.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_MEMCACHE_URL: &str = "memcache://127.0.0.1:11211";

fn unusable<T>(what: &str, backend: &str, why: String) -> Option<T> {
    strata_core::testing::unusable(what, backend, &why);
    None
}

/// Sends `probe` and expects a reply starting with `expect`, within two seconds.
fn answers(addr: &str, probe: &[u8], expect: &[u8]) -> Result<(), String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    s.write_all(probe).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
    if buf[..n].starts_with(expect) { Ok(()) } else { Err(format!("{addr}: unexpected answer")) }
}

/// The shared Redis (`STRATA_TEST_REDIS_URL`), if it answers `PING`.
pub fn shared_redis(what: &str) -> Option<String> {
    let url = std::env::var("STRATA_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into());
    let addr = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    match answers(&addr, b"PING\r\n", b"+PONG") {
        Ok(()) => Some(url),
        Err(why) => unusable(what, "redis", why),
    }
}

/// The shared Memcached (`STRATA_TEST_MEMCACHE_URL`), if it answers `version`.
pub fn shared_memcached(what: &str) -> Option<String> {
    let url = std::env::var("STRATA_TEST_MEMCACHE_URL").unwrap_or_else(|_| DEFAULT_MEMCACHE_URL.into());
    let addr = url.trim_start_matches("memcache://").to_owned();
    match answers(&addr, b"version\r\n", b"VERSION") {
        Ok(()) => Some(url),
        Err(why) => unusable(what, "memcached", why),
    }
}

/// A port nobody listens on right now (the OS picks it).
pub fn spare_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a spare port")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Memcached,
}

/// A private `redis-server` or `memcached` on a spare loopback port, killed on drop.
pub struct ServerProcess {
    kind: Kind,
    port: u16,
    replica_of: Option<u16>,
    /// More `redis-server` arguments (ACL users, TLS, cluster mode…).
    extra: Vec<String>,
    /// A config file to start from (Sentinel needs one it can rewrite).
    config: Option<std::path::PathBuf>,
    /// Ready when the port accepts connections rather than when it answers `PING` in
    /// clear text (TLS only).
    ready_on_accept: bool,
    child: Option<Child>,
}

impl ServerProcess {
    /// A Redis without persistence; with `replica_of`, a replica of that port.
    pub fn redis(what: &str, replica_of: Option<u16>) -> Option<ServerProcess> {
        Self::start(what, "redis", Kind::Redis, replica_of, Vec::new(), None, false)
    }

    pub fn memcached(what: &str) -> Option<ServerProcess> {
        Self::start(what, "memcached", Kind::Memcached, None, Vec::new(), None, false)
    }

    /// A Redis whose only usable account is the ACL user `user` with `password` (the
    /// default user is disabled). Each ACL rule is its own argument, so neither may
    /// contain a space.
    pub fn redis_acl(what: &str, user: &str, password: &str) -> Option<ServerProcess> {
        let extra = ["--user", "default", "off", "--user", user, "on", &format!(">{password}"), "~*", "&*", "+@all"];
        let extra = extra.iter().map(|a| a.to_string()).collect();
        Self::start(what, "redis", Kind::Redis, None, extra, None, false)
    }

    /// A Redis that speaks only TLS, with the certificate and key of `tls` (the
    /// backend name to require is `redis-tls`).
    pub fn redis_tls(what: &str, tls: &TestCa) -> Option<ServerProcess> {
        let path = |p: &std::path::Path| p.display().to_string();
        let port = spare_port();
        let extra = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&tls.cert),
            "--tls-key-file".into(),
            path(&tls.key),
            "--tls-ca-cert-file".into(),
            path(&tls.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut server = ServerProcess {
            kind: Kind::Redis,
            port,
            replica_of: None,
            extra,
            config: None,
            ready_on_accept: true,
            child: None,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(why) => unusable(what, "redis-tls", why),
        }
    }

    /// A Sentinel watching `master` (on `master_port`) as `mymaster`, quorum 1, which
    /// declares a master down after 1 s. The backend name to require is `redis-sentinel`.
    pub fn sentinel(what: &str, master_port: u16) -> Option<ServerProcess> {
        let port = spare_port();
        let config = scratch_dir(port).join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n"
        );
        if let Err(e) = std::fs::write(&config, text) {
            return unusable(what, "redis-sentinel", format!("{}: {e}", config.display()));
        }
        let mut server = ServerProcess {
            kind: Kind::Redis,
            port,
            replica_of: None,
            extra: vec!["--sentinel".into()],
            config: Some(config),
            ready_on_accept: false,
            child: None,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(why) => unusable(what, "redis-sentinel", why),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        what: &str,
        backend: &str,
        kind: Kind,
        replica_of: Option<u16>,
        extra: Vec<String>,
        config: Option<std::path::PathBuf>,
        ready_on_accept: bool,
    ) -> Option<ServerProcess> {
        let mut server =
            ServerProcess { kind, port: spare_port(), replica_of, extra, config, ready_on_accept, child: None };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(why) => unusable(what, backend, why),
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut command = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                if let Some(config) = &self.config {
                    c.arg(config);
                }
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
                c.args(["--dir", &scratch_dir(self.port).display().to_string()]);
                if let Some(primary) = self.replica_of {
                    c.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
                }
                // Later arguments win, so TLS's `--port 0` overrides the one above.
                c.args(&self.extra);
                c
            }
            Kind::Memcached => {
                let mut c = Command::new("memcached");
                c.args(["-l", "127.0.0.1", "-p", &port, "-U", "0", "-m", "64"]);
                // memcached refuses to run as root unless told which user to be.
                if std::env::var("USER").map(|u| u == "root").unwrap_or(false) || is_root() {
                    c.args(["-u", "root"]);
                }
                c
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", self.kind))?;
        self.child = Some(child);
        // Ready when it answers (bounded: 100 × 50 ms).
        let (probe, expect): (&[u8], &[u8]) = match self.kind {
            Kind::Redis if self.extra.iter().any(|a| a == "--user") => (b"PING\r\n", b"-NOAUTH"),
            Kind::Redis => (b"PING\r\n", b"+PONG"),
            Kind::Memcached => (b"version\r\n", b"VERSION"),
        };
        for _ in 0..100 {
            let ready = if self.ready_on_accept {
                TcpStream::connect(self.addr()).is_ok()
            } else {
                answers(&self.addr(), probe, expect).is_ok()
            };
            if ready {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("{:?} on port {} exited at once ({status})", self.kind, self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!("{:?} on port {} did not come up", self.kind, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, like a crash: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: there is no persistence).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// For a Redis replica: waits (bounded) until it has synced with its primary.
    pub fn wait_replica_synced(&self) -> Result<(), String> {
        for _ in 0..200 {
            if answers(&self.addr(), b"ROLE\r\n", b"*").is_ok() && replica_connected(&self.addr()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("replica did not sync".into())
    }

    /// One command in clear text, its whole reply as text (for `ROLE`, `INFO`, `SENTINEL …`).
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        command(&self.addr(), args)
    }
}

/// A directory of this test process for one server's files (Sentinel and cluster
/// configs); never shared between ports.
fn scratch_dir(port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-redis-{}-{port}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// One RESP command over a plain TCP connection; the reply's raw text (bounded: 64 KiB,
/// two seconds).
pub fn command(addr: &str, args: &[&str]) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One binary-safe RESP command as anyone who can reach the server could send it; the
/// reply's bulk string (`None` for nil or any other reply type).
pub fn raw_command(addr: &str, args: &[&[u8]]) -> Result<Option<Vec<u8>>, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 {
            return Err(format!("{addr}: closed mid-reply"));
        }
        reply.extend_from_slice(&buf[..n]);
        let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") else { continue };
        if reply[0] != b'$' {
            return Ok(None);
        }
        let len: i64 = String::from_utf8_lossy(&reply[1..eol]).parse().map_err(|_| "bad bulk length".to_owned())?;
        if len < 0 {
            return Ok(None);
        }
        let end = eol + 2 + len as usize;
        if reply.len() >= end + 2 {
            return Ok(Some(reply[eol + 2..end].to_vec()));
        }
    }
}

/// A private CA and a server certificate for 127.0.0.1 / localhost, made with the openssl
/// CLI in a scratch directory.
pub struct TestCa {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCa {
    pub fn make(what: &str) -> Option<TestCa> {
        let dir = scratch_dir(spare_port()).join("tls");
        let _ = std::fs::create_dir_all(&dir);
        let p = |name: &str| dir.join(name).display().to_string();
        let ext = dir.join("ext.cnf");
        let steps: Vec<Vec<String>> = vec![
            vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Strata test CA"]
                .into_iter()
                .map(String::from)
                .chain(["-keyout".into(), p("ca.key"), "-out".into(), p("ca.pem")])
                .collect(),
            vec!["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
                .into_iter()
                .map(String::from)
                .chain(["-keyout".into(), p("server.key"), "-out".into(), p("server.csr")])
                .collect(),
            vec!["x509", "-req", "-days", "2", "-CAcreateserial"]
                .into_iter()
                .map(String::from)
                .chain([
                    "-in".into(),
                    p("server.csr"),
                    "-CA".into(),
                    p("ca.pem"),
                    "-CAkey".into(),
                    p("ca.key"),
                    "-out".into(),
                    p("server.pem"),
                    "-extfile".into(),
                    ext.display().to_string(),
                ])
                .collect(),
        ];
        if let Err(e) = std::fs::write(&ext, "subjectAltName = IP:127.0.0.1, DNS:localhost\n") {
            return unusable(what, "redis-tls", e.to_string());
        }
        for step in steps {
            let out = Command::new("openssl").args(&step).stdout(Stdio::null()).stderr(Stdio::piped()).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => return unusable(what, "redis-tls", String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => return unusable(what, "redis-tls", format!("openssl: {e}")),
            }
        }
        Some(TestCa { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") })
    }
}

/// Three masters with a replica each, `cluster-node-timeout` 1 s, made with `redis-cli
/// --cluster create`. The backend name to require is `redis-cluster`.
pub struct RedisCluster {
    pub nodes: Vec<ServerProcess>,
}

impl RedisCluster {
    pub fn start(what: &str) -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            // The bus port is its own spare port: the default (port + 10000) may be taken,
            // or beyond 65535.
            let bus = spare_port().to_string();
            let extra =
                ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-config-file", "nodes.conf"];
            let mut extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
            extra.extend(["--cluster-port".to_owned(), bus]);
            // Replicas sync at once (the default waits 5 s for more replicas to share one
            // transfer); the start waits for every replica's link anyway.
            extra.extend(["--repl-diskless-sync-delay".to_owned(), "0".to_owned()]);
            nodes.push(ServerProcess::start(what, "redis-cluster", Kind::Redis, None, extra, None, false)?);
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        create.args(nodes.iter().map(|n| n.addr()));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        match create.stdout(Stdio::null()).stderr(Stdio::piped()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return unusable(what, "redis-cluster", String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => return unusable(what, "redis-cluster", format!("redis-cli: {e}")),
        }
        let cluster = RedisCluster { nodes };
        // Every node agrees the cluster is up and has every slot, and every replica has
        // synced (a replica that never synced refuses to take over). Bounded: 400 × 50 ms.
        for _ in 0..400 {
            let up = cluster.nodes.iter().all(|n| {
                n.command(&["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
                    && n.command(&["INFO", "replication"])
                        .is_ok_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
            });
            if up {
                return Some(cluster);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unusable(what, "redis-cluster", "the cluster did not reach cluster_state:ok".into())
    }

    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The nodes that are masters now, by their `ROLE`.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].command(&["ROLE"]).is_ok_and(|r| r.contains("master")))
            .collect()
    }
}

fn replica_connected(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"INFO replication\r\n").is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains("master_link_status:up")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
