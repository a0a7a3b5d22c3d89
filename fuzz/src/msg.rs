//! Message builders: requests and indications as a TURN client writes them.

use stun_types::attribute::AttributeStaticType;
use stun_types::attribute::AttributeWrite;
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageIntegrityCredentials, MessageWrite,
    MessageWriteExt, MessageWriteVec, Method, TransactionId,
};
use turnpike::proto::wire::{
    Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, Username,
};

/// Long-term credentials and the NONCE to sign a request with.
#[derive(Debug, Clone)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: String,
    /// MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY.
    pub sha256: bool,
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

/// Adds an attribute, ignoring the error a fuzz-chosen value may cause (too long, ...).
/// MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are skipped: the builder panics on them (they
/// have their own `add_*` calls), and that is a client-side API rule, not a server bug.
pub fn add(msg: &mut MessageWriteVec, attr: &dyn AttributeWrite) {
    let t = attr.get_type();
    if t == MessageIntegrity::TYPE || t == MessageIntegritySha256::TYPE || t == Fingerprint::TYPE {
        return;
    }
    let _ = msg.add_attribute(attr);
}

/// A request of `method`: `attrs` adds the method's attributes, then USERNAME, REALM, NONCE
/// and MESSAGE-INTEGRITY when `auth` is given, then FINGERPRINT.
pub fn request(
    method: Method,
    auth: Option<&Auth>,
    trailer: Trailer,
    attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let msg = Message::builder_request(method, MessageWriteVec::new());
    finish(msg, auth, trailer, attrs)
}

/// An indication of `method` (Send), never signed.
pub fn indication(
    method: Method,
    trailer: Trailer,
    attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let msg = Message::builder_indication(method, MessageWriteVec::new());
    finish(msg, None, trailer, attrs)
}

fn finish(
    mut msg: MessageWriteVec,
    auth: Option<&Auth>,
    trailer: Trailer,
    attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
) -> Vec<u8> {
    let transaction = msg.transaction_id();
    attrs(&mut msg, transaction);
    if let Some(auth) = auth {
        if let Ok(username) = Username::new(&auth.username) {
            add(&mut msg, &username);
        }
        if let Ok(realm) = Realm::new(&auth.realm) {
            add(&mut msg, &realm);
        }
        if let Ok(nonce) = Nonce::new(&auth.nonce) {
            add(&mut msg, &nonce);
        }
        let credentials: MessageIntegrityCredentials = LongTermKeyCredentials::new(
            auth.username.clone(),
            auth.password.clone(),
            auth.realm.clone(),
        )
        .into();
        let algorithm = if auth.sha256 {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        let _ = msg.add_message_integrity(&credentials, algorithm);
    }
    if trailer.fingerprint {
        let _ = msg.add_fingerprint();
    }
    msg.finish()
}

/// A ChannelData message: `declared` is the length written in the header (normally
/// `payload.len()`), `pad` extra bytes follow the payload (RFC 8656 §12.5 padding over TCP).
pub fn channel_data(channel: u16, declared: u16, payload: &[u8], pad: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len() + pad);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + pad, 0);
    out
}
