//! What the probe does against one URL: Binding, then for TURN Allocate (with the 401 →
//! nonce → authenticated retry and 438 handling), CreatePermission and ChannelBind for a
//! second local socket, a sequence-numbered burst relayed both ways, and Refresh(0).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use stun_types::attribute::{AttributeWrite, MappedSocketAddr};
use stun_types::message::MessageWriteVec;

use super::conn::Conn;
use crate::proto::wire::{
    self, AddressFamily, AlternateServer, AttributeType, ChannelNumber, ErrorCode,
    IntegrityAlgorithm, Lifetime, LongTermKeyCredentials, Message, MessageClass,
    MessageIntegrityCredentials, MessageWrite, MessageWriteExt, Method, Nonce, Realm,
    RequestedAddressFamily, RequestedTransport, TransactionId, Username, XorMappedAddress,
    XorPeerAddress, XorRelayedAddress, ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMISSION, DATA,
    REFRESH,
};

/// OTHER-ADDRESS (RFC 5780 §7.4): a second server address for NAT behaviour tests.
pub const OTHER_ADDRESS: AttributeType = AttributeType::new(0x802C);
/// The channel the probe binds (RFC 8656 §12: 0x4000–0x4FFF).
const CHANNEL: u16 = 0x4000;
/// Marks the probe's relayed packets so stray traffic is not counted.
const MAGIC: &[u8; 4] = b"TPRB";
/// Size of each relayed test packet.
const PACKET_LEN: usize = 160;
/// How long the burst waits for one packet's round trip at most.
const PER_PACKET_WAIT: Duration = Duration::from_secs(1);

/// A long-term username and password.
#[derive(Debug, Clone)]
pub struct UserPass {
    pub username: String,
    pub password: String,
}

/// What one Binding request found.
#[derive(Debug, Clone, Copy)]
pub struct BindingResult {
    pub mapped: SocketAddr,
    pub rtt: Duration,
    pub other_address: Option<SocketAddr>,
}

/// The relay test's findings, filled in as far as it got.
#[derive(Debug, Clone, Default)]
pub struct RelayResult {
    pub realm: Option<String>,
    pub relayed: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub lifetime: Option<u32>,
    pub rtts: Vec<Duration>,
    pub sent: usize,
    /// Packets the peer socket got from the relay (client → peer direction).
    pub peer_received: usize,
    /// Packets the peer sent back towards the client.
    pub peer_sent: usize,
    /// Packets the client got back through the relay (peer → client direction).
    pub client_received: usize,
}

/// Builds a request; attributes are added in order, then integrity and FINGERPRINT.
struct Request {
    msg: MessageWriteVec,
}

impl Request {
    fn new(method: Method) -> Request {
        Request {
            msg: Message::builder_request(method, MessageWriteVec::new()),
        }
    }

    fn id(&self) -> TransactionId {
        self.msg.transaction_id()
    }

    fn add(&mut self, attribute: &dyn AttributeWrite) {
        let _ = self.msg.add_attribute(attribute);
    }

    fn finish(mut self, auth: Option<&Auth>) -> Vec<u8> {
        if let Some(auth) = auth {
            if let Ok(user) = Username::new(&auth.user.username) {
                self.add(&user);
            }
            if let Ok(realm) = Realm::new(&auth.realm) {
                self.add(&realm);
            }
            if let Ok(nonce) = Nonce::new(&auth.nonce) {
                self.add(&nonce);
            }
            let _ = self
                .msg
                .add_message_integrity(&auth.credentials(), IntegrityAlgorithm::Sha1);
        }
        let _ = self.msg.add_fingerprint();
        self.msg.finish()
    }
}

/// Long-term credential state: the realm and nonce the server handed out.
struct Auth {
    user: UserPass,
    realm: String,
    nonce: String,
}

impl Auth {
    fn credentials(&self) -> MessageIntegrityCredentials {
        LongTermKeyCredentials::new(
            self.user.username.clone(),
            self.user.password.clone(),
            self.realm.clone(),
        )
        .into()
    }
}

/// An error response: code and reason phrase.
fn error_of(msg: &Message<'_>) -> Option<(u16, String)> {
    if !msg.has_class(MessageClass::Error) {
        return None;
    }
    Some(match msg.attribute::<ErrorCode>() {
        Ok(e) => (e.code(), e.reason().to_owned()),
        Err(_) => (0, "error response without ERROR-CODE".to_owned()),
    })
}

