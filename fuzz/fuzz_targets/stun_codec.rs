//! The message codec: `wire::parse_stun` (and the plain `Message::from_bytes` a stream
//! framer uses), every typed attribute getter a server or client may call, integrity
//! validation, `wire::classify` / `wire::channel_data_header`, and writing a response to
//! whatever parsed (the path every reply takes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stun_types::attribute::{
    AlternateDomain, AlternateServer, Attribute, AttributeStaticType, PasswordAlgorithm,
    PasswordAlgorithms, Userhash,
};
use stun_types::message::ShortTermCredentials;
use turn_types::attribute::{AddressErrorCode, ConnectionId, Icmp};
use turnpike::proto::auth::{self, LongTermKey};
use turnpike::proto::wire::{self, *};

/// Calls every getter of every attribute type we know; the values are discarded.
fn typed_getters(msg: &Message<'_>) {
    let tid = msg.transaction_id();
    for (offset, raw) in msg.iter_attributes() {
        let _ = (offset, raw.get_type(), raw.length(), raw.value.len());
    }
    if let Ok(a) = msg.attribute::<XorPeerAddress>() {
        let _ = a.addr(tid);
    }
    for n in 0..4 {
        if let Ok(a) = msg.nth_attribute::<XorPeerAddress>(n) {
            let _ = a.addr(tid);
        }
    }
    if let Ok(a) = msg.attribute::<XorRelayedAddress>() {
        let _ = a.addr(tid);
    }
    if let Ok(a) = msg.attribute::<XorMappedAddress>() {
        let _ = a.addr(tid);
    }
    if let Ok(a) = msg.attribute::<Lifetime>() {
        let _ = a.seconds();
    }
    if let Ok(a) = msg.attribute::<ChannelNumber>() {
        let _ = a.channel();
    }
    if let Ok(a) = msg.attribute::<Data>() {
        let _ = a.data().len();
    }
    if let Some((offset, raw)) = msg.raw_attribute_and_offset(Data::TYPE) {
        // The server borrows the DATA value from the datagram at offset + 4.
        let start = offset + 4;
        assert!(start + raw.value.len() <= msg.as_bytes().len());
    }
    if let Ok(a) = msg.attribute::<Username>() {
        let _ = a.username().len();
    }
    if let Ok(a) = msg.attribute::<Realm>() {
        let _ = a.realm().len();
    }
    if let Ok(a) = msg.attribute::<Nonce>() {
        let _ = a.nonce().len();
    }
    if let Ok(a) = msg.attribute::<Software>() {
        let _ = a.software().len();
    }
    if let Ok(a) = msg.attribute::<ErrorCode>() {
        let _ = (a.code(), a.reason().len());
    }
    if let Ok(a) = msg.attribute::<UnknownAttributes>() {
        let _ = a.has_attribute(Username::TYPE);
    }
    if let Ok(a) = msg.attribute::<RequestedTransport>() {
        let _ = a.protocol();
    }
    if let Ok(a) = msg.attribute::<RequestedAddressFamily>() {
        let _ = a.family();
    }
    if let Ok(a) = msg.attribute::<AdditionalAddressFamily>() {
        let _ = a.family();
    }
    if let Ok(a) = msg.attribute::<AddressErrorCode>() {
        let _ = (a.family(), a.error().code());
    }
    if let Ok(a) = msg.attribute::<EvenPort>() {
        let _ = a.requested();
    }
    if let Ok(a) = msg.attribute::<ReservationToken>() {
        let _ = a.token();
    }
    let _ = msg.attribute::<DontFragment>();
    if let Ok(a) = msg.attribute::<ConnectionId>() {
        let _ = a.id();
    }
    if let Ok(a) = msg.attribute::<Icmp>() {
        let _ = (a.icmp_type(), a.code(), a.data());
    }
    if let Ok(a) = msg.attribute::<MessageIntegrity>() {
        let _ = a.hmac();
    }
    if let Ok(a) = msg.attribute::<MessageIntegritySha256>() {
        let _ = a.hmac().len();
    }
    if let Ok(a) = msg.attribute::<Fingerprint>() {
        let _ = a.fingerprint();
    }
    if let Ok(a) = msg.attribute::<AlternateServer>() {
        let _ = a.server();
    }
    if let Ok(a) = msg.attribute::<AlternateDomain>() {
        let _ = a.domain().len();
    }
    if let Ok(a) = msg.attribute::<PasswordAlgorithm>() {
        let _ = a.algorithm();
    }
    if let Ok(a) = msg.attribute::<PasswordAlgorithms>() {
        let _ = a.algorithms().len();
    }
    if let Ok(a) = msg.attribute::<Userhash>() {
        let _ = a.hash();
    }
    let _ = msg.raw_attribute(wire::CHANGE_REQUEST);
    let _ = msg.raw_attribute(wire::MAPPED_ADDRESS);
}

