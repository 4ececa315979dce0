//! A fresh, empty database per test on every backend (feature `testing`).
//!
//! PostgreSQL gets a new schema and MySQL a new database inside the servers named by
//! `STRATA_TEST_POSTGRES_URL` / `STRATA_TEST_MYSQL_URL` (defaults: the local servers on
//! their standard ports); SQLite gets a new file. Both are dropped afterwards.
//!
//! When a server is unreachable the test is skipped with a line on the terminal, unless
//! `STRATA_REQUIRE_BACKENDS` names it (CI sets `postgres,mysql`), in which case it fails.

use std::time::Duration;

use crate::Backend;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    cleanup: Option<Cleanup>,
    _dir: Option<TempDir>,
}

enum Cleanup {
    Postgres { admin_url: String, schema: String },
    Mysql { admin_url: String, database: String },
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }
}

fn unique_name() -> String {
    format!("strata_t_{}", uuid::Uuid::new_v4().simple())
}

/// When every fixture below happened: 2026-01-01T00:00:00Z.
pub const T0: strata_core::domain::Timestamp = strata_core::domain::Timestamp(1_767_225_600_000_000);

/// A valid user (a fresh id, a throwaway argon2 hash), created and updated at [`T0`].
pub fn sample_user(email: &str, name: &str) -> strata_core::domain::User {
    use strata_core::domain::{DisplayName, Email, PasswordHash, Role, User, UserId, UserStatus, Version};
    User {
        id: UserId::generate(),
        email: Email::parse(email).expect("valid email"),
        name: DisplayName::parse(name).expect("valid name"),
        password_hash: PasswordHash::from_trusted("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into()),
        role: Role::User,
        status: UserStatus::Active,
        verified: false,
        mfa_enabled: false,
        version: Version::FIRST,
        created_at: T0,
        updated_at: T0,
    }
}

/// An outbox event of `kind` about `aggregate`, at [`T0`].
pub fn sample_event(kind: &'static str, aggregate: strata_core::domain::UserId) -> strata_core::domain::OutboxEvent {
    strata_core::domain::OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: aggregate.as_uuid(),
        event_type: kind,
        payload: "{}".into(),
        created_at: T0,
        traceparent: None,
    }
}

/// `None` when the backend is unreachable and not required; panics when it is required.
pub async fn fresh(backend: Backend, what: &str) -> Option<TestDb> {
    let result = match backend {
        Backend::Sqlite => Ok(fresh_sqlite()),
        Backend::Postgres => fresh_postgres().await,
        Backend::Mysql => fresh_mysql().await,
    };
    match result {
        Ok(db) => Some(db),
        Err(why) => {
            strata_core::testing::unusable(what, backend.name(), &why);
            None
        }
    }
}

fn fresh_sqlite() -> TestDb {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.path.join("strata.db").display());
    TestDb { backend: Backend::Sqlite, url, cleanup: None, _dir: Some(dir) }
}

async fn fresh_postgres() -> Result<TestDb, String> {
    let admin_url = std::env::var("STRATA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let schema = unique_name();
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(&admin_url, tokio_postgres::NoTls))
            .await
            .map_err(|_| format!("connecting to {admin_url} timed out"))?
            .map_err(|e| format!("cannot connect to {admin_url}: {e}"))?;
    let driver = tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.map_err(|e| format!("create schema: {e}"))?;
    drop(client);
    let _ = driver.await;
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
    Ok(TestDb { backend: Backend::Postgres, url, cleanup: Some(Cleanup::Postgres { admin_url, schema }), _dir: None })
}

