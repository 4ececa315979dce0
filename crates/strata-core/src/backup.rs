//! Logical backups: which tables a backup holds, their columns in backend-neutral types,
//! and the port every store adapter implements to read them from one consistent snapshot
//! and write them back in one transaction.
//!
//! The columns are the same on every backend (only their SQL types differ: a `Uuid` is
//! `BLOB` on SQLite, `uuid` on PostgreSQL, `BINARY(16)` on MySQL), so a backup taken from
//! one backend restores into any other. The file format around these rows lives in
//! strata-backup; this module knows nothing of files or JSON.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::RepoError;

/// A column's type as a backup sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Uuid,
    Bytes,
    Text,
    /// A 64-bit signed integer (counts, versions, microsecond timestamps).
    Int,
    Bool,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Uuid => "uuid",
            ColumnType::Bytes => "bytes",
            ColumnType::Text => "text",
            ColumnType::Int => "int",
            ColumnType::Bool => "bool",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// A table in a backup. Tables are listed parents first, so restoring them in this order
/// satisfies every foreign key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The primary key column(s), the order rows are read in.
    pub key: &'static str,
}

impl Table {
    /// `"a", "b", "c"`: the column list for SELECT and INSERT, each name quoted with
    /// `quote` (`"` in standard SQL, `` ` `` on MySQL), since some are keywords somewhere
    /// (`partition` on MySQL).
    pub fn column_list(&self, quote: char) -> String {
        self.columns.iter().map(|c| format!("{quote}{}{quote}", c.name)).collect::<Vec<_>>().join(", ")
    }
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty, nullable: false }
}

const fn nullable(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty, nullable: true }
}

use ColumnType::{Bool, Bytes, Int, Text, Uuid};

/// Every table a backup holds. Left out on purpose: `idempotency_keys` (a retry window of
/// a day; replaying a create after a restore is a new create), `relay_leases` (who runs
/// the relay now; created by the migrations) and `schema_migrations` (the target is
/// migrated by the running version).
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("email", Text),
            col("name", Text),
            col("password_hash", Text),
            col("role", Text),
            col("status", Text),
            col("version", Int),
            col("created_at", Int),
            col("updated_at", Int),
            col("verified", Bool),
            col("mfa_enabled", Bool),
        ],
    },
    Table {
        name: "sessions",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("token_hash", Bytes),
            col("user_id", Uuid),
            col("created_at", Int),
            col("expires_at", Int),
            nullable("revoked_at", Int),
        ],
    },
    Table {
        name: "outbox",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("aggregate_id", Uuid),
            col("event_type", Text),
            col("payload", Text),
            col("created_at", Int),
            nullable("published_at", Int),
            col("sequence", Int),
            col("partition", Int),
            nullable("traceparent", Text),
        ],
    },
    Table { name: "outbox_sequences", key: "aggregate_id", columns: &[col("aggregate_id", Uuid), col("last", Int)] },
    Table {
        name: "audit_log",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("event_type", Text),
            col("subject", Uuid),
            col("actor", Text),
            col("time", Int),
            col("data", Text),
        ],
    },
    Table {
        name: "webhook_endpoints",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("url", Text),
            col("events", Text),
            col("description", Text),
            col("enabled", Bool),
            nullable("disabled_reason", Text),
            col("secrets", Text),
            col("rate_limit", Int),
            nullable("failing_since", Int),
            col("created_at", Int),
            col("updated_at", Int),
        ],
    },
    Table {
        name: "webhook_deliveries",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("endpoint_id", Uuid),
            col("event_id", Text),
            col("event", Text),
            col("status", Text),
            col("attempts", Int),
            col("next_attempt_at", Int),
            nullable("last_status", Int),
            nullable("last_error", Text),
            col("created_at", Int),
            col("updated_at", Int),
        ],
    },
    Table {
        name: "webhook_attempts",
        key: "id",
        columns: &[
            col("id", Int),
            col("delivery_id", Uuid),
            col("attempt", Int),
            col("at", Int),
            nullable("status", Int),
            nullable("error", Text),
            col("duration_ms", Int),
        ],
    },
    // Hashes only: a backup holds no usable token.
    Table {
        name: "account_tokens",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("user_id", Uuid),
            col("purpose", Text),
            col("token_hash", Bytes),
            col("binding", Bytes),
            col("created_at", Int),
            col("expires_at", Int),
            nullable("used_at", Int),
            nullable("new_email", Text),
        ],
    },
    // A pending mail's params carry its token until it is sent (at most the token's
    // lifetime, 30 minutes by default); finished mails carry none.
    Table {
        name: "mail_queue",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("template", Text),
            col("recipient", Text),
            col("params", Text),
            col("status", Text),
            col("attempts", Int),
            col("next_attempt_at", Int),
            nullable("last_error", Text),
            col("created_at", Int),
            col("updated_at", Int),
        ],
    },
    Table {
        name: "user_groups",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("display_name", Text),
            nullable("external_id", Text),
            col("version", Int),
            col("created_at", Int),
            col("updated_at", Int),
        ],
    },
    Table { name: "group_members", key: "group_id, user_id", columns: &[col("group_id", Uuid), col("user_id", Uuid)] },
    Table { name: "user_external_ids", key: "user_id", columns: &[col("user_id", Uuid), col("external_id", Text)] },
    // Digests only, like sessions: a restored instance keeps its identity providers connected.
    Table {
        name: "provisioning_tokens",
        key: "id",
        columns: &[
            col("id", Uuid),
            col("name", Text),
            col("token_hash", Bytes),
            col("created_at", Int),
            nullable("revoked_at", Int),
        ],
    },
    // The TOTP secrets are stored as the server must read them (not hashed): a backup
    // holding this table is as sensitive as the database. Recovery codes are hashes.
    Table {
        name: "user_totp",
        key: "user_id",
        columns: &[
            col("user_id", Uuid),
            col("secret", Text),
            col("enabled", Bool),
            nullable("last_step", Int),
            col("recovery_codes", Text),
            col("version", Int),
            col("created_at", Int),
            col("updated_at", Int),
        ],
    },
    // The SCIM Enterprise User extension (migration 8).
    Table {
        name: "user_enterprise",
        key: "user_id",
        columns: &[
            col("user_id", Uuid),
            nullable("employee_number", Text),
            nullable("cost_center", Text),
            nullable("organization", Text),
            nullable("division", Text),
            nullable("department", Text),
            nullable("manager_id", Text),
        ],
    },
];

