//! TOTP second factor: enrolment, the second login step, recovery codes, disabling and the
//! admin reset.
//!
//! Codes are checked like passwords: each attempt reserves from the login throttle (its
//! own per-account key, `mfa:<user id>`, which a correct password does not clear, and the
//! client's key shared with password logins) and only a correct code gives it back. A code
//! is accepted once: the row remembers the last accepted time step, and every acceptance is
//! a compare-and-set on the row's version, so two concurrent uses of one code (or of one
//! recovery code) cannot both succeed.

use std::time::Duration;

use super::{Accounts, Actor, EventActor, LoggedIn, Stale, event, user_json};
use crate::domain::{Password, User, UserId, UserStatus};
use crate::error::{AppError, RepoError, ValidationError};
use crate::totp::{Challenge, RECOVERY_CODES, RecoveryCode, SecondFactor, TotpRecord, TotpSecret};

/// How long a login challenge stays good.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
/// The issuer authenticator apps show.
const ISSUER: &str = "Strata";

/// What an enrolment hands the user once: the secret, also as an `otpauth://` URI.
pub struct TotpEnrolment {
    pub secret: String,
    pub otpauth_uri: String,
}

fn code_invalid() -> AppError {
    ValidationError::new("code", "mfa_code_invalid", "the code is wrong or outside its time window").into()
}

fn code_replayed() -> AppError {
    ValidationError::new("code", "mfa_code_replayed", "this code was already used; wait for the next one").into()
}

fn challenge_invalid() -> AppError {
    ValidationError::new(
        "challenge",
        "mfa_challenge_invalid",
        "the challenge is unknown or no longer valid; log in again",
    )
    .into()
}

fn self_only(actor: &Actor, id: UserId) -> Result<&User, AppError> {
    match actor {
        Actor::User { user, .. } if user.id == id => Ok(user),
        _ => Err(AppError::Forbidden("only the user themself may manage their second factor")),
    }
}

fn fresh_recovery_codes() -> (Vec<RecoveryCode>, Vec<String>) {
    let codes: Vec<RecoveryCode> = (0..RECOVERY_CODES).map(|_| RecoveryCode::generate()).collect();
    let hashes = codes.iter().map(RecoveryCode::hash).collect();
    (codes, hashes)
}

impl Accounts {
    /// The user's TOTP row, if enabled.
    async fn enabled_totp(&self, id: UserId) -> Result<Option<TotpRecord>, AppError> {
        Ok(self.db("totp_of", self.store.totp_of(id)).await?.filter(|t| t.enabled))
    }

    /// `POST /v1/users/{id}/mfa/totp`: a new secret, pending until confirmed with a code.
    /// Starting again replaces a pending secret.
    pub async fn start_totp(
        &self,
        actor: &Actor,
        id: UserId,
        current_password: Option<&Password>,
        client: &str,
    ) -> Result<TotpEnrolment, AppError> {
        self_only(actor, id)?;
        // The stored row: the session's copy of the user may come from the cache, which
        // holds no password hash.
        let user = self.db("user_by_id", self.store.user_by_id(id)).await?.ok_or(AppError::NotFound("user"))?;
        self.reauthenticate(&user, current_password, client, false).await?;
        if self.enabled_totp(id).await?.is_some() {
            return Err(AppError::MfaAlreadyEnabled);
        }
        let now = self.clock.now();
        let secret = TotpSecret::generate();
        let record = TotpRecord {
            user_id: id,
            secret: secret.clone(),
            enabled: false,
            last_step: None,
            recovery_hashes: vec![],
            version: 1,
            created_at: now,
            updated_at: now,
        };
        match self.db("save_totp", self.store.save_totp(&record, None, None)).await {
            Ok(()) => {}
            Err(RepoError::VersionConflict) => return Err(AppError::MfaAlreadyEnabled),
            Err(e) => return Err(e.into()),
        }
        Ok(TotpEnrolment { otpauth_uri: secret.otpauth_uri(ISSUER, user.email.as_str()), secret: secret.to_base32() })
    }

