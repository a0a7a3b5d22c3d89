//! Which peers a relay may talk to.
//!
//! An open TURN relay into loopback, RFC 1918 or link-local space lets anyone on the internet
//! reach a server's private network (coturn CVE-2020-26262 and friends). So by default every
//! block of IANA's IPv4 and IPv6 special-purpose address registries is denied, and so is IPv6
//! outside 2000::/3 (no unicast is allocated there), unless the operator opens a range with
//! `allow_peers`. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64's well-known
//! prefix, 6to4, Teredo, ISATAP interface identifiers) are judged by the IPv4 addresses inside,
//! so NAT64 to a public IPv4 address works and NAT64 to 10.0.0.1 does not.
//! docs/SECURITY.md "Peer deny list" has one row per entry of [`DEFAULT_RANGES`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// What the default policy does with an address in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refused (403) unless `allow_peers` opens it.
    Deny,
    /// Judged by the IPv4 addresses it carries: allowed only if each of them is.
    Carries(Embedding),
}

/// Where an IPv6 address carries IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// The last 32 bits: IPv4-mapped `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2) and NAT64's
    /// well-known prefix `64:ff9b::a.b.c.d` (RFC 6052 §2.2).
    Last32,
    /// 6to4 `2002:V4::/48` (RFC 3056 §2): bits 16–47.
    SixToFour,
    /// Teredo `2001:0:SERVER:flags:port:CLIENT` (RFC 4380 §4): the Teredo server's IPv4
    /// address in bits 32–63 and the client's, every bit inverted, in bits 96–127. Both are
    /// judged: a packet to the address goes through a relay to the client's IPv4 address.
    Teredo,
}

use Embedding::*;
use Policy::*;