/// The schema version whose tables [`TABLES`] describes (the stores' last migration).
/// A backup records it; a restore refuses any other. (Migration 9 added only the shard
/// catalog's tables, which no backup holds.)
pub const SCHEMA_VERSION: u32 = 8;

/// The tables whose rows belong to one user, each with the column naming that user (or
/// the aggregate, for events): what a shard move carries. Everything else of a sharded
/// deployment lives in the catalog, except the group rows, which every shard mirrors (a
/// membership row sits with its user and needs its group). (`idempotency_keys` is left out as backups leave it
/// out: a retried create after a move is refused as a taken email, not replayed.)
pub const SHARD_OWNED: &[(&str, &str)] = &[
    ("users", "id"),
    ("sessions", "user_id"),
    ("outbox", "aggregate_id"),
    ("outbox_sequences", "aggregate_id"),
    ("account_tokens", "user_id"),
    ("group_members", "user_id"),
    ("user_external_ids", "user_id"),
    ("user_totp", "user_id"),
    ("user_enterprise", "user_id"),
];

/// The owned tables as (index in [`TABLES`], table, owner column), parents first.
pub fn shard_owned_tables() -> impl Iterator<Item = (usize, &'static Table, &'static str)> {
    TABLES
        .iter()
        .enumerate()
        .filter_map(|(i, t)| SHARD_OWNED.iter().find(|(n, _)| *n == t.name).map(|(_, c)| (i, t, *c)))
}

/// One logical shard (of `count`), as SQL filters need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardScope {
    pub logical: u16,
    pub count: u16,
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Null,
    Uuid(uuid::Uuid),
    Bytes(Vec<u8>),
    Text(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    /// Whether the value may stand in `column`.
    pub fn fits(&self, column: &Column) -> bool {
        matches!(
            (self, column.ty),
            (Value::Uuid(_), ColumnType::Uuid)
                | (Value::Bytes(_), ColumnType::Bytes)
                | (Value::Text(_), ColumnType::Text)
                | (Value::Int(_), ColumnType::Int)
                | (Value::Bool(_), ColumnType::Bool)
        ) || (column.nullable && *self == Value::Null)
    }
}

/// One row: a value per column of its table, in the table's column order.
pub type Row = Vec<Value>;

/// Rows of one table (`TABLES[table]`). A snapshot sends a table's rows in key order and
/// the tables in `TABLES` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub table: usize,
    pub rows: Vec<Row>,
}

/// What a restore sends to [`BackupRepository::import_snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    Rows(Batch),
    /// Everything was sent and checked: commit. A stream that ends without it (its sender
    /// failed or was dropped) rolls back.
    Commit,
}

/// Rows per batch the adapters read and write at a time: large enough to amortise round
/// trips, small enough that a backup streams in constant memory.
pub const BATCH_ROWS: usize = 1000;

/// What a restore does with a target that already has rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExisting {
    /// Refuse (`RepoError::NotEmpty`) before writing anything.
    Refuse,
    /// Delete every row of the backed-up tables (and the idempotency keys) first, in the
    /// same transaction.
    Replace,
}

