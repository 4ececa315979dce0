//! Event pipeline benchmark (issue 9), driven by `bench/events.sh`.
//!
//! `events`: a steady write load of outbox rows (open loop: each writer has its own
//! schedule, so a slow pipeline cannot slow the writes down and hide its latency) → the
//! relay → the broker → one listener. Reports events/s received and outbox-to-listener
//! latency (listener receipt − the event's `time`, i.e. its commit).
//!
//! `webhooks`: N deliveries queued for one endpoint on a local receiver, drained by the
//! dispatcher; the baseline is the same number of bare `HttpSender` requests at the same
//! concurrency, so the ratio is what the durable queue costs over the network path alone.
//!
//! Prints one `key=value` line per run on stdout. Every run is bounded in count and time.
//!
//!   cargo run --release -p strata --example events_bench -- events nats://127.0.0.1:4222 RATE SECONDS
//!   cargo run --release -p strata --example events_bench -- webhooks COUNT

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use strata_core::domain::OutboxEvent;
use strata_core::events::{BusOptions, Event};
use strata_core::ports::{Clock, NoopObserver, Store, SystemClock};
use strata_core::relay::{Relay, RelaySettings};
use strata_core::worker::{Listener, run_listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writers sharing the load; each writes one event per tick of its own schedule.
const WRITERS: usize = 16;
/// How long to wait for the last events after the writes end.
const DRAIN: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    // Warnings from the adapters go to stderr (RUST_LOG overrides).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("events") if args.len() == 4 => {
            events(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap()).await;
        }
        Some("webhooks") if args.len() == 2 => webhooks(args[1].parse().unwrap()).await,
        _ => {
            eprintln!("usage: events_bench events URL RATE SECONDS | webhooks COUNT");
            std::process::exit(2);
        }
    }
}

async fn store() -> (tempdir::Dir, Arc<dyn Store>) {
    let url = std::env::var("STRATA_BENCH_DATABASE_URL").ok();
    let dir = tempdir::Dir::new();
    let url = url.unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.0.display()));
    (dir, strata_store::connect(&strata_store::StoreOptions::new(url)).await.unwrap())
}

/// Records what arrives from this run (by `source`), once per event id.
struct Collector {
    source: String,
    seen: Mutex<HashSet<uuid::Uuid>>,
    latencies_us: Mutex<Vec<u64>>,
    duplicates: AtomicU64,
    last_arrival: Mutex<Option<Instant>>,
}

