//! `nats://host:port` (comma-separated for a cluster, `user:pass@` or `token@` allowed): NATS
//! JetStream, through `async-nats` — the NATS maintainers' own client, which reconnects in the
//! background, speaks JetStream's API and pipelines publishes with their acks.
//!
//! **Addresses.** One stream `<NS>_EVENTS` (the namespace upper-cased) over the subjects
//! `<ns>.events.>`; an event travels on `<ns>.events.<short type>` (`strata.events.user.created`).
//! A group is the durable pull consumer named after it. The stream (file storage, limits
//! retention, [`STREAM_MAX_AGE`], [`DUPLICATE_WINDOW`]) and the consumers are created when
//! first needed; an existing stream or consumer is used as it is, so an operator may create
//! them beforehand with other limits or replicas.
//!
//! **Wire format.** CloudEvents NATS binding, binary mode: every attribute a `ce-` header,
//! `content-type: application/json`, the body is `data`. `Nats-Msg-Id` is the event id, so a
//! batch the relay re-sends within the duplicate window is stored once.
//!
//! **Guarantees.** `publish` sends the whole batch without waiting, then waits for every
//! JetStream ack (the event is stored); one connection keeps the batch's order. Groups: explicit
//! ack, `ack_wait` from [`BusOptions`], deliver-all (events published before the group existed
//! are delivered), unlimited redeliveries. `ack` publishes the acks and flushes, so when it
//! returns the server has them. `fetch` takes what is already waiting without a round trip of
//! waiting; only when nothing is there does it hold one pull request open for `wait`.
//! Broadcast: an ephemeral push consumer (memory storage, no acks, removed by the server
//! [`BROADCAST_INACTIVE`] after its subscriber went away) that starts after the stream's last
//! sequence at `subscribe`. The subscription tracks the consumer and stream sequences; a gap (a
//! slow subscriber whose buffer overflowed, a reconnect) or silence past the idle heartbeat
//! recreates the consumer from the next stream sequence it has not seen, so a broadcast
//! subscriber misses nothing the stream still holds.
//!
//! **Failure.** The client connects in the background; while the server is away calls fail with
//! [`BusError::Unavailable`] after `call_timeout`, and work again once it is back. A publish
//! that timed out may still be stored later: the re-sent batch is deduplicated by
//! `Nats-Msg-Id`, and listeners deduplicate by event id beyond the window.
//!
//! **Limits.** TLS is not compiled in (no rustls crypto provider, to keep the build small): a
//! server that requires TLS cannot be reached. The server-side features used are those of NATS
//! 2.9.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use strata_core::events::{BusError, BusOptions, Consumer, Delivery, DeliveryToken, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::time::Instant;

/// How long the broker deduplicates re-sent events by `Nats-Msg-Id`. The relay re-sends a
/// failed batch within seconds, so a couple of minutes covers it with room to spare.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the stream keeps an event when the stream is created here; a group further behind
/// than this loses the oldest (the outbox keeps its own copy for its retention period).
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Unacknowledged deliveries a group may have outstanding before the server stops handing out
/// more; above any fetch size the listeners use.
const MAX_ACK_PENDING: i64 = 20_000;
/// Publishes awaiting their JetStream ack, across every caller; more wait for a slot.
const MAX_ACKS_IN_FLIGHT: usize = 20_000;
/// Publishes one `publish` call keeps in flight: it awaits the oldest ack before sending more,
/// so a batch larger than [`MAX_ACKS_IN_FLIGHT`] cannot wait for a slot that only its own
/// unawaited acks would free.
const PUBLISH_WINDOW: usize = 1_024;
/// The server sends a broadcast consumer a heartbeat this often when idle; three missed in a
/// row mean the consumer is gone (server restarted, consumer expired) and is recreated.
const BROADCAST_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the server keeps a broadcast consumer whose subscriber disappeared.
pub const BROADCAST_INACTIVE: Duration = Duration::from_secs(60);

