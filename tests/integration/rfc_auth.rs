//! RFC conformance of authentication (issue 12), against the daemon over loopback sockets:
//! REST usernames that are only the expiry timestamp (draft-uberti-behave-turn-rest-00 §2.2,
//! as coturn's `turnutils_uclient -W` without `-u` and webrtc-rs's credential helper mint
//! them), the MESSAGE-INTEGRITY-SHA256 key of RFC 8489 §9.2.2, and the PASSWORD-ALGORITHMS /
//! PASSWORD-ALGORITHM negotiation of §9.2.4.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use stun_types::attribute::{
    AttributeStaticType, MessageIntegrity, MessageIntegritySha256, Nonce, RawAttribute, Realm,
    Username,
};
use stun_types::message::{
    LongTermKeyCredentials, Message, MessageWrite, MessageWriteExt, MessageWriteVec,
};
use tokio::net::UdpSocket as TokioUdpSocket;
use tokio::time::timeout;
use turn_types::attribute::RequestedTransport;
use turn_types::message::ALLOCATE;
use webrtc_util::Conn;

use crate::harness::{against_coturn, rest_password, unix_now, Server, REALM, SECRET};
use crate::stun_client::{udp_transport, Resp, UdpTurn};
use crate::uclient::{assert_zero_loss, run_uclient};
use crate::webrtc_rs::turn_client;

/// PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS (RFC 8489 §14.11, §14.12).
const PASSWORD_ALGORITHM: u16 = 0x001D;
const PASSWORD_ALGORITHMS: u16 = 0x8002;
/// The list turnpike offers: SHA-256 (0x0002), then MD5 (0x0001), no parameters.
const OFFERED: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];
const PA_SHA256: [u8; 4] = [0, 2, 0, 0];

/// `hash(username ":" realm ":" password)`, the long-term key (RFC 8489 §9.2.2, §18.5.1).
fn md5_key(username: &str, password: &str) -> Vec<u8> {
    md5::Md5::digest(format!("{username}:{REALM}:{password}")).to_vec()
}

fn sha256_key(username: &str, password: &str) -> Vec<u8> {
    Sha256::digest(format!("{username}:{REALM}:{password}")).to_vec()
}

/// An Allocate (REQUESTED-TRANSPORT UDP, USERNAME, REALM, NONCE, then `extra`) ending in a
/// MESSAGE-INTEGRITY-SHA256 computed by hand with `key` (RFC 8489 §14.6), and FINGERPRINT.
fn allocate_with_sha256_integrity(
    username: &str,
    nonce: &str,
    extra: &[(u16, &[u8])],
    key: &[u8],
) -> Vec<u8> {
    let mut w = Message::builder_request(ALLOCATE, MessageWriteVec::new());
    w.add_attribute(&RequestedTransport::new(RequestedTransport::UDP))
        .unwrap();
    w.add_attribute(&Username::new(username).unwrap()).unwrap();
    w.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
    w.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
    for (atype, value) in extra {
        let atype = stun_types::attribute::AttributeType::new(*atype);
        w.add_attribute(&RawAttribute::new(atype, value)).unwrap();
    }
    // A zero placeholder first: it makes the header length count the attribute, as the HMAC
    // input requires; the HMAC covers everything before the attribute.
    w.push_attribute_unchecked(&RawAttribute::new(MessageIntegritySha256::TYPE, &[0; 32]));
    let len = w.len();
    let data = w.mut_data();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(&data[..len - 36]);
    data[len - 32..].copy_from_slice(&mac.finalize().into_bytes());
    w.add_fingerprint().unwrap();
    w.finish()
}

/// The 401 an unauthenticated Allocate gets.
fn challenge(client: &UdpTurn) -> Resp {
    let resp = client
        .unauthenticated(ALLOCATE, &udp_transport)
        .expect_error(401, "Allocate without credentials");
    assert!(resp.nonce().is_some(), "401 without NONCE");
    resp
}

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

// ---- RFC 8489 §9.2.2: the key of MESSAGE-INTEGRITY-SHA256 ----

