//! `mqtt://[user[:pass]@]host[:port][/][?client_id=NAME&session_expiry=SECONDS]`: an MQTT 5
//! broker (Mosquitto ≥ 2 here), with [rumqttc]'s `v5` client (maintained, tokio-native, the
//! usual Rust MQTT client; built without a TLS stack).
//!
//! **Addresses.** Each event goes to topic `<ns>/events/<type with . replaced by />`
//! (`strata/events/user/updated`), QoS 1. A group is the shared subscription
//! `$share/<group>/<ns>/events/#` held by one persistent session per process, client id
//! `<client_id>-<ns>-<group>` (`client_id` defaults to the host name), with
//! `clean_start = false` and a session expiry of `session_expiry` seconds (default a week).
//! Subscriptions of one group in one process share that session; processes share the group
//! through the broker. A broadcast subscriber is a clean session of its own (random client
//! id, expiry 0) subscribed to `<ns>/events/#`.
//!
//! **Wire format.** CloudEvents 1.0 binary mode after the CloudEvents MQTT binding: every
//! attribute is an MQTT 5 user property with no prefix (`specversion`, `id`, `type`, …), the
//! content-type property is `application/json`, the payload is the JSON `data`.
//!
//! **Publishing.** rumqttc reports a PUBLISH only as `Outgoing::Publish(packet id)` and its
//! acknowledgement as `Incoming::PubAck(packet id)`; it does not tell which `publish` call a
//! packet id belongs to. The publisher's own event-loop task keeps that mapping: requests
//! enter rumqttc's queue under a lock in the order their waiters are queued, rumqttc assigns
//! packet ids in that order, so each `Outgoing::Publish` is matched to the oldest waiter
//! without one. `publish` returns once every event of the batch is PUBACKed (with success or
//! "no matching subscribers"); any other reason code is an error. At most [`PUBLISH_WINDOW`]
//! events are unacknowledged at once (rumqttc itself keeps to the broker's receive maximum).
//! When the connection drops, every unacknowledged event fails and rumqttc's queue is
//! cleared before the next connect (the publisher uses a clean session, so nothing is
//! retransmitted behind our back and nothing stale can be matched later); the caller
//! re-sends. MQTT has no deduplication: a re-sent event is delivered again.
//!
//! **Consuming.** Manual acknowledgements: a PUBACK goes out only when the listener acks.
//! PUBACK has no reply, so `ack` follows its PUBACKs with an UNSUBSCRIBE from a filter the
//! session never holds and returns on its UNSUBACK: the broker handles a session's packets in
//! order, so the acknowledgements were processed by then. The broker keeps at most
//! [`RECEIVE_MAXIMUM`] unacknowledged messages in flight to a session (its prefetch).
//! MQTT has no timed redelivery inside a live session and forbids handing an unacknowledged
//! message of a shared subscription to another session: the broker only resends it when
//! that same session reconnects. So `ack_wait` is honoured by the subscription itself: a
//! delivery handed out longer than `ack_wait` ago is handed out again by the next `fetch`
//! (to any subscription of the group in this process), from the copy the session holds —
//! exactly what a reconnect would make the broker do, without dropping the connection.
//! Resends after a reconnect (same packet id) are recognised and not handed out twice. If
//! the broker lost the session (expired, or restarted without persistence), what it had sent
//! is still handed out but can no longer be acknowledged: those acks become no-ops.
//!
//! **Limits.** Read these before relying on a group:
//! - Events published while no session of a group exists are dropped by the broker (PUBACK
//!   "no matching subscribers"): a group starts receiving at its first subscribe. After that
//!   its session keeps queueing while the process is away, up to the broker's
//!   `max_queued_messages` (Mosquitto: 1000 by default — raise it or set 0 for groups that
//!   may be offline for long); beyond that Mosquitto drops messages.
//! - Mosquitto 2.0 persists sessions but not their shared subscriptions: after a broker
//!   restart a group receives nothing until its session has reconnected and subscribed
//!   again (within [`RECONNECT_MAX`] of the broker's return); events published in between
//!   are PUBACKed "no matching subscribers" and dropped. Relays that publish through such a
//!   restart lose those events for the group — prefer a broker that keeps them, or a group
//!   on another adapter, where that matters.
//! - Mosquitto hands shared-subscription messages round robin to every session in the share
//!   group, connected or not. A process that never comes back with the same `client_id`
//!   leaves a session that keeps taking its share until it expires, and what it held is lost
//!   then. Give each instance a stable, unique `client_id` (the host name is the default;
//!   two processes with the same one take the session from each other, which is logged).
//! - Order: one session receives in publish order; MQTT only promises order per topic, and
//!   an event type is a topic, so different types of one subject rely on the broker
//!   forwarding one publisher's messages in order (Mosquitto does).
//! - `mqtts://` is refused with [`BusError::Config`]: TLS would pull rustls and a crypto
//!   provider into every build for a deployment choice nobody has made yet.
//!
//! **Failure.** Every connection is owned by a task that reconnects with backoff forever;
//! `open` never waits for the broker. Calls wait at most `call_timeout` and return
//! [`BusError::Unavailable`] while the broker is away; a session resumes (with whatever the
//! broker queued meanwhile) when it comes back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Packet, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions, StateError};
use strata_core::events::{BusError, BusOptions, Consumer, Delivery, DeliveryToken, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Events published and not yet PUBACKed, across all `publish` calls of one bus.
pub const PUBLISH_WINDOW: usize = 1_024;
/// Receive maximum announced by subscriber sessions: how many unacknowledged messages the
/// broker sends a session ahead of its `fetch` calls.
pub const RECEIVE_MAXIMUM: u16 = 1_024;
/// Default session expiry of a group's session: how long the broker keeps queueing for a
/// process that is away.
pub const DEFAULT_SESSION_EXPIRY: u32 = 7 * 24 * 3600;
/// Largest packet accepted from the broker (rumqttc's default is 10 KiB).
const MAX_PACKET_SIZE: u32 = 1 << 20;
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub async fn open(url: &str, options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    let config = Arc::new(Config::parse(url, options)?);
    let publisher = Publisher::start(&config);
    info!(url = %crate::redact_url(url), prefix = %config.events_prefix, "mqtt event bus configured; connecting in the background");
    Ok(Arc::new(MqttBus { config, publisher, groups: tokio::sync::Mutex::new(HashMap::new()) }))
}

/// Everything the URL and options say, checked once.
#[derive(Debug)]
struct Config {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    /// Prefix of every client id this bus uses.
    client_id: String,
    session_expiry: u32,
    /// `<ns>/events`
    events_prefix: String,
    namespace: String,
    options: BusOptions,
    described: String,
}

impl Config {
    fn parse(url: &str, options: &BusOptions) -> Result<Config, BusError> {
        let bad = |why: String| BusError::Config(format!("mqtt: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("URL has no scheme".into()))?;
        match scheme {
            "mqtt" => {}
            "mqtts" => {
                return Err(bad("mqtts:// is not supported: this build has no TLS stack for MQTT (use mqtt:// on a \
                     private network or a TLS-terminating proxy)"
                    .into()));
            }
            other => return Err(bad(format!("unexpected scheme {other:?}"))),
        }
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (host, port) = match host_port.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed [ in host".into()))?;
                (host, after.strip_prefix(':'))
            }
            None => match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        if host.is_empty() {
            return Err(bad("URL has no host".into()));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad(format!("bad port {p:?}")))?,
            None => 1883,
        };
        let credentials = userinfo.map(|info| match info.split_once(':') {
            Some((user, pass)) => (percent_decode(user), percent_decode(pass)),
            None => (percent_decode(info), String::new()),
        });
        let path = tail.split('?').next().unwrap_or("");
        if !path.is_empty() && path != "/" {
            return Err(bad(format!("unexpected path {path:?} (MQTT URLs have none)")));
        }
        let mut client_id = None;
        let mut session_expiry = DEFAULT_SESSION_EXPIRY;
        if let Some((_, query)) = tail.split_once('?') {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                match key {
                    "client_id" => client_id = Some(percent_decode(value)),
                    "session_expiry" => {
                        session_expiry =
                            value.parse().map_err(|_| bad(format!("session_expiry {value:?} is not seconds")))?;
                    }
                    other => return Err(bad(format!("unknown URL parameter {other:?}"))),
                }
            }
        }
        let client_id = sanitize_client_id(&client_id.unwrap_or_else(default_client_id));
        if client_id.is_empty() {
            return Err(bad("client_id is empty".into()));
        }
        check_topic_level("namespace", &options.namespace)?;
        Ok(Config {
            host: host.to_owned(),
            port,
            credentials,
            client_id,
            session_expiry,
            events_prefix: format!("{}/events", options.namespace),
            namespace: options.namespace.clone(),
            options: options.clone(),
            described: format!("mqtt:// MQTT 5 broker at {}", crate::redact_url(url)),
        })
    }

    fn mqtt_options(&self, client_id: String, persistent: bool) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(KEEP_ALIVE)
            .set_clean_start(!persistent)
            .set_session_expiry_interval(Some(if persistent { self.session_expiry } else { 0 }))
            .set_manual_acks(true)
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_max_packet_size(Some(MAX_PACKET_SIZE))
            .set_outgoing_inflight_upper_limit(u16::MAX)
            .set_connection_timeout(self.options.call_timeout.as_secs().max(1));
        if let Some((user, pass)) = &self.credentials {
            o.set_credentials(user.clone(), pass.clone());
        }
        o
    }

    fn topic(&self, event_type: &str) -> String {
        format!("{}/{}", self.events_prefix, event_type.replace('.', "/"))
    }
}

