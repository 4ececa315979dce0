//! Cost of argon2id verifies with the production defaults, computed the way the server does
//! (argon2-rust, one reused memory arena per thread): single-core time per verify (so the naive login
//! ceiling is `cores / verify time`) and the measured rate with one verify per core running
//! at once (what the machine really sustains: shared caches and memory bandwidth can make
//! it less than linear).
//! Run with `cargo run --release -p strata-core --example hash_cost`.

use std::time::Instant;

use argon2_rust::params::{Memory, TagLen};
use argon2_rust::{Algorithm, Argon2, Params, Version};
use strata_core::password::HashParams;

fn argon2() -> Argon2 {
    let p = HashParams::default();
    let params = Params::builder()
        .memory(Memory::kib(u64::from(p.memory_kib)))
        .passes(p.iterations)
        .lanes(p.parallelism)
        .tag_len(TagLen::bytes(32))
        .build()
        .expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn verify_many(expected: &[u8; 32], rounds: u32) {
    let mut hasher = argon2().hasher();
    for _ in 0..rounds {
        let mut out = [0u8; 32];
        hasher.hash_into(b"correct horse battery staple", b"sixteen byte salt", &mut out).expect("hash");
        assert_eq!(&out, expected);
    }
}

fn main() {
    let mut expected = [0u8; 32];
    argon2().hash_into(b"correct horse battery staple", b"sixteen byte salt", &mut expected).expect("hash");
    let rounds = 40;
    verify_many(&expected, 3); // warm up
    let started = Instant::now();
    verify_many(&expected, rounds);
    let per_verify = started.elapsed().as_secs_f64() / f64::from(rounds);

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| verify_many(&expected, rounds));
        }
    });
    let parallel_rps = f64::from(rounds) * cores as f64 / started.elapsed().as_secs_f64();

    println!("argon2id_verify_ms={:.2}", per_verify * 1000.0);
    println!("login_ceiling_rps={:.1}", cores as f64 / per_verify);
    println!("parallel_verify_rps={parallel_rps:.1}");
}