pub async fn open(url: &str, options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    let names = Names::new(&options.namespace)?;
    let addresses = url
        .split(',')
        .map(|address| {
            let address = address.trim();
            let address = if address.contains("://") { address.to_owned() } else { format!("nats://{address}") };
            address
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Config(format!("events URL {}: {e}", crate::redact_url(&address))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let described = crate::redact_url(url);
    let for_events = described.clone();
    let client = async_nats::ConnectOptions::new()
        // Connect in the background: a server that is down at startup delays events, not the API.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(options.call_timeout)
        .request_timeout(Some(options.call_timeout))
        .event_callback(move |event| {
            let url = for_events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(bus = "nats", %url, "event bus connected"),
                    async_nats::Event::Disconnected => tracing::warn!(bus = "nats", %url, "event bus disconnected"),
                    other => tracing::warn!(bus = "nats", %url, event = %other, "event bus connection event"),
                }
            }
        })
        .connect(addresses)
        .await
        .map_err(|e| BusError::Config(format!("events URL {described}: {e}")))?;
    let jetstream = jetstream::context::ContextBuilder::new()
        .timeout(options.call_timeout)
        .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(client.clone());
    tracing::info!(bus = "nats", url = %described, stream = %names.stream, "event bus opened");
    Ok(Arc::new(NatsBus {
        shared: Arc::new(Shared {
            client,
            jetstream,
            names,
            options: options.clone(),
            described,
            stream_ready: AtomicBool::new(false),
        }),
    }))
}

/// Every name derived from the namespace.
struct Names {
    stream: String,
    /// `<ns>.events.`, to which the short type is appended.
    subject_prefix: String,
    /// `<ns>.events.>`
    subjects: String,
}

impl Names {
    fn new(namespace: &str) -> Result<Names, BusError> {
        if !is_name(namespace) {
            return Err(BusError::Config(format!(
                "events namespace {namespace:?}: NATS needs letters, digits, '-' or '_' (it names a stream and a subject token)"
            )));
        }
        Ok(Names {
            stream: format!("{}_EVENTS", namespace.to_uppercase()),
            subject_prefix: format!("{namespace}.events."),
            subjects: format!("{namespace}.events.>"),
        })
    }
}

/// Safe as a stream or consumer name and as one subject token.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Dot-separated tokens of [`is_name`] characters, so it cannot add wildcards or spaces to a subject.
fn is_subject_suffix(suffix: &str) -> bool {
    !suffix.is_empty() && suffix.split('.').all(|token| !token.is_empty() && token.len() <= 64 && is_name(token))
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("nats {what}: {error}"))
}

fn timed_out(what: &str, after: Duration) -> BusError {
    BusError::Unavailable(format!("nats {what}: no answer within {after:?}"))
}

struct NatsBus {
    shared: Arc<Shared>,
}

struct Shared {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    names: Names,
    options: BusOptions,
    described: String,
    /// Set once the stream is known to exist; cleared when a publish finds no stream, so it is
    /// created again (a server that lost its storage, an operator who deleted it).
    stream_ready: AtomicBool,
}

impl Shared {
    async fn ensure_stream(&self) -> Result<(), BusError> {
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = stream::Config {
            name: self.names.stream.clone(),
            subjects: vec![self.names.subjects.clone()],
            description: Some("Strata events (CloudEvents 1.0, binary mode)".to_owned()),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: STREAM_MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: 1,
            ..Default::default()
        };
        let timeout = self.options.call_timeout;
        match tokio::time::timeout(timeout, self.jetstream.get_or_create_stream(config)).await {
            Ok(Ok(_)) => {
                self.stream_ready.store(true, Ordering::Release);
                tracing::debug!(bus = "nats", stream = %self.names.stream, "stream ready");
                Ok(())
            }
            Ok(Err(e)) => Err(unavailable(&format!("stream {} (is JetStream enabled?)", self.names.stream), e)),
            Err(_) => Err(timed_out(&format!("stream {}", self.names.stream), timeout)),
        }
    }

    async fn publish_all(&self, events: &[Event]) -> Result<usize, BusError> {
        let mut acks: std::collections::VecDeque<jetstream::context::PublishAckFuture> =
            std::collections::VecDeque::with_capacity(events.len().min(PUBLISH_WINDOW));
        let mut duplicates = 0;
        for event in events {
            if !is_subject_suffix(&event.event_type) {
                return Err(BusError::Config(format!("event type {:?} cannot be a NATS subject", event.event_type)));
            }
            let mut publish = jetstream::message::PublishMessage::build().payload(event.data.clone().into());
            for (name, value) in event.binary_headers("ce-") {
                publish = publish.header(name, value);
            }
            let publish = publish.header("content-type", "application/json").message_id(event.id.to_string());
            let subject = format!("{}{}", self.names.subject_prefix, event.event_type);
            if acks.len() >= PUBLISH_WINDOW {
                if let Some(oldest) = acks.pop_front() {
                    duplicates += usize::from(oldest.await.map_err(|e| self.publish_error(e))?.duplicate);
                }
            }
            // Queued, not yet acknowledged: the batch goes out without waiting for each ack.
            acks.push_back(self.jetstream.send_publish(subject, publish).await.map_err(|e| self.publish_error(e))?);
        }
        for ack in acks {
            duplicates += usize::from(ack.await.map_err(|e| self.publish_error(e))?.duplicate);
        }
        Ok(duplicates)
    }

