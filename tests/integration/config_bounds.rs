//! Numeric config values are bounded at load (issue 12, defect 5): `check-config`, `run`
//! (file and flags) and SIGHUP reload refuse an out-of-range value and name the key (and
//! line) or flag with the allowed range. Values near u64::MAX used to pass all three and
//! panic a worker on the first Allocate ("overflow when adding duration to instant"),
//! leaving a process that was up but no longer answered.
//!
//! Also: a reload warns about keys that only a restart applies, and check-config and run
//! warn about static users whose names parse as REST usernames.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use turn_types::attribute::Lifetime;

use crate::harness::{
    free_udp_tcp_port, run_with_timeout, stun_binding_answered, temp_dir, CmdOutput, Server,
    TempDir, REALM, SECRET,
};
use crate::stun_client::UdpTurn;

const U64_MAX: &str = "18446744073709551615";
/// u32::MAX + 1: a lifetime this long used to go out truncated in LIFETIME.
const U32_MAX_PLUS_1: &str = "4294967296";
/// A REST expiry in 2100, so the name is not refused merely for having expired.
const FUTURE: u64 = 4_102_444_800;

fn turnpike(args: &[&str]) -> CmdOutput {
    run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike")).args(args),
        Duration::from_secs(20),
    )
}

fn check_config(path: &Path) -> CmdOutput {
    turnpike(&["check-config", path.to_str().unwrap()])
}

/// A file that sets `key = value` in `[section]` on line 3.
fn one_key_file(dir: &TempDir, section: &str, key: &str, value: &str) -> std::path::PathBuf {
    let path = dir.path().join(format!("{section}-{key}.toml"));
    std::fs::write(&path, format!("[{section}]\n# line 2\n{key} = {value}\n")).unwrap();
    path
}

/// Every numeric key with values beyond its bounds (and the types' edges): check-config
/// exits 2 and names the key, its line and (for range errors) the allowed range.
#[test]
fn check_config_rejects_out_of_range_numbers_naming_key_and_line() {
    let dir = temp_dir("bounds");
    // (section, key, bad values, the allowed range as the message states it)
    let table: &[(&str, &str, &[&str], &str)] = &[
        (
            "server",
            "workers",
            &["1025", U64_MAX],
            "0 (one per CPU core) to 1024",
        ),
        (
            "auth",
            "nonce_lifetime_secs",
            &["0", "86401", U64_MAX],
            "1 to 86400 seconds",
        ),
        (
            "auth",
            "credential_ttl_secs",
            &["0", "31536001", U64_MAX],
            "1 to 31536000 seconds",
        ),
        (
            "api",
            "max_ttl_secs",
            &["0", U64_MAX],
            "1 to 31536000 seconds",
        ),
        (
            "api",
            "request_timeout_secs",
            &["0", "3601", U64_MAX],
            "1 to 3600 seconds",
        ),
        ("api", "max_connections", &["0", U64_MAX], "1 to 1000000"),
        (
            "api",
            "max_connections_per_source",
            &["0", U64_MAX],
            "1 to 1000000",
        ),
        ("relay", "min_port", &["0"], "1 to 65535"),
        ("relay", "max_port", &["0"], "1 to 65535"),
        (
            "limits",
            "default_lifetime_secs",
            &["0", U32_MAX_PLUS_1, U64_MAX],
            "1 to 604800 seconds",
        ),
        (
            "limits",
            "max_lifetime_secs",
            &["0", "604801", U32_MAX_PLUS_1, U64_MAX],
            "1 to 604800 seconds",
        ),
        (
            "limits",
            "max_allocations",
            &["0", "1000001", U64_MAX],
            "1 to 1000000",
        ),
        (
            "limits",
            "max_allocations_per_user",
            &["0", U64_MAX],
            "1 to 1000000",
        ),
        (
            "limits",
            "max_permissions_per_allocation",
            &["0", "16385"],
            "1 to 16384",
        ),
        (
            "limits",
            "max_channels_per_allocation",
            &["0", "16385"],
            "1 to 16384",
        ),
        (
            "limits",
            "bandwidth_per_allocation",
            &["1", "999", "12500000001", U64_MAX],
            "0 (unlimited) or 1000 to 12500000000 bytes per second",
        ),
        ("limits", "max_connections", &["0", U64_MAX], "1 to 1000000"),
        (
            "limits",
            "max_challenges_per_sec",
            &["0", "1000001", U64_MAX],
            "1 to 1000000",
        ),
        (
            "limits",
            "max_connections_per_source",
            &["0", U64_MAX],
            "1 to 1000000",
        ),
    ];
    for (section, key, values, range) in table {
        for value in *values {
            let out = check_config(&one_key_file(&dir, section, key, value));
            assert_eq!(
                out.code(),
                Some(2),
                "{section}.{key} = {value} accepted:\n{out}"
            );
            let wanted = format!("{section}.{key} (line 3): must be {range} (got {value})");
            assert!(out.stderr.contains(&wanted), "wanted `{wanted}`:\n{out}");
        }
    }
    // Negative numbers and u16 overflow are type errors, still naming key and line.
    for (section, key, value) in [
        ("limits", "max_lifetime_secs", "-1"),
        ("limits", "max_allocations", "-1"),
        ("server", "workers", "-1"),
        ("relay", "min_port", "-1"),
        ("relay", "max_port", "65536"),
    ] {
        let out = check_config(&one_key_file(&dir, section, key, value));
        assert_eq!(
            out.code(),
            Some(2),
            "{section}.{key} = {value} accepted:\n{out}"
        );
        let wanted = format!("{section}.{key} (line 3):");
        assert!(out.stderr.contains(&wanted), "wanted `{wanted}`:\n{out}");
    }
    // Ranges across two keys.
    let path = dir.path().join("ports.toml");
    std::fs::write(
        &path,
        "[relay]\n# line 2\nmin_port = 60000\nmax_port = 50000\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains("relay.min_port (line 3): must be <= relay.max_port (50000)"),
        "{out}"
    );
    let path = dir.path().join("lifetimes.toml");
    std::fs::write(
        &path,
        "[limits]\n\ndefault_lifetime_secs = 7200\nmax_lifetime_secs = 3600\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains("limits.default_lifetime_secs (line 3): must be <="),
        "{out}"
    );
}

