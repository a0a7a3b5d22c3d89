//! Batched UDP I/O with `recvmmsg`/`sendmmsg` (through nix's safe wrappers): one system call
//! moves up to [`BATCH`] datagrams. Buffers are allocated once per worker and reused, so the
//! packet path does not touch the heap.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams per system call (quinn-udp uses the same number).
pub const BATCH: usize = 32;
/// Room for the largest UDP payload plus the ChannelData header written in front of it.
pub const SLOT: usize = 4 + 65_535;

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    buf: Vec<u8>,
    /// One set of headers per address family of the receiving socket, indexed by
    /// [`family_index`]. nix's `recvmmsg` never resets a header's address length, and the
    /// kernel shrinks it to the size of the address it wrote: headers that an IPv4 socket
    /// used (16 bytes) would truncate a later IPv6 source (28 bytes). A socket of one family
    /// always writes addresses of one size, so per-family headers never shrink below it.
    headers: [MultiHeaders<SockaddrStorage>; 2],
    received: [(usize, Option<SocketAddr>); BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            buf: vec![0; BATCH * SLOT],
            headers: std::array::from_fn(|_| MultiHeaders::preallocate(BATCH, None)),
            received: [(0, None); BATCH],
        }
    }
}

fn family_index(local: SocketAddr) -> usize {
    usize::from(local.is_ipv6())
}

impl RecvBatch {
    /// Receives up to [`BATCH`] datagrams from `fd`, the socket bound to `local`, each placed
    /// `offset` bytes into its slot; returns how many. `WouldBlock` when there were none.
    pub fn recv(&mut self, fd: RawFd, local: SocketAddr, offset: usize) -> io::Result<usize> {
        let mut slots = self.buf.chunks_exact_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            let slot = slots.next().expect("BATCH slots");
            [IoSliceMut::new(&mut slot[offset..])]
        });
        let results = recvmmsg(
            fd,
            &mut self.headers[family_index(local)],
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        let mut count = 0;
        for (slot, message) in self.received.iter_mut().zip(results) {
            *slot = (message.bytes, message.address.and_then(socket_addr));
            count += 1;
        }
        Ok(count)
    }

    /// The `i`th datagram received: its slot (payload at the offset given to `recv`), its
    /// length and its source.
    pub fn get(&mut self, i: usize) -> (&mut [u8], usize, Option<SocketAddr>) {
        let (len, from) = self.received[i];
        (&mut self.buf[i * SLOT..(i + 1) * SLOT], len, from)
    }
}

fn socket_addr(storage: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Datagrams waiting to be sent, copied into one reused arena; [`SendBatch::flush`] sends each
/// run for the same socket with one `sendmmsg`.
pub struct SendBatch {
    arena: Vec<u8>,
    queued: Vec<(RawFd, SockaddrStorage, Range<usize>)>,
    headers: MultiHeaders<SockaddrStorage>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            arena: Vec::with_capacity(BATCH * 2048),
            queued: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }
}

impl SendBatch {
    /// Queues the concatenation of `parts` for `to` on `fd`; returns the datagrams that
    /// failed if the batch had to be flushed to make room.
    pub fn push(&mut self, fd: RawFd, to: SocketAddr, parts: &[&[u8]]) -> u64 {
        let failed = if self.queued.len() == BATCH {
            self.flush()
        } else {
            0
        };
        let start = self.arena.len();
        for part in parts {
            self.arena.extend_from_slice(part);
        }
        self.queued
            .push((fd, SockaddrStorage::from(to), start..self.arena.len()));
        failed
    }

    /// Sends everything queued; returns how many datagrams could not be sent (buffer full,
    /// unreachable, denied). Those are dropped: UDP makes no promises, and a failed send
    /// never ends an allocation.
    pub fn flush(&mut self) -> u64 {
        let mut failed = 0;
        let mut next = 0;
        while next < self.queued.len() {
            let fd = self.queued[next].0;
            let run = self.queued[next..]
                .iter()
                .take_while(|(f, ..)| *f == fd)
                .count();
            let mut sent = 0;
            while sent < run {
                let batch = &self.queued[next + sent..next + run];
                let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
                    [IoSlice::new(
                        batch
                            .get(i)
                            .map_or(&[][..], |(_, _, r)| &self.arena[r.clone()]),
                    )]
                });
                let addrs: [Option<SockaddrStorage>; BATCH] =
                    std::array::from_fn(|i| batch.get(i).map(|(_, addr, _)| *addr));
                let n = batch.len();
                match sendmmsg(
                    fd,
                    &mut self.headers,
                    &slices[..n],
                    &addrs[..n],
                    [],
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(results) => {
                        let done = results.count().max(1);
                        sent += done;
                    }
                    // The first datagram failed: count it and go on with the rest.
                    Err(Errno::EINTR) => {}
                    Err(_) => {
                        failed += 1;
                        sent += 1;
                    }
                }
            }
            next += run;
        }
        self.queued.clear();
        self.arena.clear();
        failed
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sends_and_receives_a_batch_across_destinations() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = SendBatch::default();
        for i in 0..40u8 {
            let to = if i % 2 == 0 { &a } else { &b };
            out.push(
                sender.as_raw_fd(),
                to.local_addr().unwrap(),
                &[&[i], &[i; 3]],
            );
        }
        assert_eq!(out.flush(), 0);
        let mut batch = RecvBatch::default();
        let n = batch
            .recv(a.as_raw_fd(), a.local_addr().unwrap(), 4)
            .unwrap();
        assert_eq!(n, 20);
        let (slot, len, from) = batch.get(1);
        assert_eq!((len, from), (4, Some(sender.local_addr().unwrap())));
        assert_eq!(&slot[4..8], &[2, 2, 2, 2]);
        assert_eq!(
            batch
                .recv(b.as_raw_fd(), b.local_addr().unwrap(), 0)
                .unwrap(),
            20
        );
        a.set_nonblocking(true).unwrap();
        assert_eq!(
            batch
                .recv(a.as_raw_fd(), a.local_addr().unwrap(), 0)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );
    }

    /// One batch serves sockets of both families in turn (a worker's listeners and relays):
    /// every source address comes back whole, whichever family used the slots before.
    #[test]
    fn ipv6_sources_survive_ipv4_traffic_in_the_same_slots() {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = UdpSocket::bind("[::1]:0").unwrap();
        let from_v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let from_v6 = UdpSocket::bind("[::1]:0").unwrap();
        let mut batch = RecvBatch::default();
        for round in 0..3u8 {
            for (socket, sender) in [(&v4, &from_v4), (&v6, &from_v6)] {
                let local = socket.local_addr().unwrap();
                for i in 0..3u8 {
                    sender.send_to(&[round, i], local).unwrap();
                }
                let n = batch.recv(socket.as_raw_fd(), local, 0).unwrap();
                assert_eq!(n, 3, "round {round} on {local}");
                for i in 0..n {
                    let (slot, len, from) = batch.get(i);
                    assert_eq!(&slot[..len], &[round, i as u8]);
                    assert_eq!(
                        from,
                        Some(sender.local_addr().unwrap()),
                        "slot {i} on {local}"
                    );
                }
            }
        }
    }
}
