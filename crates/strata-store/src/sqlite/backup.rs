//! Backup and restore on SQLite. Each runs on a connection of its own on the blocking pool,
//! outside the store's per-call deadline (a backup of a large database takes as long as it
//! takes): the exports (whole or one logical shard's) in one read transaction, whose WAL
//! snapshot is consistent while the writer goes on; the import and a shard's replacement or
//! deletion in one `BEGIN IMMEDIATE` transaction.

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use strata_core::backup::{
    BATCH_ROWS, BackupRepository, Batch, ColumnType, Load, OnExisting, Row, ShardScope, TABLES, Table, Value,
    check_row, shard_owned_tables, stream_ended_early, table_of, tables_to_clear,
};
use strata_core::error::RepoError;
use tokio::sync::mpsc;

use super::{SqliteStore, map_err, open_reader, open_writer};

fn read_row(table: &Table, row: &rusqlite::Row<'_>) -> Result<Row, RepoError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let cell = row.get_ref(i).map_err(map_err)?;
            let corrupt = || RepoError::Internal(format!("{}.{}: unexpected {:?}", table.name, column.name, cell));
            Ok(match (cell, column.ty) {
                (ValueRef::Null, _) => Value::Null,
                (ValueRef::Blob(b), ColumnType::Uuid) => Value::Uuid(uuid::Uuid::from_slice(b).map_err(|_| corrupt())?),
                (ValueRef::Blob(b), ColumnType::Bytes) => Value::Bytes(b.to_vec()),
                (ValueRef::Text(t), ColumnType::Text) => {
                    Value::Text(std::str::from_utf8(t).map_err(|_| corrupt())?.to_owned())
                }
                (ValueRef::Integer(n), ColumnType::Int) => Value::Int(n),
                (ValueRef::Integer(n), ColumnType::Bool) => Value::Bool(n != 0),
                _ => return Err(corrupt()),
            })
        })
        .collect()
}

struct Cell<'a>(&'a Value);

impl rusqlite::ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Uuid(id) => ToSqlOutput::Borrowed(ValueRef::Blob(id.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Value::Int(n) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(*n)),
            Value::Bool(b) => ToSqlOutput::Owned(rusqlite::types::Value::Integer(i64::from(*b))),
        })
    }
}

/// The logical shard (of `?1`) of the 16-byte id in `column`, as SQL: its fifteenth byte
/// (see `strata_core::domain::logical_shard`), read from the id's hex digits 29 and 30,
/// since SQLite has no function reading one byte of a blob as a number.
pub(super) fn logical_shard_sql(column: &str) -> String {
    format!(
        "((instr('0123456789ABCDEF', substr(hex({column}), 29, 1)) - 1) * 16 \
         + instr('0123456789ABCDEF', substr(hex({column}), 30, 1)) - 1) % ?1"
    )
}

/// `WHERE` clause selecting one logical shard's rows by `column`; its parameters are
/// [`shard_params`]. No index serves it: a move reads each owned table once.
fn in_shard(column: &str) -> String {
    format!("WHERE {} = ?2", logical_shard_sql(column))
}

/// `?1` and `?2` of [`in_shard`]: the shard count (at least 1, as `logical_shard` takes
/// it) and the logical shard.
fn shard_params(scope: ShardScope) -> [i64; 2] {
    [i64::from(scope.count.max(1)), i64::from(scope.logical)]
}

/// Streams `SELECT`s (table index, table, filter) in batches, all from one read
/// transaction: one WAL snapshot, while the writer goes on. Stops early (Ok) if the
/// receiver is gone.
fn export_tables(
    conn: &mut Connection,
    tables: impl Iterator<Item = (usize, &'static Table, String)>,
    params: &[i64],
    out: &mpsc::Sender<Batch>,
) -> Result<(), RepoError> {
    let tx = conn.transaction().map_err(map_err)?;
    for (index, table, filter) in tables {
        let sql = format!("SELECT {} FROM {} {filter} ORDER BY {}", table.column_list('"'), table.name, table.key);
        let mut stmt = tx.prepare(&sql).map_err(map_err)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(map_err)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        loop {
            let row = rows.next().map_err(map_err)?;
            let end = row.is_none();
            if let Some(row) = row {
                batch.push(read_row(table, row)?);
            }
            if batch.len() == BATCH_ROWS || (end && !batch.is_empty()) {
                let rows = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if out.blocking_send(Batch { table: index, rows }).is_err() {
                    return Ok(()); // the reader gave up
                }
            }
            if end {
                break;
            }
        }
    }
    Ok(())
}

/// Empties the target or refuses to write into it, as asked.
fn prepare_target(tx: &rusqlite::Transaction<'_>, existing: OnExisting) -> Result<(), RepoError> {
    let mut occupied = Vec::new();
    for table in TABLES {
        let any: bool = tx
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name), [], |r| r.get(0))
            .map_err(map_err)?;
        if any {
            occupied.push(table.name);
        }
    }
    for table in tables_to_clear(&occupied, existing)?.unwrap_or_default() {
        tx.execute(&format!("DELETE FROM {table}"), []).map_err(map_err)?;
    }
    Ok(())
}

