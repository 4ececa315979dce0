//! SQLite adapter: the embedded default.
//!
//! SQLite allows one writer at a time and, in WAL mode, any number of readers that never
//! wait for it. So writes go through a single connection on tokio's blocking pool, and
//! reads through reader threads, each with its own read-only connection, started as
//! concurrent reads need them, at most `max_connections` and at most one per core (two on
//! smaller machines). Reads from a warm page cache are pure CPU: on 2 cores, 100k-session
//! checks without a cache ran at 61k req/s with one reader, 63k with two, 58k with three,
//! 51k with four and 42k with eight (bench/memory.sh), each extra reader only adding context
//! switches and its own copy of the pages it read. Neither runs on an async worker:
//! SQLite calls block, and a slow one (a cold page cache, a runaway query) must not stall
//! every other request on that worker. Reads have threads of their own rather than
//! `spawn_blocking` because they are the hot path: under load, a queue to reader threads
//! keeps ~85% of the inline rate of session reads, where the blocking pool's per-task
//! hand-off cut it to about a fifth.
//!
//! Every call is bounded by `query_timeout`, like the other adapters' calls. A caller that
//! times out *abandons* its call: a running statement is interrupted
//! (`sqlite3_interrupt`), and a write checks for abandonment right before committing and
//! rolls back instead, which also covers an interrupt that landed between two statements
//! (SQLite drops those). The caller and the thread running the call settle the race there
//! under one lock: either the call was abandoned and never commits, or its commit had begun,
//! and the caller waits for the commit's real outcome rather than report a timeout that
//! might be a lie.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Condvar, Mutex};
use rusqlite::{
    Connection, ErrorCode, InterruptHandle, OpenFlags, OptionalExtension, Row, TransactionBehavior, params,
    params_from_iter,
};
use strata_core::domain::{
    AuditEntry, AuditQuery, Backlog, DisplayName, Email, IdempotencyKey, IdempotencyRecord, OUTBOX_PARTITIONS,
    OutboxEvent, PasswordHash, RelayLease, Role, Session, SessionId, StoredEvent, Timestamp, TokenHash, User, UserId,
    UserStatus, Version, outbox_partition,
};
use strata_core::error::RepoError;
use strata_core::ports::{
    AuditRepository, OutboxRepository, PoolStats, QueryPlan, SessionRepository, SessionRevocation, Store,
    UserListQuery, UserPredicate, UserRepository, UserSearch,
};

use strata_core::lifecycle::{AccountToken, MailStatus, QueuedMail, TokenPurpose};
use strata_core::ports::{LifecycleRepository, MfaRepository, WebhookRepository};
use strata_core::totp::{TotpRecord, TotpSecret};
use strata_core::webhooks::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};

mod backup;
mod groups;
mod shards;

use crate::webhook_rows::{DeliveryRow, EndpointRow, attempt_columns, delivery_columns, endpoint_columns};
use crate::{Migration, StoreOptions};

