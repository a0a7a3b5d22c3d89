//! `turnpike probe` against a running turnpike: UDP, TCP and TLS pass with relayed addresses
//! and no loss; a wrong secret, a denied peer, a silent UDP port and a closed TCP port fail
//! with their specific reasons; `--credentials-url` takes URIs and credential from the API.
//!
//! These run turnpike-only flags (`--tls-listen`, two `--listen`s), so they do not run
//! against coturn.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::harness::{
    against_coturn, default_args_without, run_with_timeout, self_signed_cert, CmdOutput, Server,
    REALM, SECRET,
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

fn ready_addrs(server: &Server, key: &str) -> Vec<SocketAddr> {
    server.ready[key]
        .as_array()
        .unwrap_or_else(|| panic!("ready line has no `{key}`: {}", server.ready))
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect()
}

fn probe(args: &[&str]) -> CmdOutput {
    let out = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_turnpike"))
            .arg("probe")
            .args(args),
        PROBE_TIMEOUT,
    );
    eprintln!("{out}");
    out
}

fn json(out: &CmdOutput) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

#[test]
fn probe_passes_over_udp_tcp_and_tls() {
    if against_coturn() {
        return;
    }
    let (_dir, cert, key) = self_signed_cert();
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        // A second server address, for the NAT mapping test.
        "--listen",
        "127.0.0.2:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let udp = ready_addrs(&server, "udp");
    let tcp = ready_addrs(&server, "tcp")[0];
    let tls = ready_addrs(&server, "tls")[0];
    assert_eq!(udp.len(), 2, "{}", server.ready);
    let urls = [
        format!("stun:{}", udp[0]),
        format!("stun:{}", udp[1]),
        format!("turn:{}?transport=udp", udp[0]),
        format!("turn:{tcp}?transport=tcp"),
        format!("turns:{tls}?transport=tcp"),
    ];
    let mut args: Vec<&str> = urls.iter().map(String::as_str).collect();
    args.extend(["--secret", SECRET, "--ca-file", &cert, "--json"]);
    let out = probe(&args);
    assert!(out.success(), "probe failed:\n{out}");
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report:#}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), urls.len());
    for (result, (url, transport)) in results
        .iter()
        .zip(urls.iter().zip(["udp", "udp", "udp", "tcp", "tls"]))
    {
        assert_eq!(result["url"], url.as_str());
        assert_eq!(result["transport"], transport, "{result:#}");
        assert_eq!(result["verdict"], "OK", "{result:#}");
        let reflexive: SocketAddr = result["reflexive"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            reflexive,
            result["local"].as_str().unwrap().parse().unwrap()
        );
        if url.starts_with("turn") {
            let relayed: SocketAddr = result["relayed"].as_str().unwrap().parse().unwrap();
            assert!(server.relay_ips.contains(&relayed.ip()), "{result:#}");
            assert_eq!(result["realm"], REALM);
            assert_eq!(result["loss"]["sent"], 20, "{result:#}");
            assert_eq!(result["loss"]["client_received"], 20, "{result:#}");
            assert_eq!(result["loss"]["percent"], 0.0, "{result:#}");
            assert_eq!(result["relay_rtt_ms"]["samples"], 20, "{result:#}");
        }
    }
    assert_eq!(result_field(&report, "tls_verified"), Some(true));
    // Two server addresses answered from one socket with its own address: no NAT.
    assert_eq!(report["nat"]["mapping"], "no-nat", "{report:#}");
    assert_eq!(report["nat"]["mappings"].as_array().unwrap().len(), 2);

    // The table: one row per URL with its relayed address and verdict.
    let out = probe(&[
        &format!("turn:{tcp}?transport=tcp"),
        &format!("turns:{tls}"),
        "--secret",
        SECRET,
        "--ca-file",
        &cert,
    ]);
    assert!(out.success(), "probe failed:\n{out}");
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert!(rows[0].starts_with("URL"), "{out}");
    for row in &rows[1..3] {
        assert!(row.contains("127.0.0.1:"), "{out}");
        assert!(row.contains("0% (20/20 out, 20/20 back)"), "{out}");
        assert!(row.ends_with("OK"), "{out}");
    }
    assert!(out.stdout.contains("all 2 URLs OK"), "{out}");
}

