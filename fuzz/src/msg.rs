//! Message builders: requests and indications as a TURN client writes them, on
//! turnpike-client's `Request` and `Signer` (the probe and the integration tests write theirs
//! with the same code). Transaction ids are counted, not drawn at random, so an input builds
//! the same bytes on every run.

use std::cell::Cell;

use stun_types::message::{IntegrityAlgorithm, Method, TransactionId};
use turnpike_client::{PasswordAlgorithm, Signer};

pub use turnpike_client::Request;

/// Long-term credentials and the NONCE to sign a request with.
#[derive(Debug, Clone)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: String,
    /// MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY, keyed with SHA-256 of the
    /// credentials and without PASSWORD-ALGORITHM: what `stun-types` writes, and a key the
    /// server (expecting MD5's, RFC 8489 §9.2.2) never accepts.
    pub sha256: bool,
}

impl Auth {
    fn signer(&self) -> Signer {
        let signer = Signer::new(&self.username, &self.password, &self.realm, &self.nonce);
        if self.sha256 {
            signer
                .key_algorithm(PasswordAlgorithm::Sha256)
                .integrity(IntegrityAlgorithm::Sha256)
        } else {
            signer
        }
    }
}

/// How a message ends.
#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    pub fingerprint: bool,
}

impl Default for Trailer {
    fn default() -> Self {
        Self { fingerprint: true }
    }
}

thread_local!(static NEXT_TRANSACTION: Cell<u128> = const { Cell::new(1) });

/// Restarts the transaction-id count (each harness does, so an input's bytes do not depend
/// on what ran before it).
pub fn reset_transaction_ids() {
    NEXT_TRANSACTION.with(|next| next.set(1));
}

fn next_transaction() -> TransactionId {
    NEXT_TRANSACTION.with(|next| TransactionId::from(next.replace(next.get() + 1)))
}

/// A request of `method`: `attrs` adds the method's attributes (whatever the fuzzer chose:
/// `Request` leaves out what the codec refuses), then USERNAME, REALM, NONCE and
/// MESSAGE-INTEGRITY(-SHA256) when `auth` is given, then FINGERPRINT.
pub fn request(
    method: Method,
    auth: Option<&Auth>,
    trailer: Trailer,
    attrs: impl FnOnce(&mut Request),
) -> Vec<u8> {
    let mut request = Request::new(method, next_transaction());
    attrs(&mut request);
    let signer = auth.map(Auth::signer);
    request.finish_with(signer.as_ref(), trailer.fingerprint)
}

/// An indication of `method` (Send), never signed.
pub fn indication(method: Method, trailer: Trailer, attrs: impl FnOnce(&mut Request)) -> Vec<u8> {
    let mut indication = Request::indication(method, next_transaction());
    attrs(&mut indication);
    indication.finish_with(None, trailer.fingerprint)
}

/// A ChannelData message: `declared` is the length written in the header (normally
/// `payload.len()`), `pad` extra bytes follow the payload (RFC 8656 §12.5 padding over TCP).
pub fn channel_data(channel: u16, declared: u16, payload: &[u8], pad: usize) -> Vec<u8> {
    let mut out = turnpike_client::channel_data_header(channel, declared).to_vec();
    out.extend_from_slice(payload);
    out.resize(out.len() + pad, 0);
    out
}
