//! `redis-stream://[user:password@]host:port[/db][?maxlen=N]`: Redis Streams, through
//! `redis` (redis-rs) — the maintained Rust client, whose typed stream commands (XADD, XREADGROUP,
//! XAUTOCLAIM, XINFO) spare us protocol code, and which the cache is planned to move to. TLS
//! (`rediss-stream://`) is not compiled in: it would add a rustls crypto provider to the build.
//!
//! **Addresses.** One stream key `<ns>:events`; a group is a Redis consumer group of that name,
//! created (with the key, `MKSTREAM`) from id `0` when first subscribed, so events published
//! before the group existed are delivered. Each subscription is one consumer in its group,
//! named `strata-<random>`; consumers left idle an hour with nothing pending are removed when a
//! new member subscribes.
//!
//! **Wire format.** A stream entry per event: each CloudEvents attribute its own field
//! (`ce_id`, `ce_type`, `ce_datacontenttype`, …) plus `data`, the JSON body.
//!
//! **Guarantees.** `publish` pipelines one `XADD … MAXLEN ~ <maxlen>` per event and returns
//! after every reply, in order on one connection. An XADD reply means the entry is in Redis's
//! memory; it survives a Redis restart only as far as the server's persistence (`appendonly yes`,
//! `appendfsync`) goes. The stream is trimmed approximately to `maxlen` entries (default
//! [`DEFAULT_MAXLEN`]): a group further behind loses the oldest, including pending ones.
//! `fetch` first claims (`XAUTOCLAIM`) entries of the group left unacknowledged longer than
//! `ack_wait` — that is the redelivery — then reads new ones (`XREADGROUP … >`), blocking only
//! when it has nothing. `ack` is `XACK`. Redis has no deduplication by message id: a re-sent
//! batch is stored twice, and listeners deduplicate by event id (they do in any case).
//! Broadcast: `XREAD` from the last entry id at `subscribe`, then from the last id seen; nothing
//! is created on the server. A broadcast subscriber that falls behind the trimming loses what was
//! trimmed.
//!
//! **Connections.** Publishing and group setup share one multiplexed connection
//! (`ConnectionManager`, reconnecting in the background). Each subscription has its own
//! connection, because a blocking read would stall every command queued behind it on a shared
//! one. Every call is bounded by `call_timeout` (plus the block time for reads); a Redis that is
//! down gives [`BusError::Unavailable`], and the next call reconnects.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamMaxlen, StreamReadOptions};
use strata_core::events::{BusError, BusOptions, Consumer, Delivery, DeliveryToken, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::time::Instant;

/// Entries the stream keeps (approximately) unless the URL says `?maxlen=`. At a few hundred
/// bytes an entry this bounds the stream to some hundreds of megabytes.
pub const DEFAULT_MAXLEN: usize = 1_000_000;
/// A blocked read wakes at least this often to claim entries whose ack wait ran out meanwhile.
const REDELIVERY_POLL: Duration = Duration::from_secs(1);
/// Consumers idle this long with nothing pending are dead subscriptions, removed at the next
/// subscribe so `XINFO CONSUMERS` stays readable.
const STALE_CONSUMER_IDLE: Duration = Duration::from_secs(3600);

pub async fn open(url: &str, options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    let described = crate::redact_url(url);
    let target = Target::parse(url)?;
    if options.namespace.is_empty() {
        return Err(BusError::Config("events namespace is empty".into()));
    }
    let client = redis::Client::open(target.redis_url.as_str())
        .map_err(|e| BusError::Config(format!("events URL {described}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.call_timeout))
        .set_response_timeout(Some(options.call_timeout))
        // Few retries inside one call: the call is bounded anyway, and the next one reconnects.
        .set_number_of_retries(1);
    // Lazy: a Redis that is down at startup delays events, not the API.
    let shared = ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| BusError::Config(format!("events URL {described}: {e}")))?;
    tracing::info!(bus = "redis-stream", url = %described, key = %format!("{}:events", options.namespace), maxlen = target.maxlen, "event bus opened");
    Ok(Arc::new(RedisStreamBus {
        inner: Arc::new(Inner {
            client,
            shared,
            key: format!("{}:events", options.namespace),
            maxlen: target.maxlen,
            options: options.clone(),
            described,
        }),
    }))
}

/// What the URL names, parsed once.
#[derive(Debug, PartialEq)]
struct Target {
    /// The same address as a `redis://` URL for redis-rs.
    redis_url: String,
    maxlen: usize,
}

impl Target {
    fn parse(url: &str) -> Result<Target, BusError> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        match scheme {
            "redis-stream" => {}
            "rediss-stream" => {
                return Err(BusError::Config(
                    "rediss-stream:// (TLS) is not supported by this build; use redis-stream:// over a trusted network or a TLS tunnel".into(),
                ));
            }
            other => return Err(BusError::Config(format!("events URL scheme {other:?} is not redis-stream"))),
        }
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut maxlen = DEFAULT_MAXLEN;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("maxlen", n)) => {
                    maxlen =
                        n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            BusError::Config(format!("events URL maxlen {n:?} is not a positive number"))
                        })?;
                }
                _ => return Err(BusError::Config(format!("events URL parameter {pair:?} is unknown (maxlen=N is)"))),
            }
        }
        if address.is_empty() || address.starts_with('/') {
            return Err(BusError::Config("events URL has no host".into()));
        }
        Ok(Target { redis_url: format!("redis://{address}"), maxlen })
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("redis {what}: {error}"))
}