const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "event relay: per-aggregate sequences, partitions and leases; audit log",
        sql: "
        ALTER TABLE outbox ADD COLUMN sequence INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN partition INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN traceparent TEXT;
        -- Rows from before this migration: partition = low nibble of the id's last byte
        -- (see strata_core::domain::outbox_partition), sequence = their order by id.
        UPDATE outbox SET partition = instr('0123456789ABCDEF', substr(hex(substr(aggregate_id, 16, 1)), 2, 1)) - 1;
        UPDATE outbox SET sequence = r.n FROM
            (SELECT id, row_number() OVER (PARTITION BY aggregate_id ORDER BY id) AS n FROM outbox) AS r
            WHERE outbox.id = r.id;
        CREATE INDEX outbox_pending_aggregate ON outbox (aggregate_id, sequence) WHERE published_at IS NULL;
        CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

        -- One row per aggregate holding its last sequence number. Bumping it locks the
        -- aggregate for the rest of the transaction, which is what makes sequence order
        -- commit order.
        CREATE TABLE outbox_sequences (
            aggregate_id BLOB PRIMARY KEY NOT NULL,
            last         INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO outbox_sequences (aggregate_id, last)
            SELECT aggregate_id, max(sequence) FROM outbox GROUP BY aggregate_id;

        -- Partition leases (partition:N) and relay heartbeats (member:OWNER).
        CREATE TABLE relay_leases (
            name       TEXT PRIMARY KEY NOT NULL,
            owner      TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        WITH RECURSIVE p(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM p WHERE n < 15)
            INSERT INTO relay_leases (name, owner, expires_at) SELECT 'partition:' || n, '', 0 FROM p;

        CREATE TABLE audit_log (
            id         BLOB PRIMARY KEY NOT NULL,
            event_type TEXT NOT NULL,
            subject    BLOB NOT NULL,
            actor      TEXT NOT NULL,
            time       INTEGER NOT NULL,
            data       TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX audit_subject ON audit_log (subject, id);
        CREATE INDEX audit_type ON audit_log (event_type, id);
    ",
    },
    Migration {
        version: 3,
        name: "webhooks: endpoints, deliveries, attempt log",
        sql: "
        CREATE TABLE webhook_endpoints (
            id              BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            url             TEXT NOT NULL,
            events          TEXT NOT NULL,
            description     TEXT NOT NULL,
            enabled         INTEGER NOT NULL,
            disabled_reason TEXT,
            secrets         TEXT NOT NULL,
            rate_limit      INTEGER NOT NULL,
            failing_since   INTEGER,
            created_at      INTEGER NOT NULL,
            updated_at      INTEGER NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE webhook_deliveries (
            id              BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            endpoint_id     BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            event_id        TEXT NOT NULL,
            event           TEXT NOT NULL,
            status          TEXT NOT NULL,
            attempts        INTEGER NOT NULL,
            next_attempt_at INTEGER NOT NULL,
            last_status     INTEGER,
            last_error      TEXT,
            created_at      INTEGER NOT NULL,
            updated_at      INTEGER NOT NULL
        ) WITHOUT ROWID;
        -- A redelivered event is one delivery per endpoint, not two.
        CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (endpoint_id, event_id);
        CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

        -- Own key: attempt numbers restart when a delivery is replayed.
        CREATE TABLE webhook_attempts (
            id          INTEGER PRIMARY KEY,
            delivery_id BLOB NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
            attempt     INTEGER NOT NULL,
            at          INTEGER NOT NULL,
            status      INTEGER,
            error       TEXT,
            duration_ms INTEGER NOT NULL
        );
        CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
    ",
    },
    Migration {
        version: 4,
        name: "account lifecycle: one-time tokens, mail queue",
        sql: "
        ALTER TABLE users ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;

        CREATE TABLE account_tokens (
            id         BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            purpose    TEXT NOT NULL,
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            binding    BLOB NOT NULL CHECK (length(binding) = 32),
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            used_at    INTEGER
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX account_tokens_hash ON account_tokens (token_hash);
        CREATE INDEX account_tokens_user ON account_tokens (user_id, purpose);
        CREATE INDEX account_tokens_expiry ON account_tokens (expires_at);

        CREATE TABLE mail_queue (
            id              BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            template        TEXT NOT NULL,
            recipient       TEXT NOT NULL,
            params          TEXT NOT NULL,
            status          TEXT NOT NULL,
            attempts        INTEGER NOT NULL,
            next_attempt_at INTEGER NOT NULL,
            last_error      TEXT,
            created_at      INTEGER NOT NULL,
            updated_at      INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX mail_queue_due ON mail_queue (next_attempt_at) WHERE status = 'pending';
        CREATE INDEX mail_queue_finished ON mail_queue (updated_at) WHERE status <> 'pending';
    ",
    },
    Migration {
        version: 5,
        name: "groups, their member rows, users' external ids, provisioning tokens",
        sql: "
        -- Not `groups`: a reserved word on MySQL 8, and every backend uses the same names.
        CREATE TABLE user_groups (
            id           BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            display_name TEXT NOT NULL,
            external_id  TEXT,
            version      INTEGER NOT NULL,
            created_at   INTEGER NOT NULL,
            updated_at   INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX user_groups_display_name ON user_groups (display_name, id);
        CREATE INDEX user_groups_external_id ON user_groups (external_id, id);

        -- One row per membership: a change touches only its rows.
        CREATE TABLE group_members (
            group_id BLOB NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
            user_id  BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            PRIMARY KEY (group_id, user_id)
        ) WITHOUT ROWID;
        CREATE INDEX group_members_user ON group_members (user_id, group_id);

        -- The id a provisioning client (SCIM) knows a user by; most users have none.
        CREATE TABLE user_external_ids (
            user_id     BLOB PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            external_id TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX user_external_ids_external_id ON user_external_ids (external_id, user_id);

        -- SCIM clients' bearer tokens, as SHA-256 digests.
        CREATE TABLE provisioning_tokens (
            id         BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
            name       TEXT NOT NULL,
            token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
            created_at INTEGER NOT NULL,
            revoked_at INTEGER
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX provisioning_tokens_hash ON provisioning_tokens (token_hash);
    ",
    },
    Migration {
        version: 6,
        name: "TOTP second factor",
        sql: "
        -- The secret is the base32 text apps take; recovery_codes holds the SHA-256 (hex,
        -- comma-separated) of the unused recovery codes.
        CREATE TABLE user_totp (
            user_id        BLOB PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            secret         TEXT NOT NULL,
            enabled        INTEGER NOT NULL,
            last_step      INTEGER,
            recovery_codes TEXT NOT NULL,
            version        INTEGER NOT NULL,
            created_at     INTEGER NOT NULL,
            updated_at     INTEGER NOT NULL
        ) WITHOUT ROWID;
    ",
    },
    Migration {
        version: 7,
        name: "confirmed email changes, users' MFA flag",
        sql: "
        -- A copy of user_totp.enabled kept in the row every user read returns, so showing
        -- it costs no second query. Written in the transactions that write user_totp.
        ALTER TABLE users ADD COLUMN mfa_enabled INTEGER NOT NULL DEFAULT 0;
        UPDATE users SET mfa_enabled = 1 WHERE id IN (SELECT user_id FROM user_totp WHERE enabled = 1);

        -- The address an email-change token moves the account to (NULL for other purposes).
        ALTER TABLE account_tokens ADD COLUMN new_email TEXT;
    ",
    },
    Migration {
        version: 8,
        name: "SCIM Enterprise User extension; users by last modification",
        sql: "
        -- Most users have none of these: a row only for those an identity provider set.
        CREATE TABLE user_enterprise (
            user_id         BLOB PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            employee_number TEXT,
            cost_center     TEXT,
            organization    TEXT,
            division        TEXT,
            department      TEXT,
            manager_id      TEXT
        ) WITHOUT ROWID;
        CREATE INDEX user_enterprise_employee_number ON user_enterprise (employee_number, user_id);
        -- SCIM's `meta.lastModified gt …`, the delta query identity providers poll with.
        CREATE INDEX users_updated_at ON users (updated_at, id);
    ",
    },
    Migration {
        version: 9,
        name: "shard catalog: the shard map, global email claims",
        sql: "
        -- Used only where this database is a sharded deployment's catalog.
        CREATE TABLE shard_map (
            logical INTEGER PRIMARY KEY,
            shard   TEXT NOT NULL,
            other   TEXT,
            step    TEXT,
            since   INTEGER,
            version INTEGER NOT NULL
        );
        CREATE TABLE email_claims (
            email   TEXT PRIMARY KEY NOT NULL,
            user_id BLOB NOT NULL CHECK (length(user_id) = 16),
            state   TEXT NOT NULL,
            at      INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX email_claims_pending ON email_claims (at) WHERE state = 'pending';
    ",
    },
];

const USER_COLUMNS: &str = "id, email, name, password_hash, role, status, version, created_at, updated_at, verified";
/// What a user read selects: the written columns and the MFA flag, which only TOTP writes set.
const USER_READ_COLUMNS: &str =
    "id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled";

mod sql {
    pub const USER_BY_ID: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled FROM users WHERE id = ?1";
    pub const USER_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled FROM users WHERE email = ?1";
    pub const SESSION_WITH_USER: &str = "SELECT s.id, s.user_id, s.token_hash, s.created_at, s.expires_at, s.revoked_at, \
         u.id, u.email, u.name, u.password_hash, u.role, u.status, u.version, u.created_at, u.updated_at, u.verified, u.mfa_enabled \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1";
    pub const SESSIONS_OF_USER: &str = "SELECT id, user_id, token_hash, created_at, expires_at, revoked_at FROM sessions WHERE user_id = ?1 ORDER BY id";
    pub const LIST_USERS_PAGE: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled FROM users WHERE id > ?1 ORDER BY id LIMIT ?2";
    pub const LIST_USERS_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled FROM users WHERE email = ?3 AND id > ?1 ORDER BY id LIMIT ?2";
    pub const IDEMPOTENCY_RECORD: &str =
        "SELECT key, fingerprint, user_id, created_at FROM idempotency_keys WHERE key = ?1";
    /// The aggregates with the oldest unpublished rows (step 1 of `pending_events`).
    pub const PENDING_AGGREGATES: &str =
        "SELECT aggregate_id, partition FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?1";
    pub const EVENT_COLUMNS: &str = "id, aggregate_id, event_type, payload, created_at, sequence, traceparent";
    pub const ACCOUNT_TOKEN_BY_HASH: &str = "SELECT id, user_id, purpose, token_hash, binding, created_at, expires_at, used_at, new_email \
         FROM account_tokens WHERE token_hash = ?1";
    pub const MAIL_COLUMNS: &str =
        "id, template, recipient, params, status, attempts, next_attempt_at, last_error, created_at, updated_at";
}

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: ReaderThreads,
    query_timeout: Duration,
}

/// One storage call as its two sides see it: the caller, which gives up at the deadline,
/// and the thread running it on a connection.
#[derive(Default)]
struct Call {
    inner: Mutex<CallInner>,
}

#[derive(Default)]
struct CallInner {
    stage: Stage,
    /// The connection running the call while it runs. Cleared before the connection is
    /// released, under the same lock as `abandon`'s interrupt, so an interrupt can never
    /// reach the next call on that connection.
    running_on: Option<InterruptHandle>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    #[default]
    Running,
    Committing,
    Abandoned,
}

impl Call {
    /// Marks the call as running on the connection behind `interrupt`; refused when the
    /// caller gave up while the call waited for a thread or a connection.
    fn start(&self, interrupt: InterruptHandle) -> Result<Started<'_>, RepoError> {
        let mut inner = self.inner.lock();
        if inner.stage == Stage::Abandoned {
            return Err(abandoned());
        }
        inner.running_on = Some(interrupt);
        Ok(Started { call: self })
    }

    /// The point of no return of a write: false when the caller already gave up.
    fn begin_commit(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.stage == Stage::Abandoned {
            return false;
        }
        inner.stage = Stage::Committing;
        true
    }

    /// The caller's side at the deadline. False when the commit has begun: its outcome is
    /// then the answer.
    fn abandon(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.stage == Stage::Committing {
            return false;
        }
        inner.stage = Stage::Abandoned;
        if let Some(connection) = &inner.running_on {
            connection.interrupt();
        }
        true
    }
}

/// The call holds its connection; dropping this, before the connection is released,
/// detaches it.
struct Started<'a> {
    call: &'a Call,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.call.inner.lock().running_on = None;
    }
}

/// Abandons a read whose caller went away, so it stops holding a connection and a thread.
/// Writes have no such guard: a write whose caller is gone may still commit (the service
/// runs writes in tasks that outlive their callers); only a reported timeout abandons one.
struct AbandonOnDrop<'a>(&'a Call);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// The result of a call whose caller already gave up; nobody reads it.
fn abandoned() -> RepoError {
    RepoError::Unavailable("sqlite call abandoned by its caller".into())
}

/// A read handed to a reader thread: its connection, or the error opening it.
type ReadJob = Box<dyn FnOnce(Result<&Connection, &RepoError>) + Send>;

/// The reader threads and their queue. Dropping this lets the threads finish what is
/// queued and exit, closing their connections.
struct ReaderThreads {
    path: PathBuf,
    max_threads: usize,
    queue: Arc<ReadQueue>,
}

struct ReadQueue {
    state: Mutex<ReadQueueState>,
    job_queued: Condvar,
}

#[derive(Default)]
struct ReadQueueState {
    jobs: std::collections::VecDeque<ReadJob>,
    threads: usize,
    idle: usize,
    closed: bool,
}

impl ReaderThreads {
    fn new(path: PathBuf, max_threads: usize) -> Self {
        let queue = ReadQueue { state: Mutex::new(ReadQueueState::default()), job_queued: Condvar::new() };
        ReaderThreads { path, max_threads: max_threads.max(1), queue: Arc::new(queue) }
    }

    fn submit(&self, job: ReadJob) -> Result<(), RepoError> {
        let mut state = self.queue.state.lock();
        // Queued reads beyond the idle threads' number would wait for a busy one.
        if state.jobs.len() >= state.idle && state.threads < self.max_threads {
            let (queue, path) = (self.queue.clone(), self.path.clone());
            std::thread::Builder::new()
                .name("sqlite-reader".into())
                .spawn(move || serve_reads(&queue, &path))
                .map_err(|e| RepoError::Unavailable(format!("sqlite reader thread: {e}")))?;
            state.threads += 1;
        }
        state.jobs.push_back(job);
        drop(state);
        self.queue.job_queued.notify_one();
        Ok(())
    }

    /// (threads, idle threads).
    fn counts(&self) -> (usize, usize) {
        let state = self.queue.state.lock();
        (state.threads, state.idle)
    }
}

impl Drop for ReaderThreads {
    fn drop(&mut self) {
        self.queue.state.lock().closed = true;
        self.queue.job_queued.notify_all();
    }
}

/// A reader thread's life: open a connection, then run queued reads until the store is
/// dropped. A thread that cannot open its connection hands the error to every queued read,
/// so it surfaces at once as their error rather than as timeouts, and exits; the next read
/// starts another thread and tries again.
fn serve_reads(queue: &ReadQueue, path: &Path) {
    struct Leaving<'a>(&'a ReadQueue);
    impl Drop for Leaving<'_> {
        // Also on a panic in a read, so the thread count stays true.
        fn drop(&mut self) {
            self.0.state.lock().threads -= 1;
        }
    }
    let _leaving = Leaving(queue);
    let conn = match open_reader(path) {
        Ok(conn) => conn,
        Err(e) => {
            let jobs = std::mem::take(&mut queue.state.lock().jobs);
            for job in jobs {
                job(Err(&e));
            }
            return;
        }
    };
    let mut state = queue.state.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            drop(state);
            job(Ok(&conn));
            state = queue.state.lock();
        } else if state.closed {
            return;
        } else {
            state.idle += 1;
            queue.job_queued.wait(&mut state);
            state.idle -= 1;
        }
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
    // busy_timeout first: switching to WAL needs a lock another opener may hold. SQLite
    // answers BUSY without consulting the busy handler when waiting could deadlock (two
    // openers switching at once), so that case is retried here.
    let configure = "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;";
    let mut attempt = 0;
    loop {
        match conn.execute_batch(configure) {
            Ok(()) => return Ok(conn),
            Err(e) if attempt < 20 && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(unavailable("configure writer", e)),
        }
    }
}