/// A topic level we build topics and share names from: no separators, no wildcards.
fn check_topic_level(what: &str, value: &str) -> Result<(), BusError> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) || value.starts_with('$') {
        return Err(BusError::Config(format!("mqtt: {what} {value:?} must be non-empty without / + # or a leading $")));
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host name: stable across restarts of one instance and distinct between instances,
/// which is what a group session's client id needs (see the module doc).
fn default_client_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "strata".to_owned())
}

fn sanitize_client_id(raw: &str) -> String {
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("mqtt: {what}: {e}"))
}

/// Logs a connection error with what to do about it, and whether it was a takeover.
fn log_connection_error(client_id: &str, error: &ConnectionError) {
    match error {
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        }) => warn!(
            client_id,
            "mqtt session taken over by another connection with the same client id; give every instance its own \
             client_id (URL parameter)"
        ),
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
        ) => {
            warn!(client_id, error = %error, "mqtt broker refused the credentials")
        }
        _ => warn!(client_id, error = %error, "mqtt connection lost; reconnecting"),
    }
}

struct MqttBus {
    config: Arc<Config>,
    publisher: Publisher,
    /// The live session of each group in this process (weak: the subscriptions own it), and
    /// a signal that the previous one's task has ended, so a new session with the same
    /// client id does not race the old one's disconnect.
    groups: tokio::sync::Mutex<HashMap<String, GroupSlot>>,
}

