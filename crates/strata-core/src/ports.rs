//! Ports: the traits the application services need from the outside world. Adapters
//! (strata-store, later strata-cache and strata-events) implement them; every adapter of a
//! port passes the same conformance suite.

use async_trait::async_trait;

use crate::backup::BackupRepository;
use crate::domain::{
    AuditEntry, AuditQuery, Backlog, Email, GroupId, IdempotencyKey, IdempotencyRecord, OutboxEvent, RelayLease, Role,
    Session, SessionId, StoredEvent, Timestamp, TokenHash, User, UserId, UserStatus, Version,
};
use crate::error::RepoError;
use crate::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupListQuery, GroupMember, MemberQuery, MembershipChange,
    MembershipDelta,
};
use crate::lifecycle::{AccountToken, QueuedMail};
use crate::provisioning::ProvisioningToken;
use crate::webhooks::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};

/// Which sessions an update must revoke in the same transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRevocation {
    None,
    /// All of the user's sessions (account disabled, or an admin changed the password).
    All {
        at: Timestamp,
    },
    /// All but the one making the change (a user changing their own password stays logged in).
    AllExcept {
        keep: SessionId,
        at: Timestamp,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserListQuery {
    /// Exclusive lower bound on the id: keyset pagination in id order, which for UUIDv7 is
    /// creation order and therefore stable while rows are added.
    pub after: Option<UserId>,
    /// Number of rows to return; the repository returns at most this many.
    pub limit: u32,
    pub email: Option<Email>,
    /// Emails starting with this (lower-case) text: a range over the email index, the
    /// matches then sorted by id.
    pub email_prefix: Option<String>,
    /// Filters on the rows the id range (or the email) found; not indexed, so a rare
    /// status or role reads further along the primary key to fill a page. Admin reads only.
    pub status: Option<UserStatus>,
    pub role: Option<Role>,
}

/// One condition on users that an index serves: what SCIM filters compile to (strata-api
/// does the compiling; this is all a store needs to know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserCondition {
    Id(UserId),
    Email(Email),
    /// Emails starting with this (lower-case) text: a range over the email index.
    EmailPrefix(String),
    ExternalId(ExternalId),
    EmployeeNumber(EnterpriseText),
    /// `updated_at` compared with a time, over the `users_updated_at` index.
    UpdatedAt(Comparison, Timestamp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

/// Conditions combined; every leaf is indexed, so every branch of an `Any` is too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserPredicate {
    Is(UserCondition),
    All(Vec<UserPredicate>),
    Any(Vec<UserPredicate>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserOrder {
    #[default]
    Id,
    Email,
    Name,
    CreatedAt,
    UpdatedAt,
}

/// A page of the users matching `predicate` (all users without one), in `order` with ties
/// broken by ascending id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSearch {
    pub predicate: Option<UserPredicate>,
    pub order: UserOrder,
    pub descending: bool,
    pub offset: u64,
    pub limit: u32,
}

#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Inserts the user, the idempotency record (if any) and the outbox event atomically.
    /// `EmailTaken` / `IdempotencyKeyTaken` on unique-constraint violations.
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError>;

    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError>;

    /// Deletes idempotency records created before `before`; returns how many went.
    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError>;

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError>;

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError>;

    /// Replaces the row if its version is still `expected`: `VersionConflict` if it moved
    /// on, `NotFound` if it is gone, `EmailTaken` if the new email belongs to someone else.
    /// `user.version` must already be the new version.
    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError>;

    /// Deletes the user (and with it every session) if the version matches (when given).
    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError>;

    /// Users in ascending id order after `query.after`.
    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError>;

    /// A page of the users a search selects, filtered in SQL.
    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, RepoError>;

    /// How many users `predicate` selects (all users without one).
    async fn count_users(&self, predicate: Option<&UserPredicate>) -> Result<u64, RepoError>;
}

/// Groups and their member rows (one row per group and user).
#[async_trait]
pub trait GroupRepository: Send + Sync {
    /// Inserts the group, a member row for each id that names an existing user, and the
    /// event, atomically.
    async fn create_group(&self, group: &Group, members: &[UserId], event: &OutboxEvent) -> Result<(), RepoError>;

    async fn group_by_id(&self, id: GroupId) -> Result<Option<Group>, RepoError>;

    /// Groups in ascending id order after `query.after`, optionally only those with the
    /// given display name and/or external id.
    async fn list_groups(&self, query: &GroupListQuery) -> Result<Vec<Group>, RepoError>;

    /// Replaces the group's row if its version is still `expected` (`VersionConflict` if it
    /// moved on, `NotFound` if it is gone), applies `members` to the member rows — added ids
    /// that name no user are skipped — and records the event, in one transaction.
    /// `group.version` must already be the new version.
    async fn update_group(
        &self,
        group: &Group,
        expected: Version,
        members: &MembershipChange,
        event: &OutboxEvent,
    ) -> Result<MembershipDelta, RepoError>;

    /// Deletes the group with its member rows, if the version matches (when given).
    async fn delete_group(&self, id: GroupId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError>;

    /// A group's members in ascending user id order after `query.after`.
    async fn group_members(&self, query: &MemberQuery) -> Result<Vec<GroupMember>, RepoError>;

    /// The groups `user` belongs to, in id order.
    async fn groups_of_user(&self, user: UserId) -> Result<Vec<Group>, RepoError>;

    /// Which of `ids` (sorted, distinct) name existing users, in the same order.
    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError>;
}

/// What a provisioning client (an identity provider, through SCIM) keeps beside a user: the id
/// it knows the user by, and the Enterprise User extension attributes.
#[async_trait]
pub trait ExternalIdRepository: Send + Sync {
    async fn external_id_of(&self, user: UserId) -> Result<Option<ExternalId>, RepoError>;

    /// Sets (or with `None` clears) the user's external id. `NotFound` if the user is gone.
    async fn set_external_id(&self, user: UserId, external_id: Option<&ExternalId>) -> Result<(), RepoError>;

    /// The users with this external id, in id order.
    async fn users_by_external_id(&self, external_id: &ExternalId) -> Result<Vec<UserId>, RepoError>;

    /// The user's Enterprise User extension attributes, if any is set.
    async fn enterprise_of(&self, user: UserId) -> Result<Option<EnterpriseUser>, RepoError>;

    /// Replaces the user's Enterprise User attributes (an empty value deletes the row).
    /// `NotFound` if the user is gone.
    async fn set_enterprise(&self, user: UserId, enterprise: &EnterpriseUser) -> Result<(), RepoError>;

    /// The users with this employee number, in id order (an index serves it).
    async fn users_by_employee_number(&self, employee_number: &EnterpriseText) -> Result<Vec<UserId>, RepoError>;
}

/// Provisioning tokens (SCIM credentials), stored as digests.
#[async_trait]
pub trait ProvisioningTokenRepository: Send + Sync {
    async fn create_provisioning_token(&self, token: &ProvisioningToken) -> Result<(), RepoError>;

    /// Every token, revoked ones too, in id (creation) order.
    async fn provisioning_tokens(&self) -> Result<Vec<ProvisioningToken>, RepoError>;

    async fn provisioning_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ProvisioningToken>, RepoError>;

    /// Marks the token revoked; `false` if there is none or it already was.
    async fn revoke_provisioning_token(&self, id: uuid::Uuid, at: Timestamp) -> Result<bool, RepoError>;
}

#[async_trait]
pub trait SessionRepository: Send + Sync {
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError>;

    /// The hot path: one indexed lookup joining the session to its user.
    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError>;

    /// Marks the session revoked; `false` if it was already revoked or does not exist.
    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError>;

    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError>;
}

#[async_trait]
pub trait OutboxRepository: Send + Sync {
    /// Writes an event that goes with no other change (a failed or throttled login), with
    /// its aggregate's next sequence number like every other outbox row.
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError>;

    /// Unpublished events of the given partitions, at most `limit`: the aggregates with
    /// the oldest unpublished rows first, and for each of them all its unpublished rows (up
    /// to the limit) in sequence order. Never a later event of an aggregate without the
    /// earlier unpublished ones: a row's sequence is assigned under the aggregate's lock,
    /// so if sequence n+1 is visible, n committed before it. (Polling `id > last_seen`
    /// would lose rows that commit out of id order; unpublished rows are looked up by flag.)
    async fn pending_events(&self, partitions: &[u16], limit: u32) -> Result<Vec<StoredEvent>, RepoError>;

    async fn mark_published(&self, ids: &[uuid::Uuid], at: Timestamp) -> Result<(), RepoError>;

    /// Deletes up to `limit` rows published before `before`; returns how many went.
    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError>;

    async fn outbox_backlog(&self) -> Result<Backlog, RepoError>;

    /// Every row of the coordination table: one lease per partition (created by the
    /// migrations) and one heartbeat per relay.
    async fn relay_leases(&self) -> Result<Vec<RelayLease>, RepoError>;

    /// Takes or renews a partition lease if it is free, expired at `now`, or already
    /// `owner`'s. `true` if `owner` now holds it until `until`.
    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError>;

    /// Gives a lease up if `owner` holds it, so another relay can take it at once.
    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError>;

    /// Records that relay `owner` is alive until `until` (`member:OWNER`), and forgets
    /// relays whose heartbeat ended before `forget_before`. `until == Timestamp(0)` leaves.
    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget_before: Timestamp) -> Result<(), RepoError>;
}

/// Webhook endpoints, their deliveries and the attempt log.
#[async_trait]
pub trait WebhookRepository: Send + Sync {
    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), RepoError>;

    async fn webhook_endpoint(&self, id: uuid::Uuid) -> Result<Option<WebhookEndpoint>, RepoError>;

    /// Every endpoint, in id (creation) order.
    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError>;

    /// Replaces the endpoint's row, and records `event` (if any) in the outbox in the same
    /// transaction. `NotFound` if it is gone.
    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError>;

    /// Deletes the endpoint with its deliveries and attempts; false if there was none.
    async fn delete_webhook_endpoint(&self, id: uuid::Uuid) -> Result<bool, RepoError>;

    /// Inserts deliveries, skipping any whose (endpoint, event id) is already there (a
    /// redelivered event) or whose endpoint is gone; returns how many were added.
    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<u64, RepoError>;

    /// Claims up to `limit` pending deliveries due at `now`, oldest due first, by moving
    /// their `next_attempt_at` to `lease_until` only where it has not moved since it was
    /// read: two dispatchers never claim the same delivery within one lease. Returned as
    /// claimed (with the new `next_attempt_at`).
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepoError>;

    /// Stores the delivery's new state (status, attempts, next due time, last result) and
    /// appends `attempt` to the log, in one transaction.
    async fn record_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), RepoError>;

    async fn webhook_delivery(
        &self,
        endpoint_id: uuid::Uuid,
        id: uuid::Uuid,
    ) -> Result<Option<WebhookDelivery>, RepoError>;

    /// One endpoint's deliveries in id order after the cursor.
    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError>;

    /// A delivery's attempts, oldest first.
    async fn webhook_attempts(&self, delivery_id: uuid::Uuid) -> Result<Vec<WebhookAttempt>, RepoError>;

    /// Makes a delivery that is not pending due again at `now` with a fresh set of
    /// attempts (its attempt log stays); false if there is none or it is pending.
    async fn replay_delivery(&self, endpoint_id: uuid::Uuid, id: uuid::Uuid, now: Timestamp)
    -> Result<bool, RepoError>;

    /// The same for every failed delivery of the endpoint created at or after `since`.
    async fn replay_failed_deliveries(
        &self,
        endpoint_id: uuid::Uuid,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, RepoError>;
}

