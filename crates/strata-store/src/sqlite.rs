//! SQLite adapter: the embedded default.
//!
//! SQLite allows one writer at a time and, in WAL mode, any number of readers that never
//! wait for it. So writes go through a single connection on tokio's blocking pool, while
//! reads take a connection from a pool of read-only connections and run *inline* on the
//! calling worker: a point query from the page cache costs a few microseconds, less than
//! handing it to another thread and back. The reader pool grows to the number of threads
//! that read at once (the async workers) and no further.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use strata_core::domain::{
    DisplayName, Email, IdempotencyKey, IdempotencyRecord, OutboxEvent, PasswordHash, Role, Session, SessionId,
    StoredEvent, Timestamp, TokenHash, User, UserId, UserStatus, Version,
};
use strata_core::error::RepoError;
use strata_core::ports::{
    OutboxRepository, PoolStats, QueryPlan, SessionRepository, SessionRevocation, Store, UserListQuery, UserRepository,
};

use crate::{Migration, StoreOptions};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "users, sessions, idempotency keys, outbox",
    sql: "
        CREATE TABLE users (
            id            BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            email         TEXT NOT NULL,
            name          TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            role          TEXT NOT NULL,
            status        TEXT NOT NULL,
            version       INTEGER NOT NULL,
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX users_email ON users (email);

        CREATE TABLE sessions (
            id         BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            revoked_at INTEGER
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX sessions_token_hash ON sessions (token_hash);
        CREATE INDEX sessions_user_id ON sessions (user_id);

        CREATE TABLE idempotency_keys (
            key         TEXT PRIMARY KEY NOT NULL,
            fingerprint BLOB NOT NULL,
            user_id     BLOB NOT NULL,
            created_at  INTEGER NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE outbox (
            id           BLOB PRIMARY KEY NOT NULL,
            aggregate_id BLOB NOT NULL,
            event_type   TEXT NOT NULL,
            payload      TEXT NOT NULL,
            created_at   INTEGER NOT NULL,
            published_at INTEGER
        ) WITHOUT ROWID;
        CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
    ",
}];

const USER_COLUMNS: &str = "id, email, name, password_hash, role, status, version, created_at, updated_at";

mod sql {
    pub const USER_BY_ID: &str =
        "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at FROM users WHERE id = ?1";
    pub const USER_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at FROM users WHERE email = ?1";
    pub const SESSION_WITH_USER: &str = "SELECT s.id, s.user_id, s.token_hash, s.created_at, s.expires_at, s.revoked_at, \
         u.id, u.email, u.name, u.password_hash, u.role, u.status, u.version, u.created_at, u.updated_at \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1";
    pub const SESSIONS_OF_USER: &str = "SELECT id, user_id, token_hash, created_at, expires_at, revoked_at FROM sessions WHERE user_id = ?1 ORDER BY id";
    pub const LIST_USERS_PAGE: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at FROM users WHERE id > ?1 ORDER BY id LIMIT ?2";
    pub const LIST_USERS_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at FROM users WHERE email = ?3 AND id > ?1 ORDER BY id LIMIT ?2";
    pub const IDEMPOTENCY_RECORD: &str =
        "SELECT key, fingerprint, user_id, created_at FROM idempotency_keys WHERE key = ?1";
    pub const UNPUBLISHED_EVENTS: &str = "SELECT id, aggregate_id, event_type, payload, created_at FROM outbox \
         WHERE published_at IS NULL ORDER BY id LIMIT ?1";
}

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReaderPool>,
    query_timeout: Duration,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    opened: AtomicU64,
}

impl ReaderPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, RepoError>) -> Result<T, RepoError> {
        let conn = self.idle.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = open_reader(&self.path)?;
                self.opened.fetch_add(1, Ordering::Relaxed);
                c
            }
        };
        let out = f(&conn);
        self.idle.lock().push(conn);
        out
    }
}

fn sqlite_path(url: &str) -> Result<PathBuf, RepoError> {
    let rest =
        url.strip_prefix("sqlite://").ok_or_else(|| RepoError::Internal(format!("not a sqlite:// URL: {url}")))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    if rest.is_empty() {
        return Err(RepoError::Internal("sqlite:// URL needs a file path, e.g. sqlite://data/strata.db".into()));
    }
    Ok(PathBuf::from(rest))
}

