//! One client's transactions with one server: [`Client`].
//!
//! The caller starts requests ([`Op`]), then feeds in what arrives (`handle_input`) and the
//! passing of time (`handle_timeout` at `poll_timeout`), and after each call drains
//! `poll_output` until `None`: the datagrams or frames to send, and one [`Event`] per
//! transaction when it ends. The client answers 401 and 438 challenges itself (RFC 8489
//! §9.2.4, §9.2.5): the caller sees the server's final answer. Over UDP it retransmits
//! (§6.2.1); over TCP and TLS it sends once and waits (§6.2.2).
//!
//! What it leaves to the caller: sockets, the clock, stream framing (the core's `Framer`,
//! re-exported at the crate root), what to do with the answers, and refreshing allocations,
//! permissions and channels before they expire.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun_types::message::{Method, TransactionId};
use turnpike_proto::auth::PasswordAlgorithm;
use turnpike_proto::wire::{
    AddressFamily, ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMISSION, PROTOCOL_UDP, REFRESH,
};

use crate::message::{self, Credentials, Request, Signer};
use crate::response::{Incoming, Response};

/// The longest any timer of the client runs (a caller's timeout or a doubled RTO beyond it
/// is cut to this), so no deadline overflows `Instant`.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Requests are retransmitted; ChannelData is not padded.
    Udp,
    /// TCP or TLS: requests are sent once; ChannelData is padded to four (RFC 8656 §12.5).
    Stream,
}

/// Which long-term key and integrity attribute the client answers a challenge with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// The MD5 key and MESSAGE-INTEGRITY, never PASSWORD-ALGORITHM: what RFC 5389 clients
    /// (most WebRTC stacks among them) send, and what every TURN server accepts.
    Md5,
    /// The SHA-256 key, PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM, and
    /// MESSAGE-INTEGRITY-SHA256 when the challenge offers SHA-256 (RFC 8489 §9.2.4);
    /// otherwise as `Md5`.
    PreferSha256,
}

/// A client's settings. [`Config::new`] gives RFC 8489's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub transport: Transport,
    /// Without them a 401 ends the transaction ([`Error::NoCredentials`]).
    pub credentials: Option<Credentials>,
    pub key_choice: KeyChoice,
    /// SOFTWARE (RFC 8489 §14.14) in every request, if set.
    pub software: Option<String>,
    /// The first retransmission timeout over UDP; it doubles after each retransmission
    /// (RFC 8489 §6.2.1 recommends 500 ms).
    pub rto: Duration,
    /// Transmissions of one request over UDP, the first included (Rc = 7).
    pub max_transmits: u32,
    /// How long a request may wait for its answer, from its first transmission (Ti =
    /// 39.5 s; over UDP, with the defaults, this is also when the last wait of 16 × RTO
    /// ends). At most a day.
    pub timeout: Duration,
    /// 438 Stale Nonce answers one transaction retries with the fresh nonce; the next one
    /// ends it ([`Error::StaleNonce`]).
    pub stale_nonce_retries: u32,
}

impl Config {
    pub fn new(transport: Transport, credentials: Option<Credentials>) -> Self {
        Self {
            transport,
            credentials,
            key_choice: KeyChoice::Md5,
            software: None,
            rto: Duration::from_millis(500),
            max_transmits: 7,
            timeout: Duration::from_millis(39_500),
            stale_nonce_retries: 2,
        }
    }
}

/// An Allocate request's attributes (RFC 8656 §7.1). `Default`: a UDP relay, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    /// REQUESTED-TRANSPORT's protocol number (17, UDP, is the only one RFC 8656 defines).
    pub transport: u8,
    /// REQUESTED-ADDRESS-FAMILY (RFC 6156); the server's default is IPv4.
    pub family: Option<AddressFamily>,
    /// ADDITIONAL-ADDRESS-FAMILY: a second relay of the other family (RFC 8656 §7.1).
    pub additional_family: Option<AddressFamily>,
    /// EVEN-PORT, reserving the next port too if `Some(true)`.
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN of a port reserved by an earlier EVEN-PORT.
    pub reservation_token: Option<u64>,
    /// LIFETIME in seconds; the server clamps it.
    pub lifetime: Option<u32>,
    pub dont_fragment: bool,
}