    fn publish_error(&self, error: jetstream::context::PublishError) -> BusError {
        if error.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
            self.stream_ready.store(false, Ordering::Release);
        }
        unavailable("publish", error)
    }

    /// Reads a delivered message; `None` (after a warning) for something that is not ours.
    fn decode(&self, message: &async_nats::Message) -> Option<Event> {
        let headers: Vec<(&str, &str)> = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .flat_map(|(name, values)| values.iter().map(move |value| (name.as_ref(), value.as_str())))
            .collect();
        match Event::from_binary("ce-", headers, &message.payload) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(bus = "nats", subject = %message.subject, error = %e, "skipping a message that is not a Strata event");
                None
            }
        }
    }
}

#[async_trait]
impl EventBus for NatsBus {
    fn describe(&self) -> String {
        format!("{} (NATS JetStream, stream {})", self.shared.described, self.shared.names.stream)
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        shared.ensure_stream().await?;
        let timeout = shared.options.call_timeout;
        let duplicates = tokio::time::timeout(timeout, shared.publish_all(events))
            .await
            .map_err(|_| timed_out("publish", timeout))??;
        tracing::debug!(bus = "nats", events = events.len(), duplicates, "published");
        Ok(())
    }

    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        let shared = self.shared.clone();
        shared.ensure_stream().await?;
        match consumer {
            Consumer::Group(group) => {
                if !is_name(group) {
                    return Err(BusError::Config(format!(
                        "group {group:?}: NATS consumer names need letters, digits, '-' or '_'"
                    )));
                }
                let mut subscription = GroupSubscription { shared, group: group.to_owned(), consumer: None };
                subscription.consumer().await?;
                Ok(Box::new(subscription))
            }
            Consumer::Broadcast => {
                let timeout = shared.options.call_timeout;
                let info = tokio::time::timeout(timeout, shared.jetstream.get_stream(&shared.names.stream))
                    .await
                    .map_err(|_| timed_out("stream info", timeout))?
                    .map_err(|e| unavailable("stream info", e))?;
                let mut subscription = BroadcastSubscription {
                    next_stream_sequence: info.cached_info().state.last_sequence + 1,
                    shared,
                    inbox: None,
                    consumer_name: None,
                    consumer_sequence: 0,
                    last_heard: Instant::now(),
                    connects: 0,
                };
                subscription.start().await?;
                Ok(Box::new(subscription))
            }
        }
    }
}

struct GroupSubscription {
    shared: Arc<Shared>,
    group: String,
    /// Looked up (or created) on first use and again after an error, in case the consumer or the
    /// stream was removed meanwhile.
    consumer: Option<consumer::PullConsumer>,
}

impl GroupSubscription {
    async fn consumer(&mut self) -> Result<consumer::PullConsumer, BusError> {
        if let Some(consumer) = &self.consumer {
            return Ok(consumer.clone());
        }
        let shared = &self.shared;
        shared.ensure_stream().await?;
        let config = consumer::pull::Config {
            durable_name: Some(self.group.clone()),
            description: Some(format!("Strata events group {}", self.group)),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: shared.options.ack_wait,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        };
        let timeout = shared.options.call_timeout;
        let lookup = async {
            let stream = shared.jetstream.get_stream_no_info(&shared.names.stream).await.map_err(|e| {
                shared.stream_ready.store(false, Ordering::Release);
                unavailable("stream", e)
            })?;
            stream.get_or_create_consumer(&self.group, config).await.map_err(|e| unavailable("consumer", e))
        };
        let consumer = tokio::time::timeout(timeout, lookup)
            .await
            .map_err(|_| timed_out(&format!("consumer {}", self.group), timeout))??;
        self.consumer = Some(consumer.clone());
        Ok(consumer)
    }

    /// Up to `max` of what the consumer has for us right now, without waiting for more.
    async fn take_waiting(&self, consumer: &consumer::PullConsumer, max: usize) -> Result<Vec<Delivery>, BusError> {
        let batch = consumer.fetch().max_messages(max).messages().await.map_err(|e| unavailable("fetch", e))?;
        self.collect(batch).await
    }

