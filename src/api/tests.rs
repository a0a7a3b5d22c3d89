//! The API over a real socket: `spawn` on 127.0.0.1:0 and plain HTTP/1.1 requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Secret;
use crate::proto::auth::rest_password;
use crate::telemetry::WorkerReport;

const SECRET: &str = "api-test-secret";

struct Api {
    addr: SocketAddr,
    ctx: Arc<ApiContext>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn test_config() -> Config {
    let mut config = Config::default();
    config.auth.secrets = vec![Secret::from(SECRET), Secret::from("older")];
    config
}

fn start(config: Config) -> Api {
    start_on("127.0.0.1:0", config)
}

/// Serves on `bind`; requests go to 127.0.0.1 on the bound port.
fn start_on(bind: &str, config: Config) -> Api {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr().unwrap().port()));
    let ctx = Arc::new(ApiContext {
        config: RwLock::new(Arc::new(config)),
        telemetry: Arc::new(Telemetry::new(1)),
        udp: vec!["127.0.0.1:3478".parse().unwrap()],
        tls: Vec::new(),
        relay_ips: vec!["192.0.2.7".parse().unwrap()],
        drain: None,
    });
    let (stop, rx) = tokio::sync::watch::channel(false);
    let thread = spawn(listener, ctx.clone(), rx).unwrap();
    Api {
        addr,
        ctx,
        stop,
        thread: Some(thread),
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("complete response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    Reply {
        status: status.parse().unwrap(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
            .collect(),
        body: body.to_owned(),
    }
}

fn get(api: &Api, path: &str) -> Reply {
    request(api.addr, "GET", path, &[])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn credentials_are_signed_with_the_first_secret() {
    let api = start(test_config());
    let reply = get(&api, "/api/v1/credentials?service=turn&username=alice");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    let username = body["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry.abs_diff(now() + 86_400) <= 5, "{expiry}");
    assert_eq!(body["password"], rest_password(SECRET, username));
    assert_eq!(body["ttl"], 86_400);
    assert_eq!(
        body["uris"],
        serde_json::json!([
            "stun:192.0.2.7:3478",
            "turn:192.0.2.7:3478?transport=udp",
            "turn:192.0.2.7:3478?transport=tcp",
        ])
    );
    // service may be left out; ttl is capped at api.max_ttl_secs.
    let body = get(&api, "/api/v1/credentials?username=bob&ttl=60").json();
    assert_eq!(body["ttl"], 60);
    let body = get(&api, "/api/v1/credentials?username=bob&ttl=999999999").json();
    assert_eq!(body["ttl"], 86_400);
    // Percent-encoded names are decoded.
    let body = get(&api, "/api/v1/credentials?username=b%C3%B6b%20x").json();
    assert!(body["username"].as_str().unwrap().ends_with(":böb x"));
}

#[test]
fn bad_parameters_are_400_naming_the_parameter() {
    let api = start(test_config());
    let long = format!("/api/v1/credentials?username={}", "a".repeat(129));
    for (path, names) in [
        ("/api/v1/credentials", "username"),
        ("/api/v1/credentials?service=turn", "username"),
        ("/api/v1/credentials?username=", "username"),
        (long.as_str(), "username"),
        ("/api/v1/credentials?username=a:b", "username"),
        ("/api/v1/credentials?username=a%0Ab", "username"),
        ("/api/v1/credentials?username=a&ttl=0", "ttl"),
        ("/api/v1/credentials?username=a&ttl=-5", "ttl"),
        ("/api/v1/credentials?username=a&ttl=soon", "ttl"),
        ("/api/v1/credentials?username=a&service=stun", "service"),
        ("/api/v1/credentials?username=a&username=b", "username"),
        ("/api/v1/ice", "username"),
        ("/api/v1/ice?username=a&ttl=1.5", "ttl"),
    ] {
        let reply = get(&api, path);
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert!(
            reply.error().contains(&format!("`{names}`")),
            "{path}: {reply:?}"
        );
    }
}

#[test]
fn ice_servers_drop_into_rtc_peer_connection() {
    let mut config = test_config();
    config.api.uris = vec![
        "stun:turn.example.com".into(),
        "turn:turn.example.com?transport=udp".into(),
        "turns:turn.example.com:443?transport=tcp".into(),
        "STUN:upper.example.com".into(),
    ];
    let api = start(config);
    let body = get(&api, "/api/v1/ice?username=carol&ttl=600").json();
    assert_eq!(body["ttl"], 600);
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{body}");
    assert_eq!(
        servers[0],
        serde_json::json!({"urls": ["stun:turn.example.com", "STUN:upper.example.com"]}),
        "STUN servers, whatever the scheme's case, carry no credential"
    );
    assert_eq!(
        servers[1]["urls"],
        serde_json::json!([
            "turn:turn.example.com?transport=udp",
            "turns:turn.example.com:443?transport=tcp"
        ])
    );
    let username = servers[1]["username"].as_str().unwrap();
    assert!(username.ends_with(":carol"));
    assert_eq!(servers[1]["credential"], rest_password(SECRET, username));
}

#[test]
fn default_uris_prefer_external_then_relay_then_listen() {
    let udp: Vec<SocketAddr> = vec![
        "[::]:3478".parse().unwrap(),
        "0.0.0.0:3478".parse().unwrap(),
    ];
    // The bound TLS addresses: a listener configured with port 0 shows its real port.
    let tls: Vec<SocketAddr> = vec![
        "0.0.0.0:5349".parse().unwrap(),
        "127.0.0.1:40123".parse().unwrap(),
        "[::]:5349".parse().unwrap(),
    ];
    let mut config = Config::default();
    config.relay.external_ip = Some("2001:db8::5".parse().unwrap());
    let relay = ["203.0.113.9".parse().unwrap()];
    assert_eq!(
        default_uris(&config, &udp, &tls, &relay),
        [
            "stun:[2001:db8::5]:3478",
            "turn:[2001:db8::5]:3478?transport=udp",
            "turn:[2001:db8::5]:3478?transport=tcp",
            "turns:[2001:db8::5]:5349?transport=tcp",
            "turns:[2001:db8::5]:40123?transport=tcp",
        ]
    );
    // A mapping for the first relay IP wins over the catch-all external IP.
    config.relay.external_ip_map = vec![
        (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
        ),
        (
            "203.0.113.9".parse().unwrap(),
            "198.51.100.9".parse().unwrap(),
        ),
    ];
    assert_eq!(
        default_uris(&config, &udp, &[], &relay)[0],
        "stun:198.51.100.9:3478"
    );
    config.relay.external_ip_map.clear();
    config.relay.external_ip = None;
    assert_eq!(
        default_uris(&config, &udp, &[], &relay)[0],
        "stun:203.0.113.9:3478"
    );
    let listen = ["127.0.0.2:4000".parse().unwrap()];
    assert_eq!(
        default_uris(&config, &listen, &[], &[])[1],
        "turn:127.0.0.2:4000?transport=udp"
    );
    assert!(default_uris(&config, &[], &[], &[]).is_empty());
}

#[test]
fn tokens_are_required_once_configured_and_reload() {
    let mut config = test_config();
    config.api.tokens = vec![Secret::from("tok-1"), Secret::from("tok-2")];
    let api = start(config);
    let path = "/api/v1/credentials?username=a";
    let reply = get(&api, path);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert!(reply.error().contains("bearer token"), "{reply:?}");
    let reply = request(
        api.addr,
        "GET",
        path,
        &[("Authorization", "Basic dG9rLTE=")],
    );
    assert_eq!(reply.status, 401, "{reply:?}");
    for bad in ["Bearer tok-3", "Bearer tok-", "Bearer tok-11"] {
        let reply = request(api.addr, "GET", path, &[("Authorization", bad)]);
        assert_eq!(reply.status, 403, "{bad}: {reply:?}");
    }
    for good in ["Bearer tok-1", "bearer tok-2"] {
        let reply = request(api.addr, "GET", path, &[("Authorization", good)]);
        assert_eq!(reply.status, 200, "{good}: {reply:?}");
    }
    assert_eq!(get(&api, "/metrics").status, 401);
    assert_eq!(
        get(&api, "/healthz").status,
        503,
        "no token, no worker report"
    );

    // A reload replaces the tokens.
    let mut config = test_config();
    config.api.tokens = vec![Secret::from("tok-new")];
    *api.ctx.config.write().unwrap() = Arc::new(config);
    let reply = request(api.addr, "GET", path, &[("Authorization", "Bearer tok-1")]);
    assert_eq!(reply.status, 403);
    let reply = request(
        api.addr,
        "GET",
        path,
        &[("Authorization", "Bearer tok-new")],
    );
    assert_eq!(reply.status, 200);
}

#[test]
fn beyond_loopback_tokens_are_mandatory() {
    let mut config = test_config();
    let headers = HeaderMap::new();
    assert!(check_token(&config, true, &headers).is_ok());
    let e = check_token(&config, false, &headers).unwrap_err();
    assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        e.reason,
        "api.tokens must be set when api.listen is not loopback"
    );
    config.api.tokens = vec![Secret::from("t")];
    let e = check_token(&config, false, &headers).unwrap_err();
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
    assert!(check_token(&config, false, &headers).is_ok());

    assert!(is_loopback("127.1.2.3".parse().unwrap()));
    assert!(is_loopback("::1".parse().unwrap()));
    assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!is_loopback("0.0.0.0".parse().unwrap()));
    assert!(!is_loopback("192.0.2.1".parse().unwrap()));
}

#[test]
fn listener_beyond_loopback_without_tokens_refuses() {
    let api = start_on("0.0.0.0:0", test_config());
    for path in [
        "/api/v1/credentials?username=a",
        "/api/v1/ice?username=a",
        "/metrics",
    ] {
        let reply = get(&api, path);
        assert_eq!(reply.status, 503, "{path}: {reply:?}");
        assert_eq!(
            reply.error(),
            "api.tokens must be set when api.listen is not loopback"
        );
    }
    // Health checks stay open (they reveal nothing).
    assert_eq!(get(&api, "/healthz").status, 503, "no worker report yet");
    api.ctx
        .telemetry
        .publish(0, &WorkerReport::default(), Instant::now());
    assert_eq!(get(&api, "/healthz").status, 200);
}

#[test]
fn no_secret_is_503() {
    let api = start(Config::default());
    let reply = get(&api, "/api/v1/credentials?username=a");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(reply.error().contains("auth.secrets"));
}

#[test]
fn cors_allow_list() {
    let mut config = test_config();
    config.api.cors_origins = vec!["https://app.example.com".into()];
    config.api.tokens = vec![Secret::from("tok")];
    let api = start(config);
    let preflight = |origin: &str| {
        request(
            api.addr,
            "OPTIONS",
            "/api/v1/ice?username=a",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        )
    };
    let reply = preflight("https://app.example.com");
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(reply.header("access-control-allow-methods"), Some("GET"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert_eq!(reply.header("vary"), Some("Origin"));

    let reply = preflight("https://evil.example.com");
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply
        .headers
        .iter()
        .all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-")));

    // The real request carries the header, errors included, so the page can read them.
    let reply = request(
        api.addr,
        "GET",
        "/api/v1/ice?username=a",
        &[
            ("Origin", "https://app.example.com"),
            ("Authorization", "Bearer tok"),
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let reply = request(
        api.addr,
        "GET",
        "/api/v1/ice?username=a",
        &[("Origin", "https://app.example.com")],
    );
    assert_eq!(reply.status, 401);
    assert!(reply.header("access-control-allow-origin").is_some());
    let reply = request(
        api.addr,
        "GET",
        "/api/v1/ice?username=a",
        &[
            ("Origin", "https://other.example.com"),
            ("Authorization", "Bearer tok"),
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[test]
fn metrics_and_health() {
    let api = start(test_config());
    assert_eq!(get(&api, "/healthz").status, 503);
    let mut report = WorkerReport::default();
    report.stats.to_peer_packets = 42;
    report.stats.allocations_created = [3, 0, 0];
    report.stats.errors.record(401);
    report.gauges.allocations = [2, 0, 0];
    report.send_errors = 7;
    api.ctx.telemetry.publish(0, &report, Instant::now());
    let reply = get(&api, "/healthz");
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));

    let reply = get(&api, "/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = &reply.body;
    for line in [
        "turnpike_allocations_active{transport=\"udp\"} 2",
        "turnpike_allocations_active{transport=\"tls\"} 0",
        "turnpike_allocations_total{transport=\"udp\"} 3",
        "turnpike_allocations_ended_total{reason=\"expired\"} 0",
        "turnpike_permissions_active 0",
        "turnpike_channels_active 0",
        "turnpike_relayed_packets_total{direction=\"to_peer\"} 42",
        "turnpike_relayed_bytes_total{direction=\"to_client\"} 0",
        "turnpike_binding_requests_total 0",
        "turnpike_error_responses_total{code=\"401\"} 1",
        "turnpike_error_responses_total{code=\"508\"} 0",
        "turnpike_auth_failures_total{reason=\"bad_integrity\"} 0",
        "turnpike_denied_peers_total 0",
        "turnpike_cut_by_reload_total{kind=\"channel\"} 0",
        "turnpike_quota_rejections_total{scope=\"server\"} 0",
        "turnpike_malformed_packets_total 0",
        "turnpike_dropped_packets_total{reason=\"no_permission\"} 0",
        "turnpike_send_errors_total 7",
        &format!(
            "turnpike_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}

#[test]
fn unknown_path_and_wrong_method() {
    let api = start(test_config());
    let reply = get(&api, "/api/v2/credentials");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), "no such endpoint");
    let reply = request(api.addr, "POST", "/api/v1/credentials?username=a", &[]);
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), Some("GET,HEAD"));
    assert_eq!(reply.error(), "method not allowed");
}

#[test]
fn shutdown_stops_the_thread() {
    let api = start(test_config());
    let addr = api.addr;
    drop(api); // Sends the shutdown and joins.
    assert!(TcpStream::connect(addr).is_err());
}
