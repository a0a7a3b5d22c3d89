//! Raw STUN/TURN messages and blocking clients for the tests that speak the protocol
//! themselves, on turnpike-client's codec: requests written by `Request` and signed by a
//! `Signer` (RFC 8489 §9.2), an owned response (`Resp`) read through `Response`, and minimal
//! TURN clients over UDP (`UdpTurn`, one 5-tuple) and TCP (`TcpTurn`, frames cut by the
//! client's `Framer`, RFC 8656 §12.5). What stays here is the socket I/O, the tests' own
//! nonce handling (they assert the 401s and 438s), and builders of malformed input.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use stun_types::attribute::AttributeType;
use stun_types::message::{Message, MessageWriteExt, MessageWriteVec, Method, TransactionId};
use turn_types::attribute::{
    AdditionalAddressFamily, RequestedAddressFamily, RequestedTransport, XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use turn_types::AddressFamily;
use turnpike_client::{Framer, Request, Response, Signer};

use crate::harness::{rest_credentials, Server, REALM, SECRET};

/// How long a response may take on loopback.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// Adds a request's own attributes (before USERNAME/REALM/NONCE/MESSAGE-INTEGRITY). Gets the
/// transaction ID for the XOR-encoded addresses.
pub type Attrs<'a> = &'a dyn Fn(&mut MessageWriteVec, TransactionId);

/// No attributes of the request's own.
pub fn no_attrs(_: &mut MessageWriteVec, _: TransactionId) {}

/// REQUESTED-TRANSPORT UDP.
pub fn udp_transport(w: &mut MessageWriteVec, _: TransactionId) {
    w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
        .unwrap();
}

/// REQUESTED-TRANSPORT UDP and REQUESTED-ADDRESS-FAMILY IPv6: an Allocate for an IPv6 relay
/// (RFC 6156).
pub fn ipv6_relay(w: &mut MessageWriteVec, tid: TransactionId) {
    udp_transport(w, tid);
    w.add_attribute(&RequestedAddressFamily::new(AddressFamily::IPV6))
        .unwrap();
}

/// REQUESTED-TRANSPORT UDP and ADDITIONAL-ADDRESS-FAMILY IPv6: an Allocate for an IPv4 and
/// an IPv6 relay (RFC 8656 §7.2, dual allocation).
pub fn dual_relay(w: &mut MessageWriteVec, tid: TransactionId) {
    udp_transport(w, tid);
    w.add_attribute(&AdditionalAddressFamily::new(AddressFamily::IPV6))
        .unwrap();
}

/// XOR-PEER-ADDRESS `peer`: CreatePermission's attribute.
fn peer_address(peer: SocketAddr) -> impl Fn(&mut Request) {
    move |r| {
        r.peer(peer);
    }
}

/// CHANNEL-NUMBER `channel` and XOR-PEER-ADDRESS `peer`: ChannelBind's attributes.
fn channel_binding(channel: u16, peer: SocketAddr) -> impl Fn(&mut Request) {
    move |r| {
        r.channel(channel).peer(peer);
    }
}

/// A request with `attrs`, signed for `auth = (username, password, nonce)` if given (the
/// MD5 key and MESSAGE-INTEGRITY), with FINGERPRINT.
pub fn build_request(method: Method, attrs: Attrs, auth: Option<(&str, &str, &str)>) -> Vec<u8> {
    build(
        method,
        &|r| {
            r.with_writer(attrs);
        },
        auth,
    )
}

/// [`build_request`] with the attributes written by the client's own `Request` methods.
fn build(
    method: Method,
    attrs: &dyn Fn(&mut Request),
    auth: Option<(&str, &str, &str)>,
) -> Vec<u8> {
    let mut request = Request::new(method, TransactionId::generate());
    attrs(&mut request);
    let signer = auth.map(|(user, pass, nonce)| Signer::new(user, pass, REALM, nonce));
    request.finish(signer.as_ref())
}

/// An Allocate request (REQUESTED-TRANSPORT UDP), signed for `auth = (username, password,
/// nonce)` if given, with FINGERPRINT.
pub fn allocate_request(auth: Option<(&str, &str, &str)>) -> Vec<u8> {
    build_request(ALLOCATE, &udp_transport, auth)
}

/// The transaction ID of a message, read from its header (the message may be corrupt).
pub fn txid_of(request: &[u8]) -> TransactionId {
    let bytes: [u8; 12] = request[8..20]
        .try_into()
        .expect("request has a STUN header");
    let mut full = [0u8; 16];
    full[4..].copy_from_slice(&bytes);
    TransactionId::from(u128::from_be_bytes(full))
}

/// A bare STUN header: type, length, magic cookie, transaction ID (for malformed input).
pub fn stun_header(msg_type: u16, length: u16, txid: [u8; 12]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&msg_type.to_be_bytes());
    m.extend_from_slice(&length.to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&txid);
    m
}

