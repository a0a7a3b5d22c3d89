//! I/O drivers: the only code that touches sockets or reads the clock.

pub mod batch;
pub mod connections;
pub mod listeners;
pub mod relays;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod worker;
pub mod xdp;

/// Reads from one connection, or `recvmmsg` batches from one UDP socket, before turning to
/// the next, so a busy socket cannot starve the rest (quinn's IO_LOOP_BOUND plays the same
/// role).
const READS_PER_TURN: usize = 4;

/// Errors of one connection that `accept` reports (it was reset or aborted before it was
/// taken), as opposed to the listener's own trouble (out of descriptors or memory).
pub fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) || e.raw_os_error() == Some(nix::libc::EPROTO)
}

/// The unit a per-source cap counts: an IPv4 address, or an IPv6 /64 (one subscriber's
/// prefix: a host picks any address in it). IPv4-mapped addresses count as IPv4.
pub fn source_of(client: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::IpAddr;
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}
