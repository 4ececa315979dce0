//! Backup and restore on SQLite. Each runs on a connection of its own on the blocking pool,
//! outside the store's per-call deadline (a backup of a large database takes as long as it
//! takes): the export in one read transaction, whose WAL snapshot is consistent while the
//! writer goes on; the import in one `BEGIN IMMEDIATE` transaction.

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use strata_core::backup::{
    BATCH_ROWS, BackupRepository, Batch, ColumnType, Load, OnExisting, Row, TABLES, Table, Value, check_row,
    stream_ended_early, table_of, tables_to_clear,
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

fn export(conn: &mut Connection, out: &mpsc::Sender<Batch>) -> Result<(), RepoError> {
    let tx = conn.transaction().map_err(map_err)?;
    for (index, table) in TABLES.iter().enumerate() {
        let sql = format!("SELECT {} FROM {} ORDER BY {}", table.column_list('"'), table.name, table.key);
        let mut stmt = tx.prepare(&sql).map_err(map_err)?;
        let mut rows = stmt.query([]).map_err(map_err)?;
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

fn import(conn: &mut Connection, rows: &mut mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(map_err)?;
    prepare_target(&tx, existing)?;
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
            Some(Load::Commit) => break,
            None => return Err(stream_ended_early()),
        }
    }
    tx.commit().map_err(map_err)?;
    Ok(written)
}

fn blocking_failed(e: tokio::task::JoinError) -> RepoError {
    RepoError::Internal(format!("sqlite backup thread: {e}"))
}

#[async_trait]
impl BackupRepository for SqliteStore {
    async fn export_snapshot(&self, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || export(&mut open_reader(&path)?, &out)).await.map_err(blocking_failed)?
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
