//! Account lifecycle values: the one-time tokens mailed to users (password resets, email
//! verification and email changes) and the mails queued to carry them.
//!
//! A one-time token is 256 random bits; only its SHA-256 is stored, with its purpose, its
//! expiry, when it was used, and a *binding*: the SHA-256 of what the token is only good
//! for as long as it stays the same (for a password reset, the password hash), so any
//! password change — by the user, an admin, or another reset — voids every outstanding
//! reset token without a write to the tokens table.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::domain::{Email, Timestamp, TokenHash, UserId};

/// What a one-time token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPurpose {
    PasswordReset,
    /// Bound to the email it was sent to: an email change voids it.
    EmailVerification,
    /// Carries the new address ([`AccountToken::new_email`]); bound to the password hash
    /// and the current email, so a password change or another email change voids it.
    EmailChange,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::PasswordReset => "password_reset",
            TokenPurpose::EmailVerification => "email_verification",
            TokenPurpose::EmailChange => "email_change",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "password_reset" => Some(TokenPurpose::PasswordReset),
            "email_verification" => Some(TokenPurpose::EmailVerification),
            "email_change" => Some(TokenPurpose::EmailChange),
            _ => None,
        }
    }
}

/// The secret a user receives by mail: `ot_` + 43 base64url characters (256 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeToken([u8; 32]);

const ONE_TIME_PREFIX: &str = "ot_";
pub const ONE_TIME_B64_LEN: usize = 43;

impl OneTimeToken {
    pub fn generate() -> Self {
        use rand_core::{OsRng, RngCore};
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        OneTimeToken(bytes)
    }

    /// Syntax only, so garbage never reaches the database.
    pub fn parse(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix(ONE_TIME_PREFIX)?;
        if body.len() != ONE_TIME_B64_LEN {
            return None;
        }
        let mut bytes = [0u8; 32];
        let n = URL_SAFE_NO_PAD.decode_slice(body, &mut bytes).ok()?;
        (n == 32).then_some(OneTimeToken(bytes))
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0).into())
    }

    pub fn expose(&self) -> String {
        let mut out = String::with_capacity(ONE_TIME_PREFIX.len() + ONE_TIME_B64_LEN);
        out.push_str(ONE_TIME_PREFIX);
        URL_SAFE_NO_PAD.encode_string(self.0, &mut out);
        out
    }
}

impl fmt::Debug for OneTimeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeToken(<redacted>)")
    }
}

/// SHA-256 of the value a token is bound to (see the module docs).
pub fn binding_of(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// A stored one-time token (the `account_tokens` row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountToken {
    pub id: uuid::Uuid,
    pub user_id: UserId,
    pub purpose: TokenPurpose,
    pub token_hash: TokenHash,
    pub binding: [u8; 32],
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    /// The address an email-change token moves the account to; `None` for other purposes.
    pub new_email: Option<Email>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailStatus {
    Pending,
    Sent,
    Failed,
}

impl MailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MailStatus::Pending => "pending",
            MailStatus::Sent => "sent",
            MailStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(MailStatus::Pending),
            "sent" => Some(MailStatus::Sent),
            "failed" => Some(MailStatus::Failed),
            _ => None,
        }
    }
}

/// A mail waiting in the `mail_queue` table for the worker's dispatcher. It is written in
/// the transaction that makes its token, so a token exists exactly when its mail is queued.
/// `params` (a JSON object, the template's variables) holds the plaintext token until the
/// mail is sent or given up; then it is emptied, so the database keeps no usable secret.
#[derive(Clone, PartialEq, Eq)]
pub struct QueuedMail {
    pub id: uuid::Uuid,
    pub template: String,
    pub recipient: Email,
    pub params: String,
    pub status: MailStatus,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl fmt::Debug for QueuedMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedMail")
            .field("id", &self.id)
            .field("template", &self.template)
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("params", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_time_tokens_round_trip_and_garbage_is_refused() {
        let token = OneTimeToken::generate();
        let text = token.expose();
        assert_eq!(text.len(), 46);
        assert_eq!(OneTimeToken::parse(&text).unwrap().hash(), token.hash());
        assert_ne!(OneTimeToken::generate().hash(), token.hash());
        for bad in ["", "ot_", "st_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &text[..45], &format!("{text}A")] {
            assert!(OneTimeToken::parse(bad).is_none(), "{bad:?}");
        }
        assert!(!format!("{token:?}").contains(&text[3..]));
    }
}
