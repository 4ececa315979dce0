//! What every `EventBus` adapter must do. See `strata_core::events::Consumer` for the
//! delivery contract these cases check.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use strata_core::domain::Timestamp;
use strata_core::events::{BusOptions, Consumer, Delivery, Event};
use strata_core::ports::{EventBus, Subscription};

pub fn options() -> BusOptions {
    BusOptions {
        // Unique per case and run: brokers keep streams and queues between runs.
        namespace: format!("t{}", uuid::Uuid::now_v7().simple()),
        ack_wait: Duration::from_secs(2),
        call_timeout: Duration::from_secs(5),
    }
}

pub fn event(subject: &str, sequence: u64) -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        source: "/strata/test".into(),
        event_type: "user.updated".into(),
        time: Timestamp(1_764_057_600_000_000 + sequence as i64),
        subject: subject.to_owned(),
        sequence,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        data: format!(r#"{{"user":{{"id":"{subject}","version":{sequence}}}}}"#),
    }
}

/// Fetches until `n` deliveries arrived or `within` passed.
pub async fn collect(sub: &mut dyn Subscription, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < deadline {
        let batch = sub.fetch(n - out.len(), Duration::from_millis(500)).await.expect("fetch");
        out.extend(batch);
    }
    out
}

const PATIENCE: Duration = Duration::from_secs(20);

/// Published events reach a group complete and unchanged, each subject's in order.
pub async fn group_receives_everything_in_order_per_subject(bus: Arc<dyn EventBus>) {
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("subscribe");
    let subjects: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let events: Vec<Event> = (1..=20).flat_map(|seq| subjects.iter().map(move |s| event(s, seq))).collect();
    for chunk in events.chunks(30) {
        bus.publish(chunk).await.expect("publish");
    }
    let got = collect(sub.as_mut(), events.len(), PATIENCE).await;
    assert_eq!(got.len(), events.len(), "every event delivered");
    let by_id: HashMap<_, _> = events.iter().map(|e| (e.id, e)).collect();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for d in &got {
        assert_eq!(Some(&&d.event), by_id.get(&d.event.id), "delivered unchanged, trace context included");
        let prev = last.insert(d.event.subject.as_str(), d.event.sequence).unwrap_or(0);
        assert!(d.event.sequence > prev, "subject {} out of order: {} after {prev}", d.event.subject, d.event.sequence);
    }
    sub.ack(&got).await.expect("ack");
}

/// A delivery nobody acknowledges comes back after the ack wait; an acknowledged one never.
pub async fn unacknowledged_deliveries_are_redelivered(bus: Arc<dyn EventBus>) {
    let mut sub = bus.subscribe(Consumer::Group("webhooks")).await.expect("subscribe");
    let s = uuid::Uuid::now_v7().to_string();
    let (a, b) = (event(&s, 1), event(&s, 2));
    bus.publish(&[a.clone(), b.clone()]).await.expect("publish");
    let first = collect(sub.as_mut(), 2, PATIENCE).await;
    assert_eq!(first.len(), 2);
    let (acked, dropped): (Vec<_>, Vec<_>) = first.into_iter().partition(|d| d.event.id == a.id);
    sub.ack(&acked).await.expect("ack");
    let again = collect(sub.as_mut(), 1, PATIENCE).await;
    assert_eq!(again.len(), 1, "the unacknowledged event is redelivered");
    assert_eq!(again[0].event.id, dropped[0].event.id);
    sub.ack(&again).await.expect("ack");
    let more = sub.fetch(10, Duration::from_secs(3)).await.expect("fetch");
    assert!(more.is_empty(), "acknowledged events stay acknowledged: {more:?}");
}

/// A group resumes where it left off: a new subscription (a restarted worker) gets what
/// was published while it was away and nothing it had acknowledged.
pub async fn a_group_resumes_after_resubscribing(bus: Arc<dyn EventBus>) {
    let s = uuid::Uuid::now_v7().to_string();
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("subscribe");
    let before = event(&s, 1);
    bus.publish(std::slice::from_ref(&before)).await.expect("publish");
    let got = collect(sub.as_mut(), 1, PATIENCE).await;
    assert_eq!(got.len(), 1);
    sub.ack(&got).await.expect("ack");
    drop(sub);
    let during = event(&s, 2);
    bus.publish(std::slice::from_ref(&during)).await.expect("publish");
    let mut sub = bus.subscribe(Consumer::Group("audit")).await.expect("resubscribe");
    let got = collect(sub.as_mut(), 1, PATIENCE).await;
    assert_eq!(got.iter().map(|d| d.event.id).collect::<Vec<_>>(), vec![during.id]);
    sub.ack(&got).await.expect("ack");
    let more = sub.fetch(10, Duration::from_secs(1)).await.expect("fetch");
    assert!(more.is_empty(), "{more:?}");
}

