//! Typed configuration: defaults that make `strata serve` work with no file, overridden by
//! a TOML file, overridden by `STRATA_*` environment variables.
//!
//! Loading takes the file's text and the environment as arguments, so it is tested without
//! touching the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use strata_api::client::{Cidr, parse_list};
use strata_core::secret::Secret;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub password: PasswordConfig,
    pub throttle: ThrottleConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub cache: CacheConfig,
    /// `all` (API and worker in one process), `api`, `worker` or `gateway`.
    pub role: Role,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub mail: MailConfig,
    pub gateway: GatewayConfig,
    /// Registry an api instance registers itself in (`nats-kv://HOST:PORT/BUCKET` or
    /// `etcd://HOST:PORT/PREFIX`) for gateways to find; empty: none.
    pub register: String,
    /// The address registered; default the address the listener is bound to.
    pub register_address: Option<SocketAddr>,
    /// An instance that stops heartbeating drops out of the registry after this.
    pub register_ttl_secs: u64,
}

/// Mail sent by the worker (password resets). See ARCHITECTURE.md, Account lifecycle.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `smtp://[user:password@]host[:port][?tls=required|opportunistic]` or
    /// `smtps://…`; empty: mails are written to the log, not sent (development only).
    pub smtp_url: String,
    /// The sender, `Name <address>` or a bare address.
    pub from: String,
    /// Where links in mails point: `{base_url}/reset-password?token=…`.
    pub base_url: String,
    /// Files `<template>.subject|.txt|.html` here replace the embedded templates; empty: none.
    pub templates_dir: String,
    /// PEM certificates trusted for the SMTP server's TLS besides the system's roots (a
    /// private CA); empty: the system's only.
    pub tls_ca_file: String,
    /// Attempts per mail before it is failed.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles per attempt, at most an hour.
    pub first_backoff_ms: u64,
    /// One attempt: connect, TLS, the SMTP dialogue.
    pub timeout_ms: u64,
    /// How often the dispatcher looks for due mails besides being woken by events.
    pub poll_interval_ms: u64,
    /// A password-reset token is good for this long.
    pub password_reset_ttl_secs: u64,
    /// An email-verification token is good for this long.
    pub verification_ttl_secs: u64,
    /// Reset requests allowed per email and per client address in `reset_window_secs`.
    pub reset_account_max: u32,
    pub reset_client_max: u32,
    pub reset_window_secs: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        let m = strata_core::mail::MailSettings::default();
        let l = strata_core::service::LifecycleSettings::default();
        MailConfig {
            smtp_url: String::new(),
            from: "Strata <no-reply@localhost>".into(),
            base_url: m.base_url,
            templates_dir: String::new(),
            tls_ca_file: String::new(),
            max_attempts: m.max_attempts,
            first_backoff_ms: m.first_backoff.as_millis() as u64,
            timeout_ms: m.timeout.as_millis() as u64,
            poll_interval_ms: m.poll_interval.as_millis() as u64,
            password_reset_ttl_secs: l.reset_ttl.as_secs(),
            verification_ttl_secs: l.verification_ttl.as_secs(),
            reset_account_max: l.reset_throttle.per_account.max_failures,
            reset_client_max: l.reset_throttle.per_client.max_failures,
            reset_window_secs: l.reset_throttle.per_account.window.as_secs(),
        }
    }
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("smtp_url", &strata_mail::redact(&self.smtp_url))
            .field("from", &self.from)
            .field("base_url", &self.base_url)
            .field("templates_dir", &self.templates_dir)
            .field("max_attempts", &self.max_attempts)
            .field("password_reset_ttl_secs", &self.password_reset_ttl_secs)
            .finish_non_exhaustive()
    }
}

/// The gateway role (see ARCHITECTURE.md, Gateway).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// `static://HOST:PORT[;weight=N],…` or `dns://NAME:PORT`. Required for `--role gateway`.
    pub upstreams: String,
    /// `round-robin`, `weighted`, `least-conn`, `p2c-ewma` or `hash`.
    pub algorithm: String,
    /// Between active `/readyz` checks of each upstream.
    pub check_interval_ms: u64,
    pub check_timeout_ms: u64,
    /// Consecutive passed checks to bring an upstream up, failed ones to take it down.
    pub rise: u32,
    pub fall: u32,
    /// Consecutive connect errors or 502/503/504 that eject an upstream.
    pub eject_after: u32,
    /// The first ejection's length; the n-th lasts n times as long (at most 5 minutes).
    pub base_ejection_ms: u64,
    /// At most this share of the upstreams is ejected at once.
    pub max_ejected_percent: u8,
    /// A (re)joining upstream's weight ramps up over this long.
    pub slow_start_ms: u64,
    /// Between two resolutions of a `dns://` or `dns+srv://` name or listings of a registry.
    pub discovery_interval_ms: u64,
    /// The DNS servers (`IP:PORT`) for `dns://` and `dns+srv://`; empty: the system's.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// One try, connect to response head.
    pub try_timeout_ms: u64,
    /// Every try of one request together.
    pub timeout_ms: u64,
    /// Retries allowed as a share of requests, on top of `retry_min_per_sec`.
    pub retry_budget_percent: u32,
    pub retry_min_per_sec: u32,
    /// Tries per request at most, the first included.
    pub max_tries: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            upstreams: String::new(),
            algorithm: "weighted".into(),
            check_interval_ms: 1000,
            check_timeout_ms: 800,
            rise: 2,
            fall: 2,
            eject_after: 5,
            base_ejection_ms: 10_000,
            max_ejected_percent: 50,
            slow_start_ms: 10_000,
            discovery_interval_ms: 2000,
            dns_servers: Vec::new(),
            try_timeout_ms: 10_000,
            timeout_ms: 30_000,
            retry_budget_percent: 20,
            retry_min_per_sec: 10,
            max_tries: 3,
        }
    }
}

/// Webhook deliveries (see ARCHITECTURE.md, Webhooks).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Networks in private, loopback, link-local and other special ranges that deliveries
    /// may reach anyway (e.g. `10.20.0.0/16` for an internal receiver). Empty: none.
    pub allowed_networks: Vec<Cidr>,
    /// Seconds between attempts; one more attempt than entries.
    pub retry_schedule_secs: Vec<u64>,
    /// Per request, connect to last byte.
    pub timeout_ms: u64,
    /// Deliveries in flight at once, all endpoints together.
    pub concurrency: usize,
    /// An endpoint whose deliveries have only failed for this long is disabled.
    pub disable_after_secs: u64,
    /// How long the previous secret keeps signing after a rotation.
    pub rotation_overlap_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let d = strata_core::webhooks::WebhookSettings::default();
        WebhooksConfig {
            allowed_networks: Vec::new(),
            retry_schedule_secs: d.schedule.iter().map(|s| s.as_secs()).collect(),
            timeout_ms: d.timeout.as_millis() as u64,
            concurrency: d.concurrency,
            disable_after_secs: d.disable_after.as_secs(),
            rotation_overlap_secs: d.rotation_overlap.as_secs(),
        }
    }
}

/// What a process runs (`strata serve --role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The HTTP API and the worker.
    All,
    /// The HTTP API only; a worker elsewhere publishes its events.
    Api,
    /// The outbox relay and the event listeners; serves health and metrics only.
    Worker,
    /// A proxy in front of api instances (`gateway.upstreams`); needs no database.
    Gateway,
}

impl Role {
    pub fn runs_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
    pub fn runs_worker(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => Ok(Role::All),
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            "gateway" => Ok(Role::Gateway),
            other => Err(format!("unknown role {other:?} (expected all, api, worker or gateway)")),
        }
    }
}

/// The outbox relay, the event bus and the listeners (see ARCHITECTURE.md, Events).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `memory://` (in-process), `nats://HOST:PORT`, `amqp://USER:PASS@HOST:PORT/VHOST`,
    /// `mqtt://HOST:PORT`, `redis-stream://HOST:PORT` or `kafka://HOST:PORT[,…]`.
    pub url: String,
    /// The CloudEvents `source` of every event.
    pub source: String,
    /// Prefix of streams, topics, exchanges and keys on the broker.
    pub namespace: String,
    /// Outbox rows per publish.
    pub batch: u32,
    /// How often the relay looks for rows written by other instances.
    pub poll_interval_ms: u64,
    /// How long a delivered event may go unacknowledged before it is redelivered.
    pub ack_wait_ms: u64,
    /// How long published outbox rows are kept.
    pub retention_secs: u64,
    /// How long audit log entries are kept.
    pub audit_retention_secs: u64,
}

