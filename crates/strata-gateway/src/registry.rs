//! Service registration: api instances given `STRATA_REGISTER` put their address into a
//! registry under a TTL and keep it alive; the gateway lists the registry
//! (`STRATA_GATEWAY_UPSTREAMS` with the same URL). An instance that dies without
//! deregistering drops out when its TTL runs out; one that shuts down deletes its entry
//! first, before it drains.
//!
//! - `nats-kv://HOST:PORT/BUCKET`: a JetStream key-value bucket whose `max_age` is the TTL;
//!   a heartbeat is a put.
//! - `etcd://HOST:PORT/PREFIX`: keys `PREFIX/<id>` bound to a lease with the TTL, kept
//!   alive; spoken over etcd's JSON gateway (`/v3/...`), so no gRPC stack is built for it.
//!
//! The value is JSON: `{"address": "HOST:PORT", "weight": N}`.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::discovery::Target;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registry {
    NatsKv { server: String, bucket: String },
    Etcd { endpoint: String, prefix: String },
}

impl std::str::FromStr for Registry {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?}: expected nats-kv://HOST:PORT/BUCKET or etcd://HOST:PORT/PREFIX"))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| format!("{url}: the bucket or prefix is missing"))?;
        if host.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(format!("{url}: expected HOST:PORT before the path"));
        }
        let path = path.trim_end_matches('/');
        match scheme {
            "nats-kv" => {
                if path.is_empty() || !path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    return Err(format!("{url}: a bucket name is letters, digits, - and _"));
                }
                Ok(Registry::NatsKv { server: host.to_owned(), bucket: path.to_owned() })
            }
            "etcd" => {
                if path.is_empty() {
                    return Err(format!("{url}: the key prefix is missing"));
                }
                Ok(Registry::Etcd { endpoint: host.to_owned(), prefix: format!("/{path}/") })
            }
            other => Err(format!("{other}:// is not a registry: expected nats-kv:// or etcd://")),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// The stream behind key-value bucket `bucket`, as `create_key_value` would make it: one
/// value per key, entries expiring after `ttl`, deletes as markers, direct gets.
fn kv_stream(bucket: &str, ttl: Duration) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    }
}

/// A connection to a registry, for either side.
pub enum Connection {
    Nats(Box<async_nats::jetstream::kv::Store>),
    Etcd { client: Client<HttpConnector, Full<Bytes>>, endpoint: String, prefix: String, ttl: Duration },
}

