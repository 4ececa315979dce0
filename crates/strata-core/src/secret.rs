//! Secrets that must never reach a log line, an error message or `config show`.
//!
//! [`Secret`] holds a configured secret (admin token, cache password, signing keys): its
//! `Debug` prints a placeholder, so deriving `Debug` on a struct that holds one is safe,
//! and comparing it with a presented value goes through fixed-length digests, so the time
//! taken says nothing about the secret's length or content. [`redact_url`] hides the
//! passwords inside backend URLs, nested ones included.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The value and its SHA-256, taken once: the admin-token check runs on every
/// authenticated request.
#[derive(Clone)]
pub struct Secret {
    value: String,
    digest: [u8; 32],
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        let digest = Sha256::digest(value.as_bytes()).into();
        Secret { value, digest }
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether `presented` is this secret, in time independent of both values. `ct_eq` on
    /// the raw bytes returns early when the lengths differ, which leaks the secret's
    /// length; comparing SHA-256 digests compares 32 bytes always.
    pub fn matches(&self, presented: &str) -> bool {
        let theirs = Sha256::digest(presented.as_bytes());
        bool::from(self.digest.as_slice().ct_eq(theirs.as_slice()))
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The URL with the password of every `scheme://user:password@host` authority in it
/// replaced (a URL may carry others in its query, such as replica URLs), and the values of
/// `password=`/`secret=`-like query parameters too.
pub fn redact_url(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after.find(['/', '?', '#', '&', ',']).unwrap_or(after.len());
        let (authority, tail) = after.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":REDACTED@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    redact_query_secrets(&out)
}

fn redact_query_secrets(url: &str) -> String {
    let Some((path, query)) = url.split_once('?') else { return url.to_owned() };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if ["password", "pass", "secret", "token"].contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}=REDACTED")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
    }

    #[test]
    fn matches_by_digest() {
        let s = Secret::new("0123456789abcdef");
        assert!(s.matches("0123456789abcdef"));
        assert!(!s.matches("0123456789abcdeF"));
        assert!(!s.matches("0123456789abcdef0"));
        assert!(!s.matches(""));
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:REDACTED@h:5432/db");
        assert_eq!(redact_url("sqlite://data/strata.db"), "sqlite://data/strata.db");
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact_url("postgres://u:p@ss@h/db?x=@"), "postgres://u:REDACTED@h/db?x=@");
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:REDACTED@h:1");
        assert_eq!(
            redact_url("redis://:pw@h:1?replica=redis://:pw2@h:2&replica=h:3"),
            "redis://:REDACTED@h:1?replica=redis://:REDACTED@h:2&replica=h:3"
        );
        assert_eq!(redact_url("postgres://h/db?password=pw&x=1"), "postgres://h/db?password=REDACTED&x=1");
    }
}
