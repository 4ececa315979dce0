//! End-to-end cache tests: single-flight against a counting store, zero failed requests
//! while private Redis/Memcached servers are killed and restarted under a stream of
//! requests, and cross-instance staleness (two Strata instances, one database, one Redis).
//! Every server here is a private process on a spare loopback port; observed delays are
//! printed, never asserted against a tight bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use strata_cache::testing::ServerProcess;
use strata_core::domain::{
    Email, IdempotencyKey, IdempotencyRecord, OutboxEvent, Password, Session, SessionId, SessionToken, Timestamp,
    TokenHash, User, UserId, Version,
};
use strata_core::error::RepoError;
use strata_core::ports::{NoopObserver, PoolStats, QueryPlan, SessionRevocation, Store, UserListQuery};
use strata_core::service::{AccountSettings, Accounts, Actor, Registration};
use strata_core::webhooks::{DeliveryQuery, WebhookAttempt, WebhookDelivery, WebhookEndpoint};

use super::*;

/// Counts (and slows down) the two cached reads, so concurrent misses surely overlap.
struct CountingStore {
    inner: Arc<dyn Store>,
    session_reads: AtomicUsize,
    user_reads: AtomicUsize,
    delay: Duration,
    /// What happens after a session revocation has committed: a slow acknowledgement or a
    /// lost one (the error a timeout after commit would give).
    after_revoke: std::sync::Mutex<Option<AfterWrite>>,
}

#[derive(Clone, Copy)]
enum AfterWrite {
    Slow(Duration),
    Lost,
}

