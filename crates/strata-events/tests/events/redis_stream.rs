//! Redis-Streams-specific behaviour: a group member's unacknowledged entries go to another
//! member (`XAUTOCLAIM`), and publish/fetch work again after Redis restarts empty (no
//! persistence, so the stream and its groups are gone and must be recreated) — the latter
//! against a private `redis-server` on a spare loopback port.

use std::time::Duration;

use strata_core::events::{BusError, BusOptions, Consumer};

use super::conformance::{event, options};
use super::nats_broker::{ServerProcess, a_vanished_members_deliveries_go_to_another, publish_when_back, receives};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_vanished_members_deliveries_go_to_another() {
    let Some(bus) = crate::redis_stream(options()).await else { return };
    a_vanished_members_deliveries_go_to_another(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_fetch_work_again_after_redis_restarts_empty() {
    let server = ServerProcess::start("redis-server", "redis-stream", |port| {
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(str::to_owned)
            .to_vec()
    })
    .await;
    let Some(mut server) = server else { return };
    let options = BusOptions { call_timeout: Duration::from_secs(1), ..options() };
    let bus = strata_events::open(&format!("redis-stream://127.0.0.1:{}", server.port), &options).await.expect("open");
    let s = uuid::Uuid::now_v7().to_string();

    let mut group = bus.subscribe(Consumer::Group("restart")).await.expect("subscribe");
    let mut broadcast = bus.subscribe(Consumer::Broadcast).await.expect("subscribe");
    let before = event(&s, 1);
    bus.publish(std::slice::from_ref(&before)).await.expect("publish");
    assert!(receives(group.as_mut(), before.id).await);
    assert!(receives(broadcast.as_mut(), before.id).await);

    server.stop();
    let during = event(&s, 2);
    assert!(matches!(bus.publish(std::slice::from_ref(&during)).await, Err(BusError::Unavailable(_))));
    assert!(group.fetch(10, Duration::from_millis(100)).await.is_err(), "a fetch while Redis is down fails");

    server.start_again().await;
    let after = event(&s, 3);
    publish_when_back(bus.as_ref(), std::slice::from_ref(&after)).await;
    assert!(receives(group.as_mut(), after.id).await, "the group is recreated and gets events again");
    assert!(receives(broadcast.as_mut(), after.id).await, "broadcast gets events again");
}
