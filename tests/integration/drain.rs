//! Draining a running daemon (`turnpike drain`, `/api/v1/drain`): new Allocates are sent
//! elsewhere with 300 Try Alternate (or refused with 508 when there is nowhere to send
//! them), allocations made before keep refreshing and relaying, and `drain --wait` returns
//! once the last one is gone; a client redirected to another instance keeps its nonce there.
//! The last test does the same with WebRTC calls in the NAT lab (`tests/e2e/drain.sh`).
//! turnpike-specific: coturn has no drain, so under `TURNPIKE_TEST_AGAINST=coturn` these
//! tests skip with a message.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stun_types::attribute::AlternateServer;
use stun_types::message::LongTermKeyCredentials;

use crate::api::http;
use crate::harness::{
    against_coturn, free_udp_tcp_port, harness_dir, harness_home, require_tool, rest_credentials,
    run_with_timeout, temp_dir, CmdOutput, Server, REALM, SECRET,
};
use crate::stun_client::{recv_from, UdpTurn};

const TOKEN: &str = "drain-test-token";
/// Where new allocations are redirected. Nothing listens there: the address is only named.
const ALTERNATE: &str = "127.0.0.1:3999";
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(3);

fn skip_against_coturn(test: &str) -> bool {
    if against_coturn() {
        eprintln!("{test}: skipped, coturn has no drain (turnpike-specific)");
    }
    against_coturn()
}

fn api_url(server: &Server) -> String {
    format!(
        "http://{}",
        server.api.expect("the ready line names the API")
    )
}

fn drain_command(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnpike"));
    cmd.arg("drain")
        .args(["--api", &api_url(server)])
        .args(args)
        .env("TURNPIKE_API_TOKEN", TOKEN);
    cmd
}

fn drain_cli(server: &Server, args: &[&str]) -> CmdOutput {
    run_with_timeout(&mut drain_command(server, args), CLI_TIMEOUT)
}

/// `turnpike drain --status --json`, parsed.
fn status(server: &Server) -> serde_json::Value {
    let out = drain_cli(server, &["--status", "--json"]);
    assert!(out.success(), "{out}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn http_status(server: &Server, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let reply = http(server.api.unwrap(), method, path, &headers);
    (reply.status, reply.body)
}

/// The ALTERNATE-SERVER of a signed 300 answer to `client`'s Allocate.
fn redirected_to(client: &mut UdpTurn, user: &str) -> SocketAddr {
    let reply = client.allocate();
    let msg = reply.msg();
    assert_eq!(
        reply.code(),
        Some(300),
        "a new Allocate while draining: {msg}"
    );
    let (username, password) = rest_credentials(SECRET, user, 3600);
    msg.validate_integrity(&LongTermKeyCredentials::new(username, password, REALM.into()).into())
        .expect("the 300 is signed for the user");
    msg.attribute::<AlternateServer>()
        .expect("ALTERNATE-SERVER in the 300")
        .server()
}

/// Waits until the peer socket receives `payload`.
fn peer_receives(peer: &UdpSocket, payload: &[u8]) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some((data, _)) = recv_from(peer, Duration::from_millis(200)) {
            if data == payload {
                return true;
            }
        }
    }
    false
}

/// Waits until `client` receives a datagram carrying `payload` (a Data indication).
fn client_receives(client: &UdpTurn, payload: &[u8]) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(data) = client.recv(Duration::from_millis(200)) {
            if data.windows(payload.len()).any(|w| w == payload) {
                return true;
            }
        }
    }
    false
}