fn open_writer(path: &Path) -> Result<Connection, RepoError> {
    let conn = Connection::open(path).map_err(|e| unavailable("open", e))?;
    // WAL lets readers proceed during writes; synchronous=NORMAL in WAL mode never corrupts
    // the database and loses at most the last transactions on power loss (not on crash).
    conn.execute_batch(
        // busy_timeout first: switching to WAL needs a lock another opener may hold.
        "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| unavailable("configure writer", e))?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, RepoError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| unavailable("open reader", e))?;
    conn.execute_batch("PRAGMA busy_timeout = 1000; PRAGMA cache_size = -16000;")
        .map_err(|e| unavailable("configure reader", e))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn unavailable(what: &str, e: rusqlite::Error) -> RepoError {
    RepoError::Unavailable(format!("sqlite {what}: {e}"))
}

/// Translates driver errors, recognising the unique constraints the ports care about.
fn map_err(e: rusqlite::Error) -> RepoError {
    if let rusqlite::Error::SqliteFailure(code, msg) = &e {
        let msg = msg.as_deref().unwrap_or("");
        match code.code {
            ErrorCode::ConstraintViolation if msg.contains("users.email") => return RepoError::EmailTaken,
            ErrorCode::ConstraintViolation if msg.contains("idempotency_keys.key") => {
                return RepoError::IdempotencyKeyTaken;
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure => {
                return RepoError::Unavailable(format!("sqlite: {e}"));
            }
            _ => {}
        }
    }
    RepoError::Internal(format!("sqlite: {e}"))
}

fn migrate(conn: &mut Connection) -> Result<(), RepoError> {
    // IMMEDIATE takes the write lock up front, so two processes migrating the same file
    // at once serialise instead of both applying migration 1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .map_err(map_err)?;
    let applied: i64 =
        tx.query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |r| r.get(0)).map_err(map_err)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
        tx.execute_batch(m.sql).map_err(map_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_micros()],
        )
        .map_err(map_err)?;
        tracing::info!(backend = "sqlite", version = m.version, name = m.name, "applied migration");
    }
    tx.commit().map_err(map_err)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, what.to_owned(), rusqlite::types::Type::Null)
}

fn blob<const N: usize>(row: &Row<'_>, idx: usize) -> rusqlite::Result<[u8; N]> {
    let bytes: Vec<u8> = row.get(idx)?;
    bytes.try_into().map_err(|_| corrupt("blob of unexpected length"))
}

/// Reads the nine user columns starting at `at`.
fn user_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<User> {
    let role: String = row.get(at + 4)?;
    let status: String = row.get(at + 5)?;
    Ok(User {
        id: UserId::from_bytes(blob(row, at)?),
        email: Email::from_trusted(row.get(at + 1)?),
        name: DisplayName::from_trusted(row.get(at + 2)?),
        password_hash: PasswordHash::from_trusted(row.get(at + 3)?),
        role: Role::parse(&role).map_err(|_| corrupt("role"))?,
        status: UserStatus::parse(&status).map_err(|_| corrupt("status"))?,
        version: Version(row.get::<_, i64>(at + 6)? as u64),
        created_at: Timestamp(row.get(at + 7)?),
        updated_at: Timestamp(row.get(at + 8)?),
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::from_bytes(blob(row, 0)?),
        user_id: UserId::from_bytes(blob(row, 1)?),
        token_hash: TokenHash(blob(row, 2)?),
        created_at: Timestamp(row.get(3)?),
        expires_at: Timestamp(row.get(4)?),
        revoked_at: row.get::<_, Option<i64>>(5)?.map(Timestamp),
    })
}

fn insert_event(tx: &rusqlite::Transaction<'_>, event: &OutboxEvent) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT INTO outbox (id, aggregate_id, event_type, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        event.id.as_bytes().as_slice(),
        event.aggregate_id.as_bytes().as_slice(),
        event.event_type,
        event.payload,
        event.created_at.0
    ])
}

/// After an UPDATE/DELETE guarded by version touched no row: was it the version or the row?
fn missing_or_conflict(tx: &rusqlite::Transaction<'_>, id: UserId) -> RepoError {
    match tx.query_row("SELECT 1 FROM users WHERE id = ?1", [id.as_bytes().as_slice()], |_| Ok(())).optional() {
        Ok(Some(())) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => map_err(e),
    }
}

