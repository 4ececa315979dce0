//! The read-your-writes position board in Redis: a raise is a max-merge that expires, a
//! lookup the highest of its keys (strata-store's in-process board passes the same checks
//! in its unit tests).

use std::sync::Arc;
use std::time::Duration;

use strata_core::ports::NoopObserver;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_board_keeps_the_highest_position_until_it_expires() {
    let Some(url) = strata_cache::testing::shared_redis("position board") else { return };
    let board =
        strata_cache::open_positions(&url, &super::conformance::options(false), Arc::new(NoopObserver)).unwrap();
    let (a, b, all) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let long = Duration::from_secs(60);
    board.raise(&[a, all], 10, long).await.unwrap();
    board.raise(&[a], 5, long).await.unwrap();
    assert_eq!(board.highest(&[a]).await.unwrap(), 10, "a lower raise does not lower it");
    board.raise(&[b], 7, Duration::from_millis(50)).await.unwrap();
    assert_eq!(board.highest(&[b, Uuid::now_v7()]).await.unwrap(), 7);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(board.highest(&[b]).await.unwrap(), 0, "expired");
    assert_eq!(board.highest(&[b, all]).await.unwrap(), 10);
    // The largest position a board is given (strata-store's `replicated::UNKNOWN`, 2^52)
    // stays exact through Lua's numbers.
    board.raise(&[b], 1 << 52, long).await.unwrap();
    assert_eq!(board.highest(&[b]).await.unwrap(), 1 << 52);
}
