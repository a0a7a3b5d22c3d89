//! The relay fast path allocates nothing: ChannelData from a client to a peer and from a peer
//! back to the client go through the sans-IO core without touching the heap, and neither does
//! the client's side of it (what the load generator does per packet). A counting global
//! allocator (this test binary's own) proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use turnpike::proto::{ClientAction, PeerAction};
use turnpike_client::{write_channel_data, Client, Config, Received, Transport};

#[path = "common/core_fixture.rs"]
#[allow(dead_code)]
mod fixture;

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

#[test]
fn channel_data_both_ways_allocates_nothing() {
    let fixture::Fixture {
        mut server,
        now,
        tuple,
        relay,
        peer,
        mut out,
        ..
    } = fixture::with_channel();
    let mut to_peer = vec![0x40, 0x00, 0x00, 200];
    to_peer.resize(204, 0xAB);
    let mut from_peer = vec![0u8; 4 + 200];
    let before = allocations();
    for i in 0..10_000u32 {
        let at = now + Duration::from_micros(u64::from(i));
        match server.handle_client(at, fixture::UNIX, tuple, &to_peer, &mut out) {
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

/// The client's data path: writing ChannelData into a buffer, and reading relayed ChannelData
/// and Data indications in place (`Client::handle_input`). Only the client's calls are
/// counted; the server's Data indication path is not part of this claim.
#[test]
fn the_clients_data_path_allocates_nothing() {
    let fixture::Fixture {
        mut server,
        now,
        tuple,
        relay,
        peer,
        mut out,
        ..
    } = fixture::with_channel();
    // The same IP, so the permission covers it, but no channel: Data indications.
    let other = SocketAddr::new(peer.ip(), peer.port() + 1);
    let mut client = Client::new(Config::new(Transport::Udp, None), [1; 32]);
    let payload = [0xABu8; 200];
    let mut frame = [0u8; 256];
    let mut from_peer = vec![0u8; 4 + 200];
    let mut during = 0;
    for i in 0..10_000u32 {
        let at = now + Duration::from_micros(u64::from(i));
        let before = allocations();
        let len = write_channel_data(0x4000, &payload, false, &mut frame).unwrap();
        during += allocations() - before;
        match server.handle_client(at, fixture::UNIX, tuple, &frame[..len], &mut out) {
            ClientAction::Relay { payload, .. } => assert_eq!(payload.len(), 200),
            other => panic!("not relayed: {other:?}"),
        }
        let Some(PeerAction::ChannelData { len, .. }) =
            server.handle_peer(at, relay, peer, &mut from_peer, 200, &mut out)
        else {
            panic!("no ChannelData for the client")
        };
        let before = allocations();
        let received = client.handle_input(at, &from_peer[..len]);
        during += allocations() - before;
        assert!(matches!(
            received,
            Some(Received::ChannelData { channel: 0x4000, payload }) if payload.len() == 200
        ));
        let Some(PeerAction::DataIndication { len, .. }) =
            server.handle_peer(at, relay, other, &mut from_peer, 200, &mut out)
        else {
            panic!("no Data indication for the client")
        };
        let before = allocations();
        let received = client.handle_input(at, &out[..len]);
        during += allocations() - before;
        assert!(matches!(
            received,
            Some(Received::Data { peer, payload }) if peer == other && payload.len() == 200
        ));
    }
    assert_eq!(
        during, 0,
        "{during} heap allocations in the client for 30,000 packets"
    );
}
