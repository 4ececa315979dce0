//! `kafka://host:port[,host:port…][?partitions=N&replication=N&fetch_wait_ms=N]`: Apache Kafka (or any broker
//! speaking its protocol: Redpanda, tansu in CI), through `rdkafka` — the bindings to librdkafka,
//! Confluent's C client. It is the only Rust-reachable client that has both halves this port
//! needs: the idempotent producer (`enable.idempotence`: retries never duplicate or reorder a
//! partition's records) and the consumer-group protocol with committed offsets. The pure-Rust
//! clients have neither (rskafka: no groups, no idempotence) or are young and thinly maintained
//! (samsa); hand-rolling both over the `kafka-protocol` crate would be writing a Kafka client.
//! The price is librdkafka's C build, about a minute on two cores, without zlib, zstd, SSL or
//! SASL (see the crate's Cargo.toml).
//!
//! **Addresses.** One topic `<ns>.events` (created when first needed with `partitions`,
//! default [`DEFAULT_PARTITIONS`], and `replication`, default [`DEFAULT_REPLICATION`]; an
//! existing topic is used as it is, so an operator may create it beforehand with other
//! settings). A group is the Kafka consumer group `<ns>.events.<group>`.
//!
//! **Wire format.** CloudEvents Kafka binding, binary mode: every attribute a `ce_` header,
//! `content-type: application/json`, the value is `data`, the key is the subject (the
//! `partitionkey`). Keys are hashed with murmur2, as the Java client does, so every producer of
//! the topic sends an aggregate to the same partition.
//!
//! **Guarantees.** `publish` hands the whole batch to librdkafka without waiting, then waits for
//! every delivery report: `acks=all`, idempotent producer, so a partition keeps the order given
//! and librdkafka's own retries are stored once. Kafka has no per-message dedup id: the event id
//! travels as `ce_id`, and a batch the relay re-sends after an error may be stored twice
//! (listeners deduplicate by event id). Per-aggregate order holds because an aggregate's events
//! share a key, hence a partition.
//!
//! Groups: Kafka tracks a group's position as one committed offset per partition, nothing per
//! record, and redelivers only by offset. So a group subscription keeps, per partition it owns,
//! the records it delivered and not yet saw acknowledged. `ack` forgets them and commits
//! (synchronously) the lowest offset still unacknowledged, never past one: a restarted worker,
//! or the member a partition moves to in a rebalance, starts from there and gets every
//! unacknowledged event again (plus possibly some acknowledged ones after the gap). An
//! unacknowledged delivery older than `ack_wait` is redelivered by the subscription that
//! delivered it, from its own copy; seeking the partition back would also re-fetch every later
//! record of that partition. Events published before the group existed are delivered
//! (`auto.offset.reset=earliest`). A partition revoked in a rebalance drops its unacknowledged
//! deliveries here; its new owner redelivers them from the committed offset.
//!
//! Broadcast: a consumer that joins no group (it has a throwaway `group.id` that never commits,
//! so the broker keeps nothing for it) assigned every partition at the high watermark read at
//! `subscribe`: it sees everything published after `subscribe` returned, nothing before.
//!
//! **Failure.** librdkafka connects and reconnects in the background; `open` only fails on a
//! malformed URL. While the broker is away, `publish` fails after `call_timeout`
//! (`message.timeout.ms`), `subscribe` fails (it needs the topic), `fetch` returns
//! [`BusError::Unavailable`] once librdkafka reports every broker down and a metadata probe
//! fails, and a commit fails; all work again once the broker is back.
//!
//! **Limits.** No TLS or SASL compiled in: a URL with credentials is refused. The partition set
//! of a broadcast subscription is fixed at `subscribe` (partitions added later are not read).
//! Transactions are not used (tansu's are unreliable, and the outbox already gives at-least-
//! once). With tansu, topics and offsets live in its storage engine (`.ci/kafka.sh`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use strata_core::events::{BusError, BusOptions, Consumer, Delivery, DeliveryToken, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Partitions of the topic when it is created here: the parallelism a group can have.
pub const DEFAULT_PARTITIONS: i32 = 3;
/// Replication factor of the topic when it is created here: `-1` asks for the broker's
/// `default.replication.factor` (KIP-464), so a cluster gets its own durability setting.
pub const DEFAULT_REPLICATION: i32 = -1;
/// librdkafka's own default, right for Kafka (see [`Settings::fetch_wait_ms`]); against
/// tansu, `fetch_wait_ms=10` keeps p99 under 50 ms (`bench/events.sh` sets it).
pub const DEFAULT_FETCH_WAIT_MS: i32 = 500;
/// The CloudEvents Kafka binding's header prefix.
const HEADER_PREFIX: &str = "ce_";
/// A token packs the partition above the offset; 2^48 offsets per partition is ample.
const OFFSET_BITS: u32 = 48;

