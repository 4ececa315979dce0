//! Logical backups of a Strata database and restores into any backend.
//!
//! A backup is a directory: `manifest.json` and one gzip-compressed JSON Lines file per
//! table, each line a JSON array of the row's values in the manifest's column order (the
//! format is documented in `docs/backup-format.md`). Rows come from the store's
//! [`BackupRepository`] port, so the same code backs up SQLite, PostgreSQL and MySQL, and
//! a backup of one restores into any other.
//!
//! Both directions stream in constant memory: rows cross a bounded channel between the
//! database side and the blocking file side in batches of [`BATCH_ROWS`].
//!
//! This crate knows the file format and nothing of SQL or HTTP; it must not depend on a
//! store adapter (tests use them to restore across backends).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata_core::backup::{
    BATCH_ROWS, Batch, Column, ColumnType, Load, OnExisting, Row, SCHEMA_VERSION, TABLES, Table, Value,
};
use strata_core::error::RepoError;
use strata_core::ports::Store;
use tokio::sync::mpsc;

pub mod import;
pub mod progress;

pub use progress::Progress;

/// What `format` says in every manifest.
pub const FORMAT: &str = "strata-backup";
/// Bumped on any change a reader of version 1 could misread.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// (`error` rather than `source`: the message already says it, and anyhow's chain
    /// would say it twice.)
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// The backup is not one this version can restore, or it is damaged.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] RepoError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |error| BackupError::Io { path: path.to_owned(), error }
}

