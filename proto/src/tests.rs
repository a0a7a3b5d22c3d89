//! Whole-transaction tests of the sans-IO core: a fake client, a virtual clock, and the RFC
//! 5769 vectors. No sockets; time moves only when a test moves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun_types::attribute::{Attribute, AttributeStaticType, RawAttribute};
use stun_types::message::{MessageWriteVec, ShortTermCredentials};

use super::auth::{rest_password, Credentials, LongTermKey, NonceKey, Password, PasswordAlgorithm};
use super::peer_filter::PeerFilter;
use super::server::{CHANNEL_LIFETIME, PERMISSION_LIFETIME};
use super::wire::*;
use super::*;

/// The tests' one reading of the clock: `Instant` has no constructor. Every later moment is
/// this one plus a test's own durations.
#[allow(
    clippy::disallowed_methods,
    reason = "a starting Instant; the core never reads the clock"
)]
pub(crate) fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A message being built with the next transaction id of this test's thread: counted, not
/// random, so a test sends the same bytes on every run.
fn builder(class: MessageClass, method: Method) -> MessageWriteVec {
    thread_local!(static NEXT: std::cell::Cell<u128> = const { std::cell::Cell::new(1) });
    let transaction = NEXT.with(|next| next.replace(next.get() + 1));
    Message::builder(
        MessageType::from_class_method(class, method),
        TransactionId::from(transaction),
        MessageWriteVec::new(),
    )
}

const SECRET: &str = "north";
const REALM: &str = "turnpike.test";
const UNIX_NOW: u64 = 1_700_000_000;

fn config() -> ServerConfig {
    let credentials = Credentials {
        secrets: vec![Password(SECRET.into()), Password("old-secret".into())],
        separator: ':',
        static_users: vec![("alice".into(), Password("wonderland".into()))],
    };
    ServerConfig {
        software: Some("turnpike".into()),
        max_permissions_per_allocation: 4,
        max_channels_per_allocation: 4,
        own_addresses: vec!["192.0.2.10:3478".parse().unwrap()],
        ..ServerConfig::new(REALM, credentials, NonceKey::new([9; 32]))
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tuple(client: &str) -> FiveTuple {
    FiveTuple {
        client: addr(client),
        server: addr("192.0.2.10:3478"),
        transport: Transport::Udp,
    }
}

/// A REST credential valid for an hour.
fn rest_user(user: &str) -> (String, String) {
    let username = format!("{}:{user}", UNIX_NOW + 3600);
    let password = rest_password(SECRET, &username);
    (username, password)
}

struct Auth<'a> {
    username: &'a str,
    password: &'a str,
    nonce: &'a str,
}

/// Builds a request of `method`; `attrs` adds attributes before integrity.
fn request(
    method: Method,
    auth: Option<&Auth<'_>>,
    attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let mut msg = builder(MessageClass::Request, method);
    let transaction = msg.transaction_id();
    attrs(&mut msg, transaction);
    if let Some(auth) = auth {
        msg.add_attribute(&Username::new(auth.username).unwrap())
            .unwrap();
        msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
        msg.add_attribute(&Nonce::new(auth.nonce).unwrap()).unwrap();
        let credentials: MessageIntegrityCredentials =
            LongTermKeyCredentials::new(auth.username.into(), auth.password.into(), REALM.into())
                .into();
        msg.add_message_integrity(&credentials, IntegrityAlgorithm::Sha1)
            .unwrap();
    }
    msg.add_fingerprint().unwrap();
    msg.finish()
}

fn udp_transport(msg: &mut MessageWriteVec, _: TransactionId) {
    msg.add_attribute(&RequestedTransport::new(PROTOCOL_UDP))
        .unwrap();
}

struct Harness {
    server: Server,
    quotas: Arc<Quotas>,
    now: Instant,
    unix: u64,
    out: Vec<u8>,
    next_relay_port: u16,
}

enum Outcome {
    Reply(Vec<u8>),
    Relay(SocketAddr, SocketAddr, Vec<u8>),
    Drop,
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), Quotas::new(100, 10))
    }

    fn with(config: ServerConfig, quotas: Quotas) -> Self {
        let quotas = Arc::new(quotas);
        Self {
            server: Server::new(Arc::new(config), quotas.clone(), [7; 32]),
            quotas,
            now: start(),
            unix: UNIX_NOW,
            out: vec![0; 70_000],
            next_relay_port: 50_000,
        }
    }

    /// A core among others (the daemon's workers) that hold relays at `held`.
    fn beside_relays(config: ServerConfig, held: &[&str]) -> Self {
        let live = Arc::new(LiveRelays::default());
        for relay in held {
            live.mark(relay.parse().unwrap(), true);
        }
        let mut h = Self::with(config.clone(), Quotas::new(10, 10));
        h.server = Server::new(Arc::new(config), h.quotas.clone(), [7; 32]).with_live_relays(live);
        h
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.unix += by.as_secs();
        self.server.handle_timeout(self.now);
    }

    /// Feeds a datagram; an Allocate is completed with the next relay port.
    fn send(&mut self, from: &str, data: &[u8]) -> Outcome {
        let action =
            self.server
                .handle_client(self.now, self.unix, tuple(from), data, &mut self.out);
        match action {
            ClientAction::Drop => Outcome::Drop,
            ClientAction::Reply(len) => Outcome::Reply(self.out[..len].to_vec()),
            ClientAction::Relay {
                relay,
                peer,
                payload,
            } => Outcome::Relay(relay, peer, payload.to_vec()),
            ClientAction::Allocate(pending) => {
                let port = self.next_relay_port;
                self.next_relay_port += 2;
                let relays: Vec<SocketAddr> = pending
                    .families
                    .iter()
                    .map(|family| match family {
                        AddressFamily::IPV4 => SocketAddr::from(([192, 0, 2, 10], port)),
                        AddressFamily::IPV6 => {
                            SocketAddr::new("2001:db8::10".parse().unwrap(), port)
                        }
                    })
                    .collect();
                let token = (pending.even_port == Some(true)).then_some(0xfeed);
                let len = self.server.accept_allocation(
                    self.now,
                    self.unix,
                    pending,
                    &relays,
                    token,
                    &mut self.out,
                );
                Outcome::Reply(self.out[..len].to_vec())
            }
        }
    }

    /// Drains the output queue.
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    /// Drains the output queue; the relay sockets it released.
    fn released(&mut self) -> Vec<SocketAddr> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::RelayReleased { relay } => Some(relay),
                _ => None,
            })
            .collect()
    }

    fn reply(&mut self, from: &str, data: &[u8]) -> Vec<u8> {
        match self.send(from, data) {
            Outcome::Reply(reply) => reply,
            _ => panic!("expected a reply"),
        }
    }

    /// A fresh nonce, from the 401 an unauthenticated Allocate gets.
    fn nonce(&mut self, from: &str) -> String {
        let reply = self.reply(from, &request(ALLOCATE, None, udp_transport));
        let msg = Message::from_bytes(&reply).unwrap();
        assert_eq!(code(&msg), Some(401));
        msg.attribute::<Nonce>().unwrap().nonce().to_owned()
    }

    /// An authenticated Allocate from `from`, left pending (its quota slot claimed).
    fn pending_allocation(&mut self, from: &str, user: &(String, String)) -> PendingAllocation {
        let nonce = self.nonce(from);
        let auth = Auth {
            username: &user.0,
            password: &user.1,
            nonce: &nonce,
        };
        let data = request(ALLOCATE, Some(&auth), udp_transport);
        match self
            .server
            .handle_client(self.now, self.unix, tuple(from), &data, &mut self.out)
        {
            ClientAction::Allocate(pending) => pending,
            _ => panic!("expected a pending allocation"),
        }
    }

    /// Allocates for `user` from `from`; returns the relayed address.
    fn allocate(&mut self, from: &str, username: &str, password: &str) -> SocketAddr {
        let nonce = self.nonce(from);
        let auth = Auth {
            username,
            password,
            nonce: &nonce,
        };
        let reply = self.reply(from, &request(ALLOCATE, Some(&auth), udp_transport));
        let msg = Message::from_bytes(&reply).unwrap();
        assert_eq!(
            msg.class(),
            MessageClass::Success,
            "allocate: {:?}",
            code(&msg)
        );
        msg.attribute::<XorRelayedAddress>()
            .unwrap()
            .addr(msg.transaction_id())
    }

    /// Sends an authenticated request and returns the parsed reply bytes.
    fn authed(
        &mut self,
        from: &str,
        user: &(String, String),
        method: Method,
        attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
    ) -> Vec<u8> {
        let nonce = self.nonce(from);
        let auth = Auth {
            username: &user.0,
            password: &user.1,
            nonce: &nonce,
        };
        self.reply(from, &request(method, Some(&auth), attrs))
    }
}

fn code(msg: &Message<'_>) -> Option<u16> {
    msg.attribute::<ErrorCode>().ok().map(|e| e.code())
}

fn reply_code(reply: &[u8]) -> Option<u16> {
    code(&Message::from_bytes(reply).unwrap())
}

fn peer_attr(peer: SocketAddr) -> impl FnOnce(&mut MessageWriteVec, TransactionId) {
    move |msg, transaction| {
        msg.add_attribute(&XorPeerAddress::new(peer, transaction))
            .unwrap()
    }
}

fn channel_attrs(
    channel: u16,
    peer: SocketAddr,
) -> impl FnOnce(&mut MessageWriteVec, TransactionId) {
    move |msg, transaction| {
        msg.add_attribute(&ChannelNumber::new(channel)).unwrap();
        msg.add_attribute(&XorPeerAddress::new(peer, transaction))
            .unwrap();
    }
}

const CLIENT: &str = "198.51.100.7:40000";
const PEER: &str = "8.8.8.8:5000";

// RFC 5769 §2.1: a Binding request with short-term auth, SOFTWARE, PRIORITY, ICE-CONTROLLED
// and FINGERPRINT. The server answers it (Binding needs no auth here) from the request's
// transaction.
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

// RFC 5769 §2.2: the IPv4 response, mapped address 192.0.2.1:32853.
const RFC5769_RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

// RFC 5769 §2.3: the IPv6 response, mapped address [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const RFC5769_RESPONSE_V6: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

// RFC 5769 §2.4: a request with long-term auth; user "マトリックス", password "TheMatrIX"
// (after SASLprep), realm "example.org".
const RFC5769_LONG_TERM: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83,
    0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c,
    0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34,
    0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b,
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14,
    0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2,
    0x8c, 0xa8, 0x96, 0x66,
];

const RFC5769_SHORT_TERM_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn rfc5769_request_is_answered_with_its_transaction_and_mapped_address() {
    let mut h = Harness::new();
    let reply = h.reply("192.0.2.1:32853", &RFC5769_REQUEST);
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    assert_eq!(msg.method(), BINDING);
    assert_eq!(msg.transaction_id(), 0xb7e7_a701_bc34_d686_fa87_dfae.into());
    let mapped = msg.attribute::<XorMappedAddress>().unwrap();
    assert_eq!(mapped.addr(msg.transaction_id()), addr("192.0.2.1:32853"));
    // The request's own short-term MESSAGE-INTEGRITY and FINGERPRINT verify with our codec.
    let request = parse_stun(&RFC5769_REQUEST).unwrap();
    let credentials = MessageIntegrityCredentials::ShortTerm(ShortTermCredentials::new(
        RFC5769_SHORT_TERM_PASSWORD.into(),
    ));
    assert!(request.validate_integrity(&credentials).is_ok());
}

/// Our writer reproduces the vectors' responses byte for byte (up to the SOFTWARE padding,
/// which RFC 5769 fills with spaces and we with zeros, so integrity and fingerprint differ).
#[test]
fn rfc5769_responses_are_reproduced() {
    let credentials = MessageIntegrityCredentials::ShortTerm(ShortTermCredentials::new(
        RFC5769_SHORT_TERM_PASSWORD.into(),
    ));
    for (vector, mapped) in [
        (&RFC5769_RESPONSE_V4[..], "192.0.2.1:32853"),
        (
            &RFC5769_RESPONSE_V6[..],
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ),
    ] {
        let parsed = parse_stun(vector).unwrap();
        assert!(parsed.validate_integrity(&credentials).is_ok());
        let transaction = parsed.transaction_id();
        assert_eq!(
            parsed
                .attribute::<XorMappedAddress>()
                .unwrap()
                .addr(transaction),
            addr(mapped)
        );
        let mut out = [0u8; 128];
        let mut response = Response::success(BINDING, transaction, &mut out);
        response.add_software(Some("test vector"));
        response.add(&XorMappedAddress::new(addr(mapped), transaction));
        // Short-term credentials (RFC 8489 §9.1.1): the key is the password itself.
        let len = response.finish_signed(&RFC5769_SHORT_TERM_PASSWORD, IntegrityAlgorithm::Sha1);
        assert_eq!(len, vector.len());
        let mut ours = out[..len].to_vec();
        ours[35] = 0x20; // SOFTWARE padding
        let integrity_at = len - 32;
        assert_eq!(ours[..integrity_at], vector[..integrity_at]);
        let ours = Message::from_bytes(&out[..len]).unwrap();
        assert!(ours.validate_integrity(&credentials).is_ok());
    }
}

#[test]
fn rfc5769_long_term_integrity_verifies() {
    let msg = parse_stun(&RFC5769_LONG_TERM).unwrap();
    let good: MessageIntegrityCredentials = LongTermKeyCredentials::new(
        "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}".into(),
        "TheMatrIX".into(),
        "example.org".into(),
    )
    .into();
    assert_eq!(
        msg.validate_integrity(&good).ok(),
        Some(IntegrityAlgorithm::Sha1)
    );
    let bad: MessageIntegrityCredentials = LongTermKeyCredentials::new(
        "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}".into(),
        "TheMatrix".into(),
        "example.org".into(),
    )
    .into();
    assert!(msg.validate_integrity(&bad).is_err());
    // The same with turnpike's own check: no PASSWORD-ALGORITHM, so the MD5 key (§9.2.2).
    let user = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    let md5 = LongTermKey::new(PasswordAlgorithm::Md5, user, "example.org", "TheMatrIX");
    assert_eq!(
        verify_integrity(&msg, md5.as_ref()),
        Some(IntegrityAlgorithm::Sha1)
    );
    let sha256 = LongTermKey::new(PasswordAlgorithm::Sha256, user, "example.org", "TheMatrIX");
    assert_eq!(verify_integrity(&msg, sha256.as_ref()), None);
}