/// Two members of one group split the events between them; two groups each get all.
pub async fn groups_share_within_and_are_independent_across(bus: Arc<dyn EventBus>) {
    let mut a1 = bus.subscribe(Consumer::Group("a")).await.expect("subscribe");
    let mut a2 = bus.subscribe(Consumer::Group("a")).await.expect("subscribe");
    let mut b = bus.subscribe(Consumer::Group("b")).await.expect("subscribe");
    let events: Vec<Event> = (1..=40).map(|i| event(&uuid::Uuid::now_v7().to_string(), i)).collect();
    bus.publish(&events).await.expect("publish");
    let all: HashSet<_> = events.iter().map(|e| e.id).collect();

    let got_b = collect(b.as_mut(), events.len(), PATIENCE).await;
    b.ack(&got_b).await.expect("ack");
    assert_eq!(got_b.iter().map(|d| d.event.id).collect::<HashSet<_>>(), all, "group b sees everything");

    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.len() < all.len() && tokio::time::Instant::now() < deadline {
        for sub in [&mut a1, &mut a2] {
            let batch = sub.fetch(8, Duration::from_millis(200)).await.expect("fetch");
            sub.ack(&batch).await.expect("ack");
            seen.extend(batch.iter().map(|d| d.event.id));
        }
    }
    assert_eq!(seen, all, "group a's members together see everything");
}

/// Broadcast: every subscriber gets every event published after it subscribed.
pub async fn broadcast_reaches_every_subscriber(bus: Arc<dyn EventBus>) {
    let mut x = bus.subscribe(Consumer::Broadcast).await.expect("subscribe");
    let mut y = bus.subscribe(Consumer::Broadcast).await.expect("subscribe");
    // Some brokers set a subscription up asynchronously; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<Event> = (1..=10).map(|i| event("broadcast", i)).collect();
    bus.publish(&events).await.expect("publish");
    for sub in [&mut x, &mut y] {
        let got = collect(sub.as_mut(), events.len(), PATIENCE).await;
        assert_eq!(got.iter().map(|d| d.event.id).collect::<Vec<_>>(), events.iter().map(|e| e.id).collect::<Vec<_>>());
        sub.ack(&got).await.expect("ack of a broadcast is a no-op");
    }
}

/// A steady batch load arrives complete (the relay publishes in batches of hundreds).
pub async fn large_batches_arrive_complete(bus: Arc<dyn EventBus>) {
    let mut sub = bus.subscribe(Consumer::Group("bulk")).await.expect("subscribe");
    let events: Vec<Event> = (1..=2000).map(|i| event(&format!("agg-{}", i % 50), i)).collect();
    for chunk in events.chunks(500) {
        bus.publish(chunk).await.expect("publish");
    }
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < events.len() && tokio::time::Instant::now() < deadline {
        let batch = sub.fetch(500, Duration::from_millis(500)).await.expect("fetch");
        sub.ack(&batch).await.expect("ack");
        seen.extend(batch.iter().map(|d| d.event.id));
    }
    assert_eq!(seen.len(), events.len());
}

/// Instantiates every case for one adapter: `suite!(module_name, crate::factory)`.
macro_rules! suite {
    ($name:ident, $factory:path) => {
        mod $name {
            use super::conformance as c;
            macro_rules! case {
                ($case:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        let Some(bus) = $factory(c::options()).await else { return };
                        c::$case(bus).await;
                    }
                };
            }
            case!(group_receives_everything_in_order_per_subject);
            case!(unacknowledged_deliveries_are_redelivered);
            case!(a_group_resumes_after_resubscribing);
            case!(groups_share_within_and_are_independent_across);
            case!(broadcast_reaches_every_subscriber);
            case!(large_batches_arrive_complete);
        }
    };
}
pub(crate) use suite;
