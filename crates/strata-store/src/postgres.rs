//! PostgreSQL adapter: tokio-postgres connections pooled by deadpool.
//!
//! Every statement is a constant prepared once per connection (`prepare_cached`), so the
//! hot path (`session_with_user`) costs one round trip. Writes that the ports declare
//! atomic run in one transaction each; unique violations are recognised by SQLSTATE 23505
//! plus the constraint name, which the schema names explicitly for that reason. Names
//! are never schema-qualified: the search path (e.g. `options=-csearch_path=…` in the
//! URL) decides where the tables live, which is how tests get a fresh schema each.
//!
//! TLS is not wired in yet (`NoTls`): use a local socket, a private network or a
//! TLS-terminating sidecar.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Transaction};
use strata_core::domain::{
    AuditEntry, AuditQuery, Backlog, DisplayName, Email, IdempotencyKey, IdempotencyRecord, OutboxEvent, PasswordHash,
    RelayLease, Role, Session, SessionId, StoredEvent, Timestamp, TokenHash, User, UserId, UserStatus, Version,
    outbox_partition,
};
use strata_core::error::RepoError;
use strata_core::ports::MfaRepository;
use strata_core::ports::{
    AuditRepository, OutboxRepository, PoolStats, QueryPlan, SessionRepository, SessionRevocation, Store,
    UserListQuery, UserPredicate, UserRepository, UserSearch,
};
use strata_core::totp::{TotpRecord, TotpSecret};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use strata_core::lifecycle::{AccountToken, MailStatus, QueuedMail, TokenPurpose};
use strata_core::ports::{LifecycleRepository, WebhookRepository};
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
        // Constraint and index names match the other backends (users_email,
        // sessions_token_hash, sessions_user_id) so EXPLAIN output reads the same everywhere.
        sql: "
        CREATE TABLE users (
            id            uuid PRIMARY KEY,
            email         text NOT NULL CONSTRAINT users_email UNIQUE,
            name          text NOT NULL,
            password_hash text NOT NULL,
            role          varchar(16) NOT NULL,
            status        varchar(16) NOT NULL,
            version       bigint NOT NULL,
            created_at    bigint NOT NULL,
            updated_at    bigint NOT NULL
        );

        CREATE TABLE sessions (
            id         uuid PRIMARY KEY,
            token_hash bytea NOT NULL CONSTRAINT sessions_token_hash UNIQUE,
            user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created_at bigint NOT NULL,
            expires_at bigint NOT NULL,
            revoked_at bigint
        );
        -- (user_id, id) rather than (user_id): sessions_of_user reads a user's sessions in id
        -- order straight from the index, as InnoDB and SQLite (WITHOUT ROWID) secondary
        -- indexes, which carry the primary key, already do on the other backends.
        CREATE INDEX sessions_user_id ON sessions (user_id, id);

        -- No foreign key: the record must outlive a deleted user, so a retried create
        -- still answers with what the first one did.
        CREATE TABLE idempotency_keys (
            key         text PRIMARY KEY,
            fingerprint bytea NOT NULL,
            user_id     uuid NOT NULL,
            created_at  bigint NOT NULL
        );

        CREATE TABLE outbox (
            id           uuid PRIMARY KEY,
            aggregate_id uuid NOT NULL,
            event_type   varchar(64) NOT NULL,
            payload      text NOT NULL,
            created_at   bigint NOT NULL,
            published_at bigint
        );
        -- The relay only ever looks for unpublished rows; a partial index stays as small
        -- as the backlog however large the table grows.
        CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
    ",
    },
    Migration {
        version: 2,
        name: "event relay: per-aggregate sequences, partitions and leases; audit log",
        sql: "
        ALTER TABLE outbox ADD COLUMN sequence bigint NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN partition smallint NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN traceparent text;
        -- Rows from before this migration: partition as strata_core::domain::outbox_partition
        -- computes it (the id's last byte mod 16), sequence = their order by id.
        UPDATE outbox SET partition = get_byte(uuid_send(aggregate_id), 15) % 16;
        UPDATE outbox o SET sequence = r.n FROM
            (SELECT id, row_number() OVER (PARTITION BY aggregate_id ORDER BY id) AS n FROM outbox) r
            WHERE o.id = r.id;
        CREATE INDEX outbox_pending_aggregate ON outbox (aggregate_id, sequence) WHERE published_at IS NULL;
        CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

        -- One row per aggregate holding its last sequence number. Bumping it row-locks the
        -- aggregate until commit, which is what makes sequence order commit order.
        CREATE TABLE outbox_sequences (
            aggregate_id uuid PRIMARY KEY,
            last         bigint NOT NULL
        );
        INSERT INTO outbox_sequences (aggregate_id, last)
            SELECT aggregate_id, max(sequence) FROM outbox GROUP BY aggregate_id;

        -- Partition leases (partition:N) and relay heartbeats (member:OWNER).
        CREATE TABLE relay_leases (
            name       text PRIMARY KEY,
            owner      text NOT NULL,
            expires_at bigint NOT NULL
        );
        INSERT INTO relay_leases (name, owner, expires_at)
            SELECT 'partition:' || n, '', 0 FROM generate_series(0, 15) n;

        CREATE TABLE audit_log (
            id         uuid PRIMARY KEY,
            event_type varchar(64) NOT NULL,
            subject    uuid NOT NULL,
            actor      text NOT NULL,
            time       bigint NOT NULL,
            data       text NOT NULL
        );
        CREATE INDEX audit_subject ON audit_log (subject, id);
        CREATE INDEX audit_type ON audit_log (event_type, id);
    ",
    },
    Migration {
        version: 3,
        name: "webhooks: endpoints, deliveries, attempt log",
        sql: "
        CREATE TABLE webhook_endpoints (
            id              uuid PRIMARY KEY,
            url             text NOT NULL,
            events          text NOT NULL,
            description     text NOT NULL,
            enabled         boolean NOT NULL,
            disabled_reason text,
            secrets         text NOT NULL,
            rate_limit      bigint NOT NULL,
            failing_since   bigint,
            created_at      bigint NOT NULL,
            updated_at      bigint NOT NULL
        );

        CREATE TABLE webhook_deliveries (
            id              uuid PRIMARY KEY,
            endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
            event_id        text NOT NULL,
            event           text NOT NULL,
            status          varchar(16) NOT NULL,
            attempts        bigint NOT NULL,
            next_attempt_at bigint NOT NULL,
            last_status     bigint,
            last_error      text,
            created_at      bigint NOT NULL,
            updated_at      bigint NOT NULL,
            -- A redelivered event is one delivery per endpoint, not two.
            CONSTRAINT webhook_deliveries_event UNIQUE (endpoint_id, event_id)
        );
        CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

        -- Own key: attempt numbers restart when a delivery is replayed.
        CREATE TABLE webhook_attempts (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
            attempt     bigint NOT NULL,
            at          bigint NOT NULL,
            status      bigint,
            error       text,
            duration_ms bigint NOT NULL
        );
        CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
    ",
    },
    Migration {
        version: 4,
        name: "account lifecycle: one-time tokens, mail queue",
        sql: "
        ALTER TABLE users ADD COLUMN verified boolean NOT NULL DEFAULT false;

        CREATE TABLE account_tokens (
            id         uuid PRIMARY KEY,
            user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            purpose    varchar(32) NOT NULL,
            token_hash bytea NOT NULL CHECK (length(token_hash) = 32),
            binding    bytea NOT NULL CHECK (length(binding) = 32),
            created_at bigint NOT NULL,
            expires_at bigint NOT NULL,
            used_at    bigint,
            CONSTRAINT account_tokens_hash UNIQUE (token_hash)
        );
        CREATE INDEX account_tokens_user ON account_tokens (user_id, purpose);
        CREATE INDEX account_tokens_expiry ON account_tokens (expires_at);

        CREATE TABLE mail_queue (
            id              uuid PRIMARY KEY,
            template        varchar(64) NOT NULL,
            recipient       text NOT NULL,
            params          text NOT NULL,
            status          varchar(16) NOT NULL,
            attempts        bigint NOT NULL,
            next_attempt_at bigint NOT NULL,
            last_error      text,
            created_at      bigint NOT NULL,
            updated_at      bigint NOT NULL
        );
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
            id           uuid PRIMARY KEY,
            display_name text NOT NULL,
            external_id  text,
            version      bigint NOT NULL,
            created_at   bigint NOT NULL,
            updated_at   bigint NOT NULL
        );
        CREATE INDEX user_groups_display_name ON user_groups (display_name, id);
        CREATE INDEX user_groups_external_id ON user_groups (external_id, id);

        -- One row per membership: a change touches only its rows.
        CREATE TABLE group_members (
            group_id uuid NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
            user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            PRIMARY KEY (group_id, user_id)
        );
        CREATE INDEX group_members_user ON group_members (user_id, group_id);

        -- The id a provisioning client (SCIM) knows a user by; most users have none.
        CREATE TABLE user_external_ids (
            user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
            external_id text NOT NULL
        );
        CREATE INDEX user_external_ids_external_id ON user_external_ids (external_id, user_id);

        -- SCIM clients' bearer tokens, as SHA-256 digests.
        CREATE TABLE provisioning_tokens (
            id         uuid PRIMARY KEY,
            name       text NOT NULL,
            token_hash bytea NOT NULL,
            created_at bigint NOT NULL,
            revoked_at bigint,
            CONSTRAINT provisioning_tokens_hash UNIQUE (token_hash)
        );
    ",
    },
    Migration {
        version: 6,
        name: "TOTP second factor",
        sql: "
        CREATE TABLE user_totp (
            user_id        uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
            secret         text NOT NULL,
            enabled        boolean NOT NULL,
            last_step      bigint,
            recovery_codes text NOT NULL,
            version        bigint NOT NULL,
            created_at     bigint NOT NULL,
            updated_at     bigint NOT NULL
        );
    ",
    },
    Migration {
        version: 7,
        name: "confirmed email changes, users' MFA flag",
        sql: "
        -- A copy of user_totp.enabled kept in the row every user read returns, so showing
        -- it costs no second query. Written in the transactions that write user_totp.
        ALTER TABLE users ADD COLUMN mfa_enabled boolean NOT NULL DEFAULT false;
        UPDATE users SET mfa_enabled = true WHERE id IN (SELECT user_id FROM user_totp WHERE enabled);

        -- The address an email-change token moves the account to (NULL for other purposes).
        ALTER TABLE account_tokens ADD COLUMN new_email text;
    ",
    },
    Migration {
        version: 8,
        name: "SCIM Enterprise User extension; users by last modification",
        sql: "
        CREATE TABLE user_enterprise (
            user_id         uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
            employee_number text,
            cost_center     text,
            organization    text,
            division        text,
            department      text,
            manager_id      text
        );
        CREATE INDEX user_enterprise_employee_number ON user_enterprise (employee_number, user_id);
        CREATE INDEX users_updated_at ON users (updated_at, id);
        -- SCIM's `userName sw …` as a range in byte order, whatever the database's collation
        -- (a prefix is not a range under a linguistic one).
        CREATE INDEX users_email_bytes ON users ((email COLLATE \"C\"));
    ",
    },
    Migration {
        version: 9,
        name: "shard catalog: the shard map, global email claims",
        sql: "
        -- Used only where this database is a sharded deployment's catalog.
        CREATE TABLE shard_map (
            logical integer PRIMARY KEY,
            shard   text NOT NULL,
            other   text,
            step    varchar(16),
            since   bigint,
            version bigint NOT NULL
        );
        CREATE TABLE email_claims (
            email   text PRIMARY KEY,
            user_id uuid NOT NULL,
            state   varchar(8) NOT NULL,
            at      bigint NOT NULL
        );
        CREATE INDEX email_claims_pending ON email_claims (at) WHERE state = 'pending';
    ",
    },
];

/// How long connect may spend migrating: longer than a query, because another instance
/// may hold the migration lock while it applies the same migrations.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Readiness checks must answer quickly even when the configured query timeout is long.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

mod sql {
    pub const USER_BY_ID: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE id = $1";
    pub const USER_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE email = $1";
    pub const SESSION_WITH_USER: &str = "SELECT s.id, s.user_id, s.token_hash, s.created_at, s.expires_at, s.revoked_at, \
         u.id, u.email, u.name, u.password_hash, u.role, u.status, u.version, u.created_at, u.updated_at, u.verified, u.mfa_enabled \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1";
    pub const SESSIONS_OF_USER: &str = "SELECT id, user_id, token_hash, created_at, expires_at, revoked_at \
         FROM sessions WHERE user_id = $1 ORDER BY id";
    /// `$1` is the nil UUID on the first page: it sorts before every UUIDv7.
    pub const LIST_USERS_PAGE: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE id > $1 ORDER BY id LIMIT $2";
    pub const LIST_USERS_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE email = $3 AND id > $1 ORDER BY id LIMIT $2";
    pub const IDEMPOTENCY_RECORD: &str =
        "SELECT key, fingerprint, user_id, created_at FROM idempotency_keys WHERE key = $1";
    /// The aggregates with the oldest unpublished rows in the given partitions (step 1 of
    /// `pending_events`), from the partial index in id order.
    pub const PENDING_AGGREGATES: &str = "SELECT aggregate_id FROM outbox \
         WHERE published_at IS NULL AND partition = ANY($1) ORDER BY id LIMIT $2";
    /// Step 2: all unpublished rows of those aggregates, each aggregate's in sequence order.
    pub const PENDING_EVENTS: &str = "SELECT id, aggregate_id, event_type, payload, created_at, sequence, traceparent \
         FROM outbox WHERE published_at IS NULL AND aggregate_id = ANY($1) ORDER BY aggregate_id, sequence LIMIT $2";

    pub const INSERT_USER: &str = "INSERT INTO users \
         (id, email, name, password_hash, role, status, version, created_at, updated_at, verified) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    pub const INSERT_IDEMPOTENCY: &str =
        "INSERT INTO idempotency_keys (key, fingerprint, user_id, created_at) VALUES ($1, $2, $3, $4)";
    /// Bumps the aggregate's sequence (row-locking it until commit) and writes the row with
    /// it, in one round trip.
    pub const INSERT_EVENT: &str = "WITH s AS (INSERT INTO outbox_sequences (aggregate_id, last) VALUES ($2, 1) \
         ON CONFLICT (aggregate_id) DO UPDATE SET last = outbox_sequences.last + 1 RETURNING last) \
         INSERT INTO outbox (id, aggregate_id, event_type, payload, created_at, sequence, partition, traceparent) \
         SELECT $1, $2, $3, $4, $5, s.last, $6, $7 FROM s";
    pub const UPDATE_USER: &str = "UPDATE users SET email = $2, name = $3, password_hash = $4, role = $5, status = $6, \
         version = $7, updated_at = $8, verified = $10 WHERE id = $1 AND version = $9";
    pub const USER_EXISTS: &str = "SELECT 1 FROM users WHERE id = $1";
    pub const ACCOUNT_TOKEN_BY_HASH: &str = "SELECT id, user_id, purpose, token_hash, binding, created_at, expires_at, \
         used_at, new_email FROM account_tokens WHERE token_hash = $1";
    pub const DELETE_UNUSED_TOKENS: &str =
        "DELETE FROM account_tokens WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL";
    pub const INSERT_ACCOUNT_TOKEN: &str = "INSERT INTO account_tokens \
         (id, user_id, purpose, token_hash, binding, created_at, expires_at, used_at, new_email) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    pub const USE_TOKEN: &str = "UPDATE account_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL";
    pub const INSERT_MAIL: &str = "INSERT INTO mail_queue (id, template, recipient, params, status, attempts, \
         next_attempt_at, last_error, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    /// SKIP LOCKED: concurrent dispatchers take disjoint rows instead of queueing.
    pub const CLAIM_MAILS: &str = "UPDATE mail_queue SET next_attempt_at = $2 WHERE id IN \
         (SELECT id FROM mail_queue WHERE status = 'pending' AND next_attempt_at <= $1 \
          ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING \
          id, template, recipient, params, status, attempts, next_attempt_at, last_error, created_at, updated_at";
    pub const RECORD_MAIL: &str = "UPDATE mail_queue SET params = $2, status = $3, attempts = $4, \
         next_attempt_at = $5, last_error = $6, updated_at = $7 WHERE id = $1";
    pub const PRUNE_TOKENS: &str =
        "DELETE FROM account_tokens WHERE id IN (SELECT id FROM account_tokens WHERE expires_at < $1 LIMIT $2)";
    pub const PRUNE_MAILS: &str = "DELETE FROM mail_queue WHERE id IN \
         (SELECT id FROM mail_queue WHERE status <> 'pending' AND updated_at < $1 LIMIT $2)";
    pub const REVOKE_ALL: &str = "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL";
    pub const REVOKE_ALL_EXCEPT: &str =
        "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL AND id <> $3";
    pub const DELETE_USER: &str = "DELETE FROM users WHERE id = $1";
    pub const DELETE_USER_AT_VERSION: &str = "DELETE FROM users WHERE id = $1 AND version = $2";
    pub const INSERT_SESSION: &str = "INSERT INTO sessions \
         (id, token_hash, user_id, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)";
    pub const REVOKE_SESSION: &str = "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
}

pub struct PostgresStore {
    pool: Pool,
    /// Shared connections for the hot point reads (see [`crate::pg_pipeline`]).
    pipeline: crate::pg_pipeline::Pipeline,
    query_timeout: Duration,
    acquire: crate::AcquireClock,
}

/// Shared connections of the pipelined reads: half the cores (the other half runs Strata
/// itself). One connection keeps one server backend busy; on 2 cores, 1 and 2 measured the
/// same (bench/RESULTS.md), 4 and 8 worse, as queries spread thinner and batch less.
fn pipeline_connections(max_connections: usize) -> usize {
    let cores = crate::cores();
    cores.div_ceil(2).clamp(1, 8).min(max_connections.max(1))
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// What a user read selects (`mfa_enabled` is written only with `user_totp`).
const USER_READ_COLUMNS: &str =
    "id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled";

fn search_params(params: &[crate::user_search::Param]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    use crate::user_search::Param;
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                Param::Text(t) => Box::new(t.clone()),
                Param::Int(i) => Box::new(*i),
                Param::Id(id) => Box::new(id.as_uuid()),
            }
        })
        .collect()
}