struct GroupSlot {
    live: Weak<Session>,
    ended: watch::Receiver<bool>,
}

#[async_trait]
impl EventBus for MqttBus {
    fn describe(&self) -> String {
        self.config.described.clone()
    }

    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if events.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.options.call_timeout;
        match tokio::time::timeout_at(deadline, self.publisher.publish(&self.config, events)).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Unavailable(format!(
                "mqtt: publish not acknowledged within {:?}",
                self.config.options.call_timeout
            ))),
        }
    }

    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        let timeout = self.config.options.call_timeout;
        let session = match consumer {
            Consumer::Group(group) => {
                check_topic_level("group name", group)?;
                let mut groups = self.groups.lock().await;
                let previous = match groups.get(group) {
                    Some(slot) if slot.live.upgrade().is_some() => slot.live.upgrade(),
                    Some(slot) => {
                        let mut ended = slot.ended.clone();
                        // Closing is a DISCONNECT away; bounded in any case.
                        let _ = tokio::time::timeout(timeout, ended.wait_for(|done| *done)).await;
                        None
                    }
                    None => None,
                };
                match previous {
                    Some(session) => session,
                    None => {
                        let client_id = format!("{}-{}-{group}", self.config.client_id, self.config.namespace);
                        let filter = format!("$share/{group}/{}/#", self.config.events_prefix);
                        let session = Session::start(&self.config, client_id, filter, true);
                        session.wait_subscribed(timeout).await?;
                        groups.insert(
                            group.to_owned(),
                            GroupSlot { live: Arc::downgrade(&session), ended: session.ended.clone() },
                        );
                        session
                    }
                }
            }
            Consumer::Broadcast => {
                let client_id = format!("{}-bc-{}", self.config.client_id, uuid::Uuid::new_v4().simple());
                let filter = format!("{}/#", self.config.events_prefix);
                let session = Session::start(&self.config, client_id, filter, false);
                session.wait_subscribed(timeout).await?;
                session
            }
        };
        Ok(Box::new(MqttSubscription { session }))
    }
}

// ---------------------------------------------------------------------------------------
// Publishing

struct Publisher {
    client: AsyncClient,
    shared: Arc<PublisherShared>,
    connected: watch::Receiver<bool>,
    window: Arc<Semaphore>,
    driver: tokio::task::AbortHandle,
}

struct PublisherShared {
    state: Mutex<PublisherState>,
}

#[derive(Default)]
struct PublisherState {
    /// Queued in rumqttc, packet id not known yet, oldest first.
    unsent: VecDeque<Waiter>,
    /// Sent, waiting for the PUBACK.
    inflight: HashMap<u16, Waiter>,
    /// Set by a connection error: rumqttc may still report events of the dead connection,
    /// which must not be matched to new waiters; cleared by the next CONNACK.
    awaiting_connack: bool,
}

