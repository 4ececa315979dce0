//! `amqp://user:pass@host:5672/%2f`: RabbitMQ over AMQP 0-9-1, with [lapin] (the maintained
//! async AMQP 0-9-1 client, tokio runtime, built without a TLS stack).
//!
//! **Addresses.** A durable topic exchange `<ns>.events`; the routing key is the short type
//! (`user.updated`). Each group is one durable quorum queue `<ns>.events.<group>`
//! (`x-queue-type: quorum`) bound with `#`; every member of the group consumes from it on a
//! channel of its own. A broadcast subscriber gets an exclusive, auto-delete, server-named
//! classic queue bound with `#` (capped at [`BROADCAST_MAX_LENGTH`] messages, oldest dropped),
//! which RabbitMQ deletes when the subscriber goes away. Everything is declared idempotently on
//! every (re)connect.
//!
//! **Wire format.** CloudEvents 1.0 binary mode after the CloudEvents AMQP binding: each
//! attribute is an application property named `cloudEvents:<attribute>`, which in 0-9-1 is a
//! message header (`cloudEvents:id`, `cloudEvents:type`, …, long strings); the body is the JSON
//! `data` with `content_type: application/json`. The message also carries `message_id` = the
//! event id, `type` = the CloudEvents type, `timestamp` = the event time (seconds) and
//! `delivery_mode: 2` (persistent).
//!
//! **Publishing.** One confirm-mode channel per bus. A batch is written back to back and then
//! every publisher confirm is awaited (pipelined, not one round trip per event); `publish`
//! returns only when RabbitMQ has acknowledged each one — for a quorum queue that means a
//! majority of its replicas wrote it. A nack is an error and the caller re-sends. Batches are
//! serialised on the channel, which keeps one subject's events in order across calls.
//! RabbitMQ has no broker-side deduplication, so a re-sent batch is delivered twice; consumers
//! deduplicate by event id (also the `message_id`).
//!
//! **Consuming.** Manual acknowledgements with a per-consumer prefetch of [`PREFETCH`]. AMQP
//! itself redelivers an unacknowledged message only when its channel closes, so `ack_wait` is
//! the subscription's own: it remembers when each delivery was handed out, and a `fetch`
//! that finds one overdue returns it to the queue with `basic.nack(requeue)`, from where any
//! member of the group gets it again. An acknowledgement that arrives after its delivery was
//! returned (or after the channel was replaced) is ignored instead of sent: acking an unknown
//! delivery tag would close the channel. `ack` returns after a round trip on the channel, so
//! RabbitMQ has processed the acknowledgements by then. The adapter sets no `x-delivery-limit`: RabbitMQ 3.x
//! has none by default; 4.x applies a default limit to quorum queues after which a message
//! without a dead-letter exchange is dropped, so operators who want a cap and a dead-letter
//! queue set both by policy. RabbitMQ's own `consumer_timeout` (30 min by default) must stay
//! above `ack_wait`.
//!
//! **Limits.** A group's queue keeps events from the moment it is first declared, i.e. the
//! first subscribe of that group: an exchange retains nothing for queues that do not exist
//! yet, so events published before that are not delivered to the group (other brokers here
//! keep a log; RabbitMQ only keeps queues). Order holds per queue; a returned delivery may
//! come back after later events of its subject (a redelivery repeats an earlier event, as the
//! port allows). A broadcast subscriber that reconnects gets a fresh queue, missing what was
//! published in between. `amqps://` is refused with [`BusError::Config`]: TLS would pull
//! rustls and a crypto provider into every build for a deployment choice nobody has made yet.
//!
//! **Failure.** One connection per bus, opened on first use and reopened by whichever call
//! finds it dead, every call bounded by `call_timeout`; while RabbitMQ is down calls return
//! [`BusError::Unavailable`]. A subscription whose channel died re-attaches on its next
//! `fetch`; what it had not acknowledged is redelivered by RabbitMQ.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use strata_core::events::{BusError, BusOptions, Consumer, DecodeError, Delivery, DeliveryToken, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The CloudEvents AMQP binding's prefix for attributes carried as application properties.
pub const HEADER_PREFIX: &str = "cloudEvents:";
/// Unacknowledged deliveries RabbitMQ pushes to one consumer ahead of its `fetch` calls:
/// above the relay's and listeners' batch sizes, so a fetch of hundreds is served from memory.
pub const PREFETCH: u16 = 1_000;
/// Messages a broadcast subscriber's queue holds before RabbitMQ drops the oldest.
pub const BROADCAST_MAX_LENGTH: i64 = 16_384;
/// A delivery token is `generation << TAG_BITS | delivery tag`: tags restart at 1 on every
/// channel, and the generation keeps an old channel's tag from acknowledging a new message.
const TAG_BITS: u32 = 48;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

