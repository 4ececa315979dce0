//! Groups on MySQL/MariaDB: `user_groups` and one `group_members` row per membership.

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Params, Row, Transaction, TxOpts, Value};
use strata_core::domain::{DisplayName, Email, GroupId, OutboxEvent, Timestamp, TokenHash, UserId, Version};
use strata_core::error::RepoError;
use strata_core::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupListQuery, GroupMember, GroupName, MemberQuery,
    MembershipChange, MembershipDelta,
};
use strata_core::ports::{ExternalIdRepository, GroupRepository, ProvisioningTokenRepository, QueryPlan};
use strata_core::provisioning::ProvisioningToken;
use uuid::Uuid;

use super::{MysqlStore, corrupt, explain_one, finish, in_list, insert_event, my_err, take, version_param};

/// Ids per IN list: bounded statements, and a handful of cached shapes.
const CHUNK: usize = 500;

mod sql {
    pub const GROUP_BY_ID: &str =
        "SELECT id, display_name, external_id, version, created_at, updated_at FROM user_groups WHERE id = ?";
    pub const LIST_GROUPS_PAGE: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE id > ? ORDER BY id LIMIT ?";
    pub const LIST_GROUPS_BY_NAME: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE display_name = ? AND id > ? AND (? IS NULL OR external_id = ?) ORDER BY id LIMIT ?";
    pub const LIST_GROUPS_BY_EXTERNAL_ID: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE external_id = ? AND id > ? ORDER BY id LIMIT ?";
    pub const GROUP_MEMBERS: &str = "SELECT u.id, u.email, u.name FROM group_members m JOIN users u ON u.id = m.user_id \
         WHERE m.group_id = ? AND m.user_id > ? ORDER BY m.user_id LIMIT ?";
    pub const GROUPS_OF_USER: &str = "SELECT g.id, g.display_name, g.external_id, g.version, g.created_at, g.updated_at \
         FROM group_members m JOIN user_groups g ON g.id = m.group_id WHERE m.user_id = ? ORDER BY m.group_id";
    pub const INSERT_GROUP: &str = "INSERT INTO user_groups \
         (id, display_name, external_id, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)";
    pub const UPDATE_GROUP: &str = "UPDATE user_groups SET display_name = ?, external_id = ?, version = ?, \
         updated_at = ? WHERE id = ? AND version = ?";
    /// The lookup an insert of members reads through (EXPLAIN of the INSERT itself
    /// reports its write target as a table without a key).
    pub const MEMBER_SOURCE: &str = "SELECT id FROM users WHERE id IN (?)";
    pub const REMOVE_ONE_MEMBER: &str = "DELETE FROM group_members WHERE group_id = ? AND user_id IN (?)";
    pub const CLEAR_MEMBERS: &str = "DELETE FROM group_members WHERE group_id = ?";
    pub const DELETE_GROUP: &str = "DELETE FROM user_groups WHERE id = ?";
    pub const DELETE_GROUP_AT_VERSION: &str = "DELETE FROM user_groups WHERE id = ? AND version = ?";
    pub const EXTERNAL_ID_OF: &str = "SELECT external_id FROM user_external_ids WHERE user_id = ?";
    pub const SET_EXTERNAL_ID: &str = "INSERT INTO user_external_ids (user_id, external_id) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE external_id = VALUES(external_id)";
    pub const CLEAR_EXTERNAL_ID: &str = "DELETE FROM user_external_ids WHERE user_id = ?";
    pub const USERS_BY_EXTERNAL_ID: &str =
        "SELECT user_id FROM user_external_ids WHERE external_id = ? ORDER BY user_id";
    pub const ENTERPRISE_OF: &str = "SELECT employee_number, cost_center, organization, division, department, \
         manager_id FROM user_enterprise WHERE user_id = ?";
    pub const SET_ENTERPRISE: &str = "INSERT INTO user_enterprise (user_id, employee_number, cost_center, \
         organization, division, department, manager_id) VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE employee_number = VALUES(employee_number), cost_center = VALUES(cost_center), \
         organization = VALUES(organization), division = VALUES(division), department = VALUES(department), \
         manager_id = VALUES(manager_id)";
    pub const CLEAR_ENTERPRISE: &str = "DELETE FROM user_enterprise WHERE user_id = ?";
    pub const USERS_BY_EMPLOYEE_NUMBER: &str =
        "SELECT user_id FROM user_enterprise WHERE employee_number = ? ORDER BY user_id";
    pub const PROVISIONING_TOKEN_BY_HASH: &str =
        "SELECT id, name, token_hash, created_at, revoked_at FROM provisioning_tokens WHERE token_hash = ?";
    pub const GROUP_EXISTS: &str = "SELECT 1 FROM user_groups WHERE id = ?";
}