/// A ChannelData message (RFC 8656 §12.4), unpadded as over UDP.
pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    turnpike_client::channel_data(channel, payload, false)
}

/// The next datagram on `sock` within `wait`, with its sender.
pub fn recv_from(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 65_536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// A STUN response, owned.
pub struct Resp(pub Vec<u8>);

impl Resp {
    pub fn msg(&self) -> Message<'_> {
        Message::from_bytes(&self.0).expect("response parses as STUN")
    }

    /// The client's view of it.
    pub fn response(&self) -> Response<'_> {
        Response::parse(&self.0).expect("response parses as STUN")
    }

    pub fn is_success(&self) -> bool {
        self.response().is_success()
    }

    /// The ERROR-CODE of an error response (panics if it has none), `None` otherwise.
    pub fn code(&self) -> Option<u16> {
        self.response().error().map(|error| {
            error
                .map(|e| e.code())
                .unwrap_or_else(|e| panic!("error response without a valid ERROR-CODE: {e:?}"))
        })
    }

    pub fn nonce(&self) -> Option<String> {
        self.response().nonce()
    }

    pub fn realm(&self) -> Option<String> {
        self.response().realm()
    }

    pub fn has(&self, atype: AttributeType) -> bool {
        self.response().has(atype)
    }

    /// The XOR-RELAYED-ADDRESS; panics (naming the response) if there is none.
    pub fn relayed(&self) -> SocketAddr {
        self.try_relayed()
            .unwrap_or_else(|| panic!("no XOR-RELAYED-ADDRESS in {}", self.describe()))
    }

    /// Every XOR-RELAYED-ADDRESS (two for a dual allocation), in order.
    pub fn relayed_all(&self) -> Vec<SocketAddr> {
        let msg = self.msg();
        (0..)
            .map_while(|n| msg.nth_attribute::<XorRelayedAddress>(n).ok())
            .map(|a| a.addr(msg.transaction_id()))
            .collect()
    }

    /// The XOR-RELAYED-ADDRESS, if present.
    pub fn try_relayed(&self) -> Option<SocketAddr> {
        self.response().relayed()
    }

    /// "Allocate success" or "Allocate error 401 (Unauthorized)", for failure messages.
    pub fn describe(&self) -> String {
        self.response().describe()
    }

    pub fn expect_success(self, what: &str) -> Resp {
        assert!(
            self.is_success(),
            "{what}: expected success, got {}",
            self.describe()
        );
        self
    }

    pub fn expect_error(self, code: u16, what: &str) -> Resp {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected error {code}, got {}",
            self.describe()
        );
        self
    }
}

// ---------------------------------------------------------------------------------------
// TURN over UDP
// ---------------------------------------------------------------------------------------

/// A TURN client on its own 127.0.0.1 UDP socket (one 5-tuple).
pub struct UdpTurn {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    username: String,
    password: String,
    nonce: Option<String>,
}

impl UdpTurn {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> UdpTurn {
        UdpTurn::new_from(Ipv4Addr::LOCALHOST, server, username, password)
    }

    /// A client whose socket is bound to `ip` (another loopback address, as another source,
    /// or `::1`).
    pub fn new_from(
        ip: impl Into<IpAddr>,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> UdpTurn {
        let sock = UdpSocket::bind((ip.into(), 0)).expect("bind client socket");
        UdpTurn {
            sock,
            server,
            username: username.to_string(),
            password: password.to_string(),
            nonce: None,
        }
    }

    /// A client with valid REST credentials for `user`.
    pub fn rest(server: &Server, user: &str) -> UdpTurn {
        UdpTurn::rest_from(Ipv4Addr::LOCALHOST, server, user)
    }

    /// [`UdpTurn::rest`] from another source address.
    pub fn rest_from(ip: Ipv4Addr, server: &Server, user: &str) -> UdpTurn {
        let (username, password) = rest_credentials(SECRET, user, 3600);
        UdpTurn::new_from(ip, server.udp, &username, &password)
    }

    pub fn send_raw(&self, data: &[u8]) {
        self.sock
            .send_to(data, self.server)
            .expect("send to server");
    }

    /// Sends `request` and waits up to `wait` for the response with its transaction ID;
    /// other datagrams are skipped.
    pub fn try_transact(&self, request: &[u8], wait: Duration) -> Option<Resp> {
        let tid = txid_of(request);
        self.send_raw(request);
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != self.server || n < 20 || buf[0] > 0x03 {
                        continue;
                    }
                    if let Ok(msg) = Response::parse(&buf[..n]) {
                        if msg.transaction_id() == tid && msg.is_response() {
                            return Some(Resp(buf[..n].to_vec()));
                        }
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("recv from server: {e}"),
            }
        }
    }

