//! Configuration: the TOML file model, the typed runtime model and the conversion
//! between them.
//!
//! "Parse, don't validate": the file is read once into [`FileConfig`] (serde, every
//! section `deny_unknown_fields`), command-line flags are applied, and the result is
//! converted into [`Config`], whose fields are already `SocketAddr`, `Duration`,
//! `RangeInclusive<u16>`, `IpNet` and [`Secret`]. Nothing downstream re-checks a value.
//!
//! Every error names the key (and, for file errors, the line) or the flag it came from.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use crate::cli::RunArgs;
use crate::ice_uri::IceUri;

/// Separator between expiry and user name in REST usernames: draft-uberti-behave-turn-rest
/// §2.2 builds the username as `"<expiry>:<user>"`.
pub const DEFAULT_SEPARATOR: char = ':';

/// Default lifetime of issued REST credentials: draft-uberti-behave-turn-rest §2.2
/// recommends one day.
pub const DEFAULT_CREDENTIAL_TTL_SECS: u64 = 86_400;

/// Longest `api.request_timeout_secs`: an hour is already far past any real client, and a
/// bound keeps the deadline from overflowing `Instant`.
pub const MAX_API_REQUEST_TIMEOUT_SECS: u64 = 3600;

/// Shown instead of secrets by [`Config::render_effective`] and `Debug`.
const REDACTED: &str = "<redacted>";

// Bounds of the numeric keys, checked at load (file, flags and reload alike) so that no
// value can overflow a timer, truncate an attribute or ask for absurd resources.

const DAY_SECS: u64 = 86_400;
/// Longest allocation lifetime (`limits.default_lifetime_secs`, `max_lifetime_secs`): a
/// week. RFC 8656 §7.2 recommends an hour; past a week a vanished client holds its port and
/// quota longer than anyone wants. Far inside `Instant` and the 32-bit LIFETIME attribute.
pub const MAX_ALLOCATION_LIFETIME_SECS: u64 = 7 * DAY_SECS;
/// Longest nonce lifetime: a day. The nonce is what limits replay of a captured request.
pub const MAX_NONCE_LIFETIME_SECS: u64 = DAY_SECS;
/// Longest credential ttl (`auth.credential_ttl_secs`, `api.max_ttl_secs`): a year; a
/// credential that should never expire is a static user.
pub const MAX_CREDENTIAL_TTL_SECS: u64 = 365 * DAY_SECS;
/// Most worker threads (`server.workers`): each binds its own sockets, and more than a large
/// host has cores only adds threads.
pub const MAX_WORKERS: usize = 1024;
/// Most allocations or TCP/TLS connections, in total or per user or source: each holds a
/// socket, and a million is past what a host's file descriptors allow.
pub const MAX_COUNT: usize = 1_000_000;
/// Most permissions or channels per allocation: the 16,384 channel numbers turnpike accepts
/// (0x4000–0x7FFF); permissions are scanned per packet, so the same bound.
pub const MAX_PER_ALLOCATION: usize = 16_384;
/// `limits.bandwidth_per_allocation` in bytes per second when not 0 (unlimited): below
/// 1,000 not even a voice call fits; 12.5 GB/s is 100 Gbit/s.
pub const BANDWIDTH_RANGE: RangeInclusive<u64> = 1_000..=12_500_000_000;
/// Most usage records waiting per sink (`usage.queue_size`): a million records of about
/// 400 bytes is 400 MB, the most a stalled sink should be allowed to hold.
pub const MAX_USAGE_QUEUE: usize = 1_000_000;
/// Longest `usage.webhook_timeout_secs`: a daemon stopping waits about this long for a dead
/// webhook, and systemd's default stop timeout is 90 s.
pub const MAX_WEBHOOK_TIMEOUT_SECS: u64 = 60;

// ---------------------------------------------------------------------------------
// Runtime model
// ---------------------------------------------------------------------------------

/// A secret string (REST shared secret, static password, API token). `Debug` never shows
/// it; call [`Secret::expose`] where the bytes are really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Secret(secret.to_owned())
    }
}

/// Log output format (`server.log_format`, `--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How the XDP program is attached (`relay.xdp_mode`, `--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// The driver's native XDP where it has one, else the kernel's generic (skb) XDP.
    #[default]
    Auto,
    /// Native XDP only: fail over to userspace if the driver lacks it.
    Driver,
    /// Generic XDP (after the skb is built): works on any interface, saves less.
    Generic,
}

/// The effective configuration, fully parsed. Built by [`Config::load`],
/// [`Config::from_toml_str`] or [`Config::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// UDP and TCP listening addresses.
    pub listen: Vec<SocketAddr>,
    pub realm: String,
    /// SOFTWARE attribute value; `None` omits the attribute.
    pub software: Option<String>,
    /// Worker threads, already resolved (never 0).
    pub workers: usize,
    pub log_format: LogFormat,
    /// Other servers that Allocate requests are redirected to (300 Try Alternate with
    /// ALTERNATE-SERVER, RFC 8489 §10); empty = allocate here. Concrete addresses, no
    /// port 0, no repeats.
    pub alternate_servers: Vec<SocketAddr>,
    /// Where new Allocates are redirected while the instance drains (`turnpike drain`);
    /// entries naming this instance itself are skipped, so one fleet-wide list fits all.
    pub drain_alternate_servers: Vec<SocketAddr>,
    /// REST API shared secrets: the first signs, all verify. May be empty; the runtime
    /// then generates one and warns.
    pub secrets: Vec<Secret>,
    /// Between expiry and user in REST usernames; one non-alphanumeric character.
    pub separator: char,
    pub nonce_lifetime: Duration,
    /// Default ttl of credentials issued by `turnpike credentials` and the HTTP API.
    pub credential_ttl: Duration,
    /// Static long-term users, sorted by name, names unique.
    pub static_users: Vec<(String, Secret)>,
    /// Relay addresses; empty means the runtime picks them.
    pub relay_ips: Vec<IpAddr>,
    /// Public address advertised in XOR-RELAYED-ADDRESS behind a 1:1 NAT.
    pub external_ip: Option<IpAddr>,
    /// Per relay address (private → public) mappings behind a 1:1 NAT; they take
    /// precedence over `external_ip`. Same family on both sides, each private address once.
    pub external_ip_map: Vec<(IpAddr, IpAddr)>,
    /// Relay ports; `start() >= 1` and `start() <= end()`.
    pub port_range: RangeInclusive<u16>,
    /// The interface whose XDP hook relays established channels in the kernel
    /// (src/net/xdp.rs); `None` = userspace only. A valid Linux interface name.
    pub xdp_interface: Option<String>,
    pub xdp_mode: XdpMode,
    /// Peers allowed despite the built-in deny list.
    pub allow_peers: Vec<IpNet>,
    /// Peers denied in addition to the built-in deny list.
    pub deny_peers: Vec<IpNet>,
    /// `0 < default_lifetime <= max_lifetime`.
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    /// Relayed bytes per second per allocation and direction; `None` = unlimited.
    pub bandwidth_per_allocation: Option<u64>,
    /// TCP and TLS client connections on the whole server (>= 1).
    pub max_connections: usize,
    /// TCP and TLS client connections from one source IP (>= 1).
    pub max_connections_per_source: usize,
    /// 401/438 challenges per second for the whole server (>= 1), beside the fixed 100 per
    /// source IP.
    pub max_challenges_per_sec: usize,
    pub api_listen: SocketAddr,
    /// Bearer tokens for the HTTP API; empty = no token required on loopback (and the
    /// API refuses to serve credentials beyond loopback).
    pub api_tokens: Vec<Secret>,
    /// STUN/TURN URIs the API hands out (`stun:`, `stuns:`, `turn:`, `turns:`); empty = the
    /// API derives them from the listening, relay and external addresses.
    pub api_uris: Vec<String>,
    /// Longest ttl the API grants when a client asks for one; `>= credential_ttl`.
    pub api_max_ttl: Duration,
    /// Browser origins (`https://app.example.com`) allowed to call the API (CORS); empty =
    /// no CORS headers.
    pub api_cors_origins: Vec<String>,
    /// Serve the ICE test page at `GET /test` on the API listener.
    pub api_test_page: bool,
    /// Bound on receiving a request head, on a keep-alive connection's idle time, on a
    /// request's handling (body included) and on a stalled response write; `>= 1 s`.
    pub api_request_timeout: Duration,
    /// HTTP API connections in total (>= 1), WebSockets included.
    pub api_max_connections: usize,
    /// HTTP API connections from one source IP (>= 1).
    pub api_max_connections_per_source: usize,
    /// Where revocations are kept across restarts (written on every change, read at start
    /// and on reload); `None` keeps them in memory only.
    pub revocations_file: Option<PathBuf>,
    /// TLS listening addresses; non-empty implies `tls_cert` and `tls_key` are set.
    pub tls_listen: Vec<SocketAddr>,
    /// `tls_cert` and `tls_key` are both set or both unset.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where usage records (one per ended allocation) go (`[usage]`).
    pub usage: UsageConfig,
}

