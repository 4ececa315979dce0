//! Who is calling, as far as the network can tell: the client address behind trusted
//! proxies, and the key the throttle counts it under.
//!
//! `Forwarded` and `X-Forwarded-For` are written by whoever sent the request, so they are
//! believed only from peers listed in `http.trusted_proxies`, and only as far back as the
//! chain stays inside that list: the client is the rightmost hop that is not a trusted
//! proxy. Anything a client prepends to the header sits left of that hop and is ignored.
//!
use std::net::{IpAddr, Ipv4Addr};

use axum::http::HeaderMap;
pub use strata_core::cidr::{Cidr, canonical, mask6, parse_list};

fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// The calling client's address: the TCP peer, unless the peer is a trusted proxy, in
/// which case the rightmost hop of the forwarding chain that is not itself trusted. A hop
/// that cannot be read (`unknown`, an obfuscated name, garbage) ends the walk at the
/// trusted proxy that reported it: what lies beyond cannot be known.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !any_contains(trusted, peer) {
        return peer;
    }
    let hops = forwarded_hops(headers);
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                let ip = canonical(*ip);
                if !any_contains(trusted, ip) {
                    return ip;
                }
                nearest = ip;
            }
            None => return nearest,
        }
    }
    nearest
}

/// The chain of client addresses, leftmost (farthest) first. `Forwarded` (RFC 7239) wins
/// when present, since a proxy that writes it may not maintain `X-Forwarded-For`.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(parse_node)
        .collect()
}

/// `192.0.2.1`, `"192.0.2.1:8080"`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let v = raw.trim().trim_matches('"');
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    v.rsplit_once(':').and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse::<Ipv4Addr>().ok())).map(IpAddr::V4)
}

/// What the per-client throttle counts under: an IPv4 address, or an IPv6 /64 (one
/// subscriber's LAN gets a /64, so counting /128s would give each guess a fresh budget).
pub fn throttle_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{}/64", mask6(v6, 64)),
    }
}

/// The resolved caller, placed in request extensions by the observe middleware.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_mask_and_match() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.200.0.1")));
        assert!(net.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped addresses are IPv4");
        assert!(!net.contains(ip("11.0.0.1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().to_string(), "192.0.2.7/32");
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_list(" 10.0.0.0/8, ::1 ,").unwrap().len(), 2);
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9")]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &[]), ip("198.51.100.1"));
        let trusted = parse_list("10.0.0.0/8").unwrap();
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &trusted), ip("198.51.100.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = parse_list("10.0.0.0/8").unwrap();
        // The client forged a leading entry; the proxy appended what it saw.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // Several header lines are one list.
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // RFC 7239, quoted, with ports and IPv6; it wins over X-Forwarded-For.
        let h = headers(&[
            ("forwarded", r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https"#),
            ("x-forwarded-for", "198.51.100.200"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", r#"For="192.0.2.60:8080";by=10.0.0.1"#)]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("192.0.2.60"));
    }

    #[test]
    fn an_unreadable_or_missing_chain_stops_at_the_last_trusted_hop() {
        let trusted = parse_list("10.0.0.0/8").unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted), ip("10.0.0.1"));
        let h = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        assert_eq!(throttle_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(throttle_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), "2001:db8:1:2::/64");
        assert_ne!(throttle_key(ip("2001:db8:1:3::1")), "2001:db8:1:2::/64");
        assert_eq!(throttle_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(throttle_key(ip("192.0.2.1")), "192.0.2.1");
    }
}