/// A driver error in words: tokio-postgres' own `Display` names only the error kind and
/// keeps the server's message in the source chain.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db, db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// Connection trouble, server shutdown, resource exhaustion and lock conflicts are worth
/// retrying later; everything else is a bug or a schema mismatch.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> RepoError {
    let Some(code) = e.code() else {
        return RepoError::Unavailable(format!("postgres: {}", describe(&e)));
    };
    let code = code.code();
    let transient = code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || matches!(code, "57014" | "40001" | "40P01" | "55P03") // cancelled, serialization, deadlock, lock
        || code == "25006"; // read-only transaction: the host is a standby now (a failover)
    if transient {
        RepoError::Unavailable(format!("postgres: {}", describe(&e)))
    } else {
        RepoError::Internal(format!("postgres: {}", describe(&e)))
    }
}

/// The constraint named by a unique violation, if that is what `e` is.
fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or(""))
}

fn pool_err(e: PoolError) -> RepoError {
    match e {
        PoolError::Backend(e) => RepoError::Unavailable(format!("postgres connect: {}", describe(&e))),
        other => RepoError::Unavailable(format!("postgres pool: {other}")),
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> RepoError {
    RepoError::Internal(format!("postgres: corrupt {what} in stored row: {detail}"))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, RepoError> {
    row.try_get(idx).map_err(|e| corrupt("column", describe(&e)))
}

fn bytes<const N: usize>(row: &Row, idx: usize) -> Result<[u8; N], RepoError> {
    let raw: &[u8] = get(row, idx)?;
    raw.try_into().map_err(|_| corrupt("binary column", format!("{} bytes, expected {N}", raw.len())))
}

fn version_param(v: Version) -> Result<i64, RepoError> {
    i64::try_from(v.0).map_err(|_| RepoError::Internal(format!("version {} does not fit a bigint", v.0)))
}

/// Reads the nine user columns starting at `at`.
fn user_from_row(row: &Row, at: usize) -> Result<User, RepoError> {
    let role: &str = get(row, at + 4)?;
    let status: &str = get(row, at + 5)?;
    let version: i64 = get(row, at + 6)?;
    Ok(User {
        id: UserId::from_uuid(get(row, at)?),
        email: Email::from_trusted(get(row, at + 1)?),
        name: DisplayName::from_trusted(get(row, at + 2)?),
        password_hash: PasswordHash::from_trusted(get(row, at + 3)?),
        role: Role::parse(role).map_err(|_| corrupt("role", role))?,
        status: UserStatus::parse(status).map_err(|_| corrupt("status", status))?,
        version: Version(u64::try_from(version).map_err(|_| corrupt("version", version))?),
        created_at: Timestamp(get(row, at + 7)?),
        updated_at: Timestamp(get(row, at + 8)?),
        verified: get(row, at + 9)?,
        mfa_enabled: get(row, at + 10)?,
    })
}

fn session_from_row(row: &Row) -> Result<Session, RepoError> {
    Ok(Session {
        id: SessionId::from_uuid(get(row, 0)?),
        user_id: UserId::from_uuid(get(row, 1)?),
        token_hash: TokenHash(bytes(row, 2)?),
        created_at: Timestamp(get(row, 3)?),
        expires_at: Timestamp(get(row, 4)?),
        revoked_at: get::<Option<i64>>(row, 5)?.map(Timestamp),
    })
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

async fn execute(tx: &Transaction<'_>, sql: &'static str, params: &Params<'_>) -> Result<u64, tokio_postgres::Error> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, params).await
}

async fn insert_event(tx: &Transaction<'_>, event: &OutboxEvent) -> Result<(), RepoError> {
    execute(
        tx,
        sql::INSERT_EVENT,
        &[
            &event.id,
            &event.aggregate_id,
            &event.event_type,
            &event.payload,
            &event.created_at.0,
            &(outbox_partition(event.aggregate_id) as i16),
            &event.traceparent,
        ],
    )
    .await
    .map(drop)
    .map_err(pg_err)
}

/// After an UPDATE/DELETE guarded by version touched no row: was it the version or the row?
/// The versioned user update with its session revocations and event, inside `tx`.
async fn update_user_in(
    tx: &Transaction<'_>,
    user: &User,
    version: i64,
    expected: i64,
    revoke: SessionRevocation,
    event: &OutboxEvent,
) -> Result<(), RepoError> {
    let changed = execute(
        tx,
        sql::UPDATE_USER,
        &[
            &user.id.as_uuid(),
            &user.email.as_str(),
            &user.name.as_str(),
            &user.password_hash.as_str(),
            &user.role.as_str(),
            &user.status.as_str(),
            &version,
            &user.updated_at.0,
            &expected,
            &user.verified,
        ],
    )
    .await
    .map_err(|e| match unique_violation(&e) {
        Some("users_email") => RepoError::EmailTaken,
        _ => pg_err(e),
    })?;
    if changed == 0 {
        return Err(missing_or_conflict(tx, user.id).await);
    }
    let uid = user.id.as_uuid();
    match revoke {
        SessionRevocation::None => 0,
        SessionRevocation::All { at } => execute(tx, sql::REVOKE_ALL, &[&uid, &at.0]).await.map_err(pg_err)?,
        SessionRevocation::AllExcept { keep, at } => {
            execute(tx, sql::REVOKE_ALL_EXCEPT, &[&uid, &at.0, &keep.as_uuid()]).await.map_err(pg_err)?
        }
    };
    insert_event(tx, event).await?;
    Ok(())
}

async fn missing_or_conflict(tx: &Transaction<'_>, id: UserId) -> RepoError {
    let found = async {
        let stmt = tx.prepare_cached(sql::USER_EXISTS).await?;
        tx.query_opt(&stmt, &[&id.as_uuid()]).await
    };
    match found.await {
        Ok(Some(_)) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => pg_err(e),
    }
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), RepoError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    // Two instances starting together must not both apply migration 1. The lock is per
    // schema, so instances (or tests) using different schemas of one database do not wait
    // for each other; it is released when the transaction ends, even on a crash. Migrations
    // may outlast the per-query statement_timeout: MIGRATION_TIMEOUT bounds them instead.
    tx.batch_execute(
        "SET LOCAL statement_timeout = 0;
         SELECT pg_advisory_xact_lock(hashtextextended('strata_migrate:' || coalesce(current_schema(), ''), 0));
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version bigint PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL);",
    )
    .await
    .map_err(pg_err)?;
    let applied: i64 = tx
        .query_one("SELECT coalesce(max(version), 0)::bigint FROM schema_migrations", &[])
        .await
        .map_err(pg_err)
        .and_then(|row| get(&row, 0))?;
    for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
        tx.batch_execute(m.sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &now_micros()],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(backend = "postgres", version = m.version, name = m.name, "applied migration");
    }
    tx.commit().await.map_err(pg_err)
}

impl PostgresStore {
    /// Builds the pool, checks that the server answers and, if `options.migrate`, applies
    /// pending migrations.
    pub async fn connect(options: &StoreOptions) -> Result<Self, RepoError> {
        let mut pg_config: tokio_postgres::Config = options.url.parse().map_err(|e: tokio_postgres::Error| {
            RepoError::Internal(format!("invalid PostgreSQL URL {}: {}", crate::redact_url(&options.url), describe(&e)))
        })?;
        pg_config.connect_timeout(options.connect_timeout);
        // The server gives up on a statement soon after the caller does, instead of running
        // on for nobody while holding locks and a pooled connection. The extra second lets
        // the caller's own timeout fire first, so callers see one kind of timeout error.
        if !pg_config.get_options().is_some_and(|o| o.contains("statement_timeout")) {
            let millis = options.query_timeout.saturating_add(Duration::from_secs(1)).as_millis();
            let limit = format!("-c statement_timeout={millis}");
            let combined = match pg_config.get_options() {
                Some(existing) => format!("{existing} {limit}"),
                None => limit,
            };
            pg_config.options(combined);
        }
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("strata");
        }
        // Fast recycling only checks that the connection is open: a broken one fails its
        // next query, which the caller sees as Unavailable and may retry. Verified
        // recycling would add a round trip to every checkout, hot path included.
        let mut shared = pg_config.clone();
        // Told apart from the pool's in pg_stat_activity (and by the test that cuts them).
        shared.application_name(format!("{}-pipelined", pg_config.get_application_name().unwrap_or("strata")));
        let pipeline = crate::pg_pipeline::Pipeline::new(shared, pipeline_connections(options.max_connections));
        let manager = Manager::from_config(pg_config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.query_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| RepoError::Internal(format!("postgres pool: {e}")))?;
        let store = PostgresStore { pool, pipeline, query_timeout: options.query_timeout, acquire: Default::default() };

        if options.lazy {
            return Ok(store);
        }
        let setup_timeout = if options.migrate { MIGRATION_TIMEOUT } else { options.connect_timeout };
        crate::with_timeout(setup_timeout, async {
            let mut client = store.pool.get().await.map_err(pool_err)?;
            if options.migrate {
                migrate(&mut client).await?;
            }
            Ok(())
        })
        .await?;
        Ok(store)
    }

    async fn client(&self) -> Result<crate::Held<'_, deadpool_postgres::Client>, RepoError> {
        self.acquire.time(self.pool.get()).await.map_err(pool_err)
    }

    async fn query_rows(&self, sql: &'static str, params: &Params<'_>) -> Result<Vec<Row>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            client.query(&stmt, params).await.map_err(pg_err)
        })
        .await
    }

    async fn query_row(&self, sql: &'static str, params: &Params<'_>) -> Result<Option<Row>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            client.query_opt(&stmt, params).await.map_err(pg_err)
        })
        .await
    }

    /// [`Self::query_row`] on a shared, pipelined connection when one is open, else on
    /// the pool: for the point reads every request makes.
    async fn hot_row(&self, sql: &'static str, params: &Params<'_>) -> Result<Option<Row>, RepoError> {
        match self.pipeline.query_opt(self.query_timeout, sql, params).await {
            crate::pg_pipeline::Pipelined::Done(out) => out,
            // Not open, or it broke under this very query: the pool answers instead.
            crate::pg_pipeline::Pipelined::Elsewhere => self.query_row(sql, params).await,
        }
    }

    async fn query_users(&self, sql: &'static str, params: &Params<'_>) -> Result<Vec<User>, RepoError> {
        self.query_rows(sql, params).await?.iter().map(|r| user_from_row(r, 0)).collect()
    }

    async fn query_user(&self, sql: &'static str, params: &Params<'_>) -> Result<Option<User>, RepoError> {
        self.query_row(sql, params).await?.map(|r| user_from_row(&r, 0)).transpose()
    }
}

