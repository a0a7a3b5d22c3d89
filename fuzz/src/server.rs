//! The `server` target: one sans-IO [`Server`] driven by an `arbitrary`-decoded sequence of
//! operations from several clients and peers on a virtual clock, checked after every step
//! against a model built only from what the public API shows.
//!
//! Structured operations (Allocate, Refresh, CreatePermission, ChannelBind, Send,
//! ChannelData) build well-formed, correctly signed messages from fuzz-chosen fields, so the
//! fuzzer reaches allocations, permissions and channels instead of dying at MESSAGE-INTEGRITY;
//! `Raw` and `Replay` feed arbitrary or mutated bytes. Enum variant 0 and zero-valued fields
//! are always the "valid" choice, so short inputs already walk the happy path.
//!
//! Invariants (a violation panics, which libFuzzer reports as a crash):
//! * every reply is a well-formed STUN response to the request's method and transaction;
//! * an Allocate is only handed to the driver, and a TURN request only succeeds, with valid
//!   credentials and a fresh nonce minted for that client address;
//! * quotas: `quotas.total()` equals live plus pending allocations; a new Allocate is only
//!   handed out under the current total and per-user limits;
//! * `poll_timeout()` is at or before the earliest model expiry, `None` iff no allocation;
//!   after `handle_timeout(now)` nothing due remains; `RelayReleased` names only live relays,
//!   once, and only when expired, deleted (Refresh 0) or cleared;
//! * data goes only to peers outside the deny list and the server's own address (to its own
//!   relay IPs only on relay ports), with a permission the client asked for, on the client's
//!   own allocation, over a channel bound to that peer; peer data goes back only to the
//!   allocation's client;
//! * the per-allocation bandwidth cap is never exceeded; `AllocationEnded` reports the bytes
//!   relayed each way, the start time, and why it ended;
//! * granted lifetimes lie in `[default, max]`; gauges agree with the allocation count.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use stun_types::attribute::AttributeStaticType;
use turnpike::proto::auth::{rest_password, Credentials, NonceKey, Password};
use turnpike::proto::peer_filter::PeerFilter;
use turnpike::proto::server::{CHANNEL_LIFETIME, PERMISSION_LIFETIME};
use turnpike::proto::wire::{self, *};
use turnpike::proto::{
    ClientAction, EndReason, Error, Event, FiveTuple, PeerAction, Quotas, Server, ServerConfig,
    Transport,
};

use crate::msg::{self, Auth, Trailer};

pub const SECRET: &str = "north";
pub const OLD_SECRET: &str = "old-secret";
pub const REALM: &str = "turnpike.fuzz";
pub const UNIX_START: u64 = 1_700_000_000;
pub const NONCE_LIFETIME: u64 = 600;
pub const DEFAULT_LIFETIME: u64 = 600;
pub const MAX_LIFETIME: u64 = 3600;
pub const NONCE_KEY: [u8; 32] = [7; 32];
/// Longest payload a structured operation sends.
const MAX_PAYLOAD: usize = 1500;
/// Operations run per input; more only makes runs slower.
const MAX_OPS: usize = 200;

const SERVER_V4: SocketAddr = addr4([192, 0, 2, 10], 3478);
/// A public address the server also listens on: only `own_addresses` keeps it from being
/// a peer (the default deny list does not cover it).
const SERVER_PUBLIC: SocketAddr = addr4([93, 184, 216, 50], 3478);

const fn addr4(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), port)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("valid address")
}

fn server_v6() -> SocketAddr {
    sa("[2001:db8::10]:3478")
}

/// The clients: same IP with two ports, the same address over TCP, TLS, and IPv6.
pub fn clients() -> Vec<FiveTuple> {
    let t = |client: &str, transport| {
        let client = sa(client);
        FiveTuple {
            client,
            server: if client.is_ipv4() {
                SERVER_V4
            } else {
                server_v6()
            },
            transport,
        }
    };
    vec![
        t("198.51.100.1:40000", Transport::Udp),
        t("198.51.100.1:40001", Transport::Udp),
        t("198.51.100.2:40000", Transport::Tcp),
        t("[2001:db8::1]:40000", Transport::Udp),
        t("198.51.100.3:5000", Transport::Tls),
        t("198.51.100.1:40000", Transport::Tcp),
    ]
}

/// Peers: public ones, and every deny-list bypass shape we know of.
pub fn peers() -> Vec<SocketAddr> {
    [
        "93.184.216.34:5000",
        "93.184.216.34:5001",
        "1.1.1.1:9000",
        "[2606:4700::1111]:9000",
        "[::ffff:93.184.216.34]:5000",
        "93.184.216.50:3478", // the server's own public listening address
        "93.184.216.50:3479", // same IP, another port: a legitimate peer
        "127.0.0.1:5000",
        "10.0.0.1:5000",
        "[::ffff:127.0.0.1]:5000",
        "[::ffff:10.0.0.1]:5000",
        "[::127.0.0.1]:5000",
        "0.0.0.0:5000",
        "[64:ff9b::7f00:1]:5000",
        "[64:ff9b::a00:1]:5000",
        "[2002:7f00:1::]:5000",
        "[2002:a00:1::1]:5000",
        "224.0.0.1:5000",
        "255.255.255.255:5000",
        "169.254.169.254:80",
        "100.64.0.1:5000",
        "192.168.1.1:5000",
        "[::1]:5000",
        "[::]:5000",
        "[fe80::1]:5000",
        "[fc00::1]:5000",
        "[ff02::1]:5000",
        "192.0.2.10:3478", // the server's own listening address
        "[2001:db8::10]:3478",
    ]
    .iter()
    .map(|s| sa(s))
    .collect()
}

/// Independent of turnpike's `PeerFilter`: the peers data may ever be relayed to.
fn expected_allowed(peer: SocketAddr, open_private: bool) -> bool {
    if peer == SERVER_PUBLIC {
        return false;
    }
    let public: [IpAddr; 5] = [
        "93.184.216.34".parse().unwrap(),
        "93.184.216.50".parse().unwrap(),
        "1.1.1.1".parse().unwrap(),
        "2606:4700::1111".parse().unwrap(),
        "::ffff:93.184.216.34".parse().unwrap(),
    ];
    if public.contains(&peer.ip()) {
        return true;
    }
    // With `allow_peers = ["10.0.0.0/8"]`, 10.0.0.1 in any embedding is allowed.
    let ten: [IpAddr; 4] = [
        "10.0.0.1".parse().unwrap(),
        "::ffff:10.0.0.1".parse().unwrap(),
        "64:ff9b::a00:1".parse().unwrap(),
        "2002:a00:1::1".parse().unwrap(),
    ];
    open_private && ten.contains(&peer.ip())
}

