//! Quotas, limits and hostile input, checked with raw STUN/TURN messages built with
//! `stun-types`/`turn-types` (RFC 8489, RFC 8656).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use stun_types::attribute::{
    AttributeStaticType, AttributeType, MessageIntegrity, MessageIntegritySha256, RawAttribute,
    UnknownAttributes, XorMappedAddress,
};
use stun_types::message::{MessageWriteExt, BINDING};
use turn_types::message::ALLOCATE;

use crate::harness::{
    default_args_without, rest_credentials, rest_password, unix_now, Server, REALM, SECRET,
};
use crate::stun_client::{
    build_request, channel_data, no_attrs, recv_from, stun_header, udp_transport, UdpTurn,
    RESPONSE_TIMEOUT,
};

/// How long to wait before concluding that a packet was dropped.
const SILENCE: Duration = Duration::from_millis(300);

/// A peer socket on 127.0.0.1.
fn peer_socket() -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind peer socket");
    let addr = sock.local_addr().unwrap();
    (sock, addr)
}

/// A Binding request answered with success: the server still works.
fn assert_binding_works(server: &Server, what: &str) {
    let client = UdpTurn::new(server.udp, "", "");
    let resp = client.unauthenticated(BINDING, &no_attrs);
    assert!(
        resp.is_success(),
        "{what}: Binding afterwards got {}",
        resp.describe()
    );
    let msg = resp.msg();
    let mapped = msg
        .attribute::<XorMappedAddress>()
        .expect("Binding success without XOR-MAPPED-ADDRESS")
        .addr(msg.transaction_id());
    assert_eq!(mapped, client.sock.local_addr().unwrap());
}

// ---- authentication (RFC 8489 §9.2) ----

#[test]
fn allocate_without_credentials_gets_401_with_realm_and_nonce() {
    let server = Server::start(&[]);
    let client = UdpTurn::rest(&server, "alice");
    let resp = client
        .unauthenticated(ALLOCATE, &udp_transport)
        .expect_error(401, "Allocate without credentials");
    assert_eq!(
        resp.realm().as_deref(),
        Some(REALM),
        "401 must carry the server's REALM (RFC 8489 §9.2.4)"
    );
    let nonce = resp
        .nonce()
        .expect("401 must carry a NONCE (RFC 8489 §9.2.4)");
    assert!(!nonce.is_empty(), "empty NONCE");
    assert!(
        !resp.has(MessageIntegrity::TYPE) && !resp.has(MessageIntegritySha256::TYPE),
        "a 401 to a request without credentials must not carry MESSAGE-INTEGRITY"
    );
}

#[test]
fn wrong_password_gets_401() {
    let server = Server::start(&[]);
    let (username, _) = rest_credentials(SECRET, "alice", 3600);
    let mut client = UdpTurn::new(server.udp, &username, "d3Jvbmcgd3Jvbmcgd3Jvbmc=");
    let resp = client.allocate();
    assert_eq!(
        resp.code(),
        Some(401),
        "Allocate with a wrong password: expected 401 (RFC 8489 §9.2.4), got {}",
        resp.describe()
    );
    assert_eq!(
        resp.realm().as_deref(),
        Some(REALM),
        "401 for a bad MESSAGE-INTEGRITY must carry REALM (RFC 8489 §9.2.4)"
    );
    assert!(
        resp.nonce().is_some(),
        "401 for a bad MESSAGE-INTEGRITY must carry NONCE (RFC 8489 §9.2.4)"
    );
}

#[test]
fn expired_rest_credential_gets_401() {
    let server = Server::start(&[]);
    let username = format!("{}:alice", unix_now() - 60);
    let password = rest_password(SECRET, &username);
    let mut client = UdpTurn::new(server.udp, &username, &password);
    let resp = client.allocate();
    assert_eq!(
        resp.code(),
        Some(401),
        "Allocate with a REST username that expired 60 s ago: expected 401, got {}",
        resp.describe()
    );
    // The same user with a valid expiry works: the 401 is about the expiry only.
    UdpTurn::rest(&server, "alice")
        .allocate()
        .expect_success("Allocate with an unexpired REST credential");
}

