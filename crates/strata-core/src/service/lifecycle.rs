//! Password reset: request a mailed one-time token, redeem it for a new password.
//!
//! The request answers the same whether or not the email has an account, and does the
//! same work before answering on both paths: a throttle reservation (keyed by the email
//! as typed, so it counts for unknown addresses too), one lookup by email, one token
//! generated and hashed. The write that follows for a real account (token, queued mail and
//! event in one transaction) runs on its own task after the answer, so neither the status,
//! the body nor the timing of the answer depends on the account existing.

use std::time::Duration;

use super::{Accounts, Actor, EmailChangeRequested, EventActor, Stale, event, observed_db, user_json};
use crate::domain::{Email, OutboxEvent, Password, Timestamp, TokenHash, User, UserId, UserStatus};
use crate::error::{AppError, RepoError, ValidationError};
use crate::lifecycle::{AccountToken, MailStatus, OneTimeToken, QueuedMail, TokenPurpose, binding_of};
use crate::ports::SessionRevocation;
use crate::throttle::{Limit, ThrottleSettings};

#[derive(Clone, Copy, Debug)]
pub struct LifecycleSettings {
    /// How long a password-reset token is good for.
    pub reset_ttl: Duration,
    /// How long an email-verification token is good for.
    pub verification_ttl: Duration,
    /// Reset requests per email (`per_account`) and per client (`per_client`); every
    /// request counts.
    pub reset_throttle: ThrottleSettings,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            reset_ttl: Duration::from_secs(30 * 60),
            verification_ttl: Duration::from_secs(24 * 3600),
            reset_throttle: ThrottleSettings {
                per_account: Limit { max_failures: 5, window: Duration::from_secs(3600) },
                per_client: Limit { max_failures: 20, window: Duration::from_secs(3600) },
                ..ThrottleSettings::default()
            },
        }
    }
}

/// Throttle keys of their own, so a shared counter store never mixes them with logins'.
fn reset_keys(email: &Email, client: &str) -> (String, String) {
    (format!("reset:{}", email.as_str()), format!("reset:{client}"))
}

/// The binding of a token of `purpose`: a reset dies with any password change, a
/// verification with any email change, an email change with either (the same rules as a
/// reset, and an admin's change of the address in between also voids it).
fn binding_for(user: &User, purpose: TokenPurpose) -> [u8; 32] {
    match purpose {
        TokenPurpose::PasswordReset => binding_of(user.password_hash.as_str()),
        TokenPurpose::EmailVerification => binding_of(user.email.as_str()),
        // A newline can be in neither a PHC string nor an email, so the pair is unambiguous.
        TokenPurpose::EmailChange => binding_of(&format!("{}\n{}", user.password_hash.as_str(), user.email.as_str())),
    }
}

fn queued(template: &str, recipient: &Email, params: serde_json::Value, now: Timestamp) -> QueuedMail {
    QueuedMail {
        id: uuid::Uuid::now_v7(),
        template: template.to_owned(),
        recipient: recipient.clone(),
        params: params.to_string(),
        status: MailStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        created_at: now,
        updated_at: now,
    }
}

