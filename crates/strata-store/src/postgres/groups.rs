//! Groups on PostgreSQL: `user_groups` and one `group_members` row per membership. Id
//! lists travel as one `uuid[]` parameter (`= ANY($n)`), so each statement is prepared once.

use async_trait::async_trait;
use strata_core::domain::{DisplayName, Email, GroupId, OutboxEvent, Timestamp, TokenHash, UserId, Version};
use strata_core::error::RepoError;
use strata_core::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupListQuery, GroupMember, GroupName, MemberQuery,
    MembershipChange, MembershipDelta,
};
use strata_core::ports::{ExternalIdRepository, GroupRepository, ProvisioningTokenRepository, QueryPlan};
use strata_core::provisioning::ProvisioningToken;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{PostgresStore, Transaction, corrupt, execute, explain_one, get, insert_event, pg_err, version_param};

mod sql {
    pub const GROUP_BY_ID: &str =
        "SELECT id, display_name, external_id, version, created_at, updated_at FROM user_groups WHERE id = $1";
    pub const LIST_GROUPS_PAGE: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE id > $1 ORDER BY id LIMIT $2";
    pub const LIST_GROUPS_BY_NAME: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE display_name = $3 AND id > $1 AND ($4::text IS NULL OR external_id = $4) \
         ORDER BY id LIMIT $2";
    pub const LIST_GROUPS_BY_EXTERNAL_ID: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE external_id = $3 AND id > $1 ORDER BY id LIMIT $2";
    pub const GROUP_MEMBERS: &str = "SELECT u.id, u.email, u.name FROM group_members m JOIN users u ON u.id = m.user_id \
         WHERE m.group_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT $3";
    pub const GROUPS_OF_USER: &str = "SELECT g.id, g.display_name, g.external_id, g.version, g.created_at, g.updated_at \
         FROM group_members m JOIN user_groups g ON g.id = m.group_id WHERE m.user_id = $1 ORDER BY m.group_id";
    pub const INSERT_GROUP: &str = "INSERT INTO user_groups \
         (id, display_name, external_id, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)";
    pub const UPDATE_GROUP: &str = "UPDATE user_groups SET display_name = $2, external_id = $3, version = $4, \
         updated_at = $5 WHERE id = $1 AND version = $6";
    /// Ids naming no user are skipped by the join rather than failing the foreign key.
    pub const ADD_MEMBERS: &str = "INSERT INTO group_members (group_id, user_id) \
         SELECT $1, id FROM users WHERE id = ANY($2) ON CONFLICT (group_id, user_id) DO NOTHING";
    pub const REMOVE_MEMBERS: &str = "DELETE FROM group_members WHERE group_id = $1 AND user_id = ANY($2)";
    pub const CLEAR_MEMBERS: &str = "DELETE FROM group_members WHERE group_id = $1";
    pub const DELETE_GROUP: &str = "DELETE FROM user_groups WHERE id = $1";
    pub const DELETE_GROUP_AT_VERSION: &str = "DELETE FROM user_groups WHERE id = $1 AND version = $2";
    pub const GROUP_EXISTS: &str = "SELECT 1 FROM user_groups WHERE id = $1";
    pub const EXTERNAL_ID_OF: &str = "SELECT external_id FROM user_external_ids WHERE user_id = $1";
    /// Through the users table, so that a user who is gone sets nothing (0 rows: NotFound).
    pub const SET_EXTERNAL_ID: &str = "INSERT INTO user_external_ids (user_id, external_id) \
         SELECT id, $2 FROM users WHERE id = $1 \
         ON CONFLICT (user_id) DO UPDATE SET external_id = excluded.external_id";
    pub const CLEAR_EXTERNAL_ID: &str = "DELETE FROM user_external_ids WHERE user_id = $1";
    pub const USERS_BY_EXTERNAL_ID: &str =
        "SELECT user_id FROM user_external_ids WHERE external_id = $1 ORDER BY user_id";
    pub const ENTERPRISE_OF: &str = "SELECT employee_number, cost_center, organization, division, department, \
         manager_id FROM user_enterprise WHERE user_id = $1";
    /// Through the users table, so that a user who is gone sets nothing (0 rows: NotFound).
    pub const SET_ENTERPRISE: &str = "INSERT INTO user_enterprise (user_id, employee_number, cost_center, \
         organization, division, department, manager_id) SELECT id, $2, $3, $4, $5, $6, $7 FROM users WHERE id = $1 \
         ON CONFLICT (user_id) DO UPDATE SET employee_number = excluded.employee_number, \
         cost_center = excluded.cost_center, organization = excluded.organization, division = excluded.division, \
         department = excluded.department, manager_id = excluded.manager_id";
    pub const CLEAR_ENTERPRISE: &str = "DELETE FROM user_enterprise WHERE user_id = $1";
    pub const USER_EXISTS: &str = "SELECT 1 FROM users WHERE id = $1";
    pub const USERS_BY_EMPLOYEE_NUMBER: &str =
        "SELECT user_id FROM user_enterprise WHERE employee_number = $1 ORDER BY user_id";
    pub const PROVISIONING_TOKEN_BY_HASH: &str =
        "SELECT id, name, token_hash, created_at, revoked_at FROM provisioning_tokens WHERE token_hash = $1";
    pub const EXISTING_USERS: &str = "SELECT id FROM users WHERE id = ANY($1) ORDER BY id";
}