    pub fn transact(&self, request: &[u8]) -> Resp {
        self.try_transact(request, RESPONSE_TIMEOUT)
            .unwrap_or_else(|| {
                panic!(
                    "no response to request type 0x{:02x}{:02x} within {RESPONSE_TIMEOUT:?}",
                    request[0], request[1]
                )
            })
    }

    /// The request without any credentials.
    pub fn unauthenticated(&self, method: Method, attrs: Attrs) -> Resp {
        self.transact(&build_request(method, attrs, None))
    }

    /// The request signed with this client's credentials and `nonce`.
    pub fn signed(&self, method: Method, attrs: Attrs, nonce: &str) -> Resp {
        self.signed_with(
            method,
            &|r| {
                r.with_writer(attrs);
            },
            nonce,
        )
    }

    fn signed_with(&self, method: Method, attrs: &dyn Fn(&mut Request), nonce: &str) -> Resp {
        self.transact(&build(
            method,
            attrs,
            Some((&self.username, &self.password, nonce)),
        ))
    }

    /// Gets a nonce from a 401 to an unauthenticated request (RFC 8489 §9.2.4).
    pub fn fetch_nonce(&mut self) -> String {
        let resp = self.unauthenticated(ALLOCATE, &udp_transport);
        let resp = resp.expect_error(401, "Allocate without credentials");
        let nonce = resp.nonce().expect("401 without NONCE");
        self.nonce = Some(nonce.clone());
        nonce
    }

    /// An authenticated request: gets a nonce first if needed and retries once on 438.
    pub fn request(&mut self, method: Method, attrs: Attrs) -> Resp {
        self.request_with(method, &|r| {
            r.with_writer(attrs);
        })
    }

    fn request_with(&mut self, method: Method, attrs: &dyn Fn(&mut Request)) -> Resp {
        let nonce = match &self.nonce {
            Some(n) => n.clone(),
            None => self.fetch_nonce(),
        };
        let resp = self.signed_with(method, attrs, &nonce);
        if resp.code() == Some(438) {
            let fresh = resp.nonce().expect("438 without NONCE");
            self.nonce = Some(fresh.clone());
            return self.signed_with(method, attrs, &fresh);
        }
        resp
    }

    pub fn allocate(&mut self) -> Resp {
        self.request(ALLOCATE, &udp_transport)
    }

    /// An Allocate with the request's own attributes (`ipv6_relay`, `dual_relay`).
    pub fn allocate_with(&mut self, attrs: Attrs) -> Resp {
        self.request(ALLOCATE, attrs)
    }

    pub fn refresh(&mut self, lifetime: u32) -> Resp {
        self.request_with(REFRESH, &move |r| {
            r.lifetime(lifetime);
        })
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Resp {
        self.request_with(CREATE_PERMISSION, &peer_address(peer))
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Resp {
        self.request_with(CHANNEL_BIND, &channel_binding(channel, peer))
    }

    /// A Send indication (RFC 8656 §11.1) to `peer`; indications are not signed.
    pub fn send_indication(&self, peer: SocketAddr, payload: &[u8]) {
        self.send_raw(&turnpike_client::send_indication(
            TransactionId::generate(),
            peer,
            payload,
        ));
    }

    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        self.send_raw(&channel_data(channel, payload));
    }

    /// Next datagram from the server within `wait`.
    pub fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        recv_from(&self.sock, wait).map(|(data, _)| data)
    }
}

// ---------------------------------------------------------------------------------------
// TURN over TCP
// ---------------------------------------------------------------------------------------

/// A TURN client on one TCP connection to the server.
pub struct TcpTurn {
    pub stream: TcpStream,
    username: String,
    password: String,
    nonce: Option<String>,
    /// Bytes read and not yet handed out as frames.
    framer: Framer,
}

