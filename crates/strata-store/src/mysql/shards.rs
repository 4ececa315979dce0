//! The shard catalog on MySQL/MariaDB: `shard_map` and `email_claims` (migration 9).

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Row, TxOpts, Value};
use strata_core::domain::{Email, Timestamp, UserId};
use strata_core::error::RepoError;
use strata_core::shards::{ClaimState, EmailClaim, MoveStep, Placement, ShardCatalog};

use super::{MysqlStore, corrupt, finish, my_err, take};

const MAP: &str = "SELECT logical, shard, other, step, since, version FROM shard_map ORDER BY logical";
const CLAIM_COLUMNS: &str = "email, user_id, state, at";

/// The widest shard name `VARCHAR(255)` holds. Checked before writing: `INSERT IGNORE`
/// would turn a too-long name into a truncated one and a warning.
const MAX_SHARD_NAME: usize = 255;

fn placement(row: &mut Row) -> Result<Placement, RepoError> {
    let logical: i64 = take(row, 0)?;
    let step: Option<String> = take(row, 3)?;
    Ok(Placement {
        logical: u16::try_from(logical).map_err(|_| corrupt("shard_map.logical", logical))?,
        shard: take(row, 1)?,
        other: take(row, 2)?,
        step: step.map(|s| MoveStep::parse(&s).ok_or_else(|| corrupt("shard_map.step", &s))).transpose()?,
        since: take::<Option<i64>>(row, 4)?.map(Timestamp),
        version: take(row, 5)?,
    })
}

fn claim(row: &mut Row) -> Result<EmailClaim, RepoError> {
    let state: String = take(row, 2)?;
    Ok(EmailClaim {
        email: Email::from_trusted(take(row, 0)?),
        user_id: UserId::from_bytes(take(row, 1)?),
        state: match state.as_str() {
            "pending" => ClaimState::Pending,
            "active" => ClaimState::Active,
            other => return Err(corrupt("email_claims.state", other)),
        },
        at: Timestamp(take(row, 3)?),
    })
}

fn shard_name(name: &str) -> Result<Value, RepoError> {
    if name.chars().count() > MAX_SHARD_NAME {
        return Err(RepoError::Internal(format!(
            "shard name {name:?} is longer than the {MAX_SHARD_NAME} characters shard_map holds"
        )));
    }
    Ok(Value::from(name))
}

fn id_value(user: UserId) -> Value {
    Value::Bytes(user.as_bytes().to_vec())
}

#[async_trait]
impl ShardCatalog for MysqlStore {
    async fn shard_map(&self) -> Result<Vec<Placement>, RepoError> {
        self.query_built(MAP.into(), vec![]).await?.iter_mut().map(placement).collect()
    }

    async fn create_shard_map(&self, placements: &[Placement]) -> Result<Vec<Placement>, RepoError> {
        // One statement, rows in logical order: a racing instance waits on the first row's
        // lock and then inserts nothing, so the map is one writer's.
        if !placements.is_empty() {
            let mut params = Vec::with_capacity(placements.len() * 3);
            for p in placements {
                params.extend([Value::from(i64::from(p.logical)), shard_name(&p.shard)?, Value::from(p.version)]);
            }
            let sql = format!(
                "INSERT IGNORE INTO shard_map (logical, shard, version) VALUES {}",
                vec!["(?, ?, ?)"; placements.len()].join(", ")
            );
            self.execute_one(sql, params).await?;
        }
        self.shard_map().await
    }

    async fn update_placement(&self, expected: i64, new: &Placement) -> Result<bool, RepoError> {
        let params = vec![
            shard_name(&new.shard)?,
            new.other.as_deref().map(shard_name).transpose()?.unwrap_or(Value::NULL),
            new.step.map_or(Value::NULL, |s| Value::from(s.as_str())),
            new.since.map_or(Value::NULL, |t| Value::from(t.0)),
            Value::from(new.version),
            Value::from(i64::from(new.logical)),
            Value::from(expected),
        ];
        // Affected rows are matched rows (the pool sets CLIENT_FOUND_ROWS); a successful
        // compare-and-set bumps the version anyway, so matched and changed agree.
        let changed = self
            .execute_one(
                "UPDATE shard_map SET shard = ?, other = ?, step = ?, since = ?, version = ? \
                 WHERE logical = ? AND version = ?"
                    .into(),
                params,
            )
            .await?;
        Ok(changed == 1)
    }