struct Waiter {
    done: oneshot::Sender<Result<(), BusError>>,
    /// Holds a place in the publish window until the PUBACK (or the failure).
    _permit: OwnedSemaphorePermit,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Publisher {
    fn start(config: &Config) -> Publisher {
        let client_id = format!("{}-pub-{}", config.client_id, uuid::Uuid::new_v4().simple());
        let mut options = config.mqtt_options(client_id.clone(), false);
        // Room for the whole window, so queueing under the lock never waits.
        options.set_request_channel_capacity(PUBLISH_WINDOW + 16);
        let (client, eventloop) = AsyncClient::new(options, PUBLISH_WINDOW + 16);
        let shared = Arc::new(PublisherShared {
            state: Mutex::new(PublisherState { awaiting_connack: true, ..PublisherState::default() }),
        });
        let (connected_tx, connected) = watch::channel(false);
        let driver = tokio::spawn(publisher_driver(eventloop, shared.clone(), connected_tx, client_id)).abort_handle();
        Publisher { client, shared, connected, window: Arc::new(Semaphore::new(PUBLISH_WINDOW)), driver }
    }

    async fn publish(&self, config: &Config, events: &[Event]) -> Result<(), BusError> {
        let mut connected = self.connected.clone();
        if !*connected.borrow() {
            connected.wait_for(|up| *up).await.map_err(|_| BusError::Unavailable("mqtt: publisher stopped".into()))?;
        }
        let mut confirmations = Vec::with_capacity(events.len());
        for event in events {
            let permit = self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| BusError::Unavailable("mqtt: publisher stopped".into()))?;
            let properties = PublishProperties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".to_owned()),
                user_properties: event.binary_headers(""),
                ..PublishProperties::default()
            };
            let (done, confirmation) = oneshot::channel();
            let mut state = self.shared.state.lock();
            if state.awaiting_connack {
                return Err(BusError::Unavailable("mqtt: connection lost".into()));
            }
            // Queued under the lock in waiter order: that order is how packet ids are matched.
            state.unsent.push_back(Waiter { done, _permit: permit });
            if let Err(e) = self.client.try_publish_with_properties(
                config.topic(&event.event_type),
                QoS::AtLeastOnce,
                false,
                event.data.clone().into_bytes(),
                properties,
            ) {
                state.unsent.pop_back();
                return Err(BusError::Config(format!("mqtt: cannot publish event {}: {e}", event.id)));
            }
            drop(state);
            confirmations.push(confirmation);
        }
        for confirmation in confirmations {
            match confirmation.await {
                Ok(result) => result?,
                Err(_) => return Err(BusError::Unavailable("mqtt: publisher stopped".into())),
            }
        }
        debug!(count = events.len(), "mqtt batch acknowledged");
        Ok(())
    }
}

