//! The HTTP management API of the real daemon (`--api-listen 127.0.0.1:0`, address from the
//! ready line's `api` field), with plain HTTP/1.1 requests over a socket: credentials, ice,
//! tokens, parameters, CORS, metrics and health; and the credentials it hands out used by
//! `turnutils_uclient` (accepted while valid, refused once expired), with `/metrics`
//! counting the traffic. turnpike-specific: coturn has no such API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{rest_password, unix_now, CmdOutput, Server, SECRET};
use crate::uclient::{assert_refused, run_uclient, uclient_sent_and_lost};

const TOKEN: &str = "integration-api-token";
const ORIGIN: &str = "https://app.example.com";
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Workers publish their counters a few times a second.
const METRICS_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no `error` string: {self:?}"))
            .to_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; the response is read to end of stream.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    http_with_body(addr, method, path, headers, "")
}

/// [`http`] with a body (and its Content-Length when not empty).
pub fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the API at {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the response: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: incomplete response {raw:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    Reply {
        status,
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect(),
        body: body.to_owned(),
    }
}

fn api_addr(server: &Server) -> SocketAddr {
    server.api.unwrap_or_else(|| {
        panic!(
            "the ready line has no `api` address (is the API wired into `turnpike run`?): {}",
            server.ready
        )
    })
}

fn get(server: &Server, path: &str) -> Reply {
    http(api_addr(server), "GET", path, &[])
}

fn get_with_token(server: &Server, path: &str) -> Reply {
    let auth = format!("Bearer {TOKEN}");
    http(api_addr(server), "GET", path, &[("Authorization", &auth)])
}

/// The value of the sample line `name` (including labels), if present.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls `/metrics` until `done` holds (workers publish periodically), returning the text.
fn wait_for_metrics(server: &Server, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + METRICS_WAIT;
    loop {
        let reply = get(server, "/metrics");
        assert_eq!(reply.status, 200, "{reply:?}");
        if done(&reply.body) || Instant::now() > deadline {
            return reply.body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `turnutils_uclient -u USERNAME -w PASSWORD -y -n 100 -m 2 -l 170` against the server.
fn uclient(server: &Server, username: &str, password: &str) -> CmdOutput {
    let port = server.port().to_string();
    let host = server.udp.ip().to_string();
    run_uclient(
        None,
        &[
            "-u", username, "-w", password, "-y", "-n", "100", "-m", "2", "-l", "170", "-p", &port,
            &host,
        ],
        UCLIENT_TIMEOUT,
    )
}

#[test]
fn api_endpoints_over_http() {
    let server = Server::start(&[
        "--api-listen",
        "127.0.0.1:0",
        "--api-token",
        TOKEN,
        "--api-cors-origin",
        ORIGIN,
    ]);
    let api = api_addr(&server);
    assert!(api.ip().is_loopback() && api.port() != 0, "{api}");

    // Valid request.
    let reply = get_with_token(&server, "/api/v1/credentials?service=turn&username=alice");
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    let username = body["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry.abs_diff(unix_now() + 86_400) <= 5, "{body}");
    assert_eq!(body["password"], rest_password(SECRET, username));
    assert_eq!(body["ttl"], 86_400);
    let port = server.port();
    assert_eq!(
        body["uris"],
        serde_json::json!([
            format!("stun:127.0.0.1:{port}"),
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp"),
        ]),
    );
    let body = get_with_token(&server, "/api/v1/ice?username=bob&ttl=300").json();
    assert_eq!(body["ttl"], 300);
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers[0]["urls"][0], format!("stun:127.0.0.1:{port}"));
    let turn_user = servers[1]["username"].as_str().unwrap();
    assert!(turn_user.ends_with(":bob"), "{body}");
    assert_eq!(servers[1]["credential"], rest_password(SECRET, turn_user));

    // Missing and bad tokens.
    let reply = get(&server, "/api/v1/credentials?username=alice");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert!(!reply.error().is_empty());
    let reply = http(
        api,
        "GET",
        "/api/v1/ice?username=alice",
        &[("Authorization", "Bearer not-the-token")],
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(get(&server, "/metrics").status, 401);

    // Bad parameters name the parameter.
    for (path, param) in [
        ("/api/v1/credentials?service=turn", "username"),
        ("/api/v1/credentials?username=a:b", "username"),
        ("/api/v1/credentials?username=alice&ttl=0", "ttl"),
        ("/api/v1/credentials?username=alice&ttl=tomorrow", "ttl"),
        ("/api/v1/credentials?username=alice&service=stun", "service"),
        ("/api/v1/ice", "username"),
    ] {
        let reply = get_with_token(&server, path);
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert!(
            reply.error().contains(&format!("`{param}`")),
            "{path}: {reply:?}"
        );
    }

    // CORS preflight: no token needed; allowed origin only.
    let preflight = |origin: &str| {
        http(
            api,
            "OPTIONS",
            "/api/v1/ice?username=alice",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        )
    };
    let reply = preflight(ORIGIN);
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(reply.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    let reply = preflight("https://evil.example.com");
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let auth = format!("Bearer {TOKEN}");
    let reply = http(
        api,
        "GET",
        "/api/v1/ice?username=alice",
        &[("Origin", ORIGIN), ("Authorization", &auth)],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), Some(ORIGIN));

    // Metrics, health, unknown paths.
    let reply = get_with_token(&server, "/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    for name in [
        "turnpike_allocations_active{transport=\"udp\"}",
        "turnpike_allocations_total{transport=\"tcp\"}",
        "turnpike_allocations_ended_total{reason=\"expired\"}",
        "turnpike_permissions_active",
        "turnpike_channels_active",
        "turnpike_relayed_packets_total{direction=\"to_peer\"}",
        "turnpike_relayed_bytes_total{direction=\"to_client\"}",
        "turnpike_binding_requests_total",
        "turnpike_error_responses_total{code=\"401\"}",
        "turnpike_auth_failures_total{reason=\"stale_nonce\"}",
        "turnpike_denied_peers_total",
        "turnpike_quota_rejections_total{scope=\"user\"}",
        "turnpike_malformed_packets_total",
        "turnpike_dropped_packets_total{reason=\"bandwidth\"}",
        "turnpike_send_errors_total",
    ] {
        assert!(
            sample(&reply.body, name).is_some(),
            "no {name} in:\n{}",
            reply.body
        );
    }
    assert!(
        reply.body.contains("turnpike_build_info{version=\""),
        "{}",
        reply.body
    );
    let deadline = Instant::now() + METRICS_WAIT;
    let health = loop {
        let reply = get(&server, "/healthz");
        if reply.status == 200 || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "ok"),
        "{health:?}"
    );
    let reply = get(&server, "/nope");
    assert_eq!(reply.status, 404);
    assert!(!reply.error().is_empty());
    let reply = http(api, "DELETE", "/healthz", &[]);
    assert_eq!(reply.status, 405, "{reply:?}");
}

#[test]
fn api_credentials_relay_traffic_and_metrics_count_it() {
    let server = Server::start(&["--api-listen", "127.0.0.1:0"]);
    // Loopback and no token configured: open.
    let reply = get(&server, "/api/v1/credentials?service=turn&username=uclient");
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    let username = body["username"].as_str().unwrap();
    let password = body["password"].as_str().unwrap();

    let out = uclient(&server, username, password);
    assert!(out.success(), "uclient with API credentials failed:\n{out}");
    let (sent, lost) = uclient_sent_and_lost(&out.stdout)
        .unwrap_or_else(|| panic!("no uclient summary (tot_send_msgs / Total lost):\n{out}"));
    assert!(sent >= 200, "uclient sent only {sent} messages:\n{out}");
    assert_eq!(lost, 0, "uclient lost packets:\n{out}");

    const TO_PEER: &str = "turnpike_relayed_packets_total{direction=\"to_peer\"}";
    const TO_CLIENT: &str = "turnpike_relayed_packets_total{direction=\"to_client\"}";
    const UDP_ALLOCATIONS: &str = "turnpike_allocations_total{transport=\"udp\"}";
    // Each worker publishes on its own schedule: wait until all three have caught up.
    let metrics = wait_for_metrics(&server, |m| {
        sample(m, TO_PEER).is_some_and(|n| n >= sent as f64)
            && sample(m, TO_CLIENT).is_some_and(|n| n >= sent as f64)
            && sample(m, UDP_ALLOCATIONS).is_some_and(|n| n >= 2.0)
    });
    let to_peer = sample(&metrics, TO_PEER).unwrap_or(0.0);
    assert!(
        to_peer >= sent as f64,
        "{TO_PEER} = {to_peer} after uclient sent {sent}:\n{metrics}"
    );
    let allocations = sample(&metrics, UDP_ALLOCATIONS).unwrap_or(0.0);
    assert!(
        allocations >= 2.0,
        "{UDP_ALLOCATIONS} = {allocations}:\n{metrics}"
    );
    let to_client = sample(&metrics, TO_CLIENT).unwrap_or(0.0);
    assert!(
        to_client >= sent as f64,
        "{TO_CLIENT} = {to_client} after uclient received {sent}:\n{metrics}"
    );
}

#[test]
fn api_credentials_are_refused_after_expiry() {
    let server = Server::start(&["--api-listen", "127.0.0.1:0"]);
    // The shortest credential the API hands out: valid for one second.
    let body = get(
        &server,
        "/api/v1/credentials?service=turn&username=brief&ttl=1",
    )
    .json();
    assert_eq!(body["ttl"], 1, "{body}");
    let username = body["username"].as_str().unwrap().to_owned();
    let password = body["password"].as_str().unwrap().to_owned();
    let expiry: u64 = username.split_once(':').unwrap().0.parse().unwrap();
    while unix_now() <= expiry + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_refused(
        &uclient(&server, &username, &password),
        "uclient with an expired API credential",
        "Cannot complete Allocation",
    );

    // One that expired a minute ago, signed with the server's secret.
    let username = format!("{}:late", unix_now() - 60);
    let password = rest_password(SECRET, &username);
    assert_refused(
        &uclient(&server, &username, &password),
        "uclient with a credential expired a minute ago",
        "Cannot complete Allocation",
    );
}
