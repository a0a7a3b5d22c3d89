//! The client against turnpike's own sans-IO core, in process: every request the client
//! writes goes into `proto::Server::handle_client`, every answer back into
//! `Client::handle_input`, on a virtual clock. No sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun_types::attribute::AttributeStaticType;
use turnpike_proto::auth::{Credentials as Users, NonceKey, Password};
use turnpike_proto::server::{ClientAction, FiveTuple, PeerAction, Quotas, Server, ServerConfig};
use turnpike_proto::wire::{self, AttributeType, MessageClass, ALLOCATE, CREATE_PERMISSION};
use turnpike_proto::Transport as ServerTransport;

use super::*;

const SECRET: &str = "north";
const REALM: &str = "turnpike.test";
const UNIX: u64 = 1_700_000_000;
const CLIENT: &str = "198.51.100.1:4000";
const RELAY: &str = "192.0.2.1:50000";
const PEER: &str = "93.184.216.34:5000";

/// The tests' one reading of the clock: `Instant` has no constructor. Every later moment is
/// this one plus a test's own durations.
#[allow(
    clippy::disallowed_methods,
    reason = "a starting Instant; the client never reads the clock"
)]
fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server_config() -> ServerConfig {
    let users = Users {
        secrets: vec![Password(SECRET.into())],
        separator: ':',
        static_users: vec![("alice".into(), Password("wonderland".into()))],
    };
    ServerConfig::new(REALM, users, NonceKey::new([9; 32]))
}

fn rest() -> Credentials {
    Credentials::rest(SECRET, "bob", ':', UNIX, 3600)
}

/// A client and turnpike's core joined by a virtual network: datagrams, or over a stream
/// byte pipes cut into 3-byte reads and framed on each side.
struct Net {
    server: Server,
    client: Client,
    tuple: FiveTuple,
    now: Instant,
    unix: u64,
    out: Vec<u8>,
    /// Every request or frame the client put on the wire.
    sent: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    /// What the server relayed to peers: `(peer, payload)`.
    at_peers: Vec<(SocketAddr, Vec<u8>)>,
    /// Relayed data the client was handed: `(channel or None, peer or None, payload)`.
    received: Vec<(Option<u16>, Option<SocketAddr>, Vec<u8>)>,
    /// The server's and the client's stream framers (TCP only).
    framers: Option<(Framer, Framer)>,
}

impl Net {
    fn new(config: Config) -> Net {
        Net::with_server(config, server_config())
    }

    fn with_server(config: Config, server: ServerConfig) -> Net {
        let stream = config.transport == Transport::Stream;
        Net {
            server: Server::new(Arc::new(server), Arc::new(Quotas::new(10, 10)), [7; 32]),
            client: Client::new(config, [3; 32]),
            tuple: FiveTuple {
                client: addr(CLIENT),
                server: addr("192.0.2.1:3478"),
                transport: if stream {
                    ServerTransport::Tcp
                } else {
                    ServerTransport::Udp
                },
            },
            now: start(),
            unix: UNIX,
            out: vec![0; 70_000],
            sent: Vec::new(),
            events: VecDeque::new(),
            at_peers: Vec::new(),
            received: Vec::new(),
            framers: stream.then(|| (Framer::new(), Framer::new())),
        }
    }

