//! RFC conformance of authentication (issue 12), against the daemon over loopback sockets:
//! REST usernames that are only the expiry timestamp (draft-uberti-behave-turn-rest-00 §2.2,
//! as coturn's `turnutils_uclient -W` without `-u` and webrtc-rs's credential helper mint
//! them).

use std::time::Duration;

use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::time::timeout;
use webrtc_util::Conn;

use crate::harness::{against_coturn, rest_password, unix_now, Server, SECRET};
use crate::stun_client::UdpTurn;
use crate::uclient::{assert_zero_loss, run_uclient};
use crate::webrtc_rs::turn_client;

// ---- REST usernames without a user part ----

/// `turnutils_uclient -W SECRET` without `-u` builds the username from the expiry alone;
/// turnpike accepts it and relays with no loss (before: `Cannot complete Allocation`).
#[test]
fn uclient_without_user_sends_timestamp_only_username_and_relays() {
    let server = Server::start(&[]);
    let port = server.port().to_string();
    let host = server.udp.ip().to_string();
    let out = run_uclient(
        None,
        &[
            "-W", SECRET, "-y", "-n", "50", "-m", "2", "-l", "170", "-p", &port, &host,
        ],
        Duration::from_secs(120),
    );
    assert_zero_loss(&out, "uclient -W without -u", 50);
    if against_coturn() {
        return;
    }
    // What it sent: the allocation log names the quota key, which for a timestamp-only
    // username is the username itself.
    let log = server.stderr_log();
    let user = log
        .lines()
        .find(|l| l.contains("allocation created"))
        .and_then(|l| l.split("user=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|u| u.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != ':'))
        .unwrap_or_else(|| panic!("no `allocation created user=` line in the log:\n{log}"));
    assert!(
        !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()),
        "uclient's username {user:?} is not a bare expiry timestamp"
    );
    let expiry: u64 = user.parse().unwrap();
    assert!(expiry > unix_now(), "expiry {expiry} is not in the future");
}

/// webrtc-rs's own `turn::auth::generate_long_term_credentials` mints `"<expiry>"` and
/// `base64(HMAC-SHA1(secret, username))`; its TURN client allocates and relays with that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_credential_helper_timestamp_only_username_allocates_and_relays() {
    let server = Server::start(&[]);
    let (username, password) =
        turn::auth::generate_long_term_credentials(SECRET, Duration::from_secs(3600)).unwrap();
    assert!(
        username.bytes().all(|b| b.is_ascii_digit()),
        "the helper minted {username:?}"
    );
    assert_eq!(password, rest_password(SECRET, &username));
    let client = turn_client(server.udp, username, password).await;
    let relay_conn = timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("Allocate did not finish within 10 s")
        .expect("webrtc-rs Allocate with a timestamp-only username failed");
    let relay = relay_conn.local_addr().unwrap();

    let peer = TokioUdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 1500];
    for i in 0..5 {
        let out = format!("hello {i}");
        timeout(
            Duration::from_secs(2),
            relay_conn.send_to(out.as_bytes(), peer_addr),
        )
        .await
        .expect("relay_conn.send_to hung")
        .expect("relay_conn.send_to failed");
        let (n, from) = timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {i}: the peer received nothing"))
            .unwrap();
        assert_eq!((from, &buf[..n]), (relay, out.as_bytes()), "round {i}");
    }
    let _ = timeout(Duration::from_secs(2), relay_conn.close()).await;
    let _ = timeout(Duration::from_secs(2), client.close()).await;
}

/// The expiry rule still holds for the timestamp-only form: 401, counted as expired (not as
/// an unknown user, which is what the form was taken for before).
#[test]
fn expired_timestamp_only_username_gets_401_as_expired() {
    if against_coturn() {
        eprintln!("turnpike-specific (reads /metrics)");
        return;
    }
    let server = Server::start(&[]);
    let username = (unix_now() - 10).to_string();
    let password = rest_password(SECRET, &username);
    let mut client = UdpTurn::new(server.udp, &username, &password);
    client
        .allocate()
        .expect_error(401, "Allocate with an expired timestamp-only username");
    // Workers publish their counters periodically: poll.
    let expired = crate::hardening::wait_for_metric(
        &server,
        "turnpike_auth_failures_total{reason=\"expired\"}",
        1.0,
        Duration::from_secs(10),
    );
    assert_eq!(expired, 1.0, "expired auth failures in /metrics");
    // And a valid one of the same form succeeds.
    let username = (unix_now() + 600).to_string();
    let password = rest_password(SECRET, &username);
    UdpTurn::new(server.udp, &username, &password)
        .allocate()
        .expect_success("Allocate with a timestamp-only username");
}
