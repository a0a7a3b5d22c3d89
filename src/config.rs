//! Configuration: one typed model of the TOML file, read by serde, with the command line
//! laid over it and the cross-key rules checked once in `validate`.
//!
//! Each `[section]` is a struct declared with `section!`: one field per key, with its type,
//! default, doc line, flag and whether a reload applies it. Addresses, networks, bounded
//! numbers and durations are types ([`Secs`], [`Count`], ...), so a value out of range does
//! not parse. The file is read with `deny_unknown_fields`; a flag's value goes through the
//! same `Deserialize` ([`FlagValue`]), so file and flag are checked alike, and errors name
//! the key and its line (toml's own spans, [`Doc`]) or the flag. Nothing downstream
//! re-checks a value.
//!
//! Adding a setting: a field in its section below, a line in config.example.toml, and the
//! code that uses it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::{DeTable, DeValue};

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

/// Shown instead of secrets by [`Config::render_effective`], `Debug` and errors.
const REDACTED: &str = "<redacted>";

// Bounds of the numeric keys, checked where a value is read (file, flags and reload alike)
// so that no value can overflow a timer, truncate an attribute or ask for absurd resources.

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
// Value types
// ---------------------------------------------------------------------------------

/// A secret string (REST shared secret, static password, API token). `Debug` and
/// `Serialize` never show it; call [`Secret::expose`] where the bytes are really needed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
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

/// Always `"<redacted>"`: the effective config (`check-config`) and error messages are
/// rendered by serializing, and neither may show a secret.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How the XDP program is attached (`relay.xdp_mode`, `--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// The driver's native XDP where it has one, else the kernel's generic (skb) XDP.
    #[default]
    Auto,
    /// Native XDP only: fall back to userspace if the driver lacks it.
    Driver,
    /// Generic XDP (after the skb is built): works on any interface, saves less.
    Generic,
}

/// `value` if it is in `lo..=hi`, else the message every bound error uses.
fn bounded(
    value: u64,
    lo: impl fmt::Display,
    range: RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "must be {lo} to {}{unit} (got {value})",
            range.end()
        ))
    }
}

/// A number of seconds in `1..=MAX`, used as a [`Duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct Secs<const MAX: u64>(u64);

impl<const MAX: u64> Secs<MAX> {
    /// Panics outside `1..=MAX`; for defaults (`Config::default` is tested).
    pub const fn new(secs: u64) -> Self {
        assert!(secs >= 1 && secs <= MAX, "seconds out of range");
        Secs(secs)
    }

    pub const fn get(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl<const MAX: u64> TryFrom<u64> for Secs<MAX> {
    type Error = String;

    fn try_from(secs: u64) -> Result<Self, String> {
        bounded(secs, 1, 1..=MAX, " seconds").map(Secs)
    }
}

/// A count in `1..=MAX` (allocations, connections, records, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct Count<const MAX: usize>(usize);

impl<const MAX: usize> Count<MAX> {
    /// Panics outside `1..=MAX`; for defaults (`Config::default` is tested).
    pub const fn new(count: usize) -> Self {
        assert!(count >= 1 && count <= MAX, "count out of range");
        Count(count)
    }

    pub const fn get(self) -> usize {
        self.0
    }
}

impl<const MAX: usize> TryFrom<u64> for Count<MAX> {
    type Error = String;

    fn try_from(count: u64) -> Result<Self, String> {
        let max = u64::try_from(MAX).unwrap_or(u64::MAX);
        let count = bounded(count, 1, 1..=max, "")?;
        // In range, so it fits.
        Ok(Count(usize::try_from(count).unwrap_or(MAX)))
    }
}

/// A relay port, `1..=65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct Port(u16);

impl Port {
    /// Panics on 0; for defaults.
    pub const fn new(port: u16) -> Self {
        assert!(port != 0, "port 0");
        Port(port)
    }

    pub const fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u64> for Port {
    type Error = String;

    fn try_from(port: u64) -> Result<Self, String> {
        let port = bounded(port, 1, 1..=u16::MAX.into(), "")?;
        Ok(Port(u16::try_from(port).unwrap_or(u16::MAX)))
    }
}

/// `server.workers`: 0 = one per CPU core, else `1..=MAX_WORKERS` threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct Workers(usize);

impl Workers {
    /// One worker per CPU core (DESIGN "Shape"): workers share nothing on the packet path.
    pub const PER_CORE: Workers = Workers(0);

    /// The number of threads to start (never 0).
    pub fn get(self) -> usize {
        match self.0 {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
            n => n,
        }
    }
}

impl TryFrom<u64> for Workers {
    type Error = String;

    fn try_from(workers: u64) -> Result<Self, String> {
        let max = u64::try_from(MAX_WORKERS).unwrap_or(u64::MAX);
        let workers = bounded(workers, "0 (one per CPU core)", 0..=max, "")?;
        Ok(Workers(usize::try_from(workers).unwrap_or(MAX_WORKERS)))
    }
}

/// `limits.bandwidth_per_allocation`: 0 = unlimited, else bytes per second in
/// [`BANDWIDTH_RANGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct Bandwidth(u64);

impl Bandwidth {
    pub const UNLIMITED: Bandwidth = Bandwidth(0);

    /// Bytes per second per allocation and direction; `None` = unlimited.
    pub const fn get(self) -> Option<u64> {
        match self.0 {
            0 => None,
            rate => Some(rate),
        }
    }
}

impl TryFrom<u64> for Bandwidth {
    type Error = String;

    fn try_from(rate: u64) -> Result<Self, String> {
        if rate == 0 || BANDWIDTH_RANGE.contains(&rate) {
            return Ok(Bandwidth(rate));
        }
        let (lo, hi) = (BANDWIDTH_RANGE.start(), BANDWIDTH_RANGE.end());
        Err(format!(
            "must be 0 (unlimited) or {lo} to {hi} bytes per second (got {rate})"
        ))
    }
}

// ---------------------------------------------------------------------------------
// Settings: the section structs and what the command line and a reload need to know
// ---------------------------------------------------------------------------------

/// One key of the file: its flag and how the command line sets it. Declared by `section!`
/// next to the field, listed by [`Config::settings`].
#[derive(Debug)]
pub struct Setting {
    /// `"relay.min_port"`.
    pub key: &'static str,
    /// `"--min-port"`: the kebab-case of the key (with the section in front where a name is
    /// ambiguous, singular for lists).
    pub flag: &'static str,
    /// `"PORT"`, for `--help`.
    pub value_name: &'static str,
    /// The field's doc comment.
    pub help: &'static str,
    pub kind: FlagKind,
    /// A reload keeps what the process started with (sockets, threads, logger, sinks).
    pub restart: bool,
    /// Lays one flag value over the config; `replace`: drop what the list holds first.
    /// Returns the value as errors show it.
    apply: fn(&mut Config, &str, bool) -> Result<String, String>,
    differs: fn(&Config, &Config) -> bool,
    normalize: fn(&mut Config),
}

impl Setting {
    /// `"relay"` of `"relay.min_port"`.
    pub fn section(&self) -> &'static str {
        self.key
            .split_once('.')
            .map_or(self.key, |(section, _)| section)
    }
}

/// How a flag takes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// One value; it overrides the file.
    Value,
    /// `--flag` alone means true, `--flag=false` false.
    Switch,
    /// Repeatable; the values add to the file's list, or replace the built-in default when
    /// the file does not set the key.
    List,
}

/// How a key's type takes a flag's value and is tidied after loading.
trait SettingValue: Sized {
    const KIND: FlagKind = FlagKind::Value;

