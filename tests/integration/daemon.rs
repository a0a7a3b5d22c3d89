//! The daemon's life cycle: systemd notifications (READY, WATCHDOG, RELOADING, STOPPING),
//! SIGHUP reload without dropping allocations (but with relaying to peers it denies cut at
//! once), and a clean exit on SIGTERM.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::timeout;
use webrtc_util::Conn;

use crate::hardening::wait_for_metric;
use crate::harness::{rest_credentials, temp_dir, Server, REALM, SECRET};
use crate::stun_client::{channel_data, recv_from, UdpTurn};
use crate::webrtc_rs::turn_client;

fn signal(server: &Server, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

/// Collects sd_notify datagrams until one contains `wanted`; returns everything received.
fn wait_for(socket: &UnixDatagram, wanted: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline - Instant::now() + Duration::from_millis(1)))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            break;
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = message.lines().any(|l| l == wanted);
        seen.push(message);
        if done {
            return seen;
        }
    }
    panic!("no {wanted} within {within:?}; received {seen:?}");
}

#[test]
fn notifies_ready_watchdog_reloading_and_stopping() {
    let dir = temp_dir("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    let path_str = path.to_str().unwrap();
    let mut server = Server::start_with_env(
        &[],
        &[("NOTIFY_SOCKET", path_str), ("WATCHDOG_USEC", "400000")],
    );
    let ready = wait_for(&socket, "READY=1", Duration::from_secs(5));
    assert!(
        ready.iter().all(|m| !m.contains("WATCHDOG=1")),
        "watchdog before ready: {ready:?}"
    );
    // WATCHDOG_USEC=400000: pings every 200 ms while the workers run.
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(2));
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(2));

    signal(&server, "HUP");
    wait_for(&socket, "RELOADING=1", Duration::from_secs(5));
    wait_for(&socket, "READY=1", Duration::from_secs(5));

    signal(&server, "TERM");
    wait_for(&socket, "STOPPING=1", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

fn write_config(path: &Path, secret: &str) {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrealm = \"{REALM}\"\n\n\
         [auth]\nsecrets = [\"{secret}\"]\n\n\
         [relay]\nips = [\"127.0.0.1\"]\nallow_peers = [\"127.0.0.0/8\"]\n"
    );
    std::fs::write(path, text).unwrap();
}

/// SIGHUP swaps the secret: a relay made with the old one keeps flowing, new allocations
/// need the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_secrets_without_dropping_allocations() {
    let dir = temp_dir("reload");
    let path = dir.path().join("reload.toml");
    write_config(&path, "old-secret");
    let server = Server::start_raw(&[
        "--config",
        path.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
    ]);

    let (username, password) = rest_credentials("old-secret", "rotating", 3600);
    let client = turn_client(server.udp, username.clone(), password.clone()).await;
    let relay = timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("allocate timed out")
        .expect("allocate with the old secret");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let relay_addr = relay.local_addr().unwrap();

    let round_trip = |label: &'static str| {
        let relay = &relay;
        let peer = &peer;
        async move {
            relay.send_to(label.as_bytes(), peer_addr).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{label}: nothing reached the peer"))
                .unwrap();
            assert_eq!((&buf[..n], from), (label.as_bytes(), relay_addr));
            peer.send_to(label.as_bytes(), relay_addr).await.unwrap();
            let (n, from) = timeout(Duration::from_secs(2), relay.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{label}: nothing came back from the peer"))
                .unwrap();
            assert_eq!((&buf[..n], from), (label.as_bytes(), peer_addr));
        }
    };
    round_trip("before reload").await;

    write_config(&path, "new-secret");
    signal(&server, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr_log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round_trip("after reload").await;

    let stale = turn_client(server.udp, username, password).await;
    let refused = timeout(Duration::from_secs(10), stale.allocate()).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a credential from the removed secret still allocates"
    );
    let (username, password) = rest_credentials("new-secret", "rotating", 3600);
    let fresh = turn_client(server.udp, username, password).await;
    let allocated = timeout(Duration::from_secs(10), fresh.allocate()).await;
    assert!(
        matches!(allocated, Ok(Ok(_))),
        "the new secret does not allocate"
    );

    relay.close().await.unwrap();
    client.close().await.unwrap();
    stale.close().await.unwrap();
    fresh.close().await.unwrap();
}

