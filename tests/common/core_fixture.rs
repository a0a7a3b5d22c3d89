//! A sans-IO `Server` with one allocation, a permission and channel 0x4000 to a peer, for the
//! zero-allocation test and the criterion benchmarks (included with `#[path]`). The
//! allocation is made by turnpike-client's `Client`, driven against the core in process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use turnpike::proto::auth::{Credentials as Users, NonceKey, Password};
use turnpike::proto::{ClientAction, FiveTuple, Quotas, Server, ServerConfig, Transport};
use turnpike_client::{
    Allocate, Client, Config, Credentials, Event, Method, Output, Request, TransactionId,
};

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
    let users = Users {
        secrets: vec![Password(SECRET.into())],
        separator: ':',
        static_users: vec![],
    };
    let config = ServerConfig {
        max_permissions_per_allocation: 8,
        max_channels_per_allocation: 8,
        ..ServerConfig::new(REALM, users, NonceKey::new(NONCE_KEY))
    };
    Server::new(Arc::new(config), Arc::new(Quotas::new(10, 10)), [7; 32])
}

/// A REST credential for "alice", valid for an hour from `UNIX`.
fn alice() -> Credentials {
    Credentials::rest(SECRET, "alice", ':', UNIX, 3600)
}

/// A request signed with alice's credential and `nonce` (no FINGERPRINT).
pub fn signed(method: Method, nonce: &str, attrs: impl FnOnce(&mut Request)) -> Vec<u8> {
    let mut request = Request::new(method, TransactionId::from(0x7e57));
    attrs(&mut request);
    request.finish_with(Some(&alice().signer(REALM, nonce)), false)
}

/// Runs the client's outputs through the server until the transaction `id` ends; every
/// Allocate gets `relay`.
fn drive(fixture: &mut Fixture, client: &mut Client, id: TransactionId) {
    let Fixture {
        server,
        now,
        tuple,
        relay,
        out,
        ..
    } = fixture;
    while let Some(output) = client.poll_output() {
        let request = match output {
            Output::Transmit(request) => request,
            Output::Event(Event::Answered {
                id: done, answer, ..
            }) if done == id => {
                let response = answer.response();
                assert!(response.is_success(), "{}", response.describe());
                return;
            }
            Output::Event(event) => panic!("{event:?}"),
        };
        let n = match server.handle_client(*now, UNIX, *tuple, &request, out) {
            ClientAction::Reply(n) => n,
            ClientAction::Allocate(pending) => {
                server.accept_allocation(*now, UNIX, pending, &[*relay], None, out)
            }
            other => panic!("{other:?}"),
        };
        while server.poll_output().is_some() {}
        let _ = client.handle_input(*now, &out[..n]);
    }
    panic!("the transaction did not end");
}

/// An allocation for 198.51.100.1:4000 relayed at 192.0.2.1:50000, with channel 0x4000 bound
/// to 8.8.8.8:5000.
pub fn with_channel() -> Fixture {
    let mut fixture = Fixture {
        server: server(),
        now: Instant::now(),
        tuple: FiveTuple {
            client: "198.51.100.1:4000".parse().unwrap(),
            server: "192.0.2.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        },
        relay: "192.0.2.1:50000".parse().unwrap(),
        peer: "8.8.8.8:5000".parse().unwrap(),
        nonce: String::new(),
        out: vec![0u8; 70_000],
    };
    let mut client = Client::new(
        Config::new(turnpike_client::Transport::Udp, Some(alice())),
        [5; 32],
    );
    let now = fixture.now;
    let allocate = client.allocate(now, Allocate::default());
    drive(&mut fixture, &mut client, allocate);
    let bind = client.channel_bind(now, 0x4000, fixture.peer);
    drive(&mut fixture, &mut client, bind);
    fixture.nonce = client
        .signer()
        .expect("signed after the 401")
        .nonce()
        .to_owned();
    fixture
}
