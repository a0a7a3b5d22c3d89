//! Micro-benchmarks of the sans-IO core: STUN parsing, an authenticated request (REST
//! credential, nonce and MESSAGE-INTEGRITY checks, signed answer), and the ChannelData relay
//! path in both directions. `cargo bench --bench core`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use turn_types::message::REFRESH;
use turnpike::proto::wire::parse_stun;
use turnpike::proto::{ClientAction, PeerAction};

#[path = "../tests/common/core_fixture.rs"]
#[allow(dead_code)]
mod fixture;

fn core(c: &mut Criterion) {
    let mut f = fixture::with_channel();
    let refresh = fixture::signed(REFRESH, &f.nonce, |r| {
        r.lifetime(600);
    });

    c.bench_function("parse_stun (signed Refresh)", |b| {
        b.iter(|| parse_stun(black_box(&refresh)).is_ok())
    });
    c.bench_function("authenticated Refresh (verify + signed answer)", |b| {
        b.iter(|| {
            let action = f.server.handle_client(
                f.now,
                fixture::UNIX,
                f.tuple,
                black_box(&refresh),
                &mut f.out,
            );
            assert!(matches!(action, ClientAction::Reply(_)));
        })
    });
    let mut channel_data = vec![0x40, 0x00, 0x00, 200];
    channel_data.resize(204, 0xAB);
    c.bench_function("ChannelData client -> peer (200 B)", |b| {
        b.iter(|| {
            let action = f.server.handle_client(
                f.now,
                fixture::UNIX,
                f.tuple,
                black_box(&channel_data),
                &mut f.out,
            );
            assert!(matches!(action, ClientAction::Relay { .. }));
        })
    });
    let mut from_peer = vec![0u8; 4 + 200];
    c.bench_function("ChannelData peer -> client (200 B)", |b| {
        b.iter(|| {
            let action = f.server.handle_peer(
                f.now,
                f.relay,
                f.peer,
                black_box(&mut from_peer),
                200,
                &mut f.out,
            );
            assert!(matches!(action, Some(PeerAction::ChannelData { .. })));
        })
    });
}

criterion_group!(benches, core);
criterion_main!(benches);
