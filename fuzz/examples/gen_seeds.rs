//! Writes the committed seed corpora under `fuzz/seeds/<target>/`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds [OUT_DIR]`
//! (a plain build: no nightly, no sanitizer). Deterministic: the same files every run, so
//! regenerating shows no diff unless the generator or the protocol changed.
//!
//! * `stun_codec`: RFC 5769 §2.1–2.4 and RFC 8489 App. B.1, and every request, indication
//!   and response a TURN client and server exchange, built with turnpike-client's
//!   `Request` and the core's `wire::Response`.
//! * `server`: `arbitrary` inputs found by a seeded random search (zero-biased, so most
//!   choices are the valid variant 0) that reach allocations, permissions, channels,
//!   relaying both ways, refreshes and expiry; the search keeps the smallest input for
//!   each new depth record.
//! * `config`: the repository's `config.example.toml` and a few small variants.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use turnpike::proto::auth::{rest_password, NonceKey};
use turnpike::proto::wire::*;
use turnpike_fuzz::msg::{self, Auth, Trailer};
use turnpike_fuzz::server::{Harness, Input, NONCE_KEY, REALM, SECRET, UNIX_START};

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

// RFC 8489 Appendix B.1 (with erratum 6268): SHA-256 integrity, USERHASH, PASSWORD-ALGORITHM.
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

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn codec_seeds(dir: &Path) {
    write(dir, "rfc5769-2.1-request.bin", &RFC5769_REQUEST);
    write(dir, "rfc5769-2.2-response-ipv4.bin", &RFC5769_RESPONSE_V4);
    write(dir, "rfc5769-2.3-response-ipv6.bin", &RFC5769_RESPONSE_V6);
    write(dir, "rfc5769-2.4-long-term.bin", &RFC5769_LONG_TERM);
    write(dir, "rfc8489-b.1-sha256.bin", &RFC8489_B1);
    let _ = RFC5769_SHORT_TERM_PASSWORD;

    let client: SocketAddr = "198.51.100.1:40000".parse().unwrap();
    let peer: SocketAddr = "93.184.216.34:5000".parse().unwrap();
    let peer6: SocketAddr = "[2606:4700::1111]:9000".parse().unwrap();
    let username = format!("{}:u0", UNIX_START + 86_400);
    let auth = Auth {
        password: rest_password(SECRET, &username),
        username,
        realm: REALM.into(),
        nonce: NonceKey::new(NONCE_KEY).issue(client, UNIX_START),
        sha256: false,
    };
    let auth256 = Auth {
        sha256: true,
        ..auth.clone()
    };
    let t = Trailer::default();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("binding.bin", msg::request(BINDING, None, t, |_| {})),
        (
            "allocate-unauth.bin",
            msg::request(ALLOCATE, None, t, |m| {
                m.add(&RequestedTransport::new(PROTOCOL_UDP));
            }),
        ),
        (
            "allocate.bin",
            msg::request(ALLOCATE, Some(&auth), t, |m| {
                m.add(&RequestedTransport::new(PROTOCOL_UDP));
                m.add(&Lifetime::new(1200));
                m.add(&DontFragment::new());
            }),
        ),
        (
            "allocate-ipv6-even-port-sha256.bin",
            msg::request(ALLOCATE, Some(&auth256), t, |m| {
                m.add(&RequestedTransport::new(PROTOCOL_UDP));
                m.add(&RequestedAddressFamily::new(AddressFamily::IPV6));
                m.add(&EvenPort::new(true));
            }),
        ),
        (
            "allocate-reservation-token.bin",
            msg::request(ALLOCATE, Some(&auth), t, |m| {
                m.add(&RequestedTransport::new(PROTOCOL_UDP));
                m.add(&ReservationToken::new(0xfeed));
            }),
        ),
        (
            "refresh.bin",
            msg::request(REFRESH, Some(&auth), t, |m| {
                m.add(&Lifetime::new(600));
            }),
        ),
        (
            "refresh-delete.bin",
            msg::request(REFRESH, Some(&auth), t, |m| {
                m.add(&Lifetime::new(0));
            }),
        ),
        (
            "create-permission.bin",
            msg::request(CREATE_PERMISSION, Some(&auth), t, |m| {
                m.peer(peer);
                m.peer("1.1.1.1:9000".parse().unwrap());
            }),
        ),
        (
            "create-permission-ipv6.bin",
            msg::request(CREATE_PERMISSION, Some(&auth), t, |m| {
                m.peer(peer6);
            }),
        ),
        (
            "channel-bind.bin",
            msg::request(CHANNEL_BIND, Some(&auth), t, |m| {
                m.add(&ChannelNumber::new(0x4000));
                m.peer(peer);
            }),
        ),
        (
            "send.bin",
            msg::indication(SEND, t, |m| {
                m.peer(peer);
                m.add(&Data::new(b"hello, peer"));
            }),
        ),
        (
            "data-indication.bin",
            msg::indication(DATA, t, |m| {
                m.peer(peer);
                m.add(&Data::new(b"hello, client"));
            }),
        ),
        (
            "unknown-attribute.bin",
            msg::request(CREATE_PERMISSION, Some(&auth), t, |m| {
                m.add(&stun_types::attribute::RawAttribute::new(
                    AttributeType::new(0x7f00),
                    &[1, 2, 3],
                ));
            }),
        ),
        (
            "channel-data.bin",
            msg::channel_data(0x4000, 5, b"hello", 3),
        ),
        (
            "channel-data-7fff-empty.bin",
            msg::channel_data(0x7fff, 0, b"", 0),
        ),
    ];
    for (name, bytes) in seeds {
        write(dir, name, &bytes);
    }
    // Responses, as the server writes them.
    let request = msg::request(ALLOCATE, Some(&auth), t, |m| {
        m.add(&RequestedTransport::new(PROTOCOL_UDP));
    });
    let request = parse_stun(&request).unwrap();
    let key = turnpike::proto::auth::LongTermKey::new(
        turnpike::proto::auth::PasswordAlgorithm::Md5,
        &auth.username,
        REALM,
        &auth.password,
    );
    let mut out = vec![0u8; 1024];
    let mut ok = Response::success(ALLOCATE, request.transaction_id(), &mut out);
    ok.add(&XorRelayedAddress::new(
        "192.0.2.10:50000".parse().unwrap(),
        request.transaction_id(),
    ));
    ok.add(&Lifetime::new(600));
    ok.add(&XorMappedAddress::new(client, request.transaction_id()));
    ok.add_software(Some("turnpike"));
    let len = ok.finish_signed(&key, IntegrityAlgorithm::Sha1);
    write(dir, "allocate-success.bin", &out[..len]);
    let mut out = vec![0u8; 1024];
    let mut challenge = Response::error(ALLOCATE, request.transaction_id(), 401, &mut out);
    challenge.add(&Realm::new(REALM).unwrap());
    challenge.add(&Nonce::new(&auth.nonce).unwrap());
    let len = challenge.finish();
    write(dir, "allocate-401.bin", &out[..len]);
}