#[async_trait]
pub trait AuditRepository: Send + Sync {
    /// Appends entries; an id already present is skipped (a redelivered event). Returns
    /// how many were new.
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<u64, RepoError>;

    /// Entries matching the query in id order, at most `query.limit`.
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RepoError>;

    /// Deletes up to `limit` entries older than `before`; returns how many went.
    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError>;
}

/// One-time account tokens and the mail queue that carries them.
#[async_trait]
pub trait LifecycleRepository: Send + Sync {
    /// In one transaction: deletes the user's unused tokens of the same purpose (a newer
    /// request supersedes them), inserts `token`, queues `mails` (an email change mails
    /// both addresses) and records `event`.
    async fn issue_account_token(
        &self,
        token: &AccountToken,
        mails: &[QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError>;

    /// The token with this hash, used or not (one indexed lookup).
    async fn account_token(&self, hash: &TokenHash) -> Result<Option<AccountToken>, RepoError>;

    /// Redeems a token and applies what it was for, in one transaction: marks the token used
    /// at `at` only if it still is unused (`NotFound` otherwise: used, superseded, or gone),
    /// replaces the user row if its version is still `expected` with the sessions `revoke`
    /// names (as [`UserRepository::update_user`]), deletes the user's other unused tokens of
    /// `purpose` and records `event`.
    #[allow(clippy::too_many_arguments)]
    async fn redeem_account_token(
        &self,
        token_id: uuid::Uuid,
        purpose: crate::lifecycle::TokenPurpose,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        at: Timestamp,
        event: &OutboxEvent,
    ) -> Result<(), RepoError>;

    /// Claims up to `limit` pending mails due at `now`, oldest due first, moving their
    /// `next_attempt_at` to `lease_until` (as `WebhookRepository::claim_due_deliveries`).
    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, RepoError>;

    /// Stores the mail's new state: status, attempts, next due time, last error, params.
    async fn record_mail(&self, mail: &QueuedMail) -> Result<(), RepoError>;

    /// Deletes up to `limit` tokens that expired before `before` and mails finished (sent or
    /// failed) before it; returns how many rows went.
    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError>;
}

/// TOTP second factors: one row per user, written compare-and-set on its `version`.
#[async_trait]
pub trait MfaRepository: Send + Sync {
    /// The user's TOTP row, enabled or pending confirmation.
    async fn totp_of(&self, user_id: UserId) -> Result<Option<crate::totp::TotpRecord>, RepoError>;

    /// In one transaction, with `event` recorded when given, and the user row's
    /// `mfa_enabled` set to the record's `enabled`. `expected: None` starts an
    /// enrolment: replaces a pending (not enabled) row or inserts, and answers
    /// `VersionConflict` when an enabled row exists. `Some(v)` replaces the row only if its
    /// version is still `v` (`VersionConflict` otherwise, `NotFound` when there is none).
    async fn save_totp(
        &self,
        record: &crate::totp::TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError>;

    /// Deletes the user's row (if its version is still `expected`, when given), clears the
    /// user row's `mfa_enabled` and records `event`, in one transaction; `NotFound` when there is no row, `VersionConflict` when
    /// the version moved.
    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError>;
}

/// How a hot-path query is executed, as reported by the engine's own EXPLAIN.
#[derive(Clone, Debug)]
pub struct QueryPlan {
    pub name: &'static str,
    pub sql: &'static str,
    /// The engine's plan, verbatim.
    pub plan: String,
    /// The adapter's reading of the plan: served by an index, no full scan.
    pub uses_index: bool,
}

/// Connection pool figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub size: u64,
    pub idle: u64,
    pub waiting: u64,
    /// Connections handed out since start, and the total time callers waited for them:
    /// wait per acquire separates a starved pool from slow queries (the query histograms
    /// include the wait).
    pub acquires: u64,
    pub wait_seconds: f64,
    /// Total time connections were held (busy) by their callers: a storage call's real cost,
    /// including the round trips, whichever service made it.
    pub hold_seconds: f64,
}

/// A complete storage backend.
#[async_trait]
pub trait Store:
    UserRepository
    + SessionRepository
    + GroupRepository
    + ExternalIdRepository
    + ProvisioningTokenRepository
    + OutboxRepository
    + AuditRepository
    + WebhookRepository
    + LifecycleRepository
    + MfaRepository
    + BackupRepository
    + crate::shards::ShardCatalog
{
    /// `sqlite`, `postgres` or `mysql`.
    fn backend(&self) -> &'static str;

    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), RepoError>;

    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError>;

    fn pool_stats(&self) -> PoolStats;

    /// The engine's replication position as one growing number: on a primary, the end of
    /// what it has written (PostgreSQL `pg_current_wal_lsn()`, MariaDB's GTID sequence); on
    /// a replica, what it has replayed (`pg_last_wal_replay_lsn()`, `@@gtid_slave_pos`).
    /// A replica at position ≥ p shows every commit the primary had made at p. `None`
    /// where the engine replicates nothing (SQLite).
    async fn replication_position(&self) -> Result<Option<u64>, RepoError> {
        Ok(None)
    }

    /// Where routed reads went, for a store with read replicas (`None` without).
    fn read_routing(&self) -> Option<ReadRouting> {
        None
    }

    /// The number of logical shards, for a sharded store (`None` otherwise): session
    /// tokens are then made with [`crate::domain::SessionToken::generate_in`] their
    /// user's logical shard, so that a session check reads one shard.
    fn logical_shards(&self) -> Option<u16> {
        None
    }

    /// How a sharded store routes now, for `/metrics` (`None` for any other store).
    fn shard_routing(&self) -> Option<ShardRouting> {
        None
    }
}

/// The read replicas behind a store, and why routed reads went to the primary instead.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadRouting {
    pub replicas: Vec<ReplicaStatus>,
    /// (reason, reads): `no_replica` (none in rotation), `stale` (none had caught up with
    /// the reader's writes), `missing` (a replica did not have it, perhaps not yet),
    /// `replica_error`, `board_error` (the position board could not be read).
    pub primary: Vec<(&'static str, u64)>,
}

/// A sharded store's routing state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardRouting {
    /// Time since this instance last read the shard map (writes are refused past
    /// `max_map_age`).
    pub map_age_seconds: f64,
    /// Logical shards in a move's write pause (copying or switching) in that map.
    pub paused: u64,
    /// Writes refused since start: a logical shard was paused, or the map too old.
    pub writes_refused: u64,
}

