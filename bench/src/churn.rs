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
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use serde_json::json;

use crate::stun::{self, Builder};
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
    tid: [u8; 12],
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
    nonce: Vec<u8>,
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
        let tid: [u8; 12] = rand::random();
        self.tid = tid;
        let peer = sh.peer;
        let b = match self.step {
            Step::Allocate => Builder::new(stun::ALLOCATE, &tid).requested_transport_udp(),
            Step::Permission => Builder::new(stun::CREATE_PERMISSION, &tid).xor_peer(peer),
            Step::Bind => Builder::new(stun::CHANNEL_BIND, &tid)
                .channel(CHANNEL)
                .xor_peer(peer),
            Step::Refresh => Builder::new(stun::REFRESH, &tid).lifetime(600),
            Step::Delete => Builder::new(stun::REFRESH, &tid).lifetime(0),
            Step::Idle | Step::Live => return,
        };
        let key = sh
            .realm
            .as_ref()
            .map(|r| (r, stun::long_term_key(&self.username, r, &self.password)));
        let auth = match &key {
            Some((realm, key)) if !sh.nonce.is_empty() => Some((
                self.username.as_str(),
                realm.as_str(),
                sh.nonce.as_slice(),
                key,
            )),
            _ => None,
        };
        self.req = b.auth(auth).finish();
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
        nonce: Vec::new(),
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
            tid: [0; 12],
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
                    let (u, p) = stun::rest_credential(
                        &sh.secret,
                        &format!("{}-{}", sh.user, s.index),
                        3600,
                    );
                    s.username = u;
                    s.password = p;
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
                            let mut frame = Vec::with_capacity(4 + a.size);
                            frame.extend_from_slice(&CHANNEL.to_be_bytes());
                            frame.extend_from_slice(&(a.size as u16).to_be_bytes());
                            frame.extend_from_slice(&payload);
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
                if n >= 4 && msg[0] & 0xC0 == 0x40 {
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
    let Some(r) = stun::parse_response(msg) else {
        return;
    };
    if r.tid != s.tid || matches!(s.step, Step::Idle | Step::Live) {
        return;
    }
    let class = r.typ & 0x0110;
    if class == stun::ERROR {
        let code = r.error.unwrap_or(0);
        if (code == 401 || code == 438) && s.auth_retries < MAX_AUTH_RETRIES {
            c.challenges += 1;
            s.auth_retries += 1;
            if let Some(n) = r.nonce {
                sh.nonce = n;
            }
            if sh.realm.is_none() {
                sh.realm = r.realm;
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
    if class != stun::SUCCESS {
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