#[test]
fn binding_returns_xor_mapped_mapped_and_fingerprint() {
    let mut h = Harness::new();
    let reply = h.reply(CLIENT, &request(BINDING, None, |_, _| {}));
    let msg = parse_stun(&reply).unwrap();
    let transaction = msg.transaction_id();
    assert_eq!(
        msg.attribute::<XorMappedAddress>()
            .unwrap()
            .addr(transaction),
        addr(CLIENT)
    );
    let mapped = msg.raw_attribute(MAPPED_ADDRESS).unwrap();
    // family 1, port, then the address in the clear.
    assert_eq!(&mapped.value[..], &[0, 1, 0x9c, 0x40, 198, 51, 100, 7]);
    // SOFTWARE is left out of answers to unauthenticated requests (amplification).
    assert!(!msg.has_attribute(Software::TYPE));
    assert!(msg.has_attribute(Fingerprint::TYPE));
    assert_eq!(h.server.stats.binding_requests, 1);
}

#[test]
fn unknown_comprehension_required_attribute_gets_420_optional_is_ignored() {
    let mut h = Harness::new();
    let unknown = AttributeType::new(0x0031);
    let reply = h.reply(
        CLIENT,
        &request(BINDING, None, |m, _| {
            m.add_attribute(&stun_types::attribute::RawAttribute::new(
                unknown,
                &[1, 2, 3, 4],
            ))
            .unwrap()
        }),
    );
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(code(&msg), Some(420));
    assert!(msg
        .attribute::<UnknownAttributes>()
        .unwrap()
        .has_attribute(unknown));
    let optional = AttributeType::new(0x8031);
    let reply = h.reply(
        CLIENT,
        &request(BINDING, None, |m, _| {
            m.add_attribute(&stun_types::attribute::RawAttribute::new(
                optional,
                &[1, 2, 3, 4],
            ))
            .unwrap()
        }),
    );
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
}

#[test]
fn binding_indication_and_responses_are_dropped_silently() {
    let mut h = Harness::new();
    let mut indication = builder(MessageClass::Indication, BINDING);
    indication.add_fingerprint().unwrap();
    assert!(matches!(
        h.send(CLIENT, &indication.finish()),
        Outcome::Drop
    ));
    assert!(matches!(
        h.send(CLIENT, &RFC5769_RESPONSE_V4),
        Outcome::Drop
    ));
}

#[test]
fn unauthenticated_allocate_gets_401_with_realm_and_nonce_and_creates_no_state() {
    let mut h = Harness::new();
    let reply = h.reply(CLIENT, &request(ALLOCATE, None, udp_transport));
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(code(&msg), Some(401));
    assert_eq!(msg.attribute::<Realm>().unwrap().realm(), REALM);
    assert!(msg.attribute::<Nonce>().is_ok());
    assert!(!msg.has_attribute(MessageIntegrity::TYPE));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quotas.total(), 0);
}

#[test]
fn rest_allocation_succeeds_and_response_is_signed() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let nonce = h.nonce(CLIENT);
    let auth = Auth {
        username: &user.0,
        password: &user.1,
        nonce: &nonce,
    };
    let reply = h.reply(CLIENT, &request(ALLOCATE, Some(&auth), udp_transport));
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    let credentials: MessageIntegrityCredentials =
        LongTermKeyCredentials::new(user.0.clone(), user.1.clone(), REALM.into()).into();
    assert!(msg.validate_integrity(&credentials).is_ok());
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 600);
    assert_eq!(
        msg.attribute::<XorMappedAddress>()
            .unwrap()
            .addr(msg.transaction_id()),
        addr(CLIENT)
    );
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.quotas.total(), 1);
}

#[test]
fn credentials_signed_by_a_second_secret_and_static_users_verify() {
    let mut h = Harness::new();
    let username = format!("{}:carol", UNIX_NOW + 60);
    let password = rest_password("old-secret", &username);
    h.allocate(CLIENT, &username, &password);
    h.allocate("198.51.100.8:1", "alice", "wonderland");
}

#[test]
fn wrong_password_expired_credential_and_unknown_user_get_401() {
    let mut h = Harness::new();
    let expired = format!("{}:bob", UNIX_NOW - 1);
    let expired_password = rest_password(SECRET, &expired);
    let valid = rest_user("bob");
    for (username, password) in [
        (valid.0.as_str(), "wrong"),
        (expired.as_str(), expired_password.as_str()),
        ("mallory", "x"),
        ("alice", "not-wonderland"),
    ] {
        let nonce = h.nonce(CLIENT);
        let auth = Auth {
            username,
            password,
            nonce: &nonce,
        };
        let reply = h.reply(CLIENT, &request(ALLOCATE, Some(&auth), udp_transport));
        assert_eq!(reply_code(&reply), Some(401), "{username}");
    }
    assert_eq!(h.server.stats.auth_bad_integrity, 2);
    assert_eq!(h.server.stats.auth_expired, 1);
    assert_eq!(h.server.stats.auth_unknown_user, 1);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn credential_expires_at_its_second() {
    let mut h = Harness::new();
    let username = format!("{}:bob", UNIX_NOW + 10);
    let password = rest_password(SECRET, &username);
    h.advance(Duration::from_secs(9));
    h.allocate(CLIENT, &username, &password);
    h.advance(Duration::from_secs(1));
    let reply = h.authed(CLIENT, &(username, password), REFRESH, |_, _| {});
    assert_eq!(reply_code(&reply), Some(401));
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce_that_works() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let old = h.nonce(CLIENT);
    h.advance(Duration::from_secs(600));
    let auth = Auth {
        username: &user.0,
        password: &user.1,
        nonce: &old,
    };
    let reply = h.reply(CLIENT, &request(ALLOCATE, Some(&auth), udp_transport));
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(code(&msg), Some(438));
    let fresh = msg.attribute::<Nonce>().unwrap().nonce().to_owned();
    assert_ne!(fresh, old);
    let auth = Auth {
        nonce: &fresh,
        ..auth
    };
    let reply = h.reply(CLIENT, &request(ALLOCATE, Some(&auth), udp_transport));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
}

#[test]
fn nonce_from_another_client_ip_is_stale() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let nonce = h.nonce("198.51.100.99:40000");
    let auth = Auth {
        username: &user.0,
        password: &user.1,
        nonce: &nonce,
    };
    let reply = h.reply(CLIENT, &request(ALLOCATE, Some(&auth), udp_transport));
    assert_eq!(reply_code(&reply), Some(438));
}

// ---- RFC 8489 §9.2: password algorithms, MESSAGE-INTEGRITY-SHA256 keys, challenges ----

/// How a test request is signed.
enum Signing<'a> {
    /// MESSAGE-INTEGRITY-SHA256 with this raw key.
    Sha256(&'a [u8]),
    /// MESSAGE-INTEGRITY (HMAC-SHA1) with this raw key.
    Sha1(&'a [u8]),
}

/// An Allocate (REQUESTED-TRANSPORT UDP) with USERNAME, REALM, NONCE, then `extra`
/// attributes, signed as `signing` says: computed here, independently of `wire`.
fn allocate_signed(
    username: &str,
    nonce: &str,
    extra: &[(AttributeType, &[u8])],
    signing: Signing<'_>,
) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut msg = builder(MessageClass::Request, ALLOCATE);
    let transaction = msg.transaction_id();
    udp_transport(&mut msg, transaction);
    msg.add_attribute(&Username::new(username).unwrap())
        .unwrap();
    msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
    msg.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
    for (atype, value) in extra {
        msg.add_attribute(&RawAttribute::new(*atype, value))
            .unwrap();
    }
    let zeros = [0u8; 32];
    let (atype, key, len) = match signing {
        Signing::Sha256(key) => (MessageIntegritySha256::TYPE, key, 32),
        Signing::Sha1(key) => (MessageIntegrity::TYPE, key, 20),
    };
    msg.push_attribute_unchecked(&RawAttribute::new(atype, &zeros[..len]));
    let total = msg.len();
    let data = msg.mut_data();
    let mac = if len == 32 {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(&data[..total - 36]);
        mac.finalize().into_bytes().to_vec()
    } else {
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).unwrap();
        mac.update(&data[..total - 24]);
        mac.finalize().into_bytes().to_vec()
    };
    data[total - len..].copy_from_slice(&mac);
    msg.add_fingerprint().unwrap();
    msg.finish()
}

fn key(algorithm: PasswordAlgorithm, user: &(String, String)) -> LongTermKey {
    LongTermKey::new(algorithm, &user.0, REALM, &user.1)
}

/// PASSWORD-ALGORITHMS as turnpike offers it: SHA-256, then MD5.
const OFFERED: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];
const PA_MD5: [u8; 4] = [0, 1, 0, 0];
const PA_SHA256: [u8; 4] = [0, 2, 0, 0];

// RFC 8489 Appendix B.1 as corrected by verified erratum 6268 (which added PASSWORD-ALGORITHM
// SHA-256): a Binding request with USERHASH, NONCE, REALM, PASSWORD-ALGORITHM and
// MESSAGE-INTEGRITY-SHA256; user "マトリックス", password "TheMatrIX" (after OpaqueString),
// realm "example.org".
const RFC8489_B1: [u8; 164] = [
    0x00, 0x01, 0x00, 0x90, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e, 0x00, 0x1e, 0x00, 0x20, 0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd,
    0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17, 0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2,
    0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f, 0x17, 0x04, 0x00, 0x15, 0x00, 0x29, 0x6f, 0x62, 0x4d, 0x61,
    0x74, 0x4a, 0x6f, 0x73, 0x32, 0x41, 0x41, 0x41, 0x43, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b,
    0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76,
    0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d,
    0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x1d, 0x00, 0x04, 0x00, 0x02, 0x00, 0x00,
    0x00, 0x1c, 0x00, 0x20, 0xb5, 0xc7, 0xbf, 0x00, 0x5b, 0x6c, 0x52, 0xa2, 0x1c, 0x51, 0xc5, 0xe8,
    0x92, 0xf8, 0x19, 0x24, 0x13, 0x62, 0x96, 0xcb, 0x92, 0x7c, 0x43, 0x14, 0x93, 0x09, 0x27, 0x8c,
    0xc6, 0x51, 0x8e, 0x65,
];

#[test]
fn rfc8489_b1_vector_verifies_with_the_sha256_key_its_password_algorithm_names() {
    let msg = parse_stun(&RFC8489_B1).unwrap();
    let number = msg
        .raw_attribute(PASSWORD_ALGORITHM)
        .and_then(|pa| password_algorithm_number(&pa.value));
    let algorithm = number.and_then(PasswordAlgorithm::from_number);
    assert_eq!(algorithm, Some(PasswordAlgorithm::Sha256));
    let user = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    let sha256 = LongTermKey::new(PasswordAlgorithm::Sha256, user, "example.org", "TheMatrIX");
    assert_eq!(
        verify_integrity(&msg, sha256.as_ref()),
        Some(IntegrityAlgorithm::Sha256)
    );
    // The MD5 key (what a request without PASSWORD-ALGORITHM would use) does not verify it.
    let md5 = LongTermKey::new(PasswordAlgorithm::Md5, user, "example.org", "TheMatrIX");
    assert_eq!(verify_integrity(&msg, md5.as_ref()), None);
    // USERHASH (username anonymity) is not supported: the vector's nonce cookie asks for it,
    // and turnpike's never offers it.
    assert!(RFC8489_B1[60..73] == *b"obMatJos2AAAC");
}

#[test]
fn challenges_carry_realm_cookie_nonce_and_password_algorithms_and_nothing_else() {
    let mut h = Harness::new();
    let reply = h.reply(CLIENT, &request(ALLOCATE, None, udp_transport));
    let msg = Message::from_bytes(&reply).unwrap();
    let error = msg.attribute::<ErrorCode>().unwrap();
    assert_eq!((error.code(), error.reason()), (401, ""));
    assert_eq!(msg.attribute::<Realm>().unwrap().realm(), REALM);
    let nonce = msg.attribute::<Nonce>().unwrap();
    assert!(
        nonce.nonce().starts_with("obMatJos2AAAB"),
        "{}",
        nonce.nonce()
    );
    assert_eq!(
        &msg.raw_attribute(PASSWORD_ALGORITHMS).unwrap().value[..],
        &OFFERED
    );
    let kinds: Vec<AttributeType> = msg.iter_attributes().map(|(_, a)| a.get_type()).collect();
    assert_eq!(
        kinds,
        [
            ErrorCode::TYPE,
            Realm::TYPE,
            Nonce::TYPE,
            PASSWORD_ALGORITHMS
        ],
        "no FINGERPRINT, SOFTWARE or MESSAGE-INTEGRITY in a challenge"
    );
    // 20 header + 8 ERROR-CODE + 20 REALM + 28 NONCE + 12 PASSWORD-ALGORITHMS.
    assert_eq!(reply.len(), 88);

    // A 438 is built the same way.
    let user = rest_user("bob");
    let old = h.nonce(CLIENT);
    h.advance(Duration::from_secs(600));
    let md5 = key(PasswordAlgorithm::Md5, &user);
    let reply = h.reply(
        CLIENT,
        &allocate_signed(&user.0, &old, &[], Signing::Sha1(md5.as_ref())),
    );
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(code(&msg), Some(438));
    assert_eq!(
        &msg.raw_attribute(PASSWORD_ALGORITHMS).unwrap().value[..],
        &OFFERED
    );
    assert!(!msg.has_attribute(Fingerprint::TYPE));
}

#[test]
fn unauthenticated_answers_carry_fingerprint_only_when_the_request_does() {
    let mut h = Harness::new();
    let mut bare = request(BINDING, None, |_, _| {});
    bare.truncate(20);
    bare[2..4].copy_from_slice(&[0, 0]);
    let reply = h.reply(CLIENT, &bare);
    let msg = parse_stun(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    assert!(!msg.has_attribute(Fingerprint::TYPE));
    assert_eq!(reply.len(), 44);
    let with = h.reply(CLIENT, &request(BINDING, None, |_, _| {}));
    assert!(parse_stun(&with).unwrap().has_attribute(Fingerprint::TYPE));
}

#[test]
fn sha256_integrity_without_password_algorithm_is_keyed_with_md5() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    // RFC 8489 §9.2.2: no PASSWORD-ALGORITHM, so the key is MD5(user:realm:pass) even for
    // MESSAGE-INTEGRITY-SHA256; the answer carries MESSAGE-INTEGRITY (§9.2.4).
    let md5 = key(PasswordAlgorithm::Md5, &user);
    let nonce = h.nonce(CLIENT);
    let reply = h.reply(
        CLIENT,
        &allocate_signed(&user.0, &nonce, &[], Signing::Sha256(md5.as_ref())),
    );
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success, "{:?}", code(&msg));
    assert!(!msg.has_attribute(MessageIntegritySha256::TYPE));
    assert_eq!(
        verify_integrity(&msg, md5.as_ref()),
        Some(IntegrityAlgorithm::Sha1)
    );
    // What stun-types (and turnpike before) keyed it with, SHA-256 of the credentials: 401.
    let sha256 = key(PasswordAlgorithm::Sha256, &user);
    let other = "198.51.100.8:40000";
    let nonce = h.nonce(other);
    let reply = h.reply(
        other,
        &allocate_signed(&user.0, &nonce, &[], Signing::Sha256(sha256.as_ref())),
    );
    assert_eq!(reply_code(&reply), Some(401));
    assert_eq!(h.server.stats.auth_bad_integrity, 1);
}

