//! Operators' view and control of live sessions against the running daemon:
//! `GET /api/v1/sessions`, `DELETE /api/v1/sessions/{id}`, `/api/v1/revocations` (kept across
//! SIGHUP and restarts in `api.revocations_file`), `turnpike sessions`, and coturn's
//! `turnutils_uclient` cut off mid-transfer by a revocation. turnpike-specific: under
//! `TURNPIKE_TEST_AGAINST=coturn` these tests skip with a message.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::api::{http_with_body, Reply};
use crate::hardening::metric_sum;
use crate::harness::{
    against_coturn, rest_credentials, run_with_timeout, temp_dir, CmdOutput, Server, SECRET,
};
use crate::stun_client::{recv_from, TcpTurn, UdpTurn};
use crate::uclient::{run_uclient, uclient_stats};

const TOKEN: &str = "sessions-test-token";
const WAIT: Duration = Duration::from_secs(3);

fn skip_against_coturn(test: &str) -> bool {
    if against_coturn() {
        eprintln!("{test}: skipped, coturn has no sessions API (turnpike-specific)");
    }
    against_coturn()
}

fn start() -> Server {
    Server::start(&["--api-token", TOKEN])
}

fn call(server: &Server, method: &str, path: &str, body: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    http_with_body(server.api.unwrap(), method, path, &headers, body)
}

fn sessions(server: &Server, query: &str) -> serde_json::Value {
    let reply = call(server, "GET", &format!("/api/v1/sessions{query}"), "");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

fn revoke(server: &Server, body: &str) -> Reply {
    call(server, "POST", "/api/v1/revocations", body)
}

/// An allocation for `user` with a permission for `peer`.
fn allocated(server: &Server, user: &str, peer: SocketAddr) -> (UdpTurn, SocketAddr) {
    let mut client = UdpTurn::rest(server, user);
    let relay = client.allocate().expect_success("allocate").relayed();
    client
        .create_permission(peer)
        .expect_success("create permission");
    (client, relay)
}

fn peer_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Whether `client` gets a Data indication carrying `payload` within `wait`.
fn client_receives(client: &UdpTurn, payload: &[u8], wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(data) = client.recv(Duration::from_millis(100)) {
            if data.windows(payload.len()).any(|w| w == payload) {
                return true;
            }
        }
    }
    false
}

/// The session whose client is `client`.
fn session_of(list: &serde_json::Value, client: SocketAddr) -> &serde_json::Value {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client"] == client.to_string())
        .unwrap_or_else(|| panic!("no session for {client} in {list}"))
}

