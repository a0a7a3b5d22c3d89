//! STUN and ChannelData over TCP and TLS: the framing (RFC 8656 §12.5) is pure, so it lives
//! in the protocol core, where the client crate shares it; the workers use it from here.

pub use crate::proto::stream::*;