fn group_from_row(r: &Row) -> Result<Group, RepoError> {
    let version: i64 = get(r, 3)?;
    Ok(Group {
        id: GroupId::from_uuid(get(r, 0)?),
        display_name: GroupName::from_trusted(get(r, 1)?),
        external_id: get::<Option<String>>(r, 2)?.map(ExternalId::from_trusted),
        version: Version(u64::try_from(version).map_err(|_| corrupt("version", version))?),
        created_at: Timestamp(get(r, 4)?),
        updated_at: Timestamp(get(r, 5)?),
    })
}

fn uuids(ids: &[UserId]) -> Vec<Uuid> {
    ids.iter().map(UserId::as_uuid).collect()
}

/// After a guarded UPDATE/DELETE touched no row: was it the version or the row?
async fn missing_or_conflict(tx: &Transaction<'_>, id: GroupId) -> RepoError {
    let found = async {
        let stmt = tx.prepare_cached(sql::GROUP_EXISTS).await?;
        tx.query_opt(&stmt, &[&id.as_uuid()]).await
    };
    match found.await {
        Ok(Some(_)) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => pg_err(e),
    }
}

/// EXPLAINs the group queries over one sample group with one member.
pub(super) async fn explain_hot_paths(tx: &Transaction<'_>) -> Result<Vec<QueryPlan>, RepoError> {
    let (group, user) = (Uuid::now_v7(), Uuid::now_v7());
    let zero = 0i64;
    let email = format!("explain-{}@strata.invalid", user.simple());
    tx.execute(
        super::sql::INSERT_USER,
        &[&user, &email, &"Explain", &"x", &"user", &"active", &1i64, &zero, &zero, &false],
    )
    .await
    .map_err(pg_err)?;
    tx.execute(sql::INSERT_GROUP, &[&group, &"Explain", &None::<String>, &1i64, &zero, &zero]).await.map_err(pg_err)?;
    tx.execute(sql::ADD_MEMBERS, &[&group, &vec![user]]).await.map_err(pg_err)?;
    let (limit, name, none, one) = (51i64, "Explain", None::<String>, vec![user]);
    let first = Uuid::nil();
    let mut plans = Vec::new();
    plans.push(explain_one(tx, "group_by_id", sql::GROUP_BY_ID, &["user_groups"], false, &[&group]).await?);
    plans.push(
        explain_one(tx, "list_groups_page", sql::LIST_GROUPS_PAGE, &["user_groups"], true, &[&first, &limit]).await?,
    );
    plans.push(
        explain_one(
            tx,
            "list_groups_by_name",
            sql::LIST_GROUPS_BY_NAME,
            &["user_groups"],
            false,
            &[&first, &limit, &name, &none],
        )
        .await?,
    );
    plans.push(
        explain_one(
            tx,
            "list_groups_by_external_id",
            sql::LIST_GROUPS_BY_EXTERNAL_ID,
            &["user_groups"],
            false,
            &[&first, &limit, &name],
        )
        .await?,
    );
    plans.push(
        explain_one(
            tx,
            "group_members",
            sql::GROUP_MEMBERS,
            &["group_members", "users"],
            true,
            &[&group, &first, &limit],
        )
        .await?,
    );
    plans.push(
        explain_one(tx, "groups_of_user", sql::GROUPS_OF_USER, &["group_members", "user_groups"], false, &[&user])
            .await?,
    );
    plans.push(
        explain_one(tx, "users_by_external_id", sql::USERS_BY_EXTERNAL_ID, &["user_external_ids"], false, &[&name])
            .await?,
    );
    plans.push(
        explain_one(
            tx,
            "users_by_employee_number",
            sql::USERS_BY_EMPLOYEE_NUMBER,
            &["user_enterprise"],
            false,
            &[&name],
        )
        .await?,
    );
    let sample_hash: &[u8] = &[0u8; 32];
    plans.push(
        explain_one(
            tx,
            "provisioning_token_by_hash",
            sql::PROVISIONING_TOKEN_BY_HASH,
            &["provisioning_tokens"],
            false,
            &[&sample_hash],
        )
        .await?,
    );
    // The insert's target is written, not read: what must be indexed is the users lookup.
    plans.push(explain_one(tx, "add_group_member", sql::ADD_MEMBERS, &["users"], false, &[&group, &one]).await?);
    plans.push(
        explain_one(tx, "remove_group_member", sql::REMOVE_MEMBERS, &["group_members"], false, &[&group, &one]).await?,
    );
    plans.push(
        explain_one(
            tx,
            "update_group",
            sql::UPDATE_GROUP,
            &["user_groups"],
            false,
            &[&group, &name, &none, &2i64, &zero, &1i64],
        )
        .await?,
    );
    Ok(plans)
}

