//! The caching policy of the account service: what is cached (session token → session and
//! user; user by id; unknown tokens and ids as negative entries), under which keys, how
//! values are encoded, and how long they live. The service decides *when* to read, fill
//! and invalidate; the byte-level [`Cache`] port (adapters in strata-cache) stores bytes.
//!
//! Values carry a schema version and the user's row version. A value that does not decode
//! (another schema, a foreign writer, a truncated read) is a miss, never an error. Cached
//! users never carry the password hash: a cache dump reveals no credential material, and
//! nothing on the paths that read the cache needs the hash.
//!
//! The cache decides authorization (a cached session says who the caller is and what role
//! they have), yet whoever can write to the cache servers is not trusted with that. So
//! every value is sealed with an HMAC-SHA256 under a secret the instances share
//! ([`CacheSigner`]), computed over the key as well as the value: a forged value, or a
//! genuine one copied under another key (Bob's session under Alice's token), fails the
//! check and is treated as a miss, counted as `rejected`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::domain::{
    DisplayName, Email, PasswordHash, Role, Session, SessionId, Timestamp, TokenHash, User, UserId, UserStatus, Version,
};
use crate::error::RepoError;
use crate::ports::{Cache, CacheObserver};
use crate::secret::Secret;
use crate::singleflight::SingleFlight;
use crate::timing::{self, Component};

/// Bumped when the encoding changes; older or newer values then read as misses, so a
/// rolling deploy never misreads its neighbour's entries.
pub const SCHEMA_VERSION: u8 = 4;

/// Key prefix; the digit is the key-layout version.
const KEY_PREFIX: &str = "strata:1:";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheSettings {
    /// Lifetime of positive entries (capped by the session's own expiry).
    pub ttl: Duration,
    /// Lifetime of negative entries (unknown token, unknown user id): short, since they
    /// exist only to absorb repeated lookups of garbage.
    pub negative_ttl: Duration,
    /// Each TTL is shortened by a random fraction up to this (0.0–1.0), so entries filled
    /// together (a warm-up burst) do not all expire together and stampede the database.
    pub jitter: f64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings { ttl: Duration::from_secs(60), negative_ttl: Duration::from_secs(10), jitter: 0.1 }
    }
}

/// What a cache entry holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Cached {
    Session(Session, User),
    User(User),
    /// Looked up and not found (negative entry).
    Absent,
}

pub fn session_key(hash: &TokenHash) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + 2 + 64);
    key.push_str(KEY_PREFIX);
    key.push_str("s:");
    for b in hash.0 {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 15)]));
    }
    key
}

pub fn user_key(id: UserId) -> String {
    format!("{KEY_PREFIX}u:{}", id.as_uuid().simple())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

const TAG_SESSION: u8 = 1;
const TAG_USER: u8 = 2;
const TAG_ABSENT: u8 = 3;

pub fn encode(value: &Cached) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.push(SCHEMA_VERSION);
    match value {
        Cached::Session(session, user) => {
            out.push(TAG_SESSION);
            out.extend_from_slice(session.id.as_bytes());
            out.extend_from_slice(session.user_id.as_bytes());
            out.extend_from_slice(&session.token_hash.0);
            out.extend_from_slice(&session.created_at.0.to_be_bytes());
            out.extend_from_slice(&session.expires_at.0.to_be_bytes());
            match session.revoked_at {
                Some(at) => {
                    out.push(1);
                    out.extend_from_slice(&at.0.to_be_bytes());
                }
                None => out.push(0),
            }
            encode_user(&mut out, user);
        }
        Cached::User(user) => {
            out.push(TAG_USER);
            encode_user(&mut out, user);
        }
        Cached::Absent => out.push(TAG_ABSENT),
    }
    out
}

