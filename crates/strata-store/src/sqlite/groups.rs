//! Groups on SQLite (`user_groups` and one `group_members` row per membership), and the
//! SCIM side tables: users' external ids and provisioning tokens.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};
use strata_core::domain::{DisplayName, Email, GroupId, OutboxEvent, Timestamp, TokenHash, UserId, Version};
use strata_core::error::RepoError;
use strata_core::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupListQuery, GroupMember, GroupName, MemberQuery,
    MembershipChange, MembershipDelta,
};
use strata_core::ports::{ExternalIdRepository, GroupRepository, ProvisioningTokenRepository};
use strata_core::provisioning::ProvisioningToken;

use super::{SqliteStore, blob, corrupt, insert_event, map_err, placeholders};

/// Ids per IN list: well under SQLite's variable limit, and statements stay cacheable.
const CHUNK: usize = 500;

pub(super) mod sql {
    pub const GROUP_BY_ID: &str =
        "SELECT id, display_name, external_id, version, created_at, updated_at FROM user_groups WHERE id = ?1";
    pub const LIST_GROUPS_PAGE: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE id > ?1 ORDER BY id LIMIT ?2";
    pub const LIST_GROUPS_BY_NAME: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE display_name = ?3 AND id > ?1 AND (?4 IS NULL OR external_id = ?4) ORDER BY id LIMIT ?2";
    pub const LIST_GROUPS_BY_EXTERNAL_ID: &str = "SELECT id, display_name, external_id, version, created_at, updated_at \
         FROM user_groups WHERE external_id = ?3 AND id > ?1 ORDER BY id LIMIT ?2";
    pub const GROUP_MEMBERS: &str = "SELECT u.id, u.email, u.name FROM group_members m JOIN users u ON u.id = m.user_id \
         WHERE m.group_id = ?1 AND m.user_id > ?2 ORDER BY m.user_id LIMIT ?3";
    pub const GROUPS_OF_USER: &str = "SELECT g.id, g.display_name, g.external_id, g.version, g.created_at, g.updated_at \
         FROM group_members m JOIN user_groups g ON g.id = m.group_id WHERE m.user_id = ?1 ORDER BY m.group_id";
    pub const REMOVE_ONE_MEMBER: &str = "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2";
    pub const ADD_ONE_MEMBER: &str = "INSERT INTO group_members (group_id, user_id) SELECT ?1, id FROM users \
         WHERE id = ?2 ON CONFLICT (group_id, user_id) DO NOTHING";
    pub const PROVISIONING_TOKEN_BY_HASH: &str =
        "SELECT id, name, token_hash, created_at, revoked_at FROM provisioning_tokens WHERE token_hash = ?1";
    pub const USERS_BY_EXTERNAL_ID: &str =
        "SELECT user_id FROM user_external_ids WHERE external_id = ?1 ORDER BY user_id";
    pub const ENTERPRISE_OF: &str = "SELECT employee_number, cost_center, organization, division, department, \
         manager_id FROM user_enterprise WHERE user_id = ?1";
    pub const SET_ENTERPRISE: &str = "INSERT INTO user_enterprise (user_id, employee_number, cost_center, \
         organization, division, department, manager_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (user_id) DO UPDATE SET employee_number = excluded.employee_number, \
         cost_center = excluded.cost_center, organization = excluded.organization, division = excluded.division, \
         department = excluded.department, manager_id = excluded.manager_id";
    pub const USERS_BY_EMPLOYEE_NUMBER: &str =
        "SELECT user_id FROM user_enterprise WHERE employee_number = ?1 ORDER BY user_id";
    pub const UPDATE_GROUP: &str = "UPDATE user_groups SET display_name = ?2, external_id = ?3, version = ?4, \
         updated_at = ?5 WHERE id = ?1 AND version = ?6";
}

/// The group queries with sample parameters, for EXPLAIN.
pub(super) fn hot_queries() -> Vec<(&'static str, &'static str, Vec<rusqlite::types::Value>)> {
    use rusqlite::types::Value::{Blob, Integer, Null, Text};
    let id = Blob(vec![0; 16]);
    vec![
        ("group_by_id", sql::GROUP_BY_ID, vec![id.clone()]),
        ("list_groups_page", sql::LIST_GROUPS_PAGE, vec![id.clone(), Integer(51)]),
        ("list_groups_by_name", sql::LIST_GROUPS_BY_NAME, vec![id.clone(), Integer(51), Text("ops".into()), Null]),
        (
            "list_groups_by_external_id",
            sql::LIST_GROUPS_BY_EXTERNAL_ID,
            vec![id.clone(), Integer(51), Text("x".into())],
        ),
        ("group_members", sql::GROUP_MEMBERS, vec![id.clone(), id.clone(), Integer(51)]),
        ("groups_of_user", sql::GROUPS_OF_USER, vec![id.clone()]),
        ("add_group_member", sql::ADD_ONE_MEMBER, vec![id.clone(), id.clone()]),
        ("remove_group_member", sql::REMOVE_ONE_MEMBER, vec![id.clone(), id.clone()]),
        ("users_by_external_id", sql::USERS_BY_EXTERNAL_ID, vec![Text("x".into())]),
        ("users_by_employee_number", sql::USERS_BY_EMPLOYEE_NUMBER, vec![Text("x".into())]),
        ("provisioning_token_by_hash", sql::PROVISIONING_TOKEN_BY_HASH, vec![Blob(vec![0; 32])]),
        ("update_group", sql::UPDATE_GROUP, vec![id, Text("ops".into()), Null, Integer(2), Integer(0), Integer(1)]),
    ]
}