/// One read replica as the routing store sees it, for `/metrics` and `strata status`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaStatus {
    /// The replica's URL without its password.
    pub name: String,
    /// Answering, and no further behind than `database.max_replica_lag_ms`.
    pub in_rotation: bool,
    /// How far behind the primary it was at its last probe (time since the primary
    /// reached a position the replica has not replayed yet).
    pub lag_seconds: f64,
    /// Reads it answered, and reads it was asked but could not answer (errors).
    pub reads: u64,
    pub errors: u64,
}

/// Where replicated stores record the newest write position of each user, session and
/// of the whole user table, so a read through any instance can tell whether a replica has
/// caught up with it (read-your-writes). One in-process board serves a single instance;
/// instances that serve the same users share one in Redis (strata-cache).
#[async_trait]
pub trait PositionBoard: Send + Sync {
    fn describe(&self) -> String;

    /// Raises each key's position to at least `position`, remembered for at least `ttl`.
    async fn raise(&self, keys: &[uuid::Uuid], position: u64, ttl: std::time::Duration) -> Result<(), CacheError>;

    /// The highest position recorded under any of `keys` (0 when none is).
    async fn highest(&self, keys: &[uuid::Uuid]) -> Result<u64, CacheError>;
}

/// Wall-clock source, injectable so tests can move time (session expiry) without sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Timestamp(micros)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(start.0))
    }
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_micros() as i64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Receives one call per storage operation, so the HTTP layer can export metrics without
/// the core depending on a metrics library.
pub trait StoreObserver: Send + Sync {
    fn observe(&self, operation: &'static str, elapsed: std::time::Duration, outcome: Result<(), &RepoError>);
}

/// Observer that discards everything (tests, CLI tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopObserver;

impl StoreObserver for NoopObserver {
    fn observe(&self, _: &'static str, _: std::time::Duration, _: Result<(), &RepoError>) {}
}

/// Why a cache call did not answer. Callers treat every cache error as a miss: the cache
/// is an accelerator, never the source of truth, so no request fails because of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Down, refused, timed out, or its circuit breaker is open.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// It answered something we cannot read (protocol error, foreign value).
    #[error("cache protocol error: {0}")]
    Protocol(String),
}

/// A byte-level cache (in-process, Redis, Memcached or tiers of them; see strata-cache).
/// What is cached, under which key and when it is invalidated is decided by the account
/// service, which encodes values itself; adapters only move bytes.
///
/// Fill/invalidate races: a reader that missed, read the database and then fills could
/// write a value that a concurrent writer has just invalidated. Adapters prevent it in two
/// ways, and every adapter passes the same conformance suite for both:
/// - `fill` takes the [`Cache::generation`] read *before* the database read, and an adapter
///   with an in-process tier skips the fill if any invalidation (local or broadcast by
///   another instance) happened since;
/// - `invalidate` leaves a short-lived tombstone in shared tiers and `fill` never
///   overwrites an existing entry (Redis `SET NX`, Memcached `add`), so a late fill from
///   another instance cannot resurrect an invalidated value.
#[async_trait]
pub trait Cache: Send + Sync {
    /// A short description for logs and the startup banner, secrets redacted.
    fn describe(&self) -> String;