impl Connection {
    /// Connects, creating the bucket when it does not exist (`ttl` is its `max_age`).
    pub async fn open(registry: &Registry, ttl: Duration) -> Result<Connection, String> {
        match registry {
            Registry::NatsKv { server, bucket } => {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(server.as_str())
                    .await
                    .map_err(|e| format!("nats {server}: {e}"))?;
                let js = async_nats::jetstream::new(client);
                let store = match js.get_key_value(bucket.as_str()).await {
                    Ok(store) => store,
                    Err(_) => {
                        // The bucket's stream is created by hand, in the key-value layout
                        // (ADR-8), because `create_key_value` first reads the account info
                        // in a shape nats-server 2.9 does not send (no `reserved_memory`).
                        // Two instances racing to create it is fine: the loser reads it.
                        let created = js.create_stream(kv_stream(bucket, ttl)).await;
                        js.get_key_value(bucket.as_str()).await.map_err(|e| match created {
                            Err(c) => format!("nats-kv bucket {bucket}: cannot create it ({c}) or read it ({e})"),
                            Ok(_) => format!("nats-kv bucket {bucket}: {e}"),
                        })?
                    }
                };
                Ok(Connection::Nats(Box::new(store)))
            }
            Registry::Etcd { endpoint, prefix } => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(Duration::from_secs(2)));
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Ok(Connection::Etcd { client, endpoint: endpoint.clone(), prefix: prefix.clone(), ttl })
            }
        }
    }

    /// Every registered instance now.
    pub async fn list(&self) -> Result<Vec<Target>, String> {
        let mut targets = Vec::new();
        match self {
            Connection::Nats(store) => {
                use futures_util::TryStreamExt as _;
                let keys: Vec<String> = store
                    .keys()
                    .await
                    .map_err(|e| format!("nats-kv keys: {e}"))?
                    .try_collect()
                    .await
                    .map_err(|e| format!("nats-kv keys: {e}"))?;
                for key in keys {
                    if let Some(value) = store.get(&key).await.map_err(|e| format!("nats-kv get {key}: {e}"))? {
                        push(&mut targets, &value);
                    }
                }
            }
            Connection::Etcd { prefix, .. } => {
                let range_end = prefix_end(prefix);
                let body = serde_json::json!({"key": b64(prefix.as_bytes()), "range_end": b64(&range_end)});
                let answer = self.etcd("/v3/kv/range", body).await?;
                for kv in answer["kvs"].as_array().into_iter().flatten() {
                    if let Some(value) =
                        kv["value"].as_str().and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                    {
                        push(&mut targets, &value);
                    }
                }
            }
        }
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    async fn etcd(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let Connection::Etcd { client, endpoint, .. } = self else { return Err("not etcd".into()) };
        let req = http::Request::post(format!("http://{endpoint}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(3), client.request(req))
            .await
            .map_err(|_| format!("etcd {endpoint}{path}: no answer in 3 s"))?
            .map_err(|e| format!("etcd {endpoint}{path}: {e}"))?;
        let status = res.status();
        let raw = tokio::time::timeout(Duration::from_secs(3), res.into_body().collect())
            .await
            .map_err(|_| format!("etcd {endpoint}{path}: body timed out"))?
            .map_err(|e| format!("etcd {endpoint}{path}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("etcd {endpoint}{path}: {status}: {}", String::from_utf8_lossy(&raw)));
        }
        serde_json::from_slice(&raw).map_err(|e| format!("etcd {endpoint}{path}: {e}"))
    }

    /// Wakes `changed` on every put or delete the registry reports, until the watch fails
    /// or ends. Listing stays the source of truth; this only makes a change seen at once
    /// rather than at the next poll. (Expiries still wait for the poll: NATS drops an
    /// entry past its `max_age` without an event.)
    pub async fn watch(&self, changed: &tokio::sync::Notify) -> Result<(), String> {
        use futures_util::StreamExt as _;
        match self {
            Connection::Nats(store) => {
                let mut events = store.watch_all().await.map_err(|e| format!("nats-kv watch: {e}"))?;
                while let Some(event) = events.next().await {
                    event.map_err(|e| format!("nats-kv watch: {e}"))?;
                    changed.notify_one();
                }
            }
            Connection::Etcd { client, endpoint, prefix, .. } => {
                let body = serde_json::json!({"create_request": {
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&prefix_end(prefix)),
                }});
                let req = http::Request::post(format!("http://{endpoint}/v3/watch"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .map_err(|e| e.to_string())?;
                let res = tokio::time::timeout(Duration::from_secs(3), client.request(req))
                    .await
                    .map_err(|_| format!("etcd {endpoint}/v3/watch: no answer in 3 s"))?
                    .map_err(|e| format!("etcd {endpoint}/v3/watch: {e}"))?;
                if !res.status().is_success() {
                    return Err(format!("etcd {endpoint}/v3/watch: {}", res.status()));
                }
                // A stream of JSON messages, the first confirming the watch: any of them
                // is a reason to list again (one spurious listing is cheap).
                let mut events = res.into_body().into_data_stream();
                while let Some(chunk) = events.next().await {
                    chunk.map_err(|e| format!("etcd {endpoint}/v3/watch: {e}"))?;
                    changed.notify_one();
                }
            }
        }
        Ok(())
    }

    /// Keeps `address` registered under `id` until `stop` is set, then deletes it.
    pub async fn register(
        self,
        id: String,
        address: String,
        weight: u32,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let value = serde_json::to_vec(&Entry { address: address.clone(), weight }).unwrap_or_default();
        let ttl = match &self {
            Connection::Nats(store) => store.status().await.map(|s| s.max_age()).unwrap_or(Duration::from_secs(10)),
            Connection::Etcd { ttl, .. } => *ttl,
        };
        let beat = (ttl / 3).max(Duration::from_millis(200));
        let mut lease: Option<String> = None;
        loop {
            if let Err(e) = self.heartbeat(&id, &value, &mut lease).await {
                tracing::warn!(error = %e, "registry heartbeat failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = stop.changed() => break,
            }
        }
        let gone = match &self {
            Connection::Nats(store) => store.delete(&id).await.map_err(|e| e.to_string()),
            Connection::Etcd { .. } => match &lease {
                // Revoking the lease deletes the key with it.
                Some(lease) => self.etcd("/v3/lease/revoke", serde_json::json!({"ID": lease})).await.map(drop),
                None => Ok(()),
            },
        };
        match gone {
            Ok(()) => tracing::info!(%address, "deregistered"),
            Err(e) => tracing::warn!(error = %e, "cannot deregister; the entry expires with its TTL"),
        }
    }

    async fn heartbeat(&self, id: &str, value: &[u8], lease: &mut Option<String>) -> Result<(), String> {
        match self {
            Connection::Nats(store) => {
                store.put(id, Bytes::copy_from_slice(value)).await.map_err(|e| format!("nats-kv put: {e}"))?;
            }
            Connection::Etcd { prefix, ttl, .. } => {
                if let Some(id) = lease.as_deref() {
                    let alive = self.etcd("/v3/lease/keepalive", serde_json::json!({"ID": id})).await?;
                    // An expired lease answers with TTL 0 or none: grant a new one below.
                    if alive["result"]["TTL"].as_str().is_some_and(|t| t != "0") {
                        return Ok(());
                    }
                }
                let granted = self.etcd("/v3/lease/grant", serde_json::json!({"TTL": ttl.as_secs().max(1)})).await?;
                let new = granted["ID"].as_str().ok_or("etcd lease grant: no ID")?.to_owned();
                let key = format!("{prefix}{id}");
                let put = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value), "lease": new});
                self.etcd("/v3/kv/put", put).await?;
                *lease = Some(new);
            }
        }
        Ok(())
    }
}

fn push(targets: &mut Vec<Target>, value: &[u8]) {
    match serde_json::from_slice::<Entry>(value) {
        Ok(e) => match crate::discovery::check_authority(&e.address) {
            Ok(()) => targets.push(Target { authority: e.address, weight: e.weight.clamp(1, 1000) }),
            Err(why) => tracing::warn!(error = %why, "ignoring a registry entry"),
        },
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed registry entry"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// etcd's range end for "every key with this prefix": the prefix with its last byte + 1.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_urls() {
        assert_eq!(
            "nats-kv://127.0.0.1:4222/strata".parse(),
            Ok(Registry::NatsKv { server: "127.0.0.1:4222".into(), bucket: "strata".into() })
        );
        assert_eq!(
            "etcd://127.0.0.1:2379/strata/api".parse(),
            Ok(Registry::Etcd { endpoint: "127.0.0.1:2379".into(), prefix: "/strata/api/".into() })
        );
        for bad in ["nats-kv://h:1", "nats-kv://h:1/a.b", "etcd://h/x", "redis://h:1/x", "etcd://h:1/"] {
            assert!(bad.parse::<Registry>().is_err(), "{bad}");
        }
        assert_eq!(prefix_end("/strata/"), b"/strata0");
    }
}