impl PostgresStore {
    /// The users a statement of `user_search` selects.
    async fn built_users(&self, built: crate::user_search::Built) -> Result<Vec<User>, RepoError> {
        let owned = search_params(&built.params);
        let params: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(&built.sql).await.map_err(pg_err)?;
            let rows = client.query(&stmt, &params).await.map_err(pg_err)?;
            rows.iter().map(|r| user_from_row(r, 0)).collect()
        })
        .await
    }
}

#[async_trait]
impl UserRepository for PostgresStore {
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let version = version_param(user.version)?;
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // The key goes in first: when a concurrent retry with the same key (and so the
            // same email) races us, the loser must hear "key taken" and replay, not
            // "email taken".
            if let Some(rec) = idempotency {
                let fingerprint: &[u8] = &rec.fingerprint;
                execute(
                    &tx,
                    sql::INSERT_IDEMPOTENCY,
                    &[&rec.key.as_str(), &fingerprint, &rec.user_id.as_uuid(), &rec.created_at.0],
                )
                .await
                .map_err(|e| match unique_violation(&e) {
                    Some(_) => RepoError::IdempotencyKeyTaken,
                    None => pg_err(e),
                })?;
            }
            execute(
                &tx,
                sql::INSERT_USER,
                &[
                    &user.id.as_uuid(),
                    &user.email.as_str(),
                    &user.name.as_str(),
                    &user.password_hash.as_str(),
                    &user.role.as_str(),
                    &user.status.as_str(),
                    &version,
                    &user.created_at.0,
                    &user.updated_at.0,
                    &user.verified,
                ],
            )
            .await
            .map_err(|e| match unique_violation(&e) {
                Some("users_email") => RepoError::EmailTaken,
                _ => pg_err(e),
            })?;
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError> {
        let Some(row) = self.query_row(sql::IDEMPOTENCY_RECORD, &[&key.as_str()]).await? else {
            return Ok(None);
        };
        Ok(Some(IdempotencyRecord {
            key: IdempotencyKey::from_trusted(get(&row, 0)?),
            fingerprint: bytes(&row, 1)?,
            user_id: UserId::from_uuid(get(&row, 2)?),
            created_at: Timestamp(get(&row, 3)?),
        }))
    }

    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            client.execute("DELETE FROM idempotency_keys WHERE created_at < $1", &[&before.0]).await.map_err(pg_err)
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.hot_row(sql::USER_BY_ID, &[&id.as_uuid()]).await?.map(|r| user_from_row(&r, 0)).transpose()
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        self.query_user(sql::USER_BY_EMAIL, &[&email.as_str()]).await
    }

    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (version, expected) = (version_param(user.version)?, version_param(expected)?);
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            update_user_in(&tx, user, version, expected, revoke, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let expected = expected.map(version_param).transpose()?;
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let uid = id.as_uuid();
            let deleted = match &expected {
                Some(v) => execute(&tx, sql::DELETE_USER_AT_VERSION, &[&uid, v]).await,
                None => execute(&tx, sql::DELETE_USER, &[&uid]).await,
            }
            .map_err(pg_err)?;
            if deleted == 0 {
                return Err(missing_or_conflict(&tx, id).await);
            }
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError> {
        if crate::user_search::needs_list_page(query) {
            return self
                .built_users(crate::user_search::list_page(
                    crate::user_search::Dialect::Postgres,
                    USER_READ_COLUMNS,
                    query,
                ))
                .await;
        }
        let after = query.after.map(|id| id.as_uuid()).unwrap_or(Uuid::nil());
        let limit = i64::from(query.limit);
        match &query.email {
            Some(email) => self.query_users(sql::LIST_USERS_BY_EMAIL, &[&after, &limit, &email.as_str()]).await,
            None => self.query_users(sql::LIST_USERS_PAGE, &[&after, &limit]).await,
        }
    }

    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, RepoError> {
        self.built_users(crate::user_search::select(crate::user_search::Dialect::Postgres, USER_READ_COLUMNS, search))
            .await
    }

    async fn count_users(&self, predicate: Option<&UserPredicate>) -> Result<u64, RepoError> {
        let built = crate::user_search::count(crate::user_search::Dialect::Postgres, predicate);
        let owned = search_params(&built.params);
        let params: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(&built.sql).await.map_err(pg_err)?;
            let row = client.query_one(&stmt, &params).await.map_err(pg_err)?;
            get::<i64>(&row, 0).map(|n| n.max(0) as u64)
        })
        .await
    }
}

