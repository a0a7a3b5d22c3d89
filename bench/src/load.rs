//! The data plane: paced ChannelData / Send indications (or raw datagrams for the bare
//! forwarder) from the client sockets, a peer socket that counts (and in echo mode sends
//! everything back through the relay), and receive-side accounting with latency from a
//! timestamp and sequence number in each payload. Batched with `sendmmsg`/`recvmmsg`; the
//! thread sleeps on epoll + an absolute timerfd between bursts, so it leaves the CPU to a
//! server pinned to the same core.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};

use turnpike_client::Incoming;

use crate::sys::{self, Epoll, Mmsg, TimerFd, BATCH};

/// First bytes of every payload.
pub const PAYLOAD_MAGIC: [u8; 4] = *b"TPBN";
/// magic(4) flow(4) seq(8) timestamp-ns(8).
pub const PAYLOAD_HEADER: usize = 24;

const TOKEN_TIMER: u64 = u64::MAX;
const TOKEN_PEER: u64 = u64::MAX - 1;
/// Batches read from one socket per wakeup before the sender gets its turn again.
const MAX_BATCHES_PER_WAKE: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Channel,
    Indication,
    Raw,
}

/// Latency histogram: exact below 1024 µs, then 64 sub-buckets per power of two (≈1.5%).
#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
}

impl Hist {
    pub fn new() -> Self {
        Hist {
            counts: vec![0; 1024 + 64 * 54],
            n: 0,
            max: 0,
        }
    }

    fn bucket(v: u64) -> usize {
        if v < 1024 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // >= 10
        let sub = ((v >> (e - 6)) & 63) as usize;
        1024 + (e - 10) * 64 + sub
    }

    fn value(b: usize) -> u64 {
        if b < 1024 {
            return b as u64;
        }
        let e = (b - 1024) / 64 + 10;
        let sub = ((b - 1024) % 64) as u64;
        (64 + sub) << (e - 6)
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::bucket(us)] += 1;
        self.n += 1;
        self.max = self.max.max(us);
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }

    pub fn pct(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let want = ((self.n as f64) * p / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Self::value(b).min(self.max);
            }
        }
        self.max
    }
}

/// One client socket sending one flow.
pub struct Flow {
    pub sock: std::sync::Arc<UdpSocket>,
    pub id: u32,
    pub prefix: Vec<u8>,
    pub pad: usize,
    pub dest: SocketAddrV4,
}

pub struct ThreadPlan {
    pub flows: Vec<Flow>,
    pub peer: Option<UdpSocket>,
    pub framing: Framing,
    pub echo: bool,
    pub size: usize,
    pub burst: usize,
    /// Packets per second for this thread's flows together.
    pub rate: f64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub drain_ns: u64,
}

#[derive(Clone)]
pub struct Counts {
    pub sent: u64,
    pub send_blocked: u64,
    pub peer_rx: u64,
    pub client_rx: u64,
    pub foreign: u64,
    /// Client → peer, at the peer.
    pub oneway: Hist,
    /// Client → peer → client, at the client (echo mode).
    pub rtt: Hist,
    /// Largest delay of a burst behind its schedule, µs.
    pub max_lag_us: u64,
}

impl Counts {
    pub fn new() -> Self {
        Counts {
            sent: 0,
            send_blocked: 0,
            peer_rx: 0,
            client_rx: 0,
            foreign: 0,
            oneway: Hist::new(),
            rtt: Hist::new(),
            max_lag_us: 0,
        }
    }

    pub fn merge(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.send_blocked += o.send_blocked;
        self.peer_rx += o.peer_rx;
        self.client_rx += o.client_rx;
        self.foreign += o.foreign;
        self.oneway.merge(&o.oneway);
        self.rtt.merge(&o.rtt);
        self.max_lag_us = self.max_lag_us.max(o.max_lag_us);
    }
}

/// Parses our payload header: timestamp, if it is one of ours.
fn payload_ts(p: &[u8]) -> Option<u64> {
    if p.len() < PAYLOAD_HEADER || p[..4] != PAYLOAD_MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(p[16..24].try_into().ok()?))
}

fn record(h: &mut Hist, p: &[u8], now: u64) -> bool {
    match payload_ts(p) {
        Some(ts) => {
            h.record(now.saturating_sub(ts) / 1000);
            true
        }
        None => false,
    }
}

