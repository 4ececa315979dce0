//! A `Store` over shards: users and everything about one user live on one of several
//! physical databases (each itself any `Store`: PostgreSQL, MySQL, SQLite, replicated),
//! chosen through a fixed number of logical shards and a shard map kept in a catalog
//! database, which also holds the global email claims and the data that belongs to no
//! user (webhooks, audit log, provisioning tokens, relay leases).
//!
//! Routing:
//! - by user id (`logical_shard(id)` → map → physical): user reads and writes, sessions of
//!   a user, account tokens, TOTP, external ids, the outbox rows written with them;
//! - by token hash (its first byte is the logical shard: see
//!   `SessionToken::generate_in`): the session check, one query on one shard;
//! - by email: the catalog's claim names the user, then its shard;
//! - everywhere (merged, and rows filtered to the shard their logical shard reads from, so
//!   a copy in flight is never seen twice): admin listings and searches, the outbox
//!   relay's reads, due mails, idempotency lookups.
//!
//! Email uniqueness is global: a create claims the email in the catalog (pending), writes
//! the user on its shard, then confirms the claim; a failed write releases it. A change or
//! delete marks the old claim pending first. Whatever a crash leaves pending,
//! [`ShardedStore::reconcile_claims`] settles against the user row.
//!
//! Moves ([`ShardedStore::move_shard`]) walk a logical shard through the catalog's
//! `MoveStep`s; every instance rereads the map every `ShardOptions::refresh`, refuses
//! writes to a logical shard in the `copying` and `switching` steps with a 503, and refuses
//! all writes while its map is older than `max_map_age` (a catalog it cannot reach might
//! be announcing a move). The mover waits `settle_writes` after freezing (every writing
//! instance has seen the freeze and its in-flight writes have ended), copies, switches
//! reads, waits `settle_reads`, lets writes resume on the target, waits again, and only
//! then deletes the old copy. An instance cut off from the catalog may still read a moved
//! shard's old copy until it is deleted: reads do not fail closed, so that a catalog
//! outage costs no session check.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use strata_core::backup::{BackupRepository, Batch, Load, OnExisting, ShardScope};
use strata_core::domain::{
    AuditEntry, AuditQuery, Backlog, Email, GroupId, IdempotencyKey, IdempotencyRecord, OutboxEvent, RelayLease,
    Session, SessionId, StoredEvent, Timestamp, TokenHash, User, UserId, Version, logical_shard,
};
use strata_core::error::RepoError;
use strata_core::groups::{
    EnterpriseText, EnterpriseUser, ExternalId, Group, GroupListQuery, GroupMember, MemberQuery, MembershipChange,
    MembershipDelta,
};
use strata_core::lifecycle::{AccountToken, QueuedMail, TokenPurpose};
use strata_core::ports::{
    AuditRepository, ExternalIdRepository, GroupRepository, LifecycleRepository, MfaRepository, OutboxRepository,
    PoolStats, ProvisioningTokenRepository, QueryPlan, SessionRepository, SessionRevocation, Store, UserListQuery,
    UserOrder, UserPredicate, UserRepository, UserSearch, WebhookRepository,
};
use strata_core::provisioning::ProvisioningToken;
use strata_core::shards::{ClaimState, MAX_LOGICAL_SHARDS, MoveStep, Placement};
use strata_core::totp::TotpRecord;
use strata_core::webhooks::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub struct ShardOptions {
    /// Logical shards of a new map (fixed once the map exists).
    pub logical: u16,
    /// How often every instance rereads the shard map.
    pub refresh: Duration,
    /// The per-call bound on storage calls: a write that saw the map before a freeze has
    /// finished (or failed) this long after.
    pub query_timeout: Duration,
    /// Pending email claims older than this are settled by the reconciler.
    pub claim_grace: Duration,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            logical: MAX_LOGICAL_SHARDS,
            refresh: Duration::from_millis(200),
            query_timeout: Duration::from_secs(5),
            claim_grace: Duration::from_secs(300),
        }
    }
}

impl ShardOptions {
    /// An instance whose map is older than this refuses writes (503) until it reads the
    /// map again: a move relies on every instance that writes having seen its steps.
    pub fn max_map_age(&self) -> Duration {
        self.refresh * 5
    }

    /// After a step change, how long until every instance that may route (its map no
    /// older than `max_map_age`) has read the new step.
    pub fn settle_reads(&self) -> Duration {
        self.max_map_age() + self.refresh
    }

    /// ... and until every write routed under the previous step has finished (storage
    /// calls are bounded by `query_timeout`): the wait before a copy.
    pub fn settle_writes(&self) -> Duration {
        self.settle_reads() + self.query_timeout
    }
}

/// Where one logical shard's reads and writes go now.
#[derive(Clone, Copy, Debug)]
struct Route {
    /// Index into `Inner::shards`.
    shard: usize,
    writable: bool,
}

struct Inner {
    catalog: Arc<dyn Store>,
    /// The configured physical databases, by name (URL without password).
    shards: Vec<(String, Arc<dyn Store>)>,
    count: u16,
    options: ShardOptions,
    routes: RwLock<Arc<Vec<Route>>>,
    /// When `routes` was last read from the catalog.
    refreshed: parking_lot::Mutex<std::time::Instant>,
    /// Rotates which shard fan-out claims start with, so no shard starves the others.
    next: AtomicUsize,
    writes_refused: std::sync::atomic::AtomicU64,
}

pub struct ShardedStore {
    inner: Arc<Inner>,
    refresh: tokio::task::JoinHandle<()>,
}

