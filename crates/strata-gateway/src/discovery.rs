//! Where the upstreams are: `STRATA_GATEWAY_UPSTREAMS`, parsed once into a [`Discovery`],
//! then resolved into target lists for as long as the gateway runs.

use std::time::Duration;

/// One upstream as discovery names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// `host:port`; for `dns://` the resolved `ip:port`.
    pub authority: String,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Discovery {
    /// `static://HOST:PORT[;weight=N],HOST:PORT…`
    Static(Vec<Target>),
    /// `dns://NAME:PORT`: every A/AAAA record, re-resolved every `interval`.
    Dns { name: String, port: u16 },
    /// `nats-kv://HOST:PORT/BUCKET` or `etcd://HOST:PORT/PREFIX`: the instances that
    /// registered themselves (see [`crate::registry`]), listed every `interval`.
    Registry(crate::registry::Registry),
}

impl std::str::FromStr for Discovery {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if let Some(list) = url.strip_prefix("static://") {
            let mut targets = Vec::new();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let mut parts = item.split(';');
                let authority = parts.next().unwrap_or_default().trim();
                check_authority(authority)?;
                let mut weight = 1;
                for option in parts {
                    match option.trim().split_once('=') {
                        Some(("weight", n)) => {
                            weight =
                                n.parse::<u32>().ok().filter(|w| (1..=1000).contains(w)).ok_or_else(|| {
                                    format!("upstream {authority}: weight must be 1..=1000, got {n:?}")
                                })?;
                        }
                        _ => {
                            return Err(format!("upstream {authority}: unknown option {option:?} (expected weight=N)"));
                        }
                    }
                }
                targets.push(Target { authority: authority.to_owned(), weight });
            }
            if targets.is_empty() {
                return Err("static:// needs at least one HOST:PORT".into());
            }
            return Ok(Discovery::Static(targets));
        }
        if let Some(rest) = url.strip_prefix("dns://") {
            let (name, port) =
                rest.rsplit_once(':').ok_or_else(|| format!("dns://{rest}: expected dns://NAME:PORT"))?;
            let port = port.parse().map_err(|_| format!("dns://{rest}: bad port {port:?}"))?;
            if name.is_empty() {
                return Err("dns:// needs a name".into());
            }
            return Ok(Discovery::Dns { name: name.to_owned(), port });
        }
        if url.starts_with("nats-kv://") || url.starts_with("etcd://") {
            return url.parse().map(Discovery::Registry);
        }
        if url.starts_with("dns+srv://") {
            return Err(
                "dns+srv:// discovery is not implemented yet; use static://, dns://, nats-kv:// or etcd://".into()
            );
        }
        Err(format!(
            "unknown upstream discovery URL {url:?}: expected static://HOST:PORT,…, dns://NAME:PORT, nats-kv://HOST:PORT/BUCKET or etcd://HOST:PORT/PREFIX"
        ))
    }
}

fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) =
        authority.rsplit_once(':').ok_or_else(|| format!("upstream {authority:?}: expected HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("upstream {authority:?}: expected HOST:PORT"));
    }
    Ok(())
}

impl Discovery {
    /// The targets now. Sorted, so that unchanged answers compare equal. A registry is
    /// listed through its [`crate::registry::Connection`] instead.
    pub async fn resolve(&self) -> Result<Vec<Target>, String> {
        let mut targets = match self {
            Discovery::Static(targets) => targets.clone(),
            Discovery::Dns { name, port } => tokio::net::lookup_host((name.as_str(), *port))
                .await
                .map_err(|e| format!("resolve {name}: {e}"))?
                .map(|addr| Target { authority: addr.to_string(), weight: 1 })
                .collect(),
            Discovery::Registry(_) => return Err("a registry is listed through its connection".into()),
        };
        targets.sort();
        targets.dedup();
        Ok(targets)
    }

    /// How often to ask again; `None` when the answer never changes.
    pub fn refresh(&self, interval: Duration) -> Option<Duration> {
        match self {
            Discovery::Static(_) => None,
            Discovery::Dns { .. } | Discovery::Registry(_) => Some(interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_lists_with_weights() {
        let d: Discovery = "static://127.0.0.1:8081;weight=5, 127.0.0.1:8082,localhost:8083".parse().unwrap();
        assert_eq!(
            d,
            Discovery::Static(vec![
                Target { authority: "127.0.0.1:8081".into(), weight: 5 },
                Target { authority: "127.0.0.1:8082".into(), weight: 1 },
                Target { authority: "localhost:8083".into(), weight: 1 },
            ])
        );
        for bad in [
            "static://",
            "static://host",
            "static://h:1;weight=0",
            "static://h:1;w=2",
            "ftp://x",
            "dns://nope",
            "nats-kv://h:1",
        ] {
            assert!(bad.parse::<Discovery>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn dns_resolves_every_address() {
        let d: Discovery = "dns://localhost:8080".parse().unwrap();
        let targets = d.resolve().await.unwrap();
        assert!(targets.iter().any(|t| t.authority == "127.0.0.1:8080" || t.authority == "[::1]:8080"), "{targets:?}");
    }
}