/// One reader per core, but two even on one core, so that a slow read (a cold page, a
/// runaway query awaiting its interrupt) does not hold up every other read.
fn reader_threads() -> usize {
    crate::cores().max(2)
}

fn open_reader(path: &Path) -> Result<Connection, RepoError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| unavailable("open reader", e))?;
    // 2 MiB of pages each (the b-tree's upper levels): every reader caches its own copy of
    // the pages it reads, and at 16 MiB eight readers took 128 MiB under a session-check load
    // over 100k sessions (bench/memory.sh); what they miss comes from the OS page cache.
    // 1 MiB and 4 MiB read 100k random sessions equally fast there.
    conn.execute_batch("PRAGMA busy_timeout = 1000; PRAGMA cache_size = -2000;")
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
        verified: row.get(at + 9)?,
        mfa_enabled: row.get(at + 10)?,
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

/// Bumps the aggregate's sequence (locking it: SQLite has one writer anyway) and writes the
/// row with it.
fn insert_event(tx: &rusqlite::Transaction<'_>, event: &OutboxEvent) -> rusqlite::Result<usize> {
    let aggregate = event.aggregate_id.as_bytes().as_slice();
    let sequence: i64 = tx
        .prepare_cached(
            "INSERT INTO outbox_sequences (aggregate_id, last) VALUES (?1, 1) \
             ON CONFLICT (aggregate_id) DO UPDATE SET last = last + 1 RETURNING last",
        )?
        .query_row([aggregate], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO outbox (id, aggregate_id, event_type, payload, created_at, sequence, partition, traceparent) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        event.id.as_bytes().as_slice(),
        aggregate,
        event.event_type,
        event.payload,
        event.created_at.0,
        sequence,
        outbox_partition(event.aggregate_id),
        event.traceparent,
    ])
}

