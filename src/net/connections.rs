//! A worker's TCP and TLS client connections (RFC 8656 framing, TLS through rustls): the
//! slot table, registered as `Token(TOKEN_BASE + slot)`; reading into each connection's
//! framer and writing its queue of answers and relayed data, with the queue limits that
//! give backpressure; the deadlines a stalled or unauthenticated client is closed at; the
//! choice of whom to evict at the total cap; and the caps themselves, shared by all workers.
//! What the frames mean, and what closing a connection ends, is the worker's business.
//!
//! The bytes the buffers hold (`turnpike_stream_buffer_bytes`) are counted as they change:
//! every change goes through an [`Entry`], which tells the table the connection's new size
//! when it is dropped, so publishing the gauge walks nothing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::stream::{Framer, MAX_FRAME};
use super::{source_of, READS_PER_TURN};
use crate::proto::{FiveTuple, Transport};

/// Connection slot `i` is `Token(TOKEN_BASE + i)`; tokens below are listeners and relays.
pub(super) const TOKEN_BASE: usize = 1 << 40;
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

    pub(super) fn claim(&self, client: IpAddr) -> Result<(), Refusal> {
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

    pub(super) fn release(&self, client: IpAddr) {
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
pub(super) enum Refusal {
    Source,
    Total,
}

/// A TCP or TLS client connection.
pub(super) struct Connection {
    stream: TcpStream,
    tuple: FiveTuple,
    tls: Option<rustls::ServerConnection>,
    framer: Framer,
    /// Plaintext waiting to be written (or handed to rustls).
    queued: Vec<u8>,
    /// What this connection's buffers count for in the table's `buffer_bytes`.
    accounted: usize,
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
    pub(super) fn tuple(&self) -> FiveTuple {
        self.tuple
    }

    fn queue_limit(&self) -> usize {
        if self.allocated {
            MAX_QUEUED
        } else {
            MAX_QUEUED_UNALLOCATED
        }
    }

    /// The answer reserve is in use: stop handling this client's requests until it reads.
    pub(super) fn congested(&self) -> bool {
        self.queued.len() + ANSWER_RESERVE >= self.queue_limit()
    }

    /// Bytes allocated for its input and output.
    fn buffered(&self) -> usize {
        self.queued.capacity() + self.framer.capacity()
    }

    /// A frame of the client's was handled: it has sent a whole message (TCP), or finished
    /// its handshake (TLS), and no longer runs against the handshake deadline.
    pub(super) fn set_established(&mut self) {
        self.established = true;
    }

    /// Whether it has an allocation now, as the core says after one of its requests.
    pub(super) fn set_allocated(&mut self, allocated: bool) {
        self.allocated = allocated;
    }

    /// The frames received so far, taken out while they are handed to the core (which may
    /// queue answers on this connection meanwhile).
    pub(super) fn take_framer(&mut self) -> Framer {
        std::mem::take(&mut self.framer)
    }

    /// Puts the framer back after its frames were handled, and restarts the frame deadline
    /// if a new frame began: `completed` if any frame was, `paused` if handling stopped for a
    /// congested queue.
    pub(super) fn put_framer(&mut self, framer: Framer, completed: bool, paused: bool) {
        // While paused, waiting is on the server's side of the deadline.
        if framer.pending() == 0 || paused {
            self.frame_started = None;
        } else if completed || self.frame_started.is_none() {
            self.frame_started = Some(Instant::now());
        }
        self.framer = framer;
    }

    /// Reads into the framer (through rustls for TLS): `(more may be waiting, the client
    /// closed its side)`.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<(bool, bool)> {
        for _ in 0..READS_PER_TURN {
            // Never more than a whole frame ahead of what has been handled.
            let room = MAX_FRAME
                .saturating_sub(self.framer.pending())
                .min(buf.len());
            if room == 0 {
                return Ok((true, false));
            }
            match &mut self.tls {
                Some(tls) => match tls.read_tls(&mut self.stream) {
                    Ok(0) => return Ok((false, true)),
                    Ok(_) => {
                        let state = tls.process_new_packets().map_err(|e| {
                            // Best effort: tell the client why before closing.
                            let _ = tls.write_tls(&mut self.stream);
                            io::Error::other(e)
                        })?;
                        let mut available = state.plaintext_bytes_to_read();
                        while available > 0 {
                            let chunk = available.min(buf.len());
                            let n = tls.reader().read(&mut buf[..chunk])?;
                            self.framer.extend(&buf[..n]);
                            available -= n;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, false)),
                    Err(e) => return Err(e),
                },
                // At most up to a whole frame buffered: a client whose frames wait for its queue
                // to drain holds no more than that.
                None => match self.stream.read(&mut buf[..room]) {
                    Ok(0) => return Ok((false, true)),
                    Ok(n) => self.framer.extend(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, false)),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok((true, false))
    }

    /// Queues bytes for the client: an answer to its own request, or relayed data, which
    /// leaves the answer reserve free; false (and nothing queued) when there is no room.
    #[inline]
    pub(super) fn queue(&mut self, parts: &[&[u8]], answer: bool) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let reserve = if answer { 0 } else { ANSWER_RESERVE };
        if self.queued.len() + len + reserve > self.queue_limit() {
            return false;
        }
        for part in parts {
            self.queued.extend_from_slice(part);
        }
        true
    }

    /// Writes as much queued data as the socket takes (through rustls for TLS).
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let Connection {
            stream,
            tls,
            queued,
            ..
        } = self;
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
}

/// The connections of one worker.
#[derive(Default)]
pub(super) struct Connections {
    slots: Vec<Option<Connection>>,
    free: Vec<usize>,
    by_tuple: HashMap<FiveTuple, usize>,
    /// The sum of the open connections' `accounted`: bytes allocated for stream clients'
    /// buffers.
    buffer_bytes: usize,
}

/// A connection borrowed from the table to be read, written or queued to. Dropping it
/// brings the table's byte count up to date with the sizes its buffers have now (queueing
/// grows them, flushing and framing give memory back).
pub(super) struct Entry<'a> {
    connection: &'a mut Connection,
    buffer_bytes: &'a mut usize,
}

impl Deref for Entry<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl DerefMut for Entry<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection
    }
}

