//! Reading another system's database, for `strata import`: one read-only query, its rows
//! sent in batches as backend-neutral [`Value`]s, so the mapping of a foreign row to a
//! Strata user (strata-backup) needs no driver.
//!
//! URLs are those of Strata (`sqlite://`, `postgres://`, `postgresql://`, `mysql://`) and
//! SQLAlchemy's `dialect+driver://` forms, since a Python application's settings hold the
//! latter. SQLite differs between the two: Strata's `sqlite://PATH` takes everything after
//! `//` as the path, SQLAlchemy's `sqlite+driver:///PATH` is relative after three slashes
//! and absolute after four.
//!
//! Cells become: integers → `Int`, text → `Text` (other bytes → `Bytes`), PostgreSQL
//! `bool` → `Bool` and `uuid` → `Uuid`, date-times → `Int` microseconds since the Unix
//! epoch, read as UTC (Django stores UTC when `USE_TZ` is on, its default).

use std::path::PathBuf;

use strata_core::backup::{BATCH_ROWS, Row, Value};
use strata_core::error::RepoError;
use tokio::sync::mpsc;

/// Where the rows come from, parsed from a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForeignDatabase {
    Sqlite(PathBuf),
    /// A URL tokio-postgres / mysql_async parse (`postgresql://…`, `mysql://…`).
    Postgres(String),
    Mysql(String),
}

impl ForeignDatabase {
    pub fn parse(url: &str) -> Result<Self, RepoError> {
        let unsupported = || {
            RepoError::Internal(format!(
                "unsupported source database URL {:?}: use sqlite://, postgres://, postgresql:// or mysql:// \
                 (SQLAlchemy's dialect+driver:// forms are accepted too)",
                crate::redact_url(url)
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(unsupported)?;
        let (dialect, driver) = match scheme.split_once('+') {
            Some((dialect, driver)) => (dialect, Some(driver)),
            None => (scheme, None),
        };
        match dialect {
            "sqlite" => {
                let path = match driver {
                    None => rest,
                    // SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db
                    Some(_) => rest.strip_prefix('/').unwrap_or(rest),
                };
                let path = path.split('?').next().unwrap_or(path);
                if path.is_empty() {
                    return Err(RepoError::Internal("the SQLite source URL names no file".into()));
                }
                Ok(ForeignDatabase::Sqlite(PathBuf::from(path)))
            }
            "postgres" | "postgresql" => Ok(ForeignDatabase::Postgres(format!("postgresql://{rest}"))),
            "mysql" | "mariadb" => Ok(ForeignDatabase::Mysql(format!("mysql://{rest}"))),
            _ => Err(unsupported()),
        }
    }
}

/// The users tables an import reads, each with the columns, in the order, that
/// strata-backup's mapping of its rows expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignUsers {
    /// fastapi-users-db-sqlalchemy's `SQLAlchemyBaseUserTableUUID` (table `user`).
    FastapiUsers,
    /// `django.contrib.auth`'s `auth_user`.
    Django,
}

impl ForeignDatabase {
    /// The query reading `users`, in id order; identifiers quoted as the backend wants
    /// (`user` is reserved on PostgreSQL and MySQL).
    pub fn users_query(&self, users: ForeignUsers) -> String {
        let quote = if matches!(self, ForeignDatabase::Mysql(_)) { '`' } else { '"' };
        match users {
            ForeignUsers::FastapiUsers => format!(
                "SELECT id, email, hashed_password, is_active, is_superuser, is_verified FROM {quote}user{quote} ORDER BY id"
            ),
            ForeignUsers::Django => format!(
                "SELECT id, password, email, first_name, last_name, username, is_active, is_superuser, date_joined \
                 FROM {quote}auth_user{quote} ORDER BY id"
            ),
        }
    }
}

fn internal(what: &str) -> impl FnOnce(String) -> RepoError + '_ {
    move |e| RepoError::Internal(format!("{what}: {e}"))
}

/// Runs `sql` (a read) on `source` and sends its rows in batches of up to [`BATCH_ROWS`].
/// Stops early (Ok) when the receiver is gone.
pub async fn read_rows(source: &ForeignDatabase, sql: &str, out: mpsc::Sender<Vec<Row>>) -> Result<(), RepoError> {
    match source {
        ForeignDatabase::Sqlite(path) => {
            let (path, sql) = (path.clone(), sql.to_owned());
            tokio::task::spawn_blocking(move || read_sqlite(&path, &sql, &out))
                .await
                .map_err(|e| RepoError::Internal(format!("sqlite reader: {e}")))?
        }
        ForeignDatabase::Postgres(url) => read_postgres(url, sql, &out).await,
        ForeignDatabase::Mysql(url) => read_mysql(url, sql, &out).await,
    }
}

fn read_sqlite(path: &std::path::Path, sql: &str, out: &mpsc::Sender<Vec<Row>>) -> Result<(), RepoError> {
    use rusqlite::types::ValueRef;
    // Read-only: a missing file is an error rather than a new empty database.
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| RepoError::Internal(format!("{}: {e}", path.display())))?;
    let what = path.display().to_string();
    let mut statement = conn.prepare(sql).map_err(|e| internal(&what)(e.to_string()))?;
    let columns = statement.column_count();
    let mut rows = statement.query([]).map_err(|e| internal(&what)(e.to_string()))?;
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    while let Some(row) = rows.next().map_err(|e| internal(&what)(e.to_string()))? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            let cell = row.get_ref(i).map_err(|e| internal(&what)(e.to_string()))?;
            values.push(match cell {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::Int(n),
                ValueRef::Real(x) => Value::Text(x.to_string()),
                ValueRef::Text(t) => text_or_bytes(t.to_vec()),
                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            });
        }
        batch.push(values);
        if batch.len() == BATCH_ROWS && out.blocking_send(std::mem::take(&mut batch)).is_err() {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = out.blocking_send(batch);
    }
    Ok(())
}