    /// A counter that moves on every invalidation this instance learns of.
    fn generation(&self) -> u64;

    /// False while every server a read could use is known down (circuit open). Callers
    /// then skip the cache outright: a call the breaker would refuse still costs an error
    /// to build and count, and with the cache dead that cost lands on every request.
    /// Turns true again when a breaker's open period ends, so its probe can go out.
    fn available(&self) -> bool {
        true
    }

    /// `Ok(None)` on a miss (absent, expired, tombstoned or not trusted).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;

    /// Stores `value` for `ttl` unless the key exists (a value or a tombstone) or
    /// `generation` is stale. `Ok(true)` if stored.
    async fn fill(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: std::time::Duration,
        generation: u64,
    ) -> Result<bool, CacheError>;

    /// Removes the keys from every tier, and tells other instances to drop them from
    /// their in-process tiers. Returns once the shared tier has been updated (or failed).
    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError>;
}

/// Receives cache events, so the HTTP layer can export metrics without the core or the
/// adapters depending on a metrics library. Label values are static or bounded by
/// configuration (endpoints).
pub trait CacheObserver: Send + Sync {
    /// The account service's view: `kind` is `session` or `user`; `outcome` is `hit`,
    /// `negative_hit`, `miss`, `error`, `rejected` (the value failed its HMAC check) or
    /// `bypass` (cache unavailable, not asked).
    fn lookup(&self, kind: &'static str, outcome: &'static str);

