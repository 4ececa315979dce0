//! Groups: named sets of users, managed by admins (`/v1/groups`) and by identity providers
//! through SCIM. Membership is stored as one row per (group, user), so adding or removing a
//! member writes that row and bumps the group's version — never the whole member list.
//!
//! Every change is an ordinary Strata change: one transaction with its outbox event
//! (`group.created`, `group.updated`, `group.deleted`), hence in the audit log and webhooks.

use std::sync::Arc;

use crate::domain::{DisplayName, Email, GroupId, OutboxEvent, Timestamp, UserId, Version, is_control, rfc3339};
use crate::error::{AppError, RepoError, ValidationError};
use crate::ports::{Clock, Store};
use crate::service::Actor;

pub const GROUP_NAME_MAX_CHARS: usize = 256;
pub const EXTERNAL_ID_MAX_CHARS: usize = 256;
/// Member ids one change may name. An event lists them, and MySQL's outbox payload is a
/// `TEXT` (64 KiB): 1,000 ids are ~39 KB. Larger groups are built by several changes.
pub const MAX_MEMBERS_PER_CHANGE: usize = 1_000;
/// Tries of a change made without If-Match before a lost version race is reported.
const UNCONDITIONAL_ATTEMPTS: u32 = 8;

/// A group's display name: verbatim, 1–256 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        text("display_name", raw, GROUP_NAME_MAX_CHARS).map(GroupName)
    }

    pub fn from_trusted(stored: String) -> Self {
        GroupName(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The identifier a provisioning client (an identity provider) knows a resource by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        text("external_id", raw, EXTERNAL_ID_MAX_CHARS).map(ExternalId)
    }

    pub fn from_trusted(stored: String) -> Self {
        ExternalId(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Enterprise User extension of SCIM (RFC 7643 §4.3) as Strata keeps it: free text,
/// each 1–256 characters, set by identity providers. `manager` is the manager's id as the
/// provider sends it (`manager.value`), kept as given: the manager may be provisioned after
/// the employee, so it is not checked against Strata's users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnterpriseUser {
    pub employee_number: Option<EnterpriseText>,
    pub cost_center: Option<EnterpriseText>,
    pub organization: Option<EnterpriseText>,
    pub division: Option<EnterpriseText>,
    pub department: Option<EnterpriseText>,
    pub manager: Option<EnterpriseText>,
}

impl EnterpriseUser {
    /// No attribute set: the row is deleted rather than kept empty.
    pub fn is_empty(&self) -> bool {
        *self == EnterpriseUser::default()
    }
}

/// One Enterprise User attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnterpriseText(String);

impl EnterpriseText {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        text(field, raw, EXTERNAL_ID_MAX_CHARS).map(EnterpriseText)
    }

    pub fn from_trusted(stored: String) -> Self {
        EnterpriseText(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn text(field: &'static str, raw: &str, max: usize) -> Result<String, ValidationError> {
    if raw.trim().is_empty() {
        return Err(ValidationError::new(field, "required", format!("{field} must not be empty or only whitespace")));
    }
    if raw.chars().count() > max {
        return Err(ValidationError::new(field, "too_long", format!("{field} must be at most {max} characters")));
    }
    if let Some(c) = raw.chars().find(|c| is_control(*c)) {
        return Err(ValidationError::new(
            field,
            "invalid_character",
            format!("{field} must not contain control characters (found U+{:04X})", c as u32),
        ));
    }
    Ok(raw.to_owned())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub display_name: GroupName,
    pub external_id: Option<ExternalId>,
    /// Moves on every change, membership included: it is the group's ETag.
    pub version: Version,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A member as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub user_id: UserId,
    pub email: Email,
    pub name: DisplayName,
}

/// What a group update does to the member rows. `replace` deletes every row first (a SCIM
/// `PUT`); otherwise only the named rows are touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    pub replace: bool,
    pub add: Vec<UserId>,
    pub remove: Vec<UserId>,
}

impl MembershipChange {
    pub fn is_empty(&self) -> bool {
        !self.replace && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Rows a membership change actually added and removed (adding a member twice or removing
/// a non-member changes nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipDelta {
    pub added: u64,
    pub removed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupListQuery {
    /// Exclusive lower bound on the id (keyset pagination in creation order).
    pub after: Option<GroupId>,
    pub limit: u32,
    pub display_name: Option<GroupName>,
    pub external_id: Option<ExternalId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberQuery {
    pub group: GroupId,
    /// Exclusive lower bound on the user id.
    pub after: Option<UserId>,
    pub limit: u32,
}

pub struct NewGroup {
    pub display_name: GroupName,
    pub external_id: Option<ExternalId>,
    pub members: Vec<UserId>,
}

/// A change to a group; `None` leaves a field alone. `external_id: Some(None)` clears it.
#[derive(Default)]
pub struct GroupChanges {
    pub display_name: Option<GroupName>,
    pub external_id: Option<Option<ExternalId>>,
    pub members: MembershipChange,
}

pub struct GroupPage {
    pub items: Vec<Group>,
    pub next_after: Option<GroupId>,
}

pub struct MemberPage {
    pub items: Vec<GroupMember>,
    pub next_after: Option<UserId>,
}

/// The group admin service. Admins only, except [`Groups::of_user`] (who-am-I).
pub struct Groups {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    list_default_limit: u32,
    list_max_limit: u32,
    relay_waker: Option<Arc<tokio::sync::Notify>>,
}

impl Groups {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, list_default_limit: u32, list_max_limit: u32) -> Self {
        Groups { store, clock, list_default_limit, list_max_limit, relay_waker: None }
    }

    /// Wakes the outbox relay after each write (see [`crate::relay::Relay::waker`]).
    pub fn with_relay_waker(mut self, waker: Arc<tokio::sync::Notify>) -> Self {
        self.relay_waker = Some(waker);
        self
    }

    pub fn list_max_limit(&self) -> u32 {
        self.list_max_limit
    }

    fn written(&self) {
        if let Some(w) = &self.relay_waker {
            w.notify_one();
        }
    }

    fn admin(actor: &Actor) -> Result<(), AppError> {
        if actor.is_admin() { Ok(()) } else { Err(AppError::Forbidden("managing groups requires an admin")) }
    }

    /// Unknown or repeated ids are refused by name, before anything is written.
    async fn check_members(&self, field: &'static str, ids: &[UserId]) -> Result<(), AppError> {
        if ids.len() > MAX_MEMBERS_PER_CHANGE {
            return Err(ValidationError::new(
                field,
                "too_many_members",
                format!("one change may name at most {MAX_MEMBERS_PER_CHANGE} members"),
            )
            .into());
        }
        let mut sorted = ids.to_vec();
        sorted.sort();
        sorted.dedup();
        if sorted.is_empty() {
            return Ok(());
        }
        let known = self.store.existing_user_ids(&sorted).await?;
        if let Some(missing) = sorted.iter().find(|id| !known.contains(id)) {
            return Err(ValidationError::new(field, "unknown_user", format!("no user has the id {missing}")).into());
        }
        Ok(())
    }

    pub async fn create(&self, actor: &Actor, new: NewGroup) -> Result<Group, AppError> {
        Self::admin(actor)?;
        let mut members = new.members;
        self.check_members("members", &members).await?;
        members.sort();
        members.dedup();
        let now = self.clock.now();
        let group = Group {
            id: GroupId::generate(),
            display_name: new.display_name,
            external_id: new.external_id,
            version: Version::FIRST,
            created_at: now,
            updated_at: now,
        };
        let ids: Vec<String> = members.iter().map(UserId::to_string).collect();
        let data = serde_json::json!({ "group": group_json(&group), "members": { "added": ids } });
        let event = group_event("group.created", &group, actor, data, now);
        self.store.create_group(&group, &members, &event).await?;
        self.written();
        Ok(group)
    }

    pub async fn get(&self, actor: &Actor, id: GroupId) -> Result<Group, AppError> {
        Self::admin(actor)?;
        self.store.group_by_id(id).await?.ok_or(AppError::NotFound("group"))
    }

    fn limit(&self, limit: Option<u32>) -> Result<u32, AppError> {
        let limit = limit.unwrap_or(self.list_default_limit);
        if limit == 0 || limit > self.list_max_limit {
            return Err(ValidationError::new(
                "limit",
                "out_of_range",
                format!("limit must be between 1 and {}", self.list_max_limit),
            )
            .into());
        }
        Ok(limit)
    }

    pub async fn list(&self, actor: &Actor, mut query: GroupListQuery) -> Result<GroupPage, AppError> {
        Self::admin(actor)?;
        let limit = self.limit(Some(query.limit).filter(|l| *l != 0))?;
        // One extra row tells whether another page exists without a COUNT.
        query.limit = limit + 1;
        let mut items = self.store.list_groups(&query).await?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|g| g.id)
        } else {
            None
        };
        Ok(GroupPage { items, next_after })
    }

    pub async fn members(
        &self,
        actor: &Actor,
        group: GroupId,
        after: Option<UserId>,
        limit: Option<u32>,
    ) -> Result<MemberPage, AppError> {
        Self::admin(actor)?;
        let limit = self.limit(limit)?;
        if self.store.group_by_id(group).await?.is_none() {
            return Err(AppError::NotFound("group"));
        }
        let mut items = self.store.group_members(&MemberQuery { group, after, limit: limit + 1 }).await?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|m| m.user_id)
        } else {
            None
        };
        Ok(MemberPage { items, next_after })
    }

    /// Every member, for a SCIM representation of the group. Read in pages so that no
    /// single query holds a huge result.
    pub async fn all_members(&self, actor: &Actor, group: GroupId) -> Result<Vec<GroupMember>, AppError> {
        Self::admin(actor)?;
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.group_members(&MemberQuery { group, after, limit: 1_000 }).await?;
            let full = page.len() == 1_000;
            after = page.last().map(|m| m.user_id);
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// The groups a user belongs to, in id order (who-am-I).
    pub async fn of_user(&self, user: UserId) -> Result<Vec<Group>, AppError> {
        Ok(self.store.groups_of_user(user).await?)
    }

    /// Applies `changes` if the group is still at `expected` (when given): the version is
    /// checked by the write itself, so two concurrent changes cannot both pass.
    pub async fn update(
        &self,
        actor: &Actor,
        id: GroupId,
        expected: Option<Version>,
        changes: GroupChanges,
    ) -> Result<Group, AppError> {
        Self::admin(actor)?;
        let GroupChanges { display_name, external_id, mut members } = changes;
        self.check_members("members", &members.add).await?;
        if members.remove.len() > MAX_MEMBERS_PER_CHANGE {
            return Err(ValidationError::new(
                "members",
                "too_many_members",
                format!("one change may name at most {MAX_MEMBERS_PER_CHANGE} members"),
            )
            .into());
        }
        for list in [&mut members.add, &mut members.remove] {
            list.sort();
            list.dedup();
        }
        // Without If-Match a change applies to whatever version is current. Membership
        // rows commute, so a change that lost the version race to a concurrent one (two
        // identity-provider PATCHes of one group) is simply applied again on top of it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.apply(actor, id, expected, &display_name, &external_id, &members).await {
                Err(AppError::VersionMismatch) if expected.is_none() && attempts < UNCONDITIONAL_ATTEMPTS => continue,
                out => return out,
            }
        }
    }

    async fn apply(
        &self,
        actor: &Actor,
        id: GroupId,
        expected: Option<Version>,
        display_name: &Option<GroupName>,
        external_id: &Option<Option<ExternalId>>,
        members: &MembershipChange,
    ) -> Result<Group, AppError> {
        let current = self.store.group_by_id(id).await?.ok_or(AppError::NotFound("group"))?;
        if expected.is_some_and(|v| v != current.version) {
            return Err(AppError::VersionMismatch);
        }
        let now = self.clock.now();
        let mut next = current.clone();
        if let Some(name) = display_name {
            next.display_name = name.clone();
        }
        if let Some(external) = external_id {
            next.external_id = external.clone();
        }
        next.version = current.version.next();
        next.updated_at = now;
        let changed: Vec<&str> = [
            ("display_name", current.display_name != next.display_name),
            ("external_id", current.external_id != next.external_id),
            ("members", !members.is_empty()),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect();
        let ids = |list: &[UserId]| list.iter().map(UserId::to_string).collect::<Vec<_>>();
        let data = serde_json::json!({
            "group": group_json(&next),
            "changed": changed,
            "members": { "replaced": members.replace, "added": ids(&members.add), "removed": ids(&members.remove) },
        });
        let event = group_event("group.updated", &next, actor, data, now);
        match self.store.update_group(&next, current.version, members, &event).await {
            Ok(_) => {
                self.written();
                Ok(next)
            }
            Err(RepoError::NotFound) => Err(AppError::NotFound("group")),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, actor: &Actor, id: GroupId, expected: Option<Version>) -> Result<(), AppError> {
        Self::admin(actor)?;
        let group = self.store.group_by_id(id).await?.ok_or(AppError::NotFound("group"))?;
        if expected.is_some_and(|v| v != group.version) {
            return Err(AppError::VersionMismatch);
        }
        let now = self.clock.now();
        let data = serde_json::json!({ "group": group_json(&group) });
        let event = group_event("group.deleted", &group, actor, data, now);
        match self.store.delete_group(id, Some(group.version), &event).await {
            Ok(()) => {
                self.written();
                Ok(())
            }
            Err(RepoError::NotFound) => Err(AppError::NotFound("group")),
            Err(e) => Err(e.into()),
        }
    }
}

/// The group as events and the API show it.
pub fn group_json(group: &Group) -> serde_json::Value {
    serde_json::json!({
        "id": group.id.to_string(),
        "display_name": group.display_name.as_str(),
        "external_id": group.external_id.as_ref().map(ExternalId::as_str),
        "version": group.version.0,
        "created_at": rfc3339(group.created_at),
        "updated_at": rfc3339(group.updated_at),
    })
}

fn group_event(
    event_type: &'static str,
    group: &Group,
    actor: &Actor,
    mut data: serde_json::Value,
    now: Timestamp,
) -> OutboxEvent {
    data["actor"] = match actor {
        Actor::System => serde_json::json!({ "type": "admin", "id": null, "via": "admin_token" }),
        Actor::Provisioner(token) => {
            serde_json::json!({ "type": "admin", "id": null, "via": "provisioning_token", "token_id": token.to_string() })
        }
        Actor::User { user, .. } => serde_json::json!({ "type": "admin", "id": user.id.to_string() }),
    };
    OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: group.id.as_uuid(),
        event_type,
        payload: data.to_string(),
        created_at: now,
        traceparent: crate::timing::traceparent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_verbatim_but_bounded() {
        assert_eq!(GroupName::parse(" Ops \"team\" 🦀").unwrap().as_str(), " Ops \"team\" 🦀");
        assert_eq!(GroupName::parse("  ").unwrap_err().code, "required");
        assert_eq!(GroupName::parse(&"x".repeat(257)).unwrap_err().code, "too_long");
        assert_eq!(GroupName::parse("a\nb").unwrap_err().code, "invalid_character");
        assert_eq!(ExternalId::parse("").unwrap_err().field, "external_id");
    }
}
