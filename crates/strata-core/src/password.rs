//! Argon2id hashing on a bounded pool.
//!
//! A verify costs tens of milliseconds of pure CPU. Running it on the async workers would
//! stall every other request on the same thread, and running unboundedly many on the
//! blocking pool would let a login flood take every core. So at most `concurrency` hashes
//! run at once (on tokio's blocking threads), at most `max_queue` wait, and the rest are
//! told to come back later — while session checks keep flowing on the async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

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
    fn argon2(&self) -> Result<Argon2<'static>, String> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HasherSettings {
    pub params: HashParams,
    /// Hashes running at once. Default: the number of cores.
    pub concurrency: usize,
    /// Requests allowed to wait for a slot before new ones are refused as overloaded.
    pub max_queue: usize,
}

impl Default for HasherSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        HasherSettings { params: HashParams::default(), concurrency: cores, max_queue: 64 * cores }
    }
}

pub struct PasswordHasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    max_queue: usize,
    queued: AtomicUsize,
    /// A real hash of a random password, verified against when the email is unknown so
    /// that "no such user" costs the same time as "wrong password".
    decoy: PasswordHash,
}

impl PasswordHasher {
    pub fn new(settings: HasherSettings) -> Result<Self, String> {
        let argon2 = settings.params.argon2()?;
        let salt = SaltString::generate(&mut OsRng);
        let decoy = argon2
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .map_err(|e| format!("argon2 self-test failed: {e}"))?
            .to_string();
        Ok(PasswordHasher {
            argon2,
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            max_queue: settings.max_queue,
            queued: AtomicUsize::new(0),
            decoy: PasswordHash::from_trusted(decoy),
        })
    }

    pub fn decoy(&self) -> &PasswordHash {
        &self.decoy
    }

    /// Requests currently waiting for a hashing slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub async fn hash(&self, password: &Password) -> Result<PasswordHash, AppError> {
        let argon2 = self.argon2.clone();
        let password = password.clone();
        let phc = self
            .run(move || {
                let salt = SaltString::generate(&mut OsRng);
                argon2.hash_password(password.expose().as_bytes(), &salt).map(|h| h.to_string())
            })
            .await?
            .map_err(|e| AppError::Internal(format!("argon2 hash: {e}")))?;
        Ok(PasswordHash::from_trusted(phc))
    }

    /// `Ok(false)` for a wrong password; errors only for overload or a corrupt stored hash.
    pub async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool, AppError> {
        let argon2 = self.argon2.clone();
        let password = password.clone();
        let stored = hash.as_str().to_owned();
        self.run(move || {
            // Parameters come from the PHC string, so hashes made under older settings
            // still verify after the configuration changes.
            let parsed = argon2::password_hash::PasswordHash::new(&stored)
                .map_err(|e| AppError::Internal(format!("stored password hash unreadable: {e}")))?;
            Ok(argon2.verify_password(password.expose().as_bytes(), &parsed).is_ok())
        })
        .await?
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, AppError> {
        let overloaded = || AppError::Overloaded { retry_after: Duration::from_secs(1) };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded());
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|_| overloaded())?;
        let (joined, _) = timing::measure(
            Component::Hash,
            tokio::task::spawn_blocking(move || {
                let out = work();
                drop(permit);
                out
            }),
        )
        .await;
        joined.map_err(|e| AppError::Internal(format!("hashing task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(HasherSettings {
            params: HashParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            concurrency: 2,
            max_queue: 4,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = cheap();
        let pw = Password::parse_new("correct horse battery").unwrap();
        let hash = hasher.hash(&pw).await.unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(hasher.verify(&pw, &hash).await.unwrap());
        let wrong = Password::parse_login("wrong horse").unwrap();
        assert!(!hasher.verify(&wrong, &hash).await.unwrap());
        assert!(!hasher.verify(&pw, hasher.decoy()).await.unwrap());
    }

    #[test]
    fn default_params_are_owasp() {
        let hasher = PasswordHasher::new(HasherSettings::default()).unwrap();
        assert!(hasher.decoy().as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[tokio::test]
    async fn refuses_beyond_queue_bound() {
        let hasher = Arc::new(
            PasswordHasher::new(HasherSettings {
                params: HashParams { memory_kib: 64, iterations: 1, parallelism: 1 },
                concurrency: 1,
                max_queue: 0,
            })
            .unwrap(),
        );
        let pw = Password::parse_new("correct horse battery").unwrap();
        assert!(matches!(hasher.hash(&pw).await, Err(AppError::Overloaded { .. })));
    }
}
