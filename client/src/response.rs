//! Reading what a server sends: what a datagram or stream frame is ([`Incoming`]: a STUN
//! response, a Data indication, ChannelData), and a response's attributes ([`Response`]).
//! Everything borrows the caller's buffer; nothing here allocates except the getters that
//! return text or lists.

use std::net::SocketAddr;

use stun_types::attribute::{AttributeStaticType, AttributeType, MappedSocketAddr};
use stun_types::message::{MessageClass, Method, StunParseError, TransactionId};
use turnpike_proto::wire::{
    self, AddressErrorCode, AlternateServer, Data, ErrorCode, Lifetime, Message, Nonce, Realm,
    ReservationToken, XorMappedAddress, XorPeerAddress, XorRelayedAddress,
};

/// OTHER-ADDRESS (RFC 5780 §7.4): a second server address for NAT behaviour tests.
pub const OTHER_ADDRESS: AttributeType = AttributeType::new(0x802C);

/// What a datagram or stream frame from the server is (RFC 8656 §12: the first byte tells
/// STUN from ChannelData).
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A STUN success or error response.
    Response(Response<'a>),
    /// A Data indication (RFC 8656 §11.4): `payload` from `peer`.
    Data { peer: SocketAddr, payload: &'a [u8] },
    /// ChannelData on `channel` (RFC 8656 §12.4); any stream padding is not in `payload`.
    ChannelData { channel: u16, payload: &'a [u8] },
    /// Requests, other indications, Data indications without their attributes, and
    /// anything that does not parse.
    Other,
}

impl<'a> Incoming<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        match wire::classify(data) {
            wire::Kind::ChannelData => match wire::channel_data_header(data) {
                Some((channel, len)) => Incoming::ChannelData {
                    channel,
                    payload: &data[wire::CHANNEL_HEADER_LEN..wire::CHANNEL_HEADER_LEN + len],
                },
                None => Incoming::Other,
            },
            wire::Kind::Stun => match Response::parse(data) {
                Ok(msg) if msg.is_response() => Incoming::Response(msg),
                Ok(msg)
                    if msg.msg.has_method(wire::DATA)
                        && msg.class() == MessageClass::Indication =>
                {
                    msg.data_indication()
                        .map_or(Incoming::Other, |(peer, payload)| Incoming::Data {
                            peer,
                            payload,
                        })
                }
                _ => Incoming::Other,
            },
            wire::Kind::Other => Incoming::Other,
        }
    }
}

/// A STUN message from the server, read in place. Only the first occurrence of an attribute
/// counts, as the server reads requests (RFC 8489 §14), except where an attribute may repeat
/// (two XOR-RELAYED-ADDRESS for a dual allocation, RFC 8656 §7.3).
#[derive(Debug)]
pub struct Response<'a> {
    msg: Message<'a>,
    /// The same bytes, for values handed out with the buffer's lifetime.
    data: &'a [u8],
}

impl<'a> Response<'a> {
    /// Parses any STUN message (its class is the caller's to check); FINGERPRINT, if there,
    /// must match.
    pub fn parse(data: &'a [u8]) -> Result<Self, StunParseError> {
        Message::from_bytes(data).map(|msg| Self { msg, data })
    }