    async fn claim_email(&self, email: &Email, user: UserId, at: Timestamp) -> Result<(), RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                // One upsert that takes the row's exclusive lock at once (INSERT IGNORE then
                // SELECT … FOR UPDATE would upgrade a shared lock, and two racing claims of
                // one address deadlock on that), renewing the claim only for its holder.
                tx.exec_drop(
                    "INSERT INTO email_claims (email, user_id, state, at) VALUES (?, ?, 'pending', ?) \
                     ON DUPLICATE KEY UPDATE state = IF(user_id = VALUES(user_id), 'pending', state), \
                     at = IF(user_id = VALUES(user_id), VALUES(at), at)",
                    (email.as_str(), id_value(user), at.0),
                )
                .await
                .map_err(my_err)?;
                let holder: Option<Vec<u8>> = tx
                    .exec_first("SELECT user_id FROM email_claims WHERE email = ?", (email.as_str(),))
                    .await
                    .map_err(my_err)?;
                match holder {
                    Some(id) if id.as_slice() == user.as_bytes().as_slice() => Ok(()),
                    Some(_) => Err(RepoError::EmailTaken),
                    None => Err(RepoError::Unavailable("mysql: the email claim vanished while it was read".into())),
                }
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn confirm_email(&self, email: &Email, user: UserId) -> Result<(), RepoError> {
        self.execute_one(
            "UPDATE email_claims SET state = 'active' WHERE email = ? AND user_id = ?".into(),
            vec![Value::from(email.as_str()), id_value(user)],
        )
        .await
        .map(drop)
    }

    async fn release_email(&self, email: &Email, user: UserId) -> Result<(), RepoError> {
        self.execute_one(
            "DELETE FROM email_claims WHERE email = ? AND user_id = ?".into(),
            vec![Value::from(email.as_str()), id_value(user)],
        )
        .await
        .map(drop)
    }

    async fn email_claim(&self, email: &Email) -> Result<Option<EmailClaim>, RepoError> {
        let sql = format!("SELECT {CLAIM_COLUMNS} FROM email_claims WHERE email = ?");
        self.query_built(sql, vec![Value::from(email.as_str())]).await?.first_mut().map(claim).transpose()
    }

