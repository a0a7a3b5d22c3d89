//! Redirecting with 300 Try Alternate (RFC 8489 §10, `server.alternate_servers`) and relaying
//! behind a 1:1 NAT (`relay.external_ip_map`), each seen by coturn's own client.
//!
//! The NAT test builds its own lab of network namespaces (needs root, `ip` and `nft`): the
//! server sits on a private address behind a namespace that does 1:1 NAT, the client and
//! the peer are on the "public" side, and nothing is linked to the host's network.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stun_types::attribute::{AlternateServer, Nonce};
use stun_types::message::{LongTermKeyCredentials, BINDING};
use turn_types::message::ALLOCATE;

use crate::harness::{
    default_args_without, require_tool, rest_credentials, CmdOutput, Server, REALM, SECRET,
};
use crate::stun_client::{build_request, no_attrs, udp_transport, UdpTurn};
use crate::uclient::run_uclient;

/// Where the first test redirects to. Nothing listens there; only the address matters.
const ALTERNATE: &str = "127.0.0.1:3999";
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `turnutils_uclient ARGS` (through `ip netns exec NS` when `netns` is given).
fn uclient(netns: Option<&str>, args: &[&str]) -> CmdOutput {
    run_uclient(netns, args, UCLIENT_TIMEOUT)
}

#[test]
fn alternate_server_redirects_allocate_with_300() {
    let server = Server::start(&["--alternate-server", ALTERNATE]);
    let client = UdpTurn::new(server.udp, "", "");

    // STUN Binding is still answered here: only allocations are redirected.
    let reply = client.unauthenticated(BINDING, &no_attrs);
    let msg = reply.msg();
    assert!(reply.is_success(), "Binding: {msg}");

    // Unauthenticated: the usual 401 challenge; the redirect is not given to strangers.
    let reply = client.unauthenticated(ALLOCATE, &udp_transport);
    let msg = reply.msg();
    assert_eq!(reply.code(), Some(401), "{msg}");
    assert!(msg.attribute::<AlternateServer>().is_err(), "{msg}");
    let nonce = msg.attribute::<Nonce>().unwrap().nonce().to_string();

    // Authenticated: 300 Try Alternate naming the configured server, signed for the user.
    let (username, password) = rest_credentials(SECRET, "redirected", 600);
    let reply = client.transact(&build_request(
        ALLOCATE,
        &udp_transport,
        Some((&username, &password, &nonce)),
    ));
    let msg = reply.msg();
    assert_eq!(reply.code(), Some(300), "{msg}");
    assert_eq!(
        msg.attribute::<AlternateServer>()
            .expect("ALTERNATE-SERVER in the 300")
            .server(),
        ALTERNATE.parse::<SocketAddr>().unwrap()
    );
    let credentials =
        LongTermKeyCredentials::new(username.clone(), password.clone(), REALM.to_string());
    msg.validate_integrity(&credentials.into())
        .expect("the 300 carries a valid MESSAGE-INTEGRITY");

    // coturn's client reports the 300 and follows ALTERNATE-SERVER (where nothing answers).
    let port = server.udp.port().to_string();
    let out = uclient(
        None,
        &[
            "-v",
            "-W",
            SECRET,
            "-u",
            "redirected",
            "-n",
            "5",
            "-m",
            "1",
            "-l",
            "100",
            "-y",
            "-p",
            &port,
            "127.0.0.1",
        ],
    );
    let text = out.combined();
    assert!(text.contains("error 300 (Try Alternate)"), "{out}");
    assert!(
        text.contains(&format!("Connected to: {ALTERNATE}")),
        "{out}"
    );
    assert!(
        !out.success(),
        "no allocation can complete at {ALTERNATE}: {out}"
    );
}

#[test]
fn uclient_follows_alternate_server_to_a_second_turnpike() {
    // B serves; A redirects every allocation to B. Binding still goes to A.
    let b = Server::start(&[]);
    let alternate = b.udp.to_string();
    let a = Server::start(&["--alternate-server", &alternate]);
    let port = a.udp.port().to_string();
    let out = uclient(
        None,
        &[
            "-v",
            "-W",
            SECRET,
            "-u",
            "redirected",
            "-n",
            "20",
            "-m",
            "2",
            "-l",
            "170",
            "-y",
            "-p",
            &port,
            "127.0.0.1",
        ],
    );
    let text = out.combined();
    assert!(out.success(), "{out}");
    assert!(text.contains("error 300 (Try Alternate)"), "{out}");
    assert!(
        text.contains(&format!("Connected to: {alternate}")),
        "{out}"
    );
    assert!(text.contains("Total lost packets 0 (0.000000%)"), "{out}");
}

