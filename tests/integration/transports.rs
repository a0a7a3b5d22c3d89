//! Client transports other than UDP over IPv4: TURN over TCP and TLS between client and
//! server (RFC 8656 §3.1; the relay to peers stays UDP), and STUN/TURN over IPv6 loopback
//! with IPv4 and IPv6 relays (REQUESTED-ADDRESS-FAMILY, RFC 8656).
//!
//! Every test starts its own server. `turnutils_*` and the aiortc pair come from
//! `../shared/harness/setup.sh`; the test certificate comes from `rcgen` (the harness's
//! `self_signed_cert`) and `openssl s_client` probes the TLS versions. Raw TCP checks build messages with `stun-types`/`turn-types`; over a stream a
//! STUN message is framed by its own header (RFC 8489 §6.2.2).
//!
//! Against coturn (`TURNPIKE_TEST_AGAINST=coturn`): `uclient_over_tcp_zero_loss` and
//! `aiortc_relay_only_pair_over_tcp` run as they are (coturn listens on TCP on its UDP port).
//! The others use flags the coturn harness does not translate (`--tls-listen`, an IPv6
//! `--listen`, `--max-allocations-per-user`) and fail in that mode with the harness's
//! "turnpike-specific" message.
//!
//! Output formats relied on (coturn 4.6 tools, OpenSSL 3.0):
//! * uclient: `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` and
//!   `Total lost packets L (...)`, exit 0.
//! * stunclient over IPv6: `0: : IPv6. UDP reflexive addr: ::1:37618`.
//! * `openssl s_client`: `New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384`
//!   (`New, (NONE), Cipher is (NONE)` when no handshake).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    assert_relay_only_pair, require_tool, rest_credentials, run_with_timeout, self_signed_cert,
    Server, TempDir, SECRET,
};
use crate::stun_client::{TcpTurn, RESPONSE_TIMEOUT};
use crate::uclient::{assert_zero_loss, number_after, stunclient, uclient};

const UCLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const SHORT_UCLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(20);
/// The server's deadline for a TLS handshake / a first whole frame on a stream connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack on top of `HANDSHAKE_TIMEOUT` for the server to notice and close.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// IPv6 loopback server: clients on `[::1]`, relays on both families.
const IPV6_ARGS: &[&str] = &[
    "--listen",
    "[::1]:0",
    "--relay-ip",
    "::1",
    "--relay-ip",
    "127.0.0.1",
    "--allow-peer",
    "::1",
    "--allow-peer",
    "127.0.0.0/8",
];

// ---------------------------------------------------------------------------------------
// Ready line, certificates
// ---------------------------------------------------------------------------------------

/// The first address of list `key` ("tcp", "tls") in the ready line.
fn ready_addr(server: &Server, key: &str) -> SocketAddr {
    server.ready[key]
        .as_array()
        .and_then(|l| l.first())
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "ready line has no `{key}` address: {}\n{}",
                server.ready,
                server.stderr_log()
            )
        })
}