async fn publisher_driver(
    mut eventloop: EventLoop,
    shared: Arc<PublisherShared>,
    connected: watch::Sender<bool>,
    client_id: String,
) {
    let mut backoff = RECONNECT_FIRST;
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                shared.state.lock().awaiting_connack = false;
                connected.send_replace(true);
                backoff = RECONNECT_FIRST;
                info!(client_id = %client_id, "mqtt publisher connected");
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                let mut state = shared.state.lock();
                if state.awaiting_connack {
                    continue;
                }
                match state.unsent.pop_front() {
                    Some(waiter) => {
                        state.inflight.insert(pkid, waiter);
                    }
                    None => warn!(pkid, "mqtt publish sent that no waiter expected"),
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                let mut state = shared.state.lock();
                if state.awaiting_connack {
                    continue;
                }
                if let Some(waiter) = state.inflight.remove(&ack.pkid) {
                    let result = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        reason => {
                            warn!(pkid = ack.pkid, reason = ?reason, "mqtt broker refused a publish");
                            Err(BusError::Unavailable(format!("mqtt: broker refused the event: {reason:?}")))
                        }
                    };
                    // The publish call may have timed out and gone; nothing to tell then.
                    let _ = waiter.done.send(result);
                }
            }
            Ok(_) => {}
            Err(error) => {
                connected.send_replace(false);
                {
                    let mut state = shared.state.lock();
                    // Under the lock nothing new is queued: clear what rumqttc still holds (it
                    // would go out on the next connection, unmatched), then fail every waiter.
                    eventloop.clean();
                    state.awaiting_connack = true;
                    let failed = state.unsent.len() + state.inflight.len();
                    let reason = format!("mqtt: connection lost before the PUBACK: {error}");
                    let state = &mut *state;
                    for waiter in state.unsent.drain(..).chain(state.inflight.drain().map(|(_, w)| w)) {
                        let _ = waiter.done.send(Err(BusError::Unavailable(reason.clone())));
                    }
                    if failed > 0 {
                        warn!(failed, "mqtt publishes failed with the connection");
                    }
                }
                log_connection_error(&client_id, &error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Consuming

/// One MQTT connection that receives: a group's persistent session or a broadcast
/// subscriber's clean one.
struct Session {
    client: AsyncClient,
    core: Arc<SessionCore>,
    ended: watch::Receiver<bool>,
    driver: tokio::task::AbortHandle,
    ack_wait: Duration,
    call_timeout: Duration,
    /// A filter this session never holds: UNSUBSCRIBE from it is answered (UNSUBACK, "no
    /// subscription existed") after everything sent before it, which makes it a fence.
    fence_filter: String,
}

struct SessionCore {
    state: Mutex<SessionState>,
    arrived: Notify,
    subscribed: watch::Sender<SubscribeStatus>,
    closing: AtomicBool,
    broadcast: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SubscribeStatus {
    Pending,
    Granted,
    Refused(String),
}

/// Where a message came from: a QoS 1 packet id of the current session (to PUBACK), or a
/// number of our own for what needs no acknowledgement (QoS 0, or a session the broker lost).
type Key = u32;
const LOCAL_KEYS: Key = 1 << 16;

#[derive(Default)]
struct SessionState {
    connected: bool,
    last_error: Option<String>,
    /// Received and kept until acknowledged.
    entries: HashMap<Key, Entry>,
    /// Keys not yet handed out, in arrival order.
    ready: VecDeque<Key>,
    /// Delivery token → key; a token dies with its entry.
    tokens: HashMap<u64, Key>,
    next_token: u64,
    next_local_key: Key,
    /// `ack` calls waiting for their fence's UNSUBACK, oldest first.
    fences: VecDeque<oneshot::Sender<Result<(), BusError>>>,
}

struct Entry {
    event: Event,
    handed_out: Option<Instant>,
}

impl SessionState {
    fn local_key(&mut self) -> Key {
        let key = LOCAL_KEYS + self.next_local_key;
        self.next_local_key = (self.next_local_key + 1) % (Key::MAX - LOCAL_KEYS);
        key
    }

    fn arrive(&mut self, publish: &Publish) -> bool {
        let event = match Event::from_binary(
            "",
            publish.properties.iter().flat_map(|p| p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            &publish.payload,
        ) {
            Ok(event) => event,
            Err(e) => {
                warn!(error = %e, topic = %String::from_utf8_lossy(&publish.topic), "mqtt message is not a Strata event; dropped");
                return false;
            }
        };
        let key = match publish.qos {
            QoS::AtMostOnce => self.local_key(),
            _ => Key::from(publish.pkid),
        };
        // A resend of what this session already holds (after a reconnect, same packet id).
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key, Entry { event, handed_out: None });
        self.ready.push_back(key);
        true
    }

    /// The broker started a new session: packet ids of the old one mean nothing now.
    fn forget_packet_ids(&mut self) {
        let old: Vec<Key> = self.entries.keys().copied().filter(|k| *k < LOCAL_KEYS).collect();
        if old.is_empty() {
            return;
        }
        warn!(count = old.len(), "mqtt broker lost the session; deliveries it had sent can no longer be acknowledged");
        for key in old {
            let fresh = self.local_key();
            if let Some(entry) = self.entries.remove(&key) {
                self.entries.insert(fresh, entry);
            }
            for k in self.ready.iter_mut().filter(|k| **k == key) {
                *k = fresh;
            }
            for k in self.tokens.values_mut().filter(|k| **k == key) {
                *k = fresh;
            }
        }
    }

    /// Up to `max` deliveries: overdue ones again first (oldest first), then new ones.
    fn take(&mut self, max: usize, ack_wait: Duration) -> Vec<(Key, Delivery)> {
        let now = Instant::now();
        let mut overdue: Vec<(Instant, Key)> = self
            .entries
            .iter()
            .filter_map(|(key, e)| e.handed_out.filter(|at| *at + ack_wait <= now).map(|at| (at, *key)))
            .collect();
        overdue.sort_unstable();
        let mut keys: Vec<Key> = overdue.into_iter().map(|(_, k)| k).take(max).collect();
        if !keys.is_empty() {
            debug!(count = keys.len(), "mqtt deliveries past the ack wait handed out again");
        }
        while keys.len() < max {
            match self.ready.pop_front() {
                Some(key) => keys.push(key),
                None => break,
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            entry.handed_out = Some(now);
            let token = self.next_token;
            self.next_token += 1;
            self.tokens.insert(token, key);
            out.push((key, Delivery { event: entry.event.clone(), token: DeliveryToken::Number(token) }));
        }
        out
    }

    /// Queues PUBACKs now, under the state lock, and only while connected: the driver clears
    /// rumqttc's queue under the same lock when the connection drops, so no PUBACK can go out
    /// on a later session in which its packet id names another message.
    fn queue_pubacks(&self, client: &AsyncClient, pkids: &[u16]) -> Result<(), BusError> {
        if !self.connected {
            return Err(BusError::Unavailable("mqtt: not connected".into()));
        }
        for pkid in pkids {
            client.try_ack(&ack_stub(*pkid)).map_err(|e| unavailable("ack", e))?;
        }
        Ok(())
    }

    /// Forgets acknowledged entries; returns the packet ids to PUBACK.
    fn acknowledge(&mut self, tokens: impl Iterator<Item = u64>) -> Vec<u16> {
        let mut pkids = Vec::new();
        for token in tokens {
            let Some(key) = self.tokens.remove(&token) else { continue };
            if self.entries.remove(&key).is_some()
                && let Ok(pkid) = u16::try_from(key)
            {
                pkids.push(pkid);
            }
        }
        if !pkids.is_empty() || !self.tokens.is_empty() {
            // Tokens of entries acknowledged through another token (a redelivery) go too.
            let entries = &self.entries;
            self.tokens.retain(|_, key| entries.contains_key(key));
        }
        pkids
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.core.closing.store(true, Ordering::SeqCst);
        // A DISCONNECT queued behind any PUBACKs: they go out first, and a group's session
        // stays with the broker (expiry > 0) for the next subscriber.
        if self.client.try_disconnect().is_err() {
            self.driver.abort();
            return;
        }
        let driver = self.driver.clone();
        let mut ended = self.ended.clone();
        let limit = self.call_timeout;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if tokio::time::timeout(limit, ended.wait_for(|done| *done)).await.is_err() {
                    driver.abort();
                }
            });
        } else {
            self.driver.abort();
        }
    }
}

/// Marks the session's task as ended however it ends, aborted included.
struct EndedGuard(watch::Sender<bool>);

impl Drop for EndedGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Session {
    fn start(config: &Config, client_id: String, filter: String, persistent: bool) -> Arc<Session> {
        let mut options = config.mqtt_options(client_id.clone(), persistent);
        // Room for a PUBACK and a fence per message in flight, so queueing never waits.
        let capacity = 4 * usize::from(RECEIVE_MAXIMUM) + 16;
        options.set_request_channel_capacity(capacity);
        let (client, eventloop) = AsyncClient::new(options, capacity);
        let (subscribed, _) = watch::channel(SubscribeStatus::Pending);
        let core = Arc::new(SessionCore {
            state: Mutex::new(SessionState::default()),
            arrived: Notify::new(),
            subscribed,
            closing: AtomicBool::new(false),
            broadcast: !persistent,
        });
        let (ended_tx, ended) = watch::channel(false);
        let driver = tokio::spawn(session_driver(
            eventloop,
            client.clone(),
            core.clone(),
            filter,
            client_id,
            EndedGuard(ended_tx),
        ))
        .abort_handle();
        Arc::new(Session {
            client,
            core,
            ended,
            driver,
            ack_wait: config.options.ack_wait,
            call_timeout: config.options.call_timeout,
            fence_filter: format!("{}/ack-fence", config.events_prefix),
        })
    }

    async fn wait_subscribed(&self, timeout: Duration) -> Result<(), BusError> {
        let mut status = self.core.subscribed.subscribe();
        let waited = tokio::time::timeout(timeout, status.wait_for(|s| *s != SubscribeStatus::Pending)).await;
        match waited {
            Ok(Ok(status)) => match &*status {
                SubscribeStatus::Granted => Ok(()),
                SubscribeStatus::Refused(why) => Err(BusError::Config(format!("mqtt: subscription refused: {why}"))),
                SubscribeStatus::Pending => Err(BusError::Unavailable("mqtt: not subscribed".into())),
            },
            Ok(Err(_)) => Err(BusError::Unavailable("mqtt: session task stopped".into())),
            Err(_) => {
                let why = self.core.state.lock().last_error.clone().unwrap_or_else(|| "no answer".into());
                Err(BusError::Unavailable(format!("mqtt: not subscribed within {timeout:?}: {why}")))
            }
        }
    }

    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.core.arrived.notified();
            tokio::pin!(arrived);
            // Registered before looking, so an arrival between the look and the wait wakes us.
            arrived.as_mut().enable();
            let (batch, next_due, down) = {
                let mut state = self.core.state.lock();
                let batch = state.take(max, self.ack_wait);
                if self.core.broadcast && !batch.is_empty() {
                    // Nobody else would get a broadcast delivery: acknowledge on hand-out,
                    // which only frees room in the receive window.
                    let pkids = state.acknowledge(batch.iter().filter_map(|(_, d)| match d.token {
                        DeliveryToken::Number(t) => Some(t),
                        DeliveryToken::Text(_) => None,
                    }));
                    // Not connected: the clean session is gone, nothing to acknowledge.
                    let _ = state.queue_pubacks(&self.client, &pkids);
                }
                let next_due = state.entries.values().filter_map(|e| e.handed_out).min().map(|at| at + self.ack_wait);
                let down = (!state.connected).then(|| state.last_error.clone().unwrap_or_default());
                (batch, next_due, down)
            };
            if !batch.is_empty() {
                return Ok(batch.into_iter().map(|(_, d)| d).collect());
            }
            if let Some(why) = down {
                return Err(BusError::Unavailable(format!("mqtt: not connected: {why}")));
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            let wake = next_due.map_or(deadline, |due| due.min(deadline));
            let _ = tokio::time::timeout_at(wake, arrived).await;
        }
    }

    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), BusError> {
        if self.core.broadcast {
            return Ok(());
        }
        let fenced = {
            let mut state = self.core.state.lock();
            if !state.connected {
                // Kept: acknowledged on a later call, or resent by the broker on reconnect.
                return Err(BusError::Unavailable("mqtt: not connected; ack again later".into()));
            }
            let pkids = state.acknowledge(deliveries.iter().filter_map(|d| match d.token {
                DeliveryToken::Number(t) => Some(t),
                DeliveryToken::Text(_) => None,
            }));
            if pkids.is_empty() {
                return Ok(());
            }
            state.queue_pubacks(&self.client, &pkids)?;
            // One fence behind the lot; queued under the lock, in the order of `fences`, which
            // is how UNSUBACKs are matched.
            self.client.try_unsubscribe(self.fence_filter.clone()).map_err(|e| unavailable("ack fence", e))?;
            let (tx, fenced) = oneshot::channel();
            state.fences.push_back(tx);
            fenced
        };
        let work = async {
            match fenced.await {
                Ok(result) => result,
                Err(_) => Err(BusError::Unavailable("mqtt: session task stopped".into())),
            }
        };
        match tokio::time::timeout(self.call_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Unavailable(format!("mqtt: ack not confirmed within {:?}", self.call_timeout))),
        }
    }
}