/// The bounds are inclusive: the largest allowed values load.
#[test]
fn check_config_accepts_the_edges_of_every_range() {
    let dir = temp_dir("bounds-edges");
    let path = dir.path().join("edges.toml");
    std::fs::write(
        &path,
        "[server]\nworkers = 1024\n\
         [auth]\nnonce_lifetime_secs = 86400\ncredential_ttl_secs = 31536000\n\
         [api]\nmax_ttl_secs = 31536000\nrequest_timeout_secs = 3600\n\
         max_connections = 1000000\nmax_connections_per_source = 1000000\n\
         [relay]\nmin_port = 1\nmax_port = 65535\n\
         [limits]\ndefault_lifetime_secs = 604800\nmax_lifetime_secs = 604800\n\
         max_allocations = 1000000\nmax_allocations_per_user = 1000000\n\
         max_permissions_per_allocation = 16384\nmax_channels_per_allocation = 16384\n\
         bandwidth_per_allocation = 12500000000\nmax_connections = 1000000\n\
         max_connections_per_source = 1000000\nmax_challenges_per_sec = 1000000\n",
    )
    .unwrap();
    let out = check_config(&path);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("max_lifetime_secs = 604800"), "{out}");
}

/// `api.uris` go to browsers as written, but with a valid host and port: check-config
/// refuses a port out of range or an unbracketed IPv6 address, naming key and line (it used
/// to check the scheme only), and still takes a query it leaves to the browser.
#[test]
fn check_config_refuses_ice_uris_with_a_bad_host_or_port() {
    let dir = temp_dir("bounds-uris");
    for (uri, why) in [
        ("turn:turn.example.com:0", "bad port `0`"),
        ("turn:turn.example.com:65536", "bad port `65536`"),
        ("turn:2001:db8::1", "IPv6 addresses must be in brackets"),
        ("stun:[2001:db8::1", "unclosed `[`"),
    ] {
        let path = one_key_file(&dir, "api", "uris", &format!("[\"{uri}\"]"));
        let out = check_config(&path);
        assert_eq!(out.code(), Some(2), "{uri}: {out}");
        assert!(
            out.stderr
                .contains(&format!("api.uris (line 3): `{uri}`: {why}")),
            "{uri}: {out}"
        );
    }
    let path = one_key_file(
        &dir,
        "api",
        "uris",
        "[\"stun:stun.example.com:3478?transport=udp\", \"turns:[2001:db8::1]\"]",
    );
    let out = check_config(&path);
    assert!(out.success(), "{out}");
}

