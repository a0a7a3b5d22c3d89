//! The relay sockets of a worker's allocations: bound when an Allocate succeeds (or taken
//! from an EVEN-PORT reservation), registered as `Token(TOKEN_BASE + slot)`, closed when the
//! core releases them. Found by slot when one is readable and by address when a client's data
//! leaves through it. What arrives on them is the worker's business.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};

use super::udp::{self, Reservations};
use super::worker::RelaySettings;
use crate::proto::wire::AddressFamily;
use crate::proto::{Error, PendingAllocation};

/// Relay slot `i` is `Token(TOKEN_BASE + i)`; tokens below are listeners.
pub(super) const TOKEN_BASE: usize = 1 << 20;

struct Relay {
    socket: UdpSocket,
    addr: SocketAddr,
}

#[derive(Default)]
pub(super) struct Relays {
    slots: Vec<Option<Relay>>,
    free: Vec<usize>,
    by_addr: HashMap<SocketAddr, usize>,
}

impl Relays {
    /// The descriptor and address of the relay socket in `slot`.
    #[inline]
    pub(super) fn get(&self, slot: usize) -> Option<(RawFd, SocketAddr)> {
        let relay = self.slots.get(slot)?.as_ref()?;
        Some((relay.socket.as_raw_fd(), relay.addr))
    }

    /// The descriptor of the relay socket bound to `addr`.
    #[inline]
    pub(super) fn fd(&self, addr: SocketAddr) -> Option<RawFd> {
        let slot = *self.by_addr.get(&addr)?;
        self.slots[slot].as_ref().map(|r| r.socket.as_raw_fd())
    }

    /// One registered relay socket per requested family (or the reserved one), and the
    /// RESERVATION-TOKEN of a port held beside the first; the error to answer when that fails.
    pub(super) fn bind(
        &mut self,
        registry: &Registry,
        now: Instant,
        pending: &PendingAllocation,
        settings: &RelaySettings,
        reservations: &Reservations,
    ) -> Result<(Vec<SocketAddr>, Option<u64>), Error> {
        let mut sockets = Vec::new();
        let mut token = None;
        if let Some(reserved) = pending.reservation_token {
            let socket = reservations.take(reserved, now);
            sockets.push(socket.ok_or(Error::InsufficientCapacity)?);
        } else {
            for (i, family) in pending.families.iter().enumerate() {
                let wanted_v4 = *family == AddressFamily::IPV4;
                let ip = *settings
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == wanted_v4)
                    .ok_or(Error::AddressFamilyNotSupported)?;
                // EVEN-PORT applies to the first relayed address (RFC 8656 §7.2).
                let even_port = pending.even_port.filter(|_| i == 0);
                let (socket, reserved) = udp::bind_relay(
                    ip,
                    &settings.ports,
                    even_port.is_some(),
                    even_port == Some(true),
                )
                .ok_or(Error::InsufficientCapacity)?;
                if let Some(reserved) = reserved {
                    let held = reservations.hold(reserved, now);
                    token = Some(held.ok_or(Error::InsufficientCapacity)?);
                }
                sockets.push(socket);
            }
        }
        let mut relays = Vec::with_capacity(sockets.len());
        for socket in sockets {
            match self.register(registry, socket) {
                Ok(addr) => relays.push(addr),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register relay socket");
                    // Sockets this call registered: no datagram can be queued towards them.
                    for addr in relays {
                        self.close(registry, addr);
                    }
                    return Err(Error::InsufficientCapacity);
                }
            }
        }
        Ok((relays, token))
    }

    /// Closes the relay socket bound to `addr`. Datagrams queued towards it must be sent
    /// first: its descriptor could be reused under them.
    pub(super) fn close(&mut self, registry: &Registry, addr: SocketAddr) {
        if let Some(slot) = self.by_addr.remove(&addr) {
            if let Some(mut relay) = self.slots[slot].take() {
                let _ = registry.deregister(&mut relay.socket);
            }
            self.free.push(slot);
        }
    }

    fn register(
        &mut self,
        registry: &Registry,
        socket: std::net::UdpSocket,
    ) -> io::Result<SocketAddr> {
        let addr = socket.local_addr()?;
        let mut socket = UdpSocket::from_std(socket);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(e) = registry.register(&mut socket, Token(TOKEN_BASE + slot), Interest::READABLE)
        {
            self.free.push(slot);
            return Err(e);
        }
        self.slots[slot] = Some(Relay { socket, addr });
        self.by_addr.insert(addr, slot);
        Ok(addr)
    }
}
