//! `turnpike-bench`: a load generator for any RFC 8656 TURN server, and the bare UDP
//! forwarder used as the floor in `benches/compare.sh`. See docs/PERFORMANCE.md.
//!
//!   turnpike-bench --server 127.0.0.1:3478 --secret S --allocations 10 --rate 30000 \
//!       --duration 5 --size 200 --burst 10 --mode oneway|echo [--send-indications] \
//!       [--server-pid PID] [--json]
//!   turnpike-bench --server ... --allocations-only 10000 [--hold 2] [--server-pid PID]
//!   turnpike-bench --raw --server FWD --peer-bind 127.0.0.1:P ...      (against the forwarder)
//!   turnpike-bench forwarder --listen 127.0.0.1:F --to 127.0.0.1:P
//!   turnpike-bench churn --server ... --allocations 1000 --duration 600   (soak: scripts/soak.sh)
//!
//! Linux only (recvmmsg/sendmmsg, epoll, timerfd, /proc), IPv4: loopback, or the lab
//! addresses given with --client-ip and --peer-ip (benches/xdp_lab.sh).

#![forbid(unsafe_code)]

mod churn;
mod forwarder;
mod load;
mod setup;
mod sys;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use turnpike_client::{
    channel_data_header, channel_data_padding, send_indication_prefix, Credentials, TransactionId,
};

/// Longest measurement or hold, seconds.
const MAX_DURATION: f64 = 600.0;
const MAX_ALLOCATIONS: usize = 20_000;

#[derive(Parser)]
#[command(
    name = "turnpike-bench",
    about = "Load generator for RFC 8656 TURN servers (and a bare UDP forwarder as the floor)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand)]