impl Drop for ShardedStore {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

fn moving(logical: u16) -> RepoError {
    RepoError::Unavailable(format!("logical shard {logical} is being moved: writes resume when it has switched"))
}

/// Something a sharded store does not do (yet): named, never a silent wrong answer.
fn unsharded(what: &str) -> RepoError {
    RepoError::Internal(format!("{what} is not supported on a sharded store"))
}

impl ShardedStore {
    /// Opens the map (creating it, logical shard `i` on physical shard `i mod n`, if the
    /// catalog has none), checks that every database it names is configured, and starts
    /// refreshing it.
    pub async fn new(
        catalog: Arc<dyn Store>,
        shards: Vec<(String, Arc<dyn Store>)>,
        options: ShardOptions,
    ) -> Result<Self, RepoError> {
        if shards.is_empty() {
            return Err(RepoError::Internal("a sharded store needs at least one shard".into()));
        }
        if options.logical == 0 || options.logical > MAX_LOGICAL_SHARDS {
            return Err(RepoError::Internal(format!(
                "logical shards must be 1..={MAX_LOGICAL_SHARDS}, not {}",
                options.logical
            )));
        }
        let mut map = catalog.shard_map().await?;
        if map.is_empty() {
            let initial: Vec<Placement> = (0..options.logical)
                .map(|l| Placement::new(l, shards[usize::from(l) % shards.len()].0.clone()))
                .collect();
            map = catalog.create_shard_map(&initial).await?;
        }
        let count = u16::try_from(map.len()).ok().filter(|n| (1..=MAX_LOGICAL_SHARDS).contains(n));
        let count = count.ok_or_else(|| RepoError::Internal(format!("the shard map has {} rows", map.len())))?;
        let routes = routes_of(&map, &shards)?;
        let inner = Arc::new(Inner {
            catalog,
            shards,
            count,
            options,
            routes: RwLock::new(Arc::new(routes)),
            refreshed: parking_lot::Mutex::new(std::time::Instant::now()),
            next: AtomicUsize::new(0),
            writes_refused: Default::default(),
        });
        let refresh = tokio::spawn(refresh_loop(Arc::downgrade(&inner)));
        Ok(ShardedStore { inner, refresh })
    }

    /// The map as the catalog has it now, with each physical shard's user count.
    pub async fn status(&self) -> Result<ShardStatus, RepoError> {
        let map = self.inner.catalog.shard_map().await?;
        let mut databases = Vec::with_capacity(self.inner.shards.len());
        for (name, store) in &self.inner.shards {
            let logical = map.iter().filter(|p| &p.shard == name).map(|p| p.logical).collect();
            databases.push(DatabaseStatus { name: name.clone(), logical, users: store.count_users(None).await? });
        }
        Ok(ShardStatus { map, databases })
    }

    /// Settles pending email claims older than the grace period: kept (made active) where
    /// the user now has that email, released where not (a create or change that failed or
    /// died half-way). Returns (kept, released).
    pub async fn reconcile_claims(&self, now: Timestamp) -> Result<(u64, u64), RepoError> {
        let inner = &self.inner;
        let before = Timestamp(now.0 - inner.options.claim_grace.as_micros() as i64);
        let (mut kept, mut released) = (0, 0);
        loop {
            let claims = inner.catalog.pending_claims(before, 500).await?;
            if claims.is_empty() {
                return Ok((kept, released));
            }
            for claim in claims {
                let user = inner.store_of(claim.user_id.as_uuid())?.user_by_id(claim.user_id).await?;
                if user.is_some_and(|u| u.email == claim.email) {
                    inner.catalog.confirm_email(&claim.email, claim.user_id).await?;
                    kept += 1;
                } else {
                    inner.catalog.release_email(&claim.email, claim.user_id).await?;
                    released += 1;
                }
            }
        }
    }