// ---------------------------------------------------------------------------------------
// 1:1 NAT lab
// ---------------------------------------------------------------------------------------

const PRIVATE_IP: &str = "10.77.0.2";
const ROUTER_LAN_IP: &str = "10.77.0.1";
const PUBLIC_IP: &str = "203.0.113.77";
const CLIENT_IP: &str = "203.0.113.10";
const PEER_IP: &str = "203.0.113.11";
const PEER_PORT: u16 = 3480;

const LAB_HINT: &str = "this test builds network namespaces with `ip` (iproute2) and `nft` \
     (nftables) as root: run ../shared/harness/setup.sh (from the project root) to install them";

/// Three namespaces `<prefix>-s` (server), `<prefix>-n` (1:1 NAT router), `<prefix>-c`
/// (client and peer), and the processes started in them. Dropping it kills those processes
/// (by PID) and deletes the namespaces, also when the test fails.
struct NatLab {
    server_ns: String,
    router_ns: String,
    client_ns: String,
    children: Vec<(String, Child)>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip`: {e} ({LAB_HINT})"));
    assert!(
        out.status.success(),
        "ip {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl NatLab {
    fn up() -> NatLab {
        assert!(is_root(), "not root: {LAB_HINT}");
        for tool in ["ip", "nft"] {
            assert!(
                find_in_path(tool).is_some(),
                "`{tool}` not found: {LAB_HINT}"
            );
        }
        // Unique per test process: never the name of another lab (harness labs use `tl`).
        let prefix = format!("tpnat{}", std::process::id());
        let lab = NatLab {
            server_ns: format!("{prefix}-s"),
            router_ns: format!("{prefix}-n"),
            client_ns: format!("{prefix}-c"),
            children: Vec::new(),
        };
        let (s, n, c) = (&lab.server_ns, &lab.router_ns, &lab.client_ns);
        for ns in [s, n, c] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // veth pairs created directly inside the namespaces: no interface on the host.
        ip(&[
            "link", "add", "name", "eth0", "netns", s, "type", "veth", "peer", "name", "lan",
            "netns", n,
        ]);
        ip(&[
            "link", "add", "name", "eth0", "netns", c, "type", "veth", "peer", "name", "wan",
            "netns", n,
        ]);
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{PRIVATE_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", s, "link", "set", "eth0", "up"]);
        ip(&["-n", s, "route", "add", "default", "via", ROUTER_LAN_IP]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{ROUTER_LAN_IP}/24"),
            "dev",
            "lan",
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{PUBLIC_IP}/24"),
            "dev",
            "wan",
        ]);
        ip(&["-n", n, "link", "set", "lan", "up"]);
        ip(&["-n", n, "link", "set", "wan", "up"]);
        for addr in [CLIENT_IP, PEER_IP] {
            ip(&["-n", c, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
        ip(&["-n", c, "link", "set", "eth0", "up"]);
        ip(&[
            "netns",
            "exec",
            n,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ]);
        // 1:1 NAT, as a cloud provider does in front of a VM.
        let rules = format!(
            "table ip tpnat {{\n\
             chain pre {{ type nat hook prerouting priority dstnat; ip daddr {PUBLIC_IP} dnat to {PRIVATE_IP}; }}\n\
             chain post {{ type nat hook postrouting priority srcnat; ip saddr {PRIVATE_IP} snat to {PUBLIC_IP}; }}\n\
             }}\n"
        );
        let rules_file = std::env::temp_dir().join(format!("{prefix}.nft"));
        std::fs::write(&rules_file, rules).unwrap();
        ip(&[
            "netns",
            "exec",
            n,
            "nft",
            "-f",
            rules_file.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&rules_file);
        lab
    }

    /// Starts `program ARGS` in `ns`; `ip netns exec` execs it, so the PID is the program's.
    fn spawn(&mut self, ns: &str, program: &Path, args: &[&str], stdout: Stdio) -> &mut Child {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        self.children.push((program.display().to_string(), child));
        &mut self.children.last_mut().unwrap().1
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                // Not reaped yet, so this PID is still our child.
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for ns in [&self.client_ns, &self.router_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether a process's network namespace has a UDP socket bound to `port`
/// (`/proc/PID/net/udp` lists the sockets of that process's namespace).
fn udp_port_bound(pid: u32, port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    std::fs::read_to_string(format!("/proc/{pid}/net/udp"))
        .map(|t| t.lines().skip(1).any(|l| l.contains(&needle)))
        .unwrap_or(false)
}

#[test]
fn relay_flows_across_external_ip_mapping() {
    require_tool("turnutils_uclient");
    let peer_tool = require_tool("turnutils_peer");
    let mut lab = NatLab::up();
    let (server_ns, client_ns) = (lab.server_ns.clone(), lab.client_ns.clone());

    // turnpike on the private address, told which public address the NAT gives it.
    let listen = format!("{PRIVATE_IP}:3478");
    let mapping = format!("{PRIVATE_IP}={PUBLIC_IP}");
    let mut args: Vec<String> =
        default_args_without(&["--listen", "--relay-ip", "--allow-peer", "--api-listen"]);
    args.extend(
        [
            "--listen",
            &listen,
            "--relay-ip",
            PRIVATE_IP,
            "--external-ip-map",
            &mapping,
            "--allow-peer",
            "203.0.113.0/24",
            "--api-listen",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let mut turnpike_args = vec!["run"];
    turnpike_args.extend(args.iter().map(String::as_str));
    let bin = Path::new(env!("CARGO_BIN_EXE_turnpike"));
    let server = lab.spawn(&server_ns, bin, &turnpike_args, Stdio::piped());
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = server.stdout.take().unwrap();
    let mut stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let server_log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("\"event\":\"ready\"") => break line,
            Ok(_) => continue,
            Err(e) => panic!("turnpike in {server_ns} printed no ready line ({e})"),
        }
    };
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["udp"][0], listen.as_str(), "{ready}");

    // The peer echoes on the public side.
    let peer_port = PEER_PORT.to_string();
    let peer = lab.spawn(
        &client_ns,
        &peer_tool,
        &["-L", PEER_IP, "-p", &peer_port],
        Stdio::null(),
    );
    let peer_pid = peer.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !udp_port_bound(peer_pid, PEER_PORT) {
        assert!(
            Instant::now() < deadline,
            "turnutils_peer did not bind {PEER_IP}:{PEER_PORT}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let check = |out: &CmdOutput, what: &str| {
        let text = out.combined();
        assert!(out.success(), "{what}: {out}");
        assert!(
            text.contains("Total lost packets 0 (0.000000%)"),
            "{what}: {out}"
        );
        // uclient prints XOR-RELAYED-ADDRESS as "Received relay addr: IP:PORT".
        let relayed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("Received relay addr: ").nth(1))
            .collect();
        assert!(
            !relayed.is_empty(),
            "{what}: no relayed address printed: {out}"
        );
        for addr in relayed {
            let addr: SocketAddr = addr.trim().parse().unwrap();
            assert_eq!(addr.ip().to_string(), PUBLIC_IP, "{what}: {out}");
        }
    };

    // Client → server's public address → relay → peer and back, through the NAT.
    let out = uclient(
        Some(&client_ns),
        &[
            "-v", "-W", SECRET, "-u", "natlab", "-n", "30", "-m", "2", "-l", "170", "-e", PEER_IP,
            "-r", &peer_port, PUBLIC_IP,
        ],
    );
    check(&out, "uclient to a peer");
    // Clients relaying to each other's advertised addresses: the public relay addresses
    // reach the relays (the server sends to the bound addresses itself, so this no longer
    // needs the router to hairpin).
    let out = uclient(
        Some(&client_ns),
        &[
            "-v", "-W", SECRET, "-u", "natlab", "-n", "30", "-m", "2", "-l", "170", "-y", PUBLIC_IP,
        ],
    );
    check(&out, "uclient -y between relays");

    drop(lab);
    let log = server_log.join().unwrap_or_default();
    assert!(!log.contains("panicked"), "turnpike log:\n{log}");
}
