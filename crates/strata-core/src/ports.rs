//! Ports: the traits the application services need from the outside world. Adapters
//! (strata-store, later strata-cache and strata-events) implement them; every adapter of a
//! port passes the same conformance suite.

use async_trait::async_trait;

use crate::domain::{
    Email, IdempotencyKey, IdempotencyRecord, OutboxEvent, Session, SessionId, Timestamp, TokenHash, User, UserId,
    Version,
};
use crate::error::RepoError;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserListQuery {
    /// Exclusive lower bound on the id: keyset pagination in id order, which for UUIDv7 is
    /// creation order and therefore stable while rows are added.
    pub after: Option<UserId>,
    /// Number of rows to return; the repository returns at most this many.
    pub limit: u32,
    pub email: Option<Email>,
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
}

/// A complete storage backend.
#[async_trait]
pub trait Store: UserRepository + SessionRepository {
    /// `sqlite`, `postgres` or `mysql`.
    fn backend(&self) -> &'static str;

    /// A cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<(), RepoError>;

    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError>;

    fn pool_stats(&self) -> PoolStats;
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