#[async_trait]
impl strata_core::ports::UserRepository for CountingStore {
    async fn create_user(
        &self,
        user: &User,
        idempotency: Option<&IdempotencyRecord>,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.create_user(user, idempotency, event).await
    }
    async fn idempotency_record(&self, key: &IdempotencyKey) -> Result<Option<IdempotencyRecord>, RepoError> {
        self.inner.idempotency_record(key).await
    }
    async fn purge_idempotency_keys(&self, before: Timestamp) -> Result<u64, RepoError> {
        self.inner.purge_idempotency_keys(before).await
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, RepoError> {
        self.user_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.user_by_id(id).await
    }
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, RepoError> {
        self.inner.user_by_email(email).await
    }
    async fn update_user(
        &self,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.update_user(user, expected, revoke, event).await
    }
    async fn delete_user(&self, id: UserId, expected: Option<Version>, event: &OutboxEvent) -> Result<(), RepoError> {
        self.inner.delete_user(id, expected, event).await
    }
    async fn list_users(&self, query: &UserListQuery) -> Result<Vec<User>, RepoError> {
        self.inner.list_users(query).await
    }
    async fn search_users(&self, search: &strata_core::ports::UserSearch) -> Result<Vec<User>, RepoError> {
        self.inner.search_users(search).await
    }
    async fn count_users(&self, predicate: Option<&strata_core::ports::UserPredicate>) -> Result<u64, RepoError> {
        self.inner.count_users(predicate).await
    }
}

#[async_trait]
impl strata_core::ports::SessionRepository for CountingStore {
    async fn create_session(&self, session: &Session, event: &OutboxEvent) -> Result<(), RepoError> {
        self.inner.create_session(session, event).await
    }
    async fn session_with_user(&self, token_hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        self.session_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.session_with_user(token_hash).await
    }
    async fn revoke_session(&self, id: SessionId, at: Timestamp, event: &OutboxEvent) -> Result<bool, RepoError> {
        let out = self.inner.revoke_session(id, at, event).await;
        let after = *self.after_revoke.lock().unwrap();
        match after {
            None => out,
            Some(AfterWrite::Slow(d)) => {
                tokio::time::sleep(d).await;
                out
            }
            Some(AfterWrite::Lost) => Err(RepoError::Unavailable("connection lost after commit".into())),
        }
    }
    async fn sessions_of_user(&self, user_id: UserId) -> Result<Vec<Session>, RepoError> {
        self.inner.sessions_of_user(user_id).await
    }
}

#[async_trait]
impl strata_core::ports::OutboxRepository for CountingStore {
    async fn record_event(&self, event: &OutboxEvent) -> Result<(), RepoError> {
        self.inner.record_event(event).await
    }
    async fn pending_events(
        &self,
        partitions: &[u16],
        limit: u32,
    ) -> Result<Vec<strata_core::domain::StoredEvent>, RepoError> {
        self.inner.pending_events(partitions, limit).await
    }
    async fn mark_published(&self, ids: &[uuid::Uuid], at: Timestamp) -> Result<(), RepoError> {
        self.inner.mark_published(ids, at).await
    }
    async fn prune_published(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.prune_published(before, limit).await
    }
    async fn outbox_backlog(&self) -> Result<strata_core::domain::Backlog, RepoError> {
        self.inner.outbox_backlog().await
    }
    async fn relay_leases(&self) -> Result<Vec<strata_core::domain::RelayLease>, RepoError> {
        self.inner.relay_leases().await
    }
    async fn claim_lease(&self, name: &str, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool, RepoError> {
        self.inner.claim_lease(name, owner, now, until).await
    }
    async fn release_lease(&self, name: &str, owner: &str) -> Result<(), RepoError> {
        self.inner.release_lease(name, owner).await
    }
    async fn relay_heartbeat(&self, owner: &str, until: Timestamp, forget: Timestamp) -> Result<(), RepoError> {
        self.inner.relay_heartbeat(owner, until, forget).await
    }
}

#[async_trait]
impl strata_core::ports::AuditRepository for CountingStore {
    async fn append_audit(&self, entries: &[strata_core::domain::AuditEntry]) -> Result<u64, RepoError> {
        self.inner.append_audit(entries).await
    }
    async fn audit_entries(
        &self,
        query: &strata_core::domain::AuditQuery,
    ) -> Result<Vec<strata_core::domain::AuditEntry>, RepoError> {
        self.inner.audit_entries(query).await
    }
    async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.prune_audit(before, limit).await
    }
}

/// Webhooks pass straight through.
#[async_trait]
impl strata_core::ports::WebhookRepository for CountingStore {
    async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<(), RepoError> {
        self.inner.create_webhook_endpoint(e).await
    }
    async fn webhook_endpoint(&self, id: uuid::Uuid) -> Result<Option<WebhookEndpoint>, RepoError> {
        self.inner.webhook_endpoint(id).await
    }
    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, RepoError> {
        self.inner.webhook_endpoints().await
    }
    async fn update_webhook_endpoint(&self, e: &WebhookEndpoint, event: Option<&OutboxEvent>) -> Result<(), RepoError> {
        self.inner.update_webhook_endpoint(e, event).await
    }
    async fn delete_webhook_endpoint(&self, id: uuid::Uuid) -> Result<bool, RepoError> {
        self.inner.delete_webhook_endpoint(id).await
    }
    async fn enqueue_deliveries(&self, d: &[WebhookDelivery]) -> Result<u64, RepoError> {
        self.inner.enqueue_deliveries(d).await
    }
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepoError> {
        self.inner.claim_due_deliveries(now, lease_until, limit).await
    }
    async fn record_delivery(&self, d: &WebhookDelivery, a: Option<&WebhookAttempt>) -> Result<(), RepoError> {
        self.inner.record_delivery(d, a).await
    }
    async fn webhook_delivery(
        &self,
        endpoint: uuid::Uuid,
        id: uuid::Uuid,
    ) -> Result<Option<WebhookDelivery>, RepoError> {
        self.inner.webhook_delivery(endpoint, id).await
    }
    async fn webhook_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<WebhookDelivery>, RepoError> {
        self.inner.webhook_deliveries(q).await
    }
    async fn webhook_attempts(&self, delivery: uuid::Uuid) -> Result<Vec<WebhookAttempt>, RepoError> {
        self.inner.webhook_attempts(delivery).await
    }
    async fn replay_delivery(&self, endpoint: uuid::Uuid, id: uuid::Uuid, now: Timestamp) -> Result<bool, RepoError> {
        self.inner.replay_delivery(endpoint, id, now).await
    }
    async fn replay_failed_deliveries(
        &self,
        endpoint: uuid::Uuid,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<u64, RepoError> {
        self.inner.replay_failed_deliveries(endpoint, since, now).await
    }
}

/// Groups pass straight through.
#[async_trait]
impl strata_core::ports::GroupRepository for CountingStore {
    async fn create_group(
        &self,
        g: &strata_core::groups::Group,
        m: &[UserId],
        e: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.create_group(g, m, e).await
    }
    async fn group_by_id(
        &self,
        id: strata_core::domain::GroupId,
    ) -> Result<Option<strata_core::groups::Group>, RepoError> {
        self.inner.group_by_id(id).await
    }
    async fn list_groups(
        &self,
        q: &strata_core::groups::GroupListQuery,
    ) -> Result<Vec<strata_core::groups::Group>, RepoError> {
        self.inner.list_groups(q).await
    }
    async fn update_group(
        &self,
        g: &strata_core::groups::Group,
        expected: Version,
        m: &strata_core::groups::MembershipChange,
        e: &OutboxEvent,
    ) -> Result<strata_core::groups::MembershipDelta, RepoError> {
        self.inner.update_group(g, expected, m, e).await
    }
    async fn delete_group(
        &self,
        id: strata_core::domain::GroupId,
        expected: Option<Version>,
        e: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.delete_group(id, expected, e).await
    }
    async fn group_members(
        &self,
        q: &strata_core::groups::MemberQuery,
    ) -> Result<Vec<strata_core::groups::GroupMember>, RepoError> {
        self.inner.group_members(q).await
    }
    async fn groups_of_user(&self, u: UserId) -> Result<Vec<strata_core::groups::Group>, RepoError> {
        self.inner.groups_of_user(u).await
    }
    async fn existing_user_ids(&self, ids: &[UserId]) -> Result<Vec<UserId>, RepoError> {
        self.inner.existing_user_ids(ids).await
    }
}

/// External ids pass straight through.
#[async_trait]
impl strata_core::ports::ExternalIdRepository for CountingStore {
    async fn external_id_of(&self, u: UserId) -> Result<Option<strata_core::groups::ExternalId>, RepoError> {
        self.inner.external_id_of(u).await
    }
    async fn set_external_id(&self, u: UserId, e: Option<&strata_core::groups::ExternalId>) -> Result<(), RepoError> {
        self.inner.set_external_id(u, e).await
    }
    async fn users_by_external_id(&self, e: &strata_core::groups::ExternalId) -> Result<Vec<UserId>, RepoError> {
        self.inner.users_by_external_id(e).await
    }
    async fn enterprise_of(&self, u: UserId) -> Result<Option<strata_core::groups::EnterpriseUser>, RepoError> {
        self.inner.enterprise_of(u).await
    }
    async fn set_enterprise(&self, u: UserId, e: &strata_core::groups::EnterpriseUser) -> Result<(), RepoError> {
        self.inner.set_enterprise(u, e).await
    }
    async fn users_by_employee_number(
        &self,
        n: &strata_core::groups::EnterpriseText,
    ) -> Result<Vec<UserId>, RepoError> {
        self.inner.users_by_employee_number(n).await
    }
}

/// Provisioning tokens pass straight through.
#[async_trait]
impl strata_core::ports::ProvisioningTokenRepository for CountingStore {
    async fn create_provisioning_token(
        &self,
        t: &strata_core::provisioning::ProvisioningToken,
    ) -> Result<(), RepoError> {
        self.inner.create_provisioning_token(t).await
    }
    async fn provisioning_tokens(&self) -> Result<Vec<strata_core::provisioning::ProvisioningToken>, RepoError> {
        self.inner.provisioning_tokens().await
    }
    async fn provisioning_token_by_hash(
        &self,
        h: &TokenHash,
    ) -> Result<Option<strata_core::provisioning::ProvisioningToken>, RepoError> {
        self.inner.provisioning_token_by_hash(h).await
    }
    async fn revoke_provisioning_token(&self, id: uuid::Uuid, at: Timestamp) -> Result<bool, RepoError> {
        self.inner.revoke_provisioning_token(id, at).await
    }
}

#[async_trait]
impl strata_core::ports::LifecycleRepository for CountingStore {
    async fn issue_account_token(
        &self,
        token: &strata_core::lifecycle::AccountToken,
        mails: &[strata_core::lifecycle::QueuedMail],
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.issue_account_token(token, mails, event).await
    }
    async fn account_token(
        &self,
        hash: &strata_core::domain::TokenHash,
    ) -> Result<Option<strata_core::lifecycle::AccountToken>, RepoError> {
        self.inner.account_token(hash).await
    }
    async fn redeem_account_token(
        &self,
        token_id: uuid::Uuid,
        purpose: strata_core::lifecycle::TokenPurpose,
        user: &User,
        expected: Version,
        revoke: SessionRevocation,
        at: Timestamp,
        event: &OutboxEvent,
    ) -> Result<(), RepoError> {
        self.inner.redeem_account_token(token_id, purpose, user, expected, revoke, at, event).await
    }
    async fn claim_due_mails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<strata_core::lifecycle::QueuedMail>, RepoError> {
        self.inner.claim_due_mails(now, lease_until, limit).await
    }
    async fn record_mail(&self, mail: &strata_core::lifecycle::QueuedMail) -> Result<(), RepoError> {
        self.inner.record_mail(mail).await
    }
    async fn prune_lifecycle(&self, before: Timestamp, limit: u32) -> Result<u64, RepoError> {
        self.inner.prune_lifecycle(before, limit).await
    }
}

#[async_trait]
impl strata_core::ports::MfaRepository for CountingStore {
    async fn totp_of(&self, user_id: UserId) -> Result<Option<strata_core::totp::TotpRecord>, RepoError> {
        self.inner.totp_of(user_id).await
    }
    async fn save_totp(
        &self,
        record: &strata_core::totp::TotpRecord,
        expected: Option<i64>,
        event: Option<&OutboxEvent>,
    ) -> Result<(), RepoError> {
        self.inner.save_totp(record, expected, event).await
    }
    async fn delete_totp(&self, user_id: UserId, expected: Option<i64>, event: &OutboxEvent) -> Result<(), RepoError> {
        self.inner.delete_totp(user_id, expected, event).await
    }
}

#[async_trait]
impl strata_core::backup::BackupRepository for CountingStore {
    async fn export_snapshot(
        &self,
        out: tokio::sync::mpsc::Sender<strata_core::backup::Batch>,
    ) -> Result<(), RepoError> {
        self.inner.export_snapshot(out).await
    }
    async fn import_snapshot(
        &self,
        rows: tokio::sync::mpsc::Receiver<strata_core::backup::Load>,
        existing: strata_core::backup::OnExisting,
    ) -> Result<u64, RepoError> {
        self.inner.import_snapshot(rows, existing).await
    }
    async fn row_counts(&self) -> Result<Vec<u64>, RepoError> {
        self.inner.row_counts().await
    }
    async fn export_shard(
        &self,
        scope: strata_core::backup::ShardScope,
        out: tokio::sync::mpsc::Sender<strata_core::backup::Batch>,
    ) -> Result<(), RepoError> {
        self.inner.export_shard(scope, out).await
    }
    async fn replace_shard(
        &self,
        scope: strata_core::backup::ShardScope,
        rows: tokio::sync::mpsc::Receiver<strata_core::backup::Load>,
    ) -> Result<u64, RepoError> {
        self.inner.replace_shard(scope, rows).await
    }
    async fn delete_shard(&self, scope: strata_core::backup::ShardScope) -> Result<u64, RepoError> {
        self.inner.delete_shard(scope).await
    }
}

strata_core::forward_shard_catalog!(CountingStore, |self| self.inner);

#[async_trait]
impl Store for CountingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), RepoError> {
        self.inner.ping().await
    }
    async fn explain_hot_paths(&self) -> Result<Vec<QueryPlan>, RepoError> {
        self.inner.explain_hot_paths().await
    }
    fn pool_stats(&self) -> PoolStats {
        self.inner.pool_stats()
    }
}