fn method_name(method: Method) -> &'static str {
    match method {
        m if m == BINDING => "Binding",
        m if m == ALLOCATE => "Allocate",
        m if m == REFRESH => "Refresh",
        m if m == CREATE_PERMISSION => "CreatePermission",
        m if m == CHANNEL_BIND => "ChannelBind",
        _ => "request",
    }
}

/// The verdict reason for an error response, as specific as the code allows.
fn describe_error(
    method: Method,
    code: u16,
    reason: &str,
    msg: &Message<'_>,
    realm: &str,
) -> String {
    let reason = if reason.is_empty() {
        ErrorCode::default_reason_for_code(code)
    } else {
        reason
    };
    let peer_request = method == CREATE_PERMISSION || method == CHANNEL_BIND;
    match code {
        401 => format!("401 Unauthorized (realm \"{realm}\"): wrong credentials?"),
        403 if peer_request => "403 Forbidden: server refuses to relay to this client's \
                                address (peer denied)"
            .to_owned(),
        300 => match msg.attribute::<AlternateServer>() {
            Ok(alt) => format!(
                "300 Try Alternate: the server redirects to {} (probe that address)",
                alt.server()
            ),
            Err(_) => "300 Try Alternate without ALTERNATE-SERVER".to_owned(),
        },
        437 => format!("{}: 437 Allocation Mismatch: {reason}", method_name(method)),
        440 => format!(
            "{}: 440 Address Family not Supported: the server cannot relay this address family",
            method_name(method)
        ),
        442 => "442 Unsupported Transport Protocol: the server does not relay UDP".to_owned(),
        486 => "486 Allocation Quota Reached: too many allocations for this username".to_owned(),
        508 => "508 Insufficient Capacity: the server has no free relay ports or allocations"
            .to_owned(),
        _ => format!("{}: {code} {reason}", method_name(method)),
    }
}

/// One Binding request: the mapped address (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
pub fn binding(conn: &mut Conn, timeout: Duration) -> Result<BindingResult, String> {
    let request = Request::new(BINDING);
    let id = request.id();
    let bytes = request.finish(None);
    let (reply, rtt) = conn.transaction(&bytes, id, timeout)?;
    let msg = Message::from_bytes(&reply).map_err(|e| format!("Binding: bad response: {e}"))?;
    if let Some((code, reason)) = error_of(&msg) {
        return Err(describe_error(BINDING, code, &reason, &msg, ""));
    }
    let mapped = match msg.attribute::<XorMappedAddress>() {
        Ok(xor) => xor.addr(id),
        Err(_) => msg
            .raw_attribute(wire::MAPPED_ADDRESS)
            .and_then(|raw| MappedSocketAddr::from_raw(&raw).ok())
            .map(|m| m.addr())
            .ok_or("Binding: the response has no (XOR-)MAPPED-ADDRESS")?,
    };
    let other_address = msg
        .raw_attribute(OTHER_ADDRESS)
        .and_then(|raw| MappedSocketAddr::from_raw(&raw).ok())
        .map(|m| m.addr());
    Ok(BindingResult {
        mapped,
        rtt,
        other_address,
    })
}

/// Drives the TURN part of the probe on an open connection.
pub struct TurnSession<'c> {
    conn: &'c mut Conn,
    timeout: Duration,
    auth: Option<Auth>,
    pub result: RelayResult,
}

impl<'c> TurnSession<'c> {
    pub fn new(conn: &'c mut Conn, timeout: Duration) -> Self {
        TurnSession {
            conn,
            timeout,
            auth: None,
            result: RelayResult::default(),
        }
    }

    /// The local address of the connection to the server.
    pub fn local(&self) -> SocketAddr {
        self.conn.local
    }