/// A config whose only allowed peers are `allowed` (loopback addresses, denied by default).
fn write_peer_config(path: &Path, allowed: &[Ipv4Addr]) {
    let allow: Vec<String> = allowed.iter().map(|ip| format!("\"{ip}/32\"")).collect();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nrealm = \"{REALM}\"\n\n\
         [auth]\nsecrets = [\"{SECRET}\"]\n\n\
         [relay]\nips = [\"127.0.0.1\"]\nallow_peers = [{}]\n",
        allow.join(", ")
    );
    std::fs::write(path, text).unwrap();
}

/// How long a datagram that is not relayed is waited for.
const NOT_RELAYED_WAIT: Duration = Duration::from_millis(700);

/// SIGHUP with a peer taken off `allow_peers`: its channel stops relaying at once, both
/// ways, instead of until the permission (300 s) and channel (600 s) run out; the same
/// allocation's other, still allowed peer relays on, and the daemon answers. Before the fix
/// the reload only swapped the filter, and the channel kept relaying.
#[test]
fn reload_denying_a_live_peer_stops_relaying_to_it_at_once() {
    let dir = temp_dir("reload-deny");
    let path = dir.path().join("reload-deny.toml");
    let (cut_ip, kept_ip) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    write_peer_config(&path, &[cut_ip, kept_ip]);
    let server = Server::start_raw(&[
        "--config",
        path.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
    ]);
    let cut_peer = std::net::UdpSocket::bind((cut_ip, 0)).unwrap();
    let kept_peer = std::net::UdpSocket::bind((kept_ip, 0)).unwrap();
    let (cut_addr, kept_addr) = (
        cut_peer.local_addr().unwrap(),
        kept_peer.local_addr().unwrap(),
    );
    let mut client = UdpTurn::rest(&server, "deny-on-reload");
    let relay = client.allocate().expect_success("Allocate").relayed();
    client
        .channel_bind(0x4000, cut_addr)
        .expect_success("ChannelBind to the peer to be cut");
    client
        .channel_bind(0x4001, kept_addr)
        .expect_success("ChannelBind to the peer to keep");

    // Each way on `channel`: the client's ChannelData reaches `peer`, and `peer`'s datagram
    // reaches the client as ChannelData.
    let relays = |channel: u16, peer: &std::net::UdpSocket, label: &str, wait: Duration| {
        client.send_channel_data(channel, label.as_bytes());
        let to_peer = recv_from(peer, wait);
        assert!(
            to_peer.is_none() || to_peer == Some((label.as_bytes().to_vec(), relay)),
            "{label}: {to_peer:?}"
        );
        peer.send_to(label.as_bytes(), relay).unwrap();
        let to_client = client.recv(wait);
        assert!(
            to_client.is_none() || to_client == Some(channel_data(channel, label.as_bytes())),
            "{label}: {to_client:?}"
        );
        (to_peer.is_some(), to_client.is_some())
    };
    let wait = Duration::from_secs(2);
    assert_eq!(relays(0x4000, &cut_peer, "cut, before", wait), (true, true));
    assert_eq!(
        relays(0x4001, &kept_peer, "kept, before", wait),
        (true, true)
    );

    write_peer_config(&path, &[kept_ip]);
    signal(&server, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr_log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The workers apply the reload at their next turn; the cut is logged then (waited for
    // within bounds, not asserted here, so old code fails on the relaying below).
    const CUT: &str = "reloaded peer filter denies live peers";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr_log().contains(CUT) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    for round in 0..3 {
        assert_eq!(
            relays(0x4000, &cut_peer, "cut, after", NOT_RELAYED_WAIT),
            (false, false),
            "round {round}: the denied peer is still relayed"
        );
    }
    assert_eq!(
        relays(0x4001, &kept_peer, "kept, after", wait),
        (true, true)
    );
    client
        .refresh(600)
        .expect_success("Refresh after the reload");
    client
        .channel_bind(0x4000, cut_addr)
        .expect_error(403, "ChannelBind to the denied peer");

    let log = server.stderr_log();
    let cut_lines: Vec<&str> = log.lines().filter(|l| l.contains(CUT)).collect();
    assert_eq!(cut_lines.len(), 1, "{log}");
    assert!(
        cut_lines[0].contains("permissions=1") && cut_lines[0].contains("channels=1"),
        "{}",
        cut_lines[0]
    );
    let counted = wait_for_metric(
        &server,
        "turnpike_cut_by_reload",
        2.0,
        Duration::from_secs(5),
    );
    assert_eq!(
        counted, 2.0,
        "turnpike_cut_by_reload_total (permission + channel)"
    );
}
