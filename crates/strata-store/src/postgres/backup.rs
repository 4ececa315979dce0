//! Backup and restore on PostgreSQL: the export reads every table in one `REPEATABLE READ,
//! READ ONLY` transaction (one MVCC snapshot; writers are not blocked), through a portal
//! so that rows stream in batches; the import writes with binary `COPY` in one
//! transaction. Neither is bounded by the per-call `query_timeout`.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::BytesMut;
use strata_core::backup::{
    BATCH_ROWS, BackupRepository, Batch, ColumnType, Load, OnExisting, Row, ShardScope, TABLES, Table, Value,
    check_row, shard_owned_tables, stream_ended_early, table_of, tables_to_clear,
};
use strata_core::error::RepoError;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{IsolationLevel, Transaction};

use super::{PostgresStore, corrupt, pg_err};

fn read_row(table: &Table, row: &tokio_postgres::Row) -> Result<Row, RepoError> {
    fn cell<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
        f: impl FnOnce(T) -> Value,
    ) -> Result<Value, RepoError> {
        Ok(row.try_get::<_, Option<T>>(i).map_err(|e| corrupt("backup row", e))?.map_or(Value::Null, f))
    }
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| match column.ty {
            ColumnType::Uuid => cell(row, i, Value::Uuid),
            ColumnType::Bytes => cell(row, i, Value::Bytes),
            ColumnType::Text => cell(row, i, Value::Text),
            // `outbox.partition` is a smallint.
            ColumnType::Int => match *row.columns()[i].type_() {
                Type::INT2 => cell(row, i, |n: i16| Value::Int(n.into())),
                Type::INT4 => cell(row, i, |n: i32| Value::Int(n.into())),
                _ => cell(row, i, Value::Int),
            },
            ColumnType::Bool => cell(row, i, Value::Bool),
        })
        .collect()
}

#[derive(Debug)]
struct Cell<'a>(&'a Value);

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Uuid(v) => v.to_sql(ty, out),
            Value::Bytes(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Bool(v) => v.to_sql(ty, out),
        }
    }

    /// The writer declares each column's type as the target table has it.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

// A function, not a closure inside the async fn: a closure there trips the compiler's
// proof that the future is Send.
fn params<'a>(cells: &'a [Cell<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect()
}

async fn prepare_target(tx: &Transaction<'_>, existing: OnExisting) -> Result<(), RepoError> {
    let mut occupied = Vec::new();
    for table in TABLES {
        let row = tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name), &[]).await.map_err(pg_err)?;
        if row.get::<_, bool>(0) {
            occupied.push(table.name);
        }
    }
    match tables_to_clear(&occupied, existing)? {
        Some(tables) => tx.batch_execute(&format!("TRUNCATE {}", tables.join(", "))).await.map_err(pg_err),
        None => Ok(()),
    }
}

/// A `COPY … FROM STDIN BINARY` kept open while batches of one table follow each other.
struct OpenCopy {
    table: usize,
    writer: Pin<Box<BinaryCopyInWriter>>,
}

impl OpenCopy {
    async fn start(tx: &Transaction<'_>, index: usize, table: &Table) -> Result<Self, RepoError> {
        let columns = table.column_list('"');
        // Binary COPY needs each column's exact type (a smallint takes two bytes, not
        // eight): the target's own, from a statement that reads nothing.
        let probe = tx.prepare(&format!("SELECT {columns} FROM {} LIMIT 0", table.name)).await.map_err(pg_err)?;
        let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
        let sink = tx.copy_in(&format!("COPY {} ({columns}) FROM STDIN BINARY", table.name)).await.map_err(pg_err)?;
        Ok(OpenCopy { table: index, writer: Box::pin(BinaryCopyInWriter::new(sink, &types)) })
    }

    async fn finish(mut self) -> Result<(), RepoError> {
        self.writer.as_mut().finish().await.map(drop).map_err(pg_err)
    }
}

/// One MVCC snapshot for every read that follows; writers are not blocked.
async fn snapshot(client: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>, RepoError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)
}

/// `WHERE` clause selecting one logical shard's rows by `column` (see
/// `strata_core::domain::logical_shard`: the id's fifteenth byte), with its parameters.
/// No index serves it: a move reads each owned table once.
fn in_shard(column: &str) -> String {
    format!("WHERE get_byte(uuid_send({column}), 14) % $1 = $2")
}