    /// Moves logical shard `logical` to the configured database `target` (by name),
    /// resuming a move already in flight for it. Each step is a compare-and-set on the
    /// catalog, so a killed move is resumed by running this again; `progress` hears each
    /// step as it starts.
    pub async fn move_shard(
        &self,
        logical: u16,
        target: &str,
        clock: &dyn strata_core::ports::Clock,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(), RepoError> {
        let inner = &self.inner;
        let (settle_writes, settle_reads) = (inner.options.settle_writes(), inner.options.settle_reads());
        if inner.shard_index(target).is_none() {
            return Err(RepoError::Internal(format!("{target} is not one of the configured shards")));
        }
        let scope = ShardScope { logical, count: inner.count };
        loop {
            let map = inner.catalog.shard_map().await?;
            let placement =
                map.iter().find(|p| p.logical == logical).cloned().ok_or_else(|| {
                    RepoError::Internal(format!("no logical shard {logical} (there are {})", map.len()))
                })?;
            let now = clock.now();
            let next = match (placement.step, placement.other.as_deref()) {
                (None, _) if placement.shard == target => {
                    progress(&format!("logical shard {logical} is on {target}"));
                    return Ok(());
                }
                (None, _) => {
                    progress(&format!("logical shard {logical}: freezing writes on {}", placement.shard));
                    placement.with_step(&placement.shard, Some(target), Some(MoveStep::Copying), now)
                }
                (Some(MoveStep::Copying), Some(to)) if to == target => {
                    progress(&format!("waiting {settle_writes:?} for every instance to stop writing"));
                    tokio::time::sleep(settle_writes).await;
                    let from = inner.named(&placement.shard)?;
                    let rows = copy_shard(from, inner.named(target)?, scope).await?;
                    progress(&format!("copied {rows} rows from {} to {target}; switching reads", placement.shard));
                    placement.with_step(target, Some(&placement.shard), Some(MoveStep::Switching), now)
                }
                (Some(MoveStep::Switching), Some(from)) if placement.shard == target => {
                    progress(&format!("waiting {settle_reads:?} for every instance to read from {target}"));
                    tokio::time::sleep(settle_reads).await;
                    progress(&format!("writes resume on {target}; removing the old copy from {from}"));
                    placement.with_step(target, Some(from), Some(MoveStep::Cleaning), now)
                }
                (Some(MoveStep::Cleaning), Some(from)) if placement.shard == target => {
                    tokio::time::sleep(settle_reads).await;
                    let deleted = inner.named(from)?.delete_shard(scope).await?;
                    progress(&format!("removed {deleted} rows from {from}; move done"));
                    placement.with_step(target, None, None, now)
                }
                (Some(step), other) => {
                    let to = if step == MoveStep::Copying { other.unwrap_or("?") } else { &placement.shard };
                    return Err(RepoError::Internal(format!(
                        "logical shard {logical} is moving to {to} ({}): finish that move (--to {to}) first",
                        step.as_str()
                    )));
                }
            };
            if !inner.catalog.update_placement(placement.version, &next).await? {
                progress("the placement changed meanwhile (another mover?): rereading");
            }
            inner.refresh().await?;
        }
    }
}

/// Copies one logical shard: the source's rows, from one snapshot, replace the target's.
async fn copy_shard(from: &Arc<dyn Store>, to: &Arc<dyn Store>, scope: ShardScope) -> Result<u64, RepoError> {
    let (batches, mut exported) = mpsc::channel::<Batch>(4);
    let (loads, rows) = mpsc::channel::<Load>(4);
    let export = from.export_shard(scope, batches);
    let forward = async move {
        while let Some(batch) = exported.recv().await {
            if loads.send(Load::Rows(batch)).await.is_err() {
                return;
            }
        }
        let _ = loads.send(Load::Commit).await;
    };
    let forward = async {
        // Commit only after the export finished cleanly: a failed export must roll back.
        let (exported, ()) = tokio::join!(export, forward);
        exported
    };
    let (exported, written) = tokio::join!(forward, to.replace_shard(scope, rows));
    exported?;
    written
}

/// What `strata shards status` shows.
#[derive(Clone, Debug)]
pub struct ShardStatus {
    pub map: Vec<Placement>,
    pub databases: Vec<DatabaseStatus>,
}

#[derive(Clone, Debug)]
pub struct DatabaseStatus {
    pub name: String,
    pub logical: Vec<u16>,
    pub users: u64,
}

fn routes_of(map: &[Placement], shards: &[(String, Arc<dyn Store>)]) -> Result<Vec<Route>, RepoError> {
    map.iter()
        .enumerate()
        .map(|(i, p)| {
            if usize::from(p.logical) != i {
                return Err(RepoError::Internal(format!("the shard map has a gap before logical shard {}", p.logical)));
            }
            let shard = shards.iter().position(|(name, _)| *name == p.shard).ok_or_else(|| {
                RepoError::Unavailable(format!(
                    "logical shard {} is on {}, which is not among this instance's shards (database.shards)",
                    p.logical, p.shard
                ))
            })?;
            Ok(Route { shard, writable: p.writable() })
        })
        .collect()
}

async fn refresh_loop(inner: Weak<Inner>) {
    let Some(every) = inner.upgrade().map(|i| i.options.refresh) else { return };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.refresh().await {
            // Keep routing by the last map: a catalog blip must not stop sessions. A move
            // waits `settle` (several refreshes) before relying on what instances saw.
            tracing::warn!(error = %e, "shard map refresh failed; routing by the last map read");
        }
    }
}

impl Inner {
    async fn refresh(&self) -> Result<(), RepoError> {
        let map = self.catalog.shard_map().await?;
        if map.len() != usize::from(self.count) {
            return Err(RepoError::Internal(format!("the shard map now has {} rows, not {}", map.len(), self.count)));
        }
        let read_at = std::time::Instant::now();
        let routes = routes_of(&map, &self.shards)?;
        *self.routes.write() = Arc::new(routes);
        *self.refreshed.lock() = read_at;
        Ok(())
    }

    fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|(n, _)| n == name)
    }

    fn named(&self, name: &str) -> Result<&Arc<dyn Store>, RepoError> {
        let index = self.shard_index(name).ok_or_else(|| RepoError::Internal(format!("{name} is not configured")))?;
        Ok(&self.shards[index].1)
    }

    fn route(&self, logical: u16) -> Route {
        self.routes.read()[usize::from(logical)]
    }

    /// The store holding `id`'s logical shard, for reads.
    fn store_of(&self, id: Uuid) -> Result<&Arc<dyn Store>, RepoError> {
        Ok(&self.shards[self.route(logical_shard(id, self.count)).shard].1)
    }

    /// The store holding `id`'s logical shard, for writes: 503 while it moves.
    fn writer_of(&self, id: Uuid) -> Result<&Arc<dyn Store>, RepoError> {
        let logical = logical_shard(id, self.count);
        let route = self.writable_route(logical)?;
        Ok(&self.shards[route.shard].1)
    }

    /// The route of a logical shard for a write: refused while it moves, and while this
    /// instance's map is too old to know whether it moves.
    fn writable_route(&self, logical: u16) -> Result<Route, RepoError> {
        let age = self.refreshed.lock().elapsed();
        if age > self.options.max_map_age() {
            self.writes_refused.fetch_add(1, Relaxed);
            return Err(RepoError::Unavailable(format!(
                "the shard map was last read {}ms ago: writes wait until the catalog answers",
                age.as_millis()
            )));
        }
        let route = self.route(logical);
        if !route.writable {
            self.writes_refused.fetch_add(1, Relaxed);
            return Err(moving(logical));
        }
        Ok(route)
    }

    /// Writes `user`'s row with `write` on its shard. When the write changes the email, the
    /// claims move with it: both pending while the row changes (whatever happens next, the
    /// reconciler keeps the one the row ends up with), then the kept one confirmed and the
    /// other released; an unknown outcome (Unavailable) leaves both to the reconciler.
    async fn write_user<F, Fut>(&self, user: &User, at: Timestamp, write: F) -> Result<(), RepoError>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<(), RepoError>>,
    {
        let shard = self.writer_of(user.id.as_uuid())?.clone();
        let Some(current) = shard.user_by_id(user.id).await? else {
            return Err(RepoError::NotFound);
        };
        if current.email == user.email {
            return write(shard).await;
        }
        self.catalog.claim_email(&user.email, user.id, at).await?;
        self.catalog.claim_email(&current.email, user.id, at).await?;
        let (keep, drop, outcome) = match write(shard).await {
            Ok(()) => (&user.email, &current.email, Ok(())),
            Err(RepoError::Unavailable(e)) => return Err(RepoError::Unavailable(e)),
            Err(e) => (&current.email, &user.email, Err(e)),
        };
        self.catalog.confirm_email(keep, user.id).await?;
        self.catalog.release_email(drop, user.id).await?;
        outcome
    }

    /// Whether shard `index` is where `id`'s rows are read from now (a copy elsewhere,
    /// mid-move, is not).
    fn owns(&self, routes: &[Route], index: usize, id: Uuid) -> bool {
        routes[usize::from(logical_shard(id, self.count))].shard == index
    }

    /// Every shard's answer, each filtered to the rows it owns by `id_of`.
    async fn gather<T, F, Fut>(&self, read: F, id_of: impl Fn(&T) -> Uuid) -> Result<Vec<T>, RepoError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, RepoError>>,
    {
        let routes = self.routes.read().clone();
        let mut all = Vec::new();
        for (index, (_, store)) in self.shards.iter().enumerate() {
            let rows = read(store.clone()).await?;
            all.extend(rows.into_iter().filter(|row| self.owns(&routes, index, id_of(row))));
        }
        Ok(all)
    }

    /// Runs `write` on every shard (and the catalog, when `with_catalog`), summing.
    async fn on_all<F, Fut>(&self, with_catalog: bool, write: F) -> Result<u64, RepoError>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<u64, RepoError>>,
    {
        let mut total = if with_catalog { write(self.catalog.clone()).await? } else { 0 };
        for (_, store) in &self.shards {
            total += write(store.clone()).await?;
        }
        Ok(total)
    }

    /// The shards in a rotating order.
    fn rotated(&self) -> impl Iterator<Item = &Arc<dyn Store>> {
        let n = self.shards.len();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n).map(move |i| &self.shards[(start + i) % n].1)
    }
}

/// Merges per-shard pages into one: sorted by `key`, first `limit`.
fn first<T, K: Ord>(mut rows: Vec<T>, key: impl Fn(&T) -> K, skip: usize, limit: usize) -> Vec<T> {
    rows.sort_by_key(key);
    rows.into_iter().skip(skip).take(limit).collect()
}

fn user_id_of(user: &User) -> Uuid {
    user.id.as_uuid()
}

