//! Backup and restore on MySQL/MariaDB: the export reads every table inside one
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` (InnoDB's MVCC view at `REPEATABLE READ`;
//! writers are not blocked), row by row from an unbuffered result; the import writes
//! multi-row `INSERT`s in one transaction. Neither is bounded by the per-call
//! `query_timeout`.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, TxOpts};
use strata_core::backup::{
    BATCH_ROWS, BackupRepository, Batch, ColumnType, Load, OnExisting, Row, ShardScope, TABLES, Table, Value,
    check_row, shard_owned_tables, stream_ended_early, table_of, tables_to_clear,
};
use strata_core::error::RepoError;
use tokio::sync::mpsc;

use super::{MysqlStore, corrupt, finish, my_err, take, uuid_of};

/// Rows per `INSERT`: a batch of the widest table stays far below the 65,535 placeholders
/// a prepared statement may have.
const INSERT_ROWS: usize = 500;

fn read_row(table: &Table, mut row: mysql_async::Row) -> Result<Row, RepoError> {
    let mut values = Vec::with_capacity(table.columns.len());
    for (i, column) in table.columns.iter().enumerate() {
        values.push(
            match column.ty {
                ColumnType::Uuid => take::<Option<Vec<u8>>>(&mut row, i)?.map(uuid_of).transpose()?.map(Value::Uuid),
                ColumnType::Bytes => take::<Option<Vec<u8>>>(&mut row, i)?.map(Value::Bytes),
                ColumnType::Text => take::<Option<String>>(&mut row, i)?.map(Value::Text),
                ColumnType::Int => take::<Option<i64>>(&mut row, i)?.map(Value::Int),
                ColumnType::Bool => take::<Option<i64>>(&mut row, i)?.map(|n| Value::Bool(n != 0)),
            }
            .unwrap_or(Value::Null),
        );
    }
    Ok(values)
}

fn param(value: &Value) -> mysql_async::Value {
    match value {
        Value::Null => mysql_async::Value::NULL,
        Value::Uuid(id) => mysql_async::Value::Bytes(id.as_bytes().to_vec()),
        Value::Bytes(b) => mysql_async::Value::Bytes(b.clone()),
        Value::Text(t) => mysql_async::Value::Bytes(t.as_bytes().to_vec()),
        Value::Int(n) => mysql_async::Value::Int(*n),
        Value::Bool(b) => mysql_async::Value::Int(i64::from(*b)),
    }
}

/// `WHERE` clause selecting one logical shard's rows by `column` (see
/// `strata_core::domain::logical_shard`: the id's fifteenth byte), with its parameters.
/// No index serves it: a move reads each owned table once.
fn in_shard(column: &str) -> String {
    format!("WHERE ORD(SUBSTRING({column}, 15, 1)) % ? = ?")
}

/// The parameters of [`in_shard`]: `logical_shard` treats a count of 0 as 1.
fn shard_params(scope: ShardScope) -> Vec<mysql_async::Value> {
    vec![i64::from(scope.count.max(1)).into(), i64::from(scope.logical).into()]
}

/// Streams `SELECT`s (table index, table, filter) from one snapshot, each row by row from
/// an unbuffered result, then commits. Stops early, without error, if the reader gave up.
async fn export_tables(
    conn: &mut Conn,
    tables: impl Iterator<Item = (usize, &'static Table, String)>,
    params: Vec<mysql_async::Value>,
    out: &mpsc::Sender<Batch>,
) -> Result<(), RepoError> {
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ").await.map_err(my_err)?;
    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await.map_err(my_err)?;
    for (index, table, filter) in tables {
        let sql = format!("SELECT {} FROM {} {filter} ORDER BY {}", table.column_list('`'), table.name, table.key);
        let params = if params.is_empty() { Params::Empty } else { Params::Positional(params.clone()) };
        let mut result = conn.exec_iter(sql, params).await.map_err(my_err)?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut gave_up = false;
        while let Some(row) = result.next().await.map_err(my_err)? {
            if gave_up {
                continue; // the result must be read to its end before the connection is reused
            }
            batch.push(read_row(table, row)?);
            if batch.len() == BATCH_ROWS {
                let rows = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                gave_up = out.send(Batch { table: index, rows }).await.is_err();
            }
        }
        if gave_up || (!batch.is_empty() && out.send(Batch { table: index, rows: batch }).await.is_err()) {
            break;
        }
    }
    conn.query_drop("COMMIT").await.map_err(my_err)
}

/// Deletes one logical shard's owned rows, children first; returns how many.
/// READ COMMITTED for the deletes of one logical shard: their filter uses no index, and
/// under REPEATABLE READ InnoDB would lock every row scanned, so writes to the other
/// logical shards of the database would wait on (or deadlock with) a move.
fn shard_tx() -> TxOpts {
    let mut opts = TxOpts::default();
    opts.with_isolation_level(mysql_async::IsolationLevel::ReadCommitted);
    opts
}