#[async_trait]
impl SessionRepository for PostgresStore {
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let hash: &[u8] = &session.token_hash.0;
            execute(
                &tx,
                sql::INSERT_SESSION,
                &[
                    &session.id.as_uuid(),
                    &hash,
                    &session.user_id.as_uuid(),
                    &session.created_at.0,
                    &session.expires_at.0,
                    &session.revoked_at.map(|t| t.0),
                ],
            )
            .await
            .map_err(pg_err)?;
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        let hash: &[u8] = &token_hash.0;
        let Some(row) = self.hot_row(sql::SESSION_WITH_USER, &[&hash]).await? else {
            return Ok(None);
        };
        Ok(Some((session_from_row(&row)?, user_from_row(&row, 6)?)))
    }

    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let changed = execute(&tx, sql::REVOKE_SESSION, &[&id.as_uuid(), &at.0]).await.map_err(pg_err)?;
            if changed > 0 {
                insert_event(&tx, event).await?;
            }
            tx.commit().await.map_err(pg_err)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError> {
        self.query_rows(sql::SESSIONS_OF_USER, &[&user_id.as_uuid()]).await?.iter().map(session_from_row).collect()
    }
}

/// EXPLAINs one query in `tx` (where sequential scans are priced out) and reads the plan.
async fn explain_one(
    tx: &Transaction<'_>,
    name: &'static str,
    sql: &'static str,
    relations: &[&str],
    ordered: bool,
    params: &Params<'_>,
) -> Result<QueryPlan, RepoError> {
    // Like sequential scans, sorts of tiny tables are cheaper than ordered index scans;
    // pricing sorts out where the index is meant to deliver the order makes a Sort left in
    // the plan prove that it cannot. Only there: elsewhere it would push the planner to walk
    // a whole index just to avoid sorting one row.
    let sort = if ordered { "off" } else { "on" };
    tx.batch_execute(&format!("SET LOCAL enable_sort = {sort}")).await.map_err(pg_err)?;
    let rows = tx.query(&format!("EXPLAIN (FORMAT TEXT) {sql}"), params).await.map_err(pg_err)?;
    let lines = rows.iter().map(|r| get::<String>(r, 0)).collect::<Result<Vec<_>, _>>()?;
    let plan = lines.join("\n");
    let uses_index = plan_uses_index(&plan, relations) && !(ordered && plan_sorts(&plan));
    Ok(QueryPlan { name, sql, plan, uses_index })
}