#[async_trait]
impl UserRepository for ShardedStore {
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        let inner = &self.inner;
        let shard = inner.writer_of(user.id.as_uuid())?;
        // Keys are unique per database; across shards, a key is looked up first.
        if let Some(rec) = idempotency
            && self.idempotency_record(&rec.key).await?.is_some()
        {
            return Err(RepoError::IdempotencyKeyTaken);
        }
        if let Err(e) = inner.catalog.claim_email(&user.email, user.id, user.created_at).await {
            let Some(rec) = idempotency.filter(|_| e == RepoError::EmailTaken) else { return Err(e) };
            // A retry racing its first attempt must hear "key taken" and replay: while the
            // claim is pending (the first attempt is writing), wait for its outcome.
            let deadline = tokio::time::Instant::now() + inner.options.query_timeout;
            loop {
                if self.idempotency_record(&rec.key).await?.is_some() {
                    return Err(RepoError::IdempotencyKeyTaken);
                }
                let claim = inner.catalog.email_claim(&user.email).await?;
                match claim {
                    Some(c) if c.state == ClaimState::Pending && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Some(c) if c.state == ClaimState::Pending => {
                        return Err(RepoError::Unavailable("a create with this email is in flight".into()));
                    }
                    // Released: the first attempt failed; this one may go ahead.
                    None => return Box::pin(self.create_user(user, idempotency, event)).await,
                    Some(_) => return Err(e),
                }
            }
        }
        match shard.create_user(user, idempotency, event).await {
            Ok(()) => inner.catalog.confirm_email(&user.email, user.id).await,
            Err(e) => {
                // Not released when the outcome is unknown (a timeout may have committed):
                // the reconciler settles it against the row.
                if !matches!(e, RepoError::Unavailable(_)) {
                    inner.catalog.release_email(&user.email, user.id).await?;
                }
                Err(e)
            }
        }
    }

    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError> {
        for (_, store) in &self.inner.shards {
            if let Some(record) = store.idempotency_record(key).await? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        self.inner.on_all(false, |s| async move { s.purge_idempotency_keys(before).await }).await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.inner.store_of(id.as_uuid())?.user_by_id(id).await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        let inner = &self.inner;
        match inner.catalog.email_claim(email).await? {
            Some(claim) => inner.store_of(claim.user_id.as_uuid())?.user_by_email(email).await,
            None => Ok(None),
        }
    }

    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner
            .write_user(user, user.updated_at, |s| async move { s.update_user(user, expected, revoke, event).await })
            .await
    }

    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let inner = &self.inner;
        let shard = inner.writer_of(id.as_uuid())?;
        let Some(current) = shard.user_by_id(id).await? else {
            return shard.delete_user(id, expected, event).await;
        };
        inner.catalog.claim_email(&current.email, id, event.created_at).await?;
        match shard.delete_user(id, expected, event).await {
            Ok(()) => inner.catalog.release_email(&current.email, id).await,
            Err(RepoError::Unavailable(e)) => Err(RepoError::Unavailable(e)),
            Err(e) => {
                inner.catalog.confirm_email(&current.email, id).await?;
                Err(e)
            }
        }
    }

    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError> {
        if let Some(email) = &query.email {
            // One user at most: the shard the claim names.
            return match self.inner.catalog.email_claim(email).await? {
                Some(claim) => self.inner.store_of(claim.user_id.as_uuid())?.list_users(query).await,
                None => Ok(Vec::new()),
            };
        }
        let rows = self.inner.gather(|s| async move { s.list_users(query).await }, user_id_of).await?;
        Ok(first(rows, |u| u.id.as_uuid(), 0, query.limit as usize))
    }

    async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, RepoError> {
        // Each shard's first offset + limit in the order, merged, then the page.
        let wide = UserSearch {
            offset: 0,
            limit: (search.offset + u64::from(search.limit)).min(u64::from(u32::MAX)) as u32,
            ..search.clone()
        };
        let wide = &wide;
        let mut rows = self.inner.gather(|s| async move { s.search_users(wide).await }, user_id_of).await?;
        rows.sort_by(|a, b| {
            let by = match search.order {
                UserOrder::Id => std::cmp::Ordering::Equal,
                UserOrder::Email => a.email.as_str().cmp(b.email.as_str()),
                UserOrder::Name => a.name.as_str().cmp(b.name.as_str()),
                UserOrder::CreatedAt => a.created_at.cmp(&b.created_at),
                UserOrder::UpdatedAt => a.updated_at.cmp(&b.updated_at),
            };
            let by = if search.descending { by.reverse() } else { by };
            by.then_with(|| a.id.as_uuid().cmp(&b.id.as_uuid()))
        });
        Ok(rows.into_iter().skip(search.offset as usize).take(search.limit as usize).collect())
    }

    async fn count_users(&self, predicate: Option<&UserPredicate>) -> Result<u64, RepoError> {
        // Mid-move, the target's copy is counted too: a count is an estimate then.
        self.inner.on_all(false, |s| async move { s.count_users(predicate).await }).await
    }
}

#[async_trait]
impl SessionRepository for ShardedStore {
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError> {
        let inner = &self.inner;
        let logical = logical_shard(session.user_id.as_uuid(), inner.count);
        if session.token_hash.logical_shard(inner.count) != logical {
            return Err(RepoError::Internal(
                "a session token not made for its user's logical shard (SessionToken::generate_in)".into(),
            ));
        }
        inner.writer_of(session.user_id.as_uuid())?.create_session(session, event).await
    }

    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        let inner = &self.inner;
        let route = inner.route(token_hash.logical_shard(inner.count));
        inner.shards[route.shard].1.session_with_user(token_hash).await
    }

    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError> {
        // The event is about the session's user: its shard holds the session.
        self.inner.writer_of(event.aggregate_id)?.revoke_session(id, at, event).await
    }

    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError> {
        self.inner.store_of(user_id.as_uuid())?.sessions_of_user(user_id).await
    }
}

#[async_trait]
impl LifecycleRepository for ShardedStore {
    async fn issue_account_token(
        &self,
        token: &AccountToken,
        mails: &[QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.writer_of(token.user_id.as_uuid())?.issue_account_token(token, mails, event).await
    }

    async fn account_token(&self, hash: &TokenHash) -> Result<Option<AccountToken>, RepoError> {
        let tokens = self
            .inner
            .gather(
                |s| async move { Ok(s.account_token(hash).await?.into_iter().collect()) },
                |t: &AccountToken| t.user_id.as_uuid(),
            )
            .await?;
        Ok(tokens.into_iter().next())
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
        // A confirmed email change moves the claims as `update_user` does.
        self.inner
            .write_user(user, at, |s| async move {
                s.redeem_account_token(token_id, purpose, user, expected, revoke, at, event).await
            })
            .await
    }

    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMail>, RepoError> {
        let mut mails = Vec::new();
        for store in self.inner.rotated() {
            let want = limit.saturating_sub(mails.len() as u32);
            if want == 0 {
                break;
            }
            mails.extend(store.claim_due_mails(now, lease_until, want).await?);
        }
        Ok(mails)
    }

    async fn record_mail(&self, mail: &QueuedMail) -> Result<(), RepoError> {
        // An update by id: a no-op on the shards that do not hold it.
        self.inner.on_all(false, |s| async move { s.record_mail(mail).await.map(|()| 0) }).await.map(drop)
    }

    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.on_all(false, |s| async move { s.prune_lifecycle(before, limit).await }).await
    }
}