#[test]
fn sessions_list_every_allocation_with_counts_that_grow_and_pages() {
    if skip_against_coturn("sessions_list_every_allocation_with_counts_that_grow_and_pages") {
        return;
    }
    let server = start();
    let peer = peer_socket();
    let peer_addr = peer.local_addr().unwrap();
    let (alice, alice_relay) = allocated(&server, "alice", peer_addr);
    let mut bob = TcpTurn::rest(server.tcp(), "bob");
    bob.allocate().expect_success("TCP allocate");
    let before = crate::harness::unix_now();
    for _ in 0..10 {
        alice.send_indication(peer_addr, &[7; 100]);
        recv_from(&peer, WAIT).expect("relayed to the peer");
    }
    peer.send_to(&[9; 50], alice_relay).unwrap();
    assert!(client_receives(&alice, &[9; 50], WAIT));

    let list = sessions(&server, "");
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["missing_workers"], serde_json::json!([]));
    assert_eq!(list["next"], serde_json::Value::Null);
    let a = session_of(&list, alice.sock.local_addr().unwrap());
    let (alice_name, _) = rest_credentials(SECRET, "alice", 3600);
    assert_eq!(a["username"], alice_name);
    assert_eq!(a["transport"], "udp");
    assert_eq!(a["relays"], serde_json::json!([alice_relay.to_string()]));
    assert_eq!(a["server"], server.udp.to_string());
    assert_eq!(
        (a["permissions"].as_u64(), a["channels"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(
        (a["to_peer_packets"].as_u64(), a["to_peer_bytes"].as_u64()),
        (Some(10), Some(1000))
    );
    assert_eq!(
        (
            a["from_peer_packets"].as_u64(),
            a["from_peer_bytes"].as_u64()
        ),
        (Some(1), Some(50))
    );
    let created = a["created"].as_u64().unwrap();
    assert!(
        created.abs_diff(before) <= 2,
        "created {created}, now {before}"
    );
    // The default lifetime is 600 s.
    let expires = a["expires"].as_u64().unwrap();
    assert!(expires.abs_diff(created + 600) <= 2, "expires {expires}");
    let b = session_of(&list, bob.stream.local_addr().unwrap());
    assert_eq!(b["transport"], "tcp");

    // The counts grow while the client sends.
    for _ in 0..5 {
        alice.send_indication(peer_addr, &[7; 100]);
        recv_from(&peer, WAIT).expect("relayed to the peer");
    }
    let list = sessions(&server, "?username=alice");
    let only: Vec<&serde_json::Value> = list["sessions"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1, "{list}");
    assert_eq!(only[0]["to_peer_bytes"].as_u64(), Some(1500));
    let by_prefix = sessions(&server, &format!("?prefix={}", &alice_name[..5]));
    assert_eq!(by_prefix["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(
        sessions(&server, "?username=carol")["sessions"],
        serde_json::json!([])
    );

    // Pages of one: the cursor leads to the other session, then to the end.
    let first = sessions(&server, "?limit=1");
    let next = first["next"].as_str().expect("a next page").to_owned();
    assert_eq!(first["sessions"].as_array().unwrap().len(), 1);
    let second = sessions(&server, &format!("?limit=1&after={next}"));
    assert_eq!(second["sessions"].as_array().unwrap().len(), 1);
    assert_ne!(first["sessions"][0]["id"], second["sessions"][0]["id"]);
    assert_eq!(second["next"], serde_json::Value::Null);
}

#[test]
fn a_kick_stops_relaying_at_once_refresh_gets_437_and_tcp_clients_are_disconnected() {
    if skip_against_coturn(
        "a_kick_stops_relaying_at_once_refresh_gets_437_and_tcp_clients_are_disconnected",
    ) {
        return;
    }
    let server = start();
    let peer = peer_socket();
    let peer_addr = peer.local_addr().unwrap();
    let (mut alice, relay) = allocated(&server, "alice", peer_addr);
    peer.send_to(b"before", relay).unwrap();
    assert!(client_receives(&alice, b"before", WAIT));
    let list = sessions(&server, "?username=alice");
    let id = list["sessions"][0]["id"].as_str().unwrap().to_owned();

    let kicked = Instant::now();
    let reply = call(&server, "DELETE", &format!("/api/v1/sessions/{id}"), "");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["ended"], true);
    assert!(
        kicked.elapsed() < Duration::from_secs(1),
        "kick took {:?}",
        kicked.elapsed()
    );
    peer.send_to(b"after", relay).unwrap();
    assert!(!client_receives(&alice, b"after", Duration::from_secs(1)));
    alice.refresh(600).expect_error(437, "Refresh after a kick");
    let again = call(&server, "DELETE", &format!("/api/v1/sessions/{id}"), "");
    assert_eq!(again.status, 404, "{again:?}");
    // A kick is not a revocation: the client may allocate again.
    alice.allocate().expect_success("allocate after a kick");

    let mut bob = TcpTurn::rest(server.tcp(), "bob");
    bob.allocate().expect_success("TCP allocate");
    let list = sessions(&server, "?username=bob");
    let id = list["sessions"][0]["id"].as_str().unwrap().to_owned();
    let reply = call(&server, "DELETE", &format!("/api/v1/sessions/{id}"), "");
    assert_eq!(reply.status, 200, "{reply:?}");
    bob.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = bob.stream.read(&mut byte);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the kicked TCP client's connection is closed: {read:?}"
    );
}

#[test]
fn a_revoked_user_is_cut_off_and_refused_until_lifted_while_others_relay_on() {
    if skip_against_coturn(
        "a_revoked_user_is_cut_off_and_refused_until_lifted_while_others_relay_on",
    ) {
        return;
    }
    let server = start();
    let peer = peer_socket();
    let peer_addr = peer.local_addr().unwrap();
    let (alice, alice_relay) = allocated(&server, "alice", peer_addr);
    let (_alice2, _) = allocated(&server, "alice", peer_addr);
    let (mut bob, bob_relay) = allocated(&server, "bob", peer_addr);

    let revoked_at = crate::harness::unix_now();
    let reply = revoke(&server, r#"{"username": "alice"}"#);
    assert_eq!(reply.status, 201, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["ended"], 2, "{body}");
    // A bare user name carries no expiry: the credential ttl (one day) from now.
    let until = body["until"].as_u64().unwrap();
    assert!(until.abs_diff(revoked_at + 86_400) <= 2, "until {until}");

    peer.send_to(b"to alice", alice_relay).unwrap();
    assert!(!client_receives(
        &alice,
        b"to alice",
        Duration::from_secs(1)
    ));
    let mut fresh = UdpTurn::rest(&server, "alice");
    fresh
        .allocate()
        .expect_error(403, "Allocate by a revoked user");
    // Bob is untouched.
    peer.send_to(b"to bob", bob_relay).unwrap();
    assert!(client_receives(&bob, b"to bob", WAIT));
    bob.refresh(600).expect_success("bob's refresh");
    assert_eq!(
        sessions(&server, "")["sessions"].as_array().unwrap().len(),
        1
    );

    let list = call(&server, "GET", "/api/v1/revocations", "").json();
    assert_eq!(
        list["revocations"],
        serde_json::json!([{"username": "alice", "until": until}])
    );
    let metrics = call(&server, "GET", "/metrics", "").body;
    assert_eq!(metric_sum(&metrics, "turnpike_revocations_active"), 1.0);

    // One credential only: a REST username with its expiry revokes until that expiry.
    let (carol_name, _) = rest_credentials(SECRET, "carol", 3600);
    let reply = revoke(&server, &format!(r#"{{"username": "{carol_name}"}}"#));
    assert_eq!(reply.status, 201, "{reply:?}");
    let carol_expiry: u64 = carol_name.split(':').next().unwrap().parse().unwrap();
    assert_eq!(reply.json()["until"].as_u64(), Some(carol_expiry));

    let lifted = call(&server, "DELETE", "/api/v1/revocations/alice", "");
    assert_eq!(lifted.status, 200, "{lifted:?}");
    fresh
        .allocate()
        .expect_success("Allocate once the revocation is lifted");
    let metrics = call(&server, "GET", "/metrics", "").body;
    assert_eq!(metric_sum(&metrics, "turnpike_revocations_active"), 1.0);
}

#[test]
fn revocations_survive_reload_and_restart_in_the_state_file() {
    if skip_against_coturn("revocations_survive_reload_and_restart_in_the_state_file") {
        return;
    }
    let dir = temp_dir("revocations");
    let state = dir.path().join("revocations.json");
    let config = dir.path().join("turnpike.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nrevocations_file = {:?}\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let server = Server::start(&["--config", &config, "--api-token", TOKEN]);
    let until = crate::harness::unix_now() + 3600;
    let reply = revoke(
        &server,
        &format!(r#"{{"username": "alice", "until": {until}}}"#),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        saved["revocations"],
        serde_json::json!([{"username": "alice", "until": until}])
    );

    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    UdpTurn::rest(&server, "alice")
        .allocate()
        .expect_error(403, "revoked, after SIGHUP");
    drop(server);

    let server = Server::start(&["--config", &config, "--api-token", TOKEN]);
    UdpTurn::rest(&server, "alice")
        .allocate()
        .expect_error(403, "revoked, after a restart");
    UdpTurn::rest(&server, "bob")
        .allocate()
        .expect_success("bob, after a restart");
    let list = call(&server, "GET", "/api/v1/revocations", "").json();
    assert_eq!(
        list["revocations"],
        serde_json::json!([{"username": "alice", "until": until}])
    );

    // A file edited by hand and reloaded replaces what is in force.
    std::fs::write(&state, r#"{"revocations": []}"#).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let mut alice = UdpTurn::rest(&server, "alice");
    loop {
        let reply = alice.allocate();
        if reply.is_success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the reload: {}",
            reply.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_corrupt_state_file_stops_the_start_with_its_name() {
    if skip_against_coturn("a_corrupt_state_file_stops_the_start_with_its_name") {
        return;
    }
    let dir = temp_dir("revocations-bad");
    let state = dir.path().join("revocations.json");
    std::fs::write(&state, "{not json").unwrap();
    let config = dir.path().join("turnpike.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nrevocations_file = {:?}\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike"))
            .args(["run", "--config", &config.display().to_string()])
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]),
        Duration::from_secs(10),
    );
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("api.revocations_file") && out.stderr.contains("revocations.json"),
        "{out}"
    );
}

#[test]
fn bad_requests_to_the_session_endpoints_get_a_4xx_with_a_reason() {
    if skip_against_coturn("bad_requests_to_the_session_endpoints_get_a_4xx_with_a_reason") {
        return;
    }
    let server = start();
    let api = server.api.unwrap();
    let no_token = http_with_body(api, "GET", "/api/v1/sessions", &[], "");
    assert_eq!(no_token.status, 401, "{no_token:?}");
    let wrong = http_with_body(
        api,
        "POST",
        "/api/v1/revocations",
        &[("Authorization", "Bearer nope")],
        "{}",
    );
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let long = "x".repeat(600);
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("GET", "/api/v1/sessions?limit=0".into(), "", 400, "limit"),
        (
            "GET",
            "/api/v1/sessions?limit=5000".into(),
            "",
            400,
            "limit",
        ),
        ("GET", "/api/v1/sessions?limit=ten".into(), "", 400, "limit"),
        (
            "GET",
            "/api/v1/sessions?after=yesterday".into(),
            "",
            400,
            "after",
        ),
        (
            "GET",
            format!("/api/v1/sessions?username={long}"),
            "",
            400,
            "username",
        ),
        (
            "GET",
            format!("/api/v1/sessions?prefix={long}"),
            "",
            400,
            "prefix",
        ),
        (
            "GET",
            "/api/v1/sessions?user=alice".into(),
            "",
            400,
            "unknown field",
        ),
        (
            "DELETE",
            "/api/v1/sessions/17".into(),
            "",
            400,
            "WORKER-NUMBER",
        ),
        (
            "DELETE",
            "/api/v1/sessions/0-999".into(),
            "",
            404,
            "no session",
        ),
        (
            "DELETE",
            "/api/v1/sessions/99-1".into(),
            "",
            404,
            "no session",
        ),
        (
            "POST",
            "/api/v1/revocations".into(),
            r#"{"username": "a", "until": "tomorrow"}"#,
            422,
            "until",
        ),
        (
            "POST",
            "/api/v1/revocations".into(),
            r#"{"username": "a", "until": 5}"#,
            400,
            "not in the future",
        ),
        (
            "POST",
            "/api/v1/revocations".into(),
            r#"{"username": "a", "until": 99999999999}"#,
            400,
            "ahead",
        ),
        (
            "POST",
            "/api/v1/revocations".into(),
            r#"{"username": ""}"#,
            400,
            "empty",
        ),
        (
            "POST",
            "/api/v1/revocations".into(),
            r#"{"until": 5}"#,
            422,
            "username",
        ),
        (
            "POST",
            "/api/v1/revocations".into(),
            r#"{"username": "a", "extra": 1}"#,
            422,
            "unknown field",
        ),
        ("POST", "/api/v1/revocations".into(), "{not json", 400, ""),
        (
            "DELETE",
            "/api/v1/revocations/nobody".into(),
            "",
            404,
            "not revoked",
        ),
    ];
    for (method, path, body, status, reason) in cases {
        let reply = call(&server, method, &path, body);
        assert_eq!(reply.status, status, "{method} {path} {body}: {reply:?}");
        assert!(
            reply.error().contains(reason),
            "{method} {path} {body}: {reply:?}"
        );
    }
    let auth = format!("Bearer {TOKEN}");
    let untyped = http_with_body(
        api,
        "POST",
        "/api/v1/revocations",
        &[("Authorization", &auth)],
        r#"{"username": "a"}"#,
    );
    assert_eq!(untyped.status, 415, "{untyped:?}");
    let huge = format!(r#"{{"username": "{}"}}"#, "x".repeat(8192));
    let too_big = call(&server, "POST", "/api/v1/revocations", &huge);
    assert_eq!(too_big.status, 413, "{too_big:?}");
    let from_a_page = http_with_body(
        api,
        "POST",
        "/api/v1/revocations",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Origin", "https://evil.example"),
        ],
        r#"{"username": "a"}"#,
    );
    assert_eq!(from_a_page.status, 403, "{from_a_page:?}");
    // None of it changed anything, and the daemon serves on.
    assert_eq!(
        call(&server, "GET", "/api/v1/revocations", "").json()["revocations"],
        serde_json::json!([])
    );
    UdpTurn::rest(&server, "a")
        .allocate()
        .expect_success("allocate after the bad requests");
}

fn sessions_cli(server: &Server, args: &[&str]) -> CmdOutput {
    let api = format!("http://{}", server.api.unwrap());
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike"))
            .arg("sessions")
            .args(args)
            .args(["--api", &api])
            .env("TURNPIKE_API_TOKEN", TOKEN),
        Duration::from_secs(30),
    )
}

#[test]
fn the_sessions_command_lists_kicks_revokes_and_lifts() {
    if skip_against_coturn("the_sessions_command_lists_kicks_revokes_and_lifts") {
        return;
    }
    let server = start();
    let peer = peer_socket();
    let (alice, _) = allocated(&server, "alice", peer.local_addr().unwrap());
    let (_bob, _) = allocated(&server, "bob", peer.local_addr().unwrap());

    let out = sessions_cli(&server, &["list"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("ID"), "{out}");
    assert!(
        out.stdout
            .contains(&alice.sock.local_addr().unwrap().to_string()),
        "{out}"
    );
    assert!(out.stdout.contains("2 sessions"), "{out}");
    let out = sessions_cli(&server, &["list", "--user", "alice", "--json"]);
    assert!(out.success(), "{out}");
    let listed: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{out}");
    // Paging by the command: a limit of 1 per page still lists both.
    let out = sessions_cli(&server, &["list", "--limit", "1", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{out}");

    let id = sessions(&server, "?username=bob")["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = sessions_cli(&server, &["kick", &id]);
    assert!(
        out.success() && out.stdout.contains(&format!("session {id} ended")),
        "{out}"
    );
    let out = sessions_cli(&server, &["kick", &id]);
    assert!(!out.success() && out.stderr.contains("HTTP 404"), "{out}");

    let out = sessions_cli(&server, &["revoke", "alice", "--for", "600", "--json"]);
    assert!(out.success(), "{out}");
    let revoked: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(revoked["ended"], 1, "{out}");
    let out = sessions_cli(&server, &["revocations"]);
    assert!(out.success() && out.stdout.contains("alice"), "{out}");
    let out = sessions_cli(&server, &["unrevoke", "alice"]);
    assert!(out.success(), "{out}");
    let out = sessions_cli(&server, &["revocations", "--json"]);
    assert_eq!(out.stdout.trim(), r#"{"revocations":[]}"#, "{out}");
    // Without the token the API's refusal is reported with a hint.
    let api = format!("http://{}", server.api.unwrap());
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike")).args(["sessions", "list", "--api", &api]),
        Duration::from_secs(30),
    );
    assert!(
        !out.success()
            && out.stderr.contains("HTTP 401")
            && out.stderr.contains("TURNPIKE_API_TOKEN"),
        "{out}"
    );
}

/// coturn's uclient appears in the list with counts that grow while it sends; revoking its
/// user mid-transfer cuts it off (it reports loss), a new run is refused, and a client of
/// another user relays on through it all.
#[test]
fn uclient_is_listed_while_it_sends_and_a_revocation_cuts_it_off() {
    if skip_against_coturn("uclient_is_listed_while_it_sends_and_a_revocation_cuts_it_off") {
        return;
    }
    let server = start();
    let (username, password) = rest_credentials(SECRET, "uclient", 3600);
    let port = server.udp.port().to_string();
    // 2 clients sending to each other through their relays, 400 messages each, 20 ms apart:
    // about 8 s of traffic.
    let args: Vec<String> = [
        "-u",
        &username,
        "-w",
        &password,
        "-y",
        "-n",
        "400",
        "-m",
        "1",
        "-l",
        "120",
        "-z",
        "20",
        "-p",
        &port,
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_uclient(None, &args, Duration::from_secs(60))
    });
    let peer = peer_socket();
    let peer_addr = peer.local_addr().unwrap();
    let (other, other_relay) = allocated(&server, "other", peer_addr);

    let sent_by_uclient = |list: &serde_json::Value| -> u64 {
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["to_peer_bytes"].as_u64().unwrap())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let list = sessions(&server, "?username=uclient");
        if sent_by_uclient(&list) > 0 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "uclient never showed up sending: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // uclient -y makes an allocation per client and peer, and one on a reserved port.
    assert!(first["sessions"].as_array().unwrap().len() >= 2, "{first}");
    std::thread::sleep(Duration::from_millis(1000));
    let second = sessions(&server, "?username=uclient");
    assert!(
        sent_by_uclient(&second) > sent_by_uclient(&first),
        "the counts grow while uclient sends: {first} then {second}"
    );

    let reply = revoke(&server, r#"{"username": "uclient"}"#);
    assert_eq!(reply.status, 201, "{reply:?}");
    let listed = second["sessions"].as_array().unwrap().len();
    assert_eq!(reply.json()["ended"], listed, "{reply:?}");
    // The other user relays on meanwhile.
    peer.send_to(b"still here", other_relay).unwrap();
    assert!(client_receives(&other, b"still here", WAIT));
    let out = run.join().unwrap();
    let stats = uclient_stats(&out.stdout).unwrap_or_else(|| panic!("uclient totals: {out}"));
    assert!(
        stats.lost > 0 && stats.received < stats.sent,
        "uclient saw the cut: {out}"
    );
    let again = run_uclient(
        None,
        &[
            "-u",
            &username,
            "-w",
            &password,
            "-y",
            "-n",
            "10",
            "-m",
            "1",
            "-p",
            &port,
            "127.0.0.1",
        ],
        Duration::from_secs(60),
    );
    crate::uclient::assert_refused(
        &again,
        "uclient after the revocation",
        "error 403 (Forbidden)",
    );
}

/// Two aiortc peers (relay only, user "harness") moving 4 MiB over a data channel: kicking
/// their sessions mid-transfer stalls it, and the peers report failure instead of the echo.
/// Unkicked, the pair moves 8 MiB through turnpike on loopback in about 8 s on a loaded
/// machine of this kind, so 4 MiB within the 20 s allowed fails only because of the kick.
#[test]
fn kicking_an_aiortc_pair_mid_transfer_stalls_its_data_channel() {
    if skip_against_coturn("kicking_an_aiortc_pair_mid_transfer_stalls_its_data_channel") {
        return;
    }
    let server = start();
    let url = format!("turn:{}?transport=udp", server.udp);
    let run_pair = crate::harness::require_run_pair();
    let pair = std::thread::spawn(move || {
        run_with_timeout(
            Command::new(run_pair).args([
                "--",
                "--turn",
                &url,
                "--secret",
                SECRET,
                "--policy",
                "relay",
                "--bytes",
                "4194304",
                "--timeout",
                "20",
            ]),
            Duration::from_secs(60),
        )
    });
    // Wait until data flows through both relays.
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = sessions(&server, "?username=harness");
        let flowing = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["to_peer_bytes"].as_u64() > Some(50_000))
            .count();
        if flowing >= 2 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the pair's transfer never got going: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for session in list["sessions"].as_array().unwrap() {
        let id = session["id"].as_str().unwrap();
        let reply = call(&server, "DELETE", &format!("/api/v1/sessions/{id}"), "");
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let out = pair.join().unwrap();
    assert!(
        !out.success(),
        "the transfer completed despite the kick:\n{out}"
    );
    assert!(out.stdout.contains("\"ok\": false"), "{out}");
}
