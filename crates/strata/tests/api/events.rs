//! Events end to end (issue 9): the outbox relay, the bus and the listeners, through the
//! real server and, for the relay's failure modes, through the relay itself over a real
//! store and the in-process bus with faults injected.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use strata_core::events::{BusError, BusOptions, Consumer, Event};
use strata_core::ports::{EventBus, NoopObserver, Store, Subscription};
use strata_core::relay::{Relay, RelaySettings};
use strata_core::worker::{AuditListener, run_listener};

use super::*;

/// Polls the audit log until `want` entries match `path`'s filter (bounded).
pub(super) async fn audit_until(app: &TestApp, path: &str, want: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = app.get(path, Some(ADMIN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let items = r.body["items"].as_array().unwrap().clone();
        if items.len() >= want || tokio::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every kind of change reaches the audit log once, with who did it, the user as the API
/// shows it, and no secret; the log filters and pages like the user list.
async fn the_audit_log_records_every_change(app: TestApp) {
    // Each change a second apart, so `since` has something to split.
    let tick = || app.clock.advance(Duration::from_secs(1));
    let (user, token) = app.user_with_token("audited@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    tick();
    assert_eq!(app.login("audited@example.com", "wrong password").await.status, StatusCode::UNAUTHORIZED);
    tick();
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("content-type", "application/json"),
                ("if-match", "\"1\""),
            ],
            Some(Bytes::from(json!({"name": "Renamed", "role": "admin"}).to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        app.send(Method::DELETE, "/v1/sessions/current", &[("authorization", &format!("Bearer {token}"))], None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = app
        .send(Method::DELETE, &format!("/v1/users/{id}"), &[("authorization", &format!("Bearer {ADMIN}"))], None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    let items = audit_until(&app, &format!("/v1/audit?user_id={id}"), 6).await;
    let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["user.created", "session.created", "login.failed", "user.updated", "session.revoked", "user.deleted"],
        "{items:#?}"
    );
    for e in &items {
        assert_eq!(e["subject"], id.as_str());
        let text = e.to_string();
        assert!(!text.contains("argon2") && !text.contains(&token) && !text.contains(PASSWORD), "secret in {text}");
    }
    let by_type = |t: &str| items.iter().find(|e| e["type"] == t).unwrap();
    assert_eq!(by_type("user.created")["actor"], json!({"type": "user", "id": id}));
    assert_eq!(by_type("user.created")["data"]["user"]["email"], "audited@example.com");
    let updated = by_type("user.updated");
    assert_eq!(updated["actor"], json!({"type": "admin", "id": null, "via": "admin_token"}));
    assert_eq!(updated["data"]["changed"], json!(["name", "role"]));
    assert_eq!(updated["data"]["user"]["version"], 2);
    assert_eq!(by_type("login.failed")["data"]["reason"], "wrong_password");
    assert_eq!(by_type("user.deleted")["data"]["user"]["name"], "Renamed");

    // Filters, paging and access.
    let created = audit_until(&app, "/v1/audit?type=user.created", 1).await;
    assert!(created.iter().all(|e| e["type"] == "user.created") && !created.is_empty());
    let first = app.get(&format!("/v1/audit?user_id={id}&limit=4"), Some(ADMIN)).await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 4);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = app.get(&format!("/v1/audit?user_id={id}&cursor={cursor}"), Some(ADMIN)).await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 2);
    assert!(rest.body["next_cursor"].is_null());
    let time = items[3]["time"].as_str().unwrap();
    let since = app.get(&format!("/v1/audit?user_id={id}&since={time}"), Some(ADMIN)).await;
    assert_eq!(since.body["items"].as_array().unwrap().len(), 3, "{}", since.body);
    let future = app.get("/v1/audit?since=2999-01-01T00:00:00Z", Some(ADMIN)).await;
    assert_eq!(future.body["items"], json!([]));

    let (_, other) = app.user_with_token("nosy@example.com").await;
    app.get("/v1/audit", Some(&other)).await.assert_problem(403, "forbidden", None);
    app.get("/v1/audit", None).await.assert_problem(401, "missing_token", None);
    app.get("/v1/audit?user_id=nope", Some(ADMIN)).await.assert_problem(400, "invalid_user_id", Some("user_id"));
    app.get("/v1/audit?since=yesterday", Some(ADMIN)).await.assert_problem(400, "invalid_since", Some("since"));
    app.get("/v1/audit?type=user.exploded", Some(ADMIN)).await.assert_problem(422, "unknown_event_type", Some("type"));
    app.get("/v1/audit?cursor=AAAA", Some(ADMIN)).await.assert_problem(400, "invalid_cursor", Some("cursor"));
    app.get("/v1/audit?limit=0", Some(ADMIN)).await.assert_problem(400, "invalid_limit", Some("limit"));
    app.get("/v1/audit?color=red", Some(ADMIN)).await.assert_problem(400, "unknown_parameter", Some("color"));

    let doc = app.get("/asyncapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["asyncapi"], "3.0.0");
    let metrics = String::from_utf8_lossy(&app.get("/metrics", None).await.raw).into_owned();
    assert!(metrics.contains("strata_events_published_total"), "{metrics}");
    assert!(metrics.contains(r#"strata_listener_events_total{listener="audit",outcome="applied"}"#), "{metrics}");
    app.stop().await;
}

api_tests!(sqlite, Backend::Sqlite, [the_audit_log_records_every_change]);
api_tests!(postgres, Backend::Postgres, [the_audit_log_records_every_change]);
api_tests!(mysql, Backend::Mysql, [the_audit_log_records_every_change]);

/// A bus that can be switched off (a broker outage) and can lose the confirmation of a
/// publish that went through (a relay killed between publishing and marking).
struct FaultyBus {
    inner: strata_events::MemoryBus,
    down: AtomicBool,
    /// Publishes that go through but then report failure, as a crash would look.
    lose_confirmations: AtomicUsize,
    published: AtomicUsize,
}

impl FaultyBus {
    fn new() -> Arc<Self> {
        Arc::new(FaultyBus {
            inner: strata_events::MemoryBus::new(BusOptions {
                ack_wait: Duration::from_secs(1),
                ..BusOptions::default()
            }),
            down: AtomicBool::new(false),
            lose_confirmations: AtomicUsize::new(0),
            published: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl EventBus for FaultyBus {
    fn describe(&self) -> String {
        "faulty memory bus".into()
    }
    async fn publish(&self, events: &[Event]) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("broker stopped".into()));
        }
        self.inner.publish(events).await?;
        self.published.fetch_add(events.len(), Ordering::SeqCst);
        let lost = self.lose_confirmations.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if lost.is_ok() {
            return Err(BusError::Unavailable("connection lost before the confirmation".into()));
        }
        Ok(())
    }
    async fn subscribe(&self, consumer: Consumer<'_>) -> Result<Box<dyn Subscription>, BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("broker stopped".into()));
        }
        self.inner.subscribe(consumer).await
    }
}

fn quick_relay(store: Arc<dyn Store>, bus: Arc<dyn EventBus>, owner: &str) -> Relay {
    let settings = RelaySettings {
        poll_interval: Duration::from_millis(10),
        lease_ttl: Duration::from_millis(900),
        max_backoff: Duration::from_millis(200),
        batch: 50,
        ..RelaySettings::default()
    };
    Relay::new(store, bus, Arc::new(SystemClock), Arc::new(NoopObserver), settings, owner.to_owned())
}

async fn sqlite_store(what: &str) -> (TestDb, Arc<dyn Store>) {
    let db = fresh(Backend::Sqlite, what).await.unwrap();
    let store = strata_store::connect(&strata_store::StoreOptions::new(db.url.clone())).await.unwrap();
    (db, store)
}

/// Writes `users` × `per_user` changes straight to the store (login.failed events: no
/// other effect), concurrently.
async fn write_events(store: &Arc<dyn Store>, users: usize, per_user: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..users {
        let (store, aggregate) = (store.clone(), uuid::Uuid::now_v7());
        let events: Vec<strata_core::domain::OutboxEvent> = (0..per_user)
            .map(|i| strata_core::domain::OutboxEvent {
                id: uuid::Uuid::now_v7(),
                aggregate_id: aggregate,
                event_type: "login.failed",
                payload: format!(r#"{{"n":{i},"actor":{{"type":"user"}}}}"#),
                created_at: SystemClock.now(),
                traceparent: None,
            })
            .collect();
        ids.extend(events.iter().map(|e| e.id));
        tasks.push(tokio::spawn(async move {
            for e in events {
                store.record_event(&e).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ids
}

/// Collects deliveries for `group` until every id in `want` arrived (bounded); returns
/// them in arrival order, duplicates included.
async fn drain(bus: &dyn EventBus, group: &str, want: &HashSet<uuid::Uuid>) -> Vec<Event> {
    let mut sub = bus.subscribe(Consumer::Group(group)).await.unwrap();
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !want.is_subset(&seen) && tokio::time::Instant::now() < deadline {
        let batch = sub.fetch(500, Duration::from_millis(200)).await.unwrap();
        sub.ack(&batch).await.unwrap();
        for d in batch {
            seen.insert(d.event.id);
            got.push(d.event);
        }
    }
    got
}

fn assert_in_order_per_subject(events: &[Event]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut delivered = HashSet::new();
    for e in events {
        let prev = last.get(e.subject.as_str()).copied().unwrap_or(0);
        // Only a redelivery of an event already seen may go back; nothing new may.
        assert!(
            e.sequence > prev || delivered.contains(&e.id),
            "subject {} went from {prev} to {} with an event not delivered before",
            e.subject,
            e.sequence
        );
        delivered.insert(e.id);
        if e.sequence > prev {
            last.insert(&e.subject, e.sequence);
        }
    }
}

/// Two relays on one database split the partitions between them, publish every event,
/// and keep each aggregate's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_the_outbox_and_keep_order() {
    let (_db, store) = sqlite_store("events two relays").await;
    let bus = FaultyBus::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let a = tokio::spawn(quick_relay(store.clone(), bus.clone(), "relay-a").run(stopped.clone()));
    let b = tokio::spawn(quick_relay(store.clone(), bus.clone(), "relay-b").run(stopped.clone()));
    // Give both a lease round, so the second has announced itself and taken its share.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leases = store.relay_leases().await.unwrap();
    let held = |owner: &str| leases.iter().filter(|l| l.partition().is_some() && l.owner == owner).count();
    assert_eq!((held("relay-a"), held("relay-b")), (8, 8), "{leases:#?}");

    let ids = write_events(&store, 40, 15).await;
    let want: HashSet<_> = ids.iter().copied().collect();
    let got = drain(&*bus, "checker", &want).await;
    assert!(want.is_subset(&got.iter().map(|e| e.id).collect()), "every event published");
    assert_in_order_per_subject(&got);
    let _ = stop.send(true);
    a.await.unwrap();
    b.await.unwrap();
    // Stopping gave the leases back at once.
    assert!(store.relay_leases().await.unwrap().iter().filter(|l| l.partition().is_some()).all(|l| l.owner.is_empty()));
}

/// The broker is down while writes go on: nothing fails, and once it is back every event
/// is delivered and applied exactly once. A publish whose confirmation is lost (a relay
/// killed between publishing and marking) is published again; the listener ignores the
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_and_lost_confirmations_lose_and_double_nothing() {
    let (_db, store) = sqlite_store("events outage").await;
    let bus = FaultyBus::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(quick_relay(store.clone(), bus.clone(), "relay").run(stopped.clone()));
    let audit = Arc::new(AuditListener::new(store.clone(), Arc::new(SystemClock), Duration::from_secs(3600)));
    let listener =
        tokio::spawn(run_listener(bus.clone(), audit, Arc::new(SystemClock), Arc::new(NoopObserver), stopped.clone()));

    bus.down.store(true, Ordering::SeqCst);
    let mut ids = write_events(&store, 10, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.outbox_backlog().await.unwrap().count, 100, "held back while the broker is down");
    bus.lose_confirmations.store(2, Ordering::SeqCst);
    bus.down.store(false, Ordering::SeqCst);
    ids.extend(write_events(&store, 5, 4).await);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let query = strata_core::domain::AuditQuery { limit: 10_000, ..Default::default() };
    let entries = loop {
        let entries = store.audit_entries(&query).await.unwrap();
        if entries.len() >= ids.len() || tokio::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recorded: Vec<uuid::Uuid> = entries.iter().map(|e| e.id).collect();
    assert_eq!(recorded.len(), ids.len(), "each event recorded exactly once");
    assert_eq!(recorded.iter().collect::<HashSet<_>>(), ids.iter().collect::<HashSet<_>>());
    assert!(bus.published.load(Ordering::SeqCst) > ids.len(), "the lost confirmations caused republishing");
    assert_eq!(store.outbox_backlog().await.unwrap().count, 0);
    let _ = stop.send(true);
    relay.await.unwrap();
    listener.await.unwrap();
}

/// A private nats-server with JetStream on a spare loopback port, its store in a
/// temporary directory that outlives restarts (as a real deployment's disk does).
pub(super) struct PrivateNats {
    pub(super) port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateNats {
    pub(super) fn start(what: &str) -> Option<PrivateNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let dir = std::env::temp_dir().join(format!("strata-nats-{}", uuid::Uuid::now_v7().simple()));
        let mut nats = PrivateNats { port, dir, child: None };
        if let Err(e) = nats.run() {
            strata_core::testing::unusable(what, "nats", &format!("cannot start nats-server: {e}"));
            return None;
        }
        Some(nats)
    }

    fn run(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        // Bounded wait for the port.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("nats-server did not open its port"))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker process is stopped for a while (60 s, or STRATA_TEST_BROKER_OUTAGE_SECS)
/// during a stream of API writes: no request fails or waits for it, and once it is back
/// every event reaches the audit log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_broker_outage_costs_the_api_nothing() {
    let what = "events real broker outage";
    let outage = Duration::from_secs(
        std::env::var("STRATA_TEST_BROKER_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60),
    );
    let Some(mut nats) = PrivateNats::start(what) else { return };
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let Some(app) = spawn(Backend::Sqlite, what, |c| c.events.url = url.clone()).await else { return };
    // Writes at a steady pace, before, during and after the outage: 120 in all.
    let mut emails = Vec::new();
    let pace = outage / 80;
    let register = |n: usize| {
        let email = format!("outage{n}@example.com");
        let app = &app;
        async move {
            let r = app
                .json(Method::POST, "/v1/users", None, &json!({"email": email, "name": "O", "password": PASSWORD}))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "write {n} failed during the outage: {}", r.body);
            email
        }
    };
    for n in 0..20 {
        emails.push(register(n).await);
        tokio::time::sleep(pace).await;
    }
    nats.stop();
    let stopped = tokio::time::Instant::now();
    let mut n = 20;
    while stopped.elapsed() < outage && n < 100 {
        emails.push(register(n).await);
        n += 1;
        tokio::time::sleep(pace).await;
    }
    nats.run().expect("restart nats-server");
    for n in n..n + 20 {
        emails.push(register(n).await);
    }
    // Everything arrives (the relay's backoff is at most 30 s), and only once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let items = loop {
        let r = app.get("/v1/audit?type=user.created&limit=200", Some(ADMIN)).await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= emails.len() || tokio::time::Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recorded: Vec<&str> = items.iter().filter_map(|i| i["data"]["user"]["email"].as_str()).collect();
    assert_eq!(recorded.len(), emails.len(), "each write's event recorded exactly once");
    let unique: HashSet<&str> = recorded.iter().copied().collect();
    assert_eq!(unique, emails.iter().map(String::as_str).collect::<HashSet<_>>());
    app.stop().await;
}