fn result_field(report: &serde_json::Value, key: &str) -> Option<bool> {
    report["results"]
        .as_array()?
        .iter()
        .find_map(|r| r[key].as_bool())
}

#[test]
fn probe_takes_uris_and_credential_from_the_api() {
    if against_coturn() {
        return;
    }
    let server = Server::start(&[]);
    let api = server.api.expect("ready line names the api address");
    let out = probe(&["--credentials-url", &format!("http://{api}"), "--json"]);
    assert!(out.success(), "probe failed:\n{out}");
    let report = json(&out);
    let urls: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["url"].as_str().unwrap())
        .collect();
    let udp = server.udp;
    assert_eq!(
        urls,
        [
            format!("stun:{udp}"),
            format!("turn:{udp}?transport=udp"),
            format!("turn:{udp}?transport=tcp")
        ]
    );
}

#[test]
fn probe_with_a_wrong_secret_fails_with_the_realm() {
    if against_coturn() {
        return;
    }
    let server = Server::start(&[]);
    let out = probe(&[
        &format!("turn:{}", server.udp),
        "--secret",
        "not-the-secret",
    ]);
    assert_eq!(out.code(), Some(1), "{out}");
    let expected = format!("FAIL: 401 Unauthorized (realm \"{REALM}\"): wrong credentials?");
    assert!(
        out.stdout.contains(&expected),
        "expected `{expected}`:\n{out}"
    );
}

#[test]
fn probe_reports_a_denied_peer() {
    if against_coturn() {
        return;
    }
    // Without --allow-peer, loopback peers are denied: the probe's own socket is refused.
    // 127.0.0.1 is also the relay IP, a peer on relay ports (relay-to-relay), so the relay
    // ports sit below the ephemeral range the probe's socket port comes from.
    let mut args = default_args_without(&["--allow-peer"]);
    args.extend(["--min-port", "20000", "--max-port", "20999"].map(String::from));
    let server = Server::start_raw(&args);
    let out = probe(&[
        &format!("turn:{}", server.udp),
        "--secret",
        SECRET,
        "--json",
    ]);
    assert_eq!(out.code(), Some(1), "{out}");
    let report = json(&out);
    assert_eq!(
        report["results"][0]["error"],
        "403 Forbidden: server refuses to relay to this client's address (peer denied)",
        "{report:#}"
    );
    assert!(report["results"][0]["relayed"].is_string(), "{report:#}");
}

#[test]
fn probe_of_closed_ports_fails_with_timeout_and_refusal() {
    // Nothing listening on these (bound to find free ports, then closed).
    let udp = {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let tcp = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let out = probe(&[
        &format!("turn:{udp}?transport=udp"),
        &format!("turn:{tcp}?transport=tcp"),
        "--secret",
        SECRET,
        "--timeout",
        "1",
    ]);
    assert_eq!(out.code(), Some(1), "{out}");
    let timeout = format!("FAIL: timeout (no answer from {udp} in 1s)");
    assert!(
        out.stdout.contains(&timeout),
        "expected `{timeout}`:\n{out}"
    );
    let refused = format!("FAIL: connection refused ({tcp}");
    assert!(
        out.stdout.contains(&refused),
        "expected `{refused}`:\n{out}"
    );
    assert!(out.stdout.contains("2 of 2 URLs FAILED"), "{out}");
}

/// `GET path` on the API: status line code and body.
fn http_get(api: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {api}\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

#[test]
fn test_page_is_served_by_the_daemon_only_when_enabled() {
    if against_coturn() {
        return;
    }
    let off = Server::start(&[]);
    let (status, _) = http_get(off.api.unwrap(), "/test");
    assert_eq!(status, 404);
    let on = Server::start(&["--api-test-page"]);
    let api = on.api.unwrap();
    let (status, page) = http_get(api, "/test");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("turnpike ICE test"), "{page}");
    let (status, script) = http_get(api, "/test/testpage.js");
    assert_eq!(status, 200);
    assert!(script.contains("/api/v1/ice?username=testpage"));
    // The page's own credential request works under the same rules.
    let (status, ice) = http_get(api, "/api/v1/ice?username=testpage");
    assert_eq!(status, 200, "{ice}");
    assert!(ice.contains("testpage"), "{ice}");
}
