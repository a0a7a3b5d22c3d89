//! One worker thread: a `mio` event loop over this worker's listening sockets (UDP, TCP and
//! TLS, each a member of a `SO_REUSEPORT` group), its client connections, and the relay
//! sockets of the allocations it created. It owns its [`Server`]; nothing on the packet path
//! is shared or locked.
//!
//! The sockets live in three tables, each owning its state: [`Listeners`] (tokens from 0),
//! [`Relays`] (from `relays::TOKEN_BASE`) and [`Connections`] (from
//! `connections::TOKEN_BASE`). This module is the only one that drives the core: it hands
//! what those sockets receive to the [`Server`], sends what it answers (datagrams through
//! one `sendmmsg` batch, stream data through the connection's queue), and acts on what it
//! reports (relay sockets to close, connections to cut off, usage records). The management
//! plane's commands, reloads and the telemetry it publishes are handled here between turns.

use crate::unix_now;
use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use tokio::sync::oneshot;

use super::batch::{RecvBatch, SendBatch, BATCH};
use super::connections::{self, ConnectionLimits, Connections, Refusal};
use super::listeners::{Accepted, Kind, Listener, Listeners};
use super::relays::{self, Relays};
use super::stream::channel_padding;
use super::udp::Reservations;
use super::READS_PER_TURN;
use crate::proto::server::LogBudget;
use crate::proto::wire::CHANNEL_HEADER_LEN;
use crate::proto::{
    ClientAction, EndReason, Event, FiveTuple, PeerAction, PendingAllocation, Revocations, Server,
    ServerConfig, SessionFilter, SessionInfo, Transport,
};
use crate::telemetry::{Telemetry, WorkerReport};

