//! A `Store` over one primary and read replicas: hot reads (session check, user by id or
//! email, the admin user list) go to a replica that has caught up with them, everything
//! else to the primary.
//!
//! Read-your-writes across instances rests on the engines' own positions
//! ([`Store::replication_position`]: PostgreSQL LSN, MariaDB GTID sequence) and a shared
//! [`PositionBoard`]:
//! - after a write of a user (or a session revocation) commits, the primary's position is
//!   raised on the board under the user's id (or the session's), and under [`ALL_USERS`];
//! - a probe records each replica's replayed position every `poll`; a read is answered by
//!   a replica only if the position it had *before* the read is at least the board's for
//!   every key the answer depends on. Positions only grow, so the replica then shows the
//!   write. Otherwise — stale, not found (perhaps not replicated yet), or an error — the
//!   primary answers.
//!
//! A replica is out of rotation while it does not answer its probe, fails a read, or lags
//! more than `max_lag` (measured as the time since the primary first passed a position the
//! replica has not replayed); the probe puts it back. Board entries live for a multiple of
//! `max_lag`: by the time one expires, every replica in rotation has replayed it.
//!
//! When the board cannot be read, reads go to the primary; when it cannot be raised, the
//! write waits (up to `max_lag`) for this instance's replicas to replay it and logs the
//! failure: other instances may then read that user stale from a replica for up to
//! `max_lag`. When the primary's position cannot be read after a write, [`UNKNOWN`] is
//! raised instead, sending the keys' reads to the primary until the entry expires.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use strata_core::backup::{BackupRepository, Batch, Load, OnExisting, ShardScope};
use strata_core::domain::{
    AuditEntry, AuditQuery, Backlog, Email, GroupId, IdempotencyKey, IdempotencyRecord, OutboxEvent, RelayLease,
    Session, SessionId, StoredEvent, Timestamp, TokenHash, User, UserId, Version,
};
use strata_core::error::RepoError;
use strata_core::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupListQuery, GroupMember, MemberQuery, MembershipChange,
    MembershipDelta,
};
use strata_core::lifecycle::{AccountToken, QueuedMail, TokenPurpose};
use strata_core::ports::{
    AuditRepository, CacheError, ExternalIdRepository, GroupRepository, LifecycleRepository, MfaRepository,
    OutboxRepository, PoolStats, PositionBoard, ProvisioningTokenRepository, QueryPlan, ReadRouting, ReplicaStatus,
    SessionRepository, SessionRevocation, Store, UserListQuery, UserPredicate, UserRepository, UserSearch,
    WebhookRepository,
};
use strata_core::provisioning::ProvisioningToken;
use strata_core::totp::TotpRecord;
use strata_core::webhooks::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Board key raised by every write of a user row: the user list depends on all of them.
pub const ALL_USERS: Uuid = Uuid::nil();
/// Board key raised by a restore, which replaces every row: every routed read checks it.
pub const EVERYTHING: Uuid = Uuid::max();
/// Raised when a write's position could not be read: higher than any real position (a
/// PostgreSQL LSN reaches it after 4 PiB of WAL) and exact as a Lua number in Redis.
pub const UNKNOWN: u64 = 1 << 52;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaOptions {
    /// A replica further behind than this is out of rotation.
    pub max_lag: Duration,
    /// How often each replica's position is probed.
    pub poll: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions { max_lag: Duration::from_secs(1), poll: Duration::from_millis(100) }
    }
}

impl ReplicaOptions {
    /// How long board entries live: past it, every replica in rotation has replayed them.
    fn board_ttl(&self) -> Duration {
        (self.max_lag * 4 + self.poll * 4).max(Duration::from_secs(10))
    }
}

struct Replica {
    name: String,
    store: Arc<dyn Store>,
    /// Position replayed at the last successful probe (a lower bound of what it shows now).
    replayed: AtomicU64,
    lag_micros: AtomicU64,
    up: AtomicBool,
    /// Micros since the router's start at the last successful probe.
    probed_at: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
}

