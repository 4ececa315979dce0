//! Mail: the port a sender implements, the templates, and the worker's side of the mail
//! queue — the `mail` listener and the dispatcher that sends, retries and gives up.
//!
//! Mail never leaves inside a request. A request that needs one writes a `mail_queue` row
//! in its own transaction, next to its outbox event; the relay publishes the event, the
//! worker's `mail` listener hears it and wakes the dispatcher, which claims due rows (a
//! lease, so two workers never send one mail within it), renders the template and hands the
//! mail to the [`Mailer`]. The dispatcher also polls, so a lost wake-up or a retry that
//! comes due costs at most one poll interval. A failure is retried with doubling, jittered
//! backoff; a permanent refusal (5xx) or the last attempt fails the mail; a mail whose link
//! has expired is not sent at all. Either way the request that queued it has long answered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use crate::domain::Timestamp;
use crate::events::Event;
use crate::lifecycle::{MailStatus, QueuedMail};
use crate::ports::{Clock, Store};
use crate::worker::Listener;

/// A rendered mail, ready for the wire.
#[derive(Clone)]
pub struct OutgoingMail {
    /// The queue row's id, also the `Message-ID`'s local part, so a resend after a lost
    /// answer is recognisable as the same mail.
    pub id: uuid::Uuid,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a mail was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The server could not be reached, timed out or answered 4xx: try again later.
    #[error("mail not sent (will retry): {0}")]
    Transient(String),
    /// The server refused it for good (5xx): retrying would only repeat the refusal.
    #[error("mail refused: {0}")]
    Permanent(String),
}

/// Sends one mail. Adapters: strata-mail's SMTP sender and the log-only default.
#[async_trait]
pub trait Mailer: Send + Sync {
    /// For the startup log, secrets redacted.
    fn describe(&self) -> String;

    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError>;
}