/// Reads a text-format plan: every relation the query touches is reached through an index
/// and nothing is scanned sequentially.
fn plan_uses_index(plan: &str, relations: &[&str]) -> bool {
    let index_access = |line: &str, relation: &str| {
        let on_relation = line.contains(&format!(" on {relation} ")) || line.ends_with(&format!(" on {relation}"));
        on_relation
            && (line.contains("Index Scan") || line.contains("Index Only Scan") || line.contains("Bitmap Heap Scan"))
    };
    !plan.contains("Seq Scan") && relations.iter().all(|r| plan.lines().any(|line| index_access(line, r)))
}

/// Whether the plan sorts rows itself (`Sort`, `Incremental Sort`) instead of reading them
/// in index order.
fn plan_sorts(plan: &str) -> bool {
    plan.lines().any(|line| {
        let node = line.trim_start().trim_start_matches("->").trim_start();
        node.starts_with("Sort") || node.starts_with("Incremental Sort")
    })
}

fn stored_event(r: &Row) -> Result<StoredEvent, RepoError> {
    let sequence: i64 = get(r, 5)?;
    Ok(StoredEvent {
        id: get(r, 0)?,
        aggregate_id: get(r, 1)?,
        event_type: get(r, 2)?,
        payload: get(r, 3)?,
        created_at: Timestamp(get(r, 4)?),
        sequence: u64::try_from(sequence).map_err(|_| corrupt("sequence", sequence))?,
        traceparent: get(r, 6)?,
    })
}

fn audit_entry(r: &Row) -> Result<AuditEntry, RepoError> {
    Ok(AuditEntry {
        id: get(r, 0)?,
        event_type: get(r, 1)?,
        subject: get(r, 2)?,
        actor: get(r, 3)?,
        time: Timestamp(get(r, 4)?),
        data: get(r, 5)?,
    })
}

impl PostgresStore {
    /// One statement outside any explicit transaction.
    async fn execute_one(&self, sql: &'static str, params: &Params<'_>) -> Result<u64, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(pg_err)?;
            client.execute(&stmt, params).await.map_err(pg_err)
        })
        .await
    }
}

#[async_trait]
impl OutboxRepository for PostgresStore {
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn pending_events(&self, partitions: &[u16], limit: u32) -> Result<Vec<StoredEvent>, RepoError> {
        if partitions.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let partitions: Vec<i16> = partitions.iter().map(|p| *p as i16).collect();
        let limit = i64::from(limit);
        let rows = self.query_rows(sql::PENDING_AGGREGATES, &[&partitions, &limit]).await?;
        let mut aggregates: Vec<Uuid> = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: Uuid = get(r, 0)?;
            if !aggregates.contains(&id) {
                aggregates.push(id);
            }
        }
        if aggregates.is_empty() {
            return Ok(Vec::new());
        }
        self.query_rows(sql::PENDING_EVENTS, &[&aggregates, &limit]).await?.iter().map(stored_event).collect()
    }

    async fn mark_published(&self, ids: &[Uuid], at: Timestamp) -> Result<(), RepoError> {
        let ids = ids.to_vec();
        self.execute_one("UPDATE outbox SET published_at = $2 WHERE id = ANY($1)", &[&ids, &at.0]).await.map(drop)
    }

    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.execute_one(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2)",
            &[&before.0, &i64::from(limit)],
        )
        .await
    }

    async fn outbox_backlog(&self) -> Result<Backlog, RepoError> {
        let rows =
            self.query_rows("SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL", &[]).await?;
        let Some(r) = rows.first() else { return Ok(Backlog::default()) };
        let count: i64 = get(r, 0)?;
        Ok(Backlog { count: count as u64, oldest: get::<Option<i64>>(r, 1)?.map(Timestamp) })
    }

    async fn relay_leases(&self) -> Result<Vec<RelayLease>, RepoError> {
        let rows = self.query_rows("SELECT name, owner, expires_at FROM relay_leases ORDER BY name", &[]).await?;
        rows.iter()
            .map(|r| Ok(RelayLease { name: get(r, 0)?, owner: get(r, 1)?, expires_at: Timestamp(get(r, 2)?) }))
            .collect()
    }

    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError> {
        self.execute_one(
            "UPDATE relay_leases SET owner = $2, expires_at = $3 WHERE name = $1 AND (owner = $2 OR expires_at < $4)",
            &[&name, &owner, &until.0, &now.0],
        )
        .await
        .map(|n| n == 1)
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError> {
        self.execute_one(
            "UPDATE relay_leases SET owner = '', expires_at = 0 WHERE name = $1 AND owner = $2",
            &[&name, &owner],
        )
        .await
        .map(drop)
    }

    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget_before: Timestamp) -> Result<(), RepoError> {
        self.execute_one(
            "INSERT INTO relay_leases (name, owner, expires_at) VALUES ('member:' || $1, $1, $2) \
             ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at",
            &[&owner, &until.0],
        )
        .await?;
        self.execute_one("DELETE FROM relay_leases WHERE name LIKE 'member:%' AND expires_at < $1", &[&forget_before.0])
            .await
            .map(drop)
    }
}

#[async_trait]
impl AuditRepository for PostgresStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<u64, RepoError> {
        if entries.is_empty() {
            return Ok(0);
        }
        // One statement for the batch: arrays unnested into rows.
        let ids: Vec<Uuid> = entries.iter().map(|e| e.id).collect();
        let types: Vec<&str> = entries.iter().map(|e| e.event_type.as_str()).collect();
        let subjects: Vec<Uuid> = entries.iter().map(|e| e.subject).collect();
        let actors: Vec<&str> = entries.iter().map(|e| e.actor.as_str()).collect();
        let times: Vec<i64> = entries.iter().map(|e| e.time.0).collect();
        let data: Vec<&str> = entries.iter().map(|e| e.data.as_str()).collect();
        self.execute_one(
            "INSERT INTO audit_log (id, event_type, subject, actor, time, data) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::bigint[], $6::text[]) \
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &types, &subjects, &actors, &times, &data],
        )
        .await
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RepoError> {
        // One statement per filter shape, so each is planned on its own index (subject,
        // type, or the primary key) instead of one generic plan for all.
        let floor = query.id_floor();
        let limit = i64::from(query.limit);
        let since = query.since.map_or(i64::MIN, |t| t.0);
        let rows = match (&query.subject, &query.event_type) {
            (Some(subject), event_type) => {
                self.query_rows(
                    "SELECT id, event_type, subject, actor, time, data FROM audit_log \
                     WHERE subject = $1 AND id > $2 AND time >= $3 AND ($4::text IS NULL OR event_type = $4) \
                     ORDER BY id LIMIT $5",
                    &[subject, &floor, &since, event_type, &limit],
                )
                .await?
            }
            (None, Some(event_type)) => {
                self.query_rows(
                    "SELECT id, event_type, subject, actor, time, data FROM audit_log \
                     WHERE event_type = $1 AND id > $2 AND time >= $3 ORDER BY id LIMIT $4",
                    &[event_type, &floor, &since, &limit],
                )
                .await?
            }
            (None, None) => {
                self.query_rows(
                    "SELECT id, event_type, subject, actor, time, data FROM audit_log \
                     WHERE id > $1 AND time >= $2 ORDER BY id LIMIT $3",
                    &[&floor, &since, &limit],
                )
                .await?
            }
        };
        rows.iter().map(audit_entry).collect()
    }

    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        let floor = AuditQuery { since: Some(before), ..AuditQuery::default() }.id_floor();
        self.execute_one(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE id < $1 LIMIT $2)",
            &[&floor, &i64::from(limit)],
        )
        .await
    }
}