    async fn collect(&self, mut batch: consumer::pull::Batch) -> Result<Vec<Delivery>, BusError> {
        let mut out = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| unavailable("fetch", e))?;
            let Some(reply) = message.reply.clone() else { continue };
            match self.shared.decode(&message) {
                Some(event) => out.push(Delivery { event, token: DeliveryToken::Text(reply.to_string()) }),
                // Not ours and never will be: terminate it instead of seeing it every ack wait.
                None => message.ack_with(jetstream::AckKind::Term).await.map_err(|e| unavailable("term", e))?,
            }
        }
        Ok(out)
    }

    async fn fetch_once(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let consumer = self.consumer().await?;
        let mut out = self.take_waiting(&consumer, max).await?;
        if out.is_empty() && wait >= Duration::from_millis(1) {
            // One open pull request for a single message returns as soon as something arrives
            // (a request for `max` would sit until `max` arrived or `wait` passed)...
            let first =
                consumer.batch().max_messages(1).expires(wait).messages().await.map_err(|e| unavailable("fetch", e))?;
            out = self.collect(first).await?;
            // ...and whatever arrived with it is taken without waiting.
            if !out.is_empty() && max > 1 {
                out.extend(self.take_waiting(&consumer, max - 1).await?);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Subscription for GroupSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let bound = wait + self.shared.options.call_timeout;
        let result = match tokio::time::timeout(bound, self.fetch_once(max.max(1), wait)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out("fetch", bound)),
        };
        if result.is_err() {
            // Look the consumer up again next time: the error may be that it is gone.
            self.consumer = None;
        }
        result
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        let acks = async {
            for delivery in deliveries {
                if let DeliveryToken::Text(reply) = &delivery.token {
                    shared.client.publish(reply.clone(), "+ACK".into()).await.map_err(|e| unavailable("ack", e))?;
                }
            }
            // A flush is a PING/PONG round trip, so the server has processed every ack before it.
            shared.client.flush().await.map_err(|e| unavailable("ack", e))
        };
        let timeout = shared.options.call_timeout;
        tokio::time::timeout(timeout, acks).await.map_err(|_| timed_out("ack", timeout))?
    }
}

struct BroadcastSubscription {
    shared: Arc<Shared>,
    /// The first stream sequence this subscriber has not received: where a recreated consumer starts.
    next_stream_sequence: u64,
    inbox: Option<async_nats::Subscriber>,
    consumer_name: Option<String>,
    /// The last consumer sequence received; the next message must carry this plus one.
    consumer_sequence: u64,
    /// When the consumer was last heard from (a message or a heartbeat).
    last_heard: Instant,
    /// The client's connection count when the consumer was created: after a reconnect the
    /// consumer may be gone with the server's memory, so it is recreated without waiting for
    /// the heartbeats to stop.
    connects: u64,
}

impl BroadcastSubscription {
    /// Creates a consumer that starts at `next_stream_sequence`, subscribed before it exists so
    /// nothing it pushes is missed.
    async fn start(&mut self) -> Result<(), BusError> {
        self.stop();
        let shared = &self.shared;
        let timeout = shared.options.call_timeout;
        let connects = shared.client.statistics().connects.load(Ordering::Relaxed);
        let inbox_subject = shared.client.new_inbox();
        let create = async {
            let inbox =
                shared.client.subscribe(inbox_subject.clone()).await.map_err(|e| unavailable("subscribe", e))?;
            let config = consumer::push::Config {
                deliver_subject: inbox_subject,
                description: Some("Strata events broadcast subscriber".to_owned()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: self.next_stream_sequence },
                ack_policy: consumer::AckPolicy::None,
                idle_heartbeat: BROADCAST_HEARTBEAT,
                inactive_threshold: BROADCAST_INACTIVE,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            };
            let consumer = shared
                .jetstream
                .create_consumer_on_stream(config, &shared.names.stream)
                .await
                .map_err(|e| unavailable("broadcast consumer", e))?;
            Ok::<_, BusError>((inbox, consumer.cached_info().name.clone()))
        };
        let (inbox, name) =
            tokio::time::timeout(timeout, create).await.map_err(|_| timed_out("broadcast consumer", timeout))??;
        tracing::debug!(bus = "nats", consumer = %name, from = self.next_stream_sequence, "broadcast consumer started");
        self.inbox = Some(inbox);
        self.consumer_name = Some(name);
        self.consumer_sequence = 0;
        self.last_heard = Instant::now();
        self.connects = connects;
        Ok(())
    }