/// One template: subject, plain-text and HTML bodies with `{{name}}` placeholders.
#[derive(Clone, Debug)]
pub struct Template {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Every template Strata sends, by name.
pub const TEMPLATE_NAMES: &[&str] = &["password_reset", "email_verification", "email_change", "email_change_notice"];

/// The templates in use: the embedded defaults, each part overridable by a file
/// `<dir>/<name>.subject`, `<name>.txt` or `<name>.html`.
#[derive(Clone, Debug)]
pub struct Templates(HashMap<&'static str, Template>);

impl Templates {
    pub fn embedded() -> Self {
        macro_rules! embedded {
            ($($name:literal),* $(,)?) => {
                HashMap::from([$((
                    $name,
                    Template {
                        subject: include_str!(concat!("mail_templates/", $name, ".subject")).trim().to_owned(),
                        text: include_str!(concat!("mail_templates/", $name, ".txt")).to_owned(),
                        html: include_str!(concat!("mail_templates/", $name, ".html")).to_owned(),
                    },
                )),*])
            };
        }
        Templates(embedded!("password_reset", "email_verification", "email_change", "email_change_notice"))
    }

    /// The embedded templates with whatever `dir` overrides. A missing file keeps the
    /// default; an unreadable one is an error (a typo must not silently send the default).
    pub fn with_overrides(dir: &Path) -> Result<Self, String> {
        let mut templates = Self::embedded();
        for (name, template) in templates.0.iter_mut() {
            for (ext, part) in
                [("subject", &mut template.subject), ("txt", &mut template.text), ("html", &mut template.html)]
            {
                let path = dir.join(format!("{name}.{ext}"));
                match std::fs::read_to_string(&path) {
                    Ok(content) => *part = if ext == "subject" { content.trim().to_owned() } else { content },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            }
        }
        Ok(templates)
    }

    /// Fills `name`'s placeholders from `params` (a JSON object of strings and numbers).
    /// Values are HTML-escaped in the HTML part; unknown placeholders render empty.
    pub fn render(&self, name: &str, params: &serde_json::Value) -> Option<(String, String, String)> {
        let t = self.0.get(name)?;
        let value = |key: &str| match params.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        // Header injection: a subject is one line whatever a parameter holds.
        let subject = fill(&t.subject, &value).replace(['\r', '\n'], " ");
        Some((subject, fill(&t.text, &value), fill(&t.html, &|k| html_escape(&value(k)))))
    }
}

fn fill(template: &str, value: &dyn Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                out.push_str(&value(after[..end].trim()));
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone, Debug)]
pub struct MailSettings {
    /// Where the links in mails point: `{base_url}/reset-password?token=…`.
    pub base_url: String,
    /// Attempts before a mail is failed for good.
    pub max_attempts: u32,
    /// Backoff after the first failure; doubles per attempt up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub poll_interval: Duration,
    /// How long a claim holds a mail against other dispatchers.
    pub lease: Duration,
    /// Bound on one send (connect, TLS, the SMTP dialogue).
    pub timeout: Duration,
}

impl Default for MailSettings {
    fn default() -> Self {
        MailSettings {
            base_url: "http://localhost:8080".to_owned(),
            max_attempts: 8,
            first_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the dispatcher reports, for metrics.
pub trait MailObserver: Send + Sync {
    /// `outcome`: `sent`, `retry`, `failed`, `expired`.
    fn mail(&self, template: &str, outcome: &'static str);
}

impl MailObserver for crate::ports::NoopObserver {
    fn mail(&self, _: &str, _: &'static str) {}
}

/// Event types whose change queued a mail.
pub const MAIL_EVENT_TYPES: &[&str] =
    &["password_reset.requested", "email_verification.requested", "email_change.requested"];

/// The worker's `mail` listener: the queue row is already written (in the request's
/// transaction), so hearing its event only wakes the dispatcher. Nothing to record per
/// event: a redelivered event wakes an idle dispatcher once more, which costs one claim.
pub struct MailListener {
    wake: Arc<Notify>,
}

impl MailListener {
    pub fn new(wake: Arc<Notify>) -> Self {
        MailListener { wake }
    }
}

#[async_trait]
impl Listener for MailListener {
    fn name(&self) -> &'static str {
        "mail"
    }

    async fn apply(&self, events: &[Event]) -> Result<(), String> {
        if events.iter().any(|e| MAIL_EVENT_TYPES.contains(&e.event_type.as_str())) {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Sends queued mails; see the module docs.
pub struct MailDispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mailer: Arc<dyn Mailer>,
    templates: Templates,
    observer: Arc<dyn MailObserver>,
    settings: MailSettings,
    wake: Arc<Notify>,
}

impl MailDispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        mailer: Arc<dyn Mailer>,
        templates: Templates,
        observer: Arc<dyn MailObserver>,
        settings: MailSettings,
    ) -> Arc<Self> {
        Arc::new(MailDispatcher { store, clock, mailer, templates, observer, settings, wake: Arc::new(Notify::new()) })
    }

    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut next_prune = Timestamp(0);
        while !*shutdown.borrow() {
            let now = self.clock.now();
            if now >= next_prune {
                next_prune = now.plus(Duration::from_secs(3600));
                // A day of history for operators; the tokens expired long before.
                match self.store.prune_lifecycle(now.minus(Duration::from_secs(24 * 3600)), 10_000).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "pruned expired tokens and finished mails"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune tokens and mails"),
                }
            }
            let claimed = match self.store.claim_due_mails(now, now.plus(self.settings.lease), 16).await {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot claim queued mails; retrying");
                    Vec::new()
                }
            };
            let idle = claimed.is_empty();
            // One at a time: mail is rare, and a mail server is happier with one client.
            for mail in claimed {
                if *shutdown.borrow() {
                    // Its lease runs out and the next dispatcher takes it.
                    break;
                }
                self.deliver(mail).await;
            }
            if idle {
                let pause = if failures > 0 {
                    crate::relay::backoff(failures, Duration::from_secs(30))
                } else {
                    self.settings.poll_interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    async fn deliver(&self, mut mail: QueuedMail) {
        let params: serde_json::Value = serde_json::from_str(&mail.params).unwrap_or(serde_json::Value::Null);
        let now = self.clock.now();
        mail.updated_at = now;
        let expired = params.get("expires_at_micros").and_then(|v| v.as_i64()).is_some_and(|at| now.micros() >= at);
        let outcome = if expired {
            Err(("expired", "its link expired before it could be sent".to_owned()))
        } else {
            match self.render(&mail, &params) {
                Some(outgoing) => {
                    mail.attempts += 1;
                    match tokio::time::timeout(self.settings.timeout, self.mailer.send(&outgoing)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(MailError::Permanent(why))) => Err(("failed", why)),
                        Ok(Err(MailError::Transient(why))) => Err(("retry", why)),
                        Err(_) => Err(("retry", format!("no answer within {:?}", self.settings.timeout))),
                    }
                }
                None => Err(("failed", format!("unknown template {:?}", mail.template))),
            }
        };
        match outcome {
            Ok(()) => {
                mail.status = MailStatus::Sent;
                mail.last_error = None;
                self.observer.mail(&mail.template, "sent");
                tracing::info!(mail_id = %mail.id, template = %mail.template, attempts = mail.attempts, "mail sent");
            }
            Err(("retry", why)) if mail.attempts < self.settings.max_attempts => {
                mail.next_attempt_at = now.plus(self.retry_delay(mail.attempts));
                mail.last_error = Some(why.clone());
                self.observer.mail(&mail.template, "retry");
                tracing::warn!(mail_id = %mail.id, template = %mail.template, attempts = mail.attempts, error = %why, "mail not sent; will retry");
            }
            Err((outcome, why)) => {
                mail.status = MailStatus::Failed;
                mail.last_error = Some(why.clone());
                let outcome = if outcome == "expired" { "expired" } else { "failed" };
                self.observer.mail(&mail.template, outcome);
                tracing::warn!(mail_id = %mail.id, template = %mail.template, attempts = mail.attempts, error = %why, "mail given up");
            }
        }
        if mail.status != MailStatus::Pending {
            // The token it carried is no one's business any more.
            mail.params = "{}".to_owned();
        }
        if let Err(e) = self.store.record_mail(&mail).await {
            // The lease runs out and it is claimed again: a sent mail may go twice, never zero times.
            tracing::warn!(mail_id = %mail.id, error = %e, "cannot record the mail's state");
        }
    }

    fn render(&self, mail: &QueuedMail, params: &serde_json::Value) -> Option<OutgoingMail> {
        let mut params = params.clone();
        let token = params.get("token").and_then(|t| t.as_str()).map(str::to_owned);
        if let (Some(obj), Some(token), Some(path)) = (params.as_object_mut(), token, link_path(&mail.template)) {
            let base = self.settings.base_url.trim_end_matches('/');
            obj.insert("link".to_owned(), serde_json::Value::String(format!("{base}{path}?token={token}")));
        }
        let (subject, text, html) = self.templates.render(&mail.template, &params)?;
        Some(OutgoingMail { id: mail.id, to: mail.recipient.as_str().to_owned(), subject, text, html })
    }

    /// Doubling from `first_backoff`, capped, ±20 % jitter so a server's recovery is not
    /// met by every queued mail at once.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let base = self.settings.first_backoff.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
        let capped = base.min(self.settings.max_backoff);
        let jitter = 0.8 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 2500.0;
        capped.mul_f64(jitter)
    }
}

/// The page of the application (under `mail.base_url`) that takes each template's token.
fn link_path(template: &str) -> Option<&'static str> {
    match template {
        "password_reset" => Some("/reset-password"),
        "email_verification" => Some("/verify-email"),
        "email_change" => Some("/confirm-email-change"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_escaped_in_html_only() {
        let t = Templates::embedded();
        let params = serde_json::json!({
            "name": "<b>Ann</b> & co",
            "link": "https://app.example/reset-password?token=ot_x",
            "expires_minutes": 30,
        });
        let (subject, text, html) = t.render("password_reset", &params).unwrap();
        assert!(!subject.is_empty() && !subject.contains('\n'));
        assert!(text.contains("<b>Ann</b> & co"), "{text}");
        assert!(text.contains("https://app.example/reset-password?token=ot_x"));
        assert!(text.contains("30"));
        assert!(html.contains("&lt;b&gt;Ann&lt;/b&gt; &amp; co"), "{html}");
        assert!(!html.contains("<b>Ann"));
        assert!(t.render("no_such_template", &params).is_none());
    }

    #[test]
    fn fill_copes_with_unclosed_and_unknown_placeholders() {
        let v = |k: &str| if k == "a" { "A".to_owned() } else { String::new() };
        assert_eq!(fill("x{{a}}y{{ b }}z{{c", &v), "xAyz{{c");
    }

    #[test]
    fn a_directory_overrides_single_parts() {
        let dir = std::env::temp_dir().join(format!("strata-templates-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("password_reset.subject"), "Custom {{name}}\n").unwrap();
        let t = Templates::with_overrides(&dir).unwrap();
        let (subject, text, _) = t.render("password_reset", &serde_json::json!({"name": "Ann"})).unwrap();
        assert_eq!(subject, "Custom Ann");
        assert_eq!(
            text,
            Templates::embedded().render("password_reset", &serde_json::json!({"name": "Ann"})).unwrap().1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
