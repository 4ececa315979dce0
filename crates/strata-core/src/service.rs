//! The account service: registration, login, session checks, profile changes. Business
//! rules live here and nowhere else; the HTTP layer only parses and renders.
//!
//! With a cache attached ([`Accounts::with_cache`]), session checks and user reads go
//! cache → single-flight → database, and every change that could make a cached value wrong
//! (logout, update, password change, disable, delete) invalidates after its transaction
//! commits and before the call returns. The write and its invalidation are one unit that
//! runs to completion on its own task ([`Accounts::commit`]): a caller that goes away
//! mid-commit (client disconnect, request timeout) cannot leave a revoked session usable
//! from the cache, and an outcome that is unknown (timeout, lost connection) invalidates
//! as if the write had landed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::auth_cache::{AuthCache, CacheSettings, CacheSigner, SESSION, USER, session_key, user_key};
use crate::domain::{
    AuditEntry, AuditQuery, DisplayName, Email, IdempotencyKey, IdempotencyRecord, OutboxEvent, Password, PasswordHash,
    Role, Session, SessionId, SessionToken, Timestamp, TokenHash, User, UserId, UserStatus, Version, rfc3339,
};
use crate::error::{AppError, RepoError, TokenProblem, ValidationError};
use crate::password::{Lane, PasswordHasher, Verified};
use crate::ports::{Cache, CacheObserver, Clock, SessionRevocation, Store, StoreObserver, UserListQuery};
use crate::throttle::Throttle;
use crate::timing::{self, Component};

mod lifecycle;
mod mfa;
pub use lifecycle::LifecycleSettings;
pub use mfa::{CHALLENGE_TTL, TotpEnrolment};

/// The stored hash of an account without a password (provisioned through SCIM): not a
/// format any verifier knows, so no password matches it (Django uses the same marker).
pub const UNUSABLE_PASSWORD: &str = "!";

#[derive(Clone, Copy, Debug)]
pub struct AccountSettings {
    pub session_ttl: Duration,
    /// How long an idempotency key is honoured; older records are ignored and purged.
    pub idempotency_ttl: Duration,
    pub list_default_limit: u32,
    pub list_max_limit: u32,
    /// Refuse logins to accounts whose email is not verified (`auth.require_verified_email`).
    pub require_verified_email: bool,
}

impl Default for AccountSettings {
    fn default() -> Self {
        AccountSettings {
            session_ttl: Duration::from_secs(24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            list_default_limit: 50,
            list_max_limit: 200,
            require_verified_email: false,
        }
    }
}

/// Who is making a request.
#[derive(Clone, Debug)]
pub enum Actor {
    /// Holder of the configured admin token.
    System,
    /// A logged-in user, with the session they used.
    User { user: Box<User>, session: SessionId },
    /// A provisioning token (its id): an admin, but only through SCIM.
    Provisioner(uuid::Uuid),
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::System | Actor::Provisioner(_) => true,
            Actor::User { user, .. } => user.is_admin(),
        }
    }

    fn may_act_on(&self, id: UserId) -> bool {
        match self {
            Actor::System | Actor::Provisioner(_) => true,
            Actor::User { user, .. } => user.is_admin() || user.id == id,
        }
    }

    fn session(&self) -> Option<SessionId> {
        match self {
            Actor::System | Actor::Provisioner(_) => None,
            Actor::User { session, .. } => Some(*session),
        }
    }
}

pub struct Registration {
    pub email: Email,
    pub name: DisplayName,
    pub password: Password,
}

/// The outcome of a create: `replayed` is true when an idempotent retry returned the user
/// that the first request created.
pub struct Registered {
    pub user: User,
    pub replayed: bool,
}

pub struct LoggedIn {
    pub token: SessionToken,
    pub session: Session,
    pub user: User,
}

/// Fields a PATCH may change; `None` leaves a field alone.
#[derive(Default)]
pub struct UserChanges {
    pub email: Option<Email>,
    pub name: Option<DisplayName>,
    pub password: Option<Password>,
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    /// Proof for a user changing their own password or email: a stolen token alone must
    /// not be enough to take the account over.
    pub current_password: Option<Password>,
}

impl UserChanges {
    fn is_empty(&self) -> bool {
        self.email.is_none()
            && self.name.is_none()
            && self.password.is_none()
            && self.role.is_none()
            && self.status.is_none()
    }
}

/// A user's own email change, mailed and waiting for its confirmation: nothing changed yet.
pub struct EmailChangeRequested {
    /// The account as it still is.
    pub user: User,
    pub new_email: Email,
    /// When the confirmation link stops working.
    pub expires_at: Timestamp,
}

/// What a PATCH did.
pub enum Patched {
    Updated(User),
    EmailChangeRequested(EmailChangeRequested),
}

pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Id of the last item when more may follow.
    pub next_after: Option<uuid::Uuid>,
}

/// What `GET /v1/users` may filter on; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    pub email: Option<Email>,
    /// Lower-case text the email starts with.
    pub email_prefix: Option<String>,
    pub status: Option<UserStatus>,
    pub role: Option<Role>,
}

pub struct UserPage {
    pub items: Vec<User>,
    /// Id of the last item when more may follow.
    pub next_after: Option<UserId>,
}

/// Remembers when `login.throttled` was last recorded per email and client.
#[derive(Default)]
struct ThrottledEvents(parking_lot::Mutex<std::collections::HashMap<(String, String), Timestamp>>);

impl ThrottledEvents {
    /// Bound on remembered pairs: past it, the oldest windows are forgotten (at worst one
    /// extra event per pair).
    const CAP: usize = 10_000;

