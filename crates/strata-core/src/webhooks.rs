//! Webhooks: endpoints admins register, durable deliveries, and the dispatcher that sends
//! them following Standard Webhooks (<https://www.standardwebhooks.com>).
//!
//! The path of an event: the `webhooks` listener (a consumer group of its own) writes one
//! delivery row per subscribed, enabled endpoint — keyed by (endpoint, event id), so a
//! redelivered event adds nothing. The dispatcher claims due rows by compare-and-set on
//! their `next_attempt_at` (a lease: a dispatcher that dies mid-send leaves the row to be
//! claimed again once the lease runs out, which is at-least-once), sends each on a task of
//! its own under a global concurrency bound and a per-endpoint rate limit, and records the
//! attempt and the next due time in one write. Nothing lives only in memory: a restart
//! loses no retry.
//!
//! Outcomes: 2xx delivers; 410 disables the endpoint; anything else (other statuses,
//! refused connections, timeouts, an address the SSRF policy refuses) is retried on the
//! schedule, no sooner than a 429/503's `Retry-After`, until the attempts run out and the
//! delivery is dead-lettered (`failed`, replayable). An endpoint whose deliveries have all
//! failed for `disable_after` is disabled with a `webhook.endpoint.disabled` event.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use tokio::sync::{Notify, Semaphore, watch};

use crate::cidr::Cidr;
use crate::domain::{OutboxEvent, Timestamp};
use crate::error::ValidationError;
use crate::events::Event;
use crate::ports::{Clock, Store};
use crate::worker::Listener;

/// The prefix of a Standard Webhooks symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Longest accepted endpoint URL.
pub const URL_MAX_LEN: usize = 2048;
/// Most event types one endpoint may subscribe to (every type, with room to grow).
pub const EVENTS_MAX: usize = 64;

/// An absolute `http`/`https` URL without credentials or fragment, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    raw: String,
    https: bool,
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
}

impl WebhookUrl {
    pub fn parse(s: &str) -> Result<WebhookUrl, ValidationError> {
        let bad = |code: &'static str, msg: String| ValidationError::new("url", code, msg);
        if s.len() > URL_MAX_LEN {
            return Err(bad("too_long", format!("url is longer than {URL_MAX_LEN} bytes")));
        }
        if s.chars().any(|c| c.is_ascii_control() || c == ' ' || !c.is_ascii()) {
            return Err(bad("invalid", "url must be ASCII without spaces or control characters".into()));
        }
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("invalid_scheme", "url must start with http:// or https://".into()));
        };
        if rest.contains('#') {
            return Err(bad("invalid", "url must not have a fragment".into()));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("invalid", "url must not carry credentials".into()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("invalid", "unterminated IPv6 literal".into()))?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| bad("invalid", "bad IPv6 literal".into()))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            None => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("invalid", "bad port".into()))?,
        };
        let host = host.to_ascii_lowercase();
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && (host.parse::<IpAddr>().is_ok()
                || host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                }));
        if !host_ok {
            return Err(bad("invalid", "url has no valid host".into()));
        }
        let path = if path.is_empty() {
            "/".to_owned()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(WebhookUrl { raw: s.to_owned(), https, host, port, path })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
    pub fn https(&self) -> bool {
        self.https
    }
    /// Lower-cased host name or IP literal (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn path_and_query(&self) -> &str {
        &self.path
    }
    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// Address ranges a webhook may not reach unless allowed: everything that is not the
/// public internet (RFC 6890 special-purpose registries, plus the translation prefixes
/// that would smuggle an IPv4 target inside an IPv6 address). IPv4-mapped IPv6 addresses
/// are judged as the IPv4 address they carry ([`Cidr::contains`] canonicalises them).
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "local NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments (Teredo included)"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// Which addresses webhook deliveries may connect to.
#[derive(Clone, Debug, Default)]
pub struct NetworkPolicy {
    /// Special ranges (or parts of them) that are allowed anyway, e.g. `127.0.0.0/8` in tests.
    pub allowed: Vec<Cidr>,
}