    /// One tier's view: `tier` is `l1` or `l2`; `op` is `get`, `fill`, `invalidate` or
    /// `remote_invalidate`; `outcome` is `hit`, `miss`, `ok`, `skipped` or `error`.
    fn tier(&self, tier: &'static str, op: &'static str, outcome: &'static str);

    /// An endpoint's circuit breaker opened (`degraded`) or closed again.
    fn endpoint(&self, endpoint: &str, degraded: bool);
}

impl CacheObserver for NoopObserver {
    fn lookup(&self, _: &'static str, _: &'static str) {}
    fn tier(&self, _: &'static str, _: &'static str, _: &'static str) {}
    fn endpoint(&self, _: &str, _: bool) {}
}

/// A message broker carrying [`crate::events::Event`]s (see strata-events for the
/// adapters: in-process, NATS JetStream, RabbitMQ, MQTT 5, Redis Streams, Kafka). Every
/// adapter passes the same conformance suite.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// A short description for logs and the startup banner, secrets redacted.
    fn describe(&self) -> String;

    /// Returns once the broker has durably accepted every event (publisher confirm, PUBACK,
    /// JetStream ack, XADD reply, Kafka ack). Events with the same `subject` are accepted in
    /// the order given. On error some may have been accepted: the caller re-sends the whole
    /// batch, and adapters whose broker deduplicates by message id (JetStream `Nats-Msg-Id`,
    /// Kafka's idempotent producer within a session) pass the event id to it; consumers
    /// deduplicate by event id in any case.
    async fn publish(&self, events: &[crate::events::Event]) -> Result<(), crate::events::BusError>;

    /// Starts receiving. See [`crate::events::Consumer`] for the delivery semantics.
    async fn subscribe(
        &self,
        consumer: crate::events::Consumer<'_>,
    ) -> Result<Box<dyn Subscription>, crate::events::BusError>;
}

#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` deliveries, waiting at most `wait` for the first. An empty batch on
    /// timeout. Within one subscription, events of one subject arrive in publish order
    /// (a redelivery may repeat an earlier one).
    async fn fetch(
        &mut self,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<Vec<crate::events::Delivery>, crate::events::BusError>;

    /// Acknowledges deliveries: the group will not see them again. A no-op for broadcast.
    async fn ack(&mut self, deliveries: &[crate::events::Delivery]) -> Result<(), crate::events::BusError>;
}