    /// The message, for what the getters here do not read.
    pub fn message(&self) -> &Message<'a> {
        &self.msg
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.msg.transaction_id()
    }

    pub fn method(&self) -> Method {
        self.msg.method()
    }

    pub fn class(&self) -> MessageClass {
        self.msg.class()
    }

    pub fn is_response(&self) -> bool {
        self.msg.is_response()
    }

    pub fn is_success(&self) -> bool {
        self.msg.has_class(MessageClass::Success)
    }

    pub fn is_error(&self) -> bool {
        self.msg.has_class(MessageClass::Error)
    }

    /// The ERROR-CODE of an error response: `None` for other classes, `Some(Err)` for an
    /// error response without a usable one.
    pub fn error(&self) -> Option<Result<ErrorCode, StunParseError>> {
        self.is_error().then(|| self.msg.attribute::<ErrorCode>())
    }

    /// The error code of an error response with a usable ERROR-CODE.
    pub fn error_code(&self) -> Option<u16> {
        self.error()?.ok().map(|e| e.code())
    }

    pub fn realm(&self) -> Option<String> {
        self.msg
            .attribute::<Realm>()
            .ok()
            .map(|r| r.realm().to_owned())
    }

    pub fn nonce(&self) -> Option<String> {
        self.msg
            .attribute::<Nonce>()
            .ok()
            .map(|n| n.nonce().to_owned())
    }

    /// The PASSWORD-ALGORITHMS value of a challenge (RFC 8489 §14.12), as sent: a signed
    /// request that negotiates an algorithm echoes it byte for byte.
    pub fn password_algorithms(&self) -> Option<Vec<u8>> {
        self.msg
            .raw_attribute(wire::PASSWORD_ALGORITHMS)
            .map(|a| a.value.to_vec())
    }

    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub fn xor_mapped(&self) -> Option<SocketAddr> {
        let tid = self.transaction_id();
        self.msg
            .attribute::<XorMappedAddress>()
            .ok()
            .map(|a| a.addr(tid))
    }

    /// The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 3489 servers).
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.xor_mapped()
            .or_else(|| self.plain_address(wire::MAPPED_ADDRESS))
    }

    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.plain_address(OTHER_ADDRESS)
    }

    fn plain_address(&self, atype: AttributeType) -> Option<SocketAddr> {
        let raw = self.msg.raw_attribute(atype)?;
        MappedSocketAddr::from_raw(&raw).ok().map(|m| m.addr())
    }

    /// The first XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed_nth(0)
    }

    /// Every XOR-RELAYED-ADDRESS: two for a dual-stack allocation (RFC 8656 §7.3).
    pub fn relayed_all(&self) -> Vec<SocketAddr> {
        (0..).map_while(|n| self.relayed_nth(n)).collect()
    }

    fn relayed_nth(&self, n: usize) -> Option<SocketAddr> {
        let tid = self.transaction_id();
        self.msg
            .nth_attribute::<XorRelayedAddress>(n)
            .ok()
            .map(|a| a.addr(tid))
    }

    /// LIFETIME in seconds (RFC 8656 §18.2).
    pub fn lifetime(&self) -> Option<u32> {
        self.msg.attribute::<Lifetime>().ok().map(|l| l.seconds())
    }

    /// RESERVATION-TOKEN (RFC 8656 §18.9).
    pub fn reservation_token(&self) -> Option<u64> {
        self.msg
            .attribute::<ReservationToken>()
            .ok()
            .map(|t| t.token())
    }

    /// ALTERNATE-SERVER of a 300 Try Alternate (RFC 8489 §14.15).
    pub fn alternate_server(&self) -> Option<SocketAddr> {
        self.msg
            .attribute::<AlternateServer>()
            .ok()
            .map(|a| a.server())
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12): the family a dual allocation could not get,
    /// and why.
    pub fn address_error(&self) -> Option<(wire::AddressFamily, u16)> {
        let error = self.msg.attribute::<AddressErrorCode>().ok()?;
        Some((error.family(), error.error().code()))
    }

    /// Whether the message carries `atype`.
    pub fn has(&self, atype: AttributeType) -> bool {
        self.msg.has_attribute(atype)
    }

    /// Whether the MESSAGE-INTEGRITY-SHA256, or else the MESSAGE-INTEGRITY, verifies with
    /// `key` (the server signs its answers to authenticated requests, RFC 8489 §9.2.4).
    pub fn verify(&self, key: &[u8]) -> bool {
        wire::verify_integrity(&self.msg, key).is_some()
    }

    /// A Data indication's XOR-PEER-ADDRESS and DATA.
    fn data_indication(&self) -> Option<(SocketAddr, &'a [u8])> {
        let peer = self
            .msg
            .attribute::<XorPeerAddress>()
            .ok()?
            .addr(self.transaction_id());
        // The value in place, with the buffer's lifetime (the parsed attribute's borrows the
        // message); the codec has checked that it lies inside the message.
        let (offset, raw) = self.msg.raw_attribute_and_offset(Data::TYPE)?;
        let start = offset + 4;
        Some((peer, self.data.get(start..start + raw.value.len())?))
    }

    /// "Allocate success" or "Allocate error 401 (Unauthorized)", for messages and logs.
    pub fn describe(&self) -> String {
        // Registers TURN method and attribute names for Display (idempotent).
        turn_types::debug_init();
        let method = self.method();
        match self.class() {
            MessageClass::Error => match self.msg.attribute::<ErrorCode>() {
                Ok(e) => format!("{method} error {} ({})", e.code(), e.reason()),
                Err(e) => format!("{method} error without ERROR-CODE ({e:?})"),
            },
            class => format!("{method} {class:?}"),
        }
    }
}
