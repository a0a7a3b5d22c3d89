//! One worker thread: a `mio` event loop over this worker's listening sockets (one per listen
//! address, each a member of a `SO_REUSEPORT` group) and the relay sockets of the allocations
//! it created. It owns its [`Server`]; nothing on the packet path is shared or locked.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use super::udp::{self, Reservations};
use crate::proto::wire::{AddressFamily, ErrorCode, CHANNEL_HEADER_LEN};
use crate::proto::{
    ClientAction, Event, FiveTuple, PeerAction, PendingAllocation, Server, ServerConfig, Transport,
};
use crate::telemetry::{Telemetry, WorkerReport};

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners; relay slot `i` is `Token(RELAY_BASE + i)`.
const RELAY_BASE: usize = 1 << 16;
/// Datagrams read from one socket before turning to the next, so a busy socket cannot starve
/// the rest (quinn's IO_LOOP_BOUND plays the same role).
const RECV_BATCH: usize = 32;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Longest sleep between checks of the shutdown flag, timers and reloads.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How often a worker publishes its counters for the management plane.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// What a worker shares with the rest of the process. Workers read it once per loop turn
/// at most (the shutdown flag and the settings generation); the packet path never locks.
pub struct WorkerShared {
    pub shutdown: AtomicBool,
    pub reservations: Reservations,
    pub telemetry: Arc<Telemetry>,
    /// Bumped on every reload; a worker that sees a new value re-reads `settings`.
    pub generation: AtomicU64,
    pub settings: RwLock<Arc<Settings>>,
}

/// Everything a reload can change.
#[derive(Debug)]
pub struct Settings {
    pub server: Arc<ServerConfig>,
    pub relay: RelaySettings,
}

/// The relay settings a worker needs to bind relay sockets.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub ips: Vec<IpAddr>,
    pub ports: std::ops::RangeInclusive<u16>,
}

struct Relay {
    socket: UdpSocket,
    addr: SocketAddr,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    listeners: Vec<(UdpSocket, SocketAddr)>,
    relays: Vec<Option<Relay>>,
    free_slots: Vec<usize>,
    relay_slots: HashMap<SocketAddr, usize>,
    server: Server,
    shared: Arc<WorkerShared>,
    settings: Arc<Settings>,
    generation: u64,
    last_publish: Instant,
    /// Sockets that may still hold datagrams (mio is edge-triggered).
    ready: VecDeque<Token>,
    recv_buf: Vec<u8>,
    out_buf: Vec<u8>,
    send_errors: u64,
}

impl Worker {
    pub fn new(
        index: usize,
        listeners: Vec<std::net::UdpSocket>,
        quotas: Arc<crate::proto::Quotas>,
        shared: Arc<WorkerShared>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let generation = shared.generation.load(Ordering::Acquire);
        let settings = shared
            .settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let server = Server::new(settings.server.clone(), quotas);
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut registered = Vec::new();
        for (i, socket) in listeners.into_iter().enumerate() {
            let addr = socket.local_addr()?;
            let mut socket = UdpSocket::from_std(socket);
            poll.registry()
                .register(&mut socket, Token(i), Interest::READABLE)?;
            registered.push((socket, addr));
        }
        let worker = Self {
            index,
            poll,
            listeners: registered,
            relays: Vec::new(),
            free_slots: Vec::new(),
            relay_slots: HashMap::new(),
            server,
            shared,
            settings,
            generation,
            last_publish: Instant::now(),
            ready: VecDeque::new(),
            recv_buf: vec![0; CHANNEL_HEADER_LEN + MAX_DATAGRAM],
            out_buf: vec![0; MAX_DATAGRAM + 1024],
            send_errors: 0,
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
                let until_timer = self
                    .server
                    .poll_timeout()
                    .map_or(MAX_SLEEP, |at| at.saturating_duration_since(now));
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
            for _ in 0..self.ready.len() {
                let Some(token) = self.ready.pop_front() else {
                    break;
                };
                if self.drain_socket(token) {
                    self.ready.push_back(token);
                }
            }
            let now = Instant::now();
            self.server.handle_timeout(now);
            self.apply_events();
            self.reload_if_changed();
            if now.duration_since(self.last_publish) >= PUBLISH_INTERVAL {
                self.publish(now);
            }
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
    }

    fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        let report = WorkerReport {
            stats: self.server.stats.clone(),
            gauges: self.server.gauges(now),
            send_errors: self.send_errors,
        };
        self.shared.telemetry.publish(self.index, &report, now);
    }

    /// Reads up to a batch of datagrams from one socket; true if it may hold more.
    fn drain_socket(&mut self, token: Token) -> bool {
        for _ in 0..RECV_BATCH {
            let received = if token.0 >= RELAY_BASE {
                self.recv_from_peer(token.0 - RELAY_BASE)
            } else {
                self.recv_from_client(token.0)
            };
            match received {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // ICMP errors surface as recv errors on some kernels; the socket lives on.
                Err(_) => {}
            }
        }
        true
    }

