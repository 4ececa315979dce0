//! Storage adapters for strata-core's repository ports: SQLite (the embedded default),
//! PostgreSQL and MySQL/MariaDB, each with its own migrations and driver.
//!
//! The backend is chosen by the URL scheme ([`connect`]); callers only see
//! `Arc<dyn Store>`. Every adapter passes the same conformance suite
//! (`tests/store.rs`) and proves with the engine's EXPLAIN that hot-path queries use an
//! index.
//!
//! Architecture invariant: this crate knows nothing of HTTP. SQL is always parameterised.

use std::sync::Arc;
use std::time::Duration;

use strata_core::error::RepoError;
use strata_core::ports::Store;

pub mod foreign;
mod mysql;
mod pg_pipeline;
mod postgres;
pub mod replicated;
pub mod sharded;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod user_search;
mod webhook_rows;

pub use mysql::MysqlStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Clone)]
pub struct StoreOptions {
    pub url: String,
    /// Upper bound of pooled connections (PostgreSQL, MySQL) or reader connections (SQLite).
    pub max_connections: usize,
    /// Bound on every storage call, so a stuck database turns into a quick 503, not a hang.
    pub query_timeout: Duration,
    pub connect_timeout: Duration,
    /// Apply pending migrations on connect.
    pub migrate: bool,
    /// Open without contacting the server (read replicas: one that is down at start
    /// joins the rotation once it answers). Never migrates.
    pub lazy: bool,
}

/// By hand, so the URL's password stays out of logs.
impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("query_timeout", &self.query_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("migrate", &self.migrate)
            .field("lazy", &self.lazy)
            .finish()
    }
}

/// The cores this process may run on (2 when that cannot be read): what the pool, reader
/// and pipeline sizes scale with.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        let cores = cores();
        StoreOptions {
            url: url.into(),
            max_connections: (cores * 4).max(8),
            query_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            migrate: true,
            lazy: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    /// Picks the backend from the URL scheme.
    pub fn from_url(url: &str) -> Result<Self, RepoError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            _ => Err(RepoError::Internal(format!(
                "unsupported database URL scheme {scheme:?}: use sqlite://, postgres:// or mysql://"
            ))),
        }
    }
}

/// Connects to the backend named by `options.url` and, unless disabled, migrates it.
pub async fn connect(options: &StoreOptions) -> Result<Arc<dyn Store>, RepoError> {
    Ok(match Backend::from_url(&options.url)? {
        Backend::Sqlite => Arc::new(SqliteStore::open(options).await?),
        Backend::Postgres => Arc::new(PostgresStore::connect(options).await?),
        Backend::Mysql => Arc::new(MysqlStore::connect(options).await?),
    })
}

/// Connects the primary (`options.url`) and, lazily and never migrated, its read replicas,
/// routed as [`replicated::ReplicatedStore`] describes. Replicas must be of the primary's
/// engine. Without replicas this is [`connect`].
pub async fn connect_replicated(
    options: &StoreOptions,
    replica_urls: &[String],
    board: Arc<dyn strata_core::ports::PositionBoard>,
    replica_options: replicated::ReplicaOptions,
) -> Result<Arc<dyn Store>, RepoError> {
    let primary = connect(options).await?;
    if replica_urls.is_empty() {
        return Ok(primary);
    }
    let engine = Backend::from_url(&options.url)?;
    let mut replicas = Vec::with_capacity(replica_urls.len());
    for url in replica_urls {
        if Backend::from_url(url)? != engine || engine == Backend::Sqlite {
            return Err(RepoError::Internal(format!(
                "replica {}: read replicas must be PostgreSQL or MySQL/MariaDB, the primary's engine",
                redact_url(url)
            )));
        }
        let replica = StoreOptions { url: url.clone(), migrate: false, lazy: true, ..options.clone() };
        replicas.push((redact_url(url), connect(&replica).await?));
    }
    Ok(Arc::new(replicated::ReplicatedStore::new(primary, replicas, board, replica_options).await))
}

/// A physical shard's entry in `database.shards`: its primary's URL, then `|` and the URL
/// of each read replica (`|` never stands unencoded in a URL).
pub fn split_shard(spec: &str) -> (String, Vec<String>) {
    let mut parts = spec.split('|').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
    let primary = parts.next().unwrap_or_default();
    (primary, parts.collect())
}