/// Accounts over a counting SQLite store with an in-process cache, plus a logged-in token.
async fn counted_accounts(what: &str, delay: Duration) -> (Arc<CountingStore>, Arc<Accounts>, User, String, TestDb) {
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let config = test_config(&db.url);
    let inner = strata::app::connect_store(&config).await.unwrap();
    let store = Arc::new(CountingStore {
        inner,
        session_reads: AtomicUsize::new(0),
        user_reads: AtomicUsize::new(0),
        delay,
        after_revoke: std::sync::Mutex::new(None),
    });
    let cache = strata_cache::open("memory://", &strata_cache::CacheOptions::default(), Arc::new(NoopObserver))
        .unwrap()
        .unwrap();
    let accounts = Arc::new(
        Accounts::new(
            store.clone(),
            Arc::new(strata_core::password::PasswordHasher::new(config.hasher_settings()).unwrap()),
            strata_core::throttle::Throttle::local(config.throttle_settings()),
            Arc::new(SystemClock),
            Arc::new(NoopObserver),
            AccountSettings::default(),
        )
        .with_cache(cache, config.cache_settings(), config.cache_signer(), Arc::new(NoopObserver)),
    );
    let reg = Registration {
        email: Email::parse("flight@example.com").unwrap(),
        name: strata_core::domain::DisplayName::parse("Flight").unwrap(),
        password: Password::parse_new(PASSWORD).unwrap(),
    };
    let user = accounts.register(reg, None, "test").await.unwrap().user;
    let login = accounts.login(&user.email, &Password::parse_login(PASSWORD).unwrap(), "test").await.unwrap();
    (store, accounts, user, login.token.expose(), db)
}