/// xorshift64*, so the search is deterministic without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A hand-written session that must reach every depth: a self-test of the harness.
fn scripted() -> Input {
    use turnpike_fuzz::server::{ChannelChoice, Cred, Extra, NonceChoice, Op, Setup, Signed, Then};
    let who = || Signed {
        client: 0,
        cred: Cred::Rest(0),
        nonce: NonceChoice::Fresh,
        extra: Extra::None,
    };
    let ops = vec![
        Op::Allocate {
            who: who(),
            transport: 0,
            lifetime: None,
            family: None,
            additional: None,
            draft: false,
            even_port: None,
            token: None,
            dont_fragment: false,
            then: Then::Accept { token: false },
        },
        Op::CreatePermission {
            who: who(),
            peer: 0,
            more: vec![2],
        },
        Op::ChannelBind {
            who: who(),
            channel: ChannelChoice::Known(0),
            peer: 1,
        },
        Op::Send {
            client: 0,
            peer: 0,
            len: 10,
            fill: 1,
            no_data: false,
        },
        Op::ChannelData {
            client: 0,
            channel: ChannelChoice::Known(0),
            len: 10,
            declared_delta: 0,
            pad: 0,
        },
        Op::Peer {
            relay: 0,
            peer: 0,
            len: 10,
            fill: 2,
        },
        Op::Peer {
            relay: 0,
            peer: 1,
            len: 10,
            fill: 2,
        },
        Op::Refresh {
            who: who(),
            lifetime: Some(700),
        },
        Op::Advance { secs: 800 },
    ];
    Input {
        setup: Setup::default(),
        ops,
    }
}