/// A child's stdout lines, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child (ours, by PID) if the test ends before it exits.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn drain_redirects_new_allocations_while_existing_ones_keep_relaying() {
    if skip_against_coturn("drain_redirects_new_allocations_while_existing_ones_keep_relaying") {
        return;
    }
    // One fleet-wide list naming this instance too: draining must skip its own address.
    let port = free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start(&[
        "--listen",
        &listen,
        "--api-token",
        TOKEN,
        "--drain-alternate-server",
        &listen,
        "--drain-alternate-server",
        ALTERNATE,
    ]);

    // An allocation made before the drain, with a permission for a peer.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut before = UdpTurn::rest(&server, "before");
    let relayed = before.allocate().expect_success("Allocate").relayed();
    before
        .create_permission(peer_addr)
        .expect_success("CreatePermission");
    assert_eq!(http_status(&server, "GET", "/readyz", None).0, 200);

    let out = drain_cli(&server, &[]);
    assert!(out.success(), "{out}");
    assert_eq!(
        out.stdout.trim(),
        format!("draining: 1 allocation left; new Allocates are redirected to {ALTERNATE}"),
        "{out}"
    );
    // Not ready for new clients any more, but alive.
    let (code, body) = http_status(&server, "GET", "/readyz", None);
    assert_eq!(
        (code, body.as_str()),
        (503, "draining, allocations left: 1")
    );
    assert_eq!(http_status(&server, "GET", "/healthz", None).0, 200);

    // A new client is sent to the other instance, in a signed 300.
    let mut after = UdpTurn::rest(&server, "after");
    assert_eq!(
        redirected_to(&mut after, "after"),
        ALTERNATE.parse::<SocketAddr>().unwrap()
    );

    // The old allocation relays both ways and refreshes.
    peer.send_to(b"peer to client while draining", relayed)
        .unwrap();
    assert!(
        client_receives(&before, b"peer to client while draining"),
        "peer data did not reach the allocation made before the drain"
    );
    before.send_indication(peer_addr, b"client to peer while draining");
    assert!(
        peer_receives(&peer, b"client to peer while draining"),
        "the allocation made before the drain did not relay to its peer"
    );
    before.refresh(600).expect_success("Refresh while draining");
    let state = status(&server);
    assert_eq!(state["draining"], true, "{state}");
    assert_eq!(state["allocations"], 1, "{state}");
    assert_eq!(state["alternate_servers"], serde_json::json!([ALTERNATE]));
    let (_, metrics) = http_status(&server, "GET", "/metrics", Some(TOKEN));
    assert!(metrics.contains("\nturnpike_draining 1\n"), "{metrics}");

    // `drain --wait` keeps waiting while the allocation lives...
    let mut waiter = drain_command(&server, &["--wait", "--interval", "0.1"]);
    waiter.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut waiter = KillOnDrop(waiter.spawn().expect("start turnpike drain --wait"));
    let lines = lines_of(&mut waiter.0);
    let first = lines
        .recv_timeout(CLI_TIMEOUT)
        .expect("drain --wait prints the state");
    assert!(first.starts_with("draining: 1 allocation left"), "{first}");
    assert!(
        matches!(waiter.0.try_wait(), Ok(None)),
        "drain --wait exited with an allocation left"
    );

    // ...and reports the end once the client deletes it (Refresh with lifetime 0).
    before.refresh(0).expect_success("Refresh lifetime 0");
    let last = lines
        .recv_timeout(CLI_TIMEOUT)
        .expect("drain --wait reports the end");
    assert_eq!(last, "drained: no allocations left");
    let deadline = Instant::now() + CLI_TIMEOUT;
    let exit = loop {
        if let Some(status) = waiter.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "drain --wait did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "drain --wait: {exit}");
    assert_eq!(status(&server)["allocations"], 0);
}

#[test]
fn drain_without_alternates_refuses_survives_reload_and_cancels() {
    if skip_against_coturn("drain_without_alternates_refuses_survives_reload_and_cancels") {
        return;
    }
    let mut server = Server::start(&["--api-token", TOKEN]);

    // The API is token-protected: nothing changes without the right token.
    let (code, _) = http_status(&server, "POST", "/api/v1/drain", None);
    assert_eq!(code, 401);
    let (code, _) = http_status(&server, "POST", "/api/v1/drain", Some("wrong"));
    assert_eq!(code, 403);
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike")).args(["drain", "--api", &api_url(&server)]),
        CLI_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("HTTP 401"), "{out}");
    assert_eq!(status(&server)["draining"], false);
    let (_, metrics) = http_status(&server, "GET", "/metrics", Some(TOKEN));
    assert!(metrics.contains("\nturnpike_draining 0\n"), "{metrics}");

    // A web page cannot start a drain, token or not (a POST needs no CORS preflight).
    let reply = http(
        server.api.unwrap(),
        "POST",
        "/api/v1/drain",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("Origin"), "{}", reply.body);
    let (code, body) = http_status(&server, "GET", "/api/v1/drain", Some(TOKEN));
    assert_eq!(code, 200);
    assert!(body.contains("\"draining\":false"), "{body}");
    let (code, body) = http_status(&server, "POST", "/api/v1/drain", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state,
        serde_json::json!({"draining": true, "allocations": 0, "alternate_servers": []})
    );
    // Nowhere to send new clients: 508 Insufficient Capacity, so they try their other
    // ICE servers.
    let mut client = UdpTurn::rest(&server, "new");
    assert_eq!(client.allocate().code(), Some(508));

    // A reload rebuilds the workers' settings; the drain stays in force.
    let pid = server.child.id().to_string();
    let hup = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + WAIT;
    while !server.stderr_log().contains("configuration reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload: {}",
            server.stderr_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = UdpTurn::rest(&server, "after-reload");
    assert_eq!(client.allocate().code(), Some(508), "drain lost on reload");

    // `--config` takes the API address and token from the server's config file.
    let dir = temp_dir("drain-config");
    let file = dir.path().join("turnpike.toml");
    let api = server.api.unwrap();
    std::fs::write(
        &file,
        format!("[api]\nlisten = \"{api}\"\ntokens = [\"{TOKEN}\"]\n"),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike"))
            .args(["drain", "--status", "--config"])
            .arg(&file)
            .env_remove("TURNPIKE_API_TOKEN"),
        CLI_TIMEOUT,
    );
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .starts_with("draining: 0 allocations left; new Allocates are refused with 508"),
        "{out}"
    );

    // Cancelling accepts new allocations again.
    let out = drain_cli(&server, &["--cancel"]);
    assert!(out.success(), "{out}");
    assert_eq!(
        out.stdout.trim(),
        "not draining: 0 allocations, accepting new allocations"
    );
    let mut client = UdpTurn::rest(&server, "after-cancel");
    client
        .allocate()
        .expect_success("Allocate after the drain ended");

    // --wait gives up after --timeout with status 1 while an allocation lives.
    let out = drain_cli(
        &server,
        &["--wait", "--timeout", "0.3", "--interval", "0.1"],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("1 allocation still left after 0.3s"),
        "{out}"
    );
    assert!(server.is_running());
}

