//! Provisioning tokens: bearer credentials an admin creates for an identity provider's
//! SCIM client. They are accepted by `/scim/v2` only (never by `/v1`), are stored as
//! SHA-256 digests like session tokens, shown once, and revocable.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::domain::{Timestamp, TokenHash, is_control};
use crate::error::{AppError, ValidationError};
use crate::ports::{Clock, Store};
use crate::service::Actor;

/// Every provisioning token starts so, which tells it apart from session tokens.
pub const TOKEN_PREFIX: &str = "scim_";
pub const TOKEN_NAME_MAX_CHARS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningToken {
    pub id: uuid::Uuid,
    /// What it is for, e.g. "Entra ID production".
    pub name: String,
    pub token_hash: TokenHash,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// The digest a presented token is looked up by; `None` when it cannot be one of ours.
pub fn token_hash(presented: &str) -> Option<TokenHash> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    if rest.len() != 43 || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    Some(TokenHash(Sha256::digest(presented.as_bytes()).into()))
}

pub struct ProvisioningTokens {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl ProvisioningTokens {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        ProvisioningTokens { store, clock }
    }

    fn admin(actor: &Actor) -> Result<(), AppError> {
        // A provisioning token may not mint or revoke provisioning tokens.
        match actor {
            Actor::Provisioner(_) => Err(AppError::Forbidden("provisioning tokens are managed by admins")),
            a if a.is_admin() => Ok(()),
            _ => Err(AppError::Forbidden("provisioning tokens are managed by admins")),
        }
    }

    /// A new token and its secret, which is shown this once.
    pub async fn create(&self, actor: &Actor, name: &str) -> Result<(ProvisioningToken, String), AppError> {
        Self::admin(actor)?;
        if name.trim().is_empty() || name.chars().count() > TOKEN_NAME_MAX_CHARS || name.chars().any(is_control) {
            return Err(ValidationError::new(
                "name",
                "invalid_value",
                format!("name must be 1–{TOKEN_NAME_MAX_CHARS} characters without control characters"),
            )
            .into());
        }
        let mut secret = [0u8; 32];
        getrandom(&mut secret);
        let presented = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let token = ProvisioningToken {
            id: uuid::Uuid::now_v7(),
            name: name.to_owned(),
            token_hash: TokenHash(Sha256::digest(presented.as_bytes()).into()),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.create_provisioning_token(&token).await?;
        Ok((token, presented))
    }

    pub async fn list(&self, actor: &Actor) -> Result<Vec<ProvisioningToken>, AppError> {
        Self::admin(actor)?;
        Ok(self.store.provisioning_tokens().await?)
    }

    pub async fn revoke(&self, actor: &Actor, id: uuid::Uuid) -> Result<(), AppError> {
        Self::admin(actor)?;
        if self.store.revoke_provisioning_token(id, self.clock.now()).await? {
            return Ok(());
        }
        match self.store.provisioning_tokens().await?.iter().any(|t| t.id == id) {
            true => Ok(()), // already revoked
            false => Err(AppError::NotFound("provisioning token")),
        }
    }

    /// The live token `presented` is, if any (compared by digest, in constant time).
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ProvisioningToken>, AppError> {
        let Some(hash) = token_hash(presented) else { return Ok(None) };
        let found = self.store.provisioning_token_by_hash(&hash).await?;
        Ok(found.filter(|t| t.token_hash.ct_eq(&hash) && t.revoked_at.is_none()))
    }
}

/// 256 bits from the OS, as session tokens get them.
fn getrandom(out: &mut [u8; 32]) {
    use rand_core::{OsRng, RngCore};
    OsRng.fill_bytes(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_are_looked_up() {
        let good = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(token_hash(&good).is_some());
        assert!(token_hash("st_abc").is_none());
        assert!(token_hash(&format!("{good}x")).is_none());
        assert!(token_hash(&format!("{TOKEN_PREFIX}{}", "+".repeat(43))).is_none());
    }
}