/// A logout whose caller goes away after the revocation committed (the handler future is
/// dropped while the acknowledgement is slow), and one whose acknowledgement is lost: in
/// both the cached session stops working. Before commit and invalidation were one unit,
/// the first left the session usable from the cache for its TTL, and the second returned
/// the error before invalidating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_cache_whatever_happens_to_the_caller() {
    let (store, accounts, _, token, _db) = counted_accounts("cache revocation unit", Duration::ZERO).await;
    let token = SessionToken::parse(&token).unwrap();
    let (session, _) = accounts.authenticate(&token).await.unwrap();
    let reads = store.session_reads.load(Ordering::SeqCst);
    accounts.authenticate(&token).await.unwrap();
    assert_eq!(store.session_reads.load(Ordering::SeqCst), reads, "the session is served from the cache");

    *store.after_revoke.lock().unwrap() = Some(AfterWrite::Slow(Duration::from_millis(300)));
    let cancelled = tokio::time::timeout(Duration::from_millis(20), accounts.logout(&session)).await;
    assert!(cancelled.is_err(), "the logout was meant to be cut off mid-commit");
    let mut refused = false;
    for _ in 0..200 {
        if accounts.authenticate(&token).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "a logout cut off after its commit left the session usable from the cache");

    // The acknowledgement of a committed revocation is lost: the caller sees an error,
    // and the cache is invalidated anyway.
    let login = accounts
        .login(&Email::parse("flight@example.com").unwrap(), &Password::parse_login(PASSWORD).unwrap(), "test")
        .await
        .unwrap();
    let (second, _) = accounts.authenticate(&login.token).await.unwrap();
    accounts.authenticate(&login.token).await.unwrap();
    *store.after_revoke.lock().unwrap() = Some(AfterWrite::Lost);
    assert!(accounts.logout(&second).await.is_err());
    assert!(accounts.authenticate(&login.token).await.is_err(), "an ambiguous revocation was not invalidated");
}

