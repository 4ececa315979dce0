//! Where the upstreams are: `STRATA_GATEWAY_UPSTREAMS`, parsed once into a [`Discovery`],
//! then resolved into target lists for as long as the gateway runs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

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
    /// `dns+srv://_service._proto.NAME`: the SRV records of the best priority that has
    /// a resolvable target, each target's addresses with the record's port and weight
    /// (Kubernetes headless services and Consul publish these).
    DnsSrv { name: String },
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
        if let Some(name) = url.strip_prefix("dns+srv://") {
            let name = name.trim_end_matches('/');
            let mut labels = name.split('.');
            let (service, proto) = (labels.next().unwrap_or_default(), labels.next().unwrap_or_default());
            if !service.starts_with('_') || !proto.starts_with('_') || labels.next().is_none() {
                return Err(format!(
                    "dns+srv://{name}: expected dns+srv://_service._proto.NAME, e.g. _http._tcp.strata.example"
                ));
            }
            return Ok(Discovery::DnsSrv { name: name.to_owned() });
        }
        Err(format!(
            "unknown upstream discovery URL {url:?}: expected static://HOST:PORT,…, dns://NAME:PORT, dns+srv://_service._proto.NAME, nats-kv://HOST:PORT/BUCKET or etcd://HOST:PORT/PREFIX"
        ))
    }
}

pub(crate) fn check_authority(authority: &str) -> Result<(), String> {
    let (host, port) =
        authority.rsplit_once(':').ok_or_else(|| format!("upstream {authority:?}: expected HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() || http::uri::Authority::try_from(authority).is_err() {
        return Err(format!("upstream {authority:?}: expected HOST:PORT"));
    }
    Ok(())
}

impl Discovery {
    /// The targets now. Sorted, so that unchanged answers compare equal. A registry is
    /// listed through its [`crate::registry::Connection`] instead.
    ///
    /// Names are resolved by the system (`/etc/hosts`, then `/etc/resolv.conf`) unless
    /// `dns_servers` names the servers to ask (a Consul agent's DNS port, say).
    pub async fn resolve(&self, dns_servers: &[SocketAddr]) -> Result<Vec<Target>, String> {
        let mut targets = match self {
            Discovery::Static(targets) => targets.clone(),
            Discovery::Dns { name, port } if dns_servers.is_empty() => tokio::net::lookup_host((name.as_str(), *port))
                .await
                .map_err(|e| format!("resolve {name}: {e}"))?
                .map(|addr| Target { authority: addr.to_string(), weight: 1 })
                .collect(),
            Discovery::Dns { name, port } => {
                let resolver = resolver(dns_servers)?;
                addresses(&resolver, name).await?.into_iter().map(|ip| target(ip, *port, 1)).collect()
            }
            Discovery::DnsSrv { name } => srv_targets(&resolver(dns_servers)?, name).await?,
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
            Discovery::Dns { .. } | Discovery::DnsSrv { .. } | Discovery::Registry(_) => Some(interval),
        }
    }
}

/// A resolver for one round of lookups: the system's configuration re-read, or the given
/// servers. Built per round, so that no answer outlives the discovery interval.
fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("the system's DNS configuration: {e}"))?
    } else {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                let mut tcp = ConnectionConfig::tcp();
                (udp.port, tcp.port) = (s.port(), s.port());
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    let mut builder = builder;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
}

async fn addresses(resolver: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, String> {
    Ok(resolver.lookup_ip(name).await.map_err(|e| format!("resolve {name}: {e}"))?.iter().collect())
}

fn target(ip: IpAddr, port: u16, weight: u16) -> Target {
    // SRV weight 0 means "rarely"; ours starts at 1.
    Target { authority: SocketAddr::new(ip, port).to_string(), weight: u32::from(weight).clamp(1, 1000) }
}

/// RFC 2782: the lowest priority wins; a higher one is used only when no target of every
/// lower priority resolves.
async fn srv_targets(resolver: &TokioResolver, name: &str) -> Result<Vec<Target>, String> {
    let lookup = resolver.srv_lookup(name).await.map_err(|e| format!("SRV {name}: {e}"))?;
    let mut records: Vec<(u16, u16, u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.to_ascii())),
            _ => None,
        })
        .collect();
    records.sort();
    let mut last_error = format!("SRV {name}: no records");
    let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
    priorities.dedup();
    for priority in priorities {
        let mut targets = Vec::new();
        for (_, weight, port, host) in records.iter().filter(|r| r.0 == priority) {
            // "." as the target: the service is decidedly not available here.
            if host == "." {
                continue;
            }
            match addresses(resolver, host).await {
                Ok(ips) => targets.extend(ips.into_iter().map(|ip| target(ip, *port, *weight))),
                Err(e) => last_error = e,
            }
        }
        if !targets.is_empty() {
            return Ok(targets);
        }
    }
    Err(last_error)
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
            "dns+srv://strata.example",
            "dns+srv://_http.strata",
        ] {
            assert!(bad.parse::<Discovery>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn dns_resolves_every_address() {
        let d: Discovery = "dns://localhost:8080".parse().unwrap();
        let targets = d.resolve(&[]).await.unwrap();
        assert!(targets.iter().any(|t| t.authority == "127.0.0.1:8080" || t.authority == "[::1]:8080"), "{targets:?}");
    }
}
