//! The TURN server state of one worker: allocations keyed by 5-tuple and by relay address, and
//! the expiry timers.
//!
//! Inputs: [`Server::handle_client`] (a datagram from a client), [`Server::handle_peer`] (a
//! datagram that arrived on a relay socket) and [`Server::handle_timeout`], plus
//! [`Server::close_connection`] and [`Server::clear`]. Outputs: the value each call returns
//! (a reply, or relayed data borrowed from the input without a copy), plus one queue of
//! [`Event`]s (relay sockets to close; allocations, permissions and channels made and ended)
//! drained with [`Server::poll_output`], and [`Server::poll_timeout`] (when to call
//! `handle_timeout` next). Drain the queue after every input: nothing else bounds it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::allocation::{Allocation, BindError, Direction, RelayAddress, TokenBucket, Usage};
use super::auth::{
    AuthError, Credentials, LongTermKey, NonceCheck, NonceKey, PasswordAlgorithm, NONCE_COOKIE,
};
use super::error::Error;
use super::live_relays::LiveRelays;
use super::peer_filter::PeerFilter;
use super::sessions::{Revocations, SessionFilter, SessionInfo};
use super::stats::Stats;
use super::wire::{self, *};

/// RFC 8656 §9: permissions last 300 s.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: channel bindings last 600 s.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// The longest lifetime the LIFETIME attribute (32-bit seconds, RFC 8656 §18.2) can state.
const MAX_WIRE_LIFETIME: Duration = Duration::from_secs(u32::MAX as u64);

/// A lifetime as LIFETIME seconds, saturating rather than truncating.
fn wire_lifetime(lifetime: Duration) -> u32 {
    u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX)
}

/// How a client reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
    Tls = 2,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Live state sizes of one worker, for the management plane.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Allocations by client transport, indexed by `Transport as usize`.
    pub allocations: [u64; 3],
    pub permissions: u64,
    pub channels: u64,
}

/// What a reload cut: permissions and channels to peers the reloaded peer filter denies,
/// ended at once ([`Server::set_config`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReloadCut {
    pub permissions: u64,
    pub channels: u64,
}

/// RFC 8656 §2: the client's address, the server address it talks to, and the transport.
/// Allocations are keyed by it with the standard `HashMap` hasher, which is randomly seeded,
/// because clients choose these keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Protocol settings of the core, derived once from the daemon's configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    pub software: Option<String>,
    pub credentials: Credentials,
    pub nonce_key: NonceKey,
    pub nonce_lifetime: Duration,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub bandwidth_per_allocation: Option<u64>,
    pub peer_filter: PeerFilter,
    /// The server's own listening addresses: never a valid peer, whatever `allow_peers` says.
    pub own_addresses: Vec<SocketAddr>,
    /// The IPs relay sockets are bound on (their advertised forms follow from
    /// `external_ips`). With `relay_ports` they say which peers are other allocations of this
    /// server, which are valid peers (relay-to-relay, see `Server::check_peer`).
    pub relay_ips: Vec<IpAddr>,
    /// The ports relay sockets are bound in.
    pub relay_ports: RangeInclusive<u16>,
    /// Public addresses to advertise for relay addresses behind a 1:1 NAT: `(private,
    /// public)` pairs first, then `(None, public)` for any relay of the public's family.
    pub external_ips: Vec<(Option<IpAddr>, IpAddr)>,
    /// Answer Allocate with 300 Try Alternate towards one of these (RFC 8489 §10), chosen by
    /// client address so a client is sent to the same place each time.
    pub alternate_servers: Vec<SocketAddr>,
    /// Draining: an Allocate that would create an allocation and finds no alternate server
    /// gets 508 Insufficient Capacity; existing allocations are served as before.
    pub draining: bool,
    /// Relay address families the server can allocate in.
    pub relay_ipv4: bool,
    pub relay_ipv6: bool,
}

impl ServerConfig {
    /// A configuration with `realm`, `credentials` and `nonce_key` and the daemon's defaults
    /// for everything else (config.example.toml): nonces and allocations live 600 s,
    /// lifetimes are clamped to 3600 s, 64 permissions and 64 channels per allocation, no
    /// bandwidth cap, the default peer deny list, IPv4 relays only in 49152-65535, no
    /// SOFTWARE, no own, relay or external addresses (relay IPs are learnt from the
    /// allocations made), no alternate servers, not draining. For tests, fuzzing and
    /// benchmarks, which change what they exercise with `..ServerConfig::new(..)`; the daemon
    /// maps every field from its configuration (`turnpike::server_config`).
    pub fn new(realm: impl Into<String>, credentials: Credentials, nonce_key: NonceKey) -> Self {
        Self {
            realm: realm.into(),
            software: None,
            credentials,
            nonce_key,
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            bandwidth_per_allocation: None,
            peer_filter: PeerFilter::new(vec![], vec![]),
            own_addresses: vec![],
            relay_ips: vec![],
            relay_ports: 49152..=65535,
            external_ips: vec![],
            alternate_servers: vec![],
            draining: false,
            relay_ipv4: true,
            relay_ipv6: false,
        }
    }
}

/// Counts shared by all workers, touched only when an allocation is created or freed, or an
/// unauthenticated request is challenged.
#[derive(Debug)]
pub struct Quotas {
    max_total: AtomicUsize,
    max_per_user: AtomicUsize,
    total: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
    challenges: ChallengeLimiter,
}

impl Quotas {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Self {
            max_total: AtomicUsize::new(max_total),
            max_per_user: AtomicUsize::new(max_per_user),
            total: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            challenges: ChallengeLimiter::default(),
        }
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// New limits (reload); allocations over them stay until they end.
    pub fn set_limits(&self, max_total: usize, max_per_user: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_user.store(max_per_user, Ordering::Relaxed);
    }

    /// `limits.max_challenges_per_sec`: 401/438 answers per second for the whole server.
    pub fn set_max_challenges_per_sec(&self, max: u64) {
        self.challenges.set_max_per_second(max);
    }

    /// Reserves one allocation for `user`: 486 over the user's quota, 508 over the server's.
    fn claim(&self, user: &str) -> Result<(), Error> {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_user.get(user).copied().unwrap_or(0);
        if count >= self.max_per_user.load(Ordering::Relaxed) {
            return Err(Error::AllocationQuotaReached);
        }
        if self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_total.load(Ordering::Relaxed)).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Error::InsufficientCapacity);
        }
        per_user.insert(user.to_owned(), count + 1);
        Ok(())
    }

    fn release(&self, user: &str) {
        let mut per_user = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(user);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One allocation's claim on the quotas: given back when dropped, unless an allocation took it
/// over with [`keep`](Self::keep).
struct QuotaSlot {
    quotas: Arc<Quotas>,
    key: String,
    held: bool,
}

impl QuotaSlot {
    /// The quota key, for the allocation that now holds the slot (and releases it when it ends).
    fn keep(mut self) -> String {
        self.held = false;
        std::mem::take(&mut self.key)
    }
}

impl std::fmt::Debug for QuotaSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaSlot").field("key", &self.key).finish()
    }
}

impl Drop for QuotaSlot {
    fn drop(&mut self) {
        if self.held {
            self.quotas.release(&self.key);
        }
    }
}

/// What the driver must do with a datagram from a client.
#[must_use]
#[derive(Debug)]
pub enum ClientAction<'a> {
    /// Nothing to send.
    Drop,
    /// Send `out[..len]` back to the client on the same 5-tuple.
    Reply(usize),
    /// Send `payload` from the relay socket bound at `relay` to `peer`.
    Relay {
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &'a [u8],
    },
    /// An authenticated Allocate: bind a relay socket, then call
    /// [`Server::accept_allocation`] or [`Server::reject_allocation`].
    Allocate(PendingAllocation),
}

/// An Allocate request that passed every check but needs a relay socket. Its quota slot is
/// already claimed; the driver answers it through accept or reject, and a pending allocation
/// dropped unanswered gives its slot back.
#[must_use]
#[derive(Debug)]
pub struct PendingAllocation {
    pub tuple: FiveTuple,
    /// One relay per family, the requested one first (two for ADDITIONAL-ADDRESS-FAMILY).
    pub families: Vec<AddressFamily>,
    /// ADDITIONAL-ADDRESS-FAMILY the server cannot serve: answered with ADDRESS-ERROR-CODE 440
    /// beside the allocation that succeeded.
    unavailable_family: Option<AddressFamily>,
    /// EVEN-PORT (RFC 8656 §14.6): `Some(reserve_next)` when requested.
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN: take the socket reserved under this token.
    pub reservation_token: Option<u64>,
    transaction: TransactionId,
    auth: Authenticated,
    lifetime: Duration,
    quota: QuotaSlot,
}