/// Why a routed read went to the primary, in [`ReadRouting::primary`]'s order.
#[derive(Clone, Copy)]
enum Fallback {
    NoReplica = 0,
    Stale = 1,
    Missing = 2,
    ReplicaError = 3,
    BoardError = 4,
}
const FALLBACKS: [&str; 5] = ["no_replica", "stale", "missing", "replica_error", "board_error"];

struct Inner {
    primary: Arc<dyn Store>,
    replicas: Vec<Replica>,
    board: Arc<dyn PositionBoard>,
    options: ReplicaOptions,
    started: Instant,
    next: AtomicUsize,
    /// The primary's position over the last few `max_lag`s, oldest first: a replica's lag
    /// is the time since the primary first passed what the replica has replayed.
    history: Mutex<VecDeque<(Instant, u64)>>,
    fallbacks: [AtomicU64; 5],
}

pub struct ReplicatedStore {
    inner: Arc<Inner>,
    probe: tokio::task::JoinHandle<()>,
}

impl Drop for ReplicatedStore {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

impl ReplicatedStore {
    /// Routes over `replicas` (named by their redacted URLs) and starts probing them; the
    /// first probe runs before this returns, so replicas that are fine serve at once.
    pub async fn new(
        primary: Arc<dyn Store>,
        replicas: Vec<(String, Arc<dyn Store>)>,
        board: Arc<dyn PositionBoard>,
        options: ReplicaOptions,
    ) -> Self {
        let replicas = replicas
            .into_iter()
            .map(|(name, store)| Replica {
                name,
                store,
                replayed: AtomicU64::new(0),
                lag_micros: AtomicU64::new(0),
                up: AtomicBool::new(false),
                probed_at: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            })
            .collect();
        let inner = Arc::new(Inner {
            primary,
            replicas,
            board,
            options,
            started: Instant::now(),
            next: AtomicUsize::new(0),
            history: Mutex::new(VecDeque::new()),
            fallbacks: Default::default(),
        });
        inner.probe_all().await;
        let probe = tokio::spawn(probe_loop(Arc::downgrade(&inner), options.poll));
        ReplicatedStore { inner, probe }
    }
}

async fn probe_loop(inner: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.probe_all().await;
    }
}

impl Inner {
    fn micros_now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Probes the primary's position, then every replica's, concurrently and each under a
    /// deadline, so a hung replica delays nothing but its own return to rotation.
    async fn probe_all(self: &Arc<Self>) {
        let deadline = self.options.max_lag.max(Duration::from_millis(200));
        if let Ok(Ok(Some(position))) = tokio::time::timeout(deadline, self.primary.replication_position()).await {
            let now = Instant::now();
            let mut history = self.history.lock();
            history.push_back((now, position));
            let keep = self.options.max_lag * 4 + self.options.poll * 4;
            while history.len() > 2 && history.front().is_some_and(|(t, _)| now.duration_since(*t) > keep) {
                history.pop_front();
            }
        }
        let mut probes = tokio::task::JoinSet::new();
        for index in 0..self.replicas.len() {
            let inner = self.clone();
            probes.spawn(async move {
                let replica = &inner.replicas[index];
                match tokio::time::timeout(deadline, replica.store.replication_position()).await {
                    Ok(Ok(Some(replayed))) => {
                        let lag = inner.lag_of(replayed);
                        // Stored, not max-merged: a replica rebuilt from an older copy
                        // really is behind what it once reported.
                        replica.replayed.store(replayed, Relaxed);
                        replica.lag_micros.store(lag.as_micros() as u64, Relaxed);
                        replica.probed_at.store(inner.micros_now(), Relaxed);
                        let was = replica.up.swap(true, Relaxed);
                        if !was {
                            tracing::info!(replica = %replica.name, lag_ms = lag.as_millis() as u64, "replica answers: back in rotation while within the lag limit");
                        }
                    }
                    outcome => {
                        let why = match outcome {
                            Ok(Ok(_)) => "it reports no replication position".to_owned(),
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => format!("no answer within {deadline:?}"),
                        };
                        if replica.up.swap(false, Relaxed) {
                            tracing::warn!(replica = %replica.name, error = %why, "replica out of rotation");
                        }
                    }
                }
            });
        }
        while probes.join_next().await.is_some() {}
    }