/// Runs one thread's share of the load; returns its counts.
pub fn run_thread(plan: ThreadPlan) -> io::Result<Counts> {
    sys::tight_timer_slack();
    let mut c = Counts::new();
    let mut ep = Epoll::new()?;
    let timer = TimerFd::new()?;
    ep.add(timer.fd(), TOKEN_TIMER)?;
    if let Some(p) = &plan.peer {
        ep.add(sys::fd(p), TOKEN_PEER)?;
    }
    let nflows = plan.flows.len();
    for (i, f) in plan.flows.iter().enumerate() {
        if plan.echo {
            ep.add(sys::fd(&f.sock), i as u64)?;
        }
    }
    let mut tx = Mmsg::new();
    let mut rx = Mmsg::new();
    let burst = plan.burst.clamp(1, BATCH);
    // Each flow sends a burst every `interval`; flows are staggered evenly over it.
    let interval = if nflows == 0 || plan.rate <= 0.0 {
        u64::MAX / 4
    } else {
        ((burst as f64 * nflows as f64 / plan.rate) * 1e9) as u64
    };
    let mut due: Vec<u64> = (0..nflows)
        .map(|i| plan.start_ns + interval.saturating_mul(i as u64) / nflows.max(1) as u64)
        .collect();
    let mut seq = vec![0u64; nflows];
    // Packets each flow may send in total, so the count is exact whatever the timing.
    let total_target = (plan.rate * (plan.end_ns - plan.start_ns) as f64 / 1e9).round() as u64;
    let per_flow_target: Vec<u64> = (0..nflows as u64)
        .map(|i| {
            total_target / nflows.max(1) as u64 + u64::from(i < total_target % nflows.max(1) as u64)
        })
        .collect();
    // Pre-fill the framing of every buffer once: only seq/timestamp change per packet.
    let size = plan.size;
    let mut ready = Vec::new();
    let stop_at = plan.end_ns + plan.drain_ns;
    loop {
        let now = sys::now_ns();
        // Send the bursts that are due: at most one per flow per turn, so that a sender
        // running behind still reads its sockets between bursts.
        for fi in 0..nflows {
            if due[fi] <= now && seq[fi] < per_flow_target[fi] {
                let f = &plan.flows[fi];
                c.max_lag_us = c.max_lag_us.max((now - due[fi]) / 1000);
                let n = (burst as u64).min(per_flow_target[fi] - seq[fi]) as usize;
                let ts = sys::now_ns();
                for k in 0..n {
                    let b = &mut tx.bufs[k];
                    let pl = f.prefix.len();
                    b[..pl].copy_from_slice(&f.prefix);
                    let s = seq[fi] + k as u64;
                    if plan.framing == Framing::Indication {
                        b[8..16].copy_from_slice(&s.to_be_bytes());
                        b[16..20].copy_from_slice(&f.id.to_be_bytes());
                    }
                    let p = &mut b[pl..pl + size + f.pad];
                    p[..4].copy_from_slice(&PAYLOAD_MAGIC);
                    p[4..8].copy_from_slice(&f.id.to_be_bytes());
                    p[8..16].copy_from_slice(&s.to_be_bytes());
                    p[16..24].copy_from_slice(&ts.to_be_bytes());
                    tx.lens[k] = pl + size + f.pad;
                    tx.set_addr(k, f.dest);
                }
                let sent = tx.send(sys::fd(&f.sock), n)?;
                c.sent += sent as u64;
                c.send_blocked += (n - sent) as u64;
                seq[fi] += n as u64;
                due[fi] += interval;
            }
        }
        if now >= stop_at {
            break;
        }
        let all_sent = (0..nflows).all(|i| seq[i] >= per_flow_target[i]);
        let next = if all_sent {
            stop_at
        } else {
            due.iter().copied().min().unwrap_or(stop_at).min(stop_at)
        };
        if next > now {
            timer.set_abs(next);
            ep.wait(-1, &mut ready)?;
        } else {
            ep.wait(0, &mut ready)?;
        }
        let now = sys::now_ns();
        for &t in &ready {
            match t {
                TOKEN_TIMER => timer.clear(),
                TOKEN_PEER => {
                    let peer = plan.peer.as_ref().expect("peer registered");
                    for _ in 0..MAX_BATCHES_PER_WAKE {
                        let n = rx.recv(sys::fd(peer))?;
                        if n == 0 {
                            break;
                        }
                        for k in 0..n {
                            if record(&mut c.oneway, &rx.bufs[k][..rx.lens[k]], now) {
                                c.peer_rx += 1;
                            } else {
                                c.foreign += 1;
                            }
                        }
                        if plan.echo {
                            // Back to the source (the relayed address) in place.
                            rx.send(sys::fd(peer), n)?;
                        }
                        if n < BATCH {
                            break;
                        }
                    }
                }
                i => {
                    let f = &plan.flows[i as usize];
                    for _ in 0..MAX_BATCHES_PER_WAKE {
                        let n = rx.recv(sys::fd(&f.sock))?;
                        if n == 0 {
                            break;
                        }
                        for k in 0..n {
                            let m = &rx.bufs[k][..rx.lens[k]];
                            let p = match (plan.framing, Incoming::parse(m)) {
                                (Framing::Raw, _) => Some(m),
                                (Framing::Channel, Incoming::ChannelData { payload, .. }) => {
                                    Some(payload)
                                }
                                (Framing::Indication, Incoming::Data { payload, .. }) => {
                                    Some(payload)
                                }
                                _ => None,
                            };
                            if p.is_some_and(|p| record(&mut c.rtt, p, now)) {
                                c.client_rx += 1;
                            } else {
                                c.foreign += 1;
                            }
                        }
                        if n < BATCH {
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(c)
}
