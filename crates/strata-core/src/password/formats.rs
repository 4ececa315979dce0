//! The stored password-hash formats Strata verifies: its own argon2id, and what an import
//! brings from other systems. Parsing happens off the hashing threads (it is cheap);
//! [`Parsed::verify`] runs on them.
//!
//! | format | stored string |
//! |---|---|
//! | argon2 (Strata, argon2-cffi, pwdlib, Keycloak via [`argon2_hash`]) | `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`, also `argon2i`/`argon2d`, `v=16`, or no `v=` (= 16, as libargon2 reads it) |
//! | Django argon2 | `argon2$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` |
//! | bcrypt (pwdlib, PHP, Node…) | `$2b$12$<22 salt><31 hash>`, also `$2a$`, `$2y$` |
//! | Django bcrypt | `bcrypt$$2b$12$…` |
//! | Django bcrypt_sha256 | `bcrypt_sha256$$2b$12$…`: bcrypt of the lowercase hex SHA-256 of the password |
//! | Django PBKDF2 | `pbkdf2_sha256$<iterations>$<salt>$<hash>`, `pbkdf2_sha1$…`: the salt is used as its UTF-8 bytes, the hash is standard base64 with padding |
//! | PBKDF2 (Keycloak via [`pbkdf2_hash`], RustCrypto) | `$pbkdf2-sha512$i=<iterations>,l=<hash bytes>$<salt>$<hash>`, also `pbkdf2-sha256` and `pbkdf2` (SHA-1) |
//! | PBKDF2 (passlib) | `$pbkdf2-sha256$<iterations>$<salt>$<hash>` in passlib's base64 (`.` for `+`), the hash one digest long |
//!
//! In the `$`-led (PHC-style) strings, salt and hash are standard base64 (`A–Z a–z 0–9 + /`)
//! without padding, as the PHC string format specifies.
//!
//! **Bounds.** Whoever imports users chooses the parameters a login will pay for, so a
//! hash asking for more than these is refused as unknown (it never verifies, and
//! [`super::hash_scheme`] reports it so an import can count it): argon2 memory
//! ≤ [`MAX_ARGON2_MEMORY_KIB`] (1 GiB), passes ≤ [`MAX_ARGON2_ITERATIONS`] (100), memory ×
//! passes ≤ [`MAX_ARGON2_WORK_KIB`] (4 GiB, a few seconds), lanes ≤
//! [`MAX_ARGON2_PARALLELISM`]; bcrypt cost ≤ [`MAX_BCRYPT_COST`] (the format allows 31,
//! which is days of work); PBKDF2 iterations × output blocks ≤ [`MAX_PBKDF2_WORK`] (10
//! million); every derived hash [`MIN_HASH_BYTES`]–[`MAX_HASH_BYTES`] bytes long (a short one
//! would let many passwords match) and every salt at most [`MAX_SALT_BYTES`].

use argon2_rust::params::{MIN_SALT_LENGTH, Memory, TagLen};
use argon2_rust::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use hmac::Hmac;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::{HashParams, OUTPUT_LEN, SALT_LEN, Scratch};
use crate::domain::PasswordHash;

pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_ARGON2_ITERATIONS: u32 = 100;
/// Memory × passes, in KiB: the work of one argon2 verify is proportional to it.
pub const MAX_ARGON2_WORK_KIB: u64 = 4 * 1024 * 1024;
pub const MAX_ARGON2_PARALLELISM: u32 = 255;
/// Cost 16 is 2¹⁶ key expansions, ~16× the common cost 12.
pub const MAX_BCRYPT_COST: u32 = 16;
/// Iterations × output blocks (one block per digest length of output).
pub const MAX_PBKDF2_WORK: u64 = 10_000_000;
pub const MIN_HASH_BYTES: usize = 16;
pub const MAX_HASH_BYTES: usize = 64;
pub const MAX_SALT_BYTES: usize = 128;

/// What kind of hash a stored string is, for counting an import and for deciding a rehash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashScheme {
    /// argon2id with exactly the hasher's parameters, as Strata writes it: nothing to do.
    Argon2idCurrent,
    /// Any other argon2 (variant, version, parameters, or Django's prefix).
    Argon2Other,
    /// bcrypt, plain or in Django's `bcrypt$` form.
    Bcrypt,
    /// Django's `bcrypt_sha256$`.
    BcryptSha256,
    /// Django's `pbkdf2_sha256$` / `pbkdf2_sha1$`.
    DjangoPbkdf2,
    /// `$pbkdf2…$` (Keycloak through [`pbkdf2_hash`], RustCrypto, passlib).
    Pbkdf2,
    /// No format Strata knows, or one beyond the bounds: it never verifies.
    Unknown,
}

impl HashScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            HashScheme::Argon2idCurrent => "argon2id-current",
            HashScheme::Argon2Other => "argon2-other",
            HashScheme::Bcrypt => "bcrypt",
            HashScheme::BcryptSha256 => "bcrypt-sha256",
            HashScheme::DjangoPbkdf2 => "django-pbkdf2",
            HashScheme::Pbkdf2 => "pbkdf2",
            HashScheme::Unknown => "unknown",
        }
    }
}

