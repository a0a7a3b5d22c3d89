//! Writing what a client sends: requests and indications ([`Request`]), signed with long-term
//! credentials ([`Signer`], RFC 8489 §9.2), and the data-path framing (ChannelData, Send
//! indications) written into buffers the caller owns.
//!
//! [`Request`] writes what it is told, in that order: the tests and the fuzz harness build
//! malformed and unusual requests with it too, so it validates nothing beyond what the
//! codec refuses. It never panics: attributes the codec would panic on (integrity and
//! FINGERPRINT, which only [`Request::finish`] writes; a DATA value over 65,535 bytes) are
//! left out.

use std::fmt;
use std::net::SocketAddr;

use stun_types::attribute::{AttributeStaticType, AttributeWrite, RawAttribute};
use stun_types::message::{
    IntegrityAlgorithm, Message, MessageClass, MessageType, MessageWrite, MessageWriteExt,
    MessageWriteVec, Method, TransactionId,
};
use turnpike_proto::auth::{mint_rest_credential, LongTermKey, PasswordAlgorithm};
use turnpike_proto::wire::{
    self, AddressFamily, ChannelNumber, Data, DontFragment, EvenPort, Fingerprint, Lifetime,
    MessageIntegrity, MessageIntegritySha256, Nonce, Realm, RequestedAddressFamily,
    RequestedTransport, ReservationToken, Software, Username, XorPeerAddress,
};
use turnpike_proto::wire::{AdditionalAddressFamily, CHANNEL_HEADER_LEN, HEADER_LEN};

/// A request or indication being written. Attributes go in in call order; [`finish`]
/// appends the [`Signer`]'s USERNAME, REALM, NONCE (and PASSWORD-ALGORITHMS/-ALGORITHM),
/// then MESSAGE-INTEGRITY(-SHA256), then FINGERPRINT.
///
/// [`finish`]: Request::finish
pub struct Request {
    msg: MessageWriteVec,
}

impl Request {
    /// A request of `method`; the caller picks the transaction id (RFC 8489 §6 wants it
    /// random: [`crate::Client`] draws it from its seeded RNG).
    pub fn new(method: Method, transaction: TransactionId) -> Self {
        Self::of_class(MessageClass::Request, method, transaction)
    }

    /// An indication of `method` (Send); indications are never signed (RFC 8656 §11.1).
    pub fn indication(method: Method, transaction: TransactionId) -> Self {
        Self::of_class(MessageClass::Indication, method, transaction)
    }

    fn of_class(class: MessageClass, method: Method, transaction: TransactionId) -> Self {
        let kind = MessageType::from_class_method(class, method);
        Self {
            msg: Message::builder(kind, transaction, MessageWriteVec::with_capacity(256)),
        }
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.msg.transaction_id()
    }

    pub fn method(&self) -> Method {
        self.msg.method()
    }

    /// Adds `attribute` as it is. Integrity and FINGERPRINT are skipped (only `finish`
    /// writes them, so they come last); so is anything the codec refuses.
    pub fn add(&mut self, attribute: &dyn AttributeWrite) -> &mut Self {
        let t = attribute.get_type();
        if t != MessageIntegrity::TYPE
            && t != MessageIntegritySha256::TYPE
            && t != Fingerprint::TYPE
        {
            let _ = self.msg.add_attribute(attribute);
        }
        self
    }

    /// An attribute from its type and value, unchecked: for attributes the codec has no type
    /// for, and for values a well-behaved client would not send.
    pub fn raw(&mut self, atype: u16, value: &[u8]) -> &mut Self {
        self.add(&RawAttribute::new(atype.into(), value))
    }

    /// Lets `attrs` add attributes with the `stun-types` writer underneath, given this
    /// message's transaction id (which XOR-encoded addresses need).
    pub fn with_writer(
        &mut self,
        attrs: impl FnOnce(&mut MessageWriteVec, TransactionId),
    ) -> &mut Self {
        let transaction = self.transaction_id();
        attrs(&mut self.msg, transaction);
        self
    }

