//! The relay sockets of the worker's allocations (moved from worker.rs).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Token};

use super::batch::BATCH;
use super::connections::{flush, queue};
use super::stream::channel_padding;
use super::udp;
use super::worker::{Worker, RELAY_BASE};
use crate::proto::wire::{AddressFamily, CHANNEL_HEADER_LEN};
use crate::proto::{Error, PeerAction, PendingAllocation, Transport};

pub(super) struct Relay {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Worker {
    /// Handles one `recvmmsg` batch from a relay socket: peers' data towards the client.
    pub(super) fn recv_from_peer(&mut self, slot: usize) -> io::Result<()> {
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

    pub(super) fn relay_fd(&self, relay: SocketAddr) -> Option<RawFd> {
        let slot = *self.relay_slots.get(&relay)?;
        self.relays[slot].as_ref().map(|r| r.socket.as_raw_fd())
    }
    /// One registered relay socket per requested family (or the reserved one), and the
    /// RESERVATION-TOKEN of a port held beside the first; the error to answer when that fails.
    pub(super) fn bind_relays(
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

    pub(super) fn close_relay(&mut self, addr: SocketAddr) {
        self.flush_sends();
        if let Some(slot) = self.relay_slots.remove(&addr) {
            if let Some(mut relay) = self.relays[slot].take() {
                let _ = self.poll.registry().deregister(&mut relay.socket);
            }
            self.free_relays.push(slot);
        }
    }

    pub(super) fn register_relay(&mut self, socket: std::net::UdpSocket) -> io::Result<SocketAddr> {
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
}
