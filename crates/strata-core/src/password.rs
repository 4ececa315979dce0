//! Argon2id hashing on a dedicated, bounded pool, and verification of the hash formats
//! an import brings from other systems ([`formats`]: argon2 of any variant, bcrypt,
//! Django's and Keycloak's PBKDF2), each rehashed to argon2id on its first successful
//! login ([`PasswordHasher::verify_and_rehash`]).
//!
//! A verify costs tens of milliseconds of pure CPU. Running it on the async workers would
//! stall every other request on the same thread, and running unboundedly many would let a
//! login flood take every core. So exactly `concurrency` OS threads hash, at most
//! `max_queue` requests wait for them, and the rest are told to come back later — while
//! session checks keep flowing on the async workers.
//!
//! Jobs wait in two lanes. Logins (a user waiting to sign in) are always taken first;
//! new hashes (registration, password change) and idempotent replays wait in a lane a
//! quarter the size, so a sign-up flood fills its own lane and gets `503`s while logins
//! still reach a thread after at most one hash.
//!
//! Each hashing thread keeps one argon2 memory arena (19 MiB with the defaults) for its
//! whole life. Allocating it per hash cost ~1,500 page faults and a fresh zeroing per login
//! on whatever thread ran it, about a fifth of login throughput, and spread hundreds of MiB
//! of arenas over tokio's blocking threads.
//!
//! The argon2 is `argon2-rust` (AVX-512/AVX2 chosen at run time), about twice as fast here
//! as RustCrypto's `argon2` 0.5 that Strata used before and bit-exact with it: the same PHC
//! strings, so hashes of either verify under the other (`bench/argon2.sh`, issue 8).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use argon2_rust::params::{Memory, TagLen};
use argon2_rust::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand_core::{OsRng, RngCore};

use crate::domain::{Password, PasswordHash};
use crate::error::AppError;
use crate::timing::{self, Component};

pub mod formats;

pub use formats::{
    Argon2Variant, HashScheme, MAX_ARGON2_ITERATIONS, MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_PARALLELISM,
    MAX_ARGON2_WORK_KIB, MAX_BCRYPT_COST, MAX_HASH_BYTES, MAX_PBKDF2_WORK, MAX_SALT_BYTES, MIN_HASH_BYTES, Pbkdf2Prf,
    argon2_hash, keycloak_argon2_hash, pbkdf2_hash,
};

/// Argon2id cost parameters. Defaults are OWASP's first recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

impl HashParams {
    fn argon2id(&self) -> Result<Argon2, String> {
        let params = Params::builder()
            .memory(Memory::kib(u64::from(self.memory_kib)))
            .passes(self.iterations)
            .lanes(self.parallelism)
            .tag_len(TagLen::bytes(OUTPUT_LEN as u64))
            .build()
            .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

#[derive(Clone, Copy, Debug)]
pub struct HasherSettings {
    pub params: HashParams,
    /// Hashing threads. Default: the number of cores.
    pub concurrency: usize,
    /// Logins allowed to wait for a thread before new ones are refused as overloaded;
    /// new hashes get a quarter of this (at least one).
    pub max_queue: usize,
}

impl Default for HasherSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        HasherSettings { params: HashParams::default(), concurrency: cores, max_queue: 64 * cores }
    }
}

/// Work for a hashing thread: runs with that thread's reusable argon2 memory.
type Job = Box<dyn FnOnce(&mut Scratch) + Send>;

/// A hashing thread's argon2 memory: one arena, allocated by the first hash and reused by
/// every later one, whatever its parameters (it grows for a larger imported hash).
pub(crate) struct Scratch {
    hasher: argon2_rust::Hasher,
}

impl Scratch {
    fn new(argon2: Argon2) -> Self {
        Scratch { hasher: argon2.hasher() }
    }

    /// The tag of `password` under `argon2` into `out`, whose length must be the tag length.
    fn hash_into(
        &mut self,
        argon2: Argon2,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2_rust::Error> {
        self.hasher.set_argon2(argon2);
        self.hasher.hash_into(password, salt, out)
    }

    /// Gives the arena back (wiped) if it holds more than `blocks` KiB; the next hash
    /// allocates what it needs.
    fn release_beyond(&mut self, blocks: usize) {
        if self.hasher.reserved_blocks() > blocks {
            self.hasher.clear();
        }
    }

    #[cfg(test)]
    fn reserved_blocks(&self) -> usize {
        self.hasher.reserved_blocks()
    }
}

/// Which queue a job waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Verifying a password someone is signing in (or re-authenticating) with.
    Login,
    /// Hashing a new password, or verifying one for an idempotent replay.
    Enrol,
}