/// `turnpike run` refuses the same values from a file and from flags, before binding
/// anything. Before the bounds it started and served (and panicked on the first Allocate).
#[test]
fn run_refuses_out_of_range_values_from_file_and_flags() {
    let base = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--auth-secret",
        SECRET,
    ];
    let dir = temp_dir("bounds-run");
    let path = one_key_file(&dir, "limits", "max_lifetime_secs", U64_MAX);
    let mut args = base.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    let out = turnpike(&args);
    assert_eq!(
        out.code(),
        Some(2),
        "started with max_lifetime_secs = u64::MAX:\n{out}"
    );
    assert!(
        out.stderr
            .contains("limits.max_lifetime_secs (line 3): must be 1 to 604800 seconds"),
        "{out}"
    );
    assert!(!out.stdout.contains("\"ready\""), "{out}");

    for (flag, value, range) in [
        ("--max-lifetime-secs", U64_MAX, "1 to 604800 seconds"),
        ("--max-lifetime-secs", U32_MAX_PLUS_1, "1 to 604800 seconds"),
        ("--default-lifetime-secs", "0", "1 to 604800 seconds"),
        ("--nonce-lifetime-secs", U64_MAX, "1 to 86400 seconds"),
        ("--credential-ttl-secs", "0", "1 to 31536000 seconds"),
        ("--api-max-ttl-secs", U64_MAX, "1 to 31536000 seconds"),
        ("--workers", "100000", "0 (one per CPU core) to 1024"),
        ("--min-port", "0", "1 to 65535"),
        ("--max-allocations", "0", "1 to 1000000"),
        ("--max-allocations-per-user", U64_MAX, "1 to 1000000"),
        ("--max-permissions-per-allocation", "0", "1 to 16384"),
        ("--max-channels-per-allocation", "100000", "1 to 16384"),
        (
            "--bandwidth-per-allocation",
            "1",
            "0 (unlimited) or 1000 to 12500000000",
        ),
        ("--max-connections", "0", "1 to 1000000"),
        ("--max-connections-per-source", U64_MAX, "1 to 1000000"),
    ] {
        let mut args = base.to_vec();
        args.extend([flag, value]);
        let out = turnpike(&args);
        assert_eq!(out.code(), Some(2), "started with {flag} {value}:\n{out}");
        let wanted = format!("{flag} {value}: must be {range}");
        assert!(out.stderr.contains(&wanted), "wanted `{wanted}`:\n{out}");
    }
    // A negative number is refused by the flag parser, also before starting.
    let mut args = base.to_vec();
    args.push("--max-lifetime-secs=-1");
    let out = turnpike(&args);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--max-lifetime-secs"), "{out}");
}

fn server_file(listen: &str, limits: &str) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\nrealm = \"{REALM}\"\n\n\
         [auth]\nsecrets = [\"{SECRET}\"]\n\n\
         [relay]\nips = [\"127.0.0.1\"]\nallow_peers = [\"127.0.0.0/8\"]\n\n\
         [limits]\n{limits}"
    )
}

fn signal_hup(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed");
}