/// Whole-database reads and writes for backup and restore.
#[async_trait]
pub trait BackupRepository: Send + Sync {
    /// Sends every row of every table in [`TABLES`], table by table in that order, each in
    /// key order, all read from one consistent snapshot while other writes go on. Stops
    /// early (Ok) if the receiver is gone.
    async fn export_snapshot(&self, out: mpsc::Sender<Batch>) -> Result<(), RepoError>;

    /// Writes every batch received, all in one transaction committed at [`Load::Commit`]:
    /// everything or nothing is written (an error, a stream that ends without `Commit`, or
    /// the process dying leaves the target as it was). A row that does not fit its table
    /// is an error. Returns the rows written.
    async fn import_snapshot(&self, rows: mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError>;

    /// Rows per table of [`TABLES`], in that order (a snapshot of its own; for progress and
    /// verification).
    async fn row_counts(&self) -> Result<Vec<u64>, RepoError>;

    /// Like [`Self::export_snapshot`], restricted to the [`SHARD_OWNED`] tables' rows of
    /// one logical shard (`logical_shard(owner, count) == logical`).
    async fn export_shard(&self, scope: ShardScope, out: mpsc::Sender<Batch>) -> Result<(), RepoError>;

    /// In one transaction: deletes the logical shard's rows, writes every batch received,
    /// commits at [`Load::Commit`]. Afterwards the shard's rows here are exactly those
    /// sent, however often it is repeated. Returns the rows written.
    async fn replace_shard(&self, scope: ShardScope, rows: mpsc::Receiver<Load>) -> Result<u64, RepoError>;

    /// Deletes the logical shard's rows; returns how many.
    async fn delete_shard(&self, scope: ShardScope) -> Result<u64, RepoError>;
}

/// What a restore does with a target whose `occupied` tables (of [`TABLES`]) have rows:
/// `Ok(None)` when none has, `NotEmpty` when told to refuse, otherwise the tables to empty
/// first, children before parents (the idempotency keys too: they name users the restore
/// replaces).
pub fn tables_to_clear(occupied: &[&str], existing: OnExisting) -> Result<Option<Vec<&'static str>>, RepoError> {
    match (occupied.is_empty(), existing) {
        (true, _) => Ok(None),
        (false, OnExisting::Refuse) => Err(RepoError::NotEmpty(occupied.join(", "))),
        (false, OnExisting::Replace) => {
            Ok(Some(TABLES.iter().rev().map(|t| t.name).chain(["idempotency_keys"]).collect()))
        }
    }
}

/// Why an import stream ended without [`Load::Commit`].
pub fn stream_ended_early() -> RepoError {
    RepoError::Internal("the restore stream ended before its commit: nothing was written".into())
}

/// The table a batch names, or an error.
pub fn table_of(batch: &Batch) -> Result<&'static Table, RepoError> {
    TABLES.get(batch.table).ok_or_else(|| RepoError::Internal(format!("no table number {}", batch.table)))
}

/// Checks that a row fits its table, so an adapter never writes a malformed one.
pub fn check_row(table: &Table, row: &Row) -> Result<(), RepoError> {
    if row.len() != table.columns.len() {
        return Err(RepoError::Internal(format!(
            "{}: a row of {} values for {} columns",
            table.name,
            row.len(),
            table.columns.len()
        )));
    }
    match table.columns.iter().zip(row).find(|(c, v)| !v.fits(c)) {
        Some((column, value)) => Err(RepoError::Internal(format!(
            "{}.{}: {value:?} is not a {}{}",
            table.name,
            column.name,
            column.ty.as_str(),
            if column.nullable { " or null" } else { "" }
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_listed_parents_first() {
        let position = |name: &str| TABLES.iter().position(|t| t.name == name).expect(name);
        assert!(position("users") < position("sessions"));
        assert!(position("webhook_endpoints") < position("webhook_deliveries"));
        assert!(position("webhook_deliveries") < position("webhook_attempts"));
    }

    #[test]
    fn rows_are_checked_against_their_columns() {
        let sessions = &TABLES[1];
        let good = vec![
            Value::Uuid(uuid::Uuid::nil()),
            Value::Bytes(vec![0; 32]),
            Value::Uuid(uuid::Uuid::nil()),
            Value::Int(1),
            Value::Int(2),
            Value::Null,
        ];
        assert!(check_row(sessions, &good).is_ok());
        let mut bad = good.clone();
        bad[3] = Value::Null;
        assert!(check_row(sessions, &bad).is_err(), "created_at is not nullable");
        assert!(check_row(sessions, &good[..5].to_vec()).is_err());
    }
}