#[async_trait]
impl MfaRepository for ShardedStore {
    async fn totp_of(&self, user_id: UserId) -> Result<Option<TotpRecord>, RepoError> {
        self.inner.store_of(user_id.as_uuid())?.totp_of(user_id).await
    }
    async fn save_totp(
        &self,
        record: &TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        self.inner.writer_of(record.user_id.as_uuid())?.save_totp(record, expected, event).await
    }
    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError> {
        self.inner.writer_of(user_id.as_uuid())?.delete_totp(user_id, expected, event).await
    }
}

#[async_trait]
impl ExternalIdRepository for ShardedStore {
    async fn external_id_of(&self, user: UserId) -> Result<Option<ExternalId>, RepoError> {
        self.inner.store_of(user.as_uuid())?.external_id_of(user).await
    }
    async fn set_external_id(&self, user: UserId, external_id: Option<&ExternalId>) -> Result<(), RepoError> {
        self.inner.writer_of(user.as_uuid())?.set_external_id(user, external_id).await
    }
    async fn users_by_external_id(&self, external_id: &ExternalId) -> Result<Vec<UserId>, RepoError> {
        let ids = self
            .inner
            .gather(|s| async move { s.users_by_external_id(external_id).await }, |id: &UserId| id.as_uuid())
            .await?;
        Ok(first(ids, |id| id.as_uuid(), 0, usize::MAX))
    }
    async fn enterprise_of(&self, user: UserId) -> Result<Option<EnterpriseUser>, RepoError> {
        self.inner.store_of(user.as_uuid())?.enterprise_of(user).await
    }
    async fn set_enterprise(&self, user: UserId, enterprise: &EnterpriseUser) -> Result<(), RepoError> {
        self.inner.writer_of(user.as_uuid())?.set_enterprise(user, enterprise).await
    }
    async fn users_by_employee_number(&self, number: &EnterpriseText) -> Result<Vec<UserId>, RepoError> {
        let ids = self
            .inner
            .gather(|s| async move { s.users_by_employee_number(number).await }, |id: &UserId| id.as_uuid())
            .await?;
        Ok(first(ids, |id| id.as_uuid(), 0, usize::MAX))
    }
}

/// Groups: every shard mirrors every group row, and holds the membership rows of its own
/// users (a membership joins its user row). A group's home is the shard of its id's
/// logical shard: its copy is the one read, its transaction carries the event; the mirrors
/// are written after it with the same event, marked published at once (the relay reads a
/// group's events from its home only, so a copy left unpublished by a crash is never
/// sent). Group writes pause while any logical shard they touch is moving.
impl ShardedStore {
    fn group_home(&self, id: GroupId) -> Result<usize, RepoError> {
        Ok(self.inner.writable_route(logical_shard(id.as_uuid(), self.inner.count))?.shard)
    }

    /// `ids` split by the shard that holds them (for a write: refusing ids of a moving
    /// logical shard).
    fn members_by_shard(&self, ids: &[UserId], write: bool) -> Result<Vec<Vec<UserId>>, RepoError> {
        let mut by_shard = vec![Vec::new(); self.inner.shards.len()];
        for id in ids {
            let logical = logical_shard(id.as_uuid(), self.inner.count);
            let route = if write { self.inner.writable_route(logical)? } else { self.inner.route(logical) };
            by_shard[route.shard].push(*id);
        }
        Ok(by_shard)
    }

    /// Every group write that replaces all member rows touches every logical shard.
    fn no_move_in_flight(&self) -> Result<(), RepoError> {
        match self.inner.routes.read().iter().position(|r| !r.writable) {
            Some(logical) => {
                self.inner.writes_refused.fetch_add(1, Relaxed);
                Err(moving(logical as u16))
            }
            None => Ok(()),
        }
    }

    /// Home first, then every mirror, each mirror's copy of the event marked published.
    async fn on_group_shards<T, F, Fut>(&self, home: usize, event: &OutboxEvent, write: F) -> Result<Vec<T>, RepoError>
    where
        F: Fn(usize, Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RepoError>>,
    {
        let shards = &self.inner.shards;
        let mut out = vec![write(home, shards[home].1.clone()).await?];
        for (index, (_, store)) in shards.iter().enumerate().filter(|(i, _)| *i != home) {
            out.push(write(index, store.clone()).await?);
            store.mark_published(&[event.id], event.created_at).await?;
        }
        Ok(out)
    }
}

#[async_trait]
impl GroupRepository for ShardedStore {
    async fn create_group(&self, group: &Group, members: &[UserId], event: &OutboxEvent) -> Result<(), RepoError> {
        let home = self.group_home(group.id)?;
        let members = &self.members_by_shard(members, true)?;
        self.on_group_shards(home, event, |i, s| async move { s.create_group(group, &members[i], event).await })
            .await
            .map(drop)
    }

    async fn group_by_id(&self, id: GroupId) -> Result<Option<Group>, RepoError> {
        let route = self.inner.route(logical_shard(id.as_uuid(), self.inner.count));
        self.inner.shards[route.shard].1.group_by_id(id).await
    }

    async fn list_groups(&self, query: &GroupListQuery) -> Result<Vec<Group>, RepoError> {
        // Every shard has every group; each is read from its home, for its version.
        let routes = self.inner.routes.read().clone();
        let mut groups = Vec::new();
        for (index, (_, store)) in self.inner.shards.iter().enumerate() {
            let page = store.list_groups(query).await?;
            groups.extend(page.into_iter().filter(|g| self.inner.owns(&routes, index, g.id.as_uuid())));
        }
        Ok(first(groups, |g| g.id.as_uuid(), 0, query.limit as usize))
    }