fn invalid(message: impl Into<String>) -> BackupError {
    BackupError::Invalid(message.into())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The database schema the rows follow (the stores' last migration).
    pub schema_version: u32,
    /// RFC 3339, UTC: when the snapshot was taken.
    pub created_at: String,
    /// The backend it was taken from (`sqlite`, `postgres`, `mysql`).
    pub source_backend: String,
    pub strata_version: String,
    pub tables: Vec<TableManifest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    pub name: String,
    /// Relative to the backup directory.
    pub file: String,
    pub columns: Vec<ColumnManifest>,
    pub rows: u64,
    /// SHA-256 (hex) of the uncompressed JSON Lines: the table's content.
    pub sha256: String,
    /// SHA-256 (hex) of the compressed file as stored.
    pub file_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnManifest {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
}

impl From<&Column> for ColumnManifest {
    fn from(c: &Column) -> Self {
        ColumnManifest { name: c.name.into(), ty: c.ty.as_str().into(), nullable: c.nullable }
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Encoding rows

/// Appends a row as one JSON array and a newline.
fn encode_row(row: &Row, line: &mut Vec<u8>) {
    line.push(b'[');
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        match value {
            Value::Null => line.extend_from_slice(b"null"),
            Value::Bool(b) => line.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(n) => line.extend_from_slice(n.to_string().as_bytes()),
            Value::Uuid(id) => {
                line.push(b'"');
                line.extend_from_slice(id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes());
                line.push(b'"');
            }
            Value::Bytes(b) => {
                line.push(b'"');
                line.extend_from_slice(STANDARD.encode(b).as_bytes());
                line.push(b'"');
            }
            Value::Text(t) => {
                // serde_json escapes exactly as JSON requires; writing to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *line, t);
            }
        }
    }
    line.extend_from_slice(b"]\n");
}

/// Parses one line of `table` back into a row, naming what is wrong.
fn decode_row(table: &Table, line: &str) -> Result<Row, String> {
    let cells: Vec<serde_json::Value> = serde_json::from_str(line).map_err(|e| format!("not a JSON array: {e}"))?;
    if cells.len() != table.columns.len() {
        return Err(format!("{} values for {} columns", cells.len(), table.columns.len()));
    }
    table
        .columns
        .iter()
        .zip(cells)
        .map(|(column, cell)| {
            let wrong = || format!("column {}: {cell} is not a {}", column.name, column.ty.as_str());
            let value = match (&cell, column.ty) {
                (serde_json::Value::Null, _) if column.nullable => Value::Null,
                (serde_json::Value::String(s), ColumnType::Uuid) => {
                    Value::Uuid(uuid::Uuid::try_parse(s).map_err(|_| wrong())?)
                }
                (serde_json::Value::String(s), ColumnType::Bytes) => {
                    Value::Bytes(STANDARD.decode(s).map_err(|_| wrong())?)
                }
                (serde_json::Value::String(s), ColumnType::Text) => Value::Text(s.clone()),
                (serde_json::Value::Number(n), ColumnType::Int) => Value::Int(n.as_i64().ok_or_else(wrong)?),
                (serde_json::Value::Bool(b), ColumnType::Bool) => Value::Bool(*b),
                _ => return Err(wrong()),
            };
            Ok(value)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Backup

fn file_name(table: &Table) -> String {
    format!("{}.jsonl.gz", table.name)
}

/// One table's file while it is written.
struct TableFile {
    index: usize,
    path: PathBuf,
    encoder: GzEncoder<Hashing<BufWriter<File>>>,
    content: Sha256,
    rows: u64,
    line: Vec<u8>,
}

impl TableFile {
    fn create(dir: &Path, index: usize) -> Result<Self, BackupError> {
        let path = dir.join(file_name(&TABLES[index]));
        let file = File::create(&path).map_err(io(&path))?;
        let hashing = Hashing { inner: BufWriter::with_capacity(1 << 16, file), hash: Sha256::new() };
        Ok(TableFile {
            index,
            path,
            encoder: GzEncoder::new(hashing, Compression::fast()),
            content: Sha256::new(),
            rows: 0,
            line: Vec::with_capacity(512),
        })
    }

    fn write(&mut self, rows: &[Row]) -> Result<(), BackupError> {
        for row in rows {
            self.line.clear();
            encode_row(row, &mut self.line);
            self.content.update(&self.line);
            self.encoder.write_all(&self.line).map_err(io(&self.path))?;
        }
        self.rows += rows.len() as u64;
        Ok(())
    }

    fn finish(self) -> Result<TableManifest, BackupError> {
        let table = &TABLES[self.index];
        let hashing = self.encoder.finish().map_err(io(&self.path))?;
        let file = hashing
            .inner
            .into_inner()
            .map_err(|e| BackupError::Io { path: self.path.clone(), error: e.into_error() })?;
        file.sync_all().map_err(io(&self.path))?;
        Ok(TableManifest {
            name: table.name.into(),
            file: file_name(table),
            columns: table.columns.iter().map(ColumnManifest::from).collect(),
            rows: self.rows,
            sha256: hex(&self.content.finalize()),
            file_sha256: hex(&hashing.hash.finalize()),
        })
    }
}

/// The files of a backup being written, one table at a time in `TABLES` order.
struct TableFiles<'a> {
    dir: &'a Path,
    progress: &'a Progress,
    current: Option<TableFile>,
    /// The first table not started yet.
    next: usize,
    done: Vec<TableManifest>,
}

impl TableFiles<'_> {
    /// Finishes the open file and every table before `index` (empty ones get an empty
    /// file), and opens `index`'s.
    fn advance_to(&mut self, index: usize) -> Result<(), BackupError> {
        while self.next <= index {
            if let Some(file) = self.current.take() {
                let manifest = file.finish()?;
                self.progress.table_done(&manifest.name, manifest.rows);
                self.done.push(manifest);
            }
            if self.next < TABLES.len() {
                self.current = Some(TableFile::create(self.dir, self.next)?);
            }
            self.next += 1;
        }
        Ok(())
    }
}

/// Writes the batches of a snapshot into `dir`, a file per table (empty tables too).
fn write_tables(
    dir: &Path,
    mut batches: mpsc::Receiver<Batch>,
    progress: &Progress,
) -> Result<Vec<TableManifest>, BackupError> {
    let mut files = TableFiles { dir, progress, current: None, next: 0, done: Vec::with_capacity(TABLES.len()) };
    while let Some(batch) = batches.blocking_recv() {
        if batch.table >= TABLES.len() || batch.table + 1 < files.next {
            return Err(invalid(format!("the store sent table {} out of order", batch.table)));
        }
        files.advance_to(batch.table)?;
        let file = files.current.as_mut().ok_or_else(|| invalid("no table file open"))?;
        file.write(&batch.rows)?;
        progress.rows(TABLES[batch.table].name, file.rows);
    }
    files.advance_to(TABLES.len())?;
    Ok(files.done)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Takes a consistent backup of `store` into the new directory `out` while the store keeps
/// serving. The directory appears whole or not at all: it is written under a temporary
/// name next to it and renamed at the end.
pub async fn backup(store: &dyn Store, out: &Path, progress: &Progress) -> Result<Manifest, BackupError> {
    if out.exists() {
        return Err(invalid(format!("{} already exists: back up into a new path", out.display())));
    }
    let name = out.file_name().ok_or_else(|| invalid(format!("{} names no directory", out.display())))?;
    let partial = out.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    progress.expect(&store.row_counts().await.unwrap_or_default());

    let created_at = now_rfc3339();
    let (tx, rx) = mpsc::channel(4);
    let writer = {
        let (dir, progress) = (partial.clone(), progress.clone());
        tokio::task::spawn_blocking(move || write_tables(&dir, rx, &progress))
    };
    let exported = store.export_snapshot(tx).await;
    let written = writer.await.map_err(|e| invalid(format!("backup writer: {e}")));
    let tables = match (exported, written) {
        (Ok(()), Ok(Ok(tables))) => tables,
        (Err(e), _) => return Err(cleanup(&partial, e.into())),
        (_, Err(e) | Ok(Err(e))) => return Err(cleanup(&partial, e)),
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        schema_version: SCHEMA_VERSION,
        created_at,
        source_backend: store.backend().into(),
        strata_version: env!("CARGO_PKG_VERSION").into(),
        tables,
    };
    let path = partial.join(MANIFEST);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| invalid(e.to_string()))?;
    let written = File::create(&path).and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        return Err(cleanup(&partial, BackupError::Io { path, error: e }));
    }
    std::fs::rename(&partial, out).map_err(|e| cleanup(&partial, BackupError::Io { path: out.into(), error: e }))?;
    Ok(manifest)
}

fn cleanup(partial: &Path, error: BackupError) -> BackupError {
    let _ = std::fs::remove_dir_all(partial);
    error
}

// ---------------------------------------------------------------------------------------
// Verify and restore

/// Reads the manifest and checks that this version can restore it.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("{}: not a backup manifest: {e}", path.display())))?;
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        return Err(invalid(format!(
            "{}: format {} version {}, this Strata reads {FORMAT} version {FORMAT_VERSION}",
            path.display(),
            manifest.format,
            manifest.format_version
        )));
    }
    if manifest.schema_version != SCHEMA_VERSION {
        return Err(invalid(format!(
            "the backup holds schema version {}, this Strata restores schema version {SCHEMA_VERSION}",
            manifest.schema_version
        )));
    }
    let names: Vec<&str> = manifest.tables.iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    if names != expected {
        return Err(invalid(format!("the backup has tables {names:?}, expected {expected:?}")));
    }
    for (table, entry) in TABLES.iter().zip(&manifest.tables) {
        let columns: Vec<ColumnManifest> = table.columns.iter().map(ColumnManifest::from).collect();
        if entry.columns != columns {
            return Err(invalid(format!(
                "{}: the backup's columns differ from schema version {SCHEMA_VERSION}",
                table.name
            )));
        }
        if entry.file.contains(['/', '\\']) || entry.file.starts_with('.') {
            return Err(invalid(format!("{}: file name {:?} leaves the backup directory", table.name, entry.file)));
        }
    }
    Ok(manifest)
}

/// Reads one table's file, checking both digests and every row, and hands each batch of
/// rows to `batch` (which may stop the read by failing).
fn read_table(
    dir: &Path,
    index: usize,
    entry: &TableManifest,
    mut batch: impl FnMut(Vec<Row>) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let table = &TABLES[index];
    let path = dir.join(&entry.file);
    let file = File::open(&path).map_err(io(&path))?;
    let mut compressed = HashingReader { inner: BufReader::with_capacity(1 << 16, file), hash: Sha256::new() };
    let mut content = Sha256::new();
    let mut rows = Vec::with_capacity(BATCH_ROWS);
    let mut count = 0u64;
    {
        let mut lines = BufReader::new(GzDecoder::new(&mut compressed));
        let mut line = String::new();
        loop {
            line.clear();
            let n = lines.read_line(&mut line).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            content.update(line.as_bytes());
            count += 1;
            let row = decode_row(table, line.trim_end_matches('\n'))
                .map_err(|e| invalid(format!("{} line {count}: {e}", path.display())))?;
            rows.push(row);
            if rows.len() == BATCH_ROWS {
                batch(std::mem::replace(&mut rows, Vec::with_capacity(BATCH_ROWS)))?;
            }
        }
    }
    // Whatever follows the gzip stream counts for the file's digest too.
    std::io::copy(&mut compressed, &mut std::io::sink()).map_err(io(&path))?;
    if hex(&compressed.hash.finalize()) != entry.file_sha256 {
        return Err(invalid(format!("{}: the file's SHA-256 differs from the manifest's: damaged", path.display())));
    }
    if hex(&content.finalize()) != entry.sha256 || count != entry.rows {
        return Err(invalid(format!(
            "{}: its content differs from the manifest's ({count} rows, manifest {})",
            path.display(),
            entry.rows
        )));
    }
    if !rows.is_empty() {
        batch(rows)?;
    }
    Ok(())
}

/// Checks every file of a backup against its manifest and every row against its columns,
/// writing nothing. Returns the manifest.
pub async fn verify(dir: &Path) -> Result<Manifest, BackupError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let manifest = read_manifest(&dir)?;
        for (index, entry) in manifest.tables.iter().enumerate() {
            read_table(&dir, index, entry, |_| Ok(()))?;
        }
        Ok(manifest)
    })
    .await
    .map_err(|e| invalid(format!("verify: {e}")))?
}

