//! Issue 12, request attributes: what the daemon answers when an attribute of Allocate,
//! Refresh, CreatePermission, ChannelBind or Send is absent, malformed, repeated or holds a
//! value its RFC does not allow (RFC 8656 §7.2, §8.2, §10.2, §11.2, §12.2; RFC 8489 §6.3,
//! §14), and which peers the relay refuses (docs/SECURITY.md "Peer deny list").
//!
//! The attribute tests are standard behaviour and run against coturn too
//! (`TURNPIKE_TEST_AGAINST=coturn`); a case where coturn answers otherwise is marked
//! `coturn_differs`, printed, and not asserted in coturn mode. The deny-list test is
//! turnpike's policy and needs turnpike. Peers named only in requests that must be refused
//! (or, for public addresses, in a CreatePermission) are never sent anything: every packet
//! stays on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun_types::attribute::{AttributeType, RawAttribute};
use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec, TransactionId};
use turn_types::attribute::{
    AdditionalAddressFamily, Data, Lifetime, RequestedAddressFamily, XorPeerAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use turn_types::AddressFamily;

use crate::hardening::{metric_sum, metrics};
use crate::harness::{against_coturn, default_args_without, Server};
use crate::stun_client::{recv_from, udp_transport, Resp, UdpTurn, RESPONSE_TIMEOUT};

const REQUESTED_TRANSPORT: u16 = 0x0019;
const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
/// ADDITIONAL-ADDRESS-FAMILY as draft-ietf-tram-turnbis numbered it (coturn 4.6 knows only this).
const DRAFT_ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8032;
const EVEN_PORT: u16 = 0x0018;
const RESERVATION_TOKEN: u16 = 0x0022;
const LIFETIME: u16 = 0x000D;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const CHANNEL_NUMBER: u16 = 0x000C;
/// Comprehension-required (below 0x8000) and assigned to nothing.
const UNKNOWN_REQUIRED: u16 = 0x0031;

fn add_raw(w: &mut MessageWriteVec, atype: u16, value: &[u8]) {
    w.add_attribute(&RawAttribute::new(AttributeType::new(atype), value))
        .unwrap();
}

/// One request and the code RFC 8656 asks for.
struct Case<'a> {
    what: &'static str,
    attrs: &'a dyn Fn(&mut MessageWriteVec, TransactionId),
    code: u16,
    /// coturn 4.6 answers otherwise (printed in coturn mode instead of asserted).
    coturn_differs: bool,
}

/// Asserts `resp` has `case.code`; in coturn mode a known difference is printed instead.
fn check(resp: Resp, case: &Case<'_>) {
    let got = resp.code();
    eprintln!(
        "{:<55} expected {} got {}",
        case.what,
        case.code,
        resp.describe()
    );
    if against_coturn() && case.coturn_differs {
        if got != Some(case.code) {
            eprintln!("  COTURN DIFFERS: {}: {}", case.what, resp.describe());
        }
        return;
    }
    assert_eq!(
        got,
        Some(case.code),
        "{}: expected {}, got {}",
        case.what,
        case.code,
        resp.describe()
    );
}