#[async_trait]
impl GroupRepository for PostgresStore {
    async fn create_group(&self, group: &Group, members: &[UserId], event: &OutboxEvent) -> Result<(), RepoError> {
        let version = version_param(group.version)?;
        let members = uuids(members);
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            execute(
                &tx,
                sql::INSERT_GROUP,
                &[
                    &group.id.as_uuid(),
                    &group.display_name.as_str(),
                    &group.external_id.as_ref().map(ExternalId::as_str),
                    &version,
                    &group.created_at.0,
                    &group.updated_at.0,
                ],
            )
            .await
            .map_err(pg_err)?;
            if !members.is_empty() {
                execute(&tx, sql::ADD_MEMBERS, &[&group.id.as_uuid(), &members]).await.map_err(pg_err)?;
            }
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn group_by_id(&self, id: GroupId) -> Result<Option<Group>, RepoError> {
        self.query_row(sql::GROUP_BY_ID, &[&id.as_uuid()]).await?.map(|r| group_from_row(&r)).transpose()
    }

    async fn list_groups(&self, query: &GroupListQuery) -> Result<Vec<Group>, RepoError> {
        let after = query.after.map(|id| id.as_uuid()).unwrap_or(Uuid::nil());
        let limit = i64::from(query.limit);
        let external = query.external_id.as_ref().map(ExternalId::as_str);
        let rows = match (&query.display_name, external) {
            (Some(name), external) => {
                self.query_rows(sql::LIST_GROUPS_BY_NAME, &[&after, &limit, &name.as_str(), &external]).await?
            }
            (None, Some(external)) => {
                self.query_rows(sql::LIST_GROUPS_BY_EXTERNAL_ID, &[&after, &limit, &external]).await?
            }
            (None, None) => self.query_rows(sql::LIST_GROUPS_PAGE, &[&after, &limit]).await?,
        };
        rows.iter().map(group_from_row).collect()
    }

    async fn update_group(
        &self,
        group: &Group,
        expected: Version,
        members: &MembershipChange,
        event: &OutboxEvent,
    ) -> Result<MembershipDelta, RepoError> {
        let (version, expected) = (version_param(group.version)?, version_param(expected)?);
        let (add, remove) = (uuids(&members.add), uuids(&members.remove));
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let gid = group.id.as_uuid();
            let changed = execute(
                &tx,
                sql::UPDATE_GROUP,
                &[
                    &gid,
                    &group.display_name.as_str(),
                    &group.external_id.as_ref().map(ExternalId::as_str),
                    &version,
                    &group.updated_at.0,
                    &expected,
                ],
            )
            .await
            .map_err(pg_err)?;
            if changed == 0 {
                return Err(missing_or_conflict(&tx, group.id).await);
            }
            let mut delta = MembershipDelta::default();
            if members.replace {
                delta.removed += execute(&tx, sql::CLEAR_MEMBERS, &[&gid]).await.map_err(pg_err)?;
            }
            if !remove.is_empty() {
                delta.removed += execute(&tx, sql::REMOVE_MEMBERS, &[&gid, &remove]).await.map_err(pg_err)?;
            }
            if !add.is_empty() {
                delta.added += execute(&tx, sql::ADD_MEMBERS, &[&gid, &add]).await.map_err(pg_err)?;
            }
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(delta)
        })
        .await
    }

    async fn delete_group(&self, id: GroupId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let expected = expected.map(version_param).transpose()?;
        crate::with_timeout(self.query_timeout, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let gid = id.as_uuid();
            let deleted = match &expected {
                Some(v) => execute(&tx, sql::DELETE_GROUP_AT_VERSION, &[&gid, v]).await,
                None => execute(&tx, sql::DELETE_GROUP, &[&gid]).await,
            }
            .map_err(pg_err)?;
            if deleted == 0 {
                return Err(missing_or_conflict(&tx, id).await);
            }
            insert_event(&tx, event).await?;
            tx.commit().await.map_err(pg_err)
        })
        .await
    }

    async fn group_members(&self, query: &MemberQuery) -> Result<Vec<GroupMember>, RepoError> {
        let after = query.after.map(|id| id.as_uuid()).unwrap_or(Uuid::nil());
        let limit = i64::from(query.limit);
        let rows = self.query_rows(sql::GROUP_MEMBERS, &[&query.group.as_uuid(), &after, &limit]).await?;
        rows.iter()
            .map(|r| {
                Ok(GroupMember {
                    user_id: UserId::from_uuid(get(r, 0)?),
                    email: Email::from_trusted(get(r, 1)?),
                    name: DisplayName::from_trusted(get(r, 2)?),
                })
            })
            .collect()
    }

    async fn groups_of_user(&self, user: UserId) -> Result<Vec<Group>, RepoError> {
        self.query_rows(sql::GROUPS_OF_USER, &[&user.as_uuid()]).await?.iter().map(group_from_row).collect()
    }

    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        let ids = uuids(ids);
        let rows = self.query_rows(sql::EXISTING_USERS, &[&ids]).await?;
        rows.iter().map(|r| get(r, 0).map(UserId::from_uuid)).collect()
    }
}

