//! The kernel fast path (opt-in, Linux): the XDP program `ebpf/turnpike.bpf.c` relays the
//! ChannelData of established UDP channels without the packets reaching userspace.
//!
//! Userspace stays authoritative. [`Hook::apply`] mirrors the core's events into the
//! program's maps: an entry pair appears when a channel is bound (the core already checked
//! the peer against the deny list and the permission), and goes when the channel or the
//! permission for its peer expires or the allocation ends, so nothing is forwarded in the
//! kernel that userspace would not forward. Everything else (STUN, Send/Data indications,
//! TCP/TLS clients, peers without a channel, allocations under a bandwidth cap, anything
//! the program finds unusual) takes the userspace path as before.
//!
//! What the kernel relayed is counted per allocation (a per-CPU map) and added to the
//! allocation's usage when it ends; totals per direction and per pass reason are published
//! with worker 0's report for `/metrics`.
//!
//! Nothing is pinned: the program is attached through a BPF link and the maps are held by
//! file descriptors, so the kernel detaches and frees all of it when the process exits,
//! crash included, and a restarted daemon starts from empty maps. An XDP program some other
//! tool left attached to the interface is not removed: the attach fails and says so.
//!
//! Map layouts are fixed byte arrays, encoded here field by field (aya implements `Pod` for
//! `[u8; N]`, so no `unsafe impl` is needed); the tests pin their sizes to the C structs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::{Event, FiveTuple, RelayAddress, ServerConfig, Transport};

/// The indices of the program's `datapath_stats` array (`enum reason` in the C source), as
/// the `reason` label of `turnpike_xdp_passed_total`; `None` for the counters that are not
/// pass reasons.
pub const REASONS: [Option<&str>; 21] = [
    Some("not_ip"),
    Some("not_udp"),
    Some("ip_options"),
    Some("fragment"),
    Some("malformed"),
    Some("stun"),
    Some("no_entry"),
    Some("length"),
    Some("ttl"),
    Some("no_route"),
    Some("no_neighbour"),
    Some("frag_needed"),
    Some("no_checksum"),
    Some("error"),
    None, // TX_TO_PEER
    None, // TX_TO_CLIENT
    None, // BYTES_TO_PEER
    None, // BYTES_TO_CLIENT
    None, // TX_HAIRPIN
    None, // BYTES_HAIRPIN
    Some("other_host"),
];
const TX_TO_PEER: usize = 14;
const TX_TO_CLIENT: usize = 15;
const BYTES_TO_PEER: usize = 16;
const BYTES_TO_CLIENT: usize = 17;
const TX_HAIRPIN: usize = 18;
const BYTES_HAIRPIN: usize = 19;

/// How often worker 0 reads the kernel's totals for its report.
const TOTALS_INTERVAL: Duration = Duration::from_secs(1);

/// What the kernel path did, summed over CPUs, for `/metrics`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelTotals {
    /// The program is attached.
    pub attached: bool,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    /// Frames handed to the kernel stack, by the reason in [`REASONS`].
    pub passed: Vec<(&'static str, u64)>,
    /// Channels whose entry pair is in the maps now.
    pub channels: u64,
}

impl KernelTotals {
    /// Sums another worker's share (only worker 0 reports, so this is a plain merge).
    pub fn add(&mut self, other: &KernelTotals) {
        self.attached |= other.attached;
        self.to_peer_packets += other.to_peer_packets;
        self.to_peer_bytes += other.to_peer_bytes;
        self.to_client_packets += other.to_client_packets;
        self.to_client_bytes += other.to_client_bytes;
        self.channels += other.channels;
        if self.passed.is_empty() {
            self.passed.clone_from(&other.passed);
        } else {
            for ((_, sum), (_, n)) in self.passed.iter_mut().zip(&other.passed) {
                *sum += n;
            }
        }
    }

    /// A hairpin (client to client through two relays of this server) is what userspace
    /// counts as one datagram to a peer and one from a peer, so it is counted both ways.
    fn from_stats(stats: &[u64; REASONS.len()]) -> Self {
        Self {
            attached: true,
            to_peer_packets: stats[TX_TO_PEER] + stats[TX_HAIRPIN],
            to_peer_bytes: stats[BYTES_TO_PEER] + stats[BYTES_HAIRPIN],
            to_client_packets: stats[TX_TO_CLIENT] + stats[TX_HAIRPIN],
            to_client_bytes: stats[BYTES_TO_CLIENT] + stats[BYTES_HAIRPIN],
            passed: REASONS
                .iter()
                .zip(stats)
                .filter_map(|(name, n)| name.map(|name| (name, *n)))
                .collect(),
            channels: 0,
        }
    }
}

/// One allocation's kernel counters (`struct alloc_counters`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub from_peer_packets: u64,
    pub from_peer_bytes: u64,
}

// ---- map layouts (keep in step with ebpf/turnpike.bpf.c) ----

/// Copies `parts` into a fixed-size array; the sizes are constants checked by the tests.
fn layout<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0; N];
    let mut at = 0;
    for part in parts {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, N, "layout does not fill the struct");
    out
}

/// An address as a key holds it: 4 bytes or 16.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// An address as a value holds it: 16 bytes, IPv4 in the first 4.
fn ip16(ip: IpAddr) -> Vec<u8> {
    let mut bytes = ip_bytes(ip);
    bytes.resize(16, 0);
    bytes
}

/// A value's `family` byte.
fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

/// The counter key of allocation `id` of `worker`: ids count from 1 in each worker, so the
/// worker's index goes in the top 16 bits (2^48 allocations per worker and process life).
pub fn counter_key(worker: usize, id: u64) -> u64 {
    ((worker as u64) << 48) | (id & ((1 << 48) - 1))
}

/// The four map entries of one channel: client→peer key and value, peer→client key and
/// value. `client` and `server` are of one family, `relay` and `peer` of one (the same or
/// the other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEntry {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub channel: u16,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub counter: u64,
}

impl ChannelEntry {
    /// `struct c2p_v{4,6}_key`, in the client's family.
    pub fn c2p_key(&self) -> Vec<u8> {
        [
            ip_bytes(self.client.ip()),
            ip_bytes(self.server.ip()),
            self.client.port().to_be_bytes().to_vec(),
            self.server.port().to_be_bytes().to_vec(),
            self.channel.to_be_bytes().to_vec(),
            vec![0; 2],
        ]
        .concat()
    }

    /// `struct c2p_value`.
    pub fn c2p_value(&self) -> Vec<u8> {
        [
            self.counter.to_ne_bytes().to_vec(),
            ip16(self.relay.ip()),
            ip16(self.peer.ip()),
            self.relay.port().to_be_bytes().to_vec(),
            self.peer.port().to_be_bytes().to_vec(),
            vec![family(self.peer.ip()), 0, 0, 0],
        ]
        .concat()
    }