impl Default for Allocate {
    fn default() -> Self {
        Self {
            transport: PROTOCOL_UDP,
            family: None,
            additional_family: None,
            even_port: None,
            reservation_token: None,
            lifetime: None,
            dont_fragment: false,
        }
    }
}

impl Allocate {
    fn write(&self, request: &mut Request) {
        request.requested_transport(self.transport);
        if let Some(family) = self.family {
            request.requested_family(family);
        }
        if let Some(family) = self.additional_family {
            request.additional_family(family);
        }
        if let Some(reserve) = self.even_port {
            request.even_port(reserve);
        }
        if let Some(token) = self.reservation_token {
            request.reservation_token(token);
        }
        if let Some(seconds) = self.lifetime {
            request.lifetime(seconds);
        }
        if self.dont_fragment {
            request.dont_fragment();
        }
    }
}

/// A request the client can make, kept as data so it can be written again with a new
/// transaction id and credentials after a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Binding (RFC 8489): never signed, the server answers it without credentials.
    Binding,
    Allocate(Allocate),
    /// Refresh with LIFETIME if given; 0 deletes the allocation (RFC 8656 §8).
    Refresh {
        lifetime: Option<u32>,
    },
    /// CreatePermission for every peer's IP (RFC 8656 §9).
    CreatePermission(Vec<SocketAddr>),
    ChannelBind {
        channel: u16,
        peer: SocketAddr,
    },
}

impl Op {
    pub fn method(&self) -> Method {
        match self {
            Op::Binding => BINDING,
            Op::Allocate(_) => ALLOCATE,
            Op::Refresh { .. } => REFRESH,
            Op::CreatePermission(_) => CREATE_PERMISSION,
            Op::ChannelBind { .. } => CHANNEL_BIND,
        }
    }

    fn write(&self, request: &mut Request) {
        match self {
            Op::Binding => {}
            Op::Allocate(allocate) => allocate.write(request),
            Op::Refresh { lifetime } => {
                if let Some(seconds) = lifetime {
                    request.lifetime(*seconds);
                }
            }
            Op::CreatePermission(peers) => {
                for peer in peers {
                    request.peer(*peer);
                }
            }
            Op::ChannelBind { channel, peer } => {
                request.channel(*channel).peer(*peer);
            }
        }
    }
}

/// What the caller must do.
#[must_use]
#[derive(Debug)]
pub enum Output {
    /// Send these bytes to the server (one datagram, or written to the stream).
    Transmit(Vec<u8>),
    Event(Event),
}

/// How a transaction ended. `id` is what `start` returned, even when the request that got
/// the answer went out again under another id after a challenge.
#[derive(Debug)]
pub enum Event {
    /// The server's answer: a success (verified when the request was signed) or an error
    /// the client does not handle itself (anything but a 401 it could answer and 438).
    Answered {
        id: TransactionId,
        method: Method,
        answer: Answer,
    },
    /// No usable answer.
    Failed {
        id: TransactionId,
        method: Method,
        error: Error,
    },
}

impl Event {
    pub fn id(&self) -> TransactionId {
        match self {
            Event::Answered { id, .. } | Event::Failed { id, .. } => *id,
        }
    }
}

/// A response the server sent, kept.
#[derive(Debug, Clone)]
pub struct Answer(Vec<u8>);

