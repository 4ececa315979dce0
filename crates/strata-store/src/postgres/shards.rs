//! The shard catalog on PostgreSQL: `shard_map` and `email_claims` (migration 9).

use async_trait::async_trait;
use strata_core::domain::{Email, Timestamp, UserId};
use strata_core::error::RepoError;
use strata_core::shards::{ClaimState, EmailClaim, MoveStep, Placement, ShardCatalog};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PostgresStore, corrupt, get, pg_err};

const MAP: &str = "SELECT logical, shard, other, step, since, version FROM shard_map ORDER BY logical";
const CLAIM_COLUMNS: &str = "email, user_id, state, at";

fn placement(row: &Row) -> Result<Placement, RepoError> {
    let logical: i32 = get(row, 0)?;
    let step: Option<&str> = get(row, 3)?;
    Ok(Placement {
        logical: u16::try_from(logical).map_err(|_| corrupt("shard_map.logical", logical))?,
        shard: get(row, 1)?,
        other: get(row, 2)?,
        step: step.map(|s| MoveStep::parse(s).ok_or_else(|| corrupt("shard_map.step", s))).transpose()?,
        since: get::<Option<i64>>(row, 4)?.map(Timestamp),
        version: get(row, 5)?,
    })
}

fn claim(row: &Row) -> Result<EmailClaim, RepoError> {
    let state: &str = get(row, 2)?;
    Ok(EmailClaim {
        email: Email::from_trusted(get(row, 0)?),
        user_id: UserId::from_uuid(get(row, 1)?),
        state: match state {
            "pending" => ClaimState::Pending,
            "active" => ClaimState::Active,
            other => return Err(corrupt("email_claims.state", other)),
        },
        at: Timestamp(get(row, 3)?),
    })
}

impl PostgresStore {
    async fn catalog_execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            client.execute(sql, params).await.map_err(pg_err)
        })
        .await
    }

    async fn catalog_query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, RepoError> {
        crate::with_timeout(self.query_timeout, async {
            let client = self.client().await?;
            client.query(sql, params).await.map_err(pg_err)
        })
        .await
    }
}

#[async_trait]
impl ShardCatalog for PostgresStore {
    async fn shard_map(&self) -> Result<Vec<Placement>, RepoError> {
        self.catalog_query(MAP, &[]).await?.iter().map(placement).collect()
    }

    async fn create_shard_map(&self, placements: &[Placement]) -> Result<Vec<Placement>, RepoError> {
        // One statement, rows in logical order: a racing instance waits on the first row
        // and then inserts nothing, so the map is one writer's.
        let rows: Vec<(i32, &str, i64)> =
            placements.iter().map(|p| (i32::from(p.logical), p.shard.as_str(), p.version)).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * 3);
        let mut values = Vec::with_capacity(rows.len());
        for (i, (logical, shard, version)) in rows.iter().enumerate() {
            values.push(format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
            params.extend([logical as &(dyn ToSql + Sync), shard, version]);
        }
        if !values.is_empty() {
            let sql = format!(
                "INSERT INTO shard_map (logical, shard, version) VALUES {} ON CONFLICT (logical) DO NOTHING",
                values.join(", ")
            );
            self.catalog_execute(&sql, &params).await?;
        }
        self.shard_map().await
    }

    async fn update_placement(&self, expected: i64, new: &Placement) -> Result<bool, RepoError> {
        let step = new.step.map(MoveStep::as_str);
        let since = new.since.map(|t| t.0);
        let changed = self
            .catalog_execute(
                "UPDATE shard_map SET shard = $2, other = $3, step = $4, since = $5, version = $6 \
                 WHERE logical = $1 AND version = $7",
                &[&i32::from(new.logical), &new.shard, &new.other, &step, &since, &new.version, &expected],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn claim_email(&self, email: &Email, user: UserId, at: Timestamp) -> Result<(), RepoError> {
        let changed = self
            .catalog_execute(
                "INSERT INTO email_claims (email, user_id, state, at) VALUES ($1, $2, 'pending', $3) \
                 ON CONFLICT (email) DO UPDATE SET state = 'pending', at = EXCLUDED.at \
                 WHERE email_claims.user_id = EXCLUDED.user_id",
                &[&email.as_str(), &user.as_uuid(), &at.0],
            )
            .await?;
        if changed == 1 { Ok(()) } else { Err(RepoError::EmailTaken) }
    }

    async fn confirm_email(&self, email: &Email, user: UserId) -> Result<(), RepoError> {
        self.catalog_execute(
            "UPDATE email_claims SET state = 'active' WHERE email = $1 AND user_id = $2",
            &[&email.as_str(), &user.as_uuid()],
        )
        .await
        .map(drop)
    }

    async fn release_email(&self, email: &Email, user: UserId) -> Result<(), RepoError> {
        self.catalog_execute(
            "DELETE FROM email_claims WHERE email = $1 AND user_id = $2",
            &[&email.as_str(), &user.as_uuid()],
        )
        .await
        .map(drop)
    }

    async fn email_claim(&self, email: &Email) -> Result<Option<EmailClaim>, RepoError> {
        let sql = format!("SELECT {CLAIM_COLUMNS} FROM email_claims WHERE email = $1");
        self.catalog_query(&sql, &[&email.as_str()]).await?.first().map(claim).transpose()
    }

    async fn pending_claims(&self, before: Timestamp, limit: u32) -> Result<Vec<EmailClaim>, RepoError> {
        let sql = format!(
            "SELECT {CLAIM_COLUMNS} FROM email_claims WHERE state = 'pending' AND at < $1 ORDER BY at, email LIMIT $2"
        );
        self.catalog_query(&sql, &[&before.0, &i64::from(limit)]).await?.iter().map(claim).collect()
    }
}