#[test]
fn negotiated_password_algorithm_keys_the_request_and_every_answer() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let cases: [(&str, &[u8], PasswordAlgorithm, bool); 3] = [
        (
            "198.51.100.11:1",
            &PA_SHA256,
            PasswordAlgorithm::Sha256,
            true,
        ),
        ("198.51.100.12:1", &PA_MD5, PasswordAlgorithm::Md5, true),
        // MESSAGE-INTEGRITY with the negotiated key is accepted too.
        (
            "198.51.100.13:1",
            &PA_SHA256,
            PasswordAlgorithm::Sha256,
            false,
        ),
    ];
    for (client, chosen, algorithm, sha256_attr) in cases {
        let key = key(algorithm, &user);
        let nonce = h.nonce(client);
        let extra = [
            (PASSWORD_ALGORITHMS, &OFFERED[..]),
            (PASSWORD_ALGORITHM, chosen),
        ];
        let signing = if sha256_attr {
            Signing::Sha256(key.as_ref())
        } else {
            Signing::Sha1(key.as_ref())
        };
        let reply = h.reply(client, &allocate_signed(&user.0, &nonce, &extra, signing));
        let msg = Message::from_bytes(&reply).unwrap();
        assert_eq!(
            msg.class(),
            MessageClass::Success,
            "{client}: {:?}",
            code(&msg)
        );
        // §9.2.4: MESSAGE-INTEGRITY-SHA256 once an algorithm is negotiated.
        assert!(!msg.has_attribute(MessageIntegrity::TYPE), "{client}");
        assert_eq!(
            verify_integrity(&msg, key.as_ref()),
            Some(IntegrityAlgorithm::Sha256),
            "{client}"
        );
    }
    // Negotiating SHA-256 but keying with MD5: 401.
    let client = "198.51.100.14:1";
    let md5 = key(PasswordAlgorithm::Md5, &user);
    let nonce = h.nonce(client);
    let extra = [
        (PASSWORD_ALGORITHMS, &OFFERED[..]),
        (PASSWORD_ALGORITHM, &PA_SHA256[..]),
    ];
    let reply = h.reply(
        client,
        &allocate_signed(&user.0, &nonce, &extra, Signing::Sha256(md5.as_ref())),
    );
    assert_eq!(reply_code(&reply), Some(401));
}

#[test]
fn password_algorithm_without_the_offered_list_or_unknown_gets_400() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let sha256 = key(PasswordAlgorithm::Sha256, &user);
    let md5_only = [0u8, 1, 0, 0];
    let reversed = [0u8, 1, 0, 0, 0, 2, 0, 0];
    let bad: [&[(AttributeType, &[u8])]; 6] = [
        // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS, and the reverse.
        &[(PASSWORD_ALGORITHM, &PA_SHA256)],
        &[(PASSWORD_ALGORITHMS, &OFFERED)],
        // A list that is not the one offered (a bid-down by someone on the path).
        &[
            (PASSWORD_ALGORITHMS, &md5_only),
            (PASSWORD_ALGORITHM, &PA_MD5),
        ],
        &[
            (PASSWORD_ALGORITHMS, &reversed),
            (PASSWORD_ALGORITHM, &PA_SHA256),
        ],
        // An algorithm not in the registry, and one with parameters.
        &[
            (PASSWORD_ALGORITHMS, &OFFERED),
            (PASSWORD_ALGORITHM, &[0, 3, 0, 0]),
        ],
        &[
            (PASSWORD_ALGORITHMS, &OFFERED),
            (PASSWORD_ALGORITHM, &[0, 2, 0, 4, 1, 2, 3, 4]),
        ],
    ];
    for (i, extra) in bad.into_iter().enumerate() {
        let nonce = h.nonce(CLIENT);
        let reply = h.reply(
            CLIENT,
            &allocate_signed(&user.0, &nonce, extra, Signing::Sha256(sha256.as_ref())),
        );
        let msg = Message::from_bytes(&reply).unwrap();
        assert_eq!(code(&msg), Some(400), "case {i}");
        // §9.2.4: no NONCE, REALM or integrity in that 400.
        assert!(
            !msg.has_attribute(Nonce::TYPE) && !msg.has_attribute(Realm::TYPE),
            "case {i}"
        );
        assert!(!msg.has_attribute(MessageIntegrity::TYPE), "case {i}");
    }
    assert_eq!(h.server.stats.auth_bad_algorithm, 6);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn challenges_are_capped_for_the_whole_server() {
    let mut h = Harness::new();
    h.quotas.set_max_challenges_per_sec(5);
    let allocate = request(ALLOCATE, None, udp_transport);
    let answered = (0..20)
        .filter(|i| {
            let from = format!("198.51.100.{}:1", 20 + i);
            matches!(h.send(&from, &allocate), Outcome::Reply(_))
        })
        .count();
    assert_eq!(answered, 5, "20 sources, each under its own cap");
    assert_eq!(h.server.stats.challenges_suppressed, 15);
    h.advance(Duration::from_secs(1));
    assert!(matches!(
        h.send("198.51.100.99:1", &allocate),
        Outcome::Reply(_)
    ));
}

/// A flood that uses up the server-wide cap cannot keep challenges from the clients whose
/// address is proven: TCP/TLS clients, and a 5-tuple that holds an allocation (whose Refresh
/// with an expired nonce must get its 438).
#[test]
fn a_challenge_flood_does_not_starve_stream_clients_or_allocations() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let reply = h.authed(CLIENT, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(3600)).unwrap()
    });
    assert_eq!(reply_code(&reply), None, "Refresh to an hour");
    let stale = h.nonce(CLIENT);
    h.advance(Duration::from_secs(600));
    h.quotas.set_max_challenges_per_sec(3);
    let allocate = request(ALLOCATE, None, udp_transport);
    for i in 0..10 {
        h.send(&format!("198.51.100.{}:1", 20 + i), &allocate);
    }
    assert!(matches!(
        h.send("198.51.100.99:1", &allocate),
        Outcome::Drop
    ));

    let auth = Auth {
        username: &user.0,
        password: &user.1,
        nonce: &stale,
    };
    let refresh = request(REFRESH, Some(&auth), |_, _| {});
    assert_eq!(reply_code(&h.reply(CLIENT, &refresh)), Some(438));

    let over_tcp = FiveTuple {
        transport: Transport::Tcp,
        ..tuple("198.51.100.77:5000")
    };
    let action = h
        .server
        .handle_client(h.now, h.unix, over_tcp, &allocate, &mut h.out);
    let ClientAction::Reply(len) = action else {
        panic!("a TCP client's Allocate was not answered during the flood");
    };
    assert_eq!(reply_code(&h.out[..len]), Some(401));
}

#[test]
fn allocate_checks_transport_and_5tuple() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, |_, _| {});
    assert_eq!(reply_code(&reply), Some(400), "missing REQUESTED-TRANSPORT");
    let reply = h.authed(CLIENT, &user, ALLOCATE, |m, _| {
        m.add_attribute(&RequestedTransport::new(6)).unwrap()
    });
    assert_eq!(reply_code(&reply), Some(442), "TCP relay");
    let reply = h.authed(CLIENT, &user, ALLOCATE, |m, _| {
        udp_transport(m, 0u128.into());
        m.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
            .unwrap();
    });
    assert_eq!(reply_code(&reply), Some(440), "no IPv6 relay");
    h.allocate(CLIENT, &user.0, &user.1);
    let reply = h.authed(CLIENT, &user, ALLOCATE, udp_transport);
    assert_eq!(reply_code(&reply), Some(437));
    assert_eq!(h.quotas.total(), 1, "refused requests hold no quota");
}

#[test]
fn retransmitted_allocate_gets_the_same_success() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let nonce = h.nonce(CLIENT);
    let auth = Auth {
        username: &user.0,
        password: &user.1,
        nonce: &nonce,
    };
    let allocate = request(ALLOCATE, Some(&auth), udp_transport);
    let first = h.reply(CLIENT, &allocate);
    let again = h.reply(CLIENT, &allocate);
    assert_eq!(first, again);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn other_user_on_the_same_5tuple_gets_441() {
    let mut h = Harness::new();
    let bob = rest_user("bob");
    h.allocate(CLIENT, &bob.0, &bob.1);
    let reply = h.authed(CLIENT, &rest_user("eve"), REFRESH, |_, _| {});
    assert_eq!(reply_code(&reply), Some(441));
}

#[test]
fn lifetime_is_clamped_and_allocation_expires_at_its_deadline() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, |m, t| {
        udp_transport(m, t);
        m.add_attribute(&Lifetime::new(100_000)).unwrap();
    });
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 3600);
    let start = h.now;
    assert_eq!(
        h.server.poll_timeout(),
        Some(start + Duration::from_secs(3600))
    );
    h.now = start + Duration::from_secs(3600) - Duration::from_nanos(1);
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.allocation_count(), 1);
    h.now = start + Duration::from_secs(3600);
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quotas.total(), 0);
    assert_eq!(h.released().len(), 1);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn refresh_extends_and_zero_lifetime_deletes() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    h.advance(Duration::from_secs(500));
    let reply = h.authed(CLIENT, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(60)).unwrap()
    });
    // Requests below the default get the default (RFC 8656 §7.2 via §8).
    assert_eq!(
        Message::from_bytes(&reply)
            .unwrap()
            .attribute::<Lifetime>()
            .unwrap()
            .seconds(),
        600
    );
    h.advance(Duration::from_secs(500));
    assert_eq!(
        h.server.allocation_count(),
        1,
        "refreshed past the original 600 s"
    );
    let reply = h.authed(CLIENT, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(0)).unwrap()
    });
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 0);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.released().len(), 1);
    let reply = h.authed(CLIENT, &user, REFRESH, |_, _| {});
    assert_eq!(reply_code(&reply), Some(437));
}

/// Config bounds stop these at load; the core still must not panic or truncate LIFETIME if
/// handed them (`now + lifetime` used to panic with "overflow when adding duration to instant").
#[test]
fn absurd_configured_lifetimes_saturate_instead_of_panicking() {
    let lifetime_of = |reply: &[u8]| {
        let msg = Message::from_bytes(reply).unwrap();
        assert_eq!(msg.class(), MessageClass::Success, "{:?}", code(&msg));
        msg.attribute::<Lifetime>().unwrap().seconds()
    };
    for (default, max) in [
        (u64::MAX, u64::MAX),
        (600, u64::MAX),
        (u64::from(u32::MAX) + 1, u64::from(u32::MAX) + 1),
        // default above max: clamped, not an `Ord::clamp` panic.
        (7200, 3600),
    ] {
        let mut config = config();
        config.default_lifetime = Duration::from_secs(default);
        config.max_lifetime = Duration::from_secs(max);
        let mut h = Harness::with(config, Quotas::new(100, 10));
        let user = rest_user("bob");
        let expected = max.min(u64::from(u32::MAX)) as u32;
        let reply = h.authed(CLIENT, &user, ALLOCATE, |m, t| {
            udp_transport(m, t);
            m.add_attribute(&Lifetime::new(u32::MAX)).unwrap();
        });
        assert_eq!(lifetime_of(&reply), expected, "Allocate, {default}/{max}");
        let reply = h.authed(CLIENT, &user, REFRESH, |m, _| {
            m.add_attribute(&Lifetime::new(u32::MAX)).unwrap()
        });
        assert_eq!(lifetime_of(&reply), expected, "Refresh, {default}/{max}");
        h.advance(Duration::from_secs(1));
        assert_eq!(h.server.allocation_count(), 1);
    }
}

#[test]
fn quotas_per_user_and_total() {
    let mut h = Harness::with(config(), Quotas::new(3, 2));
    let bob = rest_user("bob");
    h.allocate("198.51.100.1:1", &bob.0, &bob.1);
    h.allocate("198.51.100.1:2", &bob.0, &bob.1);
    let reply = h.authed("198.51.100.1:3", &bob, ALLOCATE, udp_transport);
    assert_eq!(reply_code(&reply), Some(486));
    // The same user through the other REST order counts against the same quota.
    let other_order = format!("bob:{}", UNIX_NOW + 60);
    let password = rest_password(SECRET, &other_order);
    let reply = h.authed(
        "198.51.100.1:4",
        &(other_order, password),
        ALLOCATE,
        udp_transport,
    );
    assert_eq!(reply_code(&reply), Some(486));
    let carol = rest_user("carol");
    h.allocate("198.51.100.2:1", &carol.0, &carol.1);
    let reply = h.authed("198.51.100.2:2", &carol, ALLOCATE, udp_transport);
    assert_eq!(reply_code(&reply), Some(508));
    assert_eq!(h.server.stats.quota_user, 2);
    assert_eq!(h.server.stats.quota_total, 1);
}

#[test]
fn rejected_allocation_releases_its_quota() {
    let mut h = Harness::with(config(), Quotas::new(1, 1));
    let user = rest_user("bob");
    let pending = h.pending_allocation(CLIENT, &user);
    assert_eq!(h.quotas.total(), 1);
    let len = h
        .server
        .reject_allocation(pending, Error::InsufficientCapacity, &mut h.out);
    assert_eq!(reply_code(&h.out[..len]), Some(508));
    assert_eq!(h.quotas.total(), 0);
    h.allocate(CLIENT, &user.0, &user.1);
}

#[test]
fn dropped_pending_allocation_releases_its_quota() {
    // Quotas of one, so a leaked slot would make the second Allocate a 486.
    let mut h = Harness::with(config(), Quotas::new(1, 1));
    let user = rest_user("bob");
    let pending = h.pending_allocation(CLIENT, &user);
    assert_eq!(h.quotas.total(), 1);
    drop(pending);
    assert_eq!(h.quotas.total(), 0);
    h.allocate(CLIENT, &user.0, &user.1);
    assert_eq!(h.quotas.total(), 1);
}