pub async fn open(url: &str, options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    let uri = parse_url(url)?;
    if options.namespace.is_empty() || options.namespace.len() > 200 {
        return Err(BusError::Config("amqp: the namespace must have 1 to 200 characters".into()));
    }
    let exchange = format!("{}.events", options.namespace);
    info!(url = %crate::redact_url(url), exchange = %exchange, "amqp event bus configured; connecting on first use");
    Ok(Arc::new(AmqpBus {
        shared: Arc::new(Shared {
            uri,
            described: format!("amqp:// RabbitMQ at {} (exchange {exchange})", crate::redact_url(url)),
            exchange,
            options: options.clone(),
            connection: tokio::sync::Mutex::new(None),
            publisher: tokio::sync::Mutex::new(None),
        }),
    }))
}

/// The URL as lapin wants it, or why it is unusable.
fn parse_url(url: &str) -> Result<AMQPUri, BusError> {
    let mut uri = AMQPUri::from_str(url).map_err(|e| BusError::Config(format!("amqp: bad URL: {e}")))?;
    if uri.scheme == AMQPScheme::AMQPS {
        return Err(BusError::Config(
            "amqps:// is not supported: this build has no TLS stack for AMQP (use amqp:// on a private network \
             or a TLS-terminating proxy)"
                .into(),
        ));
    }
    // The URI parser only takes a host that is a domain name and silently replaces an IP
    // address with "localhost"; put back what the URL says.
    if let Some(host) = url_host(url) {
        uri.authority.host = host;
    }
    Ok(uri)
}

/// The host part of `scheme://[user[:pass]@]host[:port][/…]`, brackets removed from IPv6.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host =
        if let Some(v6) = host_port.strip_prefix('[') { v6.split(']').next()? } else { host_port.split(':').next()? };
    (!host.is_empty()).then(|| host.to_owned())
}

struct AmqpBus {
    shared: Arc<Shared>,
}

struct Shared {
    uri: AMQPUri,
    described: String,
    exchange: String,
    options: BusOptions,
    /// Opened on first use; replaced by the first call that finds it closed.
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// The confirm-mode publishing channel; held for a whole batch, so batches do not interleave.
    publisher: tokio::sync::Mutex<Option<Channel>>,
}

/// Runs `work` within the call timeout.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(BusError::Unavailable(format!("amqp: {what} timed out after {limit:?}"))),
    }
}

/// Refusals that retrying will not fix are configuration errors; the rest is unavailability.
fn broker_error(what: &str, error: lapin::Error) -> BusError {
    let refused = match error.kind() {
        ErrorKind::ProtocolError(e) => matches!(
            e.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH)
        ),
        _ => false,
    };
    if refused {
        BusError::Config(format!("amqp: {what}: {error}"))
    } else {
        BusError::Unavailable(format!("amqp: {what}: {error}"))
    }
}