/// What the driver must do with a datagram from a peer.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Send `buf[..len]` (a ChannelData header written in front of the payload) to the client.
    ChannelData { tuple: FiveTuple, len: usize },
    /// Send `out[..len]` (a Data indication) to the client.
    DataIndication { tuple: FiveTuple, len: usize },
}

/// Something the driver must act on, or may record, outside of a reply. An allocation's end
/// implies the end of its permissions and channels; they get no events of their own then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An allocation is gone and no longer uses the relay socket bound at `relay`: close it.
    RelayReleased {
        relay: SocketAddr,
    },
    AllocationCreated {
        id: u64,
        tuple: FiveTuple,
        username: String,
        relays: Vec<RelayAddress>,
        expires: Instant,
    },
    AllocationEnded {
        id: u64,
        tuple: FiveTuple,
        username: String,
        relays: Vec<RelayAddress>,
        usage: Usage,
        reason: EndReason,
    },
    /// A new permission (a refresh only moves its deadline and says nothing).
    PermissionCreated {
        tuple: FiveTuple,
        peer: IpAddr,
        expires: Instant,
    },
    PermissionExpired {
        tuple: FiveTuple,
        peer: IpAddr,
    },
    ChannelBound {
        tuple: FiveTuple,
        number: u16,
        peer: SocketAddr,
        expires: Instant,
    },
    ChannelRefreshed {
        tuple: FiveTuple,
        number: u16,
        peer: SocketAddr,
        expires: Instant,
    },
    ChannelExpired {
        tuple: FiveTuple,
        number: u16,
        peer: SocketAddr,
    },
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its lifetime ran out without a refresh.
    Expired,
    /// The client deleted it (Refresh with LIFETIME 0).
    Deleted,
    /// The TCP or TLS connection it belonged to closed (RFC 8656 §3.1).
    ConnectionClosed,
    /// The server freed every allocation ([`Server::clear`]).
    Shutdown,
    /// The operator ended it ([`Server::end_allocation`]).
    Kicked,
    /// Its user's credentials were revoked ([`Server::end_revoked`]).
    Revoked,
}

/// The timer of one permission or channel, keyed with its deadline in [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum BindingTimer {
    Permission(FiveTuple, IpAddr),
    Channel(FiveTuple, u16),
}

/// The checks every datagram from a client to a peer passes (RFC 8656 §10.2, §12.6): a relay
/// of the peer's family, a permission for the peer's IP, and bandwidth left.
fn forward_to_peer<'a>(
    allocation: &mut Allocation,
    stats: &mut Stats,
    now: Instant,
    peer: SocketAddr,
    payload: &'a [u8],
) -> ClientAction<'a> {
    let Some(relay) = allocation.relay_for(peer) else {
        stats.dropped += 1;
        return ClientAction::Drop;
    };
    if !allocation.has_permission(peer.ip(), now) {
        stats.peer_without_permission += 1;
        return ClientAction::Drop;
    }
    if !allocation.take_bandwidth(Direction::ToPeer, payload.len(), now) {
        stats.bandwidth_dropped += 1;
        return ClientAction::Drop;
    }
    stats.to_peer_packets += 1;
    stats.to_peer_bytes += payload.len() as u64;
    allocation.usage.to_peer_packets += 1;
    allocation.usage.to_peer_bytes += payload.len() as u64;
    ClientAction::Relay {
        relay,
        peer,
        payload,
    }
}

/// The comprehension-required attributes of `msg` outside `known` (RFC 8489 §6.3).
fn unknown_required<'m>(
    msg: &'m Message<'_>,
    known: &'m [AttributeType],
) -> impl Iterator<Item = AttributeType> + 'm {
    msg.iter_attributes()
        .map(|(_, attr)| attr.get_type())
        .filter(|t| t.comprehension_required() && !known.contains(t))
}

/// 420 with UNKNOWN-ATTRIBUTES if the request carries comprehension-required attributes
/// outside `known` (RFC 8489 §7.3.1). CHANGE-REQUEST asking for a change is unsupported.
fn unknown_attributes(msg: &Message<'_>, known: &[AttributeType]) -> Option<Error> {
    let mut unknown: Vec<AttributeType> = unknown_required(msg, known).collect();
    if let Some(change) = msg.raw_attribute(wire::CHANGE_REQUEST) {
        if change.value.iter().any(|&b| b != 0) {
            unknown.push(wire::CHANGE_REQUEST);
        }
    }
    if unknown.is_empty() {
        return None;
    }
    unknown.dedup();
    Some(Error::UnknownAttributes(unknown))
}

/// The password algorithm a request negotiated (RFC 8489 §9.2.4). Our nonces carry the
/// "Password algorithms" bit, so a request that names one must also echo PASSWORD-ALGORITHMS
/// exactly as the challenge listed them (the bid-down protection of §9.2.1) and pick one of
/// them; `Err` means 400. `Ok(None)`: neither attribute, so MD5. A nonce without our cookie
/// is not ours and will be stale; its attributes are not looked at.
fn negotiated_algorithm(msg: &Message<'_>, nonce: &str) -> Result<Option<PasswordAlgorithm>, ()> {
    if !nonce.starts_with(NONCE_COOKIE) {
        return Ok(None);
    }
    let offered = wire::password_algorithms_value(PasswordAlgorithm::OFFERED.map(|a| a.number()));
    match (
        msg.raw_attribute(wire::PASSWORD_ALGORITHMS),
        msg.raw_attribute(wire::PASSWORD_ALGORITHM),
    ) {
        (None, None) => Ok(None),
        (Some(list), Some(chosen)) if list.value.as_ref() == offered.as_flattened() => {
            wire::password_algorithm_number(&chosen.value)
                .and_then(PasswordAlgorithm::from_number)
                .map(Some)
                .ok_or(())
        }
        _ => Err(()),
    }
}

/// Lets one warning of a kind through per interval and counts the ones it holds back, so a
/// flood of bad requests cannot flood the log.
#[derive(Debug, Default)]
pub struct LogBudget {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogBudget {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + Self::INTERVAL);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Default of `limits.max_challenges_per_sec`: 401/438 answers per second for the whole
/// server. Far above what clients need (one per new allocation, one per client every nonce
/// lifetime: 10,000 allocations make about 17 per second), and it holds what a flood from
/// many spoofed sources can reflect at about 5,000 × 88 bytes = 440 KB/s.
pub const DEFAULT_MAX_CHALLENGES_PER_SEC: u64 = 5_000;

/// Caps 401/438 challenges per source IP with fixed memory: counters in a table indexed by a
/// keyed hash of the address, so no unauthenticated source adds state. A collision only makes
/// two sources share a cap. A second counter caps them for the whole server, whatever the
/// source. Shared by all workers (`SO_REUSEPORT` spreads one IP's ports over them), lock-free:
/// each counter packs `(second, count)` into one atomic word.
#[derive(Debug)]
pub struct ChallengeLimiter {
    slots: Box<[AtomicU64]>,
    /// Challenges this second from every source.
    total: AtomicU64,
    /// `limits.max_challenges_per_sec`.
    max_total: AtomicU64,
}

impl Default for ChallengeLimiter {
    fn default() -> Self {
        Self {
            slots: (0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            max_total: AtomicU64::new(DEFAULT_MAX_CHALLENGES_PER_SEC),
        }
    }
}

impl ChallengeLimiter {
    const SLOTS: usize = 4096;
    /// Per source IP and second. A browser needs one per TURN URL it gathers from, and a
    /// nonce is good for every socket of its IP, but many users can share one NAT address.
    const PER_SECOND: u64 = 100;

    /// A new cap for the whole server (reload).
    pub fn set_max_per_second(&self, max: u64) {
        self.max_total.store(max, Ordering::Relaxed);
    }

    /// Whether one more challenge to the source with keyed hash `source` fits in this second
    /// ([`NonceKey::source_hash`]: the key is the one every worker shares). The server-wide
    /// count is taken only once the source's own cap let the challenge through, and only when
    /// `server_wide`.
    fn allow(&self, source: u64, unix_now: u64, server_wide: bool) -> bool {
        let slot = &self.slots[(source % Self::SLOTS as u64) as usize];
        let second = unix_now & 0xFFFF_FFFF;
        Self::take(slot, second) < Self::PER_SECOND
            && (!server_wide
                || Self::take(&self.total, second) < self.max_total.load(Ordering::Relaxed))
    }

    /// Counts one in `counter` for `second` and returns the count before it.
    fn take(counter: &AtomicU64, second: u64) -> u64 {
        let previous = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let count = if packed >> 32 == second {
                packed & 0xFFFF_FFFF
            } else {
                0
            };
            Some(second << 32 | (count + 1).min(0xFFFF_FFFF))
        });
        let packed = previous.unwrap_or_else(|p| p);
        if packed >> 32 == second {
            packed & 0xFFFF_FFFF
        } else {
            0
        }
    }
}