fn text_or_bytes(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => Value::Text(text),
        Err(e) => Value::Bytes(e.into_bytes()),
    }
}

/// PostgreSQL's `timestamp`/`timestamptz` on the wire: microseconds since 2000-01-01.
struct PgMicros(i64);

const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl<'a> tokio_postgres::types::FromSql<'a> for PgMicros {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw.try_into()?;
        Ok(PgMicros(i64::from_be_bytes(bytes).saturating_add(PG_EPOCH_MICROS)))
    }
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(*ty, tokio_postgres::types::Type::TIMESTAMP | tokio_postgres::types::Type::TIMESTAMPTZ)
    }
}

fn pg_value(row: &tokio_postgres::Row, i: usize) -> Result<Value, RepoError> {
    use tokio_postgres::types::Type;
    let column = &row.columns()[i];
    let bad = |e: tokio_postgres::Error| RepoError::Internal(format!("column {}: {e}", column.name()));
    let ty = column.type_().clone();
    Ok(match ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(bad)?.map_or(Value::Null, Value::Bool),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(bad)?.map_or(Value::Null, |n| Value::Int(n.into())),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(bad)?.map_or(Value::Null, |n| Value::Int(n.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(bad)?.map_or(Value::Null, Value::Int),
        Type::UUID => row.try_get::<_, Option<uuid::Uuid>>(i).map_err(bad)?.map_or(Value::Null, Value::Uuid),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i).map_err(bad)?.map_or(Value::Null, Value::Bytes),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            row.try_get::<_, Option<PgMicros>>(i).map_err(bad)?.map_or(Value::Null, |t| Value::Int(t.0))
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(i).map_err(bad)?.map_or(Value::Null, Value::Text)
        }
        other => {
            return Err(RepoError::Internal(format!(
                "column {}: type {other} is not one an import reads (cast it in the query)",
                column.name()
            )));
        }
    })
}

async fn read_postgres(url: &str, sql: &str, out: &mpsc::Sender<Vec<Row>>) -> Result<(), RepoError> {
    let unavailable = |e: tokio_postgres::Error| RepoError::Unavailable(format!("source database: {e}"));
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.map_err(unavailable)?;
    let driver = tokio::spawn(connection);
    let result = async {
        let failed = |e: tokio_postgres::Error| RepoError::Internal(format!("source database: {e}"));
        // A portal inside a read-only transaction: rows are fetched a batch at a time,
        // all from one snapshot.
        let tx = client.build_transaction().read_only(true).start().await.map_err(failed)?;
        let portal = tx.bind(sql, &[]).await.map_err(failed)?;
        loop {
            let rows = tx.query_portal(&portal, BATCH_ROWS as i32).await.map_err(failed)?;
            if rows.is_empty() {
                break;
            }
            let done = rows.len() < BATCH_ROWS;
            let batch = rows
                .iter()
                .map(|row| (0..row.len()).map(|i| pg_value(row, i)).collect::<Result<Row, _>>())
                .collect::<Result<Vec<_>, _>>()?;
            if out.send(batch).await.is_err() || done {
                break;
            }
        }
        tx.rollback().await.map_err(failed)
    }
    .await;
    drop(client);
    driver.abort();
    result
}