fn encode_user(out: &mut Vec<u8>, user: &User) {
    out.extend_from_slice(user.id.as_bytes());
    out.extend_from_slice(&user.version.0.to_be_bytes());
    put_str(out, user.email.as_str());
    put_str(out, user.name.as_str());
    out.push(match user.role {
        Role::User => 0,
        Role::Admin => 1,
    });
    out.push(match user.status {
        UserStatus::Active => 0,
        UserStatus::Disabled => 1,
    });
    // One byte of flags: bit 0 `verified`, bit 1 `mfa_enabled`.
    out.push(u8::from(user.verified) | (u8::from(user.mfa_enabled) << 1));
    out.extend_from_slice(&user.created_at.0.to_be_bytes());
    out.extend_from_slice(&user.updated_at.0.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Emails are ≤ 254 bytes and names ≤ 100 characters (≤ 400 bytes): u16 is ample.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// `None` for anything that is not exactly a value of this schema.
pub fn decode(bytes: &[u8]) -> Option<Cached> {
    let mut r = Reader(bytes);
    if r.u8()? != SCHEMA_VERSION {
        return None;
    }
    let value = match r.u8()? {
        TAG_SESSION => {
            let id = SessionId::from_bytes(r.array()?);
            let user_id = UserId::from_bytes(r.array()?);
            let token_hash = TokenHash(r.array()?);
            let created_at = Timestamp(r.i64()?);
            let expires_at = Timestamp(r.i64()?);
            let revoked_at = match r.u8()? {
                0 => None,
                1 => Some(Timestamp(r.i64()?)),
                _ => return None,
            };
            let user = decode_user(&mut r)?;
            if user.id != user_id {
                return None;
            }
            Cached::Session(Session { id, user_id, token_hash, created_at, expires_at, revoked_at }, user)
        }
        TAG_USER => Cached::User(decode_user(&mut r)?),
        TAG_ABSENT => Cached::Absent,
        _ => return None,
    };
    r.0.is_empty().then_some(value)
}

fn decode_user(r: &mut Reader<'_>) -> Option<User> {
    let id = UserId::from_bytes(r.array()?);
    let version = Version(r.u64()?);
    let email = Email::from_trusted(r.string()?);
    let name = DisplayName::from_trusted(r.string()?);
    let role = match r.u8()? {
        0 => Role::User,
        1 => Role::Admin,
        _ => return None,
    };
    let status = match r.u8()? {
        0 => UserStatus::Active,
        1 => UserStatus::Disabled,
        _ => return None,
    };
    let flags = r.u8()?;
    if flags > 0b11 {
        return None;
    }
    let (verified, mfa_enabled) = (flags & 1 != 0, flags & 2 != 0);
    let created_at = Timestamp(r.i64()?);
    let updated_at = Timestamp(r.i64()?);
    Some(User {
        id,
        email,
        name,
        // Never cached; an empty PHC string verifies nothing, so misuse fails closed.
        password_hash: PasswordHash::from_trusted(String::new()),
        role,
        status,
        verified,
        mfa_enabled,
        version,
        created_at,
        updated_at,
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.array()?))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Length of the tag appended to every cached value.
pub const TAG_LEN: usize = 32;

/// Seals cached values with an HMAC bound to their key, and checks them on the way back.
/// Seals with the current secret; accepts the current and any previous one, so a secret
/// is rotated by deploying `new` with `previous = [old]` everywhere, then dropping `old`
/// once the cache TTL has passed.
#[derive(Clone)]
pub struct CacheSigner {
    // Keyed once: cloning the keyed state per value skips rehashing the key.
    current: HmacSha256,
    previous: Vec<HmacSha256>,
}

impl std::fmt::Debug for CacheSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheSigner(<redacted>, {} previous)", self.previous.len())
    }
}

impl CacheSigner {
    pub fn new(current: &Secret, previous: &[Secret]) -> Self {
        let keyed = |s: &Secret| keyed(s.expose().as_bytes());
        CacheSigner { current: keyed(current), previous: previous.iter().map(keyed).collect() }
    }

    /// A random secret known to this process only: right for an in-process cache, where
    /// no other instance needs to read the values.
    pub fn ephemeral() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        CacheSigner { current: keyed(&key), previous: Vec::new() }
    }

    fn tag(mac: &HmacSha256, key: &str, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = mac.clone();
        // Length-prefixed, so no (key, payload) pair can be re-split into another.
        mac.update(&(key.len() as u64).to_be_bytes());
        mac.update(key.as_bytes());
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// `payload` followed by its tag.
    pub fn seal(&self, key: &str, mut payload: Vec<u8>) -> Vec<u8> {
        let tag = Self::tag(&self.current, key, &payload);
        payload.extend_from_slice(&tag);
        payload
    }

    /// The payload of a value sealed under `key` by any accepted secret; `None` otherwise.
    pub fn open<'a>(&self, key: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
        let split = sealed.len().checked_sub(TAG_LEN)?;
        let (payload, tag) = sealed.split_at(split);
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|mac| bool::from(Self::tag(mac, key, payload).ct_eq(tag)))
            .then_some(payload)
    }
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; the error case is unreachable.
    <HmacSha256 as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// How one kind of cached value maps to and from a cache entry.