    fn lag_of(&self, replayed: u64) -> Duration {
        let history = self.history.lock();
        match history.iter().find(|(_, p)| *p > replayed) {
            Some((since, _)) => since.elapsed(),
            None => Duration::ZERO,
        }
    }

    fn in_rotation(&self, replica: &Replica, now_micros: u64) -> bool {
        let fresh = Duration::from_micros(now_micros.saturating_sub(replica.probed_at.load(Relaxed)));
        replica.up.load(Relaxed)
            && Duration::from_micros(replica.lag_micros.load(Relaxed)) <= self.options.max_lag
            && fresh <= self.options.max_lag + self.options.poll * 2
    }

    /// The next replica in rotation (round robin) whose last probed position is at least
    /// `need`, with that position.
    fn pick(&self, need: u64) -> Option<(&Replica, u64)> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let now = self.micros_now();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n).map(|i| &self.replicas[(start + i) % n]).find_map(|r| {
            let replayed = r.replayed.load(Relaxed);
            (replayed >= need && self.in_rotation(r, now)).then_some((r, replayed))
        })
    }

    fn fell_back(&self, why: Fallback) {
        self.fallbacks[why as usize].fetch_add(1, Relaxed);
    }

    /// The board's position for `keys`, or `None` (counted) when it cannot be read.
    async fn needed(&self, keys: &[Uuid]) -> Option<u64> {
        match self.board.highest(keys).await {
            Ok(position) => Some(position),
            Err(e) => {
                tracing::debug!(error = %e, "position board unreadable: reading from the primary");
                self.fell_back(Fallback::BoardError);
                None
            }
        }
    }

    fn replica_failed(&self, replica: &Replica, error: &RepoError) {
        replica.errors.fetch_add(1, Relaxed);
        if replica.up.swap(false, Relaxed) {
            tracing::warn!(replica = %replica.name, %error, "replica read failed: out of rotation until its probe answers");
        }
    }

    /// After a write of `keys` (whatever its outcome: an error may hide a commit), raises
    /// them to the primary's position. See the module comment for the failure cases.
    async fn raise(&self, keys: &[Uuid]) {
        if self.replicas.is_empty() {
            return;
        }
        let position = match self.primary.replication_position().await {
            Ok(Some(p)) => p,
            _ => UNKNOWN,
        };
        let ttl = self.options.board_ttl();
        if let Err(e) = self.board.raise(keys, position, ttl).await {
            tracing::error!(error = %e, board = %self.board.describe(),
                "position board not raised after a write: waiting for this instance's replicas; other instances may read it stale for up to max_replica_lag");
            self.await_replicas(position).await;
        }
    }

    /// Waits (at most `max_lag`) until every replica in rotation has replayed `position`,
    /// taking out of rotation those that have not.
    async fn await_replicas(&self, position: u64) {
        let until = Instant::now() + self.options.max_lag;
        for replica in &self.replicas {
            loop {
                if !replica.up.load(Relaxed) {
                    break;
                }
                if let Ok(Some(p)) = replica.store.replication_position().await {
                    replica.replayed.fetch_max(p, Relaxed);
                    if p >= position {
                        break;
                    }
                }
                if Instant::now() >= until {
                    replica.up.store(false, Relaxed);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Keys a user's row is read under: its own, and restores.
fn user_keys(user: UserId) -> [Uuid; 2] {
    [user.as_uuid(), EVERYTHING]
}

/// Keys a user row write raises.
fn user_write_keys(user: UserId) -> [Uuid; 2] {
    [user.as_uuid(), ALL_USERS]
}

/// Outcomes after which the write may have committed.
fn may_have_written<T>(outcome: &Result<T, RepoError>) -> bool {
    matches!(outcome, Ok(_) | Err(RepoError::Unavailable(_)) | Err(RepoError::Internal(_)))
}

impl ReplicatedStore {
    async fn after_write<T>(&self, outcome: Result<T, RepoError>, keys: &[Uuid]) -> Result<T, RepoError> {
        if may_have_written(&outcome) {
            self.inner.raise(keys).await;
        }
        outcome
    }

    /// A read whose keys are known before it runs: skips replicas behind them.
    async fn read_known<T, F, Fut>(&self, keys: &[Uuid], read: F) -> Result<T, RepoError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RepoError>>,
    {
        let inner = &self.inner;
        if inner.replicas.is_empty() {
            return read(inner.primary.clone()).await;
        }
        let Some(need) = inner.needed(keys).await else {
            return read(inner.primary.clone()).await;
        };
        match inner.pick(need) {
            None => {
                inner.fell_back(if inner.pick(0).is_some() { Fallback::Stale } else { Fallback::NoReplica });
            }
            Some((replica, _)) => match read(replica.store.clone()).await {
                Ok(out) => {
                    replica.reads.fetch_add(1, Relaxed);
                    return Ok(out);
                }
                Err(e) => {
                    inner.replica_failed(replica, &e);
                    inner.fell_back(Fallback::ReplicaError);
                }
            },
        }
        read(inner.primary.clone()).await
    }

    /// A read whose keys come from its answer: asks a replica, then checks the answer's
    /// keys against the position the replica had before the read. Not found on a replica
    /// may be not replicated yet, so it is asked of the primary.
    async fn read_then_check<T, F, Fut, K>(&self, read: F, keys: K) -> Result<Option<T>, RepoError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, RepoError>>,
        K: Fn(&T) -> [Uuid; 3],
    {
        let inner = &self.inner;
        let Some((replica, replayed)) = inner.pick(0) else {
            if !inner.replicas.is_empty() {
                inner.fell_back(Fallback::NoReplica);
            }
            return read(inner.primary.clone()).await;
        };
        match read(replica.store.clone()).await {
            Ok(Some(found)) => match inner.needed(&keys(&found)).await {
                Some(need) if need <= replayed => {
                    replica.reads.fetch_add(1, Relaxed);
                    return Ok(Some(found));
                }
                Some(_) => inner.fell_back(Fallback::Stale),
                None => {}
            },
            Ok(None) => inner.fell_back(Fallback::Missing),
            Err(e) => {
                inner.replica_failed(replica, &e);
                inner.fell_back(Fallback::ReplicaError);
            }
        }
        read(inner.primary.clone()).await
    }
}

/// The board of a single instance: positions in a map, each forgotten after its ttl.
#[derive(Default)]
pub struct LocalBoard {
    entries: Mutex<HashMap<Uuid, (u64, Instant)>>,
}

/// Past this many entries, a raise first sweeps out the expired ones.
const LOCAL_SWEEP_AT: usize = 100_000;

#[async_trait]
impl PositionBoard for LocalBoard {
    fn describe(&self) -> String {
        "in-process (read-your-writes within this instance only)".into()
    }

    async fn raise(&self, keys: &[Uuid], position: u64, ttl: Duration) -> Result<(), CacheError> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= LOCAL_SWEEP_AT {
            entries.retain(|_, (_, until)| *until > now);
        }
        for key in keys {
            let entry = entries.entry(*key).or_insert((0, now));
            if entry.1 <= now {
                entry.0 = 0;
            }
            entry.0 = entry.0.max(position);
            entry.1 = entry.1.max(now + ttl);
        }
        Ok(())
    }

    async fn highest(&self, keys: &[Uuid]) -> Result<u64, CacheError> {
        let now = Instant::now();
        let entries = self.entries.lock();
        Ok(keys
            .iter()
            .filter_map(|k| entries.get(k))
            .filter(|(_, until)| *until > now)
            .map(|(p, _)| *p)
            .max()
            .unwrap_or(0))
    }
}

/// One board shared by replicated stores whose positions cannot be compared (the shards of
/// a sharded store: each primary has its own WAL): each store's keys are moved into a
/// namespace of its own, so one shard's positions never gate another's reads.
pub struct NamespacedBoard {
    inner: Arc<dyn PositionBoard>,
    namespace: u128,
}

impl NamespacedBoard {
    /// `name` picks the namespace (FNV-1a, stable across builds and versions, so every
    /// instance of a deployment agrees).
    pub fn new(inner: Arc<dyn PositionBoard>, name: &str) -> Self {
        let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
        for byte in name.bytes() {
            hash ^= u128::from(byte);
            hash = hash.wrapping_mul(0x0000000001000000000000000000013b);
        }
        NamespacedBoard { inner, namespace: hash }
    }

    fn keys(&self, keys: &[Uuid]) -> Vec<Uuid> {
        keys.iter().map(|k| Uuid::from_u128(k.as_u128() ^ self.namespace)).collect()
    }
}

#[async_trait]
impl PositionBoard for NamespacedBoard {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn raise(&self, keys: &[Uuid], position: u64, ttl: Duration) -> Result<(), CacheError> {
        self.inner.raise(&self.keys(keys), position, ttl).await
    }

    async fn highest(&self, keys: &[Uuid]) -> Result<u64, CacheError> {
        self.inner.highest(&self.keys(keys)).await
    }
}

#[async_trait]
impl UserRepository for ReplicatedStore {
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let outcome = self.inner.primary.create_user(user, idempotency, event).await;
        self.after_write(outcome, &user_write_keys(user.id)).await
    }
    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError> {
        self.inner.primary.idempotency_record(key).await
    }
    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        self.inner.primary.purge_idempotency_keys(before).await
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.read_known(&user_keys(id), |s| async move { s.user_by_id(id).await }).await
    }
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        self.read_then_check(
            |s| async move { s.user_by_email(email).await },
            |u: &User| [u.id.as_uuid(), EVERYTHING, EVERYTHING],
        )
        .await
    }
    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let outcome = self.inner.primary.update_user(user, expected, revoke, event).await;
        self.after_write(outcome, &user_write_keys(user.id)).await
    }
    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let outcome = self.inner.primary.delete_user(id, expected, event).await;
        self.after_write(outcome, &user_write_keys(id)).await
    }
    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError> {
        self.read_known(&[ALL_USERS, EVERYTHING], |s| async move { s.list_users(query).await }).await
    }
    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, RepoError> {
        self.inner.primary.search_users(search).await
    }
    async fn count_users(&self, predicate: Option<&UserPredicate>) -> Result<u64, RepoError> {
        self.inner.primary.count_users(predicate).await
    }
}