/// N concurrent misses on one token (and on one user id) cost one database read each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_cost_one_database_read() {
    let (store, accounts, user, token, _db) = counted_accounts("cache single-flight", Duration::from_millis(200)).await;

    const N: usize = 64;
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (accounts, token) = (accounts.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let token = SessionToken::parse(&token).unwrap();
            accounts.authenticate(&token).await.map(|(_, u)| u.id)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), user.id);
    }
    assert_eq!(store.session_reads.load(Ordering::SeqCst), 1, "{N} concurrent session checks");

    let mut tasks = Vec::new();
    for _ in 0..N {
        let accounts = accounts.clone();
        tasks.push(tokio::spawn(async move { accounts.get_user(&Actor::System, user.id).await.map(|u| u.id) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), user.id);
    }
    assert_eq!(store.user_reads.load(Ordering::SeqCst), 1, "{N} concurrent user reads");

    // Garbage tokens are cached negatively: repeating one costs one read, then none.
    let garbage = SessionToken::generate();
    for _ in 0..10 {
        assert!(accounts.authenticate(&garbage).await.is_err());
    }
    assert_eq!(store.session_reads.load(Ordering::SeqCst), 2);
}

/// What every test instance seals its cached values with, as a fleet would share one.
const SHARED_CACHE_SECRET: &str = "shared-test-cache-secret";

/// An instance on SQLite with `cache_url`; its real server on port 0.
async fn spawn_cached(
    what: &str,
    db: TestDb,
    cache_url: &str,
    l1: &str,
    config_db_url: Option<&str>,
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, Arc<Accounts>) {
    let mut config = test_config(config_db_url.unwrap_or(&db.url));
    config.cache.url = cache_url.to_owned();
    config.cache.l1 = l1.to_owned();
    config.cache.secret = Some(strata_core::secret::Secret::new(SHARED_CACHE_SECRET));
    // Generous per-call deadline: a busy 2-core test machine must not time out a healthy
    // cache; dead servers refuse connections at once anyway.
    config.cache.timeout_ms = 250;
    config.cache.breaker_failures = 3;
    config.cache.breaker_open_ms = 200;
    tweak(&mut config);
    let app = Application::build_with_clock(config, Arc::new(SystemClock)).await.expect(what);
    let accounts = app.accounts().clone();
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    (TestApp { addr, client, clock, shutdown: Some(tx), server: Some(server), _db: db, _shards: Vec::new() }, accounts)
}