impl std::fmt::Debug for EventsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsConfig")
            .field("url", &strata_events::redact_url(&self.url))
            .field("source", &self.source)
            .field("namespace", &self.namespace)
            .field("batch", &self.batch)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("ack_wait_ms", &self.ack_wait_ms)
            .field("retention_secs", &self.retention_secs)
            .field("audit_retention_secs", &self.audit_retention_secs)
            .finish()
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        let relay = strata_core::relay::RelaySettings::default();
        let bus = strata_core::events::BusOptions::default();
        EventsConfig {
            url: "memory://".into(),
            source: relay.source,
            namespace: bus.namespace,
            batch: relay.batch,
            poll_interval_ms: relay.poll_interval.as_millis() as u64,
            ack_wait_ms: bus.ack_wait.as_millis() as u64,
            retention_secs: relay.retention.as_secs(),
            audit_retention_secs: 90 * 24 * 3600,
        }
    }
}

#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH`, `postgres://…` or `mysql://…`.
    pub url: String,
    pub max_connections: usize,
    pub query_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Read replicas of `url` (PostgreSQL streaming replicas, MariaDB/MySQL replicas),
    /// comma-separated; a replica's own multi-host URL keeps its commas. Hot reads go to
    /// them, read-your-writes preserved (strata-store's `replicated` module).
    pub replicas: String,
    /// A replica further behind the primary than this leaves the rotation until it catches up.
    pub max_replica_lag_ms: u64,
    /// Physical databases users are sharded over, comma-separated (any engine, SQLite files
    /// too), each optionally followed by its read replicas, `PRIMARY|REPLICA|…`; `url` is
    /// then the catalog: the shard map and the global email claims (strata-store's
    /// `sharded` module).
    pub shards: String,
    /// Logical shards of a new shard map (1..=256); fixed once the catalog has a map.
    pub logical_shards: u16,
}

impl DatabaseConfig {
    /// `replicas` split into URLs: at each comma that starts a new `scheme://`.
    pub fn replica_urls(&self) -> Vec<String> {
        split_urls(&self.replicas)
    }

    /// `shards` split into URLs, as `replica_urls`.
    pub fn shard_urls(&self) -> Vec<String> {
        split_urls(&self.shards)
    }
}

/// Splits a comma-separated list of URLs, keeping the commas inside a multi-host URL
/// (`postgres://h1:5432,h2:5432/db`): a new URL starts only where `scheme://` follows.
pub fn split_urls(list: &str) -> Vec<String> {
    let starts_url = |rest: &str| {
        rest.split_once("://").is_some_and(|(scheme, _)| {
            !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        })
    };
    let mut urls: Vec<String> = Vec::new();
    for piece in list.split(',').filter(|p| !p.trim().is_empty()) {
        match urls.last_mut() {
            Some(last) if !starts_url(piece.trim_start()) => {
                last.push(',');
                last.push_str(piece.trim());
            }
            _ => urls.push(piece.trim().to_owned()),
        }
    }
    urls
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Static bearer secret with admin rights. Unset: only users with role admin are admins.
    pub admin_token: Option<Secret>,
    pub session_ttl_secs: u64,
    /// How long an `Idempotency-Key` is honoured; older records are purged hourly.
    pub idempotency_ttl_secs: u64,
    /// Refuse logins (403 `email_not_verified`) until the account's email is verified.
    pub require_verified_email: bool,
    /// The session cookie of browser logins (`"cookie": true`); its CSRF cookie is
    /// `<cookie_name>_csrf`.
    pub cookie_name: String,
    /// `Domain` of both cookies; empty: the API's host only.
    pub cookie_domain: String,
    /// `Strict`, `Lax` or `None` (which browsers accept only with `cookie_secure`).
    pub cookie_same_site: String,
    /// Off only for plain-HTTP local development: start-up warns.
    pub cookie_secure: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes computed at once; 0 = number of cores.
    pub hash_concurrency: usize,
    /// Requests allowed to wait for a hashing slot; 0 = 64 × concurrency.
    pub hash_queue: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    pub account_max_failures: u32,
    pub account_window_secs: u64,
    pub client_max_failures: u32,
    pub client_window_secs: u64,
    /// Registration attempts per client address per window.
    pub registration_max: u32,
    pub registration_window_secs: u64,
    /// Where the counters live: empty for this instance's memory, or `redis://…` so that
    /// every instance shares one budget.
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub body_limit_bytes: usize,
    /// After a shutdown signal, readiness turns false and the server keeps serving this
    /// long so load balancers can notice before the listener closes.
    pub drain_delay_ms: u64,
    /// Upper bound on waiting for in-flight requests after the listener closes.
    pub shutdown_grace_secs: u64,
    /// A request head must arrive within this, from accept or from its first byte.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive within this once its head has (else `408`).
    pub body_read_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this.
    pub keep_alive_timeout_ms: u64,
    /// Open connections beyond which new ones get `503` and are closed.
    pub max_connections: usize,
    /// Proxies (CIDRs) whose `Forwarded` / `X-Forwarded-For` is believed; the client is
    /// the rightmost hop outside this list. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Clients (CIDRs) that get the full `Server-Timing` split on every response; others
    /// get only `total` until they authenticate.
    pub timing_detail_from: Vec<Cidr>,
    /// Origins (`scheme://host[:port]`, exact) whose pages may call the API with
    /// credentials. Empty: no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight's answer.
    pub cors_max_age_secs: u64,
}

/// The cache in front of session checks and user reads (see ARCHITECTURE.md, Caching).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `memory://[?entries=N&mb=N]`, `redis://HOST:PORT[?replica=HOST:PORT…]`,
    /// `memcache://HOST:PORT[,HOST:PORT…]` or `none://`.
    pub url: String,
    /// In-process tier in front of Redis/Memcached: `off`, or `entries=N,mb=N,ttl_ms=N`.
    pub l1: String,
    pub ttl_secs: u64,
    pub negative_ttl_secs: u64,
    /// TTLs are shortened by a random 0…jitter_percent %.
    pub jitter_percent: u8,
    /// Deadline of one call to a cache server.
    pub timeout_ms: u64,
    /// Consecutive failures that open a server's circuit breaker …
    pub breaker_failures: u32,
    /// … and how long it stays open before one probe call.
    pub breaker_open_ms: u64,
    /// Key of the HMAC that authenticates every cached value; the same on every instance
    /// sharing a Redis/Memcached (required there). Unset with an in-process cache: a
    /// random key per process.
    pub secret: Option<Secret>,
    /// Earlier secrets still accepted when reading (rotation); values are sealed with
    /// `secret` only.
    pub previous_secrets: Vec<Secret>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `strata=debug,info`.
    pub level: String,
}

/// Request traces exported over OTLP/HTTP (see ARCHITECTURE.md, Observability). Off while
/// `otlp_endpoint` is empty, and then free.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (spans go to
    /// `/v1/traces` under it); empty: no tracing.
    pub otlp_endpoint: String,
    /// Share of requests without a caller's trace context that are recorded, 0.0–1.0. A
    /// caller's `traceparent` decides for its own requests (parent-based sampling).
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig { otlp_endpoint: String::new(), sample_ratio: 1.0, service_name: "strata".into() }
    }
}

// Debug by hand for the two sections that hold URLs, which may carry passwords: printed
// through the same redaction as `config show`.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &strata_store::redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("query_timeout_ms", &self.query_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &strata_store::redact_url(&self.url))
            .field("l1", &self.l1)
            .field("ttl_secs", &self.ttl_secs)
            .field("negative_ttl_secs", &self.negative_ttl_secs)
            .field("jitter_percent", &self.jitter_percent)
            .field("timeout_ms", &self.timeout_ms)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open_ms", &self.breaker_open_ms)
            .field("secret", &self.secret)
            .field("previous_secrets", &self.previous_secrets)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            password: PasswordConfig::default(),
            throttle: ThrottleConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            tracing: TracingConfig::default(),
            cache: CacheConfig::default(),
            role: Role::All,
            events: EventsConfig::default(),
            webhooks: WebhooksConfig::default(),
            mail: MailConfig::default(),
            gateway: GatewayConfig::default(),
            register: String::new(),
            register_address: None,
            register_ttl_secs: 10,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        let defaults = strata_store::StoreOptions::new("sqlite://data/strata.db");
        DatabaseConfig {
            url: defaults.url,
            max_connections: defaults.max_connections,
            query_timeout_ms: defaults.query_timeout.as_millis() as u64,
            connect_timeout_ms: defaults.connect_timeout.as_millis() as u64,
            migrate_on_start: true,
            replicas: String::new(),
            max_replica_lag_ms: 1000,
            shards: String::new(),
            logical_shards: strata_core::shards::MAX_LOGICAL_SHARDS,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            admin_token: None,
            session_ttl_secs: 24 * 3600,
            idempotency_ttl_secs: 24 * 3600,
            require_verified_email: false,
            cookie_name: "strata_session".into(),
            cookie_domain: String::new(),
            cookie_same_site: "Lax".into(),
            cookie_secure: true,
        }
    }
}

