//! The gateway: discovery and health tasks around a live [`UpstreamSet`], and the request
//! path — buffer the body (bounded), pick, forward over a keep-alive pool, retry where safe
//! inside the budget, stream the answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::RwLock;
use strata_api::client::Cidr;
use strata_api::error::ApiError;
use strata_core::secret::Secret;
use tower::retry::budget::{Budget, TpsBudget};

use crate::balance::{Algorithm, UpstreamSet};
use crate::discovery::{Discovery, Target};
use crate::upstream::{HealthPolicy, Upstream};

/// Everything `--role gateway` is configured with.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub discovery: Discovery,
    /// The discovery URL as given, for `/gateway/upstreams`.
    pub discovery_url: String,
    pub algorithm: Algorithm,
    pub health: HealthPolicy,
    /// Between active checks of `/readyz` on every upstream.
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// Between two resolutions of a `dns://` name or listings of a registry.
    pub discovery_interval: Duration,
    /// The DNS servers for `dns://` and `dns+srv://`; empty: the system's.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// A registry bucket the gateway creates gets this TTL (`max_age`).
    pub registry_ttl: Duration,
    /// Connect to response head, one try.
    pub try_timeout: Duration,
    /// Every try of a request together.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries allowed on top of the minimum, as a share of requests (0.2 = 20 %).
    pub retry_budget: f32,
    pub retry_min_per_sec: u32,
    /// Tries per request at most, the first included.
    pub max_tries: usize,
    pub body_limit: usize,
    pub body_read_timeout: Duration,
    pub admin_token: Option<Secret>,
    /// Peers whose `X-Forwarded-For`/`Forwarded` are kept and extended; from anyone else
    /// they are replaced, so a client cannot choose the address the api instances see.
    pub trusted_proxies: Arc<[Cidr]>,
}

impl GatewayOptions {
    pub fn new(discovery_url: &str) -> Result<Self, String> {
        Ok(GatewayOptions {
            discovery: discovery_url.parse()?,
            discovery_url: discovery_url.to_owned(),
            algorithm: Algorithm::default(),
            health: HealthPolicy::default(),
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_millis(800),
            discovery_interval: Duration::from_secs(2),
            dns_servers: Vec::new(),
            registry_ttl: Duration::from_secs(10),
            try_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            retry_budget: 0.2,
            retry_min_per_sec: 10,
            max_tries: 3,
            body_limit: 1 << 20,
            body_read_timeout: Duration::from_secs(10),
            admin_token: None,
            trusted_proxies: Arc::from(Vec::new()),
        })
    }
}

/// A keep-alive pool of upstream connections.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// A pool for one serving thread (see [`Gateway::forward`]), or for the health checks.
pub fn upstream_client(options: &GatewayOptions) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(options.connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

pub struct Gateway {
    options: GatewayOptions,
    policy: Arc<HealthPolicy>,
    set: RwLock<Arc<UpstreamSet>>,
    /// For the health checks; requests use their serving thread's own pool.
    client: UpstreamClient,
    budget: TpsBudget,
    pub counters: Counters,
    /// False until discovery first answers and once shutdown begins.
    pub ready: AtomicBool,
}

/// Gateway-wide counters for `/gateway/metrics`.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub retries_refused: AtomicU64,
    pub failed: AtomicU64,
    pub discovery_errors: AtomicU64,
}

/// Why a try did not produce an answer to pass on.
enum TryError {
    /// The request never reached the upstream: safe to retry for any method.
    Connect(String),
    /// Sent, then no answer in time or the connection broke.
    Failed(String),
    /// 502/503 from the upstream itself.
    Unavailable(Response<Body>),
}

impl Gateway {
    pub fn new(options: GatewayOptions) -> Arc<Self> {
        let client = upstream_client(&options);
        let budget = TpsBudget::new(Duration::from_secs(10), options.retry_min_per_sec, options.retry_budget);
        let policy = Arc::new(options.health.clone());
        let set = RwLock::new(Arc::new(UpstreamSet::new(Vec::new(), options.algorithm)));
        Arc::new(Gateway {
            options,
            policy,
            set,
            client,
            budget,
            counters: Counters::default(),
            ready: AtomicBool::new(false),
        })
    }