#[test]
fn stale_nonce_gets_438_then_retry_succeeds() {
    let server = Server::start(&["--nonce-lifetime-secs", "1"]);
    let mut client = UdpTurn::rest(&server, "alice");
    let old = client.fetch_nonce();
    std::thread::sleep(Duration::from_millis(2100));
    let resp = client.signed(ALLOCATE, &udp_transport, &old);
    assert_eq!(
        resp.code(),
        Some(438),
        "Allocate with a nonce older than its lifetime: expected 438 (RFC 8489 §9.2.4), got {}",
        resp.describe()
    );
    let fresh = resp.nonce().expect("438 must carry a new NONCE");
    assert_ne!(fresh, old, "438 carried the stale nonce again");
    assert_eq!(resp.realm().as_deref(), Some(REALM), "438 must carry REALM");
    let resp = client
        .signed(ALLOCATE, &udp_transport, &fresh)
        .expect_success("Allocate retried with the fresh nonce");
    let relayed = resp.relayed();
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
}

// ---- peer filtering (DESIGN.md security defaults; 403 Forbidden, RFC 8656 §10.2, §12.2) ----

fn server_without_allow_peer() -> Server {
    Server::start_raw(&default_args_without(&["--allow-peer"]))
}

#[test]
fn peer_on_loopback_without_allow_peer_gets_403() {
    let server = server_without_allow_peer();
    let mut client = UdpTurn::rest(&server, "alice");
    client.allocate().expect_success("Allocate");
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    // 127.0.0.1 is the relay IP: permissions are per IP, so it may be permitted
    // (relay-to-relay), but port 9 is no relay port.
    client
        .create_permission(loopback)
        .expect_success("CreatePermission for the relay IP 127.0.0.1");
    client
        .create_permission(SocketAddr::from((Ipv4Addr::new(127, 1, 2, 3), 9)))
        .expect_error(403, "CreatePermission for 127.1.2.3");
    client
        .channel_bind(0x4001, loopback)
        .expect_error(403, "ChannelBind 0x4001 to 127.0.0.1:9");

    // ::ffff:127.0.0.1 is 127.0.0.1: never allowed. On an IPv4 allocation the server may
    // also answer 443 (address family mismatch, RFC 8656 §10.2, §12.2).
    let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), 9);
    let resp = client.create_permission(mapped);
    eprintln!("CreatePermission for {mapped}: {}", resp.describe());
    assert!(
        matches!(resp.code(), Some(403 | 443)),
        "CreatePermission for {mapped}: expected 403 or 443, got {}",
        resp.describe()
    );
    let resp = client.channel_bind(0x4002, mapped);
    eprintln!("ChannelBind to {mapped}: {}", resp.describe());
    assert!(
        matches!(resp.code(), Some(403 | 443)),
        "ChannelBind to {mapped}: expected 403 or 443, got {}",
        resp.describe()
    );
    let resp = client.create_permission(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9));
    assert!(
        matches!(resp.code(), Some(403 | 443)),
        "CreatePermission for [::1]:9: expected 403 or 443, got {}",
        resp.describe()
    );
}

/// Relay-to-relay on a default peer policy: two clients each relaying to the other's relay
/// address (two relay-only WebRTC peers on one server) reach each other both ways, though
/// loopback is a denied range; the listener and the relay IP's other ports stay 403.
#[test]
fn two_clients_relay_to_each_other_without_allow_peer() {
    let server = server_without_allow_peer();
    let mut alice = UdpTurn::rest(&server, "alice");
    let mut bob = UdpTurn::rest(&server, "bob");
    let alice_relay = alice
        .allocate()
        .expect_success("alice's Allocate")
        .relayed();
    let bob_relay = bob.allocate().expect_success("bob's Allocate").relayed();
    alice
        .channel_bind(0x4000, bob_relay)
        .expect_success("alice's ChannelBind to bob's relay");
    bob.channel_bind(0x4001, alice_relay)
        .expect_success("bob's ChannelBind to alice's relay");
    let payload = |data: &[u8], channel: u16| -> Vec<u8> {
        assert_eq!(
            data[..2],
            channel.to_be_bytes(),
            "ChannelData on {channel:#x}"
        );
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        data[4..4 + len].to_vec()
    };
    for round in 0..3 {
        alice.send_channel_data(0x4000, format!("to bob {round}").as_bytes());
        let got = bob.recv(RESPONSE_TIMEOUT).expect("bob got alice's data");
        assert_eq!(payload(&got, 0x4001), format!("to bob {round}").as_bytes());
        bob.send_channel_data(0x4001, format!("to alice {round}").as_bytes());
        let got = alice.recv(RESPONSE_TIMEOUT).expect("alice got bob's data");
        assert_eq!(
            payload(&got, 0x4000),
            format!("to alice {round}").as_bytes()
        );
    }
    alice
        .channel_bind(0x4002, server.udp)
        .expect_error(403, "ChannelBind to the listener");
    let off_relay_ports = SocketAddr::new(bob_relay.ip(), 9);
    alice
        .channel_bind(0x4003, off_relay_ports)
        .expect_error(403, "ChannelBind to the relay IP's port 9");
}