fn mysql_value(value: mysql_async::Value) -> Value {
    use mysql_async::Value as My;
    match value {
        My::NULL => Value::Null,
        My::Int(n) => Value::Int(n),
        My::UInt(n) => i64::try_from(n).map_or_else(|_| Value::Text(n.to_string()), Value::Int),
        My::Float(x) => Value::Text(x.to_string()),
        My::Double(x) => Value::Text(x.to_string()),
        My::Bytes(b) => text_or_bytes(b),
        My::Date(year, month, day, hour, minute, second, micros) => {
            let days = days_from_civil(year.into(), month.into(), day.into());
            let seconds = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
            Value::Int(seconds * 1_000_000 + i64::from(micros))
        }
        My::Time(negative, days, hours, minutes, seconds, micros) => {
            let total = ((i64::from(days) * 24 + i64::from(hours)) * 60 + i64::from(minutes)) * 60 + i64::from(seconds);
            let micros = total * 1_000_000 + i64::from(micros);
            Value::Int(if negative { -micros } else { micros })
        }
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

async fn read_mysql(url: &str, sql: &str, out: &mpsc::Sender<Vec<Row>>) -> Result<(), RepoError> {
    use mysql_async::prelude::Queryable as _;
    let opts =
        mysql_async::Opts::from_url(url).map_err(|e| RepoError::Internal(format!("source database URL: {e}")))?;
    let failed = |e: mysql_async::Error| RepoError::Internal(format!("source database: {e}"));
    let mut conn =
        mysql_async::Conn::new(opts).await.map_err(|e| RepoError::Unavailable(format!("source database: {e}")))?;
    let result = async {
        // One consistent snapshot; the binary protocol (a prepared statement) gives typed
        // values rather than text.
        let mut tx = conn
            .start_transaction(
                mysql_async::TxOpts::default().with_consistent_snapshot(true).with_readonly(Some(true)).clone(),
            )
            .await
            .map_err(failed)?;
        {
            let mut rows = tx.exec_iter(sql, ()).await.map_err(failed)?;
            let mut batch = Vec::with_capacity(BATCH_ROWS);
            while let Some(row) = rows.next().await.map_err(failed)? {
                batch.push(row.unwrap().into_iter().map(mysql_value).collect());
                if batch.len() == BATCH_ROWS && out.send(std::mem::take(&mut batch)).await.is_err() {
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                let _ = out.send(batch).await;
            }
        }
        tx.rollback().await.map_err(failed)
    }
    .await;
    let _ = conn.disconnect().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls_in_strata_and_sqlalchemy_forms() {
        let sqlite = |p: &str| ForeignDatabase::Sqlite(PathBuf::from(p));
        for (url, expected) in [
            ("sqlite:///tmp/app.db", sqlite("/tmp/app.db")),
            ("sqlite://data/app.db", sqlite("data/app.db")),
            ("sqlite+aiosqlite:///./test.db", sqlite("./test.db")),
            ("sqlite+aiosqlite:////srv/app.db", sqlite("/srv/app.db")),
            ("postgres://u:p@db/app", ForeignDatabase::Postgres("postgresql://u:p@db/app".into())),
            ("postgresql+asyncpg://u:p@db/app", ForeignDatabase::Postgres("postgresql://u:p@db/app".into())),
            ("mysql+aiomysql://u:p@db/app", ForeignDatabase::Mysql("mysql://u:p@db/app".into())),
        ] {
            assert_eq!(ForeignDatabase::parse(url).unwrap(), expected, "{url}");
        }
        for bad in ["redis://x", "app.db", "sqlite://", "oracle+cx://db"] {
            assert!(ForeignDatabase::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users_queries_quote_as_the_backend_wants() {
        let sqlite = ForeignDatabase::parse("sqlite:///x.db").unwrap();
        let mysql = ForeignDatabase::parse("mysql://db/app").unwrap();
        assert!(sqlite.users_query(ForeignUsers::FastapiUsers).contains(r#"FROM "user" ORDER BY id"#));
        assert!(mysql.users_query(ForeignUsers::Django).contains("FROM `auth_user` ORDER BY id"));
    }

    #[test]
    fn mysql_dates_are_unix_microseconds() {
        let at = mysql_value(mysql_async::Value::Date(2026, 12, 5, 16, 13, 36, 920_297));
        assert_eq!(at, Value::Int(1_796_487_216_920_297));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    /// Django's `auth_user` as its migrations create it on each engine (the columns an
    /// import reads), read back with the engine's own types.
    #[cfg(feature = "testing")]
    async fn reads_a_django_table(backend: crate::Backend) {
        use mysql_async::prelude::Queryable as _;
        let Some(db) = crate::testing::fresh(backend, "foreign reader").await else { return };
        let source = ForeignDatabase::parse(&db.url).unwrap();
        match &source {
            ForeignDatabase::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(
                        "CREATE TABLE auth_user (id integer PRIMARY KEY, password varchar(128), email varchar(254), \
                         first_name varchar(150), last_name varchar(150), username varchar(150), is_active boolean, \
                         is_superuser boolean, date_joined timestamp with time zone);
                         INSERT INTO auth_user VALUES (1, 'h', 'a@example.com', 'Ann', '', 'ann', true, false, \
                         '2026-12-05 16:13:36.920297+00')",
                    )
                    .await
                    .unwrap();
            }
            ForeignDatabase::Mysql(url) => {
                let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(url).unwrap()).await.unwrap();
                conn.query_drop(
                    "CREATE TABLE auth_user (id integer PRIMARY KEY, password varchar(128), email varchar(254), \
                     first_name varchar(150), last_name varchar(150), username varchar(150), is_active bool, \
                     is_superuser bool, date_joined datetime(6))",
                )
                .await
                .unwrap();
                conn.query_drop(
                    "INSERT INTO auth_user VALUES (1, 'h', 'a@example.com', 'Ann', '', 'ann', 1, 0, \
                     '2026-12-05 16:13:36.920297')",
                )
                .await
                .unwrap();
                conn.disconnect().await.unwrap();
            }
            ForeignDatabase::Sqlite(path) => {
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute_batch(
                        "CREATE TABLE auth_user (id integer PRIMARY KEY, password text, email text, first_name text, \
                         last_name text, username text, is_active bool, is_superuser bool, date_joined datetime);
                         INSERT INTO auth_user VALUES (1, 'h', 'a@example.com', 'Ann', '', 'ann', 1, 0, \
                         '2026-12-05 16:13:36.920297')",
                    )
                    .unwrap();
            }
        }
        let (tx, mut rx) = mpsc::channel(2);
        read_rows(&source, &source.users_query(ForeignUsers::Django), tx).await.unwrap();
        let rows = rx.recv().await.unwrap();
        let text = |s: &str| Value::Text(s.into());
        let (active, superuser, joined) = match backend {
            crate::Backend::Postgres => (Value::Bool(true), Value::Bool(false), Value::Int(1_796_487_216_920_297)),
            crate::Backend::Mysql => (Value::Int(1), Value::Int(0), Value::Int(1_796_487_216_920_297)),
            crate::Backend::Sqlite => (Value::Int(1), Value::Int(0), text("2026-12-05 16:13:36.920297")),
        };
        assert_eq!(
            rows,
            vec![vec![
                Value::Int(1),
                text("h"),
                text("a@example.com"),
                text("Ann"),
                text(""),
                text("ann"),
                active,
                superuser,
                joined
            ]]
        );
        assert!(rx.recv().await.is_none());
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn reads_a_django_table_on_sqlite() {
        reads_a_django_table(crate::Backend::Sqlite).await;
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn reads_a_django_table_on_postgres() {
        reads_a_django_table(crate::Backend::Postgres).await;
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn reads_a_django_table_on_mysql() {
        reads_a_django_table(crate::Backend::Mysql).await;
    }
}