    /// Sends an authenticated request built by `build`, taking a new nonce on 438 (twice
    /// at most). Returns the success response.
    fn authed(&mut self, method: Method, build: &dyn Fn(&mut Request)) -> Result<Vec<u8>, String> {
        for _ in 0..3 {
            let mut request = Request::new(method);
            build(&mut request);
            let id = request.id();
            let bytes = request.finish(self.auth.as_ref());
            let (reply, _) = self.conn.transaction(&bytes, id, self.timeout)?;
            let msg = Message::from_bytes(&reply)
                .map_err(|e| format!("{}: bad response: {e}", method_name(method)))?;
            let realm = self.auth.as_ref().map_or("", |a| a.realm.as_str());
            match error_of(&msg) {
                None => {
                    if let Some(auth) = &self.auth {
                        if msg.validate_integrity(&auth.credentials()).is_err() {
                            return Err(format!(
                                "{}: the response's MESSAGE-INTEGRITY does not verify",
                                method_name(method)
                            ));
                        }
                    }
                    return Ok(reply);
                }
                Some((438, _)) => {
                    let nonce = msg
                        .attribute::<Nonce>()
                        .map_err(|_| "438 Stale Nonce without a new NONCE".to_owned())?;
                    if let Some(auth) = &mut self.auth {
                        auth.nonce = nonce.nonce().to_owned();
                        if let Ok(realm) = msg.attribute::<Realm>() {
                            auth.realm = realm.realm().to_owned();
                        }
                    }
                }
                Some((code, reason)) => {
                    return Err(describe_error(method, code, &reason, &msg, realm))
                }
            }
        }
        Err(format!(
            "{}: 438 Stale Nonce three times in a row",
            method_name(method)
        ))
    }

