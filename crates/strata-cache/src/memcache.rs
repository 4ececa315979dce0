//! Memcached adapter (`memcache://HOST:PORT[,HOST:PORT…]`): the text protocol over tokio
//! (`get`, `add`, `set`), keys spread over the servers by a ketama-style consistent-hash
//! ring, one breaker per server.
//!
//! Memcached has no pub/sub, so a tiered cache over Memcached cannot tell other instances
//! to drop L1 entries: their staleness bound is the L1 TTL (see ARCHITECTURE.md). Fills
//! use `add` (never overwrites) and invalidations write tombstones with `set`, exactly
//! like the Redis adapter.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use strata_core::ports::{Cache, CacheError, CacheObserver};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::CacheOptions;
use crate::endpoint::{Conn, Endpoint, protocol_error};
use crate::shield::{self, Shield};

/// Points per server on the ring: enough that each server's share is within a few
/// percent of 1/N.
const POINTS_PER_SERVER: usize = 160;
/// Memcached treats expiry times beyond 30 days as absolute Unix times.
const MAX_RELATIVE_EXPIRY_SECS: u64 = 30 * 24 * 3600;

/// A consistent-hash ring: each server owns the arcs ending at its points. Adding or
/// removing one of N servers moves only about 1/N of the keys.
pub struct Ring {
    points: Vec<(u32, usize)>,
}

impl Ring {
    pub fn new(servers: &[String]) -> Self {
        let mut points = Vec::with_capacity(servers.len() * POINTS_PER_SERVER);
        for (index, server) in servers.iter().enumerate() {
            // Four points per digest, as ketama does (it uses MD5; any good hash will do).
            for block in 0..POINTS_PER_SERVER / 4 {
                let digest = Sha256::digest(format!("{server}-{block}").as_bytes());
                for chunk in digest.chunks_exact(4).take(4) {
                    points.push((u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]), index));
                }
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Index of the server owning `key`.
    pub fn server_for(&self, key: &str) -> usize {
        let h = (ring_hash(key) >> 32) as u32;
        let at = self.points.partition_point(|(p, _)| *p < h);
        self.points.get(at).or_else(|| self.points.first()).map_or(0, |(_, s)| *s)
    }
}

/// 64-bit FNV-1a with a final mix. Unkeyed on purpose: every instance must place a key on
/// the same server.
fn ring_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

pub struct MemcacheCache {
    servers: Vec<Endpoint>,
    ring: Ring,
    shield: Arc<Shield>,
    tombstone_ttl: Duration,
    observer: Arc<dyn CacheObserver>,
}

impl MemcacheCache {
    pub fn new(servers: &[String], options: &CacheOptions, observer: Arc<dyn CacheObserver>) -> Arc<Self> {
        let cache = Arc::new(MemcacheCache {
            servers: servers
                .iter()
                .map(|s| {
                    Endpoint::new(
                        s.clone(),
                        format!("memcached {s}"),
                        options.timeout,
                        options.breaker,
                        observer.clone(),
                    )
                })
                .collect(),
            ring: Ring::new(servers),
            shield: Arc::new(Shield::default()),
            tombstone_ttl: options.tombstone_ttl,
            observer,
        });
        shield::spawn_replayer(Arc::downgrade(&cache), cache.shield.clone(), Duration::from_millis(100));
        cache
    }

    pub fn servers(&self) -> &[Endpoint] {
        &self.servers
    }