/// Relay-to-relay reaches only relay sockets the server holds, not whatever else is bound in
/// the relay port range on the relay IP: a plain socket of another process there (a
/// resolver's query port in the ephemeral range, say) gets neither a channel nor a Send
/// indication, while clients on several workers still relay to each other's relays.
#[test]
fn a_foreign_socket_in_the_relay_range_is_no_peer() {
    // The kernel picks the foreign socket's port as it would a resolver's; the relay range
    // is a window around it (the server cannot bind that port: the test holds it).
    let foreign = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the foreign socket");
    let foreign_addr = foreign.local_addr().unwrap();
    let min = foreign_addr.port().saturating_sub(16).max(1024);
    let (min_port, max_port) = (min.to_string(), (min + 32).to_string());
    let mut args = default_args_without(&["--allow-peer"]);
    args.extend(
        [
            "--min-port",
            &min_port,
            "--max-port",
            &max_port,
            "--workers",
            "4",
        ]
        .map(String::from),
    );
    let server = Server::start_raw(&args);
    let mut alice = UdpTurn::rest(&server, "alice");
    let alice_relay = alice
        .allocate()
        .expect_success("alice's Allocate")
        .relayed();
    let relay_range = min..=min + 32;
    assert!(
        relay_range.contains(&alice_relay.port()) && relay_range.contains(&foreign_addr.port())
    );
    // Three more clients, so some are on another worker than Alice's.
    for (i, name) in ["bob", "carol", "dave"].into_iter().enumerate() {
        let mut other = UdpTurn::rest(&server, name);
        let relay = other.allocate().expect_success("Allocate").relayed();
        other
            .channel_bind(0x4000, alice_relay)
            .expect_success("ChannelBind to alice's relay");
        let channel = 0x4000 + i as u16;
        alice
            .channel_bind(channel, relay)
            .expect_success(&format!("alice's ChannelBind to {name}'s relay"));
        alice.send_channel_data(channel, name.as_bytes());
        let got = other
            .recv(RESPONSE_TIMEOUT)
            .unwrap_or_else(|| panic!("{name} got nothing"));
        assert!(
            got.starts_with(&channel_data(0x4000, name.as_bytes())),
            "{name}'s ChannelData: {got:?}"
        );
    }
    alice
        .channel_bind(0x4010, foreign_addr)
        .expect_error(403, "ChannelBind to a foreign socket in the relay range");
    // Alice holds a permission for 127.0.0.1 (from her channels): only the peer check stands
    // between her Send indication and the foreign socket.
    alice.send_indication(foreign_addr, b"spoofed answer");
    assert_eq!(
        recv_from(&foreign, SILENCE),
        None,
        "a Send indication reached the foreign socket"
    );
}

#[test]
fn peer_in_10_0_0_0_gets_403() {
    let server = server_without_allow_peer();
    let mut client = UdpTurn::rest(&server, "alice");
    client.allocate().expect_success("Allocate");
    for ip in [
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 255, 255, 254),
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::new(172, 16, 0, 1),
        Ipv4Addr::new(169, 254, 169, 254),
    ] {
        client
            .create_permission(SocketAddr::from((ip, 9)))
            .expect_error(403, &format!("CreatePermission for {ip}"));
    }
    client
        .channel_bind(0x4001, SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 9)))
        .expect_error(403, "ChannelBind to 10.0.0.1:9");
    // A public address is accepted: the 403s are about the peer, not the request.
    client
        .create_permission(SocketAddr::from((Ipv4Addr::new(8, 8, 8, 8), 9)))
        .expect_success("CreatePermission for 8.8.8.8");
}

// ---- quotas (RFC 8656 §7.2) ----