    /// Allocate: first without credentials to learn REALM and NONCE (401), then signed.
    pub fn allocate(&mut self, user: Option<&UserPass>) -> Result<SocketAddr, String> {
        let family = match self.conn.local.ip() {
            IpAddr::V4(_) => None,
            IpAddr::V6(_) => Some(AddressFamily::IPV6),
        };
        let build = move |r: &mut Request| {
            r.add(&RequestedTransport::new(wire::PROTOCOL_UDP));
            if let Some(family) = family {
                r.add(&RequestedAddressFamily::new(family));
            }
        };
        let mut request = Request::new(ALLOCATE);
        build(&mut request);
        let id = request.id();
        let bytes = request.finish(None);
        let (reply, _) = self.conn.transaction(&bytes, id, self.timeout)?;
        let msg =
            Message::from_bytes(&reply).map_err(|e| format!("Allocate: bad response: {e}"))?;
        let reply = match error_of(&msg) {
            None => reply.clone(),
            Some((401, _)) => {
                let realm = msg
                    .attribute::<Realm>()
                    .map(|r| r.realm().to_owned())
                    .map_err(|_| "Allocate: 401 without REALM".to_owned())?;
                let nonce = msg
                    .attribute::<Nonce>()
                    .map(|n| n.nonce().to_owned())
                    .map_err(|_| "Allocate: 401 without NONCE".to_owned())?;
                self.result.realm = Some(realm.clone());
                let Some(user) = user else {
                    return Err(format!(
                        "401 Unauthorized (realm \"{realm}\"): no credentials given \
                         (use --secret, --username/--password or --credentials-url)"
                    ));
                };
                self.auth = Some(Auth {
                    user: user.clone(),
                    realm,
                    nonce,
                });
                self.authed(ALLOCATE, &build)?
            }
            Some((code, reason)) => return Err(describe_error(ALLOCATE, code, &reason, &msg, "")),
        };
        let msg = Message::from_bytes(&reply).map_err(|e| format!("Allocate: {e}"))?;
        let relayed = msg
            .attribute::<XorRelayedAddress>()
            .map(|a| a.addr(msg.transaction_id()))
            .map_err(|_| "Allocate: the response has no XOR-RELAYED-ADDRESS".to_owned())?;
        self.result.lifetime = msg.attribute::<Lifetime>().ok().map(|l| l.seconds());
        self.result.relayed = Some(relayed);
        Ok(relayed)
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<(), String> {
        self.authed(CREATE_PERMISSION, &move |r: &mut Request| {
            let id = r.id();
            r.add(&XorPeerAddress::new(peer, id));
        })
        .map(|_| ())
    }

    pub fn channel_bind(&mut self, peer: SocketAddr) -> Result<(), String> {
        self.authed(CHANNEL_BIND, &move |r: &mut Request| {
            let id = r.id();
            r.add(&ChannelNumber::new(CHANNEL));
            r.add(&XorPeerAddress::new(peer, id));
        })
        .map(|_| ())
    }

    /// Deletes the allocation (Refresh with LIFETIME 0).
    pub fn release(&mut self) -> Result<(), String> {
        self.authed(REFRESH, &|r: &mut Request| r.add(&Lifetime::new(0)))
            .map(|_| ())
    }

    /// Sends `count` sequence-numbered packets through the channel to `peer`, which echoes
    /// each back to the relayed address; records round trips and what arrived each way.
    pub fn burst(&mut self, peer: &UdpSocket, relayed: SocketAddr, count: usize) {
        let wait = self.timeout.min(PER_PACKET_WAIT);
        let mut back = vec![false; count];
        for seq in 0..count {
            let payload = test_packet(seq as u32);
            let mut frame = Vec::with_capacity(wire::CHANNEL_HEADER_LEN + PACKET_LEN + 3);
            frame.extend_from_slice(&CHANNEL.to_be_bytes());
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            frame.extend_from_slice(&payload);
            if self.conn.is_stream() {
                // RFC 8656 §12.5: over streams ChannelData is padded to a multiple of 4.
                frame.resize(frame.len().next_multiple_of(4), 0);
            }
            let sent_at = Instant::now();
            if self.conn.send(&frame).is_err() {
                break;
            }
            self.result.sent += 1;
            let deadline = sent_at + wait;
            // The peer side: wait for this packet (skip older ones that arrive late).
            let mut buf = [0u8; 2048];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || peer.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match peer.recv_from(&mut buf) {
                    Ok((n, from)) if from == relayed => {
                        // Late packets are echoed too; only this one ends the wait.
                        let Some(s) = packet_seq(&buf[..n]) else {
                            continue;
                        };
                        self.result.peer_received += 1;
                        if peer.send_to(&buf[..n], relayed).is_ok() {
                            self.result.peer_sent += 1;
                        }
                        if s as usize == seq {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // The client side: wait for the echo.
            while let Ok(Some(frame)) = self.conn.recv(deadline) {
                let Some(s) = relayed_seq(&frame) else {
                    continue;
                };
                let s = s as usize;
                if s < count && !back[s] {
                    back[s] = true;
                    self.result.client_received += 1;
                    if s == seq {
                        self.result.rtts.push(sent_at.elapsed());
                        break;
                    }
                }
            }
        }
    }
}

fn test_packet(seq: u32) -> Vec<u8> {
    let mut packet = Vec::with_capacity(PACKET_LEN);
    packet.extend_from_slice(MAGIC);
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.resize(PACKET_LEN, (seq % 251) as u8);
    packet
}

fn packet_seq(data: &[u8]) -> Option<u32> {
    (data.len() == PACKET_LEN && data.starts_with(MAGIC))
        .then(|| u32::from_be_bytes([data[4], data[5], data[6], data[7]]))
}

/// The sequence number of a test packet the relay delivered to the client, as ChannelData
/// on our channel or as a Data indication.
fn relayed_seq(frame: &[u8]) -> Option<u32> {
    match wire::classify(frame) {
        wire::Kind::ChannelData => {
            let (channel, len) = wire::channel_data_header(frame)?;
            (channel == CHANNEL).then_some(())?;
            packet_seq(&frame[wire::CHANNEL_HEADER_LEN..wire::CHANNEL_HEADER_LEN + len])
        }
        wire::Kind::Stun => {
            let msg = Message::from_bytes(frame).ok()?;
            if !msg.has_method(DATA) || !msg.has_class(MessageClass::Indication) {
                return None;
            }
            let data = msg.attribute::<wire::Data>().ok()?;
            packet_seq(data.data())
        }
        wire::Kind::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_packets_round_trip_through_channel_data() {
        let packet = test_packet(7);
        assert_eq!(packet_seq(&packet), Some(7));
        let mut frame = CHANNEL.to_be_bytes().to_vec();
        frame.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        frame.extend_from_slice(&packet);
        assert_eq!(relayed_seq(&frame), Some(7));
        assert_eq!(packet_seq(b"TPRB"), None);
    }

    #[test]
    fn error_reasons_are_specific() {
        let request = Request::new(CREATE_PERMISSION).finish(None);
        let msg = Message::from_bytes(&request).unwrap();
        assert_eq!(
            describe_error(CREATE_PERMISSION, 403, "Forbidden", &msg, "r"),
            "403 Forbidden: server refuses to relay to this client's address (peer denied)"
        );
        assert_eq!(
            describe_error(ALLOCATE, 401, "Unauthorized", &msg, "example.org"),
            "401 Unauthorized (realm \"example.org\"): wrong credentials?"
        );
        assert_eq!(
            describe_error(ALLOCATE, 500, "Server Error", &msg, ""),
            "Allocate: 500 Server Error"
        );
    }
}