struct Lanes {
    login: VecDeque<Job>,
    enrol: VecDeque<Job>,
    closed: bool,
}

struct Queue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    login_capacity: usize,
    enrol_capacity: usize,
    /// Waiting jobs in both lanes, readable without the lock (metrics).
    queued: AtomicUsize,
}

impl Queue {
    fn push(&self, lane: Lane, job: Job) -> Result<(), AppError> {
        let mut lanes = self.lanes.lock().map_err(|_| AppError::Internal("hashing queue poisoned".into()))?;
        if lanes.closed {
            return Err(AppError::Internal("hashing threads are gone".into()));
        }
        let (queue, capacity) = match lane {
            Lane::Login => (&mut lanes.login, self.login_capacity),
            Lane::Enrol => (&mut lanes.enrol, self.enrol_capacity),
        };
        if queue.len() >= capacity {
            return Err(AppError::Overloaded { retry_after: Duration::from_secs(1) });
        }
        queue.push_back(job);
        self.queued.fetch_add(1, Ordering::Relaxed);
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, logins first; `Idle` when none came within `idle`; `Closed` once
    /// the hasher is dropped.
    fn pop(&self, idle: Duration) -> Pop {
        let Ok(mut lanes) = self.lanes.lock() else { return Pop::Closed };
        loop {
            if let Some(job) = lanes.login.pop_front().or_else(|| lanes.enrol.pop_front()) {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Pop::Job(job);
            }
            if lanes.closed {
                return Pop::Closed;
            }
            match self.ready.wait_timeout(lanes, idle) {
                Ok((_, timeout)) if timeout.timed_out() => return Pop::Idle,
                Ok((guard, _)) => lanes = guard,
                Err(_) => return Pop::Closed,
            }
        }
    }
}

/// What a stored hash is, judged against Strata's current parameters: an importer counts
/// [`HashScheme::Unknown`] hashes (they never verify) and imports those users disabled.
pub fn hash_scheme(hash: &PasswordHash, current: &HashParams) -> HashScheme {
    formats::parse(hash.as_str()).map_or(HashScheme::Unknown, |parsed| parsed.scheme(current))
}

/// Whether a successful login should replace `hash`: anything but argon2id with exactly
/// `current` parameters, so raising the parameters later upgrades hashes too.
pub fn needs_rehash(hash: &PasswordHash, current: &HashParams) -> bool {
    hash_scheme(hash, current) != HashScheme::Argon2idCurrent
}

/// The outcome of [`PasswordHasher::verify_and_rehash`].
#[derive(Debug)]
pub struct Verified {
    pub matches: bool,
    /// A fresh argon2id hash of the password, when it matched a hash that needs one.
    pub rehashed: Option<PasswordHash>,
}

pub struct PasswordHasher {
    argon2: Argon2,
    settings: HashParams,
    queue: Arc<Queue>,
    /// A real hash of a random password, verified against when the email is unknown so
    /// that "no such user" costs the same time as "wrong password".
    decoy: PasswordHash,
}

impl PasswordHasher {
    pub fn new(settings: HasherSettings) -> Result<Self, String> {
        Self::start(settings, IDLE_RELEASE)
    }

