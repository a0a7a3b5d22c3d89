//! The kernel fast path (src/net/xdp.rs, ebpf/turnpike.bpf.o) in a lab of network namespaces
//! (root only): a client, a peer and a server whose interface has the XDP program, joined
//! by a bridge in a fourth namespace, all on 203.0.113.0/24 and connected to nothing else.
//!
//! ```text
//!   P-c eth0 203.0.113.10 ──┐
//!   P-p eth0 203.0.113.20 ──┼── bridge br0 in P-b
//!   P-s eth0 203.0.113.1  ──┘   (turnpike --xdp-interface eth0)
//! ```
//!
//! The test process makes its sockets inside the namespaces (a thread enters one with
//! setns, binds, and hands the socket back) and starts the daemon with `ip netns exec`.
//! Every namespace is removed when the lab is dropped, the test failing or not.
//!
//! Without root (a developer's machine) the lab tests print why and pass; CI runs as root,
//! so there they run, and a lab that cannot be built fails them.
//!
//! Frames no socket would send (IP options, fragments, lying lengths, cut-off headers) are
//! written onto a namespace's eth0 by a [`Wire`] (AF_PACKET). The bridge is a plain switch
//! for them: no br_netfilter checks of IP headers, no multicast snooping (its IGMP reports
//! carry IP options).
//!
//! veth offloads are turned off on the lab's senders (ethtool), as a real NIC delivers: a
//! socket on a veth leaves its UDP checksum for the device to finish (CHECKSUM_PARTIAL), and
//! XDP sees a frame, not that promise. The bridge's end of the server's veth runs
//! ebpf/xdp_pass.bpf.o, which native mode on a veth needs (README, "Kernel fast path").

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::LinkAddr;

use crate::hardening::metric_sum;
use crate::harness::{
    aiortc_python, harness_home, require_run_pair, rest_credentials, run_with_timeout, temp_dir,
    Server, REALM, SECRET,
};
use crate::stun_client::{channel_data, dual_relay, ipv6_relay, recv_from, UdpTurn};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The IPv6 side of the lab, when it has one (ULA, fd00:db8::/64).
const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xdb8, 0, 0, 0, 0, 0, 1);
const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xdb8, 0, 0, 0, 0, 0, 0x20);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const API: &str = "127.0.0.1:18080";
const CHANNEL: u16 = 0x4000;
const XDP_PASS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ebpf/xdp_pass.bpf.o");

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a lab differs from the usual one.
#[derive(Debug, Clone, Copy)]
struct Setup {
    /// `net.ipv4.conf.eth0.forwarding=1` in the server's namespace, as the README asks
    /// (and the IPv6 one with `ipv6`).
    forwarding: bool,
    /// IPv6 on the client's, peer's and server's links (fd00:db8::/64 beside the IPv4
    /// addresses), the server listening and relaying on both.
    ipv6: bool,
    /// The lab's peers are allowed by `--allow-peer` (which a reload keeps); without it, only
    /// by what the test's `--config` file says, so a reload can take them away.
    allow_peer_flag: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            forwarding: true,
            ipv6: false,
            allow_peer_flag: true,
        }
    }
}

/// Four namespaces named after this process and a counter; removed on drop.
struct Lab {
    prefix: String,
    setup: Setup,
    server: Option<Child>,
    server_log: Arc<Mutex<String>>,
}

impl Lab {
    /// The usual lab, or `None` (with the reason printed) where it cannot be built by design.
    fn new() -> Option<Lab> {
        Lab::with(Setup::default())
    }