fn endpoint_from_row(r: &Row) -> Result<WebhookEndpoint, RepoError> {
    EndpointRow {
        id: get(r, 0)?,
        url: get(r, 1)?,
        events: get(r, 2)?,
        description: get(r, 3)?,
        enabled: get(r, 4)?,
        disabled_reason: get(r, 5)?,
        secrets: get(r, 6)?,
        rate_limit: get(r, 7)?,
        failing_since: get(r, 8)?,
        created_at: get(r, 9)?,
        updated_at: get(r, 10)?,
    }
    .into_domain()
    .map_err(|e| corrupt("webhook endpoint", e))
}

fn delivery_from_row(r: &Row) -> Result<WebhookDelivery, RepoError> {
    DeliveryRow {
        id: get(r, 0)?,
        endpoint_id: get(r, 1)?,
        event_id: get(r, 2)?,
        event: get(r, 3)?,
        status: get(r, 4)?,
        attempts: get(r, 5)?,
        next_attempt_at: get(r, 6)?,
        last_status: get(r, 7)?,
        last_error: get(r, 8)?,
        created_at: get(r, 9)?,
        updated_at: get(r, 10)?,
    }
    .into_domain()
    .map_err(|e| corrupt("webhook delivery", e))
}

fn attempt_from_row(r: &Row) -> Result<WebhookAttempt, RepoError> {
    let attempt: i64 = get(r, 1)?;
    let status: Option<i64> = get(r, 3)?;
    let duration: i64 = get(r, 5)?;
    Ok(WebhookAttempt {
        delivery_id: get(r, 0)?,
        attempt: u32::try_from(attempt).map_err(|_| corrupt("webhook attempt", attempt))?,
        at: Timestamp(get(r, 2)?),
        status: status.map(u16::try_from).transpose().map_err(|_| corrupt("webhook attempt status", "range"))?,
        error: get(r, 4)?,
        duration_ms: u32::try_from(duration).map_err(|_| corrupt("webhook attempt duration", duration))?,
    })
}

/// Foreign key violation (23503): the endpoint went away mid-statement.
fn foreign_key_violation(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "23503")
}

/// The endpoint's columns as `$1…$11` of INSERT and UPDATE, in `endpoint_columns!()` order.
fn endpoint_params(r: &EndpointRow) -> [&(dyn ToSql + Sync); 11] {
    [
        &r.id,
        &r.url,
        &r.events,
        &r.description,
        &r.enabled,
        &r.disabled_reason,
        &r.secrets,
        &r.rate_limit,
        &r.failing_since,
        &r.created_at,
        &r.updated_at,
    ]
}

const UPDATE_ENDPOINT: &str = "UPDATE webhook_endpoints SET url = $2, events = $3, description = $4, enabled = $5, \
     disabled_reason = $6, secrets = $7, rate_limit = $8, failing_since = $9, created_at = $10, updated_at = $11 \
     WHERE id = $1";

