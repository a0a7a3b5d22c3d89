//! The one place that knows the STUN/TURN wire format.
//!
//! Everything else in turnpike speaks in terms of this module; parsing and writing come from
//! the `stun-types` and `turn-types` crates, so the codec can be swapped without touching the
//! protocol logic. This module classifies datagrams (STUN vs ChannelData, RFC 8656 §12) and
//! writes responses into buffers the caller owns.

use std::net::SocketAddr;

pub use stun_types::attribute::{
    AlternateServer, AttributeType, ErrorCode, Fingerprint, MessageIntegrity,
    MessageIntegritySha256, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
pub use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageType, MessageWrite, MessageWriteExt, MessageWriteMutSlice, Method, StunParseError,
    TransactionId, BINDING,
};
pub use turn_types::attribute::{
    AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data, DontFragment, EvenPort,
    Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayedAddress,
};
pub use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};
pub use turn_types::AddressFamily;

use super::error::Error;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use stun_types::attribute::{
    Attribute, AttributeFromRaw, AttributeStaticType, MappedSocketAddr, RawAttribute,
};
use subtle::ConstantTimeEq;

/// MAPPED-ADDRESS (RFC 8489 §14.1), sent beside XOR-MAPPED-ADDRESS for RFC 3489-era clients.
pub const MAPPED_ADDRESS: AttributeType = AttributeType::new(0x0001);
/// PASSWORD-ALGORITHM (RFC 8489 §14.11): the algorithm a request's key was derived with.
pub const PASSWORD_ALGORITHM: AttributeType = stun_types::attribute::PasswordAlgorithm::TYPE;
/// PASSWORD-ALGORITHMS (RFC 8489 §14.12): the algorithms a challenge offers.
pub const PASSWORD_ALGORITHMS: AttributeType = stun_types::attribute::PasswordAlgorithms::TYPE;
/// CHANGE-REQUEST (RFC 5780 §7.2); accepted only when it asks for no change.
pub const CHANGE_REQUEST: AttributeType = AttributeType::new(0x0003);
/// ICE attributes a Binding request may carry (RFC 8445 §16.1).
pub const PRIORITY: AttributeType = AttributeType::new(0x0024);
pub const USE_CANDIDATE: AttributeType = AttributeType::new(0x0025);
/// ADDITIONAL-ADDRESS-FAMILY as draft-ietf-tram-turnbis numbered it; RFC 8656 moved it to
/// 0x8000, but coturn's clients still send this one.
pub const DRAFT_ADDITIONAL_ADDRESS_FAMILY: AttributeType = AttributeType::new(0x8032);
/// REQUESTED-TRANSPORT protocol number for UDP (RFC 8656 §18.7).
pub const PROTOCOL_UDP: u8 = 17;
/// STUN header length (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// ChannelData header length (RFC 8656 §12.4); relay buffers reserve this much headroom.
pub const CHANNEL_HEADER_LEN: usize = 4;
/// Accepted channel numbers. RFC 8656 §12 narrowed the range to 0x4000–0x4FFF, but RFC 5766
/// clients (coturn's own `turnutils_uclient` among them) still pick from 0x4000–0x7FFF, and
/// nothing else is defined for those first bytes, so turnpike keeps accepting the old range.
pub const CHANNEL_RANGE: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// The value of a PASSWORD-ALGORITHM attribute (RFC 8489 §14.11): the algorithm number and a
/// zero parameter length (neither MD5 nor SHA-256 has parameters). `None` for anything else.
pub fn password_algorithm_number(value: &[u8]) -> Option<u16> {
    match value {
        [a, b, 0, 0] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Writes a PASSWORD-ALGORITHMS value (RFC 8489 §14.12) listing `numbers` in order.
pub fn password_algorithms_value<const N: usize>(numbers: [u16; N]) -> [[u8; 4]; N] {
    numbers.map(|n| {
        let [a, b] = n.to_be_bytes();
        [a, b, 0, 0]
    })
}

/// Checks a request's message integrity with a long-term `key` (RFC 8489 §9.2.4): the
/// MESSAGE-INTEGRITY-SHA256 (§14.6, possibly truncated to 16..32 bytes) when there is one,
/// else the MESSAGE-INTEGRITY (§14.5). Returns which one verified. Computed here rather than by
/// `stun-types`, whose keys for MESSAGE-INTEGRITY-SHA256 are always SHA-256 of the credentials,
/// whatever PASSWORD-ALGORITHM says.
pub fn verify_integrity(msg: &Message<'_>, key: &[u8]) -> Option<IntegrityAlgorithm> {
    let data = msg.as_bytes();
    if let Some((offset, attr)) = msg.raw_attribute_and_offset(MessageIntegritySha256::TYPE) {
        let expected = attr.value.as_ref();
        if !(16..=32).contains(&expected.len()) || expected.len() % 4 != 0 {
            return None;
        }
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        hmac_input(data, offset, 4 + expected.len(), |part| mac.update(part));
        let computed = mac.finalize().into_bytes();
        let ok: bool = computed[..expected.len()].ct_eq(expected).into();
        return ok.then_some(IntegrityAlgorithm::Sha256);
    }
    let (offset, attr) = msg.raw_attribute_and_offset(MessageIntegrity::TYPE)?;
    if attr.value.len() != 20 {
        return None;
    }
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).ok()?;
    hmac_input(data, offset, 24, |part| mac.update(part));
    let ok: bool = mac
        .finalize()
        .into_bytes()
        .ct_eq(attr.value.as_ref())
        .into();
    ok.then_some(IntegrityAlgorithm::Sha1)
}

/// Feeds the HMAC input for an integrity attribute of `attr_len` bytes at `offset` (RFC 8489
/// §14.5): the message before it, with the header length counting up to the attribute's end.
fn hmac_input(data: &[u8], offset: usize, attr_len: usize, mut update: impl FnMut(&[u8])) {
    let length = (offset + attr_len - HEADER_LEN) as u16;
    update(&data[..2]);
    update(&length.to_be_bytes());
    update(&data[4..offset]);
}

/// Adds MESSAGE-INTEGRITY (`Sha1`, RFC 8489 §14.5) or MESSAGE-INTEGRITY-SHA256 (`Sha256`,
/// §14.6) computed with a long-term `key` as it is (`stun-types` would derive the key itself,
/// always as SHA-256 of the credentials for MESSAGE-INTEGRITY-SHA256). Requests (the client
/// crate) and responses share it. `false`, and nothing written, when it does not fit.
pub fn add_message_integrity<W: MessageWrite>(
    writer: &mut W,
    key: &[u8],
    algorithm: IntegrityAlgorithm,
) -> bool {
    let mac_len = match algorithm {
        IntegrityAlgorithm::Sha1 => 20,
        IntegrityAlgorithm::Sha256 => 32,
    };
    if writer
        .max_size()
        .is_some_and(|max| writer.len() + 4 + mac_len > max)
    {
        return false;
    }
    // Written with a zero value (which sets the header length to count it), then computed
    // over everything before it and filled in (RFC 8489 §14.5, §14.6).
    let zeros = [0u8; 32];
    let placeholder = match algorithm {
        IntegrityAlgorithm::Sha1 => RawAttribute::new(MessageIntegrity::TYPE, &zeros[..20]),
        IntegrityAlgorithm::Sha256 => RawAttribute::new(MessageIntegritySha256::TYPE, &zeros),
    };
    writer.push_attribute_unchecked(&placeholder);
    let len = writer.len();
    let data = writer.mut_data();
    let (signed, value) = data.split_at_mut(len - mac_len);
    let signed = &signed[..len - mac_len - 4];
    match algorithm {
        IntegrityAlgorithm::Sha1 => {
            let mut mac =
                <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
            mac.update(signed);
            value.copy_from_slice(&mac.finalize().into_bytes());
        }
        IntegrityAlgorithm::Sha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                .expect("HMAC accepts keys of any length");
            mac.update(signed);
            value.copy_from_slice(&mac.finalize().into_bytes());
        }
    }
    true
}