    fn overlay(&mut self, flag: Self, _replace: bool) {
        *self = flag;
    }

    fn normalize(&mut self) {}
}

macro_rules! scalar_settings {
    ($($ty:ty),*) => { $(impl SettingValue for $ty {})* };
}
scalar_settings!(String, char, SocketAddr, LogFormat, XdpMode, Workers, Port, Bandwidth);

impl<T> SettingValue for Option<T> {}

impl<const MAX: u64> SettingValue for Secs<MAX> {}

impl<const MAX: usize> SettingValue for Count<MAX> {}

impl SettingValue for bool {
    const KIND: FlagKind = FlagKind::Switch;
}

impl<T: PartialEq> SettingValue for Vec<T> {
    const KIND: FlagKind = FlagKind::List;

    fn overlay(&mut self, flag: Self, replace: bool) {
        if replace {
            self.clear();
        }
        extend_unique(self, flag);
    }

    /// Repeats dropped, the first occurrence kept in place.
    fn normalize(&mut self) {
        let items = std::mem::take(self);
        extend_unique(self, items);
    }
}

impl<V> SettingValue for BTreeMap<String, V> {
    const KIND: FlagKind = FlagKind::List;

    fn overlay(&mut self, flag: Self, replace: bool) {
        if replace {
            self.clear();
        }
        self.extend(flag);
    }
}

/// Declares a section: the struct (serde, `deny_unknown_fields`, every key optional), its
/// `Default` from the `= value` of each field, and a [`Setting`] per field. A field is
///
/// ```text
/// /// Doc line: the flag's --help and the field's rustdoc.
/// #[flag("--flag-name", "VALUE_NAME")]
/// #[restart]                  // optional: a reload does not apply it
/// #[serde(...)]               // optional: how the TOML form differs from the type's
/// // Why the default is what it is.
/// pub key_name: Type = default,
/// ```
macro_rules! section {
    (
        [$section:ident]
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                #[flag($flag:literal, $value_name:literal)]
                $(#[restart $($restart:tt)?])?
                $(#[serde($($serde:tt)*)])*
                pub $field:ident: $ty:ty = $default:expr,
            )*
        }
    ) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        $(#[$meta])*
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }

        impl $name {
            const SETTINGS: &'static [Setting] = &[$(
                Setting {
                    key: concat!(stringify!($section), ".", stringify!($field)),
                    flag: $flag,
                    value_name: $value_name,
                    help: concat!($($doc, "\n",)*),
                    kind: <$ty as SettingValue>::KIND,
                    restart: false $($($restart)? || true)?,
                    apply: |config, value, replace| {
                        let patch: $name = flag_patch(stringify!($field), value, $value_name)?;
                        let shown = shown(&patch, stringify!($field), value);
                        config.$section.$field.overlay(patch.$field, replace);
                        Ok(shown)
                    },
                    differs: |a, b| a.$section.$field != b.$section.$field,
                    normalize: |config| config.$section.$field.normalize(),
                },
            )*];
        }
    };
}

section! {
    [server]
    /// `[server]`: where STUN/TURN is served and how the server names itself.
    #[serde(expecting = "a table ([server])")]
    pub struct Server {
        /// Serve STUN/TURN over UDP and TCP on this address.
        #[flag("--listen", "ADDR:PORT")]
        #[restart]
        #[serde(deserialize_with = "form::socket_addrs")]
        // RFC 8489 §18.6: 3478 is the default STUN/TURN port over UDP and TCP. All IPv4
        // interfaces so a fresh install answers; add `[::]:3478` for IPv6.
        pub listen: Vec<SocketAddr> = vec![SocketAddr::from(([0, 0, 0, 0], 3478))],
        /// Authentication realm in 401 challenges (1 to 127 characters).
        #[flag("--realm", "REALM")]
        // Any non-empty string works; REST credentials do not depend on it.
        pub realm: String = "turnpike".to_owned(),
        /// SOFTWARE attribute value; "" omits it.
        #[flag("--software", "TEXT")]
        // RFC 8489 §14.14: SOFTWARE is optional; the name without a version tells an
        // operator what answered without helping anyone pick an exploit.
        pub software: String = "turnpike".to_owned(),
        /// Worker threads; 0 = one per CPU core.
        #[flag("--workers", "N")]
        #[restart]
        pub workers: Workers = Workers::PER_CORE,
        /// Log format: text or json.
        #[flag("--log-format", "FORMAT")]
        #[restart]
        // Text for a terminal and journald; JSON is opt-in for log collectors.
        pub log_format: LogFormat = LogFormat::Text,
        /// Redirect Allocate requests to this server with 300 Try Alternate
        /// (ALTERNATE-SERVER, RFC 8489 §10); a concrete IP and a port other than 0.
        #[flag("--alternate-server", "IP:PORT")]
        #[serde(deserialize_with = "form::alternate_servers")]
        // Redirecting is for draining or spreading load; a lone server allocates itself.
        pub alternate_servers: Vec<SocketAddr> = Vec::new(),
        /// Redirect new Allocates here while draining (`turnpike drain`); entries naming
        /// this instance are skipped, so one fleet-wide list fits all.
        #[flag("--drain-alternate-server", "IP:PORT")]
        #[serde(deserialize_with = "form::alternate_servers")]
        // Nowhere: a draining lone server answers new Allocates with 508.
        pub drain_alternate_servers: Vec<SocketAddr> = Vec::new(),
    }
}

impl Server {
    /// The SOFTWARE attribute; `None` omits it.
    pub fn software(&self) -> Option<&str> {
        Some(self.software.as_str()).filter(|s| !s.is_empty())
    }
}

