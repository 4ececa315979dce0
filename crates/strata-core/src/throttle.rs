//! Login throttling: failed attempts are counted per account and per client address in
//! fixed windows; once a key reaches its limit, logins for it are refused until its window
//! ends, even with the right password (otherwise the lock would be an oracle).
//!
//! State is per instance and bounded in memory. Behind N instances an attacker gets at
//! most N× the budget; a shared store can replace this later without touching callers.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Duration;

use parking_lot::Mutex;

use crate::domain::Timestamp;

#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub max_failures: u32,
    pub window: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct ThrottleSettings {
    pub per_account: Limit,
    pub per_client: Limit,
    /// Tracked keys per shard before expired ones are swept and, failing that, the oldest
    /// dropped: a spray over millions of emails cannot grow memory without bound.
    pub max_keys_per_shard: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            per_account: Limit { max_failures: 5, window: Duration::from_secs(300) },
            per_client: Limit { max_failures: 50, window: Duration::from_secs(300) },
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
    hasher: std::collections::hash_map::RandomState,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings) -> Self {
        LoginThrottle {
            settings,
            accounts: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            clients: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
        }
    }

    fn shard<'a>(&self, shards: &'a [Shard; SHARDS], key: &str) -> &'a Shard {
        &shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// `Err(retry_after)` when either key is locked out.
    pub fn check(&self, account: &str, client: &str, now: Timestamp) -> Result<(), Duration> {
        let a = self.blocked_for(&self.accounts, account, self.settings.per_account, now);
        let c = self.blocked_for(&self.clients, client, self.settings.per_client, now);
        match a.max(c) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, account: &str, client: &str, now: Timestamp) {
        self.bump(&self.accounts, account, self.settings.per_account, now);
        self.bump(&self.clients, client, self.settings.per_client, now);
    }

    /// A successful login clears the account's count (not the client's: one good password
    /// must not reset a spraying client's budget).
    pub fn record_success(&self, account: &str) {
        self.shard(&self.accounts, account).lock().remove(account);
    }

    fn blocked_for(&self, shards: &[Shard; SHARDS], key: &str, limit: Limit, now: Timestamp) -> Option<Duration> {
        let map = self.shard(shards, key).lock();
        let w = map.get(key)?;
        let end = w.started.plus(limit.window);
        (w.failures >= limit.max_failures && now < end).then(|| {
            // Round up so a client that waits exactly Retry-After seconds is let through.
            let micros = (end.micros() - now.micros()).max(0) as u64;
            Duration::from_secs(micros.div_ceil(1_000_000).max(1))
        })
    }

    fn bump(&self, shards: &[Shard; SHARDS], key: &str, limit: Limit, now: Timestamp) {
        let mut map = self.shard(shards, key).lock();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            per_account: Limit { max_failures: 3, window: Duration::from_secs(60) },
            per_client: Limit { max_failures: 5, window: Duration::from_secs(60) },
            max_keys_per_shard: 4,
        }
    }

    const T0: Timestamp = Timestamp(1_000_000_000_000);

    #[test]
    fn locks_account_after_limit_until_window_ends() {
        let t = LoginThrottle::new(settings());
        for _ in 0..3 {
            assert!(t.check("a@x.io", "1.1.1.1", T0).is_ok());
            t.record_failure("a@x.io", "1.1.1.1", T0);
        }
        assert_eq!(t.check("a@x.io", "2.2.2.2", T0), Err(Duration::from_secs(60)));
        let later = T0.plus(Duration::from_secs(59));
        assert_eq!(t.check("a@x.io", "2.2.2.2", later), Err(Duration::from_secs(1)));
        assert!(t.check("a@x.io", "2.2.2.2", T0.plus(Duration::from_secs(60))).is_ok());
    }

    #[test]
    fn locks_client_across_accounts() {
        let t = LoginThrottle::new(settings());
        for i in 0..5 {
            t.record_failure(&format!("u{i}@x.io"), "9.9.9.9", T0);
        }
        assert!(t.check("fresh@x.io", "9.9.9.9", T0).is_err());
        assert!(t.check("fresh@x.io", "8.8.8.8", T0).is_ok());
    }

    #[test]
    fn success_clears_account_only() {
        let t = LoginThrottle::new(settings());
        for _ in 0..2 {
            t.record_failure("a@x.io", "1.1.1.1", T0);
        }
        t.record_success("a@x.io");
        t.record_failure("a@x.io", "1.1.1.1", T0);
        t.record_failure("a@x.io", "1.1.1.1", T0);
        assert!(t.check("a@x.io", "1.1.1.1", T0).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let t = LoginThrottle::new(settings());
        for i in 0..10_000 {
            t.record_failure(&format!("u{i}@x.io"), &format!("c{i}"), T0);
        }
        let total: usize = t.accounts.iter().map(|s| s.lock().len()).sum();
        assert!(total <= SHARDS * 4, "{total}");
    }
}