/// The usage record sinks (`[usage]`); see [`crate::usage`].
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// Each record as one info line on the log target `turnpike::usage`.
    pub log: bool,
    /// JSON lines appended here; reopened on SIGHUP (logrotate). The file, or its
    /// directory, was writable when the config was checked.
    pub file: Option<PathBuf>,
    /// `http://` or `https://` URL that batches of records are POSTed to.
    pub webhook_url: Option<String>,
    /// Bound on one webhook request, connection set-up included; `>= 1 s`.
    pub webhook_timeout: Duration,
    /// Records waiting per sink before new ones are dropped (and counted); `>= 1`.
    pub queue_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // RFC 8489 §18.6: 3478 is the default STUN/TURN port over UDP and TCP. All IPv4
            // interfaces so a fresh install answers; add `[::]:3478` for IPv6.
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3478))],
            // Any non-empty string works; REST credentials do not depend on it.
            realm: "turnpike".to_owned(),
            // RFC 8489 §14.14: SOFTWARE is optional; the name without a version tells
            // an operator what answered without helping anyone pick an exploit.
            software: Some("turnpike".to_owned()),
            // One worker per core (DESIGN "Shape"): workers share nothing on the packet path.
            workers: resolve_workers(0),
            // Text for a terminal and journald; JSON is opt-in for log collectors.
            log_format: LogFormat::Text,
            // Redirecting is for draining or spreading load; a lone server allocates itself.
            alternate_servers: Vec::new(),
            // Nowhere: a draining lone server answers new Allocates with 508.
            drain_alternate_servers: Vec::new(),
            // None: `turnpike run` generates one and warns, so the first run works.
            secrets: Vec::new(),
            separator: DEFAULT_SEPARATOR,
            // DESIGN "nonces" (and coturn's `stale-nonce`): 600 s, after which 438 Stale Nonce.
            nonce_lifetime: Duration::from_secs(600),
            credential_ttl: Duration::from_secs(DEFAULT_CREDENTIAL_TTL_SECS),
            // Static users are opt-in; REST credentials expire, passwords do not.
            static_users: Vec::new(),
            // Empty: the runtime relays from the addresses it listens on.
            relay_ips: Vec::new(),
            // Only needed behind a 1:1 NAT (cloud VMs).
            external_ip: None,
            // Only needed when relay addresses sit behind different public addresses.
            external_ip_map: Vec::new(),
            // RFC 8656 §7.2: relay ports SHOULD come from 49152-65535, the IANA dynamic
            // range (RFC 6335).
            port_range: 49152..=65535,
            // The kernel fast path is opt-in: it needs root (CAP_BPF, CAP_NET_ADMIN) and Linux.
            xdp_interface: None,
            xdp_mode: XdpMode::Auto,
            // Nothing is opened beyond the built-in deny list (DESIGN "Security defaults").
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            // RFC 8656 §3.2: an allocation lives 10 minutes unless refreshed.
            default_lifetime: Duration::from_secs(600),
            // RFC 8656 §7.2: recommended maximum allocation lifetime of 1 hour.
            max_lifetime: Duration::from_secs(3600),
            // Fits in the default port range (16384 ports) with room to spare, and at the
            // ≤ 2 KiB per idle allocation target costs about 20 MiB.
            max_allocations: 10_000,
            // A browser needs a handful; 100 keeps one leaked credential from taking the
            // whole server (486 Allocation Quota Reached).
            max_allocations_per_user: 100,
            // One per remote candidate address; ICE rarely needs more than a dozen. A cap
            // keeps per-allocation state bounded.
            max_permissions_per_allocation: 64,
            // Same reasoning as permissions; RFC 8656 allows 16384 channel numbers.
            max_channels_per_allocation: 64,
            // Unlimited: media bitrates vary too much for one safe number.
            bandwidth_per_allocation: None,
            // As many as allocations: a TCP/TLS client holds one connection per allocation
            // (RFC 8656 §3.1); each costs a socket and bounded buffers.
            max_connections: 10_000,
            // Enough for the clients behind one NAT (an office, a carrier-grade NAT pool);
            // low enough that one host cannot use up the whole server.
            max_connections_per_source: 64,
            // Challenges go to unverified source addresses, so this bounds what a spoofed
            // flood can reflect; see `DEFAULT_MAX_CHALLENGES_PER_SEC` for the numbers.
            max_challenges_per_sec: crate::proto::server::DEFAULT_MAX_CHALLENGES_PER_SEC as usize,
            // DESIGN "Management plane": loopback, so no token is needed by default.
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_tokens: Vec::new(),
            // Derived from the addresses the server really listens on, so they are right
            // without configuration; set them when clients reach the server by DNS name.
            api_uris: Vec::new(),
            // Same as the default credential ttl (draft-uberti recommends one day): a
            // longer-lived credential outlives the user's revocation by that much.
            api_max_ttl: Duration::from_secs(DEFAULT_CREDENTIAL_TTL_SECS),
            // No browser origin may call the API until the operator names it.
            api_cors_origins: Vec::new(),
            // The test page hands out credentials to whoever loads it: opt-in.
            api_test_page: false,
            // A client on any real network sends a request head in well under a second;
            // 10 s is the stream clients' first-message bound too (worker.rs).
            api_request_timeout: Duration::from_secs(10),
            // Management traffic is a few clients; 256 sockets are a small share of the
            // descriptors TURN needs (LimitNOFILE=65536 in the unit), so an API flood
            // cannot starve relay sockets and TCP/TLS accepts.
            api_max_connections: 256,
            // A quarter of the total: one host cannot hold every slot. A reverse proxy in
            // front of the API is one source, so raise this with one.
            api_max_connections_per_source: 64,
            // In memory: a plain `turnpike run` writes no state; packages set a path.
            revocations_file: None,
            // TLS needs a certificate, so it is off until one is configured.
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            usage: UsageConfig {
                // The log is always there, so records are kept somewhere without setup.
                log: true,
                // Files and webhooks need a path or URL only the operator knows.
                file: None,
                webhook_url: None,
                // Long enough for a receiver across a continent, short enough that a
                // dead one holds a stopping daemon for only this long.
                webhook_timeout: Duration::from_secs(5),
                // 10,000 records (~4 MB) ride out a receiver restart of minutes at a
                // hundred allocations ending per second.
                queue_size: 10_000,
            },
        }
    }
}

/// `0` means one worker per CPU core (at most [`MAX_WORKERS`]).
fn resolve_workers(workers: usize) -> usize {
    if workers != 0 {
        return workers;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
}

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// Why a configuration was rejected. Every variant names the key, line or flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: TOML syntax error at line {line}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error(
        "{origin}: unknown key `{key}` in {section} at line {line} (expected one of: {expected})"
    )]
    UnknownKey {
        origin: String,
        key: String,
        /// `[server]`, … or `the top level`.
        section: String,
        line: usize,
        expected: String,
    },
    /// A key in the file has a wrong type or value.
    #[error("{origin}: {key} (line {line}): {message}")]
    InvalidValue {
        origin: String,
        key: String,
        line: usize,
        message: String,
    },
    /// A value that came from neither the file nor a flag (or whose origin is unknown).
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// A command-line flag has a bad value.
    #[error("{flag} {value}: {message}")]
    Flag {
        flag: String,
        value: String,
        message: String,
    },
}

// ---------------------------------------------------------------------------------
// File model
// ---------------------------------------------------------------------------------

/// The sections and keys the file may contain. `[auth.users]` holds arbitrary names.
/// Kept in sync with the structs below by `schema_matches_file_model`.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "realm",
            "software",
            "workers",
            "log_format",
            "alternate_servers",
            "drain_alternate_servers",
        ],
    ),
    (
        "auth",
        &[
            "secrets",
            "separator",
            "nonce_lifetime_secs",
            "credential_ttl_secs",
            "users",
        ],
    ),
    (
        "relay",
        &[
            "ips",
            "external_ip",
            "external_ip_map",
            "min_port",
            "max_port",
            "allow_peers",
            "deny_peers",
            "xdp_interface",
            "xdp_mode",
        ],
    ),
    (
        "limits",
        &[
            "default_lifetime_secs",
            "max_lifetime_secs",
            "max_allocations",
            "max_allocations_per_user",
            "max_permissions_per_allocation",
            "max_channels_per_allocation",
            "bandwidth_per_allocation",
            "max_connections",
            "max_connections_per_source",
            "max_challenges_per_sec",
        ],
    ),
    (
        "api",
        &[
            "listen",
            "tokens",
            "uris",
            "max_ttl_secs",
            "cors_origins",
            "test_page",
            "request_timeout_secs",
            "max_connections",
            "max_connections_per_source",
            "revocations_file",
        ],
    ),
    ("tls", &["listen", "cert", "key"]),
    (
        "usage",
        &[
            "log",
            "file",
            "webhook_url",
            "webhook_timeout_secs",
            "queue_size",
        ],
    ),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    server: ServerFile,
    auth: AuthFile,
    relay: RelayFile,
    limits: LimitsFile,
    api: ApiFile,
    tls: TlsFile,
    usage: UsageFile,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerFile {
    listen: Vec<String>,
    realm: String,
    software: String,
    workers: usize,
    log_format: LogFormat,
    alternate_servers: Vec<String>,
    drain_alternate_servers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthFile {
    secrets: Vec<String>,
    separator: String,
    nonce_lifetime_secs: u64,
    credential_ttl_secs: u64,
    users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RelayFile {
    ips: Vec<String>,
    external_ip: String,
    external_ip_map: Vec<String>,
    min_port: u16,
    max_port: u16,
    allow_peers: Vec<String>,
    deny_peers: Vec<String>,
    xdp_interface: String,
    xdp_mode: XdpMode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsFile {
    default_lifetime_secs: u64,
    max_lifetime_secs: u64,
    max_allocations: usize,
    max_allocations_per_user: usize,
    max_permissions_per_allocation: usize,
    max_channels_per_allocation: usize,
    bandwidth_per_allocation: u64,
    max_connections: usize,
    max_connections_per_source: usize,
    max_challenges_per_sec: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ApiFile {
    listen: String,
    tokens: Vec<String>,
    uris: Vec<String>,
    max_ttl_secs: u64,
    cors_origins: Vec<String>,
    test_page: bool,
    request_timeout_secs: u64,
    max_connections: usize,
    max_connections_per_source: usize,
    revocations_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsFile {
    listen: Vec<String>,
    cert: String,
    key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UsageFile {
    log: bool,
    file: String,
    webhook_url: String,
    webhook_timeout_secs: u64,
    queue_size: usize,
}

/// File defaults are the runtime defaults written back, so they are stated once, in
/// `Default for Config`.
impl Default for FileConfig {
    fn default() -> Self {
        let mut file = Config::default().to_file(false);
        file.server.workers = 0;
        file
    }
}

macro_rules! section_default {
    ($($ty:ident => $field:ident),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                FileConfig::default().$field
            }
        }
    )*};
}
section_default!(ServerFile => server, AuthFile => auth, RelayFile => relay,
    LimitsFile => limits, ApiFile => api, TlsFile => tls, UsageFile => usage);

/// Where each key of a parsed document is.
#[derive(Debug, Default)]
struct Doc {
    origin: String,
    /// `"relay.min_port"` → (line of the key, byte span of the value).
    keys: HashMap<String, (usize, Range<usize>)>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Check the document's shape against [`SCHEMA`] and record where every key is.
fn index_document(text: &str, origin: &str) -> Result<Doc, ConfigError> {
    let root = DeTable::parse(text).map_err(|e| toml_error(&e, text, origin, None))?;
    let mut doc = Doc {
        origin: origin.to_owned(),
        keys: HashMap::new(),
    };
    // Several problems: report the first in the file, not the first alphabetically.
    let mut problems: Vec<(usize, ConfigError)> = Vec::new();
    let sections = || {
        SCHEMA
            .iter()
            .map(|(s, _)| format!("[{s}]"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (section, value) in root.get_ref().iter() {
        let name: &str = section.get_ref();
        let line = line_of(text, section.span().start);
        let Some((_, known)) = SCHEMA.iter().find(|(s, _)| *s == name) else {
            problems.push((
                section.span().start,
                ConfigError::UnknownKey {
                    origin: origin.to_owned(),
                    key: name.to_owned(),
                    section: "the top level".to_owned(),
                    line,
                    expected: sections(),
                },
            ));
            continue;
        };
        doc.keys.insert(name.to_owned(), (line, value.span()));
        let DeValue::Table(table) = value.get_ref() else {
            problems.push((
                section.span().start,
                ConfigError::InvalidValue {
                    origin: origin.to_owned(),
                    key: name.to_owned(),
                    line,
                    message: format!("must be a table ([{name}])"),
                },
            ));
            continue;
        };
        for (key, value) in table.iter() {
            let key_name: &str = key.get_ref();
            let line = line_of(text, key.span().start);
            if !known.contains(&key_name) {
                problems.push((
                    key.span().start,
                    ConfigError::UnknownKey {
                        origin: origin.to_owned(),
                        key: key_name.to_owned(),
                        section: format!("[{name}]"),
                        line,
                        expected: known.join(", "),
                    },
                ));
                continue;
            }
            let dotted = format!("{name}.{key_name}");
            if let (DeValue::Table(users), "auth.users") = (value.get_ref(), dotted.as_str()) {
                for (user, password) in users.iter() {
                    let user: &str = user.get_ref();
                    doc.keys.insert(
                        format!("auth.users.{user}"),
                        (line_of(text, password.span().start), password.span()),
                    );
                }
            }
            doc.keys.insert(dotted, (line, value.span()));
        }
    }
    match problems.into_iter().min_by_key(|(at, _)| *at) {
        Some((_, problem)) => Err(problem),
        None => Ok(doc),
    }
}

/// Turn a toml/serde error into one that names the key whose value it points at.
fn toml_error(err: &toml::de::Error, text: &str, origin: &str, doc: Option<&Doc>) -> ConfigError {
    let message = err.message().trim().to_owned();
    let Some(span) = err.span() else {
        return ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
    };
    let owner = doc.and_then(|doc| {
        doc.keys
            .iter()
            .filter(|(_, (_, v))| v.start <= span.start && span.end <= v.end)
            .min_by_key(|(_, (_, v))| v.len())
    });
    match owner {
        Some((key, (line, _))) => ConfigError::InvalidValue {
            origin: origin.to_owned(),
            key: key.clone(),
            line: *line,
            message,
        },
        None => ConfigError::Syntax {
            origin: origin.to_owned(),
            line: line_of(text, span.start),
            message,
        },
    }
}

fn parse_file(text: &str, origin: &str) -> Result<(FileConfig, Doc), ConfigError> {
    let doc = index_document(text, origin)?;
    let file: FileConfig =
        toml::from_str(text).map_err(|e| toml_error(&e, text, origin, Some(&doc)))?;
    Ok((file, doc))
}

// ---------------------------------------------------------------------------------
// Where a value came from, for error messages
// ---------------------------------------------------------------------------------

#[derive(Default)]
struct Sources<'a> {
    doc: Option<&'a Doc>,
    /// Config key → (flag, last value given) for keys set on the command line.
    flags: HashMap<&'static str, (&'static str, String)>,
}

impl Sources<'_> {
    fn in_file(&self, key: &str) -> bool {
        self.doc.is_some_and(|d| d.keys.contains_key(key))
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        if let Some((flag, value)) = self.flags.get(key) {
            return ConfigError::Flag {
                flag: (*flag).to_owned(),
                value: value.clone(),
                message,
            };
        }
        match self
            .doc
            .and_then(|d| d.keys.get(key).map(|(line, _)| (d, *line)))
        {
            Some((doc, line)) => ConfigError::InvalidValue {
                origin: doc.origin.clone(),
                key: key.to_owned(),
                line,
                message,
            },
            None => ConfigError::Invalid {
                key: key.to_owned(),
                message,
            },
        }
    }

    /// Of two keys that together are wrong, the one to blame: the one set on the command
    /// line, else the one set in the file, else the first.
    fn blame<'k>(&self, first: &'k str, second: &'k str) -> &'k str {
        let flagged = |k: &str| self.flags.contains_key(k);
        if flagged(first) {
            first
        } else if flagged(second) || (!self.in_file(first) && self.in_file(second)) {
            second
        } else {
            first
        }
    }
}

// ---------------------------------------------------------------------------------
// Value parsers (shared by file and flags; errors say what is wrong, callers add where)
// ---------------------------------------------------------------------------------

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an ADDR:PORT socket address (IPv6 as [::1]:3478)"))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address"))
}

/// A Linux interface name (IFNAMSIZ: at most 15 bytes; no '/', ':' or whitespace; not "."
/// or ".."), so a typo is an error naming the key rather than a failed attach.
fn check_interface_name(name: &str) -> Result<String, String> {
    let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." || name.contains(bad) {
        return Err(format!(
            "{name:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)"
        ));
    }
    Ok(name.to_owned())
}

