//! One worker thread: a `mio` event loop over this worker's listening sockets (UDP, TCP and
//! TLS, each a member of a `SO_REUSEPORT` group), its client connections, and the relay
//! sockets of the allocations it created. It owns its [`Server`]; nothing on the packet path
//! is shared or locked.

use crate::unix_now;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

use super::batch::{RecvBatch, SendBatch, BATCH};
use super::stream::{channel_padding, Framer, MAX_FRAME};
use super::udp::{self, Reservations};
use super::{is_connection_error, source_of};
use crate::proto::server::LogBudget;
use crate::proto::wire::{AddressFamily, CHANNEL_HEADER_LEN};
use crate::proto::{
    ClientAction, EndReason, Error, Event, FiveTuple, PeerAction, PendingAllocation, Revocations,
    Server, ServerConfig, SessionFilter, SessionInfo, Transport,
};
use crate::telemetry::{Telemetry, WorkerReport};

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners; relay slot `i` is `Token(RELAY_BASE + i)` and connection
/// slot `i` is `Token(CONN_BASE + i)`.
const RELAY_BASE: usize = 1 << 20;
const CONN_BASE: usize = 1 << 40;
/// Reads from one connection, or `recvmmsg` batches from one UDP socket, before turning to
/// the next, so a busy socket cannot starve the rest (quinn's IO_LOOP_BOUND plays the same
/// role).
const READS_PER_TURN: usize = 4;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Longest sleep between checks of the shutdown flag, timers and reloads.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How often a worker publishes its counters for the management plane.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// How often connections are checked for timeouts.
const CONNECTION_SWEEP: Duration = Duration::from_secs(1);
/// A TCP client must send a whole message, and a TLS client finish its handshake, within this,
/// and every frame must arrive whole within this of its first byte: a stalled or trickling
/// client cannot pin a connection slot for longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection without an allocation is closed this long after it opened or its last
/// allocation ended, whatever it sends: Bindings cannot keep an unauthenticated slot forever.
pub const UNALLOCATED_LIFETIME: Duration = Duration::from_secs(60);
/// Bytes queued towards one stream client with an allocation: a client that stops reading
/// cannot make the server buffer without bound. About 1 s of a 2 Mbit/s call.
const MAX_QUEUED: usize = 256 * 1024;
/// The same for a connection without an allocation: it only gets small answers.
const MAX_QUEUED_UNALLOCATED: usize = 16 * 1024;
/// Room at the end of the queue kept for answers to the client's own requests (a Refresh
/// must not be lost behind media over TCP, where nobody retransmits it): relayed data stops
/// short of it, and the client's requests are not handled while it is in use.
const ANSWER_RESERVE: usize = 4 * 1024;
/// After `accept` fails for want of descriptors or memory, try again this much later: the
/// backlog is not announced again by an edge-triggered poll.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Plaintext handed to rustls at a time.
const TLS_CHUNK: usize = 16 * 1024;

/// A request from the management plane, answered on the worker's thread between two turns
/// of its loop. Replies go through tokio oneshots so the API can wait with a deadline; a
/// reply nobody waits for any more is dropped.
#[derive(Debug)]
pub enum Command {
    /// Up to `limit` of this worker's allocations that match `filter`, lowest id first.
    Sessions {
        filter: SessionFilter,
        limit: usize,
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    /// End allocation `id` now: whether there was one.
    Kick {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
    /// The revocations now in force: revoked users' allocations end at once and their
    /// Allocates are refused. Answers how many allocations ended.
    Revocations {
        revocations: Arc<Revocations>,
        reply: Option<oneshot::Sender<usize>>,
    },
}

/// What a worker shares with the rest of the process. Workers read it once per loop turn
/// at most (the shutdown flag and the settings generation); the packet path never locks.
pub struct WorkerShared {
    pub shutdown: AtomicBool,
    pub reservations: Reservations,
    pub telemetry: Arc<Telemetry>,
    pub connections: ConnectionLimits,
    /// Bumped on every reload; a worker that sees a new value re-reads `settings`.
    pub generation: AtomicU64,
    pub settings: RwLock<Arc<Settings>>,
    /// Where the record of each ended allocation goes; `submit` never blocks.
    pub usage: crate::usage::UsageSinks,
    /// The attached XDP program, if any (src/net/xdp.rs).
    pub xdp: Option<Arc<super::xdp::Datapath>>,
}

/// Everything a reload can change.
#[derive(Debug)]
pub struct Settings {
    pub server: Arc<ServerConfig>,
    pub relay: RelaySettings,
    /// Certificate and key for TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The relay settings a worker needs to bind relay sockets.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub ips: Vec<IpAddr>,
    pub ports: std::ops::RangeInclusive<u16>,
}

/// Caps on stream connections, in total and per source address, across all workers. Touched
/// only when a connection opens or closes.
#[derive(Debug)]
pub struct ConnectionLimits {
    pub max_total: usize,
    pub max_per_source: usize,
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total,
            max_per_source,
            total: AtomicUsize::new(0),
            per_source: Mutex::default(),
        }
    }

