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

use crate::endpoint::{Conn, Endpoint, protocol_error};
use crate::redis::{command, handshake};
use crate::resp::Reply;
use crate::{BreakerOptions, Credentials};

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
    endpoint: Endpoint,
}

impl RedisCounters {
    pub fn new(
        addr: &str,
        credentials: &Option<Credentials>,
        timeout: Duration,
        breaker: BreakerOptions,
        observer: Arc<dyn CacheObserver>,
    ) -> Self {
        let endpoint = Endpoint::new(
            addr.to_owned(),
            format!("redis throttle {addr}"),
            timeout,
            breaker,
            handshake(credentials),
            observer,
        );
        RedisCounters { endpoint }
    }

    async fn eval(&self, script: &'static str, counters: &[Counter<'_>], with_limits: bool) -> Result<i64, CacheError> {
        let n = counters.len().to_string();
        let mut limits = Vec::new();
        if with_limits {
            for c in counters {
                limits.push(c.limit.max_failures.to_string());
                limits.push(c.limit.window.as_millis().max(1).to_string());
            }
        }
        self.endpoint
            .call(async |conn: &mut Conn| {
                let mut args: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), n.as_bytes()];
                args.extend(counters.iter().map(|c| c.key.as_bytes()));
                args.extend(limits.iter().map(|l| l.as_bytes()));
                match command(conn, &args).await? {
                    Reply::Integer(v) => Ok(v),
                    Reply::Error(e) => Err(protocol_error(format!("redis error: {e}"))),
                    other => Err(protocol_error(format!("unexpected redis reply: {other:?}"))),
                }
            })
            .await
    }
}

#[async_trait]
impl SharedCounters for RedisCounters {
    fn describe(&self) -> String {
        format!("redis {}", self.endpoint.addr())
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
        self.endpoint.call(async |conn: &mut Conn| command(conn, &[b"DEL", key.as_bytes()]).await.map(|_| ())).await
    }
}
