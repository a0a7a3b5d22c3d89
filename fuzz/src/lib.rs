//! Code shared by the fuzz targets and the seed generator (`examples/gen_seeds.rs`).
//!
//! * [`msg`]: STUN/TURN message builders on turnpike-client's `Request` and `Signer`, the
//!   way a client writes them (long-term credentials, MESSAGE-INTEGRITY(-SHA256),
//!   FINGERPRINT).
//! * [`server`]: the `server` target's whole harness: an `arbitrary`-decoded setup and
//!   sequence of operations driven against one sans-IO `Server` on a virtual clock, with
//!   a model of what the public API lets us observe and the invariants checked after every
//!   step. It lives here, not in the target, so `cargo test`-free tools (the seed
//!   generator) can run the same code without libFuzzer.

pub mod msg;
pub mod server;
