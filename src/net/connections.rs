//! The worker's TCP and TLS client connections (moved from worker.rs).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::listeners::Bound;
use super::stream::{Framer, MAX_FRAME};
use super::worker::{Worker, CONN_BASE, READS_PER_TURN};
use super::{is_connection_error, source_of};
use crate::proto::{FiveTuple, Transport};
use crate::unix_now;

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

/// A TCP or TLS client connection.
pub(super) struct Connection {
    stream: TcpStream,
    tuple: FiveTuple,
    tls: Option<rustls::ServerConnection>,
    pub(super) framer: Framer,
    /// Plaintext waiting to be written (or handed to rustls).
    pub(super) queued: Vec<u8>,
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

impl Worker {
    /// Accepts one connection on a TCP or TLS listener.
    pub(super) fn accept(&mut self, index: usize) -> io::Result<()> {
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
    pub(super) fn service_connection(&mut self, slot: usize) -> bool {
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

    pub(super) fn close_connection(&mut self, slot: usize, reason: &str) {
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
    pub(super) fn sweep_connections(&mut self, now: Instant) {
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
pub(super) fn queue(connection: &mut Connection, parts: &[&[u8]], answer: bool) -> bool {
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
pub(super) fn flush(connection: &mut Connection) -> io::Result<()> {
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