#[async_trait]
impl ExternalIdRepository for PostgresStore {
    async fn external_id_of(&self, user: UserId) -> Result<Option<ExternalId>, RepoError> {
        let row = self.query_row(sql::EXTERNAL_ID_OF, &[&user.as_uuid()]).await?;
        row.map(|r| get::<String>(&r, 0).map(ExternalId::from_trusted)).transpose()
    }

    async fn set_external_id(&self, user: UserId, external_id: Option<&ExternalId>) -> Result<(), RepoError> {
        let uid = user.as_uuid();
        let changed = match external_id {
            Some(e) => self.execute_one(sql::SET_EXTERNAL_ID, &[&uid, &e.as_str()]).await?,
            None => {
                self.execute_one(sql::CLEAR_EXTERNAL_ID, &[&uid]).await?;
                1
            }
        };
        if changed == 0 {
            return Err(RepoError::NotFound);
        }
        Ok(())
    }

    async fn users_by_external_id(&self, external_id: &ExternalId) -> Result<Vec<UserId>, RepoError> {
        let rows = self.query_rows(sql::USERS_BY_EXTERNAL_ID, &[&external_id.as_str()]).await?;
        rows.iter().map(|r| get(r, 0).map(UserId::from_uuid)).collect()
    }

    async fn enterprise_of(&self, user: UserId) -> Result<Option<EnterpriseUser>, RepoError> {
        let row = self.query_row(sql::ENTERPRISE_OF, &[&user.as_uuid()]).await?;
        row.map(|r| {
            let text = |i: usize| get::<Option<String>>(&r, i).map(|v| v.map(EnterpriseText::from_trusted));
            Ok(EnterpriseUser {
                employee_number: text(0)?,
                cost_center: text(1)?,
                organization: text(2)?,
                division: text(3)?,
                department: text(4)?,
                manager: text(5)?,
            })
        })
        .transpose()
    }