fn group_from_row(r: &mut Row) -> Result<Group, RepoError> {
    let version: i64 = take(r, 3)?;
    let id: Vec<u8> = take(r, 0)?;
    Ok(Group {
        id: GroupId::from_uuid(Uuid::from_slice(&id).map_err(|e| corrupt("uuid", e))?),
        display_name: GroupName::from_trusted(take(r, 1)?),
        external_id: take::<Option<String>>(r, 2)?.map(ExternalId::from_trusted),
        version: Version(u64::try_from(version).map_err(|_| corrupt("version", version))?),
        created_at: Timestamp(take(r, 4)?),
        updated_at: Timestamp(take(r, 5)?),
    })
}

fn id_value(bytes: &[u8; 16]) -> Value {
    Value::Bytes(bytes.to_vec())
}

/// Runs `INSERT/DELETE … IN (…)` over `ids` in chunks; returns the rows affected.
async fn per_chunk(
    tx: &mut Transaction<'_>,
    group: GroupId,
    ids: &[UserId],
    sql: impl Fn(usize) -> String,
) -> Result<u64, RepoError> {
    let mut affected = 0;
    for chunk in ids.chunks(CHUNK) {
        let params: Vec<Value> =
            std::iter::once(id_value(group.as_bytes())).chain(chunk.iter().map(|id| id_value(id.as_bytes()))).collect();
        tx.exec_drop(sql(chunk.len()), Params::Positional(params)).await.map_err(my_err)?;
        affected += tx.affected_rows();
    }
    Ok(affected)
}

/// Members whose user exists; IGNORE skips rows already there (and only counts new ones,
/// which an ON DUPLICATE KEY UPDATE under CLIENT_FOUND_ROWS would not).
async fn add_members(tx: &mut Transaction<'_>, group: GroupId, ids: &[UserId]) -> Result<u64, RepoError> {
    per_chunk(tx, group, ids, |n| {
        format!(
            "INSERT IGNORE INTO group_members (group_id, user_id) SELECT ?, id FROM users WHERE id IN ({})",
            in_list(n)
        )
    })
    .await
}

async fn remove_members(tx: &mut Transaction<'_>, group: GroupId, ids: &[UserId]) -> Result<u64, RepoError> {
    per_chunk(tx, group, ids, |n| {
        format!("DELETE FROM group_members WHERE group_id = ? AND user_id IN ({})", in_list(n))
    })
    .await
}

/// After a guarded UPDATE/DELETE touched no row: was it the version or the row?
async fn missing_or_conflict(tx: &mut Transaction<'_>, id: GroupId) -> RepoError {
    match tx.exec_first::<i64, _, _>(sql::GROUP_EXISTS, (id.as_bytes().as_slice(),)).await {
        Ok(Some(_)) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => my_err(e),
    }
}

