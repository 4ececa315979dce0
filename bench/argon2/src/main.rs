//! argon2 implementations side by side (issue 8), in one run: RustCrypto `argon2` 0.5 (what
//! Strata uses), RustCrypto `argon2` 0.6, and `argon2-rust` 1.1.
//!
//! 1. RFC 9106 §5.1–5.3 test vectors (Argon2d, Argon2i, Argon2id; secret and associated data).
//! 2. Cross-verification: PHC strings written by 0.5 at Strata's parameters verify under the
//!    others and vice versa (and are byte-identical for the same salt), plus raw tags of every
//!    variant × version × lane count an import may bring, against 0.5.
//! 3. Verifies/s at m=19456, t=2, p=1 the way the server runs them (one reused buffer per
//!    thread): one thread, and one per core at once (the machine's login ceiling). Rounds are
//!    interleaved (A, B, C, A, B, C, …) so machine drift hits every implementation alike;
//!    medians are reported. Page faults per verify show what the allocation strategy costs.
//!
//! Environment: `ROUNDS` (default 7), `COUNT` verifies per measurement (default 20), `CROSS`
//! passwords cross-verified (default 50). Exits non-zero if any correctness check fails.

use std::sync::Barrier;
use std::time::Instant;

use argon2::password_hash::rand_core::{OsRng, RngCore};

const M_KIB: u32 = 19 * 1024;
const T: u32 = 2;
const P: u32 = 1;
const TAG_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    D,
    I,
    Id,
}

/// One argon2 computation with every input the RFC names.
struct Input<'a> {
    variant: Variant,
    version: u32,
    m_kib: u32,
    t: u32,
    p: u32,
    password: &'a [u8],
    salt: &'a [u8],
    secret: &'a [u8],
    ad: &'a [u8],
    tag_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    /// RustCrypto argon2 0.5 (today's).
    V05,
    /// RustCrypto argon2 0.6.
    V06,
    /// argon2-rust 1.1.
    Rust,
}