/// Streams `SELECT`s (table index, table, filter) from one snapshot. `Ok(false)` if the
/// reader gave up.
async fn export_tables(
    tx: &Transaction<'_>,
    tables: impl Iterator<Item = (usize, &'static Table, String)>,
    params: &[&(dyn ToSql + Sync)],
    out: &mpsc::Sender<Batch>,
) -> Result<bool, RepoError> {
    for (index, table, filter) in tables {
        let sql = format!("SELECT {} FROM {} {filter} ORDER BY {}", table.column_list('"'), table.name, table.key);
        let portal = tx.bind(sql.as_str(), params).await.map_err(pg_err)?;
        loop {
            let rows = tx.query_portal(&portal, BATCH_ROWS as i32).await.map_err(pg_err)?;
            if rows.is_empty() {
                break;
            }
            let rows = rows.iter().map(|r| read_row(table, r)).collect::<Result<Vec<_>, _>>()?;
            if out.send(Batch { table: index, rows }).await.is_err() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Deletes one logical shard's owned rows, children first.
async fn delete_in_shard(tx: &Transaction<'_>, scope: ShardScope) -> Result<u64, RepoError> {
    let (count, logical) = (i32::from(scope.count), i32::from(scope.logical));
    let mut deleted = 0;
    for (_, table, column) in shard_owned_tables().collect::<Vec<_>>().into_iter().rev() {
        let sql = format!("DELETE FROM {} {}", table.name, in_shard(column));
        deleted += tx.execute(sql.as_str(), &[&count, &logical]).await.map_err(pg_err)?;
    }
    Ok(deleted)
}

/// Writes every batch received with binary `COPY`, until `Commit`.
async fn copy_in(tx: &Transaction<'_>, rows: &mut mpsc::Receiver<Load>) -> Result<u64, RepoError> {
    let mut copy: Option<OpenCopy> = None;
    let mut written = 0;
    loop {
        match rows.recv().await {
            Some(Load::Rows(batch)) => {
                let table = table_of(&batch)?;
                if let Some(done) = copy.take_if(|c| c.table != batch.table) {
                    done.finish().await?;
                }
                let open = match &mut copy {
                    Some(open) => open,
                    None => copy.insert(OpenCopy::start(tx, batch.table, table).await?),
                };
                for row in &batch.rows {
                    check_row(table, row)?;
                    let cells: Vec<Cell<'_>> = row.iter().map(Cell).collect();
                    open.writer.as_mut().write(&params(&cells)).await.map_err(pg_err)?;
                    written += 1;
                }
            }
            Some(Load::Commit) => break,
            None => return Err(stream_ended_early()),
        }
    }
    if let Some(open) = copy {
        open.finish().await?;
    }
    Ok(written)
}

#[async_trait]
impl BackupRepository for PostgresStore {
    async fn export_snapshot(&self, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let all = TABLES.iter().enumerate().map(|(i, t)| (i, t, String::new()));
        if export_tables(&tx, all, &[], &out).await? {
            tx.commit().await.map_err(pg_err)?;
        }
        Ok(())
    }

    async fn export_shard(&self, scope: ShardScope, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let owned = shard_owned_tables().map(|(i, t, column)| (i, t, in_shard(column)));
        let (count, logical) = (i32::from(scope.count), i32::from(scope.logical));
        if export_tables(&tx, owned, &[&count, &logical], &out).await? {
            tx.commit().await.map_err(pg_err)?;
        }
        Ok(())
    }

    async fn replace_shard(&self, scope: ShardScope, mut rows: mpsc::Receiver<Load>) -> Result<u64, RepoError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        delete_in_shard(&tx, scope).await?;
        let written = copy_in(&tx, &mut rows).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(written)
    }

    async fn delete_shard(&self, scope: ShardScope) -> Result<u64, RepoError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let deleted = delete_in_shard(&tx, scope).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(deleted)
    }

    async fn import_snapshot(&self, mut rows: mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        prepare_target(&tx, existing).await?;
        let written = copy_in(&tx, &mut rows).await?;
        // COPY writes identity columns as given (like OVERRIDING SYSTEM VALUE) without
        // moving their sequences: move them past what was restored.
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('webhook_attempts', 'id'), coalesce(max(id), 0) + 1, false) \
             FROM webhook_attempts",
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(written)
    }

    async fn row_counts(&self) -> Result<Vec<u64>, RepoError> {
        let mut client = self.client().await?;
        let tx = snapshot(&mut client).await?;
        let mut counts = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let row = tx.query_one(&format!("SELECT count(*) FROM {}", table.name), &[]).await.map_err(pg_err)?;
            counts.push(row.get::<_, i64>(0) as u64);
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(counts)
    }
}