    /// Delivers the client's outputs to the server, and its answers back, until quiet.
    fn run(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                Output::Transmit(bytes) => {
                    self.sent.push(bytes.clone());
                    self.send_to_server(&bytes);
                }
                Output::Event(event) => self.events.push_back(event),
            }
        }
    }

    fn send_to_server(&mut self, bytes: &[u8]) {
        let Some((framer, _)) = &mut self.framers else {
            return self.server_input(bytes);
        };
        let mut frames = Vec::new();
        for piece in bytes.chunks(3) {
            framer.extend(piece);
            while let Some(range) = framer.next_frame().expect("the client frames correctly") {
                frames.push(framer.data()[range].to_vec());
            }
        }
        for frame in frames {
            self.server_input(&frame);
        }
    }

    fn server_input(&mut self, bytes: &[u8]) {
        let (now, unix) = (self.now, self.unix);
        let reply = match self
            .server
            .handle_client(now, unix, self.tuple, bytes, &mut self.out)
        {
            ClientAction::Reply(n) => Some(n),
            ClientAction::Allocate(pending) => {
                let relays = [addr(RELAY)];
                Some(self.server.accept_allocation(
                    now,
                    unix,
                    pending,
                    &relays,
                    None,
                    &mut self.out,
                ))
            }
            ClientAction::Relay { peer, payload, .. } => {
                self.at_peers.push((peer, payload.to_vec()));
                None
            }
            ClientAction::Drop => None,
        };
        while self.server.poll_output().is_some() {}
        if let Some(n) = reply {
            let reply = self.out[..n].to_vec();
            self.send_to_client(&reply);
        }
    }

    fn send_to_client(&mut self, bytes: &[u8]) {
        let Some((_, framer)) = &mut self.framers else {
            return self.client_input(bytes);
        };
        let mut frames = Vec::new();
        for piece in bytes.chunks(3) {
            framer.extend(piece);
            while let Some(range) = framer.next_frame().expect("the server frames correctly") {
                frames.push(framer.data()[range].to_vec());
            }
        }
        for frame in frames {
            self.client_input(&frame);
        }
    }

    fn client_input(&mut self, bytes: &[u8]) {
        match self.client.handle_input(self.now, bytes) {
            Some(Received::ChannelData { channel, payload }) => {
                self.received.push((Some(channel), None, payload.to_vec()))
            }
            Some(Received::Data { peer, payload }) => {
                self.received.push((None, Some(peer), payload.to_vec()))
            }
            None => {}
        }
    }

    /// A datagram from `peer` to the relay, as the daemon's relay socket would pass it on.
    fn peer_sends(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut buf = vec![0; 4 + payload.len() + 4];
        buf[4..4 + payload.len()].copy_from_slice(payload);
        let action = self.server.handle_peer(
            self.now,
            addr(RELAY),
            peer,
            &mut buf,
            payload.len(),
            &mut self.out,
        );
        let frame = match action {
            Some(PeerAction::ChannelData { len, .. }) => {
                // Streams pad ChannelData (the worker writes the padding).
                let stream = self.framers.is_some();
                let padded = len + channel_data_padding(len, stream);
                buf[len..padded].fill(0);
                buf[..padded].to_vec()
            }
            Some(PeerAction::DataIndication { len, .. }) => self.out[..len].to_vec(),
            None => return,
        };
        self.send_to_client(&frame);
    }

    /// Runs `op` to its end.
    fn transact(&mut self, op: Op) -> Event {
        let id = self.client.start(self.now, op);
        self.run();
        let i = self
            .events
            .iter()
            .position(|e| e.id() == id)
            .expect("the transaction ended");
        self.events.remove(i).unwrap()
    }

    fn expect_answer(&mut self, op: Op) -> Answer {
        match self.transact(op) {
            Event::Answered { answer, .. } => answer,
            Event::Failed { method, error, .. } => panic!("{method}: {error}"),
        }
    }

    fn expect_success(&mut self, op: Op) -> Answer {
        let answer = self.expect_answer(op);
        let response = answer.response();
        assert!(response.is_success(), "{}", response.describe());
        answer
    }
}

fn allocate() -> Op {
    Op::Allocate(Allocate::default())
}

/// Whether a request carries `atype`.
fn carries(request: &[u8], atype: AttributeType) -> bool {
    Response::parse(request).unwrap().has(atype)
}

