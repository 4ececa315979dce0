//! Kafka-specific cases: the records as any other Kafka client reads them (CloudEvents Kafka
//! binding, binary mode), and a broker that goes away and comes back. The restart case runs
//! its own tansu (`.ci/kafka.sh` installs it) on a spare loopback port, with its data in a
//! temporary directory so that it survives the restart.

// Test helpers outside `#[test]` functions: a failed step should panic right there.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use strata_core::events::{BusError, BusOptions, Consumer, Event};
use tokio::time::Instant;

use crate::conformance::{collect, event, options};

/// Reads every record of `<ns>.events` from the start, as a plain Kafka consumer would.
fn raw_records(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-wire-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert_eq!(partitions.len(), 3, "created with the default partition count");
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).unwrap();
        remaining += high - low;
        assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while remaining > 0 && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            out.push(message.unwrap().detach());
            remaining -= 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_cloudevents_in_binary_mode_keyed_by_subject() {
    let options = options();
    let Some(bus) = crate::kafka(options.clone()).await else { return };
    let url = std::env::var("STRATA_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".to_owned());
    let bootstrap = url.trim_start_matches("kafka://").split('?').next().unwrap().to_owned();
    let sent: Vec<Event> = (1..=3).map(|i| event(&uuid::Uuid::now_v7().to_string(), i)).collect();
    bus.publish(&sent).await.unwrap();
    let topic = format!("{}.events", options.namespace);
    let records = tokio::task::spawn_blocking(move || raw_records(&bootstrap, &topic)).await.unwrap();
    assert_eq!(records.len(), sent.len());
    for record in &records {
        let headers: Vec<(String, String)> = record
            .headers()
            .unwrap()
            .iter()
            .map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap().to_vec()).unwrap()))
            .collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let e = sent.iter().find(|e| Some(e.id.to_string().as_str()) == header("ce_id")).expect("ce_id is an event id");
        assert_eq!(record.key(), Some(e.subject.as_bytes()), "the key is the subject");
        assert_eq!(record.payload(), Some(e.data.as_bytes()), "the value is data");
        assert_eq!(header("content-type"), Some("application/json"));
        assert_eq!(header("ce_specversion"), Some("1.0"));
        assert_eq!(header("ce_type"), Some("dev.strata.user.updated"));
        assert_eq!(header("ce_source"), Some("/strata/test"));
        assert_eq!(header("ce_subject"), Some(e.subject.as_str()));
        assert_eq!(header("ce_partitionkey"), Some(e.subject.as_str()));
        assert_eq!(header("ce_sequence"), Some(format!("{:020}", e.sequence).as_str()));
        assert_eq!(header("ce_traceparent"), e.traceparent.as_deref());
        assert!(header("ce_time").is_some_and(|t| t.ends_with('Z')));
        assert!(header("ce_datacontenttype").is_none(), "binary mode carries it as content-type");
    }
}

#[tokio::test]
async fn malformed_urls_fail_open_and_a_missing_broker_does_not() {
    for bad in ["kafka://", "kafka://host-without-port", "kafka://u:secret@127.0.0.1:9092"] {
        let err = strata_events::open(bad, &BusOptions::default()).await.err().expect(bad);
        assert!(matches!(err, BusError::Config(_)), "{bad}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    // Nothing listens on port 1: open succeeds (librdkafka connects in the background).
    let options = BusOptions { call_timeout: Duration::from_millis(1500), ..options() };
    let bus = strata_events::open("kafka://127.0.0.1:1", &options).await.unwrap();
    assert!(bus.describe().contains("127.0.0.1:1"));
    let err = bus.publish(&[event("s", 1)]).await.unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
}

/// The tansu binary `.ci/kafka.sh` installs, or `STRATA_TANSU`.
fn tansu_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("STRATA_TANSU") {
        return Some(PathBuf::from(path));
    }
    let tools = std::env::var("STRATA_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|home| PathBuf::from(home).join(".cache/strata-tools")))
        .ok()?;
    let path = tools.join("tansu/bin/tansu");
    path.is_file().then_some(path)
}

/// A private tansu on 127.0.0.1:`port` with its SQLite storage in `dir`; killed on drop.
struct Tansu {
    child: Child,
}

impl Tansu {
    fn start(binary: &PathBuf, port: u16, dir: &PathBuf) -> Tansu {
        let listener = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let child = Command::new(binary)
            .current_dir(dir)
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tansu { child }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries `publish` until it succeeds (librdkafka reconnects in the background).
async fn publish_eventually(bus: &dyn strata_core::ports::EventBus, events: &[Event]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bus.publish(events).await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "publish never recovered: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_fetch_recover_after_the_broker_restarts() {
    let Some(binary) = tansu_binary() else {
        strata_core::testing::unusable("kafka broker restart", "kafka", "no tansu binary (run .ci/kafka.sh)");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("strata-tansu-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = BusOptions { call_timeout: Duration::from_secs(2), ..options() };
    let url = format!("kafka://127.0.0.1:{port}");

    // Down at open: open works, calls fail as unavailable.
    let bus = strata_events::open(&url, &options).await.unwrap();
    let s = uuid::Uuid::now_v7().to_string();
    assert!(matches!(bus.publish(&[event(&s, 1)]).await, Err(BusError::Unavailable(_))));

    let tansu = Tansu::start(&binary, port, &dir);
    let first = event(&s, 1);
    publish_eventually(bus.as_ref(), std::slice::from_ref(&first)).await;
    let mut sub = bus.subscribe(Consumer::Group("restart")).await.unwrap();
    let got = collect(sub.as_mut(), 1, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|d| d.event.id).collect::<Vec<_>>(), vec![first.id]);
    sub.ack(&got).await.unwrap();

    drop(tansu);
    let second = event(&s, 2);
    assert!(matches!(bus.publish(std::slice::from_ref(&second)).await, Err(BusError::Unavailable(_))));
    // librdkafka notices every broker is down within a few attempts; fetch then says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sub.fetch(10, Duration::from_millis(500)).await {
            Err(BusError::Unavailable(_)) => break,
            Ok(batch) => assert!(batch.is_empty(), "{batch:?}"),
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "fetch kept answering as if the broker were there");
    }

    let _tansu = Tansu::start(&binary, port, &dir);
    publish_eventually(bus.as_ref(), std::slice::from_ref(&second)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        // Errors while librdkafka reconnects are expected; the same subscription recovers.
        got = sub.fetch(10, Duration::from_millis(500)).await.unwrap_or_default();
    }
    assert_eq!(got.iter().map(|d| d.event.id).collect::<Vec<_>>(), vec![second.id], "acknowledged stays acknowledged");
    sub.ack(&got).await.unwrap();
    drop(sub);
    let _ = std::fs::remove_dir_all(&dir);
}
