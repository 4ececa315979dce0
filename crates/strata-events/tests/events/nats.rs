//! NATS-specific behaviour: the `Nats-Msg-Id` dedup window, a group member's unacknowledged
//! deliveries going to another member, and publish/fetch working again after the server
//! restarts — the last against a private `nats-server` on a spare loopback port, so the shared
//! one is never stopped. [`ServerProcess`] and [`a_vanished_members_deliveries_go_to_another`]
//! serve the Redis tests too.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use strata_core::events::{BusError, BusOptions, Consumer, Event};
use strata_core::ports::{EventBus, Subscription};

use super::conformance::{collect, event, options};

const PATIENCE: Duration = Duration::from_secs(20);

/// A broker process of the test's own on a free loopback port, killed on drop.
pub struct ServerProcess {
    program: &'static str,
    args: Vec<String>,
    pub port: u16,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `program` with `args(port)`; `None` (reported as unusable) when it is not installed
    /// or does not start listening.
    pub async fn start(program: &'static str, backend: &str, args: impl Fn(u16) -> Vec<String>) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let Ok(port) = port else {
            strata_core::testing::unusable("broker restart", backend, "no free loopback port");
            return None;
        };
        let mut server = ServerProcess { program, args: args(port), port, child: None };
        if let Err(why) = server.spawn().await {
            strata_core::testing::unusable("broker restart", backend, &why);
            return None;
        }
        Some(server)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{} did not listen on {}", self.program, self.port))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn start_again(&mut self) {
        self.spawn().await.expect("restart the broker");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Retries `publish` until the broker is back (bounded).
pub async fn publish_when_back(bus: &dyn EventBus, events: &[Event]) {
    for _ in 0..60 {
        match bus.publish(events).await {
            Ok(()) => return,
            Err(BusError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => panic!("publish after the restart: {e}"),
        }
    }
    panic!("publish never worked again after the restart");
}

/// Fetches (tolerating errors while the broker comes back) until `id` arrived; acks everything.
pub async fn receives(sub: &mut dyn Subscription, id: uuid::Uuid) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    while tokio::time::Instant::now() < deadline {
        match sub.fetch(10, Duration::from_millis(500)).await {
            Ok(batch) => {
                let _ = sub.ack(&batch).await;
                if batch.iter().any(|d| d.event.id == id) {
                    return true;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    false
}

/// A member that took deliveries and went away without acknowledging them (a crashed worker):
/// after the ack wait another member of its group gets them.
pub async fn a_vanished_members_deliveries_go_to_another(bus: Arc<dyn EventBus>) {
    let mut crashed = bus.subscribe(Consumer::Group("workers")).await.expect("subscribe");
    let events: Vec<Event> = (1..=3).map(|i| event(&uuid::Uuid::now_v7().to_string(), i)).collect();
    bus.publish(&events).await.expect("publish");
    assert_eq!(collect(crashed.as_mut(), 3, PATIENCE).await.len(), 3);
    drop(crashed);
    let mut survivor = bus.subscribe(Consumer::Group("workers")).await.expect("subscribe");
    let got = collect(survivor.as_mut(), 3, PATIENCE).await;
    survivor.ack(&got).await.expect("ack");
    let ids: HashSet<_> = got.iter().map(|d| d.event.id).collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_batch_is_stored_once() {
    let Some(bus) = crate::nats(options()).await else { return };
    let mut sub = bus.subscribe(Consumer::Group("dedup")).await.expect("subscribe");
    let events: Vec<Event> = (1..=5).map(|i| event("dedup", i)).collect();
    bus.publish(&events).await.expect("publish");
    // The relay re-sends a whole batch when it is unsure whether it got through.
    bus.publish(&events).await.expect("re-send");
    let got = collect(sub.as_mut(), events.len(), PATIENCE).await;
    sub.ack(&got).await.expect("ack");
    assert_eq!(got.len(), events.len());
    let more = sub.fetch(10, Duration::from_secs(1)).await.expect("fetch");
    assert!(more.is_empty(), "duplicates delivered: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_vanished_members_deliveries_go_to_another() {
    let Some(bus) = crate::nats(options()).await else { return };
    a_vanished_members_deliveries_go_to_another(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_fetch_work_again_after_the_server_restarts() {
    let store = std::env::temp_dir().join(format!("strata-nats-{}", uuid::Uuid::now_v7().simple()));
    let store_arg = store.display().to_string();
    let server = ServerProcess::start("nats-server", "nats", |port| {
        ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", &store_arg].map(str::to_owned).to_vec()
    })
    .await;
    let Some(mut server) = server else { return };
    let options = BusOptions { call_timeout: Duration::from_secs(1), ..options() };
    let bus = strata_events::open(&format!("nats://127.0.0.1:{}", server.port), &options).await.expect("open");
    let s = uuid::Uuid::now_v7().to_string();

    let before = event(&s, 1);
    publish_when_back(bus.as_ref(), std::slice::from_ref(&before)).await;
    let mut group = bus.subscribe(Consumer::Group("restart")).await.expect("subscribe");
    let mut broadcast = bus.subscribe(Consumer::Broadcast).await.expect("subscribe");
    assert!(receives(group.as_mut(), before.id).await);

    server.stop();
    let during = event(&s, 2);
    assert!(matches!(bus.publish(std::slice::from_ref(&during)).await, Err(BusError::Unavailable(_))));

    server.start_again().await;
    let after = event(&s, 3);
    publish_when_back(bus.as_ref(), std::slice::from_ref(&after)).await;
    assert!(receives(group.as_mut(), after.id).await, "the group gets events again");
    assert!(receives(broadcast.as_mut(), after.id).await, "broadcast gets events again");
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
}
