//! Test support (feature `testing`): the shared Redis and Memcached servers, and private
//! server processes on spare loopback ports that a test may kill and restart.
//!
//! As with the databases (`strata_store::testing`), an unreachable server skips the test
//! with a visible line unless `STRATA_REQUIRE_BACKENDS` names it (`redis`, `memcached`),
//! in which case the test fails. Only 127.0.0.1 is ever used.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_MEMCACHE_URL: &str = "memcache://127.0.0.1:11211";

fn unusable(what: &str, backend: &str, why: String) -> Option<String> {
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
    child: Option<Child>,
}

impl ServerProcess {
    /// A Redis without persistence; with `replica_of`, a replica of that port.
    pub fn redis(what: &str, replica_of: Option<u16>) -> Option<ServerProcess> {
        Self::start(what, Kind::Redis, replica_of)
    }

    pub fn memcached(what: &str) -> Option<ServerProcess> {
        Self::start(what, Kind::Memcached, None)
    }

    fn start(what: &str, kind: Kind, replica_of: Option<u16>) -> Option<ServerProcess> {
        let mut server = ServerProcess { kind, port: spare_port(), replica_of, child: None };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(why) => {
                let backend = match kind {
                    Kind::Redis => "redis",
                    Kind::Memcached => "memcached",
                };
                unusable(what, backend, why);
                None
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut command = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
                c.args(["--dir", &std::env::temp_dir().display().to_string()]);
                if let Some(primary) = self.replica_of {
                    c.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
                }
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
            Kind::Redis => (b"PING\r\n", b"+PONG"),
            Kind::Memcached => (b"version\r\n", b"VERSION"),
        };
        for _ in 0..100 {
            if answers(&self.addr(), probe, expect).is_ok() {
                return Ok(());
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