impl Default for PasswordConfig {
    fn default() -> Self {
        let p = strata_core::password::HashParams::default();
        PasswordConfig {
            memory_kib: p.memory_kib,
            iterations: p.iterations,
            parallelism: p.parallelism,
            hash_concurrency: 0,
            hash_queue: 0,
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        let t = strata_core::throttle::ThrottleSettings::default();
        ThrottleConfig {
            account_max_failures: t.per_account.max_failures,
            account_window_secs: t.per_account.window.as_secs(),
            client_max_failures: t.per_client.max_failures,
            client_window_secs: t.per_client.window.as_secs(),
            registration_max: t.registrations_per_client.max_failures,
            registration_window_secs: t.registrations_per_client.window.as_secs(),
            url: String::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit_bytes: strata_api::DEFAULT_BODY_LIMIT,
            drain_delay_ms: 0,
            shutdown_grace_secs: 30,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 75_000,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            timing_detail_from: Vec::new(),
            cors_allowed_origins: Vec::new(),
            cors_max_age_secs: 600,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        let settings = strata_core::auth_cache::CacheSettings::default();
        let options = strata_cache::CacheOptions::default();
        CacheConfig {
            url: "memory://".into(),
            l1: "off".into(),
            ttl_secs: settings.ttl.as_secs(),
            negative_ttl_secs: settings.negative_ttl.as_secs(),
            jitter_percent: (settings.jitter * 100.0) as u8,
            timeout_ms: options.timeout.as_millis() as u64,
            breaker_failures: options.breaker.failures,
            breaker_open_ms: options.breaker.open_for.as_millis() as u64,
            secret: None,
            previous_secrets: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "pretty".into(), level: "info".into() }
    }
}

type Setter = fn(&mut Config, &str) -> Result<(), String>;

fn parse<T: std::str::FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| e.to_string())
}