#[test]
fn user_quota_gets_486() {
    let server = Server::start(&["--max-allocations-per-user", "2"]);
    let (username, password) = rest_credentials(SECRET, "quota-user", 3600);
    let mut a = UdpTurn::new(server.udp, &username, &password);
    let mut b = UdpTurn::new(server.udp, &username, &password);
    let mut c = UdpTurn::new(server.udp, &username, &password);
    a.allocate().expect_success("first allocation");
    b.allocate().expect_success("second allocation");
    c.allocate()
        .expect_error(486, "third allocation of a user limited to 2");
    // Another user is not affected.
    UdpTurn::rest(&server, "someone-else")
        .allocate()
        .expect_success("another user's allocation");
    a.refresh(0).expect_success("Refresh LIFETIME 0 (delete)");
    c.allocate()
        .expect_success("allocation after the user freed one");
}

#[test]
fn total_capacity_gets_508() {
    let server = Server::start(&["--max-allocations", "1"]);
    let mut a = UdpTurn::rest(&server, "alice");
    a.allocate().expect_success("first allocation");
    UdpTurn::rest(&server, "bob")
        .allocate()
        .expect_error(508, "second allocation with --max-allocations 1");
    a.refresh(0).expect_success("Refresh LIFETIME 0 (delete)");
    UdpTurn::rest(&server, "bob")
        .allocate()
        .expect_success("allocation after the only one was deleted");
}

// ---- allocation mismatch (RFC 8656 §7.2, §8) ----

#[test]
fn second_allocate_on_same_5tuple_gets_437() {
    let server = Server::start(&[]);
    let mut client = UdpTurn::rest(&server, "alice");
    client.allocate().expect_success("first Allocate");
    client
        .allocate()
        .expect_error(437, "second Allocate (new transaction) on the same 5-tuple");
}

#[test]
fn refresh_without_allocation_gets_437() {
    let server = Server::start(&[]);
    let mut client = UdpTurn::rest(&server, "alice");
    client
        .refresh(600)
        .expect_error(437, "Refresh without an allocation");
}

// ---- comprehension-required attributes (RFC 8489 §6.3.1, §14.13) ----

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let server = Server::start(&[]);
    let client = UdpTurn::new(server.udp, "", "");
    let required = AttributeType::new(0x0031);
    let resp = client.unauthenticated(BINDING, &move |w, _| {
        w.add_attribute(&RawAttribute::new(required, &[1, 2, 3, 4]))
            .unwrap();
    });
    assert_eq!(
        resp.code(),
        Some(420),
        "Binding with unknown comprehension-required attribute 0x0031: expected 420, got {}",
        resp.describe()
    );
    let msg = resp.msg();
    let unknown = msg
        .attribute::<UnknownAttributes>()
        .expect("420 must carry UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1, §14.13)");
    assert!(
        unknown.has_attribute(required),
        "UNKNOWN-ATTRIBUTES does not list 0x0031: {unknown}"
    );

    let optional = AttributeType::new(0x8031);
    let resp = client.unauthenticated(BINDING, &move |w, _| {
        w.add_attribute(&RawAttribute::new(optional, &[1, 2, 3, 4]))
            .unwrap();
    });
    assert!(
        resp.is_success(),
        "Binding with unknown comprehension-optional attribute 0x8031: expected success, got {}",
        resp.describe()
    );
}

// ---- malformed input ----

