//! The read-your-writes position board shared by every instance, in Redis (strata-core's
//! `PositionBoard`, used by strata-store's replicated store).
//!
//! A raise is a max-merge, so it is one Lua script (atomic in Redis) and safe to send
//! twice; a lookup is one `MGET`. Entries expire on Redis's own clock. Positions stay below
//! 2^53, so Lua's numbers hold them exactly.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strata_core::ports::{CacheError, CacheObserver, PositionBoard};
use uuid::Uuid;

use crate::node::{Conn, Node};
use crate::{BreakerOptions, RedisTarget};

const PREFIX: &str = "strata:ryw:1:";

/// KEYS: the entries. ARGV: the position, the ttl (ms).
const RAISE: &str = r"
local position = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') < position then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return 0
";

pub struct RedisPositions {
    node: Node,
    described: String,
}

impl RedisPositions {
    /// One primary: a cluster is refused, as one raise's keys would hash to several slots.
    pub fn new(
        target: &RedisTarget,
        timeout: Duration,
        breaker: BreakerOptions,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Self, String> {
        let node = crate::redis::single_primary(
            target,
            "positions ",
            "read-your-writes positions",
            timeout,
            breaker,
            &observer,
        )?;
        Ok(RedisPositions { node, described: target.to_string() })
    }
}

fn key(id: &Uuid) -> String {
    format!("{PREFIX}{}", id.simple())
}

#[async_trait]
impl PositionBoard for RedisPositions {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn raise(&self, keys: &[Uuid], position: u64, ttl: Duration) -> Result<(), CacheError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RAISE).arg(keys.len());
        for k in keys {
            eval.arg(key(k));
        }
        eval.arg(position).arg(ttl.as_millis().max(1) as u64);
        let eval = &eval;
        self.node.call(|mut conn: Conn| async move { eval.query_async::<i64>(&mut conn).await }).await.map(drop)
    }

    async fn highest(&self, keys: &[Uuid]) -> Result<u64, CacheError> {
        let mut mget = redis::cmd("MGET");
        for k in keys {
            mget.arg(key(k));
        }
        let mget = &mget;
        let found: Vec<Option<u64>> =
            self.node.call(|mut conn: Conn| async move { mget.query_async(&mut conn).await }).await?;
        Ok(found.into_iter().flatten().max().unwrap_or(0))
    }
}