/// The token row, the mails that carry it (an email change also notifies the old
/// address) and the `<purpose>.requested` event, for one user: what an issue writes in one
/// transaction. `new_email` is the address an email change moves the account to.
fn token_mail(
    user: &User,
    token: &OneTimeToken,
    token_hash: TokenHash,
    purpose: TokenPurpose,
    new_email: Option<&Email>,
    ttl: Duration,
    now: Timestamp,
) -> (AccountToken, Vec<QueuedMail>, OutboxEvent) {
    let expires_at = now.plus(ttl);
    let row = AccountToken {
        id: uuid::Uuid::now_v7(),
        user_id: user.id,
        purpose,
        token_hash,
        binding: binding_for(user, purpose),
        created_at: now,
        expires_at,
        used_at: None,
        new_email: new_email.cloned(),
    };
    // The mail with the token goes to the address it proves: the new one for a change.
    let recipient = new_email.unwrap_or(&user.email);
    let params = serde_json::json!({
        "token": token.expose(),
        "name": user.name.as_str(),
        "email": recipient.as_str(),
        "expires_minutes": ttl.as_secs().div_ceil(60),
        "expires_at_micros": expires_at.micros(),
    });
    let mut mails = vec![queued(purpose.as_str(), recipient, params, now)];
    let mut data = serde_json::json!({
        "user": user_json(user),
        "mail_id": mails[0].id.to_string(),
        "expires_at": crate::domain::rfc3339(expires_at),
    });
    if let Some(new_email) = new_email {
        // No token and no expiry: the owner of the old address hears of the request even
        // if the link is never used, so a hijacked session cannot move the account quietly.
        let notice = serde_json::json!({
            "name": user.name.as_str(),
            "email": user.email.as_str(),
            "new_email": new_email.as_str(),
        });
        mails.push(queued("email_change_notice", &user.email, notice, now));
        data["new_email"] = serde_json::Value::String(new_email.as_str().to_owned());
        data["notice_mail_id"] = serde_json::Value::String(mails[1].id.to_string());
    }
    let (event_type, actor) = match purpose {
        TokenPurpose::PasswordReset => ("password_reset.requested", EventActor::Anonymous),
        TokenPurpose::EmailVerification => ("email_verification.requested", EventActor::User(user.id)),
        TokenPurpose::EmailChange => ("email_change.requested", EventActor::User(user.id)),
    };
    (row, mails, event(event_type, user.id.as_uuid(), actor, data, now))
}

fn invalid_token() -> AppError {
    ValidationError::new("token", "token_invalid", "the token is unknown, already used or superseded").into()
}

/// What redeeming a token does to its user: the new row, the fields the event names as
/// changed, how it came about (`via`) and which sessions end.
struct Redemption<'a> {
    next: User,
    changed: Vec<&'a str>,
    via: &'static str,
    revoke: SessionRevocation,
}