#[test]
fn a_udp_session_allocates_relays_both_ways_and_deletes() {
    let mut net = Net::new(Config::new(Transport::Udp, Some(rest())));
    let answer = net.expect_success(allocate());
    // RFC 8489 §9.2.4: unsigned first, the 401 supplies REALM and NONCE, then signed with a
    // new transaction id.
    assert_eq!(net.sent.len(), 2);
    assert!(!carries(&net.sent[0], wire::MessageIntegrity::TYPE));
    assert!(carries(&net.sent[1], wire::MessageIntegrity::TYPE));
    assert_ne!(&net.sent[0][8..20], &net.sent[1][8..20]);
    assert_eq!(net.client.realm(), Some(REALM));
    let response = answer.response();
    assert_eq!(response.relayed(), Some(addr(RELAY)));
    assert_eq!(response.relayed_all(), vec![addr(RELAY)]);
    assert_eq!(response.xor_mapped(), Some(addr(CLIENT)));
    assert_eq!(response.lifetime(), Some(600));

    // Signed from the start now: one request each.
    let peer = addr(PEER);
    net.expect_success(Op::CreatePermission(vec![peer]));
    net.expect_success(Op::ChannelBind {
        channel: 0x4000,
        peer,
    });
    assert_eq!(net.sent.len(), 4);
    assert!(carries(&net.sent[3], wire::MessageIntegrity::TYPE));

    let frame = net.client.channel_data(0x4000, b"to the peer");
    assert_eq!(frame.len(), 4 + 11, "no padding over UDP");
    net.send_to_server(&frame);
    let indication = net.client.send_indication(peer, b"sent");
    net.send_to_server(&indication);
    assert_eq!(
        net.at_peers,
        [(peer, b"to the peer".to_vec()), (peer, b"sent".to_vec())]
    );
    net.peer_sends(peer, b"back on the channel");
    let other = addr("93.184.216.34:6000");
    net.expect_success(Op::CreatePermission(vec![other]));
    net.peer_sends(other, b"back as an indication");
    assert_eq!(
        net.received,
        [
            (Some(0x4000), None, b"back on the channel".to_vec()),
            (None, Some(other), b"back as an indication".to_vec()),
        ]
    );

    net.expect_success(Op::Refresh { lifetime: Some(0) });
    assert_eq!(net.server.allocation_count(), 0);
    assert!(net.events.is_empty() && net.client.in_flight() == 0);
    assert_eq!(net.client.poll_timeout(), None);
}

#[test]
fn binding_is_answered_unsigned_with_the_reflexive_address() {
    let mut net = Net::new(Config::new(Transport::Udp, Some(rest())));
    net.expect_success(allocate());
    let answer = net.expect_success(Op::Binding);
    assert_eq!(answer.response().mapped(), Some(addr(CLIENT)));
    let binding = net.sent.last().unwrap();
    assert!(!carries(binding, wire::MessageIntegrity::TYPE));
    assert!(carries(binding, wire::Fingerprint::TYPE));
}

#[test]
fn a_stale_nonce_is_replaced_and_the_request_sent_again() {
    let mut net = Net::new(Config::new(Transport::Udp, Some(rest())));
    net.expect_success(allocate());
    let nonce = net.client.signer().unwrap().nonce().to_owned();
    // The nonce lifetime is 600 s (wall clock: the core checks Unix time).
    net.unix += 600;
    let before = net.sent.len();
    net.expect_success(Op::Refresh { lifetime: None });
    assert_eq!(net.sent.len() - before, 2, "the 438, then the retry");
    assert_ne!(net.client.signer().unwrap().nonce(), nonce);
}

#[test]
fn stale_nonces_end_the_transaction_after_the_retries() {
    // Nonces that are stale as soon as they are issued: every signed request gets 438.
    let server = ServerConfig {
        nonce_lifetime: Duration::ZERO,
        ..server_config()
    };
    let mut net = Net::with_server(Config::new(Transport::Udp, Some(rest())), server);
    let event = net.transact(allocate());
    assert!(
        matches!(
            event,
            Event::Failed {
                error: Error::StaleNonce(3),
                ..
            }
        ),
        "{event:?}"
    );
    // Unsigned, then signed three times: two retries with the fresh nonces.
    assert_eq!(net.sent.len(), 4);
    assert_eq!(net.client.in_flight(), 0);
}

