//! Throttle counters shared by every instance, in Redis (`throttle.url`).
//!
//! A reservation must check every counter and count against all of them as one step, or
//! concurrent attempts on different instances would all pass the check (the defect the
//! reservation design closes within one instance). A Lua script is atomic in Redis, so
//! each operation is one `EVAL`. Windows are Redis's own `PEXPIRE`s: instances whose
//! clocks disagree still share one window.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strata_core::ports::{CacheError, CacheObserver};
use strata_core::throttle::{Counter, SharedCounters};

use crate::node::{Conn, Node};
use crate::{BreakerOptions, RedisTarget};

/// KEYS: the counters. ARGV: limit and window (ms) of each, in order. Returns 0 when
/// reserved, else the longest remaining window (ms) among the full counters.
const RESERVE: &str = r"
local wait = 0
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  if n >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then ttl = tonumber(ARGV[2 * i]) end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[2 * i]) end
end
return 0
";

/// KEYS: the counters. Takes one back from each that is above zero.
const RELEASE: &str = r"
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
";

pub struct RedisCounters {
    node: Node,
    described: String,
}

impl RedisCounters {
    /// Counting needs one primary: replicas are not used, and a cluster is refused (one
    /// reservation's counters would hash to different slots, and a script runs on one).
    pub fn new(
        target: &RedisTarget,
        timeout: Duration,
        breaker: BreakerOptions,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Self, String> {
        let node = crate::redis::single_primary(target, "throttle ", "throttle counters", timeout, breaker, &observer)?;
        // A reservation or release whose reply was lost may have run: sending it again
        // could count one attempt twice, or give one back twice.
        Ok(RedisCounters { node: node.not_idempotent(), described: target.to_string() })
    }

    async fn eval(&self, script: &'static str, counters: &[Counter<'_>], with_limits: bool) -> Result<i64, CacheError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(script).arg(counters.len());
        for c in counters {
            eval.arg(c.key);
        }
        if with_limits {
            for c in counters {
                eval.arg(c.limit.max_failures).arg(c.limit.window.as_millis().max(1) as u64);
            }
        }
        let eval = &eval;
        self.node.call(|mut conn: Conn| async move { eval.query_async::<i64>(&mut conn).await }).await
    }
}

#[async_trait]
impl SharedCounters for RedisCounters {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn reserve(&self, counters: &[Counter<'_>]) -> Result<Option<Duration>, CacheError> {
        let wait_ms = self.eval(RESERVE, counters, true).await?;
        // Round up to whole seconds, like the local throttle's Retry-After.
        Ok((wait_ms > 0).then(|| Duration::from_secs((wait_ms as u64).div_ceil(1000).max(1))))
    }

    async fn release(&self, counters: &[Counter<'_>]) -> Result<(), CacheError> {
        self.eval(RELEASE, counters, false).await.map(|_| ())
    }

    async fn clear(&self, key: &str) -> Result<(), CacheError> {
        let del = &redis::cmd("DEL").arg(key).clone();
        self.node.call(|mut conn: Conn| async move { del.query_async::<()>(&mut conn).await }).await
    }
}
