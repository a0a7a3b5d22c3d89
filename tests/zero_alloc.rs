//! The relay fast path allocates nothing: ChannelData from a client to a peer and from a peer
//! back to the client go through the sans-IO core without touching the heap. A counting global
//! allocator (this test binary's own) proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun_types::attribute::{Nonce, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageIntegrityCredentials, MessageWrite,
    MessageWriteExt, MessageWriteVec,
};
use turn_types::attribute::{ChannelNumber, RequestedTransport, XorPeerAddress};
use turn_types::message::{ALLOCATE, CHANNEL_BIND};
use turnpike::proto::auth::{rest_password, Credentials, NonceKey, Password};
use turnpike::proto::peer_filter::PeerFilter;
use turnpike::proto::{
    ClientAction, FiveTuple, PeerAction, Quotas, Server, ServerConfig, Transport,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const SECRET: &str = "secret";
const REALM: &str = "example.org";
const UNIX: u64 = 1_700_000_000;

fn server() -> Server {
    let config = ServerConfig {
        realm: REALM.into(),
        software: None,
        credentials: Credentials {
            secrets: vec![Password(SECRET.into())],
            separator: ':',
            static_users: vec![],
        },
        nonce_key: NonceKey::new([1; 32]),
        nonce_lifetime: Duration::from_secs(600),
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        max_permissions_per_allocation: 8,
        max_channels_per_allocation: 8,
        bandwidth_per_allocation: None,
        peer_filter: PeerFilter::new(vec![], vec![]),
        own_addresses: vec![],
        external_ips: vec![],
        alternate_servers: vec![],
        relay_ipv4: true,
        relay_ipv6: false,
    };
    Server::new(Arc::new(config), Arc::new(Quotas::new(10, 10)))
}

fn signed(
    method: turn_types::stun::message::Method,
    nonce: &str,
    attrs: impl FnOnce(&mut MessageWriteVec),
) -> Vec<u8> {
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

#[test]
fn channel_data_both_ways_allocates_nothing() {
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

    // Set up an allocation with channel 0x4000 to the peer.
    let nonce = NonceKey::new([1; 32]).issue(tuple.client, UNIX);
    let allocate = signed(ALLOCATE, &nonce, |m| {
        m.add_attribute(&RequestedTransport::new(17)).unwrap()
    });
    let ClientAction::Allocate(pending) =
        server.handle_client(now, UNIX, tuple, &allocate, &mut out)
    else {
        panic!("allocate not accepted")
    };
    server.accept_allocation(now, pending, &[relay], None, &mut out);
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
        stun_types::message::MessageClass::Success
    );

    let mut to_peer = vec![0x40, 0x00, 0x00, 200];
    to_peer.resize(204, 0xAB);
    let mut from_peer = vec![0u8; 4 + 200];
    let before = allocations();
    for i in 0..10_000u32 {
        let at = now + Duration::from_micros(u64::from(i));
        match server.handle_client(at, UNIX, tuple, &to_peer, &mut out) {
            ClientAction::Relay { payload, .. } => assert_eq!(payload.len(), 200),
            other => panic!("not relayed: {other:?}"),
        }
        let action = server.handle_peer(at, relay, peer, &mut from_peer, 200, &mut out);
        assert!(matches!(
            action,
            Some(PeerAction::ChannelData { len: 204, .. })
        ));
    }
    let during = allocations() - before;
    assert_eq!(
        during, 0,
        "{during} heap allocations for 20,000 relayed packets"
    );
}