section! {
    [auth]
    /// `[auth]`: REST shared secrets, nonces and static users.
    #[serde(expecting = "a table ([auth])")]
    pub struct Auth {
        /// REST API shared secret; the first signs, all verify.
        #[flag("--auth-secret", "SECRET")]
        // None: `turnpike run` generates one and warns, so the first run works.
        pub secrets: Vec<Secret> = Vec::new(),
        /// Separator between expiry and user in REST usernames: one character, not a
        /// letter, digit or space.
        #[flag("--separator", "CHAR")]
        #[serde(deserialize_with = "form::separator")]
        pub separator: char = DEFAULT_SEPARATOR,
        /// Nonce lifetime in seconds before 438 Stale Nonce.
        #[flag("--nonce-lifetime-secs", "SECONDS")]
        // DESIGN "nonces" (and coturn's `stale-nonce`): 600 s, after which 438 Stale Nonce.
        pub nonce_lifetime_secs: Secs<MAX_NONCE_LIFETIME_SECS> = Secs::new(600),
        /// Default lifetime of issued credentials in seconds (`turnpike credentials`, the
        /// HTTP API).
        #[flag("--credential-ttl-secs", "SECONDS")]
        pub credential_ttl_secs: Secs<MAX_CREDENTIAL_TTL_SECS> =
            Secs::new(DEFAULT_CREDENTIAL_TTL_SECS),
        /// Static long-term user ([auth.users] NAME = "PASSWORD").
        #[flag("--user", "NAME=PASSWORD")]
        // Static users are opt-in; REST credentials expire, passwords do not.
        pub users: BTreeMap<String, Secret> = BTreeMap::new(),
    }
}

section! {
    [relay]
    /// `[relay]`: relay addresses, ports and which peers may be reached.
    #[serde(expecting = "a table ([relay])")]
    pub struct Relay {
        /// Relay address handed to clients; empty = the runtime picks them.
        #[flag("--relay-ip", "IP")]
        #[restart]
        #[serde(deserialize_with = "form::advertised_ips")]
        // Empty: the runtime relays from the addresses it listens on.
        pub ips: Vec<IpAddr> = Vec::new(),
        /// Public IP advertised in XOR-RELAYED-ADDRESS behind a 1:1 NAT.
        #[flag("--external-ip", "IP")]
        #[serde(with = "form::external_ip")]
        // Only needed behind a 1:1 NAT (cloud VMs).
        pub external_ip: Option<IpAddr> = None,
        /// Public IP a 1:1 NAT maps a relay IP to (same family); wins over external_ip.
        #[flag("--external-ip-map", "PRIVATE=PUBLIC")]
        #[serde(with = "form::ip_mappings")]
        // Only needed when relay addresses sit behind different public addresses.
        pub external_ip_map: Vec<(IpAddr, IpAddr)> = Vec::new(),
        /// Lowest relay port.
        #[flag("--min-port", "PORT")]
        // RFC 8656 §7.2: relay ports SHOULD come from 49152-65535, the IANA dynamic range
        // (RFC 6335).
        pub min_port: Port = Port::new(49152),
        /// Highest relay port.
        #[flag("--max-port", "PORT")]
        pub max_port: Port = Port::new(65535),
        /// Peer CIDR or IP to allow despite the built-in deny list.
        #[flag("--allow-peer", "CIDR")]
        #[serde(with = "form::peer_nets")]
        // Nothing is opened beyond the built-in deny list (DESIGN "Security defaults").
        pub allow_peers: Vec<IpNet> = Vec::new(),
        /// Extra peer CIDR or IP to deny.
        #[flag("--deny-peer", "CIDR")]
        #[serde(with = "form::peer_nets")]
        pub deny_peers: Vec<IpNet> = Vec::new(),
        /// Relay established UDP channels in the kernel with XDP on this interface (Linux,
        /// root); empty = userspace only.
        #[flag("--xdp-interface", "IFACE")]
        #[restart]
        #[serde(with = "form::interface")]
        // The kernel fast path is opt-in: it needs root (CAP_BPF, CAP_NET_ADMIN) and Linux.
        pub xdp_interface: Option<String> = None,
        /// How the XDP program is attached: auto, driver or generic.
        #[flag("--xdp-mode", "MODE")]
        #[restart]
        pub xdp_mode: XdpMode = XdpMode::Auto,
    }
}

impl Relay {
    /// Relay ports; `validate` makes sure it is not empty.
    pub fn port_range(&self) -> RangeInclusive<u16> {
        self.min_port.get()..=self.max_port.get()
    }
}

section! {
    [limits]
    /// `[limits]`: lifetimes, quotas and caps.
    #[serde(expecting = "a table ([limits])")]
    pub struct Limits {
        /// Allocation lifetime when the client asks for none, in seconds.
        #[flag("--default-lifetime-secs", "SECONDS")]
        // RFC 8656 §3.2: an allocation lives 10 minutes unless refreshed.
        pub default_lifetime_secs: Secs<MAX_ALLOCATION_LIFETIME_SECS> = Secs::new(600),
        /// Longest allocation lifetime granted, in seconds.
        #[flag("--max-lifetime-secs", "SECONDS")]
        // RFC 8656 §7.2: recommended maximum allocation lifetime of 1 hour.
        pub max_lifetime_secs: Secs<MAX_ALLOCATION_LIFETIME_SECS> = Secs::new(3600),
        /// Allocations on the whole server, then 508.
        #[flag("--max-allocations", "N")]
        // Fits in the default port range (16384 ports) with room to spare, and at the
        // ≤ 2 KiB per idle allocation target costs about 20 MiB.
        pub max_allocations: Count<MAX_COUNT> = Count::new(10_000),
        /// Allocations per username, then 486.
        #[flag("--max-allocations-per-user", "N")]
        // A browser needs a handful; 100 keeps one leaked credential from taking the whole
        // server (486 Allocation Quota Reached).
        pub max_allocations_per_user: Count<MAX_COUNT> = Count::new(100),
        /// Permissions per allocation.
        #[flag("--max-permissions-per-allocation", "N")]
        // One per remote candidate address; ICE rarely needs more than a dozen. A cap keeps
        // per-allocation state bounded.
        pub max_permissions_per_allocation: Count<MAX_PER_ALLOCATION> = Count::new(64),
        /// Channels per allocation.
        #[flag("--max-channels-per-allocation", "N")]
        // Same reasoning as permissions; RFC 8656 allows 16384 channel numbers.
        pub max_channels_per_allocation: Count<MAX_PER_ALLOCATION> = Count::new(64),
        /// Relayed bytes/s per allocation and direction; 0 = unlimited.
        #[flag("--bandwidth-per-allocation", "BYTES_PER_SEC")]
        // Unlimited: media bitrates vary too much for one safe number.
        pub bandwidth_per_allocation: Bandwidth = Bandwidth::UNLIMITED,
        /// TCP and TLS client connections in total.
        #[flag("--max-connections", "N")]
        #[restart]
        // As many as allocations: a TCP/TLS client holds one connection per allocation
        // (RFC 8656 §3.1); each costs a socket and bounded buffers.
        pub max_connections: Count<MAX_COUNT> = Count::new(10_000),
        /// TCP and TLS client connections per source IP.
        #[flag("--max-connections-per-source", "N")]
        #[restart]
        // Enough for the clients behind one NAT (an office, a carrier-grade NAT pool); low
        // enough that one host cannot use up the whole server.
        pub max_connections_per_source: Count<MAX_COUNT> = Count::new(64),
        /// 401/438 challenges per second for the whole server, beside the fixed 100 per
        /// source IP.
        #[flag("--max-challenges-per-sec", "N")]
        // Challenges go to unverified source addresses, so this bounds what a spoofed flood
        // can reflect; see `DEFAULT_MAX_CHALLENGES_PER_SEC` for the numbers.
        pub max_challenges_per_sec: Count<MAX_COUNT> =
            Count::new(crate::proto::server::DEFAULT_MAX_CHALLENGES_PER_SEC as usize),
    }
}