    pub fn options(&self) -> &GatewayOptions {
        &self.options
    }

    pub fn upstreams(&self) -> Arc<UpstreamSet> {
        self.set.read().clone()
    }

    /// Replaces the upstream set with `targets`, keeping the state of those that stay.
    /// Returns whether anything changed.
    pub fn apply(&self, targets: &[Target]) -> bool {
        let now = Instant::now();
        let current = self.upstreams();
        let same = current.upstreams.len() == targets.len()
            && current.upstreams.iter().zip(targets).all(|(u, t)| u.authority == t.authority && u.weight == t.weight);
        if same {
            return false;
        }
        // A newcomer starts at its peers' worst latency, so p2c sends it no burst, and in
        // slow start — except in the first set, where there is nobody to spare it.
        let seed = current.upstreams.iter().map(|u| u.rtt()).max();
        let joined =
            if current.upstreams.is_empty() { now.checked_sub(self.policy.slow_start).unwrap_or(now) } else { now };
        let upstreams: Vec<Arc<Upstream>> = targets
            .iter()
            .map(|t| {
                current
                    .upstreams
                    .iter()
                    .find(|u| u.authority == t.authority && u.weight == t.weight)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Upstream::new(t.authority.clone(), t.weight, self.policy.clone(), joined, seed))
                    })
            })
            .collect();
        let names: Vec<&str> = upstreams.iter().map(|u| u.authority.as_str()).collect();
        tracing::info!(upstreams = ?names, "upstream set changed");
        *self.set.write() = Arc::new(UpstreamSet::new(upstreams, self.options.algorithm));
        true
    }

    /// Follows discovery until `stop` is set: resolves, applies, waits, again. An error
    /// keeps the last known set.
    pub async fn discover(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut registry: Option<crate::registry::Connection> = None;
        let changed = Arc::new(tokio::sync::Notify::new());
        if let Discovery::Registry(r) = &self.options.discovery {
            tokio::spawn(watch_registry(r.clone(), self.options.registry_ttl, changed.clone(), stop.clone()));
        }
        loop {
            let answer = match &self.options.discovery {
                Discovery::Registry(r) => {
                    if registry.is_none() {
                        match crate::registry::Connection::open(r, self.options.registry_ttl).await {
                            Ok(c) => registry = Some(c),
                            Err(e) => tracing::warn!(error = %e, "cannot reach the registry"),
                        }
                    }
                    let listed = match &registry {
                        Some(c) => c.list().await,
                        None => Err("the registry is unreachable".to_owned()),
                    };
                    if listed.is_err() {
                        // Reconnect next time.
                        registry = None;
                    }
                    listed
                }
                d => d.resolve(&self.options.dns_servers).await,
            };
            match answer {
                Ok(targets) => {
                    self.apply(&targets);
                    self.ready.store(true, Ordering::Release);
                }
                Err(e) => {
                    self.counters.discovery_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "upstream discovery failed; keeping the last known set");
                }
            }
            let Some(every) = self.options.discovery.refresh(self.options.discovery_interval) else { return };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = changed.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Checks `/readyz` on every upstream every `check_interval` until `stop` is set.
    pub async fn check_health(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.options.check_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            let set = self.upstreams();
            let checks = set.upstreams.iter().map(|u| {
                let (gateway, upstream) = (self.clone(), u.clone());
                tokio::spawn(async move {
                    let result = gateway.probe(&upstream.authority).await;
                    if let Some(up) = upstream.checked(result.clone(), Instant::now()) {
                        match (up, result) {
                            (true, _) => tracing::info!(upstream = %upstream.authority, "upstream up"),
                            (false, Err(e)) => {
                                tracing::warn!(upstream = %upstream.authority, error = %e, "upstream down")
                            }
                            (false, Ok(())) => {}
                        }
                    }
                })
            });
            for check in checks.collect::<Vec<_>>() {
                let _ = check.await;
            }
        }
    }

    async fn probe(&self, authority: &str) -> Result<(), String> {
        let uri = format!("http://{authority}/readyz");
        let req = Request::get(uri).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.options.check_timeout, self.client.request(req)).await {
            Err(_) => Err(format!("no answer within {} ms", self.options.check_timeout.as_millis())),
            Ok(Err(e)) => Err(error_chain(&e)),
            Ok(Ok(res)) if res.status() == StatusCode::OK => Ok(()),
            Ok(Ok(res)) => Err(format!("/readyz answered {}", res.status().as_u16())),
        }
    }

    /// May another upstream be ejected without passing the share cap?
    fn may_eject(&self, set: &UpstreamSet, now: Instant) -> bool {
        let n = set.upstreams.len();
        let ejected = set.upstreams.iter().filter(|u| u.ejected(now)).count();
        n > 0 && ((ejected + 1) as f64) <= (n as f64 * self.policy.max_ejected_share).floor()
    }

    /// The request path. `client` is the pool of the thread serving the request: a pooled
    /// upstream connection's task runs on the thread that opened it, so sharing one pool
    /// between threads would hand every answer across threads.
    pub async fn forward(&self, client: &UpstreamClient, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let (mut parts, body) = req.into_parts();
        // Most requests (GET, HEAD, DELETE) say they have no body: nothing to wait for.
        let body = if axum::body::HttpBody::size_hint(&body).exact() == Some(0) {
            Bytes::new()
        } else {
            match tokio::time::timeout(
                self.options.body_read_timeout,
                Limited::new(body, self.options.body_limit).collect(),
            )
            .await
            {
                Err(_) => {
                    return problem(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "Request body too slow",
                        "the request body did not arrive in time".into(),
                    );
                }
                Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                    return problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "Request body too large",
                        format!("the request body exceeds {} bytes", self.options.body_limit),
                    );
                }
                Ok(Err(e)) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        "Unreadable request body",
                        format!("reading the request body failed: {e}"),
                    );
                }
                Ok(Ok(collected)) => collected.to_bytes(),
            }
        };
        let idempotent =
            matches!(parts.method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
                || parts.headers.contains_key("idempotency-key");
        prepare_headers(&mut parts.headers, peer, &self.options.trusted_proxies);
        let key = bearer(&parts.headers).map(|t| t.to_owned());
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        self.budget.deposit();

        let set = self.upstreams();
        let mut tried: Vec<usize> = Vec::with_capacity(self.options.max_tries);
        let mut last_error = String::from("no upstream is configured");
        let mut last_unavailable = None;
        while tried.len() < self.options.max_tries {
            let now = Instant::now();
            let Some(index) = set.pick(self.options.algorithm, key.as_deref().map(str::as_bytes), &tried, now) else {
                break;
            };
            if !tried.is_empty() {
                if !self.budget.withdraw() {
                    self.counters.retries_refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            tried.push(index);
            let upstream = &set.upstreams[index];
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            let mut out = Request::new(Full::new(body.clone()));
            *out.method_mut() = parts.method.clone();
            *out.headers_mut() = parts.headers.clone();
            let Some(target) = upstream.target.clone() else {
                last_error = format!("{:?} is not a valid upstream address", upstream.authority);
                continue;
            };
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(target);
            uri.path_and_query = Some(path.clone());
            // Scheme, authority and path are all present, so this cannot fail.
            *out.uri_mut() = http::Uri::from_parts(uri).unwrap_or_default();
            let started = Instant::now();
            let outcome = {
                let _in_flight = upstream.begin();
                self.try_once(client, out, remaining.min(self.options.try_timeout)).await
            };
            let now = Instant::now();
            match outcome {
                Ok(res) => {
                    upstream.observe(now - started, now);
                    upstream.succeeded();
                    return res;
                }
                Err(e) => {
                    let retry_safe = idempotent || matches!(e, TryError::Connect(_));
                    upstream.observe(now - started, now);
                    upstream.failed(now, self.may_eject(&set, now));
                    match e {
                        TryError::Connect(why) | TryError::Failed(why) => {
                            last_error = format!("{}: {why}", upstream.authority);
                            last_unavailable = None;
                        }
                        TryError::Unavailable(res) => {
                            last_error = format!("{} answered {}", upstream.authority, res.status().as_u16());
                            last_unavailable = Some(res);
                        }
                    }
                    if !retry_safe {
                        break;
                    }
                }
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        // An upstream's own 503 (draining, overloaded) is the most truthful answer left.
        if let Some(res) = last_unavailable {
            return res;
        }
        if tokio::time::Instant::now() >= deadline {
            return problem(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", "Upstream timed out", last_error);
        }
        problem(StatusCode::BAD_GATEWAY, "upstream_unavailable", "No upstream could answer", last_error)
    }

    async fn try_once(
        &self,
        client: &UpstreamClient,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<Response<Body>, TryError> {
        match tokio::time::timeout(limit, client.request(req)).await {
            Err(_) => Err(TryError::Failed(format!("no answer within {} ms", limit.as_millis()))),
            Ok(Err(e)) if e.is_connect() => Err(TryError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(TryError::Failed(error_chain(&e))),
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let res = Response::from_parts(parts, Body::new(body));
                if matches!(res.status(), StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE) {
                    return Err(TryError::Unavailable(res));
                }
                Ok(res)
            }
        }
    }

    /// `/gateway/metrics` text for the gateway's own series.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let now = Instant::now();
        let mut out = String::new();
        let c = &self.counters;
        for (name, help, value) in [
            ("strata_gateway_requests_total", "Requests received by the gateway", &c.requests),
            ("strata_gateway_retries_total", "Retries sent to another upstream", &c.retries),
            ("strata_gateway_retries_refused_total", "Retries the retry budget refused", &c.retries_refused),
            ("strata_gateway_failed_total", "Requests no upstream answered", &c.failed),
            ("strata_gateway_discovery_errors_total", "Failed discovery lookups", &c.discovery_errors),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let set = self.upstreams();
        let series: [Series; 6] = [
            ("strata_gateway_upstream_requests_total", "counter", "Tries sent to the upstream", |s| s.requests as f64),
            ("strata_gateway_upstream_errors_total", "counter", "Connect errors, timeouts and 502/503/504", |s| {
                s.errors as f64
            }),
            ("strata_gateway_upstream_ejections_total", "counter", "Passive outlier ejections", |s| s.ejections as f64),
            ("strata_gateway_upstream_in_flight", "gauge", "Requests in flight to the upstream", |s| {
                s.in_flight as f64
            }),
            ("strata_gateway_upstream_latency_ewma_seconds", "gauge", "Peak-EWMA response time", |s| s.ewma_ms / 1e3),
            ("strata_gateway_upstream_available", "gauge", "1 when up and not ejected", |s| {
                f64::from(u8::from(s.state == "up" || s.state == "slow-start"))
            }),
        ];
        let snapshots: Vec<_> = set.upstreams.iter().map(|u| u.snapshot(now)).collect();
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &snapshots {
                let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", s.authority, value(s));
            }
        }
        let name = "strata_gateway_upstream_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Each try's time to the response head\n# TYPE {name} histogram");
        for u in &set.upstreams {
            let (cumulative, sum) = u.stats.latency.read();
            let bounds = crate::upstream::LATENCY_BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".to_owned()]);
            for (le, count) in bounds.zip(&cumulative) {
                let _ = writeln!(out, "{name}_bucket{{upstream=\"{}\",le=\"{le}\"}} {count}", u.authority);
            }
            let count = cumulative.last().copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_sum{{upstream=\"{}\"}} {sum}\n{name}_count{{upstream=\"{}\"}} {count}",
                u.authority, u.authority
            );
        }
        out
    }
}

/// Watches the registry for the discovery loop, reconnecting a second after a failure,
/// until `stop` is set.
async fn watch_registry(
    registry: crate::registry::Registry,
    ttl: Duration,
    changed: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let watched = async {
            let connection = crate::registry::Connection::open(&registry, ttl).await?;
            connection.watch(&changed).await
        };
        tokio::select! {
            result = watched => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "registry watch ended; listing continues");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A per-upstream metric: name, type, help, and its value in a snapshot.
type Series = (&'static str, &'static str, &'static str, fn(&crate::upstream::Snapshot) -> f64);

/// The admin view of the upstreams.
pub async fn upstreams_view(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response<Body> {
    let authorized =
        gateway.options.admin_token.as_ref().is_some_and(|secret| bearer(&headers).is_some_and(|t| secret.matches(t)));
    if !authorized {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Admin token required",
            "GET /gateway/upstreams needs the admin bearer token (auth.admin_token)",
        )
        .into_response();
    }
    let now = Instant::now();
    let set = gateway.upstreams();
    axum::Json(serde_json::json!({
        "algorithm": gateway.options.algorithm.as_str(),
        "discovery": gateway.options.discovery_url,
        "upstreams": set.upstreams.iter().map(|u| u.snapshot(now)).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// The fallback route: everything not under `/gateway/` is proxied.
pub async fn proxy(
    State(gateway): State<Arc<Gateway>>,
    State(client): State<UpstreamClient>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    gateway.forward(&client, peer, req).await
}

fn problem(status: StatusCode, code: &'static str, title: &'static str, detail: String) -> Response<Body> {
    ApiError::new(status, code, title, detail).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// RFC 9110 §7.6.1: hop-by-hop headers, and any the `Connection` header names, stay on
/// their hop. (`Transfer-Encoding` is hyper's to set per connection.)
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Hop-by-hop headers out; `X-Forwarded-For`/`-Proto`/`-Host`, `Forwarded` and
/// `X-Request-Id` in.
fn prepare_headers(headers: &mut HeaderMap, peer: SocketAddr, trusted: &[Cidr]) {
    strip_hop_by_hop(headers);
    let peer_ip = strata_api::client::canonical(peer.ip());
    if !trusted.iter().any(|c| c.contains(peer_ip)) {
        headers.remove("x-forwarded-for");
        headers.remove(header::FORWARDED);
        headers.remove("x-forwarded-proto");
        headers.remove("x-forwarded-host");
    }
    let peer_text = peer_ip.to_string();
    let node = if peer_ip.is_ipv6() { format!("\"[{peer_text}]\"") } else { peer_text.clone() };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {peer_text}"),
        None => peer_text,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert("x-forwarded-for", v);
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut forwarded = format!("for={node};proto=http");
    if let Some(host) = host.as_deref().filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        forwarded.push_str(&format!(";host=\"{host}\""));
        if !headers.contains_key("x-forwarded-host") {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert("x-forwarded-host", v);
            }
        }
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {forwarded}"),
        None => forwarded,
    };
    if let Ok(v) = HeaderValue::try_from(forwarded) {
        headers.insert(header::FORWARDED, v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if !headers.contains_key("x-request-id") {
        headers.insert("x-request-id", request_id());
    }
}

/// A fresh request id: 32 hex digits, a random per-process half and a counter. Unique
/// without a random draw (a `getrandom` system call) per request; ids need not be secret.
fn request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let id = format!("{prefix:016x}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed));
    HeaderValue::try_from(id).unwrap_or(HeaderValue::from_static("0"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_are_replaced_from_untrusted_peers_and_extended_from_trusted_ones() {
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::HOST, HeaderValue::from_static("id.example"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        prepare_headers(&mut h, peer, &[]);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h[header::FORWARDED], "for=192.0.2.7;proto=http;host=\"id.example\"");
        assert!(!h.contains_key("x-secret") && !h.contains_key(header::CONNECTION));
        assert!(h.contains_key("x-request-id"));
        assert_ne!(request_id(), request_id());
        assert_eq!(request_id().len(), 32);

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        prepare_headers(&mut h, peer, &["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 192.0.2.7");
    }
}