    /// Checks `code` against `record` under the throttle; on success returns the record
    /// as it must be stored (step remembered or recovery code spent, version moved).
    async fn accept_code(
        &self,
        record: &TotpRecord,
        code: &SecondFactor,
        allow_recovery: bool,
        client: &str,
    ) -> Result<TotpRecord, AppError> {
        let account = format!("mfa:{}", record.user_id);
        let now = self.clock.now();
        self.throttle
            .reserve(&account, client, now)
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let mut next = record.clone();
        let outcome = match code {
            SecondFactor::Totp(code) => match record.secret.check(code, now, record.last_step) {
                Ok(step) => {
                    next.last_step = Some(step);
                    Ok(())
                }
                Err(true) => Err(code_replayed()),
                Err(false) => Err(code_invalid()),
            },
            SecondFactor::Recovery(code) if allow_recovery && next.take_recovery(code) => Ok(()),
            SecondFactor::Recovery(_) => Err(code_invalid()),
        };
        // A wrong code keeps its reservation: it is the failure being counted.
        outcome?;
        self.throttle.succeeded(&account, client, self.clock.now()).await;
        next.version = record.version + 1;
        next.updated_at = now;
        Ok(next)
    }

    /// `POST /v1/users/{id}/mfa/totp/confirm`: turns TOTP on with a first code from the
    /// app; returns the recovery codes, shown this once.
    pub async fn confirm_totp(
        &self,
        actor: &Actor,
        id: UserId,
        code: &SecondFactor,
        client: &str,
    ) -> Result<Vec<RecoveryCode>, AppError> {
        let user = self_only(actor, id)?;
        let record = self.db("totp_of", self.store.totp_of(id)).await?;
        let record = match record {
            Some(r) if r.enabled => return Err(AppError::MfaAlreadyEnabled),
            Some(r) => r,
            None => return Err(AppError::MfaNotEnabled),
        };
        let mut next = self.accept_code(&record, code, false, client).await?;
        let (codes, hashes) = fresh_recovery_codes();
        next.enabled = true;
        next.recovery_hashes = hashes;
        let data = serde_json::json!({ "user": user_json(user), "factor": "totp" });
        let event = event("mfa.enabled", id.as_uuid(), EventActor::User(id), data, next.updated_at);
        // The user row's `mfa_enabled` turns true in this write: cached copies of the user
        // (and of their sessions, which embed it) go with the commit.
        let (store, row, version) = (self.store.clone(), next.clone(), record.version);
        let write = async move { store.save_totp(&row, Some(version), Some(&event)).await };
        let stale = Stale::User { id, sessions: None, now: next.updated_at };
        match self.commit("save_totp", write, stale).await {
            Ok(()) => {}
            Err(RepoError::VersionConflict | RepoError::NotFound) => return Err(code_replayed()),
            Err(e) => return Err(e.into()),
        }
        self.wake_relay();
        Ok(codes)
    }

    /// Stores a record whose code was just accepted; a lost compare-and-set means another
    /// request used a code meanwhile.
    async fn save_accepted(
        &self,
        next: &TotpRecord,
        expected: i64,
        event: Option<&crate::domain::OutboxEvent>,
    ) -> Result<(), AppError> {
        match self.db("save_totp", self.store.save_totp(next, Some(expected), event)).await {
            Ok(()) => Ok(()),
            Err(RepoError::VersionConflict | RepoError::NotFound) => Err(code_replayed()),
            Err(e) => Err(e.into()),
        }
    }

    /// `POST /v1/users/{id}/mfa/totp/recovery-codes`: ten new recovery codes for a code;
    /// the old ones stop working.
    pub async fn regenerate_recovery_codes(
        &self,
        actor: &Actor,
        id: UserId,
        code: &SecondFactor,
        client: &str,
    ) -> Result<Vec<RecoveryCode>, AppError> {
        let user = self_only(actor, id)?;
        let record = self.enabled_totp(id).await?.ok_or(AppError::MfaNotEnabled)?;
        let mut next = self.accept_code(&record, code, true, client).await?;
        let (codes, hashes) = fresh_recovery_codes();
        next.recovery_hashes = hashes;
        let data = serde_json::json!({ "user": user_json(user), "factor": "totp" });
        let event = event("mfa.recovery_codes_regenerated", id.as_uuid(), EventActor::User(id), data, next.updated_at);
        self.save_accepted(&next, record.version, Some(&event)).await?;
        self.wake_relay();
        Ok(codes)
    }

