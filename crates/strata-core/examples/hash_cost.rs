//! Cost of argon2id verifies with the production defaults: single-core time per verify (so
//! the naive login ceiling is `cores / verify time`) and the measured rate with one verify
//! per core running at once (what the machine really sustains: SMT siblings and memory
//! bandwidth can make it less than linear).
//! Run with `cargo run --release -p strata-core --example hash_cost`.

use std::time::Instant;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use strata_core::password::HashParams;

fn argon2() -> Argon2<'static> {
    let p = HashParams::default();
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn verify_many(phc: &str, rounds: u32) {
    let hash = PasswordHash::new(phc).expect("phc");
    for _ in 0..rounds {
        assert!(argon2().verify_password(b"correct horse battery staple", &hash).is_ok());
    }
}

fn main() {
    let phc = argon2()
        .hash_password(b"correct horse battery staple", &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string();
    let rounds = 40;
    verify_many(&phc, 3); // warm up
    let started = Instant::now();
    verify_many(&phc, rounds);
    let per_verify = started.elapsed().as_secs_f64() / f64::from(rounds);

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| verify_many(&phc, rounds));
        }
    });
    let parallel_rps = f64::from(rounds) * cores as f64 / started.elapsed().as_secs_f64();

    println!("argon2id_verify_ms={:.2}", per_verify * 1000.0);
    println!("login_ceiling_rps={:.1}", cores as f64 / per_verify);
    println!("parallel_verify_rps={parallel_rps:.1}");
}
