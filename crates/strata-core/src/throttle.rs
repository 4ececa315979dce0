//! Login throttling: attempts are counted per account and per client address in fixed
//! windows; once a key reaches its limit, logins for it are refused until its window ends,
//! even with the right password (otherwise the lock would be an oracle).
//!
//! An attempt is a *reservation*: it is counted, under the same lock that checks the
//! limit, before the password is verified, and given back only when the attempt turns out
//! not to be a wrong guess (a correct password, or a failure before verification). So at
//! any concurrency no more than `max_failures` wrong guesses per window are ever verified:
//! a burst of concurrent guesses cannot all pass the check before the first is recorded.
//!
//! Registrations are throttled per client too, counting every attempt (a new account costs
//! a hash and a row whatever happens next).
//!
//! [`LoginThrottle`] keeps the counters in this instance, bounded in memory. [`Throttle`]
//! is what the service uses: with [`SharedCounters`] configured (Redis), the counters live
//! there and every instance draws on one budget, reserved atomically by the store itself;
//! when the store cannot be reached, the instance falls back to its local counters (a
//! per-instance budget, never none) and says so in the log.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::domain::Timestamp;
use crate::ports::CacheError;

#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub max_failures: u32,
    pub window: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct ThrottleSettings {
    pub per_account: Limit,
    pub per_client: Limit,
    /// Registration attempts per client address (`max_failures` counts attempts here).
    pub registrations_per_client: Limit,
    /// Tracked keys per shard before expired ones are swept and, failing that, the oldest
    /// dropped: a spray over millions of emails cannot grow memory without bound.
    pub max_keys_per_shard: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            per_account: Limit { max_failures: 5, window: Duration::from_secs(300) },
            per_client: Limit { max_failures: 50, window: Duration::from_secs(300) },
            registrations_per_client: Limit { max_failures: 20, window: Duration::from_secs(600) },
            max_keys_per_shard: 16_384,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Timestamp,
    failures: u32,
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<String, Window>>;

pub struct LoginThrottle {
    settings: ThrottleSettings,
    accounts: [Shard; SHARDS],
    clients: [Shard; SHARDS],
    registrations: [Shard; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        LoginThrottle {
            settings,
            accounts: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            clients: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            registrations: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
        }
    }

    fn shard<'a>(&self, shards: &'a [Shard; SHARDS], key: &str) -> &'a Shard {
        &shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Takes one attempt from both budgets, or `Err(retry_after)` when either is spent.
    /// Check and count happen under both shard locks (always account first, then client,
    /// so two reservations cannot deadlock), which is what makes the budget hold under
    /// concurrency. A reservation stands as a failure unless [`Self::refund`] or
    /// [`Self::succeeded`] gives it back.
    pub fn reserve(&self, account: &str, client: &str, now: Timestamp) -> Result<(), Duration> {
        let mut accounts = self.shard(&self.accounts, account).lock();
        let mut clients = self.shard(&self.clients, client).lock();
        let a = blocked_for(&accounts, account, self.settings.per_account, now);
        let c = blocked_for(&clients, client, self.settings.per_client, now);
        if let Some(wait) = a.max(c) {
            return Err(wait);
        }
        self.bump(&mut accounts, account, self.settings.per_account, now);
        self.bump(&mut clients, client, self.settings.per_client, now);
        Ok(())
    }

    /// Takes one attempt from the client's budget only, or `Err(retry_after)`.
    pub fn reserve_client(&self, client: &str, now: Timestamp) -> Result<(), Duration> {
        let limit = self.settings.per_client;
        let mut map = self.shard(&self.clients, client).lock();
        if let Some(wait) = blocked_for(&map, client, limit, now) {
            return Err(wait);
        }
        self.bump(&mut map, client, limit, now);
        Ok(())
    }

    /// Gives back a reservation taken by [`Self::reserve_client`].
    pub fn refund_client(&self, client: &str, now: Timestamp) {
        self.unbump(&self.clients, client, self.settings.per_client, now);
    }

    /// Takes one registration attempt from the client's budget, or `Err(retry_after)`.
    pub fn reserve_registration(&self, client: &str, now: Timestamp) -> Result<(), Duration> {
        let limit = self.settings.registrations_per_client;
        let mut map = self.shard(&self.registrations, client).lock();
        if let Some(wait) = blocked_for(&map, client, limit, now) {
            return Err(wait);
        }
        self.bump(&mut map, client, limit, now);
        Ok(())
    }

    /// Gives a registration attempt back (it was refused before costing anything).
    pub fn refund_registration(&self, client: &str, now: Timestamp) {
        self.unbump(&self.registrations, client, self.settings.registrations_per_client, now);
    }

    /// Gives a reservation back: the attempt was not a wrong guess (it failed before any
    /// password was verified).
    pub fn refund(&self, account: &str, client: &str, now: Timestamp) {
        self.unbump(&self.accounts, account, self.settings.per_account, now);
        self.unbump(&self.clients, client, self.settings.per_client, now);
    }

    /// A correct password clears the account's count and returns the client's reservation
    /// (the client's earlier failures stay: one good password must not reset a spraying
    /// client's budget).
    pub fn succeeded(&self, account: &str, client: &str, now: Timestamp) {
        self.shard(&self.accounts, account).lock().remove(account);
        self.unbump(&self.clients, client, self.settings.per_client, now);
    }

    fn unbump(&self, shards: &[Shard; SHARDS], key: &str, limit: Limit, now: Timestamp) {
        let mut map = self.shard(shards, key).lock();
        // A reservation taken in a window that has since ended is gone with that window.
        if let Some(w) = map.get_mut(key)
            && now < w.started.plus(limit.window)
        {
            w.failures = w.failures.saturating_sub(1);
        }
    }

    fn bump(&self, map: &mut HashMap<String, Window>, key: &str, limit: Limit, now: Timestamp) {
        if map.len() >= self.settings.max_keys_per_shard && !map.contains_key(key) {
            map.retain(|_, w| now < w.started.plus(limit.window));
            if map.len() >= self.settings.max_keys_per_shard
                && let Some(oldest) = map.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let w = map.entry(key.to_owned()).or_insert(Window { started: now, failures: 0 });
        if now >= w.started.plus(limit.window) {
            *w = Window { started: now, failures: 0 };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

fn blocked_for(map: &HashMap<String, Window>, key: &str, limit: Limit, now: Timestamp) -> Option<Duration> {
    let w = map.get(key)?;
    let end = w.started.plus(limit.window);
    (w.failures >= limit.max_failures && now < end).then(|| {
        // Round up so a client that waits exactly Retry-After seconds is let through.
        let micros = (end.micros() - now.micros()).max(0) as u64;
        Duration::from_secs(micros.div_ceil(1_000_000).max(1))
    })
}

/// One counter of a reservation: its key in the shared store and its limit.
#[derive(Clone, Copy, Debug)]
pub struct Counter<'a> {
    pub key: &'a str,
    pub limit: Limit,
}

/// Counters shared by every instance (port; the Redis adapter is in strata-cache).
#[async_trait::async_trait]
pub trait SharedCounters: Send + Sync {
    fn describe(&self) -> String;

    /// Atomically: when every counter is below its limit, adds one to each (a counter's
    /// window starts with its first count) and returns `None`; otherwise changes nothing
    /// and returns how long until the fullest blocking window ends.
    async fn reserve(&self, counters: &[Counter<'_>]) -> Result<Option<Duration>, CacheError>;

    /// Takes one back from each counter that is above zero.
    async fn release(&self, counters: &[Counter<'_>]) -> Result<(), CacheError>;

    /// Forgets a counter.
    async fn clear(&self, key: &str) -> Result<(), CacheError>;
}

/// The service's throttle: shared counters when configured, this instance's otherwise
/// and whenever the shared store fails.
pub struct Throttle {
    local: LoginThrottle,
    shared: Option<Arc<dyn SharedCounters>>,
}

const SHARED_PREFIX: &str = "strata:throttle:1:";

/// Emails are personal data: the shared store sees a digest.
fn account_key(account: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(account.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SHARED_PREFIX}a:{hex}")
}

impl Throttle {
    pub fn local(settings: ThrottleSettings) -> Self {
        Throttle { local: LoginThrottle::new(settings), shared: None }
    }

    pub fn with_shared(mut self, shared: Arc<dyn SharedCounters>) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn describe(&self) -> String {
        self.shared.as_ref().map_or_else(|| "per instance".to_owned(), |s| s.describe())
    }

    /// The shared store's answer to a reservation; `None` when there is no store or it
    /// failed, so the caller uses the local counters.
    async fn shared_reserve(&self, counters: &[Counter<'_>]) -> Option<Result<(), Duration>> {
        match self.shared.as_ref()?.reserve(counters).await {
            Ok(None) => Some(Ok(())),
            Ok(Some(wait)) => Some(Err(wait)),
            Err(e) => {
                degraded(&e);
                None
            }
        }
    }

    /// Whether the shared store took the release (and `clear`, if given); false sends the
    /// caller to the local counters.
    async fn shared_release(&self, counters: &[Counter<'_>], clear: Option<&str>) -> bool {
        let Some(shared) = &self.shared else { return false };
        let cleared = match clear {
            Some(key) => shared.clear(key).await,
            None => Ok(()),
        };
        match cleared.and(shared.release(counters).await) {
            Ok(()) => true,
            Err(e) => {
                degraded(&e);
                false
            }
        }
    }

    fn client_key(client: &str) -> String {
        format!("{SHARED_PREFIX}c:{client}")
    }

    fn registration_key(client: &str) -> String {
        format!("{SHARED_PREFIX}r:{client}")
    }

    /// See [`LoginThrottle::reserve`].
    pub async fn reserve(&self, account: &str, client: &str, now: Timestamp) -> Result<(), Duration> {
        let (a, c) = (account_key(account), Self::client_key(client));
        let s = &self.local.settings;
        let counters = [Counter { key: &a, limit: s.per_account }, Counter { key: &c, limit: s.per_client }];
        match self.shared_reserve(&counters).await {
            Some(answer) => answer,
            None => self.local.reserve(account, client, now),
        }
    }

    /// See [`LoginThrottle::refund`].
    pub async fn refund(&self, account: &str, client: &str, now: Timestamp) {
        let (a, c) = (account_key(account), Self::client_key(client));
        let s = &self.local.settings;
        let counters = [Counter { key: &a, limit: s.per_account }, Counter { key: &c, limit: s.per_client }];
        if !self.shared_release(&counters, None).await {
            self.local.refund(account, client, now);
        }
    }

    /// See [`LoginThrottle::succeeded`].
    pub async fn succeeded(&self, account: &str, client: &str, now: Timestamp) {
        let (a, c) = (account_key(account), Self::client_key(client));
        let counters = [Counter { key: &c, limit: self.local.settings.per_client }];
        if !self.shared_release(&counters, Some(&a)).await {
            self.local.succeeded(account, client, now);
        }
    }

    /// See [`LoginThrottle::reserve_client`].
    pub async fn reserve_client(&self, client: &str, now: Timestamp) -> Result<(), Duration> {
        let key = Self::client_key(client);
        let counters = [Counter { key: &key, limit: self.local.settings.per_client }];
        match self.shared_reserve(&counters).await {
            Some(answer) => answer,
            None => self.local.reserve_client(client, now),
        }
    }

    /// See [`LoginThrottle::refund_client`].
    pub async fn refund_client(&self, client: &str, now: Timestamp) {
        let key = Self::client_key(client);
        let counters = [Counter { key: &key, limit: self.local.settings.per_client }];
        if !self.shared_release(&counters, None).await {
            self.local.refund_client(client, now);
        }
    }

    /// See [`LoginThrottle::reserve_registration`].
    pub async fn reserve_registration(&self, client: &str, now: Timestamp) -> Result<(), Duration> {
        let key = Self::registration_key(client);
        let counters = [Counter { key: &key, limit: self.local.settings.registrations_per_client }];
        match self.shared_reserve(&counters).await {
            Some(answer) => answer,
            None => self.local.reserve_registration(client, now),
        }
    }

    /// See [`LoginThrottle::refund_registration`].
    pub async fn refund_registration(&self, client: &str, now: Timestamp) {
        let key = Self::registration_key(client);
        let counters = [Counter { key: &key, limit: self.local.settings.registrations_per_client }];
        if !self.shared_release(&counters, None).await {
            self.local.refund_registration(client, now);
        }
    }
}

fn degraded(e: &CacheError) {
    tracing::warn!(error = %e, "shared throttle counters unavailable; using this instance's");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            per_account: Limit { max_failures: 3, window: Duration::from_secs(60) },
            per_client: Limit { max_failures: 5, window: Duration::from_secs(60) },
            registrations_per_client: Limit { max_failures: 2, window: Duration::from_secs(60) },
            max_keys_per_shard: 4,
        }
    }

    #[test]
    fn registrations_are_limited_per_client() {
        let t = LoginThrottle::new(settings());
        assert!(t.reserve_registration("1.1.1.1", T0).is_ok());
        assert!(t.reserve_registration("1.1.1.1", T0).is_ok());
        assert_eq!(t.reserve_registration("1.1.1.1", T0), Err(Duration::from_secs(60)));
        assert!(t.reserve_registration("2.2.2.2", T0).is_ok(), "another client is unaffected");
        t.refund_registration("1.1.1.1", T0);
        assert!(t.reserve_registration("1.1.1.1", T0).is_ok(), "a refunded attempt is given back");
        assert!(t.reserve_registration("1.1.1.1", T0.plus(Duration::from_secs(60))).is_ok());
        // Logins are a separate budget.
        assert!(t.reserve("a@x.io", "1.1.1.1", T0).is_ok());
    }

    const T0: Timestamp = Timestamp(1_000_000_000_000);

    #[test]
    fn locks_account_after_limit_until_window_ends() {
        let t = LoginThrottle::new(settings());
        for _ in 0..3 {
            assert!(t.reserve("a@x.io", "1.1.1.1", T0).is_ok());
        }
        assert_eq!(t.reserve("a@x.io", "2.2.2.2", T0), Err(Duration::from_secs(60)));
        let later = T0.plus(Duration::from_secs(59));
        assert_eq!(t.reserve("a@x.io", "2.2.2.2", later), Err(Duration::from_secs(1)));
        assert!(t.reserve("a@x.io", "2.2.2.2", T0.plus(Duration::from_secs(60))).is_ok());
    }

    #[test]
    fn locks_client_across_accounts() {
        let t = LoginThrottle::new(settings());
        for i in 0..5 {
            t.reserve(&format!("u{i}@x.io"), "9.9.9.9", T0).unwrap();
        }
        assert!(t.reserve("fresh@x.io", "9.9.9.9", T0).is_err());
        assert!(t.reserve("fresh@x.io", "8.8.8.8", T0).is_ok());
    }

    #[test]
    fn success_clears_account_only() {
        let t = LoginThrottle::new(settings());
        for _ in 0..2 {
            t.reserve("a@x.io", "1.1.1.1", T0).unwrap();
        }
        t.reserve("a@x.io", "1.1.1.1", T0).unwrap();
        t.succeeded("a@x.io", "1.1.1.1", T0);
        t.reserve("a@x.io", "1.1.1.1", T0).unwrap();
        t.reserve("a@x.io", "1.1.1.1", T0).unwrap();
        // Account: cleared by the success, 2 since. Client: 2 + 2 = 4 of 5 (the success refunded).
        assert!(t.reserve("a@x.io", "1.1.1.1", T0).is_ok());
        assert!(t.reserve("b@x.io", "1.1.1.1", T0).is_err());
    }

    #[test]
    fn refund_returns_the_attempt_to_both_budgets() {
        let t = LoginThrottle::new(settings());
        for _ in 0..10 {
            t.reserve("a@x.io", "1.1.1.1", T0).unwrap();
            t.refund("a@x.io", "1.1.1.1", T0);
        }
        for _ in 0..3 {
            t.reserve("a@x.io", "1.1.1.1", T0).unwrap();
        }
        assert!(t.reserve("a@x.io", "1.1.1.1", T0).is_err());
    }

    /// The defect this design closes: concurrent attempts all passing a check before any
    /// failure was recorded. However many threads race, exactly `max_failures` reservations
    /// are granted per window.
    #[test]
    fn concurrent_reservations_never_exceed_the_budget() {
        let t = std::sync::Arc::new(LoginThrottle::new(settings()));
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for i in 0..16 {
                let (t, granted) = (&t, &granted);
                scope.spawn(move || {
                    for _ in 0..100 {
                        if t.reserve("a@x.io", &format!("c{i}"), T0).is_ok() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 3);
    }

    #[test]
    fn memory_is_bounded() {
        let t = LoginThrottle::new(settings());
        for i in 0..10_000 {
            let _ = t.reserve(&format!("u{i}@x.io"), &format!("c{i}"), T0);
        }
        let total: usize = t.accounts.iter().map(|s| s.lock().len()).sum();
        assert!(total <= SHARDS * 4, "{total}");
    }
}