#[test]
fn permissions_gate_relaying_both_ways() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let relay = h.allocate(CLIENT, &user.0, &user.1);
    let peer = addr(PEER);
    let send = |h: &mut Harness| {
        let mut msg = builder(MessageClass::Indication, SEND);
        let transaction = msg.transaction_id();
        msg.add_attribute(&XorPeerAddress::new(peer, transaction))
            .unwrap();
        msg.add_attribute(&Data::new(b"hello")).unwrap();
        h.send(CLIENT, &msg.finish())
    };
    assert!(matches!(send(&mut h), Outcome::Drop), "no permission yet");
    let mut buf = [0u8; 64];
    buf[4..9].copy_from_slice(b"howdy");
    let mut out = [0u8; 256];
    assert_eq!(
        h.server
            .handle_peer(h.now, relay, peer, &mut buf, 5, &mut out),
        None
    );

    let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(peer));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
    match send(&mut h) {
        Outcome::Relay(from, to, payload) => {
            assert_eq!((from, to, payload.as_slice()), (relay, peer, &b"hello"[..]));
        }
        _ => panic!("Send indication not relayed"),
    }
    // A different port on the permitted IP is allowed too (permissions are per IP).
    let other_port = addr("8.8.8.8:6000");
    let action = h
        .server
        .handle_peer(h.now, relay, other_port, &mut buf, 5, &mut out);
    let Some(PeerAction::DataIndication { tuple: t, len }) = action else {
        panic!("expected a Data indication")
    };
    assert_eq!(t, tuple(CLIENT));
    let data = Message::from_bytes(&out[..len]).unwrap();
    assert_eq!(data.method(), DATA);
    assert_eq!(
        data.attribute::<XorPeerAddress>()
            .unwrap()
            .addr(data.transaction_id()),
        other_port
    );
    assert_eq!(data.attribute::<Data>().unwrap().data(), b"howdy");

    h.advance(PERMISSION_LIFETIME);
    assert!(matches!(send(&mut h), Outcome::Drop), "permission expired");
}

/// RFC 8489 §6: the transaction ids of the indications the server sends are random, drawn
/// from the seed the driver injects: the same seed gives the same ids, another seed others.
#[test]
fn data_indication_transaction_ids_come_from_the_injected_seed() {
    let run = |seed: [u8; 32]| {
        let mut h = Harness::new();
        h.server = Server::new(Arc::new(config()), h.quotas.clone(), seed);
        let user = rest_user("bob");
        let relay = h.allocate(CLIENT, &user.0, &user.1);
        let peer = addr(PEER);
        h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(peer));
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (mut buf, mut out) = ([0u8; 64], [0u8; 256]);
            let action = h
                .server
                .handle_peer(h.now, relay, peer, &mut buf, 5, &mut out);
            let Some(PeerAction::DataIndication { len, .. }) = action else {
                panic!("expected a Data indication")
            };
            ids.push(Message::from_bytes(&out[..len]).unwrap().transaction_id());
        }
        ids
    };
    let first = run([1; 32]);
    assert_eq!(first, run([1; 32]));
    assert_ne!(first[0], first[1]);
    let other = run([2; 32]);
    assert!(
        first.iter().all(|id| !other.contains(id)),
        "{first:?} {other:?}"
    );
}

#[test]
fn channel_bind_relays_channel_data_both_ways() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let relay = h.allocate(CLIENT, &user.0, &user.1);
    let peer = addr(PEER);
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4001, peer));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );

    let mut channel_data = vec![0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    match h.send(CLIENT, &channel_data) {
        Outcome::Relay(from, to, payload) => {
            assert_eq!((from, to, payload.as_slice()), (relay, peer, &b"abc"[..]))
        }
        _ => panic!("ChannelData not relayed"),
    }
    channel_data[1] = 0x02;
    assert!(
        matches!(h.send(CLIENT, &channel_data), Outcome::Drop),
        "unbound channel"
    );
    assert!(
        matches!(h.send(CLIENT, &[0x40, 0x01, 0x00, 0x09, 1]), Outcome::Drop),
        "short"
    );

    let mut buf = [0u8; 64];
    buf[4..8].copy_from_slice(b"pong");
    let mut out = [0u8; 64];
    let action = h
        .server
        .handle_peer(h.now, relay, peer, &mut buf, 4, &mut out);
    assert_eq!(
        action,
        Some(PeerAction::ChannelData {
            tuple: tuple(CLIENT),
            len: 8
        })
    );
    assert_eq!(&buf[..8], &[0x40, 0x01, 0x00, 0x04, b'p', b'o', b'n', b'g']);

    // The channel outlives its implicit permission unless refreshed (RFC 8656 §12).
    h.advance(PERMISSION_LIFETIME);
    assert!(matches!(
        h.send(CLIENT, &[0x40, 0x01, 0, 1, 9, 0, 0, 0]),
        Outcome::Drop
    ));
    h.advance(CHANNEL_LIFETIME - PERMISSION_LIFETIME);
    assert_eq!(
        h.server
            .handle_peer(h.now, relay, peer, &mut buf, 4, &mut out),
        None
    );
}

#[test]
fn channel_bind_rejects_bad_numbers_conflicts_and_over_cap() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let peer = addr(PEER);
    for bad in [0x3FFF, 0x8000] {
        let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(bad, peer));
        assert_eq!(reply_code(&reply), Some(400), "{bad:#x}");
    }
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4001, peer));
    assert_eq!(
        reply_code(&reply),
        Some(400),
        "peer bound to another channel"
    );
    let reply = h.authed(
        CLIENT,
        &user,
        CHANNEL_BIND,
        channel_attrs(0x4000, addr("8.8.4.4:1")),
    );
    assert_eq!(
        reply_code(&reply),
        Some(400),
        "channel bound to another peer"
    );
    for (i, ip) in ["8.8.4.1", "8.8.4.2", "8.8.4.3"].iter().enumerate() {
        let peer = SocketAddr::new(ip.parse().unwrap(), 1);
        let reply = h.authed(
            CLIENT,
            &user,
            CHANNEL_BIND,
            channel_attrs(0x4010 + i as u16, peer),
        );
        assert_eq!(
            Message::from_bytes(&reply).unwrap().class(),
            MessageClass::Success
        );
    }
    let reply = h.authed(
        CLIENT,
        &user,
        CHANNEL_BIND,
        channel_attrs(0x4020, addr("8.8.4.9:1")),
    );
    assert_eq!(reply_code(&reply), Some(508), "over the cap of 4");
}

#[test]
fn denied_peers_get_403() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    for peer in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "0.0.0.0:9",
        "224.0.0.1:9",
        "169.254.169.254:80",
    ] {
        let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(addr(peer)));
        assert_eq!(reply_code(&reply), Some(403), "{peer}");
    }
    // The server's own listening socket is denied even though its IP is not.
    let reply = h.authed(
        CLIENT,
        &user,
        CHANNEL_BIND,
        channel_attrs(0x4000, addr("192.0.2.10:3478")),
    );
    assert_eq!(reply_code(&reply), Some(403));
    // IPv6 peers on an IPv4 relay are a family mismatch.
    let reply = h.authed(
        CLIENT,
        &user,
        CREATE_PERMISSION,
        peer_attr(addr("[2001:4860::1]:9")),
    );
    assert_eq!(reply_code(&reply), Some(443));
    assert!(h.server.stats.denied_peers >= 6);
}

#[test]
fn allow_peers_opens_loopback() {
    let mut config = config();
    config.peer_filter = PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let reply = h.authed(
        CLIENT,
        &user,
        CREATE_PERMISSION,
        peer_attr(addr("127.0.0.1:9")),
    );
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
}

#[test]
fn even_port_with_reservation_returns_a_token() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, |m, t| {
        udp_transport(m, t);
        m.add_attribute(&EvenPort::new(true)).unwrap();
    });
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.attribute::<ReservationToken>().unwrap().token(), 0xfeed);
    let reply = h.authed("198.51.100.7:40002", &user, ALLOCATE, |m, t| {
        udp_transport(m, t);
        m.add_attribute(&ReservationToken::new(0xfeed)).unwrap();
        m.add_attribute(&EvenPort::new(false)).unwrap();
    });
    assert_eq!(
        reply_code(&reply),
        Some(400),
        "token and EVEN-PORT together"
    );
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut config = config();
    config.bandwidth_per_allocation = Some(1000);
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    h.authed(
        CLIENT,
        &user,
        CHANNEL_BIND,
        channel_attrs(0x4000, addr(PEER)),
    );
    let mut packet = vec![0x40, 0x00, 0x01, 0x90];
    packet.resize(4 + 400, 7);
    let relayed = (0..5)
        .filter(|_| matches!(h.send(CLIENT, &packet), Outcome::Relay(..)))
        .count();
    assert_eq!(relayed, 2);
    assert_eq!(h.server.stats.bandwidth_dropped, 3);
    // The cap is per direction: the peer can still reach the client.
    let mut buf = vec![0u8; 4 + 400];
    let mut out = vec![0u8; 1024];
    let relay = SocketAddr::from(([192, 0, 2, 10], 50_000));
    let to_client = h
        .server
        .handle_peer(h.now, relay, addr(PEER), &mut buf, 400, &mut out);
    assert!(matches!(to_client, Some(PeerAction::ChannelData { .. })));
    h.now += Duration::from_secs(1);
    assert!(matches!(h.send(CLIENT, &packet), Outcome::Relay(..)));
}

#[test]
fn malformed_input_is_counted_never_answered_with_a_panic() {
    let mut h = Harness::new();
    let valid = request(BINDING, None, |_, _| {});
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        valid[..10].to_vec(),
        valid[..valid.len() - 1].to_vec(),
        vec![0xff; 1500],
    ];
    // Attribute length running past the end of the message.
    let mut overrun = valid.clone();
    overrun[22..24].copy_from_slice(&0x0400u16.to_be_bytes());
    inputs.push(overrun);
    // Bad FINGERPRINT.
    let mut bad_fingerprint = valid.clone();
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xff;
    inputs.push(bad_fingerprint);
    // Deterministic pseudo-random bytes behind a STUN-looking header.
    let mut seed = 0x2545F4914F6CDD1Du64;
    for len in [20usize, 24, 64, 548, 1400] {
        let mut packet = valid[..20].to_vec();
        packet[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
        while packet.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            packet.push(seed as u8);
        }
        inputs.push(packet);
    }
    for input in &inputs {
        assert!(matches!(
            h.send(CLIENT, input),
            Outcome::Drop | Outcome::Reply(_)
        ));
    }
    assert!(h.server.stats.malformed >= 8, "{:?}", h.server.stats);
}

fn relayed_addresses(reply: &[u8]) -> Vec<SocketAddr> {
    let msg = Message::from_bytes(reply).unwrap();
    (0..)
        .map_while(|n| msg.nth_attribute::<XorRelayedAddress>(n).ok())
        .map(|a| a.addr(msg.transaction_id()))
        .collect()
}

fn additional_ipv6(msg: &mut MessageWriteVec, transaction: TransactionId) {
    udp_transport(msg, transaction);
    msg.add_attribute(&AdditionalAddressFamily::new(AddressFamily::IPV6))
        .unwrap();
}

#[test]
fn dual_allocation_relays_both_families() {
    let mut config = config();
    config.relay_ipv6 = true;
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, additional_ipv6);
    let relayed = relayed_addresses(&reply);
    assert_eq!(relayed.len(), 2, "one XOR-RELAYED-ADDRESS per family");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());
    let v6_peer = addr("[2001:4860::8888]:5000");
    let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(v6_peer));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, v6_peer));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
    match h.send(CLIENT, &[0x40, 0x00, 0x00, 0x01, 7, 0, 0, 0]) {
        Outcome::Relay(from, to, _) => assert_eq!((from, to), (relayed[1], v6_peer)),
        _ => panic!("ChannelData to the IPv6 peer not relayed"),
    }
    // Deleting it frees both relay sockets.
    h.authed(CLIENT, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(0)).unwrap()
    });
    assert_eq!(h.released(), relayed);
}

#[test]
fn dual_allocation_without_ipv6_relay_reports_440_beside_ipv4() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, additional_ipv6);
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    assert_eq!(relayed_addresses(&reply).len(), 1);
    let error = msg.attribute::<AddressErrorCode>().unwrap();
    assert_eq!(error.family(), AddressFamily::IPV6);
    assert_eq!(error.error().code(), 440);
    let reply = h.authed("198.51.100.7:1", &user, ALLOCATE, |m, t| {
        additional_ipv6(m, t);
        m.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV4))
            .unwrap();
    });
    assert_eq!(reply_code(&reply), Some(400), "both family attributes");
}

#[test]
fn alternate_server_answers_allocate_with_300() {
    let mut config = config();
    config.alternate_servers = vec![addr("198.51.100.200:3478")];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, udp_transport);
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(code(&msg), Some(300));
    assert_eq!(
        msg.attribute::<AlternateServer>().unwrap().server(),
        addr("198.51.100.200:3478")
    );
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quotas.total(), 0);
}

#[test]
fn draining_refuses_new_allocations_and_serves_existing_ones() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let mut draining = config();
    draining.draining = true;
    h.server.set_config(Arc::new(draining.clone()));

    // No alternate to send the client to: 508, and no quota slot taken.
    let other = "198.51.100.8:40000";
    let reply = h.authed(other, &user, ALLOCATE, udp_transport);
    assert_eq!(reply_code(&reply), Some(508));
    assert_eq!(h.quotas.total(), 1);

    // The existing allocation still refreshes and takes permissions.
    let reply = h.authed(CLIENT, &user, REFRESH, |_, _| {});
    assert_eq!(reply_code(&reply), None, "refresh while draining");
    let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(addr(PEER)));
    assert_eq!(reply_code(&reply), None, "permission while draining");

    // With an alternate, new clients are redirected there instead.
    draining.alternate_servers = vec![addr("198.51.100.200:3478")];
    h.server.set_config(Arc::new(draining));
    let reply = h.authed(other, &user, ALLOCATE, udp_transport);
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(code(&msg), Some(300));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn external_ip_is_advertised_for_matching_relays() {
    let mut config = config();
    config.external_ips = vec![(None, "203.0.113.50".parse().unwrap())];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    let relayed = h.allocate(CLIENT, &user.0, &user.1);
    assert_eq!(relayed, addr("203.0.113.50:50000"));
    // Peers still reach the relay through its local address.
    let peer = addr(PEER);
    h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(peer));
    let mut buf = [0u8; 16];
    let mut out = [0u8; 128];
    let local = addr("192.0.2.10:50000");
    assert!(h
        .server
        .handle_peer(h.now, local, peer, &mut buf, 4, &mut out)
        .is_some());
}

