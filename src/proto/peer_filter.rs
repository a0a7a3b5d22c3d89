//! Which peers a relay may talk to.
//!
//! An open TURN relay into loopback, RFC 1918 or link-local space lets anyone on the internet
//! reach a server's private network (coturn CVE-2020-26262 and friends), so those ranges are
//! denied unless the operator opens them with `allow_peers`. IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) embed an IPv4 address
//! and are judged by it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Ranges denied by default (DESIGN.md "Security defaults").
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, Clone)]
pub struct PeerFilter {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl PeerFilter {
    /// The default deny list plus `extra_deny`, with `allow` punching holes in both.
    pub fn new(allow: Vec<IpNet>, extra_deny: Vec<IpNet>) -> Self {
        let mut deny: Vec<IpNet> = DEFAULT_DENY
            .iter()
            .map(|net| net.parse().expect("DEFAULT_DENY holds valid CIDRs"))
            .collect();
        deny.extend(extra_deny);
        Self { deny, allow }
    }

    /// Whether the operator opened any range that the defaults deny; worth a loud warning.
    pub fn opens_default_denied_ranges(&self) -> bool {
        self.allow.iter().any(|allowed| {
            self.deny
                .iter()
                .any(|denied| denied.contains(allowed) || allowed.contains(denied))
        })
    }

    pub fn is_allowed(&self, peer: IpAddr) -> bool {
        self.explicitly_allows(peer)
            || !Self::forms(peer).any(|ip| self.deny.iter().any(|n| n.contains(&ip)))
    }

    /// Whether `allow_peers` names the address as written or the IPv4 address it carries.
    pub fn explicitly_allows(&self, peer: IpAddr) -> bool {
        Self::forms(peer).any(|ip| self.allow.iter().any(|n| n.contains(&ip)))
    }

    /// The address, and the IPv4 address embedded in it if any.
    fn forms(peer: IpAddr) -> impl Iterator<Item = IpAddr> {
        [Some(peer), embedded_ipv4(peer).map(IpAddr::V4)]
            .into_iter()
            .flatten()
    }
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address.
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let tail = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED {
        return Some(tail(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(tail(s[1], s[2]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_private_loopback_and_embedded_forms() {
        let filter = PeerFilter::new(vec![], vec![]);
        for denied in [
            "127.0.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "172.16.5.5",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
        ] {
            assert!(!filter.is_allowed(ip(denied)), "{denied} must be denied");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(filter.is_allowed(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn allow_list_opens_ranges_including_embedded_forms() {
        let filter = PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
        assert!(filter.is_allowed(ip("127.0.0.1")));
        assert!(filter.is_allowed(ip("::ffff:127.0.0.1")));
        assert!(!filter.is_allowed(ip("10.0.0.1")));
        assert!(filter.opens_default_denied_ranges());
        assert!(!PeerFilter::new(vec![], vec![]).opens_default_denied_ranges());
    }

    #[test]
    fn extra_deny_applies() {
        let filter = PeerFilter::new(vec![], vec!["8.8.8.0/24".parse().unwrap()]);
        assert!(!filter.is_allowed(ip("8.8.8.8")));
        assert!(filter.is_allowed(ip("8.8.4.4")));
    }
}