#[async_trait]
impl SessionRepository for ReplicatedStore {
    /// Not raised: a session a replica does not have yet reads as missing there, and
    /// missing is asked of the primary.
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError> {
        self.inner.primary.create_session(session, event).await
    }
    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        self.read_then_check(
            |s| async move { s.session_with_user(token_hash).await },
            |(session, user): &(Session, User)| [session.id.as_uuid(), user.id.as_uuid(), EVERYTHING],
        )
        .await
    }
    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError> {
        let outcome = self.inner.primary.revoke_session(id, at, event).await;
        self.after_write(outcome, &[id.as_uuid()]).await
    }
    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError> {
        self.inner.primary.sessions_of_user(user_id).await
    }
}

#[async_trait]
impl LifecycleRepository for ReplicatedStore {
    async fn issue_account_token(
        &self,
        token: &AccountToken,
        mails: &[QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.primary.issue_account_token(token, mails, event).await
    }
    async fn account_token(&self, hash: &TokenHash) -> Result<Option<AccountToken>, RepoError> {
        self.inner.primary.account_token(hash).await
    }
    async fn redeem_account_token(
        &self,
        token_id: Uuid,
        purpose: TokenPurpose,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        at: Timestamp,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let outcome =
            self.inner.primary.redeem_account_token(token_id, purpose, user, expected, revoke, at, event).await;
        self.after_write(outcome, &user_write_keys(user.id)).await
    }
    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, RepoError> {
        self.inner.primary.claim_due_mails(now, lease_until, limit).await
    }
    async fn record_mail(&self, mail: &QueuedMail) -> Result<(), RepoError> {
        self.inner.primary.record_mail(mail).await
    }
    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.primary.prune_lifecycle(before, limit).await
    }
}