#[test]
fn closing_a_stream_connection_frees_its_allocation() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    assert!(h.server.has_allocation(&tuple(CLIENT)));
    h.server.close_connection(&tuple(CLIENT));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quotas.total(), 0);
    assert_eq!(h.released().len(), 1);
}

#[test]
fn challenges_are_capped_per_source_per_second() {
    let mut h = Harness::new();
    let allocate = request(ALLOCATE, None, udp_transport);
    let answered = (0..130)
        .filter(|_| matches!(h.send(CLIENT, &allocate), Outcome::Reply(_)))
        .count();
    assert_eq!(answered, 100);
    assert_eq!(h.server.stats.challenges_suppressed, 30);
    // Another source is not affected, and the cap resets the next second.
    assert!(matches!(
        h.send("198.51.100.99:1", &allocate),
        Outcome::Reply(_)
    ));
    h.advance(Duration::from_secs(1));
    assert!(matches!(h.send(CLIENT, &allocate), Outcome::Reply(_)));
}

#[test]
fn unauthenticated_answers_stay_small() {
    // DESIGN: no response to an unauthenticated source much larger than what it sent.
    let mut h = Harness::new();
    let binding = request(BINDING, None, |_, _| {});
    let allocate = request(ALLOCATE, None, udp_transport);
    let binding_reply = h.reply(CLIENT, &binding);
    let challenge = h.reply(CLIENT, &allocate);
    let ratio =
        (binding_reply.len() + challenge.len()) as f64 / (binding.len() + allocate.len()) as f64;
    println!(
        "bytes out / bytes in = {ratio:.2} ({} + {} for {} + {})",
        binding_reply.len(),
        challenge.len(),
        binding.len(),
        allocate.len()
    );
    assert!(ratio <= 2.5, "bytes out / bytes in = {ratio:.2}");
}

fn success(reply: &[u8]) -> bool {
    Message::from_bytes(reply).unwrap().class() == MessageClass::Success
}

/// A Send indication of `payload` to `peer`.
fn send_indication(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut msg = builder(MessageClass::Indication, SEND);
    let transaction = msg.transaction_id();
    msg.add_attribute(&XorPeerAddress::new(peer, transaction))
        .unwrap();
    msg.add_attribute(&Data::new(payload)).unwrap();
    msg.finish()
}

/// Relay-to-relay: the server's own relay IPs, bound or advertised, are valid peers on a
/// relay port some allocation holds (which applies its own permissions), even though the
/// relay IP lies in a denied range (192.0.2.0/24 here, as 127.0.0.1 or a LAN address would
/// be); the listening socket, relay ports no allocation holds and every other port of
/// those IPs stay denied.
#[test]
fn the_servers_own_relay_addresses_are_peers_on_relay_ports_only() {
    let mut config = config();
    config.external_ips = vec![(None, "93.184.216.99".parse().unwrap())];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    let advertised = h.allocate(CLIENT, &user.0, &user.1);
    assert_eq!(advertised, addr("93.184.216.99:50000"));
    let local = addr("192.0.2.10:50000");
    // Permissions are per IP: both of the relay's IPs can be permitted.
    for own in [advertised, local] {
        let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(own));
        assert!(success(&reply), "{own}: {:?}", reply_code(&reply));
    }
    let denied_before = h.server.stats.denied_peers;
    // On a relay port they are channel peers too; off it, or on the listener, they are not.
    let mut channel = 0x4000;
    for (own, allowed) in [
        (advertised, true),
        (local, true),
        (addr("93.184.216.99:65535"), false),
        (addr("192.0.2.10:49152"), false),
        (addr("192.0.2.10:3478"), false),
        (addr("93.184.216.99:3478"), false),
        (addr("93.184.216.99:1"), false),
        (addr("192.0.2.10:22"), false),
        (addr("192.0.2.10:49151"), false),
    ] {
        let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(channel, own));
        if allowed {
            assert!(success(&reply), "{own}: {:?}", reply_code(&reply));
            channel += 1;
        } else {
            assert_eq!(reply_code(&reply), Some(403), "{own}");
        }
    }
    assert_eq!(h.server.stats.denied_peers, denied_before + 7);
    // Other addresses of the denied range stay denied.
    for other in ["192.0.2.11:50000", "192.0.2.11:1"] {
        let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(addr(other)));
        assert_eq!(reply_code(&reply), Some(403), "{other}");
    }
    // Named in allow_peers, every port of the relay IP but the listener's is open.
    let mut config = self::config();
    config.peer_filter = PeerFilter::new(vec!["192.0.2.10/32".parse().unwrap()], vec![]);
    let mut h = Harness::with(config, Quotas::new(10, 10));
    h.allocate(CLIENT, &user.0, &user.1);
    let reply = h.authed(
        CLIENT,
        &user,
        CHANNEL_BIND,
        channel_attrs(0x4000, addr("192.0.2.10:22")),
    );
    assert!(success(&reply), "{:?}", reply_code(&reply));
    let reply = h.authed(
        CLIENT,
        &user,
        CHANNEL_BIND,
        channel_attrs(0x4001, addr("192.0.2.10:3478")),
    );
    assert_eq!(reply_code(&reply), Some(403));
}

/// The listener rule wins over the relay-port rule: a listening socket inside the relay
/// port range is still no peer, under its bound or its advertised IP, nor is any port when
/// the server listens on every IP.
#[test]
fn a_listener_on_a_relay_port_or_every_ip_is_never_a_peer() {
    let mut config = config();
    config.relay_ports = 3000..=65535;
    config.own_addresses = vec![addr("192.0.2.10:3478"), addr("0.0.0.0:5349")];
    config.external_ips = vec![(None, "93.184.216.99".parse().unwrap())];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    // The public address too: a relay-to-relay datagram to it goes to the bound IP.
    for listener in ["192.0.2.10:3478", "192.0.2.10:5349", "93.184.216.99:3478"] {
        let reply = h.authed(
            CLIENT,
            &user,
            CHANNEL_BIND,
            channel_attrs(0x4000, addr(listener)),
        );
        assert_eq!(reply_code(&reply), Some(403), "{listener}");
        let relayed = h.send(CLIENT, &send_indication(addr(listener), b"x"));
        assert!(matches!(relayed, Outcome::Drop), "{listener}");
    }
}

/// Two clients of this server, each relaying to the other's relay address (both relay-only),
/// reach each other both ways: ChannelData one way, a Send indication the other.
#[test]
fn two_clients_relay_to_each_others_relay_addresses() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let (alice, bob) = (CLIENT, "198.51.100.8:40000");
    let alice_relay = h.allocate(alice, &user.0, &user.1);
    let bob_relay = h.allocate(bob, &user.0, &user.1);
    let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(0x4000, bob_relay));
    assert!(success(&reply), "{:?}", reply_code(&reply));
    let reply = h.authed(bob, &user, CREATE_PERMISSION, peer_attr(alice_relay));
    assert!(success(&reply), "{:?}", reply_code(&reply));

    // Alice's ChannelData leaves her relay for Bob's, which hands it to Bob.
    let Outcome::Relay(from, to, payload) = h.send(alice, &[0x40, 0x00, 0, 3, b'h', b'i', b'!', 0])
    else {
        panic!("ChannelData to the other relay not relayed")
    };
    assert_eq!(
        (from, to, payload.as_slice()),
        (alice_relay, bob_relay, &b"hi!"[..])
    );
    let mut buf = [0u8; 64];
    buf[4..7].copy_from_slice(b"hi!");
    let mut out = [0u8; 256];
    let action = h
        .server
        .handle_peer(h.now, bob_relay, alice_relay, &mut buf, 3, &mut out);
    let Some(PeerAction::DataIndication { tuple: t, len }) = action else {
        panic!("Bob got no Data indication: {action:?}")
    };
    assert_eq!(t, tuple(bob));
    let data = Message::from_bytes(&out[..len]).unwrap();
    assert_eq!(data.attribute::<Data>().unwrap().data(), b"hi!");

    // Bob's Send indication goes the other way and arrives on Alice's channel.
    let Outcome::Relay(from, to, payload) = h.send(bob, &send_indication(alice_relay, b"yo"))
    else {
        panic!("Send indication to the other relay not relayed")
    };
    assert_eq!(
        (from, to, payload.as_slice()),
        (bob_relay, alice_relay, &b"yo"[..])
    );
    buf[4..6].copy_from_slice(b"yo");
    let action = h
        .server
        .handle_peer(h.now, alice_relay, bob_relay, &mut buf, 2, &mut out);
    assert_eq!(
        action,
        Some(PeerAction::ChannelData {
            tuple: tuple(alice),
            len: 6
        })
    );

    // A Send indication to the relay IP off the relay ports is dropped as a denied peer.
    let denied = h.server.stats.denied_peers;
    for off in ["192.0.2.10:3478", "192.0.2.10:1"] {
        let relayed = h.send(bob, &send_indication(addr(off), b"no"));
        assert!(matches!(relayed, Outcome::Drop), "{off}");
    }
    assert_eq!(h.server.stats.denied_peers, denied + 2);
}

/// Relay-to-relay reaches only relay sockets an allocation holds now: a port of the relay
/// range with no allocation behind it (where any other local process may have a socket,
/// a resolver's query port, say) is a denied peer for ChannelBind and Send, under its
/// bound and its advertised address, and so is a relay once its allocation is gone.
#[test]
fn relay_to_relay_reaches_only_relays_held_now() {
    let mut config = config();
    config.external_ips = vec![(
        Some("192.0.2.10".parse().unwrap()),
        "93.184.216.99".parse().unwrap(),
    )];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    let (alice, bob) = (CLIENT, "198.51.100.8:40000");
    h.allocate(alice, &user.0, &user.1);
    let bob_relay = h.allocate(bob, &user.0, &user.1);
    assert_eq!(bob_relay, addr("93.184.216.99:50002"));
    let bob_local = addr("192.0.2.10:50002");
    let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(0x4000, bob_relay));
    assert!(success(&reply), "{:?}", reply_code(&reply));
    let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(0x4001, bob_local));
    assert!(success(&reply), "{:?}", reply_code(&reply));
    let Outcome::Relay(_, to, _) = h.send(alice, &send_indication(bob_relay, b"hi")) else {
        panic!("Send indication to a live relay not relayed")
    };
    assert_eq!(to, bob_local);

    // Between the two relays and past them: in the range, held by no allocation.
    let mut channel = 0x4002;
    for unheld in [
        "192.0.2.10:50001",
        "93.184.216.99:50004",
        "192.0.2.10:65535",
    ] {
        let unheld = addr(unheld);
        let denied = h.server.stats.denied_peers;
        let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(channel, unheld));
        assert_eq!(reply_code(&reply), Some(403), "{unheld}");
        let relayed = h.send(alice, &send_indication(unheld, b"no"));
        assert!(matches!(relayed, Outcome::Drop), "{unheld}");
        assert_eq!(h.server.stats.denied_peers, denied + 2, "{unheld}");
        channel += 1;
    }

    // Bob's allocation ends: his relay is no peer any more, under either address.
    let reply = h.authed(bob, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(0)).unwrap()
    });
    assert!(success(&reply), "{:?}", reply_code(&reply));
    for gone in [bob_relay, bob_local] {
        let denied = h.server.stats.denied_peers;
        let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(channel, gone));
        assert_eq!(reply_code(&reply), Some(403), "{gone}");
        let relayed = h.send(alice, &send_indication(gone, b"no"));
        assert!(matches!(relayed, Outcome::Drop), "{gone}");
        assert_eq!(h.server.stats.denied_peers, denied + 2, "{gone}");
    }
    // Nor can Alice's channel to it be refreshed.
    let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(0x4000, bob_relay));
    assert_eq!(reply_code(&reply), Some(403));
    // A new allocation on the same port is a peer again.
    h.next_relay_port = 50002;
    assert_eq!(h.allocate(bob, &user.0, &user.1), bob_relay);
    let reply = h.authed(alice, &user, CHANNEL_BIND, channel_attrs(0x4000, bob_relay));
    assert!(success(&reply), "{:?}", reply_code(&reply));
}

/// Cores sharing one [`LiveRelays`] (the daemon's workers) see each other's relays: a client
/// of one reaches an allocation of the other until it ends, or its core is dropped with
/// it (a worker that died); a core alone sees only its own.
#[test]
fn cores_sharing_live_relays_reach_each_others_relays() {
    let live = Arc::new(LiveRelays::default());
    let sharing = |h: &mut Harness, live: &Arc<LiveRelays>| {
        h.server = Server::new(Arc::new(config()), h.quotas.clone(), [7; 32])
            .with_live_relays(live.clone());
    };
    let (mut one, mut other, mut alone) = (Harness::new(), Harness::new(), Harness::new());
    sharing(&mut one, &live);
    sharing(&mut other, &live);
    other.next_relay_port = 60_000;
    alone.next_relay_port = 61_000;
    let user = rest_user("bob");
    one.allocate(CLIENT, &user.0, &user.1);
    let other_relay = other.allocate(CLIENT, &user.0, &user.1);
    let alone_relay = alone.allocate(CLIENT, &user.0, &user.1);
    let bind = |h: &mut Harness, channel: u16, peer: SocketAddr| {
        reply_code(&h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(channel, peer)))
    };
    assert_eq!(bind(&mut one, 0x4000, other_relay), None, "shared: a peer");
    assert_eq!(bind(&mut one, 0x4001, alone_relay), Some(403), "not shared");
    assert_eq!(
        bind(&mut alone, 0x4000, other_relay),
        Some(403),
        "not shared"
    );
    // The other core goes, its allocation with it.
    other.server = Server::new(Arc::new(config()), other.quotas.clone(), [7; 32]);
    assert_eq!(
        bind(&mut one, 0x4002, other_relay),
        Some(403),
        "dropped core"
    );
}