    fn first_in_window(&self, email: &str, client: &str, now: Timestamp, window: Duration) -> bool {
        let mut seen = self.0.lock();
        if seen.len() >= Self::CAP {
            seen.retain(|_, until| *until > now);
            if seen.len() >= Self::CAP {
                seen.clear();
            }
        }
        let key = (email.to_owned(), client.to_owned());
        match seen.get(&key) {
            Some(until) if *until > now => false,
            _ => {
                seen.insert(key, now.plus(window.max(Duration::from_secs(1))));
                true
            }
        }
    }
}

pub struct Accounts {
    store: Arc<dyn Store>,
    throttled_events: ThrottledEvents,
    /// Woken after every write that left an outbox row, so the relay publishes it now
    /// instead of at its next poll.
    relay_waker: Option<Arc<tokio::sync::Notify>>,
    hasher: Arc<PasswordHasher>,
    throttle: Throttle,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn StoreObserver>,
    settings: AccountSettings,
    cache: Option<Arc<AuthCache>>,
    lifecycle: lifecycle::LifecycleSettings,
    /// Password-reset requests, per email and per client: its own budget, so reset
    /// requests neither spend nor are refused by the login budget.
    reset_throttle: Throttle,
}

/// What a committed write leaves stale in the cache.
enum Stale {
    /// These keys, known before the write.
    Keys(Vec<String>),
    /// A user's entry and their live sessions: listed after the commit (a session created
    /// before it is in the list, one created after it reads the new row), or before it
    /// when the write removes them (delete cascades).
    User { id: UserId, sessions: Option<Result<Vec<Session>, RepoError>>, now: Timestamp },
}

impl Accounts {
    pub fn new(
        store: Arc<dyn Store>,
        hasher: Arc<PasswordHasher>,
        throttle: Throttle,
        clock: Arc<dyn Clock>,
        observer: Arc<dyn StoreObserver>,
        settings: AccountSettings,
    ) -> Self {
        Accounts {
            store,
            throttled_events: ThrottledEvents::default(),
            relay_waker: None,
            hasher,
            throttle,
            clock,
            observer,
            settings,
            cache: None,
            lifecycle: lifecycle::LifecycleSettings::default(),
            reset_throttle: Throttle::local(lifecycle::LifecycleSettings::default().reset_throttle),
        }
    }

    /// Token lifetimes and the reset throttle (the defaults otherwise); `shared` puts the
    /// reset counters where the login counters are, so every instance draws on one budget.
    pub fn with_lifecycle(
        mut self,
        settings: lifecycle::LifecycleSettings,
        shared: Option<Arc<dyn crate::throttle::SharedCounters>>,
    ) -> Self {
        let mut throttle = Throttle::local(settings.reset_throttle);
        if let Some(shared) = shared {
            throttle = throttle.with_shared(shared);
        }
        self.reset_throttle = throttle;
        self.lifecycle = settings;
        self
    }

    /// Puts a cache in front of session checks and user reads. Without one, every read
    /// goes to the database.
    pub fn with_cache(
        mut self,
        cache: Arc<dyn Cache>,
        settings: CacheSettings,
        signer: CacheSigner,
        observer: Arc<dyn CacheObserver>,
    ) -> Self {
        self.cache = Some(Arc::new(AuthCache::new(cache, settings, signer, observer)));
        self
    }

    /// Wakes the outbox relay after each write (see [`crate::relay::Relay::waker`]).
    pub fn with_relay_waker(mut self, waker: Arc<tokio::sync::Notify>) -> Self {
        self.relay_waker = Some(waker);
        self
    }

    fn wake_relay(&self) {
        if let Some(w) = &self.relay_waker {
            w.notify_one();
        }
    }

    pub fn cache(&self) -> Option<&Arc<dyn Cache>> {
        self.cache.as_ref().map(|c| &c.cache)
    }

