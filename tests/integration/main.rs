//! Integration tests: the `turnpike` binary against real, independent clients.
//!
//! * `harness` starts servers (turnpike, or coturn with `TURNPIKE_TEST_AGAINST=coturn`),
//!   computes REST credentials and runs external tools with timeouts.
//! * `real_clients` drives coturn's `turnutils_*` tools and aiortc peers (the harness in
//!   `../shared/harness`, installed by its `setup.sh`).
//! * `webrtc_rs` uses the webrtc-rs `turn`/`stun` client crates.
//! * `abuse` checks quotas, limits and hostile input.
//! * `api_abuse` checks the HTTP API's timeouts and connection caps against hostile clients.
//! * `rfc_auth` checks REST usernames and RFC 8489 password algorithms (issue 12).
//! * `daemon` checks systemd notifications, SIGHUP reload and SIGTERM.
//! * `config_bounds` checks that out-of-range config values are refused at load and reload.
//! * `drivers` attacks the I/O drivers: mixed address families on one worker, the largest
//!   datagrams on every path, peer data that cannot be framed for a stream client.
//! * `rfc_attributes` checks request attributes against RFC 8656/8489 and the peer deny list.
//! * `dashboard` checks the Grafana dashboard against `/metrics`.
//! * `drain` checks `turnpike drain`: new Allocates redirected, existing ones relaying.
//! * `usage` checks the usage records of ended allocations: file, webhook and log sinks.
//! * `nat_and_redirect` checks 300 Try Alternate and relaying behind a 1:1 NAT (netns lab).

mod abuse;
mod api;
mod api_abuse;
mod config_bounds;
mod daemon;
mod dashboard;
mod drain;
mod drivers;
mod e2e_webrtc;
mod hardening;
mod harness;
mod nat_and_redirect;
mod probe;
mod real_clients;
mod rfc_attributes;
mod rfc_auth;
mod sessions;
mod stun_client;
mod systemd_unit;
mod transports;
mod uclient;
mod usage;
mod webrtc_rs;
mod xdp;
