//! Single-core cost of one argon2id verify with the production defaults: the ceiling for
//! logins is `cores / verify time`. Run with `cargo run --release -p strata-core --example hash_cost`.

use std::time::Instant;

use strata_core::domain::Password;
use strata_core::password::{HasherSettings, PasswordHasher};

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let hasher = PasswordHasher::new(HasherSettings { concurrency: 1, ..HasherSettings::default() }).expect("hasher");
        let password = Password::parse_new("correct horse battery staple").expect("password");
        let hash = hasher.hash(&password).await.expect("hash");
        let rounds = 30;
        let started = Instant::now();
        for _ in 0..rounds {
            assert!(hasher.verify(&password, &hash).await.expect("verify"));
        }
        let per_verify = started.elapsed().as_secs_f64() / f64::from(rounds);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!("argon2id_verify_ms={:.2}", per_verify * 1000.0);
        println!("login_ceiling_rps={:.1}", cores as f64 / per_verify);
    });
}