async fn fresh_mysql() -> Result<TestDb, String> {
    use mysql_async::prelude::Queryable as _;
    let admin_url = std::env::var("STRATA_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.into());
    let database = unique_name();
    let opts = mysql_async::Opts::from_url(&admin_url).map_err(|e| format!("bad mysql url: {e}"))?;
    let mut conn = tokio::time::timeout(Duration::from_secs(3), mysql_async::Conn::new(opts))
        .await
        .map_err(|_| format!("connecting to {admin_url} timed out"))?
        .map_err(|e| format!("cannot connect to {admin_url}: {e}"))?;
    conn.query_drop(format!("CREATE DATABASE {database}")).await.map_err(|e| format!("create database: {e}"))?;
    let _ = conn.disconnect().await;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
    let url = format!("{base}/{database}");
    Ok(TestDb { backend: Backend::Mysql, url, cleanup: Some(Cleanup::Mysql { admin_url, database }), _dir: None })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else { return };
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                match cleanup {
                    Cleanup::Postgres { admin_url, schema } => {
                        if let Ok((client, conn)) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await {
                            let driver = tokio::spawn(conn);
                            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
                            drop(client);
                            let _ = driver.await;
                        }
                    }
                    Cleanup::Mysql { admin_url, database } => {
                        use mysql_async::prelude::Queryable as _;
                        if let Ok(opts) = mysql_async::Opts::from_url(&admin_url)
                            && let Ok(mut conn) = mysql_async::Conn::new(opts).await
                        {
                            let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS {database}")).await;
                            let _ = conn.disconnect().await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

/// A temporary directory removed on drop (avoids a tempfile dependency for one use).
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A private PostgreSQL server on a spare loopback port, in a temporary directory of its
/// own: a primary ([`PgServer::primary`]) or a streaming replica of one
/// ([`PgServer::replica_of`]). The binaries run as the `postgres` OS user when the tests
/// run as root (initdb refuses root). Stopped at once and removed on drop.
pub struct PgServer {
    pub port: u16,
    root: std::path::PathBuf,
    bin: std::path::PathBuf,
    running: bool,
}

impl PgServer {
    /// The newest installed PostgreSQL's binaries, or why there are none.
    fn binaries() -> Result<std::path::PathBuf, String> {
        let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no PostgreSQL binaries under /usr/lib/postgresql: {e}"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(_, bin)| bin.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".into())
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        run_as_postgres(&self.bin.join(program), args)
    }

    fn data(&self) -> std::path::PathBuf {
        self.root.join("data")
    }

    fn new_root(bin: std::path::PathBuf) -> Result<Self, String> {
        let root = std::env::temp_dir().join(format!("strata_pg_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        if is_root() {
            let status = std::process::Command::new("chown").arg("postgres:postgres").arg(&root).status();
            if !status.is_ok_and(|s| s.success()) {
                return Err("chown postgres failed (is there a postgres user?)".into());
            }
        }
        Ok(PgServer { port: spare_port()?, root, bin, running: false })
    }

    /// Settings of every server here: private socket directory, no fsync (tests, not
    /// durability), WAL kept for replicas.
    fn settings(&self) -> String {
        format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             full_page_writes = off\nwal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n\
             wal_keep_size = '256MB'\nshared_buffers = '32MB'\nmax_connections = 60\n",
            self.port,
            self.root.display()
        )
    }

    pub fn primary() -> Result<Self, String> {
        let mut server = PgServer::new_root(PgServer::binaries()?)?;
        let data = server.data();
        server.run("initdb", &["-D", path_str(&data)?, "-U", "postgres", "-A", "trust", "--no-sync"])?;
        append(&data.join("postgresql.conf"), &server.settings())?;
        append(
            &data.join("pg_hba.conf"),
            "\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
        )?;
        server.start()?;
        Ok(server)
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), replaying each commit no
    /// sooner than `apply_delay` after it (`recovery_min_apply_delay`: injected lag).
    pub fn replica_of(primary: &PgServer, apply_delay: Duration) -> Result<Self, String> {
        let mut server = PgServer::new_root(primary.bin.clone())?;
        let data = server.data();
        let port = primary.port.to_string();
        server.run(
            "pg_basebackup",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", path_str(&data)?, "-R", "-X", "stream"],
        )?;
        let delay = format!("recovery_min_apply_delay = '{}ms'\n", apply_delay.as_millis());
        append(&data.join("postgresql.auto.conf"), &(server.settings() + &delay))?;
        server.start()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start(&mut self) -> Result<(), String> {
        let log = self.root.join("server.log");
        self.run("pg_ctl", &["-D", path_str(&self.data())?, "-l", path_str(&log)?, "-w", "-t", "60", "start"])?;
        self.running = true;
        Ok(())
    }

    /// Stops at once, as a crash would (`-m immediate`).
    pub fn kill(&mut self) -> Result<(), String> {
        self.running = false;
        self.run("pg_ctl", &["-D", path_str(&self.data())?, "-m", "immediate", "-w", "stop"])
    }

    /// Promotes a replica to a primary that takes writes.
    pub fn promote(&self) -> Result<(), String> {
        self.run("pg_ctl", &["-D", path_str(&self.data())?, "-w", "-t", "60", "promote"])
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn is_root() -> bool {
    // `id -u` once, rather than libc, which this crate does not depend on.
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT
        .get_or_init(|| std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")))
}

fn run_as_postgres(program: &std::path::Path, args: &[&str]) -> Result<(), String> {
    let mut command = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    let out = command.args(args).output().map_err(|e| format!("{}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {} failed: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn path_str(path: &std::path::Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn append(file: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", file.display()))
}

/// A loopback port nothing listens on (a moment ago).
pub fn spare_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A private MariaDB server on a spare loopback port (binary log on, GTIDs), in a
/// temporary directory of its own: a primary ([`MariaServer::primary`]) or a replica of one
/// ([`MariaServer::replica_of`], `MASTER_USE_GTID=slave_pos`). Killed and removed on drop.
pub struct MariaServer {
    pub port: u16,
    server_id: u32,
    /// Replicas run `read_only`, as a multi-host URL needs to tell them from the primary.
    read_only: bool,
    root: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl MariaServer {
    fn install(server_id: u32, read_only: bool) -> Result<Self, String> {
        let root = std::env::temp_dir().join(format!("strata_my_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut server = MariaServer { port: spare_port()?, server_id, read_only, root, child: None };
        let data = server.root.join("data");
        // A temporary directory of its own: bootstraps running at once in the shared /tmp
        // collided on their temporary tables ("Could not remove temporary table").
        let tmp = server.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut install = std::process::Command::new("mariadb-install-db");
        install.args(["--no-defaults", "--auth-root-authentication-method=normal", "--skip-test-db"]);
        install.arg(format!("--datadir={}", data.display()));
        // Passed on to the bootstrap server.
        install.arg(format!("--tmpdir={}", tmp.display()));
        if is_root() {
            install.arg("--user=root");
        }
        let out = install.output().map_err(|e| format!("mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(format!("mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        server.start()?;
        Ok(server)
    }

    pub fn primary() -> Result<Self, String> {
        let server = MariaServer::install(1, false)?;
        // Replicas start from the beginning of the binary log, so they get it too.
        server.sql("CREATE DATABASE test")?;
        Ok(server)
    }

    /// A replica of `primary` applying each transaction no sooner than `apply_delay` after
    /// it (`MASTER_DELAY`, whole seconds: any delay rounds up to at least one).
    pub fn replica_of(primary: &MariaServer, apply_delay: Duration, server_id: u32) -> Result<Self, String> {
        let server = MariaServer::install(server_id, true)?;
        let delay = apply_delay.as_millis().div_ceil(1000);
        server.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
             MASTER_USE_GTID=slave_pos, MASTER_DELAY={delay}; START SLAVE;",
            primary.port
        ))?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// Runs SQL with the command-line client.
    pub fn sql(&self, statements: &str) -> Result<(), String> {
        let out = std::process::Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", &self.port.to_string(), "-u", "root", "-e", statements])
            .output()
            .map_err(|e| format!("mariadb client: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }

    pub fn start(&mut self) -> Result<(), String> {
        let r = &self.root;
        let mut command = std::process::Command::new("mariadbd");
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", r.join("data").display()))
            .arg(format!("--tmpdir={}", r.join("tmp").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", r.join("sock").display()))
            .arg(format!("--pid-file={}", r.join("pid").display()))
            .arg(format!("--server-id={}", self.server_id))
            .arg(format!("--log-bin={}", r.join("binlog").display()))
            .args(["--log-slave-updates", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(r.join("server.log")).map_err(|e| e.to_string())?);
        if is_root() {
            command.arg("--user=root");
        }
        if self.read_only {
            command.arg("--read-only");
        }
        self.child = Some(command.spawn().map_err(|e| format!("mariadbd: {e}"))?);
        // Up when the client gets in (bounded: 30 s). Nothing is written: a replica's own
        // transactions would mix its GTIDs with the primary's.
        for _ in 0..300 {
            if self.sql("SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("mariadbd on port {} did not come up", self.port))
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(|e| e.to_string())?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// Makes a replica a primary that takes writes.
    pub fn promote(&self) -> Result<(), String> {
        self.sql("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0;")
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What replication tests do with a private server, whichever the engine.
pub trait TestServer: Send + 'static {
    fn url(&self) -> String;
    fn port(&self) -> u16;
    fn kill(&mut self) -> Result<(), String>;
    fn start(&mut self) -> Result<(), String>;
    fn promote(&self) -> Result<(), String>;
}

impl TestServer for PgServer {
    fn url(&self) -> String {
        PgServer::url(self)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn kill(&mut self) -> Result<(), String> {
        PgServer::kill(self)
    }
    fn start(&mut self) -> Result<(), String> {
        PgServer::start(self)
    }
    fn promote(&self) -> Result<(), String> {
        PgServer::promote(self)
    }
}

impl TestServer for MariaServer {
    fn url(&self) -> String {
        MariaServer::url(self)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn kill(&mut self) -> Result<(), String> {
        MariaServer::kill(self)
    }
    fn start(&mut self) -> Result<(), String> {
        MariaServer::start(self)
    }
    fn promote(&self) -> Result<(), String> {
        MariaServer::promote(self)
    }
}

pub type Replicated = (Box<dyn TestServer>, Vec<Box<dyn TestServer>>);

/// A private primary of `backend` (PostgreSQL or MySQL/MariaDB) with one replica per
/// delay, each applying commits that much later (blocking: call it off the runtime).
pub fn primary_with_replicas(backend: Backend, delays: &[Duration]) -> Result<Replicated, String> {
    match backend {
        Backend::Postgres => {
            let primary = PgServer::primary()?;
            let mut replicas: Vec<Box<dyn TestServer>> = Vec::new();
            for d in delays {
                replicas.push(Box::new(PgServer::replica_of(&primary, *d)?));
            }
            Ok((Box::new(primary), replicas))
        }
        Backend::Mysql => {
            let primary = MariaServer::primary()?;
            let mut replicas: Vec<Box<dyn TestServer>> = Vec::new();
            for (i, d) in delays.iter().enumerate() {
                replicas.push(Box::new(MariaServer::replica_of(&primary, *d, 2 + i as u32)?));
            }
            Ok((Box::new(primary), replicas))
        }
        Backend::Sqlite => Err("SQLite has no replicas".into()),
    }
}