    /// REQUESTED-TRANSPORT (RFC 8656 §18.7): the protocol number, 17 for UDP.
    pub fn requested_transport(&mut self, protocol: u8) -> &mut Self {
        self.add(&RequestedTransport::new(protocol))
    }

    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.8, RFC 6156).
    pub fn requested_family(&mut self, family: AddressFamily) -> &mut Self {
        self.add(&RequestedAddressFamily::new(family))
    }

    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11). Written raw: the codec refuses IPv4,
    /// which a client may still send (the server answers 400).
    pub fn additional_family(&mut self, family: AddressFamily) -> &mut Self {
        let byte = if family == AddressFamily::IPV4 { 1 } else { 2 };
        self.raw(AdditionalAddressFamily::TYPE.value(), &[byte, 0, 0, 0])
    }

    /// EVEN-PORT (RFC 8656 §18.6), asking the server to reserve the next port if `reserve`.
    pub fn even_port(&mut self, reserve: bool) -> &mut Self {
        self.add(&EvenPort::new(reserve))
    }

    /// RESERVATION-TOKEN (RFC 8656 §18.9): take the port an earlier EVEN-PORT reserved.
    pub fn reservation_token(&mut self, token: u64) -> &mut Self {
        self.add(&ReservationToken::new(token))
    }

    /// LIFETIME in seconds (RFC 8656 §18.2); 0 in a Refresh deletes the allocation.
    pub fn lifetime(&mut self, seconds: u32) -> &mut Self {
        self.add(&Lifetime::new(seconds))
    }

    /// DONT-FRAGMENT (RFC 8656 §18.10).
    pub fn dont_fragment(&mut self) -> &mut Self {
        self.add(&DontFragment::new())
    }

    /// XOR-PEER-ADDRESS (RFC 8656 §18.3), XORed with this message's transaction id.
    pub fn peer(&mut self, peer: SocketAddr) -> &mut Self {
        let transaction = self.transaction_id();
        self.add(&XorPeerAddress::new(peer, transaction))
    }

    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub fn channel(&mut self, number: u16) -> &mut Self {
        self.add(&ChannelNumber::new(number))
    }

    /// DATA (RFC 8656 §18.4); a payload too long for any STUN message is left out.
    pub fn data(&mut self, payload: &[u8]) -> &mut Self {
        if payload.len() <= usize::from(u16::MAX) {
            self.add(&Data::new(payload));
        }
        self
    }

    /// SOFTWARE (RFC 8489 §14.14); left out if longer than the 763 bytes it may have.
    pub fn software(&mut self, software: &str) -> &mut Self {
        if let Ok(software) = Software::new(software) {
            self.add(&software);
        }
        self
    }

    /// Signs the message if `signer` is given, adds FINGERPRINT and returns the bytes.
    pub fn finish(self, signer: Option<&Signer>) -> Vec<u8> {
        self.finish_with(signer, true)
    }

    /// [`finish`](Request::finish) with FINGERPRINT only if `fingerprint` (RFC 8489 §14.7
    /// leaves it to the usage; TURN clients send it).
    pub fn finish_with(mut self, signer: Option<&Signer>, fingerprint: bool) -> Vec<u8> {
        if let Some(signer) = signer {
            signer.sign(&mut self.msg);
        }
        if fingerprint {
            let _ = self.msg.add_fingerprint();
        }
        self.msg.finish()
    }
}

/// A long-term username and password (RFC 8489 §9.2): a static user's, or a TURN REST
/// credential (draft-uberti-behave-turn-rest-00) minted from the shared secret. `Debug`
/// does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A REST credential for `user`, valid for `ttl_secs` from `unix_now`: username
    /// `"<expiry><separator><user>"` (the expiry alone if `user` is empty), password
    /// `base64(HMAC-SHA1(secret, username))`. The server's own minter (`turnpike-proto`).
    pub fn rest(secret: &str, user: &str, separator: char, unix_now: u64, ttl_secs: u64) -> Self {
        let (username, password) =
            mint_rest_credential(secret, user, separator, unix_now, ttl_secs);
        Self { username, password }
    }

    /// A signer for `realm` and `nonce` with the MD5 key and MESSAGE-INTEGRITY.
    pub fn signer(&self, realm: &str, nonce: &str) -> Signer {
        Signer::new(&self.username, &self.password, realm, nonce)
    }
}