/// The TOTP row is read from the primary, but its writes change the user row's
/// `mfa_enabled`, which routed reads return.
#[async_trait]
impl MfaRepository for ReplicatedStore {
    async fn totp_of(&self, user_id: UserId) -> Result<Option<TotpRecord>, RepoError> {
        self.inner.primary.totp_of(user_id).await
    }
    async fn save_totp(
        &self,
        record: &TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        let outcome = self.inner.primary.save_totp(record, expected, event).await;
        self.after_write(outcome, &user_write_keys(record.user_id)).await
    }
    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError> {
        let outcome = self.inner.primary.delete_totp(user_id, expected, event).await;
        self.after_write(outcome, &user_write_keys(user_id)).await
    }
}

#[async_trait]
impl BackupRepository for ReplicatedStore {
    async fn export_snapshot(&self, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        self.inner.primary.export_snapshot(out).await
    }
    async fn import_snapshot(&self, rows: mpsc::Receiver<Load>, existing: OnExisting) -> Result<u64, RepoError> {
        let outcome = self.inner.primary.import_snapshot(rows, existing).await;
        self.after_write(outcome, &[EVERYTHING, ALL_USERS]).await
    }
    async fn row_counts(&self) -> Result<Vec<u64>, RepoError> {
        self.inner.primary.row_counts().await
    }
    async fn export_shard(&self, scope: ShardScope, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        self.inner.primary.export_shard(scope, out).await
    }
    async fn replace_shard(&self, scope: ShardScope, rows: mpsc::Receiver<Load>) -> Result<u64, RepoError> {
        let outcome = self.inner.primary.replace_shard(scope, rows).await;
        self.after_write(outcome, &[EVERYTHING, ALL_USERS]).await
    }
    async fn delete_shard(&self, scope: ShardScope) -> Result<u64, RepoError> {
        let outcome = self.inner.primary.delete_shard(scope).await;
        self.after_write(outcome, &[EVERYTHING, ALL_USERS]).await
    }
}