/// A relay or external address is handed to clients, so it must be a real unicast address.
fn check_advertised_ip(ip: IpAddr) -> Result<IpAddr, String> {
    if ip.is_unspecified() || ip.is_multicast() {
        Err(format!(
            "`{ip}` cannot be advertised to clients; give a concrete unicast address"
        ))
    } else {
        Ok(ip)
    }
}

/// An alternate server for 300 Try Alternate: a concrete `IP:PORT` a client can reach.
pub fn parse_alternate_server(s: &str) -> Result<SocketAddr, String> {
    check_alternate_server(parse_socket_addr(s)?)
}

fn check_alternate_server(addr: SocketAddr) -> Result<SocketAddr, String> {
    if addr.port() == 0 {
        return Err(format!("`{addr}` needs a port other than 0"));
    }
    check_advertised_ip(addr.ip()).map(|_| addr)
}

/// One `PRIVATE=PUBLIC` pair of `relay.external_ip_map` (`10.0.0.5=203.0.113.5`): a relay
/// address and the public address a 1:1 NAT maps it to, of the same family.
pub fn parse_ip_mapping(s: &str) -> Result<(IpAddr, IpAddr), String> {
    let (private, public) = s.split_once('=').ok_or_else(|| {
        format!(
            "`{s}` is not a PRIVATE=PUBLIC pair of IP addresses (e.g. \"10.0.0.5=203.0.113.5\")"
        )
    })?;
    let private = parse_ip(private).and_then(check_advertised_ip)?;
    let public = parse_ip(public).and_then(check_advertised_ip)?;
    if private.is_ipv4() != public.is_ipv4() {
        return Err(format!(
            "`{s}` maps between address families; both sides must be IPv4 or both IPv6"
        ));
    }
    Ok((private, public))
}

/// A peer network: `10.0.0.0/8`, `2001:db8::/32`, or a bare IP (a /32 or /128). Host bits
/// are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
pub fn parse_peer_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = if s.contains('/') {
        s.parse::<IpNet>().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    };
    net.map(|n| n.trunc())
        .ok_or_else(|| format!("`{s}` is not a CIDR or IP"))
}

/// The REST username separator: exactly one character, neither alphanumeric nor
/// whitespace (it must not occur in the expiry and should not in user names).
pub fn parse_separator(s: &str) -> Result<char, String> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if !c.is_alphanumeric() && !c.is_whitespace() && !c.is_control() => Ok(c),
        _ => Err(format!(
            "`{s}` must be exactly one character that is not a letter, digit or space (e.g. \":\")"
        )),
    }
}

/// A URI for `iceServers` (RFC 7064 `stun:`/`stuns:`, RFC 7065 `turn:`/`turns:`), kept as
/// written: browsers interpret it, so its syntax is checked ([`IceUri`]), not its query.
pub fn parse_ice_uri(s: &str) -> Result<String, String> {
    IceUri::parse(s)
        .map(|uri| uri.raw)
        .map_err(|why| format!("{why} (e.g. \"turn:turn.example.com:3478?transport=udp\")"))
}

/// A browser origin: `http://` or `https://`, a host, an optional port, nothing after.
/// Stored in lower case; browsers send origins in lower case too.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let host = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match host {
        Some(host)
            if !host.is_empty()
                && !host.contains(['/', '?', '#', '@'])
                && !host.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(s.to_ascii_lowercase())
        }
        _ => Err(format!(
            "`{s}` is not an origin like \"https://app.example.com\" (scheme and host, no path)"
        )),
    }
}

/// A webhook URL: `http://` or `https://`, a host, a port in 1..=65535 if given, no user
/// name or password (ureq would not send them; put a token in the path or query).
pub fn parse_webhook_url(s: &str) -> Result<String, String> {
    let not_http = || format!("{s:?} is not an http:// or https:// URL");
    let uri: ureq::http::Uri = s.parse().map_err(|e| format!("{} ({e})", not_http()))?;
    let (Some("http" | "https"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(not_http());
    };
    if authority.as_str().contains('@') {
        return Err(
            "no user name or password in the URL (put a token in its path or query)".to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err("no host".to_owned());
    }
    if authority.port().is_some_and(|p| p.as_u16() == 0) || authority.as_str().ends_with(':') {
        return Err("bad port".to_owned());
    }
    Ok(s.to_owned())
}

/// Whether records can be appended to `path` (checked at load, so `check-config` and a
/// reload catch it): an existing file is opened for appending (nothing is written); for a
/// new one, its directory must exist.
fn check_appendable(path: &Path) -> Result<(), String> {
    let describe = |e: std::io::Error| format!("cannot append to {}: {e}", path.display());
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!("{} is a directory", path.display())),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(describe),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match std::fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(format!("{} is not a directory", parent.display())),
                Err(e) => Err(format!("directory {}: {e}", parent.display())),
            }
        }
        Err(e) => Err(describe(e)),
    }
}