/// Connects a sharded store: the catalog at `options.url` and every shard (each migrated;
/// with its read replicas when its entry names some and a `board` is given, positions in
/// a namespace per shard), routed as [`sharded::ShardedStore`] describes. Shards are named
/// by their primaries' URLs without passwords; the catalog must be none of them.
pub async fn connect_sharded(
    options: &StoreOptions,
    shard_specs: &[String],
    board: Option<(Arc<dyn strata_core::ports::PositionBoard>, replicated::ReplicaOptions)>,
    shard_options: sharded::ShardOptions,
) -> Result<sharded::ShardedStore, RepoError> {
    let catalog = connect(options).await?;
    let mut shards: Vec<(String, Arc<dyn Store>)> = Vec::with_capacity(shard_specs.len());
    for spec in shard_specs {
        let (url, replicas) = split_shard(spec);
        let name = redact_url(&url);
        if name == redact_url(&options.url) {
            return Err(RepoError::Internal(format!("shard {name} is the catalog: give the catalog its own database")));
        }
        if shards.iter().any(|(n, _)| *n == name) {
            return Err(RepoError::Internal(format!("shard {name} is listed twice")));
        }
        let shard_options = StoreOptions { url, ..options.clone() };
        let store = match &board {
            Some((board, replica_options)) if !replicas.is_empty() => {
                let board = Arc::new(replicated::NamespacedBoard::new(board.clone(), &name));
                connect_replicated(&shard_options, &replicas, board, *replica_options).await?
            }
            _ => connect(&shard_options).await?,
        };
        shards.push((name, store));
    }
    sharded::ShardedStore::new(catalog, shards, shard_options).await
}

pub use strata_core::secret::redact_url;

/// Runs a storage future under the configured timeout.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, RepoError>>,
) -> Result<T, RepoError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => Err(RepoError::Unavailable(format!("storage call timed out after {limit:?}"))),
    }
}

/// Counts connection acquisitions, the time callers waited for them and the time they held
/// them (for `PoolStats`): every storage call, whichever service made it, goes through here.
#[derive(Debug, Default)]
pub(crate) struct AcquireClock {
    acquires: std::sync::atomic::AtomicU64,
    wait_nanos: std::sync::atomic::AtomicU64,
    hold_nanos: std::sync::atomic::AtomicU64,
}

/// A pooled connection that adds the time it was held to its clock when it goes back.
pub(crate) struct Held<'a, C> {
    conn: C,
    since: std::time::Instant,
    clock: &'a AcquireClock,
}

impl<C> std::ops::Deref for Held<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C> std::ops::DerefMut for Held<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

impl<C> Drop for Held<'_, C> {
    fn drop(&mut self) {
        let held = self.since.elapsed().as_nanos() as u64;
        self.clock.hold_nanos.fetch_add(held, std::sync::atomic::Ordering::Relaxed);
    }
}

impl AcquireClock {
    /// Awaits `acquire`, recording how long it took, then (in fault-injection builds) holds
    /// the connection for `STRATA_FAULT_INJECT`'s `db_delay`, as a slow query would.
    pub(crate) async fn time<C, E>(
        &self,
        acquire: impl std::future::Future<Output = Result<C, E>>,
    ) -> Result<Held<'_, C>, E> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let conn = acquire.await?;
        let since = std::time::Instant::now();
        self.acquires.fetch_add(1, Relaxed);
        self.wait_nanos.fetch_add(since.duration_since(started).as_nanos() as u64, Relaxed);
        let held = Held { conn, since, clock: self };
        #[cfg(feature = "fault-injection")]
        if let Some(delay) = strata_core::fault::get().db_delay {
            tokio::time::sleep(delay).await;
        }
        Ok(held)
    }

    /// (acquires, seconds waited, seconds held).
    pub(crate) fn read(&self) -> (u64, f64, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.acquires.load(Relaxed),
            self.wait_nanos.load(Relaxed) as f64 / 1e9,
            self.hold_nanos.load(Relaxed) as f64 / 1e9,
        )
    }
}

/// Numbered, ordered schema changes for one backend. Applied in order, each recorded in
/// `schema_migrations`; an applied migration is never edited, only followed by a new one.
/// The stored form of `TotpRecord::recovery_hashes`: comma-separated hex.
pub(crate) fn split_recovery_hashes(stored: &str) -> Vec<String> {
    stored.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect()
}

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_by_scheme() {
        assert_eq!(Backend::from_url("sqlite://data/x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::from_url("postgresql://h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::from_url("mariadb://h/db").unwrap(), Backend::Mysql);
        assert!(Backend::from_url("redis://h").is_err());
        assert!(Backend::from_url("nonsense").is_err());
    }
}