    fn recv_from_client(&mut self, index: usize) -> io::Result<()> {
        let Some((socket, local)) = self.listeners.get(index) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let local = *local;
        let (len, client) = socket.recv_from(&mut self.recv_buf)?;
        let now = Instant::now();
        let tuple = FiveTuple {
            client,
            server: local,
            transport: Transport::Udp,
        };
        let data = &self.recv_buf[..len];
        match self
            .server
            .handle_client(now, unix_now(), tuple, data, &mut self.out_buf)
        {
            ClientAction::Drop => {}
            ClientAction::Reply(n) => send(
                &self.listeners[index].0,
                &self.out_buf[..n],
                client,
                &mut self.send_errors,
            ),
            ClientAction::Relay {
                relay,
                peer,
                payload,
            } => {
                if let Some(relay) = self
                    .relay_slots
                    .get(&relay)
                    .and_then(|&i| self.relays[i].as_ref())
                {
                    send(&relay.socket, payload, peer, &mut self.send_errors);
                }
            }
            ClientAction::Allocate(pending) => {
                let n = self.allocate(now, pending);
                send(
                    &self.listeners[index].0,
                    &self.out_buf[..n],
                    client,
                    &mut self.send_errors,
                );
            }
        }
        self.apply_events();
        Ok(())
    }

    fn recv_from_peer(&mut self, slot: usize) -> io::Result<()> {
        let Some(relay) = self.relays.get(slot).and_then(Option::as_ref) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let relay_addr = relay.addr;
        let (len, peer) = relay
            .socket
            .recv_from(&mut self.recv_buf[CHANNEL_HEADER_LEN..])?;
        let action = self.server.handle_peer(
            Instant::now(),
            relay_addr,
            peer,
            &mut self.recv_buf,
            len,
            &mut self.out_buf,
        );
        let (tuple, bytes) = match action {
            Some(PeerAction::ChannelData { tuple, len }) => (tuple, &self.recv_buf[..len]),
            Some(PeerAction::DataIndication { tuple, len }) => (tuple, &self.out_buf[..len]),
            None => return Ok(()),
        };
        if let Some((socket, _)) = self
            .listeners
            .iter()
            .find(|(_, addr)| *addr == tuple.server)
        {
            send(socket, bytes, tuple.client, &mut self.send_errors);
        }
        Ok(())
    }

    /// Binds the relay socket an authenticated Allocate needs and completes it.
    fn allocate(&mut self, now: Instant, pending: PendingAllocation) -> usize {
        let bound = match pending.reservation_token {
            Some(token) => self
                .shared
                .reservations
                .take(token, now)
                .map(|socket| (socket, None))
                .ok_or(ErrorCode::INSUFFICIENT_CAPACITY),
            None => {
                let wanted_v4 = pending.family == AddressFamily::IPV4;
                match self
                    .settings
                    .relay
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == wanted_v4)
                {
                    None => Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
                    Some(&ip) => {
                        let even = pending.even_port.is_some();
                        let reserve = pending.even_port == Some(true);
                        udp::bind_relay(ip, &self.settings.relay.ports, even, reserve)
                            .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)
                    }
                }
            }
        };
        let (socket, reserved) = match bound {
            Ok(bound) => bound,
            Err(code) => {
                tracing::warn!(code, "no relay socket for allocation");
                return self
                    .server
                    .reject_allocation(pending, code, &mut self.out_buf);
            }
        };
        let token = match reserved {
            Some(reserved) => match self.shared.reservations.hold(reserved, now) {
                Some(token) => Some(token),
                None => {
                    return self.server.reject_allocation(
                        pending,
                        ErrorCode::INSUFFICIENT_CAPACITY,
                        &mut self.out_buf,
                    )
                }
            },
            None => None,
        };
        match self.register_relay(socket) {
            Ok(addr) => self
                .server
                .accept_allocation(now, pending, addr, token, &mut self.out_buf),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register relay socket");
                self.server.reject_allocation(
                    pending,
                    ErrorCode::INSUFFICIENT_CAPACITY,
                    &mut self.out_buf,
                )
            }
        }
    }

    fn register_relay(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr> {
        let addr = socket.local_addr()?;
        let mut socket = UdpSocket::from_std(socket);
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.relays.push(None);
            self.relays.len() - 1
        });
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut socket, Token(RELAY_BASE + slot), Interest::READABLE)
        {
            self.free_slots.push(slot);
            return Err(e);
        }
        self.relays[slot] = Some(Relay { socket, addr });
        self.relay_slots.insert(addr, slot);
        Ok(addr)
    }

    /// Closes the relay sockets of allocations the core has freed.
    fn apply_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::AllocationFreed { relay } => {
                    if let Some(slot) = self.relay_slots.remove(&relay) {
                        if let Some(mut relay) = self.relays[slot].take() {
                            let _ = self.poll.registry().deregister(&mut relay.socket);
                        }
                        self.free_slots.push(slot);
                    }
                }
            }
        }
    }
}

/// Sends one datagram; a failure (buffer full, unreachable, denied) drops it and is counted,
/// never ending the allocation.
fn send(socket: &UdpSocket, data: &[u8], to: SocketAddr, errors: &mut u64) {
    if socket.send_to(data, to).is_err() {
        *errors += 1;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