/// RFC 8656 §7.2 steps 3–9 and RFC 8489 §14 over UDP: each malformed or conflicting Allocate
/// gets the RFC's code and creates nothing, so the same 5-tuple can allocate afterwards.
#[test]
fn allocate_attribute_faults_get_the_rfc_codes() {
    let server = Server::start(&[]);
    let cases = [
        Case {
            what: "REQUESTED-ADDRESS-FAMILY 0x03",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]);
            },
            code: 440,
            coturn_differs: false,
        },
        Case {
            what: "REQUESTED-TRANSPORT of 3 bytes",
            attrs: &|w, _| add_raw(w, REQUESTED_TRANSPORT, &[17, 0, 0]),
            code: 400,
            coturn_differs: false,
        },
        Case {
            what: "no REQUESTED-TRANSPORT",
            attrs: &|_, _| {},
            code: 400,
            coturn_differs: false,
        },
        Case {
            what: "REQUESTED-TRANSPORT TCP",
            attrs: &|w, _| add_raw(w, REQUESTED_TRANSPORT, &[6, 0, 0, 0]),
            code: 442,
            // coturn serves RFC 6062 TCP allocations and answers 400 over UDP.
            coturn_differs: true,
        },
        Case {
            what: "REQUESTED-ADDRESS-FAMILY of 1 byte",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, REQUESTED_ADDRESS_FAMILY, &[1]);
            },
            code: 400,
            // coturn: 440.
            coturn_differs: true,
        },
        Case {
            what: "ADDITIONAL-ADDRESS-FAMILY IPv4",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0]);
            },
            code: 400,
            // coturn 4.6 ignores 0x8000 (it knows only the draft 0x8032).
            coturn_differs: true,
        },
        Case {
            what: "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY",
            attrs: &|w, t| {
                udp_transport(w, t);
                w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV4))
                    .unwrap();
                w.add_attribute(&AdditionalAddressFamily::new(AddressFamily::IPV6))
                    .unwrap();
            },
            code: 400,
            // coturn 4.6 knows only the draft codepoint 0x8032 and ignores 0x8000.
            coturn_differs: true,
        },
        Case {
            what: "RESERVATION-TOKEN and EVEN-PORT",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, RESERVATION_TOKEN, &[7; 8]);
                add_raw(w, EVEN_PORT, &[0]);
            },
            code: 400,
            coturn_differs: false,
        },
        Case {
            what: "EVEN-PORT with R and ADDITIONAL-ADDRESS-FAMILY",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, EVEN_PORT, &[0x80]);
                add_raw(w, ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            },
            code: 400,
            // coturn 4.6 ignores 0x8000.
            coturn_differs: true,
        },
        // The same three under the draft codepoint, which both servers read.
        Case {
            what: "ADDITIONAL-ADDRESS-FAMILY (0x8032) IPv4",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, DRAFT_ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0]);
            },
            code: 400,
            coturn_differs: false,
        },
        Case {
            what: "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY (0x8032)",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
                add_raw(w, DRAFT_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            },
            code: 400,
            coturn_differs: false,
        },
        Case {
            what: "EVEN-PORT with R and ADDITIONAL-ADDRESS-FAMILY (0x8032)",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, EVEN_PORT, &[0x80]);
                add_raw(w, DRAFT_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            },
            code: 400,
            coturn_differs: false,
        },
        Case {
            what: "LIFETIME of 2 bytes",
            attrs: &|w, t| {
                udp_transport(w, t);
                add_raw(w, LIFETIME, &[0, 60]);
            },
            code: 400,
            coturn_differs: false,
        },
    ];
    for case in &cases {
        // A fresh 5-tuple each, so one server's mistake cannot change the next answer.
        let mut client = UdpTurn::rest(&server, "alice");
        let resp = client.request(ALLOCATE, case.attrs);
        let refused = resp.code().is_some();
        check(resp, case);
        if refused {
            // Nothing was allocated: the 5-tuple is still free (else 437).
            client
                .allocate()
                .expect_success(&format!("Allocate after \"{}\"", case.what));
        }
    }
    // RFC 8489 §14: the first REQUESTED-TRANSPORT counts, the TCP one after it may be ignored.
    let what = "Allocate: UDP, then a duplicate REQUESTED-TRANSPORT TCP";
    let resp = UdpTurn::rest(&server, "alice").request(ALLOCATE, &|w, t| {
        udp_transport(w, t);
        add_raw(w, REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    eprintln!("{what:<55} expected success got {}", resp.describe());
    if against_coturn() && !resp.is_success() {
        // "MAY be ignored": refusing the duplicate is allowed too.
        eprintln!("  COTURN DIFFERS: {what}: {}", resp.describe());
        return;
    }
    resp.expect_success(what);
}

/// RFC 8656 §10.2, §12.2: an invalid XOR-PEER-ADDRESS anywhere in a CreatePermission, or a
/// malformed CHANNEL-NUMBER, is 400; nothing is installed.
#[test]
fn create_permission_and_channel_bind_attribute_faults_get_400() {
    let server = Server::start(&[]);
    let mut client = UdpTurn::rest(&server, "alice");
    client.allocate().expect_success("Allocate");
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let cases = [
        Case {
            what: "CreatePermission: a valid peer, then family 0x03",
            attrs: &move |w, t| {
                w.add_attribute(&XorPeerAddress::new(peer, t)).unwrap();
                add_raw(w, XOR_PEER_ADDRESS, &[0, 3, 0, 9, 1, 2, 3, 4]);
            },
            code: 400,
            // coturn installs the valid one and ignores the other.
            coturn_differs: true,
        },
        Case {
            what: "CreatePermission: XOR-PEER-ADDRESS of 4 bytes",
            attrs: &|w, _| add_raw(w, XOR_PEER_ADDRESS, &[0, 1, 0, 9]),
            code: 400,
            // coturn: success.
            coturn_differs: true,
        },
        Case {
            what: "CreatePermission: no XOR-PEER-ADDRESS",
            attrs: &|_, _| {},
            code: 400,
            coturn_differs: false,
        },
    ];
    for case in &cases {
        check(client.request(CREATE_PERMISSION, case.attrs), case);
    }
    let channel_cases = [
        Case {
            what: "ChannelBind: CHANNEL-NUMBER of 2 bytes",
            attrs: &move |w, t| {
                add_raw(w, CHANNEL_NUMBER, &[0x40, 0x00]);
                w.add_attribute(&XorPeerAddress::new(peer, t)).unwrap();
            },
            code: 400,
            // coturn binds channel 0x4000.
            coturn_differs: true,
        },
        Case {
            what: "ChannelBind: no XOR-PEER-ADDRESS",
            attrs: &|w, _| add_raw(w, CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]),
            code: 400,
            coturn_differs: false,
        },
    ];
    for case in &channel_cases {
        check(client.request(CHANNEL_BIND, case.attrs), case);
    }
}

/// A peer socket on loopback and a client allocation permitted to reach it.
struct Relayed {
    server: Server,
    client: UdpTurn,
    peer: UdpSocket,
    relayed: SocketAddr,
}

fn relayed_to_loopback_peer() -> Relayed {
    let server = Server::start(&[]);
    let mut client = UdpTurn::rest(&server, "alice");
    let relayed = client.allocate().expect_success("Allocate").relayed();
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    client
        .create_permission(peer.local_addr().unwrap())
        .expect_success("CreatePermission for the loopback peer");
    Relayed {
        server,
        client,
        peer,
        relayed,
    }
}

/// The payload of the next datagram the peer gets from the relay within `wait`.
fn peer_receives(r: &Relayed, wait: Duration) -> Option<Vec<u8>> {
    let (data, from) = recv_from(&r.peer, wait)?;
    assert_eq!(
        from, r.relayed,
        "datagram from somewhere other than the relay"
    );
    Some(data)
}

/// RFC 8656 §8.2: "If the server receives a Refresh Request with a REQUESTED-ADDRESS-FAMILY
/// attribute and the attribute value does not match the address family of the allocation,
/// the server MUST reply with a 443". The request also carries LIFETIME 0: nothing may be
/// deleted, and the allocation relays both ways afterwards.
#[test]
fn refresh_with_a_mismatched_family_is_443_and_the_allocation_still_relays() {
    let mut r = relayed_to_loopback_peer();
    let case = Case {
        what: "Refresh: REQUESTED-ADDRESS-FAMILY IPv6 on IPv4, LIFETIME 0",
        attrs: &|w, _| {
            w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
                .unwrap();
            w.add_attribute(&Lifetime::new(0)).unwrap();
        },
        code: 443,
        coturn_differs: false,
    };
    check(r.client.request(REFRESH, case.attrs), &case);

    r.client
        .send_indication(r.peer.local_addr().unwrap(), b"still here");
    let got = peer_receives(&r, RESPONSE_TIMEOUT);
    assert_eq!(
        got.as_deref(),
        Some(&b"still here"[..]),
        "the allocation no longer relays to the peer after the 443"
    );
    r.peer.send_to(b"and back", r.relayed).unwrap();
    let data = r
        .client
        .recv(RESPONSE_TIMEOUT)
        .expect("no Data indication from the allocation after the 443");
    let msg = Message::from_bytes(&data).expect("Data indication parses");
    assert_eq!(msg.attribute::<Data>().unwrap().data(), b"and back");

    r.client
        .request(REFRESH, &|w, _| {
            w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV4))
                .unwrap();
        })
        .expect_success("Refresh naming the allocation's own family");
}

