//! MySQL / MariaDB adapter on mysql_async's connection pool.
//!
//! Statements go through the binary protocol (`exec*`), whose per-connection statement
//! cache makes the hot path (`session_with_user`) one round trip. Three pool settings
//! matter for that and are not the driver's defaults: connections are not reset when
//! they return to the pool (a reset empties the statement cache, and this adapter never
//! changes session state), idle connections are kept up to the pool's maximum, and
//! `CLIENT_FOUND_ROWS` makes "rows affected" count matched rows, as PostgreSQL and SQLite
//! do, so a version-guarded UPDATE reports 1 even when it changes no column value.
//!
//! Schema: InnoDB, utf8mb4 with binary collations (emails are normalised before they get
//! here, so comparisons must be exact, not case- or accent-folding), ids as BINARY(16) in
//! UUID byte order, which sorts like Rust's `Uuid` and so like creation time for UUIDv7.
//! MySQL DDL is not transactional; migrations are written to be re-runnable instead.

use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{
    Conn, DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, Transaction, TxOpts, Value,
};
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
use uuid::Uuid;

use strata_core::lifecycle::{AccountToken, MailStatus, QueuedMail, TokenPurpose};
use strata_core::ports::{LifecycleRepository, WebhookRepository};
use strata_core::webhooks::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};

mod backup;
mod groups;
mod shards;

use crate::webhook_rows::{DeliveryRow, EndpointRow, attempt_columns, delivery_columns, endpoint_columns};
use crate::{Migration, StoreOptions};

