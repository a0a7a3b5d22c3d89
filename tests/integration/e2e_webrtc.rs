//! The end-to-end WebRTC suite (`tests/e2e/run.sh`, see `tests/e2e/README.md`): peers behind
//! NATs in a lab of network namespaces (`../shared/harness/natlab.sh`, prefix `te`) connect
//! through this crate's `turnpike` binary.
//!
//! * control: symmetric NATs with turnpike as STUN only → ICE fails; cone NATs → connects on
//!   the srflx candidates turnpike reported;
//! * relay: relay-only aiortc pairs over UDP, TCP and TLS, 1 MiB echoed with a SHA-256 check;
//! * a real browser: headless Chromium (playwright-core) with `iceServers` from
//!   `/api/v1/ice`, a file in 16 KiB chunks and the fake camera against an aiortc peer,
//!   checking the hash and inbound-rtp frames decoded; the same restricted to `turns:`;
//! * credential lifecycle: an expired credential allocates nothing (401), a fresh one works;
//! * the "verify a deployment" one-liner (`tests/e2e/verify.sh`);
//! * turnpike's own pages (`--api-test-page`): Chromium loads `/test` and sees relay
//!   candidates; two Chromiums join one room of `/test/call` relay-only, decode each other's
//!   video and move a 1 MiB file with matching SHA-256.
//!
//! One test runs the whole suite (one to two minutes): the cases share one lab and one server.
//! Needs root, `../shared/harness/setup.sh`, Debian's `chromium`, Node.js and `npm ci` in
//! `tests/e2e` (all done by `.ci/run`); a missing tool fails the test with a hint. The lab is
//! removed by `run.sh` itself (trap) and once more by a drop guard here, so a timeout or a
//! panic never leaves namespaces behind. turnpike-specific (the HTTP API): not run against
//! coturn.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{against_coturn, harness_dir, harness_home, require_tool, run_with_timeout};

/// The whole suite normally takes about a minute; this is the hard limit.
const SUITE_TIMEOUT: Duration = Duration::from_secs(360);

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

fn run_sh(args: &[&str], timeout: Duration) -> crate::harness::CmdOutput {
    run_with_timeout(
        Command::new("bash")
            .arg(e2e_dir().join("run.sh"))
            .args(args)
            .env("TURNPIKE_BIN", env!("CARGO_BIN_EXE_turnpike"))
            .env("TURNPIKE_HARNESS_DIR", harness_dir())
            .env("HARNESS_HOME", harness_home()),
        timeout,
    )
}

/// Removes the `te` lab when the test ends, however it ends (`run.sh --down` waits for the
/// suite's lock, then runs `natlab.sh down`, which also stops processes left inside).
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = run_sh(&["--down"], Duration::from_secs(60));
        if !out.success() {
            eprintln!("e2e lab cleanup failed:\n{out}");
        }
    }
}

#[test]
fn webrtc_peers_and_chromium_behind_nats_connect_through_turnpike() {
    assert!(
        !against_coturn(),
        "the e2e suite is turnpike-specific (it needs /api/v1/ice) and cannot run with \
         TURNPIKE_TEST_AGAINST=coturn"
    );
    for tool in ["chromium", "node", "nft", "openssl", "flock"] {
        require_tool(tool);
    }
    assert!(
        e2e_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in tests/e2e (.ci/run does)"
    );
    let _lab = LabGuard;
    let out = run_sh(&[], SUITE_TIMEOUT);
    // The per-case lines (selected candidate pair, transfer time) for `--nocapture` runs.
    println!("{}", out.stdout);
    assert!(out.success(), "e2e suite failed:\n{out}");
    assert!(
        out.stdout.contains("e2e: 11 passed, 0 failed"),
        "e2e suite did not run every case:\n{out}"
    );
}