/// EXPLAINs the group queries over one sample group with one member.
pub(super) async fn explain_hot_paths(tx: &mut Transaction<'_>) -> Result<Vec<QueryPlan>, RepoError> {
    let (group, user) = (Uuid::now_v7(), Uuid::now_v7());
    let (gid, uid): (&[u8], &[u8]) = (group.as_bytes(), user.as_bytes());
    let email = format!("explain-{}@strata.invalid", user.simple());
    tx.exec_drop(
        super::sql::INSERT_USER,
        (uid, email.as_str(), "Explain", "x", "user", "active", 1i64, 0i64, 0i64, false),
    )
    .await
    .map_err(my_err)?;
    tx.exec_drop(sql::INSERT_GROUP, (gid, "Explain", None::<String>, 1i64, 0i64, 0i64)).await.map_err(my_err)?;
    tx.exec_drop("INSERT INTO group_members (group_id, user_id) VALUES (?, ?)", (gid, uid)).await.map_err(my_err)?;
    // A unique-key lookup of a value that is not there is answered from the const-table
    // step ("Impossible WHERE"), which names no index: plan over a row that is.
    let sample_hash: &[u8] = &[0u8; 32];
    tx.exec_drop(
        "INSERT INTO provisioning_tokens (id, name, token_hash, created_at) VALUES (?, 'Explain', ?, 0)",
        (Uuid::now_v7().as_bytes().as_slice(), sample_hash),
    )
    .await
    .map_err(my_err)?;
    let first: &[u8] = &[0u8; 16];
    let limit = 51i64;
    let none = None::<String>;
    // As above: plan over a row that is there.
    tx.exec_drop("INSERT INTO user_enterprise (user_id, employee_number) VALUES (?, 'x')", (uid,))
        .await
        .map_err(my_err)?;
    let queries: [(&'static str, &'static str, bool, Params); 12] = [
        ("provisioning_token_by_hash", sql::PROVISIONING_TOKEN_BY_HASH, false, (sample_hash,).into()),
        ("users_by_external_id", sql::USERS_BY_EXTERNAL_ID, false, ("x",).into()),
        ("users_by_employee_number", sql::USERS_BY_EMPLOYEE_NUMBER, false, ("x",).into()),
        ("group_by_id", sql::GROUP_BY_ID, false, (gid,).into()),
        ("list_groups_page", sql::LIST_GROUPS_PAGE, true, (first, limit).into()),
        ("list_groups_by_name", sql::LIST_GROUPS_BY_NAME, false, ("Explain", first, none.clone(), none, limit).into()),
        ("list_groups_by_external_id", sql::LIST_GROUPS_BY_EXTERNAL_ID, false, ("x", first, limit).into()),
        ("group_members", sql::GROUP_MEMBERS, true, (gid, first, limit).into()),
        ("groups_of_user", sql::GROUPS_OF_USER, false, (uid,).into()),
        ("add_group_member", sql::MEMBER_SOURCE, false, (uid,).into()),
        ("remove_group_member", sql::REMOVE_ONE_MEMBER, false, (gid, uid).into()),
        ("update_group", sql::UPDATE_GROUP, false, ("Explain", None::<String>, 2i64, 0i64, gid, 1i64).into()),
    ];
    let mut plans = Vec::with_capacity(queries.len());
    for (name, sql, ordered, params) in queries {
        plans.push(explain_one(tx, name, sql, ordered, params).await?);
    }
    Ok(plans)
}