#[async_trait]
impl WebhookRepository for PostgresStore {
    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), RepoError> {
        let r = EndpointRow::from_domain(endpoint);
        self.execute_one(
            concat!(
                "INSERT INTO webhook_endpoints (",
                endpoint_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &endpoint_params(&r),
        )
        .await
        .map(drop)
    }

    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, RepoError> {
        self.query_row(concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE id = $1"), &[&id])
            .await?
            .as_ref()
            .map(endpoint_from_row)
            .transpose()
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError> {
        self.query_rows(concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints ORDER BY id"), &[])
            .await?
            .iter()
            .map(endpoint_from_row)
            .collect()
    }

    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        let r = EndpointRow::from_domain(endpoint);
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let n = execute(&tx, UPDATE_ENDPOINT, &endpoint_params(&r)).await.map_err(pg_err)?;
            if n == 0 {
                return Err(RepoError::NotFound);
            }
            if let Some(event) = event {
                insert_event(&tx, event).await?;
            }
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn delete_webhook_endpoint(&self, id: Uuid) -> Result<bool, RepoError> {
        // Deliveries and their attempts go with it (ON DELETE CASCADE).
        self.execute_one("DELETE FROM webhook_endpoints WHERE id = $1", &[&id]).await.map(|n| n > 0)
    }

    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<u64, RepoError> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let rows: Vec<DeliveryRow> = deliveries.iter().map(DeliveryRow::from_domain).collect();
        // Row by row in one transaction: a batch `unnest` would fail as a whole on one
        // endpoint deleted meanwhile.
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let mut added = 0;
            for r in &rows {
                let outcome = execute(
                    &tx,
                    concat!(
                        "INSERT INTO webhook_deliveries (",
                        delivery_columns!(),
                        ") SELECT $1::uuid, $2::uuid, $3::text, $4::text, $5::text, $6::bigint, $7::bigint, \
                         $8::bigint, $9::text, $10::bigint, $11::bigint \
                         WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = $2) ON CONFLICT DO NOTHING"
                    ),
                    &[
                        &r.id,
                        &r.endpoint_id,
                        &r.event_id,
                        &r.event,
                        &r.status,
                        &r.attempts,
                        &r.next_attempt_at,
                        &r.last_status,
                        &r.last_error,
                        &r.created_at,
                        &r.updated_at,
                    ],
                )
                .await;
                match outcome {
                    Ok(n) => added += n,
                    // Deleted between the EXISTS and the insert: the batch is void, so
                    // report it as transient and let the listener's redelivery retry it.
                    Err(e) if foreign_key_violation(&e) => {
                        return Err(RepoError::Unavailable(format!("postgres: {}", describe(&e))));
                    }
                    Err(e) => return Err(pg_err(e)),
                }
            }
            tx.commit().await.map_err(pg_err)?;
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
        // SKIP LOCKED: concurrent dispatchers take disjoint rows instead of queueing.
        self.query_rows(
            concat!(
                "UPDATE webhook_deliveries SET next_attempt_at = $2 WHERE id IN \
                 (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
                  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                delivery_columns!()
            ),
            &[&now.0, &lease_until.0, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(delivery_from_row)
        .collect()
    }

    async fn record_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), RepoError> {
        let r = DeliveryRow::from_domain(delivery);
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let updated = execute(
                &tx,
                "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, last_status = $5, \
                 last_error = $6, updated_at = $7 WHERE id = $1",
                &[&r.id, &r.status, &r.attempts, &r.next_attempt_at, &r.last_status, &r.last_error, &r.updated_at],
            )
            .await
            .map_err(pg_err)?;
            // Gone with its endpoint meanwhile: nothing to log against.
            if let (1.., Some(a)) = (updated, attempt) {
                execute(
                    &tx,
                    concat!("INSERT INTO webhook_attempts (", attempt_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6)"),
                    &[
                        &a.delivery_id,
                        &i64::from(a.attempt),
                        &a.at.0,
                        &a.status.map(i64::from),
                        &a.error,
                        &i64::from(a.duration_ms),
                    ],
                )
                .await
                .map_err(pg_err)?;
            }
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn webhook_delivery(&self, endpoint_id: Uuid, id: Uuid) -> Result<Option<WebhookDelivery>, RepoError> {
        self.query_row(
            concat!("SELECT ", delivery_columns!(), " FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2"),
            &[&id, &endpoint_id],
        )
        .await?
        .as_ref()
        .map(delivery_from_row)
        .transpose()
    }

    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError> {
        let after = query.after.unwrap_or(Uuid::nil());
        let limit = i64::from(query.limit);
        let rows = match query.status {
            None => {
                self.query_rows(
                    concat!(
                        "SELECT ",
                        delivery_columns!(),
                        " FROM webhook_deliveries WHERE endpoint_id = $1 AND id > $2 ORDER BY id LIMIT $3"
                    ),
                    &[&query.endpoint_id, &after, &limit],
                )
                .await?
            }
            Some(status) => {
                self.query_rows(
                    concat!(
                        "SELECT ",
                        delivery_columns!(),
                        " FROM webhook_deliveries WHERE endpoint_id = $1 AND id > $2 AND status = $4 \
                         ORDER BY id LIMIT $3"
                    ),
                    &[&query.endpoint_id, &after, &limit, &status.as_str()],
                )
                .await?
            }
        };
        rows.iter().map(delivery_from_row).collect()
    }

    async fn webhook_attempts(&self, delivery_id: Uuid) -> Result<Vec<WebhookAttempt>, RepoError> {
        self.query_rows(
            concat!("SELECT ", attempt_columns!(), " FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id"),
            &[&delivery_id],
        )
        .await?
        .iter()
        .map(attempt_from_row)
        .collect()
    }

    async fn replay_delivery(&self, endpoint_id: Uuid, id: Uuid, now: Timestamp) -> Result<bool, RepoError> {
        self.execute_one(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, updated_at = $3 \
             WHERE id = $1 AND endpoint_id = $2 AND status <> 'pending'",
            &[&id, &endpoint_id, &now.0],
        )
        .await
        .map(|n| n > 0)
    }

    async fn replay_failed_deliveries(
        &self,
        endpoint_id: Uuid,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, RepoError> {
        self.execute_one(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, updated_at = $3 \
             WHERE endpoint_id = $1 AND status = 'failed' AND created_at >= $2",
            &[&endpoint_id, &since.0, &now.0],
        )
        .await
    }
}

fn totp_from_row(r: &Row) -> Result<TotpRecord, RepoError> {
    let secret: &str = get(r, 1)?;
    let codes: &str = get(r, 4)?;
    Ok(TotpRecord {
        user_id: UserId::from_uuid(get(r, 0)?),
        secret: TotpSecret::from_base32(secret).ok_or_else(|| corrupt("totp secret", "not base32"))?,
        enabled: get(r, 2)?,
        last_step: get(r, 3)?,
        recovery_hashes: crate::split_recovery_hashes(codes),
        version: get(r, 5)?,
        created_at: Timestamp(get(r, 6)?),
        updated_at: Timestamp(get(r, 7)?),
    })
}

#[async_trait]
impl MfaRepository for PostgresStore {
    async fn totp_of(&self, user_id: UserId) -> Result<Option<TotpRecord>, RepoError> {
        self.query_row(
            "SELECT user_id, secret, enabled, last_step, recovery_codes, version, created_at, updated_at \
             FROM user_totp WHERE user_id = $1",
            &[&user_id.as_uuid()],
        )
        .await?
        .map(|r| totp_from_row(&r))
        .transpose()
    }

    async fn save_totp(
        &self,
        record: &TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let uid = record.user_id.as_uuid();
            let (secret, codes) = (record.secret.to_base32(), record.recovery_hashes.join(","));
            let current = tx
                .query_opt("SELECT enabled, version FROM user_totp WHERE user_id = $1 FOR UPDATE", &[&uid])
                .await
                .map_err(pg_err)?;
            let current: Option<(bool, i64)> =
                current.map(|r| Ok::<_, RepoError>((get(&r, 0)?, get(&r, 1)?))).transpose()?;
            match (expected, current) {
                (None, Some((true, _))) => return Err(RepoError::VersionConflict),
                (Some(_), None) => return Err(RepoError::NotFound),
                (Some(v), Some((_, version))) if v != version => return Err(RepoError::VersionConflict),
                _ => {}
            }
            let values: &Params<'_> = &[
                &uid,
                &secret,
                &record.enabled,
                &record.last_step,
                &codes,
                &record.version,
                &record.created_at.0,
                &record.updated_at.0,
            ];
            // An existing row is updated in place: a writer that waited on its lock then
            // reads the version the winner wrote.
            let inserted = if current.is_some() {
                execute(
                    &tx,
                    "UPDATE user_totp SET secret = $2, enabled = $3, last_step = $4, recovery_codes = $5, \
                     version = $6, created_at = $7, updated_at = $8 WHERE user_id = $1",
                    values,
                )
                .await
                .map_err(pg_err)?
            } else {
                execute(
                    &tx,
                    "INSERT INTO user_totp (user_id, secret, enabled, last_step, recovery_codes, version, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id) DO NOTHING",
                    values,
                )
                .await
                .map_err(pg_err)?
            };
            if inserted == 0 {
                // A concurrent first enrolment inserted meanwhile.
                return Err(RepoError::VersionConflict);
            }
            // Guarded so the code acceptances of every MFA login do not rewrite the user row.
            let flag = "UPDATE users SET mfa_enabled = $2 WHERE id = $1 AND mfa_enabled <> $2";
            execute(&tx, flag, &[&uid, &record.enabled]).await.map_err(pg_err)?;
            if let Some(event) = event {
                insert_event(&tx, event).await?;
            }
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let uid = user_id.as_uuid();
            let deleted = tx
                .query_opt("DELETE FROM user_totp WHERE user_id = $1 RETURNING version", &[&uid])
                .await
                .map_err(pg_err)?;
            let Some(row) = deleted else { return Err(RepoError::NotFound) };
            let version: i64 = get(&row, 0)?;
            if expected.is_some_and(|e| e != version) {
                // Dropping `tx` rolls the delete back.
                return Err(RepoError::VersionConflict);
            }
            execute(&tx, "UPDATE users SET mfa_enabled = false WHERE id = $1", &[&uid]).await.map_err(pg_err)?;
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }
}

fn account_token_from_row(r: &Row) -> Result<AccountToken, RepoError> {
    let purpose: &str = get(r, 2)?;
    Ok(AccountToken {
        id: get(r, 0)?,
        user_id: UserId::from_uuid(get(r, 1)?),
        purpose: TokenPurpose::parse(purpose).ok_or_else(|| corrupt("token purpose", purpose))?,
        token_hash: TokenHash(bytes(r, 3)?),
        binding: bytes(r, 4)?,
        created_at: Timestamp(get(r, 5)?),
        expires_at: Timestamp(get(r, 6)?),
        used_at: get::<Option<i64>>(r, 7)?.map(Timestamp),
        new_email: get::<Option<String>>(r, 8)?.map(Email::from_trusted),
    })
}

fn mail_from_row(r: &Row) -> Result<QueuedMail, RepoError> {
    let status: &str = get(r, 4)?;
    let attempts: i64 = get(r, 5)?;
    Ok(QueuedMail {
        id: get(r, 0)?,
        template: get(r, 1)?,
        recipient: Email::from_trusted(get(r, 2)?),
        params: get(r, 3)?,
        status: MailStatus::parse(status).ok_or_else(|| corrupt("mail status", status))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("mail attempts", attempts))?,
        next_attempt_at: Timestamp(get(r, 6)?),
        last_error: get(r, 7)?,
        created_at: Timestamp(get(r, 8)?),
        updated_at: Timestamp(get(r, 9)?),
    })
}

#[async_trait]
impl LifecycleRepository for PostgresStore {
    async fn issue_account_token(
        &self,
        token: &AccountToken,
        mails: &[QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let uid = token.user_id.as_uuid();
            execute(&tx, sql::DELETE_UNUSED_TOKENS, &[&uid, &token.purpose.as_str()]).await.map_err(pg_err)?;
            execute(
                &tx,
                sql::INSERT_ACCOUNT_TOKEN,
                &[
                    &token.id,
                    &uid,
                    &token.purpose.as_str(),
                    &token.token_hash.0.as_slice(),
                    &token.binding.as_slice(),
                    &token.created_at.0,
                    &token.expires_at.0,
                    &token.used_at.map(|u| u.0),
                    &token.new_email.as_ref().map(|e| e.as_str()),
                ],
            )
            .await
            .map_err(pg_err)?;
            for mail in mails {
                execute(
                    &tx,
                    sql::INSERT_MAIL,
                    &[
                        &mail.id,
                        &mail.template,
                        &mail.recipient.as_str(),
                        &mail.params,
                        &mail.status.as_str(),
                        &i64::from(mail.attempts),
                        &mail.next_attempt_at.0,
                        &mail.last_error,
                        &mail.created_at.0,
                        &mail.updated_at.0,
                    ],
                )
                .await
                .map_err(pg_err)?;
            }
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn account_token(&self, hash: &TokenHash) -> Result<Option<AccountToken>, RepoError> {
        self.query_row(sql::ACCOUNT_TOKEN_BY_HASH, &[&hash.0.as_slice()])
            .await?
            .map(|r| account_token_from_row(&r))
            .transpose()
    }

    async fn redeem_account_token(
        &self,
        token_id: Uuid,
        purpose: TokenPurpose,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        at: Timestamp,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let (version, expected) = (version_param(user.version)?, version_param(expected)?);
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            if execute(&tx, sql::USE_TOKEN, &[&token_id, &at.0]).await.map_err(pg_err)? == 0 {
                return Err(RepoError::NotFound);
            }
            update_user_in(&tx, user, version, expected, revoke, event).await?;
            let purpose = purpose.as_str();
            execute(&tx, sql::DELETE_UNUSED_TOKENS, &[&user.id.as_uuid(), &purpose]).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, RepoError> {
        self.query_rows(sql::CLAIM_MAILS, &[&now.0, &lease_until.0, &i64::from(limit)])
            .await?
            .iter()
            .map(mail_from_row)
            .collect()
    }

    async fn record_mail(&self, mail: &QueuedMail) -> Result<(), RepoError> {
        self.execute_one(
            sql::RECORD_MAIL,
            &[
                &mail.id,
                &mail.params,
                &mail.status.as_str(),
                &i64::from(mail.attempts),
                &mail.next_attempt_at.0,
                &mail.last_error,
                &mail.updated_at.0,
            ],
        )
        .await?;
        Ok(())
    }

    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        let limit = i64::from(limit);
        let tokens = self.execute_one(sql::PRUNE_TOKENS, &[&before.0, &limit]).await?;
        let mails = self.execute_one(sql::PRUNE_MAILS, &[&before.0, &limit]).await?;
        Ok(tokens + mails)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout.min(PING_TIMEOUT), async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await.map(drop).map_err(pg_err)
        })
        .await
    }

    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            // Tiny tables get sequential scans whatever indexes exist; with them priced out,
            // a Seq Scan still in the plan proves no usable index exists.
            tx.batch_execute("SET LOCAL enable_seqscan = off").await.map_err(pg_err)?;
            let samples = sample_rows(&tx).await?;
            let (uid, email, key) = (samples.user, &samples.email, &samples.key);
            let hash: &[u8] = &samples.token_hash;
            // The first page: the nil UUID, as `list_users` passes when there is no cursor.
            let first_page = Uuid::nil();
            let limit: i64 = 51;
            // (name, SQL, relations it reads, whether its ORDER BY must come from the index
            // rather than a sort, sample parameters)
            type Hot<'a> = (&'static str, &'static str, &'static [&'static str], bool, Vec<&'a (dyn ToSql + Sync)>);
            let queries: [Hot<'_>; 8] = [
                ("user_by_id", sql::USER_BY_ID, &["users"], false, vec![&uid]),
                ("user_by_email", sql::USER_BY_EMAIL, &["users"], false, vec![email]),
                ("session_with_user", sql::SESSION_WITH_USER, &["sessions", "users"], false, vec![&hash]),
                ("sessions_of_user", sql::SESSIONS_OF_USER, &["sessions"], true, vec![&uid]),
                ("list_users_page", sql::LIST_USERS_PAGE, &["users"], true, vec![&first_page, &limit]),
                ("list_users_by_email", sql::LIST_USERS_BY_EMAIL, &["users"], false, vec![&first_page, &limit, email]),
                ("idempotency_record", sql::IDEMPOTENCY_RECORD, &["idempotency_keys"], false, vec![key]),
                ("account_token", sql::ACCOUNT_TOKEN_BY_HASH, &["account_tokens"], false, vec![&hash]),
            ];
            let mut plans = Vec::with_capacity(queries.len());
            for (name, sql, relations, ordered, params) in queries {
                plans.push(explain_one(&tx, name, sql, relations, ordered, &params).await?);
            }
            plans.extend(groups::explain_hot_paths(&tx).await?);
            for (name, built) in
                crate::user_search::sample_plans(crate::user_search::Dialect::Postgres, USER_READ_COLUMNS)
            {
                let owned = search_params(&built.params);
                let params: Vec<&(dyn ToSql + Sync)> =
                    owned.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                // The ORDER BY id of a range on another index is a sort of the few matches.
                plans.push(explain_one(&tx, name, &built.sql, &["users"], false, &params).await?);
            }
            // The sample rows were only there to be planned over.
            tx.rollback().await.map_err(pg_err)?;
            Ok(plans)
        })
        .await
    }

    async fn replication_position(&self) -> Result<Option<u64>, RepoError> {
        // An LSN is a byte offset into the WAL: its distance from 0/0 is the number. On a
        // primary, the insert position: with `synchronous_commit = off` an acknowledged
        // commit may not be written yet (`pg_current_wal_lsn()` can be behind it), but it
        // is always inserted.
        const POSITION: &str = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn)::bigint";
        let row = self.query_row(POSITION, &[]).await?;
        Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).map(|p| p.max(0) as u64))
    }

    fn pool_stats(&self) -> PoolStats {
        let status = self.pool.status();
        let (acquires, wait_seconds, hold_seconds) = self.acquire.read();
        PoolStats {
            size: status.size as u64,
            idle: status.available as u64,
            waiting: status.waiting as u64,
            acquires,
            wait_seconds,
            hold_seconds,
        }
    }
}