/// Deletes one logical shard's owned rows, children first.
fn delete_in_shard(tx: &rusqlite::Transaction<'_>, scope: ShardScope) -> Result<u64, RepoError> {
    let params = shard_params(scope);
    let mut deleted = 0;
    for (_, table, column) in shard_owned_tables().collect::<Vec<_>>().into_iter().rev() {
        let sql = format!("DELETE FROM {} {}", table.name, in_shard(column));
        deleted += tx.execute(&sql, params).map_err(map_err)? as u64;
    }
    Ok(deleted)
}

/// Inserts every batch received, until `Commit`.
fn copy_in(tx: &rusqlite::Transaction<'_>, rows: &mut mpsc::Receiver<Load>) -> Result<u64, RepoError> {
    let mut written = 0;
    loop {
        match rows.blocking_recv() {
            Some(Load::Rows(batch)) => {
                let table = table_of(&batch)?;
                let placeholders = (1..=table.columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                let sql = format!("INSERT INTO {} ({}) VALUES ({placeholders})", table.name, table.column_list('"'));
                let mut stmt = tx.prepare_cached(&sql).map_err(map_err)?;
                for row in &batch.rows {
                    check_row(table, row)?;
                    stmt.execute(rusqlite::params_from_iter(row.iter().map(Cell))).map_err(map_err)?;
                    written += 1;
                }
            }
            Some(Load::Commit) => return Ok(written),
            None => return Err(stream_ended_early()),
        }
    }
}

fn import(conn: &mut Connection, rows: &mut mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    prepare_target(&tx, existing)?;
    let written = copy_in(&tx, rows)?;
    tx.commit().map_err(map_err)?;
    Ok(written)
}

/// In one `BEGIN IMMEDIATE` transaction: deletes the shard's rows, inserts those received.
/// Dropping the transaction on an error (or a stream ending early) rolls both back.
fn replace(conn: &mut Connection, scope: ShardScope, rows: &mut mpsc::Receiver<Load>) -> Result<u64, RepoError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    delete_in_shard(&tx, scope)?;
    let written = copy_in(&tx, rows)?;
    tx.commit().map_err(map_err)?;
    Ok(written)
}

fn delete(conn: &mut Connection, scope: ShardScope) -> Result<u64, RepoError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    let deleted = delete_in_shard(&tx, scope)?;
    tx.commit().map_err(map_err)?;
    Ok(deleted)
}

fn blocking_failed(e: tokio::task::JoinError) -> RepoError {
    RepoError::Internal(format!("sqlite backup thread: {e}"))
}

#[async_trait]
impl BackupRepository for SqliteStore {
    async fn export_snapshot(&self, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let all = TABLES.iter().enumerate().map(|(i, t)| (i, t, String::new()));
            export_tables(&mut open_reader(&path)?, all, &[], &out)
        })
        .await
        .map_err(blocking_failed)?
    }

    async fn export_shard(&self, scope: ShardScope, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let owned = shard_owned_tables().map(|(i, t, column)| (i, t, in_shard(column)));
            export_tables(&mut open_reader(&path)?, owned, &shard_params(scope), &out)
        })
        .await
        .map_err(blocking_failed)?
    }

    async fn replace_shard(&self, scope: ShardScope, mut rows: mpsc::Receiver<Load>) -> Result<u64, RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || replace(&mut open_writer(&path)?, scope, &mut rows))
            .await
            .map_err(blocking_failed)?
    }

    async fn delete_shard(&self, scope: ShardScope) -> Result<u64, RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || delete(&mut open_writer(&path)?, scope)).await.map_err(blocking_failed)?
    }

    async fn import_snapshot(&self, mut rows: mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || import(&mut open_writer(&path)?, &mut rows, existing))
            .await
            .map_err(blocking_failed)?
    }

    async fn row_counts(&self) -> Result<Vec<u64>, RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_reader(&path)?;
            let tx = conn.transaction().map_err(map_err)?;
            TABLES
                .iter()
                .map(|t| {
                    tx.query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| r.get::<_, i64>(0))
                        .map(|n| n as u64)
                        .map_err(map_err)
                })
                .collect()
        })
        .await
        .map_err(blocking_failed)?
    }
}