fn stored_event(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        aggregate_id: uuid::Uuid::from_bytes(blob(r, 1)?),
        event_type: r.get(2)?,
        payload: r.get(3)?,
        created_at: Timestamp(r.get(4)?),
        sequence: r.get::<_, i64>(5)? as u64,
        traceparent: r.get(6)?,
    })
}

fn audit_entry(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        event_type: r.get(1)?,
        subject: uuid::Uuid::from_bytes(blob(r, 2)?),
        actor: r.get(3)?,
        time: Timestamp(r.get(4)?),
        data: r.get(5)?,
    })
}

/// `?N, ?N+1, …` for an IN list of `count` values starting at placeholder `from`.
fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

/// After an UPDATE/DELETE guarded by version touched no row: was it the version or the row?
fn missing_or_conflict(tx: &rusqlite::Transaction<'_>, id: UserId) -> RepoError {
    match tx.query_row("SELECT 1 FROM users WHERE id = ?1", [id.as_bytes().as_slice()], |_| Ok(())).optional() {
        Ok(Some(())) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => map_err(e),
    }
}

/// The versioned user update with its session revocations and event, inside `tx`.
fn update_user_in(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    expected: Version,
    revoke: SessionRevocation,
    event: &OutboxEvent,
) -> Result<(), RepoError> {
    let changed = tx
        .prepare_cached(
            "UPDATE users SET email = ?2, name = ?3, password_hash = ?4, role = ?5, status = ?6, \
             version = ?7, updated_at = ?8, verified = ?10 WHERE id = ?1 AND version = ?9",
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
                expected.0 as i64,
                user.verified
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
    insert_event(tx, event).map_err(map_err)?;
    Ok(())
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
            readers: ReaderThreads::new(path, options.max_connections.min(reader_threads())),
            query_timeout: options.query_timeout,
        })
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer, off the async workers.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, RepoError> + Send + 'static,
    ) -> Result<T, RepoError> {
        let writer = self.writer.clone();
        let call = Arc::new(Call::default());
        let running = call.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock();
            let _started = running.start(conn.get_interrupt_handle())?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
            let out = f(&tx)?;
            if !running.begin_commit() {
                // Dropping `tx` rolls back.
                return Err(abandoned());
            }
            tx.commit().map_err(map_err)?;
            Ok(out)
        });
        self.bounded(&call, async { task.await.map_err(|e| RepoError::Internal(format!("sqlite write task: {e}")))? })
            .await
    }

    /// Runs `f` on a reader thread's connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, RepoError> {
        let call = Arc::new(Call::default());
        let _abandon_if_dropped = AbandonOnDrop(&call);
        let (reply, replied) = tokio::sync::oneshot::channel();
        let running = call.clone();
        self.readers.submit(Box::new(move |conn| {
            let out = conn.map_err(RepoError::clone).and_then(|conn| {
                let _started = running.start(conn.get_interrupt_handle())?;
                f(conn).map_err(map_err)
            });
            let _ = reply.send(out);
        }))?;
        self.bounded(&call, async {
            replied.await.map_err(|_| RepoError::Internal("sqlite reader thread dropped a read".into()))?
        })
        .await
    }

    /// Awaits `task` under the query timeout, abandoning `call` when it fires.
    async fn bounded<T>(&self, call: &Call, task: impl Future<Output = Result<T, RepoError>>) -> Result<T, RepoError> {
        let mut task = std::pin::pin!(task);
        // The inner Ok marks "finished in time", so the only Err is with_timeout's own,
        // the error every adapter reports for a timeout.
        match crate::with_timeout(self.query_timeout, async { Ok((&mut task).await) }).await {
            Ok(finished) => finished,
            Err(timed_out) => {
                if call.abandon() {
                    return Err(timed_out);
                }
                task.await
            }
        }
    }
}

fn search_params(params: &[crate::user_search::Param]) -> Vec<rusqlite::types::Value> {
    use crate::user_search::Param;
    use rusqlite::types::Value;
    params
        .iter()
        .map(|p| match p {
            Param::Text(t) => Value::Text(t.clone()),
            Param::Int(i) => Value::Integer(*i),
            Param::Id(id) => Value::Blob(id.as_bytes().to_vec()),
        })
        .collect()
}

fn users(c: &Connection, sql: &'static str, params: impl rusqlite::Params) -> rusqlite::Result<Vec<User>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| user_from_row(r, 0))?;
    rows.collect()
}

impl SqliteStore {
    /// The users a statement of `user_search` selects.
    async fn built_users(&self, built: crate::user_search::Built) -> Result<Vec<User>, RepoError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&built.sql)?;
            let rows = stmt.query_map(params_from_iter(search_params(&built.params)), |r| user_from_row(r, 0))?;
            rows.collect()
        })
        .await
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
                "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
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
                    user.updated_at.0,
                    user.verified
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
        let key = key.as_str().to_owned();
        self.read(move |c| {
            c.prepare_cached(sql::IDEMPOTENCY_RECORD)?
                .query_row([key], |r| {
                    Ok(IdempotencyRecord {
                        key: IdempotencyKey::from_trusted(r.get(0)?),
                        fingerprint: blob(r, 1)?,
                        user_id: UserId::from_bytes(blob(r, 2)?),
                        created_at: Timestamp(r.get(3)?),
                    })
                })
                .optional()
        })
        .await
    }

    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        self.write(move |tx| {
            let gone = tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?1", [before.0]).map_err(map_err)?;
            Ok(gone as u64)
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.read(move |c| {
            c.prepare_cached(sql::USER_BY_ID)?.query_row([id.as_bytes().as_slice()], |r| user_from_row(r, 0)).optional()
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        let email = email.as_str().to_owned();
        self.read(move |c| c.prepare_cached(sql::USER_BY_EMAIL)?.query_row([email], |r| user_from_row(r, 0)).optional())
            .await
    }

    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (user, event) = (user.clone(), event.clone());
        self.write(move |tx| update_user_in(tx, &user, expected, revoke, &event)).await
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
        if crate::user_search::needs_list_page(query) {
            return self
                .built_users(crate::user_search::list_page(
                    crate::user_search::Dialect::Sqlite,
                    USER_READ_COLUMNS,
                    query,
                ))
                .await;
        }
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let limit = i64::from(query.limit);
        let email = query.email.as_ref().map(|email| email.as_str().to_owned());
        self.read(move |c| match email {
            Some(email) => users(c, sql::LIST_USERS_BY_EMAIL, params![after.as_slice(), limit, email]),
            None => users(c, sql::LIST_USERS_PAGE, params![after.as_slice(), limit]),
        })
        .await
    }

    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, RepoError> {
        self.built_users(crate::user_search::select(crate::user_search::Dialect::Sqlite, USER_READ_COLUMNS, search))
            .await
    }

    async fn count_users(&self, predicate: Option<&UserPredicate>) -> Result<u64, RepoError> {
        let built = crate::user_search::count(crate::user_search::Dialect::Sqlite, predicate);
        self.read(move |c| {
            c.prepare_cached(&built.sql)?
                .query_row(params_from_iter(search_params(&built.params)), |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        })
        .await
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
        let token_hash = token_hash.0;
        self.read(move |c| {
            c.prepare_cached(sql::SESSION_WITH_USER)?
                .query_row([token_hash.as_slice()], |r| Ok((session_from_row(r)?, user_from_row(r, 6)?)))
                .optional()
        })
        .await
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
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::SESSIONS_OF_USER)?;
            let rows = stmt.query_map([user_id.as_bytes().as_slice()], session_from_row)?;
            rows.collect()
        })
        .await
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
        ("account_token", sql::ACCOUNT_TOKEN_BY_HASH, vec![Blob(vec![0; 32])]),
    ]
    .into_iter()
    .chain(groups::hot_queries())
    .collect()
}