    /// `struct p2c_v{4,6}_key`, in the peer's family.
    pub fn p2c_key(&self) -> Vec<u8> {
        [
            ip_bytes(self.peer.ip()),
            ip_bytes(self.relay.ip()),
            self.peer.port().to_be_bytes().to_vec(),
            self.relay.port().to_be_bytes().to_vec(),
        ]
        .concat()
    }

    /// `struct p2c_value`.
    pub fn p2c_value(&self) -> Vec<u8> {
        [
            self.counter.to_ne_bytes().to_vec(),
            ip16(self.client.ip()),
            ip16(self.server.ip()),
            self.client.port().to_be_bytes().to_vec(),
            self.server.port().to_be_bytes().to_vec(),
            self.channel.to_be_bytes().to_vec(),
            vec![family(self.client.ip()), 0],
        ]
        .concat()
    }
}

/// `aa:bb:cc:dd:ee:ff` (as /sys/class/net/IFACE/address has it) as bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `struct alloc_counters` as the kernel stores it for one CPU.
fn decode_counters(bytes: &[u8; 32]) -> Counters {
    let word = |i: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    Counters {
        to_peer_packets: word(0),
        to_peer_bytes: word(1),
        from_peer_packets: word(2),
        from_peer_bytes: word(3),
    }
}

// ---- the forwarding requirement ----

/// Which families the interface forwards. `bpf_fib_lookup` answers
/// `BPF_FIB_LKUP_RET_FWD_DISABLED` for a family its ingress interface does not forward, and
/// the program then passes every such packet to userspace: attached there, it would only add
/// work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// `net.ipv4.conf.IFACE.forwarding`.
    pub ipv4: bool,
    /// `net.ipv6.conf.IFACE.forwarding`.
    pub ipv6: bool,
    /// IPv6 is enabled on the interface (`disable_ipv6` is 0): without it, that family's
    /// forwarding does not matter.
    pub ipv6_enabled: bool,
}

impl Forwarding {
    /// Reads the interface's sysctls (in the process's network namespace); `None` when the
    /// interface has no IPv4 configuration there (it does not exist: the attach says so).
    pub fn read(interface: &str) -> Option<Forwarding> {
        let flag = |path: String| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim() != "0")
        };
        let ipv4 = flag(format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"))?;
        let ipv6_enabled = flag(format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6"))
            .is_some_and(|disabled| !disabled);
        let ipv6 = ipv6_enabled
            && flag(format!("/proc/sys/net/ipv6/conf/{interface}/forwarding")).unwrap_or(false);
        Some(Forwarding {
            ipv4,
            ipv6,
            ipv6_enabled,
        })
    }

    /// Whether the kernel path can route packets of `ip`'s family.
    pub fn routes(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        }
    }

    /// Whether to attach: `Err` (why not) when no family in use is forwarded, else a
    /// warning to log when one family is left to userspace.
    pub fn verdict(&self, interface: &str) -> Result<Option<String>, String> {
        // sysctl(8) writes a dotted interface name (a VLAN, eth0.100) with slashes.
        let name = interface.replace('.', "/");
        let v4 = format!("net.ipv4.conf.{name}.forwarding");
        let v6 = format!("net.ipv6.conf.{name}.forwarding");
        match (self.ipv4, self.ipv6, self.ipv6_enabled) {
            (false, false, _) => Err(format!(
                "IP forwarding is off on {interface}, so bpf_fib_lookup would hand every packet \
                 back to userspace: set {v4}=1{} (a forward-drop firewall rule keeps the host \
                 from routing anything else) and restart",
                if self.ipv6_enabled {
                    format!(" and {v6}=1 for IPv6")
                } else {
                    String::new()
                }
            )),
            (true, false, true) => Ok(Some(format!(
                "{v6} is 0: channels with an IPv6 side stay in userspace (set it to 1 and \
                 restart to relay them in the kernel)"
            ))),
            (false, true, _) => Ok(Some(format!(
                "{v4} is 0: channels with an IPv4 side stay in userspace (set it to 1 and \
                 restart to relay them in the kernel)"
            ))),
            _ => Ok(None),
        }
    }
}

// ---- the worker's side ----

/// What a worker remembers of one of its UDP allocations, to turn the core's events into
/// map updates: its counter, its relays, and its channels (installed or not).
#[derive(Debug)]
struct Mirror {
    counter: u64,
    counter_created: bool,
    relays: Vec<RelayAddress>,
    channels: Vec<Channel>,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    /// The permission for the peer's IP is live (the core said so last).
    permitted: bool,
    /// Its entries are in the maps now.
    installed: bool,
}

/// What the hook needs of the program's maps: the attached [`Datapath`], or a fake in the
/// tests.
pub trait Maps: Send + Sync {
    /// The families the interface forwards.
    fn forwarding(&self) -> Forwarding;
    /// Logs once that a wildcard listener's channels stay in userspace.
    fn warn_wildcard(&self, server: SocketAddr);
    /// A zeroed counter entry for an allocation, before its first channel entry.
    fn create_counters(&self, key: u64) -> bool;
    /// Reads an allocation's counters, summed over CPUs, and deletes the entry.
    fn take_counters(&self, key: u64) -> Counters;
    /// Adds a channel's two entries; whether both are in.
    fn insert(&self, entry: &ChannelEntry) -> bool;
    /// Removes a channel's two entries (those present).
    fn remove(&self, entry: &ChannelEntry);
    /// The program's counters, summed over CPUs.
    fn totals(&self) -> KernelTotals;
}

impl Maps for Datapath {
    fn forwarding(&self) -> Forwarding {
        self.forwarding
    }
    fn warn_wildcard(&self, server: SocketAddr) {
        Datapath::warn_wildcard(self, server);
    }
    fn create_counters(&self, key: u64) -> bool {
        Datapath::create_counters(self, key)
    }
    fn take_counters(&self, key: u64) -> Counters {
        Datapath::take_counters(self, key)
    }
    fn insert(&self, entry: &ChannelEntry) -> bool {
        Datapath::insert(self, entry)
    }
    fn remove(&self, entry: &ChannelEntry) {
        Datapath::remove(self, entry);
    }
    fn totals(&self) -> KernelTotals {
        Datapath::totals(self)
    }
}

/// A worker's handle on the kernel path; does nothing without an attached program.
pub struct Hook {
    datapath: Option<Arc<dyn Maps>>,
    worker: usize,
    allocations: HashMap<FiveTuple, Mirror>,
    /// Whether the configuration last seen allowed the kernel path (no bandwidth cap).
    allowed: bool,
    totals: KernelTotals,
    totals_read: Option<Instant>,
}

impl Hook {
    pub fn new(datapath: Option<Arc<Datapath>>, worker: usize) -> Self {
        Self::with_maps(datapath.map(|d| d as Arc<dyn Maps>), worker)
    }

    /// A hook on any [`Maps`] (the tests' fake).
    pub fn with_maps(datapath: Option<Arc<dyn Maps>>, worker: usize) -> Self {
        Self {
            datapath,
            worker,
            allocations: HashMap::new(),
            allowed: true,
            totals: KernelTotals::default(),
            totals_read: None,
        }
    }

