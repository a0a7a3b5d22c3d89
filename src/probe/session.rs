//! What the probe does against one URL: Binding, then for TURN Allocate (with the 401 →
//! nonce → authenticated retry and 438 handling), CreatePermission and ChannelBind for a
//! second local socket, a sequence-numbered burst relayed both ways, and Refresh(0).
//!
//! The protocol is turnpike-client's [`Client`] (it answers the challenges and retransmits
//! over UDP); this module drives it over a [`Conn`] with the real clock and turns how each
//! transaction ended into the verdict's words.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use turnpike_client::{
    wire::{AddressFamily, ErrorCode, ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMISSION, REFRESH},
    Allocate, Answer, Client, Config, Credentials, Error, Event, Incoming, Method, Op, Output,
    Response, TransactionId, Transport,
};

use super::conn::{timeout_reason, Conn};

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

/// 438 answers a transaction retries: the third ends it ("three times in a row").
const STALE_NONCE_RETRIES: u32 = 2;

/// A client for `conn`'s transport; every transaction waits up to `timeout` (retransmitting
/// over UDP from 500 ms, doubling, until then).
fn client(conn: &Conn, credentials: Option<&UserPass>, timeout: Duration) -> Client {
    let transport = if conn.is_stream() {
        Transport::Stream
    } else {
        Transport::Udp
    };
    let credentials = credentials.map(|c| Credentials::new(&c.username, &c.password));
    let mut config = Config::new(transport, credentials);
    config.timeout = timeout;
    config.max_transmits = u32::MAX;
    config.stale_nonce_retries = STALE_NONCE_RETRIES;
    Client::new(config, rand::random())
}

/// Why a transaction gave no answer: the connection, or the protocol.
enum Failure {
    Io(String),
    Client(Error),
}

/// Runs `client`'s transaction `id` over `conn` to its end: sends what the client asks,
/// hands it what arrives, wakes it when its timer is due. Returns the answer and the time
/// since the request's last transmission.
fn run(
    conn: &mut Conn,
    client: &mut Client,
    id: TransactionId,
) -> Result<(Answer, Duration), Failure> {
    let timeout = client.config().timeout;
    let mut sent_at = Instant::now();
    loop {
        while let Some(output) = client.poll_output() {
            match output {
                Output::Transmit(bytes) => {
                    conn.send(&bytes)
                        .map_err(|e| Failure::Io(conn.describe(&e, timeout)))?;
                    sent_at = Instant::now();
                }
                Output::Event(Event::Answered {
                    id: done, answer, ..
                }) if done == id => return Ok((answer, sent_at.elapsed())),
                Output::Event(Event::Failed {
                    id: done, error, ..
                }) if done == id => return Err(Failure::Client(error)),
                Output::Event(_) => {}
            }
        }
        let Some(wake) = client.poll_timeout() else {
            return Err(Failure::Client(Error::Timeout));
        };
        match conn.recv(wake) {
            // Relayed data arriving meanwhile is not what this waits for.
            Ok(Some(frame)) => {
                let _ = client.handle_input(Instant::now(), &frame);
            }
            Ok(None) => client.handle_timeout(Instant::now()),
            Err(e) => return Err(Failure::Io(conn.describe(&e, timeout))),
        }
    }
}

/// A transaction's end in the verdict's words: the answer if it was a success, else why not.
/// `realm` is the one the request was signed for ("" if it was not).
fn success(
    method: Method,
    outcome: Result<(Answer, Duration), Failure>,
    server: SocketAddr,
    timeout: Duration,
    realm: &str,
) -> Result<(Answer, Duration), String> {
    let name = method_name(method);
    match outcome {
        Ok((answer, rtt)) => {
            let response = answer.response();
            let Some(error) = response.error() else {
                return Ok((answer, rtt));
            };
            let (code, reason) = match error {
                Ok(e) => (e.code(), e.reason().to_owned()),
                Err(_) => (0, "error response without ERROR-CODE".to_owned()),
            };
            Err(describe_error(method, code, &reason, &response, realm))
        }
        Err(Failure::Io(reason)) => Err(reason),
        Err(Failure::Client(error)) => Err(match error {
            Error::Timeout => timeout_reason(server, timeout),
            Error::MissingRealm => format!("{name}: 401 without REALM"),
            Error::MissingNonce(438) => "438 Stale Nonce without a new NONCE".to_owned(),
            Error::MissingNonce(code) => format!("{name}: {code} without NONCE"),
            Error::NoCredentials { realm } => format!(
                "401 Unauthorized (realm \"{realm}\"): no credentials given \
                 (use --secret, --username/--password or --credentials-url)"
            ),
            Error::StaleNonce(_) => format!("{name}: 438 Stale Nonce three times in a row"),
            Error::BadIntegrity => {
                format!("{name}: the response's MESSAGE-INTEGRITY does not verify")
            }
        }),
    }
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
    response: &Response<'_>,
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
        300 => match response.alternate_server() {
            Some(alternate) => format!(
                "300 Try Alternate: the server redirects to {alternate} (probe that address)"
            ),
            None => "300 Try Alternate without ALTERNATE-SERVER".to_owned(),
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
    let mut client = client(conn, None, timeout);
    let id = client.binding(Instant::now());
    let outcome = run(conn, &mut client, id);
    let (answer, rtt) = success(BINDING, outcome, conn.server, timeout, "")?;
    let response = answer.response();
    let mapped = response
        .mapped()
        .ok_or("Binding: the response has no (XOR-)MAPPED-ADDRESS")?;
    Ok(BindingResult {
        mapped,
        rtt,
        other_address: response.other_address(),
    })
}

/// Drives the TURN part of the probe on an open connection.
pub struct TurnSession<'c> {
    conn: &'c mut Conn,
    timeout: Duration,
    /// Made by `allocate`, with the credentials it is given.
    client: Option<Client>,
    pub result: RelayResult,
}

