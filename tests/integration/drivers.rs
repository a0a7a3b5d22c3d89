//! The I/O drivers under attack, over real sockets: one worker serving both address families
//! through its batched receive path, the largest datagrams on every path, and peer data that
//! cannot be framed for a stream client.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use stun_types::attribute::XorMappedAddress;
use stun_types::message::MessageWriteExt;
use stun_types::message::{Message, BINDING};
use turn_types::attribute::{Data, Lifetime, XorPeerAddress};
use turn_types::message::{ALLOCATE, DATA, REFRESH};

use crate::hardening::metrics;
use crate::harness::{rest_credentials, Server, SECRET};
use crate::stun_client::{
    build_request, channel_data, ipv6_relay, no_attrs, recv_from, stun_header, udp_transport, Resp,
    TcpTurn, UdpTurn,
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
        .request(ALLOCATE, &ipv6_relay)
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
    let tcp = server.tcp();
    let mut client = TcpTurn::rest(tcp, "stream");
    let relay = client
        .request(ALLOCATE, &ipv6_relay)
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

// ---------------------------------------------------------------------------------------
// Stream clients that misbehave
// ---------------------------------------------------------------------------------------

/// A TCP connection from `ip` that has had one Binding answered (so the server accepted it
/// and counts it as established).
fn bound_connection(server: SocketAddr, ip: Ipv4Addr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip.into(), 0).into()).unwrap();
    socket.connect_timeout(&server.into(), WAIT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tcp_binding(&mut stream).unwrap_or_else(|e| panic!("Binding on a connection from {ip}: {e}"));
    stream
}

/// One Binding over a stream; the mapped address.
fn tcp_binding(stream: &mut TcpStream) -> std::io::Result<SocketAddr> {
    let request = stun_header(0x0001, 0, [9; 12]);
    stream.write_all(&request)?;
    let mut header = [0u8; 20];
    stream.read_exact(&mut header)?;
    let mut message = header.to_vec();
    message.resize(
        20 + usize::from(u16::from_be_bytes([header[2], header[3]])),
        0,
    );
    stream.read_exact(&mut message[20..])?;
    Ok(mapped_address(&Resp(message)))
}

/// Waits up to `limit` for the server to close `stream` (EOF or reset); how long it took.
fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A connection that never authenticates is closed one minute after it opened however often
/// it sends a Binding (a Binding every 30 s kept one open forever).
#[test]
fn bindings_do_not_keep_an_unauthenticated_connection_open() {
    let server = Server::start(&[]);
    let mut stream = bound_connection(server.tcp(), Ipv4Addr::LOCALHOST);
    let opened = Instant::now();
    let mut last_answer = opened;
    while opened.elapsed() < Duration::from_secs(75) {
        std::thread::sleep(Duration::from_secs(4));
        match tcp_binding(&mut stream) {
            Ok(_) => last_answer = Instant::now(),
            Err(_) => break,
        }
    }
    let lifetime = last_answer.duration_since(opened);
    assert!(
        lifetime < Duration::from_secs(64),
        "Bindings were still answered {lifetime:?} after the connection opened"
    );
    assert!(
        lifetime >= Duration::from_secs(55),
        "closed after only {lifetime:?}, before the 60 s allowed without an allocation"
    );
    // It was closed for lack of an allocation; a new connection is welcome.
    bound_connection(server.tcp(), Ipv4Addr::LOCALHOST);
}