#[async_trait]
impl Store for ReplicatedStore {
    fn backend(&self) -> &'static str {
        self.inner.primary.backend()
    }
    async fn ping(&self) -> Result<(), RepoError> {
        self.inner.primary.ping().await
    }
    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        self.inner.primary.explain_hot_paths().await
    }
    fn pool_stats(&self) -> PoolStats {
        self.inner.primary.pool_stats()
    }
    async fn replication_position(&self) -> Result<Option<u64>, RepoError> {
        self.inner.primary.replication_position().await
    }
    fn read_routing(&self) -> Option<ReadRouting> {
        let inner = &self.inner;
        let now = inner.micros_now();
        Some(ReadRouting {
            replicas: inner
                .replicas
                .iter()
                .map(|r| ReplicaStatus {
                    name: r.name.clone(),
                    in_rotation: inner.in_rotation(r, now),
                    lag_seconds: r.lag_micros.load(Relaxed) as f64 / 1e6,
                    reads: r.reads.load(Relaxed),
                    errors: r.errors.load(Relaxed),
                })
                .collect(),
            primary: FALLBACKS.iter().zip(&inner.fallbacks).map(|(why, n)| (*why, n.load(Relaxed))).collect(),
        })
    }
}

/// Everything below goes to the primary unchanged: writes and reads that are not routed.
macro_rules! to_primary {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        $self.inner.primary.$method($($arg),*).await
    };
}