/// A deterministic pseudo-random byte stream (xorshift).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn malformed_packets_do_not_crash() {
    let mut server = Server::start(&[]);
    let client = UdpTurn::new(server.udp, "", "");
    let binding = build_request(BINDING, &no_attrs, None);
    let allocate = build_request(ALLOCATE, &udp_transport, None);

    let mut packets: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", Vec::new()),
        ("one byte", vec![0x00]),
        ("truncated header", binding[..10].to_vec()),
        ("header only, length 8", stun_header(0x0001, 8, [7; 12])),
        ("length not a multiple of 4", {
            let mut p = stun_header(0x0001, 3, [8; 12]);
            p.extend_from_slice(&[0, 0, 0]);
            p
        }),
        ("wrong magic cookie", {
            let mut p = binding.clone();
            p[4] ^= 0xff;
            p
        }),
        ("garbage 0xff", vec![0xff; 100]),
        ("garbage pseudo-random", pseudo_random(1, 300)),
        ("oversized STUN", {
            let mut p = stun_header(0x0003, 1380, [9; 12]);
            p.extend(pseudo_random(2, 1380));
            p
        }),
        ("oversized, length field lies", {
            let mut p = stun_header(0x0001, 0xfffc, [10; 12]);
            p.extend(pseudo_random(3, 1380));
            p
        }),
        ("attribute length past the end", {
            let mut p = stun_header(0x0001, 8, [11; 12]);
            // SOFTWARE claiming 100 bytes with only 4 present.
            p.extend_from_slice(&[0x80, 0x22, 0x00, 0x64, b'a', b'b', b'c', b'd']);
            p
        }),
        ("attribute header cut in half", {
            let mut p = stun_header(0x0003, 4, [12; 12]);
            p.extend_from_slice(&[0x00, 0x19, 0x00, 0x04]);
            p
        }),
        ("XOR-PEER-ADDRESS with bad family", {
            let mut p = stun_header(0x0008, 12, [13; 12]);
            p.extend_from_slice(&[0x00, 0x12, 0x00, 0x08, 0x00, 0x07, 0x12, 0x34]);
            p.extend_from_slice(&[1, 2, 3, 4]);
            p
        }),
        ("ERROR-CODE in a request, too short", {
            let mut p = stun_header(0x0001, 8, [14; 12]);
            p.extend_from_slice(&[0x00, 0x09, 0x00, 0x02, 0x04, 0x01, 0, 0]);
            p
        }),
        ("bad FINGERPRINT", {
            let mut p = binding.clone();
            let last = p.len() - 1;
            p[last] ^= 0x5a;
            p
        }),
        ("MESSAGE-INTEGRITY of wrong length", {
            let mut p = stun_header(0x0003, 12, [15; 12]);
            p.extend_from_slice(&[0x00, 0x08, 0x00, 0x08]);
            p.extend_from_slice(&[0; 8]);
            p
        }),
        ("a response sent to the server", {
            let mut p = binding.clone();
            p[1] = 0x01;
            p[0] = 0x01;
            p
        }),
        ("ChannelData, length past the end", {
            let mut p = vec![0x40, 0x00, 0xff, 0xff];
            p.extend_from_slice(&[0; 16]);
            p
        }),
        ("ChannelData header only", vec![0x40, 0x01, 0x00, 0x00]),
        (
            "ChannelData, reserved channel 0x8000",
            channel_data(0x8000, b"x"),
        ),
        ("Allocate, truncated by one byte", {
            let mut p = allocate.clone();
            p.pop();
            p
        }),
    ];
    for seed in 0..50u64 {
        let mut p = stun_header(0x0001 + (seed as u16 % 12), 0, [seed as u8; 12]);
        let body = pseudo_random(seed + 100, 4 * (seed as usize % 40));
        p[2..4].copy_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend(body);
        packets.push(("random attributes", p));
    }

    // Whatever the server answers to the malformed packets is skipped; after each one a
    // Binding from the same socket must still be answered, which names the culprit.
    let probe = |what: &str| {
        let resp = client
            .try_transact(&build_request(BINDING, &no_attrs, None), RESPONSE_TIMEOUT)
            .unwrap_or_else(|| panic!("server stopped answering after: {what}"));
        assert!(
            resp.is_success(),
            "Binding after {what}: got {}",
            resp.describe()
        );
    };
    for (what, packet) in &packets {
        client.send_raw(packet);
        probe(what);
    }
    // All of them again in one burst.
    for (_, packet) in &packets {
        client.send_raw(packet);
    }
    probe("a burst of all malformed packets");
    std::thread::sleep(Duration::from_millis(100));
    assert!(server.is_running(), "server exited after malformed packets");
    assert_binding_works(&server, "after malformed packets");
    // Also from the socket that sent them.
    client
        .unauthenticated(BINDING, &no_attrs)
        .expect_success("Binding from the socket that sent the malformed packets");
    assert!(server.is_running(), "server exited");
}

/// RFC 8489 §6.3: a message whose FINGERPRINT is wrong fails the checks that make it a STUN
/// message and is silently discarded.
#[test]
fn bad_fingerprint_is_silently_discarded() {
    let server = Server::start(&[]);
    let client = UdpTurn::new(server.udp, "", "");
    let mut request = build_request(BINDING, &no_attrs, None);
    let last = request.len() - 1;
    request[last] ^= 0x5a;
    let resp = client.try_transact(&request, SILENCE);
    assert!(
        resp.is_none(),
        "Binding with a wrong FINGERPRINT was answered: {}",
        resp.map(|r| r.describe()).unwrap_or_default()
    );
    assert_binding_works(&server, "after a bad FINGERPRINT");
}