    /// [`Self::new`], its threads giving their memory back after `idle` without work.
    fn start(settings: HasherSettings, idle: Duration) -> Result<Self, String> {
        let argon2 = settings.params.argon2id()?;
        let decoy = hash_with(argon2, uuid::Uuid::new_v4().to_string().as_bytes(), &mut Scratch::new(argon2))
            .map_err(|e| format!("argon2 self-test failed: {e}"))?;
        // The queue holds waiting jobs; the threads hold the running ones.
        let queue = Arc::new(Queue {
            lanes: Mutex::new(Lanes { login: VecDeque::new(), enrol: VecDeque::new(), closed: false }),
            ready: Condvar::new(),
            login_capacity: settings.max_queue,
            enrol_capacity: (settings.max_queue / 4).max(1),
            queued: AtomicUsize::new(0),
        });
        for i in 0..settings.concurrency.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("strata-hash-{i}"))
                .spawn(move || worker(&queue, argon2, idle))
                .map_err(|e| format!("cannot start hashing thread: {e}"))?;
        }
        Ok(PasswordHasher { argon2, settings: settings.params, queue, decoy: PasswordHash::from_trusted(decoy) })
    }

    pub fn decoy(&self) -> &PasswordHash {
        &self.decoy
    }

    /// Requests currently waiting for a hashing thread.
    pub fn queued(&self) -> usize {
        self.queue.queued.load(Ordering::Relaxed)
    }

    /// A new hash, in the enrolment lane.
    pub async fn hash(&self, password: &Password) -> Result<PasswordHash, AppError> {
        let argon2 = self.argon2;
        let password = password.clone();
        let phc = self
            .run(Lane::Enrol, move |memory| hash_with(argon2, password.expose().as_bytes(), memory))
            .await?
            .map_err(|e| AppError::Internal(format!("argon2 hash: {e}")))?;
        Ok(PasswordHash::from_trusted(phc))
    }

    /// [`hash_scheme`] under this hasher's parameters.
    pub fn hash_scheme(&self, hash: &PasswordHash) -> HashScheme {
        hash_scheme(hash, &self.settings)
    }

    /// [`needs_rehash`] under this hasher's parameters.
    pub fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        needs_rehash(hash, &self.settings)
    }

    /// `Ok(false)` for a wrong password or a stored hash in no format Strata can verify;
    /// errors only for overload.
    pub async fn verify(&self, lane: Lane, password: &Password, hash: &PasswordHash) -> Result<bool, AppError> {
        Ok(self.check(lane, password, hash, false).await?.matches)
    }

    /// Like [`Self::verify`], and when the password matches a hash that [`Self::needs_rehash`],
    /// also hashes it anew — in the same job on the same thread, so an upgrade costs no
    /// second wait in a queue.
    pub async fn verify_and_rehash(
        &self,
        lane: Lane,
        password: &Password,
        hash: &PasswordHash,
    ) -> Result<Verified, AppError> {
        self.check(lane, password, hash, true).await
    }

    async fn check(
        &self,
        lane: Lane,
        password: &Password,
        hash: &PasswordHash,
        rehash: bool,
    ) -> Result<Verified, AppError> {
        let (parsed, known) = match formats::parse(hash.as_str()) {
            Some(parsed) => (parsed, true),
            None => {
                tracing::warn!(
                    "stored password hash is in no format Strata verifies, or beyond its bounds; the password is refused"
                );
                // Verified against the decoy all the same, so an account whose hash is
                // unusable answers as slowly as any other.
                let decoy = formats::parse(self.decoy.as_str())
                    .ok_or_else(|| AppError::Internal("the decoy hash does not parse".into()))?;
                (decoy, false)
            }
        };
        let upgrade = rehash && known && parsed.scheme(&self.settings) != HashScheme::Argon2idCurrent;
        let password = password.clone();
        let argon2 = self.argon2;
        self.run(lane, move |memory| {
            let matches = parsed.verify(password.expose().as_bytes(), memory) && known;
            let rehashed = if matches && upgrade {
                match hash_with(argon2, password.expose().as_bytes(), memory) {
                    Ok(phc) => Some(PasswordHash::from_trusted(phc)),
                    Err(e) => {
                        tracing::warn!(error = %e, "argon2 rehash failed; the old hash stays");
                        None
                    }
                }
            } else {
                None
            };
            // An imported hash may have asked for far more memory than ours (up to
            // MAX_ARGON2_MEMORY_KIB); a thread does not keep that for its life.
            memory.release_beyond(argon2.params().memory_blocks() as usize);
            Verified { matches, rehashed }
        })
        .await
    }

    /// Queues `work` for a hashing thread and awaits its result. Time spent waiting in the
    /// queue is charged to hashing too: under a login flood the queue is where the time
    /// goes, and Server-Timing must say so rather than blame "app".
    async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        work: impl FnOnce(&mut Scratch) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = tx.send(work(memory));
        });
        self.queue.push(lane, job)?;
        // The span is named for the lane: what kind of password work the request waited on.
        let name = match lane {
            Lane::Login => "verify",
            Lane::Enrol => "hash",
        };
        let (out, _) = timing::measure(Component::Hash, name, rx).await;
        out.map_err(|_| AppError::Internal("hashing thread dropped a job".into()))
    }
}