fn timed_out(what: &str, after: Duration) -> BusError {
    BusError::Unavailable(format!("redis {what}: no answer within {after:?}"))
}

/// Runs one Redis call bounded by `limit`.
async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(timed_out(what, limit)),
    }
}

/// The `BLOCK` argument for waiting `wait`, or `None` for not blocking: `BLOCK 0` would wait
/// forever, so anything under a millisecond does not block.
fn block_millis(wait: Duration) -> Option<usize> {
    let millis = wait.as_millis();
    (millis >= 1).then(|| usize::try_from(millis).unwrap_or(usize::MAX))
}

struct RedisStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    shared: ConnectionManager,
    key: String,
    maxlen: usize,
    options: BusOptions,
    described: String,
}

impl Inner {
    /// A connection of its own for one subscription, whose blocking reads are bounded by the
    /// caller rather than by a response timeout.
    async fn dedicated_connection(&self) -> Result<MultiplexedConnection, BusError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.call_timeout))
            .set_response_timeout(None);
        bounded("connect", self.options.call_timeout, self.client.get_multiplexed_async_connection_with_config(&config))
            .await
    }

    /// Creates the group (and the stream) if missing; a group that exists is left as it is.
    async fn ensure_group(&self, connection: &mut MultiplexedConnection, group: &str) -> Result<(), BusError> {
        let created: redis::RedisResult<()> = connection.xgroup_create_mkstream(&self.key, group, "0").await;
        match created {
            Ok(()) => {
                tracing::info!(bus = "redis-stream", key = %self.key, group, "consumer group created");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable("XGROUP CREATE", e)),
        }
    }

    /// Reads an entry; `None` (after a warning) for one that is not a Strata event.
    fn decode(&self, entry: &StreamId) -> Option<Event> {
        fn text(value: &redis::Value) -> Option<&str> {
            match value {
                redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                redis::Value::SimpleString(s) => Some(s.as_str()),
                _ => None,
            }
        }
        let fields = entry.map.iter().filter_map(|(name, value)| Some((name.as_str(), text(value)?)));
        let data = entry.map.get("data").and_then(text).unwrap_or("");
        match Event::from_binary("ce_", fields, data.as_bytes()) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(bus = "redis-stream", key = %self.key, entry = %entry.id, error = %e, "skipping an entry that is not a Strata event");
                None
            }
        }
    }
}