/// Behind a 1:1 NAT (`external_ips`) clients know each other's relays by the public
/// address: what goes to one leaves through the bound address instead of relying on the
/// NAT to hairpin, and what arrives from the bound address is known by the public one.
#[test]
fn relay_to_relay_behind_a_1_to_1_nat_stays_on_the_host() {
    let mut config = config();
    config.external_ips = vec![(None, "93.184.216.99".parse().unwrap())];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    let (alice, bob) = (CLIENT, "198.51.100.8:40000");
    let alice_relay = h.allocate(alice, &user.0, &user.1);
    let bob_relay = h.allocate(bob, &user.0, &user.1);
    assert_eq!(
        (alice_relay, bob_relay),
        (addr("93.184.216.99:50000"), addr("93.184.216.99:50002"))
    );
    let (alice_local, bob_local) = (addr("192.0.2.10:50000"), addr("192.0.2.10:50002"));
    for (from, channel, peer) in [(alice, 0x4000, bob_relay), (bob, 0x4001, alice_relay)] {
        let reply = h.authed(from, &user, CHANNEL_BIND, channel_attrs(channel, peer));
        assert!(success(&reply), "{:?}", reply_code(&reply));
    }
    let Outcome::Relay(from, to, _) = h.send(alice, &[0x40, 0x00, 0, 2, b'h', b'i', 0, 0]) else {
        panic!("ChannelData not relayed")
    };
    assert_eq!(
        (from, to),
        (alice_local, bob_local),
        "sent to the bound relay"
    );
    let Outcome::Relay(from, to, _) = h.send(bob, &send_indication(alice_relay, b"yo")) else {
        panic!("Send indication not relayed")
    };
    assert_eq!(
        (from, to),
        (bob_local, alice_local),
        "sent to the bound relay"
    );
    // Alice's datagram arrives at Bob's relay from her bound address, on Bob's channel.
    let mut buf = [0u8; 64];
    let mut out = [0u8; 256];
    let action = h
        .server
        .handle_peer(h.now, bob_local, alice_local, &mut buf, 2, &mut out);
    assert_eq!(
        action,
        Some(PeerAction::ChannelData {
            tuple: tuple(bob),
            len: 6
        })
    );
    assert_eq!(buf[..2], [0x40, 0x01]);
    // Without a channel it is a Data indication naming her public relay address.
    h.server.close_connection(&tuple(bob));
    let carol = "198.51.100.9:40000";
    let carol_relay = h.allocate(carol, &user.0, &user.1);
    let reply = h.authed(carol, &user, CREATE_PERMISSION, peer_attr(alice_relay));
    assert!(success(&reply), "{:?}", reply_code(&reply));
    let carol_local = SocketAddr::new(alice_local.ip(), carol_relay.port());
    let action = h
        .server
        .handle_peer(h.now, carol_local, alice_local, &mut buf, 2, &mut out);
    let Some(PeerAction::DataIndication { tuple: t, len }) = action else {
        panic!("Carol got no Data indication: {action:?}")
    };
    assert_eq!(t, tuple(carol));
    let data = Message::from_bytes(&out[..len]).unwrap();
    assert_eq!(
        data.attribute::<XorPeerAddress>()
            .unwrap()
            .addr(data.transaction_id()),
        alice_relay
    );
    // A client that permitted the bound IP itself is served as before.
    let dave = "198.51.100.10:40000";
    let dave_relay = h.allocate(dave, &user.0, &user.1);
    let reply = h.authed(dave, &user, CREATE_PERMISSION, peer_attr(alice_local));
    assert!(success(&reply), "{:?}", reply_code(&reply));
    let dave_local = SocketAddr::new(alice_local.ip(), dave_relay.port());
    let action = h
        .server
        .handle_peer(h.now, dave_local, alice_local, &mut buf, 2, &mut out);
    let Some(PeerAction::DataIndication { len, .. }) = action else {
        panic!("Dave got no Data indication: {action:?}")
    };
    let data = Message::from_bytes(&out[..len]).unwrap();
    assert_eq!(
        data.attribute::<XorPeerAddress>()
            .unwrap()
            .addr(data.transaction_id()),
        alice_local
    );
}

/// Relay IPs the daemon configured count as the server's own before any allocation of this
/// worker has used them (another worker's allocations are on them), bound and advertised.
#[test]
fn configured_relay_ips_are_own_before_any_allocation_uses_them() {
    let mut config = config();
    config.relay_ips = vec!["192.0.2.20".parse().unwrap()];
    config.external_ips = vec![(
        Some("192.0.2.20".parse().unwrap()),
        "93.184.216.20".parse().unwrap(),
    )];
    let mut h = Harness::beside_relays(config, &["192.0.2.20:50000"]);
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1); // on 192.0.2.10, as the harness binds
    for (channel, (peer, allowed)) in (0x4000..).zip([
        ("192.0.2.20:50000", true),
        ("93.184.216.20:50000", true),
        ("192.0.2.20:50002", false),
        ("93.184.216.20:50002", false),
        ("192.0.2.20:1", false),
        ("93.184.216.20:1", false),
        ("192.0.2.21:50000", false),
    ]) {
        let reply = h.authed(
            CLIENT,
            &user,
            CHANNEL_BIND,
            channel_attrs(channel, addr(peer)),
        );
        if allowed {
            assert!(success(&reply), "{peer}: {:?}", reply_code(&reply));
        } else {
            assert_eq!(reply_code(&reply), Some(403), "{peer}");
        }
    }
}

/// An operator's own deny_peers range holding the relay IP denies its other addresses; the
/// relay IP itself is still reachable on its relays.
#[test]
fn explicitly_denied_ranges_still_deny_their_other_addresses() {
    let mut config = config();
    config.relay_ips = vec!["93.184.216.10".parse().unwrap()];
    config.peer_filter = PeerFilter::new(vec![], vec!["93.184.216.0/24".parse().unwrap()]);
    let mut h = Harness::beside_relays(config, &["93.184.216.10:50000"]);
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    for (peer, allowed) in [
        ("93.184.216.10:50000", true),
        ("93.184.216.10:50002", false),
        ("93.184.216.10:3478", false),
        ("93.184.216.11:50000", false),
        ("93.184.216.200:9", false),
    ] {
        let reply = h.authed(
            CLIENT,
            &user,
            CHANNEL_BIND,
            channel_attrs(0x4000, addr(peer)),
        );
        if allowed {
            assert!(success(&reply), "{peer}: {:?}", reply_code(&reply));
        } else {
            assert_eq!(reply_code(&reply), Some(403), "{peer}");
        }
        let relayed = h.send(CLIENT, &send_indication(addr(peer), b"x"));
        assert_eq!(matches!(relayed, Outcome::Relay(..)), allowed, "{peer}");
    }
}

#[test]
fn create_permission_checks_every_peer_and_installs_all_or_nothing() {
    let mut h = Harness::new(); // 4 permissions per allocation
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let many = |peers: Vec<SocketAddr>| {
        move |m: &mut MessageWriteVec, t: TransactionId| {
            for peer in &peers {
                m.add_attribute(&XorPeerAddress::new(*peer, t)).unwrap();
            }
        }
    };
    // A denied peer after the cap's worth of good ones is still checked.
    let mut peers: Vec<SocketAddr> = (1..=5).map(|i| addr(&format!("8.8.8.{i}:1"))).collect();
    peers.push(addr("10.0.0.1:1"));
    let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, many(peers));
    assert_eq!(reply_code(&reply), Some(403));
    // Five distinct peers do not fit in four: 508, and none is installed.
    let peers: Vec<SocketAddr> = (1..=5).map(|i| addr(&format!("8.8.8.{i}:1"))).collect();
    let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, many(peers));
    assert_eq!(reply_code(&reply), Some(508));
    let mut buf = [0u8; 16];
    let mut out = [0u8; 128];
    let relay = addr("192.0.2.10:50000");
    let from_peer = h
        .server
        .handle_peer(h.now, relay, addr("8.8.8.1:1"), &mut buf, 4, &mut out);
    assert_eq!(from_peer, None, "a refused request installed a permission");
    // Repeats of one peer count once.
    let peers = vec![addr("8.8.8.1:1"); 6];
    let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, many(peers));
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
}

/// An attribute with exactly these value bytes, malformed or not.
fn raw(atype: u16, value: &[u8]) -> impl Fn(&mut MessageWriteVec, TransactionId) {
    let value = value.to_vec();
    move |m, _| {
        m.add_attribute(&RawAttribute::new(AttributeType::new(atype), &value))
            .unwrap()
    }
}

const REQUESTED_TRANSPORT: u16 = 0x0019;
const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
const EVEN_PORT: u16 = 0x0018;
const RESERVATION_TOKEN: u16 = 0x0022;
const LIFETIME: u16 = 0x000D;
const DONT_FRAGMENT: u16 = 0x001A;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const CHANNEL_NUMBER: u16 = 0x000C;

/// Raw attributes, in order: `(type, value)`.
type RawAttrs<'a> = &'a [(u16, &'a [u8])];

fn raws(list: RawAttrs<'_>) -> impl FnOnce(&mut MessageWriteVec, TransactionId) + '_ {
    move |m, t| {
        list.iter()
            .for_each(|&(atype, value)| raw(atype, value)(m, t))
    }
}

#[test]
fn allocate_attribute_faults_get_the_rfc_8656_codes() {
    const UDP: (u16, &[u8]) = (REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    const TOKEN: (u16, &[u8]) = (RESERVATION_TOKEN, &[1; 8]);
    const IPV6_TOO: (u16, &[u8]) = (ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    let cases: &[(&str, RawAttrs<'_>, u16)] = &[
        ("REQUESTED-TRANSPORT missing", &[], 400),
        (
            "REQUESTED-TRANSPORT 3 bytes",
            &[(REQUESTED_TRANSPORT, &[17, 0, 0])],
            400,
        ),
        (
            "REQUESTED-TRANSPORT 8 bytes",
            &[(REQUESTED_TRANSPORT, &[17, 0, 0, 0, 0, 0, 0, 0])],
            400,
        ),
        (
            "REQUESTED-TRANSPORT TCP",
            &[(REQUESTED_TRANSPORT, &[6, 0, 0, 0])],
            442,
        ),
        // RFC 8489 §14: only the first occurrence counts.
        (
            "TCP, then UDP",
            &[(REQUESTED_TRANSPORT, &[6, 0, 0, 0]), UDP],
            442,
        ),
        (
            "REQUESTED-ADDRESS-FAMILY 0x03",
            &[UDP, (REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0])],
            440,
        ),
        (
            "REQUESTED-ADDRESS-FAMILY 0x00",
            &[UDP, (REQUESTED_ADDRESS_FAMILY, &[0, 0, 0, 0])],
            440,
        ),
        (
            "IPv6, no IPv6 relay",
            &[UDP, (REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])],
            440,
        ),
        (
            "REQUESTED-ADDRESS-FAMILY 1 byte",
            &[UDP, (REQUESTED_ADDRESS_FAMILY, &[1])],
            400,
        ),
        (
            "REQUESTED-ADDRESS-FAMILY 8 bytes",
            &[UDP, (REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0, 0, 0, 0, 0])],
            400,
        ),
        (
            "ADDITIONAL-ADDRESS-FAMILY IPv4",
            &[UDP, (ADDITIONAL_ADDRESS_FAMILY, &[1, 0, 0, 0])],
            400,
        ),
        (
            "ADDITIONAL-ADDRESS-FAMILY 0x03",
            &[UDP, (ADDITIONAL_ADDRESS_FAMILY, &[3, 0, 0, 0])],
            400,
        ),
        (
            "ADDITIONAL-ADDRESS-FAMILY 2 bytes",
            &[UDP, (ADDITIONAL_ADDRESS_FAMILY, &[2, 0])],
            400,
        ),
        (
            "draft ADDITIONAL-ADDRESS-FAMILY IPv4",
            &[UDP, (0x8032, &[1, 0, 0, 0])],
            400,
        ),
        (
            "both family attributes",
            &[UDP, (REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]), IPV6_TOO],
            400,
        ),
        (
            "RESERVATION-TOKEN and EVEN-PORT",
            &[UDP, TOKEN, (EVEN_PORT, &[0])],
            400,
        ),
        // Step 5 comes before step 7: the family's value does not matter.
        (
            "RESERVATION-TOKEN and family 0x03",
            &[UDP, TOKEN, (REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0])],
            400,
        ),
        (
            "RESERVATION-TOKEN and ADDITIONAL-ADDRESS-FAMILY",
            &[UDP, TOKEN, IPV6_TOO],
            400,
        ),
        (
            "RESERVATION-TOKEN 4 bytes",
            &[UDP, (RESERVATION_TOKEN, &[1; 4])],
            400,
        ),
        (
            "EVEN-PORT 4 bytes",
            &[UDP, (EVEN_PORT, &[0x80, 0, 0, 0])],
            400,
        ),
        (
            "EVEN-PORT R and ADDITIONAL-ADDRESS-FAMILY",
            &[UDP, (EVEN_PORT, &[0x80]), IPV6_TOO],
            400,
        ),
        ("LIFETIME 2 bytes", &[UDP, (LIFETIME, &[0, 60])], 400),
        (
            "DONT-FRAGMENT with a value",
            &[UDP, (DONT_FRAGMENT, &[0, 0, 0, 0])],
            400,
        ),
    ];
    let mut h = Harness::new();
    let user = rest_user("bob");
    for &(what, list, code) in cases {
        let reply = h.authed(CLIENT, &user, ALLOCATE, raws(list));
        assert_eq!(reply_code(&reply), Some(code), "{what}");
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.quotas.total(), 0, "refused requests hold no quota");
}

#[test]
fn allocate_takes_the_first_of_duplicate_attributes_and_accepts_well_formed_ones() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let reply = h.authed(CLIENT, &user, ALLOCATE, |m, t| {
        udp_transport(m, t);
        m.add_attribute(&RequestedTransport::new(6)).unwrap();
        m.add_attribute(&Lifetime::new(1200)).unwrap();
        m.add_attribute(&Lifetime::new(0)).unwrap();
        m.add_attribute(&DontFragment::new()).unwrap();
        m.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV4))
            .unwrap();
        // A later, malformed duplicate is ignored like any duplicate.
        raw(REQUESTED_ADDRESS_FAMILY, &[3])(m, t);
    });
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success, "{:?}", code(&msg));
    assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 1200);
}

fn refresh_ok(h: &mut Harness, user: &(String, String)) -> bool {
    let reply = h.authed(CLIENT, user, REFRESH, |_, _| {});
    Message::from_bytes(&reply).unwrap().class() == MessageClass::Success
}