async fn delete_in_shard(tx: &mut mysql_async::Transaction<'_>, scope: ShardScope) -> Result<u64, RepoError> {
    let mut deleted = 0;
    for (_, table, column) in shard_owned_tables().collect::<Vec<_>>().into_iter().rev() {
        let sql = format!("DELETE FROM {} {}", table.name, in_shard(column));
        tx.exec_drop(sql, shard_params(scope)).await.map_err(my_err)?;
        deleted += tx.affected_rows();
    }
    Ok(deleted)
}

/// Writes every batch received with multi-row `INSERT`s, until `Commit`; returns the rows
/// written. A stream that ends without `Commit` is an error (the caller rolls back).
async fn copy_in(tx: &mut mysql_async::Transaction<'_>, rows: &mut mpsc::Receiver<Load>) -> Result<u64, RepoError> {
    let mut written = 0;
    loop {
        match rows.recv().await {
            Some(Load::Rows(batch)) => {
                let table = table_of(&batch)?;
                for row in &batch.rows {
                    check_row(table, row)?;
                }
                for chunk in batch.rows.chunks(INSERT_ROWS) {
                    insert(tx, table, chunk).await?;
                }
                written += batch.rows.len() as u64;
            }
            Some(Load::Commit) => return Ok(written),
            None => return Err(stream_ended_early()),
        }
    }
}

async fn prepare_target(tx: &mut mysql_async::Transaction<'_>, existing: OnExisting) -> Result<(), RepoError> {
    let mut occupied = Vec::new();
    for table in TABLES {
        let any: Option<i64> =
            tx.query_first(format!("SELECT EXISTS (SELECT 1 FROM {})", table.name)).await.map_err(my_err)?;
        if any.unwrap_or(0) != 0 {
            occupied.push(table.name);
        }
    }
    // DELETE, not TRUNCATE: TRUNCATE commits implicitly, and the restore must stay one
    // transaction.
    for table in tables_to_clear(&occupied, existing)?.unwrap_or_default() {
        tx.query_drop(format!("DELETE FROM {table}")).await.map_err(my_err)?;
    }
    Ok(())
}

async fn insert(tx: &mut mysql_async::Transaction<'_>, table: &Table, rows: &[Row]) -> Result<(), RepoError> {
    let one = format!("({})", vec!["?"; table.columns.len()].join(", "));
    let sql =
        format!("INSERT INTO {} ({}) VALUES {}", table.name, table.column_list('`'), vec![one; rows.len()].join(", "));
    let params: Vec<mysql_async::Value> = rows.iter().flatten().map(param).collect();
    tx.exec_drop(sql, params).await.map_err(my_err)
}

impl MysqlStore {
    /// Runs [`export_tables`] on a connection of its own. Not through `conn()`: a failed
    /// export closes the connection instead of returning it, and its long hold would
    /// swamp the pool's hold-time figures anyway.
    async fn export_from(
        &self,
        tables: impl Iterator<Item = (usize, &'static Table, String)>,
        params: Vec<mysql_async::Value>,
        out: &mpsc::Sender<Batch>,
    ) -> Result<(), RepoError> {
        let mut conn = self.pool().get_conn().await.map_err(my_err)?;
        let outcome = export_tables(&mut conn, tables, params, out).await;
        if outcome.is_err() {
            // Whatever state the connection is in, it goes, not back to the pool.
            let _ = conn.disconnect().await;
        }
        outcome
    }
}

#[async_trait]
impl BackupRepository for MysqlStore {
    async fn export_snapshot(&self, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let all = TABLES.iter().enumerate().map(|(i, t)| (i, t, String::new()));
        self.export_from(all, vec![], &out).await
    }

    async fn export_shard(&self, scope: ShardScope, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let owned = shard_owned_tables().map(|(i, t, column)| (i, t, in_shard(column)));
        self.export_from(owned, shard_params(scope), &out).await
    }

    async fn replace_shard(&self, scope: ShardScope, mut rows: mpsc::Receiver<Load>) -> Result<u64, RepoError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(shard_tx()).await.map_err(my_err)?;
        let outcome = async {
            delete_in_shard(&mut tx, scope).await?;
            copy_in(&mut tx, &mut rows).await
        }
        .await;
        finish(tx, outcome).await
    }

    async fn delete_shard(&self, scope: ShardScope) -> Result<u64, RepoError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(shard_tx()).await.map_err(my_err)?;
        let outcome = delete_in_shard(&mut tx, scope).await;
        finish(tx, outcome).await
    }

    async fn import_snapshot(&self, mut rows: mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
        prepare_target(&mut tx, existing).await?;
        // On an error, dropping the transaction rolls it back.
        let written = copy_in(&mut tx, &mut rows).await?;
        tx.commit().await.map_err(my_err)?;
        Ok(written)
    }

    async fn row_counts(&self) -> Result<Vec<u64>, RepoError> {
        let mut conn = self.conn().await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await.map_err(my_err)?;
        let mut counts = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let n: Option<i64> =
                conn.query_first(format!("SELECT count(*) FROM {}", table.name)).await.map_err(my_err)?;
            counts.push(n.ok_or_else(|| corrupt("row count", table.name))? as u64);
        }
        conn.query_drop("COMMIT").await.map_err(my_err)?;
        Ok(counts)
    }
}