fn group_from_row(r: &Row<'_>) -> rusqlite::Result<Group> {
    let version: i64 = r.get(3)?;
    Ok(Group {
        id: GroupId::from_bytes(blob(r, 0)?),
        display_name: GroupName::from_trusted(r.get(1)?),
        external_id: r.get::<_, Option<String>>(2)?.map(ExternalId::from_trusted),
        version: Version(u64::try_from(version).map_err(|_| corrupt("version"))?),
        created_at: Timestamp(r.get(4)?),
        updated_at: Timestamp(r.get(5)?),
    })
}

fn groups(c: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<Vec<Group>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(params, group_from_row)?;
    rows.collect()
}

/// Adds the member rows of `ids` that name existing users, skipping rows already there.
fn add_members(tx: &rusqlite::Transaction<'_>, group: GroupId, ids: &[UserId]) -> rusqlite::Result<u64> {
    let mut added = 0;
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO group_members (group_id, user_id) SELECT ?1, id FROM users WHERE id IN ({}) \
             ON CONFLICT (group_id, user_id) DO NOTHING",
            placeholders(2, chunk.len())
        );
        let values = std::iter::once(group.as_bytes().to_vec()).chain(chunk.iter().map(|id| id.as_bytes().to_vec()));
        added += tx.prepare_cached(&sql)?.execute(params_from_iter(values))? as u64;
    }
    Ok(added)
}

fn remove_members(tx: &rusqlite::Transaction<'_>, group: GroupId, ids: &[UserId]) -> rusqlite::Result<u64> {
    let mut removed = 0;
    for chunk in ids.chunks(CHUNK) {
        let sql =
            format!("DELETE FROM group_members WHERE group_id = ?1 AND user_id IN ({})", placeholders(2, chunk.len()));
        let values = std::iter::once(group.as_bytes().to_vec()).chain(chunk.iter().map(|id| id.as_bytes().to_vec()));
        removed += tx.prepare_cached(&sql)?.execute(params_from_iter(values))? as u64;
    }
    Ok(removed)
}

fn version_param(v: Version) -> Result<i64, RepoError> {
    i64::try_from(v.0).map_err(|_| RepoError::Internal(format!("version {} does not fit an integer", v.0)))
}

/// After a guarded UPDATE/DELETE touched no row: was it the version or the row?
fn missing_or_conflict(tx: &rusqlite::Transaction<'_>, id: GroupId) -> RepoError {
    match tx.query_row("SELECT 1 FROM user_groups WHERE id = ?1", [id.as_bytes().as_slice()], |_| Ok(())).optional() {
        Ok(Some(())) => RepoError::VersionConflict,
        Ok(None) => RepoError::NotFound,
        Err(e) => map_err(e),
    }
}