    pub fn settings(&self) -> &AccountSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// The service's clock: what "expired" is judged against (tests move it).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs one storage call, charging its time to the request and reporting it.
    async fn db<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, RepoError>>) -> Result<T, RepoError> {
        observed_db(&*self.observer, op, fut).await
    }

    /// A write and the invalidation it calls for, spawned so that both finish even if the
    /// caller's future is dropped; the caller awaits the outcome. The invalidation runs
    /// when the write landed or may have landed (`Unavailable`/`Internal`: a timeout after
    /// the server committed looks the same as one before); only answers that prove nothing
    /// changed (conflict, not found, duplicate) skip it.
    async fn commit<T: Send + 'static>(
        &self,
        op: &'static str,
        write: impl Future<Output = Result<T, RepoError>> + Send + 'static,
        stale: Stale,
    ) -> Result<T, RepoError> {
        let (store, observer, cache) = (self.store.clone(), self.observer.clone(), self.cache.clone());
        let unit = timing::propagate(async move {
            let out = observed_db(&*observer, op, write).await;
            let unchanged = matches!(
                out,
                Err(RepoError::VersionConflict
                    | RepoError::NotFound
                    | RepoError::EmailTaken
                    | RepoError::IdempotencyKeyTaken)
            );
            if let Some(cache) = cache
                && !unchanged
            {
                if let Err(e) = &out {
                    tracing::warn!(op, error = %e, "write outcome unknown; invalidating as if it landed");
                }
                let keys = match stale {
                    Stale::Keys(keys) => keys,
                    Stale::User { id, sessions, now } => {
                        let sessions = match sessions {
                            Some(listed) => listed,
                            None => observed_db(&*observer, "sessions_of_user", store.sessions_of_user(id)).await,
                        };
                        stale_user_keys(id, sessions, now)
                    }
                };
                cache.invalidate(&keys).await;
            }
            out
        });
        let out =
            tokio::spawn(unit).await.unwrap_or_else(|e| Err(RepoError::Internal(format!("write task failed: {e}"))));
        self.wake_relay();
        out
    }

    /// `client` is the caller's throttle key: it limits registrations per client and
    /// scopes idempotency keys to the client that sent them.
    pub async fn register(
        &self,
        reg: Registration,
        key: Option<IdempotencyKey>,
        client: &str,
    ) -> Result<Registered, AppError> {
        self.throttle
            .reserve_registration(client, self.clock.now())
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let out = self.register_reserved(reg, key.map(|k| k.scoped(client)), client).await;
        // Refused before it cost a hash or a row: not an attempt.
        if matches!(out, Err(AppError::Overloaded { .. } | AppError::Unavailable(_))) {
            self.throttle.refund_registration(client, self.clock.now()).await;
        }
        out
    }

    async fn register_reserved(
        &self,
        reg: Registration,
        key: Option<IdempotencyKey>,
        client: &str,
    ) -> Result<Registered, AppError> {
        let fingerprint = fingerprint(&reg);
        if let Some(key) = &key
            && let Some(done) = self.replay(key, &fingerprint, &reg, client).await?
        {
            return Ok(done);
        }
        let hash = self.hasher.hash(&reg.password).await?;
        let now = self.clock.now();
        let user = User {
            id: UserId::generate(),
            email: reg.email.clone(),
            name: reg.name.clone(),
            password_hash: hash,
            role: Role::User,
            status: UserStatus::Active,
            verified: false,
            mfa_enabled: false,
            version: Version::FIRST,
            created_at: now,
            updated_at: now,
        };
        let record =
            key.as_ref().map(|k| IdempotencyRecord { key: k.clone(), fingerprint, user_id: user.id, created_at: now });
        let data = serde_json::json!({ "user": user_json(&user) });
        let event = event("user.created", user.id.as_uuid(), EventActor::User(user.id), data, now);
        let mut expired_purged = false;
        loop {
            match self.db("create_user", self.store.create_user(&user, record.as_ref(), &event)).await {
                Ok(()) => {
                    self.wake_relay();
                    if self.settings.require_verified_email {
                        // They cannot log in to ask for it, so the first mail comes unasked.
                        self.send_first_verification(&user).await;
                    }
                    return Ok(Registered { user, replayed: false });
                }
                // A concurrent request with the same key may have won the race; it can trip
                // either unique index first (email or key), so on both, answer as its retry.
                Err(e @ (RepoError::IdempotencyKeyTaken | RepoError::EmailTaken)) => {
                    let Some(k) = &key else { return Err(e.into()) };
                    if let Some(done) = self.replay(k, &fingerprint, &reg, client).await? {
                        return Ok(done);
                    }
                    // The key's record has expired but was not purged yet: purge, retry once.
                    if matches!(e, RepoError::IdempotencyKeyTaken) && !expired_purged {
                        expired_purged = true;
                        self.purge_idempotency_keys().await?;
                        continue;
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A user created by an admin or a provisioning client (SCIM) rather than by
    /// themselves: no registration throttle and no idempotency key. Without a password the
    /// account gets [`UNUSABLE_PASSWORD`], which never verifies, until one is set.
    pub async fn provision_user(
        &self,
        actor: &Actor,
        email: Email,
        name: DisplayName,
        password: Option<Password>,
        status: UserStatus,
    ) -> Result<User, AppError> {
        if !actor.is_admin() {
            return Err(AppError::Forbidden("provisioning users requires an admin"));
        }
        let password_hash = match password {
            Some(p) => self.hasher.hash(&p).await?,
            None => PasswordHash::from_trusted(UNUSABLE_PASSWORD.to_owned()),
        };
        let now = self.clock.now();
        let id = UserId::generate();
        let user = User {
            id,
            email,
            name,
            password_hash,
            role: Role::User,
            status,
            version: Version::FIRST,
            created_at: now,
            updated_at: now,
            // The address comes from an identity provider an admin connected, which owns it;
            // with `auth.require_verified_email` on, unverified provisioned accounts could
            // never log in (they have no password to ask for a verification mail with).
            verified: true,
            mfa_enabled: false,
        };
        let data = serde_json::json!({ "user": user_json(&user) });
        let event = event("user.created", id.as_uuid(), EventActor::of(actor, id), data, now);
        self.db("create_user", self.store.create_user(&user, None, &event)).await?;
        self.wake_relay();
        Ok(user)
    }

    /// Deletes idempotency records older than the configured lifetime; returns how many.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, AppError> {
        let before = self.clock.now().minus(self.settings.idempotency_ttl);
        Ok(self.db("purge_idempotency_keys", self.store.purge_idempotency_keys(before)).await?)
    }

    /// The user a faithful retry of `key` created, or `None` when there is no live record.
    /// A replay verifies the password, so it draws on the client's failure budget: without
    /// that, replays were a free password oracle (201 vs 422). Only the client's: keys are
    /// scoped to the client, so every guess through one comes from that client, and the
    /// small per-account budget would refuse a burst of concurrent faithful retries (each
    /// holds a reservation while it verifies).
    async fn replay(
        &self,
        key: &IdempotencyKey,
        fingerprint: &[u8; 32],
        reg: &Registration,
        client: &str,
    ) -> Result<Option<Registered>, AppError> {
        let Some(record) = self.db("idempotency_record", self.store.idempotency_record(key)).await? else {
            return Ok(None);
        };
        if self.clock.now() >= record.created_at.plus(self.settings.idempotency_ttl) {
            return Ok(None);
        }
        if &record.fingerprint != fingerprint {
            return Err(AppError::IdempotencyKeyReused);
        }
        self.throttle
            .reserve_client(client, self.clock.now())
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let verified = async {
            let user = self.db("user_by_id", self.store.user_by_id(record.user_id)).await?;
            let Some(user) = user else { return Ok(None) };
            Ok::<_, AppError>(
                self.hasher.verify(Lane::Enrol, &reg.password, &user.password_hash).await?.then_some(user),
            )
        };
        match verified.await {
            Ok(Some(user)) => {
                self.throttle.refund_client(client, self.clock.now()).await;
                Ok(Some(Registered { user, replayed: true }))
            }
            // A wrong password keeps its reservation, as a failed login does.
            Ok(None) => Err(AppError::IdempotencyKeyReused),
            Err(e) => {
                self.throttle.refund_client(client, self.clock.now()).await;
                Err(e)
            }
        }
    }

    /// `client` identifies the caller's address for per-client throttling.
    pub async fn login(&self, email: &Email, password: &Password, client: &str) -> Result<LoggedIn, AppError> {
        let now = self.clock.now();
        if let Err(retry_after) = self.throttle.reserve(email.as_str(), client, now).await {
            self.login_throttled(email, client, retry_after, now);
            return Err(AppError::Throttled { retry_after });
        }
        let (user, rehashed) = match self.verify_login(email, password).await {
            Ok(Ok(verified)) => verified,
            // A wrong guess keeps its reservation: it is the failure being counted.
            Ok(Err(known)) => {
                if let Some(user) = known {
                    self.login_failed(&user, "wrong_password", client, now);
                }
                return Err(AppError::InvalidCredentials);
            }
            // Nothing was verified (storage down, hashing pool full): not a guess.
            Err(e) => {
                self.throttle.refund(email.as_str(), client, self.clock.now()).await;
                return Err(e);
            }
        };
        self.throttle.succeeded(email.as_str(), client, self.clock.now()).await;
        if user.status != UserStatus::Active {
            self.login_failed(&user, "account_disabled", client, now);
            return Err(AppError::AccountDisabled);
        }
        if self.settings.require_verified_email && !user.verified {
            self.login_failed(&user, "email_not_verified", client, now);
            return Err(AppError::EmailNotVerified);
        }
        let user = match rehashed {
            Some(hash) => self.store_rehash(user, hash).await,
            None => user,
        };
        // After the rehash: the challenge is bound to the password hash as stored.
        if let Some(challenge) = self.mfa_challenge(&user).await? {
            return Err(AppError::MfaRequired { challenge });
        }
        self.start_session(user).await
    }

    /// A new session for a user whose credentials were all checked.
    async fn start_session(&self, user: User) -> Result<LoggedIn, AppError> {
        let now = self.clock.now();
        let token = match self.store.logical_shards() {
            Some(count) => SessionToken::generate_in(crate::domain::logical_shard(user.id.as_uuid(), count), count),
            None => SessionToken::generate(),
        };
        let session = Session {
            id: SessionId::generate(),
            user_id: user.id,
            token_hash: token.hash(),
            created_at: now,
            expires_at: now.plus(self.settings.session_ttl),
            revoked_at: None,
        };
        let data = serde_json::json!({ "session": session_json(&session) });
        let event = event("session.created", user.id.as_uuid(), EventActor::User(user.id), data, now);
        self.db("create_session", self.store.create_session(&session, &event)).await?;
        self.wake_relay();
        Ok(LoggedIn { token, session, user })
    }

    /// `Ok(user)` when the password is theirs, with a fresh argon2id hash when their stored
    /// one is imported or outdated; otherwise `Err` with the account the email belongs to,
    /// if any.
    async fn verify_login(
        &self,
        email: &Email,
        password: &Password,
    ) -> Result<Result<(User, Option<PasswordHash>), Option<User>>, AppError> {
        let user = self.db("user_by_email", self.store.user_by_email(email)).await?;
        // Unknown emails still pay for a verify, against a decoy hash, so that timing does
        // not reveal which emails have accounts.
        let hash = user.as_ref().map_or(self.hasher.decoy(), |u| &u.password_hash);
        let verified = self.hasher.verify_and_rehash(Lane::Login, password, hash).await?;
        Ok(match user {
            Some(user) if verified.matches => Ok((user, verified.rehashed)),
            other => Err(other),
        })
    }

    /// Replaces an imported or outdated password hash with the argon2id one a successful
    /// login just made, through the ordinary update: compare-and-set on the version the
    /// login read, so a concurrent change (a new password, a disable) wins and this write
    /// is dropped. Returns the user as stored; on any failure the user as read, because a
    /// login whose password was right must not fail over an upgrade — the next login
    /// tries again.
    ///
    /// It emits `user.updated` with nothing in `changed`: the row's version and
    /// `updated_at` move, as with every write (cached entries and event consumers follow
    /// the version, and each version gets its event), and the audit log then shows when an
    /// imported credential was upgraded. Nothing in `changed` — in particular no
    /// `password` — because the password did not change, so no consumer should tell the
    /// user it did. No session is revoked.
    async fn store_rehash(&self, user: User, hash: PasswordHash) -> User {
        let now = self.clock.now();
        let id = user.id;
        let mut next = user.clone();
        next.password_hash = hash;
        next.version = user.version.next();
        next.updated_at = now;
        let data = serde_json::json!({ "user": user_json(&next), "changed": [], "sessions_revoked": "none" });
        let event = event("user.updated", id.as_uuid(), EventActor::User(id), data, now);
        let (store, row, expected) = (self.store.clone(), next.clone(), user.version);
        let write = async move { store.update_user(&row, expected, SessionRevocation::None, &event).await };
        match self.commit("update_user", write, Stale::User { id, sessions: None, now }).await {
            Ok(()) => next,
            Err(e @ (RepoError::VersionConflict | RepoError::NotFound)) => {
                tracing::debug!(user_id = %id, error = %e, "password rehash dropped: the account changed meanwhile");
                user
            }
            Err(e) => {
                tracing::warn!(user_id = %id, error = %e, "cannot store the rehashed password; the old hash stays");
                user
            }
        }
    }

    /// Records `login.failed` for an existing account, off the request's path: the answer
    /// does not wait for it, and a failure to record is logged, not returned. Unknown emails
    /// leave no event (they would let anyone grow the outbox with made-up addresses); the
    /// throttle and `login.throttled` cover guessing at them.
    fn login_failed(&self, user: &User, reason: &'static str, client: &str, now: Timestamp) {
        let data = serde_json::json!({ "user": user_json(user), "reason": reason, "client": client });
        let event = event("login.failed", user.id.as_uuid(), EventActor::User(user.id), data, now);
        self.record_in_background(event);
    }

    /// Records `login.throttled` at most once per email and client per throttle window,
    /// so an attack that is being refused does not turn into a stream of writes.
    fn login_throttled(&self, email: &Email, client: &str, retry_after: Duration, now: Timestamp) {
        if !self.throttled_events.first_in_window(email.as_str(), client, now, retry_after) {
            return;
        }
        let (store, observer, waker) = (self.store.clone(), self.observer.clone(), self.relay_waker.clone());
        let (email, client) = (email.clone(), client.to_owned());
        tokio::spawn(async move {
            let user = observed_db(&*observer, "user_by_email", store.user_by_email(&email)).await.ok().flatten();
            let aggregate = user.as_ref().map_or(uuid::Uuid::nil(), |u| u.id.as_uuid());
            let actor = user.as_ref().map_or(EventActor::Anonymous, |u| EventActor::User(u.id));
            let data = serde_json::json!({
                "email": email.as_str(),
                "user": user.as_ref().map(user_json),
                "client": client,
                "retry_after_secs": retry_after.as_secs(),
            });
            let event = event("login.throttled", aggregate, actor, data, now);
            match observed_db(&*observer, "record_event", store.record_event(&event)).await {
                Ok(()) => waker.iter().for_each(|w| w.notify_one()),
                Err(e) => tracing::warn!(error = %e, "cannot record login.throttled"),
            }
        });
    }

    fn record_in_background(&self, event: OutboxEvent) {
        let (store, observer, waker) = (self.store.clone(), self.observer.clone(), self.relay_waker.clone());
        tokio::spawn(async move {
            match observed_db(&*observer, "record_event", store.record_event(&event)).await {
                Ok(()) => waker.iter().for_each(|w| w.notify_one()),
                Err(e) => tracing::warn!(event_type = event.event_type, error = %e, "cannot record event"),
            }
        });
    }

    /// The hot path: who holds this token?
    pub async fn authenticate(&self, token: &SessionToken) -> Result<(Session, User), AppError> {
        let hash = token.hash();
        let found = self.session_with_user(&hash).await?;
        let Some((session, user)) = found else {
            return Err(AppError::Unauthenticated(TokenProblem::Unknown));
        };
        if !session.token_hash.ct_eq(&hash) {
            return Err(AppError::Unauthenticated(TokenProblem::Unknown));
        }
        if session.revoked_at.is_some() {
            return Err(AppError::Unauthenticated(TokenProblem::Revoked));
        }
        if self.clock.now() >= session.expires_at {
            return Err(AppError::Unauthenticated(TokenProblem::Expired));
        }
        if user.status != UserStatus::Active {
            return Err(AppError::Unauthenticated(TokenProblem::AccountDisabled));
        }
        Ok((session, user))
    }

    pub async fn logout(&self, session: &Session) -> Result<(), AppError> {
        let now = self.clock.now();
        let data = serde_json::json!({ "session": session_json(session), "reason": "logout" });
        let actor = EventActor::User(session.user_id);
        let event = event("session.revoked", session.user_id.as_uuid(), actor, data, now);
        let (store, id) = (self.store.clone(), session.id);
        let write = async move { store.revoke_session(id, now, &event).await };
        self.commit("revoke_session", write, Stale::Keys(vec![session_key(&session.token_hash)])).await?;
        Ok(())
    }

    /// A user's sessions, newest first, for an admin or the user themself: the live ones and
    /// the revoked or expired ones still stored. `NotFound` for an unknown user, so that a
    /// wrong id is not mistaken for a user without sessions.
    pub async fn sessions_of_user(&self, actor: &Actor, id: UserId) -> Result<Vec<Session>, AppError> {
        self.require_session_owner(actor, id, "you may only list your own sessions").await?;
        let mut sessions = self.db("sessions_of_user", self.store.sessions_of_user(id)).await?;
        // Stored in id order, which for UUIDv7 is creation order.
        sessions.reverse();
        Ok(sessions)
    }

    /// Ends every live session of a user ("sign out everywhere", or an admin's response to
    /// a stolen token) without touching the account: each session gets its
    /// `session.revoked` (reason `revoked`, the actor named) and its cached entry goes with
    /// the commit, as a logout's does. Returns how many were live.
    ///
    /// With `expected`, only while the user is still at that version: an admin who decided
    /// on a view of the account that has changed since is told so (`VersionMismatch`)
    /// rather than acting on it.
    pub async fn revoke_sessions(
        &self,
        actor: &Actor,
        id: UserId,
        expected: Option<Version>,
    ) -> Result<usize, AppError> {
        self.require_session_owner(actor, id, "you may only end your own sessions").await?;
        if let Some(expected) = expected {
            let user = self.db("user_by_id", self.store.user_by_id(id)).await?.ok_or(AppError::NotFound("user"))?;
            if user.version != expected {
                return Err(AppError::VersionMismatch);
            }
        }
        let now = self.clock.now();
        let sessions = self.db("sessions_of_user", self.store.sessions_of_user(id)).await?;
        let live: Vec<Session> =
            sessions.into_iter().filter(|s| s.revoked_at.is_none() && s.expires_at > now).collect();
        if live.is_empty() {
            return Ok(0);
        }
        let acting = EventActor::of(actor, id);
        let revocations: Vec<(SessionId, OutboxEvent)> = live
            .iter()
            .map(|s| {
                let data = serde_json::json!({ "session": session_json(s), "reason": "revoked" });
                (s.id, event("session.revoked", id.as_uuid(), acting, data, now))
            })
            .collect();
        let keys = live.iter().map(|s| session_key(&s.token_hash)).collect();
        let store = self.store.clone();
        // One unit with the invalidation of every key listed, so a failure half-way still
        // drops the cached entries of the sessions it did revoke.
        let write = async move {
            let mut revoked = 0;
            for (session, event) in &revocations {
                if store.revoke_session(*session, now, event).await? {
                    revoked += 1;
                }
            }
            Ok(revoked)
        };
        Ok(self.commit("revoke_session", write, Stale::Keys(keys)).await?)
    }

    /// Admins, or the user themself; someone else's unknown id is `NotFound`.
    async fn require_session_owner(&self, actor: &Actor, id: UserId, refusal: &'static str) -> Result<(), AppError> {
        if !actor.may_act_on(id) {
            return Err(AppError::Forbidden(refusal));
        }
        if matches!(actor, Actor::User { user, .. } if user.id == id) {
            return Ok(());
        }
        self.user_by_id_cached(id).await?.map(|_| ()).ok_or(AppError::NotFound("user"))
    }

    /// Session and user by token hash: cache, then one database read per key however many
    /// requests miss at once.
    async fn session_with_user(&self, hash: &TokenHash) -> Result<Option<(Session, User)>, RepoError> {
        let Some(cache) = &self.cache else {
            return self.db("session_with_user", self.store.session_with_user(hash)).await;
        };
        let ttl = |(session, _): &(Session, User)| cache.session_ttl(session, self.clock.now());
        let load = || self.db("session_with_user", self.store.session_with_user(hash));
        cache.read_through(&SESSION, &session_key(hash), &cache.sessions, hash, ttl, load).await
    }

    /// A user by id, through the cache like [`Self::session_with_user`].
    async fn user_by_id_cached(&self, id: UserId) -> Result<Option<User>, RepoError> {
        let Some(cache) = &self.cache else {
            return self.db("user_by_id", self.store.user_by_id(id)).await;
        };
        let load = || self.db("user_by_id", self.store.user_by_id(id));
        cache.read_through(&USER, &user_key(id), &cache.users, &id, |_| cache.settings.ttl, load).await
    }

    pub async fn get_user(&self, actor: &Actor, id: UserId) -> Result<User, AppError> {
        if !actor.may_act_on(id) {
            return Err(AppError::Forbidden("you may only read your own account"));
        }
        // Reading yourself: authentication loaded this very row in this request; a second
        // query would return the same thing at twice the cost.
        if let Actor::User { user, .. } = actor
            && user.id == id
        {
            return Ok((**user).clone());
        }
        self.user_by_id_cached(id).await?.ok_or(AppError::NotFound("user"))
    }

    /// [`Accounts::patch_user`] for callers that are never the user themself (SCIM
    /// clients, admins): every change applies at once.
    pub async fn update_user(
        &self,
        actor: &Actor,
        id: UserId,
        expected: Version,
        changes: UserChanges,
        client: &str,
    ) -> Result<User, AppError> {
        match self.patch_user(actor, id, expected, changes, client).await? {
            Patched::Updated(user) => Ok(user),
            // Only a user changing their own address gets here: nothing changed yet.
            Patched::EmailChangeRequested(requested) => Ok(requested.user),
        }
    }

    /// `PATCH /v1/users/{id}`. `client` is the caller's throttle key: re-authentication
    /// with `current_password` draws on the same budgets as a login.
    ///
    /// Users changing their own email get a confirmation mail at the new address (and a
    /// notice at the old one) instead of the change, which applies when confirmed. An
    /// admin's (or the admin token's, or a SCIM client's) change applies at once and leaves
    /// the address unverified: they act for users who may have lost the old mailbox, and
    /// their change is audited as theirs (`user.updated` names the actor).
    pub async fn patch_user(
        &self,
        actor: &Actor,
        id: UserId,
        expected: Version,
        changes: UserChanges,
        client: &str,
    ) -> Result<Patched, AppError> {
        if !actor.may_act_on(id) {
            return Err(AppError::Forbidden("you may only change your own account"));
        }
        if (changes.role.is_some() || changes.status.is_some()) && !actor.is_admin() {
            return Err(AppError::Forbidden("only an admin may change role or status"));
        }
        if changes.is_empty() {
            return Err(ValidationError::new("body", "empty_patch", "the body must change at least one field").into());
        }
        let current = self.db("user_by_id", self.store.user_by_id(id)).await?.ok_or(AppError::NotFound("user"))?;
        // Checked before hashing a new password, so a stale request costs no argon2 time.
        if current.version != expected {
            return Err(AppError::VersionMismatch);
        }
        let own_credentials = changes.password.is_some() || changes.email.is_some();
        let is_self = matches!(actor, Actor::User { user, .. } if user.id == id);
        let own_email_change = changes.email.as_ref().filter(|email| is_self && **email != current.email).cloned();
        if own_email_change.is_some()
            && (changes.name.is_some()
                || changes.password.is_some()
                || changes.role.is_some()
                || changes.status.is_some())
        {
            // The email waits for its confirmation while the rest would apply now: one
            // request with two outcomes and two writes. Two requests say it plainly.
            return Err(ValidationError::new(
                "email",
                "email_change_not_alone",
                "a change of your own email is confirmed by mail: send it alone (with current_password)",
            )
            .into());
        }
        let mut rehashed = None;
        if own_credentials && is_self {
            // A new password replaces the hash anyway: no upgrade of the old one then.
            let upgrade = changes.password.is_none();
            rehashed = self.reauthenticate(&current, changes.current_password.as_ref(), client, upgrade).await?;
        }
        if let Some(new_email) = own_email_change {
            // An outdated hash waits for the next login's upgrade: this request writes no user.
            return self.request_email_change(&current, &new_email, client).await.map(Patched::EmailChangeRequested);
        }
        let now = self.clock.now();
        let mut next = current.clone();
        if let Some(email) = changes.email {
            // A new address is unproven until its own verification.
            if email != next.email {
                next.verified = false;
            }
            next.email = email;
        }
        if let Some(name) = changes.name {
            next.name = name;
        }
        if let Some(role) = changes.role {
            next.role = role;
        }
        if let Some(status) = changes.status {
            next.status = status;
        }
        let mut revoke = SessionRevocation::None;
        if let Some(password) = &changes.password {
            next.password_hash = self.hasher.hash(password).await?;
            revoke = match actor.session() {
                Some(keep) if matches!(actor, Actor::User { user, .. } if user.id == id) => {
                    SessionRevocation::AllExcept { keep, at: now }
                }
                _ => SessionRevocation::All { at: now },
            };
        } else if let Some(hash) = rehashed {
            // The current password just proved right against an imported or outdated
            // hash: this write upgrades it too, at no extra version.
            next.password_hash = hash;
        }
        if next.status == UserStatus::Disabled && current.status != UserStatus::Disabled {
            revoke = SessionRevocation::All { at: now };
        }
        next.version = current.version.next();
        next.updated_at = now;
        let changed: Vec<&str> = [
            ("email", current.email != next.email),
            ("name", current.name != next.name),
            ("password", changes.password.is_some()),
            ("role", current.role != next.role),
            ("status", current.status != next.status),
            ("verified", current.verified != next.verified),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect();
        let revoked = match revoke {
            SessionRevocation::None => "none",
            SessionRevocation::All { .. } => "all",
            SessionRevocation::AllExcept { .. } => "all_but_current",
        };
        let data = serde_json::json!({ "user": user_json(&next), "changed": changed, "sessions_revoked": revoked });
        let event = event("user.updated", id.as_uuid(), EventActor::of(actor, id), data, now);
        let (store, row) = (self.store.clone(), next.clone());
        let write = async move { store.update_user(&row, expected, revoke, &event).await };
        self.commit("update_user", write, Stale::User { id, sessions: None, now }).await?;
        Ok(Patched::Updated(next))
    }

    /// The current password of `user`, checked like a login: reserved against the
    /// account's and the client's budgets, refunded when it was no wrong guess. With
    /// `upgrade`, returns a fresh hash when the stored one needs one.
    async fn reauthenticate(
        &self,
        user: &User,
        presented: Option<&Password>,
        client: &str,
        upgrade: bool,
    ) -> Result<Option<PasswordHash>, AppError> {
        let Some(password) = presented else {
            return Err(ValidationError::new(
                "current_password",
                "current_password_required",
                "changing your own password or email needs current_password",
            )
            .into());
        };
        let account = user.email.as_str();
        self.throttle
            .reserve(account, client, self.clock.now())
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let verified = if upgrade {
            self.hasher.verify_and_rehash(Lane::Login, password, &user.password_hash).await
        } else {
            self.hasher
                .verify(Lane::Login, password, &user.password_hash)
                .await
                .map(|matches| Verified { matches, rehashed: None })
        };
        match verified {
            Ok(verified) if verified.matches => {
                self.throttle.succeeded(account, client, self.clock.now()).await;
                Ok(verified.rehashed)
            }
            Ok(_) => Err(AppError::WrongCurrentPassword),
            Err(e) => {
                self.throttle.refund(account, client, self.clock.now()).await;
                Err(e)
            }
        }
    }

    pub async fn delete_user(&self, actor: &Actor, id: UserId, expected: Option<Version>) -> Result<(), AppError> {
        if !actor.may_act_on(id) {
            return Err(AppError::Forbidden("you may only delete your own account"));
        }
        let now = self.clock.now();
        // Read first so the event carries the account as it was; the delete itself is
        // still guarded by `expected` when the caller gave one.
        let user = self.db("user_by_id", self.store.user_by_id(id)).await?.ok_or(AppError::NotFound("user"))?;
        if expected.is_some_and(|v| v != user.version) {
            return Err(AppError::VersionMismatch);
        }
        let data = serde_json::json!({ "user": user_json(&user) });
        let event = event("user.deleted", id.as_uuid(), EventActor::of(actor, id), data, now);
        // The sessions disappear with the user (cascade), so their keys are read first.
        let sessions = match self.cache {
            Some(_) => Some(self.db("sessions_of_user", self.store.sessions_of_user(id)).await),
            None => None,
        };
        let store = self.store.clone();
        let write = async move { store.delete_user(id, expected, &event).await };
        self.commit("delete_user", write, Stale::User { id, sessions, now }).await?;
        Ok(())
    }

    /// The audit log, for admins: entries in event order after the cursor.
    pub async fn list_audit(&self, actor: &Actor, mut query: AuditQuery) -> Result<AuditPage, AppError> {
        if !actor.is_admin() {
            return Err(AppError::Forbidden("reading the audit log requires an admin"));
        }
        let limit = if query.limit == 0 { self.settings.list_default_limit } else { query.limit };
        if limit > self.settings.list_max_limit {
            return Err(ValidationError::new(
                "limit",
                "out_of_range",
                format!("limit must be between 1 and {}", self.settings.list_max_limit),
            )
            .into());
        }
        if let Some(t) = &query.event_type
            && !crate::events::is_event_type(t)
        {
            return Err(ValidationError::new("type", "unknown_event_type", format!("unknown event type {t:?}")).into());
        }
        query.limit = limit + 1;
        let mut items = self.db("audit_entries", self.store.audit_entries(&query)).await?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.id)
        } else {
            None
        };
        Ok(AuditPage { items, next_after })
    }

    pub async fn list_users(
        &self,
        actor: &Actor,
        after: Option<UserId>,
        limit: Option<u32>,
        filter: UserFilter,
    ) -> Result<UserPage, AppError> {
        if !actor.is_admin() {
            return Err(AppError::Forbidden("listing users requires an admin"));
        }
        let limit = limit.unwrap_or(self.settings.list_default_limit);
        if limit == 0 || limit > self.settings.list_max_limit {
            return Err(ValidationError::new(
                "limit",
                "out_of_range",
                format!("limit must be between 1 and {}", self.settings.list_max_limit),
            )
            .into());
        }
        // One extra row tells whether another page exists without a COUNT.
        let query = UserListQuery {
            after,
            limit: limit + 1,
            email: filter.email,
            email_prefix: filter.email_prefix,
            status: filter.status,
            role: filter.role,
        };
        let mut items = self.db("list_users", self.store.list_users(&query)).await?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|u| u.id)
        } else {
            None
        };
        Ok(UserPage { items, next_after })
    }
}