impl SqliteStore {
    pub async fn open(options: &StoreOptions) -> Result<Self, RepoError> {
        let path = sqlite_path(&options.url)?;
        let migrate_now = options.migrate;
        let writer = tokio::task::spawn_blocking(move || -> Result<(Connection, PathBuf), RepoError> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| RepoError::Unavailable(format!("create {}: {e}", parent.display())))?;
            }
            let mut conn = open_writer(&path)?;
            if migrate_now {
                migrate(&mut conn)?;
            }
            Ok((conn, path))
        })
        .await
        .map_err(|e| RepoError::Internal(format!("sqlite open task: {e}")))??;
        let (writer, path) = writer;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(ReaderPool { path, idle: Mutex::new(Vec::new()), opened: AtomicU64::new(0) }),
            query_timeout: options.query_timeout,
        })
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer, off the async workers.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, RepoError> + Send + 'static,
    ) -> Result<T, RepoError> {
        let writer = self.writer.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let out = f(&tx)?;
            tx.commit().map_err(map_err)?;
            Ok(out)
        });
        crate::with_timeout(self.query_timeout, async {
            task.await.map_err(|e| RepoError::Internal(format!("sqlite write task: {e}")))?
        })
        .await
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, RepoError> {
        self.readers.with(|conn| f(conn).map_err(map_err))
    }

    fn read_users(&self, sql: &'static str, params: impl rusqlite::Params) -> Result<Vec<User>, RepoError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(params, |r| user_from_row(r, 0))?;
            rows.collect()
        })
    }
}

#[async_trait]
impl UserRepository for SqliteStore {
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (user, idempotency, event) = (user.clone(), idempotency.cloned(), event.clone());
        self.write(move |tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    user.id.as_bytes().as_slice(),
                    user.email.as_str(),
                    user.name.as_str(),
                    user.password_hash.as_str(),
                    user.role.as_str(),
                    user.status.as_str(),
                    user.version.0 as i64,
                    user.created_at.0,
                    user.updated_at.0
                ])
            })
            .map_err(map_err)?;
            if let Some(rec) = &idempotency {
                tx.execute(
                    "INSERT INTO idempotency_keys (key, fingerprint, user_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        rec.key.as_str(),
                        rec.fingerprint.as_slice(),
                        rec.user_id.as_bytes().as_slice(),
                        rec.created_at.0
                    ],
                )
                .map_err(map_err)?;
            }
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError> {
        self.read(|c| {
            c.prepare_cached(sql::IDEMPOTENCY_RECORD)?
                .query_row([key.as_str()], |r| {
                    Ok(IdempotencyRecord {
                        key: IdempotencyKey::from_trusted(r.get(0)?),
                        fingerprint: blob(r, 1)?,
                        user_id: UserId::from_bytes(blob(r, 2)?),
                        created_at: Timestamp(r.get(3)?),
                    })
                })
                .optional()
        })
    }

    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        self.write(move |tx| {
            let gone = tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?1", [before.0]).map_err(map_err)?;
            Ok(gone as u64)
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.read(|c| {
            c.prepare_cached(sql::USER_BY_ID)?.query_row([id.as_bytes().as_slice()], |r| user_from_row(r, 0)).optional()
        })
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        self.read(|c| {
            c.prepare_cached(sql::USER_BY_EMAIL)?.query_row([email.as_str()], |r| user_from_row(r, 0)).optional()
        })
    }

    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (user, event) = (user.clone(), event.clone());
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE users SET email = ?2, name = ?3, password_hash = ?4, role = ?5, status = ?6, \
                     version = ?7, updated_at = ?8 WHERE id = ?1 AND version = ?9",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        user.id.as_bytes().as_slice(),
                        user.email.as_str(),
                        user.name.as_str(),
                        user.password_hash.as_str(),
                        user.role.as_str(),
                        user.status.as_str(),
                        user.version.0 as i64,
                        user.updated_at.0,
                        expected.0 as i64
                    ])
                })
                .map_err(map_err)?;
            if changed == 0 {
                return Err(missing_or_conflict(tx, user.id));
            }
            let uid = user.id.as_bytes().as_slice();
            match revoke {
                SessionRevocation::None => 0,
                SessionRevocation::All { at } => tx
                    .execute(
                        "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                        params![uid, at.0],
                    )
                    .map_err(map_err)?,
                SessionRevocation::AllExcept { keep, at } => tx
                    .execute(
                        "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL AND id <> ?3",
                        params![uid, at.0, keep.as_bytes().as_slice()],
                    )
                    .map_err(map_err)?,
            };
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let event = event.clone();
        self.write(move |tx| {
            let deleted = match expected {
                Some(v) => tx.execute(
                    "DELETE FROM users WHERE id = ?1 AND version = ?2",
                    params![id.as_bytes().as_slice(), v.0 as i64],
                ),
                None => tx.execute("DELETE FROM users WHERE id = ?1", [id.as_bytes().as_slice()]),
            }
            .map_err(map_err)?;
            if deleted == 0 {
                return Err(missing_or_conflict(tx, id));
            }
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError> {
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let limit = i64::from(query.limit);
        match &query.email {
            Some(email) => self.read_users(sql::LIST_USERS_BY_EMAIL, params![after.as_slice(), limit, email.as_str()]),
            None => self.read_users(sql::LIST_USERS_PAGE, params![after.as_slice(), limit]),
        }
    }
}

#[async_trait]
impl SessionRepository for SqliteStore {
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError> {
        let (s, event) = (session.clone(), event.clone());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO sessions (id, token_hash, user_id, created_at, expires_at, revoked_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    s.id.as_bytes().as_slice(),
                    s.token_hash.0.as_slice(),
                    s.user_id.as_bytes().as_slice(),
                    s.created_at.0,
                    s.expires_at.0,
                    s.revoked_at.map(|t| t.0)
                ])
            })
            .map_err(map_err)?;
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        self.read(|c| {
            c.prepare_cached(sql::SESSION_WITH_USER)?
                .query_row([token_hash.0.as_slice()], |r| Ok((session_from_row(r)?, user_from_row(r, 6)?)))
                .optional()
        })
    }

    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError> {
        let event = event.clone();
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id.as_bytes().as_slice(), at.0],
                )
                .map_err(map_err)?;
            if changed > 0 {
                insert_event(tx, &event).map_err(map_err)?;
            }
            Ok(changed > 0)
        })
        .await
    }

    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql::SESSIONS_OF_USER)?;
            let rows = stmt.query_map([user_id.as_bytes().as_slice()], session_from_row)?;
            rows.collect()
        })
    }
}