    async fn update_group(
        &self,
        group: &Group,
        expected: Version,
        members: &MembershipChange,
        event: &OutboxEvent,
    ) -> Result<MembershipDelta, RepoError> {
        let home = self.group_home(group.id)?;
        if members.replace {
            self.no_move_in_flight()?;
        }
        let adds = self.members_by_shard(&members.add, true)?;
        let removes = self.members_by_shard(&members.remove, true)?;
        let (adds, removes) = (&adds, &removes);
        let deltas = self
            .on_group_shards(home, event, |i, s| async move {
                let change =
                    MembershipChange { replace: members.replace, add: adds[i].clone(), remove: removes[i].clone() };
                s.update_group(group, expected, &change, event).await
            })
            .await?;
        Ok(deltas.iter().fold(MembershipDelta::default(), |sum, d| MembershipDelta {
            added: sum.added + d.added,
            removed: sum.removed + d.removed,
        }))
    }

    async fn delete_group(&self, id: GroupId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        let home = self.group_home(id)?;
        self.no_move_in_flight()?;
        self.on_group_shards(home, event, |_, s| async move { s.delete_group(id, expected, event).await })
            .await
            .map(drop)
    }

    async fn group_members(&self, query: &MemberQuery) -> Result<Vec<GroupMember>, RepoError> {
        let rows = self
            .inner
            .gather(|s| async move { s.group_members(query).await }, |m: &GroupMember| m.user_id.as_uuid())
            .await?;
        Ok(first(rows, |m| m.user_id.as_uuid(), 0, query.limit as usize))
    }

    async fn groups_of_user(&self, user: UserId) -> Result<Vec<Group>, RepoError> {
        self.inner.store_of(user.as_uuid())?.groups_of_user(user).await
    }

    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        let by_shard = self.members_by_shard(ids, false)?;
        let mut found = Vec::new();
        for (index, ids) in by_shard.iter().enumerate().filter(|(_, ids)| !ids.is_empty()) {
            found.extend(self.inner.shards[index].1.existing_user_ids(ids).await?);
        }
        found.sort();
        Ok(found)
    }
}

/// Provisioning clients belong to the deployment, not to a user: the catalog.
#[async_trait]
impl ProvisioningTokenRepository for ShardedStore {
    async fn create_provisioning_token(&self, token: &ProvisioningToken) -> Result<(), RepoError> {
        self.inner.catalog.create_provisioning_token(token).await
    }
    async fn provisioning_tokens(&self) -> Result<Vec<ProvisioningToken>, RepoError> {
        self.inner.catalog.provisioning_tokens().await
    }
    async fn provisioning_token_by_hash(&self, hash: &TokenHash) -> Result<Option<ProvisioningToken>, RepoError> {
        self.inner.catalog.provisioning_token_by_hash(hash).await
    }
    async fn revoke_provisioning_token(&self, id: Uuid, at: Timestamp) -> Result<bool, RepoError> {
        self.inner.catalog.revoke_provisioning_token(id, at).await
    }
}

/// Events live with the rows they describe: a user's on its shard, a webhook endpoint's in
/// the catalog. The relay reads them all; leases are the catalog's.
#[async_trait]
impl OutboxRepository for ShardedStore {
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError> {
        if event.aggregate_id.is_nil() {
            return self.inner.catalog.record_event(event).await;
        }
        self.inner.writer_of(event.aggregate_id)?.record_event(event).await
    }

    async fn pending_events(&self, partitions: &[u16], limit: u32) -> Result<Vec<StoredEvent>, RepoError> {
        let inner = &self.inner;
        let mut events = inner.catalog.pending_events(partitions, limit).await?;
        let routes = inner.routes.read().clone();
        let n = inner.shards.len();
        let start = inner.next.fetch_add(1, Relaxed);
        for index in (0..n).map(|i| (start + i) % n) {
            let want = limit.saturating_sub(events.len() as u32);
            if want == 0 {
                break;
            }
            let found = inner.shards[index].1.pending_events(partitions, want).await?;
            events.extend(found.into_iter().filter(|e| inner.owns(&routes, index, e.aggregate_id)));
        }
        Ok(events)
    }

    async fn mark_published(&self, ids: &[Uuid], at: Timestamp) -> Result<(), RepoError> {
        self.inner.on_all(true, |s| async move { s.mark_published(ids, at).await.map(|()| 0) }).await.map(drop)
    }

    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.on_all(true, |s| async move { s.prune_published(before, limit).await }).await
    }

    async fn outbox_backlog(&self) -> Result<Backlog, RepoError> {
        let mut total = self.inner.catalog.outbox_backlog().await?;
        for (_, store) in &self.inner.shards {
            let backlog = store.outbox_backlog().await?;
            total.count += backlog.count;
            total.oldest = match (total.oldest, backlog.oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(total)
    }

    async fn relay_leases(&self) -> Result<Vec<RelayLease>, RepoError> {
        self.inner.catalog.relay_leases().await
    }
    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError> {
        self.inner.catalog.claim_lease(name, owner, now, until).await
    }
    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError> {
        self.inner.catalog.release_lease(name, owner).await
    }
    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget_before: Timestamp) -> Result<(), RepoError> {
        self.inner.catalog.relay_heartbeat(owner, until, forget_before).await
    }
}

#[async_trait]
impl AuditRepository for ShardedStore {
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<u64, RepoError> {
        self.inner.catalog.append_audit(entries).await
    }
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RepoError> {
        self.inner.catalog.audit_entries(query).await
    }
    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.catalog.prune_audit(before, limit).await
    }
}