#[async_trait]
impl GroupRepository for MysqlStore {
    async fn create_group(&self, group: &Group, members: &[UserId], event: &OutboxEvent) -> Result<(), RepoError> {
        let version = version_param(group.version)?;
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                tx.exec_drop(
                    sql::INSERT_GROUP,
                    (
                        group.id.as_bytes().as_slice(),
                        group.display_name.as_str(),
                        group.external_id.as_ref().map(ExternalId::as_str),
                        version,
                        group.created_at.0,
                        group.updated_at.0,
                    ),
                )
                .await
                .map_err(my_err)?;
                add_members(&mut tx, group.id, members).await?;
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn group_by_id(&self, id: GroupId) -> Result<Option<Group>, RepoError> {
        self.query_row(sql::GROUP_BY_ID, (id.as_bytes().as_slice(),))
            .await?
            .map(|mut r| group_from_row(&mut r))
            .transpose()
    }

    async fn list_groups(&self, query: &GroupListQuery) -> Result<Vec<Group>, RepoError> {
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let after = after.as_slice();
        let limit = i64::from(query.limit);
        let external = query.external_id.as_ref().map(ExternalId::as_str);
        let mut rows = match (&query.display_name, external) {
            (Some(name), external) => {
                self.query_rows(sql::LIST_GROUPS_BY_NAME, (name.as_str(), after, external, external, limit)).await?
            }
            (None, Some(external)) => {
                self.query_rows(sql::LIST_GROUPS_BY_EXTERNAL_ID, (external, after, limit)).await?
            }
            (None, None) => self.query_rows(sql::LIST_GROUPS_PAGE, (after, limit)).await?,
        };
        rows.iter_mut().map(group_from_row).collect()
    }

    async fn update_group(
        &self,
        group: &Group,
        expected: Version,
        members: &MembershipChange,
        event: &OutboxEvent,
    ) -> Result<MembershipDelta, RepoError> {
        let (version, expected) = (version_param(group.version)?, version_param(expected)?);
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let gid = group.id.as_bytes().as_slice();
                tx.exec_drop(
                    sql::UPDATE_GROUP,
                    (
                        group.display_name.as_str(),
                        group.external_id.as_ref().map(ExternalId::as_str),
                        version,
                        group.updated_at.0,
                        gid,
                        expected,
                    ),
                )
                .await
                .map_err(my_err)?;
                if tx.affected_rows() == 0 {
                    return Err(missing_or_conflict(&mut tx, group.id).await);
                }
                let mut delta = MembershipDelta::default();
                if members.replace {
                    tx.exec_drop(sql::CLEAR_MEMBERS, (gid,)).await.map_err(my_err)?;
                    delta.removed += tx.affected_rows();
                }
                delta.removed += remove_members(&mut tx, group.id, &members.remove).await?;
                delta.added += add_members(&mut tx, group.id, &members.add).await?;
                insert_event(&mut tx, event).await?;
                Ok(delta)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn delete_group(&self, id: GroupId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let expected = expected.map(version_param).transpose()?;
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let gid = id.as_bytes().as_slice();
                match expected {
                    Some(v) => tx.exec_drop(sql::DELETE_GROUP_AT_VERSION, (gid, v)).await,
                    None => tx.exec_drop(sql::DELETE_GROUP, (gid,)).await,
                }
                .map_err(my_err)?;
                if tx.affected_rows() == 0 {
                    return Err(missing_or_conflict(&mut tx, id).await);
                }
                insert_event(&mut tx, event).await
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn group_members(&self, query: &MemberQuery) -> Result<Vec<GroupMember>, RepoError> {
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let limit = i64::from(query.limit);
        let mut rows =
            self.query_rows(sql::GROUP_MEMBERS, (query.group.as_bytes().as_slice(), after.as_slice(), limit)).await?;
        rows.iter_mut()
            .map(|r| {
                Ok(GroupMember {
                    user_id: UserId::from_bytes(take(r, 0)?),
                    email: Email::from_trusted(take(r, 1)?),
                    name: DisplayName::from_trusted(take(r, 2)?),
                })
            })
            .collect()
    }

    async fn groups_of_user(&self, user: UserId) -> Result<Vec<Group>, RepoError> {
        let mut rows = self.query_rows(sql::GROUPS_OF_USER, (user.as_bytes().as_slice(),)).await?;
        rows.iter_mut().map(group_from_row).collect()
    }

    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!("SELECT id FROM users WHERE id IN ({}) ORDER BY id", in_list(chunk.len()));
            let params = chunk.iter().map(|id| id_value(id.as_bytes())).collect();
            for mut row in self.query_built(sql, params).await? {
                found.push(UserId::from_bytes(take(&mut row, 0)?));
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl ExternalIdRepository for MysqlStore {
    async fn external_id_of(&self, user: UserId) -> Result<Option<ExternalId>, RepoError> {
        let row = self.query_row(sql::EXTERNAL_ID_OF, (user.as_bytes().as_slice(),)).await?;
        row.map(|mut r| take::<String>(&mut r, 0).map(ExternalId::from_trusted)).transpose()
    }

    async fn set_external_id(&self, user: UserId, external_id: Option<&ExternalId>) -> Result<(), RepoError> {
        let uid = user.as_bytes().to_vec();
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let exists = tx.exec_first::<i64, _, _>("SELECT 1 FROM users WHERE id = ?", (uid.as_slice(),)).await;
                if exists.map_err(my_err)?.is_none() {
                    return Err(RepoError::NotFound);
                }
                match external_id {
                    Some(e) => tx.exec_drop(sql::SET_EXTERNAL_ID, (uid.as_slice(), e.as_str())).await,
                    None => tx.exec_drop(sql::CLEAR_EXTERNAL_ID, (uid.as_slice(),)).await,
                }
                .map_err(my_err)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn users_by_external_id(&self, external_id: &ExternalId) -> Result<Vec<UserId>, RepoError> {
        let mut rows = self.query_rows(sql::USERS_BY_EXTERNAL_ID, (external_id.as_str(),)).await?;
        rows.iter_mut().map(|r| take(r, 0).map(UserId::from_bytes)).collect()
    }

    async fn enterprise_of(&self, user: UserId) -> Result<Option<EnterpriseUser>, RepoError> {
        let row = self.query_row(sql::ENTERPRISE_OF, (user.as_bytes().as_slice(),)).await?;
        row.map(|mut r| {
            let mut text = |i: usize| take::<Option<String>>(&mut r, i).map(|v| v.map(EnterpriseText::from_trusted));
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
        let uid = user.as_bytes().to_vec();
        let t = |v: &Option<EnterpriseText>| v.as_ref().map(|v| v.as_str().to_owned());
        let e = enterprise;
        let values = (
            t(&e.employee_number),
            t(&e.cost_center),
            t(&e.organization),
            t(&e.division),
            t(&e.department),
            t(&e.manager),
        );
        crate::with_timeout(self.query_timeout, async {
            let mut conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(my_err)?;
            let outcome = async {
                let exists = tx.exec_first::<i64, _, _>("SELECT 1 FROM users WHERE id = ?", (uid.as_slice(),)).await;
                if exists.map_err(my_err)?.is_none() {
                    return Err(RepoError::NotFound);
                }
                if e.is_empty() {
                    return tx.exec_drop(sql::CLEAR_ENTERPRISE, (uid.as_slice(),)).await.map_err(my_err);
                }
                let (a, b, c, d, f, g) = values.clone();
                tx.exec_drop(sql::SET_ENTERPRISE, (uid.as_slice(), a, b, c, d, f, g)).await.map_err(my_err)
            }
            .await;
            finish(tx, outcome).await
        })
        .await
    }

    async fn users_by_employee_number(&self, employee_number: &EnterpriseText) -> Result<Vec<UserId>, RepoError> {
        let mut rows = self.query_rows(sql::USERS_BY_EMPLOYEE_NUMBER, (employee_number.as_str(),)).await?;
        rows.iter_mut().map(|r| take(r, 0).map(UserId::from_bytes)).collect()
    }
}

fn provisioning_token(r: &mut Row) -> Result<ProvisioningToken, RepoError> {
    let id: Vec<u8> = take(r, 0)?;
    Ok(ProvisioningToken {
        id: Uuid::from_slice(&id).map_err(|e| corrupt("uuid", e))?,
        name: take(r, 1)?,
        token_hash: TokenHash(take(r, 2)?),
        created_at: Timestamp(take(r, 3)?),
        revoked_at: take::<Option<i64>>(r, 4)?.map(Timestamp),
    })
}

#[async_trait]
impl ProvisioningTokenRepository for MysqlStore {
    async fn create_provisioning_token(&self, token: &ProvisioningToken) -> Result<(), RepoError> {
        let params = vec![
            Value::Bytes(token.id.as_bytes().to_vec()),
            Value::from(token.name.as_str()),
            Value::Bytes(token.token_hash.0.to_vec()),
            Value::from(token.created_at.0),
            token.revoked_at.map_or(Value::NULL, |t| Value::from(t.0)),
        ];
        self.execute_one(
            "INSERT INTO provisioning_tokens (id, name, token_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)"
                .into(),
            params,
        )
        .await
        .map(drop)
    }

    async fn provisioning_tokens(&self) -> Result<Vec<ProvisioningToken>, RepoError> {
        let mut rows = self
            .query_built(
                "SELECT id, name, token_hash, created_at, revoked_at FROM provisioning_tokens ORDER BY id".into(),
                vec![],
            )
            .await?;
        rows.iter_mut().map(provisioning_token).collect()
    }

    async fn provisioning_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ProvisioningToken>, RepoError> {
        self.query_row(sql::PROVISIONING_TOKEN_BY_HASH, (hash.0.as_slice(),))
            .await?
            .map(|mut r| provisioning_token(&mut r))
            .transpose()
    }

    async fn revoke_provisioning_token(&self, id: Uuid, at: Timestamp) -> Result<bool, RepoError> {
        let n = self
            .execute_one(
                "UPDATE provisioning_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL".into(),
                vec![Value::from(at.0), Value::Bytes(id.as_bytes().to_vec())],
            )
            .await?;
        Ok(n == 1)
    }
}