/// The default policy. The most specific range containing an address decides; an address in
/// none of them is an ordinary public one. Comments name the IANA registry entry.
pub const DEFAULT_RANGES: &[(&str, Policy)] = &[
    // IANA IPv4 Special-Purpose Address Registry, entry by entry, and multicast.
    ("0.0.0.0/8", Deny), // "this network" (RFC 791); Linux delivers 0.0.0.0 locally
    ("0.0.0.0/32", Deny), // "this host on this network" (RFC 1122)
    ("10.0.0.0/8", Deny), // private use (RFC 1918)
    ("100.64.0.0/10", Deny), // shared address space, carrier-grade NAT (RFC 6598)
    ("127.0.0.0/8", Deny), // loopback (RFC 1122)
    ("169.254.0.0/16", Deny), // link-local (RFC 3927), cloud metadata 169.254.169.254
    ("172.16.0.0/12", Deny), // private use (RFC 1918)
    ("192.0.0.0/24", Deny), // IETF protocol assignments (RFC 6890)
    ("192.0.0.0/29", Deny), // IPv4 service continuity prefix, DS-Lite (RFC 7335)
    ("192.0.0.8/32", Deny), // IPv4 dummy address (RFC 7600)
    ("192.0.0.9/32", Deny), // Port Control Protocol anycast (RFC 7723)
    ("192.0.0.10/32", Deny), // TURN anycast (RFC 8155)
    ("192.0.0.170/32", Deny), // NAT64/DNS64 discovery (RFC 8880)
    ("192.0.0.171/32", Deny), // NAT64/DNS64 discovery (RFC 8880)
    ("192.0.2.0/24", Deny), // documentation, TEST-NET-1 (RFC 5737)
    ("192.31.196.0/24", Deny), // AS112-v4 (RFC 7535)
    ("192.52.193.0/24", Deny), // AMT relays (RFC 7450)
    ("192.88.99.0/24", Deny), // deprecated 6to4 relay anycast (RFC 7526)
    ("192.88.99.2/32", Deny), // 6a44 relay anycast (RFC 6751)
    ("192.168.0.0/16", Deny), // private use (RFC 1918)
    ("192.175.48.0/24", Deny), // direct delegation AS112 service (RFC 7534)
    ("198.18.0.0/15", Deny), // benchmarking (RFC 2544)
    ("198.51.100.0/24", Deny), // documentation, TEST-NET-2 (RFC 5737)
    ("203.0.113.0/24", Deny), // documentation, TEST-NET-3 (RFC 5737)
    ("224.0.0.0/4", Deny), // multicast (RFC 5771)
    ("240.0.0.0/4", Deny), // reserved (RFC 1112)
    ("255.255.255.255/32", Deny), // limited broadcast (RFC 919)
    // IANA IPv6 Special-Purpose Address Registry, entry by entry, and the other embeddings.
    ("::/128", Deny),                   // unspecified (RFC 4291)
    ("::1/128", Deny),                  // loopback (RFC 4291)
    ("::/96", Deny),                    // IPv4-compatible, deprecated (RFC 4291 §2.5.5.1)
    ("::ffff:0:0/96", Carries(Last32)), // IPv4-mapped (RFC 4291)
    ("::ffff:0:0:0/96", Deny),          // IPv4-translated, SIIT (RFC 2765, dropped by RFC 6145)
    ("64:ff9b::/96", Carries(Last32)),  // NAT64 well-known prefix (RFC 6052)
    ("64:ff9b:1::/48", Deny),           // local-use IPv4/IPv6 translation (RFC 8215)
    ("100::/64", Deny),                 // discard-only (RFC 6666)
    ("100:0:0:1::/64", Deny),           // dummy IPv6 prefix
    ("2001::/23", Deny),                // IETF protocol assignments (RFC 2928)
    ("2001::/32", Carries(Teredo)),     // Teredo (RFC 4380)
    ("2001:1::1/128", Deny),            // Port Control Protocol anycast (RFC 7723)
    ("2001:1::2/128", Deny),            // TURN anycast (RFC 8155)
    ("2001:1::3/128", Deny),            // DNS-SD service registration protocol anycast (RFC 9665)
    ("2001:2::/48", Deny),              // benchmarking (RFC 5180)
    ("2001:3::/32", Deny),              // AMT (RFC 7450)
    ("2001:4:112::/48", Deny),          // AS112-v6 (RFC 7535)
    ("2001:10::/28", Deny),             // deprecated ORCHID (RFC 4843)
    ("2001:20::/28", Deny),             // ORCHIDv2 (RFC 7343)
    ("2001:30::/28", Deny),             // drone remote ID entity tags (RFC 9374)
    ("2001:db8::/32", Deny),            // documentation (RFC 3849)
    ("2002::/16", Carries(SixToFour)),  // 6to4 (RFC 3056)
    ("2620:4f:8000::/48", Deny),        // direct delegation AS112 service (RFC 7534)
    ("3fff::/20", Deny),                // documentation (RFC 9637)
    ("5f00::/16", Deny),                // SRv6 segment identifiers (RFC 9602)
    ("fc00::/7", Deny),                 // unique local (RFC 4193)
    ("fe80::/10", Deny),                // link-local (RFC 4291)
    ("fec0::/10", Deny),                // site-local, deprecated (RFC 3879)
    ("ff00::/8", Deny),                 // multicast (RFC 4291)
    // IANA IPv6 Address Space: all unicast so far is in 2000::/3; the rest is reserved.
    ("::/3", Deny),
    ("4000::/2", Deny),
    ("8000::/1", Deny),
];

