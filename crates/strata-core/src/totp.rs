//! TOTP second factor values (RFC 6238 over RFC 4226): the shared secret, code checks with
//! ±1 step of clock skew, single-use recovery codes, and the login challenge.
//!
//! The secret is stored as the base32 text authenticator apps take. It has to be readable
//! by the server to compute codes, so it is not hashed; it is not encrypted by Strata
//! either (see ARCHITECTURE.md): it never leaves the `user_totp` table except in the one
//! enrolment answer, never enters the cache, events or logs (`Debug` is redacted).
//!
//! The login challenge is stateless: the user id, its expiry and a nonce, MACed with a key
//! derived from the user's TOTP secret and password hash. Any instance can check it, and a
//! re-enrolment, a disable or a password change voids every outstanding challenge.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{Timestamp, UserId};

/// Seconds per time step.
pub const STEP_SECS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Recovery codes handed out at a time.
pub const RECOVERY_CODES: usize = 10;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The inverse of [`base32_encode`]; `None` on any other character.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE32.iter().position(|&x| x == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

fn random<const N: usize>() -> [u8; N] {
    use rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// A 160-bit shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    pub fn generate() -> Self {
        TotpSecret(random::<20>().to_vec())
    }

    /// From the stored base32 text.
    pub fn from_base32(text: &str) -> Option<Self> {
        base32_decode(text).filter(|b| b.len() >= 10).map(TotpSecret)
    }

    pub fn to_base32(&self) -> String {
        base32_encode(&self.0)
    }

    /// The RFC 4226 code for time step `step`.
    pub fn code_at(&self, step: i64) -> u32 {
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; unreachable, and no code matches u32::MAX.
            return u32::MAX;
        };
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let word = u32::from_be_bytes([digest[offset], digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
        (word & 0x7fff_ffff) % 10u32.pow(DIGITS)
    }

    /// The step in `now - 1 ..= now + 1` later than `after` whose code is `code`.
    /// `Err(true)` when the code matches only a step already used (a replay).
    pub fn check(&self, code: &TotpCode, now: Timestamp, after: Option<i64>) -> Result<i64, bool> {
        let current = step_of(now);
        let mut replayed = false;
        for step in current - 1..=current + 1 {
            let matches: bool = self.code_at(step).to_be_bytes().ct_eq(&code.0.to_be_bytes()).into();
            if matches {
                if after.is_some_and(|last| step <= last) {
                    replayed = true;
                } else {
                    return Ok(step);
                }
            }
        }
        Err(replayed)
    }

    /// `otpauth://` URI for authenticator apps (Key URI Format).
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let label = format!("{}:{}", percent(issuer), percent(account));
        format!(
            "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            self.to_base32(),
            percent(issuer)
        )
    }

    fn challenge_key(&self, password_hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"strata-mfa-challenge\0");
        h.update(&self.0);
        h.update([0]);
        h.update(password_hash.as_bytes());
        h.finalize().into()
    }
}

fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The time step `now` falls in.
pub fn step_of(now: Timestamp) -> i64 {
    now.micros().div_euclid(1_000_000).div_euclid(STEP_SECS)
}

/// Six digits, as typed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TotpCode(u32);

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpCode(..)")
    }
}

/// A recovery code: 10 base32 characters (50 random bits), shown as `xxxxx-xxxxx`.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

impl RecoveryCode {
    pub fn generate() -> Self {
        let text = base32_encode(&random::<7>()).to_ascii_lowercase();
        RecoveryCode(text.chars().take(10).collect())
    }

    pub fn expose(&self) -> String {
        format!("{}-{}", &self.0[..5], &self.0[5..])
    }