impl TcpTurn {
    pub fn connect(server: SocketAddr, username: &str, password: &str) -> TcpTurn {
        let stream = TcpStream::connect_timeout(&server, RESPONSE_TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP connect to {server}: {e}"));
        TcpTurn::on(stream, username, password)
    }

    /// A client on a connection made by the caller (with its own socket options, say).
    pub fn on(stream: TcpStream, username: &str, password: &str) -> TcpTurn {
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        TcpTurn {
            stream,
            username: username.to_string(),
            password: password.to_string(),
            nonce: None,
            framer: Framer::new(),
        }
    }

    /// The nonce this client authenticates with, once it has one.
    pub fn nonce(&self) -> Option<String> {
        self.nonce.clone()
    }

    /// A client with valid REST credentials for `user`, connected to `server`.
    pub fn rest(server: SocketAddr, user: &str) -> TcpTurn {
        let (username, password) = rest_credentials(SECRET, user, 3600);
        TcpTurn::connect(server, &username, &password)
    }

    /// Sends `request` and reads the next STUN message: the 20-byte header, then its length.
    pub fn transact(&mut self, request: &[u8]) -> Resp {
        self.stream
            .write_all(request)
            .unwrap_or_else(|e| panic!("writing a request on {:?}: {e}", self.stream));
        let message = self
            .read_frame()
            .unwrap_or_else(|e| panic!("no response on {:?}: {e}", self.stream));
        assert!(
            message[0] & 0xc0 == 0,
            "a STUN message was expected, got frame header {:02x?}",
            &message[..4]
        );
        assert_eq!(
            txid_of(&message),
            txid_of(request),
            "response to another transaction"
        );
        Resp(message)
    }

    /// The next frame on the stream, framed by its own header (RFC 8656 §12.5): a STUN
    /// message, or a ChannelData message with its padding to a multiple of four stripped.
    pub fn read_frame(&mut self) -> std::io::Result<Vec<u8>> {
        let mut buf = [0u8; 4096];
        loop {
            let next = self
                .framer
                .next_frame()
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
            if let Some(range) = next {
                let mut frame = self.framer.data()[range].to_vec();
                if frame[0] & 0xc0 != 0 {
                    frame.truncate(4 + usize::from(u16::from_be_bytes([frame[2], frame[3]])));
                }
                return Ok(frame);
            }
            match self.stream.read(&mut buf)? {
                0 => return Err(ErrorKind::UnexpectedEof.into()),
                n => self.framer.extend(&buf[..n]),
            }
        }
    }

    /// Allocate: unauthenticated for the nonce (expects 401), then signed.
    pub fn allocate(&mut self) -> Resp {
        self.request(ALLOCATE, &udp_transport)
    }

    /// An authenticated request: gets a nonce first if needed (asserting the 401), retries
    /// once on 438.
    pub fn request(&mut self, method: Method, attrs: Attrs) -> Resp {
        self.request_with(method, &|r| {
            r.with_writer(attrs);
        })
    }

    fn request_with(&mut self, method: Method, attrs: &dyn Fn(&mut Request)) -> Resp {
        let nonce = match self.nonce.clone() {
            Some(nonce) => nonce,
            None => {
                let challenge = self.transact(&allocate_request(None));
                assert_eq!(
                    challenge.code(),
                    Some(401),
                    "unauthenticated Allocate over TCP: expected 401, got {}",
                    challenge.describe()
                );
                challenge
                    .nonce()
                    .unwrap_or_else(|| panic!("401 without NONCE: {}", challenge.describe()))
            }
        };
        self.nonce = Some(nonce.clone());
        let (user, pass) = (self.username.clone(), self.password.clone());
        let resp = self.transact(&build(method, attrs, Some((&user, &pass, &nonce))));
        if resp.code() == Some(438) {
            let fresh = resp.nonce().expect("438 without NONCE");
            self.nonce = Some(fresh.clone());
            return self.transact(&build(method, attrs, Some((&user, &pass, &fresh))));
        }
        resp
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Resp {
        self.request_with(CREATE_PERMISSION, &peer_address(peer))
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Resp {
        self.request_with(CHANNEL_BIND, &channel_binding(channel, peer))
    }

    /// Sends ChannelData, padded to a multiple of four as streams require (RFC 8656 §12.5).
    pub fn send_channel_data(&mut self, channel: u16, payload: &[u8]) {
        let frame = turnpike_client::channel_data(channel, payload, true);
        self.stream.write_all(&frame).expect("write ChannelData");
    }
}