pub async fn open(url: &str, options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    let settings = Settings::parse(url)?;
    let topic = topic_name(&options.namespace)?;
    let described = crate::redact_url(url);
    let health = Arc::new(Health::default());
    let producer = new_producer(&settings, options, &health)
        .map_err(|e| BusError::Config(format!("events URL {described}: {e}")))?;
    let admin: AdminClient<BusContext> = settings
        .client_config(options)
        .create_with_context(BusContext { health: health.clone(), role: "admin" })
        .map_err(|e| BusError::Config(format!("events URL {described}: {e}")))?;
    tracing::info!(bus = "kafka", url = %described, %topic, "event bus opened");
    Ok(Arc::new(KafkaBus {
        shared: Arc::new(Shared {
            settings,
            options: options.clone(),
            described,
            topic,
            producer: Mutex::new(ProducerSlot { generation: 0, producer }),
            admin,
            health,
            topic_ready: OnceCell::new(),
        }),
    }))
}

fn new_producer(
    settings: &Settings,
    options: &BusOptions,
    health: &Arc<Health>,
) -> Result<FutureProducer<BusContext>, KafkaError> {
    settings
        .client_config(options)
        // The idempotent producer implies acks=all, bounded in-flight requests and retries;
        // acks is spelled out because it is what "durably confirmed" rests on.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", millis(options.call_timeout))
        .set("request.timeout.ms", millis(options.call_timeout))
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create_with_context(BusContext { health: health.clone(), role: "producer" })
}

/// What the URL says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settings {
    /// `host:port,host:port`, as librdkafka's `bootstrap.servers` takes it.
    bootstrap: String,
    partitions: i32,
    replication: i32,
    /// librdkafka's `fetch.wait.max.ms`: how long a fetch may wait for data. Kafka answers as
    /// soon as data arrives, so this only sets the idle poll rate there; a broker that holds
    /// every fetch to the limit (tansu does) adds it to every event's latency, which at
    /// librdkafka's default of 500 ms measured p50 ≈ 400 ms end to end.
    fetch_wait_ms: i32,
}

impl Settings {
    fn parse(url: &str) -> Result<Settings, BusError> {
        let bad = |why: &str| BusError::Config(format!("events URL {}: {why}", crate::redact_url(url)));
        let rest = url.strip_prefix("kafka://").ok_or_else(|| bad("expected kafka://host:port"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.contains('@') {
            return Err(bad("credentials given, but SASL is not compiled in"));
        }
        let mut servers = Vec::new();
        for address in hosts.split(',').map(str::trim) {
            let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("every broker needs host:port"))?;
            if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
                return Err(bad(&format!("{address:?} is not host:port")));
            }
            servers.push(address);
        }
        let mut settings = Settings {
            bootstrap: servers.join(","),
            partitions: DEFAULT_PARTITIONS,
            replication: DEFAULT_REPLICATION,
            fetch_wait_ms: DEFAULT_FETCH_WAIT_MS,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = value.parse::<i32>().map_err(|_| bad(&format!("{key} must be a number")))?;
            match key {
                "partitions" if number >= 1 => settings.partitions = number,
                "replication" if number >= 1 || number == -1 => settings.replication = number,
                "fetch_wait_ms" if (1..=60_000).contains(&number) => settings.fetch_wait_ms = number,
                "partitions" | "replication" | "fetch_wait_ms" => {
                    return Err(bad(&format!("{key}={value} is out of range")));
                }
                _ => {
                    return Err(bad(&format!(
                        "unknown parameter {key} (expected partitions, replication, fetch_wait_ms)"
                    )));
                }
            }
        }
        Ok(settings)
    }