/// Restores the backup in `dir` into `store`, any backend into any backend. The whole
/// backup is verified before anything is written, and the write is one transaction: a
/// restore that fails or is killed midway leaves the target as it was, and running it
/// again completes it. A target with rows is refused unless `existing` is `Replace`.
pub async fn restore(
    store: &dyn Store,
    dir: &Path,
    existing: OnExisting,
    progress: &Progress,
) -> Result<Manifest, BackupError> {
    let manifest = verify(dir).await?;
    progress.verified(manifest.tables.iter().map(|t| t.rows).sum());
    progress.expect(&manifest.tables.iter().map(|t| t.rows).collect::<Vec<_>>());

    let (tx, rx) = mpsc::channel(4);
    let reader = {
        let (dir, manifest, progress) = (dir.to_owned(), manifest.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            // The database side stopping (it refused the target, or failed) is not the
            // reader's error: the import reports why.
            let mut stopped = false;
            let mut send = |load: Load| {
                stopped = tx.blocking_send(load).is_err();
                if stopped { Err(invalid("the database side stopped")) } else { Ok(()) }
            };
            let mut read = || {
                for (index, entry) in manifest.tables.iter().enumerate() {
                    let mut sent = 0;
                    read_table(&dir, index, entry, |rows| {
                        sent += rows.len() as u64;
                        send(Load::Rows(Batch { table: index, rows }))?;
                        progress.rows(&entry.name, sent);
                        Ok(())
                    })?;
                    progress.table_done(&entry.name, entry.rows);
                }
                // Only a stream read whole and checked again commits: a file changed since
                // the verification ends the stream early, and the import rolls back.
                send(Load::Commit)
            };
            let outcome = read();
            if stopped { Ok(()) } else { outcome }
        })
    };
    let imported = store.import_snapshot(rx, existing).await;
    let read = reader.await.map_err(|e| invalid(format!("restore reader: {e}")))?;
    let written = match (imported, read) {
        // The reader's error explains why the import saw its stream end early.
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(e.into()),
        (Ok(n), Ok(())) => n,
    };
    let expected: u64 = manifest.tables.iter().map(|t| t.rows).sum();
    if written != expected {
        return Err(invalid(format!("restored {written} rows where the backup holds {expected}")));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_line() {
        let table = &TABLES[0];
        let row = vec![
            Value::Uuid(uuid::Uuid::now_v7()),
            Value::Text("Ann@example.com".into()),
            Value::Text("Ann \"O'Brien\" \\ 🦀\n日本".into()),
            Value::Text("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            Value::Text("admin".into()),
            Value::Text("active".into()),
            Value::Int(i64::MAX),
            Value::Int(-1),
            Value::Int(0),
            Value::Bool(true),
            Value::Bool(false),
        ];
        let mut line = Vec::new();
        encode_row(&row, &mut line);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line per row");
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(decode_row(table, text.trim_end()).unwrap(), row);
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let sessions = &TABLES[1];
        let id = uuid::Uuid::nil();
        let ok = format!(r#"["{id}","AAAA","{id}",1,2,null]"#);
        assert!(decode_row(sessions, &ok).is_ok());
        for (line, says) in [
            (format!(r#"["{id}","AAAA","{id}",1,2]"#), "5 values for 6 columns"),
            (format!(r#"["{id}","AAAA","{id}",1,null,null]"#), "column expires_at"),
            (format!(r#"["nope","AAAA","{id}",1,2,null]"#), "column id"),
            (format!(r#"["{id}","!!","{id}",1,2,null]"#), "column token_hash"),
            (format!(r#"["{id}","AAAA","{id}",1.5,2,null]"#), "column created_at"),
            ("{}".to_string(), "not a JSON array"),
        ] {
            let error = decode_row(sessions, &line).unwrap_err();
            assert!(error.contains(says), "{line}: {error}");
        }
    }
}