impl Drop for Entry<'_> {
    #[inline]
    fn drop(&mut self) {
        let now = self.connection.buffered();
        *self.buffer_bytes = *self.buffer_bytes + now - self.connection.accounted;
        self.connection.accounted = now;
    }
}

impl Connections {
    /// Registers an accepted connection in a free slot; on error nothing is left behind but
    /// the caller's claim on the connection caps. `tls` is the certificate for a TLS
    /// connection.
    pub(super) fn open(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        client: SocketAddr,
        transport: Transport,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> io::Result<()> {
        let tls = new_stream_session(&mut stream, client, transport, tls)?;
        let now = Instant::now();
        let tuple = FiveTuple {
            client,
            server: stream.local_addr()?,
            transport,
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = registry.register(
            &mut stream,
            Token(TOKEN_BASE + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(slot);
            return Err(e);
        }
        // Empty buffers: nothing allocated to account for yet.
        self.slots[slot] = Some(Connection {
            stream,
            tuple,
            tls,
            framer: Framer::new(),
            queued: Vec::new(),
            accounted: 0,
            opened: now,
            frame_started: None,
            unallocated_since: now,
            allocated: false,
            established: false,
        });
        self.by_tuple.insert(tuple, slot);
        Ok(())
    }

    /// Closes the connection in `slot`, gives its place under the caps back, and returns its
    /// 5-tuple (whose allocation the caller ends).
    pub(super) fn close(
        &mut self,
        registry: &Registry,
        slot: usize,
        reason: &str,
        limits: &ConnectionLimits,
    ) -> Option<FiveTuple> {
        let mut connection = self.slots.get_mut(slot).and_then(Option::take)?;
        tracing::debug!(client = %connection.tuple.client, reason, "connection closed");
        let _ = registry.deregister(&mut connection.stream);
        self.by_tuple.remove(&connection.tuple);
        self.free.push(slot);
        self.buffer_bytes -= connection.accounted;
        limits.release(connection.tuple.client.ip());
        Some(connection.tuple)
    }

    /// The slot of the connection with this 5-tuple.
    #[inline]
    pub(super) fn slot(&self, tuple: &FiveTuple) -> Option<usize> {
        self.by_tuple.get(tuple).copied()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Connection> {
        self.slots.get(slot)?.as_ref()
    }

    #[inline]
    pub(super) fn get_mut(&mut self, slot: usize) -> Option<Entry<'_>> {
        let connection = self.slots.get_mut(slot)?.as_mut()?;
        Some(Entry {
            connection,
            buffer_bytes: &mut self.buffer_bytes,
        })
    }

    /// The slots of every open connection.
    pub(super) fn open_slots(&self) -> Vec<usize> {
        self.by_tuple.values().copied().collect()
    }

    /// Bytes allocated for the buffers of every open connection.
    pub(super) fn buffer_bytes(&self) -> usize {
        debug_assert_eq!(
            self.buffer_bytes,
            self.slots
                .iter()
                .flatten()
                .map(Connection::buffered)
                .sum::<usize>(),
            "the stream buffer count drifted from the buffers"
        );
        self.buffer_bytes
    }

    /// The connections to close, with the reason: their handshake or current frame stalled,
    /// or they have gone without an allocation for too long. Refreshes whether each has an
    /// allocation, as `has_allocation` says.
    pub(super) fn expired(
        &mut self,
        now: Instant,
        has_allocation: impl Fn(&FiveTuple) -> bool,
    ) -> Vec<(usize, &'static str)> {
        let mut expired = Vec::new();
        for (slot, connection) in self.slots.iter_mut().enumerate() {
            let Some(connection) = connection else {
                continue;
            };
            connection.allocated = has_allocation(&connection.tuple);
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
        expired
    }

    /// Whom to close to make room at the total cap: one of these connections without an
    /// allocation, from the source holding the most connections, the oldest among those. A
    /// few sources opening connections they never use cannot lock everyone else out, and
    /// connections with an allocation are never closed for a newcomer.
    pub(super) fn eviction_victim(
        &self,
        limits: &ConnectionLimits,
        has_allocation: impl Fn(&FiveTuple) -> bool,
    ) -> Option<usize> {
        let candidates: Vec<(usize, IpAddr, Instant)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.as_ref().map(|c| (slot, c)))
            .filter(|(_, c)| !has_allocation(&c.tuple))
            .map(|(slot, c)| (slot, c.tuple.client.ip(), c.opened))
            .collect();
        let held = limits.held(candidates.iter().map(|(_, ip, _)| *ip));
        candidates
            .iter()
            .zip(held)
            .max_by_key(|((_, _, opened), held)| (*held, std::cmp::Reverse(*opened)))
            .map(|((slot, ..), _)| *slot)
    }
}

fn new_stream_session(
    stream: &mut TcpStream,
    client: SocketAddr,
    transport: Transport,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> io::Result<Option<rustls::ServerConnection>> {
    stream.set_nodelay(true)?;
    if transport != Transport::Tls {
        return Ok(None);
    }
    let config = tls.cloned().ok_or_else(|| {
        io::Error::other(format!(
            "TLS connection from {client} but no certificate loaded"
        ))
    })?;
    rustls::ServerConnection::new(config)
        .map(Some)
        .map_err(io::Error::other)
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

    /// What the buffers of every open connection hold, counted the slow way.
    fn walked(table: &Connections) -> usize {
        table.slots.iter().flatten().map(Connection::buffered).sum()
    }

    #[test]
    fn the_buffer_count_follows_every_growth_release_and_close() {
        let poll = mio::Poll::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = ConnectionLimits::new(10, 10);
        let mut table = Connections::default();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, from) = listener.accept().unwrap();
            accepted.set_nonblocking(true).unwrap();
            limits.claim(from.ip()).unwrap();
            let stream = TcpStream::from_std(accepted);
            table
                .open(poll.registry(), stream, from, Transport::Tcp, None)
                .unwrap();
            clients.push(client);
        }
        let counted = |table: &Connections, step: &str| {
            assert_eq!(table.buffer_bytes, walked(table), "after {step}");
            table.buffer_bytes
        };
        assert_eq!(counted(&table, "opening"), 0);

        // Answers queued and written: each queue keeps what it grew to.
        for slot in 0..3 {
            let mut connection = table.get_mut(slot).unwrap();
            assert!(connection.queue(&[&[1; 1000]], true));
            connection.flush().unwrap();
        }
        assert!(counted(&table, "queueing") >= 3000);

        // A Binding from each client lands in its framer.
        let binding = [
            0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        ];
        for client in &mut clients {
            client.write_all(&binding).unwrap();
        }
        let mut buf = vec![0; 4096];
        for slot in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while table.get(slot).unwrap().framer.pending() < binding.len() {
                assert!(Instant::now() < deadline, "the Binding never arrived");
                table.get_mut(slot).unwrap().read(&mut buf).unwrap();
            }
        }
        let before_frames = counted(&table, "reading");

        // Taken out while its frames are handled, and put back.
        let mut connection = table.get_mut(0).unwrap();
        let mut framer = connection.take_framer();
        drop(connection);
        counted(&table, "taking the framer");
        assert!(framer.next_frame().unwrap().is_some());
        table.get_mut(0).unwrap().put_framer(framer, true, false);
        assert_eq!(counted(&table, "putting the framer back"), before_frames);

        // A burst the queue grew to past 16 KiB is given back once written.
        let mut connection = table.get_mut(1).unwrap();
        connection.set_allocated(true);
        for _ in 0..40 {
            assert!(connection.queue(&[&[2; 1000]], true));
        }
        drop(connection);
        let grown = counted(&table, "a burst");
        table.get_mut(1).unwrap().flush().unwrap();
        assert_eq!(
            table.get(1).unwrap().queued.capacity(),
            0,
            "burst not given back"
        );
        assert!(counted(&table, "giving the burst back") < grown);

        // Closing takes a connection's bytes off; after the last, nothing is counted.
        for slot in [1, 0, 2] {
            assert!(table
                .close(poll.registry(), slot, "test", &limits)
                .is_some());
            counted(&table, "closing");
        }
        assert_eq!(table.buffer_bytes, 0);
        assert_eq!(table.buffer_bytes(), 0);
    }
}