#[async_trait]
impl WebhookRepository for ShardedStore {
    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<(), RepoError> {
        self.inner.catalog.create_webhook_endpoint(endpoint).await
    }
    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, RepoError> {
        self.inner.catalog.webhook_endpoint(id).await
    }
    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError> {
        self.inner.catalog.webhook_endpoints().await
    }
    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        self.inner.catalog.update_webhook_endpoint(endpoint, event).await
    }
    async fn delete_webhook_endpoint(&self, id: Uuid) -> Result<bool, RepoError> {
        self.inner.catalog.delete_webhook_endpoint(id).await
    }
    async fn enqueue_deliveries(&self, deliveries: &[WebhookDelivery]) -> Result<u64, RepoError> {
        self.inner.catalog.enqueue_deliveries(deliveries).await
    }
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepoError> {
        self.inner.catalog.claim_due_deliveries(now, lease_until, limit).await
    }
    async fn record_delivery(
        &self,
        delivery: &WebhookDelivery,
        attempt: Option<&WebhookAttempt>,
    ) -> Result<(), RepoError> {
        self.inner.catalog.record_delivery(delivery, attempt).await
    }
    async fn webhook_delivery(&self, endpoint_id: Uuid, id: Uuid) -> Result<Option<WebhookDelivery>, RepoError> {
        self.inner.catalog.webhook_delivery(endpoint_id, id).await
    }
    async fn webhook_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError> {
        self.inner.catalog.webhook_deliveries(query).await
    }
    async fn webhook_attempts(&self, delivery_id: Uuid) -> Result<Vec<WebhookAttempt>, RepoError> {
        self.inner.catalog.webhook_attempts(delivery_id).await
    }
    async fn replay_delivery(&self, endpoint_id: Uuid, id: Uuid, now: Timestamp) -> Result<bool, RepoError> {
        self.inner.catalog.replay_delivery(endpoint_id, id, now).await
    }
    async fn replay_failed_deliveries(
        &self,
        endpoint_id: Uuid,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, RepoError> {
        self.inner.catalog.replay_failed_deliveries(endpoint_id, since, now).await
    }
}

/// Whole-database backups are per database: back up the catalog and each shard with its
/// own URL. The per-logical-shard calls are what a move uses.
#[async_trait]
impl BackupRepository for ShardedStore {
    async fn export_snapshot(&self, _: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        Err(unsharded("a whole-store backup (back up the catalog and each shard by URL)"))
    }
    async fn import_snapshot(&self, _: mpsc::Receiver<Load>, _: OnExisting) -> Result<u64, RepoError> {
        Err(unsharded("a whole-store restore (restore the catalog and each shard by URL)"))
    }
    async fn row_counts(&self) -> Result<Vec<u64>, RepoError> {
        let mut counts = self.inner.catalog.row_counts().await?;
        for (_, store) in &self.inner.shards {
            for (total, n) in counts.iter_mut().zip(store.row_counts().await?) {
                *total += n;
            }
        }
        Ok(counts)
    }
    async fn export_shard(&self, scope: ShardScope, out: mpsc::Sender<Batch>) -> Result<(), RepoError> {
        let route = self.inner.route(scope.logical);
        self.inner.shards[route.shard].1.export_shard(scope, out).await
    }
    async fn replace_shard(&self, _: ShardScope, _: mpsc::Receiver<Load>) -> Result<u64, RepoError> {
        Err(unsharded("writing a logical shard through the router (move it with `strata shards move`)"))
    }
    async fn delete_shard(&self, _: ShardScope) -> Result<u64, RepoError> {
        Err(unsharded("deleting a logical shard through the router"))
    }
}

strata_core::forward_shard_catalog!(ShardedStore, |self| self.inner.catalog);

#[async_trait]
impl Store for ShardedStore {
    fn backend(&self) -> &'static str {
        self.inner.catalog.backend()
    }
    async fn ping(&self) -> Result<(), RepoError> {
        self.inner.catalog.ping().await?;
        for (_, store) in &self.inner.shards {
            store.ping().await?;
        }
        Ok(())
    }
    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        self.inner.shards[0].1.explain_hot_paths().await
    }
    fn pool_stats(&self) -> PoolStats {
        let mut total = self.inner.catalog.pool_stats();
        for (_, store) in &self.inner.shards {
            let s = store.pool_stats();
            total.size += s.size;
            total.idle += s.idle;
            total.waiting += s.waiting;
            total.acquires += s.acquires;
            total.wait_seconds += s.wait_seconds;
            total.hold_seconds += s.hold_seconds;
        }
        total
    }
    fn logical_shards(&self) -> Option<u16> {
        Some(self.inner.count)
    }
    fn shard_routing(&self) -> Option<strata_core::ports::ShardRouting> {
        let inner = &self.inner;
        Some(strata_core::ports::ShardRouting {
            map_age_seconds: inner.refreshed.lock().elapsed().as_secs_f64(),
            paused: inner.routes.read().iter().filter(|r| !r.writable).count() as u64,
            writes_refused: inner.writes_refused.load(Relaxed),
        })
    }
    /// The read replicas of every shard that has some, their fallbacks summed.
    fn read_routing(&self) -> Option<strata_core::ports::ReadRouting> {
        let mut all: Option<strata_core::ports::ReadRouting> = None;
        for routing in self.inner.shards.iter().filter_map(|(_, store)| store.read_routing()) {
            let total = all.get_or_insert_with(Default::default);
            total.replicas.extend(routing.replicas);
            for (reason, reads) in routing.primary {
                match total.primary.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, sum)) => *sum += reads,
                    None => total.primary.push((reason, reads)),
                }
            }
        }
        all
    }
}
