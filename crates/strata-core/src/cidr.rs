//! IP networks (CIDR blocks), for trusted proxies and the webhook network policy.
//!
//! Parsed by hand (a few dozen lines) rather than with a crate: the only operations needed
//! are parse, display and contains.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn mask4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    Ipv4Addr::from(if prefix == 0 { 0 } else { bits & (u32::MAX << (32 - u32::from(prefix))) })
}

pub fn mask6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    Ipv6Addr::from(if prefix == 0 { 0 } else { bits & (u128::MAX << (128 - u32::from(prefix))) })
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports) is IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let ip = canonical(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be a number from 0 to {max}"))?,
            None => max,
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask4(v4, prefix)),
            IpAddr::V6(v6) => IpAddr::V6(mask6(v6, prefix)),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `a, b, c` (the environment-variable form of a CIDR list); empty means none.
pub fn parse_list(text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Cidr::from_str).collect()
}