#[async_trait]
impl GroupRepository for ReplicatedStore {
    async fn create_group(&self, group: &Group, members: &[UserId], event: &OutboxEvent) -> Result<(), RepoError> {
        to_primary!(self.create_group(group, members, event))
    }
    async fn group_by_id(&self, id: GroupId) -> Result<Option<Group>, RepoError> {
        to_primary!(self.group_by_id(id))
    }
    async fn list_groups(&self, query: &GroupListQuery) -> Result<Vec<Group>, RepoError> {
        to_primary!(self.list_groups(query))
    }
    async fn update_group(
        &self,
        group: &Group,
        expected: Version,
        members: &MembershipChange,
        event: &OutboxEvent,
    ) -> Result<MembershipDelta, RepoError> {
        to_primary!(self.update_group(group, expected, members, event))
    }
    async fn delete_group(&self, id: GroupId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        to_primary!(self.delete_group(id, expected, event))
    }
    async fn group_members(&self, query: &MemberQuery) -> Result<Vec<GroupMember>, RepoError> {
        to_primary!(self.group_members(query))
    }
    async fn groups_of_user(&self, user: UserId) -> Result<Vec<Group>, RepoError> {
        to_primary!(self.groups_of_user(user))
    }
    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        to_primary!(self.existing_user_ids(ids))
    }
}

#[async_trait]
impl ExternalIdRepository for ReplicatedStore {
    async fn external_id_of(&self, user: UserId) -> Result<Option<ExternalId>, RepoError> {
        to_primary!(self.external_id_of(user))
    }
    async fn set_external_id(&self, user: UserId, external_id: Option<&ExternalId>) -> Result<(), RepoError> {
        to_primary!(self.set_external_id(user, external_id))
    }
    async fn users_by_external_id(&self, external_id: &ExternalId) -> Result<Vec<UserId>, RepoError> {
        to_primary!(self.users_by_external_id(external_id))
    }
    async fn enterprise_of(&self, user: UserId) -> Result<Option<EnterpriseUser>, RepoError> {
        to_primary!(self.enterprise_of(user))
    }
    async fn set_enterprise(&self, user: UserId, enterprise: &EnterpriseUser) -> Result<(), RepoError> {
        to_primary!(self.set_enterprise(user, enterprise))
    }
    async fn users_by_employee_number(&self, number: &EnterpriseText) -> Result<Vec<UserId>, RepoError> {
        to_primary!(self.users_by_employee_number(number))
    }
}

#[async_trait]
impl ProvisioningTokenRepository for ReplicatedStore {
    async fn create_provisioning_token(&self, token: &ProvisioningToken) -> Result<(), RepoError> {
        to_primary!(self.create_provisioning_token(token))
    }
    async fn provisioning_tokens(&self) -> Result<Vec<ProvisioningToken>, RepoError> {
        to_primary!(self.provisioning_tokens())
    }
    async fn provisioning_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ProvisioningToken>, RepoError> {
        to_primary!(self.provisioning_token_by_hash(hash))
    }
    async fn revoke_provisioning_token(&self, id: Uuid, at: Timestamp) -> Result<bool, RepoError> {
        to_primary!(self.revoke_provisioning_token(id, at))
    }
}