async fn observed_db<T>(
    observer: &dyn StoreObserver,
    op: &'static str,
    fut: impl Future<Output = Result<T, RepoError>>,
) -> Result<T, RepoError> {
    let (out, elapsed) = timing::measure_outcome(Component::Db, op, fut, Result::is_err).await;
    observer.observe(op, elapsed, out.as_ref().map(|_| ()));
    out
}

/// After a change to a user: the user entry and every cached session of theirs (each
/// embeds the user row, and some were just revoked) must go. Only sessions alive until the
/// change matter, since a cached dead session is refused whatever user it carries.
fn stale_user_keys(id: UserId, sessions: Result<Vec<Session>, RepoError>, now: Timestamp) -> Vec<String> {
    let mut keys = vec![user_key(id)];
    match sessions {
        Ok(sessions) => keys.extend(
            sessions
                .iter()
                .filter(|s| s.revoked_at.is_none_or(|at| at >= now) && s.expires_at > now)
                .map(|s| session_key(&s.token_hash)),
        ),
        Err(e) => {
            tracing::warn!(user_id = %id, error = %e, "cannot list sessions to invalidate; they age out of the cache")
        }
    }
    keys
}

fn fingerprint(reg: &Registration) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(reg.email.as_str().as_bytes());
    h.update([0]);
    h.update(reg.name.as_str().as_bytes());
    h.finalize().into()
}

