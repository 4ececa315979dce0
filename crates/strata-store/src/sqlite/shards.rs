//! The shard catalog on SQLite: `shard_map` and `email_claims` (migration 9). Writes run
//! on the store's writer, reads on its reader threads, both under the query timeout.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};
use strata_core::domain::{Email, Timestamp, UserId};
use strata_core::error::RepoError;
use strata_core::shards::{ClaimState, EmailClaim, MoveStep, Placement, ShardCatalog};

use super::{SqliteStore, blob, corrupt, map_err};

const MAP: &str = "SELECT logical, shard, other, step, since, version FROM shard_map ORDER BY logical";
const CLAIM_COLUMNS: &str = "email, user_id, state, at";

fn placement(r: &Row<'_>) -> rusqlite::Result<Placement> {
    let logical: i64 = r.get(0)?;
    let step: Option<String> = r.get(3)?;
    Ok(Placement {
        logical: u16::try_from(logical).map_err(|_| corrupt("shard_map.logical"))?,
        shard: r.get(1)?,
        other: r.get(2)?,
        step: step.map(|s| MoveStep::parse(&s).ok_or_else(|| corrupt("shard_map.step"))).transpose()?,
        since: r.get::<_, Option<i64>>(4)?.map(Timestamp),
        version: r.get(5)?,
    })
}

fn claim(r: &Row<'_>) -> rusqlite::Result<EmailClaim> {
    let state: String = r.get(2)?;
    Ok(EmailClaim {
        email: Email::from_trusted(r.get(0)?),
        user_id: UserId::from_bytes(blob(r, 1)?),
        state: match state.as_str() {
            "pending" => ClaimState::Pending,
            "active" => ClaimState::Active,
            _ => return Err(corrupt("email_claims.state")),
        },
        at: Timestamp(r.get(3)?),
    })
}

fn read_map(c: &rusqlite::Connection) -> rusqlite::Result<Vec<Placement>> {
    let mut stmt = c.prepare_cached(MAP)?;
    let rows = stmt.query_map([], placement)?;
    rows.collect()
}

#[async_trait]
impl ShardCatalog for SqliteStore {
    async fn shard_map(&self) -> Result<Vec<Placement>, RepoError> {
        self.read(read_map).await
    }