#[test]
fn refresh_with_another_family_is_443_and_the_allocation_stays() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let expiry = h.server.poll_timeout();
    for (what, family, code) in [
        ("IPv6 on an IPv4 allocation", &[2u8, 0, 0, 0][..], 443),
        ("family 0x03", &[3, 0, 0, 0], 443),
        ("family 1 byte", &[1], 400),
    ] {
        // With LIFETIME 0 too: the mismatch is checked first and nothing is deleted.
        let reply = h.authed(CLIENT, &user, REFRESH, |m, t| {
            raw(REQUESTED_ADDRESS_FAMILY, family)(m, t);
            m.add_attribute(&Lifetime::new(0)).unwrap();
        });
        assert_eq!(reply_code(&reply), Some(code), "{what}");
        assert_eq!(h.server.allocation_count(), 1, "{what}");
        assert_eq!(h.server.poll_timeout(), expiry, "{what}: lifetime changed");
        assert!(h.released().is_empty(), "{what}: relay freed");
    }
    // A malformed LIFETIME is 400, not "no LIFETIME".
    let reply = h.authed(CLIENT, &user, REFRESH, raw(LIFETIME, &[0, 0]));
    assert_eq!(reply_code(&reply), Some(400));
    assert_eq!(h.server.poll_timeout(), expiry);
    // The matching family refreshes.
    let reply = h.authed(CLIENT, &user, REFRESH, |m, _| {
        m.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV4))
            .unwrap();
    });
    let msg = Message::from_bytes(&reply).unwrap();
    assert_eq!(msg.class(), MessageClass::Success);
    assert!(refresh_ok(&mut h, &user));
}

#[test]
fn refresh_of_a_dual_allocation_accepts_either_family() {
    let mut config = config();
    config.relay_ipv6 = true;
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    h.authed(CLIENT, &user, ALLOCATE, additional_ipv6);
    for family in [AddressFamily::IPV4, AddressFamily::IPV6] {
        let reply = h.authed(CLIENT, &user, REFRESH, move |m, _| {
            m.add_attribute(&RequestedAddressFamily::new(family))
                .unwrap();
        });
        assert_eq!(
            Message::from_bytes(&reply).unwrap().class(),
            MessageClass::Success,
            "{family:?}"
        );
    }
}

#[test]
fn create_permission_with_any_invalid_peer_address_is_400() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let good = addr("8.8.8.8:1");
    for (what, bad) in [
        ("family 0x03", &[0u8, 3, 0, 1, 1, 2, 3, 4][..]),
        ("IPv4 in 4 bytes", &[0, 1, 0, 1]),
        ("IPv4 with 12 bytes", &[0, 1, 0, 1, 1, 2, 3, 4, 0, 0, 0, 0]),
    ] {
        let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, |m, t| {
            m.add_attribute(&XorPeerAddress::new(good, t)).unwrap();
            raw(XOR_PEER_ADDRESS, bad)(m, t);
        });
        assert_eq!(reply_code(&reply), Some(400), "{what}");
    }
    let mut buf = [0u8; 16];
    let mut out = [0u8; 128];
    let relay = addr("192.0.2.10:50000");
    let from_peer = h
        .server
        .handle_peer(h.now, relay, good, &mut buf, 4, &mut out);
    assert_eq!(from_peer, None, "a refused request installed a permission");
}

#[test]
fn channel_bind_with_malformed_attributes_is_400() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let peer = addr(PEER);
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, |m, t| {
        raw(CHANNEL_NUMBER, &[0x40, 0x00])(m, t);
        m.add_attribute(&XorPeerAddress::new(peer, t)).unwrap();
    });
    assert_eq!(reply_code(&reply), Some(400), "CHANNEL-NUMBER 2 bytes");
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, |m, _| {
        m.add_attribute(&ChannelNumber::new(0x4000)).unwrap();
    });
    assert_eq!(reply_code(&reply), Some(400), "no XOR-PEER-ADDRESS");
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, |m, t| {
        m.add_attribute(&ChannelNumber::new(0x4000)).unwrap();
        raw(XOR_PEER_ADDRESS, &[0, 3, 0, 1, 1, 2, 3, 4])(m, t);
    });
    assert_eq!(
        reply_code(&reply),
        Some(400),
        "XOR-PEER-ADDRESS family 0x03"
    );
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x3FFF, peer));
    assert_eq!(reply_code(&reply), Some(400), "channel below the range");
}

#[test]
fn send_with_an_unknown_required_or_invalid_attribute_is_discarded() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let peer = addr(PEER);
    h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(peer));
    let send = |h: &mut Harness, extra: &dyn Fn(&mut MessageWriteVec, TransactionId)| {
        let mut msg = builder(MessageClass::Indication, SEND);
        let transaction = msg.transaction_id();
        msg.add_attribute(&XorPeerAddress::new(peer, transaction))
            .unwrap();
        msg.add_attribute(&Data::new(b"hello")).unwrap();
        extra(&mut msg, transaction);
        h.send(CLIENT, &msg.finish())
    };
    assert!(matches!(send(&mut h, &|_, _| {}), Outcome::Relay(..)));
    let unknown_optional = raw(0x8031, &[1, 2, 3, 4]);
    assert!(
        matches!(send(&mut h, &unknown_optional), Outcome::Relay(..)),
        "unknown comprehension-optional attributes are ignored"
    );
    let dont_fragment = |m: &mut MessageWriteVec, _: TransactionId| {
        m.add_attribute(&DontFragment::new()).unwrap();
    };
    assert!(matches!(send(&mut h, &dont_fragment), Outcome::Relay(..)));

    let unknown_required = raw(0x0031, &[1, 2, 3, 4]);
    assert!(matches!(send(&mut h, &unknown_required), Outcome::Drop));
    assert_eq!(h.server.stats.unknown_attribute_dropped, 1);
    let malformed_before = h.server.stats.malformed;
    assert!(matches!(
        send(&mut h, &raw(DONT_FRAGMENT, &[0, 0, 0, 0])),
        Outcome::Drop
    ));
    // An invalid XOR-PEER-ADDRESS first: the valid one after it is a duplicate.
    let mut msg = builder(MessageClass::Indication, SEND);
    let transaction = msg.transaction_id();
    raw(XOR_PEER_ADDRESS, &[0, 3, 0, 1, 1, 2, 3, 4])(&mut msg, transaction);
    msg.add_attribute(&XorPeerAddress::new(peer, transaction))
        .unwrap();
    msg.add_attribute(&Data::new(b"hello")).unwrap();
    assert!(matches!(h.send(CLIENT, &msg.finish()), Outcome::Drop));
    assert_eq!(h.server.stats.malformed, malformed_before + 2);
    assert_eq!(h.server.stats.to_peer_packets, 3);
}

#[test]
fn own_relay_addresses_carried_in_ipv6_forms_are_denied_peers() {
    let mut config = config();
    config.relay_ipv6 = true;
    config.external_ips = vec![(None, "93.184.216.99".parse().unwrap())];
    let mut h = Harness::with(config, Quotas::new(10, 10));
    let user = rest_user("bob");
    h.allocate(CLIENT, &user.0, &user.1);
    let other = "198.51.100.8:40000";
    let reply = h.authed(other, &user, ALLOCATE, |m, t| {
        udp_transport(m, t);
        m.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
            .unwrap();
    });
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success
    );
    for own in ["[64:ff9b::5db8:d863]:50000", "[::ffff:93.184.216.99]:50000"] {
        let reply = h.authed(other, &user, CREATE_PERMISSION, peer_attr(addr(own)));
        assert_eq!(reply_code(&reply), Some(403), "{own}");
    }
    let reply = h.authed(
        other,
        &user,
        CREATE_PERMISSION,
        peer_attr(addr("[64:ff9b::808:808]:1")),
    );
    assert_eq!(
        Message::from_bytes(&reply).unwrap().class(),
        MessageClass::Success,
        "NAT64 to a public IPv4 address"
    );
}

/// Allocates for `user` from `from` with the longest lifetime (3600 s), so permission and
/// channel timers run out first; returns the relayed address and drains AllocationCreated.
fn allocate_for_an_hour(h: &mut Harness, from: &str, user: &(String, String)) -> SocketAddr {
    h.events();
    let reply = h.authed(from, user, ALLOCATE, |m, t| {
        udp_transport(m, t);
        m.add_attribute(&Lifetime::new(3600)).unwrap();
    });
    let relay = relayed_addresses(&reply)[0];
    let events = h.events();
    assert!(
        matches!(events.as_slice(), [Event::AllocationCreated { tuple: t, expires, .. }]
            if *t == tuple(from) && *expires == h.now + Duration::from_secs(3600)),
        "{events:?}"
    );
    relay
}

fn gauges(allocations: u64, permissions: u64, channels: u64) -> Gauges {
    Gauges {
        allocations: [allocations, 0, 0],
        permissions,
        channels,
    }
}

#[test]
fn permission_and_channel_expire_on_their_own_timers_and_say_so() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let relay = allocate_for_an_hour(&mut h, CLIENT, &user);
    let allocation_expiry = h.now + Duration::from_secs(3600);
    let (client, peer) = (tuple(CLIENT), addr(PEER));
    let t = h.now;
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    assert_eq!(
        h.events(),
        [
            Event::PermissionCreated {
                tuple: client,
                peer: peer.ip(),
                expires: t + Duration::from_secs(300),
            },
            Event::ChannelBound {
                tuple: client,
                number: 0x4000,
                peer,
                expires: t + Duration::from_secs(600),
            },
        ]
    );
    assert_eq!(h.server.poll_timeout(), Some(t + PERMISSION_LIFETIME));

    // At the permission's deadline, before its timer has run, packets are refused both ways.
    h.now = t + PERMISSION_LIFETIME;
    let channel_data = [0x40, 0x00, 0x00, 0x01, 7];
    assert!(matches!(h.send(CLIENT, &channel_data), Outcome::Drop));
    let (mut buf, mut out) = ([0u8; 64], [0u8; 256]);
    assert_eq!(
        h.server
            .handle_peer(h.now, relay, peer, &mut buf, 5, &mut out),
        None
    );
    assert_eq!(h.server.poll_output(), None, "expired without its timer");
    assert_eq!(h.server.gauges(), gauges(1, 1, 1));
    h.server.handle_timeout(h.now);
    assert_eq!(
        h.events(),
        [Event::PermissionExpired {
            tuple: client,
            peer: peer.ip()
        }]
    );
    assert_eq!(h.server.gauges(), gauges(1, 0, 1));
    assert_eq!(h.server.poll_timeout(), Some(t + CHANNEL_LIFETIME));

    h.now = t + CHANNEL_LIFETIME - Duration::from_nanos(1);
    h.server.handle_timeout(h.now);
    assert_eq!(h.server.poll_output(), None, "channel expired early");
    h.now = t + CHANNEL_LIFETIME;
    h.server.handle_timeout(h.now);
    assert_eq!(
        h.events(),
        [Event::ChannelExpired {
            tuple: client,
            number: 0x4000,
            peer
        }]
    );
    assert_eq!(h.server.gauges(), gauges(1, 0, 0));
    assert_eq!(h.server.poll_timeout(), Some(allocation_expiry));
    assert_eq!(h.server.poll_output(), None);
}

#[test]
fn refreshing_a_channel_moves_its_timer_and_says_so() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    allocate_for_an_hour(&mut h, CLIENT, &user);
    let (client, peer) = (tuple(CLIENT), addr(PEER));
    let t = h.now;
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    h.events();
    h.advance(Duration::from_secs(100));
    let refreshed = h.now;
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    // The permission is refreshed too, which moves its deadline and says nothing.
    assert_eq!(
        h.events(),
        [Event::ChannelRefreshed {
            tuple: client,
            number: 0x4000,
            peer,
            expires: refreshed + CHANNEL_LIFETIME,
        }]
    );
    assert_eq!(
        h.server.poll_timeout(),
        Some(refreshed + PERMISSION_LIFETIME)
    );
    h.advance(t + CHANNEL_LIFETIME - h.now);
    assert_eq!(
        h.events(),
        [Event::PermissionExpired {
            tuple: client,
            peer: peer.ip()
        }]
    );
    assert_eq!(
        h.server.gauges(),
        gauges(1, 0, 1),
        "channel kept its old deadline"
    );
    h.advance(refreshed + CHANNEL_LIFETIME - h.now);
    assert!(matches!(
        h.events().as_slice(),
        [Event::ChannelExpired { number: 0x4000, .. }]
    ));
    assert_eq!(h.server.gauges(), gauges(1, 0, 0));
}

#[test]
fn gauges_follow_create_refresh_expire_and_delete() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    assert_eq!(h.server.gauges(), gauges(0, 0, 0));
    allocate_for_an_hour(&mut h, CLIENT, &user);
    assert_eq!(h.server.gauges(), gauges(1, 0, 0));
    let (peer, other) = (addr(PEER), addr("8.8.4.4:5000"));
    h.authed(CLIENT, &user, CREATE_PERMISSION, |m, t| {
        peer_attr(peer)(m, t);
        peer_attr(other)(m, t);
    });
    assert_eq!(h.server.gauges(), gauges(1, 2, 0));
    // Binding a channel to a permitted peer refreshes that permission, adds no other.
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    assert_eq!(h.server.gauges(), gauges(1, 2, 1));
    h.advance(Duration::from_secs(200));
    h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(peer));
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    assert_eq!(
        h.server.gauges(),
        gauges(1, 2, 1),
        "refreshes counted twice"
    );
    // `other` was never refreshed: gone at 300 s.
    h.advance(Duration::from_secs(100));
    assert_eq!(h.server.gauges(), gauges(1, 1, 1));
    // A second allocation with a channel, deleted by its client.
    const SECOND: &str = "198.51.100.8:40000";
    allocate_for_an_hour(&mut h, SECOND, &user);
    h.authed(SECOND, &user, CHANNEL_BIND, channel_attrs(0x4001, other));
    assert_eq!(h.server.gauges(), gauges(2, 2, 2));
    h.authed(SECOND, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(0)).unwrap()
    });
    assert_eq!(h.server.gauges(), gauges(1, 1, 1));
    // The rest run out: the permission at 200 + 300 s, the channel at 200 + 600 s.
    h.advance(Duration::from_secs(200));
    assert_eq!(h.server.gauges(), gauges(1, 0, 1));
    h.advance(Duration::from_secs(300));
    assert_eq!(h.server.gauges(), gauges(1, 0, 0));
    h.server.clear();
    assert_eq!(h.server.gauges(), gauges(0, 0, 0));
}