section! {
    [api]
    /// `[api]`: the HTTP management API.
    #[serde(expecting = "a table ([api])")]
    pub struct Api {
        /// HTTP management API address.
        #[flag("--api-listen", "ADDR:PORT")]
        #[restart]
        #[serde(deserialize_with = "form::socket_addr")]
        // DESIGN "Management plane": loopback, so no token is needed by default.
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// Bearer token for the HTTP API; none = no token required on loopback (and no
        /// credentials served beyond loopback).
        #[flag("--api-token", "TOKEN")]
        pub tokens: Vec<Secret> = Vec::new(),
        /// STUN/TURN URI handed out by the API (stun:, stuns:, turn:, turns:); none = derived
        /// from the listening, relay and external addresses.
        #[flag("--api-uri", "URI")]
        #[serde(deserialize_with = "form::ice_uris")]
        // Derived from the addresses the server really listens on, so they are right
        // without configuration; set them when clients reach the server by DNS name.
        pub uris: Vec<String> = Vec::new(),
        /// Longest credential ttl the API grants on request, in seconds.
        #[flag("--api-max-ttl-secs", "SECONDS")]
        // Same as the default credential ttl (draft-uberti recommends one day): a
        // longer-lived credential outlives the user's revocation by that much.
        pub max_ttl_secs: Secs<MAX_CREDENTIAL_TTL_SECS> = Secs::new(DEFAULT_CREDENTIAL_TTL_SECS),
        /// Browser origin (https://app.example.com) allowed to call the API (CORS).
        #[flag("--api-cors-origin", "ORIGIN")]
        #[serde(deserialize_with = "form::origins")]
        // No browser origin may call the API until the operator names it.
        pub cors_origins: Vec<String> = Vec::new(),
        /// Serve the ICE test page at /test on the API listener.
        #[flag("--api-test-page", "BOOL")]
        // The test page hands out credentials to whoever loads it: opt-in.
        pub test_page: bool = false,
        /// Seconds a client gets to send a request head, to keep an idle keep-alive
        /// connection, for a request to be handled and for a stalled response write.
        #[flag("--api-request-timeout-secs", "SECONDS")]
        #[restart]
        // A client on any real network sends a request head in well under a second; 10 s
        // is the stream clients' first-message bound too (connections.rs).
        pub request_timeout_secs: Secs<MAX_API_REQUEST_TIMEOUT_SECS> = Secs::new(10),
        /// HTTP API connections in total, WebSockets included.
        #[flag("--api-max-connections", "N")]
        #[restart]
        // Management traffic is a few clients; 256 sockets are a small share of the
        // descriptors TURN needs (LimitNOFILE=65536 in the unit), so an API flood cannot
        // starve relay sockets and TCP/TLS accepts.
        pub max_connections: Count<MAX_COUNT> = Count::new(256),
        /// HTTP API connections per source IP.
        #[flag("--api-max-connections-per-source", "N")]
        #[restart]
        // A quarter of the total: one host cannot hold every slot. A reverse proxy in
        // front of the API is one source, so raise this with one.
        pub max_connections_per_source: Count<MAX_COUNT> = Count::new(64),
        /// File the revocations are kept in across restarts (written on every change, read
        /// at start and on reload); "" = in memory only.
        #[flag("--api-revocations-file", "FILE")]
        #[serde(with = "form::path")]
        // In memory: a plain `turnpike run` writes no state; packages set a path.
        pub revocations_file: Option<PathBuf> = None,
    }
}

section! {
    [tls]
    /// `[tls]`: TURN over TLS (`turns:`).
    #[serde(expecting = "a table ([tls])")]
    pub struct Tls {
        /// Serve TURN over TLS on this address (needs tls.cert and tls.key).
        #[flag("--tls-listen", "ADDR:PORT")]
        #[restart]
        #[serde(deserialize_with = "form::socket_addrs")]
        // TLS needs a certificate, so it is off until one is configured.
        pub listen: Vec<SocketAddr> = Vec::new(),
        /// PEM certificate chain for TLS.
        #[flag("--tls-cert", "FILE")]
        #[serde(with = "form::path")]
        pub cert: Option<PathBuf> = None,
        /// PEM private key for TLS.
        #[flag("--tls-key", "FILE")]
        #[serde(with = "form::path")]
        pub key: Option<PathBuf> = None,
    }
}

section! {
    [usage]
    /// `[usage]`: where usage records (one per ended allocation) go; see [`crate::usage`].
    #[serde(expecting = "a table ([usage])")]
    pub struct Usage {
        /// Log each usage record as one info line on the log target `turnpike::usage`.
        #[flag("--usage-log", "BOOL")]
        #[restart]
        // The log is always there, so records are kept somewhere without setup.
        pub log: bool = true,
        /// Append usage records as JSON lines to this file (reopened on SIGHUP); "" = none.
        #[flag("--usage-file", "FILE")]
        #[restart]
        #[serde(with = "form::path")]
        // Files and webhooks need a path or URL only the operator knows.
        pub file: Option<PathBuf> = None,
        /// POST batches of usage records to this http:// or https:// URL; "" = none.
        #[flag("--usage-webhook-url", "URL")]
        #[restart]
        #[serde(with = "form::webhook_url")]
        pub webhook_url: Option<String> = None,
        /// Seconds one webhook request may take, connecting included.
        #[flag("--usage-webhook-timeout-secs", "SECONDS")]
        #[restart]
        // Long enough for a receiver across a continent, short enough that a dead one
        // holds a stopping daemon for only this long.
        pub webhook_timeout_secs: Secs<MAX_WEBHOOK_TIMEOUT_SECS> = Secs::new(5),
        /// Usage records waiting per sink before new ones are dropped (and counted).
        #[flag("--usage-queue-size", "N")]
        #[restart]
        // 10,000 records (~4 MB) ride out a receiver restart of minutes at a hundred
        // allocations ending per second.
        pub queue_size: Count<MAX_USAGE_QUEUE> = Count::new(10_000),
    }
}

