//! One worker thread: a `mio` event loop over this worker's listening sockets (UDP, TCP and
//! TLS, each a member of a `SO_REUSEPORT` group), its client connections, and the relay
//! sockets of the allocations it created. It owns its [`Server`]; nothing on the packet path
//! is shared or locked.

use crate::unix_now;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

use super::batch::{RecvBatch, SendBatch};
use super::connections::Connection;
pub use super::connections::ConnectionLimits;
use super::listeners::Bound;
pub use super::listeners::Listener;
use super::relays::Relay;
use super::udp::Reservations;
use crate::proto::server::LogBudget;
use crate::proto::wire::CHANNEL_HEADER_LEN;
use crate::proto::{
    ClientAction, EndReason, Event, FiveTuple, PendingAllocation, Revocations, Server,
    ServerConfig, SessionFilter, SessionInfo, Transport,
};
use crate::telemetry::{Telemetry, WorkerReport};

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners; relay slot `i` is `Token(RELAY_BASE + i)` and connection
/// slot `i` is `Token(CONN_BASE + i)`.
pub(super) const RELAY_BASE: usize = 1 << 20;
pub(super) const CONN_BASE: usize = 1 << 40;
/// Reads from one connection, or `recvmmsg` batches from one UDP socket, before turning to
/// the next, so a busy socket cannot starve the rest (quinn's IO_LOOP_BOUND plays the same
/// role).
pub(super) const READS_PER_TURN: usize = 4;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Longest sleep between checks of the shutdown flag, timers and reloads.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How often a worker publishes its counters for the management plane.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// How often connections are checked for timeouts.
const CONNECTION_SWEEP: Duration = Duration::from_secs(1);

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

pub struct Worker {
    pub(super) index: usize,
    pub(super) poll: Poll,
    pub(super) listeners: Vec<Bound>,
    pub(super) relays: Vec<Option<Relay>>,
    pub(super) free_relays: Vec<usize>,
    pub(super) relay_slots: HashMap<SocketAddr, usize>,
    pub(super) connections: Vec<Option<Connection>>,
    pub(super) free_connections: Vec<usize>,
    pub(super) connection_slots: HashMap<FiveTuple, usize>,
    pub(super) server: Server,
    pub(super) shared: Arc<WorkerShared>,
    pub(super) settings: Arc<Settings>,
    pub(super) generation: u64,
    pub(super) last_publish: Instant,
    pub(super) last_sweep: Instant,
    /// Sockets that may still hold data (mio is edge-triggered).
    pub(super) ready: VecDeque<Token>,
    /// Stream reads land here.
    pub(super) recv_buf: Vec<u8>,
    /// Datagrams arrive here; taken out while its datagrams are handled.
    pub(super) recv_batch: Option<Box<RecvBatch>>,
    /// Datagrams leave through here; flushed after each batch received and before a relay
    /// socket closes (its descriptor could otherwise be reused under a queued datagram).
    pub(super) send_batch: SendBatch,
    pub(super) out_buf: Vec<u8>,
    pub(super) send_errors: u64,
    /// Listeners whose `accept` failed, to be tried again at the instant given.
    pub(super) accept_retry: Option<(Instant, Vec<Token>)>,
    pub(super) accept_log: LogBudget,
    pub(super) relay_log: LogBudget,
    pub(super) commands: mpsc::Receiver<Command>,
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
        let worker = Self {
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

    /// Runs one message from a client through the core: data for a peer joins the send batch,
    /// an Allocate gets its relay sockets. Returns the length of the answer in `out_buf`.
    pub(super) fn handle_client_message(
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

    pub(super) fn flush_sends(&mut self) {
        if !self.send_batch.is_empty() {
            self.send_errors += self.send_batch.flush();
        }
    }

    /// Binds the relay sockets an authenticated Allocate needs and completes it.
    pub(super) fn allocate(&mut self, now: Instant, pending: PendingAllocation) -> usize {
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

    /// Drains the core's output queue: closes the relay sockets it released, hands the
    /// record of each ended allocation to the usage sinks, and closes the stream connection
    /// of an allocation an operator ended (the client is cut off, not left to find out at its
    /// next Refresh). Permission and channel events have no consumer yet.
    pub(super) fn apply_events(&mut self) {
        let mut cut_off = Vec::new();
        while let Some(event) = self.server.poll_output() {
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
}