    /// Mirrors one of the core's events into the maps. An `AllocationEnded` gets what the
    /// kernel relayed for it added to its usage, so the usage record covers both paths.
    pub fn apply(&mut self, event: &mut Event, config: &ServerConfig) {
        if let Event::ChannelBound { peer, .. } | Event::ChannelRefreshed { peer, .. } = event {
            if is_relay_behind_nat(*peer, config) {
                return;
            }
        }
        self.mirror(event, kernel_path_allowed(config));
    }

    /// A reloaded configuration: a bandwidth cap it sets takes live channels out of the
    /// maps now, and one it lifts puts them back, not at each allocation's next event
    /// (which may be minutes away, the kernel relaying uncapped meanwhile).
    pub fn reconfigure(&mut self, config: &ServerConfig) {
        if let Some(datapath) = self.datapath.clone() {
            self.allow(&*datapath, kernel_path_allowed(config));
        }
    }

    /// Syncs every channel with whether the configuration allows the kernel path.
    fn allow(&mut self, datapath: &dyn Maps, allowed: bool) {
        if allowed == self.allowed {
            return;
        }
        self.allowed = allowed;
        for (tuple, mirror) in &mut self.allocations {
            for at in 0..mirror.channels.len() {
                sync(datapath, tuple, mirror, at, allowed);
            }
        }
    }

    /// [`Hook::apply`], given whether the configuration allows the kernel path.
    fn mirror(&mut self, event: &mut Event, allowed: bool) {
        let Some(datapath) = self.datapath.clone() else {
            return;
        };
        self.allow(&*datapath, allowed);
        match event {
            Event::AllocationCreated {
                id, tuple, relays, ..
            } => {
                if tuple.transport != Transport::Udp {
                    return;
                }
                if tuple.server.ip().is_unspecified() {
                    datapath.warn_wildcard(tuple.server);
                    return;
                }
                self.allocations.insert(
                    *tuple,
                    Mirror {
                        counter: counter_key(self.worker, *id),
                        counter_created: false,
                        relays: relays.clone(),
                        channels: Vec::new(),
                    },
                );
            }
            Event::ChannelBound {
                tuple,
                number,
                peer,
                ..
            }
            | Event::ChannelRefreshed {
                tuple,
                number,
                peer,
                ..
            } => {
                let Some(mirror) = self.allocations.get_mut(tuple) else {
                    return;
                };
                let (number, peer) = (*number, *peer);
                // Binding or refreshing a channel installs or refreshes its permission.
                let at = match mirror.channels.iter().position(|c| c.number == number) {
                    Some(at) => at,
                    None => {
                        mirror.channels.push(Channel {
                            number,
                            peer,
                            permitted: true,
                            installed: false,
                        });
                        mirror.channels.len() - 1
                    }
                };
                mirror.channels[at].permitted = true;
                sync(&*datapath, tuple, mirror, at, allowed);
            }
            Event::ChannelExpired { tuple, number, .. } => {
                let Some(mirror) = self.allocations.get_mut(tuple) else {
                    return;
                };
                if let Some(at) = mirror.channels.iter().position(|c| c.number == *number) {
                    sync(&*datapath, tuple, mirror, at, false);
                    mirror.channels.remove(at);
                }
            }
            Event::PermissionExpired { tuple, peer } => {
                let Some(mirror) = self.allocations.get_mut(tuple) else {
                    return;
                };
                for at in 0..mirror.channels.len() {
                    if mirror.channels[at].peer.ip() == *peer {
                        mirror.channels[at].permitted = false;
                        sync(&*datapath, tuple, mirror, at, allowed);
                    }
                }
            }
            // A ChannelBind refresh after the permission lapsed creates it again.
            Event::PermissionCreated { tuple, peer, .. } => {
                let Some(mirror) = self.allocations.get_mut(tuple) else {
                    return;
                };
                for at in 0..mirror.channels.len() {
                    if mirror.channels[at].peer.ip() == *peer {
                        mirror.channels[at].permitted = true;
                        sync(&*datapath, tuple, mirror, at, allowed);
                    }
                }
            }
            Event::AllocationEnded { tuple, usage, .. } => {
                let Some(mut mirror) = self.allocations.remove(tuple) else {
                    return;
                };
                for at in 0..mirror.channels.len() {
                    sync(&*datapath, tuple, &mut mirror, at, false);
                }
                if mirror.counter_created {
                    let kernel = datapath.take_counters(mirror.counter);
                    usage.to_peer_packets += kernel.to_peer_packets;
                    usage.to_peer_bytes += kernel.to_peer_bytes;
                    usage.from_peer_packets += kernel.from_peer_packets;
                    usage.from_peer_bytes += kernel.from_peer_bytes;
                }
            }
            Event::RelayReleased { .. } => {}
        }
    }

    /// The kernel's totals for worker 0's report (read at most once a second); empty for
    /// the other workers and without a program.
    pub fn report(&mut self, now: Instant) -> KernelTotals {
        let Some(datapath) = &self.datapath else {
            return KernelTotals::default();
        };
        if self.worker != 0 {
            return KernelTotals::default();
        }
        if self
            .totals_read
            .is_none_or(|at| now.duration_since(at) >= TOTALS_INTERVAL)
        {
            self.totals_read = Some(now);
            self.totals = datapath.totals();
        }
        self.totals.clone()
    }
}

/// A channel to another relay of this server by its public address behind a 1:1 NAT
/// (`external_ips`) stays in userspace, which sends to the bound address; the kernel would
/// route it to the NAT and count on the NAT to send it back.
fn is_relay_behind_nat(peer: SocketAddr, config: &ServerConfig) -> bool {
    config.relay_ports.contains(&peer.port())
        && config
            .external_ips
            .iter()
            .any(|&(local, public)| public == peer.ip() && local != Some(public))
}

/// A bandwidth cap is enforced in userspace only: capped allocations keep every packet on
/// that path.
fn kernel_path_allowed(config: &ServerConfig) -> bool {
    config.bandwidth_per_allocation.is_none()
}

/// The entries of channel `at` of an allocation, if its addresses allow the kernel path: a
/// relay of the peer's family (the client's may differ: the program translates), no
/// wildcard relay address, no IPv4-mapped IPv6 address (the kernel would not route it as
/// userspace's socket does), and an interface that forwards both families involved.
fn entry(
    forwarding: &Forwarding,
    tuple: &FiveTuple,
    mirror: &Mirror,
    at: usize,
) -> Option<ChannelEntry> {
    let Channel {
        number: channel,
        peer,
        ..
    } = mirror.channels[at];
    let relay = mirror
        .relays
        .iter()
        .find(|r| r.local.is_ipv4() == peer.is_ipv4())?
        .local;
    let mapped = |ip: IpAddr| matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if relay.ip().is_unspecified()
        || tuple.client.is_ipv4() != tuple.server.is_ipv4()
        || [tuple.client.ip(), tuple.server.ip(), relay.ip(), peer.ip()]
            .into_iter()
            .any(mapped)
    {
        return None;
    }
    if !forwarding.routes(peer.ip()) || !forwarding.routes(tuple.client.ip()) {
        return None;
    }
    Some(ChannelEntry {
        client: tuple.client,
        server: tuple.server,
        channel,
        relay,
        peer,
        counter: mirror.counter,
    })
}