// ---------------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------------

/// The effective configuration, fully parsed. Built by [`Config::load`],
/// [`Config::from_toml_str`] or [`Config::default`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub relay: Relay,
    pub limits: Limits,
    pub api: Api,
    pub tls: Tls,
    pub usage: Usage,
}

/// Flags given on the command line, each with its values: what [`Config::load`] lays over
/// the file. `cli` fills it from the arguments of `turnpike run`.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Vec<(&'static Setting, Vec<String>)>);

impl Overrides {
    /// Sets `setting` to `values` (the last one counts for a [`FlagKind::Value`]).
    pub fn push(&mut self, setting: &'static Setting, values: Vec<String>) {
        self.0.push((setting, values));
    }
}

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
    #[error("{origin}: unknown key `{key}` in {section} at line {line} ({expected})")]
    UnknownKey {
        origin: String,
        key: String,
        /// `[server]`, … or `the top level`.
        section: String,
        line: usize,
        /// serde's `expected one of ...`.
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

impl Config {
    /// Every key, section by section in file order.
    pub fn settings() -> impl Iterator<Item = &'static Setting> {
        [
            Server::SETTINGS,
            Auth::SETTINGS,
            Relay::SETTINGS,
            Limits::SETTINGS,
            Api::SETTINGS,
            Tls::SETTINGS,
            Usage::SETTINGS,
        ]
        .into_iter()
        .flatten()
    }

    /// Load the configuration `turnpike run` uses: the file at `path` (built-in defaults
    /// without one), then the flags. List flags add to the file's lists; when the file
    /// does not set the key they replace the built-in default. Scalar flags override.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (mut config, doc) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let (config, doc) = Config::parse(&text, &path.display().to_string())?;
                (config, Some(doc))
            }
            None => (Config::default(), None),
        };
        let mut sources = Sources {
            doc: doc.as_ref(),
            flags: HashMap::new(),
        };
        for (setting, values) in &overrides.0 {
            let replace = !sources.in_file(setting.key);
            for (i, value) in values.iter().enumerate() {
                let shown =
                    (setting.apply)(&mut config, value, replace && i == 0).map_err(|message| {
                        ConfigError::Flag {
                            flag: setting.flag.to_owned(),
                            value: value.clone(),
                            message,
                        }
                    })?;
                sources.flags.insert(setting.key, (setting.flag, shown));
            }
        }
        config.normalize();
        config.validate(&sources)?;
        Ok(config)
    }

    /// Parse and check a TOML document (no flags). `origin` names it in errors, usually
    /// the file's path.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let (mut config, doc) = Config::parse(text, origin)?;
        config.normalize();
        config.validate(&Sources {
            doc: Some(&doc),
            flags: HashMap::new(),
        })?;
        Ok(config)
    }

    fn parse(text: &str, origin: &str) -> Result<(Config, Doc), ConfigError> {
        let root = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |span| line_of(text, span.start));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                message: e.message().trim().to_owned(),
            }
        })?;
        let doc = Doc::index(root.get_ref(), text, origin);
        let config = Config::deserialize(toml::de::Deserializer::from(root))
            .map_err(|e| doc.error(&e, text))?;
        Ok((config, doc))
    }

    fn normalize(&mut self) {
        for setting in Config::settings() {
            (setting.normalize)(self);
        }
    }

    /// What one key's type cannot say: rules across keys, and files that must be usable.
    /// Runs after the flags, so a flag can fix (or break) what the file says.
    fn validate(&self, src: &Sources<'_>) -> Result<(), ConfigError> {
        let Config {
            server,
            auth,
            relay,
            limits,
            api,
            tls,
            usage,
        } = self;
        if server.listen.is_empty() && tls.listen.is_empty() {
            return Err(src.error(
                "server.listen",
                "no listening address: set server.listen (--listen) or tls.listen (--tls-listen)",
            ));
        }
        // RFC 8489 §14.9: REALM is fewer than 128 characters; clients need one for 401s.
        let realm_chars = server.realm.chars().count();
        if realm_chars == 0 || realm_chars >= 128 {
            return Err(src.error("server.realm", "must be 1 to 127 characters"));
        }
        // RFC 8489 §14.14: SOFTWARE is fewer than 128 characters.
        if server.software.chars().count() >= 128 {
            return Err(src.error(
                "server.software",
                "must be fewer than 128 characters (\"\" omits it)",
            ));
        }
        if auth.secrets.iter().any(|s| s.expose().is_empty()) {
            return Err(src.error("auth.secrets", "a secret must not be empty"));
        }
        if api.tokens.iter().any(|s| s.expose().is_empty()) {
            return Err(src.error("api.tokens", "a token must not be empty"));
        }
        if let Some((name, _)) = auth
            .users
            .iter()
            .find(|(n, p)| n.is_empty() || p.expose().is_empty())
        {
            let key = format!("auth.users.{name}");
            let key = if src.in_file(&key) {
                key.as_str()
            } else {
                "auth.users"
            };
            return Err(src.error(key, "user names and passwords must not be empty"));
        }
        if auth.credential_ttl_secs.get() > api.max_ttl_secs.get() {
            let (c, m) = (auth.credential_ttl_secs.0, api.max_ttl_secs.0);
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
        let (min, max) = (relay.min_port.get(), relay.max_port.get());
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
        if limits.default_lifetime_secs.get() > limits.max_lifetime_secs.get() {
            let (d, m) = (limits.default_lifetime_secs.0, limits.max_lifetime_secs.0);
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
        if let Some(own) = server
            .alternate_servers
            .iter()
            .find(|a| server.listen.contains(a) || tls.listen.contains(a))
        {
            return Err(src.error(
                "server.alternate_servers",
                format!("{own} is this server's own listening address: clients would be redirected in a loop"),
            ));
        }
        for (i, (private, public)) in relay.external_ip_map.iter().enumerate() {
            if let Some((_, other)) = relay.external_ip_map[..i]
                .iter()
                .find(|(p, _)| p == private)
            {
                return Err(src.error(
                    "relay.external_ip_map",
                    format!("{private} is mapped twice (to {other} and to {public})"),
                ));
            }
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => return Err(src.error("tls.cert", "is set but tls.key is not")),
            (None, Some(_)) => return Err(src.error("tls.key", "is set but tls.cert is not")),
            (None, None) if !tls.listen.is_empty() => {
                return Err(src.error(
                    "tls.listen",
                    "needs tls.cert and tls.key (--tls-cert, --tls-key)",
                ))
            }
            _ => {}
        }
        if let Some(path) = &usage.file {
            check_appendable(path).map_err(|m| src.error("usage.file", m))?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets shown as `"<redacted>"` (printed by
    /// `turnpike check-config`). It parses back to this config apart from the secrets.
    pub fn render_effective(&self) -> String {
        let body = toml::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the effective config: {e}\n"));
        format!("# turnpike effective configuration (secrets redacted)\n\n{body}")
    }

    /// Settings worth a startup warning (STYLE §4: risky knobs are loud): peers opened
    /// inside loopback or private ranges, and an HTTP API beyond loopback without a token.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for allowed in &self.relay.allow_peers {
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
        let separator = self.auth.separator;
        for name in self.auth.users.keys() {
            if let Some(expiry) = crate::proto::auth::rest_expiry(name, separator) {
                out.push(format!(
                    "auth.users: `{name}` parses as a REST username (expiry {expiry}, separator \
                     `{separator}`), so it is checked as a REST credential and its static \
                     password is refused whenever auth.secrets is set; rename it"
                ));
            }
        }
        if !self.api.listen.ip().is_loopback() && self.api.tokens.is_empty() {
            out.push(format!(
                "api.listen {} is not loopback and api.tokens is empty: anyone who can reach \
                 it can mint TURN credentials",
                self.api.listen
            ));
        }
        out
    }

    /// The keys that differ between this (running) configuration and `fresh` but only take
    /// effect at restart: a reload keeps the sockets, threads and logger it started with.
    pub fn changes_needing_restart(&self, fresh: &Config) -> Vec<&'static str> {
        Config::settings()
            .filter(|s| s.restart && (s.differs)(self, fresh))
            .map(|s| s.key)
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

// ---------------------------------------------------------------------------------
// Where values came from, for error messages
// ---------------------------------------------------------------------------------

/// The keys of a TOML document and where they are, from toml's own spans: it turns the
/// position in a toml error into "key (line N)", gives `validate` the line of a key, and
/// says which keys the file sets.
#[derive(Debug)]
struct Doc {
    origin: String,
    keys: Vec<DocKey>,
}

#[derive(Debug)]
struct DocKey {
    /// `"relay.min_port"`, `"auth.users.bob"`.
    path: String,
    /// Where the key's own name starts in `path` (a quoted name may hold dots).
    name_at: usize,
    /// 1-based line of the key (of the header, for a `[section]`).
    line: usize,
    key: Range<usize>,
    value: Range<usize>,
}

impl Doc {
    fn index(root: &DeTable<'_>, text: &str, origin: &str) -> Doc {
        let newlines: Vec<usize> = text.match_indices('\n').map(|(at, _)| at).collect();
        let line_of = |offset: usize| newlines.partition_point(|&at| at < offset) + 1;
        let mut keys = Vec::new();
        let mut tables = vec![(String::new(), root)];
        while let Some((prefix, table)) = tables.pop() {
            for (key, value) in table.iter() {
                let name: &str = key.get_ref();
                let path = match prefix.as_str() {
                    "" => name.to_owned(),
                    prefix => format!("{prefix}.{name}"),
                };
                if let DeValue::Table(table) = value.get_ref() {
                    tables.push((path.clone(), table));
                }
                keys.push(DocKey {
                    name_at: path.len() - name.len(),
                    path,
                    line: line_of(key.span().start),
                    key: key.span(),
                    value: value.span(),
                });
            }
        }
        Doc {
            origin: origin.to_owned(),
            keys,
        }
    }

    fn line(&self, path: &str) -> Option<usize> {
        self.keys.iter().find(|k| k.path == path).map(|k| k.line)
    }

    /// A serde error while reading the document, named by the key it points at.
    fn error(&self, err: &toml::de::Error, text: &str) -> ConfigError {
        let origin = self.origin.clone();
        let message = err.message().trim().to_owned();
        let Some(span) = err.span() else {
            return ConfigError::Parse { origin, message };
        };
        let within = |outer: &Range<usize>| outer.start <= span.start && span.end <= outer.end;
        // The error points at a key itself: serde's `deny_unknown_fields`.
        if let Some(key) = self.keys.iter().find(|k| within(&k.key)) {
            let name = &key.path[key.name_at..];
            let section = match key.name_at {
                0 => "the top level".to_owned(),
                at => format!("[{}]", &key.path[..at - 1]),
            };
            if let Some(expected) = message.strip_prefix(&format!("unknown field `{name}`, ")) {
                return ConfigError::UnknownKey {
                    origin,
                    key: name.to_owned(),
                    section,
                    line: key.line,
                    expected: expected.to_owned(),
                };
            }
        }
        let owner = self
            .keys
            .iter()
            .filter(|k| within(&k.value))
            .min_by_key(|k| k.value.len());
        match owner {
            Some(key) => ConfigError::InvalidValue {
                origin,
                key: key.path.clone(),
                line: key.line,
                message,
            },
            None => ConfigError::Syntax {
                origin,
                line: line_of(text, span.start),
                message,
            },
        }
    }
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

#[derive(Default)]
struct Sources<'a> {
    doc: Option<&'a Doc>,
    /// Config key → (flag, last value given, as errors show it) for keys set by flags.
    flags: HashMap<&'static str, (&'static str, String)>,
}

impl Sources<'_> {
    fn in_file(&self, key: &str) -> bool {
        self.doc.and_then(|d| d.line(key)).is_some()
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        debug_assert!(
            Config::settings().any(|s| s.key == key) || key.starts_with("auth.users."),
            "no such key: {key}"
        );
        let message = message.into();
        if let Some((flag, value)) = self.flags.get(key) {
            return ConfigError::Flag {
                flag: (*flag).to_owned(),
                value: value.clone(),
                message,
            };
        }
        match self.doc.and_then(|d| d.line(key).map(|line| (d, line))) {
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
// Flags: one command-line value through the key's own `Deserialize`
// ---------------------------------------------------------------------------------

/// The section `T` with only `field` set, from one flag value: serde reads it exactly as it
/// reads the file (the `#[serde]` forms, the bounded types, the same messages).
fn flag_patch<T: DeserializeOwned>(
    field: &'static str,
    value: &str,
    value_name: &'static str,
) -> Result<T, String> {
    let value = FlagValue { value, value_name };
    T::deserialize(de::value::MapDeserializer::<_, de::value::Error>::new(
        std::iter::once((field, value)),
    ))
    .map_err(|e| e.to_string())
}

/// A flag's value as errors show it: as the config renders it (so secrets are
/// `<redacted>`), else as given.
fn shown<T: Serialize>(section: &T, field: &str, given: &str) -> String {
    fn plain(value: &toml::Value) -> String {
        match value {
            toml::Value::String(s) => s.clone(),
            value => value.to_string(),
        }
    }
    let value = toml::Table::try_from(section)
        .ok()
        .and_then(|mut t| t.remove(field));
    match value {
        Some(toml::Value::Array(items)) => items.last().map(plain),
        Some(toml::Value::Table(pairs)) => pairs
            .iter()
            .next_back()
            .map(|(k, v)| format!("{k}={}", plain(v))),
        Some(value) => Some(plain(&value)),
        None => None,
    }
    .unwrap_or_else(|| given.to_owned())
}

/// One command-line value, deserialized as the type of its key: numbers and booleans are
/// parsed from the text, a list gets it as its one item, a table as its one `NAME=VALUE`
/// entry, and everything else sees the string.
#[derive(Clone, Copy)]
struct FlagValue<'a> {
    value: &'a str,
    /// `"NAME=PASSWORD"`, for the message when a pair is missing its `=`.
    value_name: &'static str,
}

impl FlagValue<'_> {
    fn number<N: std::str::FromStr>(self) -> Result<N, de::value::Error> {
        self.value
            .parse()
            .map_err(|_| de::Error::custom(format!("`{}` is not a whole number", self.value)))
    }
}

impl<'de> IntoDeserializer<'de, de::value::Error> for FlagValue<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! flag_numbers {
    ($($method:ident => $visit:ident: $ty:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            visitor.$visit(self.number::<$ty>()?)
        }
    )*};
}

impl<'de> Deserializer<'de> for FlagValue<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_str(self.value)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(de::Error::custom(format!("`{other}` is not true or false"))),
        }
    }

    flag_numbers!(
        deserialize_u8 => visit_u8: u8, deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32, deserialize_u64 => visit_u64: u64,
        deserialize_i8 => visit_i8: i8, deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32, deserialize_i64 => visit_i64: i64
    );

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(de::value::SeqDeserializer::new(std::iter::once(self)))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // An empty name is left to `validate`, whose message shows the value redacted.
        let (name, value) = self
            .value
            .split_once('=')
            .ok_or_else(|| de::Error::custom(format!("expected {}", self.value_name)))?;
        let value = FlagValue { value, ..self };
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::once((
            name, value,
        ))))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self.value.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct tuple
        tuple_struct struct identifier ignored_any
    }
}

