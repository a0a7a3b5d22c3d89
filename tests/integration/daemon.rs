//! The daemon's life cycle: systemd notifications (READY, WATCHDOG, RELOADING, STOPPING),
//! SIGHUP reload without dropping allocations, and a clean exit on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::timeout;
use webrtc_util::Conn;

use crate::harness::{rest_credentials, temp_dir, Server, REALM};
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