fn non_empty_path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Append to `list`, dropping repeats, keeping the first occurrence's position.
fn extend_unique<T: PartialEq>(list: &mut Vec<T>, more: impl IntoIterator<Item = T>) {
    for item in more {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

// ---------------------------------------------------------------------------------
// Building and checking a Config
// ---------------------------------------------------------------------------------

impl Config {
    /// Load the configuration `turnpike run` uses: the file at `path` (or `args.config`
    /// when `path` is `None`; built-in defaults when both are `None`), then the flags.
    ///
    /// List flags add to the file's lists; when the file does not set the key they
    /// replace the built-in default. Scalar flags override.
    pub fn load(path: Option<&Path>, args: &RunArgs) -> Result<Config, ConfigError> {
        let path = path.or(args.config.as_deref());
        let (mut config, doc) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let origin = path.display().to_string();
                let (file, doc) = parse_file(&text, &origin)?;
                let config = Config::from_file(file, &doc)?;
                (config, Some(doc))
            }
            None => (Config::default(), None),
        };
        let mut sources = Sources {
            doc: doc.as_ref(),
            flags: HashMap::new(),
        };
        let in_file = |key: &str| doc.as_ref().is_some_and(|d| d.keys.contains_key(key));
        config.apply_flags_inner(args, &in_file, &mut sources.flags)?;
        config.validate(&sources)?;
        Ok(config)
    }

    /// Parse and check a TOML document (no flags). `origin` names it in errors, usually
    /// the file's path.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let (file, doc) = parse_file(text, origin)?;
        let config = Config::from_file(file, &doc)?;
        config.validate(&Sources {
            doc: Some(&doc),
            flags: HashMap::new(),
        })?;
        Ok(config)
    }

    /// Apply `turnpike run` flags to an already loaded config, then re-check it. List
    /// flags add to lists, except that a list still equal to its built-in default is
    /// replaced; scalar flags override. [`Config::load`] does this too (knowing exactly
    /// which keys the file set); `args.config` is ignored here.
    pub fn apply_flags(&mut self, args: &RunArgs) -> Result<(), ConfigError> {
        let listen_is_default = self.listen == Config::default().listen;
        let keep = |key: &str| !(key == "server.listen" && listen_is_default);
        let mut sources = Sources::default();
        self.apply_flags_inner(args, &keep, &mut sources.flags)?;
        self.validate(&sources)
    }

    /// Convert the file model, parsing every string. Cross-key checks are in `validate`.
    fn from_file(file: FileConfig, doc: &Doc) -> Result<Config, ConfigError> {
        let src = Sources {
            doc: Some(doc),
            flags: HashMap::new(),
        };
        let FileConfig {
            server,
            auth,
            relay,
            limits,
            api,
            tls,
            usage,
        } = file;

        let listen = parse_list(&src, "server.listen", &server.listen, parse_socket_addr)?;
        let relay_ips = parse_list(&src, "relay.ips", &relay.ips, |s| {
            parse_ip(s).and_then(check_advertised_ip)
        })?;
        let allow_peers = parse_list(
            &src,
            "relay.allow_peers",
            &relay.allow_peers,
            parse_peer_net,
        )?;
        let deny_peers = parse_list(&src, "relay.deny_peers", &relay.deny_peers, parse_peer_net)?;
        let tls_listen = parse_list(&src, "tls.listen", &tls.listen, parse_socket_addr)?;
        let alternate_servers = parse_list(
            &src,
            "server.alternate_servers",
            &server.alternate_servers,
            parse_alternate_server,
        )?;
        let drain_alternate_servers = parse_list(
            &src,
            "server.drain_alternate_servers",
            &server.drain_alternate_servers,
            parse_alternate_server,
        )?;
        let external_ip_map = parse_list(
            &src,
            "relay.external_ip_map",
            &relay.external_ip_map,
            parse_ip_mapping,
        )?;
        let external_ip = match relay.external_ip.trim() {
            "" => None,
            s => Some(
                parse_ip(s)
                    .and_then(check_advertised_ip)
                    .map_err(|m| src.error("relay.external_ip", m))?,
            ),
        };
        let xdp_interface = match relay.xdp_interface.as_str() {
            "" => None,
            name => {
                Some(check_interface_name(name).map_err(|m| src.error("relay.xdp_interface", m))?)
            }
        };
        let separator =
            parse_separator(&auth.separator).map_err(|m| src.error("auth.separator", m))?;
        let api_listen = parse_socket_addr(&api.listen).map_err(|m| src.error("api.listen", m))?;
        let api_uris = parse_list(&src, "api.uris", &api.uris, parse_ice_uri)?;
        let api_cors_origins =
            parse_list(&src, "api.cors_origins", &api.cors_origins, parse_origin)?;
        let webhook_url = match usage.webhook_url.trim() {
            "" => None,
            url => Some(parse_webhook_url(url).map_err(|m| src.error("usage.webhook_url", m))?),
        };

        Ok(Config {
            listen,
            realm: server.realm,
            software: (!server.software.is_empty()).then_some(server.software),
            workers: resolve_workers(server.workers),
            log_format: server.log_format,
            alternate_servers,
            drain_alternate_servers,
            secrets: unique_secrets(auth.secrets),
            separator,
            nonce_lifetime: Duration::from_secs(auth.nonce_lifetime_secs),
            credential_ttl: Duration::from_secs(auth.credential_ttl_secs),
            static_users: auth
                .users
                .into_iter()
                .map(|(name, password)| (name, Secret(password)))
                .collect(),
            relay_ips,
            external_ip,
            external_ip_map,
            port_range: relay.min_port..=relay.max_port,
            xdp_interface,
            xdp_mode: relay.xdp_mode,
            allow_peers,
            deny_peers,
            default_lifetime: Duration::from_secs(limits.default_lifetime_secs),
            max_lifetime: Duration::from_secs(limits.max_lifetime_secs),
            max_allocations: limits.max_allocations,
            max_allocations_per_user: limits.max_allocations_per_user,
            max_permissions_per_allocation: limits.max_permissions_per_allocation,
            max_channels_per_allocation: limits.max_channels_per_allocation,
            bandwidth_per_allocation: (limits.bandwidth_per_allocation != 0)
                .then_some(limits.bandwidth_per_allocation),
            max_connections: limits.max_connections,
            max_connections_per_source: limits.max_connections_per_source,
            max_challenges_per_sec: limits.max_challenges_per_sec,
            api_listen,
            api_tokens: unique_secrets(api.tokens),
            api_uris,
            api_max_ttl: Duration::from_secs(api.max_ttl_secs),
            api_cors_origins,
            api_test_page: api.test_page,
            api_request_timeout: Duration::from_secs(api.request_timeout_secs),
            api_max_connections: api.max_connections,
            api_max_connections_per_source: api.max_connections_per_source,
            revocations_file: non_empty_path(&api.revocations_file),
            tls_listen,
            tls_cert: non_empty_path(&tls.cert),
            tls_key: non_empty_path(&tls.key),
            usage: UsageConfig {
                log: usage.log,
                file: non_empty_path(&usage.file),
                webhook_url,
                webhook_timeout: Duration::from_secs(usage.webhook_timeout_secs),
                queue_size: usage.queue_size,
            },
        })
    }

    /// `keep_list(key)`: whether flags for that list key add to it (true) or replace it.
    fn apply_flags_inner(
        &mut self,
        args: &RunArgs,
        keep_list: &dyn Fn(&str) -> bool,
        flags: &mut HashMap<&'static str, (&'static str, String)>,
    ) -> Result<(), ConfigError> {
        fn list<T: PartialEq + Clone + fmt::Display>(
            target: &mut Vec<T>,
            given: &[T],
            key: &'static str,
            flag: &'static str,
            keep: bool,
            flags: &mut HashMap<&'static str, (&'static str, String)>,
        ) {
            if let Some(last) = given.last() {
                if !keep {
                    target.clear();
                }
                extend_unique(target, given.iter().cloned());
                flags.insert(key, (flag, last.to_string()));
            }
        }
        fn scalar<T: fmt::Display>(
            value: Option<&T>,
            key: &'static str,
            flag: &'static str,
            flags: &mut HashMap<&'static str, (&'static str, String)>,
        ) -> bool {
            if let Some(value) = value {
                flags.insert(key, (flag, value.to_string()));
            }
            value.is_some()
        }
        let flag_err = |flag: &str, value: &str, message: String| ConfigError::Flag {
            flag: flag.to_owned(),
            value: value.to_owned(),
            message,
        };

        // [server]
        let keep = keep_list("server.listen");
        list(
            &mut self.listen,
            &args.listen,
            "server.listen",
            "--listen",
            keep,
            flags,
        );
        if scalar(args.realm.as_ref(), "server.realm", "--realm", flags) {
            self.realm = args.realm.clone().unwrap_or_default();
        }
        if let Some(software) = &args.software {
            scalar(Some(software), "server.software", "--software", flags);
            self.software = (!software.is_empty()).then(|| software.clone());
        }
        if let Some(workers) = args.workers {
            scalar(Some(&workers), "server.workers", "--workers", flags);
            self.workers = resolve_workers(workers);
        }
        if let Some(format) = args.log_format {
            flags.insert("server.log_format", ("--log-format", format!("{format:?}")));
            self.log_format = format;
        }
        let mut alternates = Vec::new();
        for addr in &args.alternate_server {
            alternates.push(
                check_alternate_server(*addr)
                    .map_err(|m| flag_err("--alternate-server", &addr.to_string(), m))?,
            );
        }
        list(
            &mut self.alternate_servers,
            &alternates,
            "server.alternate_servers",
            "--alternate-server",
            keep_list("server.alternate_servers"),
            flags,
        );
        let mut drain_alternates = Vec::new();
        for addr in &args.drain_alternate_server {
            drain_alternates.push(
                check_alternate_server(*addr)
                    .map_err(|m| flag_err("--drain-alternate-server", &addr.to_string(), m))?,
            );
        }
        list(
            &mut self.drain_alternate_servers,
            &drain_alternates,
            "server.drain_alternate_servers",
            "--drain-alternate-server",
            keep_list("server.drain_alternate_servers"),
            flags,
        );

        // [auth]
        if let Some(last) = args.auth_secret.last() {
            let more = unique_secrets(args.auth_secret.clone());
            extend_unique(&mut self.secrets, more);
            flags.insert("auth.secrets", ("--auth-secret", redact_flag(last)));
        }
        if let Some(s) = &args.separator {
            self.separator = parse_separator(s).map_err(|m| flag_err("--separator", s, m))?;
            flags.insert("auth.separator", ("--separator", s.clone()));
        }
        if let Some(secs) = args.nonce_lifetime_secs {
            scalar(
                Some(&secs),
                "auth.nonce_lifetime_secs",
                "--nonce-lifetime-secs",
                flags,
            );
            self.nonce_lifetime = Duration::from_secs(secs);
        }
        if let Some(secs) = args.credential_ttl_secs {
            scalar(
                Some(&secs),
                "auth.credential_ttl_secs",
                "--credential-ttl-secs",
                flags,
            );
            self.credential_ttl = Duration::from_secs(secs);
        }
        for user in &args.user {
            let shown = match user.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                None => user.clone(),
            };
            let (name, password) = user
                .split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| {
                    flag_err(
                        "--user",
                        &shown,
                        "expected NAME=PASSWORD with both parts non-empty".to_owned(),
                    )
                })?;
            let password = Secret::from(password);
            match self.static_users.iter_mut().find(|(n, _)| n == name) {
                Some(existing) => existing.1 = password,
                None => self.static_users.push((name.to_owned(), password)),
            }
            flags.insert("auth.users", ("--user", shown));
        }
        self.static_users.sort_by(|a, b| a.0.cmp(&b.0));

        // [relay]
        let keep = keep_list("relay.ips");
        let mut relay_ips = Vec::new();
        for ip in &args.relay_ip {
            relay_ips.push(
                check_advertised_ip(*ip).map_err(|m| flag_err("--relay-ip", &ip.to_string(), m))?,
            );
        }
        list(
            &mut self.relay_ips,
            &relay_ips,
            "relay.ips",
            "--relay-ip",
            keep,
            flags,
        );
        if let Some(ip) = args.external_ip {
            self.external_ip = Some(
                check_advertised_ip(ip)
                    .map_err(|m| flag_err("--external-ip", &ip.to_string(), m))?,
            );
            flags.insert("relay.external_ip", ("--external-ip", ip.to_string()));
        }
        if let Some(last) = args.external_ip_map.last() {
            let mut pairs = Vec::new();
            for s in &args.external_ip_map {
                pairs.push(parse_ip_mapping(s).map_err(|m| flag_err("--external-ip-map", s, m))?);
            }
            if !keep_list("relay.external_ip_map") {
                self.external_ip_map.clear();
            }
            extend_unique(&mut self.external_ip_map, pairs);
            flags.insert(
                "relay.external_ip_map",
                ("--external-ip-map", last.trim().to_owned()),
            );
        }
        if let Some(name) = &args.xdp {
            scalar(Some(name), "relay.xdp_interface", "--xdp", flags);
            self.xdp_interface =
                Some(check_interface_name(name).map_err(|m| flag_err("--xdp", name, m))?);
        }
        if let Some(mode) = args.xdp_mode {
            flags.insert(
                "relay.xdp_mode",
                ("--xdp-mode", format!("{mode:?}").to_lowercase()),
            );
            self.xdp_mode = mode;
        }
        if let Some(port) = args.min_port {
            scalar(Some(&port), "relay.min_port", "--min-port", flags);
            self.port_range = port..=*self.port_range.end();
        }
        if let Some(port) = args.max_port {
            scalar(Some(&port), "relay.max_port", "--max-port", flags);
            self.port_range = *self.port_range.start()..=port;
        }
        for (given, target, key, flag) in [
            (
                &args.allow_peer,
                &mut self.allow_peers,
                "relay.allow_peers",
                "--allow-peer",
            ),
            (
                &args.deny_peer,
                &mut self.deny_peers,
                "relay.deny_peers",
                "--deny-peer",
            ),
        ] {
            let mut nets = Vec::new();
            for s in given {
                nets.push(parse_peer_net(s).map_err(|m| flag_err(flag, s, m))?);
            }
            list(target, &nets, key, flag, keep_list(key), flags);
        }

        // [limits]
        if let Some(secs) = args.default_lifetime_secs {
            scalar(
                Some(&secs),
                "limits.default_lifetime_secs",
                "--default-lifetime-secs",
                flags,
            );
            self.default_lifetime = Duration::from_secs(secs);
        }
        if let Some(secs) = args.max_lifetime_secs {
            scalar(
                Some(&secs),
                "limits.max_lifetime_secs",
                "--max-lifetime-secs",
                flags,
            );
            self.max_lifetime = Duration::from_secs(secs);
        }
        for (value, target, key, flag) in [
            (
                args.max_allocations,
                &mut self.max_allocations,
                "limits.max_allocations",
                "--max-allocations",
            ),
            (
                args.max_allocations_per_user,
                &mut self.max_allocations_per_user,
                "limits.max_allocations_per_user",
                "--max-allocations-per-user",
            ),
            (
                args.max_permissions_per_allocation,
                &mut self.max_permissions_per_allocation,
                "limits.max_permissions_per_allocation",
                "--max-permissions-per-allocation",
            ),
            (
                args.max_channels_per_allocation,
                &mut self.max_channels_per_allocation,
                "limits.max_channels_per_allocation",
                "--max-channels-per-allocation",
            ),
            (
                args.max_connections,
                &mut self.max_connections,
                "limits.max_connections",
                "--max-connections",
            ),
            (
                args.max_connections_per_source,
                &mut self.max_connections_per_source,
                "limits.max_connections_per_source",
                "--max-connections-per-source",
            ),
            (
                args.max_challenges_per_sec,
                &mut self.max_challenges_per_sec,
                "limits.max_challenges_per_sec",
                "--max-challenges-per-sec",
            ),
        ] {
            if let Some(value) = value {
                scalar(Some(&value), key, flag, flags);
                *target = value;
            }
        }
        if let Some(bps) = args.bandwidth_per_allocation {
            scalar(
                Some(&bps),
                "limits.bandwidth_per_allocation",
                "--bandwidth-per-allocation",
                flags,
            );
            self.bandwidth_per_allocation = (bps != 0).then_some(bps);
        }

        // [api]
        if let Some(addr) = args.api_listen {
            scalar(Some(&addr), "api.listen", "--api-listen", flags);
            self.api_listen = addr;
        }
        if let Some(last) = args.api_token.last() {
            extend_unique(&mut self.api_tokens, unique_secrets(args.api_token.clone()));
            flags.insert("api.tokens", ("--api-token", redact_flag(last)));
        }
        for (given, target, key, flag, parse) in [
            (
                &args.api_uri,
                &mut self.api_uris,
                "api.uris",
                "--api-uri",
                parse_ice_uri as fn(&str) -> Result<String, String>,
            ),
            (
                &args.api_cors_origin,
                &mut self.api_cors_origins,
                "api.cors_origins",
                "--api-cors-origin",
                parse_origin,
            ),
        ] {
            let mut parsed = Vec::new();
            for s in given {
                parsed.push(parse(s).map_err(|m| flag_err(flag, s, m))?);
            }
            list(target, &parsed, key, flag, keep_list(key), flags);
        }
        if let Some(secs) = args.api_max_ttl_secs {
            scalar(Some(&secs), "api.max_ttl_secs", "--api-max-ttl-secs", flags);
            self.api_max_ttl = Duration::from_secs(secs);
        }
        if let Some(on) = args.api_test_page {
            scalar(Some(&on), "api.test_page", "--api-test-page", flags);
            self.api_test_page = on;
        }
        if let Some(secs) = args.api_request_timeout_secs {
            scalar(
                Some(&secs),
                "api.request_timeout_secs",
                "--api-request-timeout-secs",
                flags,
            );
            self.api_request_timeout = Duration::from_secs(secs);
        }
        for (value, target, key, flag) in [
            (
                args.api_max_connections,
                &mut self.api_max_connections,
                "api.max_connections",
                "--api-max-connections",
            ),
            (
                args.api_max_connections_per_source,
                &mut self.api_max_connections_per_source,
                "api.max_connections_per_source",
                "--api-max-connections-per-source",
            ),
        ] {
            if let Some(value) = value {
                scalar(Some(&value), key, flag, flags);
                *target = value;
            }
        }

        // [tls]
        let keep = keep_list("tls.listen");
        list(
            &mut self.tls_listen,
            &args.tls_listen,
            "tls.listen",
            "--tls-listen",
            keep,
            flags,
        );
        if let Some(path) = &args.tls_cert {
            flags.insert("tls.cert", ("--tls-cert", path.display().to_string()));
            self.tls_cert = non_empty_path(&path.to_string_lossy());
        }
        if let Some(path) = &args.tls_key {
            flags.insert("tls.key", ("--tls-key", path.display().to_string()));
            self.tls_key = non_empty_path(&path.to_string_lossy());
        }
        Ok(())
    }

    /// Checks that involve a value's range or several keys; run after flags are applied
    /// so a flag can fix (or break) what the file says.
    fn validate(&self, src: &Sources<'_>) -> Result<(), ConfigError> {
        if self.listen.is_empty() && self.tls_listen.is_empty() {
            return Err(src.error(
                "server.listen",
                "no listening address: set server.listen (--listen) or tls.listen (--tls-listen)",
            ));
        }
        // RFC 8489 §14.9: REALM is fewer than 128 characters; clients need one for 401s.
        let realm_chars = self.realm.chars().count();
        if realm_chars == 0 || realm_chars >= 128 {
            return Err(src.error("server.realm", "must be 1 to 127 characters"));
        }
        // RFC 8489 §14.14: SOFTWARE is fewer than 128 characters.
        if self
            .software
            .as_ref()
            .is_some_and(|s| s.chars().count() >= 128)
        {
            return Err(src.error(
                "server.software",
                "must be fewer than 128 characters (\"\" omits it)",
            ));
        }
        if self.secrets.iter().any(|s| s.expose().is_empty()) {
            return Err(src.error("auth.secrets", "a secret must not be empty"));
        }
        if self.api_tokens.iter().any(|s| s.expose().is_empty()) {
            return Err(src.error("api.tokens", "a token must not be empty"));
        }
        if let Some((name, _)) = self
            .static_users
            .iter()
            .find(|(n, p)| n.is_empty() || p.expose().is_empty())
        {
            let key = format!("auth.users.{name}");
            let key = if src.in_file(&key) {
                key
            } else {
                "auth.users".to_owned()
            };
            return Err(src.error(&key, "user names and passwords must not be empty"));
        }
        self.check_ranges(src)?;
        if self.credential_ttl > self.api_max_ttl {
            let (c, m) = (self.credential_ttl.as_secs(), self.api_max_ttl.as_secs());
            return Err(
                match src.blame("auth.credential_ttl_secs", "api.max_ttl_secs") {
                    "auth.credential_ttl_secs" => src.error(
                        "auth.credential_ttl_secs",
                        format!("must be <= api.max_ttl_secs ({m})"),
                    ),
                    _ => src.error(
                        "api.max_ttl_secs",
                        format!("must be >= auth.credential_ttl_secs ({c})"),
                    ),
                },
            );
        }

        let (min, max) = (*self.port_range.start(), *self.port_range.end());
        if min > max {
            return Err(match src.blame("relay.min_port", "relay.max_port") {
                "relay.min_port" => src.error(
                    "relay.min_port",
                    format!("must be <= relay.max_port ({max})"),
                ),
                _ => src.error(
                    "relay.max_port",
                    format!("must be >= relay.min_port ({min})"),
                ),
            });
        }

        if self.default_lifetime > self.max_lifetime {
            let (d, m) = (self.default_lifetime.as_secs(), self.max_lifetime.as_secs());
            return Err(
                match src.blame("limits.default_lifetime_secs", "limits.max_lifetime_secs") {
                    "limits.default_lifetime_secs" => src.error(
                        "limits.default_lifetime_secs",
                        format!("must be <= limits.max_lifetime_secs ({m})"),
                    ),
                    _ => src.error(
                        "limits.max_lifetime_secs",
                        format!("must be >= limits.default_lifetime_secs ({d})"),
                    ),
                },
            );
        }

        if let Some(own) = self
            .alternate_servers
            .iter()
            .find(|a| self.listen.contains(a) || self.tls_listen.contains(a))
        {
            return Err(src.error(
                "server.alternate_servers",
                format!("{own} is this server's own listening address: clients would be redirected in a loop"),
            ));
        }
        for (i, (private, public)) in self.external_ip_map.iter().enumerate() {
            if let Some((_, other)) = self.external_ip_map[..i].iter().find(|(p, _)| p == private) {
                return Err(src.error(
                    "relay.external_ip_map",
                    format!("{private} is mapped twice (to {other} and to {public})"),
                ));
            }
        }

        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(src.error("tls.cert", "is set but tls.key is not")),
            (None, Some(_)) => return Err(src.error("tls.key", "is set but tls.cert is not")),
            (None, None) if !self.tls_listen.is_empty() => {
                return Err(src.error(
                    "tls.listen",
                    "needs tls.cert and tls.key (--tls-cert, --tls-key)",
                ))
            }
            _ => {}
        }
        if let Some(path) = &self.usage.file {
            check_appendable(path).map_err(|m| src.error("usage.file", m))?;
        }
        Ok(())
    }

    /// Every numeric key within its bounds (the constants at the top of this file).
    fn check_ranges(&self, src: &Sources<'_>) -> Result<(), ConfigError> {
        const SECONDS: &str = " seconds";
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let (min_port, max_port) = (*self.port_range.start(), *self.port_range.end());
        let checks: [(&str, u64, RangeInclusive<u64>, &str); 20] = [
            (
                "server.workers",
                count(self.workers),
                1..=count(MAX_WORKERS),
                "",
            ),
            (
                "auth.nonce_lifetime_secs",
                self.nonce_lifetime.as_secs(),
                1..=MAX_NONCE_LIFETIME_SECS,
                SECONDS,
            ),
            (
                "auth.credential_ttl_secs",
                self.credential_ttl.as_secs(),
                1..=MAX_CREDENTIAL_TTL_SECS,
                SECONDS,
            ),
            (
                "api.max_ttl_secs",
                self.api_max_ttl.as_secs(),
                1..=MAX_CREDENTIAL_TTL_SECS,
                SECONDS,
            ),
            ("relay.min_port", min_port.into(), 1..=65_535, ""),
            ("relay.max_port", max_port.into(), 1..=65_535, ""),
            (
                "limits.default_lifetime_secs",
                self.default_lifetime.as_secs(),
                1..=MAX_ALLOCATION_LIFETIME_SECS,
                SECONDS,
            ),
            (
                "limits.max_lifetime_secs",
                self.max_lifetime.as_secs(),
                1..=MAX_ALLOCATION_LIFETIME_SECS,
                SECONDS,
            ),
            (
                "limits.max_allocations",
                count(self.max_allocations),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "limits.max_allocations_per_user",
                count(self.max_allocations_per_user),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "limits.max_permissions_per_allocation",
                count(self.max_permissions_per_allocation),
                1..=count(MAX_PER_ALLOCATION),
                "",
            ),
            (
                "limits.max_channels_per_allocation",
                count(self.max_channels_per_allocation),
                1..=count(MAX_PER_ALLOCATION),
                "",
            ),
            (
                "limits.max_connections",
                count(self.max_connections),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "limits.max_connections_per_source",
                count(self.max_connections_per_source),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "limits.max_challenges_per_sec",
                count(self.max_challenges_per_sec),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "api.request_timeout_secs",
                self.api_request_timeout.as_secs(),
                1..=MAX_API_REQUEST_TIMEOUT_SECS,
                SECONDS,
            ),
            (
                "api.max_connections",
                count(self.api_max_connections),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "api.max_connections_per_source",
                count(self.api_max_connections_per_source),
                1..=count(MAX_COUNT),
                "",
            ),
            (
                "usage.webhook_timeout_secs",
                self.usage.webhook_timeout.as_secs(),
                1..=MAX_WEBHOOK_TIMEOUT_SECS,
                SECONDS,
            ),
            (
                "usage.queue_size",
                count(self.usage.queue_size),
                1..=count(MAX_USAGE_QUEUE),
                "",
            ),
        ];
        for (key, value, range, unit) in checks {
            if !range.contains(&value) {
                let (lo, hi) = (range.start(), range.end());
                // 0 never reaches here for workers: it was resolved to the core count.
                let lo = if key == "server.workers" {
                    "0 (one per CPU core)".to_owned()
                } else {
                    lo.to_string()
                };
                return Err(src.error(key, format!("must be {lo} to {hi}{unit} (got {value})")));
            }
        }
        if let Some(rate) = self.bandwidth_per_allocation {
            if !BANDWIDTH_RANGE.contains(&rate) {
                let (lo, hi) = (BANDWIDTH_RANGE.start(), BANDWIDTH_RANGE.end());
                return Err(src.error(
                    "limits.bandwidth_per_allocation",
                    format!("must be 0 (unlimited) or {lo} to {hi} bytes per second (got {rate})"),
                ));
            }
        }
        Ok(())
    }

    /// The file model of this config; with `redact`, secrets become `"<redacted>"`.
    fn to_file(&self, redact: bool) -> FileConfig {
        let show = |s: &Secret| {
            if redact {
                REDACTED.to_owned()
            } else {
                s.expose().to_owned()
            }
        };
        FileConfig {
            server: ServerFile {
                listen: display_all(&self.listen),
                realm: self.realm.clone(),
                software: self.software.clone().unwrap_or_default(),
                workers: self.workers,
                log_format: self.log_format,
                alternate_servers: display_all(&self.alternate_servers),
                drain_alternate_servers: display_all(&self.drain_alternate_servers),
            },
            auth: AuthFile {
                secrets: self.secrets.iter().map(show).collect(),
                separator: self.separator.to_string(),
                nonce_lifetime_secs: self.nonce_lifetime.as_secs(),
                credential_ttl_secs: self.credential_ttl.as_secs(),
                users: self
                    .static_users
                    .iter()
                    .map(|(n, p)| (n.clone(), show(p)))
                    .collect(),
            },
            relay: RelayFile {
                ips: display_all(&self.relay_ips),
                external_ip: self.external_ip.map(|a| a.to_string()).unwrap_or_default(),
                external_ip_map: self
                    .external_ip_map
                    .iter()
                    .map(|(private, public)| format!("{private}={public}"))
                    .collect(),
                min_port: *self.port_range.start(),
                max_port: *self.port_range.end(),
                allow_peers: display_all(&self.allow_peers),
                deny_peers: display_all(&self.deny_peers),
                xdp_interface: self.xdp_interface.clone().unwrap_or_default(),
                xdp_mode: self.xdp_mode,
            },
            limits: LimitsFile {
                default_lifetime_secs: self.default_lifetime.as_secs(),
                max_lifetime_secs: self.max_lifetime.as_secs(),
                max_allocations: self.max_allocations,
                max_allocations_per_user: self.max_allocations_per_user,
                max_permissions_per_allocation: self.max_permissions_per_allocation,
                max_channels_per_allocation: self.max_channels_per_allocation,
                bandwidth_per_allocation: self.bandwidth_per_allocation.unwrap_or(0),
                max_connections: self.max_connections,
                max_connections_per_source: self.max_connections_per_source,
                max_challenges_per_sec: self.max_challenges_per_sec,
            },
            api: ApiFile {
                listen: self.api_listen.to_string(),
                tokens: self.api_tokens.iter().map(show).collect(),
                uris: self.api_uris.clone(),
                max_ttl_secs: self.api_max_ttl.as_secs(),
                cors_origins: self.api_cors_origins.clone(),
                test_page: self.api_test_page,
                request_timeout_secs: self.api_request_timeout.as_secs(),
                max_connections: self.api_max_connections,
                max_connections_per_source: self.api_max_connections_per_source,
                revocations_file: path_string(&self.revocations_file),
            },
            tls: TlsFile {
                listen: display_all(&self.tls_listen),
                cert: path_string(&self.tls_cert),
                key: path_string(&self.tls_key),
            },
            usage: UsageFile {
                log: self.usage.log,
                file: path_string(&self.usage.file),
                webhook_url: self.usage.webhook_url.clone().unwrap_or_default(),
                webhook_timeout_secs: self.usage.webhook_timeout.as_secs(),
                queue_size: self.usage.queue_size,
            },
        }
    }

    /// The effective configuration as TOML, secrets shown as `"<redacted>"` (printed by
    /// `turnpike check-config`). It parses back to this config apart from the secrets.
    pub fn render_effective(&self) -> String {
        let body = toml::to_string(&self.to_file(true))
            .unwrap_or_else(|e| format!("# cannot render the effective config: {e}\n"));
        format!("# turnpike effective configuration (secrets redacted; workers resolved)\n\n{body}")
    }

    /// Settings worth a startup warning (STYLE §4: risky knobs are loud): peers opened
    /// inside loopback or private ranges, and an HTTP API beyond loopback without a token.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for allowed in &self.allow_peers {
            for (range, what) in RISKY_PEER_RANGES {
                let range: IpNet = range.parse().expect("valid built-in CIDR");
                if allowed.contains(&range.network()) || range.contains(&allowed.network()) {
                    out.push(format!(
                        "relay.allow_peers opens {allowed}, which overlaps {range} ({what}): \
                         clients holding credentials can relay into it"
                    ));
                }
            }
        }
        // With a secret set, the core treats such a name as a REST credential
        // (`auth::rest_expiry`), so the static password is never looked at.
        for (name, _) in &self.static_users {
            if let Some(expiry) = crate::proto::auth::rest_expiry(name, self.separator) {
                out.push(format!(
                    "auth.users: `{name}` parses as a REST username (expiry {expiry}, separator \
                     `{sep}`), so it is checked as a REST credential and its static password is \
                     refused whenever auth.secrets is set; rename it",
                    sep = self.separator
                ));
            }
        }
        if !self.api_listen.ip().is_loopback() && self.api_tokens.is_empty() {
            out.push(format!(
                "api.listen {} is not loopback and api.tokens is empty: anyone who can reach \
                 it can mint TURN credentials",
                self.api_listen
            ));
        }
        out
    }

    /// The keys that differ between this (running) configuration and `fresh` but only take
    /// effect at restart: a reload keeps the sockets, threads and logger it started with.
    pub fn changes_needing_restart(&self, fresh: &Config) -> Vec<&'static str> {
        let changed = [
            ("server.listen", self.listen != fresh.listen),
            ("server.workers", self.workers != fresh.workers),
            ("server.log_format", self.log_format != fresh.log_format),
            ("relay.ips", self.relay_ips != fresh.relay_ips),
            (
                "relay.xdp_interface",
                self.xdp_interface != fresh.xdp_interface,
            ),
            ("relay.xdp_mode", self.xdp_mode != fresh.xdp_mode),
            (
                "limits.max_connections",
                self.max_connections != fresh.max_connections,
            ),
            (
                "limits.max_connections_per_source",
                self.max_connections_per_source != fresh.max_connections_per_source,
            ),
            ("api.listen", self.api_listen != fresh.api_listen),
            (
                "api.request_timeout_secs",
                self.api_request_timeout != fresh.api_request_timeout,
            ),
            (
                "api.max_connections",
                self.api_max_connections != fresh.api_max_connections,
            ),
            (
                "api.max_connections_per_source",
                self.api_max_connections_per_source != fresh.api_max_connections_per_source,
            ),
            ("tls.listen", self.tls_listen != fresh.tls_listen),
            ("usage.log", self.usage.log != fresh.usage.log),
            ("usage.file", self.usage.file != fresh.usage.file),
            (
                "usage.webhook_url",
                self.usage.webhook_url != fresh.usage.webhook_url,
            ),
            (
                "usage.webhook_timeout_secs",
                self.usage.webhook_timeout != fresh.usage.webhook_timeout,
            ),
            (
                "usage.queue_size",
                self.usage.queue_size != fresh.usage.queue_size,
            ),
        ];
        changed
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key))
            .collect()
    }
}