/// Channel numbers worth trying: range edges and just outside them.
const CHANNELS: [u16; 8] = [
    0x4000, 0x4001, 0x4FFF, 0x5000, 0x7FFF, 0x3FFF, 0x8000, 0xFFFF,
];

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub setup: Setup,
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Default)]
pub struct Setup {
    /// Bytes per second per allocation and direction, `None` = unlimited.
    pub bandwidth: Option<u16>,
    /// Relay IPv6 as well as IPv4.
    pub relay_ipv6: bool,
    /// Advertise 93.184.216.99 / 2606:4700::99 in XOR-RELAYED-ADDRESS (1:1 NAT).
    pub external_ip: bool,
    /// Redirect every Allocate with 300 Try Alternate.
    pub alternate: bool,
    /// `allow_peers = ["10.0.0.0/8"]`.
    pub open_private: bool,
    /// 0 = 6 allocations in all, else `n % 8`.
    pub max_total: u8,
    /// 0 = 3 per user, else `n % 5`.
    pub max_per_user: u8,
    /// 0 = 4, else `n % 8`.
    pub max_permissions: u8,
    /// 0 = 4, else `n % 8`.
    pub max_channels: u8,
    pub no_software: bool,
}

/// Who signs a request.
#[derive(Arbitrary, Debug, Clone)]
pub enum Cred {
    /// A REST credential valid for a day for user `u{n % 3}`.
    Rest(u8),
    /// The same, signed with the older of the two secrets.
    RestOldSecret(u8),
    /// Static users alice (false) and bob (true).
    Static(bool),
    /// A REST credential that expired a second ago.
    RestExpired,
    /// A REST credential expiring exactly now (`expiry == unix_now` is expired).
    RestExpiringNow,
    UnknownUser,
    WrongPassword,
    WrongRealm,
    Custom {
        username: String,
        password: String,
    },
}

#[derive(Arbitrary, Debug, Clone)]
pub enum NonceChoice {
    /// Minted now for this client.
    Fresh,
    /// Minted now for another client (valid when it has the same IP).
    OtherClient(u8),
    /// Minted `NONCE_LIFETIME` seconds ago (just stale).
    Expired,
    /// Minted `NONCE_LIFETIME - 1` seconds ago (just fresh).
    AlmostExpired,
    /// Minted further in the future than a fleet's clocks may differ.
    Future,
    /// No NONCE attribute at all.
    Missing,
    Garbage(String),
}