/// A frame trickled a byte at a time, after a first whole message, is cut off 10 s after its
/// first byte (a byte every 10 s kept a connection open indefinitely).
#[test]
fn a_trickled_frame_is_cut_off_at_the_frame_deadline() {
    let server = Server::start(&[]);
    let mut stream = bound_connection(server.tcp(), Ipv4Addr::LOCALHOST);
    let request = stun_header(0x0001, 0, [7; 12]);
    let started = Instant::now();
    let mut closed_after = None;
    for byte in request.iter().cycle().take(40) {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        if let Some(after) = wait_for_close(&mut stream, Duration::from_millis(800)) {
            closed_after = Some(started.elapsed().max(after));
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling connection was never closed");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(14)).contains(&closed_after),
        "trickled frame cut off after {closed_after:?}, expected about 10 s"
    );
}

/// A client that pipelines requests and never reads its answers is no longer read from once
/// a small queue is full: the server's memory stays flat (each held up to 1 MiB before), it
/// keeps answering others, and the answers that were queued are whole messages.
#[test]
fn clients_that_never_read_pin_little_memory() {
    let server = Server::start(&["--max-connections-per-source", "64"]);
    let tcp = server.tcp();
    let pid = server.child.id();
    let rss_before = crate::hardening::rss_kib(pid);
    let request = stun_header(0x0001, 0, [5; 12]);
    let burst: Vec<u8> = request.iter().copied().cycle().take(64 * 1024).collect();
    let mut hoarders = Vec::new();
    let mut written = 0usize;
    for _ in 0..16 {
        // A small receive window, so the kernel's buffers fill soon and what the server does
        // with the answers it can no longer send shows (with the default, autotuned buffers
        // absorb megabytes first).
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect_timeout(&tcp.into(), WAIT).unwrap();
        let mut stream: TcpStream = socket.into();
        stream.set_nonblocking(true).unwrap();
        // Bounded: at most 4 MiB of requests per connection, for at most 1 s.
        let until = Instant::now() + Duration::from_secs(1);
        for _ in 0..64 {
            match stream.write(&burst) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > until {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("writing requests: {e}"),
            }
        }
        hoarders.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = crate::hardening::rss_kib(pid);
    let text = metrics(&server);
    let buffered = crate::hardening::metric_sum(&text, "turnpike_stream_buffer_bytes");
    let handled = crate::hardening::metric_sum(&text, "turnpike_binding_requests");
    eprintln!(
        "16 clients that never read wrote {} KiB of Bindings (most of it sits in kernel socket \
         buffers); turnpike handled {handled} of them and holds {:.0} KiB for them; RSS \
         {rss_before} -> {rss_after} KiB",
        written / 1024,
        buffered / 1024.0
    );
    assert!(
        buffered > 0.0,
        "no answers queued in userspace: the kernel's buffers never filled, so this test \
         measured nothing"
    );
    // Per connection: a 16 KiB answer queue (grown by doubling: up to 32 KiB allocated) and
    // at most a whole frame of requests waiting (up to 128 KiB allocated). Before, 1 MiB of
    // answers each, plus what had been read.
    assert!(
        buffered <= 16.0 * 160.0 * 1024.0,
        "{:.0} KiB held in userspace for 16 clients that never read",
        buffered / 1024.0
    );
    // The server may still be working through what the kernel buffered: give it time.
    let mut other = TcpStream::connect_timeout(&tcp, WAIT).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tcp_binding(&mut other).expect("another client is still answered");
    // What was queued for a hoarder is a run of whole Binding responses.
    let hoarder = &mut hoarders[0];
    hoarder.set_nonblocking(false).unwrap();
    hoarder.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..100 {
        let mut header = [0u8; 20];
        hoarder.read_exact(&mut header).unwrap();
        let mut message = header.to_vec();
        message.resize(
            20 + usize::from(u16::from_be_bytes([header[2], header[3]])),
            0,
        );
        hoarder.read_exact(&mut message[20..]).unwrap();
        let resp = Resp(message);
        assert!(resp.is_success(), "answer {i}: {}", resp.describe());
    }
}

/// Four sources holding every slot of the total cap with connections they never use do not
/// lock out a fifth: its connection takes the place of one of theirs and allocates; an
/// allocated connection is never the one evicted.
#[test]
fn a_few_sources_cannot_hold_every_connection_slot() {
    let server = Server::start(&[
        "--max-connections",
        "200",
        "--max-connections-per-source",
        "64",
    ]);
    let tcp = server.tcp();
    let mut held = Vec::new();
    for source in 2..6u8 {
        for _ in 0..50 {
            held.push(bound_connection(tcp, Ipv4Addr::new(127, 0, 0, source)));
        }
    }
    let mut client = TcpTurn::rest(tcp, "late");
    client
        .allocate()
        .expect_success("Allocate with every slot held by four sources");
    // More unused connections: each evicts another unused one, never the allocated client.
    for _ in 0..20 {
        held.push(bound_connection(tcp, Ipv4Addr::new(127, 0, 0, 2)));
    }
    client
        .create_permission("127.0.0.1:9".parse().unwrap())
        .expect_success("CreatePermission on the allocated connection after more floods");
}

/// `accept` failing for want of descriptors does not strand the connections waiting in the
/// backlog: once descriptors are free again they are accepted without a new connection
/// arriving to wake the listener (before, they waited for the next one).
#[test]
fn connections_waiting_through_descriptor_exhaustion_are_accepted_afterwards() {
    let server = Server::start(&["--workers", "1", "--max-connections-per-source", "1000"]);
    let tcp = server.tcp();
    let pid = server.child.id();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 20;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
    let mut answered = Vec::new();
    let stranded = loop {
        assert!(answered.len() < 40, "{limit} descriptors never ran out");
        let mut stream = TcpStream::connect_timeout(&tcp, WAIT).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        match tcp_binding(&mut stream) {
            Ok(_) => answered.push(stream),
            Err(_) => break stream,
        }
    };
    eprintln!(
        "descriptors ran out after {} connections (limit {limit})",
        answered.len()
    );
    drop(answered.drain(..5));
    let mut stranded = stranded;
    stranded
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut header = [0u8; 20];
    stranded
        .read_exact(&mut header)
        .expect("the connection left in the backlog is answered once descriptors are free");
    assert_eq!(&header[..2], &[0x01, 0x01], "a Binding success response");
}

// ---------------------------------------------------------------------------------------
// Generated traffic through the whole worker loop
// ---------------------------------------------------------------------------------------

/// Property test over the real daemon: one worker gets bursts of generated datagrams from
/// IPv4 and IPv6 sources interleaved (so each `recvmmsg` batch mixes them): Bindings with
/// random transaction IDs and attributes, truncated and corrupted STUN, ChannelData on
/// random channels, random bytes of random lengths up to the largest datagram. Every
/// well-formed Binding must be answered with its own transaction ID and its sender's whole
/// address, nothing else may be answered, and the worker must keep serving.
/// `TURNPIKE_FUZZ_SEED` replays a run; `TURNPIKE_FUZZ_ROUNDS` makes it longer.
#[test]
fn generated_mixed_family_datagrams_through_the_worker_loop() {
    use rand::{Rng, RngCore, SeedableRng};
    let seed: u64 = std::env::var("TURNPIKE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("TURNPIKE_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    eprintln!("TURNPIKE_FUZZ_SEED={seed} TURNPIKE_FUZZ_ROUNDS={rounds}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let server = Server::start(DUAL_STACK_ONE_WORKER);
    let (v4_server, v6_server) = (listener(&server, false), listener(&server, true));
    let mut senders: Vec<UdpSocket> = (1..=4u8)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 0, i), 0)).unwrap())
        .collect();
    senders.extend((0..3).map(|_| UdpSocket::bind("[::1]:0").unwrap()));
    for s in &senders {
        s.set_nonblocking(true).unwrap();
    }
    let mut expected = std::collections::HashMap::new();
    let mut unexpected = Vec::new();
    let mut sent = 0;
    for round in 0..rounds {
        for _ in 0..48 {
            let which = rng.random_range(0..senders.len());
            let sender = &senders[which];
            let to = if sender.local_addr().unwrap().is_ipv6() {
                v6_server
            } else {
                v4_server
            };
            let mut txid = [0u8; 12];
            rng.fill_bytes(&mut txid);
            let datagram = match rng.random_range(0..6) {
                // A well-formed Binding, maybe with an unknown comprehension-optional
                // attribute: must be answered.
                0 | 1 => {
                    let mut m = stun_header(0x0001, 0, txid);
                    if rng.random_bool(0.5) {
                        let len = rng.random_range(0..64u16);
                        m.extend_from_slice(&0x8123u16.to_be_bytes());
                        m.extend_from_slice(&len.to_be_bytes());
                        m.extend((0..len.next_multiple_of(4)).map(|_| rng.random::<u8>()));
                        let body = (m.len() - 20) as u16;
                        m[2..4].copy_from_slice(&body.to_be_bytes());
                    }
                    expected.insert(txid, sender.local_addr().unwrap());
                    m
                }
                // A Binding whose length lies or is cut short.
                2 => {
                    let mut m = stun_header(0x0001, rng.random_range(1..2000), txid);
                    m.truncate(rng.random_range(0..=20));
                    m
                }
                // ChannelData on some channel, with no allocation behind it.
                3 => {
                    let len = rng.random_range(0..1500);
                    let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    channel_data(rng.random_range(0x4000..=0x7fff), &payload)
                }
                // Random bytes, now and then as large as a datagram can be.
                4 => {
                    let len = if rng.random_bool(0.1) {
                        rng.random_range(60_000..=65_507)
                    } else {
                        rng.random_range(0..600)
                    };
                    (0..len).map(|_| rng.random()).collect()
                }
                // A STUN header with random type and attributes (never a Binding request).
                _ => {
                    let mut m = stun_header(rng.random::<u16>() & 0x3eee | 0x0010, 0, txid);
                    let len = rng.random_range(0..200u16) & !3;
                    m.extend((0..len).map(|_| rng.random::<u8>()));
                    m[2..4].copy_from_slice(&len.to_be_bytes());
                    m
                }
            };
            if to.is_ipv6() && datagram.len() > 65_507 {
                continue;
            }
            sender.send_to(&datagram, to).unwrap();
            sent += 1;
        }
        // Collect the answers to this burst.
        let quiet_until =
            Instant::now() + Duration::from_millis(if round % 8 == 7 { 300 } else { 60 });
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < quiet_until {
            let mut got_any = false;
            for sender in &senders {
                while let Ok((n, _)) = sender.recv_from(&mut buf) {
                    got_any = true;
                    let resp = Resp(buf[..n].to_vec());
                    let txid: [u8; 12] = buf[8..20].try_into().unwrap();
                    match expected.remove(&txid) {
                        Some(from) if resp.is_success() => {
                            assert_eq!(
                                mapped_address(&resp),
                                from,
                                "seed {seed}: Binding answered with another address"
                            );
                            assert_eq!(sender.local_addr().unwrap(), from, "seed {seed}");
                        }
                        _ => unexpected.push(resp.describe()),
                    }
                }
            }
            if !got_any {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    eprintln!(
        "{sent} datagrams sent; {} Bindings unanswered",
        expected.len()
    );
    assert!(
        unexpected.is_empty(),
        "seed {seed}: answers to datagrams that should have been dropped: {unexpected:?}"
    );
    assert!(
        expected.is_empty(),
        "seed {seed}: {} well-formed Bindings were not answered",
        expected.len()
    );
    let mut client = UdpTurn::rest(&server, "after-fuzz");
    client
        .allocate()
        .expect_success("Allocate after the generated traffic");
}

/// A network namespace of this test's own, with only a loopback device, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns(format!("tp{tag}{}", std::process::id()));
        ns.ip(&["netns", "add", &ns.0]);
        ns.ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2, as root): {e}"));
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.0, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// The per-source connection cap counts an IPv6 /64 as one source: addresses of one /64
/// share it, another /64 has its own (each address counted apart before, so a host with a
/// /64 had no cap). In a namespace of its own, whose loopback carries addresses of two /64s.
#[test]
fn an_ipv6_64_shares_one_per_source_connection_cap() {
    let ns = Netns::new("64");
    for addr in [
        "fd00:64::1",
        "fd00:64::2",
        "fd00:64::3",
        "fd00:64::4",
        "fd00:65::2",
    ] {
        ns.ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
    }
    let mut server = ns
        .command(env!("CARGO_BIN_EXE_turnpike"))
        .args([
            "run",
            "--listen",
            "[fd00:64::1]:3478",
            "--relay-ip",
            "fd00:64::1",
            "--api-listen",
            "[::1]:8080",
            "--auth-secret",
            SECRET,
            "--max-connections-per-source",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start turnpike in the namespace");
    // Each source opens a connection and holds it while the next ones try: a connection is
    // admitted if its Binding is answered. Python runs inside the namespace for the clients.
    let clients = r#"
import socket, struct, sys, time
def binding(src):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(2)
    s.connect(("fd00:64::1", 3478))
    s.sendall(struct.pack("!HHI", 1, 0, 0x2112A442) + b"x" * 12)
    try:
        ok = len(s.recv(20)) == 20
    except OSError:
        ok = False
    return s, ok
deadline = time.time() + 15
while True:
    try:
        socket.create_connection(("fd00:64::1", 3478), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("server not listening")
        time.sleep(0.1)
time.sleep(0.5)
held = []
for src in ["fd00:64::2", "fd00:64::3", "fd00:64::4", "fd00:65::2"]:
    s, ok = binding(src)
    held.append(s)
    print(src, "admitted" if ok else "refused")
"#;
    let out = ns
        .command("python3")
        .args(["-c", clients])
        .output()
        .expect("run the clients in the namespace");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            "fd00:64::2 admitted",
            "fd00:64::3 admitted",
            "fd00:64::4 refused",
            "fd00:65::2 admitted",
        ],
        "with a cap of 2 per source"
    );
}

/// Allocates over a stream and binds channel 0x4000 to a new loopback peer: the relayed
/// address and the peer's socket.
fn allocate_with_channel_to_a_peer(client: &mut TcpTurn) -> (SocketAddr, UdpSocket) {
    let relay = client
        .allocate()
        .expect_success("Allocate over TCP")
        .relayed();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .expect_success("ChannelBind over TCP");
    (relay, peer)
}

/// The largest frames on the stream path: ChannelData a TCP client sends with the largest
/// payload an IPv4 peer can take arrives whole, one with the largest payload ChannelData can
/// carry is refused by the kernel and counted, and the largest peer datagram reaches the
/// client as one padded frame; the allocation keeps relaying throughout.
#[test]
fn largest_frames_on_the_stream_path_are_relayed_whole_or_counted() {
    let server = Server::start(&[]);
    let mut client = TcpTurn::rest(server.tcp(), "stream-big");
    let (relay, peer) = allocate_with_channel_to_a_peer(&mut client);
    let largest_v4 = 65_507;
    let payload: Vec<u8> = (0..largest_v4).map(|i| (i % 251) as u8).collect();

    client.send_channel_data(0x4000, &payload);
    let (got, from) = recv_from(&peer, WAIT).expect("the peer gets the largest datagram");
    assert_eq!((got.len(), from), (largest_v4, relay));
    assert!(got == payload, "payload changed on the way to the peer");

    let before = crate::hardening::metric_sum(&metrics(&server), "turnpike_send_errors");
    client.send_channel_data(0x4000, &vec![2u8; 65_535]);
    let after =
        crate::hardening::wait_for_metric(&server, "turnpike_send_errors", before + 1.0, WAIT);
    assert_eq!(
        after,
        before + 1.0,
        "a datagram too large for UDP is counted"
    );

    peer.send_to(&payload, relay).unwrap();
    let frame = client
        .read_frame()
        .expect("the client gets the largest peer datagram");
    assert_eq!(frame, channel_data(0x4000, &payload));
    client.send_channel_data(0x4000, b"still relaying");
    let (got, _) = recv_from(&peer, WAIT).expect("relaying after the oversized frame");
    assert_eq!(got, b"still relaying");
}

/// A TCP client with an allocation whose downlink stalls while a peer floods it: relayed data
/// fills its queue only up to a reserve, its Refresh waits unread until it reads again, and
/// then the answer comes (before, it was dropped behind the media, and over TCP nobody
/// retransmits a request).
#[test]
fn a_stalled_stream_client_still_gets_the_answer_to_its_refresh() {
    let server = Server::start(&[]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&server.tcp().into(), WAIT).unwrap();
    let (username, password) = rest_credentials(SECRET, "stalled", 3600);
    let mut client = TcpTurn::on(socket.into(), &username, &password);
    let (relay, peer) = allocate_with_channel_to_a_peer(&mut client);
    // More than the kernel's buffers and the 256 KiB queue hold, at most 2 s, in frames of
    // 1 KiB that fill the queue to the last byte.
    let media = [7u8; 1020];
    let until = Instant::now() + Duration::from_secs(3);
    for i in 0..6000 {
        if Instant::now() > until {
            break;
        }
        peer.send_to(&media, relay).unwrap();
        if i % 16 == 15 {
            // Paced, so the relay socket's receive buffer does not overflow first.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let queued = crate::hardening::metric_sum(&metrics(&server), "turnpike_stream_buffer_bytes");
    assert!(
        queued >= 200.0 * 1024.0,
        "only {queued} bytes queued: the stall never filled the queue, so this measured nothing"
    );
    let refresh = build_request(
        REFRESH,
        &|w, _| {
            w.add_attribute(&Lifetime::new(600)).unwrap();
        },
        Some((&username, &password, &client.nonce().unwrap())),
    );
    client.stream.write_all(&refresh).unwrap();
    let txid = &refresh[8..20];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut media_frames, mut answer) = (0, None);
    while answer.is_none() && Instant::now() < deadline {
        let frame = client.read_frame().expect("frames after the stall");
        if frame[0] >= 0x40 {
            media_frames += 1;
        } else if &frame[8..20] == txid {
            answer = Some(Resp(frame));
        }
    }
    let answer = answer
        .unwrap_or_else(|| panic!("no answer to the Refresh after {media_frames} relayed frames"));
    assert!(answer.is_success(), "Refresh: {}", answer.describe());
    eprintln!("the Refresh answer came after {media_frames} relayed frames");
}

/// A TCP socket to `server` with a 4 KiB receive buffer, so what the server sends it backs up
/// into the server's queue soon (autotuned buffers would absorb megabytes first).
fn small_window_stream(server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&server.into(), WAIT).unwrap();
    socket.into()
}

/// `turnpike_stream_buffer_bytes` is kept as buffers grow, shrink and close rather than
/// summed over every connection: after stream clients holding every kind of buffer close
/// (ones that read their answers, ones that never read theirs, one whose relayed media backs
/// up), the gauge is back at its baseline, round after round. A connection whose bytes were
/// not taken off at close, or a change that was not counted, leaves it off zero for good.
#[test]
fn the_stream_buffer_gauge_returns_to_its_baseline_when_clients_close() {
    const GAUGE: &str = "turnpike_stream_buffer_bytes";
    let server = Server::start(&["--workers", "1"]);
    let tcp = server.tcp();
    assert_eq!(
        crate::hardening::wait_for_metric(&server, GAUGE, 0.0, WAIT),
        0.0,
        "no connection yet, yet stream buffers are counted"
    );
    let request = stun_header(0x0001, 0, [5; 12]);
    let burst: Vec<u8> = request.iter().copied().cycle().take(64 * 1024).collect();
    for round in 0..2 {
        // Clients that read their answer: their buffers stay allocated, nothing queued.
        let mut readers: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect_timeout(&tcp, WAIT).unwrap())
            .collect();
        for reader in &mut readers {
            reader.set_read_timeout(Some(WAIT)).unwrap();
            tcp_binding(reader).expect("a Binding over TCP");
        }
        // Clients that pipeline Bindings and never read: answers stay queued (bounded: at most
        // 1 MiB each, for at most 1 s).
        let mut hoarders = Vec::new();
        for _ in 0..4 {
            let mut stream = small_window_stream(tcp);
            stream.set_nonblocking(true).unwrap();
            let until = Instant::now() + Duration::from_secs(1);
            for _ in 0..16 {
                match stream.write(&burst) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("writing requests: {e}"),
                }
            }
            hoarders.push(stream);
        }
        // A client with a channel that stops reading while a peer sends to it: relayed data
        // stays queued (at most 1,000 datagrams of 1 KiB, paced).
        let (username, password) = rest_credentials(SECRET, &format!("gauge-{round}"), 3600);
        let mut stalled = TcpTurn::on(small_window_stream(tcp), &username, &password);
        let (relay, peer) = allocate_with_channel_to_a_peer(&mut stalled);
        for i in 0..1000 {
            peer.send_to(&[7u8; 1020], relay).unwrap();
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let held = loop {
            let held = crate::hardening::metric_sum(&metrics(&server), GAUGE);
            if held >= 64.0 * 1024.0 || Instant::now() > deadline {
                break held;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            held >= 64.0 * 1024.0,
            "round {round}: only {held} bytes buffered with 9 clients, 5 of them not reading: \
             nothing backed up, so this measured nothing"
        );
        drop((readers, hoarders, stalled, peer));
        let after = crate::hardening::wait_for_metric(&server, GAUGE, 0.0, Duration::from_secs(10));
        eprintln!("round {round}: {held} bytes buffered, {after} after every client closed");
        assert_eq!(
            after, 0.0,
            "round {round}: {after} bytes still counted after every stream client closed"
        );
    }
}