/// Puts channel `at`'s entries into the maps or takes them out: in while its permission is
/// live and `allowed` (no bandwidth cap), out otherwise.
fn sync(datapath: &dyn Maps, tuple: &FiveTuple, mirror: &mut Mirror, at: usize, allowed: bool) {
    let want = allowed && mirror.channels[at].permitted;
    if want == mirror.channels[at].installed {
        return;
    }
    let Some(entry) = entry(&datapath.forwarding(), tuple, mirror, at) else {
        return;
    };
    if !want {
        datapath.remove(&entry);
        mirror.channels[at].installed = false;
        return;
    }
    if !mirror.counter_created {
        if !datapath.create_counters(mirror.counter) {
            return;
        }
        mirror.counter_created = true;
    }
    mirror.channels[at].installed = datapath.insert(&entry);
}

pub use kernel::Datapath;

#[cfg(target_os = "linux")]
mod kernel {
    use super::{
        decode_counters, layout, parse_mac, ChannelEntry, Counters, Forwarding, KernelTotals,
        REASONS,
    };
    use crate::config::XdpMode;
    use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
    use aya::programs::{Xdp, XdpFlags};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    /// The program, built by scripts/build-xdp.sh and committed.
    static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/turnpike.bpf.o");

    struct Maps {
        c2p_v4: HashMap<MapData, [u8; 16], [u8; 48]>,
        p2c_v4: HashMap<MapData, [u8; 12], [u8; 48]>,
        c2p_v6: HashMap<MapData, [u8; 40], [u8; 48]>,
        p2c_v6: HashMap<MapData, [u8; 36], [u8; 48]>,
        counters: PerCpuHashMap<MapData, [u8; 8], [u8; 32]>,
        stats: PerCpuArray<MapData, u64>,
        cpus: usize,
        /// Holds the program and its link; dropped last, which detaches it.
        _ebpf: aya::Ebpf,
    }

    /// The attached program and its maps, shared by the workers. The lock is taken only by
    /// the control events (channel bound or gone, allocation ended) and the once-a-second
    /// totals read, never per packet: the packets that matter never reach userspace.
    pub struct Datapath {
        maps: Mutex<Maps>,
        pub interface: String,
        pub mode: &'static str,
        /// The families the interface forwards, read at attach: channels with a side in
        /// another family stay in userspace.
        pub forwarding: Forwarding,
        warned_wildcard: AtomicBool,
        warned_full: AtomicBool,
        /// Channels whose entry pair is in: counted from what the kernel said to each
        /// insert and delete (nothing else writes the maps), so a leaked entry shows.
        channels: AtomicU64,
    }

