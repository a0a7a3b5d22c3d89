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
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::harness::{
    assert_relay_only_pair, require_tool, stun_binding_request, CmdOutput, Server, SECRET,
};
use crate::stun_client::stun_header;
use crate::uclient::{
    assert_refused, assert_sent_no_data, assert_zero_loss, reflexive_port, stunclient, uclient,
    uclient_stats, UclientStats,
};

const UCLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// `turnutils_uclient -W SECRET -u harness -y EXTRA` against the server's UDP address.
fn uclient_udp(server: &Server, secret: &str, extra: &[&str], timeout: Duration) -> CmdOutput {
    let host = server.udp.ip().to_string();
    uclient(secret, extra, server.port(), &host, timeout)
}

/// Asserts that turnutils_stunclient gets a Binding response with a 127.0.0.1 mapping.
fn assert_stunclient_works(server: &Server) {
    let out = stunclient(server.port(), &server.udp.ip().to_string());
    assert!(out.success(), "turnutils_stunclient failed:\n{out}");
    let port = reflexive_port(&out.stdout);
    assert!(
        matches!(port, Some(p) if p != 0),
        "turnutils_stunclient printed no `UDP reflexive addr: 127.0.0.1:<port>` line:\n{out}"
    );
}

/// Runs uclient with 10 clients × 1000 messages of 170 bytes and asserts that every message
/// made it through the relays.
fn assert_uclient_zero_loss(extra: &[&str]) {
    let server = Server::start(&[]);
    let mut args = vec!["-n", "1000", "-m", "10", "-l", "170"];
    args.extend_from_slice(extra);
    let out = uclient_udp(&server, SECRET, &args, UCLIENT_TIMEOUT);
    assert_zero_loss(&out, "uclient", 1000);
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
    let good = uclient_udp(&server, SECRET, &args, Duration::from_secs(60));
    assert!(
        good.success() && uclient_stats(&good.stdout).is_some_and(|s| s.lost == 0),
        "control run with the right secret failed:\n{good}"
    );
    let out = uclient_udp(&server, "wrong-secret", &args, Duration::from_secs(60));
    let what = "uclient with a wrong secret";
    assert_refused(&out, what, "Cannot complete Allocation");
    assert_sent_no_data(&out, what);
}

#[test]
fn aiortc_relay_only_pair_exchanges_1mib() {
    let server = Server::start(&[]);
    let url = format!("turn:{}?transport=udp", server.udp);
    assert_relay_only_pair(&url, |_, _| {});
}

/// Relay-to-relay on a default peer policy (no `--allow-peer`, so loopback is a denied
/// range): uclient's clients relay to each other's relay addresses (127.0.0.1, the relay
/// IP), over channels and over Send indications, and lose nothing. Before relay-to-relay
/// this was ChannelBind 403 and CreatePermission 403.
/// Two aiortc peers relay-only (iceTransportPolicy "relay") through one server on a default
/// peer policy: each one's peer is the other's relay address on 127.0.0.1, a denied range
/// but the server's own relay IP, and the selected pair is relay/relay on both sides.
#[test]
fn aiortc_relay_only_pair_without_allow_peer() {
    let server = Server::start_raw(&crate::harness::default_args_without(&["--allow-peer"]));
    let url = format!("turn:{}?transport=udp", server.udp);
    assert_relay_only_pair(&url, |r, out| {
        assert_eq!(r["remote_type"], "relay", "remote not a relay: {r}\n{out}");
        let remote: std::net::SocketAddr = r["remote_addr"]
            .as_str()
            .and_then(|a| a.split('/').next()?.parse().ok()) // "IP:PORT/udp"
            .unwrap_or_else(|| panic!("no remote_addr: {r}\n{out}"));
        assert_eq!(
            remote.ip(),
            server.udp.ip(),
            "remote not this server's relay: {r}"
        );
    });
}

#[test]
fn uclient_relays_between_its_clients_without_allow_peer() {
    let args = crate::harness::default_args_without(&["--allow-peer"]);
    let server = Server::start_raw(&args);
    let common = ["-n", "100", "-m", "4", "-l", "170"];
    let out = uclient_udp(&server, SECRET, &common, Duration::from_secs(60));
    assert_zero_loss(&out, "uclient relay to relay (channels)", 100);
    let mut with_send = common.to_vec();
    with_send.push("-s");
    let out = uclient_udp(&server, SECRET, &with_send, Duration::from_secs(60));
    assert_zero_loss(&out, "uclient -s relay to relay", 100);
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
