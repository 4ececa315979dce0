//! RabbitMQ-specific: the adapter survives the broker going away. A private RabbitMQ node is
//! impractical here (an Erlang node with its own name, cookie and data directory, seconds to
//! boot), so the broker "goes away" behind a TCP proxy on a spare loopback port that cuts
//! every connection and refuses new ones until it is restored. The MQTT tests reuse it for
//! the publisher.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_core::events::{BusError, BusOptions, Consumer, Delivery, Event};
use strata_core::ports::{EventBus, Subscription};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::conformance as c;

/// Forwards 127.0.0.1:port to `target` until cut.
pub struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a spare port");
        let port = listener.local_addr().expect("local address").port();
        let proxy = Proxy { port, target: target.to_owned(), tasks: Arc::new(Mutex::new(Vec::new())) };
        proxy.serve(listener);
        proxy
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().push(connection);
            }
        });
        self.tasks.lock().push(accept);
    }

    /// Every connection dropped, the port closed.
    pub fn cut(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    /// Listening again on the same port.
    pub async fn restore(&self) {
        for _ in 0..50 {
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", self.port)).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("port {} could not be bound again", self.port);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Retries `publish` until the bus has reconnected (the relay's backoff, in short).
pub async fn publish_until_accepted(bus: &dyn EventBus, events: &[Event]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bus.publish(events).await {
            Ok(()) => return,
            Err(BusError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("publish did not recover: {e}"),
        }
    }
}

/// Fetches until `id` arrives, tolerating the errors of a subscription that is reconnecting.
pub async fn fetch_until(sub: &mut dyn Subscription, id: uuid::Uuid) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while tokio::time::Instant::now() < deadline && !got.iter().any(|d: &Delivery| d.event.id == id) {
        match sub.fetch(10, Duration::from_millis(500)).await {
            Ok(batch) => got.extend(batch),
            Err(BusError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("fetch did not recover: {e}"),
        }
    }
    got
}

fn short_timeouts() -> BusOptions {
    BusOptions { call_timeout: Duration::from_secs(2), ..c::options() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_fetch_recover_when_the_broker_comes_back() {
    if crate::amqp(c::options()).await.is_none() {
        return;
    }
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let bus = strata_events::open(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()), &short_timeouts())
        .await
        .expect("open");
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("subscribe");
    let subject = uuid::Uuid::now_v7().to_string();
    let (before, during) = (c::event(&subject, 1), c::event(&subject, 2));
    bus.publish(std::slice::from_ref(&before)).await.expect("publish");
    let got = c::collect(sub.as_mut(), 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].event.id, before.id);
    sub.ack(&got).await.expect("ack");

    proxy.cut();
    assert!(matches!(bus.publish(std::slice::from_ref(&during)).await, Err(BusError::Unavailable(_))));
    // A fetch while the broker is away is an error or nothing, and returns.
    let _ = sub.fetch(10, Duration::from_millis(200)).await;

    proxy.restore().await;
    publish_until_accepted(bus.as_ref(), std::slice::from_ref(&during)).await;
    let got = fetch_until(sub.as_mut(), during.id).await;
    assert!(got.iter().any(|d| d.event == during), "the same subscription gets events again: {got:?}");
    assert!(got.iter().all(|d| d.event.id != before.id), "an acknowledged event stays acknowledged");
    sub.ack(&got).await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_succeeds_while_the_broker_is_down() {
    if crate::amqp(c::options()).await.is_none() {
        return;
    }
    let proxy = Proxy::start("127.0.0.1:5672").await;
    proxy.cut();
    let bus = strata_events::open(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()), &short_timeouts())
        .await
        .expect("open does not need the broker");
    assert!(bus.describe().contains("guest:***@") && !bus.describe().contains(":guest@"), "{}", bus.describe());
    let event = c::event(&uuid::Uuid::now_v7().to_string(), 1);
    assert!(matches!(bus.publish(std::slice::from_ref(&event)).await, Err(BusError::Unavailable(_))));
    assert!(matches!(bus.subscribe(Consumer::Group("audit")).await, Err(BusError::Unavailable(_))));
    proxy.restore().await;
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("subscribe once it is back");
    publish_until_accepted(bus.as_ref(), std::slice::from_ref(&event)).await;
    let got = fetch_until(sub.as_mut(), event.id).await;
    assert!(got.iter().any(|d| d.event == event));
}

#[tokio::test]
async fn amqps_and_malformed_urls_are_configuration_errors() {
    let options = c::options();
    for url in ["amqps://guest:guest@127.0.0.1:5671/%2f", "amqp://127.0.0.1:notaport/%2f"] {
        assert!(matches!(strata_events::open(url, &options).await, Err(BusError::Config(_))), "{url}");
    }
}
