//! The server against real, independent clients: coturn's `turnutils_stunclient` and
//! `turnutils_uclient`, and two aiortc WebRTC peers (`../shared/harness/run_pair.sh`).
//!
//! Every test starts its own server on `127.0.0.1:0`. The tools are installed by
//! `../shared/harness/setup.sh`; a missing tool fails the test. All of these tests also pass
//! against coturn (`TURNPIKE_TEST_AGAINST=coturn cargo test --test integration real_clients`):
//! none of them is turnpike-specific.
//!
//! Output formats relied on (coturn 4.6 tools; each line is printed twice, both on stdout):
//! * stunclient: `0: : IPv4. UDP reflexive addr: 127.0.0.1:53867`, exit 0.
//! * uclient, success: `26: : start_mclient: tot_send_msgs=12000, tot_recv_msgs=12000` then
//!   `26: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)`, exit 0.
//! * uclient, allocation refused: `0: : ERROR: Cannot complete Allocation`, exit 255.
//! * uclient, peer refused with 403: `0: : channel bind: error 403 (Forbidden IP)` (channels)
//!   or `0: : create permission error 403 (Forbidden IP)` (`-s`), exit 255. The reason
//!   phrase is the server's.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::harness::{
    require_run_pair, require_tool, run_with_timeout, stun_binding_request, CmdOutput, Server,
    SECRET,
};

const STUNCLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const PAIR_TIMEOUT: Duration = Duration::from_secs(90);

fn stunclient(server: &Server) -> CmdOutput {
    let tool = require_tool("turnutils_stunclient");
    run_with_timeout(
        Command::new(tool)
            .arg("-p")
            .arg(server.port().to_string())
            .arg(server.udp.ip().to_string()),
        STUNCLIENT_TIMEOUT,
    )
}

/// The port of the first `UDP reflexive addr: 127.0.0.1:<port>` line.
fn reflexive_port(output: &str) -> Option<u16> {
    const MARK: &str = "UDP reflexive addr: 127.0.0.1:";
    let rest = &output[output.find(MARK)? + MARK.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Asserts that turnutils_stunclient gets a Binding response with a 127.0.0.1 mapping.
fn assert_stunclient_works(server: &Server) {
    let out = stunclient(server);
    assert!(out.success(), "turnutils_stunclient failed:\n{out}");
    let port = reflexive_port(&out.stdout);
    assert!(
        matches!(port, Some(p) if p != 0),
        "turnutils_stunclient printed no `UDP reflexive addr: 127.0.0.1:<port>` line:\n{out}"
    );
}

/// `turnutils_uclient -W SECRET -u harness -y EXTRA -p PORT IP`: `-y` makes its clients send
/// to each other through their relays.
fn uclient(server: &Server, secret: &str, extra: &[&str], timeout: Duration) -> CmdOutput {
    let tool = require_tool("turnutils_uclient");
    run_with_timeout(
        Command::new(tool)
            .args(["-W", secret, "-u", "harness", "-y"])
            .args(extra)
            .arg("-p")
            .arg(server.port().to_string())
            .arg(server.udp.ip().to_string()),
        timeout,
    )
}

#[derive(Debug, PartialEq)]
struct UclientStats {
    sent: u64,
    received: u64,
    lost: u64,
}

/// The number following `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// From the final summary: the last `tot_send_msgs=N, tot_recv_msgs=M` line and
/// `Total lost packets L (...)`.
fn uclient_stats(output: &str) -> Option<UclientStats> {
    let totals = output
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs="))?;
    let lost = output
        .lines()
        .rev()
        .find_map(|l| number_after(l, "Total lost packets "))?;
    Some(UclientStats {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost,
    })
}

/// Runs uclient with 10 clients × 1000 messages of 170 bytes and asserts that every message
/// made it through the relays.
fn assert_uclient_zero_loss(extra: &[&str]) {
    let server = Server::start(&[]);
    let mut args = vec!["-n", "1000", "-m", "10", "-l", "170"];
    args.extend_from_slice(extra);
    let out = uclient(&server, SECRET, &args, UCLIENT_TIMEOUT);
    assert!(out.success(), "turnutils_uclient failed:\n{out}");
    let stats = uclient_stats(&out.stdout)
        .unwrap_or_else(|| panic!("no uclient summary (tot_send_msgs / Total lost):\n{out}"));
    assert!(
        stats.sent >= 1000,
        "uclient sent only {} messages:\n{out}",
        stats.sent
    );
    assert_eq!(stats.lost, 0, "uclient lost packets:\n{out}");
    assert_eq!(
        stats.received, stats.sent,
        "uclient received fewer messages than it sent:\n{out}"
    );
}

#[test]
fn stunclient_gets_mapped_address() {
    let server = Server::start(&[]);
    assert_stunclient_works(&server);
}

/// ChannelBind + ChannelData (uclient's default).
#[test]
fn uclient_channels_zero_loss() {
    assert_uclient_zero_loss(&[]);
}

/// CreatePermission + Send/Data indications (`-s`).
#[test]
fn uclient_send_indications_zero_loss() {
    assert_uclient_zero_loss(&["-s"]);
}

#[test]
fn uclient_wrong_secret_is_refused() {
    let server = Server::start(&[]);
    let args = ["-n", "10", "-m", "2", "-l", "170"];
    // Control: the right secret works on this server, so a refusal is down to the secret.
    let good = uclient(&server, SECRET, &args, Duration::from_secs(60));
    assert!(
        good.success() && uclient_stats(&good.stdout).is_some_and(|s| s.lost == 0),
        "control run with the right secret failed:\n{good}"
    );
    let out = uclient(&server, "wrong-secret", &args, Duration::from_secs(60));
    assert!(
        !out.timed_out,
        "uclient with a wrong secret hung instead of being refused:\n{out}"
    );
    assert_ne!(
        out.code(),
        Some(0),
        "uclient with a wrong secret succeeded:\n{out}"
    );
    assert!(
        out.stdout.contains("Cannot complete Allocation"),
        "uclient with a wrong secret did not report `Cannot complete Allocation`:\n{out}"
    );
    assert!(
        !out.stdout.contains("Total lost packets"),
        "uclient with a wrong secret got to send data:\n{out}"
    );
}

#[test]
fn aiortc_relay_only_pair_exchanges_1mib() {
    let run_pair = require_run_pair();
    let server = Server::start(&[]);
    let url = format!("turn:{}?transport=udp", server.udp);
    let out = run_with_timeout(
        Command::new(run_pair).args([
            "--", "--turn", &url, "--secret", SECRET, "--policy", "relay",
        ]),
        PAIR_TIMEOUT,
    );
    assert!(out.success(), "run_pair.sh failed:\n{out}");
    let results: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("bad result line {l:?}: {e}\n{out}"))
        })
        .collect();
    assert_eq!(results.len(), 2, "expected two result lines:\n{out}");
    let mut roles = Vec::new();
    for r in &results {
        assert_eq!(r["ok"], serde_json::json!(true), "peer failed: {r}\n{out}");
        assert_eq!(r["local_type"], "relay", "peer not on a relay: {r}\n{out}");
        assert_eq!(r["bytes"], 1_048_576, "wrong byte count: {r}\n{out}");
        assert!(
            r["sha256"].as_str().is_some_and(|s| s.len() == 64),
            "no sha256: {r}\n{out}"
        );
        roles.push(r["role"].as_str().unwrap_or("?").to_string());
    }
    roles.sort();
    assert_eq!(roles, ["answer", "offer"], "roles:\n{out}");
    assert_eq!(
        results[0]["sha256"], results[1]["sha256"],
        "the echoed data differs from what was sent:\n{out}"
    );
}