/// Signs requests with long-term credentials (RFC 8489 §9.2.4): USERNAME, REALM and NONCE,
/// PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM once an algorithm was negotiated, then
/// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 keyed with the long-term key. Every part can
/// be chosen on its own, so tests and the fuzzer can also sign the ways clients get it wrong.
/// `Debug` shows neither password nor key.
#[derive(Clone)]
pub struct Signer {
    username: String,
    password: String,
    realm: String,
    nonce: String,
    key_algorithm: PasswordAlgorithm,
    key: LongTermKey,
    /// The challenge's PASSWORD-ALGORITHMS value, echoed beside PASSWORD-ALGORITHM (the
    /// bid-down protection of §9.2.1); `None`: neither attribute is sent.
    offered: Option<Vec<u8>>,
    integrity: IntegrityAlgorithm,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("key_algorithm", &self.key_algorithm)
            .field("negotiated", &self.offered.is_some())
            .field("integrity", &self.integrity)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The MD5 key and MESSAGE-INTEGRITY, no PASSWORD-ALGORITHM: what RFC 5389 clients send
    /// and every TURN server accepts.
    pub fn new(username: &str, password: &str, realm: &str, nonce: &str) -> Self {
        Self {
            username: username.to_owned(),
            password: password.to_owned(),
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            key_algorithm: PasswordAlgorithm::Md5,
            key: LongTermKey::new(PasswordAlgorithm::Md5, username, realm, password),
            offered: None,
            integrity: IntegrityAlgorithm::Sha1,
        }
    }

    /// Negotiates `algorithm` (RFC 8489 §9.2.4): the key is derived with it, the request
    /// carries the challenge's PASSWORD-ALGORITHMS value `offered` unchanged and
    /// PASSWORD-ALGORITHM, and MESSAGE-INTEGRITY-SHA256 protects it.
    pub fn negotiate(mut self, algorithm: PasswordAlgorithm, offered: &[u8]) -> Self {
        self.offered = Some(offered.to_vec());
        self.integrity = IntegrityAlgorithm::Sha256;
        self.key_algorithm(algorithm)
    }

    /// Derives the key with `algorithm` without saying so on the wire: what a client does
    /// that keys MESSAGE-INTEGRITY-SHA256 with SHA-256 but sends no PASSWORD-ALGORITHM (the
    /// server then expects MD5's key, §9.2.2).
    pub fn key_algorithm(mut self, algorithm: PasswordAlgorithm) -> Self {
        self.key_algorithm = algorithm;
        self.key = LongTermKey::new(algorithm, &self.username, &self.realm, &self.password);
        self
    }

    /// Which integrity attribute to write.
    pub fn integrity(mut self, integrity: IntegrityAlgorithm) -> Self {
        self.integrity = integrity;
        self
    }

    /// A fresh nonce (a 438 Stale Nonce answer carries one, §9.2.5).
    pub fn set_nonce(&mut self, nonce: &str) {
        nonce.clone_into(&mut self.nonce);
    }