pub(crate) struct Kind<T> {
    /// Metrics label.
    pub(crate) name: &'static str,
    unwrap: fn(Cached) -> Option<T>,
    wrap: fn(&T) -> Cached,
}

pub(crate) const SESSION: Kind<(Session, User)> = Kind {
    name: "session",
    unwrap: |c| match c {
        Cached::Session(session, user) => Some((session, user)),
        _ => None,
    },
    wrap: |(session, user)| Cached::Session(session.clone(), user.clone()),
};

pub(crate) const USER: Kind<User> = Kind {
    name: "user",
    unwrap: |c| match c {
        Cached::User(user) => Some(user),
        _ => None,
    },
    wrap: |user| Cached::User(user.clone()),
};

/// The service's handle on the cache port: encoding, timing, metrics and single-flight.
pub(crate) struct AuthCache {
    pub(crate) cache: Arc<dyn Cache>,
    pub(crate) settings: CacheSettings,
    signer: CacheSigner,
    pub(crate) observer: Arc<dyn CacheObserver>,
    pub(crate) sessions: SingleFlight<TokenHash, Result<Option<(Session, User)>, RepoError>>,
    pub(crate) users: SingleFlight<UserId, Result<Option<User>, RepoError>>,
}

impl AuthCache {
    pub(crate) fn new(
        cache: Arc<dyn Cache>,
        settings: CacheSettings,
        signer: CacheSigner,
        observer: Arc<dyn CacheObserver>,
    ) -> Self {
        AuthCache {
            cache,
            settings,
            signer,
            observer,
            sessions: SingleFlight::default(),
            users: SingleFlight::default(),
        }
    }