/// Changes applied to a structured request.
#[derive(Arbitrary, Debug, Clone)]
pub enum Extra {
    None,
    Sha256,
    NoFingerprint,
    /// An unknown attribute (comprehension-required when `< 0x8000`).
    Attribute(u16, Vec<u8>),
    Software(String),
    /// XORs one byte of the finished message.
    Corrupt {
        at: u16,
        xor: u8,
    },
    /// No MESSAGE-INTEGRITY at all (an unauthenticated request).
    Unsigned,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Then {
    /// Bind a relay and accept; `token` hands back a RESERVATION-TOKEN.
    Accept { token: bool },
    /// No relay port (508).
    RejectNoPort,
    /// No relay address of that family (440).
    RejectNoAddress,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ChannelChoice {
    Known(u8),
    Number(u16),
}

impl ChannelChoice {
    fn number(&self) -> u16 {
        match self {
            ChannelChoice::Known(n) => CHANNELS[*n as usize % CHANNELS.len()],
            ChannelChoice::Number(n) => *n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Signed {
    pub client: u8,
    pub cred: Cred,
    pub nonce: NonceChoice,
    pub extra: Extra,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    Allocate {
        who: Signed,
        /// REQUESTED-TRANSPORT: 0 = UDP (17), 1 = none, else that protocol number.
        transport: u8,
        lifetime: Option<u32>,
        /// REQUESTED-ADDRESS-FAMILY: `Some(true)` = IPv6.
        family: Option<bool>,
        /// ADDITIONAL-ADDRESS-FAMILY: `Some(true)` = IPv6; draft codepoint when `draft`.
        additional: Option<bool>,
        draft: bool,
        even_port: Option<bool>,
        token: Option<u64>,
        dont_fragment: bool,
        then: Then,
    },
    Refresh {
        who: Signed,
        lifetime: Option<u32>,
    },
    CreatePermission {
        who: Signed,
        peer: u8,
        /// Further XOR-PEER-ADDRESS attributes.
        more: Vec<u8>,
    },
    ChannelBind {
        who: Signed,
        channel: ChannelChoice,
        peer: u8,
    },
    Send {
        client: u8,
        peer: u8,
        len: u16,
        fill: u8,
        no_data: bool,
    },
    ChannelData {
        client: u8,
        channel: ChannelChoice,
        len: u16,
        /// Added to the header's length field (wrapping), 0 = correct.
        declared_delta: u16,
        pad: u8,
    },
    Binding {
        client: u8,
        /// CHANGE-REQUEST value, if any.
        change: Option<u32>,
        unknown: Option<u16>,
        fingerprint: bool,
    },
    Raw {
        client: u8,
        bytes: Vec<u8>,
    },
    /// Re-sends an earlier message, possibly from another client and damaged.
    Replay {
        client: u8,
        index: u8,
        corrupt: Option<(u16, u8)>,
        truncate: Option<u16>,
    },
    Peer {
        relay: u8,
        peer: u8,
        len: u16,
        fill: u8,
    },
    Advance {
        secs: u16,
    },
    AdvanceMs {
        ms: u16,
    },
    /// Moves only the wall clock (NTP step): credentials and nonces see it, lifetimes don't.
    UnixJump {
        secs: i16,
    },
    SetLimits {
        total: u8,
        per_user: u8,
    },
    /// The client's TCP/TLS connection closed.
    CloseConnection {
        client: u8,
    },
    Clear,
}

/// The model's view of one allocation.
#[derive(Debug)]
struct Alloc {
    tuple: FiveTuple,
    /// Local relay addresses still open (one per family).
    relays: Vec<SocketAddr>,
    username: Option<String>,
    quota_key: Option<String>,
    created: Instant,
    expires: Instant,
    /// Peer IP → latest permission expiry the client asked for (an over-approximation: a
    /// CreatePermission refused with 508 may have installed some of its peers).
    perms: HashMap<IpAddr, Instant>,
    /// (channel, peer) pairs ever bound successfully.
    channels: HashSet<(u16, SocketAddr)>,
    /// Bytes relayed: [to peer, to client].
    bytes: [u64; 2],
}

/// What a reply says, parsed once.
#[derive(Debug, Default)]
struct ReplyInfo {
    success: bool,
    code: Option<u16>,
    lifetime: Option<u32>,
    relayed: Vec<SocketAddr>,
}

/// Why a message should or should not authenticate, for structured requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Valid credentials and nonce: may succeed (other checks may still refuse it).
    MaySucceed,
    /// Bad credentials, nonce or integrity: must never succeed.
    MustFail,
    /// Unknown (raw bytes, replays, custom credentials).
    Unknown,
}

/// Why allocations may be freed during the current operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frees {
    None,
    Expired,
    Deleted(FiveTuple),
    All,
}

pub struct Harness {
    setup: Setup,
    config: Arc<ServerConfig>,
    quotas: Arc<Quotas>,
    server: Server,
    clients: Vec<FiveTuple>,
    peers: Vec<SocketAddr>,
    start: Instant,
    now: Instant,
    unix: u64,
    out: Vec<u8>,
    max_total: usize,
    max_per_user: usize,
    /// Live allocations.
    allocs: HashMap<FiveTuple, Alloc>,
    /// Live relay address → its allocation.
    relay_owner: HashMap<SocketAddr, FiveTuple>,
    /// Every relay address ever handed out, live or freed.
    relays_ever: Vec<SocketAddr>,
    next_port: u16,
    history: Vec<Vec<u8>>,
    frees: Frees,
    /// Counters for the seed generator: how deep an input got.
    pub depth: Depth,
    /// `TURNPIKE_FUZZ_TRACE=1` prints every operation (for reading a crash).
    trace: bool,
}

/// How far an input got; the seed generator keeps inputs that reach far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Depth {
    pub allocations: u32,
    pub permissions: u32,
    pub channels: u32,
    pub relayed_to_peer: u32,
    pub relayed_to_client: u32,
    pub refreshed: u32,
    pub expired: u32,
}

impl Harness {
    pub fn new(setup: Setup) -> Self {
        msg::reset_transaction_ids();
        let pick = |n: u8, zero: usize, modulo: usize| {
            if n == 0 {
                zero
            } else {
                n as usize % modulo
            }
        };
        let max_total = pick(setup.max_total, 6, 8);
        let max_per_user = pick(setup.max_per_user, 3, 5);
        let allow = if setup.open_private {
            vec!["10.0.0.0/8".parse().unwrap()]
        } else {
            vec![]
        };
        let credentials = Credentials {
            secrets: vec![Password(SECRET.into()), Password(OLD_SECRET.into())],
            separator: ':',
            static_users: vec![
                ("alice".into(), Password("wonderland".into())),
                ("bob".into(), Password("builder".into())),
            ],
        };
        let config = Arc::new(ServerConfig {
            software: (!setup.no_software).then(|| "turnpike".into()),
            nonce_lifetime: Duration::from_secs(NONCE_LIFETIME),
            default_lifetime: Duration::from_secs(DEFAULT_LIFETIME),
            max_lifetime: Duration::from_secs(MAX_LIFETIME),
            max_permissions_per_allocation: pick(setup.max_permissions, 4, 8),
            max_channels_per_allocation: pick(setup.max_channels, 4, 8),
            bandwidth_per_allocation: setup.bandwidth.map(u64::from),
            peer_filter: PeerFilter::new(allow, vec![]),
            own_addresses: vec![SERVER_V4, server_v6(), SERVER_PUBLIC],
            external_ips: if setup.external_ip {
                vec![
                    (
                        Some(sa("[2001:db8::10]:0").ip()),
                        sa("[2606:4700::99]:0").ip(),
                    ),
                    (None, IpAddr::V4(Ipv4Addr::new(93, 184, 216, 99))),
                ]
            } else {
                vec![]
            },
            alternate_servers: if setup.alternate {
                vec![sa("203.0.113.1:3478"), sa("[2001:db8::99]:3478")]
            } else {
                vec![]
            },
            relay_ipv6: setup.relay_ipv6,
            ..ServerConfig::new(REALM, credentials, NonceKey::new(NONCE_KEY))
        });
        let quotas = Arc::new(Quotas::new(max_total, max_per_user));
        let now = Instant::now();
        Self {
            server: Server::new(config.clone(), quotas.clone(), [7; 32]),
            config,
            quotas,
            clients: clients(),
            peers: peers(),
            start: now,
            now,
            unix: UNIX_START,
            out: vec![0; 70_000],
            max_total,
            max_per_user,
            allocs: HashMap::new(),
            relay_owner: HashMap::new(),
            relays_ever: Vec::new(),
            next_port: 50_000,
            history: Vec::new(),
            frees: Frees::None,
            setup,
            depth: Depth::default(),
            trace: std::env::var_os("TURNPIKE_FUZZ_TRACE").is_some(),
        }
    }

    /// Runs a whole input, then frees everything and checks nothing leaked.
    pub fn run(input: &Input) -> Depth {
        let mut harness = Harness::new(input.setup.clone());
        if harness.trace {
            eprintln!("{:?}", input.setup);
        }
        for op in input.ops.iter().take(MAX_OPS) {
            harness.step(op);
        }
        harness.finish()
    }

    pub fn finish(mut self) -> Depth {
        self.frees = Frees::All;
        self.server.clear();
        self.drain_events();
        assert!(self.allocs.is_empty(), "clear() left allocations behind");
        assert_eq!(self.server.allocation_count(), 0);
        assert_eq!(self.quotas.total(), 0, "quota slots leaked");
        assert_eq!(self.server.poll_timeout(), None);
        self.depth
    }

    fn client(&self, n: u8) -> FiveTuple {
        self.clients[n as usize % self.clients.len()]
    }

    /// A table peer, or (past the table) the relayed address of an allocation.
    fn peer(&self, n: u8) -> SocketAddr {
        let n = n as usize;
        if n < self.peers.len() || self.relays_ever.is_empty() {
            return self.peers[n % self.peers.len()];
        }
        advertised(&self.config, self.relays_ever[n % self.relays_ever.len()])
    }

    fn rest_username(&self, user: u8, expiry: u64) -> String {
        format!("{expiry}:u{}", user % 3)
    }

    /// Credentials for `cred` and whether they are valid right now (`None`: unknown).
    fn credentials(&self, cred: &Cred) -> (String, String, String, Option<bool>) {
        let day = self.unix.saturating_add(86_400);
        let rest = |user: String, secret: &str| {
            let password = rest_password(secret, &user);
            (user, password, REALM.to_owned())
        };
        let (user, password, realm) = match cred {
            Cred::Rest(n) => rest(self.rest_username(*n, day), SECRET),
            Cred::RestOldSecret(n) => rest(self.rest_username(*n, day), OLD_SECRET),
            Cred::Static(false) => ("alice".into(), "wonderland".into(), REALM.into()),
            Cred::Static(true) => ("bob".into(), "builder".into(), REALM.into()),
            Cred::RestExpired => rest(self.rest_username(0, self.unix - 1), SECRET),
            Cred::RestExpiringNow => rest(self.rest_username(1, self.unix), SECRET),
            Cred::UnknownUser => ("mallory".into(), "wonderland".into(), REALM.into()),
            Cred::WrongPassword => ("alice".into(), "guess".into(), REALM.into()),
            Cred::WrongRealm => ("alice".into(), "wonderland".into(), "other.realm".into()),
            Cred::Custom { username, password } => {
                return (username.clone(), password.clone(), REALM.into(), None)
            }
        };
        let valid = matches!(
            cred,
            Cred::Rest(_) | Cred::RestOldSecret(_) | Cred::Static(_)
        );
        (user, password, realm, Some(valid))
    }

    fn nonce(&self, choice: &NonceChoice, client: SocketAddr) -> (Option<String>, bool) {
        let key = &self.config.nonce_key;
        match choice {
            NonceChoice::Fresh => (Some(key.issue(client, self.unix)), true),
            NonceChoice::OtherClient(n) => {
                let other = self.client(*n).client;
                // Nonces are bound to the client's IP address, not its port.
                (Some(key.issue(other, self.unix)), other.ip() == client.ip())
            }
            NonceChoice::Expired => (
                Some(key.issue(client, self.unix.saturating_sub(NONCE_LIFETIME))),
                false,
            ),
            NonceChoice::AlmostExpired => (
                Some(key.issue(client, self.unix.saturating_sub(NONCE_LIFETIME - 1))),
                true,
            ),
            // Beyond the skew allowed between a fleet's clocks: forged, or a clock that jumped.
            NonceChoice::Future => (
                Some(key.issue(
                    client,
                    self.unix + turnpike::proto::auth::NONCE_CLOCK_SKEW_SECS + 1,
                )),
                false,
            ),
            NonceChoice::Missing => (None, false),
            NonceChoice::Garbage(s) => (Some(s.clone()), false),
        }
    }

    /// Builds a signed request from `who`; returns the sender, the bytes and the expectation.
    fn signed(
        &self,
        method: Method,
        who: &Signed,
        attrs: impl FnOnce(&mut msg::Request),
    ) -> (FiveTuple, Vec<u8>, Expect) {
        let tuple = self.client(who.client);
        let (username, password, realm, creds_valid) = self.credentials(&who.cred);
        let (nonce, nonce_valid) = self.nonce(&who.nonce, tuple.client);
        let missing_nonce = nonce.is_none();
        let auth = Auth {
            username,
            password,
            realm,
            nonce: nonce.unwrap_or_default(),
            sha256: matches!(who.extra, Extra::Sha256),
        };
        let trailer = Trailer {
            fingerprint: !matches!(who.extra, Extra::NoFingerprint),
        };
        let unsigned = matches!(who.extra, Extra::Unsigned);
        let extra = who.extra.clone();
        let mut bytes = msg::request(method, (!unsigned).then_some(&auth), trailer, |m| {
            attrs(m);
            match &extra {
                Extra::Attribute(t, value) => {
                    m.raw(*t, value);
                }
                Extra::Software(s) => {
                    m.software(s);
                }
                _ => {}
            }
        });
        if missing_nonce && !unsigned {
            // Rebuild without NONCE: a request with integrity but no nonce gets 400.
            bytes = strip_attribute(&bytes, Nonce::TYPE).unwrap_or(bytes);
        }
        let mut corrupted = false;
        if let Extra::Corrupt { at, xor } = who.extra {
            let at = at as usize % bytes.len();
            bytes[at] ^= xor;
            // FINGERPRINT is the last 8 bytes; damage anywhere before it breaks integrity.
            corrupted = xor != 0 && at + 8 < bytes.len();
        }
        let expect = match creds_valid {
            // stun-types keys MESSAGE-INTEGRITY-SHA256 with SHA-256 of the credentials; without
            // PASSWORD-ALGORITHM the key is MD5's (RFC 8489 §9.2.2), so that never verifies.
            _ if unsigned || corrupted || !nonce_valid || auth.sha256 => Expect::MustFail,
            Some(true) if auth.username.contains(':') && !self.rest_valid(&auth.username) => {
                Expect::MustFail
            }
            Some(true) => Expect::MaySucceed,
            Some(false) => Expect::MustFail,
            None => Expect::Unknown,
        };
        (tuple, bytes, expect)
    }

    /// Whether `ip`, as written, is one of the server's relay IPs, bound or advertised.
    fn own_relay_ip(&self, ip: IpAddr) -> bool {
        [SERVER_V4.ip(), server_v6().ip()].into_iter().any(|relay| {
            relay == ip || advertised(&self.config, SocketAddr::new(relay, 0)).ip() == ip
        })
    }

    /// Whether data may ever go to `peer`: to the server's own relay IPs only on a relay
    /// port, which is another allocation applying its own permissions (relay-to-relay; the
    /// core's default relay ports, 49152-65535), never elsewhere on them; otherwise
    /// [`expected_allowed`].
    fn allowed(&self, peer: SocketAddr) -> bool {
        if self.own_relay_ip(peer.ip()) {
            return (49152..=65535).contains(&peer.port());
        }
        expected_allowed(peer, self.setup.open_private)
    }

    /// Whether a permission for `ip` may be granted: permissions are per IP, so the
    /// server's own relay IPs may be permitted; the port rule applies where a port is named.
    fn allowed_ip(&self, ip: IpAddr) -> bool {
        self.own_relay_ip(ip) || expected_allowed(SocketAddr::new(ip, 1), self.setup.open_private)
    }

    fn rest_valid(&self, username: &str) -> bool {
        username
            .split_once(':')
            .and_then(|(expiry, _)| expiry.parse::<u64>().ok())
            .is_some_and(|expiry| expiry > self.unix)
    }

    pub fn step(&mut self, op: &Op) {
        if self.trace {
            eprintln!("t+{:?} unix {}: {op:?}", self.now - self.start, self.unix);
        }
        self.frees = Frees::None;
        match op {
            Op::Allocate {
                who,
                transport,
                lifetime,
                family,
                additional,
                draft,
                even_port,
                token,
                dont_fragment,
                then,
            } => {
                let (tuple, bytes, expect) = self.signed(ALLOCATE, who, |m| {
                    match transport {
                        0 => {
                            m.requested_transport(PROTOCOL_UDP);
                        }
                        1 => {}
                        p => {
                            m.requested_transport(*p);
                        }
                    }
                    if let Some(l) = lifetime {
                        m.lifetime(*l);
                    }
                    if let Some(v6) = family {
                        let family = if *v6 {
                            AddressFamily::IPV6
                        } else {
                            AddressFamily::IPV4
                        };
                        m.requested_family(family);
                    }
                    if let Some(v6) = additional {
                        // Either codepoint, and IPv4 too (a client bug we want the server to
                        // see: 400).
                        let atype = if *draft {
                            wire::DRAFT_ADDITIONAL_ADDRESS_FAMILY
                        } else {
                            AdditionalAddressFamily::TYPE
                        };
                        m.raw(atype.value(), &[if *v6 { 2 } else { 1 }, 0, 0, 0]);
                    }
                    if let Some(e) = even_port {
                        m.even_port(*e);
                    }
                    if let Some(t) = token {
                        m.reservation_token(*t);
                    }
                    if *dont_fragment {
                        m.dont_fragment();
                    }
                });
                self.client_datagram(tuple, &bytes, expect, Some(then));
            }
            Op::Refresh { who, lifetime } => {
                let (tuple, bytes, expect) = self.signed(REFRESH, who, |m| {
                    if let Some(l) = lifetime {
                        m.lifetime(*l);
                    }
                });
                self.client_datagram(tuple, &bytes, expect, None);
            }
            Op::CreatePermission { who, peer, more } => {
                let peers: Vec<SocketAddr> = std::iter::once(peer)
                    .chain(more.iter().take(10))
                    .map(|p| self.peer(*p))
                    .collect();
                let (tuple, bytes, expect) = self.signed(CREATE_PERMISSION, who, |m| {
                    for peer in &peers {
                        m.peer(*peer);
                    }
                });
                self.client_datagram(tuple, &bytes, expect, None);
            }
            Op::ChannelBind { who, channel, peer } => {
                let peer = self.peer(*peer);
                let number = channel.number();
                let (tuple, bytes, expect) = self.signed(CHANNEL_BIND, who, |m| {
                    m.channel(number).peer(peer);
                });
                self.client_datagram(tuple, &bytes, expect, None);
            }
            Op::Send {
                client,
                peer,
                len,
                fill,
                no_data,
            } => {
                let tuple = self.client(*client);
                let peer = self.peer(*peer);
                let payload = vec![*fill; *len as usize % MAX_PAYLOAD];
                let bytes = msg::indication(SEND, Trailer::default(), |m| {
                    m.peer(peer);
                    if !no_data {
                        m.data(&payload);
                    }
                });
                self.client_datagram(tuple, &bytes, Expect::Unknown, None);
            }
            Op::ChannelData {
                client,
                channel,
                len,
                declared_delta,
                pad,
            } => {
                let tuple = self.client(*client);
                let len = *len as usize % MAX_PAYLOAD;
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let declared = (len as u16).wrapping_add(*declared_delta);
                let bytes =
                    msg::channel_data(channel.number(), declared, &payload, *pad as usize % 4);
                self.client_datagram(tuple, &bytes, Expect::Unknown, None);
            }
            Op::Binding {
                client,
                change,
                unknown,
                fingerprint,
            } => {
                let tuple = self.client(*client);
                let trailer = Trailer {
                    fingerprint: *fingerprint,
                };
                let bytes = msg::request(BINDING, None, trailer, |m| {
                    if let Some(value) = change {
                        m.raw(wire::CHANGE_REQUEST.value(), &value.to_be_bytes());
                    }
                    if let Some(t) = unknown {
                        m.raw(*t, &[1, 2, 3, 4]);
                    }
                });
                self.client_datagram(tuple, &bytes, Expect::Unknown, None);
            }
            Op::Raw { client, bytes } => {
                let tuple = self.client(*client);
                self.client_datagram(tuple, bytes, Expect::Unknown, None);
            }
            Op::Replay {
                client,
                index,
                corrupt,
                truncate,
            } => {
                if self.history.is_empty() {
                    return;
                }
                let mut bytes = self.history[*index as usize % self.history.len()].clone();
                if let Some((at, xor)) = corrupt {
                    if !bytes.is_empty() {
                        let at = *at as usize % bytes.len();
                        bytes[at] ^= xor;
                    }
                }
                if let Some(t) = truncate {
                    bytes.truncate(*t as usize % (bytes.len() + 1));
                }
                let tuple = self.client(*client);
                self.client_datagram(tuple, &bytes, Expect::Unknown, None);
            }
            Op::Peer {
                relay,
                peer,
                len,
                fill,
            } => self.peer_datagram(*relay, *peer, *len as usize % MAX_PAYLOAD, *fill),
            Op::Advance { secs } => self.advance(Duration::from_secs(u64::from(*secs))),
            Op::AdvanceMs { ms } => self.advance(Duration::from_millis(u64::from(*ms))),
            Op::UnixJump { secs } => {
                self.unix = self.unix.saturating_add_signed(i64::from(*secs));
            }
            Op::SetLimits { total, per_user } => {
                self.max_total = *total as usize % 10;
                self.max_per_user = *per_user as usize % 6;
                self.quotas.set_limits(self.max_total, self.max_per_user);
            }
            Op::CloseConnection { client } => {
                let tuple = self.client(*client);
                self.frees = Frees::Deleted(tuple);
                self.server.close_connection(&tuple);
                self.drain_events();
                assert!(
                    !self.allocs.contains_key(&tuple),
                    "close_connection kept the allocation"
                );
                assert!(!self.server.has_allocation(&tuple));
            }
            Op::Clear => {
                self.frees = Frees::All;
                self.server.clear();
                self.drain_events();
                assert!(self.allocs.is_empty(), "clear() left allocations behind");
            }
        }
        self.drain_events();
        self.check_invariants();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.unix += by.as_secs();
        self.frees = Frees::Expired;
        self.server.handle_timeout(self.now);
        self.drain_events();
        if let Some(next) = self.server.poll_timeout() {
            assert!(next > self.now, "handle_timeout left a due allocation");
        }
    }

    fn client_datagram(
        &mut self,
        tuple: FiveTuple,
        data: &[u8],
        expect: Expect,
        then: Option<&Then>,
    ) {
        if self.history.len() < 64 {
            self.history.push(data.to_vec());
        }
        let request = wire::parse_stun(data).ok();
        let action = self
            .server
            .handle_client(self.now, self.unix, tuple, data, &mut self.out);
        match action {
            ClientAction::Drop => {}
            ClientAction::Reply(len) => {
                let reply = self.out[..len].to_vec();
                let info = check_reply(request.as_ref(), &reply, tuple);
                if self.trace {
                    eprintln!("  -> {info:?}");
                }
                self.apply_reply(tuple, request.as_ref(), &info, expect);
            }
            ClientAction::Relay {
                relay,
                peer,
                payload,
            } => {
                let payload = payload.to_vec();
                self.check_relay_to_peer(tuple, data, relay, peer, &payload);
            }
            ClientAction::Allocate(pending) => {
                assert_ne!(
                    expect,
                    Expect::MustFail,
                    "Allocate handed out without valid auth"
                );
                assert!(
                    self.config.alternate_servers.is_empty(),
                    "Allocate handed out although every Allocate is redirected"
                );
                let request = request.expect("an Allocate came from a STUN request");
                assert!(
                    !self.allocs.contains_key(&tuple),
                    "Allocate handed out for a 5-tuple that already has an allocation"
                );
                assert_eq!(pending.tuple, tuple);
                let username = request
                    .attribute::<Username>()
                    .ok()
                    .map(|u| u.username().to_owned());
                let quota_key = username
                    .as_deref()
                    .map(|u| self.config.credentials.quota_key(u).to_owned());
                // The slot is claimed: check it fits the limits in force.
                assert!(
                    self.quotas.total() <= self.max_total,
                    "total quota exceeded: {} > {}",
                    self.quotas.total(),
                    self.max_total
                );
                if let Some(key) = &quota_key {
                    let same = self
                        .allocs
                        .values()
                        .filter(|a| a.quota_key.as_deref() == Some(key))
                        .count();
                    assert!(
                        same < self.max_per_user,
                        "per-user quota exceeded for {key}"
                    );
                }
                let families = pending.families.clone();
                assert!(
                    !families.is_empty() && families.len() <= 2,
                    "families {families:?}"
                );
                if families.len() == 2 {
                    assert_ne!(families[0], families[1], "two relays of one family");
                }
                for (n, family) in families.iter().enumerate() {
                    let on = match family {
                        AddressFamily::IPV4 => self.config.relay_ipv4,
                        AddressFamily::IPV6 => self.config.relay_ipv6,
                    };
                    // Only a reserved socket may be of a family the server does not relay in.
                    assert!(
                        on || (n == 0 && pending.reservation_token.is_some()),
                        "relay of family {family:?} handed out with that family off"
                    );
                }
                let default_then = Then::Accept { token: false };
                match then.unwrap_or(&default_then) {
                    Then::Accept { token } => {
                        let relays: Vec<SocketAddr> = families
                            .iter()
                            .map(|family| {
                                let port = self.next_port;
                                self.next_port = self.next_port.wrapping_add(1).max(50_000);
                                match family {
                                    AddressFamily::IPV6 => {
                                        SocketAddr::new(sa("[2001:db8::10]:0").ip(), port)
                                    }
                                    AddressFamily::IPV4 => SocketAddr::new(
                                        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                                        port,
                                    ),
                                }
                            })
                            .collect();
                        if relays.iter().any(|r| self.relay_owner.contains_key(r)) {
                            // Ports wrapped onto a live relay; a real driver never does that.
                            let len = self.server.reject_allocation(
                                pending,
                                Error::InsufficientCapacity,
                                &mut self.out,
                            );
                            let reply = self.out[..len].to_vec();
                            let info = check_reply(Some(&request), &reply, tuple);
                            assert_eq!(info.code, Some(ErrorCode::INSUFFICIENT_CAPACITY));
                            return;
                        }
                        let token =
                            (*token || pending.even_port == Some(true)).then_some(0xfeed_u64);
                        let len = self.server.accept_allocation(
                            self.now,
                            self.unix,
                            pending,
                            &relays,
                            token,
                            &mut self.out,
                        );
                        let reply = self.out[..len].to_vec();
                        let info = check_reply(Some(&request), &reply, tuple);
                        assert!(info.success, "accepted Allocate answered with an error");
                        let expected: Vec<SocketAddr> = relays
                            .iter()
                            .map(|r| advertised(&self.config, *r))
                            .collect();
                        assert_eq!(info.relayed, expected, "XOR-RELAYED-ADDRESS");
                        let lifetime = info.lifetime.expect("Allocate success carries LIFETIME");
                        check_lifetime(&request, lifetime);
                        for relay in &relays {
                            self.relay_owner.insert(*relay, tuple);
                            self.relays_ever.push(*relay);
                        }
                        self.allocs.insert(
                            tuple,
                            Alloc {
                                tuple,
                                relays,
                                username,
                                quota_key,
                                created: self.now,
                                expires: self.now + Duration::from_secs(lifetime.into()),
                                perms: HashMap::new(),
                                channels: HashSet::new(),
                                bytes: [0, 0],
                            },
                        );
                        self.depth.allocations += 1;
                    }
                    Then::RejectNoPort | Then::RejectNoAddress => {
                        let error = if matches!(then, Some(Then::RejectNoPort)) {
                            Error::InsufficientCapacity
                        } else {
                            Error::AddressFamilyNotSupported
                        };
                        let code = error.code();
                        let len = self.server.reject_allocation(pending, error, &mut self.out);
                        let reply = self.out[..len].to_vec();
                        let info = check_reply(Some(&request), &reply, tuple);
                        assert_eq!(info.code, Some(code));
                    }
                }
            }
        }
    }

    /// Updates the model from a reply to a client request.
    fn apply_reply(
        &mut self,
        tuple: FiveTuple,
        request: Option<&Message<'_>>,
        info: &ReplyInfo,
        expect: Expect,
    ) {
        let Some(request) = request else { return };
        let method = request.method();
        let is_turn = [ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method);
        if info.success && is_turn {
            assert_ne!(
                expect,
                Expect::MustFail,
                "{method} succeeded without valid auth"
            );
            if let Some(alloc) = self.allocs.get(&tuple) {
                // RFC 8656 §5: only the user that made the allocation may use it.
                let username = request
                    .attribute::<Username>()
                    .ok()
                    .map(|u| u.username().to_owned());
                assert_eq!(
                    username, alloc.username,
                    "{method} succeeded for another user"
                );
            }
        }
        if method == ALLOCATE && info.code == Some(ErrorCode::TRY_ALTERNATE) {
            assert!(
                !self.config.alternate_servers.is_empty(),
                "300 with no alternate"
            );
        }
        let partial = info.code == Some(ErrorCode::INSUFFICIENT_CAPACITY);
        let has = self.allocs.contains_key(&tuple);
        if method == ALLOCATE && info.success {
            // A retransmission answered from the allocation: nothing changes.
            assert!(has, "Allocate success without an allocation");
        } else if method == REFRESH && info.success {
            assert!(has, "Refresh succeeded without an allocation");
            let lifetime = info.lifetime.expect("Refresh success carries LIFETIME");
            if lifetime == 0 {
                self.frees = Frees::Deleted(tuple);
                self.drain_events();
                assert!(
                    !self.allocs.contains_key(&tuple),
                    "Refresh 0 did not free the allocation"
                );
            } else {
                check_lifetime(request, lifetime);
                let alloc = self.allocs.get_mut(&tuple).expect("live");
                alloc.expires = self.now + Duration::from_secs(lifetime.into());
                self.depth.refreshed += 1;
            }
        } else if method == CREATE_PERMISSION && (info.success || partial) {
            assert!(
                has,
                "CreatePermission answered {info:?} without an allocation"
            );
            let expires = self.now + PERMISSION_LIFETIME;
            let allowed: Vec<bool> = (0..)
                .map_while(|n| request.nth_attribute::<XorPeerAddress>(n).ok())
                .map(|p| self.allowed_ip(p.addr(request.transaction_id()).ip()))
                .collect();
            let alloc = self.allocs.get_mut(&tuple).expect("live");
            let peers = (0..).map_while(|n| request.nth_attribute::<XorPeerAddress>(n).ok());
            for (n, peer) in peers.enumerate() {
                let peer = peer.addr(request.transaction_id());
                if info.success {
                    assert!(allowed[n], "permission granted for denied peer {peer}");
                    assert!(
                        alloc.relays.iter().any(|r| r.is_ipv4() == peer.is_ipv4()),
                        "permission for {peer} with no relay of its family"
                    );
                }
                alloc.perms.insert(peer.ip(), expires);
            }
            if info.success {
                self.depth.permissions += 1;
            }
        } else if method == CHANNEL_BIND && info.success {
            assert!(has, "ChannelBind succeeded without an allocation");
            let number = request
                .attribute::<ChannelNumber>()
                .expect("bound")
                .channel();
            assert!(
                wire::CHANNEL_RANGE.contains(&number),
                "bound channel {number:#x}"
            );
            let peer = request
                .attribute::<XorPeerAddress>()
                .expect("bound")
                .addr(request.transaction_id());
            assert!(self.allowed(peer), "channel bound to denied peer {peer}");
            let alloc = self.allocs.get_mut(&tuple).expect("live");
            alloc
                .perms
                .insert(peer.ip(), self.now + PERMISSION_LIFETIME);
            alloc.channels.insert((number, peer));
            self.depth.channels += 1;
        }
    }

    fn check_relay_to_peer(
        &mut self,
        tuple: FiveTuple,
        data: &[u8],
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
    ) {
        let bandwidth = self.setup.bandwidth;
        let now = self.now;
        let peer_allowed = self.allowed(peer);
        let owner = self.relay_owner.get(&relay);
        assert_eq!(
            owner,
            Some(&tuple),
            "relayed through {relay}, not this client's relay"
        );
        let alloc = self.allocs.get_mut(&tuple).expect("owner is live");
        assert_eq!(
            relay.is_ipv4(),
            peer.is_ipv4(),
            "relay {relay} cannot reach {peer}"
        );
        assert!(peer_allowed, "relayed to denied peer {peer}");
        assert!(
            alloc.perms.get(&peer.ip()).is_some_and(|&e| e > now),
            "relayed to {peer} without a live permission"
        );
        match wire::classify(data) {
            wire::Kind::ChannelData => {
                let channel = u16::from_be_bytes([data[0], data[1]]);
                assert!(
                    alloc.channels.contains(&(channel, peer)),
                    "ChannelData on {channel:#x} relayed to {peer}, never bound to it"
                );
                let len = u16::from_be_bytes([data[2], data[3]]) as usize;
                assert_eq!(payload, &data[4..4 + len]);
            }
            wire::Kind::Stun => {
                let msg = wire::parse_stun(data).expect("relayed a Send indication");
                let sent = msg.attribute::<Data>().expect("relayed Send has DATA");
                assert_eq!(payload, sent.data());
                let to = msg
                    .attribute::<XorPeerAddress>()
                    .expect("relayed Send has XOR-PEER-ADDRESS")
                    .addr(msg.transaction_id());
                assert_eq!(to, peer);
            }
            wire::Kind::Other => panic!("relayed a datagram that is neither STUN nor ChannelData"),
        }
        alloc.bytes[0] += payload.len() as u64;
        check_bandwidth(alloc, bandwidth, now, 0);
        self.depth.relayed_to_peer += 1;
    }

    fn peer_datagram(&mut self, relay: u8, peer: u8, len: usize, fill: u8) {
        let relay = if self.relays_ever.is_empty() || relay == u8::MAX {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 1)
        } else {
            self.relays_ever[relay as usize % self.relays_ever.len()]
        };
        let peer = self.peer(peer);
        if relay.is_ipv4() != peer.is_ipv4() {
            // A socket only receives from its own family.
            return;
        }
        let mut buf = vec![fill; CHANNEL_HEADER_LEN + len];
        buf[..CHANNEL_HEADER_LEN].fill(0);
        let action = self
            .server
            .handle_peer(self.now, relay, peer, &mut buf, len, &mut self.out);
        let Some(action) = action else { return };
        let now = self.now;
        let bandwidth = self.setup.bandwidth;
        let owner = *self
            .relay_owner
            .get(&relay)
            .unwrap_or_else(|| panic!("peer data delivered through freed relay {relay}"));
        let alloc = self.allocs.get_mut(&owner).expect("owner is live");
        assert!(
            alloc.perms.get(&peer.ip()).is_some_and(|&e| e > now),
            "peer data from {peer} delivered without a live permission"
        );
        match action {
            PeerAction::ChannelData { tuple, len: total } => {
                assert_eq!(tuple, owner, "peer data sent to another client");
                assert_eq!(total, CHANNEL_HEADER_LEN + len);
                let (channel, declared) =
                    wire::channel_data_header(&buf[..total]).expect("valid ChannelData header");
                assert_eq!(declared, len);
                assert!(
                    alloc.channels.contains(&(channel, peer)),
                    "peer data on channel {channel:#x} never bound to {peer}"
                );
                assert!(buf[CHANNEL_HEADER_LEN..total].iter().all(|&b| b == fill));
            }
            PeerAction::DataIndication { tuple, len: total } => {
                assert_eq!(tuple, owner, "peer data sent to another client");
                let msg = wire::parse_stun(&self.out[..total]).expect("Data indication parses");
                assert_eq!(msg.class(), MessageClass::Indication);
                assert_eq!(msg.method(), DATA);
                let from = msg
                    .attribute::<XorPeerAddress>()
                    .expect("XOR-PEER-ADDRESS")
                    .addr(msg.transaction_id());
                assert_eq!(from, peer);
                let data = msg.attribute::<Data>().expect("DATA");
                assert_eq!(data.data().len(), len);
                assert!(data.data().iter().all(|&b| b == fill));
            }
        }
        alloc.bytes[1] += len as u64;
        check_bandwidth(alloc, bandwidth, now, 1);
        self.depth.relayed_to_client += 1;
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.server.poll_output() {
            if let Event::AllocationEnded {
                tuple,
                usage,
                reason,
                ..
            } = event
            {
                let alloc = self
                    .allocs
                    .get(&tuple)
                    .expect("AllocationEnded for a live one");
                assert_eq!(usage.started, alloc.created, "usage start");
                let bytes = [usage.to_peer_bytes, usage.from_peer_bytes];
                assert_eq!(
                    bytes, alloc.bytes,
                    "usage bytes differ from what was relayed"
                );
                let expected = match self.frees {
                    Frees::All => &[EndReason::Shutdown][..],
                    Frees::Expired => &[EndReason::Expired],
                    Frees::Deleted(_) => &[EndReason::Deleted, EndReason::ConnectionClosed],
                    Frees::None => &[],
                };
                assert!(expected.contains(&reason), "ended as {reason:?}");
                continue;
            }
            let Event::RelayReleased { relay } = event else {
                continue;
            };
            let tuple = self
                .relay_owner
                .remove(&relay)
                .unwrap_or_else(|| panic!("RelayReleased for {relay}, not live"));
            let alloc = self.allocs.get_mut(&tuple).expect("owner is live");
            alloc.relays.retain(|r| *r != relay);
            match self.frees {
                Frees::All => {}
                Frees::Expired => {
                    assert!(
                        alloc.expires <= self.now,
                        "allocation freed before its expiry"
                    )
                }
                Frees::Deleted(deleted) => assert_eq!(deleted, tuple, "wrong allocation deleted"),
                Frees::None => panic!("relay {relay} freed by an unrelated operation"),
            }
            if alloc.relays.is_empty() {
                self.allocs.remove(&tuple);
                if self.frees == Frees::Expired {
                    self.depth.expired += 1;
                }
            }
        }
        // An allocation goes with all of its relays at once.
        for alloc in self.allocs.values() {
            assert!(
                self.server.has_allocation(&alloc.tuple),
                "allocation {:?} gone but relays {:?} never freed",
                alloc.tuple,
                alloc.relays
            );
        }
    }

    fn check_invariants(&mut self) {
        let count = self.server.allocation_count();
        assert_eq!(
            count,
            self.allocs.len(),
            "allocation count differs from the model"
        );
        assert_eq!(
            self.quotas.total(),
            count,
            "quota slots differ from allocations"
        );
        // Permission and channel timers may come first; none outlives its allocation.
        let earliest = self.allocs.values().map(|a| a.expires).min();
        let next = self.server.poll_timeout();
        assert_eq!(
            next.is_some(),
            earliest.is_some(),
            "poll_timeout differs from model"
        );
        assert!(
            next <= earliest,
            "poll_timeout after the earliest allocation expiry"
        );
        let gauges = self.server.gauges();
        assert_eq!(gauges.allocations.iter().sum::<u64>(), count as u64);
        for transport in Transport::ALL {
            let model = self
                .allocs
                .keys()
                .filter(|t| t.transport == transport)
                .count();
            assert_eq!(gauges.allocations[transport as usize], model as u64);
        }
        let max_perms = self.config.max_permissions_per_allocation as u64;
        let max_channels = self.config.max_channels_per_allocation as u64;
        assert!(
            gauges.permissions <= count as u64 * max_perms,
            "permission cap exceeded"
        );
        assert!(
            gauges.channels <= count as u64 * max_channels,
            "channel cap exceeded"
        );
        // Live permissions are a subset of the model's (which over-approximates).
        let model_perms: u64 = self
            .allocs
            .values()
            .map(|a| a.perms.values().filter(|&&e| e > self.now).count() as u64)
            .sum();
        assert!(
            gauges.permissions <= model_perms,
            "permissions the client never asked for"
        );
        let _ = CHANNEL_LIFETIME;
    }
}

/// The address advertised for a relay bound at `local` (the 1:1 NAT mapping).
fn advertised(config: &ServerConfig, local: SocketAddr) -> SocketAddr {
    let ip = local.ip();
    let public = config
        .external_ips
        .iter()
        .find(|(private, _)| *private == Some(ip))
        .or_else(|| {
            config
                .external_ips
                .iter()
                .find(|(private, public)| private.is_none() && public.is_ipv4() == ip.is_ipv4())
        })
        .map_or(ip, |(_, public)| *public);
    SocketAddr::new(public, local.port())
}

fn check_bandwidth(alloc: &Alloc, rate: Option<u16>, now: Instant, dir: usize) {
    let Some(rate) = rate else { return };
    let rate = u128::from(rate);
    let elapsed = now.duration_since(alloc.created).as_micros();
    let allowed = rate * 1_000_000 + rate * elapsed;
    assert!(
        u128::from(alloc.bytes[dir]) * 1_000_000 <= allowed,
        "bandwidth cap exceeded: {} bytes in {elapsed} µs at {rate} B/s",
        alloc.bytes[dir]
    );
}

/// Granted lifetime: the requested one clamped to [default, max] (RFC 8656 §7.2).
fn check_lifetime(request: &Message<'_>, granted: u32) {
    let requested = request
        .attribute::<Lifetime>()
        .map(|l| u64::from(l.seconds()))
        .unwrap_or(DEFAULT_LIFETIME);
    let expected = requested.clamp(DEFAULT_LIFETIME, MAX_LIFETIME);
    assert_eq!(u64::from(granted), expected, "granted lifetime");
}

/// Every reply must be one well-formed response to the request's method and transaction.
fn check_reply(request: Option<&Message<'_>>, reply: &[u8], tuple: FiveTuple) -> ReplyInfo {
    let msg = wire::parse_stun(reply)
        .unwrap_or_else(|e| panic!("reply does not parse ({e:?}): {reply:02x?}"));
    let request = request.expect("a reply to a datagram that is not a STUN message");
    assert_eq!(
        msg.transaction_id(),
        request.transaction_id(),
        "reply transaction"
    );
    assert_eq!(msg.method(), request.method(), "reply method");
    let class = msg.class();
    assert!(
        matches!(class, MessageClass::Success | MessageClass::Error),
        "reply class {class:?}"
    );
    assert_eq!(
        request.class(),
        MessageClass::Request,
        "replied to a non-request"
    );
    let code = msg.attribute::<ErrorCode>().ok().map(|e| e.code());
    if class == MessageClass::Error {
        assert!(code.is_some(), "error response without ERROR-CODE");
    }
    if class == MessageClass::Success && msg.method() == BINDING {
        let mapped = msg
            .attribute::<XorMappedAddress>()
            .expect("Binding success carries XOR-MAPPED-ADDRESS")
            .addr(msg.transaction_id());
        assert_eq!(mapped, tuple.client);
    }
    ReplyInfo {
        success: class == MessageClass::Success,
        code,
        lifetime: msg.attribute::<Lifetime>().ok().map(|l| l.seconds()),
        relayed: (0..)
            .map_while(|n| msg.nth_attribute::<XorRelayedAddress>(n).ok())
            .map(|a| a.addr(msg.transaction_id()))
            .collect(),
    }
}

/// Removes every attribute of `atype` from a message, fixing the length (integrity and
/// fingerprint are then stale, which is the point for the callers).
fn strip_attribute(bytes: &[u8], atype: AttributeType) -> Option<Vec<u8>> {
    let mut out = bytes.get(..wire::HEADER_LEN)?.to_vec();
    let mut at = wire::HEADER_LEN;
    while at + 4 <= bytes.len() {
        let t = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let end = (at + 4 + len.div_ceil(4) * 4).min(bytes.len());
        if t != atype.value() {
            out.extend_from_slice(&bytes[at..end]);
        }
        at = end;
    }
    let body = (out.len() - wire::HEADER_LEN) as u16;
    out[2..4].copy_from_slice(&body.to_be_bytes());
    Some(out)
}
