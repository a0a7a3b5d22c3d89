//! I/O drivers: the only code that touches sockets or reads the clock.

pub mod batch;
mod connections;
mod listeners;
mod relays;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod worker;

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