#[derive(Debug, Clone)]
struct Authenticated {
    username: String,
    /// The key the request verified with; responses are signed with it.
    credentials: LongTermKey,
    /// The integrity attribute responses carry (RFC 8489 §9.2.4).
    algorithm: IntegrityAlgorithm,
}

/// Attributes a TURN request may carry without a 420 (RFC 8656 §18, RFC 8489 §14).
const TURN_ATTRIBUTES: [AttributeType; 17] = [
    Username::TYPE,
    Realm::TYPE,
    Nonce::TYPE,
    MessageIntegrity::TYPE,
    MessageIntegritySha256::TYPE,
    wire::PASSWORD_ALGORITHM,
    Fingerprint::TYPE,
    Lifetime::TYPE,
    RequestedTransport::TYPE,
    DontFragment::TYPE,
    EvenPort::TYPE,
    ReservationToken::TYPE,
    XorPeerAddress::TYPE,
    ChannelNumber::TYPE,
    Data::TYPE,
    RequestedAddressFamily::TYPE,
    AdditionalAddressFamily::TYPE,
];

/// Attributes a Binding request may carry without a 420.
const BINDING_ATTRIBUTES: [AttributeType; 10] = [
    Username::TYPE,
    Realm::TYPE,
    Nonce::TYPE,
    MessageIntegrity::TYPE,
    MessageIntegritySha256::TYPE,
    wire::PASSWORD_ALGORITHM,
    Fingerprint::TYPE,
    wire::PRIORITY,
    wire::USE_CANDIDATE,
    wire::CHANGE_REQUEST,
];

use stun_types::attribute::{Attribute, AttributeStaticType, RawAttribute};

pub struct Server {
    config: Arc<ServerConfig>,
    quotas: Arc<Quotas>,
    /// std's hasher, keyed by the OS, because clients choose these keys; no output depends
    /// on the maps' order (see `tuples_by_id`), so that hidden seed changes nothing observable.
    allocations: HashMap<FiveTuple, Allocation>,
    relays: HashMap<SocketAddr, FiveTuple>,
    expiries: BTreeSet<(Instant, FiveTuple)>,
    /// Permission and channel deadlines: each live entry has exactly one here.
    binding_expiries: BTreeSet<(Instant, BindingTimer)>,
    events: VecDeque<Event>,
    /// Kept as entries come and go, so reporting them costs nothing.
    gauges: Gauges,
    denied_peer_log: LogBudget,
    quota_log: LogBudget,
    /// The IPs this server relays from and advertises, learnt as allocations are made (a
    /// handful), beside the configured `relay_ips`: as peers, valid on live relays only.
    own_relay_ips: Vec<IpAddr>,
    /// The relay addresses held right now, this core's and, in the daemon, every worker's:
    /// the only ports of the own relay IPs that relay-to-relay may reach.
    live_relays: Arc<LiveRelays>,
    revocations: Arc<Revocations>,
    /// The id the next allocation gets.
    next_id: u64,
    /// Transaction ids of the indications the server sends; seeded by the driver.
    rng: StdRng,
    pub stats: Stats,
}

impl Server {
    /// `seed` is all the randomness the core's output needs: the transaction ids of the Data
    /// indications it sends come from a CSPRNG seeded with it (RFC 8489 §6 wants them
    /// cryptographically random). The daemon passes fresh OS randomness for each worker;
    /// tests pass a constant and get the same bytes every run.
    pub fn new(config: Arc<ServerConfig>, quotas: Arc<Quotas>, seed: [u8; 32]) -> Self {
        Self {
            config,
            quotas,
            allocations: HashMap::new(),
            relays: HashMap::new(),
            expiries: BTreeSet::new(),
            binding_expiries: BTreeSet::new(),
            events: VecDeque::new(),
            gauges: Gauges::default(),
            denied_peer_log: LogBudget::default(),
            quota_log: LogBudget::default(),
            own_relay_ips: Vec::new(),
            live_relays: Arc::default(),
            revocations: Arc::default(),
            next_id: 1,
            rng: StdRng::from_seed(seed),
            stats: Stats::default(),
        }
    }

    /// Shares `live_relays` with the other cores relaying from the same IPs (the daemon's
    /// workers), so a client of one may relay to an allocation of another; alone, a core
    /// knows only its own. Before any allocation is made.
    pub fn with_live_relays(mut self, live_relays: Arc<LiveRelays>) -> Self {
        debug_assert!(
            self.allocations.is_empty(),
            "relays already marked elsewhere"
        );
        self.live_relays = live_relays;
        self
    }

    /// Replaces the protocol settings (SIGHUP reload); live allocations are kept. If the peer
    /// filter or the server's own addresses changed, every permission and channel to a peer
    /// now denied ends at once, with the events its expiry would emit: an operator who adds a
    /// deny rule expects relaying there to stop now (in the kernel path too, which mirrors the
    /// events), not up to 300 s (permission) or 600 s (channel) later. Allocations stay, so
    /// their clients go on relaying to peers still allowed.
    pub fn set_config(&mut self, config: Arc<ServerConfig>) -> ReloadCut {
        let peers_changed = config.peer_filter != self.config.peer_filter
            || config.own_addresses != self.config.own_addresses
            || config.relay_ips != self.config.relay_ips
            || config.relay_ports != self.config.relay_ports;
        self.config = config;
        if !peers_changed {
            return ReloadCut::default();
        }
        let cut = self.cut_denied_peers();
        if cut != ReloadCut::default() {
            tracing::info!(
                permissions = cut.permissions,
                channels = cut.channels,
                "reloaded peer filter denies live peers: their permissions and channels ended"
            );
        }
        cut
    }

    /// Ends the permissions and channels whose peer the configuration denies, oldest
    /// allocation first (events in an order the inputs decide).
    fn cut_denied_peers(&mut self) -> ReloadCut {
        let mut cut = ReloadCut::default();
        for tuple in self.tuples_by_id(|_| true) {
            let allocation = &self.allocations[&tuple];
            let denied_permissions: Vec<(IpAddr, Instant)> = allocation
                .permissions
                .iter()
                .filter(|p| self.peer_ip_denied(p.peer))
                .map(|p| (p.peer, p.expires))
                .collect();
            let denied_channels: Vec<(u16, Instant)> = allocation
                .channels
                .iter()
                .filter(|c| {
                    self.peer_ip_denied(c.peer.ip())
                        || self.is_own_listener(c.peer)
                        || self.is_own_port_without_relay(c.peer)
                })
                .map(|c| (c.number, c.expires))
                .collect();
            let allocation = self.allocations.get_mut(&tuple).expect("listed above");
            for (peer, expires) in denied_permissions {
                allocation.expire_permission(peer, expires);
                self.binding_expiries
                    .remove(&(expires, BindingTimer::Permission(tuple, peer)));
                self.gauges.permissions -= 1;
                cut.permissions += 1;
                self.events
                    .push_back(Event::PermissionExpired { tuple, peer });
            }
            for (number, expires) in denied_channels {
                let Some(peer) = allocation.expire_channel(number, expires) else {
                    continue;
                };
                self.binding_expiries
                    .remove(&(expires, BindingTimer::Channel(tuple, number)));
                self.gauges.channels -= 1;
                cut.channels += 1;
                self.events.push_back(Event::ChannelExpired {
                    tuple,
                    number,
                    peer,
                });
            }
        }
        self.stats.permissions_cut_by_reload += cut.permissions;
        self.stats.channels_cut_by_reload += cut.channels;
        cut
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Live allocations, permissions and channels: counted as they are made and end, so this
    /// is a copy. An entry past its deadline counts until `handle_timeout` has run for it.
    pub fn gauges(&self) -> Gauges {
        self.gauges
    }

    /// The next effect of the inputs so far; drain until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the next allocation, permission or channel expires.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = self.expiries.first().map(|(at, _)| *at);
        let binding = self.binding_expiries.first().map(|(at, _)| *at);
        allocation.into_iter().chain(binding).min()
    }

