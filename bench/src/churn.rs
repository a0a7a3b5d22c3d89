//! `turnpike-bench churn`: a bounded allocation churn for soak runs (scripts/soak.sh).
//!
//! N slots each run the whole life of a TURN allocation over and over, on a fresh client
//! socket (a new 5-tuple) every time: Allocate → CreatePermission → ChannelBind → a few
//! ChannelData packets to a peer that echoes them back → Refresh (mid-life) → Refresh
//! LIFETIME=0 (delete). Lifetimes are spread uniformly over [cycle/2, 3·cycle/2], so about N
//! allocations are live at any moment and about N/cycle are created and deleted per second.
//! One nonce (bound to the client IP by the server) is shared by all slots, so the churn
//! needs almost no 401 challenges. Everything is bounded: the duration, retransmissions
//! (6 tries from 250 ms, doubling) and 401/438 retries per transaction.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use serde_json::json;
use turnpike_client::wire::{
    self, ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, PROTOCOL_UDP, REFRESH,
};
use turnpike_client::{Credentials, Request, Response, Signer, TransactionId};

use crate::sys::{self, Epoll};

const RTO_NS: u64 = 250_000_000;
const MAX_TRIES: u32 = 6;
const MAX_AUTH_RETRIES: u32 = 3;
const PEER_TOKEN: u64 = u64::MAX;
const CHANNEL: u16 = 0x4000;

pub struct ChurnArgs {
    pub server: SocketAddrV4,
    pub secret: String,
    pub user: String,
    pub allocations: usize,
    pub duration_s: f64,
    pub cycle_s: f64,
    pub packets: u32,
    pub size: usize,
    pub report_s: f64,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for `at` to start a new allocation.
    Idle,
    Allocate,
    Permission,
    Bind,
    /// Allocated; relays, refreshes at `refresh_at`, deletes at `delete_at`.
    Live,
    Refresh,
    Delete,
}

struct Slot {
    index: usize,
    sock: Option<UdpSocket>,
    step: Step,
    /// When to act next: start (Idle), retransmit (transactions), refresh/delete (Live).
    at: u64,
    tid: TransactionId,
    req: Vec<u8>,
    tries: u32,
    auth_retries: u32,
    username: String,
    password: String,
    refresh_at: u64,
    delete_at: u64,
    refreshed: bool,
    sent: u32,
}

#[derive(Default)]
struct Counts {
    cycles: u64,
    allocated: u64,
    refreshed: u64,
    deleted: u64,
    failed: u64,
    sent: u64,
    peer_rx: u64,
    client_rx: u64,
    challenges: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

struct Shared {
    realm: Option<String>,
    /// Empty until the first challenge.
    nonce: String,
    peer: SocketAddrV4,
    server: SocketAddrV4,
    secret: String,
    user: String,
}

fn rand_between(lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        rand::random_range(lo..hi)
    }
}

impl Slot {
    fn build(&mut self, sh: &Shared) {
        self.tid = TransactionId::from(rand::random::<u128>());
        let peer = SocketAddr::V4(sh.peer);
        let mut request = match self.step {
            Step::Allocate => Request::new(ALLOCATE, self.tid),
            Step::Permission => Request::new(CREATE_PERMISSION, self.tid),
            Step::Bind => Request::new(CHANNEL_BIND, self.tid),
            Step::Refresh | Step::Delete => Request::new(REFRESH, self.tid),
            Step::Idle | Step::Live => return,
        };
        match self.step {
            Step::Allocate => request.requested_transport(PROTOCOL_UDP),
            Step::Permission => request.peer(peer),
            Step::Bind => request.channel(CHANNEL).peer(peer),
            Step::Refresh => request.lifetime(600),
            _ => request.lifetime(0),
        };
        let signer = sh
            .realm
            .as_ref()
            .filter(|_| !sh.nonce.is_empty())
            .map(|realm| Signer::new(&self.username, &self.password, realm, &sh.nonce));
        self.req = request.finish(signer.as_ref());
    }

    fn transmit(&mut self, now: u64) {
        if let Some(s) = &self.sock {
            let _ = s.send(&self.req);
        }
        self.at = now + (RTO_NS << self.tries.min(5));
    }

    fn begin(&mut self, step: Step, sh: &Shared, now: u64) {
        self.step = step;
        self.tries = 0;
        self.auth_retries = 0;
        self.build(sh);
        self.transmit(now);
    }

    /// Ends this allocation's life (done or failed): close the socket, start again later.
    fn recycle(&mut self, now: u64) {
        self.sock = None;
        self.step = Step::Idle;
        self.at = now + rand_between(0, 200_000_000);
    }
}