    /// A cache read; errors, forged and undecodable values are misses (errors and forgeries
    /// are counted).
    pub(crate) async fn get(&self, kind: &'static str, key: &str) -> Option<Cached> {
        let (got, _) = timing::measure(Component::Cache, "get", self.cache.get(key)).await;
        match got {
            Ok(Some(bytes)) => match self.signer.open(key, &bytes) {
                Some(payload) => decode(payload),
                None => {
                    self.observer.lookup(kind, "rejected");
                    tracing::warn!(kind, "cached value failed its authentication check; ignored");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.observer.lookup(kind, "error");
                tracing::debug!(error = %e, "cache read failed; using the database");
                None
            }
        }
    }

    pub(crate) async fn fill(&self, key: &str, value: &Cached, ttl: Duration, generation: u64) {
        let (out, _) = timing::measure(
            Component::Cache,
            "fill",
            self.cache.fill(key, self.signer.seal(key, encode(value)), self.jittered(ttl), generation),
        )
        .await;
        if let Err(e) = out {
            tracing::debug!(error = %e, "cache fill failed");
        }
    }

    /// Never fails the caller: the database change has committed, and what could not be
    /// invalidated ages out within the documented bound (see ARCHITECTURE.md).
    pub(crate) async fn invalidate(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let (out, _) = timing::measure(Component::Cache, "invalidate", self.cache.invalidate(keys)).await;
        if let Err(e) = out {
            tracing::warn!(error = %e, keys = keys.len(), "cache invalidation failed; entries age out");
        }
    }

    /// Read-through for one kind of value: a hit or negative hit answers at once; misses of
    /// one key share a single `load`, whose result fills the cache unless an invalidation
    /// happened while it ran.
    pub(crate) async fn read_through<K, T, F, Fut>(
        &self,
        kind: &Kind<T>,
        key: &str,
        flight: &SingleFlight<K, Result<Option<T>, RepoError>>,
        flight_key: &K,
        ttl: impl Fn(&T) -> Duration,
        load: F,
    ) -> Result<Option<T>, RepoError>
    where
        K: Eq + std::hash::Hash + Clone,
        T: Clone,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, RepoError>>,
    {
        if !self.cache.available() {
            self.observer.lookup(kind.name, "bypass");
            return load().await;
        }
        if let Some(found) = self.lookup(kind, key).await {
            self.observer.lookup(kind.name, if found.is_some() { "hit" } else { "negative_hit" });
            return Ok(found);
        }
        flight
            .run(flight_key, || async {
                // Read before the database, so a change committed meanwhile voids the fill.
                let generation = self.cache.generation();
                // The flight we missed may have filled the key just before we joined.
                if let Some(found) = self.lookup(kind, key).await {
                    return Ok(found);
                }
                self.observer.lookup(kind.name, "miss");
                let found = load().await?;
                match &found {
                    Some(value) => self.fill(key, &(kind.wrap)(value), ttl(value), generation).await,
                    None => self.fill(key, &Cached::Absent, self.settings.negative_ttl, generation).await,
                }
                Ok(found)
            })
            .await
    }

    /// `Some(Some(v))` for a hit, `Some(None)` for a negative hit, `None` for a miss (an
    /// entry of another kind under this key counts as a miss).
    async fn lookup<T>(&self, kind: &Kind<T>, key: &str) -> Option<Option<T>> {
        match self.get(kind.name, key).await? {
            Cached::Absent => Some(None),
            other => (kind.unwrap)(other).map(Some),
        }
    }

    /// TTL for a positive session entry: never beyond the session's own expiry.
    pub(crate) fn session_ttl(&self, session: &Session, now: Timestamp) -> Duration {
        let remaining = Duration::from_micros(u64::try_from(session.expires_at.0.saturating_sub(now.0)).unwrap_or(0));
        // An expired or revoked session is a terminal state: caching it is safe and keeps
        // replays of dead tokens off the database.
        if remaining.is_zero() || session.revoked_at.is_some() {
            return self.settings.ttl;
        }
        self.settings.ttl.min(remaining)
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let fraction = (next_random() >> 11) as f64 / (1u64 << 53) as f64;
        let cut = ttl.as_secs_f64() * self.settings.jitter.clamp(0.0, 1.0) * fraction;
        ttl.saturating_sub(Duration::from_secs_f64(cut)).max(Duration::from_millis(1))
    }
}

/// splitmix64 over a shared counter: jitter needs spread, not secrecy, and a syscall per
/// fill would be wasted.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    static SEEDED: std::sync::Once = std::sync::Once::new();
    SEEDED.call_once(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        STATE.store(seed, Ordering::Relaxed);
    });
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionToken;

    fn user() -> User {
        User {
            id: UserId::generate(),
            email: Email::parse("ada@example.com").unwrap(),
            name: DisplayName::parse("Ada 🦀 'quoted'").unwrap(),
            password_hash: PasswordHash::from_trusted("$argon2id$secret".into()),
            role: Role::Admin,
            status: UserStatus::Disabled,
            verified: false,
            mfa_enabled: true,
            version: Version(7),
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
        }
    }

    #[test]
    fn values_round_trip_without_the_password_hash() {
        let u = user();
        let s = Session {
            id: SessionId::generate(),
            user_id: u.id,
            token_hash: SessionToken::generate().hash(),
            created_at: Timestamp(10),
            expires_at: Timestamp(20),
            revoked_at: Some(Timestamp(15)),
        };
        let bytes = encode(&Cached::Session(s.clone(), u.clone()));
        assert!(!String::from_utf8_lossy(&bytes).contains("argon2"));
        let Some(Cached::Session(s2, u2)) = decode(&bytes) else { panic!("did not decode") };
        assert_eq!(s2, s);
        assert_eq!((u2.id, u2.email.as_str(), u2.name.as_str()), (u.id, u.email.as_str(), u.name.as_str()));
        assert_eq!((u2.role, u2.status, u2.version, u2.updated_at), (u.role, u.status, u.version, u.updated_at));
        assert_eq!(u2.password_hash.as_str(), "");
        assert_eq!(decode(&encode(&Cached::Absent)), Some(Cached::Absent));
        assert!(matches!(decode(&encode(&Cached::User(u.clone()))), Some(Cached::User(x)) if x.version == Version(7)));
    }

    #[test]
    fn anything_else_is_a_miss() {
        let good = encode(&Cached::User(user()));
        // Every truncation, a trailing byte, another schema version, garbage: all None.
        for n in 0..good.len() {
            assert_eq!(decode(&good[..n]), None, "prefix of {n} bytes");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let mut other_schema = good.clone();
        other_schema[0] = SCHEMA_VERSION + 1;
        assert_eq!(decode(&other_schema), None);
        assert_eq!(decode(b"hello"), None);
    }

    #[test]
    fn sealed_values_open_only_under_their_key_and_an_accepted_secret() {
        let old = Secret::new("old secret, rotated out soon");
        let new = Secret::new("new secret, current");
        let signer = CacheSigner::new(&new, std::slice::from_ref(&old));
        let payload = encode(&Cached::User(user()));
        let sealed = signer.seal("k1", payload.clone());
        assert_eq!(sealed.len(), payload.len() + TAG_LEN);
        assert_eq!(signer.open("k1", &sealed), Some(payload.as_slice()));
        // Under another key, or with any single bit flipped (the role byte included).
        assert_eq!(signer.open("k2", &sealed), None);
        for i in 0..sealed.len() {
            let mut forged = sealed.clone();
            forged[i] ^= 1;
            assert_eq!(signer.open("k1", &forged), None, "bit flip at byte {i} accepted");
        }
        assert_eq!(signer.open("k1", &sealed[..TAG_LEN - 1]), None);
        assert_eq!(signer.open("k1", &payload), None, "an unsealed value");
        // Rotation: values sealed by the previous secret still open; unknown secrets do not.
        let before = CacheSigner::new(&old, &[]).seal("k1", payload.clone());
        assert_eq!(signer.open("k1", &before), Some(payload.as_slice()));
        let stranger = CacheSigner::new(&Secret::new("somebody else's secret"), &[]).seal("k1", payload.clone());
        assert_eq!(signer.open("k1", &stranger), None);
        assert_eq!(CacheSigner::ephemeral().open("k1", &sealed), None);
        assert!(!format!("{signer:?}").contains("secret"));
    }

    #[test]
    fn keys_are_distinct_and_stable() {
        let h = TokenHash([0xab; 32]);
        assert_eq!(session_key(&h), format!("strata:1:s:{}", "ab".repeat(32)));
        let id = UserId::generate();
        assert!(user_key(id).starts_with("strata:1:u:") && user_key(id).len() == "strata:1:u:".len() + 32);
    }

    struct Nothing;

    #[async_trait::async_trait]
    impl Cache for Nothing {
        fn describe(&self) -> String {
            "nothing".into()
        }
        fn generation(&self) -> u64 {
            0
        }
        async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, crate::ports::CacheError> {
            Ok(None)
        }
        async fn fill(&self, _: &str, _: Vec<u8>, _: Duration, _: u64) -> Result<bool, crate::ports::CacheError> {
            Ok(false)
        }
        async fn invalidate(&self, _: &[String]) -> Result<(), crate::ports::CacheError> {
            Ok(())
        }
    }

    #[test]
    fn jitter_shortens_within_bounds() {
        let c = AuthCache::new(
            Arc::new(Nothing),
            CacheSettings { jitter: 0.5, ..CacheSettings::default() },
            CacheSigner::ephemeral(),
            Arc::new(crate::ports::NoopObserver),
        );
        let ttl = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..200).map(|_| c.jittered(ttl)).collect();
        assert!(samples.iter().all(|d| *d <= ttl && *d >= Duration::from_secs(50)));
        assert!(samples.iter().any(|d| *d < Duration::from_secs(95)), "jitter actually spreads");
    }
}
