//! The control plane of the benchmark: N allocations driven concurrently through
//! Allocate (401/438 handled) → CreatePermission → ChannelBind, and deleted again with
//! Refresh(LIFETIME=0). One socket per allocation, a bounded window of transactions in
//! flight, retransmission with backoff, everything bounded in time.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;

use turnpike_client::wire::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, PROTOCOL_UDP, REFRESH};
use turnpike_client::{Request, Response, Signer, TransactionId};

use crate::sys::{self, Epoll};

/// First retransmission timeout; doubles per retry.
const RTO_NS: u64 = 250_000_000;
const MAX_TRIES: u32 = 6;
/// 401/438 answers accepted per transaction before giving up.
const MAX_AUTH_RETRIES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Allocate,
    Permission,
    Bind,
    Delete,
    Done,
    Failed,
}

pub struct Alloc {
    /// Shared with the sending thread's flow: one descriptor per allocation, so 10,000 fit
    /// in a 20,000-file limit.
    pub sock: Arc<UdpSocket>,
    pub username: String,
    password: String,
    /// `--realm`, else the one the first challenge names.
    realm: Option<String>,
    /// The realm, nonce and key once a challenge (or another allocation) supplied them.
    signer: Option<Signer>,
    step: Step,
    tid: TransactionId,
    req: Vec<u8>,
    deadline: u64,
    tries: u32,
    auth_retries: u32,
    pub relayed: Option<SocketAddrV4>,
    pub peer: Option<SocketAddrV4>,
    pub channel: u16,
    pub error: Option<String>,
}