/// The user as the API shows it, the `user` of every user event; events never carry the
/// hash.
pub fn user_json(user: &User) -> serde_json::Value {
    serde_json::json!({
        "id": user.id.to_string(),
        "email": user.email.as_str(),
        "name": user.name.as_str(),
        "role": user.role.as_str(),
        "status": user.status.as_str(),
        "verified": user.verified,
        "version": user.version.0,
        "created_at": rfc3339(user.created_at),
        "updated_at": rfc3339(user.updated_at),
    })
}

fn session_json(session: &Session) -> serde_json::Value {
    serde_json::json!({
        "id": session.id.to_string(),
        "user_id": session.user_id.to_string(),
        "created_at": rfc3339(session.created_at),
        "expires_at": rfc3339(session.expires_at),
    })
}

/// Who acted, as events record it: the user themself, an admin (a user with the role,
/// or the admin token), or Strata itself.
#[derive(Clone, Copy)]
enum EventActor {
    User(UserId),
    Admin(Option<UserId>),
    /// A SCIM client with a provisioning token (its id).
    Provisioner(uuid::Uuid),
    /// Someone not signed in, about no account (a throttled login for an unknown email).
    Anonymous,
}

impl EventActor {
    fn of(actor: &Actor, subject: UserId) -> Self {
        match actor {
            Actor::System => EventActor::Admin(None),
            Actor::Provisioner(token) => EventActor::Provisioner(*token),
            Actor::User { user, .. } if user.id == subject => EventActor::User(user.id),
            Actor::User { user, .. } => EventActor::Admin(Some(user.id)),
        }
    }

    fn json(self) -> serde_json::Value {
        match self {
            EventActor::User(id) => serde_json::json!({ "type": "user", "id": id.to_string() }),
            EventActor::Admin(Some(id)) => serde_json::json!({ "type": "admin", "id": id.to_string() }),
            EventActor::Admin(None) => serde_json::json!({ "type": "admin", "id": null, "via": "admin_token" }),
            EventActor::Anonymous => serde_json::json!({ "type": "anonymous" }),
            EventActor::Provisioner(token) => {
                serde_json::json!({ "type": "admin", "id": null, "via": "provisioning_token", "token_id": token.to_string() })
            }
        }
    }
}

fn event(
    event_type: &'static str,
    aggregate: uuid::Uuid,
    actor: EventActor,
    mut data: serde_json::Value,
    now: Timestamp,
) -> OutboxEvent {
    data["actor"] = actor.json();
    OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: aggregate,
        event_type,
        payload: data.to_string(),
        created_at: now,
        traceparent: crate::timing::traceparent(),
    }
}
