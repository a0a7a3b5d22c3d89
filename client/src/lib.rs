//! turnpike's STUN/TURN client, sans-IO: it writes requests, signs them with long-term
//! credentials, reads answers and frames relayed data, and never touches a socket or reads
//! the clock. The probe (`turnpike probe`), the integration tests, the fuzz harness and the
//! load generator all speak through it.
//!
//! Two layers:
//!
//! * The codec, for callers that drive the exchange themselves, or build what a
//!   well-behaved client would not send: [`Request`] (any request or indication; attributes
//!   in call order, then a [`Signer`]'s credential attributes and MESSAGE-INTEGRITY or
//!   MESSAGE-INTEGRITY-SHA256, then FINGERPRINT), [`Response`] (typed getters over a
//!   borrowed message), [`Incoming`] (what a datagram or stream frame is: a response, a Data
//!   indication, ChannelData), the data path ([`write_channel_data`],
//!   [`send_indication_prefix`]: written into the caller's buffers, no allocation) and the
//!   stream [`Framer`] (RFC 8656 §12.5).
//! * [`Client`], one client's transactions with one server: Binding, Allocate (address
//!   families, EVEN-PORT, RESERVATION-TOKEN, LIFETIME), Refresh, CreatePermission and
//!   ChannelBind as [`Op`]s; it answers 401 and 438 challenges itself (RFC 8489 §9.2, MD5 or
//!   negotiated SHA-256 keys), retransmits over UDP, checks signed answers, and reports how
//!   each transaction ended as an [`Event`].
//!
//! Time is an input: `now: Instant` for retransmissions, Unix seconds for minting REST
//! credentials. Transaction ids come from the caller or from an RNG the caller seeds
//! ([`Client::new`]). DNS, sockets, TLS and the choice of server are the driver's.
//!
//! The wire helpers, the long-term key, the REST credential minter and the stream framing
//! are turnpike-proto's, so client and server share one codec (`stun-types`/`turn-types`
//! underneath). Like the core, this crate has no I/O dependency and `clippy.toml` bans the
//! clock and hidden randomness in it.

#![forbid(unsafe_code)]

pub mod client;
pub mod message;
pub mod response;

pub use client::{
    Allocate, Answer, Client, Config, Error, Event, KeyChoice, Op, Output, Received, Transport,
};
pub use message::{
    channel_data, channel_data_header, channel_data_padding, send_indication,
    send_indication_prefix, write_channel_data, Credentials, Request, Signer,
};
pub use response::{Incoming, Response, OTHER_ADDRESS};
pub use stun_types::message::{IntegrityAlgorithm, Method, TransactionId};
pub use turnpike_proto::auth::{
    mint_rest_credential, rest_password, LongTermKey, PasswordAlgorithm,
};
pub use turnpike_proto::stream::{frame_len, FrameError, Framer, MAX_FRAME};
pub use turnpike_proto::wire;

#[cfg(test)]
mod tests;