pub fn run(a: &ChurnArgs) -> Result<(), String> {
    if a.allocations == 0 || a.allocations > 20_000 {
        return Err("--allocations must be 1..=20000".into());
    }
    if !(a.duration_s > 0.0 && a.duration_s <= 86_400.0) {
        return Err("--duration must be in (0, 86400]".into());
    }
    if a.cycle_s.is_nan() || a.cycle_s < 1.0 {
        return Err("--cycle must be at least 1 s".into());
    }
    if !(4..=1400).contains(&a.size) {
        return Err("--size must be 4..=1400".into());
    }
    run_inner(a).map_err(|e| e.to_string())
}

fn run_inner(a: &ChurnArgs) -> io::Result<()> {
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    let peer = sys::udp_socket(lo)?;
    let mut sh = Shared {
        realm: None,
        nonce: String::new(),
        peer: sys::local_v4(&peer)?,
        server: a.server,
        secret: a.secret.clone(),
        user: a.user.clone(),
    };
    let mut ep = Epoll::new()?;
    ep.add(sys::fd(&peer), PEER_TOKEN)?;
    let start = sys::now_ns();
    let end = start + (a.duration_s * 1e9) as u64;
    let cycle_ns = (a.cycle_s * 1e9) as u64;
    // Ramp up over the first cycle/2 so the server does not see N Allocates at once.
    let ramp = cycle_ns / 2;
    let mut slots: Vec<Slot> = (0..a.allocations)
        .map(|i| Slot {
            index: i,
            sock: None,
            step: Step::Idle,
            at: start + ramp * i as u64 / a.allocations as u64,
            tid: TransactionId::from(0),
            req: Vec::new(),
            tries: 0,
            auth_retries: 0,
            username: String::new(),
            password: String::new(),
            refresh_at: 0,
            delete_at: 0,
            refreshed: false,
            sent: 0,
        })
        .collect();
    let mut c = Counts::default();
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 2048];
    let payload = vec![0x5au8; a.size];
    let report_ns = (a.report_s.max(1.0) * 1e9) as u64;
    let mut next_report = start + report_ns;
    let mut stopping = false;
    loop {
        let now = sys::now_ns();
        if now >= end && !stopping {
            // Stop starting allocations; delete every live one.
            stopping = true;
            for s in &mut slots {
                match s.step {
                    Step::Idle => s.at = u64::MAX,
                    Step::Live => {
                        s.delete_at = now;
                        s.at = now;
                    }
                    _ => {}
                }
            }
        }
        if stopping
            && slots
                .iter()
                .all(|s| s.step == Step::Idle && s.sock.is_none())
        {
            break;
        }
        if stopping && now >= end + 30_000_000_000 {
            eprintln!("churn: gave up waiting for the last deletions");
            break;
        }
        if now >= next_report {
            next_report += report_ns;
            let live = slots.iter().filter(|s| s.step == Step::Live).count();
            eprintln!(
                "churn t={:.0}s live={live} cycles={} allocated={} refreshed={} deleted={} failed={} sent={} peer_rx={} client_rx={} challenges={}",
                (now - start) as f64 / 1e9,
                c.cycles, c.allocated, c.refreshed, c.deleted, c.failed, c.sent, c.peer_rx,
                c.client_rx, c.challenges
            );
        }
        // Timers.
        for s in &mut slots {
            if now < s.at {
                continue;
            }
            match s.step {
                Step::Idle => {
                    if stopping {
                        s.at = u64::MAX;
                        continue;
                    }
                    // Before the first nonce, only slot 0 asks (one 401, not N).
                    if sh.nonce.is_empty() && s.index != 0 {
                        s.at = now + 50_000_000;
                        continue;
                    }
                    let sock = sys::udp_socket(lo)?;
                    sock.connect(sh.server)?;
                    ep.add(sys::fd(&sock), s.index as u64)?;
                    s.sock = Some(sock);
                    let user = format!("{}-{}", sh.user, s.index);
                    let credential =
                        Credentials::rest(&sh.secret, &user, ':', crate::unix_now(), 3600);
                    s.username = credential.username;
                    s.password = credential.password;
                    s.refreshed = false;
                    s.sent = 0;
                    c.cycles += 1;
                    s.begin(Step::Allocate, &sh, now);
                }
                Step::Live => {
                    if stopping || now >= s.delete_at {
                        s.begin(Step::Delete, &sh, now);
                    } else if !s.refreshed && now >= s.refresh_at {
                        s.begin(Step::Refresh, &sh, now);
                    } else {
                        // A little relaying, spread over the first part of the life.
                        if s.sent < a.packets {
                            let frame = turnpike_client::channel_data(CHANNEL, &payload, false);
                            if let Some(sock) = &s.sock {
                                if sock.send(&frame).is_ok() {
                                    c.sent += 1;
                                }
                            }
                            s.sent += 1;
                        }
                        let next_send = if s.sent < a.packets {
                            now + 500_000_000
                        } else {
                            u64::MAX
                        };
                        let next_refresh = if s.refreshed { u64::MAX } else { s.refresh_at };
                        s.at = next_send.min(next_refresh).min(s.delete_at);
                    }
                }
                _ => {
                    // A transaction timed out.
                    s.tries += 1;
                    if s.tries >= MAX_TRIES {
                        let what = format!("{:?}: no response", s.step);
                        *c.errors.entry(what).or_default() += 1;
                        if s.step == Step::Delete {
                            c.deleted += 1;
                        } else {
                            c.failed += 1;
                        }
                        s.recycle(now);
                    } else {
                        s.transmit(now);
                    }
                }
            }
        }
        let next = slots
            .iter()
            .map(|s| s.at)
            .min()
            .unwrap_or(u64::MAX)
            .min(next_report)
            .min(if stopping { u64::MAX } else { end });
        let now = sys::now_ns();
        let wait_ms = (next.saturating_sub(now) / 1_000_000).min(100) as i32;
        ep.wait(wait_ms, &mut ready)?;
        let now = sys::now_ns();
        for &t in &ready {
            if t == PEER_TOKEN {
                // Echo everything back to the relay it came from.
                while let Ok((n, from)) = peer.recv_from(&mut buf) {
                    c.peer_rx += 1;
                    let _ = peer.send_to(&buf[..n], from);
                }
                continue;
            }
            let s = &mut slots[t as usize];
            while let Some(sock) = &s.sock {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                };
                let msg = &buf[..n];
                if wire::classify(msg) == wire::Kind::ChannelData {
                    c.client_rx += 1;
                    continue;
                }
                on_response(s, msg, &mut sh, &mut c, cycle_ns, now);
            }
        }
    }
    let secs = (sys::now_ns() - start) as f64 / 1e9;
    eprintln!(
        "churn done in {secs:.0} s: cycles={} allocated={} refreshed={} deleted={} failed={} sent={} peer_rx={} client_rx={} challenges={} errors={:?}",
        c.cycles, c.allocated, c.refreshed, c.deleted, c.failed, c.sent, c.peer_rx, c.client_rx,
        c.challenges, c.errors
    );
    if a.json {
        println!(
            "{}",
            json!({
                "kind": "churn", "server": a.server.to_string(), "allocations": a.allocations,
                "seconds": secs, "cycle_s": a.cycle_s, "cycles": c.cycles,
                "allocated": c.allocated, "refreshed": c.refreshed, "deleted": c.deleted,
                "failed": c.failed, "sent": c.sent, "peer_rx": c.peer_rx,
                "client_rx": c.client_rx, "challenges": c.challenges, "errors": c.errors,
            })
        );
    }
    if c.allocated == 0 {
        return Err(io::Error::other("no allocation succeeded"));
    }
    if c.failed * 100 > c.cycles {
        return Err(io::Error::other(format!(
            "{} of {} cycles failed (more than 1%)",
            c.failed, c.cycles
        )));
    }
    Ok(())
}

