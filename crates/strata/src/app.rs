//! Wiring: configuration in, a running server out. `Application::build` binds the listener
//! (port 0 works, and the real port is reported), so tests start the real thing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use strata_api::{AppState, Metrics};
use strata_core::password::PasswordHasher;
use strata_core::ports::{Clock, Store, SystemClock};
use strata_core::service::{AccountSettings, Accounts};
use strata_core::throttle::Throttle;
use tokio::net::TcpListener;

use crate::config::Config;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    config: Config,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with a clock tests can move.
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let store = connect_store(&config).await?;
        let hasher = PasswordHasher::new(config.hasher_settings()).map_err(anyhow::Error::msg)?;
        let metrics = Arc::new(Metrics::new());
        let settings = AccountSettings {
            session_ttl: Duration::from_secs(config.auth.session_ttl_secs),
            idempotency_ttl: Duration::from_secs(config.auth.idempotency_ttl_secs),
            ..AccountSettings::default()
        };
        let mut throttle = Throttle::local(config.throttle_settings());
        if let Some(shared) =
            strata_cache::open_counters(&config.throttle.url, &config.cache_options(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("throttle.url: {e}"))?
        {
            throttle = throttle.with_shared(shared);
        }
        let mut accounts = Accounts::new(store, Arc::new(hasher), throttle, clock, metrics.clone(), settings);
        // Never connects here: a cache server that is down at startup is a degraded
        // cache, not a failed start.
        let cache = strata_cache::open(&config.cache.url, &config.cache_options(), metrics.clone())
            .map_err(|e| anyhow::anyhow!("cache.url: {e}"))?;
        if let Some(cache) = cache {
            accounts = accounts.with_cache(cache, config.cache_settings(), config.cache_signer(), metrics.clone());
        }
        let state = AppState::new(strata_api::StateInner {
            accounts: Arc::new(accounts),
            metrics,
            admin_token: config.auth.admin_token.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            body_limit: config.http.body_limit_bytes,
            body_read_timeout: Duration::from_millis(config.http.body_read_timeout_ms),
            trusted_proxies: config.http.trusted_proxies.clone().into(),
            timing_detail_from: config.http.timing_detail_from.clone().into(),
        });
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        Ok(Application { listener, local_addr, state, config })
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
        format!(
            "strata listening on http://{} (database: {}, cache: {cache})",
            self.local_addr,
            strata_store::redact_url(&self.config.database.url)
        )
    }

    /// Serves until `shutdown` resolves, then: readiness false, a drain delay for load
    /// balancers to notice, stop accepting, and wait (bounded) for in-flight requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, state, config, .. } = self;
        let ready = state.ready.clone();
        let drain_delay = Duration::from_millis(config.http.drain_delay_ms);
        let grace = Duration::from_secs(config.http.shutdown_grace_secs);
        spawn_purger(state.accounts.clone());
        let metrics = state.metrics.clone();
        let app = strata_api::router(state);
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let signal_ready = ready.clone();
        let stop_accepting = async move {
            shutdown.await;
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
        tracing::info!("stopped");
        Ok(())
    }
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

pub async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
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
