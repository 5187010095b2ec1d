//! Addresses and CIDR ranges, as allowlists and trusted-proxy lists name them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address or a CIDR range (`10.0.0.1`, `172.16.0.0/12`, `2001:db8::/32`), kept as its
/// network (`10.1.2.3/8` is `10.0.0.0/8`). An IPv4 range also matches the same address
/// mapped into IPv6, as a dual-stack socket reports an IPv4 peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => Some(p)
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0-{max}"))?,
        };
        let network = match network {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask32(prefix)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask128(prefix)).into()),
        };
        Ok(IpRange { network, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<IpRange> for String {
    fn from(range: IpRange) -> String {
        range.to_string()
    }
}

/// `10.0.0.0/8`; a single address without its prefix.
impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges() {
        let range = |s: &str| s.parse::<IpRange>().unwrap_or_else(|e| panic!("{e}"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|_| panic!("{s}"));
        assert!(range("203.0.113.7").contains(ip("203.0.113.7")));
        assert!(!range("203.0.113.7").contains(ip("203.0.113.8")));
        assert!(range("10.1.2.3/8").contains(ip("10.200.0.1")));
        assert_eq!(range("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(range("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!range("2001:db8::/32").contains(ip("2001:db9::5")));
        assert!(range("::1").contains(ip("::1")));
        assert!(!range("::1").contains(ip("127.0.0.1")));
        assert!(
            range("192.0.2.0/24").contains(ip("::ffff:192.0.2.9")),
            "an IPv4 client seen through an IPv6 socket"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad:?}");
        }
    }
}