#[async_trait]
impl OutboxRepository for SqliteStore {
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError> {
        let event = event.clone();
        self.write(move |tx| insert_event(tx, &event).map(drop).map_err(map_err)).await
    }

    async fn pending_events(&self, partitions: &[u16], limit: u32) -> Result<Vec<StoredEvent>, RepoError> {
        let wanted: Vec<u16> = partitions.to_vec();
        self.read(move |c| {
            if wanted.is_empty() || limit == 0 {
                return Ok(Vec::new());
            }
            // Scanned in id order from the partial index, other partitions skipped: with
            // relays sharing the partitions that reads about relays × limit rows.
            let mut aggregates: Vec<[u8; 16]> = Vec::new();
            {
                let mut stmt = c.prepare_cached(sql::PENDING_AGGREGATES)?;
                let mut rows = stmt.query([limit.saturating_mul(OUTBOX_PARTITIONS as u32)])?;
                while let Some(r) = rows.next()? {
                    let partition: i64 = r.get(1)?;
                    let id: [u8; 16] = blob(r, 0)?;
                    if wanted.contains(&(partition as u16)) && !aggregates.contains(&id) {
                        aggregates.push(id);
                        if aggregates.len() >= limit as usize {
                            break;
                        }
                    }
                }
            }
            if aggregates.is_empty() {
                return Ok(Vec::new());
            }
            let q = format!(
                "SELECT {} FROM outbox WHERE published_at IS NULL AND aggregate_id IN ({}) \
                 ORDER BY aggregate_id, sequence LIMIT ?1",
                sql::EVENT_COLUMNS,
                placeholders(2, aggregates.len())
            );
            let mut stmt = c.prepare(&q)?;
            let mut values: Vec<rusqlite::types::Value> = vec![rusqlite::types::Value::Integer(i64::from(limit))];
            values.extend(aggregates.iter().map(|a| rusqlite::types::Value::Blob(a.to_vec())));
            let rows = stmt.query_map(rusqlite::params_from_iter(values), stored_event)?;
            rows.collect()
        })
        .await
    }

    async fn mark_published(&self, ids: &[uuid::Uuid], at: Timestamp) -> Result<(), RepoError> {
        let ids = ids.to_vec();
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached("UPDATE outbox SET published_at = ?2 WHERE id = ?1").map_err(map_err)?;
            for id in &ids {
                stmt.execute(params![id.as_bytes().as_slice(), at.0]).map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM outbox WHERE id IN \
                 (SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < ?1 LIMIT ?2)",
                params![before.0, limit],
            )
            .map(|n| n as u64)
            .map_err(map_err)
        })
        .await
    }

    async fn outbox_backlog(&self) -> Result<Backlog, RepoError> {
        self.read(|c| {
            c.query_row("SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL", [], |r| {
                Ok(Backlog { count: r.get::<_, i64>(0)? as u64, oldest: r.get::<_, Option<i64>>(1)?.map(Timestamp) })
            })
        })
        .await
    }

    async fn relay_leases(&self) -> Result<Vec<RelayLease>, RepoError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT name, owner, expires_at FROM relay_leases ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(RelayLease { name: r.get(0)?, owner: r.get(1)?, expires_at: Timestamp(r.get(2)?) })
            })?;
            rows.collect()
        })
        .await
    }

    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE relay_leases SET owner = ?2, expires_at = ?3 \
                 WHERE name = ?1 AND (owner = ?2 OR expires_at < ?4)",
            )
            .and_then(|mut s| s.execute(params![name, owner, until.0, now.0]))
            .map(|n| n == 1)
            .map_err(map_err)
        })
        .await
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE relay_leases SET owner = '', expires_at = 0 WHERE name = ?1 AND owner = ?2",
                params![name, owner],
            )
            .map(drop)
            .map_err(map_err)
        })
        .await
    }

    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget_before: Timestamp) -> Result<(), RepoError> {
        let owner = owner.to_owned();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO relay_leases (name, owner, expires_at) VALUES ('member:' || ?1, ?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
                params![owner, until.0],
            )
            .map_err(map_err)?;
            tx.execute(
                "DELETE FROM relay_leases WHERE name LIKE 'member:%' AND expires_at < ?1",
                params![forget_before.0],
            )
            .map(drop)
            .map_err(map_err)
        })
        .await
    }
}

#[async_trait]
impl AuditRepository for SqliteStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<u64, RepoError> {
        let entries = entries.to_vec();
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit_log (id, event_type, subject, actor, time, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
                )
                .map_err(map_err)?;
            let mut added = 0;
            for e in &entries {
                added += stmt
                    .execute(params![
                        e.id.as_bytes().as_slice(),
                        e.event_type,
                        e.subject.as_bytes().as_slice(),
                        e.actor,
                        e.time.0,
                        e.data
                    ])
                    .map_err(map_err)? as u64;
            }
            Ok(added)
        })
        .await
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RepoError> {
        let query = query.clone();
        self.read(move |c| {
            use rusqlite::types::Value;
            let mut sql =
                String::from("SELECT id, event_type, subject, actor, time, data FROM audit_log WHERE id > ?1");
            let mut values = vec![Value::Blob(query.id_floor().as_bytes().to_vec())];
            if let Some(subject) = query.subject {
                values.push(Value::Blob(subject.as_bytes().to_vec()));
                sql.push_str(&format!(" AND subject = ?{}", values.len()));
            }
            if let Some(t) = &query.event_type {
                values.push(Value::Text(t.clone()));
                sql.push_str(&format!(" AND event_type = ?{}", values.len()));
            }
            if let Some(since) = query.since {
                values.push(Value::Integer(since.0));
                sql.push_str(&format!(" AND time >= ?{}", values.len()));
            }
            values.push(Value::Integer(i64::from(query.limit)));
            sql.push_str(&format!(" ORDER BY id LIMIT ?{}", values.len()));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), audit_entry)?;
            rows.collect()
        })
        .await
    }

    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        let floor = AuditQuery { since: Some(before), ..AuditQuery::default() }.id_floor();
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE id < ?1 LIMIT ?2)",
                params![floor.as_bytes().as_slice(), limit],
            )
            .map(|n| n as u64)
            .map_err(map_err)
        })
        .await
    }
}

