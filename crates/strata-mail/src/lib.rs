//! Strata's mail senders behind strata-core's [`Mailer`] port, chosen by `STRATA_SMTP_URL`:
//!
//! - `smtp://[user:password@]host[:port][?tls=required|opportunistic]`: plain SMTP, or
//!   STARTTLS demanded (`required`) or used when offered (`opportunistic`); port 25 without
//!   TLS, 587 with it.
//! - `smtps://[user:password@]host[:port]`: TLS from the first byte (port 465).
//! - empty (the embedded default): [`LogMailer`], which writes each mail to the log.
//!
//! With a user and password in the URL the sender authenticates (AUTH PLAIN or LOGIN, as
//! the server offers). TLS is rustls with ring and the system's root certificates. Each
//! mail opens its own connection: Strata's mail is rare, and a pooled connection would
//! mostly be a stale one.
//!
//! Knows nothing of HTTP, SQL or the domain: it sends the [`OutgoingMail`] it is given.

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use strata_core::mail::{MailError, Mailer, OutgoingMail};

/// Opens the sender for `smtp_url`: SMTP when set, the log otherwise. `from` is the sender
/// address (`Strata <no-reply@example.com>` or a bare address). `extra_roots_pem`: PEM
/// certificates trusted besides the system's, for a server with a private CA (empty: none).
pub fn open(smtp_url: &str, from: &str, extra_roots_pem: &[u8]) -> Result<std::sync::Arc<dyn Mailer>, String> {
    let from: Mailbox = from.parse().map_err(|e| format!("mail.from {from:?}: {e}"))?;
    if smtp_url.trim().is_empty() {
        return Ok(std::sync::Arc::new(LogMailer { from }));
    }
    Ok(std::sync::Arc::new(SmtpMailer::new(smtp_url, from, extra_roots_pem)?))
}

/// Sends over SMTP.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    described: String,
}

impl SmtpMailer {
    pub fn new(url: &str, from: Mailbox, extra_roots_pem: &[u8]) -> Result<Self, String> {
        let described = redact(url);
        let bad = |e: &dyn std::fmt::Display| format!("STRATA_SMTP_URL {described}: {e}");
        let scheme = url.split("://").next().unwrap_or_default();
        if scheme != "smtp" && scheme != "smtps" {
            return Err(bad(&"the scheme must be smtp:// or smtps://"));
        }
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| bad(&e))?;
        if !extra_roots_pem.is_empty() {
            // The URL chose the TLS mode; only the trust changes, so the same mode is rebuilt
            // with the extra roots added to the system's.
            let host = url_host(url).ok_or_else(|| bad(&"no host"))?;
            // lettre takes a file without any certificate as an empty one: refuse it here.
            if !extra_roots_pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err("mail.tls_ca_file: no PEM certificate in it".into());
            }
            let root = Certificate::from_pem(extra_roots_pem).map_err(|e| format!("mail.tls_ca_file: {e}"))?;
            let params = TlsParameters::builder(host.to_owned())
                .add_root_certificate(root)
                .build_rustls()
                .map_err(|e| format!("mail.tls_ca_file: {e}"))?;
            let query = url.split_once('?').map_or("", |(_, q)| q);
            let tls = if scheme == "smtps" {
                Some(Tls::Wrapper(params))
            } else if query.split('&').any(|p| p == "tls=required") {
                Some(Tls::Required(params))
            } else if query.split('&').any(|p| p == "tls=opportunistic") {
                Some(Tls::Opportunistic(params))
            } else {
                None
            };
            if let Some(tls) = tls {
                builder = builder.tls(tls);
            }
        }
        Ok(SmtpMailer { transport: builder.build(), from, described })
    }
}

/// The host of `scheme://[userinfo@]host[:port][/path][?query]` (IPv6 in brackets, kept).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        host_port.split_inclusive(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// The URL with its password replaced, for logs and the banner.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    // The last '@': a password may hold one unencoded.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:REDACTED@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
        None => url.to_owned(),
    }
}

fn message(from: &Mailbox, mail: &OutgoingMail) -> Result<Message, MailError> {
    let to: Mailbox = mail.to.parse().map_err(|e| MailError::Permanent(format!("recipient {:?}: {e}", mail.to)))?;
    let domain = from.email.domain().to_owned();
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .message_id(Some(format!("<{}@{domain}>", mail.id)))
        .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
        .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))
}

#[async_trait]
impl Mailer for SmtpMailer {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        let message = message(&self.from, mail)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // 5xx: the server will say the same next time.
            Err(e) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
            Err(e) => Err(MailError::Transient(e.to_string())),
        }
    }
}

/// The embedded default: no mail leaves; each one is logged whole (with its link), so a
/// developer can follow a reset without a mail server. Never for production: the log then
/// holds live tokens, which is why `strata serve` says so at start-up.
pub struct LogMailer {
    from: Mailbox,
}

#[async_trait]
impl Mailer for LogMailer {
    fn describe(&self) -> String {
        "log only (STRATA_SMTP_URL not set)".to_owned()
    }

    async fn send(&self, mail: &OutgoingMail) -> Result<(), MailError> {
        // Built anyway, so a message SMTP would refuse is refused here too.
        message(&self.from, mail)?;
        tracing::info!(
            mail_id = %mail.id,
            to = %mail.to,
            subject = %mail.subject,
            body = %mail.text,
            "mail (not sent: no STRATA_SMTP_URL)"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> OutgoingMail {
        OutgoingMail {
            id: uuid::Uuid::now_v7(),
            to: "ann@example.com".into(),
            subject: "Reset your password".into(),
            text: "plain".into(),
            html: "<p>html</p>".into(),
        }
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(open("", "Strata <no-reply@example.com>", b"").is_ok());
        assert!(open("smtp://mail.example.com:2525", "no-reply@example.com", b"").is_ok());
        assert!(open("smtp://u:p@mail.example.com?tls=required", "no-reply@example.com", b"").is_ok());
        assert!(open("smtps://u:p@mail.example.com", "no-reply@example.com", b"").is_ok());
        assert!(open("http://mail.example.com", "no-reply@example.com", b"").is_err());
        assert!(open("smtp://mail.example.com?tls=sometimes", "no-reply@example.com", b"").is_err());
        assert!(open("", "not an address", b"").is_err());
        assert!(open("smtps://mail.example.com", "a@example.com", b"not a certificate").is_err());
        assert_eq!(url_host("smtp://u:p@w@mail.example.com:587/helo?tls=required"), Some("mail.example.com"));
        assert_eq!(url_host("smtps://[::1]:465"), Some("[::1]"));
        assert_eq!(url_host("smtp://127.0.0.1"), Some("127.0.0.1"));
        let m = open("smtp://user:s3cret@mail.example.com:587?tls=required", "a@example.com", b"").unwrap();
        assert!(!m.describe().contains("s3cret"), "{}", m.describe());
        assert_eq!(redact("smtp://mail.example.com"), "smtp://mail.example.com");
    }

    #[test]
    fn messages_are_multipart_with_our_message_id() {
        let mut m = mail();
        let from: Mailbox = "Strata <no-reply@example.com>".parse().unwrap();
        let built = String::from_utf8(message(&from, &m).unwrap().formatted()).unwrap();
        assert!(built.contains("multipart/alternative"), "{built}");
        assert!(built.contains(&format!("Message-ID: <{}@example.com>", m.id)), "{built}");
        m.to = "not an address".into();
        assert!(matches!(message(&from, &m), Err(MailError::Permanent(_))));
    }
}