    fn claim(&self, client: IpAddr) -> Result<(), Refusal> {
        let source = source_of(client);
        let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_source.get(&source).copied().unwrap_or(0);
        if count >= self.max_per_source {
            return Err(Refusal::Source);
        }
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(Refusal::Total);
        }
        per_source.insert(source, count + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many connections each client's source holds.
    fn held(&self, clients: impl Iterator<Item = IpAddr>) -> Vec<usize> {
        let per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .map(|client| per_source.get(&source_of(client)).copied().unwrap_or(0))
            .collect()
    }

    fn release(&self, client: IpAddr) {
        let source = source_of(client);
        let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                per_source.remove(&source);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Source,
    Total,
}

/// A listening socket of this worker.
pub enum Listener {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
    Tls(std::net::TcpListener),
}

enum Bound {
    Udp(UdpSocket, SocketAddr),
    Stream(TcpListener, Transport),
}

struct Relay {
    socket: UdpSocket,
    addr: SocketAddr,
}

/// A TCP or TLS client connection.
struct Connection {
    stream: TcpStream,
    tuple: FiveTuple,
    tls: Option<rustls::ServerConnection>,
    framer: Framer,
    /// Plaintext waiting to be written (or handed to rustls).
    queued: Vec<u8>,
    opened: Instant,
    /// When the frame now partly received began to arrive.
    frame_started: Option<Instant>,
    /// Since when the connection has had no allocation (it opened, or its allocation ended).
    unallocated_since: Instant,
    /// Whether it has an allocation (checked after each STUN request and at each sweep): its
    /// queue limit.
    allocated: bool,
    /// A whole message arrived (TCP) or the handshake finished (TLS).
    established: bool,
}

impl Connection {
    fn queue_limit(&self) -> usize {
        if self.allocated {
            MAX_QUEUED
        } else {
            MAX_QUEUED_UNALLOCATED
        }
    }

    /// The answer reserve is in use: stop handling this client's requests until it reads.
    fn congested(&self) -> bool {
        self.queued.len() + ANSWER_RESERVE >= self.queue_limit()
    }
}

pub struct Worker {
    index: usize,
    poll: Poll,
    listeners: Vec<Bound>,
    relays: Vec<Option<Relay>>,
    free_relays: Vec<usize>,
    relay_slots: HashMap<SocketAddr, usize>,
    connections: Vec<Option<Connection>>,
    free_connections: Vec<usize>,
    connection_slots: HashMap<FiveTuple, usize>,
    server: Server,
    shared: Arc<WorkerShared>,
    settings: Arc<Settings>,
    generation: u64,
    last_publish: Instant,
    last_sweep: Instant,
    /// Sockets that may still hold data (mio is edge-triggered).
    ready: VecDeque<Token>,
    /// Stream reads land here.
    recv_buf: Vec<u8>,
    /// Datagrams arrive here; taken out while its datagrams are handled.
    recv_batch: Option<Box<RecvBatch>>,
    /// Datagrams leave through here; flushed after each batch received and before a relay
    /// socket closes (its descriptor could otherwise be reused under a queued datagram).
    send_batch: SendBatch,
    out_buf: Vec<u8>,
    send_errors: u64,
    /// Listeners whose `accept` failed, to be tried again at the instant given.
    accept_retry: Option<(Instant, Vec<Token>)>,
    accept_log: LogBudget,
    relay_log: LogBudget,
    commands: mpsc::Receiver<Command>,
    /// Mirrors channel events into the XDP maps (src/net/xdp.rs).
    xdp: super::xdp::Hook,
}

impl Worker {
    pub fn new(
        index: usize,
        listeners: Vec<Listener>,
        quotas: Arc<crate::proto::Quotas>,
        shared: Arc<WorkerShared>,
        commands: mpsc::Receiver<Command>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let generation = shared.generation.load(Ordering::Acquire);
        let settings = shared
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let server = Server::new(settings.server.clone(), quotas, rand::random());
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut bound = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let token = Token(i);
            let listener_is_tls = matches!(listener, Listener::Tls(_));
            match listener {
                Listener::Udp(socket) => {
                    let addr = socket.local_addr()?;
                    let mut socket = UdpSocket::from_std(socket);
                    poll.registry()
                        .register(&mut socket, token, Interest::READABLE)?;
                    bound.push(Bound::Udp(socket, addr));
                }
                Listener::Tcp(listener) | Listener::Tls(listener) => {
                    let transport = if listener_is_tls {
                        Transport::Tls
                    } else {
                        Transport::Tcp
                    };
                    let mut listener = TcpListener::from_std(listener);
                    poll.registry()
                        .register(&mut listener, token, Interest::READABLE)?;
                    bound.push(Bound::Stream(listener, transport));
                }
            }
        }
        let xdp = super::xdp::Hook::new(shared.xdp.clone(), index);
        let worker = Self {
            xdp,
            index,
            poll,
            listeners: bound,
            relays: Vec::new(),
            free_relays: Vec::new(),
            relay_slots: HashMap::new(),
            connections: Vec::new(),
            free_connections: Vec::new(),
            connection_slots: HashMap::new(),
            server,
            shared,
            settings,
            generation,
            last_publish: Instant::now(),
            last_sweep: Instant::now(),
            ready: VecDeque::new(),
            recv_buf: vec![0; CHANNEL_HEADER_LEN + MAX_DATAGRAM],
            recv_batch: Some(Box::default()),
            send_batch: SendBatch::default(),
            out_buf: vec![0; MAX_DATAGRAM + 1024],
            send_errors: 0,
            accept_retry: None,
            accept_log: LogBudget::default(),
            relay_log: LogBudget::default(),
            commands,
        };
        Ok((worker, waker))
    }

    /// Runs until the shutdown flag is set, then frees every allocation.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        self.publish(Instant::now());
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            let timeout = if self.ready.is_empty() {
                let now = Instant::now();
                let next_timer = [self.server.poll_timeout(), self.accept_retry_at()]
                    .into_iter()
                    .flatten()
                    .min();
                let until_timer =
                    next_timer.map_or(MAX_SLEEP, |at| at.saturating_duration_since(now));
                Some(until_timer.min(MAX_SLEEP))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.ready.push_back(event.token());
                }
            }
            // Before any packet: a revocation sent when the server starts is in force for
            // the first Allocate.
            self.run_commands();
            for _ in 0..self.ready.len() {
                let Some(token) = self.ready.pop_front() else {
                    break;
                };
                if self.service(token) {
                    self.ready.push_back(token);
                }
            }
            let now = Instant::now();
            if self.accept_retry_at().is_some_and(|at| now >= at) {
                let (_, tokens) = self.accept_retry.take().expect("checked above");
                self.ready.extend(tokens);
            }
            self.server.handle_timeout(now);
            self.apply_events();
            self.reload_if_changed();
            if now.duration_since(self.last_sweep) >= CONNECTION_SWEEP {
                self.sweep_connections(now);
            }
            if now.duration_since(self.last_publish) >= PUBLISH_INTERVAL {
                self.publish(now);
            }
        }
        let slots: Vec<usize> = self.connection_slots.values().copied().collect();
        for slot in slots {
            self.close_connection(slot, "shutdown");
        }
        self.server.clear();
        self.apply_events();
        self.publish(Instant::now());
        Ok(())
    }

    fn accept_retry_at(&self) -> Option<Instant> {
        self.accept_retry.as_ref().map(|(at, _)| *at)
    }

    fn reload_if_changed(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.settings = self
            .shared
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.server.set_config(self.settings.server.clone());
    }

    fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        let report = WorkerReport {
            stats: self.server.stats.clone(),
            gauges: self.server.gauges(),
            send_errors: self.send_errors,
            stream_buffer_bytes: self
                .connections
                .iter()
                .flatten()
                .map(|c| c.queued.capacity() + c.framer.capacity())
                .sum::<usize>() as u64,
            kernel: self.xdp.report(now),
        };
        self.shared.telemetry.publish(self.index, &report, now);
    }

    /// Serves one ready socket for a bounded amount of work; true if it may have more.
    fn service(&mut self, token: Token) -> bool {
        if token.0 >= CONN_BASE {
            return self.service_connection(token.0 - CONN_BASE);
        }
        if token.0 >= RELAY_BASE {
            return self.drain(|w| w.recv_from_peer(token.0 - RELAY_BASE));
        }
        match self.listeners.get(token.0) {
            Some(Bound::Udp(..)) => self.drain(|w| w.recv_from_client(token.0)),
            Some(Bound::Stream(..)) => self.drain(|w| w.accept(token.0)),
            None => false,
        }
    }

    /// Calls `step` a bounded number of times until it would block; true if it may have more.
    fn drain(&mut self, mut step: impl FnMut(&mut Self) -> io::Result<()>) -> bool {
        for _ in 0..READS_PER_TURN {
            match step(self) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // An ICMP error for an earlier send (port or host unreachable) surfaces on the
                // next receive: count it with the send errors; the socket and its allocation
                // live on.
                Err(_) => self.send_errors += 1,
            }
        }
        true
    }

    /// Handles one `recvmmsg` batch from a client-facing UDP socket.
    fn recv_from_client(&mut self, index: usize) -> io::Result<()> {
        let Some(Bound::Udp(socket, local)) = self.listeners.get(index) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let (fd, local) = (socket.as_raw_fd(), *local);
        let mut batch = self.recv_batch.take().expect("returned after every batch");
        let received = batch.recv(fd, local, 0);
        let count = *received.as_ref().unwrap_or(&0);
        let (now, unix) = (Instant::now(), unix_now());
        for i in 0..count {
            let (slot, len, from) = batch.get(i);
            let Some(client) = from else { continue };
            let tuple = FiveTuple {
                client,
                server: local,
                transport: Transport::Udp,
            };
            let reply = self.handle_client_message(now, unix, tuple, &slot[..len]);
            // Close freed relay sockets before the answer goes out, so a client told its
            // allocation is gone can have the port again at once.
            self.apply_events();
            if let Some(n) = reply {
                self.send_errors += self.send_batch.push(fd, client, &[&self.out_buf[..n]]);
            }
        }
        self.recv_batch = Some(batch);
        self.flush_sends();
        match received {
            Ok(n) if n == BATCH => Ok(()),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    /// Runs one message from a client through the core: data for a peer joins the send batch,
    /// an Allocate gets its relay sockets. Returns the length of the answer in `out_buf`.
    fn handle_client_message(
        &mut self,
        now: Instant,
        unix: u64,
        tuple: FiveTuple,
        data: &[u8],
    ) -> Option<usize> {
        match self
            .server
            .handle_client(now, unix, tuple, data, &mut self.out_buf)
        {
            ClientAction::Drop => None,
            ClientAction::Reply(n) => Some(n),
            ClientAction::Relay {
                relay,
                peer,
                payload,
            } => {
                if let Some(relay_fd) = self.relay_fd(relay) {
                    self.send_errors += self.send_batch.push(relay_fd, peer, &[payload]);
                }
                None
            }
            ClientAction::Allocate(pending) => Some(self.allocate(now, pending)),
        }
    }

    /// Handles one `recvmmsg` batch from a relay socket: peers' data towards the client.
    fn recv_from_peer(&mut self, slot: usize) -> io::Result<()> {
        let Some(relay) = self.relays.get(slot).and_then(Option::as_ref) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let (fd, relay_addr) = (relay.socket.as_raw_fd(), relay.addr);
        let mut batch = self.recv_batch.take().expect("returned after every batch");
        let received = batch.recv(fd, relay_addr, CHANNEL_HEADER_LEN);
        let count = *received.as_ref().unwrap_or(&0);
        let now = Instant::now();
        for i in 0..count {
            let (buf, len, from) = batch.get(i);
            let Some(peer) = from else { continue };
            let action =
                self.server
                    .handle_peer(now, relay_addr, peer, buf, len, &mut self.out_buf);
            let (tuple, bytes, channel_data) = match action {
                Some(PeerAction::ChannelData { tuple, len }) => (tuple, &buf[..len], true),
                Some(PeerAction::DataIndication { tuple, len }) => {
                    (tuple, &self.out_buf[..len], false)
                }
                None => continue,
            };
            if tuple.transport == Transport::Udp {
                if let Some(listener) = self.listener_fd(tuple.server) {
                    self.send_errors += self.send_batch.push(listener, tuple.client, &[bytes]);
                }
                continue;
            }
            // Over a stream, ChannelData is padded to a multiple of four (RFC 8656 §12.5).
            let padding = if channel_data {
                channel_padding(bytes.len())
            } else {
                &[]
            };
            if let Some(&slot) = self.connection_slots.get(&tuple) {
                if let Some(connection) = self.connections[slot].as_mut() {
                    if !queue(connection, &[bytes, padding], false) {
                        self.send_errors += 1;
                    }
                    if flush(connection).is_err() {
                        self.close_connection(slot, "write failed");
                    }
                }
            }
        }
        self.recv_batch = Some(batch);
        self.flush_sends();
        match received {
            Ok(n) if n == BATCH => Ok(()),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    fn relay_fd(&self, relay: SocketAddr) -> Option<RawFd> {
        let slot = *self.relay_slots.get(&relay)?;
        self.relays[slot].as_ref().map(|r| r.socket.as_raw_fd())
    }

    fn listener_fd(&self, server: SocketAddr) -> Option<RawFd> {
        self.listeners.iter().find_map(|listener| match listener {
            Bound::Udp(socket, addr) if *addr == server => Some(socket.as_raw_fd()),
            _ => None,
        })
    }

    fn flush_sends(&mut self) {
        if !self.send_batch.is_empty() {
            self.send_errors += self.send_batch.flush();
        }
    }

    /// Binds the relay sockets an authenticated Allocate needs and completes it.
    fn allocate(&mut self, now: Instant, pending: PendingAllocation) -> usize {
        match self.bind_relays(now, &pending) {
            Ok((relays, token)) => self.server.accept_allocation(
                now,
                crate::unix_now(),
                pending,
                &relays,
                token,
                &mut self.out_buf,
            ),
            Err(error) => {
                if let Some(suppressed) = self.relay_log.allow(now) {
                    let code = error.code();
                    tracing::warn!(code, suppressed, "no relay socket for allocation");
                }
                self.server
                    .reject_allocation(pending, error, &mut self.out_buf)
            }
        }
    }

    /// One registered relay socket per requested family (or the reserved one), and the
    /// RESERVATION-TOKEN of a port held beside the first; the error to answer when that fails.
    fn bind_relays(
        &mut self,
        now: Instant,
        pending: &PendingAllocation,
    ) -> Result<(Vec<SocketAddr>, Option<u64>), Error> {
        let mut sockets = Vec::new();
        let mut token = None;
        if let Some(reserved) = pending.reservation_token {
            let socket = self.shared.reservations.take(reserved, now);
            sockets.push(socket.ok_or(Error::InsufficientCapacity)?);
        } else {
            for (i, family) in pending.families.iter().enumerate() {
                let wanted_v4 = *family == AddressFamily::IPV4;
                let relay = &self.settings.relay;
                let ip = *relay
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == wanted_v4)
                    .ok_or(Error::AddressFamilyNotSupported)?;
                // EVEN-PORT applies to the first relayed address (RFC 8656 §7.2).
                let even_port = pending.even_port.filter(|_| i == 0);
                let (socket, reserved) = udp::bind_relay(
                    ip,
                    &relay.ports,
                    even_port.is_some(),
                    even_port == Some(true),
                )
                .ok_or(Error::InsufficientCapacity)?;
                if let Some(reserved) = reserved {
                    let held = self.shared.reservations.hold(reserved, now);
                    token = Some(held.ok_or(Error::InsufficientCapacity)?);
                }
                sockets.push(socket);
            }
        }
        let mut relays = Vec::with_capacity(sockets.len());
        for socket in sockets {
            match self.register_relay(socket) {
                Ok(addr) => relays.push(addr),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register relay socket");
                    for addr in relays {
                        self.close_relay(addr);
                    }
                    return Err(Error::InsufficientCapacity);
                }
            }
        }
        Ok((relays, token))
    }

    fn close_relay(&mut self, addr: SocketAddr) {
        self.flush_sends();
        if let Some(slot) = self.relay_slots.remove(&addr) {
            if let Some(mut relay) = self.relays[slot].take() {
                let _ = self.poll.registry().deregister(&mut relay.socket);
            }
            self.free_relays.push(slot);
        }
    }

    fn register_relay(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr> {
        let addr = socket.local_addr()?;
        let mut socket = UdpSocket::from_std(socket);
        let slot = self.free_relays.pop().unwrap_or_else(|| {
            self.relays.push(None);
            self.relays.len() - 1
        });
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut socket, Token(RELAY_BASE + slot), Interest::READABLE)
        {
            self.free_relays.push(slot);
            return Err(e);
        }
        self.relays[slot] = Some(Relay { socket, addr });
        self.relay_slots.insert(addr, slot);
        Ok(addr)
    }

    /// Drains the core's output queue: closes the relay sockets it released, hands the
    /// record of each ended allocation to the usage sinks, and closes the stream connection
    /// of an allocation an operator ended (the client is cut off, not left to find out at its
    /// next Refresh). Permission and channel events have no consumer yet.
    fn apply_events(&mut self) {
        let mut cut_off = Vec::new();
        while let Some(mut event) = self.server.poll_output() {
            self.xdp.apply(&mut event, &self.settings.server);
            match event {
                Event::RelayReleased { relay } => self.close_relay(relay),
                Event::AllocationEnded { tuple, reason, .. } => {
                    if matches!(reason, EndReason::Kicked | EndReason::Revoked) {
                        cut_off.extend(self.connection_slots.get(&tuple).copied());
                    }
                    let realm = &self.settings.server.realm;
                    let (now, unix) = (Instant::now(), unix_now());
                    if let Some(record) =
                        crate::usage::UsageRecord::from_event(&event, self.index, realm, now, unix)
                    {
                        self.shared.usage.submit(record);
                    }
                }
                _ => {}
            }
        }
        for slot in cut_off {
            self.close_connection(slot, "allocation ended by the operator");
        }
    }

    /// Answers the management plane's requests waiting for this worker.
    fn run_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Sessions {
                    filter,
                    limit,
                    reply,
                } => {
                    let sessions = self
                        .server
                        .sessions(Instant::now(), unix_now(), &filter, limit);
                    let _ = reply.send(sessions);
                }
                Command::Kick { id, reply } => {
                    let _ = reply.send(self.server.end_allocation(id));
                }
                Command::Revocations { revocations, reply } => {
                    self.server.set_revocations(revocations);
                    let ended = self.server.end_revoked(unix_now());
                    if let Some(reply) = reply {
                        let _ = reply.send(ended);
                    }
                }
            }
            self.apply_events();
        }
    }

    /// Accepts one connection on a TCP or TLS listener.
    fn accept(&mut self, index: usize) -> io::Result<()> {
        let Some(Bound::Stream(listener, transport)) = self.listeners.get(index) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let transport = *transport;
        let (stream, client) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            // The connection went away before it was taken (ECONNABORTED and the like): take
            // the next one.
            Err(e) if is_connection_error(&e) => return Ok(()),
            // Out of descriptors or memory: leave the rest in the backlog and come back to it
            // soon (no new readiness event would announce it).
            Err(e) => {
                let now = Instant::now();
                if let Some(suppressed) = self.accept_log.allow(now) {
                    tracing::warn!(error = %e, suppressed, "accept failed; retrying");
                }
                let (_, tokens) = self
                    .accept_retry
                    .get_or_insert_with(|| (now + ACCEPT_RETRY, Vec::new()));
                if !tokens.contains(&Token(index)) {
                    tokens.push(Token(index));
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
        };
        let mut admitted = self.shared.connections.claim(client.ip());
        if admitted == Err(Refusal::Total) && self.evict_unallocated() {
            admitted = self.shared.connections.claim(client.ip());
        }
        if let Err(refusal) = admitted {
            tracing::debug!(%client, ?refusal, "connection refused: too many connections");
            return Ok(());
        }
        if let Err(e) = self.open_connection(stream, client, transport) {
            tracing::debug!(%client, error = %e, "connection not opened");
            self.shared.connections.release(client.ip());
        }
        Ok(())
    }

    /// Registers an accepted connection in a free slot; on error nothing is left behind but
    /// the caller's claim on the connection caps.
    fn open_connection(
        &mut self,
        mut stream: TcpStream,
        client: SocketAddr,
        transport: Transport,
    ) -> io::Result<()> {
        let tls = self.new_stream_session(&mut stream, client, transport)?;
        let now = Instant::now();
        let tuple = FiveTuple {
            client,
            server: stream.local_addr()?,
            transport,
        };
        let slot = self.free_connections.pop().unwrap_or_else(|| {
            self.connections.push(None);
            self.connections.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(CONN_BASE + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free_connections.push(slot);
            return Err(e);
        }
        self.connections[slot] = Some(Connection {
            stream,
            tuple,
            tls,
            framer: Framer::new(),
            queued: Vec::new(),
            opened: now,
            frame_started: None,
            unallocated_since: now,
            allocated: false,
            established: false,
        });
        self.connection_slots.insert(tuple, slot);
        Ok(())
    }

    /// At the total cap, makes room by closing one of this worker's connections without an
    /// allocation: one from the source holding the most connections, the oldest among
    /// those. A few sources opening connections they never use cannot lock everyone else
    /// out, and connections with an allocation are never closed for a newcomer.
    fn evict_unallocated(&mut self) -> bool {
        let candidates: Vec<(usize, IpAddr, Instant)> = self
            .connections
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.as_ref().map(|c| (slot, c)))
            .filter(|(_, c)| !self.server.has_allocation(&c.tuple))
            .map(|(slot, c)| (slot, c.tuple.client.ip(), c.opened))
            .collect();
        let held = self
            .shared
            .connections
            .held(candidates.iter().map(|(_, ip, _)| *ip));
        let victim = candidates
            .iter()
            .zip(held)
            .max_by_key(|((_, _, opened), held)| (*held, std::cmp::Reverse(*opened)))
            .map(|((slot, ..), _)| *slot);
        match victim {
            Some(slot) => {
                self.close_connection(slot, "evicted: connection limit reached");
                true
            }
            None => false,
        }
    }

    fn new_stream_session(
        &self,
        stream: &mut TcpStream,
        client: SocketAddr,
        transport: Transport,
    ) -> io::Result<Option<rustls::ServerConnection>> {
        stream.set_nodelay(true)?;
        if transport != Transport::Tls {
            return Ok(None);
        }
        let config = self.settings.tls.clone().ok_or_else(|| {
            io::Error::other(format!(
                "TLS connection from {client} but no certificate loaded"
            ))
        })?;
        rustls::ServerConnection::new(config)
            .map(Some)
            .map_err(io::Error::other)
    }

    /// Reads what a connection has, handles its frames and flushes replies; true if it may
    /// have more to read.
    fn service_connection(&mut self, slot: usize) -> bool {
        let Some(connection) = self.connections.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if flush(connection).is_err() {
            self.close_connection(slot, "write failed");
            return false;
        }
        // A client that does not read its answers is not read from either, until its queue
        // drains (a writable event brings it back here).
        if connection.congested() {
            return false;
        }
        let (more, closed) = match read_connection(connection, &mut self.recv_buf) {
            Ok(progress) => progress,
            Err(e) => {
                self.close_connection(slot, &e.to_string());
                return false;
            }
        };
        let paused = match self.handle_frames(slot) {
            Ok(paused) => paused,
            Err(e) => {
                self.close_connection(slot, &e);
                return false;
            }
        };
        let Some(connection) = self.connections[slot].as_mut() else {
            return false;
        };
        if flush(connection).is_err() || closed {
            self.close_connection(
                slot,
                if closed {
                    "closed by client"
                } else {
                    "write failed"
                },
            );
            return false;
        }
        // Frames left waiting for the queue to drain, which it just did without blocking:
        // no event would bring them back.
        more || (paused && !connection.congested())
    }

    /// Hands the complete frames a connection has received to the core, until its answer
    /// reserve is in use; whether it stopped for that (frames are left in the framer).
    fn handle_frames(&mut self, slot: usize) -> Result<bool, String> {
        let Some(connection) = self.connections[slot].as_mut() else {
            return Ok(false);
        };
        let tuple = connection.tuple;
        let mut framer = std::mem::take(&mut connection.framer);
        let mut completed = false;
        let mut paused = false;
        let result = loop {
            if self.connections[slot]
                .as_ref()
                .is_some_and(Connection::congested)
            {
                paused = true;
                break Ok(());
            }
            let range = match framer.next_frame() {
                Ok(Some(range)) => range,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            };
            completed = true;
            let now = Instant::now();
            let data = &framer.data()[range];
            let is_stun = data[0] < 0x40;
            let reply = self.handle_client_message(now, unix_now(), tuple, data);
            self.apply_events();
            // Requests can create or end the allocation, which sets the queue limit.
            let allocated = is_stun && self.server.has_allocation(&tuple);
            if let Some(connection) = self.connections[slot].as_mut() {
                connection.established = true;
                // The answer first: a Refresh that ends the allocation gets its answer under
                // the limit it was sent under.
                if let Some(n) = reply {
                    if !queue(connection, &[&self.out_buf[..n]], true) {
                        self.send_errors += 1;
                    }
                }
                if is_stun {
                    connection.allocated = allocated;
                }
            }
        };
        if let Some(connection) = self.connections[slot].as_mut() {
            // While paused, waiting is on the server's side of the deadline.
            if framer.pending() == 0 || paused {
                connection.frame_started = None;
            } else if completed || connection.frame_started.is_none() {
                connection.frame_started = Some(Instant::now());
            }
            connection.framer = framer;
        }
        self.flush_sends();
        result.map(|()| paused)
    }

    fn close_connection(&mut self, slot: usize, reason: &str) {
        let Some(mut connection) = self.connections.get_mut(slot).and_then(Option::take) else {
            return;
        };
        tracing::debug!(client = %connection.tuple.client, reason, "connection closed");
        let _ = self.poll.registry().deregister(&mut connection.stream);
        self.connection_slots.remove(&connection.tuple);
        self.free_connections.push(slot);
        self.shared
            .connections
            .release(connection.tuple.client.ip());
        self.server.close_connection(&connection.tuple);
        self.apply_events();
    }

    /// Closes connections whose handshake or current frame stalled, and ones that have gone
    /// without an allocation for too long.
    fn sweep_connections(&mut self, now: Instant) {
        self.last_sweep = now;
        let mut expired = Vec::new();
        for (slot, connection) in self.connections.iter_mut().enumerate() {
            let Some(connection) = connection else {
                continue;
            };
            connection.allocated = self.server.has_allocation(&connection.tuple);
            if connection.allocated {
                connection.unallocated_since = now;
            }
            let handshake_done = connection.established
                && connection
                    .tls
                    .as_ref()
                    .is_none_or(|tls| !tls.is_handshaking());
            let stalled = |since: Instant| now.duration_since(since) >= HANDSHAKE_TIMEOUT;
            if !handshake_done && stalled(connection.opened) {
                expired.push((slot, "handshake timeout"));
            } else if connection.frame_started.is_some_and(stalled) {
                expired.push((slot, "frame timeout"));
            } else if now.duration_since(connection.unallocated_since) >= UNALLOCATED_LIFETIME {
                expired.push((slot, "no allocation"));
            }
        }
        for (slot, reason) in expired {
            self.close_connection(slot, reason);
        }
    }
}

/// Reads from a connection into its framer (through rustls for TLS): `(more may be
/// waiting, the client closed its side)`.
fn read_connection(connection: &mut Connection, buf: &mut [u8]) -> io::Result<(bool, bool)> {
    for _ in 0..READS_PER_TURN {
        // Never more than a whole frame ahead of what has been handled.
        let room = MAX_FRAME
            .saturating_sub(connection.framer.pending())
            .min(buf.len());
        if room == 0 {
            return Ok((true, false));
        }
        match &mut connection.tls {
            Some(tls) => match tls.read_tls(&mut connection.stream) {
                Ok(0) => return Ok((false, true)),
                Ok(_) => {
                    let state = tls.process_new_packets().map_err(|e| {
                        // Best effort: tell the client why before closing.
                        let _ = tls.write_tls(&mut connection.stream);
                        io::Error::other(e)
                    })?;
                    let mut available = state.plaintext_bytes_to_read();
                    while available > 0 {
                        let chunk = available.min(buf.len());
                        let n = tls.reader().read(&mut buf[..chunk])?;
                        connection.framer.extend(&buf[..n]);
                        available -= n;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, false)),
                Err(e) => return Err(e),
            },
            // At most up to a whole frame buffered: a client whose frames wait for its queue
            // to drain holds no more than that.
            None => match connection.stream.read(&mut buf[..room]) {
                Ok(0) => return Ok((false, true)),
                Ok(n) => connection.framer.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, false)),
                Err(e) => return Err(e),
            },
        }
    }
    Ok((true, false))
}