    /// What is stored: hex SHA-256 (50 random bits and single use: no slow hash needed
    /// behind the login throttle).
    pub fn hash(&self) -> String {
        Sha256::digest(self.0.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a user typed into a code field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecondFactor {
    Totp(TotpCode),
    Recovery(RecoveryCode),
}

impl SecondFactor {
    /// Six digits are a TOTP code; ten base32 characters (dashes and spaces ignored) a
    /// recovery code.
    pub fn parse(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        if trimmed.len() == DIGITS as usize && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return trimmed.parse().ok().map(|n| SecondFactor::Totp(TotpCode(n)));
        }
        let compact: String =
            trimmed.chars().filter(|c| *c != '-' && *c != ' ').map(|c| c.to_ascii_lowercase()).collect();
        let valid = compact.len() == 10 && compact.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'));
        valid.then_some(SecondFactor::Recovery(RecoveryCode(compact)))
    }
}

/// The TOTP state of one user, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpRecord {
    pub user_id: UserId,
    pub secret: TotpSecret,
    /// False between enrolment and confirmation.
    pub enabled: bool,
    /// The last time step a code was accepted for: codes of it and earlier are refused.
    pub last_step: Option<i64>,
    /// Hashes ([`RecoveryCode::hash`]) of the unused recovery codes.
    pub recovery_hashes: Vec<String>,
    /// Compare-and-set counter: every write moves it.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpRecord")
            .field("user_id", &self.user_id)
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .field("recovery_codes_left", &self.recovery_hashes.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl TotpRecord {
    /// Removes the recovery code if it is one of the unused ones (constant-time compare).
    pub fn take_recovery(&mut self, code: &RecoveryCode) -> bool {
        let hash = code.hash();
        let found = self.recovery_hashes.iter().position(|h| bool::from(h.as_bytes().ct_eq(hash.as_bytes())));
        found.map(|i| self.recovery_hashes.remove(i)).is_some()
    }

    /// A challenge for a login of this user, good until `expires_at`.
    pub fn challenge(&self, password_hash: &str, expires_at: Timestamp) -> String {
        let mut body = Vec::with_capacity(16 + 8 + 16 + 32);
        body.extend_from_slice(self.user_id.as_uuid().as_bytes());
        body.extend_from_slice(&expires_at.micros().to_be_bytes());
        body.extend_from_slice(&random::<16>());
        let tag = challenge_tag(&self.secret.challenge_key(password_hash), &body);
        body.extend_from_slice(&tag);
        format!("mfa_{}", URL_SAFE_NO_PAD.encode(body))
    }

    /// Whether `challenge` was made by [`Self::challenge`] for this record and password.
    pub fn challenge_valid(&self, challenge: &Challenge, password_hash: &str) -> bool {
        let tag = challenge_tag(&self.secret.challenge_key(password_hash), &challenge.bytes[..40]);
        tag.ct_eq(&challenge.bytes[40..]).into()
    }
}

fn challenge_tag(key: &[u8; 32], body: &[u8]) -> [u8; 32] {
    match hmac::Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(body);
            mac.finalize().into_bytes().into()
        }
        // Unreachable (any key length works); an all-zero tag never verifies a random one.
        Err(_) => [0; 32],
    }
}

/// A parsed login challenge: whose, until when; its tag is checked against the record.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    bytes: [u8; 72],
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Challenge(..)")
    }
}

impl Challenge {
    pub fn parse(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix("mfa_")?;
        if body.len() != 96 {
            return None;
        }
        let mut bytes = [0u8; 72];
        let n = URL_SAFE_NO_PAD.decode_slice(body, &mut bytes).ok()?;
        (n == 72).then_some(Challenge { bytes })
    }

    pub fn user_id(&self) -> UserId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.bytes[..16]);
        UserId::from_uuid(uuid::Uuid::from_bytes(id))
    }

    pub fn expires_at(&self) -> Timestamp {
        let mut at = [0u8; 8];
        at.copy_from_slice(&self.bytes[16..24]);
        Timestamp(i64::from_be_bytes(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1, key "12345678901234567890", last 6 digits.
        let secret = TotpSecret(b"12345678901234567890".to_vec());
        for (time, code) in [(59, 287082), (1111111109, 81804), (1234567890, 5924), (2000000000, 279037)] {
            assert_eq!(secret.code_at(time / STEP_SECS), code, "at {time}");
        }
    }

    #[test]
    fn base32_round_trips() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        for n in 0..25 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base32_decode(&base32_encode(&bytes)).as_deref(), Some(bytes.as_slice()));
        }
    }

    #[test]
    fn replay_and_skew() {
        let secret = TotpSecret::generate();
        let now = Timestamp(1_000_000 * 30 * 1000 + 5);
        let step = step_of(now);
        let code = TotpCode(secret.code_at(step - 1));
        assert_eq!(secret.check(&code, now, None), Ok(step - 1));
        assert_eq!(secret.check(&code, now, Some(step - 1)), Err(true));
        assert_eq!(secret.check(&TotpCode(secret.code_at(step - 2)), now, None).ok(), None);
    }

    #[test]
    fn challenge_round_trips_and_binds() {
        let record = TotpRecord {
            user_id: UserId::from_uuid(uuid::Uuid::now_v7()),
            secret: TotpSecret::generate(),
            enabled: true,
            last_step: None,
            recovery_hashes: vec![],
            version: 1,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        };
        let raw = record.challenge("hash-a", Timestamp(42));
        let parsed = Challenge::parse(&raw).unwrap();
        assert_eq!(parsed.user_id(), record.user_id);
        assert_eq!(parsed.expires_at(), Timestamp(42));
        assert!(record.challenge_valid(&parsed, "hash-a"));
        assert!(!record.challenge_valid(&parsed, "hash-b"));
        let code = RecoveryCode::generate();
        assert_eq!(SecondFactor::parse(&code.expose().to_uppercase()), Some(SecondFactor::Recovery(code)));
    }
}