impl Shared {
    async fn connection(&self) -> Result<Arc<Connection>, BusError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(connection.clone());
        }
        let properties = ConnectionProperties::default().with_connection_name("strata".into());
        let connection = Arc::new(
            Connection::connect_uri(self.uri.clone(), properties).await.map_err(|e| broker_error("connect", e))?,
        );
        info!(host = %self.uri.authority.host, port = self.uri.authority.port, "amqp connected");
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn declare_exchange(&self, channel: &Channel) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .map_err(|e| broker_error("declare the exchange", e))
    }

    async fn open_publisher(&self) -> Result<Channel, BusError> {
        let channel = self.connection().await?.create_channel().await.map_err(|e| broker_error("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker_error("enable publisher confirms", e))?;
        self.declare_exchange(&channel).await?;
        Ok(channel)
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        let mut publisher = self.publisher.lock().await;
        let channel = match publisher.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.open_publisher().await?;
                *publisher = Some(channel.clone());
                channel
            }
        };
        let result = self.publish_on(&channel, events).await;
        if result.is_err() {
            // Start the next batch on a fresh channel rather than reason about this one.
            *publisher = None;
        }
        result
    }

    async fn publish_on(&self, channel: &Channel, events: &[Event]) -> Result<(), BusError> {
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    event.event_type.as_str().into(),
                    BasicPublishOptions::default(),
                    event.data.as_bytes(),
                    properties(event),
                )
                .await
                .map_err(|e| broker_error("publish", e))?;
            confirms.push(confirm);
        }
        for (event, confirm) in events.iter().zip(confirms) {
            match confirm.await.map_err(|e| broker_error("publisher confirm", e))? {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) => {
                    warn!(event_id = %event.id, "amqp publish nacked by the broker");
                    return Err(BusError::Unavailable(format!("amqp: RabbitMQ refused event {}", event.id)));
                }
                Confirmation::NotRequested => {
                    return Err(BusError::Unavailable("amqp: publisher confirms are off on this channel".into()));
                }
            }
        }
        debug!(count = events.len(), exchange = %self.exchange, "amqp batch confirmed");
        Ok(())
    }
}

/// The message properties and `cloudEvents:` headers of one event.
fn properties(event: &Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in event.binary_headers(HEADER_PREFIX) {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id.to_string().into())
        .with_type(event.ce_type().into())
        .with_timestamp(u64::try_from(event.time.micros() / 1_000_000).unwrap_or(0))
        .with_headers(headers)
}

/// Reads an event back from its headers and body.
fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Event, DecodeError> {
    let headers: Vec<(&str, &str)> = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(name, value)| {
                    let text = match value {
                        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?,
                        AMQPValue::ShortString(s) => s.as_str(),
                        _ => return None,
                    };
                    Some((name.as_str(), text))
                })
                .collect()
        })
        .unwrap_or_default();
    Event::from_binary(HEADER_PREFIX, headers, body)
}

#[async_trait]
impl EventBus for AmqpBus {
    fn describe(&self) -> String {
        self.shared.described.clone()
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        bounded(self.shared.options.call_timeout, "publish", self.shared.publish(events)).await
    }

    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        let kind = match consumer {
            Consumer::Group(name) => {
                if name.is_empty() || name.len() > 50 {
                    return Err(BusError::Config(format!("amqp: group name {name:?} must have 1 to 50 characters")));
                }
                Kind::Group { queue: format!("{}.{name}", self.shared.exchange) }
            }
            Consumer::Broadcast => Kind::Broadcast,
        };
        let mut subscription = AmqpSubscription {
            shared: self.shared.clone(),
            kind,
            live: None,
            generation: 0,
            outstanding: BTreeMap::new(),
        };
        // Attach now, so a group's queue exists (and starts keeping events) when this returns,
        // and a broadcast subscriber hears everything published after it.
        bounded(self.shared.options.call_timeout, "subscribe", subscription.attach()).await?;
        Ok(Box::new(subscription))
    }
}

enum Kind {
    Group { queue: String },
    Broadcast,
}

struct AmqpSubscription {
    shared: Arc<Shared>,
    kind: Kind,
    live: Option<Live>,
    /// Bumped on every attach; part of every delivery token.
    generation: u64,
    /// Group deliveries handed out on the live channel and not yet acknowledged: delivery
    /// tag → when. Empty for broadcast, whose deliveries are acknowledged as they are fetched.
    outstanding: BTreeMap<u64, Instant>,
}