    async fn create_shard_map(&self, placements: &[Placement]) -> Result<Vec<Placement>, RepoError> {
        // One statement, rows in logical order, in the writer's IMMEDIATE transaction: a
        // racing instance (another process on the same file) waits for the first writer
        // and then inserts nothing, so the map is one writer's. Read back in the same
        // transaction.
        let mut sorted: Vec<&Placement> = placements.iter().collect();
        sorted.sort_by_key(|p| p.logical);
        let values: Vec<rusqlite::types::Value> = sorted
            .iter()
            .flat_map(|p| {
                [
                    rusqlite::types::Value::Integer(i64::from(p.logical)),
                    rusqlite::types::Value::Text(p.shard.clone()),
                    rusqlite::types::Value::Integer(p.version),
                ]
            })
            .collect();
        let rows = (0..sorted.len()).map(|i| format!("(?{}, ?{}, ?{})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
        let sql = format!(
            "INSERT OR IGNORE INTO shard_map (logical, shard, version) VALUES {}",
            rows.collect::<Vec<_>>().join(", ")
        );
        self.write(move |tx| {
            if !values.is_empty() {
                tx.execute(&sql, params_from_iter(values)).map_err(map_err)?;
            }
            read_map(tx).map_err(map_err)
        })
        .await
    }

    async fn update_placement(&self, expected: i64, new: &Placement) -> Result<bool, RepoError> {
        let new = new.clone();
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE shard_map SET shard = ?2, other = ?3, step = ?4, since = ?5, version = ?6 \
                     WHERE logical = ?1 AND version = ?7",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        i64::from(new.logical),
                        new.shard,
                        new.other,
                        new.step.map(MoveStep::as_str),
                        new.since.map(|t| t.0),
                        new.version,
                        expected
                    ])
                })
                .map_err(map_err)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn claim_email(&self, email: &Email, user: UserId, at: Timestamp) -> Result<(), RepoError> {
        let email = email.clone();
        let changed = self
            .write(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO email_claims (email, user_id, state, at) VALUES (?1, ?2, 'pending', ?3) \
                     ON CONFLICT (email) DO UPDATE SET state = 'pending', at = excluded.at \
                     WHERE email_claims.user_id = excluded.user_id",
                )
                .and_then(|mut s| s.execute(params![email.as_str(), user.as_bytes().as_slice(), at.0]))
                .map_err(map_err)
            })
            .await?;
        if changed == 1 { Ok(()) } else { Err(RepoError::EmailTaken) }
    }

    async fn confirm_email(&self, email: &Email, user: UserId) -> Result<(), RepoError> {
        let email = email.clone();
        self.write(move |tx| {
            tx.prepare_cached("UPDATE email_claims SET state = 'active' WHERE email = ?1 AND user_id = ?2")
                .and_then(|mut s| s.execute(params![email.as_str(), user.as_bytes().as_slice()]))
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn release_email(&self, email: &Email, user: UserId) -> Result<(), RepoError> {
        let email = email.clone();
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM email_claims WHERE email = ?1 AND user_id = ?2")
                .and_then(|mut s| s.execute(params![email.as_str(), user.as_bytes().as_slice()]))
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn email_claim(&self, email: &Email) -> Result<Option<EmailClaim>, RepoError> {
        let email = email.clone();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {CLAIM_COLUMNS} FROM email_claims WHERE email = ?1"))?
                .query_row([email.as_str()], claim)
                .optional()
        })
        .await
    }

    async fn pending_claims(&self, before: Timestamp, limit: u32) -> Result<Vec<EmailClaim>, RepoError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CLAIM_COLUMNS} FROM email_claims WHERE state = 'pending' AND at < ?1 \
                 ORDER BY at, email LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![before.0, i64::from(limit)], claim)?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use strata_core::backup::{BATCH_ROWS, BackupRepository, Batch, Load, OnExisting, ShardScope, TABLES, Value};
    use strata_core::domain::logical_shard;
    use tokio::sync::mpsc;

    use super::*;
    use crate::StoreOptions;
    use crate::testing::TempDir;

    async fn store(dir: &TempDir, name: &str) -> SqliteStore {
        let url = format!("sqlite://{}", dir.path.join(name).display());
        SqliteStore::open(&StoreOptions::new(url)).await.unwrap()
    }

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[tokio::test]
    async fn the_catalog_keeps_the_first_map_and_guards_placements_and_claims() {
        let dir = TempDir::new();
        let store = store(&dir, "catalog.db").await;
        assert_eq!(store.shard_map().await.unwrap(), []);

        // Given out of order, stored and returned in logical order; a second map is ignored.
        let first = vec![Placement::new(1, "b"), Placement::new(0, "a")];
        let map = store.create_shard_map(&first).await.unwrap();
        assert_eq!(map, [Placement::new(0, "a"), Placement::new(1, "b")]);
        let second = vec![Placement::new(0, "x"), Placement::new(1, "y")];
        assert_eq!(store.create_shard_map(&second).await.unwrap(), map);
        assert_eq!(store.shard_map().await.unwrap(), map);

        // Compare-and-set on the version.
        let copying = map[0].with_step("a", Some("b"), Some(MoveStep::Copying), Timestamp(5));
        assert!(store.update_placement(1, &copying).await.unwrap());
        let stale = map[0].with_step("a", Some("c"), Some(MoveStep::Copying), Timestamp(6));
        assert!(!store.update_placement(1, &stale).await.unwrap(), "version 1 is gone");
        assert_eq!(store.shard_map().await.unwrap(), [copying.clone(), map[1].clone()]);
        let cleaning = copying.with_step("b", Some("a"), Some(MoveStep::Cleaning), Timestamp(7));
        assert!(store.update_placement(2, &cleaning).await.unwrap());
        let done = cleaning.with_step("b", None, None, Timestamp(8));
        assert!(store.update_placement(3, &done).await.unwrap());
        assert_eq!(store.shard_map().await.unwrap()[0], done);
        assert!(!store.update_placement(1, &Placement::new(9, "z")).await.unwrap(), "no such row");

        // Claims.
        let (a, b) = (UserId::from_uuid(uuid::Uuid::new_v4()), UserId::from_uuid(uuid::Uuid::new_v4()));
        let taken = email("taken@example.com");
        store.claim_email(&taken, a, Timestamp(10)).await.unwrap();
        assert!(matches!(store.claim_email(&taken, b, Timestamp(11)).await, Err(RepoError::EmailTaken)));
        store.claim_email(&taken, a, Timestamp(12)).await.unwrap();
        let pending = EmailClaim { email: taken.clone(), user_id: a, state: ClaimState::Pending, at: Timestamp(12) };
        assert_eq!(store.email_claim(&taken).await.unwrap(), Some(pending.clone()));
        store.confirm_email(&taken, b).await.unwrap();
        assert_eq!(store.email_claim(&taken).await.unwrap(), Some(pending.clone()), "b holds no claim");
        store.confirm_email(&taken, a).await.unwrap();
        let active = EmailClaim { state: ClaimState::Active, ..pending };
        assert_eq!(store.email_claim(&taken).await.unwrap(), Some(active.clone()));

        // Pending and older than `before`, by (at, email), at most `limit`.
        store.claim_email(&email("z-old@example.com"), b, Timestamp(5)).await.unwrap();
        store.claim_email(&email("m-old@example.com"), a, Timestamp(5)).await.unwrap();
        store.claim_email(&email("a-older@example.com"), b, Timestamp(3)).await.unwrap();
        store.claim_email(&email("new@example.com"), a, Timestamp(20)).await.unwrap();
        let listed =
            |claims: Vec<EmailClaim>| claims.into_iter().map(|c| c.email.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(
            listed(store.pending_claims(Timestamp(15), 10).await.unwrap()),
            ["a-older@example.com", "m-old@example.com", "z-old@example.com"]
        );
        assert_eq!(
            listed(store.pending_claims(Timestamp(15), 2).await.unwrap()),
            ["a-older@example.com", "m-old@example.com"]
        );
        assert_eq!(listed(store.pending_claims(Timestamp(5), 10).await.unwrap()), ["a-older@example.com"]);

        // Release: only by the holder.
        store.release_email(&taken, b).await.unwrap();
        assert_eq!(store.email_claim(&taken).await.unwrap(), Some(active));
        store.release_email(&taken, a).await.unwrap();
        assert_eq!(store.email_claim(&taken).await.unwrap(), None);
        store.claim_email(&taken, b, Timestamp(30)).await.unwrap();
        assert_eq!(store.email_claim(&taken).await.unwrap().map(|c| c.user_id), Some(b));
    }

    fn random_id(byte14: Option<u8>) -> uuid::Uuid {
        let mut bytes = *uuid::Uuid::new_v4().as_bytes();
        if let Some(b) = byte14 {
            bytes[14] = b;
        }
        uuid::Uuid::from_bytes(bytes)
    }

    #[tokio::test]
    async fn the_sql_logical_shard_is_the_rust_one() {
        let dir = TempDir::new();
        let store = store(&dir, "shard.db").await;
        // Every value of the fifteenth byte, and a few hundred random ids.
        let ids: Vec<uuid::Uuid> =
            (0..=255u8).map(|b| random_id(Some(b))).chain((0..300).map(|_| random_id(None))).collect();
        let sql = format!("SELECT {}", super::super::backup::logical_shard_sql("?2"));
        let expected: Vec<Vec<u16>> =
            ids.iter().map(|id| [1, 2, 3, 7, 16, 255, 256].map(|n| logical_shard(*id, n)).to_vec()).collect();
        let computed = store
            .read(move |c| {
                let mut stmt = c.prepare(&sql)?;
                ids.iter()
                    .map(|id| {
                        [1, 2, 3, 7, 16, 255, 256]
                            .iter()
                            .map(|n| stmt.query_row(params![n, id.as_bytes().as_slice()], |r| r.get::<_, u16>(0)))
                            .collect::<rusqlite::Result<Vec<_>>>()
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap();
        assert_eq!(computed, expected);
    }

    fn user_row(id: uuid::Uuid, n: usize) -> Vec<Value> {
        vec![
            Value::Uuid(id),
            Value::Text(format!("user{n}@example.com")),
            Value::Text(format!("User {n}")),
            Value::Text("$argon2id$x".into()),
            Value::Text("user".into()),
            Value::Text("active".into()),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Bool(true),
            Value::Bool(false),
        ]
    }

    fn session_row(user: uuid::Uuid) -> Vec<Value> {
        let id = uuid::Uuid::new_v4();
        let hash = [id.as_bytes().as_slice(), user.as_bytes().as_slice()].concat();
        vec![Value::Uuid(id), Value::Bytes(hash), Value::Uuid(user), Value::Int(1), Value::Int(2), Value::Null]
    }

    /// Sends `loads` (and `Commit` if asked) on a channel that holds them all.
    fn stream(loads: Vec<Load>, commit: bool) -> mpsc::Receiver<Load> {
        let (tx, rx) = mpsc::channel(loads.len() + 1);
        for load in loads.into_iter().chain(commit.then_some(Load::Commit)) {
            tx.try_send(load).unwrap();
        }
        rx
    }

    async fn users_and_sessions(store: &SqliteStore, ids: &[uuid::Uuid], from: usize) {
        let users = ids.iter().enumerate().map(|(i, id)| user_row(*id, from + i)).collect();
        let sessions = ids.iter().map(|id| session_row(*id)).collect();
        let loads = vec![Load::Rows(Batch { table: 0, rows: users }), Load::Rows(Batch { table: 1, rows: sessions })];
        store.import_snapshot(stream(loads, true), OnExisting::Refuse).await.unwrap();
    }

    async fn export(store: &SqliteStore, scope: ShardScope) -> Vec<Batch> {
        let (out, mut batches) = mpsc::channel(1);
        let collect = async move {
            let mut all = Vec::new();
            while let Some(batch) = batches.recv().await {
                all.push(batch);
            }
            all
        };
        let (exported, all) = tokio::join!(store.export_shard(scope, out), collect);
        exported.unwrap();
        all
    }

    /// The sorted owner ids of table `table`'s rows (column `column`).
    fn owners(batches: &[Batch], table: usize, column: usize) -> Vec<uuid::Uuid> {
        let mut ids: Vec<uuid::Uuid> = batches
            .iter()
            .filter(|b| b.table == table)
            .flat_map(|b| &b.rows)
            .map(|r| match r[column] {
                Value::Uuid(id) => id,
                ref other => panic!("not an id: {other:?}"),
            })
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_shard_is_exported_replaced_and_deleted_by_its_owners_logical_shard() {
        let dir = TempDir::new();
        let (source, target) = (store(&dir, "source.db").await, store(&dir, "target.db").await);
        let scope = ShardScope { logical: 3, count: 7 };
        // Enough ids for more than a batch of users in the shard.
        let ids: Vec<uuid::Uuid> = (0..8000).map(|_| random_id(None)).collect();
        users_and_sessions(&source, &ids, 0).await;
        let mut in_shard: Vec<uuid::Uuid> =
            ids.iter().copied().filter(|id| logical_shard(*id, scope.count) == scope.logical).collect();
        in_shard.sort();
        assert!(in_shard.len() > BATCH_ROWS, "{} users in the shard", in_shard.len());

        let exported = export(&source, scope).await;
        assert!(exported.windows(2).all(|w| w[0].table <= w[1].table), "tables in order");
        assert!(exported.iter().filter(|b| b.table == 0).count() > 1, "users in batches");
        assert!(exported.iter().all(|b| TABLES[b.table].name == "users" || TABLES[b.table].name == "sessions"));
        assert_eq!(owners(&exported, 0, 0), in_shard);
        assert_eq!(owners(&exported, 1, 2), in_shard);

        // The target has a stale row in the shard and a row of another shard.
        let stale = random_id(Some(3));
        let other = random_id(Some(4));
        users_and_sessions(&target, &[stale, other], 10_000).await;
        let loads = || exported.iter().cloned().map(Load::Rows).collect::<Vec<_>>();
        let rows = 2 * in_shard.len() as u64;
        for _ in 0..2 {
            assert_eq!(target.replace_shard(scope, stream(loads(), true)).await.unwrap(), rows);
            let copied = export(&target, scope).await;
            assert_eq!((owners(&copied, 0, 0), owners(&copied, 1, 2)), (in_shard.clone(), in_shard.clone()));
        }
        let elsewhere = ShardScope { logical: 4, count: 7 };
        assert_eq!(owners(&export(&target, elsewhere).await, 0, 0), [other]);

        // A stream that ends without its commit changes nothing: the shard's old rows stay.
        assert!(target.replace_shard(scope, stream(loads()[..1].to_vec(), false)).await.is_err());
        let kept = export(&target, scope).await;
        assert_eq!((owners(&kept, 0, 0), owners(&kept, 1, 2)), (in_shard.clone(), in_shard.clone()));
        assert_eq!(owners(&export(&target, elsewhere).await, 0, 0), [other]);

        // Deleting the shard deletes its users and their sessions, and nothing else.
        let before = source.row_counts().await.unwrap();
        assert_eq!(source.delete_shard(scope).await.unwrap(), rows);
        assert!(export(&source, scope).await.is_empty());
        let after = source.row_counts().await.unwrap();
        assert_eq!((after[0], after[1]), (before[0] - in_shard.len() as u64, before[1] - in_shard.len() as u64));
        assert_eq!(source.delete_shard(scope).await.unwrap(), 0);
    }
}