#[test]
fn uclient_without_allow_peer_cannot_relay_to_loopback() {
    let args = crate::harness::default_args_without(&["--allow-peer"]);
    let server = Server::start_raw(&args);
    let common = ["-n", "100", "-m", "4", "-l", "170"];
    // Channels: ChannelBind to the other client's loopback relay address is refused.
    let out = uclient(&server, SECRET, &common, Duration::from_secs(60));
    assert!(!out.timed_out, "uclient hung:\n{out}");
    assert_ne!(out.code(), Some(0), "uclient relayed to loopback:\n{out}");
    assert!(
        out.stdout.contains("channel bind: error 403"),
        "expected `channel bind: error 403` from uclient:\n{out}"
    );
    assert!(
        !out.stdout.contains("Total lost packets"),
        "uclient got to send data:\n{out}"
    );
    // Send indications: CreatePermission is refused.
    let mut with_send = common.to_vec();
    with_send.push("-s");
    let out = uclient(&server, SECRET, &with_send, Duration::from_secs(60));
    assert!(!out.timed_out, "uclient -s hung:\n{out}");
    assert_ne!(
        out.code(),
        Some(0),
        "uclient -s relayed to loopback:\n{out}"
    );
    assert!(
        out.stdout.contains("create permission error 403"),
        "expected `create permission error 403` from uclient -s:\n{out}"
    );
    assert!(
        !out.stdout.contains("Total lost packets"),
        "uclient -s got to send data:\n{out}"
    );
}

/// STUN header: type, length, magic cookie, transaction ID.
fn stun_header(msg_type: u16, length: u16, txid: [u8; 12]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20);
    m.extend_from_slice(&msg_type.to_be_bytes());
    m.extend_from_slice(&length.to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&txid);
    m
}