// ---------------------------------------------------------------------------------
// TOML forms of keys whose type's own serde form is not the file's
// ---------------------------------------------------------------------------------

/// `#[serde(with = ...)]` and `deserialize_with` helpers. Flags go through them too.
mod form {
    use super::*;

    /// Each string of a list through `parse`.
    fn list<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| parse(s).map_err(de::Error::custom))
            .collect()
    }

    /// `""` (or only spaces) is `None`, anything else goes through `parse`.
    fn blank<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        parse(&s).map(Some).map_err(de::Error::custom)
    }

    fn write_blank<S: Serializer, T>(
        value: &Option<T>,
        s: S,
        show: fn(&T) -> String,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.as_ref().map(show).unwrap_or_default())
    }

    pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse_socket_addr(&String::deserialize(d)?).map_err(de::Error::custom)
    }

    pub fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        list(d, parse_socket_addr)
    }

    pub fn alternate_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
        list(d, parse_alternate_server)
    }

    pub fn advertised_ips<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
        list(d, parse_advertised_ip)
    }

    pub fn ice_uris<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        list(d, parse_ice_uri)
    }

    pub fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        list(d, parse_origin)
    }

    pub fn separator<'de, D: Deserializer<'de>>(d: D) -> Result<char, D::Error> {
        parse_separator(&String::deserialize(d)?).map_err(de::Error::custom)
    }

    pub mod external_ip {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
            blank(d, parse_advertised_ip)
        }

        pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
            write_blank(ip, s, IpAddr::to_string)
        }
    }

    pub mod path {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
            blank(d, |s| Ok(PathBuf::from(s)))
        }

        pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
            write_blank(path, s, |p| p.to_string_lossy().into_owned())
        }
    }

    pub mod interface {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
            blank(d, check_interface_name)
        }

        pub fn serialize<S: Serializer>(name: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
            write_blank(name, s, String::clone)
        }
    }

    pub mod webhook_url {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
            blank(d, parse_webhook_url)
        }

        pub fn serialize<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
            write_blank(url, s, String::clone)
        }
    }

    pub mod ip_mappings {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(IpAddr, IpAddr)>, D::Error> {
            list(d, parse_ip_mapping)
        }

        pub fn serialize<S: Serializer>(
            pairs: &[(IpAddr, IpAddr)],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_seq(
                pairs
                    .iter()
                    .map(|(private, public)| format!("{private}={public}")),
            )
        }
    }

    pub mod peer_nets {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
            list(d, parse_peer_net)
        }

        pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(nets.iter().map(IpNet::to_string))
        }
    }
}