/// Queues bytes for a stream client: an answer to its own request, or relayed data, which
/// leaves the answer reserve free; false (and nothing queued) when there is no room.
fn queue(connection: &mut Connection, parts: &[&[u8]], answer: bool) -> bool {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let reserve = if answer { 0 } else { ANSWER_RESERVE };
    if connection.queued.len() + len + reserve > connection.queue_limit() {
        return false;
    }
    for part in parts {
        connection.queued.extend_from_slice(part);
    }
    true
}

/// Writes as much queued data as the socket takes (through rustls for TLS).
fn flush(connection: &mut Connection) -> io::Result<()> {
    let Connection {
        stream,
        tls,
        queued,
        ..
    } = connection;
    match tls {
        Some(tls) => loop {
            while tls.wants_write() {
                match tls.write_tls(stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if queued.is_empty() || tls.is_handshaking() {
                release_idle(queued);
                return Ok(());
            }
            let n = tls.writer().write(&queued[..queued.len().min(TLS_CHUNK)])?;
            queued.drain(..n);
        },
        None => {
            while !queued.is_empty() {
                match stream.write(queued) {
                    Ok(n) => {
                        queued.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            release_idle(queued);
            Ok(())
        }
    }
}

/// Gives back what an emptied send queue grew to in a burst, so an idle connection does not
/// keep it.
fn release_idle(queued: &mut Vec<u8>) {
    if queued.is_empty() && queued.capacity() > 16 * 1024 {
        *queued = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let limits = ConnectionLimits::new(100, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(limits.claim(ip("2001:db8:1:2::1")), Ok(()));
        assert_eq!(limits.claim(ip("2001:db8:1:2:ffff::9")), Ok(()));
        assert_eq!(
            limits.claim(ip("2001:db8:1:2:abcd::1")),
            Err(Refusal::Source),
            "a third address in the same /64"
        );
        assert_eq!(limits.claim(ip("2001:db8:1:3::1")), Ok(()), "the next /64");
        assert_eq!(limits.claim(ip("192.0.2.1")), Ok(()));
        assert_eq!(limits.claim(ip("::ffff:192.0.2.1")), Ok(()));
        assert_eq!(limits.claim(ip("192.0.2.1")), Err(Refusal::Source));
        assert_eq!(limits.held([ip("2001:db8:1:2::7")].into_iter()), [2]);
        limits.release(ip("2001:db8:1:2::1"));
        assert_eq!(limits.claim(ip("2001:db8:1:2::5")), Ok(()));
        let full = ConnectionLimits::new(1, 10);
        assert_eq!(full.claim(ip("192.0.2.1")), Ok(()));
        assert_eq!(full.claim(ip("192.0.2.2")), Err(Refusal::Total));
    }
}
