//! Prometheus metrics. Label values are `&'static str` from closed sets (our routes, HTTP
//! methods, storage operations, cache tiers and outcomes) or bounded by configuration
//! (cache endpoints), so recording allocates nothing and an attacker probing random paths
//! cannot grow the series count.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use strata_core::error::RepoError;

use parking_lot::Mutex;
use strata_core::ports::{CacheObserver, PoolStats, StoreObserver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLookupLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheTierLabels {
    tier: &'static str,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerNameLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MailLabels {
    template: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheEndpointLabels {
    endpoint: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 25 µs … ~13 s, doubling: resolves both cached reads and argon2 logins.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<HttpLabels>,
    db_duration: HistogramFamily<DbLabels>,
    db_pool: Family<PoolLabels, Gauge>,
    db_pool_acquires: Counter,
    db_pool_wait: Counter<f64, std::sync::atomic::AtomicU64>,
    db_pool_hold: Counter<f64, std::sync::atomic::AtomicU64>,
    hash_queue: Gauge,
    http_in_flight: Gauge,
    cache_lookups: Family<CacheLookupLabels, Counter>,
    cache_tier_ops: Family<CacheTierLabels, Counter>,
    cache_endpoint_degraded: Family<CacheEndpointLabels, Gauge>,
    cache_degraded: Gauge,
    degraded_endpoints: Mutex<HashMap<String, bool>>,
    connections_open: Gauge,
    connections_refused: Counter,
    connection_timeouts: Family<PhaseLabels, Counter>,
    events_published: Counter,
    events_publish_failures: Counter,
    events_publish_duration: Histogram,
    outbox_backlog: Gauge,
    outbox_backlog_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    relay_partitions: Gauge,
    listener_events: Family<ListenerLabels, Counter>,
    listener_lag: HistogramFamily<ListenerNameLabels>,
    webhook_attempts: Family<OutcomeLabels, Counter>,
    webhook_duration: Histogram,
    mails: Family<MailLabels, Counter>,
    trace_spans_exported: Counter,
    trace_spans_dropped: Family<ReasonLabels, Counter>,
    replica_lag: Family<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    replica_in_rotation: Family<ReplicaLabels, Gauge>,
    replica_reads: Family<ReplicaReadLabels, Counter>,
    routed_to_primary: Family<ReasonLabels, Counter>,
    shard_map_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    shards_paused: Gauge,
    shard_writes_refused: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaReadLabels {
    replica: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strata");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = HistogramFamily::<HttpLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let db_duration = HistogramFamily::<DbLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let db_pool = Family::<PoolLabels, Gauge>::default();
        let hash_queue = Gauge::default();
        registry.register("http_requests", "HTTP requests by route, method and status", http_requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", http_duration.clone());
        registry.register("db_query_duration_seconds", "Storage call latency by operation", db_duration.clone());
        registry.register("db_pool_connections", "Storage connections by state", db_pool.clone());
        let db_pool_acquires = Counter::default();
        let db_pool_wait = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register("db_pool_acquires", "Storage connections handed out by the pool", db_pool_acquires.clone());
        registry.register(
            "db_pool_wait_seconds",
            "Time callers waited for a storage connection (included in strata_db_query_duration_seconds)",
            db_pool_wait.clone(),
        );
        let db_pool_hold = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "db_pool_hold_seconds",
            "Time storage connections were held by their callers (busy): every storage call's cost, whoever made it",
            db_pool_hold.clone(),
        );
        let replica_lag = Family::<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "db_replica_lag_seconds",
            "How far each read replica was behind the primary at its last probe",
            replica_lag.clone(),
        );
        let replica_in_rotation = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "db_replica_in_rotation",
            "1 while a read replica answers and is within database.max_replica_lag_ms",
            replica_in_rotation.clone(),
        );
        let replica_reads = Family::<ReplicaReadLabels, Counter>::default();
        registry.register(
            "db_replica_reads",
            "Routed reads each replica answered (ok) or failed",
            replica_reads.clone(),
        );
        let routed_to_primary = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "db_reads_routed_to_primary",
            "Routed hot reads the primary answered, by why no replica did",
            routed_to_primary.clone(),
        );
        let shard_map_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "db_shard_map_age_seconds",
            "Time since this instance last read the shard map (sharded stores; writes are refused past 1 s)",
            shard_map_age.clone(),
        );
        let shards_paused = Gauge::default();
        registry.register(
            "db_shards_paused",
            "Logical shards whose writes are paused by a move (copying or switching)",
            shards_paused.clone(),
        );
        let shard_writes_refused = Counter::default();
        registry.register(
            "db_shard_writes_refused",
            "Writes answered 503 because their logical shard was moving or the shard map was too old",
            shard_writes_refused.clone(),
        );
        let http_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled now (server-side Little's law: in flight = throughput × time in server)",
            http_in_flight.clone(),
        );
        registry.register("password_hash_queue", "Requests waiting for a password hashing slot", hash_queue.clone());
        let cache_lookups = Family::<CacheLookupLabels, Counter>::default();
        let cache_tier_ops = Family::<CacheTierLabels, Counter>::default();
        let cache_endpoint_degraded = Family::<CacheEndpointLabels, Gauge>::default();
        let cache_degraded = Gauge::default();
        registry.register(
            "cache_lookups",
            "Session and user lookups by cache outcome (hit, negative_hit, miss = database read, error)",
            cache_lookups.clone(),
        );
        registry.register(
            "cache_tier_operations",
            "Cache operations per tier (l1, l2) and outcome",
            cache_tier_ops.clone(),
        );
        registry.register(
            "cache_endpoint_degraded",
            "1 while a cache server's circuit breaker is open or probing",
            cache_endpoint_degraded.clone(),
        );
        registry.register(
            "cache_degraded",
            "Cache servers currently degraded (0 = healthy; requests are served from the database meanwhile)",
            cache_degraded.clone(),
        );
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        let connection_timeouts = Family::<PhaseLabels, Counter>::default();
        registry.register("http_connections_open", "Client connections currently open", connections_open.clone());
        registry.register(
            "http_connections_refused",
            "Connections answered 503 and closed because http.max_connections were open",
            connections_refused.clone(),
        );
        registry.register(
            "http_connection_timeouts",
            "Connections closed by a timeout, by phase (header = request head too slow, idle = keep-alive idle)",
            connection_timeouts.clone(),
        );
        let events_published = Counter::default();
        let events_publish_failures = Counter::default();
        let events_publish_duration = latency_histogram();
        let outbox_backlog = Gauge::default();
        let outbox_backlog_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let relay_partitions = Gauge::default();
        let listener_events = Family::<ListenerLabels, Counter>::default();
        let listener_lag =
            HistogramFamily::<ListenerNameLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("events_published", "Outbox events published to the event bus", events_published.clone());
        registry.register(
            "events_publish_failures",
            "Publish attempts the event bus refused or did not confirm (retried with backoff)",
            events_publish_failures.clone(),
        );
        registry.register(
            "events_publish_duration_seconds",
            "Time to publish one outbox batch and have the broker confirm it",
            events_publish_duration.clone(),
        );
        registry.register("outbox_backlog", "Outbox rows not yet published", outbox_backlog.clone());
        registry.register(
            "outbox_backlog_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            outbox_backlog_age.clone(),
        );
        registry.register(
            "relay_partitions",
            "Outbox partitions this instance's relay holds",
            relay_partitions.clone(),
        );
        registry.register(
            "listener_events",
            "Events handled by each listener, by outcome (applied, failed = redelivered later)",
            listener_events.clone(),
        );
        registry.register(
            "listener_lag_seconds",
            "Per batch, time from the oldest event's commit to its listener applying it",
            listener_lag.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabels, Counter>::default();
        let webhook_duration = latency_histogram();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, retry, failed = dead-lettered or 410, rate_limited = postponed)",
            webhook_attempts.clone(),
        );
        registry.register(
            "webhook_attempt_duration_seconds",
            "Time from connect to the endpoint's answer, per attempt",
            webhook_duration.clone(),
        );
        let mails = Family::<MailLabels, Counter>::default();
        registry.register(
            "mails",
            "Mails by template and outcome (sent; retry = not accepted, tried again later; failed = refused for good or out of attempts; expired = its link expired before it could be sent)",
            mails.clone(),
        );
        let trace_spans_exported = Counter::default();
        registry.register("trace_spans_exported", "Trace spans the collector accepted", trace_spans_exported.clone());
        let trace_spans_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Trace spans dropped (queue_full: the exporter fell behind; rejected: the collector refused them; unreachable: no answer after retries)",
            trace_spans_dropped.clone(),
        );
        // The runtime's own counters, read at scrape time: what tells an async server's
        // saturation (a busy runtime on an idle CPU means blocking code on the workers).
        registry.register_collector(Box::new(TokioRuntime));
        Metrics {
            trace_spans_exported,
            trace_spans_dropped,
            mails,
            webhook_attempts,
            webhook_duration,
            events_published,
            events_publish_failures,
            events_publish_duration,
            outbox_backlog,
            outbox_backlog_age,
            relay_partitions,
            listener_events,
            listener_lag,
            connections_open,
            connections_refused,
            connection_timeouts,
            registry,
            http_requests,
            http_duration,
            db_duration,
            db_pool,
            db_pool_acquires,
            db_pool_wait,
            db_pool_hold,
            replica_lag,
            replica_in_rotation,
            replica_reads,
            routed_to_primary,
            shard_map_age,
            shards_paused,
            shard_writes_refused,
            hash_queue,
            http_in_flight,
            cache_lookups,
            cache_tier_ops,
            cache_endpoint_degraded,
            cache_degraded,
            degraded_endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_timed_out(&self, phase: &'static str) {
        self.connection_timeouts.get_or_create(&PhaseLabels { phase }).inc();
    }

    /// Counts a request in flight until the guard drops (also when the client goes away and
    /// the request's future is dropped mid-way).
    pub fn in_flight(&self) -> InFlight<'_> {
        self.http_in_flight.inc();
        InFlight(&self.http_in_flight)
    }

    pub fn observe_http(&self, route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
        let labels = HttpLabels { route, method, status };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Refreshes the read-replica families from the store's counts (scrape time).
    pub fn observe_read_routing(&self, routing: &strata_core::ports::ReadRouting) {
        for r in &routing.replicas {
            let replica = ReplicaLabels { replica: r.name.clone() };
            self.replica_lag.get_or_create(&replica).set(r.lag_seconds);
            self.replica_in_rotation.get_or_create(&replica).set(i64::from(r.in_rotation));
            for (outcome, total) in [("ok", r.reads), ("error", r.errors)] {
                let counter = self.replica_reads.get_or_create(&ReplicaReadLabels { replica: r.name.clone(), outcome });
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        for (reason, total) in &routing.primary {
            let counter = self.routed_to_primary.get_or_create(&ReasonLabels { reason });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    pub fn observe_shard_routing(&self, routing: &strata_core::ports::ShardRouting) {
        self.shard_map_age.set(routing.map_age_seconds);
        self.shards_paused.set(routing.paused as i64);
        self.shard_writes_refused.inc_by(routing.writes_refused.saturating_sub(self.shard_writes_refused.get()));
    }

    /// Prometheus text exposition, with scrape-time gauges refreshed first.
    pub fn render(&self, pool: PoolStats, hash_queue: usize) -> String {
        self.db_pool.get_or_create(&PoolLabels { state: "size" }).set(pool.size as i64);
        self.db_pool.get_or_create(&PoolLabels { state: "idle" }).set(pool.idle as i64);
        self.db_pool.get_or_create(&PoolLabels { state: "waiting" }).set(pool.waiting as i64);
        self.hash_queue.set(hash_queue as i64);
        // The store counts; the counters follow (they only ever grow by the difference).
        self.db_pool_acquires.inc_by(pool.acquires.saturating_sub(self.db_pool_acquires.get()));
        for (counter, total) in [(&self.db_pool_wait, pool.wait_seconds), (&self.db_pool_hold, pool.hold_seconds)] {
            let new = total - counter.get();
            if new > 0.0 {
                counter.inc_by(new);
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl StoreObserver for Metrics {
    fn observe(&self, operation: &'static str, elapsed: Duration, outcome: Result<(), &RepoError>) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(RepoError::Unavailable(_)) => "unavailable",
            Err(RepoError::Internal(_)) => "error",
            Err(_) => "rejected",
        };
        self.db_duration.get_or_create(&DbLabels { op: operation, outcome }).observe(elapsed.as_secs_f64());
    }
}

impl CacheObserver for Metrics {
    fn lookup(&self, kind: &'static str, outcome: &'static str) {
        self.cache_lookups.get_or_create(&CacheLookupLabels { kind, outcome }).inc();
    }

    fn tier(&self, tier: &'static str, op: &'static str, outcome: &'static str) {
        self.cache_tier_ops.get_or_create(&CacheTierLabels { tier, op, outcome }).inc();
    }

    fn endpoint(&self, endpoint: &str, degraded: bool) {
        self.cache_endpoint_degraded
            .get_or_create(&CacheEndpointLabels { endpoint: endpoint.to_owned() })
            .set(i64::from(degraded));
        let mut all = self.degraded_endpoints.lock();
        all.insert(endpoint.to_owned(), degraded);
        self.cache_degraded.set(all.values().filter(|d| **d).count() as i64);
    }
}

impl strata_core::trace::TraceObserver for Metrics {
    fn exported(&self, spans: usize) {
        self.trace_spans_exported.inc_by(spans as u64);
    }

    fn dropped(&self, reason: &'static str, spans: usize) {
        self.trace_spans_dropped.get_or_create(&ReasonLabels { reason }).inc_by(spans as u64);
    }
}

impl strata_core::relay::RelayObserver for Metrics {
    fn published(&self, events: usize, elapsed: Duration) {
        self.events_published.inc_by(events as u64);
        self.events_publish_duration.observe(elapsed.as_secs_f64());
    }

    fn publish_failed(&self, _: &strata_core::events::BusError) {
        self.events_publish_failures.inc();
    }

    fn backlog(&self, backlog: strata_core::domain::Backlog, now: strata_core::domain::Timestamp) {
        self.outbox_backlog.set(backlog.count as i64);
        let age = backlog.oldest.map_or(0.0, |t| (now.micros() - t.micros()).max(0) as f64 / 1e6);
        self.outbox_backlog_age.set(age);
    }

    fn partitions_held(&self, count: usize) {
        self.relay_partitions.set(count as i64);
    }
}

impl strata_core::worker::ListenerObserver for Metrics {
    fn batch(&self, listener: &'static str, outcome: &'static str, events: usize, lag: Duration) {
        self.listener_events.get_or_create(&ListenerLabels { listener, outcome }).inc_by(events as u64);
        if outcome == "applied" {
            self.listener_lag.get_or_create(&ListenerNameLabels { listener }).observe(lag.as_secs_f64());
        }
    }
}

impl strata_core::mail::MailObserver for Metrics {
    fn mail(&self, template: &str, outcome: &'static str) {
        self.mails.get_or_create(&MailLabels { template: template.to_owned(), outcome }).inc();
    }
}

impl strata_core::webhooks::WebhookObserver for Metrics {
    fn attempt(&self, outcome: &'static str, duration: Duration) {
        self.webhook_attempts.get_or_create(&OutcomeLabels { outcome }).inc();
        if outcome != "rate_limited" {
            self.webhook_duration.observe(duration.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.observe_http("/v1/users/{id}", "GET", 200, Duration::from_micros(300));
        m.observe("user_by_id", Duration::from_micros(40), Ok(()));
        let text = m.render(PoolStats { size: 3, idle: 2, ..PoolStats::default() }, 0);
        assert!(
            text.contains(r#"strata_http_requests_total{route="/v1/users/{id}",method="GET",status="200"} 1"#),
            "{text}"
        );
        assert!(text.contains("strata_http_request_duration_seconds_bucket"));
        assert!(text.contains(r#"strata_db_query_duration_seconds_count{op="user_by_id",outcome="ok"} 1"#));
        assert!(text.contains(r#"strata_db_pool_connections{state="size"} 3"#));
    }

    #[test]
    fn renders_cache_metrics() {
        let m = Metrics::new();
        m.lookup("session", "hit");
        m.lookup("session", "hit");
        m.tier("l2", "get", "error");
        m.endpoint("redis primary 127.0.0.1:6379", true);
        m.endpoint("redis replica 127.0.0.1:6380", false);
        let text = m.render(PoolStats::default(), 0);
        assert!(text.contains(r#"strata_cache_lookups_total{kind="session",outcome="hit"} 2"#), "{text}");
        assert!(text.contains(r#"strata_cache_tier_operations_total{tier="l2",op="get",outcome="error"} 1"#));
        assert!(text.contains(r#"strata_cache_endpoint_degraded{endpoint="redis primary 127.0.0.1:6379"} 1"#));
        assert!(text.contains("strata_cache_degraded 1"), "{text}");
        m.endpoint("redis primary 127.0.0.1:6379", false);
        assert!(m.render(PoolStats::default(), 0).contains("strata_cache_degraded 0"));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

/// Tokio runtime metrics (the stable subset of `tokio::runtime::RuntimeMetrics`), read from
/// the runtime that serves the scrape. Per-worker series are bounded by the worker count.
/// Busy ratio per worker = `rate(strata_tokio_worker_busy_seconds_total[1m])`.
#[derive(Debug)]
struct TokioRuntime;

impl prometheus_client::collector::Collector for TokioRuntime {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        // A scrape outside a runtime (unit tests of the text) has nothing to report.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Ok(());
        };
        let m = handle.metrics();
        let gauges: [(&str, &str, usize); 3] = [
            ("tokio_workers", "Tokio worker threads", m.num_workers()),
            ("tokio_alive_tasks", "Tasks alive on the Tokio runtime", m.num_alive_tasks()),
            (
                "tokio_global_queue_depth",
                "Tasks waiting in the Tokio runtime's global (injection) queue",
                m.global_queue_depth(),
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value as i64).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let workers: Vec<WorkerLabels> = (0..m.num_workers()).map(|w| WorkerLabels { worker: w.to_string() }).collect();
        let mut busy = encoder.encode_descriptor(
            "tokio_worker_busy_seconds",
            "Time each Tokio worker spent polling tasks",
            None,
            MetricType::Counter,
        )?;
        for (w, labels) in workers.iter().enumerate() {
            ConstCounter::new(m.worker_total_busy_duration(w).as_secs_f64()).encode(busy.encode_family(labels)?)?;
        }
        let mut parks = encoder.encode_descriptor(
            "tokio_worker_parks",
            "Times each Tokio worker parked (ran out of work)",
            None,
            MetricType::Counter,
        )?;
        for (w, labels) in workers.iter().enumerate() {
            ConstCounter::new(m.worker_park_count(w)).encode(parks.encode_family(labels)?)?;
        }
        Ok(())
    }
}