/// Every environment variable Strata reads, with the setting it overrides. Documented in
/// the README's configuration table; a test keeps the two in step.
// Setters are `Ok(field = value)` so that the table stays one line per variable.
#[allow(clippy::unit_arg)]
pub const ENV_VARS: &[(&str, &str, Setter)] = &[
    ("STRATA_LISTEN", "listen", |c, v| Ok(c.listen = parse(v)?)),
    ("STRATA_DATABASE_URL", "database.url", |c, v| Ok(c.database.url = v.to_owned())),
    ("STRATA_DATABASE_MAX_CONNECTIONS", "database.max_connections", |c, v| Ok(c.database.max_connections = parse(v)?)),
    ("STRATA_DATABASE_QUERY_TIMEOUT_MS", "database.query_timeout_ms", |c, v| {
        Ok(c.database.query_timeout_ms = parse(v)?)
    }),
    ("STRATA_DATABASE_CONNECT_TIMEOUT_MS", "database.connect_timeout_ms", |c, v| {
        Ok(c.database.connect_timeout_ms = parse(v)?)
    }),
    ("STRATA_DATABASE_MIGRATE_ON_START", "database.migrate_on_start", |c, v| {
        Ok(c.database.migrate_on_start = parse(v)?)
    }),
    ("STRATA_DATABASE_REPLICAS", "database.replicas", |c, v| Ok(c.database.replicas = v.to_owned())),
    ("STRATA_DATABASE_MAX_REPLICA_LAG_MS", "database.max_replica_lag_ms", |c, v| {
        Ok(c.database.max_replica_lag_ms = parse(v)?)
    }),
    ("STRATA_DATABASE_SHARDS", "database.shards", |c, v| Ok(c.database.shards = v.to_owned())),
    ("STRATA_DATABASE_LOGICAL_SHARDS", "database.logical_shards", |c, v| Ok(c.database.logical_shards = parse(v)?)),
    ("STRATA_ADMIN_TOKEN", "auth.admin_token", |c, v| {
        Ok(c.auth.admin_token = Some(v).filter(|t| !t.is_empty()).map(Secret::new))
    }),
    ("STRATA_SESSION_TTL_SECS", "auth.session_ttl_secs", |c, v| Ok(c.auth.session_ttl_secs = parse(v)?)),
    ("STRATA_IDEMPOTENCY_TTL_SECS", "auth.idempotency_ttl_secs", |c, v| Ok(c.auth.idempotency_ttl_secs = parse(v)?)),
    ("STRATA_PASSWORD_MEMORY_KIB", "password.memory_kib", |c, v| Ok(c.password.memory_kib = parse(v)?)),
    ("STRATA_PASSWORD_ITERATIONS", "password.iterations", |c, v| Ok(c.password.iterations = parse(v)?)),
    ("STRATA_PASSWORD_PARALLELISM", "password.parallelism", |c, v| Ok(c.password.parallelism = parse(v)?)),
    ("STRATA_PASSWORD_HASH_CONCURRENCY", "password.hash_concurrency", |c, v| {
        Ok(c.password.hash_concurrency = parse(v)?)
    }),
    ("STRATA_PASSWORD_HASH_QUEUE", "password.hash_queue", |c, v| Ok(c.password.hash_queue = parse(v)?)),
    ("STRATA_THROTTLE_ACCOUNT_MAX_FAILURES", "throttle.account_max_failures", |c, v| {
        Ok(c.throttle.account_max_failures = parse(v)?)
    }),
    ("STRATA_THROTTLE_ACCOUNT_WINDOW_SECS", "throttle.account_window_secs", |c, v| {
        Ok(c.throttle.account_window_secs = parse(v)?)
    }),
    ("STRATA_THROTTLE_CLIENT_MAX_FAILURES", "throttle.client_max_failures", |c, v| {
        Ok(c.throttle.client_max_failures = parse(v)?)
    }),
    ("STRATA_THROTTLE_CLIENT_WINDOW_SECS", "throttle.client_window_secs", |c, v| {
        Ok(c.throttle.client_window_secs = parse(v)?)
    }),
    ("STRATA_THROTTLE_URL", "throttle.url", |c, v| Ok(c.throttle.url = v.to_owned())),
    ("STRATA_THROTTLE_REGISTRATION_MAX", "throttle.registration_max", |c, v| {
        Ok(c.throttle.registration_max = parse(v)?)
    }),
    ("STRATA_THROTTLE_REGISTRATION_WINDOW_SECS", "throttle.registration_window_secs", |c, v| {
        Ok(c.throttle.registration_window_secs = parse(v)?)
    }),
    ("STRATA_HTTP_BODY_LIMIT_BYTES", "http.body_limit_bytes", |c, v| Ok(c.http.body_limit_bytes = parse(v)?)),
    ("STRATA_HTTP_DRAIN_DELAY_MS", "http.drain_delay_ms", |c, v| Ok(c.http.drain_delay_ms = parse(v)?)),
    ("STRATA_HTTP_SHUTDOWN_GRACE_SECS", "http.shutdown_grace_secs", |c, v| Ok(c.http.shutdown_grace_secs = parse(v)?)),
    ("STRATA_HTTP_HEADER_READ_TIMEOUT_MS", "http.header_read_timeout_ms", |c, v| {
        Ok(c.http.header_read_timeout_ms = parse(v)?)
    }),
    ("STRATA_HTTP_BODY_READ_TIMEOUT_MS", "http.body_read_timeout_ms", |c, v| {
        Ok(c.http.body_read_timeout_ms = parse(v)?)
    }),
    ("STRATA_HTTP_KEEP_ALIVE_TIMEOUT_MS", "http.keep_alive_timeout_ms", |c, v| {
        Ok(c.http.keep_alive_timeout_ms = parse(v)?)
    }),
    ("STRATA_HTTP_MAX_CONNECTIONS", "http.max_connections", |c, v| Ok(c.http.max_connections = parse(v)?)),
    ("STRATA_HTTP_TRUSTED_PROXIES", "http.trusted_proxies", |c, v| Ok(c.http.trusted_proxies = parse_list(v)?)),
    (
        "STRATA_HTTP_TIMING_DETAIL_FROM",
        "http.timing_detail_from",
        |c, v| Ok(c.http.timing_detail_from = parse_list(v)?),
    ),
    ("STRATA_HTTP_CORS_ALLOWED_ORIGINS", "http.cors_allowed_origins", |c, v| {
        Ok(c.http.cors_allowed_origins =
            v.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect())
    }),
    ("STRATA_HTTP_CORS_MAX_AGE_SECS", "http.cors_max_age_secs", |c, v| Ok(c.http.cors_max_age_secs = parse(v)?)),
    ("STRATA_COOKIE_NAME", "auth.cookie_name", |c, v| Ok(c.auth.cookie_name = v.trim().to_owned())),
    ("STRATA_COOKIE_DOMAIN", "auth.cookie_domain", |c, v| Ok(c.auth.cookie_domain = v.trim().to_owned())),
    ("STRATA_COOKIE_SAME_SITE", "auth.cookie_same_site", |c, v| Ok(c.auth.cookie_same_site = v.trim().to_owned())),
    ("STRATA_COOKIE_SECURE", "auth.cookie_secure", |c, v| Ok(c.auth.cookie_secure = parse(v)?)),
    ("STRATA_CACHE_URL", "cache.url", |c, v| Ok(c.cache.url = v.to_owned())),
    ("STRATA_CACHE_L1", "cache.l1", |c, v| Ok(c.cache.l1 = v.to_owned())),
    ("STRATA_CACHE_TTL_SECS", "cache.ttl_secs", |c, v| Ok(c.cache.ttl_secs = parse(v)?)),
    ("STRATA_CACHE_NEGATIVE_TTL_SECS", "cache.negative_ttl_secs", |c, v| Ok(c.cache.negative_ttl_secs = parse(v)?)),
    ("STRATA_CACHE_JITTER_PERCENT", "cache.jitter_percent", |c, v| Ok(c.cache.jitter_percent = parse(v)?)),
    ("STRATA_CACHE_TIMEOUT_MS", "cache.timeout_ms", |c, v| Ok(c.cache.timeout_ms = parse(v)?)),
    ("STRATA_CACHE_BREAKER_FAILURES", "cache.breaker_failures", |c, v| Ok(c.cache.breaker_failures = parse(v)?)),
    ("STRATA_CACHE_BREAKER_OPEN_MS", "cache.breaker_open_ms", |c, v| Ok(c.cache.breaker_open_ms = parse(v)?)),
    ("STRATA_CACHE_SECRET", "cache.secret", |c, v| {
        Ok(c.cache.secret = Some(v).filter(|s| !s.is_empty()).map(Secret::new))
    }),
    ("STRATA_CACHE_PREVIOUS_SECRETS", "cache.previous_secrets", |c, v| {
        Ok(c.cache.previous_secrets = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect())
    }),
    ("STRATA_LOG_FORMAT", "log.format", |c, v| Ok(c.log.format = v.to_owned())),
    ("STRATA_LOG_LEVEL", "log.level", |c, v| Ok(c.log.level = v.to_owned())),
    ("STRATA_OTLP_ENDPOINT", "tracing.otlp_endpoint", |c, v| Ok(c.tracing.otlp_endpoint = v.trim().to_owned())),
    ("STRATA_TRACE_SAMPLE_RATIO", "tracing.sample_ratio", |c, v| Ok(c.tracing.sample_ratio = parse(v)?)),
    ("STRATA_TRACE_SERVICE_NAME", "tracing.service_name", |c, v| Ok(c.tracing.service_name = v.to_owned())),
    ("STRATA_ROLE", "role", |c, v| Ok(c.role = parse(v)?)),
    ("STRATA_EVENTS_URL", "events.url", |c, v| Ok(c.events.url = v.to_owned())),
    ("STRATA_EVENTS_SOURCE", "events.source", |c, v| Ok(c.events.source = v.to_owned())),
    ("STRATA_EVENTS_NAMESPACE", "events.namespace", |c, v| Ok(c.events.namespace = v.to_owned())),
    ("STRATA_EVENTS_BATCH", "events.batch", |c, v| Ok(c.events.batch = parse(v)?)),
    ("STRATA_EVENTS_POLL_INTERVAL_MS", "events.poll_interval_ms", |c, v| Ok(c.events.poll_interval_ms = parse(v)?)),
    ("STRATA_EVENTS_ACK_WAIT_MS", "events.ack_wait_ms", |c, v| Ok(c.events.ack_wait_ms = parse(v)?)),
    ("STRATA_EVENTS_RETENTION_SECS", "events.retention_secs", |c, v| Ok(c.events.retention_secs = parse(v)?)),
    ("STRATA_EVENTS_AUDIT_RETENTION_SECS", "events.audit_retention_secs", |c, v| {
        Ok(c.events.audit_retention_secs = parse(v)?)
    }),
    ("STRATA_GATEWAY_UPSTREAMS", "gateway.upstreams", |c, v| Ok(c.gateway.upstreams = v.to_owned())),
    ("STRATA_GATEWAY_ALGORITHM", "gateway.algorithm", |c, v| Ok(c.gateway.algorithm = v.trim().to_owned())),
    ("STRATA_GATEWAY_CHECK_INTERVAL_MS", "gateway.check_interval_ms", |c, v| {
        Ok(c.gateway.check_interval_ms = parse(v)?)
    }),
    ("STRATA_GATEWAY_RISE", "gateway.rise", |c, v| Ok(c.gateway.rise = parse(v)?)),
    ("STRATA_GATEWAY_FALL", "gateway.fall", |c, v| Ok(c.gateway.fall = parse(v)?)),
    ("STRATA_GATEWAY_EJECT_AFTER", "gateway.eject_after", |c, v| Ok(c.gateway.eject_after = parse(v)?)),
    ("STRATA_GATEWAY_SLOW_START_MS", "gateway.slow_start_ms", |c, v| Ok(c.gateway.slow_start_ms = parse(v)?)),
    ("STRATA_GATEWAY_TRY_TIMEOUT_MS", "gateway.try_timeout_ms", |c, v| Ok(c.gateway.try_timeout_ms = parse(v)?)),
    ("STRATA_GATEWAY_TIMEOUT_MS", "gateway.timeout_ms", |c, v| Ok(c.gateway.timeout_ms = parse(v)?)),
    ("STRATA_GATEWAY_RETRY_BUDGET_PERCENT", "gateway.retry_budget_percent", |c, v| {
        Ok(c.gateway.retry_budget_percent = parse(v)?)
    }),
    ("STRATA_GATEWAY_DISCOVERY_INTERVAL_MS", "gateway.discovery_interval_ms", |c, v| {
        Ok(c.gateway.discovery_interval_ms = parse(v)?)
    }),
    ("STRATA_GATEWAY_DNS_SERVERS", "gateway.dns_servers", |c, v| {
        Ok(c.gateway.dns_servers =
            v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse).collect::<Result<_, _>>()?)
    }),
    ("STRATA_GATEWAY_MAX_TRIES", "gateway.max_tries", |c, v| Ok(c.gateway.max_tries = parse(v)?)),
    ("STRATA_REGISTER", "register", |c, v| Ok(c.register = v.trim().to_owned())),
    ("STRATA_REGISTER_ADDRESS", "register_address", |c, v| {
        Ok(c.register_address = if v.trim().is_empty() { None } else { Some(parse(v)?) })
    }),
    ("STRATA_REGISTER_TTL_SECS", "register_ttl_secs", |c, v| Ok(c.register_ttl_secs = parse(v)?)),
    ("STRATA_WEBHOOKS_ALLOWED_NETWORKS", "webhooks.allowed_networks", |c, v| {
        Ok(c.webhooks.allowed_networks = parse_list(v)?)
    }),
    ("STRATA_WEBHOOKS_RETRY_SCHEDULE_SECS", "webhooks.retry_schedule_secs", |c, v| {
        Ok(c.webhooks.retry_schedule_secs =
            v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse).collect::<Result<_, _>>()?)
    }),
    ("STRATA_WEBHOOKS_TIMEOUT_MS", "webhooks.timeout_ms", |c, v| Ok(c.webhooks.timeout_ms = parse(v)?)),
    ("STRATA_WEBHOOKS_CONCURRENCY", "webhooks.concurrency", |c, v| Ok(c.webhooks.concurrency = parse(v)?)),
    ("STRATA_WEBHOOKS_DISABLE_AFTER_SECS", "webhooks.disable_after_secs", |c, v| {
        Ok(c.webhooks.disable_after_secs = parse(v)?)
    }),
    ("STRATA_WEBHOOKS_ROTATION_OVERLAP_SECS", "webhooks.rotation_overlap_secs", |c, v| {
        Ok(c.webhooks.rotation_overlap_secs = parse(v)?)
    }),
    ("STRATA_SMTP_URL", "mail.smtp_url", |c, v| Ok(c.mail.smtp_url = v.trim().to_owned())),
    ("STRATA_MAIL_FROM", "mail.from", |c, v| Ok(c.mail.from = v.trim().to_owned())),
    ("STRATA_MAIL_BASE_URL", "mail.base_url", |c, v| Ok(c.mail.base_url = v.trim().to_owned())),
    ("STRATA_MAIL_TEMPLATES_DIR", "mail.templates_dir", |c, v| Ok(c.mail.templates_dir = v.trim().to_owned())),
    ("STRATA_MAIL_TLS_CA_FILE", "mail.tls_ca_file", |c, v| Ok(c.mail.tls_ca_file = v.trim().to_owned())),
    ("STRATA_MAIL_MAX_ATTEMPTS", "mail.max_attempts", |c, v| Ok(c.mail.max_attempts = parse(v)?)),
    ("STRATA_MAIL_FIRST_BACKOFF_MS", "mail.first_backoff_ms", |c, v| Ok(c.mail.first_backoff_ms = parse(v)?)),
    ("STRATA_MAIL_TIMEOUT_MS", "mail.timeout_ms", |c, v| Ok(c.mail.timeout_ms = parse(v)?)),
    ("STRATA_MAIL_POLL_INTERVAL_MS", "mail.poll_interval_ms", |c, v| Ok(c.mail.poll_interval_ms = parse(v)?)),
    ("STRATA_PASSWORD_RESET_TTL_SECS", "mail.password_reset_ttl_secs", |c, v| {
        Ok(c.mail.password_reset_ttl_secs = parse(v)?)
    }),
    ("STRATA_VERIFICATION_TTL_SECS", "mail.verification_ttl_secs", |c, v| Ok(c.mail.verification_ttl_secs = parse(v)?)),
    ("STRATA_REQUIRE_VERIFIED_EMAIL", "auth.require_verified_email", |c, v| {
        Ok(c.auth.require_verified_email = parse(v)?)
    }),
    ("STRATA_MAIL_RESET_ACCOUNT_MAX", "mail.reset_account_max", |c, v| Ok(c.mail.reset_account_max = parse(v)?)),
    ("STRATA_MAIL_RESET_CLIENT_MAX", "mail.reset_client_max", |c, v| Ok(c.mail.reset_client_max = parse(v)?)),
    ("STRATA_MAIL_RESET_WINDOW_SECS", "mail.reset_window_secs", |c, v| Ok(c.mail.reset_window_secs = parse(v)?)),
];