/// Without PASSWORD-ALGORITHM the key is MD5(username ":" realm ":" password) for
/// MESSAGE-INTEGRITY-SHA256 too: such an Allocate succeeds (and the answer carries
/// MESSAGE-INTEGRITY, §9.2.4), while the SHA-256-of-credentials key turnpike used before,
/// which is what `stun-types` computes, gets 401.
#[test]
fn sha256_integrity_keyed_with_md5_succeeds_and_the_old_derivation_gets_401() {
    if against_coturn() {
        eprintln!("turnpike-specific");
        return;
    }
    let server = Server::start(&[]);
    let (username, password) = crate::harness::rest_credentials(SECRET, "sha256", 3600);
    let client = UdpTurn::new(server.udp, &username, &password);
    let nonce = challenge(&client).nonce().unwrap();
    let request =
        allocate_with_sha256_integrity(&username, &nonce, &[], &md5_key(&username, &password));
    let resp = client
        .transact(&request)
        .expect_success("Allocate with MESSAGE-INTEGRITY-SHA256 keyed with MD5");
    assert!(
        resp.has(MessageIntegrity::TYPE) && !resp.has(MessageIntegritySha256::TYPE),
        "the answer to a request without PASSWORD-ALGORITHM carries MESSAGE-INTEGRITY"
    );
    let md5_credentials =
        LongTermKeyCredentials::new(username.clone(), password.clone(), REALM.into());
    resp.msg()
        .validate_integrity(&md5_credentials.into())
        .expect("the answer's MESSAGE-INTEGRITY verifies with the MD5 key");

    let other = UdpTurn::new(server.udp, &username, &password);
    let nonce = challenge(&other).nonce().unwrap();
    let request =
        allocate_with_sha256_integrity(&username, &nonce, &[], &sha256_key(&username, &password));
    other.transact(&request).expect_error(
        401,
        "MESSAGE-INTEGRITY-SHA256 keyed with SHA-256 but no PASSWORD-ALGORITHM",
    );
}

// ---- RFC 8489 §9.2.4: PASSWORD-ALGORITHMS negotiation ----

/// The 401 lists PASSWORD-ALGORITHMS (SHA-256, MD5) beside the cookie nonce; a request that
/// echoes the list and picks SHA-256 is keyed with SHA-256 and gets a success signed with
/// MESSAGE-INTEGRITY-SHA256; naming an algorithm without echoing the list, or an unknown
/// algorithm, gets 400.
#[test]
fn password_algorithm_sha256_is_negotiated_and_misuse_gets_400() {
    if against_coturn() {
        eprintln!("turnpike-specific");
        return;
    }
    let server = Server::start(&[]);
    let (username, password) = crate::harness::rest_credentials(SECRET, "negotiator", 3600);
    let client = UdpTurn::new(server.udp, &username, &password);
    let first = challenge(&client);
    let nonce = first.nonce().unwrap();
    // §9.2: the nonce cookie with the "Password algorithms" bit (0x000001, erratum 6290).
    assert!(
        nonce.starts_with("obMatJos2AAAB"),
        "NONCE {nonce:?} lacks the RFC 8489 nonce cookie"
    );
    let offered = first
        .msg()
        .raw_attribute(stun_types::attribute::AttributeType::new(
            PASSWORD_ALGORITHMS,
        ))
        .map(|a| a.value.to_vec());
    assert_eq!(
        offered.as_deref(),
        Some(&OFFERED[..]),
        "PASSWORD-ALGORITHMS in the 401"
    );
    let key = sha256_key(&username, &password);
    let negotiated = [
        (PASSWORD_ALGORITHMS, &OFFERED[..]),
        (PASSWORD_ALGORITHM, &PA_SHA256[..]),
    ];
    let resp = client
        .transact(&allocate_with_sha256_integrity(
            &username,
            &nonce,
            &negotiated,
            &key,
        ))
        .expect_success("Allocate negotiating SHA-256");
    assert!(
        !resp.has(MessageIntegrity::TYPE),
        "MESSAGE-INTEGRITY-SHA256 only"
    );
    // stun-types keys MESSAGE-INTEGRITY-SHA256 with SHA-256 of the credentials, which is
    // right once SHA-256 is negotiated.
    let sha256_credentials =
        LongTermKeyCredentials::new(username.clone(), password.clone(), REALM.into());
    let algorithm = resp
        .msg()
        .validate_integrity(&sha256_credentials.into())
        .expect("the answer verifies with the SHA-256 key");
    assert_eq!(algorithm, stun_types::message::IntegrityAlgorithm::Sha256);

    for (what, extra) in [
        (
            "PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS",
            &[(PASSWORD_ALGORITHM, &PA_SHA256[..])][..],
        ),
        (
            "an unknown PASSWORD-ALGORITHM",
            &[
                (PASSWORD_ALGORITHMS, &OFFERED[..]),
                (PASSWORD_ALGORITHM, &[0, 9, 0, 0][..]),
            ][..],
        ),
    ] {
        let other = UdpTurn::new(server.udp, &username, &password);
        let nonce = challenge(&other).nonce().unwrap();
        let resp = other
            .transact(&allocate_with_sha256_integrity(
                &username, &nonce, extra, &key,
            ))
            .expect_error(400, what);
        assert!(
            !resp.has(Nonce::TYPE) && !resp.has(Realm::TYPE),
            "{what}: 400 with NONCE or REALM"
        );
    }
}