/// The PRF of a PBKDF2 hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pbkdf2Prf {
    HmacSha1,
    HmacSha256,
    HmacSha512,
}

impl Pbkdf2Prf {
    /// Keycloak's credential `algorithm` (`credentialData.algorithm` in an export):
    /// `pbkdf2` (SHA-1), `pbkdf2-sha256`, `pbkdf2-sha512`. These are also the identifiers
    /// of the stored string.
    pub fn from_keycloak(algorithm: &str) -> Option<Self> {
        match algorithm {
            "pbkdf2" => Some(Pbkdf2Prf::HmacSha1),
            "pbkdf2-sha256" => Some(Pbkdf2Prf::HmacSha256),
            "pbkdf2-sha512" => Some(Pbkdf2Prf::HmacSha512),
            _ => None,
        }
    }

    fn identifier(self) -> &'static str {
        match self {
            Pbkdf2Prf::HmacSha1 => "pbkdf2",
            Pbkdf2Prf::HmacSha256 => "pbkdf2-sha256",
            Pbkdf2Prf::HmacSha512 => "pbkdf2-sha512",
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Pbkdf2Prf::HmacSha1 => 20,
            Pbkdf2Prf::HmacSha256 => 32,
            Pbkdf2Prf::HmacSha512 => 64,
        }
    }
}

/// The argon2 variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Variant {
    Argon2d,
    Argon2i,
    Argon2id,
}

impl Argon2Variant {
    /// Keycloak's `additionalParameters.type`: `d`, `i` or `id`.
    pub fn from_keycloak(kind: &str) -> Option<Self> {
        match kind {
            "d" => Some(Argon2Variant::Argon2d),
            "i" => Some(Argon2Variant::Argon2i),
            "id" => Some(Argon2Variant::Argon2id),
            _ => None,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Argon2Variant::Argon2d => Algorithm::Argon2d,
            Argon2Variant::Argon2i => Algorithm::Argon2i,
            Argon2Variant::Argon2id => Algorithm::Argon2id,
        }
    }
}

/// The stored string for a PBKDF2 hash from its parts, e.g. a Keycloak credential
/// (`credentialData.algorithm` → [`Pbkdf2Prf::from_keycloak`], `hashIterations`, and the
/// base64-decoded `secretData.salt` and `secretData.value`):
/// `$pbkdf2-sha512$i=27500,l=64$<salt>$<hash>`, base64 standard alphabet without padding.
///
/// Keycloak may pad short passwords with NULs before hashing (`max-padding-length`, for
/// FIPS); HMAC pads its key with zeros to the block length anyway, so for any padding
/// shorter than the block (64 or 128 bytes) the hash is the same, and Strata ignores it.
///
/// Always returns a string; one beyond the bounds is reported by [`super::hash_scheme`]
/// as [`HashScheme::Unknown`] and never verifies.
pub fn pbkdf2_hash(prf: Pbkdf2Prf, iterations: u32, salt: &[u8], hash: &[u8]) -> PasswordHash {
    PasswordHash::from_trusted(format!(
        "${}$i={iterations},l={}${}${}",
        prf.identifier(),
        hash.len(),
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    ))
}