/// Waits until the server's log has `count` occurrences of `needle`.
fn wait_for_log(server: &Server, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.stderr_log();
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` (x{count}) in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allocated_lifetime(client: &mut UdpTurn) -> u32 {
    let resp = client.allocate().expect_success("Allocate");
    resp.msg()
        .attribute::<Lifetime>()
        .expect("LIFETIME")
        .seconds()
}

/// SIGHUP with an out-of-range value: the reload is refused and logged naming the key and
/// line, and the server keeps its old values and still answers Allocate. Before the bounds,
/// the reload applied and the next Allocate panicked its worker (no answer).
#[test]
fn reload_with_out_of_range_value_keeps_the_running_config() {
    let dir = temp_dir("bounds-reload");
    let path = dir.path().join("turnpike.toml");
    std::fs::write(
        &path,
        server_file("127.0.0.1:0", "default_lifetime_secs = 700\n"),
    )
    .unwrap();
    let mut server = Server::start_raw(&[
        "--config",
        path.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        allocated_lifetime(&mut UdpTurn::rest(&server, "before")),
        700
    );

    for (limits, key) in [
        (
            format!("default_lifetime_secs = {U64_MAX}\nmax_lifetime_secs = {U64_MAX}\n"),
            "limits.default_lifetime_secs (line 13): must be 1 to 604800 seconds",
        ),
        (
            format!("max_lifetime_secs = {U32_MAX_PLUS_1}\n"),
            "limits.max_lifetime_secs (line 13): must be 1 to 604800 seconds",
        ),
    ] {
        std::fs::write(&path, server_file("127.0.0.1:0", &limits)).unwrap();
        signal_hup(&server);
        let log = wait_for_log(&server, key, 1);
        assert!(
            log.contains("reload failed, keeping the running configuration"),
            "{log}"
        );
        // Still the old default (700 s), and still answering.
        let mut client = UdpTurn::rest(&server, "after");
        assert_eq!(
            allocated_lifetime(&mut client),
            700,
            "{}",
            server.stderr_log()
        );
        assert!(server.is_running());
    }
    assert!(!server.stderr_log().contains("configuration reloaded"));
    assert!(!server.stderr_log().contains("panicked"));
}

/// A reload that changes keys only a restart applies says so for each, and the server keeps
/// serving on its old listener (the new address is not bound).
#[test]
fn reload_warns_about_keys_that_need_a_restart() {
    let dir = temp_dir("bounds-restart");
    let path = dir.path().join("turnpike.toml");
    let first = server_file("127.0.0.1:0", "").replace("[server]\n", "[server]\nworkers = 1\n");
    std::fs::write(&path, &first).unwrap();
    let server = Server::start_raw(&[
        "--config",
        path.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
    ]);
    // An unchanged file warns about nothing.
    signal_hup(&server);
    wait_for_log(&server, "configuration reloaded", 1);
    assert!(
        !server.stderr_log().contains("restart to apply"),
        "{}",
        server.stderr_log()
    );

    let new_port = free_udp_tcp_port();
    let new_listen = format!("127.0.0.1:{new_port}");
    let second = server_file(&new_listen, "max_connections = 500\n")
        .replace("[server]\n", "[server]\nworkers = 2\n");
    std::fs::write(&path, second).unwrap();
    signal_hup(&server);
    let log = wait_for_log(&server, "configuration reloaded", 2);
    for key in ["server.listen", "server.workers", "limits.max_connections"] {
        assert!(
            log.contains(&format!("{key} changed; restart to apply")),
            "no warning for {key}:\n{log}"
        );
    }
    assert!(!log.contains("api.listen changed"), "{log}");
    UdpTurn::rest(&server, "old-listener")
        .allocate()
        .expect_success("Allocate on the old listener after reload");
    assert!(
        !stun_binding_answered(new_listen.parse().unwrap(), Duration::from_millis(300)),
        "the new listen address answers without a restart"
    );
}

/// Static users whose names parse as REST usernames are checked as REST credentials and
/// cannot log in with their password: check-config and run warn, naming each.
#[test]
fn rest_shaped_static_user_names_are_warned_about() {
    let dir = temp_dir("bounds-users");
    let path = dir.path().join("users.toml");
    let prefix = format!("{FUTURE}:bob");
    let suffix = format!("carol:{FUTURE}");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nrealm = \"{REALM}\"\n\
             [auth]\nsecrets = [\"{SECRET}\"]\n\
             [relay]\nips = [\"127.0.0.1\"]\n\
             [auth.users]\n\"{prefix}\" = \"pw1\"\n\"{suffix}\" = \"pw2\"\nalice = \"pw3\"\n"
        ),
    )
    .unwrap();
    let out = check_config(&path);
    assert!(out.success(), "{out}");
    for name in [&prefix, &suffix] {
        let wanted = format!("warning: auth.users: `{name}` parses as a REST username");
        assert!(out.stderr.contains(&wanted), "wanted `{wanted}`:\n{out}");
    }
    assert!(!out.stderr.contains("`alice`"), "{out}");

    let server = Server::start_raw(&[
        "--config",
        path.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
    ]);
    let log = server.stderr_log();
    assert!(
        log.contains(&format!("auth.users: `{prefix}` parses as a REST username")),
        "{log}"
    );
    // What the warning is about: the static password does not work, a plain name's does.
    UdpTurn::new(server.udp, &prefix, "pw1")
        .allocate()
        .expect_error(401, "REST-shaped static user");
    UdpTurn::new(server.udp, "alice", "pw3")
        .allocate()
        .expect_success("plain static user");
}