/// Polls (bounded) until the instance's invalidation subscriber is connected, so its L1
/// is in use.
async fn wait_subscribed(accounts: &Accounts) {
    for _ in 0..250 {
        if accounts.cache().unwrap().generation() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("invalidation subscriber never connected");
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

async fn session_hits(app: &TestApp) -> u64 {
    let m = app.get("/metrics", None).await;
    metric(&String::from_utf8_lossy(&m.raw), r#"strata_cache_lookups_total{kind="session",outcome="hit"}"#)
}

/// Session checks from `clients` concurrent clients, `per_client` each; returns how many
/// were not 200.
async fn stream_of_session_checks(app: &Arc<TestApp>, token: &str, clients: usize, per_client: usize) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (app, token) = (app.clone(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..per_client {
                if app.get("/v1/sessions/current", Some(&token)).await.status != StatusCode::OK {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    failed
}

/// Redis primary + replica; the primary is killed during a stream of requests, then the
/// replica too, then both come back: zero failed requests throughout, readiness stays,
/// metrics show the degradation, and cache hits resume without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failures_never_fail_requests() {
    let what = "cache redis failover e2e";
    let Some(mut primary) = ServerProcess::redis(what, None) else { return };
    let Some(mut replica) = ServerProcess::redis(what, Some(primary.port())) else { return };
    replica.wait_replica_synced().unwrap();
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let url = format!("redis://{}?replica={}", primary.addr(), replica.addr());
    let (app, _) = spawn_cached(what, db, &url, "off", None, |_| {}).await;
    let app = Arc::new(app);
    let (_, token) = app.user_with_token("fail@example.com").await;
    assert_eq!(stream_of_session_checks(&app, &token, 4, 25).await, 0);
    assert!(session_hits(&app).await > 0, "the cache is in use");

    // Kill the primary while requests are in flight.
    let streaming = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { stream_of_session_checks(&app, &token, 4, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    primary.kill();
    assert_eq!(streaming.await.unwrap(), 0, "requests failed when the primary died");
    let hits_on_replica = session_hits(&app).await;
    assert_eq!(stream_of_session_checks(&app, &token, 4, 25).await, 0);
    assert!(session_hits(&app).await > hits_on_replica, "the replica answers reads");

    // Now the whole cache is gone.
    let streaming = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { stream_of_session_checks(&app, &token, 4, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    replica.kill();
    assert_eq!(streaming.await.unwrap(), 0, "requests failed when the cache died");
    assert_eq!(stream_of_session_checks(&app, &token, 2, 25).await, 0);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK, "readiness depends on the database, not the cache");
    let m = app.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&m.raw).into_owned();
    assert!(metric(&text, "strata_cache_degraded") >= 1, "{text}");
    // With every breaker open, requests skip the cache instead of paying for refused calls.
    let bypassed = r#"strata_cache_lookups_total{kind="session",outcome="bypass"}"#;
    assert!(metric(&text, bypassed) > 0, "{text}");
    let r = app.get("/v1/sessions/current", Some(&token)).await;
    assert!(r.header("server-timing").contains("cache;dur="), "{}", r.header("server-timing"));

    // Back again: hits resume with no restart of Strata.
    primary.restart().unwrap();
    let hits_before = session_hits(&app).await;
    let started = Instant::now();
    let mut resumed = false;
    for _ in 0..200 {
        assert_eq!(stream_of_session_checks(&app, &token, 1, 5).await, 0);
        if session_hits(&app).await > hits_before {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "cache hits did not resume after the primary came back");
    eprintln!("redis: hits resumed {:?} after the primary restarted", started.elapsed());
    let m = app.get("/metrics", None).await;
    assert_eq!(metric(&String::from_utf8_lossy(&m.raw), "strata_cache_degraded"), 1, "the replica is still down");
}

/// The same for Memcached (no replicas): killed mid-stream, zero failures; restarted,
/// hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_failures_never_fail_requests() {
    let what = "cache memcached failure e2e";
    let Some(mut server) = ServerProcess::memcached(what) else { return };
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let (app, _) = spawn_cached(what, db, &format!("memcache://{}", server.addr()), "ttl_ms=500", None, |_| {}).await;
    let app = Arc::new(app);
    let (_, token) = app.user_with_token("mc@example.com").await;
    assert_eq!(stream_of_session_checks(&app, &token, 4, 25).await, 0);
    let streaming = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move { stream_of_session_checks(&app, &token, 4, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.kill();
    assert_eq!(streaming.await.unwrap(), 0, "requests failed when memcached died");
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    server.restart().unwrap();
    // The L1 keeps answering through the outage (no broadcast to lose with Memcached), so
    // recovery is judged by hits in the L2 tier itself.
    let l2_hits = async || {
        let m = app.get("/metrics", None).await;
        metric(
            &String::from_utf8_lossy(&m.raw),
            r#"strata_cache_tier_operations_total{tier="l2",op="get",outcome="hit"}"#,
        )
    };
    let hits_before = l2_hits().await;
    let mut resumed = false;
    for _ in 0..200 {
        assert_eq!(stream_of_session_checks(&app, &token, 1, 5).await, 0);
        if l2_hits().await > hits_before {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "cache hits did not resume after memcached came back");
}

/// Two instances sharing one database and one Redis, each with an L1: a logout or an
/// email change on A reaches B by pub/sub. The L1 TTL here is ten minutes, far beyond how
/// long the test polls, so expiry cannot hide a broken broadcast: only the invalidation
/// message can make B see the change. A itself never serves the old state once the call
/// has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_instances_see_changes_within_the_bound() {
    let what = "cache cross-instance staleness";
    let Some(redis) = ServerProcess::redis(what, None) else { return };
    cross_instance_freshness(what, &format!("redis://{}", redis.addr()), |_| {}).await;
}

/// The same with Memcached, which has no broadcast: the invalidations ride the event bus
/// (NATS here), so the bound is the same as with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_instances_invalidate_over_the_event_bus() {
    let what = "cache cross-instance staleness over the bus";
    let nats = std::env::var("STRATA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let reachable = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(nats.trim_start_matches("nats://").trim_end_matches('/')),
    )
    .await;
    if !matches!(reachable, Ok(Ok(_))) {
        strata_core::testing::unusable(what, "nats", &format!("nothing listens at {nats}"));
        return;
    }
    let Some(memcached) = ServerProcess::memcached(what) else { return };
    // A namespace per run: no other test's invalidations in the way.
    let namespace = format!("cachetest{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    cross_instance_freshness(what, &format!("memcache://{}", memcached.addr()), |c| {
        c.events.url = nats.clone();
        c.events.namespace = namespace.clone();
    })
    .await;
}

/// Two instances on one database and one shared cache, each with an L1: a change made
/// through one is seen by the other promptly (the broadcast), not after the L1 TTL.
async fn cross_instance_freshness(what: &str, cache_url: &str, tweak: impl Fn(&mut Config)) {
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let shared_db_url = db.url.clone();
    // Long enough that no entry expires while the test runs.
    const L1: &str = "entries=1000,ttl_ms=600000";
    let (a, a_accounts) = spawn_cached(what, db, cache_url, L1, None, &tweak).await;
    // B's own TestDb is never used: B opens A's database.
    let unused = fresh(Backend::Sqlite, what).await.unwrap();
    let (b, b_accounts) = spawn_cached(what, unused, cache_url, L1, Some(&shared_db_url), &tweak).await;
    wait_subscribed(&a_accounts).await;
    wait_subscribed(&b_accounts).await;

    let (user, token) = a.user_with_token("stale@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let me = b.get("/v1/sessions/current", Some(&token)).await;
        assert_eq!(me.status, StatusCode::OK);
        assert_eq!(me.body["user"]["email"], "stale@example.com");
    }
    let m = b.get("/metrics", None).await;
    let l1_hits = metric(
        &String::from_utf8_lossy(&m.raw),
        r#"strata_cache_tier_operations_total{tier="l1",op="get",outcome="hit"}"#,
    );
    assert!(l1_hits > 0, "B serves the session from its L1");

    // Email change on A, by an admin (applied at once; a user's own change waits for its
    // confirmation, which invalidates the same way).
    let patch = a
        .send(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {ADMIN}")),
                ("if-match", "\"1\""),
            ],
            Some(Bytes::from(json!({"email": "fresh@example.com"}).to_string())),
        )
        .await;
    assert_eq!(patch.status, StatusCode::OK, "{}", patch.body);
    let changed = Instant::now();
    let here = a.get("/v1/sessions/current", Some(&token)).await;
    assert_eq!(here.body["user"]["email"], "fresh@example.com", "A itself must not serve the old email");
    let mut seen = None;
    for _ in 0..400 {
        let me = b.get("/v1/sessions/current", Some(&token)).await;
        if me.body["user"]["email"] == "fresh@example.com" {
            seen = Some(changed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = seen.expect("B never saw the new email: the invalidation broadcast was lost");
    eprintln!("staleness: B saw the email change after {seen:?}");

    // Logout on A.
    let out =
        a.send(Method::DELETE, "/v1/sessions/current", &[("authorization", &format!("Bearer {token}"))], None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let revoked = Instant::now();
    assert_eq!(a.get("/v1/sessions/current", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
    let mut seen = None;
    for _ in 0..400 {
        if b.get("/v1/sessions/current", Some(&token)).await.status == StatusCode::UNAUTHORIZED {
            seen = Some(revoked.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = seen.expect("B kept serving a revoked session: the invalidation broadcast was lost");
    eprintln!("staleness: B saw the logout after {seen:?}");
    a.stop().await;
    b.stop().await;
}

/// Whoever can write to Redis tries to promote an ordinary user's cached session to
/// admin, by editing the role byte in place and by writing a well-formed value of their
/// own. Both fail the HMAC check: the session is re-read from the database (still a
/// user), and the forgeries are counted. Before values were authenticated, the flipped
/// byte made `GET /v1/users` answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cache_values_grant_nothing() {
    use strata_core::auth_cache::{Cached, TAG_LEN, decode, encode, session_key};
    use strata_core::domain::Role;
    let what = "cache forged values";
    let Some(redis) = ServerProcess::redis(what, None) else { return };
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let (app, _) = spawn_cached(what, db, &format!("redis://{}", redis.addr()), "off", None, |_| {}).await;
    let (_, token) = app.user_with_token("mallory@example.com").await;
    assert_eq!(app.get("/v1/sessions/current", Some(&token)).await.status, StatusCode::OK);
    let key = session_key(&SessionToken::parse(&token).unwrap().hash());
    let Some(stored) = strata_cache::testing::raw_command(&redis.addr(), &[b"GET", key.as_bytes()]).unwrap() else {
        panic!("the session was not cached in Redis")
    };
    let strata_cache::shield::Unwrapped::Value { payload, .. } = strata_cache::shield::unwrap(&stored) else {
        panic!("not a cached value")
    };
    let (body, tag) = payload.split_at(payload.len() - TAG_LEN);
    let Some(Cached::Session(session, mut user)) = decode(body) else { panic!("undecodable session value") };
    assert_eq!(user.role, Role::User);
    user.role = Role::Admin;
    let promoted = encode(&Cached::Session(session, user));
    // The role byte flipped in place (tag kept), and a fresh value with a guessed tag.
    let flipped = [promoted.as_slice(), tag].concat();
    let guessed = [promoted.as_slice(), &[0u8; TAG_LEN]].concat();
    let rejected = async || {
        let m = app.get("/metrics", None).await;
        metric(&String::from_utf8_lossy(&m.raw), r#"strata_cache_lookups_total{kind="session",outcome="rejected"}"#)
    };
    for forged in [flipped, guessed] {
        let before = rejected().await;
        let value = strata_cache::shield::wrap(&forged);
        strata_cache::testing::raw_command(&redis.addr(), &[b"SET", key.as_bytes(), &value]).unwrap();
        let users = app.get("/v1/users", Some(&token)).await;
        users.assert_problem(403, "forbidden", None);
        let me = app.get("/v1/sessions/current", Some(&token)).await;
        assert_eq!(me.body["user"]["role"], "user", "{}", me.body);
        // Fills never overwrite (SET NX), so the forgery stays and is rejected on every
        // read (twice per request: the lookup, and its re-check inside the single flight).
        let after = rejected().await;
        assert!(after >= before + 2, "forgeries not counted: {before} → {after}");
    }
    app.stop().await;
}

/// Two instances, one database, throttle counters in one Redis: 200 concurrent wrong
/// guesses for one account, half sent to each instance, get no more than the account's
/// budget (3 in tests) verified in all. With per-instance counters each instance would
/// grant its own 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_one_throttle_budget() {
    let what = "throttle shared across instances";
    let Some(redis) = ServerProcess::redis(what, None) else { return };
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let shared_db_url = db.url.clone();
    let throttle_url = format!("redis://{}", redis.addr());
    let shared = |c: &mut Config| c.throttle.url = throttle_url.clone();
    let (a, _) = spawn_cached(what, db, "memory://", "off", None, shared).await;
    let unused = fresh(Backend::Sqlite, what).await.unwrap();
    let (b, _) = spawn_cached(what, unused, "memory://", "off", Some(&shared_db_url), shared).await;
    a.register("shared@example.com", "Shared").await;
    let attempts = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move { app.login("shared@example.com", &format!("guess number {i}")).await.status.as_u16() }
    });
    let statuses = futures_join_all(attempts).await;
    let verified = statuses.iter().filter(|&&s| s == 401).count();
    assert!((1..=3).contains(&verified), "{verified} wrong guesses verified across two instances: {statuses:?}");
    assert!(statuses.iter().all(|s| [401, 429, 503].contains(s)), "{statuses:?}");
    for app in [&a, &b] {
        app.login("shared@example.com", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    }
    a.stop().await;
    b.stop().await;
}

/// With the shared store unreachable, each instance still throttles with its own
/// counters: degraded to a per-instance budget, never to none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_throttle_store_falls_back_to_local_counters() {
    let what = "throttle store down";
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let port = strata_cache::testing::spare_port();
    let (app, _) =
        spawn_cached(what, db, "memory://", "off", None, |c| c.throttle.url = format!("redis://127.0.0.1:{port}"))
            .await;
    app.register("local@example.com", "Local").await;
    for _ in 0..3 {
        app.login("local@example.com", "wrong password").await.assert_problem(401, "invalid_credentials", None);
    }
    app.login("local@example.com", PASSWORD).await.assert_problem(429, "too_many_attempts", None);
    app.stop().await;
}