    fn with(setup: Setup) -> Option<Lab> {
        if !is_root() {
            eprintln!("SKIP: the XDP lab needs root (network namespaces, BPF)");
            return None;
        }
        if Command::new("ethtool").arg("--version").output().is_err() {
            panic!("the XDP lab needs ethtool (apt-get install -y ethtool)");
        }
        let prefix = format!(
            "tpx{}{}",
            std::process::id() % 100_000,
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            prefix,
            setup,
            server: None,
            server_log: Arc::default(),
        };
        lab.build();
        Some(lab)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn build(&self) {
        let b = self.ns("b");
        for role in ["b", "s", "c", "p"] {
            let ns = self.ns(role);
            run(&["ip", "netns", "add", &ns]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // No IPv6 chatter (router solicitations, DAD) in the counters; with IPv6 on,
            // no router solicitations or duplicate address detection either.
            let sysctls: &[&str] = if self.setup.ipv6 && role != "b" {
                &[
                    "net.ipv6.conf.all.accept_ra=0",
                    "net.ipv6.conf.default.accept_ra=0",
                    "net.ipv6.conf.all.router_solicitations=0",
                    "net.ipv6.conf.default.router_solicitations=0",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]
            } else {
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ]
            };
            let mut cmd = vec!["ip", "netns", "exec", &ns, "sysctl", "-qw"];
            cmd.extend_from_slice(sysctls);
            run(&cmd);
        }
        // No multicast snooping: it has the bridge join 224.0.0.106 and send IGMP reports,
        // frames with IP options the program would count as the lab's hostile ones.
        run(&[
            "ip",
            "-n",
            &b,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        run(&["ip", "-n", &b, "link", "set", "br0", "up"]);
        // A plain switch, as between a real server and its peers: with br_netfilter loaded
        // the bridge would check IP headers itself (and drop the lab's hostile frames).
        let bridge_nf = Command::new("ip")
            .args(["netns", "exec", &b, "test", "-e"])
            .arg("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .status()
            .is_ok_and(|s| s.success());
        if bridge_nf {
            run(&[
                "ip",
                "netns",
                "exec",
                &b,
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
            ]);
        }
        for (role, ip, ip6) in [
            ("s", SERVER_IP, SERVER_IP6),
            ("c", CLIENT_IP, CLIENT_IP6),
            ("p", PEER_IP, PEER_IP6),
        ] {
            let ns = self.ns(role);
            run(&[
                "ip", "-n", &b, "link", "add", role, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            run(&["ip", "-n", &b, "link", "set", role, "master", "br0", "up"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            if self.setup.ipv6 {
                run(&[
                    "ip",
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ]);
            }
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            // Full checksums on the wire, as from a real NIC (see the module doc).
            run(&[
                "ip", "netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off",
            ]);
        }
        // A veth reads the XDP_TX frames of its peer's native-mode program only when it has
        // an XDP program of its own (ebpf/xdp_pass.bpf.c says why): the bridge's end of the
        // server's link gets one that passes everything. Generic mode does not need it.
        run(&[
            "ip", "-n", &b, "link", "set", "dev", "s", "xdpdrv", "obj", XDP_PASS, "sec", "xdp",
        ]);
        // bpf_fib_lookup answers only for an interface that forwards (else
        // BPF_FIB_LKUP_RET_FWD_DISABLED and every packet goes to userspace).
        let s = self.ns("s");
        if self.setup.forwarding {
            run(&[
                "ip",
                "netns",
                "exec",
                &s,
                "sysctl",
                "-qw",
                "net.ipv4.conf.eth0.forwarding=1",
            ]);
            if self.setup.ipv6 {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &s,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.eth0.forwarding=1",
                ]);
            }
        }
    }

    /// Runs `f` on a thread inside namespace `role`: sockets it makes stay in there.
    fn inside<T: Send>(&self, role: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.ns(role));
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .expect("thread inside the namespace")
        })
    }

    /// Starts turnpike in generic XDP mode on a config file holding `toml`; the file lives
    /// as long as the returned directory.
    fn start_on_config(&mut self, toml: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("turnpike.toml");
        std::fs::write(&config, toml).unwrap();
        let config_arg = config.to_str().unwrap();
        self.start_server(&[
            "--config",
            config_arg,
            "--xdp-interface",
            "eth0",
            "--xdp-mode",
            "generic",
        ]);
        (dir, config)
    }

    /// SIGHUP, and waits until the daemon says it reloaded.
    fn reload(&self) {
        self.signal_server("HUP");
        assert!(
            self.log_with("configuration reloaded")
                .contains("configuration reloaded"),
            "no reload logged:\n{}",
            self.log()
        );
    }

    /// Starts turnpike in the server namespace and waits for its ready line.
    fn start_server(&mut self, extra: &[&str]) {
        let bin = env!("CARGO_BIN_EXE_turnpike");
        let listen = format!("{SERVER_IP}:3478");
        let relay = SERVER_IP.to_string();
        let mut args = vec![
            "netns",
            "exec",
            "",
            bin,
            "run",
            "--listen",
            &listen,
            "--relay-ip",
            &relay,
            "--auth-secret",
            SECRET,
            "--realm",
            REALM,
            "--api-listen",
            API,
            "--workers",
            "2",
            "--min-port",
            "50000",
            "--max-port",
            "50999",
        ];
        let ns = self.ns("s");
        args[2] = &ns;
        if self.setup.allow_peer_flag {
            args.extend_from_slice(&["--allow-peer", "203.0.113.0/24"]);
        }
        let (listen6, relay6) = (format!("[{SERVER_IP6}]:3478"), SERVER_IP6.to_string());
        if self.setup.ipv6 {
            args.extend_from_slice(&[
                "--listen",
                &listen6,
                "--relay-ip",
                &relay6,
                "--allow-peer",
                "fd00:db8::/64",
            ]);
        }
        args.extend_from_slice(extra);
        let mut child = Command::new("ip")
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start turnpike in the server namespace");
        let log = self.server_log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"event\":\"ready\"") {
                    let _ = tx.send(());
                }
            }
        });
        self.server = Some(child);
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!(
                "turnpike did not get ready in the lab; its log:\n{}",
                self.log()
            );
        }
    }

    fn log(&self) -> String {
        self.server_log.lock().unwrap().clone()
    }

    /// The log once it holds `line` (stderr is read on its own thread, so it can lag the
    /// ready line on stdout), or as it is after 5 s.
    fn log_with(&self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(line) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /metrics` from inside the server namespace.
    fn metrics(&self) -> String {
        self.inside("s", || {
            let mut stream = TcpStream::connect(API).expect("connect to the API");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: {API}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).expect("read /metrics");
            raw.split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .unwrap_or_default()
        })
    }

    fn client(&self) -> UdpTurn {
        let (user, pass) = rest_credentials(SECRET, "xdp", 3600);
        let server = SocketAddr::from((SERVER_IP, 3478));
        self.inside("c", move || {
            UdpTurn::new_from(CLIENT_IP, server, &user, &pass)
        })
    }

    fn peer(&self) -> UdpSocket {
        self.inside("p", || {
            UdpSocket::bind((PEER_IP, 0)).expect("bind the peer")
        })
    }

    /// A client on the IPv6 side, talking to the server's IPv6 listener.
    fn client6(&self) -> UdpTurn {
        let (user, pass) = rest_credentials(SECRET, "xdp6", 3600);
        let server = SocketAddr::from((SERVER_IP6, 3478));
        self.inside("c", move || {
            UdpTurn::new_from(CLIENT_IP6, server, &user, &pass)
        })
    }

    fn peer6(&self) -> UdpSocket {
        self.inside("p", || {
            UdpSocket::bind((PEER_IP6, 0)).expect("bind the IPv6 peer")
        })
    }

    /// [`Lab::udp_tap`] for IPv6, which hands over the UDP header and payload without the
    /// IP header (RFC 3542 §3): the source comes from recvfrom (as a UdpSocket, which reads
    /// any datagram socket), the destination is the namespace's address.
    fn udp_tap6(&self, role: &str) -> UdpSocket {
        self.inside(role, || {
            let tap = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::RAW,
                Some(socket2::Protocol::UDP),
            )
            .expect("raw UDPv6 socket");
            tap.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            UdpSocket::from(tap)
        })
    }

    /// A raw socket that sees every UDP datagram arriving in namespace `role`, headers and
    /// all, to check checksums the stack might not (a veth marks what it delivers as
    /// verified).
    fn udp_tap(&self, role: &str) -> socket2::Socket {
        self.inside(role, || {
            let tap = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::UDP),
            )
            .expect("raw UDP socket");
            tap.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            tap
        })
    }

    /// A [`Wire`] in namespace `role`: it learns eth0 and the MAC addresses from a datagram
    /// it has a socket send from `local` to the server's port 9, which the program counts
    /// (no_entry): make it before the metrics a test compares.
    fn wire(&self, role: &str, local: IpAddr) -> Wire {
        use nix::sys::socket::{recvfrom, socket, AddressFamily, SockFlag, SockProtocol, SockType};
        let server = match local {
            IpAddr::V4(_) => IpAddr::V4(SERVER_IP),
            IpAddr::V6(_) => IpAddr::V6(SERVER_IP6),
        };
        self.inside(role, move || {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::empty(),
                SockProtocol::EthAll,
            )
            .expect("AF_PACKET socket");
            let socket = socket2::Socket::from(fd);
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            const PROBE: &[u8] = b"\xffturnpike wire probe";
            const ARPHRD_ETHER: u16 = 1;
            let probe = UdpSocket::bind((local, 0)).expect("bind the probe");
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                probe.send_to(PROBE, (server, 9)).unwrap();
                // Until the read times out: every frame this namespace sent or received.
                while let Ok((n, Some(link))) = recvfrom::<LinkAddr>(socket.as_raw_fd(), &mut buf) {
                    if link.hatype() == ARPHRD_ETHER && buf[..n].ends_with(PROBE) {
                        let macs = buf[..12].try_into().unwrap();
                        return Wire { socket, link, macs };
                    }
                }
            }
            panic!("the probe never left eth0 in {role}");
        })
    }

    /// `ip -d link show dev eth0` in the server's namespace.
    fn link(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns("s"), "-d", "link", "show", "dev", "eth0"])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The id of the XDP program on the server's eth0 (`prog/xdp id N`), if there is one.
    fn xdp_program(&self) -> Option<String> {
        let link = self.link();
        let (_, rest) = link.split_once("prog/xdp id ")?;
        rest.split_whitespace().next().map(str::to_owned)
    }

    /// Sends `signal` (a name: HUP, KILL) to the daemon.
    fn signal_server(&self, signal: &str) {
        let pid = self.server.as_ref().expect("a daemon").id();
        // `ip netns exec` execs turnpike, so this is turnpike's own PID.
        run(&["kill", &format!("-{signal}"), &pid.to_string()]);
    }

    /// Sends `signal` and waits for the daemon to exit; a successor's log starts afresh.
    fn stop_server(&mut self, signal: &str) {
        self.signal_server(signal);
        let mut child = self.server.take().expect("a daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait for turnpike").is_none() {
            assert!(Instant::now() < deadline, "turnpike outlived SIG{signal}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server_log.lock().unwrap().clear();
    }
}

/// Hand-made frames onto a namespace's eth0 (AF_PACKET), addressed as that namespace's own
/// frames to the server are: for what no socket would send.
struct Wire {
    socket: socket2::Socket,
    /// eth0, as the kernel named it in a frame this socket saw leave.
    link: LinkAddr,
    /// Destination and source MAC addresses of that frame.
    macs: [u8; 12],
}

impl Wire {
    /// Sends `packet` (IP header onwards, either family by its version) in one frame.
    fn send(&self, packet: &[u8]) {
        let ethertype: u16 = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        let mut frame = self.macs.to_vec();
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(packet);
        let sent = nix::sys::socket::sendto(
            self.socket.as_raw_fd(),
            &frame,
            &self.link,
            nix::sys::socket::MsgFlags::empty(),
        )
        .expect("send a hand-made frame");
        assert_eq!(sent, frame.len());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // `ip netns exec` execs turnpike, so this is turnpike's own PID.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("turnpike's log in the lab:\n{}", self.log());
            for (role, cmd) in [
                ("s", "ethtool -S eth0"),
                ("b", "ethtool -S s"),
                ("b", "ethtool -k s"),
                ("p", "ip -s link show eth0"),
                ("p", "nstat -az"),
            ] {
                let mut args = vec!["netns", "exec", ""];
                let ns = self.ns(role);
                args[2] = &ns;
                args.extend(cmd.split(' '));
                if let Ok(out) = Command::new("ip").args(&args).output() {
                    eprintln!("{role}: {cmd}:\n{}", String::from_utf8_lossy(&out.stdout));
                }
            }
        }
        for role in ["s", "c", "p", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// The ones'-complement sum of `data` as 16-bit big-endian words.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks an IPv4/UDP packet (from a raw socket: IP header first): the IP header checksum,
/// and the UDP checksum over the pseudo-header; returns (source, destination, payload).
fn check_packet(packet: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>) {
    assert!(packet.len() >= 28, "short packet {packet:02x?}");
    assert_eq!(packet[0], 0x45, "IPv4 without options");
    assert_eq!(
        fold(sum16(&packet[..20], 0)),
        0xffff,
        "IPv4 header checksum"
    );
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    assert_eq!(total, packet.len(), "IP total length");
    let udp = &packet[20..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    assert_eq!(udp_len, udp.len(), "UDP length");
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    assert_ne!(check, 0, "a UDP checksum is present");
    let mut sum = sum16(&packet[12..20], 0); // source and destination addresses
    sum += 17 + udp_len as u32;
    assert_eq!(
        fold(sum16(udp, sum)),
        0xffff,
        "UDP checksum of {packet:02x?}"
    );
    let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    (
        SocketAddr::new(ip(&packet[12..16]), port(&udp[0..2])),
        SocketAddr::new(ip(&packet[16..20]), port(&udp[2..4])),
        udp[8..].to_vec(),
    )
}

/// Checks a UDP datagram that arrived over IPv6 (UDP header first): its length, and its
/// checksum over the pseudo-header (RFC 8200 §8.1: mandatory); returns the payload.
fn check_udp6(src: IpAddr, dst: IpAddr, udp: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (src, dst) else {
        panic!("IPv6 addresses expected: {src} {dst}");
    };
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    assert_eq!(udp_len, udp.len(), "UDP length");
    assert_ne!(
        u16::from_be_bytes([udp[6], udp[7]]),
        0,
        "an IPv6 UDP checksum"
    );
    let mut sum = sum16(&src.octets(), 0);
    sum = sum16(&dst.octets(), sum);
    sum += 17 + udp_len as u32;
    assert_eq!(fold(sum16(udp, sum)), 0xffff, "UDP checksum of {udp:02x?}");
    udp[8..].to_vec()
}

// ---- hand-made frames, for what no socket would send ----

/// The UDP checksum of `udp` (header included, its checksum field as it is) over the
/// pseudo-header of `src` and `dst`, either family; 0 is sent as 0xffff (RFC 768).
fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let mut sum = sum16(&octets(src), 0);
    sum = sum16(&octets(dst), sum);
    sum += 17 + udp.len() as u32;
    match !fold(sum16(udp, sum)) {
        0 => 0xffff,
        check => check,
    }
}

/// A UDP header and `payload` with its checksum for `src` -> `dst`.
fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let check = udp_checksum(src.ip(), dst.ip(), &udp);
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    udp
}

/// An IPv4 packet (header onwards): `options` (a multiple of 4 bytes) after the fixed
/// header, identification `id`, flags and fragment offset `frag`, then `body` (a UDP
/// datagram or a piece of one); both checksums right.
fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    id: u16,
    frag: u16,
    body: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IPv4 options come in 32-bit words");
    let header = 20 + options.len();
    let mut ip = vec![0x40 | (header / 4) as u8, 0];
    ip.extend_from_slice(&((header + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(options);
    ip.extend_from_slice(body);
    reseal_ipv4(&mut ip);
    ip
}

/// A whole UDP-over-IPv4 packet, no options, not fragmented (DF set, as Linux sends).
fn ipv4_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 addresses expected: {src} {dst}");
    };
    ipv4_packet(s, d, &[], 1, 0x4000, &udp_datagram(src, dst, payload))
}

/// Recomputes the IPv4 header checksum after an edit, so the edit is the packet's only defect.
fn reseal_ipv4(ip: &mut [u8]) {
    let header = usize::from(ip[0] & 0xf) * 4;
    ip[10..12].copy_from_slice(&[0, 0]);
    let check = !fold(sum16(&ip[..header], 0));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
}

/// Sets the UDP length field of a 20-byte-header IPv4 packet to `len` and its checksum to
/// what a receiver trusting that length would compute (over the first `len` bytes), so the
/// length is the one lie.
fn lie_about_udp_length(ip: &mut [u8], len: u16) {
    let udp = &mut ip[20..];
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let covered = usize::from(len).min(udp.len());
    let mut sum = sum16(&ip[12..20], 0);
    sum += 17 + u32::from(len);
    let check = match !fold(sum16(&ip[20..20 + covered], sum)) {
        0 => 0xffff,
        c => c,
    };
    ip[26..28].copy_from_slice(&check.to_be_bytes());
}

/// The two fragments of a UDP-over-IPv4 packet, split `at` bytes (a multiple of 8) into the
/// UDP datagram; reassembled they are `ipv4_udp(src, dst, payload)`.
fn ipv4_fragments(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    id: u16,
    at: usize,
) -> [Vec<u8>; 2] {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 addresses expected: {src} {dst}");
    };
    assert_eq!(at % 8, 0, "fragment offsets count 8-byte units");
    let udp = udp_datagram(src, dst, payload);
    const MF: u16 = 0x2000;
    [
        ipv4_packet(s, d, &[], id, MF, &udp[..at]),
        ipv4_packet(s, d, &[], id, (at / 8) as u16, &udp[at..]),
    ]
}

/// A UDP-over-IPv6 packet (header onwards), with an empty hop-by-hop options header
/// (PadN) before the UDP header when `hop_by_hop`.
fn ipv6_udp(src: SocketAddr, dst: SocketAddr, hop_by_hop: bool, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv6 addresses expected: {src} {dst}");
    };
    let udp = udp_datagram(src, dst, payload);
    // Next header UDP, length 0 (8 bytes), PadN of 4 bytes of padding.
    let extension: &[u8] = if hop_by_hop {
        &[17, 0, 1, 4, 0, 0, 0, 0]
    } else {
        &[]
    };
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&((extension.len() + udp.len()) as u16).to_be_bytes());
    ip.push(if hop_by_hop { 0 } else { 17 });
    ip.push(64);
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    ip.extend_from_slice(extension);
    ip.extend_from_slice(&udp);
    ip
}

/// The next datagram the tap sees from `from`, within `wait`.
fn tapped(tap: &socket2::Socket, from: SocketAddr, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match (&*tap).read(&mut buf) {
            Ok(n) if n >= 28 => {
                let packet = &buf[..n];
                let src = SocketAddr::new(
                    IpAddr::from([packet[12], packet[13], packet[14], packet[15]]),
                    u16::from_be_bytes([packet[20], packet[21]]),
                );
                if src == from {
                    return Some(packet.to_vec());
                }
            }
            _ => {}
        }
    }
    None
}

fn kernel_packets(metrics: &str, direction: &str) -> f64 {
    let needle = format!(
        "turnpike_datapath_relayed_packets_total{{datapath=\"kernel\",direction=\"{direction}\"}}"
    );
    metrics
        .lines()
        .find(|l| l.starts_with(&needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `ok(metrics)`; the last metrics in the panic message if it never is.
fn wait_for_metrics(lab: &Lab, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = lab.metrics();
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never seen in the metrics:\n{}",
            text.lines()
                .filter(|l| l.contains("relayed") || l.contains("xdp"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// ChannelData both ways through the kernel: the peer gets UDP from the relay address and
/// the client ChannelData from the listening address, every packet with valid checksums;
/// the kernel counters count them, and the userspace relay count stays near zero.
#[test]
fn channel_data_round_trip_takes_the_kernel_path_with_valid_checksums() {
    round_trip("generic");
}

/// The same in native (driver) mode on the veth: XDP_TX frames reach the bridge because
/// its end of the pair has an XDP program (the lab's xdp_pass; without one they wait in its
/// ring until other traffic comes by, and this test loses packet 1).
#[test]
fn native_mode_on_a_veth_relays_both_ways_when_the_peer_end_has_a_program() {
    round_trip("driver");
}

fn round_trip(mode: &str) {
    let Some(mut lab) = Lab::new() else { return };
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", mode]);
    assert!(
        lab.log_with("turnpike serving")
            .contains("relayed in the kernel")
            && lab.log().contains(&format!("mode=\"{mode}\"")),
        "the program did not attach in {mode} mode:\n{}",
        lab.log()
    );
    let mut client = lab.client();
    let peer = lab.peer();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    exchange(&lab, &mut client, &peer, relayed);
}

/// Binds CHANNEL from `client` to `peer` and sends ChannelData both ways through the
/// relay `relayed`: the peer gets UDP from the relay address and the client ChannelData
/// from the listening address, every packet with valid checksums (seen by raw sockets in
/// the client's and the peer's namespaces); the kernel counters count them, and the
/// userspace relay count stays near zero.
fn exchange(lab: &Lab, client: &mut UdpTurn, peer: &UdpSocket, relayed: SocketAddr) {
    let peer_addr = peer.local_addr().unwrap();
    let client_addr = client.sock.local_addr().unwrap();
    let server = client.server;
    let before = lab.metrics();
    client
        .channel_bind(CHANNEL, peer_addr)
        .expect_success("ChannelBind");
    let peer_tap = Tap::new(lab, "p", peer_addr.ip());
    let client_tap = Tap::new(lab, "c", client_addr.ip());

    const N: usize = 50;
    for i in 0..N {
        // Odd and even lengths, so a padding or parity mistake in the checksum shows.
        let payload = vec![i as u8; 20 + i];
        client.send_channel_data(CHANNEL, &payload);
        let (got, from) = recv_from(peer, Duration::from_secs(2))
            .unwrap_or_else(|| panic!("packet {i} did not reach the peer"));
        assert_eq!(from, relayed, "from the relay address");
        assert_eq!(got, payload);
        let data = peer_tap
            .next(relayed, Duration::from_secs(1))
            .unwrap_or_else(|| panic!("packet {i} not seen by the peer's tap"));
        assert_eq!(data, payload);
    }
    // With padding to four bytes, which UDP does not need but allows: the peer gets
    // exactly the data.
    let mut padded = channel_data(CHANNEL, b"abcde");
    padded.extend_from_slice(&[0, 0, 0]);
    client.send_raw(&padded);
    let (got, _) = recv_from(peer, Duration::from_secs(2)).expect("padded ChannelData");
    assert_eq!(got, b"abcde");
    let data = peer_tap.next(relayed, Duration::from_secs(1));
    assert_eq!(data.as_deref(), Some(&b"abcde"[..]), "padded, tapped");

    for i in 0..N {
        let payload = vec![0x80 | i as u8; 30 + i];
        peer.send_to(&payload, relayed).unwrap();
        let got = client
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("packet {i} did not reach the client"));
        assert_eq!(got, channel_data(CHANNEL, &payload));
        let data = client_tap
            .next(server, Duration::from_secs(1))
            .unwrap_or_else(|| panic!("packet {i} not seen by the client's tap"));
        assert_eq!(data, got);
    }

    let (to_peer, to_client) = (
        kernel_packets(&before, "to_peer"),
        kernel_packets(&before, "to_client"),
    );
    let metrics = wait_for_metrics(lab, "kernel counters", |m| {
        kernel_packets(m, "to_peer") >= to_peer + N as f64
            && kernel_packets(m, "to_client") >= to_client + N as f64
    });
    // The first packet each way may meet an unresolved neighbour and be passed to userspace.
    let userspace = metric_sum(&metrics, "turnpike_relayed_packets")
        - metric_sum(&before, "turnpike_relayed_packets");
    assert!(
        userspace <= 4.0,
        "{userspace} packets took the userspace path:\n{metrics}"
    );
}

/// A raw socket that sees every UDP datagram arriving in a namespace, to check checksums
/// the stack might not (a veth marks what it delivers as verified).
enum Tap {
    /// IPv4: the IP header comes with each datagram.
    V4(socket2::Socket),
    /// IPv6: the UDP header onwards (RFC 3542 §3); the destination is the tap's address.
    V6(UdpSocket, Ipv6Addr),
}

impl Tap {
    fn new(lab: &Lab, role: &str, local: IpAddr) -> Tap {
        match local {
            IpAddr::V4(_) => Tap::V4(lab.udp_tap(role)),
            IpAddr::V6(ip) => Tap::V6(lab.udp_tap6(role), ip),
        }
    }

    /// The payload of the next datagram from `from`, within `wait`, once its checksums
    /// are checked.
    fn next(&self, from: SocketAddr, wait: Duration) -> Option<Vec<u8>> {
        match self {
            Tap::V4(tap) => tapped(tap, from, wait).map(|packet| check_packet(&packet).2),
            Tap::V6(tap, local) => {
                let deadline = Instant::now() + wait;
                let mut buf = [0u8; 2048];
                while Instant::now() < deadline {
                    let Ok((n, src)) = tap.recv_from(&mut buf) else {
                        continue;
                    };
                    let udp = &buf[..n];
                    let sport = u16::from_be_bytes([udp[0], udp[1]]);
                    if n < 8 || SocketAddr::new(src.ip(), sport) != from {
                        continue;
                    }
                    return Some(check_udp6(src.ip(), IpAddr::V6(*local), udp));
                }
                None
            }
        }
    }
}

/// The IPv6 lab, the daemon attached in generic mode.
fn lab6() -> Option<Lab> {
    let mut lab = Lab::with(Setup {
        ipv6: true,
        ..Setup::default()
    })?;
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "generic"]);
    assert!(
        lab.log_with("turnpike serving")
            .contains("relayed in the kernel")
            && !lab.log().contains("stay in userspace"),
        "attached for both families:\n{}",
        lab.log()
    );
    Some(lab)
}

/// IPv6 client, IPv6 relay (REQUESTED-ADDRESS-FAMILY), IPv6 peer.
#[test]
fn ipv6_channel_data_round_trip_takes_the_kernel_path_with_valid_checksums() {
    let Some(lab) = lab6() else { return };
    let mut client = lab.client6();
    let relayed = client
        .allocate_with(&ipv6_relay)
        .expect_success("Allocate IPv6")
        .relayed();
    assert_eq!(relayed.ip(), IpAddr::V6(SERVER_IP6));
    exchange(&lab, &mut client, &lab.peer6(), relayed);
}

/// A dual allocation (ADDITIONAL-ADDRESS-FAMILY) of an IPv4 client: a channel to an IPv6
/// peer is translated v4 -> v6 and back in the kernel, and one to an IPv4 peer beside it
/// stays plain.
#[test]
fn a_dual_allocation_relays_an_ipv4_client_to_an_ipv6_peer_in_the_kernel() {
    let Some(lab) = lab6() else { return };
    let mut client = lab.client();
    let relays = client
        .allocate_with(&dual_relay)
        .expect_success("Allocate dual")
        .relayed_all();
    let relay6 = *relays
        .iter()
        .find(|r| r.is_ipv6())
        .unwrap_or_else(|| panic!("no IPv6 relay in {relays:?}"));
    exchange(&lab, &mut client, &lab.peer6(), relay6);
}

/// An IPv6 client's default allocation is IPv4 (RFC 8656 §7.2): its channel to an IPv4
/// peer is translated v6 -> v4 and back in the kernel.
#[test]
fn an_ipv6_client_relays_to_an_ipv4_peer_in_the_kernel() {
    let Some(lab) = lab6() else { return };
    let mut client = lab.client6();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    assert_eq!(relayed.ip(), IpAddr::V4(SERVER_IP));
    exchange(&lab, &mut client, &lab.peer(), relayed);
}

/// Two clients of this server, each with a channel to the other's relay (two WebRTC peers
/// both relaying through it): ChannelData from one reaches the other as ChannelData on its
/// own channel, client to client in the kernel, checksums valid; the second one is an IPv6
/// client (with an IPv4 relay), so the hairpin translates too.
#[test]
fn a_hairpin_between_two_clients_of_this_server_stays_in_the_kernel() {
    let Some(lab) = lab6() else { return };
    let mut a = lab.client();
    let mut b = lab.client6();
    let relay_a = a.allocate().expect_success("Allocate A").relayed();
    let relay_b = b.allocate().expect_success("Allocate B").relayed();
    let (chan_a, chan_b) = (0x4001, 0x4abc);
    a.channel_bind(chan_a, relay_b)
        .expect_success("ChannelBind A");
    b.channel_bind(chan_b, relay_a)
        .expect_success("ChannelBind B");
    let before = lab.metrics();
    let tap_b = Tap::new(&lab, "c", IpAddr::V6(CLIENT_IP6));
    let tap_a = Tap::new(&lab, "c", IpAddr::V4(CLIENT_IP));
    const N: usize = 30;
    for i in 0..N {
        let payload = vec![i as u8; 40 + i];
        a.send_channel_data(chan_a, &payload);
        let got = b
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("packet {i} did not reach B"));
        assert_eq!(got, channel_data(chan_b, &payload));
        let tapped = tap_b.next(b.server, Duration::from_secs(1));
        assert_eq!(tapped.as_ref(), Some(&got), "B's tap, packet {i}");

        let payload = vec![0x80 | i as u8; 41 + i];
        b.send_channel_data(chan_b, &payload);
        let got = a
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("packet {i} did not reach A"));
        assert_eq!(got, channel_data(chan_a, &payload));
        let tapped = tap_a.next(a.server, Duration::from_secs(1));
        assert_eq!(tapped.as_ref(), Some(&got), "A's tap, packet {i}");
    }
    // Each hairpinned datagram is one to a peer and one from a peer, as in userspace.
    let hairpins = |m: &str| kernel_packets(m, "to_peer") - kernel_packets(&before, "to_peer");
    let metrics = wait_for_metrics(&lab, "kernel hairpins", |m| {
        hairpins(m) >= 2.0 * N as f64 - 4.0
    });
    let userspace = metric_sum(&metrics, "turnpike_relayed_packets")
        - metric_sum(&before, "turnpike_relayed_packets");
    assert!(
        userspace <= 8.0,
        "{userspace} packets took the userspace path:\n{metrics}"
    );
}

/// Two aiortc WebRTC peers (../shared/harness/run_pair.sh), one in the client's namespace
/// and one in the peer's, relay-only through the server in native mode: 4 MiB over a data
/// channel and back, relay to relay, so each peer's channel points at the other's relay and
/// the program hairpins. Proof it took the kernel path: the kernel's counters rise by
/// thousands of datagrams while userspace relays next to none (aioice binds a channel at
/// once, so even the ICE checks go as ChannelData).
#[test]
fn aiortc_peers_relaying_through_the_server_take_the_kernel_path() {
    let Some(mut lab) = Lab::new() else { return };
    let run_pair = require_run_pair();
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "driver"]);
    let before = lab.metrics();
    let url = format!("turn:{SERVER_IP}:3478?transport=udp");
    let out = run_with_timeout(
        Command::new(run_pair)
            .env("HARNESS_HOME", harness_home())
            .args(["--ns1", &lab.ns("c"), "--ns2", &lab.ns("p"), "--"])
            .args(["--turn", &url, "--secret", SECRET, "--policy", "relay"])
            .args(["--bytes", "4194304", "--timeout", "60"]),
        Duration::from_secs(90),
    );
    assert!(out.success(), "run_pair.sh failed:\n{out}");
    let results: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(results.len(), 2, "two result lines:\n{out}");
    for r in &results {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            (r["local_type"].as_str(), r["remote_type"].as_str()),
            (Some("relay"), Some("relay")),
            "{r}"
        );
        assert_eq!(r["bytes"], 4_194_304, "{r}");
    }
    assert_eq!(results[0]["sha256"], results[1]["sha256"], "echoed intact");

    let kernel = |m: &str| kernel_packets(m, "to_peer") - kernel_packets(&before, "to_peer");
    // 4 MiB each way in data-channel chunks of at most ~1.2 KB.
    let metrics = wait_for_metrics(&lab, "the kernel relayed the transfer", |m| {
        kernel(m) >= 2.0 * 4_194_304.0 / 1300.0
    });
    let userspace = metric_sum(&metrics, "turnpike_relayed_packets")
        - metric_sum(&before, "turnpike_relayed_packets");
    assert!(
        userspace <= 20.0,
        "{userspace} datagrams took the userspace path, {} the kernel's:\n{metrics}",
        kernel(&metrics)
    );
    eprintln!(
        "aiortc pair: {} datagrams relayed in the kernel, {userspace} in userspace",
        kernel(&metrics)
    );
}

/// Node.js, Debian's Chromium and tests/e2e's playwright-core, or why the browser lab test
/// cannot run here.
fn browser_tools(e2e: &Path) -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    if !chromium.is_file() {
        return Err("no /usr/bin/chromium (apt-get install chromium)".into());
    }
    let node = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("node"))
                .find(|p| p.is_file())
        })
        .ok_or("no node in PATH (apt-get install nodejs)")?;
    if !e2e.join("node_modules/playwright-core").is_dir() {
        return Err("playwright-core is not installed: run `npm ci` in tests/e2e".into());
    }
    Ok((node, chromium))
}

/// Headless Chromium in the client's namespace (tests/e2e/browser_peer.mjs, its page served
/// on that namespace's own loopback) and an aiortc answerer (tests/e2e/aiortc_peer.py) in
/// the peer's, relay-only through the server in native mode, signalling through files:
/// 4 MiB from the browser over a data channel, hashed by aiortc. Chromium relays with Send
/// indications until its ChannelBind is answered, then with ChannelData: the kernel's
/// counters carry nearly every datagram of the call (Chromium's own count of the selected
/// pair's packets is the measure), and userspace relays next to none.
#[test]
fn chromium_relay_only_through_the_server_takes_the_kernel_path() {
    const BYTES: usize = 4 * 1024 * 1024;
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    if !is_root() {
        eprintln!("SKIP: the XDP lab needs root (network namespaces, BPF)");
        return;
    }
    let (node, chromium) = match browser_tools(&e2e) {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    require_run_pair(); // the aiortc venv, as for the aiortc pair
    let python = aiortc_python();
    let Some(mut lab) = Lab::new() else { return };
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "driver"]);

    let dir = temp_dir("xdp-chromium");
    let signal_dir = dir.path().to_str().expect("temp path is UTF-8").to_owned();
    let file = dir.path().join("file.bin");
    let mut data = vec![0u8; BYTES];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("random file content");
    std::fs::write(&file, &data).expect("write the file to send");
    let sha256 = run_with_timeout(
        Command::new("sha256sum").arg(&file),
        Duration::from_secs(10),
    );
    assert!(sha256.success(), "{sha256}");
    let sha256 = sha256.stdout.split_whitespace().next().unwrap().to_owned();

    let url = format!("turn:{SERVER_IP}:3478?transport=udp");
    let (browser_user, browser_pass) = rest_credentials(SECRET, "chromium", 3600);
    let (peer_user, peer_pass) = rest_credentials(SECRET, "aiortc", 3600);
    let before = lab.metrics();
    let peer_log = |name: &str| File::create(dir.path().join(name)).expect("peer log file");
    // `ip netns exec` execs python, so this is the peer's own PID.
    let mut peer = Command::new("ip")
        .args(["netns", "exec", &lab.ns("p")])
        .arg(&python)
        .arg(e2e.join("aiortc_peer.py"))
        .args(["--signal-dir", &signal_dir, "--turn", &url])
        .args(["--username", &peer_user, "--credential", &peer_pass])
        .args(["--video-frames", "0", "--timeout", "50"])
        .stdin(Stdio::null())
        .stdout(peer_log("peer.out"))
        .stderr(peer_log("peer.err"))
        .spawn()
        .expect("start the aiortc peer");
    let browser = run_with_timeout(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns("c")])
            .arg(&node)
            .arg(e2e.join("browser_peer.mjs"))
            .args([
                "--signal-dir",
                &signal_dir,
                "--file",
                file.to_str().unwrap(),
            ])
            .args(["--turn", &url, "--username", &browser_user])
            .args(["--credential", &browser_pass, "--port", "8000"])
            .args(["--timeout", "50", "--chromium", chromium.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    // The peer ends once the browser said bye; if the browser failed, it is told to stop.
    let deadline = Instant::now() + Duration::from_secs(if browser.success() { 10 } else { 0 });
    while Instant::now() < deadline && matches!(peer.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(peer.try_wait(), Ok(None)) {
        let _ = Command::new("kill").arg(peer.id().to_string()).status();
        std::thread::sleep(Duration::from_secs(1));
        let _ = peer.kill();
    }
    let _ = peer.wait();
    let peer_out = std::fs::read_to_string(dir.path().join("peer.out")).unwrap_or_default();
    let peer_err = std::fs::read_to_string(dir.path().join("peer.err")).unwrap_or_default();
    assert!(
        browser.success(),
        "the browser peer failed:\n{browser}\naiortc peer:\n{peer_out}\n{peer_err}"
    );
    let r: serde_json::Value = browser
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .unwrap_or_else(|| panic!("no result line from the browser peer:\n{browser}"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (
            r["pair"]["local"]["type"].as_str(),
            r["pair"]["remote"]["type"].as_str()
        ),
        (Some("relay"), Some("relay")),
        "Chromium's selected pair: {r}"
    );
    let peer = &r["peer"];
    assert_eq!(peer["ok"], true, "{peer}");
    assert_eq!(
        (peer["local_type"].as_str(), peer["remote_type"].as_str()),
        (Some("relay"), Some("relay")),
        "aiortc's selected pair: {peer}"
    );
    assert_eq!(r["transfer"]["bytes"], BYTES, "{r}");
    assert_eq!(peer["bytes"], BYTES, "{peer}");
    assert_eq!(
        peer["sha256"].as_str(),
        Some(sha256.as_str()),
        "intact: {r}"
    );

    // Every datagram of the call passes the relay once (hairpin: each counts as to_peer).
    let call = r["pair"]["packetsSent"].as_f64().expect("packetsSent")
        + r["pair"]["packetsReceived"]
            .as_f64()
            .expect("packetsReceived");
    assert!(
        call >= BYTES as f64 / 1300.0,
        "4 MiB in chunks of at most ~1.2 KB, yet Chromium counts {call} datagrams: {r}"
    );
    let kernel = |m: &str| kernel_packets(m, "to_peer") - kernel_packets(&before, "to_peer");
    let metrics = wait_for_metrics(&lab, "the kernel relayed the call", |m| {
        kernel(m) >= 0.95 * call
    });
    // Counted as in the aiortc test (both directions): a datagram hairpinned in userspace
    // counts twice, to_peer on one allocation and to_client on the other. What goes there
    // is the first datagrams each way, before Chromium's ChannelBind is answered: about
    // ten in the runs so far, some 140 bytes each (ICE checks, going by their size).
    let userspace = metric_sum(&metrics, "turnpike_relayed_packets")
        - metric_sum(&before, "turnpike_relayed_packets");
    assert!(
        userspace <= 60.0,
        "{userspace} datagrams took the userspace path, {} the kernel's, {call} in the call:\n{metrics}",
        kernel(&metrics)
    );
    eprintln!(
        "chromium <-> aiortc: {call} datagrams in Chromium's selected pair ({} sent, {} \
         received), {} relayed in the kernel, {userspace} in userspace; 4 MiB in {} ms, {}",
        r["pair"]["packetsSent"],
        r["pair"]["packetsReceived"],
        kernel(&metrics),
        r["transfer"]["transfer_ms"],
        r["selected_pair"]
    );
}

/// `turnpike_xdp_channels`: entry pairs in the program's maps.
fn kernel_channels(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with("turnpike_xdp_channels "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A deleted allocation (Refresh with lifetime 0) takes its channel out of the kernel at
/// once: ChannelData after it reaches nobody, either way, and the maps are empty again
/// (the counter entry going would stop forwarding too, so only the count shows a leaked
/// channel entry).
#[test]
fn forwarding_stops_when_the_allocation_is_deleted() {
    let Some(mut lab) = Lab::new() else { return };
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "generic"]);
    let mut client = lab.client();
    let peer = lab.peer();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    client
        .channel_bind(CHANNEL, peer.local_addr().unwrap())
        .expect_success("ChannelBind");
    for _ in 0..5 {
        client.send_channel_data(CHANNEL, b"before");
        assert_eq!(
            recv_from(&peer, Duration::from_secs(2)).map(|(d, _)| d),
            Some(b"before".to_vec())
        );
    }
    wait_for_metrics(&lab, "kernel to_peer and one channel in the maps", |m| {
        kernel_packets(m, "to_peer") >= 4.0 && kernel_channels(m) == Some(1.0)
    });
    client.refresh(0).expect_success("Refresh lifetime 0");
    client.send_channel_data(CHANNEL, b"after");
    assert_eq!(
        recv_from(&peer, Duration::from_millis(500)).map(|(d, _)| d),
        None,
        "ChannelData relayed after the allocation was deleted"
    );
    peer.send_to(b"late", relayed).unwrap();
    assert_eq!(
        client.recv(Duration::from_millis(500)),
        None,
        "the peer reached the client after the allocation was deleted"
    );
    wait_for_metrics(&lab, "no channel left in the maps", |m| {
        kernel_channels(m) == Some(0.0)
    });
}

/// An interface that does not forward: `bpf_fib_lookup` would answer FWD_DISABLED for every
/// packet, so the daemon does not attach. One line names the sysctl to set, and relaying
/// works in userspace.
#[test]
fn without_ip_forwarding_one_line_names_the_sysctl_and_userspace_relays() {
    let Some(mut lab) = Lab::with(Setup {
        forwarding: false,
        ..Setup::default()
    }) else {
        return;
    };
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "generic"]);
    let mut client = lab.client();
    let peer = lab.peer();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    client
        .channel_bind(CHANNEL, peer.local_addr().unwrap())
        .expect_success("ChannelBind");
    for _ in 0..5 {
        client.send_channel_data(CHANNEL, b"userspace");
        assert_eq!(
            recv_from(&peer, Duration::from_secs(2)).map(|(d, _)| d),
            Some(b"userspace".to_vec())
        );
        peer.send_to(b"back", relayed).unwrap();
        assert_eq!(
            client.recv(Duration::from_secs(2)),
            Some(channel_data(CHANNEL, b"back"))
        );
    }
    let log = lab.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("xdp:")).collect();
    assert_eq!(lines.len(), 1, "one xdp line, in:\n{log}");
    assert!(
        lines[0].contains("kernel path not enabled")
            && lines[0].contains("net.ipv4.conf.eth0.forwarding=1"),
        "names the sysctl: {}",
        lines[0]
    );
    let metrics = wait_for_metrics(&lab, "userspace relay", |m| {
        metric_sum(m, "turnpike_relayed_packets") >= 10.0
    });
    assert!(
        metrics.contains("turnpike_xdp_attached 0"),
        "not attached:\n{metrics}"
    );
}

/// An interface that does not exist: one log line names the reason, and relaying works in
/// userspace as without the option. Runs on loopback, no root needed.
#[test]
fn without_the_interface_one_line_says_why_and_userspace_relays() {
    let server = Server::start(&["--xdp-interface", "tpnoiface0"]);
    let mut client = UdpTurn::rest(&server, "fallback");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.allocate().expect_success("Allocate");
    client
        .channel_bind(CHANNEL, peer.local_addr().unwrap())
        .expect_success("ChannelBind");
    client.send_channel_data(CHANNEL, b"userspace");
    assert_eq!(
        recv_from(&peer, Duration::from_secs(2)).map(|(d, _)| d),
        Some(b"userspace".to_vec())
    );
    let log = server.stderr_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("xdp: kernel path not enabled"))
        .collect();
    assert_eq!(lines.len(), 1, "one line, in:\n{log}");
    assert!(
        lines[0].contains("tpnoiface0"),
        "names the interface: {}",
        lines[0]
    );
}

/// `turnpike_xdp_passed_total{reason}`.
fn passed(metrics: &str, reason: &str) -> f64 {
    let needle = format!("turnpike_xdp_passed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Binds CHANNEL from `client` to `peer` and relays until the kernel does (the first
/// packet may meet an unresolved neighbour and take the userspace path).
fn bind_in_the_kernel(lab: &Lab, client: &mut UdpTurn, peer: &UdpSocket) {
    client
        .channel_bind(CHANNEL, peer.local_addr().unwrap())
        .expect_success("ChannelBind");
    for _ in 0..3 {
        client.send_channel_data(CHANNEL, b"warm up");
        assert_eq!(
            recv_from(peer, Duration::from_secs(2)).map(|(d, _)| d),
            Some(b"warm up".to_vec())
        );
    }
    wait_for_metrics(lab, "the channel relayed in the kernel", |m| {
        kernel_packets(m, "to_peer") >= 1.0 && kernel_channels(m) == Some(1.0)
    });
}

/// Ordinary ChannelData still takes the kernel path, and /metrics answers.
fn still_relays_in_the_kernel(lab: &Lab, client: &UdpTurn, peer: &UdpSocket) {
    let before = lab.metrics();
    for i in 0..5u8 {
        client.send_channel_data(CHANNEL, &[0x80 | i; 33]);
        assert_eq!(
            recv_from(peer, Duration::from_secs(2)).map(|(d, _)| d),
            Some(vec![0x80 | i; 33]),
            "ordinary ChannelData {i}"
        );
    }
    wait_for_metrics(lab, "ordinary ChannelData relayed in the kernel", |m| {
        kernel_packets(m, "to_peer") >= kernel_packets(&before, "to_peer") + 5.0
    });
}

/// One hostile input: `packets` put on the wire raw, the reason the program must pass
/// every one of them under, and what userspace then makes of them: the kernel stack
/// reassembles fragments and reads IP options, and drops what does not add up.
struct Hostile<'a> {
    what: &'static str,
    from: &'a Wire,
    packets: Vec<Vec<u8>>,
    reason: &'static str,
    /// Whether the reason's count rises by exactly the packets sent (not so for one the
    /// lab's own chatter shares: ICMPv6 neighbour discovery is not UDP either).
    exact: bool,
    /// Datagrams userspace relays, either way (`turnpike_relayed_packets`).
    userspace: usize,
    /// Of those, copies of `payload` the peer receives from the relay.
    at_peer: usize,
    payload: Vec<u8>,
}

impl<'a> Hostile<'a> {
    /// `packet` twice, each passed under `reason` (counted exactly) and relayed by nobody.
    fn relayed_by_nobody(
        what: &'static str,
        from: &'a Wire,
        packet: Vec<u8>,
        reason: &'static str,
        payload: Vec<u8>,
    ) -> Self {
        Hostile {
            what,
            from,
            packets: vec![packet.clone(), packet],
            reason,
            exact: true,
            userspace: 0,
            at_peer: 0,
            payload,
        }
    }
}

/// Sends `case` and checks it: passed under its reason, nothing relayed in the kernel,
/// userspace relaying exactly what it should.
fn attack(lab: &Lab, peer: &UdpSocket, relayed: SocketAddr, case: Hostile) {
    let Hostile { what, reason, .. } = case;
    let before = lab.metrics();
    for packet in &case.packets {
        case.from.send(packet);
    }
    let sent = case.packets.len() as f64;
    let rise = |m: &str| passed(m, reason) - passed(&before, reason);
    let userspace = |m: &str| {
        metric_sum(m, "turnpike_relayed_packets") - metric_sum(&before, "turnpike_relayed_packets")
    };
    let metrics = wait_for_metrics(lab, what, |m| {
        rise(m) >= sent && userspace(m) >= case.userspace as f64
    });
    if case.exact {
        assert_eq!(rise(&metrics), sent, "{what}: passed as {reason}");
    }
    for direction in ["to_peer", "to_client"] {
        assert_eq!(
            kernel_packets(&metrics, direction),
            kernel_packets(&before, direction),
            "{what}: relayed {direction} in the kernel"
        );
    }
    for i in 0..case.at_peer {
        assert_eq!(
            recv_from(peer, Duration::from_secs(2)),
            Some((case.payload.clone(), relayed)),
            "{what}: copy {i} relayed by userspace"
        );
    }
    assert_eq!(
        recv_from(peer, Duration::from_millis(300)),
        None,
        "{what}: the peer received more than userspace relays"
    );
    assert_eq!(
        userspace(&lab.metrics()),
        case.userspace as f64,
        "{what}: relayed by userspace"
    );
}

/// A lab with a channel relayed in the kernel, and a [`Wire`] from the client's namespace.
fn hostile_lab() -> Option<(Lab, UdpTurn, UdpSocket, SocketAddr, Wire)> {
    let mut lab = Lab::new()?;
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "generic"]);
    let mut client = lab.client();
    let peer = lab.peer();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    bind_in_the_kernel(&lab, &mut client, &peer);
    let wire = lab.wire("c", IpAddr::V4(CLIENT_IP));
    Some((lab, client, peer, relayed, wire))
}

/// IP options, fragments and a TTL of 1, each frame carrying the channel's valid
/// ChannelData: the program passes them (ip_options, fragment, ttl) and the kernel stack
/// hands userspace what a socket would read, which relays it: options read, fragments
/// reassembled (a lone fragment never completes, so nothing), the TTL its own. ChannelData
/// whose datagram is longer than its length and padding is passed too (length); userspace
/// reads the length and relays that.
#[test]
fn unusual_ipv4_headers_are_passed_and_userspace_relays_only_what_is_whole() {
    let Some((lab, client, peer, relayed, wire)) = hostile_lab() else {
        return;
    };
    let (c, s) = (client.sock.local_addr().unwrap(), client.server);
    let (IpAddr::V4(c4), IpAddr::V4(s4)) = (c.ip(), s.ip()) else {
        unreachable!()
    };
    let cd = |payload: &[u8]| channel_data(CHANNEL, payload);
    const DF: u16 = 0x4000;
    // NOP, NOP, NOP, end of options: IHL 6.
    let options = |payload: &[u8]| {
        ipv4_packet(
            c4,
            s4,
            &[1, 1, 1, 0],
            2,
            DF,
            &udp_datagram(c, s, &cd(payload)),
        )
    };
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "IP options",
            from: &wire,
            packets: vec![options(b"with options"), options(b"with options")],
            reason: "ip_options",
            exact: true,
            userspace: 2,
            at_peer: 2,
            payload: b"with options".to_vec(),
        },
    );
    let whole = vec![0x5a; 61];
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "both fragments of a datagram",
            from: &wire,
            packets: ipv4_fragments(c, s, &cd(&whole), 0x7001, 32).to_vec(),
            reason: "fragment",
            exact: true,
            userspace: 1,
            at_peer: 1,
            payload: whole.clone(),
        },
    );
    let [first, _] = ipv4_fragments(c, s, &cd(&whole), 0x7002, 32);
    let [_, last] = ipv4_fragments(c, s, &cd(&whole), 0x7003, 32);
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "a first fragment (MF) and a last one (offset 4) of other datagrams",
            from: &wire,
            packets: vec![first, last],
            reason: "fragment",
            exact: true,
            userspace: 0,
            at_peer: 0,
            payload: whole,
        },
    );
    let mut last_hop = ipv4_udp(c, s, &cd(b"last hop"));
    last_hop[8] = 1;
    reseal_ipv4(&mut last_hop);
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "TTL 1",
            from: &wire,
            packets: vec![last_hop],
            reason: "ttl",
            exact: true,
            userspace: 1,
            at_peer: 1,
            payload: b"last hop".to_vec(),
        },
    );
    let mut trailing = cd(b"trailing bytes");
    trailing.extend_from_slice(&[0xee; 8]);
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "ChannelData 8 bytes shorter than its datagram",
            from: &wire,
            packets: vec![ipv4_udp(c, s, &trailing)],
            reason: "length",
            exact: true,
            userspace: 1,
            at_peer: 1,
            payload: b"trailing bytes".to_vec(),
        },
    );
    still_relays_in_the_kernel(&lab, &client, &peer);
}

/// Lengths that do not add up and headers cut short, each frame otherwise the channel's
/// valid ChannelData with checksums right for what it claims: passed (malformed, length),
/// and relayed by nobody: the kernel stack drops what is shorter than it says, trims what
/// is longer, and userspace drops ChannelData longer than its datagram.
#[test]
fn lying_lengths_and_truncated_headers_are_passed_and_relayed_by_nobody() {
    let Some((lab, client, peer, relayed, wire)) = hostile_lab() else {
        return;
    };
    let (c, s) = (client.sock.local_addr().unwrap(), client.server);
    let (IpAddr::V4(c4), IpAddr::V4(s4)) = (c.ip(), s.ip()) else {
        unreachable!()
    };
    let payload = b"lying lengths".to_vec();
    let packet = ipv4_udp(c, s, &channel_data(CHANNEL, &payload));
    let total = |delta: i16| {
        let mut p = packet.clone();
        let len = u16::from_be_bytes([p[2], p[3]]).wrapping_add_signed(delta);
        p[2..4].copy_from_slice(&len.to_be_bytes());
        reseal_ipv4(&mut p);
        p
    };
    let udp_len = (packet.len() - 20) as u16;
    let udp = |len: u16| {
        let mut p = packet.clone();
        lie_about_udp_length(&mut p, len);
        p
    };
    let mut long_channel_data = channel_data(CHANNEL, &payload);
    long_channel_data[2..4].copy_from_slice(&(payload.len() as u16 + 4).to_be_bytes());
    let cases: [(&str, Vec<u8>, &str); 7] = [
        ("IP total length 10 past the frame", total(10), "malformed"),
        (
            "IP total length 2 short of the frame",
            total(-2),
            "malformed",
        ),
        (
            "UDP length 4 past the IP payload",
            udp(udp_len + 4),
            "malformed",
        ),
        (
            "UDP length 2 short of the IP payload",
            udp(udp_len - 2),
            "malformed",
        ),
        (
            "ChannelData length 4 past the UDP payload",
            ipv4_udp(c, s, &long_channel_data),
            "length",
        ),
        (
            "a frame ending inside the IP header",
            packet[..12].to_vec(),
            "malformed",
        ),
        (
            "a frame ending inside the UDP header",
            ipv4_packet(c4, s4, &[], 3, 0x4000, &packet[20..24]),
            "malformed",
        ),
    ];
    for (what, packet, reason) in cases {
        attack(
            &lab,
            &peer,
            relayed,
            Hostile::relayed_by_nobody(what, &wire, packet, reason, payload.clone()),
        );
    }
    still_relays_in_the_kernel(&lab, &client, &peer);
}

/// The channel's valid ChannelData in a frame for another host's MAC address: a bridge
/// floods a frame for an unknown address to every port, and promiscuous mode or generic XDP
/// on a bridge port sees frames for others. The stack drops such a frame (PACKET_OTHERHOST),
/// so the program passes it (other_host) and nobody relays it.
#[test]
fn a_frame_for_another_mac_is_passed_and_relayed_by_nobody() {
    let Some((lab, client, peer, relayed, wire)) = hostile_lab() else {
        return;
    };
    let (c, s) = (client.sock.local_addr().unwrap(), client.server);
    let payload = b"for another host".to_vec();
    let packet = ipv4_udp(c, s, &channel_data(CHANNEL, &payload));
    let mut macs = wire.macs;
    // Locally administered, and no interface of the lab has it: the bridge floods it.
    macs[..6].copy_from_slice(&[0x02, 0x00, 0x5e, 0x10, 0x00, 0x99]);
    let elsewhere = Wire {
        socket: wire.socket.try_clone().unwrap(),
        link: wire.link,
        macs,
    };
    attack(
        &lab,
        &peer,
        relayed,
        Hostile::relayed_by_nobody(
            "ChannelData to another MAC address",
            &elsewhere,
            packet,
            "other_host",
            payload,
        ),
    );
    still_relays_in_the_kernel(&lab, &client, &peer);
}

/// A STUN Binding request (first two bits 00) to the listener; STUN from the peer's address
/// without a channel (its permission covers the IP, not the port); datagrams for ports with
/// nothing of turnpike's or no allocation: all passed (stun, no_entry), userspace answering
/// or relaying (a Data indication) or dropping as it does without the program. STUN from the
/// peer's channel address is data like any other (RFC 8656 §11.3): relayed in the kernel as
/// ChannelData, as userspace would.
#[test]
fn stun_and_datagrams_off_the_channel_are_passed_to_userspace() {
    let Some((lab, client, peer, relayed, wire)) = hostile_lab() else {
        return;
    };
    let peer_wire = lab.wire("p", IpAddr::V4(PEER_IP));
    let (c, s) = (client.sock.local_addr().unwrap(), client.server);
    // Binding request: type 0x0001, length 0, magic cookie, transaction id.
    let mut binding = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    binding.extend_from_slice(b"hostile12345");
    let cases = [
        (
            "a Binding request to the listener",
            &wire,
            c,
            s,
            binding.clone(),
            "stun",
            0,
        ),
        (
            "STUN from the peer's IP to the relay, off the channel",
            &peer_wire,
            SocketAddr::from((PEER_IP, 9)),
            relayed,
            binding.clone(),
            "stun",
            1,
        ),
        (
            "ChannelData to a closed port of the server",
            &wire,
            c,
            SocketAddr::from((SERVER_IP, 3479)),
            channel_data(CHANNEL, b"closed"),
            "no_entry",
            0,
        ),
        (
            "ChannelData to a port above the relay range",
            &wire,
            c,
            SocketAddr::from((SERVER_IP, 51000)),
            channel_data(CHANNEL, b"above"),
            "no_entry",
            0,
        ),
        (
            "a datagram from the peer to a relay port nobody has",
            &peer_wire,
            peer.local_addr().unwrap(),
            SocketAddr::from((
                SERVER_IP,
                if relayed.port() == 50999 {
                    50998
                } else {
                    50999
                },
            )),
            b"\x80unallocated".to_vec(),
            "no_entry",
            0,
        ),
        (
            "the channel's ChannelData from a client port without an allocation",
            &wire,
            SocketAddr::from((CLIENT_IP, c.port() ^ 1)),
            s,
            channel_data(CHANNEL, b"no allocation"),
            "no_entry",
            0,
        ),
    ];
    for (what, from, src, dst, payload, reason, userspace) in cases {
        attack(
            &lab,
            &peer,
            relayed,
            Hostile {
                what,
                from,
                packets: vec![ipv4_udp(src, dst, &payload)],
                reason,
                exact: true,
                userspace,
                at_peer: 0,
                payload,
            },
        );
    }
    // Userspace answered the Binding request and relayed the peer's STUN as a Data
    // indication (type 0x0017), in that order.
    let answer = client
        .recv(Duration::from_secs(2))
        .expect("a Binding response");
    assert_eq!(answer[..2], [0x01, 0x01], "Binding success: {answer:02x?}");
    let data = client
        .recv(Duration::from_secs(2))
        .expect("a Data indication");
    assert_eq!(data[..2], [0x00, 0x17], "Data indication: {data:02x?}");
    assert_eq!(client.recv(Duration::from_millis(300)), None);

    let before = lab.metrics();
    peer.send_to(&binding, relayed).unwrap();
    assert_eq!(
        client.recv(Duration::from_secs(2)),
        Some(channel_data(CHANNEL, &binding)),
        "STUN from the channel's peer reaches the client as ChannelData"
    );
    wait_for_metrics(&lab, "the peer's STUN relayed in the kernel", |m| {
        kernel_packets(m, "to_client") >= kernel_packets(&before, "to_client") + 1.0
    });
    still_relays_in_the_kernel(&lab, &client, &peer);
}

/// The IPv6 counterparts: a hop-by-hop options header before UDP is passed (not_udp) and
/// relayed by userspace once the kernel stack has read it; bytes after the datagram are
/// passed (malformed) and trimmed, the datagram relayed by userspace; a payload length past
/// or short of the frame is passed (malformed) and relayed by nobody.
#[test]
fn ipv6_extension_headers_and_lying_payload_lengths_are_passed_to_userspace() {
    let Some(lab) = lab6() else { return };
    let mut client = lab.client6();
    let relayed = client
        .allocate_with(&ipv6_relay)
        .expect_success("Allocate IPv6")
        .relayed();
    let peer = lab.peer6();
    bind_in_the_kernel(&lab, &mut client, &peer);
    let wire = lab.wire("c", IpAddr::V6(CLIENT_IP6));
    let (c, s) = (client.sock.local_addr().unwrap(), client.server);
    let payload = b"over IPv6".to_vec();
    let hop_by_hop = ipv6_udp(c, s, true, &channel_data(CHANNEL, &payload));
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "a hop-by-hop options header",
            from: &wire,
            packets: vec![hop_by_hop.clone(), hop_by_hop],
            reason: "not_udp",
            exact: false,
            userspace: 2,
            at_peer: 2,
            payload: payload.clone(),
        },
    );
    let packet = ipv6_udp(c, s, false, &channel_data(CHANNEL, &payload));
    let mut trailing = packet.clone();
    trailing.extend_from_slice(&[0xab; 100]);
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "100 bytes after the IPv6 datagram",
            from: &wire,
            packets: vec![trailing],
            reason: "malformed",
            exact: true,
            userspace: 1,
            at_peer: 1,
            payload: payload.clone(),
        },
    );
    for (what, delta) in [
        ("IPv6 payload length 10 past the frame", 10),
        ("IPv6 payload length 2 short of the frame", -2),
    ] {
        let mut p = packet.clone();
        let len = u16::from_be_bytes([p[4], p[5]]).wrapping_add_signed(delta);
        p[4..6].copy_from_slice(&len.to_be_bytes());
        attack(
            &lab,
            &peer,
            relayed,
            Hostile::relayed_by_nobody(what, &wire, p, "malformed", payload.clone()),
        );
    }
    still_relays_in_the_kernel(&lab, &client, &peer);
}

/// SIGKILL with a channel in the maps: the BPF link dies with the process, so the interface
/// has no XDP program left, and the next daemon on it starts from empty maps: the old
/// allocation's ChannelData and its peer's datagrams are passed (no_entry) and reach
/// nobody.
#[test]
fn a_killed_daemon_leaves_no_program_and_its_successor_inherits_no_entries() {
    let Some(mut lab) = Lab::new() else { return };
    let args = ["--xdp-interface", "eth0", "--xdp-mode", "generic"];
    lab.start_server(&args);
    let mut client = lab.client();
    let peer = lab.peer();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    bind_in_the_kernel(&lab, &mut client, &peer);
    assert!(lab.xdp_program().is_some(), "attached:\n{}", lab.link());

    lab.stop_server("KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.xdp_program().is_some() {
        assert!(
            Instant::now() < deadline,
            "a program is left on eth0 after SIGKILL:\n{}",
            lab.link()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    lab.start_server(&args);
    assert!(
        lab.log_with("turnpike serving")
            .contains("relayed in the kernel"),
        "the successor attached:\n{}",
        lab.log()
    );
    assert!(lab.xdp_program().is_some(), "attached:\n{}", lab.link());
    let before = lab.metrics();
    const N: usize = 5;
    for i in 0..N {
        client.send_channel_data(CHANNEL, b"to the old channel");
        peer.send_to(&[0x80, i as u8], relayed).unwrap();
    }
    let rise = |m: &str| passed(m, "no_entry") - passed(&before, "no_entry");
    let metrics = wait_for_metrics(&lab, "the old channel's traffic passed", |m| {
        rise(m) >= 2.0 * N as f64
    });
    assert_eq!(rise(&metrics), 2.0 * N as f64, "passed as no_entry");
    assert_eq!(kernel_channels(&metrics), Some(0.0), "inherited entries");
    assert_eq!(
        kernel_packets(&metrics, "to_peer") + kernel_packets(&metrics, "to_client"),
        0.0,
        "relayed in the kernel:\n{metrics}"
    );
    assert_eq!(recv_from(&peer, Duration::from_millis(300)), None);
    assert_eq!(client.recv(Duration::from_millis(300)), None);
}

/// SIGHUP: the same program stays attached, the channel keeps its kernel path and stays the
/// only entry, and deleting the allocation afterwards still empties the maps.
#[test]
fn a_reload_keeps_the_program_and_its_entries_without_stale_ones() {
    let Some(mut lab) = Lab::new() else { return };
    lab.start_server(&["--xdp-interface", "eth0", "--xdp-mode", "generic"]);
    let mut client = lab.client();
    let peer = lab.peer();
    client.allocate().expect_success("Allocate");
    bind_in_the_kernel(&lab, &mut client, &peer);
    let program = lab.xdp_program();
    lab.reload();
    assert_eq!(lab.xdp_program(), program, "the program attached");
    still_relays_in_the_kernel(&lab, &client, &peer);
    assert_eq!(kernel_channels(&lab.metrics()), Some(1.0), "one channel");
    client.refresh(0).expect_success("Refresh lifetime 0");
    wait_for_metrics(&lab, "no channel left in the maps", |m| {
        kernel_channels(m) == Some(0.0)
    });
    client.send_channel_data(CHANNEL, b"after");
    assert_eq!(recv_from(&peer, Duration::from_millis(500)), None);
}

/// A reload that sets a bandwidth cap (enforced in userspace only) takes live channels out
/// of the kernel at once, not at the allocation's next event: their ChannelData is relayed
/// by userspace, under the cap, from then on.
#[test]
fn a_reload_that_sets_a_bandwidth_cap_takes_live_channels_out_of_the_kernel_at_once() {
    let Some(mut lab) = Lab::new() else { return };
    let (_dir, config) = lab.start_on_config("[limits]\nbandwidth_per_allocation = 0\n");
    let mut client = lab.client();
    let peer = lab.peer();
    client.allocate().expect_success("Allocate");
    bind_in_the_kernel(&lab, &mut client, &peer);

    std::fs::write(&config, "[limits]\nbandwidth_per_allocation = 1000000\n").unwrap();
    lab.reload();
    wait_for_metrics(&lab, "the capped channel out of the maps", |m| {
        kernel_channels(m) == Some(0.0)
    });
    let before = lab.metrics();
    for i in 0..5u8 {
        client.send_channel_data(CHANNEL, &[i; 100]);
        assert_eq!(
            recv_from(&peer, Duration::from_secs(2)).map(|(d, _)| d),
            Some(vec![i; 100])
        );
    }
    let metrics = wait_for_metrics(&lab, "userspace relayed the capped channel", |m| {
        metric_sum(m, "turnpike_relayed_packets")
            >= metric_sum(&before, "turnpike_relayed_packets") + 5.0
    });
    assert_eq!(
        kernel_packets(&metrics, "to_peer"),
        kernel_packets(&before, "to_peer"),
        "relayed in the kernel under a cap"
    );
}

/// A reload whose peer filter denies a live channel's peer (its `allow_peers` entry
/// removed) takes the channel out of the kernel at once: turnpike_xdp_channels drops, and
/// nothing more reaches the peer or comes back from it, by either path. Before, the channel
/// kept its kernel entry (and its userspace binding) until it expired.
#[test]
fn a_reload_that_denies_a_live_peer_takes_its_channel_out_of_the_kernel_at_once() {
    let Some(mut lab) = Lab::with(Setup {
        allow_peer_flag: false,
        ..Setup::default()
    }) else {
        return;
    };
    let (_dir, config) =
        lab.start_on_config(&format!("[relay]\nallow_peers = [\"{PEER_IP}/32\"]\n"));
    let mut client = lab.client();
    let peer = lab.peer();
    let relayed = client.allocate().expect_success("Allocate").relayed();
    bind_in_the_kernel(&lab, &mut client, &peer);

    std::fs::write(&config, "[relay]\nallow_peers = []\n").unwrap();
    lab.reload();
    wait_for_metrics(&lab, "the denied peer's channel out of the maps", |m| {
        kernel_channels(m) == Some(0.0)
    });
    let before = lab.metrics();
    for i in 0..5u8 {
        client.send_channel_data(CHANNEL, &[i; 100]);
        assert_eq!(
            recv_from(&peer, Duration::from_millis(300)),
            None,
            "ChannelData {i} reached the denied peer"
        );
        peer.send_to(&[i; 100], relayed).unwrap();
        assert_eq!(
            client.recv(Duration::from_millis(300)),
            None,
            "the denied peer's datagram {i} reached the client"
        );
    }
    let after = wait_for_metrics(&lab, "the cut counted", |m| {
        metric_sum(m, "turnpike_cut_by_reload") == 2.0
    });
    for direction in ["to_peer", "to_client"] {
        assert_eq!(
            kernel_packets(&after, direction),
            kernel_packets(&before, direction),
            "relayed {direction} in the kernel after the cut"
        );
    }
    assert_eq!(
        metric_sum(&after, "turnpike_relayed_packets"),
        metric_sum(&before, "turnpike_relayed_packets"),
        "relayed in userspace after the cut"
    );
    client
        .refresh(600)
        .expect_success("Refresh: the allocation stays");
}

/// Bytes after the IP datagram: the kernel stack trims them, so userspace relays just the
/// datagram; the program passes such a frame (malformed) rather than carry the bytes to the
/// peer uncounted. Only Ethernet's padding of a minimum-size frame (60 bytes) is expected
/// there, and that frame is relayed in the kernel, the peer getting exactly its data.
#[test]
fn a_frame_longer_than_its_datagram_is_passed_unless_it_is_ethernet_padding() {
    let Some((lab, client, peer, relayed, wire)) = hostile_lab() else {
        return;
    };
    let (c, s) = (client.sock.local_addr().unwrap(), client.server);
    let mut trailing = ipv4_udp(c, s, &channel_data(CHANNEL, b"with a tail"));
    trailing.extend_from_slice(&[0xab; 1000]);
    attack(
        &lab,
        &peer,
        relayed,
        Hostile {
            what: "1000 bytes after the IP datagram",
            from: &wire,
            packets: vec![trailing],
            reason: "malformed",
            exact: true,
            userspace: 1,
            at_peer: 1,
            payload: b"with a tail".to_vec(),
        },
    );

    let before = lab.metrics();
    let mut padded = ipv4_udp(c, s, &channel_data(CHANNEL, b"tiny"));
    padded.resize(60 - 14, 0);
    wire.send(&padded);
    assert_eq!(
        recv_from(&peer, Duration::from_secs(2)),
        Some((b"tiny".to_vec(), relayed)),
        "a padded minimum-size frame"
    );
    wait_for_metrics(&lab, "the padded frame relayed in the kernel", |m| {
        kernel_packets(m, "to_peer") >= kernel_packets(&before, "to_peer") + 1.0
    });
}