/// The PHC string for an argon2 hash from its parts: `version` is 0x13 (written `v=19`)
/// or 0x10 (`v=16`). Like [`pbkdf2_hash`], bounds are checked by [`super::hash_scheme`].
pub fn argon2_hash(
    variant: Argon2Variant,
    version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: &[u8],
    hash: &[u8],
) -> PasswordHash {
    let algorithm = variant.algorithm().as_str();
    PasswordHash::from_trusted(format!(
        "${algorithm}$v={version}$m={memory_kib},t={iterations},p={parallelism}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    ))
}

/// A Keycloak `argon2` credential as a PHC string. Keycloak's export keeps the parameters
/// in `credentialData`: `hashIterations` (passes) and `additionalParameters` `type`
/// (`id`/`i`/`d`), `version` (`1.3`/`1.0`), `memory` (KiB) and `parallelism`
/// (`hashLength` is the length of the decoded value); `secretData` has the base64 `salt`
/// and `value`. `None` for a type or version Keycloak does not write.
pub fn keycloak_argon2_hash(
    kind: &str,
    version: &str,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: &[u8],
    hash: &[u8],
) -> Option<PasswordHash> {
    let variant = Argon2Variant::from_keycloak(kind)?;
    let version = match version {
        "1.3" => 0x13,
        "1.0" => 0x10,
        _ => return None,
    };
    Some(argon2_hash(variant, version, memory_kib, iterations, parallelism, salt, hash))
}

/// A stored hash, understood and within bounds.
pub(super) enum Parsed {
    Argon2 {
        /// Variant, version and parameters (the tag length is the hash's).
        argon2: Argon2,
        salt: Vec<u8>,
        hash: Vec<u8>,
        /// Django's `argon2$` prefix: verifies the same, but is not Strata's string.
        prefixed: bool,
    },
    Bcrypt {
        cost: u32,
        salt: [u8; 16],
        hash: [u8; 23],
        /// Django's bcrypt_sha256: the password is SHA-256'd and hex-encoded first.
        sha256_first: bool,
    },
    Pbkdf2 {
        prf: Pbkdf2Prf,
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
        django: bool,
    },
}

/// `None` for anything unknown, malformed or beyond the bounds. Never panics.
pub(super) fn parse(stored: &str) -> Option<Parsed> {
    if stored.starts_with("$argon2") {
        parse_argon2(stored, false)
    } else if let Some(phc) = stored.strip_prefix("argon2") {
        // Django writes "argon2" followed by the PHC string, whose own "$" separates them.
        parse_argon2(phc, true)
    } else if stored.starts_with("$2") {
        parse_bcrypt(stored, false)
    } else if let Some(modular) = stored.strip_prefix("bcrypt$") {
        parse_bcrypt(modular, false)
    } else if let Some(modular) = stored.strip_prefix("bcrypt_sha256$") {
        parse_bcrypt(modular, true)
    } else if let Some(rest) = stored.strip_prefix("pbkdf2_sha256$") {
        parse_django_pbkdf2(Pbkdf2Prf::HmacSha256, rest)
    } else if let Some(rest) = stored.strip_prefix("pbkdf2_sha1$") {
        parse_django_pbkdf2(Pbkdf2Prf::HmacSha1, rest)
    } else if stored.starts_with("$pbkdf2") {
        parse_pbkdf2(stored)
    } else {
        None
    }
}

impl Parsed {
    pub(super) fn scheme(&self, current: &HashParams) -> HashScheme {
        match self {
            Parsed::Argon2 { argon2, salt, hash, prefixed } => {
                let params = argon2.params();
                let exactly_ours = !prefixed
                    && argon2.algorithm() == Algorithm::Argon2id
                    && argon2.version() == Version::V0x13
                    && params.memory_kib() == current.memory_kib
                    && params.passes() == current.iterations
                    && params.lanes() == current.parallelism
                    && hash.len() == OUTPUT_LEN
                    && salt.len() >= SALT_LEN;
                if exactly_ours { HashScheme::Argon2idCurrent } else { HashScheme::Argon2Other }
            }
            Parsed::Bcrypt { sha256_first: false, .. } => HashScheme::Bcrypt,
            Parsed::Bcrypt { sha256_first: true, .. } => HashScheme::BcryptSha256,
            Parsed::Pbkdf2 { django: true, .. } => HashScheme::DjangoPbkdf2,
            Parsed::Pbkdf2 { django: false, .. } => HashScheme::Pbkdf2,
        }
    }

    /// Derives from `password` as the hash's origin did and compares in constant time.
    pub(super) fn verify(&self, password: &[u8], memory: &mut Scratch) -> bool {
        match self {
            Parsed::Argon2 { argon2, salt, hash, .. } => {
                let mut out = vec![0u8; hash.len()];
                let derived = memory.hash_into(*argon2, password, salt, &mut out);
                derived.is_ok() && bool::from(out.ct_eq(hash))
            }
            Parsed::Bcrypt { cost, salt, hash, sha256_first } => {
                let hex;
                let input = if *sha256_first {
                    hex = hex_lower(&sha2::Sha256::digest(password));
                    hex.as_bytes()
                } else {
                    password
                };
                bool::from(bcrypt_raw(*cost, salt, input)[..23].ct_eq(hash))
            }
            Parsed::Pbkdf2 { prf, iterations, salt, hash, .. } => {
                let mut out = vec![0u8; hash.len()];
                let derived = match prf {
                    Pbkdf2Prf::HmacSha1 => pbkdf2::pbkdf2::<Hmac<sha1::Sha1>>(password, salt, *iterations, &mut out),
                    Pbkdf2Prf::HmacSha256 => {
                        pbkdf2::pbkdf2::<Hmac<sha2::Sha256>>(password, salt, *iterations, &mut out)
                    }
                    Pbkdf2Prf::HmacSha512 => {
                        pbkdf2::pbkdf2::<Hmac<sha2::Sha512>>(password, salt, *iterations, &mut out)
                    }
                };
                derived.is_ok() && bool::from(out.ct_eq(hash))
            }
        }
    }
}

/// bcrypt as its C original runs it: the key is the password's first 72 bytes, with the
/// terminating NUL while there is room for it. (`Password` allows no control characters,
/// so no NUL can cut a password short the way C would.)
fn bcrypt_raw(cost: u32, salt: &[u8; 16], password: &[u8]) -> [u8; 24] {
    let mut key = [0u8; 72];
    let taken = password.len().min(72);
    key[..taken].copy_from_slice(&password[..taken]);
    // At least one byte (the NUL of an empty password) and at most 72: what the raw
    // function requires, as is a cost below 32 (the parser allows at most MAX_BCRYPT_COST).
    let used = (taken + 1).min(72);
    bcrypt::bcrypt(cost, *salt, &key[..used])
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A decimal without sign, leading `+` or surrounding space.
fn number(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn salt_and_hash(salt: Vec<u8>, hash: Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    let salt_ok = !salt.is_empty() && salt.len() <= MAX_SALT_BYTES;
    let hash_ok = (MIN_HASH_BYTES..=MAX_HASH_BYTES).contains(&hash.len());
    (salt_ok && hash_ok).then_some((salt, hash))
}

/// `$argon2id$v=19$m=…,t=…,p=…$salt$hash`, the `v=` part optional.
fn parse_argon2(phc: &str, prefixed: bool) -> Option<Parsed> {
    let mut fields: Vec<&str> = phc.strip_prefix('$')?.split('$').collect();
    let algorithm = match *fields.first()? {
        "argon2d" => Algorithm::Argon2d,
        "argon2i" => Algorithm::Argon2i,
        "argon2id" => Algorithm::Argon2id,
        _ => return None,
    };
    // libargon2 reads a string without "v=" as version 1.0 (0x10); old Django hashes are
    // such strings.
    let version = match fields.get(1).and_then(|f| f.strip_prefix("v=")) {
        Some(v) => {
            let version = match number(v)? {
                0x10 => Version::V0x10,
                0x13 => Version::V0x13,
                _ => return None,
            };
            fields.remove(1);
            version
        }
        None => Version::V0x10,
    };
    let [_, params, salt, hash] = fields[..] else { return None };
    let (mut m, mut t, mut p) = (None, None, None);
    for pair in params.split(',') {
        let (key, value) = pair.split_once('=')?;
        let slot = match key {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return None,
        };
        if slot.replace(number(value)?).is_some() {
            return None;
        }
    }
    let (m, t, p) = (m?, t?, p?);
    if m > MAX_ARGON2_MEMORY_KIB
        || t > MAX_ARGON2_ITERATIONS
        || p > MAX_ARGON2_PARALLELISM
        || u64::from(m) * u64::from(t) > MAX_ARGON2_WORK_KIB
    {
        return None;
    }
    let (salt, hash) = salt_and_hash(STANDARD_NO_PAD.decode(salt).ok()?, STANDARD_NO_PAD.decode(hash).ok()?)?;
    if salt.len() < MIN_SALT_LENGTH as usize {
        return None;
    }
    // What libargon2 refuses (m < 8 × p, t = 0, p = 0…) is refused here, before any hashing.
    let params = Params::builder()
        .memory(Memory::kib(u64::from(m)))
        .passes(t)
        .lanes(p)
        .tag_len(TagLen::bytes(hash.len() as u64));
    let argon2 = Argon2::new(algorithm, version, params.build().ok()?);
    Some(Parsed::Argon2 { argon2, salt, hash, prefixed })
}

/// bcrypt's own base64: `./A–Za–z0–9`, canonical (the unused low bits of the last
/// character zero, as every bcrypt writes them), so that one hash has one spelling.
const BCRYPT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::BCRYPT,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// `$2b$12$` + 22 characters of salt + 31 of hash. `$2a$` and `$2y$` are the same
/// computation for any password Strata accepts (`$2x$`, the old sign bug, is not).
fn parse_bcrypt(modular: &str, sha256_first: bool) -> Option<Parsed> {
    if modular.len() != 60 || !modular.is_ascii() {
        return None;
    }
    let (prefix, rest) = modular.split_at(4);
    if !matches!(prefix, "$2a$" | "$2b$" | "$2y$") {
        return None;
    }
    let (cost, rest) = rest.split_at(2);
    let cost = number(cost)?;
    let encoded = rest.strip_prefix('$')?;
    if !(4..=MAX_BCRYPT_COST).contains(&cost) {
        return None;
    }
    let (salt, hash) = encoded.split_at(22);
    let salt: [u8; 16] = BCRYPT_B64.decode(salt).ok()?.try_into().ok()?;
    let hash: [u8; 23] = BCRYPT_B64.decode(hash).ok()?.try_into().ok()?;
    Some(Parsed::Bcrypt { cost, salt, hash, sha256_first })
}

fn pbkdf2_within_bounds(prf: Pbkdf2Prf, iterations: u32, hash_len: usize) -> bool {
    let blocks = hash_len.div_ceil(prf.digest_len()) as u64;
    iterations >= 1 && u64::from(iterations) * blocks <= MAX_PBKDF2_WORK
}

/// Django's `pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`: the salt is text, used as
/// its UTF-8 bytes; the hash is standard base64 with padding, one digest long (Django
/// compares whole strings, so nothing else ever verified there either).
fn parse_django_pbkdf2(prf: Pbkdf2Prf, rest: &str) -> Option<Parsed> {
    let [iterations, salt, hash] = rest.split('$').collect::<Vec<_>>()[..] else { return None };
    let iterations = number(iterations)?;
    let hash = base64::engine::general_purpose::STANDARD.decode(hash).ok()?;
    if hash.len() != prf.digest_len() {
        return None;
    }
    let (salt, hash) = salt_and_hash(salt.as_bytes().to_vec(), hash)?;
    pbkdf2_within_bounds(prf, iterations, hash.len()).then_some(Parsed::Pbkdf2 {
        prf,
        iterations,
        salt,
        hash,
        django: true,
    })
}

/// `$pbkdf2-sha512$i=27500,l=64$salt$hash` (standard base64, no padding) or passlib's
/// `$pbkdf2-sha512$27500$salt$hash` (its base64 has `.` for `+`; the hash is one digest
/// long). Either way the length of the hash is stated, so a truncated string is refused
/// rather than checked against a shorter prefix of the derived key.
fn parse_pbkdf2(stored: &str) -> Option<Parsed> {
    let [identifier, params, salt, hash] = stored.strip_prefix('$')?.split('$').collect::<Vec<_>>()[..] else {
        return None;
    };
    let prf = Pbkdf2Prf::from_keycloak(identifier)?;
    let (iterations, length, salt, hash) = if let Some(iterations) = number(params) {
        let decode = |s: &str| STANDARD_NO_PAD.decode(s.replace('.', "+")).ok();
        (iterations, prf.digest_len(), decode(salt)?, decode(hash)?)
    } else {
        let (mut iterations, mut length) = (None, None);
        for pair in params.split(',') {
            let (key, value) = pair.split_once('=')?;
            let slot = match key {
                "i" => &mut iterations,
                "l" => &mut length,
                _ => return None,
            };
            if slot.replace(number(value)?).is_some() {
                return None;
            }
        }
        let length = usize::try_from(length?).ok()?;
        (iterations?, length, STANDARD_NO_PAD.decode(salt).ok()?, STANDARD_NO_PAD.decode(hash).ok()?)
    };
    let (salt, hash) = salt_and_hash(salt, hash)?;
    if hash.len() != length {
        return None;
    }
    pbkdf2_within_bounds(prf, iterations, hash.len()).then_some(Parsed::Pbkdf2 {
        prf,
        iterations,
        salt,
        hash,
        django: false,
    })
}

#[cfg(test)]
mod tests {
    //! Known answers made by the systems themselves (Django 5.2 `make_password`'s hashers,
    //! bcrypt 5, argon2-cffi 25, passlib 1.7, and Python's `hashlib.pbkdf2_hmac` for what
    //! Keycloak stores), for the password [`PASSWORD`] unless a test says otherwise.

    use base64::engine::general_purpose::STANDARD;

    use super::*;

    const PASSWORD: &str = "correct horse battery staple";
    const UNICODE_PASSWORD: &str = "pässwörd ☃ 🦀";

    /// Django's `PBKDF2PasswordHasher` with its default 1,000,000 iterations.
    const DJANGO_PBKDF2_SHA256_DEFAULT: &str =
        "pbkdf2_sha256$1000000$m0UoH6h1MF0VkEHNQb9W6q$9slrg2zJLy51DTJKqAnAW9DmcuitvFRdkAuYGKfSeIo=";

    /// (name, stored string, password, scheme).
    const VECTORS: &[(&str, &str, &str, HashScheme)] = &[
        (
            "django pbkdf2_sha256",
            "pbkdf2_sha256$1000$RElyNNBnbhzQcsK0lmgl5X$ry2Nm7TqkSUAbdXLjZ9E/OHwI4E9+ZcasVehY3lIB1c=",
            PASSWORD,
            HashScheme::DjangoPbkdf2,
        ),
        (
            "django pbkdf2_sha256, non-ASCII password",
            "pbkdf2_sha256$1000$qIA4Y3MvPYIvVGWvejYLlN$yBenDZFLZ21JDh7y6rHqaM47uL4LTnpEzEQG+wS/tSw=",
            UNICODE_PASSWORD,
            HashScheme::DjangoPbkdf2,
        ),
        (
            "django pbkdf2_sha1",
            "pbkdf2_sha1$1000$QI1JY1BMoubEIGS4szp4kZ$xiKH+NoSoR8IIFwQPXgZnL2atfQ=",
            PASSWORD,
            HashScheme::DjangoPbkdf2,
        ),
        (
            "django bcrypt_sha256",
            "bcrypt_sha256$$2b$04$QqRDRFTvXFmAGUGnQPyiPeiCAbiEzngCvJlg/.rqv6LNeWBYibSR2",
            PASSWORD,
            HashScheme::BcryptSha256,
        ),
        (
            "django bcrypt_sha256, non-ASCII password",
            "bcrypt_sha256$$2b$04$YGxbwoufrNEGCJrrZgSkZOcg19IlV77PF4bffQ/4rWXgHqV2t1N46",
            UNICODE_PASSWORD,
            HashScheme::BcryptSha256,
        ),
        (
            "django bcrypt",
            "bcrypt$$2b$04$qddhL0RzkCWyilYjZcBYvuAoOfzFxjTqR.qbQ72LWSNE9AEYhC5Xa",
            PASSWORD,
            HashScheme::Bcrypt,
        ),
        (
            "django argon2",
            "argon2$argon2id$v=19$m=256,t=1,p=2$VEg5NnJyaTlGWDFuYkJMUmNLM1BKOQ$6zLdLCawPigOBSdYDWA+3OZUiaiseKCd4tAOBRw8mu4",
            PASSWORD,
            HashScheme::Argon2Other,
        ),
        ("bcrypt $2b$", "$2b$05$3Ecc4EX9CmfdXo6QIUqSU.N8K0ja5ahbvzpvvDDZNJ9RTj25zT1ay", PASSWORD, HashScheme::Bcrypt),
        ("bcrypt $2a$", "$2a$04$mpy/3v0Dzty/KGxHjR7dk.WhqljVvO4NU3r.z8W99hVlb7pR.sYJm", PASSWORD, HashScheme::Bcrypt),
        ("bcrypt $2y$", "$2y$04$onQWugfYbMOm/I8FLRBbme2aH3Y2aNV0K9Yfc17hsfDZUcB84SH8i", PASSWORD, HashScheme::Bcrypt),
        (
            "argon2id",
            "$argon2id$v=19$m=128,t=2,p=2$1335UfI9kUUrocYv5aRmFw$3h0AgdxNbvNQKq6g4Zz0JY/rmroEnhrtd/5+t0tOTpI",
            PASSWORD,
            HashScheme::Argon2Other,
        ),
        (
            "argon2i",
            "$argon2i$v=19$m=128,t=2,p=2$gIPyEjXPPgWY0f2z2pL1yw$/j2i9jlZIgOZHXRdqs7u5gmVo3ig05qeIeXp7hND4BI",
            PASSWORD,
            HashScheme::Argon2Other,
        ),
        (
            "argon2d",
            "$argon2d$v=19$m=128,t=2,p=2$LBM/HIW+Br9ngSqb6+tnqg$HPD8o2D7DbAce4pgxPuGmFbq/KtM3jzD17gnDsu0dbk",
            PASSWORD,
            HashScheme::Argon2Other,
        ),
        (
            "argon2i version 1.0",
            "$argon2i$v=16$m=64,t=1,p=1$XOKPouegu/fsn2sIGjVztg$Jt0atX+JXYbZ/dvwhBWx5Z8T56nDI36LI5S8GOClwYo",
            PASSWORD,
            HashScheme::Argon2Other,
        ),
        (
            "argon2i without a version (libargon2 reads 1.0)",
            "$argon2i$m=64,t=1,p=1$IEfmP7Z4noKFLyvYbqv72g$qUhcOgIRfFVF+RCJ/HEAdwAGXwYkIWp4SBI5Elk2NB4",
            PASSWORD,
            HashScheme::Argon2Other,
        ),
        (
            "passlib pbkdf2_sha256",
            "$pbkdf2-sha256$1000$CQGg1BqjdO4do9Qag1BKyQ$R14OKaRbLZx.smtced5vD9Ji5Sk7WYaqHmfc1FJCfqg",
            PASSWORD,
            HashScheme::Pbkdf2,
        ),
        (
            "passlib pbkdf2_sha512",
            "$pbkdf2-sha512$1000$7J3zvjdmbC1lTAmh9H6vtQ$2CLg.FPnmBFm28Apqq0MaLiJFL1IC6O5z8WtlPIz/f/aqCeEYzb9nMfAnFLjSveNFWf8mE1j0nvoz3tfTOGiVw",
            PASSWORD,
            HashScheme::Pbkdf2,
        ),
        (
            "passlib pbkdf2_sha1",
            "$pbkdf2$1000$Scl5r/U.ZyzlfC9FaE0JQQ$pX9sxZmEeVD5Ge8yOxnQjjtrCsk",
            PASSWORD,
            HashScheme::Pbkdf2,
        ),
    ];

    /// Keycloak credentials as an export carries them: (algorithm, hashIterations, salt,
    /// value), the last two base64 as in `secretData`.
    const KEYCLOAK_PBKDF2: &[(&str, u32, &str, &str)] = &[
        (
            "pbkdf2-sha512",
            2750,
            "wYHvt6qls+b8PYtJh2q7fQ==",
            "EYAWl5CRmxJWqwiZQnDFErAFWnx2zfOYLm/WVugJIaf0EEBbOOIBEmfxrIsr1uv1bn4slkWw+k978vLtrQw2eA==",
        ),
        (
            "pbkdf2-sha256",
            2750,
            "wi47WhmJc1NaHdVZsKMYLA==",
            "rAqCcViiz6TEb8e2ABmLhJhmoFWVlEG7T+zGyJJ6MWTc56+3Cv0KEeRg99fkeuPmKDh0qkFNrtvHbU8utCaJ/w==",
        ),
        (
            "pbkdf2",
            2000,
            "I2FlH8hRz2ncqKlzdETXBw==",
            "DsViW7+9zpPHG1tllL0tan+rwMYZtVwv9B5RS/8keODtWjCz/MFQ3wvvM/u9358EB62gXJ3asLIkUVmZKYC2/Q==",
        ),
    ];

    fn strata() -> HashParams {
        HashParams::default()
    }

    fn verifies(stored: &str, password: &str) -> bool {
        parse(stored).is_some_and(|parsed| {
            let mut memory = Scratch::new(HashParams::default().argon2id().expect("params"));
            parsed.verify(password.as_bytes(), &mut memory)
        })
    }

    fn scheme(stored: &str) -> HashScheme {
        parse(stored).map_or(HashScheme::Unknown, |parsed| parsed.scheme(&strata()))
    }

    #[test]
    fn hashes_from_other_systems_verify() {
        for (name, stored, password, expected) in VECTORS {
            assert_eq!(scheme(stored), *expected, "{name}");
            assert!(verifies(stored, password), "{name}: the right password is refused");
            assert!(!verifies(stored, "correct horse battery stapler"), "{name}: a wrong password verifies");
            assert!(!verifies(stored, "Correct horse battery staple"), "{name}: a wrong password verifies");
        }
    }

    #[test]
    fn django_pbkdf2_with_its_default_iterations_verifies() {
        assert_eq!(scheme(DJANGO_PBKDF2_SHA256_DEFAULT), HashScheme::DjangoPbkdf2);
        assert!(verifies(DJANGO_PBKDF2_SHA256_DEFAULT, PASSWORD));
    }

    #[test]
    fn keycloak_credentials_become_canonical_strings_that_verify() {
        for (algorithm, iterations, salt, value) in KEYCLOAK_PBKDF2 {
            let prf = Pbkdf2Prf::from_keycloak(algorithm).unwrap();
            let stored =
                pbkdf2_hash(prf, *iterations, &STANDARD.decode(salt).unwrap(), &STANDARD.decode(value).unwrap());
            assert_eq!(scheme(stored.as_str()), HashScheme::Pbkdf2, "{algorithm}");
            assert!(verifies(stored.as_str(), PASSWORD), "{algorithm}");
            assert!(!verifies(stored.as_str(), "correct horse battery stapler"), "{algorithm}");
        }
        let (_, iterations, salt, value) = KEYCLOAK_PBKDF2[0];
        let stored = pbkdf2_hash(
            Pbkdf2Prf::HmacSha512,
            iterations,
            &STANDARD.decode(salt).unwrap(),
            &STANDARD.decode(value).unwrap(),
        );
        assert_eq!(
            stored.as_str(),
            "$pbkdf2-sha512$i=2750,l=64$wYHvt6qls+b8PYtJh2q7fQ$EYAWl5CRmxJWqwiZQnDFErAFWnx2zfOYLm/WVugJIaf0EEBbOOIBEmfxrIsr1uv1bn4slkWw+k978vLtrQw2eA"
        );
        assert_eq!(Pbkdf2Prf::from_keycloak("pbkdf2-sha384"), None);

        // Keycloak's argon2 credential: type "id", version "1.3", memory 256 KiB, 5 passes,
        // parallelism 1, a 32-byte value (argon2-cffi's raw output, as BouncyCastle's).
        let salt = STANDARD.decode("3hiRVJ8HK207pLLx+9yDNA==").unwrap();
        let value = STANDARD.decode("qwu7zdTkOvShIEOpV7yeYW/9ae0sE0SkWtUbmRmFtNg=").unwrap();
        let stored = keycloak_argon2_hash("id", "1.3", 256, 5, 1, &salt, &value).unwrap();
        assert_eq!(
            stored.as_str(),
            "$argon2id$v=19$m=256,t=5,p=1$3hiRVJ8HK207pLLx+9yDNA$qwu7zdTkOvShIEOpV7yeYW/9ae0sE0SkWtUbmRmFtNg"
        );
        assert_eq!(scheme(stored.as_str()), HashScheme::Argon2Other);
        assert!(verifies(stored.as_str(), PASSWORD));
        assert!(!verifies(stored.as_str(), "correct horse battery stapler"));
        assert!(keycloak_argon2_hash("id", "1.2", 256, 5, 1, &salt, &value).is_none());
        assert!(keycloak_argon2_hash("x", "1.3", 256, 5, 1, &salt, &value).is_none());
    }

    /// bcrypt reads only the first 72 bytes of a password, so longer ones verify by their
    /// prefix, as they did where the hash was made.
    #[test]
    fn bcrypt_reads_72_bytes() {
        let stored = "$2b$04$w0BH/9BJ2/qvgl/ALISsOOEOe/jGfq4snjo6cEiU.5BOqGyRoY9BW"; // "x" × 72
        assert!(verifies(stored, &"x".repeat(72)));
        assert!(verifies(stored, &"x".repeat(80)));
        assert!(!verifies(stored, &"x".repeat(71)));
    }

    #[test]
    fn hostile_parameters_are_refused_as_unknown() {
        let salt = [7u8; 16];
        let hash = [9u8; 32];
        let argon2 = |m, t, p| argon2_hash(Argon2Variant::Argon2id, 0x13, m, t, p, &salt, &hash);
        // At the bounds: understood (these are never run here).
        for ok in [argon2(MAX_ARGON2_MEMORY_KIB, 4, 1), argon2(64, MAX_ARGON2_ITERATIONS, 1), argon2(4096, 1, 255)] {
            assert_eq!(scheme(ok.as_str()), HashScheme::Argon2Other, "{}", ok.as_str());
        }
        for hostile in [
            argon2(MAX_ARGON2_MEMORY_KIB + 1, 1, 1),
            argon2(64, MAX_ARGON2_ITERATIONS + 1, 1),
            argon2(MAX_ARGON2_MEMORY_KIB, 5, 1),
            argon2(4096, 1, MAX_ARGON2_PARALLELISM + 1),
            argon2(u32::MAX, u32::MAX, u32::MAX),
            argon2(64, 0, 1),
            argon2_hash(Argon2Variant::Argon2id, 0x13, 64, 1, 1, &salt, &hash[..8]),
            argon2_hash(Argon2Variant::Argon2id, 0x13, 64, 1, 1, &salt[..4], &hash),
            argon2_hash(Argon2Variant::Argon2id, 0x12, 64, 1, 1, &salt, &hash),
        ] {
            assert_eq!(scheme(hostile.as_str()), HashScheme::Unknown, "{}", hostile.as_str());
            assert!(!verifies(hostile.as_str(), PASSWORD));
        }

        let bcrypt = |cost: &str| format!("$2b${cost}$w0BH/9BJ2/qvgl/ALISsOOEOe/jGfq4snjo6cEiU.5BOqGyRoY9BW");
        assert_eq!(scheme(&bcrypt("16")), HashScheme::Bcrypt);
        for cost in ["17", "31", "99", "03", "+4", " 4"] {
            assert_eq!(scheme(&bcrypt(cost)), HashScheme::Unknown, "cost {cost}");
        }

        let pbkdf2 = |prf, iterations, len: usize| pbkdf2_hash(prf, iterations, &salt, &vec![1u8; len]);
        assert_eq!(scheme(pbkdf2(Pbkdf2Prf::HmacSha256, 10_000_000, 32).as_str()), HashScheme::Pbkdf2);
        // Two SHA-1 blocks of output cost twice the iterations.
        assert_eq!(scheme(pbkdf2(Pbkdf2Prf::HmacSha1, 5_000_000, 40).as_str()), HashScheme::Pbkdf2);
        for hostile in [
            pbkdf2(Pbkdf2Prf::HmacSha256, 10_000_001, 32),
            pbkdf2(Pbkdf2Prf::HmacSha1, 5_000_001, 40),
            pbkdf2(Pbkdf2Prf::HmacSha512, u32::MAX, 64),
            pbkdf2(Pbkdf2Prf::HmacSha512, 0, 64),
            pbkdf2(Pbkdf2Prf::HmacSha512, 1000, MIN_HASH_BYTES - 1),
            pbkdf2(Pbkdf2Prf::HmacSha512, 1000, MAX_HASH_BYTES + 1),
            pbkdf2_hash(Pbkdf2Prf::HmacSha256, 1000, &[], &hash),
            pbkdf2_hash(Pbkdf2Prf::HmacSha256, 1000, &[1; MAX_SALT_BYTES + 1], &hash),
        ] {
            assert_eq!(scheme(hostile.as_str()), HashScheme::Unknown, "{}", hostile.as_str());
        }
        let django_hostile =
            "pbkdf2_sha256$10000001$RElyNNBnbhzQcsK0lmgl5X$ry2Nm7TqkSUAbdXLjZ9E/OHwI4E9+ZcasVehY3lIB1c=";
        assert_eq!(scheme(django_hostile), HashScheme::Unknown);
    }

    /// Every prefix of every known string, and each with one character changed, is refused
    /// for the right password, without a panic.
    #[test]
    fn truncated_and_altered_strings_never_verify() {
        let mut all: Vec<(&str, &str)> = VECTORS.iter().map(|(_, stored, password, _)| (*stored, *password)).collect();
        let keycloak = pbkdf2_hash(Pbkdf2Prf::HmacSha256, 1000, &[5; 16], &[6; 32]);
        all.push((keycloak.as_str(), PASSWORD));
        for (stored, password) in all {
            for (cut, _) in stored.char_indices() {
                assert!(!verifies(&stored[..cut], password), "prefix {:?}", &stored[..cut]);
            }
            // Any one character of the identifier, parameters, salt or hash changed — but
            // not bcrypt's minor version: $2a$, $2b$ and $2y$ are one computation here.
            for (at, c) in stored.char_indices().filter(|(_, c)| c.is_ascii_alphanumeric()) {
                if stored[..at].ends_with("$2") {
                    continue;
                }
                let other = if c == 'a' { 'b' } else { 'a' };
                let altered = format!("{}{other}{}", &stored[..at], &stored[at + 1..]);
                assert!(!verifies(&altered, password), "{altered}");
            }
        }
        for garbage in
            ["", "$", "$$$$", "$2b$", "argon2$", "bcrypt$", "pbkdf2_sha256$$$", "$pbkdf2$i=1,l=1$$", "plain", "!"]
        {
            assert_eq!(scheme(garbage), HashScheme::Unknown, "{garbage}");
            assert!(!verifies(garbage, PASSWORD));
        }
    }
}