    /// Expires every permission, channel and allocation whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_bindings(now);
        while let Some(&(at, tuple)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(allocation) = self.allocations.get(&tuple) {
                tracing::info!(user = %allocation.username, client = %tuple.client,
                    relay = %allocation.relays[0].advertised, "allocation expired");
            }
            self.stats.allocations_expired += 1;
            self.remove_allocation(&tuple, EndReason::Expired);
        }
    }

    /// Removes the permissions and channels whose deadline is at or before `now`.
    fn expire_bindings(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.binding_expiries.first() {
            if at > now {
                break;
            }
            self.binding_expiries.pop_first();
            let (BindingTimer::Permission(tuple, _) | BindingTimer::Channel(tuple, _)) = timer;
            let Some(allocation) = self.allocations.get_mut(&tuple) else {
                continue;
            };
            match timer {
                BindingTimer::Permission(tuple, peer) => {
                    if allocation.expire_permission(peer, at) {
                        self.gauges.permissions -= 1;
                        self.events
                            .push_back(Event::PermissionExpired { tuple, peer });
                    }
                }
                BindingTimer::Channel(tuple, number) => {
                    if let Some(peer) = allocation.expire_channel(number, at) {
                        self.gauges.channels -= 1;
                        self.events.push_back(Event::ChannelExpired {
                            tuple,
                            number,
                            peer,
                        });
                    }
                }
            }
        }
    }

    /// Handles one datagram from a client. `out` receives any reply and must hold at least
    /// `data.len() + 512` bytes.
    pub fn handle_client<'a>(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: FiveTuple,
        data: &'a [u8],
        out: &mut [u8],
    ) -> ClientAction<'a> {
        match wire::classify(data) {
            wire::Kind::ChannelData => self.client_channel_data(now, tuple, data),
            wire::Kind::Stun => self.client_stun(now, unix_now, tuple, data, out),
            wire::Kind::Other => {
                self.stats.malformed += 1;
                ClientAction::Drop
            }
        }
    }

    /// Handles a datagram a peer sent to the relay socket at `relay`. The payload is at
    /// `buf[4..4 + len]`, leaving room to write a ChannelData header in place. Queues no
    /// output, so the packet path needs no drain.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut [u8],
    ) -> Option<PeerAction> {
        let tuple = *self.relays.get(&relay)?;
        let advertised = self.advertised_relay_for(peer);
        let allocation = self.allocations.get_mut(&tuple)?;
        // From another relay of this server behind a 1:1 NAT: known by its advertised
        // address, unless the client permitted the bound one.
        let peer = match advertised {
            Some(advertised) if !allocation.has_permission(peer.ip(), now) => advertised,
            _ => peer,
        };
        // RFC 8656 §10.3: data from a peer without a permission is silently discarded.
        if !allocation.has_permission(peer.ip(), now) {
            self.stats.peer_without_permission += 1;
            return None;
        }
        let channel = allocation.channel_for_peer(peer, now);
        if channel.is_none() && !wire::data_indication_fits(peer, len) {
            self.stats.too_large_dropped += 1;
            return None;
        }
        if !allocation.take_bandwidth(Direction::ToClient, len, now) {
            self.stats.bandwidth_dropped += 1;
            return None;
        }
        self.stats.from_peer_packets += 1;
        self.stats.from_peer_bytes += len as u64;
        allocation.usage.from_peer_packets += 1;
        allocation.usage.from_peer_bytes += len as u64;
        let payload_end = CHANNEL_HEADER_LEN + len;
        if let Some(channel) = channel {
            wire::write_channel_header(buf, channel, len);
            return Some(PeerAction::ChannelData {
                tuple,
                len: payload_end,
            });
        }
        let transaction = TransactionId::from(self.rng.random::<u128>());
        let mut indication = Response::indication(DATA, transaction, out);
        indication.add(&XorPeerAddress::new(peer, indication.transaction_id()));
        indication.add(&Data::new(&buf[CHANNEL_HEADER_LEN..payload_end]));
        let len = indication.finish();
        Some(PeerAction::DataIndication { tuple, len })
    }

    fn client_channel_data<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        data: &'a [u8],
    ) -> ClientAction<'a> {
        let Some((channel, len)) = wire::channel_data_header(data) else {
            self.stats.malformed += 1;
            return ClientAction::Drop;
        };
        let Some(allocation) = self.allocations.get_mut(&tuple) else {
            self.stats.dropped += 1;
            return ClientAction::Drop;
        };
        let Some(peer) = allocation.channel_peer(channel, now) else {
            self.stats.dropped += 1;
            return ClientAction::Drop;
        };
        let payload = &data[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + len];
        let action = forward_to_peer(allocation, &mut self.stats, now, peer, payload);
        self.to_bound_relay(action)
    }

    fn client_stun<'a>(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: FiveTuple,
        data: &'a [u8],
        out: &mut [u8],
    ) -> ClientAction<'a> {
        let Ok(msg) = wire::parse_stun(data) else {
            self.stats.malformed += 1;
            return ClientAction::Drop;
        };
        match (msg.class(), msg.method()) {
            (MessageClass::Request, BINDING) => self.binding(&msg, tuple, unix_now, out),
            (MessageClass::Indication, SEND) => self.send_indication(now, tuple, &msg, data),
            (MessageClass::Request, m)
                if m == ALLOCATE || m == REFRESH || m == CREATE_PERMISSION || m == CHANNEL_BIND =>
            {
                self.turn_request(now, unix_now, tuple, &msg, out)
            }
            (MessageClass::Request, _) => {
                self.reject(&msg, &Error::BadRequest, None, tuple, unix_now, out)
            }
            // Binding indications are keepalives (RFC 8489 §6.3.2); responses and other
            // indications have no business here.
            _ => {
                self.stats.dropped += 1;
                ClientAction::Drop
            }
        }
    }

    fn binding<'a>(
        &mut self,
        msg: &Message<'_>,
        tuple: FiveTuple,
        unix_now: u64,
        out: &mut [u8],
    ) -> ClientAction<'a> {
        self.stats.binding_requests += 1;
        if let Some(error) = unknown_attributes(msg, &BINDING_ATTRIBUTES) {
            return self.reject(msg, &error, None, tuple, unix_now, out);
        }
        let mut response = Response::success(BINDING, msg.transaction_id(), out);
        response.add(&XorMappedAddress::new(tuple.client, msg.transaction_id()));
        response.add_mapped_address(tuple.client);
        // No SOFTWARE here or in other unauthenticated answers, and FINGERPRINT only for a
        // request that has one: they would only make the server a better reflector (DESIGN
        // "no response much larger than the request").
        ClientAction::Reply(response.finish_with_fingerprint(msg.has_attribute(Fingerprint::TYPE)))
    }

    /// The one place an error response is built and counted. 401 and 438 are challenges
    /// ([`challenge`](Self::challenge)), which may be dropped over their rate cap; any other
    /// error is signed when the request authenticated (RFC 8489 §9.2.4).
    fn reject<'a>(
        &mut self,
        msg: &Message<'_>,
        error: &Error,
        auth: Option<&Authenticated>,
        tuple: FiveTuple,
        unix_now: u64,
        out: &mut [u8],
    ) -> ClientAction<'a> {
        if error.is_challenge() {
            return match self.challenge(msg, error.code(), tuple, unix_now, out) {
                0 => ClientAction::Drop,
                len => ClientAction::Reply(len),
            };
        }
        let fingerprint = msg.has_attribute(Fingerprint::TYPE);
        let len = self.error_response(
            msg.method(),
            msg.transaction_id(),
            fingerprint,
            error,
            auth,
            out,
        );
        ClientAction::Reply(len)
    }

    /// An error response other than a challenge: signed, with SOFTWARE, when `auth` is given
    /// (only authenticated clients get SOFTWARE); otherwise with FINGERPRINT if the request
    /// had one.
    fn error_response(
        &mut self,
        method: Method,
        transaction: TransactionId,
        fingerprint: bool,
        error: &Error,
        auth: Option<&Authenticated>,
        out: &mut [u8],
    ) -> usize {
        let code = error.code();
        self.stats.errors.record(code);
        tracing::debug!(method = %method, code, "error response");
        let mut response = Response::error(method, transaction, code, out);
        match error {
            Error::UnknownAttributes(unknown) => response.add(&UnknownAttributes::new(unknown)),
            Error::TryAlternate(alternate) => response.add(&AlternateServer::new(*alternate)),
            _ => {}
        }
        match auth {
            Some(auth) => {
                response.add_software(self.config.software.as_deref());
                response.finish_signed(&auth.credentials, auth.algorithm)
            }
            None => response.finish_with_fingerprint(fingerprint),
        }
    }

    /// A 401 or 438 challenge, never signed, with only what RFC 8489 §9.2.4 asks for: REALM, a
    /// fresh NONCE and PASSWORD-ALGORITHMS (which the nonce cookie promises), and an ERROR-CODE
    /// without reason phrase; no FINGERPRINT or SOFTWARE. Every byte here is a byte a spoofed
    /// request can reflect. Challenges are capped per source address and for the whole
    /// server; over a cap the request is dropped (the length is 0).
    fn challenge(
        &mut self,
        msg: &Message<'_>,
        code: u16,
        tuple: FiveTuple,
        unix_now: u64,
        out: &mut [u8],
    ) -> usize {
        // Caps stop reflection towards addresses a spoofer writes in; a TCP/TLS client's
        // address was proven by its handshake. A 5-tuple that holds an allocation has proven
        // it too, and must get its 438 to refresh: a flood cannot use up the server-wide cap
        // in front of it (its source's own cap still applies).
        let spoofable = tuple.transport == Transport::Udp;
        let server_wide = !self.allocations.contains_key(&tuple);
        if spoofable
            && !self.quotas.challenges.allow(
                self.config.nonce_key.source_hash(tuple.client.ip()),
                unix_now,
                server_wide,
            )
        {
            self.stats.challenges_suppressed += 1;
            return 0;
        }
        self.stats.errors.record(code);
        let mut response =
            Response::error_with_reason(msg.method(), msg.transaction_id(), code, Some(""), out);
        if let Ok(realm) = Realm::new(&self.config.realm) {
            response.add(&realm);
        }
        let nonce = self.config.nonce_key.issue(tuple.client, unix_now);
        if let Ok(nonce) = Nonce::new(&nonce) {
            response.add(&nonce);
        }
        let offered =
            wire::password_algorithms_value(PasswordAlgorithm::OFFERED.map(|a| a.number()));
        response.add(&RawAttribute::new(
            wire::PASSWORD_ALGORITHMS,
            offered.as_flattened(),
        ));
        response.finish_with_fingerprint(false)
    }

    /// RFC 8489 §9.2.4 steps, in order, except that the nonce is checked before the username
    /// and integrity (as RFC 5389 ordered them): a stale or forged nonce costs no HMAC.
    fn authenticate(
        &mut self,
        msg: &Message<'_>,
        tuple: FiveTuple,
        unix_now: u64,
    ) -> Result<Authenticated, Error> {
        let has_integrity = msg.has_attribute(MessageIntegrity::TYPE)
            || msg.has_attribute(MessageIntegritySha256::TYPE);
        if !has_integrity {
            self.stats.auth_missing += 1;
            return Err(Error::Unauthorized);
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            msg.attribute::<Username>(),
            msg.attribute::<Realm>(),
            msg.attribute::<Nonce>(),
        ) else {
            return Err(Error::BadRequest);
        };
        let Ok(password_algorithm) = negotiated_algorithm(msg, nonce.nonce()) else {
            self.stats.auth_bad_algorithm += 1;
            tracing::debug!(client = %tuple.client, "password algorithm negotiation failed (400)");
            return Err(Error::BadRequest);
        };
        let lifetime = self.config.nonce_lifetime.as_secs();
        if self
            .config
            .nonce_key
            .check(nonce.nonce(), tuple.client, unix_now, lifetime)
            == NonceCheck::Stale
        {
            self.stats.auth_stale_nonce += 1;
            return Err(Error::StaleNonce);
        }
        if realm.realm() != self.config.realm {
            self.stats.auth_unknown_user += 1;
            return Err(Error::Unauthorized);
        }
        let username = username.username().to_owned();
        let passwords = match self.config.credentials.passwords(&username, unix_now) {
            Ok(passwords) => passwords,
            Err(reason) => {
                match reason {
                    AuthError::Expired => self.stats.auth_expired += 1,
                    _ => self.stats.auth_unknown_user += 1,
                }
                tracing::debug!(client = %tuple.client, %username, %reason, "authentication failed");
                return Err(Error::Unauthorized);
            }
        };
        // §9.2.4: without PASSWORD-ALGORITHM the key is MD5's, whichever integrity attribute
        // carries it, and responses carry MESSAGE-INTEGRITY; once an algorithm was negotiated
        // they carry MESSAGE-INTEGRITY-SHA256.
        let (key_algorithm, algorithm) = match password_algorithm {
            None => (PasswordAlgorithm::Md5, IntegrityAlgorithm::Sha1),
            Some(negotiated) => (negotiated, IntegrityAlgorithm::Sha256),
        };
        for password in passwords {
            let credentials =
                LongTermKey::new(key_algorithm, &username, &self.config.realm, &password);
            if wire::verify_integrity(msg, credentials.as_ref()).is_some() {
                return Ok(Authenticated {
                    username,
                    credentials,
                    algorithm,
                });
            }
        }
        self.stats.auth_bad_integrity += 1;
        tracing::debug!(client = %tuple.client, %username, "bad message integrity");
        Err(Error::Unauthorized)
    }

    fn turn_request<'a>(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> ClientAction<'a> {
        let auth = match self.authenticate(msg, tuple, unix_now) {
            Ok(auth) => auth,
            Err(error) => return self.reject(msg, &error, None, tuple, unix_now, out),
        };
        if let Some(error) = unknown_attributes(msg, &TURN_ATTRIBUTES) {
            return self.reject(msg, &error, Some(&auth), tuple, unix_now, out);
        }
        // RFC 8656 §5: requests on an allocation must come from the user that made it.
        if let Some(allocation) = self.allocations.get(&tuple) {
            if allocation.username != auth.username {
                let error = Error::WrongCredentials;
                return self.reject(msg, &error, Some(&auth), tuple, unix_now, out);
            }
        }
        let method = msg.method();
        let result = if method == ALLOCATE {
            return self.allocate(now, unix_now, tuple, msg, auth, out);
        } else if method == REFRESH {
            self.refresh(now, tuple, msg)
        } else if method == CREATE_PERMISSION {
            self.create_permission(now, tuple, msg)
        } else {
            self.channel_bind(now, tuple, msg)
        };
        match result {
            Ok(lifetime) => {
                let mut response = Response::success(method, msg.transaction_id(), out);
                if let Some(lifetime) = lifetime {
                    response.add(&Lifetime::new(wire_lifetime(lifetime)));
                }
                response.add_software(self.config.software.as_deref());
                ClientAction::Reply(response.finish_signed(&auth.credentials, auth.algorithm))
            }
            Err(error) => self.reject(msg, &error, Some(&auth), tuple, unix_now, out),
        }
    }

    fn allocate<'a>(
        &mut self,
        now: Instant,
        unix_now: u64,
        tuple: FiveTuple,
        msg: &Message<'_>,
        auth: Authenticated,
        out: &mut [u8],
    ) -> ClientAction<'a> {
        if let Some(allocation) = self.allocations.get(&tuple) {
            // A retransmitted Allocate gets the original answer (RFC 8656 §7.2, step 1).
            if allocation.transaction == msg.transaction_id() {
                let len = self.allocate_success(&tuple, &auth, out);
                return ClientAction::Reply(len);
            }
            let error = Error::AllocationMismatch;
            return self.reject(msg, &error, Some(&auth), tuple, unix_now, out);
        }
        if let Some(alternate) = self.alternate_for(tuple.client) {
            let error = Error::TryAlternate(alternate);
            return self.reject(msg, &error, Some(&auth), tuple, unix_now, out);
        }
        if self.config.draining {
            let error = Error::InsufficientCapacity;
            return self.reject(msg, &error, Some(&auth), tuple, unix_now, out);
        }
        let user = self.config.credentials.quota_key(&auth.username);
        if self.revocations.revokes(&auth.username, user, unix_now) {
            let error = Error::Revoked;
            return self.reject(msg, &error, Some(&auth), tuple, unix_now, out);
        }
        match self.check_allocate(now, tuple, msg, &auth) {
            Ok(pending) => ClientAction::Allocate(pending),
            Err(error) => self.reject(msg, &error, Some(&auth), tuple, unix_now, out),
        }
    }

    /// The alternate server for `client`, when redirection is configured.
    fn alternate_for(&self, client: SocketAddr) -> Option<SocketAddr> {
        let servers = &self.config.alternate_servers;
        if servers.is_empty() {
            return None;
        }
        // A stable spread: the same client lands on the same alternate.
        let hash = match client.ip() {
            IpAddr::V4(ip) => u128::from(u32::from(ip)),
            IpAddr::V6(ip) => u128::from(ip),
        };
        Some(servers[(hash % servers.len() as u128) as usize])
    }

    /// RFC 8656 §7.2 steps 3–9, ending with the quota slot claimed. Every attribute is read
    /// through [`wire::attribute`]: a malformed one is 400 wherever it is.
    fn check_allocate(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) -> Result<PendingAllocation, Error> {
        // Step 3: absent or malformed is 400, another protocol 442.
        let transport = wire::required::<RequestedTransport>(msg, Error::BadRequest)?;
        if transport.protocol() != wire::PROTOCOL_UDP {
            return Err(Error::UnsupportedTransportProtocol);
        }
        // Step 4: DONT-FRAGMENT is accepted (relay sockets keep Linux's path-MTU discovery).
        wire::attribute::<DontFragment>(msg, Error::BadRequest)?;
        let even_port = wire::attribute::<EvenPort>(msg, Error::BadRequest)?.map(|e| e.requested());
        let reservation_token =
            wire::attribute::<ReservationToken>(msg, Error::BadRequest)?.map(|t| t.token());
        // ADDITIONAL-ADDRESS-FAMILY other than IPv6 is 400 (step 9) whenever it is checked.
        let additional_family = wire::additional_address_family(msg)?;
        let requested_present = msg.has_attribute(RequestedAddressFamily::TYPE);
        // Step 5: a reservation fixes the relay, so nothing may ask for another.
        if reservation_token.is_some()
            && (even_port.is_some() || requested_present || additional_family.is_some())
        {
            return Err(Error::BadRequest);
        }
        // Step 6.
        if requested_present && additional_family.is_some() {
            return Err(Error::BadRequest);
        }
        // Step 7: a family the server cannot relay in, or one RFC 8656 §18.6 does not define,
        // is 440.
        let requested_family =
            wire::attribute::<RequestedAddressFamily>(msg, Error::AddressFamilyNotSupported)?
                .map(|f| f.family());
        // Step 8: the port reserved beside an even one would have to be in both families.
        if even_port == Some(true) && additional_family.is_some() {
            return Err(Error::BadRequest);
        }
        let lifetime = self.lifetime(wire::attribute::<Lifetime>(msg, Error::BadRequest)?);
        let family = requested_family.unwrap_or(AddressFamily::IPV4);
        let available = |family| match family {
            AddressFamily::IPV4 => self.config.relay_ipv4,
            AddressFamily::IPV6 => self.config.relay_ipv6,
        };
        if !available(family) && reservation_token.is_none() {
            return Err(Error::AddressFamilyNotSupported);
        }
        let mut families = vec![family];
        let mut unavailable_family = None;
        if let Some(additional) = additional_family {
            if available(additional) {
                families.push(additional);
            } else {
                unavailable_family = Some(additional);
            }
        }
        let quota_key = self.config.credentials.quota_key(&auth.username).to_owned();
        if let Err(error) = self.quotas.claim(&quota_key) {
            match error {
                Error::AllocationQuotaReached => self.stats.quota_user += 1,
                _ => self.stats.quota_total += 1,
            }
            if let Some(suppressed) = self.quota_log.allow(now) {
                let code = error.code();
                tracing::warn!(user = %quota_key, code, suppressed, "allocation refused by quota");
            }
            return Err(error);
        }
        Ok(PendingAllocation {
            tuple,
            families,
            unavailable_family,
            even_port,
            reservation_token,
            transaction: msg.transaction_id(),
            auth: auth.clone(),
            lifetime,
            quota: QuotaSlot {
                quotas: self.quotas.clone(),
                key: quota_key,
                held: true,
            },
        })
    }

    /// RFC 8656 §7.2, §8.2: the requested lifetime, clamped to [default, max]. Whatever the
    /// config says, the result fits the 32-bit LIFETIME attribute and `now + lifetime` cannot
    /// overflow (and `clamp` cannot panic on default > max).
    fn lifetime(&self, requested: Option<Lifetime>) -> Duration {
        let max = self.config.max_lifetime.min(MAX_WIRE_LIFETIME);
        let default = self.config.default_lifetime.min(max);
        requested
            .map(|l| Duration::from_secs(l.seconds().into()))
            .unwrap_or(default)
            .clamp(default, max)
    }

    /// Completes an Allocate once the driver has bound a relay socket for each of
    /// `pending.families`, in that order. `reserved_token` is the RESERVATION-TOKEN for a port
    /// the driver reserved beside the first.
    pub fn accept_allocation(
        &mut self,
        now: Instant,
        unix_now: u64,
        pending: PendingAllocation,
        relays: &[SocketAddr],
        reserved_token: Option<u64>,
        out: &mut [u8],
    ) -> usize {
        let relays: Vec<RelayAddress> = relays
            .iter()
            .map(|&local| RelayAddress {
                local,
                advertised: self.advertised(local),
            })
            .collect();
        let quota_key = pending.quota.keep();
        let expires = now + pending.lifetime;
        tracing::info!(user = %quota_key, client = %pending.tuple.client,
            relay = ?relays.iter().map(|r| r.advertised).collect::<Vec<_>>(),
            transport = pending.tuple.transport.as_str(),
            lifetime = pending.lifetime.as_secs(), "allocation created");
        // The driver completes pending allocations at once, so none can be in the way; if a
        // driver ever deferred, replace rather than leak the old one's relays and quota.
        // (Not reachable today, so no reason of its own.)
        self.remove_allocation(&pending.tuple, EndReason::Deleted);
        for relay in &relays {
            self.relays.insert(relay.local, pending.tuple);
            self.live_relays.mark(relay.local, true);
            for ip in [relay.local.ip(), relay.advertised.ip()] {
                if !self.own_relay_ips.contains(&ip) {
                    self.own_relay_ips.push(ip);
                }
            }
        }
        let allocation = Allocation {
            relays,
            username: pending.auth.username.clone(),
            quota_key,
            expires,
            transaction: pending.transaction,
            lifetime: pending.lifetime,
            reservation_token: reserved_token,
            unavailable_family: pending.unavailable_family,
            permissions: Vec::new(),
            channels: Vec::new(),
            bandwidth: self
                .config
                .bandwidth_per_allocation
                .map(|rate| [TokenBucket::new(rate, now), TokenBucket::new(rate, now)]),
            usage: Usage::new(now, unix_now),
            id: self.next_id,
        };
        self.next_id += 1;
        self.events.push_back(Event::AllocationCreated {
            id: allocation.id,
            tuple: pending.tuple,
            username: allocation.username.clone(),
            relays: allocation.relays.clone(),
            expires,
        });
        self.allocations.insert(pending.tuple, allocation);
        self.expiries.insert((expires, pending.tuple));
        self.gauges.allocations[pending.tuple.transport as usize] += 1;
        self.stats.allocations_created[pending.tuple.transport as usize] += 1;
        self.allocate_success(&pending.tuple, &pending.auth, out)
    }

    /// The address to advertise for a relay bound at `local`.
    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        let ip = local.ip();
        let external = &self.config.external_ips;
        let public = external
            .iter()
            .find(|(private, _)| *private == Some(ip))
            .or_else(|| {
                external
                    .iter()
                    .find(|(private, public)| private.is_none() && public.is_ipv4() == ip.is_ipv4())
            })
            .map_or(ip, |(_, public)| *public);
        SocketAddr::new(public, local.port())
    }

    /// Answers an Allocate the driver could not serve (508: no relay port; 440: no address).
    pub fn reject_allocation(
        &mut self,
        pending: PendingAllocation,
        error: Error,
        out: &mut [u8],
    ) -> usize {
        drop(pending.quota);
        let transaction = pending.transaction;
        self.error_response(
            ALLOCATE,
            transaction,
            false,
            &error,
            Some(&pending.auth),
            out,
        )
    }

    fn allocate_success(&self, tuple: &FiveTuple, auth: &Authenticated, out: &mut [u8]) -> usize {
        let allocation = &self.allocations[tuple];
        let transaction = allocation.transaction;
        let mut response = Response::success(ALLOCATE, transaction, out);
        for relay in &allocation.relays {
            response.add(&XorRelayedAddress::new(relay.advertised, transaction));
        }
        if let Some(family) = allocation.unavailable_family {
            let code = ErrorCode::from(&Error::AddressFamilyNotSupported);
            response.add(&AddressErrorCode::new(family, code));
        }
        response.add(&Lifetime::new(wire_lifetime(allocation.lifetime)));
        if let Some(token) = allocation.reservation_token {
            response.add(&ReservationToken::new(token));
        }
        response.add(&XorMappedAddress::new(tuple.client, transaction));
        response.add_software(self.config.software.as_deref());
        response.finish_signed(&auth.credentials, auth.algorithm)
    }

    /// RFC 8656 §8.2: Refresh; a zero lifetime deletes the allocation.
    fn refresh(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Option<Duration>, Error> {
        let Some(allocation) = self.allocations.get(&tuple) else {
            return Err(Error::AllocationMismatch);
        };
        // "does not match the address family of the allocation": 443, and the allocation is
        // left as it was. A family byte RFC 8656 §18.6 does not define matches none.
        let mismatch = Error::PeerAddressFamilyMismatch;
        if let Some(family) = wire::attribute::<RequestedAddressFamily>(msg, mismatch.clone())? {
            let ipv4 = family.family() == AddressFamily::IPV4;
            if !allocation.relays.iter().any(|r| r.local.is_ipv4() == ipv4) {
                return Err(mismatch);
            }
        }
        let requested = wire::attribute::<Lifetime>(msg, Error::BadRequest)?;
        if requested.as_ref().map(Lifetime::seconds) == Some(0) {
            if let Some(allocation) = self.allocations.get(&tuple) {
                tracing::info!(user = %allocation.quota_key, client = %tuple.client,
                    relay = %allocation.relays[0].advertised, "allocation deleted");
            }
            self.stats.allocations_deleted += 1;
            self.remove_allocation(&tuple, EndReason::Deleted);
            return Ok(Some(Duration::ZERO));
        }
        let lifetime = self.lifetime(requested);
        let allocation = self.allocations.get_mut(&tuple).expect("checked above");
        self.expiries.remove(&(allocation.expires, tuple));
        allocation.expires = now + lifetime;
        allocation.lifetime = lifetime;
        self.expiries.insert((allocation.expires, tuple));
        Ok(Some(lifetime))
    }

    /// Whether the server may relay to `peer`: never to one of the server's own listening
    /// sockets; to one of its own relay IPs where one of its relay sockets is bound now
    /// (relay-to-relay); to any other port of that IP only if `allow_peers` names it;
    /// elsewhere as the filter says.
    fn check_peer(&mut self, now: Instant, peer: SocketAddr) -> Result<(), Error> {
        if self.is_own_listener(peer) || self.is_own_port_without_relay(peer) {
            self.deny_peer(now, peer.ip());
            return Err(Error::Forbidden);
        }
        self.check_peer_ip(now, peer.ip())
    }

    /// Whether `peer` is one of the server's own listening sockets (under its bound or its
    /// advertised address).
    fn is_own_listener(&self, peer: SocketAddr) -> bool {
        let filter = &self.config.peer_filter;
        let target = self.bound_relay_for(peer).unwrap_or(peer);
        self.config.own_addresses.iter().any(|own| {
            own.port() == peer.port()
                && (own.ip().is_unspecified()
                    || own.ip() == target.ip()
                    || filter.forms(peer.ip()).any(|ip| ip == own.ip()))
        })
    }

    /// A port of one of the server's own relay IPs, not opened by `allow_peers`, that is no
    /// relay of this server right now: outside the relay range, or inside it with no
    /// allocation's socket bound there (whatever else is: another process's socket on the
    /// relay IP or the wildcard, a resolver's query port in the ephemeral range, say).
    fn is_own_port_without_relay(&self, peer: SocketAddr) -> bool {
        self.is_own_relay_ip(peer.ip())
            && !self.is_live_relay(peer)
            && !self.config.peer_filter.explicitly_allows(peer.ip())
    }

    /// Whether `peer`, bound or advertised, is a relay socket some allocation holds now.
    fn is_live_relay(&self, peer: SocketAddr) -> bool {
        self.config.relay_ports.contains(&peer.port())
            && self
                .live_relays
                .is_live(self.bound_relay_for(peer).unwrap_or(peer))
    }

    fn check_peer_ip(&mut self, now: Instant, peer: IpAddr) -> Result<(), Error> {
        if self.peer_ip_denied(peer) {
            self.deny_peer(now, peer);
            return Err(Error::Forbidden);
        }
        Ok(())
    }

    /// Permissions are per IP (RFC 8656 §9), so this has no port to judge. One of the
    /// server's own relay IPs, exactly as advertised or bound, is allowed even in a denied
    /// range: behind it may be another allocation of this server, which applies its own
    /// permissions (`check_peer` keeps the ports to the relays held now). Carried in an IPv6
    /// form (NAT64 and the like) it is a detour through some translator, denied unless
    /// `allow_peers` names it. Everything else is the peer filter's call.
    fn peer_ip_denied(&self, peer: IpAddr) -> bool {
        if self.is_own_relay_ip(peer) {
            return false;
        }
        let filter = &self.config.peer_filter;
        let own_relay = filter.forms(peer).any(|ip| self.is_own_relay_ip(ip))
            && !filter.explicitly_allows(peer);
        own_relay || !filter.is_allowed(peer)
    }

    /// A datagram for another client's relay address as advertised through a 1:1 NAT goes
    /// to the address that relay is bound on: sent to the public address it would leave
    /// the host and come back only if the NAT hairpins.
    fn to_bound_relay<'a>(&self, action: ClientAction<'a>) -> ClientAction<'a> {
        match action {
            ClientAction::Relay {
                relay,
                peer,
                payload,
            } => ClientAction::Relay {
                relay,
                peer: self.bound_relay_for(peer).unwrap_or(peer),
                payload,
            },
            other => other,
        }
    }

    /// The bound address behind `peer` when it is a relay port of one of this server's
    /// advertised (public) IPs other than the bound IP itself. Free without `external_ips`.
    fn bound_relay_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        let external = &self.config.external_ips;
        let public = |ip: IpAddr| external.iter().any(|&(_, public)| public == ip);
        if external.is_empty() || !self.config.relay_ports.contains(&peer.port()) {
            return None;
        }
        if !public(peer.ip()) {
            return None;
        }
        self.config
            .relay_ips
            .iter()
            .chain(&self.own_relay_ips)
            .find(|&&local| {
                !public(local) && self.advertised(SocketAddr::new(local, 0)).ip() == peer.ip()
            })
            .map(|&local| SocketAddr::new(local, peer.port()))
    }

    /// The advertised address of `peer` when it is a relay port of one of this server's
    /// bound relay IPs that a 1:1 NAT maps: what clients know that relay by. Free without
    /// `external_ips`.
    fn advertised_relay_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        if self.config.external_ips.is_empty() || !self.config.relay_ports.contains(&peer.port()) {
            return None;
        }
        let advertised = self.advertised(peer);
        (advertised != peer && self.is_own_relay_ip(peer.ip())).then_some(advertised)
    }

    /// Whether `ip`, as written, is a relay IP of this server, bound or advertised:
    /// configured, or learnt from an allocation made here.
    fn is_own_relay_ip(&self, ip: IpAddr) -> bool {
        self.own_relay_ips.contains(&ip)
            || self
                .config
                .relay_ips
                .iter()
                .any(|&relay| relay == ip || self.advertised(SocketAddr::new(relay, 0)).ip() == ip)
    }

    fn deny_peer(&mut self, now: Instant, peer: IpAddr) {
        self.stats.denied_peers += 1;
        if let Some(suppressed) = self.denied_peer_log.allow(now) {
            tracing::warn!(%peer, suppressed, "relay to denied peer refused (403)");
        }
    }

    /// Installs or refreshes the permission for `peer` on `tuple`'s allocation, with its timer.
    fn permit(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        peer: IpAddr,
        cap: usize,
    ) -> Result<(), Error> {
        let allocation = self
            .allocations
            .get_mut(&tuple)
            .ok_or(Error::AllocationMismatch)?;
        let expires = now + PERMISSION_LIFETIME;
        let timer = BindingTimer::Permission(tuple, peer);
        match allocation.permit(peer, expires, cap) {
            Err(_) => return Err(Error::InsufficientCapacity),
            Ok(Some(old)) => {
                self.binding_expiries.remove(&(old, timer));
            }
            Ok(None) => {
                self.gauges.permissions += 1;
                self.events.push_back(Event::PermissionCreated {
                    tuple,
                    peer,
                    expires,
                });
            }
        }
        self.binding_expiries.insert((expires, timer));
        Ok(())
    }

    /// RFC 8656 §10.2: CreatePermission with one or more XOR-PEER-ADDRESS; all or nothing.
    /// None, or any that is invalid (an unknown family included), is 400.
    fn create_permission(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Option<Duration>, Error> {
        let Some(allocation) = self.allocations.get(&tuple) else {
            return Err(Error::AllocationMismatch);
        };
        let peers: Vec<SocketAddr> = wire::every::<XorPeerAddress>(msg, Error::BadRequest)?
            .iter()
            .map(|a| a.addr(msg.transaction_id()))
            .collect();
        if peers.is_empty() {
            return Err(Error::BadRequest);
        }
        if peers
            .iter()
            .any(|peer| allocation.relay_for(*peer).is_none())
        {
            return Err(Error::PeerAddressFamilyMismatch);
        }
        for peer in &peers {
            self.check_peer_ip(now, peer.ip())?;
        }
        // Entries past their deadline go first (as their timers would), so they free slots.
        self.expire_bindings(now);
        let cap = self.config.max_permissions_per_allocation;
        let allocation = &self.allocations[&tuple];
        // All or nothing: refuse before installing any if they would not all fit.
        let mut new_ips: Vec<IpAddr> = peers
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !allocation.permissions.iter().any(|p| p.peer == *ip))
            .collect();
        new_ips.sort_unstable();
        new_ips.dedup();
        if allocation.permissions.len() + new_ips.len() > cap {
            return Err(Error::InsufficientCapacity);
        }
        for peer in &peers {
            self.permit(now, tuple, peer.ip(), cap)?;
            self.stats.permissions_created += 1;
        }
        Ok(None)
    }

    /// RFC 8656 §12.2: ChannelBind, which also installs a permission for the peer. Both
    /// attributes are required; absent, malformed or out of range is 400.
    fn channel_bind(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<Option<Duration>, Error> {
        if !self.allocations.contains_key(&tuple) {
            return Err(Error::AllocationMismatch);
        }
        let number = wire::required::<ChannelNumber>(msg, Error::BadRequest)?.channel();
        if !wire::CHANNEL_RANGE.contains(&number) {
            return Err(Error::BadRequest);
        }
        let peer =
            wire::required::<XorPeerAddress>(msg, Error::BadRequest)?.addr(msg.transaction_id());
        if self.allocations[&tuple].relay_for(peer).is_none() {
            return Err(Error::PeerAddressFamilyMismatch);
        }
        self.check_peer(now, peer)?;
        // Entries past their deadline go first (as their timers would), so they free slots.
        self.expire_bindings(now);
        let permission_cap = self.config.max_permissions_per_allocation;
        let channel_cap = self.config.max_channels_per_allocation;
        self.allocations[&tuple]
            .check_channel(number, peer, now, channel_cap)
            .map_err(|e| match e {
                BindError::Conflict => Error::BadRequest,
                BindError::Full => Error::InsufficientCapacity,
            })?;
        self.permit(now, tuple, peer.ip(), permission_cap)?;
        let allocation = self.allocations.get_mut(&tuple).expect("checked above");
        let expires = now + CHANNEL_LIFETIME;
        let timer = BindingTimer::Channel(tuple, number);
        match allocation.bind_channel(number, peer, expires) {
            Some(old) => {
                self.binding_expiries.remove(&(old, timer));
                self.events.push_back(Event::ChannelRefreshed {
                    tuple,
                    number,
                    peer,
                    expires,
                });
            }
            None => {
                self.gauges.channels += 1;
                self.events.push_back(Event::ChannelBound {
                    tuple,
                    number,
                    peer,
                    expires,
                });
            }
        }
        self.binding_expiries.insert((expires, timer));
        self.stats.channels_bound += 1;
        Ok(None)
    }

    /// RFC 8656 §11.2: a Send indication is relayed only with an allocation and a permission;
    /// anything else is silently dropped (indications get no answer). So is one with an
    /// unknown comprehension-required attribute (RFC 8489 §6.3.2), and one whose
    /// XOR-PEER-ADDRESS, DATA or DONT-FRAGMENT is absent or invalid ([`wire::attribute`]).
    fn send_indication<'a>(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
        data: &'a [u8],
    ) -> ClientAction<'a> {
        if unknown_required(msg, &TURN_ATTRIBUTES).next().is_some() {
            self.stats.unknown_attribute_dropped += 1;
            return ClientAction::Drop;
        }
        let (Ok(Some(peer)), Ok(_), Some((offset, data_attr))) = (
            wire::attribute::<XorPeerAddress>(msg, Error::BadRequest),
            wire::attribute::<DontFragment>(msg, Error::BadRequest),
            msg.raw_attribute_and_offset(Data::TYPE),
        ) else {
            self.stats.malformed += 1;
            return ClientAction::Drop;
        };
        let peer = peer.addr(msg.transaction_id());
        let payload_len = data_attr.value.len();
        // The DATA value starts after the 4-byte attribute header; borrow it from `data` so the
        // payload is not copied before the send.
        let start = offset + 4;
        let Some(payload) = data.get(start..start + payload_len) else {
            self.stats.malformed += 1;
            return ClientAction::Drop;
        };
        if self.check_peer(now, peer).is_err() {
            return ClientAction::Drop;
        }
        let Some(allocation) = self.allocations.get_mut(&tuple) else {
            self.stats.dropped += 1;
            return ClientAction::Drop;
        };
        let action = forward_to_peer(allocation, &mut self.stats, now, peer, payload);
        self.to_bound_relay(action)
    }

    /// Ends the allocation on `tuple` with its permissions and channels, their timers, its
    /// quota slot and its relays.
    fn remove_allocation(&mut self, tuple: &FiveTuple, reason: EndReason) {
        let Some(allocation) = self.allocations.remove(tuple) else {
            return;
        };
        self.expiries.remove(&(allocation.expires, *tuple));
        for permission in &allocation.permissions {
            let timer = BindingTimer::Permission(*tuple, permission.peer);
            self.binding_expiries.remove(&(permission.expires, timer));
        }
        for channel in &allocation.channels {
            let timer = BindingTimer::Channel(*tuple, channel.number);
            self.binding_expiries.remove(&(channel.expires, timer));
        }
        self.gauges.allocations[tuple.transport as usize] -= 1;
        self.gauges.permissions -= allocation.permissions.len() as u64;
        self.gauges.channels -= allocation.channels.len() as u64;
        self.quotas.release(&allocation.quota_key);
        for relay in &allocation.relays {
            self.relays.remove(&relay.local);
            // Before the driver closes the socket (on RelayReleased): whatever binds the
            // port after that is never taken for a relay.
            self.live_relays.mark(relay.local, false);
        }
        let released: Vec<SocketAddr> = allocation.relays.iter().map(|r| r.local).collect();
        self.events.push_back(Event::AllocationEnded {
            id: allocation.id,
            tuple: *tuple,
            username: allocation.username,
            relays: allocation.relays,
            usage: allocation.usage,
            reason,
        });
        self.events.extend(
            released
                .into_iter()
                .map(|relay| Event::RelayReleased { relay }),
        );
    }

    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.allocations.contains_key(tuple)
    }

    /// A TCP or TLS client connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn close_connection(&mut self, tuple: &FiveTuple) {
        if let Some(allocation) = self.allocations.get(tuple) {
            tracing::info!(user = %allocation.quota_key, client = %tuple.client,
                relay = %allocation.relays[0].advertised, "allocation ended with its connection");
            self.stats.allocations_deleted += 1;
            self.remove_allocation(tuple, EndReason::ConnectionClosed);
        }
    }

    /// The revoked credentials: they may not allocate (403) until their time is up. Live
    /// allocations are not touched; [`Server::end_revoked`] ends those.
    pub fn set_revocations(&mut self, revocations: Arc<Revocations>) {
        self.revocations = revocations;
    }

    /// Ends every allocation whose user is revoked at `unix_now`; returns how many.
    pub fn end_revoked(&mut self, unix_now: u64) -> usize {
        if self.revocations.is_empty() {
            return 0;
        }
        let revoked = self.tuples_by_id(|a| {
            self.revocations
                .revokes(&a.username, &a.quota_key, unix_now)
        });
        for tuple in &revoked {
            self.log_ended(tuple, "allocation ended: credentials revoked");
            self.remove_allocation(tuple, EndReason::Revoked);
        }
        revoked.len()
    }

    /// Ends the allocation `id` at once (an operator's kick); false if there is none.
    pub fn end_allocation(&mut self, id: u64) -> bool {
        let Some(tuple) = self
            .allocations
            .iter()
            .find(|(_, a)| a.id == id)
            .map(|(tuple, _)| *tuple)
        else {
            return false;
        };
        self.log_ended(&tuple, "allocation ended by the operator");
        self.remove_allocation(&tuple, EndReason::Kicked);
        true
    }

    fn log_ended(&self, tuple: &FiveTuple, message: &'static str) {
        if let Some(allocation) = self.allocations.get(tuple) {
            tracing::info!(user = %allocation.username, client = %tuple.client,
                relay = %allocation.relays[0].advertised, "{message}");
        }
    }

    /// Up to `limit` live allocations matching `filter`, lowest id first. `now` and
    /// `unix_now` are the same moment, to state expiries in Unix time.
    pub fn sessions(
        &self,
        now: Instant,
        unix_now: u64,
        filter: &SessionFilter,
        limit: usize,
    ) -> Vec<SessionInfo> {
        let mut found: Vec<(&FiveTuple, &Allocation)> = self
            .allocations
            .iter()
            .filter(|(_, a)| filter.matches(a.id, &a.username, &a.quota_key))
            .collect();
        found.sort_unstable_by_key(|(_, a)| a.id);
        found.truncate(limit);
        found
            .into_iter()
            .map(|(tuple, a)| SessionInfo {
                id: a.id,
                username: a.username.clone(),
                client: tuple.client,
                server: tuple.server,
                transport: tuple.transport,
                relays: a.relays.iter().map(|r| r.advertised).collect(),
                expires_unix: unix_now + a.expires.saturating_duration_since(now).as_secs(),
                permissions: a.permissions.len(),
                channels: a.channels.len(),
                usage: a.usage,
            })
            .collect()
    }

    /// Frees every allocation (shutdown), releasing quotas.
    pub fn clear(&mut self) {
        for tuple in self.tuples_by_id(|_| true) {
            self.remove_allocation(&tuple, EndReason::Shutdown);
        }
    }

    /// The allocations `pick` chooses, oldest first: events come out in an order the
    /// inputs decide, not the map's randomly seeded hasher.
    fn tuples_by_id(&self, pick: impl Fn(&Allocation) -> bool) -> Vec<FiveTuple> {
        let mut found: Vec<(u64, FiveTuple)> = self
            .allocations
            .iter()
            .filter(|(_, a)| pick(a))
            .map(|(tuple, a)| (a.id, *tuple))
            .collect();
        found.sort_unstable();
        found.into_iter().map(|(_, tuple)| tuple).collect()
    }
}

/// A core dropped with allocations (a worker that panicked) no longer holds their relays:
/// the sockets go with the worker, so their ports must not stay live for the others.
impl Drop for Server {
    fn drop(&mut self) {
        for allocation in self.allocations.values() {
            for relay in &allocation.relays {
                self.live_relays.mark(relay.local, false);
            }
        }
    }
}