/// Compared on reload: a changed filter is applied to live permissions and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFilter {
    /// [`DEFAULT_RANGES`], most specific first.
    defaults: Vec<(IpNet, Policy)>,
    /// The operator's `deny_peers`.
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl PeerFilter {
    /// The default policy plus `extra_deny`, with `allow` punching holes in both.
    pub fn new(allow: Vec<IpNet>, extra_deny: Vec<IpNet>) -> Self {
        let mut defaults: Vec<(IpNet, Policy)> = DEFAULT_RANGES
            .iter()
            .map(|&(net, policy)| {
                (
                    net.parse().expect("DEFAULT_RANGES holds valid CIDRs"),
                    policy,
                )
            })
            .collect();
        defaults.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Self {
            defaults,
            deny: extra_deny,
            allow,
        }
    }

    /// Whether the operator opened any range that the defaults deny; worth a loud warning.
    pub fn opens_default_denied_ranges(&self) -> bool {
        self.allow.iter().any(|allowed| {
            let defaults = self.defaults.iter().map(|(net, _)| net);
            defaults
                .chain(&self.deny)
                .any(|denied| denied.contains(allowed) || allowed.contains(denied))
        })
    }

    /// `allow_peers` names the address as written (or an IPv4 address it carries: opening
    /// 10.0.0.0/8 opens `::ffff:10.0.0.1` too); otherwise `deny_peers` and the defaults decide.
    pub fn is_allowed(&self, peer: IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(&peer)) {
            return true;
        }
        if self.deny.iter().any(|n| n.contains(&peer)) {
            return false;
        }
        if self.default_policy(peer) == Some(Deny) {
            return false;
        }
        // IPv4 addresses carry nothing, so this recurses once at most.
        self.carried_ipv4(peer)
            .all(|inner| self.is_allowed(IpAddr::V4(inner)))
    }

    /// Whether `allow_peers` names the address as written or an IPv4 address it carries.
    pub fn explicitly_allows(&self, peer: IpAddr) -> bool {
        self.forms(peer)
            .any(|ip| self.allow.iter().any(|n| n.contains(&ip)))
    }

    /// The address, then the IPv4 addresses it carries.
    pub fn forms(&self, peer: IpAddr) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(peer).chain(self.carried_ipv4(peer).map(IpAddr::V4))
    }

    /// The IPv4 addresses an IPv6 address carries: by its range (mapped, NAT64, 6to4,
    /// Teredo), or, for an ordinary unicast address, in an ISATAP interface identifier.
    pub fn carried_ipv4(&self, peer: IpAddr) -> impl Iterator<Item = Ipv4Addr> {
        let carried = match (peer, self.default_policy(peer)) {
            (IpAddr::V6(v6), Some(Carries(embedding))) => embedding.ipv4(v6),
            (IpAddr::V6(v6), None) => [isatap_ipv4(v6), None],
            _ => [None, None],
        };
        carried.into_iter().flatten()
    }

    /// The policy of the most specific default range holding `peer`, if any.
    fn default_policy(&self, peer: IpAddr) -> Option<Policy> {
        self.defaults
            .iter()
            .find(|(net, _)| net.contains(&peer))
            .map(|&(_, policy)| policy)
    }
}

impl Embedding {
    fn ipv4(self, ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
        let bits = u128::from(ip);
        let v4 = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
        match self {
            Last32 => [Some(v4(0)), None],
            SixToFour => [Some(v4(80)), None],
            Teredo => [Some(v4(64)), Some(Ipv4Addr::from(!(bits as u32)))],
        }
    }
}