fn endpoint_from_row(r: &Row<'_>) -> rusqlite::Result<WebhookEndpoint> {
    EndpointRow {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        url: r.get(1)?,
        events: r.get(2)?,
        description: r.get(3)?,
        enabled: r.get(4)?,
        disabled_reason: r.get(5)?,
        secrets: r.get(6)?,
        rate_limit: r.get(7)?,
        failing_since: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    }
    .into_domain()
    .map_err(|e| corrupt(&e))
}

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<WebhookDelivery> {
    DeliveryRow {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        endpoint_id: uuid::Uuid::from_bytes(blob(r, 1)?),
        event_id: r.get(2)?,
        event: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        next_attempt_at: r.get(6)?,
        last_status: r.get(7)?,
        last_error: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    }
    .into_domain()
    .map_err(|e| corrupt(&e))
}

fn attempt_from_row(r: &Row<'_>) -> rusqlite::Result<WebhookAttempt> {
    Ok(WebhookAttempt {
        delivery_id: uuid::Uuid::from_bytes(blob(r, 0)?),
        attempt: r.get(1)?,
        at: Timestamp(r.get(2)?),
        status: r.get(3)?,
        error: r.get(4)?,
        duration_ms: r.get(5)?,
    })
}

fn write_endpoint(tx: &rusqlite::Transaction<'_>, sql: &str, e: &WebhookEndpoint) -> rusqlite::Result<usize> {
    let r = EndpointRow::from_domain(e);
    tx.prepare_cached(sql)?.execute(params![
        r.id.as_bytes().as_slice(),
        r.url,
        r.events,
        r.description,
        r.enabled,
        r.disabled_reason,
        r.secrets,
        r.rate_limit,
        r.failing_since,
        r.created_at,
        r.updated_at
    ])
}

