//! The I/O drivers under attack, over real sockets: one worker serving both address families
//! through its batched receive path, the largest datagrams on every path, and peer data that
//! cannot be framed for a stream client.

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun_types::attribute::XorMappedAddress;
use stun_types::message::{Message, MessageWriteExt, BINDING};
use turn_types::attribute::{Data, RequestedAddressFamily, XorPeerAddress};
use turn_types::message::{ALLOCATE, DATA};
use turn_types::AddressFamily;

use crate::hardening::metrics;
use crate::harness::{rest_credentials, Server, SECRET};
use crate::stun_client::{
    channel_data, no_attrs, recv_from, udp_transport, Resp, TcpTurn, UdpTurn,
};

/// One worker listening on IPv4 and IPv6 loopback, relaying on both, loopback peers allowed.
const DUAL_STACK_ONE_WORKER: &[&str] = &[
    "--workers",
    "1",
    "--listen",
    "127.0.0.1:0",
    "--listen",
    "[::1]:0",
    "--relay-ip",
    "127.0.0.1",
    "--relay-ip",
    "::1",
    "--allow-peer",
    "127.0.0.0/8",
    "--allow-peer",
    "::1",
];

const WAIT: Duration = Duration::from_secs(2);

fn listener(server: &Server, ipv6: bool) -> SocketAddr {
    *server
        .udp_addrs
        .iter()
        .find(|a| a.is_ipv6() == ipv6)
        .unwrap_or_else(|| panic!("no UDP listener of that family: {:?}", server.udp_addrs))
}

fn mapped_address(resp: &Resp) -> SocketAddr {
    let msg = resp.msg();
    msg.attribute::<XorMappedAddress>()
        .unwrap_or_else(|e| panic!("no XOR-MAPPED-ADDRESS ({e:?}): {}", resp.describe()))
        .addr(msg.transaction_id())
}

fn binding(client: &UdpTurn) -> SocketAddr {
    let resp = client.unauthenticated(BINDING, &no_attrs);
    assert!(resp.is_success(), "Binding: {}", resp.describe());
    mapped_address(&resp)
}

/// Allocates with REQUESTED-ADDRESS-FAMILY IPv6 (RFC 6156): an IPv6 relay.
fn allocate_ipv6_relay(client: &mut UdpTurn) -> SocketAddr {
    let relay = client
        .request(ALLOCATE, &|w, tid| {
            udp_transport(w, tid);
            w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
                .unwrap();
        })
        .expect_success("Allocate with REQUESTED-ADDRESS-FAMILY IPv6")
        .relayed();
    assert!(relay.is_ipv6(), "asked for an IPv6 relay, got {relay}");
    relay
}