const IMPLS: [Impl; 3] = [Impl::V05, Impl::V06, Impl::Rust];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::V05 => "argon2 0.5",
            Impl::V06 => "argon2 0.6",
            Impl::Rust => "argon2-rust 1.1",
        }
    }

    /// The raw tag, one-shot API.
    fn raw(self, i: &Input) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; i.tag_len];
        match self {
            Impl::V05 => {
                use argon2::{Algorithm, Argon2, AssociatedData, ParamsBuilder, Version};
                let mut b = ParamsBuilder::new();
                b.m_cost(i.m_kib).t_cost(i.t).p_cost(i.p).output_len(i.tag_len);
                if !i.ad.is_empty() {
                    b.data(AssociatedData::new(i.ad).map_err(|e| e.to_string())?);
                }
                let params = b.build().map_err(|e| e.to_string())?;
                let alg = match i.variant {
                    Variant::D => Algorithm::Argon2d,
                    Variant::I => Algorithm::Argon2i,
                    Variant::Id => Algorithm::Argon2id,
                };
                let ver = if i.version == 0x10 { Version::V0x10 } else { Version::V0x13 };
                let ctx = if i.secret.is_empty() {
                    Argon2::new(alg, ver, params)
                } else {
                    Argon2::new_with_secret(i.secret, alg, ver, params).map_err(|e| e.to_string())?
                };
                ctx.hash_password_into(i.password, i.salt, &mut out).map_err(|e| e.to_string())?;
            }
            Impl::V06 => {
                use argon2_06::{Algorithm, Argon2, AssociatedData, ParamsBuilder, Version};
                let mut b = ParamsBuilder::new();
                b.m_cost(i.m_kib).t_cost(i.t).p_cost(i.p).output_len(i.tag_len);
                if !i.ad.is_empty() {
                    b.data(AssociatedData::new(i.ad).map_err(|e| e.to_string())?);
                }
                let params = b.build().map_err(|e| e.to_string())?;
                let alg = match i.variant {
                    Variant::D => Algorithm::Argon2d,
                    Variant::I => Algorithm::Argon2i,
                    Variant::Id => Algorithm::Argon2id,
                };
                let ver = if i.version == 0x10 { Version::V0x10 } else { Version::V0x13 };
                let ctx = if i.secret.is_empty() {
                    Argon2::new(alg, ver, params)
                } else {
                    Argon2::new_with_secret(i.secret, alg, ver, params).map_err(|e| e.to_string())?
                };
                ctx.hash_password_into(i.password, i.salt, &mut out).map_err(|e| e.to_string())?;
            }
            Impl::Rust => {
                use argon2_rust::params::{Memory, TagLen};
                use argon2_rust::{Algorithm, Argon2, Params, Version};
                let params = Params::builder()
                    .memory(Memory::kib(u64::from(i.m_kib)))
                    .passes(i.t)
                    .lanes(i.p)
                    .tag_len(TagLen::bytes(i.tag_len as u64))
                    .build()
                    .map_err(|e| format!("{e:?}"))?;
                let alg = match i.variant {
                    Variant::D => Algorithm::Argon2d,
                    Variant::I => Algorithm::Argon2i,
                    Variant::Id => Algorithm::Argon2id,
                };
                let ver = if i.version == 0x10 { Version::V0x10 } else { Version::V0x13 };
                Argon2::new(alg, ver, params)
                    .hash_into_with_ad(i.password, i.salt, i.secret, i.ad, &mut out)
                    .map_err(|e| format!("{e:?}"))?;
            }
        }
        Ok(out)
    }

    /// A PHC string at Strata's parameters, written by the implementation's own encoder.
    fn phc_hash(self, password: &[u8], salt: &[u8]) -> Result<String, String> {
        match self {
            Impl::V05 => {
                use argon2::password_hash::{PasswordHasher as _, SaltString};
                let salt = SaltString::encode_b64(salt).map_err(|e| e.to_string())?;
                let params = argon2::Params::new(M_KIB, T, P, Some(TAG_LEN)).map_err(|e| e.to_string())?;
                let ctx = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                Ok(ctx.hash_password(password, &salt).map_err(|e| e.to_string())?.to_string())
            }
            Impl::V06 => {
                use argon2_06::PasswordHasher as _;
                let params = argon2_06::Params::new(M_KIB, T, P, Some(TAG_LEN)).map_err(|e| e.to_string())?;
                let ctx = argon2_06::Argon2::new(argon2_06::Algorithm::Argon2id, argon2_06::Version::V0x13, params);
                Ok(ctx.hash_password_with_salt(password, salt).map_err(|e| e.to_string())?.to_string())
            }
            Impl::Rust => rust_argon2id().hash_encoded(password, salt).map_err(|e| format!("{e:?}")),
        }
    }

    /// Verifies a PHC string with the implementation's own parser (parameters from the string).
    fn phc_verify(self, phc: &str, password: &[u8]) -> Result<bool, String> {
        match self {
            Impl::V05 => {
                use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
                let parsed = PasswordHash::new(phc).map_err(|e| e.to_string())?;
                Ok(argon2::Argon2::default().verify_password(password, &parsed).is_ok())
            }
            Impl::V06 => {
                use argon2_06::PasswordVerifier as _;
                match argon2_06::Argon2::default().verify_password(password, phc) {
                    Ok(()) => Ok(true),
                    Err(argon2_06::password_hash::Error::PasswordInvalid) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
            Impl::Rust => match argon2_rust::Argon2::verify_encoded(phc, password, argon2_rust::Algorithm::Argon2id) {
                Ok(()) => Ok(true),
                Err(argon2_rust::Error::VerifyMismatch) => Ok(false),
                Err(e) => Err(format!("{e:?}")),
            },
        }
    }
}

fn rust_argon2id() -> argon2_rust::Argon2 {
    use argon2_rust::params::{Memory, TagLen};
    let params = argon2_rust::Params::builder()
        .memory(Memory::kib(u64::from(M_KIB)))
        .passes(T)
        .lanes(P)
        .tag_len(TagLen::bytes(TAG_LEN as u64))
        .build()
        .expect("params");
    argon2_rust::Argon2::new(argon2_rust::Algorithm::Argon2id, argon2_rust::Version::V0x13, params)
}

/// How a timed verify gets its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timed {
    /// One buffer per thread, reused: how Strata's hashing threads run 0.5 today.
    Reused(Impl),
    /// argon2 0.5 `hash_password_into`: a fresh `Vec<Block>` per verify.
    V05Alloc,
    /// argon2-rust `Argon2::hash_into`: a fresh mmap arena per verify.
    RustOneShot,
    /// The same with the AVX2 backend forced: what a CPU without AVX-512 would get.
    RustAvx2OneShot,
}

impl Timed {
    fn name(self) -> String {
        match self {
            Timed::Reused(i) => format!("{} (reused buffer)", i.name()),
            Timed::V05Alloc => "argon2 0.5 (allocating per verify)".into(),
            Timed::RustOneShot => "argon2-rust 1.1 (one-shot, mmap per verify)".into(),
            Timed::RustAvx2OneShot => "argon2-rust 1.1, AVX2 backend forced (one-shot)".into(),
        }
    }

