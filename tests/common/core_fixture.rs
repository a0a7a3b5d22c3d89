//! A sans-IO `Server` with one allocation, a permission and channel 0x4000 to a peer, for the
//! zero-allocation test and the criterion benchmarks (included with `#[path]`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use stun_types::attribute::{Nonce, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageIntegrityCredentials,
    MessageWrite, MessageWriteExt, MessageWriteVec, Method,
};
use turn_types::attribute::{ChannelNumber, RequestedTransport, XorPeerAddress};
use turn_types::message::{ALLOCATE, CHANNEL_BIND};
use turnpike::proto::auth::{rest_password, Credentials, NonceKey, Password};
use turnpike::proto::{ClientAction, FiveTuple, Quotas, Server, ServerConfig, Transport};

pub const SECRET: &str = "secret";
pub const REALM: &str = "example.org";
pub const UNIX: u64 = 1_700_000_000;
const NONCE_KEY: [u8; 32] = [1; 32];

pub struct Fixture {
    pub server: Server,
    pub now: Instant,
    pub tuple: FiveTuple,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    pub nonce: String,
    pub out: Vec<u8>,
}

fn server() -> Server {
    let credentials = Credentials {
        secrets: vec![Password(SECRET.into())],
        separator: ':',
        static_users: vec![],
    };
    let config = ServerConfig {
        max_permissions_per_allocation: 8,
        max_channels_per_allocation: 8,
        ..ServerConfig::new(REALM, credentials, NonceKey::new(NONCE_KEY))
    };
    Server::new(Arc::new(config), Arc::new(Quotas::new(10, 10)), [7; 32])
}

/// A request signed with a REST credential for "alice" and `nonce`.
pub fn signed(method: Method, nonce: &str, attrs: impl FnOnce(&mut MessageWriteVec)) -> Vec<u8> {
    let username = format!("{}:alice", UNIX + 3600);
    let password = rest_password(SECRET, &username);
    let mut msg = Message::builder_request(method, MessageWriteVec::new());
    attrs(&mut msg);
    msg.add_attribute(&Username::new(&username).unwrap())
        .unwrap();
    msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
    msg.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
    let credentials: MessageIntegrityCredentials =
        LongTermKeyCredentials::new(username, password, REALM.into()).into();
    msg.add_message_integrity(&credentials, IntegrityAlgorithm::Sha1)
        .unwrap();
    msg.finish()
}

/// An allocation for 198.51.100.1:4000 relayed at 192.0.2.1:50000, with channel 0x4000 bound
/// to 8.8.8.8:5000.
pub fn with_channel() -> Fixture {
    let mut server = server();
    let now = Instant::now();
    let tuple = FiveTuple {
        client: "198.51.100.1:4000".parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    let relay: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let peer: SocketAddr = "8.8.8.8:5000".parse().unwrap();
    let mut out = vec![0u8; 70_000];
    let nonce = NonceKey::new(NONCE_KEY).issue(tuple.client, UNIX);
    let allocate = signed(ALLOCATE, &nonce, |m| {
        m.add_attribute(&RequestedTransport::new(17)).unwrap()
    });
    let ClientAction::Allocate(pending) =
        server.handle_client(now, UNIX, tuple, &allocate, &mut out)
    else {
        panic!("allocate not accepted")
    };
    server.accept_allocation(now, 0, pending, &[relay], None, &mut out);
    let bind = signed(CHANNEL_BIND, &nonce, |m| {
        let transaction = m.transaction_id();
        m.add_attribute(&ChannelNumber::new(0x4000)).unwrap();
        m.add_attribute(&XorPeerAddress::new(peer, transaction))
            .unwrap();
    });
    let ClientAction::Reply(n) = server.handle_client(now, UNIX, tuple, &bind, &mut out) else {
        panic!("no ChannelBind answer")
    };
    assert_eq!(
        Message::from_bytes(&out[..n]).unwrap().class(),
        MessageClass::Success
    );
    Fixture {
        server,
        now,
        tuple,
        relay,
        peer,
        nonce,
        out,
    }
}