impl NetworkPolicy {
    /// `Err(why)` when `ip` is in a special range and not allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allowed.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        for (cidr, what) in SPECIAL {
            if cidr.parse::<Cidr>().is_ok_and(|n| n.contains(ip)) {
                return Err(format!(
                    "{ip} is a {what} address ({cidr}); allow it with STRATA_WEBHOOKS_ALLOWED_NETWORKS"
                ));
            }
        }
        Ok(())
    }
}

/// A signing secret; during a rotation the previous one keeps signing until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSecret {
    /// `whsec_` + base64 of 32 random bytes.
    pub key: String,
    /// `None` for the current secret.
    pub expires_at: Option<Timestamp>,
}

impl WebhookSecret {
    pub fn generate() -> WebhookSecret {
        use rand_core::{OsRng, RngCore};
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        WebhookSecret {
            key: format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(bytes)),
            expires_at: None,
        }
    }

    /// Storage form of a secret list: `[{"key": …, "expires_at": micros|null}, …]`.
    pub fn encode_all(secrets: &[WebhookSecret]) -> String {
        let list: Vec<_> = secrets
            .iter()
            .map(|s| serde_json::json!({ "key": s.key, "expires_at": s.expires_at.map(|t| t.micros()) }))
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    pub fn decode_all(stored: &str) -> Result<Vec<WebhookSecret>, String> {
        let list: Vec<serde_json::Value> = serde_json::from_str(stored).map_err(|e| format!("bad secrets: {e}"))?;
        list.iter()
            .map(|v| {
                let key = v["key"].as_str().ok_or("secret without a key")?.to_owned();
                Ok(WebhookSecret { key, expires_at: v["expires_at"].as_i64().map(Timestamp) })
            })
            .collect()
    }

    fn key_bytes(&self) -> Option<Vec<u8>> {
        let b64 = self.key.strip_prefix(SECRET_PREFIX)?;
        base64::engine::general_purpose::STANDARD.decode(b64).ok()
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` per secret still valid at
/// `now`, space-separated: the `webhook-signature` header.
pub fn sign(secrets: &[WebhookSecret], msg_id: &str, timestamp: i64, body: &[u8], now: Timestamp) -> String {
    let mut out = Vec::new();
    for s in secrets.iter().filter(|s| s.expires_at.is_none_or(|t| t > now)) {
        let Some(key) = s.key_bytes() else { continue };
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) else { continue };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        out.push(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())));
    }
    out.join(" ")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: uuid::Uuid,
    pub url: WebhookUrl,
    /// Short event types (`user.created`), each one of [`crate::events::EVENT_TYPES`].
    pub events: Vec<String>,
    pub description: String,
    pub enabled: bool,
    /// Why it was disabled (by an admin, a 410, or failing for too long).
    pub disabled_reason: Option<String>,
    /// Newest first.
    pub secrets: Vec<WebhookSecret>,
    /// Deliveries per second to this endpoint.
    pub rate_limit: u32,
    /// Since when every attempt has failed (none since the last success).
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl WebhookEndpoint {
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled && self.events.iter().any(|e| e == event_type)
    }
}

/// Validates a subscription list: known types, no duplicates kept, at least one.
pub fn parse_event_types(types: &[String]) -> Result<Vec<String>, ValidationError> {
    if types.is_empty() {
        return Err(ValidationError::new("events", "empty", "subscribe to at least one event type"));
    }
    if types.len() > EVENTS_MAX {
        return Err(ValidationError::new("events", "too_many", format!("at most {EVENTS_MAX} event types")));
    }
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        if !crate::events::is_event_type(t) {
            return Err(ValidationError::new(
                "events",
                "unknown_event_type",
                format!("unknown event type {t:?}; known: {}", crate::events::EVENT_TYPES.join(", ")),
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Out of attempts, or the endpoint is gone or disabled: a dead letter, replayable.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    pub id: uuid::Uuid,
    pub endpoint_id: uuid::Uuid,
    pub event: Event,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl WebhookDelivery {
    /// A new delivery of `event` to the endpoint, due at `now`.
    pub fn new(endpoint_id: uuid::Uuid, event: Event, now: Timestamp) -> WebhookDelivery {
        WebhookDelivery {
            id: uuid::Uuid::now_v7(),
            endpoint_id,
            event,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            last_status: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// One try at a delivery, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookAttempt {
    pub delivery_id: uuid::Uuid,
    /// 1-based.
    pub attempt: u32,
    pub at: Timestamp,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub endpoint_id: uuid::Uuid,
    pub status: Option<DeliveryStatus>,
    /// Exclusive lower bound on the delivery id (the cursor).
    pub after: Option<uuid::Uuid>,
    pub limit: u32,
}

/// An event encoded as a delivery row stores it (structured CloudEvent JSON).
pub fn encode_event(e: &Event) -> String {
    e.to_structured_json()
}

pub fn decode_event(s: &str) -> Result<Event, String> {
    Event::from_structured_json(s.as_bytes()).map_err(|e| e.to_string())
}

/// The HTTP request a delivery becomes.
#[derive(Clone, Debug)]
pub struct WebhookRequest {
    pub url: WebhookUrl,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The endpoint answered (any status).
    Answered { status: u16, retry_after: Option<Duration> },
    /// No answer: refused, reset, timed out, TLS failure, or an address the policy refuses.
    Failed(String),
}

/// Sends webhook requests: resolves, applies the [`NetworkPolicy`] to every address,
/// connects to an allowed one (pinned: no second lookup), follows no redirect.
#[async_trait]
pub trait WebhookSender: Send + Sync {
    async fn send(&self, request: &WebhookRequest) -> SendOutcome;
}

/// Builds the request for a delivery: CloudEvents HTTP binary mode (`ce-*` headers, the
/// data as the JSON body) plus the Standard Webhooks headers.
pub fn request_for(
    endpoint: &WebhookEndpoint,
    delivery: &WebhookDelivery,
    now: Timestamp,
    timeout: Duration,
) -> WebhookRequest {
    let e = &delivery.event;
    let msg_id = e.id.to_string();
    let ts = now.micros().div_euclid(1_000_000);
    let body = e.data.clone().into_bytes();
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("user-agent".to_owned(), concat!("Strata-Webhooks/", env!("CARGO_PKG_VERSION")).to_owned()),
        ("webhook-id".to_owned(), msg_id.clone()),
        ("webhook-timestamp".to_owned(), ts.to_string()),
        ("webhook-signature".to_owned(), sign(&endpoint.secrets, &msg_id, ts, &body, now)),
    ];
    headers.extend(e.binary_headers("ce-"));
    WebhookRequest { url: endpoint.url.clone(), headers, body, timeout }
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Waits between attempts: attempt n+1 comes `schedule[n-1]` (±20 %) after attempt n;
    /// `schedule.len() + 1` attempts in all.
    pub schedule: Vec<Duration>,
    /// Per request, connect to last byte.
    pub timeout: Duration,
    /// How long a claimed delivery is held before another dispatcher may take it.
    pub lease: Duration,
    /// Deliveries in flight at once (all endpoints together).
    pub concurrency: usize,
    /// Idle poll for due deliveries (new ones wake the dispatcher at once).
    pub poll_interval: Duration,
    /// An endpoint that has only failed for this long is disabled.
    pub disable_after: Duration,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_overlap: Duration,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let s = Duration::from_secs;
        WebhookSettings {
            // 8 attempts over about 27.6 hours.
            schedule: vec![s(5), s(300), s(1800), s(7200), s(18_000), s(36_000), s(36_000)],
            timeout: s(15),
            lease: s(60),
            concurrency: 64,
            poll_interval: Duration::from_millis(500),
            disable_after: s(5 * 24 * 3600),
            rotation_overlap: s(24 * 3600),
            max_retry_after: s(24 * 3600),
        }
    }
}

/// `base` ±20 %.
fn jitter(base: Duration) -> Duration {
    use rand_core::{OsRng, RngCore};
    let f = 0.8 + 0.4 * (OsRng.next_u32() as f64 / u32::MAX as f64);
    base.mul_f64(f)
}

/// When to try again after a failed attempt number `attempts`, or `None` when that was the last.
pub fn next_attempt(
    settings: &WebhookSettings,
    attempts: u32,
    retry_after: Option<Duration>,
    now: Timestamp,
) -> Option<Timestamp> {
    let base = settings.schedule.get(attempts.checked_sub(1)? as usize)?;
    let mut wait = jitter(*base);
    if let Some(ra) = retry_after {
        wait = wait.max(ra.min(settings.max_retry_after));
    }
    Some(now.plus(wait))
}

/// The `webhooks` listener: turns events into delivery rows for every endpoint that wants
/// them, once per (endpoint, event).
pub struct WebhookListener {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

impl WebhookListener {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, wake: Arc<Notify>) -> Self {
        WebhookListener { store, clock, wake }
    }
}

#[async_trait]
impl Listener for WebhookListener {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    async fn apply(&self, events: &[Event]) -> Result<(), String> {
        let endpoints = self.store.webhook_endpoints().await.map_err(|e| e.to_string())?;
        if endpoints.iter().all(|e| !e.enabled) {
            return Ok(());
        }
        let now = self.clock.now();
        let mut rows = Vec::new();
        for e in events {
            for ep in endpoints.iter().filter(|ep| ep.wants(&e.event_type)) {
                rows.push(WebhookDelivery::new(ep.id, e.clone(), now));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let added = self.store.enqueue_deliveries(&rows).await.map_err(|e| e.to_string())?;
        if added > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// What the dispatcher reports, for metrics.
pub trait WebhookObserver: Send + Sync {
    /// `outcome`: `delivered`, `retry`, `failed`, `rate_limited`.
    fn attempt(&self, outcome: &'static str, duration: Duration);
}

impl WebhookObserver for crate::ports::NoopObserver {
    fn attempt(&self, _: &'static str, _: Duration) {}
}

/// A per-endpoint token bucket (one second of burst).
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

/// Sends due deliveries; see the module docs.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sender: Arc<dyn WebhookSender>,
    observer: Arc<dyn WebhookObserver>,
    settings: WebhookSettings,
    wake: Arc<Notify>,
    buckets: parking_lot::Mutex<HashMap<uuid::Uuid, Bucket>>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        sender: Arc<dyn WebhookSender>,
        observer: Arc<dyn WebhookObserver>,
        settings: WebhookSettings,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            store,
            clock,
            sender,
            observer,
            settings,
            wake: Arc::new(Notify::new()),
            buckets: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Notified when new deliveries are queued.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut failures = 0u32;
        while !*shutdown.borrow() {
            let free = permits.available_permits();
            if free == 0 {
                // Every slot busy: go on as soon as one frees up. (Sleeping the poll
                // interval here capped a busy dispatcher at `concurrency` per interval.)
                tokio::select! {
                    p = permits.clone().acquire_owned() => drop(p),
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let now = self.clock.now();
            let claimed =
                self.store.claim_due_deliveries(now, now.plus(self.settings.lease), free.min(256) as u32).await;
            let claimed = match claimed {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying");
                    Vec::new()
                }
            };
            let idle = claimed.is_empty();
            for d in claimed {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let me = self.clone();
                tokio::spawn(async move {
                    me.deliver(d).await;
                    drop(permit);
                });
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
        // Let in-flight deliveries finish (bounded by the request timeout).
        let _ = tokio::time::timeout(
            self.settings.timeout + Duration::from_secs(1),
            permits.acquire_many(self.settings.concurrency.max(1) as u32),
        )
        .await;
    }

    /// Takes a token for `endpoint`, or says how long until one is there.
    fn take_token(&self, endpoint: &WebhookEndpoint, now: Timestamp) -> Result<(), Duration> {
        let rate = f64::from(endpoint.rate_limit.max(1));
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(endpoint.id).or_insert(Bucket { tokens: rate, at: now });
        let elapsed = (now.micros() - b.at.micros()).max(0) as f64 / 1e6;
        b.tokens = (b.tokens + elapsed * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    async fn deliver(&self, mut d: WebhookDelivery) {
        let now = self.clock.now();
        let endpoint = match self.store.webhook_endpoint(d.endpoint_id).await {
            Ok(Some(ep)) => ep,
            Ok(None) => return, // deleted with its deliveries
            Err(e) => {
                // The lease runs out and the delivery is claimed again.
                tracing::warn!(delivery = %d.id, error = %e, "cannot read the webhook endpoint");
                return;
            }
        };
        if !endpoint.enabled {
            d.status = DeliveryStatus::Failed;
            d.last_error = Some("endpoint disabled".into());
            d.updated_at = now;
            self.save(&d, None).await;
            return;
        }
        if let Err(wait) = self.take_token(&endpoint, now) {
            self.observer.attempt("rate_limited", Duration::ZERO);
            d.next_attempt_at = now.plus(wait);
            d.updated_at = now;
            self.save(&d, None).await;
            return;
        }
        let request = request_for(&endpoint, &d, now, self.settings.timeout);
        let started = std::time::Instant::now();
        let outcome = self.sender.send(&request).await;
        let took = started.elapsed();
        let now = self.clock.now();
        d.attempts += 1;
        d.updated_at = now;
        let attempt = WebhookAttempt {
            delivery_id: d.id,
            attempt: d.attempts,
            at: now,
            status: None,
            error: None,
            duration_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        };
        let (attempt, endpoint_change) = match outcome {
            SendOutcome::Answered { status, .. } if (200..300).contains(&status) => {
                d.status = DeliveryStatus::Delivered;
                d.last_status = Some(status);
                d.last_error = None;
                self.observer.attempt("delivered", took);
                let change = endpoint.failing_since.is_some().then(|| WebhookEndpoint {
                    failing_since: None,
                    updated_at: now,
                    ..endpoint.clone()
                });
                (WebhookAttempt { status: Some(status), ..attempt }, change)
            }
            SendOutcome::Answered { status: 410, .. } => {
                d.status = DeliveryStatus::Failed;
                d.last_status = Some(410);
                d.last_error = Some("endpoint answered 410 Gone; endpoint disabled".into());
                self.observer.attempt("failed", took);
                let change = disabled(&endpoint, "the endpoint answered 410 Gone", now);
                (WebhookAttempt { status: Some(410), ..attempt }, Some(change))
            }
            other => {
                let (status, error, retry_after) = match other {
                    SendOutcome::Answered { status, retry_after } => {
                        let ra = retry_after.filter(|_| status == 429 || status == 503);
                        (Some(status), format!("endpoint answered {status}"), ra)
                    }
                    SendOutcome::Failed(why) => (None, why, None),
                };
                d.last_status = status;
                d.last_error = Some(error.clone());
                match next_attempt(&self.settings, d.attempts, retry_after, now) {
                    Some(next) => {
                        d.next_attempt_at = next;
                        self.observer.attempt("retry", took);
                    }
                    None => {
                        d.status = DeliveryStatus::Failed;
                        self.observer.attempt("failed", took);
                    }
                }
                let since = endpoint.failing_since.unwrap_or(now);
                let change = if now.micros() - since.micros() >= self.settings.disable_after.as_micros() as i64 {
                    Some(disabled(&endpoint, "every delivery failed for too long", now))
                } else if endpoint.failing_since.is_none() {
                    Some(WebhookEndpoint { failing_since: Some(now), updated_at: now, ..endpoint.clone() })
                } else {
                    None
                };
                (WebhookAttempt { status, error: Some(error), ..attempt }, change)
            }
        };
        if let Some(change) = &endpoint_change {
            let event = (!change.enabled && endpoint.enabled).then(|| disabled_event(change, now));
            if event.is_some() {
                tracing::warn!(endpoint = %change.id, reason = ?change.disabled_reason, "webhook endpoint disabled");
            }
            if let Err(e) = self.store.update_webhook_endpoint(change, event.as_ref()).await {
                tracing::warn!(endpoint = %change.id, error = %e, "cannot update the webhook endpoint");
            }
        }
        self.save(&d, Some(&attempt)).await;
    }

    async fn save(&self, d: &WebhookDelivery, attempt: Option<&WebhookAttempt>) {
        if let Err(e) = self.store.record_delivery(d, attempt).await {
            // The lease runs out and the delivery is tried again: at least once.
            tracing::warn!(delivery = %d.id, error = %e, "cannot record the webhook delivery");
        }
    }
}

/// The event an automatic disable leaves (its subject is the endpoint).
fn disabled_event(endpoint: &WebhookEndpoint, now: Timestamp) -> OutboxEvent {
    let data = serde_json::json!({
        "endpoint": { "id": endpoint.id.to_string(), "url": endpoint.url.as_str() },
        "reason": endpoint.disabled_reason,
        "actor": { "type": "system" },
    });
    OutboxEvent {
        id: uuid::Uuid::now_v7(),
        aggregate_id: endpoint.id,
        event_type: "webhook.endpoint.disabled",
        payload: data.to_string(),
        created_at: now,
        traceparent: None,
    }
}

fn disabled(endpoint: &WebhookEndpoint, reason: &str, now: Timestamp) -> WebhookEndpoint {
    WebhookEndpoint { enabled: false, disabled_reason: Some(reason.to_owned()), updated_at: now, ..endpoint.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_once() {
        let u = WebhookUrl::parse("https://Hooks.Example.com/in?x=1").unwrap();
        assert_eq!((u.https(), u.host(), u.port(), u.path_and_query()), (true, "hooks.example.com", 443, "/in?x=1"));
        assert_eq!(u.authority(), "hooks.example.com");
        let u = WebhookUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host(), u.port(), u.path_and_query(), u.authority().as_str()),
            ("127.0.0.1", 8080, "/", "127.0.0.1:8080")
        );
        let u = WebhookUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host(), u.authority().as_str()), ("::1", "[::1]:9"));
        for bad in [
            "ftp://x.com/",
            "http://",
            "http://user:pw@x.com/",
            "http://x.com:0/",
            "http://x.com:99999/",
            "http://x .com/",
            "http://x.com/#frag",
            "http://-x.com/",
            "http://[::1/",
            "javascript:alert(1)",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn special_ranges_are_refused_unless_allowed() {
        let strict = NetworkPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "fd00::1",
            "fe80::1",
            "2001::1",
            "224.0.0.1",
        ] {
            assert!(strict.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(strict.check(ip.parse().unwrap()).is_ok(), "{ip}");
        }
        let tests = NetworkPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()] };
        assert!(tests.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(tests.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(tests.check("10.0.0.1".parse().unwrap()).is_err());
        // Every entry of the table parses.
        assert!(SPECIAL.iter().all(|(c, _)| c.parse::<Cidr>().is_ok()));
    }

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let secret = WebhookSecret { key: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(), expires_at: None };
        let sig = sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#, Timestamp(0));
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_both_until_the_old_secret_expires() {
        let old = WebhookSecret { expires_at: Some(Timestamp(1000)), ..WebhookSecret::generate() };
        let new = WebhookSecret::generate();
        let both = sign(&[new.clone(), old.clone()], "m", 1, b"{}", Timestamp(999));
        assert_eq!(both.split(' ').count(), 2);
        let one = sign(&[new.clone(), old], "m", 1, b"{}", Timestamp(1000));
        assert_eq!(one, sign(&[new], "m", 1, b"{}", Timestamp(1000)));
    }

    #[test]
    fn the_schedule_ends_and_honours_retry_after() {
        let s = WebhookSettings::default();
        let now = Timestamp(0);
        for n in 1..=7 {
            let at = next_attempt(&s, n, None, now).unwrap();
            let base = s.schedule[n as usize - 1].as_micros() as i64;
            assert!(at.micros() >= base * 8 / 10 && at.micros() <= base * 12 / 10 + 1, "{n}");
        }
        assert_eq!(next_attempt(&s, 8, None, now), None);
        let at = next_attempt(&s, 1, Some(Duration::from_secs(120)), now).unwrap();
        assert!(at.micros() >= 120_000_000);
        let capped = next_attempt(&s, 1, Some(Duration::from_secs(10 * 24 * 3600)), now).unwrap();
        assert!(capped.micros() <= 24 * 3600 * 1_000_000);
        let total: Duration = s.schedule.iter().sum();
        assert!(total > Duration::from_secs(24 * 3600), "about a day or more");
    }
}