impl<'c> TurnSession<'c> {
    pub fn new(conn: &'c mut Conn, timeout: Duration) -> Self {
        TurnSession {
            conn,
            timeout,
            client: None,
            result: RelayResult::default(),
        }
    }

    /// The local address of the connection to the server.
    pub fn local(&self) -> SocketAddr {
        self.conn.local
    }

    /// Runs `op` to its end: the success answer, or the verdict's reason.
    fn transact(&mut self, op: Op) -> Result<Answer, String> {
        let method = op.method();
        let conn = &mut *self.conn;
        let client = self
            .client
            .get_or_insert_with(|| client(conn, None, self.timeout));
        let id = client.start(Instant::now(), op);
        let outcome = run(conn, client, id);
        let realm = client.signer().map_or("", |s| s.realm()).to_owned();
        if self.result.realm.is_none() {
            self.result.realm = client.realm().map(str::to_owned);
        }
        success(method, outcome, conn.server, self.timeout, &realm).map(|(answer, _)| answer)
    }

    /// Allocate: first without credentials to learn REALM and NONCE (401), then signed.
    pub fn allocate(&mut self, user: Option<&UserPass>) -> Result<SocketAddr, String> {
        let family = match self.conn.local.ip() {
            IpAddr::V4(_) => None,
            IpAddr::V6(_) => Some(AddressFamily::IPV6),
        };
        self.client = Some(client(self.conn, user, self.timeout));
        let answer = self.transact(Op::Allocate(Allocate {
            family,
            ..Allocate::default()
        }))?;
        let response = answer.response();
        let relayed = response
            .relayed()
            .ok_or("Allocate: the response has no XOR-RELAYED-ADDRESS")?;
        self.result.lifetime = response.lifetime();
        self.result.relayed = Some(relayed);
        Ok(relayed)
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<(), String> {
        self.transact(Op::CreatePermission(vec![peer])).map(|_| ())
    }

    pub fn channel_bind(&mut self, peer: SocketAddr) -> Result<(), String> {
        self.transact(Op::ChannelBind {
            channel: CHANNEL,
            peer,
        })
        .map(|_| ())
    }

    /// Deletes the allocation (Refresh with LIFETIME 0).
    pub fn release(&mut self) -> Result<(), String> {
        self.transact(Op::Refresh { lifetime: Some(0) }).map(|_| ())
    }

    /// Sends `count` sequence-numbered packets through the channel to `peer`, which echoes
    /// each back to the relayed address; records round trips and what arrived each way.
    pub fn burst(&mut self, peer: &UdpSocket, relayed: SocketAddr, count: usize) {
        let wait = self.timeout.min(PER_PACKET_WAIT);
        let mut back = vec![false; count];
        for seq in 0..count {
            let payload = test_packet(seq as u32);
            // RFC 8656 §12.5: over streams ChannelData is padded to a multiple of 4.
            let frame = turnpike_client::channel_data(CHANNEL, &payload, self.conn.is_stream());
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
    match Incoming::parse(frame) {
        Incoming::ChannelData { channel, payload } if channel == CHANNEL => packet_seq(payload),
        Incoming::Data { payload, .. } => packet_seq(payload),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_client::Request;

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
        let request = Request::new(CREATE_PERMISSION, TransactionId::from(1)).finish(None);
        let msg = Response::parse(&request).unwrap();
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