    impl std::fmt::Debug for Datapath {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Datapath")
                .field("interface", &self.interface)
                .field("mode", &self.mode)
                .finish_non_exhaustive()
        }
    }

    /// The error and its causes on one line.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let words = cause.to_string();
            if !text.contains(&words) {
                text.push_str(": ");
                text.push_str(&words);
            }
            source = cause.source();
        }
        text
    }

    /// The interface's Ethernet address: the program relays only frames sent to it.
    fn interface_mac(interface: &str) -> Result<[u8; 6], String> {
        let path = format!("/sys/class/net/{interface}/address");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        parse_mac(text.trim())
            .ok_or_else(|| format!("{interface} is not an Ethernet interface (address {text:?})"))
    }

    /// Why an attach failed, in words an operator can act on.
    fn explain(e: &dyn std::error::Error) -> String {
        let text = chain(e);
        let hint = if text.contains("Operation not permitted") || text.contains("os error 1)") {
            " (needs root: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON or CAP_SYS_ADMIN)"
        } else if text.contains("os error 95") || text.contains("not supported") {
            " (the driver has no native XDP: try relay.xdp_mode = \"generic\")"
        } else if text.contains("os error 16") || text.contains("os error 17") {
            " (another XDP program is attached to the interface)"
        } else {
            ""
        };
        format!("{text}{hint}")
    }

    impl Datapath {
        /// Loads the program and attaches it to `interface`; the reason in words if that
        /// fails.
        pub fn start(
            interface: &str,
            mode: XdpMode,
            forwarding: Forwarding,
        ) -> Result<Self, String> {
            let mac = interface_mac(interface)?;
            let mut ebpf = aya::EbpfLoader::new()
                .set_global("own_mac", &mac, true)
                .load(OBJECT)
                .map_err(|e| format!("cannot load the XDP program: {}", explain(&e)))?;
            let program: &mut Xdp = ebpf
                .program_mut("turnpike_xdp")
                .ok_or("the XDP object has no program turnpike_xdp")?
                .try_into()
                .map_err(|e| format!("turnpike_xdp is not an XDP program: {e}"))?;
            program
                .load()
                .map_err(|e| format!("the kernel refused the XDP program: {}", explain(&e)))?;
            let attach = |program: &mut Xdp, flags| {
                program
                    .attach(interface, flags)
                    .map_err(|e| format!("cannot attach to {interface}: {}", explain(&e)))
            };
            let mode = match mode {
                XdpMode::Driver => attach(program, XdpFlags::DRV_MODE).map(|_| "driver")?,
                XdpMode::Generic => attach(program, XdpFlags::SKB_MODE).map(|_| "generic")?,
                XdpMode::Auto => match attach(program, XdpFlags::DRV_MODE) {
                    Ok(_) => "driver",
                    Err(native) => attach(program, XdpFlags::SKB_MODE)
                        .map(|_| "generic")
                        .map_err(|generic| format!("{native}; generic: {generic}"))?,
                },
            };
            fn take<T>(ebpf: &mut aya::Ebpf, name: &str) -> Result<T, String>
            where
                T: TryFrom<aya::maps::Map>,
                T::Error: std::fmt::Display,
            {
                let map = ebpf
                    .take_map(name)
                    .ok_or_else(|| format!("the XDP object has no map {name}"))?;
                T::try_from(map).map_err(|e| format!("map {name}: {e}"))
            }
            let cpus = aya::util::nr_cpus()
                .map_err(|(what, e)| format!("cannot count CPUs ({what}): {e}"))?;
            let maps = Maps {
                c2p_v4: take(&mut ebpf, "c2p_v4")?,
                p2c_v4: take(&mut ebpf, "p2c_v4")?,
                c2p_v6: take(&mut ebpf, "c2p_v6")?,
                p2c_v6: take(&mut ebpf, "p2c_v6")?,
                counters: take(&mut ebpf, "alloc_counters")?,
                stats: take(&mut ebpf, "datapath_stats")?,
                cpus,
                _ebpf: ebpf,
            };
            Ok(Self {
                maps: Mutex::new(maps),
                interface: interface.to_owned(),
                mode,
                forwarding,
                warned_wildcard: AtomicBool::new(false),
                warned_full: AtomicBool::new(false),
                channels: AtomicU64::new(0),
            })
        }

        fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
            self.maps.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub(super) fn warn_wildcard(&self, server: SocketAddr) {
            if !self.warned_wildcard.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    listener = %server,
                    "xdp: a wildcard listener's channels stay in userspace: listen on the \
                     interface's own address to use the kernel path"
                );
            }
        }

        fn warn_full(&self, what: &str, e: &dyn std::error::Error) {
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %chain(e),
                    "xdp: cannot add to {what} (full?): such channels stay in userspace"
                );
            }
        }

        /// A zeroed counter entry for an allocation, before its first channel entry.
        pub(super) fn create_counters(&self, key: u64) -> bool {
            let mut maps = self.maps();
            let zero = match PerCpuValues::try_from(vec![[0u8; 32]; maps.cpus]) {
                Ok(zero) => zero,
                Err(e) => {
                    self.warn_full("alloc_counters", &e);
                    return false;
                }
            };
            match maps.counters.insert(key.to_ne_bytes(), zero, 0) {
                Ok(()) => true,
                Err(e) => {
                    self.warn_full("alloc_counters", &e);
                    false
                }
            }
        }

        /// Reads an allocation's counters, summed over CPUs, and deletes the entry.
        pub(super) fn take_counters(&self, key: u64) -> Counters {
            let mut maps = self.maps();
            let key = key.to_ne_bytes();
            let mut sum = Counters::default();
            if let Ok(values) = maps.counters.get(&key, 0) {
                for value in values.iter() {
                    let c = decode_counters(value);
                    sum.to_peer_packets += c.to_peer_packets;
                    sum.to_peer_bytes += c.to_peer_bytes;
                    sum.from_peer_packets += c.from_peer_packets;
                    sum.from_peer_bytes += c.from_peer_bytes;
                }
            }
            let _ = maps.counters.remove(&key);
            sum
        }

        /// Adds a channel's two entries; whether both are in.
        pub(super) fn insert(&self, e: &ChannelEntry) -> bool {
            let mut maps = self.maps();
            // Each key is in the family of the frame it matches.
            let (c2p, p2c) = (layout(&[&e.c2p_value()]), layout(&[&e.p2c_value()]));
            let result = if e.client.is_ipv4() {
                maps.c2p_v4.insert(layout(&[&e.c2p_key()]), c2p, 0)
            } else {
                maps.c2p_v6.insert(layout(&[&e.c2p_key()]), c2p, 0)
            }
            .and_then(|()| {
                if e.peer.is_ipv4() {
                    maps.p2c_v4.insert(layout(&[&e.p2c_key()]), p2c, 0)
                } else {
                    maps.p2c_v6.insert(layout(&[&e.p2c_key()]), p2c, 0)
                }
            });
            match result {
                Ok(()) => {
                    self.channels.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(err) => {
                    delete(&mut maps, e);
                    drop(maps);
                    self.warn_full("the channel maps", &err);
                    false
                }
            }
        }

        /// Removes a channel's two entries (those present).
        pub(super) fn remove(&self, e: &ChannelEntry) {
            if delete(&mut self.maps(), e) {
                self.channels.fetch_sub(1, Ordering::Relaxed);
            }
        }

        /// The program's counters, summed over CPUs.
        pub fn totals(&self) -> KernelTotals {
            let maps = self.maps();
            let mut stats = [0u64; REASONS.len()];
            for (i, sum) in stats.iter_mut().enumerate() {
                if let Ok(values) = maps.stats.get(&(i as u32), 0) {
                    *sum = values.iter().sum();
                }
            }
            KernelTotals {
                channels: self.channels.load(Ordering::Relaxed),
                ..KernelTotals::from_stats(&stats)
            }
        }
    }

    /// Deletes a channel's two entries; whether its client→peer entry was there.
    fn delete(maps: &mut Maps, e: &ChannelEntry) -> bool {
        let _ = if e.peer.is_ipv4() {
            maps.p2c_v4.remove(&layout(&[&e.p2c_key()]))
        } else {
            maps.p2c_v6.remove(&layout(&[&e.p2c_key()]))
        };
        if e.client.is_ipv4() {
            maps.c2p_v4.remove(&layout(&[&e.c2p_key()])).is_ok()
        } else {
            maps.c2p_v6.remove(&layout(&[&e.c2p_key()])).is_ok()
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod kernel {
    use super::{ChannelEntry, Counters, Forwarding, KernelTotals};
    use crate::config::XdpMode;
    use std::net::SocketAddr;

    /// XDP exists only on Linux; [`Datapath::start`] always says so.
    #[derive(Debug)]
    pub struct Datapath {
        pub interface: String,
        pub mode: &'static str,
        pub forwarding: Forwarding,
    }

    impl Datapath {
        pub fn start(_: &str, _: XdpMode, _: Forwarding) -> Result<Self, String> {
            Err("XDP is Linux only".into())
        }
        pub(super) fn warn_wildcard(&self, _: SocketAddr) {}
        pub(super) fn create_counters(&self, _: u64) -> bool {
            false
        }
        pub(super) fn take_counters(&self, _: u64) -> Counters {
            Counters::default()
        }
        pub(super) fn insert(&self, _: &ChannelEntry) -> bool {
            false
        }
        pub(super) fn remove(&self, _: &ChannelEntry) {}
        pub fn totals(&self) -> KernelTotals {
            KernelTotals::default()
        }
    }
}

/// Starts the kernel path if configured: the program attached to `interface`, or `None`
/// after one log line that names the reason (relaying then stays in userspace).
///
/// An interface that forwards neither family is refused before anything is loaded: the
/// program could relay nothing there (README, "Kernel fast path").
pub fn start(interface: Option<&str>, mode: crate::config::XdpMode) -> Option<Arc<Datapath>> {
    let interface = interface?;
    let refuse = |reason: &str| {
        tracing::warn!(
            interface,
            "xdp: kernel path not enabled, relaying in userspace: {reason}"
        );
    };
    // Without a /proc entry the interface is not there: the attach names that.
    let forwarding = Forwarding::read(interface).unwrap_or(Forwarding {
        ipv4: true,
        ipv6: true,
        ipv6_enabled: true,
    });
    let warning = match forwarding.verdict(interface) {
        Ok(warning) => warning,
        Err(reason) => {
            refuse(&reason);
            return None;
        }
    };
    match Datapath::start(interface, mode, forwarding) {
        Ok(datapath) => {
            tracing::info!(
                interface,
                mode = datapath.mode,
                "xdp: established UDP channels are relayed in the kernel"
            );
            if let Some(warning) = warning {
                tracing::warn!(interface, "xdp: {warning}");
            }
            Some(Arc::new(datapath))
        }
        Err(reason) => {
            refuse(&reason);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EndReason, Usage};

    fn entry(v6: bool) -> ChannelEntry {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        if v6 {
            ChannelEntry {
                client: a("[2001:db8::1]:5000"),
                server: a("[2001:db8::2]:3478"),
                channel: 0x4001,
                relay: a("[2001:db8::2]:50000"),
                peer: a("[2001:db8::3]:6000"),
                counter: counter_key(1, 7),
            }
        } else {
            ChannelEntry {
                client: a("192.0.2.1:5000"),
                server: a("192.0.2.2:3478"),
                channel: 0x4001,
                relay: a("192.0.2.2:50000"),
                peer: a("198.51.100.3:6000"),
                counter: counter_key(1, 7),
            }
        }
    }

    /// The maps as a fake: what is in them, keyed by the client→peer key.
    #[derive(Default)]
    struct Fake {
        forwarding: Option<Forwarding>,
        state: std::sync::Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        entries: HashMap<Vec<u8>, ChannelEntry>,
        counters: HashMap<u64, Counters>,
        /// Counters still present when they were created (a leak).
        recreated: usize,
    }

    impl Maps for Fake {
        fn forwarding(&self) -> Forwarding {
            self.forwarding.unwrap_or(Forwarding {
                ipv4: true,
                ipv6: true,
                ipv6_enabled: true,
            })
        }
        fn warn_wildcard(&self, _: SocketAddr) {}
        fn create_counters(&self, key: u64) -> bool {
            let mut state = self.state.lock().unwrap();
            if state.counters.insert(key, Counters::default()).is_some() {
                state.recreated += 1;
            }
            true
        }
        fn take_counters(&self, key: u64) -> Counters {
            self.state
                .lock()
                .unwrap()
                .counters
                .remove(&key)
                .unwrap_or_default()
        }
        fn insert(&self, entry: &ChannelEntry) -> bool {
            let mut state = self.state.lock().unwrap();
            assert!(
                state.counters.contains_key(&entry.counter),
                "a channel entry before its counter"
            );
            state.entries.insert(entry.c2p_key(), entry.clone());
            true
        }
        fn remove(&self, entry: &ChannelEntry) {
            self.state.lock().unwrap().entries.remove(&entry.c2p_key());
        }
        fn totals(&self) -> KernelTotals {
            KernelTotals::default()
        }
    }

    impl Fake {
        /// (channel number, peer) of every entry in the maps, sorted.
        fn channels(&self) -> Vec<(u16, SocketAddr)> {
            let state = self.state.lock().unwrap();
            let mut out: Vec<_> = state
                .entries
                .values()
                .map(|e| (e.channel, e.peer))
                .collect();
            out.sort();
            out
        }
    }

    const CLIENT: &str = "192.0.2.1:5000";
    const SERVER: &str = "192.0.2.2:3478";
    const RELAY: &str = "192.0.2.2:50000";
    const PEER: &str = "198.51.100.3:6000";
    const PEER2: &str = "198.51.100.4:6000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tuple(transport: Transport) -> FiveTuple {
        FiveTuple {
            client: addr(CLIENT),
            server: addr(SERVER),
            transport,
        }
    }

    /// A hook on a fake, its UDP allocation (relay RELAY) created.
    fn hooked(fake: &Arc<Fake>) -> (Hook, Instant) {
        let mut hook = Hook::with_maps(Some(fake.clone() as Arc<dyn Maps>), 1);
        let now = Instant::now();
        let relay = addr(RELAY);
        hook.mirror(
            &mut Event::AllocationCreated {
                id: 7,
                tuple: tuple(Transport::Udp),
                username: "u".into(),
                relays: vec![RelayAddress {
                    local: relay,
                    advertised: relay,
                }],
                expires: now,
            },
            true,
        );
        (hook, now)
    }

    fn bound(number: u16, peer: &str, now: Instant) -> Event {
        Event::ChannelBound {
            tuple: tuple(Transport::Udp),
            number,
            peer: addr(peer),
            expires: now,
        }
    }

    #[test]
    fn a_bound_channel_is_installed_with_the_allocations_addresses() {
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        let state = fake.state.lock().unwrap();
        let entries: Vec<_> = state.entries.values().cloned().collect();
        assert_eq!(
            entries,
            [ChannelEntry {
                client: addr(CLIENT),
                server: addr(SERVER),
                channel: 0x4000,
                relay: addr(RELAY),
                peer: addr(PEER),
                counter: counter_key(1, 7),
            }]
        );
        assert!(state.counters.contains_key(&counter_key(1, 7)));
    }

    /// The core says ChannelExpired at the channel's deadline (600 s, proto's tests): its
    /// entries go, and nothing brings them back but a new ChannelBind.
    #[test]
    fn an_expired_channel_leaves_the_maps_for_good() {
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        hook.mirror(&mut bound(0x4001, PEER2, now), true);
        hook.mirror(
            &mut Event::ChannelExpired {
                tuple: tuple(Transport::Udp),
                number: 0x4000,
                peer: addr(PEER),
            },
            true,
        );
        assert_eq!(fake.channels(), [(0x4001, addr(PEER2))], "only 0x4000 goes");
        // The permission for the peer comes back (CreatePermission): the channel does not.
        hook.mirror(
            &mut Event::PermissionCreated {
                tuple: tuple(Transport::Udp),
                peer: addr(PEER).ip(),
                expires: now,
            },
            true,
        );
        assert_eq!(fake.channels(), [(0x4001, addr(PEER2))]);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        assert_eq!(
            fake.channels(),
            [(0x4000, addr(PEER)), (0x4001, addr(PEER2))]
        );
    }

    /// A permission lapses at 300 s while its channel lives to 600 s (RFC 8656 §9): the
    /// channel's entries go with the permission, and return when it is created again.
    #[test]
    fn a_channel_leaves_the_maps_while_its_permission_is_expired() {
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        hook.mirror(&mut bound(0x4001, PEER2, now), true);
        // Another port on the same IP: one permission covers both (permissions are per IP).
        hook.mirror(&mut bound(0x4002, "198.51.100.3:7000", now), true);
        hook.mirror(
            &mut Event::PermissionExpired {
                tuple: tuple(Transport::Udp),
                peer: addr(PEER).ip(),
            },
            true,
        );
        assert_eq!(fake.channels(), [(0x4001, addr(PEER2))]);
        hook.mirror(
            &mut Event::PermissionCreated {
                tuple: tuple(Transport::Udp),
                peer: addr(PEER).ip(),
                expires: now,
            },
            true,
        );
        assert_eq!(fake.channels().len(), 3);
        // And a ChannelBind refresh after the lapse (the core re-creates the permission).
        hook.mirror(
            &mut Event::PermissionExpired {
                tuple: tuple(Transport::Udp),
                peer: addr(PEER2).ip(),
            },
            true,
        );
        assert_eq!(fake.channels().len(), 2);
        hook.mirror(
            &mut Event::ChannelRefreshed {
                tuple: tuple(Transport::Udp),
                number: 0x4001,
                peer: addr(PEER2),
                expires: now,
            },
            true,
        );
        assert_eq!(fake.channels().len(), 3);
    }

    #[test]
    fn an_ended_allocation_takes_everything_out_and_adds_the_kernels_counts_to_its_usage() {
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        hook.mirror(&mut bound(0x4001, PEER2, now), true);
        fake.state.lock().unwrap().counters.insert(
            counter_key(1, 7),
            Counters {
                to_peer_packets: 3,
                to_peer_bytes: 300,
                from_peer_packets: 4,
                from_peer_bytes: 400,
            },
        );
        let mut usage = Usage::new(now, 0);
        usage.to_peer_packets = 1;
        usage.to_peer_bytes = 100;
        let mut ended = Event::AllocationEnded {
            id: 7,
            tuple: tuple(Transport::Udp),
            username: "u".into(),
            relays: vec![],
            usage,
            reason: EndReason::Expired,
        };
        hook.mirror(&mut ended, true);
        assert_eq!(fake.channels(), []);
        assert!(fake.state.lock().unwrap().counters.is_empty());
        let Event::AllocationEnded { usage, .. } = ended else {
            unreachable!()
        };
        assert_eq!(
            (
                usage.to_peer_packets,
                usage.to_peer_bytes,
                usage.from_peer_packets,
                usage.from_peer_bytes
            ),
            (4, 400, 4, 400)
        );
        // Late events for the gone allocation change nothing.
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        assert_eq!(fake.channels(), []);
        assert_eq!(fake.state.lock().unwrap().recreated, 0);
    }

    /// A dual allocation (RFC 8656 §7.2) of an IPv4 client: a channel to an IPv6 peer uses
    /// the IPv6 relay, and the program translates between the families.
    #[test]
    fn a_dual_allocation_installs_channels_of_both_families_with_the_peers_relay() {
        let fake = Arc::new(Fake::default());
        let mut hook = Hook::with_maps(Some(fake.clone() as Arc<dyn Maps>), 0);
        let now = Instant::now();
        let relay6 = addr("[2001:db8::2]:50001");
        let relays = [addr(RELAY), relay6].map(|local| RelayAddress {
            local,
            advertised: local,
        });
        hook.mirror(
            &mut Event::AllocationCreated {
                id: 1,
                tuple: tuple(Transport::Udp),
                username: "u".into(),
                relays: relays.to_vec(),
                expires: now,
            },
            true,
        );
        hook.mirror(&mut bound(0x4000, "[2001:db8::3]:6000", now), true);
        hook.mirror(&mut bound(0x4001, PEER, now), true);
        // An IPv4-mapped peer stays with userspace's socket.
        hook.mirror(&mut bound(0x4002, "[::ffff:198.51.100.9]:6000", now), true);
        let state = fake.state.lock().unwrap();
        let mut relays: Vec<_> = state
            .entries
            .values()
            .map(|e| (e.channel, e.relay, e.client))
            .collect();
        relays.sort();
        assert_eq!(
            relays,
            [
                (0x4000, relay6, addr(CLIENT)),
                (0x4001, addr(RELAY), addr(CLIENT))
            ]
        );
    }

    #[test]
    fn a_hairpin_counts_as_one_datagram_each_way() {
        let mut stats = [0u64; REASONS.len()];
        stats[TX_TO_PEER] = 1;
        stats[TX_TO_CLIENT] = 10;
        stats[TX_HAIRPIN] = 100;
        stats[BYTES_HAIRPIN] = 1000;
        let totals = KernelTotals::from_stats(&stats);
        assert_eq!(
            (
                totals.to_peer_packets,
                totals.to_client_packets,
                totals.to_peer_bytes,
                totals.to_client_bytes
            ),
            (101, 110, 1000, 1000)
        );
    }

    #[test]
    fn a_bandwidth_cap_keeps_channels_in_userspace_and_lifting_it_installs_them() {
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        hook.mirror(&mut bound(0x4000, PEER, now), false);
        assert_eq!(fake.channels(), []);
        // A reload sets a cap: installed channels leave; it lifts it: they come back.
        hook.mirror(&mut bound(0x4001, PEER2, now), true);
        assert_eq!(fake.channels().len(), 2);
        hook.mirror(&mut bound(0x4001, PEER2, now), false);
        assert_eq!(fake.channels(), []);
        hook.mirror(&mut bound(0x4001, PEER2, now), true);
        assert_eq!(fake.channels().len(), 2);
    }

    /// The worker calls `reconfigure` on every reload: the channels follow the cap at once,
    /// with no event in between.
    #[test]
    fn a_reload_that_sets_a_cap_takes_channels_out_without_waiting_for_an_event() {
        use crate::proto::auth::{Credentials, NonceKey};
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        assert_eq!(fake.channels().len(), 1);
        let credentials = Credentials {
            secrets: vec![],
            separator: ':',
            static_users: vec![],
        };
        let unlimited = ServerConfig::new("realm", credentials, NonceKey::new([1; 32]));
        let capped = ServerConfig {
            bandwidth_per_allocation: Some(125_000),
            ..unlimited.clone()
        };
        hook.reconfigure(&capped);
        assert_eq!(fake.channels(), []);
        hook.reconfigure(&unlimited);
        assert_eq!(fake.channels().len(), 1);
    }

    /// Relay-to-relay behind a 1:1 NAT: a channel whose peer is a relay port of the public
    /// address stays in userspace (which sends to the bound address); one to the same
    /// address outside the relay range, or to anyone else, is installed.
    #[test]
    fn a_channel_to_this_servers_relay_behind_a_nat_stays_in_userspace() {
        use crate::proto::auth::{Credentials, NonceKey};
        let fake = Arc::new(Fake::default());
        let (mut hook, now) = hooked(&fake);
        let credentials = Credentials {
            secrets: vec![],
            separator: ':',
            static_users: vec![],
        };
        let public: IpAddr = "203.0.113.50".parse().unwrap();
        let config = ServerConfig {
            external_ips: vec![(Some(addr(RELAY).ip()), public)],
            relay_ports: 49152..=65535,
            ..ServerConfig::new("realm", credentials, NonceKey::new([1; 32]))
        };
        hook.apply(&mut bound(0x4000, "203.0.113.50:50002", now), &config);
        assert_eq!(
            fake.channels(),
            [],
            "relay-to-relay through the NAT's address"
        );
        hook.apply(&mut bound(0x4001, "203.0.113.50:6000", now), &config);
        hook.apply(&mut bound(0x4002, PEER, now), &config);
        assert_eq!(fake.channels().len(), 2, "{:?}", fake.channels());
    }

    #[test]
    fn stream_clients_wildcard_listeners_and_unforwarded_families_stay_in_userspace() {
        let fake = Arc::new(Fake::default());
        let mut hook = Hook::with_maps(Some(fake.clone() as Arc<dyn Maps>), 0);
        let now = Instant::now();
        let relays = vec![RelayAddress {
            local: addr(RELAY),
            advertised: addr(RELAY),
        }];
        let tcp = tuple(Transport::Tcp);
        let wildcard = FiveTuple {
            server: addr("0.0.0.0:3478"),
            ..tuple(Transport::Udp)
        };
        for (id, tuple) in [(1, tcp), (2, wildcard)] {
            hook.mirror(
                &mut Event::AllocationCreated {
                    id,
                    tuple,
                    username: "u".into(),
                    relays: relays.clone(),
                    expires: now,
                },
                true,
            );
            hook.mirror(
                &mut Event::ChannelBound {
                    tuple,
                    number: 0x4000,
                    peer: addr(PEER),
                    expires: now,
                },
                true,
            );
        }
        assert_eq!(fake.channels(), []);

        let v6_off = Arc::new(Fake {
            forwarding: Some(Forwarding {
                ipv4: false,
                ipv6: true,
                ipv6_enabled: true,
            }),
            ..Fake::default()
        });
        let (mut hook, now) = hooked(&v6_off);
        hook.mirror(&mut bound(0x4000, PEER, now), true);
        assert_eq!(v6_off.channels(), [], "IPv4 does not forward");
    }

    #[test]
    fn layouts_have_the_c_structs_sizes() {
        let e = entry(false);
        assert_eq!(
            [
                e.c2p_key().len(),
                e.c2p_value().len(),
                e.p2c_key().len(),
                e.p2c_value().len()
            ],
            [16, 48, 12, 48]
        );
        let e = entry(true);
        assert_eq!(
            [
                e.c2p_key().len(),
                e.c2p_value().len(),
                e.p2c_key().len(),
                e.p2c_value().len()
            ],
            [40, 48, 36, 48]
        );
        // A client of one family, a peer of the other: each key in its frame's family.
        let mixed = ChannelEntry {
            relay: entry(true).relay,
            peer: entry(true).peer,
            ..entry(false)
        };
        assert_eq!([mixed.c2p_key().len(), mixed.p2c_key().len()], [16, 36]);
    }

    #[test]
    fn fields_are_in_network_order_where_the_c_code_expects() {
        let e = entry(false);
        assert_eq!(
            e.c2p_key(),
            [192, 0, 2, 1, 192, 0, 2, 2, 0x13, 0x88, 0x0d, 0x96, 0x40, 0x01, 0, 0]
        );
        let counter = counter_key(1, 7).to_ne_bytes();
        assert_eq!(&e.c2p_value()[..8], &counter);
        let pad = [0u8; 12];
        assert_eq!(
            e.c2p_value()[8..],
            [
                &[192, 0, 2, 2][..],
                &pad,
                &[198, 51, 100, 3],
                &pad,
                &[0xc3, 0x50, 0x17, 0x70, 4, 0, 0, 0]
            ]
            .concat()
        );
        assert_eq!(
            e.p2c_key(),
            [198, 51, 100, 3, 192, 0, 2, 2, 0x17, 0x70, 0xc3, 0x50]
        );
        assert_eq!(
            e.p2c_value()[8..],
            [
                &[192, 0, 2, 1][..],
                &pad,
                &[192, 0, 2, 2],
                &pad,
                &[0x13, 0x88, 0x0d, 0x96, 0x40, 0x01, 4, 0]
            ]
            .concat()
        );
        // The family byte names the family of the addresses in the value.
        assert_eq!(entry(true).c2p_value()[44], 6);
        assert_eq!(entry(true).p2c_value()[46], 6);
    }

    #[test]
    fn an_interface_that_forwards_nothing_is_refused_naming_the_sysctls() {
        let f = |ipv4, ipv6, ipv6_enabled| Forwarding {
            ipv4,
            ipv6,
            ipv6_enabled,
        };
        let refused = f(false, false, true).verdict("eth0").unwrap_err();
        assert!(
            refused.contains("net.ipv4.conf.eth0.forwarding=1"),
            "{refused}"
        );
        assert!(
            refused.contains("net.ipv6.conf.eth0.forwarding=1"),
            "{refused}"
        );
        // IPv6 off on the interface: only the IPv4 sysctl matters, and a VLAN's name is
        // written as sysctl(8) wants it.
        let refused = f(false, false, false).verdict("eth0.100").unwrap_err();
        assert!(
            refused.contains("net.ipv4.conf.eth0/100.forwarding=1"),
            "{refused}"
        );
        assert!(!refused.contains("ipv6"), "{refused}");
        assert_eq!(f(true, false, false).verdict("eth0"), Ok(None));
        assert_eq!(f(true, true, true).verdict("eth0"), Ok(None));
        let warning = f(true, false, true).verdict("eth0").unwrap().unwrap();
        assert!(
            warning.contains("net.ipv6.conf.eth0.forwarding is 0"),
            "{warning}"
        );
        let warning = f(false, true, true).verdict("eth0").unwrap().unwrap();
        assert!(
            warning.contains("net.ipv4.conf.eth0.forwarding is 0"),
            "{warning}"
        );
        let v4_only = f(true, false, true);
        assert!(v4_only.routes("192.0.2.1".parse().unwrap()));
        assert!(!v4_only.routes("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn counter_keys_differ_between_workers() {
        assert_ne!(counter_key(0, 1), counter_key(1, 1));
        assert_eq!(counter_key(0, 5), 5);
        assert_eq!(counter_key(2, 5) >> 48, 2);
    }

    #[test]
    fn interface_addresses_parse_only_as_six_hex_bytes() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:0a"),
            Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x0a])
        );
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:0a:01",
            "02:00:5e:10:00:0g",
            "2:0:5e:10:0:a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        // A tunnel's address (no Ethernet header) is longer or empty.
        assert_eq!(
            parse_mac("00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00"),
            None
        );
    }

    #[test]
    fn the_reason_table_matches_the_program() {
        // `enum reason` in ebpf/turnpike.bpf.c ends with these six.
        let src = include_str!("../../ebpf/turnpike.bpf.c");
        let body = src
            .split("enum reason {")
            .nth(1)
            .and_then(|s| s.split("};").next())
            .unwrap();
        let names: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().split([',', ' ', '=']).next())
            .filter(|n| !n.is_empty() && !n.starts_with("/*") && *n != "REASONS")
            .collect();
        assert_eq!(names.len(), REASONS.len(), "{names:?}");
        assert_eq!(names[TX_TO_PEER], "TX_TO_PEER");
        assert_eq!(names[TX_TO_CLIENT], "TX_TO_CLIENT");
        assert_eq!(names[BYTES_TO_PEER], "BYTES_TO_PEER");
        assert_eq!(names[BYTES_TO_CLIENT], "BYTES_TO_CLIENT");
        assert_eq!(names[TX_HAIRPIN], "TX_HAIRPIN");
        assert_eq!(names[BYTES_HAIRPIN], "BYTES_HAIRPIN");
        for (name, label) in names.iter().zip(REASONS) {
            if let Some(label) = label {
                assert_eq!(
                    name.trim_start_matches("PASS_").to_lowercase(),
                    label.replace("neighbour", "neigh"),
                );
            }
        }
    }
}