    /// A verifier owning its memory, for one thread: `(password, salt, expected) -> matches`.
    fn verifier(self) -> Box<dyn FnMut(&[u8], &[u8], &[u8]) -> bool + Send> {
        match self {
            Timed::Reused(Impl::V05) => {
                let params = argon2::Params::new(M_KIB, T, P, Some(TAG_LEN)).expect("params");
                let mut memory = vec![argon2::Block::default(); params.block_count()];
                let ctx = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                Box::new(move |pw, salt, expected| {
                    let mut out = [0u8; TAG_LEN];
                    ctx.hash_password_into_with_memory(pw, salt, &mut out, &mut memory[..]).expect("hash");
                    out[..] == *expected
                })
            }
            Timed::Reused(Impl::V06) => {
                let params = argon2_06::Params::new(M_KIB, T, P, Some(TAG_LEN)).expect("params");
                let mut memory = vec![argon2_06::Block::default(); params.block_count()];
                let ctx = argon2_06::Argon2::new(argon2_06::Algorithm::Argon2id, argon2_06::Version::V0x13, params);
                Box::new(move |pw, salt, expected| {
                    let mut out = [0u8; TAG_LEN];
                    ctx.hash_password_into_with_memory(pw, salt, &mut out, &mut memory[..]).expect("hash");
                    out[..] == *expected
                })
            }
            Timed::Reused(Impl::Rust) => {
                let mut hasher = rust_argon2id().hasher();
                hasher.reserve().expect("reserve");
                Box::new(move |pw, salt, expected| {
                    let mut out = [0u8; TAG_LEN];
                    hasher.hash_into(pw, salt, &mut out).expect("hash");
                    out[..] == *expected
                })
            }
            Timed::V05Alloc => {
                let params = argon2::Params::new(M_KIB, T, P, Some(TAG_LEN)).expect("params");
                let ctx = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
                Box::new(move |pw, salt, expected| {
                    let mut out = [0u8; TAG_LEN];
                    ctx.hash_password_into(pw, salt, &mut out).expect("hash");
                    out[..] == *expected
                })
            }
            Timed::RustOneShot => {
                let ctx = rust_argon2id();
                Box::new(move |pw, salt, expected| {
                    let mut out = [0u8; TAG_LEN];
                    ctx.hash_into(pw, salt, &mut out).expect("hash");
                    out[..] == *expected
                })
            }
            Timed::RustAvx2OneShot => {
                use argon2_rust::__internal::{Backend, hash_with_backend};
                assert!(Backend::Avx2.is_available(), "no AVX2 on this CPU");
                let ctx = rust_argon2id();
                Box::new(move |pw, salt, expected| {
                    let mut out = [0u8; TAG_LEN];
                    // SAFETY: the CPU has AVX2 (checked above), the backend's only requirement.
                    unsafe {
                        hash_with_backend(
                            Backend::Avx2,
                            ctx.algorithm(),
                            ctx.version(),
                            ctx.params(),
                            pw,
                            salt,
                            &[],
                            &[],
                            &mut out,
                        )
                    }
                    .expect("hash");
                    out[..] == *expected
                })
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    OsRng.fill_bytes(&mut v);
    v
}

/// A printable password of 8–64 characters, as users type them.
fn random_password() -> Vec<u8> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#%&*+-./:;=?@_~";
    let len = 8 + (OsRng.next_u32() % 57) as usize;
    (0..len).map(|_| CHARS[(OsRng.next_u32() as usize) % CHARS.len()]).collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// (minor page faults, RSS KiB, AnonHugePages KiB) of this process.
fn memory_stats() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: state is field 3, minflt field 10.
    let minflt = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let field = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (minflt, field("/proc/self/status", "VmRSS:"), field("/proc/self/smaps_rollup", "AnonHugePages:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Verifies/s of `threads` threads each doing `count` verifies at once (each with its own
/// memory, set up and warmed before the clock starts).
fn rate(timed: Timed, threads: usize, count: usize, pw: &[u8], salt: &[u8], expected: &[u8]) -> f64 {
    let start = Barrier::new(threads + 1);
    let done = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut verify = timed.verifier();
                assert!(verify(pw, salt, expected), "{} does not verify", timed.name());
                start.wait();
                for _ in 0..count {
                    assert!(verify(pw, salt, expected));
                }
                done.wait();
            });
        }
        start.wait();
        let began = Instant::now();
        done.wait();
        (threads * count) as f64 / began.elapsed().as_secs_f64()
    })
}

