//! Wiring: configuration in, a running server out. `Application::build` binds the listener
//! (port 0 works, and the real port is reported), so tests start the real thing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use strata_api::{AppState, Metrics};
use strata_core::groups::Groups;
use strata_core::mail::{MailDispatcher, MailListener, Templates};
use strata_core::password::PasswordHasher;
use strata_core::ports::{Clock, EventBus, Store, SystemClock};
use strata_core::provisioning::ProvisioningTokens;
use strata_core::relay::Relay;
use strata_core::service::{AccountSettings, Accounts};
use strata_core::throttle::Throttle;
use strata_core::webhook_admin::WebhookAdmin;
use strata_core::webhooks::{Dispatcher, WebhookListener};
use strata_core::worker::{AuditListener, Listener, run_listener};
use tokio::net::TcpListener;

use crate::config::Config;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    config: Config,
    worker: Option<Worker>,
    /// The trace exporter's stop signal and task, when tracing is on.
    trace_export: Option<TracingTask>,
}

/// The event side of a process (roles `worker` and `all`).
struct Worker {
    bus: Arc<dyn EventBus>,
    relay: Relay,
    listeners: Vec<Arc<dyn Listener>>,
    dispatcher: Arc<Dispatcher>,
    mail: Arc<MailDispatcher>,
    /// The mail sender, for the banner.
    mailer: String,
    clock: Arc<dyn Clock>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with a clock tests can move.
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let store = connect_serving_store(&config, metrics.clone()).await?;
        let hasher = PasswordHasher::new(config.hasher_settings()).map_err(anyhow::Error::msg)?;
        let settings = AccountSettings {
            session_ttl: Duration::from_secs(config.auth.session_ttl_secs),
            idempotency_ttl: Duration::from_secs(config.auth.idempotency_ttl_secs),
            require_verified_email: config.auth.require_verified_email,
            ..AccountSettings::default()
        };
        let mut throttle = Throttle::local(config.throttle_settings());
        let shared_counters =
            strata_cache::open_counters(&config.throttle.url, &config.cache_options(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("throttle.url: {e}"))?;
        if let Some(shared) = shared_counters.clone() {
            throttle = throttle.with_shared(shared);
        }
        let mut accounts =
            Accounts::new(store.clone(), Arc::new(hasher), throttle, clock.clone(), metrics.clone(), settings)
                .with_lifecycle(config.lifecycle_settings(), shared_counters);
        let mut groups =
            Groups::new(store.clone(), clock.clone(), settings.list_default_limit, settings.list_max_limit);
        let worker = if config.role.runs_worker() {
            let bus = strata_events::open(&config.events.url, &config.bus_options())
                .await
                .map_err(|e| anyhow::anyhow!("events.url: {e}"))?;
            let relay = Relay::new(
                store.clone(),
                bus.clone(),
                clock.clone(),
                metrics.clone(),
                config.relay_settings(),
                relay_owner(),
            );
            if config.role.runs_api() {
                accounts = accounts.with_relay_waker(relay.waker());
                groups = groups.with_relay_waker(relay.waker());
            }
            let audit = AuditListener::new(
                store.clone(),
                clock.clone(),
                Duration::from_secs(config.events.audit_retention_secs),
            );
            let sender = strata_webhooks::HttpSender::new(config.webhook_policy())
                .map_err(|e| anyhow::anyhow!("webhooks: {e}"))?;
            let dispatcher = Dispatcher::new(
                store.clone(),
                clock.clone(),
                Arc::new(sender),
                metrics.clone(),
                config.webhook_settings(),
            );
            let webhooks = WebhookListener::new(store.clone(), clock.clone(), dispatcher.waker());
            let roots = config.mail_tls_roots().map_err(anyhow::Error::msg)?;
            let mailer =
                strata_mail::open(&config.mail.smtp_url, &config.mail.from, &roots).map_err(anyhow::Error::msg)?;
            if config.mail.smtp_url.is_empty() {
                tracing::warn!(
                    "STRATA_SMTP_URL is not set: mails are written to the log, not sent (fine for development; \
                     the log then holds live reset links)"
                );
            }
            let templates = if config.mail.templates_dir.is_empty() {
                Templates::embedded()
            } else {
                Templates::with_overrides(std::path::Path::new(&config.mail.templates_dir))
                    .map_err(|e| anyhow::anyhow!("mail.templates_dir: {e}"))?
            };
            let mailer_described = mailer.describe();
            let mail = MailDispatcher::new(
                store.clone(),
                clock.clone(),
                mailer,
                templates,
                metrics.clone(),
                config.mail_settings(),
            );
            let mail_listener = MailListener::new(mail.waker());
            Some(Worker {
                bus,
                relay,
                listeners: vec![Arc::new(audit), Arc::new(webhooks), Arc::new(mail_listener)],
                dispatcher,
                mail,
                mailer: mailer_described,
                clock: clock.clone(),
            })
        } else {
            None
        };
        // Never connects here: a cache server that is down at startup is a degraded
        // cache, not a failed start.
        let cache_bus = cache_invalidation_bus(&config).await?;
        let cache = strata_cache::open_with_bus(&config.cache.url, &config.cache_options(), metrics.clone(), cache_bus)
            .map_err(|e| anyhow::anyhow!("cache.url: {e}"))?;
        if let Some(cache) = cache {
            accounts = accounts.with_cache(cache, config.cache_settings(), config.cache_signer(), metrics.clone());
        }
        let webhooks = WebhookAdmin::new(
            store.clone(),
            clock.clone(),
            config.webhook_policy(),
            config.webhook_settings().rotation_overlap,
            settings.list_max_limit,
        );
        let (tracer, trace_export) = start_tracing(&config, store.backend(), metrics.clone())?;
        let browser = config.browser_settings().map_err(anyhow::Error::msg)?;
        if !browser.secure {
            tracing::warn!(
                "auth.cookie_secure is off: session cookies go over plain HTTP (only for local development)"
            );
        }
        let state = AppState::new(strata_api::StateInner {
            accounts: Arc::new(accounts),
            webhooks: Arc::new(webhooks),
            groups: Arc::new(groups),
            provisioning: Arc::new(ProvisioningTokens::new(store.clone(), clock.clone())),
            metrics,
            admin_token: config.auth.admin_token.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            body_limit: config.http.body_limit_bytes,
            body_read_timeout: Duration::from_millis(config.http.body_read_timeout_ms),
            trusted_proxies: config.http.trusted_proxies.clone().into(),
            timing_detail_from: config.http.timing_detail_from.clone().into(),
            browser,
            tracer,
            bench_report: Some(strata_api::admin::BenchReportRenderer {
                render: render_bench_report,
                stylesheet: strata_bench::html::STYLE,
            }),
        });
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        Ok(Application { listener, local_addr, state, config, worker, trace_export })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The account service this application serves (tests inspect its cache).
    pub fn accounts(&self) -> &Arc<Accounts> {
        &self.state.accounts
    }

    /// One line for humans: where we listen and what we run on.
    pub fn banner(&self) -> String {
        let cache = self.state.accounts.cache().map_or_else(|| "none".to_owned(), |c| c.describe());
        let events = self.worker.as_ref().map_or_else(
            || "published by a worker".to_owned(),
            |w| format!("{}, mail: {}", w.bus.describe(), w.mailer),
        );
        let role = match self.config.role {
            crate::config::Role::All => "api + worker",
            crate::config::Role::Api => "api",
            crate::config::Role::Worker => "worker",
            crate::config::Role::Gateway => "gateway",
        };
        format!(
            "strata listening on http://{} (role: {role}, database: {}, cache: {cache}, events: {events})",
            self.local_addr,
            strata_store::redact_url(&self.config.database.url)
        )
    }

    /// Serves until `shutdown` resolves, then: readiness false, a drain delay for load
    /// balancers to notice, stop accepting, and wait (bounded) for in-flight requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let local_addr = self.local_addr;
        let Application { listener, state, config, worker, trace_export, .. } = self;
        let ready = state.ready.clone();
        let drain_delay = Duration::from_millis(config.http.drain_delay_ms);
        let grace = Duration::from_secs(config.http.shutdown_grace_secs);
        spawn_purger(state.accounts.clone());
        let metrics = state.metrics.clone();
        let (stop_worker, worker_stopping) = tokio::sync::watch::channel(false);
        let worker_tasks = worker.map(|w| w.spawn(metrics.clone(), worker_stopping)).unwrap_or_default();
        let app = if config.role.runs_api() { strata_api::router(state) } else { strata_api::operations_router(state) };
        let (deregister, deregistering) = tokio::sync::watch::channel(false);
        let registration = if config.role.runs_api() && !config.register.is_empty() {
            Some(spawn_registration(&config, local_addr, deregistering)?)
        } else {
            None
        };
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let signal_ready = ready.clone();
        let stop_accepting = async move {
            shutdown.await;
            // Out of the registry first, so gateways stop sending before the drain.
            let _ = deregister.send(true);
            signal_ready.store(false, Ordering::Release);
            tracing::info!(drain_delay_ms = drain_delay.as_millis() as u64, "shutdown requested; readiness now false");
            tokio::time::sleep(drain_delay).await;
            let _ = draining_tx.send(());
        };
        ready.store(true, Ordering::Release);
        let server = strata_api::server::serve(listener, app, config.server_limits(), metrics, stop_accepting);
        let server = tokio::spawn(server);
        tokio::pin!(server);
        // Wait for the server to finish on its own, or bound the drain once it has begun.
        tokio::select! {
            res = &mut server => res.context("server task")?,
            _ = draining_rx => {
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(res) => res.context("server task")?,
                    Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time; exiting"),
                }
            }
        }
        // The relay gives its leases up and listeners stop between batches; what they
        // leave undone is redelivered to whoever runs next.
        if let Some(registration) = registration {
            let _ = tokio::time::timeout(Duration::from_secs(5), registration).await;
        }
        let _ = stop_worker.send(true);
        let finish = futures_join(worker_tasks);
        if tokio::time::timeout(grace, finish).await.is_err() {
            tracing::warn!("worker tasks did not stop in time; exiting");
        }
        // Last: the spans of the drained requests go out too.
        if let Some((stop, exporter)) = trace_export {
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(5), exporter).await.is_err() {
                tracing::warn!("trace exporter did not flush in time; its queued spans are lost");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

impl Worker {
    fn spawn(
        self,
        metrics: Arc<Metrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(self.relay.run(shutdown.clone())),
            tokio::spawn(self.dispatcher.run(shutdown.clone())),
            tokio::spawn(self.mail.run(shutdown.clone())),
        ];
        for listener in self.listeners {
            let (bus, clock, observer) = (self.bus.clone(), self.clock.clone(), metrics.clone());
            tasks.push(tokio::spawn(run_listener(bus, listener, clock, observer, shutdown.clone())));
        }
        tasks
    }
}

type TracingTask = (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>);

/// The admin console's bench report viewer: the load generator's own renderer, over a report
/// read back from its JSON.
fn render_bench_report(json: &[u8], stylesheet: &str) -> Result<String, String> {
    strata_bench::Report::from_json(json).map(|report| strata_bench::html::render_linked(&report, stylesheet))
}

/// The tracer and its exporter task when `tracing.otlp_endpoint` is set; nothing otherwise.
fn start_tracing(
    config: &Config,
    backend: &'static str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Option<Arc<strata_core::trace::Tracer>>, Option<TracingTask>)> {
    if config.tracing.otlp_endpoint.is_empty() {
        return Ok((None, None));
    }
    // The operator names the collector, usually on this host or network: the webhook
    // sender's refusal of private addresses (against tenants' SSRF) does not apply.
    let anywhere = ["0.0.0.0/0", "::/0"].iter().filter_map(|c| c.parse().ok()).collect();
    let sender = strata_webhooks::HttpSender::new(strata_core::webhooks::NetworkPolicy { allowed: anywhere })
        .map_err(|e| anyhow::anyhow!("tracing: {e}"))?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let settings = config.otlp_settings();
    let (exporter, task) =
        strata_otlp::start(&settings, Arc::new(sender), metrics, stopping).map_err(anyhow::Error::msg)?;
    // OpenTelemetry's names for the database systems.
    let db_system = match backend {
        "postgres" => "postgresql",
        other => other,
    };
    let tracer = strata_core::trace::Tracer::new(exporter, config.tracing.sample_ratio, db_system);
    tracing::info!(
        endpoint = %settings.traces_url().map(|u| u.as_str().to_owned()).unwrap_or_default(),
        sample_ratio = config.tracing.sample_ratio,
        "exporting traces over OTLP/HTTP"
    );
    Ok((Some(Arc::new(tracer)), Some((stop, task))))
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// `--role gateway`: binds `config.listen`, prints the banner, proxies until `shutdown`,
/// then drains like an api instance. No database, cache or bus.
pub async fn run_gateway(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let options = config.gateway_options().map_err(anyhow::Error::msg)?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    println!(
        "strata listening on http://{local} (role: gateway, upstreams: {}, algorithm: {})",
        options.discovery_url,
        options.algorithm.as_str()
    );
    let gateway = strata_gateway::Gateway::new(options);
    strata_gateway::run(
        gateway,
        listener,
        config.server_limits(),
        Arc::new(Metrics::new()),
        Duration::from_millis(config.http.drain_delay_ms),
        Duration::from_secs(config.http.shutdown_grace_secs),
        shutdown,
    )
    .await
    .context("cannot start serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// Registers this instance in `config.register` until `stop` is set, then deregisters.
/// An unreachable registry is retried every second; it never holds up serving.
fn spawn_registration(
    config: &Config,
    bound: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use strata_gateway::registry::{Connection, Registry};
    let registry: Registry = config.register.parse().map_err(|e: String| anyhow::anyhow!("register: {e}"))?;
    let address = config.register_address.unwrap_or(bound);
    if address.ip().is_unspecified() {
        anyhow::bail!(
            "listening on {bound}: set register_address (STRATA_REGISTER_ADDRESS) to the address gateways should use"
        );
    }
    let ttl = Duration::from_secs(config.register_ttl_secs);
    let id = format!("api-{}", uuid::Uuid::new_v4().simple());
    Ok(tokio::spawn(async move {
        let connection = loop {
            match Connection::open(&registry, ttl).await {
                Ok(c) => break c,
                Err(e) => tracing::warn!(error = %e, "cannot reach the registry; retrying in 1 s"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        };
        tracing::info!(%address, %id, "registered");
        connection.register(id, address.to_string(), 1, stop).await;
    }))
}

/// A name unique to this process among relays sharing a database: host, pid, random.
fn relay_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "strata".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

/// Purges expired idempotency records hourly, for as long as the service lives (the task
/// holds only a weak reference). Instances purge independently: the delete is idempotent.
fn spawn_purger(accounts: Arc<Accounts>) {
    let accounts = Arc::downgrade(&accounts);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            let Some(accounts) = accounts.upgrade() else { return };
            match accounts.purge_idempotency_keys().await {
                Ok(n) => tracing::debug!(purged = n, "expired idempotency keys purged"),
                Err(e) => tracing::warn!(error = %e, "cannot purge expired idempotency keys; retrying in an hour"),
            }
        }
    });
}

/// The store `serve` uses: the primary, and its read replicas when `database.replicas`
/// names any (or the shards, each with the replicas its entry names). Read-your-writes
/// positions go to the Redis of `cache.url`, else of `throttle.url`, else stay in this
/// instance (fine for one instance; several instances over replicas need a shared Redis,
/// and start-up says so).
pub async fn connect_serving_store(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<dyn Store>> {
    let replicas = config.database.replica_urls();
    let shard_replicas = config.database.shard_urls().iter().any(|s| s.contains('|'));
    let board = if replicas.is_empty() && !shard_replicas { None } else { Some(replica_board(config, metrics)?) };
    if !config.database.shards.is_empty() {
        let store = Arc::new(connect_sharded(config, board).await?);
        spawn_claim_reconciler(Arc::downgrade(&store));
        return Ok(store);
    }
    let Some((board, options)) = board else { return connect_store(config).await };
    tracing::info!(
        replicas = replicas.len(),
        board = %board.describe(),
        max_lag_ms = config.database.max_replica_lag_ms,
        "hot reads go to read replicas that have caught up with the reader's writes"
    );
    strata_store::connect_replicated(&config.store_options(), &replicas, board, options)
        .await
        .with_context(|| format!("cannot open database {}", strata_store::redact_url(&config.database.url)))
}

type ReplicaBoard = (Arc<dyn strata_core::ports::PositionBoard>, strata_store::replicated::ReplicaOptions);

/// Where read-your-writes positions are kept, and how replicas are routed.
fn replica_board(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<ReplicaBoard> {
    let shared =
        [&config.cache.url, &config.throttle.url].into_iter().find(|url| match strata_cache::Target::parse(url) {
            Ok(strata_cache::Target::Redis(t)) => !matches!(t.topology, strata_cache::RedisTopology::Cluster { .. }),
            _ => false,
        });
    let board: Arc<dyn strata_core::ports::PositionBoard> = match shared {
        Some(url) => strata_cache::open_positions(url, &config.cache_options(), metrics)
            .map_err(|e| anyhow::anyhow!("read-your-writes positions: {e}"))?,
        None => Arc::new(strata_store::replicated::LocalBoard::default()),
    };
    let options = strata_store::replicated::ReplicaOptions {
        max_lag: Duration::from_millis(config.database.max_replica_lag_ms),
        ..Default::default()
    };
    Ok((board, options))
}

/// The sharded store of `database.shards`, with `database.url` as its catalog; shards'
/// read replicas are used when a `board` is given.
pub async fn connect_sharded(
    config: &Config,
    board: Option<ReplicaBoard>,
) -> anyhow::Result<strata_store::sharded::ShardedStore> {
    let options = strata_store::sharded::ShardOptions {
        logical: config.database.logical_shards,
        query_timeout: Duration::from_millis(config.database.query_timeout_ms),
        ..Default::default()
    };
    let shards = config.database.shard_urls();
    let described = board.as_ref().map(|(b, _)| b.describe());
    let store =
        strata_store::connect_sharded(&config.store_options(), &shards, board, options).await.with_context(|| {
            format!("cannot open the sharded store (catalog {})", strata_store::redact_url(&config.database.url))
        })?;
    tracing::info!(
        shards = shards.len(),
        logical = store.logical_shards().unwrap_or(0),
        catalog = %strata_store::redact_url(&config.database.url),
        replica_positions = described.as_deref().unwrap_or("none"),
        "users are sharded; the catalog holds the shard map and the email claims"
    );
    Ok(store)
}

/// Settles, once a minute, the email claims that a create, change or delete left pending
/// (it failed or died half-way): any instance may run it, every step is idempotent.
fn spawn_claim_reconciler(store: std::sync::Weak<strata_store::sharded::ShardedStore>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(store) = store.upgrade() else { return };
            match store.reconcile_claims(SystemClock.now()).await {
                Ok((0, 0)) => {}
                Ok((kept, released)) => tracing::info!(kept, released, "settled pending email claims"),
                Err(e) => tracing::warn!(error = %e, "cannot settle pending email claims; retrying in a minute"),
            }
        }
    });
}

/// The configured store for commands (sharded when `database.shards` is set), without
/// read replicas.
pub async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if !config.database.shards.is_empty() {
        return Ok(Arc::new(connect_sharded(config, None).await?));
    }
    strata_store::connect(&config.store_options())
        .await
        .with_context(|| format!("cannot open database {}", strata_store::redact_url(&config.database.url)))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The bus that carries L1 invalidations between instances when the shared tier has no
/// broadcast of its own: Memcached with an L1, on a real broker (an in-process bus reaches
/// no other instance). Its own namespace (`<events.namespace>-cache`), so domain listeners
/// never see these messages. Every role opens it: API instances are the ones caching.
async fn cache_invalidation_bus(config: &Config) -> anyhow::Result<Option<Arc<dyn EventBus>>> {
    let memcached = config.cache.url.trim_start().starts_with("memcache://");
    if !memcached || config.cache_options().l1.is_none() || config.events.url.starts_with("memory://") {
        return Ok(None);
    }
    let options = strata_core::events::BusOptions {
        namespace: format!("{}-cache", config.events.namespace),
        ..config.bus_options()
    };
    let bus = strata_events::open(&config.events.url, &options)
        .await
        .map_err(|e| anyhow::anyhow!("events.url (cache invalidation): {e}"))?;
    Ok(Some(bus))
}