fn on_response(s: &mut Slot, msg: &[u8], sh: &mut Shared, c: &mut Counts, cycle_ns: u64, now: u64) {
    let Ok(r) = Response::parse(msg) else {
        return;
    };
    if r.transaction_id() != s.tid || matches!(s.step, Step::Idle | Step::Live) {
        return;
    }
    if r.is_error() {
        let code = r.error_code().unwrap_or(0);
        if (code == 401 || code == 438) && s.auth_retries < MAX_AUTH_RETRIES {
            c.challenges += 1;
            s.auth_retries += 1;
            if let Some(n) = r.nonce() {
                sh.nonce = n;
            }
            if sh.realm.is_none() {
                sh.realm = r.realm();
            }
            s.tries = 0;
            s.build(sh);
            s.transmit(now);
            return;
        }
        *c.errors.entry(format!("{:?}: {code}", s.step)).or_default() += 1;
        match s.step {
            // 437 (gone already) and the like: nothing left to delete.
            Step::Delete => {
                c.deleted += 1;
                s.recycle(now);
            }
            // An allocation exists: delete it rather than leave it to expire.
            Step::Permission | Step::Bind | Step::Refresh => {
                c.failed += 1;
                s.begin(Step::Delete, sh, now);
            }
            _ => {
                c.failed += 1;
                s.recycle(now);
            }
        }
        return;
    }
    if !r.is_success() {
        return;
    }
    match s.step {
        Step::Allocate => {
            c.allocated += 1;
            s.begin(Step::Permission, sh, now);
        }
        Step::Permission => s.begin(Step::Bind, sh, now),
        Step::Bind => {
            let life = rand_between(cycle_ns / 2, cycle_ns * 3 / 2);
            s.step = Step::Live;
            s.delete_at = now + life;
            s.refresh_at = now + life / 2;
            s.at = now;
        }
        Step::Refresh => {
            c.refreshed += 1;
            s.refreshed = true;
            s.step = Step::Live;
            s.at = now;
        }
        Step::Delete => {
            c.deleted += 1;
            s.recycle(now);
        }
        Step::Idle | Step::Live => {}
    }
}