/// The IPv4 address in an ISATAP interface identifier (RFC 5214 §6.1): `0000:5efe:V4`, with
/// the u and g bits free (`0200:5efe:V4` when the IPv4 address is global). ISATAP routers
/// tunnel to that address inside their own network, so a private one is refused wherever the
/// prefix is; a random interface identifier has this shape with odds of 2^-30.
fn isatap_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    (s[4] & 0xfcff == 0 && s[5] == 0x5efe).then(|| Ipv4Addr::from(u128::from(ip) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn defaults() -> PeerFilter {
        PeerFilter::new(vec![], vec![])
    }

    /// An address inside `net` away from its edges: the network address plus a third of the
    /// range's size (the whole address for a /32 or /128).
    fn inside(net: IpNet) -> IpAddr {
        match net {
            IpNet::V4(n) => {
                let span = u32::MAX.checked_shr(n.prefix_len().into()).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + span / 3))
            }
            IpNet::V6(n) => {
                let span = u128::MAX.checked_shr(n.prefix_len().into()).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + span / 3))
            }
        }
    }

    #[test]
    fn every_deny_row_is_denied_at_its_edges_and_inside() {
        let filter = defaults();
        for &(net, policy) in DEFAULT_RANGES {
            if policy != Deny {
                continue;
            }
            let net: IpNet = net.parse().unwrap();
            for addr in [net.network(), inside(net), net.broadcast()] {
                // A more specific row may carry IPv4 (e.g. Teredo inside 2001::/23); those
                // rows have tests of their own.
                if filter.default_policy(addr) == Some(Deny) {
                    assert!(!filter.is_allowed(addr), "{addr} in {net} must be denied");
                } else {
                    assert!(
                        matches!(filter.default_policy(addr), Some(Carries(_))),
                        "{addr} in {net}: only a row that carries IPv4 may override a deny"
                    );
                }
            }
        }
    }

    #[test]
    fn public_addresses_next_to_denied_ranges_are_allowed() {
        let filter = defaults();
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.88.98.255",
            "192.167.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:4860::8888",
            "2001:200::1",
            "2003::1",
            "2620:4f:7fff::1",
            "2620:4f:8001::1",
            "3fff:1000::1",
        ] {
            assert!(filter.is_allowed(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn outside_2000_3_is_denied() {
        let filter = defaults();
        for denied in [
            "1000::1", "4000::1", "6000::1", "a000::1", "e000::1", "fe00::1",
        ] {
            assert!(!filter.is_allowed(ip(denied)), "{denied} must be denied");
        }
    }

    #[test]
    fn mapped_and_nat64_are_judged_by_the_last_32_bits() {
        let filter = defaults();
        for allowed in ["::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "64:ff9b::101:101"] {
            assert!(filter.is_allowed(ip(allowed)), "{allowed} must be allowed");
        }
        for denied in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:169.254.169.254",
            "::ffff:255.255.255.255",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::192.168.1.1",
            "64:ff9b::224.0.0.1",
            // Local-use NAT64 translates into the operator's own network: always denied.
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:ffff::1",
        ] {
            assert!(!filter.is_allowed(ip(denied)), "{denied} must be denied");
        }
    }

    #[test]
    fn compatible_and_translated_forms_are_denied_whatever_they_carry() {
        let filter = defaults();
        for denied in [
            "::8.8.8.8",
            "::127.0.0.1",
            "::ffff:0:808:808",
            "::ffff:0:a00:1",
        ] {
            assert!(!filter.is_allowed(ip(denied)), "{denied} must be denied");
        }
    }

    #[test]
    fn six_to_four_is_judged_by_bits_16_to_48() {
        let filter = defaults();
        assert!(filter.is_allowed(ip("2002:808:808::1")));
        assert!(filter.is_allowed(ip("2002:808:808:ffff:ffff:ffff:ffff:ffff")));
        for denied in [
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2002::1",
            "2002:e000:1::",
        ] {
            assert!(!filter.is_allowed(ip(denied)), "{denied} must be denied");
        }
    }

    #[test]
    fn teredo_is_judged_by_its_server_and_its_inverted_client_address() {
        let filter = defaults();
        let carried = |s: &str| filter.carried_ipv4(ip(s)).collect::<Vec<_>>();
        // RFC 4380 §4's example: server 65.54.227.120, client 192.0.2.45 (documentation).
        let example = "2001:0:4136:e378:8000:63bf:3fff:fdd2";
        assert_eq!(
            carried(example),
            [
                Ipv4Addr::new(65, 54, 227, 120),
                Ipv4Addr::new(192, 0, 2, 45)
            ]
        );
        assert!(!filter.is_allowed(ip(example)));
        // Client 8.8.8.8 is f7f7:f7f7 inverted.
        assert!(filter.is_allowed(ip("2001:0:4136:e378:8000:63bf:f7f7:f7f7")));
        // Client 10.0.0.1, and a private server.
        assert!(!filter.is_allowed(ip("2001:0:4136:e378:8000:63bf:f5ff:fffe")));
        assert!(!filter.is_allowed(ip("2001:0:a00:1:8000:63bf:f7f7:f7f7")));
    }

    #[test]
    fn isatap_interface_identifiers_are_judged_by_their_ipv4() {
        let filter = defaults();
        for allowed in ["2606:4700::200:5efe:808:808", "2606:4700::5efe:808:808"] {
            assert!(filter.is_allowed(ip(allowed)), "{allowed} must be allowed");
        }
        for denied in [
            "2606:4700::5efe:a00:1",
            "2606:4700::200:5efe:7f00:1",
            "2606:4700::100:5efe:c0a8:101",
            "2606:4700::300:5efe:a9fe:a9fe",
        ] {
            assert!(!filter.is_allowed(ip(denied)), "{denied} must be denied");
        }
        // Not ISATAP: another u/l pattern, or no 5efe.
        assert!(filter.is_allowed(ip("2606:4700::400:5efe:a00:1")));
        assert!(filter.is_allowed(ip("2606:4700::5eff:a00:1")));
    }

    #[test]
    fn teredo_row_overrides_the_ietf_block_and_nothing_else_does() {
        let filter = defaults();
        let teredo: IpNet = "2001::/32".parse().unwrap();
        let block: IpNet = "2001::/23".parse().unwrap();
        for addr in [block.network(), inside(block), block.broadcast()] {
            let expect_carried = teredo.contains(&addr);
            assert_eq!(
                matches!(filter.default_policy(addr), Some(Carries(Teredo))),
                expect_carried,
                "{addr}"
            );
        }
    }

    #[test]
    fn allow_list_opens_ranges_including_embedded_forms() {
        let filter = PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
        assert!(filter.is_allowed(ip("127.0.0.1")));
        assert!(filter.is_allowed(ip("::ffff:127.0.0.1")));
        assert!(filter.is_allowed(ip("64:ff9b::7f00:1")));
        assert!(!filter.is_allowed(ip("10.0.0.1")));
        assert!(!filter.is_allowed(ip("::ffff:10.0.0.1")));
        assert!(filter.explicitly_allows(ip("2002:7f00:1::1")));
        assert!(!filter.explicitly_allows(ip("8.8.8.8")));
        assert!(filter.opens_default_denied_ranges());
        assert!(!defaults().opens_default_denied_ranges());
        // A Teredo address is open only when both addresses it carries are.
        let teredo_to_loopback = "2001:0:808:808:8000:63bf:80ff:fffe"; // client 127.0.0.1
        assert!(filter.is_allowed(ip(teredo_to_loopback)));
        assert!(!defaults().is_allowed(ip(teredo_to_loopback)));
        let six = PeerFilter::new(vec!["fd00::/8".parse().unwrap()], vec![]);
        assert!(six.is_allowed(ip("fd00::1")));
        assert!(!six.is_allowed(ip("fe80::1")));
    }

    #[test]
    fn extra_deny_applies_to_the_address_and_what_it_carries() {
        let filter = PeerFilter::new(vec![], vec!["8.8.8.0/24".parse().unwrap()]);
        assert!(!filter.is_allowed(ip("8.8.8.8")));
        assert!(!filter.is_allowed(ip("::ffff:8.8.8.8")));
        assert!(!filter.is_allowed(ip("64:ff9b::8.8.8.8")));
        assert!(filter.is_allowed(ip("8.8.4.4")));
        let no_6to4 = PeerFilter::new(vec![], vec!["2002::/16".parse().unwrap()]);
        assert!(!no_6to4.is_allowed(ip("2002:808:808::1")));
    }

    #[test]
    fn every_row_is_in_the_security_docs_table() {
        let docs = include_str!("../../docs/SECURITY.md");
        let table = docs
            .split("## Peer deny list")
            .nth(1)
            .expect("docs/SECURITY.md has a \"Peer deny list\" section");
        for (net, _) in DEFAULT_RANGES {
            assert!(
                table.contains(&format!("| `{net}` |")),
                "docs/SECURITY.md \"Peer deny list\" has no row for {net}"
            );
        }
    }
}