    /// What every client (producer, admin, consumers) shares: where, and how long to wait.
    fn client_config(&self, options: &BusOptions) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "strata")
            // librdkafka's minimums: 10 ms and 1 s.
            .set("socket.timeout.ms", millis(options.call_timeout.max(Duration::from_millis(10))))
            .set("socket.connection.setup.timeout.ms", millis(options.call_timeout.max(Duration::from_secs(1))))
            // The default backs off to 10 s between reconnects; a restarted broker should be
            // back in use within a second or so.
            .set("reconnect.backoff.max.ms", "1000")
            // Idle connections closed by the broker are routine, not warnings.
            .set("log.connection.close", "false");
        config
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// `<ns>.events`, checked against Kafka's topic name rules so a bad namespace fails at `open`.
fn topic_name(namespace: &str) -> Result<String, BusError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 200
        && namespace.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(BusError::Config(format!(
            "events namespace {namespace:?}: Kafka topic names take letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(format!("{namespace}.events"))
}

/// Whether librdkafka said every broker is unreachable; cleared by a successful probe.
#[derive(Default)]
struct Health {
    all_brokers_down: AtomicBool,
}

/// librdkafka's callbacks: its logs and errors go to `tracing`, with fields.
struct BusContext {
    health: Arc<Health>,
    role: &'static str,
}

impl ClientContext for BusContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(self.role, level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        note_error(&self.health, self.role, &error, reason);
    }
}

/// The broadcast consumer joins no group, so it has no rebalances to hear of.
impl ConsumerContext for BusContext {}

fn log_librdkafka(role: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(bus = "kafka", client = role, facility, message, "librdkafka")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(bus = "kafka", client = role, facility, message, "librdkafka"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(bus = "kafka", client = role, facility, message, "librdkafka")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(bus = "kafka", client = role, facility, message, "librdkafka"),
    }
}

fn note_error(health: &Health, role: &str, error: &KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
        health.all_brokers_down.store(true, Ordering::Relaxed);
    }
    tracing::warn!(bus = "kafka", client = role, %error, reason, "kafka client error");
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("kafka {what}: {error}"))
}

struct KafkaBus {
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    options: BusOptions,
    described: String,
    topic: String,
    producer: Mutex<ProducerSlot>,
    admin: AdminClient<BusContext>,
    health: Arc<Health>,
    /// Set once the topic is known to exist; a failed attempt leaves it unset for the next call.
    topic_ready: OnceCell<()>,
}

/// The producer in use; replaced after a failed publish (see [`Shared::replace_producer`]).
struct ProducerSlot {
    generation: u64,
    producer: FutureProducer<BusContext>,
}

impl Shared {
    fn producer(&self) -> (u64, FutureProducer<BusContext>) {
        let slot = self.producer.lock();
        (slot.generation, slot.producer.clone())
    }