fn server_seeds(dir: &Path) {
    let depth = Harness::run(&scripted());
    eprintln!("scripted session: {depth:?}");
    assert!(depth.channels > 0 && depth.relayed_to_client > 1 && depth.expired > 0);
    let mut rng = Rng(0x7475_726e_7069_6b65);
    // Records per depth dimension: (value, input bytes).
    let mut best: Vec<(&str, u32, Vec<u8>)> = [
        "allocations",
        "permissions",
        "channels",
        "to-peer",
        "to-client",
        "refreshed",
        "expired",
    ]
    .iter()
    .map(|n| (*n, 0, Vec::new()))
    .collect();
    // Hill climbing on a total score, starting from random zero-biased bytes: mutate the
    // current input (flip, zero, insert, delete, splice a chunk of itself), keep the mutant
    // when its score does not drop. Each depth dimension records its smallest input.
    let random_input = |rng: &mut Rng| -> Vec<u8> {
        let len = 32 + (rng.next() % 200) as usize;
        (0..len)
            .map(|_| {
                let r = rng.next();
                if r % 10 < 7 {
                    0
                } else {
                    (r >> 8) as u8 % 8
                }
            })
            .collect()
    };
    let evaluate = |bytes: &[u8]| -> Option<[u32; 7]> {
        let input = Input::arbitrary_take_rest(Unstructured::new(bytes)).ok()?;
        let d = Harness::run(&input);
        Some([
            d.allocations,
            d.permissions,
            d.channels,
            d.relayed_to_peer,
            d.relayed_to_client,
            d.refreshed,
            d.expired,
        ])
    };
    let score = |v: &[u32; 7]| -> u32 { v.iter().map(|x| (*x).min(3)).sum() };
    for _restart in 0..8 {
        let mut current = random_input(&mut rng);
        let mut current_score = evaluate(&current).map_or(0, |v| score(&v));
        for _ in 0..6_000 {
            let mut bytes = current.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % (bytes.len() + 1);
                match rng.next() % 6 {
                    0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                    1 if at < bytes.len() => bytes[at] = rng.next() as u8 % 8,
                    2 => bytes.insert(at, 0),
                    3 if at < bytes.len() && bytes.len() > 16 => {
                        bytes.remove(at);
                    }
                    4 => {
                        let from = (rng.next() as usize) % bytes.len().max(1);
                        let n = (rng.next() as usize % 48).min(bytes.len() - from.min(bytes.len()));
                        let chunk: Vec<u8> = bytes[from..from + n].to_vec();
                        bytes.splice(at..at, chunk);
                    }
                    _ => {}
                }
            }
            if bytes.len() > 1024 {
                continue;
            }
            let Some(values) = evaluate(&bytes) else {
                continue;
            };
            let s = score(&values);
            for (slot, value) in best.iter_mut().zip(values) {
                let value = value.min(3);
                if value > slot.1 || (value == slot.1 && value > 0 && bytes.len() < slot.2.len()) {
                    slot.1 = value;
                    slot.2 = bytes.clone();
                }
            }
            if s >= current_score {
                current = bytes;
                current_score = s;
            }
        }
        eprintln!("restart: score {current_score}, {} bytes", current.len());
    }
    for (name, value, bytes) in best {
        if value > 0 {
            write(dir, &format!("deep-{name}.bin"), &bytes);
        }
        eprintln!("server seed {name}: {value} ({} bytes)", bytes.len());
    }
}

fn config_seeds(dir: &Path, repo: &Path) {
    if let Ok(example) = std::fs::read(repo.join("config.example.toml")) {
        write(dir, "config.example.toml", &example);
    }
    write(dir, "empty.toml", b"");
    write(
        dir,
        "small.toml",
        br#"[server]
listen = ["127.0.0.1:3478", "[::1]:3478"]
realm = "example.org"
software = ""
workers = 2

[auth]
secrets = ["s3cret", "older"]
separator = "-"

[auth.users]
alice = "wonderland"

[relay]
ips = ["192.0.2.10"]
external_ip = "203.0.113.7"
min_port = 50000
max_port = 50100
allow_peers = ["10.0.0.0/8", "::1"]
deny_peers = ["198.51.100.0/24"]

[limits]
default_lifetime_secs = 300
max_lifetime_secs = 600
max_allocations = 10
max_allocations_per_user = 2
max_permissions_per_allocation = 8
max_channels_per_allocation = 8
bandwidth_per_allocation = 125000
"#,
    );
    write(
        dir,
        "api-tls.toml",
        br#"[api]
listen = "0.0.0.0:8080"
tokens = ["tok-1234567890abcdef"]
uris = ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
max_ttl_secs = 86400
cors_origins = ["https://app.example.com"]

[tls]
listen = ["0.0.0.0:5349"]
cert = "/etc/turnpike/cert.pem"
key = "/etc/turnpike/key.pem"
"#,
    );
}