#[async_trait]
impl Listener for Collector {
    fn name(&self) -> &'static str {
        "bench"
    }
    async fn apply(&self, events: &[Event]) -> Result<(), String> {
        let now = SystemClock.now();
        let mut seen = self.seen.lock();
        let mut lat = self.latencies_us.lock();
        for e in events.iter().filter(|e| e.source == self.source) {
            if seen.insert(e.id) {
                lat.push(now.0.saturating_sub(e.time.0).max(0) as u64);
            } else {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        *self.last_arrival.lock() = Some(Instant::now());
        Ok(())
    }
}

async fn events(url: &str, rate: u64, seconds: u64) {
    let (_dir, store) = store().await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    // A namespace of its own: no other run's or test's events in the way.
    let options = BusOptions { namespace: format!("bench{}", &run[20..]), ..BusOptions::default() };
    let bus = strata_events::open(url, &options).await.unwrap();
    let source = format!("/strata-bench/{run}");
    let settings = RelaySettings { source: source.clone(), ..RelaySettings::default() };
    let relay = Relay::new(store.clone(), bus.clone(), Arc::new(SystemClock), Arc::new(NoopObserver), settings, run);
    let wake = relay.waker();
    let collector = Arc::new(Collector {
        source,
        seen: Mutex::new(HashSet::new()),
        latencies_us: Mutex::new(Vec::new()),
        duplicates: AtomicU64::new(0),
        last_arrival: Mutex::new(None),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay_task = tokio::spawn(relay.run(stopped.clone()));
    let listener_task = tokio::spawn(run_listener(
        bus.clone(),
        collector.clone(),
        Arc::new(SystemClock),
        Arc::new(NoopObserver),
        stopped.clone(),
    ));
    // Let the relay take its leases and the listener subscribe before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let total = rate * seconds;
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS as u64 {
        let (store, wake, written) = (store.clone(), wake.clone(), written.clone());
        let mine = total / WRITERS as u64 + u64::from(w < total % WRITERS as u64);
        let interval = Duration::from_secs_f64(WRITERS as f64 / rate as f64);
        writers.push(tokio::spawn(async move {
            let aggregate = uuid::Uuid::now_v7();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..mine {
                tick.tick().await;
                let e = OutboxEvent {
                    id: uuid::Uuid::now_v7(),
                    aggregate_id: aggregate,
                    event_type: "login.failed",
                    payload: format!(r#"{{"n":{n},"actor":{{"type":"system"}}}}"#),
                    created_at: SystemClock.now(),
                    traceparent: None,
                };
                store.record_event(&e).await.unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                // As the API does after a commit.
                wake.notify_one();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let write_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + DRAIN;
    while (collector.seen.lock().len() as u64) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let _ = relay_task.await;
    let _ = listener_task.await;

    let received = collector.seen.lock().len() as u64;
    let last = collector.last_arrival.lock().unwrap_or_else(Instant::now);
    let span = last.duration_since(started).as_secs_f64();
    let mut lat = std::mem::take(&mut *collector.latencies_us.lock());
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    let ms = |v: Option<u64>| v.map_or("n/a".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0));
    println!(
        "broker={} target_rate={rate} written={} write_rate={:.0} received={received} duplicates={} \
         events_per_s={:.0} p50_ms={} p99_ms={} max_ms={}",
        url.split("://").next().unwrap_or(url),
        written.load(Ordering::Relaxed),
        written.load(Ordering::Relaxed) as f64 / write_secs,
        collector.duplicates.load(Ordering::Relaxed),
        received as f64 / span.max(1e-9),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(lat.last().copied()),
    );
}

/// A minimal HTTP/1.1 receiver: answers every request `204` and closes (the sender opens
/// one connection per delivery). Counts requests.
async fn receiver() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { continue };
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                // Head, then Content-Length bytes of body.
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    (url, count)
}

async fn webhooks(count: u64) {
    use strata_core::webhooks::{
        Dispatcher, NetworkPolicy, WebhookDelivery, WebhookEndpoint, WebhookSecret, WebhookSender, WebhookSettings,
        WebhookUrl, request_for,
    };
    let (_dir, store) = store().await;
    let (url, received) = receiver().await;
    let policy = NetworkPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()] };
    let sender: Arc<dyn WebhookSender> = Arc::new(strata_webhooks::HttpSender::new(policy).unwrap());
    let settings = WebhookSettings::default();
    let now = SystemClock.now();
    let endpoint = WebhookEndpoint {
        id: uuid::Uuid::now_v7(),
        url: WebhookUrl::parse(&url).unwrap(),
        events: vec!["login.failed".into()],
        description: String::new(),
        enabled: true,
        disabled_reason: None,
        secrets: vec![WebhookSecret::generate()],
        rate_limit: 1_000_000,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let delivery = |i: u64| {
        let event = Event {
            id: uuid::Uuid::now_v7(),
            source: "/strata-bench".into(),
            event_type: "login.failed".into(),
            time: now,
            subject: endpoint.id.to_string(),
            sequence: i + 1,
            traceparent: None,
            data: format!(r#"{{"n":{i},"actor":{{"type":"system"}}}}"#),
        };
        WebhookDelivery::new(endpoint.id, event, now)
    };

    // Baseline: the same requests straight through the sender, same concurrency.
    let requests: Vec<_> = (0..count).map(|i| request_for(&endpoint, &delivery(i), now, settings.timeout)).collect();
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(requests));
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency {
        let (queue, sender) = (queue.clone(), sender.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(r) = queue.lock().pop() else { break };
                sender.send(&r).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let raw_per_s = count as f64 / started.elapsed().as_secs_f64();
    let raw_received = received.swap(0, Ordering::SeqCst);

    // The durable path: queued in the store, claimed, sent, recorded.
    let batch: Vec<_> = (0..count).map(delivery).collect();
    for chunk in batch.chunks(500) {
        store.enqueue_deliveries(chunk).await.unwrap();
    }
    let dispatcher = Dispatcher::new(store.clone(), Arc::new(SystemClock), sender, Arc::new(NoopObserver), settings);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(dispatcher.clone().run(stopped));
    let deadline = Instant::now() + DRAIN;
    while received.load(Ordering::SeqCst) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let durable_per_s = received.load(Ordering::SeqCst) as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = task.await;
    println!(
        "webhooks count={count} raw_received={raw_received} raw_per_s={raw_per_s:.0} delivered={} \
         deliveries_per_s={durable_per_s:.0} ratio={:.0}%",
        received.load(Ordering::SeqCst),
        100.0 * durable_per_s / raw_per_s
    );
}

/// A temporary directory removed on drop (no extra dependency for one directory).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("strata-events-bench-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