    /// After a publish failed, the next one starts a new idempotent session (a new producer
    /// id) instead of continuing this one. When a record times out, librdkafka bumps the
    /// producer epoch on its own (KIP-360) and sends the next records with it; Kafka accepts
    /// that, but tansu 0.6 does not (its SQLite engine panics and stops serving produce
    /// requests; its memory engine answers ProducerFenced, fatal to the producer). A fresh
    /// producer costs one InitProducerId and loses nothing: the failed batch is re-sent as new
    /// records either way. `generation` keeps concurrent failures from replacing it twice.
    fn replace_producer(&self, failed: u64) {
        let mut slot = self.producer.lock();
        if slot.generation != failed {
            return;
        }
        match new_producer(&self.settings, &self.options, &self.health) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut slot.producer, fresh);
                slot.generation += 1;
                // Dropping a producer purges and flushes it (up to 500 ms): not on a worker.
                drop_off_runtime(old);
                tracing::info!(bus = "kafka", topic = %self.topic, generation = slot.generation,
                    "producer replaced after a failed publish");
            }
            Err(e) => tracing::warn!(bus = "kafka", error = %e, "could not replace the producer"),
        }
    }

    async fn ensure_topic(&self) -> Result<(), BusError> {
        self.topic_ready.get_or_try_init(|| self.create_topic()).await.map(|_| ())
    }

    async fn create_topic(&self) -> Result<(), BusError> {
        let topic =
            NewTopic::new(&self.topic, self.settings.partitions, TopicReplication::Fixed(self.settings.replication));
        let admin_options = AdminOptions::new()
            .request_timeout(Some(self.options.call_timeout))
            .operation_timeout(Some(self.options.call_timeout));
        let created = tokio::time::timeout(
            self.options.call_timeout,
            self.admin.create_topics(std::iter::once(&topic), &admin_options),
        )
        .await
        .map_err(|_| unavailable("create topic", "timed out"))?
        .map_err(|e| unavailable("create topic", e))?;
        for result in created {
            match result {
                Ok(_) => tracing::info!(bus = "kafka", topic = %self.topic, partitions = self.settings.partitions,
                    replication = self.settings.replication, "topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((
                    _,
                    code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::PolicyViolation),
                )) => {
                    return Err(BusError::Config(format!("kafka topic {}: {code}", self.topic)));
                }
                Err((_, code)) => return Err(unavailable("create topic", code)),
            }
        }
        Ok(())
    }

    /// The topic's partition ids, retried until `call_timeout`: right after creation the
    /// metadata may not list them yet.
    async fn partitions(&self) -> Result<Vec<i32>, BusError> {
        let deadline = Instant::now() + self.options.call_timeout;
        loop {
            let (_, producer) = self.producer();
            let topic = self.topic.clone();
            let timeout = self.options.call_timeout;
            let found = tokio::task::spawn_blocking(move || {
                let metadata = producer.client().fetch_metadata(Some(&topic), timeout)?;
                let ids: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                Ok::<_, KafkaError>(ids)
            })
            .await
            .map_err(|e| unavailable("metadata", e))?;
            match found {
                Ok(ids) if !ids.is_empty() => return Ok(ids),
                Ok(_) if Instant::now() < deadline => {}
                Ok(_) => return Err(unavailable("metadata", format!("topic {} has no partitions", self.topic))),
                Err(e) if Instant::now() >= deadline => return Err(unavailable("metadata", e)),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After librdkafka reported every broker down: whether a broker answers now.
    async fn probe(&self) -> Result<(), BusError> {
        if !self.health.all_brokers_down.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (_, producer) = self.producer();
        let timeout = self.options.call_timeout;
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| unavailable("metadata", e))?
            .map_err(|e| unavailable("metadata", e))?;
        self.health.all_brokers_down.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// A consumer's configuration; `group_id` is the Kafka group (see the module doc for the
    /// broadcast consumer's throwaway one).
    fn consumer_config(&self, group_id: &str, reset: &str) -> ClientConfig {
        let mut config = self.settings.client_config(&self.options);
        config
            .set("group.id", group_id)
            // Offsets move only when the application acknowledges (see `GroupSubscription::ack`).
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            // A crashed member's partitions move on after 10 s rather than 45 s, and a member
            // learns of a rebalance within a second.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // librdkafka prefetches up to this per consumer; the default is 64 MiB.
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.wait.max.ms", self.settings.fetch_wait_ms.to_string());
        config
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    fn describe(&self) -> String {
        format!("{} (Kafka topic {})", self.shared.described, self.shared.topic)
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        shared.ensure_topic().await?;
        let started = Instant::now();
        let (generation, producer) = shared.producer();
        let sent = tokio::time::timeout(shared.options.call_timeout, async {
            let mut in_flight = Vec::with_capacity(events.len());
            for event in events {
                let mut headers = OwnedHeaders::new_with_capacity(11)
                    .insert(Header { key: "content-type", value: Some("application/json") });
                for (name, value) in event.binary_headers(HEADER_PREFIX) {
                    headers = headers.insert(Header { key: &name, value: Some(&value) });
                }
                let mut record =
                    FutureRecord::to(&shared.topic).key(&event.subject).payload(&event.data).headers(headers);
                // Enqueue without waiting for delivery; only a full local queue makes us wait
                // (and then for the queue, not for this batch's acks).
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => break in_flight.push(delivery),
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(unavailable("publish", e)),
                    }
                }
            }
            for delivery in in_flight {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(unavailable("publish", e)),
                    Err(_) => return Err(unavailable("publish", "producer went away")),
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| unavailable("publish", "no delivery report within call_timeout"))
        .and_then(|r| r);
        match &sent {
            Ok(()) => tracing::debug!(bus = "kafka", topic = %shared.topic, events = events.len(),
                elapsed_ms = started.elapsed().as_millis() as u64, "published"),
            Err(e) => {
                tracing::warn!(bus = "kafka", topic = %shared.topic, events = events.len(), error = %e, "publish failed");
                drop(producer);
                shared.replace_producer(generation);
            }
        }
        sent
    }

    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        let shared = &self.shared;
        shared.ensure_topic().await?;
        match consumer {
            Consumer::Group(name) => {
                let group_id = format!("{}.{name}", shared.topic);
                let state = Arc::new(Mutex::new(GroupState::default()));
                let context =
                    GroupContext { health: shared.health.clone(), state: state.clone(), group: group_id.clone() };
                let consumer: StreamConsumer<GroupContext> = shared
                    .consumer_config(&group_id, "earliest")
                    .create_with_context(context)
                    .map_err(|e| BusError::Config(format!("kafka group {group_id}: {e}")))?;
                consumer.subscribe(&[&shared.topic]).map_err(|e| unavailable("subscribe", e))?;
                tracing::info!(bus = "kafka", topic = %shared.topic, group = %group_id, "group subscription started");
                Ok(Box::new(GroupSubscription { shared: shared.clone(), consumer: Some(Arc::new(consumer)), state }))
            }
            Consumer::Broadcast => {
                let partitions = shared.partitions().await?;
                // Never committed and never joined (assign, not subscribe), so the broker keeps
                // nothing under this id; unique so two instances never share anything.
                let group_id = format!("{}.broadcast.{}", shared.topic, uuid::Uuid::now_v7().simple());
                let consumer: StreamConsumer<BusContext> = shared
                    .consumer_config(&group_id, "latest")
                    .create_with_context(BusContext { health: shared.health.clone(), role: "broadcast" })
                    .map_err(|e| BusError::Config(format!("kafka broadcast consumer: {e}")))?;
                let consumer = Arc::new(consumer);
                // Start at the high watermarks read now, not at "end" resolved whenever the
                // fetcher starts: an event published right after `subscribe` returns is seen.
                let ends = {
                    let consumer = consumer.clone();
                    let topic = shared.topic.clone();
                    let timeout = shared.options.call_timeout;
                    tokio::task::spawn_blocking(move || {
                        partitions
                            .into_iter()
                            .map(|p| consumer.fetch_watermarks(&topic, p, timeout).map(|(_, high)| (p, high)))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .await
                    .map_err(|e| unavailable("watermarks", e))?
                    .map_err(|e| unavailable("watermarks", e))?
                };
                let mut assignment = TopicPartitionList::with_capacity(ends.len());
                for (partition, high) in &ends {
                    assignment
                        .add_partition_offset(&shared.topic, *partition, Offset::Offset(*high))
                        .map_err(|e| unavailable("assign", e))?;
                }
                consumer.assign(&assignment).map_err(|e| unavailable("assign", e))?;
                tracing::info!(bus = "kafka", topic = %shared.topic, partitions = ends.len(), "broadcast subscription started");
                Ok(Box::new(BroadcastSubscription {
                    shared: shared.clone(),
                    consumer: Some(consumer),
                    next: ends.into_iter().collect(),
                }))
            }
        }
    }
}

/// Reads an event from a record; `None` (logged) for a record that is not a Strata event.
fn decode(message: &BorrowedMessage<'_>) -> Option<Event> {
    let mut headers = Vec::new();
    if let Some(h) = message.headers() {
        for header in h.iter() {
            if let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                headers.push((header.key, value));
            }
        }
    }
    match Event::from_binary(HEADER_PREFIX, headers, message.payload().unwrap_or_default()) {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::warn!(bus = "kafka", topic = message.topic(), partition = message.partition(),
                offset = message.offset(), error = %e, "skipping a record that is not a Strata event");
            None
        }
    }
}

fn token(partition: i32, offset: i64) -> DeliveryToken {
    DeliveryToken::Number(((partition as u64) << OFFSET_BITS) | (offset as u64 & ((1 << OFFSET_BITS) - 1)))
}

fn untoken(token: &DeliveryToken) -> Option<(i32, i64)> {
    match token {
        DeliveryToken::Number(n) => Some(((n >> OFFSET_BITS) as i32, (n & ((1 << OFFSET_BITS) - 1)) as i64)),
        DeliveryToken::Text(_) => None,
    }
}

/// What a group subscription remembers of the partitions it owns.
#[derive(Default)]
struct GroupState {
    partitions: HashMap<i32, PartitionState>,
}

struct PartitionState {
    /// One past the highest offset delivered: a record below it was seen already.
    next: i64,
    /// Delivered, not acknowledged, by offset.
    pending: BTreeMap<i64, Pending>,
    /// The offset last committed (or the first one seen, below which nothing is ours).
    committed: i64,
}

struct Pending {
    due: Instant,
    event: Event,
}

impl PartitionState {
    /// The offset the group may resume from: the oldest unacknowledged, else past the last.
    fn resume_at(&self) -> i64 {
        self.pending.keys().next().copied().unwrap_or(self.next)
    }
}

impl GroupState {
    /// A record fetched from Kafka: delivered unless it was seen already (a re-fetch).
    fn accept(&mut self, partition: i32, offset: i64, event: Option<Event>, due: Instant) -> Option<Delivery> {
        let p = self.partitions.entry(partition).or_insert(PartitionState {
            next: offset,
            pending: BTreeMap::new(),
            committed: offset,
        });
        if offset < p.next {
            return None;
        }
        p.next = offset + 1;
        // A record that is not an event counts as acknowledged: it must not hold the offset back.
        let event = event?;
        p.pending.insert(offset, Pending { due, event: event.clone() });
        Some(Delivery { event, token: token(partition, offset) })
    }

    /// Overdue deliveries, oldest first per partition, due again `ack_wait` from now.
    fn overdue(&mut self, max: usize, now: Instant, ack_wait: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (partition, p) in &mut self.partitions {
            for (offset, pending) in p.pending.iter_mut() {
                if out.len() >= max {
                    return out;
                }
                if pending.due <= now {
                    pending.due = now + ack_wait;
                    out.push(Delivery { event: pending.event.clone(), token: token(*partition, *offset) });
                }
            }
        }
        out
    }

    fn next_due(&self) -> Option<Instant> {
        self.partitions.values().flat_map(|p| p.pending.values().map(|d| d.due)).min()
    }

    /// Partitions whose resume point moved past what was committed.
    fn to_commit(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter(|(_, p)| p.resume_at() > p.committed)
            .map(|(partition, p)| (*partition, p.resume_at()))
            .collect()
    }
}

/// The group consumer's callbacks: logs, errors, and forgetting revoked partitions.
struct GroupContext {
    health: Arc<Health>,
    state: Arc<Mutex<GroupState>>,
    group: String,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka("group", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        note_error(&self.health, "group", &error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            // The next owner resumes from the committed offset and redelivers what was
            // unacknowledged here; delivering it from here too would only add duplicates.
            let mut state = self.state.lock();
            for element in revoked.elements() {
                state.partitions.remove(&element.partition());
            }
            tracing::info!(bus = "kafka", group = %self.group, partitions = revoked.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(bus = "kafka", group = %self.group, ?partitions, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(bus = "kafka", group = %self.group, error = %e, "rebalance failed"),
        }
    }
}

struct GroupSubscription {
    shared: Arc<Shared>,
    /// `Some` until dropped (see `Drop`).
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    state: Arc<Mutex<GroupState>>,
}

impl GroupSubscription {
    fn consumer(&self) -> Result<&Arc<StreamConsumer<GroupContext>>, BusError> {
        self.consumer.as_ref().ok_or_else(|| unavailable("fetch", "subscription closed"))
    }

    /// Commits every partition whose resume point moved; synchronous (librdkafka's sync
    /// commit), so when it returns the group coordinator has the offsets.
    async fn commit(&self) -> Result<(), BusError> {
        let wanted = self.state.lock().to_commit();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::with_capacity(wanted.len());
        for (partition, offset) in &wanted {
            offsets
                .add_partition_offset(&self.shared.topic, *partition, Offset::Offset(*offset))
                .map_err(|e| unavailable("commit", e))?;
        }
        let consumer = self.consumer()?.clone();
        let committed = tokio::time::timeout(
            self.shared.options.call_timeout,
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)),
        )
        .await
        .map_err(|_| unavailable("commit", "timed out"))?
        .map_err(|e| unavailable("commit", e))?;
        committed.map_err(|e| unavailable("commit", e))?;
        let mut state = self.state.lock();
        for (partition, offset) in wanted {
            // The partition may have been revoked meanwhile; then there is nothing to record.
            if let Some(p) = state.partitions.get_mut(&partition) {
                p.committed = p.committed.max(offset);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Subscription for GroupSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let max = max.max(1);
        let ack_wait = self.shared.options.ack_wait;
        let deadline = Instant::now() + wait;
        let consumer = self.consumer()?.clone();
        let mut out = self.state.lock().overdue(max, Instant::now(), ack_wait);
        loop {
            // Take what librdkafka already prefetched, without waiting.
            while out.len() < max {
                match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                    Ok(Ok(message)) => {
                        let event = decode(&message);
                        let due = Instant::now() + ack_wait;
                        out.extend(self.state.lock().accept(message.partition(), message.offset(), event, due));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(bus = "kafka", topic = %self.shared.topic, error = %e, "fetch error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                break;
            }
            // Nothing yet: wait for a record, the next redelivery or the deadline.
            let wake = self.state.lock().next_due().map_or(deadline, |due| due.min(deadline));
            match tokio::time::timeout_at(wake, consumer.recv()).await {
                Ok(Ok(message)) => {
                    let event = decode(&message);
                    let due = Instant::now() + ack_wait;
                    out.extend(self.state.lock().accept(message.partition(), message.offset(), event, due));
                }
                Ok(Err(e)) => {
                    tracing::warn!(bus = "kafka", topic = %self.shared.topic, error = %e, "fetch error");
                    // Errors are not spun on: a broker that is down keeps reporting them.
                    tokio::time::sleep_until(wake.min(Instant::now() + Duration::from_millis(100))).await;
                }
                Err(_) => out = self.state.lock().overdue(max, Instant::now(), ack_wait),
            }
        }
        if out.is_empty() {
            self.shared.probe().await?;
        }
        Ok(out)
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        {
            let mut state = self.state.lock();
            for (partition, offset) in deliveries.iter().filter_map(|d| untoken(&d.token)) {
                if let Some(p) = state.partitions.get_mut(&partition) {
                    p.pending.remove(&offset);
                }
            }
        }
        // A commit that fails here is retried by the next ack: the resume points are kept.
        self.commit().await
    }
}

impl Drop for GroupSubscription {
    fn drop(&mut self) {
        // Closing a group consumer blocks until it has left the group (so the partitions move
        // on at once instead of after the session timeout): off the async workers.
        if let Some(consumer) = self.consumer.take() {
            drop_off_runtime(consumer);
        }
    }
}

/// Drops a librdkafka client on a blocking thread: closing one waits for the broker.
fn drop_off_runtime<T: Send + 'static>(client: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(client))),
        Err(_) => drop(client),
    }
}

struct BroadcastSubscription {
    shared: Arc<Shared>,
    consumer: Option<Arc<StreamConsumer<BusContext>>>,
    /// Next offset per partition, so a re-fetch never repeats an event.
    next: HashMap<i32, i64>,
}

impl BroadcastSubscription {
    fn accept(&mut self, message: &BorrowedMessage<'_>, out: &mut Vec<Delivery>) {
        let next = self.next.entry(message.partition()).or_insert(message.offset());
        if message.offset() < *next {
            return;
        }
        *next = message.offset() + 1;
        if let Some(event) = decode(message) {
            out.push(Delivery { event, token: token(message.partition(), message.offset()) });
        }
    }
}

#[async_trait]
impl Subscription for BroadcastSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let consumer = self.consumer.clone().ok_or_else(|| unavailable("fetch", "subscription closed"))?;
        let mut out = Vec::new();
        while out.len() < max {
            let limit = if out.is_empty() { deadline } else { Instant::now() };
            match tokio::time::timeout_at(limit, consumer.recv()).await {
                Ok(Ok(message)) => self.accept(&message, &mut out),
                Ok(Err(e)) => {
                    tracing::warn!(bus = "kafka", topic = %self.shared.topic, error = %e, "broadcast fetch error");
                    if out.is_empty() {
                        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(100))).await;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if out.is_empty() {
            self.shared.probe().await?;
        }
        Ok(out)
    }

    async fn ack(&mut self, _: &[Delivery]) -> Result<(), BusError> {
        Ok(())
    }
}

impl Drop for BroadcastSubscription {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            drop_off_runtime(consumer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_brokers_and_topic_settings() {
        let s = Settings::parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(
            s,
            Settings { bootstrap: "127.0.0.1:9092".into(), partitions: 3, replication: -1, fetch_wait_ms: 500 }
        );
        let s = Settings::parse("kafka://a:1, b:2/?partitions=6&replication=3").unwrap();
        assert_eq!(s, Settings { bootstrap: "a:1,b:2".into(), partitions: 6, replication: 3, fetch_wait_ms: 500 });
        assert!(Settings::parse("kafka://[::1]:9092").is_ok());
        assert_eq!(Settings::parse("kafka://h:1?fetch_wait_ms=10").unwrap().fetch_wait_ms, 10);
        for bad in [
            "kafka://h:1?fetch_wait_ms=0",
            "kafka://",
            "kafka://host",
            "kafka://host:port",
            "kafka://user:pw@host:9092",
            "kafka://h:1?partitions=0",
            "kafka://h:1?colour=blue",
            "nats://h:1",
        ] {
            let err = Settings::parse(bad).unwrap_err();
            assert!(matches!(err, BusError::Config(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn namespaces_must_be_topic_names() {
        assert_eq!(topic_name("strata").unwrap(), "strata.events");
        assert!(topic_name("a b").is_err());
        assert!(topic_name("").is_err());
    }

    #[test]
    fn tokens_round_trip() {
        for (p, o) in [(0, 0), (2, 17), (65_535, (1 << 48) - 1)] {
            assert_eq!(untoken(&token(p, o)), Some((p, o)));
        }
    }

    #[test]
    fn commits_never_pass_an_unacknowledged_delivery() {
        let now = Instant::now();
        let e = |i: u64| strata_core::events::Event {
            id: uuid::Uuid::now_v7(),
            source: "/t".into(),
            event_type: "user.updated".into(),
            time: strata_core::domain::Timestamp(0),
            subject: "s".into(),
            sequence: i,
            traceparent: None,
            data: "{}".into(),
        };
        let mut state = GroupState::default();
        let d: Vec<Delivery> = (10..13).filter_map(|o| state.accept(0, o, Some(e(o as u64)), now)).collect();
        assert_eq!(d.len(), 3);
        assert!(state.accept(0, 11, Some(e(11)), now).is_none(), "a re-fetched record is not delivered twice");
        assert!(state.to_commit().is_empty());
        state.partitions.get_mut(&0).unwrap().pending.remove(&11);
        assert!(state.to_commit().is_empty(), "10 is still unacknowledged");
        state.partitions.get_mut(&0).unwrap().pending.remove(&10);
        assert_eq!(state.to_commit(), vec![(0, 12)]);
        // A foreign record is skipped and does not hold the offset back.
        assert!(state.accept(0, 13, None, now).is_none());
        state.partitions.get_mut(&0).unwrap().pending.remove(&12);
        assert_eq!(state.to_commit(), vec![(0, 14)]);
        let later = now + Duration::from_secs(1);
        state.accept(1, 0, Some(e(1)), now);
        let again = state.overdue(10, later, Duration::from_secs(5));
        assert_eq!(again.len(), 1);
        assert!(state.overdue(10, later, Duration::from_secs(5)).is_empty(), "due again only after ack_wait");
    }
}