// ---- data path (RFC 8656 §11, §12) ----

#[test]
fn channel_data_relays_and_unbound_channel_is_dropped() {
    let server = Server::start(&[]);
    let (peer, peer_addr) = peer_socket();
    let mut client = UdpTurn::rest(&server, "alice");
    let relayed = client.allocate().expect_success("Allocate").relayed();
    client
        .channel_bind(0x4001, peer_addr)
        .expect_success("ChannelBind 0x4001");

    let payload = b"channel data payload";
    client.send_channel_data(0x4001, payload);
    let (data, from) =
        recv_from(&peer, RESPONSE_TIMEOUT).expect("peer received nothing on channel 0x4001");
    assert_eq!(
        from, relayed,
        "peer got the data from {from}, not the relay"
    );
    assert_eq!(data, payload, "payload changed on the way to the peer");

    let reply = b"peer reply";
    peer.send_to(reply, relayed).unwrap();
    let data = client
        .recv(RESPONSE_TIMEOUT)
        .expect("client received nothing back from the peer");
    assert!(data.len() >= 4, "short datagram from the server: {data:?}");
    let channel = u16::from_be_bytes([data[0], data[1]]);
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    assert_eq!(
        channel, 0x4001,
        "peer data must come back as ChannelData on 0x4001 (RFC 8656 §12.7), got {data:02x?}"
    );
    assert_eq!(len, reply.len(), "ChannelData length field");
    assert!(
        data.len() >= 4 + len,
        "ChannelData shorter than its length field"
    );
    assert_eq!(&data[4..4 + len], reply, "payload changed on the way back");

    client.send_channel_data(0x4002, b"unbound");
    assert!(
        recv_from(&peer, SILENCE).is_none(),
        "ChannelData on unbound channel 0x4002 reached the peer (RFC 8656 §12.6: discard)"
    );
    // The bound channel still works.
    client.send_channel_data(0x4001, payload);
    let (data, _) = recv_from(&peer, RESPONSE_TIMEOUT).expect("bound channel stopped working");
    assert_eq!(data, payload);
}

#[test]
fn send_indication_without_permission_is_dropped() {
    let server = Server::start(&[]);
    let (peer, peer_addr) = peer_socket();
    let mut client = UdpTurn::rest(&server, "alice");
    let relayed = client.allocate().expect_success("Allocate").relayed();

    client.send_indication(peer_addr, b"no permission");
    assert!(
        recv_from(&peer, SILENCE).is_none(),
        "Send indication without a permission reached the peer (RFC 8656 §11.2: discard)"
    );

    // With a permission the same indication goes through: the drop was about the permission.
    client
        .create_permission(peer_addr)
        .expect_success("CreatePermission");
    client.send_indication(peer_addr, b"with permission");
    let (data, from) =
        recv_from(&peer, RESPONSE_TIMEOUT).expect("Send indication with a permission was lost");
    assert_eq!(from, relayed);
    assert_eq!(data, b"with permission");
}

#[test]
fn bandwidth_cap_drops_excess() {
    let server = Server::start(&["--bandwidth-per-allocation", "10000"]);
    let (peer, peer_addr) = peer_socket();
    let mut client = UdpTurn::rest(&server, "alice");
    client.allocate().expect_success("Allocate");
    client
        .channel_bind(0x4001, peer_addr)
        .expect_success("ChannelBind 0x4001");

    const SENT: usize = 100;
    let payload = vec![0xab; 1000];
    for _ in 0..SENT {
        client.send_channel_data(0x4001, &payload);
    }
    let mut received = 0;
    while let Some((data, _)) = recv_from(&peer, SILENCE) {
        assert_eq!(data.len(), payload.len());
        received += 1;
    }
    eprintln!("bandwidth cap 10000 B/s: {received} of {SENT} 1000-byte packets relayed");
    assert!(
        received > 0,
        "nothing relayed at all: the cap should let some through"
    );
    assert!(
        received < 50,
        "{received} of {SENT} 1000-byte packets sent at once passed a 10000 B/s cap"
    );
}