    async fn pending_claims(&self, before: Timestamp, limit: u32) -> Result<Vec<EmailClaim>, RepoError> {
        let sql = format!(
            "SELECT {CLAIM_COLUMNS} FROM email_claims WHERE state = 'pending' AND at < ? ORDER BY at, email LIMIT ?"
        );
        self.query_built(sql, vec![Value::from(before.0), Value::from(i64::from(limit))])
            .await?
            .iter_mut()
            .map(claim)
            .collect()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::collections::BTreeSet;

    use strata_core::backup::{BackupRepository, Batch, Load, SHARD_OWNED, ShardScope, TABLES, Value};
    use strata_core::domain::{Session, SessionId, SessionToken, User, logical_shard};
    use strata_core::ports::{SessionRepository, UserRepository};
    use tokio::sync::mpsc;

    use super::*;
    use crate::testing::{T0, TestDb, fresh, sample_event as event, sample_user};

    async fn fresh_store(what: &str) -> Option<(TestDb, MysqlStore)> {
        let db = fresh(crate::Backend::Mysql, what).await?;
        let store = MysqlStore::connect(&crate::StoreOptions::new(db.url.clone())).await.expect("connect and migrate");
        Some((db, store))
    }

    fn email(s: &str) -> Email {
        Email::parse(s).expect("valid email")
    }

    fn user(email_address: &str) -> User {
        sample_user(email_address, "Shard")
    }

    fn claimed(address: &str, user_id: UserId, state: ClaimState, at: i64) -> EmailClaim {
        EmailClaim { email: email(address), user_id, state, at: Timestamp(at) }
    }

    #[tokio::test]
    async fn shard_map_is_the_first_writers_and_changes_by_compare_and_set() {
        let Some((_db, store)) = fresh_store("mysql shard map").await else { return };
        assert_eq!(store.shard_map().await.unwrap(), vec![]);
        let first: Vec<Placement> = (0..4).map(|l| Placement::new(l, format!("mysql://a/{l}"))).collect();
        assert_eq!(store.create_shard_map(&first).await.unwrap(), first);
        let second: Vec<Placement> = (0..4).map(|l| Placement::new(l, "mysql://b/db")).collect();
        assert_eq!(store.create_shard_map(&second).await.unwrap(), first, "the first map stays");

        // Racing first starts agree on one writer's map.
        let Some((_db2, racing)) = fresh_store("mysql shard map race").await else { return };
        let ours: Vec<Placement> = (0..64).map(|l| Placement::new(l, "ours")).collect();
        let theirs: Vec<Placement> = (0..64).map(|l| Placement::new(l, "theirs")).collect();
        let (a, b) = tokio::join!(racing.create_shard_map(&ours), racing.create_shard_map(&theirs));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        assert!(a == ours || a == theirs, "one writer's map, not a mix");

        let home = first[1].clone();
        let copying = home.with_step("mysql://a/1", Some("mysql://c/1"), Some(MoveStep::Copying), Timestamp(5));
        assert!(store.update_placement(home.version, &copying).await.unwrap());
        let stale = home.with_step("mysql://a/1", Some("mysql://d/1"), Some(MoveStep::Copying), Timestamp(6));
        assert!(!store.update_placement(home.version, &stale).await.unwrap(), "stale version");
        let cleaning = copying.with_step("mysql://c/1", Some("mysql://a/1"), Some(MoveStep::Cleaning), Timestamp(7));
        assert!(store.update_placement(copying.version, &cleaning).await.unwrap());
        let map = store.shard_map().await.unwrap();
        assert_eq!(map[1], cleaning);
        assert_eq!((map[1].step, map[1].since, map[1].version), (Some(MoveStep::Cleaning), Some(Timestamp(7)), 3));
        let done = cleaning.with_step("mysql://c/1", None, None, Timestamp(8));
        assert!(store.update_placement(cleaning.version, &done).await.unwrap());
        let map = store.shard_map().await.unwrap();
        assert_eq!(map[1], done);
        assert_eq!((map[1].other.as_deref(), map[1].step, map[1].since), (None, None, None));
        assert_eq!(map[0], first[0], "other rows untouched");
        assert!(!store.update_placement(1, &Placement::new(9, "nowhere")).await.unwrap(), "no such row");
        let too_long = Placement { version: 5, ..Placement::new(0, "x".repeat(256)) };
        assert!(store.update_placement(1, &too_long).await.is_err());
    }

    #[tokio::test]
    async fn email_claims_are_held_by_one_user() {
        let Some((_db, store)) = fresh_store("mysql email claims").await else { return };
        let (a, b) = (UserId::generate(), UserId::generate());
        let address = "claim@example.com";
        let e = email(address);
        assert_eq!(store.email_claim(&e).await.unwrap(), None);
        store.claim_email(&e, a, Timestamp(10)).await.unwrap();
        assert_eq!(store.claim_email(&e, b, Timestamp(11)).await, Err(RepoError::EmailTaken));
        assert_eq!(store.email_claim(&e).await.unwrap(), Some(claimed(address, a, ClaimState::Pending, 10)));
        store.claim_email(&e, a, Timestamp(12)).await.unwrap();
        assert_eq!(store.email_claim(&e).await.unwrap(), Some(claimed(address, a, ClaimState::Pending, 12)));

        store.claim_email(&email("zed@example.com"), b, Timestamp(20)).await.unwrap();
        store.claim_email(&email("bee@example.com"), b, Timestamp(20)).await.unwrap();
        store.claim_email(&email("late@example.com"), b, Timestamp(40)).await.unwrap();
        assert_eq!(
            store.pending_claims(Timestamp(30), 10).await.unwrap(),
            vec![
                claimed(address, a, ClaimState::Pending, 12),
                claimed("bee@example.com", b, ClaimState::Pending, 20),
                claimed("zed@example.com", b, ClaimState::Pending, 20),
            ]
        );

        store.confirm_email(&e, a).await.unwrap();
        store.confirm_email(&email("zed@example.com"), a).await.unwrap(); // not a's: a no-op
        assert_eq!(store.email_claim(&e).await.unwrap(), Some(claimed(address, a, ClaimState::Active, 12)));
        assert_eq!(
            store.pending_claims(Timestamp(30), 10).await.unwrap(),
            vec![
                claimed("bee@example.com", b, ClaimState::Pending, 20),
                claimed("zed@example.com", b, ClaimState::Pending, 20),
            ]
        );
        assert_eq!(store.pending_claims(Timestamp(30), 1).await.unwrap().len(), 1);
        assert_eq!(store.pending_claims(Timestamp(20), 10).await.unwrap(), vec![], "strictly before");
        // An active claim is taken too, and reclaiming it makes it pending again.
        assert_eq!(store.claim_email(&e, b, Timestamp(13)).await, Err(RepoError::EmailTaken));

        store.release_email(&e, b).await.unwrap(); // not b's: a no-op
        assert_eq!(store.email_claim(&e).await.unwrap(), Some(claimed(address, a, ClaimState::Active, 12)));
        store.claim_email(&e, a, Timestamp(14)).await.unwrap();
        assert_eq!(store.email_claim(&e).await.unwrap(), Some(claimed(address, a, ClaimState::Pending, 14)));
        store.release_email(&e, a).await.unwrap();
        assert_eq!(store.email_claim(&e).await.unwrap(), None);
        store.claim_email(&e, b, Timestamp(15)).await.unwrap();
        assert_eq!(store.email_claim(&e).await.unwrap(), Some(claimed(address, b, ClaimState::Pending, 15)));
    }

    async fn export(store: &MysqlStore, scope: ShardScope) -> Vec<Batch> {
        let (tx, mut rx) = mpsc::channel(4);
        let collect = async {
            let mut batches = Vec::new();
            while let Some(batch) = rx.recv().await {
                batches.push(batch);
            }
            batches
        };
        let (exported, batches) = tokio::join!(store.export_shard(scope, tx), collect);
        exported.expect("export the shard");
        batches
    }

    async fn load(store: &MysqlStore, scope: ShardScope, batches: &[Batch], commit: bool) -> Result<u64, RepoError> {
        let (tx, rx) = mpsc::channel(4);
        let send = async move {
            for batch in batches {
                tx.send(Load::Rows(batch.clone())).await.expect("the loader reads");
            }
            if commit {
                tx.send(Load::Commit).await.expect("the loader reads");
            }
        };
        tokio::join!(store.replace_shard(scope, rx), send).0
    }

    fn owner(batch: &Batch, row: &[Value]) -> uuid::Uuid {
        let table = &TABLES[batch.table];
        let column = SHARD_OWNED.iter().find(|(t, _)| *t == table.name).expect("an owned table").1;
        let at = table.columns.iter().position(|c| c.name == column).expect("the owner column");
        match &row[at] {
            Value::Uuid(id) => *id,
            other => panic!("{}.{column} is {other:?}", table.name),
        }
    }

    fn rows(batches: &[Batch]) -> usize {
        batches.iter().map(|b| b.rows.len()).sum()
    }

    #[tokio::test]
    async fn shards_are_selected_by_the_ids_fifteenth_byte_and_moved_whole() {
        let Some((_db, store)) = fresh_store("mysql shard export").await else { return };
        const COUNT: u16 = 4;
        let mut users = Vec::new();
        for i in 0..64 {
            let u = user(&format!("u{i}@example.com"));
            store.create_user(&u, None, &event("user.created", u.id)).await.unwrap();
            if i % 2 == 0 {
                let session = Session {
                    id: SessionId::generate(),
                    user_id: u.id,
                    token_hash: SessionToken::generate().hash(),
                    created_at: T0,
                    expires_at: Timestamp(T0.0 + 3_600_000_000),
                    revoked_at: None,
                };
                store.create_session(&session, &event("session.created", u.id)).await.unwrap();
            }
            users.push(u);
        }
        let users_table = TABLES.iter().position(|t| t.name == "users").unwrap();
        let owned_rows: u64 = {
            let counts = store.row_counts().await.unwrap();
            SHARD_OWNED.iter().map(|(t, _)| counts[TABLES.iter().position(|x| x.name == *t).unwrap()]).sum()
        };
        let mut shards = Vec::new();
        for logical in 0..COUNT {
            let batches = export(&store, ShardScope { logical, count: COUNT }).await;
            let exported: BTreeSet<uuid::Uuid> = batches
                .iter()
                .filter(|b| b.table == users_table)
                .flat_map(|b| b.rows.iter().map(|r| owner(b, r)))
                .collect();
            let expected: BTreeSet<uuid::Uuid> =
                users.iter().map(|u| u.id.as_uuid()).filter(|id| logical_shard(*id, COUNT) == logical).collect();
            assert_eq!(exported, expected, "users of logical shard {logical}");
            for batch in &batches {
                assert!(SHARD_OWNED.iter().any(|(t, _)| *t == TABLES[batch.table].name));
                for row in &batch.rows {
                    assert_eq!(logical_shard(owner(batch, row), COUNT), logical, "{}", TABLES[batch.table].name);
                }
            }
            shards.push(batches);
        }
        assert_eq!(shards.iter().map(|b| rows(b) as u64).sum::<u64>(), owned_rows, "every owned row in one shard");

        let scope = ShardScope { logical: 1, count: COUNT };
        let one = shards[1].clone();
        assert!(rows(&one) > 0);
        // A stream without its commit changes nothing.
        assert!(load(&store, scope, &one[..one.len() / 2], false).await.is_err());
        assert_eq!(export(&store, scope).await, one);
        // Deleting and writing back, repeatedly: the same rows.
        assert_eq!(store.delete_shard(scope).await.unwrap(), rows(&one) as u64);
        assert_eq!(export(&store, scope).await, vec![]);
        assert_eq!(store.delete_shard(scope).await.unwrap(), 0);
        assert_eq!(load(&store, scope, &one, true).await.unwrap(), rows(&one) as u64);
        assert_eq!(export(&store, scope).await, one);
        assert_eq!(load(&store, scope, &one, true).await.unwrap(), rows(&one) as u64);
        assert_eq!(export(&store, scope).await, one);
        for (logical, batches) in shards.iter().enumerate() {
            assert_eq!(&export(&store, ShardScope { logical: logical as u16, count: COUNT }).await, batches);
        }
        let u = users.iter().find(|u| logical_shard(u.id.as_uuid(), COUNT) == 1).unwrap();
        assert_eq!(store.user_by_id(u.id).await.unwrap().as_ref(), Some(u));
    }
}