/// `turnpike_dropped_packets_total{reason="..."}`, polled until it reaches `want` (workers
/// publish their counters every 100 ms) or `WAIT` passes; returns the last value.
fn wait_for_dropped(server: &Server, reason: &str, want: f64) -> f64 {
    let label = format!("reason=\"{reason}\"");
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metrics(server)
            .lines()
            .find(|l| l.starts_with("turnpike_dropped_packets_total") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no turnpike_dropped_packets_total{{{label}}}"));
        if value == want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An IPv6 client's Binding right after IPv4 ones, on the same worker: the mapped address is
/// the client's whole address (it was `[::]` when the receive slots kept IPv4's address
/// length).
#[test]
fn ipv6_binding_after_ipv4_traffic_on_one_worker_maps_the_whole_address() {
    let server = Server::start(DUAL_STACK_ONE_WORKER);
    let v4 = UdpTurn::new(listener(&server, false), "", "");
    let v6 = UdpTurn::new_from(Ipv6Addr::LOCALHOST, listener(&server, true), "", "");
    for round in 0..5 {
        assert_eq!(binding(&v4), v4.sock.local_addr().unwrap(), "round {round}");
        assert_eq!(binding(&v6), v6.sock.local_addr().unwrap(), "round {round}");
    }
}

/// An IPv6 client's authenticated retry after IPv4 traffic: the nonce it got is bound to its
/// real address, so the signed request succeeds (it got 438 when the 401 went to a truncated
/// address).
#[test]
fn ipv6_client_authenticates_between_ipv4_requests() {
    let server = Server::start(DUAL_STACK_ONE_WORKER);
    let v4 = UdpTurn::new(listener(&server, false), "", "");
    let (username, password) = rest_credentials(SECRET, "v6-user", 3600);
    // IPv4 traffic before the challenge, then before the signed request.
    for v4_before_challenge in [true, false] {
        let mut v6 = UdpTurn::new_from(
            Ipv6Addr::LOCALHOST,
            listener(&server, true),
            &username,
            &password,
        );
        if v4_before_challenge {
            binding(&v4);
        }
        let nonce = v6.fetch_nonce();
        if !v4_before_challenge {
            binding(&v4);
        }
        let resp = v6.signed(ALLOCATE, &udp_transport, &nonce);
        assert!(
            resp.is_success(),
            "IPv6 Allocate signed with the nonce from its 401 (IPv4 traffic before the \
             challenge: {v4_before_challenge}): {}",
            resp.describe()
        );
    }
}

/// An IPv4 client with an IPv6 relay (RFC 6156), its own IPv4 requests interleaved with the
/// peer's datagrams: every datagram from the IPv6 peer reaches it (0 of 5 did when the relay
/// socket's source addresses were cut to IPv4's length and failed the permission check).
#[test]
fn ipv4_client_with_ipv6_relay_gets_every_peer_datagram_amid_its_own_traffic() {
    let server = Server::start(DUAL_STACK_ONE_WORKER);
    let mut client = UdpTurn::rest(&server, "mixed");
    let relay = allocate_ipv6_relay(&mut client);
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    client
        .create_permission(peer.local_addr().unwrap())
        .expect_success("CreatePermission for the IPv6 peer");
    let bystander = UdpTurn::new(server.udp, "", "");
    let mut delivered = 0;
    for i in 0..5u8 {
        binding(&bystander);
        peer.send_to(&[b'p', i], relay).unwrap();
        let Some(frame) = client.recv(WAIT) else {
            continue;
        };
        let msg = Message::from_bytes(&frame).expect("a STUN message from the server");
        assert_eq!(msg.method(), DATA);
        let data = msg.attribute::<Data>().expect("DATA");
        let from = msg
            .attribute::<XorPeerAddress>()
            .expect("XOR-PEER-ADDRESS")
            .addr(msg.transaction_id());
        assert_eq!(
            (data.data(), from),
            (&[b'p', i][..], peer.local_addr().unwrap())
        );
        delivered += 1;
    }
    assert_eq!(delivered, 5, "peer datagrams delivered to the client");
}

/// A peer datagram too large for a Data indication towards a TCP client (no channel) is
/// dropped and counted, never sent with a 16-bit length that wrapped: the client's next frame
/// is the small datagram after it, whole. Before, the wrapped length made the rest of the
/// peer's payload parse as frames, so a peer could inject, e.g., ChannelData for a channel
/// bound to another peer.
#[test]
fn oversized_peer_datagram_to_a_stream_client_is_dropped_not_wrapped() {
    let server = Server::start(&["--relay-ip", "::1", "--allow-peer", "::1"]);
    let tcp = server.ready["tcp"][0].as_str().unwrap().parse().unwrap();
    let mut client = TcpTurn::rest(tcp, "stream");
    let relay = client
        .request(ALLOCATE, &|w, tid| {
            udp_transport(w, tid);
            w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
                .unwrap();
        })
        .expect_success("Allocate over TCP with an IPv6 relay")
        .relayed();
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    client
        .create_permission(peer_addr)
        .expect_success("CreatePermission");
    // The largest UDP payload over IPv6, filled with forged ChannelData frames.
    let forged = channel_data(0x4000, b"forged");
    let big: Vec<u8> = forged.iter().copied().cycle().take(65_527).collect();
    assert_eq!(peer.send_to(&big, relay).unwrap(), big.len());
    peer.send_to(b"after", relay).unwrap();

    let frame = client
        .read_frame()
        .expect("a frame after the peer's datagrams");
    let msg = Message::from_bytes(&frame)
        .unwrap_or_else(|e| panic!("not a valid STUN message ({e:?}): {:02x?}", &frame[..20]));
    assert_eq!(msg.method(), DATA);
    assert_eq!(msg.attribute::<Data>().expect("DATA").data(), b"after");
    assert_eq!(
        msg.attribute::<XorPeerAddress>()
            .expect("XOR-PEER-ADDRESS")
            .addr(msg.transaction_id()),
        peer_addr
    );
    assert_eq!(wait_for_dropped(&server, "too_large", 1.0), 1.0);
}

/// The largest datagrams on each UDP path are relayed whole, and the ones that cannot fit
/// the next hop are dropped and counted while the allocation keeps working.
#[test]
fn largest_datagrams_on_every_udp_path_are_relayed_whole_or_counted() {
    let server = Server::start(&[]);
    let mut client = UdpTurn::rest(&server, "big");
    let relay = client.allocate().expect_success("Allocate").relayed();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    client
        .channel_bind(0x4000, peer_addr)
        .expect_success("ChannelBind");
    // The largest IPv4 UDP payload is 65,507 bytes; ChannelData takes 4 of them.
    let largest = 65_507 - 4;
    let payload: Vec<u8> = (0..largest).map(|i| i as u8).collect();

    client.send_channel_data(0x4000, &payload);
    let (got, from) = recv_from(&peer, WAIT).expect("the peer gets the largest ChannelData");
    assert_eq!((got.len(), from), (largest, relay));
    assert!(got == payload, "payload changed on the way to the peer");

    peer.send_to(&payload, relay).unwrap();
    let got = client
        .recv(WAIT)
        .expect("the client gets the largest peer datagram");
    assert_eq!(got, channel_data(0x4000, &payload));

    // Too big for ChannelData to an IPv4 client: the kernel refuses the send, which is
    // counted; the allocation lives on.
    let before = crate::hardening::metric_sum(&metrics(&server), "turnpike_send_errors");
    peer.send_to(&vec![1u8; 65_507], relay).unwrap();
    assert!(client.recv(Duration::from_millis(500)).is_none());
    let after =
        crate::hardening::wait_for_metric(&server, "turnpike_send_errors", before + 1.0, WAIT);
    assert_eq!(after, before + 1.0, "an oversized relay send is counted");
    peer.send_to(b"still here", relay).unwrap();
    assert_eq!(
        client
            .recv(WAIT)
            .expect("relaying after the oversized datagram"),
        channel_data(0x4000, b"still here")
    );
    // Oversized on the way in: a 65,507-byte datagram that is neither STUN nor ChannelData.
    client.send_raw(&vec![0xffu8; 65_507]);
    assert_eq!(binding(&client), client.sock.local_addr().unwrap());
}