#[test]
fn ended_allocations_report_their_usage_and_why_they_ended() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let (started, started_unix) = (h.now, h.unix);
    let relay = allocate_for_an_hour(&mut h, CLIENT, &user);
    let (client, peer) = (tuple(CLIENT), addr(PEER));
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    h.events();
    // Three ChannelData and one Send indication towards the peer: 4 packets, 3 × 5 + 2 bytes.
    for _ in 0..3 {
        let sent = h.send(CLIENT, &[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]);
        assert!(matches!(sent, Outcome::Relay(..)));
    }
    let mut send = builder(MessageClass::Indication, SEND);
    let transaction = send.transaction_id();
    send.add_attribute(&XorPeerAddress::new(peer, transaction))
        .unwrap();
    send.add_attribute(&Data::new(b"hi")).unwrap();
    assert!(matches!(h.send(CLIENT, &send.finish()), Outcome::Relay(..)));
    // Refused packets are not usage: ChannelData on an unbound channel, a peer without
    // permission.
    assert!(matches!(
        h.send(CLIENT, &[0x40, 0x01, 0x00, 0x01, 9]),
        Outcome::Drop
    ));
    let (mut buf, mut out) = ([0u8; 64], [0u8; 256]);
    let stranger = addr("8.8.4.4:5000");
    assert_eq!(
        h.server
            .handle_peer(h.now, relay, stranger, &mut buf, 9, &mut out),
        None
    );
    // Two datagrams from the peer, 7 bytes each.
    for _ in 0..2 {
        let action = h
            .server
            .handle_peer(h.now, relay, peer, &mut buf, 7, &mut out);
        assert!(matches!(action, Some(PeerAction::ChannelData { .. })));
    }
    h.advance(Duration::from_secs(10));
    h.authed(CLIENT, &user, REFRESH, |m, _| {
        m.add_attribute(&Lifetime::new(0)).unwrap()
    });
    assert_eq!(
        h.events(),
        [
            Event::AllocationEnded {
                id: 1,
                tuple: client,
                username: user.0.clone(),
                relays: vec![RelayAddress {
                    local: relay,
                    advertised: relay
                }],
                usage: Usage {
                    started,
                    started_unix,
                    to_peer_packets: 4,
                    to_peer_bytes: 17,
                    from_peer_packets: 2,
                    from_peer_bytes: 14,
                },
                reason: EndReason::Deleted,
            },
            Event::RelayReleased { relay },
        ]
    );
    assert_eq!(h.server.poll_output(), None);

    // The other ways an allocation ends.
    let ended = |h: &mut Harness| -> Vec<EndReason> {
        h.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::AllocationEnded { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    };
    h.allocate(CLIENT, &user.0, &user.1);
    h.events();
    h.advance(Duration::from_secs(600));
    assert_eq!(ended(&mut h), [EndReason::Expired]);
    h.allocate(CLIENT, &user.0, &user.1);
    h.events();
    h.server.close_connection(&client);
    assert_eq!(ended(&mut h), [EndReason::ConnectionClosed]);
    h.allocate(CLIENT, &user.0, &user.1);
    h.events();
    h.server.clear();
    assert_eq!(ended(&mut h), [EndReason::Shutdown]);
    assert_eq!(h.server.poll_output(), None);
}

/// The management plane's view: every live allocation, filtered and paged by id, with its
/// counts and Unix times.
#[test]
fn sessions_are_listed_filtered_and_paged_by_id() {
    let mut h = Harness::new();
    let (alice, bob) = (rest_user("alice"), rest_user("bob"));
    h.allocate(CLIENT, &alice.0, &alice.1);
    h.allocate("198.51.100.8:40000", &bob.0, &bob.1);
    h.allocate("198.51.100.9:40000", &alice.0, &alice.1);
    h.authed(CLIENT, &alice, CREATE_PERMISSION, peer_attr(addr(PEER)));
    h.advance(Duration::from_secs(5));
    let all = h
        .server
        .sessions(h.now, h.unix, &SessionFilter::default(), 10);
    assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2, 3]);
    let first = &all[0];
    assert_eq!(first.username, alice.0);
    assert_eq!(first.client, addr(CLIENT));
    assert_eq!(first.transport, Transport::Udp);
    assert_eq!((first.permissions, first.channels), (1, 0));
    assert_eq!(first.usage.started_unix, UNIX_NOW);
    // Allocated for the default 600 s, 5 s ago.
    assert_eq!(first.expires_unix, UNIX_NOW + 600);
    let by_user = SessionFilter {
        username: Some("alice".into()),
        ..Default::default()
    };
    let ids = |s: Vec<SessionInfo>| s.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(h.server.sessions(h.now, h.unix, &by_user, 10)), [1, 3]);
    let page = SessionFilter {
        after: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(h.server.sessions(h.now, h.unix, &page, 1)), [2]);
}

/// A kick ends one allocation at once: its relay is released, the event says why, and a
/// Refresh then finds no allocation.
#[test]
fn a_kicked_allocation_ends_at_once_and_refresh_gets_437() {
    let mut h = Harness::new();
    let user = rest_user("alice");
    let relay = h.allocate(CLIENT, &user.0, &user.1);
    h.events();
    assert!(!h.server.end_allocation(99));
    assert!(h.server.end_allocation(1));
    let events = h.events();
    assert!(matches!(&events[0],
        Event::AllocationEnded { id: 1, reason: EndReason::Kicked, username, .. } if *username == user.0));
    assert_eq!(events[1..], [Event::RelayReleased { relay }]);
    let reply = h.authed(CLIENT, &user, REFRESH, |_, _| {});
    assert_eq!(reply_code(&reply), Some(437));
    assert_eq!(h.quotas.total(), 0);
}

/// Revoking a user ends their allocations and refuses their Allocates with 403 until the
/// revocation's time is up; other users are untouched.
#[test]
fn a_revoked_user_loses_their_allocations_and_cannot_allocate_until_the_deadline() {
    let mut h = Harness::new();
    let (alice, bob) = (rest_user("alice"), rest_user("bob"));
    h.allocate(CLIENT, &alice.0, &alice.1);
    h.allocate("198.51.100.8:40000", &bob.0, &bob.1);
    h.events();
    let until = UNIX_NOW + 60;
    h.server.set_revocations(Arc::new(crate::Revocations::new(
        [("alice".to_owned(), until)].into(),
    )));
    assert_eq!(h.server.end_revoked(h.unix), 1);
    let reasons: Vec<EndReason> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::AllocationEnded { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [EndReason::Revoked]);
    assert_eq!(h.server.allocation_count(), 1);
    let reply = h.authed("198.51.100.9:40000", &alice, ALLOCATE, udp_transport);
    assert_eq!(reply_code(&reply), Some(403));
    h.advance(Duration::from_secs(60));
    h.allocate("198.51.100.9:40000", &alice.0, &alice.1);
}

/// When one input ends many allocations, their events come out oldest first, the same on
/// every run: not in the order of the allocation table's randomly keyed hasher.
#[test]
fn allocations_ended_together_are_reported_oldest_first() {
    let mut h = Harness::new();
    let (alice, bob) = (rest_user("alice"), rest_user("bob"));
    let ended_ids = |h: &mut Harness| -> Vec<u64> {
        h.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::AllocationEnded { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    };
    for port in 0..8 {
        h.allocate(
            &format!("198.51.100.7:{}", 40_000 + port),
            &alice.0,
            &alice.1,
        );
        h.allocate(&format!("198.51.100.8:{}", 40_000 + port), &bob.0, &bob.1);
    }
    h.events();
    h.server.set_revocations(Arc::new(crate::Revocations::new(
        [("alice".to_owned(), UNIX_NOW + 60)].into(),
    )));
    assert_eq!(h.server.end_revoked(h.unix), 8);
    assert_eq!(ended_ids(&mut h), [1, 3, 5, 7, 9, 11, 13, 15]);
    h.server.clear();
    assert_eq!(ended_ids(&mut h), [2, 4, 6, 8, 10, 12, 14, 16]);
}

/// A Send indication from [`CLIENT`] to `peer`, through the harness.
fn send_from_client(h: &mut Harness, peer: SocketAddr, payload: &[u8]) -> Outcome {
    let mut msg = builder(MessageClass::Indication, SEND);
    let transaction = msg.transaction_id();
    msg.add_attribute(&XorPeerAddress::new(peer, transaction))
        .unwrap();
    msg.add_attribute(&Data::new(payload)).unwrap();
    h.send(CLIENT, &msg.finish())
}

/// Whether ChannelData on `number` from [`CLIENT`] is relayed to `peer`.
fn channel_data_relayed(h: &mut Harness, number: u16, peer: SocketAddr) -> bool {
    let [hi, lo] = number.to_be_bytes();
    match h.send(CLIENT, &[hi, lo, 0x00, 0x03, b'a', b'b', b'c', 0]) {
        Outcome::Relay(_, to, payload) => to == peer && payload == b"abc",
        _ => false,
    }
}

/// What `peer`'s datagram to `relay` becomes.
fn from_peer(h: &mut Harness, relay: SocketAddr, peer: SocketAddr) -> Option<PeerAction> {
    let (mut buf, mut out) = ([0u8; 64], [0u8; 256]);
    buf[4..8].copy_from_slice(b"pong");
    h.server
        .handle_peer(h.now, relay, peer, &mut buf, 4, &mut out)
}

/// A reload whose peer filter denies a peer that has a permission and a channel ends both
/// at once, with the events their expiry emits (so the XDP maps lose them too), and their
/// timers; the allocation and its other, still allowed peer relay on.
#[test]
fn a_reload_denying_a_live_peer_ends_its_permission_and_channel_at_once() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let relay = allocate_for_an_hour(&mut h, CLIENT, &user);
    let client = tuple(CLIENT);
    let (denied, allowed) = (addr(PEER), addr("8.8.4.4:6000"));
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, denied));
    h.advance(Duration::from_secs(10));
    let t = h.now;
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4001, allowed));
    h.events();
    for (number, peer) in [(0x4000, denied), (0x4001, allowed)] {
        assert!(channel_data_relayed(&mut h, number, peer), "{peer} before");
        assert!(from_peer(&mut h, relay, peer).is_some(), "{peer} before");
    }
    assert!(matches!(
        send_from_client(&mut h, denied, b"hi"),
        Outcome::Relay(..)
    ));
    assert_eq!(h.server.gauges(), gauges(1, 2, 2));

    let mut reloaded = config();
    reloaded.peer_filter = PeerFilter::new(vec![], vec!["8.8.8.0/24".parse().unwrap()]);
    let cut = h.server.set_config(Arc::new(reloaded));
    assert_eq!(
        cut,
        ReloadCut {
            permissions: 1,
            channels: 1
        }
    );
    assert_eq!(
        h.events(),
        [
            Event::PermissionExpired {
                tuple: client,
                peer: denied.ip()
            },
            Event::ChannelExpired {
                tuple: client,
                number: 0x4000,
                peer: denied
            },
        ]
    );
    assert_eq!(h.server.gauges(), gauges(1, 1, 1));
    assert_eq!(
        (
            h.server.stats.permissions_cut_by_reload,
            h.server.stats.channels_cut_by_reload
        ),
        (1, 1)
    );
    // Their timers went with them: the next deadline is the allowed peer's permission.
    assert_eq!(h.server.poll_timeout(), Some(t + PERMISSION_LIFETIME));

    // Nothing more is relayed to or from the denied peer, by channel or Send indication.
    assert!(!channel_data_relayed(&mut h, 0x4000, denied));
    assert!(matches!(
        send_from_client(&mut h, denied, b"hi"),
        Outcome::Drop
    ));
    assert_eq!(from_peer(&mut h, relay, denied), None);
    // The allocation and the allowed peer are untouched.
    assert!(h.server.has_allocation(&client));
    assert!(channel_data_relayed(&mut h, 0x4001, allowed));
    assert_eq!(
        from_peer(&mut h, relay, allowed),
        Some(PeerAction::ChannelData {
            tuple: client,
            len: 8
        })
    );
    assert!(matches!(
        send_from_client(&mut h, allowed, b"hi"),
        Outcome::Relay(_, to, _) if to == allowed
    ));
    // The client cannot bind the denied peer again.
    let reply = h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, denied));
    assert_eq!(reply_code(&reply), Some(403));
    assert!(h.events().is_empty());
}

/// Removing an `allow_peers` entry is a deny too: the loopback peer it opened is cut, from
/// a permission without a channel as well; its Data indications stop.
#[test]
fn a_reload_removing_an_allow_peers_entry_cuts_the_peers_it_opened() {
    let mut open = config();
    open.peer_filter = PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
    let mut h = Harness::with(open, Quotas::new(10, 10));
    let user = rest_user("bob");
    let relay = allocate_for_an_hour(&mut h, CLIENT, &user);
    let (loopback, public) = (addr("127.0.0.1:9"), addr(PEER));
    for peer in [loopback, public] {
        let reply = h.authed(CLIENT, &user, CREATE_PERMISSION, peer_attr(peer));
        assert_eq!(reply_code(&reply), None, "{peer}");
    }
    h.events();
    assert!(matches!(
        from_peer(&mut h, relay, loopback),
        Some(PeerAction::DataIndication { .. })
    ));

    let cut = h.server.set_config(Arc::new(config()));
    assert_eq!(
        cut,
        ReloadCut {
            permissions: 1,
            channels: 0
        }
    );
    assert_eq!(
        h.events(),
        [Event::PermissionExpired {
            tuple: tuple(CLIENT),
            peer: loopback.ip()
        }]
    );
    assert_eq!(from_peer(&mut h, relay, loopback), None);
    assert!(matches!(
        send_from_client(&mut h, loopback, b"hi"),
        Outcome::Drop
    ));
    assert!(matches!(
        from_peer(&mut h, relay, public),
        Some(PeerAction::DataIndication { .. })
    ));
    assert_eq!(h.server.gauges(), gauges(1, 1, 0));
}

/// A reload that leaves every live peer allowed (the same file, another limit, or a deny
/// rule no live peer falls in) ends nothing and says nothing.
#[test]
fn a_reload_that_denies_no_live_peer_cuts_nothing() {
    let mut h = Harness::new();
    let user = rest_user("bob");
    let relay = allocate_for_an_hour(&mut h, CLIENT, &user);
    let peer = addr(PEER);
    h.authed(CLIENT, &user, CHANNEL_BIND, channel_attrs(0x4000, peer));
    h.events();
    let mut other_limit = config();
    other_limit.bandwidth_per_allocation = Some(1_000_000);
    let mut other_deny = config();
    other_deny.peer_filter = PeerFilter::new(vec![], vec!["8.8.4.0/24".parse().unwrap()]);
    for reloaded in [config(), other_limit, other_deny] {
        assert_eq!(
            h.server.set_config(Arc::new(reloaded)),
            ReloadCut::default()
        );
        assert!(h.events().is_empty());
        assert_eq!(h.server.gauges(), gauges(1, 1, 1));
        assert!(channel_data_relayed(&mut h, 0x4000, peer));
        assert!(from_peer(&mut h, relay, peer).is_some());
    }
    assert_eq!(h.server.stats.permissions_cut_by_reload, 0);
}