impl Config {
    /// Defaults ← TOML text (if any) ← environment. Errors name the file key or variable.
    pub fn load(toml_text: Option<&str>, env: &HashMap<String, String>) -> Result<Config, String> {
        let mut config = match toml_text {
            Some(text) => toml::from_str(text).map_err(|e| format!("config file: {e}"))?,
            None => Config::default(),
        };
        for (var, key, set) in ENV_VARS {
            if let Some(value) = env.get(*var) {
                set(&mut config, value)
                    .map_err(|e| format!("{var} (overrides {key}): invalid value {value:?}: {e}"))?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return Err("tracing.sample_ratio (STRATA_TRACE_SAMPLE_RATIO) must be between 0.0 and 1.0".into());
        }
        if !self.tracing.otlp_endpoint.is_empty() {
            self.otlp_settings().traces_url()?;
            if self.tracing.service_name.trim().is_empty() {
                return Err("tracing.service_name (STRATA_TRACE_SERVICE_NAME) must not be empty".into());
            }
        }
        self.gateway
            .algorithm
            .parse::<strata_gateway::balance::Algorithm>()
            .map_err(|e| format!("gateway.algorithm: {e}"))?;
        if !self.gateway.upstreams.trim().is_empty() {
            self.gateway
                .upstreams
                .parse::<strata_gateway::discovery::Discovery>()
                .map_err(|e| format!("gateway.upstreams: {e}"))?;
        }
        if self.gateway.max_tries == 0
            || self.gateway.check_interval_ms == 0
            || self.gateway.try_timeout_ms == 0
            || self.gateway.timeout_ms == 0
        {
            return Err("gateway.max_tries, check_interval_ms, try_timeout_ms and timeout_ms must be positive".into());
        }
        if !self.register.is_empty() {
            self.register.parse::<strata_gateway::registry::Registry>().map_err(|e| format!("register: {e}"))?;
            if self.register_ttl_secs == 0 {
                return Err("register_ttl_secs must be positive".into());
            }
        }
        if self.gateway.max_ejected_percent > 100 || self.gateway.retry_budget_percent > 1000 {
            return Err("gateway.max_ejected_percent must be 0..=100 and gateway.retry_budget_percent 0..=1000".into());
        }
        let engine = strata_store::Backend::from_url(&self.database.url).map_err(|e| format!("database.url: {e}"))?;
        for replica in self.database.replica_urls() {
            let redacted = strata_store::redact_url(&replica);
            match strata_store::Backend::from_url(&replica) {
                Ok(b) if b == engine && b != strata_store::Backend::Sqlite => {}
                _ => {
                    return Err(format!(
                        "database.replicas: {redacted} is not a replica URL of the primary's engine \
                         (PostgreSQL or MySQL/MariaDB; SQLite has no replicas)"
                    ));
                }
            }
        }
        if self.database.max_replica_lag_ms == 0 {
            return Err("database.max_replica_lag_ms must be positive".into());
        }
        let shards = self.database.shard_urls();
        for shard in &shards {
            let (primary, replicas) = strata_store::split_shard(shard);
            let engine = strata_store::Backend::from_url(&primary)
                .map_err(|e| format!("database.shards: {}: {e}", strata_store::redact_url(&primary)))?;
            for replica in replicas {
                if strata_store::Backend::from_url(&replica).ok() != Some(engine)
                    || engine == strata_store::Backend::Sqlite
                {
                    return Err(format!(
                        "database.shards: {} is not a replica URL of its shard's engine (PostgreSQL or MySQL/MariaDB)",
                        strata_store::redact_url(&replica)
                    ));
                }
            }
        }
        if !shards.is_empty() && !self.database.replicas.is_empty() {
            return Err("database.replicas with database.shards: give each shard's replicas in its entry, \
                        PRIMARY|REPLICA|…"
                .into());
        }
        if !(1..=strata_core::shards::MAX_LOGICAL_SHARDS).contains(&self.database.logical_shards) {
            return Err(format!(
                "database.logical_shards must be 1..={}, not {}",
                strata_core::shards::MAX_LOGICAL_SHARDS,
                self.database.logical_shards
            ));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return Err(format!("log.format must be \"pretty\" or \"json\", not {:?}", self.log.format));
        }
        if self.auth.admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err("auth.admin_token (STRATA_ADMIN_TOKEN) must be at least 16 characters".into());
        }
        if self.auth.session_ttl_secs == 0 || self.auth.idempotency_ttl_secs == 0 {
            return Err("auth.session_ttl_secs and auth.idempotency_ttl_secs must be positive".into());
        }
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be positive".into());
        }
        if self.http.body_limit_bytes < 1024 {
            return Err("http.body_limit_bytes must be at least 1024".into());
        }
        let h = &self.http;
        if h.header_read_timeout_ms == 0 || h.body_read_timeout_ms == 0 || h.keep_alive_timeout_ms == 0 {
            return Err(
                "http.header_read_timeout_ms, body_read_timeout_ms and keep_alive_timeout_ms must be positive".into()
            );
        }
        if h.max_connections == 0 {
            return Err("http.max_connections must be positive".into());
        }
        self.browser_settings()?;
        let target = strata_cache::Target::parse(&self.cache.url).map_err(|e| format!("cache.url: {e}"))?;
        let shared = matches!(target, strata_cache::Target::Redis { .. } | strata_cache::Target::Memcache { .. });
        if shared && self.cache.secret.is_none() {
            return Err("cache.secret (STRATA_CACHE_SECRET) must be set when cache.url is a Redis or Memcached \
                        server: instances authenticate each other's cached values with it, so that whoever can \
                        write to the cache cannot mint sessions"
                .into());
        }
        if self.cache.secret.iter().chain(&self.cache.previous_secrets).any(|s| s.expose().len() < 16) {
            return Err("cache.secret and cache.previous_secrets must be at least 16 characters each".into());
        }
        strata_cache::L1Options::parse(&self.cache.l1).map_err(|e| format!("cache.l1: {e}"))?;
        if !self.throttle.url.trim().is_empty()
            && !matches!(strata_cache::Target::parse(&self.throttle.url), Ok(strata_cache::Target::Redis { .. }))
        {
            return Err("throttle.url must be a redis:// URL, or empty for per-instance counters".into());
        }
        let scheme = self.events.url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !matches!(scheme, "memory" | "nats" | "amqp" | "amqps" | "mqtt" | "mqtts" | "redis-stream" | "kafka") {
            return Err(format!(
                "events.url (STRATA_EVENTS_URL) must be memory://, nats://, amqp://, mqtt://, redis-stream:// or kafka://, not {:?}",
                strata_events::redact_url(&self.events.url)
            ));
        }
        let m = &self.mail;
        strata_mail::open(&m.smtp_url, &m.from, &self.mail_tls_roots()?).map_err(|e| format!("mail: {e}"))?;
        if !(m.base_url.starts_with("https://") || m.base_url.starts_with("http://")) {
            return Err(format!("mail.base_url must be an http(s):// URL, not {:?}", m.base_url));
        }
        if m.max_attempts == 0
            || m.timeout_ms == 0
            || m.poll_interval_ms == 0
            || m.password_reset_ttl_secs == 0
            || m.verification_ttl_secs == 0
            || m.reset_account_max == 0
            || m.reset_client_max == 0
            || m.reset_window_secs == 0
        {
            return Err("mail.max_attempts, timeout_ms, poll_interval_ms, password_reset_ttl_secs and the reset_* \
                        limits must be positive"
                .into());
        }
        let e = &self.events;
        if e.batch == 0 || e.batch > 10_000 {
            return Err("events.batch must be from 1 to 10000".into());
        }
        if e.poll_interval_ms == 0 || e.ack_wait_ms == 0 || e.retention_secs == 0 || e.audit_retention_secs == 0 {
            return Err(
                "events.poll_interval_ms, ack_wait_ms, retention_secs and audit_retention_secs must be positive".into(),
            );
        }
        if e.namespace.is_empty() || !e.namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err("events.namespace must be non-empty letters, digits, '-' or '_'".into());
        }
        let w = &self.webhooks;
        if w.retry_schedule_secs.len() > 20 {
            return Err("webhooks.retry_schedule_secs has at most 20 entries".into());
        }
        if w.timeout_ms == 0 || w.concurrency == 0 || w.disable_after_secs == 0 {
            return Err("webhooks.timeout_ms, concurrency and disable_after_secs must be positive".into());
        }
        if self.cache.ttl_secs == 0 || self.cache.negative_ttl_secs == 0 {
            return Err("cache.ttl_secs and cache.negative_ttl_secs must be positive".into());
        }
        if self.cache.jitter_percent > 100 {
            return Err("cache.jitter_percent must be at most 100".into());
        }
        if self.cache.timeout_ms == 0 || self.cache.breaker_failures == 0 || self.cache.breaker_open_ms == 0 {
            return Err("cache.timeout_ms, cache.breaker_failures and cache.breaker_open_ms must be positive".into());
        }
        strata_core::password::PasswordHasher::new(self.hasher_settings())
            .map(|_| ())
            .map_err(|e| format!("password: {e}"))
    }

    /// The relay's settings.
    pub fn relay_settings(&self) -> strata_core::relay::RelaySettings {
        use std::time::Duration;
        strata_core::relay::RelaySettings {
            source: self.events.source.clone(),
            batch: self.events.batch,
            poll_interval: Duration::from_millis(self.events.poll_interval_ms),
            retention: Duration::from_secs(self.events.retention_secs),
            ..strata_core::relay::RelaySettings::default()
        }
    }

    /// How webhook deliveries are made.
    pub fn webhook_settings(&self) -> strata_core::webhooks::WebhookSettings {
        use std::time::Duration;
        let w = &self.webhooks;
        strata_core::webhooks::WebhookSettings {
            schedule: w.retry_schedule_secs.iter().map(|s| Duration::from_secs(*s)).collect(),
            timeout: Duration::from_millis(w.timeout_ms),
            concurrency: w.concurrency,
            disable_after: Duration::from_secs(w.disable_after_secs),
            rotation_overlap: Duration::from_secs(w.rotation_overlap_secs),
            ..strata_core::webhooks::WebhookSettings::default()
        }
    }

    /// The trace exporter's settings; `traces_url()` on it checks the endpoint.
    pub fn otlp_settings(&self) -> strata_otlp::OtlpSettings {
        // Unique per process: replicas of one deployment share service.name.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        strata_otlp::OtlpSettings {
            endpoint: self.tracing.otlp_endpoint.clone(),
            service_name: self.tracing.service_name.clone(),
            service_version: env!("CARGO_PKG_VERSION").into(),
            instance_id: format!("{host}:{}", std::process::id()),
        }
    }

    pub fn webhook_policy(&self) -> strata_core::webhooks::NetworkPolicy {
        strata_core::webhooks::NetworkPolicy { allowed: self.webhooks.allowed_networks.clone() }
    }

    /// How the event bus adapters behave.
    pub fn bus_options(&self) -> strata_core::events::BusOptions {
        strata_core::events::BusOptions {
            namespace: self.events.namespace.clone(),
            ack_wait: std::time::Duration::from_millis(self.events.ack_wait_ms),
            ..strata_core::events::BusOptions::default()
        }
    }

    /// What the account service caches and for how long.
    pub fn cache_settings(&self) -> strata_core::auth_cache::CacheSettings {
        use std::time::Duration;
        strata_core::auth_cache::CacheSettings {
            ttl: Duration::from_secs(self.cache.ttl_secs),
            negative_ttl: Duration::from_secs(self.cache.negative_ttl_secs),
            jitter: f64::from(self.cache.jitter_percent) / 100.0,
        }
    }

    /// The server loop's connection limits.
    /// The gateway's options; errors when `gateway.upstreams` is missing or invalid.
    pub fn gateway_options(&self) -> Result<strata_gateway::GatewayOptions, String> {
        use std::time::Duration;
        let g = &self.gateway;
        if g.upstreams.trim().is_empty() {
            return Err("--role gateway needs gateway.upstreams (STRATA_GATEWAY_UPSTREAMS), e.g. static://127.0.0.1:8081,127.0.0.1:8082".into());
        }
        let mut o =
            strata_gateway::GatewayOptions::new(g.upstreams.trim()).map_err(|e| format!("gateway.upstreams: {e}"))?;
        o.algorithm = g.algorithm.parse().map_err(|e| format!("gateway.algorithm: {e}"))?;
        o.health.rise = g.rise.max(1);
        o.health.fall = g.fall.max(1);
        o.health.eject_after = g.eject_after.max(1);
        o.health.base_ejection = Duration::from_millis(g.base_ejection_ms);
        o.health.max_ejected_share = f64::from(g.max_ejected_percent) / 100.0;
        o.health.slow_start = Duration::from_millis(g.slow_start_ms);
        o.check_interval = Duration::from_millis(g.check_interval_ms);
        o.check_timeout = Duration::from_millis(g.check_timeout_ms);
        o.discovery_interval = Duration::from_millis(g.discovery_interval_ms.max(100));
        o.dns_servers = g.dns_servers.clone();
        o.registry_ttl = Duration::from_secs(self.register_ttl_secs.max(1));
        o.try_timeout = Duration::from_millis(g.try_timeout_ms);
        o.timeout = Duration::from_millis(g.timeout_ms);
        o.retry_budget = g.retry_budget_percent as f32 / 100.0;
        o.retry_min_per_sec = g.retry_min_per_sec;
        o.max_tries = g.max_tries as usize;
        o.body_limit = self.http.body_limit_bytes;
        o.body_read_timeout = Duration::from_millis(self.http.body_read_timeout_ms);
        o.admin_token = self.auth.admin_token.clone();
        o.trusted_proxies = self.http.trusted_proxies.clone().into();
        Ok(o)
    }

    /// Cookie sessions and CORS; errors name the key at fault.
    pub fn browser_settings(&self) -> Result<strata_api::browser::BrowserSettings, String> {
        use strata_api::browser::{SameSite, parse_origin};
        let a = &self.auth;
        let name_ok = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok(&a.cookie_name) {
            return Err(format!("auth.cookie_name must be letters, digits, '_' or '-', not {:?}", a.cookie_name));
        }
        if !a.cookie_domain.is_empty()
            && !a.cookie_domain.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            return Err(format!("auth.cookie_domain must be a host name, not {:?}", a.cookie_domain));
        }
        let same_site = SameSite::parse(&a.cookie_same_site).ok_or_else(|| {
            format!("auth.cookie_same_site must be Strict, Lax or None, not {:?}", a.cookie_same_site)
        })?;
        if same_site == SameSite::None && !a.cookie_secure {
            return Err("auth.cookie_same_site = None needs auth.cookie_secure = true: browsers refuse the cookie \
                        otherwise"
                .into());
        }
        let origins = self
            .http
            .cors_allowed_origins
            .iter()
            .map(|o| parse_origin(o).map_err(|e| format!("http.cors_allowed_origins: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(strata_api::browser::BrowserSettings {
            cookie_name: a.cookie_name.clone(),
            cookie_domain: Some(a.cookie_domain.clone()).filter(|d| !d.is_empty()),
            same_site,
            secure: a.cookie_secure,
            cors_allowed_origins: origins,
            cors_max_age: std::time::Duration::from_secs(self.http.cors_max_age_secs),
        })
    }

    pub fn server_limits(&self) -> strata_api::server::ServerLimits {
        use std::time::Duration;
        strata_api::server::ServerLimits {
            header_read: Duration::from_millis(self.http.header_read_timeout_ms),
            keep_alive_idle: Duration::from_millis(self.http.keep_alive_timeout_ms),
            max_connections: self.http.max_connections,
        }
    }

    /// What seals and checks cached values (see `cache.secret`).
    pub fn cache_signer(&self) -> strata_core::auth_cache::CacheSigner {
        match &self.cache.secret {
            Some(secret) => strata_core::auth_cache::CacheSigner::new(secret, &self.cache.previous_secrets),
            None => strata_core::auth_cache::CacheSigner::ephemeral(),
        }
    }

    /// How the cache adapters behave. Validated by `load`, so the L1 spec parses here.
    pub fn cache_options(&self) -> strata_cache::CacheOptions {
        use std::time::Duration;
        strata_cache::CacheOptions {
            timeout: Duration::from_millis(self.cache.timeout_ms),
            breaker: strata_cache::BreakerOptions {
                failures: self.cache.breaker_failures,
                open_for: Duration::from_millis(self.cache.breaker_open_ms),
            },
            // A tombstone must outlive the slowest read-then-fill it guards against: a
            // database read at its timeout plus a cache call.
            tombstone_ttl: Duration::from_millis(self.database.query_timeout_ms.saturating_mul(2).max(1000)),
            l1: strata_cache::L1Options::parse(&self.cache.l1).ok().flatten(),
            ..strata_cache::CacheOptions::default()
        }
    }

    pub fn store_options(&self) -> strata_store::StoreOptions {
        let mut o = strata_store::StoreOptions::new(self.database.url.clone());
        o.max_connections = self.database.max_connections;
        o.query_timeout = std::time::Duration::from_millis(self.database.query_timeout_ms);
        o.connect_timeout = std::time::Duration::from_millis(self.database.connect_timeout_ms);
        o.migrate = self.database.migrate_on_start;
        o
    }

    pub fn hasher_settings(&self) -> strata_core::password::HasherSettings {
        let defaults = strata_core::password::HasherSettings::default();
        let concurrency =
            if self.password.hash_concurrency == 0 { defaults.concurrency } else { self.password.hash_concurrency };
        strata_core::password::HasherSettings {
            params: strata_core::password::HashParams {
                memory_kib: self.password.memory_kib,
                iterations: self.password.iterations,
                parallelism: self.password.parallelism,
            },
            concurrency,
            max_queue: if self.password.hash_queue == 0 { 64 * concurrency } else { self.password.hash_queue },
        }
    }

    pub fn throttle_settings(&self) -> strata_core::throttle::ThrottleSettings {
        use std::time::Duration;
        use strata_core::throttle::{Limit, ThrottleSettings};
        ThrottleSettings {
            per_account: Limit {
                max_failures: self.throttle.account_max_failures,
                window: Duration::from_secs(self.throttle.account_window_secs),
            },
            per_client: Limit {
                max_failures: self.throttle.client_max_failures,
                window: Duration::from_secs(self.throttle.client_window_secs),
            },
            registrations_per_client: Limit {
                max_failures: self.throttle.registration_max,
                window: Duration::from_secs(self.throttle.registration_window_secs),
            },
            ..ThrottleSettings::default()
        }
    }

    /// The contents of `mail.tls_ca_file` (empty when unset).
    pub fn mail_tls_roots(&self) -> Result<Vec<u8>, String> {
        if self.mail.tls_ca_file.is_empty() {
            return Ok(Vec::new());
        }
        std::fs::read(&self.mail.tls_ca_file).map_err(|e| format!("mail.tls_ca_file {}: {e}", self.mail.tls_ca_file))
    }

    pub fn mail_settings(&self) -> strata_core::mail::MailSettings {
        use std::time::Duration;
        strata_core::mail::MailSettings {
            base_url: self.mail.base_url.clone(),
            max_attempts: self.mail.max_attempts,
            first_backoff: Duration::from_millis(self.mail.first_backoff_ms),
            timeout: Duration::from_millis(self.mail.timeout_ms),
            poll_interval: Duration::from_millis(self.mail.poll_interval_ms),
            ..strata_core::mail::MailSettings::default()
        }
    }

    pub fn lifecycle_settings(&self) -> strata_core::service::LifecycleSettings {
        use std::time::Duration;
        use strata_core::throttle::Limit;
        let window = Duration::from_secs(self.mail.reset_window_secs);
        let mut l = strata_core::service::LifecycleSettings {
            reset_ttl: Duration::from_secs(self.mail.password_reset_ttl_secs),
            verification_ttl: Duration::from_secs(self.mail.verification_ttl_secs),
            ..Default::default()
        };
        l.reset_throttle.per_account = Limit { max_failures: self.mail.reset_account_max, window };
        l.reset_throttle.per_client = Limit { max_failures: self.mail.reset_client_max, window };
        l
    }

    /// The effective configuration as TOML, secrets replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database.url = strata_store::redact_url(&shown.database.url);
        shown.database.replicas =
            shown.database.replica_urls().iter().map(|u| strata_store::redact_url(u)).collect::<Vec<_>>().join(",");
        shown.database.shards = shown
            .database
            .shard_urls()
            .iter()
            .map(|spec| spec.split('|').map(strata_store::redact_url).collect::<Vec<_>>().join("|"))
            .collect::<Vec<_>>()
            .join(",");
        shown.cache.url = strata_store::redact_url(&shown.cache.url);
        shown.throttle.url = strata_store::redact_url(&shown.throttle.url);
        shown.events.url = strata_events::redact_url(&shown.events.url);
        shown.mail.smtp_url = strata_mail::redact(&shown.mail.smtp_url);
        let redacted = || Secret::new("<redacted>");
        if shown.auth.admin_token.is_some() {
            shown.auth.admin_token = Some(redacted());
        }
        if shown.cache.secret.is_some() {
            shown.cache.secret = Some(redacted());
        }
        shown.cache.previous_secrets.iter_mut().for_each(|s| *s = redacted());
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn replica_lists_keep_multi_host_urls_whole() {
        assert_eq!(
            split_urls("postgres://a:1,b:2/db?target_session_attrs=any, postgres://c/db,"),
            ["postgres://a:1,b:2/db?target_session_attrs=any", "postgres://c/db"]
        );
        assert!(split_urls(" ").is_empty());
        let c = Config::load(
            None,
            &env(&[
                ("STRATA_DATABASE_URL", "postgres://p/db"),
                ("STRATA_DATABASE_REPLICAS", "postgres://r1/db,postgres://r2/db"),
            ]),
        )
        .unwrap();
        assert_eq!(c.database.replica_urls().len(), 2);
        let e = Config::load(None, &env(&[("STRATA_DATABASE_REPLICAS", "sqlite://x.db")])).unwrap_err();
        assert!(e.contains("database.replicas"), "{e}");
        let e = Config::load(
            None,
            &env(&[("STRATA_DATABASE_URL", "postgres://p/db"), ("STRATA_DATABASE_REPLICAS", "mysql://r/db")]),
        )
        .unwrap_err();
        assert!(e.contains("database.replicas"), "{e}");
    }

    #[test]
    fn shards_with_their_replicas() {
        let shards = "postgres://u:s3cret@a/db|postgres://u:s3cret@a2/db,mysql://b/db,sqlite:///tmp/c.db";
        let c =
            Config::load(None, &env(&[("STRATA_DATABASE_SHARDS", shards), ("STRATA_DATABASE_LOGICAL_SHARDS", "64")]))
                .unwrap();
        assert_eq!(c.database.shard_urls().len(), 3);
        assert_eq!(c.database.logical_shards, 64);
        let shown = c.redacted_toml();
        assert!(!shown.contains("s3cret") && shown.contains("a2/db"), "{shown}");
        let refused = [
            ("STRATA_DATABASE_SHARDS", "oracle://x/db"),
            ("STRATA_DATABASE_SHARDS", "postgres://a/db|mysql://a2/db"),
            ("STRATA_DATABASE_SHARDS", "sqlite:///a.db|sqlite:///b.db"),
            ("STRATA_DATABASE_LOGICAL_SHARDS", "0"),
            ("STRATA_DATABASE_LOGICAL_SHARDS", "257"),
        ];
        for (key, value) in refused {
            let e = Config::load(None, &env(&[(key, value)])).unwrap_err();
            assert!(e.contains("database."), "{key}={value}: {e}");
        }
        let e = Config::load(
            None,
            &env(&[
                ("STRATA_DATABASE_URL", "postgres://p/db"),
                ("STRATA_DATABASE_SHARDS", "postgres://a/db"),
                ("STRATA_DATABASE_REPLICAS", "postgres://r/db"),
            ]),
        )
        .unwrap_err();
        assert!(e.contains("PRIMARY|REPLICA"), "{e}");
    }

    #[test]
    fn defaults_need_nothing() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database.url, "sqlite://data/strata.db");
        assert_eq!(c.password.memory_kib, 19 * 1024);
    }

    #[test]
    fn env_overrides_file() {
        let file =
            "listen = \"0.0.0.0:9000\"\n[database]\nurl = \"postgres://u:pw@db/strata\"\n[log]\nformat = \"json\"\n";
        let c = Config::load(Some(file), &env(&[("STRATA_LISTEN", "127.0.0.1:7000")])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.database.url, "postgres://u:pw@db/strata");
        assert_eq!(c.log.format, "json");
    }

    #[test]
    fn errors_name_the_culprit() {
        let e = Config::load(None, &env(&[("STRATA_LISTEN", "nope")])).unwrap_err();
        assert!(e.contains("STRATA_LISTEN"), "{e}");
        let e = Config::load(Some("lisen = \"x\""), &HashMap::new()).unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::load(None, &env(&[("STRATA_DATABASE_URL", "redis://x")])).unwrap_err();
        assert!(e.contains("database.url"), "{e}");
        let e = Config::load(None, &env(&[("STRATA_ADMIN_TOKEN", "short")])).unwrap_err();
        assert!(e.contains("admin_token"), "{e}");
        let e = Config::load(None, &env(&[("STRATA_PASSWORD_MEMORY_KIB", "1")])).unwrap_err();
        assert!(e.contains("password"), "{e}");
        let e = Config::load(None, &env(&[("STRATA_CACHE_URL", "redis://nohost")])).unwrap_err();
        assert!(e.contains("cache.url"), "{e}");
        let e = Config::load(None, &env(&[("STRATA_CACHE_L1", "entries=lots")])).unwrap_err();
        assert!(e.contains("cache.l1"), "{e}");
        let e = Config::load(None, &env(&[("STRATA_CACHE_URL", "memcache://127.0.0.1:11211")])).unwrap_err();
        assert!(e.contains("STRATA_CACHE_SECRET"), "a shared cache needs a secret: {e}");
        let short = [("STRATA_CACHE_URL", "redis://127.0.0.1:6379"), ("STRATA_CACHE_SECRET", "short")];
        assert!(Config::load(None, &env(&short)).unwrap_err().contains("16 characters"));
    }

    #[test]
    fn browser_settings_are_parsed_and_checked() {
        let vars = [
            ("STRATA_HTTP_CORS_ALLOWED_ORIGINS", "http://127.0.0.1:5173, https://App.Example"),
            ("STRATA_COOKIE_SAME_SITE", "strict"),
            ("STRATA_COOKIE_SECURE", "false"),
            ("STRATA_COOKIE_DOMAIN", "app.example"),
        ];
        let b = Config::load(None, &env(&vars)).unwrap().browser_settings().unwrap();
        assert_eq!(b.cors_allowed_origins, ["http://127.0.0.1:5173", "https://app.example"]);
        assert_eq!(b.same_site, strata_api::browser::SameSite::Strict);
        assert!(!b.secure);
        assert_eq!(b.cookie_domain.as_deref(), Some("app.example"));
        let defaults = Config::default().browser_settings().unwrap();
        assert!(defaults.secure && defaults.cors_allowed_origins.is_empty());
        for (var, value, key) in [
            ("STRATA_HTTP_CORS_ALLOWED_ORIGINS", "*", "http.cors_allowed_origins"),
            ("STRATA_HTTP_CORS_ALLOWED_ORIGINS", "https://app.example/", "http.cors_allowed_origins"),
            ("STRATA_COOKIE_SAME_SITE", "sometimes", "auth.cookie_same_site"),
            ("STRATA_COOKIE_NAME", "a;b", "auth.cookie_name"),
            ("STRATA_COOKIE_DOMAIN", "x;y", "auth.cookie_domain"),
        ] {
            let e = Config::load(None, &env(&[(var, value)])).unwrap_err();
            assert!(e.contains(key), "{var}={value}: {e}");
        }
        let insecure_none = [("STRATA_COOKIE_SAME_SITE", "None"), ("STRATA_COOKIE_SECURE", "false")];
        assert!(Config::load(None, &env(&insecure_none)).unwrap_err().contains("cookie_secure"));
    }

    #[test]
    fn show_redacts_secrets() {
        let c = Config::load(
            None,
            &env(&[
                ("STRATA_DATABASE_URL", "postgres://u:hunter2@db/x"),
                ("STRATA_ADMIN_TOKEN", "super-secret-admin-token"),
                ("STRATA_CACHE_URL", "redis://:cachepw@127.0.0.1:6379"),
                ("STRATA_CACHE_SECRET", "hmac-key-secret-1"),
                ("STRATA_CACHE_PREVIOUS_SECRETS", "hmac-key-secret-0"),
            ]),
        )
        .unwrap();
        let shown = c.redacted_toml();
        let secrets = ["hunter2", "super-secret", "cachepw", "hmac-key-secret"];
        assert!(secrets.iter().all(|s| !shown.contains(s)), "{shown}");
        assert!(shown.contains("<redacted>"));
        // Debug output (what a `tracing` field or an error message would carry) too, and
        // the options handed to the adapters.
        let debugs = [
            format!("{c:?}"),
            format!("{:?}", c.store_options()),
            format!("{:?}", strata_cache::Target::parse(&c.cache.url)),
            format!("{:?}", c.cache_signer()),
        ];
        for (debug, secret) in debugs.iter().flat_map(|d| secrets.iter().map(move |s| (d, s))) {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        // What `config show` prints is itself a valid config file.
        assert!(toml::from_str::<Config>(&shown).is_ok());
    }

    #[test]
    fn readme_documents_every_variable() {
        let readme = include_str!("../../../README.md");
        for (var, _, _) in ENV_VARS {
            assert!(readme.contains(var), "README.md does not document {var}");
        }
    }
}
