//! The protocol core: STUN Binding, TURN allocations, authentication and peer filtering.
//!
//! This module contains no networking code and never reads the clock. Callers pass each
//! datagram with its addresses and the current time (`Instant` for lifetimes, Unix seconds for
//! credential expiry and nonces), and get back what to send. See [`server::Server`] for the
//! input/output contract. Everything here is unit-testable without sockets.

pub mod allocation;
pub mod auth;
pub mod error;
pub mod peer_filter;
pub mod server;
pub mod sessions;
pub mod stats;
pub mod wire;

pub use allocation::{RelayAddress, Usage};
pub use error::Error;
pub use server::{
    ClientAction, EndReason, Event, FiveTuple, Gauges, PeerAction, PendingAllocation, Quotas,
    Server, ServerConfig, Transport,
};
pub use sessions::{Revocations, SessionFilter, SessionInfo};

#[cfg(test)]
mod tests;