fuzz_target!(|data: &[u8]| {
    let kind = wire::classify(data);
    if let Some((channel, len)) = wire::channel_data_header(data) {
        assert_eq!(kind, wire::Kind::ChannelData);
        assert!(wire::CHANNEL_RANGE.contains(&channel));
        assert!(wire::CHANNEL_HEADER_LEN + len <= data.len());
    }
    // What a stream framer sees: a message followed by more bytes.
    let _ = Message::from_bytes(data);
    let Ok(msg) = wire::parse_stun(data) else {
        return;
    };
    // `classify` only calls methods up to 0x0FF STUN (first byte 0x00-0x03); the codec
    // accepts every 12-bit method, so nothing is asserted about `kind` here.
    assert_eq!(msg.as_bytes().len(), data.len());
    let _ = (
        msg.class(),
        msg.method(),
        msg.transaction_id(),
        msg.get_type(),
    );
    typed_getters(&msg);
    // Integrity with both kinds of credentials (what the server does per password).
    let long: MessageIntegrityCredentials =
        LongTermKeyCredentials::new("alice".into(), "wonderland".into(), "turnpike".into()).into();
    let _ = msg.validate_integrity(&long);
    let short: MessageIntegrityCredentials = ShortTermCredentials::new("secret".into()).into();
    let _ = msg.validate_integrity(&short);
    // And turnpike's own check with both long-term keys (RFC 8489 §9.2.2, §18.5.1).
    let md5 = LongTermKey::new(auth::PasswordAlgorithm::Md5, "alice", "turnpike", "wonderland");
    let sha256 = LongTermKey::new(
        auth::PasswordAlgorithm::Sha256,
        "alice",
        "turnpike",
        "wonderland",
    );
    let _ = wire::verify_integrity(&msg, md5.as_ref());
    let _ = wire::verify_integrity(&msg, sha256.as_ref());
    // Every reply is written with `wire::Response` into a buffer of len + 512 bytes.
    let mut out = vec![0u8; data.len() + 512];
    let code = 300 + u16::from(data[data.len() - 1]) % 300;
    let mut response = wire::Response::error(msg.method(), msg.transaction_id(), code, &mut out);
    let unknown: Vec<AttributeType> = msg
        .iter_attributes()
        .map(|(_, a)| a.get_type())
        .filter(|t| t.comprehension_required())
        .take(16)
        .collect();
    if !unknown.is_empty() {
        response.add(&UnknownAttributes::new(&unknown));
    }
    response.add_software(Some("turnpike"));
    // Signed as the server signs: MESSAGE-INTEGRITY with the MD5 key, or (a negotiated
    // algorithm) MESSAGE-INTEGRITY-SHA256.
    let sign_sha256 = data[0] & 1 == 1;
    let (key, algorithm) = if sign_sha256 {
        (&sha256, IntegrityAlgorithm::Sha256)
    } else {
        (&md5, IntegrityAlgorithm::Sha1)
    };
    let len = response.finish_signed(key, algorithm);
    let reply = wire::parse_stun(&out[..len]).expect("our own reply parses");
    assert_eq!(reply.transaction_id(), msg.transaction_id());
    assert_eq!(
        wire::verify_integrity(&reply, key.as_ref()),
        Some(algorithm),
        "our own reply validates"
    );
    if !sign_sha256 {
        // The MD5-keyed MESSAGE-INTEGRITY is what stun-types computes too.
        assert!(reply.validate_integrity(&long).is_ok(), "stun-types validates it");
    }
});