#[async_trait]
impl OutboxRepository for ReplicatedStore {
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError> {
        to_primary!(self.record_event(event))
    }
    async fn pending_events(&self, partitions: &[u16], limit: u32) -> Result<Vec<StoredEvent>, RepoError> {
        to_primary!(self.pending_events(partitions, limit))
    }
    async fn mark_published(&self, ids: &[Uuid], at: Timestamp) -> Result<(), RepoError> {
        to_primary!(self.mark_published(ids, at))
    }
    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        to_primary!(self.prune_published(before, limit))
    }
    async fn outbox_backlog(&self) -> Result<Backlog, RepoError> {
        to_primary!(self.outbox_backlog())
    }
    async fn relay_leases(&self) -> Result<Vec<RelayLease>, RepoError> {
        to_primary!(self.relay_leases())
    }
    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError> {
        to_primary!(self.claim_lease(name, owner, now, until))
    }
    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError> {
        to_primary!(self.release_lease(name, owner))
    }
    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget_before: Timestamp) -> Result<(), RepoError> {
        to_primary!(self.relay_heartbeat(owner, until, forget_before))
    }
}

#[async_trait]
impl AuditRepository for ReplicatedStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<u64, RepoError> {
        to_primary!(self.append_audit(entries))
    }
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RepoError> {
        to_primary!(self.audit_entries(query))
    }
    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        to_primary!(self.prune_audit(before, limit))
    }
}

#[async_trait]
impl WebhookRepository for ReplicatedStore {
    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), RepoError> {
        to_primary!(self.create_webhook_endpoint(endpoint))
    }
    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, RepoError> {
        to_primary!(self.webhook_endpoint(id))
    }
    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError> {
        to_primary!(self.webhook_endpoints())
    }
    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        to_primary!(self.update_webhook_endpoint(endpoint, event))
    }
    async fn delete_webhook_endpoint(&self, id: Uuid) -> Result<bool, RepoError> {
        to_primary!(self.delete_webhook_endpoint(id))
    }
    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<u64, RepoError> {
        to_primary!(self.enqueue_deliveries(deliveries))
    }
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepoError> {
        to_primary!(self.claim_due_deliveries(now, lease_until, limit))
    }
    async fn record_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), RepoError> {
        to_primary!(self.record_delivery(delivery, attempt))
    }
    async fn webhook_delivery(&self, endpoint_id: Uuid, id: Uuid) -> Result<Option<WebhookDelivery>, RepoError> {
        to_primary!(self.webhook_delivery(endpoint_id, id))
    }
    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError> {
        to_primary!(self.webhook_deliveries(query))
    }
    async fn webhook_attempts(&self, delivery_id: Uuid) -> Result<Vec<WebhookAttempt>, RepoError> {
        to_primary!(self.webhook_attempts(delivery_id))
    }
    async fn replay_delivery(&self, endpoint_id: Uuid, id: Uuid, now: Timestamp) -> Result<bool, RepoError> {
        to_primary!(self.replay_delivery(endpoint_id, id, now))
    }
    async fn replay_failed_deliveries(
        &self,
        endpoint_id: Uuid,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, RepoError> {
        to_primary!(self.replay_failed_deliveries(endpoint_id, since, now))
    }
}

// The catalog is written and read on the primary: its readers decide where data lives.
strata_core::forward_shard_catalog!(ReplicatedStore, |self| self.inner.primary);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_board_keeps_the_highest_position_until_it_expires() {
        let board = LocalBoard::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let long = Duration::from_secs(60);
        board.raise(&[a, ALL_USERS], 10, long).await.unwrap();
        board.raise(&[a], 5, long).await.unwrap();
        board.raise(&[b], 7, Duration::ZERO).await.unwrap();
        assert_eq!(board.highest(&[a]).await.unwrap(), 10);
        assert_eq!(board.highest(&[b]).await.unwrap(), 0, "expired at once");
        assert_eq!(board.highest(&[b, ALL_USERS]).await.unwrap(), 10);
        assert_eq!(board.highest(&[Uuid::now_v7()]).await.unwrap(), 0);
    }

    #[test]
    fn board_entries_outlive_the_lag_limit() {
        let options = ReplicaOptions { max_lag: Duration::from_secs(30), poll: Duration::from_millis(100) };
        assert!(options.board_ttl() > options.max_lag * 2);
        assert!(ReplicaOptions::default().board_ttl() >= Duration::from_secs(10));
    }
}