impl Drop for PasswordHasher {
    fn drop(&mut self) {
        if let Ok(mut lanes) = self.queue.lanes.lock() {
            lanes.closed = true;
        }
        self.queue.ready.notify_all();
    }
}

enum Pop {
    Job(Job),
    Idle,
    Closed,
}

/// A hashing thread gives its arena back after this long without work, so a server that is
/// not hashing does not hold `concurrency` × m (2 × 19 MiB at the defaults on 2 cores); the
/// first hash after a quiet spell allocates it again (one page-faulting hash per thread).
const IDLE_RELEASE: Duration = Duration::from_secs(10);

fn worker(queue: &Queue, argon2: Argon2, idle: Duration) {
    let mut memory = Scratch::new(argon2);
    // The lock is held only while taking a job, never while hashing.
    loop {
        match queue.pop(idle) {
            Pop::Job(job) => job(&mut memory),
            Pop::Idle => memory.release_beyond(0),
            Pop::Closed => return,
        }
    }
}

/// A new PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) for `password`.
fn hash_with(argon2: Argon2, password: &[u8], memory: &mut Scratch) -> Result<String, argon2_rust::Error> {
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; OUTPUT_LEN];
    memory.hash_into(argon2, password, &salt, &mut out)?;
    let params = argon2.params();
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.memory_kib(),
        params.passes(),
        params.lanes(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};

    use super::*;

    /// Written by Strata before issue 8, with RustCrypto `argon2` 0.5 at the default
    /// parameters (the `hash_with` of that time), and the passwords they are of.
    const ARGON2_05_DEFAULT: [(&str, &str); 3] = [
        (
            "correct horse battery staple",
            "$argon2id$v=19$m=19456,t=2,p=1$rpf+677ZA/5WwPjGwgpsSg$Zrfyh6oj3nVRwRswBwBwiA/CN5/bWLb1KAMaL7Wees8",
        ),
        (
            "pässwörd ☃ 🦀",
            "$argon2id$v=19$m=19456,t=2,p=1$rT/k1sEPoFjWIxy+zfGdCA$hRs1kaTqpWiIVpcfhI/wwvXCt1L5d9OZfdyUGwUNHl8",
        ),
        (
            "Tr0ub4dor&3 with a long tail of words to make sixty-four chars!",
            "$argon2id$v=19$m=19456,t=2,p=1$D+Z1xWoY/b0x1A6EjJ8Q3w$zGvXP7X6WNubgj8lzwyPPOC5JmIxbPaC/95DoJxlX2g",
        ),
    ];

    /// The same from argon2 0.5, at the cheap parameters of these tests.
    const ARGON2_05_CHEAP: [(&str, &str); 3] = [
        (
            "correct horse battery staple",
            "$argon2id$v=19$m=64,t=1,p=1$s0PE0A1guFqRBcRZKvv5pA$CMK/a7VrvP6eTXmKgefD837yKBy5Bm7D3ObTw73pNXQ",
        ),
        (
            "pässwörd ☃ 🦀",
            "$argon2id$v=19$m=64,t=1,p=1$Pa6IyXKJvtoKF2ToKU7cug$kBmKqky8JrpWUAORcon2sU6f9EjMiN3Y/0Y8U6erig0",
        ),
        (
            "Tr0ub4dor&3 with a long tail of words to make sixty-four chars!",
            "$argon2id$v=19$m=64,t=1,p=1$Y6HL6+n7IirTM12AkDHZ3A$3shzXts7XS08PEb4EHJ4WV+8o1OGXOqUClK82h2mzH8",
        ),
    ];

    /// Every hash the previous implementation wrote still verifies, counts as current (no
    /// rehash at login), and refuses a wrong password.
    #[tokio::test]
    async fn hashes_written_with_argon2_05_verify() {
        let defaults =
            PasswordHasher::new(HasherSettings { concurrency: 1, max_queue: 4, ..HasherSettings::default() }).unwrap();
        let cheap = cheap(1, 4);
        for (hasher, hashes) in [(&defaults, ARGON2_05_DEFAULT), (&cheap, ARGON2_05_CHEAP)] {
            for (password, stored) in hashes {
                let pw = Password::parse_login(password).unwrap();
                let stored = PasswordHash::from_trusted(stored.into());
                assert_eq!(hasher.hash_scheme(&stored), HashScheme::Argon2idCurrent, "{}", stored.as_str());
                let verified = hasher.verify_and_rehash(Lane::Login, &pw, &stored).await.unwrap();
                assert!(verified.matches && verified.rehashed.is_none(), "{}", stored.as_str());
                let wrong = Password::parse_login(&format!("{password}!")).unwrap();
                assert!(!hasher.verify(Lane::Login, &wrong, &stored).await.unwrap(), "{}", stored.as_str());
            }
        }
    }

    fn cheap(concurrency: usize, max_queue: usize) -> PasswordHasher {
        PasswordHasher::new(HasherSettings {
            params: HashParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            concurrency,
            max_queue,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = cheap(2, 4);
        let pw = Password::parse_new("correct horse battery").unwrap();
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(hasher.verify(Lane::Login, &pw, &hash).await.unwrap());
        let wrong = Password::parse_login("wrong horse").unwrap();
        assert!(!hasher.verify(Lane::Login, &wrong, &hash).await.unwrap());
        assert!(!hasher.verify(Lane::Login, &pw, hasher.decoy()).await.unwrap());
    }

    /// Our PHC strings and those of RustCrypto's `argon2` 0.5 (Strata's implementation
    /// before issue 8) are interchangeable both ways.
    #[tokio::test]
    async fn interoperates_with_argon2_05() {
        let hasher = cheap(1, 4);
        let pw = Password::parse_new("correct horse battery").unwrap();
        for _ in 0..3 {
            let ours = hasher.hash(&pw).await.unwrap();
            let parsed = argon2::password_hash::PasswordHash::new(ours.as_str()).unwrap();
            assert!(argon2::Argon2::default().verify_password(pw.expose().as_bytes(), &parsed).is_ok());
            assert!(argon2::Argon2::default().verify_password(b"correct horse batterY", &parsed).is_err());
        }

        let params = argon2::Params::new(128, 2, 1, None).unwrap();
        let theirs = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(pw.expose().as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.verify(Lane::Login, &pw, &PasswordHash::from_trusted(theirs.clone())).await.unwrap());
        let wrong = Password::parse_login("wrong horse").unwrap();
        assert!(!hasher.verify(Lane::Login, &wrong, &PasswordHash::from_trusted(theirs)).await.unwrap());
    }

    /// Unknown formats and corrupt strings verify as a wrong password would: `false`, after
    /// the same work as a decoy verify, never an error or a panic.
    #[tokio::test]
    async fn unknown_or_corrupt_stored_hashes_never_verify() {
        let hasher = cheap(1, 4);
        let pw = Password::parse_login("whatever").unwrap();
        for bad in [
            "",
            "plain",
            "$argon2id$v=19$m=64,t=1,p=1$",
            "$md5$x$y",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
            "sha1$abc$0123456789abcdef0123456789abcdef01234567",
            "$2x$04$qddhL0RzkCWyilYjZcBYvuAoOfzFxjTqR.qbQ72LWSNE9AEYhC5Xa",
        ] {
            let hash = PasswordHash::from_trusted(bad.into());
            assert!(!hasher.verify(Lane::Login, &pw, &hash).await.unwrap(), "{bad:?}");
            let verified = hasher.verify_and_rehash(Lane::Login, &pw, &hash).await.unwrap();
            assert!(!verified.matches && verified.rehashed.is_none(), "{bad:?}");
            assert_eq!(hasher.hash_scheme(&hash), HashScheme::Unknown);
            assert!(hasher.needs_rehash(&hash));
        }
    }

    /// A Django hash (PBKDF2, 1,000 iterations) verifies, and the same job hands back an
    /// argon2id hash under the hasher's own parameters; a wrong password gets neither.
    #[tokio::test]
    async fn an_imported_hash_is_rehashed_when_the_password_matches() {
        let hasher = cheap(1, 4);
        let django = PasswordHash::from_trusted(
            "pbkdf2_sha256$1000$RElyNNBnbhzQcsK0lmgl5X$ry2Nm7TqkSUAbdXLjZ9E/OHwI4E9+ZcasVehY3lIB1c=".into(),
        );
        assert_eq!(hasher.hash_scheme(&django), HashScheme::DjangoPbkdf2);
        let pw = Password::parse_login("correct horse battery staple").unwrap();
        let verified = hasher.verify_and_rehash(Lane::Login, &pw, &django).await.unwrap();
        assert!(verified.matches);
        let fresh = verified.rehashed.expect("a rehash");
        assert!(fresh.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{}", fresh.as_str());
        assert_eq!(hasher.hash_scheme(&fresh), HashScheme::Argon2idCurrent);
        assert!(!hasher.needs_rehash(&fresh));
        assert!(hasher.verify(Lane::Login, &pw, &fresh).await.unwrap());
        // Already current: verified, nothing to redo.
        let again = hasher.verify_and_rehash(Lane::Login, &pw, &fresh).await.unwrap();
        assert!(again.matches && again.rehashed.is_none());

        let wrong = Password::parse_login("correct horse battery stapler").unwrap();
        let refused = hasher.verify_and_rehash(Lane::Login, &wrong, &django).await.unwrap();
        assert!(!refused.matches && refused.rehashed.is_none());
        assert!(!hasher.verify(Lane::Login, &wrong, &django).await.unwrap());
    }

    /// Only argon2id with exactly the configured parameters is current: other variants,
    /// versions, lengths, Django's prefix, and Strata's own hashes once the parameters
    /// are raised all need a rehash.
    #[tokio::test]
    async fn needs_rehash_unless_argon2id_with_the_current_parameters() {
        let hasher = cheap(1, 4);
        let pw = Password::parse_new("correct horse battery").unwrap();
        let ours = hasher.hash(&pw).await.unwrap();
        let current = HashParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        assert!(!needs_rehash(&ours, &current));
        assert_eq!(hash_scheme(&ours, &current), HashScheme::Argon2idCurrent);
        let raised = HashParams { iterations: 2, ..current };
        assert!(needs_rehash(&ours, &raised));
        assert_eq!(hash_scheme(&ours, &raised), HashScheme::Argon2Other);

        let rest = ours.as_str().strip_prefix("$argon2id$v=19$m=64,t=1,p=1$").unwrap();
        for other in [
            format!("$argon2i$v=19$m=64,t=1,p=1${rest}"),
            format!("$argon2id$v=16$m=64,t=1,p=1${rest}"),
            format!("argon2$argon2id$v=19$m=64,t=1,p=1${rest}"),
        ] {
            let other = PasswordHash::from_trusted(other);
            assert_eq!(hash_scheme(&other, &current), HashScheme::Argon2Other, "{}", other.as_str());
            assert!(needs_rehash(&other, &current));
        }
        let (salt, hash) = rest.split_once('$').unwrap();
        let short = PasswordHash::from_trusted(format!("$argon2id$v=19$m=64,t=1,p=1${salt}${}", &hash[..24]));
        assert_eq!(hash_scheme(&short, &current), HashScheme::Argon2Other);
        for (stored, scheme) in [
            ("$2b$05$3Ecc4EX9CmfdXo6QIUqSU.N8K0ja5ahbvzpvvDDZNJ9RTj25zT1ay", HashScheme::Bcrypt),
            ("bcrypt_sha256$$2b$04$QqRDRFTvXFmAGUGnQPyiPeiCAbiEzngCvJlg/.rqv6LNeWBYibSR2", HashScheme::BcryptSha256),
            ("pbkdf2_sha1$1000$QI1JY1BMoubEIGS4szp4kZ$xiKH+NoSoR8IIFwQPXgZnL2atfQ=", HashScheme::DjangoPbkdf2),
            ("$pbkdf2$1000$Scl5r/U.ZyzlfC9FaE0JQQ$pX9sxZmEeVD5Ge8yOxnQjjtrCsk", HashScheme::Pbkdf2),
        ] {
            let stored = PasswordHash::from_trusted(stored.into());
            assert_eq!(hash_scheme(&stored, &current), scheme);
            assert!(needs_rehash(&stored, &current));
        }
    }

    /// A hashing thread does not keep the memory an imported argon2 hash asked for.
    #[tokio::test]
    async fn memory_for_a_large_imported_hash_is_given_back() {
        let hasher = cheap(1, 4);
        let salt = [3u8; 16];
        let big = argon2::Params::new(4096, 1, 1, Some(32)).unwrap();
        let mut out = [0u8; 32];
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, big)
            .hash_password_into(b"correct horse battery", &salt, &mut out)
            .unwrap();
        let imported = argon2_hash(Argon2Variant::Argon2id, 0x13, 4096, 1, 1, &salt, &out);
        let pw = Password::parse_login("correct horse battery").unwrap();
        assert!(hasher.verify(Lane::Login, &pw, &imported).await.unwrap());
        let kept = hasher.run(Lane::Login, |memory| memory.reserved_blocks()).await.unwrap();
        assert!(kept <= 64, "the thread kept {kept} blocks");
    }

    /// An idle hashing thread holds no arena; work after the quiet spell still hashes.
    #[tokio::test]
    async fn idle_threads_give_their_memory_back() {
        let settings = HasherSettings {
            params: HashParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            concurrency: 1,
            max_queue: 4,
        };
        let hasher = PasswordHasher::start(settings, Duration::from_millis(50)).unwrap();
        let pw = Password::parse_login("correct horse battery").unwrap();
        let stored = hasher.hash(&pw).await.unwrap();
        assert!(hasher.run(Lane::Login, |memory| memory.reserved_blocks()).await.unwrap() >= 64);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hasher.run(Lane::Login, |memory| memory.reserved_blocks()).await.unwrap(), 0);
        assert!(hasher.verify(Lane::Login, &pw, &stored).await.unwrap());
    }

    #[test]
    fn default_params_are_owasp() {
        let hasher = PasswordHasher::new(HasherSettings::default()).unwrap();
        assert!(hasher.decoy().as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[tokio::test]
    async fn refuses_beyond_queue_bound() {
        // One thread, kept busy; queues of one; the third request is refused.
        let hasher = Arc::new(cheap(1, 1));
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let busy = hasher.run(Lane::Login, move |_| {
            let _ = gate.lock().map(|g| g.recv());
        });
        let mut busy = Box::pin(busy);
        // Poll once so the blocking job is submitted, then let the worker take it.
        assert!(futures_poll_once(&mut busy).await.is_none());
        while hasher.queued() > 0 {
            tokio::task::yield_now().await;
        }
        let pw = Password::parse_new("correct horse battery").unwrap();
        let waiting = hasher.hash(&pw);
        let mut waiting = Box::pin(waiting);
        assert!(futures_poll_once(&mut waiting).await.is_none());
        assert_eq!(hasher.queued(), 1);
        assert!(matches!(hasher.hash(&pw).await, Err(AppError::Overloaded { .. })));
        release.send(()).unwrap();
        busy.await.unwrap();
        assert!(waiting.await.is_ok());
    }

    /// With the only thread busy, a sign-up flood fills its own (smaller) lane and is
    /// refused, logins still queue, and when the thread frees up the waiting login runs
    /// before the registrations that queued earlier.
    #[tokio::test]
    async fn logins_go_before_new_hashes_and_keep_their_own_room() {
        let hasher = Arc::new(cheap(1, 8)); // login lane 8, enrol lane 2
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let mut busy = Box::pin(hasher.run(Lane::Login, move |_| {
            let _ = gate.lock().map(|g| g.recv());
        }));
        assert!(futures_poll_once(&mut busy).await.is_none());
        while hasher.queued() > 0 {
            tokio::task::yield_now().await;
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let job = |lane: Lane, name: &'static str| {
            let order = order.clone();
            Box::pin(hasher.run(lane, move |_| order.lock().unwrap().push(name)))
        };
        let mut signups = vec![job(Lane::Enrol, "signup-1"), job(Lane::Enrol, "signup-2")];
        for s in &mut signups {
            assert!(futures_poll_once(s).await.is_none());
        }
        let mut third = job(Lane::Enrol, "signup-3");
        assert!(matches!(futures_poll_once(&mut third).await, Some(Err(AppError::Overloaded { .. }))));
        let mut login = job(Lane::Login, "login");
        assert!(futures_poll_once(&mut login).await.is_none(), "a login is queued despite the flood");
        release.send(()).unwrap();
        busy.await.unwrap();
        login.await.unwrap();
        for s in signups {
            s.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["login", "signup-1", "signup-2"]);
    }

    /// Polls a future once, returning its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
