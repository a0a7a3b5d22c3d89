//! UDP sockets: the `SO_REUSEPORT` listener group shared by the workers, and relay sockets
//! bound in the configured port range.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Random relay ports tried before falling back to a scan of the whole range.
const RANDOM_PORT_TRIES: usize = 64;
/// How long a port reserved by EVEN-PORT's R bit is held (RFC 8656 §7.2: "approximately 30
/// seconds").
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Cap on outstanding reservations, so EVEN-PORT requests cannot hoard the port range.
const MAX_RESERVATIONS: usize = 1024;

/// Binds `count` UDP sockets on `addr` with `SO_REUSEPORT`, one per worker. Refuses an address
/// already in use: with `SO_REUSEPORT` the kernel would otherwise silently split clients between
/// turnpike and whatever holds the port. With port 0 the first socket picks the port.
pub fn bind_listener_group(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    if addr.port() != 0 {
        // A plain bind fails if anything, reuseport or not, holds the address.
        let probe = new_socket(addr, false)?;
        probe
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on udp {addr}: {e}")))?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = new_socket(bound, true)?;
        socket
            .bind(&bound.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on udp {bound}: {e}")))?;
        let socket: UdpSocket = socket.into();
        bound = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds `count` TCP listeners on `addr` with `SO_REUSEPORT`, one per worker, refusing an
/// address already in use as [`bind_listener_group`] does.
pub fn bind_tcp_listener_group(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    let new = |reuse_port: bool| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Lets a restarted server rebind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(reuse_port)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    };
    let in_use =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on tcp {addr}: {e}"));
    if addr.port() != 0 {
        new(false)?.bind(&addr.into()).map_err(in_use)?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = new(true)?;
        socket.bind(&bound.into()).map_err(in_use)?;
        socket.listen(1024)?;
        let listener: TcpListener = socket.into();
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Binds the UDP and the TCP listener groups of one `listen` address, on the same port. With
/// port 0 the UDP group picks the port, which a TCP socket (a client's ephemeral port, say)
/// may already hold: then another port is picked. A port given explicitly that is in use
/// stays an error.
pub fn bind_udp_and_tcp_groups(
    addr: SocketAddr,
    count: usize,
) -> io::Result<(Vec<UdpSocket>, Vec<TcpListener>)> {
    const ATTEMPTS: usize = 16;
    let mut attempts = 1;
    loop {
        let udp = bind_listener_group(addr, count)?;
        match bind_tcp_listener_group(udp[0].local_addr()?, count) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempts < ATTEMPTS =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Bursts of media from many clients land together; a larger buffer rides them out.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    Ok(socket)
}

/// Binds a relay socket on `ip` at a free port of `range`; with `even` the port is even and,
/// with `reserve_next`, port + 1 is bound too and returned for a later RESERVATION-TOKEN.
pub fn bind_relay(
    ip: IpAddr,
    range: &RangeInclusive<u16>,
    even: bool,
    reserve_next: bool,
) -> Option<(UdpSocket, Option<UdpSocket>)> {
    let (start, end) = (*range.start(), *range.end());
    let try_port = |port: u16| -> Option<(UdpSocket, Option<UdpSocket>)> {
        if even && port % 2 != 0 {
            return None;
        }
        let socket = bind_one(SocketAddr::new(ip, port))?;
        if reserve_next {
            let next = port.checked_add(1).filter(|p| *p <= end)?;
            let reserved = bind_one(SocketAddr::new(ip, next))?;
            return Some((socket, Some(reserved)));
        }
        Some((socket, None))
    };
    for _ in 0..RANDOM_PORT_TRIES {
        let port = rand::random_range(start..=end);
        if let Some(found) = try_port(port) {
            return Some(found);
        }
    }
    // The range is nearly full: walk all of it once from a random point.
    let span = u32::from(end - start) + 1;
    let offset = rand::random_range(0..span);
    (0..span)
        .map(|i| start + ((offset + i) % span) as u16)
        .find_map(try_port)
}

fn bind_one(addr: SocketAddr) -> Option<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).ok()?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).ok()?;
    }
    socket.set_nonblocking(true).ok()?;
    socket.bind(&addr.into()).ok()?;
    Some(socket.into())
}

/// Sockets held for RESERVATION-TOKENs. Shared by all workers (a client's second Allocate may
/// land on another worker) and touched only when allocations are created.
#[derive(Debug, Default)]
pub struct Reservations {
    held: Mutex<HashMap<u64, (UdpSocket, Instant)>>,
}

impl Reservations {
    /// Holds `socket` and returns its token, or `None` when too many are held.
    pub fn hold(&self, socket: UdpSocket, now: Instant) -> Option<u64> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, (_, expires)| *expires > now);
        if held.len() >= MAX_RESERVATIONS {
            return None;
        }
        let token = rand::random::<u64>();
        held.insert(token, (socket, now + RESERVATION_LIFETIME));
        Some(token)
    }

    pub fn take(&self, token: u64, now: Instant) -> Option<UdpSocket> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, (_, expires)| *expires > now);
        held.remove(&token).map(|(socket, _)| socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_group_shares_one_port_and_refuses_a_busy_one() {
        let group = bind_listener_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|s| s.local_addr().unwrap().port() == port));
        let busy = bind_listener_group(group[0].local_addr().unwrap(), 1);
        assert!(busy.is_err());
    }

    #[test]
    fn relay_even_port_with_reservation() {
        let (socket, reserved) =
            bind_relay("127.0.0.1".parse().unwrap(), &(40000..=40999), true, true).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(port % 2, 0);
        assert_eq!(reserved.unwrap().local_addr().unwrap().port(), port + 1);
    }

    #[test]
    fn relay_range_exhaustion_returns_none() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = bind_relay(ip, &(0..=0), false, false);
        // Port 0 asks the kernel for any port; use a one-port range we hold instead.
        drop(first);
        let held = bind_one(SocketAddr::new(ip, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(bind_relay(ip, &(port..=port), false, false).is_none());
    }

    #[test]
    fn reservations_expire() {
        let r = Reservations::default();
        let now = Instant::now();
        let socket = bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
        let token = r.hold(socket, now).unwrap();
        assert!(r.take(token, now + RESERVATION_LIFETIME).is_none());
        let socket = bind_one("127.0.0.1:0".parse().unwrap()).unwrap();
        let token = r.hold(socket, now).unwrap();
        assert!(r.take(token, now + Duration::from_secs(1)).is_some());
        assert!(r.take(token, now + Duration::from_secs(1)).is_none());
    }
}
