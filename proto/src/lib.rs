//! The protocol core: STUN Binding, TURN allocations, authentication, peer filtering and
//! the framing of STUN and ChannelData on TCP/TLS streams.
//!
//! This crate contains no networking code and never reads the clock. Callers pass each
//! datagram with its addresses and the current time (`Instant` for lifetimes, Unix seconds for
//! credential expiry and nonces), and get back what to send. See [`server::Server`] for the
//! input/output contract. Everything here is unit-testable without sockets.
//!
//! It is its own crate so the compiler keeps it that way: it depends on no I/O crate (mio,
//! tokio, socket2, nix), and `clippy.toml` bans the clock and thread-local randomness.
//! The daemon re-exports it as `turnpike::proto`.

#![forbid(unsafe_code)]

pub mod allocation;
pub mod auth;
pub mod error;
pub mod live_relays;
pub mod peer_filter;
pub mod server;
pub mod sessions;
pub mod stats;
pub mod stream;
pub mod wire;

pub use allocation::{RelayAddress, Usage};
pub use error::Error;
pub use live_relays::LiveRelays;
pub use server::{
    ClientAction, EndReason, Event, FiveTuple, Gauges, PeerAction, PendingAllocation, Quotas,
    ReloadCut, Server, ServerConfig, Transport,
};
pub use sessions::{Revocations, SessionFilter, SessionInfo};

#[cfg(test)]
mod tests;