/// The hot-path queries with sample parameters, for EXPLAIN.
fn hot_queries() -> Vec<(&'static str, &'static str, Vec<rusqlite::types::Value>)> {
    use rusqlite::types::Value::{Blob, Integer, Text};
    let id = Blob(vec![0; 16]);
    vec![
        ("user_by_id", sql::USER_BY_ID, vec![id.clone()]),
        ("user_by_email", sql::USER_BY_EMAIL, vec![Text("a@example.com".into())]),
        ("session_with_user", sql::SESSION_WITH_USER, vec![Blob(vec![0; 32])]),
        ("sessions_of_user", sql::SESSIONS_OF_USER, vec![id.clone()]),
        ("list_users_page", sql::LIST_USERS_PAGE, vec![id.clone(), Integer(51)]),
        ("list_users_by_email", sql::LIST_USERS_BY_EMAIL, vec![id, Integer(51), Text("a@example.com".into())]),
        ("idempotency_record", sql::IDEMPOTENCY_RECORD, vec![Text("k".into())]),
    ]
}

#[async_trait]
impl OutboxRepository for SqliteStore {
    async fn unpublished_events(&self, limit: u32) -> Result<Vec<StoredEvent>, RepoError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql::UNPUBLISHED_EVENTS)?;
            let rows = stmt.query_map([limit], |r| {
                Ok(StoredEvent {
                    id: uuid::Uuid::from_bytes(blob(r, 0)?),
                    aggregate_id: uuid::Uuid::from_bytes(blob(r, 1)?),
                    event_type: r.get(2)?,
                    payload: r.get(3)?,
                    created_at: Timestamp(r.get(4)?),
                })
            })?;
            rows.collect()
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), RepoError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        hot_queries()
            .into_iter()
            .map(|(name, sql, args)| {
                let lines: Vec<String> = self.read(|c| {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))?;
                    rows.collect()
                })?;
                // "SEARCH t USING INDEX/PRIMARY KEY" is an index lookup; a bare "SCAN t" is
                // a full table walk.
                let uses_index = !lines.is_empty()
                    && lines.iter().all(|l| !l.starts_with("SCAN") || l.contains("USING"))
                    && lines.iter().any(|l| l.contains("USING"));
                Ok(QueryPlan { name, sql, plan: lines.join("\n"), uses_index })
            })
            .collect()
    }

    fn pool_stats(&self) -> PoolStats {
        let idle = self.readers.idle.lock().len() as u64;
        // +1: the writer.
        PoolStats { size: self.readers.opened.load(Ordering::Relaxed) + 1, idle, waiting: 0 }
    }
}