/// Ranges whose opening through `allow_peers` deserves a warning.
const RISKY_PEER_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "RFC 1918 private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, including cloud metadata"),
    ("172.16.0.0/12", "RFC 1918 private"),
    ("192.168.0.0/16", "RFC 1918 private"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
];

/// Parse every item of a list key, dropping repeats; errors name the key.
fn parse_list<T: PartialEq>(
    src: &Sources<'_>,
    key: &str,
    items: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let mut out = Vec::new();
    for item in items {
        extend_unique(&mut out, [parse(item).map_err(|m| src.error(key, m))?]);
    }
    Ok(out)
}

fn display_all<T: fmt::Display>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn unique_secrets(items: Vec<String>) -> Vec<Secret> {
    let mut out = Vec::new();
    extend_unique(&mut out, items.into_iter().map(Secret));
    out
}

fn redact_flag(_secret: &str) -> String {
    REDACTED.to_owned()
}

fn path_string(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn example_parses_to_defaults() {
        assert_eq!(load(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(load("").unwrap(), Config::default());
        assert_eq!(load("[server]\n[relay]\n").unwrap(), Config::default());
    }

    #[test]
    fn schema_matches_file_model() {
        let table = toml::Table::try_from(FileConfig::default()).unwrap();
        let from_model: BTreeSet<String> = table
            .iter()
            .flat_map(|(s, v)| {
                let keys = v.as_table().unwrap().keys();
                keys.map(move |k| format!("{s}.{k}"))
            })
            .collect();
        let from_schema: BTreeSet<String> = SCHEMA
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| format!("{s}.{k}")))
            .collect();
        assert_eq!(from_model, from_schema);
        // And the example documents every key.
        let doc = index_document(EXAMPLE, "example").unwrap();
        for key in &from_schema {
            assert!(doc.keys.contains_key(key), "example lacks {key}");
        }
    }

    #[test]
    fn unknown_key_names_key_section_and_line() {
        let e = err("[server]\nrealm = \"x\"\nfoo = 1\n");
        assert!(e.contains("unknown key `foo` in [server] at line 3"), "{e}");
        let e = err("\n[limits]\nmax_lifetime_secs = 60\n[sever]\nrealm = \"x\"\n");
        assert!(e.contains("unknown key `sever`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        // The first problem in the file is reported, not the first alphabetically.
        let e = err("[server]\nzzz = 1\naaa = 2\n");
        assert!(e.contains("`zzz`") && e.contains("line 2"), "{e}");
        let e = err("[relay]\nallow_peer = []\n");
        assert!(e.contains("allow_peers"), "expected keys listed: {e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let e = err("[relay]\n\nmin_port = \"high\"\n");
        assert!(e.contains("relay.min_port (line 3)"), "{e}");
        let e = err("[relay]\nmax_port = 70000\n");
        assert!(e.contains("relay.max_port (line 2)"), "{e}");
        let e = err("[server]\nlog_format = \"xml\"\n");
        assert!(e.contains("server.log_format (line 2)"), "{e}");
        let e = err("server = 3\n");
        assert!(e.contains("server") && e.contains("table"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[server]\nrealm = \n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn min_port_above_max_port_names_key() {
        let text = "[relay]\n# ports\n\n\n\n\n\n\n\n\n\nmin_port = 60000\nmax_port = 50000\n";
        let e = err(text);
        assert!(
            e.contains("relay.min_port (line 12): must be <= relay.max_port"),
            "{e}"
        );
        // Only max_port set: blame it.
        let e = err("[relay]\nmax_port = 1000\n");
        assert!(e.contains("relay.max_port (line 2): must be >="), "{e}");
        let e = err("[relay]\nmin_port = 0\n");
        assert!(e.contains("relay.min_port"), "{e}");
    }

    #[test]
    fn lifetimes_checked() {
        let e = err("[limits]\ndefault_lifetime_secs = 7200\n");
        assert!(e.contains("limits.default_lifetime_secs (line 2)"), "{e}");
        let e = err("[limits]\nmax_lifetime_secs = 60\n");
        assert!(e.contains("limits.max_lifetime_secs (line 2)"), "{e}");
    }

    #[test]
    fn bad_values_name_key() {
        let e = err("[relay]\nallow_peers = [\"10.0.0.0/8\", \"1.2.3\"]\n");
        assert!(
            e.contains("relay.allow_peers (line 2)") && e.contains("1.2.3"),
            "{e}"
        );
        let e = err("[relay]\ndeny_peers = [\"10.0.0.0/33\"]\n");
        assert!(e.contains("relay.deny_peers"), "{e}");
        let e = err("[server]\nlisten = [\"localhost\"]\n");
        assert!(e.contains("server.listen (line 2)"), "{e}");
        let e = err("[auth]\nseparator = \"ab\"\n");
        assert!(e.contains("auth.separator (line 2)"), "{e}");
        let e = err("[auth]\nseparator = \"x\"\n");
        assert!(e.contains("auth.separator"), "{e}");
        let e = err("[relay]\nexternal_ip = \"0.0.0.0\"\n");
        assert!(e.contains("relay.external_ip"), "{e}");
        let e = err("[tls]\nlisten = [\"0.0.0.0:5349\"]\n");
        assert!(e.contains("tls.listen (line 2)"), "{e}");
        let e = err("[tls]\ncert = \"c.pem\"\n");
        assert!(e.contains("tls.cert"), "{e}");
        let e = err("[server]\nrealm = \"\"\n");
        assert!(e.contains("server.realm"), "{e}");
        let e = err("[auth.users]\nbob = \"\"\n");
        assert!(e.contains("auth.users.bob (line 2)"), "{e}");
    }

    #[test]
    fn full_file_converts() {
        let c = load(
            r#"
            [server]
            listen = ["127.0.0.1:3478", "[::1]:3478", "127.0.0.1:3478"]
            software = ""
            workers = 3
            log_format = "json"
            [auth]
            secrets = ["one", "two"]
            separator = "-"
            [auth.users]
            bob = "pw2"
            alice = "pw1"
            [relay]
            ips = ["192.0.2.10"]
            external_ip = "203.0.113.7"
            min_port = 40000
            max_port = 40100
            allow_peers = ["127.0.0.1", "10.1.2.3/8", "::1"]
            [limits]
            bandwidth_per_allocation = 125000
            [tls]
            listen = ["0.0.0.0:5349"]
            cert = "/etc/turnpike/cert.pem"
            key = "/etc/turnpike/key.pem"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2, "duplicates dropped");
        assert_eq!(c.software, None);
        assert_eq!(c.workers, 3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.secrets[0].expose(), "one");
        assert_eq!(c.separator, '-');
        assert_eq!(c.static_users[0].0, "alice");
        assert_eq!(c.static_users[1].1.expose(), "pw2");
        assert_eq!(c.external_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(c.port_range, 40000..=40100);
        let peers: Vec<String> = c.allow_peers.iter().map(|n| n.to_string()).collect();
        assert_eq!(peers, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        assert_eq!(c.bandwidth_per_allocation, Some(125_000));
        assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/turnpike/cert.pem")));
        assert_eq!(c.warnings().len(), 3, "{:?}", c.warnings());
    }

    #[test]
    fn flags_add_to_lists_and_override_scalars() {
        let text = "[server]\nlisten = [\"127.0.0.1:3478\"]\nrealm = \"file\"\n\
                    [auth]\nsecrets = [\"file-secret\"]\n[relay]\nallow_peers = [\"10.0.0.0/8\"]\n";
        let dir = std::env::temp_dir().join(format!("turnpike-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flags.toml");
        std::fs::write(&path, text).unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            listen: vec!["127.0.0.1:3479".parse().unwrap()],
            realm: Some("flag".into()),
            auth_secret: vec!["flag-secret".into()],
            allow_peer: vec!["192.168.1.1".into()],
            min_port: Some(50000),
            max_port: Some(50010),
            workers: Some(2),
            bandwidth_per_allocation: Some(0),
            user: vec!["carol=pw".into()],
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:3478".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:3479".parse().unwrap()
            ]
        );
        assert_eq!(c.realm, "flag");
        let secrets: Vec<&str> = c.secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["file-secret", "flag-secret"]);
        assert_eq!(c.allow_peers.len(), 2);
        assert_eq!(c.port_range, 50000..=50010);
        assert_eq!(c.workers, 2);
        assert_eq!(c.bandwidth_per_allocation, None);
        assert_eq!(c.static_users[0].0, "carol");
    }

    #[test]
    fn list_flags_replace_builtin_defaults() {
        let args = RunArgs {
            listen: vec!["127.0.0.1:40000".parse().unwrap()],
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:40000".parse().unwrap()]);
        // Same through apply_flags on a config whose listen is still the default.
        let mut c = Config::default();
        c.apply_flags(&args).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:40000".parse().unwrap()]);
        // But a file's list is extended.
        let mut c = load("[server]\nlisten = [\"127.0.0.1:1\"]\n").unwrap();
        c.apply_flags(&args).unwrap();
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn flag_errors_name_the_flag() {
        let bad = |args: RunArgs| Config::load(None, &args).unwrap_err().to_string();
        let e = bad(RunArgs {
            allow_peer: vec!["1.2.3".into()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--allow-peer 1.2.3: "), "{e}");
        assert!(e.contains("not a CIDR or IP"), "{e}");
        let e = bad(RunArgs {
            min_port: Some(60000),
            max_port: Some(50000),
            ..RunArgs::default()
        });
        assert!(
            e.starts_with("--min-port 60000: must be <= relay.max_port (50000)"),
            "{e}"
        );
        let e = bad(RunArgs {
            max_port: Some(1000),
            ..RunArgs::default()
        });
        assert!(e.starts_with("--max-port 1000: must be >="), "{e}");
        let e = bad(RunArgs {
            separator: Some("ab".into()),
            ..RunArgs::default()
        });
        assert!(e.starts_with("--separator ab: "), "{e}");
        let e = bad(RunArgs {
            user: vec!["nopassword".into()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--user nopassword: "), "{e}");
        let e = bad(RunArgs {
            tls_listen: vec!["0.0.0.0:5349".parse().unwrap()],
            ..RunArgs::default()
        });
        assert!(
            e.starts_with("--tls-listen 0.0.0.0:5349: needs tls.cert"),
            "{e}"
        );
        let e = bad(RunArgs {
            config: Some(PathBuf::from("/nonexistent/turnpike.toml")),
            ..RunArgs::default()
        });
        assert!(e.contains("/nonexistent/turnpike.toml"), "{e}");
    }

    #[test]
    fn flags_fix_file_errors() {
        // As a file could say; a flag repairs it.
        let mut c = Config {
            port_range: RangeInclusive::new(60000, 50000),
            ..Config::default()
        };
        let args = RunArgs {
            max_port: Some(65000),
            ..RunArgs::default()
        };
        c.apply_flags(&args).unwrap();
        assert_eq!(c.port_range, 60000..=65000);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let c = Config {
            secrets: vec![s.clone()],
            static_users: vec![("u".into(), Secret::from("pw-xyz"))],
            ..Config::default()
        };
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("pw-xyz"),
            "{debug}"
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn render_effective_redacts_and_round_trips() {
        let c = load(
            "[auth]\nsecrets = [\"s3cret\"]\n[auth.users]\nbob = \"pw-xyz\"\n\
             [api]\ntokens = [\"tok-abc\"]\n[relay]\nallow_peers = [\"10.0.0.1\"]\n",
        )
        .unwrap();
        let text = c.render_effective();
        for secret in ["s3cret", "pw-xyz", "tok-abc"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains(REDACTED), "{text}");
        let back = load(&text).unwrap();
        let redacted = Secret::from(REDACTED);
        assert_eq!(
            back,
            Config {
                secrets: vec![redacted.clone()],
                static_users: vec![("bob".into(), redacted.clone())],
                api_tokens: vec![redacted],
                ..c
            }
        );
        assert_eq!(
            load(&Config::default().render_effective()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn peer_nets() {
        assert_eq!(
            parse_peer_net("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(parse_peer_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_peer_net("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(parse_peer_net("10.0.0.0-10.0.0.5").is_err());
        assert!(parse_peer_net("").is_err());
    }

    #[test]
    fn api_keys() {
        let c = load(
            "[api]\nuris = [\"turn:turn.example.com:3478?transport=udp\", \"stun:[2001:db8::1]:3478\"]\n\
             max_ttl_secs = 172800\ncors_origins = [\"https://App.example.com\", \"http://localhost:3000\"]\n",
        )
        .unwrap();
        assert_eq!(c.api_uris.len(), 2);
        assert_eq!(c.api_max_ttl, Duration::from_secs(172_800));
        assert_eq!(
            c.api_cors_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert_eq!(load(&c.render_effective()).unwrap(), c);

        let e = err("[api]\nuris = [\"http://x\"]\n");
        assert!(e.contains("api.uris (line 2)"), "{e}");
        let e = err("[api]\ncors_origins = [\"https://a.example/path\"]\n");
        assert!(e.contains("api.cors_origins (line 2)"), "{e}");
        let e = err("[api]\nmax_ttl_secs = 0\n");
        assert!(e.contains("api.max_ttl_secs (line 2): must be 1 to"), "{e}");
        let e = err("[api]\nmax_ttl_secs = 60\n");
        assert!(
            e.contains("api.max_ttl_secs (line 2): must be >= auth.credential_ttl_secs"),
            "{e}"
        );

        let args = RunArgs {
            api_uri: vec!["turns:turn.example.com:443?transport=tcp".into()],
            api_cors_origin: vec!["https://app.example.com".into()],
            api_max_ttl_secs: Some(90_000),
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        assert_eq!(c.api_uris, ["turns:turn.example.com:443?transport=tcp"]);
        assert_eq!(c.api_cors_origins, ["https://app.example.com"]);
        assert_eq!(c.api_max_ttl, Duration::from_secs(90_000));
        let bad = |args: RunArgs| Config::load(None, &args).unwrap_err().to_string();
        let e = bad(RunArgs {
            api_uri: vec!["turn:".into()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--api-uri turn:: "), "{e}");
        let e = bad(RunArgs {
            api_cors_origin: vec!["*".into()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--api-cors-origin *: "), "{e}");
        let e = bad(RunArgs {
            api_max_ttl_secs: Some(10),
            ..RunArgs::default()
        });
        assert!(e.starts_with("--api-max-ttl-secs 10: must be >="), "{e}");
    }

    #[test]
    fn alternate_servers_key_and_flag() {
        let c = load(
            "[server]\nalternate_servers = [\"192.0.2.20:3478\", \"[2001:db8::20]:3478\", \"192.0.2.20:3478\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.alternate_servers,
            vec![
                "192.0.2.20:3478".parse::<SocketAddr>().unwrap(),
                "[2001:db8::20]:3478".parse().unwrap()
            ],
            "duplicates dropped"
        );
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        assert!(c
            .render_effective()
            .contains("alternate_servers = [\"192.0.2.20:3478\", \"[2001:db8::20]:3478\"]"));

        let e = err("[server]\n\nalternate_servers = [\"192.0.2.20\"]\n");
        assert!(e.contains("server.alternate_servers (line 3)"), "{e}");
        let e = err("[server]\nalternate_servers = [\"192.0.2.20:0\"]\n");
        assert!(
            e.contains("server.alternate_servers (line 2)") && e.contains("port"),
            "{e}"
        );
        let e = err("[server]\nalternate_servers = [\"0.0.0.0:3478\"]\n");
        assert!(e.contains("server.alternate_servers (line 2)"), "{e}");
        let e = err(
            "[server]\nlisten = [\"192.0.2.1:3478\"]\nalternate_servers = [\"192.0.2.1:3478\"]\n",
        );
        assert!(
            e.contains("server.alternate_servers (line 3)") && e.contains("loop"),
            "{e}"
        );

        let args = RunArgs {
            alternate_server: vec![
                "127.0.0.1:3999".parse().unwrap(),
                "127.0.0.1:4000".parse().unwrap(),
            ],
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        assert_eq!(c.alternate_servers.len(), 2);
        let bad = |args: RunArgs| Config::load(None, &args).unwrap_err().to_string();
        let e = bad(RunArgs {
            alternate_server: vec!["127.0.0.1:0".parse().unwrap()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--alternate-server 127.0.0.1:0: "), "{e}");
        let e = bad(RunArgs {
            listen: vec!["127.0.0.1:3478".parse().unwrap()],
            alternate_server: vec!["127.0.0.1:3478".parse().unwrap()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--alternate-server 127.0.0.1:3478: "), "{e}");
    }

    #[test]
    fn external_ip_map_key_and_flag() {
        let c = load(
            "[relay]\nexternal_ip = \"203.0.113.1\"\n\
             external_ip_map = [\"10.0.0.5=203.0.113.5\", \" fd00::5 = 2001:db8::5 \"]\n",
        )
        .unwrap();
        assert_eq!(
            c.external_ip_map,
            vec![
                (
                    "10.0.0.5".parse::<IpAddr>().unwrap(),
                    "203.0.113.5".parse::<IpAddr>().unwrap()
                ),
                ("fd00::5".parse().unwrap(), "2001:db8::5".parse().unwrap()),
            ]
        );
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        assert!(c.render_effective().contains("\"10.0.0.5=203.0.113.5\""));

        let e = err("[relay]\nexternal_ip_map = [\"10.0.0.5=2001:db8::5\"]\n");
        assert!(
            e.contains("relay.external_ip_map (line 2)") && e.contains("families"),
            "{e}"
        );
        let e = err("[relay]\nexternal_ip_map = [\"10.0.0.5\"]\n");
        assert!(e.contains("relay.external_ip_map (line 2)"), "{e}");
        let e = err("[relay]\nexternal_ip_map = [\"10.0.0.5=0.0.0.0\"]\n");
        assert!(e.contains("relay.external_ip_map (line 2)"), "{e}");
        let e = err(
            "[relay]\n\nexternal_ip_map = [\"10.0.0.5=203.0.113.5\", \"10.0.0.5=203.0.113.6\"]\n",
        );
        assert!(
            e.contains("relay.external_ip_map (line 3)") && e.contains("mapped twice"),
            "{e}"
        );

        let args = RunArgs {
            external_ip_map: vec!["10.77.0.2=203.0.113.77".into()],
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        assert_eq!(
            c.external_ip_map,
            [(
                "10.77.0.2".parse().unwrap(),
                "203.0.113.77".parse().unwrap()
            )]
        );
        let bad = |args: RunArgs| Config::load(None, &args).unwrap_err().to_string();
        let e = bad(RunArgs {
            external_ip_map: vec!["10.0.0.1=::1".into()],
            ..RunArgs::default()
        });
        assert!(e.starts_with("--external-ip-map 10.0.0.1=::1: "), "{e}");
        let e = bad(RunArgs {
            external_ip_map: vec!["10.0.0.1=192.0.2.1".into(), "10.0.0.1=192.0.2.2".into()],
            ..RunArgs::default()
        });
        assert!(
            e.starts_with("--external-ip-map 10.0.0.1=192.0.2.2: ") && e.contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn connection_limits_key_and_flag() {
        let c = load("[limits]\nmax_connections = 500\nmax_connections_per_source = 8\n").unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_source), (500, 8));
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        let e = err("[limits]\nmax_connections = 0\n");
        assert!(
            e.contains("limits.max_connections (line 2): must be 1 to"),
            "{e}"
        );
        let e = err("[limits]\n\nmax_connections_per_source = 0\n");
        assert!(
            e.contains("limits.max_connections_per_source (line 3): must be 1 to"),
            "{e}"
        );
        let e = err("[limits]\nmax_connections = -1\n");
        assert!(e.contains("limits.max_connections (line 2)"), "{e}");

        let args = RunArgs {
            max_connections: Some(100),
            max_connections_per_source: Some(4),
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_source), (100, 4));
        let e = Config::load(
            None,
            &RunArgs {
                max_connections_per_source: Some(0),
                ..RunArgs::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--max-connections-per-source 0: must be 1 to"),
            "{e}"
        );
    }

    #[test]
    fn usage_keys() {
        let dir = std::env::temp_dir().join(format!("turnpike-usage-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("usage.jsonl");
        let c = load(&format!(
            "[usage]\nlog = false\nfile = {:?}\nwebhook_url = \"https://billing.example/turn?token=x\"\n\
             webhook_timeout_secs = 2\nqueue_size = 5\n",
            file.display()
        ))
        .unwrap();
        assert_eq!(
            c.usage,
            UsageConfig {
                log: false,
                file: Some(file.clone()),
                webhook_url: Some("https://billing.example/turn?token=x".to_owned()),
                webhook_timeout: Duration::from_secs(2),
                queue_size: 5,
            }
        );
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        // check-config only looks: the file is not created.
        assert!(!file.exists());
        for (text, expected) in [
            ("[usage]\nqueue_size = 0\n", "usage.queue_size (line 2): must be 1 to 1000000"),
            ("[usage]\n\nqueue_size = 1000001\n", "usage.queue_size (line 3): must be 1 to"),
            ("[usage]\nwebhook_timeout_secs = 0\n", "usage.webhook_timeout_secs (line 2): must be 1 to 60 seconds"),
            ("[usage]\nwebhook_url = \"ftp://x.example/\"\n", "usage.webhook_url (line 2): \"ftp://x.example/\" is not an http:// or https:// URL"),
            ("[usage]\nwebhook_url = \"billing.example\"\n", "usage.webhook_url (line 2): \"billing.example\" is not an http"),
            ("[usage]\nwebhook_url = \"http://u:p@x.example/\"\n", "usage.webhook_url (line 2): no user name or password"),
            ("[usage]\nwebhook_url = \"http://x.example:0/\"\n", "usage.webhook_url (line 2): bad port"),
            ("[usage]\nfile = \"/nonexistent-turnpike-dir/u.jsonl\"\n", "usage.file (line 2): directory /nonexistent-turnpike-dir: No such file"),
        ] {
            let e = err(text);
            assert!(e.contains(expected), "{text}: {e}");
        }
        let e = err(&format!("[usage]\nfile = {:?}\n", dir.display()));
        assert!(
            e.contains("usage.file (line 2): ") && e.contains("is a directory"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn numeric_keys_are_bounded_in_files_and_flags() {
        for (text, wanted) in [
            (
                "[limits]\nmax_lifetime_secs = 18446744073709551615\n",
                "limits.max_lifetime_secs (line 2): must be 1 to 604800 seconds (got 18446744073709551615)",
            ),
            (
                "[limits]\ndefault_lifetime_secs = 4294967296\nmax_lifetime_secs = 4294967296\n",
                "limits.default_lifetime_secs (line 2): must be 1 to 604800 seconds",
            ),
            (
                "[server]\nworkers = 1025\n",
                "server.workers (line 2): must be 0 (one per CPU core) to 1024 (got 1025)",
            ),
            (
                "[limits]\nbandwidth_per_allocation = 999\n",
                "limits.bandwidth_per_allocation (line 2): must be 0 (unlimited) or 1000",
            ),
            (
                "[relay]\nmin_port = 0\n",
                "relay.min_port (line 2): must be 1 to 65535 (got 0)",
            ),
            (
                "[limits]\nmax_channels_per_allocation = 16385\n",
                "limits.max_channels_per_allocation (line 2): must be 1 to 16384",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(wanted), "{e}");
        }
        assert_eq!(
            load("[limits]\ndefault_lifetime_secs = 604800\nmax_lifetime_secs = 604800\n")
                .unwrap()
                .max_lifetime,
            Duration::from_secs(MAX_ALLOCATION_LIFETIME_SECS)
        );
        let bad = |args: RunArgs| Config::load(None, &args).unwrap_err().to_string();
        let e = bad(RunArgs {
            max_lifetime_secs: Some(u64::MAX),
            ..RunArgs::default()
        });
        assert!(
            e.starts_with("--max-lifetime-secs 18446744073709551615: must be 1 to 604800"),
            "{e}"
        );
        let e = bad(RunArgs {
            workers: Some(usize::MAX),
            ..RunArgs::default()
        });
        assert!(e.starts_with("--workers "), "{e}");
        // apply_flags checks the flags it applies too.
        let mut c = Config::default();
        let e = c
            .apply_flags(&RunArgs {
                nonce_lifetime_secs: Some(86_401),
                ..RunArgs::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--nonce-lifetime-secs 86401: must be 1 to 86400"),
            "{e}"
        );
        assert!(Config::default().check_ranges(&Sources::default()).is_ok());
    }

    #[test]
    fn rest_shaped_static_users_warn() {
        let c = load(
            "[auth.users]\n\"4102444800:bob\" = \"pw\"\n\"carol:4102444800\" = \"pw\"\n\
             alice = \"pw\"\n\"dave:x\" = \"pw\"\n",
        )
        .unwrap();
        let warnings = c.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("auth.users: `4102444800:bob` parses as a REST username"));
        assert!(warnings[1].starts_with("auth.users: `carol:4102444800` parses"));
        // The separator decides: with `|`, `4102444800:bob` is an ordinary name.
        let c =
            load("[auth]\nseparator = \"|\"\n[auth.users]\n\"4102444800:bob\" = \"pw\"\n").unwrap();
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn changes_needing_restart_are_listed() {
        let running = Config::default();
        assert!(running.changes_needing_restart(&running.clone()).is_empty());
        let fresh = Config {
            listen: vec!["127.0.0.1:3479".parse().unwrap()],
            workers: running.workers + 1,
            api_listen: "127.0.0.1:8081".parse().unwrap(),
            // Reloadable: not listed.
            max_allocations: 5,
            secrets: vec![Secret::from("new")],
            ..running.clone()
        };
        assert_eq!(
            running.changes_needing_restart(&fresh),
            ["server.listen", "server.workers", "api.listen"]
        );
    }

    #[test]
    fn api_connection_bounds_key_and_flag() {
        let c = load(
            "[api]\nrequest_timeout_secs = 3\nmax_connections = 40\nmax_connections_per_source = 5\n",
        )
        .unwrap();
        assert_eq!(c.api_request_timeout, Duration::from_secs(3));
        assert_eq!(
            (c.api_max_connections, c.api_max_connections_per_source),
            (40, 5)
        );
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        for (text, expected) in [
            (
                "[api]\nrequest_timeout_secs = 0\n",
                "api.request_timeout_secs (line 2): must be 1 to 3600 seconds (got 0)",
            ),
            (
                "[api]\nrequest_timeout_secs = 3601\n",
                "api.request_timeout_secs (line 2): must be 1 to 3600 seconds (got 3601)",
            ),
            (
                "[api]\n\nmax_connections = 0\n",
                "api.max_connections (line 3): must be 1 to 1000000 (got 0)",
            ),
            (
                "[api]\nmax_connections_per_source = 0\n",
                "api.max_connections_per_source (line 2): must be 1 to 1000000 (got 0)",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(expected), "{e}");
        }

        let args = RunArgs {
            api_request_timeout_secs: Some(2),
            api_max_connections: Some(16),
            api_max_connections_per_source: Some(4),
            ..RunArgs::default()
        };
        let c = Config::load(None, &args).unwrap();
        assert_eq!(c.api_request_timeout, Duration::from_secs(2));
        assert_eq!(
            (c.api_max_connections, c.api_max_connections_per_source),
            (16, 4)
        );
        let e = Config::load(
            None,
            &RunArgs {
                api_request_timeout_secs: Some(0),
                ..RunArgs::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--api-request-timeout-secs 0: must be 1 to 3600 seconds"),
            "{e}"
        );
    }

    #[test]
    fn challenge_cap_key_and_flag() {
        assert_eq!(Config::default().max_challenges_per_sec, 5_000);
        let c = load("[limits]\nmax_challenges_per_sec = 200\n").unwrap();
        assert_eq!(c.max_challenges_per_sec, 200);
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        let e = err("[limits]\n\nmax_challenges_per_sec = 0\n");
        assert!(
            e.contains("limits.max_challenges_per_sec (line 3): must be 1 to 1000000 (got 0)"),
            "{e}"
        );
        let args = RunArgs {
            max_challenges_per_sec: Some(7),
            ..RunArgs::default()
        };
        assert_eq!(Config::load(None, &args).unwrap().max_challenges_per_sec, 7);
        let e = Config::load(
            None,
            &RunArgs {
                max_challenges_per_sec: Some(0),
                ..RunArgs::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--max-challenges-per-sec 0: must be 1 to 1000000"),
            "{e}"
        );
    }

    #[test]
    fn default_warnings_are_empty() {
        assert!(Config::default().warnings().is_empty());
        let c = Config {
            api_listen: "0.0.0.0:8080".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(c.warnings().len(), 1);
    }

    #[test]
    fn ice_uris_are_checked_with_the_shared_syntax() {
        // Queries are the browser's to interpret; the host and port are checked.
        for ok in [
            "stun:stun.example.com:3478?transport=udp",
            "turn:[2001:db8::1]?transport=tcp",
            "TURNS:turn.example.com",
        ] {
            assert_eq!(parse_ice_uri(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "turn:host:0",
            "turn:host:99999",
            "turn:::1",
            "turn:[::1",
            "turn:a b",
        ] {
            let e = parse_ice_uri(bad).unwrap_err();
            assert!(e.starts_with(&format!("`{bad}`: ")), "{e}");
        }
    }
}