#[async_trait]
impl WebhookRepository for SqliteStore {
    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), RepoError> {
        let endpoint = endpoint.clone();
        self.write(move |tx| {
            let sql = concat!(
                "INSERT INTO webhook_endpoints (",
                endpoint_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            );
            write_endpoint(tx, sql, &endpoint).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn webhook_endpoint(&self, id: uuid::Uuid) -> Result<Option<WebhookEndpoint>, RepoError> {
        self.read(move |c| {
            c.prepare_cached(concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE id = ?1"))?
                .query_row([id.as_bytes().as_slice()], endpoint_from_row)
                .optional()
        })
        .await
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints ORDER BY id"))?;
            let rows = stmt.query_map([], endpoint_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        let endpoint = endpoint.clone();
        let event = event.cloned();
        self.write(move |tx| {
            let sql = "UPDATE webhook_endpoints SET url = ?2, events = ?3, description = ?4, enabled = ?5, \
                       disabled_reason = ?6, secrets = ?7, rate_limit = ?8, failing_since = ?9, created_at = ?10, \
                       updated_at = ?11 WHERE id = ?1";
            if write_endpoint(tx, sql, &endpoint).map_err(map_err)? == 0 {
                return Err(RepoError::NotFound);
            }
            if let Some(event) = &event {
                insert_event(tx, event).map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_webhook_endpoint(&self, id: uuid::Uuid) -> Result<bool, RepoError> {
        self.write(move |tx| {
            // Deliveries and their attempts go with it (ON DELETE CASCADE).
            let n = tx.execute("DELETE FROM webhook_endpoints WHERE id = ?1", [id.as_bytes().as_slice()]);
            Ok(n.map_err(map_err)? > 0)
        })
        .await
    }

    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<u64, RepoError> {
        let rows: Vec<DeliveryRow> = deliveries.iter().map(DeliveryRow::from_domain).collect();
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(concat!(
                    "INSERT INTO webhook_deliveries (",
                    delivery_columns!(),
                    ") \
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 \
                     WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?2) ON CONFLICT DO NOTHING"
                ))
                .map_err(map_err)?;
            let mut added = 0;
            for r in &rows {
                added += stmt
                    .execute(params![
                        r.id.as_bytes().as_slice(),
                        r.endpoint_id.as_bytes().as_slice(),
                        r.event_id,
                        r.event,
                        r.status,
                        r.attempts,
                        r.next_attempt_at,
                        r.last_status,
                        r.last_error,
                        r.created_at,
                        r.updated_at
                    ])
                    .map_err(map_err)? as u64;
            }
            Ok(added)
        })
        .await
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepoError> {
        // One writer: reading and moving the due rows in one statement is the claim.
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(concat!(
                    "UPDATE webhook_deliveries SET next_attempt_at = ?2 WHERE id IN \
                     (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?1 \
                      ORDER BY next_attempt_at LIMIT ?3) RETURNING ",
                    delivery_columns!()
                ))
                .map_err(map_err)?;
            let rows = stmt.query_map(params![now.0, lease_until.0, limit], delivery_from_row).map_err(map_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(map_err)
        })
        .await
    }

    async fn record_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), RepoError> {
        let r = DeliveryRow::from_domain(delivery);
        let attempt = attempt.cloned();
        self.write(move |tx| {
            let updated = tx
                .prepare_cached(
                    "UPDATE webhook_deliveries SET status = ?2, attempts = ?3, next_attempt_at = ?4, \
                     last_status = ?5, last_error = ?6, updated_at = ?7 WHERE id = ?1",
                )
                .map_err(map_err)?
                .execute(params![
                    r.id.as_bytes().as_slice(),
                    r.status,
                    r.attempts,
                    r.next_attempt_at,
                    r.last_status,
                    r.last_error,
                    r.updated_at
                ])
                .map_err(map_err)?;
            // Gone with its endpoint meanwhile: nothing to log against.
            if let (1.., Some(a)) = (updated, &attempt) {
                tx.prepare_cached(concat!(
                    "INSERT INTO webhook_attempts (",
                    attempt_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ))
                .map_err(map_err)?
                .execute(params![
                    a.delivery_id.as_bytes().as_slice(),
                    a.attempt,
                    a.at.0,
                    a.status,
                    a.error,
                    a.duration_ms
                ])
                .map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn webhook_delivery(
        &self,
        endpoint_id: uuid::Uuid,
        id: uuid::Uuid,
    ) -> Result<Option<WebhookDelivery>, RepoError> {
        self.read(move |c| {
            c.prepare_cached(concat!(
                "SELECT ",
                delivery_columns!(),
                " FROM webhook_deliveries WHERE id = ?1 AND endpoint_id = ?2"
            ))?
            .query_row(params![id.as_bytes().as_slice(), endpoint_id.as_bytes().as_slice()], delivery_from_row)
            .optional()
        })
        .await
    }

    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError> {
        let q = query.clone();
        self.read(move |c| {
            let after = q.after.unwrap_or(uuid::Uuid::nil());
            let status = q.status.map(|s| s.as_str());
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                delivery_columns!(),
                " FROM webhook_deliveries WHERE endpoint_id = ?1 AND id > ?2 \
                 AND (?3 IS NULL OR status = ?3) ORDER BY id LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![q.endpoint_id.as_bytes().as_slice(), after.as_bytes().as_slice(), status, q.limit],
                delivery_from_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn webhook_attempts(&self, delivery_id: uuid::Uuid) -> Result<Vec<WebhookAttempt>, RepoError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                attempt_columns!(),
                " FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map([delivery_id.as_bytes().as_slice()], attempt_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn replay_delivery(
        &self,
        endpoint_id: uuid::Uuid,
        id: uuid::Uuid,
        now: Timestamp,
    ) -> Result<bool, RepoError> {
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?3, \
                     updated_at = ?3 WHERE id = ?1 AND endpoint_id = ?2 AND status <> 'pending'",
                    params![id.as_bytes().as_slice(), endpoint_id.as_bytes().as_slice(), now.0],
                )
                .map_err(map_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn replay_failed_deliveries(
        &self,
        endpoint_id: uuid::Uuid,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, RepoError> {
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?3, \
                     updated_at = ?3 WHERE endpoint_id = ?1 AND status = 'failed' AND created_at >= ?2",
                    params![endpoint_id.as_bytes().as_slice(), since.0, now.0],
                )
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

fn totp_from_row(r: &Row<'_>) -> rusqlite::Result<TotpRecord> {
    let secret: String = r.get(1)?;
    let codes: String = r.get(4)?;
    Ok(TotpRecord {
        user_id: UserId::from_bytes(blob(r, 0)?),
        secret: TotpSecret::from_base32(&secret).ok_or_else(|| corrupt("totp secret"))?,
        enabled: r.get(2)?,
        last_step: r.get(3)?,
        recovery_hashes: crate::split_recovery_hashes(&codes),
        version: r.get(5)?,
        created_at: Timestamp(r.get(6)?),
        updated_at: Timestamp(r.get(7)?),
    })
}

const TOTP_COLUMNS: &str = "user_id, secret, enabled, last_step, recovery_codes, version, created_at, updated_at";

#[async_trait]
impl MfaRepository for SqliteStore {
    async fn totp_of(&self, user_id: UserId) -> Result<Option<TotpRecord>, RepoError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT user_id, secret, enabled, last_step, recovery_codes, version, created_at, \
                 updated_at FROM user_totp WHERE user_id = ?1",
            )?
            .query_row([user_id.as_bytes().as_slice()], totp_from_row)
            .optional()
        })
        .await
    }

    async fn save_totp(
        &self,
        record: &TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        let (t, event) = (record.clone(), event.cloned());
        self.write(move |tx| {
            let id = t.user_id.as_bytes().as_slice();
            let current: Option<(bool, i64)> = tx
                .query_row("SELECT enabled, version FROM user_totp WHERE user_id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(map_err)?;
            match (expected, current) {
                (None, Some((true, _))) => return Err(RepoError::VersionConflict),
                (Some(_), None) => return Err(RepoError::NotFound),
                (Some(v), Some((_, version))) if v != version => return Err(RepoError::VersionConflict),
                _ => {}
            }
            tx.execute("DELETE FROM user_totp WHERE user_id = ?1", [id]).map_err(map_err)?;
            tx.execute(
                &format!("INSERT INTO user_totp ({TOTP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    id,
                    t.secret.to_base32(),
                    t.enabled,
                    t.last_step,
                    t.recovery_hashes.join(","),
                    t.version,
                    t.created_at.0,
                    t.updated_at.0
                ],
            )
            .map_err(map_err)?;
            // Guarded so the code acceptances of every MFA login do not rewrite the user row.
            tx.execute("UPDATE users SET mfa_enabled = ?2 WHERE id = ?1 AND mfa_enabled <> ?2", params![id, t.enabled])
                .map_err(map_err)?;
            if let Some(event) = &event {
                insert_event(tx, event).map_err(map_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError> {
        let event = event.clone();
        self.write(move |tx| {
            let id = user_id.as_bytes().as_slice();
            let version: Option<i64> = tx
                .query_row("SELECT version FROM user_totp WHERE user_id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            match (version, expected) {
                (None, _) => return Err(RepoError::NotFound),
                (Some(v), Some(e)) if v != e => return Err(RepoError::VersionConflict),
                _ => {}
            }
            tx.execute("DELETE FROM user_totp WHERE user_id = ?1", [id]).map_err(map_err)?;
            tx.execute("UPDATE users SET mfa_enabled = 0 WHERE id = ?1", [id]).map_err(map_err)?;
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }
}

fn account_token_from_row(r: &Row<'_>) -> rusqlite::Result<AccountToken> {
    let purpose: String = r.get(2)?;
    Ok(AccountToken {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        user_id: UserId::from_bytes(blob(r, 1)?),
        purpose: TokenPurpose::parse(&purpose).ok_or_else(|| corrupt("token purpose"))?,
        token_hash: TokenHash(blob(r, 3)?),
        binding: blob(r, 4)?,
        created_at: Timestamp(r.get(5)?),
        expires_at: Timestamp(r.get(6)?),
        used_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
        new_email: r.get::<_, Option<String>>(8)?.map(Email::from_trusted),
    })
}

fn mail_from_row(r: &Row<'_>) -> rusqlite::Result<QueuedMail> {
    let status: String = r.get(4)?;
    Ok(QueuedMail {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        template: r.get(1)?,
        recipient: Email::from_trusted(r.get(2)?),
        params: r.get(3)?,
        status: MailStatus::parse(&status).ok_or_else(|| corrupt("mail status"))?,
        attempts: r.get::<_, i64>(5)? as u32,
        next_attempt_at: Timestamp(r.get(6)?),
        last_error: r.get(7)?,
        created_at: Timestamp(r.get(8)?),
        updated_at: Timestamp(r.get(9)?),
    })
}

#[async_trait]
impl LifecycleRepository for SqliteStore {
    async fn issue_account_token(
        &self,
        token: &AccountToken,
        mails: &[QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (t, mails, event) = (token.clone(), mails.to_vec(), event.clone());
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM account_tokens WHERE user_id = ?1 AND purpose = ?2 AND used_at IS NULL",
                params![t.user_id.as_bytes().as_slice(), t.purpose.as_str()],
            )
            .map_err(map_err)?;
            tx.execute(
                "INSERT INTO account_tokens (id, user_id, purpose, token_hash, binding, created_at, expires_at, used_at, \
                 new_email) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    t.id.as_bytes().as_slice(),
                    t.user_id.as_bytes().as_slice(),
                    t.purpose.as_str(),
                    t.token_hash.0.as_slice(),
                    t.binding.as_slice(),
                    t.created_at.0,
                    t.expires_at.0,
                    t.used_at.map(|u| u.0),
                    t.new_email.as_ref().map(|e| e.as_str())
                ],
            )
            .map_err(map_err)?;
            for m in &mails {
            tx.execute(
                "INSERT INTO mail_queue (id, template, recipient, params, status, attempts, next_attempt_at, \
                 last_error, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    m.id.as_bytes().as_slice(),
                    m.template,
                    m.recipient.as_str(),
                    m.params,
                    m.status.as_str(),
                    m.attempts,
                    m.next_attempt_at.0,
                    m.last_error,
                    m.created_at.0,
                    m.updated_at.0
                ],
            )
            .map_err(map_err)?;
            }
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn account_token(&self, hash: &TokenHash) -> Result<Option<AccountToken>, RepoError> {
        let hash = *hash;
        self.read(move |c| {
            c.prepare_cached(sql::ACCOUNT_TOKEN_BY_HASH)?
                .query_row([hash.0.as_slice()], account_token_from_row)
                .optional()
        })
        .await
    }

    async fn redeem_account_token(
        &self,
        token_id: uuid::Uuid,
        purpose: TokenPurpose,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        at: Timestamp,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (user, event) = (user.clone(), event.clone());
        self.write(move |tx| {
            let used = tx
                .execute(
                    "UPDATE account_tokens SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL",
                    params![token_id.as_bytes().as_slice(), at.0],
                )
                .map_err(map_err)?;
            if used == 0 {
                return Err(RepoError::NotFound);
            }
            update_user_in(tx, &user, expected, revoke, &event)?;
            tx.execute(
                "DELETE FROM account_tokens WHERE user_id = ?1 AND purpose = ?2 AND used_at IS NULL",
                params![user.id.as_bytes().as_slice(), purpose.as_str()],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, RepoError> {
        // One writer: reading and moving the due rows in one statement is the claim.
        self.write(move |tx| {
            let sql = format!(
                "UPDATE mail_queue SET next_attempt_at = ?2 WHERE id IN \
                 (SELECT id FROM mail_queue WHERE status = 'pending' AND next_attempt_at <= ?1 \
                  ORDER BY next_attempt_at LIMIT ?3) RETURNING {}",
                sql::MAIL_COLUMNS
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(map_err)?;
            let rows = stmt.query_map(params![now.0, lease_until.0, limit], mail_from_row).map_err(map_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(map_err)
        })
        .await
    }

    async fn record_mail(&self, mail: &QueuedMail) -> Result<(), RepoError> {
        let m = mail.clone();
        self.write(move |tx| {
            tx.execute(
                "UPDATE mail_queue SET params = ?2, status = ?3, attempts = ?4, next_attempt_at = ?5, \
                 last_error = ?6, updated_at = ?7 WHERE id = ?1",
                params![
                    m.id.as_bytes().as_slice(),
                    m.params,
                    m.status.as_str(),
                    m.attempts,
                    m.next_attempt_at.0,
                    m.last_error,
                    m.updated_at.0
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.write(move |tx| {
            let tokens = tx
                .execute(
                    "DELETE FROM account_tokens WHERE id IN \
                     (SELECT id FROM account_tokens WHERE expires_at < ?1 LIMIT ?2)",
                    params![before.0, limit],
                )
                .map_err(map_err)?;
            let mails = tx
                .execute(
                    "DELETE FROM mail_queue WHERE id IN \
                     (SELECT id FROM mail_queue WHERE status <> 'pending' AND updated_at < ?1 LIMIT ?2)",
                    params![before.0, limit],
                )
                .map_err(map_err)?;
            Ok((tokens + mails) as u64)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), RepoError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        let plans = self
            .read(|c| {
                let searches = crate::user_search::sample_plans(crate::user_search::Dialect::Sqlite, USER_READ_COLUMNS)
                    .iter()
                    .map(|(name, built)| (*name, built.sql.as_str(), search_params(&built.params)));
                hot_queries()
                    .into_iter()
                    .chain(searches)
                    .map(|(name, sql, args)| {
                        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))?;
                        Ok((name, sql, rows.collect::<rusqlite::Result<Vec<String>>>()?))
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        plans
            .into_iter()
            .map(|(name, sql, lines)| {
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
        let (readers, idle) = self.readers.counts();
        // +1: the writer.
        PoolStats { size: readers as u64 + 1, idle: idle as u64, ..PoolStats::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    /// Counts to 10^9: minutes of work unless interrupted.
    const RUNAWAY: &str =
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1000000000) SELECT count(*) FROM c";

    /// A store whose calls time out after 100 ms, with one reader connection, so a read
    /// that kept its connection after timing out would starve the next one.
    async fn impatient_store(dir: &TempDir) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path.join("strata.db").display());
        let options =
            StoreOptions { query_timeout: Duration::from_millis(100), max_connections: 1, ..StoreOptions::new(url) };
        SqliteStore::open(&options).await.unwrap()
    }

    fn assert_timed_out<T: std::fmt::Debug>(outcome: Result<T, RepoError>) {
        match outcome {
            Err(RepoError::Unavailable(msg)) => assert!(msg.contains("timed out"), "{msg}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    fn insert_key(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<(), RepoError> {
        tx.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, user_id, created_at) VALUES (?1, ?2, ?3, 0)",
            params![key, [0u8; 32].as_slice(), [0u8; 16].as_slice()],
        )
        .map_err(map_err)?;
        Ok(())
    }

    async fn keys(store: &SqliteStore) -> Vec<String> {
        store
            .read(|c| {
                c.prepare("SELECT key FROM idempotency_keys ORDER BY key")?.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_runaway_read_is_interrupted_at_the_deadline() {
        let dir = TempDir::new();
        let store = impatient_store(&dir).await;
        assert_timed_out(store.read(|c| c.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))).await);
        // Interrupted, it gave its only connection back for the next read.
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn a_read_whose_caller_went_away_is_interrupted() {
        let dir = TempDir::new();
        let store = impatient_store(&dir).await;
        let runaway = store.read(|c| c.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0)));
        // The caller's own, shorter deadline drops the read mid-flight.
        assert!(tokio::time::timeout(Duration::from_millis(20), runaway).await.is_err());
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn a_write_interrupted_at_the_deadline_is_rolled_back() {
        let dir = TempDir::new();
        let store = impatient_store(&dir).await;
        let outcome = store
            .write(|tx| {
                insert_key(tx, "abandoned")?;
                tx.query_row(RUNAWAY, [], |r| r.get::<_, i64>(0)).map_err(map_err)
            })
            .await;
        assert_timed_out(outcome);
        // The single writer is free again for the next write, and nothing of the first one
        // is left.
        store.write(|tx| insert_key(tx, "next")).await.unwrap();
        assert_eq!(keys(&store).await, ["next"]);
    }

    #[tokio::test]
    async fn a_write_that_timed_out_between_statements_never_commits() {
        let dir = TempDir::new();
        let store = impatient_store(&dir).await;
        let (resume, paused) = std::sync::mpsc::channel::<()>();
        let outcome = store
            .write(move |tx| {
                insert_key(tx, "abandoned")?;
                // No statement runs while the caller times out, so there is nothing to
                // interrupt: only the check before committing can stop this write.
                let _ = paused.recv();
                Ok(())
            })
            .await;
        assert_timed_out(outcome);
        resume.send(()).unwrap();
        // Writes are serial: once the next one is done, the abandoned one has finished.
        store.write(|tx| insert_key(tx, "next")).await.unwrap();
        assert_eq!(keys(&store).await, ["next"]);
    }
}
