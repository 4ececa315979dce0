//! Argon2id hashing on a dedicated, bounded pool.
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
//! Each hashing thread keeps one argon2 memory buffer (19 MiB with the defaults) for its
//! whole life. Allocating it per hash — as `Argon2::hash_password` does — cost ~1,500 page
//! faults and a fresh zeroing per login on whatever thread ran it, about a fifth of login
//! throughput, and spread hundreds of MiB of arenas over tokio's blocking threads. Reuse is
//! safe: argon2 writes every block before reading it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

use crate::domain::{Password, PasswordHash};
use crate::error::AppError;
use crate::timing::{self, Component};

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
    fn params(&self) -> Result<Params, String> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, Some(OUTPUT_LEN))
            .map_err(|e| format!("invalid argon2 parameters: {e}"))
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
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

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

    /// The next job, logins first; `None` once the hasher is dropped.
    fn pop(&self) -> Option<Job> {
        let mut lanes = self.lanes.lock().ok()?;
        loop {
            if let Some(job) = lanes.login.pop_front().or_else(|| lanes.enrol.pop_front()) {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Some(job);
            }
            if lanes.closed {
                return None;
            }
            lanes = self.ready.wait(lanes).ok()?;
        }
    }
}

pub struct PasswordHasher {
    params: Params,
    queue: Arc<Queue>,
    /// A real hash of a random password, verified against when the email is unknown so
    /// that "no such user" costs the same time as "wrong password".
    decoy: PasswordHash,
}

impl PasswordHasher {
    pub fn new(settings: HasherSettings) -> Result<Self, String> {
        let params = settings.params.params()?;
        let mut memory = Vec::new();
        let decoy = hash_with(&params, uuid::Uuid::new_v4().to_string().as_bytes(), &mut memory)
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
                .spawn(move || worker(&queue))
                .map_err(|e| format!("cannot start hashing thread: {e}"))?;
        }
        Ok(PasswordHasher { params, queue, decoy: PasswordHash::from_trusted(decoy) })
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
        let params = self.params.clone();
        let password = password.clone();
        let phc = self
            .run(Lane::Enrol, move |memory| hash_with(&params, password.expose().as_bytes(), memory))
            .await?
            .map_err(|e| AppError::Internal(format!("argon2 hash: {e}")))?;
        Ok(PasswordHash::from_trusted(phc))
    }

    /// `Ok(false)` for a wrong password; errors only for overload or a corrupt stored hash.
    pub async fn verify(&self, lane: Lane, password: &Password, hash: &PasswordHash) -> Result<bool, AppError> {
        let password = password.clone();
        let stored = hash.as_str().to_owned();
        self.run(lane, move |memory| verify_with(&stored, password.expose().as_bytes(), memory)).await?
    }

    /// Queues `work` for a hashing thread and awaits its result. Time spent waiting in the
    /// queue is charged to hashing too: under a login flood the queue is where the time
    /// goes, and Server-Timing must say so rather than blame "app".
    async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = tx.send(work(memory));
        });
        self.queue.push(lane, job)?;
        let (out, _) = timing::measure(Component::Hash, rx).await;
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

fn worker(queue: &Queue) {
    let mut memory = Vec::new();
    // The lock is held only while taking a job, never while hashing.
    while let Some(job) = queue.pop() {
        job(&mut memory);
    }
}

fn argon2id(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn grow(memory: &mut Vec<Block>, params: &Params) {
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
}

/// A new PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) for `password`.
fn hash_with(params: &Params, password: &[u8], memory: &mut Vec<Block>) -> Result<String, argon2::Error> {
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let mut out = [0u8; OUTPUT_LEN];
    grow(memory, params);
    argon2id(params).hash_password_into_with_memory(password, &salt, &mut out, &mut memory[..])?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Checks `password` against a stored PHC string. Parameters come from the string, so
/// hashes made under older settings still verify after the configuration changes.
fn verify_with(stored: &str, password: &[u8], memory: &mut Vec<Block>) -> Result<bool, AppError> {
    use argon2::password_hash::PasswordHash as Phc;
    let corrupt = |e: &dyn std::fmt::Display| AppError::Internal(format!("stored password hash unreadable: {e}"));
    let phc = Phc::new(stored).map_err(|e| corrupt(&e))?;
    let algorithm = Algorithm::try_from(phc.algorithm).map_err(|e| corrupt(&e))?;
    let version = phc.version.map_or(Ok(Version::V0x13), Version::try_from).map_err(|e| corrupt(&e))?;
    let expected = phc.hash.ok_or_else(|| corrupt(&"no hash"))?;
    let params = Params::try_from(&phc).map_err(|e| corrupt(&e))?;
    let params = Params::new(params.m_cost(), params.t_cost(), params.p_cost(), Some(expected.len()))
        .map_err(|e| corrupt(&e))?;
    let mut salt = [0u8; 64];
    let salt = phc.salt.ok_or_else(|| corrupt(&"no salt"))?.decode_b64(&mut salt).map_err(|e| corrupt(&e))?;
    let mut out = vec![0u8; expected.len()];
    grow(memory, &params);
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
        .map_err(|e| corrupt(&e))?;
    use subtle::ConstantTimeEq;
    Ok(bool::from(out.ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};

    use super::*;

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

    /// Our PHC strings and the reference implementation's are interchangeable both ways.
    #[tokio::test]
    async fn interoperates_with_the_reference_implementation() {
        let hasher = cheap(1, 4);
        let pw = Password::parse_new("correct horse battery").unwrap();
        let ours = hasher.hash(&pw).await.unwrap();
        let parsed = argon2::password_hash::PasswordHash::new(ours.as_str()).unwrap();
        assert!(Argon2::default().verify_password(pw.expose().as_bytes(), &parsed).is_ok());

        let params = Params::new(128, 2, 1, None).unwrap();
        let theirs = argon2id(&params)
            .hash_password(pw.expose().as_bytes(), &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.verify(Lane::Login, &pw, &PasswordHash::from_trusted(theirs.clone())).await.unwrap());
        let wrong = Password::parse_login("wrong horse").unwrap();
        assert!(!hasher.verify(Lane::Login, &wrong, &PasswordHash::from_trusted(theirs)).await.unwrap());
    }

    #[tokio::test]
    async fn corrupt_stored_hashes_are_errors_not_panics() {
        let hasher = cheap(1, 4);
        let pw = Password::parse_login("whatever").unwrap();
        for bad in ["", "plain", "$argon2id$v=19$m=64,t=1,p=1$", "$md5$x$y", "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ"]
        {
            assert!(matches!(
                hasher.verify(Lane::Login, &pw, &PasswordHash::from_trusted(bad.into())).await,
                Err(AppError::Internal(_))
            ));
        }
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