const WAKER: Token = Token(usize::MAX);
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
    /// The attached XDP program, if any (src/net/xdp.rs).
    pub xdp: Option<Arc<super::xdp::Datapath>>,
    /// Every worker's relay addresses held now: a client of one worker may relay to an
    /// allocation of another, and to nothing else on the relay IPs.
    pub live_relays: Arc<crate::proto::LiveRelays>,
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
    index: usize,
    poll: Poll,
    listeners: Listeners,
    /// Dropped before `relays` (fields drop in order): its relays stop being live before
    /// their sockets close.
    server: Server,
    relays: Relays,
    connections: Connections,
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
        let server = Server::new(settings.server.clone(), quotas, rand::random())
            .with_live_relays(shared.live_relays.clone());
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let listeners = Listeners::register(poll.registry(), listeners)?;
        let xdp = super::xdp::Hook::new(shared.xdp.clone(), index);
        let worker = Self {
            xdp,
            index,
            poll,
            listeners,
            relays: Relays::default(),
            connections: Connections::default(),
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
                let next_timer = [self.server.poll_timeout(), self.listeners.retry_at()]
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
            if let Some(tokens) = self.listeners.due_retries(now) {
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
        for slot in self.connections.open_slots() {
            self.close_connection(slot, "shutdown");
        }
        self.server.clear();
        self.apply_events();
        self.publish(Instant::now());
        Ok(())
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
        self.xdp.reconfigure(&self.settings.server);
        // Permissions and channels the reloaded peer filter cut leave the XDP maps now, not
        // at this worker's next packet.
        self.apply_events();
    }

    fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        let report = WorkerReport {
            stats: self.server.stats.clone(),
            gauges: self.server.gauges(),
            send_errors: self.send_errors,
            stream_buffer_bytes: self.connections.buffer_bytes() as u64,
            kernel: self.xdp.report(now),
        };
        self.shared.telemetry.publish(self.index, &report, now);
    }

    /// Serves one ready socket for a bounded amount of work; true if it may have more.
    fn service(&mut self, token: Token) -> bool {
        if token.0 >= connections::TOKEN_BASE {
            return self.service_connection(token.0 - connections::TOKEN_BASE);
        }
        if token.0 >= relays::TOKEN_BASE {
            return self.drain(|w| w.recv_from_peer(token.0 - relays::TOKEN_BASE));
        }
        match self.listeners.kind(token.0) {
            Some(Kind::Udp) => self.drain(|w| w.recv_from_client(token.0)),
            Some(Kind::Stream) => self.drain(|w| w.accept(token.0)),
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

    // ---- datagrams: clients' over UDP, and peers' to every client ----

    /// Handles one `recvmmsg` batch from a client-facing UDP socket.
    fn recv_from_client(&mut self, index: usize) -> io::Result<()> {
        let Some((fd, local)) = self.listeners.udp(index) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
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
                if let Some(relay_fd) = self.relays.fd(relay) {
                    self.send_errors += self.send_batch.push(relay_fd, peer, &[payload]);
                }
                None
            }
            ClientAction::Allocate(pending) => Some(self.allocate(now, pending)),
        }
    }

    /// Binds the relay sockets an authenticated Allocate needs and completes it.
    fn allocate(&mut self, now: Instant, pending: PendingAllocation) -> usize {
        let bound = self.relays.bind(
            self.poll.registry(),
            now,
            &pending,
            &self.settings.relay,
            &self.shared.reservations,
        );
        match bound {
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

    fn close_relay(&mut self, addr: std::net::SocketAddr) {
        self.flush_sends();
        self.relays.close(self.poll.registry(), addr);
    }

    /// Handles one `recvmmsg` batch from a relay socket: peers' data towards the client.
    fn recv_from_peer(&mut self, slot: usize) -> io::Result<()> {
        let Some((fd, relay_addr)) = self.relays.get(slot) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
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
                if let Some(listener) = self.listeners.udp_fd(tuple.server) {
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
            let Some(slot) = self.connections.slot(&tuple) else {
                continue;
            };
            let Some(mut connection) = self.connections.get_mut(slot) else {
                continue;
            };
            if !connection.queue(&[bytes, padding], false) {
                self.send_errors += 1;
            }
            let write_failed = connection.flush().is_err();
            drop(connection);
            if write_failed {
                self.close_connection(slot, "write failed");
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

    fn flush_sends(&mut self) {
        if !self.send_batch.is_empty() {
            self.send_errors += self.send_batch.flush();
        }
    }

    // ---- stream connections ----

    /// Accepts one connection on a TCP or TLS listener.
    fn accept(&mut self, index: usize) -> io::Result<()> {
        let Some(Accepted {
            stream,
            client,
            transport,
        }) = self.listeners.accept(index)?
        else {
            return Ok(());
        };
        let mut admitted = self.shared.connections.claim(client.ip());
        if admitted == Err(Refusal::Total) && self.evict_unallocated() {
            admitted = self.shared.connections.claim(client.ip());
        }
        if let Err(refusal) = admitted {
            tracing::debug!(%client, ?refusal, "connection refused: too many connections");
            return Ok(());
        }
        let tls = self.settings.tls.as_ref();
        let opened = self
            .connections
            .open(self.poll.registry(), stream, client, transport, tls);
        if let Err(e) = opened {
            tracing::debug!(%client, error = %e, "connection not opened");
            self.shared.connections.release(client.ip());
        }
        Ok(())
    }

    /// At the total cap, makes room by closing one of this worker's connections without an
    /// allocation (see [`Connections::eviction_victim`]); whether there was one.
    fn evict_unallocated(&mut self) -> bool {
        let victim = self
            .connections
            .eviction_victim(&self.shared.connections, |tuple| {
                self.server.has_allocation(tuple)
            });
        match victim {
            Some(slot) => {
                self.close_connection(slot, "evicted: connection limit reached");
                true
            }
            None => false,
        }
    }

    /// Reads what a connection has, handles its frames and flushes replies; true if it may
    /// have more to read.
    fn service_connection(&mut self, slot: usize) -> bool {
        let Some(mut connection) = self.connections.get_mut(slot) else {
            return false;
        };
        if connection.flush().is_err() {
            drop(connection);
            self.close_connection(slot, "write failed");
            return false;
        }
        // A client that does not read its answers is not read from either, until its queue
        // drains (a writable event brings it back here).
        if connection.congested() {
            return false;
        }
        let read = connection.read(&mut self.recv_buf);
        drop(connection);
        let (more, closed) = match read {
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
        let Some(mut connection) = self.connections.get_mut(slot) else {
            return false;
        };
        let write_failed = connection.flush().is_err();
        let congested = connection.congested();
        drop(connection);
        if write_failed || closed {
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
        more || (paused && !congested)
    }

    /// Hands the complete frames a connection has received to the core, until its answer
    /// reserve is in use; whether it stopped for that (frames are left in the framer).
    fn handle_frames(&mut self, slot: usize) -> Result<bool, String> {
        let Some(mut connection) = self.connections.get_mut(slot) else {
            return Ok(false);
        };
        let tuple = connection.tuple();
        let mut framer = connection.take_framer();
        drop(connection);
        let mut completed = false;
        let mut paused = false;
        let result = loop {
            if self.connections.get(slot).is_some_and(|c| c.congested()) {
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
            if let Some(mut connection) = self.connections.get_mut(slot) {
                connection.set_established();
                // The answer first: a Refresh that ends the allocation gets its answer under
                // the limit it was sent under.
                if let Some(n) = reply {
                    if !connection.queue(&[&self.out_buf[..n]], true) {
                        self.send_errors += 1;
                    }
                }
                if is_stun {
                    connection.set_allocated(allocated);
                }
            }
        };
        if let Some(mut connection) = self.connections.get_mut(slot) {
            connection.put_framer(framer, completed, paused);
        }
        self.flush_sends();
        result.map(|()| paused)
    }

    fn close_connection(&mut self, slot: usize, reason: &str) {
        let closed =
            self.connections
                .close(self.poll.registry(), slot, reason, &self.shared.connections);
        if let Some(tuple) = closed {
            self.server.close_connection(&tuple);
            self.apply_events();
        }
    }

    /// Closes connections whose handshake or current frame stalled, and ones that have gone
    /// without an allocation for too long.
    fn sweep_connections(&mut self, now: Instant) {
        self.last_sweep = now;
        let expired = self
            .connections
            .expired(now, |tuple| self.server.has_allocation(tuple));
        for (slot, reason) in expired {
            self.close_connection(slot, reason);
        }
    }

    // ---- what the core and the management plane ask for ----

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
                        cut_off.extend(self.connections.slot(&tuple));
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