/// Statements are separated by `;` (and contain none otherwise): the text protocol runs
/// one statement per call.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "users, sessions, idempotency keys, outbox",
        sql: "
        CREATE TABLE IF NOT EXISTS users (
            id            BINARY(16) NOT NULL,
            email         VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            name          VARCHAR(400) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            password_hash TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            role          VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            status        VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            version       BIGINT NOT NULL,
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY users_email (email)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS sessions (
            id         BINARY(16) NOT NULL,
            token_hash BINARY(32) NOT NULL,
            user_id    BINARY(16) NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY sessions_token_hash (token_hash),
            KEY sessions_user_id (user_id),
            CONSTRAINT sessions_user FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS idempotency_keys (
            `key`       VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            fingerprint BINARY(32) NOT NULL,
            user_id     BINARY(16) NOT NULL,
            created_at  BIGINT NOT NULL,
            PRIMARY KEY (`key`)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS outbox (
            id           BINARY(16) NOT NULL,
            aggregate_id BINARY(16) NOT NULL,
            event_type   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            payload      TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            created_at   BIGINT NOT NULL,
            published_at BIGINT NULL,
            PRIMARY KEY (id),
            KEY outbox_unpublished (published_at, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
    Migration {
        version: 2,
        name: "event relay: per-aggregate sequences, partitions and leases; audit log",
        // DDL is not transactional here: every statement can run again after a crash midway
        // (the runner skips duplicate column/index errors, tables are IF NOT EXISTS, rows
        // INSERT IGNORE, updates recompute the same values).
        sql: "
        ALTER TABLE outbox
            ADD COLUMN sequence BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN `partition` SMALLINT NOT NULL DEFAULT 0,
            ADD COLUMN traceparent VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
            ADD KEY outbox_pending_aggregate (aggregate_id, published_at, sequence);

        UPDATE outbox SET `partition` = ORD(SUBSTRING(aggregate_id, 16, 1)) % 16;
        UPDATE outbox o JOIN
            (SELECT id, ROW_NUMBER() OVER (PARTITION BY aggregate_id ORDER BY id) AS n FROM outbox) r
            ON o.id = r.id SET o.sequence = r.n;

        CREATE TABLE IF NOT EXISTS outbox_sequences (
            aggregate_id BINARY(16) NOT NULL,
            last         BIGINT NOT NULL,
            PRIMARY KEY (aggregate_id)
        ) ENGINE=InnoDB;
        INSERT IGNORE INTO outbox_sequences (aggregate_id, last)
            SELECT aggregate_id, MAX(sequence) FROM outbox GROUP BY aggregate_id;

        CREATE TABLE IF NOT EXISTS relay_leases (
            name       VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            owner      VARCHAR(180) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (name)
        ) ENGINE=InnoDB;
        INSERT IGNORE INTO relay_leases (name, owner, expires_at) VALUES
            ('partition:0', '', 0), ('partition:1', '', 0), ('partition:2', '', 0), ('partition:3', '', 0),
            ('partition:4', '', 0), ('partition:5', '', 0), ('partition:6', '', 0), ('partition:7', '', 0),
            ('partition:8', '', 0), ('partition:9', '', 0), ('partition:10', '', 0), ('partition:11', '', 0),
            ('partition:12', '', 0), ('partition:13', '', 0), ('partition:14', '', 0), ('partition:15', '', 0);

        CREATE TABLE IF NOT EXISTS audit_log (
            id         BINARY(16) NOT NULL,
            event_type VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            subject    BINARY(16) NOT NULL,
            actor      TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            time       BIGINT NOT NULL,
            data       MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            PRIMARY KEY (id),
            KEY audit_subject (subject, id),
            KEY audit_type (event_type, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
    Migration {
        version: 3,
        name: "webhooks: endpoints, deliveries, attempt log",
        // Re-runnable like migration 2: tables IF NOT EXISTS, nothing else.
        sql: "
        CREATE TABLE IF NOT EXISTS webhook_endpoints (
            id              BINARY(16) NOT NULL,
            url             TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            events          TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            description     TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            enabled         BOOLEAN NOT NULL,
            disabled_reason TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            secrets         TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            rate_limit      BIGINT NOT NULL,
            failing_since   BIGINT NULL,
            created_at      BIGINT NOT NULL,
            updated_at      BIGINT NOT NULL,
            PRIMARY KEY (id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS webhook_deliveries (
            id              BINARY(16) NOT NULL,
            endpoint_id     BINARY(16) NOT NULL,
            event_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            event           MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            status          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            attempts        BIGINT NOT NULL,
            next_attempt_at BIGINT NOT NULL,
            last_status     BIGINT NULL,
            last_error      TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            created_at      BIGINT NOT NULL,
            updated_at      BIGINT NOT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY webhook_deliveries_event (endpoint_id, event_id),
            KEY webhook_deliveries_endpoint (endpoint_id, id),
            KEY webhook_deliveries_due (status, next_attempt_at),
            CONSTRAINT webhook_deliveries_endpoint_fk FOREIGN KEY (endpoint_id)
                REFERENCES webhook_endpoints (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS webhook_attempts (
            id          BIGINT NOT NULL AUTO_INCREMENT,
            delivery_id BINARY(16) NOT NULL,
            attempt     BIGINT NOT NULL,
            at          BIGINT NOT NULL,
            status      BIGINT NULL,
            error       TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            duration_ms BIGINT NOT NULL,
            PRIMARY KEY (id),
            KEY webhook_attempts_delivery (delivery_id, id),
            CONSTRAINT webhook_attempts_delivery_fk FOREIGN KEY (delivery_id)
                REFERENCES webhook_deliveries (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
    Migration {
        version: 4,
        name: "account lifecycle: one-time tokens, mail queue",
        // Re-runnable like migration 2: the runner skips the duplicate column, tables are
        // IF NOT EXISTS.
        sql: "
        ALTER TABLE users ADD COLUMN verified BOOLEAN NOT NULL DEFAULT FALSE;

        CREATE TABLE IF NOT EXISTS account_tokens (
            id         BINARY(16) NOT NULL,
            user_id    BINARY(16) NOT NULL,
            purpose    VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            token_hash BINARY(32) NOT NULL,
            `binding`  BINARY(32) NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at    BIGINT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY account_tokens_hash (token_hash),
            KEY account_tokens_user (user_id, purpose),
            KEY account_tokens_expiry (expires_at),
            CONSTRAINT account_tokens_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS mail_queue (
            id              BINARY(16) NOT NULL,
            template        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            recipient       VARCHAR(320) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            params          TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            status          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            attempts        BIGINT NOT NULL,
            next_attempt_at BIGINT NOT NULL,
            last_error      TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            created_at      BIGINT NOT NULL,
            updated_at      BIGINT NOT NULL,
            PRIMARY KEY (id),
            KEY mail_queue_due (status, next_attempt_at),
            KEY mail_queue_finished (status, updated_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
    Migration {
        version: 5,
        name: "groups, their member rows, users' external ids, provisioning tokens",
        // Re-runnable like the others: tables IF NOT EXISTS, nothing else.
        sql: "
        CREATE TABLE IF NOT EXISTS user_groups (
            id           BINARY(16) NOT NULL,
            display_name VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            external_id  VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            version      BIGINT NOT NULL,
            created_at   BIGINT NOT NULL,
            updated_at   BIGINT NOT NULL,
            PRIMARY KEY (id),
            KEY user_groups_display_name (display_name, id),
            KEY user_groups_external_id (external_id, id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS group_members (
            group_id BINARY(16) NOT NULL,
            user_id  BINARY(16) NOT NULL,
            PRIMARY KEY (group_id, user_id),
            KEY group_members_user (user_id, group_id),
            CONSTRAINT group_members_group_fk FOREIGN KEY (group_id) REFERENCES user_groups (id) ON DELETE CASCADE,
            CONSTRAINT group_members_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS user_external_ids (
            user_id     BINARY(16) NOT NULL,
            external_id VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            PRIMARY KEY (user_id),
            KEY user_external_ids_external_id (external_id, user_id),
            CONSTRAINT user_external_ids_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        CREATE TABLE IF NOT EXISTS provisioning_tokens (
            id         BINARY(16) NOT NULL,
            name       VARCHAR(400) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            token_hash BINARY(32) NOT NULL,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY provisioning_tokens_hash (token_hash)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
    Migration {
        version: 6,
        name: "TOTP second factor",
        sql: "
        CREATE TABLE IF NOT EXISTS user_totp (
            user_id        BINARY(16) NOT NULL,
            secret         VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            enabled        BOOLEAN NOT NULL,
            last_step      BIGINT NULL,
            recovery_codes TEXT CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            version        BIGINT NOT NULL,
            created_at     BIGINT NOT NULL,
            updated_at     BIGINT NOT NULL,
            PRIMARY KEY (user_id),
            CONSTRAINT user_totp_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
    Migration {
        version: 7,
        name: "confirmed email changes, users' MFA flag",
        sql: "
        -- A copy of user_totp.enabled kept in the row every user read returns, so showing
        -- it costs no second query. Written in the transactions that write user_totp.
        ALTER TABLE users ADD COLUMN mfa_enabled BOOLEAN NOT NULL DEFAULT FALSE;
        UPDATE users SET mfa_enabled = TRUE WHERE id IN (SELECT user_id FROM user_totp WHERE enabled);

        -- The address an email-change token moves the account to (NULL for other purposes).
        ALTER TABLE account_tokens ADD COLUMN new_email VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
    ",
    },
    Migration {
        version: 8,
        name: "SCIM Enterprise User extension; users by last modification",
        // Re-runnable: the table IF NOT EXISTS, and the runner skips a duplicate index.
        sql: "
        CREATE TABLE IF NOT EXISTS user_enterprise (
            user_id         BINARY(16) NOT NULL,
            employee_number VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            cost_center     VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            organization    VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            division        VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            department      VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            manager_id      VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            PRIMARY KEY (user_id),
            KEY user_enterprise_employee_number (employee_number, user_id),
            CONSTRAINT user_enterprise_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
        CREATE INDEX users_updated_at ON users (updated_at, id)
    ",
    },
    Migration {
        version: 9,
        name: "shard catalog: the shard map, global email claims",
        // Re-runnable: both tables IF NOT EXISTS, the index declared inside the table.
        sql: "
        -- Used only where this database is a sharded deployment's catalog.
        CREATE TABLE IF NOT EXISTS shard_map (
            logical INT NOT NULL,
            shard   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            other   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            step    VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            since   BIGINT NULL,
            version BIGINT NOT NULL,
            PRIMARY KEY (logical)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

        -- No partial indexes here: the reconciler's scan of pending claims by age reads
        -- (state, at).
        CREATE TABLE IF NOT EXISTS email_claims (
            email   VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            user_id BINARY(16) NOT NULL,
            state   VARCHAR(8) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            at      BIGINT NOT NULL,
            PRIMARY KEY (email),
            KEY email_claims_pending (state, at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
    ",
    },
];

/// How long connect may spend migrating: longer than a query, because another instance
/// may hold the migration lock while it applies the same migrations.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Readiness checks must answer quickly even when the configured query timeout is long.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections above the pool's minimum are closed after this long, so a burst does
/// not pin `max_connections` server threads forever.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// What a user read selects (`mfa_enabled` is written only with `user_totp`).
const USER_READ_COLUMNS: &str =
    "id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled";

fn search_params(params: &[crate::user_search::Param]) -> Params {
    use crate::user_search::Param;
    Params::Positional(
        params
            .iter()
            .map(|p| match p {
                Param::Text(t) => Value::from(t.as_str()),
                Param::Int(i) => Value::from(*i),
                Param::Id(id) => Value::from(id.as_bytes().as_slice()),
            })
            .collect(),
    )
}

mod sql {
    pub const USER_BY_ID: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE id = ?";
    pub const USER_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE email = ?";
    pub const SESSION_WITH_USER: &str = "SELECT s.id, s.user_id, s.token_hash, s.created_at, s.expires_at, s.revoked_at, \
         u.id, u.email, u.name, u.password_hash, u.role, u.status, u.version, u.created_at, u.updated_at, u.verified, u.mfa_enabled \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?";
    pub const SESSIONS_OF_USER: &str = "SELECT id, user_id, token_hash, created_at, expires_at, revoked_at \
         FROM sessions WHERE user_id = ? ORDER BY id";
    /// The first page passes the nil UUID (16 zero bytes), which sorts before every UUIDv7.
    pub const LIST_USERS_PAGE: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE id > ? ORDER BY id LIMIT ?";
    pub const LIST_USERS_BY_EMAIL: &str = "SELECT id, email, name, password_hash, role, status, version, created_at, updated_at, verified, mfa_enabled \
         FROM users WHERE email = ? AND id > ? ORDER BY id LIMIT ?";
    pub const IDEMPOTENCY_RECORD: &str =
        "SELECT `key`, fingerprint, user_id, created_at FROM idempotency_keys WHERE `key` = ?";
    /// The aggregates with the oldest unpublished rows (step 1 of `pending_events`):
    /// `outbox_unpublished (published_at, id)` serves `published_at IS NULL` in id order.
    pub const PENDING_AGGREGATES: &str =
        "SELECT aggregate_id, `partition` FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?";
    pub const EVENT_COLUMNS: &str = "id, aggregate_id, event_type, payload, created_at, sequence, traceparent";

    pub const INSERT_USER: &str = "INSERT INTO users \
         (id, email, name, password_hash, role, status, version, created_at, updated_at, verified) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    pub const INSERT_IDEMPOTENCY: &str =
        "INSERT INTO idempotency_keys (`key`, fingerprint, user_id, created_at) VALUES (?, ?, ?, ?)";
    /// Bumps the aggregate's sequence, row-locking it until commit; `LAST_INSERT_ID(x)`
    /// hands the new value to the next statement on this connection.
    pub const BUMP_SEQUENCE: &str = "INSERT INTO outbox_sequences (aggregate_id, last) VALUES (?, LAST_INSERT_ID(1)) \
         ON DUPLICATE KEY UPDATE last = LAST_INSERT_ID(last + 1)";
    pub const INSERT_EVENT: &str = "INSERT INTO outbox \
         (id, aggregate_id, event_type, payload, created_at, sequence, `partition`, traceparent) \
         VALUES (?, ?, ?, ?, ?, LAST_INSERT_ID(), ?, ?)";
    pub const UPDATE_USER: &str = "UPDATE users SET email = ?, name = ?, password_hash = ?, role = ?, status = ?, \
         version = ?, updated_at = ?, verified = ? WHERE id = ? AND version = ?";
    pub const USER_EXISTS: &str = "SELECT 1 FROM users WHERE id = ?";
    pub const ACCOUNT_TOKEN_BY_HASH: &str = "SELECT id, user_id, purpose, token_hash, `binding`, created_at, \
         expires_at, used_at, new_email FROM account_tokens WHERE token_hash = ?";
    pub const DELETE_UNUSED_TOKENS: &str =
        "DELETE FROM account_tokens WHERE user_id = ? AND purpose = ? AND used_at IS NULL";
    pub const INSERT_ACCOUNT_TOKEN: &str = "INSERT INTO account_tokens \
         (id, user_id, purpose, token_hash, `binding`, created_at, expires_at, used_at, new_email) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
    pub const USE_TOKEN: &str = "UPDATE account_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL";
    pub const INSERT_MAIL: &str = "INSERT INTO mail_queue (id, template, recipient, params, status, attempts, \
         next_attempt_at, last_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    pub const DUE_MAILS: &str = "SELECT id, template, recipient, params, status, attempts, next_attempt_at, \
         last_error, created_at, updated_at FROM mail_queue WHERE status = 'pending' AND next_attempt_at <= ? \
         ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED";
    pub const RECORD_MAIL: &str = "UPDATE mail_queue SET params = ?, status = ?, attempts = ?, next_attempt_at = ?, \
         last_error = ?, updated_at = ? WHERE id = ?";
    pub const PRUNE_TOKENS: &str = "DELETE FROM account_tokens WHERE expires_at < ? LIMIT ?";
    pub const PRUNE_MAILS: &str =
        "DELETE FROM mail_queue WHERE status IN ('sent', 'failed') AND updated_at < ? LIMIT ?";
    pub const REVOKE_ALL: &str = "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL";
    pub const REVOKE_ALL_EXCEPT: &str =
        "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL AND id <> ?";
    pub const DELETE_USER: &str = "DELETE FROM users WHERE id = ?";
    pub const DELETE_USER_AT_VERSION: &str = "DELETE FROM users WHERE id = ? AND version = ?";
    pub const INSERT_SESSION: &str = "INSERT INTO sessions \
         (id, token_hash, user_id, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)";
    pub const REVOKE_SESSION: &str = "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL";
}

pub struct MysqlStore {
    /// One pool per host of the URL (`mysql://u@h1:3306,h2:3306/db`): the one in use is
    /// `pools[active]`, the host that took writes when last looked for.
    pools: Vec<Pool>,
    active: std::sync::atomic::AtomicUsize,
    query_timeout: Duration,
    connect_timeout: Duration,
    acquire: crate::AcquireClock,
}

/// Server errors that say "try again later": too many connections, shutdown, lock wait
/// timeout, deadlock, killed or timed-out statements, and a read-only server (1290, 1836: a
/// primary demoted by a failover) (MySQL and MariaDB codes).
fn transient_server_error(code: u16) -> bool {
    matches!(code, 1040 | 1053 | 1205 | 1213 | 1290 | 1317 | 1836 | 1927 | 1969 | 3024)
}

/// A URL per host of a multi-host URL (`mysql://USER@H1:P1,H2:P2/DB?…`); a single-host
/// URL as it is.
fn split_hosts(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else { return vec![url.to_owned()] };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let (userinfo, hosts) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
    let at = if userinfo.is_empty() && !authority.contains('@') { "" } else { "@" };
    hosts.split(',').filter(|h| !h.is_empty()).map(|host| format!("{scheme}://{userinfo}{at}{host}{path}")).collect()
}

fn my_err(e: mysql_async::Error) -> RepoError {
    match &e {
        mysql_async::Error::Server(s) if transient_server_error(s.code) => {
            RepoError::Unavailable(format!("mysql: {e}"))
        }
        mysql_async::Error::Io(_)
        | mysql_async::Error::Other(_)
        | mysql_async::Error::Driver(DriverError::ConnectionClosed | DriverError::PoolDisconnected) => {
            RepoError::Unavailable(format!("mysql: {e}"))
        }
        _ => RepoError::Internal(format!("mysql: {e}")),
    }
}

/// Which of `keys` a duplicate-key error (code 1062) names; `Some(None)` for a 1062 that
/// names none of them, `None` for any other error. Recognised by the code, never by the
/// message's wording: that is translated (`lc_messages`: "Doppelter Eintrag 'a' für
/// Schlüssel 'users_email'", "'a' は索引 'users_email' で重複しています"). Index names are
/// not translated and come quoted after the duplicate value in every language, so the
/// *last* quoted occurrence of a known name (`'users_email'`, or MySQL 8's
/// `'users.users_email'`) wins, even when the value itself contains quotes or key names.
fn duplicate_key<'k>(e: &mysql_async::Error, keys: &[&'k str]) -> Option<Option<&'k str>> {
    let mysql_async::Error::Server(s) = e else {
        return None;
    };
    if s.code != 1062 {
        return None;
    }
    let position = |key: &str| {
        let bare = s.message.rfind(&format!("'{key}'"));
        let qualified = s.message.rfind(&format!(".{key}'"));
        bare.max(qualified)
    };
    Some(keys.iter().filter_map(|&k| position(k).map(|at| (at, k))).max().map(|(_, k)| k))
}

/// A duplicate on the users table is the email: its only other unique key is the primary
/// key, a freshly generated UUIDv7, so a 1062 naming no known key is still the email.
fn user_write_err(e: mysql_async::Error) -> RepoError {
    match duplicate_key(&e, &["users_email", "PRIMARY"]) {
        Some(Some("PRIMARY")) => my_err(e),
        Some(_) => RepoError::EmailTaken,
        None => my_err(e),
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> RepoError {
    RepoError::Internal(format!("mysql: corrupt {what} in stored row: {detail}"))
}

/// Takes column `idx` out of `row`, converting it; a missing or ill-typed column means the
/// schema is not what this adapter wrote.
fn take<T: FromValue>(row: &mut Row, idx: usize) -> Result<T, RepoError> {
    match row.take_opt::<T, usize>(idx) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(corrupt("column", format!("#{idx}: {e}"))),
        None => Err(corrupt("column", format!("#{idx} missing"))),
    }
}

fn version_param(v: Version) -> Result<i64, RepoError> {
    i64::try_from(v.0).map_err(|_| RepoError::Internal(format!("version {} does not fit a BIGINT", v.0)))
}

/// Reads the nine user columns starting at `at`.
fn user_from_row(row: &mut Row, at: usize) -> Result<User, RepoError> {
    let role: String = take(row, at + 4)?;
    let status: String = take(row, at + 5)?;
    let version: i64 = take(row, at + 6)?;
    Ok(User {
        id: UserId::from_bytes(take(row, at)?),
        email: Email::from_trusted(take(row, at + 1)?),
        name: DisplayName::from_trusted(take(row, at + 2)?),
        password_hash: PasswordHash::from_trusted(take(row, at + 3)?),
        role: Role::parse(&role).map_err(|_| corrupt("role", &role))?,
        status: UserStatus::parse(&status).map_err(|_| corrupt("status", &status))?,
        version: Version(u64::try_from(version).map_err(|_| corrupt("version", version))?),
        created_at: Timestamp(take(row, at + 7)?),
        updated_at: Timestamp(take(row, at + 8)?),
        verified: take(row, at + 9)?,
        mfa_enabled: take(row, at + 10)?,
    })
}

fn session_from_row(row: &mut Row) -> Result<Session, RepoError> {
    Ok(Session {
        id: SessionId::from_bytes(take(row, 0)?),
        user_id: UserId::from_bytes(take(row, 1)?),
        token_hash: TokenHash(take(row, 2)?),
        created_at: Timestamp(take(row, 3)?),
        expires_at: Timestamp(take(row, 4)?),
        revoked_at: take::<Option<i64>>(row, 5)?.map(Timestamp),
    })
}

fn user_params(user: &User) -> Result<Vec<Value>, RepoError> {
    Ok(vec![
        user.id.as_bytes().as_slice().into(),
        user.email.as_str().into(),
        user.name.as_str().into(),
        user.password_hash.as_str().into(),
        user.role.as_str().into(),
        user.status.as_str().into(),
        version_param(user.version)?.into(),
        user.created_at.0.into(),
        user.updated_at.0.into(),
        user.verified.into(),
    ])
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

async fn insert_event(tx: &mut Transaction<'_>, event: &OutboxEvent) -> Result<(), RepoError> {
    let aggregate = event.aggregate_id.as_bytes().as_slice();
    tx.exec_drop(sql::BUMP_SEQUENCE, (aggregate,)).await.map_err(my_err)?;
    tx.exec_drop(
        sql::INSERT_EVENT,
        (
            event.id.as_bytes().as_slice(),
            aggregate,
            event.event_type,
            event.payload.as_str(),
            event.created_at.0,
            outbox_partition(event.aggregate_id),
            event.traceparent.as_deref(),
        ),
    )
    .await
    .map_err(my_err)
}

/// After an UPDATE/DELETE guarded by version touched no row: was it the version or the row?
/// The versioned user update (`params` as [`sql::UPDATE_USER`] takes them) with its
/// session revocations and event, inside `tx`.
async fn update_user_in(
    tx: &mut Transaction<'_>,
    user: &User,
    params: Vec<Value>,
    revoke: SessionRevocation,
    event: &OutboxEvent,
) -> Result<(), RepoError> {
    tx.exec_drop(sql::UPDATE_USER, params).await.map_err(user_write_err)?;
    // Matched rows, not changed rows: the pool sets CLIENT_FOUND_ROWS.
    if tx.affected_rows() == 0 {
        return Err(missing_or_conflict(tx, user.id).await);
    }
    let uid = user.id.as_bytes().as_slice();
    match revoke {
        SessionRevocation::None => {}
        SessionRevocation::All { at } => {
            tx.exec_drop(sql::REVOKE_ALL, (at.0, uid)).await.map_err(my_err)?;
        }
        SessionRevocation::AllExcept { keep, at } => {
            tx.exec_drop(sql::REVOKE_ALL_EXCEPT, (at.0, uid, keep.as_bytes().as_slice())).await.map_err(my_err)?;
        }
    }
    insert_event(tx, event).await
}

fn update_user_params(user: &User, expected: Version) -> Result<Vec<Value>, RepoError> {
    Ok(vec![
        user.email.as_str().into(),
        user.name.as_str().into(),
        user.password_hash.as_str().into(),
        user.role.as_str().into(),
        user.status.as_str().into(),
        version_param(user.version)?.into(),
        user.updated_at.0.into(),
        user.verified.into(),
        user.id.as_bytes().as_slice().into(),
        version_param(expected)?.into(),
    ])
}

async fn missing_or_conflict(tx: &mut Transaction<'_>, id: UserId) -> RepoError {
    match tx.exec_first::<i64, _, _>(sql::USER_EXISTS, (id.as_bytes().as_slice(),)).await {
        Ok(Some(_)) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => my_err(e),
    }
}

/// Commits on success; on failure rolls back and returns the original error (a failed
/// rollback only means the server already dropped the transaction).
async fn finish<T>(tx: Transaction<'_>, outcome: Result<T, RepoError>) -> Result<T, RepoError> {
    match outcome {
        Ok(value) => {
            tx.commit().await.map_err(my_err)?;
            Ok(value)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Serialises migrators on a named server lock (per database, so tests in other
/// databases do not wait), then applies what `schema_migrations` lacks.
async fn migrate(conn: &mut Conn) -> Result<(), RepoError> {
    // Lock names are limited to 64 characters; a digest keeps long database names legal.
    const LOCK: &str = "CONCAT('strata_migrate:', MD5(COALESCE(DATABASE(), '')))";
    let locked: Option<Option<i64>> = conn.query_first(format!("SELECT GET_LOCK({LOCK}, 30)")).await.map_err(my_err)?;
    if locked != Some(Some(1)) {
        return Err(RepoError::Unavailable("mysql: timed out waiting for the migration lock".into()));
    }
    let outcome = apply_migrations(conn).await;
    // Closing the connection would release the lock too; releasing it now lets a waiting
    // instance proceed without waiting for our disconnect.
    let _ = conn.query_drop(format!("DO RELEASE_LOCK({LOCK})")).await;
    outcome
}

async fn apply_migrations(conn: &mut Conn) -> Result<(), RepoError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT NOT NULL PRIMARY KEY,
             name VARCHAR(255) NOT NULL,
             applied_at BIGINT NOT NULL
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    )
    .await
    .map_err(my_err)?;
    let applied: i64 = conn
        .query_first::<Option<i64>, _>("SELECT MAX(version) FROM schema_migrations")
        .await
        .map_err(my_err)?
        .flatten()
        .unwrap_or(0);
    for m in MIGRATIONS.iter().filter(|m| m.version > applied) {
        for statement in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            match conn.query_drop(statement).await {
                // Duplicate column or index name: an earlier, interrupted run of this
                // migration got that far (DDL commits on its own).
                Err(mysql_async::Error::Server(e)) if matches!(e.code, 1060 | 1061) => {
                    tracing::info!(
                        backend = "mysql",
                        version = m.version,
                        "skipping already applied DDL: {}",
                        e.message
                    );
                }
                other => other.map_err(my_err)?,
            }
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (m.version, m.name, now_micros()),
        )
        .await
        .map_err(my_err)?;
        tracing::info!(backend = "mysql", version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

impl MysqlStore {
    /// Builds the pool, checks that the server answers and, if `options.migrate`, applies
    /// pending migrations.
    pub async fn connect(options: &StoreOptions) -> Result<Self, RepoError> {
        // mysql_async only knows the mysql:// scheme; mariadb:// is our alias for it.
        let url = match options.url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => options.url.clone(),
        };
        let max = options.max_connections.max(1);
        let constraints = PoolConstraints::new(max.min(2), max)
            .ok_or_else(|| RepoError::Internal(format!("invalid pool size {max}")))?;
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(IDLE_CONNECTION_TTL)
            .with_reset_connection(false);
        let mut hosts = Vec::new();
        for host_url in split_hosts(&url) {
            let opts = Opts::from_url(&host_url).map_err(|e| {
                RepoError::Internal(format!("invalid MySQL URL {}: {e}", crate::redact_url(&options.url)))
            })?;
            hosts.push(Opts::from(OptsBuilder::from_opts(opts).client_found_rows(true).pool_opts(pool_opts.clone())));
        }
        let store = MysqlStore {
            pools: hosts.iter().cloned().map(Pool::new).collect(),
            active: Default::default(),
            query_timeout: options.query_timeout,
            connect_timeout: options.connect_timeout,
            acquire: Default::default(),
        };
        if options.lazy {
            return Ok(store);
        }
        if store.pools.len() > 1 && !store.fail_over().await {
            return Err(RepoError::Unavailable(format!(
                "no host of {} takes writes (all down or read-only)",
                crate::redact_url(&options.url)
            )));
        }
        let opts = hosts[store.active.load(std::sync::atomic::Ordering::Relaxed)].clone();
        let setup_timeout = if options.migrate { MIGRATION_TIMEOUT } else { options.connect_timeout };
        crate::with_timeout(setup_timeout, async {
            // A connection of its own, closed afterwards: the migration lock is bound to
            // the session and must never be left behind in a pooled connection.
            let mut conn = crate::with_timeout(options.connect_timeout, async {
                Conn::new(opts).await.map_err(|e| RepoError::Unavailable(format!("mysql connect: {e}")))
            })
            .await?;
            let outcome = if options.migrate { migrate(&mut conn).await } else { Ok(()) };
            let _ = conn.disconnect().await;
            outcome
        })
        .await?;
        Ok(store)
    }

    fn pool(&self) -> &Pool {
        &self.pools[self.active.load(std::sync::atomic::Ordering::Relaxed)]
    }

    /// Looks for the host that takes writes (`@@read_only = 0`), the current one last, and
    /// uses it from now on; false if none does. This is how a multi-host URL follows a
    /// promoted replica: connecting to the old primary fails, and the next host is asked.
    async fn fail_over(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let current = self.active.load(Relaxed);
        for step in 1..=self.pools.len() {
            let i = (current + step) % self.pools.len();
            let writable = crate::with_timeout(self.connect_timeout, async {
                let mut conn = self.pools[i].get_conn().await.map_err(my_err)?;
                conn.query_first::<i64, _>("SELECT @@GLOBAL.read_only").await.map_err(my_err)
            })
            .await;
            if let Ok(Some(0)) = writable {
                if i != current {
                    tracing::warn!(host = i, "mysql: following the primary to another host of the URL");
                }
                self.active.store(i, Relaxed);
                return true;
            }
        }
        false
    }

    async fn conn(&self) -> Result<crate::Held<'_, Conn>, RepoError> {
        let connect_err = |e: mysql_async::Error| match e {
            mysql_async::Error::Server(_) | mysql_async::Error::Driver(_) => {
                RepoError::Unavailable(format!("mysql connect: {e}"))
            }
            other => my_err(other),
        };
        match self.acquire.time(self.pool().get_conn()).await {
            Ok(conn) => Ok(conn),
            // The host is gone: with several, find the one that takes writes now.
            Err(e) if self.pools.len() > 1 && self.fail_over().await => {
                tracing::debug!(error = %e, "mysql: connection failed; retrying on the host that takes writes");
                self.acquire.time(self.pool().get_conn()).await.map_err(connect_err)
            }
            Err(e) => Err(connect_err(e)),
        }
    }

    async fn query_rows(&self, sql: &'static str, params: impl Into<Params> + Send) -> Result<Vec<Row>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            conn.exec(sql, params).await.map_err(my_err)
        })
        .await
    }

    async fn query_row(&self, sql: &'static str, params: impl Into<Params> + Send) -> Result<Option<Row>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            conn.exec_first(sql, params).await.map_err(my_err)
        })
        .await
    }

    async fn query_users(&self, sql: &'static str, params: impl Into<Params> + Send) -> Result<Vec<User>, RepoError> {
        self.query_rows(sql, params).await?.iter_mut().map(|r| user_from_row(r, 0)).collect()
    }

    async fn query_user(&self, sql: &'static str, params: impl Into<Params> + Send) -> Result<Option<User>, RepoError> {
        self.query_row(sql, params).await?.map(|mut r| user_from_row(&mut r, 0)).transpose()
    }
}

impl MysqlStore {
    /// The users a statement of `user_search` selects.
    async fn built_users(&self, built: crate::user_search::Built) -> Result<Vec<User>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut rows: Vec<Row> =
                conn.exec(built.sql.as_str(), search_params(&built.params)).await.map_err(my_err)?;
            rows.iter_mut().map(|r| user_from_row(r, 0)).collect()
        })
        .await
    }
}

#[async_trait]
impl UserRepository for MysqlStore {
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let user_params = user_params(user)?;
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                // The key goes in first: when a concurrent retry with the same key (and so
                // the same email) races us, the loser must hear "key taken" and replay,
                // not "email taken".
                if let Some(rec) = idempotency {
                    tx.exec_drop(
                        sql::INSERT_IDEMPOTENCY,
                        (
                            rec.key.as_str(),
                            rec.fingerprint.as_slice(),
                            rec.user_id.as_bytes().as_slice(),
                            rec.created_at.0,
                        ),
                    )
                    .await
                    // Its primary key is the only unique key of that table.
                    .map_err(|e| match duplicate_key(&e, &[]) {
                        Some(_) => RepoError::IdempotencyKeyTaken,
                        None => my_err(e),
                    })?;
                }
                tx.exec_drop(sql::INSERT_USER, user_params).await.map_err(user_write_err)?;
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError> {
        let Some(mut row) = self.query_row(sql::IDEMPOTENCY_RECORD, (key.as_str(),)).await? else {
            return Ok(None);
        };
        Ok(Some(IdempotencyRecord {
            key: IdempotencyKey::from_trusted(take(&mut row, 0)?),
            fingerprint: take(&mut row, 1)?,
            user_id: UserId::from_bytes(take(&mut row, 2)?),
            created_at: Timestamp(take(&mut row, 3)?),
        }))
    }

    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            conn.exec_drop("DELETE FROM idempotency_keys WHERE created_at < ?", (before.0,)).await.map_err(my_err)?;
            Ok(conn.affected_rows())
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.query_user(sql::USER_BY_ID, (id.as_bytes().as_slice(),)).await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        self.query_user(sql::USER_BY_EMAIL, (email.as_str(),)).await
    }

    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let params = update_user_params(user, expected)?;
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async { update_user_in(&mut tx, user, params, revoke, event).await }.await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let expected = expected.map(version_param).transpose()?;
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let uid = id.as_bytes().as_slice();
                match expected {
                    Some(v) => tx.exec_drop(sql::DELETE_USER_AT_VERSION, (uid, v)).await,
                    None => tx.exec_drop(sql::DELETE_USER, (uid,)).await,
                }
                .map_err(my_err)?;
                if tx.affected_rows() == 0 {
                    return Err(missing_or_conflict(&mut tx, id).await);
                }
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError> {
        if crate::user_search::needs_list_page(query) {
            return self
                .built_users(crate::user_search::list_page(
                    crate::user_search::Dialect::Mysql,
                    USER_READ_COLUMNS,
                    query,
                ))
                .await;
        }
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let limit = i64::from(query.limit);
        match &query.email {
            Some(email) => self.query_users(sql::LIST_USERS_BY_EMAIL, (email.as_str(), after.as_slice(), limit)).await,
            None => self.query_users(sql::LIST_USERS_PAGE, (after.as_slice(), limit)).await,
        }
    }

    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, RepoError> {
        self.built_users(crate::user_search::select(crate::user_search::Dialect::Mysql, USER_READ_COLUMNS, search))
            .await
    }

    async fn count_users(&self, predicate: Option<&UserPredicate>) -> Result<u64, RepoError> {
        let built = crate::user_search::count(crate::user_search::Dialect::Mysql, predicate);
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let n: Option<i64> =
                conn.exec_first(built.sql.as_str(), search_params(&built.params)).await.map_err(my_err)?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
        .await
    }
}

#[async_trait]
impl SessionRepository for MysqlStore {
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                tx.exec_drop(
                    sql::INSERT_SESSION,
                    (
                        session.id.as_bytes().as_slice(),
                        session.token_hash.0.as_slice(),
                        session.user_id.as_bytes().as_slice(),
                        session.created_at.0,
                        session.expires_at.0,
                        session.revoked_at.map(|t| t.0),
                    ),
                )
                .await
                .map_err(my_err)?;
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        let Some(mut row) = self.query_row(sql::SESSION_WITH_USER, (token_hash.0.as_slice(),)).await? else {
            return Ok(None);
        };
        Ok(Some((session_from_row(&mut row)?, user_from_row(&mut row, 6)?)))
    }

    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                tx.exec_drop(sql::REVOKE_SESSION, (at.0, id.as_bytes().as_slice())).await.map_err(my_err)?;
                let changed = tx.affected_rows() > 0;
                if changed {
                    insert_event(&mut tx, event).await?;
                }
                Ok(changed)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError> {
        self.query_rows(sql::SESSIONS_OF_USER, (user_id.as_bytes().as_slice(),))
            .await?
            .iter_mut()
            .map(session_from_row)
            .collect()
    }
}

/// A cell of EXPLAIN output as the mysql client would print it.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::NULL) => "NULL".into(),
        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::UInt(u)) => u.to_string(),
        Some(Value::Float(f)) => f.to_string(),
        Some(Value::Double(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

/// Tabular EXPLAIN, one row per table access: every access goes through an index (`key`
/// set), none is a full table scan (`type` ALL) and, when the index is meant to deliver
/// the ORDER BY, no row is sorted afterwards (`Using filesort`).
fn plan_uses_index(rows: &[Vec<(String, String)>], ordered: bool) -> bool {
    let field = |row: &[(String, String)], name: &str| {
        row.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    !rows.is_empty()
        && rows.iter().all(|row| {
            let (access, key, extra) = (field(row, "type"), field(row, "key"), field(row, "Extra"));
            !access.is_empty()
                && access != "NULL"
                && access != "ALL"
                && !key.is_empty()
                && key != "NULL"
                && !(ordered && extra.contains("filesort"))
        })
}

/// EXPLAINs one query in `tx` and reads the plan.
async fn explain_one(
    tx: &mut Transaction<'_>,
    name: &'static str,
    sql: &'static str,
    ordered: bool,
    params: Params,
) -> Result<QueryPlan, RepoError> {
    // Prepared and closed right away, so these one-off statements do not push hot ones
    // out of the connection's statement cache.
    let stmt = tx.prep(format!("EXPLAIN {sql}")).await.map_err(my_err)?;
    let rows: Vec<Row> = tx.exec(&stmt, params).await.map_err(my_err)?;
    tx.close(stmt).await.map_err(my_err)?;
    let table: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|row| {
            row.columns_ref()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name_str().into_owned(), cell(row.as_ref(i))))
                .collect()
        })
        .collect();
    let mut plan = String::new();
    if let Some(first) = table.first() {
        plan.push_str(&first.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join("\t"));
    }
    for row in &table {
        plan.push('\n');
        plan.push_str(&row.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("\t"));
    }
    Ok(QueryPlan { name, sql, plan, uses_index: plan_uses_index(&table, ordered) })
}

fn uuid_of(bytes: Vec<u8>) -> Result<Uuid, RepoError> {
    Uuid::from_slice(&bytes).map_err(|e| corrupt("uuid", e))
}

fn stored_event(r: &mut Row) -> Result<StoredEvent, RepoError> {
    let sequence: i64 = take(r, 5)?;
    Ok(StoredEvent {
        id: uuid_of(take(r, 0)?)?,
        aggregate_id: uuid_of(take(r, 1)?)?,
        event_type: take(r, 2)?,
        payload: take(r, 3)?,
        created_at: Timestamp(take(r, 4)?),
        sequence: u64::try_from(sequence).map_err(|_| corrupt("sequence", sequence))?,
        traceparent: take(r, 6)?,
    })
}

fn audit_entry(r: &mut Row) -> Result<AuditEntry, RepoError> {
    Ok(AuditEntry {
        id: uuid_of(take(r, 0)?)?,
        event_type: take(r, 1)?,
        subject: uuid_of(take(r, 2)?)?,
        actor: take(r, 3)?,
        time: Timestamp(take(r, 4)?),
        data: take(r, 5)?,
    })
}

fn in_list(count: usize) -> String {
    vec!["?"; count].join(", ")
}

impl MysqlStore {
    /// A statement built at run time (IN lists), parameters by position.
    async fn query_built(&self, sql: String, params: Vec<Value>) -> Result<Vec<Row>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            conn.exec(sql, Params::Positional(params)).await.map_err(my_err)
        })
        .await
    }

    /// One statement in autocommit mode; returns the affected rows.
    async fn execute_one(&self, sql: String, params: Vec<Value>) -> Result<u64, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            conn.exec_drop(sql, Params::Positional(params)).await.map_err(my_err)?;
            Ok(conn.affected_rows())
        })
        .await
    }
}

#[async_trait]
impl OutboxRepository for MysqlStore {
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = insert_event(&mut tx, event).await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn pending_events(&self, partitions: &[u16], limit: u32) -> Result<Vec<StoredEvent>, RepoError> {
        if partitions.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        // Scanned in id order, other partitions skipped in Rust: with relays sharing the
        // partitions that reads about relays × limit rows.
        let scan = limit.saturating_mul(u32::from(strata_core::domain::OUTBOX_PARTITIONS));
        let mut aggregates: Vec<Vec<u8>> = Vec::new();
        for mut r in self.query_rows(sql::PENDING_AGGREGATES, (scan,)).await? {
            let id: Vec<u8> = take(&mut r, 0)?;
            let partition: i64 = take(&mut r, 1)?;
            if partitions.contains(&(partition as u16)) && !aggregates.contains(&id) {
                aggregates.push(id);
                if aggregates.len() >= limit as usize {
                    break;
                }
            }
        }
        if aggregates.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} FROM outbox WHERE published_at IS NULL AND aggregate_id IN ({}) \
             ORDER BY aggregate_id, sequence LIMIT ?",
            sql::EVENT_COLUMNS,
            in_list(aggregates.len())
        );
        let mut params: Vec<Value> = aggregates.into_iter().map(Value::Bytes).collect();
        params.push(Value::UInt(u64::from(limit)));
        self.query_built(sql, params).await?.iter_mut().map(stored_event).collect()
    }

    async fn mark_published(&self, ids: &[Uuid], at: Timestamp) -> Result<(), RepoError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!("UPDATE outbox SET published_at = ? WHERE id IN ({})", in_list(ids.len()));
        let mut params = vec![Value::Int(at.0)];
        params.extend(ids.iter().map(|id| Value::Bytes(id.as_bytes().to_vec())));
        self.execute_one(sql, params).await.map(drop)
    }

    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        // `published_at IS NOT NULL AND published_at < ?` is one range of outbox_unpublished.
        self.execute_one(
            "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ? ORDER BY published_at LIMIT ?"
                .into(),
            vec![Value::Int(before.0), Value::UInt(u64::from(limit))],
        )
        .await
    }

    async fn outbox_backlog(&self) -> Result<Backlog, RepoError> {
        let row = self.query_row("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL", ()).await?;
        let Some(mut r) = row else { return Ok(Backlog::default()) };
        let count: i64 = take(&mut r, 0)?;
        Ok(Backlog { count: count as u64, oldest: take::<Option<i64>>(&mut r, 1)?.map(Timestamp) })
    }

    async fn relay_leases(&self) -> Result<Vec<RelayLease>, RepoError> {
        let rows = self.query_rows("SELECT name, owner, expires_at FROM relay_leases ORDER BY name", ()).await?;
        rows.into_iter()
            .map(|mut r| {
                Ok(RelayLease {
                    name: take(&mut r, 0)?,
                    owner: take(&mut r, 1)?,
                    expires_at: Timestamp(take(&mut r, 2)?),
                })
            })
            .collect()
    }

    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError> {
        // CLIENT_FOUND_ROWS is on: a renewal that writes the same values still counts 1.
        self.execute_one(
            "UPDATE relay_leases SET owner = ?, expires_at = ? WHERE name = ? AND (owner = ? OR expires_at < ?)".into(),
            vec![owner.into(), Value::Int(until.0), name.into(), owner.into(), Value::Int(now.0)],
        )
        .await
        .map(|n| n == 1)
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError> {
        self.execute_one(
            "UPDATE relay_leases SET owner = '', expires_at = 0 WHERE name = ? AND owner = ?".into(),
            vec![name.into(), owner.into()],
        )
        .await
        .map(drop)
    }

    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget_before: Timestamp) -> Result<(), RepoError> {
        self.execute_one(
            "INSERT INTO relay_leases (name, owner, expires_at) VALUES (CONCAT('member:', ?), ?, ?) \
             ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)"
                .into(),
            vec![owner.into(), owner.into(), Value::Int(until.0)],
        )
        .await?;
        self.execute_one(
            "DELETE FROM relay_leases WHERE name LIKE 'member:%' AND expires_at < ?".into(),
            vec![Value::Int(forget_before.0)],
        )
        .await
        .map(drop)
    }
}

#[async_trait]
impl AuditRepository for MysqlStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<u64, RepoError> {
        if entries.is_empty() {
            return Ok(0);
        }
        // With CLIENT_FOUND_ROWS on, affected rows cannot tell a skipped duplicate from an
        // insert, so the ids already present (redeliveries) are looked up first.
        let ids: Vec<Value> = entries.iter().map(|e| Value::Bytes(e.id.as_bytes().to_vec())).collect();
        let present: Vec<Vec<u8>> = self
            .query_built(format!("SELECT id FROM audit_log WHERE id IN ({})", in_list(ids.len())), ids)
            .await?
            .iter_mut()
            .map(|r| take(r, 0))
            .collect::<Result<_, _>>()?;
        let fresh: Vec<&AuditEntry> =
            entries.iter().filter(|e| !present.iter().any(|p| p == e.id.as_bytes())).collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        // A duplicate that raced in since is left as it is. Not INSERT IGNORE: that would
        // also swallow real errors (truncation, bad data).
        let sql = format!(
            "INSERT INTO audit_log (id, event_type, subject, actor, time, data) VALUES {} \
             ON DUPLICATE KEY UPDATE id = id",
            vec!["(?, ?, ?, ?, ?, ?)"; fresh.len()].join(", ")
        );
        let mut params = Vec::with_capacity(fresh.len() * 6);
        for e in &fresh {
            params.extend([
                Value::Bytes(e.id.as_bytes().to_vec()),
                e.event_type.as_str().into(),
                Value::Bytes(e.subject.as_bytes().to_vec()),
                e.actor.as_str().into(),
                Value::Int(e.time.0),
                e.data.as_str().into(),
            ]);
        }
        self.execute_one(sql, params).await?;
        Ok(fresh.len() as u64)
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RepoError> {
        let mut sql = String::from("SELECT id, event_type, subject, actor, time, data FROM audit_log WHERE id > ?");
        let mut params = vec![Value::Bytes(query.id_floor().as_bytes().to_vec())];
        if let Some(subject) = query.subject {
            sql.push_str(" AND subject = ?");
            params.push(Value::Bytes(subject.as_bytes().to_vec()));
        }
        if let Some(t) = &query.event_type {
            sql.push_str(" AND event_type = ?");
            params.push(t.as_str().into());
        }
        if let Some(since) = query.since {
            sql.push_str(" AND time >= ?");
            params.push(Value::Int(since.0));
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        params.push(Value::UInt(u64::from(query.limit)));
        self.query_built(sql, params).await?.iter_mut().map(audit_entry).collect()
    }

    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        let floor = AuditQuery { since: Some(before), ..AuditQuery::default() }.id_floor();
        self.execute_one(
            "DELETE FROM audit_log WHERE id < ? ORDER BY id LIMIT ?".into(),
            vec![Value::Bytes(floor.as_bytes().to_vec()), Value::UInt(u64::from(limit))],
        )
        .await
    }
}

fn uuid_value(id: Uuid) -> Value {
    Value::Bytes(id.as_bytes().to_vec())
}

fn endpoint_from_row(r: &mut Row) -> Result<WebhookEndpoint, RepoError> {
    EndpointRow {
        id: Uuid::from_bytes(take(r, 0)?),
        url: take(r, 1)?,
        events: take(r, 2)?,
        description: take(r, 3)?,
        enabled: take(r, 4)?,
        disabled_reason: take(r, 5)?,
        secrets: take(r, 6)?,
        rate_limit: take(r, 7)?,
        failing_since: take(r, 8)?,
        created_at: take(r, 9)?,
        updated_at: take(r, 10)?,
    }
    .into_domain()
    .map_err(|e| corrupt("webhook endpoint", e))
}

fn delivery_from_row(r: &mut Row) -> Result<WebhookDelivery, RepoError> {
    DeliveryRow {
        id: Uuid::from_bytes(take(r, 0)?),
        endpoint_id: Uuid::from_bytes(take(r, 1)?),
        event_id: take(r, 2)?,
        event: take(r, 3)?,
        status: take(r, 4)?,
        attempts: take(r, 5)?,
        next_attempt_at: take(r, 6)?,
        last_status: take(r, 7)?,
        last_error: take(r, 8)?,
        created_at: take(r, 9)?,
        updated_at: take(r, 10)?,
    }
    .into_domain()
    .map_err(|e| corrupt("webhook delivery", e))
}

fn attempt_from_row(r: &mut Row) -> Result<WebhookAttempt, RepoError> {
    let attempt: i64 = take(r, 1)?;
    let status: Option<i64> = take(r, 3)?;
    let duration: i64 = take(r, 5)?;
    Ok(WebhookAttempt {
        delivery_id: Uuid::from_bytes(take(r, 0)?),
        attempt: u32::try_from(attempt).map_err(|_| corrupt("webhook attempt", attempt))?,
        at: Timestamp(take(r, 2)?),
        status: status.map(u16::try_from).transpose().map_err(|_| corrupt("webhook attempt status", "range"))?,
        error: take(r, 4)?,
        duration_ms: u32::try_from(duration).map_err(|_| corrupt("webhook attempt duration", duration))?,
    })
}

/// The endpoint's columns after the id, then the id: the UPDATE's parameter order.
fn endpoint_values(r: EndpointRow) -> Vec<Value> {
    vec![
        r.url.into(),
        r.events.into(),
        r.description.into(),
        r.enabled.into(),
        r.disabled_reason.into(),
        r.secrets.into(),
        r.rate_limit.into(),
        r.failing_since.into(),
        r.created_at.into(),
        r.updated_at.into(),
        uuid_value(r.id),
    ]
}

#[async_trait]
impl WebhookRepository for MysqlStore {
    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), RepoError> {
        self.execute_one(
            "INSERT INTO webhook_endpoints (url, events, description, enabled, disabled_reason, secrets, rate_limit, \
             failing_since, created_at, updated_at, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                .into(),
            endpoint_values(EndpointRow::from_domain(endpoint)),
        )
        .await
        .map(drop)
    }

    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, RepoError> {
        self.query_row(
            concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE id = ?"),
            (id.as_bytes().as_slice(),),
        )
        .await?
        .map(|mut r| endpoint_from_row(&mut r))
        .transpose()
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError> {
        self.query_rows(concat!("SELECT ", endpoint_columns!(), " FROM webhook_endpoints ORDER BY id"), ())
            .await?
            .iter_mut()
            .map(endpoint_from_row)
            .collect()
    }

    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        let values = endpoint_values(EndpointRow::from_domain(endpoint));
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                tx.exec_drop(
                    "UPDATE webhook_endpoints SET url = ?, events = ?, description = ?, enabled = ?, \
                     disabled_reason = ?, secrets = ?, rate_limit = ?, failing_since = ?, created_at = ?, \
                     updated_at = ? WHERE id = ?",
                    Params::Positional(values),
                )
                .await
                .map_err(my_err)?;
                // CLIENT_FOUND_ROWS: an unchanged row still counts as matched.
                if tx.affected_rows() == 0 {
                    return Err(RepoError::NotFound);
                }
                match event {
                    Some(event) => insert_event(&mut tx, event).await,
                    None => Ok(()),
                }
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn delete_webhook_endpoint(&self, id: Uuid) -> Result<bool, RepoError> {
        // Deliveries and their attempts go with it (ON DELETE CASCADE).
        self.execute_one("DELETE FROM webhook_endpoints WHERE id = ?".into(), vec![uuid_value(id)]).await.map(|n| n > 0)
    }

    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<u64, RepoError> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let rows: Vec<DeliveryRow> = deliveries.iter().map(DeliveryRow::from_domain).collect();
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let mut added = 0;
                for r in rows {
                    // With CLIENT_FOUND_ROWS a skipped duplicate counts as affected, so a
                    // redelivered event is recognised by looking first.
                    let present: Option<i64> = tx
                        .exec_first(
                            "SELECT 1 FROM webhook_deliveries WHERE endpoint_id = ? AND event_id = ?",
                            (r.endpoint_id.as_bytes().as_slice(), r.event_id.as_str()),
                        )
                        .await
                        .map_err(my_err)?;
                    if present.is_some() {
                        continue;
                    }
                    // Selecting from the endpoint skips a deleted one and share-locks a live
                    // one against deletion until commit.
                    tx.exec_drop(
                        concat!(
                            "INSERT INTO webhook_deliveries (",
                            delivery_columns!(),
                            ") SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM webhook_endpoints WHERE id = ? \
                             ON DUPLICATE KEY UPDATE webhook_deliveries.id = webhook_deliveries.id"
                        ),
                        Params::Positional(vec![
                            uuid_value(r.id),
                            uuid_value(r.endpoint_id),
                            r.event_id.into(),
                            r.event.into(),
                            r.status.into(),
                            r.attempts.into(),
                            r.next_attempt_at.into(),
                            r.last_status.into(),
                            r.last_error.into(),
                            r.created_at.into(),
                            r.updated_at.into(),
                            uuid_value(r.endpoint_id),
                        ]),
                    )
                    .await
                    .map_err(my_err)?;
                    added += tx.affected_rows();
                }
                Ok(added)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepoError> {
        // MySQL cannot UPDATE a table it selects from in a subquery, so: lock the due rows
        // (SKIP LOCKED: concurrent dispatchers take disjoint rows), then move them.
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let mut rows: Vec<Row> = tx
                    .exec(
                        concat!(
                            "SELECT ",
                            delivery_columns!(),
                            " FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? \
                             ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED"
                        ),
                        (now.0, limit),
                    )
                    .await
                    .map_err(my_err)?;
                let mut claimed = rows.iter_mut().map(delivery_from_row).collect::<Result<Vec<_>, _>>()?;
                if claimed.is_empty() {
                    return Ok(claimed);
                }
                let sql = format!(
                    "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id IN ({})",
                    in_list(claimed.len())
                );
                let mut params = vec![Value::Int(lease_until.0)];
                params.extend(claimed.iter().map(|d| uuid_value(d.id)));
                tx.exec_drop(sql, Params::Positional(params)).await.map_err(my_err)?;
                for d in &mut claimed {
                    d.next_attempt_at = lease_until;
                }
                Ok(claimed)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn record_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), RepoError> {
        let r = DeliveryRow::from_domain(delivery);
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                tx.exec_drop(
                    "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, last_status = ?, \
                     last_error = ?, updated_at = ? WHERE id = ?",
                    Params::Positional(vec![
                        r.status.into(),
                        r.attempts.into(),
                        r.next_attempt_at.into(),
                        r.last_status.into(),
                        r.last_error.into(),
                        r.updated_at.into(),
                        uuid_value(r.id),
                    ]),
                )
                .await
                .map_err(my_err)?;
                // Gone with its endpoint meanwhile: nothing to log against.
                if let (1.., Some(a)) = (tx.affected_rows(), attempt) {
                    tx.exec_drop(
                        concat!("INSERT INTO webhook_attempts (", attempt_columns!(), ") VALUES (?, ?, ?, ?, ?, ?)"),
                        (
                            a.delivery_id.as_bytes().as_slice(),
                            a.attempt,
                            a.at.0,
                            a.status,
                            a.error.as_deref(),
                            a.duration_ms,
                        ),
                    )
                    .await
                    .map_err(my_err)?;
                }
                Ok(())
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn webhook_delivery(&self, endpoint_id: Uuid, id: Uuid) -> Result<Option<WebhookDelivery>, RepoError> {
        self.query_row(
            concat!("SELECT ", delivery_columns!(), " FROM webhook_deliveries WHERE id = ? AND endpoint_id = ?"),
            (id.as_bytes().as_slice(), endpoint_id.as_bytes().as_slice()),
        )
        .await?
        .map(|mut r| delivery_from_row(&mut r))
        .transpose()
    }

    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError> {
        let after = query.after.unwrap_or(Uuid::nil());
        let mut rows = match query.status {
            None => {
                self.query_rows(
                    concat!(
                        "SELECT ",
                        delivery_columns!(),
                        " FROM webhook_deliveries WHERE endpoint_id = ? AND id > ? ORDER BY id LIMIT ?"
                    ),
                    (query.endpoint_id.as_bytes().as_slice(), after.as_bytes().as_slice(), query.limit),
                )
                .await?
            }
            Some(status) => {
                self.query_rows(
                    concat!(
                        "SELECT ",
                        delivery_columns!(),
                        " FROM webhook_deliveries WHERE endpoint_id = ? AND id > ? AND status = ? ORDER BY id LIMIT ?"
                    ),
                    (
                        query.endpoint_id.as_bytes().as_slice(),
                        after.as_bytes().as_slice(),
                        status.as_str(),
                        query.limit,
                    ),
                )
                .await?
            }
        };
        rows.iter_mut().map(delivery_from_row).collect()
    }

    async fn webhook_attempts(&self, delivery_id: Uuid) -> Result<Vec<WebhookAttempt>, RepoError> {
        self.query_rows(
            concat!("SELECT ", attempt_columns!(), " FROM webhook_attempts WHERE delivery_id = ? ORDER BY id"),
            (delivery_id.as_bytes().as_slice(),),
        )
        .await?
        .iter_mut()
        .map(attempt_from_row)
        .collect()
    }

    async fn replay_delivery(&self, endpoint_id: Uuid, id: Uuid, now: Timestamp) -> Result<bool, RepoError> {
        self.execute_one(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? \
             WHERE id = ? AND endpoint_id = ? AND status <> 'pending'"
                .into(),
            vec![Value::Int(now.0), Value::Int(now.0), uuid_value(id), uuid_value(endpoint_id)],
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
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ? \
             WHERE endpoint_id = ? AND status = 'failed' AND created_at >= ?"
                .into(),
            vec![Value::Int(now.0), Value::Int(now.0), uuid_value(endpoint_id), Value::Int(since.0)],
        )
        .await
    }
}

fn account_token_from_row(r: &mut Row) -> Result<AccountToken, RepoError> {
    let purpose: String = take(r, 2)?;
    Ok(AccountToken {
        id: Uuid::from_bytes(take(r, 0)?),
        user_id: UserId::from_bytes(take(r, 1)?),
        purpose: TokenPurpose::parse(&purpose).ok_or_else(|| corrupt("token purpose", &purpose))?,
        token_hash: TokenHash(take(r, 3)?),
        binding: take(r, 4)?,
        created_at: Timestamp(take(r, 5)?),
        expires_at: Timestamp(take(r, 6)?),
        used_at: take::<Option<i64>>(r, 7)?.map(Timestamp),
        new_email: take::<Option<String>>(r, 8)?.map(Email::from_trusted),
    })
}

fn mail_from_row(r: &mut Row) -> Result<QueuedMail, RepoError> {
    let status: String = take(r, 4)?;
    let attempts: i64 = take(r, 5)?;
    Ok(QueuedMail {
        id: Uuid::from_bytes(take(r, 0)?),
        template: take(r, 1)?,
        recipient: Email::from_trusted(take(r, 2)?),
        params: take(r, 3)?,
        status: MailStatus::parse(&status).ok_or_else(|| corrupt("mail status", &status))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("mail attempts", attempts))?,
        next_attempt_at: Timestamp(take(r, 6)?),
        last_error: take(r, 7)?,
        created_at: Timestamp(take(r, 8)?),
        updated_at: Timestamp(take(r, 9)?),
    })
}

fn totp_from_row(r: &mut Row) -> Result<TotpRecord, RepoError> {
    let secret: String = take(r, 1)?;
    let codes: String = take(r, 4)?;
    Ok(TotpRecord {
        user_id: UserId::from_bytes(take(r, 0)?),
        secret: TotpSecret::from_base32(&secret).ok_or_else(|| corrupt("totp secret", "not base32"))?,
        enabled: take(r, 2)?,
        last_step: take(r, 3)?,
        recovery_hashes: crate::split_recovery_hashes(&codes),
        version: take(r, 5)?,
        created_at: Timestamp(take(r, 6)?),
        updated_at: Timestamp(take(r, 7)?),
    })
}

#[async_trait]
impl MfaRepository for MysqlStore {
    async fn totp_of(&self, user_id: UserId) -> Result<Option<TotpRecord>, RepoError> {
        self.query_row(
            "SELECT user_id, secret, enabled, last_step, recovery_codes, version, created_at, updated_at \
             FROM user_totp WHERE user_id = ?",
            (user_id.as_bytes().as_slice(),),
        )
        .await?
        .map(|mut r| totp_from_row(&mut r))
        .transpose()
    }

    async fn save_totp(
        &self,
        record: &TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let uid = record.user_id.as_bytes().as_slice();
                let current: Option<(bool, i64)> = tx
                    .exec_first("SELECT enabled, version FROM user_totp WHERE user_id = ? FOR UPDATE", (uid,))
                    .await
                    .map_err(my_err)?;
                match (expected, current) {
                    (None, Some((true, _))) => return Err(RepoError::VersionConflict),
                    (Some(_), None) => return Err(RepoError::NotFound),
                    (Some(v), Some((_, version))) if v != version => return Err(RepoError::VersionConflict),
                    _ => {}
                }
                let mut row: Vec<Value> = vec![
                    record.secret.to_base32().into(),
                    record.enabled.into(),
                    record.last_step.into(),
                    record.recovery_hashes.join(",").into(),
                    record.version.into(),
                    record.created_at.0.into(),
                    record.updated_at.0.into(),
                ];
                if current.is_some() {
                    // Updated in place: a writer that waited on the row lock then reads the
                    // version the winner wrote.
                    row.push(uid.into());
                    tx.exec_drop(
                        "UPDATE user_totp SET secret = ?, enabled = ?, last_step = ?, recovery_codes = ?, \
                         version = ?, created_at = ?, updated_at = ? WHERE user_id = ?",
                        Params::Positional(row),
                    )
                    .await
                    .map_err(my_err)?;
                } else {
                    row.insert(0, uid.into());
                    let insert = tx
                        .exec_drop(
                            "INSERT INTO user_totp (user_id, secret, enabled, last_step, recovery_codes, version, \
                             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            Params::Positional(row),
                        )
                        .await;
                    match insert {
                        // A concurrent first enrolment inserted meanwhile.
                        Err(e) if duplicate_key(&e, &["PRIMARY"]).is_some() => return Err(RepoError::VersionConflict),
                        other => other.map_err(my_err)?,
                    }
                }
                // Guarded so the code acceptances of every MFA login do not rewrite the user row.
                tx.exec_drop(
                    "UPDATE users SET mfa_enabled = ? WHERE id = ? AND mfa_enabled <> ?",
                    (record.enabled, uid, record.enabled),
                )
                .await
                .map_err(my_err)?;
                if let Some(event) = event {
                    insert_event(&mut tx, event).await?;
                }
                Ok(())
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let uid = user_id.as_bytes().as_slice();
                let version: Option<i64> = tx
                    .exec_first("SELECT version FROM user_totp WHERE user_id = ? FOR UPDATE", (uid,))
                    .await
                    .map_err(my_err)?;
                match (version, expected) {
                    (None, _) => return Err(RepoError::NotFound),
                    (Some(v), Some(e)) if v != e => return Err(RepoError::VersionConflict),
                    _ => {}
                }
                tx.exec_drop("DELETE FROM user_totp WHERE user_id = ?", (uid,)).await.map_err(my_err)?;
                tx.exec_drop("UPDATE users SET mfa_enabled = FALSE WHERE id = ?", (uid,)).await.map_err(my_err)?;
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }
}

#[async_trait]
impl LifecycleRepository for MysqlStore {
    async fn issue_account_token(
        &self,
        token: &AccountToken,
        mails: &[QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let uid = token.user_id.as_bytes().as_slice();
                tx.exec_drop(sql::DELETE_UNUSED_TOKENS, (uid, token.purpose.as_str())).await.map_err(my_err)?;
                let row: Vec<Value> = vec![
                    uuid_value(token.id),
                    uid.into(),
                    token.purpose.as_str().into(),
                    token.token_hash.0.as_slice().into(),
                    token.binding.as_slice().into(),
                    token.created_at.0.into(),
                    token.expires_at.0.into(),
                    token.used_at.map(|u| u.0).into(),
                    token.new_email.as_ref().map(|e| e.as_str()).into(),
                ];
                tx.exec_drop(sql::INSERT_ACCOUNT_TOKEN, Params::Positional(row)).await.map_err(my_err)?;
                for mail in mails {
                    let row: Vec<Value> = vec![
                        uuid_value(mail.id),
                        mail.template.as_str().into(),
                        mail.recipient.as_str().into(),
                        mail.params.as_str().into(),
                        mail.status.as_str().into(),
                        i64::from(mail.attempts).into(),
                        mail.next_attempt_at.0.into(),
                        mail.last_error.clone().into(),
                        mail.created_at.0.into(),
                        mail.updated_at.0.into(),
                    ];
                    tx.exec_drop(sql::INSERT_MAIL, Params::Positional(row)).await.map_err(my_err)?;
                }
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn account_token(&self, hash: &TokenHash) -> Result<Option<AccountToken>, RepoError> {
        self.query_row(sql::ACCOUNT_TOKEN_BY_HASH, (hash.0.as_slice(),))
            .await?
            .map(|mut r| account_token_from_row(&mut r))
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
        let params = update_user_params(user, expected)?;
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                tx.exec_drop(sql::USE_TOKEN, (at.0, token_id.as_bytes().as_slice())).await.map_err(my_err)?;
                if tx.affected_rows() == 0 {
                    return Err(RepoError::NotFound);
                }
                update_user_in(&mut tx, user, params, revoke, event).await?;
                let purpose = purpose.as_str();
                tx.exec_drop(sql::DELETE_UNUSED_TOKENS, (user.id.as_bytes().as_slice(), purpose)).await.map_err(my_err)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, RepoError> {
        // As claim_due_deliveries: lock the due rows (SKIP LOCKED), then move them.
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let mut rows: Vec<Row> = tx.exec(sql::DUE_MAILS, (now.0, limit)).await.map_err(my_err)?;
                let mut claimed = rows.iter_mut().map(mail_from_row).collect::<Result<Vec<_>, _>>()?;
                if claimed.is_empty() {
                    return Ok(claimed);
                }
                let sql = format!("UPDATE mail_queue SET next_attempt_at = ? WHERE id IN ({})", in_list(claimed.len()));
                let mut params = vec![Value::Int(lease_until.0)];
                params.extend(claimed.iter().map(|m| uuid_value(m.id)));
                tx.exec_drop(sql, Params::Positional(params)).await.map_err(my_err)?;
                for m in &mut claimed {
                    m.next_attempt_at = lease_until;
                }
                Ok(claimed)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn record_mail(&self, mail: &QueuedMail) -> Result<(), RepoError> {
        let params: Vec<Value> = vec![
            mail.params.as_str().into(),
            mail.status.as_str().into(),
            i64::from(mail.attempts).into(),
            mail.next_attempt_at.0.into(),
            mail.last_error.clone().into(),
            mail.updated_at.0.into(),
            uuid_value(mail.id),
        ];
        self.execute_one(sql::RECORD_MAIL.to_owned(), params).await?;
        Ok(())
    }

    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        let params = || vec![Value::Int(before.0), Value::UInt(u64::from(limit))];
        let tokens = self.execute_one(sql::PRUNE_TOKENS.to_owned(), params()).await?;
        let mails = self.execute_one(sql::PRUNE_MAILS.to_owned(), params()).await?;
        Ok(tokens + mails)
    }
}

#[async_trait]
impl Store for MysqlStore {
    fn backend(&self) -> &'static str {
        "mysql"
    }

    async fn replication_position(&self) -> Result<Option<u64>, RepoError> {
        // `gtid_current_pos` is what the server has applied, its own transactions and the
        // replicated ones alike, so it reads the same way on a primary and on a replica.
        let pos: Option<String> = crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            conn.query_first("SELECT @@GLOBAL.gtid_current_pos").await.map_err(my_err)
        })
        .await?;
        Ok(pos.as_deref().and_then(gtid_sequence))
    }

    async fn ping(&self) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout.min(PING_TIMEOUT), async {
            let mut conn = self.conn().await?;
            conn.query_drop("SELECT 1").await.map_err(my_err)
        })
        .await
    }

    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let samples = sample_rows(&mut tx).await?;
                let uid: &[u8] = samples.user.as_bytes();
                let (email, key, hash) = (samples.email.as_str(), samples.key.as_str(), &samples.token_hash[..]);
                // The first page: the nil UUID, as `list_users` passes when there is no cursor.
                let first_page: &[u8] = &[0u8; 16];
                let limit: i64 = 51;
                // (name, SQL, whether its ORDER BY must come from the index rather than
                // a filesort, sample parameters)
                let queries: [(&'static str, &'static str, bool, Params); 8] = [
                    ("user_by_id", sql::USER_BY_ID, false, (uid,).into()),
                    ("user_by_email", sql::USER_BY_EMAIL, false, (email,).into()),
                    ("session_with_user", sql::SESSION_WITH_USER, false, (hash,).into()),
                    ("sessions_of_user", sql::SESSIONS_OF_USER, true, (uid,).into()),
                    ("list_users_page", sql::LIST_USERS_PAGE, true, (first_page, limit).into()),
                    ("list_users_by_email", sql::LIST_USERS_BY_EMAIL, false, (email, first_page, limit).into()),
                    ("idempotency_record", sql::IDEMPOTENCY_RECORD, false, (key,).into()),
                    ("account_token", sql::ACCOUNT_TOKEN_BY_HASH, false, (hash,).into()),
                ];
                let mut plans = Vec::with_capacity(queries.len());
                for (name, sql, ordered, params) in queries {
                    plans.push(explain_one(&mut tx, name, sql, ordered, params).await?);
                }
                plans.extend(groups::explain_hot_paths(&mut tx).await?);
                for (name, built) in
                    crate::user_search::sample_plans(crate::user_search::Dialect::Mysql, USER_READ_COLUMNS)
                {
                    plans.push(explain_one(&mut tx, name, &built.sql, false, search_params(&built.params)).await?);
                }
                Ok(plans)
            }
            .await;
            // The sample rows were only there to be planned over.
            let _ = tx.rollback().await;
            outcome
        })
        .await
    }

    /// From the driver's pool metrics: live connections, connections idle in the pool
    /// (updated when connections are taken or returned, so approximate), and callers
    /// queued for a connection.
    fn pool_stats(&self) -> PoolStats {
        use std::sync::atomic::Ordering::Relaxed;
        let metrics = self.pool().metrics();
        let (acquires, wait_seconds, hold_seconds) = self.acquire.read();
        PoolStats {
            size: metrics.connection_count.load(Relaxed) as u64,
            idle: metrics.connections_in_pool.load(Relaxed) as u64,
            waiting: metrics.active_wait_requests.load(Relaxed) as u64,
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
/// caller). MySQL resolves unique-key lookups while planning, and a lookup that finds
/// nothing is planned as "Impossible WHERE", with no index named; planning over real
/// rows shows the access path production queries take.
async fn sample_rows(tx: &mut Transaction<'_>) -> Result<Samples, RepoError> {
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
    let uid: &[u8] = user.as_bytes();
    tx.exec_drop(
        sql::INSERT_USER,
        (uid, samples.email.as_str(), "Explain", "x", "user", "active", 1i64, 0i64, 0i64, false),
    )
    .await
    .map_err(my_err)?;
    tx.exec_drop(
        sql::INSERT_SESSION,
        (Uuid::now_v7().as_bytes().as_slice(), &samples.token_hash[..], uid, 0i64, 0i64, None::<i64>),
    )
    .await
    .map_err(my_err)?;
    tx.exec_drop(sql::INSERT_IDEMPOTENCY, (samples.key.as_str(), &samples.token_hash[..], uid, 0i64))
        .await
        .map_err(my_err)?;
    let token: Vec<Value> = vec![
        uuid_value(Uuid::now_v7()),
        uid.into(),
        "password_reset".into(),
        samples.token_hash[..].into(),
        samples.token_hash[..].into(),
        0i64.into(),
        0i64.into(),
        Value::NULL,
        Value::NULL,
    ];
    tx.exec_drop(sql::INSERT_ACCOUNT_TOKEN, Params::Positional(token)).await.map_err(my_err)?;
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16, message: &str) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError { code, message: message.into(), state: "23000".into() })
    }

    #[test]
    fn names_the_duplicate_key() {
        let keys = &["users_email", "PRIMARY"];
        let mariadb = server(1062, "Duplicate entry 'a@b.c' for key 'users_email'");
        assert_eq!(duplicate_key(&mariadb, keys), Some(Some("users_email")));
        let mysql8 = server(1062, "Duplicate entry 'x' for key 'idempotency_keys.PRIMARY'");
        assert_eq!(duplicate_key(&mysql8, keys), Some(Some("PRIMARY")));
        let tricky = server(1062, "Duplicate entry 'o'for key 'PRIMARY'@b.c' for key 'users_email'");
        assert_eq!(duplicate_key(&tricky, keys), Some(Some("users_email")));
        // Other server languages (messages as MariaDB 10.11 words them).
        for translated in [
            "Doppelter Eintrag 'a@b.c' für Schlüssel 'users_email'",
            "Duplicata du champ 'a@b.c' pour la clef 'users_email'",
            "'a@b.c' は索引 'users_email' で重複しています。",
            "Дублирующаяся запись 'a@b.c' по ключу 'users_email'",
        ] {
            assert_eq!(duplicate_key(&server(1062, translated), keys), Some(Some("users_email")), "{translated}");
            assert!(matches!(user_write_err(server(1062, translated)), RepoError::EmailTaken), "{translated}");
        }
        assert!(matches!(user_write_err(server(1062, "?")), RepoError::EmailTaken));
        assert_eq!(duplicate_key(&server(1213, "Deadlock found"), keys), None);
        assert!(matches!(my_err(server(1213, "Deadlock found")), RepoError::Unavailable(_)));
        assert!(matches!(my_err(server(1146, "Table doesn't exist")), RepoError::Internal(_)));
    }

    #[test]
    fn reads_index_use_from_explain_rows() {
        let row = |access: &str, key: &str, extra: &str| {
            vec![
                ("type".to_owned(), access.to_owned()),
                ("key".to_owned(), key.to_owned()),
                ("Extra".to_owned(), extra.to_owned()),
            ]
        };
        assert!(plan_uses_index(&[row("const", "sessions_token_hash", ""), row("eq_ref", "PRIMARY", "")], false));
        assert!(!plan_uses_index(&[row("const", "sessions_token_hash", ""), row("ALL", "NULL", "")], false));
        assert!(!plan_uses_index(&[row("NULL", "NULL", "Impossible WHERE")], false));
        assert!(!plan_uses_index(&[], false));
        let sorted = [row("ref", "sessions_user_id", "Using where; Using filesort")];
        assert!(plan_uses_index(&sorted, false));
        assert!(!plan_uses_index(&sorted, true));
    }
}

/// The sequence number of a MariaDB GTID position (`domain-server-sequence`, a list of them
/// when several replication domains are in use). Strata assumes one domain, the default:
/// its sequence grows with every transaction, and keeps growing on a promoted replica. With
/// several domains the highest sequence is taken, which is only an order within a domain.
fn gtid_sequence(position: &str) -> Option<u64> {
    position.split(',').filter_map(|gtid| gtid.trim().rsplit('-').next()?.parse::<u64>().ok()).max()
}

#[cfg(test)]
mod gtid_tests {
    #[test]
    fn multi_host_urls_split_per_host() {
        assert_eq!(
            super::split_hosts("mysql://u:p@a:1,b:2/db?x=1"),
            ["mysql://u:p@a:1/db?x=1", "mysql://u:p@b:2/db?x=1"]
        );
        assert_eq!(super::split_hosts("mysql://a/db"), ["mysql://a/db"]);
        assert_eq!(super::split_hosts("mysql://a:1,b:2"), ["mysql://a:1", "mysql://b:2"]);
    }

    #[test]
    fn gtid_sequences() {
        assert_eq!(super::gtid_sequence("0-1-42"), Some(42));
        assert_eq!(super::gtid_sequence("0-1-42,1-2-7"), Some(42));
        assert_eq!(super::gtid_sequence(""), None);
        assert_eq!(super::gtid_sequence("garbage"), None);
    }
}