/// TCP streams for `stream_framer`: byte 0 picks the read sizes (0 = one read), byte 1
/// seeds them, then STUN messages and padded ChannelData frames back to back.
fn stream_seeds(dir: &Path, codec: &Path) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(codec)
        .expect("codec seeds")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    let mut stream = Vec::new();
    for name in &names {
        let bytes = std::fs::read(name).expect("read seed");
        stream.extend_from_slice(&bytes);
        if (0x40..=0x7F).contains(&bytes[0]) {
            stream.resize(stream.len().next_multiple_of(4), 0);
        }
    }
    let allocate = std::fs::read(codec.join("allocate.bin")).expect("allocate seed");
    let channel = msg::channel_data(0x4001, 5, b"hello", 3);
    let mut small = allocate.clone();
    small.extend_from_slice(&channel);
    small.extend_from_slice(&allocate[..30]); // a partial message at the end
    for (name, cut, seed, body) in [
        ("all-one-read.bin", 0u8, 0u8, &stream),
        ("all-small-reads.bin", 3, 7, &stream),
        ("all-large-reads.bin", 200, 1, &stream),
        ("allocate-channel-partial.bin", 2, 3, &small),
    ] {
        let mut bytes = vec![cut, seed];
        bytes.extend_from_slice(body);
        write(dir, name, &bytes);
    }
    let mut garbage = vec![1u8, 0];
    garbage.extend_from_slice(&channel);
    garbage.extend_from_slice(b"\x80GET / HTTP/1.1\r\n\r\n");
    write(dir, "channel-then-garbage.bin", &garbage);
}

/// `gen_seeds --pick-server CORPUS_DIR`: copies into `seeds/server/` the smallest corpus
/// entry (at most 1 KiB) reaching each depth dimension, and the one with the best total.
fn pick_server(corpus: &Path, out: &Path) {
    let names = [
        "allocations",
        "permissions",
        "channels",
        "to-peer",
        "to-client",
        "refreshed",
        "expired",
    ];
    let mut best: Vec<Option<(usize, PathBuf)>> = vec![None; names.len()];
    let mut best_total: Option<(u32, usize, PathBuf)> = None;
    for entry in std::fs::read_dir(corpus).expect("corpus dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        if bytes.len() > 1024 {
            continue;
        }
        let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) else {
            continue;
        };
        let d = Harness::run(&input);
        let values = [
            d.allocations,
            d.permissions,
            d.channels,
            d.relayed_to_peer,
            d.relayed_to_client,
            d.refreshed,
            d.expired,
        ];
        for (slot, value) in best.iter_mut().zip(values) {
            if value > 0 && slot.as_ref().is_none_or(|(len, _)| bytes.len() < *len) {
                *slot = Some((bytes.len(), path.clone()));
            }
        }
        let total: u32 = values.iter().map(|v| (*v).min(4)).sum();
        if best_total
            .as_ref()
            .is_none_or(|(t, len, _)| total > *t || (total == *t && bytes.len() < *len))
        {
            best_total = Some((total, bytes.len(), path.clone()));
        }
    }
    for (name, slot) in names.iter().zip(best) {
        if let Some((len, path)) = slot {
            eprintln!("corpus-{name}: {} ({len} bytes)", path.display());
            std::fs::copy(&path, out.join(format!("corpus-{name}.bin"))).expect("copy");
        }
    }
    if let Some((total, len, path)) = best_total {
        eprintln!("corpus-deepest: score {total}, {len} bytes");
        std::fs::copy(&path, out.join("corpus-deepest.bin")).expect("copy");
    }
}

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--pick-server") {
        let corpus = PathBuf::from(args.get(2).expect("--pick-server CORPUS_DIR"));
        pick_server(&corpus, &manifest.join("seeds/server"));
        return;
    }
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("seeds"));
    for target in ["stun_codec", "server", "config", "stream_framer"] {
        std::fs::create_dir_all(out.join(target)).expect("create seed dir");
    }
    codec_seeds(&out.join("stun_codec"));
    config_seeds(&out.join("config"), manifest.parent().expect("repo root"));
    stream_seeds(&out.join("stream_framer"), &out.join("stun_codec"));
    server_seeds(&out.join("server"));
}
