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