impl Accounts {
    /// Redeems `row` for `user` in one transaction (token used, user replaced, the other
    /// unused tokens of its purpose gone, `user.updated` recorded) and invalidates the
    /// user's cached entries with the commit.
    async fn redeem(&self, row: &AccountToken, user: &User, redemption: Redemption<'_>) -> Result<User, AppError> {
        let Redemption { next, changed, via, revoke } = redemption;
        let now = next.updated_at;
        let sessions_revoked = match revoke {
            SessionRevocation::None => "none",
            SessionRevocation::All { .. } => "all",
            SessionRevocation::AllExcept { .. } => "all_but_current",
        };
        let data = serde_json::json!({
            "user": user_json(&next),
            "changed": changed,
            "sessions_revoked": sessions_revoked,
            "via": via,
        });
        let event = event("user.updated", user.id.as_uuid(), EventActor::User(user.id), data, now);
        let (store, id, expected, token_id, purpose) = (self.store.clone(), user.id, user.version, row.id, row.purpose);
        let stored = next.clone();
        let write =
            async move { store.redeem_account_token(token_id, purpose, &stored, expected, revoke, now, &event).await };
        match self.commit("redeem_account_token", write, Stale::User { id, sessions: None, now }).await {
            Ok(()) => Ok(next),
            // Redeemed by a concurrent request, or the account changed under us.
            Err(RepoError::NotFound | RepoError::VersionConflict) => Err(invalid_token()),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored token and its user, if `token` may be redeemed for `purpose` now: known,
    /// of that purpose, unused, unexpired, and still bound to what it was bound to.
    async fn redeemable(&self, token: &OneTimeToken, purpose: TokenPurpose) -> Result<(AccountToken, User), AppError> {
        let hash = token.hash();
        let row = self.db("account_token", self.store.account_token(&hash)).await?.ok_or_else(invalid_token)?;
        if !row.token_hash.ct_eq(&hash) || row.purpose != purpose || row.used_at.is_some() {
            return Err(invalid_token());
        }
        if self.clock.now() >= row.expires_at {
            return Err(
                ValidationError::new("token", "token_expired", "the token has expired; ask for a new one").into()
            );
        }
        let user = self.db("user_by_id", self.store.user_by_id(row.user_id)).await?.ok_or_else(invalid_token)?;
        if binding_for(&user, purpose) != row.binding {
            return Err(invalid_token());
        }
        Ok((row, user))
    }

    /// `POST /v1/password-resets`. `Ok` whatever the email; `Throttled` alike for both.
    pub async fn request_password_reset(&self, email: &Email, client: &str) -> Result<(), AppError> {
        let now = self.clock.now();
        let (account_key, client_key) = reset_keys(email, client);
        self.reset_throttle
            .reserve(&account_key, &client_key, now)
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let user = self.db("user_by_email", self.store.user_by_email(email)).await?;
        let token = OneTimeToken::generate();
        let token_hash = token.hash();
        let Some(user) = user.filter(|u| u.status == UserStatus::Active) else {
            return Ok(());
        };
        let (store, observer, waker) = (self.store.clone(), self.observer.clone(), self.relay_waker.clone());
        let ttl = self.lifecycle.reset_ttl;
        tokio::spawn(async move {
            // Built here too, not before the answer: nothing the unknown email skips.
            let (row, mails, event) =
                token_mail(&user, &token, token_hash, TokenPurpose::PasswordReset, None, ttl, now);
            let write = store.issue_account_token(&row, &mails, &event);
            match observed_db(&*observer, "issue_account_token", write).await {
                Ok(()) => waker.iter().for_each(|w| w.notify_one()),
                Err(e) => tracing::warn!(user_id = %row.user_id, error = %e, "cannot queue a password reset"),
            }
        });
        Ok(())
    }

    /// `POST /v1/password-resets/confirm`: sets the password and revokes every session.
    pub async fn confirm_password_reset(&self, token: &OneTimeToken, new_password: &Password) -> Result<(), AppError> {
        // A binding mismatch means the password changed since the token was made: whoever
        // changed it decided.
        let (row, user) = self.redeemable(token, TokenPurpose::PasswordReset).await?;
        if user.status != UserStatus::Active {
            return Err(AppError::AccountDisabled);
        }
        let new_hash = self.hasher.hash(new_password).await?;
        let now = self.clock.now();
        let mut next = user.clone();
        next.password_hash = new_hash;
        next.version = user.version.next();
        next.updated_at = now;
        let revoke = SessionRevocation::All { at: now };
        let redemption = Redemption { next, changed: vec!["password"], via: "password_reset", revoke };
        self.redeem(&row, &user, redemption).await.map(|_| ())
    }

    /// `POST /v1/users/{id}/verification`: mails a verification link to the user's
    /// current email. Only the user themself; throttled like reset requests.
    pub async fn request_verification(&self, actor: &Actor, id: UserId, client: &str) -> Result<(), AppError> {
        let Actor::User { user, .. } = actor else {
            return Err(AppError::Forbidden("only the user themself may ask for a verification mail"));
        };
        if user.id != id {
            return Err(AppError::Forbidden("only the user themself may ask for a verification mail"));
        }
        if user.verified {
            return Err(AppError::AlreadyVerified);
        }
        let now = self.clock.now();
        let (account_key, client_key) = (format!("verify:{}", user.email.as_str()), format!("verify:{client}"));
        self.reset_throttle
            .reserve(&account_key, &client_key, now)
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        let token = OneTimeToken::generate();
        let purpose = TokenPurpose::EmailVerification;
        let ttl = self.lifecycle.verification_ttl;
        let (row, mails, event) = token_mail(user, &token, token.hash(), purpose, None, ttl, now);
        self.db("issue_account_token", self.store.issue_account_token(&row, &mails, &event)).await?;
        self.wake_relay();
        Ok(())
    }

    /// `POST /v1/verifications`: marks the email the token was sent to as verified.
    pub async fn confirm_verification(&self, token: &OneTimeToken) -> Result<User, AppError> {
        // A binding mismatch means it went to an address the account no longer has: it
        // proves nothing about the new one.
        let (row, user) = self.redeemable(token, TokenPurpose::EmailVerification).await?;
        let now = self.clock.now();
        let mut next = user.clone();
        next.verified = true;
        next.version = user.version.next();
        next.updated_at = now;
        let changed = if user.verified { vec![] } else { vec!["verified"] };
        let redemption = Redemption { next, changed, via: "email_verification", revoke: SessionRevocation::None };
        self.redeem(&row, &user, redemption).await
    }

    /// A user's own email change (from `PATCH /v1/users/{id}`, after the current password
    /// was checked): nothing changes yet; a token bound to the password and the current
    /// address is mailed to `new_email` and a notice to the current address. Throttled like
    /// verification mails, so the endpoint cannot be used to mail strangers in bulk.
    pub(super) async fn request_email_change(
        &self,
        user: &User,
        new_email: &Email,
        client: &str,
    ) -> Result<EmailChangeRequested, AppError> {
        let now = self.clock.now();
        let (account_key, client_key) = (format!("email_change:{}", user.id), format!("email_change:{client}"));
        self.reset_throttle
            .reserve(&account_key, &client_key, now)
            .await
            .map_err(|retry_after| AppError::Throttled { retry_after })?;
        // Checked now for a clear answer, and again at the confirmation (the unique index).
        if self.db("user_by_email", self.store.user_by_email(new_email)).await?.is_some() {
            return Err(AppError::EmailTaken);
        }
        let token = OneTimeToken::generate();
        let (purpose, ttl) = (TokenPurpose::EmailChange, self.lifecycle.verification_ttl);
        let (row, mails, event) = token_mail(user, &token, token.hash(), purpose, Some(new_email), ttl, now);
        self.db("issue_account_token", self.store.issue_account_token(&row, &mails, &event)).await?;
        self.wake_relay();
        Ok(EmailChangeRequested { user: user.clone(), new_email: new_email.clone(), expires_at: row.expires_at })
    }

    /// `POST /v1/email-changes/confirm`: moves the account to the address the token was
    /// sent to, which is thereby verified. Sessions stay: the password did not change.
    pub async fn confirm_email_change(&self, token: &OneTimeToken) -> Result<User, AppError> {
        // A binding mismatch means the password or the address changed since the request.
        let (row, user) = self.redeemable(token, TokenPurpose::EmailChange).await?;
        let new_email = row.new_email.clone().ok_or_else(invalid_token)?;
        if user.status != UserStatus::Active {
            return Err(AppError::AccountDisabled);
        }
        // Someone may have registered the address since the request: a clear 409 here, and
        // the unique index decides a race with a registration happening right now.
        if self.db("user_by_email", self.store.user_by_email(&new_email)).await?.is_some_and(|u| u.id != user.id) {
            return Err(AppError::EmailTaken);
        }
        let now = self.clock.now();
        let mut next = user.clone();
        next.email = new_email;
        next.verified = true;
        next.version = user.version.next();
        next.updated_at = now;
        let changed = if user.verified { vec!["email"] } else { vec!["email", "verified"] };
        let redemption = Redemption { next, changed, via: "email_change", revoke: SessionRevocation::None };
        self.redeem(&row, &user, redemption).await
    }

    /// With `require_verified_email`, right after registration: the verification mail the
    /// new user cannot log in to ask for. A failure is logged, not returned (the account
    /// exists); a reset does not help such a user, so operators see it in the log.
    pub(super) async fn send_first_verification(&self, user: &User) {
        let token = OneTimeToken::generate();
        let now = self.clock.now();
        let purpose = TokenPurpose::EmailVerification;
        let ttl = self.lifecycle.verification_ttl;
        let (row, mails, event) = token_mail(user, &token, token.hash(), purpose, None, ttl, now);
        match self.db("issue_account_token", self.store.issue_account_token(&row, &mails, &event)).await {
            Ok(()) => self.wake_relay(),
            Err(e) => tracing::warn!(user_id = %user.id, error = %e, "cannot queue the first verification mail"),
        }
    }
}