    /// Forgets the current consumer and deletes it in the background; the server would remove
    /// it after [`BROADCAST_INACTIVE`] anyway.
    fn stop(&mut self) {
        self.inbox = None;
        let Some(name) = self.consumer_name.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let jetstream = self.shared.jetstream.clone();
        let stream = self.shared.names.stream.clone();
        let timeout = self.shared.options.call_timeout;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(timeout, jetstream.delete_consumer_from_stream(&name, &stream)).await;
        });
    }

    /// Handles one pushed message: `Some` for an event in order, `None` for a heartbeat or
    /// something skipped; `Err(())` when the consumer must be recreated.
    fn accept(&mut self, message: async_nats::Message) -> Result<Option<Delivery>, ()> {
        self.last_heard = Instant::now();
        if let Some(status) = message.status {
            if status == async_nats::StatusCode::IDLE_HEARTBEAT {
                // An idle heartbeat names the last consumer sequence sent: one we lack means a gap.
                let last_sent = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_LAST_CONSUMER))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                if last_sent.is_some_and(|sent| sent != self.consumer_sequence) {
                    return Err(());
                }
            }
            return Ok(None);
        }
        let message = jetstream::Message { message, context: self.shared.jetstream.clone() };
        let (stream_sequence, consumer_sequence) = match message.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence),
            Err(_) => return Ok(None),
        };
        if consumer_sequence != self.consumer_sequence + 1 {
            return Err(());
        }
        self.consumer_sequence = consumer_sequence;
        self.next_stream_sequence = stream_sequence + 1;
        let token = DeliveryToken::Number(stream_sequence);
        Ok(self.shared.decode(&message.message).map(|event| Delivery { event, token }))
    }
}

#[async_trait]
impl Subscription for BroadcastSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + wait;
        let silence_limit = BROADCAST_HEARTBEAT * 3;
        let mut out = Vec::new();
        loop {
            if self.inbox.is_some() && self.shared.client.statistics().connects.load(Ordering::Relaxed) != self.connects
            {
                tracing::info!(
                    bus = "nats",
                    from = self.next_stream_sequence,
                    "reconnected; recreating the broadcast consumer where it left off"
                );
                self.stop();
            }
            if self.inbox.is_none() {
                self.start().await?;
            }
            let Some(inbox) = self.inbox.as_mut() else { continue };
            let next = if out.is_empty() {
                let give_up = deadline.min(self.last_heard + silence_limit);
                match tokio::time::timeout_at(give_up, inbox.next()).await {
                    Ok(next) => next,
                    Err(_) if Instant::now() >= deadline => return Ok(out),
                    Err(_) => {
                        tracing::warn!(bus = "nats", silent_for = ?silence_limit, "broadcast consumer went silent; recreating it");
                        self.stop();
                        continue;
                    }
                }
            } else {
                match inbox.next().now_or_never() {
                    Some(next) => next,
                    None => return Ok(out),
                }
            };
            let Some(message) = next else {
                // The subscription closed under us (the client is shutting down or was closed).
                self.stop();
                if Instant::now() >= deadline {
                    return Ok(out);
                }
                continue;
            };
            match self.accept(message) {
                Ok(Some(delivery)) => {
                    out.push(delivery);
                    if out.len() >= max.max(1) {
                        return Ok(out);
                    }
                }
                Ok(None) => {}
                Err(()) => {
                    tracing::info!(
                        bus = "nats",
                        from = self.next_stream_sequence,
                        "broadcast gap; recreating the consumer where it left off"
                    );
                    self.stop();
                    if !out.is_empty() {
                        return Ok(out);
                    }
                }
            }
        }
    }

    async fn ack(&mut self, _: &[Delivery]) -> Result<(), BusError> {
        Ok(())
    }
}

impl Drop for BroadcastSubscription {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_namespace_and_refuse_subject_syntax() {
        let names = Names::new("strata").unwrap();
        assert_eq!(names.stream, "STRATA_EVENTS");
        assert_eq!(names.subjects, "strata.events.>");
        assert_eq!(names.subject_prefix, "strata.events.");
        for bad in ["", "a.b", "a b", "a>", "*"] {
            assert!(matches!(Names::new(bad), Err(BusError::Config(_))), "{bad:?}");
        }
        assert!(is_subject_suffix("user.created"));
        assert!(!is_subject_suffix("user..created") && !is_subject_suffix("user.>") && !is_subject_suffix(""));
    }

    #[tokio::test]
    async fn a_malformed_url_is_a_config_error_and_a_dead_server_is_not() {
        let options = BusOptions { call_timeout: Duration::from_millis(200), ..BusOptions::default() };
        assert!(matches!(open("nats://[bad", &options).await, Err(BusError::Config(_))));
        // Port 1 on loopback: nothing listens, yet open succeeds and calls fail as unavailable.
        let bus = open("nats://u:secret@127.0.0.1:1", &options).await.unwrap();
        assert!(!bus.describe().contains("secret"));
        assert!(matches!(bus.subscribe(Consumer::Broadcast).await, Err(BusError::Unavailable(_))));
    }
}