#[test]
fn a_client_redirected_by_a_draining_instance_keeps_its_nonce_at_the_alternate() {
    if skip_against_coturn(
        "a_client_redirected_by_a_draining_instance_keeps_its_nonce_at_the_alternate",
    ) {
        return;
    }
    // Two instances sharing nothing but the secret; A drains to B.
    let b = Server::start(&[]);
    let alternate = b.udp.to_string();
    let a = Server::start(&["--api-token", TOKEN, "--drain-alternate-server", &alternate]);
    assert!(drain_cli(&a, &[]).success());

    // As libwebrtc does: the nonce from A's 401 signs the Allocate at A, and after the 300
    // the same request goes to the alternate. A 438 there ends libwebrtc's allocation.
    let mut at_a = UdpTurn::rest(&a, "redirected");
    let nonce = at_a.fetch_nonce();
    let reply = at_a.signed(
        turn_types::message::ALLOCATE,
        &crate::stun_client::udp_transport,
        &nonce,
    );
    assert_eq!(reply.code(), Some(300), "{}", reply.msg());
    let to = reply.msg().attribute::<AlternateServer>().unwrap().server();
    assert_eq!(to, b.udp);
    let at_b = UdpTurn::rest(&b, "redirected");
    let reply = at_b.signed(
        turn_types::message::ALLOCATE,
        &crate::stun_client::udp_transport,
        &nonce,
    );
    assert!(
        reply.is_success(),
        "B refused A's nonce (a 438 here is what libwebrtc cannot recover from): {}",
        reply.msg()
    );
}

/// Removes the drain test's `tpd` lab however the test ends (`drain.sh --down` waits for the
/// script's lock, then runs `natlab.sh down`, which also stops what ran inside).
struct DrainLabGuard;

fn drain_sh(args: &[&str], timeout: Duration) -> CmdOutput {
    run_with_timeout(
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/drain.sh"))
            .args(args)
            .env("TURNPIKE_BIN", env!("CARGO_BIN_EXE_turnpike"))
            .env("TURNPIKE_HARNESS_DIR", harness_dir())
            .env("HARNESS_HOME", harness_home()),
        timeout,
    )
}

impl Drop for DrainLabGuard {
    fn drop(&mut self) {
        let out = drain_sh(&["--down"], Duration::from_secs(60));
        if !out.success() {
            eprintln!("drain lab cleanup failed:\n{out}");
        }
    }
}

/// The NAT lab (`tests/e2e/drain.sh`, netns prefix `tpd`): two instances sharing a secret;
/// while an aiortc call runs through A, A drains; two Chromiums' new call is redirected by
/// 300 to B and connects there relay/relay; the old call keeps flowing until it ends, and
/// `drain --wait` then reports no allocation left. Needs root and what `.ci/run` installs.
#[test]
fn a_webrtc_call_survives_a_drain_and_a_new_call_is_redirected_to_the_other_instance() {
    if skip_against_coturn("a_webrtc_call_survives_a_drain...") {
        return;
    }
    for tool in ["chromium", "node", "nft", "flock"] {
        require_tool(tool);
    }
    let _lab = DrainLabGuard;
    let out = drain_sh(&[], Duration::from_secs(240));
    println!("{}", out.stdout);
    assert!(out.success(), "drain lab test failed:\n{out}");
    assert!(
        out.stdout.contains("drain-e2e: 1 passed, 0 failed"),
        "drain lab test did not finish:\n{out}"
    );
}
