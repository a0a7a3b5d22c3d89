//! turnpike-bench as a process: bad arguments are refused before anything is sent, and the
//! forwarder (the floor of benches/compare.sh) relays both ways on loopback. Being an
//! integration test also makes a plain `cargo test` build the binary, which the daemon's
//! `hardening::sigterm_under_load_exits_cleanly` runs.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_turnpike-bench");

#[test]
fn out_of_range_arguments_are_refused_naming_the_flag() {
    for (args, message) in [
        (
            &["--allocations", "0"][..],
            "--allocations must be 1..=20000",
        ),
        (&["--duration", "601"][..], "--duration must be in (0, 600]"),
        (
            &["--allocations-only", "20001"][..],
            "--allocations-only must be 1..=20000",
        ),
    ] {
        // A server address nothing listens on: the checks come before any packet.
        let out = Command::new(BIN)
            .args(["--server", "127.0.0.1:9"])
            .args(args)
            .output()
            .expect("run turnpike-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn the_forwarder_relays_both_ways() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "forwarder",
            "--listen",
            "127.0.0.1:0",
            "--max-seconds",
            "20",
        ])
        .args(["--to", &peer.local_addr().unwrap().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the forwarder");
    // "turnpike-bench forwarder: FRONT -> TO (via BACK), pid N"
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let front: SocketAddr = line
        .strip_prefix("turnpike-bench forwarder: ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for socket in [&client, &peer] {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    }
    let mut buf = [0u8; 64];
    client.send_to(b"ping", front).unwrap();
    let (n, back) = peer.recv_from(&mut buf).expect("the peer got the datagram");
    assert_eq!(&buf[..n], b"ping");
    peer.send_to(b"pong", back).unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("the client got the answer");
    assert_eq!((&buf[..n], from), (&b"pong"[..], front));

    child.kill().unwrap();
    child.wait().unwrap();
}