#[async_trait]
impl GroupRepository for SqliteStore {
    async fn create_group(&self, group: &Group, members: &[UserId], event: &OutboxEvent) -> Result<(), RepoError> {
        let (group, members, event) = (group.clone(), members.to_vec(), event.clone());
        let version = version_param(group.version)?;
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO user_groups (id, display_name, external_id, version, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    group.id.as_bytes().as_slice(),
                    group.display_name.as_str(),
                    group.external_id.as_ref().map(ExternalId::as_str),
                    version,
                    group.created_at.0,
                    group.updated_at.0,
                ])
            })
            .map_err(map_err)?;
            add_members(tx, group.id, &members).map_err(map_err)?;
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn group_by_id(&self, id: GroupId) -> Result<Option<Group>, RepoError> {
        self.read(move |c| {
            c.prepare_cached(sql::GROUP_BY_ID)?.query_row([id.as_bytes().as_slice()], group_from_row).optional()
        })
        .await
    }

    async fn list_groups(&self, query: &GroupListQuery) -> Result<Vec<Group>, RepoError> {
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let limit = i64::from(query.limit);
        let name = query.display_name.as_ref().map(|n| n.as_str().to_owned());
        let external = query.external_id.as_ref().map(|e| e.as_str().to_owned());
        self.read(move |c| match (name, external) {
            (Some(name), external) => {
                groups(c, sql::LIST_GROUPS_BY_NAME, params![after.as_slice(), limit, name, external])
            }
            (None, Some(external)) => {
                groups(c, sql::LIST_GROUPS_BY_EXTERNAL_ID, params![after.as_slice(), limit, external])
            }
            (None, None) => groups(c, sql::LIST_GROUPS_PAGE, params![after.as_slice(), limit]),
        })
        .await
    }

    async fn update_group(
        &self,
        group: &Group,
        expected: Version,
        members: &MembershipChange,
        event: &OutboxEvent,
    ) -> Result<MembershipDelta, RepoError> {
        let (group, members, event) = (group.clone(), members.clone(), event.clone());
        let (version, expected) = (version_param(group.version)?, version_param(expected)?);
        self.write(move |tx| {
            let changed = tx
                .prepare_cached(sql::UPDATE_GROUP)
                .and_then(|mut s| {
                    s.execute(params![
                        group.id.as_bytes().as_slice(),
                        group.display_name.as_str(),
                        group.external_id.as_ref().map(ExternalId::as_str),
                        version,
                        group.updated_at.0,
                        expected,
                    ])
                })
                .map_err(map_err)?;
            if changed == 0 {
                return Err(missing_or_conflict(tx, group.id));
            }
            let mut delta = MembershipDelta::default();
            if members.replace {
                delta.removed += tx
                    .execute("DELETE FROM group_members WHERE group_id = ?1", [group.id.as_bytes().as_slice()])
                    .map_err(map_err)? as u64;
            }
            delta.removed += remove_members(tx, group.id, &members.remove).map_err(map_err)?;
            delta.added += add_members(tx, group.id, &members.add).map_err(map_err)?;
            insert_event(tx, &event).map_err(map_err)?;
            Ok(delta)
        })
        .await
    }

    async fn delete_group(&self, id: GroupId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let event = event.clone();
        let expected = expected.map(version_param).transpose()?;
        self.write(move |tx| {
            let deleted = match expected {
                Some(v) => tx.execute(
                    "DELETE FROM user_groups WHERE id = ?1 AND version = ?2",
                    params![id.as_bytes().as_slice(), v],
                ),
                None => tx.execute("DELETE FROM user_groups WHERE id = ?1", [id.as_bytes().as_slice()]),
            }
            .map_err(map_err)?;
            if deleted == 0 {
                return Err(missing_or_conflict(tx, id));
            }
            insert_event(tx, &event).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn group_members(&self, query: &MemberQuery) -> Result<Vec<GroupMember>, RepoError> {
        let group = *query.group.as_bytes();
        let after = query.after.map(|id| *id.as_bytes()).unwrap_or([0u8; 16]);
        let limit = i64::from(query.limit);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::GROUP_MEMBERS)?;
            let rows = stmt.query_map(params![group.as_slice(), after.as_slice(), limit], |r| {
                Ok(GroupMember {
                    user_id: UserId::from_bytes(blob(r, 0)?),
                    email: Email::from_trusted(r.get(1)?),
                    name: DisplayName::from_trusted(r.get(2)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn groups_of_user(&self, user: UserId) -> Result<Vec<Group>, RepoError> {
        let user = *user.as_bytes();
        self.read(move |c| groups(c, sql::GROUPS_OF_USER, [user.as_slice()])).await
    }

    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        let ids = ids.to_vec();
        self.read(move |c| {
            let mut found = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(CHUNK) {
                let sql = format!("SELECT id FROM users WHERE id IN ({}) ORDER BY id", placeholders(1, chunk.len()));
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params_from_iter(chunk.iter().map(|id| id.as_bytes().to_vec())), |r| {
                    Ok(UserId::from_bytes(blob(r, 0)?))
                })?;
                for row in rows {
                    found.push(row?);
                }
            }
            Ok(found)
        })
        .await
    }
}

#[async_trait]
impl ExternalIdRepository for SqliteStore {
    async fn external_id_of(&self, user: UserId) -> Result<Option<ExternalId>, RepoError> {
        let user = *user.as_bytes();
        self.read(move |c| {
            c.prepare_cached("SELECT external_id FROM user_external_ids WHERE user_id = ?1")?
                .query_row([user.as_slice()], |r| r.get::<_, String>(0))
                .optional()
                .map(|found| found.map(ExternalId::from_trusted))
        })
        .await
    }

    async fn set_external_id(&self, user: UserId, external_id: Option<&ExternalId>) -> Result<(), RepoError> {
        let external = external_id.map(|e| e.as_str().to_owned());
        self.write(move |tx| {
            let uid = user.as_bytes().as_slice();
            if tx
                .query_row("SELECT 1 FROM users WHERE id = ?1", [uid], |_| Ok(()))
                .optional()
                .map_err(map_err)?
                .is_none()
            {
                return Err(RepoError::NotFound);
            }
            match external {
                Some(e) => tx.execute(
                    "INSERT INTO user_external_ids (user_id, external_id) VALUES (?1, ?2) \
                     ON CONFLICT (user_id) DO UPDATE SET external_id = excluded.external_id",
                    params![uid, e],
                ),
                None => tx.execute("DELETE FROM user_external_ids WHERE user_id = ?1", [uid]),
            }
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn users_by_external_id(&self, external_id: &ExternalId) -> Result<Vec<UserId>, RepoError> {
        let external = external_id.as_str().to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::USERS_BY_EXTERNAL_ID)?;
            let rows = stmt.query_map([external], |r| Ok(UserId::from_bytes(blob(r, 0)?)))?;
            rows.collect()
        })
        .await
    }

    async fn enterprise_of(&self, user: UserId) -> Result<Option<EnterpriseUser>, RepoError> {
        let user = *user.as_bytes();
        self.read(move |c| {
            c.prepare_cached(sql::ENTERPRISE_OF)?
                .query_row([user.as_slice()], |r| {
                    let text = |i: usize| -> rusqlite::Result<Option<EnterpriseText>> {
                        Ok(r.get::<_, Option<String>>(i)?.map(EnterpriseText::from_trusted))
                    };
                    Ok(EnterpriseUser {
                        employee_number: text(0)?,
                        cost_center: text(1)?,
                        organization: text(2)?,
                        division: text(3)?,
                        department: text(4)?,
                        manager: text(5)?,
                    })
                })
                .optional()
        })
        .await
    }

    async fn set_enterprise(&self, user: UserId, enterprise: &EnterpriseUser) -> Result<(), RepoError> {
        let e = enterprise.clone();
        self.write(move |tx| {
            let uid = user.as_bytes().as_slice();
            if tx
                .query_row("SELECT 1 FROM users WHERE id = ?1", [uid], |_| Ok(()))
                .optional()
                .map_err(map_err)?
                .is_none()
            {
                return Err(RepoError::NotFound);
            }
            if e.is_empty() {
                tx.execute("DELETE FROM user_enterprise WHERE user_id = ?1", [uid]).map_err(map_err)?;
                return Ok(());
            }
            let t = |v: &Option<EnterpriseText>| v.as_ref().map(|v| v.as_str().to_owned());
            tx.execute(
                sql::SET_ENTERPRISE,
                params![
                    uid,
                    t(&e.employee_number),
                    t(&e.cost_center),
                    t(&e.organization),
                    t(&e.division),
                    t(&e.department),
                    t(&e.manager)
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn users_by_employee_number(&self, employee_number: &EnterpriseText) -> Result<Vec<UserId>, RepoError> {
        let number = employee_number.as_str().to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sql::USERS_BY_EMPLOYEE_NUMBER)?;
            let rows = stmt.query_map([number], |r| Ok(UserId::from_bytes(blob(r, 0)?)))?;
            rows.collect()
        })
        .await
    }
}

fn provisioning_token(r: &Row<'_>) -> rusqlite::Result<ProvisioningToken> {
    Ok(ProvisioningToken {
        id: uuid::Uuid::from_bytes(blob(r, 0)?),
        name: r.get(1)?,
        token_hash: TokenHash(blob(r, 2)?),
        created_at: Timestamp(r.get(3)?),
        revoked_at: r.get::<_, Option<i64>>(4)?.map(Timestamp),
    })
}

#[async_trait]
impl ProvisioningTokenRepository for SqliteStore {
    async fn create_provisioning_token(&self, token: &ProvisioningToken) -> Result<(), RepoError> {
        let token = token.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO provisioning_tokens (id, name, token_hash, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.id.as_bytes().as_slice(),
                    token.name,
                    token.token_hash.0.as_slice(),
                    token.created_at.0,
                    token.revoked_at.map(|t| t.0)
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn provisioning_tokens(&self) -> Result<Vec<ProvisioningToken>, RepoError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, name, token_hash, created_at, revoked_at FROM provisioning_tokens ORDER BY id",
            )?;
            let rows = stmt.query_map([], provisioning_token)?;
            rows.collect()
        })
        .await
    }

    async fn provisioning_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ProvisioningToken>, RepoError> {
        let hash = hash.0;
        self.read(move |c| {
            c.prepare_cached(sql::PROVISIONING_TOKEN_BY_HASH)?
                .query_row([hash.as_slice()], provisioning_token)
                .optional()
        })
        .await
    }

    async fn revoke_provisioning_token(&self, id: uuid::Uuid, at: Timestamp) -> Result<bool, RepoError> {
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE provisioning_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id.as_bytes().as_slice(), at.0],
                )
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }
}