    fn server(&self, key: &str) -> &Endpoint {
        &self.servers[self.ring.server_for(key)]
    }
}

fn expiry(ttl: Duration) -> String {
    // Whole seconds, rounded up (a 300 ms TTL must not become "never expires" = 0).
    let secs = ttl.as_millis().div_ceil(1000).max(1) as u64;
    secs.min(MAX_RELATIVE_EXPIRY_SECS).to_string()
}

async fn read_line(conn: &mut Conn) -> io::Result<String> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if !line.ends_with("\r\n") {
        return Err(protocol_error("malformed memcached line"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

async fn store_reply(conn: &mut Conn) -> io::Result<bool> {
    match read_line(conn).await?.as_str() {
        "STORED" => Ok(true),
        "NOT_STORED" | "EXISTS" => Ok(false),
        other => Err(protocol_error(format!("memcached: {other}"))),
    }
}

fn store_command(out: &mut Vec<u8>, verb: &str, key: &str, value: &[u8], ttl: Duration) {
    out.extend_from_slice(format!("{verb} {key} 0 {} {}\r\n", expiry(ttl), value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[async_trait]
impl Cache for MemcacheCache {
    fn available(&self) -> bool {
        self.servers.iter().any(|s| !s.is_open())
    }

    fn describe(&self) -> String {
        let servers: Vec<&str> = self.servers.iter().map(|s| s.addr()).collect();
        format!("memcached {}", servers.join(","))
    }

    fn generation(&self) -> u64 {
        0
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        if self.shield.is_pending(key) {
            self.observer.tier("l2", "get", "miss");
            return Ok(None);
        }
        let got = self
            .server(key)
            .call(async |conn: &mut Conn| {
                conn.write_all(format!("get {key}\r\n").as_bytes()).await?;
                conn.flush().await?;
                let line = read_line(conn).await?;
                if line == "END" {
                    return Ok(None);
                }
                // VALUE <key> <flags> <bytes>
                let len: usize = line
                    .strip_prefix("VALUE ")
                    .and_then(|rest| rest.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| protocol_error(format!("memcached: {line}")))?;
                if len > 16 << 20 {
                    return Err(protocol_error("memcached value too large"));
                }
                let mut data = vec![0; len + 2];
                conn.read_exact(&mut data).await?;
                data.truncate(len);
                if read_line(conn).await? != "END" {
                    return Err(protocol_error("memcached: missing END"));
                }
                Ok(Some(data))
            })
            .await;
        self.shield.finish_get(key, got, &*self.observer)
    }

    async fn fill(&self, key: &str, value: Vec<u8>, ttl: Duration, _generation: u64) -> Result<bool, CacheError> {
        if self.shield.is_pending(key) {
            self.observer.tier("l2", "fill", "skipped");
            return Ok(false);
        }
        let mut out = Vec::with_capacity(value.len() + 64);
        store_command(&mut out, "add", key, &shield::wrap(&value), ttl);
        let stored = self
            .server(key)
            .call(async |conn: &mut Conn| {
                conn.write_all(&out).await?;
                conn.flush().await?;
                store_reply(conn).await
            })
            .await;
        shield::count_fill(&stored, &*self.observer);
        stored
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        let tomb = shield::tombstone();
        // One pipelined round trip per server involved.
        let mut by_server: Vec<Vec<&String>> = vec![Vec::new(); self.servers.len()];
        for k in keys {
            by_server[self.ring.server_for(k)].push(k);
        }
        let mut result = Ok(());
        for (index, server_keys) in by_server.iter().enumerate() {
            if server_keys.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            for k in server_keys {
                store_command(&mut out, "set", k, &tomb, self.tombstone_ttl);
            }
            let done = self.servers[index]
                .call(async |conn: &mut Conn| {
                    conn.write_all(&out).await?;
                    conn.flush().await?;
                    for _ in server_keys {
                        if !store_reply(conn).await? {
                            return Err(protocol_error("memcached refused a tombstone"));
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = done {
                let failed: Vec<String> = server_keys.iter().map(|k| (*k).clone()).collect();
                tracing::warn!(error = %e, keys = failed.len(), "memcached invalidation failed; replaying until it lands");
                self.shield.failed(&failed);
                result = Err(e);
            }
        }
        self.observer.tier("l2", "invalidate", if result.is_ok() { "ok" } else { "error" });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    /// Property: with N servers each owns roughly 1/N of the keys, and adding one more
    /// moves about 1/(N+1) of the keys — all of them to the new server.
    #[test]
    fn adding_a_server_moves_about_one_nth_of_the_keys() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("strata:1:s:{i:064x}")).collect();
        for n in 1..=8 {
            let before = Ring::new(&servers(n));
            let after = Ring::new(&servers(n + 1));
            let mut moved = 0;
            let mut share = vec![0usize; n];
            for k in &keys {
                let (a, b) = (before.server_for(k), after.server_for(k));
                share[a] += 1;
                if a != b {
                    assert_eq!(b, n, "a key moved between two old servers");
                    moved += 1;
                }
            }
            let expected = keys.len() as f64 / (n + 1) as f64;
            assert!(
                (moved as f64) > expected * 0.7 && (moved as f64) < expected * 1.3,
                "{n}→{}: moved {moved}, expected about {expected:.0}",
                n + 1
            );
            let fair = keys.len() as f64 / n as f64;
            for s in share {
                assert!((s as f64) > fair * 0.7 && (s as f64) < fair * 1.3, "unbalanced ring: {s} vs {fair:.0}");
            }
        }
    }

    #[test]
    fn expiry_rounds_up_and_caps() {
        assert_eq!(expiry(Duration::from_millis(300)), "1");
        assert_eq!(expiry(Duration::from_millis(1500)), "2");
        assert_eq!(expiry(Duration::from_secs(365 * 24 * 3600)), MAX_RELATIVE_EXPIRY_SECS.to_string());
    }
}