struct Live {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl AmqpSubscription {
    async fn attach(&mut self) -> Result<(), BusError> {
        let channel =
            self.shared.connection().await?.create_channel().await.map_err(|e| broker_error("open a channel", e))?;
        // Per consumer (not global): quorum queues refuse global prefetch.
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(|e| broker_error("set prefetch", e))?;
        self.shared.declare_exchange(&channel).await?;
        let queue = match &self.kind {
            Kind::Group { queue } => {
                let mut arguments = FieldTable::default();
                arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
                let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
                channel
                    .queue_declare(queue.as_str().into(), durable, arguments)
                    .await
                    .map_err(|e| broker_error("declare the group's queue", e))?;
                queue.clone()
            }
            Kind::Broadcast => {
                let mut arguments = FieldTable::default();
                arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(BROADCAST_MAX_LENGTH));
                arguments.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
                let private =
                    QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
                let queue = channel
                    .queue_declare("".into(), private, arguments)
                    .await
                    .map_err(|e| broker_error("declare a broadcast queue", e))?;
                queue.name().as_str().to_owned()
            }
        };
        channel
            .queue_bind(
                queue.as_str().into(),
                self.shared.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| broker_error("bind the queue", e))?;
        let consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| broker_error("consume", e))?;
        self.generation = (self.generation + 1) & 0xFFFF;
        self.outstanding.clear();
        self.live = Some(Live { channel, consumer });
        debug!(queue = %queue, generation = self.generation, "amqp subscription attached");
        Ok(())
    }

    /// Forgets the channel; RabbitMQ requeues whatever it had not acknowledged.
    fn detach(&mut self, why: &str) {
        if self.live.take().is_some() {
            warn!(reason = why, "amqp subscription lost its channel; re-attaching on the next fetch");
        }
        self.outstanding.clear();
    }

    fn next_due(&self) -> Option<Instant> {
        self.outstanding.values().min().map(|at| *at + self.shared.options.ack_wait)
    }

    /// Hands deliveries outstanding past the ack wait back to the queue (see the module doc).
    async fn return_overdue(&mut self) -> Result<(), BusError> {
        let now = Instant::now();
        let ack_wait = self.shared.options.ack_wait;
        let overdue: Vec<u64> =
            self.outstanding.iter().filter(|(_, at)| **at + ack_wait <= now).map(|(tag, _)| *tag).collect();
        let Some(live) = &self.live else { return Ok(()) };
        if overdue.is_empty() {
            return Ok(());
        }
        let requeue = BasicNackOptions { multiple: false, requeue: true };
        for tag in &overdue {
            if let Err(e) = live.channel.basic_nack(*tag, requeue).await {
                self.detach("nack failed");
                return Err(broker_error("return an overdue delivery", e));
            }
            self.outstanding.remove(tag);
        }
        debug!(count = overdue.len(), "amqp deliveries past the ack wait returned to the queue");
        Ok(())
    }

    async fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        if self.live.is_none() {
            bounded(self.shared.options.call_timeout, "re-attach", self.attach()).await?;
        }
        bounded(self.shared.options.call_timeout, "return overdue deliveries", self.return_overdue()).await?;
        let deadline = Instant::now() + wait;
        let mut raw = Vec::new();
        // Wait for the first delivery, waking up to return overdue ones meanwhile.
        loop {
            let wake = self.next_due().map_or(deadline, |due| due.min(deadline));
            let Some(live) = self.live.as_mut() else { return Ok(Vec::new()) };
            match tokio::time::timeout_at(wake, live.consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    raw.push(delivery);
                    break;
                }
                Ok(Some(Err(e))) => {
                    self.detach("consumer failed");
                    return Err(broker_error("consume", e));
                }
                Ok(None) => {
                    self.detach("consumer cancelled by the broker");
                    return Err(BusError::Unavailable("amqp: the broker cancelled the consumer".into()));
                }
                Err(_) if Instant::now() >= deadline => return Ok(Vec::new()),
                Err(_) => {
                    bounded(self.shared.options.call_timeout, "return overdue deliveries", self.return_overdue())
                        .await?
                }
            }
        }
        // Then whatever else is already here, without waiting.
        if let Some(live) = self.live.as_mut() {
            while raw.len() < max {
                match live.consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => raw.push(delivery),
                    _ => break,
                }
            }
        }
        self.accept(raw).await
    }

    /// Decodes and records what arrived; foreign messages are rejected (dead-lettered if the
    /// queue has a dead-letter exchange, dropped otherwise).
    async fn accept(&mut self, raw: Vec<lapin::message::Delivery>) -> Result<Vec<Delivery>, BusError> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(raw.len());
        let mut last_tag = None;
        for delivery in raw {
            let tag = delivery.delivery_tag;
            last_tag = Some(tag);
            match decode(&delivery.properties, &delivery.data) {
                Ok(event) => {
                    if matches!(self.kind, Kind::Group { .. }) {
                        self.outstanding.insert(tag, now);
                    }
                    let token = DeliveryToken::Number(self.generation << TAG_BITS | (tag & TAG_MASK));
                    out.push(Delivery { event, token });
                }
                Err(e) => {
                    warn!(error = %e, routing_key = %delivery.routing_key, "amqp message is not a Strata event; rejected");
                    if matches!(self.kind, Kind::Group { .. })
                        && let Some(live) = &self.live
                        && let Err(e) = live.channel.basic_reject(tag, BasicRejectOptions { requeue: false }).await
                    {
                        self.detach("reject failed");
                        return Err(broker_error("reject a foreign message", e));
                    }
                }
            }
        }
        // Broadcast deliveries are acknowledged as they are handed out: nobody else would get
        // them, and the ack only releases prefetch room.
        if let (Kind::Broadcast, Some(tag), Some(live)) = (&self.kind, last_tag, &self.live)
            && let Err(e) = live.channel.basic_ack(tag, BasicAckOptions { multiple: true }).await
        {
            self.detach("ack failed");
            return Err(broker_error("acknowledge broadcast deliveries", e));
        }
        Ok(out)
    }

    async fn acknowledge(&mut self, tags: Vec<u64>) -> Result<(), BusError> {
        let Some(live) = &self.live else { return Ok(()) };
        let Some(&highest) = tags.last() else { return Ok(()) };
        // One `multiple` ack covers the lot when nothing else outstanding is at or below the
        // highest tag (deliveries not yet handed out always have higher tags).
        let result = if self.outstanding.range(..=highest).count() == tags.len() {
            live.channel.basic_ack(highest, BasicAckOptions { multiple: true }).await
        } else {
            let mut result = Ok(());
            for tag in &tags {
                result = live.channel.basic_ack(*tag, BasicAckOptions::default()).await;
                if result.is_err() {
                    break;
                }
            }
            result
        };
        // basic.ack has no reply; a synchronous method behind it on the same channel does,
        // and RabbitMQ handles a channel's frames in order. So when this returns the acks
        // were processed, and a subscriber dropped (or cut off) right after `ack` does not
        // see them redelivered.
        let result = match result {
            Ok(()) => live.channel.basic_qos(PREFETCH, BasicQosOptions::default()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.detach("ack failed");
            return Err(broker_error("acknowledge", e));
        }
        for tag in &tags {
            self.outstanding.remove(tag);
        }
        Ok(())
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.receive(max.max(1), wait).await
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        if matches!(self.kind, Kind::Broadcast) {
            return Ok(());
        }
        let mut tags: Vec<u64> = deliveries
            .iter()
            .filter_map(|d| match d.token {
                DeliveryToken::Number(token) if token >> TAG_BITS == self.generation => Some(token & TAG_MASK),
                _ => None,
            })
            .filter(|tag| self.outstanding.contains_key(tag))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        if tags.len() < deliveries.len() {
            debug!(
                stale = deliveries.len() - tags.len(),
                "amqp acks for deliveries already returned to the queue ignored"
            );
        }
        bounded(self.shared.options.call_timeout, "ack", self.acknowledge(tags)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_hosts_survive_url_parsing_and_tls_is_refused_by_name() {
        let uri = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.vhost, "/");
        assert_eq!(parse_url("amqp://u:p@[::1]:5673/v").unwrap().authority.host, "::1");
        assert_eq!(parse_url("amqp://rabbit.internal/%2f").unwrap().authority.host, "rabbit.internal");
        assert!(matches!(parse_url("amqps://h/%2f"), Err(BusError::Config(m)) if m.contains("amqps")));
        assert!(matches!(parse_url("amqp://h:notaport/"), Err(BusError::Config(_))));
    }

    #[test]
    fn events_round_trip_through_cloud_events_headers() {
        let event = Event {
            id: uuid::Uuid::now_v7(),
            source: "/strata".into(),
            event_type: "user.created".into(),
            time: strata_core::domain::Timestamp(1_764_057_600_123_456),
            subject: "u1".into(),
            sequence: 3,
            traceparent: None,
            data: r#"{"user":{"id":"u1"}}"#.into(),
        };
        let props = properties(&event);
        let headers = props.headers().as_ref().unwrap();
        assert!(headers.inner().contains_key("cloudEvents:id"));
        assert!(headers.inner().contains_key("cloudEvents:specversion"));
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), event.id.to_string());
        assert_eq!(props.content_type().as_ref().unwrap().as_str(), "application/json");
        assert_eq!(decode(&props, event.data.as_bytes()).unwrap(), event);
    }
}