impl Alloc {
    pub fn new(sock: UdpSocket, username: String, password: String, realm: Option<String>) -> Self {
        Alloc {
            sock: Arc::new(sock),
            username,
            password,
            realm,
            signer: None,
            step: Step::Done,
            tid: TransactionId::from(0),
            req: Vec::new(),
            deadline: 0,
            tries: 0,
            auth_retries: 0,
            relayed: None,
            peer: None,
            channel: 0x4000,
            error: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn build(&mut self) {
        self.tid = TransactionId::from(rand::random::<u128>());
        let peer = || SocketAddr::V4(self.peer.expect("peer"));
        let mut request = match self.step {
            Step::Allocate => Request::new(ALLOCATE, self.tid),
            Step::Permission => Request::new(CREATE_PERMISSION, self.tid),
            Step::Bind => Request::new(CHANNEL_BIND, self.tid),
            Step::Delete => Request::new(REFRESH, self.tid),
            Step::Done | Step::Failed => return,
        };
        match self.step {
            Step::Allocate => request.requested_transport(PROTOCOL_UDP),
            Step::Permission => request.peer(peer()),
            Step::Bind => request.channel(self.channel).peer(peer()),
            _ => request.lifetime(0),
        };
        self.req = request.finish(self.signer.as_ref());
    }

    /// Starts with a realm and nonce another allocation of this run was given, so the first
    /// Allocate is already authenticated. A server binds nonces to the client IP (turnpike)
    /// or answers 438 with a fresh one (coturn); either way no 401 per allocation, which a
    /// server's per-source challenge cap would otherwise throttle.
    fn prime(&mut self, realm: &str, nonce: &str) {
        if self.signer.is_none() {
            self.signer = Some(Signer::new(&self.username, &self.password, realm, nonce));
            self.realm = Some(realm.to_owned());
        }
    }

    fn transmit(&mut self, now: u64) {
        let _ = self.sock.send(&self.req);
        self.deadline = now + (RTO_NS << self.tries.min(5));
    }

    fn fail(&mut self, why: String) {
        self.error = Some(why);
        self.step = Step::Failed;
    }

    /// Moves to the step after `self.step`, given what the run wants.
    fn advance(&mut self, plan: &Plan) {
        self.step = match self.step {
            Step::Allocate if plan.permission => Step::Permission,
            Step::Allocate | Step::Permission if plan.bind => Step::Bind,
            _ => Step::Done,
        };
        self.tries = 0;
        self.auth_retries = 0;
    }

    fn on_datagram(&mut self, msg: &[u8], plan: &Plan, now: u64) {
        let Ok(r) = Response::parse(msg) else {
            return;
        };
        if r.transaction_id() != self.tid || matches!(self.step, Step::Done | Step::Failed) {
            return;
        }
        if r.is_success() {
            if r.method() == ALLOCATE {
                self.relayed = match r.relayed() {
                    Some(SocketAddr::V4(relayed)) => Some(relayed),
                    _ => None,
                };
            }
            if self.step == Step::Delete {
                self.step = Step::Done;
            } else {
                self.advance(plan);
            }
        } else if r.is_error() {
            let code = r.error_code().unwrap_or(0);
            if (code == 401 || code == 438) && self.auth_retries < MAX_AUTH_RETRIES {
                self.auth_retries += 1;
                if let Some(nonce) = r.nonce() {
                    match &mut self.signer {
                        Some(signer) => signer.set_nonce(&nonce),
                        None => {
                            let realm = self.realm.clone().or(r.realm()).unwrap_or_default();
                            let signer =
                                Signer::new(&self.username, &self.password, &realm, &nonce);
                            self.signer = Some(signer);
                            self.realm = Some(realm);
                        }
                    }
                }
            } else if self.step == Step::Delete {
                // 437 (already gone) and the like: nothing left to delete.
                self.step = Step::Done;
                return;
            } else {
                self.fail(format!("{:?} failed with error {code}", self.step));
                return;
            }
        } else {
            return;
        }
        if !matches!(self.step, Step::Done | Step::Failed) {
            self.tries = 0;
            self.build();
            self.transmit(now);
        }
    }
}

pub struct Plan {
    pub permission: bool,
    pub bind: bool,
}

/// Runs every allocation in `allocs` from `first` step to done, at most `window`
/// transactions at a time; returns the elapsed nanoseconds. Failures are recorded in
/// `Alloc::error`. Bounded by `MAX_TRIES` retransmissions per transaction.
fn drive(allocs: &mut [Alloc], first: Step, plan: &Plan, window: usize) -> io::Result<u64> {
    let ep_tokens: Vec<usize> = (0..allocs.len()).filter(|&i| allocs[i].ok()).collect();
    let mut ep = Epoll::new()?;
    for &i in &ep_tokens {
        ep.add(sys::fd(&allocs[i].sock), i as u64)?;
    }
    let start = sys::now_ns();
    let mut queue = ep_tokens.into_iter();
    let mut active: Vec<usize> = Vec::new();
    let mut ready = Vec::new();
    let mut buf = [0u8; 2048];
    // The first realm and nonce any allocation learns, handed to the ones not started yet.
    let mut shared: Option<(String, String)> = None;
    loop {
        let now = sys::now_ns();
        while active.len() < window.max(1) {
            let Some(i) = queue.next() else { break };
            let a = &mut allocs[i];
            if let Some((realm, nonce)) = &shared {
                a.prime(realm, nonce);
            }
            a.step = first;
            a.tries = 0;
            a.auth_retries = 0;
            a.build();
            a.transmit(now);
            active.push(i);
        }
        if active.is_empty() {
            break;
        }
        let next = active
            .iter()
            .map(|&i| allocs[i].deadline)
            .min()
            .unwrap_or(now);
        let wait_ms = (next.saturating_sub(now) / 1_000_000 + 1).min(1000) as i32;
        ep.wait(wait_ms, &mut ready)?;
        let now = sys::now_ns();
        for &t in &ready {
            let a = &mut allocs[t as usize];
            while let Ok(n) = a.sock.recv(&mut buf) {
                a.on_datagram(&buf[..n], plan, now);
            }
            if shared.is_none() {
                shared = a
                    .signer
                    .as_ref()
                    .map(|s| (s.realm().to_owned(), s.nonce().to_owned()));
            }
        }
        for &i in &active {
            let a = &mut allocs[i];
            if matches!(a.step, Step::Done | Step::Failed) || now < a.deadline {
                continue;
            }
            a.tries += 1;
            if a.tries >= MAX_TRIES {
                if a.step == Step::Delete {
                    a.step = Step::Done;
                } else {
                    let step = a.step;
                    a.fail(format!("{step:?}: no response after {MAX_TRIES} tries"));
                }
            } else {
                a.transmit(now);
            }
        }
        active.retain(|&i| !matches!(allocs[i].step, Step::Done | Step::Failed));
    }
    Ok(sys::now_ns() - start)
}

/// Allocate (+ CreatePermission + ChannelBind as `plan` says) for every allocation.
pub fn create(allocs: &mut [Alloc], plan: &Plan, window: usize) -> io::Result<u64> {
    drive(allocs, Step::Allocate, plan, window)
}

/// Refresh(LIFETIME=0) for every allocation that was created.
pub fn delete(allocs: &mut [Alloc], window: usize) -> io::Result<u64> {
    let plan = Plan {
        permission: false,
        bind: false,
    };
    drive(allocs, Step::Delete, &plan, window)
}

/// Binds `n` client sockets: kernel-chosen ports, or sequentially from `range` skipping
/// ports in use (keeps clients out of the server's relay port range).
pub fn client_sockets(
    n: usize,
    lo: std::net::Ipv4Addr,
    range: Option<(u16, u16)>,
) -> io::Result<Vec<UdpSocket>> {
    let mut out = Vec::with_capacity(n);
    match range {
        None => {
            for _ in 0..n {
                out.push(sys::udp_socket(SocketAddrV4::new(lo, 0))?);
            }
        }
        Some((first, last)) => {
            let mut port = first as u32;
            while out.len() < n {
                if port > last as u32 {
                    return Err(io::Error::other(format!(
                        "--client-ports {first}-{last}: only {} free ports, {n} needed",
                        out.len()
                    )));
                }
                match sys::udp_socket(SocketAddrV4::new(lo, port as u16)) {
                    Ok(s) => out.push(s),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                    Err(e) => return Err(e),
                }
                port += 1;
            }
        }
    }
    Ok(out)
}