#[async_trait]
impl EventBus for RedisStreamBus {
    fn describe(&self) -> String {
        format!("{} (Redis Streams, key {})", self.inner.described, self.inner.key)
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mut pipeline = redis::pipe();
        for event in events {
            let mut fields: Vec<(String, String)> =
                event.attributes().into_iter().map(|(name, value)| (format!("ce_{name}"), value)).collect();
            fields.push(("data".to_owned(), event.data.clone()));
            pipeline.xadd_maxlen(&inner.key, StreamMaxlen::Approx(inner.maxlen), "*", &fields);
        }
        let mut connection = inner.shared.clone();
        let ids: Vec<String> =
            bounded("XADD", inner.options.call_timeout, pipeline.query_async(&mut connection)).await?;
        tracing::debug!(bus = "redis-stream", key = %inner.key, events = ids.len(), last = ids.last().map(String::as_str).unwrap_or(""), "published");
        Ok(())
    }

    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        let inner = self.inner.clone();
        let mut connection = inner.dedicated_connection().await?;
        match consumer {
            Consumer::Group(group) => {
                if group.is_empty() {
                    return Err(BusError::Config("group name is empty".into()));
                }
                let timeout = inner.options.call_timeout;
                bounded_result("XGROUP CREATE", timeout, inner.ensure_group(&mut connection, group)).await?;
                remove_stale_consumers(&inner, &mut connection, group).await;
                let consumer = format!("strata-{}", uuid::Uuid::new_v4().simple());
                tracing::debug!(bus = "redis-stream", key = %inner.key, group, consumer = %consumer, "group member subscribed");
                Ok(Box::new(GroupSubscription {
                    inner,
                    connection: Some(connection),
                    group: group.to_owned(),
                    consumer,
                    claim_cursor: "0-0".to_owned(),
                }))
            }
            Consumer::Broadcast => {
                let last_id = last_entry_id(&inner, &mut connection).await?;
                Ok(Box::new(BroadcastSubscription { inner, connection: Some(connection), last_id }))
            }
        }
    }
}

/// Like [`bounded`] for a call that already maps its errors.
async fn bounded_result<T>(
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, BusError>>,
) -> Result<T, BusError> {
    tokio::time::timeout(limit, call).await.map_err(|_| timed_out(what, limit))?
}

/// The id of the stream's newest entry, `0-0` when it has none.
async fn last_entry_id(inner: &Inner, connection: &mut MultiplexedConnection) -> Result<String, BusError> {
    let newest: redis::streams::StreamRangeReply =
        bounded("XREVRANGE", inner.options.call_timeout, connection.xrevrange_count(&inner.key, "+", "-", 1)).await?;
    Ok(newest.ids.into_iter().next().map_or_else(|| "0-0".to_owned(), |entry| entry.id))
}

/// Best effort: a failure here only leaves the old names listed.
async fn remove_stale_consumers(inner: &Inner, connection: &mut MultiplexedConnection, group: &str) {
    let timeout = inner.options.call_timeout;
    let Ok(info) = bounded::<redis::streams::StreamInfoConsumersReply>(
        "XINFO CONSUMERS",
        timeout,
        connection.xinfo_consumers(&inner.key, group),
    )
    .await
    else {
        return;
    };
    let stale_after = STALE_CONSUMER_IDLE.as_millis();
    for consumer in info.consumers.iter().filter(|c| c.pending == 0 && c.idle as u128 >= stale_after) {
        let removed = bounded::<usize>(
            "XGROUP DELCONSUMER",
            timeout,
            connection.xgroup_delconsumer(&inner.key, group, &consumer.name),
        )
        .await;
        if removed.is_ok() {
            tracing::debug!(bus = "redis-stream", key = %inner.key, group, consumer = %consumer.name, "removed an idle consumer");
        }
    }
}

struct GroupSubscription {
    inner: Arc<Inner>,
    /// `None` after an error: the next call connects again.
    connection: Option<MultiplexedConnection>,
    group: String,
    consumer: String,
    /// Where the next `XAUTOCLAIM` continues its scan of the pending entries.
    claim_cursor: String,
}