    async fn set_enterprise(&self, user: UserId, enterprise: &EnterpriseUser) -> Result<(), RepoError> {
        let uid = user.as_uuid();
        if enterprise.is_empty() {
            if self.query_row(sql::USER_EXISTS, &[&uid]).await?.is_none() {
                return Err(RepoError::NotFound);
            }
            self.execute_one(sql::CLEAR_ENTERPRISE, &[&uid]).await?;
            return Ok(());
        }
        let t = |v: &Option<EnterpriseText>| v.as_ref().map(|v| v.as_str().to_owned());
        let (a, b, c, d, e, f) = (
            t(&enterprise.employee_number),
            t(&enterprise.cost_center),
            t(&enterprise.organization),
            t(&enterprise.division),
            t(&enterprise.department),
            t(&enterprise.manager),
        );
        if self.execute_one(sql::SET_ENTERPRISE, &[&uid, &a, &b, &c, &d, &e, &f]).await? == 0 {
            return Err(RepoError::NotFound);
        }
        Ok(())
    }

    async fn users_by_employee_number(&self, employee_number: &EnterpriseText) -> Result<Vec<UserId>, RepoError> {
        let rows = self.query_rows(sql::USERS_BY_EMPLOYEE_NUMBER, &[&employee_number.as_str()]).await?;
        rows.iter().map(|r| get(r, 0).map(UserId::from_uuid)).collect()
    }
}

fn provisioning_token(r: &Row) -> Result<ProvisioningToken, RepoError> {
    let hash: &[u8] = get(r, 2)?;
    Ok(ProvisioningToken {
        id: get(r, 0)?,
        name: get(r, 1)?,
        token_hash: TokenHash(hash.try_into().map_err(|_| corrupt("token_hash", hash.len()))?),
        created_at: Timestamp(get(r, 3)?),
        revoked_at: get::<Option<i64>>(r, 4)?.map(Timestamp),
    })
}

#[async_trait]
impl ProvisioningTokenRepository for PostgresStore {
    async fn create_provisioning_token(&self, token: &ProvisioningToken) -> Result<(), RepoError> {
        let hash: &[u8] = &token.token_hash.0;
        self.execute_one(
            "INSERT INTO provisioning_tokens (id, name, token_hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
            &[&token.id, &token.name, &hash, &token.created_at.0, &token.revoked_at.map(|t| t.0)],
        )
        .await
        .map(drop)
    }

    async fn provisioning_tokens(&self) -> Result<Vec<ProvisioningToken>, RepoError> {
        let rows = self
            .query_rows("SELECT id, name, token_hash, created_at, revoked_at FROM provisioning_tokens ORDER BY id", &[])
            .await?;
        rows.iter().map(provisioning_token).collect()
    }

    async fn provisioning_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ProvisioningToken>, RepoError> {
        let hash: &[u8] = &hash.0;
        self.query_row(sql::PROVISIONING_TOKEN_BY_HASH, &[&hash]).await?.map(|r| provisioning_token(&r)).transpose()
    }

    async fn revoke_provisioning_token(&self, id: Uuid, at: Timestamp) -> Result<bool, RepoError> {
        let n = self
            .execute_one(
                "UPDATE provisioning_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at.0],
            )
            .await?;
        Ok(n == 1)
    }
}
