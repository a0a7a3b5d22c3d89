//! The webrtc-rs `stun` and `turn` client crates against the server: an implementation
//! written by someone else checks ours (Binding, Allocate with REST credentials,
//! CreatePermission, Send indications, ChannelBind/ChannelData, Refresh with lifetime 0).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

use crate::harness::{rest_credentials, Server, REALM, SECRET};

/// How long any single network step may take on loopback.
const STEP: Duration = Duration::from_secs(2);
/// Relay port range the TURN test starts the server with.
const MIN_PORT: u16 = 50_000;
const MAX_PORT: u16 = 50_999;

/// A webrtc-rs TURN client on a fresh 127.0.0.1 UDP socket, listening.
pub(crate) async fn turn_client(server: SocketAddr, username: String, password: String) -> Client {
    let conn = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
    let config = ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username,
        password,
        realm: REALM.to_string(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    };
    let client = Client::new(config).await.expect("turn::Client::new");
    client.listen().await.expect("turn::Client::listen");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_stun_binding_gets_reflexive_address() {
    use stun::agent::TransactionId;
    use stun::message::{Getter, Message, Setter, BINDING_REQUEST};
    use stun::xoraddr::XorMappedAddress;

    let server = Server::start(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();

    let mut request = Message::new();
    let setters: [Box<dyn Setter>; 3] = [
        Box::new(TransactionId::new()),
        Box::new(BINDING_REQUEST),
        Box::new(stun::fingerprint::FINGERPRINT),
    ];
    request.build(&setters).expect("build Binding request");
    sock.send_to(&request.raw, server.udp).await.unwrap();

    let mut buf = vec![0u8; 1500];
    let (n, from) = timeout(STEP, sock.recv_from(&mut buf))
        .await
        .expect("no Binding response within 2 s")
        .unwrap();
    assert_eq!(from, server.udp, "response from an unexpected address");

    let mut response = Message::new();
    response.raw = buf[..n].to_vec();
    response
        .decode()
        .expect("stun crate cannot decode the response");
    assert_eq!(
        response.transaction_id, request.transaction_id,
        "transaction ID not echoed"
    );
    assert_eq!(
        response.typ,
        stun::message::BINDING_SUCCESS,
        "expected Binding success, got {} ({response})",
        response.typ
    );
    let mut xor = XorMappedAddress::default();
    xor.get_from(&response)
        .expect("no valid XOR-MAPPED-ADDRESS in the Binding response");
    assert_eq!(
        SocketAddr::new(xor.ip, xor.port),
        local,
        "XOR-MAPPED-ADDRESS is not the client's address"
    );
    // The stun crate's own FINGERPRINT check.
    stun::fingerprint::FINGERPRINT
        .check(&response)
        .expect("FINGERPRINT of the response does not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_turn_client_allocates_permits_and_relays() {
    let min = MIN_PORT.to_string();
    let max = MAX_PORT.to_string();
    let server = Server::start(&["--min-port", &min, "--max-port", &max]);
    let (username, password) = rest_credentials(SECRET, "webrtc-rs", 3600);
    let client = turn_client(server.udp, username, password).await;

    let relay_conn = timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("Allocate did not finish within 10 s")
        .expect("webrtc-rs Allocate failed");
    let relay = relay_conn.local_addr().unwrap();
    assert_eq!(
        relay.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "relayed address {relay} is not on the relay IP"
    );
    assert!(
        (MIN_PORT..=MAX_PORT).contains(&relay.port()),
        "relay port {} outside {MIN_PORT}-{MAX_PORT}",
        relay.port()
    );

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = vec![0u8; 1500];

    // The first send makes the client create a permission, then goes out as a Send
    // indication; later ones use ChannelData once the client's ChannelBind completes.
    const ROUNDS: usize = 100;
    for i in 0..ROUNDS {
        let out = format!("hello {i}");
        timeout(STEP, relay_conn.send_to(out.as_bytes(), peer_addr))
            .await
            .unwrap_or_else(|_| panic!("round {i}: relay_conn.send_to hung"))
            .unwrap_or_else(|e| panic!("round {i}: relay_conn.send_to failed: {e}"));
        let (n, from) = timeout(STEP, peer.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {i}: peer received nothing within 2 s"))
            .unwrap();
        assert_eq!(
            from, relay,
            "round {i}: peer got data from {from}, not the relay"
        );
        assert_eq!(&buf[..n], out.as_bytes(), "round {i}: payload changed");

        let back = format!("reply {i}");
        peer.send_to(back.as_bytes(), relay).await.unwrap();
        let (n, from) = timeout(STEP, relay_conn.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {i}: client received no reply within 2 s"))
            .unwrap_or_else(|e| panic!("round {i}: relay_conn.recv_from failed: {e}"));
        assert_eq!(from, peer_addr, "round {i}: reply attributed to {from}");
        assert_eq!(
            &buf[..n],
            back.as_bytes(),
            "round {i}: reply payload changed"
        );
    }

    // Close cleanly: Refresh with LIFETIME 0, then the client.
    timeout(STEP, relay_conn.close())
        .await
        .expect("relay_conn.close hung")
        .expect("relay_conn.close failed");
    timeout(STEP, client.close())
        .await
        .expect("client.close hung")
        .expect("client.close failed");

    let mut server = server;
    assert!(server.is_running(), "server exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_turn_client_with_wrong_password_fails() {
    let server = Server::start(&[]);
    let (username, _) = rest_credentials(SECRET, "webrtc-rs", 3600);
    let client = turn_client(server.udp, username, "not-the-password".to_string()).await;
    let result = timeout(Duration::from_secs(10), client.allocate())
        .await
        .expect("Allocate with a wrong password neither succeeded nor failed within 10 s");
    match result {
        Ok(conn) => panic!(
            "Allocate with a wrong password succeeded: relay {:?}",
            conn.local_addr()
        ),
        Err(e) => eprintln!("Allocate failed as expected: {e}"),
    }
    let _ = client.close().await;
}