#[test]
fn wrong_credentials_get_the_servers_401_as_the_answer() {
    let wrong = Credentials::new(rest().username, "not the password");
    let mut net = Net::new(Config::new(Transport::Udp, Some(wrong)));
    let answer = net.expect_answer(allocate());
    assert_eq!(answer.response().error_code(), Some(401));
    assert_eq!(net.sent.len(), 2, "one signed attempt, no loop");
}

#[test]
fn without_credentials_the_401_fails_naming_the_realm() {
    let mut net = Net::new(Config::new(Transport::Udp, None));
    let event = net.transact(allocate());
    let Event::Failed { error, method, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!(method, ALLOCATE);
    assert_eq!(
        error,
        Error::NoCredentials {
            realm: REALM.into()
        }
    );
    assert_eq!(net.client.realm(), Some(REALM));
}

#[test]
fn sha256_is_negotiated_when_the_server_offers_it() {
    let mut config = Config::new(
        Transport::Udp,
        Some(Credentials::new("alice", "wonderland")),
    );
    config.key_choice = KeyChoice::PreferSha256;
    let mut net = Net::new(config);
    net.expect_success(allocate());
    let signed = &net.sent[1];
    assert!(carries(signed, wire::PASSWORD_ALGORITHM));
    assert!(carries(signed, wire::PASSWORD_ALGORITHMS));
    assert!(carries(signed, wire::MessageIntegritySha256::TYPE));
    assert!(!carries(signed, wire::MessageIntegrity::TYPE));
    let signer = net.client.signer().unwrap();
    assert!(signer.is_negotiated());
    assert_eq!(
        signer.key(),
        &LongTermKey::new(PasswordAlgorithm::Sha256, "alice", REALM, "wonderland")
    );
    // The answers carry MESSAGE-INTEGRITY-SHA256 now, and verify with the SHA-256 key.
    let answer = net.expect_success(Op::CreatePermission(vec![addr(PEER)]));
    assert!(answer.response().has(wire::MessageIntegritySha256::TYPE));
}

#[test]
fn md5_is_kept_when_asked_even_though_sha256_is_offered() {
    let mut net = Net::new(Config::new(Transport::Udp, Some(rest())));
    net.expect_success(allocate());
    assert!(!carries(&net.sent[1], wire::PASSWORD_ALGORITHM));
    assert!(!net.client.signer().unwrap().is_negotiated());
}

#[test]
fn a_success_whose_integrity_does_not_verify_fails_the_transaction() {
    let mut net = Net::new(Config::new(Transport::Udp, Some(rest())));
    net.expect_success(allocate());
    let id = net.client.start(net.now, Op::Refresh { lifetime: None });
    let Some(Output::Transmit(request)) = net.client.poll_output() else {
        panic!("no request")
    };
    let tid = Response::parse(&request).unwrap().transaction_id();
    // A success for it, FINGERPRINT intact, signed with another key.
    let mut out = [0u8; 512];
    let forged = wire::Response::success(wire::REFRESH, tid, &mut out);
    let len = forged.finish_signed(&[0u8; 16], IntegrityAlgorithm::Sha1);
    assert!(net.client.handle_input(net.now, &out[..len]).is_none());
    let Some(Output::Event(Event::Failed {
        id: failed, error, ..
    })) = net.client.poll_output()
    else {
        panic!("no event")
    };
    assert_eq!((failed, error), (id, Error::BadIntegrity));
}

#[test]
fn answers_to_nothing_in_flight_and_other_methods_are_ignored() {
    let mut client = Client::new(Config::new(Transport::Udp, None), [1; 32]);
    let id = client.binding(start());
    let Some(Output::Transmit(request)) = client.poll_output() else {
        panic!()
    };
    let tid = Response::parse(&request).unwrap().transaction_id();
    let mut out = [0u8; 512];
    let len = wire::Response::success(CREATE_PERMISSION, tid, &mut out).finish();
    assert!(client.handle_input(start(), &out[..len]).is_none());
    let len = wire::Response::success(wire::BINDING, TransactionId::from(5), &mut out).finish();
    assert!(client.handle_input(start(), &out[..len]).is_none());
    assert!(client.poll_output().is_none());
    let len = wire::Response::success(wire::BINDING, tid, &mut out).finish();
    assert!(client.handle_input(start(), &out[..len]).is_none());
    assert!(matches!(
        client.poll_output(),
        Some(Output::Event(Event::Answered { id: answered, .. })) if answered == id
    ));
}

#[test]
fn udp_requests_are_retransmitted_with_doubling_waits_then_time_out() {
    let mut config = Config::new(Transport::Udp, None);
    config.max_transmits = 3;
    let mut client = Client::new(config, [1; 32]);
    let t0 = start();
    let ms = Duration::from_millis;
    let id = client.binding(t0);
    let Some(Output::Transmit(first)) = client.poll_output() else {
        panic!()
    };
    assert_eq!(client.poll_timeout(), Some(t0 + ms(500)));
    client.handle_timeout(t0 + ms(500) - Duration::from_nanos(1));
    assert!(client.poll_output().is_none());
    client.handle_timeout(t0 + ms(500));
    assert!(matches!(client.poll_output(), Some(Output::Transmit(b)) if b == first));
    // 500 ms, then 1 s, then 2 s after the last transmission.
    assert_eq!(client.poll_timeout(), Some(t0 + ms(1500)));
    client.handle_timeout(t0 + ms(1500));
    assert!(matches!(client.poll_output(), Some(Output::Transmit(b)) if b == first));
    assert_eq!(client.poll_timeout(), Some(t0 + ms(3500)));
    client.handle_timeout(t0 + ms(3500) - Duration::from_nanos(1));
    assert!(client.poll_output().is_none());
    client.handle_timeout(t0 + ms(3500));
    assert!(matches!(
        client.poll_output(),
        Some(Output::Event(Event::Failed { id: failed, error: Error::Timeout, .. })) if failed == id
    ));
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn the_deadline_cuts_the_retransmissions_short() {
    let mut config = Config::new(Transport::Udp, None);
    config.timeout = Duration::from_millis(800);
    let mut client = Client::new(config, [1; 32]);
    let t0 = start();
    client.binding(t0);
    let _ = client.poll_output();
    client.handle_timeout(t0 + Duration::from_millis(500));
    assert!(matches!(client.poll_output(), Some(Output::Transmit(_))));
    assert_eq!(client.poll_timeout(), Some(t0 + Duration::from_millis(800)));
    client.handle_timeout(t0 + Duration::from_millis(800));
    assert!(matches!(
        client.poll_output(),
        Some(Output::Event(Event::Failed {
            error: Error::Timeout,
            ..
        }))
    ));
}

#[test]
fn over_a_stream_a_request_is_sent_once_and_waits_for_the_deadline() {
    let mut client = Client::new(Config::new(Transport::Stream, None), [1; 32]);
    let t0 = start();
    client.binding(t0);
    assert!(matches!(client.poll_output(), Some(Output::Transmit(_))));
    assert_eq!(
        client.poll_timeout(),
        Some(t0 + Duration::from_millis(39_500))
    );
    client.handle_timeout(t0 + Duration::from_secs(39));
    assert!(client.poll_output().is_none());
}

#[test]
fn a_tcp_session_frames_padded_channel_data_both_ways_from_3_byte_reads() {
    let mut net = Net::new(Config::new(Transport::Stream, Some(rest())));
    net.expect_success(allocate());
    let peer = addr(PEER);
    net.expect_success(Op::CreatePermission(vec![peer]));
    net.expect_success(Op::ChannelBind {
        channel: 0x4001,
        peer,
    });
    let frame = net.client.channel_data(0x4001, b"odd");
    assert_eq!(
        frame,
        [0x40, 0x01, 0, 3, b'o', b'd', b'd', 0],
        "padded to four"
    );
    net.send_to_server(&frame);
    net.peer_sends(peer, b"reply");
    assert_eq!(net.at_peers, [(peer, b"odd".to_vec())]);
    assert_eq!(net.received, [(Some(0x4001), None, b"reply".to_vec())]);
    // Requests are never retransmitted over a stream.
    assert_eq!(net.sent.len(), 4);
}

#[test]
fn allocate_writes_every_attribute_it_is_given() {
    let mut client = Client::new(Config::new(Transport::Udp, None), [1; 32]);
    client.allocate(
        start(),
        Allocate {
            family: Some(wire::AddressFamily::IPV6),
            additional_family: Some(wire::AddressFamily::IPV4),
            even_port: Some(true),
            reservation_token: Some(0xfeed),
            lifetime: Some(1200),
            dont_fragment: true,
            ..Allocate::default()
        },
    );
    let Some(Output::Transmit(request)) = client.poll_output() else {
        panic!()
    };
    let msg = Response::parse(&request).unwrap();
    let m = msg.message();
    assert_eq!(
        m.attribute::<wire::RequestedTransport>()
            .unwrap()
            .protocol(),
        17
    );
    assert_eq!(
        m.attribute::<wire::RequestedAddressFamily>()
            .unwrap()
            .family(),
        wire::AddressFamily::IPV6
    );
    // IPv4 in ADDITIONAL-ADDRESS-FAMILY, which the codec's constructor refuses (400).
    let additional = m
        .raw_attribute(wire::AdditionalAddressFamily::TYPE)
        .unwrap();
    assert_eq!(&additional.value[..], [1, 0, 0, 0]);
    assert!(m.attribute::<wire::EvenPort>().unwrap().requested());
    assert_eq!(
        m.attribute::<wire::ReservationToken>().unwrap().token(),
        0xfeed
    );
    assert_eq!(msg.lifetime(), Some(1200));
    assert!(msg.has(wire::DontFragment::TYPE));
}

#[test]
fn the_request_builder_never_panics() {
    let mut request = Request::new(ALLOCATE, TransactionId::from(1));
    // The codec panics on these; the builder leaves them out.
    request
        .add(&wire::MessageIntegrity::new([0; 20]))
        .add(&wire::Fingerprint::new([0; 4]))
        .data(&vec![0; 70_000])
        .software(&"x".repeat(800));
    let signer = Signer::new(&"u".repeat(1000), "p", REALM, "n");
    let bytes = request.finish(Some(&signer));
    let msg = Response::parse(&bytes).unwrap();
    assert!(!msg.has(wire::Data::TYPE) && !msg.has(wire::Username::TYPE));
    assert!(msg.has(wire::MessageIntegrity::TYPE));
}

#[test]
fn a_signer_can_sign_the_ways_clients_get_it_wrong() {
    // SHA-256 key and MESSAGE-INTEGRITY-SHA256, but no PASSWORD-ALGORITHM: the server keys
    // it with MD5 (RFC 8489 §9.2.2) and refuses it.
    let users = server_config();
    let mut server = Server::new(Arc::new(users), Arc::new(Quotas::new(10, 10)), [7; 32]);
    let tuple = FiveTuple {
        client: addr(CLIENT),
        server: addr("192.0.2.1:3478"),
        transport: ServerTransport::Udp,
    };
    let nonce = NonceKey::new([9; 32]).issue(tuple.client, UNIX);
    let wrong = Signer::new("alice", "wonderland", REALM, &nonce)
        .key_algorithm(PasswordAlgorithm::Sha256)
        .integrity(IntegrityAlgorithm::Sha256);
    let right =
        Signer::new("alice", "wonderland", REALM, &nonce).integrity(IntegrityAlgorithm::Sha256);
    let mut out = vec![0; 2048];
    for (signer, allowed) in [(wrong, false), (right, true)] {
        let mut request = Request::new(ALLOCATE, TransactionId::from(9));
        request.requested_transport(17);
        let bytes = request.finish(Some(&signer));
        let action = server.handle_client(start(), UNIX, tuple, &bytes, &mut out);
        match action {
            ClientAction::Allocate(_) => assert!(allowed),
            ClientAction::Reply(n) => {
                assert!(!allowed);
                assert_eq!(Response::parse(&out[..n]).unwrap().error_code(), Some(401));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn data_path_framing_is_written_in_place() {
    let mut out = [0xAAu8; 16];
    assert_eq!(
        write_channel_data(0x4000, b"abcde", true, &mut out),
        Some(12)
    );
    assert_eq!(
        out[..12],
        [0x40, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]
    );
    assert_eq!(
        write_channel_data(0x4000, b"abcde", false, &mut out),
        Some(9)
    );
    assert_eq!(write_channel_data(0x4000, &[0; 13], false, &mut out), None);
    assert_eq!(channel_data_header(0x4001, 7), [0x40, 0x01, 0, 7]);

    // A Send indication written as prefix + payload + padding reads as one.
    let peer = addr(PEER);
    let payload = b"seven b";
    let prefix = send_indication_prefix(TransactionId::from(77), peer, payload.len() as u16);
    let mut send = prefix.clone();
    send.extend_from_slice(payload);
    send.resize(send.len() + channel_data_padding(payload.len(), true), 0);
    let msg = Response::parse(&send).unwrap();
    assert_eq!(msg.class(), MessageClass::Indication);
    assert_eq!(
        msg.message()
            .attribute::<wire::XorPeerAddress>()
            .unwrap()
            .addr(msg.transaction_id()),
        peer
    );
    assert_eq!(
        msg.message().attribute::<wire::Data>().unwrap().data(),
        payload
    );
}

#[test]
fn incoming_tells_responses_data_and_channel_data_apart() {
    let data = send_indication(TransactionId::from(1), addr(PEER), b"x");
    assert!(
        matches!(Incoming::parse(&data), Incoming::Other),
        "Send, not Data"
    );
    let mut out = [0u8; 128];
    let mut indication = wire::Response::indication(wire::DATA, TransactionId::from(2), &mut out);
    indication.add(&wire::XorPeerAddress::new(
        addr(PEER),
        TransactionId::from(2),
    ));
    indication.add(&wire::Data::new(b"payload"));
    let len = indication.finish();
    assert!(matches!(
        Incoming::parse(&out[..len]),
        Incoming::Data { peer, payload } if peer == addr(PEER) && payload == b"payload"
    ));
    assert!(matches!(
        Incoming::parse(&[0x40, 0x00, 0, 2, 7, 8, 0, 0]),
        Incoming::ChannelData {
            channel: 0x4000,
            payload: [7, 8]
        }
    ));
    assert!(matches!(
        Incoming::parse(&[0x40, 0x00, 0, 9, 7]),
        Incoming::Other
    ));
    assert!(matches!(Incoming::parse(&[0xFF; 24]), Incoming::Other));
    assert!(matches!(Incoming::parse(&[]), Incoming::Other));
}

#[test]
fn rest_credentials_come_from_the_servers_minter() {
    let credentials = Credentials::rest(SECRET, "bob", ':', UNIX, 60);
    assert_eq!(credentials.username, format!("{}:bob", UNIX + 60));
    assert_eq!(
        credentials.password,
        rest_password(SECRET, &credentials.username)
    );
    assert_eq!(
        (credentials.username.clone(), credentials.password.clone()),
        mint_rest_credential(SECRET, "bob", ':', UNIX, 60)
    );
    assert!(!format!("{credentials:?}").contains(&credentials.password));
    let signer = credentials.signer(REALM, "n");
    assert!(!format!("{signer:?}").contains(&credentials.password));
}

#[test]
fn huge_timeouts_are_cut_to_a_day_instead_of_overflowing() {
    let mut config = Config::new(Transport::Udp, None);
    config.timeout = Duration::MAX;
    config.rto = Duration::MAX;
    config.max_transmits = u32::MAX;
    let mut client = Client::new(config, [1; 32]);
    let t0 = start();
    client.binding(t0);
    assert!(matches!(client.poll_output(), Some(Output::Transmit(_))));
    let day = Duration::from_secs(24 * 3600);
    assert_eq!(client.poll_timeout(), Some(t0 + day));
    client.handle_timeout(t0 + day);
    assert!(matches!(
        client.poll_output(),
        Some(Output::Event(Event::Failed {
            error: Error::Timeout,
            ..
        }))
    ));
}