impl GroupSubscription {
    async fn connection(&mut self) -> Result<MultiplexedConnection, BusError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let mut connection = self.inner.dedicated_connection().await?;
        // The group may be gone with a Redis that restarted without its data.
        let timeout = self.inner.options.call_timeout;
        bounded_result("XGROUP CREATE", timeout, self.inner.ensure_group(&mut connection, &self.group)).await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Takes over entries of the group whose ack wait ran out, ours included.
    async fn claim_overdue(
        &mut self,
        connection: &mut MultiplexedConnection,
        max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let inner = &self.inner;
        let min_idle = usize::try_from(inner.options.ack_wait.as_millis()).unwrap_or(usize::MAX);
        let reply: redis::streams::StreamAutoClaimReply = bounded(
            "XAUTOCLAIM",
            inner.options.call_timeout,
            connection.xautoclaim_options(
                &inner.key,
                &self.group,
                &self.consumer,
                min_idle,
                &self.claim_cursor,
                StreamAutoClaimOptions::default().count(max),
            ),
        )
        .await?;
        self.claim_cursor = reply.next_stream_id;
        if !reply.deleted_ids.is_empty() {
            tracing::warn!(bus = "redis-stream", key = %inner.key, group = %self.group, lost = reply.deleted_ids.len(), "pending entries were trimmed from the stream before they were acknowledged");
        }
        Ok(self.deliveries(connection, reply.claimed).await)
    }

    /// Decodes entries; ones that are not events are acknowledged so they do not come back.
    async fn deliveries(&self, connection: &mut MultiplexedConnection, entries: Vec<StreamId>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(entries.len());
        let mut foreign = Vec::new();
        for entry in entries {
            match self.inner.decode(&entry) {
                Some(event) => out.push(Delivery { event, token: DeliveryToken::Text(entry.id) }),
                None => foreign.push(entry.id),
            }
        }
        if !foreign.is_empty() {
            let _ = bounded::<usize>(
                "XACK",
                self.inner.options.call_timeout,
                connection.xack(&self.inner.key, &self.group, &foreign),
            )
            .await;
        }
        out
    }

    async fn read_new(
        &mut self,
        connection: &mut MultiplexedConnection,
        max: usize,
        block: Option<usize>,
    ) -> Result<Vec<Delivery>, BusError> {
        let inner = &self.inner;
        let mut options = StreamReadOptions::default().group(&self.group, &self.consumer).count(max);
        let mut limit = inner.options.call_timeout;
        if let Some(millis) = block {
            options = options.block(millis);
            limit += Duration::from_millis(millis as u64);
        }
        let read = tokio::time::timeout(
            limit,
            connection.xread_options::<_, _, Option<redis::streams::StreamReadReply>>(&[&inner.key], &[">"], &options),
        )
        .await
        .map_err(|_| timed_out("XREADGROUP", limit))?;
        let reply = match read {
            Ok(reply) => reply,
            Err(e) if e.code() == Some("NOGROUP") => {
                // Key or group deleted (or Redis restarted empty): recreate it and read next time.
                let timeout = inner.options.call_timeout;
                bounded_result("XGROUP CREATE", timeout, inner.ensure_group(connection, &self.group)).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(unavailable("XREADGROUP", e)),
        };
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        Ok(self.deliveries(connection, entries).await)
    }

    async fn fetch_until(&mut self, max: usize, deadline: Instant) -> Result<Vec<Delivery>, BusError> {
        loop {
            let mut connection = self.connection().await?;
            let mut out = self.claim_overdue(&mut connection, max).await?;
            if out.len() < max {
                // Block only when there is nothing to hand back, and not past the next redelivery check.
                let block = if out.is_empty() {
                    block_millis(deadline.saturating_duration_since(Instant::now()).min(REDELIVERY_POLL))
                } else {
                    None
                };
                out.extend(self.read_new(&mut connection, max - out.len(), block).await?);
            }
            if !out.is_empty() || Instant::now() >= deadline {
                return Ok(out);
            }
        }
    }
}

#[async_trait]
impl Subscription for GroupSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let result = self.fetch_until(max.max(1), Instant::now() + wait).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        let ids: Vec<&str> = deliveries
            .iter()
            .filter_map(|d| match &d.token {
                DeliveryToken::Text(id) => Some(id.as_str()),
                DeliveryToken::Number(_) => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        let acked = bounded::<usize>(
            "XACK",
            self.inner.options.call_timeout,
            connection.xack(&self.inner.key, &self.group, &ids),
        )
        .await;
        if acked.is_err() {
            self.connection = None;
        }
        acked.map(|_| ())
    }
}

struct BroadcastSubscription {
    inner: Arc<Inner>,
    connection: Option<MultiplexedConnection>,
    /// The id of the last entry seen; reads continue after it.
    last_id: String,
}

impl BroadcastSubscription {
    async fn connection(&mut self) -> Result<MultiplexedConnection, BusError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let mut connection = self.inner.dedicated_connection().await?;
        // A Redis that restarted without its data numbers entries from the start again; reading
        // after our old id would skip them all.
        let newest = last_entry_id(&self.inner, &mut connection).await?;
        if entry_id_less(&newest, &self.last_id) {
            tracing::warn!(bus = "redis-stream", key = %self.inner.key, was = %self.last_id, now = %newest, "stream restarted below the last id seen; reading from its newest entry");
            self.last_id = newest;
        }
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut connection = self.connection().await?;
        let inner = &self.inner;
        let mut options = StreamReadOptions::default().count(max);
        let mut limit = inner.options.call_timeout;
        if let Some(millis) = block_millis(wait) {
            options = options.block(millis);
            limit += Duration::from_millis(millis as u64);
        }
        let reply: Option<redis::streams::StreamReadReply> =
            bounded("XREAD", limit, connection.xread_options(&[&inner.key], &[&self.last_id], &options)).await?;
        let mut out = Vec::new();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            if let Some(event) = inner.decode(&entry) {
                out.push(Delivery { event, token: DeliveryToken::Text(entry.id.clone()) });
            }
            self.last_id = entry.id;
        }
        Ok(out)
    }
}