fn main() {
    let mut failures = 0;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("## argon2 implementations");
    println!();
    println!(
        "argon2-rust dispatch on this CPU: fill {:?}, blake2b {:?}, base64 {:?}; RustCrypto argon2 0.5/0.6 detect AVX2 only",
        argon2_rust::detected_backend(),
        argon2_rust::detected_blake2b_backend(),
        argon2_rust::detected_base64_backend()
    );
    println!();

    // 1. RFC 9106 §5 test vectors.
    println!("### RFC 9106 test vectors (m=32 KiB, t=3, p=4, secret 8×0x03, ad 12×0x04)");
    println!();
    let vectors = [
        ("§5.1 Argon2d", Variant::D, "512b391b6f1162975371d30919734294f868e3be3984f3c1a13a4db9fabe4acb"),
        ("§5.2 Argon2i", Variant::I, "c814d9d1dc7f37aa13f0d77f2494bda1c8de6b016dd388d29952a4c4672b6ce8"),
        ("§5.3 Argon2id", Variant::Id, "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"),
    ];
    println!("| vector | {} |", IMPLS.map(Impl::name).join(" | "));
    println!("|---|{}", "---|".repeat(IMPLS.len()));
    for (name, variant, tag) in vectors {
        let input = Input {
            variant,
            version: 0x13,
            m_kib: 32,
            t: 3,
            p: 4,
            password: &[0x01; 32],
            salt: &[0x02; 16],
            secret: &[0x03; 8],
            ad: &[0x04; 12],
            tag_len: 32,
        };
        let cells: Vec<String> = IMPLS
            .iter()
            .map(|imp| match imp.raw(&input) {
                Ok(out) if hex(&out) == tag => "PASS".to_string(),
                Ok(out) => {
                    failures += 1;
                    format!("FAIL ({})", hex(&out))
                }
                Err(e) => {
                    failures += 1;
                    format!("FAIL ({e})")
                }
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();

    // 2. Cross-verification.
    let cross = env_usize("CROSS", 50);
    println!("### Cross-verification ({cross} random passwords and salts, m={M_KIB}, t={T}, p={P})");
    println!();
    let mut checks = vec![0usize; IMPLS.len() * IMPLS.len()];
    let mut bad = Vec::new();
    let mut identical = vec![0usize; IMPLS.len()];
    for _ in 0..cross {
        let pw = random_password();
        let salt = random_bytes(16);
        let mut wrong = pw.clone();
        wrong[0] ^= 1;
        let strings: Vec<String> = IMPLS.iter().map(|imp| imp.phc_hash(&pw, &salt).expect("phc hash")).collect();
        for (w, written) in strings.iter().enumerate() {
            if *written == strings[0] {
                identical[w] += 1;
            }
            for (v, verifier) in IMPLS.iter().enumerate() {
                // 0.5 is every pair's reference: its strings under the others, theirs under it.
                if w != 0 && v != 0 {
                    continue;
                }
                let right = verifier.phc_verify(written, &pw);
                let wrong = verifier.phc_verify(written, &wrong);
                if right == Ok(true) && wrong == Ok(false) {
                    checks[w * IMPLS.len() + v] += 1;
                } else {
                    bad.push(format!(
                        "{written} by {} under {}: right {right:?}, wrong {wrong:?}",
                        IMPLS[w].name(),
                        verifier.name()
                    ));
                }
            }
        }
    }
    println!(
        "| written by ↓ / verified by → | {} | same string as 0.5 for the same salt |",
        IMPLS.map(Impl::name).join(" | ")
    );
    println!("|---|{}---|", "---|".repeat(IMPLS.len()));
    for (w, imp) in IMPLS.iter().enumerate() {
        let cells: Vec<String> = (0..IMPLS.len())
            .map(|v| if w != 0 && v != 0 { "–".into() } else { format!("{}/{cross}", checks[w * IMPLS.len() + v]) })
            .collect();
        println!("| {} | {} | {}/{cross} |", imp.name(), cells.join(" | "), identical[w]);
    }
    println!();
    println!("(each cell: the right password verifies and a one-bit-different one does not)");
    failures += bad.len() + identical.iter().filter(|&&n| n != cross).count();
    for b in &bad {
        println!("MISMATCH: {b}");
    }
    println!();

    // Raw tags of everything an import may bring: every variant × version, several lane
    // counts, tag lengths, with and without secret/associated data.
    let mut matrix = 0;
    let mut matrix_bad = Vec::new();
    for variant in [Variant::D, Variant::I, Variant::Id] {
        for version in [0x10, 0x13] {
            for p in [1u32, 2, 4] {
                for (t, tag_len, keyed) in [(1u32, 16usize, false), (2, 32, false), (3, 64, true)] {
                    let password = random_password();
                    let salt = random_bytes(8 + (OsRng.next_u32() % 25) as usize);
                    let secret = if keyed { random_bytes(8) } else { Vec::new() };
                    let ad = if keyed { random_bytes(12) } else { Vec::new() };
                    let m_kib = 8 * p + OsRng.next_u32() % 256;
                    let input = Input {
                        variant,
                        version,
                        m_kib,
                        t,
                        p,
                        password: &password,
                        salt: &salt,
                        secret: &secret,
                        ad: &ad,
                        tag_len,
                    };
                    let reference = Impl::V05.raw(&input).expect("0.5");
                    for imp in &IMPLS[1..] {
                        match imp.raw(&input) {
                            Ok(out) if out == reference => matrix += 1,
                            other => matrix_bad.push(format!(
                                "{} {variant:?} v={version:#x} m={m_kib} t={t} p={p} len={tag_len}: {other:?}",
                                imp.name()
                            )),
                        }
                    }
                }
            }
        }
    }
    println!(
        "Raw tags, argon2d/i/id × v=16/19 × p=1,2,4 × (t, tag length, secret+ad) = 54 random inputs each: \
         {matrix}/{} equal to argon2 0.5's",
        54 * (IMPLS.len() - 1)
    );
    failures += matrix_bad.len();
    for b in &matrix_bad {
        println!("MISMATCH: {b}");
    }
    println!();

    // 3. Timing.
    let rounds = env_usize("ROUNDS", 7);
    let count = env_usize("COUNT", 20);
    let pw = b"correct horse battery staple";
    let salt = b"sixteen byte salt";
    let expected = Impl::V05
        .raw(&Input {
            variant: Variant::Id,
            version: 0x13,
            m_kib: M_KIB,
            t: T,
            p: P,
            password: pw,
            salt,
            secret: &[],
            ad: &[],
            tag_len: TAG_LEN,
        })
        .expect("hash");
    let timed = [
        Timed::Reused(Impl::V05),
        Timed::Reused(Impl::V06),
        Timed::Reused(Impl::Rust),
        Timed::V05Alloc,
        Timed::RustOneShot,
        Timed::RustAvx2OneShot,
    ];
    // Page faults and RSS per verify, single thread, before the timing rounds.
    let mut faults = Vec::new();
    for t in timed {
        let mut verify = t.verifier();
        assert!(verify(pw, salt, &expected));
        let (f0, _, _) = memory_stats();
        let n = 5;
        for _ in 0..n {
            assert!(verify(pw, salt, &expected));
        }
        let (f1, rss, huge) = memory_stats();
        faults.push(((f1 - f0) as f64 / f64::from(n), rss, huge));
    }
    let mut single = vec![Vec::new(); timed.len()];
    let mut parallel = vec![Vec::new(); timed.len()];
    let began = Instant::now();
    for _ in 0..rounds {
        for (k, t) in timed.iter().enumerate() {
            single[k].push(rate(*t, 1, count, pw, salt, &expected));
            parallel[k].push(rate(*t, cores, count, pw, salt, &expected));
        }
    }
    println!(
        "### Verifies/s at m={M_KIB} KiB, t={T}, p={P} ({rounds} interleaved rounds of {count} verifies per thread, \
         median; ratios: median of the per-round ratios to argon2 0.5; {:.0} s)",
        began.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| implementation | 1 thread /s | ms per verify | ratio | {cores} threads /s (login ceiling) | ratio | \
         1-thread range | {cores}-thread range | minor faults per verify | process RSS, AnonHugePages |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|---:|---|");
    // Ratios are medians of each round's ratio to argon2 0.5 in that same round, which
    // cancels drift between rounds better than a ratio of medians.
    let paired =
        |rates: &[Vec<f64>], k: usize| median(rates[k].iter().zip(&rates[0]).map(|(x, base)| x / base).collect());
    for (k, t) in timed.iter().enumerate() {
        let s = median(single[k].clone());
        let p = median(parallel[k].clone());
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.1}–{hi:.1}")
        };
        let (f, rss, huge) = faults[k];
        println!(
            "| {} | {s:.1} | {:.2} | {:.2}× | {p:.1} | {:.2}× | {} | {} | {f:.0} | {} MiB, {} MiB |",
            t.name(),
            1000.0 / s,
            paired(&single, k),
            paired(&parallel, k),
            range(&single[k]),
            range(&parallel[k]),
            rss / 1024,
            huge / 1024
        );
    }
    println!();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("Load average at the end: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    if failures > 0 {
        println!();
        println!("{failures} correctness check(s) FAILED");
        std::process::exit(1);
    }
}