enum Sub {
    /// Bare batched UDP forwarder (recvmmsg -> sendmmsg), the floor for CPU per packet.
    Forwarder {
        /// Client-facing address.
        #[arg(long)]
        listen: SocketAddrV4,
        /// Where datagrams from clients go (the load generator's --peer-bind).
        #[arg(long)]
        to: SocketAddrV4,
        /// Exit after this many seconds at the latest.
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
    },
    /// Allocation churn for soak runs: each of N slots loops Allocate, CreatePermission,
    /// ChannelBind, a few ChannelData packets echoed by a loopback peer (the server needs
    /// --allow-peer 127.0.0.1), Refresh, delete, on a new client socket each time.
    Churn {
        #[arg(long, default_value = "127.0.0.1:3478")]
        server: SocketAddrV4,
        #[arg(long, default_value = "turnpike-test-secret")]
        secret: String,
        #[arg(long, default_value = "churn")]
        user: String,
        /// Allocations alive at once (about).
        #[arg(long, default_value_t = 1000)]
        allocations: usize,
        /// Seconds of churn; then every allocation is deleted.
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Mean allocation life, seconds (uniform in [cycle/2, 3*cycle/2]).
        #[arg(long, default_value_t = 20.0)]
        cycle: f64,
        /// ChannelData packets each allocation sends (500 ms apart).
        #[arg(long, default_value_t = 4)]
        packets: u32,
        /// Payload bytes per packet.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Seconds between progress lines on stderr.
        #[arg(long, default_value_t = 10.0)]
        report: f64,
        /// Print one JSON summary line on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// client -> relay -> peer
    Oneway,
    /// client -> relay -> peer -> relay -> client
    Echo,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// TURN server (UDP), or the forwarder with --raw.
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddrV4,
    /// TURN REST shared secret.
    #[arg(long, default_value = "turnpike-test-secret")]
    secret: String,
    /// Realm for the long-term key; default: the one the server sends in its 401.
    #[arg(long)]
    realm: Option<String>,
    /// User part of the REST username (`<expiry>:<user>-<index>`).
    #[arg(long, default_value = "bench")]
    user: String,
    /// Credential validity, seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Allocations (one client socket each) carrying the load.
    #[arg(long, default_value_t = 10)]
    allocations: usize,
    /// Payload bytes per packet (ChannelData / DATA value), 24..=1400.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Total packets per second from all clients.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of sending (max 600).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Packets each client sends back to back per burst (1 = evenly paced; max 64).
    #[arg(long, default_value_t = 10)]
    burst: usize,
    #[arg(long, value_enum, default_value = "oneway")]
    mode: Mode,
    /// Send indications (and Data indications back) instead of ChannelData.
    #[arg(long)]
    send_indications: bool,
    /// No TURN: send the bare payload to --server (the forwarder), peer at --peer-bind.
    #[arg(long)]
    raw: bool,
    /// Address of the peer socket (required with --raw; default 127.0.0.1:0 per thread).
    #[arg(long)]
    peer_bind: Option<SocketAddrV4>,
    /// Server PID: report its CPU time per relayed packet (and RSS with --allocations-only).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sending threads (allocations are split between them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Milliseconds to wait for packets in flight after sending stops.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    /// Only create N allocations (no traffic): allocations/s, RSS per allocation with
    /// --server-pid, then delete them.
    #[arg(long, value_name = "N", alias = "idle-allocations")]
    allocations_only: Option<usize>,
    /// With --allocations-only: seconds to hold the idle allocations before measuring RSS
    /// and deleting them.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// Control transactions in flight at once during setup.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Bind client sockets sequentially in LO-HI (skipping busy ports) instead of kernel
    /// ephemeral ports, e.g. to stay out of the server's relay port range.
    #[arg(long, value_name = "LO-HI")]
    client_ports: Option<String>,
    /// Address the client sockets bind to (a lab namespace's own, say).
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: Ipv4Addr,
    /// Address the peer sockets bind to, when --peer-bind does not name one.
    #[arg(long, default_value = "127.0.0.1")]
    peer_ip: Ipv4Addr,
    /// Free-form label copied into the JSON line.
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON line (after the human summary on stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Some(Sub::Forwarder {
            listen,
            to,
            max_seconds,
        }) => forwarder::run(listen, to, max_seconds).map_err(|e| e.to_string()),
        Some(Sub::Churn {
            server,
            secret,
            user,
            allocations,
            duration,
            cycle,
            packets,
            size,
            report,
            json,
        }) => {
            sys::raise_nofile();
            churn::run(&churn::ChurnArgs {
                server,
                secret,
                user,
                allocations,
                duration_s: duration,
                cycle_s: cycle,
                packets,
                size,
                report_s: report,
                json,
            })
        }
        None => {
            sys::raise_nofile();
            if cli.load.allocations_only.is_some() {
                run_allocations(&cli.load)
            } else {
                run_load(&cli.load)
            }
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnpike-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Seconds since the Unix epoch, for the REST credentials' expiry.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_range(s: &Option<String>) -> Result<Option<(u16, u16)>, String> {
    let Some(s) = s else { return Ok(None) };
    let (a, b) = s.split_once('-').ok_or("--client-ports wants LO-HI")?;
    let a: u16 = a.parse().map_err(|_| "bad --client-ports")?;
    let b: u16 = b.parse().map_err(|_| "bad --client-ports")?;
    if a == 0 || a > b {
        return Err("bad --client-ports".into());
    }
    Ok(Some((a, b)))
}

fn make_allocs(a: &LoadArgs, n: usize) -> Result<Vec<setup::Alloc>, String> {
    let socks = setup::client_sockets(n, a.client_ip, parse_range(&a.client_ports)?)
        .map_err(|e| format!("client sockets: {e}"))?;
    Ok(socks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.connect(a.server).ok();
            let user = format!("{}-{i}", a.user);
            let credential = Credentials::rest(&a.secret, &user, ':', unix_now(), a.ttl);
            setup::Alloc::new(s, credential.username, credential.password, a.realm.clone())
        })
        .collect())
}

fn first_error(allocs: &[setup::Alloc]) -> Option<String> {
    let failed = allocs.iter().filter(|a| !a.ok()).count();
    allocs.iter().find_map(|a| a.error.clone()).map(|e| {
        format!(
            "{failed} of {} allocations failed, first: {e}",
            allocs.len()
        )
    })
}

fn run_allocations(a: &LoadArgs) -> Result<(), String> {
    let n = a.allocations_only.unwrap_or(0);
    if n == 0 || n > MAX_ALLOCATIONS {
        return Err(format!("--allocations-only must be 1..={MAX_ALLOCATIONS}"));
    }
    let hold = a.hold.clamp(0.0, MAX_DURATION);
    let rss = |pid: Option<u32>| pid.and_then(|p| sys::proc_rss_bytes(p).ok());
    let cpu = |pid: Option<u32>| pid.and_then(|p| sys::proc_cpu_ticks(p).ok());
    let mut allocs = make_allocs(a, n)?;
    let rss0 = rss(a.server_pid);
    let cpu0 = cpu(a.server_pid);
    let plan = setup::Plan {
        permission: false,
        bind: false,
    };
    let t_alloc = setup::create(&mut allocs, &plan, a.concurrency).map_err(|e| e.to_string())?;
    let cpu1 = cpu(a.server_pid);
    let created = allocs.iter().filter(|x| x.ok()).count();
    std::thread::sleep(std::time::Duration::from_secs_f64(hold));
    let rss1 = rss(a.server_pid);
    let t_del = setup::delete(&mut allocs, a.concurrency).map_err(|e| e.to_string())?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rss2 = rss(a.server_pid);
    let err = first_error(&allocs);
    let per_sec = created as f64 / (t_alloc as f64 / 1e9);
    let per_alloc = match (rss0, rss1) {
        (Some(x), Some(y)) if created > 0 => Some((y as f64 - x as f64) / created as f64),
        _ => None,
    };
    let cpu_us = match (cpu0, cpu1) {
        (Some(x), Some(y)) if created > 0 => {
            Some((y - x) as f64 * 1e6 / sys::clock_ticks() as f64 / created as f64)
        }
        _ => None,
    };
    eprintln!(
        "allocations: {created}/{n} in {:.3} s = {per_sec:.0}/s (window {}), deleted in {:.3} s",
        t_alloc as f64 / 1e9,
        a.concurrency,
        t_del as f64 / 1e9
    );
    if let (Some(r0), Some(r1), Some(r2)) = (rss0, rss1, rss2) {
        eprintln!(
            "server RSS: {:.1} MiB before, {:.1} MiB with {created} idle allocations ({:.0} B each), {:.1} MiB after deleting",
            r0 as f64 / 1048576.0,
            r1 as f64 / 1048576.0,
            per_alloc.unwrap_or(0.0),
            r2 as f64 / 1048576.0
        );
    }
    if let Some(c) = cpu_us {
        eprintln!("server CPU: {c:.1} µs per allocation (two Allocate transactions each)");
    }
    if let Some(e) = &err {
        eprintln!("errors: {e}");
    }
    if a.json {
        println!(
            "{}",
            json!({
                "kind": "allocations", "label": a.label, "server": a.server.to_string(),
                "requested": n, "created": created, "seconds": t_alloc as f64 / 1e9,
                "allocations_per_sec": per_sec, "delete_seconds": t_del as f64 / 1e9,
                "rss_before": rss0, "rss_idle": rss1, "rss_after_delete": rss2,
                "bytes_per_allocation": per_alloc, "server_cpu_us_per_allocation": cpu_us,
                "error": err,
            })
        );
    }
    if created < n {
        return Err(err.unwrap_or_else(|| "allocations failed".into()));
    }
    Ok(())
}

fn run_load(a: &LoadArgs) -> Result<(), String> {
    if !(24..=1400).contains(&a.size) {
        return Err("--size must be 24..=1400".into());
    }
    if a.allocations == 0 || a.allocations > MAX_ALLOCATIONS {
        return Err(format!("--allocations must be 1..={MAX_ALLOCATIONS}"));
    }
    if !(a.duration > 0.0 && a.duration <= MAX_DURATION) {
        return Err(format!("--duration must be in (0, {MAX_DURATION}]"));
    }
    if a.rate == 0 || a.rate > 10_000_000 {
        return Err("--rate must be 1..=10000000".into());
    }
    if a.raw && a.peer_bind.is_none() {
        return Err("--raw needs --peer-bind (the forwarder's --to)".into());
    }
    let threads = a.threads.clamp(1, 64).min(a.allocations);
    let echo = a.mode == Mode::Echo;
    let framing = if a.raw {
        load::Framing::Raw
    } else if a.send_indications {
        load::Framing::Indication
    } else {
        load::Framing::Channel
    };
    let lo = SocketAddrV4::new(a.peer_ip, 0);
    // Peer sockets: one per thread (TURN), or the single fixed one for the forwarder.
    let mut peers: Vec<Option<UdpSocket>> = Vec::new();
    for t in 0..threads {
        peers.push(if a.raw {
            if t == 0 {
                Some(sys::udp_socket(a.peer_bind.unwrap_or(lo)).map_err(|e| format!("peer: {e}"))?)
            } else {
                None
            }
        } else {
            Some(
                sys::udp_socket(a.peer_bind.filter(|_| threads == 1).unwrap_or(lo))
                    .map_err(|e| format!("peer: {e}"))?,
            )
        });
    }
    let peer_addrs: Vec<Option<SocketAddrV4>> = peers
        .iter()
        .map(|p| p.as_ref().and_then(|s| sys::local_v4(s).ok()))
        .collect();

    let mut allocs = make_allocs(a, a.allocations)?;
    for (i, al) in allocs.iter_mut().enumerate() {
        al.peer = peer_addrs[i % threads];
    }
    let t_setup = if a.raw {
        0
    } else {
        let plan = setup::Plan {
            permission: true,
            bind: framing == load::Framing::Channel,
        };
        let t = setup::create(&mut allocs, &plan, a.concurrency).map_err(|e| e.to_string())?;
        if let Some(e) = first_error(&allocs) {
            let _ = setup::delete(&mut allocs, a.concurrency);
            return Err(e);
        }
        t
    };

    // The measurement window.
    let start_ns = sys::now_ns() + 20_000_000;
    let end_ns = start_ns + (a.duration * 1e9) as u64;
    let drain_ns = a.drain_ms.min(10_000) * 1_000_000;
    let mut plans: Vec<load::ThreadPlan> = peers
        .into_iter()
        .map(|peer| load::ThreadPlan {
            flows: Vec::new(),
            peer,
            framing,
            echo,
            size: a.size,
            burst: a.burst,
            rate: 0.0,
            start_ns,
            end_ns,
            drain_ns,
        })
        .collect();
    let mut keep: Vec<setup::Alloc> = Vec::new();
    for (i, al) in allocs.into_iter().enumerate() {
        let t = i % threads;
        // What goes in front of each payload, and the zero bytes after it. The Send
        // indication's transaction id is rewritten per packet (IPv4 peers: the XOR does not
        // depend on it).
        let size = a.size as u16;
        let (prefix, pad) = match framing {
            load::Framing::Channel => (channel_data_header(al.channel, size).to_vec(), 0),
            load::Framing::Indication => {
                let peer = SocketAddr::V4(al.peer.expect("peer"));
                let prefix = send_indication_prefix(TransactionId::from(0), peer, size);
                (prefix, channel_data_padding(a.size, true))
            }
            load::Framing::Raw => (Vec::new(), 0),
        };
        let sock = std::sync::Arc::clone(&al.sock);
        plans[t].flows.push(load::Flow {
            sock,
            id: i as u32,
            prefix,
            pad,
            dest: a.server,
        });
        keep.push(al);
    }
    for p in &mut plans {
        p.rate = a.rate as f64 * p.flows.len() as f64 / a.allocations as f64;
    }
    let cpu0 = a
        .server_pid
        .map(sys::proc_cpu_ns)
        .transpose()
        .map_err(|e| format!("server pid: {e}"))?;
    let ticks0 = a.server_pid.and_then(|p| sys::proc_cpu_ticks(p).ok());
    let self0 = sys::self_cpu_ns();
    let machine0 = sys::cpu_idle_ticks().ok().map(|m| (m, sys::now_ns()));
    let handles: Vec<_> = plans
        .into_iter()
        .map(|p| std::thread::spawn(move || load::run_thread(p)))
        .collect();
    let mut c = load::Counts::new();
    let mut errs = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(x)) => c.merge(&x),
            Ok(Err(e)) => errs.push(e.to_string()),
            Err(_) => errs.push("thread panicked".into()),
        }
    }
    let cpu1 = a
        .server_pid
        .map(sys::proc_cpu_ns)
        .transpose()
        .map_err(|e| format!("server pid: {e}"))?;
    let ticks1 = a.server_pid.and_then(|p| sys::proc_cpu_ticks(p).ok());
    let self_cpu = sys::self_cpu_ns() - self0;
    let machine1 = sys::cpu_idle_ticks().ok().map(|m| (m, sys::now_ns()));
    if !a.raw {
        let _ = setup::delete(&mut keep, a.concurrency);
    }
    if let Some(e) = errs.first() {
        return Err(e.clone());
    }

    let dur = a.duration;
    let relayed = c.peer_rx + if echo { c.client_rx } else { 0 };
    let delivered = if echo { c.client_rx } else { c.peer_rx };
    let loss = if c.sent > 0 {
        (c.sent.saturating_sub(delivered)) as f64 / c.sent as f64 * 100.0
    } else {
        0.0
    };
    let server_cpu_s = match (cpu0, cpu1) {
        (Some((x, _)), Some((y, _))) => Some(y.saturating_sub(x) as f64 / 1e9),
        _ => None,
    };
    let cpu_source = cpu1.map(|(_, s)| s);
    // The same window in utime+stime clock ticks, as a cross-check of the schedstat figure.
    let stat_cpu_s = match (ticks0, ticks1) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / sys::clock_ticks() as f64),
        _ => None,
    };
    let us_per_pkt = server_cpu_s
        .filter(|_| relayed > 0)
        .map(|s| s * 1e6 / relayed as f64);
    // Everything each CPU did in the window (wall time less idle time), softirq (where XDP
    // runs) included; the load generator's own process time is reported beside it.
    let cpu_busy_s = match (&machine0, &machine1) {
        (Some((idle0, t0)), Some((idle1, t1))) => {
            let hz = sys::clock_ticks() as f64;
            let wall = t1.saturating_sub(*t0) as f64 / 1e9;
            let busy: Vec<f64> = idle0
                .iter()
                .zip(idle1)
                .map(|(a, b)| (wall - b.saturating_sub(*a) as f64 / hz).max(0.0))
                .collect();
            Some(busy)
        }
        _ => None,
    };
    let machine_cpu_s = cpu_busy_s.as_ref().map(|b| b.iter().sum::<f64>());
    let per_relayed = |s: f64| s * 1e6 / relayed.max(1) as f64;
    let machine_us = machine_cpu_s.map(per_relayed);
    let bench_pkts = c.sent + c.peer_rx + if echo { c.peer_rx + c.client_rx } else { 0 };
    let bench_us = self_cpu as f64 / 1e3 / bench_pkts.max(1) as f64;
    let lat = if echo { &c.rtt } else { &c.oneway };
    let mode = if echo { "echo" } else { "oneway" };
    let kind = match framing {
        load::Framing::Channel => "channeldata",
        load::Framing::Indication => "indication",
        load::Framing::Raw => "raw",
    };
    eprintln!(
        "{} {mode} {kind}: {} allocations, {} B, burst {}, target {} pkt/s for {dur} s (setup {:.1} ms)",
        a.server,
        a.allocations,
        a.size,
        a.burst,
        a.rate,
        t_setup as f64 / 1e6
    );
    eprintln!(
        "  sent {} ({:.0}/s, {} blocked, max lag {} µs), peer got {}, clients got {}, loss {loss:.3}%",
        c.sent,
        c.sent as f64 / dur,
        c.send_blocked,
        c.max_lag_us,
        c.peer_rx,
        c.client_rx,
    );
    eprintln!(
        "  latency ({}) µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
        if echo { "round trip" } else { "one way" },
        lat.pct(50.0),
        lat.pct(90.0),
        lat.pct(99.0),
        lat.pct(99.9),
        lat.max
    );
    if let (Some(s), Some(u)) = (server_cpu_s, us_per_pkt) {
        eprintln!(
            "  server CPU {s:.3} s ({}; utime+stime {:.2} s) for {relayed} relayed packets = {u:.2} µs/packet ({:.0}% of a core)",
            cpu_source.unwrap_or("?"),
            stat_cpu_s.unwrap_or(0.0),
            s / dur * 100.0
        );
    }
    eprintln!(
        "  load generator CPU {:.2} s = {bench_us:.2} µs per packet handled",
        self_cpu as f64 / 1e9
    );
    if let (Some(m), Some(u), Some(busy)) = (machine_cpu_s, machine_us, &cpu_busy_s) {
        let per_cpu: Vec<String> = busy
            .iter()
            .map(|b| format!("{:.2}", per_relayed(*b)))
            .collect();
        eprintln!(
            "  machine CPU {m:.2} s (wall less idle) = {u:.2} µs per relayed packet; per CPU {} µs",
            per_cpu.join(" / ")
        );
    }
    if a.json {
        println!(
            "{}",
            json!({
                "kind": "load", "label": a.label, "server": a.server.to_string(), "mode": mode,
                "framing": kind, "allocations": a.allocations, "size": a.size, "burst": a.burst,
                "rate": a.rate, "duration": dur, "threads": threads,
                "setup_ms": t_setup as f64 / 1e6,
                "sent": c.sent, "send_blocked": c.send_blocked, "achieved_pps": c.sent as f64 / dur,
                "peer_rx": c.peer_rx, "client_rx": c.client_rx, "foreign": c.foreign,
                "relayed": relayed, "loss_pct": loss, "max_lag_us": c.max_lag_us,
                "lat_us": {"p50": lat.pct(50.0), "p90": lat.pct(90.0), "p99": lat.pct(99.0),
                           "p999": lat.pct(99.9), "max": lat.max},
                "oneway_p50_us": c.oneway.pct(50.0), "oneway_p99_us": c.oneway.pct(99.0),
                "server_cpu_s": server_cpu_s, "server_cpu_source": cpu_source, "server_stat_cpu_s": stat_cpu_s, "server_us_per_pkt": us_per_pkt,
                "bench_cpu_s": self_cpu as f64 / 1e9, "bench_us_per_pkt": bench_us,
                "machine_cpu_s": machine_cpu_s, "cpu_busy_s": cpu_busy_s,
                "machine_us_per_pkt": machine_us,
            })
        );
    }
    Ok(())
}