fn garbage(rng: &mut rand::rngs::StdRng) -> Vec<(&'static str, Vec<u8>)> {
    let mut packets = Vec::new();
    for _ in 0..200 {
        let mut p = vec![0u8; rng.random_range(1..=1500)];
        rng.fill(&mut p[..]);
        packets.push(("random bytes", p));
    }
    // Random bodies behind plausible STUN headers, to get past a first-byte/cookie check.
    for _ in 0..100 {
        let body_len = 4 * rng.random_range(0..=120usize);
        let mut p = stun_header(rng.random::<u16>() & 0x3fff, body_len as u16, rng.random());
        let mut body = vec![0u8; body_len];
        rng.fill(&mut body[..]);
        p.extend_from_slice(&body);
        packets.push(("random STUN-shaped", p));
    }
    let binding = stun_binding_request(rng.random());
    packets.push(("empty datagram", Vec::new()));
    for len in [1, 4, 10, 19] {
        packets.push(("truncated STUN header", binding[..len].to_vec()));
    }
    // 2000-byte datagram with a valid header claiming 1980 bytes of attributes.
    let mut big = stun_header(0x0001, 1980, rng.random());
    big.resize(2000, 0);
    packets.push(("oversized, zero attributes", big));
    let mut big = stun_header(0x0003, 1980, rng.random());
    let mut body = vec![0u8; 1980];
    rng.fill(&mut body[..]);
    big.extend_from_slice(&body);
    packets.push(("oversized Allocate, random attributes", big));
    // Attribute length beyond the end of the message.
    let mut p = stun_header(0x0001, 8, rng.random());
    p.extend_from_slice(&[0x00, 0x06, 0x01, 0x90, b'a', b'b', b'c', b'd']);
    packets.push(("USERNAME length past the end", p));
    let mut p = stun_header(0x0003, 8, rng.random());
    p.extend_from_slice(&[0x00, 0x19, 0xff, 0xff, 17, 0, 0, 0]);
    packets.push(("REQUESTED-TRANSPORT length 0xffff", p));
    let mut p = stun_header(0x0001, 4, rng.random());
    p.extend_from_slice(&[0x80, 0x28, 0x00, 0x08]);
    packets.push(("FINGERPRINT header without value", p));
    // Header length field disagreeing with the datagram.
    packets.push((
        "length past the datagram",
        stun_header(0x0001, 100, rng.random()),
    ));
    let mut p = stun_header(0x0001, 5, rng.random());
    p.extend_from_slice(&[0x80, 0x22, 0x00, 0x01, b'x']);
    packets.push(("length not a multiple of 4", p));
    // ChannelData on channels nobody bound.
    packets.push((
        "ChannelData 0x4000 unbound",
        vec![0x40, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef],
    ));
    packets.push((
        "ChannelData 0x4000 length 0xffff",
        vec![0x40, 0x00, 0xff, 0xff, 1, 2, 3, 4],
    ));
    packets.push(("ChannelData 0x4fff empty", vec![0x4f, 0xff, 0x00, 0x00]));
    packets.push(("ChannelData header only", vec![0x40, 0x00]));
    packets.push((
        "reserved channel 0x7fff",
        vec![0x7f, 0xff, 0x00, 0x04, 1, 2, 3, 4],
    ));
    packets
}

#[test]
fn server_survives_garbage() {
    require_tool("turnutils_stunclient");
    let mut server = Server::start(&[]);
    let seed: u64 = std::env::var("TURNPIKE_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("server_survives_garbage: seed {seed} (TURNPIKE_GARBAGE_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let packets = garbage(&mut rng);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    for (i, (what, p)) in packets.iter().enumerate() {
        if let Err(e) = sock.send_to(p, server.udp) {
            panic!("sending packet {i} ({what}, {} bytes): {e}", p.len());
        }
        // Pace the datagrams so the server's receive buffer does not drop them unseen.
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.is_running(),
        "server exited after {} garbage datagrams (seed {seed}): {:?}",
        packets.len(),
        server.child.try_wait()
    );
    assert_stunclient_works(&server);
    assert!(
        server.is_running(),
        "server exited after the garbage (seed {seed}): {:?}",
        server.child.try_wait()
    );
}

#[test]
fn uclient_stats_parse_real_output() {
    // Lines as turnutils_uclient 4.6 prints them.
    let out = "7: : start_mclient: msz=12, tot_send_msgs=2051, tot_recv_msgs=2050, \
               tot_send_bytes ~ 348670, tot_recv_bytes ~ 348500\n\
               26: : start_mclient: tot_send_msgs=12000, tot_recv_msgs=11990\n\
               26: : start_mclient: tot_send_bytes ~ 2040000, tot_recv_bytes ~ 2040000\n\
               26: : Total transmit time is 26\n\
               26: : Total lost packets 10 (0.083333%), total send dropped 0 (0.000000%)\n";
    assert_eq!(
        uclient_stats(out),
        Some(UclientStats {
            sent: 12000,
            received: 11990,
            lost: 10
        })
    );
    assert_eq!(
        uclient_stats("0: : ERROR: Cannot complete Allocation\n"),
        None
    );
    assert_eq!(
        reflexive_port("0: : IPv4. UDP reflexive addr: 127.0.0.1:53867\n"),
        Some(53867)
    );
}