/// RFC 8489 §6.3.2: "If the indication contains unknown comprehension-required attributes,
/// the indication is discarded". The peer is permitted, so the same Send without that
/// attribute is relayed; it is sent after the bad one on the same socket and must be the
/// first datagram the peer sees.
#[test]
fn send_with_an_unknown_comprehension_required_attribute_is_not_relayed() {
    let r = relayed_to_loopback_peer();
    let peer = r.peer.local_addr().unwrap();
    let send = |payload: &[u8], extra: Option<u16>| {
        let mut w = Message::builder_indication(SEND, MessageWriteVec::new());
        let tid = w.transaction_id();
        w.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        w.add_attribute(&Data::new(payload)).unwrap();
        if let Some(atype) = extra {
            add_raw(&mut w, atype, &[1, 2, 3, 4]);
        }
        w.add_fingerprint().unwrap();
        r.client.send_raw(&w.finish());
    };
    send(b"must not arrive", Some(UNKNOWN_REQUIRED));
    // An unknown comprehension-optional attribute is ignored (RFC 8489 §6.3).
    send(b"optional attribute", Some(0x8031));
    send(b"plain", None);
    let first = peer_receives(&r, RESPONSE_TIMEOUT);
    let second = peer_receives(&r, RESPONSE_TIMEOUT);
    let shown = |d: &Option<Vec<u8>>| d.as_ref().map(|d| String::from_utf8_lossy(d).into_owned());
    eprintln!("peer got {:?} then {:?}", shown(&first), shown(&second));
    if against_coturn() && first.as_deref() == Some(&b"must not arrive"[..]) {
        eprintln!(
            "  COTURN DIFFERS: relays a Send with an unknown comprehension-required attribute"
        );
        return;
    }
    assert_eq!(
        (shown(&first), shown(&second)),
        (Some("optional attribute".into()), Some("plain".into())),
        "the Send with attribute 0x0031 was relayed, or a valid one was not"
    );
    if !against_coturn() {
        let metric = "turnpike_dropped_packets_total{reason=\"unknown_attribute\"}";
        let deadline = Instant::now() + Duration::from_secs(2);
        let counted = loop {
            let counted = metric_sum(&metrics(&r.server), metric);
            if counted >= 1.0 || Instant::now() > deadline {
                break counted;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(counted, 1.0, "{metric}");
    }
}

/// The default deny list over the real daemon (no `--allow-peer`): a CreatePermission
/// naming one address of every row of docs/SECURITY.md "Peer deny list" gets 403, and
/// IPv6 forms carrying a public IPv4 address (NAT64 `64:ff9b::8.8.8.8`, 6to4, Teredo,
/// ISATAP) succeed. Nothing is sent to any of them.
#[test]
fn peer_deny_list_covers_special_purpose_ranges_and_ipv6_forms() {
    if against_coturn() {
        eprintln!("turnpike's deny-list policy: not compared with coturn");
        return;
    }
    let mut args = default_args_without(&["--allow-peer"]);
    args.extend(["--relay-ip".to_string(), "::1".to_string()]);
    let server = Server::start_raw(&args);
    let mut v4 = UdpTurn::rest(&server, "alice");
    v4.allocate().expect_success("IPv4 Allocate");
    let mut v6 = UdpTurn::rest(&server, "bob");
    v6.request(ALLOCATE, &|w, t| {
        udp_transport(w, t);
        w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
            .unwrap();
    })
    .expect_success("IPv6 Allocate");

    let denied = [
        "0.1.2.3",
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",
        "127.0.0.2", // 127.0.0.1 and ::1 are this server's relay IPs: see below
        "169.254.169.254",
        "172.16.0.1",
        "192.0.0.1",
        "192.0.0.8",
        "192.0.0.9",
        "192.0.0.10",
        "192.0.0.170",
        "192.0.0.171",
        "192.0.2.1",
        "192.31.196.1",
        "192.52.193.1",
        "192.88.99.1",
        "192.88.99.2",
        "192.168.1.1",
        "192.175.48.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::8.8.8.8",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:0:808:808",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::808:808",
        "100::1",
        "100:0:0:1::1",
        "2001:1::1",
        "2001:1::2",
        "2001:1::3",
        "2001:2::1",
        "2001:3::1",
        "2001:4:112::1",
        "2001:10::1",
        "2001:20::1",
        "2001:30::1",
        "2001:100::1",
        // Teredo: RFC 4380's example (client 192.0.2.45), client 10.0.0.1, server 10.0.0.1.
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        "2001:0:a00:1:8000:63bf:f7f7:f7f7",
        "2001:db8::1",
        "2002:7f00:1::1",
        "2002:a00:1::1",
        "2002:c0a8:101::1",
        "2620:4f:8000::1",
        "3fff::1",
        "5f00::1",
        "fc00::1",
        "fd00::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "1000::1",
        "4000::1",
        "8000::1",
        // ISATAP interface identifiers carrying 10.0.0.1 and 127.0.0.1 under a public prefix.
        "2606:4700::5efe:a00:1",
        "2606:4700::200:5efe:7f00:1",
    ];
    for ip in denied {
        let ip: IpAddr = ip.parse().unwrap();
        let client = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        let resp = client.create_permission(SocketAddr::new(ip, 3478));
        resp.expect_error(403, &format!("CreatePermission naming {ip}"));
    }
    // The server's own relay IPs (loopback here) may be permitted, permissions being per IP
    // (relay-to-relay); a channel to one of their ports outside the relay ports is 403.
    for (channel, ip) in [(0x4000, "127.0.0.1"), (0x4001, "::1")] {
        let ip: IpAddr = ip.parse().unwrap();
        let client = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        client
            .create_permission(SocketAddr::new(ip, 3478))
            .expect_success(&format!("CreatePermission naming the relay IP {ip}"));
        client
            .channel_bind(channel, SocketAddr::new(ip, 3478))
            .expect_error(403, &format!("ChannelBind to {ip}:3478, no relay port"));
    }
    let allowed = [
        "8.8.8.8",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        "2606:4700::200:5efe:808:808",
        "2001:4860::8888",
    ];
    for ip in allowed {
        let ip: IpAddr = ip.parse().unwrap();
        let client = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        client
            .create_permission(SocketAddr::new(ip, 3478))
            .expect_success(&format!("CreatePermission naming {ip}"));
    }
    eprintln!(
        "{} peers refused with 403, {} accepted (named only, nothing sent)",
        denied.len(),
        allowed.len()
    );
}