/// A server with the defaults plus a TLS listener on 127.0.0.1 with a fresh certificate.
/// Keep the `TempDir` alive as long as the server.
fn start_tls_server() -> (TempDir, Server) {
    let (dir, cert, key) = self_signed_cert();
    let server = Server::start(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    (dir, server)
}

// ---------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------

/// Reads from `stream` until the peer closes it (EOF or reset) or `deadline`. Returns when
/// the close was seen, or `None`, and the number of bytes the server sent before.
fn wait_for_close(mut stream: TcpStream, deadline: Instant) -> (Option<Instant>, usize) {
    let mut buf = [0u8; 4096];
    let mut received = 0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (None, received);
        }
        stream.set_read_timeout(Some(deadline - now)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (Some(Instant::now()), received),
            Ok(n) => received += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (Some(Instant::now()), received)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading a stalled connection: unexpected error {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn uclient_over_tcp_zero_loss() {
    let server = Server::start(&[]);
    let tcp = server.tcp();
    let out = uclient(
        SECRET,
        &["-t", "-n", "1000", "-m", "10", "-l", "170"],
        tcp.port(),
        &tcp.ip().to_string(),
        UCLIENT_TIMEOUT,
    );
    assert_zero_loss(&out, "uclient over TCP", 1000);
}

#[test]
fn uclient_over_tls_zero_loss() {
    let (_dir, server) = start_tls_server();
    let tls = ready_addr(&server, "tls");
    let out = uclient(
        SECRET,
        &["-t", "-S", "-n", "1000", "-m", "10", "-l", "170"],
        tls.port(),
        &tls.ip().to_string(),
        UCLIENT_TIMEOUT,
    );
    assert_zero_loss(&out, "uclient over TLS", 1000);

    // Both TLS 1.2 and TLS 1.3 complete a handshake.
    let openssl = require_tool("openssl");
    for version in ["1.2", "1.3"] {
        let flag = format!("-tls{}", version.replace('.', "_"));
        let out = run_with_timeout(
            Command::new(&openssl).args(["s_client", "-connect", &tls.to_string(), &flag]),
            OPENSSL_TIMEOUT,
        );
        let text = out.combined();
        // `New, TLSv1.x, Cipher is ...` is the negotiated session. The `Protocol  : TLSv1.x`
        // line of the SSL-Session block only appears once a session exists, which with TLS
        // 1.3 needs a NewSessionTicket (optional, RFC 8446 §4.6.1) to arrive before
        // s_client quits on end of input, so it is not required.
        let new = format!("New, TLSv{version}, Cipher is ");
        assert!(
            !out.timed_out && text.contains(&new),
            "openssl s_client {flag}: no TLSv{version} handshake (expected `{new}`):\n{out}"
        );
        assert!(
            !text.contains("Cipher is (NONE)"),
            "openssl s_client {flag}: no cipher negotiated:\n{out}"
        );
        eprintln!(
            "openssl s_client {flag}: TLSv{version} handshake in {:?}",
            out.elapsed
        );
    }
}

#[test]
fn aiortc_relay_only_pair_over_tcp() {
    let server = Server::start(&[]);
    let url = format!("turn:{}?transport=tcp", server.tcp());
    let out = assert_relay_only_pair(&url, |r, out| {
        assert_eq!(
            r["local_relay_protocol"], "tcp",
            "peer's relay not reached over TCP: {r}\n{out}"
        );
    });
    eprintln!("aiortc pair over TCP: ok in {:?}", out.elapsed);
}

#[test]
fn stunclient_over_ipv6_loopback() {
    require_tool("turnutils_stunclient");
    let server = Server::start(IPV6_ARGS);
    assert!(
        server.udp.is_ipv6(),
        "server not listening on IPv6: {}",
        server.ready
    );
    let out = stunclient(server.port(), "::1");
    assert!(out.success(), "turnutils_stunclient failed:\n{out}");
    const MARK: &str = "IPv6. UDP reflexive addr: ::1:";
    let port = out
        .stdout
        .find(MARK)
        .and_then(|i| number_after(&out.stdout[i..], MARK));
    assert!(
        matches!(port, Some(p) if p != 0),
        "turnutils_stunclient printed no `{MARK}<port>` line:\n{out}"
    );
}

#[test]
fn uclient_over_ipv6_loopback_with_ipv4_and_ipv6_relays() {
    let server = Server::start(IPV6_ARGS);
    assert!(
        server.udp.is_ipv6(),
        "server not listening on IPv6: {}",
        server.ready
    );
    let common = ["-n", "200", "-m", "4", "-l", "170"];
    let out = uclient(SECRET, &common, server.port(), "::1", UCLIENT_TIMEOUT);
    assert_zero_loss(&out, "uclient over ::1, IPv4 relays", 200);
    let mut with_v6 = common.to_vec();
    with_v6.push("-x");
    let out = uclient(SECRET, &with_v6, server.port(), "::1", UCLIENT_TIMEOUT);
    assert_zero_loss(&out, "uclient -x over ::1, IPv6 relays", 200);
}

#[test]
fn stalled_tls_handshake_and_tcp_client_are_timed_out_without_affecting_others() {
    let (_dir, server) = start_tls_server();
    let tls = ready_addr(&server, "tls");
    let tcp = server.tcp();

    // A client that connects to the TLS port and never sends a ClientHello.
    let stalled_tls = TcpStream::connect_timeout(&tls, RESPONSE_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {tls}: {e}"));
    let tls_opened = Instant::now();
    // A client that sends half a STUN header on the TCP port and then nothing.
    let mut stalled_tcp = TcpStream::connect_timeout(&tcp, RESPONSE_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {tcp}: {e}"));
    let tcp_opened = Instant::now();
    let binding = crate::harness::stun_binding_request([0x33; 12]);
    stalled_tcp.write_all(&binding[..10]).unwrap();

    let deadline_tls = tls_opened + HANDSHAKE_TIMEOUT + CLOSE_SLACK;
    let deadline_tcp = tcp_opened + HANDSHAKE_TIMEOUT + CLOSE_SLACK;
    let watch_tls = std::thread::spawn(move || wait_for_close(stalled_tls, deadline_tls));
    let watch_tcp = std::thread::spawn(move || wait_for_close(stalled_tcp, deadline_tcp));

    // Meanwhile, well-behaved clients on both ports.
    // `-z 5`: 5 ms between packets (default 20 ms), for margin within the 10 s.
    let args = ["-n", "100", "-m", "2", "-l", "170", "-z", "5"];
    let tls_run = std::thread::spawn(move || {
        let mut a = vec!["-t", "-S"];
        a.extend_from_slice(&args);
        let out = uclient(
            SECRET,
            &a,
            tls.port(),
            &tls.ip().to_string(),
            SHORT_UCLIENT_TIMEOUT,
        );
        (out, Instant::now())
    });
    let tcp_run = std::thread::spawn(move || {
        let mut a = vec!["-t"];
        a.extend_from_slice(&args);
        let out = uclient(
            SECRET,
            &a,
            tcp.port(),
            &tcp.ip().to_string(),
            SHORT_UCLIENT_TIMEOUT,
        );
        (out, Instant::now())
    });
    let (tls_out, tls_done) = tls_run.join().expect("TLS uclient thread");
    let (tcp_out, tcp_done) = tcp_run.join().expect("TCP uclient thread");
    let (tls_closed, tls_bytes) = watch_tls.join().expect("stalled TLS watcher");
    let (tcp_closed, tcp_bytes) = watch_tcp.join().expect("stalled TCP watcher");

    let since = |t: Option<Instant>, from: Instant| t.map(|t| t - from);
    let tls_after = since(tls_closed, tls_opened);
    let tcp_after = since(tcp_closed, tcp_opened);
    eprintln!(
        "uclient over TLS finished {:?} after the stalls began (ran {:?}); over TCP {:?} \
         (ran {:?})",
        tls_done - tls_opened,
        tls_out.elapsed,
        tcp_done - tls_opened,
        tcp_out.elapsed
    );
    eprintln!(
        "stalled TLS connection closed by the server after {tls_after:?} \
         ({tls_bytes} bytes received); stalled TCP connection after {tcp_after:?} \
         ({tcp_bytes} bytes received)"
    );

    assert_zero_loss(&tls_out, "uclient over TLS during the stalls", 100);
    assert_zero_loss(&tcp_out, "uclient over TCP during the stalls", 100);

    let limit = HANDSHAKE_TIMEOUT + CLOSE_SLACK;
    let tls_after = tls_after.unwrap_or_else(|| {
        panic!("the server did not close a connection stalled before its TLS handshake within {limit:?}")
    });
    let tcp_after = tcp_after.unwrap_or_else(|| {
        panic!(
            "the server did not close a TCP connection stalled after 10 bytes of a STUN \
             header within {limit:?}"
        )
    });
    // Timed out, i.e. not closed before the 10 s a client is given.
    let earliest = HANDSHAKE_TIMEOUT - Duration::from_millis(500);
    assert!(
        tls_after >= earliest,
        "stalled TLS connection closed after only {tls_after:?}, before the {HANDSHAKE_TIMEOUT:?} \
         handshake timeout"
    );
    assert!(
        tcp_after >= earliest,
        "stalled TCP connection closed after only {tcp_after:?}, before the \
         {HANDSHAKE_TIMEOUT:?} first-frame timeout"
    );
    // The well-behaved clients ran while both stalled connections were still open.
    let first_close = (tls_opened + tls_after).min(tcp_opened + tcp_after);
    assert!(
        tls_done < first_close && tcp_done < first_close,
        "the uclient runs did not finish while the stalled connections were open \
         (TLS run done {:?}, TCP run done {:?} after the stalls began; first close at {:?})",
        tls_done - tls_opened,
        tcp_done - tls_opened,
        first_close - tls_opened
    );
}

#[test]
fn tcp_connection_close_ends_its_allocation() {
    let server = Server::start(&["--max-allocations-per-user", "1"]);
    let tcp = server.tcp();
    let (username, password) = rest_credentials(SECRET, "tcp-close-user", 3600);

    let mut a = TcpTurn::connect(tcp, &username, &password);
    let resp = a.allocate();
    assert!(
        resp.is_success() && resp.try_relayed().is_some(),
        "first Allocate over TCP: expected success with XOR-RELAYED-ADDRESS, got {}",
        resp.describe()
    );

    let mut b = TcpTurn::connect(tcp, &username, &password);
    let resp = b.allocate();
    assert_eq!(
        resp.code(),
        Some(486),
        "second connection of a user limited to 1 allocation: expected 486, got {}",
        resp.describe()
    );

    // Closing A's connection ends A's allocation (server contract: over TCP/TLS an
    // allocation lives no longer than the connection it was made on).
    a.stream.shutdown(Shutdown::Both).unwrap();
    drop(a);
    let closed = Instant::now();

    let mut c = TcpTurn::connect(tcp, &username, &password);
    let mut attempts = 0;
    let last = loop {
        attempts += 1;
        let resp = c.allocate();
        if resp.is_success() || closed.elapsed() >= Duration::from_secs(2) {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        last.is_success() && last.try_relayed().is_some(),
        "Allocate on a new connection {:?} after closing the first one ({attempts} \
         attempts): expected success, got {}",
        closed.elapsed(),
        last.describe()
    );
    eprintln!(
        "allocation freed by closing its TCP connection: new Allocate succeeded after {:?} \
         ({attempts} attempts)",
        closed.elapsed()
    );
    drop(b);
}