// ---------------------------------------------------------------------------------
// Value parsers (errors say what is wrong; callers add where)
// ---------------------------------------------------------------------------------

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an ADDR:PORT socket address (IPv6 as [::1]:3478)"))
}

/// A relay or external address is handed to clients, so it must be a real unicast address.
fn parse_advertised_ip(s: &str) -> Result<IpAddr, String> {
    let ip = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address"))?;
    check_advertised_ip(ip)
}

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
    let addr = parse_socket_addr(s)?;
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
    let (private, public) = (parse_advertised_ip(private)?, parse_advertised_ip(public)?);
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
/// A Linux interface name (IFNAMSIZ: at most 15 bytes; no '/', ':' or whitespace; not "."
/// or ".."), so a typo is an error naming the key rather than a failed attach.
fn check_interface_name(name: &str) -> Result<String, String> {
    let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
    if name.len() > 15 || name == "." || name == ".." || name.contains(bad) {
        return Err(format!(
            "{name:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)"
        ));
    }
    Ok(name.to_owned())
}

pub fn parse_webhook_url(s: &str) -> Result<String, String> {
    let s = s.trim();
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

/// Append to `list`, dropping repeats, keeping the first occurrence's position.
fn extend_unique<T: PartialEq>(list: &mut Vec<T>, more: impl IntoIterator<Item = T>) {
    for item in more {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defaults_are_valid() {
        let config = Config::default();
        assert!(config.validate(&Sources::default()).is_ok());
        // Every bounded default is in range too: they render and parse back.
        assert_eq!(load(&config.render_effective()).unwrap(), config);
    }

    /// The model, its settings and the example agree: every field of every section is a
    /// setting (the effective config lists exactly the settings' keys), and the example
    /// documents each one.
    #[test]
    fn settings_match_the_model_and_the_example() {
        let table = toml::Table::try_from(Config::default()).unwrap();
        let from_model: Vec<String> = table
            .iter()
            .flat_map(|(s, v)| {
                let keys = v.as_table().unwrap().keys();
                keys.map(move |k| format!("{s}.{k}"))
            })
            .collect();
        let from_settings: Vec<&str> = Config::settings().map(|s| s.key).collect();
        assert_eq!(from_model, from_settings);
        let (_, doc) = Config::parse(EXAMPLE, "example").unwrap();
        for key in &from_settings {
            assert!(doc.line(key).is_some(), "example lacks {key}");
        }
    }

    /// Each flag is the kebab-case of its key, or of `section_key`, a list's in the
    /// singular; each has a value name and a doc line for `--help`.
    #[test]
    fn flags_are_named_after_their_keys() {
        for s in Config::settings() {
            let (section, field) = s.key.split_once('.').unwrap();
            let flag = s.flag.strip_prefix("--").unwrap().replace('-', "_");
            let names = [field.to_owned(), format!("{section}_{field}")];
            let singular = |n: &String| n.strip_suffix('s').map(str::to_owned);
            assert!(
                names.contains(&flag)
                    || (s.kind == FlagKind::List
                        && names.iter().filter_map(singular).any(|n| n == flag)),
                "{} for {}",
                s.flag,
                s.key
            );
            assert!(!s.help.trim().is_empty(), "{} has no doc line", s.key);
            assert!(!s.value_name.is_empty(), "{}", s.key);
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
        // A quoted name may hold dots; the section is still the table it is in.
        let e = err("[server]\n\"a.b\" = 1\n");
        assert!(e.contains("unknown key `a.b` in [server] at line 2"), "{e}");
        let e = err("[auth.users]\nbob = \"pw\"\n[auth.users.x]\n");
        assert!(e.contains("auth.users.x (line 3)"), "{e}");
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
        assert_eq!(c.server.listen.len(), 2, "duplicates dropped");
        assert_eq!(c.server.software(), None);
        assert_eq!(c.server.workers.get(), 3);
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.auth.secrets[0].expose(), "one");
        assert_eq!(c.auth.separator, '-');
        let users: Vec<(&str, &str)> = c
            .auth
            .users
            .iter()
            .map(|(n, p)| (n.as_str(), p.expose()))
            .collect();
        assert_eq!(users, [("alice", "pw1"), ("bob", "pw2")], "sorted by name");
        assert_eq!(c.relay.external_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(c.relay.port_range(), 40000..=40100);
        let peers: Vec<String> = c.relay.allow_peers.iter().map(|n| n.to_string()).collect();
        assert_eq!(peers, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        assert_eq!(c.limits.bandwidth_per_allocation.get(), Some(125_000));
        assert_eq!(c.tls.cert, Some(PathBuf::from("/etc/turnpike/cert.pem")));
        assert_eq!(c.warnings().len(), 3, "{:?}", c.warnings());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let mut c = Config::default();
        c.auth.secrets = vec![s.clone()];
        c.auth.users.insert("u".into(), Secret::from("pw-xyz"));
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
        let mut expected = c.clone();
        expected.auth.secrets = vec![redacted.clone()];
        expected.auth.users = BTreeMap::from([("bob".into(), redacted.clone())]);
        expected.api.tokens = vec![redacted];
        assert_eq!(back, expected);
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
        assert_eq!(c.api.uris.len(), 2);
        assert_eq!(c.api.max_ttl_secs.get(), Duration::from_secs(172_800));
        assert_eq!(
            c.api.cors_origins,
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
    }

    #[test]
    fn alternate_servers_key() {
        let c = load(
            "[server]\nalternate_servers = [\"192.0.2.20:3478\", \"[2001:db8::20]:3478\", \"192.0.2.20:3478\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.server.alternate_servers,
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
    }

    #[test]
    fn external_ip_map_key() {
        let c = load(
            "[relay]\nexternal_ip = \"203.0.113.1\"\n\
             external_ip_map = [\"10.0.0.5=203.0.113.5\", \" fd00::5 = 2001:db8::5 \"]\n",
        )
        .unwrap();
        assert_eq!(
            c.relay.external_ip_map,
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
    }

    #[test]
    fn connection_limits_key() {
        let c = load("[limits]\nmax_connections = 500\nmax_connections_per_source = 8\n").unwrap();
        assert_eq!(
            (
                c.limits.max_connections.get(),
                c.limits.max_connections_per_source.get()
            ),
            (500, 8)
        );
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
            Usage {
                log: false,
                file: Some(file.clone()),
                webhook_url: Some("https://billing.example/turn?token=x".to_owned()),
                webhook_timeout_secs: Secs::new(2),
                queue_size: Count::new(5),
            }
        );
        assert_eq!(c.usage.webhook_timeout_secs.get(), Duration::from_secs(2));
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
    fn numeric_keys_are_bounded_in_files() {
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
                .limits
                .max_lifetime_secs
                .get(),
            Duration::from_secs(MAX_ALLOCATION_LIFETIME_SECS)
        );
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
        let mut fresh = running.clone();
        fresh.server.listen = vec!["127.0.0.1:3479".parse().unwrap()];
        fresh.server.workers = Workers::try_from(running.server.workers.get() as u64 + 1).unwrap();
        fresh.api.listen = "127.0.0.1:8081".parse().unwrap();
        // Reloadable: not listed.
        fresh.limits.max_allocations = Count::new(5);
        fresh.auth.secrets = vec![Secret::from("new")];
        assert_eq!(
            running.changes_needing_restart(&fresh),
            ["server.listen", "server.workers", "api.listen"]
        );
    }

    #[test]
    fn api_connection_bounds_key() {
        let c = load(
            "[api]\nrequest_timeout_secs = 3\nmax_connections = 40\nmax_connections_per_source = 5\n",
        )
        .unwrap();
        assert_eq!(c.api.request_timeout_secs.get(), Duration::from_secs(3));
        assert_eq!(
            (
                c.api.max_connections.get(),
                c.api.max_connections_per_source.get()
            ),
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
    }

    #[test]
    fn challenge_cap_key() {
        assert_eq!(Config::default().limits.max_challenges_per_sec.get(), 5_000);
        let c = load("[limits]\nmax_challenges_per_sec = 200\n").unwrap();
        assert_eq!(c.limits.max_challenges_per_sec.get(), 200);
        assert_eq!(load(&c.render_effective()).unwrap(), c);
        let e = err("[limits]\n\nmax_challenges_per_sec = 0\n");
        assert!(
            e.contains("limits.max_challenges_per_sec (line 3): must be 1 to 1000000 (got 0)"),
            "{e}"
        );
    }

    #[test]
    fn default_warnings_are_empty() {
        assert!(Config::default().warnings().is_empty());
        let mut c = Config::default();
        c.api.listen = "0.0.0.0:8080".parse().unwrap();
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