    /// `DELETE /v1/users/{id}/mfa/totp`: the user themself with a code or a recovery code;
    /// an admin (acting on someone else) without one, which is the audited MFA reset.
    pub async fn disable_totp(
        &self,
        actor: &Actor,
        id: UserId,
        code: Option<&SecondFactor>,
        client: &str,
    ) -> Result<(), AppError> {
        if !actor.may_act_on(id) {
            return Err(AppError::Forbidden("you may only manage your own second factor"));
        }
        let is_self = matches!(actor, Actor::User { user, .. } if user.id == id);
        let user = self.db("user_by_id", self.store.user_by_id(id)).await?.ok_or(AppError::NotFound("user"))?;
        let record = self.db("totp_of", self.store.totp_of(id)).await?.ok_or(AppError::MfaNotEnabled)?;
        let now = self.clock.now();
        let (expected, via) = if is_self {
            if !record.enabled {
                return Err(AppError::MfaNotEnabled);
            }
            let Some(code) = code else {
                return Err(ValidationError::new("code", "mfa_code_required", "turning TOTP off needs a code").into());
            };
            // The accepted state is not stored: the row goes, compare-and-set on the version
            // read, which keeps a concurrent use of the same code out.
            self.accept_code(&record, code, true, client).await?;
            let via = if matches!(code, SecondFactor::Totp(_)) { "code" } else { "recovery_code" };
            (Some(record.version), via)
        } else {
            (None, "admin_reset")
        };
        let data = serde_json::json!({ "user": user_json(&user), "factor": "totp", "via": via });
        let event = event("mfa.disabled", id.as_uuid(), EventActor::of(actor, id), data, now);
        // Clears the user row's `mfa_enabled`: cached copies go with the commit.
        let store = self.store.clone();
        let write = async move { store.delete_totp(id, expected, &event).await };
        match self.commit("delete_totp", write, Stale::User { id, sessions: None, now }).await {
            Ok(()) => {}
            Err(RepoError::NotFound) => return Err(AppError::MfaNotEnabled),
            Err(RepoError::VersionConflict) => return Err(code_replayed()),
            Err(e) => return Err(e.into()),
        }
        self.wake_relay();
        Ok(())
    }

    /// After a right password: `Some(challenge)` when the account has TOTP on.
    pub(super) async fn mfa_challenge(&self, user: &User) -> Result<Option<String>, AppError> {
        let Some(record) = self.enabled_totp(user.id).await? else {
            return Ok(None);
        };
        let expires_at = self.clock.now().plus(CHALLENGE_TTL);
        Ok(Some(record.challenge(user.password_hash.as_str(), expires_at)))
    }

    /// `POST /v1/sessions/mfa`: the second login step.
    pub async fn complete_mfa_login(
        &self,
        challenge: &Challenge,
        code: &SecondFactor,
        client: &str,
    ) -> Result<LoggedIn, AppError> {
        if self.clock.now() >= challenge.expires_at() {
            return Err(ValidationError::new(
                "challenge",
                "mfa_challenge_expired",
                "the challenge has expired; log in with the password again",
            )
            .into());
        }
        let id = challenge.user_id();
        let user = self.db("user_by_id", self.store.user_by_id(id)).await?.ok_or_else(challenge_invalid)?;
        let record = self.enabled_totp(id).await?.ok_or_else(challenge_invalid)?;
        if !record.challenge_valid(challenge, user.password_hash.as_str()) {
            return Err(challenge_invalid());
        }
        let next = self.accept_code(&record, code, true, client).await?;
        let via = if matches!(code, SecondFactor::Totp(_)) { "totp" } else { "recovery_code" };
        let event = (via == "recovery_code").then(|| {
            let data = serde_json::json!({
                "user": user_json(&user),
                "factor": "totp",
                "recovery_codes_left": next.recovery_hashes.len(),
            });
            event("mfa.recovery_code_used", id.as_uuid(), EventActor::User(id), data, next.updated_at)
        });
        self.save_accepted(&next, record.version, event.as_ref()).await?;
        if user.status != UserStatus::Active {
            return Err(AppError::AccountDisabled);
        }
        if self.settings.require_verified_email && !user.verified {
            return Err(AppError::EmailNotVerified);
        }
        self.start_session(user).await
    }
}