/// Keys of the rows [`sample_rows`] inserted.
struct Samples {
    user: Uuid,
    email: String,
    token_hash: [u8; 32],
    key: String,
}

/// Inserts a user, a session and an idempotency record inside `tx` (rolled back by the
/// caller) so every hot query is planned with parameters that match a row, as in
/// production.
async fn sample_rows(tx: &Transaction<'_>) -> Result<Samples, RepoError> {
    let user = Uuid::now_v7();
    let mut token_hash = [0u8; 32];
    token_hash[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    token_hash[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    let samples = Samples {
        user,
        email: format!("explain-{}@strata.invalid", user.simple()),
        token_hash,
        key: format!("explain-{}", user.simple()),
    };
    let hash: &[u8] = &samples.token_hash;
    let zero = 0i64;
    tx.execute(
        sql::INSERT_USER,
        &[&user, &samples.email, &"Explain", &"x", &"user", &"active", &1i64, &zero, &zero, &false],
    )
    .await
    .map_err(pg_err)?;
    tx.execute(sql::INSERT_SESSION, &[&Uuid::now_v7(), &hash, &user, &zero, &zero, &None::<i64>])
        .await
        .map_err(pg_err)?;
    tx.execute(sql::INSERT_IDEMPOTENCY, &[&samples.key, &hash, &user, &zero]).await.map_err(pg_err)?;
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_index_scans_from_plans() {
        let join = "Nested Loop  (cost=0.29..16.34 rows=1 width=160)\n\
                    ->  Index Scan using sessions_token_hash on sessions s  (cost=0.14..8.16 rows=1 width=72)\n\
                    \x20     Index Cond: (token_hash = '\\x00'::bytea)\n\
                    ->  Index Scan using users_pkey on users u  (cost=0.15..8.17 rows=1 width=104)\n\
                    \x20     Index Cond: (id = s.user_id)";
        assert!(plan_uses_index(join, &["sessions", "users"]));
        let seq = "Nested Loop\n  ->  Seq Scan on sessions s\n  ->  Index Scan using users_pkey on users u";
        assert!(!plan_uses_index(seq, &["sessions", "users"]));
        // An index on another relation whose name merely starts with ours does not count.
        let other = "Index Scan using users_email_x on users_archive  (cost=0.15..8.17 rows=1 width=104)";
        assert!(!plan_uses_index(other, &["users"]));
        let bitmap = "Bitmap Heap Scan on sessions  (cost=4.2..14.3 rows=5 width=72)\n\
                      \x20 ->  Bitmap Index Scan on sessions_user_id  (cost=0.00..4.2 rows=5 width=0)";
        assert!(plan_uses_index(bitmap, &["sessions"]));
        assert!(plan_sorts(
            "Limit\n  ->  Sort  (cost=1..2)\n        Sort Key: id\n        ->  Bitmap Heap Scan on users"
        ));
        assert!(!plan_sorts("Limit\n  ->  Index Scan using users_pkey on users\n        Index Cond: (id > $1)"));
    }
}