impl Answer {
    pub fn response(&self) -> Response<'_> {
        // The bytes parsed when they arrived and have not changed since.
        Response::parse(&self.0).expect("an answer parsed on arrival")
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Why a transaction ended without a usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No answer by the deadline, or none after the last retransmission.
    #[error("no answer")]
    Timeout,
    /// A 401 without REALM: nothing to derive the key from.
    #[error("401 without REALM")]
    MissingRealm,
    /// A 401 or 438 (the code) without NONCE.
    #[error("{0} without NONCE")]
    MissingNonce(u16),
    /// The server asks for credentials and the client has none.
    #[error("401 Unauthorized (realm \"{realm}\") and no credentials")]
    NoCredentials { realm: String },
    /// 438 Stale Nonce this many times in a row.
    #[error("438 Stale Nonce {0} times in a row")]
    StaleNonce(u32),
    /// A success answer to a signed request whose integrity does not verify. It ends the
    /// transaction, so a server signing with other credentials is reported, not waited out.
    #[error("the response's MESSAGE-INTEGRITY does not verify")]
    BadIntegrity,
}

/// Data from a peer, handed back directly from `handle_input`: no copy, no queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A Data indication's payload (RFC 8656 §11.4).
    Data { peer: SocketAddr, payload: &'a [u8] },
    /// A ChannelData payload (RFC 8656 §12.4), padding removed.
    ChannelData { channel: u16, payload: &'a [u8] },
}

struct Transaction {
    /// The caller's handle: the first request's id.
    id: TransactionId,
    /// The id of the request on the wire now.
    wire: TransactionId,
    op: Op,
    request: Vec<u8>,
    signed: bool,
    stale_nonces: u32,
    transmits: u32,
    rto: Duration,
    /// Over UDP, when to retransmit or, after the last transmission, give up.
    retransmit_at: Option<Instant>,
    deadline: Instant,
}

/// A STUN/TURN client for one server: see the module documentation for the contract.
pub struct Client {
    config: Config,
    rng: StdRng,
    /// Set by the first challenge answered; every later request is signed from the start.
    signer: Option<Signer>,
    /// The last REALM the server named.
    realm: Option<String>,
    transactions: Vec<Transaction>,
    output: VecDeque<Output>,
}

impl Client {
    /// `seed` is all the randomness the client uses: its transaction ids come from a
    /// CSPRNG seeded with it (RFC 8489 §6). Drivers pass OS randomness; tests a constant.
    pub fn new(config: Config, seed: [u8; 32]) -> Self {
        Self {
            config,
            rng: StdRng::from_seed(seed),
            signer: None,
            realm: None,
            transactions: Vec::new(),
            output: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A fresh transaction id from the client's RNG.
    pub fn transaction_id(&mut self) -> TransactionId {
        TransactionId::from(self.rng.random::<u128>())
    }

    /// Starts a transaction: its request is the next output. Returns its id, which the
    /// [`Event`] that ends it carries.
    pub fn start(&mut self, now: Instant, op: Op) -> TransactionId {
        let id = self.transaction_id();
        self.transactions.push(Transaction {
            id,
            wire: id,
            op,
            request: Vec::new(),
            signed: false,
            stale_nonces: 0,
            transmits: 0,
            rto: Duration::ZERO,
            retransmit_at: None,
            deadline: now,
        });
        let last = self.transactions.len() - 1;
        self.send_request(now, last, id);
        id
    }

    pub fn binding(&mut self, now: Instant) -> TransactionId {
        self.start(now, Op::Binding)
    }

    pub fn allocate(&mut self, now: Instant, allocate: Allocate) -> TransactionId {
        self.start(now, Op::Allocate(allocate))
    }

    pub fn refresh(&mut self, now: Instant, lifetime: u32) -> TransactionId {
        self.start(
            now,
            Op::Refresh {
                lifetime: Some(lifetime),
            },
        )
    }

    pub fn create_permission(&mut self, now: Instant, peers: &[SocketAddr]) -> TransactionId {
        self.start(now, Op::CreatePermission(peers.to_vec()))
    }

    pub fn channel_bind(&mut self, now: Instant, channel: u16, peer: SocketAddr) -> TransactionId {
        self.start(now, Op::ChannelBind { channel, peer })
    }

    /// A Send indication of `payload` to `peer` (not signed, not retransmitted: RFC 8656
    /// §11.1); the caller sends it.
    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let transaction = self.transaction_id();
        message::send_indication(transaction, peer, payload)
    }

    /// A ChannelData message, padded if the transport is a stream.
    pub fn channel_data(&self, channel: u16, payload: &[u8]) -> Vec<u8> {
        message::channel_data(channel, payload, self.config.transport == Transport::Stream)
    }

    /// One datagram or stream frame from the server. Responses end or continue their
    /// transaction (drain `poll_output` afterwards); relayed data comes back here.
    pub fn handle_input<'a>(&mut self, now: Instant, data: &'a [u8]) -> Option<Received<'a>> {
        match Incoming::parse(data) {
            Incoming::Response(response) => {
                self.on_response(now, &response, data);
                None
            }
            Incoming::Data { peer, payload } => Some(Received::Data { peer, payload }),
            Incoming::ChannelData { channel, payload } => {
                Some(Received::ChannelData { channel, payload })
            }
            Incoming::Other => None,
        }
    }

    /// Retransmits what is due and ends what has timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.transactions.len() {
            let tx = &mut self.transactions[i];
            if now >= tx.deadline {
                self.fail(i, Error::Timeout);
                continue;
            }
            if tx.retransmit_at.is_some_and(|at| now >= at) {
                if tx.transmits >= self.config.max_transmits {
                    self.fail(i, Error::Timeout);
                    continue;
                }
                tx.transmits += 1;
                tx.rto = tx.rto.saturating_mul(2).min(MAX_WAIT);
                tx.retransmit_at = Some(now + tx.rto);
                self.output.push_back(Output::Transmit(tx.request.clone()));
            }
            i += 1;
        }
    }

    /// When `handle_timeout` is next due, if anything is in flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions
            .iter()
            .map(|tx| {
                tx.retransmit_at
                    .map_or(tx.deadline, |at| at.min(tx.deadline))
            })
            .min()
    }

    /// The next thing to send or report; drain until `None` after every call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.output.pop_front()
    }

    /// The realm of the last challenge, if there was one.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// The credentials, realm and nonce the client signs with, once it has them.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// Signs from the first request with `signer`: a realm and nonce learnt by another
    /// client of the same source (turnpike binds nonces to the client's IP), so no 401.
    pub fn set_signer(&mut self, signer: Signer) {
        self.realm = Some(signer.realm().to_owned());
        self.signer = Some(signer);
    }

    /// Transactions not yet ended.
    pub fn in_flight(&self) -> usize {
        self.transactions.len()
    }

    /// Writes the request of transaction `i` under id `wire`, signed if the client can,
    /// and queues its first transmission.
    fn send_request(&mut self, now: Instant, i: usize, wire: TransactionId) {
        let signer = self.signer.as_ref();
        let tx = &mut self.transactions[i];
        let signer = signer.filter(|_| tx.op != Op::Binding);
        let mut request = Request::new(tx.op.method(), wire);
        tx.op.write(&mut request);
        if let Some(software) = &self.config.software {
            request.software(software);
        }
        tx.wire = wire;
        tx.request = request.finish(signer);
        tx.signed = signer.is_some();
        tx.transmits = 1;
        tx.rto = self.config.rto.min(MAX_WAIT);
        tx.retransmit_at = (self.config.transport == Transport::Udp).then(|| now + tx.rto);
        tx.deadline = now + self.config.timeout.min(MAX_WAIT);
        self.output.push_back(Output::Transmit(tx.request.clone()));
    }

    fn on_response(&mut self, now: Instant, response: &Response<'_>, data: &[u8]) {
        let Some(i) = self
            .transactions
            .iter()
            .position(|tx| tx.wire == response.transaction_id())
        else {
            return;
        };
        let tx = &self.transactions[i];
        if tx.op.method() != response.method() {
            return;
        }
        if response.is_success() {
            let verified = match (&self.signer, tx.signed) {
                (Some(signer), true) => response.verify(signer.key().as_ref()),
                _ => true,
            };
            if verified {
                self.answer(i, data);
            } else {
                self.fail(i, Error::BadIntegrity);
            }
            return;
        }
        match response.error_code() {
            Some(401) if tx.op != Op::Binding && !tx.signed => {
                self.on_unauthorized(now, i, response)
            }
            Some(438) if tx.signed => self.on_stale_nonce(now, i, response, data),
            _ => self.answer(i, data),
        }
    }

    /// 401 to an unsigned request: derive the key from its REALM and NONCE and send the
    /// request again, signed (RFC 8489 §9.2.4). A 401 to a signed request is the answer.
    fn on_unauthorized(&mut self, now: Instant, i: usize, response: &Response<'_>) {
        let Some(realm) = response.realm() else {
            return self.fail(i, Error::MissingRealm);
        };
        self.realm = Some(realm.clone());
        let Some(nonce) = response.nonce() else {
            return self.fail(i, Error::MissingNonce(401));
        };
        let Some(credentials) = &self.config.credentials else {
            return self.fail(i, Error::NoCredentials { realm });
        };
        let mut signer = credentials.signer(&realm, &nonce);
        if self.config.key_choice == KeyChoice::PreferSha256 {
            if let Some(offered) = response
                .password_algorithms()
                .filter(|list| offers(list, PasswordAlgorithm::Sha256))
            {
                signer = signer.negotiate(PasswordAlgorithm::Sha256, &offered);
            }
        }
        self.signer = Some(signer);
        let wire = self.transaction_id();
        self.send_request(now, i, wire);
    }

    /// 438 to a signed request: take the fresh NONCE (and REALM) and send it again
    /// (RFC 8489 §9.2.5), a bounded number of times.
    fn on_stale_nonce(&mut self, now: Instant, i: usize, response: &Response<'_>, data: &[u8]) {
        let Some(nonce) = response.nonce() else {
            return self.fail(i, Error::MissingNonce(438));
        };
        let Some(signer) = &mut self.signer else {
            return self.answer(i, data);
        };
        signer.set_nonce(&nonce);
        if let Some(realm) = response.realm() {
            signer.set_realm(&realm);
            self.realm = Some(realm);
        }
        let tx = &mut self.transactions[i];
        tx.stale_nonces += 1;
        if tx.stale_nonces > self.config.stale_nonce_retries {
            let times = tx.stale_nonces;
            return self.fail(i, Error::StaleNonce(times));
        }
        let wire = self.transaction_id();
        self.send_request(now, i, wire);
    }

    fn answer(&mut self, i: usize, data: &[u8]) {
        let tx = self.transactions.remove(i);
        self.output.push_back(Output::Event(Event::Answered {
            id: tx.id,
            method: tx.op.method(),
            answer: Answer(data.to_vec()),
        }));
    }

    fn fail(&mut self, i: usize, error: Error) {
        let tx = self.transactions.remove(i);
        self.output.push_back(Output::Event(Event::Failed {
            id: tx.id,
            method: tx.op.method(),
            error,
        }));
    }
}

/// Whether a PASSWORD-ALGORITHMS value (RFC 8489 §14.12: algorithm, parameter length,
/// parameters padded to four, repeated) lists `algorithm`.
fn offers(list: &[u8], algorithm: PasswordAlgorithm) -> bool {
    let mut rest = list;
    while let [a, b, c, d, tail @ ..] = rest {
        if u16::from_be_bytes([*a, *b]) == algorithm.number() {
            return true;
        }
        let params = usize::from(u16::from_be_bytes([*c, *d])).next_multiple_of(4);
        rest = tail.get(params..).unwrap_or_default();
    }
    false
}
