//! MQTT-specific: subscriptions and the publisher recover after a broker restart.
//! Runs a private Mosquitto (with persistence, in a temporary directory) on a spare loopback
//! port, stops it with SIGTERM (which saves sessions) and starts it again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strata_core::events::{BusError, BusOptions, Consumer};

use crate::amqp_broker::{Proxy, fetch_until, publish_until_accepted};
use crate::conformance as c;

struct PrivateMosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateMosquitto {
    /// `None` (reported as unusable) when there is no `mosquitto` binary.
    async fn start() -> Option<PrivateMosquitto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = std::env::temp_dir().join(format!("strata-mosquitto-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).ok()?;
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nuser root\n",
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).ok()?;
        let mut broker = PrivateMosquitto { port, dir, child: None };
        if let Err(why) = broker.run().await {
            strata_core::testing::unusable("mqtt broker restart", "mqtt", &why);
            return None;
        }
        Some(broker)
    }

    async fn run(&mut self) -> Result<(), String> {
        let binary = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| !b.starts_with('/') || std::path::Path::new(b).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {binary}: {e}"))?;
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("private mosquitto did not listen on {}", self.port))
    }

    /// SIGTERM, so Mosquitto writes its persistence file, then wait for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn short_timeouts() -> BusOptions {
    BusOptions { call_timeout: Duration::from_secs(2), ..c::options() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_and_the_publisher_recover_after_a_broker_restart() {
    let Some(mut broker) = PrivateMosquitto::start().await else { return };
    let url = format!("mqtt://127.0.0.1:{}/?client_id=restart-test&session_expiry=600", broker.port);
    let bus = strata_events::open(&url, &short_timeouts()).await.expect("open");
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("subscribe");
    let subject = uuid::Uuid::now_v7().to_string();
    let (before, during) = (c::event(&subject, 1), c::event(&subject, 2));
    bus.publish(std::slice::from_ref(&before)).await.expect("publish");
    let got = c::collect(sub.as_mut(), 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].event.id, before.id);
    sub.ack(&got).await.expect("ack");

    broker.stop();
    assert!(matches!(bus.publish(std::slice::from_ref(&during)).await, Err(BusError::Unavailable(_))));
    broker.run().await.expect("restart");
    // Mosquitto 2.0 restores the session but not its shared subscription, so until the
    // subscriber has reconnected and subscribed again an event goes nowhere ("no matching
    // subscribers"); re-send, as the relay would, until it arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while tokio::time::Instant::now() < deadline
        && !got.iter().any(|d: &strata_core::events::Delivery| d.event == during)
    {
        publish_until_accepted(bus.as_ref(), std::slice::from_ref(&during)).await;
        match sub.fetch(10, Duration::from_secs(1)).await {
            Ok(batch) => got.extend(batch),
            Err(BusError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("fetch did not recover: {e}"),
        }
    }
    assert!(got.iter().any(|d| d.event == during), "the same subscription resumes: {got:?}");
    assert!(got.iter().all(|d| d.event.id != before.id), "an acknowledged event stays acknowledged");
    sub.ack(&got).await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_off_gets_what_was_published_meanwhile() {
    let options = short_timeouts();
    // Publishes straight to the broker, in the same namespace.
    let Some(publisher) = crate::mqtt(options.clone()).await else { return };
    let proxy = Proxy::start("127.0.0.1:1883").await;
    let url = format!("mqtt://127.0.0.1:{}/?client_id=cut-test&session_expiry=600", proxy.port());
    let bus = strata_events::open(&url, &options).await.expect("open");
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("subscribe");
    let subject = uuid::Uuid::now_v7().to_string();
    let (before, during) = (c::event(&subject, 1), c::event(&subject, 2));
    publisher.publish(std::slice::from_ref(&before)).await.expect("publish");
    let got = c::collect(sub.as_mut(), 1, Duration::from_secs(20)).await;
    sub.ack(&got).await.expect("ack");

    proxy.cut();
    // Published directly while the subscriber's connection is down: its session queues it.
    publisher.publish(std::slice::from_ref(&during)).await.expect("publish");
    assert!(matches!(bus.publish(std::slice::from_ref(&during)).await, Err(BusError::Unavailable(_))));
    proxy.restore().await;
    let got = fetch_until(sub.as_mut(), during.id).await;
    assert!(got.iter().any(|d| d.event == during), "{got:?}");
    assert!(got.iter().all(|d| d.event.id != before.id));
}

#[tokio::test]
async fn mqtts_and_malformed_urls_are_configuration_errors() {
    let options = c::options();
    for url in ["mqtts://127.0.0.1:8883", "mqtt://127.0.0.1:1883/some/path", "mqtt://127.0.0.1:1883?qos=2"] {
        assert!(matches!(strata_events::open(url, &options).await, Err(BusError::Config(_))), "{url}");
    }
}
