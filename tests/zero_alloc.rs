//! The relay fast path allocates nothing: ChannelData from a client to a peer and from a peer
//! back to the client go through the sans-IO core without touching the heap. A counting global
//! allocator (this test binary's own) proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use turnpike::proto::{ClientAction, PeerAction};

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