/// What a datagram from a client is, decided from its first byte (RFC 8656 §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

pub fn classify(data: &[u8]) -> Kind {
    match data.first() {
        Some(0x00..=0x03) => Kind::Stun,
        Some(0x40..=0x7F) => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// Parses a ChannelData header: `(channel, payload length)`; the payload must fit in `data`.
pub fn channel_data_header(data: &[u8]) -> Option<(u16, usize)> {
    if data.len() < CHANNEL_HEADER_LEN {
        return None;
    }
    let channel = u16::from_be_bytes([data[0], data[1]]);
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    (CHANNEL_RANGE.contains(&channel) && CHANNEL_HEADER_LEN + len <= data.len())
        .then_some((channel, len))
}

/// Writes a ChannelData header in front of a payload already placed at `buf[4..4 + len]`.
pub fn write_channel_header(buf: &mut [u8], channel: u16, len: usize) {
    buf[0..2].copy_from_slice(&channel.to_be_bytes());
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// Whether a Data indication (XOR-PEER-ADDRESS, DATA, FINGERPRINT) carrying `payload_len`
/// bytes from `peer` fits the 16-bit STUN message length. A peer datagram of up to 65,527
/// bytes (IPv6) does not always fit; a length that wrapped would let the peer's payload be
/// read as further frames on a stream connection.
pub fn data_indication_fits(peer: SocketAddr, payload_len: usize) -> bool {
    let address = if peer.is_ipv4() { 8 } else { 20 };
    let attributes = (4 + address) + (4 + payload_len.next_multiple_of(4)) + 8;
    attributes <= usize::from(u16::MAX)
}

/// Parses a whole STUN message. Over UDP the datagram must be exactly one message
/// (RFC 8489 §6.3: "the message length MUST contain the size of the message in bytes").
pub fn parse_stun(data: &[u8]) -> Result<Message<'_>, StunParseError> {
    if data.len() < HEADER_LEN {
        return Err(StunParseError::Truncated {
            expected: HEADER_LEN,
            actual: data.len(),
        });
    }
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    if declared % 4 != 0 || HEADER_LEN + declared != data.len() {
        return Err(StunParseError::DataMismatch);
    }
    Message::from_bytes(data)
}

/// Reads the first attribute `A` of a request and says what to answer when it is unusable.
/// Only the first occurrence counts (RFC 8489 §14: "only the first occurrence needs to be
/// processed by a receiver, and any duplicates MAY be ignored"); attributes after
/// MESSAGE-INTEGRITY are never seen (the codec stops there).
///
/// * absent: `Ok(None)`;
/// * malformed, i.e. a length the attribute cannot have: `Err(400)` (RFC 8489 §14.8: "the
///   request was malformed");
/// * well-formed but holding a value the attribute does not define, such as address family
///   0x03: `Err(bad_value)`, the code the method's section of RFC 8656 names for it.
///
/// The codecs tell the two failures apart (stun-types 2.0.4, turn-types 0.7.3): a length
/// outside the attribute's size is `Truncated`/`TooLarge` and is checked first; a family byte
/// other than 1 or 2 (or 1 in ADDITIONAL-ADDRESS-FAMILY) is `InvalidAttributeData`. Reserved
/// bits are ignored, as RFC 8656 §18 asks of servers.
pub fn attribute<'a, A>(msg: &'a Message<'a>, bad_value: Error) -> Result<Option<A>, Error>
where
    A: AttributeFromRaw<'a> + AttributeStaticType,
{
    match msg.attribute::<A>() {
        Ok(attribute) => Ok(Some(attribute)),
        Err(StunParseError::MissingAttribute(_)) => Ok(None),
        Err(e) => Err(fault_code(e, bad_value)),
    }
}

/// [`attribute`] for one the request must carry: absent is 400 as well.
pub fn required<'a, A>(msg: &'a Message<'a>, bad_value: Error) -> Result<A, Error>
where
    A: AttributeFromRaw<'a> + AttributeStaticType,
{
    attribute(msg, bad_value)?.ok_or(Error::BadRequest)
}

/// Every `A` in the request, for the attributes a method lets repeat (XOR-PEER-ADDRESS in
/// CreatePermission, RFC 8656 §10.2); one unusable occurrence fails them all.
pub fn every<'a, A>(msg: &'a Message<'a>, bad_value: Error) -> Result<Vec<A>, Error>
where
    A: AttributeFromRaw<'a> + AttributeStaticType,
{
    msg.iter_attributes()
        .filter(|(_, raw)| raw.get_type() == A::TYPE)
        .map(|(_, raw)| A::from_raw(raw).map_err(|e| fault_code(e, bad_value.clone())))
        .collect()
}

/// ADDITIONAL-ADDRESS-FAMILY under its RFC 8656 codepoint, else under the draft one
/// coturn's clients send (`turnutils_uclient -Z`), read the same way by [`attribute`]. Any
/// unusable value is 400 (RFC 8656 §7.2 step 9: IPv6 is the only valid one).
pub fn additional_address_family(msg: &Message<'_>) -> Result<Option<AddressFamily>, Error> {
    if let Some(family) = attribute::<AdditionalAddressFamily>(msg, Error::BadRequest)? {
        return Ok(Some(family.family()));
    }
    let Some(draft) = msg.raw_attribute(DRAFT_ADDITIONAL_ADDRESS_FAMILY) else {
        return Ok(None);
    };
    let renumbered = RawAttribute::new(AdditionalAddressFamily::TYPE, &draft.value[..]);
    AdditionalAddressFamily::from_raw_ref(&renumbered)
        .map(|family| Some(family.family()))
        .map_err(|e| fault_code(e, Error::BadRequest))
}

fn fault_code(error: StunParseError, bad_value: Error) -> Error {
    match error {
        StunParseError::InvalidAttributeData => bad_value,
        _ => Error::BadRequest,
    }
}

/// A response being written into a caller-owned buffer.
pub struct Response<'b> {
    writer: MessageWriteMutSlice<'b>,
}

impl<'b> Response<'b> {
    pub fn success(method: Method, transaction: TransactionId, out: &'b mut [u8]) -> Self {
        let kind = MessageType::from_class_method(MessageClass::Success, method);
        Self {
            writer: Message::builder(kind, transaction, MessageWriteMutSlice::new(out)),
        }
    }

    pub fn error(method: Method, transaction: TransactionId, code: u16, out: &'b mut [u8]) -> Self {
        Self::error_with_reason(method, transaction, code, None, out)
    }

    /// An error with the given reason phrase (`Some("")` for none), or the usual one for `code`.
    pub fn error_with_reason(
        method: Method,
        transaction: TransactionId,
        code: u16,
        reason: Option<&str>,
        out: &'b mut [u8],
    ) -> Self {
        let kind = MessageType::from_class_method(MessageClass::Error, method);
        let mut response = Self {
            writer: Message::builder(kind, transaction, MessageWriteMutSlice::new(out)),
        };
        let mut error = ErrorCode::builder(code);
        if let Some(reason) = reason {
            error = error.reason(reason);
        }
        if let Ok(error) = error.build() {
            response.add(&error);
        }
        response
    }

    /// An indication; the caller picks its transaction id (the core's randomness is injected).
    pub fn indication(method: Method, transaction: TransactionId, out: &'b mut [u8]) -> Self {
        let kind = MessageType::from_class_method(MessageClass::Indication, method);
        Self {
            writer: Message::builder(kind, transaction, MessageWriteMutSlice::new(out)),
        }
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.writer.transaction_id()
    }

    /// Adds an attribute. The buffers handed to the core are sized for the largest response,
    /// so a failure here is a bug; it is ignored rather than panicking on the packet path.
    pub fn add(&mut self, attribute: &dyn stun_types::attribute::AttributeWrite) {
        let _ = self.writer.add_attribute(attribute);
    }

    pub fn add_mapped_address(&mut self, addr: SocketAddr) {
        let mapped = MappedSocketAddr::new(addr);
        let raw: RawAttribute<'_> = mapped.to_raw(MAPPED_ADDRESS);
        self.add(&raw);
    }

    pub fn add_software(&mut self, software: Option<&str>) {
        if let Some(software) = software.and_then(|s| Software::new(s).ok()) {
            self.add(&software);
        }
    }

    /// Adds MESSAGE-INTEGRITY (`Sha1`) or MESSAGE-INTEGRITY-SHA256 (`Sha256`) computed with
    /// the key the request was verified with, then FINGERPRINT; returns the length written.
    pub fn finish_signed(mut self, key: &impl AsRef<[u8]>, algorithm: IntegrityAlgorithm) -> usize {
        add_message_integrity(&mut self.writer, key.as_ref(), algorithm);
        self.finish()
    }

    /// Adds FINGERPRINT and returns the length written.
    pub fn finish(self) -> usize {
        self.finish_with_fingerprint(true)
    }

    /// Adds FINGERPRINT if `fingerprint` (RFC 8489 §14.7 leaves it to the usage) and returns
    /// the length written.
    pub fn finish_with_fingerprint(mut self, fingerprint: bool) -> usize {
        if fingerprint {
            let _ = self.writer.add_fingerprint();
        }
        self.writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_indication_size_limit_matches_what_the_writer_builds() {
        let peers: [SocketAddr; 2] = [
            "192.0.2.1:9".parse().unwrap(),
            "[2001:db8::1]:9".parse().unwrap(),
        ];
        let mut out = vec![0u8; 70_000];
        for peer in peers {
            let payload = vec![7u8; 65_535];
            // The largest payload that fits, exactly: one more byte and the length wraps.
            let largest = (0..=65_535)
                .rev()
                .find(|&n| data_indication_fits(peer, n))
                .unwrap();
            let mut indication =
                Response::indication(turn_types::message::DATA, TransactionId::from(1), &mut out);
            indication.add(&turn_types::attribute::XorPeerAddress::new(
                peer,
                indication.transaction_id(),
            ));
            indication.add(&turn_types::attribute::Data::new(&payload[..largest]));
            let len = indication.finish();
            assert_eq!(
                usize::from(u16::from_be_bytes([out[2], out[3]])),
                len - HEADER_LEN
            );
            assert!(
                len - HEADER_LEN > 65_535 - 4,
                "{peer}: {largest} bytes leave room"
            );
            assert!(!data_indication_fits(peer, largest + 1));
        }
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0x00, 0x01]), Kind::Stun);
        assert_eq!(classify(&[0x40, 0x00]), Kind::ChannelData);
        assert_eq!(classify(&[0x4F, 0xFF]), Kind::ChannelData);
        assert_eq!(classify(&[0x7F, 0xFF]), Kind::ChannelData);
        assert_eq!(classify(&[0x80]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
    }

    #[test]
    fn channel_header_rejects_out_of_range_and_truncated() {
        assert_eq!(
            channel_data_header(&[0x40, 0x00, 0, 2, 1, 2]),
            Some((0x4000, 2))
        );
        assert_eq!(channel_data_header(&[0x40, 0x00, 0, 3, 1, 2]), None);
        assert_eq!(channel_data_header(&[0x80, 0x00, 0, 0]), None);
        assert_eq!(channel_data_header(&[0x40, 0x00, 0]), None);
    }

    #[test]
    fn stun_length_must_match_datagram() {
        let mut binding = [0u8; 20];
        binding[1] = 0x01;
        binding[4..8].copy_from_slice(&0x2112A442u32.to_be_bytes());
        assert!(parse_stun(&binding).is_ok());
        let mut longer = binding.to_vec();
        longer.extend_from_slice(&[0; 4]);
        assert!(parse_stun(&longer).is_err());
        assert!(parse_stun(&binding[..19]).is_err());
    }
}