    /// Another realm: the key is derived again.
    pub fn set_realm(&mut self, realm: &str) {
        if realm != self.realm {
            realm.clone_into(&mut self.realm);
            self.key = LongTermKey::new(
                self.key_algorithm,
                &self.username,
                &self.realm,
                &self.password,
            );
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The long-term key, which also checks the server's signed answers.
    pub fn key(&self) -> &LongTermKey {
        &self.key
    }

    /// Whether PASSWORD-ALGORITHM was negotiated.
    pub fn is_negotiated(&self) -> bool {
        self.offered.is_some()
    }

    /// Adds the credential attributes and the integrity attribute. Values the codec refuses
    /// (a username over 763 bytes, say) are left out: the server answers what it gets.
    fn sign(&self, msg: &mut MessageWriteVec) {
        if let Ok(username) = Username::new(&self.username) {
            let _ = msg.add_attribute(&username);
        }
        if let Ok(realm) = Realm::new(&self.realm) {
            let _ = msg.add_attribute(&realm);
        }
        if let Ok(nonce) = Nonce::new(&self.nonce) {
            let _ = msg.add_attribute(&nonce);
        }
        if let Some(offered) = &self.offered {
            let _ = msg.add_attribute(&RawAttribute::new(wire::PASSWORD_ALGORITHMS, offered));
            let [chosen] = wire::password_algorithms_value([self.key_algorithm.number()]);
            let _ = msg.add_attribute(&RawAttribute::new(wire::PASSWORD_ALGORITHM, &chosen));
        }
        wire::add_message_integrity(msg, self.key.as_ref(), self.integrity);
    }
}

/// A ChannelData header (RFC 8656 §12.4) for `len` payload bytes, as declared: the caller
/// may declare a length other than what follows (the tests and the fuzzer do).
pub fn channel_data_header(channel: u16, len: u16) -> [u8; CHANNEL_HEADER_LEN] {
    let [a, b] = channel.to_be_bytes();
    let [c, d] = len.to_be_bytes();
    [a, b, c, d]
}

/// The zero bytes after a ChannelData payload of `len` bytes: over TCP and TLS the frame is
/// padded to a multiple of four (RFC 8656 §12.5); over UDP nothing.
pub fn channel_data_padding(len: usize, stream: bool) -> usize {
    if stream {
        len.next_multiple_of(4) - len
    } else {
        0
    }
}

/// Writes a ChannelData message carrying `payload` into `out` (header, payload, and over a
/// stream the padding) and returns its length; `None` if the payload cannot be carried
/// (over 65,535 bytes) or `out` is too small. No allocation: the load generator's path.
pub fn write_channel_data(
    channel: u16,
    payload: &[u8],
    stream: bool,
    out: &mut [u8],
) -> Option<usize> {
    let len = u16::try_from(payload.len()).ok()?;
    let end = CHANNEL_HEADER_LEN + payload.len();
    let total = end + channel_data_padding(payload.len(), stream);
    let frame = out.get_mut(..total)?;
    frame[..CHANNEL_HEADER_LEN].copy_from_slice(&channel_data_header(channel, len));
    frame[CHANNEL_HEADER_LEN..end].copy_from_slice(payload);
    frame[end..].fill(0);
    Some(total)
}

/// A ChannelData message carrying `payload`, padded if `stream`; the length field is
/// truncated to 16 bits if the payload is longer (which a test may want to send).
pub fn channel_data(channel: u16, payload: &[u8], stream: bool) -> Vec<u8> {
    let mut frame = Vec::with_capacity(CHANNEL_HEADER_LEN + payload.len() + 3);
    frame.extend_from_slice(&channel_data_header(channel, payload.len() as u16));
    frame.extend_from_slice(payload);
    frame.resize(frame.len() + channel_data_padding(payload.len(), stream), 0);
    frame
}

/// A Send indication (RFC 8656 §11.1) of `payload` to `peer`, with FINGERPRINT.
pub fn send_indication(transaction: TransactionId, peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut send = Request::indication(wire::SEND, transaction);
    send.peer(peer).data(payload);
    send.finish(None)
}

/// What goes in front of the payload of a Send indication to `peer` carrying `len` bytes:
/// the header, XOR-PEER-ADDRESS and DATA's type and length; the payload and
/// `channel_data_padding(len, true)` zero bytes follow (attributes are always padded). No
/// FINGERPRINT (optional on indications), so the same prefix serves every packet: a sender
/// may rewrite the transaction id (bytes 8..20) per packet as long as `peer` is IPv4, whose
/// XOR does not involve it. Built once per flow; the per-packet work is a copy.
pub fn send_indication_prefix(transaction: TransactionId, peer: SocketAddr, len: u16) -> Vec<u8> {
    let mut send = Request::indication(wire::SEND, transaction);
    send.peer(peer);
    let mut prefix = send.finish_with(None, false);
    prefix.extend_from_slice(&Data::TYPE.value().to_be_bytes());
    prefix.extend_from_slice(&len.to_be_bytes());
    let body = prefix.len() - HEADER_LEN + usize::from(len).next_multiple_of(4);
    // A DATA value that does not fit the 16-bit message length cannot be sent at all.
    let body = u16::try_from(body).unwrap_or(u16::MAX);
    prefix[2..4].copy_from_slice(&body.to_be_bytes());
    prefix
}