/// What rumqttc's `ack` needs to build a PUBACK for `pkid`.
fn ack_stub(pkid: u16) -> Publish {
    let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new(), None);
    publish.pkid = pkid;
    publish
}

async fn session_driver(
    mut eventloop: EventLoop,
    client: AsyncClient,
    core: Arc<SessionCore>,
    filter: String,
    client_id: String,
    _ended: EndedGuard,
) {
    let mut backoff = RECONNECT_FIRST;
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(connack))) => {
                backoff = RECONNECT_FIRST;
                {
                    let mut state = core.state.lock();
                    state.connected = true;
                    if !connack.session_present {
                        state.forget_packet_ids();
                    }
                }
                // Every time: a new or expired session has no subscription, and subscribing
                // again to the same filter keeps a resumed session's queue.
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    warn!(client_id = %client_id, error = %e, "mqtt subscribe could not be queued");
                }
                info!(client_id = %client_id, session_present = connack.session_present, "mqtt session connected");
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(suback))) => {
                let status = match suback.return_codes.first() {
                    Some(SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)) => SubscribeStatus::Granted,
                    Some(SubscribeReasonCode::Success(QoS::AtMostOnce)) => {
                        SubscribeStatus::Refused("the broker granted QoS 0 only".into())
                    }
                    other => SubscribeStatus::Refused(format!("{other:?}")),
                };
                if let SubscribeStatus::Refused(why) = &status {
                    warn!(client_id = %client_id, filter = %filter, reason = %why, "mqtt subscription refused");
                }
                core.subscribed.send_replace(status);
                core.arrived.notify_waiters();
            }
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                let fresh = core.state.lock().arrive(&publish);
                if fresh {
                    core.arrived.notify_waiters();
                } else if publish.qos != QoS::AtMostOnce
                    && !core.state.lock().entries.contains_key(&Key::from(publish.pkid))
                {
                    // Not a Strata event: acknowledge it so it does not hold a receive slot.
                    let _ = client.try_ack(&ack_stub(publish.pkid));
                }
            }
            Ok(MqttEvent::Incoming(Packet::UnsubAck(_))) => {
                // The broker handles a session's packets in order: the PUBACKs ahead of this
                // fence have been processed.
                if let Some(fence) = core.state.lock().fences.pop_front() {
                    let _ = fence.send(Ok(()));
                }
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) if core.closing.load(Ordering::SeqCst) => {
                debug!(client_id = %client_id, "mqtt session closed");
                return;
            }
            Ok(_) => {}
            Err(error) => {
                {
                    let mut state = core.state.lock();
                    // Drops PUBACKs still queued in rumqttc (see `queue_pubacks`).
                    eventloop.clean();
                    state.connected = false;
                    state.last_error = Some(error.to_string());
                    // rumqttc drops queued PUBACKs on a disconnect; the broker resends those
                    // messages on the next connection, and they are handed out again. (A fence
                    // rumqttc resends later may confirm a newer `ack` early: a possible
                    // duplicate, never a loss.)
                    for fence in state.fences.drain(..) {
                        let _ = fence.send(Err(unavailable("connection lost before the ack was confirmed", &error)));
                    }
                }
                core.arrived.notify_waiters();
                if core.closing.load(Ordering::SeqCst) {
                    return;
                }
                log_connection_error(&client_id, &error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                if core.closing.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}

struct MqttSubscription {
    session: Arc<Session>,
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.session.fetch(max.max(1), wait).await
    }

    async fn ack(&mut self, deliveries: &[Delivery]) -> Result<(), BusError> {
        self.session.ack(deliveries).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BusOptions {
        BusOptions { namespace: "strata".into(), ..BusOptions::default() }
    }

    #[test]
    fn urls_parse_and_tls_is_refused_by_name() {
        let c = Config::parse("mqtt://u:p%40ss@10.1.2.3:1884/?client_id=web-1&session_expiry=60", &options()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("10.1.2.3", 1884));
        assert_eq!(c.credentials, Some(("u".into(), "p@ss".into())));
        assert_eq!((c.client_id.as_str(), c.session_expiry), ("web-1", 60));
        assert_eq!(c.topic("user.updated"), "strata/events/user/updated");
        let c = Config::parse("mqtt://[::1]", &options()).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.session_expiry), ("::1", 1883, DEFAULT_SESSION_EXPIRY));
        assert!(matches!(Config::parse("mqtts://h:8883", &options()), Err(BusError::Config(m)) if m.contains("mqtts")));
        assert!(Config::parse("mqtt://h:x", &options()).is_err());
        assert!(Config::parse("mqtt://h/topic", &options()).is_err());
        assert!(Config::parse("mqtt://h?retain=1", &options()).is_err());
        let wild = BusOptions { namespace: "a/#".into(), ..BusOptions::default() };
        assert!(Config::parse("mqtt://h", &wild).is_err());
    }

    #[test]
    fn resends_are_not_handed_out_twice_and_stale_tokens_ack_nothing() {
        let mut state = SessionState::default();
        let event = Event {
            id: uuid::Uuid::now_v7(),
            source: "/strata".into(),
            event_type: "user.created".into(),
            time: strata_core::domain::Timestamp(1_764_057_600_000_000),
            subject: "u1".into(),
            sequence: 1,
            traceparent: None,
            data: "{}".into(),
        };
        let properties =
            PublishProperties { user_properties: event.binary_headers(""), ..PublishProperties::default() };
        let mut publish = Publish::new("strata/events/user/created", QoS::AtLeastOnce, "{}", Some(properties));
        publish.pkid = 7;
        assert!(state.arrive(&publish));
        assert!(!state.arrive(&publish), "a resend with the same packet id is the same message");
        let first = state.take(10, Duration::from_secs(30));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.event, event);
        // Handed out again once overdue, under a new token; either token acks it once.
        let again = state.take(10, Duration::ZERO);
        assert_eq!(again.len(), 1);
        let tokens = |d: &[(Key, Delivery)]| match d[0].1.token {
            DeliveryToken::Number(t) => t,
            DeliveryToken::Text(_) => unreachable!(),
        };
        assert_eq!(state.acknowledge([tokens(&again)].into_iter()), vec![7]);
        assert!(state.acknowledge([tokens(&first)].into_iter()).is_empty(), "pkid 7 may carry another message now");
        // A lost session: what it had sent is still handed out, its ack sends nothing.
        publish.pkid = 8;
        assert!(state.arrive(&publish));
        state.forget_packet_ids();
        let orphan = state.take(10, Duration::from_secs(30));
        assert!(state.acknowledge([tokens(&orphan)].into_iter()).is_empty());
        assert!(state.entries.is_empty());
    }
}