/// Orders stream ids (`<ms>-<seq>`) numerically; an unparsable one sorts first.
fn entry_id_less(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
    };
    parse(a) < parse(b)
}

#[async_trait]
impl Subscription for BroadcastSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let result = self.read(max.max(1), wait).await;
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn ack(&mut self, _: &[Delivery]) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_a_redis_address_and_a_cap() {
        assert_eq!(
            Target::parse("redis-stream://u:p@127.0.0.1:6379/2?maxlen=5000").unwrap(),
            Target { redis_url: "redis://u:p@127.0.0.1:6379/2".into(), maxlen: 5000 }
        );
        assert_eq!(Target::parse("redis-stream://127.0.0.1:6379").unwrap().maxlen, DEFAULT_MAXLEN);
        for bad in [
            "rediss-stream://127.0.0.1:6379",
            "redis-stream://127.0.0.1:6379?maxlen=0",
            "redis-stream://127.0.0.1:6379?foo=1",
            "redis-stream://",
            "redis://127.0.0.1:6379",
        ] {
            assert!(matches!(Target::parse(bad), Err(BusError::Config(_))), "{bad}");
        }
    }

    #[test]
    fn entry_ids_order_numerically() {
        assert!(entry_id_less("9-0", "10-0"));
        assert!(entry_id_less("10-2", "10-10"));
        assert!(!entry_id_less("10-0", "10-0"));
        assert_eq!(block_millis(Duration::from_micros(999)), None);
        assert_eq!(block_millis(Duration::from_millis(1500)), Some(1500));
    }

    #[tokio::test]
    async fn a_dead_server_fails_calls_not_open() {
        let options = BusOptions { call_timeout: Duration::from_millis(300), ..BusOptions::default() };
        let bus = open("redis-stream://:secret@127.0.0.1:1", &options).await.unwrap();
        assert!(!bus.describe().contains("secret"));
        let event = Event {
            id: uuid::Uuid::now_v7(),
            source: "/t".into(),
            event_type: "user.created".into(),
            time: strata_core::domain::Timestamp(0),
            subject: "s".into(),
            sequence: 1,
            traceparent: None,
            data: "{}".into(),
        };
        assert!(matches!(bus.publish(&[event]).await, Err(BusError::Unavailable(_))));
        assert!(matches!(bus.subscribe(Consumer::Group("g")).await, Err(BusError::Unavailable(_))));
    }
}
